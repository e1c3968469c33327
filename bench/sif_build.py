#!/usr/bin/env python3
"""Making each runtime's form of a numpy environment: venvoy vs the runtimes' own tools.

1. Apptainer: the first `venvoy run NAME --runtime apptainer -- python -c "import
   numpy"` after `venvoy init` (venvoy flattens the canonical image in one pass
   into sqfstar and writes the SIF itself, then runs it) against
   `apptainer build x.sif docker-archive://CANONICAL.tar` of the same image
   (a fresh Apptainer cache each time, as on a first conversion). Goal: <= 0.2x.
2. Charliecloud: `venvoy load --runtime charliecloud CANONICAL.tar` (the
   directory `venvoy run` makes) against `ch-convert -i podman IMAGE DIR`, the
   way ch-convert turns a Docker/OCI image into a directory (the image is
   loaded into Podman once, outside the timing). Goal: no slower.

Runs are interleaved (venvoy, tool, venvoy, tool, ...) and medians printed, so
both see the same machine state. The environment is built once with `venvoy
init bench -r requirements.txt` (numpy from PyPI) on the provisioned base.

Run as root after scripts/provision.sh: .venv/bin/python bench/sif_build.py [-n 3]
"""

from __future__ import annotations

import argparse
import json
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
PY = "/opt/venvoy-it/venv/bin/python"


def sh(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """Seconds ``argv`` took; a failure stops the bench with its stderr."""
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {shlex.join(argv)} failed: {proc.stderr.decode()[-1500:]}")
    return time.perf_counter() - start


def row(what: str, ours: list[float], theirs: list[float], tool: str) -> str:
    o, t = statistics.median(ours), statistics.median(theirs)
    return f"| {what} | {o:.1f} s | {tool} | {t:.1f} s | {o / t:.2f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=3, help="interleaved runs of each (default 3)")
    ap.add_argument("--skip-charliecloud", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0 or not os.path.exists(ROOTFS):
        raise SystemExit("bench: run as root after scripts/provision.sh")
    for tool in ("apptainer", "ch-convert", "podman", "sqfstar"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} is not installed (scripts/provision.sh)")
    work = Path(tempfile.mkdtemp(prefix="venvoy-bench-sif-", dir="/var/tmp"))
    ref = ""
    try:
        (work / "requirements.txt").write_text("numpy\n")
        home = work / "store"
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"), VENVOY_HOME=str(home),
                   UV_CACHE_DIR=str(work / "uv-cache"))
        venvoy = [PY, "-m", "venvoy"]
        sh([*venvoy, "init", "bench", "-r", "requirements.txt", "--base", ROOTFS, "--runtime",
            "podman", "--quiet"], env, work)
        image_id = json.loads((home / "envs" / "bench" / "env.json").read_text())["image_id"]
        archive = home / "images" / f"{image_id.split(':')[1]}.tar"
        size = archive.stat().st_size / (1 << 20)
        info = subprocess.run([*venvoy, "runtime-info", "--json"], env=env, capture_output=True,
                              text=True, check=True).stdout
        sif = json.loads(info).get("sif_compression") or {}
        run = [*venvoy, "run", "bench", "--runtime", "apptainer", "--", "python", "-c",
               "import numpy"]
        ours, theirs = [], []
        for i in range(args.n):
            shutil.rmtree(home / "cache" / "sif", ignore_errors=True)
            ours.append(sh(run, env, work))
            cache = work / f"apptainer-cache-{i}"
            build_env = dict(env, APPTAINER_CACHEDIR=str(cache), APPTAINER_TMPDIR=str(work))
            theirs.append(sh(["apptainer", "build", "-F", str(work / "x.sif"),
                              f"docker-archive://{archive}"], build_env, work))
            shutil.rmtree(cache, ignore_errors=True)
        rows = [row(f"first `venvoy run --runtime apptainer` ({sif.get('compression', '?')})",
                    ours, theirs, "`apptainer build docker-archive://`")]
        if not args.skip_charliecloud:
            loaded = subprocess.run(["podman", "load", "-q", "-i", str(archive)],
                                    capture_output=True, text=True, check=True).stdout
            ref = loaded.strip().rsplit(" ", 1)[-1]
            ours, theirs = [], []
            for i in range(args.n):
                dest = work / f"ch-{i}"
                ours.append(sh([*venvoy, "load", "--runtime", "charliecloud", str(archive),
                                "--name", "bench", "--dest", str(dest)], env, work))
                shutil.rmtree(dest, ignore_errors=True)
                theirs.append(sh(["ch-convert", "-i", "podman", ref, str(work / f"chc-{i}")],
                                 env, work))
                shutil.rmtree(work / f"chc-{i}", ignore_errors=True)
            rows.append(row("`venvoy load --runtime charliecloud` (directory)", ours, theirs,
                            "`ch-convert -i podman IMAGE DIR`"))
    finally:
        if ref:
            subprocess.run(["podman", "rmi", "-f", ref], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"numpy environment, canonical image {size:.0f} MB; median of {args.n} interleaved runs; "
          f"{os.cpu_count()} cores; SIF compression {sif.get('compression')} ({sif.get('why')})\n")
    print("| venvoy | median | tool | median | ratio |\n|---|---:|---|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    sys.exit(main())
