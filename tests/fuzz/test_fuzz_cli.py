"""The fast `run` parser and argparse agree on every command line.

`venvoy run` parses its options without argparse when it can (start-up time);
when unsure it hands the line to argparse. The property: on random argv made
of run's option tokens, attached values (``-w/tmp``, ``--env=A=1``), ``--``,
names and dashes, the fast parser either gives up or returns exactly what
argparse parses; and when argparse refuses a line, the fast parser never
accepts it. Then :func:`venvoy.cli.main.main` as a whole: every line either
reaches ``cmd_run`` with argparse's values, or is refused with one line and
exit 2. Never an option dropped, never a run with defaults.
"""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from venvoy.cli import main as cli

FIELDS = ("name", "image", "runtime", "workdir", "gpu", "mount", "env", "env_pass", "tty",
          "dry_run")

OPTIONS = ["--image", "--runtime", "--workdir", "-w", "--gpu", "--mount", "-v", "--env", "-e",
           "--env-pass", "--tty", "-t", "--no-tty", "--dry-run", "-h", "--help", "--runt",
           "--im", "--env-p", "--dry", "--no", "--runtme", "-x", "--bogus", "-tv", "-"]
VALUES = ["NAME", "img", "podman", "/tmp", "nvidia", "amd", "intel", "A=1", "/a:/b:ro", "",
          "-1", "-A=1", "a b", "-a b", "x=y=z", "ü", "HOME", "a\nb", "-\x1b[2J"]


@st.composite
def words(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["option", "option", "value", "attached", "equals", "dashes"]))
    if kind == "option":
        return draw(st.sampled_from(OPTIONS))
    if kind == "value":
        return draw(st.sampled_from(VALUES))
    if kind == "attached":  # -w/tmp, -eA=1, -t-x, -v=/a:/b
        return draw(st.sampled_from(["-w", "-v", "-e", "-t", "-x"])) + draw(
            st.sampled_from(["/tmp", "A=1", "=/a:/b", "=", "-x", "v/a:/b", "t"]))
    if kind == "equals":  # --env=A=1, --tty=, --im=x
        return draw(st.sampled_from(OPTIONS)) + "=" + draw(st.sampled_from(VALUES))
    return draw(st.sampled_from(["--", "---", "-", "--=x"]))


VALUE_OPTIONS = ["--image", "--runtime", "--workdir", "-w", "--gpu", "--mount", "-v", "--env",
                 "-e", "--env-pass"]
FLAGS = ["--tty", "-t", "--no-tty", "--dry-run"]


@st.composite
def plausible(draw: st.DrawFn) -> list[str]:
    """Mostly well-formed lines (the fast parser's ground), with a slip now and then."""
    out: list[str] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["pair", "pair", "flag", "long=", "short", "name", "slip"]))
        opt = draw(st.sampled_from(VALUE_OPTIONS))
        value = draw(st.sampled_from(VALUES))
        if kind == "pair":
            out += [opt, value]
        elif kind == "flag":
            out.append(draw(st.sampled_from(FLAGS)))
        elif kind == "long=":
            out.append(f"{draw(st.sampled_from([o for o in VALUE_OPTIONS if o[1] == '-']))}={value}")
        elif kind == "short":
            out.append(draw(st.sampled_from(["-w", "-v", "-e"])) + value)
        elif kind == "name":
            out.append(draw(st.sampled_from(["NAME", "env-1", ""])))
        else:
            out.append(draw(words()))
    if draw(st.booleans()):
        out.insert(draw(st.integers(0, len(out))), "NAME")
    else:
        out += ["--image", "img"]
    if draw(st.integers(0, 9)):
        out += ["--", *draw(st.lists(words(), max_size=3))]
    return out


argvs = st.one_of(st.lists(words(), max_size=10), plausible())


def argparse_run(argv: list[str]) -> tuple[object, list[str] | None] | None:
    """What argparse makes of ``run ARGV`` (namespace, command after --), or None if refused."""
    head, command = cli.split_command(["run", *argv])
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            ns = cli.build_parser(command_after_dashes=command is not None).parse_args(head)
        except SystemExit:
            return None
    return ns, command


@given(argvs)
def test_fast_parser_is_argparse_or_defers(argv: list[str]) -> None:
    fast = cli.fast_run_args(argv)
    ref = argparse_run(argv)
    if fast is None:
        return  # argparse decides (accepts, or refuses with one line)
    assert ref is not None, f"fast parser accepted a line argparse refuses: {argv}"
    args, command = fast
    ns, ref_command = ref
    assert command == ref_command
    for field in FIELDS:
        assert getattr(args, field) == getattr(ns, field), (field, argv)


class Ran(Exception):
    pass


@given(argvs)
def test_main_runs_with_argparse_values_or_refuses(argv: list[str]) -> None:
    """End to end through main: the values cmd_run gets are argparse's, or exit 2."""
    seen: list[tuple[object, list[str]]] = []

    def fake_run(args: object, command: list[str]) -> None:
        seen.append((args, command))
        raise Ran

    real = cli.cmd_run
    cli.cmd_run = fake_run  # type: ignore[assignment]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                cli.main(["run", *argv])
                outcome = "returned"
            except Ran:
                outcome = "ran"
            except SystemExit as exc:
                outcome = f"exit {exc.code}"
    finally:
        cli.cmd_run = real  # type: ignore[assignment]
    ref = argparse_run(argv)
    if outcome == "exit 0":  # --help
        assert ref is None
        return
    if ref is None:
        assert outcome == "exit 2", (argv, outcome)
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].startswith("venvoy: error: "), err.getvalue()
        return
    ns, command = ref
    if outcome == "exit 2":  # parsed, but no command line a run could mean (-e after NAME)
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and "after" in lines[0], err.getvalue()
        assert command is None
        return
    assert outcome == "ran", (argv, outcome, err.getvalue())
    args, got_command = seen[0]
    for field in ("image", "runtime", "workdir", "gpu", "mount", "env", "env_pass", "tty",
                  "dry_run"):
        assert getattr(args, field) == getattr(ns, field), (field, argv)
    if command is not None:
        assert got_command == command and args.name == ns.name  # type: ignore[attr-defined]


@pytest.mark.parametrize("argv", [
    ["NAME", "--runtime", "podman", "--env", "A=1", "-w/tmp", "--", "CMD"],
    ["NAME", "--runtme", "podman", "--mount", "D:/data:ro", "--", "CMD"],
    ["NAME", "--gpu", "intel", "--", "CMD"],
    ["NAME", "--dry-run", "-x", "--", "CMD"],
])
def test_the_reported_lines(argv: list[str]) -> None:
    test_fast_parser_is_argparse_or_defers.hypothesis.inner_test(argv)  # type: ignore[attr-defined]
    test_main_runs_with_argparse_values_or_refuses.hypothesis.inner_test(argv)  # type: ignore[attr-defined]
