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
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import BadRequest, ImageNotFound, VenvoyError
from .fastpath import IMAGE_FILE, env_tag
from .names import check_name
from .store import Store, digest_hex

#: Bump when the way images are built changes: it is part of every identity.
RECIPE_VERSION = "1"
VENV_PATH = "/opt/venv"
META_PATH = "opt/venvoy"
LABEL = "org.venvoy"

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

#: Runs inside the environment: every installed distribution, and every file
#: its RECORD lists with a hash, checked against the hash. Prints JSON.
VERIFY_SCRIPT = r"""
import base64, csv, glob, hashlib, json, os, re, sys
site = glob.glob(os.path.join(sys.prefix, "lib", "python*", "site-packages"))[0]
out = {"dists": {}, "modified": [], "missing": [], "checked": 0}
for info in sorted(glob.glob(os.path.join(site, "*.dist-info"))):
    meta = {}
    with open(os.path.join(info, "METADATA"), encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                break
            key, _, value = line.partition(":")
            meta.setdefault(key.strip().lower(), value.strip())
    name = re.sub(r"[-_.]+", "-", meta.get("name", "")).lower()
    out["dists"][name] = meta.get("version", "")
    record = os.path.join(info, "RECORD")
    if not os.path.exists(record):
        out["missing"].append([name, os.path.relpath(record, site)])
        continue
    with open(record, newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            if len(row) < 2 or not row[1]:
                continue
            path = os.path.normpath(os.path.join(site, row[0]))
            algo, _, want = row[1].partition("=")
            try:
                with open(path, "rb") as f:
                    got = hashlib.new(algo, f.read()).digest()
            except FileNotFoundError:
                out["missing"].append([name, row[0]])
                continue
            out["checked"] += 1
            if base64.urlsafe_b64encode(got).rstrip(b"=").decode() != want:
                out["modified"].append([name, row[0]])
json.dump(out, sys.stdout)
"""


def _normalize(name: str) -> str:
    out = name.lower()
    for ch in "_.":
        out = out.replace(ch, "-")
    while "--" in out:
        out = out.replace("--", "-")
    return out


def _sha256(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def offline_default(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get("VENVOY_OFFLINE", "").lower() in ("1", "true", "yes")


def check_python(python: str) -> str:
    from .bases import KNOWN_PYTHONS

    if python not in KNOWN_PYTHONS:
        raise BadRequest(f"unsupported Python version {python!r}",
                         f"choose one of {', '.join(KNOWN_PYTHONS)}")
    return python


def read_requirements(files: Iterable[str | os.PathLike[str]] = (),
                      pyproject: str | os.PathLike[str] | None = None) -> str:
    """The requirement lines of the given files, concatenated and checked."""
    lines: list[str] = []
    for f in files:
        path = Path(f)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise BadRequest(f"requirements file {str(path)!r} does not exist",
                             "check the path given to --requirements") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise BadRequest(f"cannot read requirements file {path}: {exc}") from None
        for number, line in enumerate(text.splitlines(), 1):
            stripped = line.split(" #")[0].strip()
            if not stripped or stripped.startswith("#"):
                continue
            if stripped.startswith("-"):
                raise BadRequest(f"{path}:{number}: options such as {stripped.split()[0]} are not "
                                 "supported in requirements", "list the requirements themselves")
            lines.append(stripped)
    if pyproject is not None:
        lines += _pyproject_dependencies(Path(pyproject))
    return "".join(f"{line}\n" for line in lines)


def _pyproject_dependencies(path: Path) -> list[str]:
    from .config import parse_toml

    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BadRequest(f"pyproject file {str(path)!r} does not exist", "check the path") from None
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{path} is not valid TOML: {exc}", "fix the file") from None
    data = parse_toml(text, str(path), "fix the file", BadRequest)
    deps = data.get("project", {}).get("dependencies")
    if not isinstance(deps, list):
        raise BadRequest(f"{path} has no [project] dependencies list", "add one or use --requirements")
    return [str(d) for d in deps]


class Environment:
    """An environment as recorded in the store (``env.json``)."""

    def __init__(self, store: Store, data: dict[str, Any]) -> None:
        self.store = store
        self.data = data

    name = property(lambda self: str(self.data["name"]))
    python = property(lambda self: str(self.data["python"]))
    identity = property(lambda self: str(self.data["identity"]))
    image_id = property(lambda self: str(self.data["image_id"]))
    lock_hash = property(lambda self: str(self.data["lock_hash"]))

    @property
    def dir(self) -> Path:
        return self.store.env_dir(self.name)

    @property
    def archive(self) -> Path:
        return self.store.image_archive(self.image_id)

    @property
    def lock_text(self) -> str:
        return (self.dir / "pylock.toml").read_text()

    @property
    def tag(self) -> str:
        return env_tag(self.name, self.identity)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.data)


def get(name: str, store: Store | None = None) -> Environment:
    """The environment called ``name``; one clear error if there is none."""
    store = store or Store()
    path = store.env_dir(name) / "env.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise VenvoyError(f"no environment named {name!r}",
                          f"create it with `venvoy init {name}`; `venvoy list` shows what exists"
                          ) from None
    return Environment(store, data)


def list_envs(store: Store | None = None) -> list[dict[str, Any]]:
    """Every environment with what `venvoy list` shows."""
    store = store or Store()
    out: list[dict[str, Any]] = []
    if not store.envs.is_dir():
        return out
    for d in sorted(store.envs.iterdir()):
        if d.name.startswith(".") or not (d / "env.json").is_file():
            continue
        env = Environment(store, json.loads((d / "env.json").read_text()))
        forms = ["archive"] if env.archive.is_file() else []
        if store.sif(env.image_id).is_file():
            forms.append("sif")
        if store.ch_dir(env.image_id).is_dir():
            forms.append("charliecloud")
        loaded = store.root / "cache" / "loaded"
        if loaded.is_dir():
            prefix = digest_hex(env.image_id)[:16]
            forms += sorted({p.name.split("-")[0] + ("-rootless" if "-rootless-" in p.name else "")
                             for p in loaded.iterdir() if prefix in p.name})
        out.append({
            "name": env.name, "python": env.python, "forms": forms,
            "size": env.archive.stat().st_size if env.archive.is_file() else 0,
            "lock_hash": env.lock_hash, "identity": env.identity, "created": env.data["created"],
            "packages": env.data.get("packages", 0),
        })
    return out


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
    with store.lock(f"env-{name}"):
        previous = _existing(store, name)
        if (previous is not None and not force and not upgrade
                and previous.data.get("inputs") == inputs and previous.archive.is_file()):
            return previous, False  # nothing changed: no network, no runtime
        from .bases import resolve_base
        from .detect import choose_runtime
        from .lock import Platform, host_arch, lock_hash, resolve

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
            write_env(store, previous.data | {"inputs": inputs, "requirements": req_text},
                       lock_text, req_text)
            return get(name, store), False
        image_id, packages = _build(store, rt, name, python, base_img, lock_text, lhash, identity,
                                    say, download_progress, wheel_dirs)
        data = {
            "name": name, "python": python, "requirements": req_text, "base": base,
            "base_source": base_img.source, "base_image_id": base_img.image_id,
            "glibc": base_img.glibc, "arch": host_arch(), "identity": identity, "image_id": image_id,
            "lock_hash": lhash, "inputs": inputs, "built_with": rt.name, "packages": packages,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "venvoy_version": __version__, "recipe": RECIPE_VERSION,
        }
        write_env(store, data, lock_text, req_text)
        if previous is not None and previous.image_id != image_id:
            _drop_image_if_unused(store, previous.image_id)
        return get(name, store), True


def _existing(store: Store, name: str) -> Environment | None:
    try:
        return get(name, store)
    except VenvoyError:
        return None


def write_env(store: Store, data: dict[str, Any], lock_text: str, req_text: str) -> None:
    """Write the environment's directory as a whole: all of it or none of it."""
    final = store.env_dir(data["name"])
    with store.new_path(final, directory=True) as tmp:
        (tmp / "pylock.toml").write_text(lock_text)
        (tmp / "requirements.in").write_text(req_text)
        (tmp / "env.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        (tmp / IMAGE_FILE).write_text(f"{data['image_id']} {data['identity']}\n")


def _build(store: Store, rt: Any, name: str, python: str, base_img: Any, lock_text: str,
           lhash: str, identity: str, say: Callable[[str], None],
           download_progress: Callable[[str, int, int], None] | None,
           wheel_dirs: Sequence[Path] = ()) -> tuple[str, int]:
    from .image import add_files_layer, assemble, inspect_archive, layer_from_dir
    from .lock import files_to_fetch, parse, requirements_txt, uv_binary
    from .native import ensure_native
    from .request import Mount, make_request
    from .wheels import WheelCache

    packages = parse(lock_text)
    files = files_to_fetch(packages)
    say(f"fetching {len(files)} distribution files (wheel cache: {store.wheels})")
    cache = WheelCache(store.wheels)
    if wheel_dirs:
        seed_wheel_cache(cache, files, wheel_dirs)
    # --offline means "no container registry"; wheels still come from the
    # package index (or straight from the cache when they are there already).
    paths = cache.fetch(files, progress=download_progress)
    build = Path(tempfile.mkdtemp(prefix=f"build-{name}-", dir=store.tmp))
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
        log = build / "build.log"
        inv = rt.invocation(req)
        with open(log, "wb") as fh:
            proc = subprocess.run(inv.argv, env=inv.env, stdin=subprocess.DEVNULL, stdout=fh,
                                  stderr=subprocess.STDOUT)
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
            labels={f"{LABEL}.version": __version__, f"{LABEL}.lock-hash": lhash,
                    f"{LABEL}.base-digest": base_img.image_id, f"{LABEL}.python": python,
                    f"{LABEL}.build-time": created, f"{LABEL}.identity": identity,
                    f"{LABEL}.name": name},
            repo_tag=f"localhost/venvoy/{name}:{identity[:12]}", created=created)
        final = store.image_archive(info.image_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(out, final)
        final.chmod(0o644)
        return info.image_id, len(packages)
    finally:
        shutil.rmtree(build, ignore_errors=True)


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
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
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
    shutil.copy(log, kept)
    return kept


def _image_in_use(store: Store, image_id: str) -> bool:
    if not store.envs.is_dir():
        return False
    for d in store.envs.iterdir():
        f = d / "env.json"
        if f.is_file() and json.loads(f.read_text()).get("image_id") == image_id:
            return True
    return False


def _drop_image_if_unused(store: Store, image_id: str) -> int:
    """Delete the canonical archive and cached forms of an image no env uses."""
    if _image_in_use(store, image_id):
        return 0
    freed = 0
    for path in (store.image_archive(image_id), store.sif(image_id)):
        if path.is_file():
            freed += path.stat().st_size
            path.unlink()
    ch = store.ch_dir(image_id)
    if ch.is_dir():
        freed += sum(f.stat().st_size for f in ch.rglob("*") if f.is_file() and not f.is_symlink())
        shutil.rmtree(ch, ignore_errors=True)
    return freed


def remove(name: str, store: Store | None = None) -> int:
    """Delete an environment and whatever only it used; return the bytes freed."""
    store = store or Store()
    env = get(name, store)
    with store.lock(f"env-{name}"):
        freed = sum(f.stat().st_size for f in env.dir.iterdir() if f.is_file())
        shutil.rmtree(env.dir)
        freed += _drop_image_if_unused(store, env.image_id)
        loaded = store.root / "cache" / "loaded"
        if loaded.is_dir():
            prefix = digest_hex(env.image_id)[:16]
            for marker in loaded.iterdir():
                if prefix in marker.name:
                    _remove_loaded_image(marker.name.split("-")[0], env.tag)
                    marker.unlink(missing_ok=True)
    return freed


def _remove_loaded_image(runtime_name: str, tag: str) -> None:
    from .detect import get_runtime

    try:
        rt = get_runtime(runtime_name)
    except VenvoyError:
        return
    subprocess.run([rt.path, "rmi", tag], capture_output=True, stdin=subprocess.DEVNULL)


def prepare_run(name: str, argv: Sequence[str], *, runtime: str | None = None,
                mounts: Iterable[str] = (), env: Iterable[str] | Mapping[str, str] = (),
                env_pass: Iterable[str] = (), workdir: str | None = None, gpu: str | None = None,
                tty: bool | None = None, progress: Callable[[str], None] | None = None,
                store: Store | None = None) -> tuple[Any, Any, Environment]:
    """The runtime and request for running ``argv`` in environment ``name``."""
    from .detect import choose_runtime
    from .native import ensure_native
    from .request import make_request

    store = store or Store()
    environment = get(name, store)
    rt = choose_runtime(runtime, store.environ).runtime
    image = ensure_native(store, rt, environment.archive, environment.image_id, environment.tag,
                          progress)
    req = make_request(image, argv, mounts=mounts, env=env, env_pass=env_pass, workdir=workdir,
                       gpu=gpu, tty=tty)
    return rt, req, environment


def run(name: str, argv: Sequence[str], *, exec_: bool = False, **kw: Any) -> int:
    """Run ``argv`` in the environment; returns its exit status (or execs, for the CLI)."""
    from . import runner
    from .native import ensure_native, forget_native

    rt, req, environment = prepare_run(name, argv, **kw)
    try:
        if exec_:
            runner.exec_run(rt, req)
        return runner.run(rt, req)
    except ImageNotFound:
        # Removed from Docker/Podman behind our back: load it again, once.
        forget_native(environment.store, rt, environment.image_id, environment.tag)
        ensure_native(environment.store, rt, environment.archive, environment.image_id,
                      environment.tag, kw.get("progress"))
        if exec_:
            runner.exec_run(rt, req)
        return runner.run(rt, req)


def verify(name: str, *, runtime: str | None = None, store: Store | None = None) -> dict[str, Any]:
    """Check inside the container that what is installed is what the lock says."""
    from .lock import parse

    rt, req, environment = prepare_run(name, ["python", "-I", "-c", VERIFY_SCRIPT],
                                       runtime=runtime, tty=False, store=store)
    inv = rt.invocation(req)
    proc = subprocess.run(inv.argv, env=inv.env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise VenvoyError(f"verification could not run in {name} with {rt.name}: "
                          f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    found = json.loads(proc.stdout)
    locked = {_normalize(p.name): p.version for p in parse(environment.lock_text)}
    installed: dict[str, str] = found["dists"]
    report = {
        "name": name, "runtime": rt.name, "identity": environment.identity,
        "missing_packages": sorted(set(locked) - set(installed)),
        "unexpected_packages": sorted(set(installed) - set(locked)),
        "version_mismatches": [{"package": n, "locked": v, "installed": installed[n]}
                               for n, v in sorted(locked.items())
                               if n in installed and installed[n] != v],
        "modified_files": [{"package": p, "path": f} for p, f in found["modified"]],
        "missing_files": [{"package": p, "path": f} for p, f in found["missing"]],
        "checked_files": found["checked"], "packages": len(installed),
    }
    report["ok"] = not any(report[k] for k in ("missing_packages", "unexpected_packages",
                                               "version_mismatches", "modified_files",
                                               "missing_files"))
    return report


def import_any(path: str | os.PathLike[str], *, name: str | None = None, runtime: str | None = None,
               force: bool = False, offline: bool | None = None, base: str | None = None,
               progress: Callable[[str], None] | None = None,
               store: Store | None = None) -> Environment:
    """Import an archive or a wheelhouse, recognised by content, not by name.

    With ``runtime``, that runtime's form of the image is made right away (e.g.
    the SIF), so the first run on a compute node does not pay for it.
    """
    from .archive import import_archive, sniff_format

    store = store or Store()
    src = Path(path)
    if not src.is_file():
        raise BadRequest(f"{str(src)!r} does not exist or is not a file", "check the path")
    kind = sniff_format(src)
    if kind == "archive":
        env = import_archive(src, store=store, name=name, force=force, progress=progress)
        if runtime is not None:
            from .detect import get_runtime
            from .native import ensure_native

            ensure_native(store, get_runtime(runtime, store.environ), env.archive, env.image_id,
                          env.tag, progress)
        return env
    if kind == "wheelhouse":
        from .exports import import_wheelhouse

        return import_wheelhouse(src, store=store, name=name, runtime=runtime, force=force,
                                 offline=offline, base=base, progress=progress)
    # Not recognised: let the archive reader say precisely why (wrong
    # compression, no zstd support, not a tar, no manifest, ...).
    return import_archive(src, store=store, name=name, force=force, progress=progress)
