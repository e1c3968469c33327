"""Which runtimes are here, which one to use, and why.

Finding runtimes never starts them: it looks on PATH and checks cheap facts
(a daemon socket, subordinate id ranges, user namespaces), so choosing a
runtime costs microseconds on the ``run`` path. Only ``runtime-info`` asks the
programs for their versions, in parallel, and caches the answers keyed by the
binary's path, size and modification time so a cache can never outlive a
change of PATH or an upgrade.
"""

from __future__ import annotations

import os

from venvoy.core.errors import BadRequest, RuntimeNotFound
from venvoy.runtime import RUNTIMES, Runtime, adapter_class
from venvoy.runtime.base import which
from venvoy.runtime.hpc import HpcSignal, detect_hpc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

PRIORITY_HPC = ("apptainer", "singularity", "charliecloud", "podman", "docker", "shifter", "enroot")
PRIORITY_DESKTOP = ("docker", "podman", "apptainer", "singularity", "charliecloud", "shifter",
                    "enroot")
ALIASES = {"ch-run": "charliecloud", "ch": "charliecloud", "sif": "apptainer"}


class Found:
    """One runtime on PATH and whether it can be used."""

    FIELDS = ("name", "path", "usable", "problem", "rootless", "tested", "version")

    def __init__(self, name: str, path: str, usable: bool, problem: str | None, rootless: bool,
                 tested: bool, version: str | None = None) -> None:
        self.name = name
        self.path = path
        self.usable = usable
        self.problem = problem
        self.rootless = rootless
        self.tested = tested
        self.version = version

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.FIELDS}

    def __repr__(self) -> str:
        return f"Found({self.as_dict()!r})"


class Choice:
    """The runtime to use, and the sentence that explains the choice."""

    def __init__(self, runtime: Runtime, reason: str, hpc: HpcSignal) -> None:
        self.runtime = runtime
        self.reason = reason
        self.hpc = hpc


def normalize_name(name: str) -> str:
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in RUNTIMES:
        raise BadRequest(f"unknown runtime {name!r}", "choose one of: " + ", ".join(RUNTIMES))
    return key


def _which(binary: str, env: Mapping[str, str]) -> str | None:
    return which(binary, env.get("PATH", os.defpath))


def get_runtime(name: str, environ: Mapping[str, str] | None = None, *, check: bool = True) -> Runtime:
    """The adapter for a named runtime; a clear error if it is missing or unusable."""
    env = os.environ if environ is None else environ
    entry = RUNTIMES[normalize_name(name)]
    path = _which(entry.binary, env)
    if path is None:
        raise RuntimeNotFound(
            f"{entry.name} is not installed here (no `{entry.binary}` on PATH)",
            "install it or choose another with --runtime; `venvoy runtime-info` lists what is here",
        )
    runtime = adapter_class(entry.name)(path, env)
    if check:
        problem = runtime.problem()
        if problem:
            raise RuntimeNotFound(f"{entry.name} cannot be used: {problem}")
    return runtime


def requested_runtime(requested: str | None, env: Mapping[str, str]) -> tuple[str, str] | None:
    """The explicitly requested runtime and where the request came from."""
    if requested is not None:  # `--runtime ''` is a mistake, refused by get_runtime
        return requested, "--runtime"
    if env.get("VENVOY_RUNTIME"):
        return env["VENVOY_RUNTIME"], "VENVOY_RUNTIME"
    from venvoy.core.config import load_config
    from venvoy.core.paths import config_file

    configured = load_config(env).get("runtime")
    if configured:
        return str(configured), f"the config file {config_file(env)}"
    return None


def choose_runtime(requested: str | None = None, environ: Mapping[str, str] | None = None) -> Choice:
    """Pick the runtime: --runtime, VENVOY_RUNTIME, config file, then detection."""
    env = os.environ if environ is None else environ
    hpc = detect_hpc(env)
    explicit = requested_runtime(requested, env)
    if explicit:
        name, source = explicit
        return Choice(get_runtime(name, env), f"requested by {source}", hpc)
    order = PRIORITY_HPC if hpc else PRIORITY_DESKTOP
    skipped = []
    for name in order:
        entry = RUNTIMES[name]
        path = _which(entry.binary, env)
        if path is None:
            continue
        runtime = adapter_class(name)(path, env)
        problem = runtime.problem()
        if problem:
            skipped.append(f"{name}: {problem}")
            continue
        where = "HPC" if hpc else "workstation"
        return Choice(runtime, f"first usable runtime in the {where} order ({', '.join(order)})", hpc)
    detail = f" ({'; '.join(skipped)})" if skipped else ""
    raise RuntimeNotFound(
        f"no usable container runtime found{detail}",
        "install Apptainer (HPC) or Podman/Docker (workstation), or load your site's module",
    )


def find_runtimes(environ: Mapping[str, str] | None = None) -> list[Found]:
    """Every known runtime present on PATH, usable or not (no subprocesses)."""
    env = os.environ if environ is None else environ
    found = []
    for entry in RUNTIMES.values():
        path = _which(entry.binary, env)
        if path is None:
            continue
        runtime = adapter_class(entry.name)(path, env)
        problem = runtime.problem()
        found.append(Found(entry.name, path, problem is None, problem, runtime.rootless,
                           entry.tested))
    return found


# -- versions (runtime-info only) ------------------------------------------------

def _cache_key(runtime: Runtime) -> str:
    real = os.path.realpath(runtime.path)
    st = os.stat(real)
    key = f"{runtime.name}:{real}:{st.st_size}:{st.st_mtime_ns}"
    sock = getattr(runtime, "socket_path", None)
    if callable(sock) and sock():  # a daemon's version changes when it restarts
        try:
            key += f":{os.stat(sock()).st_mtime_ns}"
        except OSError:
            key += ":nosock"
    return key


def _probe_version(runtime: Runtime, timeout: float = 10) -> str | None:
    import subprocess

    try:
        proc = subprocess.run(runtime.version_argv(), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=dict(runtime.environ))
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0 or not proc.stdout.strip():
        if runtime.version_argv()[1:] != ["--version"]:
            # e.g. docker's server version when the daemon is down: fall back to the client's
            try:
                proc = subprocess.run([runtime.path, "--version"], capture_output=True, text=True,
                                      timeout=timeout, stdin=subprocess.DEVNULL)
            except (OSError, subprocess.TimeoutExpired):
                return None
        if proc.returncode != 0:
            return None
    return runtime.parse_version(proc.stdout + proc.stderr)


def versions(runtimes: list[Runtime], environ: Mapping[str, str] | None = None,
             timeout: float = 10) -> dict[str, str | None]:
    """Versions of the given runtimes, cached per binary, probed in parallel
    (each probe given ``timeout`` seconds; one that says nothing is not cached)."""
    import json
    from pathlib import Path

    from venvoy.core.paths import runtime_versions_file

    # Inside the store's cache (an older venvoy's file elsewhere is simply not read: re-probed).
    cache_file = Path(runtime_versions_file(environ))
    try:
        cache: dict[str, str] = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    keys = {rt.name: _cache_key(rt) for rt in runtimes}
    todo = [rt for rt in runtimes if keys[rt.name] not in cache]
    if todo:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(todo)) as pool:
            results = list(pool.map(lambda rt: _probe_version(rt, timeout), todo))
        changed = False
        for rt, ver in zip(todo, results, strict=True):
            if ver is not None:
                cache[keys[rt.name]] = ver
                changed = True
        if changed:
            _write_json_atomic(cache_file, cache)
    return {rt.name: cache.get(keys[rt.name]) for rt in runtimes}


def _write_json_atomic(path: Any, data: Any) -> None:
    import contextlib
    import json

    from venvoy.core.fs import atomic_write

    with contextlib.suppress(OSError):  # a cache that cannot be written only costs time
        atomic_write(path, json.dumps(data, indent=1, sort_keys=True))


def runtime_info(requested: str | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Everything `venvoy runtime-info` reports, as plain data."""
    env = os.environ if environ is None else environ
    found = find_runtimes(env)
    adapters = [adapter_class(f.name)(f.path, env) for f in found]
    vers = versions(adapters, env)
    for f in found:
        f.version = vers.get(f.name)
    hpc = detect_hpc(env)
    info: dict[str, Any] = {"runtime": None, "version": None, "path": None, "reason": None,
                            "rootless": None, "is_hpc": hpc.is_hpc, "hpc_signal": hpc.signal,
                            "error": None}
    try:
        choice = choose_runtime(requested, env)
    except (RuntimeNotFound, BadRequest) as exc:
        info["error"] = str(exc)
    else:
        rt = choice.runtime
        info.update(runtime=rt.name, path=rt.path, reason=choice.reason, rootless=rt.rootless,
                    version=vers.get(rt.name) or versions([rt], env).get(rt.name))
    info["runtimes"] = [f.as_dict() for f in found]
    info["sif_compression"] = sif_compression_info(adapters)
    return info


def sif_compression_info(adapters: list[Runtime]) -> dict[str, str] | None:
    """How venvoy makes SIFs here (for the first Apptainer-like runtime found), or None."""
    from venvoy.runtime.apptainer import Apptainer

    for rt in adapters:
        if isinstance(rt, Apptainer):
            compression, why = rt.sif_compression()
            return {"compression": compression or "apptainer build", "why": why}
    return None
