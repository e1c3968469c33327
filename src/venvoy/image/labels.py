"""What venvoy writes into every image: where the venv lives, and its labels."""

from __future__ import annotations

VENV_PATH = "/opt/venv"
META_PATH = "opt/venvoy"
LABEL = "org.venvoy"
