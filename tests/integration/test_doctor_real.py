"""`venvoy doctor` on this machine's real runtimes, and each failure mode made
real: a user without subordinate ids, an unreadable /dev/fuse, a full tmpfs as
temporary space, no Slurm on PATH, user namespaces switched off (by sysctl,
inside a throwaway user namespace). Also: the GPU allocation variables reach
the container on the real runtimes (no GPU needed to see the variables).

Every failure mode is made inside a throwaway mount or user namespace (or with
a throwaway user), so nothing on the host changes.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import TARGETS, TEST_USER, USER_PYTHON, Target, Venvoy

pytestmark = pytest.mark.integration

SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


def lines_of(proc: subprocess.CompletedProcess[bytes]) -> list[str]:
    return proc.stdout.decode().splitlines()


def check_line(proc: subprocess.CompletedProcess[bytes], status: str, name: str) -> str:
    """The report line of check ``name``; fails with the whole report if absent."""
    for line in lines_of(proc):
        words = line.split()
        if words[:1] == [status] and line.split(None, 1)[1].startswith(name):
            return line
    raise AssertionError(f"no `{status} {name}` line in:\n{proc.stdout.decode()}"
                         f"\n{proc.stderr.decode()}")


def as_user(user: str, venvoy: Venvoy, args: list[str], home: str, **env: str) -> list[str]:
    """argv that runs `python -m venvoy ARGS` as ``user`` with a clean environment."""
    uid = pwd.getpwnam(user).pw_uid
    base = {"HOME": home, "USER": user, "LOGNAME": user, "PATH": SYSTEM_PATH,
            "XDG_RUNTIME_DIR": f"/run/user/{uid}", "LANG": "C.UTF-8",
            "PYTHONPATH": str(venvoy.src), "VENVOY_HOME": f"{home}/venvoy"}
    base.update(env)
    return ["runuser", "-u", user, "--", "env", "-i", *[f"{k}={v}" for k, v in base.items()],
            USER_PYTHON, "-m", "venvoy", *args]


def as_root(venvoy: Venvoy, args: list[str], **env: str) -> tuple[list[str], dict[str, str]]:
    argv, base = venvoy.argv(Target("root", "apptainer", as_user=False), args)
    base.update(env)
    return argv, base


def run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
        ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, env=env, cwd=cwd or "/", capture_output=True, timeout=120,
                          stdin=subprocess.DEVNULL)


# -- the real machine ----------------------------------------------------------------------

def test_doctor_as_root_on_this_machine(venvoy: Venvoy) -> None:
    argv, env = as_root(venvoy, ["doctor"])
    proc = run(argv, env)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    for name in ("docker", "podman", "apptainer", "singularity", "charliecloud"):
        assert "usable" in check_line(proc, "ok", name)
    check_line(proc, "ok", "user namespaces")
    check_line(proc, "ok", "FUSE and squashfuse")
    argv, env = as_root(venvoy, ["runtime-info", "--json"])
    made = json.loads(run(argv, env).stdout)["sif_compression"]["compression"]
    assert f"venvoy's SIFs use {made}" in check_line(proc, "ok", "SIF compression")
    check_line(proc, "n/a", "GPU")
    assert "UP" in check_line(proc, "ok", "controller")
    assert lines_of(proc)[-1].startswith("venvoy doctor: nothing fails")


def test_doctor_as_user_json(venvoy: Venvoy, tmp_path: Path) -> None:
    import json

    home = tempfile.mkdtemp(prefix="doc-home-", dir=venvoy.root)
    os.chown(home, pwd.getpwnam(TEST_USER).pw_uid, -1)
    proc = run(as_user(TEST_USER, venvoy, ["doctor", "--json"], home))
    report = json.loads(proc.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["subordinate ids"]["status"] == "ok", checks["subordinate ids"]
    assert checks["podman"]["status"] == "ok" and "rootless" in checks["podman"]["evidence"]
    assert proc.returncode == (0 if report["ok"] else 1)
    assert report["ok"], [c for c in report["checks"] if c["status"] == "fail"]


# -- failure modes, made real ------------------------------------------------------------------

@pytest.fixture
def throwaway_user(venvoy: Venvoy) -> Iterator[tuple[str, str]]:
    """A user created for this test with no subordinate id range; removed after."""
    name = f"vvdoc{uuid.uuid4().hex[:8]}"
    home = tempfile.mkdtemp(prefix="doc-user-", dir=venvoy.root)
    proc = subprocess.run(["useradd", "--no-create-home", "--home-dir", home, "--shell", "/bin/sh",
                           "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name],
                          capture_output=True)
    if proc.returncode != 0:
        pytest.fail(f"useradd failed: {proc.stderr.decode()}")
    try:
        os.chown(home, pwd.getpwnam(name).pw_uid, -1)
        for path in ("/etc/subuid", "/etc/subgid"):
            assert name not in Path(path).read_text()
        yield name, home
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_user_without_subordinate_ids(venvoy: Venvoy, throwaway_user: tuple[str, str]) -> None:
    name, home = throwaway_user
    proc = run(as_user(name, venvoy, ["doctor", "--runtime", "podman"], home))
    assert proc.returncode == 1
    line = check_line(proc, "FAIL", "subordinate ids")
    assert f"user {name} has no range in /etc/subuid and /etc/subgid" in line
    assert "usermod --add-subuids" in line
    assert f"user {name} has no range" in check_line(proc, "FAIL", "podman")


def test_fuse_device_unreadable(venvoy: Venvoy) -> None:
    """/dev/fuse replaced (in a private mount namespace) by a device node nobody may open."""
    d = Path(tempfile.mkdtemp(prefix="doc-fuse-", dir=venvoy.root))
    node = d / "fuse"
    os.mknod(node, 0o020000, os.makedev(10, 229))  # a character device, mode 000
    home = tempfile.mkdtemp(prefix="doc-home-", dir=venvoy.root)
    os.chown(home, pwd.getpwnam(TEST_USER).pw_uid, -1)
    try:
        inner = as_user(TEST_USER, venvoy, ["doctor", "--runtime", "apptainer"], home,
                        APPTAINER_TMPDIR=home)
        proc = run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                    'mount --bind "$1" /dev/fuse && shift && exec "$@"', "sh", str(node), *inner])
        line = check_line(proc, "WARN", "FUSE and squashfuse")
        assert "/dev/fuse cannot be opened (Permission denied)" in line
        assert f"every run extracts the SIF into APPTAINER_TMPDIR ({home}), which has" in line
    finally:
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def test_full_tmpfs_as_temporary_space(venvoy: Venvoy) -> None:
    d = Path(tempfile.mkdtemp(prefix="doc-full-", dir=venvoy.root))
    try:
        argv, env = as_root(venvoy, ["doctor", "--runtime", "apptainer"], VENVOY_TMPDIR=str(d))
        script = ('mount -t tmpfs -o size=1m venvoy-doctor-full "$1" || exit 99; '
                  'head -c 2M /dev/zero > "$1/fill" 2>/dev/null; shift; exec "$@"')
        proc = run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script,
                    "sh", str(d), *argv], env)
        assert proc.returncode == 1, proc.stdout.decode() + proc.stderr.decode()
        line = check_line(proc, "FAIL", "temporary space")
        assert f"{d} (from VENVOY_TMPDIR; tmpfs, node-local) has 0 MB free" in line
        assert "set VENVOY_TMPDIR to a directory with at least 1.0 GB free" in line
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_no_slurm_on_path(venvoy: Venvoy) -> None:
    bindir = Path(tempfile.mkdtemp(prefix="doc-bin-", dir=venvoy.root))
    try:
        for tool in ("apptainer", "unshare"):
            found = shutil.which(tool)
            assert found
            (bindir / tool).symlink_to(found)
        argv, env = as_root(venvoy, ["doctor"], PATH=str(bindir))
        proc = run(argv, env)
        line = check_line(proc, "n/a", "Slurm")
        assert "no sbatch or srun on PATH: not a Slurm site" in line
        assert not any("controller" in x or "MaxArraySize" in x for x in lines_of(proc))
        assert proc.returncode == 0, proc.stdout.decode()
    finally:
        shutil.rmtree(bindir, ignore_errors=True)


def test_user_namespaces_switched_off(venvoy: Venvoy) -> None:
    """sysctl user.max_user_namespaces=0, in a throwaway user namespace (it is per namespace)."""
    argv, env = as_root(venvoy, ["doctor", "--runtime", "charliecloud"])
    proc = run(["unshare", "--user", "--map-root-user", "--", "sh", "-c",
                'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"', "sh", *argv], env)
    assert proc.returncode == 1, proc.stdout.decode() + proc.stderr.decode()
    line = check_line(proc, "FAIL", "user namespaces")
    assert "disabled: user.max_user_namespaces is 0" in line and "sysctl" in line
    assert "user namespaces" in check_line(proc, "FAIL", "charliecloud")


# -- GPU allocation variables reach the container ------------------------------------------

GPU_TARGETS = [t for t in TARGETS if t.id in ("apptainer", "charliecloud", "podman-rootless",
                                               "podman-rootful", "docker")]
GPU_ENV = {"CUDA_VISIBLE_DEVICES": "1", "ROCR_VISIBLE_DEVICES": "0", "HIP_VISIBLE_DEVICES": "0",
           "NVIDIA_VISIBLE_DEVICES": "1", "GPU_DEVICE_ORDINAL": "1", "SLURM_JOB_GPUS": "1",
           "SLURM_GPUS_ON_NODE": "1"}


@pytest.mark.parametrize("target", GPU_TARGETS, ids=[t.id for t in GPU_TARGETS], indirect=True)
def test_gpu_allocation_reaches_the_container(venvoy: Venvoy, target: Target,
                                              workdir: Path) -> None:
    proc = venvoy.run(target, ["run", "--runtime", target.runtime, "--image", target.image, "--",
                               "env"], cwd=workdir, extra_env=GPU_ENV)
    assert proc.returncode == 0, proc.stderr.decode()
    inside = dict(line.split("=", 1) for line in proc.stdout.decode().splitlines() if "=" in line)
    for name, value in GPU_ENV.items():
        assert inside.get(name) == value, f"{name}: {inside.get(name)!r} inside ({target.id})"


# -- with an environment NAME -----------------------------------------------------------------

def test_doctor_with_an_environment(venvoy: Venvoy) -> None:
    """Built with Charliecloud by the test user: record, lock, image and forms; then
    --verify runs the real verification; then a damaged lock is one FAIL line."""
    from .test_envs_real import ROOTFS, USER, Stores

    stores = Stores(venvoy)
    name = "it-doctor"
    stores.ok(USER, "init", name, "--requirements", "req-six.txt", "--base", str(ROOTFS),
              "--runtime", "charliecloud", "--quiet")
    proc = stores.venvoy_cmd(USER, "doctor", name, "--runtime", "charliecloud")
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert "Python 3.11" in check_line(proc, "ok", "record")
    check_line(proc, "ok", "lock")
    check_line(proc, "ok", "image")
    assert "no image directory yet" in check_line(proc, "WARN", "charliecloud form")
    proc = stores.venvoy_cmd(USER, "doctor", name, "--runtime", "charliecloud", "--verify")
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert "match the lock" in check_line(proc, "ok", "verify")
    proc = stores.venvoy_cmd(USER, "doctor", name, "--runtime", "charliecloud")
    assert "image directory" in check_line(proc, "ok", "charliecloud form")  # verify made it
    lock = stores.user / "envs" / name / "pylock.toml"
    with open(lock, "a") as fh:
        fh.write("# edited by hand\n")
    proc = stores.venvoy_cmd(USER, "doctor", name, "--runtime", "charliecloud")
    assert proc.returncode == 1
    # (the record line when reading the record checks the lock, else the lock line)
    failed = [x for x in lines_of(proc) if x.split()[:1] == ["FAIL"]]
    assert len(failed) == 1 and "does not match the environment's lock hash" in failed[0], failed


# -- inside a Slurm allocation ------------------------------------------------------------------

def salloc(argv: list[str]) -> list[str]:
    return ["salloc", "--nodes=1", "--time=2", "--immediate=60", "--", *argv]


def test_store_visible_on_the_nodes_of_an_allocation(venvoy: Venvoy) -> None:
    argv, env = as_root(venvoy, ["doctor", "--runtime", "apptainer"])
    proc = run(salloc(argv), env)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert "is visible on all 1 node(s) of job" in check_line(proc, "ok", "store on compute nodes")


def test_store_invisible_on_the_nodes_of_an_allocation(venvoy: Venvoy) -> None:
    """The store lives on a tmpfs in the doctor's own mount namespace: the job's
    node (slurmd, outside that namespace) cannot see it, as with a node-local disk."""
    d = Path(tempfile.mkdtemp(prefix="doc-private-", dir=venvoy.root))
    try:
        argv, env = as_root(venvoy, ["doctor", "--runtime", "apptainer"],
                            VENVOY_HOME=str(d / "store"))
        script = ('mount -t tmpfs venvoy-doctor-private "$1" && mkdir "$1/store" || exit 99; '
                  'shift; exec "$@"')
        proc = run(salloc(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                           script, "sh", str(d), *argv]), env)
        assert proc.returncode == 1, proc.stdout.decode() + proc.stderr.decode()
        line = check_line(proc, "FAIL", "store on compute nodes")
        assert f"{d}/store is not visible on every node of job" in line
        assert "VENVOY_HOME" in line
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_doctor_creates_no_store(venvoy: Venvoy) -> None:
    """The real runtimes' versions are probed (their cache lives in the store), yet a store
    that does not exist yet is still absent afterwards, and every version is known."""
    home = Path(tempfile.mkdtemp(prefix="doc-nostore-", dir=venvoy.root)) / "a" / "store"
    argv, env = as_root(venvoy, ["doctor"], VENVOY_HOME=str(home))
    proc = run(argv, env)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    for name in ("docker", "podman", "apptainer", "charliecloud"):
        assert "version unknown" not in check_line(proc, "ok", name)
    assert not home.parent.exists()
