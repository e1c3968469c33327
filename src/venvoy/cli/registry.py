"""``venvoy push NAME REF`` and ``venvoy pull REF [--name NAME]``: environments through
OCI registries (the work is done by :mod:`venvoy.api.registry`)."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

_REF_HELP = "HOST[:PORT]/REPOSITORY[:TAG], e.g. ghcr.io/org/env:v1"


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``push`` and ``pull`` to the CLI's sub-commands."""
    push = sub.add_parser("push", help="publish an environment's image (with its lock) to an "
                                       "OCI registry")
    push.add_argument("name", help="the environment")
    push.add_argument("ref", help=_REF_HELP + " (default tag: the environment's identity)")
    push.add_argument("--quiet", "-q", action="store_true", help="no progress output")

    pull = sub.add_parser("pull", help="make an environment from an image `venvoy push` wrote "
                                       "(checked as `import` checks an archive)")
    pull.add_argument("ref", help=_REF_HELP + "[@sha256:DIGEST]")
    pull.add_argument("--name", help="name the environment (default: the name it was pushed with)")
    pull.add_argument("--runtime", metavar="R", help="also make this runtime's form of the image now")
    pull.add_argument("--force", action="store_true", help="replace an environment of the same name")
    pull.add_argument("--quiet", "-q", action="store_true", help="no progress output")


def cmd_push(args: argparse.Namespace) -> int:
    from venvoy.api.registry import push
    from venvoy.core.progress import Reporter

    rep = Reporter(quiet=args.quiet)
    try:
        pinned = push(args.name, args.ref, progress=rep.step)
    finally:
        rep.close()
    print(pinned)
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from venvoy.api.registry import pull
    from venvoy.core.progress import Reporter

    rep = Reporter(quiet=args.quiet)
    try:
        env = pull(args.ref, name=args.name, force=args.force, runtime=args.runtime,
                   progress=rep.step)
    finally:
        rep.close()
    if not args.quiet:
        print(f"venvoy: pulled {env.name}: Python {env.python}, identity {env.identity[:12]}; "
              f"run it with `venvoy run {env.name} -- python ...`", file=sys.stderr)
    return 0


__all__ = ["add_parser", "cmd_pull", "cmd_push"]
