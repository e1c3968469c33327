"""Base images for real: mmdebstrap, Docker, Podman, Apptainer and venvoy's own unpacker.

Bootstraps Debian bookworm (and trixie) offline into a fresh store, builds an
image on it with venvoy.image (no runtime involved), then checks that every
consumer takes the result: ``docker load`` + ``docker run``, ``podman load`` +
``podman run``, ``apptainer build ... docker-archive://`` as an ordinary user,
and venvoy.oci.unpack_image. Pulls only ever go to a loopback registry where
nothing listens: Docker Hub is never contacted.

A missing prerequisite is a skip on a developer's machine and a failure under
CI (``CI`` or ``VENVOY_REQUIRE_RUNTIMES`` set).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from venvoy.build.bases import BaseImage, resolve_base
from venvoy.core.errors import VenvoyError
from venvoy.image import oci as image
from venvoy.image.unpack import unpack_image
from venvoy.runtime.detect import get_runtime

pytestmark = pytest.mark.integration

STRICT = bool(os.environ.get("CI") or os.environ.get("VENVOY_REQUIRE_RUNTIMES"))
TEST_USER = os.environ.get("VENVOY_IT_USER", "venvoytest")
ROOTFS = Path(os.environ.get("VENVOY_IT_ROOTFS", "/var/cache/venvoy-it/base-rootfs.tar"))
LOCAL_IMAGE = "venvoy-it-base:latest"  # loaded into Docker and Podman by the runtime tests' setup
BASE_ARCHIVE = Path(os.environ.get("VENVOY_IT_BASE", "/var/cache/venvoy-it/base-docker.tar"))
LOOPBACK = "localhost:5999"  # a registry address where nothing listens
TIMINGS: dict[str, float] = {}


def unavailable(reason: str) -> None:
    if STRICT:
        pytest.fail(f"integration prerequisite missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def need(*programs: str) -> None:
    for program in programs:
        if shutil.which(program) is None:
            unavailable(f"{program} is not installed: run scripts/provision.sh")


def timed(label: str, start: float) -> None:
    TIMINGS[label] = time.monotonic() - start


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    if os.geteuid() != 0:
        unavailable("integration tests run as root (they switch to the test user themselves)")
    root = Path(tempfile.mkdtemp(prefix="venvoy-bases-it-", dir="/var/tmp"))
    root.chmod(0o755)  # the test user reads the image archives from here
    yield root
    shutil.rmtree(root, ignore_errors=True)
    if TIMINGS:
        print("\nbases/image timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items()))


@pytest.fixture(scope="module")
def store(workdir: Path) -> Path:
    path = workdir / "store"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def bookworm(store: Path) -> BaseImage:
    need("mmdebstrap")
    start = time.monotonic()
    base = resolve_base("3.11", None, store=store, runtime=None, offline=True, progress=print)
    timed("bootstrap bookworm", start)
    return base


def test_bootstrap_bookworm(bookworm: BaseImage, store: Path) -> None:
    assert (bookworm.python, bookworm.glibc) == ("3.11", "2.36")
    assert bookworm.source == "Debian bookworm bootstrap (mmdebstrap)"
    assert bookworm.archive.parent == store / "bases"
    assert not bookworm.archive.stat().st_mode & 0o222  # read-only
    info = image.inspect_archive(bookworm.archive)
    assert info.image_id == bookworm.image_id and len(info.diff_ids) == 1
    start = time.monotonic()
    assert resolve_base("3.11", None, store=store, runtime=None, offline=True) == bookworm
    assert time.monotonic() - start < 1  # from the store


def test_bootstrap_trixie(store: Path) -> None:
    need("mmdebstrap")
    start = time.monotonic()
    base = resolve_base("3.13", None, store=store, runtime=None, offline=True)
    timed("bootstrap trixie", start)
    assert (base.python, base.glibc) == ("3.13", "2.41")


def test_offline_3_12_has_no_bootstrap(store: Path) -> None:
    with pytest.raises(VenvoyError, match=r"no offline base for Python 3\.12"):
        resolve_base("3.12", None, store=store, runtime=None, offline=True)


@pytest.fixture(scope="module")
def built(workdir: Path, bookworm: BaseImage) -> tuple[Path, image.ImageInfo]:
    """The bookworm base plus a venv layer holding hello.txt, plus a metadata layer."""
    venv = workdir / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "hello.txt").write_text("hello from venvoy\n")
    (venv / "bin" / "hello").write_text("#!/bin/sh\necho hello-bin\n")
    (venv / "bin" / "hello").chmod(0o755)
    venv_layer = workdir / "venv-layer.tar"
    image.layer_from_dir(venv, "opt/venv", venv_layer)
    meta_layer = workdir / "meta-layer.tar"
    image.add_files_layer({"opt/venvoy/identity.json": b'{"x": 1}'}, meta_layer)
    base_env = dict(e.split("=", 1) for e in image.inspect_archive(bookworm.archive).config["config"]["Env"])
    out = workdir / "image.tar"
    start = time.monotonic()
    info = image.assemble(bookworm.archive, [venv_layer, meta_layer], out,
                          env={"PATH": f"/opt/venv/bin:{base_env['PATH']}", "VIRTUAL_ENV": "/opt/venv"},
                          labels={"org.venvoy.test": "1"},
                          repo_tag=f"localhost/venvoy-bases-it:{info_tag(bookworm)}")
    timed(f"assemble ({bookworm.archive.stat().st_size >> 20} MB base)", start)
    out.chmod(0o644)
    return out, info


def info_tag(base: BaseImage) -> str:
    return base.image_id.split(":")[1][:12]


def test_assemble_is_reproducible(built: tuple[Path, image.ImageInfo], workdir: Path,
                                  bookworm: BaseImage) -> None:
    out, info = built
    again = workdir / "again.tar"
    base_env = dict(e.split("=", 1) for e in image.inspect_archive(bookworm.archive).config["config"]["Env"])
    second = image.assemble(bookworm.archive, [workdir / "venv-layer.tar", workdir / "meta-layer.tar"], again,
                            env={"PATH": f"/opt/venv/bin:{base_env['PATH']}", "VIRTUAL_ENV": "/opt/venv"},
                            labels={"org.venvoy.test": "1"},
                            repo_tag=f"localhost/venvoy-bases-it:{info_tag(bookworm)}")
    assert second == info
    assert _sha(again) == _sha(out)
    again.unlink()


def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _run(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_load_and_run(engine: str, built: tuple[Path, image.ImageInfo]) -> None:
    need(engine)
    out, info = built
    ref = info.repo_tags[0]
    start = time.monotonic()
    load = _run([engine, "load", "-i", str(out)])
    timed(f"{engine} load", start)
    assert load.returncode == 0, load.stderr
    try:
        inspect = _run([engine, "image", "inspect", "--format", "{{.Id}}", ref])
        assert inspect.stdout.strip().removeprefix("sha256:") == info.image_id.removeprefix("sha256:")
        proc = _run([engine, "run", "--rm", "--network=none", ref, "sh", "-c",
                     "cat /opt/venv/hello.txt; hello; echo $PATH; echo $VIRTUAL_ENV; "
                     "python3 -c 'import sys; print(sys.version_info[:2])'"])
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0] == "hello from venvoy"
        assert lines[1] == "hello-bin"
        assert lines[2].startswith("/opt/venv/bin:/usr/local/sbin:")
        assert lines[3] == "/opt/venv"
        assert lines[4] == "(3, 11)"
    finally:
        _run([engine, "rmi", "-f", ref])


def test_apptainer_build_as_user(built: tuple[Path, image.ImageInfo], workdir: Path) -> None:
    need("apptainer", "runuser")
    try:
        user = pwd.getpwnam(TEST_USER)
    except KeyError:
        unavailable(f"test user {TEST_USER} missing: run scripts/provision.sh")
    out, _info = built
    home = workdir / "apptainer-home"
    home.mkdir()
    os.chown(home, user.pw_uid, user.pw_gid)
    sif = home / "image.sif"
    env = ["env", "-i", f"HOME={home}", "PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"]
    start = time.monotonic()
    build = _run(["runuser", "-u", TEST_USER, "--", *env, "apptainer", "--quiet", "build",
                  str(sif), f"docker-archive://{out}"], timeout=600)
    timed("apptainer build (as user)", start)
    assert build.returncode == 0, build.stderr[-2000:]
    proc = _run(["runuser", "-u", TEST_USER, "--", *env, "apptainer", "exec", str(sif),
                 "sh", "-c", "cat /opt/venv/hello.txt; echo $VIRTUAL_ENV"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["hello from venvoy", "/opt/venv"]


def test_unpack_image(built: tuple[Path, image.ImageInfo], workdir: Path) -> None:
    out, _info = built
    dest = workdir / "unpacked"
    start = time.monotonic()
    unpack_image(out, dest)
    timed("unpack_image", start)
    assert (dest / "opt/venv/hello.txt").read_text() == "hello from venvoy\n"
    assert os.access(dest / "opt/venv/bin/hello", os.X_OK)
    assert (dest / "usr/bin/python3.11").is_file()
    assert "VIRTUAL_ENV=/opt/venv" in (dest / "ch/environment").read_text()
    shutil.rmtree(dest)


def test_rootfs_tar_as_base(store: Path) -> None:
    """A plain root file system tar given as --base is wrapped (uses the provisioned one)."""
    if not ROOTFS.is_file():
        unavailable(f"{ROOTFS} missing: run scripts/provision.sh")
    start = time.monotonic()
    base = resolve_base("3.11", str(ROOTFS), store=store, runtime=None)
    timed("--base rootfs tar (first time)", start)
    assert (base.python, base.glibc) == ("3.11", "2.36")
    assert image.inspect_archive(base.archive).diff_ids == ("sha256:" + _sha(ROOTFS),)


# -- registries and local images of the runtimes ---------------------------------------

@pytest.mark.parametrize("engine", ["docker", "podman"])
@pytest.mark.parametrize("probe", ["1", "0"])
def test_unreachable_registry_fails_fast_in_one_line(engine: str, probe: str, store: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    need(engine)
    monkeypatch.setenv("VENVOY_REGISTRY_PROBE", probe)  # 0: straight to `pull`, no probe first
    runtime = get_runtime(engine)
    start = time.monotonic()
    with pytest.raises(VenvoyError) as err:
        resolve_base("3.11", f"{LOOPBACK}/python:3.11-slim", store=store, runtime=runtime)
    timed(f"unreachable registry, {engine}, probe={probe}", start)
    text = str(err.value)
    assert "\n" not in text and LOOPBACK in text
    if probe == "1":  # the probe answered: no pull was started
        assert f"registry {LOOPBACK} unreachable" in text and f"{engine} pull" not in text, text
    else:  # the runtime's own refusal, cut to one line, with what to do
        assert text.startswith(f"{engine} pull {LOOPBACK}/python:3.11-slim failed: "), text
        assert "--base" in text


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_online_falls_back_to_bootstrap(engine: str, store: Path, bookworm: BaseImage,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    need(engine)
    monkeypatch.setenv("VENVOY_BASE_REGISTRY", f"{LOOPBACK}/library")
    runtime = get_runtime(engine)
    assert resolve_base("3.11", None, store=store, runtime=runtime) == bookworm
    with pytest.raises(VenvoyError) as err:
        resolve_base("3.12", None, store=store, runtime=runtime)
    text = str(err.value)
    assert "\n" not in text
    assert f"{LOOPBACK}/library/python:3.12-slim" in text and "--base" in text


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_local_image_as_base(engine: str, store: Path, workdir: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    need(engine)
    runtime = get_runtime(engine)
    if runtime.image_id(LOCAL_IMAGE) is None:  # a freshly provisioned machine: load it ourselves
        if not BASE_ARCHIVE.is_file():
            unavailable(f"{BASE_ARCHIVE} is missing: run scripts/provision.sh")
        runtime.load_archive(BASE_ARCHIVE, LOCAL_IMAGE, workdir)
    image_id = runtime.image_id(LOCAL_IMAGE)
    assert image_id is not None and image_id.startswith("sha256:")
    start = time.monotonic()
    base = resolve_base("3.11", LOCAL_IMAGE, store=store, runtime=runtime)
    timed(f"--base local {engine} image (save)", start)
    assert (base.python, base.glibc) == ("3.11", "2.36")  # read from its files: no PYTHON_VERSION
    assert base.archive.name.startswith(f"{engine}-")
    assert image.inspect_archive(base.archive).image_id == base.image_id
    monkeypatch.setattr(runtime, "save", lambda *_a: pytest.fail("saved again"))
    assert resolve_base("3.11", LOCAL_IMAGE, store=store, runtime=runtime) == base
    with pytest.raises(VenvoyError, match=r"has Python 3\.11, not 3\.13"):
        resolve_base("3.13", LOCAL_IMAGE, store=store, runtime=runtime)
