"""core.fs: atomic publishing, owner-tagged temporaries and their clean-up;
core.proc: children that die with venvoy; and no debris from racing commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from venvoy.core import fs
from venvoy.core.fs import (
    TMP_PREFIX,
    atomic_write,
    clean_stale,
    new_path,
    owner_alive,
    owner_tag,
    remove_tree,
    scratch_dir,
    temp_name,
)

OLD = 0  # an mtime of 1970: older than any bound


def make_entry(directory: Path, name: str, *, old: bool = True, tree: bool = True) -> Path:
    path = directory / name
    if tree:
        (path / "sub").mkdir(parents=True)
        (path / "sub" / "f").write_bytes(b"x" * 100)
    else:
        path.write_bytes(b"x")
    if old:
        os.utime(path, (OLD, OLD))
    return path


def dead_owner() -> str:
    """An owner tag ``HOST+PID+START`` of a process of this host that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "from venvoy.core.fs import owner_tag; "
                             "print(owner_tag())"], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate()
    return out.strip()


def wait_until(predicate, what: str, bound: float = 30.0) -> None:
    """Poll ``predicate`` until true, failing after ``bound`` seconds (a bound, not a wait)."""
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {bound} s: {what}")
        time.sleep(0.02)


def process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(b")") + 2:].split()[0] in (b"Z", b"X")  # a zombie has ended


# -- owner tags -----------------------------------------------------------------------


def test_temporary_names_carry_their_owner(tmp_path: Path) -> None:
    with new_path(tmp_path / "final.json") as tmp:
        assert f"@{owner_tag()}+" in tmp.name
        assert owner_alive(tmp.name) is True
    assert owner_alive(temp_name("build-x")) is True
    assert owner_alive(f"build-x@{dead_owner()}+0badf00d") is False
    assert owner_alive("build-x-k2j3h4") is None  # no owner: unknown
    assert owner_alive("build-x@elsewhere.example+1+1+0badf00d") is None  # another host


def test_a_reused_pid_is_not_taken_for_the_owner(tmp_path: Path) -> None:
    host, pid, start = owner_tag().split("+")
    other_start = int(start) + 1  # this PID, but a process started at another time
    assert owner_alive(f"x@{host}+{pid}+{other_start}+0badf00d") is False


# -- clean_stale ----------------------------------------------------------------------


def test_a_live_owners_entry_is_never_removed_however_old(tmp_path: Path) -> None:
    mine = make_entry(tmp_path, temp_name("build-e"))  # mtime 1970, owner: this process
    mine_tmp = make_entry(tmp_path, temp_name(f"{TMP_PREFIX}env.json"), tree=False)
    assert clean_stale(tmp_path, older_than=0, prefixes=("build-",)) == 0
    assert mine.is_dir() and mine_tmp.is_file()


def test_a_dead_owners_entry_is_removed_at_once(tmp_path: Path) -> None:
    young = make_entry(tmp_path, f"build-e@{dead_owner()}+0badf00d", old=False)
    young_file = make_entry(tmp_path, f"{TMP_PREFIX}x@{dead_owner()}+0badf00d", old=False,
                            tree=False)
    assert clean_stale(tmp_path) == 2
    assert not young.exists() and not young_file.exists()


def test_unknown_owners_are_removed_only_when_old(tmp_path: Path) -> None:
    far_old = make_entry(tmp_path, "build-e@elsewhere.example+1+1+0badf00d")
    far_young = make_entry(tmp_path, "import-e@elsewhere.example+1+1+0badf00d", old=False)
    legacy_old = make_entry(tmp_path, "build-e-abc123")  # a venvoy before owner tags
    legacy_young = make_entry(tmp_path, "build-temp-123", old=False)
    keep = make_entry(tmp_path, "not-ours")  # no temporary prefix, no owner
    assert clean_stale(tmp_path, prefixes=("build-",)) == 2
    assert not far_old.exists() and not legacy_old.exists()
    assert far_young.exists() and legacy_young.exists() and keep.exists()


def test_clean_stale_never_follows_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "d").mkdir(parents=True)
    store = tmp_path / "store"
    store.mkdir()
    link = store / f"build-e@{dead_owner()}+0badf00d"
    link.symlink_to(outside)
    assert clean_stale(store) == 1
    assert not os.path.lexists(link) and (outside / "d").is_dir()


def test_clean_stale_of_a_missing_directory_is_nothing(tmp_path: Path) -> None:
    assert clean_stale(tmp_path / "none") == 0


def test_remove_tree_removes_read_only_directories(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("x")
    (tree / "a" / "b").chmod(0o500)
    (tree / "a").chmod(0o500)
    remove_tree(tree)
    assert not tree.exists()


def test_scratch_dir_cleans_what_a_dead_run_left_and_itself(tmp_path: Path) -> None:
    left = make_entry(tmp_path, f"sif-build@{dead_owner()}+0badf00d", old=False)
    apptainer_left = make_entry(tmp_path, "build-temp-1234")
    with scratch_dir(tmp_path, "sif-build", stale=("build-temp-",)) as work:
        assert owner_alive(work.name) is True
        assert not left.exists() and not apptainer_left.exists()
        (work / "big").write_bytes(b"x")
    assert not work.exists()


# -- atomic writes --------------------------------------------------------------------


def test_atomic_write_leaves_old_content_and_no_temporary_on_failure(tmp_path: Path,
                                                                     monkeypatch) -> None:
    final = tmp_path / "f.json"
    atomic_write(final, "old")

    def boom(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write(final, "new")
    assert final.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.json"]


def test_new_path_swaps_a_directory_whole(tmp_path: Path) -> None:
    final = tmp_path / "d"
    with new_path(final, directory=True) as tmp:
        (tmp / "a").write_text("1")
    with new_path(final, directory=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(os.listdir(final)) == ["b"]
    assert os.listdir(tmp_path) == ["d"]


# -- children die with venvoy ---------------------------------------------------------

PARENT = """
import os, subprocess, sys
from venvoy.core.proc import preexec
child = subprocess.Popen(["sleep", "300"], preexec_fn=preexec(int(sys.argv[1])))
print(child.pid, flush=True)
child.wait()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("sig", [9, 15])
def test_a_child_dies_when_venvoy_is_killed(sig: int) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(sig)], stdout=subprocess.PIPE,
                              text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert not process_gone(child)
    parent.kill()  # kill -9: no handler, no clean-up code runs in venvoy
    parent.wait()
    wait_until(lambda: process_gone(child), f"child {child} still runs after its parent died")


RUNNER = """
import os, sys
from venvoy.runtime.runner import spawn
pid = spawn(["/bin/sleep", "300"], dict(os.environ))
print(pid, flush=True)
os.waitpid(pid, 0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_runtime_client_gets_sigterm_when_venvoy_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", RUNNER], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    wait_until(lambda: process_gone(child), "the runtime client outlived venvoy")


# -- racing commands leave no orphan image -------------------------------------------


def test_remove_racing_init_force_leaves_no_orphan_image(tmp_path: Path, monkeypatch) -> None:
    """``remove`` waits for a running ``init --force``, then removes what it built:
    before, it read the record first and dropped the old image, orphaning the new."""
    from venvoy.build import bases, environment, lock
    from venvoy.runtime import detect
    from venvoy.store import records
    from venvoy.store.layout import Store

    store = Store()
    lock_text = 'lock-version = "1.0"\ncreated-by = "test"\n'
    old_id = "sha256:" + "a" * 64
    new_id = "sha256:" + "b" * 64

    def fake_image(image_id: str) -> None:
        atomic_write(store.image_archive(image_id), b"fake image " + image_id.encode())

    fake_image(old_id)
    lhash = records.lock_hash(lock_text)
    record = records.EnvRecord(
        name="e", python="3.11", requirements="", base=None, base_source="test",
        base_image_id="sha256:" + "c" * 64, glibc="2.36", arch="x86_64", identity="1" * 64,
        image_id=old_id, lock_hash=lhash, inputs="0" * 64, built_with="docker", packages=0,
        created="2026-01-01T00:00:00Z", venvoy_version="0", recipe="1")
    records.write_env(store, record, lock_text)

    base = type("Base", (), {"image_id": record.base_image_id, "source": "test", "glibc": "2.36",
                             "archive": tmp_path / "base.tar"})()
    monkeypatch.setattr(bases, "resolve_base", lambda *a, **k: base)
    monkeypatch.setattr(detect, "choose_runtime",
                        lambda *a, **k: type("C", (), {"runtime": type("R", (), {"name": "docker"})()}))
    monkeypatch.setattr(lock, "resolve", lambda *a, **k: lock_text)
    remove_waiting = threading.Event()
    real_lock = Store.lock

    def watched_lock(self: Store, key: str, timeout: float = 600) -> object:
        if threading.current_thread().name == "remove":
            remove_waiting.set()  # remove has read what it reads before the lock
        return real_lock(self, key, timeout)

    monkeypatch.setattr(Store, "lock", watched_lock)
    result: dict[str, object] = {}

    def remove() -> None:
        try:
            result["freed"] = records.remove("e", store)
        except Exception as exc:  # reported below
            result["error"] = exc

    def fake_build(*args: object, **_kw: object) -> object:
        thread = threading.Thread(target=remove, name="remove")
        result["thread"] = thread
        thread.start()
        assert remove_waiting.wait(30), "remove never reached the environment's lock"
        fake_image(new_id)  # the build publishes its image while remove waits
        publish = args[-1]
        assert callable(publish)
        return publish(new_id, 0)

    monkeypatch.setattr(environment, "_build", fake_build)
    environment.init("e", force=True, offline=True, requirements_text="", store=store)
    thread = result["thread"]
    assert isinstance(thread, threading.Thread)
    thread.join(60)
    assert "error" not in result, result.get("error")
    assert not store.env_dir("e").exists()
    leftovers = [p.name for p in store.image_archive(new_id).parent.iterdir()]
    assert leftovers == [], f"orphan images: {leftovers}"


def _record(image_id: str, name: str) -> object:
    from venvoy.store import records

    return records.EnvRecord(
        name=name, python="3.11", requirements="", base=None, base_source="test",
        base_image_id="sha256:" + "c" * 64, glibc="2.36", arch="x86_64", identity="1" * 64,
        image_id=image_id, lock_hash=records.lock_hash(LOCK), inputs="0" * 64,
        built_with="docker", packages=0, created="2026-01-01T00:00:00Z", venvoy_version="0",
        recipe="1")


LOCK = 'lock-version = "1.0"\ncreated-by = "test"\n'
SHARED_ID = "sha256:" + "d" * 64


class RemoveWatcher:
    """Runs ``remove(NAME)`` in a thread and tells when it is waiting for an image's
    lock, or has finished: whichever comes first (no sleep, no timing)."""

    def __init__(self, monkeypatch, name: str) -> None:
        from venvoy.store import records
        from venvoy.store.layout import Store

        self.reached = threading.Event()
        self.result: dict[str, object] = {}
        real_lock = Store.lock
        reached = self.reached

        def watched_lock(store: Store, key: str, timeout: float = 600) -> object:
            if threading.current_thread().name == "remove" and key.startswith("image-"):
                reached.set()
            return real_lock(store, key, timeout)

        monkeypatch.setattr(Store, "lock", watched_lock)

        def remove() -> None:
            try:
                records.remove(name, Store())
            except Exception as exc:  # reported by check()
                self.result["error"] = exc
            finally:
                reached.set()

        self.thread = threading.Thread(target=remove, name="remove")

    def start_and_wait(self) -> None:
        self.thread.start()
        assert self.reached.wait(60), "remove neither waited for the image nor finished"

    def check(self) -> None:
        self.thread.join(60)
        assert not self.thread.is_alive()
        assert "error" not in self.result, self.result.get("error")


def test_remove_of_another_name_keeps_an_image_init_is_publishing(tmp_path: Path,
                                                                     monkeypatch) -> None:
    """``init a`` publishes image X while ``remove b`` (also X) runs: before, remove
    deleted X between its rename and a's record, leaving a without its image."""
    from venvoy.build import environment
    from venvoy.store import records
    from venvoy.store.layout import Store

    store = Store()
    atomic_write(store.image_archive(SHARED_ID), b"fake image")
    records.write_env(store, _record(SHARED_ID, "b"), LOCK)  # type: ignore[arg-type]
    built = tmp_path / "image.tar"
    built.write_bytes(b"fake image")
    watcher = RemoveWatcher(monkeypatch, "b")

    def write_record() -> records.Environment:
        watcher.start_and_wait()  # the archive is in place; a's record is not yet
        return records.write_env(store, _record(SHARED_ID, "a"), LOCK)  # type: ignore[arg-type]

    with store.lock("env-a"):
        env = environment.publish_image(store, built, SHARED_ID, write_record)
    watcher.check()
    assert not store.env_dir("b").exists()
    assert env.archive.is_file(), "remove b deleted the image a was publishing"
    assert records.get("a", store).archive.read_bytes() == b"fake image"


def test_remove_of_another_name_keeps_an_image_import_is_publishing(tmp_path: Path,
                                                                       monkeypatch) -> None:
    """The same race with ``venvoy import`` publishing the image."""
    from venvoy.store import records
    from venvoy.store.layout import Store
    from venvoy.transport import archive

    store = Store()
    atomic_write(store.image_archive(SHARED_ID), b"fake image")
    records.write_env(store, _record(SHARED_ID, "b"), LOCK)  # type: ignore[arg-type]
    work = tmp_path / "work"
    work.mkdir()
    (work / "image.tar").write_bytes(b"fake image")
    # b's image is there already: import places nothing, but a's record must still
    # be written before remove b looks whether the image is in use.
    watcher = RemoveWatcher(monkeypatch, "b")
    real_write = archive.write_env

    def write_env(*args: object, **kw: object) -> object:
        watcher.start_and_wait()
        return real_write(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(archive, "write_env", write_env)
    env = archive._publish(store, work, _record(SHARED_ID, "a"), LOCK, False, False, lambda _m: None)
    watcher.check()
    assert not store.env_dir("b").exists()
    assert env.archive.is_file(), "remove b deleted the image a was importing"


def test_init_force_over_a_damaged_record_drops_its_unused_image(tmp_path: Path,
                                                                    monkeypatch) -> None:
    """``init --force`` replaces a damaged record: the image it named goes too (unless
    another environment uses it); before, it stayed behind, an orphan."""
    from venvoy.build import bases, environment, lock
    from venvoy.runtime import detect
    from venvoy.store import records
    from venvoy.store.layout import Store

    store = Store()
    old_id, kept_id, new_id = ("sha256:" + c * 64 for c in "aef")
    for image_id in (old_id, kept_id):
        atomic_write(store.image_archive(image_id), b"fake image")
    records.write_env(store, _record(kept_id, "other"), LOCK)  # type: ignore[arg-type]
    records.write_env(store, _record(old_id, "e"), LOCK)  # type: ignore[arg-type]
    # damaged, but still naming its image (and, through a hand edit, the other one)
    (store.env_dir("e") / "env.json").write_text(json.dumps({"image_id": old_id, "name": 1}))
    (store.env_dir("e") / "image").write_text(f"{kept_id} {'1' * 64}\n")
    base = type("Base", (), {"image_id": "sha256:" + "c" * 64, "source": "test",
                             "glibc": "2.36", "archive": tmp_path / "base.tar"})()
    monkeypatch.setattr(bases, "resolve_base", lambda *a, **k: base)
    monkeypatch.setattr(detect, "choose_runtime",
                        lambda *a, **k: type("C", (), {"runtime": type("R", (), {"name": "docker"})()}))
    monkeypatch.setattr(lock, "resolve", lambda *a, **k: LOCK)

    def fake_build(*args: object, **_kw: object) -> object:
        built = tmp_path / "new.tar"
        built.write_bytes(b"new image")
        publish = args[-1]
        assert callable(publish)
        return environment.publish_image(store, built, new_id, lambda: publish(new_id, 0))

    monkeypatch.setattr(environment, "_build", fake_build)
    with pytest.raises(Exception, match="damaged"):
        environment.init("e", offline=True, requirements_text="", store=store)
    assert store.image_archive(old_id).is_file()  # without --force nothing changes
    env, built = environment.init("e", force=True, offline=True, requirements_text="", store=store)
    assert built and env.image_id == new_id and env.archive.read_bytes() == b"new image"
    assert not store.image_archive(old_id).exists(), "the damaged record's image is an orphan"
    assert store.image_archive(kept_id).is_file()  # "other" still uses it


def test_fs_module_exports_what_callers_use() -> None:
    assert {"new_path", "atomic_write", "file_lock", "clean_stale", "scratch_dir",
            "remove_tree", "temp_name"} <= set(fs.__all__)


def test_init_first_removes_what_a_killed_init_left(monkeypatch) -> None:
    """kill -9 during init left tmp/build-* (100+ MB): the next init removes it,
    but never the build directory of an init still running."""
    from venvoy.build import environment
    from venvoy.store.layout import Store

    store = Store()
    killed = make_entry(store.tmp, f"build-e@{dead_owner()}+0badf00d", old=False)
    killed_import = make_entry(store.tmp, f"import@{dead_owner()}+0badf00d", old=False)
    legacy = make_entry(store.tmp, "build-e-x1y2z3")  # a venvoy before owner tags, old
    running = make_entry(store.tmp, temp_name("build-f"))  # an init running now, however old
    half_env = make_entry(store.envs, f"{TMP_PREFIX}e@{dead_owner()}+0badf00d", old=False)

    class Reached(Exception):
        pass

    def stop(*_a: object) -> None:
        raise Reached

    monkeypatch.setattr(environment, "find", stop)
    with pytest.raises(Reached):
        environment.init("e", requirements_text="", offline=True, store=store)
    assert not killed.exists() and not killed_import.exists() and not legacy.exists()
    assert not half_env.exists()
    assert running.is_dir()


def test_apptainer_conversion_temporaries_live_in_an_owned_scratch_dir(tmp_path: Path) -> None:
    """Apptainer's build-temp-* (200+ MB) goes into a directory that names its
    owner, so a killed conversion's is removed by the next one."""
    from venvoy.runtime.apptainer import Apptainer

    log = tmp_path / "log"
    fake = tmp_path / "apptainer"
    fake.write_text(f'#!/bin/sh\necho "$APPTAINER_TMPDIR" > {log}\n'
                    'mkdir "$APPTAINER_TMPDIR/build-temp-1"\necho sif > "$2"\n')
    fake.chmod(0o755)
    dest = tmp_path / "sif"
    dest.mkdir()
    left = make_entry(dest, f"sif-build@{dead_owner()}+0badf00d", old=False)
    (left / "build-temp-99").mkdir()
    # Apptainer's own builder (venvoy's SIF writer has no build-temp-*).
    app = Apptainer(str(fake), {"PATH": "/usr/bin:/bin", "VENVOY_SIF_COMPRESSION": "apptainer"})
    out = app.load_archive(tmp_path / "image.tar", "x", dest)
    tmpdir = Path(log.read_text().strip())
    assert tmpdir.parent == dest and owner_alive(tmpdir.name) is True
    assert Path(out).read_text() == "sif\n"
    assert sorted(os.listdir(dest)) == [Path(out).name]  # the dead run's and its own: gone


def test_a_shared_venvoy_tmpdir_loses_only_venvoys_own_names(tmp_path: Path, monkeypatch) -> None:
    """VENVOY_TMPDIR=/tmp: other programs' old build-* there are not venvoy's to remove."""
    from venvoy.build.environment import clean_debris
    from venvoy.store.layout import Store

    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    monkeypatch.setenv("VENVOY_TMPDIR", str(shared))
    theirs = [make_entry(shared, n) for n in ("build-other", "import-x", f"{TMP_PREFIX}y")]
    ours = make_entry(shared, f"build-e@{dead_owner()}+0badf00d")
    clean_debris(Store())
    assert all(p.exists() for p in theirs) and not ours.exists()


def test_open_fresh_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    """A log venvoy (maybe as root) writes in the store: a symlink planted there is
    replaced, and the file it pointed at is left exactly as it was."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    log = tmp_path / "store" / "bases" / "x.log"
    log.parent.mkdir(parents=True)
    log.symlink_to(victim)
    with fs.open_fresh(log) as fh:
        fh.write(b"log line\n")
    assert victim.read_text() == "precious"
    assert not log.is_symlink() and log.read_bytes() == b"log line\n"
    os.mkfifo(tmp_path / "fifo")
    with fs.open_fresh(tmp_path / "fifo") as fh:  # a FIFO would block an open(): replaced
        fh.write(b"x")
    assert (tmp_path / "fifo").read_bytes() == b"x"


def test_container_names_carry_their_owner_in_dockers_alphabet() -> None:
    import re

    name = fs.container_name("venvoy-build")
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name), name
    assert fs.container_owner_alive(name) is True  # this process
    host = fs.owner_tag().rsplit("+", 2)[0]
    assert fs.container_owner_alive(f"venvoy-build_{host}_999999_1_0123abcd") is False
    assert fs.container_owner_alive("venvoy-build_other-host_1_1_0123abcd") is None
    assert fs.container_owner_alive("someone-elses-container") is None


def test_file_lock_excludes_times_out_in_one_line_and_never_follows_a_link(tmp_path: Path) -> None:
    from venvoy.core.errors import VenvoyError

    lock = tmp_path / "locks" / "x.lock"
    said: list[str] = []
    # A second holder is a separate open file description, as another process has.
    with fs.file_lock(lock, timeout=5, what="x"), pytest.raises(VenvoyError) as info, \
            fs.file_lock(lock, timeout=0.2, what="entry x", waiting=lambda: said.append("w")):
        pass
    assert said == ["w"] and "\n" not in str(info.value)
    assert "waiting for another venvoy working on entry x" in str(info.value)
    with fs.file_lock(lock, timeout=1, what="x"):  # released when the holder left
        pass
    victim = tmp_path / "victim"
    victim.write_text("keep")
    planted = tmp_path / "locks" / "y.lock"
    planted.symlink_to(victim)
    with pytest.raises(VenvoyError, match="cannot open the lock file"), \
            fs.file_lock(planted, timeout=1, what="y"):
        pass
    assert victim.read_text() == "keep"
