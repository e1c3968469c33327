"""Podman, rootful or rootless; rootless keeps the caller's uid inside."""

from __future__ import annotations

import os
import pwd

from venvoy.core.errors import BadRequest
from venvoy.runtime.base import user_namespaces_enabled
from venvoy.runtime.oci_cli import OciCliRuntime, allocated_gpus
from venvoy.runtime.request import Gpu, RunRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar

CDI_DIRS = ("/etc/cdi", "/var/run/cdi")


class Podman(OciCliRuntime):
    name: ClassVar[str] = "podman"
    binary: ClassVar[str] = "podman"
    save_args: ClassVar[tuple[str, ...]] = ("--format", "docker-archive")

    def problem(self) -> str | None:
        if not self.rootless:
            return None
        if not user_namespaces_enabled():
            return "rootless Podman needs user namespaces, which are disabled on this host"
        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            user = str(os.getuid())
        if not (has_subid_range("/etc/subuid", user) and has_subid_range("/etc/subgid", user)):
            return (
                f"user {user} has no range in /etc/subuid and /etc/subgid; ask an admin to run "
                f"`usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}`"
            )
        return None

    def user_args(self, req: RunRequest) -> list[str]:
        # keep-id maps the caller to the same uid inside, so files written to
        # mounts are the caller's on the host and ownership checks behave.
        return ["--userns=keep-id"] if self.rootless else []

    def check_gpu(self, req: RunRequest) -> None:
        import glob

        super().check_gpu(req)
        if req.gpu == Gpu.NVIDIA and not any(
            glob.glob(os.path.join(d, "nvidia*")) for d in CDI_DIRS
        ):
            raise BadRequest(
                "--gpu nvidia: Podman needs a CDI spec for the NVIDIA GPU and none is in /etc/cdi",
                "generate it with `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`",
            )

    def gpu_args(self, req: RunRequest) -> list[str]:
        if req.gpu == Gpu.NVIDIA:
            # Only the GPUs this job was given (CUDA_VISIBLE_DEVICES, Slurm's
            # lists), one CDI device each; `all` only when nothing restricts them.
            gpus = allocated_gpus(self.environ)
            if gpus is None:
                return ["--device", "nvidia.com/gpu=all"]
            return [arg for g in gpus for arg in ("--device", f"nvidia.com/gpu={g}")]
        args = self.amd_args()
        if self.rootless:  # keep the caller's video/render groups for /dev/dri
            args[-2:] = ["--group-add", "keep-groups"]
        return args


def has_subid_range(path: str, user: str) -> bool:
    uid = str(os.getuid())
    try:
        with open(path) as fh:
            return any(line.split(":", 1)[0] in (user, uid) for line in fh if ":" in line)
    except OSError:
        return False
