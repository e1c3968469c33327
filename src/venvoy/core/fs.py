"""The file-system primitives everything that writes uses: one way to publish
a file or directory atomically, one lock, one file hash, one scratch directory.

Nothing venvoy writes is ever seen half-written: it is made under a temporary
name in the same directory (so the rename is atomic) and renamed into place.
Every temporary name carries its owner, ``@HOST+PID+START+RANDOM`` (START is
the process's start time, so a reused PID is not mistaken for the owner), and
:func:`clean_stale` removes the entries whose owner is gone: at once when the
owner ran on this host and is dead, after :data:`STALE_S` when it ran on
another host (a shared file system), never while the owner is alive.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path
    from typing import IO

#: Prefix of every temporary name venvoy makes next to a final one.
TMP_PREFIX = ".tmp-"
#: Entries of another host, or without an owner, older than this are leftovers.
STALE_S = 6 * 3600

_OWNER_RE = re.compile(
    r"@([A-Za-z0-9.-]{1,64})\+(\d{1,10})\+(\d{1,20})\+[0-9a-f]{8}(?:\.[A-Za-z0-9]{1,16})?$")
_owner: tuple[int, str] | None = None


def _host() -> str:
    """This host's name, plus its PID namespace where there is one: a venvoy in
    a container (same host name under --network=host) has PIDs of its own."""
    import socket

    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "localhost"
    try:
        ns = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
        host += "-" + "".join(c for c in ns if c.isdigit())[:20]
    except OSError:
        pass
    return host


def _start_time(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot; 0 where /proc
    is missing), or None when no such process exists."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        pass  # no /proc, or another user's process hidden (hidepid): ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:  # EPERM: it exists, owned by another user
        pass
    return 0


def owner_tag() -> str:
    """``HOST+PID+START`` of this process: who owns a temporary entry."""
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:  # recomputed after a fork
        _owner = (pid, f"{_host()}+{pid}+{_start_time(pid) or 0}")
    return _owner[1]


def temp_name(stem: str, suffix: str = "") -> str:
    """A fresh name ``STEM@OWNER+RANDOM[SUFFIX]`` that :func:`clean_stale` understands."""
    return f"{stem}@{owner_tag()}+{os.urandom(4).hex()}{suffix}"


def container_name(stem: str) -> str:
    """A container name that carries its owner like :func:`temp_name` does, in
    the alphabet Docker and Podman accept (``[A-Za-z0-9][A-Za-z0-9_.-]*``)."""
    return temp_name(stem).replace("@", "_").replace("+", "_")


def container_owner_alive(name: str) -> bool | None:
    """:func:`owner_alive` for a :func:`container_name`."""
    parts = name.rsplit("_", 4)
    if len(parts) != 5:
        return None
    stem, host, pid, start, rand = parts
    return owner_alive(f"{stem}@{host}+{pid}+{start}+{rand}")


def owner_alive(name: str) -> bool | None:
    """Whether the owner written in ``name`` still runs: True or False for an
    owner on this host, None when unknown (no owner, or another host)."""
    match = _OWNER_RE.search(name)
    if match is None or match.group(1) != owner_tag().rsplit("+", 2)[0]:
        return None
    pid, start = int(match.group(2)), int(match.group(3))
    now = _start_time(pid)
    if now is None:
        return False
    return start == 0 or now == 0 or now == start


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Delete a directory tree, including the read-only directories a runtime's
    build leaves (made writable first); never follows a symlink out of it."""
    import shutil
    import stat

    def retry(_func: Callable[..., object], name: str, _exc: object) -> None:
        with contextlib.suppress(OSError):
            parent = os.path.dirname(name)
            os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | stat.S_IRWXU)
            if os.path.isdir(name) and not os.path.islink(name):
                os.chmod(name, stat.S_IMODE(os.lstat(name).st_mode) | stat.S_IRWXU)
                shutil.rmtree(name, ignore_errors=True)
            else:
                os.unlink(name)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


@contextlib.contextmanager
def new_path(final: Path, *, directory: bool = False, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; on success rename it into place.

    On any failure (or a kill) only the temporary name is left, never a
    half-written ``final``. An existing ``final`` directory is swapped out and
    deleted after the new one is in. ``mode`` is applied before the rename.
    """
    import shutil

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(temp_name(f"{TMP_PREFIX}{final.name[:80]}"))
    if directory:
        tmp.mkdir(mode=0o700)
    else:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        yield tmp
        if mode is not None:
            tmp.chmod(mode)
        if directory and final.is_dir() and not final.is_symlink():
            old = final.with_name(temp_name(f"{TMP_PREFIX}old-{final.name[:80]}"))
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
def scratch_dir(parent: Path, stem: str, *, stale: tuple[str, ...] = ()) -> Iterator[Path]:
    """A new private directory ``parent/STEM@OWNER+RANDOM``, removed on exit.

    Stale ones (owner killed) are removed first, so scratch space left by a
    ``kill -9`` or a power cut is reclaimed by the next run, not never
    (``stale``: more name prefixes to clean, as :func:`clean_stale` takes).
    """
    parent.mkdir(parents=True, exist_ok=True)
    clean_stale(parent, prefixes=stale)
    path = parent / temp_name(stem)
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        remove_tree(path)


@contextlib.contextmanager
def file_lock(path: Path, *, timeout: float, what: str,
              waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive lock held through the file ``path`` (any process, any host
    sharing the file system: ``flock``, which Linux maps onto NFS locks), with
    one clear error after ``timeout`` seconds. ``waiting`` is called once when
    another process holds it (to say so). The lock file is opened without
    following links, and the lock dies with its holder (no stale lock files)."""
    import fcntl

    from venvoy.core.errors import VenvoyError

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise VenvoyError(f"cannot open the lock file {path}: {exc.strerror or exc}",
                          "it must be a regular file in a writable directory; remove it and retry"
                          ) from None
    try:
        deadline = time.monotonic() + timeout
        pause = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            if waiting is not None:
                waiting()
                waiting = None
            left = deadline - time.monotonic()
            if left <= 0:
                raise VenvoyError(
                    f"timed out after {timeout:.0f} s waiting for another venvoy working on {what}",
                    f"if no other venvoy is running, remove {path} and retry",
                )
            time.sleep(min(pause, left))  # a lock holder is working: poll, backing off
            pause = min(pause * 2, 0.25)
        yield
    finally:
        os.close(fd)  # releases the lock


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
    """Remove the temporary entries a killed process left in ``directory``;
    returns how many.

    An entry is temporary when its name carries an owner (see
    :func:`temp_name`) or starts with one of ``prefixes`` (names older venvoys
    or a runtime made; give ``()`` in a directory that is the user's). It is
    removed when its owner ran on this host and is gone, or, when the owner is
    unknown (another host, an older venvoy), once it is older than
    ``older_than`` seconds. An entry whose owner is alive is
    never removed, however old.
    """
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    now = time.time()
    for entry in entries:
        owned = _OWNER_RE.search(entry.name) is not None
        if not owned and not entry.name.startswith(prefixes):
            continue
        alive = owner_alive(entry.name)
        if alive:
            continue
        if alive is None:
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if age < older_than:
                continue
        try:
            if entry.is_dir(follow_symlinks=False):
                remove_tree(entry.path)
            else:
                os.unlink(entry.path)
            removed += 1
        except OSError:
            pass
    return removed


__all__ = ["STALE_S", "TMP_PREFIX", "atomic_write", "clean_stale", "container_name",
           "container_owner_alive", "file_lock", "new_path", "open_fresh",
           "owner_alive", "owner_tag", "remove_tree", "scratch_dir", "sha256_file", "temp_name"]


def open_fresh(path: Path) -> IO[bytes]:
    """Open ``path`` for writing as a new regular file of ours: whatever is there
    (a symlink someone planted, a FIFO, an old file) is removed first, never
    followed or written through."""
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(path) and not os.path.islink(path):
            import shutil

            shutil.rmtree(path)
        else:
            os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    return os.fdopen(fd, "wb")
