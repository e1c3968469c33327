"""Moving environments between machines: the export formats and import."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from venvoy.core.errors import BadRequest
from venvoy.store.layout import Store
from venvoy.store.records import Environment


def import_any(path: str | os.PathLike[str], *, name: str | None = None, runtime: str | None = None,
               force: bool = False, offline: bool | None = None, base: str | None = None,
               progress: Callable[[str], None] | None = None,
               store: Store | None = None) -> Environment:
    """Import an archive or a wheelhouse, recognised by content, not by name.

    With ``runtime``, that runtime's form of the image is made right away (e.g.
    the SIF), so the first run on a compute node does not pay for it.
    """
    from venvoy.transport.archive import import_archive
    from venvoy.transport.sniff import sniff_format

    store = store or Store()
    src = Path(path)
    if not src.is_file():
        raise BadRequest(f"{str(src)!r} does not exist or is not a file", "check the path")
    kind = sniff_format(src)
    if kind == "archive":
        env = import_archive(src, store=store, name=name, force=force, progress=progress)
        if runtime is not None:
            from venvoy.runtime.detect import get_runtime
            from venvoy.store.forms import ensure_native

            ensure_native(store, get_runtime(runtime, store.environ), env.archive, env.image_id,
                          env.tag, progress)
        return env
    if kind == "wheelhouse":
        from venvoy.transport.wheelhouse import import_wheelhouse

        return import_wheelhouse(src, store=store, name=name, runtime=runtime, force=force,
                                 offline=offline, base=base, progress=progress)
    # Not recognised: let the archive reader say precisely why (wrong
    # compression, no zstd support, not a tar, no manifest, ...).
    return import_archive(src, store=store, name=name, force=force, progress=progress)

