"""Detection and `runtime-info` against the real programs, inside and outside Slurm."""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import USER_PYTHON, Target, Venvoy, unavailable

pytestmark = pytest.mark.integration

ROOT = Target("root", "", as_user=False)
USER = Target("user", "", as_user=True)
ALL = ("docker", "podman", "apptainer", "singularity", "charliecloud")


def info(venvoy: Venvoy, target: Target, *args: str, env: dict[str, str] | None = None,
         ) -> dict[str, object]:
    proc = venvoy.run(target, ["runtime-info", "--json", *args], extra_env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def test_all_five_runtimes_found_with_versions(venvoy: Venvoy) -> None:
    data = info(venvoy, ROOT)
    found = {r["name"]: r for r in data["runtimes"]}  # type: ignore[union-attr]
    for name in ALL:
        if name not in found:
            unavailable(f"{name} not installed")
        assert found[name]["usable"], found[name]
        assert found[name]["version"] and found[name]["version"][0].isdigit(), found[name]


def test_workstation_picks_docker_as_root(venvoy: Venvoy) -> None:
    data = info(venvoy, ROOT)
    assert data["is_hpc"] is False
    assert data["runtime"] == "docker"
    assert data["version"]


def test_slurm_job_variable_picks_apptainer(venvoy: Venvoy) -> None:
    data = info(venvoy, ROOT, env={"SLURM_JOB_ID": "4242"})
    assert data["is_hpc"] is True
    assert "SLURM_JOB_ID" in str(data["hpc_signal"])
    assert data["runtime"] == "apptainer"


def test_unprivileged_user_without_docker_group(venvoy: Venvoy) -> None:
    """Docker is on PATH but the user may not use its socket: reported and skipped."""
    data = info(venvoy, USER)
    found = {r["name"]: r for r in data["runtimes"]}  # type: ignore[union-attr]
    assert found["docker"]["usable"] is False
    assert "docker group" in found["docker"]["problem"]
    assert data["runtime"] == "podman" and data["rootless"] is True


def test_override_order(venvoy: Venvoy, tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('runtime = "charliecloud"\n')
    assert info(venvoy, ROOT, env={"VENVOY_CONFIG": str(cfg)})["runtime"] == "charliecloud"
    env = {"VENVOY_CONFIG": str(cfg), "VENVOY_RUNTIME": "podman"}
    assert info(venvoy, ROOT, env=env)["runtime"] == "podman"
    data = info(venvoy, ROOT, "--runtime", "singularity", env=env)
    assert data["runtime"] == "singularity" and data["reason"] == "requested by --runtime"


@pytest.mark.parametrize("name", ALL)
def test_missing_runtime_is_one_clear_line(venvoy: Venvoy, name: str, tmp_path: Path) -> None:
    # A PATH with python but none of the runtimes.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(sys.executable, bindir / "python3")
    proc = venvoy.run(ROOT, ["run", "--runtime", name, "--image", "x", "--", "true"],
                      extra_env={"PATH": str(bindir)})
    err = proc.stderr.decode()
    assert proc.returncode == 125
    assert err.count("\n") == 1 and err.startswith("venvoy: error:"), err
    assert "is not installed" in err and "--runtime" in err


def _slurm_ready() -> bool:
    if shutil.which("sbatch") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mix", "alloc"))


def test_inside_a_real_slurm_job(venvoy: Venvoy) -> None:
    """In a job started by the real sbatch, the unprivileged user gets Apptainer."""
    if not _slurm_ready():
        unavailable("no Slurm controller with an idle node: run scripts/provision.sh")
    out = venvoy.root / "slurm-out"
    out.mkdir()
    uid = pwd.getpwnam("venvoytest").pw_uid
    os.chown(out, uid, -1)
    # The job inherits the submitter's environment from sbatch (SLURM_* added
    # by Slurm itself); venvoy runs from the test user's copy of the package.
    script = out / "job.sh"
    script.write_text("#!/bin/sh\nexec " + shlex.join(
        ["env", f"PYTHONPATH={venvoy.src}", USER_PYTHON, "-m", "venvoy", "runtime-info", "--json"]
    ) + "\n")
    script.chmod(0o755)
    proc = subprocess.run(["runuser", "-u", "venvoytest", "--", "sbatch", "--parsable", "--wait",
                           f"--output={out}/job.out", f"--chdir={out}", str(script)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "job.out").read_text())
    assert data["is_hpc"] is True
    assert "SLURM_JOB_ID" in data["hpc_signal"]
    assert data["runtime"] == "apptainer"


def test_seed_snippets_run_as_written(venvoy: Venvoy) -> None:
    """The examples of the seed's HPC_COMPATIBILITY.md, verbatim."""
    snippet = (
        "from venvoy.container_manager import ContainerManager\n"
        "manager = ContainerManager()\n"
        "info = manager.get_runtime_info()\n"
        "print(f\"Using {info['runtime']} {info['version']}\")\n"
        "print(f\"HPC environment: {info['is_hpc']}\")\n"
        "from venvoy.container_manager import ContainerRuntime\n"
        "if manager._check_runtime_available(ContainerRuntime.APPTAINER):\n"
        "    print(\"Apptainer is available - perfect for HPC!\")\n"
        "print(ContainerManager()._is_hpc_environment())\n"
        "from venvoy import VenvoyEnvironment\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "VENVOY_"))}
    env["PYTHONPATH"] = str(venvoy.src)
    proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Using docker ") and lines[0].split()[2][0].isdigit()
    assert lines[1:] == ["HPC environment: False", "Apptainer is available - perfect for HPC!",
                         "False"]
    env["SLURM_JOB_ID"] = "7"
    proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.stdout.splitlines()[0].startswith("Using apptainer ")
    assert proc.stdout.splitlines()[1] == "HPC environment: True"


