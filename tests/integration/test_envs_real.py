"""Environments end to end on the real runtimes: init, run, rebuild, verify, concurrency."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import BASE_ARCHIVE, TEST_USER, Target, Venvoy

pytestmark = pytest.mark.integration

ROOTFS = Path(os.environ.get("VENVOY_IT_ROOTFS", "/var/cache/venvoy-it/base-rootfs.tar"))
USER = Target("user", "", as_user=True)
ROOT = Target("root", "", as_user=False)
CHECK = ("import numpy, six, sys; rng = numpy.random.default_rng(42); "
         "print(sys.version_info[:2], numpy.__version__, six.__version__, "
         "repr(float(rng.standard_normal(1000).sum())))")


class Stores:
    """One store for the test user and one for root, shared by the tests here."""

    def __init__(self, venvoy: Venvoy) -> None:
        self.venvoy = venvoy
        self.user = venvoy.root / "store-user"
        self.root = venvoy.root / "store-root"
        self.user.mkdir(exist_ok=True)
        self.root.mkdir(exist_ok=True)
        os.chown(self.user, pwd.getpwnam(TEST_USER).pw_uid, -1)
        self.work = venvoy.root / "env-work"
        self.work.mkdir(exist_ok=True)
        self.work.chmod(0o777)
        (self.work / "req-np.txt").write_text("numpy==2.*\nsix\n")
        (self.work / "req-six.txt").write_text("six\n")
        for f in self.work.iterdir():
            f.chmod(0o644)

    def env(self, target: Target) -> dict[str, str]:
        return {"VENVOY_HOME": str(self.user if target.as_user else self.root),
                "VENVOY_OFFLINE": "1"}

    def venvoy_cmd(self, target: Target, *args: str, timeout: float = 900,
                   extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        return self.venvoy.run(target, list(args), cwd=self.work,
                               extra_env=self.env(target) | (extra or {}), timeout=timeout)

    def ok(self, target: Target, *args: str, timeout: float = 900) -> str:
        proc = self.venvoy_cmd(target, *args, timeout=timeout)
        assert proc.returncode == 0, (args, proc.stderr.decode()[-3000:])
        return proc.stdout.decode()


@pytest.fixture(scope="module")
def stores(venvoy: Venvoy) -> Stores:
    if not ROOTFS.is_file() or not BASE_ARCHIVE.is_file():
        pytest.fail(f"{ROOTFS} missing: run scripts/provision.sh", pytrace=False)
    return Stores(venvoy)


@pytest.fixture(scope="module")
def np_env(stores: Stores) -> str:
    """numpy + six, built once by the test user with rootless Podman."""
    stores.ok(USER, "init", "it-np", "--python", "3.11", "--requirements", "req-np.txt",
              "--base", str(ROOTFS), "--runtime", "podman", "--quiet")
    return "it-np"


def expected_output(stores: Stores, target: Target, name: str) -> str:
    lock = (Path(stores.env(target)["VENVOY_HOME"]) / "envs" / name / "pylock.toml").read_text()
    versions = {}
    for block in lock.split("[[packages]]")[1:]:
        lines = dict(line.split(" = ", 1) for line in block.strip().splitlines()[:2])
        versions[lines["name"].strip('"')] = lines["version"].strip('"')
    return f"(3, 11) {versions['numpy']} {versions['six']}"


@pytest.mark.parametrize("runtime", ["podman", "apptainer", "singularity", "charliecloud"])
def test_built_with_podman_runs_everywhere_unprivileged(stores: Stores, np_env: str,
                                                        runtime: str) -> None:
    """Built once with rootless Podman; Apptainer, Singularity and Charliecloud run
    the same environment, as the unprivileged user, without a rebuild."""
    images = sorted((stores.user / "images").iterdir())
    out = stores.ok(USER, "run", np_env, "--runtime", runtime, "--", "python", "-c", CHECK)
    assert out.startswith(expected_output(stores, USER, np_env)), out
    first = (stores.work / "first-output.txt")
    if first.exists():  # every runtime prints the same numbers, to the last digit
        assert out == first.read_text()
    else:
        first.write_text(out)
    assert sorted((stores.user / "images").iterdir()) == images, "run must not rebuild"


@pytest.mark.parametrize("builder", ["docker", "podman"])
def test_init_and_run_as_root(stores: Stores, builder: str) -> None:
    name = f"it-root-{builder}"
    stores.ok(ROOT, "init", name, "--requirements", "req-np.txt", "--base", str(ROOTFS),
              "--runtime", builder, "--quiet")
    for runtime in ("docker", "podman"):
        out = stores.ok(ROOT, "run", name, "--runtime", runtime, "--", "python", "-c", CHECK)
        assert out.startswith(expected_output(stores, ROOT, name)), out


@pytest.mark.parametrize("builder", ["apptainer", "charliecloud"])
def test_unprivileged_builders(stores: Stores, builder: str) -> None:
    """The build step itself runs in Apptainer or Charliecloud: no root, no fakeroot."""
    name = f"it-six-{builder}"
    stores.ok(USER, "init", name, "--requirements", "req-six.txt", "--base", str(ROOTFS),
              "--runtime", builder, "--quiet")
    out = stores.ok(USER, "run", name, "--runtime", builder, "--",
                    "python", "-c", "import six, sys; print(six.__file__, sys.prefix)")
    assert out.split() == [out.split()[0], "/opt/venv"]
    assert out.split()[0].startswith("/opt/venv/lib/python3.11/site-packages/six.py")


def test_python_313_from_a_debian_trixie_bootstrap(stores: Stores) -> None:
    """No --base, offline: Debian is bootstrapped (trixie gives 3.13), then cached."""
    stores.ok(ROOT, "init", "it-py313", "--python", "3.13", "--requirements", "req-six.txt",
              "--runtime", "podman", "--quiet", timeout=1200)
    out = stores.ok(ROOT, "run", "it-py313", "--runtime", "podman", "--",
                    "python", "-c", "import sys, six; print(sys.version_info[:2])")
    assert out.strip() == "(3, 13)"


def test_python_311_from_a_debian_bookworm_bootstrap(stores: Stores) -> None:
    stores.ok(ROOT, "init", "it-py311", "--python", "3.11", "--requirements", "req-six.txt",
              "--runtime", "podman", "--quiet", timeout=1200)
    out = stores.ok(ROOT, "run", "it-py311", "--runtime", "podman", "--",
                    "python", "-c", "import sys, six; print(sys.version_info[:2])")
    assert out.strip() == "(3, 11)"


def _env_json(stores: Stores, target: Target, name: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(
        (Path(stores.env(target)["VENVOY_HOME"]) / "envs" / name / "env.json").read_text())
    return data


def test_noop_reinit_changed_requirements_and_force(stores: Stores) -> None:
    name = "it-rebuild"
    req = stores.work / "req-rebuild.txt"
    req.write_text("six==1.16.0\n")
    req.chmod(0o644)
    args = ("init", name, "--requirements", req.name, "--base", str(ROOTFS), "--runtime",
            "charliecloud")
    stores.ok(USER, *args, "--quiet")
    first = _env_json(stores, USER, name)
    archive = stores.user / "images" / f"{str(first['image_id']).split(':')[1]}.tar"
    mtime = archive.stat().st_mtime_ns

    proc = stores.venvoy_cmd(USER, *args)  # nothing changed: a no-op
    assert proc.returncode == 0 and b"unchanged" in proc.stderr, proc.stderr
    assert _env_json(stores, USER, name) == first and archive.stat().st_mtime_ns == mtime

    req.write_text("six==1.17.0\n")  # changed requirements: new lock, new identity, rebuilt
    stores.ok(USER, *args, "--quiet")
    second = _env_json(stores, USER, name)
    assert second["identity"] != first["identity"] and second["lock_hash"] != first["lock_hash"]
    out = stores.ok(USER, "run", name, "--runtime", "charliecloud", "--",
                    "python", "-c", "import six; print(six.__version__)")
    assert out.strip() == "1.17.0"
    assert not archive.exists(), "the old image, used by no environment, is gone"

    proc = stores.venvoy_cmd(USER, *args, "--force")  # same inputs, rebuilt anyway
    assert proc.returncode == 0 and b"built" in proc.stderr, proc.stderr
    third = _env_json(stores, USER, name)
    assert third["identity"] == second["identity"] and third["created"] >= second["created"]


def test_sixteen_concurrent_first_runs_convert_once(stores: Stores, np_env: str) -> None:
    """16 jobs start the same environment with Apptainer at once, before any SIF exists."""
    image_id = str(_env_json(stores, USER, np_env)["image_id"])
    sif = stores.user / "cache" / "sif" / f"{image_id.split(':')[1]}.sif"
    sif.unlink(missing_ok=True)
    log = stores.user / "cache" / "conversions.log"
    before = log.read_text().count(image_id) if log.exists() else 0
    procs = []
    for i in range(16):
        argv, env = stores.venvoy.argv(USER, ["run", np_env, "--runtime", "apptainer", "--",
                                              "python", "-c", f"print('job', {i})"],
                                       stores.env(USER))
        procs.append(subprocess.Popen(argv, env=env, cwd=stores.work, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))
    results = [(p.wait(timeout=900), p.stdout.read(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    for i, (code, out, err) in enumerate(results):
        assert code == 0, err.decode()[-2000:]
        assert out.decode().strip() == f"job {i}"
    assert log.read_text().count(image_id) - before == 1, log.read_text()
    assert sif.is_file()
    assert not [p for p in sif.parent.iterdir() if p.name.startswith(".")], "temp files left"


def test_verify_passes_then_reports_a_modified_file(stores: Stores) -> None:
    name = "it-verify"
    stores.ok(USER, "init", name, "--requirements", "req-six.txt", "--base", str(ROOTFS),
              "--runtime", "charliecloud", "--quiet")
    report = json.loads(stores.ok(USER, "verify", name, "--runtime", "charliecloud", "--json"))
    assert report["ok"] is True and report["checked_files"] > 0
    assert report["packages"] == 1 and not report["unexpected_packages"]
    image_id = str(_env_json(stores, USER, name)["image_id"])
    chdir = stores.user / "cache" / "ch" / image_id.split(":")[1]
    six_py = next(chdir.glob("opt/venv/lib/python3.*/site-packages/six.py"))
    with open(six_py, "a") as fh:  # what a stray `pip install` or an edit would do
        fh.write("\n# changed\n")
    proc = stores.venvoy_cmd(USER, "verify", name, "--runtime", "charliecloud", "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    assert report["modified_files"] == [{"package": "six", "path": "six.py"}]


@pytest.mark.parametrize(("args", "message"), [
    (("init", "Bad/Name"), "invalid environment name"),
    (("init", "it-bad", "--python", "3.99"), "unsupported Python version '3.99'"),
    (("init", "it-bad", "--requirements", "no-such-file.txt"), "does not exist"),
    (("init", "it-bad", "--requirements", "req-bogus.txt", "--base", str(ROOTFS)),
     "venvoy-no-such-package-xyz"),
    (("init", "it-bad", "--base", "localhost:5999/python:3.11-slim", "--runtime", "podman"),
     "cannot pull localhost:5999/python:3.11-slim: registry localhost:5999 unreachable"),
    (("init", "it-bad", "--python", "3.12", "--runtime", "podman"),
     "no base image for Python 3.12: cannot pull localhost:5999/library/python:3.12-slim"),
    (("run", "it-never-built", "--", "true"), "no environment named 'it-never-built'"),
], ids=["name", "python", "req-file", "unknown-package", "unreachable-registry",
        "unreachable-registry-no-fallback", "no-env"])
def test_bad_input_is_one_clear_line_and_leaves_nothing(stores: Stores, args: tuple[str, ...],
                                                        message: str) -> None:
    (stores.work / "req-bogus.txt").write_text("venvoy-no-such-package-xyz==1.0\n")
    (stores.work / "req-bogus.txt").chmod(0o644)
    envs_before = sorted(p.name for p in (stores.user / "envs").glob("*")) if (
        stores.user / "envs").exists() else []
    start = time.monotonic()
    # online, but the only registry is a loopback port where nothing listens
    online = {"VENVOY_OFFLINE": "0", "VENVOY_BASE_REGISTRY": "localhost:5999/library"}
    proc = stores.venvoy_cmd(USER, *args, timeout=300, extra=online)
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("venvoy: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert time.monotonic() - start < 120
    envs_after = sorted(p.name for p in (stores.user / "envs").glob("*")) if (
        stores.user / "envs").exists() else []
    assert envs_after == envs_before, "nothing may be left in the store"
