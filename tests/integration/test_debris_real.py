"""``kill -9`` of venvoy on the real runtimes: nothing keeps running, and the
next run removes what was left and works (issue: races and interruptions
leave debris)."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import BASE_ARCHIVE, TARGETS, TEST_USER, Target, Venvoy

pytestmark = pytest.mark.integration

KILL_TARGETS = [t for t in TARGETS if t.id in ("docker", "podman-rootful", "podman-rootless")]


def poll(predicate: Callable[[], bool], what: str, bound: float = 60.0) -> None:
    """Poll until ``predicate`` holds; fail after ``bound`` seconds (a limit, not a wait)."""
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"after {bound:.0f} s: {what}", pytrace=False)
        time.sleep(0.05)


def processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, state, args) of every process."""
    out: dict[int, tuple[int, str, str]] = {}
    ps = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,stat=,args="], capture_output=True,
                        text=True).stdout
    for line in ps.splitlines():
        pid, ppid, stat, *args = line.split(None, 3)
        out[int(pid)] = (int(ppid), stat, args[0] if args else "")
    return out


def alive(pid: int) -> bool:
    info = processes().get(pid)
    return info is not None and not info[1].startswith("Z")  # a zombie has ended


def matching(marker: str) -> list[str]:
    return [f"{pid} {args}" for pid, (_, stat, args) in processes().items()
            if marker in args and not stat.startswith("Z") and "ps -eo" not in args]


def children(pid: int) -> list[int]:
    return [p for p, (ppid, stat, _) in processes().items()
            if ppid == pid and not stat.startswith("Z")]


def venvoy_pid(proc: subprocess.Popen[bytes], target: Target) -> int:
    """The venvoy process itself (as the test user it runs below runuser)."""
    if not target.as_user:
        return proc.pid
    kids: list[int] = []
    poll(lambda: bool(kids.extend(children(proc.pid)) or kids), "runuser has no child", 10)
    return kids[0]


def containers(venvoy: Venvoy, target: Target) -> list[str]:
    cmd = [target.runtime, "ps", "-aq"]
    if target.as_user:
        env = venvoy.user_env(target)
        cmd = ["runuser", "-u", TEST_USER, "--", "env", "-i",
               *[f"{k}={v}" for k, v in env.items()], *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()


@pytest.mark.parametrize("target", KILL_TARGETS, ids=[t.id for t in KILL_TARGETS], indirect=True)
def test_kill_9_of_venvoy_stops_the_client_and_the_container(venvoy: Venvoy, target: Target,
                                                              workdir: Path) -> None:
    seconds = f"{5000 + os.getpid() % 997}"  # a sleep no other test starts
    before = containers(venvoy, target)
    proc = venvoy.popen(target, ["run", "--runtime", target.runtime, "--image", target.image,
                                 "--", "sh", "-c", f"echo ready; exec sleep {seconds}"],
                        cwd=workdir)
    pid = venvoy_pid(proc, target)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n", proc.stderr.read() if proc.stderr else b""
        clients = children(pid)
        assert clients, f"venvoy ({pid}) has no runtime client"
        poll(lambda: bool(matching(f"sleep {seconds}")), "the command never started", 20)
    finally:
        os.kill(pid, signal.SIGKILL)  # no handler runs: only the kernel can stop the client
        proc.wait(timeout=30)
    poll(lambda: not any(alive(c) for c in clients), f"the {target.runtime} client outlived venvoy")
    poll(lambda: not matching(f"sleep {seconds}"), "the container's command outlived venvoy")
    poll(lambda: containers(venvoy, target) == before, "a container was left behind")
    again = venvoy.run(target, ["run", "--runtime", target.runtime, "--image", target.image,
                                "--", "true"], cwd=workdir)
    assert again.returncode == 0, again.stderr.decode()


def test_kill_9_during_the_first_apptainer_conversion(venvoy: Venvoy) -> None:
    """The conversion (``apptainer build``) dies with venvoy; its 200+ MB of
    temporaries are removed by the next conversion, which works."""
    # The build must be slow enough to be killed mid-way: Apptainer's own builder.
    target = Target("apptainer-debris", "apptainer", as_user=True,
                    env_extra={"VENVOY_SIF_COMPRESSION": "apptainer"})
    user = pwd.getpwnam(TEST_USER)
    dest = venvoy.root / "debris-sif"
    dest.mkdir()
    os.chown(dest, user.pw_uid, user.pw_gid)
    args = ["load", "--runtime", "apptainer", str(BASE_ARCHIVE), "--name", "debris",
            "--dest", str(dest)]
    proc = venvoy.popen(target, args, cwd=dest)
    pid = venvoy_pid(proc, target)
    try:

        def building() -> bool:
            if proc.poll() is not None:
                _out, err = proc.communicate()
                pytest.fail(f"venvoy load ended before it could be killed: {err.decode()}")
            found = [*dest.glob("*"), *dest.glob("*/*")]
            return any(p.name.startswith("build-temp-") for p in found)

        poll(building, "apptainer build never started", 120)
        assert matching(str(dest)), f"no conversion process: {matching('apptainer')}"
    finally:
        os.kill(pid, signal.SIGKILL)  # only the kernel can stop the conversion now
        proc.wait(timeout=30)
    poll(lambda: not matching(str(dest)), "apptainer build outlived venvoy", 120)
    assert os.listdir(dest), "the killed build left nothing: this test proves nothing"
    again = venvoy.run(target, args, cwd=dest, timeout=600)
    assert again.returncode == 0, again.stderr.decode()
    assert sorted(os.listdir(dest)) == ["debris.sif"], "debris of the killed build was left"


@pytest.mark.parametrize("runtime", ["docker", "podman"])
def test_a_build_container_a_killed_init_left_is_removed(venvoy: Venvoy, runtime: str) -> None:
    """kill -9 of `venvoy init` between `docker run`'s create and start leaves a
    container in the "Created" state (--rm never applies to it). Build containers
    carry their owner in their name; the next init removes a dead owner's, never
    a live one's."""
    from venvoy.core.fs import container_name, owner_tag
    from venvoy.runtime.detect import get_runtime

    from .conftest import _load

    image = _load(venvoy, Target(runtime, runtime, False))
    host = owner_tag().rsplit("+", 2)[0]
    dead = f"venvoy-build_{host}_999999_1_{os.urandom(4).hex()}"  # no such process
    live = container_name("venvoy-build")  # this test's own process: alive
    for name in (dead, live):
        subprocess.run([runtime, "create", "--name", name, image, "true"], check=True,
                       capture_output=True)
    try:
        removed = get_runtime(runtime).remove_stale_containers("venvoy-build")
        names = subprocess.run([runtime, "ps", "-a", "--format", "{{.Names}}"], check=True,
                               capture_output=True, text=True).stdout.split()
        assert dead not in names and live in names and removed >= 1
    finally:
        subprocess.run([runtime, "rm", "-f", dead, live], capture_output=True)
