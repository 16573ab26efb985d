"""Helper parity between real peers (nfsyncd/sync/parity.py) on the two-gateway lab.

Two nfsyncd announce their helper sets to each other: equal sets show up as such, different
ones are counted and shown on both sides, and ``helper_mismatch = "fatal"`` stops the daemon
with the helpers named.  Against conntrackd, nfsyncd gives up after three announces (which
conntrackd skips as a wrong protocol version, and syncs on), and an FTP expectation
conntrackd syncs, whose helper this node does not assign, is counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nfsyncd.lab.sync_conntrackd import Conntrackd
from nfsyncd.lab.sync_lab import SyncLab, flow_key
from nfsyncd.lab.sync_nfsyncd import Nfsyncd
from nfsyncd.sync.parity import MAX_TRIES, NO_ANNOUNCE
from tests._support import wait_until
from tests.sync._helpers import StartDaemon
from tests.sync.test_interop import (
    _NET_COUNTER,
    exp_key,
    external_expect_keys,
    ftp_sessions,
    prepare,
    wire_errors,
)

pytestmark = pytest.mark.kernel


def helpers_toml(*helpers: str) -> str:
    """[[helpers.assign]] tables (appended after the generated [expectations] table)."""
    out = ""
    for name in helpers:
        out += f'\n[[helpers.assign]]\nhelper = "{name}"\n'
    return out


def start_nfsyncd(
    start_daemon: StartDaemon, lab: SyncLab, fw: str, *helpers: str, **options: Any
) -> Nfsyncd:
    daemon = start_daemon(
        "nfsyncd", lab, fw, expectations=True, extra_toml=helpers_toml(*helpers), **options
    )
    assert isinstance(daemon, Nfsyncd)
    return daemon


def parity(daemon: Nfsyncd) -> dict[str, Any]:
    helpers = daemon.status()["sync"]["helpers"]
    assert isinstance(helpers, dict)
    return helpers


def network(daemon: Nfsyncd) -> dict[str, Any]:
    net = daemon.stats("network")["network"]
    assert isinstance(net, dict)
    return net


def test_same_helpers(sync_lab: SyncLab, start_daemon: StartDaemon) -> None:
    d1 = start_nfsyncd(start_daemon, sync_lab, "fw1", "ftp", "sip")
    d2 = start_nfsyncd(start_daemon, sync_lab, "fw2", "sip", "ftp")
    for d in (d1, d2):
        wait_until(lambda d=d: parity(d)["peer"] is not None, timeout=15, what="peer helpers")
    for d in (d1, d2):
        st = parity(d)
        assert st["local"] == st["peer"] == ["ftp", "sip"], st
        assert (st["missing_here"], st["missing_on_peer"], st["mismatches"]) == ([], [], 0)
        assert st["announces_received"] >= 1 and st["announces_sent"] >= 1
        assert network(d)["Wrong protocol version"] == 0
        assert network(d)["Malformed messages"] == 0
        assert d.stats("sync")["sync"]["helper_mismatches"] == 0


def test_different_helpers_counted_on_both_sides(
    sync_lab: SyncLab, start_daemon: StartDaemon
) -> None:
    d1 = start_nfsyncd(start_daemon, sync_lab, "fw1", "ftp")
    d2 = start_nfsyncd(start_daemon, sync_lab, "fw2", "ftp", "sip")
    for d in (d1, d2):
        wait_until(lambda d=d: parity(d)["mismatches"] == 1, timeout=15, what="a mismatch")
    one, two = parity(d1), parity(d2)
    assert (one["missing_here"], one["missing_on_peer"]) == (["sip"], [])
    assert (two["missing_here"], two["missing_on_peer"]) == ([], ["sip"])
    assert two["peer"] == ["ftp"] and one["peer"] == ["ftp", "sip"]
    assert d1.stats("sync")["sync"]["helper_mismatches"] == 1
    assert "helper mismatch with the peer: missing here: sip" in d1.log_text()
    assert d1.alive and d2.alive  # "warn" is the default


def test_fatal_mismatch_stops_the_daemon(sync_lab: SyncLab, start_daemon: StartDaemon) -> None:
    # The generated [expectations] table cannot be reopened, so the whole config is written
    # by the harness and the key added to it before the start.
    d2 = start_daemon(
        "nfsyncd", sync_lab, "fw2", expectations=True, extra_toml=helpers_toml("ftp", "tftp"),
        start=False,
    )  # fmt: skip
    assert isinstance(d2, Nfsyncd)
    text = d2.config.read_text().replace(
        "[expectations]\nsync = true\n", '[expectations]\nsync = true\nhelper_mismatch = "fatal"\n'
    )
    assert 'helper_mismatch = "fatal"' in text
    d2.config.write_text(text)
    d2.start()
    start_nfsyncd(start_daemon, sync_lab, "fw1", "ftp")
    wait_until(lambda: not d2.alive, timeout=15, what="the fatal mismatch to stop fw2's nfsyncd")
    assert d2.stop() == 1
    log = d2.log_text()
    assert "helper mismatch" in log and "missing on the peer: tftp" in log, log[-2000:]
    assert "Traceback" not in log


def test_conntrackd_peer(sync_lab: SyncLab, start_daemon: StartDaemon, tmp_path: Path) -> None:
    """nfsyncd on fw2 with no helper configured, conntrackd on fw1 syncing an FTP session."""
    lab = sync_lab
    prepare(lab)  # fw1 assigns the ftp helper by hand; conntrackd knows nothing of parity
    ctd = start_daemon("conntrackd", lab, "fw1", expectations=True)
    assert isinstance(ctd, Conntrackd)
    nfs = start_nfsyncd(start_daemon, lab, "fw2")
    with ftp_sessions(lab, tmp_path / "ftp") as ftp:
        wait_until(
            lambda: exp_key(ftp.expectation) in external_expect_keys(nfs),
            timeout=15,
            interval=0.1,
            what="the FTP expectation in nfsyncd's external cache",
        )
    st = parity(nfs)
    assert st["expectations_without_local_helper"].get("ftp", 0) >= 1, st
    assert "helper 'ftp', which this node does not assign" in nfs.log_text()
    wait_until(
        lambda: parity(nfs)["peer_state"] == NO_ANNOUNCE, timeout=15, what="nfsyncd gives up"
    )
    st = parity(nfs)
    assert st["peer"] is None and st["announces_sent"] == MAX_TRIES, st
    # conntrackd skipped the announces and syncs on: nfsyncd's flows reach it
    flows = lab.create_flows("fw2", 20, mark=5)
    keys = {flow_key(f) for f in flows}
    wait_until(lambda: keys <= ctd.external_keys(), timeout=15, what="fw2's flows in conntrackd")
    received = ctd.stats("network").split("\tsend:", 1)[0]
    raw = {k: int(v) for k, v in _NET_COUNTER.findall(received)}
    # each announce skipped as a wrong version (and counted malformed), nothing else
    assert raw["Wrong protocol version"] == parity(nfs)["announces_sent"] == MAX_TRIES, raw
    assert raw["Malformed messages"] == MAX_TRIES, raw
    assert wire_errors(ctd) == {}
    assert wire_errors(nfs) == {}
