#!/usr/bin/env bash
# Install everything the tests, the demo and the benchmarks need on a Debian 12 machine:
# the Debian packages (kernel tools, the real conntrackd/keepalived/lftp peers, Debian's
# python3-nftables binding) and a project virtualenv in .venv with the package installed
# editable plus its dev extras. Idempotent: a second run changes nothing and is quick.
set -euo pipefail

step() { printf '==> %s\n' "$*"; }
die() { printf 'install-deps: error: %s\n' "$*" >&2; exit 1; }

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs Debian packages); try: sudo $0"
command -v apt-get >/dev/null && command -v dpkg-query >/dev/null \
    || die "needs a Debian-like system with apt-get and dpkg-query"

packages=(
    nftables conntrack python3-nftables python3-venv python3-pip iproute2
    conntrackd keepalived lftp procps iputils-ping libcap2-bin
)

step "checking Debian packages"
missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "installed" ] || missing+=("$pkg")
done

if [ ${#missing[@]} -gt 0 ]; then
    # Keep the services these packages ship (conntrackd, keepalived) from starting on the
    # host while they are installed. An existing policy-rc.d belongs to the machine's owner:
    # it is used as it is and never modified.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        step "creating temporary $policy (no service starts during install)"
        printf '#!/bin/sh\n# temporary, created by nfsyncd scripts/install-deps.sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        trap 'rm -f "$policy"; printf "==> removed temporary %s\n" "$policy"' EXIT
        trap 'exit 130' INT TERM HUP   # so the EXIT trap also runs when interrupted
    fi

    fresh=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mtime -1 2>/dev/null | head -n 1)
    if [ -z "$fresh" ]; then
        step "apt-get update (package lists missing or older than one day)"
        apt-get update
    else
        step "apt package lists are fresh; skipping apt-get update"
    fi
    step "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
else
    step "all Debian packages present"
fi

venv="$repo/.venv"
# --system-site-packages: Debian's python3-nftables (the official binding, matching the
# installed libnftables) is not on PyPI in a usable form; the venv sees it from the system.
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
    step "creating virtualenv $venv"
    rm -rf "$venv"
    /usr/bin/python3 -m venv --system-site-packages "$venv"
else
    step "virtualenv $venv exists"
fi

step "checking that the venv imports Debian's nftables binding"
"$venv/bin/python" -c 'import nftables' \
    || die "'import nftables' fails inside $venv (is python3-nftables installed? was the venv made with --system-site-packages by /usr/bin/python3?)"

stamp="$venv/.stamp"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/install-deps.sh ]; then
    step "python packages up to date (stamp newer than pyproject.toml and this script)"
else
    step "pip install -e '.[dev]' pyftpdlib (editable_mode=compat: a plain path entry, no import hook to load at every start-up)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --config-settings editable_mode=compat -e '.[dev]' pyftpdlib
    touch "$stamp"
fi

step "done"
