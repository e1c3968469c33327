"""Each runtime's own form of a canonical image, made on demand and cached.

An environment has one canonical image, a Docker archive in the store named
by its image ID. From it: Docker and Podman load it into their image store,
Apptainer and Singularity convert it to a SIF, Charliecloud unpacks it into a
directory. SIFs and directories are cached by the image's content digest, so
an environment built with Podman runs with Apptainer without a rebuild, and a
second environment with the same content shares the file.

Conversions happen under a per-entry lock with a re-check after acquiring it,
into a temporary name renamed into place: 16 array jobs starting at once make
one SIF, and the other 15 wait for it and use it.
"""

from __future__ import annotations

import contextlib
import os
import time

from venvoy.store.fastpath import cached_image, marker_name
from venvoy.store.layout import Store, digest_hex

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from venvoy.runtime.base import Runtime


def _loaded_marker(store: Store, runtime: Runtime, image_id: str, tag: str) -> Path:
    """A note that ``tag`` (image ``image_id``) is in this runtime's image store.

    Asking Docker or Podman costs a subprocess (tens of ms) on every run; the
    note costs a stat. If the image is removed behind venvoy's back, the run
    fails with "no such image", the note is dropped and the image reloaded.
    """
    return store.root / "cache" / "loaded" / marker_name(runtime, image_id, tag)


def cached_native(store: Store, runtime: Runtime, image_id: str, tag: str) -> str | None:
    """The runtime's image for ``image_id`` if it is already there (no locks, no subprocess)."""
    digest_hex(image_id)  # refuse malformed IDs loudly here
    return cached_image(str(store.root), runtime, image_id, tag, store.environ)


def ensure_native(store: Store, runtime: Runtime, archive: Path, image_id: str, tag: str,
                  progress: Callable[[str], None] | None = None) -> str:
    """The image to pass to ``runtime`` for the canonical ``archive``, made if needed."""
    found = cached_native(store, runtime, image_id, tag)
    if found:
        return found
    hexid = digest_hex(image_id)
    # SIFs and directories are shared by every user and runtime of this store;
    # a loaded image belongs to one runtime's store (and one user, rootless).
    scope = f"{runtime.name}-{os.getuid()}-" if runtime.image_kind == "ref" else ""
    with store.lock(f"native-{runtime.image_kind}-{scope}{hexid}"):
        found = cached_native(store, runtime, image_id, tag)  # made while we waited?
        if found:
            return found
        if not archive.is_file():
            from venvoy.core.errors import VenvoyError

            raise VenvoyError(f"canonical image {archive} is missing from the store",
                              "rebuild the environment with `venvoy init NAME --force`")
        start = time.monotonic()
        if progress:
            progress(f"making the {runtime.name} image from {archive.name}")
        if runtime.image_kind == "file":
            result = runtime.load_archive(archive, hexid, store.sif(image_id).parent)
        elif runtime.image_kind == "dir":
            result = runtime.load_archive(archive, hexid, store.ch_dir(image_id).parent)
        else:
            result = runtime.load_archive(archive, tag, store.tmp)
            marker = _loaded_marker(store, runtime, image_id, tag)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        _log_conversion(store, runtime, image_id, time.monotonic() - start)
        return result


def forget_all_loaded(store: Store, image_id: str, tag: str) -> None:
    """Remove ``tag`` from every runtime store venvoy loaded it into, and the notes."""
    from venvoy.core.errors import VenvoyError
    from venvoy.runtime.detect import get_runtime

    loaded = store.root / "cache" / "loaded"
    prefix = digest_hex(image_id)[:16]
    try:
        markers = [m for m in os.listdir(loaded) if prefix in m]
    except OSError:
        return
    for marker in markers:
        # A runtime that is gone took the image with it, as far as venvoy can tell.
        with contextlib.suppress(VenvoyError):
            get_runtime(marker.split("-")[0], store.environ).remove_image(tag)
        (loaded / marker).unlink(missing_ok=True)


def forget_native(store: Store, runtime: Runtime, image_id: str, tag: str) -> None:
    """Drop the note that a runtime has the image (it was removed behind our back)."""
    _loaded_marker(store, runtime, image_id, tag).unlink(missing_ok=True)


def _log_conversion(store: Store, runtime: Runtime, image_id: str, seconds: float) -> None:
    """One line per conversion: how many happened is observable (and tested)."""
    log = store.root / "cache" / "conversions.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {runtime.name} {image_id} "
                 f"pid={os.getpid()} {seconds:.1f}s\n")
