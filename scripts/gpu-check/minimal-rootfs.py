"""Copy from a full root file system only the files a traced command used.

    python3 minimal-rootfs.py FULL_ROOT TRACE OUT_ROOT [EXTRA_PATH...]

TRACE is `strace -f -e trace=%file` output of the command run chrooted in
FULL_ROOT. Every path in it that exists in FULL_ROOT is copied to OUT_ROOT,
with every symbolic link met on the way (merged /usr: /lib -> usr/lib), so
the command runs the same in OUT_ROOT. EXTRA_PATHs (files or whole
directories, such as /etc) are added as they are. Used by make-bundle.sh.
"""

from __future__ import annotations

import os
import re
import shutil
import sys

QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def inside(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def add(root: str, out: str, path: str, seen: set[str]) -> None:
    """Copy ``path`` (absolute, as seen in the chroot) resolving links inside ``root``."""
    parts = [p for p in path.split("/") if p and p != "."]
    current = "/"
    depth = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = os.path.dirname(current.rstrip("/")) or "/"
            continue
        nxt = os.path.join(current, part)
        real = inside(root, nxt)
        if os.path.islink(real):
            depth += 1
            if depth > 40:
                return
            target = os.readlink(real)
            if nxt not in seen:
                seen.add(nxt)
                dest = inside(out, nxt)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                if not os.path.lexists(dest):
                    os.symlink(target, dest)
            base = "/" if target.startswith("/") else current
            parts = [p for p in os.path.join(base, target).split("/") if p] + parts
            current = "/"
            continue
        if not os.path.lexists(real):
            return
        current = nxt
    real = inside(root, current)
    dest = inside(out, current)
    if current in seen:
        return
    seen.add(current)
    if os.path.isdir(real):
        os.makedirs(dest, exist_ok=True)
    elif os.path.isfile(real):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy2(real, dest)


def add_tree(root: str, out: str, path: str, seen: set[str]) -> None:
    add(root, out, path, seen)
    top = inside(root, path)
    if os.path.isdir(top) and not os.path.islink(top):
        for dirpath, dirnames, filenames in os.walk(top):
            rel = "/" + os.path.relpath(dirpath, root)
            for name in dirnames + filenames:
                add(root, out, os.path.join(rel, name), seen)


def main() -> int:
    root, trace, out, *extra = sys.argv[1:]
    seen: set[str] = set()
    with open(trace, errors="replace") as fh:
        for line in fh:
            for path in QUOTED.findall(line):
                if path.startswith("/") and not path.startswith(("/proc", "/sys", "/dev")):
                    add(root, out, path, seen)
    for path in extra:
        add_tree(root, out, path, seen)
    for d in ("proc", "sys", "dev", "tmp", "run", "home", "root", "var/tmp", "mnt"):
        os.makedirs(inside(out, d), exist_ok=True)
    os.chmod(inside(out, "tmp"), 0o1777)  # noqa: S103 - an image's /tmp is sticky and open to all
    print(f"{len(seen)} paths copied", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
