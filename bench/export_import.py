#!/usr/bin/env python3
"""Moving an environment: venvoy's archive against `podman save` + `podman load`. Measured.

For one environment (numpy + six on the Debian base, ~300 MB image; built
here unless ``--home``/``--name`` name an existing one), N rounds, interleaved
(the order alternates each round), in the same run:

* venvoy: ``export_archive`` to a file, then ``import_archive`` of that file
  into an empty store (every check included: member sha256s, layer digests);
* podman: ``podman save -o`` of the same image, then ``podman load -i`` into an
  empty, separate Podman storage (``--root``), as on another machine.

Not the same work: ``podman load`` unpacks every layer into its storage, while
venvoy's import checks and stores the archive and leaves loading it into a
runtime to the first ``venvoy run`` (``podman load`` then, or a SIF build).

Each step is a fresh process. Printed as a markdown table: medians, the time
ratio (goal: at most 1.2x) and the archive's size against ``podman save | gzip``
(goal: no larger).

Run as root after scripts/install.sh --dev:  .venv/bin/python bench/export_import.py [-n 5]
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTFS = Path(os.environ.get("VENVOY_IT_ROOTFS", "/var/cache/venvoy-it/base-rootfs.tar"))

HELPER = """
import json, sys
from pathlib import Path
from venvoy.api import environments as envs
from venvoy.transport.archive import export_archive, import_archive
from venvoy.store.layout import Store

if sys.argv[1] == "export":
    print(export_archive(envs.get(sys.argv[3], Store(Path(sys.argv[2]))), Path(sys.argv[4])))
elif sys.argv[1] == "import":
    import_archive(Path(sys.argv[2]), store=Store(Path(sys.argv[3])))
else:
    env = envs.get(sys.argv[3], Store(Path(sys.argv[2])))
    print(json.dumps({"archive": str(env.archive), "tag": env.tag,
                      "zstd": "zstandard module"}))
"""


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed: {proc.stderr[-1500:]}")
    return proc


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = run(argv, env)
    return time.perf_counter() - start, proc.stdout.strip()


def build(work: Path, env: dict[str, str]) -> tuple[Path, str]:
    if not ROOTFS.is_file():
        raise SystemExit(f"bench: {ROOTFS} missing: run scripts/provision.sh (or give --home/--name)")
    home = work / "home"
    (work / "req.txt").write_text("numpy==2.*\nsix\n")
    print(f"building the environment in {home} ...", file=sys.stderr)
    run([sys.executable, "-m", "venvoy", "init", "bench", "--python", "3.11", "-r",
         str(work / "req.txt"), "--base", str(ROOTFS), "--runtime", "podman", "--quiet"],
        env | {"VENVOY_HOME": str(home), "VENVOY_OFFLINE": "1"})
    return home, "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--home", type=Path, help="an existing store (VENVOY_HOME)")
    parser.add_argument("--name", help="the environment in --home to move")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (rootful Podman, a separate storage per load)")
    podman = shutil.which("podman")
    if podman is None:
        raise SystemExit("bench: podman is not installed")
    work = Path(tempfile.mkdtemp(prefix="venvoy-bench-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VENVOY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env["PODMAN_IGNORE_CGROUPSV1_WARNING"] = "1"
    helper = work / "helper.py"
    helper.write_text(HELPER)
    py = [sys.executable, str(helper)]
    try:
        built = not (args.home and args.name)
        home, name = build(work, env) if built else (args.home, args.name)
        import json

        info = json.loads(run([*py, "info", str(home), name], env).stdout)
        image, tag = Path(info["archive"]), info["tag"]
        image_size = image.stat().st_size
        run([podman, "load", "-i", str(image)], env)  # the image to save, in Podman's own store

        saved = work / "saved.tar"
        start = time.perf_counter()
        run([podman, "save", "-o", str(saved), tag], env)
        with open(saved, "rb") as src, gzip.open(work / "saved.tar.gz", "wb", compresslevel=6) as gz:
            shutil.copyfileobj(src, gz, 1 << 20)  # what `podman save | gzip` gives
        gzip_size = (work / "saved.tar.gz").stat().st_size
        gzip_s = time.perf_counter() - start
        saved.unlink()
        (work / "saved.tar.gz").unlink()

        times: dict[str, list[float]] = {"export": [], "import": [], "save": [], "load": []}
        sizes: dict[str, int] = {}

        def venvoy_round(i: int) -> None:
            out = work / f"out-{i}"
            out.mkdir()
            t, path = timed([*py, "export", str(home), name, str(out)], env)
            times["export"].append(t)
            sizes["archive"] = Path(path).stat().st_size
            t, _ = timed([*py, "import", path, str(work / f"store-{i}")], env)
            times["import"].append(t)
            shutil.rmtree(out)
            shutil.rmtree(work / f"store-{i}")

        def podman_round(i: int) -> None:
            tar = work / f"save-{i}.tar"
            t, _ = timed([podman, "save", "-o", str(tar), tag], env)
            times["save"].append(t)
            sizes["save"] = tar.stat().st_size
            root, runroot = work / f"podman-root-{i}", work / f"podman-run-{i}"
            t, _ = timed([podman, "--root", str(root), "--runroot", str(runroot), "load", "-i",
                          str(tar)], env)
            times["load"].append(t)
            tar.unlink()
            subprocess.run([podman, "--root", str(root), "--runroot", str(runroot), "system",
                            "reset", "--force"], env=env, capture_output=True, check=False)
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(runroot, ignore_errors=True)

        for i in range(args.n):
            print(f"round {i + 1}/{args.n}", file=sys.stderr)
            for step in ((venvoy_round, podman_round) if i % 2 == 0 else (podman_round, venvoy_round)):
                step(i)
        if built:  # the image this run built and loaded: not left in Podman's storage
            subprocess.run([podman, "rmi", tag], env=env, capture_output=True, check=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    ours, theirs = med["export"] + med["import"], med["save"] + med["load"]
    mb = 1e6
    print(f"\nImage {image_size / mb:.0f} MB, {args.n} rounds, medians; zstd via "
          f"{info['zstd']}; {os.cpu_count()} CPUs.\n")
    print("| step | venvoy archive | podman | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| export / `podman save` | {med['export']:.2f} s | {med['save']:.2f} s | "
          f"{med['export'] / med['save']:.2f}x |")
    print(f"| import (all checks) / `podman load` (empty storage) | {med['import']:.2f} s | "
          f"{med['load']:.2f} s | {med['import'] / med['load']:.2f}x |")
    print(f"| **total** (goal <= 1.2x) | **{ours:.2f} s** | **{theirs:.2f} s** | "
          f"**{ours / theirs:.2f}x** |")
    print(f"| file size / `podman save` | {sizes['archive'] / mb:.1f} MB | {sizes['save'] / mb:.1f} MB"
          f" | {sizes['archive'] / sizes['save']:.2f}x |")
    print(f"| file size / `podman save \\| gzip` (goal <= 1x; gzip took {gzip_s:.1f} s) | "
          f"{sizes['archive'] / mb:.1f} MB | {gzip_size / mb:.1f} MB | "
          f"{sizes['archive'] / gzip_size:.2f}x |")


if __name__ == "__main__":
    main()
