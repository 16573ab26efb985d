"""Start either daemon on a lab gateway the same way (tests and benchmarks share this)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .sync_conntrackd import Conntrackd, ConntrackdError
from .sync_lab import FW, SyncDaemon, SyncLab, Transport
from .sync_nfsyncd import Nfsyncd, NfsyncdError

__all__ = ["DAEMON_KINDS", "START_ERRORS", "start_sync_daemon"]

DAEMON_KINDS: dict[str, type[Conntrackd] | type[Nfsyncd]] = {
    "conntrackd": Conntrackd,
    "nfsyncd": Nfsyncd,
}
#: what a daemon that did not start raises (the message carries its log)
START_ERRORS = (ConntrackdError, NfsyncdError)


def start_sync_daemon(
    kind: str,
    lab: SyncLab,
    fw: FW,
    directory: Path,
    *,
    transport: Transport = "udp",
    ipv6: bool = False,
    link_count: int | None = None,
    **options: Any,
) -> SyncDaemon:
    """``kind`` on ``fw`` over the lab's links, ignoring the sync link addresses (unless the
    options say otherwise)."""
    try:
        cls = DAEMON_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown daemon kind {kind!r} ({', '.join(DAEMON_KINDS)})") from None
    options.setdefault("links", lab.peer_links(fw, transport, ipv6=ipv6, count=link_count))
    options.setdefault("ignore_addresses", lab.sync_addresses())
    daemon: SyncDaemon = cls(lab.ns(fw), directory, transport=transport, **options)
    return daemon
