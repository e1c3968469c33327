"""The one-pass layer flattening, venvoy's SIF writer and the SIF compression choice."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from venvoy.core.errors import BadRequest, VenvoyError
from venvoy.image.sif import (
    PARTITION_OFFSET,
    apptainer_extras,
    build_sif,
    env_script,
    image_time,
    read_sif_header,
    runscript,
    sif_header,
    sif_uuid,
)
from venvoy.image.squash import (
    Extra,
    FlattenUnsupported,
    check_compression,
    flatten,
    tar_header,
)

from ._archives import docker_archive


def layer(*entries: tuple) -> bytes:
    """A layer: (kind, name, data-or-link, uid, mode) tuples, kind in file/dir/sym/hard/chr."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, *rest in entries:
            info = tarfile.TarInfo(name)
            info.uid = info.gid = rest[1] if len(rest) > 1 else 0
            info.mode = rest[2] if len(rest) > 2 else 0o644
            info.mtime = 1_700_000_000
            if kind == "file":
                data = rest[0].encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, rest[0]
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, rest[0]
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            tar.addfile(info)
    return buf.getvalue()


class Member:
    """A flattened member: its tar header's fields, and its data."""

    def __init__(self, info: tarfile.TarInfo, data: bytes) -> None:
        self.info, self.data = info, data

    def __getattr__(self, name: str) -> object:
        return getattr(self.info, name)


def flat(tmp_path: Path, layers: list[bytes], **kw: object) -> dict[str, Member]:
    """The flattened tar of an archive of ``layers``, as name -> member (data in .data)."""
    archive = docker_archive(tmp_path / "img.tar", layers)
    out = io.BytesIO()
    flatten(archive, out.write, **kw)  # type: ignore[arg-type]
    out.seek(0)
    members: dict[str, Member] = {}
    with tarfile.open(fileobj=out, mode="r:") as tar:
        for m in tar:
            assert m.name not in members, f"{m.name} written twice"
            fh = tar.extractfile(m) if m.isfile() else None
            members[m.name] = Member(m, fh.read() if fh else b"")
    return members


def test_upper_layer_wins_and_ownership_is_kept(tmp_path: Path) -> None:
    got = flat(tmp_path, [
        layer(("dir", "etc"), ("file", "etc/conf", "old", 0), ("file", "etc/keep", "k", 1234),
              ("file", "root-owned", "r", 0, 0o600)),
        layer(("dir", "etc"), ("file", "etc/conf", "new", 42, 0o640)),
    ])
    assert got["etc/conf"].data == b"new"
    assert (got["etc/conf"].uid, got["etc/conf"].gid, got["etc/conf"].mode) == (42, 42, 0o640)
    assert got["etc/keep"].uid == 1234 and got["etc/keep"].data == b"k"
    assert got["root-owned"].uid == 0 and got["root-owned"].mode == 0o600
    assert got["etc/conf"].mtime == 1_700_000_000


def test_whiteouts_hide_lower_layers_only(tmp_path: Path) -> None:
    got = flat(tmp_path, [
        layer(("dir", "a"), ("file", "a/gone", "x"), ("dir", "d"), ("file", "d/inner", "y"),
              ("file", "stays", "s")),
        layer(("file", "a/.wh.gone", ""), ("file", ".wh.d", ""), ("file", "a/new", "n")),
        layer(("file", "d", "now a file")),  # re-created above the whiteout
    ])
    assert "a/gone" not in got and "d/inner" not in got
    assert got["d"].isfile() and got["d"].data == b"now a file"
    assert "a/new" in got and "stays" in got
    assert not any(".wh." in name for name in got)


def test_whiteout_does_not_hide_its_own_layer(tmp_path: Path) -> None:
    got = flat(tmp_path, [
        layer(("file", "f", "lower")),
        layer(("file", ".wh.f", ""), ("file", "f", "same layer")),
    ])
    assert got["f"].data == b"same layer"


def test_opaque_directory(tmp_path: Path) -> None:
    got = flat(tmp_path, [
        layer(("dir", "o"), ("file", "o/lower", "x"), ("dir", "o/sub"), ("file", "o/sub/deep", "y")),
        layer(("dir", "o"), ("file", "o/.wh..wh..opq", ""), ("file", "o/upper", "u")),
    ])
    assert "o/upper" in got and "o" in got
    assert not [n for n in got if n.startswith("o/") and n != "o/upper"]


def test_upper_file_or_link_hides_lower_tree(tmp_path: Path) -> None:
    got = flat(tmp_path, [
        layer(("dir", "t"), ("file", "t/x", "x"), ("dir", "u"), ("file", "u/y", "y")),
        layer(("sym", "t", "/elsewhere"), ("file", "u", "file now")),
    ])
    assert got["t"].issym() and got["t"].linkname == "/elsewhere"
    assert "t/x" not in got and "u/y" not in got


def test_hard_links_kept_devices_dropped(tmp_path: Path) -> None:
    got = flat(tmp_path, [layer(("file", "bin/a", "data"), ("hard", "bin/b", "bin/a"),
                                ("chr", "dev/null"))])
    assert got["bin/b"].islnk() and got["bin/b"].linkname == "bin/a"
    assert "dev/null" not in got


def test_hard_link_to_a_replaced_file_is_unsupported(tmp_path: Path) -> None:
    with pytest.raises(FlattenUnsupported):
        flat(tmp_path, [layer(("file", "a", "old"), ("hard", "b", "a")), layer(("file", "a", "new"))])


def test_dot_dot_refused(tmp_path: Path) -> None:
    with pytest.raises(VenvoyError, match="outside the image"):
        flat(tmp_path, [layer(("file", "../evil", "x"))])


def test_member_through_a_link_of_its_own_layer_refused(tmp_path: Path) -> None:
    # sqfstar failed on it with a misleading "check free space" hint
    with pytest.raises(VenvoyError, match="would be written through the link or file /esc"):
        flat(tmp_path, [layer(("sym", "esc", "/etc"), ("file", "esc/pwned", "x"))])
    with pytest.raises(VenvoyError, match="through the link or file /f"):
        flat(tmp_path, [layer(("file", "f", "x"), ("dir", "f/d"))])


def test_reserved_paths_replaced_by_extras(tmp_path: Path) -> None:
    got = flat(tmp_path, [layer(("dir", ".singularity.d"), ("file", ".singularity.d/runscript", "evil"),
                                ("dir", "tmp"))],
               reserved=(".singularity.d",),
               extras=lambda src: [Extra(".singularity.d", b"5", mode=0o755),
                                   Extra(".singularity.d/runscript", b"0", b"ours", 0o755),
                                   Extra("tmp", b"5", mode=0o1777), Extra("proc", b"5")],
               mtime=lambda src: 5)
    assert got[".singularity.d/runscript"].data == b"ours"
    assert got["tmp"].mode == 0o755  # the image's own directory stays
    assert got["proc"].isdir() and got["proc"].mtime == 5


def test_long_names_and_big_ids_use_pax() -> None:
    name = "/".join(["d" * 60] * 5) + "/file"
    raw = tar_header(name, b"0", size=3, uid=1 << 24, gid=5, mtime=7)
    with tarfile.open(fileobj=io.BytesIO(raw + b"abc" + bytes(509) + bytes(1024))) as tar:
        info = tar.next()
    assert info is not None and info.name == name and info.uid == 1 << 24
    short = tar_header("usr/lib/" + "x" * 90 + "/f.py", b"0", size=0)  # ustar prefix split
    with tarfile.open(fileobj=io.BytesIO(short + bytes(1024))) as tar:
        info = tar.next()
    assert info is not None and info.name == "usr/lib/" + "x" * 90 + "/f.py"


def test_env_script_and_runscript() -> None:
    script = env_script(["PATH=/opt/venv/bin:/usr/bin", 'WEIRD=a"$b`c\\', "bad key=x", "NOEQ"])
    assert 'export PATH="/opt/venv/bin:/usr/bin"' in script
    assert 'export WEIRD="${WEIRD:-"a\\"\\$b\\`c\\\\"}"' in script
    assert "bad key" not in script and "NOEQ" not in script
    out = subprocess.run(["sh", "-c", script + 'printf %s "$WEIRD"'], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.stdout == 'a"$b`c\\'
    run = runscript({"Entrypoint": ["python3"], "Cmd": ["-c", "print('hi there')"]})
    assert "exec python3 \"$@\"" in run and "'print('\"'\"'hi there'\"'\"')'" in run


def test_sif_header_layout_parses_back(tmp_path: Path) -> None:
    raw = sif_header(image_id="sha256:" + "a" * 64, arch=b"02", when=1_700_000_000, fs_size=12345)
    assert len(raw) == PARTITION_OFFSET == 32768
    assert raw.startswith(b"#!/usr/bin/env run-singularity\n\0SIF_MAGIC\0" + b"01\0" + b"02\0")
    path = tmp_path / "x.sif"
    path.write_bytes(raw + bytes(12345))
    info = read_sif_header(path)
    assert info["uuid"] == str(sif_uuid("sha256:" + "a" * 64))
    assert (info["descr_total"], info["descr_free"], info["descr_offset"]) == (48, 47, 4096)
    assert info["data_offset"] == 32176 and info["data_size"] == 12345 + 32768 - 32176
    (part,) = info["descriptors"]
    assert (part["type"], part["fstype"], part["parttype"], part["arch"]) == (0x4004, 1, 2, b"02")
    assert (part["offset"], part["size"], part["created"]) == (32768, 12345, 1_700_000_000)
    assert struct.unpack_from("<q", raw, 64)[0] == 1_700_000_000  # created


def test_image_time_and_extras(tmp_path: Path) -> None:
    from venvoy.image.oci import open_archive, read_source

    archive = docker_archive(tmp_path / "img.tar", [layer(("file", "f", "x"))])
    with open_archive(archive) as outer:
        source = read_source(outer, archive)
    assert image_time(source) == 0  # no "created"
    names = {e.name for e in apptainer_extras(source)}
    assert {".singularity.d/env/10-docker2singularity.sh", ".singularity.d/runscript",
            ".singularity.d/labels.json", ".singularity.d/actions/exec", "environment",
            "proc", "etc/resolv.conf"} <= names


def test_compression_setting_checked() -> None:
    assert check_compression(" ZSTD ") == "zstd"
    with pytest.raises(BadRequest, match="VENVOY_SIF_COMPRESSION='brotli'"):
        check_compression("brotli")


def test_apptainer_compression_choice(tmp_path: Path) -> None:
    from venvoy.runtime.apptainer import Apptainer

    if shutil.which("sqfstar") is None:
        pytest.skip("sqfstar (squashfs-tools >= 4.5) is not installed")
    env = {"PATH": os.environ["PATH"], "VENVOY_HOME": str(tmp_path), "HOME": str(tmp_path)}
    rt = Apptainer("/nonexistent/apptainer", {**env, "VENVOY_SIF_COMPRESSION": "gzip"})
    assert rt.sif_compression() == ("gzip", "set by VENVOY_SIF_COMPRESSION")
    comp, why = Apptainer("/nonexistent/apptainer", env).sif_compression()
    assert comp in ("zstd", "lz4", "gzip", "xz") and why.startswith("auto")
    rt = Apptainer("/nonexistent/apptainer", {**env, "VENVOY_SIF_COMPRESSION": "Apptainer"})
    assert rt.sif_compression()[0] == ""  # told to let `apptainer build` make SIFs
    rt = Apptainer("/nonexistent/apptainer", {**env, "PATH": str(tmp_path)})
    assert rt.sif_compression()[0] == ""  # no sqfstar: apptainer build


@pytest.mark.skipif(shutil.which("sqfstar") is None or shutil.which("unsquashfs") is None,
                    reason="squashfs-tools not installed")
def test_sif_is_deterministic_and_holds_the_image(tmp_path: Path) -> None:
    archive = docker_archive(tmp_path / "img.tar", [
        layer(("dir", "opt"), ("file", "opt/old", "x"), ("file", "opt/root-file", "r", 0, 0o600)),
        layer(("file", "opt/.wh.old", ""), ("file", "opt/mine", "m", 1234)),
    ], env=("PATH=/opt/venv/bin:/usr/bin", "VIRTUAL_ENV=/opt/venv"))
    sqfstar = shutil.which("sqfstar")
    assert sqfstar is not None
    digests = []
    for i, umask in enumerate((0o022, 0o077)):
        out = tmp_path / f"d{i}" / "x.sif"
        out.parent.mkdir()
        old = os.umask(umask)
        try:
            build_sif(archive, out, sqfstar=sqfstar, compression="gzip")
        finally:
            os.umask(old)
        digests.append(__import__("hashlib").sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    info = read_sif_header(out)
    assert info["descriptors"][0]["size"] == out.stat().st_size - PARTITION_OFFSET
    listing = subprocess.run(["unsquashfs", "-o", str(PARTITION_OFFSET), "-lln", str(out)],
                             capture_output=True, text=True, check=True).stdout
    lines = {line.split()[-1].removeprefix("squashfs-root/"): line.split() for line in
             listing.splitlines() if line.startswith(("-", "d", "l"))}
    assert lines["opt/root-file"][1] == "0/0" and lines["opt/root-file"][0] == "-rw-------"
    assert lines["opt/mine"][1] == "1234/1234"
    assert "opt/old" not in lines
    env = subprocess.run(["unsquashfs", "-o", str(PARTITION_OFFSET), "-cat", str(out),
                          ".singularity.d/env/10-docker2singularity.sh"],
                         capture_output=True, text=True, check=True).stdout
    assert 'export PATH="/opt/venv/bin:/usr/bin"' in env and "VIRTUAL_ENV" in env
    labels = json.loads(subprocess.run(
        ["unsquashfs", "-o", str(PARTITION_OFFSET), "-cat", str(out), ".singularity.d/labels.json"],
        capture_output=True, text=True, check=True).stdout)
    assert labels["org.venvoy.sif-from"].startswith("sha256:")


def test_implied_directories_are_explicit_and_win_over_lower_files(tmp_path: Path) -> None:
    got = flat(tmp_path, [layer(("sym", "lib", "usr/lib"), ("file", "keep", "k")),
                          layer(("file", "lib/deep/x.so", "elf"))])
    assert got["lib"].isdir() and got["lib/deep"].isdir()  # not the lower symlink
    assert got["lib/deep"].mode == 0o755 and got["lib/deep"].mtime == 0
    assert got["lib/deep/x.so"].data == b"elf" and "keep" in got
