"""Shifter (NERSC and Cray sites). UNTESTED: written to Shifter's documented CLI;
no Shifter installation was available to run it against.

``shifter --image=docker:NAME --volume=SRC:DST[:ro] --env=K=V --workdir=DIR -- CMD``.
Shifter runs as the calling user and pulls images with ``shifterimg pull``.
"""

from __future__ import annotations

from venvoy.core.errors import BadRequest
from venvoy.runtime.base import Runtime
from venvoy.runtime.request import Gpu, RunRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar


class Shifter(Runtime):
    name: ClassVar[str] = "shifter"
    binary: ClassVar[str] = "shifter"
    tested: ClassVar[bool] = False

    def run_argv(self, req: RunRequest) -> list[str]:
        kind = req.image.split(":", 1)[0]
        image = req.image if kind in ("docker", "id", "custom") else f"docker:{req.image}"
        argv = [self.path, f"--image={image}", "--clearenv"]
        for m in req.mounts:
            # Shifter's volume flags: "ro" is spelled as a flag after the target.
            argv.append(f"--volume={m.source}:{m.target}" + (":ro" if m.read_only else ""))
        for key, value in req.env:
            argv.append(f"--env={key}={value}")
        if req.workdir:
            argv.append(f"--workdir={req.workdir}")
        if req.gpu == Gpu.NVIDIA:
            argv.append("--module=gpu")
        elif req.gpu == Gpu.AMD:
            raise BadRequest("--gpu amd is not supported with Shifter", "use Apptainer with --rocm")
        argv += ["--", *req.argv]
        return argv
