"""The store: one root for everything venvoy keeps, laid out like a cache.

::

    <root>/envs/<name>/          env.json, pylock.toml, requirements.in, image (one dir per env)
    <root>/images/<id>.tar       canonical Docker archives, named by image ID (content-addressed)
    <root>/cache/wheels/         downloaded wheels by sha256 (shared by all environments)
    <root>/cache/sif/<id>.sif    SIF files made from canonical images, by image ID, each with
    <root>/cache/sif/<id>.sif.sha256   its check: "<sha256> <size>", written when venvoy made it
    <root>/cache/ch/<id>/        unpacked Charliecloud image directories, by image ID
    <root>/cache/loaded/<marker> notes that a Docker/Podman store holds an image (see marker_name)
    <root>/cache/load/<runtime>/ default destination of `venvoy load` (SIFs, directories)
    <root>/cache/images/         images run with `venvoy run --image` from outside venvoy (a local
                                 Docker/Podman store, a registry, a tar): <id>.tar by image ID, and
                                 notes digest-<hex>, store-<...>-<hex>, ref-<hash> (see store.images)
    <root>/cache/pulls.log       one line per image pulled, saved or copied into cache/images
    <root>/cache/apptainer/      Apptainer's and Singularity's own cache during conversions
    <root>/cache/runtime-versions.json   probed runtime versions (see venvoy.core.paths)
    <root>/bases/                bootstrapped and pulled base images
    <root>/locks/                one lock file per entry being created
    <root>/jobs/<id>.json        the Slurm jobs `venvoy submit` made (script, options, outputs)
    <root>/tmp/                  build and conversion space (same file system: renames are atomic)

Every name above is defined here, once. :class:`Store` hands them out as
paths; the plain-string helpers below are the same definitions for
:mod:`venvoy.store.fastpath`, which must not import pathlib, json or
contextlib (``venvoy run`` start-up time), so this module imports them only
inside functions.

The root is ``VENVOY_HOME`` or the platform's user data directory. Entries are
created under a temporary name and renamed into place, under a per-entry lock,
so many processes (say, 16 array jobs) can ask for the same entry at once and
exactly one makes it. ``VENVOY_LIBRARY`` names a read-only directory a site
admin fills with ``<id>.sif`` files; it is searched before the cache, and only
trusted when it and the file are owned by root or the user and writable by
no one else (as ssh treats its files).
"""

from __future__ import annotations

import os

from venvoy.core.errors import VenvoyError
from venvoy.core.paths import APPTAINER_CACHE_DIR, CACHE_DIR, RUNTIME_VERSIONS_FILE, data_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    import contextlib
    from collections.abc import Mapping
    from pathlib import Path

#: How long to wait for another process that is creating the same entry.
LOCK_TIMEOUT_S = float(os.environ.get("VENVOY_LOCK_TIMEOUT", "1800"))

# -- every name in the store, once ---------------------------------------------------
ENVS_DIR = "envs"
IMAGES_DIR = "images"
BASES_DIR = "bases"
LOCKS_DIR = "locks"
TMP_DIR = "tmp"
LOGS_DIR = "logs"
JOBS_DIR = "jobs"
#: Under CACHE_DIR (which, like APPTAINER_CACHE_DIR and RUNTIME_VERSIONS_FILE, is
#: defined in venvoy.core.paths: the runtime layer below the store needs them too).
WHEELS_DIR = "wheels"
SIF_DIR = "sif"
CH_DIR = "ch"
LOADED_DIR = "loaded"
LOAD_DEST_DIR = "load"
CONVERSIONS_LOG = "conversions.log"
#: Images from outside venvoy (`run --image`), and the log of their pulls (see store.images).
IMAGE_CACHE_DIR = "images"
PULLS_LOG = "pulls.log"
#: Per environment: "<image id> <identity> <env.json size>", written with env.json, read by the fast path.
IMAGE_FILE = "image"
SIF_SUFFIX = ".sif"
#: Beside each SIF venvoy made: "<sha256 hex> <size>\n".
SIF_CHECK_SUFFIX = ".sif.sha256"
#: Repository of environment images in Docker/Podman stores.
ENV_REPOSITORY = "localhost/venvoy"
#: Repository of images from outside venvoy loaded into Docker/Podman (tagged by image ID).
IMAGE_REPOSITORY = "localhost/venvoy-image"


# -- plain-string helpers (no pathlib: used by the fast path) -----------------------
def image_file(root: str, name: str) -> str:
    return os.path.join(root, ENVS_DIR, name, IMAGE_FILE)


def sif_file(root: str, hexid: str) -> str:
    return os.path.join(root, CACHE_DIR, SIF_DIR, hexid + SIF_SUFFIX)


def sif_check_file(sif: str) -> str:
    """The sidecar of a SIF path (``x.sif`` -> ``x.sif.sha256``)."""
    return sif[: -len(SIF_SUFFIX)] + SIF_CHECK_SUFFIX if sif.endswith(SIF_SUFFIX) else sif + ".sha256"


def ch_dir(root: str, hexid: str) -> str:
    return os.path.join(root, CACHE_DIR, CH_DIR, hexid)


def loaded_dir(root: str) -> str:
    return os.path.join(root, CACHE_DIR, LOADED_DIR)


def env_tag(name: str, identity: str) -> str:
    """The environment's name in Docker/Podman before it is bound to an image (legacy tag)."""
    return f"{ENV_REPOSITORY}/{name}:{identity[:12]}"


def bound_tag(tag: str, image_id: str) -> str:
    """``tag`` bound to its image: the repository of ``tag``, tagged with the full
    image-ID hex. Two stores with the same name and identity but different
    content get different tags; what runs is the image ID itself."""
    repo = tag.rpartition(":")[0] if ":" in tag.rpartition("/")[2] else tag
    return f"{repo}:{image_id.partition(':')[2] or image_id}"


def marker_name(runtime_name: str, rootless: bool, uid: int, image_id: str, tag: str) -> str:
    """File name of the note that a Docker/Podman store holds ``image_id`` as ``tag``.

    ``<runtime>-<root|rootless>-<uid>-<64 hex>-<tag, made safe>``; parsed by
    :func:`parse_marker` and nowhere else.
    """
    scope = "rootless" if rootless else "root"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in tag)
    return f"{runtime_name}-{scope}-{uid}-{image_id.partition(':')[2]}-{safe}"


class Marker:
    """A parsed marker name."""

    __slots__ = ("hexid", "rootless", "runtime", "uid")

    def __init__(self, runtime: str, rootless: bool, uid: int, hexid: str) -> None:
        self.runtime, self.rootless, self.uid, self.hexid = runtime, rootless, uid, hexid

    @property
    def label(self) -> str:
        """How `venvoy list` names this form: "podman", "podman-rootless"."""
        return self.runtime + ("-rootless" if self.rootless else "")


def parse_marker(name: str) -> Marker | None:
    """The parts of a marker name, or None for anything else (old-style markers
    with a 16-hex prefix are parsed too, so their images can be removed)."""
    parts = name.split("-", 4)
    if len(parts) < 5 or parts[1] not in ("root", "rootless") or not parts[2].isdigit():
        return None
    hexid = parts[3]
    if len(hexid) not in (16, 64) or any(c not in "0123456789abcdef" for c in hexid):
        return None
    return Marker(parts[0], parts[1] == "rootless", int(parts[2]), hexid)


def library_problem(path: str, st: os.stat_result | None = None) -> str | None:
    """Why ``path`` (in ``VENVOY_LIBRARY``) must not be trusted, or None.

    Like ssh: owned by root or the user, and writable by neither group nor
    others. Anyone who can write it could swap the image every job runs.
    """
    try:
        st = st or os.stat(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    if st.st_uid not in (0, os.getuid()):
        return f"it is owned by uid {st.st_uid}, not by root or you"
    if st.st_mode & 0o022:
        who = "others" if st.st_mode & 0o002 else "its group"
        return f"it is writable by {who} (mode {st.st_mode & 0o7777:o})"
    return None


def warn(message: str) -> None:
    import sys

    print(f"venvoy: warning: {message}", file=sys.stderr)


def library_sif(environ: Mapping[str, str], hexid: str) -> str | None:
    """The site library's SIF of ``hexid`` if there is one that can be trusted;
    an untrusted one is skipped with a warning on stderr."""
    lib = environ.get("VENVOY_LIBRARY")
    if not lib:
        return None
    candidate = os.path.join(lib, hexid + SIF_SUFFIX)
    try:
        st = os.stat(candidate)
    except OSError:
        return None
    for path, stat in ((lib, None), (candidate, st)):
        why = library_problem(path, stat)
        if why is not None:
            warn(f"ignoring {candidate} from VENVOY_LIBRARY: {path} is not safe ({why})")
            return None
    return candidate


def sif_checked_cheaply(sif: str) -> bool:
    """Whether ``sif`` is the file venvoy made, as far as two stats and one tiny
    read tell: its size is the one recorded beside it, and it was not modified
    after the record was written. The full hash is checked by
    :func:`venvoy.store.forms.sif_verified` before export and after conversion."""
    try:
        st = os.stat(sif)
        with open(sif_check_file(sif), "rb") as fh:
            record = fh.read(200)
            check_st = os.fstat(fh.fileno())
        digest, size = record.split()
    except (OSError, ValueError):
        return False
    return len(digest) == 64 and size.isdigit() and int(size) == st.st_size \
        and st.st_mtime_ns <= check_st.st_mtime_ns


def store_root(environ: Mapping[str, str] | None = None) -> Path:
    from pathlib import Path

    return Path(data_dir(environ))


class Store:
    """Paths and safe-creation helpers for one store root."""

    def __init__(self, root: Path | None = None, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ
        self.root = (root or store_root(self.environ)).absolute()

    # -- layout -------------------------------------------------------------------
    @property
    def envs(self) -> Path:
        return self.root / ENVS_DIR

    def env_dir(self, name: str) -> Path:
        from venvoy.core.names import check_name

        return self.envs / check_name(name)

    def image_archive(self, image_id: str) -> Path:
        return self.root / IMAGES_DIR / f"{digest_hex(image_id)}.tar"

    @property
    def cache(self) -> Path:
        return self.root / CACHE_DIR

    @property
    def wheels(self) -> Path:
        return self.cache / WHEELS_DIR

    def sif(self, image_id: str) -> Path:
        return self.cache / SIF_DIR / f"{digest_hex(image_id)}{SIF_SUFFIX}"

    def sif_check(self, image_id: str) -> Path:
        return self.cache / SIF_DIR / f"{digest_hex(image_id)}{SIF_CHECK_SUFFIX}"

    def ch_dir(self, image_id: str) -> Path:
        return self.cache / CH_DIR / digest_hex(image_id)

    @property
    def loaded(self) -> Path:
        return self.cache / LOADED_DIR

    def marker(self, runtime_name: str, rootless: bool, image_id: str, tag: str) -> Path:
        return self.loaded / marker_name(runtime_name, rootless, os.getuid(), image_id, tag)

    def markers(self, image_id: str) -> list[tuple[str, Marker]]:
        """(file name, parsed) of every marker of ``image_id``, any runtime or user."""
        hexid = digest_hex(image_id)
        try:
            names = sorted(os.listdir(self.loaded))
        except OSError:
            return []
        out = []
        for name in names:
            m = parse_marker(name)
            if m is not None and hexid.startswith(m.hexid):
                out.append((name, m))
        return out

    def load_dest(self, runtime_name: str) -> Path:
        """Default destination of `venvoy load` for runtimes that keep images as files."""
        return self.cache / LOAD_DEST_DIR / runtime_name

    @property
    def apptainer_cache(self) -> Path:
        return self.cache / APPTAINER_CACHE_DIR

    @property
    def runtime_versions(self) -> Path:
        return self.cache / RUNTIME_VERSIONS_FILE

    @property
    def conversions_log(self) -> Path:
        return self.cache / CONVERSIONS_LOG

    @property
    def image_cache(self) -> Path:
        return self.cache / IMAGE_CACHE_DIR

    @property
    def pulls_log(self) -> Path:
        return self.cache / PULLS_LOG

    @property
    def bases(self) -> Path:
        return self.root / BASES_DIR

    @property
    def logs(self) -> Path:
        return self.root / LOGS_DIR

    @property
    def jobs(self) -> Path:
        """One record per job `venvoy submit` gave Slurm: ``<job id>.json``."""
        return self.root / JOBS_DIR

    @property
    def tmp(self) -> Path:
        """Scratch space inside the store: same file system, so renames are atomic,
        and never a small /tmp by surprise (``VENVOY_TMPDIR`` overrides)."""
        from pathlib import Path

        path = Path(self.environ.get("VENVOY_TMPDIR") or self.root / TMP_DIR)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def library(self) -> Path | None:
        from pathlib import Path

        lib = self.environ.get("VENVOY_LIBRARY")
        return Path(lib) if lib else None

    # -- safe creation ------------------------------------------------------------
    def lock(self, key: str, timeout: float = LOCK_TIMEOUT_S) -> contextlib.AbstractContextManager[None]:
        """An exclusive lock on one entry, shared by every process using this store."""
        from venvoy.core.fs import file_lock

        return file_lock(self.root / LOCKS_DIR / f"{safe_key(key)}.lock", timeout=timeout, what=key)

    def new_path(self, final: Path, *, directory: bool = False) -> contextlib.AbstractContextManager[Path]:
        """See :func:`venvoy.core.fs.new_path`."""
        from venvoy.core.fs import new_path

        return new_path(final, directory=directory)


def digest_hex(image_id: str) -> str:
    """The hex part of "sha256:<hex>", checked so it can be used as a file name."""
    algo, _, hexdigest = image_id.partition(":")
    if not hexdigest:
        hexdigest, algo = algo, "sha256"
    if algo != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
        raise VenvoyError(f"bad image digest {image_id!r}")
    return hexdigest


def safe_key(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)[:200]
