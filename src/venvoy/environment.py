"""Named environments (``VenvoyEnvironment``): declared, locked, built, run.

Environments arrive with the environments issue; until then the class exists
so that ``from venvoy import VenvoyEnvironment`` imports, and each method says
clearly that it is not there yet instead of failing somewhere deep.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import VenvoyError


def _not_yet() -> VenvoyError:
    return VenvoyError(
        "named environments are not implemented in this venvoy yet",
        "run an existing image with `venvoy run --image IMAGE -- CMD` meanwhile",
    )


class VenvoyEnvironment:
    """A named, reproducible Python environment."""

    def __init__(self, name: str, python_version: str = "3.11", runtime: str | None = None) -> None:
        self.name = name
        self.python_version = python_version
        self.runtime = runtime

    def initialize(self) -> None:
        raise _not_yet()

    def run(self, command: str | Sequence[str], additional_mounts: Sequence[str] = ()) -> int:
        raise _not_yet()

    def export_archive(self, path: str) -> str:
        raise _not_yet()

    def import_archive(self, path: str) -> str:
        raise _not_yet()
