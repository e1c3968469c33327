"""The command line against the real runtimes: options are never dropped, mistakes are
one venvoy line (never the runtime's own), and ``--dry-run`` makes nothing."""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import BASE_ARCHIVE, TEST_USER, Target, Venvoy, unavailable

pytestmark = pytest.mark.integration

ROOTFS = Path(os.environ.get("VENVOY_IT_ROOTFS", "/var/cache/venvoy-it/base-rootfs.tar"))
ROOT = Target("root", "", as_user=False)
USER = Target("user", "", as_user=True)


class Store:
    """A store of root's with one small environment, built once with Docker."""

    def __init__(self, venvoy: Venvoy) -> None:
        self.venvoy = venvoy
        self.home = venvoy.root / "store-cli"
        self.work = venvoy.root / "cli-work"
        self.work.mkdir(exist_ok=True)
        self.name = "it-cli"

    def run(self, *args: str, cwd: Path | None = None, target: Target = ROOT,
            ) -> subprocess.CompletedProcess[bytes]:
        return self.venvoy.run(target, list(args), cwd=cwd or self.work, timeout=600,
                               extra_env={"VENVOY_HOME": str(self.home), "VENVOY_OFFLINE": "1"})


@pytest.fixture(scope="module")
def store(venvoy: Venvoy) -> Iterator[Store]:
    if not ROOTFS.is_file() or not BASE_ARCHIVE.is_file():
        unavailable(f"{ROOTFS} missing: run scripts/provision.sh")
    s = Store(venvoy)
    proc = s.run("init", s.name, "--base", str(ROOTFS), "--runtime", "docker", "--quiet")
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    yield s
    s.run("remove", s.name)  # and the images it loaded into Docker and Podman


def one_venvoy_line(proc: subprocess.CompletedProcess[bytes], code: int) -> str:
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("venvoy: error: "), err
    assert proc.stdout == b""
    return lines[0]


def test_options_after_the_name_reach_podman(store: Store) -> None:
    """Issue 8: `run NAME --runtime podman --env A=1 -w/tmp -- CMD` ran on Docker,
    without A and the working directory."""
    loaded = store.home / "cache" / "loaded"
    before = set(os.listdir(loaded)) if loaded.exists() else set()
    proc = store.run("run", store.name, "--runtime", "podman", "--env", "A=1", "-w/tmp", "--",
                     "sh", "-c", 'echo "$A $PWD"')
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode() == "1 /tmp\n"
    new = set(os.listdir(loaded)) - before
    assert new and all(m.startswith("podman-") for m in new), new  # made for podman, not docker


@pytest.mark.parametrize(("args", "says"), [
    (("--runtme", "podman", "--mount", "D:/data:ro"), "--runtme"),
    (("--gpu", "intel"), "invalid choice: 'intel'"),
    (("--dry-run", "-x"), "-x"),
    (("--bogus",), "--bogus"),
], ids=["misspelt", "gpu-intel", "dry-run-x", "unknown"])
def test_a_wrong_option_runs_nothing(store: Store, args: tuple[str, ...], says: str) -> None:
    marker = store.work / "ran"
    marker.unlink(missing_ok=True)
    proc = store.run("run", store.name, *args, "--", "sh", "-c", f"touch {marker}")
    assert says in one_venvoy_line(proc, 2)
    assert not marker.exists(), "the command ran"


@pytest.mark.parametrize("target", [Target("docker", "docker", as_user=False),
                                    Target("podman-rootful", "podman", as_user=False),
                                    Target("podman-rootless", "podman", as_user=True)],
                         ids=["docker", "podman-rootful", "podman-rootless"])
@pytest.mark.parametrize("image", ["/no/such.sif", "./no-such.tar"])
def test_path_like_image_for_docker_and_podman_is_venvoy_s_line_alone(
        venvoy: Venvoy, target: Target, image: str) -> None:
    """Issue 7: Docker printed its own three lines ("invalid reference format") plus venvoy's."""
    with tempfile.TemporaryDirectory(dir=venvoy.root) as d:
        Path(d).chmod(0o755)
        proc = venvoy.run(target, ["run", "--runtime", target.runtime, "--image", image, "--",
                                   "true"], cwd=Path(d))
    line = one_venvoy_line(proc, 125)
    assert f"image {image!r} is a file path" in line


@pytest.mark.parametrize(("runtime", "target"), [("apptainer", USER), ("podman", USER),
                                                 ("podman", ROOT)],
                         ids=["apptainer-user", "podman-rootless", "podman-rootful"])
@pytest.mark.parametrize("dirname", ["data:2024", "a,b"])
def test_current_directory_no_runtime_can_mount_is_one_clear_line(
        store: Store, runtime: str, target: Target, dirname: str) -> None:
    """Issue 8: Apptainer and Podman failed with their own errors in such a directory."""
    odd = store.work / dirname
    odd.mkdir(exist_ok=True)
    odd.chmod(0o777)
    if target.as_user:
        os.chown(odd, pwd.getpwnam(TEST_USER).pw_uid, -1)
    proc = store.venvoy.run(target, ["run", "--runtime", runtime, "--image", "venvoy-it-base",
                                     "--", "true"], cwd=odd)
    line = one_venvoy_line(proc, 125)
    assert "current directory" in line and "cd to a directory" in line


def test_dry_run_with_apptainer_makes_no_sif(store: Store) -> None:
    """Issue 8: `run --dry-run` built a SIF for 30 s; it prints the command and makes nothing."""
    sif_dir = store.home / "cache" / "sif"
    log = store.home / "cache" / "conversions.log"
    before = log.read_text() if log.exists() else ""
    proc = store.run("run", store.name, "--runtime", "apptainer", "--dry-run", "--", "python3",
                     "-V")
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode().splitlines()
    assert len(out) == 1 and out[0].endswith(".sif python3 -V"), out
    planned = out[0].split()[-3]
    assert planned.startswith(str(sif_dir)) and not os.path.exists(planned)
    assert not sif_dir.exists() or not any(sif_dir.iterdir()), "a SIF (or its temp) was made"
    assert (log.read_text() if log.exists() else "") == before, "a conversion ran"
    assert proc.stderr == b""
