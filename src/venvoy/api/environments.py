"""The library's operations on named environments: what the CLI and
:class:`venvoy.VenvoyEnvironment` both call (one code path)."""

from __future__ import annotations

import errno
import functools
import json
import os
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from venvoy.build import environment as building
from venvoy.build.requirements import normalize
from venvoy.core.errors import DamagedError, ImageNotFound, VenvoyError
from venvoy.store import records
from venvoy.store.layout import Store
from venvoy.store.records import Environment, safe_text
from venvoy.transport import dispatch

if TYPE_CHECKING:
    from venvoy.runtime.base import Runtime

P = ParamSpec("P")
R = TypeVar("R")

#: OS errors that mean "the store (or the output) cannot be written here":
#: a read-only or foreign store, a full disk. One line, never a traceback.
_ACCESS_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})


def store_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn a permission, read-only or full-disk error into one clear VenvoyError."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except OSError as exc:
            if exc.errno not in _ACCESS_ERRNOS:
                raise
            where = safe_text(str(exc.filename)) if exc.filename else "the store"
            raise VenvoyError(f"cannot write {where}: {exc.strerror or exc}",
                              "venvoy needs a store it can write (VENVOY_HOME) and free space; "
                              "fix the permissions or choose another directory") from None

    return wrapper


init = store_errors(building.init)
get = store_errors(records.get)
list_envs = store_errors(records.list_envs)
remove = store_errors(records.remove)
import_any = store_errors(dispatch.import_any)

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



@store_errors
def prepare_run(name: str, argv: Sequence[str], *, runtime: str | Runtime | None = None,
                mounts: Iterable[str] = (), env: Iterable[str] | Mapping[str, str] = (),
                env_pass: Iterable[str] = (), workdir: str | None = None, gpu: str | None = None,
                tty: bool | None = None, progress: Callable[[str], None] | None = None,
                store: Store | None = None) -> tuple[Any, Any, Environment]:
    """The runtime and request for running ``argv`` in environment ``name``.

    ``runtime``: a name (or None: VENVOY_RUNTIME, the config, detection), or a
    runtime already chosen (the CLI's): it is used as is, never chosen again.
    The request is checked before the runtime's form of the image is made.
    """
    from venvoy.runtime.base import Runtime
    from venvoy.runtime.detect import choose_runtime
    from venvoy.runtime.request import make_request
    from venvoy.store.forms import ensure_native

    store = store or Store()
    environment = get(name, store)
    req = make_request("environment", argv, mounts=mounts, env=env, env_pass=env_pass,
                       workdir=workdir, gpu=gpu, tty=tty)
    rt = runtime if isinstance(runtime, Runtime) else choose_runtime(runtime, store.environ).runtime
    req.image = ensure_native(store, rt, environment.archive, environment.image_id,
                              environment.tag, progress)
    return rt, req, environment


@store_errors
def run(name: str, argv: Sequence[str], *, exec_: bool = False, **kw: Any) -> int:
    """Run ``argv`` in the environment; returns its exit status (or execs, for the CLI)."""
    from venvoy.runtime import runner
    from venvoy.store.forms import ensure_native, forget_native

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


@store_errors
def verify(name: str, *, runtime: str | None = None, store: Store | None = None) -> dict[str, Any]:
    """Check inside the container that what is installed is what the lock says."""
    from venvoy.build.lock import parse

    rt, req, environment = prepare_run(name, ["python", "-I", "-c", VERIFY_SCRIPT],
                                       runtime=runtime, tty=False, store=store)
    inv = rt.invocation(req)
    proc = subprocess.run(inv.argv, env=inv.env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, errors="replace")
    if proc.returncode != 0:
        raise VenvoyError(f"verification could not run in {name} with {rt.name}: "
                          f"{safe_text((proc.stderr.strip().splitlines() or ['?'])[-1])}")
    try:
        found = json.loads(proc.stdout)
        # What the image says is shown, never obeyed: names a hostile image gives are
        # made printable (no escape codes reach the terminal through the report).
        installed = {safe_text(str(k)): safe_text(str(v)) for k, v in found["dists"].items()}
        modified = [(safe_text(str(p)), safe_text(str(f))) for p, f in found["modified"]]
        missing = [(safe_text(str(p)), safe_text(str(f))) for p, f in found["missing"]]
        checked = int(found["checked"])
    except (ValueError, TypeError, KeyError, AttributeError):
        raise DamagedError(f"verification in {name} with {rt.name} printed no report",
                           f"the image may be damaged: `venvoy init {name} --force`") from None
    locked = {normalize(p.name): p.version for p in parse(environment.lock_text)}
    report = {
        "name": name, "runtime": rt.name, "identity": environment.identity,
        "missing_packages": sorted(set(locked) - set(installed)),
        "unexpected_packages": sorted(set(installed) - set(locked)),
        "version_mismatches": [{"package": n, "locked": v, "installed": installed[n]}
                               for n, v in sorted(locked.items())
                               if n in installed and installed[n] != v],
        "modified_files": [{"package": p, "path": f} for p, f in modified],
        "missing_files": [{"package": p, "path": f} for p, f in missing],
        "checked_files": checked, "packages": len(installed),
    }
    report["ok"] = not any(report[k] for k in ("missing_packages", "unexpected_packages",
                                               "version_mismatches", "modified_files",
                                               "missing_files"))
    return report




@store_errors
def lock(name: str, *, upgrade: bool = False, runtime: str | None = None,
         offline: bool | None = None, progress: Callable[[str], None] | None = None,
         download_progress: Callable[[str, int, int], None] | None = None,
         store: Store | None = None) -> tuple[Environment, bool]:
    """Re-lock ``name`` from its recorded requirements (keeping pins unless
    ``upgrade``) and rebuild when the lock changed; returns it and whether it was rebuilt."""
    store = store or Store()
    old = get(name, store)
    return init(name, python=old.python, requirements_text=old.requirements, base=old.base,
                runtime=runtime, offline=offline, upgrade=upgrade, progress=progress,
                download_progress=download_progress, store=store)


@store_errors
def export(name: str, fmt: str = "archive", output: str | os.PathLike[str] | None = None, *,
           with_sif: bool = False, progress: Callable[[str], None] | None = None,
           download_progress: Callable[[str, int, int], None] | None = None,
           store: Store | None = None) -> Path:
    """Write environment ``name`` in one of :data:`venvoy.transport.FORMATS`; returns the path."""
    from venvoy.transport import export_format

    return export_format(get(name, store or Store()), fmt, Path(output) if output else None,
                         with_sif=with_sif, progress=progress, download_progress=download_progress)


__all__ = ["VERIFY_SCRIPT", "Environment", "export", "get", "import_any", "init", "list_envs",
           "lock", "prepare_run", "remove", "run", "verify"]
