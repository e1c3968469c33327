"""The exports that need no venvoy to use, under the names earlier versions gave them.

Each format lives in its own module (see :data:`venvoy.transport.FORMATS`):
:mod:`~venvoy.transport.wheelhouse`, :mod:`~venvoy.transport.contexts`
(``containerfile`` and ``apptainer-def``) and :mod:`~venvoy.transport.lockfile`.
"""

from __future__ import annotations

from venvoy.transport.common import env_arch
from venvoy.transport.contexts import (
    apptainer_def_text,
    base_reference,
    containerfile_text,
    export_apptainer_def,
    export_containerfile,
    is_reference,
    labels,
    readme_text,
)
from venvoy.transport.lockfile import export_lock
from venvoy.transport.wheelhouse import export_wheelhouse, import_wheelhouse, read_wheelhouse

__all__ = [
    "apptainer_def_text",
    "base_reference",
    "containerfile_text",
    "env_arch",
    "export_apptainer_def",
    "export_containerfile",
    "export_lock",
    "export_wheelhouse",
    "import_wheelhouse",
    "is_reference",
    "labels",
    "read_wheelhouse",
    "readme_text",
]
