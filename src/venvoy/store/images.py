"""Images from anywhere: what ``venvoy run --image REF`` runs, for every runtime.

``REF`` is classified for the runtime at hand (asked through its
:class:`~venvoy.runtime.base.ImageForm`, never its name) by :func:`classify`:

- :data:`AS_IS`: what the runtime takes as it is: a name in its own image
  store (Docker, Podman), a ``.sif`` file or a directory (Apptainer,
  Singularity, Charliecloud), a URI other than ``docker://`` (``oras://``,
  ``library://``: Apptainer reads those itself), or a path that does not exist
  (the runtime's own check says so in one line). Nothing is done here, so
  ``venvoy run --image python:3.11-slim`` under Docker costs what it did.
- :data:`ARCHIVE`: an existing Docker or OCI archive tar (plain or compressed):
  copied once into the store with every layer checked against its config
  (:func:`venvoy.image.oci.copy_as_docker_archive`), keyed by image ID.
- :data:`REGISTRY`: ``docker://HOST/REPO[:TAG][@DIGEST]``, or ``HOST/REPO...``
  whose first part is a host with a dot or a port: the tag is resolved to a
  manifest digest (one small manifest request, every run: a moved tag is noticed),
  and the image is pulled once per digest by venvoy's own registry client
  (:mod:`venvoy.image.registry`: the user's CA bundle, proxies and
  credentials) into a Docker archive. Docker and Podman get it loaded from
  that archive too, rather than pulling themselves: their daemon's trust
  store (``/etc/docker/certs.d``) is root's to configure, venvoy's client
  honours what the user has, and every runtime then shares one cache.
- :data:`LOCAL`: any other name, for a runtime without an image store: looked
  up in the local Docker and Podman stores this user can use (asking the
  adapters: ``has_image_store``, ``image_id``, ``save``), saved once into the
  store keyed by that store's image ID. ``localhost/NAME`` is such a name
  (Podman names what it builds or imports that way); a registry on loopback
  needs its port (``localhost:5000/...``).

Every archive lands in ``<store>/cache/images/<image id>.tar`` and becomes the
runtime's form with :func:`venvoy.store.forms.ensure_native` (loaded image,
SIF, Charliecloud directory; cached by image ID). Each step runs under a
per-entry lock with a re-check once it is held, into a temporary name renamed
into place: 16 jobs that start at once on an empty store make one pull and
one SIF. Small notes beside the archives record what was learnt: the image ID
of a pulled manifest digest (``digest-<hex>``), of a local store's image
(``store-<runtime>-<root|rootless>-<uid>-<hex>``) and the digest a reference
resolved to last (``ref-<hash>``). Every pull, save or copy appends one line
to ``<store>/cache/pulls.log``.

When the registry cannot be reached (or refuses the request) and the
reference resolved before, the digest it had then is run, with one warning
line on stderr; with nothing cached the registry's error is the error, unless
a local Docker/Podman store holds an image of that name (Podman names pulled
images ``HOST/REPO:TAG``), which is then run, with a warning.

Only ``os`` (and the already loaded ``runtime.base``) is imported up front: the
CLI calls :func:`classify` on the run path for every ``--image``.
"""

from __future__ import annotations

import os

from venvoy.runtime.base import ImageForm

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from venvoy.core.errors import VenvoyError
    from venvoy.image.registry import Reference
    from venvoy.runtime.base import Runtime
    from venvoy.store.layout import Store

    Progress = Callable[[str], None]

#: What :func:`classify` answers.
AS_IS = "as-is"
ARCHIVE = "archive"
REGISTRY = "registry"
LOCAL = "local"

DOCKER_SCHEME = "docker://"


# -- what REF is ----------------------------------------------------------------------------

def names_a_registry(image: str) -> bool:
    """Whether the first part of ``image`` is a registry host: a dot or a port in it."""
    first, sep, _rest = image.partition("/")
    return bool(sep) and ("." in first or ":" in first)


def is_image_archive(path: str) -> bool:
    """Whether ``path`` is a regular file that starts like a tar (plain or compressed).

    A SIF, a squashfs or anything else is left to the runtime. Opened without
    blocking (a FIFO there must not hang the run); 512 bytes read.
    """
    from venvoy.image.compress import HEAD, kind_of

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = os.read(fd, HEAD)
    except OSError:
        return False
    finally:
        os.close(fd)
    return kind_of(head) != "unknown"


def classify(runtime: Runtime, image: str) -> str:
    """:data:`AS_IS`, :data:`ARCHIVE`, :data:`REGISTRY` or :data:`LOCAL` (see the module).

    Costs a few string operations and at most one ``stat`` and one 512-byte read.
    """
    from venvoy.runtime.oci_cli import is_path_like

    if image.startswith(DOCKER_SCHEME):
        return REGISTRY
    if "://" in image:
        return AS_IS
    if os.path.lexists(image):
        if os.path.isfile(image):
            return ARCHIVE if is_image_archive(image) else AS_IS
        _refuse_special(image)
        return AS_IS
    if is_path_like(image):
        return AS_IS  # no such file: the runtime's own check says so, in one line
    if names_a_registry(image):
        return REGISTRY
    return AS_IS if runtime.image_kind is ImageForm.REF else LOCAL


def _refuse_special(path: str) -> None:
    """A FIFO, socket or character device is no image: say so, rather than let the
    runtime block on opening it (Apptainer waits on a FIFO for ever)."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # a dangling link: the runtime's own check says so
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode):
        from venvoy.core.errors import BadRequest

        raise BadRequest(f"--image {path[:200]!r} is a FIFO, socket or device, not an image",
                         "give a .sif, an image directory, a Docker/OCI archive tar or an "
                         "image name")


# -- the entry point ------------------------------------------------------------------------

def native_image(store: Store, runtime: Runtime, image: str, *,
                 progress: Progress | None = None) -> str:
    """What to pass to ``runtime`` to run ``image``: made (pulled, saved, converted) if needed."""
    from venvoy.store.forms import ensure_native
    from venvoy.store.layout import IMAGE_REPOSITORY

    kind = classify(runtime, image)
    if kind == AS_IS:
        return image
    from venvoy.core.errors import VenvoyError

    for attempt in range(2):
        found = source_image(store, runtime, image, kind, progress=progress)
        if isinstance(found, str):
            return found
        archive, image_id = found
        try:
            return ensure_native(store, runtime, archive, image_id, IMAGE_REPOSITORY, progress)
        except VenvoyError as exc:
            # The cached archive itself is damaged (truncated, altered on disk): it is
            # only a cache, so it goes and is made again, once, instead of failing for ever.
            where = f"image archive {archive} is "
            if attempt or archive.parent != store.image_cache or not exc.message.startswith(
                    (where + "truncated", where + "damaged")):
                raise
            if progress:
                progress(f"the cached {archive.name} is damaged: fetching it again")
            archive.unlink(missing_ok=True)
    raise AssertionError("unreachable")


def planned_image(store: Store, runtime: Runtime, image: str) -> str:
    """The image :func:`native_image` would run, without pulling, saving or converting
    (``venvoy run --dry-run``): the reference itself when it is not in the store yet."""
    from venvoy.store.forms import planned_native
    from venvoy.store.layout import IMAGE_REPOSITORY

    kind = classify(runtime, image)
    if kind == AS_IS:
        return image
    image_id = known_image_id(store, runtime, image, kind)
    return planned_native(store, runtime, image_id, IMAGE_REPOSITORY) if image_id else image


def source_image(store: Store, runtime: Runtime, image: str, kind: str, *,
                 progress: Progress | None = None) -> tuple[Path, str] | str:
    """(canonical archive, image ID) of ``image`` in the store, made if needed; or a
    name ``runtime`` runs from its own store (a registry that cannot be reached)."""
    from pathlib import Path

    if kind == ARCHIVE:
        return from_archive(store, Path(image), progress=progress)
    if kind == LOCAL:
        return from_local_store(store, image, progress=progress)
    return from_registry(store, runtime, image, progress=progress)


def known_image_id(store: Store, runtime: Runtime, image: str, kind: str) -> str | None:
    """The image ID ``image`` has in the store already (for a dry run), or None."""
    from pathlib import Path

    from venvoy.core.errors import VenvoyError

    try:
        if kind == ARCHIVE:
            return archive_image_id(Path(image))
        if kind == LOCAL:
            found = find_in_local_stores(store, image)
            return read_note(store, store_note(*found)) if found else None
        ref = parse(image)
        digest = ref.digest or last_digest(store, ref)
        return read_note(store, digest_note(digest), digest) if digest else None
    except VenvoyError:
        return None


# -- notes and the log ---------------------------------------------------------------------

def digest_note(digest: str) -> str:
    from venvoy.store.layout import digest_hex

    return f"digest-{digest_hex(digest)}"


def store_note(runtime: Runtime, store_id: str) -> str:
    from venvoy.store.layout import digest_hex

    scope = "rootless" if runtime.rootless else "root"
    return f"store-{runtime.name}-{scope}-{os.getuid()}-{digest_hex(store_id)}"


def ref_note(canonical: str) -> str:
    import hashlib

    return "ref-" + hashlib.sha256(canonical.encode()).hexdigest()[:40]


def read_words(store: Store, name: str) -> list[str] | None:
    """The words of a note (a small regular file, never through a link), or None."""
    from venvoy.store.fastpath import read_image_file

    return read_image_file(str(store.image_cache / name))


def read_note(store: Store, name: str, source: str | None = None) -> str | None:
    """The image ID a note records, if the note is sound (and records ``source``,
    when given: a manifest digest) and its archive is there."""
    words = read_words(store, name)
    if not words or not is_image_id(words[0]):
        return None
    if source is not None and words[1:] != [source]:
        return None  # altered, or another digest's: pulled again
    return words[0] if archive_path(store, words[0]).is_file() else None


def write_note(store: Store, name: str, text: str) -> None:
    from venvoy.core.fs import atomic_write

    atomic_write(store.image_cache / name, text + "\n")


def is_image_id(value: str) -> bool:
    hexdigest = value.removeprefix("sha256:")
    return value.startswith("sha256:") and len(hexdigest) == 64 and \
        not hexdigest.strip("0123456789abcdef")


def archive_path(store: Store, image_id: str) -> Path:
    from venvoy.store.layout import digest_hex

    return store.image_cache / f"{digest_hex(image_id)}.tar"


def log_pull(store: Store, what: str, source: str, image_id: str, seconds: float) -> None:
    """One line per image brought into the cache: how many happened is observable (and tested)."""
    import time

    from venvoy.store.forms import append_note

    safe = "".join(c if c.isprintable() and not c.isspace() else "_" for c in source)[:300]
    append_note(store.pulls_log, f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {what} {safe} "
                                 f"{image_id} pid={os.getpid()} {seconds:.1f}s\n")


def publish(store: Store, tmp: Path, image_id: str) -> Path:
    """Move a finished archive into place under its image ID (kept if already there)."""
    final = archive_path(store, image_id)
    if final.is_file():
        tmp.unlink(missing_ok=True)
    else:
        tmp.chmod(0o444)
        os.replace(tmp, final)
    return final


def scratch_file(store: Store, stem: str) -> Path:
    """An owner-tagged temporary name in the image cache (what a killed run left is
    removed by the next one: :func:`venvoy.core.fs.clean_stale`)."""
    from venvoy.core.fs import TMP_PREFIX, clean_stale, temp_name

    store.image_cache.mkdir(parents=True, exist_ok=True)
    clean_stale(store.image_cache)
    return store.image_cache / temp_name(f"{TMP_PREFIX}{stem}", ".tar")


def cached(store: Store) -> list[dict[str, object]]:
    """Each archive in the image cache: its image ID, size and where it came from
    (the references that resolved to it, the local images saved as it), from the notes."""
    try:
        names = sorted(os.listdir(store.image_cache))
    except OSError:
        return []
    notes = {name: read_words(store, name) or [] for name in names
             if name.startswith(("digest-", "store-", "ref-"))}
    refs = {w[0]: w[1] for name, w in notes.items() if name.startswith("ref-") and len(w) == 2}
    sources: dict[str, set[str]] = {}
    for name, w in notes.items():
        if name.startswith("digest-") and len(w) == 2:
            sources.setdefault(w[0], set()).add(refs.get(w[1], w[1]))
        elif name.startswith("store-") and len(w) == 3:
            sources.setdefault(w[0], set()).add(f"{w[1]} image {w[2]}")
    out: list[dict[str, object]] = []
    for name in names:
        image_id = "sha256:" + name.removesuffix(".tar")
        if not name.endswith(".tar") or not is_image_id(image_id):
            continue
        try:
            size = (store.image_cache / name).stat().st_size
        except OSError:
            continue
        out.append({"image_id": image_id, "size": size,
                    "sources": sorted(sources.get(image_id, ()))})
    return out


# -- a Docker or OCI archive -----------------------------------------------------------------

def archive_image_id(path: Path) -> str:
    from venvoy.image.oci import inspect_archive

    return inspect_archive(path).image_id


def from_archive(store: Store, path: Path, *, progress: Progress | None = None) -> tuple[Path, str]:
    """A Docker/OCI archive copied into the store once (layers checked), keyed by image ID."""
    from venvoy.core.errors import DamagedError
    from venvoy.image.oci import copy_as_docker_archive
    from venvoy.store.layout import digest_hex

    image_id = archive_image_id(path)

    def copy(tmp: Path) -> str:
        if copy_as_docker_archive(path, tmp).image_id != image_id:  # changed while read
            raise DamagedError(f"{path} changed while it was copied",
                               "run again once nothing writes to it")
        return image_id

    return bring_in(store, f"image-copy-{digest_hex(image_id)}",
                    lambda: image_id if archive_path(store, image_id).is_file() else None, copy,
                    what="copy", source=str(path), progress=progress,
                    message=f"copying {path.name} into the store (every layer checked)")


def bring_in(store: Store, key: str, known: Callable[[], str | None], make: Callable[[Path], str],
             *, what: str, source: str, message: str, progress: Progress | None,
             note: tuple[str, str] | None = None) -> tuple[Path, str]:
    """(archive, image ID) of one entry of the image cache, made once by many processes.

    ``known()`` is the entry's image ID when it is there already; else, under the
    lock ``key`` and asked again, ``make(tmp)`` writes the archive at a temporary
    name and returns its image ID; it is renamed into place by ID, then ``note``
    (name, text after the image ID) is written and a ``what`` line logged.
    """
    import time

    image_id = known()
    if image_id is None:
        with store.lock(key):
            image_id = known()
            if image_id is None:
                start = time.monotonic()
                if progress:
                    progress(message)
                tmp = scratch_file(store, what)
                try:
                    image_id = make(tmp)
                    publish(store, tmp, image_id)
                finally:
                    tmp.unlink(missing_ok=True)
                if note is not None:
                    write_note(store, note[0], f"{image_id} {note[1]}")
                log_pull(store, what, source, image_id, time.monotonic() - start)
    return archive_path(store, image_id), image_id


# -- a local Docker or Podman store ---------------------------------------------------------

def image_stores(store: Store) -> tuple[list[Runtime], list[str]]:
    """The runtimes with an image store this user can use, and why the others cannot."""
    from venvoy.core.errors import VenvoyError
    from venvoy.runtime import RUNTIMES, adapter_class
    from venvoy.runtime.detect import get_runtime

    usable, skipped = [], []
    for name in RUNTIMES:
        if not adapter_class(name).has_image_store:
            continue
        try:
            usable.append(get_runtime(name, store.environ))
        except VenvoyError as exc:
            skipped.append(exc.message)
    return usable, skipped


def find_in_local_stores(store: Store, image: str) -> tuple[Runtime, str] | None:
    """(runtime, image ID in its store) of the first local store holding ``image``."""
    return first_holding(image_stores(store)[0], image)


def first_holding(stores: list[Runtime], image: str) -> tuple[Runtime, str] | None:
    for rt in stores:
        image_id = rt.image_id(image)
        if image_id is not None:
            return rt, image_id
    return None


def from_local_store(store: Store, image: str, *, progress: Progress | None = None,
                     ) -> tuple[Path, str]:
    """``image`` from the local Docker or Podman store, saved into the store once."""
    from venvoy.core.errors import ImageNotFound
    from venvoy.image.oci import inspect_archive

    stores, skipped = image_stores(store)
    found = first_holding(stores, image)
    if found is None:
        asked = ", ".join(rt.name for rt in stores) or "no image store (neither Docker nor Podman)"
        why = f"; not asked: {'; '.join(skipped)}" if skipped else ""
        raise ImageNotFound(
            f"image {image!r} is not a file, and not in the local images of {asked}{why}",
            "give a .sif, an image directory or a Docker/OCI archive tar, pull it first "
            "(e.g. `podman pull IMAGE`), or name a registry: docker://HOST/REPO:TAG")
    rt, store_id = found
    note = store_note(rt, store_id)

    def save(tmp: Path) -> str:
        # by ID: exactly the image looked at above, even if its tag moves meanwhile
        rt.save(store_id.partition(":")[2], tmp)
        return inspect_archive(tmp).image_id

    return bring_in(store, f"image-{note}", lambda: read_note(store, note), save, what="save",
                    source=f"{rt.name}:{image}", progress=progress,
                    message=f"saving {image} from {rt.name} into the store",
                    note=(note, f"{rt.name} {store_id}"))


# -- a registry ------------------------------------------------------------------------------

def parse(image: str) -> Reference:
    from venvoy.image.registry import parse_reference

    return parse_reference(image)


def last_digest(store: Store, ref: Reference) -> str | None:
    """The digest ``ref`` resolved to the last time (from its note), or None."""
    canonical = ref.canonical()
    words = read_words(store, ref_note(canonical))
    if not words or len(words) != 2 or words[1] != canonical or not is_image_id(words[0]):
        return None
    return words[0]


def from_registry(store: Store, runtime: Runtime, image: str, *,
                  progress: Progress | None = None) -> tuple[Path, str] | str:
    """``image`` from its registry, pulled once per manifest digest (see the module)."""
    from venvoy.core.errors import VenvoyError
    from venvoy.image import registry
    from venvoy.store.layout import warn
    from venvoy.store.records import safe_text

    ref = parse(image)
    canonical = ref.canonical()
    digest = ref.digest
    if digest is None:
        try:
            digest = registry.resolve(ref, environ=store.environ)
        except VenvoyError as exc:
            cached = last_digest(store, ref)
            image_id = read_note(store, digest_note(cached), cached) if cached else None
            if cached is None or image_id is None:
                local = local_fallback(store, runtime, image, exc)
                if local is None:
                    raise
                return local
            warn(f"cannot resolve {canonical} ({safe_text(exc.message)}); running {cached[:19]}, "
                 "the digest it had the last time")
            return archive_path(store, image_id), image_id
    found = pull_digest(store, ref, digest, progress=progress)
    if ref.digest is None and last_digest(store, ref) != digest:  # noted once it is here
        write_note(store, ref_note(canonical), f"{digest} {canonical}")
    return found


def local_fallback(store: Store, runtime: Runtime, image: str,
                   error: VenvoyError) -> tuple[Path, str] | str | None:
    """A registry reference the registry did not answer for, found in a local store
    (Podman keeps pulled images under such names), or None."""
    from venvoy.core.errors import VenvoyError
    from venvoy.store.layout import warn
    from venvoy.store.records import safe_text

    if image.startswith(DOCKER_SCHEME):
        return None  # explicitly the registry's
    found: tuple[Path, str] | str | None
    try:
        if runtime.has_image_store:
            found = image if runtime.image_id(image) is not None else None
        else:
            found = from_local_store(store, image)
    except VenvoyError:
        return None
    if found is not None:
        warn(f"cannot resolve {image} ({safe_text(error.message)}); running the local image "
             "of that name")
    return found


def pull_digest(store: Store, ref: Reference, digest: str, *,
                progress: Progress | None = None) -> tuple[Path, str]:
    """The image of manifest ``digest`` (of ``ref``'s repository), pulled once."""
    from venvoy.core.errors import DamagedError
    from venvoy.image import registry

    note = digest_note(digest)

    def pull(tmp: Path) -> str:
        pulled = registry.pull_archive(ref.with_digest(digest), tmp, environ=store.environ)
        if pulled.manifest_digest != digest:
            raise DamagedError(f"the registry sent manifest {pulled.manifest_digest} for "
                               f"{digest}", "try again; if it persists, the registry is broken")
        return pulled.image_id

    return bring_in(store, f"image-pull-{note}", lambda: read_note(store, note, digest), pull,
                    what="pull", source=f"{ref.canonical()}@{digest}", progress=progress,
                    message=f"pulling {ref.canonical()} ({digest[:19]})", note=(note, digest))


__all__ = ["ARCHIVE", "AS_IS", "LOCAL", "REGISTRY", "cached", "classify", "from_archive",
           "from_local_store", "from_registry", "names_a_registry", "native_image",
           "planned_image"]
