"""Each runtime's own form of a canonical image, made on demand and cached.

An environment has one canonical image, a Docker archive in the store named
by its image ID. From it: Docker and Podman load it into their image store,
Apptainer and Singularity convert it to a SIF, Charliecloud unpacks it into a
directory (the runtime's :class:`~venvoy.runtime.base.ImageForm`). SIFs and
directories are cached by the image's content digest, so an environment built
with Podman runs with Apptainer without a rebuild, and a second environment
with the same content shares the file.

Every form is bound to the verified image ID:

- a loaded image is checked to have that ID after ``load``, tagged
  ``<repo>:<full image-ID hex>`` and *run by its ID*, so no tag that another
  store (or a crafted archive's manifest) sets can change what runs;
- a SIF is trusted only beside the check venvoy wrote when it made it
  (``<id>.sif.sha256``: sha256 and size); ``venvoy run`` compares size and
  times (stats only), conversion and export compare the full hash, and a SIF
  that fails is made again from the canonical image. A SIF from an imported
  archive is never placed here: it cannot be checked against the image.

Conversions happen under a per-entry lock with a re-check after acquiring it,
into a temporary name renamed into place: 16 array jobs starting at once make
one SIF, and the other 15 wait for it and use it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time

from venvoy.core.fs import atomic_write, sha256_file
from venvoy.runtime.base import ImageForm
from venvoy.store.fastpath import cached_image, runtime_marker
from venvoy.store.layout import Store, bound_tag, digest_hex, library_sif, sif_checked_cheaply

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from venvoy.runtime.base import Runtime


def _loaded_marker(store: Store, runtime: Runtime, image_id: str, tag: str) -> Path:
    """A note that ``runtime``'s image store holds ``image_id`` (checked when loaded).

    Asking Docker or Podman costs a subprocess (tens of ms) on every run; the
    note costs a stat. If the image is removed behind venvoy's back, the run
    fails with "no such image", the note is dropped and the image reloaded.
    """
    return store.loaded / runtime_marker(runtime, image_id, tag)


def planned_native(store: Store, runtime: Runtime, image_id: str, tag: str) -> str:
    """The image :func:`ensure_native` returns for ``image_id``, without making,
    checking or loading anything (for ``venvoy run --dry-run``)."""
    hexid = digest_hex(image_id)
    form = runtime.image_kind
    if form is ImageForm.FILE:
        return library_sif(store.environ, hexid) or str(store.sif(image_id))
    if form is ImageForm.DIR:
        return str(store.ch_dir(image_id))
    return image_id


def cached_native(store: Store, runtime: Runtime, image_id: str, tag: str) -> str | None:
    """The runtime's image for ``image_id`` if it is already there (no locks, no subprocess)."""
    digest_hex(image_id)  # refuse malformed IDs loudly here
    return cached_image(str(store.root), runtime, image_id, tag, store.environ)


def sif_verified(store: Store, image_id: str) -> bool:
    """Whether the cached SIF of ``image_id`` is byte for byte the one venvoy made
    (full sha256 against its check). Refreshes the check's time when it matches."""
    sif, check = store.sif(image_id), store.sif_check(image_id)
    try:
        digest, size = check.read_text().split()
        if not sif.is_file() or sif.stat().st_size != int(size):
            return False
    except (OSError, ValueError):
        return False
    if sha256_file(sif) != digest:
        return False
    if not sif_checked_cheaply(str(sif)):  # copied or touched, yet intact: note it again
        record_sif(store, image_id, digest)
    return True


def record_sif(store: Store, image_id: str, digest: str | None = None) -> None:
    """Write the check of the SIF venvoy just made (after the SIF, so its time is later)."""
    sif = store.sif(image_id)
    size = sif.stat().st_size
    atomic_write(store.sif_check(image_id), f"{digest or sha256_file(sif)} {size}\n")


def discard_sif(store: Store, image_id: str) -> None:
    """Forget a SIF that failed its check (the check first: nobody trusts it after)."""
    store.sif_check(image_id).unlink(missing_ok=True)
    store.sif(image_id).unlink(missing_ok=True)


def ensure_native(store: Store, runtime: Runtime, archive: Path, image_id: str, tag: str,
                  progress: Callable[[str], None] | None = None, *, verify: bool = False) -> str:
    """The image to pass to ``runtime`` for the canonical ``archive``, made if needed.

    ``verify``: check a cached SIF's full hash, not only its size and times (export).
    """
    hexid = digest_hex(image_id)
    form = runtime.image_kind
    if not verify:
        found = cached_native(store, runtime, image_id, tag)
        if found:
            return found
    # SIFs and directories are shared by every user and runtime of this store;
    # a loaded image belongs to one runtime's store (and one user, rootless).
    scope = "" if form.shared else f"{runtime.name}-{os.getuid()}-"
    with store.lock(f"native-{form.name}-{scope}{hexid}"):
        found = cached_native(store, runtime, image_id, tag)  # made while we waited?
        if found and not (verify and form is ImageForm.FILE and found == str(store.sif(image_id))):
            return found
        if form is ImageForm.FILE and store.sif(image_id).is_file():
            if sif_verified(store, image_id):
                return str(store.sif(image_id))
            if progress:
                progress(f"the cached SIF {store.sif(image_id).name} is damaged or unverified: "
                         "making it again")
            discard_sif(store, image_id)
        if not archive.is_file():
            from venvoy.core.errors import VenvoyError

            raise VenvoyError(f"canonical image {archive} is missing from the store",
                              "rebuild the environment with `venvoy init NAME --force`")
        start = time.monotonic()
        if progress:
            progress(f"making the {runtime.name} image from {archive.name}")
        if form is ImageForm.FILE:
            result = runtime.load_archive(archive, hexid, store.sif(image_id).parent)
            record_sif(store, image_id)
        elif form is ImageForm.DIR:
            damaged = store.ch_dir(image_id)
            if os.path.lexists(damaged) and not os.path.isdir(damaged):
                os.unlink(damaged)  # ours, not a directory: made again below
            result = runtime.load_archive(archive, hexid, store.ch_dir(image_id).parent)
        else:
            bound = bound_tag(tag, image_id)
            result = runtime.load_bound(archive, bound, image_id)
            marker = _loaded_marker(store, runtime, image_id, tag)
            marker.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(marker, f"{image_id} {bound}\n")
        _log_conversion(store, runtime, image_id, time.monotonic() - start)
        return result


def forget_all_loaded(store: Store, image_id: str, tag: str) -> None:
    """Remove the image from every runtime store venvoy loaded it into, and the notes."""
    from venvoy.core.errors import VenvoyError
    from venvoy.runtime.detect import get_runtime

    for name, marker in store.markers(image_id):
        # A runtime that is gone took the image with it, as far as venvoy can tell.
        # Old notes (16 hex digits) are of images tagged with ``tag`` itself.
        ref = tag if len(marker.hexid) != 64 else bound_tag(tag, image_id)
        with contextlib.suppress(VenvoyError):
            get_runtime(marker.runtime, store.environ).remove_image(ref)
        (store.loaded / name).unlink(missing_ok=True)


def forget_native(store: Store, runtime: Runtime, image_id: str, tag: str) -> None:
    """Drop the note that a runtime has the image (it was removed behind our back)."""
    _loaded_marker(store, runtime, image_id, tag).unlink(missing_ok=True)


def _log_conversion(store: Store, runtime: Runtime, image_id: str, seconds: float) -> None:
    """One line per conversion: how many happened is observable (and tested)."""
    append_note(store.conversions_log, f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {runtime.name} "
                                       f"{image_id} pid={os.getpid()} {seconds:.1f}s\n")


def append_note(log: Path, text: str) -> None:
    """Append one line to a log in the store (conversions, pulls)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    line = text.encode()
    # A note, in a store others may share: never through a link, never blocked
    # on a FIFO; anything but a regular file there is replaced (a directory is
    # left alone and the note skipped): what it records has succeeded.
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for _attempt in range(2):
        try:
            fd = os.open(log, flags, 0o644)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    with contextlib.suppress(OSError):  # a full disk: the note is lost
                        os.write(fd, line)
                    return
            finally:
                os.close(fd)
        with contextlib.suppress(OSError):
            if not stat.S_ISDIR(os.lstat(log).st_mode):
                os.unlink(log)
                continue
        return
