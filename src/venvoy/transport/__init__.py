"""Moving environments between machines: one table of export formats, and import.

Adding a format is one module with an ``export(env, output, **options)``
function plus one row in :data:`FORMATS`; the CLI's ``--format`` choices and
help come from this table.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from venvoy.store.records import Environment


class ExportFormat:
    """A row of :data:`FORMATS`: nothing is imported until the format is used."""

    __slots__ = ("function", "help", "module", "name", "sif")

    def __init__(self, name: str, module: str, function: str, help: str, sif: bool = False) -> None:
        self.name = name
        self.module = module
        self.function = function
        self.help = help
        self.sif = sif  #: accepts ``with_sif``


FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("archive", "archive", "export_archive",
                 "the image, verified, for `venvoy import` (default)", sif=True),
    ExportFormat("wheelhouse", "wheelhouse", "export_wheelhouse",
                 "the lock and wheels for x86_64 and aarch64"),
    ExportFormat("containerfile", "contexts", "export_containerfile",
                 "a build context for plain podman/docker build"),
    ExportFormat("apptainer-def", "contexts", "export_apptainer_def",
                 "a build context for plain apptainer build"),
    ExportFormat("lock", "lockfile", "export_lock", "pylock.toml"),
)}


def export_format(env: Environment, fmt: str, output: Path | None, *, with_sif: bool = False,
                  progress: Callable[[str], None] | None = None,
                  download_progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Write ``env`` in format ``fmt``; returns the path written."""
    from venvoy.core.errors import BadRequest

    row = FORMATS.get(fmt)
    if row is None:
        raise BadRequest(f"unknown export format {fmt!r}", "choose one of " + ", ".join(FORMATS))
    if with_sif and not row.sif:
        raise BadRequest(f"--with-sif does not go with --format {fmt}", "use --format archive")
    function = getattr(importlib.import_module(f"{__name__}.{row.module}"), row.function)
    kwargs: dict[str, object] = {"progress": progress}
    if row.sif:
        kwargs["with_sif"] = with_sif
    else:
        kwargs["download_progress"] = download_progress
    path: Path = function(env, output, **kwargs)
    return path


__all__ = ["FORMATS", "ExportFormat", "export_format"]
