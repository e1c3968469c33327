"""Docker Engine: ``docker run``, with files on mounts owned by the caller."""

from __future__ import annotations

import os

from venvoy.core.errors import BadRequest
from venvoy.runtime.base import which
from venvoy.runtime.oci_cli import OciCliRuntime, allocated_gpus
from venvoy.runtime.request import Gpu, RunRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar


class Docker(OciCliRuntime):
    name: ClassVar[str] = "docker"
    binary: ClassVar[str] = "docker"
    #: The daemon starts the containers: a batch job's limits do not hold for them.
    escapes_job_limits: ClassVar[bool] = True

    @property
    def rootless(self) -> bool:
        # Rootless Docker runs its daemon under the user's uid, socket in XDG_RUNTIME_DIR.
        return "/run/user/" in self.socket_path() or "rootless" in self.environ.get("DOCKER_HOST", "")

    def socket_path(self) -> str:
        host = self.environ.get("DOCKER_HOST", "")
        if host.startswith("unix://"):
            return host[len("unix://"):]
        return "" if host else "/var/run/docker.sock"

    def is_podman_shim(self) -> bool:
        """podman-docker installs a `docker` that is really Podman."""
        real = os.path.realpath(self.path)
        if os.path.basename(real).startswith("podman"):
            return True
        try:
            with open(real, "rb") as fh:
                head = fh.read(4096)
        except OSError:
            return False
        return head.startswith(b"#!") and b"podman" in head

    def problem(self) -> str | None:
        if self.is_podman_shim():
            return "this `docker` is Podman's compatibility shim; use --runtime podman"
        sock = self.socket_path()
        if not sock:
            return None  # remote daemon (tcp://, ssh://): trust DOCKER_HOST
        if not os.path.exists(sock):
            return f"the Docker daemon is not running (no socket at {sock}); start dockerd"
        if not os.access(sock, os.R_OK | os.W_OK):
            return (
                f"no permission to use {sock}; ask for membership of the docker group, "
                "or use Podman or Apptainer"
            )
        return None

    def version_argv(self) -> list[str]:
        return [self.path, "version", "--format", "{{.Server.Version}}"]

    def user_args(self, req: RunRequest) -> list[str]:
        # The daemon runs as root; without --user, files written to a bind mount
        # would belong to root on the host. (Rootless Docker maps root to the caller.)
        if req.uid == 0 or self.rootless:
            return []
        return ["--user", f"{req.uid}:{req.gid}"]

    def check_gpu(self, req: RunRequest) -> None:
        super().check_gpu(req)
        if req.gpu == Gpu.NVIDIA and not (
            which("nvidia-container-runtime-hook") or which("nvidia-container-cli")
        ):
            raise BadRequest(
                "--gpu nvidia: Docker needs the NVIDIA Container Toolkit, which is not installed",
                "install nvidia-container-toolkit, or use --runtime apptainer",
            )

    def gpu_args(self, req: RunRequest) -> list[str]:
        if req.gpu != Gpu.NVIDIA:
            return self.amd_args()
        gpus = allocated_gpus(self.environ)  # only the job's GPUs, not `all`
        # Docker reads --gpus as CSV: the quotes keep "device=1,3" one field.
        return ["--gpus", "all" if gpus is None else f'"device={",".join(gpus)}"']
