"""Compression of the tars venvoy writes and reads: zstd (the ``zstandard`` module) and gzip.

Reading also recognises xz and bzip2 (a wheelhouse may have been recompressed
by hand) and plain tar. The kind of a file is told by its magic bytes, never
its name. Every stream here is read in bounded chunks by
:class:`venvoy.image.tarsafe.TarReader`.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import zlib
from collections.abc import Callable, Iterator
from typing import IO, cast

from venvoy.core.errors import VenvoyError

ZSTD_LEVEL = 3
GZIP_LEVEL = 6
#: What :func:`kind_of` may answer.
KINDS = ("zstd", "gzip", "xz", "bzip2", "none", "unknown")

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"
#: How many bytes :func:`kind_of` needs (a plain tar's magic is at offset 257).
HEAD = 512


def kind_of(head: bytes) -> str:
    """``zstd``, ``gzip``, ``xz``, ``bzip2``, ``none`` (a plain tar) or ``unknown``,
    from a file's first :data:`HEAD` bytes."""
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


@contextlib.contextmanager
def compressing(kind: str, fh: IO[bytes]) -> Iterator[Callable[[bytes], object]]:
    """A ``write`` that compresses into ``fh``; the stream is complete when the block ends."""
    if kind == "gzip":
        with gzip.GzipFile(filename="", fileobj=fh, mode="wb", compresslevel=GZIP_LEVEL) as gz:
            yield gz.write
        return
    if kind != "zstd":
        raise VenvoyError(f"unknown compression {kind!r}", "use zstd or gzip")
    import zstandard

    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1, write_checksum=True)
    with cctx.stream_writer(fh, closefd=False) as writer:
        yield writer.write


def check_zstd_frames(fh: IO[bytes], where: str) -> None:
    """Walk the zstd frame and block headers (no decompression).

    The ``zstandard`` module's stream reader ends quietly where a file was cut
    short; walking the structure first makes a truncated or padded file an
    error. Skippable frames are refused: venvoy never writes them.
    """
    size = os.fstat(fh.fileno()).st_size
    pos = frames = 0

    def damaged(what: str) -> VenvoyError:
        return VenvoyError(f"{where} is not a complete zstd stream ({what} at byte {pos})",
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
            block_kind, block_size = (value >> 1) & 3, value >> 3
            if block_kind == 3:
                raise damaged("reserved block type")
            pos += 3 + (1 if block_kind == 1 else block_size)
            if pos > size:
                raise damaged("cut-off block")
            if value & 1:
                break
        pos += 4 if fhd & 0x04 else 0
        if pos > size:
            raise damaged("cut-off checksum")
        frames += 1


def _nothing() -> None:
    return None


class Stream:
    """A decompressed stream: ``read(n)`` and, once all was read, ``finish()``, which
    checks that the compressed data was complete."""

    def __init__(self, read: Callable[[int], bytes], finish: Callable[[], None] = _nothing) -> None:
        self.read = read
        self.finish = finish


@contextlib.contextmanager
def decompressing(fh: IO[bytes], where: str, kind: str, *, check: bool = True,
                  allowed: tuple[str, ...] = ("zstd", "gzip", "none")) -> Iterator[Stream]:
    """``fh`` decompressed from its start, for ``kind`` (see :func:`kind_of`) among ``allowed``.

    The stream's ``finish`` checks a zstd file's frame structure when ``check``.
    """
    fh.seek(0)
    if kind not in allowed:
        what = f"compressed with {kind}" if kind != "unknown" else "not a tar file"
        raise VenvoyError(f"{where} is {what}; {' or '.join(k for k in allowed if k != 'none')} "
                          "compressed tar is expected",
                          "check the file: venvoy reads what `venvoy export` writes")
    if kind == "none":
        yield Stream(fh.read)
    elif kind == "gzip":
        with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
            yield Stream(gz.read)
    elif kind == "xz":
        import lzma

        with lzma.LZMAFile(fh) as xz:
            yield Stream(xz.read)
    elif kind == "bzip2":
        import bz2

        with bz2.BZ2File(fh) as bz:
            yield Stream(bz.read)
    elif kind == "zstd":
        import zstandard

        dctx = zstandard.ZstdDecompressor()
        with dctx.stream_reader(fh, read_across_frames=True, closefd=False) as reader:
            yield Stream(reader.read, (lambda: check_zstd_frames(fh, where)) if check else _nothing)
    else:
        raise VenvoyError(f"{where}: unknown compression {kind!r}")


def decompressed(fh: IO[bytes]) -> IO[bytes]:
    """``fh`` itself when it is not compressed (a plain tar, or what :func:`kind_of`
    does not know: the tar reader then says what is wrong), else a stream that
    decompresses it from its start: gzip, zstd (the ``zstandard`` module, on every
    Python), xz or bzip2. The one place that knows image layer compressions."""
    head = fh.read(HEAD)
    fh.seek(0)
    kind = kind_of(head)
    if kind == "gzip":
        return cast(IO[bytes], gzip.GzipFile(fileobj=fh, mode="rb"))
    if kind == "zstd":
        import zstandard

        return cast(IO[bytes], zstandard.ZstdDecompressor().stream_reader(
            fh, read_across_frames=True, closefd=False))
    if kind == "xz":
        import lzma

        return cast(IO[bytes], lzma.LZMAFile(fh, mode="rb"))
    if kind == "bzip2":
        import bz2

        return cast(IO[bytes], bz2.BZ2File(fh, mode="rb"))
    return fh


def decode_errors() -> tuple[type[BaseException], ...]:
    """What the decompressors raise on bad input."""
    import lzma

    import zstandard

    return (EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError, zstandard.ZstdError)


def stream_errors() -> tuple[type[BaseException], ...]:
    """What reading a compressed file may raise: bad input, or the file itself unreadable."""
    return (*decode_errors(), OSError)


__all__ = ["GZIP_LEVEL", "HEAD", "KINDS", "ZSTD_LEVEL", "Stream", "check_zstd_frames",
           "compressing", "decode_errors", "decompressed", "decompressing", "kind_of", "stream_errors"]
