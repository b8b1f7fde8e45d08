#!/usr/bin/env bash
# Make sure the system services the test suite needs are installed and running.
# Idempotent and fast (no apt, no waiting) when everything is already in place.
#
# To add system packages later, append them to
# APT_PACKAGES; start any service they provide in its own ensure_* function.
#
# openssh-server, sudo and acl serve the SSH remote-execution tests: they start their
# own sshd processes on loopback ports (tests/support/sshd.py), so the package's
# system sshd on port 22 is neither needed nor started here.
set -euo pipefail

APT_PACKAGES=(
    postgresql
    openssh-server
    sudo
    acl
    chromium
    mosquitto
)

PG_HOST=127.0.0.1
PG_PORT=5432
PG_USER=postgres
PG_WAIT_SECONDS=30

log() { echo "[test-deps] $*" >&2; }

SUDO=""
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
fi

# Install whichever of the given packages `dpkg -s` does not report as installed.
# `apt-get update` runs only when something actually has to be installed.
ensure_apt_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg -s "$pkg" >/dev/null 2>&1; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    log "installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    block_service_starts
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    unblock_service_starts
}

# While packages install, keep their maintainer scripts from starting services
# (openssh-server would start a system sshd on port 22, which fails or lingers in
# containers). A policy-rc.d that exits 101 makes invoke-rc.d skip every start; one
# that already exists (as in Docker images) is left alone. Services the tests need
# are started by their ensure_* function or by the tests themselves.
POLICY_RC_D=/usr/sbin/policy-rc.d
POLICY_RC_D_OURS=0

block_service_starts() {
    if [[ -e "$POLICY_RC_D" ]]; then
        return 0
    fi
    printf '#!/bin/sh\n# Temporary, from scripts/test-deps.sh\nexit 101\n' |
        $SUDO tee "$POLICY_RC_D" >/dev/null
    $SUDO chmod 755 "$POLICY_RC_D"
    POLICY_RC_D_OURS=1
    trap unblock_service_starts EXIT
}

unblock_service_starts() {
    if ((POLICY_RC_D_OURS)); then
        $SUDO rm -f "$POLICY_RC_D"
        POLICY_RC_D_OURS=0
    fi
}

pg_cluster_online() {
    command -v pg_lsclusters >/dev/null 2>&1 &&
        pg_lsclusters --no-header 2>/dev/null | awk '$4 == "online" { found = 1 } END { exit !found }'
}

ensure_postgres() {
    if ! pg_cluster_online; then
        ensure_apt_packages postgresql
        local version
        version=$(ls /etc/postgresql 2>/dev/null | head -1 || true)
        if [[ -z "$version" ]]; then
            log "ERROR: no PostgreSQL cluster configured under /etc/postgresql"
            exit 1
        fi
        # A fresh package install may already have started its cluster.
        if ! pg_cluster_online; then
            log "starting PostgreSQL cluster $version/main"
            $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start
        fi
    fi

    local waited=0
    until pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; do
        if ((waited >= PG_WAIT_SECONDS)); then
            log "ERROR: PostgreSQL not accepting connections on $PG_HOST:$PG_PORT after ${PG_WAIT_SECONDS}s"
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done

    if ! psql -X -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -w \
        -c 'select 1' >/dev/null 2>&1; then
        log "ERROR: cannot connect as '$PG_USER' to $PG_HOST:$PG_PORT without a password."
        log "       The tests need trust auth for that user over TCP. Add to pg_hba.conf:"
        log "         host all $PG_USER 127.0.0.1/32 trust"
        log "       then reload: pg_ctlcluster <version> main reload"
        exit 1
    fi
}

# The SSH tests run their own sshd (tests/support/sshd.py); it only needs the binary
# and its privilege-separation directory, which lives on /run and so is gone after
# a reboot until something recreates it.
ensure_sshd() {
    if [[ ! -x /usr/sbin/sshd ]]; then
        log "ERROR: /usr/sbin/sshd missing although openssh-server is installed"
        exit 1
    fi
    if [[ ! -d /run/sshd ]]; then
        $SUDO mkdir -p -m 0755 /run/sshd
    fi
}

# Pull-mode remote execution tests publish to the MQTT broker on 127.0.0.1:1883.
MQTT_PORT=1883

mqtt_listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$MQTT_PORT") 2>/dev/null
}

ensure_mosquitto() {
    if mqtt_listening; then
        return 0
    fi
    ensure_apt_packages mosquitto
    log "starting mosquitto on 127.0.0.1:$MQTT_PORT"
    local conf
    conf=$(mktemp /tmp/test-deps-mosquitto-XXXXXX.conf)
    printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$MQTT_PORT" >"$conf"
    $SUDO mosquitto -d -c "$conf"
    local waited=0
    until mqtt_listening; do
        if ((waited >= 10)); then
            log "ERROR: mosquitto is not listening on 127.0.0.1:$MQTT_PORT"
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

ensure_apt_packages "${APT_PACKAGES[@]}"
ensure_postgres
ensure_sshd
ensure_mosquitto
