"""Unpacking Docker-archive and OCI-layout tars without any runtime, safely."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from venvoy.core.errors import VenvoyError
from venvoy.image.unpack import unpack_image

from ._archives import _add, docker_archive, layer_tar, oci_archive

LOWER = [
    ("dir", "etc"),
    ("file", "etc/a.txt", "one"),
    ("file", "etc/gone.txt", "bye"),
    ("dir", "opq"),
    ("file", "opq/x", "x"),
    ("dir", "opq/sub"),
    ("file", "opq/sub/y", "y"),
    ("file", ".hidden", "h"),
    ("sym", "abs-link", "/etc/a.txt"),
    ("sym", "rel-link", "etc/a.txt"),
    ("hard", "etc/a-hard.txt", "etc/a.txt"),
    ("dir", "dev"),
    ("chr", "dev/null"),
    ("fifo", "pipe"),
    ("dir", "bin"),
    ("file", "bin/target", "T"),
    ("sym", "bin/link", "target"),
]
UPPER = [
    ("file", "etc/a.txt", "two"),
    ("file", "etc/.wh.gone.txt", ""),
    ("file", "opq/.wh..wh..opq", ""),
    ("file", "opq/z", "z"),
    ("file", ".wh..hidden", ""),
    ("file", "bin/link", "NEW"),  # a file replaces a lower layer's symlink
]


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_docker_archive_layers_whiteouts_links_env(tmp_path: Path) -> None:
    archive = docker_archive(tmp_path / "img.tar", [layer_tar(LOWER), layer_tar(UPPER)],
                             env=("PATH=/opt/bin:/usr/bin", "GREETING=a b=c"))
    dest = tmp_path / "out" / "img"
    image = unpack_image(archive, dest)

    assert image.repo_tags == ["demo:1"]
    assert image.layers == ["00abc/layer.tar", "01abc/layer.tar"]
    # layers applied in order
    assert (dest / "etc" / "a.txt").read_text() == "two"
    # whiteouts: a file, a dot-file, and an opaque directory
    assert not (dest / "etc" / "gone.txt").exists()
    assert not (dest / ".hidden").exists()
    assert sorted(os.listdir(dest / "opq")) == ["z"]
    assert not any(".wh." in name for name in tree(dest))
    # absolute symlinks stay symlinks, pointing into the image's own root
    assert (dest / "abs-link").is_symlink()
    assert os.readlink(dest / "abs-link") == "/etc/a.txt"
    assert os.readlink(dest / "rel-link") == "etc/a.txt"
    # a hard link inside the image is kept
    assert (dest / "etc" / "a-hard.txt").read_text() == "one"
    # device nodes and fifos are skipped
    assert not (dest / "dev" / "null").exists()
    assert not (dest / "pipe").exists()
    # the upper layer's file replaced the symlink, not the file it pointed to
    assert not (dest / "bin" / "link").is_symlink()
    assert (dest / "bin" / "link").read_text() == "NEW"
    assert (dest / "bin" / "target").read_text() == "T"
    # the image environment is where ch-run --set-env looks for it
    assert (dest / "ch" / "environment").read_text() == "PATH=/opt/bin:/usr/bin\nGREETING=a b=c\n"
    assert json.loads((dest / "ch" / "config.json").read_text())["config"]["Cmd"] == ["sh"]
    # no temporary directory left beside it
    assert os.listdir(dest.parent) == ["img"]


def test_directories_stay_writable_for_later_layers(tmp_path: Path) -> None:
    lower = layer_tar([("dir", "ro"), ("file", "ro/a", "a")])
    # make the directory read-only in the archive
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(lower)) as src, tarfile.open(fileobj=buf, mode="w") as out:
        for m in src.getmembers():
            if m.isdir():
                m.mode = 0o555
            out.addfile(m, src.extractfile(m) if m.isfile() else None)
    upper = layer_tar([("file", "ro/b", "b"), ("file", "ro/.wh.a", "")])
    dest = tmp_path / "img"
    unpack_image(docker_archive(tmp_path / "i.tar", [buf.getvalue(), upper]), dest)
    assert sorted(os.listdir(dest / "ro")) == ["b"]
    assert os.stat(dest / "ro").st_mode & 0o700 == 0o700


def test_empty_env_gives_empty_environment_file(tmp_path: Path) -> None:
    dest = tmp_path / "img"
    archive = docker_archive(tmp_path / "i.tar", [layer_tar([("file", "f", "1")])], env=())
    unpack_image(archive, dest)
    assert (dest / "ch" / "environment").read_text() == ""


def test_existing_destination_is_replaced(tmp_path: Path) -> None:
    dest = tmp_path / "img"
    dest.mkdir()
    (dest / "stale").write_text("old")
    unpack_image(docker_archive(tmp_path / "i.tar", [layer_tar([("file", "new", "1")])]), dest)
    assert (dest / "new").exists()
    assert not (dest / "stale").exists()


@pytest.mark.parametrize("nested", [False, True])
def test_oci_layout_archive(tmp_path: Path, nested: bool) -> None:
    layers = [layer_tar([("dir", "app"), ("file", "app/main.py", "v1"), ("file", "app/old", "o")],
                        compress=True),
              layer_tar([("file", "app/main.py", "v2"), ("file", "app/.wh.old", "")])]
    dest = tmp_path / "oci"
    image = unpack_image(oci_archive(tmp_path / "oci.tar", layers, nested=nested), dest)
    assert image.repo_tags == ["demo:oci"]
    assert all(name.startswith("blobs/sha256/") for name in image.layers)
    assert (dest / "app" / "main.py").read_text() == "v2"
    assert not (dest / "app" / "old").exists()
    assert (dest / "ch" / "environment").read_text() == "LANG=C.UTF-8\n"


def test_whiteout_in_dot_slash_prefixed_layer(tmp_path: Path) -> None:
    lower = layer_tar([("dir", "./"), ("file", "./keep", "k"), ("file", "./gone", "g")])
    upper = layer_tar([("dir", "./"), ("file", "./.wh.gone", "")])
    dest = tmp_path / "img"
    unpack_image(docker_archive(tmp_path / "i.tar", [lower, upper]), dest)
    assert not (dest / ".wh.gone").exists()
    assert not (dest / "gone").exists()


def test_nested_whiteout_in_dot_slash_prefixed_layer(tmp_path: Path) -> None:
    lower = layer_tar([("dir", "./etc"), ("file", "./etc/gone", "g"), ("file", "./etc/keep", "k")])
    upper = layer_tar([("file", "./etc/.wh.gone", "")])
    dest = tmp_path / "img"
    unpack_image(docker_archive(tmp_path / "i.tar", [lower, upper]), dest)
    assert sorted(os.listdir(dest / "etc")) == ["keep"]


# -- refusals: nothing written outside, no destination left behind ------------------------------

def assert_refused(tmp_path: Path, layers: list[bytes]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = docker_archive(tmp_path / "evil.tar", layers)
    before = tree(tmp_path)
    dest = work / "img"
    with pytest.raises(VenvoyError) as info:
        unpack_image(archive, dest)
    assert "\n" not in str(info.value)
    assert not dest.exists()
    assert tree(tmp_path) == before  # nothing new anywhere, temp dir removed


def test_path_traversal_refused(tmp_path: Path) -> None:
    assert_refused(tmp_path, [layer_tar([("file", "ok", "1"), ("file", "../escaped", "x")])])
    assert not (tmp_path / "escaped").exists()


def test_deep_path_traversal_refused(tmp_path: Path) -> None:
    assert_refused(tmp_path, [layer_tar([("file", "a/../../../escaped", "x")])])


def test_hard_link_outside_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    assert_refused(tmp_path, [layer_tar([("hard", "stolen", str(secret))])])
    assert os.stat(secret).st_nlink == 1


def test_relative_hard_link_outside_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("secret")
    assert_refused(tmp_path, [layer_tar([("hard", "stolen", "../../secret.txt")])])
    assert os.stat(tmp_path / "secret.txt").st_nlink == 1


def test_write_through_absolute_symlink_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    layers = [layer_tar([("sym", "escape", str(outside))]),
              layer_tar([("file", "escape/pwned", "x")])]
    assert_refused(tmp_path, layers)
    assert list(outside.iterdir()) == []


def test_write_through_relative_symlink_refused(tmp_path: Path) -> None:
    layers = [layer_tar([("dir", "a"), ("sym", "a/up", "../../.."), ("file", "a/up/escaped", "x")])]
    assert_refused(tmp_path, layers)
    assert not (tmp_path / "escaped").exists()


def test_hard_link_through_symlinked_directory_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("secret")
    layers = [layer_tar([("sym", "esc", str(tmp_path)), ("hard", "stolen", "esc/secret.txt")])]
    assert_refused(tmp_path, layers)
    assert os.stat(tmp_path / "secret.txt").st_nlink == 1


def test_set_id_bits_and_foreign_write_bits_dropped(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, mode in (("suid", 0o4755), ("sgid", 0o2755), ("world", 0o666)):
            info = tarfile.TarInfo(name)
            info.mode = mode
            tar.addfile(info, io.BytesIO(b""))
    dest = tmp_path / "img"
    unpack_image(docker_archive(tmp_path / "i.tar", [buf.getvalue()]), dest)
    assert os.stat(dest / "suid").st_mode & 0o7777 == 0o755
    assert os.stat(dest / "sgid").st_mode & 0o7777 == 0o755
    assert os.stat(dest / "world").st_mode & 0o022 == 0


def test_whiteout_cannot_delete_outside(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    dest = tmp_path / "work" / "img"
    dest.parent.mkdir()
    layers = [layer_tar([("file", "a", "1")]),
              layer_tar([("file", "../../.wh.victim", ""), ("file", "../.wh..wh..opq", "")])]
    # Refusing the archive and skipping the bad whiteouts are both fine; deleting is not.
    with contextlib.suppress(VenvoyError):
        unpack_image(docker_archive(tmp_path / "i.tar", layers), dest)
    assert victim.read_text() == "keep me"
    assert (tmp_path / "i.tar").exists()


def test_absolute_member_name_never_lands_outside(tmp_path: Path) -> None:
    # Python's "tar" filter, like GNU tar, strips the leading "/": the member
    # lands inside the destination (or the archive is refused), never at the path.
    target = tmp_path / "abs" / "file"
    dest = tmp_path / "work" / "img"
    dest.parent.mkdir()
    try:
        unpack_image(docker_archive(tmp_path / "i.tar", [layer_tar([("file", str(target), "x")])]),
                     dest)
    except VenvoyError:
        assert not dest.exists()
    else:
        assert (dest / str(target).lstrip("/")).read_text() == "x"
    assert not target.exists()
    assert not (tmp_path / "abs").exists()


# -- malformed archives -------------------------------------------------------------------------

def test_not_an_image_archive(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "hello.txt", b"hi")
    with pytest.raises(VenvoyError, match="not a Docker or OCI image archive"):
        unpack_image(path, tmp_path / "img")
    assert not (tmp_path / "img").exists()


def test_not_a_tar_at_all(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    path.write_bytes(b"definitely not a tar file" * 40)
    with pytest.raises(VenvoyError, match=r"cannot read image archive .*: not a tar archive") as info:
        unpack_image(path, tmp_path / "img")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "img").exists()


def test_missing_layer(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "cfg.json", b"{}")
        _add(tar, "manifest.json",
             json.dumps([{"Config": "cfg.json", "Layers": ["nope/layer.tar"]}]).encode())
    with pytest.raises(VenvoyError):
        unpack_image(path, tmp_path / "img")
    assert not (tmp_path / "img").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["x.tar"]


def test_empty_manifest(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "manifest.json", b"[]")
    with pytest.raises(VenvoyError, match="lists no image"):
        unpack_image(path, tmp_path / "img")


def test_bad_digest_in_oci_index(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "index.json", json.dumps({"manifests": [{"digest": "sha256:../../x"}]}).encode())
    with pytest.raises(VenvoyError, match="bad digest"):
        unpack_image(path, tmp_path / "img")


def test_charliecloud_load_archive_unpacks_under_dest(tmp_path: Path) -> None:
    from venvoy.runtime.charliecloud import Charliecloud

    archive = docker_archive(tmp_path / "i.tar", [layer_tar([("file", "hello", "hi")])])
    ch = Charliecloud("/usr/bin/ch-run", {"USER": "u"})
    result = ch.load_archive(archive, "demo/app:1.0", tmp_path / "images")
    assert result == str(tmp_path / "images" / "demo_app_1.0")
    assert (Path(result) / "hello").read_text() == "hi"


# -- never through a link (issue 8, item 1) ----------------------------------------------------

def raw_layer(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, *, mode: int = 0o644, uid: int = 0,
          mtime: int = 1_700_000_000, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime, info.linkname = kind, mode, uid, uid, mtime, link
    return info


def file(name: str, data: bytes, **kw: int) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, **kw), data  # type: ignore[arg-type]


def snapshot(root: Path) -> dict[str, tuple[int, int, int, int, int]]:
    """Every entry's lstat: what must not change outside the image."""
    out = {}
    for path in [root, *root.rglob("*")]:
        st = os.lstat(path)
        out[str(path)] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size)
    return out


def canary_dir(tmp_path: Path) -> Path:
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep").write_text("keep")
    canary.chmod(0o751)
    os.utime(canary, (1_600_000_000, 1_600_000_000))
    return canary


@pytest.mark.parametrize("absolute", [True, False])
def test_directory_entry_over_a_symlink_never_changes_its_target(tmp_path: Path, absolute: bool) -> None:
    canary = canary_dir(tmp_path)
    before = snapshot(canary)
    target = str(canary) if absolute else "../../canary"
    layer = raw_layer((entry("v", tarfile.SYMTYPE, link=target), None),
                      (entry("v", tarfile.DIRTYPE, mode=0o000, uid=4242, mtime=0), None),
                      file("v/inside", b"x"))
    dest = tmp_path / "work" / "img"
    unpack_image(docker_archive(tmp_path / "i.tar", [layer]), dest)
    assert snapshot(canary) == before
    assert not (dest / "v").is_symlink() and (dest / "v").is_dir()
    assert (dest / "v" / "inside").read_bytes() == b"x"
    assert os.stat(dest / "v").st_mode & 0o777 == 0o700
    if os.geteuid() == 0:
        assert os.stat(dest / "v").st_uid == 4242  # kept as root, on the directory itself


def test_directory_over_a_symlink_from_a_lower_layer(tmp_path: Path) -> None:
    canary = canary_dir(tmp_path)
    before = snapshot(canary)
    lower = raw_layer((entry("v", tarfile.SYMTYPE, link=str(canary)), None))
    upper = raw_layer((entry("v", tarfile.DIRTYPE, mode=0o000, uid=4242, mtime=0), None))
    dest = tmp_path / "img"
    unpack_image(docker_archive(tmp_path / "i.tar", [lower, upper]), dest)
    assert snapshot(canary) == before
    assert (dest / "v").is_dir() and not (dest / "v").is_symlink()


def test_symlink_over_a_directory_replaces_it(tmp_path: Path) -> None:
    canary = canary_dir(tmp_path)
    before = snapshot(canary)
    lower = raw_layer((entry("d", tarfile.DIRTYPE, mode=0o755), None), file("d/f", b"1"))
    upper = raw_layer((entry("d", tarfile.SYMTYPE, link=str(canary), uid=4242), None))
    dest = tmp_path / "img"
    unpack_image(docker_archive(tmp_path / "i.tar", [lower, upper]), dest)
    assert os.readlink(dest / "d") == str(canary)
    assert snapshot(canary) == before
    if os.geteuid() == 0:
        assert os.lstat(dest / "d").st_uid == 4242  # the link's owner, not its target's


def test_whiteouts_and_opaque_markers_never_act_through_a_link(tmp_path: Path) -> None:
    canary = canary_dir(tmp_path)
    before = snapshot(canary)
    lower = raw_layer((entry("l", tarfile.SYMTYPE, link=str(canary)), None),
                      (entry("r", tarfile.SYMTYPE, link="../../canary"), None))
    upper = raw_layer(file("l/.wh.keep", b""),
                      file("r/.wh..wh..opq", b"n"),
                      file("l/.wh..wh..opq", b"n"))
    dest = tmp_path / "work" / "img"
    unpack_image(docker_archive(tmp_path / "i.tar", [lower, upper]), dest)
    assert snapshot(canary) == before
    assert (dest / "l").is_symlink()


def test_metadata_directory_ch_as_a_link_is_replaced_not_written_through(tmp_path: Path) -> None:
    canary = canary_dir(tmp_path)
    before = snapshot(canary)
    layer = raw_layer((entry("ch", tarfile.SYMTYPE, link=str(canary)), None))
    dest = tmp_path / "img"
    unpack_image(docker_archive(tmp_path / "i.tar", [layer]), dest)
    assert snapshot(canary) == before
    assert not (dest / "ch").is_symlink()
    assert (dest / "ch" / "environment").read_text() == "PATH=/usr/local/bin:/usr/bin\n"


def test_file_over_a_dangling_link_is_written_inside(tmp_path: Path) -> None:
    outside = tmp_path / "made-outside"
    lower = raw_layer((entry("f", tarfile.SYMTYPE, link=str(outside)), None))
    upper = raw_layer(file("f", b"inside"))
    dest = tmp_path / "img"
    unpack_image(docker_archive(tmp_path / "i.tar", [lower, upper]), dest)
    assert not outside.exists()
    assert (dest / "f").read_bytes() == b"inside"


def test_same_layer_whiteout_and_opaque_hide_only_lower_layers(tmp_path: Path) -> None:
    lower = layer_tar([("dir", "d"), ("file", "d/old", "o"), ("dir", "d/sub"), ("file", "d/sub/old", "o")])
    upper = raw_layer(file("d/new", b"n"),
                      (entry("d/sub", tarfile.DIRTYPE, mode=0o755), None),
                      file("d/sub/mine", b"n"),
                      file("d/.wh..wh..opq", b""),
                      file("d/.wh.new", b""))
    dest = tmp_path / "img"
    unpack_image(docker_archive(tmp_path / "i.tar", [lower, upper]), dest)
    assert sorted(os.listdir(dest / "d")) == ["new", "sub"]
    assert os.listdir(dest / "d" / "sub") == ["mine"]


def test_set_id_bits_dropped_on_directories_too(tmp_path: Path) -> None:
    layer = raw_layer((entry("d", tarfile.DIRTYPE, mode=0o7777), None),
                      file("d/f", b"x", mode=0o6777))
    dest = tmp_path / "img"
    unpack_image(docker_archive(tmp_path / "i.tar", [layer]), dest)
    assert os.stat(dest / "d").st_mode & 0o7777 == 0o755
    assert os.stat(dest / "d" / "f").st_mode & 0o7777 == 0o755


def test_hard_link_to_a_directory_or_missing_file_refused(tmp_path: Path) -> None:
    assert_refused(tmp_path, [raw_layer((entry("d", tarfile.DIRTYPE), None),
                                        (entry("h", tarfile.LNKTYPE, link="d"), None))])


def test_hard_link_inside_keeps_its_target_mode(tmp_path: Path) -> None:
    layer = raw_layer(file("a", b"a", mode=0o640),
                      (entry("b", tarfile.LNKTYPE, link="/a", mode=0o4777), None))
    dest = tmp_path / "img"
    unpack_image(docker_archive(tmp_path / "i.tar", [layer]), dest)
    assert os.stat(dest / "b").st_ino == os.stat(dest / "a").st_ino
    assert os.stat(dest / "a").st_mode & 0o7777 == 0o640


def test_file_inside_a_file_refused(tmp_path: Path) -> None:
    assert_refused(tmp_path, [layer_tar([("file", "f", "1"), ("file", "f/g", "2")])])


def test_huge_pax_header_refused_before_it_is_read(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("f")
        info.pax_headers = {"comment": "x" * (2 << 20)}
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(VenvoyError, match=r"pax header of .* bytes \(more than") as exc:
        unpack_image(docker_archive(tmp_path / "i.tar", [buf.getvalue()]), tmp_path / "img")
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "img").exists()


def sparse_layer(realsize: int, offset: int, data: bytes) -> bytes:
    """A GNU sparse 1.0 member: ``data`` at ``offset``, holes elsewhere."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("GNUSparseFile.0/s")
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                            "GNU.sparse.name": "s", "GNU.sparse.realsize": str(realsize)}
        payload = f"1\n{offset}\n{len(data)}\n".encode().ljust(512, b"\0") + data
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def test_sparse_member_keeps_its_holes(tmp_path: Path) -> None:
    dest = tmp_path / "img"
    unpack_image(docker_archive(tmp_path / "i.tar", [sparse_layer(1 << 30, 4096, b"DATA")]), dest)
    st = os.stat(dest / "s")
    assert st.st_size == 1 << 30
    assert st.st_blocks * 512 < 1 << 20  # the holes take no space
    with open(dest / "s", "rb") as fh:
        fh.seek(4090)
        assert fh.read(12) == b"\0" * 6 + b"DATA" + b"\0" * 2


def test_sparse_member_counts_at_its_full_size(tmp_path: Path) -> None:
    with pytest.raises(VenvoyError, match="more than the limit"):
        unpack_image(docker_archive(tmp_path / "i.tar", [sparse_layer(1 << 40, 0, b"x")]),
                     tmp_path / "img")
    assert not (tmp_path / "img").exists()


def test_zstd_compressed_layer(tmp_path: Path) -> None:
    import zstandard

    layer = zstandard.ZstdCompressor().compress(layer_tar([("file", "z", "zstd")]))
    dest = tmp_path / "img"
    unpack_image(docker_archive(tmp_path / "i.tar", [layer]), dest)
    assert (dest / "z").read_text() == "zstd"


def test_too_deep_a_tree_refused_and_nothing_left(tmp_path: Path) -> None:
    assert_refused(tmp_path, [layer_tar([("dir", "/".join(["a"] * 300))])])


def test_destination_that_is_a_symlink_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "dest").symlink_to(real)
    with pytest.raises(VenvoyError, match="symbolic link"):
        unpack_image(docker_archive(tmp_path / "i.tar", [layer_tar([("file", "f", "1")])]),
                     tmp_path / "dest")
    assert os.listdir(real) == []


def test_unpacked_size_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VENVOY_ARCHIVE_MAX_BYTES", "1000")
    layers = [layer_tar([("file", "a", "x" * 600)]), layer_tar([("file", "b", "y" * 600)])]
    with pytest.raises(VenvoyError, match="more than the limit") as info:
        unpack_image(docker_archive(tmp_path / "i.tar", layers), tmp_path / "img")
    assert "VENVOY_ARCHIVE_MAX_BYTES" in str(info.value)
    assert not (tmp_path / "img").exists()


# -- one bounded tar reader for every layer -------------------------------------------


def test_layers_are_read_by_the_one_bounded_reader(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Unpacking (and looking into layers) reads the archive and its layers with
    tarsafe.TarReader, not tarfile."""
    from venvoy.image import oci, tarsafe

    seen: list[str] = []
    real_next = tarsafe.TarReader.next

    def counting(self: tarsafe.TarReader) -> tarsafe.TarEntry | None:
        entry = real_next(self)
        if entry is not None:
            seen.append(entry.name)
        return entry

    monkeypatch.setattr(tarsafe.TarReader, "next", counting)
    archive = docker_archive(tmp_path / "i.tar", [layer_tar([("file", "etc/a", "1")])])
    unpack_image(archive, tmp_path / "img")
    assert "etc/a" in seen and "manifest.json" in seen  # the layers and the archive itself
    seen.clear()
    with oci.open_layers(archive) as layers:
        assert [[e.name for e in layer] for layer in layers] == [["etc/a"]]
    assert "etc/a" in seen and "manifest.json" in seen


def raw_header(name: str, kind: bytes, size: int, extra: dict[int, bytes] | None = None) -> bytes:
    """One ustar/GNU header block, by hand (tarfile cannot write old GNU sparse headers)."""
    block = bytearray(512)
    block[0:len(name)] = name.encode()
    block[100:108] = b"0000644\0"
    for at in (108, 116):
        block[at:at + 8] = b"0000000\0"
    block[124:136] = f"{size:011o}\0".encode()
    block[136:148] = b"00000000000\0"
    block[156:157] = kind
    block[257:265] = b"ustar  \0"
    for at, data in (extra or {}).items():
        block[at:at + len(data)] = data
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block)


def test_old_gnu_sparse_member(tmp_path: Path) -> None:
    data = b"DATA"
    head = raw_header("s", b"S", len(data), {386: b"%011o\0%011o\0" % (8192, len(data)),
                                             483: b"%011o\0" % (1 << 20)})
    layer = head + data.ljust(512, b"\0") + bytes(1024)
    dest = tmp_path / "img"
    unpack_image(docker_archive(tmp_path / "i.tar", [layer]), dest)
    assert (dest / "s").stat().st_size == 1 << 20
    with open(dest / "s", "rb") as fh:
        fh.seek(8190)
        assert fh.read(8) == b"\0\0DATA\0\0"


def test_pax_sparse_01_member_and_pax_attributes(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("GNUSparseFile.0/s")
        info.pax_headers = {"GNU.sparse.major": "0", "GNU.sparse.minor": "1",
                            "GNU.sparse.name": "s", "GNU.sparse.size": "8192",
                            "GNU.sparse.map": "4096,4", "mtime": "1234567890.5"}
        info.size = 4
        tar.addfile(info, io.BytesIO(b"DATA"))
        big = tarfile.TarInfo("owned")
        big.uid = big.gid = 1 << 22  # more than 7 octal digits hold: a pax record
        big.mode = 0o4777  # set-id and group/other write dropped
        tar.addfile(big, io.BytesIO(b""))
    dest = tmp_path / "img"
    unpack_image(docker_archive(tmp_path / "i.tar", [buf.getvalue()]), dest)
    st = (dest / "s").stat()
    assert st.st_size == 8192 and st.st_mtime == 1234567890.5
    assert (dest / "s").read_bytes()[4096:4100] == b"DATA"
    owned = (dest / "owned").stat()
    assert owned.st_mode & 0o7777 == 0o755
    if os.geteuid() == 0:
        assert (owned.st_uid, owned.st_gid) == (1 << 22, 1 << 22)


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz", "zstd", "none"])
def test_every_layer_compression_is_read_in_one_place(tmp_path: Path, kind: str) -> None:
    import bz2
    import gzip
    import lzma

    import zstandard

    from venvoy.image import compress

    raw = layer_tar([("file", "etc/a", "1")])
    packed = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress,
              "zstd": zstandard.ZstdCompressor().compress, "none": bytes}[kind](raw)
    assert compress.kind_of(packed[:compress.HEAD]) == kind
    assert compress.decompressed(io.BytesIO(packed)).read() == raw
    unpack_image(docker_archive(tmp_path / "i.tar", [packed]), tmp_path / "img")
    assert (tmp_path / "img" / "etc" / "a").read_text() == "1"
