"""``python -m venvoy``."""

import sys

from .cli import main

sys.exit(main())
