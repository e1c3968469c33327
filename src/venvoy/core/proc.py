"""Child processes that die with venvoy.

A runtime client (``docker run``, ``podman run``) or a conversion
(``apptainer build``) started by venvoy must not outlive it: after a
``kill -9`` of venvoy it would keep a container running or keep writing
hundreds of MB into a temporary directory nobody removes. On Linux the child
asks the kernel for a signal when its parent dies (``PR_SET_PDEATHSIG``),
between fork and exec, so the request survives into the runtime. SIGTERM
lets ``docker``/``podman run`` stop the container (signal proxy) and remove it
(``--rm``); a conversion gets SIGKILL.

Kept cheap for ``venvoy run``: only the C module ``_ctypes`` is loaded (about
1 ms; the ``ctypes`` package costs 4 ms more), once, before the fork.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

PR_SET_PDEATHSIG = 1
_prctl: Callable[[int, int], int] | None = None


def _load_prctl() -> Callable[[int, int], int] | None:
    """libc's prctl(option, arg2), or None where there is none (not Linux)."""
    global _prctl
    if _prctl is not None or not sys.platform.startswith("linux"):
        return _prctl
    try:
        import _ctypes

        class _Int(_ctypes._SimpleCData):  # type: ignore[type-arg]  # what ctypes.c_int is
            _type_ = "i"

        class _ULong(_ctypes._SimpleCData):  # type: ignore[type-arg]  # ctypes.c_ulong
            _type_ = "L"

        class _Func(_ctypes.CFuncPtr):  # what CDLL makes for each symbol
            _flags_ = _ctypes.FUNCFLAG_CDECL
            _restype_ = _Int

        class _Libc:
            _handle = _ctypes.dlopen(None, os.RTLD_NOW)  # type: ignore[arg-type]  # the process: libc is in it

        func = _Func(("prctl", _Libc()))  # type: ignore[arg-type]
        func.argtypes = (_Int, _ULong, _ULong, _ULong, _ULong)

        def prctl(option: int, arg: int) -> int:
            return int(func(option, arg, 0, 0, 0))

        _prctl = prctl
    except (ImportError, AttributeError, OSError, TypeError):  # pragma: no cover - exotic builds
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)

            def prctl(option: int, arg: int) -> int:
                return int(libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0))

            _prctl = prctl
        except (ImportError, OSError, AttributeError):
            return None
    return _prctl


def prepare() -> None:
    """Load what :func:`die_with_parent` needs; call in the parent before forking."""
    _load_prctl()


def die_with_parent(sig: int, parent: int) -> None:
    """In a child between fork and exec: have ``sig`` sent when the parent dies.

    ``parent`` is the parent's PID read before the fork: if it is already gone
    (the kill came before the request), the child ends itself now.
    """
    prctl = _load_prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def preexec(sig: int = 9) -> Callable[[], None]:
    """A ``preexec_fn`` for subprocess: the child dies (``sig``) with venvoy."""
    prepare()
    parent = os.getpid()

    def hook() -> None:
        die_with_parent(sig, parent)

    return hook


__all__ = ["PR_SET_PDEATHSIG", "die_with_parent", "preexec", "prepare"]
