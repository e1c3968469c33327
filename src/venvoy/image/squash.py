"""An image's layers flattened in one pass into one tar, and that tar into a squashfs.

The canonical image (a Docker archive) becomes a squashfs without unpacking
anything to disk and without root: the layers are read **top-down** (the last
layer first) by the one bounded tar reader, and every entry is written to a
single tar stream unless a layer above already decided that path:

* an entry an upper layer has (at the same path) is dropped: upper wins,
  a directory's attributes included (the lower directory's children stay);
* an upper whiteout (``.wh.NAME``) hides ``NAME`` and everything under it
  in lower layers; an upper opaque marker (``.wh..wh..opq``) hides what lower
  layers have under that directory; an upper non-directory hides anything a
  lower layer has below it; whiteouts never hide their own layer's entries;
* ownership (numeric uid/gid), modes and the layers' own mtimes are kept
  (sqfstar stores what the tar says, root or not); hard links stay hard links;
* device nodes and FIFOs are dropped (Apptainer mounts ``/dev`` from the host);
  ``..`` anywhere refuses the image; names are made relative.

The output is a function of the archive's bytes only (layer order, entry
order), so the squashfs, made with fixed creation and root times, is the same
on every machine. ``sqfstar`` (squashfs-tools >= 4.5) reads the stream on
its standard input and compresses with every core.

Layouts the single pass cannot express (a duplicate non-directory entry in
one layer, a hard link whose target a layer above replaced) raise
:class:`FlattenUnsupported`; the caller then uses the slow, general path.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from venvoy.core.errors import BadRequest, VenvoyError
from venvoy.core.proc import preexec
from venvoy.image.oci import ImageSource, layer_reader, layer_stream, open_archive, read_source
from venvoy.image.tarsafe import BLOCK, CHUNK, TarEntry, TarReader, max_bytes_default, mib

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_HINT = "the image is damaged or hostile; rebuild or re-save it"
#: Compressors a SIF may use, fastest to mount-anywhere; ``auto`` picks by probe.
COMPRESSIONS = ("zstd", "lz4", "gzip", "xz")
#: sqfstar options per compressor. Levels (zstd 3: its default, 15, is 6x
#: slower for a few percent; gzip 6) only where this sqfstar takes ``-X``
#: options: 4.5.1 refuses every one of them (fixed in 4.6).
_COMP_ARGS = {"zstd": ["-comp", "zstd"], "lz4": ["-comp", "lz4"], "gzip": ["-comp", "gzip"],
              "xz": ["-comp", "xz"]}
_LEVEL_ARGS = {"zstd": ["-Xcompression-level", "3"], "gzip": ["-Xcompression-level", "6"]}
_MAX_TIME = (1 << 32) - 1  # squashfs times are unsigned 32-bit seconds
_MAX_OCTAL_ID = 0o7777777
_MAX_OCTAL_SIZE = 0o77777777777


class FlattenUnsupported(VenvoyError):
    """A (legal but unusual) layer layout the one-pass flattening does not handle."""


@dataclass(frozen=True)
class Extra:
    """A member venvoy adds to the flattened image (its own metadata, mount points)."""

    name: str
    kind: bytes  # b"0" file, b"5" directory, b"2" symlink
    data: bytes = b""
    mode: int = 0o644
    linkname: str = ""


def _norm(name: str, what: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise VenvoyError(f"image layer {what} {name[:200]!r} points outside the image", _HINT)
    return "/".join(parts)


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def tar_header(name: str, kind: bytes, *, size: int = 0, mode: int = 0o644, uid: int = 0,
               gid: int = 0, mtime: float = 0, linkname: str = "") -> bytes:
    """One member's header: plain ustar when everything fits (the common case, fast),
    pax records otherwise (long names, big ids or sizes)."""
    mt = min(max(int(mtime), 0), _MAX_TIME)
    raw = name.encode("utf-8", "surrogateescape")
    link = linkname.encode("utf-8", "surrogateescape")
    prefix = b""
    if len(raw) > 100:
        cut = raw.rfind(b"/", 0, 156)
        if cut > 0 and len(raw) - cut - 1 <= 100:
            prefix, raw = raw[:cut], raw[cut + 1:]
    if (len(raw) > 100 or len(link) > 100 or uid > _MAX_OCTAL_ID or gid > _MAX_OCTAL_ID
            or size > _MAX_OCTAL_SIZE or uid < 0 or gid < 0):
        info = tarfile.TarInfo(name)
        info.type, info.size, info.mode, info.mtime = kind, size, mode & 0o7777, mt
        info.uid, info.gid, info.linkname = uid, gid, linkname
        info.uname = info.gname = ""
        return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")
    head = bytearray(BLOCK)
    head[0:len(raw)] = raw
    head[100:108] = _octal(mode & 0o7777, 8)
    head[108:116] = _octal(uid, 8)
    head[116:124] = _octal(gid, 8)
    head[124:136] = _octal(size, 12)
    head[136:148] = _octal(mt, 12)
    head[148:156] = b" " * 8
    head[156:157] = kind
    head[157:157 + len(link)] = link
    head[257:265] = b"ustar\x0000"
    head[345:345 + len(prefix)] = prefix
    head[148:156] = b"%06o\0 " % sum(head)
    return bytes(head)


class Flattener:
    """Writes the union of layers, given top-down, as one tar through ``write``."""

    def __init__(self, write: Callable[[bytes], object], *, reserved: Iterable[str] = (),
                 max_bytes: int | None = None) -> None:
        self.write = write
        self.left = max_bytes_default() if max_bytes is None else max_bytes
        self.emitted: dict[str, tuple[int, bool]] = {}  # path -> (layer number, is a directory)
        self.masked: set[str] = set(reserved)  # hidden from lower layers, with all below
        self.opaque: set[str] = set()  # lower layers' children hidden
        self.layer = 0
        self.files: set[str] = set()  # regular files the current layer wrote
        self.implied: set[str] = set()  # directories that entries written so far are in

    def _hidden(self, path: str) -> bool:
        if path in self.masked or "" in self.opaque:
            return True
        if not self.masked and not self.opaque:
            return False
        cut = path.find("/")
        while cut > 0:
            head = path[:cut]
            if head in self.masked or head in self.opaque:
                return True
            cut = path.find("/", cut + 1)
        return False

    def add_layer(self, layer: TarReader) -> None:
        """One layer, above every lower one still to come."""
        self.layer += 1
        self.files = set()
        masks: set[str] = set()
        opaques: set[str] = set()
        while (member := layer.next()) is not None:
            self._member(layer, member, masks, opaques)
        for path, (number, is_dir) in self.emitted.items():
            if number == self.layer and not is_dir:
                masks.add(path)
        self.masked |= masks
        self.opaque |= opaques

    def _member(self, layer: TarReader, member: TarEntry, masks: set[str],
                opaques: set[str]) -> None:
        path = _norm(member.name, "member")
        if not path:
            return  # the root itself: its attributes are venvoy's
        parent, _, leaf = path.rpartition("/")
        if leaf.startswith(WHITEOUT):
            if leaf == OPAQUE:
                opaques.add(parent)  # "": the whole image, everything lower is hidden
            elif (hidden := leaf[len(WHITEOUT):]) and not hidden.startswith(WHITEOUT):
                masks.add(f"{parent}/{hidden}" if parent else hidden)
            return
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            return  # devices, FIFOs
        before = self.emitted.get(path)
        if before is not None:
            if before[0] == self.layer and not (before[1] and member.isdir()):
                raise FlattenUnsupported(f"layer entry {path!r} appears twice", _HINT)
            return  # an upper layer (or this one, a directory again) decided it
        if self._hidden(path):
            return
        if not member.isdir() and path in self.implied:
            return  # a lower non-directory where an upper layer has a directory's entries
        cut = path.rfind("/")
        while cut > 0 and (head := path[:cut]) not in self.implied:
            if not self.emitted.get(head, (0, True))[1]:  # this layer's file or link
                raise VenvoyError(f"image layer member {path[:200]!r} would be written through "
                                  f"the link or file /{head[:200]}", _HINT)
            self.implied.add(head)
            cut = path.rfind("/", 0, cut)
        self.emitted[path] = (self.layer, member.isdir())
        if member.isdir():
            self.write(tar_header(path, b"5", mode=member.mode, uid=member.uid, gid=member.gid,
                                  mtime=member.mtime))
        elif member.issym():
            self.write(tar_header(path, b"2", mode=member.mode, uid=member.uid, gid=member.gid,
                                  mtime=member.mtime, linkname=member.linkname))
        elif member.islnk():
            target = _norm(member.linkname, "hard link target")
            if target not in self.files:
                raise FlattenUnsupported(f"hard link {path!r} to {target!r}, which this layer "
                                         "does not hold", _HINT)
            self.write(tar_header(path, b"1", mode=member.mode, uid=member.uid, gid=member.gid,
                                  mtime=member.mtime, linkname=target))
        else:
            self._file(layer, member, path)
            self.files.add(path)

    def _file(self, layer: TarReader, member: TarEntry, path: str) -> None:
        self.left -= member.size
        if self.left < 0:
            raise VenvoyError("the image would unpack to more than the limit of "
                              f"{mib(max_bytes_default())}",
                              "if it is really that big, raise VENVOY_ARCHIVE_MAX_BYTES")
        self.write(tar_header(path, b"0", size=member.size, mode=member.mode, uid=member.uid,
                              gid=member.gid, mtime=member.mtime))
        written = 0
        if member.sparse is not None:  # holes written as zeros: the tar is not sparse
            for offset, size in member.sparse:
                if offset > written:
                    self._zeros(offset - written)
                    written = offset
                while size > 0:
                    chunk = layer.read(min(size, CHUNK))
                    if not chunk:
                        raise VenvoyError(f"image layer member {path!r} ends before its data",
                                          _HINT)
                    self.write(chunk)
                    size -= len(chunk)
                    written += len(chunk)
            if member.size > written:
                self._zeros(member.size - written)
                written = member.size
        else:
            while chunk := layer.read(CHUNK):
                self.write(chunk)
                written += len(chunk)
        if written != member.size:
            raise VenvoyError(f"image layer member {path!r} holds {written} bytes, "
                              f"not the {member.size} its header says", _HINT)
        if written % BLOCK:
            self.write(bytes(BLOCK - written % BLOCK))

    def _zeros(self, size: int) -> None:
        while size > 0:
            step = min(size, CHUNK)
            self.write(bytes(step))
            size -= step

    def add_implied(self, mtime: int) -> None:
        """Directories no layer has an entry for, yet entries are in: explicit
        (0755, root, ``mtime``), so that nothing in the output depends on the day."""
        for path in sorted(self.implied - self.emitted.keys()):
            self.emitted[path] = (0, True)
            self.write(tar_header(path, b"5", mode=0o755, mtime=mtime))

    def add_extra(self, extras: Iterable[Extra], mtime: int) -> None:
        """venvoy's own members, after the image's; a mount point is added only
        where the image has nothing (``Extra`` of a directory already there: skipped)."""
        for extra in extras:
            if extra.name in self.emitted:
                continue
            parent = extra.name.rpartition("/")[0]
            if parent and self.emitted.get(parent, (0, True))[1] is False:
                continue  # its parent is a file or a link in the image: leave the image alone
            self.emitted[extra.name] = (0, extra.kind == b"5")
            self.write(tar_header(extra.name, extra.kind, size=len(extra.data), mode=extra.mode,
                                  mtime=mtime, linkname=extra.linkname))
            if extra.data:
                self.write(extra.data)
                if len(extra.data) % BLOCK:
                    self.write(bytes(BLOCK - len(extra.data) % BLOCK))

    def close(self) -> None:
        self.write(bytes(2 * BLOCK))


def flatten(archive: Path, write: Callable[[bytes], object], *,
            extras: Callable[[ImageSource], list[Extra]] | None = None,
            reserved: Iterable[str] = (), mtime: Callable[[ImageSource], int] | None = None,
            ) -> ImageSource:
    """Write the image of ``archive`` as one flattened tar through ``write``;
    ``extras(source)`` are added after it (``reserved`` paths of the image dropped)."""
    with open_archive(Path(archive)) as outer:
        source = read_source(outer, Path(archive))
        flat = Flattener(write, reserved=reserved)
        for name in reversed(source.layers):
            with layer_stream(outer, name, Path(archive)) as raw:
                flat.add_layer(layer_reader(raw, Path(archive), name))
        when = mtime(source) if mtime else 0
        if extras is not None:
            flat.add_extra(extras(source), when)
        flat.add_implied(when)
        flat.close()
    return source


# -- sqfstar ---------------------------------------------------------------------------

def sqfstar_path(environ: dict[str, str] | None = None) -> str | None:
    """The sqfstar program (squashfs-tools >= 4.5), or None."""
    path = (environ or os.environ).get("PATH")
    return shutil.which("sqfstar", path=path)


def check_compression(value: str, where: str = "VENVOY_SIF_COMPRESSION") -> str:
    value = value.strip().lower()
    if value not in ("auto", *COMPRESSIONS):
        raise BadRequest(f"{where}={value!r} is not a squashfs compression venvoy knows",
                         "use auto, zstd, lz4, gzip or xz (or apptainer: `apptainer build` "
                         "makes the SIFs)")
    return value


def compressors(sqfstar: str) -> frozenset[str]:
    """The compressors this sqfstar was built with (from its help text)."""
    try:
        out = subprocess.run([sqfstar, "-help"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    text = out.stdout + out.stderr
    section = text.split("Compressors available:", 1)[-1].split("-b <block_size>", 1)[0]
    return frozenset(c for c in COMPRESSIONS if c in section.split())


@functools.lru_cache(maxsize=8)
def takes_levels(sqfstar: str) -> bool:
    """Whether this sqfstar accepts compressor options (``-Xcompression-level``):
    one tiny file system made from an empty tar (milliseconds), once per process."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="venvoy-sqfstar-") as tmp:
        # The empty tar comes from a file, not a pipe: an sqfstar that refuses
        # the option exits without reading it (no write to a closed pipe).
        empty = os.path.join(tmp, "empty.tar")
        with open(empty, "wb") as fh:
            fh.write(bytes(2 * BLOCK))
        try:
            with open(empty, "rb") as stdin:
                proc = subprocess.run([sqfstar, "-comp", "zstd", "-Xcompression-level", "3",
                                       "-quiet", "-no-progress", "-processors", "1",
                                       os.path.join(tmp, "probe.sqfs")],
                                      stdin=stdin, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
    return proc.returncode == 0


def make_squashfs(sqfstar: str, out: Path, feed: Callable[[Callable[[bytes], object]], object],
                  *, compression: str, fixed_time: int, offset: int = 0,
                  env: dict[str, str] | None = None) -> None:
    """Run sqfstar writing ``out`` (from ``offset``), ``feed(write)`` supplying the tar."""
    levels = _LEVEL_ARGS.get(compression, []) if takes_levels(sqfstar) else []
    # SOURCE_DATE_EPOCH dates the file system and its root directory (4.5.1's
    # -root-time is ignored by sqfstar); the files keep the layers' times.
    run_env = dict(os.environ if env is None else env,
                   SOURCE_DATE_EPOCH=str(min(max(fixed_time, 0), _MAX_TIME)))
    argv = [sqfstar, *_COMP_ARGS[compression], *levels, "-reproducible",
            "-root-mode", "0755", "-root-uid", "0", "-root-gid", "0", "-no-xattrs",
            "-processors", str(max(os.cpu_count() or 1, 1)), "-quiet", "-no-progress", "-force"]
    if offset:
        argv += ["-offset", str(offset)]
    argv.append(str(out))
    import tempfile

    with tempfile.TemporaryFile() as log:  # a file, not a pipe: sqfstar never blocks on it
        # sqfstar dies with venvoy (kill -9 included): the scratch directory its
        # partial SIF is in is removed by the next conversion.
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                env=run_env, preexec_fn=preexec(signal.SIGTERM))
        assert proc.stdin is not None
        fed_error: BaseException | None = None
        try:
            feed(proc.stdin.write)
        except BrokenPipeError:
            pass  # sqfstar stopped: its own message says why
        except BaseException as exc:
            fed_error = exc
            proc.kill()
        finally:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        code = proc.wait()
        if fed_error is not None:
            raise fed_error
        log.seek(0)
        output = log.read(64 << 10).decode("utf-8", "replace")
    if code != 0:
        last = " ".join(output.split())[-400:] or f"exit code {code}"
        raise VenvoyError(f"sqfstar failed making {out.name}: {last}",
                          "check free space where the SIF is made, or set "
                          "VENVOY_SIF_COMPRESSION=gzip")


__all__ = ["COMPRESSIONS", "Extra", "FlattenUnsupported", "Flattener", "check_compression",
           "compressors", "flatten", "make_squashfs", "sqfstar_path", "tar_header"]
