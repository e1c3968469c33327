"""A careless user's mistakes, with the real CLI and runtimes: nothing of theirs
is deleted and nothing runs on a wrong option."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from .conftest import BASE_ARCHIVE, Target, Venvoy

pytestmark = pytest.mark.integration

CH_TARGETS = [Target("charliecloud-root", "charliecloud", as_user=False),
              Target("charliecloud", "charliecloud", as_user=True)]


@pytest.mark.parametrize("target", CH_TARGETS, ids=[t.id for t in CH_TARGETS])
def test_load_does_not_delete_a_users_directory_at_dest(venvoy: Venvoy, target: Target) -> None:
    """`venvoy load --runtime charliecloud X.tar --name data --dest ~` once deleted ~/data."""
    home = Path(tempfile.mkdtemp(prefix=f"careless-{target.id}-", dir=venvoy.root))
    home.chmod(0o755)
    (home / "data").mkdir()
    (home / "data" / "thesis.tex").write_text("years of work\n")
    if target.as_user:
        for path in (home, home / "data", home / "data" / "thesis.tex"):
            os.chown(path, target.uid, -1)
    proc = venvoy.run(target, ["load", "--runtime", "charliecloud", str(BASE_ARCHIVE),
                               "--name", "data", "--dest", str(home)], timeout=600)
    err = proc.stderr.decode()
    assert proc.returncode == 125, err
    assert err.startswith("venvoy: error: ") and err.count("\n") == 1, err
    assert "is not a Charliecloud image" in err
    assert (home / "data" / "thesis.tex").read_text() == "years of work\n"
    assert sorted(p.name for p in home.iterdir()) == ["data"]  # no temporary left either


def test_an_empty_runtime_option_runs_nothing(venvoy: Venvoy, tmp_path: Path) -> None:
    """`--runtime ''` is refused; it once ran on the detected runtime."""
    target = Target("docker", "docker", as_user=False)
    marker = tmp_path / "ran"
    proc = venvoy.run(target, ["run", "--image", "venvoy-it-base:latest", "--runtime", "",
                               "--", "touch", str(marker)], cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 125, err
    assert err == ("venvoy: error: unknown runtime ''; choose one of: docker, podman, "
                   "apptainer, singularity, charliecloud, shifter, enroot\n")
    assert not marker.exists()


def test_a_symlinked_conversions_log_is_not_followed_by_root(venvoy: Venvoy,
                                                              tmp_path: Path) -> None:
    """Root's first Charliecloud run of an environment once appended its note
    through a symlink ``cache/conversions.log`` to a file outside the store
    (and hung forever on a FIFO there)."""
    home = tmp_path / "store"
    docker = Target("docker", "docker", as_user=False)
    ch = Target("charliecloud-root", "charliecloud", as_user=False)
    env = {"VENVOY_HOME": str(home)}
    made = venvoy.run(docker, ["init", "careless", "--base", str(BASE_ARCHIVE), "--runtime",
                               "docker", "-q"], extra_env=env, timeout=600)
    assert made.returncode == 0, made.stderr.decode()
    outside = tmp_path / "outside.txt"
    outside.write_text("canary\n")
    log = home / "cache" / "conversions.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    log.symlink_to(outside)
    proc = venvoy.run(ch, ["run", "careless", "--runtime", "charliecloud", "--", "true"],
                      cwd=tmp_path, extra_env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()
    assert outside.read_text() == "canary\n"
    assert not log.is_symlink() and "charliecloud" in log.read_text()
    venvoy.run(docker, ["remove", "careless"], extra_env=env)
