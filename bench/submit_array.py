#!/usr/bin/env python3
"""`venvoy submit` on the 3-node test cluster: measured, not asserted.

1. Wall time from `venvoy submit ENV --array 0-(N-1) -- python3 -c ...` until every
   task has finished, against a hand-written sbatch script calling
   `apptainer exec` on the same SIF with the same command, interleaved (the
   order alternates), each run polled the same way (sacct every 0.5 s). The SIF
   is made once before the first run, as `venvoy submit` makes it.
2. Per-task start cost: the task part of venvoy's job script (clean environment,
   allow-list, frozen argv; `-- true`) run with bash, against the bare
   `apptainer exec ... SIF true` it calls, as the test user. Goal: the same,
   within noise (the runtime's cost alone).

Run as root on a machine provisioned by scripts/provision.sh (the cluster of
scripts/provision-cluster.sh up): .venv/bin/python bench/submit_array.py [--runs 3] [--tasks 100]
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = "/opt/venvoy-it/venv/bin/python"
ROOTFS = "/var/cache/venvoy-it/base-rootfs.tar"
CLUSTER_ENV = Path("/etc/venvoy-it/cluster.env")
ENV = "bench-submit"
CODE = "import os; print('task', os.environ.get('SLURM_ARRAY_TASK_ID'))"


def cluster_env() -> dict[str, str]:
    out = {}
    for line in CLUSTER_ENV.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


class Bench:
    def __init__(self, runs: int, tasks: int) -> None:
        self.c = cluster_env()
        self.user = self.c["VENVOY_CLUSTER_USER"]
        self.uid = pwd.getpwnam(self.user).pw_uid
        self.root = Path(tempfile.mkdtemp(prefix="bench-", dir=self.c["VENVOY_CLUSTER_SCRATCH"]))
        self.root.chmod(0o755)
        os.chown(self.root, self.uid, -1)
        self.src = self.root / "src"
        shutil.copytree(REPO / "src" / "venvoy", self.src / "venvoy",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for p in [self.src, *self.src.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        self.store = self.root / "store"
        self.work = self.root / "work"
        for d in (self.store, self.work):
            d.mkdir()
            os.chown(d, self.uid, -1)
        self.runs, self.tasks = runs, tasks

    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.src), "VENVOY_HOME": str(self.store),
                "VENVOY_RUNTIME": "apptainer"}

    def login(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        extra = [a for k, v in self.env().items() for a in ("-e", f"{k}={v}")]
        proc = subprocess.run([self.c["VENVOY_CLUSTER_LOGIN"], "-u", self.user, "-C",
                               str(self.work), *extra, "--", *argv],
                              capture_output=True, text=True, timeout=1800)
        if check and proc.returncode != 0:
            raise SystemExit(f"bench: {argv} failed: {proc.stderr[-2000:]}")
        return proc

    def as_user(self, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        base = {"HOME": str(self.store), "USER": self.user, "LANG": "C.UTF-8",
                "PATH": "/usr/local/bin:/usr/bin:/bin"}
        return subprocess.run(["runuser", "-u", self.user, "--", "env", "-i",
                               *[f"{k}={v}" for k, v in (base | env).items()], *argv],
                              cwd=self.work, capture_output=True, text=True, timeout=1800)

    def setup(self) -> str:
        (self.work / "req.txt").write_text("six\n")
        proc = self.as_user([PY, "-m", "venvoy", "init", ENV, "-r", "req.txt", "--base", ROOTFS,
                             "--runtime", "charliecloud", "--quiet"],
                            self.env() | {"VENVOY_OFFLINE": "1"})
        if proc.returncode != 0:
            raise SystemExit(f"bench: init failed: {proc.stderr[-2000:]}")
        # The SIF, made once (as the first `venvoy submit` makes it), and a warm-up job.
        job = self.login([PY, "-m", "venvoy", "submit", ENV, "--wait", "--quiet", "--", "true"])
        record = json.loads((self.store / "jobs" / f"{job.stdout.split()[0]}.json").read_text())
        sif = str(record["image"])
        hand = self.work / "hand.sh"
        hand.write_text("#!/bin/bash\n"
                        f"exec apptainer exec {sif} python3 -c \"{CODE}\"\n")
        hand.chmod(0o755)
        return sif

    def done(self, job_id: str) -> bool:
        proc = self.login(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State"],
                          check=False)
        rows = [line.split("|") for line in proc.stdout.splitlines() if "|" in line]
        finished = [r for r in rows if r[1].split()[0] in ("COMPLETED", "FAILED", "CANCELLED")
                    and "[" not in r[0]]
        return len(finished) >= self.tasks

    def timed(self, argv: list[str]) -> float:
        start = time.monotonic()
        job_id = self.login(argv).stdout.split()[0].split(";")[0]
        while not self.done(job_id):
            time.sleep(0.5)
        return time.monotonic() - start

    def arrays(self) -> tuple[list[float], list[float]]:
        venvoy_t, hand_t = [], []
        array = f"0-{self.tasks - 1}"
        v = [PY, "-m", "venvoy", "submit", ENV, "--array", array, "--quiet", "--",
             "python3", "-c", CODE]
        h = ["sbatch", "--parsable", f"--array={array}", "--output=hand-%A_%a.out", "hand.sh"]
        for i in range(self.runs):
            order = [("venvoy", v), ("hand", h)] if i % 2 == 0 else [("hand", h), ("venvoy", v)]
            for kind, argv in order:
                t = self.timed(argv)
                (venvoy_t if kind == "venvoy" else hand_t).append(t)
                print(f"  run {i + 1} {kind}: {t:.1f} s", file=sys.stderr)
        return venvoy_t, hand_t

    def start_cost(self, sif: str, n: int = 30) -> tuple[list[float], list[float]]:
        plan = self.as_user([PY, "-m", "venvoy", "submit", ENV, "--dry-run", "--launcher", "none",
                             "--", "true"], self.env())
        if plan.returncode != 0:
            raise SystemExit(f"bench: dry run failed: {plan.stderr[-2000:]}")
        script = self.work / "task.sh"
        script.write_text(plan.stdout)
        script.chmod(0o644)
        fake = {"SLURM_JOB_ID": "1", "SLURM_ARRAY_TASK_ID": "0", "SLURM_PROCID": "0",
                "TMPDIR": "/tmp", "PYTHONPATH": "/x", "VIRTUAL_ENV": "/x"}
        bare = ["apptainer", "exec", "--cleanenv", "--no-home", "--bind",
                f"{self.work}:{self.work}", "--pwd", str(self.work), sif, "true"]
        venvoy_ms, bare_ms = [], []
        for _ in range(n):
            for kind, argv in (("venvoy", ["bash", str(script)]), ("bare", bare)):
                start = time.perf_counter()
                proc = self.as_user(argv, fake)
                ms = (time.perf_counter() - start) * 1000
                if proc.returncode != 0:
                    raise SystemExit(f"bench: {kind} failed: {proc.stderr[-1000:]}")
                (venvoy_ms if kind == "venvoy" else bare_ms).append(ms)
        return venvoy_ms, bare_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3,
                    help="arrays of each kind (default 3; 0: only the per-task start cost)")
    ap.add_argument("--tasks", type=int, default=100, help="tasks per array (default 100)")
    args = ap.parse_args()
    b = Bench(args.runs, args.tasks)
    try:
        sif = b.setup()
        venvoy_t, hand_t = b.arrays() if args.runs else ([], [])
        v_ms, bare_ms = b.start_cost(sif)
    finally:
        shutil.rmtree(b.root, ignore_errors=True)
    print(f"| {args.tasks}-task array on 3 nodes, interleaved | venvoy submit | "
          "sbatch + apptainer exec | ratio |")
    print("| --- | --- | --- | --- |")
    if args.runs:
        mv, mh = statistics.median(venvoy_t), statistics.median(hand_t)
        print(f"| submit to all tasks done (median of {args.runs}) | {mv:.1f} s | {mh:.1f} s | "
              f"{mv / mh:.2f} |")
    for name, f in (("median", statistics.median), ("fastest", min)):
        v, bare = f(v_ms), f(bare_ms)
        print(f"| per-task start, `true` ({name} of {len(v_ms)}): the job script's task vs bare "
              f"`apptainer exec` | {v:.0f} ms | {bare:.0f} ms | {v / bare:.2f} |")


if __name__ == "__main__":
    main()
