"""Damaged stores through the real CLI (``.venv/bin/venvoy`` in a subprocess,
``VENVOY_HOME`` a fresh store): every command that needs no container runtime,
on every kind of damage. Each must give one line ``venvoy: error: ...`` and a
non-zero exit, or succeed; never a traceback, never a control character on
the terminal, never harm to the neighbouring environment, never a half-written
file. (run, verify, init and import against a real runtime:
tests/integration/test_damaged_real.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from venvoy.store import records
from venvoy.store.layout import Store

REPO = Path(__file__).resolve().parents[2]
LOCK = 'lock-version = "1.0"\ncreated-by = "uv"\nrequires-python = ">=3.11"\n'


def venvoy_argv() -> list[str]:
    script = REPO / ".venv" / "bin" / "venvoy"
    return [str(script)] if script.exists() else [sys.executable, "-m", "venvoy"]


def data(name: str, image: str, **extra: object) -> dict[str, object]:
    return {"name": name, "python": "3.11", "requirements": "six\n", "identity": "ef" * 32,
            "image_id": "sha256:" + image * 32, "lock_hash": records.lock_hash(LOCK),
            "created": "2026-01-02T03:04:05Z", "packages": 1} | extra


def make(store: Store, name: str, image: str) -> records.Environment:
    env = records.write_env(store, records.EnvRecord.from_dict(data(name, image), "t", ""), LOCK)
    env.archive.parent.mkdir(parents=True, exist_ok=True)
    env.archive.write_bytes(b"image" * 1000)
    return env


def _json(change: dict[str, object]) -> Callable[[Path], object]:
    def damage(d: Path) -> None:
        (d / "env.json").write_text(json.dumps(data("e1", "11") | change))
    return damage


def _write(name: str, raw: bytes) -> Callable[[Path], object]:
    return lambda d: (d / name).write_bytes(raw)


def _replace_with(name: str, make: Callable[[Path], object]) -> Callable[[Path], object]:
    def damage(d: Path) -> None:
        (d / name).unlink()
        make(d / name)
    return damage


def _replace_with_dir(name: str) -> Callable[[Path], object]:
    def damage(d: Path) -> None:
        (d / name).unlink()
        (d / name).mkdir()
    return damage


#: Damage to e1's record (env.json itself).
RECORD_DAMAGE: dict[str, Callable[[Path], object]] = {
    "truncated": lambda d: (d / "env.json").write_bytes((d / "env.json").read_bytes()[:40]),
    "empty-object": _write("env.json", b"{}"),
    "list": _write("env.json", b"[1]"),
    "null": _write("env.json", b"null"),
    "binary": _write("env.json", b"\xff\xfe\x1b[31m\x00\n"),
    "deep": _write("env.json", b"[" * 200000),
    "huge": _write("env.json", b" " * (1 << 20) + b"{}"),
    "missing": lambda d: (d / "env.json").unlink(),
    "directory": _replace_with_dir("env.json"),
    "traversal-id": _json({"image_id": "sha256:../../etc"}),
    "escape-codes": _json({"created": "\x1b[2J\x1b[31m2026\ne9    3.11   forged row"}),
    "index-url": _json({"requirements": "--index-url http://127.0.0.1:9/simple\nsix\n"}),
    "other-name": _json({"name": "e2"}),
    "fifo": _replace_with("env.json", os.mkfifo),
    "device": _replace_with("env.json", lambda p: p.symlink_to("/dev/zero")),
}
#: Damage to e1's lock beside a good record.
LOCK_DAMAGE: dict[str, Callable[[Path], object]] = {
    "lock-missing": lambda d: (d / "pylock.toml").unlink(),
    "lock-garbled": _write("pylock.toml", b"\xff\x00[[[ \x1b[31m"),
    "lock-edited": lambda d: (d / "pylock.toml").write_text(LOCK + "\n[[packages]]\n"),
    "lock-directory": _replace_with_dir("pylock.toml"),
    "lock-fifo": _replace_with("pylock.toml", os.mkfifo),
}
DAMAGE = RECORD_DAMAGE | LOCK_DAMAGE


class Cli:
    def __init__(self, home: Path, cwd: Path) -> None:
        self.home = home
        self.cwd = cwd

    def __call__(self, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VENVOY_")}
        env.update(VENVOY_HOME=str(self.home), VENVOY_OFFLINE="1", NO_COLOR="1",
                   PATH="/nonexistent")  # no runtime, no uv on PATH: nothing may need one
        proc = subprocess.run([*prefix, *venvoy_argv(), *args], cwd=self.cwd, env=env,
                              capture_output=True, text=True, errors="replace", timeout=120)
        assert "Traceback" not in proc.stderr, proc.stderr
        for text in (proc.stdout, proc.stderr):
            bad = [c for c in text if (not c.isprintable() and c != "\n") or c == "\ufffd"]
            assert not bad, f"control characters printed: {bad[:5]!r} in {text[:500]!r}"
        return proc


def one_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode not in (0, 1), proc
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("venvoy: error: "), proc.stderr
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))
            if not {"locks", "tmp"} & set(p.relative_to(root).parts)}  # scratch, empty


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "home", tmp_path)


@pytest.fixture
def store(cli: Cli) -> Store:
    store = Store(cli.home)
    make(store, "e1", "11")
    make(store, "e2", "22")
    return store


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_list_shows_neighbours_and_a_safe_damaged_row(cli: Cli, store: Store, damage: str) -> None:
    DAMAGE[damage](store.env_dir("e1"))
    proc = cli("list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("NAME") and len(lines) == 3, proc.stdout
    assert lines[1].startswith("e1") and "damaged: " in lines[1]
    assert lines[2].split()[:2] == ["e2", "3.11"]
    rows = {r["name"]: r for r in json.loads(cli("list", "--json").stdout)}
    assert set(rows) == {"e1", "e2"} and "damaged" in rows["e1"] and "damaged" not in rows["e2"]


COMMANDS = [
    ["export", "e1", "--format", "lock", "-o", "{out}/e1.pylock.toml"],
    ["export", "e1", "--format", "containerfile", "-o", "{out}/ctx"],
    ["export", "e1", "--format", "archive", "-o", "{out}/e1.tar"],
    ["lock", "e1"],
    ["init", "e1", "-r", "{out}/req.txt"],  # refused before any runtime is looked for
]


@pytest.mark.parametrize(("damage", "command"), [(d, c) for d in DAMAGE for c in COMMANDS],
                         ids=[f"{c[0]}-{c[-1].rsplit('.', 1)[-1][:8]}-{d}" for d in DAMAGE
                              for c in COMMANDS])
def test_commands_on_a_damaged_environment(cli: Cli, store: Store, tmp_path: Path, damage: str,
                                           command: list[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "req.txt").write_text("six\n")
    DAMAGE[damage](store.env_dir("e1"))
    before = snapshot(store.root)
    line = one_error(cli(*[c.format(out=out) for c in command]))
    assert "e1" in line
    assert sorted(p.name for p in out.iterdir()) == ["req.txt"]  # nothing half-written
    assert snapshot(store.root) == before


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_remove_the_neighbour_then_the_damaged_one(cli: Cli, store: Store, damage: str) -> None:
    e2 = records.get("e2", store)
    DAMAGE[damage](store.env_dir("e1"))
    e1_files = snapshot(store.env_dir("e1"))
    proc = cli("remove", "e2")
    assert proc.returncode == 0, proc.stderr
    assert not e2.dir.exists() and not e2.archive.exists()  # its image went with it
    assert snapshot(store.env_dir("e1")) == e1_files
    assert store.image_archive("sha256:" + "11" * 32).exists()  # e1's image is e1's
    proc = cli("remove", "e1")
    assert proc.returncode == 0, proc.stderr
    assert not (store.envs / "e1").exists() and list(store.envs.iterdir()) == []
    if damage not in ("traversal-id",):  # its image is still named by the `image` file
        assert not store.image_archive("sha256:" + "11" * 32).exists()
    assert one_error(cli("remove", "e1")).startswith("venvoy: error: no environment named 'e1'")


def test_neighbour_still_works(cli: Cli, store: Store, tmp_path: Path) -> None:
    for damage in ("truncated",):
        DAMAGE[damage](store.env_dir("e1"))
    proc = cli("export", "e2", "--format", "lock", "-o", str(tmp_path / "e2.toml"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "e2.toml").read_text() == LOCK


def test_damaged_names_in_store_are_ignored(cli: Cli, store: Store) -> None:
    """Entries in envs/ that are not environment names (a temp dir, escape codes in a
    file name) never reach the terminal."""
    (store.envs / ".tmp-e3-abc").mkdir()
    (store.envs / "e\x1b[31mvil").mkdir()
    (store.root / "cache" / "loaded").mkdir(parents=True)
    (store.root / "cache" / "loaded" / f"\x1b[31mdocker-root-0-{'22' * 8}-x").touch()
    proc = cli("list")
    assert [ln.split()[0] for ln in proc.stdout.splitlines()[1:]] == ["e1", "e2"]


# --------------------------------------------------------------------------- read-only store


def read_only(cli: Cli, store: Store) -> tuple[str, ...]:
    """A prefix that runs the CLI with the store read-only: a read-only bind mount as
    root (root ignores permission bits), the permission bits otherwise."""
    if os.geteuid() != 0:
        for p in [store.root, *store.root.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        return ()
    tools = [shutil.which(t) for t in ("unshare", "sh", "mount")]
    if None in tools:
        pytest.fail("unshare and mount (util-linux) are needed to make a read-only store as root")
    unshare, sh, mount = (str(t) for t in tools)
    return (unshare, "--mount", "--propagation", "private", sh, "-c",
            f'{mount} --bind "$0" "$0" && {mount} -o remount,ro,bind "$0" "$0" && exec "$@"',
            str(store.root))


@pytest.mark.parametrize("command", [
    ["remove", "e2"], ["remove", "e1"], ["lock", "e2"], ["init", "e3", "-r", "{out}/req.txt"],
    ["init", "e2", "--force"], ["import", "{out}/req.txt"],
    ["export", "e2", "--format", "lock", "-o", "{store}/e2.toml"],
])
def test_read_only_store(cli: Cli, store: Store, tmp_path: Path, command: list[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "req.txt").write_text("six\n")
    (store.root / "tmp").mkdir(exist_ok=True)
    DAMAGE["truncated"](store.env_dir("e1"))
    before = snapshot(store.root)
    prefix = read_only(cli, store)
    try:
        proc = cli(*[c.format(out=out, store=store.root) for c in command], prefix=prefix)
        listing = cli("list", prefix=prefix)
        exported = cli("export", "e2", "--format", "lock", "-o", str(out / "e2.toml"),
                       prefix=prefix)
    finally:
        for p in [store.root, *store.root.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
    line = one_error(proc)
    if command[0] != "import":
        assert "Read-only file system" in line or "Permission denied" in line, line
    assert listing.returncode == 0 and "e2" in listing.stdout and "damaged" in listing.stdout
    assert exported.returncode == 0 and (out / "e2.toml").read_text() == LOCK  # reading works
    assert snapshot(store.root) == before


# --------------------------------------------------------------------------- verify's report


@pytest.mark.parametrize(("stdout", "error"), [
    (json.dumps({"dists": {"six\x1b[31m": "1.0\n2"}, "modified": [["six", "a\x1b]0;pwn\x07"]],
                 "missing": [["x\u202e", "b\rc"]], "checked": 3}), None),
    ("not json \x1b[31m", "printed no report"),
    (json.dumps({"dists": [1], "modified": [], "missing": [], "checked": 0}), "printed no report"),
    (json.dumps({"dists": {}, "modified": [[1, 2, 3]], "missing": [], "checked": 0}),
     "printed no report"),
])
def test_verify_shows_what_a_hostile_image_says_printably(
        store: Store, monkeypatch: pytest.MonkeyPatch, stdout: str, error: str | None) -> None:
    from types import SimpleNamespace

    from venvoy.api import environments
    from venvoy.core.errors import DamagedError

    env = records.get("e1", store)
    argv = [sys.executable, "-c", f"import sys; sys.stdout.write({stdout!r})"]
    rt = SimpleNamespace(name="fake", invocation=lambda _req: SimpleNamespace(argv=argv, env=None))
    monkeypatch.setattr(environments, "prepare_run", lambda *_a, **_kw: (rt, None, env))
    if error is not None:
        with pytest.raises(DamagedError, match=error):
            environments.verify("e1", store=store)
        return
    report = environments.verify("e1", store=store)
    text = json.dumps(report, ensure_ascii=False)
    assert all(c.isprintable() for c in text), text
    assert report["modified_files"] == [{"package": "six", "path": "a\\x1b]0;pwn\\x07"}]
    assert report["ok"] is False and report["checked_files"] == 3
