"""The file-system primitives everything that writes uses: one way to publish
a file or directory atomically, one lock, one file hash.

Nothing venvoy writes is ever seen half-written: it is made under a temporary
name (``.tmp-<final>-<random>``, in the same directory so the rename is
atomic) and renamed into place. Temporary names left by a killed process are
removed by :func:`clean_stale` on a later run.
"""

from __future__ import annotations

import contextlib
import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

#: Prefix of every temporary name venvoy makes next to a final one.
TMP_PREFIX = ".tmp-"
#: Temporary entries older than this are a killed process's leftovers.
STALE_S = 6 * 3600


@contextlib.contextmanager
def new_path(final: Path, *, directory: bool = False, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; on success rename it into place.

    On any failure (or a kill) only the temporary name is left, never a
    half-written ``final``. An existing ``final`` directory is swapped out and
    deleted after the new one is in. ``mode`` is applied before the rename.
    """
    import shutil
    import tempfile
    from pathlib import Path

    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f"{TMP_PREFIX}{final.name[:80]}-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if mode is not None:
            tmp.chmod(mode)
        if directory and final.is_dir() and not final.is_symlink():
            old = final.with_name(f"{TMP_PREFIX}old-{final.name[:80]}-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if os.path.lexists(tmp):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


def atomic_write(final: Path, data: bytes | str, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``final`` in one step: readers see the old or the new file."""
    with new_path(final, mode=mode) as tmp:
        if isinstance(data, str):
            data = data.encode()
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


@contextlib.contextmanager
def file_lock(path: Path, *, timeout: float, what: str) -> Iterator[None]:
    """An exclusive lock held through the file ``path`` (any process, any host
    sharing the file system), with one clear error after ``timeout`` seconds."""
    import filelock

    from venvoy.core.errors import VenvoyError

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path), timeout=timeout)
    try:
        with lock:
            yield
    except filelock.Timeout:
        raise VenvoyError(
            f"timed out after {timeout:.0f} s waiting for another venvoy working on {what}",
            f"if no other venvoy is running, remove {path} and retry",
        ) from None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def clean_stale(directory: Path, *, older_than: float = STALE_S,
                prefixes: tuple[str, ...] = (TMP_PREFIX,)) -> int:
    """Remove temporary entries (names starting with one of ``prefixes``) that a
    killed process left in ``directory``; returns how many. Young ones may
    belong to a venvoy running now and are left alone."""
    import shutil

    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    now = time.time()
    for entry in entries:
        if not entry.name.startswith(prefixes):
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if age < older_than:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            removed += 1
        except OSError:
            pass
    return removed


__all__ = ["STALE_S", "TMP_PREFIX", "atomic_write", "clean_stale", "file_lock", "new_path",
           "sha256_file"]
