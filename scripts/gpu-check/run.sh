#!/usr/bin/env bash
# On a machine with an NVIDIA driver and Python 3.10+ (3.12 on the lent H200),
# and no network: install venvoy from the bundle's wheel into a venv, run
# `venvoy doctor`, then the GPU probe inside a container with
# `venvoy run --gpu nvidia`, honouring CUDA_VISIBLE_DEVICES.
#
#   bash run.sh BUNDLE.tar          (bundle made by make-bundle.sh)
#
# Everything goes to stdout and, when $OUT is set (the device tool's output
# folder), to $OUT/gpu-check.log and $OUT/doctor.json. Each step says what it
# did and its exit status; a failing step does not stop the later ones.
set -uo pipefail

BUNDLE=${1:?usage: run.sh BUNDLE.tar}
RELOC=/tmp/venvoy-gpu-apptainer # where make-bundle.sh pointed Apptainer's loader
PY=${PYTHON:-$(command -v python3.12 || command -v python3)}
LOG=${OUT:+$OUT/gpu-check.log}
[[ -n $LOG ]] && exec > >(tee "$LOG") 2>&1

step() { printf '\n=== %s\n' "$*"; }
show() { # show CMD...: run it, print its exit status
    printf '$ %s\n' "$*"
    "$@"
    printf '[exit %s]\n' "$?"
}

work=$(mktemp -d /tmp/venvoy-gpu.XXXXXX)
trap 'rm -rf "$work"; rm -f "$RELOC"' EXIT
step "unpack $BUNDLE into $work"
tar -xf "$BUNDLE" -C "$work" || exit 1
tar -xJf "$work/apptainer.tar.xz" -C "$work" || exit 1
ln -sfn "$work/apptainer" "$RELOC"
mkdir "$work/image" && tar -xJf "$work/image.tar.xz" -C "$work/image" || exit 1

step "host"
show uname -a
show nvidia-smi -L
show cat /proc/driver/nvidia/version
echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-<unset>} python=$PY"
show cat /proc/sys/user/max_user_namespaces

step "install venvoy (pip --no-index --no-deps) into $work/venv"
"$PY" -m venv "$work/venv" || exit 1
show "$work/venv/bin/pip" install -q --no-index --no-deps "$work"/wheels/venvoy-*.whl
export PATH="$RELOC/usr/bin:$work/venv/bin:$PATH" VENVOY_HOME="$work/home"
show apptainer --version

step "venvoy doctor (timed)"
start=$(date +%s.%N)
show venvoy doctor
echo "wall: $(echo "$(date +%s.%N) - $start" | bc 2>/dev/null || echo '?') s"
[[ -n ${OUT:-} ]] && venvoy doctor --json >"$OUT/doctor.json"

"$work/venv/bin/python" -c 'from venvoy.api.doctor import GPU_PROBE; print(GPU_PROBE)' >"$work/probe.py"
cd "$work" || exit 1
step "a container without GPU (the relocated Apptainer and the image work at all)"
show venvoy run --runtime apptainer --image "$work/image" -- python3 -I -c \
    'import platform, sys; print("python", sys.version.split()[0], "in", platform.platform())'
probe() { show venvoy run --runtime apptainer --image "$work/image" --gpu nvidia -- python3 -I probe.py; }

step "GPU probe in the container, CUDA_VISIBLE_DEVICES as given to this script"
probe
step "GPU probe with CUDA_VISIBLE_DEVICES=0: expect device 0 only"
CUDA_VISIBLE_DEVICES=0 probe
step "GPU probe with CUDA_VISIBLE_DEVICES=1: on a one-GPU machine expect no device (the variable reached the container and restricted it)"
CUDA_VISIBLE_DEVICES=1 probe
step "what reaches the container"
CUDA_VISIBLE_DEVICES=0 ROCR_VISIBLE_DEVICES=0 show venvoy run --runtime apptainer --image "$work/image" \
    --gpu nvidia -- sh -c 'env | grep -E "VISIBLE|GPU" | sort'
step "the same probe without a container (the host's view)"
show "$PY" -I probe.py
