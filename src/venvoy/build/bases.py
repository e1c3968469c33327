"""Where an environment's base image comes from.

In order of preference (the rows of :data:`SOURCES`), for
``venvoy init NAME --python X.Y`` with no ``--base``:

1. the official ``python:X.Y-slim`` image, pulled with Docker or Podman and
   saved to a Docker archive in the store (skipped offline, or when no
   registry answers: a registry that cannot be reached is found out in
   seconds, never waited on);
2. a Debian root file system bootstrapped with ``mmdebstrap`` from Debian's
   mirror, whose ``python3`` is X.Y (3.11: bookworm, 3.13: trixie). It needs
   no registry and no container runtime, and is built once per store.

``--base`` names a tar (a Docker or OCI archive, or a plain root file system
tar) or an image reference (a local Docker/Podman image, else pulled).
Everything a runtime does (inspect, pull, save) is asked of its adapter
(``has_image_store``, ``image_id``, ``pull``, ``save``), never decided by its name.

Every base lands in ``<store>/bases/`` as a read-only Docker archive with a
small JSON record beside it (image ID, Python, glibc, where it came from), so
asking again costs a file read. Entries are made under a file lock, with a
re-check once the lock is held, under a temporary name then renamed: many
processes asking at once make it exactly once.
"""

from __future__ import annotations

import contextlib
import json
import lzma
import os
import re
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from venvoy.core.errors import RuntimeFailed, VenvoyError
from venvoy.core.fs import (
    TMP_PREFIX,
    atomic_write,
    clean_stale,
    file_lock,
    open_fresh,
    sha256_file,
    temp_name,
)
from venvoy.core.platform import KNOWN_PYTHONS, check_python, host, is_python_version
from venvoy.image.compress import HEAD, kind_of
from venvoy.image.oci import (
    ImageInfo,
    copy_as_docker_archive,
    inspect_archive,
    open_archive,
    open_layers,
    read_source,
    rootfs_to_archive,
)
from venvoy.store.layout import BASES_DIR

TYPE_CHECKING = False
if TYPE_CHECKING:
    from venvoy.runtime.base import Runtime

#: Python version -> the Debian suite whose ``python3`` it is.
OFFLINE_SUITES = {"3.11": "bookworm", "3.13": "trixie"}
#: glibc of Debian and Ubuntu releases, when the libc file itself says nothing.
CODENAME_GLIBC = {
    "buster": "2.28", "bullseye": "2.31", "bookworm": "2.36", "trixie": "2.41", "forky": "2.41",
    "focal": "2.31", "jammy": "2.35", "noble": "2.39",
}
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_REGISTRY = "docker.io/library"
BOOTSTRAP_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
#: Seconds to wait for a TCP connection to a registry before calling it unreachable.
PROBE_TIMEOUT_S = 5.0
_RECORD_VERSION = 1
#: The most a base's JSON record may hold (real ones: a few hundred bytes).
_MAX_RECORD = 1 << 16


@dataclass(frozen=True)
class BaseImage:
    """A base image ready to build on."""

    archive: Path  # a docker-archive in the store, read-only after creation
    image_id: str  # ImageInfo.image_id of that archive
    python: str  # "3.11"
    glibc: str  # "2.36"
    source: str  # human text: where it came from


Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# -- entry point -----------------------------------------------------------------------

def resolve_base(python: str, base: str | None, *, store: Path, runtime: Runtime | None,
                 offline: bool = False, progress: Progress | None = None) -> BaseImage:
    """The base image for an environment with Python ``python`` (see the module doc)."""
    say = progress or _quiet
    check_python(python)
    bases = Path(store) / BASES_DIR
    if base:
        found = _from_base_arg(base, bases, runtime, offline, say)
        return _same_python(found, python)
    return _from_sources(python, bases, runtime, offline, say)


# -- the sources of a base, in order of preference ---------------------------------------

@dataclass(frozen=True)
class BaseSource:
    """A row of :data:`SOURCES`: one place a base for ``--python X.Y`` (no ``--base``) comes from.

    ``unavailable`` says, without trying, why this source cannot give Python
    ``X.Y`` here (or None); ``make`` gives the base or raises a VenvoyError,
    and the next row is tried. ``hint`` is what would make it work, for the
    error when every row failed.
    """

    label: str
    online: bool  #: needs a network: skipped with --offline
    hint: str
    unavailable: Callable[[str, Runtime | None], str | None]
    make: Callable[[str, Path, Runtime | None, Progress], BaseImage]


def _official_unavailable(python: str, runtime: Runtime | None) -> str | None:
    if runtime is not None and runtime.has_image_store:
        return None
    what = runtime.name if runtime is not None else "no runtime"
    return f"pull {official_reference(python)}: needs Docker or Podman ({what} chosen)"


def _official(python: str, bases: Path, runtime: Runtime | None, say: Progress) -> BaseImage:
    return _from_reference(official_reference(python), bases, runtime, say)


def _debian_unavailable(python: str, runtime: Runtime | None) -> str | None:
    if python in OFFLINE_SUITES:
        return None
    return "Debian bootstrap gives " + " or ".join(f"{v} ({s})" for v, s in OFFLINE_SUITES.items())


def _debian(python: str, bases: Path, runtime: Runtime | None, say: Progress) -> BaseImage:
    return bootstrap(OFFLINE_SUITES[python], bases, progress=say)


#: Where a base comes from when ``--base`` is not given, first choice first.
#: Adding a source is one function (publishing with :func:`_publish` under
#: :func:`_locked`, see :func:`bootstrap`) and one row here.
SOURCES: tuple[BaseSource, ...] = (
    BaseSource("the official image", True, "make a registry reachable",
               _official_unavailable, _official),
    BaseSource("a Debian bootstrap", False, "set VENVOY_DEBIAN_MIRROR to a reachable Debian mirror",
               _debian_unavailable, _debian),
)


def _from_sources(python: str, bases: Path, runtime: Runtime | None, offline: bool,
                  say: Progress) -> BaseImage:
    """The first base :data:`SOURCES` gives; one line listing every reason when none does."""
    tried: list[str] = []
    hints: list[str] = []
    failed: list[VenvoyError] = []
    for source in SOURCES:
        if offline and source.online:
            continue
        why = source.unavailable(python, runtime)
        if why is not None:
            tried.append(why)
            continue
        if tried:
            say(f"{tried[-1]}; falling back to {source.label}")
        try:
            return _same_python(source.make(python, bases, runtime, say), python)
        except VenvoyError as exc:
            tried.append(_one_line(exc.message))
            hints.append(source.hint)
            failed.append(exc)
    if len(tried) == 1 and failed:
        raise failed[0]  # the one source there was said why, in full
    hints.insert(0, f"pass --base with a Python {python} image or tar")
    if offline:
        hints.append("go online")
    what = "no offline base" if offline else "no base image"
    raise VenvoyError(f"{what} for Python {python}: {'; '.join(tried)}",
                      ", ".join(hints[:-1]) + (", or " if len(hints) > 1 else "") + hints[-1])


def official_reference(python: str) -> str:
    """The official image for a Python version (``VENVOY_BASE_REGISTRY`` replaces docker.io/library)."""
    registry = os.environ.get("VENVOY_BASE_REGISTRY", "").strip().rstrip("/") or DEFAULT_REGISTRY
    return f"{registry}/python:{python}-slim"


def _same_python(found: BaseImage, python: str) -> BaseImage:
    if found.python != python:
        raise VenvoyError(f"base image {found.source} has Python {found.python}, not {python}",
                          f"use --python {found.python}, or a base image with Python {python}")
    return found


def _one_line(text: str, limit: int = 240) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    line = lines[-1] if lines else "(no output)"
    return line if len(line) <= limit else line[: limit - 3] + "..."


# -- the store's records -----------------------------------------------------------------

def _record_path(bases: Path, key: str) -> Path:
    return bases / f"{key}.json"


def _cached(bases: Path, key: str) -> BaseImage | None:
    """The stored base under ``key`` if it is complete, else None."""
    try:
        data = json.loads(_record_path(bases, key).read_bytes()[:_MAX_RECORD])
        if not isinstance(data, dict) or data.get("version") != _RECORD_VERSION:
            return None
        # a damaged or edited record is remade, never followed outside bases/
        if data.get("archive") != f"{key}.tar" or not _is_image_id(data.get("image_id")) \
                or not is_python_version(data.get("python")) or not isinstance(data.get("source"), str) \
                or not isinstance(data.get("glibc"), str) or not re.fullmatch(r"2\.\d+", data["glibc"]):
            return None
        archive = bases / data["archive"]
        if archive.stat().st_size != data.get("size"):
            return None
        return BaseImage(archive, data["image_id"], data["python"], data["glibc"], data["source"])
    except (OSError, ValueError, RecursionError):
        return None


def _is_image_id(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", value) is not None


def _publish(bases: Path, key: str, tmp_archive: Path, source: str,
             extra: dict[str, Any] | None = None) -> BaseImage:
    """Inspect a finished archive, move it into place read-only, write its record."""
    info = inspect_archive(tmp_archive)
    python, glibc = detect_python_glibc(tmp_archive, info)
    archive = bases / f"{key}.tar"
    tmp_archive.chmod(0o444)
    os.replace(tmp_archive, archive)
    record = {"version": _RECORD_VERSION, "archive": archive.name, "size": archive.stat().st_size,
              "image_id": info.image_id, "python": python, "glibc": glibc, "source": source,
              **(extra or {})}
    atomic_write(_record_path(bases, key), json.dumps(record, indent=1, sort_keys=True) + "\n")
    return BaseImage(archive, info.image_id, python, glibc, source)


def _tmp(bases: Path, name: str) -> Path:
    """An owner-tagged name (venvoy.core.fs): what a killed run left is cleaned later."""
    return bases / temp_name(f"{TMP_PREFIX}{name[:80]}")


def _locked(bases: Path, key: str, say: Progress) -> contextlib.AbstractContextManager[None]:
    """The per-key lock (venvoy.core.fs.file_lock); says so when another process holds it."""
    path = bases / f"{key}.lock"
    clean_stale(bases)  # what a killed run left half-made (its owner is gone)
    return file_lock(path, timeout=float(os.environ.get("VENVOY_LOCK_TIMEOUT", "1800")),
                     what=f"the base image {key}",
                     waiting=lambda: say("waiting for another venvoy that is making the same "
                                         f"base image ({path})"))


# -- Debian bootstrap ------------------------------------------------------------------

def debian_architecture() -> str:
    """This machine's architecture as Debian names it (``dpkg --print-architecture``)."""
    return host().debian


def bootstrap(suite: str, bases: Path, *, progress: Progress | None = None) -> BaseImage:
    """A Debian ``suite`` root file system with Python, made with mmdebstrap, cached by suite+arch."""
    say = progress or _quiet
    arch = debian_architecture()
    key = f"debian-{suite}-{arch}"
    found = _cached(bases, key)
    if found is not None:
        return found
    with _locked(bases, key, say):
        found = _cached(bases, key)  # made by another process while we waited
        if found is not None:
            return found
        mmdebstrap = shutil.which("mmdebstrap")
        if mmdebstrap is None:
            raise VenvoyError("mmdebstrap is not installed, so no Debian base can be bootstrapped",
                              "install it (`apt install mmdebstrap`) or pass --base with an image or tar")
        mirror = os.environ.get("VENVOY_DEBIAN_MIRROR", "").strip() or DEFAULT_MIRROR
        rootfs = _tmp(bases, f"{key}-rootfs.tar")
        tmp_archive = _tmp(bases, f"{key}.tar")
        log = bases / f"{key}.log"
        argv = [mmdebstrap, "--variant=minbase", "--format=tar", f"--architectures={arch}",
                "--include=" + ",".join(BOOTSTRAP_PACKAGES)]
        if os.geteuid() != 0:
            argv.append("--mode=unshare")
        argv += [suite, str(rootfs), mirror]
        say(f"bootstrapping Debian {suite} ({arch}) with mmdebstrap from {mirror} "
            "(about half a minute, once per store)")
        started = time.monotonic()
        try:
            with open_fresh(log) as fh:  # never through a link planted in the store
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                raise VenvoyError(
                    f"mmdebstrap {suite} failed (exit {proc.returncode}): {_log_error(log)}",
                    f"full log: {log}; check that {mirror} is reachable (VENVOY_DEBIAN_MIRROR)")
            rootfs_to_archive(rootfs, tmp_archive, repo_tag=f"localhost/venvoy-base:debian-{suite}",
                              architecture=host().oci)
            found = _publish(bases, key, tmp_archive, f"Debian {suite} bootstrap (mmdebstrap)",
                             {"suite": suite, "arch": arch, "mirror": mirror})
        except OSError as exc:
            raise VenvoyError(f"bootstrapping Debian {suite} failed: {exc}") from None
        finally:
            rootfs.unlink(missing_ok=True)
            tmp_archive.unlink(missing_ok=True)
        log.unlink(missing_ok=True)
        say(f"bootstrapped Debian {suite} in {time.monotonic() - started:.0f} s: Python {found.python}, "
            f"glibc {found.glibc}")
        return found


def _log_error(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    errors = [ln for ln in lines if ln.startswith(("E:", "error", "Error"))]
    return _one_line(errors[0] if errors else "\n".join(lines[-1:]))


# -- --base: a tar or an image reference -----------------------------------------------

def _looks_like_path(base: str) -> bool:
    return (base.startswith(("/", "./", "../", "~")) or base.endswith((".tar", ".tar.gz", ".tgz", ".oci"))
            or os.path.exists(base))


def _from_base_arg(base: str, bases: Path, runtime: Runtime | None, offline: bool,
                   say: Progress) -> BaseImage:
    if _looks_like_path(base):
        path = Path(base).expanduser()
        if not path.is_file():
            raise VenvoyError(f"base {base}: no such file",
                              "pass a `docker save`/`podman save` tar, a root file system tar, "
                              "or an image reference")
        return from_tar(path, bases, progress=say)
    return _from_reference(base, bases, runtime, say, pull=not offline)


def _tar_kind(path: Path) -> str:
    """"image" (docker-archive or OCI layout), "rootfs", or a VenvoyError."""
    names = set()
    try:
        with open_archive(path) as tar:  # tar headers bounded: the file may be anyone's
            for member in tar:
                name = member.name
                while name.startswith("./"):
                    name = name[2:]
                names.add(name.rstrip("/"))
    except VenvoyError as exc:
        raise VenvoyError(f"base {path} is not a readable tar: {exc.message}",
                          "pass a `docker save`/`podman save` tar or a tar of a root file system") from None
    except (OSError, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise VenvoyError(f"base {path} is not a readable tar: {exc}") from None
    if "manifest.json" in names or "index.json" in names:
        return "image"
    if {"etc", "usr", "bin"} & names or any(n.startswith(("etc/", "usr/")) for n in names):
        return "rootfs"
    raise VenvoyError(f"base {path} is neither an image archive nor a root file system tar",
                      "pass a `docker save`/`podman save` tar or a tar of a root file system")


def from_tar(path: Path, bases: Path, *, progress: Progress | None = None) -> BaseImage:
    """A base from a tar: an image archive copied into the store, or a root file system wrapped.

    Keyed by the tar's content; the (path, size, mtime) of the tar is remembered
    so that asking again with the same file does not read it again.
    """
    say = progress or _quiet
    path = Path(path).absolute()
    try:
        st = path.stat()
    except OSError as exc:
        raise VenvoyError(f"base {path}: {exc.strerror}") from None
    stamp = {"src_path": str(path), "src_size": st.st_size, "src_mtime_ns": st.st_mtime_ns}
    for record in sorted(bases.glob("file-*.json")) if bases.is_dir() else []:
        try:
            data = json.loads(record.read_bytes()[:_MAX_RECORD])
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(data, dict) and all(data.get(k) == v for k, v in stamp.items()):
            found = _cached(bases, record.stem)
            if found is not None:
                return found
    say(f"reading base {path}")
    try:
        key = f"file-{sha256_file(path)[:32]}"
    except OSError as exc:
        raise VenvoyError(f"cannot read base {path}: {exc.strerror}") from None
    with _locked(bases, key, say):
        found = _cached(bases, key)
        if found is not None:
            _update_record(bases, key, stamp)
            return found
        kind = _tar_kind(path)
        tmp_archive = _tmp(bases, f"{key}.tar")
        try:
            if kind == "rootfs":
                say(f"wrapping the root file system {path} as an image")
                rootfs_to_archive(path, tmp_archive, repo_tag=None)
            elif _is_plain_docker_archive(path):
                shutil.copyfile(path, tmp_archive)
            else:  # OCI layout, or compressed layers: rewrite as a docker-archive, same image ID
                say(f"converting {path} to a Docker archive")
                copy_as_docker_archive(path, tmp_archive)
            return _publish(bases, key, tmp_archive, str(path), stamp)
        except OSError as exc:
            raise VenvoyError(f"cannot copy base {path} into the store: {exc}") from None
        finally:
            tmp_archive.unlink(missing_ok=True)


def _update_record(bases: Path, key: str, extra: dict[str, Any]) -> None:
    try:
        record = _record_path(bases, key)
        data = json.loads(record.read_bytes()[:_MAX_RECORD])
        if not isinstance(data, dict):
            return
        data.update(extra)
        atomic_write(record, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except (OSError, ValueError, RecursionError):
        pass  # only a cache hint


def _is_plain_docker_archive(path: Path) -> bool:
    """An uncompressed docker-archive of one image whose layers are uncompressed: usable as it is.

    Anything else (compressed, an OCI layout, several images) is rewritten by
    :func:`copy_as_docker_archive`, which reads it the same way as every reader.
    """
    with open(path, "rb") as fh:
        if kind_of(fh.read(HEAD)) != "none":
            return False
    with open_archive(path) as tar:
        names = tar.getnames()
        if "manifest.json" not in names or names.count("manifest.json") != 1:
            return False
        source = read_source(tar, path)  # one clear error for a malformed manifest
        manifest_fh = tar.extractfile("manifest.json")
        if manifest_fh is None:
            return False
        with manifest_fh:
            try:
                entries = json.loads(manifest_fh.read(_MAX_RECORD * 16))
            except (ValueError, RecursionError):
                return False
        if not isinstance(entries, list) or len(entries) != 1:
            return False
        for layer in source.layers:
            layer_fh = tar.extractfile(layer)
            if layer_fh is None:
                return False
            with layer_fh:
                if kind_of(layer_fh.read(HEAD)) != "none":
                    return False
    return True


# -- image references: Docker / Podman ------------------------------------------------

def registry_endpoint(ref: str) -> tuple[str, int] | None:
    """(host, port) of the registry an image reference is pulled from; None when not worth probing."""
    first, sep, _rest = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        host = first
    else:
        return ("registry-1.docker.io", 443)
    if host in ("docker.io", "index.docker.io"):
        return ("registry-1.docker.io", 443)
    port: int | None = None
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::(\d+))?|([^:]+)(?::(\d+))?", host)
    if match is None:
        return None
    name = match.group(1) or match.group(3)
    digits = match.group(2) or match.group(4)
    if digits:
        port = int(digits)
    if port is None:
        if name in ("localhost", "127.0.0.1", "::1"):
            return None  # plain-HTTP loopback registries: let the runtime decide
        port = 443
    return (name, port)


def _proxied(environ: dict[str, str]) -> bool:
    return any(environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                        "ALL_PROXY", "all_proxy"))


def probe_registry(ref: str, environ: dict[str, str], timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the registry of ``ref`` cannot be reached, or None if it can (or cannot be told).

    A TCP connection with a short timeout, in a thread so that a DNS lookup that
    hangs cannot hold us either. Skipped behind a proxy (the runtime knows the
    way) and with ``VENVOY_REGISTRY_PROBE=0`` (e.g. a daemon with a mirror).
    """
    if os.environ.get("VENVOY_REGISTRY_PROBE", "1") == "0" or _proxied(environ):
        return None
    endpoint = registry_endpoint(ref)
    if endpoint is None:
        return None
    host, port = endpoint
    result: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(None)
        except OSError as exc:
            result.append(exc.strerror or str(exc))

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    if not result:
        return f"registry {host}:{port} did not answer within {timeout:.0f} s"
    return None if result[0] is None else f"registry {host}:{port} unreachable: {result[0]}"


def _pull(runtime: Runtime, ref: str, say: Progress) -> None:
    problem = probe_registry(ref, dict(runtime.environ))
    if problem:
        raise VenvoyError(f"cannot pull {ref}: {problem}",
                          "pass --base with an image tar or a local image, or use --offline")
    timeout = pull_timeout()
    say(f"pulling {ref} with {runtime.name}")
    try:
        runtime.pull(ref, timeout=timeout)
    except RuntimeFailed as exc:
        raise RuntimeFailed(_one_line(exc.message),
                            "check the name, or pass --base with an image tar or a local image "
                            f"(a slow registry: raise VENVOY_PULL_TIMEOUT, now {timeout:.0f} s)") from None


def pull_timeout() -> float:
    """Seconds a pull may take (``VENVOY_PULL_TIMEOUT``, default 900)."""
    text = os.environ.get("VENVOY_PULL_TIMEOUT", "").strip() or "900"
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise VenvoyError(f"VENVOY_PULL_TIMEOUT={text!r} is not a number of seconds",
                          "set it to a positive number, e.g. 900, or unset it")
    return value


def _qualified(ref: str) -> str:
    """``python:3.11-slim`` -> ``docker.io/library/python:3.11-slim`` (Podman will not guess)."""
    first, sep, _rest = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"docker.io/{ref}" if sep else f"docker.io/library/{ref}"


def _from_reference(ref: str, bases: Path, runtime: Runtime | None, say: Progress, *,
                    pull: bool = True) -> BaseImage:
    """A base from an image Docker or Podman has (or pulls): saved into the store, keyed by image ID.

    Runtimes without an image store (Apptainer, Singularity, Charliecloud) get
    a reference that names a registry host pulled by venvoy's own registry
    client (:func:`from_registry`).
    """
    if (runtime is None or not runtime.has_image_store) and names_registry(ref):
        return from_registry(ref, bases, say, pull=pull,
                             environ=dict(runtime.environ) if runtime is not None else None)
    if runtime is None or not runtime.has_image_store:
        what = runtime.name if runtime is not None else "no container runtime"
        raise VenvoyError(
            f"base image {ref} needs Docker or Podman to read it ({what} is in use)",
            f"save it to a tar where Docker or Podman is (`docker save -o base.tar {ref}`) and "
            "pass --base base.tar")
    image_id = runtime.image_id(ref)
    name = ref
    if image_id is None:
        name = _qualified(ref)
        if name != ref:
            image_id = runtime.image_id(name)
    if image_id is None:
        if not pull:
            raise VenvoyError(f"base image {ref} is not in {runtime.name}'s local images and "
                              "--offline forbids pulling it",
                              "pull or load it first, pass a tar with --base, or go online")
        _pull(runtime, name, say)
        image_id = runtime.image_id(name)
        if image_id is None:
            raise RuntimeFailed(f"{runtime.name} pulled {name} but cannot find it now",
                                "try again; if it persists, pull it by hand and pass --base")
    key = f"{runtime.name}-{image_id.partition(':')[2][:32]}"
    found = _cached(bases, key)
    if found is not None:
        return found
    with _locked(bases, key, say):
        found = _cached(bases, key)
        if found is not None:
            return found
        tmp_archive = _tmp(bases, f"{key}.tar")
        say(f"saving {name} from {runtime.name} into the store")
        try:
            # by ID: exactly the image looked at above, even if the tag moves meanwhile
            runtime.save(image_id.partition(":")[2], tmp_archive)
            return _publish(bases, key, tmp_archive, name, {"ref": name, "runtime": runtime.name,
                                                            "runtime_image_id": image_id})
        except OSError as exc:
            raise VenvoyError(f"cannot save {name} into the store: {exc}") from None
        finally:
            tmp_archive.unlink(missing_ok=True)


def names_registry(ref: str) -> bool:
    """Does ``ref`` name a registry host (``HOST[:PORT]/REPO...``, ``docker://...``)?"""
    first, sep, _rest = ref.removeprefix("docker://").partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def from_registry(ref: str, bases: Path, say: Progress, *, pull: bool = True,
                  environ: dict[str, str] | None = None) -> BaseImage:
    """A base pulled from a registry by venvoy itself (no container runtime needed), kept
    in the store as a Docker archive keyed by the manifest digest: the tag is resolved
    every time (a moved tag is noticed), the layers are pulled once."""
    from venvoy.image import registry

    parsed = registry.parse_reference(ref)
    if not pull:
        if parsed.digest:
            found = _cached(bases, f"registry-{parsed.digest.partition(':')[2][:32]}")
            if found is not None:
                return found
        raise VenvoyError(f"base image {ref} must be pulled from its registry and --offline "
                          "forbids it", "pass a tar with --base, or go online")
    digest = registry.resolve(parsed, environ=environ)
    key = f"registry-{digest.partition(':')[2][:32]}"
    found = _cached(bases, key)
    if found is not None:
        return found
    with _locked(bases, key, say):
        found = _cached(bases, key)
        if found is not None:
            return found
        tmp_archive = _tmp(bases, f"{key}.tar")
        pinned = parsed.with_digest(digest)
        say(f"pulling {pinned} into the store")
        try:
            registry.pull_archive(pinned, tmp_archive, environ=environ, progress=say)
            return _publish(bases, key, tmp_archive, str(pinned),
                            {"ref": str(parsed), "manifest_digest": digest})
        except OSError as exc:
            raise VenvoyError(f"cannot save {ref} into the store: {exc}") from None
        finally:
            tmp_archive.unlink(missing_ok=True)


# -- what is inside: Python and glibc --------------------------------------------------

_PY_BIN = re.compile(r"(?:usr/(?:local/)?)?bin/python(3\.\d+)")
_PY3_LINK = re.compile(r"(?:usr/(?:local/)?)?bin/python3")
_LIBC = re.compile(r"(?:usr/)?lib(?:32|64|/[^/]+-linux-gnu)?/libc\.so\.6")
_LIBC_VERSIONED = re.compile(r"(?:usr/)?lib(?:32|64|/[^/]+-linux-gnu)?/libc-(\d+\.\d+)\.so")
_LIBC_TEXT = re.compile(rb"GNU C Library[^\n]*?(?:release )?version (\d+\.\d+)")
_MUSL = re.compile(r"(?:usr/)?lib/ld-musl-[^/]+\.so\.1")
_OS_RELEASE = ("etc/os-release", "usr/lib/os-release")


def _parse_python_env(config: dict[str, Any]) -> str | None:
    for item in (config.get("config") or {}).get("Env") or []:
        key, _, value = str(item).partition("=")
        if key == "PYTHON_VERSION":
            match = re.match(r"(\d+\.\d+)", value)
            if match:
                return match.group(1)
    return None


def detect_python_glibc(archive: Path, info: ImageInfo | None = None) -> tuple[str, str]:
    """The Python (X.Y) and glibc versions of an image, read from its config and files.

    No container is started: ``PYTHON_VERSION`` in the config (official images)
    or ``bin/python3.X`` in the layers gives Python; the version string inside
    ``libc.so.6`` (or a ``libc-X.Y.so`` name, or the release's codename) gives glibc.
    """
    info = info or inspect_archive(archive)
    python = _parse_python_env(info.config)
    pythons: set[str] = set()
    py3_link: str | None = None
    glibc: str | None = None
    codename: str | None = None
    musl = False
    with open_layers(archive) as layers:
        for layer in layers:
            for member in layer:
                name = member.name
                while name.startswith("./"):
                    name = name[2:]
                name = name.lstrip("/")
                if (m := _PY_BIN.fullmatch(name)) and (member.isfile() or member.issym()):
                    pythons.add(m.group(1))
                elif _PY3_LINK.fullmatch(name) and member.issym():
                    target = os.path.basename(member.linkname)
                    py3_link = target[len("python"):] if re.fullmatch(r"python3\.\d+", target) else py3_link
                elif _LIBC.fullmatch(name):
                    if member.issym():
                        m = re.fullmatch(r"libc-(\d+\.\d+)\.so", os.path.basename(member.linkname))
                        glibc = m.group(1) if m else glibc
                    elif member.isfile() and member.size < 64 << 20:
                        fh = layer.extractfile(member)
                        if fh is not None:
                            m2 = _LIBC_TEXT.search(fh.read())
                            glibc = m2.group(1).decode() if m2 else glibc
                elif m := _LIBC_VERSIONED.fullmatch(name):
                    glibc = glibc or m.group(1)
                elif name in _OS_RELEASE and member.isfile() and member.size < 1 << 16:
                    fh = layer.extractfile(member)
                    if fh is not None:
                        text = fh.read().decode(errors="replace")
                        m3 = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.MULTILINE)
                        codename = m3.group(1) if m3 else codename
                elif _MUSL.fullmatch(name):
                    musl = True
    if python is None:
        if py3_link and py3_link in pythons:
            python = py3_link
        elif pythons:
            python = max(pythons, key=lambda v: tuple(int(p) for p in v.split(".")))
    if python is None:
        raise VenvoyError(f"base image {archive} has no Python 3 (no bin/python3.X)",
                          "choose a base image that has Python, e.g. python:3.X-slim")
    if glibc is None and codename:
        glibc = CODENAME_GLIBC.get(codename)
    if glibc is None:
        if musl:
            raise VenvoyError(f"base image {archive} uses musl (Alpine?), not glibc",
                              "venvoy needs a glibc base (Debian, Ubuntu, RHEL...), e.g. python:3.X-slim")
        raise VenvoyError(f"cannot tell the glibc version of base image {archive}",
                          "choose a Debian- or Ubuntu-based image")
    return python, glibc


__all__ = ["KNOWN_PYTHONS", "OFFLINE_SUITES", "BaseImage", "bootstrap", "detect_python_glibc",
           "from_registry", "from_tar", "names_registry", "official_reference", "probe_registry",
           "registry_endpoint", "resolve_base"]
