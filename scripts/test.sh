#!/usr/bin/env bash
# The whole test suite: lint, types, unit tests, and the integration tests on
# every real runtime (run as root after `sudo ./scripts/install.sh --dev`; they
# switch to the unprivileged test user for Apptainer, Singularity, Charliecloud
# and rootless Podman). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PODMAN_IGNORE_CGROUPSV1_WARNING=1

echo "test: ruff"
.venv/bin/python -m ruff check src tests bench
echo "test: mypy --strict"
.venv/bin/python -m mypy
echo "test: pytest"
exec .venv/bin/python -m pytest -v -p no:cacheprovider "$@"
