"""Interop with the real conntrackd (Debian 1.4.7), both directions, on the two-gateway lab.

One daemon of each kind: the sender on fw1 replicates what fw1's kernel holds, the receiver
on fw2 must hold the same keys in its external cache and, after its own commit, the same
flows in fw2's kernel (original and reply tuples, so NAT; mark; zone; labels; the timeout
the sender reported) and the FTP expectation with its helper master. Deletes travel too.
The matrix is the issue's: FTFW over UDP and over multicast, NOTRACK over TCP (IPv6 link),
ALARM, each in both directions, every check made on one daemon start to keep the file
short. FTFW also survives a conntrackd restart: HELLO resets the sequence tracking, and a
resync request brings the full state back.

What the workload covers on the wire (reference §1.7, §1.8): SNAT/DNAT addresses and the
host-swapped SPAT/DPAT ports (v4, and the v6 NAT attributes of 1.4.4), the host-swapped
ICMP id (real pings, v4 and v6), NTA_ZONE (one tuple in two zones), NTA_LABELS, marks,
timeouts, TCP states, SCTP state and vtags, the helper name of FTP control flows, a
related FTP data flow (NTA_MASTER_*) and a PASV expectation (§1.8). Neither side may count
a message as malformed, nor nfsyncd leave an attribute out.
"""

from __future__ import annotations

import ftplib
import re
import socket
import struct
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest

from nfsyncd.kernel import Conntrack
from nfsyncd.lab.sync_conntrackd import Conntrackd
from nfsyncd.lab.sync_lab import (
    FW,
    TRAFFIC_FW,
    TRAFFIC_FW6,
    TRAFFIC_SRV,
    TRAFFIC_SRV6,
    FlowKey,
    SyncDaemon,
    SyncLab,
    flow_key,
)
from nfsyncd.lab.sync_nfsyncd import Nfsyncd
from nfsyncd.model import Expectation, Flow, ProtoInfo, SctpInfo, TcpInfo, Tuple, format_addr
from tests._support import FTP_PASSIVE_PORTS, ftp_helper_ruleset, start_ftp_server, wait_until
from tests.sync._helpers import StartPair, real_traffic, wait_external

DIRECTIONS = [
    pytest.param(("conntrackd", "nfsyncd"), id="conntrackd-to-nfsyncd"),
    pytest.param(("nfsyncd", "conntrackd"), id="nfsyncd-to-conntrackd"),
]

FTP_PORT = 2121
SYNTH = 100
#: Flows of the NAT/zone block come from here (inside the lab's synthetic range, far from
#: the lab_flows ones).
SPECIAL4 = "198.19.250.{}"
SPECIAL6 = "fd00:198:18:fe::fa:{}"

#: Empty nat chains: a NAT flow made through ctnetlink translates only where the nat hooks
#: run (tests/kernel/test_flows.py), and a backup must be able to use what it commits. The
#: ct label rule makes the kernel keep labels (without one a create drops them).
NAT_CHAINS = (
    "table inet interop_nat {\n"
    "  chain pre { type nat hook prerouting priority dstnat; }\n"
    "  chain out { type nat hook output priority -100; }\n"
    "  chain post { type nat hook postrouting priority srcnat; }\n"
    "  chain in { type nat hook input priority 100; }\n"
    "  chain labels { type filter hook input priority filter; ct label 127 accept; }\n"
    "}\n"
)


#: ct labels 1 and 70 (the kernel's bitmap: host-order 32-bit words; NTA_LABELS)
LABELS = struct.pack("=4I", 1 << 1, 0, 1 << 6, 0)


def _a(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def _flow(
    proto: int,
    orig: tuple[str, str, int, int],
    reply: tuple[str, str, int, int] | None = None,
    *,
    mark: int | None = None,
    zone: int | None = None,
    labels: bytes | None = None,
    protoinfo: ProtoInfo | None = None,
) -> Flow:
    """An established flow; a ``reply`` that is not the inverse of ``orig`` asks for NAT."""
    src, dst, sport, dport = orig
    o = Tuple(_a(src), _a(dst), proto, sport, dport)
    r = None if reply is None else Tuple(_a(reply[0]), _a(reply[1]), proto, reply[2], reply[3])
    return Flow(
        o,
        r,
        status=0x0E,  # SEEN_REPLY|ASSURED|CONFIRMED
        timeout=600,
        mark=mark,
        zone=zone,
        labels=labels,
        protoinfo=TcpInfo(state=3) if proto == 6 else protoinfo,
    )


def special_flows() -> list[Flow]:
    """NAT in every shape the wire carries; one tuple in two zones, with labels in one;
    SCTP."""
    s4, s6 = SPECIAL4.format, SPECIAL6.format
    fw, srv, fw6, srv6 = TRAFFIC_FW, TRAFFIC_SRV, TRAFFIC_FW6, TRAFFIC_SRV6
    return [
        # SNAT v4 to the firewall's address and another port (SNAT_IPV4 + SPAT_PORT)
        _flow(6, (s4(1), srv, 40001, 80), (srv, fw, 80, 61001), mark=11),
        # DNAT v4 of the firewall's port 53 to the server's 5353 (DNAT_IPV4 + DPAT_PORT)
        _flow(17, (s4(2), fw, 40002, 53), (srv, s4(2), 5353, 40002), mark=12),
        # SNAT and DNAT at once, v6 (SNAT_IPV6 + DNAT_IPV6 + both ports)
        _flow(6, (s6(3), fw6, 40003, 8443), (srv6, fw6, 443, 61003), mark=13),
        # SNAT v6, address only
        _flow(17, (s6(4), srv6, 40004, 53), (srv6, fw6, 53, 40004)),
        # the same tuple in the default zone and in zone 7 (NTA_ZONE); labels (NTA_LABELS)
        _flow(6, (s4(5), srv, 40005, 22), mark=1, labels=LABELS),
        _flow(6, (s4(5), srv, 40005, 22), mark=7, zone=7),
        # SCTP: state and both verification tags (NTA_SCTP_*)
        _flow(132, (s4(6), srv, 40006, 9899), protoinfo=SctpInfo(4, 0x12345678, 0x9ABCDEF0)),
    ]


class ExpKey(NamedTuple):
    """An expectation as every view shows it: expected src, dst, dport; master's tuple."""

    src: str
    dst: str
    dport: int
    master_src: str
    master_dst: str
    master_sport: int
    master_dport: int


def exp_key(exp: Expectation) -> ExpKey:
    t, m = exp.tuple, exp.master
    assert t.dport is not None and m.sport is not None and m.dport is not None
    return ExpKey(
        format_addr(t.src), format_addr(t.dst), t.dport, format_addr(m.src), format_addr(m.dst),
        m.sport, m.dport,
    )  # fmt: skip


_EXP_FIELD = re.compile(r"([\w-]+)=(\S+)")


def parse_expect_line(line: str) -> ExpKey | None:
    """An ``-e``-style expectation line of conntrackd (reference §5.4), as an :class:`ExpKey`.

    The fields come in three runs (tuple, ``mask-``, ``master-``), each followed by its
    own ``sport=``/``dport=``.
    """
    runs: list[dict[str, str]] = [{}, {}, {}]
    run = 0
    for key, value in _EXP_FIELD.findall(line):
        if key.startswith("mask-"):
            run, key = 1, key[5:]
        elif key.startswith("master-"):
            run, key = 2, key[7:]
        if key in ("src", "dst", "sport", "dport"):
            runs[run].setdefault(key, value)
    tup, _mask, master = runs
    try:
        return ExpKey(
            tup["src"], tup["dst"], int(tup["dport"]), master["src"], master["dst"],
            int(master["sport"]), int(master["dport"]),
        )  # fmt: skip
    except KeyError:
        return None


def external_expect_keys(daemon: SyncDaemon) -> set[ExpKey]:
    if isinstance(daemon, Conntrackd):
        return {k for k in map(parse_expect_line, daemon.external_expects()) if k is not None}
    assert isinstance(daemon, Nfsyncd)
    out = set()
    for item in daemon.dump("external", "expect"):
        t, m = item["tuple"], item["master"]
        out.add(ExpKey(t["src"], t["dst"], t["dport"], m["src"], m["dst"], m["sport"], m["dport"]))
    return out


_NET_COUNTER = re.compile(r"^\t\t([A-Z][\w ]+):\t\s*(\d+)$", re.M)


def wire_errors(daemon: SyncDaemon) -> dict[str, int]:
    """The receive-side drop counters of ``-s network`` (reference §5.4) that are not 0."""
    if isinstance(daemon, Conntrackd):
        text = daemon.stats("network")
        recv = text.split("\tsend:", 1)[0]  # the send block repeats "Malformed messages"
        counters = {k: int(v) for k, v in _NET_COUNTER.findall(recv)}
        assert "Malformed payload" in counters, text
        # nfsyncd's helper announces (version 2, at most 3 a peer session) are skipped
        announces = counters.get("Wrong protocol version", 0)
        if 0 < announces <= 3:
            counters["Wrong protocol version"] = 0
            counters["Malformed messages"] -= announces
    else:
        assert isinstance(daemon, Nfsyncd)
        net = daemon.stats("network")["network"]
        counters = {k: v for k, v in net.items() if isinstance(v, int) and k[0].isupper()}
        counters["unknown attributes"] = sum(net["unknown_attrs"].values())
        counters["omitted attributes"] = sum(net["omitted_attrs"].values())
        counters["send_malformed"] = net["send_malformed"]
    return {k: v for k, v in counters.items() if v and k not in ("Packets lost", "Packets before")}


def kernel_expects(lab: SyncLab, fw: FW) -> list[Expectation]:
    async def dump(conntrack: Conntrack) -> list[Expectation]:
        return await conntrack.dump_expect()

    return lab.run_ct(fw, dump)


@dataclass
class Workload:
    """What fw1 holds for the sender to replicate."""

    real: set[FlowKey]
    special: list[Flow]
    synth: list[Flow]
    ftp: Ftp | None = None

    @property
    def keys(self) -> set[FlowKey]:
        keys = self.real | {flow_key(f) for f in self.special + self.synth}
        if self.ftp is not None:
            keys |= {*self.ftp.controls, self.ftp.data}
        return keys


@dataclass
class Ftp:
    """Two FTP sessions from fw1 to srv1: one has opened its PASV data connection (a
    related flow, ``data``, whose master is ``data_master``), the other's PASV is pending
    (fw1's kernel holds its ``expectation``)."""

    controls: list[FlowKey]
    data: FlowKey
    data_master: Tuple
    expectation: Expectation


def prepare(lab: SyncLab) -> None:
    lab.ns("fw1").nft(NAT_CHAINS)
    lab.ns("fw2").nft(NAT_CHAINS)
    # fw1 is the FTP client: the helper must see the control connection's first packet
    lab.ns("fw1").nft(ftp_helper_ruleset(hooks=("output",), port=FTP_PORT))


def _pasv(ftp: ftplib.FTP) -> int:
    reply = ftp.sendcmd("PASV")
    nums = [int(n) for n in re.findall(r"\d+", reply.split("(", 1)[1])]
    port = nums[4] * 256 + nums[5]
    assert port in FTP_PASSIVE_PORTS
    return port


@contextmanager
def ftp_sessions(lab: SyncLab, root: Path) -> Iterator[Ftp]:
    """The sessions of :class:`Ftp`, open until the block ends."""
    fw1 = lab.ns("fw1")
    with ExitStack() as stack:
        server = start_ftp_server(lab.srv("fw1"), TRAFFIC_SRV, root, FTP_PORT)
        stack.callback(server.stop)
        controls, keys = [], []
        for _ in range(2):
            with fw1.entered():
                ftp = ftplib.FTP()
                ftp.connect(TRAFFIC_SRV, FTP_PORT, timeout=5)
            stack.enter_context(ftp)
            ftp.login()
            assert ftp.sock is not None
            controls.append(ftp)
            keys.append(FlowKey(6, TRAFFIC_FW, TRAFFIC_SRV, ftp.sock.getsockname()[1], FTP_PORT))
        port = _pasv(controls[0])
        with fw1.entered():
            data = socket.create_connection((TRAFFIC_SRV, port), timeout=5)
        stack.enter_context(data)
        data_key = FlowKey(6, TRAFFIC_FW, TRAFFIC_SRV, data.getsockname()[1], port)
        wait_until(lambda: not kernel_expects(lab, "fw1"), timeout=5, what="the first PASV used")
        port = _pasv(controls[1])
        (exp,) = wait_until(
            lambda: kernel_expects(lab, "fw1"), timeout=5, what="fw1's PASV expectation"
        )
        assert exp.tuple.dport == port
        master = Tuple(_a(TRAFFIC_FW), _a(TRAFFIC_SRV), 6, keys[0].sport, FTP_PORT)
        yield Ftp(keys, data_key, master, exp)


def make_workload(lab: SyncLab) -> Workload:
    special = lab.create_flows("fw1", special_flows())
    synth = lab.create_flows("fw1", SYNTH, mark=3)
    return Workload(real_traffic(lab), special, synth)


def check_kernel(lab: SyncLab, fw: FW, work: Workload, committer: str) -> None:
    """fw's kernel holds every replicated flow, the ctnetlink-made ones exactly."""
    flows = lab.kernel_flows(fw)
    got = {flow_key(f): f for f in flows}
    missing = work.keys - set(got)
    assert not missing, [k.describe() for k in missing]
    for want in work.special + work.synth[:20]:
        have = got[flow_key(want)]
        assert have.orig == want.orig
        assert have.reply == (want.reply or want.orig.inverted()), want
        assert (have.mark or 0) == (want.mark or 0), want
        assert (have.zone or 0) == (want.zone or 0), want
        assert have.labels == want.labels, want
        # the sender's remaining timeout, less the seconds since (not a fallback)
        assert have.timeout is not None and 540 <= have.timeout <= 600, have
        if isinstance(want.protoinfo, TcpInfo):
            assert isinstance(have.protoinfo, TcpInfo) and have.protoinfo.state == 3
        elif isinstance(want.protoinfo, SctpInfo):
            h, w = have.protoinfo, want.protoinfo
            assert isinstance(h, SctpInfo) and (h.state, h.vtag_reply) == (w.state, w.vtag_reply)
            assert h.vtag_orig is not None and w.vtag_orig is not None
            if committer == "conntrackd":
                # conntrackd 1.4.7 commits the original vtag with its low byte set to 0x08
                # (0x12345678 -> 0x12345608), whether conntrackd or nfsyncd sent it
                assert h.vtag_orig >> 8 == w.vtag_orig >> 8
            else:
                assert h.vtag_orig == w.vtag_orig
    for key in work.real:  # real flows: the reply is the plain inverse (no NAT on fw1)
        have = got[key]
        assert have.reply is not None and have.reply == have.orig.inverted()
    if work.ftp is not None:
        assert all(got[key].helper == "ftp" for key in work.ftp.controls)
        related = got[work.ftp.data]  # NTA_MASTER_*
        assert related.master == work.ftp.data_master


def check_expectation(lab: SyncLab, fw: FW, want: Expectation) -> None:
    exps = kernel_expects(lab, fw)
    assert [exp_key(e) for e in exps] == [exp_key(want)]
    (have,) = exps
    assert have.helper == "ftp"
    assert have.mask == want.mask


# -- no root needed ---------------------------------------------------------------------------


def test_parse_expect_line() -> None:
    line = (
        "proto=6 src=198.19.0.1 dst=198.19.0.2 sport=0 dport=30001 mask-src=255.255.255.255 "
        "mask-dst=255.255.255.255 sport=0 dport=65535 master-src=198.19.0.1 "
        "master-dst=198.19.0.2 sport=43210 dport=2121 class=0 helper=ftp [active since 4s]"
    )
    assert parse_expect_line(line) == ExpKey(
        "198.19.0.1", "198.19.0.2", 30001, "198.19.0.1", "198.19.0.2", 43210, 2121
    )
    assert parse_expect_line("") is None


# -- the lab ------------------------------------------------------------------------------------


MATRIX = [
    pytest.param("ftfw", "udp", False, id="ftfw-udp"),
    pytest.param("ftfw", "multicast", False, id="ftfw-multicast"),
    pytest.param("notrack", "tcp", True, id="notrack-tcp6"),
    pytest.param("alarm", "udp", False, id="alarm-udp"),
]


@pytest.mark.kernel
@pytest.mark.parametrize(("mode", "transport", "ipv6"), MATRIX)
@pytest.mark.parametrize("kinds", DIRECTIONS)
def test_interop(
    kinds: tuple[str, str],
    mode: str,
    transport: str,
    ipv6: bool,
    sync_lab: SyncLab,
    start_pair: StartPair,
    tmp_path: Path,
) -> None:
    """fw1's flows and FTP expectation reach fw2's external cache, then its kernel."""
    lab = sync_lab
    prepare(lab)
    sender, receiver = start_pair(
        *kinds, lab, mode=mode, transport=transport, ipv6=ipv6, expectations=True
    )
    work = make_workload(lab)
    with ftp_sessions(lab, tmp_path / "ftp") as ftp:
        work.ftp = ftp
        expectation = ftp.expectation
        wait_external(receiver, work.keys)
        wait_until(
            lambda: exp_key(expectation) in external_expect_keys(receiver),
            timeout=15,
            interval=0.1,
            what=f"the expectation in {receiver.kind}'s external cache",
        )
        assert not work.keys & lab.kernel_keys("fw2")
        receiver.commit()
        check_kernel(lab, "fw2", work, receiver.kind)
        check_expectation(lab, "fw2", expectation)

    # deletes travel (NAT and zoned flows among them)
    gone = work.special + work.synth[: SYNTH // 2]
    lab.delete_flows("fw1", gone)
    gone_keys = {flow_key(f) for f in gone}
    wait_until(
        lambda: not gone_keys & receiver.external_keys(),
        timeout=15,
        interval=0.1,
        what=f"deletes in {receiver.kind}'s external cache",
    )
    assert {flow_key(f) for f in work.synth[SYNTH // 2 :]} <= receiver.external_keys()
    # nothing was dropped as malformed on either side, nothing left out for the peer
    assert wire_errors(receiver) == {}
    assert wire_errors(sender) == {}


def nfs_hellos(daemon: Nfsyncd) -> int:
    """Peer sessions (HELLOs that reset the sequence tracking) nfsyncd has accepted."""
    return int(daemon.stats("queue")["queue"]["hellos"])


def hello_settled(daemon: Nfsyncd) -> bool:
    """One peer session seen, and the peer's messages no longer all carry HELLO."""
    queue = daemon.stats("queue")["queue"]
    return bool(queue["hellos"] == 1 and queue["msgs_recv"] > queue["hello_msgs_recv"])


@pytest.mark.kernel
@pytest.mark.parametrize("kinds", DIRECTIONS)
def test_ftfw_conntrackd_restart_hello_then_resync(
    kinds: tuple[str, str], sync_lab: SyncLab, start_pair: StartPair
) -> None:
    """A restarted conntrackd starts its sequence numbers again at time(), usually *before*
    the old ones: only the HELLO handshake makes nfsyncd accept (as receiver) or be
    accepted (as sender) again. What was sent while it was down is not retransmitted (HELLO
    flushes the resend queue, reference §2.1): a resync request on the receiver brings it."""
    lab = sync_lab
    sender, receiver = start_pair(*kinds, lab, mode="ftfw", transport="udp")
    ctd, nfs = (sender, receiver) if isinstance(sender, Conntrackd) else (receiver, sender)
    assert isinstance(ctd, Conntrackd) and isinstance(nfs, Nfsyncd)
    before = {flow_key(f) for f in lab.create_flows("fw1", 200, base=0)}
    wait_external(receiver, before)

    # Wait until conntrackd got nfsyncd's HELLO_BACK and stopped flagging HELLO. Before
    # that, nfsyncd takes a HELLO whose seq continues the previous one for the same session
    # (its deliberate refinement, nfsyncd/sync/ftfw.py), and a conntrackd that sent one
    # ALIVE at time() T and restarts a second later does start again at T + 1.
    wait_until(lambda: hello_settled(nfs), timeout=5, what="the first HELLO handshake")
    ctd.stop()
    down = {flow_key(f) for f in lab.create_flows("fw1", 50, base=200)}
    ctd.start()
    after = {flow_key(f) for f in lab.create_flows("fw1", 50, base=250)}
    wait_external(receiver, after)
    # the restarted conntrackd's HELLO (it sends one within its 1 s ALIVE at the latest)
    wait_until(lambda: nfs_hellos(nfs) == 2, timeout=5, what="the restarted peer's HELLO")

    if isinstance(receiver, Conntrackd):
        receiver.resync_request()
    else:
        assert isinstance(receiver, Nfsyncd)
        receiver.ctl("request-resync")
    wait_external(receiver, before | down | after)
