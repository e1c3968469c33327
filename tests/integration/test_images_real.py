"""`venvoy run --image REF` with every runtime, on the real runtimes and the CI registry
(issue 9, part 2): images from a registry, from the local Docker and Podman stores
and from an archive tar, each made into the runtime's form once.

The images are tiny (dash, the C library and one file saying which image it is,
about 3 MB, cut from the provisioned Debian base), so that a registry pull and
a SIF take seconds and the whole file stays within its time budget.
"""

from __future__ import annotations

import io
import os
import pwd
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from venvoy.image.oci import inspect_archive, rootfs_to_archive

from .conftest import (
    BASE_ARCHIVE,
    TEST_USER,
    Target,
    Venvoy,
    registry_auth_file,
    registry_settings,
    unavailable,
)

pytestmark = pytest.mark.integration

BASE_ROOTFS = BASE_ARCHIVE.with_name("base-rootfs.tar")
#: What the tiny images hold, besides the file that names them.
KEEP = {"./bin", "./lib", "./lib64", "./sbin", "./usr/bin/dash", "./usr/bin/sh",
        "./usr/lib64/ld-linux-x86-64.so.2", "./usr/lib/x86_64-linux-gnu/libc.so.6",
        "./usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "./etc/passwd", "./etc/group",
        "./etc/resolv.conf"}
DIRS = {".", "./etc", "./usr", "./usr/bin", "./usr/sbin", "./usr/lib", "./usr/lib64",
        "./usr/lib/x86_64-linux-gnu", "./dev", "./proc", "./sys", "./tmp", "./home", "./root",
        "./run", "./mnt", "./var", "./var/tmp", "./opt"}
#: The command every run runs: prints which image it is in.
WHICH = ["sh", "-c", 'read x </etc/venvoy-it-content && echo "$x"']

ROOT = Target("docker", "docker", as_user=False)
USER_TARGETS = {name: Target(name, name, as_user=True)
                for name in ("apptainer", "singularity", "charliecloud")}
REGISTRY_TARGETS = [ROOT, Target("podman-rootless", "podman", as_user=True),
                    *USER_TARGETS.values()]


def tiny_rootfs(out: Path, content: str) -> Path:
    """A root file system tar with dash, the C library and /etc/venvoy-it-content."""
    with tarfile.open(BASE_ROOTFS) as src, tarfile.open(out, "w") as dst:
        for member in src:
            name = member.name.rstrip("/")
            if name in KEEP or (member.isdir() and name in DIRS):
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        data = f"{content}\n".encode()
        info = tarfile.TarInfo("./etc/venvoy-it-content")
        info.size, info.mode = len(data), 0o644
        dst.addfile(info, _bytes(data))
    return out


def _bytes(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


@dataclass
class Registry:
    host: str
    env: dict[str, str]  # what a venvoy run needs: the CA and the credentials
    cert_dir: str
    creds: str
    root: Path  # readable by the test user
    archives: dict[str, Path]  # content -> Docker archive of a tiny image
    tag: str  # unique to this session

    def ref(self, name: str) -> str:
        return f"{self.host}/venvoy-it/{name}:{self.tag}"

    def push(self, content: str, ref: str) -> None:
        """Push a tiny image with ``podman push`` (never venvoy itself)."""
        loaded = subprocess.run(["podman", "load", "-q", "-i", str(self.archives[content])],
                                capture_output=True, text=True, check=False)
        assert loaded.returncode == 0, loaded.stderr
        local = f"localhost/venvoy-it-tiny:{content}"
        pushed = subprocess.run(["podman", "push", "--quiet", "--cert-dir", self.cert_dir,
                                 "--creds", self.creds, local, f"docker://{ref}"],
                                capture_output=True, text=True, check=False)
        assert pushed.returncode == 0, pushed.stderr


@pytest.fixture(scope="session")
def registry(venvoy: Venvoy) -> Iterator[Registry]:
    settings = registry_settings()
    for tool in ("podman", "docker"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed: run scripts/provision.sh")
    if not BASE_ROOTFS.is_file():
        unavailable(f"{BASE_ROOTFS} missing: run scripts/provision.sh")
    root = venvoy.root / "images-real"
    root.mkdir(mode=0o755)
    host = settings["VENVOY_IT_REGISTRY"]
    user, password = settings["VENVOY_IT_REGISTRY_USER"], settings["VENVOY_IT_REGISTRY_PASSWORD"]
    auth = registry_auth_file(root / "auth.json", host, user, password)
    archives = {}
    for content in ("one", "two", "docker-store", "podman-store"):
        rootfs = tiny_rootfs(root / f"{content}.rootfs.tar", content)
        archives[content] = root / f"{content}.tar"
        rootfs_to_archive(rootfs, archives[content], repo_tag=f"localhost/venvoy-it-tiny:{content}")
        archives[content].chmod(0o644)
        rootfs.unlink()
    reg = Registry(host, {"SSL_CERT_FILE": settings["VENVOY_IT_REGISTRY_CA"],
                          "REGISTRY_AUTH_FILE": str(auth)},
                   settings.get("VENVOY_IT_REGISTRY_CERT_DIR", ""), f"{user}:{password}", root,
                   archives, f"s{int(time.time())}-{os.getpid()}")
    reg.push("one", reg.ref("tiny"))
    # The local stores: one image in Docker's (root's), another in the test user's Podman.
    loaded = subprocess.run(["docker", "load", "-q", "-i", str(archives["docker-store"])],
                            capture_output=True, text=True, check=False)
    assert loaded.returncode == 0, loaded.stderr
    loaded = subprocess.run(["runuser", "-u", TEST_USER, "--", "podman", "load", "-q", "-i",
                             str(archives["podman-store"])], cwd="/", capture_output=True,
                            text=True, check=False, env={**os.environ,
                                                         "PODMAN_IGNORE_CGROUPSV1_WARNING": "1"})
    assert loaded.returncode == 0, loaded.stderr
    yield reg
    # The tiny images leave the runtimes' stores (as loaded, and as venvoy loaded them).
    ids = [inspect_archive(path).image_id for path in archives.values()]
    for prefix in ([], ["runuser", "-u", TEST_USER, "--"]):
        for tool in ("podman",) if prefix else ("docker", "podman"):
            subprocess.run([*prefix, tool, "rmi", "-f", *ids], cwd="/", capture_output=True,
                           check=False)


def fresh_store(venvoy: Venvoy, target: Target) -> Path:
    home = Path(tempfile.mkdtemp(prefix=f"images-{target.id}-", dir=venvoy.root))
    home.chmod(0o755)
    os.chown(home, target.uid, -1)
    return home


def run_image(venvoy: Venvoy, target: Target, home: Path, registry: Registry, image: str,
              extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return venvoy.run(target, ["run", "--runtime", target.runtime, "--image", image, "--", *WHICH],
                      cwd=home, extra_env={**registry.env, "VENVOY_HOME": str(home / "store"),
                                           **(extra or {})}, timeout=600)


def lines(path: Path, word: str = "") -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if f" {word} " in line or not word]


def pulls(home: Path, kind: str) -> int:
    return len(lines(home / "store" / "cache" / "pulls.log", kind))


def conversions(home: Path) -> int:
    return len(lines(home / "store" / "cache" / "conversions.log"))


def ok(proc: subprocess.CompletedProcess[bytes], expected: str) -> None:
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert proc.stdout.decode() == f"{expected}\n", proc.stderr.decode()[-3000:]


def need(target: Target) -> None:
    binary = {"charliecloud": "ch-run"}.get(target.runtime, target.runtime)
    if shutil.which(binary) is None:
        unavailable(f"{target.runtime} is not installed: run scripts/provision.sh")


@pytest.mark.parametrize("target", REGISTRY_TARGETS, ids=[t.id for t in REGISTRY_TARGETS])
def test_a_registry_reference_runs_with_every_runtime(venvoy: Venvoy, registry: Registry,
                                                      target: Target) -> None:
    need(target)
    home = fresh_store(venvoy, target)
    ref = registry.ref("tiny")
    ok(run_image(venvoy, target, home, registry, ref), "one")
    ok(run_image(venvoy, target, home, registry, f"docker://{ref}"), "one")  # the same image
    assert pulls(home, "pull") == 1 and conversions(home) == 1


def test_local_store_images_and_an_archive_for_runtimes_without_a_store(
        venvoy: Venvoy, registry: Registry) -> None:
    """A Docker-store image with Apptainer (a docker-group member), a Podman-store image
    with Charliecloud (rootless Podman's store is the user's own), and an archive tar
    with Charliecloud and Docker: saved or copied once, converted once."""
    apptainer = Target("docker-group-apptainer", "apptainer", as_user=True, group="docker")
    charliecloud = USER_TARGETS["charliecloud"]
    for target in (apptainer, charliecloud, ROOT):
        need(target)
    home = fresh_store(venvoy, charliecloud)
    for _ in range(2):
        # Docker names a loaded image as its archive does; Podman finds short names itself.
        ok(run_image(venvoy, apptainer, home, registry, "localhost/venvoy-it-tiny:docker-store"),
           "docker-store")
        ok(run_image(venvoy, charliecloud, home, registry, "venvoy-it-tiny:podman-store"),
           "podman-store")
    assert pulls(home, "save") == 2 and conversions(home) == 2
    archive = str(registry.archives["two"])
    ok(run_image(venvoy, charliecloud, home, registry, archive), "two")
    ok(run_image(venvoy, charliecloud, home, registry, archive), "two")
    assert pulls(home, "copy") == 1 and conversions(home) == 3
    root_home = fresh_store(venvoy, ROOT)
    ok(run_image(venvoy, ROOT, root_home, registry, archive), "two")  # loaded, run by its ID
    ok(run_image(venvoy, ROOT, root_home, registry, archive), "two")
    assert pulls(root_home, "copy") == 1 and conversions(root_home) == 1


def test_sixteen_concurrent_first_runs_make_one_pull_and_one_sif_and_a_moved_tag_is_seen(
        venvoy: Venvoy, registry: Registry) -> None:
    target = USER_TARGETS["apptainer"]
    need(target)
    ref = registry.ref("moving")
    registry.push("one", ref)
    home = fresh_store(venvoy, target)
    argv, env = venvoy.argv(target, ["run", "--runtime", "apptainer", "--image", ref, "--",
                                     *WHICH],
                            {**registry.env, "VENVOY_HOME": str(home / "store")})
    procs = [subprocess.Popen(argv, cwd=home, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(16)]
    done = [(p.communicate(timeout=600), p.returncode) for p in procs]
    for (out, err), code in done:
        assert code == 0 and out == b"one\n", err.decode()[-3000:]
    assert pulls(home, "pull") == 1 and conversions(home) == 1

    registry.push("two", ref)  # the tag moves: the next run notices
    ok(run_image(venvoy, target, home, registry, ref), "two")
    assert pulls(home, "pull") == 2 and conversions(home) == 2

    # The registry cannot be reached: the digest of the last run, with one warning.
    dead = {"HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    offline = run_image(venvoy, target, home, registry, ref, dead)
    ok(offline, "two")
    warnings = [w for w in offline.stderr.decode().splitlines() if w.startswith("venvoy: warning:")]
    assert len(warnings) == 1 and "the digest it had the last time" in warnings[0], warnings
    assert pulls(home, "pull") == 2 and conversions(home) == 2

    # Nothing cached and no registry: one line that says what went wrong, nothing run.
    other = fresh_store(venvoy, target)
    failed = run_image(venvoy, target, other, registry, ref, dead)
    err = failed.stderr.decode()
    assert failed.returncode != 0 and failed.stdout == b""
    assert "Traceback" not in err
    errors = [e for e in err.splitlines() if e.startswith("venvoy: error:")]
    assert len(errors) == 1, err
    assert not any((other / "store" / "cache" / "images").glob("*.tar"))


def test_an_image_in_no_store_is_one_clear_line(venvoy: Venvoy, registry: Registry) -> None:
    target = USER_TARGETS["charliecloud"]
    need(target)
    home = fresh_store(venvoy, target)
    proc = run_image(venvoy, target, home, registry, "venvoy-it-no-such-image:1")
    err = proc.stderr.decode()
    assert proc.returncode == 125 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("venvoy: error: image 'venvoy-it-no-such"), err
    assert "docker://HOST/REPO:TAG" in err and pwd.getpwuid(target.uid).pw_name == TEST_USER


def test_an_image_removed_from_docker_behind_our_back_is_loaded_again(
        venvoy: Venvoy, registry: Registry) -> None:
    need(ROOT)
    home = fresh_store(venvoy, ROOT)
    ref = registry.ref("tiny")
    ok(run_image(venvoy, ROOT, home, registry, ref), "one")
    dry = venvoy.run(ROOT, ["run", "--runtime", "docker", "--image", ref, "--dry-run", "--",
                            "true"], cwd=home, extra_env={**registry.env,
                                                          "VENVOY_HOME": str(home / "store")})
    image_id = dry.stdout.decode().split()[-2]
    assert image_id.startswith("sha256:"), dry.stdout  # what runs is the image ID
    removed = subprocess.run(["docker", "rmi", "-f", image_id], capture_output=True, check=False)
    assert removed.returncode == 0, removed.stderr
    ok(run_image(venvoy, ROOT, home, registry, ref), "one")
    assert pulls(home, "pull") == 1 and conversions(home) == 2


def test_the_provisioned_python_base_from_the_registry_runs_python(
        venvoy: Venvoy, registry: Registry) -> None:
    """A real image (Debian with Python, 250 MB) pulled and unpacked once for Charliecloud."""
    target = USER_TARGETS["charliecloud"]
    need(target)
    home = fresh_store(venvoy, target)
    ref = registry_settings()["VENVOY_IT_REGISTRY_BASE"]
    argv = ["run", "--runtime", "charliecloud", "--image", ref, "--", "python3", "-c",
            "import sys; print(sys.version_info[:2])"]
    env = {**registry.env, "VENVOY_HOME": str(home / "store")}
    for _ in range(2):
        proc = venvoy.run(target, argv, cwd=home, extra_env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        assert proc.stdout == b"(3, 11)\n"
    assert pulls(home, "pull") == 1 and conversions(home) == 1
