"""The seed's import path for the runtime API, kept exactly as documented::

    from venvoy.container_manager import ContainerManager, ContainerRuntime

The code lives in :mod:`venvoy.api.container_manager`.
"""

from __future__ import annotations

from venvoy.api.container_manager import ContainerManager, ContainerRuntime

__all__ = ["ContainerManager", "ContainerRuntime"]
