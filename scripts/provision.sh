#!/usr/bin/env bash
# Provision a CI machine (Debian 12 bookworm or Debian 13 trixie, run as root,
# no systemd, no container registry) with the real container runtimes that
# venvoy's integration tests use: Docker, Podman (rootful and rootless),
# Apptainer/Singularity, Charliecloud and a single-node Slurm cluster, plus a
# test user, a cached Debian base image and a venv for the test user.
# docs/provisioning.md (in this repository) says what each step installs and
# why it is done the way it is (the runtime quirks of these machines).
#
# Idempotent: a second run changes nothing and takes seconds.
# Exits non-zero if any runtime does not work at the end.
#
# Environment (all optional):
#   VENVOY_TEST_USER      unprivileged test user            (venvoytest)
#   VENVOY_IT_CACHE       base image cache directory        (/var/cache/venvoy-it)
#   VENVOY_IT_VENV        venv for the test user            (/opt/venvoy-it/venv)
#   VENVOY_DEBIAN_MIRROR  mirror for mmdebstrap and sid     (http://deb.debian.org/debian)
set -euo pipefail

TEST_USER=${VENVOY_TEST_USER:-venvoytest}
CACHE_DIR=${VENVOY_IT_CACHE:-/var/cache/venvoy-it}
VENV_DIR=${VENVOY_IT_VENV:-/opt/venvoy-it/venv}
MIRROR=${VENVOY_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_SUITE=bookworm
BASE_IMAGE=localhost/venvoy-test-base:latest
APPTAINER_PREFIX=/opt/apptainer
STATE_DIR=/var/lib/venvoy-provision      # sid apt lists, downloaded .debs, stamps
SMOKE_DIR=/var/tmp/venvoy-provision      # small artefacts for the smoke tests (owned by TEST_USER)
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
export PODMAN_IGNORE_CGROUPSV1_WARNING=1 # Podman 5 (trixie) warns on every call on hybrid cgroups
# Keep the caller's PATH order (a newer docker client may sit in /usr/local/bin),
# but make sure the system directories are on it.
export PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
cd /

START=$SECONDS
log() { printf 'provision: %s\n' "$*"; }
die() { printf 'provision: ERROR: %s\n' "$*" >&2; exit 1; }
step_start() { STEP_T0=$SECONDS; log "$1 ..."; }
step_ok() { log "$1 ... ok ($((SECONDS - STEP_T0))s)"; }

[[ $(id -u) -eq 0 ]] || die "must run as root"
[[ -r /etc/os-release ]] || die "no /etc/os-release"
# shellcheck disable=SC1091
CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
case "$CODENAME" in
    bookworm | trixie) ;;
    *) die "unsupported distribution '$CODENAME' (/etc/debian_version: $(cat /etc/debian_version 2>/dev/null)); need bookworm or trixie" ;;
esac
ARCH=$(dpkg --print-architecture)
[[ $ARCH == amd64 ]] || die "only amd64 is supported (got $ARCH)"
log "Debian $(cat /etc/debian_version) ($CODENAME)"

# put_file PATH MODE OWNER[:GROUP] < content
# Writes PATH atomically only if its content differs; sets FILE_CHANGED=1/0.
put_file() {
    local path=$1 mode=$2 owner=$3 content tmp
    content=$(cat; echo .) # the dot keeps trailing newlines
    content=${content%.}
    if [[ -f $path ]] && cmp -s "$path" <(printf '%s' "$content"); then
        FILE_CHANGED=0
    else
        tmp=$(mktemp "$path.XXXXXX")
        printf '%s' "$content" >"$tmp"
        mv -f "$tmp" "$path"
        FILE_CHANGED=1
    fi
    chown "$owner" "$path"
    chmod "$mode" "$path"
}

# Run a command as the test user with a clean environment.
TEST_UID=""
as_user() {
    (cd / && runuser -u "$TEST_USER" -- env -i \
        HOME="/home/$TEST_USER" USER="$TEST_USER" LOGNAME="$TEST_USER" SHELL=/bin/bash \
        PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 PODMAN_IGNORE_CGROUPSV1_WARNING=1 \
        XDG_RUNTIME_DIR="/run/user/$TEST_UID" "$@")
}

# Start a daemon detached from this script (its own session, no inherited fds).
start_detached() { # LOGFILE CMD...
    local logfile=$1
    shift
    setsid -f "$@" </dev/null >>"$logfile" 2>&1
}

wait_for() { # SECONDS DESCRIPTION CMD...
    local timeout=$1 what=$2 i
    shift 2
    for ((i = 0; i < timeout * 2; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    die "timed out after ${timeout}s waiting for $what"
}

# --------------------------------------------------------------------------
# 1. Debian packages
# --------------------------------------------------------------------------
PKGS=(
    ca-certificates debian-archive-keyring util-linux procps git xz-utils zstd rsync
    docker.io containerd tini iptables
    podman runc conmon catatonit uidmap slirp4netns fuse-overlayfs fuse3
    containernetworking-plugins
    squashfs-tools squashfuse fuse2fs
    charliecloud charliecloud-builders charliecloud-runtime
    mmdebstrap patchelf
    slurm-wlm slurm-client munge
    python3 python3-venv python3-pip
)
if [[ $CODENAME == trixie ]]; then
    PKGS+=(docker-cli) # trixie split the docker client out of docker.io
fi

step_start "packages"
missing=()
for p in "${PKGS[@]}"; do
    if [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) != "ii " ]]; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    log "installing ${#missing[@]} packages: ${missing[*]}"
    # Keep package scripts from starting daemons with their default config;
    # this script starts them itself (there is no systemd here anyway).
    POLICY_RC=/usr/sbin/policy-rc.d
    own_policy=0
    if [[ ! -e $POLICY_RC ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"
        chmod 755 "$POLICY_RC"
        own_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/var/log/venvoy-provision-apt.log 2>&1 ||
        { tail -n 30 /var/log/venvoy-provision-apt.log >&2; die "apt-get install failed (see /var/log/venvoy-provision-apt.log)"; }
    if ((own_policy)); then
        rm -f "$POLICY_RC"
        trap - EXIT
    fi
fi
for cmd in dockerd podman runc catatonit newuidmap slirp4netns fuse-overlayfs mksquashfs squashfuse \
    ch-image ch-run ch-convert mmdebstrap patchelf munged slurmctld slurmd sbatch sinfo runuser; do
    command -v "$cmd" >/dev/null || die "command '$cmd' missing after package installation"
done
step_ok "packages"

# --------------------------------------------------------------------------
# 2. Test user (needed by several later steps)
# --------------------------------------------------------------------------
step_start "test user $TEST_USER"
if ! id -u "$TEST_USER" >/dev/null 2>&1; then
    useradd --create-home --home-dir "/home/$TEST_USER" --shell /bin/bash "$TEST_USER"
fi
TEST_UID=$(id -u "$TEST_USER")
TEST_GID=$(id -g "$TEST_USER")
for f in /etc/subuid /etc/subgid; do
    [[ -e $f ]] || install -m 644 /dev/null "$f"
    # useradd may already have allocated a range; add one only if none exists.
    if ! grep -q "^$TEST_USER:" "$f" && ! grep -q "^$TEST_UID:" "$f"; then
        # Pick the first 65536-block at or above 100000 that no one else uses.
        start=100000
        while awk -F: -v s="$start" '$2 < s + 65536 && s < $2 + $3 { found = 1 } END { exit !found }' "$f"; do
            start=$((start + 65536))
        done
        echo "$TEST_USER:$start:65536" >>"$f"
    fi
done
install -d -m 700 -o "$TEST_USER" -g "$TEST_GID" "/run/user/$TEST_UID"
install -d -m 755 -o "$TEST_USER" -g "$TEST_GID" "/home/$TEST_USER/.config" "/home/$TEST_USER/.config/containers"
put_file "/home/$TEST_USER/.config/containers/storage.conf" 644 "$TEST_USER:$TEST_GID" <<'EOF'
# Written by venvoy scripts/provision.sh: native rootless overlay (kernel >= 5.13)
# instead of the vfs driver, which copies the whole image on every run.
[storage]
driver = "overlay"
EOF
put_file "/home/$TEST_USER/.gitconfig" 644 "$TEST_USER:$TEST_GID" <<EOF
# Written by venvoy scripts/provision.sh (ch-image's build cache needs an identity).
[user]
	name = venvoy test
	email = $TEST_USER@localhost
EOF
install -d -m 755 -o "$TEST_USER" -g "$TEST_GID" "$SMOKE_DIR"
step_ok "test user $TEST_USER (uid $TEST_UID)"

# --------------------------------------------------------------------------
# 3. Docker
# --------------------------------------------------------------------------
step_start "docker"
docker_up() { [[ -S /var/run/docker.sock ]] && /usr/bin/docker version >/dev/null 2>&1; }
[[ -x /usr/bin/docker ]] || die "/usr/bin/docker (Debian's client) missing"
if ! docker_up; then
    log "starting dockerd (log: /var/log/dockerd.log)"
    start_detached /var/log/dockerd.log dockerd
    wait_for 60 "dockerd (/var/run/docker.sock); see /var/log/dockerd.log" docker_up
fi
# The docker first on PATH may be a newer client than Debian's daemon.
# Clients negotiate the API version down; check that this one does.
DOCKER_BIN=$(command -v docker)
if ! docker version >/dev/null 2>&1; then
    api=$(/usr/bin/docker version --format '{{.Server.APIVersion}}')
    if DOCKER_API_VERSION=$api docker version >/dev/null 2>&1; then
        log "WARNING: $DOCKER_BIN needs DOCKER_API_VERSION=$api to talk to Debian's dockerd"
        export DOCKER_API_VERSION=$api
    else
        die "$DOCKER_BIN cannot talk to dockerd: $(docker version 2>&1 | tail -n 1)"
    fi
fi
step_ok "docker"

# --------------------------------------------------------------------------
# 4. Podman
# --------------------------------------------------------------------------
step_start "podman"
install -d -m 755 /etc/containers
put_file /etc/containers/containers.conf 644 root:root <<'EOF'
# Written by venvoy scripts/provision.sh (see shared/RUNTIMES.md).
[containers]
# No CAP_SYS_RESOURCE and an open-files hard limit of 20000 on these machines:
# the default rlimits fail with "setrlimit RLIMIT_NOFILE: Operation not permitted".
default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]

[engine]
# cgroups are mounted in hybrid mode, which crun refuses; no systemd either.
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
podman info >/dev/null || die "rootful podman does not work: $(podman info 2>&1 | tail -n 3)"
as_user podman info >/dev/null 2>&1 || as_user podman system migrate >/dev/null 2>&1 || true
as_user podman info >/dev/null 2>&1 || die "rootless podman does not work: $(as_user podman info 2>&1 | tail -n 3)"
driver=$(as_user podman info --format '{{.Store.GraphDriverName}}')
if [[ $driver != overlay ]]; then
    log "rootless storage of $TEST_USER uses '$driver'; resetting it to overlay"
    as_user podman system reset --force >/dev/null
    driver=$(as_user podman info --format '{{.Store.GraphDriverName}}')
    [[ $driver == overlay ]] || die "rootless podman storage driver is '$driver', want overlay"
fi
step_ok "podman"

# --------------------------------------------------------------------------
# 5. Apptainer (Debian sid package; on bookworm with sid's glibc beside it)
# --------------------------------------------------------------------------
step_start "apptainer"
chmod 666 /dev/fuse # unprivileged squashfuse mounts of SIF files
apptainer_ok() { command -v apptainer >/dev/null && apptainer --version >/dev/null 2>&1; }
if ! apptainer_ok; then
    sid_dir=$STATE_DIR/sid
    install -d -m 755 "$sid_dir" "$sid_dir/lists/partial" "$sid_dir/cache/archives/partial" "$sid_dir/debs"
    cat >"$sid_dir/sid.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    SID_APT=(-o "Dir::Etc::SourceList=$sid_dir/sid.sources" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$sid_dir/lists" -o "Dir::Cache=$sid_dir/cache" -o APT::Sandbox::User=root
        # sid's Release expires after a week: a frozen mirror or a clock that is off must not stop us.
        -o Acquire::Check-Valid-Until=false)
    apt-get "${SID_APT[@]}" update -qq
    rm -f "$sid_dir"/debs/*.deb
    (cd "$sid_dir/debs" && apt-get "${SID_APT[@]}" download -qq apptainer libc6 libseccomp2 libsqlite3-0)
    deb=$(ls "$sid_dir"/debs/apptainer_*.deb)
    need_libc=$(dpkg-deb -f "$deb" Depends | grep -o 'libc6 (>= [^)]*)' | sed 's/.*>= //; s/)//')
    have_libc=$(dpkg-query -W -f='${Version}' libc6)
    installed=0
    if dpkg --compare-versions "$have_libc" ge "$need_libc"; then
        # trixie: the sid package's needs are met; install it the normal way.
        log "host glibc $have_libc >= $need_libc: installing $(basename "$deb") directly"
        if apt-get install -y -qq --no-install-recommends "$deb" >>/var/log/venvoy-provision-apt.log 2>&1; then
            installed=1
            ln -sfn /usr/bin/apptainer /usr/local/bin/apptainer
            ln -sfn /usr/bin/apptainer /usr/local/bin/singularity
        else
            log "direct install failed; falling back to a relocated install in $APPTAINER_PREFIX"
        fi
    fi
    if ((!installed)); then
        log "host glibc $have_libc < $need_libc: relocated install in $APPTAINER_PREFIX with sid's glibc"
        rm -rf "$APPTAINER_PREFIX.new"
        install -d -m 755 "$APPTAINER_PREFIX.new/glibc" "$APPTAINER_PREFIX.new/glibc-root"
        dpkg -x "$deb" "$APPTAINER_PREFIX.new"
        for lib in libc6 libseccomp2 libsqlite3-0; do
            dpkg -x "$sid_dir"/debs/"${lib}"_*.deb "$APPTAINER_PREFIX.new/glibc-root"
        done
        # Flatten the libraries into one directory (the interpreter and RPATH point there).
        cp -a "$APPTAINER_PREFIX.new"/glibc-root/usr/lib/x86_64-linux-gnu/. "$APPTAINER_PREFIX.new/glibc/"
        rm -rf "$APPTAINER_PREFIX.new/glibc-root"
        # Paths must be the final ones (after the rename below).
        for bin in usr/bin/apptainer usr/lib/x86_64-linux-gnu/apptainer/bin/starter; do
            patchelf --set-interpreter "$APPTAINER_PREFIX/glibc/ld-linux-x86-64.so.2" \
                --force-rpath --set-rpath "$APPTAINER_PREFIX/glibc" "$APPTAINER_PREFIX.new/$bin"
        done
        # Apptainer is relocatable: it finds etc/ and var/ relative to its binary.
        ln -sfn ../etc "$APPTAINER_PREFIX.new/usr/etc"
        ln -sfn ../../etc "$APPTAINER_PREFIX.new/usr/lib/etc"
        install -d -m 755 "$APPTAINER_PREFIX.new/usr/lib/var/lib/apptainer/mnt/session"
        ln -sfn apptainer "$APPTAINER_PREFIX.new/usr/bin/singularity"
        rm -rf "$APPTAINER_PREFIX"
        mv "$APPTAINER_PREFIX.new" "$APPTAINER_PREFIX"
        ln -sfn "$APPTAINER_PREFIX/usr/bin/apptainer" /usr/local/bin/apptainer
        ln -sfn "$APPTAINER_PREFIX/usr/bin/singularity" /usr/local/bin/singularity
    fi
fi
for cmd in apptainer singularity; do
    "$cmd" --version >/dev/null 2>&1 || die "'$cmd --version' fails as root: $("$cmd" --version 2>&1 | tail -n 3)"
    as_user "$cmd" --version >/dev/null 2>&1 || die "'$cmd --version' fails as $TEST_USER: $(as_user "$cmd" --version 2>&1 | tail -n 3)"
done
step_ok "apptainer"

# --------------------------------------------------------------------------
# 6. Slurm, single node
# --------------------------------------------------------------------------
step_start "slurm"
NODE=$(hostname -s)
NCPU=$(nproc)
# munge
install -d -m 700 -o munge -g munge /etc/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
install -d -m 755 -o munge -g munge /run/munge
install -d -m 700 -o munge -g munge /var/lib/munge /var/log/munge
munge_up() { munge -n </dev/null | unmunge >/dev/null; }
if ! munge_up 2>/dev/null; then
    runuser -u munge -- /usr/sbin/munged
    wait_for 20 "munged" munge_up
fi
# slurm
install -d -m 755 /etc/slurm /var/log/slurm
install -d -m 755 -o slurm -g slurm /var/lib/slurm /var/lib/slurm/slurmctld
install -d -m 755 /var/lib/slurm/slurmd
chown slurm:slurm /var/log/slurm
put_file /etc/slurm/slurm.conf 644 root:root <<EOF
# Written by venvoy scripts/provision.sh: a single-node cluster for tests.
ClusterName=venvoy
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NCPU State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
if ((FILE_CHANGED)); then
    # New configuration: restart daemons this script (or an earlier run) started.
    for pf in /run/slurmd.pid /run/slurmctld.pid; do
        if pid_alive "$pf"; then
            pid=$(cat "$pf")
            kill "$pid"
            for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        fi
    done
fi
ctld_up() { scontrol ping | grep -q 'is UP'; }
if ! pid_alive /run/slurmctld.pid || ! ctld_up 2>/dev/null; then
    slurmctld
    wait_for 30 "slurmctld (see /var/log/slurm/slurmctld.log)" ctld_up
fi
if ! pid_alive /run/slurmd.pid; then
    slurmd
fi
node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1; }
node_idle() { [[ $(node_state) == idle* ]]; }
for ((i = 0; i < 60; i++)); do
    state=$(node_state)
    case "$state" in
        idle*) break ;;
        down* | drain* | fail*)
            scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
done
node_idle || die "slurm node $NODE is '$(node_state)', not idle (see /var/log/slurm/)"
step_ok "slurm"

# --------------------------------------------------------------------------
# 7. Base image cache
# --------------------------------------------------------------------------
step_start "base image ($CACHE_DIR)"
install -d -m 755 "$CACHE_DIR"
ROOTFS=$CACHE_DIR/base-rootfs.tar
DOCKER_TAR=$CACHE_DIR/base-docker.tar
rootfs_valid() { [[ -s $ROOTFS ]] && tar -tf "$ROOTFS" ./usr/bin/python3 >/dev/null 2>&1; }
docker_tar_valid() { [[ -s $DOCKER_TAR && -s $DOCKER_TAR.sha256 ]] && (cd "$CACHE_DIR" && sha256sum --check --status base-docker.tar.sha256); }
rebuilt=0
if ! rootfs_valid; then
    log "mmdebstrap $BASE_SUITE -> $ROOTFS"
    tmp=$CACHE_DIR/.base-rootfs.tmp.tar
    rm -f "$tmp"
    mmdebstrap --quiet --variant=minbase --format=tar \
        --include=python3,python3-venv,python3-pip,ca-certificates \
        "$BASE_SUITE" "$tmp" "$MIRROR" >/var/log/venvoy-provision-mmdebstrap.log 2>&1 ||
        { tail -n 30 /var/log/venvoy-provision-mmdebstrap.log >&2; die "mmdebstrap failed"; }
    chmod 644 "$tmp"
    mv -f "$tmp" "$ROOTFS"
    rootfs_valid || die "$ROOTFS has no /usr/bin/python3"
    rebuilt=1
fi
if ((rebuilt)) || ! docker_tar_valid; then
    log "podman import + save -> $DOCKER_TAR"
    podman import --quiet "$ROOTFS" "$BASE_IMAGE" >/dev/null
    tmp=$CACHE_DIR/.base-docker.tmp.tar
    rm -f "$tmp"
    podman save --quiet --format docker-archive -o "$tmp" "$BASE_IMAGE"
    chmod 644 "$tmp"
    mv -f "$tmp" "$DOCKER_TAR"
    (cd "$CACHE_DIR" && sha256sum base-docker.tar >base-docker.tar.sha256.tmp && mv -f base-docker.tar.sha256.tmp base-docker.tar.sha256)
    rebuilt=1
fi
chmod 755 "$CACHE_DIR"
chmod 644 "$ROOTFS" "$DOCKER_TAR" "$DOCKER_TAR.sha256"
# The image ID (config digest) of the cached archive; stores holding another ID get it reloaded.
BASE_ID=$(tar -xOf "$DOCKER_TAR" manifest.json | /usr/bin/python3 -c \
    'import json,sys; print(json.load(sys.stdin)[0]["Config"].split("/")[-1].removesuffix(".json").removeprefix("sha256:"))')
step_ok "base image ($CACHE_DIR)"

# --------------------------------------------------------------------------
# 8. venv for the test user
# --------------------------------------------------------------------------
step_start "venv $VENV_DIR"
# The test user's venvoy runs from a copy of src/ with this venv's Python: it
# needs venvoy's runtime dependencies, read from pyproject.toml (a stamp keeps
# the step idempotent and notices when they change).
DEPS=$(/usr/bin/python3 -c 'import sys, tomllib; print("\n".join(d for d in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"] if "python_version" not in d))' "$REPO_DIR/pyproject.toml")
venv_ok() { [[ -x $VENV_DIR/bin/python && "$(cat "$VENV_DIR/.venvoy-deps" 2>/dev/null)" == "$DEPS" ]] &&
    as_user "$VENV_DIR/bin/python" -c 'import platformdirs, zstandard' >/dev/null 2>&1; }
if ! venv_ok; then
    rm -rf "$VENV_DIR"
    install -d -m 755 "$(dirname "$VENV_DIR")"
    /usr/bin/python3 -m venv "$VENV_DIR"
    # A TLS-intercepting proxy may sit in front of PyPI: trust the host's CA bundle.
    # shellcheck disable=SC2086
    PIP_CERT=${PIP_CERT:-$CA_BUNDLE} "$VENV_DIR/bin/pip" install --quiet --disable-pip-version-check \
        $DEPS
    printf '%s' "$DEPS" > "$VENV_DIR/.venvoy-deps"
    chmod -R a+rX "$(dirname "$VENV_DIR")"
    venv_ok || die "$VENV_DIR does not work for $TEST_USER"
fi
step_ok "venv $VENV_DIR"

# --------------------------------------------------------------------------
# 8b. A private registry on loopback (TLS from a test CA, basic auth) and
# 8c. a 3-node Slurm cluster in namespaces with accounting: own scripts.
# --------------------------------------------------------------------------
export TEST_USER CACHE_DIR VENV_DIR DOCKER_TAR REPO_DIR
bash "$REPO_DIR/scripts/provision-registry.sh"
bash "$REPO_DIR/scripts/provision-cluster.sh"

# --------------------------------------------------------------------------
# 9. Check every runtime for real, print a summary
# --------------------------------------------------------------------------
step_start "smoke tests"
declare -A RESULT VERSION
check() { # NAME VERSION-CMD... -- TEST-CMD...
    local name=$1 out
    shift
    local vcmd=()
    while [[ $1 != -- ]]; do vcmd+=("$1"); shift; done
    shift
    VERSION[$name]=$("${vcmd[@]}" 2>/dev/null | head -n 1) || VERSION[$name]="?"
    if out=$("$@" 2>&1); then
        RESULT[$name]=ok
    else
        RESULT[$name]=FAILED
        log "$name FAILED: $(printf '%s' "$out" | tail -n 5)"
    fi
}
# Load the base image into a store unless it holds the same image already.
ensure_image() { # podman|docker|user-podman
    local id
    case "$1" in
        docker) id=$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)
            [[ ${id#sha256:} == "$BASE_ID" ]] || docker load -q -i "$DOCKER_TAR" >/dev/null ;;
        podman) id=$(podman image inspect -f '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)
            [[ $id == "$BASE_ID" ]] || podman load -q -i "$DOCKER_TAR" >/dev/null ;;
        user-podman) id=$(as_user podman image inspect -f '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)
            [[ $id == "$BASE_ID" ]] || as_user podman load -q -i "$DOCKER_TAR" >/dev/null ;;
    esac
}
docker_smoke() { ensure_image docker && docker run --rm --init --network=host "$BASE_IMAGE" python3 -c 'print(1)'; }
podman_smoke() { ensure_image podman && podman run --rm --init --network=host "$BASE_IMAGE" python3 -c 'print(1)'; }
user_podman_smoke() { ensure_image user-podman && as_user podman run --rm --init --network=none "$BASE_IMAGE" python3 -c 'print(1)'; }
# Charliecloud and Apptainer share a directory image unpacked from the rootfs tar.
CH_IMG=$SMOKE_DIR/base
ch_image_dir() {
    if [[ ! -x $CH_IMG/usr/bin/python3 || $CH_IMG/.venvoy-stamp -ot $ROOTFS ]]; then
        rm -rf "$CH_IMG"
        as_user ch-convert -i tar -o dir "$ROOTFS" "$CH_IMG" >/dev/null && as_user touch "$CH_IMG/.venvoy-stamp"
    fi
}
ch_smoke() { ch_image_dir && as_user ch-run "$CH_IMG" -- python3 -c 'print(1)'; }
# A tiny SIF (dash + libc) checks the SIF path: squashfuse, /dev/fuse, sid's glibc.
TINY=$SMOKE_DIR/tiny
tiny_sif() {
    [[ -s $TINY.sif ]] && return 0
    rm -rf "$TINY"
    install -d -o "$TEST_USER" "$TINY" "$TINY"/{bin,lib64,lib/x86_64-linux-gnu,etc,tmp,proc,sys,dev}
    cp -L /bin/dash "$TINY/bin/sh"
    cp -L /lib64/ld-linux-x86-64.so.2 "$TINY/lib64/"
    cp -L /lib/x86_64-linux-gnu/libc.so.6 "$TINY/lib/x86_64-linux-gnu/"
    chown -R "$TEST_USER" "$TINY"
    as_user apptainer --silent build "$TINY.sif.tmp" "$TINY" && mv -f "$TINY.sif.tmp" "$TINY.sif"
}
apptainer_smoke() {
    ch_image_dir && as_user apptainer --silent exec "$CH_IMG" python3 -c 'print(1)' &&
        tiny_sif && as_user apptainer --silent exec "$TINY.sif" /bin/sh -c 'echo sif-ok'
}
singularity_smoke() { as_user singularity --version; }
slurm_smoke() {
    local out=$SMOKE_DIR/slurm-smoke.out
    rm -f "$out"
    # shellcheck disable=SC2016 # expanded by the job's shell
    as_user timeout 60 sbatch --quiet --wait -o "$out" --wrap 'echo "job=$SLURM_JOB_ID"' &&
        grep -q '^job=[0-9]' "$out"
}

check docker docker version --format 'client {{.Client.Version}}, server {{.Server.Version}} (API {{.Server.APIVersion}})' -- docker_smoke
check podman-rootful podman --version -- podman_smoke
check "podman-rootless($TEST_USER)" as_user podman --version -- user_podman_smoke
check apptainer as_user apptainer --version -- apptainer_smoke
check singularity as_user singularity --version -- singularity_smoke
# shellcheck disable=SC2016 # expanded by the test user's shell
check ch-run as_user sh -c 'echo "ch-run $(ch-run --version 2>&1)"' -- ch_smoke
check slurm sinfo --version -- slurm_smoke
step_ok "smoke tests"

failed=0
for name in docker podman-rootful "podman-rootless($TEST_USER)" apptainer singularity ch-run slurm; do
    printf 'provision: %-28s %-8s %s\n' "$name" "${RESULT[$name]}" "${VERSION[$name]}"
    [[ ${RESULT[$name]} == ok ]] || failed=1
done
log "test user $TEST_USER uid $TEST_UID; base image $ROOTFS, $DOCKER_TAR; venv $VENV_DIR"
if ((failed)); then
    log "FAILED after $((SECONDS - START))s"
    exit 1
fi
log "all runtimes ok ($((SECONDS - START))s)"
