"""What the export formats share: output names, the environment's architecture,
and the locked files, fetched into the wheel cache and verified before use."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from venvoy.core.errors import VenvoyError
from venvoy.core.fs import sha256_file
from venvoy.core.platform import LOCK_ARCHES, arch, host
from venvoy.store.records import Environment

if TYPE_CHECKING:
    from venvoy.build.lock import LockedFile

Say = Callable[[str], None]
DownloadProgress = Callable[[str, int, int], None]


def quiet(_msg: str) -> None:
    return None


def default_output(output: Path | None, name: str) -> Path:
    """``output``; ``name`` inside it when it is a directory; ``./name`` without one."""
    if output is None:
        return Path.cwd() / name
    output = Path(output)
    return output / name if output.is_dir() else output


def wheel_arch(filename: str) -> str | None:
    """The lock architecture a wheel's platform tag names, or None (pure Python, sdist)."""
    if not filename.endswith(".whl"):
        return None
    platform_tag = filename[:-4].split("-")[-1]
    for tag in platform_tag.split("."):
        for machine in LOCK_ARCHES:
            if tag.endswith("_" + machine):
                return machine
    return None


def env_arch(env: Environment) -> str:
    """The machine architecture the environment's lock is for: the record's, else its
    wheels', else its image's, else this machine's."""
    from venvoy.build.lock import parse

    if env.record.arch in LOCK_ARCHES:
        return env.record.arch
    for pkg in parse(env.lock_text):
        for wheel in pkg.wheels:
            found = wheel_arch(wheel.filename)
            if found is not None:
                return found
    if env.archive.is_file():
        from venvoy.image.oci import inspect_archive

        with contextlib.suppress(VenvoyError, OSError, ValueError, KeyError):
            row = arch(str(inspect_archive(env.archive).config.get("architecture")))
            if row is not None and row.machine in LOCK_ARCHES:
                return row.machine
    return host().machine


def other_arch(machine: str) -> str:
    """The lock architecture that is not ``machine`` (x86_64 <-> aarch64)."""
    return next(a for a in LOCK_ARCHES if a != machine)


def cached_files(env: Environment, lock_texts: Sequence[str],
                 download_progress: DownloadProgress | None) -> dict[str, tuple[LockedFile, Path]]:
    """filename -> (LockedFile, path in the wheel cache) for every file the locks name.

    Every file is checked against the lock's sha256 before it is handed out: a
    damaged cache entry is fetched again, and refused if it still differs, so an
    export never ships a file the lock does not name.
    """
    from venvoy.build.lock import files_to_fetch, parse
    from venvoy.build.wheels import WheelCache

    files: dict[str, LockedFile] = {}
    for text in lock_texts:
        for f in files_to_fetch(parse(text)):
            known = files.get(f.filename)
            if known is not None and known.sha256 != f.sha256:
                raise VenvoyError(f"the locks name two different files called {f.filename}",
                                  "re-create the lock")
            files[f.filename] = f
    cache = WheelCache(env.store.wheels)
    wanted = list(files.values())
    paths = dict(zip(files, cache.fetch(wanted, progress=download_progress), strict=True))
    damaged = [f for f in wanted if sha256_file(paths[f.filename]) != f.sha256]
    if damaged:
        for f in damaged:
            paths[f.filename].unlink(missing_ok=True)
        for f, path in zip(damaged, cache.fetch(damaged, progress=download_progress), strict=True):
            if sha256_file(path) != f.sha256:
                path.unlink(missing_ok=True)
                raise VenvoyError(f"{f.filename} does not match the sha256 the lock gives, even "
                                  f"fetched again from {f.url[:200]}",
                                  "the index serves another file than the one locked: "
                                  f"re-create the lock with `venvoy init {env.name} --force`")
            paths[f.filename] = path
    return {name: (f, paths[name]) for name, f in files.items()}


__all__ = ["DownloadProgress", "Say", "cached_files", "default_output", "env_arch", "other_arch",
           "quiet", "wheel_arch"]


#: ``scheme://user:secret@`` in a URL (a git+ssh ``git@`` is a user name, not a secret).
USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?!git@)[^/@\s]+@")


def redacted(value: Any) -> Any:
    """``value`` with credentials in URLs (``https://user:token@host``) replaced by ``***``:
    what leaves the machine (an archive, a registry's annotations) carries no secret."""
    if isinstance(value, str):
        return USERINFO.sub(r"\g<scheme>***@", value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value
