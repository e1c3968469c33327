"""Exports rebuilt by the real programs, without venvoy: ``podman build`` from the
Containerfile export and ``apptainer build --fakeroot`` from the definition-file
export, both offline; and a wheelhouse imported into a fresh store that cannot
reach any package index. Each gives the same numbers as the original environment."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from venvoy.api import environments as envs
from venvoy.store.layout import Store, digest_hex
from venvoy.transport import exports

from .conftest import BASE_ARCHIVE, TEST_USER, Target, Venvoy, unavailable

pytestmark = pytest.mark.integration

ROOTFS = Path(os.environ.get("VENVOY_IT_ROOTFS", "/var/cache/venvoy-it/base-rootfs.tar"))
ROOT = Target("root", "", as_user=False)
CHECK = ("import numpy, six, sys; rng = numpy.random.default_rng(42); "
         "print(sys.prefix, sys.version_info[:2], numpy.__version__, six.__version__, "
         "repr(float(rng.standard_normal(1000).sum())))")
NO_NETWORK = "http://127.0.0.1:9"  # the discard port: nothing listens, every request fails


def venvoy_ok(venvoy: Venvoy, work: Path, home: Path, *args: str,
              extra: dict[str, str] | None = None) -> str:
    """Run the venvoy CLI as root with store ``home``; its stdout."""
    proc = venvoy.run(ROOT, list(args), cwd=work, timeout=900,
                      extra_env={"VENVOY_HOME": str(home), "VENVOY_OFFLINE": "1", **(extra or {})})
    assert proc.returncode == 0, (args, proc.stderr.decode()[-3000:])
    return proc.stdout.decode()


@dataclass
class Built:
    venvoy: Venvoy
    work: Path
    env: envs.Environment
    output: str  # CHECK's output from `venvoy run`


@pytest.fixture(scope="module")
def built(venvoy: Venvoy) -> Iterator[Built]:
    """numpy + six, built by root with rootful Podman on the Debian root file system."""
    if not ROOTFS.is_file() or not BASE_ARCHIVE.is_file():
        unavailable(f"{ROOTFS} or {BASE_ARCHIVE} missing: run scripts/provision.sh")
    if shutil.which("podman") is None:
        unavailable("podman is not installed: run scripts/provision.sh")
    work = Path(tempfile.mkdtemp(prefix="exports-", dir=venvoy.root))
    work.chmod(0o755)
    (work / "req.txt").write_text("numpy==2.*\nsix\n")
    home = work / "home"
    venvoy_ok(venvoy, work, home, "init", "t", "--python", "3.11", "-r", "req.txt",
              "--base", str(ROOTFS), "--runtime", "podman", "--quiet")
    output = venvoy_ok(venvoy, work, home, "run", "t", "--runtime", "podman", "--",
                       "python", "-c", CHECK)
    assert output.startswith("/opt/venv (3, 11) 2."), output
    yield Built(venvoy, work, envs.get("t", Store(home)), output)
    venvoy_ok(venvoy, work, home, "remove", "t")  # and its Podman image


def _run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=cwd, env=env)
    assert proc.returncode == 0, (argv, proc.stderr[-3000:])
    return proc.stdout


def test_containerfile_builds_offline_with_podman(built: Built) -> None:
    ctx = exports.export_containerfile(built.env, built.work / "ctx")
    assert (ctx / "Containerfile").is_file() and len(list((ctx / "wheels").iterdir())) == 2
    base = f"localhost/venvoy-base:{digest_hex(built.env.data['base_image_id'])[:12]}"
    assert subprocess.run(["podman", "image", "exists", base]).returncode == 0, base
    tag = f"localhost/venvoy-export-it:{os.getpid()}"
    try:
        _run(["podman", "build", "--network=none", "--build-arg", f"BASE={base}", "-t", tag, str(ctx)])
        out = _run(["podman", "run", "--rm", "--network=none", tag, "python", "-c", CHECK])
        assert out == built.output
        labels = json.loads(_run(["podman", "image", "inspect", "--format", "{{json .Labels}}", tag]))
        assert labels["org.venvoy.lock-hash"] == built.env.lock_hash
        assert labels["org.venvoy.identity"] == built.env.identity
        assert labels["org.venvoy.name"] == "t"
    finally:
        subprocess.run(["podman", "rmi", "-f", tag], capture_output=True)


def test_apptainer_def_builds_with_fakeroot(built: Built) -> None:
    if shutil.which("apptainer") is None:
        unavailable("apptainer is not installed: run scripts/provision.sh")
    out_dir = exports.export_apptainer_def(built.env, built.work / "apptainer")
    assert (out_dir / "t.def").is_file()
    pw = pwd.getpwnam(TEST_USER)
    sif_dir = Path(tempfile.mkdtemp(prefix="sif-", dir=built.work))
    os.chown(sif_dir, pw.pw_uid, pw.pw_gid)
    user = ["runuser", "-u", TEST_USER, "--", "env", "-i", f"HOME={pw.pw_dir}",
            "PATH=/usr/local/bin:/usr/bin:/bin", f"XDG_RUNTIME_DIR=/run/user/{pw.pw_uid}"]
    sif = sif_dir / "x.sif"
    # from another directory than the export: CONTEXT says where its files are
    _run([*user, "apptainer", "build", "--fakeroot", "--build-arg", "BOOTSTRAP=docker-archive",
          "--build-arg", f"BASE={BASE_ARCHIVE}", "--build-arg", f"CONTEXT={out_dir}",
          str(sif), str(out_dir / "t.def")], cwd=sif_dir)
    out = _run([*user, "apptainer", "exec", str(sif), "python", "-c", CHECK], cwd=sif_dir)
    assert out == built.output
    inspect = _run([*user, "apptainer", "inspect", "--labels", str(sif)], cwd=sif_dir)
    assert f"org.venvoy.lock-hash: {built.env.lock_hash}" in inspect


def test_wheelhouse_import_needs_no_index(built: Built) -> None:
    house = exports.export_wheelhouse(built.env, built.work)
    assert house.name == f"t-{built.env.lock_hash[:12]}.wheelhouse.tar"
    with tarfile.open(house) as tar:
        names = tar.getnames()
    assert names[0] == "manifest.json" and "pylock.toml" in names and "pylock.aarch64.toml" in names
    numpy = [n for n in names if n.startswith("wheels/numpy-")]
    assert any(n.endswith("_x86_64.whl") for n in numpy) and any(n.endswith("_aarch64.whl") for n in numpy)

    fresh = built.work / "fresh-home"
    blocked = {"VENVOY_HOME": str(fresh), "VENVOY_OFFLINE": "1", "UV_INDEX_URL": NO_NETWORK,
               "PIP_INDEX_URL": NO_NETWORK, "UV_OFFLINE": "1"}
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        blocked[var] = blocked[var.lower()] = NO_NETWORK
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VENVOY_") and k.upper() not in ("NO_PROXY", "PYTHONPATH")}
    env |= blocked | {"PYTHONPATH": str(built.venvoy.src)}
    # the network really is gone for this process: PyPI's files cannot be fetched
    probe = subprocess.run([sys.executable, "-c", "import urllib.request; urllib.request.urlopen("
                            "'https://files.pythonhosted.org/', timeout=10)"], env=env,
                           capture_output=True, timeout=60)
    assert probe.returncode != 0
    assert not (fresh / "cache" / "wheels").exists()
    script = ("import sys; from pathlib import Path; from venvoy.store.layout import Store; "
              "from venvoy.transport.exports import import_wheelhouse; "
              "e = import_wheelhouse(Path(sys.argv[1]), store=Store(), name='t2', runtime='podman', "
              "progress=lambda m: print(m, file=sys.stderr)); print(e.lock_hash, e.identity)")
    out = _run([sys.executable, "-c", script, str(house)], env=env, cwd=built.work)
    assert out.split() == [built.env.lock_hash, built.env.identity]
    ran = venvoy_ok(built.venvoy, built.work, fresh, "run", "t2", "--runtime", "podman", "--",
                    "python", "-c", CHECK, extra=blocked)
    assert ran == built.output
    venvoy_ok(built.venvoy, built.work, fresh, "remove", "t2")
