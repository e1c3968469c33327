# Shared settings and helpers for scripts/cluster/{up,down,status,login}.
# Sourced, not run. Everything the 3-node cluster owns lives under CLUSTER_DIR
# (configuration, state, logs, pid files, the MariaDB data directory) and in
# network namespaces named vmc-*; nothing else on the machine is changed.
# shellcheck shell=bash

CLUSTER_NAME=${VENVOY_CLUSTER_NAME:-vmulti}
CLUSTER_DIR=${VENVOY_CLUSTER_DIR:-/var/lib/venvoy-cluster}
TEST_USER=${TEST_USER:-${VENVOY_TEST_USER:-venvoytest}}
CLUSTER_ACCOUNT=${VENVOY_CLUSTER_ACCOUNT:-vtest}
NODES=(n1 n2 n3)
CTLD=mnc                       # controller, slurmdbd, MariaDB, and the login node
SUBNET=10.77.0                 # only inside the namespaces below
CTLD_ADDR=$SUBNET.10
NS_PREFIX=${VENVOY_CLUSTER_NS_PREFIX:-vmc-}  # /run/netns/vmc-hub, vmc-mnc, vmc-n1..3
HUB=${NS_PREFIX}hub
SLURMCTLD_PORT=6917
SLURMD_PORT=6918
DBD_PORT=6919
MYSQL_PORT=3306                # inside mnc's network namespace only
ETC=$CLUSTER_DIR/etc
SLURM_CONF_FILE=$ETC/slurm.conf
DBD_CONF_FILE=$ETC/slurmdbd.conf
HOSTS_FILE=$ETC/hosts
RUN=$CLUSTER_DIR/run           # holder pid files
LOG=$CLUSTER_DIR/log
STATE=$CLUSTER_DIR/state
MYSQL_DIR=$CLUSTER_DIR/mysql
MYSQL_SOCK=$CLUSTER_DIR/mysqld/mysqld.sock
MYSQL_PID=$CLUSTER_DIR/mysqld/mysqld.pid
SCRATCH=$CLUSTER_DIR/scratch   # shared scratch (like /scratch on a cluster), mode 1777
LOGIN_WRAPPER=/usr/local/sbin/venvoy-login
ENV_FILE=/etc/venvoy-it/cluster.env

export PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

clog() { printf 'cluster: %s\n' "$*"; }
cdie() { printf 'cluster: ERROR: %s\n' "$*" >&2; exit 1; }

addr_of() { # HOST -> address
    case "$1" in
        "$CTLD") echo "$CTLD_ADDR" ;;
        n*) echo "$SUBNET.${1#n}" ;;
    esac
}

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# The process holding HOST's UTS/mount/IPC namespaces (a `sleep infinity`).
holder_pid() { cat "$RUN/$1.holder.pid" 2>/dev/null; }
holder_alive() {
    local pid
    pid=$(holder_pid "$1") && [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null &&
        [[ $(readlink "/proc/$pid/ns/uts") != "$(readlink /proc/1/ns/uts)" ]] &&
        [[ $(readlink "/proc/$pid/ns/net") == "net:[$(stat -L -c %i "/run/netns/$NS_PREFIX$1" 2>/dev/null)]" ]]
}

# in_host HOST CMD... : run CMD inside HOST's network, UTS, mount and IPC namespaces.
in_host() {
    local host=$1 pid
    shift
    pid=$(holder_pid "$host") || cdie "no namespace holder for $host (run scripts/cluster/up)"
    nsenter --target "$pid" --net --uts --mount --ipc -- env SLURM_CONF="$SLURM_CONF_FILE" "$@"
}

# wait_until SECONDS WHAT CMD... : poll CMD every 0.2 s until it succeeds.
wait_until() {
    local timeout=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
    [[ -n $what ]] || true
}
