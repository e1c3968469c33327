"""The seed's runtime API, kept exactly as documented, on top of :mod:`venvoy.runtime.detect`.

::

    from venvoy.container_manager import ContainerManager, ContainerRuntime
    manager = ContainerManager()
    info = manager.get_runtime_info()          # {"runtime", "version", "is_hpc", ...}
    manager._check_runtime_available(ContainerRuntime.APPTAINER)   # bool
    manager._is_hpc_environment()                                  # bool
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from typing import Any

from venvoy.core.errors import VenvoyError


class ContainerRuntime(str, Enum):
    """The container runtimes venvoy can drive."""

    DOCKER = "docker"
    PODMAN = "podman"
    APPTAINER = "apptainer"
    SINGULARITY = "singularity"
    CHARLIECLOUD = "charliecloud"
    SHIFTER = "shifter"
    ENROOT = "enroot"


class ContainerManager:
    """Chooses a runtime (or uses the one given) and runs images with it."""

    def __init__(self, runtime: ContainerRuntime | str | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self._requested = runtime.value if isinstance(runtime, ContainerRuntime) else runtime
        self._environ = environ

    def get_runtime_info(self) -> dict[str, Any]:
        """The chosen runtime, its version, HPC detection and every runtime found.

        Never raises because no runtime is usable: ``runtime`` is then None and
        ``error`` says why.
        """
        from venvoy.runtime.detect import runtime_info

        return runtime_info(self._requested, self._environ)

    @property
    def runtime(self) -> ContainerRuntime:
        """The runtime that will be used (raises VenvoyError when none is usable)."""
        from venvoy.runtime.detect import choose_runtime

        return ContainerRuntime(choose_runtime(self._requested, self._environ).runtime.name)

    def _check_runtime_available(self, runtime: ContainerRuntime | str) -> bool:
        """True when the runtime is installed and usable here."""
        from venvoy.runtime.detect import get_runtime

        name = runtime.value if isinstance(runtime, ContainerRuntime) else runtime
        try:
            get_runtime(name, self._environ)
        except VenvoyError:
            return False
        return True

    def _is_hpc_environment(self) -> bool:
        """True inside a scheduler job or on a host named like a cluster node."""
        from venvoy.runtime.hpc import detect_hpc

        return detect_hpc(self._environ).is_hpc

    def run(self, image: str, command: Sequence[str], *, mounts: Iterable[str] = (),
            env: Mapping[str, str] | None = None, workdir: str | None = None,
            gpu: str | None = None) -> int:
        """Run ``command`` in ``image`` and return its exit status."""
        from venvoy.runtime.detect import choose_runtime
        from venvoy.runtime.request import make_request
        from venvoy.runtime.runner import run

        req = make_request(image, command, mounts=mounts, env=env or {}, workdir=workdir, gpu=gpu,
                           tty=False, environ=os.environ if self._environ is None else self._environ)
        return run(choose_runtime(self._requested, self._environ).runtime, req)
