"""The part of ``venvoy run NAME`` that must be fast: find the runtime's image
of an environment that is already built and converted, with a few stat calls
and small reads. No json, no pathlib, no locks (they would double the start-up
time); anything not ready (or not verified) yet falls back to
:mod:`venvoy.store.forms`. Every path and name comes from :mod:`venvoy.store.layout`.
"""

from __future__ import annotations

import os
from stat import S_ISREG

from venvoy.core.names import check_name
from venvoy.core.paths import data_dir
from venvoy.runtime.base import ImageForm
from venvoy.store.layout import (
    IMAGE_FILE,
    bound_tag,
    ch_dir,
    env_tag,
    image_file,
    library_sif,
    loaded_dir,
    marker_name,
    sif_checked_cheaply,
    sif_file,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from venvoy.runtime.base import Runtime

__all__ = ["IMAGE_FILE", "MAX_IMAGE_FILE", "RECORD_FILE", "cached_image", "env_image", "env_tag",
           "read_image_file", "runtime_marker"]


#: An environment's record, beside its ``image`` file (defined here, the lowest
#: module that needs it; :mod:`venvoy.store.records` reads and writes it).
RECORD_FILE = "env.json"
#: The most an ``image`` file holds ("<image id> <identity> <record size>\n": ~150 bytes).
MAX_IMAGE_FILE = 4096


def read_image_file(path: str) -> list[str] | None:
    """The words of an ``image`` file, or None when it is not a small regular file.

    Opened without following a link and without blocking (a FIFO put there
    must not hang ``venvoy run``), checked to be a regular file, read bounded.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not S_ISREG(st.st_mode) or st.st_size > MAX_IMAGE_FILE:
            return None
        raw = os.read(fd, MAX_IMAGE_FILE + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return raw.decode("ascii").split()
    except UnicodeDecodeError:
        return None


def env_image(name: str, environ: Mapping[str, str] | None = None) -> tuple[str, str, str] | None:
    """(store root, image id, tag) of a built environment whose record looks whole, or None.

    The ``image`` file is written with the record and names the record's size;
    a record that is not a regular file of that size (truncated, emptied,
    replaced) gives None, so the full path reads it and says what is wrong.
    (An ``image`` file of an older venvoy has no size: the record must then
    be a regular file.)
    """
    root = data_dir(environ)
    path = image_file(root, check_name(name))
    words = read_image_file(path)
    if words is None or len(words) not in (2, 3) or len(words[1]) != 64 or \
            words[1].strip("0123456789abcdef"):
        return None
    try:
        st = os.stat(os.path.join(os.path.dirname(path), RECORD_FILE), follow_symlinks=False)
    except OSError:
        return None
    if not S_ISREG(st.st_mode) or (len(words) == 3 and str(st.st_size) != words[2]):
        return None
    return root, words[0], env_tag(name, words[1])


def runtime_marker(runtime: Runtime, image_id: str, tag: str) -> str:
    """File name of the note that ``runtime``'s store holds ``image_id`` (bound to ``tag``)."""
    return marker_name(runtime.name, runtime.rootless, os.getuid(), image_id,
                       bound_tag(tag, image_id))


def cached_image(root: str, runtime: Runtime, image_id: str, tag: str,
                 environ: Mapping[str, str] | None = None) -> str | None:
    """The runtime's form of ``image_id`` if it already exists and was verified, else None.

    Loaded images are run by their image ID (see ``load_bound``), never by a tag.
    """
    hexid = image_id.partition(":")[2]
    if len(hexid) != 64 or any(c not in "0123456789abcdef" for c in hexid):
        return None
    form = runtime.image_kind
    if form is ImageForm.FILE:
        found = library_sif(os.environ if environ is None else environ, hexid)
        if found is not None:
            return found
        sif = sif_file(root, hexid)
        return sif if sif_checked_cheaply(sif) else None
    if form is ImageForm.DIR:
        d = ch_dir(root, hexid)
        return d if os.path.isdir(d) and not os.path.islink(d) else None
    marker = os.path.join(loaded_dir(root), runtime_marker(runtime, image_id, tag))
    return image_id if os.path.exists(marker) else None
