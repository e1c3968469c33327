"""Machine architectures and Python versions: the one table and the one check.

Each ecosystem names an architecture its own way (``uname``/wheels say
``x86_64``, OCI image configs say ``amd64``, Debian says ``amd64`` too but
``armhf``/``ppc64el`` where Go says ``arm``/``ppc64le``); one row per
architecture keeps them from drifting apart.
"""

from __future__ import annotations

from venvoy.core.errors import BadRequest


class Arch:
    """One architecture under its three names."""

    __slots__ = ("debian", "machine", "oci")

    def __init__(self, machine: str, oci: str, debian: str) -> None:
        self.machine = machine  #: uname -m, wheel platform tags, pylock
        self.oci = oci  #: image config "architecture" (Go's GOARCH)
        self.debian = debian  #: dpkg --print-architecture

    def __repr__(self) -> str:
        return f"Arch({self.machine!r}, {self.oci!r}, {self.debian!r})"


#: Every architecture venvoy can name; the first two are the ones locks and
#: wheelhouses are made for.
ARCHS: tuple[Arch, ...] = (
    Arch("x86_64", "amd64", "amd64"),
    Arch("aarch64", "arm64", "arm64"),
    Arch("ppc64le", "ppc64le", "ppc64el"),
    Arch("s390x", "s390x", "s390x"),
    Arch("riscv64", "riscv64", "riscv64"),
    Arch("i686", "386", "i386"),
    Arch("armv7l", "arm", "armhf"),
)
#: Architectures a lock (and so an environment) can be made for.
LOCK_ARCHES = ("x86_64", "aarch64")

_BY_NAME: dict[str, Arch] = {}
for _a in reversed(ARCHS):
    for _n in (_a.debian, _a.oci, _a.machine):
        _BY_NAME[_n] = _a
_BY_NAME["i386"] = ARCHS[5]
_BY_NAME["arm64"] = ARCHS[1]


def arch(name: str) -> Arch | None:
    """The row for any of an architecture's names (case-insensitive), or None."""
    return _BY_NAME.get(name.lower())


def host() -> Arch:
    """This machine's architecture (an unknown one keeps its uname name everywhere)."""
    import platform

    machine = platform.machine().lower()
    return arch(machine) or Arch(machine, machine, machine)


#: Python versions an environment can have.
KNOWN_PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14")


def is_python_version(text: object) -> bool:
    """Whether ``text`` looks like ``3.N`` (the format; not whether venvoy supports it)."""
    if not isinstance(text, str) or not text.startswith("3.") or not text.isascii():
        return False
    minor = text[2:]
    return minor.isdigit() and 1 <= len(minor) <= 2


def check_python(python: str) -> str:
    """Return ``python`` if venvoy can make an environment for it, else one clear line."""
    if python not in KNOWN_PYTHONS:
        raise BadRequest(f"unsupported Python version {python!r}",
                         f"choose one of {', '.join(KNOWN_PYTHONS)}")
    return python


__all__ = ["ARCHS", "KNOWN_PYTHONS", "LOCK_ARCHES", "Arch", "arch", "check_python", "host",
           "is_python_version"]
