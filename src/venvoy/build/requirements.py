"""Requirements as the user gives them: files, a pyproject, or lines.

Every requirement line venvoy keeps passes one check,
:func:`venvoy.store.records.check_requirement_lines`: the same for ``init -r``
files, the library's package lists and records read back or imported. Local
files are written as absolute paths: a relative path in a requirements file is
read from that file's directory (uv itself would resolve it against the
temporary directory it locks in).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from venvoy.core.errors import BadRequest
from venvoy.store.records import check_requirement_lines, split_requirement, strip_comment

#: The package name a requirement starts with (PEP 508).
_NAME = re.compile(r"^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[[^\]]*\])?\s*(@)?")
#: Archive names a local file requirement ends with.
_ARCHIVES = (".whl", ".tar.gz", ".zip", ".tar.bz2", ".tgz")
#: Bound on one requirements or pyproject file (a real one is a few KiB).
MAX_REQUIREMENTS_BYTES = 4 << 20


def normalize(name: str) -> str:
    out = name.lower()
    for ch in "_.":
        out = out.replace(ch, "-")
    while "--" in out:
        out = out.replace("--", "-")
    return out


def local_location(requirement: str) -> str | None:
    """The local path a requirement names (``./x.whl``, ``name @ ../x.whl``,
    ``/abs/x.whl``), or None for a plain requirement or a URL."""
    head = requirement.split(";")[0].strip()
    match = _NAME.match(head)
    if match and match.group(2):  # name @ location
        location = head[match.end():].strip()
    elif head.startswith((".", "/", "~")) or head.endswith(_ARCHIVES):
        location = head
    else:
        return None
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", location):
        return None  # a URL (file:// URLs are absolute already)
    return location


def _absolute(line: str, base: Path, where: str) -> str:
    """``line`` with a relative local path made absolute against ``base``."""
    requirement, _pins = split_requirement(line, where)
    location = local_location(requirement)
    if location is None or location.startswith("/"):
        return line
    if location.startswith(("~", "file:")):
        raise BadRequest(f"{where}: {location[:80]!r} is not a path venvoy can resolve",
                         "give the file as a path relative to the requirements file, or absolute")
    path = (base / location).resolve()
    if not path.exists():
        raise BadRequest(f"{where}: {location[:80]!r} does not exist (relative paths are read "
                         f"from the requirements file's directory, {base})", "check the path")
    head, semicolon, marker = requirement.partition(";")
    head = head.rstrip()  # ends with ``location`` (see local_location)
    return " ".join([head[:len(head) - len(location)] + str(path) + (f" ;{marker}" if semicolon
                                                                    else ""),
                     *(f"--hash=sha256:{p}" for p in _pins)])


def check_lines(text: str, where: str) -> str:
    """Requirement lines given directly (the library's ``packages``): checked,
    and no relative paths, since there is no file to resolve them against."""
    check_requirement_lines(text, where)
    for number, line in enumerate(text.split("\n"), 1):
        location = local_location(split_requirement(line)[0]) if line.strip() else None
        if location is not None and not location.startswith("/"):
            raise BadRequest(f"{where}:{number}: {location[:80]!r} is a relative path",
                             "give local files as absolute paths")
    return text


def hash_pins(text: str) -> dict[str, set[str]]:
    """The sha256 ``--hash`` pins of requirement lines, by normalized package name."""
    pins: dict[str, set[str]] = {}
    for number, line in enumerate(text.split("\n"), 1):
        requirement, digests = split_requirement(line, f"requirements:{number}")
        if not digests:
            continue
        match = _NAME.match(requirement)
        if match is None or (local_location(requirement) is not None and not match.group(2)):
            raise BadRequest(f"requirements:{number}: a --hash pin on {requirement[:60]!r}, "
                             "which does not name its package",
                             "write it as NAME @ PATH-OR-URL --hash=sha256:...")
        pins.setdefault(normalize(match.group(1)), set()).update(digests)
    return pins


def read_requirements(files: Iterable[str | os.PathLike[str]] = (),
                      pyproject: str | os.PathLike[str] | None = None) -> str:
    """The requirement lines of the given files, concatenated and checked
    (comments and blank lines dropped, relative paths made absolute)."""
    lines: list[str] = []
    for f in files:
        path = Path(f)
        text = _read(path, "requirements file", "check the path given to --requirements")
        cleaned = [strip_comment(line).strip() for line in _join_continuations(text)]
        check_requirement_lines("\n".join(cleaned), str(path))
        base = path.absolute().parent
        for number, line in enumerate(cleaned, 1):
            if line:
                requirement, pins = split_requirement(line)
                line = " ".join([requirement, *(f"--hash=sha256:{p}" for p in pins)])
                lines.append(_absolute(line, base, f"{path}:{number}"))
    if pyproject is not None:
        deps = _pyproject_dependencies(Path(pyproject))
        check_lines("\n".join(deps), str(pyproject))
        lines += deps
    text = "".join(f"{line}\n" for line in lines)
    hash_pins(text)  # a pin that names no package is refused now, not at lock time
    return text


def _join_continuations(text: str) -> list[str]:
    """Lines with a trailing backslash joined to the next (pip's rule; pip-compile
    writes ``--hash`` pins so), each joined line kept in the first one's place
    and the others left blank, so line numbers in messages stay true."""
    lines = text.split("\n")
    out: list[str] = []
    pending: list[str] = []
    for line in lines:
        if line.endswith("\\") and strip_comment(line) == line:  # a comment is never continued
            pending.append(line[:-1])
            continue
        out.append(" ".join([*pending, line]))
        out.extend([""] * len(pending))
        pending = []
    if pending:
        out.append(" ".join(pending))
        out.extend([""] * (len(pending) - 1))
    return out


def _read(path: Path, what: str, hint: str) -> str:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_REQUIREMENTS_BYTES + 1)
    except FileNotFoundError:
        raise BadRequest(f"{what} {str(path)!r} does not exist", hint) from None
    except OSError as exc:
        raise BadRequest(f"cannot read {what} {path}: {exc.strerror or exc}", hint) from None
    if len(raw) > MAX_REQUIREMENTS_BYTES:
        raise BadRequest(f"{what} {path} is larger than {MAX_REQUIREMENTS_BYTES >> 20} MiB",
                         "give a requirements file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadRequest(f"{what} {path} is not UTF-8 text", "save it as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _pyproject_dependencies(path: Path) -> list[str]:
    from venvoy.core.config import parse_toml

    text = _read(path, "pyproject file", "check the path")
    data = parse_toml(text, str(path), "fix the file", BadRequest)
    project = data.get("project")
    deps = project.get("dependencies") if isinstance(project, dict) else None
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise BadRequest(f"{path} has no [project] dependencies list of strings",
                         "add one or use --requirements")
    return [d.strip() for d in deps if d.strip()]
