"""The ``wheelhouse`` export and its import: an environment rebuilt on a machine without PyPI.

One tar holding ``manifest.json`` first (the environment's record, the locks,
and the size and sha256 of every other member), the environment's lock, a
second lock for the other architecture (x86_64 <-> aarch64) and ``wheels/``
with every file both locks name, each checked against the lock's sha256.

Importing reads it with the bounded reader of :mod:`venvoy.image.tarsafe`,
under the same limits and the same member check as an archive; the wheels
then go into the wheel cache (replacing a damaged entry there), so the
rebuild takes every locked file from the wheelhouse and makes no request to
the URLs the lock names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, NamedTuple

from venvoy.core.errors import DamagedError, VenvoyError
from venvoy.core.fs import new_path, sha256_file, temp_name
from venvoy.core.platform import LOCK_ARCHES, host
from venvoy.core.version import __version__
from venvoy.image import compress, tarsafe
from venvoy.image.tarsafe import MAX_MANIFEST, Member, TarReader, TarWriter
from venvoy.store.layout import Store
from venvoy.store.records import Environment, EnvRecord, find
from venvoy.transport.common import (
    DownloadProgress,
    Say,
    cached_files,
    default_output,
    env_arch,
    other_arch,
    quiet,
)

WHEELHOUSE_FORMAT = "venvoy-wheelhouse"
WHEELHOUSE_VERSION = 1
MANIFEST = "manifest.json"
_HINT = "the wheelhouse is damaged or was altered; export it again"
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.+!~-")


def env_arch_here() -> str:
    """This machine's architecture as locks name it."""
    return host().machine


def _plain_name(name: str) -> bool:
    return (0 < len(name) <= 255 and name[0] not in ".+!~-" and all(c in _NAME_CHARS for c in name))


def member_name_ok(name: str) -> bool:
    """The names a wheelhouse holds: ``FILE`` or ``wheels/FILE``, plain ASCII file names."""
    parts = name.split("/")
    return (len(parts) == 1 and _plain_name(parts[0]) and name not in ("wheels", MANIFEST)) or (
        len(parts) == 2 and parts[0] == "wheels" and _plain_name(parts[1]))


# --------------------------------------------------------------------------- export


def export_wheelhouse(env: Environment, output: Path | None, *, progress: Say | None = None,
                      download_progress: DownloadProgress | None = None) -> Path:
    """One tar for ``venvoy import`` (default ``./<name>-<lock hash[:12]>.wheelhouse.tar``):
    ``manifest.json`` first, the lock, a lock for the other architecture, ``wheels/``."""
    from venvoy.build import lock as locking
    from venvoy.image.oci import source_date_epoch

    say = progress or quiet
    final = default_output(output, f"{env.name}-{env.lock_hash[:12]}.wheelhouse.tar").absolute()
    arch = env_arch(env)
    other = other_arch(arch)
    lock_text = env.lock_text
    locks = {arch: ("pylock.toml", lock_text)}
    missing: dict[str, str] = {}
    say(f"locking {env.name} for {other} too (keeping the versions of the {arch} lock)")
    try:
        platform = locking.Platform(env.python, arch=other, glibc=env.record.glibc or "2.17")
        locks[other] = (f"pylock.{other}.toml",
                        locking.resolve(env.requirements, platform, previous=lock_text))
    except locking.ResolveError as exc:
        say(f"warning: no lock for {other}, the wheelhouse serves {arch} only: {exc.message}")
        missing[other] = exc.message
    files = cached_files(env, [t for _p, t in locks.values()], download_progress)
    lock_bytes = {path: text.encode() for path, text in locks.values()}
    members: dict[str, dict[str, Any]] = {
        path: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        for path, data in lock_bytes.items()}
    for name, (f, src) in sorted(files.items()):
        members[f"wheels/{name}"] = {"sha256": f.sha256, "size": src.stat().st_size}
    record = env.as_dict()
    record.pop("inputs", None)
    record["arch"] = arch
    manifest = {
        "format": WHEELHOUSE_FORMAT, "format_version": WHEELHOUSE_VERSION,
        "venvoy_version": __version__, "environment": record,
        "locks": {a: {"path": p, "lock_hash": locking.lock_hash(t)} for a, (p, t) in locks.items()},
        "missing_locks": missing, "members": members,
    }
    manifest_bytes = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    if len(manifest_bytes) > MAX_MANIFEST:
        raise VenvoyError(f"the wheelhouse manifest of {env.name} would be "
                          f"{tarsafe.mib(len(manifest_bytes))}, more than an importer accepts",
                          "the environment locks unusually many files")
    say(f"writing {final} ({len(files)} files)")
    try:
        with new_path(final, mode=0o644) as tmp, open(tmp, "wb") as fh:
            tar = TarWriter(fh.write, source_date_epoch())
            tar.add(MANIFEST, len(manifest_bytes), data=manifest_bytes)
            for path, data in lock_bytes.items():
                tar.add(path, len(data), data=data)
            for name, (_f, src) in sorted(files.items()):
                with open(src, "rb") as wheel:
                    tar.add(f"wheels/{name}", members[f"wheels/{name}"]["size"], file=wheel)
            tar.close()
    except OSError as exc:
        raise VenvoyError(f"cannot write {final}: {exc.strerror or exc}",
                          "check the free space and permissions there") from None
    return final


# --------------------------------------------------------------------------- import


def _check_manifest(where: str, data: object) -> tuple[dict[str, Any], EnvRecord]:
    """The wheelhouse manifest, checked: format, the environment record, the locks."""

    def bad(what: str, hint: str = _HINT) -> VenvoyError:
        return DamagedError(f"{where}: {what}", hint)

    if not isinstance(data, dict) or data.get("format") != WHEELHOUSE_FORMAT:
        raise bad("manifest.json is not a venvoy wheelhouse manifest",
                  "pass a file written by `venvoy export --format wheelhouse`")
    version = data.get("format_version")
    if version != WHEELHOUSE_VERSION or type(version) is not int:
        raise bad(f"unsupported wheelhouse format version {str(version)[:20]}",
                  f"this venvoy reads version {WHEELHOUSE_VERSION}; use a matching venvoy")
    env, members, locks = data.get("environment"), data.get("members"), data.get("locks")
    if not isinstance(env, dict) or not isinstance(members, dict) or not isinstance(locks, dict):
        raise bad("manifest.json lacks environment, locks or members")
    if not isinstance(env.get("requirements"), str):
        raise bad("manifest.json: the environment has no requirements")
    record = EnvRecord.from_dict(env, f"{where}: the environment in manifest.json", _HINT)
    for meta in members.values():
        if not isinstance(meta, dict) or set(meta) != {"sha256", "size"}:
            raise bad("manifest.json lists a member without exactly sha256 and size")
    for arch, entry in locks.items():
        path = entry.get("path") if isinstance(entry, dict) else None
        if (arch not in LOCK_ARCHES or not isinstance(path, str) or path not in members
                or "/" in path or not path.endswith(".toml")
                or not isinstance(entry.get("lock_hash", ""), str)):
            raise bad(f"manifest.json: bad lock entry for {str(arch)[:40]!r}")
    missing = data.get("missing_locks", {})
    if not isinstance(missing, dict) or not all(isinstance(v, str) for v in missing.values()):
        raise bad("manifest.json: bad missing_locks")
    return data, record


class Wheelhouse(NamedTuple):
    """A wheelhouse read and checked: its manifest, its environment, its members."""

    manifest: dict[str, Any]
    record: EnvRecord
    members: dict[str, Member]


def read_wheelhouse(path: Path, dest: Path, *, max_bytes: int | None = None) -> Wheelhouse:
    """Check a wheelhouse and extract its regular files into ``dest`` (a new, empty
    directory).

    ``manifest.json`` must come first; every other member must be a regular
    file it lists, with the sha256 and size it gives; nothing else is written.
    Read with the bounded reader and limits every untrusted tar gets
    (``max_bytes``: default ``VENVOY_ARCHIVE_MAX_BYTES`` or 64 GiB).
    """
    path = Path(path)
    where = f"wheelhouse {path}"
    limit = tarsafe.max_bytes_default() if max_bytes is None else max_bytes
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise VenvoyError(f"{where} does not exist or cannot be read: {exc.strerror or exc}",
                          "check the path") from None
    try:
        with fh, compress.decompressing(fh, where, compress.kind_of(fh.read(compress.HEAD)),
                                        allowed=("none", "gzip", "zstd", "xz", "bzip2")) as stream:
            reader = TarReader(stream.read, where, compress.stream_errors(), _HINT)
            _entry, raw = tarsafe.read_manifest(reader, where, MANIFEST.__eq__, _HINT)
            manifest, record = _check_manifest(
                where, tarsafe.loads(raw, f"{where}: manifest.json", _HINT))
            listing = tarsafe.check_listing(
                ((name, meta["size"], meta["sha256"]) for name, meta in manifest["members"].items()),
                where, name_ok=member_name_ok, limit=limit, hint=_HINT)
            tarsafe.check_space(sum(m.size for m in listing.values()), dest, str(path))
            tarsafe.extract(reader, listing, dest, where, skip_dirs=("wheels",), hint=_HINT)
            reader.finish()
            stream.finish()
    except compress.decode_errors() as exc:
        detail = " ".join(str(exc).split())[:160]
        raise VenvoyError(f"{where} is damaged ({type(exc).__name__}: {detail})",
                          "the file is truncated or corrupt: copy it again") from None
    return Wheelhouse(manifest, record, listing)


def _seed_cache(store: Store, files: list[Any], wheels: Path, listing: dict[str, Member],
                where: str) -> None:
    """Put every locked file into the wheel cache from the wheelhouse (checked there
    already), replacing a cache entry that is missing, of another size or damaged."""
    from venvoy.build.wheels import WheelCache

    cache = WheelCache(store.wheels)
    for f in files:
        member = listing.get(f"wheels/{f.filename}")
        if member is None:
            raise DamagedError(f"{where}: the locked file {f.filename} is not in it", _HINT)
        if member.sha256 != f.sha256.lower():
            raise DamagedError(f"{where}: {f.filename} is not the file the lock names (another "
                               "sha256)", _HINT)
        dest = cache.path_for(f)
        with contextlib.suppress(OSError):
            if dest.stat().st_size == member.size and sha256_file(dest) == member.sha256:
                continue
        try:
            with new_path(dest, mode=0o644) as tmp:
                shutil.copyfile(wheels / f.filename, tmp)
        except OSError as exc:
            raise VenvoyError(f"cannot add {f.filename} to the wheel cache {store.wheels}: "
                              f"{exc.strerror or exc}", "check the free space and permissions "
                              "there") from None


def import_wheelhouse(path: Path, *, store: Store, name: str | None = None, runtime: str | None = None,
                      force: bool = False, offline: bool | None = None, base: str | None = None,
                      progress: Say | None = None) -> Environment:
    """Rebuild the environment of a wheelhouse, its wheels taken from the wheelhouse, not the index.

    The lock for this machine's architecture is used as it is (the identity's
    lock hash is the exported one); the base image comes as for ``init``
    (registry, Debian bootstrap, or the recorded/given ``base``). Every locked
    file comes from the wheelhouse: no request goes to the URLs the lock names.
    """
    from venvoy.build.environment import init
    from venvoy.build.lock import files_to_fetch, lock_hash, parse
    from venvoy.core.names import check_name

    say = progress or quiet
    path = Path(path)
    where = f"wheelhouse {path}"
    if name is not None:
        check_name(name)
    if not path.is_file():
        raise VenvoyError(f"{where} does not exist or is not a file", "check the path")
    tmp = store.tmp / temp_name("import")  # owner-tagged: a killed import is cleaned later
    tmp.mkdir(mode=0o700)
    try:
        say(f"checking {path}")
        manifest, record, listing = read_wheelhouse(
            path, tmp, max_bytes=tarsafe.max_bytes_default(store.environ))
        env_name = check_name(name if name is not None else record.name)
        arch = env_arch_here()
        entry = manifest["locks"].get(arch)
        if entry is None:
            why = manifest.get("missing_locks", {}).get(arch)
            raise VenvoyError(f"{where} has no lock for {arch}"
                              + (f" ({' '.join(why.split())[:300]})" if why else ""),
                              f"export it again from a {arch} machine, or import it on "
                              f"{' or '.join(sorted(manifest['locks']))}")
        try:
            lock_text = (tmp / entry["path"]).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise DamagedError(f"{where}: {entry['path']} is not UTF-8 text", _HINT) from None
        if entry.get("lock_hash") not in (None, lock_hash(lock_text)):
            raise DamagedError(f"{where}: {entry['path']} does not match its lock hash", _HINT)
        files = files_to_fetch(parse(lock_text))
        lacking = [f.filename for f in files if f"wheels/{f.filename}" not in listing]
        if lacking:
            raise DamagedError(f"{where}: {len(lacking)} locked file(s) are not in it "
                               f"(e.g. {lacking[0]})", _HINT)
        existing = None
        with contextlib.suppress(VenvoyError):
            existing = find(store, env_name)
        if existing is not None and not force and existing.lock_hash != lock_hash(lock_text):
            raise VenvoyError(f"an environment named {env_name!r} already exists with another lock",
                              "import it under another name (--name), or pass --force to replace it")
        _seed_cache(store, files, tmp / "wheels", listing, where)
        say(f"importing {env_name} ({len(files)} files for {arch}, lock {lock_hash(lock_text)[:12]})")
        env, _built = init(
            env_name, python=record.python, requirements_text=record.requirements,
            base=base if base is not None else record.base, lock_text=lock_text,
            wheel_dirs=[tmp / "wheels"], runtime=runtime, force=force, offline=offline,
            progress=progress, store=store)
        return env
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["WHEELHOUSE_FORMAT", "WHEELHOUSE_VERSION", "Wheelhouse", "env_arch_here",
           "export_wheelhouse", "import_wheelhouse", "member_name_ok", "read_wheelhouse"]
