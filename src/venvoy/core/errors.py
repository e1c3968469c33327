"""Errors a user can act on.

Every failure venvoy expects (bad input, a missing runtime or image, a device that
is not there) is a :class:`VenvoyError`. The CLI prints it as one line, with what
to do, and exits non-zero without a traceback; library callers catch it as usual.
"""

from __future__ import annotations

#: Exit status for venvoy's own errors, as ``docker run`` and ``podman run`` use
#: 125 for "the container never ran", so scripts can tell it from the command's.
EXIT_VENVOY_ERROR = 125


class VenvoyError(Exception):
    """A failure with a one-line explanation and a hint on what to do next."""

    def __init__(self, message: str, hint: str = "", exit_code: int = EXIT_VENVOY_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class NotFound(VenvoyError):
    """What was asked for (an environment, an image, a file) does not exist."""


class RuntimeNotFound(NotFound):
    """The requested container runtime is not installed or not usable here."""


class ImageNotFound(NotFound):
    """The image given to ``run`` is not known to the runtime."""


class BadRequest(VenvoyError):
    """A request that cannot be honoured as given (bad name, mount, option, value...)."""


class AlreadyExists(VenvoyError):
    """Creating it would replace something that exists (use --force or another name)."""


class DamagedError(VenvoyError):
    """A file venvoy reads (archive, record, cache entry, registry answer) is
    damaged or was tampered with; nothing was used from it."""


class RuntimeFailed(VenvoyError):
    """A container runtime was asked to do something and failed."""
