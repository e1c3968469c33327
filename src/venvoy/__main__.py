"""``python -m venvoy``."""

from .cli import entry

entry()
