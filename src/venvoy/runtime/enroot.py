"""Enroot (NVIDIA). UNTESTED: written to Enroot's documented CLI; no Enroot
installation was available to run it against.

``enroot start --rw? --mount SRC:DST[:ro] --env K=V NAME CMD``. The image is a
container created beforehand with ``enroot import`` and ``enroot create``;
Enroot has no working-directory flag, so venvoy starts the command through the
image's ``sh -c 'cd "$1" && shift && exec "$@"'`` with the directory and argv
passed as separate arguments (never interpolated into the script).
"""

from __future__ import annotations

from venvoy.runtime.base import Runtime
from venvoy.runtime.request import Gpu, RunRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar

_CD_AND_EXEC = 'cd "$1" && shift && exec "$@"'


class Enroot(Runtime):
    name: ClassVar[str] = "enroot"
    binary: ClassVar[str] = "enroot"
    tested: ClassVar[bool] = False

    def run_argv(self, req: RunRequest) -> list[str]:
        argv = [self.path, "start"]
        for m in req.mounts:
            # Enroot reads fstab fields: SRC:DST[:TYPE:OPTIONS]
            argv += ["--mount", f"{m.source}:{m.target}"
                     + (":none:x-create=auto,rbind,ro" if m.read_only else "")]
        for key, value in req.env:
            argv += ["--env", f"{key}={value}"]
        if req.gpu == Gpu.NVIDIA:
            argv += ["--env", "NVIDIA_VISIBLE_DEVICES=all"]
        elif req.gpu == Gpu.AMD:
            argv += ["--env", "ROCR_VISIBLE_DEVICES=all"]
        argv.append(req.image)
        if req.workdir:
            argv += ["sh", "-c", _CD_AND_EXEC, "sh", req.workdir]
        argv += req.argv
        return argv
