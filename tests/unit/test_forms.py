"""The store layout, runtime forms bound to verified image IDs, checked SIFs,
the site library's ownership rule and the fast path (issues 7 and 8)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from venvoy.core.errors import DamagedError, VenvoyError
from venvoy.core.paths import cache_dir, runtime_versions_file
from venvoy.runtime import RUNTIMES, adapter_class
from venvoy.runtime.apptainer import Apptainer
from venvoy.runtime.base import ImageForm, Runtime
from venvoy.runtime.oci_cli import load_error
from venvoy.runtime.podman import Podman
from venvoy.store import fastpath, forms, layout
from venvoy.store.layout import Store

from .conftest import FakeBin

ID_A = "sha256:" + "a" * 64
ID_B = "sha256:" + "b" * 64
TAG = "localhost/venvoy/demo:" + "c" * 12
SIF_BYTES = b"#!/usr/bin/env run-singularity\n\x00SIF_MAGIC\x00" + bytes(300)


# ------------------------------------------------------------------ layout: defined once
def test_plain_string_helpers_are_the_store_paths(tmp_path: Path) -> None:
    store = Store(tmp_path, environ={})
    root, hexid = str(store.root), "a" * 64
    assert layout.sif_file(root, hexid) == str(store.sif(ID_A))
    assert layout.sif_check_file(layout.sif_file(root, hexid)) == str(store.sif_check(ID_A))
    assert layout.ch_dir(root, hexid) == str(store.ch_dir(ID_A))
    assert layout.image_file(root, "demo") == str(store.env_dir("demo") / layout.IMAGE_FILE)
    assert layout.loaded_dir(root) == str(store.loaded)


def test_marker_names_are_built_and_parsed_in_one_place() -> None:
    name = layout.marker_name("podman", True, 1000, ID_A, layout.bound_tag(TAG, ID_A))
    m = layout.parse_marker(name)
    assert m is not None and (m.runtime, m.rootless, m.uid, m.hexid) == ("podman", True, 1000, "a" * 64)
    assert m.label == "podman-rootless"
    old = layout.parse_marker(f"docker-root-0-{'a' * 16}-localhost_venvoy_demo_cccc")  # 0.1 markers
    assert old is not None and old.hexid == "a" * 16 and old.label == "docker"
    for junk in ("x", "docker-root-0-zz-x", "docker-maybe-0-" + "a" * 64 + "-t",
                 "a-root-x-" + "a" * 64 + "-t"):
        assert layout.parse_marker(junk) is None


def test_markers_of_an_image(tmp_path: Path) -> None:
    store = Store(tmp_path, environ={})
    store.loaded.mkdir(parents=True)
    mine = layout.marker_name("docker", False, 0, ID_A, "t")
    for name in (mine, layout.marker_name("docker", False, 0, ID_B, "t"), "stray-file"):
        (store.loaded / name).touch()
    assert [name for name, _ in store.markers(ID_A)] == [mine]


def test_bound_tag_carries_the_full_image_id() -> None:
    assert layout.bound_tag(TAG, ID_A) == "localhost/venvoy/demo:" + "a" * 64
    assert layout.bound_tag("localhost:5000/x", ID_A) == "localhost:5000/x:" + "a" * 64
    assert layout.bound_tag(TAG, ID_A) != layout.bound_tag(TAG, ID_B)


def test_the_cache_is_inside_the_store(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "d"), "XDG_CACHE_HOME": str(tmp_path / "c")}
    assert Path(cache_dir(env)) == Store(environ=env).cache == tmp_path / "d" / "venvoy" / "cache"
    assert Path(runtime_versions_file(env)) == Store(environ=env).runtime_versions
    assert Store(tmp_path, environ={}).load_dest("apptainer") == tmp_path / "cache" / "load" / "apptainer"


def test_runtime_versions_are_cached_in_the_store(tmp_path: Path, fakebin: FakeBin) -> None:
    from venvoy.runtime.detect import versions

    fakebin.add("podman", "4.3.1")
    env = fakebin.env(VENVOY_HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert versions([Podman(str(fakebin.dir / "podman"), env)], env) == {"podman": "4.3.1"}
    assert (tmp_path / "home" / "cache" / "runtime-versions.json").is_file()
    assert not (tmp_path / "xdg").exists()


def test_fast_path_imports_no_slow_modules() -> None:
    code = ("import sys; import venvoy.store.fastpath; "
            "print(sorted(m for m in ('pathlib', 'json', 'enum', 'venvoy.core.fs') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(layout.__file__).parents[2])})
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ typed image forms
def test_every_adapter_has_a_typed_image_form() -> None:
    forms_seen = {adapter_class(name).image_kind for name in RUNTIMES}
    assert forms_seen <= {ImageForm.REF, ImageForm.FILE, ImageForm.DIR}
    assert adapter_class("apptainer").image_kind is ImageForm.FILE
    assert adapter_class("charliecloud").image_kind is ImageForm.DIR
    assert adapter_class("podman").image_kind is ImageForm.REF
    assert ImageForm.FILE.shared and not ImageForm.REF.shared and repr(ImageForm.DIR) == "ImageForm.DIR"


# ------------------------------------------------------------------ fakes
class FakeLoaded(Runtime):
    """A runtime with its own image store; records what it was asked."""

    name: ClassVar[str] = "fakeoci"
    binary: ClassVar[str] = "fakeoci"
    calls: ClassVar[list[tuple[str, str]]] = []

    def load_bound(self, archive: Path, tag: str, image_id: str) -> str:
        self.calls.append((tag, image_id))
        return image_id

    def remove_image(self, ref: str) -> None:
        self.calls.append(("rmi", ref))


class FakeSif(Runtime):
    """Makes SIFs; counts how often."""

    name: ClassVar[str] = "fakesif"
    binary: ClassVar[str] = "fakesif"
    image_kind: ClassVar[ImageForm] = ImageForm.FILE
    made: ClassVar[int] = 0

    def load_archive(self, archive: Path, ref: str, dest_dir: Path) -> str:
        type(self).made += 1
        dest_dir.mkdir(parents=True, exist_ok=True)
        (dest_dir / f"{ref}.sif").write_bytes(SIF_BYTES)
        return str(dest_dir / f"{ref}.sif")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store", environ={})
    s.image_archive(ID_A).parent.mkdir(parents=True)
    s.image_archive(ID_A).write_bytes(b"canonical")
    FakeLoaded.calls = []
    FakeSif.made = 0
    return s


# ------------------------------------------------------------------ loaded images: bound to the ID
def test_a_loaded_image_is_run_by_its_id_and_tagged_by_digest(store: Store) -> None:
    rt = FakeLoaded("/x", {})
    assert forms.planned_native(store, rt, ID_A, TAG) == ID_A
    assert forms.cached_native(store, rt, ID_A, TAG) is None
    got = forms.ensure_native(store, rt, store.image_archive(ID_A), ID_A, TAG)
    assert got == ID_A
    assert FakeLoaded.calls == [(layout.bound_tag(TAG, ID_A), ID_A)]
    (marker,) = store.loaded.iterdir()
    assert marker.read_text().split() == [ID_A, layout.bound_tag(TAG, ID_A)]
    # the fast path finds it with a stat, and says the ID, not a tag
    assert fastpath.cached_image(str(store.root), rt, ID_A, TAG, {}) == ID_A
    assert forms.ensure_native(store, rt, store.image_archive(ID_A), ID_A, TAG) == ID_A
    assert len(FakeLoaded.calls) == 1
    # another image under the same name and identity has its own marker and tag
    assert fastpath.cached_image(str(store.root), rt, ID_B, TAG, {}) is None


def test_forgetting_removes_bound_and_legacy_tags(store: Store) -> None:
    rt = FakeLoaded("/x", {})
    forms.ensure_native(store, rt, store.image_archive(ID_A), ID_A, TAG)
    (store.loaded / f"fakeoci-root-0-{'a' * 16}-old").touch()  # a 0.1 marker
    import venvoy.runtime.detect as detect

    orig = detect.get_runtime
    detect.get_runtime = lambda name, environ=None: FakeLoaded("/x", {})  # type: ignore[assignment]
    try:
        forms.forget_all_loaded(store, ID_A, TAG)
    finally:
        detect.get_runtime = orig
    assert sorted(FakeLoaded.calls[1:]) == sorted([("rmi", layout.bound_tag(TAG, ID_A)), ("rmi", TAG)])
    assert list(store.loaded.iterdir()) == []


FAILED_LOAD = ('printf "Getting image source signatures\\nError: writing blob: no space left on '
               'device\\n  noise\\nError: payload does not match\\n" >&2; exit 125')


def fake_podman(fakebin: FakeBin, loaded_id: str, fail: bool = False) -> Podman:
    load = FAILED_LOAD if fail else 'echo "Loaded image: localhost/x:y"'
    body = f"""case "$1" in
  load) {load};;
  image) echo "{loaded_id.partition(':')[2]}";;
  tag) exit 0;;
esac
"""
    path = fakebin.add("podman", body=body)
    return Podman(str(path), fakebin.env())


def test_load_bound_checks_the_loaded_id(fakebin: FakeBin, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    archive.write_bytes(b"x")
    assert fake_podman(fakebin, ID_A).load_bound(archive, "localhost/venvoy/d:" + "a" * 64, ID_A) == ID_A
    assert "podman tag " + ID_A in fakebin.log.read_text()
    with pytest.raises(DamagedError, match="did not load as image") as info:
        fake_podman(fakebin, ID_B).load_bound(archive, "t:x", ID_A)
    assert "\n" not in str(info.value)


def test_a_failed_load_shows_the_cause_and_the_last_line(fakebin: FakeBin, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    archive.write_bytes(b"x")
    with pytest.raises(VenvoyError) as info:
        fake_podman(fakebin, ID_A, fail=True).load_bound(archive, "t:x", ID_A)
    text = str(info.value)
    assert "no space left on device" in text and "payload does not match" in text
    assert "\n" not in text
    assert len(load_error("Error: " + "x" * 5000)) <= 400
    assert load_error("") == "(no output)"
    assert load_error("only line") == "only line"


# ------------------------------------------------------------------ SIFs: checked, rebuilt
def test_a_made_sif_gets_its_check_and_is_reused(store: Store) -> None:
    rt = FakeSif("/x", {})
    sif = forms.ensure_native(store, rt, store.image_archive(ID_A), ID_A, TAG)
    assert sif == str(store.sif(ID_A)) == forms.planned_native(store, rt, ID_A, TAG)
    _digest, size = store.sif_check(ID_A).read_text().split()
    assert int(size) == len(SIF_BYTES)
    assert fastpath.cached_image(str(store.root), rt, ID_A, TAG, {}) == sif
    forms.ensure_native(store, rt, store.image_archive(ID_A), ID_A, TAG)
    assert FakeSif.made == 1 and forms.sif_verified(store, ID_A)


def test_a_truncated_sif_is_not_run_but_made_again(store: Store) -> None:
    rt = FakeSif("/x", {})
    forms.ensure_native(store, rt, store.image_archive(ID_A), ID_A, TAG)
    with open(store.sif(ID_A), "r+b") as fh:
        fh.truncate(10)
    assert fastpath.cached_image(str(store.root), rt, ID_A, TAG, {}) is None
    assert not forms.sif_verified(store, ID_A)
    forms.ensure_native(store, rt, store.image_archive(ID_A), ID_A, TAG)
    assert FakeSif.made == 2 and store.sif(ID_A).read_bytes() == SIF_BYTES


def test_same_size_corruption_is_caught_by_the_full_check(store: Store) -> None:
    rt = FakeSif("/x", {})
    forms.ensure_native(store, rt, store.image_archive(ID_A), ID_A, TAG)
    sif = store.sif(ID_A)
    st = sif.stat()
    sif.write_bytes(b"Z" * len(SIF_BYTES))
    os.utime(sif, ns=(st.st_atime_ns, st.st_mtime_ns))  # hide it from the stat-only check
    assert forms.ensure_native(store, rt, store.image_archive(ID_A), ID_A, TAG) == str(sif)
    assert FakeSif.made == 1  # the run path trusts size and times...
    forms.ensure_native(store, rt, store.image_archive(ID_A), ID_A, TAG, verify=True)
    assert FakeSif.made == 2 and sif.read_bytes() == SIF_BYTES  # ...export does not


def test_a_sif_without_its_check_is_never_trusted(store: Store) -> None:
    """An older store's SIF, or one placed by someone else: made again from the image."""
    rt = FakeSif("/x", {})
    store.sif(ID_A).parent.mkdir(parents=True)
    store.sif(ID_A).write_bytes(b"#!/bin/sh\nrm -rf ~\n")
    assert fastpath.cached_image(str(store.root), rt, ID_A, TAG, {}) is None
    assert forms.ensure_native(store, rt, store.image_archive(ID_A), ID_A, TAG) == str(store.sif(ID_A))
    assert FakeSif.made == 1 and store.sif(ID_A).read_bytes() == SIF_BYTES


def test_a_touched_but_intact_sif_is_checked_once_and_kept(store: Store) -> None:
    rt = FakeSif("/x", {})
    forms.ensure_native(store, rt, store.image_archive(ID_A), ID_A, TAG)
    future = store.sif_check(ID_A).stat().st_mtime_ns + 1000  # touched (or copied) after
    os.utime(store.sif(ID_A), ns=(future, future))
    assert fastpath.cached_image(str(store.root), rt, ID_A, TAG, {}) is None
    forms.ensure_native(store, rt, store.image_archive(ID_A), ID_A, TAG)
    assert FakeSif.made == 0 + 1  # not made again
    assert fastpath.cached_image(str(store.root), rt, ID_A, TAG, {}) == str(store.sif(ID_A))


def test_planned_native_makes_nothing(store: Store) -> None:
    before = sorted(p.relative_to(store.root) for p in store.root.rglob("*"))
    for rt in (FakeSif("/x", {}), FakeLoaded("/x", {}), adapter_class("charliecloud")("/x", {})):
        forms.planned_native(store, rt, ID_A, TAG)
    charliecloud = adapter_class("charliecloud")("/x", {})
    assert forms.planned_native(store, charliecloud, ID_A, TAG) == str(store.ch_dir(ID_A))
    assert sorted(p.relative_to(store.root) for p in store.root.rglob("*")) == before
    assert FakeSif.made == 0 and FakeLoaded.calls == []
    with pytest.raises(VenvoyError, match="bad image digest"):
        forms.planned_native(store, FakeSif("/x", {}), "sha256:../../etc", TAG)


# ------------------------------------------------------------------ the site library
def library(tmp_path: Path, mode: int = 0o755, file_mode: int = 0o644) -> tuple[Path, Path]:
    lib = tmp_path / "lib"
    lib.mkdir(exist_ok=True)
    sif = lib / ("a" * 64 + ".sif")
    sif.write_bytes(SIF_BYTES)
    lib.chmod(mode)
    sif.chmod(file_mode)
    return lib, sif


def test_a_safe_library_is_used(tmp_path: Path, store: Store) -> None:
    lib, sif = library(tmp_path)
    rt = FakeSif("/x", {})
    env = {"VENVOY_LIBRARY": str(lib)}
    assert fastpath.cached_image(str(store.root), rt, ID_A, TAG, env) == str(sif)
    assert forms.planned_native(Store(store.root, environ=env), rt, ID_A, TAG) == str(sif)


@pytest.mark.parametrize(("mode", "file_mode", "why"), [(0o777, 0o644, "writable by others"),
                                                       (0o775, 0o644, "writable by its group"),
                                                       (0o755, 0o666, "writable by others")])
def test_a_library_others_can_write_is_skipped_with_a_warning(
        tmp_path: Path, store: Store, capsys: pytest.CaptureFixture[str], mode: int, file_mode: int,
        why: str) -> None:
    lib, _ = library(tmp_path, mode, file_mode)
    assert fastpath.cached_image(str(store.root), FakeSif("/x", {}), ID_A, TAG,
                                 {"VENVOY_LIBRARY": str(lib)}) is None
    err = capsys.readouterr().err
    assert err.startswith("venvoy: warning: ignoring ") and why in err and err.count("\n") == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_a_library_file_of_another_user_is_skipped(tmp_path: Path, store: Store,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    lib, sif = library(tmp_path)
    os.chown(sif, 12345, -1)
    assert fastpath.cached_image(str(store.root), FakeSif("/x", {}), ID_A, TAG,
                                 {"VENVOY_LIBRARY": str(lib)}) is None
    assert "owned by uid 12345" in capsys.readouterr().err


# ------------------------------------------------------------------ Apptainer keeps its cache in the store
def recording_build(record: Path) -> str:
    """A fake `apptainer build` that writes its environment to ``record``."""
    return f'[ "$1" = build ] && {{ /usr/bin/env > "{record}"; printf x > "$2"; exit 0; }}\n'


def test_apptainer_build_uses_the_store_for_its_cache_and_temp(fakebin: FakeBin, tmp_path: Path) -> None:
    record = tmp_path / "env.txt"
    path = fakebin.add("apptainer", body=recording_build(record))
    env = fakebin.env(VENVOY_HOME=str(tmp_path / "home"))
    rt = Apptainer(str(path), env)
    archive = tmp_path / "a.tar"
    archive.write_bytes(b"x")
    dest = tmp_path / "home" / "cache" / "sif"
    assert rt.load_archive(archive, "a" * 64, dest) == str(dest / ("a" * 64 + ".sif"))
    seen = dict(line.split("=", 1) for line in record.read_text().splitlines() if "=" in line)
    ours = str(tmp_path / "home" / "cache" / "apptainer")
    assert seen["APPTAINER_CACHEDIR"] == seen["SINGULARITY_CACHEDIR"] == ours
    assert seen["APPTAINER_TMPDIR"] == seen["TMPDIR"]
    assert seen["TMPDIR"].startswith(str(dest))


def test_apptainer_cache_set_by_the_user_is_kept(fakebin: FakeBin, tmp_path: Path) -> None:
    record = tmp_path / "env.txt"
    path = fakebin.add("apptainer", body=recording_build(record))
    rt = Apptainer(str(path), fakebin.env(APPTAINER_CACHEDIR="/scratch/mine"))
    archive = tmp_path / "a.tar"
    archive.write_bytes(b"x")
    rt.load_archive(archive, "a" * 64, tmp_path / "d")
    assert "APPTAINER_CACHEDIR=/scratch/mine" in record.read_text().splitlines()


# ------------------------------------------------------------------ archives: only verified SIFs travel
def _members(path: Path) -> list[str]:
    import tarfile

    with tarfile.open(path) as tar:
        return [m.name.split("/", 1)[-1] for m in tar]


def test_export_ships_only_a_verified_sif_and_import_never_trusts_one(tmp_path: Path) -> None:
    from venvoy.transport import archive

    from .test_archive import make_env

    src = Store(tmp_path / "src", environ={})
    env = make_env(src, tmp_path)
    sif = src.sif(env.image_id)
    sif.parent.mkdir(parents=True, exist_ok=True)
    sif.write_bytes(SIF_BYTES)  # no check beside it: not made by venvoy (or an older one)
    out = archive.export_archive(env, tmp_path / "a.venvoy.tar.gz", compression="gzip")
    assert "image.sif" not in _members(out)
    forms.record_sif(src, env.image_id)
    out = archive.export_archive(env, tmp_path / "b.venvoy.tar.gz", compression="gzip")
    assert "image.sif" in _members(out)
    with open(sif, "r+b") as fh:  # truncated after it was made: not shipped
        fh.truncate(50)
    out3 = archive.export_archive(env, tmp_path / "c.venvoy.tar.gz", compression="gzip")
    assert "image.sif" not in _members(out3)

    dest = Store(tmp_path / "dest", environ={})
    imported = archive.import_archive(out, store=dest)
    assert imported.archive.is_file()
    # A SIF cannot be checked against the image: it is made again from image.tar.
    assert not dest.sif(imported.image_id).exists()
    assert not dest.sif_check(imported.image_id).exists()


def test_a_file_where_the_charliecloud_form_belongs_is_replaced(store: Store) -> None:
    """Damage in the store's own directory forms is repaired (the adapter
    refuses to replace what is not an image only at a user's --dest)."""
    from tests.unit._archives import docker_archive, layer_tar

    archive = docker_archive(store.image_archive(ID_A), [layer_tar([("file", "bin/sh", "x")])])
    target = store.ch_dir(ID_A)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("damaged\n")
    rt = adapter_class("charliecloud")("/x", {})
    assert forms.ensure_native(store, rt, archive, ID_A, TAG) == str(target)
    assert (target / "bin" / "sh").is_file()


@pytest.mark.parametrize("damage", ["directory", "symlink", "fifo"])
def test_a_damaged_conversions_log_is_never_followed_and_never_blocks(
        store: Store, tmp_path: Path, damage: str) -> None:
    """The conversions log is a note: as a directory it crashed the run with a
    traceback, as a FIFO it hung the run forever (holding the lock), as a
    symlink root appended to the file it points to, outside the store."""
    log = store.conversions_log
    log.parent.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "outside.txt"
    outside.write_text("canary\n")
    if damage == "directory":
        log.mkdir()
    elif damage == "symlink":
        log.symlink_to(outside)
    else:
        os.mkfifo(log)
    # In a child, so that the hang of the old code is a failure, not a stuck suite.
    code = ("from pathlib import Path; from tests.unit.test_forms import FakeSif, ID_A, TAG;"
            "from venvoy.store import forms;"
            "from venvoy.store.layout import Store;"
            f"s = Store(Path({str(store.root)!r}), environ={{}});"
            "print(forms.ensure_native(s, FakeSif('/x', {}), s.image_archive(ID_A), ID_A, TAG))")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120, cwd=Path(__file__).resolve().parents[2])
    except subprocess.TimeoutExpired:
        pytest.fail("the run blocked on the conversions log")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(store.sif(ID_A))
    assert outside.read_text() == "canary\n"
    assert not log.is_symlink()
    if damage != "directory":  # replaced by a real log holding the conversion
        assert log.is_file() and ID_A in log.read_text()
