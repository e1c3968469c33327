#!/usr/bin/env bash
# Install venvoy into ./.venv; with --dev also its development tools and, as
# root, every real container runtime the test suite uses (scripts/provision.sh).
#
#   ./scripts/install.sh          venvoy itself (any user)
#   sudo ./scripts/install.sh --dev   + pytest/ruff/mypy + Docker, Podman, Apptainer,
#                                     Singularity, Charliecloud, Slurm (Debian 12/13)
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
case "${1:-}" in
    --dev) dev=1 ;;
    "") ;;
    *) echo "usage: $0 [--dev]" >&2; exit 2 ;;
esac

if [[ $dev -eq 1 && $(id -u) -ne 0 ]]; then
    echo "install: --dev provisions container runtimes and needs root: sudo $0 --dev" >&2
    exit 1
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "install: installing python3-venv from Debian"
        apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 python3-venv python3-pip >/dev/null
        PY=/usr/bin/python3
    else
        echo "install: need Python >= 3.10 with venv (Debian: apt-get install python3-venv)" >&2
        exit 1
    fi
fi

if [[ ! -x .venv/bin/python ]]; then
    "$PY" -m venv .venv
fi
if [[ $dev -eq 1 ]]; then
    .venv/bin/python -m pip install -q -e '.[dev]'
    bash scripts/provision.sh
else
    .venv/bin/python -m pip install -q .
fi
echo "install: venvoy $(.venv/bin/venvoy --version | cut -d' ' -f2) in $(pwd)/.venv/bin/venvoy"
