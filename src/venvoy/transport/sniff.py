"""What kind of file ``venvoy import`` was given, from its content, never its name."""

from __future__ import annotations

from pathlib import Path

from venvoy.core.errors import VenvoyError
from venvoy.image import compress
from venvoy.image.tarsafe import MAX_MANIFEST, TarReader, loads

ARCHIVE_FORMAT = "venvoy-archive"
WHEELHOUSE_FORMAT = "venvoy-wheelhouse"
#: manifest "format" -> what :func:`sniff_format` answers.
KINDS = {ARCHIVE_FORMAT: "archive", WHEELHOUSE_FORMAT: "wheelhouse"}
#: Decompressed bytes skipped while looking for the manifest, and members looked at.
SNIFF_BUDGET = 64 << 20
SNIFF_MEMBERS = 64


def sniff_format(path: Path) -> str:
    """``"archive"``, ``"wheelhouse"`` or ``"unknown"``, from the file's content, never its name.

    The compression is recognised by its magic bytes (zstd, gzip, xz, bzip2 or
    none), then the first tar members are read with the bounded reader until a
    ``manifest.json`` is found, whose ``format`` field decides.
    """
    errors: tuple[type[BaseException], ...] = (VenvoyError, ValueError, LookupError,
                                               *compress.stream_errors())
    try:
        with open(path, "rb") as fh:
            kind = compress.kind_of(fh.read(compress.HEAD))
            with compress.decompressing(fh, str(path), kind, check=False,
                                        allowed=("zstd", "gzip", "xz", "bzip2", "none")) as stream:
                return _sniff_tar(TarReader(stream.read, str(path)))
    except errors:
        return "unknown"


def _sniff_tar(reader: TarReader) -> str:
    budget = SNIFF_BUDGET
    for _ in range(SNIFF_MEMBERS):
        entry = reader.next()
        if entry is None:
            return "unknown"
        if entry.name.rsplit("/", 1)[-1] == "manifest.json" and entry.is_regular:
            if entry.size > MAX_MANIFEST:
                return "unknown"
            data = loads(reader.read_all(MAX_MANIFEST), "manifest.json")
            fmt = data.get("format") if isinstance(data, dict) else None
            return KINDS.get(str(fmt), "unknown")
        budget -= entry.size
        if budget < 0:
            return "unknown"
    return "unknown"


__all__ = ["ARCHIVE_FORMAT", "KINDS", "WHEELHOUSE_FORMAT", "sniff_format"]
