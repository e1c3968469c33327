"""The runtime adapters, one module each, and the table that names them.

The table maps a runtime's name to its executable and to where its adapter
lives, so detection can look for every runtime without importing any adapter;
only the chosen one is imported (this keeps ``venvoy run`` fast).
"""

from __future__ import annotations

import importlib

from venvoy.runtime.base import Invocation, Runtime


class RuntimeEntry:
    """A row of the table: no adapter is imported until it is needed."""

    __slots__ = ("binary", "cls", "module", "name", "tested")

    def __init__(self, name: str, binary: str, module: str, cls: str, tested: bool) -> None:
        self.name = name
        self.binary = binary
        self.module = module
        self.cls = cls
        self.tested = tested


#: Every runtime venvoy knows. Shifter and Enroot are written to their
#: documented CLI and have never been run against the real program here.
RUNTIMES: dict[str, RuntimeEntry] = {
    e.name: e
    for e in (
        RuntimeEntry("docker", "docker", "docker", "Docker", True),
        RuntimeEntry("podman", "podman", "podman", "Podman", True),
        RuntimeEntry("apptainer", "apptainer", "apptainer", "Apptainer", True),
        RuntimeEntry("singularity", "singularity", "singularity", "Singularity", True),
        RuntimeEntry("charliecloud", "ch-run", "charliecloud", "Charliecloud", True),
        RuntimeEntry("shifter", "shifter", "shifter", "Shifter", False),
        RuntimeEntry("enroot", "enroot", "enroot", "Enroot", False),
    )
}


def adapter_class(name: str) -> type[Runtime]:
    """Import and return the adapter class for a runtime name."""
    entry = RUNTIMES[name]
    module = importlib.import_module(f"{__name__}.{entry.module}")
    cls: type[Runtime] = getattr(module, entry.cls)
    return cls


__all__ = ["RUNTIMES", "Invocation", "Runtime", "RuntimeEntry", "adapter_class"]
