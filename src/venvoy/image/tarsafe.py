"""The one bounded tar reader (and writer) for every tar venvoy did not just write itself.

:mod:`tarfile` reads pax headers of any size into memory and follows the
sizes a header claims; a hostile file makes it use gigabytes. Here every
header record is bounded (:data:`MAX_PAX`, :data:`MAX_LONGNAME`), data is read
in :data:`CHUNK` pieces, and a stream that ends early is an error naming the
member it ended in.

On top of the reader, the two venvoy formats that carry files (the
``archive`` and the ``wheelhouse``) share one check of a manifest's member
list (:func:`check_listing`) and one extraction (:func:`extract`): only
regular files listed in the manifest, under safe relative names, each with
the size the manifest gives (checked before anything is written, so no more
than that is ever written) and its sha256 (checked as it streams).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple

from venvoy.core.errors import BadRequest, VenvoyError

BLOCK = 512
CHUNK = 1 << 20
MAX_PAX = 1 << 20  #: one pax extended header
MAX_LONGNAME = 64 << 10  #: one GNU long-name record
MAX_TRAILING = 1 << 20  #: zero padding accepted after the end-of-archive blocks
MAX_MANIFEST = 1 << 20  #: a manifest.json, of an archive or a wheelhouse
MAX_MEMBERS = 100_000  #: members a manifest may list
DEFAULT_MAX_BYTES = 64 << 30  #: all members of one file together, unpacked
#: The hint of a file that fails a check.
DAMAGED = "the file is damaged or was tampered with: do not use it; ask its sender for a new one"

_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = (b"0", b"\0")
_TYPE_WORDS = {b"1": "a hard link", b"2": "a symbolic link", b"3": "a character device node",
               b"4": "a block device node", b"5": "a directory", b"6": "a FIFO",
               b"7": "a contiguous file"}
_NO_DATA = frozenset((b"1", b"2", b"3", b"4", b"5", b"6"))
_FILES = (b"0", b"\0", b"7", b"S")
_HIGH = bytes(range(128))  # deleted by translate(): what is left are the bytes > 127
MAX_SPARSE = 1 << 16  #: pieces in one sparse file's map
_PAX_KEYS = (b"path", b"linkpath", b"size", b"mtime", b"uid", b"gid", b"GNU.sparse.major",
             b"GNU.sparse.minor", b"GNU.sparse.name", b"GNU.sparse.realsize", b"GNU.sparse.size",
             b"GNU.sparse.map")


def mib(size: int) -> str:
    return f"{size / (1 << 20):.0f} MiB" if size >= 1 << 20 else f"{size} bytes"


def max_bytes_default(environ: Mapping[str, str] | None = None) -> int:
    """The bound on a file's unpacked size: ``VENVOY_ARCHIVE_MAX_BYTES`` or 64 GiB."""
    value = (os.environ if environ is None else environ).get("VENVOY_ARCHIVE_MAX_BYTES", "").strip()
    if not value:
        return DEFAULT_MAX_BYTES
    try:
        limit = int(value)
    except ValueError:
        raise BadRequest(f"VENVOY_ARCHIVE_MAX_BYTES={value!r} is not a number of bytes",
                         "set it to a whole number, e.g. 137438953472 for 128 GiB") from None
    if limit <= 0:
        raise BadRequest(f"VENVOY_ARCHIVE_MAX_BYTES={value!r} must be positive")
    return limit


class TarEntry(NamedTuple):
    """One member: its name, tar type, size (a sparse file's full size), link target,
    and the attributes an unpacker applies. ``sparse`` is the map of a sparse file,
    ``((offset, length), ...)`` of the data that follows (holes elsewhere), else None."""

    name: str
    type: bytes
    size: int
    linkname: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float = 0
    sparse: tuple[tuple[int, int], ...] | None = None

    @property
    def is_regular(self) -> bool:
        return self.type in _REGULAR

    # tarfile's names, so code written for TarInfo reads the same
    def isfile(self) -> bool:
        """A file with data: regular, contiguous, or sparse."""
        return self.type in _FILES

    def isdir(self) -> bool:
        return self.type == b"5"

    def issym(self) -> bool:
        return self.type == b"2"

    def islnk(self) -> bool:
        return self.type == b"1"


class TarReader:
    """A streaming reader of POSIX/GNU tar that trusts nothing and holds little in memory.

    Header checksums and magic are checked; pax and GNU long-name records are
    read within small bounds and applied; every other entry is returned as is
    (the caller decides what is acceptable, e.g. with :func:`check_member`).
    ``errors`` are the exceptions ``read`` may raise on bad input (see
    :func:`venvoy.image.compress.stream_errors`): each becomes one clear line.
    """

    def __init__(self, read: Callable[[int], bytes], where: str,
                 errors: tuple[type[BaseException], ...] = (), hint: str = DAMAGED) -> None:
        self._raw_read = read
        self._errors = errors
        self.where = where
        self.hint = hint
        self.current: TarEntry | None = None
        self.previous = ""
        self.remaining = 0
        self.padding = 0
        self.offset = 0  #: bytes consumed from ``read`` so far

    def _read(self, size: int) -> bytes:
        try:
            data = self._raw_read(size)
            self.offset += len(data)
            return data
        except EOFError:
            raise self.truncated() from None
        except self._errors as exc:
            inside = f" in member {self.current.name!r}" if self.current is not None else ""
            detail = " ".join(str(exc).split())[:160]
            raise VenvoyError(f"{self.where} is damaged{inside} ({type(exc).__name__}: {detail})",
                              "the file is corrupt: copy it again") from None

    def truncated(self) -> VenvoyError:
        """The error for a stream that ended too early."""
        inside = f" in member {self.current.name!r}" if self.current is not None else (
            f" after member {self.previous!r}" if self.previous else "")
        return VenvoyError(f"{self.where} is truncated{inside}",
                           "the file is incomplete: copy or download it again")

    def _exact(self, size: int) -> bytes:
        parts = []
        while size > 0:
            chunk = self._read(min(size, CHUNK))
            if not chunk:
                raise self.truncated()
            parts.append(chunk)
            size -= len(chunk)
        return b"".join(parts)

    def _bad(self, what: str) -> VenvoyError:
        after = f" after member {self.previous!r}" if self.previous else " at its start"
        return VenvoyError(f"{self.where}: {what}{after}", self.hint)

    def next(self) -> TarEntry | None:
        """The next entry, or None at the end-of-archive marker."""
        while self.remaining:
            self.read(CHUNK)
        if self.current is not None:
            self.previous = self.current.name
        self.current = None
        pending: dict[str, str] = {}
        pieces: list[str] = []  # GNU sparse 0.0: offset, numbytes, offset, numbytes...
        while True:
            block = self._exact(BLOCK)
            if block == _ZERO_BLOCK:
                if self._exact(BLOCK) != _ZERO_BLOCK:
                    raise self._bad("damaged tar stream (a lone zero block)")
                return None
            name, kind, size, linkname, mode, uid, gid, mtime = self._header(block)
            if kind in (b"x", b"g", b"X"):
                if size > MAX_PAX:
                    raise self._bad(f"a pax header of {size} bytes (more than {MAX_PAX})")
                data = self._exact(size + (-size) % BLOCK)[:size]
                if kind != b"g":
                    pending.update(self._pax(data, pieces))
                continue
            if kind in (b"L", b"K"):
                if size > MAX_LONGNAME:
                    raise self._bad(f"a long-name record of {size} bytes (more than "
                                    f"{MAX_LONGNAME})")
                data = self._exact(size + (-size) % BLOCK)[:size]
                value = self._text(data.split(b"\0", 1)[0])
                pending["path" if kind == b"L" else "linkpath"] = value
                continue
            name = pending.get("GNU.sparse.name", pending.get("path", name))
            linkname = pending.get("linkpath", linkname)
            size = self._pax_int(pending, "size", size)
            uid = self._pax_int(pending, "uid", uid)
            gid = self._pax_int(pending, "gid", gid)
            if "mtime" in pending:
                mtime = self._pax_time(pending["mtime"])
            if kind == b"\0" and name.endswith("/"):
                kind = b"5"  # an old-style directory (tarfile's rule)
            if kind == b"5" and len(name) > 1:
                name = name.rstrip("/")  # as tarfile names directories
            stored = 0 if kind in _NO_DATA else size
            entry = TarEntry(name, kind, size, linkname, mode, uid, gid, mtime)
            self.current = entry
            self.remaining = stored
            self.padding = (-stored) % BLOCK
            sparse: list[tuple[int, int]] | None = None
            if kind == b"S":
                sparse, size = self._gnu_sparse(block)
            elif pending.get("GNU.sparse.major") == "1" and pending.get("GNU.sparse.minor") == "0":
                sparse = self._sparse_map_10()
                size = self._pax_int(pending, "GNU.sparse.realsize", size)
            elif "GNU.sparse.map" in pending or pieces:
                text = pending.get("GNU.sparse.map")
                raw = (text.split(",") if text else []) if text is not None else pieces
                sparse = self._pairs([self._digits(v, "sparse map") for v in raw])
                size = self._pax_int(pending, "GNU.sparse.size", size)
            if sparse is not None:
                if sum(n for _, n in sparse) > self.remaining or any(
                        off + n > size for off, n in sparse):
                    raise self._bad(f"a sparse member {name[:200]!r} whose map does not fit it")
                entry = entry._replace(size=size, sparse=tuple(sparse))
                self.current = entry
            return entry

    def _pax_int(self, pending: Mapping[str, str], key: str, default: int) -> int:
        return self._digits(pending[key], key) if key in pending else default

    def _digits(self, value: str, what: str) -> int:
        if not (value.isascii() and value.isdigit() and len(value) <= 20):
            raise self._bad(f"a bad {what} {value[:30]!r} in a pax header")
        return int(value)

    def _pax_time(self, value: str) -> float:
        whole, _, frac = value.partition(".")
        digits = whole.removeprefix("-")
        if not (digits.isascii() and digits.isdigit() and len(digits) <= 20
                and (not frac or (frac.isascii() and frac.isdigit() and len(frac) <= 20))):
            raise self._bad(f"a bad mtime {value[:30]!r} in a pax header")
        return float(value)

    def _pairs(self, numbers: list[int]) -> list[tuple[int, int]]:
        if len(numbers) % 2 or len(numbers) > 2 * MAX_SPARSE:
            raise self._bad("a malformed sparse map")
        return list(zip(numbers[::2], numbers[1::2], strict=True))

    def _gnu_sparse(self, block: bytes) -> tuple[list[tuple[int, int]], int]:
        """An old GNU sparse header's map (and its extension blocks), and the full size."""
        numbers: list[int] = []

        def take(buf: bytes, count: int) -> None:
            for i in range(count):
                offset = self._number(buf[i * 24:i * 24 + 12], "sparse offset")
                length = self._number(buf[i * 24 + 12:i * 24 + 24], "sparse length")
                if offset or length:
                    numbers.extend((offset, length))

        take(block[386:482], 4)
        extended = block[482]
        while extended:
            if len(numbers) > 2 * MAX_SPARSE:
                raise self._bad(f"a sparse map of more than {MAX_SPARSE} pieces")
            ext = self._exact(BLOCK)
            take(ext[:504], 21)
            extended = ext[504]
        return self._pairs(numbers), self._number(block[483:495], "sparse size")

    def _sparse_map_10(self) -> list[tuple[int, int]]:
        """A GNU sparse 1.0 map: decimal numbers, one a line, at the start of the data,
        in whole blocks (the count, then offset and length of each piece)."""
        buf = b""
        numbers: list[int] = []
        want = 1
        while len(numbers) < want:
            if b"\n" not in buf:
                if len(buf) > 64 or self.remaining < BLOCK:
                    raise self._bad("a malformed sparse map")
                buf += self._exact(BLOCK)
                self.remaining -= BLOCK
                continue
            line, buf = buf.split(b"\n", 1)
            numbers.append(self._digits(line.decode("ascii", "replace"), "sparse map"))
            if len(numbers) == 1:
                if numbers[0] > MAX_SPARSE:
                    raise self._bad(f"a sparse map of more than {MAX_SPARSE} pieces")
                want = 1 + 2 * numbers[0]
        self.padding = (-self.remaining) % BLOCK
        return self._pairs(numbers[1:])

    def __iter__(self) -> Iterator[TarEntry]:
        while (entry := self.next()) is not None:
            yield entry

    def extractfile(self, entry: TarEntry) -> MemberData | None:
        """The data of ``entry`` (the current member) to ``read``; None for a member without
        data, as :meth:`tarfile.TarFile.extractfile` answers. Read before the next entry."""
        if entry is not self.current or not entry.isfile():
            return None
        return MemberData(self, entry)

    def skip(self, seek: Callable[[int], object]) -> None:
        """Pass over the rest of the current entry's data by seeking (a seekable stream)
        instead of reading it; the next :meth:`next` then reads the following header."""
        self.offset += self.remaining + self.padding
        seek(self.offset)
        self.remaining = self.padding = 0

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of the current entry's data; b"" at its end."""
        if self.remaining <= 0:
            return b""
        chunk = self._read(min(size, self.remaining))
        if not chunk:
            raise self.truncated()
        self.remaining -= len(chunk)
        if self.remaining == 0 and self.padding:
            self._exact(self.padding)
            self.padding = 0
        return chunk

    def read_all(self, limit: int) -> bytes:
        """The rest of the current entry's data, which must be at most ``limit`` bytes."""
        if self.remaining > limit:
            raise self._bad(f"a member of {self.remaining} bytes where at most {limit} fit")
        parts = []
        while chunk := self.read(CHUNK):
            parts.append(chunk)
        return b"".join(parts)

    def finish(self, max_trailing: int = MAX_TRAILING) -> None:
        """After the end marker: only zero padding may follow, and not much of it."""
        seen = 0
        while True:
            chunk = self._read(CHUNK)
            if not chunk:
                return
            seen += len(chunk)
            if chunk.count(0) != len(chunk) or seen > max_trailing:
                raise VenvoyError(f"{self.where}: unexpected data after the end of the archive",
                                  self.hint)

    def _text(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self._bad(f"a member name that is not UTF-8 ({raw[:80]!r})") from None

    def _number(self, raw: bytes, what: str, signed: bool = False) -> int:
        if raw[:1] and raw[0] & 0x80:  # GNU base-256
            if raw[0] == 0xFF and signed:
                return int.from_bytes(raw, "big", signed=True)
            if raw[0] != 0x80:
                raise self._bad(f"a negative or oversized {what} in a tar header")
            return int.from_bytes(raw[1:], "big")
        text = raw.split(b"\0", 1)[0].strip(b" ")
        if not text:
            return 0
        if text.translate(None, b"01234567"):
            raise self._bad(f"a damaged tar header (bad {what} {text[:20]!r})")
        return int(text, 8)

    def _header(self, block: bytes) -> tuple[str, bytes, int, str, int, int, int, float]:
        stored = self._number(block[148:156], "checksum")
        unsigned = sum(block) - sum(block[148:156]) + 8 * 32
        if stored != unsigned:  # some old writers summed signed chars
            high = len(block[:148].translate(None, _HIGH)) + len(block[156:].translate(None, _HIGH))
            if stored != unsigned - 256 * high:
                raise self._bad("a damaged tar header (checksum mismatch)")
        magic = block[257:263]
        if magic not in (b"ustar\x00", b"ustar "):
            raise self._bad("a tar header that is neither POSIX nor GNU")
        name = self._text(block[0:100].split(b"\0", 1)[0])
        if magic == b"ustar\x00":
            prefix = self._text(block[345:500].split(b"\0", 1)[0])
            if prefix:
                name = f"{prefix}/{name}"
        linkname = self._text(block[157:257].split(b"\0", 1)[0])
        return (name, block[156:157], self._number(block[124:136], "size"), linkname,
                self._number(block[100:108], "mode") & 0o7777, self._number(block[108:116], "uid"),
                self._number(block[116:124], "gid"),
                float(self._number(block[136:148], "mtime", signed=True)))

    def _pax(self, data: bytes, pieces: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        pos = 0
        while pos < len(data):
            space = data.find(b" ", pos, pos + 24)
            length_text = data[pos:space] if space > pos else b""
            if not length_text.isdigit():
                raise self._bad("a malformed pax header")
            length = int(length_text)
            record = data[pos:pos + length]
            if length <= space - pos + 1 or len(record) != length or not record.endswith(b"\n"):
                raise self._bad("a malformed pax header")
            key, sep, value = record[space - pos + 1:-1].partition(b"=")
            if not sep:
                raise self._bad("a malformed pax header")
            if key in _PAX_KEYS:
                out[key.decode()] = self._text(value)
            elif key in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
                if len(pieces) >= 2 * MAX_SPARSE:
                    raise self._bad(f"a sparse map of more than {MAX_SPARSE} pieces")
                pieces.append(self._text(value))
            pos += length
        return out


class MemberData:
    """The data of the current member of a :class:`TarReader`, as a small read-only file."""

    def __init__(self, reader: TarReader, entry: TarEntry) -> None:
        self.reader = reader
        self.entry = entry

    def read(self, size: int = -1) -> bytes:
        if self.reader.current is not self.entry:
            return b""
        if size < 0:
            return self.reader.read_all(self.reader.remaining)
        return self.reader.read(size)

    def __enter__(self) -> MemberData:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None


def check_member(entry: TarEntry, where: str, hint: str = DAMAGED) -> None:
    """Only regular files, under safe relative names."""
    name = entry.name
    if not name:
        raise VenvoyError(f"{where}: a member has an empty name", hint)
    if name.startswith("/"):
        raise VenvoyError(f"{where}: member {name[:200]!r} has an absolute path", hint)
    if ".." in name.split("/"):
        raise VenvoyError(f"{where}: member {name[:200]!r} contains '..' (path traversal)", hint)
    if "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise VenvoyError(f"{where}: member {name[:200]!r} has characters not allowed in a name",
                          hint)
    if entry.sparse is not None:
        raise VenvoyError(f"{where}: member {name[:200]!r} is a sparse file; only regular files "
                          "are allowed", hint)
    if not entry.is_regular:
        word = _TYPE_WORDS.get(entry.type, f"of tar type {entry.type!r}")
        target = f" to {entry.linkname[:200]!r}" if entry.type in (b"1", b"2") else ""
        raise VenvoyError(f"{where}: member {name[:200]!r} is {word}{target}; only regular files "
                          "are allowed", hint)


def loads(raw: bytes, what: str, hint: str = DAMAGED) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN or Infinity."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise ValueError(f"duplicate key {key[:60]!r}")
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not allowed")

    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=pairs, parse_constant=constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        detail = " ".join(str(exc).split())[:160]
        raise VenvoyError(f"{what} is not valid JSON: {detail}", hint) from None


class Member(NamedTuple):
    """A file a manifest lists: where it goes, how big it is, its sha256."""

    path: str
    size: int
    sha256: str


def _is_hex64(value: object) -> bool:
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))


def check_listing(items: Iterable[tuple[object, object, object]], where: str, *,
                  name_ok: Callable[[str], bool], limit: int,
                  small: Mapping[str, int] | None = None, hint: str = DAMAGED,
                  limit_hint: str = "if you trust it, raise the limit with "
                                    "VENVOY_ARCHIVE_MAX_BYTES") -> dict[str, Member]:
    """A manifest's ``(path, size, sha256)`` list, checked: names ``name_ok`` accepts,
    each once, sizes whole and >= 0 (and at most ``small[path]`` where given), digests
    64 lowercase hex digits, all sizes together at most ``limit``."""

    def bad(what: str) -> VenvoyError:
        return VenvoyError(f"{where}: manifest.json {what}", hint)

    out: dict[str, Member] = {}
    total = 0
    for count, (path, size, digest) in enumerate(items):
        if count >= MAX_MEMBERS:
            raise bad(f"lists more than {MAX_MEMBERS} members")
        if not isinstance(path, str) or not name_ok(path):
            raise bad(f"lists an unknown member {str(path)[:80]!r}")
        if path in out:
            raise bad(f"lists member {path!r} twice")
        if type(size) is not int or size < 0:
            raise bad(f"gives member {path!r} an invalid size")
        bound = (small or {}).get(path)
        if bound is not None and size > bound:
            raise bad(f"gives member {path!r} a size of {mib(size)}, more than {mib(bound)}")
        if not _is_hex64(digest):
            raise bad(f"gives member {path!r} a malformed sha256")
        assert isinstance(digest, str)
        out[path] = Member(path, size, digest)
        total += size
    if total > limit:
        raise VenvoyError(f"{where} would unpack to {mib(total)}, more than the limit of "
                          f"{mib(limit)}", limit_hint)
    return out


def read_manifest(reader: TarReader, where: str, is_manifest: Callable[[str], bool],
                  hint: str = DAMAGED) -> tuple[TarEntry, bytes]:
    """The first member, which must be a manifest ``is_manifest`` accepts by name, of at
    most :data:`MAX_MANIFEST` bytes; returns its entry and its bytes."""
    entry = reader.next()
    if entry is None:
        raise VenvoyError(f"{where} is an empty tar archive", hint)
    check_member(entry, where, hint)
    if not is_manifest(entry.name):
        raise VenvoyError(f"{where}: the first member is {entry.name[:200]!r}, not its "
                          "manifest.json", "pass a file written by `venvoy export`")
    if entry.size > MAX_MANIFEST:
        raise VenvoyError(f"{where}: member {entry.name[:200]!r} is {entry.size} bytes, more "
                          f"than the {MAX_MANIFEST} a manifest may have", hint)
    return entry, reader.read_all(MAX_MANIFEST)


def check_space(total: int, work: Path, where: str) -> None:
    """Refuse before unpacking ``total`` bytes into ``work`` where they do not fit."""
    free = shutil.disk_usage(work).free
    if free < total + (64 << 20):
        raise VenvoyError(f"not enough space in {work.parent} to import {where}: "
                          f"{mib(total)} needed, {mib(free)} free",
                          "free some space, or set VENVOY_TMPDIR to a larger directory")


def extract(reader: TarReader, listing: Mapping[str, Member], dest: Path, where: str, *,
            prefix: str = "", skip_dirs: Iterable[str] = (), hint: str = DAMAGED,
            say: Callable[[str], None] | None = None) -> None:
    """Stream every member of ``listing`` into ``dest``, after the manifest was read.

    Members are named ``prefix + path``; directories named in ``skip_dirs`` are
    passed over; anything else, a member twice, one not listed or one missing
    is an error. A member's size is compared with the listing's before a byte
    is written, its sha256 once it was written. ``dest`` must be a new, empty
    directory: files are created there, never opened through a link.
    """
    skipped = {d.rstrip("/") for d in skip_dirs}
    seen: set[str] = set()
    while (entry := reader.next()) is not None:
        name = entry.name
        if entry.type == b"5" and name.rstrip("/") in skipped:
            continue
        check_member(entry, where, hint)
        rel = name[len(prefix):] if name.startswith(prefix) else None
        if rel is not None and (rel in seen or rel == "manifest.json"):
            raise VenvoyError(f"{where}: member {name[:200]!r} appears twice", hint)
        want = listing.get(rel) if rel is not None else None
        if want is None or rel is None:
            raise VenvoyError(f"{where}: member {name[:200]!r} is not listed in the manifest", hint)
        seen.add(rel)
        if entry.size != want.size:
            raise VenvoyError(f"{where}: member {name!r} holds {entry.size} bytes but the "
                              f"manifest says {want.size}", hint)
        if say is not None and entry.size >= 64 << 20:
            say(f"checking {rel} ({mib(entry.size)})")
        digest = hashlib.sha256()
        target = dest / rel
        try:
            if "/" in rel:
                target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            with open(fd, "wb") as out:
                while chunk := reader.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        except VenvoyError:
            raise
        except OSError as exc:
            raise VenvoyError(f"cannot write {rel} into {dest}: {exc.strerror or exc}",
                              "free some space, or set VENVOY_TMPDIR to a larger directory"
                              ) from None
        if digest.hexdigest() != want.sha256:
            raise VenvoyError(f"{where}: member {name!r} does not match its sha256 in the manifest",
                              hint)
    missing = sorted(set(listing) - seen)
    if missing:
        raise VenvoyError(f"{where}: {len(missing)} member(s) listed in the manifest are missing "
                          f"from the file (e.g. {prefix}{missing[0]})", hint)


class TarWriter:
    """Regular files only, GNU headers (sizes past 8 GiB in base-256), in the caller's order."""

    def __init__(self, write: Callable[[bytes], object], mtime: int) -> None:
        self.write = write
        self.mtime = mtime

    def add(self, name: str, size: int, *, data: bytes | None = None,
            file: IO[bytes] | None = None) -> None:
        """Add ``data``, or ``size`` bytes read from ``file`` (an error if it holds another size)."""
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, self.mtime
        info.uname = info.gname = ""
        self.write(info.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="strict"))
        if data is not None:
            self.write(data)
            written = len(data)
        else:
            assert file is not None
            written = 0
            while chunk := file.read(CHUNK):
                self.write(chunk)
                written += len(chunk)
        if written != size:
            raise VenvoyError(f"{name} changed while it was being written "
                              f"({written} bytes, {size} expected)", "try again")
        if size % BLOCK:
            self.write(bytes(BLOCK - size % BLOCK))

    def close(self) -> None:
        self.write(bytes(2 * BLOCK))


__all__ = ["BLOCK", "CHUNK", "DAMAGED", "DEFAULT_MAX_BYTES", "MAX_LONGNAME", "MAX_MANIFEST",
           "MAX_MEMBERS", "MAX_PAX", "MAX_SPARSE", "MAX_TRAILING", "Member", "MemberData",
           "TarEntry", "TarReader", "TarWriter", "check_listing", "check_member", "check_space",
           "extract", "loads", "max_bytes_default", "mib", "read_manifest"]
