"""Record golden ctnetlink captures from the real kernel (run as root).

    sudo .venv/bin/python tests/tools/capture_golden.py [--out DIR] [NAME ...]

Each scenario builds its own throwaway namespaces (198.18.0.0/15, fd00:198:18::/48 only),
makes real traffic or ctnetlink requests there, and records the netlink datagrams exactly
as the kernel delivered them to a plain :class:`~nfsyncd.netlink.NetlinkSocket` (event
subscriptions and dump replies: ``Message.data`` is the received datagram, unmodified).
It writes ``DIR/NAME.bin`` (the datagram, or the datagrams of one flow's lifecycle one after
the other) and ``DIR/NAME.json`` (the messages as the current codec decodes them, see
tests/_golden.py, plus a ``note`` saying how the capture was made). Review the sidecars
(the tool prints each message's ``describe()``) before committing them: they become the
expected values of tests/unit/test_codec.py and tests/kernel/test_crosscheck_pyroute2.py.

Nothing outside the namespaces it creates is touched; they are deleted by name at the end,
also on failure.
"""

from __future__ import annotations

import argparse
import ftplib
import json
import os
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import trio

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nfsyncd.kernel import ALL_EVENT_GROUPS, FLOW_EVENT_GROUPS, Conntrack
from nfsyncd.lab.netns import Netns, add_address, cleanup_all, veth_pair
from nfsyncd.model import (
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    EventKind,
    Expectation,
    Flow,
    SctpInfo,
    Status,
    TcpInfo,
    Tuple,
)
from nfsyncd.netlink import Message, NetlinkSocket, Overrun, Request, parse_messages
from nfsyncd.netlink import ctnetlink as ct
from tests import _golden
from tests._support import ftp_helper_ruleset, start_ftp_server

A_IP, B_IP = "198.18.0.1", "198.18.0.2"
A_IP6, B_IP6 = "fd00:198:18::1", "fd00:198:18::2"

TRACKING_RULESET = """table inet track {
  chain input { type filter hook input priority filter;
    ct state established,related accept
  }
}
"""


def v4(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, text)


def v6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


@dataclass
class Received:
    datagram: bytes
    msg: Message
    obj: Flow | Expectation
    kind: EventKind | None  # None: a reply to a request


class Recorder:
    """An event subscription that keeps every datagram the kernel delivers."""

    def __init__(self, groups: Iterable[int] = FLOW_EVENT_GROUPS) -> None:
        self.sock = NetlinkSocket(groups=groups, rcvbuf=16 * 1024 * 1024)
        self.received: list[Received] = []

    def close(self) -> None:
        self.sock.close()

    async def until(self, done: Callable[[list[Received]], bool], what: str) -> None:
        with trio.fail_after(10):
            while not done(self.received):
                batch = await self.sock.recv_batch()
                if isinstance(batch, Overrun):
                    raise RuntimeError("event overrun while capturing")
                for msg in batch:
                    self.received.extend(_decode(msg, event=True))
        if not done(self.received):
            raise RuntimeError(f"never saw {what}")

    def of_flow(self, orig: Tuple) -> list[Received]:
        return [r for r in self.received if isinstance(r.obj, Flow) and r.obj.orig == orig]


def _decode(msg: Message, *, event: bool) -> list[Received]:
    subsys = ct.subsystem(msg)
    obj: Flow | Expectation
    if subsys == ct.NFNL_SUBSYS_CTNETLINK:
        obj = ct.decode_flow(msg.data, msg.offset, msg.end)
    elif subsys == ct.NFNL_SUBSYS_CTNETLINK_EXP:
        obj = ct.decode_expect(msg.data, msg.offset, msg.end)
    else:
        return []
    return [Received(msg.data, msg, obj, ct.event_kind(msg.type, msg.flags) if event else None)]


def _has(
    orig: Tuple, kind: EventKind, state: int | None = None
) -> Callable[[list[Received]], bool]:
    def done(received: list[Received]) -> bool:
        for r in received:
            is_it = isinstance(r.obj, Flow) and r.obj.orig == orig and r.kind == kind
            if is_it and (state is None or _tcp_state(r.obj) == state):
                return True
        return False

    return done


def _tcp_state(obj: Flow | Expectation) -> int | None:
    if isinstance(obj, Flow) and isinstance(obj.protoinfo, TcpInfo):
        return obj.protoinfo.state
    return None


def _established(events: list[Received]) -> Received:
    return next(r for r in events if r.kind == EventKind.UPDATE and _tcp_state(r.obj) == 3)


@dataclass
class Capture:
    name: str
    datagrams: list[bytes]
    note: str


def _unique(datagrams: Iterable[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for d in datagrams:
        if not any(d is seen for seen in out):
            out.append(d)
    return out


async def _poll_gone(conntrack: Conntrack, orig: Tuple) -> None:
    """Wait for an expired flow to go: a lookup of an expired entry destroys it at once."""
    with trio.fail_after(10):
        while await conntrack.get(orig) is not None:
            await trio.sleep(0.05)


def _pair(ipv6: bool = False) -> tuple[Netns, Netns]:
    a = Netns.create("cap")
    try:
        b = Netns.create("cap")
    except BaseException:
        a.close()
        raise
    try:
        a_if, b_if = veth_pair(a, b, f"{A_IP}/24", f"{B_IP}/24")
        if ipv6:
            add_address(a, a_if, f"{A_IP6}/64")
            add_address(b, b_if, f"{B_IP6}/64")
    except BaseException:
        b.close()
        a.close()
        raise
    return a, b


# -- scenarios ------------------------------------------------------------------------------


async def tcp_v4() -> Capture:
    a, b = _pair()
    with a, b:
        a.nft(TRACKING_RULESET)
        a.sysctl("net.netfilter.nf_conntrack_acct", 1)
        a.sysctl("net.netfilter.nf_conntrack_timestamp", 1)
        a.sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", 1)
        with a.entered():
            rec = Recorder()
            conntrack = Conntrack()
            listener = socket.create_server((A_IP, 8080))
        with b.entered():
            client = socket.create_connection((A_IP, 8080), timeout=5)
        with conntrack, listener:
            conn, _ = listener.accept()
            with conn, client:
                orig = Tuple(v4(B_IP), v4(A_IP), IPPROTO_TCP, client.getsockname()[1], 8080)
                client.sendall(b"hello")
                conn.recv(5)
                conn.sendall(b"world!")
                client.recv(6)
                client.shutdown(socket.SHUT_WR)
                conn.recv(1)
                conn.shutdown(socket.SHUT_WR)
                client.recv(1)
            await rec.until(_has(orig, EventKind.UPDATE, 7), "TIME_WAIT")
            await _poll_gone(conntrack, orig)
            await rec.until(_has(orig, EventKind.DESTROY), "DESTROY")
            events = rec.of_flow(orig)
            rec.close()
    new = events[0]
    established = _established(events)
    destroy = events[-1]
    return Capture(
        "tcp_v4",
        [new.datagram, established.datagram, destroy.datagram],
        "Three event datagrams of one real TCP connection (client 198.18.0.2 -> server "
        "198.18.0.1:8080), as received by the server namespace's event socket, one after "
        "the other: NEW (SYN_SENT), the UPDATE entering ESTABLISHED, and DESTROY with "
        "counters and timestamps (nf_conntrack_acct=1, nf_conntrack_timestamp=1; TIME_WAIT "
        "shortened to 1 s, the expired flow reaped by a ctnetlink get, hence origin 0).",
    )


async def udp_v6() -> Capture:
    a, b = _pair(ipv6=True)
    with a, b:
        a.nft(TRACKING_RULESET)
        a.sysctl("net.netfilter.nf_conntrack_udp_timeout", 1)
        a.sysctl("net.netfilter.nf_conntrack_udp_timeout_stream", 1)
        with a.entered():
            rec = Recorder()
            conntrack = Conntrack()
            server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            server.bind((A_IP6, 5353))
        with b.entered():
            client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            client.bind((B_IP6, 40053))
        with conntrack, server, client:
            client.settimeout(5)
            server.settimeout(5)
            client.sendto(b"query", (A_IP6, 5353))
            _, peer = server.recvfrom(100)
            server.sendto(b"answer", peer)
            client.recvfrom(100)
            orig = Tuple(v6(B_IP6), v6(A_IP6), IPPROTO_UDP, 40053, 5353)
            await rec.until(_has(orig, EventKind.UPDATE), "UPDATE")
            await _poll_gone(conntrack, orig)
            await rec.until(_has(orig, EventKind.DESTROY), "DESTROY")
            events = rec.of_flow(orig)
            rec.close()
    return Capture(
        "udp_v6",
        _unique(r.datagram for r in events),
        "The event datagrams of one real UDP exchange over IPv6 (fd00:198:18::2:40053 -> "
        "fd00:198:18::1:5353, one query, one answer), received in the server namespace one "
        "after the other: NEW, UPDATE (reply seen), DESTROY (UDP timeouts shortened to 1 s, "
        "reaped by a ctnetlink get; no acct/timestamp sysctls: no counters).",
    )


async def _ping_capture(name: str, family: int) -> Capture:
    ipv6 = family == socket.AF_INET6
    a, b = _pair(ipv6=ipv6)
    dst = A_IP6 if ipv6 else A_IP
    proto = IPPROTO_ICMPV6 if ipv6 else IPPROTO_ICMP
    with a, b:
        a.nft(TRACKING_RULESET)
        timeout_key = "icmpv6_timeout" if ipv6 else "icmp_timeout"
        a.sysctl(f"net.netfilter.nf_conntrack_{timeout_key}", 1)
        b.sysctl("net.ipv4.ping_group_range", "0 0")  # ping sockets for root (gid 0)
        with a.entered():
            rec = Recorder()
            conntrack = Conntrack()
        with b.entered():
            pinger = socket.socket(family, socket.SOCK_DGRAM, proto)
        with conntrack, pinger:
            pinger.settimeout(5)
            request = bytes([128 if ipv6 else 8, 0, 0, 0, 0, 0, 0, 1]) + b"nfsyncd"
            pinger.sendto(request, (dst, 0))
            pinger.recvfrom(100)
            ident = pinger.getsockname()[1]
            src_ip = B_IP6 if ipv6 else B_IP
            orig = Tuple(
                v6(src_ip) if ipv6 else v4(src_ip),
                v6(dst) if ipv6 else v4(dst),
                proto,
                icmp_type=128 if ipv6 else 8,
                icmp_code=0,
                icmp_id=ident,
            )
            await rec.until(_has(orig, EventKind.UPDATE), "UPDATE")
            await _poll_gone(conntrack, orig)
            await rec.until(_has(orig, EventKind.DESTROY), "DESTROY")
            events = rec.of_flow(orig)
            rec.close()
    what = "ICMPv6" if ipv6 else "ICMP"
    return Capture(
        name,
        _unique(r.datagram for r in events),
        f"The event datagrams of one real {what} echo request and reply (a ping socket in "
        f"namespace b pinging a), received in a one after the other: NEW, UPDATE (reply "
        f"seen), DESTROY ({what} timeout shortened to 1 s, reaped by a ctnetlink get).",
    )


async def icmp_v4() -> Capture:
    return await _ping_capture("icmp_v4", socket.AF_INET)


async def icmpv6() -> Capture:
    return await _ping_capture("icmpv6", socket.AF_INET6)


def _routed() -> tuple[Netns, Netns, Netns]:
    made: list[Netns] = []
    try:
        for _ in range(3):
            made.append(Netns.create("cap"))
        client, router, server = made
        veth_pair(client, router, "198.18.1.2/24", "198.18.1.1/24", "eth0", "lan")
        veth_pair(router, server, "198.18.2.1/24", "198.18.2.2/24", "wan", "eth0")
        client.ip("route", "add", "198.18.2.0/24", "via", "198.18.1.1")
        server.ip("route", "add", "198.18.1.0/24", "via", "198.18.2.1")
        router.sysctl("net.ipv4.ip_forward", 1)
    except BaseException:
        for ns in made:
            ns.close()
        raise
    return client, router, server


async def _nat_capture(name: str, snat: bool) -> Capture:
    client_ns, router, server_ns = _routed()
    with client_ns, router, server_ns:
        if snat:
            rule = "chain post { type nat hook postrouting priority srcnat;\n"
            rule += "    oifname wan ip protocol tcp snat to 198.18.2.1:61000\n  }"
            target = ("198.18.2.2", 8080)
        else:
            rule = "chain pre { type nat hook prerouting priority dstnat;\n"
            rule += "    iifname lan tcp dport 80 dnat to 198.18.2.2:8080\n  }"
            target = ("198.18.1.1", 80)
        router.nft(f"table ip nat {{\n  {rule}\n}}\n")
        with router.entered():
            rec = Recorder()
        with server_ns.entered():
            listener = socket.create_server(("198.18.2.2", 8080))
        with client_ns.entered():
            client = socket.create_connection(target, timeout=5)
        with listener, client:
            conn, _ = listener.accept()
            with conn:
                client.sendall(b"ping")
                conn.recv(4)
                orig = Tuple(
                    v4("198.18.1.2"), v4(target[0]), IPPROTO_TCP, client.getsockname()[1], target[1]
                )
                await rec.until(_has(orig, EventKind.UPDATE, 3), "ESTABLISHED")
        events = rec.of_flow(orig)
        rec.close()
    new = events[0]
    established = _established(events)
    how = (
        "an nft rule 'snat to 198.18.2.1:61000' on the way out to the server"
        if snat
        else "an nft rule 'dnat to 198.18.2.2:8080' for TCP to the router's port 80"
    )
    return Capture(
        name,
        [new.datagram, established.datagram],
        "Two event datagrams of the router namespace for one real TCP connection from the "
        f"client (198.18.1.2) to {target[0]}:{target[1]}, forwarded and translated by {how}: "
        "NEW, then the UPDATE entering ESTABLISHED; the reply tuple shows the translation.",
    )


async def snat_v4() -> Capture:
    return await _nat_capture("snat_v4", snat=True)


async def dnat_v4() -> Capture:
    return await _nat_capture("dnat_v4", snat=False)


async def _udp_to_server(a: Netns, b: Netns, dport: int, rec: Recorder) -> list[Received]:
    with a.entered():
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind((A_IP, dport))
    with b.entered():
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind((B_IP, 0))
    with server, client:
        server.settimeout(5)
        client.settimeout(5)
        client.sendto(b"hello", (A_IP, dport))
        _, peer = server.recvfrom(100)
        server.sendto(b"hi", peer)
        client.recvfrom(100)
        orig = Tuple(v4(B_IP), v4(A_IP), IPPROTO_UDP, client.getsockname()[1], dport)
        await rec.until(_has(orig, EventKind.UPDATE), "UPDATE")
    return rec.of_flow(orig)


async def zone() -> Capture:
    a, b = _pair()
    with a, b:
        a.nft(
            "table inet zones {\n"
            "  chain pre { type filter hook prerouting priority raw;\n"
            "    iifname != lo ct zone set 7\n  }\n"
            "  chain out { type filter hook output priority raw;\n"
            "    oifname != lo ct zone set 7\n  }\n"
            "  chain input { type filter hook input priority filter;\n"
            "    ct state established,related accept\n  }\n}\n"
        )
        with a.entered():
            rec = Recorder()
        events = await _udp_to_server(a, b, 6000, rec)
        rec.close()
    return Capture(
        "zone",
        _unique(r.datagram for r in events),
        "The event datagrams (NEW, UPDATE) of one real UDP exchange b -> a:6000 that "
        "namespace a's raw chains put in conntrack zone 7 ('ct zone set 7' in prerouting and "
        "output), as a's event socket received them.",
    )


async def mark_labels() -> Capture:
    a, b = _pair()
    with a, b:
        a.nft(
            "table inet marks {\n"
            "  chain input { type filter hook input priority filter;\n"
            "    udp dport 6001 ct mark set 0x2a ct label set 3 ct label set 100\n"
            "    ct state established,related accept\n  }\n}\n"
        )
        with a.entered():
            rec = Recorder()
        events = await _udp_to_server(a, b, 6001, rec)
        rec.close()
    return Capture(
        "mark_labels",
        _unique(r.datagram for r in events),
        "The event datagrams (NEW, UPDATE) of one real UDP exchange b -> a:6001 whose first "
        "packet an nft input rule gave ct mark 0x2a and ct labels 3 and 100, as a's event "
        "socket received them.",
    )


async def _ftp_session(
    kinds: tuple[str, ...], body: Callable[[ftplib.FTP, Recorder, int], Awaitable[list[bytes]]]
) -> list[bytes]:
    a, b = _pair()
    with a, b, tempfile.TemporaryDirectory() as tmp:
        server = start_ftp_server(a, A_IP, Path(tmp) / "root", 2121)
        try:
            a.nft(ftp_helper_ruleset(hooks=("prerouting",), port=2121))
            groups = ALL_EVENT_GROUPS if "expect" in kinds else FLOW_EVENT_GROUPS
            with a.entered():
                rec = Recorder(groups)
            with b.entered():
                ftp = ftplib.FTP()
                ftp.connect(A_IP, 2121, timeout=5)
            with ftp:
                ftp.login()
                out = await body(ftp, rec, ftp.sock.getsockname()[1])
            rec.close()
        finally:
            server.stop()
    return out


async def helper_ftp() -> Capture:
    async def body(ftp: ftplib.FTP, rec: Recorder, port: int) -> list[bytes]:
        orig = Tuple(v4(B_IP), v4(A_IP), IPPROTO_TCP, port, 2121)
        await rec.until(_has(orig, EventKind.UPDATE, 3), "ESTABLISHED")
        events = rec.of_flow(orig)
        established = _established(events)
        return [events[0].datagram, established.datagram]

    return Capture(
        "helper_ftp",
        await _ftp_session(("flow",), body),
        "Two event datagrams of a real FTP control connection (ftplib in b -> pyftpdlib on "
        "198.18.0.1:2121) whose first packet got the in-kernel ftp helper from an nft "
        "'ct helper set' rule in a's prerouting chain: NEW and the UPDATE entering "
        "ESTABLISHED, both with CTA_HELP 'ftp', as a's event socket received them.",
    )


async def expect_pasv() -> Capture:
    async def body(ftp: ftplib.FTP, rec: Recorder, port: int) -> list[bytes]:
        ftp.sendcmd("PASV")
        await rec.until(
            lambda got: any(isinstance(r.obj, Expectation) for r in got), "expectation NEW"
        )
        return [next(r.datagram for r in rec.received if isinstance(r.obj, Expectation))]

    return Capture(
        "expect_pasv",
        await _ftp_session(("expect",), body),
        "The expectation NEW event datagram of a real FTP PASV command (ftplib in b -> "
        "pyftpdlib on 198.18.0.1:2121 with the ftp helper assigned by an nft rule): the "
        "helper expects b -> a:<passive port> from any source port; received by a's event "
        "socket subscribed to the expectation groups.",
    )


async def dump_flows() -> Capture:
    ns = Netns.create("cap")
    with ns:
        ns.nft(
            "table inet labels {\n  chain input { type filter hook input priority filter;\n"
            "    ct label 127 accept\n  }\n}\n"
        )
        with ns.entered():
            conntrack = Conntrack()
            sock = NetlinkSocket()
        with conntrack, sock:
            a4, b4 = v4(A_IP), v4(B_IP)
            a6, b6 = v6(A_IP6), v6(B_IP6)
            assured = int(Status.SEEN_REPLY | Status.ASSURED)
            flows = [
                Flow(
                    Tuple(b4, a4, IPPROTO_TCP, 40000, 80),
                    timeout=300,
                    status=assured,
                    protoinfo=TcpInfo(3),
                ),
                Flow(Tuple(b6, a6, IPPROTO_TCP, 40001, 443), timeout=120, protoinfo=TcpInfo(1)),
                Flow(Tuple(b4, a4, IPPROTO_UDP, 5353, 53), timeout=30, mark=0x10),
                Flow(Tuple(b4, a4, IPPROTO_ICMP, icmp_type=8, icmp_code=0, icmp_id=77), timeout=30),
                Flow(
                    Tuple(b6, a6, IPPROTO_ICMPV6, icmp_type=128, icmp_code=0, icmp_id=78),
                    timeout=30,
                ),
                Flow(
                    Tuple(b4, a4, IPPROTO_SCTP, 5000, 5001),
                    timeout=60,
                    protoinfo=SctpInfo(4, 0x1234, 0x5678),
                ),
                Flow(Tuple(b4, a4, IPPROTO_GRE, 0x10, 0x20), timeout=60),
                Flow(Tuple(b4, a4, IPPROTO_UDP, 7000, 53), timeout=60, zone=7),
                Flow(
                    Tuple(b4, a4, IPPROTO_UDP, 7001, 53),
                    timeout=60,
                    labels=(1 << 1 | 1 << 100).to_bytes(16, "little"),
                ),
                Flow(
                    Tuple(b4, a4, IPPROTO_TCP, 40002, 21),
                    timeout=300,
                    helper="ftp",
                    protoinfo=TcpInfo(3),
                ),
                Flow(
                    Tuple(b4, a4, IPPROTO_TCP, 40003, 80),
                    Tuple(v4("198.18.2.2"), v4("198.18.2.1"), IPPROTO_TCP, 8080, 61000),
                    timeout=300,
                    protoinfo=TcpInfo(3),
                ),
            ]
            for flow in flows:
                await conntrack.create(flow)
            msgs = await sock.dump(Request(ct.CT_GET, 0, ct.nfgenmsg()), "dump")
    datagrams = _unique(m.data for m in msgs)
    return Capture(
        "dump_flows",
        datagrams[:1],
        f"The first reply datagram of a conntrack table dump (IPCTNL_MSG_CT_GET + NLM_F_DUMP) "
        f"in a namespace holding {len(flows)} flows created through ctnetlink: TCP v4/v6, "
        "UDP with a mark, ICMP, ICMPv6, SCTP, GRE, a flow in zone 7, one with labels (a "
        "'ct label' rule enables them), one with the ftp helper, one with SNAT+DNAT. "
        f"The kernel packed {sum(1 for m in msgs if m.data is datagrams[0])} flows into it.",
    )


SCENARIOS: dict[str, Callable[[], Awaitable[Capture]]] = {
    "tcp_v4": tcp_v4,
    "udp_v6": udp_v6,
    "icmp_v4": icmp_v4,
    "icmpv6": icmpv6,
    "snat_v4": snat_v4,
    "dnat_v4": dnat_v4,
    "zone": zone,
    "mark_labels": mark_labels,
    "helper_ftp": helper_ftp,
    "expect_pasv": expect_pasv,
    "dump_flows": dump_flows,
}


def write(capture: Capture, out: Path) -> None:
    for d in capture.datagrams:
        if len(d) % 4:
            raise RuntimeError(f"{capture.name}: a datagram of {len(d)} bytes is not aligned")
    stem = out / capture.name
    _golden.save_capture(stem, b"".join(capture.datagrams))
    sidecar = stem.with_suffix(".json")
    doc = json.loads(sidecar.read_text())
    doc["note"] = capture.note
    sidecar.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def describe(path: Path) -> str:
    data, doc = _golden.load_capture(path)
    lines = [f"{path.stem}: {len(data)} bytes, {len(doc['messages'])} messages"]
    for msg in parse_messages(data):
        for r in _decode(msg, event=False):
            kind = (
                ct.event_kind(msg.type, msg.flags).name
                if msg.seq == 0 and not msg.flags & 2
                else "reply"
            )
            lines.append(f"  {kind:7} pid={msg.pid} {r.obj.describe()}")
    return "\n".join(lines)


async def main(names: list[str], out: Path) -> None:
    for name in names:
        capture = await SCENARIOS[name]()
        write(capture, out)
        print(describe(out / f"{name}.bin"), flush=True)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"scenarios (default: all): {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--out", type=Path, default=_golden.CAPTURE_DIR)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    if os.geteuid() != 0:
        print("capture_golden: needs root (network namespaces, nft, ctnetlink)", file=sys.stderr)
        return 2
    try:
        trio.run(main, args.names or list(SCENARIOS), args.out)
    finally:
        cleanup_all()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
