"""Charliecloud: ``ch-run`` on an unpacked image directory, fully unprivileged.

ch-run (0.31 here) differs from the others in ways venvoy hides:

* it passes the host environment through unless told otherwise, so venvoy
  clears it (``--unset-env='*'``) and sets only the request's variables, with
  ``--env-no-expand`` so values arrive byte-exact;
* the image is read-only and a bind target must already exist in it; venvoy
  creates missing mount points in image directories the user owns (an empty
  directory, never through a symlink);
* ``/tmp`` is shared with the host, as with Apptainer, so a directory under
  ``/tmp`` is visible at the same path without a bind;
* it has no read-only bind mounts: ``:ro`` is refused with a clear error
  rather than silently mounted writable.
"""

from __future__ import annotations

import os
import pwd

from venvoy.core.errors import BadRequest, ImageNotFound, VenvoyError
from venvoy.runtime.base import EnvForward, ImageForm, Runtime, safe_file_name, user_namespaces_enabled
from venvoy.runtime.request import Gpu, RunRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from typing import ClassVar

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _is_path(image: str) -> bool:
    return "/" in image.split(":", 1)[0] or image.startswith(".") or os.path.exists(image)


class Charliecloud(Runtime):
    name: ClassVar[str] = "charliecloud"
    binary: ClassVar[str] = "ch-run"
    image_kind: ClassVar[ImageForm] = ImageForm.DIR

    def __init__(self, path: str, environ: Mapping[str, str] | None = None) -> None:
        env = dict(os.environ if environ is None else environ)
        if not env.get("USER"):  # ch-run refuses to start without $USER
            try:
                env["USER"] = pwd.getpwuid(os.getuid()).pw_name
            except KeyError:
                env["USER"] = str(os.getuid())
        super().__init__(path, env)

    @property
    def rootless(self) -> bool:
        return True  # ch-run never uses privileges, even when started by root

    def problem(self) -> str | None:
        if not user_namespaces_enabled():
            return "ch-run needs unprivileged user namespaces, which are disabled on this host"
        return None

    def version_argv(self) -> list[str]:
        return [self.path, "--version"]

    def check_image(self, image: str) -> None:
        super().check_image(image)
        if _is_path(image) and not os.path.exists(image):
            raise ImageNotFound(
                f"image directory {image} does not exist",
                "unpack one with `venvoy load --runtime charliecloud IMAGE.tar --name NAME`",
            )

    def image_exists(self, image: str) -> bool:
        return not _is_path(image) or os.path.exists(image)

    def check_gpu(self, req: RunRequest) -> None:
        from pathlib import Path

        super().check_gpu(req)
        if req.gpu == Gpu.NVIDIA and _is_path(req.image):
            root = Path(req.image)
            libdirs = ("usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib/aarch64-linux-gnu", "usr/lib")
            if not any(any((root / d).glob("libcuda.so*")) for d in libdirs):
                raise BadRequest(
                    "--gpu nvidia: the image has no NVIDIA driver libraries (libcuda.so)",
                    f"inject the host's once with `ch-fromhost --nvidia {req.image}`",
                )

    def _mount_point(self, image: str, target: str) -> None:
        """Make sure ``target`` exists in an image directory we may write to."""
        from pathlib import Path

        if not _is_path(image) or not os.path.isdir(image):
            return
        path = Path(image)
        for part in Path(target).parts[1:]:
            path = path / part
            if path.is_symlink():
                return  # never create through a link; ch-run follows it and says why
            if not path.exists():
                try:
                    path.mkdir()
                except OSError as exc:
                    raise BadRequest(
                        f"mount target {target} does not exist in image {image} and cannot be "
                        f"created ({exc.strerror})",
                        "mount onto an existing directory such as /mnt/0, or use an image you own",
                    ) from None

    def run_argv(self, req: RunRequest) -> list[str]:
        argv = [self.path, "--unset-env=*", "--env-no-expand", f"--set-env=PATH={DEFAULT_PATH}"]
        if _is_path(req.image) and os.path.isfile(os.path.join(req.image, "ch", "environment")):
            argv.append("--set-env")  # the image's own variables (PATH, LANG, ...)
        for key, value in req.env:
            argv.append(f"--set-env={key}={value}")
        for m in req.mounts:
            if m.read_only:
                raise BadRequest(
                    f"mount {m}: ch-run cannot bind-mount read-only",
                    "drop :ro for Charliecloud, or use Apptainer or Podman for a read-only mount",
                )
            if m.target == "/tmp" or m.target.startswith("/tmp/"):
                if m.source == m.target:
                    continue  # /tmp is shared with the host: already there
                raise BadRequest(
                    f"mount {m}: ch-run shares /tmp with the host and cannot mount inside it",
                    "choose a target outside /tmp, such as /mnt/data",
                )
            self._mount_point(req.image, m.target)
            argv.append(f"--bind={m.source}:{m.target}")
        if req.workdir:
            argv.append(f"--cd={req.workdir}")
        argv += [req.image, "--", *req.argv]
        return argv

    def env_forward(self, req: RunRequest) -> EnvForward | None:
        # --env-no-expand (in run_argv) keeps the value byte-exact; before IMAGE -- CMD.
        return EnvForward(args=("--set-env={name}={value}",), before=len(req.argv) + 2)

    def load_archive(self, archive: Path, ref: str, dest_dir: Path) -> str:
        from venvoy.image.unpack import unpack_image

        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / safe_file_name(ref)
        # An image there is replaced; anything else (`--dest ~ --name data`) is
        # the user's, never deleted to make room.
        if os.path.lexists(dest) and not (not os.path.islink(dest)
                                          and os.path.isdir(dest / "ch")
                                          and not os.path.islink(dest / "ch")):
            raise BadRequest(f"{dest} exists and is not a Charliecloud image: not replacing it",
                             "choose another --name or --dest, or move it away first")
        try:
            unpack_image(archive, dest)
        except VenvoyError:
            raise
        return str(dest)
