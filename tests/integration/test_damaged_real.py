"""Damaged stores with a real runtime (Docker, as root): the commands that need
one (run, verify, init, import) on a damaged environment ``e1`` beside a good
``e2`` that shares its image. Each gives one line ``venvoy: error: ...`` and a
non-zero exit, never a traceback or a control character, and ``e2`` keeps
working; a read-only store still runs what is built and refuses the rest in one
line. (The commands that need no runtime, on every damage: tests/unit/test_damaged_store.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import BASE_ARCHIVE, Target, Venvoy, unavailable

pytestmark = pytest.mark.integration

ROOTFS = Path("/var/cache/venvoy-it/base-rootfs.tar")
DOCKER = Target("docker", "docker", as_user=False)


class Store:
    def __init__(self, venvoy: Venvoy) -> None:
        self.venvoy = venvoy
        self.home = venvoy.root / "store-damaged"
        self.work = venvoy.root / "damaged-work"
        self.work.mkdir(exist_ok=True)
        (self.work / "req.txt").write_text("six\n")

    def __call__(self, *args: str, prefix: tuple[str, ...] = (),
                 timeout: float = 900) -> subprocess.CompletedProcess[str]:
        argv, env = self.venvoy.argv(DOCKER, list(args), {"VENVOY_HOME": str(self.home),
                                                          "VENVOY_OFFLINE": "1"})
        proc = subprocess.run([*prefix, *argv], cwd=self.work, env=env, capture_output=True,
                              text=True, errors="replace", timeout=timeout)
        assert "Traceback" not in proc.stderr, proc.stderr
        for text in (proc.stdout, proc.stderr):
            bad = [c for c in text if (not c.isprintable() and c != "\n") or c == "\ufffd"]
            assert not bad, f"control characters printed: {bad[:5]!r} in {text[-500:]!r}"
        return proc

    def ok(self, *args: str, prefix: tuple[str, ...] = ()) -> str:
        proc = self(*args, prefix=prefix)
        assert proc.returncode == 0, (args, proc.stderr[-3000:])
        return proc.stdout

    def env_dir(self, name: str) -> Path:
        return self.home / "envs" / name


def one_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode not in (0, 1), (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("venvoy: error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def store(venvoy: Venvoy) -> Store:
    if shutil.which("docker") is None:
        unavailable("docker is not installed: run scripts/provision.sh")
    if not ROOTFS.is_file() or not BASE_ARCHIVE.is_file():
        unavailable(f"{ROOTFS} missing: run scripts/provision.sh")
    s = Store(venvoy)
    s.ok("init", "e2", "--python", "3.11", "-r", "req.txt", "--base", str(ROOTFS),
         "--runtime", "docker", "--quiet")
    s.ok("export", "e2", "-o", str(s.work / "e2.tar"), "--quiet")
    return s


def _record(change: dict[str, object]) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        (d / "env.json").write_text(json.dumps(json.loads((d / "env.json").read_text()) | change))
    return damage


DAMAGE: dict[str, Callable[[Path], object]] = {
    "truncated": lambda d: (d / "env.json").write_bytes((d / "env.json").read_bytes()[:60]),
    "list": lambda d: (d / "env.json").write_text("[1]"),
    "traversal-id": _record({"image_id": "sha256:../../etc"}),
    "escape-codes": _record({"created": "\x1b[2J\x1b[31m2026\ne9   forged"}),
    "index-url": _record({"requirements": "--index-url http://127.0.0.1:9/simple\nsix\n"}),
    "lock-garbled": lambda d: (d / "pylock.toml").write_bytes(b"\xff\x00[[[\x1b[31m"),
}


def make_e1(store: Store, damage: str) -> Path:
    """e1: a copy of e2 (same image), renamed, then damaged."""
    e1 = store.env_dir("e1")
    if e1.exists():
        shutil.rmtree(e1)
    shutil.copytree(store.env_dir("e2"), e1)
    _record({"name": "e1"})(e1)
    DAMAGE[damage](e1)
    return e1


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_runtime_commands_on_a_damaged_environment(store: Store, damage: str) -> None:
    make_e1(store, damage)
    assert "e1" in one_error(store("run", "e1", "--runtime", "docker", "--", "true"))
    assert "e1" in one_error(store("init", "e1", "-r", "req.txt", "--runtime", "docker"))
    assert "e1" in one_error(store("verify", "e1", "--runtime", "docker"))
    # importing over it: one line, and e1 is left as it was for the user to decide
    before = {p.name: p.read_bytes() for p in store.env_dir("e1").iterdir() if p.is_file()}
    one_error(store("import", str(store.work / "e2.tar"), "--name", "e1"))
    assert {p.name: p.read_bytes() for p in store.env_dir("e1").iterdir() if p.is_file()} == before
    # the neighbour, sharing the image, is untouched
    assert store.ok("run", "e2", "--runtime", "docker", "--", "python", "-c",
                    "import six; print('six', six.__version__)").startswith("six ")
    assert "OK, matches the lock" in store.ok("verify", "e2", "--runtime", "docker")
    listing = store.ok("list").splitlines()
    assert listing[1].startswith("e1") and "damaged: " in listing[1]
    assert listing[2].startswith("e2") and "3.11" in listing[2]


def test_force_replaces_a_damaged_environment(store: Store) -> None:
    make_e1(store, "truncated")
    store.ok("init", "e1", "-r", "req.txt", "--base", str(ROOTFS), "--runtime", "docker",
             "--force", "--quiet")
    assert store.ok("run", "e1", "--runtime", "docker", "--", "python", "-c", "print(6 * 7)") \
        == "42\n"
    store.ok("remove", "e1")
    assert store.ok("run", "e2", "--runtime", "docker", "--", "python", "-c", "print(1)") == "1\n"


def test_read_only_store_runs_what_is_built(store: Store) -> None:
    """A store on a read-only mount: the built environment runs, verify works, and what
    would write (init, remove) is one line; nothing in the store changes."""
    tools = [shutil.which(t) for t in ("unshare", "sh", "mount")]
    if None in tools:
        unavailable("unshare and mount (util-linux) are needed for a read-only bind mount")
    unshare, sh, mount = (str(t) for t in tools)
    make_e1(store, "truncated")
    store.ok("run", "e2", "--runtime", "docker", "--", "true")  # loaded into Docker already
    (store.home / "tmp").mkdir(exist_ok=True)
    prefix = (unshare, "--mount", "--propagation", "private", sh, "-c",
              f'{mount} --bind "$0" "$0" && {mount} -o remount,ro,bind "$0" "$0" && exec "$@"',
              str(store.home))
    before = sorted(str(p) for p in store.home.rglob("*") if "locks" not in p.parts)
    assert store.ok("run", "e2", "--runtime", "docker", "--", "python", "-c", "print(5)",
                    prefix=prefix) == "5\n"
    for args in (["init", "e3", "-r", "req.txt", "--runtime", "docker"], ["remove", "e2"]):
        line = one_error(store(*args, prefix=prefix))
        assert "Read-only file system" in line, line
    assert "damaged" in store.ok("list", prefix=prefix)
    assert sorted(str(p) for p in store.home.rglob("*") if "locks" not in p.parts) == before


def test_a_record_damaged_after_its_image_was_loaded_never_runs(store: Store) -> None:
    """``venvoy run`` finds a built environment with a few stats (store/fastpath.py).
    Once e1's image is loaded into Docker, damaging its env.json used to change
    nothing: it still ran. Now each damage gives the record's one line; an ``image``
    file that is a FIFO does not hang ``run`` (the full path runs the good record)."""
    e1 = store.env_dir("e1")
    if e1.exists():
        shutil.rmtree(e1)
    store.ok("import", str(store.work / "e2.tar"), "--name", "e1", "--quiet")
    assert store.ok("run", "e1", "--runtime", "docker", "--", "python", "-c", "print(3)") == "3\n"
    good = (e1 / "env.json").read_bytes()
    for damage in ("truncated", "list", "traversal-id", "escape-codes"):
        DAMAGE[damage](e1)
        assert "e1" in one_error(store("run", "e1", "--runtime", "docker", "--", "true"))
        (e1 / "env.json").write_bytes(good)
    (e1 / "image").unlink()
    os.mkfifo(e1 / "image")
    assert store("run", "e1", "--runtime", "docker", "--", "python", "-c", "print(4)",
                 timeout=600).stdout == "4\n"
    shutil.rmtree(e1)
