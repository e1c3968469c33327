"""Where venvoy keeps things: one root for data and cache, one config file.

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


def cache_dir(environ: Mapping[str, str] | None = None) -> str:
    """Directory for caches (safe to delete). Plain str: pathlib costs start-up time."""
    env = _env(environ)
    if env.get("VENVOY_HOME"):
        return os.path.join(env["VENVOY_HOME"], "cache")
    path = _xdg("XDG_CACHE_HOME", ".cache", env)
    if path is None:
        import platformdirs

        path = platformdirs.user_cache_dir("venvoy")
    return path


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
