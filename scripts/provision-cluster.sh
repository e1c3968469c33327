#!/usr/bin/env bash
# Provisioning step 8c (called by scripts/provision.sh, root, no systemd):
# a 3-node Slurm cluster "vmulti" in Linux namespaces on this one machine, with
# accounting through slurmdbd on a real MariaDB, a login wrapper for tests
# (/usr/local/sbin/venvoy-login) and /etc/venvoy-it/cluster.env describing it.
# The one-node cluster of /etc/slurm/slurm.conf is not touched.
# docs/provisioning.md, "A multi-node Slurm on one machine", explains it.
# Idempotent: a second run checks and restarts only what is dead.
#
# Environment: TEST_USER (venvoytest) and REPO_DIR (this checkout), as
# exported by scripts/provision.sh; VENVOY_CLUSTER_DIR (/var/lib/venvoy-cluster).
set -euo pipefail
REPO_DIR=${REPO_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export TEST_USER=${TEST_USER:-${VENVOY_TEST_USER:-venvoytest}}
export DEBIAN_FRONTEND=noninteractive
# shellcheck source=scripts/cluster/common.sh
source "$REPO_DIR/scripts/cluster/common.sh"
log() { printf 'provision: %s\n' "$*"; }
die() { printf 'provision: ERROR: %s\n' "$*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root"
T0=$SECONDS
log "multi-node slurm ($CLUSTER_NAME) ..."
cd /

# Packages: accounting (slurmdbd + MariaDB); libpmix-dev for `srun --mpi=pmix`
# (Slurm's mpi/pmix plugin dlopens .../pmix2/lib/libpmix.so, which only the
# -dev package provides; without it srun says "can not load PMIx library").
# Package scripts must not start daemons with Debian's defaults; up starts its own.
PKGS=(slurmdbd mariadb-server mariadb-client libpmix-dev slurm-wlm munge iproute2 util-linux)
missing=()
for p in "${PKGS[@]}"; do
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) == "ii " ]] || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/var/log/venvoy-provision-cluster-apt.log 2>&1 ||
        { tail -n 30 /var/log/venvoy-provision-cluster-apt.log >&2; die "apt-get install failed (see /var/log/venvoy-provision-cluster-apt.log)"; }
    if ((own_policy)); then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
    # slurmd loads its MPI plugins at start: running ones must see libpmix.
    export VENVOY_CLUSTER_RESTART_SLURMD=1
fi
T1=$SECONDS

bash "$REPO_DIR/scripts/cluster/up"
install -m 755 "$REPO_DIR/scripts/cluster/login" "$LOGIN_WRAPPER.tmp"
mv -f "$LOGIN_WRAPPER.tmp" "$LOGIN_WRAPPER"

install -d -m 755 "$(dirname "$ENV_FILE")"
tmp=$(mktemp "$ENV_FILE.XXXXXX")
cat >"$tmp" <<ENV
# Written by venvoy scripts/provision-cluster.sh: the 3-node test cluster.
# Run commands as the test user on its login node with:
#   $LOGIN_WRAPPER [-u USER] [-C SHARED_DIR] [-e NAME=VALUE]... -- CMD ARG...
VENVOY_CLUSTER_NAME=$CLUSTER_NAME
VENVOY_CLUSTER_DIR=$CLUSTER_DIR
VENVOY_CLUSTER_SLURM_CONF=$SLURM_CONF_FILE
VENVOY_CLUSTER_LOGIN=$LOGIN_WRAPPER
VENVOY_CLUSTER_LOGIN_NODE=$CTLD
VENVOY_CLUSTER_NODES=$(IFS=,; echo "${NODES[*]}")
VENVOY_CLUSTER_PARTITION=batch
VENVOY_CLUSTER_ACCOUNT=$CLUSTER_ACCOUNT
VENVOY_CLUSTER_USER=$TEST_USER
VENVOY_CLUSTER_SCRATCH=$SCRATCH
VENVOY_CLUSTER_MPI=pmix
ENV
chmod 644 "$tmp"
mv -f "$tmp" "$ENV_FILE"

# Smoke test, as the test user from the login node: one step on every node.
out=$("$LOGIN_WRAPPER" -u "$TEST_USER" -C "$SCRATCH" -- srun -N "${#NODES[@]}" hostname 2>&1) ||
    die "srun on $CLUSTER_NAME failed: $out"
[[ $(sort <<<"$out" | tr '\n' ' ') == "$(printf '%s ' "${NODES[@]}")" ]] ||
    die "srun -N${#NODES[@]} hostname on $CLUSTER_NAME printed '$out'"
# PMIx (Slurm's mpi/pmix plugin) loads on every node.
out=$("$LOGIN_WRAPPER" -u "$TEST_USER" -C "$SCRATCH" -- srun -N "${#NODES[@]}" --mpi=pmix true 2>&1) ||
    die "srun --mpi=pmix on $CLUSTER_NAME failed: $out"
log "multi-node slurm ($CLUSTER_NAME) ... ok ($((SECONDS - T0))s, $((SECONDS - T1))s after packages)"
