"""Runtime forms bound to the verified image, on the real runtimes.

- Two stores of the same user hold an environment of the same name and
  identity but different content; one archive even names the other's tag in
  its manifest (what a crafted import would do). Each store runs its own
  content, before and after the other loaded its image.
- A truncated cached SIF is not run (Apptainer would fail with exit 255 and no
  hint), not exported, and made again by the next run, which works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from venvoy.image.oci import add_files_layer, assemble
from venvoy.store import records
from venvoy.store.layout import Store, bound_tag, digest_hex

from .conftest import BASE_ARCHIVE, Target, Venvoy, unavailable

pytestmark = pytest.mark.integration

LOCK = """\
lock-version = "1.0"
created-by = "uv"
requires-python = ">=3.11"
"""
IDENTITY = "cd" * 32
NAME = "poisoned"


def make_store(root: Path, text: str, repo_tag: str, uid: int) -> tuple[Path, str]:
    """A store holding environment NAME whose image has /venvoy-content.txt = ``text``."""
    store = Store(root / f"store-{text}", environ={})
    layer = root / f"layer-{text}.tar"
    add_files_layer({"venvoy-content.txt": text.encode()}, layer)
    tmp = root / f"image-{text}.tar"
    info = assemble(BASE_ARCHIVE, [layer], tmp, repo_tag=repo_tag,
                    labels={"org.venvoy.identity": IDENTITY})
    dest = store.image_archive(info.image_id)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(tmp, dest)
    layer.unlink()
    data = {"name": NAME, "python": "3.11", "requirements": "", "base": None,
            "identity": IDENTITY, "image_id": info.image_id, "lock_hash": records.lock_hash(LOCK),
            "created": "2026-01-01T00:00:00Z", "packages": 0, "venvoy_version": "0.1.0",
            "recipe": "1", "built_with": "podman"}
    records.write_env(store, records.EnvRecord.from_dict(data, "test", ""), LOCK)
    for path in [store.root, *store.root.rglob("*")]:
        os.chown(path, uid, -1, follow_symlinks=False)
    return store.root, info.image_id


def runs(venvoy: Venvoy, target: Target, store: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return venvoy.run(target, ["run", NAME, "--runtime", target.runtime, *args, "--",
                               "cat", "/venvoy-content.txt"],
                      extra_env={"VENVOY_HOME": str(store)}, timeout=900)


OCI_TARGETS = [Target("docker", "docker", as_user=False),
               Target("podman-rootless", "podman", as_user=True)]


@pytest.mark.parametrize("target", OCI_TARGETS, ids=[t.id for t in OCI_TARGETS])
def test_same_name_and_identity_in_two_stores_each_runs_its_own(
        venvoy: Venvoy, target: Target) -> None:
    if shutil.which(target.runtime) is None:
        unavailable(f"{target.runtime} is not installed: run scripts/provision.sh")
    root = Path(tempfile.mkdtemp(prefix=f"forms-{target.id}-", dir=venvoy.root))
    root.chmod(0o755)
    legacy_tag = f"localhost/venvoy/{NAME}:{IDENTITY[:12]}"
    good, good_id = make_store(root, "good", legacy_tag, target.uid)
    # The crafted archive: same name and identity, other content, and its manifest
    # sets the tag the good store's image gets (and the old, identity-based one).
    evil, evil_id = make_store(root, "evil", bound_tag(legacy_tag, good_id), target.uid)
    assert good_id != evil_id
    try:
        first = runs(venvoy, target, good)
        assert first.returncode == 0, first.stderr.decode()[-2000:]
        assert first.stdout == b"good"
        other = runs(venvoy, target, evil)  # loads the crafted archive: its tags move
        assert other.returncode == 0, other.stderr.decode()[-2000:]
        assert other.stdout == b"evil"
        again = runs(venvoy, target, good)  # the fast path, after the other store's load
        assert again.returncode == 0, again.stderr.decode()[-2000:]
        assert again.stdout == b"good"
        dry = runs(venvoy, target, good, "--dry-run")
        assert good_id.encode() in dry.stdout, dry.stdout  # what runs is the ID, not a tag
        assert runs(venvoy, target, evil).stdout == b"evil"
    finally:
        for store in (good, evil):
            venvoy.run(target, ["remove", NAME], extra_env={"VENVOY_HOME": str(store)})
        argv, env = venvoy.argv(target, [])
        prefix = argv[:-3]  # runuser ... env -i VARS (or nothing, as root)
        for image_id in (good_id, evil_id):
            subprocess.run([*prefix, target.runtime, "rmi", "-f", image_id], env=env,
                           capture_output=True)


def test_truncated_cached_sif_is_rebuilt_and_never_exported(
        venvoy: Venvoy) -> None:
    target = Target("apptainer", "apptainer", as_user=True)
    if shutil.which("apptainer") is None:
        unavailable("apptainer is not installed: run scripts/provision.sh")
    root = Path(tempfile.mkdtemp(prefix="forms-sif-", dir=venvoy.root))
    root.chmod(0o755)
    store, image_id = make_store(root, "sifted", f"localhost/venvoy/{NAME}:x", target.uid)
    sif = store / "cache" / "sif" / f"{digest_hex(image_id)}.sif"
    log = store / "cache" / "conversions.log"

    first = runs(venvoy, target, store)
    assert first.returncode == 0, first.stderr.decode()[-2000:]
    assert first.stdout == b"sifted"
    assert (store / "cache" / "sif" / f"{digest_hex(image_id)}.sif.sha256").is_file()
    # venvoy wrote the SIF itself: Apptainer's builder (and its layer cache) never ran.
    assert not (store / "cache" / "apptainer").exists()
    size = sif.stat().st_size
    with open(sif, "r+b") as fh:
        fh.truncate(size // 2)

    out = store / "out.venvoy.tar.gz"
    exported = venvoy.run(target, ["export", NAME, "-o", str(out), "--quiet"],
                          extra_env={"VENVOY_HOME": str(store)}, cwd=store, timeout=600)
    assert exported.returncode == 0, exported.stderr.decode()[-2000:]
    assert sif.stat().st_size == size // 2  # export changed nothing in the store

    again = runs(venvoy, target, store)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert again.stdout == b"sifted"
    assert sif.stat().st_size == size
    assert len(log.read_text().splitlines()) == 2  # made twice: the damaged one was not run
    third = runs(venvoy, target, store)
    assert third.stdout == b"sifted"
    assert len(log.read_text().splitlines()) == 2  # and now reused
    with tarfile.open(out) as tar:
        assert "image.sif" not in " ".join(tar.getnames())
