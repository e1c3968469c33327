"""Writing Docker archives without any container runtime.

A Docker archive (what ``docker save`` writes) is a tar of uncompressed layer
tars, a config JSON and a ``manifest.json``. ``docker load``, ``podman load``,
``apptainer build x.sif docker-archive://x.tar`` and
:func:`venvoy.image.unpack.unpack_image` all read it, so one file written here
feeds every runtime. Reading is done here too, once (:func:`read_source`), for
every caller: the same image of an archive, by the same platform rule.

Everything written here is reproducible: layers have sorted entries, owner 0,
no user names and a fixed modification time (``SOURCE_DATE_EPOCH``, else 0);
the archive's own members are written in a fixed order with fixed headers, and
the config is canonical JSON. The same inputs give the same bytes, hence the
same image ID (the sha256 of the config).

Base layers are streamed from the input archive to the output (decompressed
on the fly when they are gzip, bzip2 or xz), never held in memory.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import errno
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, cast

from venvoy.core.errors import VenvoyError
from venvoy.image.compress import HEAD, decompressed, kind_of, stream_errors
from venvoy.image.tarsafe import TarEntry, TarReader

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_ENV = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
_CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE


@dataclass(frozen=True)
class ImageInfo:
    """What identifies an image: its ID, layers, config and names."""

    image_id: str  # "sha256:<hex>" of the config JSON bytes (docker's image ID)
    diff_ids: tuple[str, ...]
    config: dict[str, Any]
    repo_tags: tuple[str, ...]


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


# -- time and small helpers ----------------------------------------------------------

def source_date_epoch() -> int:
    """``SOURCE_DATE_EPOCH`` as an int, or 0 when it is not set."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return 0
    try:
        epoch = int(value)
    except ValueError:
        raise VenvoyError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds",
                          "set it to e.g. `git log -1 --format=%ct`, or unset it") from None
    return max(epoch, 0)


def rfc3339(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def host_architecture() -> str:
    """The host's architecture as image configs name it (Go's GOARCH)."""
    from venvoy.core.platform import host

    return host().oci


def _canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _tmp_name(out: Path) -> Path:
    """An owner-tagged sibling (see venvoy.core.fs): a killed writer's is cleaned later."""
    from venvoy.core.fs import TMP_PREFIX, temp_name

    return out.with_name(temp_name(f"{TMP_PREFIX}{out.name[:80]}"))


def _norm_member(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _norm_prefix(prefix: str) -> list[str]:
    parts = [p for p in prefix.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise VenvoyError(f"layer prefix {prefix!r} may not contain '..'")
    return parts


class _HashingWriter:
    """A write-only file that hashes what passes through (what tarfile needs: write, tell)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.hash = hashlib.sha256()
        self.pos = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.fh.write(data)
        self.pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self.pos


def _dir_info(name: str, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.mtime = mtime
    return info


def _publish(tmp: Path, out: Path) -> None:
    os.replace(tmp, out)


# -- layers -------------------------------------------------------------------------

def layer_from_dir(src: Path, prefix: str, out: Path) -> str:
    """Write a reproducible, uncompressed layer tar of ``src`` placed at ``prefix``.

    ``prefix`` is where ``src`` lands inside the image (``"opt/venv"``); its
    parent directories are entries too (mode 0755). Entries are sorted (parents
    first), owned by 0:0 with no user names, dated ``SOURCE_DATE_EPOCH`` (else
    0); modes are kept without set-uid/set-gid; symlinks stay symlinks and hard
    links within ``src`` stay hard links; devices, FIFOs and sockets are left
    out. Returns the tar's diff_id, ``"sha256:<hex>"``.
    """
    src = Path(src)
    if not src.is_dir():
        raise VenvoyError(f"cannot make a layer of {src}: not a directory")
    mtime = source_date_epoch()
    parts = _norm_prefix(prefix)
    tmp = _tmp_name(out)
    try:
        with open(tmp, "wb") as fh:
            writer = _HashingWriter(fh)
            with tarfile.open(fileobj=writer, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for i in range(1, len(parts)):
                    tar.addfile(_dir_info("/".join(parts[:i]), 0o755, mtime))
                _add_tree(tar, src, "/".join(parts), mtime)
            digest = writer.hash.hexdigest()
        _publish(tmp, out)
    except OSError as exc:
        raise VenvoyError(f"cannot write layer {out} from {src}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return f"sha256:{digest}"


def _add_tree(tar: tarfile.TarFile, root: Path, top: str, mtime: int) -> None:
    links: dict[tuple[int, int], str] = {}

    def add(path: str, name: str) -> None:
        st = os.lstat(path)
        mode = stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID)
        info = tarfile.TarInfo(name)
        info.mtime = mtime
        info.mode = mode
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            if name:
                tar.addfile(info)
            with os.scandir(path) as it:
                children = sorted(entry.name for entry in it)
            for child in children:
                add(os.path.join(path, child), f"{name}/{child}" if name else child)
        elif stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(path)
            tar.addfile(info)
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in links:
                info.type = tarfile.LNKTYPE
                info.linkname = links[key]
                tar.addfile(info)
                return
            if st.st_nlink > 1:
                links[key] = name
            info.size = st.st_size
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
        # devices, FIFOs and sockets: not part of an image layer

    add(str(root), top)


def add_files_layer(files: dict[str, bytes], out: Path) -> str:
    """A small reproducible layer of regular files (mode 0644, parents 0755); returns its diff_id."""
    mtime = source_date_epoch()
    entries: dict[str, bytes | None] = {}
    for path, data in files.items():
        parts = _norm_prefix(path)
        if not parts:
            raise VenvoyError(f"bad file name {path!r} for an image layer")
        for i in range(1, len(parts)):
            entries.setdefault("/".join(parts[:i]), None)
        entries["/".join(parts)] = data
    tmp = _tmp_name(out)
    try:
        with open(tmp, "wb") as fh:
            writer = _HashingWriter(fh)
            with tarfile.open(fileobj=writer, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for name in sorted(entries, key=lambda n: n.split("/")):
                    content = entries[name]
                    if content is None:
                        tar.addfile(_dir_info(name, 0o755, mtime))
                        continue
                    info = tarfile.TarInfo(name)
                    info.mode, info.mtime, info.size = 0o644, mtime, len(content)
                    tar.addfile(info, io.BytesIO(content))
            digest = writer.hash.hexdigest()
        _publish(tmp, out)
    except OSError as exc:
        raise VenvoyError(f"cannot write layer {out}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return f"sha256:{digest}"


# -- reading archives -----------------------------------------------------------------
#
# The one reader of Docker and OCI image archives: every caller (assemble, copy,
# inspect, the Charliecloud unpacker) finds the same image in an archive, by the
# same platform rule (see :func:`pick_platform`).

#: Members an image archive (or a root file system tar given as a base) may hold.
MAX_ARCHIVE_MEMBERS = 2_000_000
_HINT = "the archive is damaged or hostile; save the image again"


class _Window:
    """One member's data inside a seekable stream: a small read-only, seekable file."""

    def __init__(self, stream: IO[bytes], start: int, size: int) -> None:
        self.stream, self.start, self.size, self.pos = stream, start, size, 0

    def read(self, size: int = -1) -> bytes:
        left = self.size - self.pos
        size = left if size < 0 or size > left else size
        if size <= 0:
            return b""
        self.stream.seek(self.start + self.pos)
        data = self.stream.read(size)
        self.pos += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = max(0, min(self.size, base + offset))
        return self.pos

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        return None

    def __enter__(self) -> _Window:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None


class ArchiveIndex:
    """An image archive (or any tar given as a base), indexed once by the one bounded
    tar reader (:class:`venvoy.image.tarsafe.TarReader`): its members' headers are
    read, their data passed over by seeking, and read later in any order.

    What ``tarfile`` offers callers, no more: iterate it for the entries,
    ``getnames()``, ``extractfile(name or entry)``, ``name``. Plain, gzip, bzip2
    and xz files are read (seeking backwards in a compressed one decompresses
    it again from its start, as tarfile does); a zstd one must be decompressed
    first. Members are found by name without a leading ``./`` or ``/``; the last
    of a name wins, as in tarfile.
    """

    def __init__(self, path: Path) -> None:
        self.name = os.fspath(path)
        where = f"image archive {path}"
        try:
            self.fh: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise VenvoyError(f"cannot read {where}: {exc.strerror or exc}") from None
        try:
            kind = kind_of(self.fh.read(HEAD))
            self.fh.seek(0)
            if kind == "unknown":
                raise VenvoyError(f"cannot read {where}: not a tar archive, or a damaged one",
                                  "create one with `docker save` or `podman save`")
            if kind == "zstd":
                raise VenvoyError(f"{where} is a zstd-compressed tar, which cannot be read in "
                                  "place", "decompress it first (`unzstd FILE`)")
            self.stream = decompressed(self.fh)
            self.entries: list[TarEntry] = []
            self._where: dict[str, tuple[TarEntry, int]] = {}
            reader = TarReader(self.stream.read, where, decompress_errors(), _HINT)
            try:
                while (entry := reader.next()) is not None:
                    if len(self.entries) >= MAX_ARCHIVE_MEMBERS:
                        raise VenvoyError(f"{where} has more than {MAX_ARCHIVE_MEMBERS} members",
                                          _HINT)
                    self.entries.append(entry)
                    self._where[_norm_member(entry.name)] = (entry, reader.offset)
                    reader.skip(self.stream.seek)
            except decompress_errors() as exc:
                why = " ".join(str(exc).split())[:160]
                raise VenvoyError(f"cannot read {where}: {why}", _HINT) from None
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[TarEntry]:
        return iter(self.entries)

    def getnames(self) -> list[str]:
        return [entry.name for entry in self.entries]

    def extractfile(self, member: str | TarEntry) -> _Window | None:
        """The data of a regular member, by name or entry; None for another kind;
        KeyError when there is no such member (tarfile's answers)."""
        name = member if isinstance(member, str) else member.name
        entry, offset = self._where[_norm_member(name)]
        if not entry.isfile() or entry.sparse is not None:
            return None
        return _Window(self.stream, offset, entry.size)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            stream = getattr(self, "stream", None)
            if stream is not None and stream is not self.fh:
                stream.close()
        self.fh.close()

    def __enter__(self) -> ArchiveIndex:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class ImageSource:
    """The image of an archive for this host: where its layers are, and its config."""

    info: ImageInfo
    layers: tuple[str, ...]  # member names of the layer blobs, in order
    config_bytes: bytes

    @property
    def env(self) -> list[str]:
        """The image's ``Config.Env`` (only its strings)."""
        inner = self.info.config.get("config")
        env = inner.get("Env") if isinstance(inner, dict) else None
        return [e for e in env if isinstance(e, str)] if isinstance(env, list) else []


def _member_bytes(tar: ArchiveIndex, name: str) -> bytes:
    try:
        fh = tar.extractfile(_norm_member(name))
    except KeyError:
        fh = None
    if fh is None:
        raise VenvoyError(f"image archive {os.fsdecode(tar.name or '')} has no {name}",
                          "is it a complete `docker save` or OCI archive?")
    with fh:
        if fh.seekable() and fh.seek(0, os.SEEK_END) > MAX_JSON:
            raise VenvoyError(f"image archive {os.fsdecode(tar.name or '')}: {name} is larger "
                              f"than {MAX_JSON >> 20} MiB", "is it a `docker save` or OCI archive?")
        fh.seek(0)
        return fh.read()


#: The most a manifest, index or config may hold (real ones: a few KiB).
MAX_JSON = 16 << 20


def _json(tar: ArchiveIndex, name: str) -> Any:
    try:
        return json.loads(_member_bytes(tar, name))
    except (ValueError, RecursionError):
        raise VenvoyError(f"image archive {os.fsdecode(tar.name or '')}: {name} is not valid JSON") from None


def _blob(digest: str) -> str:
    algo, _, hexdigest = str(digest).partition(":")
    if not (algo.isalnum() and hexdigest.isalnum() and algo.isascii() and hexdigest.isascii()):
        raise VenvoyError(f"bad digest {digest!r} in image archive")
    return f"blobs/{algo}/{hexdigest}"


def _platform(plat: Any) -> str:
    if not isinstance(plat, dict) or not plat.get("architecture"):
        return "an image that names no platform"
    return f"{plat.get('os') or 'linux'}/{plat['architecture']}"


def pick_platform(candidates: list[tuple[Any, dict[str, Any]]], where: str) -> Any:
    """The candidate for this host, from ``(item, platform)`` pairs.

    The rule, the same for every reader: the first image for this host's
    architecture (``linux/<GOARCH>``); else, when the archive holds exactly one
    image (attestations and other ``unknown`` platforms aside), that image;
    else one clear error naming what the archive has.
    """
    arch = host_architecture()
    for item, plat in candidates:
        if plat.get("architecture") == arch and plat.get("os", "linux") == "linux":
            return item
    images = [(item, plat) for item, plat in candidates if plat.get("os") != "unknown"]
    if len(images) == 1:
        return images[0][0]
    found = ", ".join(sorted({_platform(plat) for _, plat in images})) or "no image"
    raise VenvoyError(f"image archive {where} has no image for linux/{arch} (it has {found})",
                      f"save the image for this machine, e.g. `docker pull --platform linux/{arch}` "
                      "before `docker save`")


def _descriptors(manifests: Any, where: str) -> list[tuple[Any, dict[str, Any]]]:
    """An OCI index's descriptors as (descriptor, platform), one per distinct digest."""
    if not isinstance(manifests, list) or not manifests:
        raise VenvoyError(f"OCI archive {where}: its index lists no image")
    seen: dict[str, tuple[Any, dict[str, Any]]] = {}
    for desc in manifests:
        if not isinstance(desc, dict):
            raise VenvoyError(f"OCI archive {where}: an index entry is not an object")
        plat = desc.get("platform")
        seen.setdefault(str(desc.get("digest")), (desc, plat if isinstance(plat, dict) else {}))
    return list(seen.values())


def _read_source(tar: ArchiveIndex, path: Path) -> ImageSource:
    names = {_norm_member(n) for n in tar.getnames()}
    if "manifest.json" in names:  # docker-archive (docker save, podman save)
        manifest = _json(tar, "manifest.json")
        if not isinstance(manifest, list) or not manifest:
            raise VenvoyError(f"image archive {path}: manifest.json lists no image")
        if len(manifest) == 1:
            entry = manifest[0]
            raw = _member_bytes(tar, entry["Config"])
        else:  # several images: the platform rule picks one by its config's architecture
            configs = [(entry, _member_bytes(tar, entry["Config"])) for entry in manifest]
            candidates = []
            for entry, data in configs:
                try:
                    cfg = json.loads(data)
                except (ValueError, RecursionError):
                    cfg = {}
                plat = {"os": cfg.get("os", "linux"), "architecture": cfg.get("architecture")} \
                    if isinstance(cfg, dict) else {}
                candidates.append(((entry, data), plat))
            entry, raw = pick_platform(candidates, str(path))
        image_id = "sha256:" + hashlib.sha256(raw).hexdigest()
        layers = tuple(entry.get("Layers") or ())
        tags = tuple(entry.get("RepoTags") or ())
    elif "index.json" in names:  # OCI image layout
        index = _json(tar, "index.json")
        if not isinstance(index, dict) or not index.get("manifests"):
            raise VenvoyError(f"OCI archive {path}: index.json lists no image")
        desc = pick_platform(_descriptors(index["manifests"], str(path)), str(path))
        annotations = desc.get("annotations") or {}
        manifest = _json(tar, _blob(desc["digest"]))
        for _depth in range(8):  # an index of platforms (nested, but not without end)
            if not (isinstance(manifest, dict) and "manifests" in manifest):
                break
            inner = pick_platform(_descriptors(manifest["manifests"], str(path)), str(path))
            manifest = _json(tar, _blob(inner["digest"]))
        else:
            raise VenvoyError(f"OCI archive {path}: its indexes nest too deep")
        image_id = manifest["config"]["digest"]
        raw = _member_bytes(tar, _blob(image_id))
        layers = tuple(_blob(layer["digest"]) for layer in manifest.get("layers") or ())
        ref = annotations.get("io.containerd.image.name") or annotations.get(
            "org.opencontainers.image.ref.name")
        # ref.name may be a full name or just a tag ("latest"); only a full name is a RepoTag
        tags = (ref,) if isinstance(ref, str) and ":" in ref.rsplit("/", 1)[-1] \
            and not ref.startswith(":") else ()
    else:
        raise VenvoyError(f"{path} is not a Docker or OCI image archive (no manifest.json or index.json)",
                          "create one with `docker save` or `podman save`")
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError):
        raise VenvoyError(f"image archive {path}: its config is not valid JSON") from None
    if not isinstance(config, dict):
        raise VenvoyError(f"image archive {path}: its config is not a JSON object")
    if not all(isinstance(name, str) for name in layers) or not all(isinstance(t, str) for t in tags):
        raise VenvoyError(f"image archive {path}: its manifest names layers or tags that are not strings")
    diff_ids = tuple((config.get("rootfs") or {}).get("diff_ids") or ())
    if diff_ids and len(diff_ids) != len(layers):
        raise VenvoyError(f"image archive {path}: {len(layers)} layers but "
                          f"{len(diff_ids)} diff_ids in its config")
    return ImageSource(ImageInfo(str(image_id), diff_ids, config, tags), layers, raw)


def read_source(tar: ArchiveIndex, path: Path) -> ImageSource:
    """The image in an open Docker or OCI archive that this host runs (one clear
    error for a malformed archive, or one without an image for this platform)."""
    try:
        return _read_source(tar, Path(path))
    except (KeyError, TypeError, AttributeError, ValueError, tarfile.TarError) as exc:
        raise VenvoyError(f"image archive {path} is malformed: {exc!r}",
                          "is it a complete `docker save` or OCI archive?") from None


def _expected(source: ImageSource) -> list[str | None]:
    """The diff_ids the config promises for each layer (None: the config lists none)."""
    if source.info.diff_ids:
        return list(source.info.diff_ids)
    return [None] * len(source.layers)


def open_archive(path: Path) -> ArchiveIndex:
    """An image archive opened for reading by the one bounded tar reader."""
    return ArchiveIndex(Path(path))



def inspect_archive(path: Path) -> ImageInfo:
    """The manifest and config of a docker-archive or OCI archive (layers are not read)."""
    with open_archive(Path(path)) as tar:
        return read_source(tar, Path(path)).info


def decompress_errors() -> tuple[type[BaseException], ...]:
    """Every exception a damaged archive or layer stream may raise while it is read."""
    return (*stream_errors(), tarfile.TarError)


@contextmanager
def layer_stream(tar: ArchiveIndex, name: str, where: Path) -> Iterator[IO[bytes]]:
    """The uncompressed bytes of the layer ``name`` of an open image archive."""
    try:
        fh = tar.extractfile(_norm_member(name))
    except KeyError:
        fh = None
    if fh is None:
        raise VenvoyError(f"image archive {where}: layer {name} is missing",
                          "is it a complete `docker save` or OCI archive?")
    with fh, decompressed(cast(IO[bytes], fh)) as stream:
        yield stream


@contextmanager
def open_layers(archive: Path) -> Iterator[Iterator[TarReader]]:
    """The layers of an image archive, in order, each read by the one bounded tar
    reader (:class:`venvoy.image.tarsafe.TarReader`: iterate it for its entries,
    ``extractfile(entry)`` for the current one's data).

    Used to look at files in an image without unpacking it. Each layer must be
    consumed before moving to the next one.
    """
    with open_archive(Path(archive)) as outer:
        source = read_source(outer, Path(archive))

        def layers() -> Iterator[TarReader]:
            for name in source.layers:
                with layer_stream(outer, name, Path(archive)) as raw:
                    yield layer_reader(raw, Path(archive), name)

        yield layers()


def layer_reader(raw: IO[bytes], archive: Path, name: str) -> TarReader:
    """The bounded tar reader of one (decompressed) layer stream of ``archive``."""
    return TarReader(raw.read, f"image archive {archive}: layer {name[:80]}",
                     decompress_errors(), "the image is damaged or hostile; rebuild or re-save it")


# -- writing archives -----------------------------------------------------------------

def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    # GNU format: sizes past 8 GiB are stored in base-256, so the header is
    # always one block and can be rewritten in place once the size is known.
    return info.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="strict")


class _ArchiveWriter:
    """Writes a docker-archive member by member, in a fixed order."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.names: list[str] = []

    def add_bytes(self, name: str, data: bytes) -> None:
        self.fh.write(_header(name, len(data)))
        self.fh.write(data)
        self._pad(len(data))
        self.names.append(name)

    def _pad(self, size: int) -> None:
        if size % _BLOCK:
            self.fh.write(b"\0" * (_BLOCK - size % _BLOCK))

    def add_layer(self, src: _Readable) -> tuple[str, str]:
        """Stream an uncompressed layer in; returns (diff_id, member name)."""
        start = self.fh.tell()
        placeholder = _header("layer.tmp", 0)
        self.fh.write(placeholder)
        digest = hashlib.sha256()
        size = 0
        while True:
            chunk = src.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            self.fh.write(chunk)
            size += len(chunk)
        hexdigest = digest.hexdigest()
        name = f"{hexdigest}.tar"
        if name in self.names:  # the same layer twice: keep one copy
            self.fh.seek(start)
            self.fh.truncate()
            return f"sha256:{hexdigest}", name
        self._pad(size)
        end = self.fh.tell()
        header = _header(name, size)
        if len(header) != len(placeholder):
            raise VenvoyError(f"internal error: tar header for {name} changed size")
        self.fh.seek(start)
        self.fh.write(header)
        self.fh.seek(end)
        self.names.append(name)
        return f"sha256:{hexdigest}", name

    def close(self) -> None:
        self.fh.write(b"\0" * (2 * _BLOCK))


def _write_image(out: Path, layer_sources: Iterator[tuple[_Readable, str | None]],
                 make_config: Callable[[list[str]], dict[str, Any] | bytes],
                 repo_tag: str | None) -> ImageInfo:
    """Write layers, then the config ``make_config(diff_ids)`` builds, then manifest.json.

    ``make_config`` returns the config as a dict (written as canonical JSON) or
    as the exact bytes to write.

    ``layer_sources`` yields (uncompressed stream, expected diff_id or None).
    """
    tmp = _tmp_name(out)
    try:
        with open(tmp, "wb") as fh:
            writer = _ArchiveWriter(fh)
            diff_ids: list[str] = []
            files: list[str] = []
            for stream, expected in layer_sources:
                diff_id, name = writer.add_layer(stream)
                if expected is not None and expected != diff_id:
                    raise VenvoyError(f"image layer {len(diff_ids) + 1} does not match its diff_id "
                                      f"({diff_id} != {expected})",
                                      "the base archive is corrupt; save it again")
                diff_ids.append(diff_id)
                files.append(name)
            made = make_config(diff_ids)
            raw = made if isinstance(made, bytes) else _canonical_json(made)
            config: dict[str, Any] = json.loads(raw)
            hexdigest = hashlib.sha256(raw).hexdigest()
            writer.add_bytes(f"{hexdigest}.json", raw)
            tags = [repo_tag] if repo_tag else []
            manifest = [{"Config": f"{hexdigest}.json", "RepoTags": tags, "Layers": files}]
            writer.add_bytes("manifest.json", _canonical_json(manifest))
            writer.close()
        _publish(tmp, out)
    except decompress_errors() as exc:
        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise VenvoyError(f"cannot write image archive {out}: {exc}",
                          f"free space in {out.parent}, or set VENVOY_HOME to a larger disk"
                          if full else "check that the source image is whole, then try again"
                          ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return ImageInfo(f"sha256:{hexdigest}", tuple(diff_ids), config, tuple(tags))


def _merge_env(env_list: list[str], env: dict[str, str]) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for item in env_list:
        key = item.split("=", 1)[0]
        if key in env:
            if key in seen:
                continue
            out.append(f"{key}={env[key]}")
            seen.add(key)
        else:
            out.append(item)
    out += [f"{k}={v}" for k, v in env.items() if k not in seen]
    return out


def _check_env(env: dict[str, str]) -> None:
    for key in env:
        if not key or "=" in key or "\0" in key or "\0" in env[key]:
            raise VenvoyError(f"bad environment variable name {key!r} for an image")


def assemble(base_archive: Path, new_layers: list[Path], out: Path, *, env: dict[str, str] | None = None,
             labels: dict[str, str] | None = None, repo_tag: str | None = None,
             created: str | None = None) -> ImageInfo:
    """Write a docker-archive at ``out``: the base image's layers plus ``new_layers``.

    The config is the base's with ``env`` replacing or adding ``Config.Env``
    entries (others, such as PATH, are kept unless given), ``labels`` added to
    ``Config.Labels``, ``rootfs.diff_ids`` and ``history`` extended, and
    ``created`` (RFC 3339; default ``SOURCE_DATE_EPOCH`` or 1970) set, so the
    same inputs give the same image ID and the same bytes. ``base_archive`` is
    a docker-archive or OCI archive with uncompressed or gzip/bzip2/xz layers;
    layers are written uncompressed. Written to a temporary sibling and renamed.
    """
    base_archive, out = Path(base_archive), Path(out)
    env = dict(env or {})
    _check_env(env)
    when = created or rfc3339(source_date_epoch())
    with open_archive(base_archive) as tar:
        source = read_source(tar, base_archive)

        def layer_sources() -> Iterator[tuple[_Readable, str | None]]:
            for name, diff_id in zip(source.layers, _expected(source), strict=True):
                with layer_stream(tar, name, base_archive) as stream:
                    yield stream, diff_id
            for path in new_layers:
                try:
                    layer_fh = open(path, "rb")  # noqa: SIM115 - closed right below
                except OSError as exc:
                    raise VenvoyError(f"cannot read layer {path}: {exc.strerror}") from None
                with layer_fh, decompressed(layer_fh) as stream:
                    yield stream, None

        def make_config(diff_ids: list[str]) -> dict[str, Any]:
            config = copy.deepcopy(source.info.config)
            config["created"] = when
            inner = config.get("config")
            if not isinstance(inner, dict):
                inner = {}
            config["config"] = inner
            if env:
                inner["Env"] = _merge_env(list(inner.get("Env") or []), env)
            if labels:
                inner["Labels"] = {**(inner.get("Labels") or {}), **labels}
            config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
            history = list(config.get("history") or [])
            if not history:  # keep history and layers in step
                history = [{"created": when, "created_by": "base layer"} for _ in source.layers]
            history += [{"created": when, "created_by": "venvoy", "comment": "venvoy layer"}
                        for _ in new_layers]
            config["history"] = history
            config.pop("id", None)
            config.pop("parent", None)
            return config

        return _write_image(out, layer_sources(), make_config, repo_tag)


def copy_as_docker_archive(src: Path, out: Path) -> ImageInfo:
    """Rewrite a docker-archive or OCI archive as a docker-archive, config bytes unchanged.

    The image ID therefore stays the same; layers are written uncompressed.
    """
    src, out = Path(src), Path(out)
    with open_archive(src) as tar:
        source = read_source(tar, src)

        def layer_sources() -> Iterator[tuple[_Readable, str | None]]:
            for name, diff_id in zip(source.layers, _expected(source), strict=True):
                with layer_stream(tar, name, src) as stream:
                    yield stream, diff_id

        return _write_image(out, layer_sources(), lambda _ids: source.config_bytes,
                            source.info.repo_tags[0] if source.info.repo_tags else None)


def rootfs_to_archive(rootfs_tar: Path, out: Path, *, env: dict[str, str] | None = None,
                      repo_tag: str | None = None, architecture: str | None = None) -> ImageInfo:
    """Wrap a root file system tar (e.g. from mmdebstrap) as a one-layer docker-archive.

    The tar becomes the layer as it is (decompressed if needed). Env defaults to
    PATH (the usual Debian one) and LANG=C.UTF-8; ``env`` replaces or adds.
    """
    rootfs_tar, out = Path(rootfs_tar), Path(out)
    full_env = {**DEFAULT_ENV, **(env or {})}
    _check_env(full_env)
    when = rfc3339(source_date_epoch())
    arch = architecture or host_architecture()

    def layer_sources() -> Iterator[tuple[_Readable, str | None]]:
        try:
            fh = open(rootfs_tar, "rb")  # noqa: SIM115 - closed right below
        except OSError as exc:
            raise VenvoyError(f"cannot read root file system tar {rootfs_tar}: {exc.strerror}") from None
        with fh, decompressed(fh) as stream:
            yield stream, None

    def make_config(diff_ids: list[str]) -> dict[str, Any]:
        return {
            "architecture": arch,
            "os": "linux",
            "created": when,
            "config": {"Env": [f"{k}={v}" for k, v in full_env.items()], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": when, "created_by": "venvoy rootfs_to_archive",
                         "comment": "root file system"}],
        }

    return _write_image(out, layer_sources(), make_config, repo_tag)


__all__ = ["DEFAULT_ENV", "MAX_ARCHIVE_MEMBERS", "ArchiveIndex", "ImageInfo", "ImageSource",
           "add_files_layer", "assemble", "copy_as_docker_archive", "decompress_errors",
           "host_architecture", "inspect_archive", "layer_from_dir", "layer_reader", "layer_stream",
           "open_archive", "open_layers", "pick_platform", "read_source", "rfc3339",
           "rootfs_to_archive", "source_date_epoch"]
