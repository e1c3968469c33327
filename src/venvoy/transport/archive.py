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

Importing treats the archive as hostile. The tar is parsed here, not by
:mod:`tarfile` (whose pax parsing reads headers of any size into memory):
only regular files listed in the manifest are accepted, each is streamed into
a temporary directory inside the store while its size and sha256 are checked,
and every size is bounded before anything is written. The image is then
checked against its own content (config sha256 = image ID, every layer's
sha256 = its diff_id), and only then published into the store with renames.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol

from venvoy import __version__
from venvoy.core.errors import BadRequest, DamagedError, VenvoyError
from venvoy.core.names import check_name
from venvoy.store.layout import Store
from venvoy.store.records import (
    Environment,
    EnvRecord,
    drop_image_if_unused,
    find,
    image_in_use,
    lock_hash,
    write_env,
)

FORMAT = "venvoy-archive"
FORMAT_VERSION = 1
WHEELHOUSE_FORMAT = "venvoy-wheelhouse"

#: Members an archive of format version 1 may hold (besides manifest.json), in writing order.
MEMBERS = ("README.txt", "env.json", "pylock.toml", "image.tar", "image.sif")
REQUIRED = ("env.json", "pylock.toml", "image.tar")
SMALL = ("README.txt", "env.json", "pylock.toml")

MAX_MANIFEST = 1 << 20  # bytes
MAX_SMALL = 16 << 20  # README.txt, env.json, pylock.toml; JSON members of image.tar
DEFAULT_MAX_BYTES = 64 << 30  # all members together, unpacked
MAX_PAX = 1 << 20  # one pax extended header
MAX_LONGNAME = 64 << 10  # one GNU long-name record
MAX_TRAILING = 1 << 20  # zero padding accepted after the end-of-archive blocks
STALE_S = 24 * 3600  # temporaries of another host are removed after this long

ZSTD_LEVEL = 3
GZIP_LEVEL = 6
SUFFIXES = {"zstd": ".venvoy.tar.zst", "gzip": ".venvoy.tar.gz"}

_CHUNK = 1 << 20
_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ROOT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_PYTHON = re.compile(r"[0-9]+\.[0-9]+")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?!git@)[^/@\s]+@")

_DAMAGED = "the archive is damaged or was tampered with: do not use it; ask its sender for a new one"


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def _noop(_msg: str) -> None:
    return None


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.0f} MiB" if size >= 1 << 20 else f"{size} bytes"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def max_bytes_default(environ: Mapping[str, str] | None = None) -> int:
    """The bound on an archive's unpacked size: ``VENVOY_ARCHIVE_MAX_BYTES`` or 64 GiB."""
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


# -- compression ------------------------------------------------------------------------

def _zstd_module() -> Any | None:
    """The ``zstandard`` module when installed (preferred: no external program)."""
    try:
        return importlib.import_module("zstandard")
    except ImportError:
        return None


def _zstd_program() -> str | None:
    return shutil.which("zstd")


def zstd_available() -> bool:
    return _zstd_module() is not None or _zstd_program() is not None


def _no_zstd() -> VenvoyError:
    return VenvoyError("zstd compression needs the `zstandard` Python package or the `zstd` program",
                       "install one (pip install zstandard, or apt-get install zstd), "
                       "or export to a name ending in .tar.gz")


@contextlib.contextmanager
def _compressing(kind: str, fh: IO[bytes]) -> Iterator[Callable[[bytes], object]]:
    """A ``write`` that compresses into ``fh``; the stream is complete when the block ends."""
    if kind == "gzip":
        with gzip.GzipFile(filename="", fileobj=fh, mode="wb", compresslevel=GZIP_LEVEL) as gz:
            yield gz.write
        return
    module = _zstd_module()
    if module is not None:
        cctx = module.ZstdCompressor(level=ZSTD_LEVEL, threads=-1, write_checksum=True)
        with cctx.stream_writer(fh, closefd=False) as writer:
            yield writer.write
        return
    program = _zstd_program()
    if program is None:
        raise _no_zstd()
    fh.flush()
    proc = subprocess.Popen([program, f"-{ZSTD_LEVEL}", "-T0", "-q", "-c"], stdin=subprocess.PIPE,
                            stdout=fh, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None
        yield proc.stdin.write
        proc.stdin.close()
        assert proc.stderr is not None
        err = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait() != 0:
            raise VenvoyError(f"zstd failed while compressing: {err or f'exit {proc.returncode}'}",
                              "check free space where the archive is written")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _compression_of(head: bytes) -> str:
    if head[:4] == _ZSTD_MAGIC:
        return "zstd"
    if head[:2] == _GZIP_MAGIC:
        return "gzip"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:3] == b"BZh":
        return "bzip2"
    if head[257:262] == b"ustar":
        return "none"
    return "unknown"


def _check_zstd_frames(fh: IO[bytes], path: Path) -> None:
    """Walk the zstd frame and block headers (no decompression).

    The ``zstandard`` module's stream reader ends quietly where a file was cut
    short; walking the structure first makes a truncated or padded file an
    error. Skippable frames are refused: venvoy never writes them.
    """
    size = os.fstat(fh.fileno()).st_size
    pos = frames = 0

    def damaged(what: str) -> VenvoyError:
        return VenvoyError(f"{path} is not a complete zstd stream ({what} at byte {pos})",
                           "the file is truncated or damaged: copy it again")

    while pos < size:
        fh.seek(pos)
        head = fh.read(18)
        if head[:4] != _ZSTD_MAGIC:
            raise damaged("unexpected data after the compressed data" if frames
                          else "no zstd frame")
        if len(head) < 6:
            raise damaged("cut-off frame header")
        fhd = head[4]
        if fhd & 0x08:
            raise damaged("reserved bit set in the frame header")
        single = (fhd >> 5) & 1
        header = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + (single, 2, 4, 8)[fhd >> 6]
        if len(head) < header:
            raise damaged("cut-off frame header")
        pos += header
        while True:
            fh.seek(pos)
            raw = fh.read(3)
            if len(raw) < 3:
                raise damaged("cut-off block")
            value = int.from_bytes(raw, "little")
            kind, block_size = (value >> 1) & 3, value >> 3
            if kind == 3:
                raise damaged("reserved block type")
            pos += 3 + (1 if kind == 1 else block_size)
            if pos > size:
                raise damaged("cut-off block")
            if value & 1:
                break
        pos += 4 if fhd & 0x04 else 0
        if pos > size:
            raise damaged("cut-off checksum")
        frames += 1


class _Stream:
    """A decompressed stream: ``read`` and, at the end, ``finish`` (which checks the compressor)."""

    def __init__(self, read: Callable[[int], bytes], finish: Callable[[], None]) -> None:
        self.read = read
        self.finish = finish


@contextlib.contextmanager
def _decompressing(fh: IO[bytes], path: Path, kind: str, *, check: bool = True) -> Iterator[_Stream]:
    """``fh`` decompressed from its start; the stream's ``finish`` (called once all was
    read) checks that the compressed data was complete, where ``check``."""
    fh.seek(0)
    if kind == "none":
        yield _Stream(fh.read, _noop_finish)
        return
    if kind == "gzip":
        with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
            yield _Stream(gz.read, _noop_finish)
        return
    if kind != "zstd":
        raise VenvoyError(f"{path} is compressed with {kind}, not zstd or gzip",
                          "venvoy archives are written by `venvoy export --format archive`")
    module = _zstd_module()
    if module is not None:
        # The module's reader ends quietly where a file was cut short: once all
        # was read, the frame structure is walked to tell (see _check_zstd_frames).
        dctx = module.ZstdDecompressor()
        with dctx.stream_reader(fh, read_across_frames=True, closefd=False) as reader:
            yield _Stream(reader.read, lambda: _check_zstd_frames(fh, path) if check else None)
        return
    program = _zstd_program()
    if program is None:
        raise _no_zstd()
    os.lseek(fh.fileno(), 0, os.SEEK_SET)  # a buffered seek(0) may not move the descriptor
    proc = subprocess.Popen([program, "-d", "-c", "-q"], stdin=fh, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout, proc.stderr

    def finish() -> None:
        rest = out.read(1)
        if rest:
            raise VenvoyError(f"{path}: unexpected data after the end of the archive", _DAMAGED)
        message = err.read().decode(errors="replace").strip().splitlines()
        if proc.wait() != 0:
            raise VenvoyError(f"{path} is not a complete zstd stream: "
                              f"{message[-1] if message else f'zstd exit {proc.returncode}'}",
                              "the file is truncated or damaged: copy it again")

    try:
        yield _Stream(out.read, finish)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        out.close()
        err.close()


def _noop_finish() -> None:
    return None


_DECODE_ERRORS: tuple[type[BaseException], ...] = (EOFError, zlib.error, gzip.BadGzipFile)


def _decode_errors() -> tuple[type[BaseException], ...]:
    """What decompressors raise on bad input."""
    module = _zstd_module()
    return (*_DECODE_ERRORS, module.ZstdError) if module is not None else _DECODE_ERRORS


def _stream_errors() -> tuple[type[BaseException], ...]:
    """What reading a compressed file may raise: bad input, or the file itself unreadable."""
    return (*_decode_errors(), OSError)


# -- reading tar, strictly ---------------------------------------------------------------

class _Entry(NamedTuple):
    name: str
    type: bytes
    size: int
    linkname: str


_REGULAR = (b"0", b"\0")
_TYPE_WORDS = {b"1": "a hard link", b"2": "a symbolic link", b"3": "a character device node",
               b"4": "a block device node", b"5": "a directory", b"6": "a FIFO",
               b"7": "a contiguous file"}
_NO_DATA = frozenset((b"1", b"2", b"3", b"4", b"5", b"6"))


class _TarReader:
    """A streaming reader of POSIX/GNU tar that trusts nothing and holds little in memory.

    Header checksums and magic are checked; pax and GNU long-name records are
    read within small bounds and applied; every other entry is returned as is
    (the caller decides what is acceptable). A stream that ends early is an error
    naming the member it ended in.
    """

    def __init__(self, read: Callable[[int], bytes], where: str,
                 errors: tuple[type[BaseException], ...] = ()) -> None:
        self._raw_read = read
        self._errors = errors
        self.where = where
        self.current: _Entry | None = None
        self.previous = ""
        self.remaining = 0
        self.padding = 0

    def _read(self, size: int) -> bytes:
        try:
            return self._raw_read(size)
        except EOFError:
            raise self._truncated() from None
        except self._errors as exc:
            inside = f" in member {self.current.name!r}" if self.current is not None else ""
            raise VenvoyError(f"{self.where} is damaged{inside} ({type(exc).__name__}: "
                              f"{str(exc)[:160]})", "the file is corrupt: copy it again") from None

    def _truncated(self) -> VenvoyError:
        inside = f" in member {self.current.name!r}" if self.current is not None else (
            f" after member {self.previous!r}" if self.previous else "")
        return VenvoyError(f"{self.where} is truncated{inside}",
                           "the file is incomplete: copy or download it again")

    def _exact(self, size: int) -> bytes:
        parts = []
        while size > 0:
            chunk = self._read(min(size, _CHUNK))
            if not chunk:
                raise self._truncated()
            parts.append(chunk)
            size -= len(chunk)
        return b"".join(parts)

    def _bad(self, what: str) -> VenvoyError:
        after = f" after member {self.previous!r}" if self.previous else " at its start"
        return VenvoyError(f"{self.where}: {what}{after}", _DAMAGED)

    def next(self) -> _Entry | None:
        """The next entry, or None at the end-of-archive marker."""
        while self.remaining:
            self.read(_CHUNK)
        if self.current is not None:
            self.previous = self.current.name
        self.current = None
        pending: dict[str, str] = {}
        while True:
            block = self._exact(_BLOCK)
            if block == _ZERO_BLOCK:
                if self._exact(_BLOCK) != _ZERO_BLOCK:
                    raise self._bad("damaged tar stream (a lone zero block)")
                return None
            name, kind, size, linkname = self._header(block)
            if kind in (b"x", b"g"):
                if size > MAX_PAX:
                    raise self._bad(f"a pax header of {size} bytes (more than {MAX_PAX})")
                data = self._exact(size + (-size) % _BLOCK)[:size]
                if kind == b"x":
                    pending.update(self._pax(data))
                continue
            if kind in (b"L", b"K"):
                if size > MAX_LONGNAME:
                    raise self._bad(f"a long-name record of {size} bytes")
                data = self._exact(size + (-size) % _BLOCK)[:size]
                value = self._text(data.split(b"\0", 1)[0])
                pending["path" if kind == b"L" else "linkpath"] = value
                continue
            name = pending.get("path", name)
            linkname = pending.get("linkpath", linkname)
            if "size" in pending:
                if not pending["size"].isdigit():
                    raise self._bad(f"a bad size {pending['size']!r} in a pax header")
                size = int(pending["size"])
            entry = _Entry(name, kind, size, linkname)
            self.current = entry
            self.remaining = 0 if kind in _NO_DATA else size
            self.padding = (-self.remaining) % _BLOCK
            return entry

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of the current entry's data; b"" at its end."""
        if self.remaining <= 0:
            return b""
        chunk = self._read(min(size, self.remaining))
        if not chunk:
            raise self._truncated()
        self.remaining -= len(chunk)
        if self.remaining == 0 and self.padding:
            self._exact(self.padding)
            self.padding = 0
        return chunk

    def finish(self, max_trailing: int = MAX_TRAILING) -> None:
        """After the end marker: only zero padding may follow, and not much of it."""
        seen = 0
        while True:
            chunk = self._read(_CHUNK)
            if not chunk:
                return
            seen += len(chunk)
            if chunk.count(0) != len(chunk) or seen > max_trailing:
                raise VenvoyError(f"{self.where}: unexpected data after the end of the archive",
                                  _DAMAGED)

    def _text(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self._bad(f"a member name that is not UTF-8 ({raw[:80]!r})") from None

    def _number(self, raw: bytes, what: str) -> int:
        if raw[:1] and raw[0] & 0x80:  # GNU base-256
            if raw[0] != 0x80:
                raise self._bad(f"a negative or oversized {what} in a tar header")
            return int.from_bytes(raw[1:], "big")
        text = raw.split(b"\0", 1)[0].strip(b" ")
        if not text:
            return 0
        if any(c not in b"01234567" for c in text):
            raise self._bad(f"a damaged tar header (bad {what} {text[:20]!r})")
        return int(text, 8)

    def _header(self, block: bytes) -> tuple[str, bytes, int, str]:
        stored = self._number(block[148:156], "checksum")
        unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
        signed = (sum(b - 256 if b > 127 else b for b in block[:148]) + 8 * 32
                  + sum(b - 256 if b > 127 else b for b in block[156:]))
        if stored not in (unsigned, signed):
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
        return name, block[156:157], self._number(block[124:136], "size"), linkname

    def _pax(self, data: bytes) -> dict[str, str]:
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
            if key in (b"path", b"linkpath", b"size"):
                out[key.decode()] = self._text(value)
            pos += length
        return out


def _refuse_kind(entry: _Entry, where: str) -> None:
    """Only regular files, under safe relative names."""
    name = entry.name
    if name.startswith("/"):
        raise VenvoyError(f"{where}: member {name!r} has an absolute path", _DAMAGED)
    parts = name.split("/")
    if ".." in parts:
        raise VenvoyError(f"{where}: member {name!r} contains '..' (path traversal)", _DAMAGED)
    if "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise VenvoyError(f"{where}: member {name!r} has characters not allowed in a name",
                          _DAMAGED)
    if entry.type not in _REGULAR:
        word = _TYPE_WORDS.get(entry.type, f"of tar type {entry.type!r}")
        target = f" to {entry.linkname!r}" if entry.type in (b"1", b"2") else ""
        raise VenvoyError(f"{where}: member {name!r} is {word}{target}; only regular files are "
                          "allowed", _DAMAGED)


def _loads(raw: bytes, what: str) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN or Infinity."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not allowed")

    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=pairs, parse_constant=constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise VenvoyError(f"{what} is not valid JSON: {str(exc)[:160]}", _DAMAGED) from None


# -- format sniffing -----------------------------------------------------------------------

def sniff_format(path: Path) -> str:
    """``"archive"``, ``"wheelhouse"`` or ``"unknown"``, from the file's content, never its name.

    The compression is recognised by its magic bytes (zstd, gzip, xz, bzip2 or
    none), then the first tar members are read (within small bounds) until a
    ``manifest.json`` is found, whose ``format`` field decides.
    """
    errors: tuple[type[BaseException], ...] = (VenvoyError, ValueError, LookupError,
                                               *_stream_errors())
    try:
        with open(path, "rb") as fh:
            kind = _compression_of(fh.read(_BLOCK))
            with _sniff_stream(fh, Path(path), kind) as read:
                return _sniff_tar(read, str(path))
    except errors:
        return "unknown"


@contextlib.contextmanager
def _sniff_stream(fh: IO[bytes], path: Path, kind: str) -> Iterator[Callable[[int], bytes]]:
    fh.seek(0)
    if kind == "xz":
        import lzma

        with lzma.LZMAFile(fh) as xz:
            yield xz.read
    elif kind == "bzip2":
        import bz2

        with bz2.BZ2File(fh) as bz:
            yield bz.read
    elif kind in ("zstd", "gzip", "none"):
        with _decompressing(fh, path, kind, check=False) as stream:
            yield stream.read
    else:
        raise VenvoyError(f"{path}: unknown file type")


def _sniff_tar(read: Callable[[int], bytes], where: str) -> str:
    reader = _TarReader(read, where)
    budget = 64 << 20  # decompressed bytes skipped while looking for the manifest
    for _ in range(64):
        entry = reader.next()
        if entry is None:
            return "unknown"
        if entry.name.rsplit("/", 1)[-1] == "manifest.json" and entry.type in _REGULAR:
            if entry.size > MAX_MANIFEST:
                return "unknown"
            data = _loads(_read_all(reader, entry.size), "manifest.json")
            fmt = data.get("format") if isinstance(data, dict) else None
            return {FORMAT: "archive", WHEELHOUSE_FORMAT: "wheelhouse"}.get(str(fmt), "unknown")
        budget -= entry.size
        if budget < 0:
            return "unknown"
    return "unknown"


def _read_all(reader: _TarReader, size: int) -> bytes:
    parts = []
    while chunk := reader.read(_CHUNK):
        parts.append(chunk)
    data = b"".join(parts)
    if len(data) != size:
        raise reader._truncated()
    return data


# -- export --------------------------------------------------------------------------------

def _host() -> str:
    return "".join(c if c.isalnum() or c in "._" else "_" for c in socket.gethostname())[:64] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(tag: str, mtime: float) -> bool:
    """Whether a temporary tagged ``HOST-PID-RANDOM`` belongs to no running venvoy:
    its process is gone (same host), or it is older than a day (another host)."""
    parts = tag.rsplit("-", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[0] == _host():
        return not _alive(int(parts[1]))
    return time.time() - mtime > STALE_S


def _clean_stale_parts(directory: Path, final_name: str) -> None:
    prefix = f".{final_name}."
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if entry.name.startswith(prefix) and entry.name.endswith(".part"):
                tag = entry.name[len(prefix):-len(".part")]
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False) and _stale(tag, entry.stat().st_mtime):
                        os.unlink(entry.path)


def _clean_stale_imports(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        for entry in os.scandir(tmp):
            if entry.name.startswith("import-") and entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    if _stale(entry.name[len("import-"):], entry.stat().st_mtime):
                        shutil.rmtree(entry.path, ignore_errors=True)


def _redacted(value: Any) -> Any:
    """The record with credentials in URLs (``https://user:token@host``) replaced by ``***``."""
    if isinstance(value, str):
        return _USERINFO.sub(r"\g<scheme>***@", value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def _choose_compression(compression: str | None, output: Path | None) -> str:
    if compression is None and output is not None and not output.is_dir():
        if output.name.endswith((".gz", ".tgz")):
            compression = "gzip"
        elif output.name.endswith((".zst", ".tzst")):
            compression = "zstd"
    if compression is None:
        compression = "zstd" if zstd_available() else "gzip"
    if compression not in SUFFIXES:
        raise BadRequest(f"unknown compression {compression!r}", "use zstd or gzip")
    if compression == "zstd" and not zstd_available():
        raise _no_zstd()
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
    while chunk := fh.read(_CHUNK):
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
{env.data.get("packages", "?")} packages, linux/{architecture}), exported by venvoy {__version__}.
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


class _TarWriter:
    """Regular files only, GNU headers (sizes past 8 GiB in base-256), a fixed order."""

    def __init__(self, write: Callable[[bytes], object], mtime: int) -> None:
        self.write = write
        self.mtime = mtime

    def add(self, name: str, member: _Member) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = member.size, 0o644, self.mtime
        info.uname = info.gname = ""
        self.write(info.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="strict"))
        if member.data is not None:
            self.write(member.data)
            written = len(member.data)
        else:
            assert member.file is not None
            written = 0
            while chunk := member.file.read(_CHUNK):
                self.write(chunk)
                written += len(chunk)
        if written != member.size:
            raise VenvoyError(f"{name} changed while it was being exported "
                              f"({written} bytes, {member.size} expected)", "export again")
        if member.size % _BLOCK:
            self.write(bytes(_BLOCK - member.size % _BLOCK))

    def close(self) -> None:
        self.write(bytes(2 * _BLOCK))


def export_archive(env: Environment, output: Path | None = None, *, with_sif: bool = False,
                   progress: Callable[[str], None] | None = None,
                   compression: str | None = None) -> Path:
    """Write ``env`` as one archive file; returns its path.

    Default output: ``./<name>-<lock_hash[:12]>.venvoy.tar.<zst|gz>`` in the
    working directory; an existing directory as ``output`` gets that name inside
    it. ``compression`` is ``"zstd"`` (the default when the ``zstandard``
    package or the ``zstd`` program is there) or ``"gzip"`` (also chosen by an
    output name ending in ``.gz``). An existing file at ``output`` is replaced,
    atomically. ``with_sif`` includes the SIF, making it with Apptainer if the
    store has none.
    """
    from venvoy.build.lock import lock_hash
    from venvoy.image.oci import host_architecture, inspect_archive

    say = progress or _noop
    store = env.store
    start = time.monotonic()
    output = Path(output) if output is not None else None
    compression = _choose_compression(compression, output)
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

    try:
        lock_bytes = (env.dir / "pylock.toml").read_bytes()
        lock_ok = lock_hash(lock_bytes.decode("utf-8")) == env.lock_hash
    except (OSError, UnicodeDecodeError):
        lock_ok = False
    if not lock_ok:
        raise VenvoyError(f"the lock of {env.name} is missing or does not match its lock hash",
                          f"rebuild it with `venvoy init {env.name} --force`")
    image_path = env.archive
    if not image_path.is_file():
        raise VenvoyError(f"the image of {env.name} is missing from the store ({image_path})",
                          f"rebuild it with `venvoy init {env.name} --force`")
    info = inspect_archive(image_path)
    if info.image_id != env.image_id:
        raise VenvoyError(f"the store's image for {env.name} is not the one it was built with",
                          f"rebuild it with `venvoy init {env.name} --force`")
    architecture = str(info.config.get("architecture") or host_architecture())
    sif_path: Path | None = store.sif(env.image_id)
    if sif_path is not None and not sif_path.is_file():
        sif_path = None
    if with_sif and sif_path is None:
        from venvoy.runtime.detect import get_runtime
        from venvoy.store.forms import ensure_native

        say("making the SIF with Apptainer")
        made = ensure_native(store, get_runtime("apptainer", store.environ), image_path,
                             env.image_id, env.tag, say)
        sif_path = Path(made)
    include_sif = sif_path is not None

    root = f"{env.name}-{env.lock_hash[:12]}"
    record = _redacted(env.as_dict())
    with contextlib.ExitStack() as stack:
        image_fh = stack.enter_context(open(image_path, "rb"))
        say(f"hashing image.tar ({_mib(os.fstat(image_fh.fileno()).st_size)})")
        members = [
            _bytes_member("README.txt", _readme(env, root, final.name, architecture, include_sif,
                                                compression)),
            _bytes_member("env.json", (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()),
            _bytes_member("pylock.toml", lock_bytes),
            _file_member("image.tar", image_fh),
        ]
        if sif_path is not None:
            sif_fh = stack.enter_context(open(sif_path, "rb"))
            say(f"hashing image.sif ({_mib(os.fstat(sif_fh.fileno()).st_size)})")
            members.append(_file_member("image.sif", sif_fh))
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "venvoy_version": __version__,
            "created": _now(), "architecture": architecture, "root": root,
            "environment": record, "lock_sha256": env.lock_hash, "image_id": env.image_id,
            "members": [{"path": m.path, "size": m.size, "sha256": m.sha256} for m in members],
        }
        manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        if len(manifest_bytes) > MAX_MANIFEST:
            raise VenvoyError(f"the manifest of {env.name} would be {_mib(len(manifest_bytes))}, "
                              "more than an importer accepts", "its env.json is unusually large")
        _clean_stale_parts(final.parent, final.name)
        tmp = final.with_name(f".{final.name}.{_host()}-{os.getpid()}-{os.urandom(4).hex()}.part")
        say(f"writing {final} ({compression})")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            with open(fd, "wb") as fh:
                with _compressing(compression, fh) as write:
                    tar = _TarWriter(write, int(time.time()))
                    tar.add(f"{root}/manifest.json", _bytes_member("manifest.json", manifest_bytes))
                    for member in members:
                        tar.add(f"{root}/{member.path}", member)
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
    say(f"wrote {final.name} ({_mib(final.stat().st_size)}) in {time.monotonic() - start:.1f} s")
    return final


# -- import --------------------------------------------------------------------------------

def _check_manifest(data: Any, where: str, limit: int) -> dict[str, Any]:
    """The manifest, checked field by field (types, bounds, names)."""

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
    if not _HEX64.fullmatch(data["lock_sha256"]):
        raise bad("has a malformed lock_sha256")
    if not (data["image_id"].startswith("sha256:") and _HEX64.fullmatch(data["image_id"][7:])):
        raise bad(f"has a malformed image_id {data['image_id']!r}")
    if not isinstance(data.get("environment"), dict):
        raise bad("has no environment record")
    members = data.get("members")
    if not isinstance(members, list) or not members or len(members) > len(MEMBERS):
        raise bad("has no valid list of members")
    seen: dict[str, dict[str, Any]] = {}
    total = 0
    for item in members:
        if not isinstance(item, dict) or set(item) != {"path", "size", "sha256"}:
            raise bad("lists a member without exactly path, size and sha256")
        path, size, digest = item["path"], item["size"], item["sha256"]
        if not isinstance(path, str) or path not in MEMBERS:
            raise bad(f"lists an unknown member {str(path)[:80]!r}")
        if path in seen:
            raise bad(f"lists member {path!r} twice")
        if type(size) is not int or size < 0:
            raise bad(f"gives member {path!r} an invalid size")
        if path in SMALL and size > MAX_SMALL:
            raise bad(f"gives member {path!r} a size of {_mib(size)}, more than {_mib(MAX_SMALL)}")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise bad(f"gives member {path!r} a malformed sha256")
        seen[path] = item
        total += size
    for path in REQUIRED:
        if path not in seen:
            raise bad(f"does not list the required member {path!r}")
    if total > limit:
        raise VenvoyError(f"{where} would unpack to {_mib(total)}, more than the limit of "
                          f"{_mib(limit)}",
                          "if you trust it, raise the limit with VENVOY_ARCHIVE_MAX_BYTES")
    return data


def _first_member(reader: _TarReader, where: str, limit: int) -> dict[str, Any]:
    entry = reader.next()
    if entry is None:
        raise VenvoyError(f"{where} is an empty tar archive", _DAMAGED)
    _refuse_kind(entry, where)
    root, _, leaf = entry.name.partition("/")
    if leaf != "manifest.json" or not _ROOT.fullmatch(root):
        raise VenvoyError(f"{where}: the first member is {entry.name!r}, not "
                          "<top directory>/manifest.json", "is it a venvoy archive?")
    if entry.size > MAX_MANIFEST:
        raise VenvoyError(f"{where}: member {entry.name!r} is {entry.size} bytes, more than the "
                          f"{MAX_MANIFEST} a manifest may have", _DAMAGED)
    manifest = _check_manifest(_loads(_read_all(reader, entry.size), f"{where}: {entry.name}"),
                               where, limit)
    if manifest["root"] != root:
        raise VenvoyError(f"{where}: manifest.json names the top directory {manifest['root']!r} "
                          f"but lies in {root!r}", _DAMAGED)
    return manifest


def _extract(reader: _TarReader, manifest: dict[str, Any], work: Path, where: str,
             say: Callable[[str], None]) -> None:
    """Stream every listed member into ``work``, checking names, types, sizes and sha256."""
    root = manifest["root"]
    expected = {m["path"]: m for m in manifest["members"]}
    seen: set[str] = set()
    while (entry := reader.next()) is not None:
        _refuse_kind(entry, where)
        name = entry.name
        rel = name[len(root) + 1:] if name.startswith(f"{root}/") else None
        if rel == "manifest.json" or (rel is not None and rel in seen):
            raise VenvoyError(f"{where}: member {name!r} appears twice", _DAMAGED)
        if rel is None or rel not in expected:
            raise VenvoyError(f"{where}: member {name!r} is not listed in the manifest", _DAMAGED)
        seen.add(rel)
        want = expected[rel]
        if entry.size != want["size"]:
            raise VenvoyError(f"{where}: member {name!r} holds {entry.size} bytes but the manifest "
                              f"says {want['size']}", _DAMAGED)
        if entry.size >= 64 << 20:
            say(f"checking {rel} ({_mib(entry.size)})")
        digest = hashlib.sha256()
        try:
            fd = os.open(work / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            with open(fd, "wb") as out:
                while chunk := reader.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as exc:
            if isinstance(exc, gzip.BadGzipFile):
                raise
            raise VenvoyError(f"cannot write {rel} into {work}: {exc.strerror or exc}",
                              "free some space, or set VENVOY_TMPDIR to a larger directory"
                              ) from None
        if digest.hexdigest() != want["sha256"]:
            raise VenvoyError(f"{where}: member {name!r} does not match its sha256 in the manifest",
                              _DAMAGED)
    missing = sorted(set(expected) - seen)
    if missing:
        raise VenvoyError(f"{where}: member {root}/{missing[0]!s} is listed in the manifest but "
                          "missing from the archive", _DAMAGED)


def _check_environment(manifest: dict[str, Any], work: Path, where: str) -> tuple[EnvRecord, str]:
    def bad(what: str) -> VenvoyError:
        return DamagedError(f"{where}: env.json {what}", _DAMAGED)

    data = _loads((work / "env.json").read_bytes(), f"{where}: env.json")
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


def _check_image(image_tar: Path, manifest: dict[str, Any], env: EnvRecord, where: str) -> None:
    """The image is what its ID says: config sha256 = image ID, each layer's sha256 = its diff_id.

    Read with the same strict reader (only regular files, bounded headers),
    since it came from the archive; then :func:`venvoy.image.inspect_archive`
    must agree.
    """
    from venvoy.image.oci import inspect_archive

    label = f"{where}: image.tar"

    def bad(what: str) -> VenvoyError:
        return VenvoyError(f"{label} {what}", _DAMAGED)

    hashes: dict[str, str] = {}
    small: dict[str, bytes] = {}
    kept = 0
    with open(image_tar, "rb") as fh:
        reader = _TarReader(fh.read, label)
        while (entry := reader.next()) is not None:
            _refuse_kind(entry, label)
            name = entry.name.removeprefix("./")
            if name in hashes:
                raise bad(f"holds member {name!r} twice")
            keep = name.endswith(".json") and entry.size <= MAX_SMALL and kept < 2 * MAX_SMALL
            digest = hashlib.sha256()
            parts = []
            while chunk := reader.read(_CHUNK):
                digest.update(chunk)
                if keep:
                    parts.append(chunk)
            hashes[name] = digest.hexdigest()
            if keep:
                small[name] = b"".join(parts)
                kept += entry.size
        reader.finish()
    if "manifest.json" not in small:
        raise bad("has no manifest.json: it is not a Docker archive")
    index = _loads(small["manifest.json"], f"{label}: manifest.json")
    if not (isinstance(index, list) and len(index) == 1 and isinstance(index[0], dict)
            and isinstance(index[0].get("Config"), str) and isinstance(index[0].get("Layers"), list)
            and all(isinstance(x, str) for x in index[0]["Layers"])):
        raise bad("has a manifest.json that does not describe exactly one image")
    config_name = index[0]["Config"].removeprefix("./")
    layers = [x.removeprefix("./") for x in index[0]["Layers"]]
    if config_name not in small:
        raise bad(f"has no config {config_name!r}")
    if f"sha256:{hashes[config_name]}" != manifest["image_id"]:
        raise bad(f"is image sha256:{hashes[config_name]}, not {manifest['image_id']} as the "
                  "manifest says")
    config = _loads(small[config_name], f"{label}: {config_name}")
    if not isinstance(config, dict):
        raise bad(f"has a config {config_name!r} that is not a JSON object")
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        raise bad("has a config whose diff_ids do not match its layers")
    for layer, diff_id in zip(layers, diff_ids, strict=True):
        if layer not in hashes:
            raise bad(f"lacks layer {layer!r}")
        if f"sha256:{hashes[layer]}" != diff_id:
            raise bad(f"layer {layer!r} does not match its diff_id {str(diff_id)[:80]}")
    extra = sorted(set(hashes) - {"manifest.json", config_name, *layers})
    if extra:
        raise bad(f"holds member {extra[0]!r} that is no part of the image")
    if config.get("architecture", manifest["architecture"]) != manifest["architecture"]:
        raise bad(f"is for {config.get('architecture')!s}, not {manifest['architecture']} as the "
                  "manifest says")
    inner = config.get("config")
    labels = inner.get("Labels") if isinstance(inner, dict) else None
    if isinstance(labels, dict):
        for key, value in (("org.venvoy.identity", env.identity),
                           ("org.venvoy.lock-hash", env.lock_hash)):
            if key in labels and labels[key] != value:
                raise bad(f"has label {key}={str(labels[key])[:80]}, not the environment's {value}")
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
        _clean_stale_imports(tmp_root)
        work = Path(tempfile.mkdtemp(prefix=f"import-{_host()}-{os.getpid()}-", dir=tmp_root))
        try:
            manifest, target = _unpack(fh, path, work, store, name, force, limit, say)
            data, lock_text = _check_environment(manifest, work, str(path))
            say("checking the image against its digests")
            _check_image(work / "image.tar", manifest, data, str(path))
            has_sif = (work / "image.sif").is_file()
            if has_sif:
                _check_sif(work / "image.sif", str(path))
            from venvoy.image.oci import host_architecture

            if manifest["architecture"] != host_architecture():
                say(f"note: the image is for {manifest['architecture']} and this machine is "
                    f"{host_architecture()}: it runs here only with emulation")
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
    kind = _compression_of(fh.read(_BLOCK))
    if kind not in ("zstd", "gzip", "none"):
        what = f"compressed with {kind}" if kind != "unknown" else "not a compressed tar"
        raise VenvoyError(f"{path} is not a venvoy archive ({what}; venvoy archives are tar "
                          "compressed with zstd or gzip)",
                          "check the file; `venvoy export --format archive` writes them")
    try:
        with _decompressing(fh, path, kind) as stream:
            reader = _TarReader(stream.read, where, _stream_errors())
            manifest = _first_member(reader, where, limit)
            target = name or manifest["environment"].get("name")
            if not isinstance(target, str):
                raise VenvoyError(f"{where}: the environment record has no name", _DAMAGED)
            check_name(target)
            existing = find(store, target)
            if existing is not None and not force and not _same(existing, manifest):
                raise _exists(target)
            total = sum(m["size"] for m in manifest["members"])
            free = shutil.disk_usage(work).free
            if free < total + (64 << 20):
                raise VenvoyError(f"not enough space in {work.parent} to import {path.name}: "
                                  f"{_mib(total)} needed, {_mib(free)} free",
                                  "free some space, or set VENVOY_TMPDIR to a larger directory")
            _extract(reader, manifest, work, where, say)
            reader.finish()
            stream.finish()
    except _decode_errors() as exc:
        raise VenvoyError(f"{path} is damaged ({type(exc).__name__}: {str(exc)[:160]})",
                          "the file is truncated or corrupt: copy it again") from None
    return manifest, target


def _same(existing: Environment, manifest: dict[str, Any]) -> bool:
    record = manifest["environment"]
    return (existing.identity == record.get("identity") and existing.image_id == manifest["image_id"]
            and existing.lock_hash == manifest["lock_sha256"] and existing.archive.is_file())


def _exists(name: str) -> VenvoyError:
    return VenvoyError(f"an environment named {name!r} already exists",
                       "import with --name NEW to keep both, or --force to replace it")


def _publish(store: Store, work: Path, record: EnvRecord, lock_text: str, force: bool,
             has_sif: bool, say: Callable[[str], None]) -> Environment:
    """Everything checked: the image (and SIF) first, then the environment, by renames."""
    name = record.name
    image_id = record.image_id
    with store.lock(f"env-{name}"):
        previous = find(store, name)
        if previous is not None and not force:
            if previous.identity == record.identity and previous.image_id == image_id \
                    and previous.archive.is_file():
                say(f"{name} is already here, identical")
                return previous
            raise _exists(name)
        placed: list[Path] = []
        try:
            image_dest = store.image_archive(image_id)
            if not image_dest.is_file():
                _place(store, work / "image.tar", image_dest)
                placed.append(image_dest)
            sif_dest = store.sif(image_id)
            if has_sif and not sif_dest.is_file():
                # The SIF cannot be checked against the image: it is kept only where
                # none exists yet, and made from image.tar again by `venvoy` if removed.
                _place(store, work / "image.sif", sif_dest)
                placed.append(sif_dest)
            env = write_env(store, record, lock_text)
        except BaseException:
            for dest in placed:
                if not image_in_use(store, image_id):
                    dest.unlink(missing_ok=True)
            raise
        if previous is not None and previous.image_id != image_id:
            drop_image_if_unused(store, previous.image_id)
        return env


__all__ = ["FORMAT", "FORMAT_VERSION", "export_archive", "import_archive", "max_bytes_default",
           "sniff_format", "zstd_available"]
