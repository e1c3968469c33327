"""Environments through OCI registries, for the CLI and the Python API alike:
``push(name, ref)`` and ``pull(ref, name=...)`` (see :mod:`venvoy.transport.registry`)."""

from __future__ import annotations

from collections.abc import Callable

from venvoy.api.environments import get, store_errors
from venvoy.store.layout import Store
from venvoy.store.records import Environment


@store_errors
def push(name: str, ref: str, *, progress: Callable[[str], None] | None = None,
         store: Store | None = None) -> str:
    """Push environment ``name`` to ``ref`` (``HOST[:PORT]/REPO[:TAG]``; the tag defaults to
    the first 12 digits of its identity); returns ``HOST/REPO:TAG@sha256:...``."""
    from venvoy.transport.registry import push_env

    store = store or Store()
    return push_env(get(name, store), ref, environ=store.environ, progress=progress)


@store_errors
def pull(ref: str, *, name: str | None = None, force: bool = False, runtime: str | None = None,
         progress: Callable[[str], None] | None = None, store: Store | None = None) -> Environment:
    """Make a named environment from an image ``venvoy push`` wrote (checked as ``import``
    checks an archive); with ``runtime``, that runtime's form of the image is made now."""
    from venvoy.transport.registry import pull_env

    store = store or Store()
    env = pull_env(ref, store=store, name=name, force=force, progress=progress)
    if runtime is not None:
        from venvoy.runtime.detect import get_runtime
        from venvoy.store.forms import ensure_native

        ensure_native(store, get_runtime(runtime, store.environ), env.archive, env.image_id,
                      env.tag, progress)
    return env


__all__ = ["pull", "push"]
