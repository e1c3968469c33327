"""The user's config file (TOML). Only read when it exists.

Recognised keys::

    runtime = "podman"     # the runtime to use unless --runtime/VENVOY_RUNTIME say otherwise

    [slurm]                # site defaults of `venvoy submit`, each overridden by its option
    account = "proj42"
    partition = "batch"
    qos = "normal"
    time = "01:00:00"
    mpi = "pmix"           # srun --mpi for multi-task jobs (pmix, pmi2, none, auto)
    launcher = "srun"      # or "none"; default: srun when more than one task
    prologue = ["module load apptainer"]   # shell lines run first in every job script

(checked where used: :func:`venvoy.cluster.submit.site_defaults`)
    sif_compression = "auto"  # squashfs compressor of the SIFs venvoy makes: auto|zstd|lz4|gzip|xz|apptainer
                              # (VENVOY_SIF_COMPRESSION wins; gzip for kernels/setuid installs
                              # that mount nothing else)
"""

from __future__ import annotations

import sys

from venvoy.core.errors import VenvoyError
from venvoy.core.paths import config_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def load_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    path = config_file(environ)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise VenvoyError(f"cannot read config file {path}: {exc.strerror}", "fix its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VenvoyError(f"config file {path} is not valid TOML: {exc}", "fix or remove it") from None
    return parse_toml(text, f"config file {path}", "fix or remove it")


def parse_toml(text: str, what: str, hint: str,
               error: type[VenvoyError] = VenvoyError) -> dict[str, Any]:
    """Parse TOML on any supported Python; a syntax error is one line:
    "<what> is not valid TOML: <reason>; <hint>"."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} is not valid TOML: {' '.join(str(exc).split())}", hint) from None
    return data


__all__ = ["load_config", "parse_toml"]
