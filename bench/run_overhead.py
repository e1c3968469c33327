#!/usr/bin/env python3
"""How much time does venvoy add to starting a container? Measured, not asserted.

For each runtime, ``venvoy run --image IMG -- python3 -c pass`` and the raw
runtime command venvoy would run (taken from ``venvoy run --dry-run``) are
started alternately, N times each, in the same process, so both see the same
machine state. Printed: the median of each, their difference in ms and their
ratio. Also the wall time of ``venvoy runtime-info`` (version cache warm and
cold) and of ``python3 -c pass`` on the host, the floor for any Python tool.

Run as root after scripts/install.sh --dev:  .venv/bin/python bench/run_overhead.py [-n 20]
Apptainer, Singularity, Charliecloud and rootless Podman run as the
unprivileged test user, as on a cluster; Docker and rootful Podman as root.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from integration.conftest import (  # noqa: E402
    BASE_ARCHIVE,
    TARGETS,
    USER_PYTHON,
    Target,
    Venvoy,
    _load,
)

BENCHED = ["docker", "podman-rootful", "podman-rootless", "apptainer", "singularity",
           "charliecloud"]


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench: {shlex.join(argv)} failed: {proc.stderr.decode()[-500:]}")
    return elapsed * 1000


def raw_argv(venvoy: Venvoy, target: Target, cwd: Path) -> tuple[list[str], dict[str, str]]:
    """The runtime command venvoy runs, as the same user, from `venvoy run --dry-run`."""
    argv, env = venvoy.argv(target, ["run", "--dry-run", "--runtime", target.runtime,
                                     "--image", target.image, "--", "python3", "-c", "pass"])
    out = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=True)
    cmd = shlex.split(out.stdout)
    if target.as_user:  # the same runuser/env prefix that starts venvoy
        return argv[: argv.index(USER_PYTHON)] + cmd, env
    return cmd, env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=20, help="runs of each command (default 20)")
    ap.add_argument("--only", nargs="*", help="targets to bench (default: all)")
    args = ap.parse_args()
    if os.geteuid() != 0 or not BASE_ARCHIVE.exists():
        raise SystemExit("bench: run as root after scripts/provision.sh")
    root = Path(tempfile.mkdtemp(prefix="venvoy-bench-", dir="/tmp"))
    root.chmod(0o755)
    try:
        # One interpreter for every target (Debian's python3, in the test venv),
        # so differences between rows are the runtimes', not the Pythons'.
        venvoy = Venvoy(root, root_python=USER_PYTHON)
        rows = []
        for t in TARGETS:
            if t.id not in (args.only or BENCHED):
                continue
            target = Target(t.id, t.runtime, t.as_user, t.group, _load(venvoy, t))
            cwd = root / f"cwd-{t.id}"
            cwd.mkdir()
            cwd.chmod(0o755)
            if t.as_user:
                os.chown(cwd, pwd.getpwnam("venvoytest").pw_uid, -1)
            v_argv, v_env = venvoy.argv(target, ["run", "--runtime", target.runtime, "--image",
                                                 target.image, "--", "python3", "-c", "pass"])
            r_argv, r_env = raw_argv(venvoy, target, cwd)
            timed(v_argv, v_env, cwd), timed(r_argv, r_env, cwd)  # warm caches
            v, r = [], []
            for _ in range(args.n):
                r.append(timed(r_argv, r_env, cwd))
                v.append(timed(v_argv, v_env, cwd))
            rows.append((t.id, statistics.median(r), statistics.median(v)))
        info_cold, info_warm, host_py = [], [], []
        env = venvoy.root_env(Target("root", "", False))
        for _ in range(args.n):
            shutil.rmtree(root / "home", ignore_errors=True)
            e = dict(env, VENVOY_HOME=str(root / "home"))
            info_cold.append(timed([USER_PYTHON, "-m", "venvoy", "runtime-info"], e, root))
            info_warm.append(timed([USER_PYTHON, "-m", "venvoy", "runtime-info"], e, root))
            host_py.append(timed([USER_PYTHON, "-c", "pass"], env, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"venvoy run overhead: `python3 -c pass` in the container, median of {args.n} "
          "interleaved runs each")
    print()
    print("| runtime (as) | raw runtime command | venvoy run | difference | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, raw, ven in rows:
        print(f"| {name} | {raw:.0f} ms | {ven:.0f} ms | {ven - raw:+.1f} ms | {ven / raw:.3f} |")
    print()
    print(f"| other | median of {args.n} |")
    print("|---|---:|")
    print(f"| `python3 -c pass` on the host (same interpreter) | {statistics.median(host_py):.1f} ms |")
    print(f"| `venvoy runtime-info` (version cache warm) | {statistics.median(info_warm):.1f} ms |")
    print(f"| `venvoy runtime-info` (cold: probes every runtime) | "
          f"{statistics.median(info_cold):.1f} ms |")


if __name__ == "__main__":
    main()
