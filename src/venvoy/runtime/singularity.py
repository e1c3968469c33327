"""Singularity (SingularityCE, or Apptainer's ``singularity`` command)."""

from __future__ import annotations

import os

from venvoy.runtime.apptainer import Apptainer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar


class Singularity(Apptainer):
    name: ClassVar[str] = "singularity"
    binary: ClassVar[str] = "singularity"

    def env_prefix(self) -> str:
        # Apptainer's `singularity` is a link to `apptainer` and warns about
        # SINGULARITYENV_ variables, so speak its own dialect there.
        if os.path.basename(os.path.realpath(self.path)).startswith("apptainer"):
            return "APPTAINERENV_"
        return "SINGULARITYENV_"
