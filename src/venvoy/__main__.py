"""``python -m venvoy``."""

from venvoy.cli.main import entry

entry()
