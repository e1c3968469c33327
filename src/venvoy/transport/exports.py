"""Exports of an environment that need no venvoy to use, and importing a wheelhouse.

``venvoy export NAME --format ...``:

* ``lock``: the environment's ``pylock.toml`` (PEP 751), as it is;
* ``containerfile``: a build context for plain ``podman build``/``docker build``:
  a Containerfile, ``requirements.txt`` (pinned, with hashes), ``pylock.toml``,
  ``wheels/`` with every locked file and a README. The build needs no network:
  pip installs from ``wheels/`` with ``--no-index --require-hashes``;
* ``apptainer-def``: the same for ``apptainer build``, as ``<name>.def``;
* ``wheelhouse``: one tar holding the environment's record, its lock, a second
  lock for the other architecture (x86_64 <-> aarch64) and every file both locks
  name, so ``venvoy import`` rebuilds it on a machine that cannot reach PyPI.

Every value written into generated text comes from the environment's record
and is checked against a strict pattern first: nothing unvalidated reaches a
shell line, a LABEL or a definition file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from venvoy import __version__
from venvoy.build.lock import host_arch
from venvoy.core.errors import VenvoyError
from venvoy.core.fs import new_path
from venvoy.image.labels import LABEL, VENV_PATH
from venvoy.store.layout import Store
from venvoy.store.records import Environment, find

Say = Callable[[str], None]
DownloadProgress = Callable[[str, int, int], None]

FORMATS = ("wheelhouse", "containerfile", "apptainer-def", "lock")
WHEELHOUSE_FORMAT = "venvoy-wheelhouse"
WHEELHOUSE_VERSION = 1
MANIFEST = "manifest.json"
ARCHES = ("x86_64", "aarch64")
_MAX_MANIFEST = 16 << 20
_MARKER = ".venvoy-export"  # in export directories venvoy may replace
_BUILD_DIR = "/venvoy-build"  # where the build context goes inside the build container

_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_PYTHON = re.compile(r"3\.\d{1,2}")
_GLIBC = re.compile(r"2\.\d{1,3}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")
#: An image reference as Docker names them: [host[:port]/]path[:tag][@sha256:digest].
_REFERENCE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"(?::[0-9]{1,5})?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?")
_FILENAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+!~-]{0,254}")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".oci", ".sif")


# --------------------------------------------------------------------------- checked values


def _bad_record(env: Environment, key: str, value: object) -> VenvoyError:
    return VenvoyError(f"environment {env.name!r} has a bad {key} in its record: {value!r}",
                       f"re-create it with `venvoy init {env.name} --force`")


def _field(env: Environment, key: str, pattern: re.Pattern[str], default: str | None = None) -> str:
    value = env.data.get(key, default)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _bad_record(env, key, value)
    return value


def is_reference(text: str) -> bool:
    """Whether ``text`` is an image reference (not a path to a tar): safe in any generated text."""
    return (len(text) <= 255 and bool(_REFERENCE.fullmatch(text))
            and not text.endswith(_TAR_SUFFIXES) and ".." not in text)


def base_reference(env: Environment) -> str:
    """The default base of an export: the env's ``--base`` if it was an image reference,
    else the official ``python:X.Y-slim`` image."""
    from venvoy.build.bases import official_reference

    base = env.data.get("base")
    if isinstance(base, str) and is_reference(base):
        return base
    ref = official_reference(_field(env, "python", _PYTHON))
    if not is_reference(ref):
        raise VenvoyError(f"the official base reference {ref!r} is not a valid image reference",
                          "check VENVOY_BASE_REGISTRY")
    return ref


def labels(env: Environment) -> dict[str, str]:
    """The ``org.venvoy.*`` labels the environment's image has (as ``envs._build`` writes them)."""
    digest = _field(env, "base_image_id", _DIGEST) if env.data.get("base_image_id") else ""
    return {
        f"{LABEL}.version": _field(env, "venvoy_version", _VERSION, __version__),
        f"{LABEL}.lock-hash": _field(env, "lock_hash", _HEX64),
        f"{LABEL}.base-digest": digest,
        f"{LABEL}.python": _field(env, "python", _PYTHON),
        f"{LABEL}.build-time": _field(env, "created", _TIME),
        f"{LABEL}.identity": _field(env, "identity", _HEX64),
        f"{LABEL}.name": _field(env, "name", re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")),
    }


def _wheel_arch(filename: str) -> str | None:
    if not filename.endswith(".whl"):
        return None
    platform_tag = filename[:-4].split("-")[-1]
    for tag in platform_tag.split("."):
        for arch in ARCHES:
            if tag.endswith("_" + arch):
                return arch
    return None


def env_arch(env: Environment) -> str:
    """The machine architecture the environment's lock is for."""
    from venvoy.build.lock import parse

    recorded = env.data.get("arch")
    if isinstance(recorded, str) and recorded in ARCHES:
        return recorded
    for pkg in parse(env.lock_text):
        for wheel in pkg.wheels:
            arch = _wheel_arch(wheel.filename)
            if arch is not None:
                return arch
    if env.archive.is_file():
        from venvoy.image.oci import inspect_archive

        with contextlib.suppress(VenvoyError, OSError, ValueError, KeyError):
            goarch = inspect_archive(env.archive).config.get("architecture")
            found = {"amd64": "x86_64", "arm64": "aarch64"}.get(str(goarch))
            if found:
                return found
    return env_arch_here()


# --------------------------------------------------------------------------- generated text


#: The install, as shell commands run inside the base image. Fixed text: the only
#: value, the Python version, is checked against ``3.N`` before it is added.
def _install_commands(python: str) -> list[str]:
    if not _PYTHON.fullmatch(python):
        raise VenvoyError(f"bad Python version {python!r}")
    pip_args = (f"install --no-index --no-deps --require-hashes --no-cache-dir "
                f"--disable-pip-version-check --find-links {_BUILD_DIR}/wheels "
                f"-r {_BUILD_DIR}/requirements.txt")
    return [
        # the wheels are for this Python: a base with another one fails here, clearly
        "python3 -c 'import sys; v = \"%d.%d\" % sys.version_info[:2]; "
        f"sys.exit(0 if v == \"{python}\" else \"the base image has Python \" + v + \", "
        f"this environment needs {python}\")'",
        f"python3 -m venv --without-pip {VENV_PATH}",
        # pip of the base installs into the venv (pip >= 22.3), else the venv's own pip
        f"if python3 -m pip --help 2>/dev/null | grep -q -e '--python '; "
        f"then python3 -m pip --python {VENV_PATH}/bin/python {pip_args}; "
        f"else python3 -m venv --clear {VENV_PATH} && {VENV_PATH}/bin/python -m pip {pip_args}; fi",
    ]


def _dockerfile_quote(value: str) -> str:
    # Values are pattern-checked; escape anyway so a quote or a $ can never end the string.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _header(env: Environment, arch: str, glibc: str) -> list[str]:
    return [
        f"venvoy environment {env.name}: Python {env.python}, {env.data.get('packages', '?')} packages,",
        f"locked for {arch} (glibc >= {glibc}); lock sha256 {env.lock_hash}.",
        "Built offline from wheels/ (pip --no-index --require-hashes); venvoy is not needed.",
    ]


def containerfile_text(env: Environment, *, arch: str, base: str) -> str:
    """The Containerfile of a ``containerfile`` export."""
    glibc = _field(env, "glibc", _GLIBC, "2.17")
    if not is_reference(base):
        raise VenvoyError(f"bad base image reference {base!r}")
    run = " && \\\n    ".join(["set -eu", *_install_commands(env.python)])
    label_lines = " \\\n      ".join(f"{k}={_dockerfile_quote(v)}" for k, v in labels(env).items())
    header = "".join(f"# {line}\n" for line in _header(env, arch, glibc))
    return (
        f"{header}"
        "#   podman build --network=none -t IMAGE .   (docker build --network=none -f Containerfile .)\n"
        f"# Another base image with Python {env.python}: --build-arg BASE=IMAGE\n"
        f"ARG BASE={base}\n"
        "\n"
        "FROM ${BASE} AS build\n"
        f"COPY requirements.txt {_BUILD_DIR}/requirements.txt\n"
        f"COPY wheels/ {_BUILD_DIR}/wheels/\n"
        f"RUN {run}\n"
        "\n"
        "FROM ${BASE}\n"
        f"COPY --from=build {VENV_PATH} {VENV_PATH}\n"
        f"ENV PATH={VENV_PATH}/bin:$PATH VIRTUAL_ENV={VENV_PATH}\n"
        f"LABEL {label_lines}\n"
    )


def apptainer_def_text(env: Environment, *, arch: str, base: str) -> str:
    """The definition file of an ``apptainer-def`` export (Apptainer 1.2+ build arguments)."""
    glibc = _field(env, "glibc", _GLIBC, "2.17")
    if not is_reference(base):
        raise VenvoyError(f"bad base image reference {base!r}")
    post = "\n    ".join(["set -eu", *_install_commands(env.python), f"rm -rf {_BUILD_DIR}"])
    label_lines = "\n    ".join(f"{k} {v}" for k, v in labels(env).items())
    header = "".join(f"# {line}\n" for line in _header(env, arch, glibc))
    return (
        f"{header}"
        f"#   cd THIS_DIRECTORY && apptainer build IMAGE.sif {env.name}.def\n"
        "# From a local image: --build-arg BOOTSTRAP=docker-archive --build-arg BASE=/path/base.tar\n"
        "# From elsewhere than this directory: --build-arg CONTEXT=/path/to/this/directory\n"
        "Bootstrap: {{ BOOTSTRAP }}\n"
        "From: {{ BASE }}\n"
        "\n"
        "%arguments\n"
        "    BOOTSTRAP=docker\n"
        f"    BASE={base}\n"
        "    CONTEXT=.\n"
        "\n"
        "%files\n"
        f"    {{{{ CONTEXT }}}}/requirements.txt {_BUILD_DIR}/requirements.txt\n"
        f"    {{{{ CONTEXT }}}}/wheels {_BUILD_DIR}/wheels\n"
        "\n"
        "%post\n"
        f"    {post}\n"
        "\n"
        "%environment\n"
        f"    export PATH=\"{VENV_PATH}/bin:$PATH\"\n"
        f"    export VIRTUAL_ENV={VENV_PATH}\n"
        "\n"
        "%labels\n"
        f"    {label_lines}\n"
        "\n"
        "%help\n"
        f"    venvoy environment {env.name} (Python {env.python}), installed in {VENV_PATH}.\n"
    )


def readme_text(env: Environment, kind: str, *, arch: str, base: str) -> str:
    glibc = _field(env, "glibc", _GLIBC, "2.17")
    source = env.data.get("base_source") or env.data.get("base") or "the official image"
    source = " ".join(str(source).split())[:200]
    lines = [
        f"# venvoy environment `{env.name}`",
        "",
        *_header(env, arch, glibc),
        "",
        "Files: `requirements.txt` (pinned, every hash), `pylock.toml` (the PEP 751 lock),",
        "`wheels/` (every locked file: the build needs no network).",
        "",
    ]
    if kind == "containerfile":
        lines += [
            "Build and run (Podman or Docker, in this directory):",
            "",
            "    podman build --network=none -t myenv .",
            "    podman run --rm myenv python -c 'import sys; print(sys.prefix)'",
            "",
            "Docker: `docker build --network=none -f Containerfile -t myenv .`",
            "",
            f"The default base is `{base}`; any image with Python {env.python} and glibc >= {glibc}",
            "for this architecture works: `--build-arg BASE=IMAGE`.",
        ]
    else:
        lines += [
            "Build and run (Apptainer 1.2+ or SingularityCE 4+, in this directory):",
            "",
            f"    apptainer build myenv.sif {env.name}.def",
            "    apptainer exec myenv.sif python -c 'import sys; print(sys.prefix)'",
            "",
            f"The default base is `docker://{base}`. From a local `docker save` tar:",
            "",
            "    apptainer build --build-arg BOOTSTRAP=docker-archive --build-arg BASE=/path/base.tar \\",
            f"        myenv.sif {env.name}.def",
            "",
            "Unprivileged: add `--fakeroot`. From another directory: `--build-arg CONTEXT=DIR`.",
        ]
    lines += ["", f"The environment was built on: {source}.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- writing outputs


def _default(output: Path | None, name: str) -> Path:
    if output is None:
        return Path.cwd() / name
    output = Path(output)
    return output / name if output.is_dir() else output


def _write_file(final: Path, data: bytes) -> None:
    final = final.absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)


@contextlib.contextmanager
def _new_dir(final: Path) -> Iterator[Path]:
    """A temporary sibling of ``final`` that replaces it on success. An existing ``final``
    is replaced only when empty or made by an earlier export."""
    final = final.absolute()
    if final.exists() or final.is_symlink():
        if not final.is_dir() or final.is_symlink():
            raise VenvoyError(f"{final} exists and is not a directory",
                              "remove it or choose another --output")
        if any(final.iterdir()) and not (final / _MARKER).is_file():
            raise VenvoyError(f"{final} exists and is not an earlier venvoy export",
                              "remove it or choose another --output")
    with new_path(final, directory=True) as tmp:
        tmp.chmod(0o755)
        yield tmp


def _cached_files(env: Environment, lock_texts: Sequence[str],
                  download_progress: DownloadProgress | None) -> dict[str, tuple[Any, Path]]:
    """filename -> (LockedFile, path in the wheel cache) for every file the locks name."""
    from venvoy.build.lock import files_to_fetch, parse
    from venvoy.build.wheels import WheelCache

    files: dict[str, Any] = {}
    for text in lock_texts:
        for f in files_to_fetch(parse(text)):
            known = files.get(f.filename)
            if known is not None and known.sha256 != f.sha256:
                raise VenvoyError(f"the locks name two different files called {f.filename}",
                                  "re-create the lock")
            files[f.filename] = f
    cache = WheelCache(env.store.wheels)
    paths = cache.fetch(list(files.values()), progress=download_progress)
    return {name: (f, p) for (name, f), p in zip(files.items(), paths, strict=True)}


def _copy_wheels(files: dict[str, tuple[Any, Path]], dest: Path) -> None:
    dest.mkdir()
    for name, (_f, src) in sorted(files.items()):
        try:
            shutil.copyfile(src, dest / name)
        except OSError as exc:
            raise VenvoyError(f"cannot copy {name} into {dest}: {exc.strerror or exc}",
                              "check the free space and permissions there") from None
        (dest / name).chmod(0o644)


def _build_context(env: Environment, output: Path | None, kind: str, default_name: str,
                   progress: Say | None, download_progress: DownloadProgress | None) -> Path:
    from venvoy.build.lock import parse, requirements_txt

    say = progress or (lambda _msg: None)
    final = _default(output, default_name) if output is None else Path(output)
    lock_text = env.lock_text
    arch = env_arch(env)
    base = base_reference(env)
    text = (containerfile_text(env, arch=arch, base=base) if kind == "containerfile"
            else apptainer_def_text(env, arch=arch, base=base))
    say(f"fetching the locked files of {env.name} (wheel cache: {env.store.wheels})")
    files = _cached_files(env, [lock_text], download_progress)
    with _new_dir(final) as tmp:
        (tmp / ("Containerfile" if kind == "containerfile" else f"{env.name}.def")).write_text(text)
        (tmp / "requirements.txt").write_text(requirements_txt(parse(lock_text)))
        (tmp / "pylock.toml").write_text(lock_text)
        (tmp / "README.md").write_text(readme_text(env, kind, arch=arch, base=base))
        (tmp / _MARKER).write_text(json.dumps({"format": kind, "name": env.name,
                                               "lock_hash": env.lock_hash}) + "\n")
        _copy_wheels(files, tmp / "wheels")
        for f in tmp.iterdir():
            if f.is_file():
                f.chmod(0o644)
    say(f"wrote {final}")
    return final.absolute()


def export_lock(env: Environment, output: Path | None, *, progress: Say | None = None,
                download_progress: DownloadProgress | None = None) -> Path:
    """The environment's ``pylock.toml`` (default ``./<name>.pylock.toml``)."""
    final = _default(output, f"{env.name}.pylock.toml")
    _write_file(final, env.lock_text.encode())
    return final.absolute()


def export_containerfile(env: Environment, output: Path | None, *, progress: Say | None = None,
                         download_progress: DownloadProgress | None = None) -> Path:
    """A build context directory for ``podman/docker build`` (default ``./<name>-containerfile/``)."""
    return _build_context(env, output, "containerfile", f"{env.name}-containerfile", progress,
                          download_progress)


def export_apptainer_def(env: Environment, output: Path | None, *, progress: Say | None = None,
                         download_progress: DownloadProgress | None = None) -> Path:
    """A directory with ``<name>.def`` for ``apptainer build`` (default ``./<name>-apptainer/``)."""
    return _build_context(env, output, "apptainer-def", f"{env.name}-apptainer", progress,
                          download_progress)


# --------------------------------------------------------------------------- wheelhouse


def _other_arch(arch: str) -> str:
    return "aarch64" if arch == "x86_64" else "x86_64"


def _tarinfo(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def export_wheelhouse(env: Environment, output: Path | None, *, progress: Say | None = None,
                      download_progress: DownloadProgress | None = None) -> Path:
    """One tar for ``venvoy import`` (default ``./<name>-<lock hash[:12]>.wheelhouse.tar``):
    ``manifest.json`` first, the lock, a lock for the other architecture, ``wheels/``."""
    from venvoy.build import lock as locking
    from venvoy.image.oci import source_date_epoch

    say = progress or (lambda _msg: None)
    final = _default(output, f"{env.name}-{env.lock_hash[:12]}.wheelhouse.tar")
    arch = env_arch(env)
    other = _other_arch(arch)
    python = _field(env, "python", _PYTHON)
    glibc = _field(env, "glibc", _GLIBC, "2.17")
    requirements = env.data.get("requirements")
    if not isinstance(requirements, str):
        raise _bad_record(env, "requirements", requirements)
    lock_text = env.lock_text
    locks = {arch: ("pylock.toml", lock_text)}
    missing: dict[str, str] = {}
    say(f"locking {env.name} for {other} too (keeping the versions of the {arch} lock)")
    try:
        other_text = locking.resolve(requirements, locking.Platform(python, arch=other, glibc=glibc),
                                     previous=lock_text)
        locks[other] = (f"pylock.{other}.toml", other_text)
    except locking.ResolveError as exc:
        say(f"warning: no lock for {other}, the wheelhouse serves {arch} only: {exc.message}")
        missing[other] = exc.message
    files = _cached_files(env, [t for _p, t in locks.values()], download_progress)
    members: dict[str, dict[str, Any]] = {}
    lock_bytes = {path: text.encode() for path, text in locks.values()}
    for path, data in lock_bytes.items():
        members[path] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    for name, (f, src) in sorted(files.items()):
        members[f"wheels/{name}"] = {"sha256": f.sha256, "size": src.stat().st_size}
    record = env.as_dict()
    record.pop("inputs", None)
    record["arch"] = arch
    manifest = {
        "format": WHEELHOUSE_FORMAT, "format_version": WHEELHOUSE_VERSION,
        "venvoy_version": __version__, "environment": record,
        "locks": {a: {"path": p, "lock_hash": locking.lock_hash(t)} for a, (p, t) in locks.items()},
        "missing_locks": missing, "members": members,
    }
    manifest_bytes = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    mtime = source_date_epoch()
    final = final.absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    say(f"writing {final} ({len(files)} files)")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as fh, tarfile.open(fileobj=fh, mode="w",
                                                     format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_tarinfo(MANIFEST, len(manifest_bytes), mtime), io.BytesIO(manifest_bytes))
            for path, data in lock_bytes.items():
                tar.addfile(_tarinfo(path, len(data), mtime), io.BytesIO(data))
            for name, (_f, src) in sorted(files.items()):
                with open(src, "rb") as wheel:
                    tar.addfile(_tarinfo(f"wheels/{name}", os.fstat(wheel.fileno()).st_size, mtime),
                                wheel)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, final)
    except OSError as exc:
        raise VenvoyError(f"cannot write {final}: {exc.strerror or exc}",
                          "check the free space and permissions there") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
    return final


# --------------------------------------------------------------------------- import


def _damaged(path: Path, detail: str, hint: str = "the wheelhouse is damaged or was altered; "
             "export it again") -> VenvoyError:
    return VenvoyError(f"wheelhouse {path}: {detail}", hint)


def _check_manifest(path: Path, data: object) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("format") != WHEELHOUSE_FORMAT:
        raise _damaged(path, "manifest.json is not a venvoy wheelhouse manifest",
                       "pass a file written by `venvoy export --format wheelhouse`")
    version = data.get("format_version")
    if version != WHEELHOUSE_VERSION:
        raise _damaged(path, f"unsupported wheelhouse format version {version!r}",
                       f"this venvoy reads version {WHEELHOUSE_VERSION}; use a matching venvoy")
    env = data.get("environment")
    members = data.get("members")
    locks = data.get("locks")
    if not isinstance(env, dict) or not isinstance(members, dict) or not isinstance(locks, dict):
        raise _damaged(path, "manifest.json lacks environment, locks or members")
    for key in ("name", "python", "requirements"):
        if not isinstance(env.get(key), str):
            raise _damaged(path, f"manifest.json: the environment has no {key}")
    if not _PYTHON.fullmatch(env["python"]):
        raise _damaged(path, f"manifest.json: bad Python version {env['python']!r}")
    base = env.get("base")
    if base is not None and (not isinstance(base, str) or not base or len(base) > 4096
                             or any(ord(c) < 32 or ord(c) == 127 for c in base)):
        raise _damaged(path, f"manifest.json: bad base {base!r}")
    for name, meta in members.items():
        _check_member_name(path, name)
        if (not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str)
                or not _HEX64.fullmatch(meta["sha256"]) or not isinstance(meta.get("size"), int)
                or isinstance(meta.get("size"), bool) or meta["size"] < 0):
            raise _damaged(path, f"manifest.json: bad sha256 or size for {name!r}")
    for arch, entry in locks.items():
        if (arch not in ARCHES or not isinstance(entry, dict) or entry.get("path") not in members
                or not str(entry["path"]).endswith(".toml") or "/" in str(entry["path"])):
            raise _damaged(path, f"manifest.json: bad lock entry for {arch!r}")
    return data


def _check_member_name(path: Path, name: object) -> str:
    if not isinstance(name, str):
        raise _damaged(path, f"bad member name {name!r}")
    parts = name.split("/")
    ok = name.isascii() and (
        (len(parts) == 1 and _FILENAME.fullmatch(parts[0]) is not None)
        or (len(parts) == 2 and parts[0] == "wheels" and _FILENAME.fullmatch(parts[1]) is not None))
    if not ok:
        raise _damaged(path, f"unsafe member name {name!r} (absolute, '..' or not a plain file name)",
                       "refusing to extract it: the wheelhouse was not written by venvoy")
    return name


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym() or member.islnk():
        return "a link"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a FIFO"
    if member.isdir():
        return "a directory"
    return "not a regular file"


def _copy_checked(path: Path, name: str, src: IO[bytes], dest: Path, meta: dict[str, Any]) -> None:
    h = hashlib.sha256()
    size = 0
    with open(dest, "xb") as out:
        while chunk := src.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
            out.write(chunk)
    if size != meta["size"] or h.hexdigest() != meta["sha256"]:
        raise _damaged(path, f"member {name} does not match its sha256/size in the manifest")


def _extract(path: Path, tar: tarfile.TarFile, dest: Path) -> tuple[dict[str, Any], set[str]]:
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isreg():
        raise _damaged(path, "manifest.json is not its first member",
                       "pass a file written by `venvoy export --format wheelhouse`")
    if first.size > _MAX_MANIFEST:
        raise _damaged(path, "manifest.json is too large")
    fh = tar.extractfile(first)
    assert fh is not None
    try:
        manifest = _check_manifest(path, json.loads(fh.read()))
    except (ValueError, UnicodeDecodeError):
        raise _damaged(path, "manifest.json is not valid JSON") from None
    members: dict[str, dict[str, Any]] = manifest["members"]
    seen: set[str] = set()
    (dest / "wheels").mkdir(parents=True, exist_ok=True)
    while (member := tar.next()) is not None:
        name = member.name
        if member.isdir() and name.rstrip("/") == "wheels":
            continue
        _check_member_name(path, name)
        if not member.isreg():
            raise _damaged(path, f"member {name} is {_kind(member)}, not a regular file",
                           "refusing to extract it: the wheelhouse was not written by venvoy")
        if name not in members:
            raise _damaged(path, f"member {name} is not listed in manifest.json")
        if name in seen:
            raise _damaged(path, f"member {name} appears twice")
        seen.add(name)
        src = tar.extractfile(member)
        assert src is not None
        with src:
            _copy_checked(path, name, src, dest / name, members[name])
    return manifest, seen


def read_wheelhouse(path: Path, dest: Path) -> dict[str, Any]:
    """Check a wheelhouse and extract its regular files into ``dest``; returns the manifest.

    ``manifest.json`` must come first; every other member must be a regular
    file it lists, with the sha256 and size it gives. Nothing else is written.
    """
    path = Path(path)
    if not path.is_file():
        raise VenvoyError(f"wheelhouse {path} does not exist", "check the path")
    try:
        with tarfile.open(path, mode="r:*") as tar:
            manifest, seen = _extract(path, tar, dest)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise _damaged(path, f"cannot read or extract it ({exc})") from None
    members: dict[str, dict[str, Any]] = manifest["members"]
    absent = sorted(set(members) - seen)
    if absent:
        raise _damaged(path, f"{len(absent)} member(s) listed in manifest.json are missing "
                             f"(e.g. {absent[0]})")
    return manifest


def import_wheelhouse(path: Path, *, store: Store, name: str | None = None, runtime: str | None = None,
                      force: bool = False, offline: bool | None = None, base: str | None = None,
                      progress: Say | None = None) -> Environment:
    """Rebuild the environment of a wheelhouse, its wheels taken from the wheelhouse, not the index.

    The lock for this machine's architecture is used as it is (the identity's
    lock hash is the exported one); the base image comes as for ``init``
    (registry, Debian bootstrap, or the recorded/given ``base``).
    """
    from venvoy.build.environment import init
    from venvoy.build.lock import files_to_fetch, lock_hash, parse
    from venvoy.core.names import check_name

    say = progress or (lambda _msg: None)
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix="import-", dir=store.tmp))
    try:
        say(f"checking {path}")
        manifest = read_wheelhouse(path, tmp)
        record: dict[str, Any] = manifest["environment"]
        env_name = check_name(name if name is not None else record["name"])
        arch = env_arch_here()
        entry = manifest["locks"].get(arch)
        if entry is None:
            why = manifest.get("missing_locks", {}).get(arch) if isinstance(
                manifest.get("missing_locks"), dict) else None
            raise VenvoyError(f"wheelhouse {path} has no lock for {arch}"
                              + (f" ({why})" if isinstance(why, str) else ""),
                              f"export it again from a {arch} machine, or import it on "
                              f"{' or '.join(sorted(manifest['locks']))}")
        lock_text = (tmp / entry["path"]).read_text()
        files = files_to_fetch(parse(lock_text))
        lacking = [f.filename for f in files if not (tmp / "wheels" / f.filename).is_file()]
        if lacking:
            raise _damaged(path, f"{len(lacking)} locked file(s) are not in it (e.g. {lacking[0]})")
        existing = None
        with contextlib.suppress(VenvoyError):
            existing = find(store, env_name)
        if existing is not None and not force and existing.lock_hash != lock_hash(lock_text):
            raise VenvoyError(f"an environment named {env_name!r} already exists with another lock",
                              "import it under another name (--name), or pass --force to replace it")
        say(f"importing {env_name} ({len(files)} files for {arch}, lock {lock_hash(lock_text)[:12]})")
        env, _built = init(
            env_name, python=record["python"], requirements_text=record["requirements"],
            base=base if base is not None else record.get("base"), lock_text=lock_text,
            wheel_dirs=[tmp / "wheels"], runtime=runtime, force=force, offline=offline,
            progress=progress, store=store)
        return env
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


env_arch_here = host_arch  # this machine's architecture as locks name it


__all__ = [
    "FORMATS",
    "apptainer_def_text",
    "base_reference",
    "containerfile_text",
    "export_apptainer_def",
    "export_containerfile",
    "export_lock",
    "export_wheelhouse",
    "import_wheelhouse",
    "is_reference",
    "labels",
    "read_wheelhouse",
    "readme_text",
]
