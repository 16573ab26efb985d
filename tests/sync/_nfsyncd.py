"""The nfsyncd sync harness for tests (code in :mod:`nfsyncd.lab.sync_nfsyncd`, shared with
the benchmarks), with the same interface as the conntrackd one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nfsyncd.lab.sync_lab import FW, SyncLab, Transport
from nfsyncd.lab.sync_nfsyncd import Nfsyncd, NfsyncdError

__all__ = ["Nfsyncd", "NfsyncdError", "start_nfsyncd"]


def start_nfsyncd(
    lab: SyncLab,
    fw: FW,
    dir: Path,
    *,
    transport: Transport = "udp",
    ipv6: bool = False,
    link_count: int | None = None,
    **kwargs: Any,
) -> Nfsyncd:
    """nfsyncd on ``fw`` over the lab's links, ignoring the sync link addresses."""
    kwargs.setdefault("links", lab.peer_links(fw, transport, ipv6=ipv6, count=link_count))
    kwargs.setdefault("ignore_addresses", lab.sync_addresses())
    kwargs.setdefault("log_level", "debug")
    try:
        return Nfsyncd(lab.ns(fw), dir, transport=transport, **kwargs)
    except NfsyncdError as exc:
        pytest.fail(f"nfsyncd on {fw} did not start: {exc}", pytrace=False)
