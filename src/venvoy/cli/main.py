"""The ``venvoy`` command line: a thin layer over the library.

Only the standard library is imported up front; each command imports what it
needs, so ``venvoy run`` starts about as fast as Python itself.
"""

from __future__ import annotations

import os
import sys
import time

from venvoy.core.errors import VenvoyError
from venvoy.core.version import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any, NoReturn

    from venvoy.runtime.base import Runtime


#: `run`'s options for the fast path: name -> (attribute, kind). Must match
#: the argparse definition below; tests (and tests/fuzz) check both parse alike.
_RUN_OPTIONS: dict[str, tuple[str, str]] = {
    "--image": ("image", "value"), "--runtime": ("runtime", "value"),
    "--workdir": ("workdir", "value"), "-w": ("workdir", "value"), "--gpu": ("gpu", "value"),
    "--mount": ("mount", "list"), "-v": ("mount", "list"), "--env": ("env", "list"),
    "-e": ("env", "list"), "--env-pass": ("env_pass", "list"),
    "--tty": ("tty", "true"), "-t": ("tty", "true"), "--no-tty": ("tty", "false"),
    "--dry-run": ("dry_run", "true"),
}
#: `--gpu`'s choices (argparse's `choices`, checked at each occurrence as argparse does).
_GPU_CHOICES = ("nvidia", "amd")


class RunArgs:
    """Parsed `run` options (what argparse's Namespace would hold)."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.image: str | None = None
        self.runtime: str | None = None
        self.workdir: str | None = None
        self.gpu: str | None = None
        self.mount: list[str] = []
        self.env: list[str] = []
        self.env_pass: list[str] = []
        self.tty: bool | None = None
        self.dry_run = False


def fast_run_args(argv: list[str]) -> tuple[RunArgs, list[str]] | None:
    """Parse ``run OPTIONS -- CMD`` without argparse, or None when unsure.

    argparse (with the re, gettext and locale it pulls in) is about a third of
    ``venvoy run``'s own start-up. Plain, well-formed command lines are parsed
    here: exact option names, ``--long=VALUE``, ``-wVALUE``, one NAME, then
    ``--``. Anything else (help, abbreviations, a value starting with '-', an
    unknown or incomplete option, no ``--``) returns None, and argparse, which
    sees every option before ``--`` (see :func:`main`), accepts it or refuses
    it with one line. Never a guess: what this returns is what argparse would.
    """
    if "--" not in argv:
        return None
    end = argv.index("--")
    args = RunArgs()
    i = 0
    while i < end:
        word = argv[i]
        if not word.startswith("-"):
            if args.name is not None:
                return None  # a second positional: argparse refuses it
            args.name = word  # the environment to run in
            i += 1
            continue
        spec = _RUN_OPTIONS.get(word)
        value: str | None = None
        if spec is None:
            name, eq, inline = word.partition("=")
            if eq and name.startswith("--"):
                spec, value = _RUN_OPTIONS.get(name), inline
            elif len(word) > 2 and word[1] != "-" and word[2] != "=":
                spec, value = _RUN_OPTIONS.get(word[:2]), word[2:]  # -w/tmp, -eA=1
            if spec is None:
                return None
        attr, kind = spec
        if kind in ("true", "false"):
            if value is not None or (attr == "tty" and args.tty is not None):
                return None  # `--tty=x`, `-tv`, or both --tty and --no-tty: argparse's call
            setattr(args, attr, kind == "true")
            i += 1
            continue
        if value is not None:
            i += 1
        elif i + 1 < end:
            value, i = argv[i + 1], i + 2
        else:
            return None
        if value.startswith("-"):
            return None  # argparse decides what a dash-led value means
        if kind == "list":
            getattr(args, attr).append(value)
        elif attr == "gpu" and value not in _GPU_CHOICES:
            return None
        else:
            setattr(args, attr, value)
    if (args.image is None) == (args.name is None):
        return None
    return args, argv[end + 1:]


def build_parser(command_after_dashes: bool = False) -> argparse.ArgumentParser:
    """The full parser (help, errors, every command); argparse is imported here.

    ``command_after_dashes``: the `run` command line had a ``--`` and is given
    here without it and the command (see :func:`split_command`). `run` then
    takes options anywhere before ``--`` and at most one NAME, as the fast
    parser does. Without a ``--``, the command starts at the first word after
    NAME (``run --image IMG python3 x.py``).
    """
    import argparse

    class Parser(argparse.ArgumentParser):
        """argparse, but errors are one line like every other venvoy error."""

        def _get_formatter(self) -> argparse.HelpFormatter:
            # argparse sizes a formatter with shutil.get_terminal_size even when
            # nothing is printed, importing shutil (and bz2, lzma) on every call.
            try:
                width = os.get_terminal_size(sys.stdout.fileno()).columns - 2
            except (OSError, ValueError):
                width = 78
            return self.formatter_class(prog=self.prog, width=width)  # type: ignore[call-arg]

        def error(self, message: str) -> NoReturn:
            usage_error(message, self.prog)

    def add_runtime_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--runtime", metavar="R",
                       help="docker, podman, apptainer, singularity, charliecloud, shifter or "
                            "enroot (default: VENVOY_RUNTIME, the config file, then detection)")

    parser = Parser(prog="venvoy", description="One reproducible Python environment on every "
                    "container runtime: Docker, Podman, Apptainer/Singularity, Charliecloud.")
    parser.add_argument("--version", action="version", version=f"venvoy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    info = sub.add_parser("runtime-info", help="show the runtime venvoy would use, and why")
    add_runtime_option(info)
    info.add_argument("--json", action="store_true", help="print JSON")

    run = sub.add_parser("run", help="run a command in an environment or a container image",
                         usage="venvoy run (NAME | --image IMAGE) [options] -- CMD [ARG...]")
    run.add_argument("name", nargs="?", help="the environment (see `venvoy list`)")
    run.add_argument("--image",
                     help="instead of an environment: an image in the local Docker/Podman store, "
                          "a registry reference (docker://HOST/REPO:TAG), a .sif file, an image "
                          "directory or a Docker/OCI archive tar (made into the runtime's form "
                          "once, cached)")
    add_runtime_option(run)
    run.add_argument("--mount", "-v", action="append", default=[], metavar="SRC:DST[:ro]",
                     help="bind-mount a host path (repeatable); the current directory always is")
    run.add_argument("--env", "-e", action="append", default=[], metavar="K=V",
                     help="set a variable in the container (repeatable)")
    run.add_argument("--env-pass", action="append", default=[], metavar="NAME",
                     help="copy a host variable into the container (repeatable)")
    run.add_argument("--workdir", "-w", metavar="DIR",
                     help="working directory in the container (default: the current directory)")
    run.add_argument("--gpu", choices=["nvidia", "amd"], help="pass the host's GPUs through")
    tty = run.add_mutually_exclusive_group()
    tty.add_argument("--tty", "-t", dest="tty", action="store_true", default=None,
                     help="allocate a terminal (default: when stdin and stdout are terminals)")
    tty.add_argument("--no-tty", dest="tty", action="store_false")
    run.add_argument("--dry-run", action="store_true",
                     help="print the runtime command venvoy would run, and exit")
    if not command_after_dashes:
        run.add_argument("cmd", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    init = sub.add_parser("init", help="create (or rebuild) an environment")
    init.add_argument("name", help="1-63 of a-z 0-9 . _ -, starting with a letter or digit")
    init.add_argument("--python", default="3.11", help="Python version X.Y (default 3.11)")
    init.add_argument("--requirements", "-r", action="append", default=[], metavar="FILE",
                      help="a requirements file (repeatable)")
    init.add_argument("--pyproject", metavar="FILE", help="take [project] dependencies from it")
    init.add_argument("--base", metavar="REF",
                      help="base image: a registry reference, a local image, or a tar (root file "
                           "system or Docker/OCI archive); default: python:X.Y-slim, or a Debian "
                           "bootstrap offline")
    add_runtime_option(init)
    init.add_argument("--force", action="store_true", help="rebuild even if nothing changed")
    init.add_argument("--offline", action="store_true",
                      help="no registry: bootstrap the base from Debian's mirror (VENVOY_OFFLINE=1)")
    init.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    init.add_argument("--json", action="store_true", help="print the environment as JSON")

    lst = sub.add_parser("list", help="list environments")
    lst.add_argument("--json", action="store_true", help="print JSON")

    rm = sub.add_parser("remove", help="delete an environment and what only it uses")
    rm.add_argument("name")

    lk = sub.add_parser("lock", help="re-lock an environment (keeping pins) and rebuild if changed")
    lk.add_argument("name")
    lk.add_argument("--upgrade", action="store_true", help="move every package to its newest version")
    add_runtime_option(lk)
    lk.add_argument("--offline", action="store_true", help="see init --offline")
    lk.add_argument("--quiet", "-q", action="store_true", help="no progress output")

    vf = sub.add_parser("verify", help="check inside the container that the packages match the lock")
    vf.add_argument("name")
    add_runtime_option(vf)
    vf.add_argument("--json", action="store_true", help="print the report as JSON")

    ex = sub.add_parser("export", help="write an environment to a file others can import or rebuild")
    ex.add_argument("name")
    from venvoy.transport import FORMATS

    ex.add_argument("--format", default="archive", choices=list(FORMATS),
                    help="; ".join(f"{f.name}: {f.help}" for f in FORMATS.values()))
    ex.add_argument("--output", "-o", metavar="PATH", help="default: derived from name and lock")
    ex.add_argument("--with-sif", action="store_true", help="archive: include the SIF too")
    ex.add_argument("--quiet", "-q", action="store_true", help="no progress output")

    im = sub.add_parser("import", help="import an archive or a wheelhouse (recognised by content)")
    im.add_argument("path")
    im.add_argument("--name", help="import under another name")
    add_runtime_option(im)
    im.add_argument("--force", action="store_true", help="replace an environment of the same name")
    im.add_argument("--offline", action="store_true", help="wheelhouse: see init --offline")
    im.add_argument("--base", metavar="REF",
                    help="wheelhouse: the base image to rebuild on (default: the recorded one)")
    im.add_argument("--quiet", "-q", action="store_true", help="no progress output")

    load = sub.add_parser("load", help="load a Docker/OCI archive tar into a runtime")
    load.add_argument("archive", help="the tar written by `docker save` or `podman save`")
    load.add_argument("--name", required=True, help="image name to give it (name:tag)")
    load.add_argument("--dest", help="directory for runtimes that keep images as files "
                      "(SIF, Charliecloud); default: venvoy's cache")
    add_runtime_option(load)

    from venvoy.cli.doctor import add_parser as add_doctor

    add_doctor(sub)
    from venvoy.cli.slurm import add_parser as add_slurm

    add_slurm(sub)
    from venvoy.cli.registry import add_parser as add_registry

    add_registry(sub)
    return parser


def one_line(text: str) -> str:
    """``text`` with anything unprintable escaped (newlines, terminal escapes)."""
    return text if text.isprintable() else "".join(
        c if c.isprintable() else repr(c)[1:-1] for c in text)


def usage_error(message: str, prog: str = "venvoy run") -> NoReturn:
    """A command-line mistake: one line on stderr, exit 2 (argparse's convention).
    What the user typed is in it, escaped: a newline or a terminal escape in an
    argument cannot break the line or reach the terminal."""
    sys.stderr.write(f"venvoy: error: {one_line(message)} (see `{prog} --help`)\n")
    sys.exit(2)


def split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Split ``run ... -- CMD`` at the first ``--`` so CMD is never parsed."""
    if argv[:1] in (["run"], ["submit"]) and "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, None


def run_command(args: argparse.Namespace, command: list[str] | None) -> list[str]:
    """The command of a `run` argparse has parsed (``command``: what followed ``--``).

    Without ``--`` the command is what argparse left after NAME (or, with
    ``--image``, NAME is its first word). Such a command cannot start with an
    option: ``run NAME -e A=1 python3`` is an option after NAME, not a command
    called ``-e``, and is refused rather than run without ``A``.
    """
    if command is not None:
        return command
    cmd = list(args.cmd)
    if args.image is not None and args.name is not None:  # `run --image IMG cmd args`
        cmd = [args.name, *cmd]
        args.name = None
    if cmd and cmd[0].startswith("-"):
        usage_error(f"option {cmd[0]} after {args.name or 'the command'}: put every option "
                    "before the command and the command after --, e.g. "
                    "venvoy run NAME -e A=1 -- python3 x.py")
    return cmd


def cmd_runtime_info(args: argparse.Namespace) -> int:
    from venvoy.runtime.detect import runtime_info

    info = runtime_info(args.runtime)
    if args.json:
        import json

        print(json.dumps(info, indent=2))
    else:
        print(format_runtime_info(info))
    return 0 if info["runtime"] else 1


def format_runtime_info(info: dict[str, Any]) -> str:
    lines = []
    if info["runtime"]:
        mode = "rootless" if info["rootless"] else "as root"
        lines.append(f"runtime:  {info['runtime']} {info['version'] or '?'} ({info['path']}, {mode})")
        lines.append(f"why:      {info['reason']}")
    else:
        lines.append(f"runtime:  none: {info['error']}")
    hpc = f"yes: {info['hpc_signal']}" if info["is_hpc"] else "no (no scheduler job, host name not a node's)"
    lines.append(f"hpc:      {hpc}")
    if info.get("sif_compression"):
        sif = info["sif_compression"]
        lines.append(f"sif:      {sif['compression']} ({sif['why']})")
    rows = info["runtimes"]
    lines.append("found:" if rows else "found:    nothing on PATH")
    vw = max([len(r["version"] or "?") for r in rows] + [7]) + 2
    for r in rows:
        state = "usable" if r["usable"] else f"unusable: {r['problem']}"
        tag = "" if r["tested"] else " [untested adapter]"
        mode = "rootless" if r["rootless"] else "root"
        lines.append(f"  {r['name']:<13}{r['version'] or '?':<{vw}}{mode:<10}{r['path']}  {state}{tag}")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace | RunArgs, command: list[str]) -> NoReturn:
    """Run, one runtime choice and one code path: an environment whose runtime
    form exists is run from here (a few stat calls); anything else goes through
    the library's :func:`venvoy.api.environments.run` with the runtime chosen here."""
    from venvoy.runtime.detect import choose_runtime
    from venvoy.runtime.request import make_request
    from venvoy.runtime.runner import exec_run

    if not command:
        raise VenvoyError("no command given", "put it after --, e.g. venvoy run NAME -- python3 x.py",
                          exit_code=2)
    if (args.name is None) == (args.image is None):
        raise VenvoyError("give an environment NAME or --image IMAGE (one of them)",
                          "e.g. venvoy run my-env -- python3 x.py", exit_code=2)
    # Everything the user typed is checked before any runtime is looked for.
    req = make_request(args.image or "environment", command, mounts=args.mount, env=args.env,
                       env_pass=args.env_pass, workdir=args.workdir, gpu=args.gpu, tty=args.tty)
    runtime = choose_runtime(args.runtime).runtime
    planned = False
    if args.name is not None:
        from venvoy.store.fastpath import cached_image, env_image

        found = env_image(args.name)
        image = cached_image(found[0], runtime, found[1], found[2]) if found else None
        if image is None and args.dry_run:  # what would run; nothing is made
            image, planned = _planned_image(args.name, runtime), True
        if image is None:  # not built, or not in this runtime's form yet
            _run_in_library(args, command, runtime)
        req.image = image
    else:
        req.image, planned = _image_for_run(args, command, runtime)
    if args.dry_run:
        import shlex

        if planned:  # the form is not made yet: nothing to check the image against
            if req.gpu is not None:
                runtime.check_gpu(req)
            argv, env = runtime.run_argv(req), runtime.process_env(req)
        else:
            inv = runtime.invocation(req)
            argv, env = inv.argv, inv.env
        extra = [f"{k}={v}" for k, v in env.items() if os.environ.get(k) != v]
        print(shlex.join((["env", *extra] if extra else []) + argv))
        sys.exit(0)
    if args.name is None:
        exec_run(runtime, req)
    from venvoy.core.errors import ImageNotFound

    try:
        exec_run(runtime, req)
    except ImageNotFound:  # removed from Docker/Podman behind our back: the library reloads it
        _run_in_library(args, command, runtime)


def _image_for_run(args: argparse.Namespace | RunArgs, command: list[str],
                   runtime: Runtime) -> tuple[str, bool]:
    """``--image``: what the runtime is given, and whether it is only planned (a dry run
    makes nothing). What the runtime takes as it is costs a stat here; anything else
    (a local store's image for Apptainer, a registry reference, a tar) is run by the library."""
    from venvoy.store.images import AS_IS, classify

    assert args.image is not None
    if classify(runtime, args.image) == AS_IS:
        return args.image, False
    from venvoy.api import images

    if args.dry_run:
        return images.planned_image(args.image, runtime), True
    images.run_image(args.image, command, exec_=True, runtime=runtime, mounts=args.mount,
                     env=args.env, env_pass=args.env_pass, workdir=args.workdir, gpu=args.gpu,
                     tty=args.tty, progress=_reporter(False).step)
    raise AssertionError("unreachable")  # pragma: no cover - exec_ never returns


def _run_in_library(args: argparse.Namespace | RunArgs, command: list[str],
                    runtime: Runtime) -> NoReturn:
    """The library's run (makes the runtime's form if needed), with our runtime."""
    from venvoy.api import environments as envs

    assert args.name is not None
    envs.run(args.name, command, exec_=True, runtime=runtime, mounts=args.mount, env=args.env,
             env_pass=args.env_pass, workdir=args.workdir, gpu=args.gpu, tty=args.tty,
             progress=_reporter(False).step)
    raise AssertionError("unreachable")  # pragma: no cover - exec_ never returns


def _planned_image(name: str, runtime: Runtime) -> str:
    """The image ``runtime`` would run for environment ``name``, without making it."""
    from venvoy.store.forms import planned_native
    from venvoy.store.layout import Store
    from venvoy.store.records import get

    store = Store()
    environment = get(name, store)
    return planned_native(store, runtime, environment.image_id, environment.tag)


def _reporter(quiet: bool) -> Any:
    from venvoy.core.progress import Reporter

    return Reporter(quiet=quiet)


def cmd_init(args: argparse.Namespace) -> int:
    from venvoy.api import environments as envs

    rep = _reporter(args.quiet)
    start = time.monotonic()
    try:
        env, built = envs.init(args.name, python=args.python, requirements=args.requirements,
                               pyproject=args.pyproject, base=args.base, runtime=args.runtime,
                               force=args.force, offline=args.offline or None,
                               progress=rep.step, download_progress=rep.download)
    finally:
        rep.close()
    if args.json:
        import json

        print(json.dumps(env.as_dict() | {"built": built}, indent=2))
    elif not args.quiet:
        what = "built" if built else "unchanged"
        print(f"venvoy: {env.name} {what}: Python {env.python}, {env.data.get('packages', 0)} "
              f"packages, identity {env.identity[:12]} ({time.monotonic() - start:.1f} s)",
              file=sys.stderr)
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    from venvoy.api import environments as envs

    rep = _reporter(args.quiet)
    try:
        env, built = envs.lock(args.name, upgrade=args.upgrade, runtime=args.runtime,
                               offline=args.offline or None, progress=rep.step,
                               download_progress=rep.download)
    finally:
        rep.close()
    if not args.quiet:
        state = "changed, rebuilt" if built else "unchanged"
        print(f"venvoy: lock of {env.name} {state} (lock {env.lock_hash[:12]})", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from venvoy.api import environments as envs

    rep = _reporter(args.quiet)
    try:
        path = envs.export(args.name, args.format, args.output, with_sif=args.with_sif,
                           progress=rep.step, download_progress=rep.download)
    finally:
        rep.close()
    print(path)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from venvoy.api import environments as envs

    rep = _reporter(args.quiet)
    try:
        env = envs.import_any(args.path, name=args.name, runtime=args.runtime, force=args.force,
                              offline=args.offline or None, base=args.base, progress=rep.step)
    finally:
        rep.close()
    if not args.quiet:
        print(f"venvoy: imported {env.name}: Python {env.python}, identity {env.identity[:12]}; "
              f"run it with `venvoy run {env.name} -- python ...`", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from venvoy.api import environments as envs

    rows = envs.list_envs()
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no environments; create one with `venvoy init NAME`", file=sys.stderr)
        return 0
    print(f"{'NAME':<24}{'PYTHON':<8}{'SIZE':>9}  {'LOCK':<13}{'CREATED':<22}FORMS")
    for r in rows:
        if "damaged" in r:  # a checked name, and a reason made printable by list_envs
            print(f"{r['name']:<24}damaged: {r['damaged']}")
            continue
        print(f"{r['name']:<24}{r['python']:<8}{r['size'] / 1e6:>7.0f}MB  {r['lock_hash'][:12]:<13}"
              f"{r['created']:<22}{','.join(r['forms'])}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from venvoy.api import environments as envs

    freed = envs.remove(args.name)
    print(f"venvoy: removed {args.name}, freed {freed / 1e6:.1f} MB", file=sys.stderr)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from venvoy.api import environments as envs

    report = envs.verify(args.name, runtime=args.runtime)
    if args.json:
        import json

        print(json.dumps(report, indent=2))
    else:
        print(f"{args.name}: {report['packages']} packages, {report['checked_files']} files checked "
              f"with {report['runtime']}: " + ("OK, matches the lock" if report["ok"] else "DRIFT"))
        for p in report["missing_packages"]:
            print(f"  missing package: {p}")
        for p in report["unexpected_packages"]:
            print(f"  not in the lock: {p}")
        for m in report["version_mismatches"]:
            print(f"  {m['package']}: locked {m['locked']}, installed {m['installed']}")
        for f in report["modified_files"]:
            print(f"  modified: {f['path']} ({f['package']})")
        for f in report["missing_files"]:
            print(f"  missing file: {f['path']} ({f['package']})")
    return 0 if report["ok"] else 1


def cmd_load(args: argparse.Namespace) -> int:
    from pathlib import Path

    from venvoy.runtime.detect import choose_runtime
    from venvoy.store.layout import Store

    archive = Path(args.archive)
    if not archive.is_file():
        raise VenvoyError(f"archive {archive} does not exist", "give the path of a `docker save` tar")
    runtime = choose_runtime(args.runtime).runtime
    dest = Path(args.dest) if args.dest else Store().load_dest(runtime.name)
    print(runtime.load_archive(archive.resolve(), args.name, dest))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    try:
        fast = fast_run_args(raw[1:]) if raw[:1] == ["run"] else None
        if fast is not None:
            cmd_run(*fast)
        # The fast parser gave up: argparse decides, and it sees every option
        # before `--` (never a command made of them, never run with defaults).
        head, command = split_command(raw)
        parser = build_parser(command_after_dashes=command is not None)
        args, extra = parser.parse_known_args(head)
        if extra:  # named after the command it belongs to: `venvoy run --help`
            usage_error(f"unrecognized arguments: {' '.join(extra)}",
                        f"venvoy {args.command}" if args.command else "venvoy")
        if args.command == "run":
            cmd_run(args, run_command(args, command))
        if args.command == "runtime-info":
            return cmd_runtime_info(args)
        if args.command == "doctor":
            from venvoy.cli.doctor import cmd_doctor

            return cmd_doctor(args)
        if args.command in ("submit", "jobs", "logs", "cancel", "wait"):
            from venvoy.cli.slurm import dispatch

            return dispatch(args, command)
        if args.command in ("push", "pull"):
            from venvoy.cli import registry as registry_cli

            return registry_cli.cmd_push(args) if args.command == "push" else registry_cli.cmd_pull(args)
        handlers = {"load": cmd_load, "init": cmd_init, "list": cmd_list, "remove": cmd_remove,
                    "lock": cmd_lock, "verify": cmd_verify, "export": cmd_export,
                    "import": cmd_import}
        if args.command in handlers:
            return handlers[args.command](args)
        parser.print_help()
        return 2
    except VenvoyError as exc:
        print(f"venvoy: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def entry() -> NoReturn:
    """The console script. After `run`, nothing is left to clean up, so the
    interpreter's shutdown (several ms on every run) is skipped."""
    try:
        code = main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if sys.argv[1:2] == ["run"]:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
