"""The ``archive`` export format: one file that carries an environment to another machine.

An archive is a compressed tar (zstd, or gzip where zstd is not at hand) whose
members all live under one top directory ``<name>-<lock_hash[:12]>/``::

    manifest.json   first: format, versions, the environment record, and the
                    size and sha256 of every other member
    README.txt      what this is and how to use it, with or without venvoy
    env.json        the environment record
    pylock.toml     the lock (PEP 751)
    image.tar       the canonical image, a Docker archive (`podman load -i`)
    image.sif       optional: the Apptainer/Singularity image

It stays readable with standard tools (``tar --zstd -xf FILE``); see
``docs/archive-format.md``.

Writing streams every member through the compressor into a temporary sibling
of the output (``.NAME.HOST-PID-RANDOM.part``), renamed into place when
complete: a kill at any moment leaves no file under the output's name.

Importing treats the archive as hostile. The tar is read by
:mod:`venvoy.image.tarsafe` (the bounded reader every untrusted tar goes
through): only regular files listed in the manifest are accepted, each is
streamed into a temporary directory inside the store while its size and
sha256 are checked, and every size is bounded before anything is written. The image is then
checked against its own content (config sha256 = image ID, every layer's
sha256 = its diff_id), and only then published into the store with renames.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from venvoy.core.errors import BadRequest, DamagedError, VenvoyError
from venvoy.core.fs import clean_stale, temp_name
from venvoy.core.names import check_name
from venvoy.core.platform import host
from venvoy.core.version import __version__
from venvoy.image import compress, tarsafe
from venvoy.image.tarsafe import (
    CHUNK,
    MAX_MANIFEST,
    Member,
    TarReader,
    TarWriter,
    check_member,
    loads,
    max_bytes_default,
    mib,
)
from venvoy.store.layout import Store
from venvoy.store.records import (
    Environment,
    EnvRecord,
    drop_image_if_unused,
    find,
    image_in_use,
    image_lock,
    lock_hash,
    named_images,
    write_env,
)
from venvoy.transport.common import redacted

FORMAT = "venvoy-archive"
FORMAT_VERSION = 1
WHEELHOUSE_FORMAT = "venvoy-wheelhouse"

#: Members an archive of format version 1 may hold (besides manifest.json), in writing order.
MEMBERS = ("README.txt", "env.json", "pylock.toml", "image.tar", "image.sif")
REQUIRED = ("env.json", "pylock.toml", "image.tar")
SMALL = ("README.txt", "env.json", "pylock.toml")

MAX_SMALL = 16 << 20  # README.txt, env.json, pylock.toml; JSON members of image.tar
SUFFIXES = {"zstd": ".venvoy.tar.zst", "gzip": ".venvoy.tar.gz"}

_ROOT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

_DAMAGED = "the archive is damaged or was tampered with: do not use it; ask its sender for a new one"


def _noop(_msg: str) -> None:
    return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def zstd_available() -> bool:
    """Always: zstd comes from the ``zstandard`` module, a dependency of venvoy."""
    return True


# -- export --------------------------------------------------------------------------------



def _choose_compression(compression: str | None, output: Path | None) -> str:
    if (compression is None and output is not None and not output.is_dir()
            and output.name.endswith((".gz", ".tgz"))):
        compression = "gzip"
    compression = compression or "zstd"
    if compression not in SUFFIXES:
        raise BadRequest(f"unknown compression {compression!r}", "use zstd or gzip")
    return compression


@dataclass
class _Member:
    path: str
    size: int
    sha256: str
    data: bytes | None = None
    file: IO[bytes] | None = None


def _bytes_member(path: str, data: bytes) -> _Member:
    return _Member(path, len(data), hashlib.sha256(data).hexdigest(), data=data)


def _file_member(path: str, fh: IO[bytes]) -> _Member:
    digest = hashlib.sha256()
    size = 0
    while chunk := fh.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    fh.seek(0)
    return _Member(path, size, digest.hexdigest(), file=fh)


def _readme(env: Environment, root: str, file_name: str, architecture: str, with_sif: bool,
            compression: str) -> bytes:
    if compression == "zstd":
        untar = f"tar --zstd -xf {file_name}\n  (older tar: zstd -dc {file_name} | tar -xf -)"
    else:
        untar = f"tar -xzf {file_name}"
    sif = f"  apptainer run {root}/image.sif python\n" if with_sif else ""
    sif_file = ", image.sif (the Apptainer/Singularity image)" if with_sif else ""
    return f"""\
This is a venvoy archive: the Python environment "{env.name}" (Python {env.python},
{env.packages} packages, linux/{architecture}), exported by venvoy {__version__}.
Format: venvoy-archive version {FORMAT_VERSION}; manifest.json describes it.

Import it with venvoy (every file is checked before anything is added):
  venvoy import {file_name}
  (--name NEW imports it under another name)

Use it without venvoy:
  {untar}
  podman load -i {root}/image.tar        (or: docker load -i ...)
  podman run --rm -it {env.tag} python
  apptainer build {env.name}.sif docker-archive://{root}/image.tar
{sif}
Check the files by hand (needs jq):
  cd {root} && jq -r '.members[] | "\\(.sha256)  \\(.path)"' manifest.json | sha256sum -c

Files: manifest.json (what is here, with sizes and sha256), env.json (the environment
record), pylock.toml (the lock: every package, version and hash), image.tar (the
container image, a Docker archive){sif_file}.
""".encode()


def _output_path(env: Environment, output: Path | None, compression: str) -> Path:
    """Where the archive goes: ``output``, a default name inside it when it is a
    directory, or the default name in the working directory."""
    default_name = f"{env.name}-{env.lock_hash[:12]}{SUFFIXES[compression]}"
    if output is None:
        final = Path.cwd() / default_name
    elif output.is_dir():
        final = output / default_name
    else:
        final = output
    final = final.absolute()
    if not final.parent.is_dir():
        raise BadRequest(f"cannot write {final}: the directory {final.parent} does not exist",
                         "create it first or choose another --output")
    return final


def _checked_lock(env: Environment) -> bytes:
    """The environment's lock, which must match its lock hash."""
    try:
        lock_bytes = (env.dir / "pylock.toml").read_bytes()
        lock_ok = lock_hash(lock_bytes.decode("utf-8")) == env.lock_hash
    except (OSError, UnicodeDecodeError):
        lock_ok = False
    if not lock_ok:
        raise VenvoyError(f"the lock of {env.name} is missing or does not match its lock hash",
                          f"rebuild it with `venvoy init {env.name} --force`")
    return lock_bytes


def checked_image(env: Environment) -> str:
    """The store's image of ``env`` is there and is the one it was built with;
    returns its architecture (as image configs name it)."""
    from venvoy.image.oci import inspect_archive

    if not env.archive.is_file():
        raise VenvoyError(f"the image of {env.name} is missing from the store ({env.archive})",
                          f"rebuild it with `venvoy init {env.name} --force`")
    info = inspect_archive(env.archive)
    if info.image_id != env.image_id:
        raise VenvoyError(f"the store's image for {env.name} is not the one it was built with",
                          f"rebuild it with `venvoy init {env.name} --force`")
    return str(info.config.get("architecture") or host().oci)


def _sif_of(env: Environment, with_sif: bool, say: Callable[[str], None]) -> Path | None:
    """The store's SIF of the image if its full hash matches the check venvoy wrote
    when it made it (an unverified SIF is never shipped); made with Apptainer
    first when ``with_sif`` and missing or damaged."""
    from venvoy.store.forms import sif_verified

    store = env.store
    sif_path: Path | None = store.sif(env.image_id)
    if not sif_verified(store, env.image_id):
        if not with_sif and store.sif(env.image_id).is_file():
            say("leaving out the cached SIF: it does not match what venvoy made "
                "(it is made again on the next Apptainer run)")
        sif_path = None
    if with_sif and sif_path is None:
        from venvoy.runtime.detect import get_runtime
        from venvoy.store.forms import ensure_native

        say("making the SIF with Apptainer")
        made = ensure_native(store, get_runtime("apptainer", store.environ), env.archive,
                             env.image_id, env.tag, say, verify=True)
        sif_path = Path(made)
    return sif_path


def _write_atomically(final: Path, compression: str, root: str, manifest_bytes: bytes,
                      members: list[_Member]) -> None:
    """Stream the tar through the compressor into a temporary sibling, then rename it."""
    # A killed export's temporary (owner-tagged, see venvoy.core.fs) is removed
    # once its owner is gone; a running one's is left alone.
    clean_stale(final.parent, prefixes=())
    tmp = final.with_name(temp_name(f".{final.name[:80]}", ".part"))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        with open(fd, "wb") as fh:
            with compress.compressing(compression, fh) as write:
                tar = TarWriter(write, int(time.time()))
                tar.add(f"{root}/manifest.json", len(manifest_bytes), data=manifest_bytes)
                for member in members:
                    tar.add(f"{root}/{member.path}", member.size, data=member.data,
                            file=member.file)
                tar.close()
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def export_archive(env: Environment, output: Path | None = None, *, with_sif: bool = False,
                   progress: Callable[[str], None] | None = None,
                   compression: str | None = None) -> Path:
    """Write ``env`` as one archive file; returns its path.

    Default output: ``./<name>-<lock_hash[:12]>.venvoy.tar.<zst|gz>`` in the
    working directory; an existing directory as ``output`` gets that name inside
    it. ``compression`` is ``"zstd"`` (the default) or ``"gzip"`` (also chosen by
    an output name ending in ``.gz``). An existing file at ``output`` is
    replaced, atomically. ``with_sif`` includes the SIF, making it with
    Apptainer if the store has none.
    """
    say = progress or _noop
    start = time.monotonic()
    output = Path(output) if output is not None else None
    compression = _choose_compression(compression, output)
    final = _output_path(env, output, compression)
    lock_bytes = _checked_lock(env)
    architecture = checked_image(env)
    sif_path = _sif_of(env, with_sif, say)

    root = f"{env.name}-{env.lock_hash[:12]}"
    record = redacted(env.as_dict())
    with contextlib.ExitStack() as stack:
        image_fh = stack.enter_context(open(env.archive, "rb"))
        say(f"hashing image.tar ({mib(os.fstat(image_fh.fileno()).st_size)})")
        readme = _readme(env, root, final.name, architecture, sif_path is not None, compression)
        members = [
            _bytes_member("README.txt", readme),
            _bytes_member("env.json", (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()),
            _bytes_member("pylock.toml", lock_bytes),
            _file_member("image.tar", image_fh),
        ]
        if sif_path is not None:
            sif_fh = stack.enter_context(open(sif_path, "rb"))
            say(f"hashing image.sif ({mib(os.fstat(sif_fh.fileno()).st_size)})")
            members.append(_file_member("image.sif", sif_fh))
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "venvoy_version": __version__,
            "created": _now(), "architecture": architecture, "root": root,
            "environment": record, "lock_sha256": env.lock_hash, "image_id": env.image_id,
            "members": [{"path": m.path, "size": m.size, "sha256": m.sha256} for m in members],
        }
        manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        if len(manifest_bytes) > MAX_MANIFEST:
            raise VenvoyError(f"the manifest of {env.name} would be {mib(len(manifest_bytes))}, "
                              "more than an importer accepts", "its env.json is unusually large")
        say(f"writing {final} ({compression})")
        _write_atomically(final, compression, root, manifest_bytes, members)
    say(f"wrote {final.name} ({mib(final.stat().st_size)}) in {time.monotonic() - start:.1f} s")
    return final


# -- import --------------------------------------------------------------------------------

def _check_manifest(data: Any, where: str, limit: int) -> tuple[dict[str, Any], dict[str, Member]]:
    """The manifest, checked field by field (types, bounds, names), and its member list."""

    def bad(what: str) -> VenvoyError:
        return VenvoyError(f"{where}: manifest.json {what}", _DAMAGED)

    if not isinstance(data, dict):
        raise bad("is not a JSON object")
    fmt = data.get("format")
    if fmt != FORMAT:
        if fmt == WHEELHOUSE_FORMAT:
            raise VenvoyError(f"{where} is a venvoy wheelhouse, not an environment archive",
                              "import it with `venvoy import`, which recognises both")
        raise bad(f"has format {str(fmt)[:60]!r}, not {FORMAT!r}")
    version = data.get("format_version")
    if type(version) is not int:
        raise bad("has no integer format_version")
    if version != FORMAT_VERSION:
        raise VenvoyError(f"{where} is a venvoy archive of format version {version}; this venvoy "
                          f"({__version__}) reads version {FORMAT_VERSION}",
                          "use the venvoy version that wrote it, or a newer one")
    for key in ("venvoy_version", "created", "architecture", "root", "image_id", "lock_sha256"):
        if not isinstance(data.get(key), str) or len(data[key]) > 200:
            raise bad(f"has no valid {key!r} (a string is required)")
    if not _ROOT.fullmatch(data["root"]):
        raise bad(f"names an unsafe top directory {data['root']!r}")
    if not _is_hex64(data["lock_sha256"]):
        raise bad("has a malformed lock_sha256")
    if not (data["image_id"].startswith("sha256:") and _is_hex64(data["image_id"][7:])):
        raise bad(f"has a malformed image_id {data['image_id']!r}")
    if not isinstance(data.get("environment"), dict):
        raise bad("has no environment record")
    members = data.get("members")
    if not isinstance(members, list) or not members or len(members) > len(MEMBERS):
        raise bad("has no valid list of members")
    if not all(isinstance(m, dict) and set(m) == {"path", "size", "sha256"} for m in members):
        raise bad("lists a member without exactly path, size and sha256")
    listing = tarsafe.check_listing(((m["path"], m["size"], m["sha256"]) for m in members), where,
                                    name_ok=MEMBERS.__contains__, limit=limit,
                                    small=dict.fromkeys(SMALL, MAX_SMALL), hint=_DAMAGED)
    for path in REQUIRED:
        if path not in listing:
            raise bad(f"does not list the required member {path!r}")
    return data, listing


def _is_hex64(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _first_member(reader: TarReader, where: str,
                  limit: int) -> tuple[dict[str, Any], dict[str, Member]]:
    def is_manifest(name: str) -> bool:
        root, _, leaf = name.partition("/")
        return leaf == "manifest.json" and _ROOT.fullmatch(root) is not None

    entry, raw = tarsafe.read_manifest(reader, where, is_manifest, _DAMAGED)
    manifest, listing = _check_manifest(loads(raw, f"{where}: {entry.name}", _DAMAGED), where,
                                        limit)
    root = entry.name.partition("/")[0]
    if manifest["root"] != root:
        raise VenvoyError(f"{where}: manifest.json names the top directory {manifest['root']!r} "
                          f"but lies in {root!r}", _DAMAGED)
    return manifest, listing


def _check_environment(manifest: dict[str, Any], work: Path, where: str) -> tuple[EnvRecord, str]:
    def bad(what: str) -> VenvoyError:
        return DamagedError(f"{where}: env.json {what}", _DAMAGED)

    data = loads((work / "env.json").read_bytes(), f"{where}: env.json", _DAMAGED)
    if not isinstance(data, dict):
        raise bad("is not a JSON object")
    if data != manifest["environment"]:
        raise bad("differs from the environment record in manifest.json")
    record = EnvRecord.from_dict(data, f"{where}: env.json", _DAMAGED)
    if record.image_id != manifest["image_id"]:
        raise bad("names another image than manifest.json")
    try:
        lock_text = (work / "pylock.toml").read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise DamagedError(f"{where}: member pylock.toml is not UTF-8 text", _DAMAGED) from None
    if not lock_hash(lock_text) == record.lock_hash == manifest["lock_sha256"]:
        raise DamagedError(f"{where}: member pylock.toml does not match the environment's lock "
                           "hash", _DAMAGED)
    return record, lock_text


def _hash_image_members(image_tar: Path, label: str) -> tuple[dict[str, str], dict[str, bytes]]:
    """sha256 of every member of ``image_tar``, and the bytes of its small JSON members,
    read with the bounded reader (only regular files, each once)."""
    hashes: dict[str, str] = {}
    small: dict[str, bytes] = {}
    kept = 0
    with open(image_tar, "rb") as fh:
        reader = TarReader(fh.read, label, hint=_DAMAGED)
        while (entry := reader.next()) is not None:
            check_member(entry, label, _DAMAGED)
            name = entry.name.removeprefix("./")
            if name in hashes:
                raise VenvoyError(f"{label} holds member {name!r} twice", _DAMAGED)
            keep = name.endswith(".json") and entry.size <= MAX_SMALL and kept < 2 * MAX_SMALL
            digest = hashlib.sha256()
            parts = []
            while chunk := reader.read(CHUNK):
                digest.update(chunk)
                if keep:
                    parts.append(chunk)
            hashes[name] = digest.hexdigest()
            if keep:
                small[name] = b"".join(parts)
                kept += entry.size
        reader.finish()
    return hashes, small


def _check_image(image_tar: Path, manifest: dict[str, Any], env: EnvRecord, where: str) -> None:
    """The image is what its ID says: config sha256 = image ID, each layer's sha256 = its diff_id.

    Read with the same strict reader (only regular files, bounded headers),
    since it came from the archive; then :func:`venvoy.image.oci.inspect_archive`
    must agree.
    """
    from venvoy.image.oci import inspect_archive

    label = f"{where}: image.tar"

    def bad(what: str) -> VenvoyError:
        return VenvoyError(f"{label} {what}", _DAMAGED)

    hashes, small = _hash_image_members(image_tar, label)
    if "manifest.json" not in small:
        raise bad("has no manifest.json: it is not a Docker archive")
    index = loads(small["manifest.json"], f"{label}: manifest.json", _DAMAGED)
    if not (isinstance(index, list) and len(index) == 1 and isinstance(index[0], dict)
            and isinstance(index[0].get("Config"), str) and isinstance(index[0].get("Layers"), list)
            and all(isinstance(x, str) for x in index[0]["Layers"])):
        raise bad("has a manifest.json that does not describe exactly one image")
    tags = index[0].get("RepoTags")
    if tags is not None and not (isinstance(tags, list) and all(
            isinstance(tag, str) and tag.startswith("localhost/venvoy/") and len(tag) <= 255
            and all(c.isascii() and (c.isalnum() or c in "._-/:") for c in tag) for tag in tags)):
        # `docker load` / `podman load` would move these tags in the user's image store:
        # an archive may only name venvoy's own images, never e.g. python:3.12.
        raise bad("tags its image with a name outside localhost/venvoy/ "
                  f"({str(tags)[:120]!r})")
    config_name = index[0]["Config"].removeprefix("./")
    layers = [x.removeprefix("./") for x in index[0]["Layers"]]
    if config_name not in small:
        raise bad(f"has no config {config_name[:200]!r}")
    if f"sha256:{hashes[config_name]}" != manifest["image_id"]:
        raise bad(f"is image sha256:{hashes[config_name]}, not {manifest['image_id']} as the "
                  "manifest says")
    config = loads(small[config_name], f"{label}: {config_name}", _DAMAGED)
    if not isinstance(config, dict):
        raise bad(f"has a config {config_name!r} that is not a JSON object")
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        raise bad("has a config whose diff_ids do not match its layers")
    for layer, diff_id in zip(layers, diff_ids, strict=True):
        if layer not in hashes:
            raise bad(f"lacks layer {layer[:200]!r}")
        if f"sha256:{hashes[layer]}" != diff_id:
            raise bad(f"layer {layer!r} does not match its diff_id {str(diff_id)[:80]!r}")
    extra = sorted(set(hashes) - {"manifest.json", config_name, *layers})
    if extra:
        raise bad(f"holds member {extra[0][:200]!r} that is no part of the image")
    if config.get("architecture", manifest["architecture"]) != manifest["architecture"]:
        raise bad(f"is for {str(config.get('architecture'))[:40]!r}, not "
                  f"{manifest['architecture']!r} as the manifest says")
    inner = config.get("config")
    labels = inner.get("Labels") if isinstance(inner, dict) else None
    if isinstance(labels, dict):
        for key, value in (("org.venvoy.identity", env.identity),
                           ("org.venvoy.lock-hash", env.lock_hash)):
            if key in labels and labels[key] != value:
                raise bad(f"has label {key}={str(labels[key])[:80]!r}, not the environment's "
                          f"{value}")
    if inspect_archive(image_tar).image_id != manifest["image_id"]:
        raise bad("is not the image the manifest names")


def _check_sif(sif: Path, where: str) -> None:
    with open(sif, "rb") as fh:
        head = fh.read(128)
    if b"SIF_MAGIC" not in head:
        raise VenvoyError(f"{where}: member image.sif is not a SIF file", _DAMAGED)


def _place(store: Store, src: Path, dest: Path) -> None:
    """Rename ``src`` to ``dest`` (copying first when store.tmp is on another file system)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    src.chmod(0o644)
    try:
        os.replace(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        with store.new_path(dest) as tmp:
            shutil.copyfile(src, tmp)
            tmp.chmod(0o644)


def import_archive(path: Path, *, store: Store, name: str | None = None, force: bool = False,
                   progress: Callable[[str], None] | None = None,
                   max_bytes: int | None = None) -> Environment:
    """Check an archive completely, then add its environment to ``store``; returns it.

    ``name`` imports under another name. An environment of the same name is an
    error unless ``force`` (or unless it is the very same environment: importing
    twice is a no-op). ``max_bytes`` bounds the unpacked size (default
    ``VENVOY_ARCHIVE_MAX_BYTES`` or 64 GiB). Nothing is visible in the store
    before every check passed; temporaries live in ``store.tmp`` and a later
    import removes those a killed one left.
    """
    say = progress or _noop
    path = Path(path)
    limit = max_bytes if max_bytes is not None else max_bytes_default(store.environ)
    if name is not None:
        check_name(name)
    start = time.monotonic()
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise VenvoyError(f"cannot read {path}: {exc.strerror}", "check the path") from None
    with fh:
        tmp_root = store.tmp
        # What a killed import left (its owner is gone); "import-*" of older venvoys
        # only in the store's own tmp (VENVOY_TMPDIR may be a shared /tmp).
        clean_stale(tmp_root, prefixes=("import-",) if tmp_root == store.root / "tmp" else ())
        work = tmp_root / temp_name("import")
        work.mkdir(mode=0o700)
        try:
            manifest, target = _unpack(fh, path, work, store, name, force, limit, say)
            data, lock_text = _check_environment(manifest, work, str(path))
            say("checking the image against its digests")
            _check_image(work / "image.tar", manifest, data, str(path))
            has_sif = (work / "image.sif").is_file()
            if has_sif:
                _check_sif(work / "image.sif", str(path))
            if manifest["architecture"] != host().oci:
                say(f"note: the image is for {manifest['architecture']} and this machine is "
                    f"{host().oci}: it runs here only with emulation")
            record = replace(data, name=target, imported_from={
                "file": path.name[:255], "name": data.name, "at": _now()})
            env = _publish(store, work, record, lock_text, force, has_sif, say)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    say(f"imported {target} from {path.name} in {time.monotonic() - start:.1f} s")
    return env


def _unpack(fh: IO[bytes], path: Path, work: Path, store: Store, name: str | None, force: bool,
            limit: int, say: Callable[[str], None]) -> tuple[dict[str, Any], str]:
    """Stream the archive into ``work``: the manifest checked first, then every member."""
    where = str(path)
    kind = compress.kind_of(fh.read(compress.HEAD))
    if kind not in ("zstd", "gzip", "none"):
        what = f"compressed with {kind}" if kind != "unknown" else "not a compressed tar"
        raise VenvoyError(f"{path} is not a venvoy archive ({what}; venvoy archives are tar "
                          "compressed with zstd or gzip)",
                          "check the file; `venvoy export --format archive` writes them")
    try:
        with compress.decompressing(fh, where, kind) as stream:
            reader = TarReader(stream.read, where, compress.stream_errors(), _DAMAGED)
            manifest, listing = _first_member(reader, where, limit)
            target = name or manifest["environment"].get("name")
            if not isinstance(target, str):
                raise VenvoyError(f"{where}: the environment record has no name", _DAMAGED)
            check_name(target)
            existing, _damaged = _existing(store, target, force)
            if existing is not None and not force and not _same(existing, manifest):
                raise _exists(target)
            tarsafe.check_space(sum(m.size for m in listing.values()), work, path.name)
            tarsafe.extract(reader, listing, work, where, prefix=f"{manifest['root']}/",
                            hint=_DAMAGED, say=say)
            reader.finish()
            stream.finish()
    except compress.decode_errors() as exc:
        detail = " ".join(str(exc).split())[:160]
        raise VenvoyError(f"{path} is damaged ({type(exc).__name__}: {detail})",
                          "the file is truncated or corrupt: copy it again") from None
    return manifest, target


def _same(existing: Environment, manifest: dict[str, Any]) -> bool:
    record = manifest["environment"]
    return (existing.identity == record.get("identity") and existing.image_id == manifest["image_id"]
            and existing.lock_hash == manifest["lock_sha256"] and existing.archive.is_file())


def _existing(store: Store, name: str, force: bool) -> tuple[Environment | None, dict[str, str | None]]:
    """The environment called ``name`` (or None), and, when its record is damaged and
    ``force`` replaces it, the images that damaged directory still names."""
    try:
        return find(store, name), {}
    except DamagedError as exc:
        if not force:
            raise DamagedError(f"an environment named {name!r} already exists and is damaged "
                               f"({exc.message})",
                               "import with --force to replace it, or with --name NEW to keep it"
                               ) from None
        return None, named_images(store, name)


def _exists(name: str) -> VenvoyError:
    return VenvoyError(f"an environment named {name!r} already exists",
                       "import with --name NEW to keep both, or --force to replace it")


def _publish(store: Store, work: Path, record: EnvRecord, lock_text: str, force: bool,
             has_sif: bool, say: Callable[[str], None]) -> Environment:
    """Everything checked: the image (and SIF) first, then the environment, by renames."""
    name = record.name
    image_id = record.image_id
    with store.lock(f"env-{name}"):
        previous, damaged = _existing(store, name, force)
        if previous is not None and not force:
            if previous.identity == record.identity and previous.image_id == image_id \
                    and previous.archive.is_file():
                say(f"{name} is already here, identical")
                return previous
            raise _exists(name)
        if has_sif:
            # A SIF cannot be checked against the image it claims to be (its
            # bytes are not derived reproducibly), and the cache shares it by
            # image ID with every environment of that image: it is not kept.
            # The first Apptainer run makes it from the verified image.tar.
            say("image.sif is not used: the SIF is made from the verified image.tar "
                "on the first Apptainer run")
        # The image and the record naming it are published under the image's lock:
        # a `remove` of another environment of the same image waits, then keeps it.
        with image_lock(store, image_id):
            placed: list[Path] = []
            try:
                image_dest = store.image_archive(image_id)
                if not image_dest.is_file():
                    _place(store, work / "image.tar", image_dest)
                    placed.append(image_dest)
                env = write_env(store, record, lock_text)
            except BaseException:
                for dest in placed:
                    if not image_in_use(store, image_id):
                        dest.unlink(missing_ok=True)
                raise
        old = set(damaged) | ({previous.image_id} if previous is not None else set())
        for old_id in sorted(old - {image_id}):
            drop_image_if_unused(store, old_id)
        return env


__all__ = ["FORMAT", "FORMAT_VERSION", "export_archive", "import_archive", "max_bytes_default",
           "zstd_available"]
