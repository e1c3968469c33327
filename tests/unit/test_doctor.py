"""`venvoy doctor` (venvoy.api.doctor, venvoy.cli.doctor) against fake hosts, and
the GPU allocation rules of the Docker/Podman adapters (what argv they build).

The host is faked with a directory tree standing in for /proc, /dev, /etc and
/sys (api.doctor.Host), so every failure mode is a file, not a mock.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from venvoy.api import doctor as dr
from venvoy.api.doctor import FAIL, NA, OK, STATUSES, WARN, Check, Host, Report
from venvoy.cli.doctor import add_parser, cmd_doctor, format_report
from venvoy.core.errors import BadRequest, VenvoyError
from venvoy.runtime.apptainer import Apptainer
from venvoy.runtime.charliecloud import Charliecloud
from venvoy.runtime.docker import Docker
from venvoy.runtime.oci_cli import allocated_gpus
from venvoy.runtime.podman import Podman
from venvoy.runtime.request import Gpu, RunRequest

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
80 27 0:50 / /home rw,relatime shared:5 - nfs4 srv:/home rw,vers=4.2
81 27 0:51 / /scratch rw - lustre 10.0.0.1@tcp:/fs rw
82 27 0:52 / /mnt/with\\040space rw - tmpfs tmpfs rw
"""


def fake_host(tmp_path: Path, *, max_userns: str = "15000", fuse: str | None = "chr",
              subuid: str = "", devices: tuple[str, ...] = (), nvidia_version: str | None = None,
              config: str | None = None) -> Host:
    """A directory tree shaped like /proc, /dev, /etc, /sys, /boot."""
    root = tmp_path / "host"
    proc, dev, etc, sysd, boot = (root / n for n in ("proc", "dev", "etc", "sys", "boot"))
    for d in (proc / "sys" / "user", proc / "self", proc / "driver" / "nvidia", dev, etc, sysd, boot):
        d.mkdir(parents=True, exist_ok=True)
    (proc / "sys" / "user" / "max_user_namespaces").write_text(max_userns + "\n")
    (proc / "self" / "mountinfo").write_text(MOUNTINFO)
    (proc / "filesystems").write_text("nodev\tproc\n\tsquashfs\nnodev\tfuse\n")
    if config is not None:
        with gzip.open(proc / "config.gz", "wt") as fh:
            fh.write(config)
    if nvidia_version is not None:
        (proc / "driver" / "nvidia" / "version").write_text(nvidia_version)
    if fuse == "chr":
        os.symlink("/dev/null", dev / "fuse")  # a character device anyone may open
    elif fuse == "file":
        (dev / "fuse").write_text("")
    for name in devices:
        os.symlink("/dev/null", dev / name)
    (etc / "subuid").write_text(subuid)
    (etc / "subgid").write_text(subuid)
    return Host(proc=str(proc), dev=str(dev), etc=str(etc), sys=str(sysd), boot=str(boot))


# -- small parsers --------------------------------------------------------------------

def test_mount_of_takes_the_longest_prefix_and_unescapes() -> None:
    assert dr.mount_of("/home/alice/x", MOUNTINFO) == ("/home", "nfs4")
    assert dr.mount_of("/scratch", MOUNTINFO) == ("/scratch", "lustre")
    assert dr.mount_of("/homework", MOUNTINFO) == ("/", "ext4")  # not under /home
    assert dr.mount_of("/mnt/with space/f", MOUNTINFO) == ("/mnt/with space", "tmpfs")


def test_shared_file_systems() -> None:
    assert dr.is_shared("nfs4") and dr.is_shared("lustre") and dr.is_shared("gpfs")
    assert dr.is_shared("beegfs") and dr.is_shared("cifs")
    assert not dr.is_shared("ext4") and not dr.is_shared("tmpfs") and not dr.is_shared("xfs")


def test_parse_mpi_list_and_max_array() -> None:
    text = ("MPI plugin types are...\n\tpmix\n\tnone\n\tcray_shasta\n\tpmi2\n"
            "specific pmix plugin versions available: pmix_v4\n")
    assert dr.parse_mpi_list(text) == ["pmix", "none", "cray_shasta", "pmi2"]
    old = "srun: MPI types are...\nsrun: none\nsrun: openmpi\nsrun: pmi2\n"
    assert dr.parse_mpi_list(old) == ["none", "openmpi", "pmi2"]
    assert dr.parse_max_array("AccountingStorageType = x\nMaxArraySize            = 1001\n") == 1001
    assert dr.parse_max_array("nothing here") is None


def test_gpu_probe_is_valid_python() -> None:
    compile(dr.GPU_PROBE, "<probe>", "exec")


# -- host checks ------------------------------------------------------------------------

def test_user_namespaces_off_is_one_fail(tmp_path: Path) -> None:
    host = fake_host(tmp_path, max_userns="0")
    c = dr.check_user_namespaces(host, (1, "unshare: unshare failed: No space left on device"))
    assert c.status == FAIL
    assert "max_user_namespaces is 0" in c.evidence and "sysctl" in c.action


def test_user_namespaces_probe_failure_alone_fails(tmp_path: Path) -> None:
    c = dr.check_user_namespaces(fake_host(tmp_path),
                                 (1, "unshare: unshare failed: Operation not permitted"))
    assert c.status == FAIL and "Operation not permitted" in c.evidence


def test_user_namespaces_ok(tmp_path: Path) -> None:
    c = dr.check_user_namespaces(fake_host(tmp_path), (0, ""))
    assert c.status == OK and "creating one works" in c.evidence


def test_user_namespaces_inconclusive_probe_is_not_a_failure(tmp_path: Path) -> None:
    c = dr.check_user_namespaces(fake_host(tmp_path), (1, "unshare: failed to execute x: No such file"))
    assert c.status == OK and "said nothing clear" in c.evidence


def test_subids_missing_fails_when_rootless_podman(tmp_path: Path) -> None:
    host = fake_host(tmp_path, subuid="other:100000:65536\n")
    c = dr.check_subids(host, "alice", 1234, 1234, needed=True)
    assert c.status == FAIL
    assert "user alice has no range in /etc/subuid and /etc/subgid" in c.evidence
    assert "usermod --add-subuids" in c.action
    assert dr.check_subids(host, "alice", 1234, 1234, needed=False).status == WARN


def test_subids_present_by_name_or_uid(tmp_path: Path) -> None:
    host = fake_host(tmp_path, subuid="1234:200000:65536\n")
    c = dr.check_subids(host, "alice", 1234, 1234, needed=True)
    assert c.status == OK and "65536 subuids" in c.evidence
    assert dr.check_subids(host, "root", 0, 0, needed=True).status == NA


@pytest.mark.parametrize(("fuse", "why"), [(None, "does not exist"),
                                           ("file", "not a character device")])
def test_fuse_unusable_explains_extraction(tmp_path: Path, fuse: str | None, why: str) -> None:
    host = fake_host(tmp_path, fuse=fuse)
    assert why in (dr.fuse_problem(host) or "")
    c = dr.check_fuse(host, "/usr/bin/squashfuse_ll", True, "/scratch/tmp", 3 << 30)
    assert c.status == WARN
    assert "every run extracts the SIF into APPTAINER_TMPDIR (/scratch/tmp), which has 3.0 GB free" \
        in c.evidence
    assert "APPTAINER_TMPDIR" in c.action


def test_fuse_without_squashfuse(tmp_path: Path) -> None:
    c = dr.check_fuse(fake_host(tmp_path), None, True, "/tmp", None)
    assert c.status == WARN and "no squashfuse" in c.evidence and "install squashfuse" in c.action


def test_fuse_ok(tmp_path: Path) -> None:
    c = dr.check_fuse(fake_host(tmp_path), "/usr/bin/squashfuse_ll", True, "/tmp", 1)
    assert c.status == OK and "mounted, not extracted" in c.evidence


def test_sif_compression_from_libraries_and_kernel_config(tmp_path: Path) -> None:
    fuse_bin = tmp_path / "squashfuse_ll"
    fuse_bin.write_bytes(b"\x7fELF...libz.so.1\x00libzstd.so.1\x00")
    host = fake_host(tmp_path, config="CONFIG_SQUASHFS=y\nCONFIG_SQUASHFS_XZ=y\n")
    c = dr.check_sif_compression(host, str(fuse_bin), True)
    assert c.status == OK
    assert "squashfuse decodes gzip, zstd" in c.evidence and "kernel squashfs decodes xz" in c.evidence


def test_sif_compression_says_what_it_cannot_tell(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(os, "uname", lambda: SimpleNamespace(nodename="w", release="9.9-none"))
    fuse_bin = tmp_path / "squashfuse_ll"
    fuse_bin.write_bytes(b"\x7fELF static")
    c = dr.check_sif_compression(fake_host(tmp_path), str(fuse_bin), True)
    assert c.status == WARN
    assert "could not tell which compressors squashfuse decodes" in c.evidence
    assert "its compressors (no /proc/config.gz or /boot/config)" in c.evidence


def test_full_temporary_space_fails(tmp_path: Path, monkeypatch) -> None:
    full = SimpleNamespace(f_bavail=0, f_frsize=4096, f_flag=0)
    monkeypatch.setattr(os, "statvfs", lambda p: full)
    c = dr.check_tmp("temporary space", str(tmp_path), "VENVOY_TMPDIR", MOUNTINFO, "VENVOY_TMPDIR")
    assert c.status == FAIL
    assert f"{tmp_path} (from VENVOY_TMPDIR; ext4, node-local) has 0 MB free" == c.evidence
    assert c.action.startswith("set VENVOY_TMPDIR to a directory with at least 1.0 GB free")


def test_temporary_space_on_lustre_warns(tmp_path: Path, monkeypatch) -> None:
    roomy = SimpleNamespace(f_bavail=1 << 30, f_frsize=4096, f_flag=0)
    monkeypatch.setattr(os, "statvfs", lambda p: roomy)
    monkeypatch.setattr(dr, "existing_parent", lambda p: "/scratch/u")
    monkeypatch.setattr(dr, "not_a_directory", lambda p: None)
    monkeypatch.setattr(os, "access", lambda p, m: True)
    c = dr.check_tmp("temporary space", "/scratch/u/t", "VENVOY_TMPDIR", MOUNTINFO, "VENVOY_TMPDIR")
    assert c.status == WARN and "lustre, shared" in c.evidence and "node-local" in c.action


def test_store_not_created_yet_is_described_not_created(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "store"
    c = dr.check_store(str(root), MOUNTINFO)
    assert c.status == OK and "not created yet" in c.evidence and "node-local" in c.evidence
    assert not (tmp_path / "a").exists()


# -- GPU and Slurm -------------------------------------------------------------------------

def test_no_gpu_is_one_not_applicable_line(tmp_path: Path) -> None:
    checks = dr.check_gpu(fake_host(tmp_path), {"PATH": ""}, [Podman("/usr/bin/podman", {})])
    assert [c.status for c in checks] == [NA]
    assert "no NVIDIA" in checks[0].evidence


def test_nvidia_host_checks(tmp_path: Path, monkeypatch) -> None:
    host = fake_host(tmp_path, devices=("nvidia0", "nvidiactl"),
                     nvidia_version="NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15\n")
    monkeypatch.setattr("venvoy.runtime.podman.CDI_DIRS", (str(tmp_path / "no-cdi"),))
    monkeypatch.setattr("venvoy.runtime.base.require_gpu_devices", lambda gpu: None)
    env = {"PATH": "", "CUDA_VISIBLE_DEVICES": "1", "SLURM_JOB_GPUS": "3"}
    adapters = [Podman("/usr/bin/podman", env), Apptainer("/usr/bin/apptainer", env),
                Charliecloud("/usr/bin/ch-run", env)]
    checks = {c.name: c for c in dr.check_gpu(host, env, adapters)}
    assert checks["devices"].status == OK and "nvidia0" in checks["devices"].evidence
    assert "550.54.15" in checks["NVIDIA driver"].evidence
    assert "CUDA_VISIBLE_DEVICES=1" in checks["allocation"].evidence
    assert "SLURM_JOB_GPUS=3" in checks["allocation"].evidence
    podman = checks["podman --gpu nvidia"]
    assert podman.status == FAIL and "nvidia-ctk cdi generate" in podman.action
    apptainer = checks["apptainer --gpu nvidia"]
    assert apptainer.status == OK and "--nv" in apptainer.evidence
    charlie = checks["charliecloud --gpu nvidia"]
    assert charlie.status == WARN and "no ch-fromhost on PATH" in charlie.evidence


def test_nvidia_devices_without_driver_fail(tmp_path: Path) -> None:
    checks = {c.name: c for c in dr.check_gpu(fake_host(tmp_path, devices=("nvidiactl",)),
                                              {"PATH": "", "SLURM_JOB_ID": "7"}, [])}
    assert checks["NVIDIA driver"].status == FAIL
    assert checks["allocation"].status == WARN and "every GPU" in checks["allocation"].evidence


def test_no_slurm_on_path_is_one_line(tmp_path: Path) -> None:
    checks = dr.check_slurm({"PATH": str(tmp_path)}, {}, "/store")
    assert len(checks) == 1 and checks[0].status == NA
    assert "no sbatch or srun on PATH" in checks[0].evidence


# -- the whole report ---------------------------------------------------------------------

def test_doctor_on_a_bare_host(tmp_path: Path) -> None:
    """No runtime, no Slurm, no GPU: the report still says everything, quickly."""
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {"PATH": str(empty), "HOME": str(tmp_path), "VENVOY_HOME": str(tmp_path / "store")}
    report = dr.doctor(environ=env, host=fake_host(tmp_path))
    assert {c.status for c in report.checks} <= set(STATUSES)
    by_name = {c.name: c for c in report.checks}
    assert by_name["runtimes"].status == FAIL and "no container runtime" in by_name["runtimes"].evidence
    assert by_name["Slurm"].status == NA and by_name["GPU"].status == NA
    assert not report.ok and dr.exit_status(report) == 1
    data = json.loads(json.dumps(report.as_dict()))
    assert data["counts"][FAIL] >= 1 and data["seconds"] >= 0
    assert not (tmp_path / "store").exists()  # the doctor looks, it does not create


def test_doctor_with_fake_runtime(tmp_path: Path, fakebin) -> None:
    fakebin.add("apptainer", version="1.4.5")
    report = dr.doctor(environ=fakebin.env(), host=fake_host(tmp_path), runtime="apptainer")
    by_name = {c.name: c for c in report.checks}
    assert by_name["apptainer"].status == OK and "1.4.5" in by_name["apptainer"].evidence
    assert "FUSE and squashfuse" in by_name and "APPTAINER_TMPDIR" in by_name
    assert "docker" not in by_name  # --runtime: only that one


def test_doctor_unknown_runtime_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="unknown runtime 'nope'"):
        dr.doctor(runtime="nope", environ={"PATH": ""}, host=fake_host(tmp_path))


def test_doctor_missing_environment(tmp_path: Path) -> None:
    env = {"PATH": "", "HOME": str(tmp_path), "VENVOY_HOME": str(tmp_path / "store")}
    report = dr.doctor("ghost", environ=env, host=fake_host(tmp_path))
    record = next(c for c in report.checks if c.area == "env ghost")
    assert record.status == FAIL and "no environment named 'ghost'" in record.evidence


def test_doctor_damaged_environment(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "envs" / "bad").mkdir(parents=True)
    (store / "envs" / "bad" / "env.json").write_text("{not json")
    env = {"PATH": "", "HOME": str(tmp_path), "VENVOY_HOME": str(store)}
    report = dr.doctor("bad", environ=env, host=fake_host(tmp_path))
    record = next(c for c in report.checks if c.area == "env bad")
    assert record.status == FAIL and "damaged" in record.evidence and "--force" in record.action


def test_format_one_line_per_check() -> None:
    report = Report([Check("host", "a", OK, "fine"), Check("host", "b", FAIL, "broken", "fix it"),
                     Check("gpu", "GPU", NA, "none")], seconds=0.25)
    text = format_report(report)
    lines = text.splitlines()
    assert lines[0] == "host:"
    assert any(line.strip().startswith("FAIL") and line.endswith("broken -> fix it") for line in lines)
    assert lines[-1] == "venvoy doctor: something fails (1 fail, 0 warn, 1 ok, 1 n/a) in 0.25 s"


def test_cli_verify_needs_a_name() -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(BadRequest, match="--verify needs an environment NAME"):
        cmd_doctor(parser.parse_args(["doctor", "--verify"]))


def test_cli_json(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    code = cmd_doctor(parser.parse_args(["doctor", "--json"]))
    data = json.loads(capsys.readouterr().out)
    assert code == (0 if data["ok"] else 1)
    assert all(set(c) == {"area", "name", "status", "evidence", "action"} for c in data["checks"])


# -- GPU allocation in Docker and Podman ----------------------------------------------------

def gpu_request(tmp_path: Path, env: dict[str, str]) -> RunRequest:
    return RunRequest(image="img:1", argv=("nvidia-smi",), env=tuple(env.items()), gpu=Gpu.NVIDIA,
                      tty=False, uid=0, gid=0)


@pytest.fixture
def nvidia_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Driver devices, a CDI spec and the toolkit, as far as the adapters look."""
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists",
                        lambda p: os.fspath(p) in ("/dev/nvidiactl",) or (
                            not os.fspath(p).startswith("/dev/") and real_exists(p)))
    cdi = tmp_path / "cdi"
    cdi.mkdir()
    (cdi / "nvidia.yaml").write_text("cdiVersion: 0.5.0\n")
    monkeypatch.setattr("venvoy.runtime.podman.CDI_DIRS", (str(cdi),))
    monkeypatch.setattr("venvoy.runtime.docker.which", lambda name, path=None: f"/usr/bin/{name}")


@pytest.mark.parametrize(("env", "want"), [
    ({}, None),
    ({"CUDA_VISIBLE_DEVICES": "1,3"}, ["1", "3"]),
    ({"NVIDIA_VISIBLE_DEVICES": "all", "CUDA_VISIBLE_DEVICES": "2"}, None),
    ({"CUDA_VISIBLE_DEVICES": "0", "SLURM_JOB_GPUS": "3"}, ["3"]),
    ({"SLURM_STEP_GPUS": "5,6", "SLURM_JOB_GPUS": "4,5,6"}, ["5", "6"]),
    ({"CUDA_VISIBLE_DEVICES": "GPU-8e1f-22aa, MIG-1a2b"}, ["GPU-8e1f-22aa", "MIG-1a2b"]),
    ({"NVIDIA_VISIBLE_DEVICES": "0:1,2"}, ["0:1", "2"]),
    ({"CUDA_VISIBLE_DEVICES": "0,0, 1,0"}, ["0", "1"]),
])
def test_allocated_gpus(env: dict[str, str], want: list[str] | None) -> None:
    assert allocated_gpus(env) == want


@pytest.mark.parametrize("value", ["", "NoDevFiles", "none", "-1"])
def test_allocation_of_no_gpu_is_one_error(value: str) -> None:
    with pytest.raises(BadRequest, match="gives this job no GPU"):
        allocated_gpus({"CUDA_VISIBLE_DEVICES": value})


@pytest.mark.parametrize("value", ["1;rm", "0,,1", "$(id)", "1 2", "GPU-x y", "1:", ":1", "1:2:3",
                                   "\uff11"])
def test_allocation_garbage_is_refused(value: str) -> None:
    with pytest.raises(BadRequest, match="not a list of GPU indices or UUIDs"):
        allocated_gpus({"CUDA_VISIBLE_DEVICES": value})


def test_podman_gets_only_the_allocated_gpus(tmp_path: Path, nvidia_host) -> None:
    host = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "1,3"}
    argv = Podman("/usr/bin/podman", host).invocation(gpu_request(tmp_path, host)).argv
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "--device"]
    assert devices == ["nvidia.com/gpu=1", "nvidia.com/gpu=3"]
    assert "nvidia.com/gpu=all" not in argv
    # the container has two GPUs, numbered 0 and 1: the variable follows
    assert "CUDA_VISIBLE_DEVICES=0,1" in argv and "CUDA_VISIBLE_DEVICES=1,3" not in argv


def test_podman_all_gpus_without_allocation(tmp_path: Path, nvidia_host) -> None:
    host = {"PATH": "/usr/bin"}
    argv = Podman("/usr/bin/podman", host).invocation(gpu_request(tmp_path, {})).argv
    assert argv[argv.index("--device") + 1] == "nvidia.com/gpu=all"


def test_docker_gets_only_the_allocated_gpus(tmp_path: Path, nvidia_host) -> None:
    host = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "1,3", "ROCR_VISIBLE_DEVICES": "0"}
    argv = Docker("/usr/bin/docker", host).invocation(gpu_request(tmp_path, host)).argv
    assert argv[argv.index("--gpus") + 1] == '"device=1,3"'
    assert "CUDA_VISIBLE_DEVICES=0,1" in argv and "ROCR_VISIBLE_DEVICES=0" in argv


def test_a_value_the_user_set_is_kept(tmp_path: Path, nvidia_host) -> None:
    host = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "1,3"}
    argv = Podman("/usr/bin/podman", host).invocation(
        gpu_request(tmp_path, {"CUDA_VISIBLE_DEVICES": "1"})).argv
    assert "CUDA_VISIBLE_DEVICES=1" in argv  # --env CUDA_VISIBLE_DEVICES=1: the user's choice


def test_no_gpu_allocation_refused_before_running(tmp_path: Path, nvidia_host) -> None:
    host = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "NoDevFiles"}
    with pytest.raises(BadRequest, match="CUDA_VISIBLE_DEVICES='NoDevFiles' gives this job no GPU"):
        Docker("/usr/bin/docker", host).invocation(gpu_request(tmp_path, host))


def test_one_unusable_runtime_among_usable_ones_warns() -> None:
    found = [SimpleNamespace(name="docker", path="/d", usable=False, problem="no socket",
                             rootless=False, tested=True),
             SimpleNamespace(name="podman", path="/p", usable=True, problem=None,
                             rootless=True, tested=True)]
    by_name = {c.name: c for c in dr.check_runtimes(found, {"podman": "4.3.1"}, None)}
    assert by_name["docker"].status == WARN and "no socket" in by_name["docker"].evidence
    assert by_name["podman"].status == OK
    assert {c.name: c for c in dr.check_runtimes(found, {}, "docker")}["docker"].status == FAIL
    assert dr.check_runtimes(found[:1], {}, None)[0].status == FAIL  # none usable


def test_store_or_tmp_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    c = dr.check_store(str(f / "sub"), MOUNTINFO)
    assert c.status == FAIL and f"{f} is not a directory" in c.evidence
    c = dr.check_tmp("temporary space", str(f), "VENVOY_TMPDIR", MOUNTINFO, "VENVOY_TMPDIR")
    assert c.status == FAIL and "is not a directory" in c.evidence and "VENVOY_TMPDIR" in c.action


def test_format_escapes_control_characters() -> None:
    report = Report([Check("store", "store", FAIL, "/tmp/x\n  ok    forged line\x1b[2J", "fix")])
    lines = format_report(report).splitlines()
    assert len(lines) == 3  # area, the check, the summary: no forged line
    assert "\\n" in lines[1] and "\\x1b" in lines[1]


def test_cuda_visible_devices_counting_within_the_allocation_is_kept(tmp_path: Path,
                                                                     nvidia_host) -> None:
    """Under Slurm's device cgroups CUDA_VISIBLE_DEVICES=0,1 names the job's GPUs 2 and 3."""
    host = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "0,1", "SLURM_JOB_GPUS": "2,3"}
    argv = Podman("/usr/bin/podman", host).invocation(gpu_request(tmp_path, host)).argv
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--device"] == [
        "nvidia.com/gpu=2", "nvidia.com/gpu=3"]
    assert "CUDA_VISIBLE_DEVICES=0,1" in argv
    host = {"PATH": "/usr/bin", "NVIDIA_VISIBLE_DEVICES": "1,3", "CUDA_VISIBLE_DEVICES": "1"}
    argv = Docker("/usr/bin/docker", host).invocation(gpu_request(tmp_path, host)).argv
    assert argv[argv.index("--gpus") + 1] == '"device=1,3"'
    assert "CUDA_VISIBLE_DEVICES=1" in argv  # the second of the two: GPU 3, as on the host


def test_choice_line_reports_a_broken_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text("runtime = [unclosed\n")
    c = dr.check_choice(None, {"PATH": "", "VENVOY_CONFIG": str(cfg)})
    assert c.status == FAIL and "is not valid TOML" in c.evidence


def test_choice_line_names_the_runtime(fakebin) -> None:
    fakebin.add("podman")
    c = dr.check_choice(None, fakebin.env())
    assert c.status == OK and c.evidence.startswith("podman: first usable runtime")


# -- the GPU probe, against a fake driver library -----------------------------------------

FAKE_LIBCUDA = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
static int inited = 0;
int cuInit(unsigned f) { inited = 1; return 0; }
int cuGetErrorString(int rc, const char **s) { *s = "CUDA_ERROR_FAKE"; return 0; }
int cuDriverGetVersion(int *v) { *v = 12040; return 0; }
int cuDeviceGetCount(int *n) { const char *e = getenv("FAKE_GPUS"); *n = e ? atoi(e) : 2; return 0; }
int cuDeviceGet(int *d, int i) { *d = i; return 0; }
int cuDeviceGetName(char *name, int len, int d) {
    strncpy(name, d == 0 ? "Fake H200" : "Fake H100", len); return inited ? 0 : 3; }
int cuCtxCreate_v2(void **ctx, unsigned f, int d) { *ctx = malloc(1); return 0; }
int cuCtxDestroy_v2(void *ctx) { free(ctx); return 0; }
int cuMemGetInfo_v2(size_t *free_, size_t *total) {
    *free_ = (size_t)100 << 20; *total = (size_t)141 << 30; return 0; }
int cuMemAlloc_v2(uint64_t *p, size_t n) { *p = (uint64_t)(uintptr_t)malloc(n); return 0; }
int cuMemsetD32_v2(uint64_t p, unsigned v, size_t n) {
    for (size_t i = 0; i < n; i++) ((unsigned *)(uintptr_t)p)[i] = v; return 0; }
int cuMemcpyDtoH_v2(void *dst, uint64_t src, size_t n) { memcpy(dst, (void *)(uintptr_t)src, n); return 0; }
int cuMemFree_v2(uint64_t p) { free((void *)(uintptr_t)p); return 0; }
"""


@pytest.fixture
def fake_libcuda(tmp_path: Path) -> Path:
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a fake libcuda.so.1")
    src = tmp_path / "fake.c"
    src.write_text(FAKE_LIBCUDA)
    lib = tmp_path / "lib"
    lib.mkdir()
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib / "libcuda.so.1"), str(src)], check=True)
    return lib


def run_probe_script(lib: Path | None, **env: str) -> tuple[int, dict[str, object]]:
    import subprocess
    import sys

    full = {"PATH": os.environ.get("PATH", ""), **env}
    if lib is not None:
        full["LD_LIBRARY_PATH"] = str(lib)
    proc = subprocess.run([sys.executable, "-I", "-c", dr.GPU_PROBE], capture_output=True, text=True,
                          env=full)
    return proc.returncode, json.loads(proc.stdout)


def test_gpu_probe_names_devices_and_computes(fake_libcuda: Path) -> None:
    code, out = run_probe_script(fake_libcuda, CUDA_VISIBLE_DEVICES="0,1")
    assert code == 0, out
    assert out["driver_cuda_version"] == "12.4"
    assert out["cuda_visible_devices"] == "0,1"
    devices = out["devices"]
    assert isinstance(devices, list)
    assert [d["name"] for d in devices] == ["Fake H200", "Fake H100"]
    assert devices[0]["total_mib"] == 141 << 10 and devices[0]["free_mib"] == 100
    assert devices[0]["computation"] == "memset 1024 x 42 on the device, sum read back = 43008"


def test_gpu_probe_without_devices_or_driver(fake_libcuda: Path) -> None:
    code, out = run_probe_script(fake_libcuda, FAKE_GPUS="0")
    assert code == 4 and out["devices"] == []
    code, out = run_probe_script(None)
    assert code == 3 and "libcuda.so.1 (the NVIDIA driver library) cannot be loaded" in str(out["error"])


class ProbeRuntime:
    """Stands in for an adapter: runs the probe on the host Python."""

    name = "fake"

    def __init__(self, lib: Path | None) -> None:
        self.lib = lib

    def invocation(self, req: RunRequest) -> SimpleNamespace:
        import sys

        env = {"PATH": os.environ.get("PATH", ""), **dict(req.env)}
        if self.lib is not None:
            env["LD_LIBRARY_PATH"] = str(self.lib)
        return SimpleNamespace(argv=[sys.executable, *req.argv[1:]], env=env)


def test_gpu_probe_check(fake_libcuda: Path) -> None:
    ok = dr.gpu_probe(ProbeRuntime(fake_libcuda), "img", {"CUDA_VISIBLE_DEVICES": "0,1"})
    assert ok.status == OK
    assert "the container sees 0: Fake H200; 1: Fake H100 (CUDA_VISIBLE_DEVICES=" in ok.evidence
    assert "sum read back = 43008" in ok.evidence
    bad = dr.gpu_probe(ProbeRuntime(None), "img", {})
    assert bad.status == FAIL and "cannot be loaded" in bad.evidence


def test_unknown_file_system_is_not_called_node_local(tmp_path: Path) -> None:
    c = dr.check_tmp("temporary space", str(tmp_path), "VENVOY_TMPDIR", "", "VENVOY_TMPDIR")
    assert "file system unknown" in c.evidence and "node-local" not in c.evidence


# -- the allocation variables reach every container (runtime.request) -----------------------

def test_make_request_passes_the_gpu_allocation(tmp_path: Path, monkeypatch) -> None:
    from venvoy.runtime.request import GPU_ENV_PASS, make_request

    monkeypatch.chdir(tmp_path)
    host = {"CUDA_VISIBLE_DEVICES": "1", "ROCR_VISIBLE_DEVICES": "0", "HIP_VISIBLE_DEVICES": "0",
            "NVIDIA_VISIBLE_DEVICES": "1", "GPU_DEVICE_ORDINAL": "1", "SLURM_JOB_GPUS": "3",
            "SLURM_STEP_GPUS": "3", "SLURM_GPUS_ON_NODE": "1", "SLURM_JOB_ID": "42", "HOME": "/h"}
    env = make_request("img", ["env"], environ=host, tty=False).env_dict
    for name in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
                 "NVIDIA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "SLURM_JOB_GPUS",
                 "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE"):
        assert env[name] == host[name]
    assert "HOME" not in env  # the allocation and the job's own variables, nothing else
    assert env["SLURM_JOB_ID"] == "42"  # inside a job, the job's variables arrive (issue 10)
    assert "SLURM_*GPU*" in GPU_ENV_PASS
    outside = {k: v for k, v in host.items() if k != "SLURM_JOB_ID"}
    env = make_request("img", ["env"], environ=outside, tty=False).env_dict
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and "HOME" not in env


def test_explicit_env_overrides_the_allocation(tmp_path: Path, monkeypatch) -> None:
    from venvoy.runtime.request import make_request

    monkeypatch.chdir(tmp_path)
    req = make_request("img", ["env"], env=["CUDA_VISIBLE_DEVICES=0"], tty=False,
                       environ={"CUDA_VISIBLE_DEVICES": "1,3"})
    assert req.env_dict["CUDA_VISIBLE_DEVICES"] == "0"
    assert make_request("img", ["env"], environ={}, tty=False).env_dict == {"PYTHONNOUSERSITE": "1"}


def test_gpu_probe_sees_the_host_allocation(fake_libcuda: Path) -> None:
    ok = dr.gpu_probe(ProbeRuntime(fake_libcuda), "img", {"CUDA_VISIBLE_DEVICES": "0,1"})
    assert "(CUDA_VISIBLE_DEVICES=0,1)" in ok.evidence


def test_doctor_with_a_runtime_does_not_create_the_store(tmp_path: Path, fakebin) -> None:
    """The runtime-versions cache lives in the store: probing versions must not create it."""
    fakebin.add("apptainer", version="1.4.5")
    env = {**fakebin.env(), "VENVOY_HOME": str(tmp_path / "a" / "b" / "store")}
    report = dr.doctor(environ=env, host=fake_host(tmp_path), runtime="apptainer")
    by_name = {c.name: c for c in report.checks}
    assert "1.4.5" in by_name["apptainer"].evidence
    assert not (tmp_path / "a").exists()


def test_a_gpu_named_twice_is_passed_once(tmp_path: Path, nvidia_host) -> None:
    host = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "2,2"}
    argv = Podman("/usr/bin/podman", host).invocation(gpu_request(tmp_path, host)).argv
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--device"] == ["nvidia.com/gpu=2"]
    assert "CUDA_VISIBLE_DEVICES=0" in argv  # the one GPU inside is 0 (2,2 would hide it)
    argv = Docker("/usr/bin/docker", host).invocation(gpu_request(tmp_path, host)).argv
    assert argv[argv.index("--gpus") + 1] == '"device=2"'


def test_store_path_too_long_fails(tmp_path: Path) -> None:
    """A name longer than the file system allows can never be created: not "ok, not created yet"."""
    long_home = str(tmp_path / ("x" * 300))
    assert dr.check_store(long_home, MOUNTINFO).status == FAIL
    check = dr.check_tmp("temporary space", long_home + "/tmp", "the store", MOUNTINFO, "VENVOY_TMPDIR")
    assert check.status == FAIL and "too long" in check.evidence and len(check.evidence) < 200


def test_runtime_that_does_not_say_its_version_warns() -> None:
    found = [SimpleNamespace(name="docker", path="/x/docker", rootless=False, usable=True,
                             tested=True, problem="")]
    (check,) = dr.check_runtimes(found, {"docker": None}, None)
    assert check.status == WARN and "did not say its version" in check.evidence
    (check,) = dr.check_runtimes(found, {"docker": "27.1"}, None)
    assert check.status == OK


@pytest.mark.parametrize("version", ["", "\n \n", "\x00\x00garbage\xff", "   "])
def test_nvidia_driver_version_garbage_is_one_line(tmp_path: Path, version: str) -> None:
    host = fake_host(tmp_path, devices=("nvidia0", "nvidiactl"))
    (Path(host.proc) / "driver" / "nvidia" / "version").write_bytes(version.encode("latin-1"))
    checks = {c.name: c for c in dr.check_gpu(host, {"PATH": ""}, [])}
    driver = checks["NVIDIA driver"]
    assert driver.status == (OK if version.strip() else FAIL)
    assert "\n" not in driver.evidence


@pytest.mark.parametrize("value", ["NoDevFiles", "a,b", "0\n1", "1;rm -rf /"])
def test_allocation_that_gpu_nvidia_would_refuse_is_not_ok(tmp_path: Path, value: str) -> None:
    host = fake_host(tmp_path, devices=("nvidia0", "nvidiactl"), nvidia_version="NVRM 550\n")
    checks = {c.name: c for c in dr.check_gpu(host, {"PATH": "", "CUDA_VISIBLE_DEVICES": value}, [])}
    assert checks["allocation"].status == WARN
    assert "CUDA_VISIBLE_DEVICES" in checks["allocation"].evidence and checks["allocation"].action


def test_allocation_evidence_is_cut(tmp_path: Path) -> None:
    host = fake_host(tmp_path, devices=("nvidia0",), nvidia_version="NVRM 550\n")
    env = {"PATH": "", "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(400))}
    checks = {c.name: c for c in dr.check_gpu(host, env, [])}
    assert checks["allocation"].status == OK and len(checks["allocation"].evidence) < 400


def test_allocation_garbage_message_is_short() -> None:
    with pytest.raises(BadRequest) as info:
        allocated_gpus({"CUDA_VISIBLE_DEVICES": "x" * 100_000})
    assert len(info.value.message) < 200


def test_cli_report_that_cannot_be_written_is_one_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("VENVOY_HOME", str(tmp_path / "store"))
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))

    class Full(io.StringIO):  # like /dev/full
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

    with pytest.raises(VenvoyError, match="could not write the report: No space left"):
        cmd_doctor(parser.parse_args(["doctor"]), out=Full())


def slurm_probes(nodes: object) -> dict[str, object]:
    from concurrent.futures import Future

    probes: dict[str, object] = {}
    for key, value in (("ping", (0, "Slurmctld(primary) at c1 is UP")),
                       ("config", (0, "MaxArraySize = 1001\n")), ("mpi", (0, "pmix\n")),
                       ("nodes", nodes)):
        f: Future[object] = Future()
        f.set_result(value)
        probes[key] = f
    return probes


def test_store_on_nodes_without_srun_is_not_a_failure(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\n")
    (bin_dir / "sbatch").chmod(0o755)
    env = {"PATH": str(bin_dir), "SLURM_JOB_ID": "42"}
    checks = {c.name: c for c in dr.check_slurm(env, slurm_probes(None), "/store")}  # type: ignore[arg-type]
    assert checks["store on compute nodes"].status == WARN
    assert "no srun" in checks["store on compute nodes"].evidence


def test_store_on_nodes_error_is_cut(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "srun"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    env = {"PATH": str(bin_dir), "SLURM_JOB_ID": "42"}
    probes = slurm_probes((1, "srun: error: " + "\x1b[2J" * 5000))
    check = {c.name: c for c in dr.check_slurm(env, probes, "/store")}["store on compute nodes"]  # type: ignore[arg-type]
    assert check.status == FAIL and len(check.evidence) < 300


def test_evidence_is_never_a_flood() -> None:
    assert len(Check("a", "b", OK, "y" * 100_000).evidence) <= dr.EVIDENCE_MAX
    assert dr.parse_mpi_list("MPI plugin types are...\n" + "y" * 100_000 + "\n\x1b[2J\npmix\n") \
        == ["pmix"]


def test_allocation_of_absurdly_many_gpus_is_refused() -> None:
    many = ",".join(str(i) for i in range(100_000))
    with pytest.raises(BadRequest, match="names 100000 GPUs"):
        allocated_gpus({"CUDA_VISIBLE_DEVICES": many})
    assert len(allocated_gpus({"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(64))}) or []) == 64
