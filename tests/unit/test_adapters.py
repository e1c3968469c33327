"""Each adapter turns one RunRequest into its runtime's argv and process env.

Adapters are built directly with a fake executable path and an explicit
environment; nothing is executed (except Enroot's tiny `sh -c` helper, which is
run with /bin/sh to prove it does what it claims).
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest

from venvoy.core.errors import BadRequest, ImageNotFound
from venvoy.runtime import RUNTIMES, adapter_class
from venvoy.runtime.apptainer import Apptainer
from venvoy.runtime.base import Invocation, require_gpu_devices, safe_file_name
from venvoy.runtime.charliecloud import DEFAULT_PATH, Charliecloud
from venvoy.runtime.docker import Docker
from venvoy.runtime.enroot import Enroot
from venvoy.runtime.podman import Podman, has_subid_range
from venvoy.runtime.request import Gpu, Mount, RunRequest
from venvoy.runtime.shifter import Shifter
from venvoy.runtime.singularity import Singularity

ARGV = ("python3", "-c", "import sys; print(sys.argv)", "--rm", "-v", "$HOME", "a b")
HOST_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/home/u", "USER": "u"}


def request(tmp_path: Path, **kw) -> RunRequest:
    """A representative request: a read-only and a writable mount, tricky env values."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    defaults = dict(
        image="python:3.11",
        argv=ARGV,
        mounts=(Mount(str(data), "/data", True), Mount(str(tmp_path), "/work")),
        env=(("PYTHONNOUSERSITE", "1"), ("MSG", "a b=c $HOME `id` \\ \"q\"")),
        workdir="/work",
        tty=False,
        uid=1000,
        gid=1001,
    )
    defaults.update(kw)
    return RunRequest(**defaults)


@pytest.fixture
def euid(monkeypatch: pytest.MonkeyPatch):
    """Pretend to run as a given effective uid."""
    def set_euid(uid: int) -> None:
        monkeypatch.setattr(os, "geteuid", lambda: uid)
    return set_euid


@pytest.fixture
def gpu_host(monkeypatch: pytest.MonkeyPatch):
    """Pretend that some device files exist (and only those, under /dev)."""
    real_exists, real_isdir = os.path.exists, os.path.isdir

    def set_devices(*present: str) -> None:
        def exists(path) -> bool:
            p = os.fspath(path)
            return p in present if p.startswith("/dev/") else real_exists(path)

        def isdir(path) -> bool:
            p = os.fspath(path)
            return p in present if p.startswith("/dev/") else real_isdir(path)

        monkeypatch.setattr(os.path, "exists", exists)
        monkeypatch.setattr(os.path, "isdir", isdir)
    return set_devices


# -- Docker ---------------------------------------------------------------------------

def test_docker_argv_as_non_root_caller(tmp_path: Path) -> None:
    req = request(tmp_path)
    argv = Docker("/usr/bin/docker", HOST_ENV).run_argv(req)
    assert argv == [
        "/usr/bin/docker", "run", "--rm", "--init", "--network=host", "--pull=never", "-i",
        "--user", "1000:1001",
        "-v", f"{tmp_path}/data:/data:ro",
        "-v", f"{tmp_path}:/work",
        "-e", "PYTHONNOUSERSITE=1",
        "-e", "MSG=a b=c $HOME `id` \\ \"q\"",
        "-w", "/work",
        "python:3.11", *ARGV,
    ]


def test_docker_no_user_flag_for_root_caller(tmp_path: Path) -> None:
    argv = Docker("/usr/bin/docker", HOST_ENV).run_argv(request(tmp_path, uid=0, gid=0))
    assert "--user" not in argv


def test_docker_no_user_flag_for_rootless_daemon(tmp_path: Path) -> None:
    env = {**HOST_ENV, "DOCKER_HOST": "unix:///run/user/1000/docker.sock"}
    docker = Docker("/usr/bin/docker", env)
    assert docker.rootless is True
    assert "--user" not in docker.run_argv(request(tmp_path))


def test_docker_tty_adds_t_after_i(tmp_path: Path) -> None:
    argv = Docker("/usr/bin/docker", HOST_ENV).run_argv(request(tmp_path, tty=True))
    assert argv[6:8] == ["-i", "-t"]


def test_docker_image_then_argv_last_and_unchanged(tmp_path: Path) -> None:
    argv = Docker("/usr/bin/docker", HOST_ENV).run_argv(request(tmp_path))
    i = argv.index("python:3.11")
    assert argv[i + 1:] == list(ARGV)


def test_docker_no_workdir_flag_without_workdir(tmp_path: Path) -> None:
    argv = Docker("/usr/bin/docker", HOST_ENV).run_argv(request(tmp_path, workdir=None))
    assert "-w" not in argv


def test_docker_socket_path() -> None:
    assert Docker("/d", {}).socket_path() == "/var/run/docker.sock"
    assert Docker("/d", {"DOCKER_HOST": "unix:///x.sock"}).socket_path() == "/x.sock"
    assert Docker("/d", {"DOCKER_HOST": "tcp://h:2375"}).socket_path() == ""
    assert Docker("/d", {"DOCKER_HOST": "tcp://h:2375"}).problem() is None  # trust remote


def test_docker_invocation_keeps_process_env(tmp_path: Path) -> None:
    inv = Docker("/usr/bin/docker", HOST_ENV).invocation(request(tmp_path))
    assert isinstance(inv, Invocation)
    assert inv.env == HOST_ENV
    assert inv.argv[0] == "/usr/bin/docker"


def test_image_name_starting_with_dash_refused(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="cannot start with '-'"):
        Docker("/usr/bin/docker", HOST_ENV).invocation(request(tmp_path, image="--privileged"))


def nvidia_toolkit(monkeypatch: pytest.MonkeyPatch, present: bool) -> None:
    """Pretend the NVIDIA Container Toolkit is (not) installed, whatever lookup Docker uses."""
    import venvoy.runtime.docker as docker_module

    def fake_which(name, *args, **kwargs):
        return f"/usr/bin/{name}" if present and name.startswith("nvidia-container") else None

    if hasattr(docker_module, "which"):
        monkeypatch.setattr(docker_module, "which", fake_which)
    if hasattr(docker_module, "shutil"):
        monkeypatch.setattr(docker_module.shutil, "which", fake_which)


def test_docker_gpu_nvidia(tmp_path: Path, gpu_host, monkeypatch) -> None:
    gpu_host("/dev/nvidiactl")
    nvidia_toolkit(monkeypatch, present=True)
    inv = Docker("/usr/bin/docker", HOST_ENV).invocation(request(tmp_path, gpu=Gpu.NVIDIA))
    i = inv.argv.index("--gpus")
    assert inv.argv[i + 1] == "all"
    assert i < inv.argv.index("python:3.11")


def test_docker_gpu_nvidia_without_toolkit(tmp_path: Path, gpu_host, monkeypatch) -> None:
    gpu_host("/dev/nvidiactl", "/dev/nvidia0")
    nvidia_toolkit(monkeypatch, present=False)
    with pytest.raises(BadRequest, match="NVIDIA Container Toolkit"):
        Docker("/usr/bin/docker", HOST_ENV).invocation(request(tmp_path, gpu=Gpu.NVIDIA))


def test_docker_finds_nvidia_toolkit_on_path(tmp_path: Path, gpu_host, monkeypatch) -> None:
    gpu_host("/dev/nvidiactl")
    bindir = tmp_path / "toolkit-bin"
    bindir.mkdir()
    tool = bindir / "nvidia-container-cli"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(os, "defpath", str(empty))  # hide the host's /usr/bin
    monkeypatch.setenv("PATH", str(bindir))
    docker = Docker("/usr/bin/docker", {**HOST_ENV, "PATH": str(bindir)})
    assert "--gpus" in docker.invocation(request(tmp_path, gpu=Gpu.NVIDIA)).argv


def test_docker_gpu_amd(tmp_path: Path, gpu_host) -> None:
    gpu_host("/dev/kfd", "/dev/dri")
    argv = Docker("/usr/bin/docker", HOST_ENV).invocation(request(tmp_path, gpu=Gpu.AMD)).argv
    i = argv.index("--device")
    assert argv[i:i + 6] == ["--device", "/dev/kfd", "--device", "/dev/dri", "--group-add", "video"]


# -- GPU device checks ---------------------------------------------------------------------

@pytest.mark.parametrize("cls", [Docker, Podman, Apptainer, Singularity])
def test_gpu_nvidia_without_driver_devices(tmp_path: Path, gpu_host, cls) -> None:
    gpu_host()  # no /dev/nvidia* at all
    sif = tmp_path / "img.sif"
    sif.touch()
    # Docker and Podman take an image name (a path is refused before any GPU check).
    image = "img:1" if cls in (Docker, Podman) else str(sif)
    with pytest.raises(BadRequest) as info:
        cls("/usr/bin/x", HOST_ENV).invocation(request(tmp_path, image=image, gpu=Gpu.NVIDIA))
    text = str(info.value)
    assert "\n" not in text
    assert "/dev/nvidiactl" in text
    assert info.value.hint  # says what to do
    assert "srun" in info.value.hint or "--gpu" in info.value.hint


def test_gpu_nvidia0_alone_is_enough(gpu_host) -> None:
    gpu_host("/dev/nvidia0")  # either device file will do
    require_gpu_devices(Gpu.NVIDIA)
    gpu_host()
    with pytest.raises(BadRequest):
        require_gpu_devices(Gpu.NVIDIA)


def test_gpu_amd_without_rocm_devices(gpu_host) -> None:
    gpu_host("/dev/kfd")  # no /dev/dri
    with pytest.raises(BadRequest, match="/dev/kfd and /dev/dri"):
        require_gpu_devices(Gpu.AMD)


def test_no_gpu_requested_needs_no_devices(gpu_host) -> None:
    gpu_host()
    require_gpu_devices(None)


# -- Podman ---------------------------------------------------------------------------------

def test_podman_rootless_keeps_id(tmp_path: Path, euid) -> None:
    euid(1000)
    argv = Podman("/usr/bin/podman", HOST_ENV).run_argv(request(tmp_path))
    assert argv[:7] == ["/usr/bin/podman", "run", "--rm", "--init", "--network=host",
                        "--pull=never", "-i"]
    assert argv[7] == "--userns=keep-id"
    assert "--user" not in argv
    assert argv[argv.index("python:3.11") + 1:] == list(ARGV)
    assert ["-v", f"{tmp_path}/data:/data:ro"] == argv[8:10]


def test_podman_as_root_has_no_userns(tmp_path: Path, euid) -> None:
    euid(0)
    podman = Podman("/usr/bin/podman", HOST_ENV)
    assert podman.rootless is False
    assert not any(a.startswith("--userns") for a in podman.run_argv(request(tmp_path)))


def test_podman_nvidia_uses_cdi_device(tmp_path: Path, gpu_host, monkeypatch, euid) -> None:
    euid(1000)
    gpu_host("/dev/nvidiactl")
    cdi = tmp_path / "cdi"
    cdi.mkdir()
    (cdi / "nvidia.yaml").write_text("cdiVersion: 0.5.0\n")
    monkeypatch.setattr("venvoy.runtime.podman.CDI_DIRS", (str(cdi),))
    argv = Podman("/usr/bin/podman", HOST_ENV).invocation(request(tmp_path, gpu=Gpu.NVIDIA)).argv
    i = argv.index("--device")
    assert argv[i + 1] == "nvidia.com/gpu=all"
    assert "--gpus" not in argv


def test_podman_nvidia_without_cdi_spec(tmp_path: Path, gpu_host, monkeypatch) -> None:
    gpu_host("/dev/nvidiactl")
    monkeypatch.setattr("venvoy.runtime.podman.CDI_DIRS", (str(tmp_path / "none"),))
    with pytest.raises(BadRequest, match="nvidia-ctk cdi generate"):
        Podman("/usr/bin/podman", HOST_ENV).invocation(request(tmp_path, gpu=Gpu.NVIDIA))


@pytest.mark.parametrize(("uid", "group"), [(1000, "keep-groups"), (0, "video")])
def test_podman_amd_groups(tmp_path: Path, gpu_host, euid, uid: int, group: str) -> None:
    euid(uid)
    gpu_host("/dev/kfd", "/dev/dri")
    argv = Podman("/usr/bin/podman", HOST_ENV).invocation(request(tmp_path, gpu=Gpu.AMD)).argv
    assert argv[argv.index("--group-add") + 1] == group
    assert argv[argv.index("/dev/kfd") - 1:argv.index("/dev/kfd") + 1] == ["--device", "/dev/kfd"]


def test_podman_rootless_without_subids_is_unusable(euid, monkeypatch) -> None:
    euid(1000)
    monkeypatch.setattr("venvoy.runtime.podman.user_namespaces_enabled", lambda: True)
    monkeypatch.setattr("venvoy.runtime.podman.has_subid_range", lambda path, user: False)
    problem = Podman("/usr/bin/podman", HOST_ENV).problem()
    assert problem is not None and "/etc/subuid" in problem and "usermod" in problem


def test_podman_rootless_without_userns_is_unusable(euid, monkeypatch) -> None:
    euid(1000)
    monkeypatch.setattr("venvoy.runtime.podman.user_namespaces_enabled", lambda: False)
    assert "user namespaces" in Podman("/usr/bin/podman", HOST_ENV).problem()


def test_podman_as_root_is_usable(euid) -> None:
    euid(0)
    assert Podman("/usr/bin/podman", HOST_ENV).problem() is None


def test_has_subid_range(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text("alice:100000:65536\n")
    assert has_subid_range(str(subuid), "alice") is True
    assert has_subid_range(str(subuid), "bob") is False
    assert has_subid_range(str(tmp_path / "missing"), "alice") is False


# -- Apptainer / Singularity ------------------------------------------------------------------

@pytest.fixture
def sif(tmp_path: Path) -> str:
    path = tmp_path / "py.sif"
    path.write_bytes(b"SIF")
    return str(path)


def test_apptainer_argv_unprivileged(tmp_path: Path, sif: str, euid) -> None:
    euid(1000)
    app = Apptainer("/opt/apptainer/bin/apptainer", HOST_ENV)
    argv = app.run_argv(request(tmp_path, image=sif))
    assert argv == [
        "/opt/apptainer/bin/apptainer", "exec", "--cleanenv", "--no-home",
        "--bind", f"{tmp_path}/data:/data:ro",
        "--bind", f"{tmp_path}:/work",
        "--pwd", "/work",
        sif, *ARGV,
    ]


def test_apptainer_as_root_uses_user_namespace(tmp_path: Path, sif: str, euid) -> None:
    euid(0)
    argv = Apptainer("/usr/bin/apptainer", HOST_ENV).run_argv(request(tmp_path, image=sif))
    assert argv[:5] == ["/usr/bin/apptainer", "exec", "--cleanenv", "--no-home", "--userns"]


@pytest.mark.parametrize(("gpu", "flag", "devices"),
                         [(Gpu.NVIDIA, "--nv", ("/dev/nvidiactl",)),
                          (Gpu.AMD, "--rocm", ("/dev/kfd", "/dev/dri"))])
def test_apptainer_gpu_flags(tmp_path: Path, sif: str, gpu_host, euid, gpu, flag, devices) -> None:
    euid(1000)
    gpu_host(*devices)
    argv = Apptainer("/usr/bin/apptainer", HOST_ENV).invocation(
        request(tmp_path, image=sif, gpu=gpu)).argv
    assert flag in argv
    assert argv.index(flag) < argv.index(sif)
    assert argv[argv.index(sif) + 1:] == list(ARGV)


def test_apptainer_env_goes_through_prefixed_variables_escaped(tmp_path: Path, sif: str) -> None:
    host = {**HOST_ENV, "APPTAINERENV_LEAK": "x", "SINGULARITYENV_LEAK2": "y",
            "APPTAINER_CACHEDIR": "/scratch/cache"}
    app = Apptainer("/usr/bin/apptainer", host)
    req = request(tmp_path, image=sif,
                  env=(("PYTHONNOUSERSITE", "1"), ("V", "a $HOME `id` \\n b=c"), ("E", "")))
    env = app.process_env(req)
    assert env["APPTAINERENV_PYTHONNOUSERSITE"] == "1"
    assert env["APPTAINERENV_V"] == "a \\$HOME \\`id\\` \\\\n b=c"
    assert env["APPTAINERENV_E"] == ""
    assert "APPTAINERENV_LEAK" not in env
    assert "SINGULARITYENV_LEAK2" not in env
    assert env["APPTAINER_CACHEDIR"] == "/scratch/cache"  # the runtime's own settings stay
    assert env["PATH"] == HOST_ENV["PATH"]
    assert not any(k.startswith("SINGULARITYENV_") for k in env)
    # nothing of the request leaks into argv
    assert not any("a $HOME" in a for a in app.run_argv(req))


def test_apptainer_missing_image_file(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFound) as info:
        Apptainer("/usr/bin/apptainer", HOST_ENV).invocation(
            request(tmp_path, image=str(tmp_path / "missing.sif")))
    assert "missing.sif" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("image", ["docker://python:3.11", "oras://r/x:1", "library://a/b/c"])
def test_apptainer_uri_images_are_not_checked_on_disk(tmp_path: Path, image: str) -> None:
    argv = Apptainer("/usr/bin/apptainer", HOST_ENV).invocation(request(tmp_path, image=image)).argv
    assert image in argv


def test_real_singularity_uses_singularityenv(tmp_path: Path, sif: str) -> None:
    binary = tmp_path / "bin" / "singularity"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\n")
    sing = Singularity(str(binary), {**HOST_ENV, "APPTAINERENV_X": "leak"})
    env = sing.process_env(request(tmp_path, image=sif))
    assert env["SINGULARITYENV_MSG"] == "a b=c \\$HOME \\`id\\` \\\\ \"q\""
    assert not any(k.startswith("APPTAINERENV_") for k in env)
    argv = sing.run_argv(request(tmp_path, image=sif))
    assert argv[:2] == [str(binary), "exec"]
    assert "--cleanenv" in argv and "--no-home" in argv


def test_singularity_symlink_to_apptainer_uses_apptainerenv(tmp_path: Path, sif: str) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "apptainer").write_text("#!/bin/sh\n")
    (bindir / "singularity").symlink_to("apptainer")
    sing = Singularity(str(bindir / "singularity"), {**HOST_ENV, "SINGULARITYENV_X": "leak"})
    env = sing.process_env(request(tmp_path, image=sif))
    assert env["APPTAINERENV_PYTHONNOUSERSITE"] == "1"
    assert not any(k.startswith("SINGULARITYENV_") for k in env)
    assert sing.run_argv(request(tmp_path, image=sif))[0] == str(bindir / "singularity")


def test_apptainer_unprivileged_without_userns_needs_setuid(tmp_path: Path, euid,
                                                            monkeypatch) -> None:
    euid(1000)
    monkeypatch.setattr("venvoy.runtime.apptainer.user_namespaces_enabled", lambda: False)
    prefix = tmp_path / "apptainer"
    (prefix / "bin").mkdir(parents=True)
    binary = prefix / "bin" / "apptainer"
    binary.write_text("#!/bin/sh\n")
    app = Apptainer(str(binary), HOST_ENV)
    assert "user namespaces" in app.problem()
    starter = prefix / "libexec" / "apptainer" / "bin" / "starter-suid"
    starter.parent.mkdir(parents=True)
    starter.write_text("")
    starter.chmod(0o4755)
    assert app.problem() is None


# -- Charliecloud ---------------------------------------------------------------------------

@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    img = tmp_path / "images" / "py"
    (img / "ch").mkdir(parents=True)
    (img / "ch" / "environment").write_text("PATH=/opt/conda/bin:/usr/bin\n")
    (img / "usr" / "bin").mkdir(parents=True)
    return img


def test_charliecloud_argv(tmp_path: Path, image_dir: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    req = RunRequest(
        image=str(image_dir), argv=ARGV,
        mounts=(Mount(str(data), "/data/in"), Mount("/tmp", "/tmp")),
        env=(("PYTHONNOUSERSITE", "1"), ("MSG", "a b=c $HOME")),
        workdir="/data/in", tty=False,
    )
    argv = Charliecloud("/usr/bin/ch-run", HOST_ENV).run_argv(req)
    assert argv == [
        "/usr/bin/ch-run", "--unset-env=*", "--env-no-expand",
        f"--set-env=PATH={DEFAULT_PATH}", "--set-env",
        "--set-env=PYTHONNOUSERSITE=1", "--set-env=MSG=a b=c $HOME",
        f"--bind={data}:/data/in",
        "--cd=/data/in",
        str(image_dir), "--", *ARGV,
    ]
    # the mount point was created inside the image directory
    assert (image_dir / "data" / "in").is_dir()


def test_charliecloud_without_image_environment_file(tmp_path: Path) -> None:
    img = tmp_path / "bare"
    img.mkdir()
    argv = Charliecloud("/usr/bin/ch-run", HOST_ENV).run_argv(
        RunRequest(image=str(img), argv=("true",), tty=False))
    assert "--set-env" not in argv
    assert argv[-3:] == [str(img), "--", "true"]


def test_charliecloud_refuses_read_only_mounts(tmp_path: Path, image_dir: Path) -> None:
    req = RunRequest(image=str(image_dir), argv=("true",),
                     mounts=(Mount(str(tmp_path), "/d", True),))
    with pytest.raises(BadRequest) as info:
        Charliecloud("/usr/bin/ch-run", HOST_ENV).invocation(req)
    assert "read-only" in str(info.value)
    assert "\n" not in str(info.value)


def test_charliecloud_tmp_same_path_skipped_other_tmp_target_refused(tmp_path: Path,
                                                                     image_dir: Path) -> None:
    ch = Charliecloud("/usr/bin/ch-run", HOST_ENV)
    same = RunRequest(image=str(image_dir), argv=("true",),
                      mounts=(Mount(str(tmp_path), str(tmp_path)),), workdir=str(tmp_path))
    argv = ch.run_argv(same)
    assert not any(a.startswith("--bind") for a in argv)
    assert f"--cd={tmp_path}" in argv
    other = RunRequest(image=str(image_dir), argv=("true",),
                       mounts=(Mount(str(tmp_path), "/tmp/x"),))
    with pytest.raises(BadRequest, match="/tmp"):
        ch.run_argv(other)


def test_charliecloud_never_creates_mount_points_through_symlinks(tmp_path: Path,
                                                                  image_dir: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (image_dir / "link").symlink_to(outside)
    req = RunRequest(image=str(image_dir), argv=("true",),
                     mounts=(Mount(str(tmp_path), "/link/x"),))
    Charliecloud("/usr/bin/ch-run", HOST_ENV).run_argv(req)
    assert not (outside / "x").exists()


def test_charliecloud_named_image_creates_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    req = RunRequest(image="python", argv=("true",), mounts=(Mount(str(tmp_path), "/data"),))
    argv = Charliecloud("/usr/bin/ch-run", HOST_ENV).invocation(req).argv
    assert argv[-3:] == ["python", "--", "true"]
    assert not (tmp_path / "python").exists()


def test_charliecloud_missing_image_dir(tmp_path: Path) -> None:
    req = RunRequest(image=str(tmp_path / "nope"), argv=("true",))
    with pytest.raises(ImageNotFound, match="does not exist"):
        Charliecloud("/usr/bin/ch-run", HOST_ENV).invocation(req)


def test_charliecloud_fills_in_user(tmp_path: Path, image_dir: Path) -> None:
    ch = Charliecloud("/usr/bin/ch-run", {"PATH": "/usr/bin"})
    expected = pwd.getpwuid(os.getuid()).pw_name
    assert ch.environ["USER"] == expected
    inv = ch.invocation(RunRequest(image=str(image_dir), argv=("true",)))
    assert inv.env["USER"] == expected
    assert inv.env["PATH"] == "/usr/bin"


def test_charliecloud_keeps_given_user() -> None:
    assert Charliecloud("/usr/bin/ch-run", {"USER": "alice"}).environ["USER"] == "alice"


def test_charliecloud_is_always_rootless(euid) -> None:
    euid(0)
    assert Charliecloud("/usr/bin/ch-run", HOST_ENV).rootless is True


def test_charliecloud_nvidia_needs_injected_libraries(image_dir: Path, gpu_host) -> None:
    gpu_host("/dev/nvidiactl")
    ch = Charliecloud("/usr/bin/ch-run", HOST_ENV)
    req = RunRequest(image=str(image_dir), argv=("nvidia-smi",), gpu=Gpu.NVIDIA)
    with pytest.raises(BadRequest, match="ch-fromhost --nvidia"):
        ch.invocation(req)
    lib = image_dir / "usr" / "lib64"
    lib.mkdir(parents=True)
    (lib / "libcuda.so.1").touch()
    assert ch.invocation(req).argv[-1] == "nvidia-smi"


# -- Shifter and Enroot (untested adapters) -------------------------------------------------

def test_shifter_argv(tmp_path: Path) -> None:
    argv = Shifter("/usr/bin/shifter", HOST_ENV).run_argv(request(tmp_path, image="ubuntu"))
    assert argv == [
        "/usr/bin/shifter", "--image=docker:ubuntu", "--clearenv",
        f"--volume={tmp_path}/data:/data:ro", f"--volume={tmp_path}:/work",
        "--env=PYTHONNOUSERSITE=1", "--env=MSG=a b=c $HOME `id` \\ \"q\"",
        "--workdir=/work", "--", *ARGV,
    ]


def test_shifter_keeps_an_explicit_image_type(tmp_path: Path) -> None:
    argv = Shifter("/usr/bin/shifter", HOST_ENV).run_argv(request(tmp_path,
                                                                 image="docker:ubuntu:22.04"))
    assert "--image=docker:ubuntu:22.04" in argv


def test_shifter_gpu(tmp_path: Path) -> None:
    sh = Shifter("/usr/bin/shifter", HOST_ENV)
    assert "--module=gpu" in sh.run_argv(request(tmp_path, gpu=Gpu.NVIDIA))
    with pytest.raises(BadRequest, match="amd"):
        sh.run_argv(request(tmp_path, gpu=Gpu.AMD))


def test_enroot_argv(tmp_path: Path) -> None:
    req = request(tmp_path, image="pyimg", mounts=(Mount(str(tmp_path), "/work"),))
    argv = Enroot("/usr/bin/enroot", HOST_ENV).run_argv(req)
    assert argv == [
        "/usr/bin/enroot", "start",
        "--mount", f"{tmp_path}:/work",
        "--env", "PYTHONNOUSERSITE=1", "--env", "MSG=a b=c $HOME `id` \\ \"q\"",
        "pyimg",
        "sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", "/work",
        *ARGV,
    ]


def test_enroot_without_workdir_runs_argv_directly(tmp_path: Path) -> None:
    argv = Enroot("/usr/bin/enroot", HOST_ENV).run_argv(request(tmp_path, image="pyimg",
                                                                workdir=None, mounts=()))
    assert argv[argv.index("pyimg") + 1:] == list(ARGV)


@pytest.mark.parametrize(("gpu", "var"), [(Gpu.NVIDIA, "NVIDIA_VISIBLE_DEVICES=all"),
                                          (Gpu.AMD, "ROCR_VISIBLE_DEVICES=all")])
def test_enroot_gpu(tmp_path: Path, gpu, var: str) -> None:
    argv = Enroot("/usr/bin/enroot", HOST_ENV).run_argv(request(tmp_path, gpu=gpu))
    assert argv[argv.index(var) - 1] == "--env"


def test_enroot_workdir_helper_really_cds_and_keeps_argv(tmp_path: Path) -> None:
    argv = Enroot("/usr/bin/enroot", HOST_ENV).run_argv(
        request(tmp_path, image="img", workdir=str(tmp_path), mounts=(),
                argv=("/bin/sh", "-c", 'pwd; printf "%s|" "$@"', "x", "a b", "$HOME", "")))
    helper = argv[argv.index("img") + 1:]
    out = subprocess.run(["/bin/sh", *helper[1:]], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/nowhere"}, check=True).stdout
    assert out == f"{tmp_path}\na b|$HOME||"


def test_enroot_read_only_mount_is_a_read_only_bind(tmp_path: Path) -> None:
    argv = Enroot("/usr/bin/enroot", HOST_ENV).run_argv(
        request(tmp_path, mounts=(Mount(str(tmp_path), "/data", True),)))
    spec = argv[argv.index("--mount") + 1]
    fields = spec.split(":")
    assert fields[:2] == [str(tmp_path), "/data"]
    options = fields[-1].split(",")
    assert "ro" in options
    assert "bind" in options or "rbind" in options


@pytest.mark.parametrize("name", ["shifter", "enroot"])
def test_untested_adapters_say_so(name: str) -> None:
    assert RUNTIMES[name].tested is False
    assert adapter_class(name).tested is False


@pytest.mark.parametrize("name", ["docker", "podman", "apptainer", "singularity", "charliecloud"])
def test_tested_adapters(name: str) -> None:
    cls = adapter_class(name)
    assert RUNTIMES[name].tested is True and cls.tested is True
    assert cls.name == name
    assert cls.binary == RUNTIMES[name].binary


# -- helpers ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("ref", "name"), [("python:3.11", "python_3.11"),
                                           ("../../etc/passwd", "etc_passwd"),
                                           ("ghcr.io/a/b:c", "ghcr.io_a_b_c"), ("...", "image")])
def test_safe_file_name(ref: str, name: str) -> None:
    assert safe_file_name(ref) == name
    assert "/" not in safe_file_name(ref)


def test_parse_version() -> None:
    from venvoy.runtime.base import Runtime
    assert Runtime.parse_version("apptainer version 1.3.4-1.el9") == "1.3.4-1.el9"
    assert Runtime.parse_version("Docker version 24.0.7, build afdd53b") == "24.0.7"
    assert Runtime.parse_version("0.31\n") == "0.31"
    assert Runtime.parse_version("weird\nmore") == "weird"
    assert Runtime.parse_version("") == "?"


def test_charliecloud_load_never_replaces_a_directory_that_is_not_an_image(
        tmp_path: Path) -> None:
    """`venvoy load --runtime charliecloud X.tar --name data --dest ~` must not
    delete ~/data (a user's directory, not an image) to put the image there."""
    from tests.unit._archives import docker_archive, layer_tar

    archive = docker_archive(tmp_path / "img.tar", [layer_tar([("file", "bin/sh", "x")])])
    dest = tmp_path / "home"
    (dest / "data").mkdir(parents=True)
    (dest / "data" / "thesis.tex").write_text("years of work\n")
    (dest / "notes").write_text("a file\n")
    ch = Charliecloud("/usr/bin/ch-run", HOST_ENV)
    for name in ("data", "notes"):
        with pytest.raises(BadRequest) as info:
            ch.load_archive(archive, name, dest)
        assert "not a Charliecloud image" in str(info.value)
        assert "\n" not in str(info.value)
    assert (dest / "data" / "thesis.tex").read_text() == "years of work\n"
    assert (dest / "notes").read_text() == "a file\n"
    # an image venvoy unpacked there before is replaced, as it always was
    first = Path(ch.load_archive(archive, "img", dest))
    (first / "stale").write_text("old\n")
    assert Path(ch.load_archive(archive, "img", dest)) == first
    assert not (first / "stale").exists() and (first / "bin" / "sh").is_file()


@pytest.mark.parametrize("cls", [Docker, Podman])
def test_a_named_request_names_its_container(tmp_path: Path, cls) -> None:
    argv = cls("/usr/bin/x", HOST_ENV).run_argv(request(tmp_path, name="venvoy-build_h_1_2_ab"))
    i = argv.index("--name")
    assert argv[i + 1] == "venvoy-build_h_1_2_ab" and i < argv.index("python:3.11")
    assert "--name" not in cls("/usr/bin/x", HOST_ENV).run_argv(request(tmp_path))
