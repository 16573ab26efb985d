"""Two nfsyncd nodes in the two-gateway lab: every mode and transport, end to end.

What an operator relies on when the VIP moves: what fw1's kernel tracks reaches fw2's
external cache (or, without one, fw2's kernel); a commit or ``notify primary`` puts it into
fw2's kernel as fw1 had it (tuples, NAT, mark, zone, labels, helper, status, FTP
expectations and their masters); deletes follow; a restarted peer gets everything back and
readiness says so only once it has; the counters an operator watches move.

Both firewalls load the same extra ruleset (as a real pair would): the ftp helper on
control connections to port 2121, a mark rule, a ``ct label`` reference (without one the
kernel drops labels) and nat chains (DNAT 8081 -> 8082, SNAT of 8082 to port 61000).
"""

from __future__ import annotations

import ftplib
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlsplit

import pytest

from nfsyncd.config import CT_EVENT_NAMES
from nfsyncd.kernel import Conntrack
from nfsyncd.lab.netns import Netns
from nfsyncd.lab.sync_conntrackd import parse_dump_line
from nfsyncd.lab.sync_lab import (
    FW,
    TRAFFIC_FW,
    TRAFFIC_FW6,
    TRAFFIC_SRV,
    TRAFFIC_SRV6,
    FlowKey,
    SyncLab,
    flow_key,
    json_flow_key,
    lab_flows,
)
from nfsyncd.lab.sync_nfsyncd import Nfsyncd
from nfsyncd.model import TCP_STATE_NAMES, Expectation, Flow, Status, TcpInfo
from tests._support import FTP_PASSIVE_PORTS, FtpServer, wait_until
from tests.sync._helpers import StartPair, real_traffic, wait_keys

pytestmark = pytest.mark.kernel

FtpFactory = Callable[..., FtpServer]

#: every mode over the transports the issue names
MATRIX = [
    ("ftfw", "udp"),
    ("ftfw", "multicast"),
    ("ftfw", "tcp"),
    ("notrack", "tcp"),
    ("notrack", "udp"),
    ("alarm", "udp"),
    ("alarm", "multicast"),
]
#: status bits a committed flow must keep (CONFIRMED and the *_DONE bits are the kernel's)
KEPT_STATUS = int(
    Status.EXPECTED
    | Status.SEEN_REPLY
    | Status.ASSURED
    | Status.SRC_NAT
    | Status.DST_NAT
    | Status.HELPER
)
FTP_PORT = 2121
NAT_PORT, NAT_TARGET, SNAT_PORT = 8081, 8082, 61000
MARK_PORT, RULE_MARK = 8084, 42
LABELS = bytes([0b101, 0, 0, 0x80]) + bytes(11) + b"\x80"  # bits 0, 2, 31, 127

PAIR_RULES = f"""
table inet pairs {{
  ct helper ftp-standard {{ type "ftp" protocol tcp; }}
  chain out {{ type filter hook output priority filter;
    tcp dport {FTP_PORT} ct helper set "ftp-standard"
    tcp dport {MARK_PORT} ct mark set {RULE_MARK}
  }}
  chain in {{ type filter hook input priority filter; ct label 127 accept; }}
}}
table ip pairs_nat {{
  chain out {{ type nat hook output priority -100; tcp dport {NAT_PORT} dnat to {TRAFFIC_SRV}:{NAT_TARGET}; }}
  chain post {{ type nat hook postrouting priority 100; tcp dport {NAT_TARGET} snat to {TRAFFIC_FW}:{SNAT_PORT}; }}
}}
"""  # noqa: E501


# -- helpers ------------------------------------------------------------------------------------


def nfs_pair(start_pair: StartPair, lab: SyncLab, **options: Any) -> tuple[Nfsyncd, Nfsyncd]:
    """nfsyncd on both firewalls, each with a metrics listener on a free port."""
    options.setdefault("metrics", "127.0.0.1:0")
    d1, d2 = start_pair("nfsyncd", "nfsyncd", lab, **options)
    assert isinstance(d1, Nfsyncd) and isinstance(d2, Nfsyncd)
    return d1, d2


def settled_snapshot(lab: SyncLab, d2: Nfsyncd, keys: set[FlowKey]) -> dict[FlowKey, Flow] | None:
    """fw1's kernel flows once fw2's external cache has each key in the same TCP state: the
    FTP data connections are still closing when they first arrive, and a snapshot taken
    meanwhile would be older than what fw2 then commits."""
    mine = {flow_key(f): f for f in lab.kernel_flows("fw1")}
    theirs = {json_flow_key(i): i.get("state") for i in d2.dump("external")}
    for key in keys:
        info = mine[key].protoinfo if key in mine else None
        if isinstance(info, TcpInfo) and theirs.get(key) != TCP_STATE_NAMES.get(info.state or 0):
            return None
    return mine


def wait_external(daemon: Nfsyncd, want: set[FlowKey], timeout: float = 15.0) -> None:
    wait_keys(daemon.external_keys, want, f"flows in {daemon.ns.name}'s external cache", timeout)


def text_keys(output: str) -> set[FlowKey]:
    """Keys of the conntrackd-style lines that ``nfsyncctl dump`` / ``-e`` / ``-i`` print."""
    keys = {parse_dump_line(line) for line in output.splitlines()}
    return {k for k in keys if k is not None}


def http_get(ns: Netns, daemon: Nfsyncd, path: str) -> tuple[int, str]:
    """GET ``path`` from the daemon's metrics listener (a loopback address inside ``ns``)."""
    url = urlsplit(daemon.status()["metrics"])
    assert url.hostname is not None and url.port is not None
    with ns.entered():
        sock = socket.create_connection((url.hostname, url.port), timeout=5)
    with sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: lab\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def readyz(lab: SyncLab, fw: FW, daemon: Nfsyncd) -> int:
    return http_get(lab.ns(fw), daemon, "/readyz")[0]


def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample of Prometheus text (None when there is no such sample)."""
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if line.startswith("#") or sample.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in sample for k, v in labels.items()):
            return float(value)
    return None


def kernel_expects(lab: SyncLab, fw: FW) -> list[Expectation]:
    async def dump(conntrack: Conntrack) -> list[Expectation]:
        return await conntrack.dump_expect()

    return lab.run_ct(fw, dump)


def fidelity_flows() -> list[Flow]:
    """ctnetlink-made flows with what real traffic here cannot set: zones and labels."""
    zoned = [f._replace(zone=7, mark=9) for f in lab_flows(10, base=1000)]
    labelled = [f._replace(labels=LABELS) for f in lab_flows(10, proto=17, base=2000)]
    both = [f._replace(zone=3, labels=LABELS) for f in lab_flows(10, base=3000, v6=True)]
    return zoned + labelled + both


def assert_same_flow(mine: Flow, theirs: Flow) -> None:
    """``theirs`` (committed on fw2) is ``mine`` (fw1's kernel), all but the timers."""
    what = mine.describe()
    assert theirs.orig == mine.orig, what
    assert theirs.reply == mine.reply, what
    assert (theirs.mark or 0) == (mine.mark or 0), what
    assert (theirs.zone or 0) == (mine.zone or 0), what
    assert theirs.labels == mine.labels, what
    assert theirs.helper == mine.helper, what
    assert theirs.master == mine.master, what
    assert (theirs.status or 0) & KEPT_STATUS == (mine.status or 0) & KEPT_STATUS, what
    assert (theirs.status or 0) & Status.CONFIRMED, what
    if isinstance(mine.protoinfo, TcpInfo):
        assert isinstance(theirs.protoinfo, TcpInfo), what
        assert theirs.protoinfo.state == mine.protoinfo.state, what


def assert_same_expect(mine: Expectation, theirs: Expectation) -> None:
    assert theirs.master == mine.master
    assert theirs.tuple == mine.tuple
    assert theirs.mask == mine.mask
    assert theirs.helper == mine.helper == "ftp"
    assert (theirs.klass, theirs.flags) == (mine.klass, mine.flags)
    assert theirs.timeout is not None and theirs.timeout > 0


def _passive_port(reply: str) -> int:
    """The data port of a 227 (PASV) or 229 (EPSV) reply."""
    if reply.startswith("229"):
        return int(reply.split("(|||", 1)[1].split("|", 1)[0])
    nums = [int(n) for n in re.findall(r"\d+", reply.split("(", 1)[1])]
    return nums[4] * 256 + nums[5]


class FtpSession:
    """A real FTP session from fw1 to srv1 through fw1's in-kernel ftp helper.

    One PASV (EPSV over IPv6) whose data connection is opened (a related flow with a
    master), then a second one left pending (a live expectation on fw1).
    """

    def __init__(
        self, lab: SyncLab, ftp_server: FtpFactory, stack: ExitStack, *, v6: bool = False
    ) -> None:
        client, address = (TRAFFIC_FW6, TRAFFIC_SRV6) if v6 else (TRAFFIC_FW, TRAFFIC_SRV)
        passive = "EPSV" if v6 else "PASV"
        self.family_len = 16 if v6 else 4
        server = ftp_server(lab.srv("fw1"), address, port=FTP_PORT)
        with lab.ns("fw1").entered():
            ftp = ftplib.FTP()
            ftp.connect(server.address, server.port, timeout=5)
        stack.callback(ftp.close)
        assert ftp.sock is not None
        ftp.login()
        first = _passive_port(ftp.sendcmd(passive))
        with lab.ns("fw1").entered():
            data = socket.create_connection((address, first), timeout=5)
        stack.enter_context(data)
        self.control = FlowKey(6, client, address, ftp.sock.getsockname()[1], FTP_PORT)
        self.related = FlowKey(6, client, address, data.getsockname()[1], first)
        wait_until(
            lambda: self.related in lab.kernel_keys("fw1"), what="the data connection on fw1"
        )
        self.pending = _passive_port(ftp.sendcmd(passive))
        assert {first, self.pending} <= set(FTP_PASSIVE_PORTS)
        self.keys = {self.control, self.related}
        self.expect = wait_until(
            lambda: self.find(kernel_expects(lab, "fw1")), what="the expectation on fw1"
        )

    def find(self, exps: list[Expectation]) -> Expectation | None:
        found = [
            e for e in exps if e.tuple.dport == self.pending and len(e.tuple.src) == self.family_len
        ]
        return found[0] if found else None


def nat_connection(lab: SyncLab, stack: ExitStack) -> FlowKey:
    """A real TCP connection from fw1 to srv1 through fw1's DNAT and SNAT rules."""
    with lab.srv("fw1").entered():
        listener = socket.create_server((TRAFFIC_SRV, NAT_TARGET))
    stack.enter_context(listener)
    with lab.ns("fw1").entered():
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stack.enter_context(client)
    client.settimeout(5)
    client.connect((TRAFFIC_SRV, NAT_PORT))
    return FlowKey(6, TRAFFIC_FW, TRAFFIC_SRV, client.getsockname()[1], NAT_PORT)


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


# -- the matrix: one pair per mode x transport, several checks per start ------------------------


@pytest.mark.parametrize(("mode", "transport"), MATRIX, ids=[f"{m}-{t}" for m, t in MATRIX])
def test_mode_and_transport_replicate_commit_and_delete(
    mode: str, transport: str, sync_lab: SyncLab, start_pair: StartPair
) -> None:
    """Real traffic (TCP, UDP, ICMP; v4 and v6) and 300 ctnetlink-made flows on fw1 reach
    fw2's external cache, not its kernel; ``nfsyncctl dump external`` and ``-e`` list them;
    ``nfsyncctl commit`` puts them into fw2's kernel with fw1's tuples and marks; deletes
    on fw1 leave fw2's external cache; ``/readyz``, ``stats network|link|queue|sync`` and
    ``/metrics`` agree. The CLI's text output is checked once (ftfw over udp)."""
    lab = sync_lab
    d1, d2 = nfs_pair(start_pair, lab, mode=mode, transport=transport)
    wait_until(lambda: readyz(lab, "fw2", d2) == 200, timeout=10, interval=0.1, what="/readyz")
    assert d2.status()["sync"]["in_sync"] is True

    real = real_traffic(lab)
    flows = lab.create_flows("fw1", 300, mark=5)
    want = real | {flow_key(f) for f in flows}
    wait_external(d2, want)
    assert not any(k.src.startswith("198.18.") for k in d2.external_keys())  # the link's own
    assert not want & lab.kernel_keys("fw2")  # nothing reaches the kernel before a commit
    assert d2.external_count() >= len(want)
    if (mode, transport) == ("ftfw", "udp"):
        assert want <= text_keys(d2.ctl("dump", "external").stdout)
        assert want <= text_keys(d2.ctl("-e").stdout)
        assert want <= {json_flow_key(i) for i in d2.ctl_json("dump", "external")}

    read_before = d2.stats("runtime")["runtime"]["events_received"]
    result = d2.ctl_json("commit")
    assert result["flows"] >= len(want) and result["flows_failed"] == 0, result
    fw1_flows = {flow_key(f): f for f in lab.kernel_flows("fw1")}
    fw2_flows = {flow_key(f): f for f in lab.kernel_flows("fw2")}
    assert want <= set(fw2_flows)
    for key in want:
        mine, theirs = fw1_flows[key], fw2_flows[key]
        assert (theirs.orig, theirs.reply) == (mine.orig, mine.reply), key.describe()
        assert (theirs.mark or 0) == (mine.mark or 0), key.describe()
    assert {fw2_flows[flow_key(f)].mark for f in flows} == {5}
    # fw2 reads no event of its own commit (it leaves the NEW group meanwhile and skips
    # the rest); one dump then teaches its internal cache the committed flows, which it
    # does not send back to fw1
    wait_keys(d2.internal_keys, want, "committed flows in fw2's internal cache")
    runtime = d2.stats("runtime")["runtime"]
    assert runtime["events_received"] - read_before < len(want), runtime
    assert runtime["cache_refresh_pending"] is False, runtime
    assert not want & d1.external_keys()

    lab.update_flows("fw1", flows[200:], mark=9)
    remarked = {flow_key(f) for f in flows[200:]}

    def updated() -> bool:
        marks = {json_flow_key(i): i["mark"] for i in d2.dump("external")}
        return all(marks.get(k) == 9 for k in remarked)

    wait_until(updated, timeout=10, interval=0.1, what="mark updates in fw2's external cache")
    lab.delete_flows("fw1", flows[:100])
    gone = {flow_key(f) for f in flows[:100]}
    wait_until(
        lambda: not gone & d2.external_keys(), timeout=10, interval=0.1, what="deletes on fw2"
    )
    assert want - gone <= d2.external_keys()

    check_counters(lab, d1, d2, mode, len(want), text=(mode, transport) == ("ftfw", "udp"))

    # alarm has no resync message: a no-op there, as in conntrackd; elsewhere fw2 is ready
    # again once fw1's answer is in
    assert d2.call("request-resync")["requested"] is (mode != "alarm")
    wait_until(lambda: readyz(lab, "fw2", d2) == 200, timeout=10, interval=0.1, what="ready")
    assert want - gone <= d2.external_keys()


def check_counters(
    lab: SyncLab, d1: Nfsyncd, d2: Nfsyncd, mode: str, synced: int, *, text: bool
) -> None:
    net = d2.stats("network")["network"]
    [link] = d2.stats("link")["link"]
    queue = d1.stats("queue")["queue"]
    sent = d1.stats("sync")["sync"]
    received = d2.stats("sync")["sync"]
    assert sent["messages_sent"] >= synced and sent["datagrams_sent"] > 0, sent
    assert received["data_received"] >= synced and received["commits"] == 1, received
    assert (link["interface"], link["role"]) == ("sync0", "ACTIVE"), link
    assert link["stats"]["recv_packets"] > 0 and link["stats"]["recv_bytes"] > 0, link
    assert net["Malformed messages"] == 0 and net["lost"] == 0, net
    assert queue["mode"] == mode and queue["msgs_sent"] >= synced, queue
    # the TCP flows' events took the sender's fast path, which agreed with the general one
    assert sent["fast_path_layouts"] >= 1 and sent["fast_path_mismatches"] == 0, sent
    if text:  # the CLI prints every section, by its own name and by conntrackd's
        for args in (("stats", "network"), ("stats", "link"), ("stats", "queue"), ("-s", "n")):
            assert d2.ctl(*args).stdout.strip(), args
        assert "sync0" in d2.ctl("-s", "link").stdout
        assert f"data_received:{'':14}{received['data_received']:>14}" in (
            d2.ctl("stats", "sync").stdout
        )

    code, metrics = http_get(lab.ns("fw2"), d2, "/metrics")
    assert code == 200
    assert metric(metrics, "nfsyncd_sync_commits_total") == 1
    assert metric(metrics, "nfsyncd_sync_in_sync") == 1
    got = metric(metrics, "nfsyncd_sync_messages_total", direction="received_state")
    assert got is not None and got >= synced
    got = metric(metrics, "nfsyncd_sync_link_packets_total", link="sync0", direction="received")
    assert got is not None and got > 0
    _, metrics = http_get(lab.ns("fw1"), d1, "/metrics")
    got = metric(metrics, "nfsyncd_sync_messages_total", direction="sent")
    assert got is not None and got >= synced


# -- commit fidelity ----------------------------------------------------------------------------


def test_commit_keeps_nat_mark_zone_labels_helper_status_and_expectations(
    sync_lab: SyncLab, start_pair: StartPair, ftp_server: FtpFactory, stack: ExitStack
) -> None:
    """After ``commit``, fw2's kernel holds each synced flow as fw1's kernel has it: tuples
    (NAT included), mark, zone, labels, helper, master, status, TCP state. A real FTP
    session through fw1's ftp helper gives a master (helper ftp), a related data flow and a
    pending PASV expectation; all three are committed, the master first (the kernel refuses
    the others without it)."""
    lab = sync_lab
    for fw in ("fw1", "fw2"):
        lab.ns(fw).nft(PAIR_RULES)
    # Exact TCP states on the peer need every state change: the default event set only
    # reports a flow's start, its assured point and its end.
    d1, d2 = nfs_pair(start_pair, lab, expectations=True, nft_events=CT_EVENT_NAMES)

    made = lab.create_flows("fw1", fidelity_flows())
    keys = {flow_key(f) for f in made}
    keys.add(nat_connection(lab, stack))
    keys.add(lab.tcp_flow("fw1", MARK_PORT))
    keys |= real_traffic(lab)
    ftp = FtpSession(lab, ftp_server, stack)
    ftp6 = FtpSession(lab, ftp_server, stack, v6=True)
    keys |= ftp.keys | ftp6.keys
    wait_external(d2, keys)
    wait_until(lambda: len(d2.dump("external", "expect")) == 2, what="the expectations on fw2")
    fw1_flows = wait_until(
        lambda: settled_snapshot(lab, d2, keys),
        timeout=15,
        interval=0.1,
        what="fw2's external cache to hold fw1's current TCP states (FTP data flows close)",
    )
    # the cases are what they claim to be
    nat = fw1_flows[next(k for k in keys if k.dport == NAT_PORT)]
    assert nat.reply is not None and nat.reply.sport == NAT_TARGET
    assert nat.reply.dport == SNAT_PORT
    assert fw1_flows[next(k for k in keys if k.dport == MARK_PORT)].mark == RULE_MARK
    for session in (ftp, ftp6):
        assert fw1_flows[session.control].helper == "ftp"
        assert fw1_flows[session.related].master == fw1_flows[session.control].orig
    assert any(f.labels == LABELS for f in fw1_flows.values())

    result = d2.ctl_json("commit")
    assert result["flows_failed"] == 0 and result["expects_failed"] == 0, result
    assert result["related"] >= 2 and result["expects"] == 2, result
    fw2_flows = {flow_key(f): f for f in lab.kernel_flows("fw2")}
    for key in keys:
        assert key in fw2_flows, key.describe()
        assert_same_flow(fw1_flows[key], fw2_flows[key])
    committed = kernel_expects(lab, "fw2")
    assert len(committed) == 2
    for session in (ftp, ftp6):
        theirs = session.find(committed)
        assert theirs is not None
        assert_same_expect(session.expect, theirs)
    assert d1.status()["sync"]["in_sync"]


# -- keepalived's notify ------------------------------------------------------------------------


def test_notify_primary_commits_everything_and_backup_purges_and_resyncs(
    sync_lab: SyncLab, start_pair: StartPair, ftp_server: FtpFactory, stack: ExitStack
) -> None:
    """``nfsyncctl notify primary`` on fw2 returns only once fw1's flows and expectation
    are in fw2's kernel, then sends fw2's table to fw1; ``notify backup`` on fw1 schedules
    the purge (which later empties fw1's kernel of synced flows, without replicating the
    deletes) and asks fw2 for a resync, which fw2 answers with a bulk."""
    lab = sync_lab
    for fw in ("fw1", "fw2"):
        lab.ns(fw).nft(PAIR_RULES)
    d1, d2 = nfs_pair(start_pair, lab, expectations=True, sync_options={"purge_timeout": 2})
    flows = lab.create_flows("fw1", 100)
    ftp = FtpSession(lab, ftp_server, stack)
    want = {flow_key(f) for f in flows} | real_traffic(lab) | ftp.keys
    wait_external(d2, want)
    wait_until(lambda: d2.dump("external", "expect"), what="the expectation on fw2")

    done = d2.ctl_json("notify", "primary")
    # no waiting: the command returns when the kernel has it all
    assert want <= lab.kernel_keys("fw2")
    [exp] = kernel_expects(lab, "fw2")
    assert_same_expect(ftp.expect, exp)
    assert done["role"] == "primary" and done["commit"]["expects"] == 1, done
    assert done["commit"]["flows_failed"] == 0 and done["bulk"] >= len(want), done
    assert d2.external_count() == 0  # the peer's state is now the kernel's
    assert want <= d2.internal_keys()
    assert d2.status()["sync"]["role"] == "primary"

    backup = d1.ctl_json("notify", "backup")
    assert backup["role"] == "backup" and backup["resync_requested"] is True, backup
    assert backup["purge_in"] is not None and 0 < backup["purge_in"] <= 2, backup
    assert d1.status()["sync"]["purge_in"] is not None
    assert d1.stats("sync")["sync"]["resyncs_requested"] == 1
    wait_until(
        lambda: d2.stats("queue")["queue"]["resyncs_recv"] >= 1,
        what="fw2 to get the resync request",
    )
    wait_external(d1, want)  # fw1 holds fw2's table, ready to take over again
    wait_until(lambda: d1.dump("external", "expect"), what="the expectation back on fw1")
    wait_until(lambda: d1.stats("sync")["sync"]["purges"] == 1, timeout=10, what="fw1's purge")
    assert not {flow_key(f) for f in flows} & lab.kernel_keys("fw1")
    assert kernel_expects(lab, "fw1") == []
    assert d1.status()["sync"]["purge_in"] is None
    # the purge's deletes were not replicated
    assert want <= lab.kernel_keys("fw2")
    assert want <= d1.external_keys()


# -- restarts and readiness ---------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "transport"), [("ftfw", "udp"), ("notrack", "tcp")])
def test_restarted_backup_gets_the_full_state_before_it_is_ready(
    mode: str, transport: str, sync_lab: SyncLab, start_pair: StartPair
) -> None:
    """fw2 stops; fw1's readiness drops (peer unreachable); fw1's table changes meanwhile
    (new flows, deletes). fw2 comes back with ``startup_resync``: by the time its
    ``/readyz`` says ready its external cache holds exactly fw1's current table, and fw1 is
    ready again (over TCP: both reconnect)."""
    lab = sync_lab
    d1, d2 = nfs_pair(start_pair, lab, mode=mode, transport=transport, startup_resync=True)
    before = lab.create_flows("fw1", 200)
    real = real_traffic(lab)
    wait_external(d2, {flow_key(f) for f in before} | real)
    wait_until(lambda: readyz(lab, "fw1", d1) == 200, timeout=10, what="fw1 ready")

    d2.stop()
    wait_until(lambda: readyz(lab, "fw1", d1) == 503, timeout=10, what="fw1 to notice")
    assert not d1.status()["sync"]["in_sync"]
    after = lab.create_flows("fw1", 100, base=200)
    lab.delete_flows("fw1", before[:50])
    now = {flow_key(f) for f in before[50:] + after} | real
    gone = {flow_key(f) for f in before[:50]}

    d2.start()
    wait_until(lambda: readyz(lab, "fw2", d2) == 200, timeout=15, interval=0.05, what="ready")
    got = d2.external_keys()  # no waiting: ready means in sync
    assert now <= got, f"{len(now - got)} flows missing although ready"
    assert not gone & got
    assert d2.status()["sync"]["in_sync"]
    wait_until(lambda: readyz(lab, "fw1", d1) == 200, timeout=10, what="fw1 ready again")
    assert d1.stats("queue")["queue"]["resyncs_recv"] >= 1
    # the restarted side's new sequence numbers are accepted: changes keep flowing
    later = lab.create_flows("fw1", 50, base=300)
    wait_external(d2, {flow_key(f) for f in later})

    # and when the sender restarts instead, the receiver accepts its new session as well
    d1.stop()
    d1.start()
    latest = lab.create_flows("fw1", 50, base=350)
    wait_external(d2, {flow_key(f) for f in latest})
    assert d2.stats("network")["network"]["Malformed messages"] == 0


def test_readiness_stays_while_the_peer_keeps_sending(
    sync_lab: SyncLab, start_pair: StartPair
) -> None:
    """Once the startup resync is done, a busy primary (a change every few ms) must not
    make the backup unready: nothing in sync was lost by receiving more."""
    lab = sync_lab
    _d1, d2 = nfs_pair(start_pair, lab, startup_resync=True)
    wait_until(lambda: readyz(lab, "fw2", d2) == 200, timeout=10, interval=0.05, what="ready")
    deadline = time.monotonic() + 1.5
    base = 0
    answers: list[int] = []
    while time.monotonic() < deadline:
        lab.create_flows("fw1", 5, base=base)
        base += 5
        answers.append(readyz(lab, "fw2", d2))
    wait_external(d2, {flow_key(f) for f in lab_flows(base)})
    assert answers.count(503) == 0, f"{answers.count(503)} of {len(answers)} probes said 503"


# -- without an external cache; without an internal cache ---------------------------------------


def test_inject_mode_writes_to_the_kernel_without_commit(
    sync_lab: SyncLab, start_pair: StartPair, ftp_server: FtpFactory, stack: ExitStack
) -> None:
    """``disable_external_cache``: flows, their updates and deletes, and an FTP expectation
    go straight into fw2's kernel; ``-e`` lists nothing and ``commit`` has nothing to do."""
    lab = sync_lab
    for fw in ("fw1", "fw2"):
        lab.ns(fw).nft(PAIR_RULES)
    _d1, d2 = nfs_pair(start_pair, lab, disable_external_cache=True, expectations=True)
    flows = lab.create_flows("fw1", 200, mark=5)
    ftp = FtpSession(lab, ftp_server, stack)
    want = {flow_key(f) for f in flows} | real_traffic(lab) | ftp.keys
    wait_keys(lambda: lab.kernel_keys("fw2"), want, "flows injected into fw2's kernel")
    wait_until(lambda: kernel_expects(lab, "fw2"), what="the expectation injected on fw2")
    assert_same_expect(ftp.expect, kernel_expects(lab, "fw2")[0])
    assert d2.external_keys() == set() and d2.ctl("-e").stdout == ""
    assert d2.ctl_json("commit") is None
    assert d2.external_counters()["created"] >= 200

    lab.update_flows("fw1", flows[:50], mark=9)

    def remarked() -> bool:
        marks = {flow_key(f): f.mark for f in lab.kernel_flows("fw2")}
        return all(marks.get(flow_key(f)) == 9 for f in flows[:50])

    wait_until(remarked, timeout=10, interval=0.1, what="mark updates in fw2's kernel")
    lab.delete_flows("fw1", flows[50:100])
    gone = {flow_key(f) for f in flows[50:100]}
    wait_until(
        lambda: not gone & lab.kernel_keys("fw2"), timeout=10, what="deletes in fw2's kernel"
    )
    assert {flow_key(f) for f in flows[100:]} <= lab.kernel_keys("fw2")


def test_notrack_without_internal_cache(sync_lab: SyncLab, start_pair: StartPair) -> None:
    """notrack over tcp with ``disable_internal_cache``: events go out as they come, ``-i``
    lists fw1's kernel table, deletes follow, and fw2's ``request-resync`` makes fw1 send
    a fresh kernel dump (fw2 had flushed its external cache), and so does ``-B`` on fw1;
    ``-c`` commits."""
    lab = sync_lab
    d1, d2 = nfs_pair(start_pair, lab, mode="notrack", transport="tcp", disable_internal_cache=True)
    flows = lab.create_flows("fw1", 200)
    want = {flow_key(f) for f in flows} | real_traffic(lab)
    wait_external(d2, want)
    assert want <= text_keys(d1.ctl("-i").stdout)

    lab.delete_flows("fw1", flows[:50])
    gone = {flow_key(f) for f in flows[:50]}
    wait_until(lambda: not gone & d2.external_keys(), timeout=10, what="deletes on fw2")
    now = want - gone

    assert d2.call("flush", cache="external")["flushed"] >= len(now)
    assert d2.external_keys() == set()
    assert d2.ctl_json("request-resync")["requested"] is True
    wait_external(d2, now)
    assert not gone & d2.external_keys()
    # conntrackd's -B on the sender: a fresh kernel dump as well
    d2.call("flush", cache="external")
    assert d1.ctl("-B").returncode == 0
    wait_external(d2, now)
    assert d2.ctl("-c").stdout == ""  # conntrackd's flag: silent, like conntrackd
    assert now <= lab.kernel_keys("fw2")
    assert d2.stats("sync")["sync"]["commits"] == 1


# -- FTP across a takeover: expectations in inject mode, the NAT helper's sequence adjustment ---

SEQADJ_PORT, SNAT_ALIAS = 2122, "198.19.0.100"
#: the ftp helper and SNAT to an address of another length: the NAT helper rewrites PORT
SEQADJ_RULES = f"""
table inet seqadj {{
  ct helper ftp-standard {{ type "ftp" protocol tcp; }}
  chain out {{ type filter hook output priority filter;
    tcp dport {SEQADJ_PORT} ct helper set "ftp-standard"
  }}
}}
table ip seqadj_nat {{
  chain post {{ type nat hook postrouting priority 100; tcp dport {SEQADJ_PORT} snat to {SNAT_ALIAS}; }}
}}
"""  # noqa: E501


def test_inject_bulk_after_takeover_keeps_the_expectation(
    sync_lab: SyncLab, start_pair: StartPair, ftp_server: FtpFactory, stack: ExitStack
) -> None:
    """``disable_external_cache``: when fw2 takes over, its bulk reaches fw1, which holds
    every flow already.  fw1 updates them in place: re-creating the FTP control connection
    would drop fw1's expectation, a death the kernel reports as nobody's doing, so fw1
    would sync an EXP_DEL back and remove fw2's copy, the one the data connection needs."""
    lab = sync_lab
    for fw in ("fw1", "fw2"):
        lab.ns(fw).nft(PAIR_RULES)
    d1, d2 = nfs_pair(start_pair, lab, disable_external_cache=True, expectations=True)
    ftp = FtpSession(lab, ftp_server, stack)
    wait_keys(lambda: lab.kernel_keys("fw2"), ftp.keys, "the FTP flows injected into fw2")
    wait_until(lambda: ftp.find(kernel_expects(lab, "fw2")), what="the expectation on fw2")
    ids = {flow_key(f): f.id for f in lab.kernel_flows("fw1")}
    created = d1.external_counters()["created"]

    done = d2.ctl_json("notify", "primary")
    assert done["bulk"] >= len(ftp.keys) + 1, done  # the flows and the expectation
    wait_until(
        lambda: d1.external_counters()["created"] >= created + len(ftp.keys),
        what="fw1 to take fw2's bulk",
    )
    # whatever fw1 sent about the bulk reaches fw2 before a flow fw1 makes afterwards
    [marker] = lab.create_flows("fw1", 1, base=7000)
    wait_keys(lambda: lab.kernel_keys("fw2"), {flow_key(marker)}, "a later flow of fw1 on fw2")
    assert ftp.find(kernel_expects(lab, "fw2")) is not None, "fw2 lost the expectation"
    assert ftp.find(kernel_expects(lab, "fw1")) is not None, "fw1 lost the expectation"
    after = {flow_key(f): f.id for f in lab.kernel_flows("fw1")}
    assert after[ftp.control] == ids[ftp.control], "fw1 re-created its control connection"


@pytest.mark.parametrize("inject", [False, True], ids=["cache", "inject"])
def test_seqadj_of_a_port_rewritten_by_snat_reaches_the_peer(
    inject: bool, sync_lab: SyncLab, start_pair: StartPair, ftp_server: FtpFactory, stack: ExitStack
) -> None:
    """A PORT command through SNAT to an address of another length is rewritten by fw1's
    ftp NAT helper, which leaves a TCP sequence adjustment on the control connection; fw2
    must get it (commit, or inject) with fw1's values, or the connection breaks there."""
    lab = sync_lab
    for fw in ("fw1", "fw2"):
        lab.ns(fw).nft(SEQADJ_RULES)
    lab.ns("fw1").ip("addr", "add", f"{SNAT_ALIAS}/32", "dev", "tr0")
    _d1, d2 = nfs_pair(start_pair, lab, expectations=True, disable_external_cache=inject)
    server = ftp_server(lab.srv("fw1"), TRAFFIC_SRV, port=SEQADJ_PORT)
    with lab.ns("fw1").entered():
        ftp = ftplib.FTP()
        ftp.connect(server.address, server.port, timeout=5)
        listener = socket.create_server((TRAFFIC_FW, 0))
    stack.callback(ftp.close)
    stack.enter_context(listener)
    assert ftp.sock is not None
    ftp.login()
    port = listener.getsockname()[1]
    reply = ftp.sendcmd(f"PORT {TRAFFIC_FW.replace('.', ',')},{port >> 8},{port & 0xFF}")
    assert reply.startswith("200"), reply
    control = FlowKey(6, TRAFFIC_FW, TRAFFIC_SRV, ftp.sock.getsockname()[1], SEQADJ_PORT)
    mine = {flow_key(f): f for f in lab.kernel_flows("fw1")}[control]
    assert mine.seqadj_orig is not None and mine.seqadj_orig.offset_after != 0, mine

    def on_fw2() -> Flow | None:
        return {flow_key(f): f for f in lab.kernel_flows("fw2")}.get(control)

    if not inject:

        def cached() -> bool:
            flows = {json_flow_key(i): i for i in d2.dump("external")}
            return "SEQ_ADJUST" in flows.get(control, {}).get("status", [])

        wait_until(cached, what="the adjusted control connection in fw2's external cache")
        assert d2.ctl_json("commit")["flows_failed"] == 0
    wait_until(
        lambda: (theirs := on_fw2()) is not None and theirs.seqadj_orig == mine.seqadj_orig,
        what=f"fw1's sequence adjustment {mine.seqadj_orig} on fw2",
    )
    theirs = on_fw2()
    assert theirs is not None and (theirs.status or 0) & Status.SEQ_ADJUST, theirs
    assert theirs.seqadj_reply == mine.seqadj_reply
