"""Where venvoy keeps its cache and reads its config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from venvoy.core.config import load_config
from venvoy.core.errors import VenvoyError
from venvoy.core.paths import cache_dir, config_file


def test_venvoy_home_holds_everything(tmp_path: Path) -> None:
    env = {"VENVOY_HOME": str(tmp_path), "XDG_CACHE_HOME": "/x", "XDG_CONFIG_HOME": "/y"}
    assert Path(cache_dir(env)) == tmp_path / "cache"
    assert Path(config_file(env)) == tmp_path / "config.toml"


def test_venvoy_config_beats_venvoy_home(tmp_path: Path) -> None:
    env = {"VENVOY_HOME": str(tmp_path), "VENVOY_CONFIG": str(tmp_path / "other.toml")}
    assert Path(config_file(env)) == tmp_path / "other.toml"


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="XDG on Linux")
def test_xdg_directories(tmp_path: Path) -> None:
    # Caches live inside the one store (XDG_CACHE_HOME is not a second root).
    env = {"XDG_DATA_HOME": str(tmp_path / "d"), "XDG_CACHE_HOME": str(tmp_path / "c"),
           "XDG_CONFIG_HOME": str(tmp_path / "f")}
    assert Path(cache_dir(env)) == tmp_path / "d" / "venvoy" / "cache"
    assert Path(config_file(env)) == tmp_path / "f" / "venvoy" / "config.toml"
    home = {"HOME": str(tmp_path)}
    assert Path(cache_dir(home)) == tmp_path / ".local" / "share" / "venvoy" / "cache"
    assert Path(config_file(home)) == tmp_path / ".config" / "venvoy" / "config.toml"


def test_missing_config_is_empty(tmp_path: Path) -> None:
    assert load_config({"VENVOY_CONFIG": str(tmp_path / "none.toml")}) == {}


def test_config_is_read(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('runtime = "apptainer"\n[extra]\nx = 1\n')
    assert load_config({"VENVOY_CONFIG": str(path)}) == {"runtime": "apptainer", "extra": {"x": 1}}


@pytest.mark.parametrize("content", [b"runtime = \n", b"runtime = 'x'\nruntime = 'y'\n",
                                     b"\xff\xfe not utf-8"])
def test_bad_config_is_a_one_line_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(content)
    with pytest.raises(VenvoyError) as info:
        load_config({"VENVOY_CONFIG": str(path)})
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_config(tmp_path: Path) -> None:
    path = tmp_path / "dir.toml"
    path.mkdir()  # reading a directory fails with an OSError other than "not found"
    with pytest.raises(VenvoyError, match="cannot read config file"):
        load_config({"VENVOY_CONFIG": str(path)})
