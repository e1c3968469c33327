"""Progress for long steps: bars on a terminal, plain lines otherwise, nothing with --quiet.

Everything goes to stderr, so stdout stays clean for data (``--json``).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO


class Reporter:
    """What the library calls while it works; the CLI decides how it looks."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._lock = threading.Lock()
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        self._last_line = 0.0

    def step(self, message: str) -> None:
        """A step is starting (bootstrap, lock, download, build, convert)."""
        if self.quiet:
            return
        with self._lock:
            if self._bar is not None:
                self._bar.console.print(f"venvoy: {message}", highlight=False)
            else:
                print(f"venvoy: {message}", file=self.stream, flush=True)

    def download(self, name: str, done: int, total: int) -> None:
        """Bytes arrived for one file (called from download threads)."""
        if self.quiet:
            return
        with self._lock:
            if self.tty:
                self._tty_download(name, done, total)
            elif done >= total > 0 or time.monotonic() - self._last_line > 5:
                self._last_line = time.monotonic()
                if done >= total > 0:
                    print(f"venvoy: downloaded {name} ({total / 1e6:.1f} MB)", file=self.stream,
                          flush=True)

    def _tty_download(self, name: str, done: int, total: int) -> None:
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            # Rich's default console is stdout's: the bar must go where the
            # lines go (stderr), or `--json` output and `2>/dev/null` break.
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), console=Console(file=self.stream),
                                 transient=True, redirect_stdout=False, redirect_stderr=False)
            self._bar.start()
        task = self._tasks.get(name)
        if task is None:
            label = name if len(name) <= 40 else name[:37] + "..."
            task = self._tasks[name] = self._bar.add_task(label, total=total or None)
        self._bar.update(task, completed=done)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.stop()
                self._bar = None
                self._tasks.clear()
