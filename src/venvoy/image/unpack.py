"""Reading Docker and OCI image archives without any container runtime.

Used to unpack an image for runtimes that run a plain directory
(Charliecloud's ``ch-run``), so that one Docker/OCI archive can feed every
runtime, even on a cluster with no Docker, no registry and no root.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from venvoy.core.errors import VenvoyError

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


@dataclass
class ImageArchive:
    """The layers (in order) and the config of the single image in an archive."""

    layers: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    repo_tags: list[str] = field(default_factory=list)

    @property
    def env(self) -> list[str]:
        env: list[str] = self.config.get("config", {}).get("Env") or []
        return env


def _read_json(tar: tarfile.TarFile, name: str) -> Any:
    try:
        member = tar.getmember(name)
    except KeyError:
        raise VenvoyError(f"image archive has no {name}", "is it a `docker save` or OCI archive?") from None
    fh = tar.extractfile(member)
    if fh is None:
        raise VenvoyError(f"image archive member {name} is not a file")
    with fh:
        return json.load(fh)


def read_archive(tar: tarfile.TarFile) -> ImageArchive:
    """Find the layers and config of a Docker archive or an OCI image layout tar."""
    names = set(tar.getnames())
    if "manifest.json" in names:  # docker-archive (docker save / podman save)
        manifest = _read_json(tar, "manifest.json")
        if not manifest:
            raise VenvoyError("image archive's manifest.json lists no image")
        entry = manifest[0]
        return ImageArchive(list(entry["Layers"]), _read_json(tar, entry["Config"]),
                            list(entry.get("RepoTags") or []))
    if "index.json" in names:  # OCI image layout
        index = _read_json(tar, "index.json")
        desc = index["manifests"][0]
        manifest = _read_json(tar, _blob(desc["digest"]))
        if "manifests" in manifest:  # an index of platforms: take the first
            manifest = _read_json(tar, _blob(manifest["manifests"][0]["digest"]))
        ref = desc.get("annotations", {}).get("org.opencontainers.image.ref.name")
        return ImageArchive([_blob(layer["digest"]) for layer in manifest["layers"]],
                            _read_json(tar, _blob(manifest["config"]["digest"])),
                            [ref] if ref else [])
    raise VenvoyError("not a Docker or OCI image archive (no manifest.json or index.json)",
                      "create one with `docker save` or `podman save`")


def _blob(digest: str) -> str:
    algo, _, hexdigest = digest.partition(":")
    if not hexdigest.isalnum():
        raise VenvoyError(f"bad digest {digest!r} in image archive")
    return f"blobs/{algo}/{hexdigest}"


def _inside(root: Path, rel: str) -> Path | None:
    """root/rel if it lies inside root without crossing a symlink, else None."""
    parts = [p for p in Path(rel).parts if p not in ("", ".", "/")]
    if any(p == ".." for p in parts):
        return None
    path = root
    for part in parts[:-1]:
        path = path / part
        if path.is_symlink() or not path.is_dir():
            return None
    return path / parts[-1] if parts else None


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def _apply_whiteouts(layer: tarfile.TarFile, root: Path) -> list[tarfile.TarInfo]:
    """Delete what this layer whites out from lower layers; return its other members."""
    keep = []
    for member in layer.getmembers():
        name = member.name
        while name.startswith("./"):
            name = name[2:]
        base = os.path.basename(name)
        if base == OPAQUE:
            target = _inside(root, os.path.dirname(name) or ".")
            directory = root if os.path.dirname(name) in ("", ".") else target
            if directory is not None and directory.is_dir() and not directory.is_symlink():
                for child in directory.iterdir():
                    _remove(child)
        elif base.startswith(WHITEOUT):
            target = _inside(root, os.path.join(os.path.dirname(name), base[len(WHITEOUT):]))
            if target is not None and (target.exists() or target.is_symlink()):
                _remove(target)
        else:
            keep.append(member)
    return keep


def _checked(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """A copy of ``member`` that is safe to write under ``dest``, or None to skip it.

    Nothing may land outside ``dest``: no absolute names, no ``..``, no path
    through a symlink that leaves, no hard link to a file outside. Absolute
    *symlinks* stay: in an image they mean "from the image's root" and are never
    followed here. Device nodes and FIFOs are skipped (they cannot be made
    unprivileged and a container gets its /dev from the runtime). Set-id bits
    are dropped; the owner gets rwx on directories and rw on files so later
    layers can be applied when unpacking unprivileged. Done by hand rather than
    with tarfile's filters, which Python before 3.11.4 does not have.
    """
    if member.isdev() or member.isfifo():
        return None
    name = member.name.lstrip("/")
    if not name or os.path.isabs(name) or ".." in Path(name).parts:
        raise VenvoyError(f"image layer member {member.name!r} points outside the image")
    root = os.path.realpath(dest)

    def inside(path: str) -> bool:
        return os.path.commonpath([os.path.realpath(path), root]) == root

    # The parent must resolve inside; the last component itself is replaced,
    # never followed (a lower layer may have left a link there).
    if not inside(os.path.dirname(os.path.join(dest, name))):
        raise VenvoyError(f"image layer member {member.name!r} would be written outside the image")
    if member.islnk() and not inside(os.path.join(dest, member.linkname.lstrip("/"))):
        raise VenvoyError(f"image layer hard link {member.name!r} points outside the image")
    new = copy.copy(member)
    new.name = name
    if member.islnk():
        new.linkname = member.linkname.lstrip("/")
    if not member.issym():
        new.mode = (member.mode & 0o755) | (0o700 if member.isdir() else 0o600)
    return new


_HAS_FILTERS = hasattr(tarfile, "fully_trusted_filter")


def _extract(layer: tarfile.TarFile, members: list[tarfile.TarInfo], dest: Path) -> None:
    for member in members:
        safe = _checked(member, str(dest))
        if safe is None:
            continue
        target = dest / safe.name
        if (target.is_symlink() or target.exists()) and not (safe.isdir() and target.is_dir()):
            _remove(target)  # a later layer replaces what an earlier one put there
        if _HAS_FILTERS:  # checked above; stop newer Pythons from re-filtering
            layer.extract(safe, dest, set_attrs=not safe.issym(), numeric_owner=True,
                          filter="fully_trusted")
        else:
            layer.extract(safe, dest, set_attrs=not safe.issym(), numeric_owner=True)


@contextmanager
def _open_layer(tar: tarfile.TarFile, name: str) -> Iterator[tarfile.TarFile]:
    fh: IO[bytes] | None = tar.extractfile(name)
    if fh is None:
        raise VenvoyError(f"image archive layer {name} is missing")
    with fh, tarfile.open(fileobj=fh, mode="r:*") as layer:
        yield layer


def unpack_image(archive: Path, dest: Path) -> ImageArchive:
    """Unpack the image in ``archive`` into a new directory ``dest``.

    Layers are applied in order with their whiteouts; the image's environment
    is written to ``dest/ch/environment`` (where ``ch-run --set-env`` looks).
    Written to a temporary sibling and renamed, so ``dest`` is never partial.
    """
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive, mode="r:*") as outer:
            image = read_archive(outer)
            for name in image.layers:
                with _open_layer(outer, name) as layer:
                    members = _apply_whiteouts(layer, tmp)
                    _extract(layer, members, tmp)
        (tmp / "ch").mkdir(exist_ok=True)
        (tmp / "ch" / "environment").write_text("".join(f"{e}\n" for e in image.env))
        (tmp / "ch" / "config.json").write_text(json.dumps(image.config))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except (tarfile.TarError, OSError, KeyError, ValueError) as exc:
        raise VenvoyError(f"cannot unpack image archive {archive}: {exc}",
                          "check that it is a complete `docker save` or OCI archive") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return image
