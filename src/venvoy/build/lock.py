"""Locking requirements into a PEP 751 ``pylock.toml`` with ``uv``, and reading it back.

A lock is resolved for one target (a Python X.Y on a Linux machine with a given
glibc), so it lists exactly the files that target can install, each with its
sha256. The lock text is the identity of an environment: :func:`lock_hash`
turns it into the key, :func:`files_to_fetch` says which files to download and
:func:`requirements_txt` turns it into a ``--require-hashes`` install list.
"""

from __future__ import annotations

import itertools
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from venvoy.core.errors import BadRequest, VenvoyError
from venvoy.core.platform import LOCK_ARCHES, arch, host, is_python_version
from venvoy.store.records import lock_hash

#: CA bundle used when none is configured and the system has one (Debian, Ubuntu, Alpine).
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

#: glibc minor versions uv accepts in ``--python-platform <arch>-manylinux_2_<minor>``
#: (uv 0.13: 2_17, 2_28 and 2_31 to 2_40).
_UV_MANYLINUX_MINORS = (17, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_LOCK_NAME = "pylock.toml"
_REQ_NAME = "requirements.in"
_MAX_MESSAGE = 300


@dataclass(frozen=True)
class Platform:
    """Target of a lock: Python X.Y and a Linux machine."""

    python: str  # "3.11"
    arch: str = "x86_64"  # or "aarch64" ("amd64"/"arm64" are accepted and normalised)
    glibc: str = "2.36"  # the base image's glibc, e.g. bookworm 2.36, trixie 2.41

    def __post_init__(self) -> None:
        parts = self.python.split(".")
        if not (is_python_version(".".join(parts[:2])) and len(parts) <= 3
                and all(p.isdigit() for p in parts[2:])):
            raise VenvoyError(f"unsupported Python version {self.python!r}", "give it as X.Y, e.g. 3.11")
        row = arch(self.arch)
        if row is None or row.machine not in LOCK_ARCHES:
            raise VenvoyError(f"unsupported architecture {self.arch!r}",
                              f"use {' or '.join(LOCK_ARCHES)}")
        object.__setattr__(self, "arch", row.machine)
        if not re.fullmatch(r"2\.\d+", self.glibc):
            raise VenvoyError(f"unsupported glibc version {self.glibc!r}", "give it as 2.N, e.g. 2.36")

    def uv_platform(self) -> str:
        """uv's ``--python-platform`` value: the newest manylinux uv knows that this glibc runs."""
        minor = int(self.glibc.split(".")[1])
        usable = [m for m in _UV_MANYLINUX_MINORS if m <= minor]
        if not usable:
            raise VenvoyError(f"glibc {self.glibc} is too old: manylinux wheels need glibc 2.17 or newer",
                              "use a newer base image")
        return f"{self.arch}-manylinux_2_{usable[-1]}"


@dataclass(frozen=True)
class LockedFile:
    """One file of a locked package: where it is, its name and its hash."""

    url: str  # an http(s):// or file:// URL, or a local path
    filename: str
    sha256: str  # lower-case hex
    size: int | None


@dataclass(frozen=True)
class LockedPackage:
    """One package of a lock, with the files for the lock's platform."""

    name: str
    version: str
    wheels: tuple[LockedFile, ...]
    sdist: LockedFile | None
    marker: str | None = None  # environment marker uv kept, e.g. "python_full_version < '3.13'"


class ResolveError(VenvoyError):
    """``uv`` could not resolve the requirements; ``details`` holds uv's full output."""

    def __init__(self, message: str, hint: str = "", details: str = "") -> None:
        super().__init__(message, hint)
        self.details = details


# --------------------------------------------------------------------------- helpers


def ca_bundle(environ: Mapping[str, str] | None = None) -> str | None:
    """The CA bundle to trust: SSL_CERT_FILE, REQUESTS_CA_BUNDLE, PIP_CERT, else the system's."""
    env = os.environ if environ is None else environ
    for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT"):
        value = env.get(var)
        if value and os.path.isfile(value):
            return value
    return SYSTEM_CA_BUNDLE if os.path.isfile(SYSTEM_CA_BUNDLE) else None


def uv_binary() -> str:
    """Path of the ``uv`` executable: the ``uv`` Python package's, else ``uv`` on PATH."""
    try:
        import importlib

        found: str = importlib.import_module("uv").find_uv_bin()
        if found and os.access(found, os.X_OK):
            return found
    except (ImportError, FileNotFoundError, AttributeError):
        pass
    on_path = shutil.which("uv")
    if on_path:
        return on_path
    raise VenvoyError("uv not found", "pip install uv")


def _normalise(text: str) -> str:
    """Lock text with LF line endings and exactly one final newline."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.rstrip("\n") + "\n"


def _one_line(text: str, limit: int = _MAX_MESSAGE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _load_toml(text: str, what: str) -> dict[str, Any]:
    from venvoy.core.config import parse_toml

    return parse_toml(text, what, "re-create the lock")


def host_arch() -> str:
    """This machine's architecture as locks name it (x86_64, aarch64)."""
    return host().machine


# --------------------------------------------------------------------------- reading locks


def _malformed(detail: str) -> VenvoyError:
    return VenvoyError(f"malformed lock: {detail}", "re-create the lock")


def _file(pkg: str, key: str, entry: object) -> LockedFile:
    if not isinstance(entry, dict):
        raise _malformed(f"package {pkg!r}: {key} entry is not a table")
    location = entry.get("url", entry.get("path"))
    if not isinstance(location, str) or not location:
        raise _malformed(f"package {pkg!r}: {key} entry has no url or path")
    name = entry.get("name")
    if name is None:
        parts = urlsplit(location)
        raw = unquote(parts.path) if parts.scheme and len(parts.scheme) > 1 else location
        name = posixpath.basename(raw.replace("\\", "/"))
    if not isinstance(name, str) or not name or name in {".", ".."} or "/" in name or "\\" in name:
        raise _malformed(f"package {pkg!r}: {key} entry has a bad file name {name!r}")
    hashes = entry.get("hashes")
    digest = hashes.get("sha256") if isinstance(hashes, dict) else None
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise _malformed(f"package {pkg!r}: {name} has no sha256 hash")
    size = entry.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise _malformed(f"package {pkg!r}: {name} has a bad size {size!r}")
    return LockedFile(url=location, filename=name, sha256=digest.lower(), size=size)


def _package(entry: object, index: int) -> LockedPackage:
    if not isinstance(entry, dict):
        raise _malformed(f"packages[{index}] is not a table")
    name, version, marker = entry.get("name"), entry.get("version"), entry.get("marker")
    if not isinstance(name, str) or not name:
        raise _malformed(f"packages[{index}] has no name")
    for source, what in (("vcs", "a VCS repository"), ("directory", "a local directory")):
        if source in entry:
            raise VenvoyError(f"package {name!r} comes from {what}, which venvoy cannot lock by hash",
                              "require a released version, or a wheel or sdist URL, instead")
    if not isinstance(version, str) or not version:
        raise _malformed(f"package {name!r} has no version")
    if marker is not None and not isinstance(marker, str):
        raise _malformed(f"package {name!r} has a bad marker")
    raw_wheels = entry.get("wheels", [])
    if not isinstance(raw_wheels, list):
        raise _malformed(f"package {name!r}: wheels is not an array")
    wheels = [_file(name, "wheels", w) for w in raw_wheels]
    sdist = _file(name, "sdist", entry["sdist"]) if "sdist" in entry else None
    if "archive" in entry:  # a direct URL requirement (`name @ https://.../file`)
        archive = _file(name, "archive", entry["archive"])
        if archive.filename.endswith(".whl"):
            wheels.append(archive)
        elif sdist is None:
            sdist = archive
    if not wheels and sdist is None:
        raise _malformed(f"package {name!r} has neither a wheel nor an sdist")
    return LockedPackage(name=name, version=version, wheels=tuple(wheels), sdist=sdist,
                         marker=marker or None)


def parse(text: str) -> list[LockedPackage]:
    """The packages of a ``pylock.toml`` text (PEP 751, lock-version 1.x)."""
    data = _load_toml(text, "lock")
    version = data.get("lock-version")
    if not isinstance(version, str) or version.split(".")[0] != "1":
        raise VenvoyError(f"unsupported lock-version {version!r}",
                          "venvoy reads PEP 751 locks, lock-version 1.x")
    packages = data.get("packages", [])
    if not isinstance(packages, list):
        raise _malformed("packages is not an array")
    return [_package(p, i) for i, p in enumerate(packages)]


def requirements_txt(packages: list[LockedPackage]) -> str:
    """``name==version [; marker] --hash=sha256:...`` lines (every wheel and sdist hash), for
    ``pip/uv pip install --require-hashes --no-deps --no-index --find-links DIR``."""
    lines = []
    for pkg in packages:
        files = [*pkg.wheels, *([pkg.sdist] if pkg.sdist else [])]
        hashes = dict.fromkeys(f.sha256 for f in files)
        line = f"{pkg.name}=={pkg.version}"
        if pkg.marker:
            line += f" ; {pkg.marker}"
        lines.append(line + "".join(f" --hash=sha256:{h}" for h in hashes))
    return "".join(line + "\n" for line in lines)


def files_to_fetch(pkgs: list[LockedPackage]) -> list[LockedFile]:
    """Every wheel listed (uv lists only the platform's), or the sdist of a package with no wheel."""
    files: list[LockedFile] = []
    for pkg in pkgs:
        if pkg.wheels:
            files.extend(pkg.wheels)
        elif pkg.sdist is not None:
            files.append(pkg.sdist)
    return files


# --------------------------------------------------------------------------- resolving


def _index_url(index_url: str | None, env: Mapping[str, str]) -> str | None:
    if index_url:
        return index_url
    for var in ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "PIP_INDEX_URL"):
        if env.get(var):
            return env[var]
    return None


def check_hash_pins(packages: list[LockedPackage], pins: dict[str, set[str]]) -> None:
    """Honour ``--hash=sha256:`` pins: every file the lock would install for a
    pinned package must have one of its pinned hashes (pip's rule), or the lock
    is refused with one line naming the file."""
    from venvoy.build.requirements import normalize

    for pkg in packages:
        allowed = pins.get(normalize(pkg.name))
        if allowed is None:
            continue
        for f in files_to_fetch([pkg]):
            if f.sha256 not in allowed:
                raise BadRequest(f"{pkg.name} {pkg.version}: {f.filename} has sha256 {f.sha256}, "
                                 "which is not one of its --hash pins",
                                 "pin the hash of every file the lock lists for it, a version "
                                 "whose files match the pins, or no hash at all")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class _UvOutput:
    errors: list[str]
    causes: list[list[str]]  # each cause: its first line, then its continuation lines
    hints: list[list[str]]

    @property
    def text(self) -> str:
        return " ".join([*self.errors, *(" ".join(c) for c in self.causes)])


def _split_uv_output(stderr: str) -> _UvOutput:
    """uv's report as ``error:`` lines, ``cause:`` blocks and ``hint:`` blocks."""
    out = _UvOutput([], [], [])
    current: list[str] | None = None
    for raw in _ANSI.sub("", stderr).splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("error:"):
            out.errors.append(line[len("error:"):].strip())
            current = None
        elif line.startswith("cause:"):
            current = [line[len("cause:"):].strip()]
            out.causes.append(current)
        elif line.startswith("hint:"):
            current = [line[len("hint:"):].strip()]
            out.hints.append(current)
        elif current is not None and raw[:1].isspace():
            current.append(line)
        else:
            current = None
    return out


def _network_hint(text: str) -> str:
    text = re.sub(r"\w+://\S+", "", text)  # host names such as badssl.com say nothing
    if re.search(r"certificate|UnknownIssuer|\btls\b|\bssl\b", text, re.IGNORECASE):
        return ("set SSL_CERT_FILE to the CA bundle that signed the index's certificate "
                "(e.g. a proxy's CA in /etc/ssl/certs/ca-certificates.crt)")
    return "check the network connection and proxy settings (HTTPS_PROXY, NO_PROXY)"


def _resolve_error(stderr: str, platform: Platform) -> ResolveError:
    """One line that says what went wrong, from uv's multi-line error report."""
    out = _split_uv_output(stderr)
    text = " ".join(out.text.split())
    details = stderr.strip()
    prefix = "cannot resolve requirements: "

    def error(message: str, hint: str) -> ResolveError:
        return ResolveError(_one_line(prefix + message), hint, details)

    found = re.search(r"(\S+) was not found in the (?:package registry|provided package locations)", text)
    if found:
        return error(f"no package named '{found.group(1)}' on the index", "check the name")
    found = re.search(r"the requested Python version \(([^)]*)\) does not satisfy Python(\S+?) and "
                      r"(?:all of: )?([A-Za-z0-9][A-Za-z0-9._-]*)", text)
    if found:
        return error(f"{found.group(3)} needs Python{found.group(2)} in the versions allowed, "
                     f"but the environment has Python {platform.python}",
                     "choose another Python version or allow other versions of the package")
    found = re.search(r"there is no version of (\S+?)(?:,| and | we |$)", text)
    if found:
        return error(f"no version {found.group(1)} on the index", "check the version specifier")
    if any("Couldn't parse requirement" in e or "Failed to parse" in e for e in out.errors):
        cause = out.causes[0] if out.causes else []
        reason = cause[0] if cause else ""
        offending = next((c for c, nxt in itertools.pairwise(cause[1:]) if set(nxt) <= {"^"}), "")
        what = f"invalid requirement {offending!r}" if offending else "invalid requirement"
        return error(f"{what}: {reason}" if reason else what, "fix the requirement")
    if any(e.startswith("Git operation failed") for e in out.errors):
        lines = [line for cause in out.causes for line in cause]
        last = lines[-1] if lines else ""
        fatal = next((line for line in lines if line.startswith(("fatal:", "error:"))), last)
        return error(f"git failed: {fatal}", _network_hint(text))
    if re.search(r"Failed to fetch|error sending request|dns error|tcp connect error|"
                 r"Connection refused|timed out|invalid peer certificate|network", text, re.IGNORECASE):
        url = re.search(r"(?:Failed to fetch:|for url) \(?`?(https?://[^\s`)]+)", text)
        status = re.search(r"HTTP status (?:client|server) error \(([^)]*)\)", text)
        last = " ".join(out.causes[-1]) if out.causes else (out.errors[-1] if out.errors else "")
        where = f" at {url.group(1)}" if url else ""
        if status:
            return error(f"the package index answered {status.group(1)}{where}",
                         "check the index URL and its credentials")
        return error(f"cannot reach the package index{where} ({last})", _network_hint(text))
    build = next((m for e in out.errors if (m := re.match(r"Failed to build `([^`]+)`", e))), None)
    if build:
        lines = [line for cause in out.causes for line in cause]
        reason = f" ({lines[-1]})" if lines else ""
        return error(f"{build.group(1)} has no wheel for this platform and its source distribution "
                     f"failed to build{reason}",
                     "require a version that has wheels for this Python and platform")
    if any(e.startswith("No solution found") for e in out.errors):
        first = " ".join(out.causes[0]) if out.causes else ""
        return error(f"the requirements conflict: {first}" if first else "the requirements conflict",
                     "loosen the conflicting version constraints")
    head = out.errors[0] if out.errors else (details.splitlines()[0] if details else "uv failed")
    last = " ".join(out.causes[-1]) if out.causes else ""
    return error(f"{head}: {last}" if last else head, "see uv's output for details")


def resolve(requirements: str, platform: Platform, *, upgrade: bool = False,
            previous: str | None = None, index_url: str | None = None) -> str:
    """Resolve requirement lines into a PEP 751 ``pylock.toml`` text with hashes.

    The lock is for ``platform`` only (uv lists just the files it can install).
    Versions pinned in ``previous`` are kept where still allowed, unless
    ``upgrade``. The same inputs (and the same index contents) give the same
    bytes. Every failure is a one-line :class:`ResolveError` (a VenvoyError)
    whose ``details`` keep uv's full report.
    """
    from venvoy.build.requirements import check_lines, hash_pins

    check_lines(requirements, "requirements")
    pins = hash_pins(requirements)
    target = platform.uv_platform()
    env = dict(os.environ)
    bundle = ca_bundle(env)
    if bundle:
        env["SSL_CERT_FILE"] = bundle
    env["NO_COLOR"] = "1"
    index = _index_url(index_url, env)
    if previous is not None and not upgrade:
        _load_toml(previous, "the previous lock")
    uv = uv_binary()
    with tempfile.TemporaryDirectory(prefix="venvoy-lock-") as tmp:
        work = Path(tmp)
        (work / _REQ_NAME).write_text(requirements if requirements.endswith("\n") else requirements + "\n",
                                      encoding="utf-8")
        if previous is not None and not upgrade:
            (work / _LOCK_NAME).write_text(_normalise(previous), encoding="utf-8")
        argv = [uv, "pip", "compile", _REQ_NAME, "--output-file", _LOCK_NAME, "--format", "pylock.toml",
                "--no-header", "--generate-hashes", "--python-version", platform.python,
                "--python-platform", target, "--quiet", "--color", "never"]
        if upgrade:
            argv.append("--upgrade")
        if index:
            argv += ["--index-url", index]
        try:
            proc = subprocess.run(argv, cwd=work, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, errors="replace", check=False)
        except OSError as exc:
            raise VenvoyError(f"cannot run uv ({uv}): {exc.strerror or exc}", "pip install uv") from None
        if proc.returncode != 0:
            raise _resolve_error(proc.stderr or proc.stdout, platform)
        try:
            text = (work / _LOCK_NAME).read_text(encoding="utf-8")
        except OSError:
            raise ResolveError("cannot resolve requirements: uv wrote no lock file",
                               "see uv's output for details", proc.stderr) from None
    text = _normalise(text)
    # Refuse now what venvoy could not install later (VCS checkouts, directories).
    check_hash_pins(parse(text), pins)
    return text


__all__ = [
    "LockedFile",
    "LockedPackage",
    "Platform",
    "ResolveError",
    "ca_bundle",
    "check_hash_pins",
    "files_to_fetch",
    "lock_hash",
    "parse",
    "requirements_txt",
    "resolve",
    "uv_binary",
]
