"""venvoy.image: reproducible layers and Docker archives, written without any runtime."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from venvoy.core.errors import VenvoyError
from venvoy.image import oci as image
from venvoy.image.unpack import unpack_image

from ._archives import docker_archive, layer_tar, oci_archive


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def base_archive(path: Path, layers: list[bytes], *, env: list[str] | None = None,
                 labels: dict[str, str] | None = None, gzip_layers: bool = False,
                 history: bool = True) -> Path:
    """A docker-archive like `docker save` writes, with proper diff_ids."""
    config = {
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Env": env if env is not None else ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"],
                   "Cmd": ["sh"], "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [sha(layer) for layer in layers]},
    }
    if history:
        config["history"] = [{"created_by": f"step {i}"} for i in range(len(layers))]
    raw = json.dumps(config).encode()
    with tarfile.open(path, "w") as tar:
        names = []
        for i, data in enumerate(layers):
            names.append(f"l{i}/layer.tar")
            _add(tar, names[-1], gzip.compress(data, mtime=0) if gzip_layers else data)
        _add(tar, "config.json", raw)
        _add(tar, "manifest.json", json.dumps(
            [{"Config": "config.json", "RepoTags": ["base:1"], "Layers": names}]).encode())
    return path


def oci_base(path: Path, layers: list[bytes], *, nested: bool = False, ref: str = "base:oci") -> Path:
    """An OCI image layout tar (`podman save --format oci-archive`) with gzip layers."""
    blobs: dict[str, bytes] = {}

    def blob(data: bytes, media: str) -> dict[str, object]:
        digest = sha(data)
        blobs[digest] = data
        return {"mediaType": media, "digest": digest, "size": len(data)}

    config = {"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/usr/bin:/bin"]},
              "rootfs": {"type": "layers", "diff_ids": [sha(layer) for layer in layers]},
              "history": [{"created_by": "x"} for _ in layers]}
    cfg = blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
    mlayers = [blob(gzip.compress(layer, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")
               for layer in layers]
    manifest = blob(json.dumps({"schemaVersion": 2, "config": cfg, "layers": mlayers}).encode(),
                    "application/vnd.oci.image.manifest.v1+json")
    if nested:
        other = dict(manifest, platform={"architecture": "s390x", "os": "linux"})
        mine = dict(manifest, platform={"architecture": image.host_architecture(), "os": "linux"})
        manifest = blob(json.dumps({"schemaVersion": 2, "manifests": [other, mine]}).encode(),
                        "application/vnd.oci.image.index.v1+json")
    index = {"schemaVersion": 2,
             "manifests": [{**manifest, "annotations": {"org.opencontainers.image.ref.name": ref}}]}
    with tarfile.open(path, "w") as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _add(tar, "index.json", json.dumps(index).encode())
        for digest, data in blobs.items():
            _add(tar, "blobs/sha256/" + digest.split(":")[1], data)
    return path


BASE_LAYER = layer_tar([("dir", "etc"), ("file", "etc/os-release", "ID=test\n"),
                        ("dir", "usr"), ("dir", "usr/bin"), ("file", "usr/bin/tool", "v1")])
SECOND_LAYER = layer_tar([("dir", "usr"), ("dir", "usr/bin"), ("file", "usr/bin/tool", "v2")])


@pytest.fixture(autouse=True)
def no_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def make_tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "lib" / "pkg").mkdir(parents=True)
    (root / "bin" / "python").write_bytes(b"#!/bin/sh\n")
    (root / "bin" / "python").chmod(0o755)
    (root / "bin" / "suid").write_bytes(b"x")
    (root / "bin" / "suid").chmod(0o4755)
    (root / "lib" / "pkg" / "mod.py").write_text("print('hi')\n")
    (root / "lib" / "pkg" / "same.py").write_text("print('hi')\n")
    os.link(root / "lib" / "pkg" / "mod.py", root / "lib" / "pkg" / "zlink.py")
    (root / "bin" / "python3").symlink_to("python")
    (root / "abs-link").symlink_to("/usr/bin/python3.11")
    os.mkfifo(root / "fifo")
    return root


# -- layer_from_dir ---------------------------------------------------------------------

def test_layer_from_dir_entries(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "venv")
    out = tmp_path / "layer.tar"
    diff_id = image.layer_from_dir(src, "opt/venv", out)
    assert diff_id == sha(out.read_bytes())
    with tarfile.open(out) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == ["opt", "opt/venv", "opt/venv/abs-link", "opt/venv/bin", "opt/venv/bin/python",
                     "opt/venv/bin/python3", "opt/venv/bin/suid", "opt/venv/lib", "opt/venv/lib/pkg",
                     "opt/venv/lib/pkg/mod.py", "opt/venv/lib/pkg/same.py", "opt/venv/lib/pkg/zlink.py"]
    by = {m.name: m for m in members}
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "" and m.gname == "" and m.mtime == 0
               for m in members)
    assert by["opt"].isdir() and by["opt"].mode == 0o755
    assert by["opt/venv/bin/python"].mode == 0o755
    assert by["opt/venv/bin/suid"].mode == 0o755  # set-uid dropped
    assert by["opt/venv/bin/python3"].issym() and by["opt/venv/bin/python3"].linkname == "python"
    assert by["opt/venv/abs-link"].linkname == "/usr/bin/python3.11"
    assert by["opt/venv/lib/pkg/zlink.py"].islnk()
    assert by["opt/venv/lib/pkg/zlink.py"].linkname == "opt/venv/lib/pkg/mod.py"
    assert not by["opt/venv/lib/pkg/same.py"].islnk()  # equal content is not a hard link


def test_layer_from_dir_is_reproducible(tmp_path: Path) -> None:
    a = make_tree(tmp_path / "a")
    b = make_tree(tmp_path / "b")
    os.utime(b / "lib" / "pkg" / "mod.py", (1_000_000, 1_000_000))
    if os.geteuid() == 0:  # another owner: still 0:0 in the layer
        os.chown(b / "bin" / "python", 1234, 5678)
    (b / "lib").chmod(0o2755)  # set-gid directory: dropped too
    (a / "lib").chmod(0o755)
    da = image.layer_from_dir(a, "opt/venv", tmp_path / "a.tar")
    db = image.layer_from_dir(b, "/opt/venv/", tmp_path / "b.tar")
    assert da == db
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_layer_from_dir_source_date_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "venv")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    image.layer_from_dir(src, "opt/venv", tmp_path / "l.tar")
    with tarfile.open(tmp_path / "l.tar") as tar:
        assert {m.mtime for m in tar.getmembers()} == {1700000000}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(VenvoyError, match="SOURCE_DATE_EPOCH"):
        image.layer_from_dir(src, "opt/venv", tmp_path / "l2.tar")


def test_layer_from_dir_at_root_and_errors(tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "x").write_text("1")
    image.layer_from_dir(src, "", tmp_path / "root.tar")
    with tarfile.open(tmp_path / "root.tar") as tar:
        assert tar.getnames() == ["etc", "etc/x"]
    with pytest.raises(VenvoyError, match=r"\.\."):
        image.layer_from_dir(src, "opt/../etc", tmp_path / "bad.tar")
    with pytest.raises(VenvoyError, match="not a directory"):
        image.layer_from_dir(tmp_path / "missing", "opt", tmp_path / "bad.tar")
    assert not (tmp_path / "bad.tar").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_add_files_layer(tmp_path: Path) -> None:
    files = {"/opt/venvoy/b.json": b"{}", "opt/venvoy/a/pylock.toml": b"lock", "etc/x": b"x"}
    d1 = image.add_files_layer(files, tmp_path / "1.tar")
    d2 = image.add_files_layer(dict(reversed(list(files.items()))), tmp_path / "2.tar")
    assert d1 == d2 == sha((tmp_path / "1.tar").read_bytes())
    with tarfile.open(tmp_path / "1.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["etc", "etc/x", "opt", "opt/venvoy", "opt/venvoy/a",
                                             "opt/venvoy/a/pylock.toml", "opt/venvoy/b.json"]
        assert [m.mode for m in members if m.isfile()] == [0o644] * 3
        assert [m.mode for m in members if m.isdir()] == [0o755] * 4
        member = tar.extractfile("opt/venvoy/a/pylock.toml")
        assert member is not None and member.read() == b"lock"


# -- assemble ---------------------------------------------------------------------------

def new_layer(tmp_path: Path, text: str = "hello\n") -> Path:
    out = tmp_path / f"new-{hashlib.sha256(text.encode()).hexdigest()[:8]}.tar"
    image.add_files_layer({"opt/venv/hello.txt": text.encode()}, out)
    return out


def test_assemble_docker_archive(tmp_path: Path) -> None:
    base = base_archive(tmp_path / "base.tar", [BASE_LAYER, SECOND_LAYER], labels={"keep": "me"})
    layer = new_layer(tmp_path)
    out = tmp_path / "out" / "img.tar"
    out.parent.mkdir()
    info = image.assemble(base, [layer], out,
                          env={"PATH": "/opt/venv/bin:/usr/local/bin:/usr/bin:/bin",
                               "VIRTUAL_ENV": "/opt/venv"},
                          labels={"org.venvoy.x": "1"}, repo_tag="localhost/venvoy/demo:abc",
                          created="2025-01-02T03:04:05Z")
    assert info.diff_ids == (sha(BASE_LAYER), sha(SECOND_LAYER), sha(layer.read_bytes()))
    assert info.repo_tags == ("localhost/venvoy/demo:abc",)
    cfg = info.config
    assert cfg["config"]["Env"] == ["PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8",
                                    "VIRTUAL_ENV=/opt/venv"]
    assert cfg["config"]["Labels"] == {"keep": "me", "org.venvoy.x": "1"}
    assert cfg["config"]["Cmd"] == ["sh"]
    assert cfg["created"] == "2025-01-02T03:04:05Z"
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": list(info.diff_ids)}
    assert len(cfg["history"]) == 3 and cfg["history"][-1]["created"] == "2025-01-02T03:04:05Z"
    assert [p.name for p in out.parent.iterdir()] == ["img.tar"]  # no temporary left
    with tarfile.open(out) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        raw = tar.extractfile(manifest[0]["Config"]).read()  # type: ignore[union-attr]
        for name, diff_id in zip(manifest[0]["Layers"], info.diff_ids, strict=True):
            assert sha(tar.extractfile(name).read()) == diff_id  # type: ignore[union-attr]
    assert info.image_id == sha(raw)
    assert names[-1] == "manifest.json"
    assert manifest[0]["RepoTags"] == ["localhost/venvoy/demo:abc"]
    assert image.inspect_archive(out) == info
    # it unpacks with venvoy's own unpacker: the later layer wins, the new file is there
    dest = tmp_path / "rootfs"
    unpack_image(out, dest)
    assert (dest / "usr/bin/tool").read_text() == "v2"
    assert (dest / "opt/venv/hello.txt").read_text() == "hello\n"
    assert "VIRTUAL_ENV=/opt/venv" in (dest / "ch/environment").read_text()


def test_assemble_is_reproducible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = base_archive(tmp_path / "base.tar", [BASE_LAYER])
    layer = new_layer(tmp_path)
    kwargs = {"env": {"A": "1", "B": "2"}, "labels": {"l": "v"}, "repo_tag": "x/y:z"}
    one = image.assemble(base, [layer], tmp_path / "1.tar", **kwargs)  # type: ignore[arg-type]
    two = image.assemble(base, [layer], tmp_path / "2.tar", **kwargs)  # type: ignore[arg-type]
    assert one == two
    assert (tmp_path / "1.tar").read_bytes() == (tmp_path / "2.tar").read_bytes()
    assert one.config["created"] == "1970-01-01T00:00:00Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    three = image.assemble(base, [layer], tmp_path / "3.tar", **kwargs)  # type: ignore[arg-type]
    assert three.config["created"] == "2023-11-14T22:13:20Z"
    assert three.image_id != one.image_id
    other = image.assemble(base, [new_layer(tmp_path, "other")], tmp_path / "4.tar")
    assert other.image_id != one.image_id


def test_assemble_env_replaces_in_place_and_dedups(tmp_path: Path) -> None:
    base = base_archive(tmp_path / "base.tar", [BASE_LAYER],
                        env=["A=1", "PATH=/usr/bin", "A=dup", "B=2"])
    info = image.assemble(base, [], tmp_path / "o.tar", env={"PATH": "/opt/venv/bin:/usr/bin", "A": "9"})
    assert info.config["config"]["Env"] == ["A=9", "PATH=/opt/venv/bin:/usr/bin", "B=2"]
    with pytest.raises(VenvoyError, match="bad environment variable"):
        image.assemble(base, [], tmp_path / "bad.tar", env={"A=B": "1"})


def test_assemble_without_env_keeps_config(tmp_path: Path) -> None:
    base = base_archive(tmp_path / "base.tar", [BASE_LAYER], history=False)
    info = image.assemble(base, [new_layer(tmp_path)], tmp_path / "o.tar")
    assert info.config["config"]["Env"] == ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"]
    assert len(info.config["history"]) == 2  # a made-up entry for the base layer, then ours


def test_assemble_from_gzip_docker_archive(tmp_path: Path) -> None:
    plain = image.assemble(base_archive(tmp_path / "p.tar", [BASE_LAYER]), [], tmp_path / "p-out.tar")
    gz = image.assemble(base_archive(tmp_path / "g.tar", [BASE_LAYER], gzip_layers=True), [],
                        tmp_path / "g-out.tar")
    assert plain.diff_ids == gz.diff_ids == (sha(BASE_LAYER),)
    assert (tmp_path / "p-out.tar").read_bytes() == (tmp_path / "g-out.tar").read_bytes()


@pytest.mark.parametrize("nested", [False, True])
def test_assemble_from_oci_archive(tmp_path: Path, nested: bool) -> None:
    base = oci_base(tmp_path / "oci.tar", [BASE_LAYER, SECOND_LAYER], nested=nested)
    seen = image.inspect_archive(base)
    assert seen.diff_ids == (sha(BASE_LAYER), sha(SECOND_LAYER))
    assert seen.repo_tags == ("base:oci",)
    layer = new_layer(tmp_path)
    out = tmp_path / "img.tar"
    info = image.assemble(base, [layer], out, env={"PATH": "/opt/venv/bin:/usr/bin:/bin"})
    assert info.diff_ids == (sha(BASE_LAYER), sha(SECOND_LAYER), sha(layer.read_bytes()))
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        for name in manifest[0]["Layers"]:  # written uncompressed
            assert tar.extractfile(name).read(2) != b"\x1f\x8b"  # type: ignore[union-attr]
    dest = tmp_path / "rootfs"
    unpack_image(out, dest)
    assert (dest / "usr/bin/tool").read_text() == "v2"
    assert (dest / "opt/venv/hello.txt").read_text() == "hello\n"


def test_oci_tag_only_ref_is_not_a_repo_tag(tmp_path: Path) -> None:
    assert image.inspect_archive(oci_base(tmp_path / "o.tar", [BASE_LAYER], ref="latest")).repo_tags == ()


def test_assemble_lenient_without_diff_ids(tmp_path: Path) -> None:
    """The tests' minimal archives carry no rootfs: diff_ids are computed instead."""
    base = docker_archive(tmp_path / "d.tar", [BASE_LAYER, layer_tar([("file", "x", "1")], compress=True)])
    info = image.assemble(base, [], tmp_path / "o.tar")
    assert info.diff_ids[0] == sha(BASE_LAYER)
    oci = oci_archive(tmp_path / "o2.tar", [BASE_LAYER])
    assert image.assemble(oci, [], tmp_path / "o3.tar").diff_ids == (sha(BASE_LAYER),)


def test_assemble_same_layer_twice_is_stored_once(tmp_path: Path) -> None:
    base = base_archive(tmp_path / "base.tar", [BASE_LAYER])
    layer = new_layer(tmp_path)
    info = image.assemble(base, [layer, layer], tmp_path / "o.tar")
    assert info.diff_ids[1] == info.diff_ids[2]
    with tarfile.open(tmp_path / "o.tar") as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert len(manifest[0]["Layers"]) == 3 and len(set(manifest[0]["Layers"])) == 2
    assert len(names) == 4  # two layer files, config, manifest
    unpack_image(tmp_path / "o.tar", tmp_path / "rootfs")


def test_assemble_rejects_a_corrupt_base(tmp_path: Path) -> None:
    base = base_archive(tmp_path / "base.tar", [BASE_LAYER])
    with tarfile.open(base) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    members["l0/layer.tar"] = SECOND_LAYER  # the config still names BASE_LAYER's digest
    with tarfile.open(base, "w") as tar:
        for name, data in members.items():
            _add(tar, name, data)
    out = tmp_path / "o.tar"
    with pytest.raises(VenvoyError, match="does not match its diff_id"):
        image.assemble(base, [], out)
    assert not out.exists() and list(tmp_path.glob(".*.tmp")) == []


def test_assemble_errors(tmp_path: Path) -> None:
    with pytest.raises(VenvoyError, match="cannot read image archive"):
        image.assemble(tmp_path / "missing.tar", [], tmp_path / "o.tar")
    junk = tmp_path / "junk.tar"
    with tarfile.open(junk, "w") as tar:
        _add(tar, "hello", b"x")
    with pytest.raises(VenvoyError, match="not a Docker or OCI image archive"):
        image.inspect_archive(junk)
    base = base_archive(tmp_path / "base.tar", [BASE_LAYER])
    with pytest.raises(VenvoyError, match="cannot read layer"):
        image.assemble(base, [tmp_path / "nope.tar"], tmp_path / "o.tar")
    assert not (tmp_path / "o.tar").exists()


def test_copy_as_docker_archive_keeps_image_id(tmp_path: Path) -> None:
    base = oci_base(tmp_path / "oci.tar", [BASE_LAYER])
    before = image.inspect_archive(base)
    after = image.copy_as_docker_archive(base, tmp_path / "d.tar")
    assert after.image_id == before.image_id
    assert after.config == before.config
    with tarfile.open(tmp_path / "d.tar") as tar:
        assert "manifest.json" in tar.getnames()


# -- rootfs_to_archive ----------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True])
def test_rootfs_to_archive(tmp_path: Path, compress: bool) -> None:
    data = layer_tar([("dir", "./"), ("dir", "./usr"), ("dir", "./usr/bin"),
                      ("file", "./usr/bin/python3.11", "py"), ("sym", "./usr/bin/python3", "python3.11")])
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(gzip.compress(data) if compress else data)
    info = image.rootfs_to_archive(rootfs, tmp_path / "img.tar", repo_tag="localhost/base:1")
    assert info.diff_ids == (sha(data),)
    assert info.config["config"]["Env"] == [f"PATH={image.DEFAULT_PATH}", "LANG=C.UTF-8"]
    assert info.config["architecture"] == image.host_architecture()
    assert info.config["os"] == "linux"
    assert info.repo_tags == ("localhost/base:1",)
    custom = image.rootfs_to_archive(rootfs, tmp_path / "img2.tar", env={"LANG": "C", "X": "1"})
    assert custom.config["config"]["Env"] == [f"PATH={image.DEFAULT_PATH}", "LANG=C", "X=1"]
    dest = tmp_path / "unpacked"
    unpack_image(tmp_path / "img.tar", dest)
    assert (dest / "usr/bin/python3").is_symlink()
    # the same rootfs gives the same image
    again = image.rootfs_to_archive(rootfs, tmp_path / "img3.tar", repo_tag="localhost/base:1")
    assert again.image_id == info.image_id
    assert (tmp_path / "img3.tar").read_bytes() == (tmp_path / "img.tar").read_bytes()


def test_open_layers(tmp_path: Path) -> None:
    base = oci_base(tmp_path / "oci.tar", [BASE_LAYER, SECOND_LAYER])
    with image.open_layers(base) as layers:
        names = [[m.name for m in layer] for layer in layers]
    assert names[1] == ["usr", "usr/bin", "usr/bin/tool"]


# -- one reader, one platform rule (issue 7) ------------------------------------------------

def other_arch() -> str:
    return "arm64" if image.host_architecture() != "arm64" else "amd64"


def multi_platform_oci(path: Path, platforms: list[tuple[str, str]], *, nested: bool) -> Path:
    """An OCI archive with one image per (os, architecture), each with a file naming it."""
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict[str, object]:
        blobs[sha(data)] = data
        return {"digest": sha(data), "size": len(data)}

    descs = []
    for os_name, arch in platforms:
        layer = layer_tar([("file", "arch", arch)])
        cfg = blob(json.dumps({"architecture": arch, "os": os_name,
                               "config": {"Env": [f"ARCH={arch}"]},
                               "rootfs": {"type": "layers", "diff_ids": [sha(layer)]}}).encode())
        manifest = blob(json.dumps({"schemaVersion": 2, "config": cfg,
                                    "layers": [blob(layer)]}).encode())
        descs.append({**manifest, "platform": {"architecture": arch, "os": os_name}})
    if nested:
        top = [{**blob(json.dumps({"schemaVersion": 2, "manifests": descs}).encode()),
                "annotations": {"org.opencontainers.image.ref.name": "multi:1"}}]
    else:
        top = descs
    with tarfile.open(path, "w") as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _add(tar, "index.json", json.dumps({"schemaVersion": 2, "manifests": top}).encode())
        for digest, data in blobs.items():
            _add(tar, "blobs/sha256/" + digest.split(":")[1], data)
    return path


@pytest.mark.parametrize("nested", [False, True])
def test_unpack_takes_the_hosts_platform_not_the_first(tmp_path: Path, nested: bool) -> None:
    host = image.host_architecture()
    archive = multi_platform_oci(tmp_path / "multi.tar",
                                 [("linux", other_arch()), ("linux", host)], nested=nested)
    dest = tmp_path / "img"
    unpack_image(archive, dest)
    assert (dest / "arch").read_text() == host
    assert (dest / "ch" / "environment").read_text() == f"ARCH={host}\n"
    # every reader agrees: the image built on is the image unpacked
    assert image.inspect_archive(archive).config["architecture"] == host
    with image.open_layers(archive) as layers:
        assert [m.name for layer in layers for m in layer] == ["arch"]


def test_archive_without_the_hosts_platform_is_one_clear_error(tmp_path: Path) -> None:
    archive = multi_platform_oci(tmp_path / "multi.tar",
                                 [("linux", other_arch()), ("linux", "s390x"), ("unknown", "unknown")],
                                 nested=True)
    for call in (image.inspect_archive, lambda a: unpack_image(a, tmp_path / "img")):
        with pytest.raises(VenvoyError, match=f"no image for linux/{image.host_architecture()}") as info:
            call(archive)
        assert "\n" not in str(info.value)
        assert f"linux/{other_arch()}" in str(info.value)
    assert not (tmp_path / "img").exists()


def test_a_single_image_of_another_platform_is_still_taken(tmp_path: Path) -> None:
    # attestation manifests ("unknown/unknown") do not count as images
    archive = multi_platform_oci(tmp_path / "one.tar", [("unknown", "unknown"), ("linux", other_arch())],
                                 nested=True)
    unpack_image(archive, tmp_path / "img")
    assert (tmp_path / "img" / "arch").read_text() == other_arch()


def test_docker_archive_with_several_images_takes_the_hosts(tmp_path: Path) -> None:
    host = image.host_architecture()
    path = tmp_path / "two.tar"
    with tarfile.open(path, "w") as tar:
        entries = []
        for arch in (other_arch(), host):
            _add(tar, f"{arch}/layer.tar", layer_tar([("file", "arch", arch)]))
            _add(tar, f"{arch}.json", json.dumps({"architecture": arch, "os": "linux"}).encode())
            entries.append({"Config": f"{arch}.json", "RepoTags": [f"x:{arch}"],
                            "Layers": [f"{arch}/layer.tar"]})
        _add(tar, "manifest.json", json.dumps(entries).encode())
    assert image.inspect_archive(path).repo_tags == (f"x:{host}",)
    unpack_image(path, tmp_path / "img")
    assert (tmp_path / "img" / "arch").read_text() == host


def test_zstd_layers_need_only_zstandard(tmp_path: Path) -> None:
    import zstandard

    zstd_layer = zstandard.ZstdCompressor().compress(BASE_LAYER)
    path = tmp_path / "zstd.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "l0/layer.tar", zstd_layer)
        _add(tar, "config.json", json.dumps(
            {"architecture": "amd64", "os": "linux", "config": {},
             "rootfs": {"type": "layers", "diff_ids": [sha(BASE_LAYER)]}}).encode())
        _add(tar, "manifest.json", json.dumps(
            [{"Config": "config.json", "RepoTags": ["z:1"], "Layers": ["l0/layer.tar"]}]).encode())
    unpack_image(path, tmp_path / "img")
    assert (tmp_path / "img" / "etc" / "os-release").read_text() == "ID=test\n"
    info = image.assemble(path, [new_layer(tmp_path)], tmp_path / "out.tar")
    assert info.diff_ids[0] == sha(BASE_LAYER)  # decompressed, checked against its diff_id


def test_damaged_zstd_layer_is_one_clear_error(tmp_path: Path) -> None:
    import zstandard

    data = zstandard.ZstdCompressor().compress(BASE_LAYER)
    path = tmp_path / "zstd.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "l0/layer.tar", data[:20] + b"\xff" * 40 + data[60:])
        _add(tar, "config.json", b'{"config": {}}')
        _add(tar, "manifest.json", json.dumps(
            [{"Config": "config.json", "Layers": ["l0/layer.tar"]}]).encode())
    with pytest.raises(VenvoyError) as info:
        unpack_image(path, tmp_path / "img")
    assert "\n" not in str(info.value)
    with pytest.raises(VenvoyError):
        image.assemble(path, [], tmp_path / "out.tar")
    assert not (tmp_path / "img").exists()
    assert not (tmp_path / "out.tar").exists()


def test_several_images_without_platforms_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "two.tar"
    with tarfile.open(path, "w") as tar:
        entries = []
        for i in range(2):
            _add(tar, f"{i}/layer.tar", layer_tar([("file", "n", str(i))]))
            _add(tar, f"{i}.json", json.dumps({"config": {}}).encode())
            entries.append({"Config": f"{i}.json", "Layers": [f"{i}/layer.tar"]})
        _add(tar, "manifest.json", json.dumps(entries).encode())
    with pytest.raises(VenvoyError, match="it has an image that names no platform"):
        image.inspect_archive(path)
