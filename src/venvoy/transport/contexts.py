"""The ``containerfile`` and ``apptainer-def`` exports: build contexts that need no venvoy.

A directory with the Containerfile (or ``<name>.def``), ``requirements.txt``
(pinned, with hashes), ``pylock.toml``, ``wheels/`` with every locked file (each
checked against the lock's sha256) and a README. The build needs no network:
pip installs from ``wheels/`` with ``--no-index --require-hashes``.

The environment's record was checked field by field when it was read
(:class:`venvoy.store.records.EnvRecord`); what it does not guarantee, such as
a base image reference safe to paste into generated text, is checked here.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from venvoy.build.lock import LockedFile
from venvoy.core.errors import VenvoyError
from venvoy.core.fs import new_path
from venvoy.core.platform import is_python_version
from venvoy.core.version import __version__
from venvoy.image.labels import VENV_PATH, image_labels
from venvoy.store.records import Environment
from venvoy.transport.common import DownloadProgress, Say, cached_files, default_output, env_arch

_MARKER = ".venvoy-export"  # in export directories venvoy may replace
_BUILD_DIR = "/venvoy-build"  # where the build context goes inside the build container
#: An image reference as Docker names them: [host[:port]/]path[:tag][@sha256:digest].
_REFERENCE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"(?::[0-9]{1,5})?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".oci", ".sif")


def is_reference(text: str) -> bool:
    """Whether ``text`` is an image reference (not a path to a tar): safe in any generated text."""
    return (len(text) <= 255 and bool(_REFERENCE.fullmatch(text))
            and not text.endswith(_TAR_SUFFIXES) and ".." not in text)


def base_reference(env: Environment) -> str:
    """The default base of an export: the env's ``--base`` if it was an image reference,
    else the official ``python:X.Y-slim`` image."""
    from venvoy.build.bases import official_reference

    base = env.record.base
    if base is not None and is_reference(base):
        return base
    ref = official_reference(env.python)
    if not is_reference(ref):
        raise VenvoyError(f"the official base reference {ref!r} is not a valid image reference",
                          "check VENVOY_BASE_REGISTRY")
    return ref


def labels(env: Environment) -> dict[str, str]:
    """The ``org.venvoy.*`` labels the environment's image has."""
    record = env.record
    return image_labels(name=record.name, python=record.python, lock_hash=record.lock_hash,
                        identity=record.identity, base_digest=record.base_image_id,
                        created=record.created, version=record.venvoy_version or __version__)


def _glibc(env: Environment) -> str:
    return env.record.glibc or "2.17"


#: The install, as shell commands run inside the base image. Fixed text: the only
#: value, the Python version, is checked to be ``3.N`` before it is added.
def _install_commands(python: str) -> list[str]:
    if not is_python_version(python):
        raise VenvoyError(f"bad Python version {python[:20]!r}")
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
        f"venvoy environment {env.name}: Python {env.python}, {env.packages} packages,",
        f"locked for {arch} (glibc >= {glibc}); lock sha256 {env.lock_hash}.",
        "Built offline from wheels/ (pip --no-index --require-hashes); venvoy is not needed.",
    ]


def containerfile_text(env: Environment, *, arch: str, base: str) -> str:
    """The Containerfile of a ``containerfile`` export."""
    glibc = _glibc(env)
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
    glibc = _glibc(env)
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
    glibc = _glibc(env)
    source = env.record.base_source or env.record.base or "the official image"
    source = " ".join(source.split())[:200]
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


# --------------------------------------------------------------------------- writing


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


def _copy_wheels(files: dict[str, tuple[LockedFile, Path]], dest: Path) -> None:
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
    final = default_output(output, default_name) if output is None else Path(output)
    lock_text = env.lock_text
    arch = env_arch(env)
    base = base_reference(env)
    text = (containerfile_text(env, arch=arch, base=base) if kind == "containerfile"
            else apptainer_def_text(env, arch=arch, base=base))
    say(f"fetching the locked files of {env.name} (wheel cache: {env.store.wheels})")
    files = cached_files(env, [lock_text], download_progress)
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


__all__ = ["apptainer_def_text", "base_reference", "containerfile_text", "export_apptainer_def",
           "export_containerfile", "is_reference", "labels", "readme_text"]
