#!/usr/bin/env bash
# Assemble the real-GPU bundle (see README.md beside this file) from what
# scripts/provision.sh installed on this machine: the relocated Apptainer in
# /opt/apptainer, the Debian base root file system, and venvoy built as a wheel
# from this checkout. Run as root (it chroots to find what the image needs).
#
#   scripts/gpu-check/make-bundle.sh [OUT.tar]     (default: build/gpu-check/venvoy-gpu-check.tar)
#
# The bundle must fit in 64 MiB (what a device machine is sent); this script
# fails if it does not.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${1:-$REPO/build/gpu-check/venvoy-gpu-check.tar}
APPTAINER_PREFIX=${APPTAINER_PREFIX:-/opt/apptainer}
BASE_ROOTFS=${BASE_ROOTFS:-/var/cache/venvoy-it/base-rootfs.tar}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
# run.sh links the unpacked Apptainer here: its binaries are patched to load
# their glibc from this fixed path (a PT_INTERP must be absolute), and /tmp is
# writable on any machine.
RELOC=/tmp/venvoy-gpu-apptainer
LIMIT=$((64 << 20))

die() { echo "make-bundle: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root (the image's files are found by tracing a chroot)"
for tool in patchelf strace xz tar chroot; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done
[[ -x $APPTAINER_PREFIX/usr/bin/apptainer ]] || die "no Apptainer in $APPTAINER_PREFIX (run scripts/provision.sh)"
[[ -f $BASE_ROOTFS ]] || die "no base root file system $BASE_ROOTFS (run scripts/provision.sh)"

work=$(mktemp -d /tmp/venvoy-bundle.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bundle/wheels"

echo "make-bundle: venvoy wheel" >&2
# (in an isolated build environment: pip brings setuptools and wheel itself)
"$PYTHON" -m pip wheel -q --no-deps -w "$work/bundle/wheels" "$REPO" >&2

echo "make-bundle: Apptainer from $APPTAINER_PREFIX, relocated to $RELOC" >&2
cp -a "$APPTAINER_PREFIX" "$work/apptainer"
for bin in usr/bin/apptainer usr/lib/x86_64-linux-gnu/apptainer/bin/starter; do
    patchelf --set-interpreter "$RELOC/glibc/ld-linux-x86-64.so.2" \
        --force-rpath --set-rpath "$RELOC/glibc" "$work/apptainer/$bin"
done
tar -C "$work" -cf - apptainer | xz -T0 -6 >"$work/bundle/apptainer.tar.xz"

echo "make-bundle: minimal image (Python with ctypes and json, sh, env) from $BASE_ROOTFS" >&2
mkdir "$work/full" "$work/mini"
tar -xf "$BASE_ROOTFS" -C "$work/full"
"$PYTHON" -c 'from venvoy.api.doctor import GPU_PROBE; print(GPU_PROBE)' >"$work/full/tmp/probe.py" \
    2>/dev/null || PYTHONPATH=$REPO/src "$PYTHON" -c \
    'from venvoy.api.doctor import GPU_PROBE; print(GPU_PROBE)' >"$work/full/tmp/probe.py"
# Whatever the probe and the checks in run.sh open is what the image keeps.
strace -f -qq -e trace=%file -o "$work/trace.txt" chroot "$work/full" /bin/sh -c \
    'env >/dev/null; cat /etc/os-release >/dev/null; ls / >/dev/null; python3 -I /tmp/probe.py >/dev/null;
     python3 -I -c "import json, ctypes, os, sys, platform, subprocess; print(platform.platform())"' \
    || true
"$PYTHON" "$HERE/minimal-rootfs.py" "$work/full" "$work/trace.txt" "$work/mini" \
    /etc /lib64/ld-linux-x86-64.so.2 /usr/bin/env /usr/bin/sh /usr/bin/cat /usr/bin/ls
chroot "$work/mini" /bin/sh -c 'python3 -I -c "import ctypes, json"' || die "the minimal image cannot run Python"
"$APPTAINER_PREFIX/usr/bin/apptainer" -q build --sandbox "$work/sandbox" "$work/mini/" >&2
tar -C "$work/sandbox" -cf - . | xz -T0 -6 >"$work/bundle/image.tar.xz"

cp "$HERE/run.sh" "$HERE/README.md" "$work/bundle/"
mkdir -p "$(dirname "$OUT")"
tar -C "$work/bundle" -cf "$OUT.tmp" .
size=$(stat -c %s "$OUT.tmp")
if ((size > LIMIT)); then
    rm -f "$OUT.tmp"
    die "bundle is $((size >> 20)) MiB, over the 64 MiB a device machine is sent"
fi
mv "$OUT.tmp" "$OUT"
echo "make-bundle: $OUT ($((size >> 20)) MiB):" >&2
tar -tvf "$OUT" >&2
