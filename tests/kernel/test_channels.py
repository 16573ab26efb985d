"""Sync channels (UDP, multicast, TCP) and redundant links between two real namespaces.

What these tests guarantee:

* messages built with the real encoder and packed many per datagram arrive decoded, in
  order, on the other side, in both directions, over UDP (IPv4 and IPv6), multicast
  (IPv4 and IPv6) and TCP; datagrams and bytes are counted on both ends; a batch of UDP
  datagrams goes out in one segmented call and arrives as the same datagrams (not with
  UDP checksums off, nor with ``segment_offload = false``);
* TCP reassembles a message cut across reads; a new incoming connection replaces the old;
  after the peer's channel closes, what is sent meanwhile waits in the error queue and
  arrives, in order, once the peer is back;
  a full error queue drops its oldest buffers and counts them;
* garbage sent to a UDP port is counted in the network stats and the channel keeps
  receiving; a send the network refuses returns False and is counted;
* a missing interface is an error that names the link;
* redundant links: taking the active link's interface down moves sending to the other link
  within a deadline; traffic from the peer on another link makes that link active.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
import trio

from nfsyncd._config_types import SyncLink
from nfsyncd.lab.netns import Netns, add_address, veth_pair
from nfsyncd.model import IPPROTO_TCP, Flow, TcpInfo, Tuple
from nfsyncd.sync import (
    Encoder,
    Message,
    MsgType,
    alive_message,
    decode_message,
    pack_datagrams,
)
from nfsyncd.sync.channel import Channel, open_channel
from nfsyncd.sync.links import LinkSet
from nfsyncd.sync.tcp import TcpChannel
from tests._support import NetnsPair

pytestmark = pytest.mark.kernel

T = TypeVar("T")
ENC = Encoder(peer_version=(1, 4, 9))
A6, B6 = "fd00:198:18::1", "fd00:198:18::2"
MCAST4 = "239.198.18.1"
MCAST6 = "ff12::198:18"


def ip(text: str | None) -> Any:
    return ipaddress.ip_address(text) if text is not None else None


def mklink(
    transport: str,
    interface: str,
    *,
    local: str | None = None,
    peer: str | None = None,
    group: str | None = None,
    port: int = 3780,
    **kw: Any,
) -> SyncLink:
    return SyncLink(
        transport,  # type: ignore[arg-type]
        interface,
        local=ip(local),
        peer=ip(peer),
        group=ip(group),
        port=port,
        **kw,
    )


def flow(n: int) -> Flow:
    a, b = socket.inet_aton("198.18.7.1"), socket.inet_aton("198.18.7.2")
    sport = 10000 + n
    return Flow(
        Tuple(a, b, IPPROTO_TCP, sport, 80),
        Tuple(b, a, IPPROTO_TCP, 80, sport),
        status=0x0C,
        timeout=300,
        protoinfo=TcpInfo(state=3),
    )


def messages(first_seq: int, count: int) -> list[bytes]:
    return [ENC.flow_message(MsgType.CT_NEW, flow(i), first_seq + i) for i in range(count)]


async def eventually(probe: Callable[[], T | None], *, timeout: float = 5.0, what: str = "") -> T:
    """Poll ``probe`` until it is truthy; fail the test at the deadline."""
    deadline = trio.current_time() + timeout
    while True:
        value = probe()
        if value:
            return value
        if trio.current_time() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or probe!r}")
        await trio.sleep(0.01)


async def opened(ns: Netns, chan: Channel) -> Channel:
    with ns.entered():
        await chan.open()
    return chan


@asynccontextmanager
async def collecting(chan: Channel) -> AsyncIterator[list[Message]]:
    """Everything ``chan`` receives, appended in the background while the block runs."""
    got: list[Message] = []

    async def loop() -> None:
        while True:
            try:
                got.extend(await chan.receive())
            except trio.ClosedResourceError:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop)
        yield got
        nursery.cancel_scope.cancel()


def data_seqs(got: list[Message]) -> list[int]:
    return [m.seq for m in got if m.is_data]


async def check_transfer(tx: Channel, rx: Channel, first_seq: int, count: int = 60) -> None:
    """``count`` flows packed into datagrams go from ``tx`` to ``rx`` intact and counted:
    the first datagram alone, the others as one batch (on UDP links that segment, in one
    system call that the kernel cuts into the same datagrams)."""
    msgs = messages(first_seq, count)
    datagrams = pack_datagrams(msgs, tx.payload_size)
    assert len(datagrams) > 2 and len(datagrams) < count  # many messages per datagram
    sent0, bytes0, runs0 = tx.stats.sent_packets, tx.stats.sent_bytes, tx.stats.segmented_sends
    recv0, packets0 = rx.stats.recv_bytes, rx.stats.recv_packets
    async with collecting(rx) as got:
        assert await tx.send(datagrams[0])
        assert await tx.send_many(datagrams[1:]) == len(datagrams) - 1
        await eventually(lambda: len(data_seqs(got)) >= count, what=f"{count} messages")
    assert data_seqs(got) == list(range(first_seq, first_seq + count))
    assert [m.obj.orig for m in got] == [flow(i).orig for i in range(count)]  # type: ignore[union-attr]
    assert got[0].obj == as_decoded(flow(0))
    total = sum(map(len, datagrams))
    assert tx.stats.sent_packets - sent0 == len(datagrams)
    assert tx.stats.sent_bytes - bytes0 == total
    assert rx.stats.recv_bytes - recv0 == total
    if not rx.stream:
        assert rx.stats.recv_packets - packets0 == len(datagrams)
        segments = tx.link.segment_offload and tx.link.checksum
        assert tx.stats.segmented_sends - runs0 == (1 if segments else 0)
    assert rx.network.malformed == 0
    assert tx.stats.send_errors == 0 and rx.stats.recv_errors == 0


def as_decoded(f: Flow) -> Flow:
    """What the peer decodes for ``f`` (the wire rebuilds the reply tuple itself)."""
    return decode_message(ENC.flow_message(MsgType.CT_NEW, f, 1)).obj  # type: ignore[return-value]


def add_v6(pair: NetnsPair) -> None:
    add_address(pair.a, pair.a_if, f"{A6}/64")
    add_address(pair.b, pair.b_if, f"{B6}/64")


def running(ns: Netns, ifname: str) -> bool:
    return bool(json.loads(ns.ip("-j", "link", "show", ifname).stdout)[0]["operstate"] == "UP")


async def operational(ns: Netns, *ifnames: str) -> None:
    """Wait for the kernel to mark the links running: until then (up to a second after
    "up", the link watch delay) a veth drops what is sent on it."""
    for name in ifnames:
        await eventually(functools.partial(running, ns, name), what=f"{name} running")


async def pair_channels(
    pair: NetnsPair, a_link: SyncLink, b_link: SyncLink
) -> tuple[Channel, Channel]:
    await operational(pair.a, pair.a_if)
    await operational(pair.b, pair.b_if)
    a = await opened(pair.a, open_channel(a_link, 0))
    b = await opened(pair.b, open_channel(b_link, 0))
    return a, b


# -- datagram transports ------------------------------------------------------------------


@pytest.mark.parametrize(("checksum", "segment"), [(True, True), (False, True), (True, False)])
async def test_udp_v4_both_directions(netns_pair: NetnsPair, checksum: bool, segment: bool) -> None:
    """Also without UDP checksums (the kernel refuses to segment such datagrams: the link
    falls back to one call per datagram and loses none) and with segmentation turned off."""
    p = netns_pair
    opts: dict[str, Any] = {"checksum": checksum, "segment_offload": segment}
    a, b = await pair_channels(
        p,
        mklink("udp", p.a_if, local=p.a_ip, peer=p.b_ip, rcvbuf=1 << 20, **opts),
        mklink("udp", p.b_if, local=p.b_ip, peer=p.a_ip, sndbuf=1 << 20, **opts),
    )
    try:
        assert a.payload_size == 1500 - 28
        await check_transfer(a, b, 1000)
        await check_transfer(b, a, 5000)
        assert a.describe()["transport"] == "udp" and a.describe()["peer"] == p.b_ip
    finally:
        a.close()
        b.close()


async def test_udp_v6(netns_pair: NetnsPair) -> None:
    p = netns_pair
    add_v6(p)
    a, b = await pair_channels(
        p,
        mklink("udp", p.a_if, local=A6, peer=B6),
        mklink("udp", p.b_if, local=B6, peer=A6),
    )
    try:
        assert a.payload_size == 1500 - 48
        await check_transfer(a, b, 1)
        await check_transfer(b, a, 3000)
    finally:
        a.close()
        b.close()


async def test_udp_v6_link_local(netns_pair: NetnsPair) -> None:
    """Link-local addresses need the interface's scope id on both sockets."""
    p = netns_pair
    p.a.ip("address", "add", "fe80::198:1/64", "dev", p.a_if, "nodad")
    p.b.ip("address", "add", "fe80::198:2/64", "dev", p.b_if, "nodad")
    a, b = await pair_channels(
        p,
        mklink("udp", p.a_if, local="fe80::198:1", peer="fe80::198:2"),
        mklink("udp", p.b_if, local="fe80::198:2", peer="fe80::198:1"),
    )
    try:
        await check_transfer(a, b, 7)
        await check_transfer(b, a, 8)
    finally:
        a.close()
        b.close()


async def test_multicast_v4(netns_pair: NetnsPair) -> None:
    p = netns_pair
    a, b = await pair_channels(
        p,
        mklink("multicast", p.a_if, local=p.a_ip, group=MCAST4),
        mklink("multicast", p.b_if, local=p.b_ip, group=MCAST4),
    )
    try:
        await check_transfer(a, b, 100)
        await check_transfer(b, a, 200)
        assert a.describe()["group"] == MCAST4
    finally:
        a.close()
        b.close()


async def test_multicast_v6(netns_pair: NetnsPair) -> None:
    p = netns_pair
    add_v6(p)
    a, b = await pair_channels(
        p,
        mklink("multicast", p.a_if, group=MCAST6),
        mklink("multicast", p.b_if, group=MCAST6),
    )
    try:
        await check_transfer(a, b, 100)
        await check_transfer(b, a, 200)
    finally:
        a.close()
        b.close()


async def test_malformed_datagrams_are_counted_and_receiving_goes_on(
    netns_pair: NetnsPair,
) -> None:
    p = netns_pair
    await operational(p.a, p.a_if)
    await operational(p.b, p.b_if)
    b = await opened(p.b, open_channel(mklink("udp", p.b_if, local=p.b_ip, peer=p.a_ip), 0))
    with p.a.entered():
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        good = messages(42, 2)
        async with collecting(b) as got:
            raw.sendto(b"\x00" * 3, (p.b_ip, 3780))  # shorter than a header
            raw.sendto(b"\x21\x00\x00\x08\x00\x00\x00\x01", (p.b_ip, 3780))  # version 2
            raw.sendto(good[0][:-4], (p.b_ip, 3780))  # truncated
            raw.sendto(b"".join(good), (p.b_ip, 3780))
            await eventually(lambda: data_seqs(got) == [42, 43], what="the good datagram")
        assert b.network.malformed >= 3
        assert b.stats.recv_packets == 4
        assert b.stats.recv_errors == 0
    finally:
        raw.close()
        b.close()


async def test_refused_send_returns_false_and_is_counted(netns_pair: NetnsPair) -> None:
    p = netns_pair
    # 198.18.9.9 has no route in namespace a: the kernel refuses the send (ENETUNREACH).
    a = await opened(p.a, open_channel(mklink("udp", p.a_if, local=p.a_ip, peer="198.18.9.9"), 0))
    try:
        assert not await a.send(messages(1, 1)[0])
        assert a.stats.send_errors == 1
        assert a.stats.sent_packets == 0
    finally:
        a.close()


async def test_missing_interface_names_the_link(netns: Netns) -> None:
    chan = open_channel(mklink("udp", "nosuch0", local="198.18.0.1", peer="198.18.0.2"), 2)
    with pytest.raises(OSError, match=r"sync\.links\[2\] \(interface nosuch0\): no such interface"):
        await opened(netns, chan)
    with pytest.raises(ValueError, match="udp needs a peer address"):
        await opened(netns, open_channel(mklink("udp", "lo"), 0))


# -- TCP ------------------------------------------------------------------------------------


def tcp_links(p: NetnsPair, **kw: Any) -> tuple[SyncLink, SyncLink]:
    return (
        mklink("tcp", p.a_if, local=p.a_ip, peer=p.b_ip, **kw),
        mklink("tcp", p.b_if, local=p.b_ip, peer=p.a_ip, **kw),
    )


async def test_tcp_both_directions(netns_pair: NetnsPair) -> None:
    p = netns_pair
    a, b = await pair_channels(p, *tcp_links(p))
    try:
        assert a.stream and a.payload_size == 1500 - 40
        assert a.describe()["client"] == "disconnected"
        await check_transfer(a, b, 10)
        await check_transfer(b, a, 20)
        for chan in (a, b):
            state = chan.describe()
            assert (state["server"], state["client"]) == ("connected", "connected"), state
    finally:
        a.close()
        b.close()


async def test_tcp_message_cut_across_reads(netns_pair: NetnsPair) -> None:
    p = netns_pair
    a, b = await pair_channels(p, *tcp_links(p))
    assert isinstance(b, TcpChannel)
    try:
        m1, m2, m3 = messages(500, 3)
        cut = len(m2) // 2 + 2
        async with collecting(b) as got:
            assert await a.send(m1 + m2[:cut])
            await eventually(lambda: data_seqs(got) == [500], what="the first message")
            assert b.rx_pending == cut  # the cut message waits for the rest
            assert await a.send(m2[cut:] + m3)
            await eventually(lambda: len(got) == 3, what="the other two")
        assert data_seqs(got) == [500, 501, 502]
        assert b.rx_pending == 0 and b.network.malformed == 0
    finally:
        a.close()
        b.close()


async def test_tcp_reconnects_and_flushes_the_error_queue(netns_pair: NetnsPair) -> None:
    p = netns_pair
    a_link, b_link = tcp_links(p)
    a, b = await pair_channels(p, a_link, b_link)
    assert isinstance(a, TcpChannel)
    try:
        async with collecting(b) as got:
            assert await a.send(b"".join(messages(1, 3)))
            await eventually(lambda: len(got) == 3, what="the first batch")
        b.close()  # the peer goes away
        await eventually(lambda: a.describe()["client"] == "disconnected", what="disconnect")
        # While the peer is away nothing can be sent: it waits, in order, in the error queue.
        queued = [b"".join(messages(10 + 3 * i, 3)) for i in range(4)]
        for datagram in queued:
            assert not await a.send(datagram)
        assert a.error_queue == 4 and a.stats.send_errors == 4
        b = await opened(p.b, open_channel(b_link, 0))
        async with collecting(b) as got:
            # New data triggers the (rate-limited) reconnect; keep nudging until it happens.
            seq = 100

            async def nudge() -> None:
                nonlocal seq
                while True:
                    await a.send(alive_message(seq))
                    seq += 1
                    await trio.sleep(0.05)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(nudge)
                await eventually(lambda: len(data_seqs(got)) >= 12, timeout=8, what="the queue")
                await eventually(lambda: a.error_queue == 0, what="the queue flushed")
                nursery.cancel_scope.cancel()
        assert data_seqs(got) == list(range(10, 22))  # nothing lost, nothing reordered
        ctl = [m for m in got if not m.is_data]
        assert all(m.is_alive for m in ctl)
        assert a.error_queue == 0 and a.error_queue_dropped == 0
        assert b.describe()["server"] == "connected"
    finally:
        a.close()
        b.close()


async def test_tcp_error_queue_drops_the_oldest(netns_pair: NetnsPair) -> None:
    p = netns_pair
    # Nobody listens at the peer: connects are refused, so everything is queued.
    a_link = mklink("tcp", p.a_if, local=p.a_ip, peer=p.b_ip, error_queue_length=2)
    a = await opened(p.a, open_channel(a_link, 0))
    assert isinstance(a, TcpChannel)
    try:
        for i in range(5):
            assert not await a.send(messages(i, 1)[0])
        assert a.error_queue == 2
        assert a.error_queue_dropped == 3
        assert a.stats.send_errors == 5
        assert a.describe()["error_queue"] == 2
    finally:
        a.close()


# -- redundant links ------------------------------------------------------------------------


@asynccontextmanager
async def two_link_sets(
    p: NetnsPair, *, a_default: int = 0
) -> AsyncIterator[tuple[LinkSet, LinkSet, list[tuple[int, list[Message]]], str, str]]:
    """LinkSets in a and b over two veth pairs (the fixture's and 198.18.1.0/24)."""
    if1a, if1b = veth_pair(p.a, p.b, "198.18.1.1/24", "198.18.1.2/24", "sync1", "sync1")
    a_set = LinkSet(
        [
            mklink("udp", p.a_if, local=p.a_ip, peer=p.b_ip),
            mklink("udp", if1a, local="198.18.1.1", peer="198.18.1.2"),
        ],
        default=a_default,
    )
    b_set = LinkSet(
        [
            mklink("udp", p.b_if, local=p.b_ip, peer=p.a_ip),
            mklink("udp", if1b, local="198.18.1.2", peer="198.18.1.1"),
        ]
    )
    # A LinkSet that opens before the links run counts them as down.
    await operational(p.a, p.a_if, if1a)
    await operational(p.b, p.b_if, if1b)
    with p.a.entered():
        await a_set.open()
    with p.b.entered():
        await b_set.open()
    b_got: list[tuple[int, list[Message]]] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(a_set.run, lambda i, msgs: None)
            await nursery.start(b_set.run, lambda i, msgs: b_got.append((i, msgs)))
            yield a_set, b_set, b_got, p.a_if, if1a
            nursery.cancel_scope.cancel()
    finally:
        a_set.close()
        b_set.close()


def received_on(got: list[tuple[int, list[Message]]], seq: int) -> int | None:
    for link, msgs in got:
        if any(m.seq == seq for m in msgs):
            return link
    return None


async def test_failover_when_the_active_link_goes_down(netns_pair: NetnsPair) -> None:
    p = netns_pair
    async with two_link_sets(p) as (a_set, b_set, b_got, if0, _if1):
        assert a_set.active == 0 and a_set.payload_size == 1500 - 28
        state = a_set.link_state()
        assert [(s["status"], s["role"]) for s in state] == [
            ("RUNNING", "ACTIVE"),
            ("RUNNING", "BACKUP"),
        ]
        assert await a_set.send(messages(1, 1)[0])
        assert await eventually(lambda: received_on(b_got, 1) == 0, what="seq 1 on link 0")

        p.a.ip("link", "set", if0, "down")
        await eventually(lambda: a_set.active == 1, what="a switches to link 1")
        assert a_set.switches == 1
        state = a_set.link_state()
        assert [(s["status"], s["role"]) for s in state] == [
            ("DOWN", "BACKUP"),
            ("RUNNING", "ACTIVE"),
        ]
        # b's end of the downed veth lost its carrier; b moves over too.
        await eventually(lambda: b_set.link_state()[0]["status"] == "NO-CARRIER", what="b state")
        assert await a_set.send(messages(2, 1)[0])
        await eventually(lambda: received_on(b_got, 2) == 1, what="seq 2 on link 1")
        assert b_set.active == 1
        assert a_set.channels[1].stats.sent_packets == 1
        assert b_set.link_state()[1]["stats"]["recv_packets"] == 1  # type: ignore[index]


async def test_no_link_left_keeps_the_active_one(netns_pair: NetnsPair) -> None:
    p = netns_pair
    async with two_link_sets(p) as (a_set, _b_set, _b_got, if0, if1):
        p.a.ip("link", "set", if1, "down")
        p.a.ip("link", "set", if0, "down")
        await eventually(
            lambda: [s["status"] for s in a_set.link_state()] == ["DOWN", "DOWN"], what="down"
        )
        assert a_set.active == 0 and a_set.switches == 0
        p.a.ip("link", "set", if1, "up")
        await eventually(lambda: a_set.active == 1, what="the link that came back")


async def test_traffic_from_the_peer_moves_the_active_link(netns_pair: NetnsPair) -> None:
    p = netns_pair
    async with two_link_sets(p, a_default=1) as (a_set, b_set, b_got, _if0, _if1):
        assert a_set.active == 1 and b_set.active == 0
        assert await a_set.send(messages(77, 1)[0])
        await eventually(lambda: received_on(b_got, 77) == 1, what="seq 77 on link 1")
        assert b_set.active == 1
        assert b_set.switches == 1
        assert b_set.link_state()[1]["role"] == "ACTIVE"


async def test_tcp_new_connection_replaces_the_old(netns_pair: NetnsPair) -> None:
    p = netns_pair
    a, b = await pair_channels(p, *tcp_links(p))
    try:
        async with collecting(b) as got:
            assert await a.send(messages(1, 1)[0])
            await eventually(lambda: data_seqs(got) == [1], what="a's message")
            # Another client (a restarted peer) connects: b reads from it from now on.
            with p.a.entered():
                raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tsock = trio.socket.from_stdlib_socket(raw)
            with tsock:
                await tsock.connect((p.b_ip, 3780))
                await tsock.send(b"".join(messages(2, 2)))
                await eventually(lambda: data_seqs(got) == [1, 2, 3], what="the new stream")
            # The old connection was dropped for it, so when the new one ends, none is left.
            await eventually(lambda: b.describe()["server"] == "disconnected", what="eof")
    finally:
        a.close()
        b.close()
