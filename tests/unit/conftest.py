"""Shared fixtures for the unit tests: no real container runtime is ever started.

* every test gets a scrubbed environment (no scheduler variables, no VENVOY_*),
  its own VENVOY_HOME and a host name that does not look like a cluster node;
* ``fakebin`` makes a directory of small shell scripts named like the runtimes,
  which print a version and log every call, so detection and version probing
  can be checked without Docker, Podman, Apptainer or Charliecloud.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

SCRUBBED = (
    "SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID", "SGE_ROOT",
    "VENVOY_RUNTIME", "VENVOY_CONFIG", "VENVOY_HOME", "DOCKER_HOST",
    "XDG_CACHE_HOME", "XDG_CONFIG_HOME",
)


def set_hostname(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make ``os.uname().nodename`` (what venvoy.hpc reads) return ``name``."""
    monkeypatch.setattr(os, "uname", lambda: SimpleNamespace(nodename=name))


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in SCRUBBED:
        monkeypatch.delenv(var, raising=False)
    for var in list(os.environ):
        if var.startswith(("APPTAINERENV_", "SINGULARITYENV_")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("VENVOY_HOME", str(tmp_path / "venvoy-home"))
    set_hostname(monkeypatch, "workstation")


@pytest.fixture
def hostname(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    return lambda name: set_hostname(monkeypatch, name)


DEFAULT_BODY = """\
case "$1" in
  --version) echo "{name} version {version}" ;;
  version) echo "{version}" ;;
  *) exit 0 ;;
esac
"""


class FakeBin:
    """A PATH directory of fake runtime executables that log their calls."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "bin"
        self.dir.mkdir(parents=True)
        self.log = root / "calls.log"
        self.docker_socket = root / "docker.sock"
        self.docker_socket.touch()

    def add(self, name: str, version: str = "1.2.3", body: str | None = None) -> Path:
        """Write an executable ``name``; ``body`` replaces the default version printer."""
        path = self.dir / name
        text = f"#!/bin/sh\necho \"{name} $*\" >> '{self.log}'\n"
        text += body if body is not None else DEFAULT_BODY.format(name=name, version=version)
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return path

    def calls(self, name: str) -> int:
        """How many times the fake ``name`` was started."""
        if not self.log.exists():
            return 0
        return sum(1 for line in self.log.read_text().splitlines() if line.split(" ")[0] == name)

    def env(self, **extra: str) -> dict[str, str]:
        """An environment whose PATH holds only the fakes (and a live Docker socket)."""
        env = {
            "PATH": str(self.dir),
            "HOME": str(self.root),
            "USER": "tester",
            "VENVOY_HOME": str(self.root / "venvoy-home"),
            "DOCKER_HOST": f"unix://{self.docker_socket}",
        }
        env.update(extra)
        return env


@pytest.fixture
def fakebin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeBin:
    """Fake runtimes; the host facts that decide usability are pinned so results
    do not depend on the machine (run as root, user namespaces enabled)."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr("venvoy.runtime.charliecloud.user_namespaces_enabled", lambda: True)
    return FakeBin(tmp_path / "fake")
