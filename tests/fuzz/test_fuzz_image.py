"""The image layer unpacker and the Docker/OCI archive reader, on generated input.

Layers are generated as member sequences: regular files, directories,
symbolic links (relative, absolute, ``..``, pointing at a sentinel directory
beside the destination), hard links (inside, outside, to directories),
duplicates, a directory over a link, a link over a directory, whiteouts and
opaque markers (also under links), odd modes with set-id bits, foreign
owners, devices and FIFOs, huge pax headers, sparse files; each layer uncompressed, gzip
or zstd. Archives get garbage ``manifest.json``, ``index.json``, configs and
blobs.

The invariant, every time: a :class:`~venvoy.core.errors.VenvoyError` whose
message is one line and no destination left behind, or a destination whose
every entry was reached without a link; never a change outside it (the full
lstat snapshot of a sentinel tree beside it, and of everything else in the
scratch directory, is the same after), never a traceback.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import zstandard
from hypothesis import event, given
from hypothesis import strategies as st

from venvoy.core.errors import VenvoyError
from venvoy.image.oci import inspect_archive
from venvoy.image.unpack import unpack_image

S = "{S}"  # replaced by the sentinel directory's absolute path

NAMES = st.sampled_from([
    "a", "b", "a/b", "a/b/c", "v", "v/x", "v/y/z", "l", "l/f", "l/d/f", "ch", "ch/environment",
    "ch/config.json", "./a", "a//b", f"{S}/abs", "etc/passwd", ".wh.a", "a/.wh.b", "v/.wh.x",
    "l/.wh.f", "l/.wh..wh..opq", "a/.wh..wh..opq", ".wh..wh..opq", ".wh..wh.plnk", ".wh.",
    ".wh...", "../x", "a/../../x", "..", ".", "", "x\ny", "d" * 300, "é/ü",
    f"{S}/evil", f"{S}/d/evil",
])
TARGETS = st.sampled_from([
    S, f"{S}/d", f"{S}/f", "../../sentinel", "../../sentinel/d", "../" * 8, "..", ".",
    "a", "a/b", "v", "l", f"{S}/a", f"{S}/v/x", "ch", f"{S}/link", "", "no/such",
])
HARD = st.sampled_from(["a", "a/b", "/a", "v", "v/x", "l/f", f"{S}/f", "../../sentinel/f",
                        "../x", "no/such", "", "ch/environment"])
KINDS = st.sampled_from(["file", "dir", "sym", "hard", "chr", "blk", "fifo", "pax", "sparse"])


@st.composite
def member(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(KINDS)
    return {
        "kind": kind, "name": draw(NAMES),
        "target": draw(HARD) if kind == "hard" else draw(TARGETS),
        "mode": draw(st.integers(0, 0o7777)),
        "uid": draw(st.sampled_from([0, 1, 4242, 65534, (1 << 21) - 1])),
        "mtime": draw(st.integers(0, (1 << 33) - 1)),
        "data": draw(st.binary(max_size=64)),
    }


LAYERS = st.lists(st.tuples(st.lists(member(), max_size=10),
                            st.sampled_from(["none", "gzip", "zstd"])), min_size=1, max_size=3)


def sub(text: str, sentinel: Path) -> str:
    return text.replace(S, str(sentinel))


def build_layer(members: list[dict[str, Any]], compression: str, sentinel: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(sub(m["name"], sentinel))
            info.mode, info.uid, info.gid, info.mtime = m["mode"], m["uid"], m["uid"], m["mtime"]
            data = None
            kind = m["kind"]
            if kind in ("file", "pax"):
                data = m["data"]
                info.size = len(data)
                if kind == "pax":  # a huge header: past the limit half the time
                    info.pax_headers = {"comment": "x" * ((1 << 20) + (m["mode"] & 1) * 64)}
            elif kind == "sparse":  # GNU sparse 1.0: a map (offsets from mode and uid), then data
                info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                                    "GNU.sparse.name": info.name,
                                    "GNU.sparse.realsize": str(m["mtime"] % (1 << 37))}
                info.name = "GNUSparseFile.0/x"
                sparse_map = f"2\n{m['uid']}\n{len(m['data'])}\n{m['mode']}\n3\n"
                data = sparse_map.encode().ljust(512, b"\0") + m["data"]
                info.size = len(data)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind in ("sym", "hard"):
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = sub(m["target"], sentinel)
            else:
                info.type = {"chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
                             "fifo": tarfile.FIFOTYPE}[kind]
                info.devmajor, info.devminor = 1, 3
            try:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
            except (ValueError, UnicodeError):
                continue  # not representable in a tar: nothing to unpack
    raw = buf.getvalue()
    if compression == "gzip":
        return gzip.compress(raw, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(raw)
    return raw


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def docker_archive(path: Path, layers: list[bytes], config: bytes | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        names = []
        for i, data in enumerate(layers):
            names.append(f"{i}/layer.tar")
            add(tar, names[-1], data)
        add(tar, "cfg.json", config if config is not None else
            json.dumps({"architecture": "amd64", "config": {"Env": ["A=1"]}}).encode())
        add(tar, "manifest.json", json.dumps([{"Config": "cfg.json", "Layers": names}]).encode())
    return path


Snapshot = dict[str, tuple[int, ...]]


def snapshot(root: Path, skip: Path | None = None) -> Snapshot:
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None and Path(dirpath) == skip:
            dirnames.clear()
            continue
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            if skip is not None and path == str(skip):
                continue  # the destination's parent changes, by design
            st_ = os.lstat(path)
            content = b""
            if stat.S_ISREG(st_.st_mode):
                content = Path(path).read_bytes()
            out[path] = (st_.st_mode, st_.st_uid, st_.st_gid, st_.st_mtime_ns, st_.st_size,
                         st_.st_ino, st_.st_nlink, hash(content))
    return out


def scratch() -> tuple[Path, Path, Path]:
    """A scratch directory with a sentinel tree and an empty work directory.

    Every link target and member name the fuzzer makes stays inside the scratch
    tree (absolute ones point into the sentinel; ``../`` chains cannot climb out
    of the nine levels above it), so an unpacker that regressed, run as root in
    CI, damages only the scratch tree -- and the sentinel snapshot says so.
    """
    top = Path(tempfile.mkdtemp(prefix="venvoy-fuzz-img-"))
    root = top.joinpath(*["up"] * 9)
    root.mkdir(parents=True)
    sentinel = root / "sentinel"
    (sentinel / "d").mkdir(parents=True)
    (sentinel / "f").write_text("sentinel")
    (sentinel / "d" / "g").write_text("deep")
    (sentinel / "link").symlink_to(sentinel / "d")
    sentinel.chmod(0o751)
    os.utime(sentinel / "d", (1_500_000_000, 1_500_000_000))
    work = root / "work"
    work.mkdir()
    return root, sentinel, work


def check_outcome(root: Path, work: Path, before: Snapshot, archive: Path) -> None:
    dest = work / "img"
    try:
        unpack_image(archive, dest)
    except VenvoyError as exc:
        assert "\n" not in str(exc), str(exc)
        assert os.listdir(work) == [], "nothing may be left behind on a refusal"
        event("refused")
    else:
        event("unpacked")
        assert os.listdir(work) == ["img"]
        real = os.path.realpath(dest)
        # every directory and file the walk reaches (links not followed) is inside dest
        for dirpath, dirnames, filenames in os.walk(dest):
            assert os.path.realpath(dirpath).startswith(real)
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st_ = os.lstat(path)
                assert not stat.S_ISCHR(st_.st_mode) and not stat.S_ISBLK(st_.st_mode)
                assert not stat.S_ISFIFO(st_.st_mode)
                assert not st_.st_mode & (stat.S_ISUID | stat.S_ISGID)
        for name in ("environment", "config.json"):
            meta = dest / "ch" / name
            assert meta.is_file() and not meta.is_symlink() and not (dest / "ch").is_symlink()
    assert snapshot(root, skip=work) == before, "something outside the image changed"


@given(layers=LAYERS)
def test_layer_unpacker_never_writes_outside(layers: list[tuple[list[dict[str, Any]], str]]) -> None:
    root, sentinel, work = scratch()
    try:
        archive = docker_archive(root / "i.tar", [build_layer(m, c, sentinel) for m, c in layers])
        before = snapshot(root, skip=work)
        check_outcome(root, work, before, archive)
    finally:
        shutil.rmtree(root.parents[8], ignore_errors=True)


# -- the archive reader on garbage JSON and blobs ------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 3) | st.sampled_from(
        ["", "sha256:", "sha256:00", "sha256:../../x", "cfg.json", "0/layer.tar", "linux", "amd64",
         "arm64", "unknown", "manifests", "x:1"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["Config", "Layers", "RepoTags", "manifests", "digest", "platform",
                         "architecture", "os", "config", "layers", "annotations", "rootfs",
                         "diff_ids", "Env", "org.opencontainers.image.ref.name"]),
        inner, max_size=4),
    max_leaves=12)


@given(kind=st.sampled_from(["manifest.json", "index.json"]), top=JSON, config=JSON,
       blobs=st.lists(st.tuples(JSON, st.booleans()), max_size=3),
       garbage=st.binary(max_size=40), layer_ok=st.booleans())
def test_archive_reader_on_garbage(kind: str, top: Any, config: Any, blobs: list[tuple[Any, bool]],
                                   garbage: bytes, layer_ok: bool) -> None:
    root, sentinel, work = scratch()
    try:
        import hashlib

        archive = root / "g.tar"
        with tarfile.open(archive, "w") as tar:
            add(tar, kind, json.dumps(top).encode())
            add(tar, "cfg.json", json.dumps(config).encode())
            add(tar, "0/layer.tar", build_layer([], "none", sentinel) if layer_ok else garbage)
            for value, raw in blobs:
                data = garbage if raw else json.dumps(value).encode()
                add(tar, f"blobs/sha256/{hashlib.sha256(data).hexdigest()}", data)
        before = snapshot(root, skip=work)
        try:
            inspect_archive(archive)
        except VenvoyError as exc:
            assert "\n" not in str(exc), str(exc)
        check_outcome(root, work, before, archive)
    finally:
        shutil.rmtree(root.parents[8], ignore_errors=True)


@given(data=st.binary(max_size=2048), cut=st.integers(0, 4096))
def test_archive_reader_on_damaged_bytes(data: bytes, cut: int) -> None:
    root, sentinel, work = scratch()
    try:
        good = docker_archive(root / "good.tar", [build_layer(
            [{"kind": "file", "name": "a", "target": "", "mode": 0o644, "uid": 0, "mtime": 0,
              "data": b"a"}], "gzip", sentinel)]).read_bytes()
        archive = root / "bad.tar"
        archive.write_bytes(good[:cut] + data + good[cut + len(data):])
        before = snapshot(root, skip=work)
        check_outcome(root, work, before, archive)
    finally:
        shutil.rmtree(root.parents[8], ignore_errors=True)
