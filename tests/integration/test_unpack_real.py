"""`venvoy load --runtime charliecloud` on a hostile image, for real, as root and as a user.

The crafted image is the real base image plus one layer that holds a symlink
``v -> CANARY`` and then a directory entry ``v`` (mode 000, uid 4242, dated
1970), a symlink ``ch -> CANARY`` (where venvoy writes the image's
environment) and whiteouts under links to CANARY. Unpacking must change
nothing in CANARY (a directory outside the image: as root it could be any
directory on the host), and the image must still run with ch-run.
"""

from __future__ import annotations

import io
import os
import pwd
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from venvoy.image.oci import assemble

from .conftest import BASE_ARCHIVE, TEST_USER, Target, Venvoy

pytestmark = pytest.mark.integration

TARGETS = [Target("charliecloud-root", "charliecloud", as_user=False),
           Target("charliecloud", "charliecloud", as_user=True)]


def _evil_layer(canary: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, kind: bytes, *, link: str = "", mode: int = 0o644, uid: int = 0,
                mtime: int = 1_700_000_000, data: bytes | None = None) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = kind, link, mode
            info.uid, info.gid, info.mtime = uid, uid, mtime
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)

        add("v", tarfile.SYMTYPE, link=str(canary))
        add("v", tarfile.DIRTYPE, mode=0o000, uid=4242, mtime=0)
        add("v/inside", tarfile.REGTYPE, data=b"inside\n")
        add("ch", tarfile.SYMTYPE, link=str(canary))
        add("w", tarfile.SYMTYPE, link=str(canary))
        add("w/.wh.keep", tarfile.REGTYPE, data=b"")
        add("w/.wh..wh..opq", tarfile.REGTYPE, data=b"")
    return buf.getvalue()


@pytest.fixture(scope="module")
def crafted(venvoy: Venvoy) -> Iterator[tuple[Path, Path]]:
    """(the crafted archive, the canary directory), the canary owned by the test user."""
    root = venvoy.root / "unpack-real"
    root.mkdir(mode=0o755)
    canary = root / "canary"
    canary.mkdir()
    (canary / "keep").write_text("keep\n")
    user = pwd.getpwnam(TEST_USER)
    for path in (canary, canary / "keep"):
        os.chown(path, user.pw_uid, user.pw_gid)
    canary.chmod(0o751)
    os.utime(canary, (1_600_000_000, 1_600_000_000))
    layer = root / "evil-layer.tar"
    layer.write_bytes(_evil_layer(canary))
    archive = root / "crafted.tar"
    assemble(BASE_ARCHIVE, [layer], archive, repo_tag="localhost/crafted:1")
    archive.chmod(0o644)
    yield archive, canary
    shutil.rmtree(root, ignore_errors=True)


def _snapshot(root: Path) -> dict[str, tuple[int, ...]]:
    out = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = os.lstat(path)
        out[str(path)] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size,
                          st.st_nlink)
    return out


@pytest.mark.parametrize("target", TARGETS, ids=[t.id for t in TARGETS])
def test_load_of_a_hostile_layer_changes_nothing_outside_and_still_runs(
        venvoy: Venvoy, target: Target, crafted: tuple[Path, Path]) -> None:
    archive, canary = crafted
    if shutil.which("ch-run") is None:
        pytest.fail("ch-run is not installed: run scripts/provision.sh", pytrace=False)
    dest = venvoy.root / "unpack-real" / f"images-{target.id}"
    dest.mkdir(mode=0o755)
    if target.as_user:
        os.chown(dest, target.uid, -1)
    before = _snapshot(canary)

    proc = venvoy.run(target, ["load", "--runtime", "charliecloud", str(archive),
                               "--name", "crafted:1", "--dest", str(dest)], timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()
    assert _snapshot(canary) == before, "unpacking changed a directory outside the image"
    image = Path(proc.stdout.decode().strip().splitlines()[-1])
    assert image.parent == dest
    assert (image / "v").is_dir() and not (image / "v").is_symlink()
    assert not (image / "ch").is_symlink() and (image / "ch" / "environment").is_file()
    if not target.as_user:
        assert os.lstat(image / "v").st_uid == 4242  # ownership kept as root, on v itself

    work = venvoy.root / "unpack-real" / f"work-{target.id}"
    work.mkdir(mode=0o755)
    if target.as_user:
        os.chown(work, target.uid, -1)
    run = venvoy.run(target, ["run", "--runtime", "charliecloud", "--image", str(image), "--",
                              "python3", "-c",
                              "import os; print(os.path.isdir('/v') and not os.path.islink('/v'))"],
                     cwd=work)
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.decode() == "True\n"
    assert _snapshot(canary) == before
