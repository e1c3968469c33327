"""`venvoy run --image REF` for every runtime (issue 9, part 2): what REF is, and each
source made into the store once (an archive tar, a local Docker/Podman store, a
registry), with fakes for the runtimes and the registry client."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from venvoy.core.errors import BadRequest, DamagedError, ImageNotFound, VenvoyError
from venvoy.image import registry
from venvoy.image.oci import inspect_archive
from venvoy.runtime.apptainer import Apptainer
from venvoy.runtime.base import Runtime
from venvoy.runtime.charliecloud import Charliecloud
from venvoy.runtime.docker import Docker
from venvoy.store import images
from venvoy.store.images import ARCHIVE, AS_IS, LOCAL, REGISTRY, classify
from venvoy.store.layout import Store

from ._archives import docker_archive, layer_tar
from .test_forms import SIF_BYTES, FakeSif

REF = "localhost:5443/team/tool:1"
DIGEST_1 = "sha256:" + "1" * 64
DIGEST_2 = "sha256:" + "2" * 64


def archive(path: Path, text: str) -> Path:
    """A small Docker archive whose image ID depends on ``text``."""
    return docker_archive(path, [layer_tar([("file", "etc/which", text)])],
                          env=(f"WHICH={text}",))


class FakeStore(Runtime):
    """A runtime with an image store holding ``images`` (name -> archive)."""

    name: ClassVar[str] = "fakestore"
    binary: ClassVar[str] = "fakestore"
    has_image_store: ClassVar[bool] = True
    images: ClassVar[dict[str, Path]] = {}
    saved: ClassVar[list[str]] = []

    def image_id(self, ref: str) -> str | None:
        found = self.images.get(ref)
        return inspect_archive(found).image_id if found else None

    def save(self, image: str, dest: Path) -> None:
        type(self).saved.append(image)
        for path in self.images.values():
            if inspect_archive(path).image_id == f"sha256:{image}":
                shutil.copyfile(path, dest)
                return
        raise AssertionError(f"no image {image}")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    FakeSif.made = 0
    FakeStore.images, FakeStore.saved = {}, []
    return Store(tmp_path / "store", environ={})


def log(store: Store, kind: str) -> int:
    if not store.pulls_log.exists():
        return 0
    return sum(1 for line in store.pulls_log.read_text().splitlines() if f" {kind} " in line)


# ------------------------------------------------------------------ what REF is
DOCKER = Docker("/bin/true", {})
APPTAINER = Apptainer("/bin/true", {})
CHARLIECLOUD = Charliecloud("/bin/true", {})


@pytest.mark.parametrize(("image", "oci", "files"), [
    ("python:3.11-slim", AS_IS, LOCAL),
    ("library/python", AS_IS, LOCAL),
    ("localhost/venvoy-it-base:latest", AS_IS, LOCAL),  # Podman's own names
    ("localhost:5443/venvoy/base:bookworm", REGISTRY, REGISTRY),
    ("ghcr.io/org/env:v1", REGISTRY, REGISTRY),
    ("docker://localhost:5443/x:1", REGISTRY, REGISTRY),
    ("docker://python:3.11", REGISTRY, REGISTRY),  # explicit: the registry's, never a store's
    ("oras://ghcr.io/org/x:1", AS_IS, AS_IS),
    ("library://alpine", AS_IS, AS_IS),
    ("/no/such.sif", AS_IS, AS_IS),  # the runtime says "does not exist", in one line
    ("./no-such.tar", AS_IS, AS_IS),
    ("no-such.sif", AS_IS, AS_IS),
])
def test_what_a_reference_is(image: str, oci: str, files: str) -> None:
    assert classify(DOCKER, image) == oci
    assert classify(APPTAINER, image) == files
    assert classify(CHARLIECLOUD, image) == files


def test_files_are_told_by_content(tmp_path: Path) -> None:
    tar = archive(tmp_path / "image.tar", "a")
    sif = tmp_path / "image.sif"
    sif.write_bytes(SIF_BYTES)
    gz = tmp_path / "image.tgz"
    subprocess.run(["gzip", "-k", str(tar)], check=True)
    (tmp_path / "image.tar.gz").rename(gz)
    named_like_an_image = tmp_path / "python:3.11"
    shutil.copyfile(tar, named_like_an_image)
    fifo = tmp_path / "fifo.tar"
    os.mkfifo(fifo)
    for rt in (DOCKER, APPTAINER, CHARLIECLOUD):
        assert classify(rt, str(tar)) == ARCHIVE
        assert classify(rt, str(gz)) == ARCHIVE
        assert classify(rt, str(named_like_an_image)) == ARCHIVE
        assert classify(rt, str(sif)) == AS_IS
        assert classify(rt, str(tmp_path)) == AS_IS  # a sandbox or Charliecloud directory
        # never opened to block on, and refused: Apptainer would wait on it for ever
        with pytest.raises(BadRequest, match="FIFO, socket or device"):
            classify(rt, str(fifo))
        with pytest.raises(BadRequest, match="FIFO, socket or device"):
            classify(rt, "/dev/null")


# ------------------------------------------------------------------ an archive tar
def test_an_archive_is_copied_once_and_converted_once(store: Store, tmp_path: Path) -> None:
    src = archive(tmp_path / "in.tar", "a")
    image_id = inspect_archive(src).image_id
    rt = FakeSif("/x", {})
    first = images.native_image(store, rt, str(src))
    assert first == str(store.sif(image_id)) and FakeSif.made == 1
    assert images.native_image(store, rt, str(src)) == first and FakeSif.made == 1
    assert log(store, "copy") == 1
    copied = images.archive_path(store, image_id)
    assert inspect_archive(copied).image_id == image_id
    assert not os.access(copied, os.W_OK) or os.geteuid() == 0
    assert [p.name for p in store.image_cache.iterdir()] == [copied.name]  # no temporaries


class ReadingSif(FakeSif):
    """Reads the archive it converts, as the real ones do."""

    def load_archive(self, archive: Path, ref: str, dest_dir: Path) -> str:
        from venvoy.image.oci import copy_as_docker_archive

        copy_as_docker_archive(archive, dest_dir.parent / "scratch.tar")
        return super().load_archive(archive, ref, dest_dir)


def test_a_damaged_cached_archive_is_fetched_again(store: Store, tmp_path: Path) -> None:
    src = archive(tmp_path / "in.tar", "a")
    image_id = inspect_archive(src).image_id
    rt = ReadingSif("/x", {})
    images.native_image(store, rt, str(src))
    cached = images.archive_path(store, image_id)
    cached.chmod(0o644)
    cached.write_bytes(cached.read_bytes()[:3000])  # truncated on disk behind venvoy's back
    store.sif(image_id).unlink()
    said: list[str] = []
    assert images.native_image(store, rt, str(src), progress=said.append) == str(store.sif(image_id))
    assert any("damaged: fetching it again" in line for line in said)
    assert inspect_archive(cached).image_id == image_id and log(store, "copy") == 2


def test_a_damaged_archive_is_one_error_and_leaves_nothing(store: Store, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(archive(tmp_path / "in.tar", "a").read_bytes()[:3000])
    with pytest.raises(VenvoyError):
        images.native_image(store, FakeSif("/x", {}), str(bad))
    assert not any(store.image_cache.glob("*.tar")) if store.image_cache.exists() else True
    assert FakeSif.made == 0


# ------------------------------------------------------------------ a local Docker/Podman store
@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "image_stores", lambda store: (
        [FakeStore("/x", {})], ["docker cannot be used: no permission to use /var/run/docker.sock"]))


def test_a_local_image_is_saved_once_by_its_store_id(store: Store, tmp_path: Path,
                                                     local: None) -> None:
    FakeStore.images["tool:1"] = archive(tmp_path / "a.tar", "a")
    rt = FakeSif("/x", {})
    first = images.native_image(store, rt, "tool:1")
    assert images.native_image(store, rt, "tool:1") == first
    assert len(FakeStore.saved) == 1 and log(store, "save") == 1 and FakeSif.made == 1
    # The tag moves in the local store: the new image is saved and converted.
    FakeStore.images["tool:1"] = archive(tmp_path / "b.tar", "b")
    second = images.native_image(store, rt, "tool:1")
    assert second != first and len(FakeStore.saved) == 2 and FakeSif.made == 2
    sources = {tuple(c["sources"]) for c in images.cached(store)}
    assert len(sources) == 2 and all(s[0].startswith("fakestore image sha256:") for s in sources)


def test_an_image_in_no_local_store_says_where_it_looked(store: Store, local: None) -> None:
    with pytest.raises(ImageNotFound) as info:
        images.native_image(store, FakeSif("/x", {}), "nosuch:1")
    text = str(info.value)
    assert "'nosuch:1' is not a file, and not in the local images of fakestore" in text
    assert "no permission" in text and "docker://HOST/REPO:TAG" in text


def test_image_stores_are_asked_through_the_adapters(fakebin, store: Store) -> None:
    fakebin.add("docker")
    fakebin.add("podman")
    rts, skipped = images.image_stores(Store(store.root, environ=fakebin.env()))
    assert [rt.name for rt in rts] == ["docker", "podman"] and skipped == []
    rts, skipped = images.image_stores(Store(store.root, environ=fakebin.env(PATH="/nowhere")))
    assert rts == [] and len(skipped) == 2 and all("not installed" in s for s in skipped)


# ------------------------------------------------------------------ a registry
class FakeRegistry:
    """``resolve`` and ``pull_archive`` of venvoy.image.registry, over ``tags``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.tags: dict[str, str] = {}  # tag -> digest
        self.content: dict[str, Path] = {}  # digest -> archive
        self.resolved = 0
        self.pulled: list[str] = []
        self.down: VenvoyError | None = None
        self.lie = False

    def publish(self, tag: str, digest: str, text: str) -> None:
        self.tags[tag] = digest
        self.content[digest] = archive(self.tmp / f"{digest[7:15]}.tar", text)

    def resolve(self, ref: registry.Reference, *, environ=None, timeout=None) -> str:
        self.resolved += 1
        if self.down:
            raise self.down
        return self.tags[ref.tag or "latest"]

    def pull_archive(self, ref: registry.Reference, dest: Path, *, environ=None,
                     progress=None) -> registry.PulledImage:
        assert ref.digest is not None  # pulled by digest: exactly what was resolved
        self.pulled.append(ref.digest)
        shutil.copyfile(self.content[ref.digest], dest)
        sent = DIGEST_2 if self.lie else ref.digest
        return registry.PulledImage(dest, sent, inspect_archive(dest).image_id)


@pytest.fixture
def fake_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRegistry:
    fake = FakeRegistry(tmp_path)
    fake.publish("1", DIGEST_1, "one")
    monkeypatch.setattr(registry, "resolve", fake.resolve)
    monkeypatch.setattr(registry, "pull_archive", fake.pull_archive)
    return fake


def test_a_registry_image_is_pulled_once_per_digest_and_a_moved_tag_is_seen(
        store: Store, fake_registry: FakeRegistry, tmp_path: Path) -> None:
    rt = FakeSif("/x", {})
    first = images.native_image(store, rt, REF)
    assert images.native_image(store, rt, f"docker://{REF}") == first
    assert fake_registry.resolved == 2 and fake_registry.pulled == [DIGEST_1]
    assert log(store, "pull") == 1 and FakeSif.made == 1
    fake_registry.publish("1", DIGEST_2, "two")  # the tag moves
    second = images.native_image(store, rt, REF)
    assert second != first and fake_registry.pulled == [DIGEST_1, DIGEST_2]
    assert log(store, "pull") == 2 and FakeSif.made == 2
    assert images.last_digest(store, registry.parse_reference(REF)) == DIGEST_2
    pinned = f"{REF.split(':1')[0]}@{DIGEST_1}"
    assert images.native_image(store, rt, pinned) == first  # by digest: no request at all
    assert fake_registry.resolved == 3 and len(fake_registry.pulled) == 2
    assert {s for c in images.cached(store) for s in c["sources"]} == {
        "localhost:5443/team/tool:1", DIGEST_1}


def test_an_unreachable_registry_runs_the_cached_digest_with_one_warning(
        store: Store, fake_registry: FakeRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    rt = FakeSif("/x", {})
    first = images.native_image(store, rt, REF)
    capsys.readouterr()
    fake_registry.down = VenvoyError("registry localhost:5443 unreachable: Connection refused",
                                     "check it runs")
    assert images.native_image(store, rt, REF) == first
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("venvoy: warning: cannot resolve "), err
    assert "Connection refused" in err[0] and DIGEST_1[:19] in err[0]
    assert fake_registry.pulled == [DIGEST_1]


def test_an_unreachable_registry_with_nothing_cached_is_its_error(
        store: Store, fake_registry: FakeRegistry) -> None:
    fake_registry.down = VenvoyError("registry localhost:5443 unreachable", "check it runs")
    with pytest.raises(VenvoyError, match="unreachable"):
        images.native_image(store, FakeSif("/x", {}), REF)
    assert fake_registry.pulled == [] and not store.pulls_log.exists()


def test_a_registry_name_a_local_store_has_is_run_from_it_when_the_registry_is_down(
        store: Store, fake_registry: FakeRegistry, tmp_path: Path, local: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    fake_registry.down = VenvoyError("registry localhost:5443 unreachable", "check it runs")
    FakeStore.images[REF] = archive(tmp_path / "local.tar", "local")
    assert images.native_image(store, FakeStore("/x", {}), REF) == REF  # its own store
    made = images.native_image(store, FakeSif("/x", {}), REF)  # saved from the store
    assert made.endswith(".sif") and FakeStore.saved and fake_registry.pulled == []
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2 and all("running the local image" in w for w in warnings)
    with pytest.raises(VenvoyError, match="unreachable"):  # docker:// is the registry's alone
        images.native_image(store, FakeSif("/x", {}), f"docker://{REF}")


def test_a_registry_that_sends_another_manifest_is_refused(
        store: Store, fake_registry: FakeRegistry) -> None:
    fake_registry.lie = True
    with pytest.raises(DamagedError, match="sent manifest"):
        images.native_image(store, FakeSif("/x", {}), REF)
    assert not any(store.image_cache.glob("*.tar")) and FakeSif.made == 0
    assert not any(store.image_cache.glob("digest-*"))


def test_a_bad_reference_is_one_clear_error(store: Store) -> None:
    with pytest.raises(VenvoyError, match="bad"):
        images.native_image(store, FakeSif("/x", {}), "docker://localhost:5443/UPPER/x:1")


def _pull_in_child(root: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        queue.put(images.native_image(Store(Path(root), environ={}), FakeSif("/x", {}), REF))
    except BaseException as exc:  # reported to the parent
        queue.put(repr(exc))


def test_concurrent_first_runs_make_one_pull_and_one_conversion(
        store: Store, fake_registry: FakeRegistry) -> None:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_pull_in_child, args=(str(store.root), queue)) for _ in range(8)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    assert len(set(results)) == 1 and results[0].endswith(".sif"), results
    assert log(store, "pull") == 1
    assert len(store.conversions_log.read_text().splitlines()) == 1


# ------------------------------------------------------------------ the command line
def test_run_of_a_store_name_under_docker_stays_on_the_fast_path(fakebin, tmp_path: Path) -> None:
    """No registry client, no library facade: what Docker takes as is costs a stat."""
    fakebin.add("docker")
    code = (
        "import sys\n"
        "from venvoy.cli.main import main\n"
        "try:\n"
        "    main(['run', '--runtime', 'docker', '--image', 'python:3.11-slim', '--dry-run',"
        " '--', 'true'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith(('venvoy.api', 'venvoy.image'))))\n")
    src = str(Path(images.__file__).parents[2])
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env={**fakebin.env(), "PYTHONPATH": src}, check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0].endswith(" python:3.11-slim true") and out[1] == "[]", proc.stdout


def test_dry_run_of_an_archive_names_the_sif_and_makes_nothing(
        fakebin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from venvoy.cli.main import main

    fakebin.add("apptainer")
    for key, value in fakebin.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    src = archive(tmp_path / "in.tar", "a")
    with pytest.raises(SystemExit) as info:
        main(["run", "--runtime", "apptainer", "--image", str(src), "--dry-run", "--", "true"])
    assert info.value.code == 0
    home = Path(fakebin.env()["VENVOY_HOME"])
    sif = Store(home, environ={}).sif(inspect_archive(src).image_id)
    assert f" {sif} true" in capsys.readouterr().out
    assert not (home / "cache").exists() and fakebin.calls("apptainer") == 0


def test_damaged_or_linked_notes_are_never_followed_but_made_again(
        store: Store, fake_registry: FakeRegistry, tmp_path: Path) -> None:
    rt = FakeSif("/x", {})
    first = images.native_image(store, rt, REF)
    note = store.image_cache / images.digest_note(DIGEST_1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text(note.read_text())
    for damage in ("garbage\n", "sha256:" + "f" * 64 + " x\n", "link", "fifo"):
        note.unlink()
        if damage == "link":
            note.symlink_to(elsewhere)
        elif damage == "fifo":
            os.mkfifo(note)
        else:
            note.write_text(damage)
        assert images.native_image(store, rt, REF) == first  # pulled again, same SIF
        assert not note.is_symlink() and note.is_file()
    assert len(fake_registry.pulled) == 5 and FakeSif.made == 1
    assert elsewhere.read_text().startswith("sha256:")  # the link's target was left alone


def test_a_digest_note_naming_another_image_is_not_trusted(
        store: Store, fake_registry: FakeRegistry) -> None:
    rt = FakeSif("/x", {})
    first = images.native_image(store, rt, REF)
    fake_registry.publish("2", DIGEST_2, "two")
    second = images.native_image(store, rt, REF.replace(":1", ":2"))
    assert second != first
    # digest 1's note made to name digest 2's image (whose archive is there): not followed
    note = store.image_cache / images.digest_note(DIGEST_1)
    other = (store.image_cache / images.digest_note(DIGEST_2)).read_text()
    note.unlink()
    note.write_text(other)
    assert images.native_image(store, rt, REF) == first  # pulled again, not image two
    assert fake_registry.pulled == [DIGEST_1, DIGEST_2, DIGEST_1]


def test_a_store_that_cannot_be_written_is_one_line(store: Store,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from venvoy.api import images as api

    def denied(*_args: object, **_kw: object) -> str:
        raise PermissionError(errno.EACCES, "Permission denied", str(store.image_cache))

    monkeypatch.setattr(images, "native_image", denied)
    with pytest.raises(VenvoyError, match=r"cannot write .*Permission denied"):
        api.image_for_run(REF, FakeSif("/x", {}), store=store)

    def broken(*_args: object, **_kw: object) -> str:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(images, "native_image", broken)
    with pytest.raises(OSError, match="I/O error"):  # not the store's permissions: as it is
        api.image_for_run(REF, FakeSif("/x", {}), store=store)


def test_a_full_disk_while_copying_says_what_to_do(store: Store, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from venvoy.image import oci

    src = archive(tmp_path / "in.tar", "a")

    def full(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(oci._ArchiveWriter, "add_layer", full)
    with pytest.raises(VenvoyError) as err:
        images.native_image(store, FakeSif("/x", {}), str(src))
    assert "No space left" in err.value.message and "free space in" in err.value.hint
    assert not any(store.image_cache.glob("*.tar"))  # nothing half-written left
