"""The ``lock`` export: the environment's ``pylock.toml`` (PEP 751), as it is."""

from __future__ import annotations

from pathlib import Path

from venvoy.core.fs import atomic_write
from venvoy.store.records import Environment
from venvoy.transport.common import DownloadProgress, Say, default_output


def export_lock(env: Environment, output: Path | None, *, progress: Say | None = None,
                download_progress: DownloadProgress | None = None) -> Path:
    """The environment's ``pylock.toml`` (default ``./<name>.pylock.toml``)."""
    final = default_output(output, f"{env.name}.pylock.toml").absolute()
    atomic_write(final, env.lock_text.encode())
    return final


__all__ = ["export_lock"]
