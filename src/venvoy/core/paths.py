"""Where venvoy keeps things: one root (the store, its cache inside it), one config file.

``VENVOY_HOME`` puts everything under one directory (handy on clusters where
home is small and scratch is not); otherwise the platform's user directories
are used. On Linux the XDG rules are applied directly so that ``venvoy run``
does not pay for importing platformdirs.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _xdg(var: str, default: str, environ: Mapping[str, str]) -> str | None:
    if not sys.platform.startswith("linux"):
        return None
    base = environ.get(var) or os.path.join(environ.get("HOME") or os.path.expanduser("~"), default)
    return os.path.join(base, "venvoy")


def data_dir(environ: Mapping[str, str] | None = None) -> str:
    """The store's root (see :mod:`venvoy.store`)."""
    env = _env(environ)
    if env.get("VENVOY_HOME"):
        return env["VENVOY_HOME"]
    path = _xdg("XDG_DATA_HOME", os.path.join(".local", "share"), env)
    if path is None:
        import platformdirs

        path = platformdirs.user_data_dir("venvoy")
    return path


#: The store's cache directory (under :func:`data_dir`); the rest of the store's
#: layout is defined in :mod:`venvoy.store.layout`, which takes these two from here
#: because the runtime layer (below the store) keeps its version cache there.
CACHE_DIR = "cache"
RUNTIME_VERSIONS_FILE = "runtime-versions.json"
APPTAINER_CACHE_DIR = "apptainer"


def cache_dir(environ: Mapping[str, str] | None = None) -> str:
    """The store's cache directory: safe to delete, and inside the store (one
    root for everything venvoy keeps). Plain str: pathlib costs start-up time."""
    return os.path.join(data_dir(environ), CACHE_DIR)


def apptainer_cache_dir(environ: Mapping[str, str] | None = None) -> str:
    """Apptainer's and Singularity's own cache while venvoy converts images (not
    ``~/.apptainer/cache``: everything venvoy causes stays in its store)."""
    return os.path.join(cache_dir(environ), APPTAINER_CACHE_DIR)


def runtime_versions_file(environ: Mapping[str, str] | None = None) -> str:
    """Where probed runtime versions are cached (re-probed when missing)."""
    return os.path.join(cache_dir(environ), RUNTIME_VERSIONS_FILE)


def config_file(environ: Mapping[str, str] | None = None) -> str:
    """The user's config file (it need not exist)."""
    env = _env(environ)
    if env.get("VENVOY_CONFIG"):
        return env["VENVOY_CONFIG"]
    if env.get("VENVOY_HOME"):
        return os.path.join(env["VENVOY_HOME"], "config.toml")
    path = _xdg("XDG_CONFIG_HOME", ".config", env)
    if path is None:
        import platformdirs

        path = platformdirs.user_config_dir("venvoy")
    return os.path.join(path, "config.toml")
