"""The 3-node Slurm test cluster, for integration tests.

scripts/provision-cluster.sh brings up a cluster of three nodes (n1, n2, n3)
in Linux namespaces on this machine, with accounting through slurmdbd on
MariaDB, and describes it in /etc/venvoy-it/cluster.env. Commands run as the
unprivileged test user on the login node (the controller's namespaces) through
the login wrapper, as they would after ``ssh login01`` on a real cluster.

The nodes have a private /tmp and /dev/shm: a job's working directory must be
shared, so tests use :meth:`Cluster.workdir` (under the cluster's shared
scratch directory), never pytest's tmp_path.

Under CI (``CI`` or ``VENVOY_REQUIRE_RUNTIMES`` set) a missing or broken
cluster fails the tests that ask for it; elsewhere it skips them.
"""

from __future__ import annotations

import compileall
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

BASE_ARCHIVE = Path(os.environ.get("VENVOY_IT_BASE", "/var/cache/venvoy-it/base-docker.tar"))
USER_PYTHON = os.environ.get("VENVOY_IT_PYTHON", "/opt/venvoy-it/venv/bin/python")
REPO = Path(__file__).resolve().parents[2]
CLUSTER_ENV = Path(os.environ.get("VENVOY_IT_CLUSTER_ENV", "/etc/venvoy-it/cluster.env"))
STRICT = bool(os.environ.get("CI") or os.environ.get("VENVOY_REQUIRE_RUNTIMES"))
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Job states after which a job never changes again (sacct's spelling).
FINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT",
})

T = TypeVar("T")


def _unavailable(reason: str) -> None:
    if STRICT:
        pytest.fail(f"integration prerequisite missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def read_env_file(path: Path) -> dict[str, str]:
    """NAME=VALUE lines of the cluster.env file (comments and blanks ignored)."""
    values: dict[str, str] = {}
    with path.open(encoding="utf-8") as f:
        text = f.read(64 * 1024)
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        if _NAME.fullmatch(name):
            values[name] = value
    return values


@dataclass(frozen=True)
class JobEnd:
    """A finished job as the accounting database recorded it."""

    job_id: str
    state: str
    exit_code: int
    signal: int
    nodes: str


@dataclass(frozen=True)
class Cluster:
    """The running test cluster, and helpers that act on it as the test user."""

    name: str
    slurm_conf: Path
    login: Path
    login_node: str
    nodes: tuple[str, ...]
    partition: str
    account: str
    user: str
    scratch: Path
    root: Path  #: this session's directory under ``scratch``, owned by the user

    @property
    def uid(self) -> int:
        return pwd.getpwnam(self.user).pw_uid

    def argv(self, argv: Sequence[str], env: Mapping[str, str] | None = None,
             cwd: Path | str | None = None) -> list[str]:
        """The argv that runs ``argv`` as the test user on the login node."""
        if not argv:
            raise ValueError("empty command")
        out = [str(self.login), "-u", self.user, "-C", str(cwd or self.root)]
        for key, value in (env or {}).items():
            if not _NAME.fullmatch(key):
                raise ValueError(f"bad environment variable name {key!r}")
            out += ["-e", f"{key}={value}"]
        return [*out, "--", *argv]

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None,
            cwd: Path | str | None = None, timeout: float = 120,
            input: str | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as the test user on the login node (clean environment
        plus ``env``; SLURM_CONF set) in ``cwd`` (default: this session's
        shared directory). Output is captured as text."""
        # Its own process group: on a timeout srun (below runuser) is stopped too,
        # which cancels its job step instead of leaving it running.
        with subprocess.Popen(self.argv(argv, env, cwd), text=True, start_new_session=True,
                              stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) as popen:
            try:
                stdout, stderr = popen.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGTERM)
                try:
                    popen.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(popen.pid, signal.SIGKILL)
                    popen.communicate()
                raise
        proc = subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr)
        if check and proc.returncode != 0:
            pytest.fail(f"{' '.join(argv)} exited {proc.returncode}:\n"
                        f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}", pytrace=False)
        return proc

    def workdir(self, prefix: str = "w-") -> Path:
        """A fresh directory on shared storage, owned by the test user (mode 0755)."""
        d = Path(tempfile.mkdtemp(prefix=prefix, dir=self.root))
        d.chmod(0o755)
        os.chown(d, self.uid, -1)
        return d

    @staticmethod
    def poll(probe: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.2) -> T:
        """Call ``probe`` until it returns something other than None/False;
        fail the test with ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value is not None and value is not False:
                return value
            if time.monotonic() >= deadline:
                pytest.fail(f"timed out after {timeout:g}s waiting for {what}", pytrace=False)
            time.sleep(interval)

    def sbatch(self, args: Sequence[str], cwd: Path | None = None,
               env: Mapping[str, str] | None = None) -> str:
        """Submit with ``sbatch --parsable ARGS``; the job id."""
        proc = self.run(["sbatch", "--parsable", *args], env=env, cwd=cwd, check=True)
        job_id = proc.stdout.strip().split(";")[0]
        assert re.fullmatch(r"\d+", job_id), proc.stdout
        return job_id

    def job_end(self, job_id: str) -> JobEnd | None:
        """The job's final record in the accounting database (sacct), or None
        while it is pending, running, or not yet recorded as finished."""
        proc = self.run(["sacct", "-n", "-P", "-X", "-j", job_id,
                         "-o", "JobID,State,ExitCode,NodeList"])
        if proc.returncode != 0:
            return None
        for line in proc.stdout.splitlines():
            fields = line.split("|")
            if len(fields) != 4 or fields[0] != job_id:
                continue
            state = fields[1].split()[0] if fields[1] else ""
            if state not in FINAL_STATES:
                return None
            code, _, sig = fields[2].partition(":")
            return JobEnd(job_id, state, int(code), int(sig or 0), fields[3])
        return None

    def wait_job(self, job_id: str, timeout: float = 90) -> JobEnd:
        """Poll the accounting database until the job (not an array) has ended."""
        return self.poll(lambda: self.job_end(job_id), timeout, f"job {job_id} to finish")

    def idle_nodes(self) -> set[str]:
        proc = self.run(["sinfo", "-h", "-N", "-t", "idle", "-o", "%N"])
        return set(proc.stdout.split()) if proc.returncode == 0 else set()

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait until every node is idle (earlier tests' jobs have ended)."""
        want = set(self.nodes)
        self.poll(lambda: self.idle_nodes() >= want, timeout, f"nodes {sorted(want)} idle")


def load_cluster(root: Path) -> Cluster:
    """The cluster described by cluster.env, checked to answer; or skip/fail."""
    if os.geteuid() != 0:
        _unavailable("cluster tests run as root (they switch to the test user themselves)")
    if not CLUSTER_ENV.is_file():
        _unavailable(f"{CLUSTER_ENV} missing: run scripts/provision.sh "
                     "(or scripts/provision-cluster.sh)")
    env = read_env_file(CLUSTER_ENV)
    try:
        cluster = Cluster(
            name=env["VENVOY_CLUSTER_NAME"],
            slurm_conf=Path(env["VENVOY_CLUSTER_SLURM_CONF"]),
            login=Path(env["VENVOY_CLUSTER_LOGIN"]),
            login_node=env["VENVOY_CLUSTER_LOGIN_NODE"],
            nodes=tuple(n for n in env["VENVOY_CLUSTER_NODES"].split(",") if n),
            partition=env["VENVOY_CLUSTER_PARTITION"],
            account=env["VENVOY_CLUSTER_ACCOUNT"],
            user=env["VENVOY_CLUSTER_USER"],
            scratch=Path(env["VENVOY_CLUSTER_SCRATCH"]),
            root=root,
        )
    except KeyError as exc:
        _unavailable(f"{CLUSTER_ENV} lacks {exc.args[0]}: re-run scripts/provision-cluster.sh")
        raise  # not reached
    if not os.access(cluster.login, os.X_OK):
        _unavailable(f"login wrapper {cluster.login} missing: run scripts/provision-cluster.sh")
    try:
        pwd.getpwnam(cluster.user)
    except KeyError:
        _unavailable(f"test user {cluster.user} missing: run scripts/provision.sh")
    probe = subprocess.run(cluster.argv(["sinfo", "-h", "-o", "%D"], cwd="/"),
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        _unavailable(f"cluster {cluster.name} does not answer ({probe.stderr.strip()[-500:]}): "
                     "run scripts/cluster/up")
    return cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The 3-node cluster; a per-session shared directory is removed at the end."""
    env = read_env_file(CLUSTER_ENV) if CLUSTER_ENV.is_file() else {}
    scratch = Path(env.get("VENVOY_CLUSTER_SCRATCH", "/var/lib/venvoy-cluster/scratch"))
    root: Path | None = None
    if scratch.is_dir():
        root = Path(tempfile.mkdtemp(prefix="it-", dir=scratch))
        root.chmod(0o755)
    try:
        c = load_cluster(root or scratch)
        if root is None:
            _unavailable(f"shared scratch directory {scratch} missing: run scripts/cluster/up")
        os.chown(c.root, c.uid, -1)
        yield c
    finally:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


#: The MPI environment the cluster tests build once: mpi4py with PyPI's Open MPI
#: wheel (its own PMIx client). docs/mpi.md says why this combination and what
#: else works (PyPI's MPICH with ``srun --mpi=pmi2``).
MPI_REQUIREMENTS = "mpi4py==4.1.2\nopenmpi==5.0.11\n"


@dataclass(frozen=True)
class MpiEnv:
    """A venvoy environment with mpi4py and an MPI, built as the test user."""

    name: str
    sif: Path  #: the environment's SIF on shared storage (venvoy's cache in $HOME)
    python: str  #: the interpreter inside the image
    srun_mpi: str  #: the value of ``srun --mpi=``
    env: dict[str, str]  #: the workarounds a task needs (passed through srun)
    venvoy: tuple[str, ...]  #: argv prefix that runs this checkout's venvoy as the user
    #: and its environment: PYTHONPATH and the store (VENVOY_HOME), on shared storage
    venvoy_env: dict[str, str]
    build_seconds: float


def shared_venvoy(cluster: Cluster) -> tuple[tuple[str, ...], dict[str, str]]:
    """A copy of this checkout's venvoy on shared storage (the nodes run it too)."""
    src = cluster.root / "src"
    if not (src / "venvoy").is_dir():
        shutil.copytree(REPO / "src" / "venvoy", src / "venvoy",
                        ignore=shutil.ignore_patterns("__pycache__"))
        compileall.compile_dir(src, quiet=1)
        for path in [src, *src.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    return (USER_PYTHON, "-m", "venvoy"), {"PYTHONPATH": str(src)}


@pytest.fixture(scope="session")
def mpi_env(cluster: Cluster) -> MpiEnv:
    """Build the MPI environment once (``venvoy init`` as the test user,
    Apptainer, PyPI wheels and the SIF cached in a store under the cluster's
    scratch directory) and make its SIF."""
    if not BASE_ARCHIVE.is_file():
        _unavailable(f"base image {BASE_ARCHIVE} missing: run scripts/provision.sh")
    if shutil.which("apptainer") is None:
        _unavailable("apptainer is not installed: run scripts/provision.sh")
    venvoy, venv_env = shared_venvoy(cluster)
    # Its own store on shared storage, kept between sessions (wheels and SIF cached),
    # apart from the user's default store that other tests list and clean.
    store = cluster.scratch / "venvoy-it-mpi-store"
    store.mkdir(mode=0o755, exist_ok=True)
    os.chown(store, cluster.uid, -1)
    venv_env = {**venv_env, "VENVOY_HOME": str(store)}
    d = cluster.workdir("mpienv-")
    (d / "requirements.txt").write_text(MPI_REQUIREMENTS)
    name = "it-mpi"
    start = time.monotonic()
    # Built on the machine itself as the test user: the cluster's namespaces have
    # no route to PyPI (like compute nodes; the store in $HOME is shared).
    pw = pwd.getpwnam(cluster.user)
    user_env = {"HOME": pw.pw_dir, "USER": cluster.user, "LOGNAME": cluster.user,
                "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                "XDG_RUNTIME_DIR": f"/run/user/{pw.pw_uid}", **venv_env}
    init = subprocess.run(
        ["runuser", "-u", cluster.user, "--", "env", "-i",
         *[f"{k}={v}" for k, v in user_env.items()], *venvoy, "init", name, "--base",
         str(BASE_ARCHIVE), "--runtime", "apptainer", "-r", "requirements.txt", "--json",
         "--quiet"], cwd=d, capture_output=True, text=True, timeout=900)
    if init.returncode != 0:
        pytest.fail(f"venvoy init {name} exited {init.returncode}:\n{init.stderr[-3000:]}",
                    pytrace=False)
    image_id = str(json.loads(init.stdout)["image_id"]).removeprefix("sha256:")
    assert re.fullmatch(r"[0-9a-f]{64}", image_id), init.stdout
    # The first run makes (and checks) the SIF in venvoy's cache.
    probe = cluster.run([*venvoy, "run", name, "--runtime", "apptainer", "--", "python", "-c",
                         "from mpi4py import MPI; print(MPI.Get_library_version().split(',')[0])"],
                        env=venv_env, cwd=d, timeout=900, check=True)
    assert probe.stdout.startswith("Open MPI v5."), probe.stdout
    sif = store / "cache" / "sif" / f"{image_id}.sif"
    assert sif.is_file(), f"no SIF at {sif}"
    return MpiEnv(name=name, sif=sif, python="/opt/venv/bin/python", srun_mpi="pmix",
                  env={"PMIX_MCA_psec": "native", "PMIX_MCA_gds": "hash"}, venvoy=venvoy, venvoy_env=venv_env,
                  build_seconds=time.monotonic() - start)
