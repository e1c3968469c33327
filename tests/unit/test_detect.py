"""Runtime detection with a PATH of fake executables: priority, overrides, problems,
runtime_info and its version cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from venvoy.core.errors import BadRequest, RuntimeNotFound, VenvoyError
from venvoy.runtime.detect import (
    PRIORITY_DESKTOP,
    PRIORITY_HPC,
    choose_runtime,
    find_runtimes,
    get_runtime,
    normalize_name,
    runtime_info,
)

ALL_FAKES = ("docker", "podman", "apptainer", "singularity", "ch-run", "shifter", "enroot")


def add_all(fakebin) -> None:
    for name in ALL_FAKES:
        fakebin.add(name)


def test_priority_orders_cover_every_runtime() -> None:
    assert PRIORITY_HPC[0] == "apptainer"
    assert PRIORITY_DESKTOP[0] == "docker"
    assert sorted(PRIORITY_HPC) == sorted(PRIORITY_DESKTOP)
    assert len(set(PRIORITY_HPC)) == 7


def test_workstation_prefers_docker(fakebin) -> None:
    add_all(fakebin)
    choice = choose_runtime(None, fakebin.env())
    assert choice.runtime.name == "docker"
    assert choice.runtime.path == str(fakebin.dir / "docker")
    assert "workstation" in choice.reason
    assert choice.hpc.is_hpc is False


def test_hpc_job_prefers_apptainer(fakebin) -> None:
    add_all(fakebin)
    choice = choose_runtime(None, fakebin.env(SLURM_JOB_ID="77"))
    assert choice.runtime.name == "apptainer"
    assert "HPC" in choice.reason
    assert "SLURM_JOB_ID" in choice.hpc.signal


def test_hpc_host_name_prefers_apptainer(fakebin, hostname) -> None:
    add_all(fakebin)
    hostname("login02.cluster.example.org")
    assert choose_runtime(None, fakebin.env()).runtime.name == "apptainer"


@pytest.mark.parametrize(("present", "hpc", "expected"), [
    (("singularity", "ch-run", "docker"), True, "singularity"),
    (("ch-run", "podman", "docker"), True, "charliecloud"),
    (("podman", "docker"), True, "podman"),
    (("podman", "apptainer"), False, "podman"),
    (("apptainer", "ch-run"), False, "apptainer"),
    (("shifter", "enroot"), True, "shifter"),
    (("enroot",), False, "enroot"),
])
def test_priority_falls_through(fakebin, present, hpc: bool, expected: str) -> None:
    for name in present:
        fakebin.add(name)
    env = fakebin.env(PBS_JOBID="1.pbs") if hpc else fakebin.env()
    assert choose_runtime(None, env).runtime.name == expected


def test_no_runtime_at_all(fakebin) -> None:
    with pytest.raises(RuntimeNotFound) as info:
        choose_runtime(None, fakebin.env())
    assert "no usable container runtime" in str(info.value)
    assert "\n" not in str(info.value)


def test_docker_without_daemon_is_skipped_and_explained(fakebin) -> None:
    fakebin.add("docker")
    fakebin.add("podman")
    env = fakebin.env(DOCKER_HOST="unix:///nonexistent/docker.sock")
    assert choose_runtime(None, env).runtime.name == "podman"
    docker = next(f for f in find_runtimes(env) if f.name == "docker")
    assert docker.usable is False
    assert "/nonexistent/docker.sock" in docker.problem
    assert "not running" in docker.problem


def test_only_unusable_runtimes_lists_why(fakebin) -> None:
    fakebin.add("docker")
    with pytest.raises(RuntimeNotFound) as info:
        choose_runtime(None, fakebin.env(DOCKER_HOST="unix:///nonexistent"))
    assert "docker: the Docker daemon is not running" in str(info.value)


def test_explicit_docker_without_daemon(fakebin) -> None:
    fakebin.add("docker")
    with pytest.raises(RuntimeNotFound, match="docker cannot be used"):
        get_runtime("docker", fakebin.env(DOCKER_HOST="unix:///nonexistent"))
    # check=False gives the adapter anyway (runtime-info uses it)
    rt = get_runtime("docker", fakebin.env(DOCKER_HOST="unix:///nonexistent"), check=False)
    assert rt.name == "docker"


def test_podman_docker_shim_is_reported_and_skipped(fakebin) -> None:
    fakebin.add("docker", body='exec podman "$@"\n')
    fakebin.add("podman")
    env = fakebin.env()
    docker = next(f for f in find_runtimes(env) if f.name == "docker")
    assert docker.usable is False
    assert "Podman's compatibility shim" in docker.problem
    assert choose_runtime(None, env).runtime.name == "podman"


def test_docker_symlink_to_podman_is_a_shim(fakebin) -> None:
    podman = fakebin.add("podman")
    (fakebin.dir / "docker").symlink_to(podman)
    docker = next(f for f in find_runtimes(fakebin.env()) if f.name == "docker")
    assert "shim" in docker.problem


# -- explicit choices ---------------------------------------------------------------------

@pytest.fixture
def config(tmp_path: Path):
    def write(text: str) -> str:
        path = tmp_path / "venvoy.toml"
        path.write_text(text)
        return str(path)
    return write


def test_override_order(fakebin, config) -> None:
    add_all(fakebin)
    cfg = config('runtime = "charliecloud"\n')
    env = fakebin.env(VENVOY_CONFIG=cfg, VENVOY_RUNTIME="podman")

    choice = choose_runtime("apptainer", env)
    assert (choice.runtime.name, choice.reason) == ("apptainer", "requested by --runtime")

    choice = choose_runtime(None, env)
    assert (choice.runtime.name, choice.reason) == ("podman", "requested by VENVOY_RUNTIME")

    del env["VENVOY_RUNTIME"]
    choice = choose_runtime(None, env)
    assert choice.runtime.name == "charliecloud"
    assert choice.reason == f"requested by the config file {cfg}"

    del env["VENVOY_CONFIG"]
    assert choose_runtime(None, env).runtime.name == "docker"  # detection


def test_config_file_under_venvoy_home(fakebin) -> None:
    fakebin.add("podman")
    fakebin.add("docker")
    env = fakebin.env()
    home = Path(env["VENVOY_HOME"])
    home.mkdir(parents=True)
    (home / "config.toml").write_text('runtime = "podman"\n')
    assert choose_runtime(None, env).runtime.name == "podman"


def test_config_file_without_runtime_key_means_detection(fakebin, config) -> None:
    fakebin.add("docker")
    fakebin.add("podman")
    env = fakebin.env(VENVOY_CONFIG=config("# nothing here\nother = 1\n"))
    assert choose_runtime(None, env).runtime.name == "docker"


def test_invalid_config_file(fakebin, config) -> None:
    fakebin.add("docker")
    env = fakebin.env(VENVOY_CONFIG=config("runtime = \n"))
    with pytest.raises(VenvoyError) as info:
        choose_runtime(None, env)
    assert "not valid TOML" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("alias", "name"), [("ch-run", "charliecloud"), ("CH", "charliecloud"),
                                             ("sif", "apptainer"), (" Docker ", "docker")])
def test_aliases(alias: str, name: str) -> None:
    assert normalize_name(alias) == name


@pytest.mark.parametrize("where", ["requested", "VENVOY_RUNTIME", "config"])
def test_unknown_runtime_name(fakebin, config, where: str) -> None:
    fakebin.add("docker")
    env = fakebin.env()
    requested = None
    if where == "requested":
        requested = "rocket"
    elif where == "VENVOY_RUNTIME":
        env["VENVOY_RUNTIME"] = "rocket"
    else:
        env["VENVOY_CONFIG"] = config('runtime = "rocket"\n')
    with pytest.raises(BadRequest) as info:
        choose_runtime(requested, env)
    assert "unknown runtime 'rocket'" in str(info.value)
    assert "apptainer" in str(info.value)  # lists the choices


def test_requested_runtime_not_on_path(fakebin) -> None:
    fakebin.add("docker")
    with pytest.raises(RuntimeNotFound) as info:
        choose_runtime("apptainer", fakebin.env())
    text = str(info.value)
    assert "\n" not in text
    assert "apptainer is not installed" in text
    assert "`apptainer`" in text


# -- runtime_info and the version cache ------------------------------------------------------

RUNTIME_KEYS = {"name", "path", "version", "rootless", "usable", "problem", "tested"}


def test_runtime_info_keys_and_values(fakebin) -> None:
    fakebin.add("docker", version="24.0.7")
    fakebin.add("apptainer", version="1.3.4")
    fakebin.add("shifter", version="18.03.1")
    info = runtime_info(None, fakebin.env())
    assert {"runtime", "version", "is_hpc", "hpc_signal", "reason", "runtimes", "path",
            "rootless", "error"} <= set(info)
    assert info["runtime"] == "docker"
    assert info["version"] == "24.0.7"
    assert info["path"] == str(fakebin.dir / "docker")
    assert info["is_hpc"] is False and info["hpc_signal"] is None
    assert info["error"] is None
    rows = {r["name"]: r for r in info["runtimes"]}
    assert set(rows) == {"docker", "apptainer", "shifter"}
    for row in rows.values():
        assert set(row) == RUNTIME_KEYS
        assert row["usable"] is True and row["problem"] is None
    assert rows["apptainer"]["version"] == "1.3.4"
    assert rows["apptainer"]["path"] == str(fakebin.dir / "apptainer")
    assert rows["shifter"]["tested"] is False
    assert rows["docker"]["tested"] is True


def test_runtime_info_on_hpc(fakebin) -> None:
    fakebin.add("docker")
    fakebin.add("apptainer", version="1.2.5")
    info = runtime_info(None, fakebin.env(SLURM_JOB_ID="5"))
    assert info["runtime"] == "apptainer"
    assert info["version"] == "1.2.5"
    assert info["is_hpc"] is True
    assert "SLURM_JOB_ID" in info["hpc_signal"]
    assert "HPC" in info["reason"]


def test_runtime_info_never_raises_for_missing_runtime(fakebin) -> None:
    fakebin.add("docker")
    info = runtime_info("apptainer", fakebin.env())
    assert info["runtime"] is None
    assert "apptainer is not installed" in info["error"]
    assert [r["name"] for r in info["runtimes"]] == ["docker"]


def test_runtime_info_unknown_runtime_is_an_error_entry(fakebin) -> None:
    info = runtime_info("rocket", fakebin.env())
    assert info["runtime"] is None
    assert "unknown runtime" in info["error"]


def test_runtime_info_reports_unusable_docker(fakebin) -> None:
    fakebin.add("docker")
    fakebin.add("podman", version="4.9.3")
    info = runtime_info(None, fakebin.env(DOCKER_HOST="unix:///nonexistent"))
    rows = {r["name"]: r for r in info["runtimes"]}
    assert rows["docker"]["usable"] is False
    assert "not running" in rows["docker"]["problem"]
    assert info["runtime"] == "podman"


def test_docker_version_falls_back_to_client_when_daemon_is_down(fakebin) -> None:
    fakebin.add("docker", body=(
        'case "$1" in\n'
        '  --version) echo "Docker version 25.0.3, build 4debf41" ;;\n'
        '  version) echo "Cannot connect to the Docker daemon" >&2; exit 1 ;;\n'
        "esac\n"))
    info = runtime_info(None, fakebin.env())
    assert info["runtimes"][0]["version"] == "25.0.3"


def test_failing_version_probe_gives_none(fakebin) -> None:
    fakebin.add("apptainer", body="exit 3\n")
    info = runtime_info(None, fakebin.env())
    assert info["runtime"] == "apptainer"
    assert info["version"] is None


def test_version_cache(fakebin) -> None:
    fakebin.add("apptainer", version="1.3.0")
    fakebin.add("podman", version="4.9.0")
    env = fakebin.env()

    first = runtime_info(None, env)
    assert {r["name"]: r["version"] for r in first["runtimes"]} == {"apptainer": "1.3.0",
                                                                    "podman": "4.9.0"}
    assert fakebin.calls("apptainer") == 1
    assert fakebin.calls("podman") == 1
    assert (Path(env["VENVOY_HOME"]) / "cache" / "runtime-versions.json").is_file()

    second = runtime_info(None, env)
    assert second["runtimes"] == first["runtimes"]
    assert fakebin.calls("apptainer") == 1  # answered from the cache
    assert fakebin.calls("podman") == 1

    # An upgrade (new size and mtime) invalidates that binary's entry only.
    path = fakebin.add("apptainer", version="1.4.10")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    third = runtime_info(None, env)
    assert {r["name"]: r["version"] for r in third["runtimes"]}["apptainer"] == "1.4.10"
    assert fakebin.calls("apptainer") == 2
    assert fakebin.calls("podman") == 1


def test_version_cache_is_per_venvoy_home(fakebin, tmp_path: Path) -> None:
    fakebin.add("podman")
    runtime_info(None, fakebin.env())
    runtime_info(None, fakebin.env(VENVOY_HOME=str(tmp_path / "other-home")))
    assert fakebin.calls("podman") == 2


def test_choosing_a_runtime_starts_nothing(fakebin) -> None:
    add_all(fakebin)
    choose_runtime(None, fakebin.env())
    choose_runtime(None, fakebin.env(SLURM_JOB_ID="1"))
    find_runtimes(fakebin.env())
    assert not fakebin.log.exists()


def test_empty_requested_runtime_is_refused_not_detected(fakebin) -> None:
    """`--runtime ''` is a wrong option: refused, never silently replaced by detection."""
    fakebin.add("docker")
    with pytest.raises(BadRequest) as info:
        choose_runtime("", fakebin.env())
    assert "unknown runtime ''" in str(info.value)
