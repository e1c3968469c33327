"""The seed's public API: ContainerManager, ContainerRuntime, VenvoyEnvironment."""

from __future__ import annotations

import inspect
import traceback
from pathlib import Path

import pytest

import venvoy
from venvoy.api.container_manager import ContainerManager, ContainerRuntime
from venvoy.core.errors import VenvoyError
from venvoy.runtime import RUNTIMES


def test_container_runtime_values() -> None:
    assert {r.name: r.value for r in ContainerRuntime} == {
        "DOCKER": "docker", "PODMAN": "podman", "APPTAINER": "apptainer",
        "SINGULARITY": "singularity", "CHARLIECLOUD": "charliecloud", "SHIFTER": "shifter",
        "ENROOT": "enroot",
    }
    assert {r.value for r in ContainerRuntime} == set(RUNTIMES)
    assert ContainerRuntime("apptainer") is ContainerRuntime.APPTAINER
    assert ContainerRuntime.DOCKER == "docker"  # a str enum, usable as a plain string


def test_constructor_signature() -> None:
    params = inspect.signature(ContainerManager).parameters
    assert list(params) == ["runtime", "environ"]
    assert params["runtime"].default is None and params["environ"].default is None


def test_get_runtime_info(fakebin) -> None:
    fakebin.add("docker", version="24.0.7")
    fakebin.add("apptainer", version="1.3.4")
    info = ContainerManager(environ=fakebin.env()).get_runtime_info()
    assert {"runtime", "version", "is_hpc", "hpc_signal", "reason", "runtimes"} <= set(info)
    assert (info["runtime"], info["version"], info["is_hpc"]) == ("docker", "24.0.7", False)
    assert {r["name"] for r in info["runtimes"]} == {"docker", "apptainer"}


def test_get_runtime_info_with_requested_enum(fakebin) -> None:
    fakebin.add("docker")
    fakebin.add("apptainer", version="1.3.4")
    info = ContainerManager(ContainerRuntime.APPTAINER, environ=fakebin.env()).get_runtime_info()
    assert info["runtime"] == "apptainer"
    assert info["reason"] == "requested by --runtime"


def test_get_runtime_info_never_raises(fakebin) -> None:
    info = ContainerManager(environ=fakebin.env()).get_runtime_info()
    assert info["runtime"] is None
    assert "no usable container runtime" in info["error"]
    assert info["runtimes"] == []


def test_check_runtime_available(fakebin) -> None:
    fakebin.add("apptainer")
    fakebin.add("docker")
    manager = ContainerManager(environ=fakebin.env(DOCKER_HOST="unix:///nonexistent"))
    assert manager._check_runtime_available(ContainerRuntime.APPTAINER) is True
    assert manager._check_runtime_available("apptainer") is True
    assert manager._check_runtime_available(ContainerRuntime.PODMAN) is False  # not on PATH
    assert manager._check_runtime_available(ContainerRuntime.DOCKER) is False  # no daemon
    assert manager._check_runtime_available("rocket") is False  # unknown name: False, no raise


def test_is_hpc_environment(fakebin, hostname) -> None:
    assert ContainerManager(environ={"SLURM_JOB_ID": "12"})._is_hpc_environment() is True
    assert ContainerManager(environ={})._is_hpc_environment() is False
    hostname("node-17")
    assert ContainerManager(environ={})._is_hpc_environment() is True


def test_is_hpc_environment_reads_os_environ_by_default(monkeypatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "3")
    assert ContainerManager()._is_hpc_environment() is True
    monkeypatch.delenv("SLURM_JOB_ID")
    assert ContainerManager()._is_hpc_environment() is False


def test_runtime_property(fakebin) -> None:
    fakebin.add("podman")
    fakebin.add("apptainer")
    assert ContainerManager(environ=fakebin.env()).runtime is ContainerRuntime.PODMAN
    on_hpc = ContainerManager(environ=fakebin.env(SLURM_JOB_ID="1"))
    assert on_hpc.runtime is ContainerRuntime.APPTAINER
    with pytest.raises(VenvoyError):
        ContainerManager("docker", environ=fakebin.env()).runtime  # noqa: B018


def test_run_returns_the_exit_status(fakebin, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "argv"
    fakebin.add("docker", body=f"printf '%s\\0' \"$@\" > '{out}'\nexit 3\n")
    monkeypatch.chdir(tmp_path)
    manager = ContainerManager(ContainerRuntime.DOCKER, environ=fakebin.env())
    code = manager.run("img:1", ["python3", "-c", "x"], env={"A": "b c"}, workdir="/opt")
    assert code == 3
    argv = out.read_text().split("\0")[:-1]
    assert argv[-4:] == ["img:1", "python3", "-c", "x"]
    assert "A=b c" in argv
    assert argv[argv.index("-w") + 1] == "/opt"
    assert "-t" not in argv  # library runs never ask for a terminal


# -- VenvoyEnvironment -----------------------------------------------------------------------

def test_venvoy_environment_import() -> None:
    from venvoy import VenvoyEnvironment

    env = VenvoyEnvironment("demo", python_version="3.12", runtime="podman")
    assert (env.name, env.python_version, env.runtime) == ("demo", "3.12", "podman")
    assert "VenvoyEnvironment" in venvoy.__all__


def test_unknown_package_attribute() -> None:
    with pytest.raises(AttributeError):
        venvoy.NoSuchThing  # noqa: B018


def test_venvoy_environment_export_of_unknown_env_is_clear() -> None:
    from venvoy import VenvoyEnvironment

    with pytest.raises(VenvoyError) as info:
        VenvoyEnvironment("demo").export_archive("x.tar")
    assert "no environment named 'demo'" in str(info.value)
    assert "\n" not in str(info.value)


def test_venvoy_environment_import_of_missing_file_is_clear(tmp_path) -> None:
    from venvoy import VenvoyEnvironment

    with pytest.raises(VenvoyError) as info:
        VenvoyEnvironment("demo").import_archive(str(tmp_path / "nope.tar.gz"))
    assert "does not exist" in str(info.value)


def test_venvoy_environment_run_of_unknown_env_is_clear() -> None:
    from venvoy import VenvoyEnvironment

    with pytest.raises(VenvoyError) as info:
        VenvoyEnvironment("never-built").run("python3 -c pass")
    assert "no environment named 'never-built'" in str(info.value)
    assert "venvoy init never-built" in info.value.hint


def test_venvoy_environment_rejects_bad_names() -> None:
    from venvoy import VenvoyEnvironment

    with pytest.raises(VenvoyError, match="invalid environment name"):
        VenvoyEnvironment("../escape")


def test_venvoy_environment_errors_do_not_accumulate_tracebacks() -> None:
    from venvoy import VenvoyEnvironment

    lengths = []
    for _ in range(3):
        try:
            VenvoyEnvironment("demo").export_archive("x.tar")
        except VenvoyError as exc:
            lengths.append(len(traceback.extract_tb(exc.__traceback__)))
    assert lengths[0] == lengths[1] == lengths[2]


def test_errors_module_exit_code_and_str() -> None:
    from venvoy.core.errors import EXIT_VENVOY_ERROR, BadRequest

    err = BadRequest("bad thing", "do this")
    assert str(err) == "bad thing; do this"
    assert err.exit_code == EXIT_VENVOY_ERROR == 125
    assert str(VenvoyError("only message")) == "only message"
    assert isinstance(err, VenvoyError)
