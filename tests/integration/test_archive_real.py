"""The archive format on a real ~300 MB environment: kill -9 at any moment, then run again.

One environment (numpy + six on the Debian base, built with rootful Podman) is
exported and imported by subprocesses that are SIGKILLed at several moments:
a fraction of the time an unkilled run takes, and as soon as its temporary
appears. After each kill: no file under the output's name, the store exactly as
before (no environment, no image), and the same command, run again, succeeds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from venvoy.transport.sniff import sniff_format

from .conftest import REPO, unavailable

pytestmark = pytest.mark.integration

ROOTFS = Path(os.environ.get("VENVOY_IT_ROOTFS", "/var/cache/venvoy-it/base-rootfs.tar"))

HELPER = """
import sys
from pathlib import Path
from venvoy.api import environments as envs
from venvoy.transport.archive import export_archive, import_archive
from venvoy.store.layout import Store

if sys.argv[1] == "export":
    env = envs.get(sys.argv[3], Store(Path(sys.argv[2])))
    print(export_archive(env, Path(sys.argv[4]), with_sif=len(sys.argv) > 5))
else:
    print(import_archive(Path(sys.argv[2]), store=Store(Path(sys.argv[3]))).name)
"""


class Tool:
    """Runs the archive functions in a subprocess (the checkout's code, not an installed one)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.helper = root / "helper.py"
        self.helper.write_text(HELPER)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VENVOY_")}
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
        self.env["PODMAN_IGNORE_CGROUPSV1_WARNING"] = "1"

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, str(self.helper), *args]

    def run(self, *args: str, timeout: float = 600) -> str:
        proc = subprocess.run(self.argv(*args), env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout.strip()

    def timed(self, *args: str) -> float:
        start = time.monotonic()
        self.run(*args)
        return time.monotonic() - start

    def popen(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(*args), env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Built:
    def __init__(self, tool: Tool, store: Path, name: str, archive: Path, export_s: float,
                 import_s: float) -> None:
        self.tool, self.store, self.name, self.archive = tool, store, name, archive
        self.export_s, self.import_s = export_s, import_s


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    if os.geteuid() != 0:
        unavailable("the archive integration tests run as root (rootful Podman builds the image)")
    if shutil.which("podman") is None:
        unavailable("podman is not installed: run scripts/provision.sh")
    if not ROOTFS.is_file():
        unavailable(f"{ROOTFS} missing: run scripts/provision.sh")
    root = Path(tempfile.mkdtemp(prefix="venvoy-archive-it-", dir="/tmp"))
    try:
        tool = Tool(root)
        store = root / "store"
        (root / "req.txt").write_text("numpy==2.*\nsix\n")
        proc = subprocess.run(
            [sys.executable, "-m", "venvoy", "init", "archive-it", "--python", "3.11", "-r",
             str(root / "req.txt"), "--base", str(ROOTFS), "--runtime", "podman", "--quiet"],
            env=tool.env | {"VENVOY_HOME": str(store), "VENVOY_OFFLINE": "1"},
            capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr[-3000:]
        images = list((store / "images").glob("*.tar"))
        assert len(images) == 1 and images[0].stat().st_size > 200 << 20
        out = root / "exported"
        out.mkdir()
        export_s = tool.timed("export", str(store), "archive-it", str(out))
        archive = next(out.iterdir())
        import_s = tool.timed("import", str(archive), str(root / "timing-store"))
        yield Built(tool, store, "archive-it", archive, export_s, import_s)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def visible(store: Path) -> dict[str, list[str]]:
    """What a store shows: environments, images, SIFs (not temporaries or locks)."""
    return {sub: sorted(p.name for p in (store / sub).iterdir()) if (store / sub).is_dir() else []
            for sub in ("envs", "images", "cache/sif")}


def kill_when(proc: subprocess.Popen[bytes], when: str, total_s: float,
              temp_appeared: Callable[[], bool]) -> bool:
    """SIGKILL ``proc`` at ``when`` (a fraction of ``total_s`` or "temp"); True if it was running."""
    start = time.monotonic()
    if when == "temp":
        while not temp_appeared() and proc.poll() is None and time.monotonic() - start < 60:
            time.sleep(0.005)
    else:
        time.sleep(float(when) * total_s)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return running


FRACTIONS = ["temp", "0.1", "0.3", "0.5", "0.7", "0.9"]


@pytest.mark.parametrize("when", FRACTIONS)
def test_export_killed_leaves_no_output(built: Built, tmp_path: Path, when: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    before = visible(built.store)
    proc = built.tool.popen("export", str(built.store), built.name, str(out))
    killed = kill_when(proc, when, built.export_s,
                       lambda: any(p.name.endswith(".part") for p in out.iterdir()))
    if when in ("temp", "0.1", "0.3", "0.5"):
        assert killed, "the export ended before the kill: the test proves nothing"
    if killed:
        leftovers = sorted(p.name for p in out.iterdir())
        assert all(n.startswith(".") and n.endswith(".part") for n in leftovers), leftovers
    assert visible(built.store) == before
    final = Path(built.tool.run("export", str(built.store), built.name, str(out)))
    assert [p.name for p in out.iterdir()] == [final.name]  # the killed run's temporary is gone
    assert sniff_format(final) == "archive"
    assert abs(final.stat().st_size - built.archive.stat().st_size) < 1 << 20


@pytest.mark.parametrize("when", FRACTIONS)
def test_import_killed_leaves_the_store_as_it_was(built: Built, tmp_path: Path, when: str) -> None:
    store = tmp_path / "store"
    (store / "envs").mkdir(parents=True)
    (store / "envs" / "other").mkdir()
    before = visible(store)
    proc = built.tool.popen("import", str(built.archive), str(store))
    killed = kill_when(proc, when, built.import_s,
                       lambda: (store / "tmp").is_dir() and any((store / "tmp").iterdir()))
    if when in ("temp", "0.1", "0.3", "0.5"):
        assert killed, "the import ended before the kill: the test proves nothing"
    if killed:
        assert visible(store) == before
    assert built.tool.run("import", str(built.archive), str(store)) == "archive-it"
    after = visible(store)
    assert after["envs"] == ["archive-it", "other"] and len(after["images"]) == 1
    assert not list((store / "tmp").iterdir())  # the killed run's temporary is gone


def test_imported_environment_runs(built: Built, tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert built.tool.run("import", str(built.archive), str(store)) == "archive-it"
    proc = subprocess.run(
        [sys.executable, "-m", "venvoy", "run", "archive-it", "--runtime", "podman", "--", "python",
         "-c", "import numpy, six; print(numpy.__version__)"],
        env=built.tool.env | {"VENVOY_HOME": str(store)}, capture_output=True, text=True,
        timeout=600, stdin=subprocess.DEVNULL)
    identity = json.loads((store / "envs" / "archive-it" / "env.json").read_text())["identity"]
    subprocess.run(["podman", "rmi", f"localhost/venvoy/archive-it:{identity[:12]}"],
                   capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith("2.")


def test_standard_tools_read_the_archive(built: Built, tmp_path: Path) -> None:
    """GNU tar (with zstd or gzip) unpacks it; the checksums in the manifest hold."""
    subprocess.run(["tar", "-C", str(tmp_path), "-xf", str(built.archive)], check=True)
    (top,) = tmp_path.iterdir()
    names = sorted(p.name for p in top.iterdir())
    assert names == ["README.txt", "env.json", "image.tar", "manifest.json", "pylock.toml"]
    manifest = json.loads((top / "manifest.json").read_text())
    for member in manifest["members"]:
        data = (top / member["path"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (member["size"], member["sha256"])


def test_with_sif(built: Built, tmp_path: Path) -> None:
    if shutil.which("apptainer") is None:
        unavailable("apptainer is not installed: run scripts/provision.sh")
    out = tmp_path / "out"
    out.mkdir()
    archive = Path(built.tool.run("export", str(built.store), built.name, str(out), "--with-sif"))
    # The SIF travels (for plain `apptainer exec` after `tar -x`) and is a real SIF ...
    listing = subprocess.run(["tar", "-tf", str(archive)], capture_output=True, text=True,
                             check=True).stdout.split()
    sif_member = next(n for n in listing if n.endswith("/image.sif"))
    subprocess.run(["tar", "-C", str(tmp_path), "-xf", str(archive), sif_member], check=True)
    assert b"SIF_MAGIC" in (tmp_path / sif_member).read_bytes()[:128]
    # ... but `venvoy import` never puts an unverifiable SIF into the shared cache:
    # it is made again from the verified image on first use.
    store = tmp_path / "store"
    assert built.tool.run("import", str(archive), str(store)) == "archive-it"
    assert not list((store / "cache" / "sif").glob("*.sif"))
