"""``venvoy doctor``: the report of :mod:`venvoy.api.doctor`, as text or JSON.

One line per check: status, area and name, the evidence, and after ``->``
the one thing to do. Exit 0 when nothing failed, 1 otherwise.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any, TextIO

    from venvoy.api.doctor import Report

#: How each status (venvoy.api.doctor's OK, WARN, FAIL, NA) is shown: what
#: needs a look stands out. (Plain strings: the parser is built for every
#: command, and the doctor's library is imported only to run it.)
MARKS = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "n/a": "n/a"}


def printable(text: str) -> str:
    """Evidence quotes paths and program output: control characters (a newline
    in VENVOY_HOME, an escape sequence) are shown escaped, never acted on."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def format_report(report: Report) -> str:
    """The report as text lines: one per check, grouped by area."""
    lines = []
    width = max([len(c.name) for c in report.checks] + [10]) + 2
    area = None
    for c in report.checks:
        if c.area != area:
            area = c.area
            lines.append(printable(f"{area}:"))
        line = f"  {MARKS.get(c.status, c.status):<5} {c.name:<{width}}{c.evidence}"
        if c.action:
            line += f" -> {c.action}"
        lines.append(printable(line))
    from venvoy.api.doctor import FAIL, NA, OK, WARN

    counts = ", ".join(f"{report.count(s)} {s}" for s in (FAIL, WARN, OK, NA))
    verdict = "nothing fails" if report.ok else "something fails"
    lines.append(f"venvoy doctor: {verdict} ({counts}) in {report.seconds:.2f} s")
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``doctor`` to the CLI's sub-commands."""
    p = sub.add_parser("doctor", help="check what works on this machine (runtimes, FUSE, GPU, "
                                      "Slurm) and say what to do about what does not")
    p.add_argument("name", nargs="?", help="also check this environment (forms, lock)")
    p.add_argument("--runtime", metavar="R", help="check only this runtime")
    p.add_argument("--verify", action="store_true",
                   help="with NAME: also verify the packages inside a container (slow), and on a "
                        "GPU host run the GPU probe in it")
    p.add_argument("--json", action="store_true", help="print JSON")


def cmd_doctor(args: argparse.Namespace, out: TextIO | None = None) -> int:
    import json

    from venvoy.api.doctor import doctor, exit_status
    from venvoy.core.errors import BadRequest, VenvoyError

    if args.verify and not args.name:
        raise BadRequest("--verify needs an environment NAME", "e.g. venvoy doctor my-env --verify")
    report = doctor(args.name, runtime=args.runtime, verify=args.verify)
    stream = out or sys.stdout
    text = json.dumps(report.as_dict(), indent=2) if args.json else format_report(report)
    try:
        print(text, file=stream)
        stream.flush()
    except BrokenPipeError:
        raise  # `venvoy doctor | head`: the CLI's quiet exit
    except OSError as exc:  # a full disk or /dev/full: one line, not a traceback
        raise VenvoyError(f"could not write the report: {exc.strerror or exc}",
                          "write it to a file system with room") from None
    return exit_status(report)


__all__ = ["add_parser", "cmd_doctor", "format_report"]
