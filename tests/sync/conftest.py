"""Fixtures of the sync tests: the two-gateway lab and daemons (conntrackd or nfsyncd) on it.

* ``sync_lab``: a :class:`SyncLab` with one sync link (IPv4 + IPv6); ``make_sync_lab(links=N)``
  for more links.
* ``start_daemon(kind, lab, fw, **options)``: start ``"conntrackd"`` or ``"nfsyncd"`` on
  ``fw`` with the lab's links (``transport=``, ``ipv6=``, ``link_count=`` and the harness
  options: ``mode``, ``expectations``, ``disable_external_cache`` ...). Every daemon is
  stopped after the test (by PID) and its log printed, so a failing test shows it.
  ``conntrackd_pair`` / ``start_pair(kind1, kind2, lab, **options)`` start one per side.

Tests are parametrised over the daemon with ``@pytest.mark.parametrize("kind", DAEMONS)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nfsyncd.lab.sync_daemons import START_ERRORS, start_sync_daemon
from nfsyncd.lab.sync_lab import FW, SyncDaemon, SyncLab
from tests._support import require_binary
from tests.sync._helpers import StartDaemon, StartPair

DAEMONS = ("conntrackd", "nfsyncd")


@pytest.fixture
def make_sync_lab(root: None) -> Iterator[Callable[..., SyncLab]]:
    labs: list[SyncLab] = []

    def make(links: int = 1, **kwargs: Any) -> SyncLab:
        lab = SyncLab(links, **kwargs)
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.close()


@pytest.fixture
def sync_lab(make_sync_lab: Callable[..., SyncLab]) -> SyncLab:
    return make_sync_lab(1)


@pytest.fixture
def start_daemon(root: None, tmp_path: Path) -> Iterator[StartDaemon]:
    daemons: list[SyncDaemon] = []
    counter = itertools.count(1)

    def start(kind: str, lab: SyncLab, fw: FW, **options: Any) -> SyncDaemon:
        directory = tmp_path / f"{fw}-{kind}-{next(counter)}"
        if kind == "conntrackd":
            require_binary("conntrackd")
        else:
            options.setdefault("log_level", "debug")
        try:
            daemon = start_sync_daemon(kind, lab, fw, directory, **options)
        except START_ERRORS as exc:
            pytest.fail(f"{kind} on {fw} did not start: {exc}", pytrace=False)
        daemons.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for daemon in daemons:
            try:
                daemon.close()
            finally:
                print(f"==== {daemon.kind} log\n{daemon.log_text()}")


@pytest.fixture
def start_pair(start_daemon: StartDaemon) -> StartPair:
    """``start_pair(kind1, kind2, lab, **options)``: kind1 on fw1, kind2 on fw2."""

    def start(
        kind1: str, kind2: str, lab: SyncLab, **options: Any
    ) -> tuple[SyncDaemon, SyncDaemon]:
        d1 = start_daemon(kind1, lab, "fw1", **options)
        d2 = start_daemon(kind2, lab, "fw2", **options)
        if options.get("transport") == "tcp":  # each side connects at most once a second
            d1.wait_connected()
            d2.wait_connected()
        return d1, d2

    return start
