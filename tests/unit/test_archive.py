"""The `archive` export format and its import, with a small environment made without any runtime.

The hostile-archive suite builds each bad archive itself (with :mod:`tarfile`,
which happily writes what venvoy must refuse) and checks that the import fails
with one line naming the member, that nothing was written outside the store's
temporary directory, and that the store gained no environment and no image.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import socket
import tarfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from venvoy.build.lock import lock_hash
from venvoy.core.errors import VenvoyError
from venvoy.image import tarsafe
from venvoy.image.oci import add_files_layer, assemble, rootfs_to_archive
from venvoy.store import records
from venvoy.store.layout import Store
from venvoy.transport import archive
from venvoy.transport.sniff import sniff_format

from ._archives import layer_tar

LOCK = """\
lock-version = "1.0"
created-by = "uv"
requires-python = ">=3.11"

[[packages]]
name = "six"
version = "1.17.0"
wheels = [{ url = "https://files.example/six-1.17.0-py2.py3-none-any.whl", size = 11050, \
hashes = { sha256 = "4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274" } }]
"""
IDENTITY = "ab" * 32
SIF = b"#!/usr/bin/env run-singularity\n\x00SIF_MAGIC\x000123" + bytes(200)


def make_image(tmp: Path, text: str = "hello") -> tuple[Path, str]:
    """A two-layer docker archive with venvoy's labels; returns (path, image_id)."""
    rootfs = tmp / f"rootfs-{text}.tar"
    rootfs.write_bytes(layer_tar([("dir", "etc"), ("file", "etc/hello", text),
                                  ("sym", "etc/link", "hello")]))
    base = rootfs_to_archive(rootfs, tmp / f"base-{text}.tar")
    layer = tmp / f"layer-{text}.tar"
    add_files_layer({"opt/venvoy/pylock.toml": LOCK.encode()}, layer)
    out = tmp / f"image-{text}.tar"
    info = assemble(tmp / f"base-{text}.tar", [layer], out,
                    labels={"org.venvoy.identity": IDENTITY, "org.venvoy.lock-hash": lock_hash(LOCK)},
                    repo_tag="localhost/venvoy/demo:abababababab")
    assert info.image_id != base.image_id
    return out, info.image_id


def make_env(store: Store, tmp: Path, name: str = "demo", requirements: str = "six\n",
             sif: bool = False, text: str = "hello") -> records.Environment:
    image, image_id = make_image(tmp, text)
    dest = store.image_archive(image_id)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(image, dest)
    if sif:
        store.sif(image_id).parent.mkdir(parents=True, exist_ok=True)
        store.sif(image_id).write_bytes(SIF)
    data = {"name": name, "python": "3.11", "requirements": requirements, "base": None,
            "identity": IDENTITY, "image_id": image_id, "lock_hash": lock_hash(LOCK),
            "created": "2026-01-01T00:00:00Z", "packages": 1, "venvoy_version": "0.1.0",
            "recipe": "1", "built_with": "podman"}
    return records.write_env(store, records.EnvRecord.from_dict(data, "test", ""), LOCK)


@pytest.fixture
def source(tmp_path: Path) -> records.Environment:
    return make_env(Store(tmp_path / "src-store", environ={}), tmp_path)


@pytest.fixture
def dest(tmp_path: Path) -> Store:
    return Store(tmp_path / "dest-store", environ={})


def store_state(store: Store) -> dict[str, list[str]]:
    """What is visible in a store (temporaries and locks are not)."""
    out = {}
    for sub in ("envs", "images", "cache/sif"):
        d = store.root / sub
        out[sub] = sorted(p.name for p in d.iterdir()) if d.is_dir() else []
    return out


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(params=["gzip", "zstd"])
def compression(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def zstd() -> str:
    return "zstd"


# -- round trip -------------------------------------------------------------------------------

def test_round_trip(source: records.Environment, dest: Store, tmp_path: Path, compression: str) -> None:
    said: list[str] = []
    out = archive.export_archive(source, tmp_path, compression=compression, progress=said.append)
    assert out == tmp_path / f"demo-{source.lock_hash[:12]}{archive.SUFFIXES[compression]}"
    assert said and not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    env = archive.import_archive(out, store=dest)
    assert env.name == "demo" and env.image_id == source.image_id
    assert env.archive.read_bytes() == source.archive.read_bytes()
    assert env.lock_text == source.lock_text
    assert env.data["imported_from"]["file"] == out.name
    assert {k: v for k, v in env.data.items() if k != "imported_from"} == source.data
    assert (env.dir / "image").read_text().split() == [
        env.image_id, env.identity, str((env.dir / "env.json").stat().st_size)]
    assert not list(dest.tmp.iterdir())  # the temporary directory is gone


def test_zstd_needs_no_program(source: records.Environment, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """zstd comes from the `zstandard` module (a dependency): no `zstd` program is needed."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = archive.export_archive(source, tmp_path)
    assert out.name.endswith(".venvoy.tar.zst") and out.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    assert archive.import_archive(out, store=Store(tmp_path / "other")).name == "demo"


def test_archive_is_a_plain_tar_with_the_manifest_first(source: records.Environment,
                                                        tmp_path: Path) -> None:
    out = archive.export_archive(source, tmp_path / "x.tar.gz")
    with tarfile.open(out, "r:gz") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        root = f"demo-{source.lock_hash[:12]}"
        assert names == [f"{root}/{n}" for n in ("manifest.json", *archive.MEMBERS[:4])]
        assert all(m.isreg() for m in members)
        manifest = json.load(tar.extractfile(members[0]))  # type: ignore[arg-type]
        for entry, member in zip(manifest["members"], members[1:], strict=True):
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            assert entry == {"path": member.name.split("/", 1)[1], "size": len(data),
                             "sha256": hashlib.sha256(data).hexdigest()}
        readme = tar.extractfile(members[1]).read().decode()  # type: ignore[union-attr]
    assert manifest["format"] == "venvoy-archive" and manifest["format_version"] == 1
    assert manifest["image_id"] == source.image_id and manifest["lock_sha256"] == source.lock_hash
    assert manifest["environment"] == source.data and manifest["root"] == root
    assert "podman load -i" in readme and "docker-archive://" in readme and "x.tar.gz" in readme


def test_default_output_in_the_working_directory(source: records.Environment, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    out = archive.export_archive(source, compression="gzip")
    assert out == work / f"demo-{source.lock_hash[:12]}.venvoy.tar.gz"
    assert [p.name for p in work.iterdir()] == [out.name]


def test_output_name_picks_gzip_and_replaces_atomically(source: records.Environment,
                                                        tmp_path: Path) -> None:
    target = tmp_path / "env.tar.gz"
    target.write_text("old")
    out = archive.export_archive(source, target)
    assert out == target and out.read_bytes()[:2] == b"\x1f\x8b"


def test_rename_force_and_idempotence(source: records.Environment, dest: Store, tmp_path: Path) -> None:
    out = archive.export_archive(source, tmp_path, compression="gzip")
    archive.import_archive(out, store=dest)
    again = archive.import_archive(out, store=dest)  # the very same environment: a no-op
    assert again.name == "demo"
    renamed = archive.import_archive(out, store=dest, name="copy")
    assert renamed.name == "copy" and renamed.image_id == source.image_id
    assert renamed.data["imported_from"]["name"] == "demo"
    with pytest.raises(VenvoyError, match="invalid environment name"):
        archive.import_archive(out, store=dest, name="../x")
    # another environment under the same name: an error unless force
    other_store = Store(tmp_path / "other", environ={})
    other_dir = tmp_path / "other-build"
    other_dir.mkdir()
    image, image_id = make_image(other_dir, "different")
    other_store.image_archive(image_id).parent.mkdir(parents=True)
    shutil.move(image, other_store.image_archive(image_id))
    other_env = records.write_env(other_store, replace(source.record, image_id=image_id), LOCK)
    other = archive.export_archive(other_env, tmp_path / "other.tar.gz")
    with pytest.raises(VenvoyError, match="already exists") as exc:
        archive.import_archive(other, store=dest)
    assert "--force" in str(exc.value)
    replaced = archive.import_archive(other, store=dest, force=True)
    assert replaced.image_id == image_id
    assert dest.image_archive(source.image_id).is_file()  # still used by "copy"


def test_an_unverified_sif_is_never_exported_nor_trusted(tmp_path: Path, dest: Store) -> None:
    """A SIF venvoy did not make (no sidecar hash) is not shipped, and the shared SIF
    cache never takes one from an archive: it is rebuilt from the verified image."""
    env = make_env(Store(tmp_path / "s", environ={}), tmp_path, sif=True)
    out = archive.export_archive(env, tmp_path, compression="gzip")
    with tarfile.open(out) as tar:
        assert not [n for n in tar.getnames() if n.endswith("image.sif")]
    imported = archive.import_archive(out, store=dest)
    assert not dest.sif(imported.image_id).exists()


def test_credentials_in_urls_are_not_exported(tmp_path: Path) -> None:
    env = make_env(Store(tmp_path / "s", environ={}), tmp_path,
                   requirements="pkg @ https://alice:s3cret@example.com/pkg.whl\n")
    out = archive.export_archive(env, tmp_path, compression="gzip")
    raw = gzip.decompress(out.read_bytes())
    assert b"s3cret" not in raw and b"https://***@example.com/pkg.whl" in raw


def test_missing_image_is_a_clear_error(source: records.Environment, tmp_path: Path) -> None:
    source.archive.unlink()
    with pytest.raises(VenvoyError, match="missing from the store"):
        archive.export_archive(source, tmp_path, compression="gzip")
    assert not list(tmp_path.glob("*.venvoy.tar.*"))


def test_failed_export_leaves_no_output(source: records.Environment, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, compression: str) -> None:
    def boom(self: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(tarsafe.TarWriter, "close", boom)
    with pytest.raises(RuntimeError):
        archive.export_archive(source, tmp_path, compression=compression)
    assert not [p for p in tmp_path.iterdir() if ".venvoy.tar" in p.name]


def test_failed_publish_leaves_the_store_as_it_was(source: records.Environment, dest: Store,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = archive.export_archive(source, tmp_path, compression="gzip")

    def boom(*_a: Any) -> None:
        raise OSError("no space left")

    monkeypatch.setattr(archive, "write_env", boom)
    with pytest.raises(OSError):
        archive.import_archive(out, store=dest)
    assert store_state(dest) == {"envs": [], "images": [], "cache/sif": []}
    monkeypatch.undo()
    assert archive.import_archive(out, store=dest).name == "demo"


def _dead_owner() -> str:
    """An owner tag (venvoy.core.fs) of a process of this host that has exited."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", "from venvoy.core.fs import owner_tag; "
                           "print(owner_tag())"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_stale_temporaries_are_cleaned(source: records.Environment, dest: Store, tmp_path: Path) -> None:
    """A killed export's or import's temporaries (owner-tagged names, venvoy.core.fs) are
    removed by the next one; a running one's, or one of another host, are not."""
    from venvoy.core.fs import owner_tag

    final = f"demo-{source.lock_hash[:12]}.venvoy.tar.gz"
    dead = _dead_owner()
    stale = tmp_path / f".{final}@{dead}+0badf00d.part"
    live = tmp_path / f".{final}@{owner_tag()}+0badf00d.part"
    foreign = tmp_path / f".{final}@otherhost+12+34+0badf00d.part"
    for p in (stale, live, foreign):
        p.write_text("partial")
    out = archive.export_archive(source, tmp_path, compression="gzip")
    assert not stale.exists() and live.exists() and foreign.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part") and p not in (live, foreign)]
    dest.tmp.mkdir(parents=True, exist_ok=True)
    old_import = dest.tmp / f"import@{dead}+0badf00d"
    running = dest.tmp / f"import@{owner_tag()}+0badf00d"
    for d in (old_import, running):
        d.mkdir()
        (d / "image.tar").write_text("partial")
    archive.import_archive(out, store=dest)
    assert not old_import.exists() and running.exists()
    assert sorted(p.name for p in dest.tmp.iterdir()) == [running.name]  # its own work is gone


# -- sniffing ---------------------------------------------------------------------------------

def wheelhouse(path: Path, compress: Callable[[bytes], bytes]) -> Path:
    """What another part of venvoy writes: a tar whose manifest.json is not its first member."""
    manifest = json.dumps({"format": "venvoy-wheelhouse", "format_version": 1}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("wh/wheels/six.whl", b"0123456789"), ("wh/manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(compress(buf.getvalue()))
    return path


def test_sniff_by_content_not_name(source: records.Environment, tmp_path: Path,
                                   compression: str) -> None:
    out = archive.export_archive(source, tmp_path, compression=compression)
    renamed = out.rename(tmp_path / "notes.txt")
    assert sniff_format(renamed) == "archive"
    for i, packer in enumerate((lambda b: b, gzip.compress, lzma.compress, bz2.compress)):
        assert sniff_format(wheelhouse(tmp_path / f"w{i}.zip", packer)) == "wheelhouse"
    (tmp_path / "random.venvoy.tar.zst").write_bytes(os.urandom(4096))
    assert sniff_format(tmp_path / "random.venvoy.tar.zst") == "unknown"
    (tmp_path / "empty").write_bytes(b"")
    assert sniff_format(tmp_path / "empty") == "unknown"
    assert sniff_format(source.archive) == "unknown"  # a Docker archive
    assert sniff_format(tmp_path / "does-not-exist") == "unknown"
    assert sniff_format(tmp_path) == "unknown"


# -- the hostile-archive suite ----------------------------------------------------------------

Entry = tuple[tarfile.TarInfo, bytes | None]


class Kit:
    """A good archive taken apart, to be put together again wrongly."""

    def __init__(self, good: Path, tmp: Path) -> None:
        self.tmp = tmp
        with tarfile.open(good, "r:*") as tar:
            self.files = {m.name.split("/", 1)[1]: tar.extractfile(m).read()  # type: ignore[union-attr]
                          for m in tar.getmembers()}
        self.manifest = json.loads(self.files.pop("manifest.json"))
        self.root = self.manifest["root"]

    def reg(self, name: str, data: bytes, size: int | None = None) -> Entry:
        info = tarfile.TarInfo(name)
        info.size = len(data) if size is None else size
        info.mode = 0o644
        return info, data

    def special(self, name: str, kind: bytes, linkname: str = "") -> Entry:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, linkname
        if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            info.devmajor, info.devminor = 1, 3
        return info, None

    def listed(self, files: dict[str, bytes]) -> list[dict[str, Any]]:
        return [{"path": k, "size": len(v), "sha256": hashlib.sha256(v).hexdigest()}
                for k, v in files.items()]

    def entries(self, files: dict[str, bytes] | None = None,
                manifest: dict[str, Any] | bytes | None = None) -> list[Entry]:
        files = self.files if files is None else files
        if manifest is None:
            manifest = dict(self.manifest, members=self.listed(files))
        raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        return [self.reg(f"{self.root}/manifest.json", raw),
                *[self.reg(f"{self.root}/{k}", v) for k, v in files.items()]]

    def write(self, entries: list[Entry], compress: str = "gzip", name: str = "bad.tar.gz",
              raw: bytes | None = None) -> Path:
        buf = io.BytesIO()
        if raw is None:
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for info, data in entries:
                    tar.addfile(info, io.BytesIO(data) if data is not None else None)
            raw = buf.getvalue()
        packed = {"gzip": gzip.compress, "xz": lzma.compress, "bzip2": bz2.compress,
                  "none": lambda b: b}[compress](raw)
        path = self.tmp / name
        path.write_bytes(packed)
        return path


@pytest.fixture
def kit(source: records.Environment, tmp_path: Path) -> Kit:
    good = archive.export_archive(source, tmp_path / "good.tar.gz")
    box = tmp_path / "hostile"
    box.mkdir()
    return Kit(good, box)


def refused(path: Path, store: Store, tmp_path: Path, *words: str, **kw: Any) -> str:
    """Import must fail with one line holding ``words``, leaving no trace."""
    before = {p for p in tree(tmp_path) if not p.startswith(store.root.name)}
    with pytest.raises(VenvoyError) as exc:
        archive.import_archive(path, store=store, **kw)
    message = str(exc.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message
    assert store_state(store) == {"envs": [], "images": [], "cache/sif": []}
    assert not list(store.tmp.iterdir()), "temporary directory left behind"
    assert {p for p in tree(tmp_path) if not p.startswith(store.root.name)} == before
    assert not (tmp_path.parent / "evil").exists() and not Path("/tmp/venvoy-evil").exists()
    return message


def test_good_kit_imports(kit: Kit, dest: Store) -> None:
    """The suite's rebuilt archive is itself accepted: each case below breaks one thing."""
    assert archive.import_archive(kit.write(kit.entries()), store=dest).name == "demo"
    assert archive.import_archive(kit.write(kit.entries(), compress="none", name="plain.tar"),
                                  store=dest, name="plain").name == "plain"


def test_refuses_path_traversal(kit: Kit, dest: Store, tmp_path: Path) -> None:
    bad = kit.write([*kit.entries(), kit.reg(f"{kit.root}/../../evil", b"x")])
    refused(bad, dest, tmp_path, f"{kit.root}/../../evil", "path traversal")


def test_refuses_absolute_path(kit: Kit, dest: Store, tmp_path: Path) -> None:
    entries = kit.entries()
    entries.insert(1, kit.reg("/tmp/venvoy-evil", b"x"))
    refused(kit.write(entries), dest, tmp_path, "/tmp/venvoy-evil", "absolute path")


def test_refuses_symlink_escape(kit: Kit, dest: Store, tmp_path: Path) -> None:
    entries = [e for e in kit.entries() if not e[0].name.endswith("/env.json")]
    entries.insert(1, kit.special(f"{kit.root}/env.json", tarfile.SYMTYPE, "/etc/passwd"))
    refused(kit.write(entries), dest, tmp_path, f"{kit.root}/env.json", "symbolic link", "/etc/passwd")


def test_refuses_hardlink_escape(kit: Kit, dest: Store, tmp_path: Path) -> None:
    entries = kit.entries()
    entries.insert(1, kit.special(f"{kit.root}/link", tarfile.LNKTYPE, "../../../etc/shadow"))
    refused(kit.write(entries), dest, tmp_path, f"{kit.root}/link", "hard link")


@pytest.mark.parametrize(("kind", "word"), [(tarfile.CHRTYPE, "character device"),
                                            (tarfile.BLKTYPE, "block device"),
                                            (tarfile.FIFOTYPE, "FIFO"),
                                            (tarfile.DIRTYPE, "directory")])
def test_refuses_special_files(kit: Kit, dest: Store, tmp_path: Path, kind: bytes, word: str) -> None:
    entries = kit.entries()
    entries.insert(2, kit.special(f"{kit.root}/node", kind))
    refused(kit.write(entries), dest, tmp_path, f"{kit.root}/node", word)


def test_refuses_checksum_mismatch(kit: Kit, dest: Store, tmp_path: Path) -> None:
    files = dict(kit.files)
    manifest = dict(kit.manifest, members=kit.listed(files))
    image = bytearray(files["image.tar"])
    image[len(image) // 2] ^= 0xFF
    files["image.tar"] = bytes(image)
    refused(kit.write(kit.entries(files, manifest)), dest, tmp_path, f"{kit.root}/image.tar", "sha256")


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_refuses_truncated_file(kit: Kit, dest: Store, tmp_path: Path, cut: float) -> None:
    good = kit.write(kit.entries())
    data = good.read_bytes()
    good.write_bytes(data[:int(len(data) * cut)])
    message = refused(good, dest, tmp_path, "truncated")
    assert "member" in message


@pytest.mark.parametrize("cut", [0.5, -7, -2])
def test_refuses_truncated_zstd(source: records.Environment, dest: Store, tmp_path: Path,
                                zstd: str, cut: float) -> None:
    out = archive.export_archive(source, tmp_path / "a.tar.zst", compression=zstd)
    data = out.read_bytes()
    out.write_bytes(data[:int(len(data) * cut) if cut > 0 else int(cut)])
    refused(out, dest, tmp_path, "a.tar.zst", "truncated" if cut > 0 else "zstd")


def test_refuses_data_after_the_zstd_stream(source: records.Environment, dest: Store, tmp_path: Path,
                                            zstd: str) -> None:
    out = archive.export_archive(source, tmp_path / "a.tar.zst", compression=zstd)
    out.write_bytes(out.read_bytes() + b"PAYLOAD" * 10)
    refused(out, dest, tmp_path, "a.tar.zst")


def test_refuses_truncated_plain_tar(kit: Kit, dest: Store, tmp_path: Path) -> None:
    good = kit.write(kit.entries(), compress="none", name="plain.tar")
    data = good.read_bytes()
    good.write_bytes(data[:len(data) // 2])
    refused(good, dest, tmp_path, "truncated in member", "image.tar")


def test_refuses_manifest_lying_about_sizes(kit: Kit, dest: Store, tmp_path: Path) -> None:
    members = kit.listed(kit.files)
    for m in members:
        if m["path"] == "image.tar":
            m["size"] -= 512
    entries = kit.entries(manifest=dict(kit.manifest, members=members))
    refused(kit.write(entries), dest, tmp_path, f"{kit.root}/image.tar", "the manifest says")


def test_refuses_header_lying_about_sizes(kit: Kit, dest: Store, tmp_path: Path) -> None:
    entries = kit.entries()
    info, data = entries[-1]
    assert data is not None
    entries[-1] = kit.reg(info.name, data + bytes(512), size=len(data) + 512)
    refused(kit.write(entries), dest, tmp_path, info.name, "the manifest says")


def test_refuses_unlisted_member(kit: Kit, dest: Store, tmp_path: Path) -> None:
    bad = kit.write([*kit.entries(), kit.reg(f"{kit.root}/extra.sh", b"rm -rf ~")])
    refused(bad, dest, tmp_path, f"{kit.root}/extra.sh", "not listed")


def test_refuses_member_outside_the_top_directory(kit: Kit, dest: Store, tmp_path: Path) -> None:
    bad = kit.write([*kit.entries(), kit.reg("elsewhere/image.tar", b"x")])
    refused(bad, dest, tmp_path, "elsewhere/image.tar", "not listed")


def test_refuses_missing_member(kit: Kit, dest: Store, tmp_path: Path) -> None:
    entries = [e for e in kit.entries() if not e[0].name.endswith("/pylock.toml")]
    refused(kit.write(entries), dest, tmp_path, f"{kit.root}/pylock.toml", "missing")


def test_refuses_duplicate_member(kit: Kit, dest: Store, tmp_path: Path) -> None:
    entries = kit.entries()
    refused(kit.write([*entries, entries[2]]), dest, tmp_path, entries[2][0].name, "twice")
    refused(kit.write([*entries, entries[0]]), dest, tmp_path, "manifest.json", "twice")


def test_refuses_manifest_not_first(kit: Kit, dest: Store, tmp_path: Path) -> None:
    entries = kit.entries()
    entries[0], entries[1] = entries[1], entries[0]
    refused(kit.write(entries), dest, tmp_path, entries[0][0].name, "first member")


@pytest.mark.parametrize("raw", [b"{not json", b'{"format": "venvoy-archive", "format": "x"}',
                                 b"[1, 2]", b'{"format_version": NaN}', b"\xff\xfe"])
def test_refuses_bad_json(kit: Kit, dest: Store, tmp_path: Path, raw: bytes) -> None:
    refused(kit.write(kit.entries(manifest=raw)), dest, tmp_path, "manifest.json")


@pytest.mark.parametrize(("change", "words"), [
    ({"format_version": 2}, ("format version 2", "newer")),
    ({"format_version": "1"}, ("format_version",)),
    ({"format_version": True}, ("format_version",)),
    ({"format": "venvoy-wheelhouse"}, ("wheelhouse",)),
    ({"format": "docker"}, ("'docker'",)),
    ({"root": "../x"}, ("top directory",)),
    ({"image_id": "sha256:../../etc"}, ("image_id",)),
    ({"environment": []}, ("environment",)),
    ({"members": "all"}, ("members",)),
])
def test_refuses_bad_manifest_fields(kit: Kit, dest: Store, tmp_path: Path, change: dict[str, Any],
                                     words: tuple[str, ...]) -> None:
    manifest = dict(kit.manifest, members=kit.listed(kit.files)) | change
    refused(kit.write(kit.entries(manifest=manifest)), dest, tmp_path, *words)


@pytest.mark.parametrize(("member", "words"), [
    ({"path": "image.tar", "size": -1, "sha256": "0" * 64}, ("'image.tar'", "invalid size")),
    ({"path": "image.tar", "size": 1.5, "sha256": "0" * 64}, ("'image.tar'", "invalid size")),
    ({"path": "../evil", "size": 1, "sha256": "0" * 64}, ("'../evil'", "unknown member")),
    ({"path": "env.json", "size": 1 << 30, "sha256": "0" * 64}, ("'env.json'", "more than")),
    ({"path": "image.tar", "size": 1, "sha256": "XYZ"}, ("'image.tar'", "sha256")),
    ({"path": "image.tar", "size": 1}, ("exactly path, size and sha256",)),
])
def test_refuses_bad_member_records(kit: Kit, dest: Store, tmp_path: Path, member: dict[str, Any],
                                    words: tuple[str, ...]) -> None:
    members = [m for m in kit.listed(kit.files) if m["path"] != member["path"]] + [member]
    manifest = dict(kit.manifest, members=members)
    refused(kit.write(kit.entries(manifest=manifest)), dest, tmp_path, *words)


def test_refuses_listed_member_twice_in_manifest(kit: Kit, dest: Store, tmp_path: Path) -> None:
    members = kit.listed(kit.files)
    manifest = dict(kit.manifest, members=[*members, members[-1]])
    refused(kit.write(kit.entries(manifest=manifest)), dest, tmp_path, "'image.tar' twice")


def test_refuses_huge_manifest(kit: Kit, dest: Store, tmp_path: Path) -> None:
    manifest = dict(kit.manifest, members=kit.listed(kit.files), padding="x" * (1 << 20))
    refused(kit.write(kit.entries(manifest=manifest)), dest, tmp_path,
            f"{kit.root}/manifest.json", "more than the 1048576")


def test_refuses_bomb_past_the_bound(kit: Kit, dest: Store, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    files = dict(kit.files)
    files["image.tar"] = bytes(8 << 20)  # 8 MiB of zeros: a few KiB compressed
    bad = kit.write(kit.entries(files))
    assert bad.stat().st_size < 64 << 10
    refused(bad, dest, tmp_path, "more than the limit", "VENVOY_ARCHIVE_MAX_BYTES",
            max_bytes=4 << 20)
    limited = Store(dest.root, environ={"VENVOY_ARCHIVE_MAX_BYTES": str(4 << 20)})
    refused(bad, limited, tmp_path, "more than the limit")
    monkeypatch.setenv("VENVOY_ARCHIVE_MAX_BYTES", str(4 << 20))
    refused(bad, Store(dest.root), tmp_path, "more than the limit")
    good = kit.write(kit.entries(), name="ok.tar.gz")  # small enough: accepted
    assert archive.import_archive(good, store=limited).name == "demo"


def test_refuses_oversized_pax_header(kit: Kit, dest: Store, tmp_path: Path) -> None:
    entries = kit.entries()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries[:2]:
            tar.addfile(info, io.BytesIO(data or b""))
        huge = tarfile.TarInfo(f"{kit.root}/pylock.toml")
        huge.pax_headers = {"comment": "x" * (2 << 20)}
        huge.size = 0
        tar.addfile(huge, io.BytesIO(b""))
    refused(kit.write([], raw=buf.getvalue()), dest, tmp_path, "pax header", "more than")


def test_refuses_trailing_garbage(kit: Kit, dest: Store, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in kit.entries():
            tar.addfile(info, io.BytesIO(data or b""))
    refused(kit.write([], raw=buf.getvalue() + b"#!/bin/sh\n" * 100), dest, tmp_path,
            "unexpected data after the end")


@pytest.mark.parametrize("compress", ["xz", "bzip2"])
def test_refuses_wrong_compression(kit: Kit, dest: Store, tmp_path: Path, compress: str) -> None:
    refused(kit.write(kit.entries(), compress=compress, name=f"x.{compress}"), dest, tmp_path,
            f"compressed with {compress}")


def test_refuses_random_bytes_and_corrupt_gzip(kit: Kit, dest: Store, tmp_path: Path) -> None:
    junk = kit.tmp / "junk.venvoy.tar.zst"
    junk.write_bytes(os.urandom(10000))
    refused(junk, dest, tmp_path, "not a venvoy archive")
    good = bytearray(kit.write(kit.entries()).read_bytes())
    good[len(good) // 2] ^= 0xFF
    (kit.tmp / "corrupt.tar.gz").write_bytes(bytes(good))
    refused(kit.tmp / "corrupt.tar.gz", dest, tmp_path, "damaged")


def test_refuses_image_that_is_not_the_manifests(kit: Kit, dest: Store, tmp_path: Path) -> None:
    other, _ = make_image(tmp_path, "other")
    files = dict(kit.files, **{"image.tar": other.read_bytes()})
    refused(kit.write(kit.entries(files)), dest, tmp_path, "image.tar", "not sha256:")


def test_refuses_image_with_a_swapped_layer(kit: Kit, dest: Store, tmp_path: Path) -> None:
    """The config (and so the image ID) is right, a layer is not: the image ID alone proves nothing."""
    outer = io.BytesIO(kit.files["image.tar"])
    rebuilt = io.BytesIO()
    with tarfile.open(fileobj=outer) as src, tarfile.open(fileobj=rebuilt, mode="w",
                                                          format=tarfile.GNU_FORMAT) as dst:
        layers = json.load(src.extractfile("manifest.json"))[0]["Layers"]  # type: ignore[arg-type]
        for member in src.getmembers():
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == layers[-1]:
                data = layer_tar([("file", "opt/venvoy/pylock.toml", "trojan")])
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    files = dict(kit.files, **{"image.tar": rebuilt.getvalue()})
    refused(kit.write(kit.entries(files)), dest, tmp_path, layers[-1], "diff_id")


def test_refuses_env_record_that_differs(kit: Kit, dest: Store, tmp_path: Path) -> None:
    record = json.loads(kit.files["env.json"]) | {"python": "3.12"}
    files = dict(kit.files, **{"env.json": json.dumps(record).encode()})
    refused(kit.write(kit.entries(files)), dest, tmp_path, "env.json", "differs")


def test_refuses_lock_that_differs(kit: Kit, dest: Store, tmp_path: Path) -> None:
    files = dict(kit.files, **{"pylock.toml": kit.files["pylock.toml"] + b"# changed\n"})
    refused(kit.write(kit.entries(files)), dest, tmp_path, "pylock.toml", "lock hash")


def test_refuses_sif_that_is_not_one(kit: Kit, dest: Store, tmp_path: Path) -> None:
    files = dict(kit.files, **{"image.sif": b"#!/bin/sh\nrm -rf ~\n"})
    refused(kit.write(kit.entries(files)), dest, tmp_path, "image.sif", "not a SIF")


def test_refuses_existing_name_before_unpacking(kit: Kit, dest: Store, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    make_env(dest, tmp_path / "x", text="other")
    state = store_state(dest)
    with pytest.raises(VenvoyError, match="already exists"):
        archive.import_archive(kit.write(kit.entries(files=dict(
            kit.files, **{"README.txt": b"other"}))), store=dest)
    assert store_state(dest) == state


def test_one_line_errors_for_hostile_names(kit: Kit, dest: Store, tmp_path: Path) -> None:
    entries = kit.entries()
    entries.insert(1, kit.reg(f"{kit.root}/x\nFAKE: all good", b"x"))
    message = refused(kit.write(entries), dest, tmp_path, "not allowed")
    assert "\\n" in message


def test_hostname_is_safe_in_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from venvoy.core import fs

    monkeypatch.setattr(socket, "gethostname", lambda: "node-1/../x")
    monkeypatch.setattr(fs, "_owner", None)
    name = fs.temp_name(".demo.venvoy.tar.gz", ".part")
    assert "/" not in name and fs.owner_alive(name) is True


def damage_record(store: Store, name: str) -> None:
    (store.env_dir(name) / "env.json").write_text("{")


def test_import_over_a_damaged_environment(source: records.Environment, dest: Store,
                                           tmp_path: Path) -> None:
    """A damaged environment of the same name: without --force one line saying to use
    it; with --force it is replaced, and the image only it named is dropped."""
    out = archive.export_archive(source, tmp_path / "a.tar.gz")
    orphan = "sha256:" + "9" * 64
    dest.image_archive(orphan).parent.mkdir(parents=True)
    dest.image_archive(orphan).write_bytes(b"old image")
    dest.env_dir("demo").mkdir(parents=True)
    (dest.env_dir("demo") / "image").write_text(f"{orphan} {'1' * 64}\n")
    damage_record(dest, "demo")
    with pytest.raises(VenvoyError) as exc:
        archive.import_archive(out, store=dest)
    message = str(exc.value)
    assert "\n" not in message and "damaged" in message and "--force" in message
    assert dest.image_archive(orphan).is_file()  # nothing changed
    env = archive.import_archive(out, store=dest, force=True)
    assert records.get("demo", dest).record == env.record
    assert env.archive.is_file()
    assert not dest.image_archive(orphan).exists()


def docker_tar(config: dict[str, Any], layers: list[bytes]) -> bytes:
    """A Docker archive with exactly this config (which may be nonsense)."""
    buf = io.BytesIO()
    raw = json.dumps(config).encode()
    names = [f"{hashlib.sha256(x).hexdigest()}.tar" for x in layers]
    index = json.dumps([{"Config": "cfg.json", "RepoTags": [], "Layers": names}]).encode()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in [*zip(names, layers, strict=True), ("cfg.json", raw),
                           ("manifest.json", index)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(("config", "words"), [
    ({"rootfs": ["x"], "config": "x"}, "diff_ids"),
    ({"rootfs": {"diff_ids": ["sha256:" + "0" * 64]}, "config": []}, "diff_id"),
    ([1, 2], "not a JSON object"),
])
def test_refuses_nonsense_image_config(kit: Kit, dest: Store, tmp_path: Path, config: Any,
                                       words: str) -> None:
    """An image whose ID matches (the archive names it consistently) but whose config is junk."""
    image = docker_tar(config, [layer_tar([("file", "x", "y")])])
    image_id = "sha256:" + hashlib.sha256(json.dumps(config).encode()).hexdigest()
    record = json.loads(kit.files["env.json"]) | {"image_id": image_id}
    files = dict(kit.files, **{"env.json": json.dumps(record).encode(), "image.tar": image})
    manifest = dict(kit.manifest, members=kit.listed(files), image_id=image_id, environment=record)
    refused(kit.write(kit.entries(files, manifest)), dest, tmp_path, "image.tar", words)


def test_random_damage_is_always_a_clear_error(kit: Kit, dest: Store) -> None:
    """Flipped bytes anywhere (headers included): imported intact or refused, never a traceback."""
    import random

    plain = kit.write(kit.entries(), compress="none", name="plain.tar").read_bytes()
    rng = random.Random(1234)  # noqa: S311 - reproducible damage, not secrets
    outcomes = set()
    for i in range(150):
        data = bytearray(plain)
        for _ in range(rng.choice((1, 3))):
            pos = rng.randrange(4096) if i % 2 else rng.randrange(len(data))
            data[pos] = rng.randrange(256)
        path = kit.tmp / "damaged.tar"
        path.write_bytes(bytes(data))
        try:
            archive.import_archive(path, store=dest, name=f"n{i}")
            outcomes.add("ok")
        except VenvoyError as exc:
            assert "\n" not in str(exc)
            outcomes.add("refused")
    assert "refused" in outcomes
    assert not list(dest.tmp.iterdir())


@pytest.mark.parametrize("tags", [["python:3.12"], ["docker.io/library/python:3.12"],
                                  ["localhost/venvoy/demo:x", "busybox:latest"], "python:3.12"])
def test_refuses_an_image_that_would_retag_the_users_images(kit: Kit, dest: Store, tmp_path: Path,
                                                            tags: object) -> None:
    """`docker load` applies the archive's RepoTags: a crafted archive must not be able to
    point the user's `python:3.12` (or any name outside venvoy's) at its image."""
    src = io.BytesIO(kit.files["image.tar"])
    out = io.BytesIO()
    with tarfile.open(fileobj=src) as old, tarfile.open(fileobj=out, mode="w") as new:
        for member in old.getmembers():
            data = old.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "manifest.json":
                index = json.loads(data)
                index[0]["RepoTags"] = tags
                data = json.dumps(index).encode()
                member.size = len(data)
            new.addfile(member, io.BytesIO(data))
    files = dict(kit.files, **{"image.tar": out.getvalue()})
    manifest = dict(kit.manifest, members=kit.listed(files))
    refused(kit.write(kit.entries(files, manifest)), dest, tmp_path, "outside localhost/venvoy/")
