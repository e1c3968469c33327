"""Fixtures that run venvoy against the real runtimes, as root or as a test user.

The provisioning script (scripts/provision.sh) installs the runtimes, creates
the unprivileged user ``venvoytest`` with subordinate id ranges, bootstraps a
small Debian base image with Python and writes it as a Docker archive. Here,
once per session, that archive is loaded into each runtime *through venvoy's
own loaders*, and every test runs the real ``venvoy`` CLI in a subprocess.

A runtime that is missing is a skip on a developer's machine, but a failure
under CI (``CI`` set) or with ``VENVOY_REQUIRE_RUNTIMES=1``: integration tests
that silently skip prove nothing.
"""

from __future__ import annotations

import compileall
import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .cluster import cluster as cluster  # the 3-node Slurm cluster (tests/integration/cluster.py)
from .cluster import mpi_env as mpi_env  # an mpi4py + Open MPI environment built on it

REPO = Path(__file__).resolve().parents[2]
BASE_ARCHIVE = Path(os.environ.get("VENVOY_IT_BASE", "/var/cache/venvoy-it/base-docker.tar"))
TEST_USER = os.environ.get("VENVOY_IT_USER", "venvoytest")
USER_PYTHON = os.environ.get("VENVOY_IT_PYTHON", "/opt/venvoy-it/venv/bin/python")
IMAGE_REF = "venvoy-it-base:latest"
STRICT = bool(os.environ.get("CI") or os.environ.get("VENVOY_REQUIRE_RUNTIMES"))


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI: a runtime test that does not run proves nothing."""
    if STRICT:
        pytest.fail(f"integration prerequisite missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


#: The CI registry's settings (host, CA, user, password, base image), written by
#: scripts/provision-registry.sh.
REGISTRY_ENV = Path(os.environ.get("VENVOY_IT_REGISTRY_ENV", "/etc/venvoy-it/registry.env"))


def registry_settings() -> dict[str, str]:
    """``VENVOY_IT_REGISTRY*`` from :data:`REGISTRY_ENV` (a missing registry: see unavailable)."""
    if not REGISTRY_ENV.is_file():
        unavailable(f"{REGISTRY_ENV} missing: run scripts/provision.sh (it starts the test registry)")
    out = {}
    for line in REGISTRY_ENV.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            out[key.strip()] = value.strip()
    return out


def registry_auth_file(path: Path, host: str, user: str, password: str) -> Path:
    """A ``docker login``-style auth file for ``host``, readable by the test user."""
    import base64
    import json

    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    path.chmod(0o644)
    return path


@dataclass
class Target:
    """One way of running venvoy: a runtime, as root or as the test user."""

    id: str
    runtime: str
    as_user: bool
    group: str | None = None
    image: str = ""
    env_extra: dict[str, str] = field(default_factory=dict)

    @property
    def uid(self) -> int:
        return pwd.getpwnam(TEST_USER).pw_uid if self.as_user else os.getuid()


#: Apptainer, Singularity, Charliecloud and rootless Podman run as an ordinary
#: user, as on a cluster; Docker and rootful Podman as root, and Docker also as
#: a member of the docker group (files written to mounts must be the caller's).
TARGETS = [
    Target("docker", "docker", as_user=False),
    Target("docker-group-user", "docker", as_user=True, group="docker"),
    Target("podman-rootful", "podman", as_user=False),
    Target("podman-rootless", "podman", as_user=True),
    Target("apptainer", "apptainer", as_user=True),
    Target("singularity", "singularity", as_user=True),
    Target("charliecloud", "charliecloud", as_user=True),
]


class Venvoy:
    """Runs the venvoy CLI (from this checkout) as root or as the test user."""

    def __init__(self, root: Path, root_python: str = sys.executable) -> None:
        self.root = root
        self.root_python = root_python
        self.src = root / "src"
        # A copy of the package the test user can read (the checkout may live in
        # a directory only root can enter, such as /root).
        shutil.copytree(REPO / "src" / "venvoy", self.src / "venvoy",
                        ignore=shutil.ignore_patterns("__pycache__"))
        # Byte-compile it, as pip does at install time (PYTHONDONTWRITEBYTECODE
        # may be set, and the test user could not write __pycache__ anyway).
        compileall.compile_dir(self.src, quiet=1)
        for path in [root, *self.src.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)

    def user_env(self, target: Target) -> dict[str, str]:
        pw = pwd.getpwnam(TEST_USER)
        env = {
            "HOME": pw.pw_dir, "USER": TEST_USER, "LOGNAME": TEST_USER,
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "XDG_RUNTIME_DIR": f"/run/user/{pw.pw_uid}", "LANG": "C.UTF-8",
            "PYTHONPATH": str(self.src), "PODMAN_IGNORE_CGROUPSV1_WARNING": "1",
        }
        env.update(target.env_extra)
        return env

    def root_env(self, target: Target) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("VENVOY_", "SLURM_", "PBS_", "LSB_"))}
        env["PYTHONPATH"] = str(self.src)
        env.update(target.env_extra)
        return env

    def argv(self, target: Target, args: Sequence[str], extra_env: dict[str, str] | None = None,
             ) -> tuple[list[str], dict[str, str]]:
        """The argv and environment that start venvoy for ``target``."""
        if target.as_user:
            env = self.user_env(target)
            env.update(extra_env or {})
            prefix = ["runuser", "-u", TEST_USER]
            if target.group:
                prefix += ["-g", target.group]
            # runuser keeps our environment; `env -i` makes it exactly the user's.
            argv = [*prefix, "--", "env", "-i",
                    *[f"{k}={v}" for k, v in env.items()], USER_PYTHON, "-m", "venvoy", *args]
            return argv, env
        env = self.root_env(target)
        env.update(extra_env or {})
        return [self.root_python, "-m", "venvoy", *args], env

    def run(self, target: Target, args: Sequence[str], *, cwd: Path | None = None,
            input: bytes | None = None, extra_env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        argv, env = self.argv(target, args, extra_env)
        return subprocess.run(argv, cwd=cwd or self.root, env=env, input=input,
                              capture_output=True, timeout=timeout)

    def popen(self, target: Target, args: Sequence[str], *, cwd: Path,
              ) -> subprocess.Popen[bytes]:
        argv, env = self.argv(target, args)
        return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="session")
def it_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="venvoy-it-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def venvoy(it_root: Path) -> Venvoy:
    if os.geteuid() != 0:
        unavailable("integration tests run as root (they switch to the test user themselves)")
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        unavailable(f"test user {TEST_USER} missing: run scripts/provision.sh")
    if not os.access(USER_PYTHON, os.X_OK):
        unavailable(f"{USER_PYTHON} missing: run scripts/provision.sh")
    if not BASE_ARCHIVE.is_file():
        unavailable(f"base image {BASE_ARCHIVE} missing: run scripts/provision.sh")
    return Venvoy(it_root)


_loaded: dict[str, str] = {}


def _load(venvoy: Venvoy, target: Target) -> str:
    """Load the base archive into the target's runtime with `venvoy load`, once."""
    key = f"{target.runtime}:{'user' if target.as_user else 'root'}"
    if target.runtime == "singularity":  # the same SIF serves Apptainer and Singularity
        key = "apptainer:user"
    if key in _loaded:
        if _loaded[key].startswith("FAILED"):
            pytest.fail(_loaded[key], pytrace=False)
        return _loaded[key]
    dest = venvoy.root / "images" / key.replace(":", "-")
    dest.mkdir(parents=True, exist_ok=True)
    if target.as_user:
        os.chown(dest, pwd.getpwnam(TEST_USER).pw_uid, -1)
    loader = Target(target.id, "apptainer" if key.startswith("apptainer") else target.runtime,
                    target.as_user, target.group)
    proc = venvoy.run(loader, ["load", "--runtime", loader.runtime, str(BASE_ARCHIVE),
                               "--name", IMAGE_REF, "--dest", str(dest)], timeout=600)
    if proc.returncode != 0:
        _loaded[key] = f"FAILED: venvoy load into {key}: {proc.stderr.decode()[-2000:]}"
        pytest.fail(_loaded[key], pytrace=False)
    _loaded[key] = proc.stdout.decode().strip().splitlines()[-1]
    return _loaded[key]


@pytest.fixture(params=TARGETS, ids=[t.id for t in TARGETS])
def target(request: pytest.FixtureRequest, venvoy: Venvoy) -> Target:
    t: Target = request.param
    binary = {"charliecloud": "ch-run"}.get(t.runtime, t.runtime)
    if shutil.which(binary) is None:
        unavailable(f"{t.runtime} is not installed: run scripts/provision.sh")
    if t.group:
        try:
            grp.getgrnam(t.group)
        except KeyError:
            unavailable(f"group {t.group} missing: run scripts/provision.sh")
    image = _load(venvoy, t)
    return Target(t.id, t.runtime, t.as_user, t.group, image)


@pytest.fixture
def workdir(venvoy: Venvoy, target: Target, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh directory owned by whoever runs venvoy, readable along its path."""
    d = Path(tempfile.mkdtemp(prefix=f"w-{target.id}-", dir=venvoy.root))
    d.chmod(0o755)
    if target.as_user:
        os.chown(d, target.uid, -1)
    return d


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per runtime target, so a CI log shows each runtime really ran."""
    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            if "test_run_real.py" not in nodeid or "[" not in nodeid:
                continue
            param = nodeid.rsplit("[", 1)[1].rstrip("]")
            ids = [t.id for t in TARGETS if param == t.id or param.startswith(t.id + "-")]
            if not ids:
                continue
            name = max(ids, key=len)  # "docker-group-user-0" is docker-group-user's
            counts.setdefault(name, {}).setdefault(outcome, 0)
            counts[name][outcome] += 1
    if counts:
        terminalreporter.section("integration tests per runtime")
        for t in TARGETS:
            c = counts.get(t.id, {})
            parts = ", ".join(f"{n} {k}" for k, n in c.items()) or "none ran"
            terminalreporter.write_line(f"{t.id:<20} {parts}")
    # And per area (one file each): registry, images, SIF, Slurm, MPI... ran for real.
    areas: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            if not nodeid.startswith("tests/integration/") or getattr(report, "when", "call") \
                    not in ("call", "setup") or (outcome == "passed" and report.when != "call"):
                continue
            area = nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removeprefix("test_")
            area = area.removesuffix("_real.py").removesuffix(".py")
            areas.setdefault(area, {}).setdefault(outcome, 0)
            areas[area][outcome] += 1
    if areas:
        terminalreporter.section("integration tests per area")
        for area in sorted(areas):
            parts = ", ".join(f"{n} {k}" for k, n in areas[area].items())
            terminalreporter.write_line(f"{area:<20} {parts}")
