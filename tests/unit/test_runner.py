"""Starting the runtime: exec for the simple ones, a forwarding parent for Docker/Podman."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from venvoy.core.errors import ImageNotFound
from venvoy.runtime.apptainer import Apptainer
from venvoy.runtime.docker import Docker
from venvoy.runtime.request import RunRequest
from venvoy.runtime.runner import exec_run, run


class Execed(Exception):
    pass


def test_exec_run_execs_non_wrapping_runtimes(tmp_path: Path, monkeypatch) -> None:
    sif = tmp_path / "x.sif"
    sif.touch()
    seen = {}

    def fake_execve(path, argv, env):
        seen.update(path=path, argv=argv, env=env)
        raise Execed

    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    app = Apptainer("/usr/bin/apptainer", {"PATH": "/usr/bin"})
    req = RunRequest(str(sif), ("python3", "-c", "1"), env=(("A", "$x"),), tty=False)
    with pytest.raises(Execed):
        exec_run(app, req)
    assert seen["path"] == "/usr/bin/apptainer"
    assert seen["argv"] == app.run_argv(req)
    assert seen["env"]["APPTAINERENV_A"] == "\\$x"
    # The exec failed (here: faked): venvoy's own SIGPIPE handling is back.
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN


def docker_script(tmp_path: Path, body: str) -> Docker:
    path = tmp_path / "docker"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return Docker(str(path), {"PATH": "/usr/bin:/bin"})


def test_run_returns_exit_status(tmp_path: Path) -> None:
    docker = docker_script(tmp_path, "exit 4\n")
    assert run(docker, RunRequest("img", ("true",), tty=False)) == 4


def test_killed_by_signal_reports_128_plus_signal(tmp_path: Path) -> None:
    docker = docker_script(tmp_path, "kill -9 $$\n")
    assert run(docker, RunRequest("img", ("true",), tty=False)) == 128 + 9


def test_exit_125_with_missing_image_raises_image_not_found(tmp_path: Path) -> None:
    docker = docker_script(tmp_path, '[ "$1" = image ] && exit 1\nexit 125\n')
    with pytest.raises(ImageNotFound, match="image 'ghost:1' not found by docker"):
        run(docker, RunRequest("ghost:1", ("true",), tty=False))


def test_signals_are_forwarded_to_the_runtime(tmp_path: Path) -> None:
    marker = tmp_path / "got-usr1"
    # The child waits until venvoy has installed its handlers, signals venvoy,
    # and exits 42 once venvoy has passed the signal on. Bounded: 5 s at most.
    docker = docker_script(tmp_path, f"""\
trap 'echo usr1 > "{marker}"; exit 42' USR1
sleep 0.2
kill -USR1 $PPID
i=0
while [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done
exit 1
""")
    def ignore(signum, frame) -> None:  # never let an early USR1 kill pytest
        pass

    original = signal.signal(signal.SIGUSR1, ignore)
    try:
        code = run(docker, RunRequest("img", ("true",), tty=False))
        handler_after = signal.getsignal(signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, original)
    assert code == 42
    assert marker.read_text().strip() == "usr1"
    assert handler_after is ignore  # venvoy put the previous handler back


def test_the_runtime_client_is_asked_to_die_with_venvoy(tmp_path: Path) -> None:
    """Docker/Podman's client gets SIGTERM when venvoy dies, even by kill -9
    (PR_SET_PDEATHSIG): the exit status here is what the client was asked for."""
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    client = tmp_path / "docker"
    client.write_text(f"#!{sys.executable}\n"
                      "import ctypes, sys\n"
                      "sig = ctypes.c_int(-1)\n"
                      "ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG\n"
                      "sys.exit(sig.value)\n")
    client.chmod(0o755)
    docker = Docker(str(client), {"PATH": "/usr/bin:/bin"})
    assert run(docker, RunRequest("img", ("true",), tty=False)) == signal.SIGTERM


def test_a_runtime_that_cannot_be_started_is_an_oserror(tmp_path: Path) -> None:
    from venvoy.runtime.runner import spawn

    with pytest.raises(FileNotFoundError):
        spawn([str(tmp_path / "no-such-docker"), "run"], {})
    with pytest.raises(PermissionError):
        (tmp_path / "not-executable").write_text("")
        spawn([str(tmp_path / "not-executable")], {})
