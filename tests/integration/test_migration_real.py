"""The migration story, end to end: build on one machine as root with Podman,
export, import as an unprivileged user, run with Apptainer and Charliecloud,
and get byte-identical results."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from .conftest import TEST_USER, Target, Venvoy

pytestmark = pytest.mark.integration

ROOTFS = Path(os.environ.get("VENVOY_IT_ROOTFS", "/var/cache/venvoy-it/base-rootfs.tar"))
ROOT = Target("root", "", as_user=False)
USER = Target("user", "", as_user=True)

ANALYSIS = '''\
import hashlib, sys
import numpy as np

rng = np.random.default_rng(20261124)
data = rng.standard_normal((500, 40))
cov = np.cov(data, rowvar=False)
eig = np.linalg.eigvalsh(cov)
with open(sys.argv[1], "w") as fh:
    fh.write(f"numpy {np.__version__}\\n")
    fh.write(f"mean {data.mean()!r}\\nstd {data.std()!r}\\n")
    fh.write("eig " + " ".join(repr(float(x)) for x in eig[-5:]) + "\\n")
    fh.write("sha256 " + hashlib.sha256(cov.tobytes()).hexdigest() + "\\n")
'''


def test_build_with_podman_export_import_run_with_apptainer_and_charliecloud(
        venvoy: Venvoy) -> None:
    shared = venvoy.root / "migration"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "analysis.py").write_text(ANALYSIS)
    (shared / "requirements.txt").write_text("numpy==2.*\n")
    for f in shared.iterdir():
        f.chmod(0o644)
    root_store = {"VENVOY_HOME": str(venvoy.root / "mig-root"), "VENVOY_OFFLINE": "1"}
    user_home = venvoy.root / "mig-user"
    user_home.mkdir()
    os.chown(user_home, pwd.getpwnam(TEST_USER).pw_uid, -1)
    user_store = {"VENVOY_HOME": str(user_home), "VENVOY_OFFLINE": "1"}

    def ok(target: Target, env: dict[str, str], *args: str) -> str:
        proc = venvoy.run(target, list(args), cwd=shared, extra_env=env, timeout=900)
        assert proc.returncode == 0, (args, proc.stderr.decode()[-3000:])
        return proc.stdout.decode()

    # On the laptop: root, Podman.
    ok(ROOT, root_store, "init", "study", "-r", "requirements.txt", "--base", str(ROOTFS),
       "--runtime", "podman", "--quiet")
    ok(ROOT, root_store, "run", "study", "--runtime", "podman", "--",
       "python", "analysis.py", "results-podman.txt")
    archive = Path(ok(ROOT, root_store, "export", "study", "--output",
                      str(shared / "study.venvoy"), "--quiet").strip())
    assert archive.is_file()
    archive.chmod(0o644)

    # On the cluster: an ordinary user, no Podman image, Apptainer and Charliecloud.
    ok(USER, user_store, "import", str(archive), "--runtime", "apptainer", "--quiet")
    ok(USER, user_store, "run", "study", "--runtime", "apptainer", "--",
       "python", "analysis.py", "results-apptainer.txt")
    ok(USER, user_store, "run", "study", "--runtime", "charliecloud", "--",
       "python", "analysis.py", "results-charliecloud.txt")
    ok(USER, user_store, "run", "study", "--runtime", "singularity", "--",
       "python", "analysis.py", "results-singularity.txt")

    # Another machine with Docker: import under another name, run with Docker.
    other = {"VENVOY_HOME": str(venvoy.root / "mig-docker"), "VENVOY_OFFLINE": "1"}
    ok(ROOT, other, "import", str(archive), "--name", "study-copy", "--quiet")
    ok(ROOT, other, "run", "study-copy", "--runtime", "docker", "--",
       "python", "analysis.py", "results-docker.txt")

    reference = (shared / "results-podman.txt").read_bytes()
    assert reference.startswith(b"numpy 2.")
    assert (shared / "results-apptainer.txt").read_bytes() == reference
    assert (shared / "results-charliecloud.txt").read_bytes() == reference
    assert (shared / "results-singularity.txt").read_bytes() == reference
    assert (shared / "results-docker.txt").read_bytes() == reference
    assert (shared / "results-apptainer.txt").stat().st_uid == pwd.getpwnam(TEST_USER).pw_uid
    report = ok(USER, user_store, "verify", "study", "--runtime", "charliecloud")
    assert "OK, matches the lock" in report


API_SCRIPT = """
import json, os, sys
from venvoy import VenvoyEnvironment

work = sys.argv[1]
env = VenvoyEnvironment("api-env", python_version="3.11", runtime="podman",
                        packages=["six==1.17.0"], base=os.environ["ROOTFS"])
record = env.initialize()
again = env.initialize()                      # a no-op: same record
code = env.run("python -c 'import six, sys; "
               "open(\\"/data/out.txt\\", \\"w\\").write(six.__version__); sys.exit(3)'",
               additional_mounts=[work + ":/data"])
path = env.export_archive(os.path.join(work, "api-env.tar.gz"))
copy = VenvoyEnvironment("api-copy", runtime="charliecloud")
imported = copy.import_archive(path)
code2 = copy.run(["python", "-c", "import six; print(six.__version__)"])
print(json.dumps({"identity": record["identity"], "same": again == record, "code": code,
                  "imported": imported["identity"], "code2": code2}))
"""


def test_seed_python_api_end_to_end(venvoy: Venvoy) -> None:
    """The seed's documented API on real runtimes: initialize, run with
    additional_mounts, export_archive, import_archive."""
    import subprocess
    import sys

    work = venvoy.root / "api"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VENVOY_", "SLURM_"))}
    env.update(PYTHONPATH=str(venvoy.src), VENVOY_HOME=str(venvoy.root / "api-store"),
               VENVOY_OFFLINE="1", ROOTFS=str(ROOTFS))
    proc = subprocess.run([sys.executable, "-c", API_SCRIPT, str(work)], env=env, cwd=work,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["same"] is True
    assert result["code"] == 3, "the command's exit status comes back"
    assert (work / "out.txt").read_text() == "1.17.0"
    assert result["imported"] == result["identity"]
    assert result["code2"] == 0
    assert "1.17.0" in proc.stdout
