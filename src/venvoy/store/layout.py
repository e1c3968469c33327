"""The store: one root for everything venvoy keeps, laid out like a cache.

::

    <root>/envs/<name>/          env.json, pylock.toml, requirements.in (one dir per environment)
    <root>/images/<id>.tar       canonical Docker archives, named by image ID (content-addressed)
    <root>/cache/wheels/         downloaded wheels by sha256 (shared by all environments)
    <root>/cache/sif/<id>.sif    SIF files made from canonical images, by image ID
    <root>/cache/ch/<id>/        unpacked Charliecloud image directories, by image ID
    <root>/bases/                bootstrapped and pulled base images
    <root>/locks/                one lock file per entry being created
    <root>/tmp/                  build and conversion space (same file system: renames are atomic)

The root is ``VENVOY_HOME`` or the platform's user data directory. Entries are
created under a temporary name and renamed into place, under a per-entry lock,
so many processes (say, 16 array jobs) can ask for the same entry at once and
exactly one makes it. ``VENVOY_LIBRARY`` names a read-only directory a site
admin fills with ``<id>.sif`` files; it is searched before the cache.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from venvoy.core.errors import VenvoyError
from venvoy.core.fs import file_lock, new_path

#: How long to wait for another process that is creating the same entry.
LOCK_TIMEOUT_S = float(os.environ.get("VENVOY_LOCK_TIMEOUT", "1800"))


def store_root(environ: Mapping[str, str] | None = None) -> Path:
    from venvoy.core.paths import data_dir

    return Path(data_dir(environ))


class Store:
    """Paths and safe-creation helpers for one store root."""

    def __init__(self, root: Path | None = None, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ
        self.root = (root or store_root(self.environ)).absolute()

    # -- layout -------------------------------------------------------------------
    @property
    def envs(self) -> Path:
        return self.root / "envs"

    def env_dir(self, name: str) -> Path:
        from venvoy.core.names import check_name

        return self.envs / check_name(name)

    def image_archive(self, image_id: str) -> Path:
        return self.root / "images" / f"{digest_hex(image_id)}.tar"

    @property
    def wheels(self) -> Path:
        return self.root / "cache" / "wheels"

    def sif(self, image_id: str) -> Path:
        return self.root / "cache" / "sif" / f"{digest_hex(image_id)}.sif"

    def ch_dir(self, image_id: str) -> Path:
        return self.root / "cache" / "ch" / digest_hex(image_id)

    @property
    def bases(self) -> Path:
        return self.root / "bases"

    @property
    def tmp(self) -> Path:
        """Scratch space inside the store: same file system, so renames are atomic,
        and never a small /tmp by surprise (``VENVOY_TMPDIR`` overrides)."""
        path = Path(self.environ.get("VENVOY_TMPDIR") or self.root / "tmp")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def library(self) -> Path | None:
        lib = self.environ.get("VENVOY_LIBRARY")
        return Path(lib) if lib else None

    # -- safe creation ------------------------------------------------------------
    def lock(self, key: str, timeout: float = LOCK_TIMEOUT_S) -> contextlib.AbstractContextManager[None]:
        """An exclusive lock on one entry, shared by every process using this store."""
        return file_lock(self.root / "locks" / f"{safe_key(key)}.lock", timeout=timeout, what=key)

    def new_path(self, final: Path, *, directory: bool = False) -> contextlib.AbstractContextManager[Path]:
        """See :func:`venvoy.core.fs.new_path`."""
        return new_path(final, directory=directory)


def digest_hex(image_id: str) -> str:
    """The hex part of "sha256:<hex>", checked so it can be used as a file name."""
    algo, _, hexdigest = image_id.partition(":")
    if not hexdigest:
        hexdigest, algo = algo, "sha256"
    if algo != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
        raise VenvoyError(f"bad image digest {image_id!r}")
    return hexdigest


def safe_key(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)[:200]
