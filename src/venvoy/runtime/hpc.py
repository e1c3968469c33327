"""Is this an HPC system? Scheduler variables first, then the host name.

A scheduler variable is proof (we are inside a job). A host name such as
``login01`` or ``node-17`` is a strong hint. The mere presence of ``HOSTNAME``
proves nothing, so it is never used on its own.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

#: (variable, scheduler) pairs; SGE's JOB_ID counts only beside SGE_ROOT
#: because plenty of unrelated tools set a JOB_ID.
SCHEDULER_VARIABLES: tuple[tuple[str, str], ...] = (
    ("SLURM_JOB_ID", "Slurm"),
    ("PBS_JOBID", "PBS"),
    ("LSB_JOBID", "LSF"),
)
HOST_KEYWORDS = ("login", "compute", "node", "hpc", "cluster")


class HpcSignal:
    """Whether this looks like HPC, and the evidence that said so."""

    __slots__ = ("is_hpc", "signal")

    def __init__(self, is_hpc: bool, signal: str | None) -> None:
        self.is_hpc = is_hpc
        self.signal = signal

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HpcSignal) and (self.is_hpc, self.signal) == (
            other.is_hpc, other.signal)

    def __hash__(self) -> int:
        return hash((self.is_hpc, self.signal))

    def __repr__(self) -> str:
        return f"HpcSignal(is_hpc={self.is_hpc!r}, signal={self.signal!r})"

    def __bool__(self) -> bool:
        return self.is_hpc


def hostname_is_hpc(hostname: str) -> bool:
    """True when a dot-, dash- or underscore-separated word of the host name is
    a keyword, optionally followed by digits: "login01", "node-17",
    "hpc.example.org", but not "nodejs" or "mycluster". (No regex: `re` is a
    measurable share of `venvoy run`'s start-up.)"""
    words = hostname.lower().replace("-", ".").replace("_", ".").split(".")
    for word in words:
        for key in HOST_KEYWORDS:
            rest = word[len(key):]
            if word.startswith(key) and (not rest or (rest.isascii() and rest.isdigit())):
                return True
    return False


def detect_hpc(environ: Mapping[str, str] | None = None, hostname: str | None = None) -> HpcSignal:
    """Return whether we run on HPC and which signal decided it."""
    env = os.environ if environ is None else environ
    for var, scheduler in SCHEDULER_VARIABLES:
        if env.get(var):
            return HpcSignal(True, f"{var} is set ({scheduler} job)")
    if env.get("JOB_ID") and env.get("SGE_ROOT"):
        return HpcSignal(True, "JOB_ID and SGE_ROOT are set (SGE job)")
    host = os.uname().nodename if hostname is None else hostname
    if hostname_is_hpc(host):
        return HpcSignal(True, f"host name {host!r} looks like a cluster node")
    return HpcSignal(False, None)
