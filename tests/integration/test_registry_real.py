"""A real OCI registry: Debian's docker-registry (CNCF distribution 2.8) on loopback, with
TLS from a test CA and basic auth, started by scripts/provision-registry.sh (which also
pushed the test base image into it with skopeo). Its address, CA and user are in
/etc/venvoy-it/registry.env. The CA is not in the system trust store: the tests give it
to venvoy (SSL_CERT_FILE), Podman (--cert-dir) and Apptainer (SSL_CERT_FILE).

As the test user (as on a cluster): ``init`` with a base pulled from the registry by
venvoy itself, ``push``, ``pull`` under another name into another store, and the same
output, byte for byte, from both; the pushed image also runs with plain ``podman run``
and ``apptainer exec docker://``; each failure (unreachable, 401, 404, unknown CA,
timeout) is one line that says what to do.

Charliecloud builds the environment (the base comes through venvoy's registry client,
the same for every runtime without an image store; Apptainer's init would add two SIF
builds, about two minutes here, for no other code).
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import TEST_USER, Target, Venvoy, unavailable

pytestmark = pytest.mark.integration

ENV_FILE = Path(os.environ.get("VENVOY_IT_REGISTRY_ENV", "/etc/venvoy-it/registry.env"))
SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")
USER = Target("charliecloud", "charliecloud", as_user=True)
PROBE = ("import os, sys, six; print(six.__version__, sys.version, sys.prefix, "
         "os.environ.get('VIRTUAL_ENV'))")


@dataclass
class Setup:
    host: str
    base: str
    user: str
    password: str
    ca: Path
    cert_dir: Path
    root: Path
    env: dict[str, str]  # for venvoy as the test user: auth file, CA bundle, store A
    store_b: Path
    pushed: str = ""
    output: bytes = b""


def _read_env_file() -> dict[str, str]:
    if not ENV_FILE.is_file():
        unavailable(f"{ENV_FILE} missing: run scripts/provision.sh (it starts the test registry)")
    out = {}
    for line in ENV_FILE.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            out[key.strip()] = value.strip()
    return out


def _user_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, pwd.getpwnam(TEST_USER).pw_uid, -1)
    return path


def _auth_file(path: Path, host: str, user: str, password: str) -> Path:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def reg(venvoy: Venvoy) -> Iterator[Setup]:
    conf = _read_env_file()
    ca = Path(conf.get("VENVOY_IT_REGISTRY_CA", ""))
    if not ca.is_file() or shutil.which("ch-run") is None:
        unavailable("the test registry's CA or Charliecloud is missing: run scripts/provision.sh")
    root = Path(tempfile.mkdtemp(prefix="reg-", dir=venvoy.root))
    root.chmod(0o755)
    bundle = root / "ca-bundle.crt"  # the host's CAs (PyPI behind a proxy) plus the test CA
    bundle.write_bytes((SYSTEM_CA.read_bytes() if SYSTEM_CA.is_file() else b"") + ca.read_bytes())
    bundle.chmod(0o644)
    host = conf["VENVOY_IT_REGISTRY"]
    env = {"REGISTRY_AUTH_FILE": str(_auth_file(root / "auth.json", host,
                                                conf["VENVOY_IT_REGISTRY_USER"],
                                                conf["VENVOY_IT_REGISTRY_PASSWORD"])),
           "SSL_CERT_FILE": str(bundle), "VENVOY_HOME": str(_user_dir(root / "store-a")),
           "HOME": str(_user_dir(root / "home"))}
    (root / "req.txt").write_text("six\n")
    (root / "req.txt").chmod(0o644)
    yield Setup(host, conf["VENVOY_IT_REGISTRY_BASE"], conf["VENVOY_IT_REGISTRY_USER"],
                conf["VENVOY_IT_REGISTRY_PASSWORD"], ca,
                Path(conf.get("VENVOY_IT_REGISTRY_CERT_DIR", ca.parent)), root, env,
                _user_dir(root / "store-b"))


def _ok(proc: subprocess.CompletedProcess[bytes]) -> bytes:
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def built(venvoy: Venvoy, reg: Setup) -> Setup:
    """An environment built as the test user on a base venvoy pulled from the registry."""
    _ok(venvoy.run(USER, ["init", "regsrc", "-r", str(reg.root / "req.txt"), "--base", reg.base,
                          "--runtime", "charliecloud", "-q"], extra_env=reg.env, timeout=600))
    reg.output = _ok(venvoy.run(USER, ["run", "--runtime", "charliecloud", "regsrc", "--",
                                       "python", "-c", PROBE], extra_env=reg.env))
    return reg


def test_init_pulls_its_base_from_the_registry(built: Setup) -> None:
    bases = Path(built.env["VENVOY_HOME"]) / "bases"
    records = [json.loads(p.read_text()) for p in bases.glob("registry-*.json")]
    assert len(records) == 1, sorted(p.name for p in bases.iterdir())
    assert records[0]["ref"] == built.base
    assert records[0]["manifest_digest"].startswith("sha256:")
    conf = _read_env_file()
    assert records[0]["image_id"] == conf["VENVOY_IT_REGISTRY_BASE_ID"]  # what skopeo pushed
    assert built.output.startswith(b"1.17.0 3.11")


@pytest.fixture(scope="module")
def pushed(venvoy: Venvoy, built: Setup) -> Setup:
    out = _ok(venvoy.run(USER, ["push", "regsrc", f"{built.host}/it/regsrc:v1", "-q"],
                         extra_env=built.env, timeout=300))
    built.pushed = out.decode().strip()
    return built


def test_push_then_pull_gives_the_same_environment(venvoy: Venvoy, pushed: Setup) -> None:
    assert pushed.pushed.startswith(f"{pushed.host}/it/regsrc:v1@sha256:")
    other = {**pushed.env, "VENVOY_HOME": str(pushed.store_b)}  # another machine's store
    _ok(venvoy.run(USER, ["pull", pushed.pushed, "--name", "regcopy", "-q"], extra_env=other,
                   timeout=300))
    out = _ok(venvoy.run(USER, ["run", "--runtime", "charliecloud", "regcopy", "--", "python",
                                "-c", PROBE], extra_env=other))
    assert out == pushed.output
    a = json.loads((Path(pushed.env["VENVOY_HOME"]) / "envs" / "regsrc" / "env.json").read_text())
    b = json.loads((pushed.store_b / "envs" / "regcopy" / "env.json").read_text())
    assert (a["image_id"], a["identity"], a["lock_hash"]) == \
        (b["image_id"], b["identity"], b["lock_hash"])
    # pulling the same again is a no-op, a name in use is refused in one line
    _ok(venvoy.run(USER, ["pull", pushed.pushed, "--name", "regcopy", "-q"], extra_env=other))


def test_pushed_image_runs_with_plain_podman(pushed: Setup) -> None:
    if shutil.which("podman") is None:
        unavailable("podman is not installed: run scripts/provision.sh")
    ref = pushed.pushed.split("@")[0]
    env = {**os.environ, "PODMAN_IGNORE_CGROUPSV1_WARNING": "1"}
    try:
        subprocess.run(["podman", "pull", "-q", "--cert-dir", str(pushed.cert_dir), "--creds",
                        f"{pushed.user}:{pushed.password}", ref], check=True, capture_output=True,
                       env=env, timeout=300)
        out = subprocess.run(["podman", "run", "--rm", "--network=none", ref, "python", "-c",
                              PROBE], capture_output=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr.decode()[-2000:]
        assert out.stdout == pushed.output
    finally:
        subprocess.run(["podman", "rmi", "-f", ref], capture_output=True, env=env, timeout=120)


def test_pushed_image_runs_with_plain_apptainer(venvoy: Venvoy, pushed: Setup) -> None:
    if shutil.which("apptainer") is None:
        unavailable("apptainer is not installed: run scripts/provision.sh")
    cache = _user_dir(pushed.root / "apptainer-cache")
    uid = pwd.getpwnam(TEST_USER).pw_uid
    env = {"HOME": pushed.env["HOME"], "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           "XDG_RUNTIME_DIR": f"/run/user/{uid}", "APPTAINER_CACHEDIR": str(cache),
           "APPTAINER_DOCKER_USERNAME": pushed.user, "APPTAINER_DOCKER_PASSWORD": pushed.password,
           "SSL_CERT_FILE": str(pushed.ca)}  # Apptainer (Go) trusts the CA through SSL_CERT_FILE
    argv = ["runuser", "-u", TEST_USER, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()],
            "apptainer", "exec", f"docker://{pushed.pushed.split('@')[0]}", "python", "-c", PROBE]
    out = subprocess.run(argv, capture_output=True, timeout=600, cwd=pushed.root)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert out.stdout == pushed.output


# -- each failure is one line -------------------------------------------------------------

@pytest.fixture(scope="module")
def silent() -> Iterator[str]:
    """A loopback port that accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield f"127.0.0.1:{server.getsockname()[1]}"


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize(("case", "words"), [
    ("unreachable", ["cannot reach registry", "connection refused", "check the address"]),
    ("401", ["refused the credentials", "podman login"]),
    ("404", ["not found", "check the repository name and tag"]),
    ("unknown-ca", ["cannot verify the TLS certificate", "SSL_CERT_FILE"]),
    ("timeout", ["did not answer within 2 s", "VENVOY_REGISTRY_TIMEOUT"]),
])
def test_failures_are_one_line(venvoy: Venvoy, reg: Setup, silent: str, case: str,
                               words: list[str]) -> None:
    store = _user_dir(reg.root / f"store-{case}")
    env = {**reg.env, "VENVOY_HOME": str(store), "VENVOY_REGISTRY_TIMEOUT": "2"}
    ref = f"{reg.host}/it/regsrc:v1"
    if case == "unreachable":
        ref = f"{_closed_port()}/it/regsrc:v1"
    elif case == "401":
        env["REGISTRY_AUTH_FILE"] = str(_auth_file(reg.root / "wrong.json", reg.host, reg.user,
                                                   "not-the-password"))
    elif case == "404":
        ref = f"{reg.host}/it/no-such-repo:v1"
    elif case == "unknown-ca":
        env["SSL_CERT_FILE"] = str(SYSTEM_CA)
    elif case == "timeout":
        ref = f"{silent}/it/regsrc:v1"
    proc = venvoy.run(USER, ["pull", ref, "-q"], extra_env=env, timeout=60)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 125, err
    assert err.count("\n") == 1 and err.startswith("venvoy: error: "), err
    for word in words:
        assert word in err, err
    assert not (store / "envs").exists() or not list((store / "envs").iterdir())
