"""The command line: exit codes, one-line errors, JSON output, argv passed byte-exact."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from venvoy import __version__
from venvoy.cli.main import format_runtime_info, main, split_command

from ._archives import docker_archive, layer_tar


@pytest.fixture
def cli_env(fakebin, monkeypatch: pytest.MonkeyPatch):
    """os.environ pointing at the fake runtimes; exec'ing anything is forbidden here."""
    for key, value in fakebin.env().items():
        monkeypatch.setenv(key, value)

    parent, real_exec = os.getpid(), os.execve

    def no_exec(*args, **kwargs):
        if os.getpid() != parent:  # a forked child starting a (fake) runtime: fine
            return real_exec(*args, **kwargs)
        raise AssertionError(f"the test tried to exec {args[:2]}")

    monkeypatch.setattr(os, "execve", no_exec)
    return fakebin


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("venvoy: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"venvoy {__version__}"


def test_no_command_prints_help_and_returns_2(capsys) -> None:
    assert main([]) == 2
    assert "runtime-info" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--bogus"], ["run", "--image", "x", "--bogus", "--", "true"],
                                  ["frobnicate"], ["run", "--gpu", "intel", "--image", "x"]])
def test_parser_errors_are_one_line_and_exit_2(capsys, argv) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    line = one_error_line(capsys)
    assert "--help" in line


def test_unknown_runtime(cli_env, capsys) -> None:
    code = main(["run", "--runtime", "rocket", "--image", "img", "--no-tty", "--", "true"])
    assert code == 125
    line = one_error_line(capsys)
    assert "unknown runtime 'rocket'" in line


def test_unknown_runtime_from_environment(cli_env, capsys, monkeypatch) -> None:
    monkeypatch.setenv("VENVOY_RUNTIME", "rocket")
    assert main(["run", "--image", "img", "--", "true"]) == 125
    assert "unknown runtime" in one_error_line(capsys)


def test_runtime_not_installed(cli_env, capsys) -> None:
    assert main(["run", "--runtime", "podman", "--image", "img", "--", "true"]) == 125
    assert "podman is not installed here" in one_error_line(capsys)


def test_missing_image_file_for_apptainer(cli_env, capsys, tmp_path: Path) -> None:
    cli_env.add("apptainer")
    missing = tmp_path / "missing.sif"
    assert main(["run", "--runtime", "apptainer", "--image", str(missing), "--", "true"]) == 125
    line = one_error_line(capsys)
    assert f"image file {missing} does not exist" in line
    assert cli_env.calls("apptainer") == 0  # refused before starting anything


def test_run_without_command(cli_env, capsys) -> None:
    """A usage mistake: exit 2 like every other one (125 is for "the container never ran")."""
    assert main(["run", "--image", "img"]) == 2
    assert "no command given" in one_error_line(capsys)


def test_run_with_empty_command_after_dashes(cli_env, capsys) -> None:
    assert main(["run", "--image", "img", "--"]) == 2
    assert "no command given" in one_error_line(capsys)


def test_bad_mount(cli_env, capsys, tmp_path: Path) -> None:
    code = main(["run", "--image", "img", "-v", f"{tmp_path}/nope:/data", "--", "true"])
    assert code == 125
    assert "does not exist" in one_error_line(capsys)


def test_bad_mount_syntax(cli_env, capsys, tmp_path: Path) -> None:
    assert main(["run", "--image", "img", "-v", f"{tmp_path}:/a:b:c", "--", "true"]) == 125
    assert "bad mount" in one_error_line(capsys)


def test_bad_env(cli_env, capsys) -> None:
    assert main(["run", "--image", "img", "-e", "1BAD=x", "--", "true"]) == 125
    assert "bad --env" in one_error_line(capsys)


def test_bad_mount_with_newline_is_still_one_line(cli_env, capsys, tmp_path: Path) -> None:
    assert main(["run", "--image", "img", "-v", f"{tmp_path}/a\nb:/data", "--", "true"]) == 125
    one_error_line(capsys)


def test_gpu_without_devices(cli_env, capsys, tmp_path: Path, monkeypatch) -> None:
    cli_env.add("apptainer")
    sif = tmp_path / "x.sif"
    sif.touch()
    real = os.path.exists
    monkeypatch.setattr(os.path, "exists",
                        lambda p: False if str(p).startswith("/dev/") else real(p))
    code = main(["run", "--runtime", "apptainer", "--gpu", "nvidia", "--image", str(sif),
                 "--", "nvidia-smi"])
    assert code == 125
    line = one_error_line(capsys)
    assert "--gpu nvidia" in line and "drop --gpu" in line


# -- runtime-info ----------------------------------------------------------------------------

def test_runtime_info_json(cli_env, capsys) -> None:
    cli_env.add("docker", version="24.0.7")
    cli_env.add("apptainer", version="1.3.4")
    assert main(["runtime-info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["runtime"] == "docker"
    assert info["version"] == "24.0.7"
    assert info["is_hpc"] is False
    assert {r["name"] for r in info["runtimes"]} == {"docker", "apptainer"}


def test_runtime_info_json_with_runtime_option(cli_env, capsys) -> None:
    cli_env.add("docker")
    cli_env.add("apptainer", version="1.3.4")
    assert main(["runtime-info", "--runtime", "apptainer", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["runtime"] == "apptainer"
    assert info["reason"] == "requested by --runtime"


def test_runtime_info_text(cli_env, capsys, monkeypatch) -> None:
    cli_env.add("apptainer", version="1.3.4")
    cli_env.add("docker")
    cli_env.add("enroot", version="3.4.1")
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    assert main(["runtime-info"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("runtime:  apptainer 1.3.4 (")
    assert "SLURM_JOB_ID" in out
    assert "[untested adapter]" in out  # enroot
    assert "why:" in out


def test_runtime_info_without_runtime_exits_1(cli_env, capsys) -> None:
    assert main(["runtime-info"]) == 1
    out = capsys.readouterr().out
    assert "runtime:  none: no usable container runtime" in out
    assert "found:    nothing on PATH" in out


def test_runtime_info_unknown_runtime_exits_1(cli_env, capsys) -> None:
    assert main(["runtime-info", "--runtime", "rocket", "--json"]) == 1
    assert "unknown runtime" in json.loads(capsys.readouterr().out)["error"]


def test_format_runtime_info_unusable_row() -> None:
    text = format_runtime_info({
        "runtime": None, "error": "nothing", "is_hpc": False, "hpc_signal": None,
        "runtimes": [{"name": "docker", "path": "/usr/bin/docker", "version": None,
                      "rootless": False, "usable": False, "problem": "no socket", "tested": True}],
    })
    assert "unusable: no socket" in text
    assert "docker" in text and "?" in text


# -- run: argv reaches the runtime byte-exact -------------------------------------------------

def test_split_command_only_splits_run() -> None:
    assert split_command(["run", "--image", "i", "--", "ls", "--", "-l"]) == (
        ["run", "--image", "i"], ["ls", "--", "-l"])
    assert split_command(["runtime-info", "--"]) == (["runtime-info", "--"], None)


@pytest.fixture
def recording_docker(cli_env, tmp_path: Path):
    """A fake docker that records its argv (NUL-separated) and exits with $FAKE_RC."""
    out = tmp_path / "docker-argv"
    cli_env.add("docker", body=(
        'case "$1" in\n'
        f"  run) printf '%s\\0' \"$@\" > '{out}'; exit \"${{FAKE_RC:-0}}\" ;;\n"
        '  image) exit "${FAKE_INSPECT_RC:-0}" ;;\n'
        "esac\n"))
    return out


def test_run_passes_argv_byte_exact_and_exit_code(recording_docker, capsys, monkeypatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAKE_RC", "7")
    monkeypatch.setenv("KEEP_ME", "passed")
    command = ["python3", "-c", "print(1)", "--runtime", "x", "--", "$HOME", "a b", "", "ü\n"]
    with pytest.raises(SystemExit) as info:
        main(["run", "--runtime", "docker", "--image", "py:3", "--no-tty", "-e", "A=1 2",
              "--env-pass", "KEEP_ME", "--", *command])
    assert info.value.code == 7
    argv = recording_docker.read_bytes().decode().split("\0")[:-1]
    assert argv[0] == "run"
    i = argv.index("py:3")
    assert argv[i + 1:] == command
    cwd = os.getcwd()
    assert ["-v", f"{cwd}:{cwd}"] == argv[argv.index("-v"):argv.index("-v") + 2]
    assert ["-w", cwd] == argv[argv.index("-w"):argv.index("-w") + 2]
    env = [argv[k + 1] for k, a in enumerate(argv[:i]) if a == "-e"]
    assert env == ["PYTHONNOUSERSITE=1", "KEEP_ME=passed", "A=1 2"]
    assert "-t" not in argv[:i]


def test_run_exit_125_with_missing_image_is_explained(recording_docker, capsys, monkeypatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAKE_RC", "125")
    monkeypatch.setenv("FAKE_INSPECT_RC", "1")
    assert main(["run", "--runtime", "docker", "--image", "nosuch:1", "--", "true"]) == 125
    line = one_error_line(capsys)
    assert "image 'nosuch:1' not found by docker" in line
    assert "docker load" in line


def test_run_exit_125_with_present_image_is_passed_on(recording_docker, monkeypatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAKE_RC", "125")
    with pytest.raises(SystemExit) as info:
        main(["run", "--runtime", "docker", "--image", "img", "--", "true"])
    assert info.value.code == 125


def test_load_missing_archive(cli_env, capsys, tmp_path: Path) -> None:
    assert main(["load", str(tmp_path / "nope.tar"), "--name", "x:1"]) == 125
    assert "does not exist" in one_error_line(capsys)


def test_load_for_charliecloud(cli_env, capsys, tmp_path: Path) -> None:
    cli_env.add("ch-run")
    archive = docker_archive(tmp_path / "img.tar", [layer_tar([("file", "hello", "hi")])])
    code = main(["load", str(archive), "--name", "demo:1", "--runtime", "charliecloud",
                 "--dest", str(tmp_path / "images")])
    assert code == 0
    out = capsys.readouterr().out.strip()
    assert out == str(tmp_path / "images" / "demo_1")
    assert (Path(out) / "hello").read_text() == "hi"


def test_load_defaults_to_the_cache(cli_env, capsys, tmp_path: Path) -> None:
    cli_env.add("ch-run")
    archive = docker_archive(tmp_path / "img.tar", [layer_tar([("file", "hello", "hi")])])
    assert main(["load", str(archive), "--name", "demo:1", "--runtime", "charliecloud"]) == 0
    out = Path(capsys.readouterr().out.strip())
    from venvoy.store.layout import Store

    assert out == Store().load_dest("charliecloud") / "demo_1"
    assert out.is_relative_to(Path(os.environ["VENVOY_HOME"]) / "cache")
    assert (out / "hello").read_text() == "hi"


# -- the fast `run` parser must agree with argparse -----------------------------------------------

FIELDS = ("image", "runtime", "workdir", "gpu", "mount", "env", "env_pass", "tty", "dry_run")


def parse_both(words: list[str]):
    from venvoy.cli.main import build_parser, fast_run_args

    fast = fast_run_args(words)
    head, command = split_command(["run", *words])
    try:
        ns = build_parser(command_after_dashes=command is not None).parse_args(head)
    except SystemExit:
        ns = None
    return fast, ns, command


@pytest.mark.parametrize("words", [
    ["--image", "img", "--", "python3", "-c", "1"],
    ["--image=img", "--runtime=apptainer", "--", "x"],
    ["-v", "/a:/b", "--mount", "/c:/d:ro", "--mount=/e:/f", "-e", "A=1", "--env", "B=x=y",
     "--env=C=", "--env-pass", "HOME", "--env-pass=USER", "--image", "i", "--", "x", "--", "y"],
    ["-w", "/opt", "--gpu", "amd", "-t", "--image", "i", "--", "x"],
    ["--workdir=/opt", "--gpu=nvidia", "--no-tty", "--dry-run", "--image", "i", "--", "x"],
    ["--image", "first", "--image", "second", "--", "x"],
    ["--image", "", "--", "x"],
    ["--image", "i", "-e", "A=--not-an-option", "--"],
    ["-vA:/b", "-w/tmp", "-eA=1", "-wfoo=bar", "--image", "i", "--", "x"],
    ["NAME", "--runtime", "podman", "--env", "A=1", "-w/tmp", "--", "CMD"],
    ["--runtime", "podman", "NAME", "-t", "--dry-run", "--", "CMD"],
    ["", "--", "x"],
])
def test_fast_parser_agrees_with_argparse(capsys, words: list[str]) -> None:
    fast, ns, command = parse_both(words)
    assert fast is not None, "expected the fast path to handle this"
    assert ns is not None, capsys.readouterr().err
    args, fast_command = fast
    assert fast_command == command
    for field in FIELDS:
        assert getattr(args, field) == getattr(ns, field), field


@pytest.mark.parametrize("words", [
    ["--image", "i"],  # no `--`
    ["--help", "--", "x"],
    ["--", "x"],  # no --image
    ["--image", "i", "--gpu", "intel", "--", "x"],
    ["--image", "i", "--bogus", "--", "x"],
    ["--im", "i", "--", "x"],  # an abbreviation: argparse's business
    ["-v=/a:/b", "--image", "i", "--", "x"],
    ["--image", "i", "--env=-A=1", "--", "x"],
    ["-t", "-t", "--image", "i", "--", "x"],
    ["-tv/a:/b", "NAME", "--", "x"],  # combined short options
    ["--tty=yes", "--image", "i", "--", "x"],
    ["--image", "i", "-e", "--", "x"],  # option without its value
    ["stray", "--image", "i", "--", "x"],
])
def test_fast_parser_leaves_unusual_lines_to_argparse(words: list[str]) -> None:
    from venvoy.cli.main import fast_run_args

    assert fast_run_args(words) is None


@pytest.mark.parametrize("words", [
    ["--tty", "--no-tty", "--image", "i", "--", "x"],
    ["--image", "i", "-e", "-A=1", "--", "x"],
    ["--image", "-t", "--", "x"],
    ["NAME", "--runtme", "podman", "--mount", "D:/data:ro", "--", "x"],
    ["NAME", "--gpu", "intel", "--", "x"],
    ["NAME", "--gpu", "intel", "--gpu", "nvidia", "--", "x"],
    ["NAME", "--dry-run", "-x", "--", "x"],
    ["NAME", "other", "--", "x"],
    ["NAME", "--tty=yes", "--", "x"],
])
def test_fast_parser_rejects_what_argparse_rejects(capsys, words: list[str]) -> None:
    fast, ns, _ = parse_both(words)
    assert ns is None  # argparse refuses these
    assert fast is None  # so the fast path must hand them over


def test_dry_run_prints_the_runtime_command(cli_env, capsys, tmp_path: Path, monkeypatch) -> None:
    import shlex

    cli_env.add("apptainer")
    sif = tmp_path / "x.sif"
    sif.touch()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["run", "--dry-run", "--runtime", "apptainer", "--image", str(sif), "-e", "A=a b",
              "--", "python3", "-c", "print('hi there')"])
    assert info.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    words = shlex.split(out[0])
    assert words[0] == "env"
    assert "APPTAINERENV_A=a b" in words
    assert "APPTAINERENV_PYTHONNOUSERSITE=1" in words
    i = words.index(str(cli_env.dir / "apptainer"))
    assert words[i + 1:i + 3] == ["exec", "--cleanenv"]
    assert words[-4:] == [str(sif), "python3", "-c", "print('hi there')"]
    assert cli_env.calls("apptainer") == 0  # nothing was run


def test_run_without_name_or_image_is_a_usage_error(capsys) -> None:
    assert main(["run", "--", "true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("venvoy: error:") and "NAME or --image" in err


# -- no option is ever dropped: whatever parses the line, every option counts ----------------

class Ran(Exception):
    """Raised instead of running: what cmd_run was given."""

    def __init__(self, args, command) -> None:
        super().__init__()
        self.args_, self.command = args, command


@pytest.fixture
def captured_run(monkeypatch: pytest.MonkeyPatch):
    import venvoy.cli.main as cli

    def fake(args, command):
        raise Ran(args, command)

    monkeypatch.setattr(cli, "cmd_run", fake)

    def parse(argv: list[str]) -> Ran:
        with pytest.raises(Ran) as info:
            main(argv)
        return info.value

    return parse


@pytest.mark.parametrize("spelling", [
    ["--runtime", "podman", "--env", "A=1", "-w/tmp"],  # the fast parser's
    ["--runt", "podman", "--env", "A=1", "-w/tmp"],  # an abbreviation: argparse's
    ["--runtime=podman", "-eA=1", "--workdir", "/tmp", "-t", "-t"],  # argparse's too
])
def test_options_after_the_name_are_not_dropped(captured_run, spelling) -> None:
    ran = captured_run(["run", "NAME", *spelling, "--", "CMD", "-w", "x"])
    assert ran.args_.name == "NAME"
    assert ran.args_.runtime == "podman"
    assert ran.args_.env == ["A=1"]
    assert ran.args_.workdir == "/tmp"
    assert ran.command == ["CMD", "-w", "x"]


@pytest.mark.parametrize(("argv", "says"), [
    (["run", "NAME", "--runtme", "podman", "--mount", "D:/data:ro", "--", "x"], "--runtme"),
    (["run", "NAME", "--gpu", "intel", "--", "x"], "invalid choice: 'intel'"),
    (["run", "NAME", "--gpu", "intel", "--gpu", "nvidia", "--", "x"], "invalid choice"),
    (["run", "NAME", "--bogus", "--", "x"], "--bogus"),
    (["run", "NAME", "--dry-run", "-x", "--", "x"], "-x"),
    (["run", "NAME", "other", "--", "x"], "other"),
    (["run", "NAME", "--tty", "--no-tty", "--", "x"], "not allowed"),
    # no `--`: an option after NAME is not the command
    (["run", "NAME", "-e", "A=1", "python3"], "option -e after NAME"),
    (["run", "NAME", "--runtime", "podman"], "option --runtime after NAME"),
])
def test_a_wrong_option_is_refused_never_run_with_defaults(captured_run, capsys, argv,
                                                            says) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    line = one_error_line(capsys)
    assert says in line, line


def test_command_without_dashes_keeps_its_own_options(captured_run) -> None:
    ran = captured_run(["run", "-e", "A=1", "--image", "img", "python3", "-e", "B=2", "--x"])
    assert ran.args_.image == "img" and ran.args_.name is None and ran.args_.env == ["A=1"]
    assert ran.command == ["python3", "-e", "B=2", "--x"]
    ran = captured_run(["run", "--runtime", "podman", "NAME", "python3", "-V"])
    assert (ran.args_.name, ran.args_.runtime, ran.command) == ("NAME", "podman",
                                                                ["python3", "-V"])


def test_dry_run_with_an_unknown_option_runs_nothing(cli_env, capsys, tmp_path: Path,
                                                     monkeypatch) -> None:
    cli_env.add("apptainer")
    sif = tmp_path / "x.sif"
    sif.touch()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["run", "--runtime", "apptainer", "--image", str(sif), "--dry-run", "-x", "--",
              "true"])
    assert info.value.code == 2
    assert "-x" in one_error_line(capsys)
    assert cli_env.calls("apptainer") == 0


# -- one runtime choice, one code path --------------------------------------------------------

class FakeEnvironment:
    def __init__(self, root: Path) -> None:
        self.archive = root / "image.tar"
        self.image_id = "sha256:" + "ab" * 32
        self.tag = "localhost/venvoy/demo:0123456789ab"
        self.store = None


class Executed(Exception):
    pass


def test_run_chooses_the_runtime_once_and_runs_through_the_library(
        cli_env, monkeypatch, tmp_path: Path) -> None:
    """An environment without its runtime form yet: the CLI's runtime goes to the
    library's run as is (before, prepare_run chose it a second time)."""
    import venvoy.api.environments as envs
    import venvoy.runtime.detect as detect
    import venvoy.runtime.runner as runner
    import venvoy.store.forms as forms

    cli_env.add("apptainer")
    monkeypatch.chdir(tmp_path)
    chosen = []
    real_choose = detect.choose_runtime

    def counting_choose(*a, **kw):
        chosen.append(a)
        return real_choose(*a, **kw)

    def fake_exec(rt, req):
        raise Executed(rt, req)

    made = []
    monkeypatch.setattr(detect, "choose_runtime", counting_choose)
    monkeypatch.setattr(envs, "get", lambda name, store=None: FakeEnvironment(tmp_path))
    monkeypatch.setattr(forms, "ensure_native",
                        lambda store, rt, *a: made.append(rt) or str(tmp_path / "made.sif"))
    monkeypatch.setattr(runner, "exec_run", fake_exec)
    with pytest.raises(Executed) as info:
        main(["run", "demo", "--runtime", "apptainer", "-e", "A=1", "--", "python3", "-V"])
    rt, req = info.value.args
    assert len(chosen) == 1, chosen
    assert made == [rt] and rt.name == "apptainer"
    assert req.image == str(tmp_path / "made.sif")
    assert ("A", "1") in req.env and req.argv == ("python3", "-V")


def test_prepare_run_takes_a_chosen_runtime_and_checks_the_request_first(
        cli_env, monkeypatch, tmp_path: Path) -> None:
    import venvoy.api.environments as envs
    import venvoy.runtime.detect as detect
    import venvoy.store.forms as forms
    from venvoy.core.errors import BadRequest

    cli_env.add("apptainer")
    rt = detect.choose_runtime("apptainer").runtime
    monkeypatch.setattr(envs, "get", lambda name, store=None: FakeEnvironment(tmp_path))
    monkeypatch.setattr(detect, "choose_runtime", lambda *a, **k: pytest.fail("chose again"))

    def no_making(*a, **k):
        raise AssertionError("made a form for a request that is refused")

    monkeypatch.setattr(forms, "ensure_native", no_making)
    with pytest.raises(BadRequest):
        envs.prepare_run("demo", ["true"], runtime=rt, env=["1BAD=x"])
    monkeypatch.setattr(forms, "ensure_native", lambda store, r, *a: f"{r.name}-image")
    got, req, _ = envs.prepare_run("demo", ["true"], runtime=rt)
    assert got is rt and req.image == "apptainer-image"


# -- a file path given to Docker or Podman: venvoy's one line alone ----------------------------

@pytest.mark.parametrize("runtime", ["docker", "podman"])
@pytest.mark.parametrize("image", ["/no/such.sif", "./img.tar", "../x", "~/img", "img.sif"])
def test_path_like_image_for_docker_or_podman_is_one_line(cli_env, capsys, runtime,
                                                          image) -> None:
    cli_env.add(runtime)
    code = main(["run", "--runtime", runtime, "--image", image, "--", "true"])
    assert code == 125
    line = one_error_line(capsys)
    assert f"image {image!r} is a file path" in line and "venvoy load" in line
    assert cli_env.calls(runtime) == 0  # the runtime never saw it


def test_cwd_no_runtime_can_mount_is_one_line_before_any_runtime(cli_env, capsys,
                                                                  tmp_path: Path,
                                                                  monkeypatch) -> None:
    cli_env.add("apptainer")
    odd = tmp_path / "data:2024,v1"
    odd.mkdir()
    monkeypatch.chdir(odd)
    assert main(["run", "--runtime", "apptainer", "--image", str(tmp_path / "x.sif"), "--",
                 "true"]) == 125
    line = one_error_line(capsys)
    assert "current directory" in line and "cd to a directory" in line
    assert cli_env.calls("apptainer") == 0


# -- dry-run makes nothing ----------------------------------------------------------------------

def test_dry_run_of_an_environment_without_its_form_makes_nothing(cli_env, capsys, monkeypatch,
                                                                   tmp_path: Path) -> None:
    import venvoy.store.forms as forms
    import venvoy.store.records as records

    cli_env.add("apptainer")
    monkeypatch.chdir(tmp_path)
    env = FakeEnvironment(tmp_path)
    monkeypatch.setattr(records, "get", lambda name, store=None: env)

    def no_making(*a, **k):
        raise AssertionError("--dry-run made a runtime form")

    monkeypatch.setattr(forms, "ensure_native", no_making)
    with pytest.raises(SystemExit) as info:
        main(["run", "demo", "--runtime", "apptainer", "--dry-run", "--", "python3", "-V"])
    assert info.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    sif = f"{env.image_id.partition(':')[2]}.sif"
    assert f"/{sif} python3 -V" in out[0]
    assert not list(tmp_path.rglob("*.sif"))
    assert cli_env.calls("apptainer") == 0


# -- progress goes to stderr, never to stdout, terminal or not ---------------------------------

PROGRESS_SCRIPT = """
from venvoy.core.progress import Reporter
rep = Reporter()
rep.step("resolving")
for done in range(0, 5_000_001, 500_000):
    rep.download("numpy-2.0.0-cp311-manylinux.whl", done, 5_000_000)
rep.step("building")
rep.close()
print("DATA")
"""


def _read_all(fd: int) -> bytes:
    import select

    out = b""
    while select.select([fd], [], [], 0)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        out += chunk
    return out


def _progress_with(stdout_fd: int, stderr_fd: int) -> None:
    import subprocess
    import sys

    env = dict(os.environ, TERM="xterm-256color", COLUMNS="100")
    env.pop("NO_COLOR", None)
    subprocess.run([sys.executable, "-c", PROGRESS_SCRIPT], stdout=stdout_fd, stderr=stderr_fd,
                   stdin=subprocess.DEVNULL, env=env, check=True, timeout=60)


def test_progress_never_reaches_a_terminal_stdout(tmp_path: Path) -> None:
    """`venvoy init ... 2>/dev/null` on a terminal prints nothing: stdout (a real
    pty here) gets the data alone, stderr (a file) every progress line."""
    master, slave = os.openpty()
    try:
        with open(tmp_path / "stderr", "wb") as err:
            _progress_with(slave, err.fileno())
        on_terminal = _read_all(master).decode(errors="replace")
    finally:
        os.close(slave)
        os.close(master)
    assert on_terminal.replace("\r", "").strip() == "DATA", repr(on_terminal)
    logged = (tmp_path / "stderr").read_text()
    assert "venvoy: resolving" in logged and "venvoy: building" in logged
    assert "downloaded numpy" in logged


def test_progress_bar_goes_to_the_terminal_on_stderr_not_stdout() -> None:
    """Both are terminals: the bar (rich) draws on stderr's, stdout's gets the data alone."""
    out_master, out_slave = os.openpty()
    err_master, err_slave = os.openpty()
    try:
        _progress_with(out_slave, err_slave)
        on_stdout = _read_all(out_master).decode(errors="replace")
        on_stderr = _read_all(err_master).decode(errors="replace")
    finally:
        for fd in (out_slave, out_master, err_slave, err_master):
            os.close(fd)
    assert on_stdout.replace("\r", "").strip() == "DATA", repr(on_stdout)
    assert "venvoy: resolving" in on_stderr and "numpy" in on_stderr


def test_usage_error_with_a_newline_or_escape_in_an_argument_is_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "NAME", "--bo\ngus\x1b[2J", "--", "x"])
    assert info.value.code == 2
    line = one_error_line(capsys)
    assert "\x1b" not in line and "--bo\\ngus\\x1b[2J" in line
