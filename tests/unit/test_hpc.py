"""HPC detection: scheduler variables are proof, host names a strong hint."""

from __future__ import annotations

import pytest

from venvoy.runtime.hpc import HpcSignal, detect_hpc, hostname_is_hpc


@pytest.mark.parametrize(
    ("var", "scheduler"),
    [("SLURM_JOB_ID", "Slurm"), ("PBS_JOBID", "PBS"), ("LSB_JOBID", "LSF")],
)
def test_scheduler_variable_means_hpc_and_is_named(var: str, scheduler: str) -> None:
    sig = detect_hpc({var: "4242"}, hostname="laptop")
    assert sig.is_hpc is True
    assert var in sig.signal
    assert scheduler in sig.signal


def test_empty_scheduler_variable_is_not_a_signal() -> None:
    assert detect_hpc({"SLURM_JOB_ID": ""}, hostname="laptop").is_hpc is False


def test_sge_job_id_alone_is_not_hpc() -> None:
    # Plenty of unrelated tools set JOB_ID.
    assert detect_hpc({"JOB_ID": "17"}, hostname="laptop") == HpcSignal(False, None)


def test_sge_job_id_with_sge_root_is_hpc() -> None:
    sig = detect_hpc({"JOB_ID": "17", "SGE_ROOT": "/opt/sge"}, hostname="laptop")
    assert sig.is_hpc is True
    assert "JOB_ID" in sig.signal and "SGE_ROOT" in sig.signal


def test_sge_root_alone_is_not_hpc() -> None:
    assert detect_hpc({"SGE_ROOT": "/opt/sge"}, hostname="laptop").is_hpc is False


@pytest.mark.parametrize(
    "host", ["login01", "node-17", "compute-3.example.org", "hpc.example.org", "cluster1",
             "LOGIN2", "gpu_node12"],
)
def test_cluster_like_host_names_are_hpc(host: str) -> None:
    assert hostname_is_hpc(host) is True
    sig = detect_hpc({}, hostname=host)
    assert sig.is_hpc is True
    assert repr(host) in sig.signal


@pytest.mark.parametrize(
    "host", ["nodejs-dev", "mycluster", "laptop", "loginserver", "computer", "desktop.example.org",
             "vm", ""],
)
def test_other_host_names_are_not_hpc(host: str) -> None:
    assert hostname_is_hpc(host) is False
    assert detect_hpc({}, hostname=host) == HpcSignal(False, None)


def test_hostname_variable_alone_proves_nothing() -> None:
    # HOSTNAME is set by every shell; only the real host name counts.
    sig = detect_hpc({"HOSTNAME": "login01"}, hostname="laptop")
    assert sig.is_hpc is False
    assert sig.signal is None


def test_scheduler_beats_host_name_in_the_signal() -> None:
    sig = detect_hpc({"PBS_JOBID": "9.pbs"}, hostname="login01")
    assert "PBS_JOBID" in sig.signal


def test_default_host_name_comes_from_uname(hostname) -> None:
    hostname("node042")
    assert detect_hpc({}).is_hpc is True
    hostname("laptop")
    assert detect_hpc({}).is_hpc is False


def test_default_environ_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSB_JOBID", "1")
    assert "LSB_JOBID" in detect_hpc(hostname="laptop").signal


def test_signal_is_truthy_only_when_hpc() -> None:
    assert bool(HpcSignal(True, "x")) is True
    assert bool(HpcSignal(False, None)) is False
