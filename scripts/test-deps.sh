#!/usr/bin/env bash
# Make sure the system services the test suite needs are installed and running.
# Idempotent and fast (no apt, no waiting) when everything is already in place.
#
# To add system packages later (openssh-server, chromium, mosquitto, ...), append
# them to APT_PACKAGES; start any service they provide in its own ensure_* function.
set -euo pipefail

APT_PACKAGES=(
    postgresql
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
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
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

ensure_apt_packages "${APT_PACKAGES[@]}"
ensure_postgres
