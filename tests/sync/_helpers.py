"""What several sync test files need: the fixture types, a standard set of real
connections, and the wait for keys to arrive (which says what is missing when they do not)."""

from __future__ import annotations

from collections.abc import Callable

from nfsyncd.lab.sync_lab import FlowKey, SyncDaemon, SyncLab
from tests._support import wait_until

#: the ``start_daemon`` fixture: ``(kind, lab, fw, **options)``
StartDaemon = Callable[..., SyncDaemon]
#: the ``start_pair`` fixture: ``(kind1, kind2, lab, **options)``
StartPair = Callable[..., tuple[SyncDaemon, SyncDaemon]]


def real_traffic(lab: SyncLab) -> set[FlowKey]:
    """A TCP connection, a UDP exchange and a ping through fw1, over IPv4 and IPv6."""
    return {
        lab.tcp_flow("fw1"),
        lab.udp_flow("fw1"),
        lab.ping("fw1"),
        lab.tcp_flow("fw1", v6=True),
        lab.udp_flow("fw1", v6=True),
        lab.ping("fw1", v6=True),
    }


def wait_keys(
    get: Callable[[], set[FlowKey]], want: set[FlowKey], what: str, timeout: float = 15.0
) -> None:
    """Until ``get()`` holds all of ``want``; on failure, print a few of the missing keys."""
    try:
        wait_until(lambda: want <= get(), timeout=timeout, interval=0.1, what=what)
    except BaseException:
        missing = want - get()
        print(f"{len(missing)} missing, e.g. {[k.describe() for k in list(missing)[:8]]}")
        raise


def wait_external(daemon: SyncDaemon, want: set[FlowKey], *, timeout: float = 15.0) -> None:
    """Until ``daemon``'s external cache holds all of ``want``."""
    wait_keys(daemon.external_keys, want, f"flows in {daemon.kind}'s external cache", timeout)
