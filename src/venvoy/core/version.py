"""venvoy's version: in core so that every layer can name it without importing
the top-level package (which sits above all layers)."""

from __future__ import annotations

__version__ = "0.1.0"
