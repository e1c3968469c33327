"""`venvoy run` on every real runtime: what a user relies on, proven end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import Target, Venvoy

pytestmark = pytest.mark.integration

PY_ARGV = "import json,sys; sys.stdout.write(json.dumps(sys.argv[1:]))"


def run(venvoy: Venvoy, target: Target, cwd: Path, *args: str, **kw: object,
        ) -> subprocess.CompletedProcess[bytes]:
    """`venvoy run --runtime R --image IMG [args]`."""
    return venvoy.run(target, ["run", "--runtime", target.runtime, "--image", target.image,
                               *args], cwd=cwd, **kw)  # type: ignore[arg-type]


def ok(proc: subprocess.CompletedProcess[bytes]) -> str:
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def test_bind_mount_readable_writable_and_owned_by_caller(venvoy: Venvoy, target: Target,
                                                          workdir: Path) -> None:
    data = workdir / "data"
    data.mkdir()
    (data / "in.txt").write_text("from the host\n")
    if target.as_user:
        os.chown(data, target.uid, -1)
    out = ok(run(venvoy, target, workdir, "--mount", f"{data}:/data", "--",
                 "sh", "-c", "cat /data/in.txt && echo written > /data/out.txt && echo ok"))
    assert out.splitlines() == ["from the host", "ok"]
    written = data / "out.txt"
    assert written.read_text() == "written\n"
    assert written.stat().st_uid == target.uid, "file on the mount must belong to the caller"


def test_current_directory_is_mounted_and_is_the_workdir(venvoy: Venvoy, target: Target,
                                                         workdir: Path) -> None:
    (workdir / "here.txt").write_text("cwd content")
    out = ok(run(venvoy, target, workdir, "--", "sh", "-c", "pwd; cat here.txt"))
    assert out == f"{workdir}\ncwd content"


def test_explicit_workdir(venvoy: Venvoy, target: Target, workdir: Path) -> None:
    data = workdir / "d"
    data.mkdir()
    out = ok(run(venvoy, target, workdir, "--mount", f"{data}:/data", "--workdir", "/data",
                 "--", "pwd"))
    assert out.strip() == "/data"


def test_read_only_mount_is_enforced(venvoy: Venvoy, target: Target, workdir: Path) -> None:
    data = workdir / "ro"
    data.mkdir()
    (data / "keep.txt").write_text("original")
    proc = run(venvoy, target, workdir, "--mount", f"{data}:/data:ro", "--",
               "sh", "-c", "cat /data/keep.txt; echo changed > /data/keep.txt; touch /data/new")
    assert proc.returncode != 0
    assert (data / "keep.txt").read_text() == "original"
    assert not (data / "new").exists()
    if target.runtime == "charliecloud":  # ch-run has no read-only binds: refused up front
        assert proc.returncode == 125
        err = proc.stderr.decode()
        assert err.count("\n") == 1 and "cannot bind-mount read-only" in err
    else:
        assert proc.stdout.decode() == "original"


def test_env_allow_list(venvoy: Venvoy, target: Target, workdir: Path) -> None:
    host = {"VENVOY_IT_SECRET": "must-not-leak", "VENVOY_IT_PASSED": "passed along"}
    script = ("import os,json; print(json.dumps({k: os.environ.get(k) for k in "
              "['GREETING','VENVOY_IT_SECRET','VENVOY_IT_PASSED','PYTHONNOUSERSITE']}))")
    out = ok(run(venvoy, target, workdir, "--env", "GREETING=hello world=1",
                 "--env-pass", "VENVOY_IT_PASSED", "--", "python3", "-c", script,
                 extra_env=host))
    assert json.loads(out) == {"GREETING": "hello world=1", "VENVOY_IT_SECRET": None,
                               "VENVOY_IT_PASSED": "passed along", "PYTHONNOUSERSITE": "1"}


def test_env_values_arrive_byte_exact(venvoy: Venvoy, target: Target, workdir: Path) -> None:
    value = 'spaces  "double" \'single\' $HOME `id` \\ back\nnew line, comma'
    out = ok(run(venvoy, target, workdir, "--env", f"TRICKY={value}", "--",
                 "python3", "-c", "import os,sys; sys.stdout.write(os.environ['TRICKY'])"))
    assert out == value


@pytest.mark.parametrize("code", [0, 1, 42, 255])
def test_exit_code_passes_through(venvoy: Venvoy, target: Target, workdir: Path,
                                  code: int) -> None:
    proc = run(venvoy, target, workdir, "--", "sh", "-c", f"exit {code}")
    assert proc.returncode == code, proc.stderr.decode()


def test_stdin_reaches_the_command(venvoy: Venvoy, target: Target, workdir: Path) -> None:
    payload = b"line one\nline two\x00binary\xff\n"
    proc = run(venvoy, target, workdir, "--", "cat", input=payload)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == payload


def test_arguments_arrive_unchanged(venvoy: Venvoy, target: Target, workdir: Path) -> None:
    args = ["two words", "it's \"quoted\"", "$HOME", "line1\nline2", "--not-an-option", "", "*"]
    out = ok(run(venvoy, target, workdir, "--", "python3", "-c", PY_ARGV, *args))
    assert json.loads(out) == args


def _sleepers(marker: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if marker in line and "ps -eo" not in line]


def _containers(venvoy: Venvoy, target: Target) -> list[str]:
    if target.runtime not in ("docker", "podman"):
        return []
    cmd = [target.runtime, "ps", "-aq"]
    if target.as_user and target.runtime == "podman":
        user_env = venvoy.user_env(target)
        cmd = ["runuser", "-u", "venvoytest", "--", "env", "-i",
               *[f"{k}={v}" for k, v in user_env.items()], *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_stops_the_container_and_leaves_nothing(venvoy: Venvoy, target: Target,
                                                       workdir: Path, sig: int) -> None:
    seconds = str(3000 + os.getpid() % 997)  # a sleep no other test starts
    before = _containers(venvoy, target)
    proc = venvoy.popen(target, ["run", "--runtime", target.runtime, "--image", target.image,
                                 "--", "sh", "-c", f"echo ready; exec sleep {seconds}"],
                        cwd=workdir)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 20
        while not _sleepers(f"sleep {seconds}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _sleepers(f"sleep {seconds}"), "the command never started"
        # As root we signal venvoy itself; for a user target, venvoy runs below
        # runuser, so signal the venvoy process (the child of runuser).
        pid = proc.pid
        if target.as_user:
            children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                      text=True).stdout.split()
            assert children, "runuser has no child"
            pid = int(children[0])
        start = time.monotonic()
        os.kill(pid, sig)
        proc.wait(timeout=15)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert elapsed < 15
    assert proc.returncode != 0
    deadline = time.monotonic() + 10
    while _sleepers(f"sleep {seconds}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _sleepers(f"sleep {seconds}"), "the command outlived venvoy"
    assert _containers(venvoy, target) == before, "a container was left behind"


def test_missing_image_is_one_clear_line(venvoy: Venvoy, target: Target, workdir: Path) -> None:
    missing = {"ref": "venvoy-it-no-such-image:latest"}.get(
        "ref" if target.runtime in ("docker", "podman") else "path",
        str(workdir / "no-such-image.sif"))
    proc = venvoy.run(target, ["run", "--runtime", target.runtime, "--image", missing,
                               "--", "true"], cwd=workdir)
    err = proc.stderr.decode()
    assert proc.returncode == 125
    assert "Traceback" not in err
    ours = [line for line in err.splitlines() if line.startswith("venvoy: error:")]
    assert len(ours) == 1 and missing in ours[0], err
    assert "not found" in ours[0] or "does not exist" in ours[0]


@pytest.mark.parametrize("gpu", ["nvidia", "amd"])
def test_gpu_request_without_devices_is_one_clear_line(venvoy: Venvoy, target: Target,
                                                       workdir: Path, gpu: str) -> None:
    """This machine has no GPU: refused up front, never a confusing failure inside."""
    if os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/kfd"):
        pytest.skip("this machine has GPU devices")
    proc = run(venvoy, target, workdir, "--gpu", gpu, "--", "true")
    err = proc.stderr.decode()
    assert proc.returncode == 125
    assert err.count("\n") == 1 and err.startswith(f"venvoy: error: --gpu {gpu}:"), err
    assert "drop --gpu" in err
