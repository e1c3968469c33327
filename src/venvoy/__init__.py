"""venvoy: one reproducible Python environment on every container runtime.

``from venvoy import VenvoyEnvironment`` is resolved lazily, so that importing
the package (as ``venvoy run`` does) stays cheap.
"""

from __future__ import annotations

from venvoy.core.version import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from venvoy.api.environment import VenvoyEnvironment

__all__ = ["VenvoyEnvironment", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "VenvoyEnvironment":
        from venvoy.api.environment import VenvoyEnvironment

        return VenvoyEnvironment
    raise AttributeError(f"module 'venvoy' has no attribute {name!r}")
