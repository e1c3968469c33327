"""Start the runtime: exec it where that is enough, else stay as a thin parent.

Exec'ing the runtime (Apptainer, Singularity, Charliecloud) costs nothing and
gives the runtime our PID, so signals, exit status and stdio are exactly the
runtime's. Docker and Podman are run as a child instead: venvoy forwards
signals to it and, if the run fails with 125, can tell the user that the image
is missing in one clear line. The child dies with venvoy (see :func:`spawn`),
so a ``kill -9`` of venvoy leaves no client and no container running. Either
way no shell is involved: argv goes to the runtime byte-exact.
"""

from __future__ import annotations

import os
import sys

from venvoy.core.errors import EXIT_VENVOY_ERROR

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from typing import NoReturn

    from venvoy.runtime.base import Runtime
    from venvoy.runtime.request import RunRequest
else:
    # The C module under `signal`: the same functions and constants, without
    # the enum wrapping that makes `import signal` a noticeable part of start-up.
    import _signal as signal

#: Signals passed on to the runtime while venvoy waits for it.
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
             signal.SIGINT)
#: Signals Python changes from their defaults, put back for the runtime.
RESTORED = (signal.SIGPIPE, signal.SIGXFSZ)


def exec_run(runtime: Runtime, req: RunRequest) -> NoReturn:
    """Run the request as the CLI does: exec, or wait as a forwarding parent."""
    inv = runtime.invocation(req)
    if not runtime.wraps:
        sys.stdout.flush()
        sys.stderr.flush()
        # Python ignores SIGPIPE; the runtime must not inherit that. If the exec
        # fails, venvoy goes on (one error line): its own handlers come back.
        saved = [(sig, signal.signal(sig, signal.SIG_DFL)) for sig in RESTORED]
        try:
            os.execve(inv.argv[0], inv.argv, inv.env)
        except BaseException:
            for sig, handler in saved:
                signal.signal(sig, handler)
            raise
    sys.exit(_spawn_and_wait(runtime, req, inv.argv, inv.env))


def run(runtime: Runtime, req: RunRequest) -> int:
    """Run the request and return its exit status (library use: never execs)."""
    inv = runtime.invocation(req)
    return _spawn_and_wait(runtime, req, inv.argv, inv.env)


def spawn(argv: list[str], env: dict[str, str]) -> int:
    """Start ``argv`` as a child that gets SIGTERM when venvoy dies (even by
    ``kill -9``): ``docker``/``podman run`` then stop the container and
    ``--rm`` removes it, instead of both running on, orphaned. Returns the PID.

    fork + prctl + execve rather than posix_spawn, which cannot ask for the
    death signal; the exec error, if any, comes back through a close-on-exec
    pipe and is raised here as posix_spawn would.
    """
    from venvoy.core.proc import die_with_parent, prepare

    prepare()
    parent = os.getpid()
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child (coverage cannot see it)
        try:
            os.close(rfd)
            for sig in RESTORED:
                signal.signal(sig, signal.SIG_DFL)
            die_with_parent(signal.SIGTERM, parent)
            os.execve(argv[0], argv, env)
        except OSError as exc:
            os.write(wfd, str(exc.errno).encode())
        finally:
            os._exit(127)
    os.close(wfd)
    try:
        err = b""
        while chunk := os.read(rfd, 64):
            err += chunk
    finally:
        os.close(rfd)
    if err:
        os.waitpid(pid, 0)
        errno = int(err)
        raise OSError(errno, os.strerror(errno), argv[0])
    return pid


def _spawn_and_wait(runtime: Runtime, req: RunRequest, argv: list[str], env: dict[str, str]) -> int:
    pid = spawn(argv, env)
    forward_int = not req.tty  # on a TTY, Ctrl-C already reaches the child's process group

    def forward(signum: int, _frame: object) -> None:
        if signum != signal.SIGINT or forward_int:
            try:  # noqa: SIM105 - contextlib's import costs more than this whole handler
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    previous = {}
    for sig in FORWARDED:
        try:
            previous[sig] = signal.signal(sig, forward)
        except ValueError:  # not the main thread: cannot install handlers
            break
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # killed by a signal: report it the way shells do
        code = 128 - code
    if code == EXIT_VENVOY_ERROR and runtime.wraps and not runtime.image_exists(req.image):
        raise runtime.missing_image_error(req.image)
    return code
