#!/usr/bin/env python3
"""Environment build and start-up costs: measured, not asserted.

1. Cold build of a numpy+pandas environment, `venvoy init` against a
   hand-written Containerfile doing `pip install` of the same requirements
   with `podman build`, interleaved in one run. Both start from the same base
   image, already known to Podman; both download every package (venvoy's wheel
   cache and uv's cache are emptied before each of its runs, `podman build`
   runs with --no-cache). Goal: venvoy <= 0.8x.
2. No-op `venvoy init` (nothing changed). Goal: under 0.3 s.
3. `venvoy run NAME -- python -c pass` minus the raw runtime command venvoy
   runs (from `--dry-run`), per runtime. Goal: at most 30 ms.

Run as root after scripts/install.sh --dev: .venv/bin/python bench/build_cold.py [-n 3]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOTFS = "/var/cache/venvoy-it/base-rootfs.tar"
REPO = Path(__file__).resolve().parents[1]
PY = "/opt/venvoy-it/venv/bin/python"  # Debian's python3: the interpreter a user would have
CA = "/etc/ssl/certs/ca-certificates.crt"
REQS = "numpy==2.*\npandas\n"


def sh(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {shlex.join(argv)} failed: {proc.stderr.decode()[-1500:]}")
    return (time.perf_counter() - start) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=3, help="cold builds of each kind (default 3)")
    ap.add_argument("--runs", type=int, default=20, help="runs for the start-up rows")
    args = ap.parse_args()
    if os.geteuid() != 0 or not os.path.exists(ROOTFS):
        raise SystemExit("bench: run as root after scripts/provision.sh")
    import compileall

    compileall.compile_dir(REPO / "src", quiet=1)  # as an installed venvoy would be
    work = Path(tempfile.mkdtemp(prefix="venvoy-bench-build-", dir="/var/tmp"))
    try:
        (work / "requirements.txt").write_text(REQS)
        home = work / "store"
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"), VENVOY_HOME=str(home),
                   VENVOY_OFFLINE="1", UV_CACHE_DIR=str(work / "uv-cache"))
        venvoy = [PY, "-m", "venvoy"]
        init = [*venvoy, "init", "bench", "-r", "requirements.txt", "--base", ROOTFS,
                "--runtime", "podman", "--quiet"]
        sh(init, env, work)  # the base is wrapped and loaded into Podman once, outside timing
        import json

        base_id = json.loads((home / "envs" / "bench" / "env.json").read_text())["base_image_id"]
        base_ref = f"localhost/venvoy-base:{base_id.split(':')[1][:12]}"  # as venvoy tags it
        ctx = work / "ctx"
        ctx.mkdir()
        shutil.copy(CA, ctx / "ca.crt")
        (ctx / "requirements.txt").write_text(REQS)
        (ctx / "Containerfile").write_text(
            f"FROM {base_ref}\n"
            "COPY ca.crt requirements.txt /tmp/\n"
            "RUN python3 -m venv /opt/venv && PIP_CERT=/tmp/ca.crt /opt/venv/bin/pip install "
            "--no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt\n"
            "ENV PATH=/opt/venv/bin:$PATH\n")
        build = ["podman", "build", "--no-cache", "--network=host", "-q", "-t",
                 "localhost/venvoy-bench-containerfile", str(ctx)]
        v_ms, p_ms = [], []
        for _ in range(args.n):
            for d in ("envs", "images", "cache/wheels", "uv-cache"):
                shutil.rmtree((work if d == "uv-cache" else home) / d, ignore_errors=True)
            p_ms.append(sh(build, env, work))
            v_ms.append(sh([*init[:-1], "--force", "--quiet"], env, work))
        vm, pm = statistics.median(v_ms), statistics.median(p_ms)
        print(f"Cold build of numpy+pandas (median of {args.n}, interleaved, same base image):\n")
        print("| build | median | ratio |\n|---|---:|---:|")
        print(f"| `podman build` of a Containerfile doing `pip install` | {pm / 1000:.1f} s | 1.00 |")
        print(f"| `venvoy init` (lock, download, install, image) | {vm / 1000:.1f} s | "
              f"{vm / pm:.2f} |", flush=True)
        noop = [sh(init, env, work) for _ in range(args.runs)]
        print(f"\nNo-op `venvoy init` (nothing changed), median of {args.runs}: "
              f"{statistics.median(noop):.0f} ms\n", flush=True)

        rows = []
        for runtime in ("docker", "podman", "apptainer", "singularity", "charliecloud"):
            run = [*venvoy, "run", "bench", "--runtime", runtime, "--", "python", "-c", "pass"]
            sh(run, env, work)  # makes the runtime's form of the image once
            dry = subprocess.run([*venvoy, "run", "--dry-run", *run[4:]], env=env, cwd=work,
                                 capture_output=True, text=True, check=True).stdout
            raw = shlex.split(dry)
            sh(raw, env, work)
            r, v = [], []
            for _ in range(args.runs):
                r.append(sh(raw, env, work))
                v.append(sh(run, env, work))
            rows.append((runtime, statistics.median(r), statistics.median(v)))
    finally:
        subprocess.run(["podman", "rmi", "-f", "localhost/venvoy-bench-containerfile"],
                       capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    print(f"`venvoy run bench -- python -c pass` vs the raw runtime command, median of "
          f"{args.runs} interleaved runs (as root):\n")
    print("| runtime | raw | venvoy run NAME | difference |\n|---|---:|---:|---:|")
    for name, raw_ms, ven_ms in rows:
        print(f"| {name} | {raw_ms:.0f} ms | {ven_ms:.0f} ms | {ven_ms - raw_ms:+.1f} ms |")


if __name__ == "__main__":
    sys.exit(main())
