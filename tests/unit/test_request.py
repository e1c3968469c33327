"""Mount parsing and the defaults make_request applies for every runtime."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from venvoy.core.errors import BadRequest
from venvoy.runtime.request import Gpu, Mount, RunRequest, make_request, parse_env


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, f"error is not one line: {text!r}"
    return text


# -- Mount.parse -------------------------------------------------------------------

def test_mount_src_dst(tmp_path: Path) -> None:
    m = Mount.parse(f"{tmp_path}:/data")
    assert m == Mount(str(tmp_path), "/data", False)


def test_mount_read_only(tmp_path: Path) -> None:
    assert Mount.parse(f"{tmp_path}:/data:ro").read_only is True


def test_mount_explicit_rw(tmp_path: Path) -> None:
    assert Mount.parse(f"{tmp_path}:/data:rw") == Mount(str(tmp_path), "/data", False)


def test_mount_relative_source_resolved_against_cwd(tmp_path: Path) -> None:
    (tmp_path / "inputs").mkdir()
    m = Mount.parse("inputs:/in", cwd=str(tmp_path))
    assert m.source == str(tmp_path / "inputs")
    assert os.path.isabs(m.source)


def test_mount_relative_source_defaults_to_process_cwd(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "d").mkdir()
    monkeypatch.chdir(tmp_path)
    assert Mount.parse("./d:/d").source == os.path.join(os.getcwd(), "d")


def test_mount_target_is_normalised(tmp_path: Path) -> None:
    assert Mount.parse(f"{tmp_path}:/data/sub/").target == "/data/sub"


def test_mount_str_round_trips(tmp_path: Path) -> None:
    m = Mount.parse(f"{tmp_path}:/data:ro")
    assert str(m) == f"{tmp_path}:/data:ro"
    assert Mount.parse(str(m)) == m


def test_mount_missing_source(tmp_path: Path) -> None:
    with pytest.raises(BadRequest) as info:
        Mount.parse(f"{tmp_path}/nope:/data")
    assert "does not exist" in one_line(info.value)
    assert str(tmp_path / "nope") in str(info.value)


def test_mount_relative_target(tmp_path: Path) -> None:
    with pytest.raises(BadRequest) as info:
        Mount.parse(f"{tmp_path}:data")
    assert "not absolute" in one_line(info.value)


@pytest.mark.parametrize("suffix", [":rx", ":RO", ":", ":ro:extra", ":a:b"])
def test_mount_bad_mode_or_too_many_colons(tmp_path: Path, suffix: str) -> None:
    with pytest.raises(BadRequest) as info:
        Mount.parse(f"{tmp_path}:/data{suffix}")
    assert "bad mount" in one_line(info.value)
    assert "SRC:DST" in str(info.value)  # the hint says how to write it


@pytest.mark.parametrize("spec", ["", "/only-one-part", ":/data", "/tmp:"])
def test_mount_missing_parts(spec: str) -> None:
    with pytest.raises(BadRequest):
        Mount.parse(spec)


def test_mount_path_with_comma_is_refused(tmp_path: Path) -> None:
    odd = tmp_path / "a,b"
    odd.mkdir()
    with pytest.raises(BadRequest, match="','"):
        Mount.parse(f"{odd}:/data")


# -- parse_env -----------------------------------------------------------------------

def test_parse_env_keeps_value_after_first_equals() -> None:
    assert parse_env(["A=b=c", "EMPTY="]) == [("A", "b=c"), ("EMPTY", "")]


# -- make_request ----------------------------------------------------------------------

@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    return os.getcwd()


def test_cwd_is_mounted_at_same_path_and_is_workdir(in_tmp: str) -> None:
    req = make_request("img", ["python3", "x.py"], tty=False, environ={})
    assert req.mounts[0] == Mount(in_tmp, in_tmp, False)
    assert req.workdir == in_tmp
    assert req.argv == ("python3", "x.py")
    assert isinstance(req.argv, tuple)


def test_cwd_not_mounted_twice_when_user_mounts_it(in_tmp: str, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    req = make_request("img", ["true"], mounts=[f"{other}:{in_tmp}"], tty=False, environ={})
    assert [m.target for m in req.mounts] == [in_tmp]
    assert req.mounts[0].source == str(other)


def test_user_mounts_follow_cwd_mount(in_tmp: str, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    req = make_request("img", ["true"], mounts=["data:/data:ro"], tty=False, environ={})
    assert req.mounts == (Mount(in_tmp, in_tmp), Mount(str(tmp_path / "data"), "/data", True))


def test_mount_cwd_false(in_tmp: str) -> None:
    req = make_request("img", ["true"], mount_cwd=False, tty=False, environ={})
    assert req.mounts == ()
    assert req.workdir is None


def test_explicit_workdir(in_tmp: str) -> None:
    assert make_request("img", ["true"], workdir="/opt", tty=False, environ={}).workdir == "/opt"


def test_relative_workdir_refused(in_tmp: str) -> None:
    with pytest.raises(BadRequest, match="not absolute"):
        make_request("img", ["true"], workdir="opt", tty=False, environ={})


def test_pythonnousersite_is_set_by_default(in_tmp: str) -> None:
    req = make_request("img", ["true"], tty=False, environ={"PYTHONNOUSERSITE": "0"})
    assert req.env == (("PYTHONNOUSERSITE", "1"),)


def test_host_environment_is_not_copied(in_tmp: str) -> None:
    req = make_request("img", ["true"], tty=False, environ={"SECRET": "x", "HOME": "/root"})
    assert "SECRET" not in req.env_dict
    assert "HOME" not in req.env_dict


def test_env_pass_copies_only_named_existing_variables(in_tmp: str) -> None:
    host = {"OMP_NUM_THREADS": "8", "OTHER": "no", "EMPTY": ""}
    req = make_request("img", ["true"], env_pass=["OMP_NUM_THREADS", "MISSING", "EMPTY"],
                       tty=False, environ=host)
    assert req.env_dict == {"PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "8", "EMPTY": ""}


def test_env_pass_reads_os_environ_by_default(in_tmp: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VENVOY_TEST_PASS", "from-host")
    req = make_request("img", ["true"], env_pass=["VENVOY_TEST_PASS"], tty=False)
    assert req.env_dict["VENVOY_TEST_PASS"] == "from-host"


def test_env_overrides_env_pass_and_defaults(in_tmp: str) -> None:
    req = make_request("img", ["true"], env_pass=["FOO"], env=["FOO=cli", "PYTHONNOUSERSITE=0"],
                       tty=False, environ={"FOO": "host"})
    assert req.env_dict == {"PYTHONNOUSERSITE": "0", "FOO": "cli"}
    assert len(req.env) == 2  # no duplicates left for the adapters


def test_env_values_are_byte_exact(in_tmp: str) -> None:
    values = {
        "SPACES": "  a  b  ",
        "EQUALS": "x=y==z",
        "NEWLINE": "line1\nline2\n",
        "DOLLAR": "$HOME ${USER} `id` $(id)",
        "QUOTES": "'single' \"double\" \\back",
        "UNICODE": "Grüße ✓",
        "EMPTY": "",
    }
    req = make_request("img", ["true"], env=[f"{k}={v}" for k, v in values.items()],
                       tty=False, environ={"HOME": "/home/u"})
    for key, value in values.items():
        assert req.env_dict[key] == value


def test_env_mapping_is_accepted(in_tmp: str) -> None:
    req = make_request("img", ["true"], env={"A": "1=2"}, tty=False, environ={})
    assert req.env_dict["A"] == "1=2"


@pytest.mark.parametrize("item", ["NOEQUALS", "1A=x", "A-B=1", "=x", "A B=1", ""])
def test_bad_env_items(in_tmp: str, item: str) -> None:
    with pytest.raises(BadRequest) as info:
        make_request("img", ["true"], env=[item], tty=False, environ={})
    assert "NAME=VALUE" in one_line(info.value)


@pytest.mark.parametrize("name", ["BAD-NAME", "1X", "A=B", ""])
def test_bad_env_pass_names(in_tmp: str, name: str) -> None:
    with pytest.raises(BadRequest, match="--env-pass"):
        make_request("img", ["true"], env_pass=[name], tty=False, environ={name: "v"})


@pytest.mark.parametrize("name", ["A=B", "BAD NAME"])
def test_bad_env_names_in_mapping(in_tmp: str, name: str) -> None:
    with pytest.raises(BadRequest):
        make_request("img", ["true"], env={name: "c"}, tty=False, environ={})


@pytest.mark.parametrize(("gpu", "expected"), [("nvidia", Gpu.NVIDIA), ("amd", Gpu.AMD),
                                               (Gpu.AMD, Gpu.AMD), (None, None)])
def test_gpu_kinds(in_tmp: str, gpu, expected) -> None:
    assert make_request("img", ["true"], gpu=gpu, tty=False, environ={}).gpu is expected


def test_bad_gpu(in_tmp: str) -> None:
    with pytest.raises(BadRequest) as info:
        make_request("img", ["true"], gpu="intel", tty=False, environ={})
    assert "intel" in one_line(info.value)
    assert "--gpu nvidia" in str(info.value)


def test_empty_argv(in_tmp: str) -> None:
    with pytest.raises(BadRequest) as info:
        make_request("img", [], tty=False, environ={})
    assert "no command" in one_line(info.value)


def test_empty_image(in_tmp: str) -> None:
    with pytest.raises(BadRequest, match="no image"):
        make_request("", ["true"], tty=False, environ={})


def test_bad_mount_is_reported_by_make_request(in_tmp: str) -> None:
    with pytest.raises(BadRequest, match="does not exist"):
        make_request("img", ["true"], mounts=["missing:/m"], tty=False, environ={})


def test_tty_defaults_to_false_without_a_terminal(in_tmp: str, monkeypatch) -> None:
    monkeypatch.setattr(os, "isatty", lambda fd: False)
    assert make_request("img", ["true"], environ={}).tty is False
    monkeypatch.setattr(os, "isatty", lambda fd: True)
    assert make_request("img", ["true"], environ={}).tty is True


def test_request_records_caller_ids(in_tmp: str) -> None:
    req = make_request("img", ["true"], tty=False, environ={})
    assert (req.uid, req.gid) == (os.getuid(), os.getgid())
    assert RunRequest("i", ("a",), uid=5, gid=6).uid == 5


# -- the automatic mount of the current directory is checked as --mount is -------------------

@pytest.mark.parametrize("dirname", ["a:b", "a,b", "x\ny"])
def test_cwd_no_runtime_can_mount_is_one_clear_line(tmp_path: Path, monkeypatch, dirname) -> None:
    odd = tmp_path / dirname
    odd.mkdir()
    monkeypatch.chdir(odd)
    with pytest.raises(BadRequest) as info:
        make_request("img", ["true"])
    text = one_line(info.value)
    assert "current directory" in text and "cd to a directory" in text


def test_cwd_with_colon_is_fine_when_not_mounted(tmp_path: Path, monkeypatch) -> None:
    odd = tmp_path / "a:b"
    odd.mkdir()
    monkeypatch.chdir(odd)
    req = make_request("img", ["true"], mount_cwd=False)
    assert req.mounts == () and req.workdir is None
