#!/bin/sh
# keepalived notify script for nfsyncd: nfsyncd-notify.sh primary|backup|fault
#
# `nfsyncctl notify primary` returns once the peer's state is in the kernel, so the time
# between keepalived's transition and this script's end is the time connections may stall.
# Failures are logged and do not stop keepalived's transition (a gateway without synced
# state still forwards new connections).
set -u
role="${1:-}"
case "$role" in
    primary|backup|fault) ;;
    *) echo "usage: $0 primary|backup|fault" >&2; exit 1 ;;
esac
if ! out=$(nfsyncctl notify "$role" 2>&1); then
    logger -t nfsyncd-notify "notify $role failed: $out"
    exit 1
fi
logger -t nfsyncd-notify "notify $role: $out"
