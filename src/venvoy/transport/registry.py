"""Environments through OCI registries: ``venvoy push NAME REF`` and ``venvoy pull REF``.

``push`` sends an environment's image (the store's Docker archive, byte for
byte the same config, so the same image ID) to a registry with
:func:`venvoy.image.registry.push_archive`. The image manifest carries the
environment in annotations:

    org.venvoy.format        ``venvoy-registry/1``
    org.venvoy.environment   the environment record (env.json, credentials in URLs redacted)
    org.venvoy.pylock        the lock (pylock.toml)

The image's own labels (``org.venvoy.*``) and its ``/opt/venvoy/pylock.toml``
are there too, so the pushed image runs with plain ``podman run`` or
``apptainer exec docker://...``, no venvoy needed.

``pull`` fetches the image with :func:`venvoy.image.registry.pull_archive`
(every blob checked against its digest), wraps image, record and lock as a
venvoy archive in the store's temporary space and imports that with
:func:`venvoy.transport.archive.import_archive`: the same checks as
``venvoy import`` (record fields, lock hash = record = image label, image ID =
config digest, layers = diff_ids) and the same publishing by renames.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from venvoy.core.errors import DamagedError, VenvoyError
from venvoy.core.fs import clean_stale, temp_name
from venvoy.core.version import __version__
from venvoy.image import registry as reg
from venvoy.image.tarsafe import CHUNK, TarWriter
from venvoy.store.layout import Store
from venvoy.store.records import Environment, lock_hash
from venvoy.transport.common import redacted

REGISTRY_FORMAT = "venvoy-registry/1"
ANNOTATION_FORMAT = "org.venvoy.format"
ANNOTATION_ENV = "org.venvoy.environment"
ANNOTATION_LOCK = "org.venvoy.pylock"
#: The most a lock carried in annotations may hold (the manifest itself is bounded).
MAX_LOCK = 2 << 20

_NOT_VENVOY = ("pull images that `venvoy push` wrote; other images can be used as a base "
               "(`venvoy init NAME --base REF`)")


def _quiet(_msg: str) -> None:
    return None




def _checked_lock(env: Environment) -> str:
    """The lock text, which must match the record, once the store's image is
    checked to be the one the environment was built with."""
    from venvoy.transport.archive import checked_image

    try:
        lock_text = (env.dir / "pylock.toml").read_bytes().decode("utf-8")
        lock_ok = lock_hash(lock_text) == env.lock_hash
    except (OSError, UnicodeDecodeError):
        lock_text, lock_ok = "", False
    if not lock_ok:
        raise VenvoyError(f"the lock of {env.name} is missing or does not match its lock hash",
                          f"rebuild it with `venvoy init {env.name} --force`")
    if len(lock_text.encode()) > MAX_LOCK:
        raise VenvoyError(f"the lock of {env.name} is larger than {MAX_LOCK >> 20} MiB",
                          "export it with `venvoy export --format archive` instead")
    checked_image(env)
    return lock_text


def push_env(env: Environment, ref: str, *, environ: Mapping[str, str] | None = None,
             progress: Callable[[str], None] | None = None) -> str:
    """Push ``env`` to the registry reference ``ref``; returns ``HOST/REPO:TAG@sha256:...``."""
    say = progress or _quiet
    target = reg.parse_reference(ref)
    if target.tag is None:
        target = reg.Reference(target.host, target.repository, env.identity[:12], target.digest)
    lock_text = _checked_lock(env)
    record = redacted(env.as_dict())
    record.pop("imported_from", None)
    annotations = {
        ANNOTATION_FORMAT: REGISTRY_FORMAT,
        ANNOTATION_ENV: json.dumps(record, sort_keys=True, separators=(",", ":")),
        ANNOTATION_LOCK: lock_text,
        "org.opencontainers.image.title": env.name,
        "org.opencontainers.image.version": env.identity[:12],
    }
    start = time.monotonic()
    say(f"pushing {env.name} to {target.canonical()}")
    digest = reg.push_archive(env.archive, target, environ=environ, progress=say,
                              annotations=annotations)
    say(f"pushed {env.name} in {time.monotonic() - start:.1f} s")
    return f"{target.host}/{target.repository}:{target.tag}@{digest}"


def _environment(pulled: reg.PulledImage, where: str) -> tuple[dict[str, Any], str]:
    notes = pulled.annotations
    if notes.get(ANNOTATION_FORMAT) != REGISTRY_FORMAT:
        fmt = notes.get(ANNOTATION_FORMAT)
        if fmt and fmt.startswith("venvoy-registry/"):
            raise VenvoyError(f"{where} was pushed by a newer venvoy ({fmt[:40]!r}); this venvoy "
                              f"({__version__}) reads {REGISTRY_FORMAT}", "upgrade venvoy")
        raise VenvoyError(f"{where} is not a venvoy environment (no {ANNOTATION_FORMAT} "
                          "annotation)", _NOT_VENVOY)
    try:
        record = json.loads(notes.get(ANNOTATION_ENV, ""))
    except (ValueError, RecursionError):
        record = None
    if not isinstance(record, dict):
        raise DamagedError(f"{where}: the environment record in its annotations is not a JSON "
                           "object", "the image was altered: do not use it")
    lock_text = notes.get(ANNOTATION_LOCK)
    if not isinstance(lock_text, str) or not lock_text:
        raise DamagedError(f"{where}: its annotations carry no lock",
                           "the image was altered: do not use it")
    return record, lock_text


def _file_name(ref: reg.Reference, digest: str) -> str:
    text = f"{ref.host}/{ref.repository}:{ref.tag or 'latest'}@{digest}"
    return "".join(c if c.isalnum() or c in "._-:@" else "_" for c in text)[:240]


def _write_archive(out: Path, record: dict[str, Any], lock_text: str, image: Path,
                   architecture: str) -> None:
    """``out``: an uncompressed venvoy archive (format version 1) of image, record and lock."""
    from venvoy.transport.archive import FORMAT, FORMAT_VERSION

    env_bytes = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    lock_bytes = lock_text.encode()
    digest = hashlib.sha256()
    size = 0
    with open(image, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    members = [
        ("env.json", len(env_bytes), hashlib.sha256(env_bytes).hexdigest()),
        ("pylock.toml", len(lock_bytes), hashlib.sha256(lock_bytes).hexdigest()),
        ("image.tar", size, digest.hexdigest()),
    ]
    root = f"{record.get('name')}-{str(record.get('lock_hash'))[:12]}"
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "venvoy_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "architecture": architecture, "root": root, "environment": record,
        "lock_sha256": record.get("lock_hash"), "image_id": record.get("image_id"),
        "members": [{"path": p, "size": s, "sha256": h} for p, s, h in members],
    }
    manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    with open(out, "xb") as fh:
        tar = TarWriter(fh.write, 0)
        tar.add(f"{root}/manifest.json", len(manifest_bytes), data=manifest_bytes)
        tar.add(f"{root}/env.json", len(env_bytes), data=env_bytes)
        tar.add(f"{root}/pylock.toml", len(lock_bytes), data=lock_bytes)
        with open(image, "rb") as image_fh:
            tar.add(f"{root}/image.tar", size, file=image_fh)
        tar.close()


def pull_env(ref: str, *, store: Store, name: str | None = None, force: bool = False,
             progress: Callable[[str], None] | None = None) -> Environment:
    """Make a named environment from an image ``venvoy push`` wrote; returns it.

    Checked as ``venvoy import`` checks an archive (it goes through the same
    code); an environment of the same name is an error unless ``force``, or
    unless it is the very same environment.
    """
    from venvoy.core.names import check_name
    from venvoy.image.oci import inspect_archive
    from venvoy.transport.archive import import_archive

    say = progress or _quiet
    source = reg.parse_reference(ref)
    if name is not None:
        check_name(name)
    start = time.monotonic()
    tmp_root = store.tmp
    tmp_root.mkdir(parents=True, exist_ok=True)
    clean_stale(tmp_root, prefixes=())
    work = tmp_root / temp_name("pull")
    work.mkdir(mode=0o700)
    try:
        pulled = reg.pull_archive(source, work / "image.tar", environ=store.environ, progress=say)
        where = f"{source}@{pulled.manifest_digest}" if not source.digest else str(source)
        record, lock_text = _environment(pulled, where)
        architecture = str(inspect_archive(pulled.path).config.get("architecture") or "")
        if not isinstance(record.get("name"), str) or not isinstance(record.get("lock_hash"), str):
            raise DamagedError(f"{where}: the environment record has no name or lock hash",
                               "the image was altered: do not use it")
        check_name(record["name"])
        archive = work / f"{_file_name(source, pulled.manifest_digest)}.venvoy.tar"
        _write_archive(archive, record, lock_text, pulled.path, architecture)
        pulled.path.unlink()
        env = import_archive(archive, store=store, name=name, force=force, progress=say)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    say(f"pulled {env.name} from {source} in {time.monotonic() - start:.1f} s")
    return env


__all__ = ["ANNOTATION_ENV", "ANNOTATION_FORMAT", "ANNOTATION_LOCK", "REGISTRY_FORMAT",
           "pull_env", "push_env", "redacted"]
