"""The conntrackd harness for tests (code in :mod:`nfsyncd.lab.sync_conntrackd`, shared
with the benchmarks): start failures become test failures with the daemon's log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nfsyncd.lab.sync_conntrackd import Conntrackd, ConntrackdError, parse_dump_line, parse_stats
from nfsyncd.lab.sync_lab import FW, SyncLab, Transport

__all__ = ["Conntrackd", "ConntrackdError", "parse_dump_line", "parse_stats", "start_conntrackd"]


def start_conntrackd(
    lab: SyncLab,
    fw: FW,
    dir: Path,
    *,
    transport: Transport = "udp",
    ipv6: bool = False,
    link_count: int | None = None,
    **kwargs: Any,
) -> Conntrackd:
    """conntrackd on ``fw`` over the lab's links, ignoring the sync link addresses."""
    kwargs.setdefault("links", lab.peer_links(fw, transport, ipv6=ipv6, count=link_count))
    kwargs.setdefault("ignore_addresses", lab.sync_addresses())
    try:
        return Conntrackd(lab.ns(fw), dir, transport=transport, **kwargs)
    except ConntrackdError as exc:
        pytest.fail(f"conntrackd on {fw} did not start: {exc}", pytrace=False)
