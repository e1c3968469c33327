"""SIFs made by venvoy itself (one pass over the layers, sqfstar, venvoy's SIF
writer), run by the real Apptainer and its ``singularity`` command, as an
unprivileged user. One image (the base plus two layers: a venv-like tree, a
root-only file, a file owned by another uid, and a file deleted again by a
whiteout) is converted twice, in two directories, by `venvoy load`."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pwd
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from .conftest import BASE_ARCHIVE, TEST_USER, Target, Venvoy, unavailable

USER = Target("sif", "apptainer", as_user=True)
ENV = {"VIRTUAL_ENV": "/opt/sifvenv", "PATH": "/opt/sifvenv/bin:/usr/local/bin:/usr/bin:/bin"}


def _layer(path: Path, entries: list[tuple[str, str, int, int]]) -> Path:
    """(name, data, uid, mode) regular files, or data "->DIR" for directories."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, uid, mode in entries:
            info = tarfile.TarInfo(name)
            info.uid = info.gid = uid
            info.mode, info.mtime = mode, 1_700_000_000
            if data == "->DIR":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                raw = data.encode()
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    return path


@pytest.fixture(scope="module")
def sif_image(venvoy: Venvoy) -> Path:
    from venvoy.image.oci import assemble

    if shutil.which("sqfstar") is None:
        unavailable("sqfstar (squashfs-tools) is not installed: run scripts/provision.sh")
    work = venvoy.root / "sif-real"
    work.mkdir(exist_ok=True)
    one = _layer(work / "one.tar", [
        ("opt/sifvenv", "->DIR", 0, 0o755), ("opt/sifvenv/bin", "->DIR", 0, 0o755),
        ("opt/sifvenv/bin/hello", "#!/bin/sh\necho hello-from-venv\n", 0, 0o755),
        ("opt/sifvenv/secret", "root only\n", 0, 0o600),
        ("opt/sifvenv/theirs", "uid 4321\n", 4321, 0o644),
        ("etc/sif-deleted", "gone above\n", 0, 0o644),
    ])
    two = _layer(work / "two.tar", [("etc/.wh.sif-deleted", "", 0, 0o644)])
    archive = work / "sif-image.tar"
    assemble(BASE_ARCHIVE, [one, two], archive, env=ENV, repo_tag="venvoy-sif-it:1")
    archive.chmod(0o644)
    work.chmod(0o755)
    return archive


def _load(venvoy: Venvoy, archive: Path, dest: Path, extra: dict[str, str] | None = None) -> Path:
    dest.mkdir(parents=True)
    os.chown(dest, pwd.getpwnam(TEST_USER).pw_uid, -1)
    proc = venvoy.run(USER, ["load", "--runtime", "apptainer", str(archive), "--name", "sifit",
                             "--dest", str(dest)], extra_env=extra, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    sif = Path(proc.stdout.decode().strip().splitlines()[-1])
    assert sif.is_file() and sif.suffix == ".sif"
    return sif


@pytest.fixture(scope="module")
def sifs(venvoy: Venvoy, sif_image: Path) -> tuple[Path, Path]:
    first = _load(venvoy, sif_image, venvoy.root / "sif-real" / "a")
    second = _load(venvoy, sif_image, venvoy.root / "sif-real" / "b" / "deeper")
    return first, second


def test_venvoy_made_the_sif_deterministically(sifs: tuple[Path, Path], sif_image: Path) -> None:
    from venvoy.image.oci import inspect_archive
    from venvoy.image.sif import read_sif_header, sif_uuid

    first = sifs[0]
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in sifs}
    assert len(digests) == 1, "the same image gave two different SIFs"
    header = read_sif_header(first)
    assert header["uuid"] == str(sif_uuid(inspect_archive(sif_image).image_id))
    listed = subprocess.run(["apptainer", "sif", "list", str(first)], capture_output=True,
                            text=True, check=True).stdout
    assert "FS (Squashfs/*System/amd64)" in listed


@pytest.mark.parametrize("runtime", ["apptainer", "singularity"])
def test_the_sif_runs(venvoy: Venvoy, sifs: tuple[Path, Path], runtime: str) -> None:
    script = ('echo "PATH=$PATH"; echo "VENV=$VIRTUAL_ENV"; hello; '
              'stat -c "secret=%u %a" /opt/sifvenv/secret; stat -c "theirs=%u" /opt/sifvenv/theirs; '
              'cat /opt/sifvenv/secret 2>/dev/null && echo readable || echo unreadable; '
              'test -e /etc/sif-deleted && echo deleted-present || echo deleted-absent; '
              'test -x /usr/bin/python3 && echo base-present; exit 7')
    proc = venvoy.run(Target("sif", runtime, as_user=True),
                      ["run", "--runtime", runtime, "--image", str(sifs[0]), "--", "sh", "-c", script])
    out = proc.stdout.decode()
    assert proc.returncode == 7, proc.stderr.decode()[-2000:]
    assert "PATH=/opt/sifvenv/bin:" in out and "VENV=/opt/sifvenv" in out
    assert "hello-from-venv" in out
    uid = pwd.getpwnam(TEST_USER).pw_uid
    secret = next(line for line in out.splitlines() if line.startswith("secret="))
    owner, mode = secret.removeprefix("secret=").split()
    assert int(owner) != uid and mode == "600"  # root's, not the user's
    assert "unreadable" in out
    assert "deleted-absent" in out and "base-present" in out


def test_runtime_info_names_the_compression(venvoy: Venvoy, sifs: tuple[Path, Path]) -> None:
    proc = venvoy.run(USER, ["runtime-info", "--json"])
    assert proc.returncode == 0, proc.stderr.decode()
    sif = json.loads(proc.stdout)["sif_compression"]
    assert sif["compression"] in ("zstd", "lz4", "gzip", "xz") and sif["why"].startswith("auto")
    fs = subprocess.run(["unsquashfs", "-o", "32768", "-s", str(sifs[0])], capture_output=True,
                        text=True, check=True).stdout
    assert f"Compression {sif['compression']}" in fs  # the SIF was made with what it says
    proc = venvoy.run(USER, ["runtime-info"], extra_env={"VENVOY_SIF_COMPRESSION": "gzip"})
    assert "sif:      gzip (set by VENVOY_SIF_COMPRESSION)" in proc.stdout.decode()
