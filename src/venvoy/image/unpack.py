"""Unpacking a Docker or OCI image archive into a directory, for Charliecloud's ``ch-run``.

One Docker/OCI archive feeds every runtime, even on a cluster with no Docker,
no registry and no root. The archive is read by :mod:`venvoy.image.oci` (the
one reader, the one platform rule); this module applies its layers.

Layers are hostile input (an image from a registry, an archive from a
collaborator, unpacked by root too), so the unpacker never writes, chmods,
chowns or dates anything through a symlink:

* every parent directory of a member is checked with ``lstat`` (a link or a
  file there refuses the archive); a member that replaces a link (a directory
  entry ``v`` over a symlink ``v``) removes the link first, never follows it;
  files are created with ``O_EXCL | O_NOFOLLOW`` and their attributes set
  through the open descriptor, links' with ``follow_symlinks=False``;
* ``..`` anywhere refuses the archive; a leading ``/`` is dropped (GNU tar's
  rule), so every name lands inside the destination;
* whiteouts and opaque markers delete only inside the destination and never
  through a link, and hide only what lower layers put there;
* hard links only to files already inside the destination, reached without a
  link; device nodes and FIFOs are skipped (ch-run gets ``/dev`` from the host);
  set-id bits and group/other write bits are dropped, the owner always gets
  ``rw`` (``rwx`` on directories) so later layers apply unprivileged;
  ownership is kept only when unpacking as root;
* layers are read by the one bounded tar reader
  (:class:`venvoy.image.tarsafe.TarReader`: pax and long-name headers bounded),
  and the size the image unpacks to is bounded too (``VENVOY_ARCHIVE_MAX_BYTES``, sparse files
  counted at their full size, though their holes take no space).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from venvoy.core.errors import BadRequest, VenvoyError
from venvoy.core.fs import new_path
from venvoy.image.oci import decompress_errors, layer_reader, layer_stream, open_archive, read_source
from venvoy.image.tarsafe import CHUNK, TarEntry, TarReader, max_bytes_default, mib

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_HINT = "the image is damaged or hostile; rebuild or re-save it"
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_ID_MAX = (1 << 32) - 2  # (uid_t)-1 means "leave unchanged"
#: The deepest path a layer may hold (real images: a few dozen levels); deeper
#: trees could not even be removed again without exhausting Python's stack.
MAX_DEPTH = 256


@dataclass
class ImageArchive:
    """The layers (in order) and the config of the image unpacked from an archive."""

    layers: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    repo_tags: list[str] = field(default_factory=list)

    @property
    def env(self) -> list[str]:
        inner = self.config.get("config")
        env = inner.get("Env") if isinstance(inner, dict) else None
        return [e for e in env if isinstance(e, str)] if isinstance(env, list) else []


def _parts(name: str, what: str) -> list[str]:
    """The components of a member name, inside the image; ``..`` refuses."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise VenvoyError(f"image layer {what} {name[:200]!r} points outside the image", _HINT)
    if len(parts) > MAX_DEPTH:
        raise VenvoyError(f"image layer {what} {name[:80]!r}... is more than {MAX_DEPTH} "
                          "directories deep", _HINT)
    return parts


class LayerWriter:
    """Applies layers, in order, to the directory ``root`` (which it alone writes)."""

    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.root = os.fspath(root)
        self.left = max_bytes_default() if max_bytes is None else max_bytes
        self.as_root = os.geteuid() == 0
        self.dirs: set[str] = {""}  # relative paths known to be real directories
        self.dir_times: dict[str, float] = {}
        self.written: set[str] = set()  # what the current layer put there

    # -- paths ------------------------------------------------------------------------

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def _parent(self, parts: list[str], name: str, *, create: bool) -> str | None:
        """The relative path of the member's parent, a real directory reached
        without any link; missing ones are made (``create``) or None is returned.
        A link or file on the way refuses (``create``) or returns None."""
        rel = ""
        for part in parts[:-1]:
            rel = f"{rel}/{part}" if rel else part
            if rel in self.dirs:
                continue
            path = self._path(rel)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if not create:
                    return None
                os.mkdir(path, 0o755)
                self.dirs.add(rel)
                continue
            if stat.S_ISDIR(st.st_mode):
                self.dirs.add(rel)
                continue
            if not create:
                return None
            kind = "symlink" if stat.S_ISLNK(st.st_mode) else "file"
            raise VenvoyError(f"image layer member {name!r} would be written through the {kind} "
                              f"/{rel}", _HINT)
        return rel

    def _remove(self, rel: str, st: os.stat_result) -> None:
        """Remove what is at ``rel`` (never following a link)."""
        path = self._path(rel)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)  # fd-based: does not follow links inside
            prefix = rel + "/"
            self.dirs = {d for d in self.dirs if d != rel and not d.startswith(prefix)}
        else:
            os.unlink(path)

    # -- attributes ---------------------------------------------------------------------

    def _own(self, fd: int, member: TarEntry) -> None:
        if self.as_root and 0 <= member.uid <= _ID_MAX and 0 <= member.gid <= _ID_MAX:
            os.fchown(fd, member.uid, member.gid)

    @staticmethod
    def _date(target: int | str, mtime: float, *, follow: bool = True) -> None:
        # a date the file system cannot hold: keep the current one
        with contextlib.suppress(OverflowError, ValueError, OSError):
            os.utime(target, (mtime, mtime), follow_symlinks=follow)

    # -- members ------------------------------------------------------------------------

    def apply(self, layer: TarReader) -> None:
        """Apply one layer (a streamed tar) on top of what is there."""
        self.written = set()
        while (member := layer.next()) is not None:
            self._member(layer, member)

    def _member(self, layer: TarReader, member: TarEntry) -> None:
        parts = _parts(member.name, "member")
        if not parts:
            return  # the image's root itself: ours
        leaf = parts[-1]
        if leaf.startswith(WHITEOUT):
            self._whiteout(parts, member.name)
            return
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            return  # devices, FIFOs: ch-run gets /dev from the host
        parent = self._parent(parts, member.name, create=True)
        rel = f"{parent}/{leaf}" if parent else leaf
        path = self._path(rel)
        self.written.add(rel)
        try:
            st: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            st = None
        if member.isdir():
            if st is not None and not stat.S_ISDIR(st.st_mode):
                os.unlink(path)  # a link or file: replaced, never followed
                st = None
            if st is None:
                os.mkdir(path, 0o700)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
            try:
                self._own(fd, member)
                os.fchmod(fd, (member.mode & 0o755) | 0o700)
            finally:
                os.close(fd)
            self.dirs.add(rel)
            self.dir_times[rel] = member.mtime
            return
        if st is not None:
            self._remove(rel, st)  # a later layer (or entry) replaces what was there
        if member.issym():
            os.symlink(member.linkname, path)
            if self.as_root and 0 <= member.uid <= _ID_MAX and 0 <= member.gid <= _ID_MAX:
                os.chown(path, member.uid, member.gid, follow_symlinks=False)
            self._date(path, member.mtime, follow=False)
        elif member.islnk():
            os.link(self._link_target(member), path, follow_symlinks=False)
        else:
            self._file(layer, member, path)

    def _link_target(self, member: TarEntry) -> str:
        """The path of a hard link's target: a file already inside, reached without a link."""
        parts = _parts(member.linkname, "hard link target")
        parent = self._parent(parts, member.name, create=False) if parts else None
        if parent is not None:
            rel = f"{parent}/{parts[-1]}" if parent else parts[-1]
            try:
                st = os.lstat(self._path(rel))
            except FileNotFoundError:
                pass
            else:
                if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                    return self._path(rel)
        raise VenvoyError(f"image layer hard link {member.name!r} points to "
                          f"{member.linkname!r}, which is not a file in the image", _HINT)

    def _file(self, layer: TarReader, member: TarEntry, path: str) -> None:
        self.left -= member.size
        if self.left < 0:
            raise VenvoyError("the image would unpack to more than the limit of "
                              f"{mib(max_bytes_default())}",
                              "if it is really that big, raise VENVOY_ARCHIVE_MAX_BYTES")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
        try:
            with open(fd, "wb", closefd=False) as out:
                if member.sparse is not None:  # data where the map says, holes elsewhere
                    for offset, size in member.sparse:  # the pieces follow each other
                        out.seek(offset)
                        while size > 0:
                            chunk = layer.read(min(size, CHUNK))
                            if not chunk:
                                raise VenvoyError(f"image layer member {member.name!r} ends "
                                                  "before its data", _HINT)
                            out.write(chunk)
                            size -= len(chunk)
                    out.truncate(member.size)
                else:
                    while chunk := layer.read(CHUNK):
                        out.write(chunk)
            self._own(fd, member)
            os.fchmod(fd, (member.mode & 0o755) | 0o600)
            self._date(fd, member.mtime)
        finally:
            os.close(fd)

    # -- whiteouts ----------------------------------------------------------------------

    def _whiteout(self, parts: list[str], name: str) -> None:
        parent = self._parent(parts, name, create=False)
        if parent is None:
            return  # under a link or nothing there: nothing of the image to delete
        leaf = parts[-1]
        if leaf == OPAQUE:
            self._clear(parent)
            return
        hidden = leaf[len(WHITEOUT):]
        if not hidden or hidden.startswith(WHITEOUT) or hidden in (".", ".."):
            return  # other aufs metadata (.wh..wh.plnk, ...): nothing to apply
        rel = f"{parent}/{hidden}" if parent else hidden
        if rel in self.written:
            return  # a whiteout hides lower layers only
        try:
            st = os.lstat(self._path(rel))
        except FileNotFoundError:
            return
        self._remove(rel, st)

    def _clear(self, rel: str) -> None:
        """An opaque directory: remove what lower layers put in it."""
        with os.scandir(self._path(rel)) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for child, is_dir in entries:
            crel = f"{rel}/{child}" if rel else child
            if crel in self.written:
                if is_dir:
                    self._clear(crel)  # this layer's directory over a lower one's
                continue
            self._remove(crel, os.lstat(self._path(crel)))

    # -- finishing ----------------------------------------------------------------------

    def finish(self) -> None:
        """Date the directories (last, as their entries changed them), deepest first."""
        for rel in sorted(self.dir_times, key=lambda r: r.count("/"), reverse=True):
            if rel not in self.dirs:
                continue
            try:
                fd = os.open(self._path(rel), os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
            except OSError:
                continue
            try:
                self._date(fd, self.dir_times[rel])
            finally:
                os.close(fd)

    def put(self, parts: list[str], data: bytes) -> None:
        """Write a file of venvoy's own (``ch/environment``), replacing whatever
        the image has there (a link included) rather than writing through it."""
        rel = ""
        for part in parts[:-1]:
            rel = f"{rel}/{part}" if rel else part
            path = self._path(rel)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
                continue
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(path)
                os.mkdir(path, 0o755)
        rel = f"{rel}/{parts[-1]}" if rel else parts[-1]
        path = self._path(rel)
        with contextlib.suppress(FileNotFoundError):
            self._remove(rel, os.lstat(path))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
        try:
            with open(fd, "wb", closefd=False) as out:
                out.write(data)
        finally:
            os.close(fd)


def unpack_layers(archive: Path, root: Path) -> ImageArchive:
    """Apply the layers of the image in ``archive`` to the directory ``root``."""
    with open_archive(archive) as outer:
        source = read_source(outer, archive)
        writer = LayerWriter(root)
        for name in source.layers:
            with layer_stream(outer, name, archive) as raw:
                writer.apply(layer_reader(raw, archive, name))
        writer.finish()
        image = ImageArchive(list(source.layers), dict(source.info.config),
                             list(source.info.repo_tags))
        writer.put(["ch", "environment"], "".join(f"{e}\n" for e in image.env).encode())
        writer.put(["ch", "config.json"], source.config_bytes)
    return image


def unpack_image(archive: Path, dest: Path) -> ImageArchive:
    """Unpack the image in ``archive`` into a new directory ``dest``.

    Layers are applied in order with their whiteouts; the image's environment
    is written to ``dest/ch/environment`` (where ``ch-run --set-env`` looks)
    and its config to ``dest/ch/config.json``. Made under a temporary sibling
    and renamed, so ``dest`` is never partial; an existing ``dest`` is replaced.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.is_symlink():
        raise BadRequest(f"cannot unpack an image into {dest}: it is a symbolic link",
                         "give the path of a directory (or of one to create)")
    errors: tuple[type[BaseException], ...] = (*decompress_errors(), ValueError, OverflowError,
                                               UnicodeError, RecursionError)
    try:
        with new_path(dest, directory=True, mode=0o755) as tmp:
            image = unpack_layers(archive, tmp)
    except VenvoyError:
        raise
    except errors as exc:
        why = " ".join(str(exc).split())
        raise VenvoyError(f"cannot unpack image archive {archive}: {why}",
                          "check that it is a complete `docker save` or OCI archive") from None
    return image


__all__ = ["OPAQUE", "WHITEOUT", "ImageArchive", "LayerWriter", "unpack_image", "unpack_layers"]
