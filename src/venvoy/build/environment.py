"""Named environments: declare, lock, build once, run on any runtime.

The library behind ``venvoy init/run/list/remove/lock/verify`` and
:class:`venvoy.VenvoyEnvironment`; the CLI and the Python API share it.

How an environment is built (the same for every runtime, and unprivileged):

1. the base image is resolved (official ``python:X.Y-slim`` from a registry,
   or a Debian bootstrap when offline, or the ``--base`` given) and kept as a
   Docker archive in the store;
2. the requirements are locked with uv into ``pylock.toml`` (PEP 751), for the
   environment's Python and the base's platform;
3. the locked wheels are downloaded once on the host into the shared,
   content-addressed wheel cache (the host's CA bundle and proxies apply);
4. the base image is run *with the runtime at hand* and the wheels are
   installed offline into ``/opt/venv``, a directory mounted from the host:
   no network, no root, no fakeroot needed inside;
5. that directory becomes a reproducible layer, added to the base image with
   ``PATH=/opt/venv/bin:...`` and provenance labels, giving the one canonical
   image (a Docker archive) from which each runtime's form is made on demand.

The environment's identity is a hash of (lock, base image ID, recipe version):
the same inputs give the same identity, and ``init`` with nothing changed
returns before touching the network.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from venvoy.build.requirements import read_requirements
from venvoy.core.errors import DamagedError, VenvoyError
from venvoy.core.fs import TMP_PREFIX, clean_stale, container_name, new_path, temp_name
from venvoy.core.names import check_name
from venvoy.core.platform import check_python
from venvoy.core.proc import preexec
from venvoy.core.version import __version__
from venvoy.image.labels import META_PATH, VENV_PATH, image_labels
from venvoy.store.layout import Store, digest_hex
from venvoy.store.records import (
    Environment,
    EnvRecord,
    drop_image_if_unused,
    find,
    image_lock,
    named_images,
    write_env,
)

#: Names in the store's tmp/ that venvoy versions before owner-tagged names
#: left (build dirs, imports, Apptainer's build-temp-*): removed when old.
STALE_PREFIXES = (TMP_PREFIX, "build-", "import-", "build-temp-", "bundle-temp-")

#: Any valid image ID: only its directory is used.
ANY_ID = "sha256:" + "0" * 64

#: Bump when the way images are built changes: it is part of every identity.
RECIPE_VERSION = "1"
#: Name prefix of build containers (Docker, Podman).
BUILD_CONTAINER = "venvoy-build"

#: Runs inside the base image. Fixed text: every value arrives as an argument
#: or a mounted file, never pasted into the script.
BUILD_SCRIPT = r"""
set -eu
python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' > /venvoy/python-version
if /venvoy/bin/uv --version >/dev/null 2>&1; then
    /venvoy/bin/uv venv --quiet --allow-existing --python "$(command -v python3)" /opt/venv
    /venvoy/bin/uv pip install --quiet --python /opt/venv/bin/python --offline --no-index \
        --find-links /venvoy/wheels --require-hashes --no-deps --compile-bytecode \
        --link-mode copy -r /venvoy/requirements.txt
else
    python3 -m venv --without-pip /opt/venv
    python3 -m pip --python /opt/venv/bin/python install --quiet --no-index --no-deps \
        --find-links /venvoy/wheels --require-hashes -r /venvoy/requirements.txt
fi
"""


def _sha256(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def offline_default(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get("VENVOY_OFFLINE", "").lower() in ("1", "true", "yes")



def init(name: str, *, python: str = "3.11", requirements: Iterable[str | os.PathLike[str]] = (),
         pyproject: str | os.PathLike[str] | None = None, base: str | None = None,
         runtime: str | None = None, force: bool = False, offline: bool | None = None,
         upgrade: bool = False, requirements_text: str | None = None,
         lock_text: str | None = None, wheel_dirs: Sequence[Path] = (),
         progress: Callable[[str], None] | None = None,
         download_progress: Callable[[str, int, int], None] | None = None,
         store: Store | None = None) -> tuple[Environment, bool]:
    """Create or rebuild an environment; returns it and whether anything was built.

    ``lock_text`` gives the lock instead of resolving one (importing a wheelhouse);
    ``wheel_dirs`` are searched for the locked files before the index.
    """
    check_name(name)
    check_python(python)
    store = store or Store()
    offline = offline_default(store.environ) if offline is None else offline
    say = progress or (lambda _msg: None)
    req_text = requirements_text if requirements_text is not None else read_requirements(
        requirements, pyproject)
    inputs = _sha256(RECIPE_VERSION, python, req_text, base or "", lock_text or "")
    clean_debris(store)
    with store.lock(f"env-{name}"):
        damaged: dict[str, str | None] = {}
        try:
            previous = find(store, name)
        except DamagedError:
            if not force:
                raise
            previous = None  # --force replaces a damaged record,
            damaged = named_images(store, name)  # and drops the images it named, if unused
        if (previous is not None and not force and not upgrade
                and previous.record.inputs == inputs and previous.archive.is_file()):
            return previous, False  # nothing changed: no network, no runtime
        from venvoy.build.bases import resolve_base
        from venvoy.build.lock import Platform, host_arch, lock_hash, resolve
        from venvoy.runtime.detect import choose_runtime

        rt = choose_runtime(runtime, store.environ).runtime
        say(f"base image for Python {python} ...")
        base_img = resolve_base(python, base, store=store.root, runtime=rt, offline=offline,
                                progress=say)
        platform = Platform(python=python, arch=host_arch(), glibc=base_img.glibc)
        say(f"locking requirements for Python {python} on {platform.uv_platform()}")
        if lock_text is None:
            keep = previous.lock_text if previous is not None and previous.python == python else None
            lock_text = resolve(req_text, platform, upgrade=upgrade, previous=keep)
        lhash = lock_hash(lock_text)
        identity = _sha256(RECIPE_VERSION, lhash, base_img.image_id)
        if (previous is not None and not force and previous.identity == identity
                and previous.archive.is_file()):
            return write_env(store, replace(previous.record, inputs=inputs,
                                            requirements=req_text), lock_text), False
        built_lock: str = lock_text

        def publish(image_id: str, packages: int) -> Environment:
            record = EnvRecord(
                name=name, python=python, requirements=req_text, base=base,
                base_source=base_img.source, base_image_id=base_img.image_id,
                glibc=base_img.glibc, arch=host_arch(), identity=identity, image_id=image_id,
                lock_hash=lhash, inputs=inputs, built_with=rt.name, packages=packages,
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                venvoy_version=__version__, recipe=RECIPE_VERSION)
            return write_env(store, record, built_lock)

        env = _build(store, rt, name, python, base_img, lock_text, lhash, identity,
                     say, download_progress, wheel_dirs, publish)
        old = set(damaged) | ({previous.image_id} if previous is not None else set())
        for old_id in sorted(old - {env.image_id}):
            drop_image_if_unused(store, old_id)
        return env, True



def clean_debris(store: Store) -> int:
    """Remove what a killed init, import, remove or conversion left in the
    store (its owner is gone, see venvoy.core.fs.clean_stale); returns how many."""
    tmp = store.tmp
    # VENVOY_TMPDIR may be a shared directory (/tmp): there only owner-tagged names.
    removed = clean_stale(tmp, prefixes=STALE_PREFIXES if tmp == store.root / "tmp" else ())
    # Beside environments and images only names no environment can have.
    removed += clean_stale(store.envs) + clean_stale(store.image_archive(ANY_ID).parent)
    return removed + clean_stale(store.sif(ANY_ID).parent,
                                 prefixes=(TMP_PREFIX, "build-temp-", "bundle-temp-"))


def _build(store: Store, rt: Any, name: str, python: str, base_img: Any, lock_text: str,
           lhash: str, identity: str, say: Callable[[str], None],
           download_progress: Callable[[str, int, int], None] | None,
           wheel_dirs: Sequence[Path],
           publish: Callable[[str, int], Environment]) -> Environment:
    """Build the image, then publish it: the archive, then ``publish(image_id, packages)``
    (which writes the record), both under the image's lock (see records.image_lock)."""
    from venvoy.build.lock import files_to_fetch, parse, requirements_txt, uv_binary
    from venvoy.build.wheels import WheelCache
    from venvoy.image.oci import add_files_layer, assemble, inspect_archive, layer_from_dir
    from venvoy.runtime.request import Mount, make_request
    from venvoy.store.forms import ensure_native

    packages = parse(lock_text)
    files = files_to_fetch(packages)
    say(f"fetching {len(files)} distribution files (wheel cache: {store.wheels})")
    cache = WheelCache(store.wheels)
    if wheel_dirs:
        seed_wheel_cache(cache, files, wheel_dirs)
    # --offline means "no container registry"; wheels still come from the
    # package index (or straight from the cache when they are there already).
    paths = cache.fetch(files, progress=download_progress)
    build = store.tmp / temp_name(f"build-{name}")  # owned: a kill -9 leaves it to clean_stale
    build.mkdir()
    try:
        build.chmod(0o755)
        (build / "wheels").mkdir()
        cache.link_into(paths, build / "wheels")
        (build / "bin").mkdir()
        with contextlib.suppress(VenvoyError):  # without uv the build script uses pip
            shutil.copy2(uv_binary(), build / "bin" / "uv")
        (build / "requirements.txt").write_text(requirements_txt(packages))
        (build / "venv").mkdir()
        base_ref = ensure_native(store, rt, base_img.archive, base_img.image_id,
                                 f"localhost/venvoy-base:{digest_hex(base_img.image_id)[:12]}", say)
        say(f"installing {len(packages)} packages into {VENV_PATH} with {rt.name} (offline)")
        req = make_request(
            base_ref, ["sh", "-c", BUILD_SCRIPT],
            mounts=[Mount(str(build), "/venvoy"), Mount(str(build / "venv"), VENV_PATH)],
            # Apptainer keeps HOME pointing at the (unmounted) home directory:
            # every cache goes to the build directory instead.
            env={"HOME": "/venvoy/home", "XDG_CACHE_HOME": "/venvoy/cache",
                 "UV_CACHE_DIR": "/venvoy/cache/uv", "SOURCE_DATE_EPOCH": "0", "UV_NO_CACHE": "1",
                 "UV_PYTHON_DOWNLOADS": "never", "PIP_NO_CACHE_DIR": "1",
                 "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            workdir="/", mount_cwd=False, tty=False, environ={})
        # Named after its owner: a container a killed init left (never started, so
        # --rm did not apply) is removed by the next init that finds it.
        rt.remove_stale_containers(BUILD_CONTAINER)
        req.name = container_name(BUILD_CONTAINER)
        log = build / "build.log"
        inv = rt.invocation(req)
        with open(log, "wb") as fh:  # the build container stops when venvoy dies
            proc = subprocess.run(inv.argv, env=inv.env, stdin=subprocess.DEVNULL, stdout=fh,
                                  stderr=subprocess.STDOUT, preexec_fn=preexec(signal.SIGTERM))
        if proc.returncode != 0:
            kept = _keep_log(store, name, log)
            raise VenvoyError(f"installing the packages with {rt.name} failed (exit "
                              f"{proc.returncode}): {_last_line(log)}", f"full log: {kept}")
        got = (build / "python-version").read_text().strip()
        if got != python:
            raise VenvoyError(f"the base image has Python {got}, not {python}",
                              f"use --python {got} or a base image with Python {python}")
        say("writing the image")
        venv_layer = build / "venv-layer.tar"
        layer_from_dir(build / "venv", VENV_PATH.lstrip("/"), venv_layer)
        meta_layer = build / "meta-layer.tar"
        meta = {"identity": identity, "python": python, "lock_hash": lhash,
                "base_image_id": base_img.image_id, "recipe": RECIPE_VERSION}
        add_files_layer({f"{META_PATH}/pylock.toml": lock_text.encode(),
                         f"{META_PATH}/identity.json": json.dumps(meta, sort_keys=True).encode()},
                        meta_layer)
        base_env = dict(e.split("=", 1) for e in
                        inspect_archive(base_img.archive).config.get("config", {}).get("Env") or []
                        if "=" in e)
        path = base_env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out = build / "image.tar"
        info = assemble(
            base_img.archive, [venv_layer, meta_layer], out,
            env={"PATH": f"{VENV_PATH}/bin:{path}", "VIRTUAL_ENV": VENV_PATH},
            labels=image_labels(name=name, python=python, lock_hash=lhash, identity=identity,
                                base_digest=base_img.image_id, created=created,
                                version=__version__),
            repo_tag=f"localhost/venvoy/{name}:{identity[:12]}", created=created)
        return publish_image(store, out, info.image_id,
                             lambda: publish(info.image_id, len(packages)))
    finally:
        shutil.rmtree(build, ignore_errors=True)


def publish_image(store: Store, archive: Path, image_id: str,
                  write_record: Callable[[], Environment]) -> Environment:
    """Move the built ``archive`` to the store as ``image_id``'s, then ``write_record()``:
    both under the image's lock, so a ``remove`` of another environment of the same
    image cannot delete it before the record naming it exists (see records.image_lock)."""
    with image_lock(store, image_id):
        with new_path(store.image_archive(image_id), mode=0o644) as tmp:
            shutil.move(archive, tmp)  # a rename, or a copy when VENVOY_TMPDIR is elsewhere
        return write_record()


def seed_wheel_cache(cache: Any, files: Sequence[Any], dirs: Sequence[Path]) -> int:
    """Put locked files found in ``dirs`` (a wheelhouse) into the wheel cache,
    each checked against the lock's sha256 first; returns how many were added."""
    added = 0
    for f in files:
        dest = cache.path_for(f)
        if dest.exists():
            continue
        for d in dirs:
            src = Path(d) / f.filename
            if not src.is_file():
                continue
            h = hashlib.sha256()
            with open(src, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            if h.hexdigest() != f.sha256:
                raise VenvoyError(f"{src} does not match the lock's sha256 for {f.filename}",
                                  "the wheelhouse is damaged or was altered")
            with new_path(dest, mode=0o644) as tmp:
                shutil.copyfile(src, tmp)
            added += 1
            break
    return added


def _last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["(no output)"])[-1][:300]


def _keep_log(store: Store, name: str, log: Path) -> Path:
    logs = store.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    kept = logs / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with open(log, "rb") as src, new_path(kept) as tmp, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)  # renamed over whatever is there: no link is followed
    return kept


