#!/usr/bin/env bash
# Provision a private OCI registry on loopback for venvoy's integration tests:
# Debian's docker-registry (the CNCF distribution registry) on 127.0.0.1:5443,
# TLS from a CA made here, basic auth (htpasswd, bcrypt), and the test base
# image pushed into it as localhost:5443/venvoy/base:bookworm (with skopeo, not
# with venvoy). Called by scripts/provision.sh (as root) with TEST_USER
# CACHE_DIR VENV_DIR DOCKER_TAR REPO_DIR exported; runs on its own too.
#
# Idempotent: the CA, certificate, password and data are kept; the daemon is
# started only when it is not answering; the base is pushed only when the
# registry does not hold it yet.
#
# The CA is NOT added to the system trust store: the tests pass it (via
# SSL_CERT_FILE, --cert-dir, ...) so that "unknown CA" can be tested.
# What the tests read: /etc/venvoy-it/registry.env.
set -euo pipefail

TEST_USER=${TEST_USER:-${VENVOY_TEST_USER:-venvoytest}}
CACHE_DIR=${CACHE_DIR:-${VENVOY_IT_CACHE:-/var/cache/venvoy-it}}
DOCKER_TAR=${DOCKER_TAR:-$CACHE_DIR/base-docker.tar}
REG_DIR=/var/lib/venvoy-registry
ENV_DIR=/etc/venvoy-it
ENV_FILE=$ENV_DIR/registry.env
ADDR=127.0.0.1
PORT=5443
HOST=localhost:$PORT
REG_USER=venvoy
BASE_REF=$HOST/venvoy/base:bookworm
export DEBIAN_FRONTEND=noninteractive
export PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

log() { printf 'provision-registry: %s\n' "$*"; }
die() { printf 'provision-registry: ERROR: %s\n' "$*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root"
T0=$SECONDS

# 1. packages: the registry, htpasswd (bcrypt), skopeo (to push the base), openssl, curl
missing=()
for p in docker-registry apache2-utils skopeo openssl curl; do
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) == "ii " ]] || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then # keep the package from starting its own daemon
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/var/log/venvoy-provision-registry-apt.log 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" \
            >/var/log/venvoy-provision-registry-apt.log 2>&1; } ||
        { tail -n 20 /var/log/venvoy-provision-registry-apt.log >&2; die "apt-get install failed"; }
    if ((own_policy)); then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
fi
REGISTRY_BIN=$(command -v docker-registry || true)
[[ -n $REGISTRY_BIN ]] || die "docker-registry is not installed"

install -d -m 755 "$REG_DIR" "$ENV_DIR"
install -d -m 700 "$REG_DIR/data" "$REG_DIR/private"

# 2. a CA and a server certificate for localhost / 127.0.0.1 (kept while they verify)
CA_CRT=$ENV_DIR/registry-ca.crt
CA_KEY=$REG_DIR/private/ca.key
SRV_CRT=$REG_DIR/server.crt
SRV_KEY=$REG_DIR/private/server.key
certs_ok() {
    [[ -s $CA_CRT && -s $SRV_CRT && -s $SRV_KEY ]] &&
        openssl verify -CAfile "$CA_CRT" "$SRV_CRT" >/dev/null 2>&1 &&
        openssl x509 -in "$SRV_CRT" -noout -checkend 86400 >/dev/null 2>&1
}
if ! certs_ok; then
    log "making a test CA and a server certificate"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=venvoy test registry CA" \
        -keyout "$CA_KEY" -out "$CA_CRT.tmp" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        >/dev/null 2>&1
    mv -f "$CA_CRT.tmp" "$CA_CRT"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$SRV_KEY" \
        -out "$REG_DIR/server.csr" >/dev/null 2>&1
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' \
        >"$REG_DIR/server.ext"
    openssl x509 -req -in "$REG_DIR/server.csr" -CA "$CA_CRT" -CAkey "$CA_KEY" -CAcreateserial \
        -days 3650 -extfile "$REG_DIR/server.ext" -out "$SRV_CRT" >/dev/null 2>&1
    certs_ok || die "the server certificate does not verify"
    RESTART=1
fi
chmod 644 "$CA_CRT" "$SRV_CRT"
chmod 600 "$CA_KEY" "$SRV_KEY"

# 3. basic auth: one user, a random password kept across runs
if [[ ! -s $REG_DIR/private/password ]]; then
    head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$REG_DIR/private/password"
fi
PASSWORD=$(cat "$REG_DIR/private/password")
if ! htpasswd -vb "$REG_DIR/htpasswd" "$REG_USER" "$PASSWORD" >/dev/null 2>&1; then
    htpasswd -Bbc "$REG_DIR/htpasswd" "$REG_USER" "$PASSWORD" >/dev/null 2>&1
    RESTART=1
fi

# 4. the registry's own config
CONFIG=$REG_DIR/config.yml
config_text=$(cat <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $REG_DIR/data
  delete:
    enabled: true
http:
  addr: $ADDR:$PORT
  tls:
    certificate: $SRV_CRT
    key: $SRV_KEY
auth:
  htpasswd:
    realm: venvoy-test-registry
    path: $REG_DIR/htpasswd
EOF
)
if [[ ! -f $CONFIG ]] || ! cmp -s "$CONFIG" <(printf '%s\n' "$config_text"); then
    printf '%s\n' "$config_text" >"$CONFIG"
    RESTART=1
fi

# 5. the daemon: started in the background (no systemd), pid file and log under $REG_DIR
PIDFILE=$REG_DIR/registry.pid
LOGFILE=/var/log/venvoy-registry.log
running() { [[ -s $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
answers() { # 401 from /v2/ without credentials: TLS works and auth is on
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$CA_CRT" "https://$HOST/v2/") == 401 ]]
}
if running && [[ ${RESTART:-0} == 1 ]]; then
    log "restarting the registry (its config changed)"
    pid=$(cat "$PIDFILE")
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$PIDFILE"
fi
start() {
    log "starting $REGISTRY_BIN on $ADDR:$PORT"
    # its own session; the pid file holds the daemon's own pid
    setsid bash -c 'echo $$ >"$1"; exec "$2" serve "$3"' _ "$PIDFILE" "$REGISTRY_BIN" "$CONFIG" \
        </dev/null >>"$LOGFILE" 2>&1 &
}
ok=0
starts=0
for ((i = 0; i < 120; i++)); do # poll, up to 60 s; (re)start when no daemon runs
    if answers; then ok=1; break; fi
    if ! running; then
        ((starts < 3)) || break
        start
        starts=$((starts + 1))
    fi
    sleep 0.5
done
((ok)) || { tail -n 20 "$LOGFILE" >&2; die "the registry does not answer on https://$HOST/v2/"; }

# 6. the test base image, pushed with skopeo (not with venvoy)
[[ -s $DOCKER_TAR ]] || die "no base image archive $DOCKER_TAR"
want=$(tar -xOf "$DOCKER_TAR" manifest.json | /usr/bin/python3 -c \
    'import json,sys; print(json.load(sys.stdin)[0]["Config"].split("/")[-1].removesuffix(".json").removeprefix("sha256:"))')
have=$(skopeo inspect --config --raw --cert-dir "$ENV_DIR/certs" --creds "$REG_USER:$PASSWORD" \
    "docker://$BASE_REF" 2>/dev/null | sha256sum | cut -d' ' -f1 || true)
if [[ $have != "$want" ]]; then
    install -d -m 755 "$ENV_DIR/certs"
    install -m 644 "$CA_CRT" "$ENV_DIR/certs/ca.crt"
    log "pushing $DOCKER_TAR to $BASE_REF"
    skopeo copy --quiet --dest-cert-dir "$ENV_DIR/certs" --dest-creds "$REG_USER:$PASSWORD" \
        "docker-archive:$DOCKER_TAR" "docker://$BASE_REF" >/dev/null ||
        die "skopeo could not push the base image"
fi
install -d -m 755 "$ENV_DIR/certs"
install -m 644 "$CA_CRT" "$ENV_DIR/certs/ca.crt"

# 7. what the tests read (readable by the test user; a test-only password)
cat >"$ENV_FILE.tmp" <<EOF
# Written by scripts/provision-registry.sh: the loopback test registry.
VENVOY_IT_REGISTRY=$HOST
VENVOY_IT_REGISTRY_CA=$CA_CRT
VENVOY_IT_REGISTRY_CERT_DIR=$ENV_DIR/certs
VENVOY_IT_REGISTRY_USER=$REG_USER
VENVOY_IT_REGISTRY_PASSWORD=$PASSWORD
VENVOY_IT_REGISTRY_BASE=$BASE_REF
VENVOY_IT_REGISTRY_BASE_ID=sha256:$want
VENVOY_IT_REGISTRY_PID_FILE=$PIDFILE
EOF
mv -f "$ENV_FILE.tmp" "$ENV_FILE"
chmod 644 "$ENV_FILE"
log "registry https://$HOST ready, base $BASE_REF ($((SECONDS - T0))s; env in $ENV_FILE)"
