"""What Docker and Podman share: the same ``run`` grammar and image store verbs."""

from __future__ import annotations

from venvoy.core.errors import VenvoyError
from venvoy.runtime.base import Runtime
from venvoy.runtime.request import Gpu, RunRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import ClassVar


class OciCliRuntime(Runtime):
    """Docker-compatible CLIs: one long-lived image store, ``run --rm``."""

    image_kind: ClassVar[str] = "ref"
    # Stay the parent so that exit 125 can be explained (missing image) and the
    # `--rm` clean-up by the client is waited for.
    wraps: ClassVar[bool] = True

    def user_args(self, req: RunRequest) -> list[str]:
        """How the caller's uid is kept inside; differs between the two."""
        return []

    def gpu_args(self, req: RunRequest) -> list[str]:
        return []

    def run_argv(self, req: RunRequest) -> list[str]:
        # --init: a tiny init as PID 1 forwards SIGTERM/SIGINT to the command,
        # which as PID 1 itself would ignore them. --network=host: the same
        # network as Apptainer and Charliecloud give, and it works rootless
        # where /dev/net/tun is closed. --pull=never: a missing image is an
        # error now, not a hang on a registry that cannot be reached.
        argv = [self.path, "run", "--rm", "--init", "--network=host", "--pull=never", "-i"]
        if req.tty:
            argv.append("-t")
        argv += self.user_args(req)
        for m in req.mounts:
            argv += ["-v", f"{m.source}:{m.target}" + (":ro" if m.read_only else "")]
        for key, value in req.env:
            argv += ["-e", f"{key}={value}"]
        if req.workdir:
            argv += ["-w", req.workdir]
        if req.gpu is not None:
            argv += self.gpu_args(req)
        argv.append(req.image)
        argv += req.argv
        return argv

    def amd_args(self) -> list[str]:
        return ["--device", "/dev/kfd", "--device", "/dev/dri", "--group-add", "video"]

    def image_exists(self, image: str) -> bool:
        import subprocess

        proc = subprocess.run(
            [self.path, "image", "inspect", "--format", "{{.Id}}", image],
            stdin=subprocess.DEVNULL, capture_output=True, env=dict(self.environ),
        )
        return proc.returncode == 0

    def remove_image(self, ref: str) -> None:
        import subprocess

        subprocess.run([self.path, "rmi", ref], stdin=subprocess.DEVNULL, capture_output=True,
                       env=dict(self.environ))

    def load_archive(self, archive: Path, ref: str, dest_dir: Path) -> str:
        import re
        import subprocess

        proc = subprocess.run(
            [self.path, "load", "-i", str(archive)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, env=dict(self.environ),
        )
        if proc.returncode != 0:
            raise VenvoyError(
                f"{self.name} load of {archive} failed: {last_line(proc.stderr)}",
                "check that the file is a Docker or OCI archive",
            )
        loaded = re.findall(r"Loaded image(?:\(s\))?(?: ID)?:\s*(\S+)", proc.stdout)
        if not loaded:
            raise VenvoyError(f"{self.name} load printed no image name", proc.stdout.strip())
        source = loaded[-1].split(",")[0]
        if source != ref:
            tag = subprocess.run(
                [self.path, "tag", source, ref],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, env=dict(self.environ),
            )
            if tag.returncode != 0:
                raise VenvoyError(f"{self.name} tag {source} {ref} failed: {last_line(tag.stderr)}")
        return ref


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


__all__ = ["Gpu", "OciCliRuntime", "last_line"]
