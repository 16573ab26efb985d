"""The internal cache fed by a real kernel: events from ctnetlink writes and from real
traffic, our own writes recognised by their socket, and the resync after an overrun.

What these tests guarantee (each in a fresh namespace):

* flows created through ctnetlink and flows of real TCP/UDP traffic reach the cache
  through events, equal to what the kernel's dump says, and leave it on DESTROY; a dump
  of an unchanged table reconciles to no change at all (so the zero values events leave
  out and dumps include do not look like changes);
* writes of a socket registered as INJECT are not cached and yield no change, but are
  remembered as the peer's; writes of a COMMIT socket are cached silently, as the peer's;
* after an overrun (tiny receive buffer, 20k creates), reconciling with a dump leaves the
  cache equal to the kernel table, and when those flows were committed from the peer, the
  resync sends none of them back (the conntrackd trap in DESIGN.md);
* expectations created through ctnetlink are mirrored while their master is.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import trio

from nfsyncd.cache import Change, InternalCache, Origin
from nfsyncd.filter import Filter
from nfsyncd.kernel import ALL_EVENT_GROUPS, FLOW_EVENT_GROUPS, Conntrack, EventStream, Overrun
from nfsyncd.model import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    EventKind,
    Expectation,
    Flow,
    Status,
    TcpInfo,
    Tuple,
)
from tests._support import NetnsPair
from tests.kernel._ctutil import CtLab, full_mask, v4

pytestmark = pytest.mark.kernel

NEW, UPDATE, DESTROY = EventKind.NEW, EventKind.UPDATE, EventKind.DESTROY
ESTABLISHED = 3

#: makes the namespace track traffic (a namespace tracks nothing until a rule needs it)
TRACKING_RULESET = """table inet track {
  chain input { type filter hook input priority filter; ct state established,related accept; }
}
"""


def udp_flow(i: int, net: int = 30) -> Flow:
    """Flow ``i`` of a burst: 198.18.<net+i/250>.x -> 198.19.0.1, UDP."""
    src = v4(f"198.18.{net + i // 250}.{1 + i % 250}")
    return Flow(Tuple(src, v4("198.19.0.1"), IPPROTO_UDP, 1000 + i % 50, 53), timeout=300)


def tcp_flow(i: int) -> Flow:
    src = v4(f"198.18.{20 + i // 250}.{1 + i % 250}")
    return Flow(
        Tuple(src, v4("198.19.0.2"), IPPROTO_TCP, 40000 + i, 443),
        timeout=3600,
        status=int(Status.SEEN_REPLY | Status.ASSURED),
        protoinfo=TcpInfo(ESTABLISHED),
        mark=i % 3,
    )


def table_view(flows: list[Flow]) -> dict[tuple[Tuple, int], int | None]:
    """Identity -> status: what 'the cache equals the kernel table' compares."""
    return {(f.orig, f.zone or 0): f.status for f in flows}


def cache_view(cache: InternalCache) -> dict[tuple[Tuple, int], int | None]:
    return table_view([f for f, _ in cache.flows()])


async def feed(
    stream: EventStream,
    cache: InternalCache,
    until: Callable[[], bool],
    *,
    timeout: float = 10.0,
    what: str = "",
    overrun_ok: bool = False,
) -> list[Change]:
    """Apply event batches to the cache until ``until()`` holds; the changes made."""
    changes: list[Change] = []
    with trio.move_on_after(timeout):
        while not until():
            batch = await stream.next_batch()
            if isinstance(batch, Overrun):
                if not overrun_ok:
                    pytest.fail("unexpected event overrun")
                continue
            changes += cache.apply_events(batch)
        return changes
    pytest.fail(f"timed out after {timeout}s waiting for {what}; cache has {len(cache)} flows")


def flow_changes(changes: list[Change]) -> list[tuple[EventKind, Tuple]]:
    """(kind, original tuple) of each flow change."""
    return [(c.kind, c.obj.orig) for c in changes if isinstance(c.obj, Flow)]


def marker(port: int) -> Flow:
    """A flow made by another socket, to know when the events before it have arrived."""
    return Flow(Tuple(v4("198.18.99.1"), v4("198.18.99.2"), IPPROTO_UDP, port, 9), timeout=60)


async def test_created_flows_reach_the_cache_and_leave_it(lab: CtLab) -> None:
    """500 UDP and 300 TCP flows created through ctnetlink: NEW changes for all, the
    cache equals the kernel's dump (and reconciling with it changes nothing); deleting
    them empties the cache with one DESTROY change each."""
    with lab.ns.entered():
        stream = EventStream(FLOW_EVENT_GROUPS)
    cache = InternalCache()
    flows = [udp_flow(i) for i in range(500)] + [tcp_flow(i) for i in range(300)]
    with stream:
        assert await lab.ct.create_many(flows) == [None] * len(flows)
        changes = await feed(stream, cache, lambda: len(cache) == len(flows), what="the NEWs")
        assert sorted(flow_changes(changes)) == sorted((NEW, f.orig) for f in flows)

        dump = await lab.ct.dump()
        assert cache_view(cache) == table_view(dump)
        for flow in dump:
            got = cache.get_flow(flow.orig)
            assert got is not None
            assert got.reply == flow.reply and got.protoinfo == flow.protoinfo
            assert (got.mark or 0) == (flow.mark or 0)
        assert cache.reconcile_flows(dump) == []

        assert await lab.ct.delete_many(flows) == [None] * len(flows)
        changes = await feed(stream, cache, lambda: len(cache) == 0, what="the DESTROYs")
    assert [c.kind for c in changes] == [DESTROY] * len(flows)
    s = cache.stats.flows
    assert (s.created, s.deleted, s.delete_not_found, s.create_failed) == (800, 800, 0, 0)


async def test_traffic_flows_reach_the_cache(netns_pair: NetnsPair) -> None:
    """A real TCP connection and a UDP datagram into a tracking namespace: the cache
    follows the TCP flow to ESTABLISHED/ASSURED, holds what the kernel holds, a dump
    reconciles to no change, and deleting the flows removes them."""
    server_ns, client_ns = netns_pair.a, netns_pair.b
    server_ns.nft(TRACKING_RULESET)
    server, client_ip = v4(netns_pair.a_ip), v4(netns_pair.b_ip)
    with server_ns.entered():
        stream = EventStream(FLOW_EVENT_GROUPS)
        ct = Conntrack()
        listener = socket.create_server((netns_pair.a_ip, 8080))
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind((netns_pair.a_ip, 5353))
    with client_ns.entered():
        client = socket.create_connection((netns_pair.a_ip, 8080), timeout=5)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cache = InternalCache()
    with stream, ct, listener, receiver, client, sender:
        conn, _ = listener.accept()
        with conn:
            client.sendall(b"hello")
            assert conn.recv(5) == b"hello"
            conn.sendall(b"hi")
            assert client.recv(2) == b"hi"
            sender.sendto(b"x", (netns_pair.a_ip, 5353))
            tcp_orig = Tuple(client_ip, server, IPPROTO_TCP, client.getsockname()[1], 8080)
            udp_orig = Tuple(client_ip, server, IPPROTO_UDP, sender.getsockname()[1], 5353)

            def established() -> bool:
                flow = cache.get_flow(tcp_orig)
                return (
                    flow is not None
                    and isinstance(flow.protoinfo, TcpInfo)
                    and flow.protoinfo.state == ESTABLISHED
                    and bool((flow.status or 0) & Status.ASSURED)
                    and cache.get_flow(udp_orig) is not None
                )

            changes = await feed(stream, cache, established, what="ESTABLISHED and the UDP")
            tcp_kinds = [kind for kind, orig in flow_changes(changes) if orig == tcp_orig]
            assert tcp_kinds[0] == NEW and set(tcp_kinds[1:]) == {UPDATE}
            dump = await ct.dump()
            assert cache_view(cache) == table_view(dump)
            assert cache.get_flow(tcp_orig).reply == tcp_orig.inverted()  # type: ignore[union-attr]
            assert cache.reconcile_flows(dump) == []

            await ct.delete(tcp_orig)
            await ct.delete(udp_orig)
            changes = await feed(stream, cache, lambda: len(cache) == 0, what="the DESTROYs")
    assert sorted(flow_changes(changes)) == sorted([(DESTROY, tcp_orig), (DESTROY, udp_orig)])


async def test_own_writes_are_recognised_by_their_socket(lab: CtLab) -> None:
    """Three writers in one namespace: an INJECT socket's flows are not cached and yield
    nothing but are remembered as the peer's; a COMMIT socket's are cached silently, as
    the peer's; an unregistered socket's are cached and replicated."""
    with lab.ns.entered():
        stream = EventStream(FLOW_EVENT_GROUPS)
        committer = Conntrack()
        other = Conntrack()
    cache = InternalCache()
    cache.origins[lab.ct.port_id] = Origin.INJECT
    cache.origins[committer.port_id] = Origin.COMMIT
    injected = [udp_flow(i, net=40) for i in range(200)]
    committed = [udp_flow(i, net=50) for i in range(200)]
    with stream, committer, other:
        assert await lab.ct.create_many(injected) == [None] * 200
        assert await committer.create_many(committed) == [None] * 200
        await other.create(marker(1))
        changes = await feed(
            stream, cache, lambda: cache.get_flow(marker(1).orig) is not None, what="marker"
        )
        assert flow_changes(changes) == [(NEW, marker(1).orig)]
        assert len(cache) == 201
        assert all(cache.get_flow(f.orig) is None and cache.is_from_peer(f) for f in injected)
        assert all(cache.get_flow(f.orig) is not None and cache.is_from_peer(f) for f in committed)
        assert not cache.is_from_peer(marker(1))
        assert cache.stats.flows.ignored == 200

        # a resync keeps every one of them the peer's and sends none back
        assert cache.reconcile_flows(await lab.ct.dump()) == []
        assert len(cache) == 401
        assert {f.orig for f, _ in cache.flows(from_peer=False)} == {marker(1).orig}

        # the injecting socket deletes its flows: gone silently
        assert await lab.ct.delete_many(injected) == [None] * 200
        await other.create(marker(2))
        changes = await feed(
            stream, cache, lambda: cache.get_flow(marker(2).orig) is not None, what="marker 2"
        )
    assert flow_changes(changes) == [(NEW, marker(2).orig)]
    assert len(cache) == 202
    assert not any(cache.is_from_peer(f) for f in injected)


async def _overrun(lab: CtLab, cache: InternalCache, flows: list[Flow]) -> tuple[list[Change], int]:
    """Create ``flows`` while a 4 KiB event socket is not read, apply what is left of
    the events up to the overrun, then reconcile with a dump and check that the cache
    equals the kernel table; the reconcile's changes and how many flows the events
    had added."""
    with lab.ns.entered():
        stream = EventStream(FLOW_EVENT_GROUPS)
    with stream:
        stream.set_rcvbuf(4096)
        before = len(cache)
        assert await lab.ct.create_many(flows) == [None] * len(flows)
        with trio.fail_after(10):
            while not isinstance(batch := await stream.next_batch(), Overrun):
                cache.apply_events(batch)
        seen = len(cache) - before
        assert seen < len(flows) // 2  # most events were lost: the cache is stale
        dump = await lab.ct.dump()
        assert len(dump) == len(flows)
        changes = cache.reconcile_flows(dump)
        assert cache_view(cache) == table_view(dump)
        # a second dump (nothing changed) reconciles to nothing
        assert cache.reconcile_flows(await lab.ct.dump()) == []
    return changes, seen


async def test_overrun_then_reconcile_equals_the_kernel_table(lab: CtLab) -> None:
    """The cache knows 50 TCP flows that are then deleted unseen; 20k creates overrun a
    4 KiB event socket. Reconciling with a dump adds exactly the flows whose events were
    lost (a NEW change each) and removes the 50 (a DESTROY each): the cache then holds
    every flow of the kernel table, with the kernel's status."""
    cache = InternalCache()
    old = [tcp_flow(i) for i in range(50)]
    assert await lab.ct.create_many(old) == [None] * 50
    assert len(cache.reconcile_flows(await lab.ct.dump())) == 50
    assert await lab.ct.delete_many(old) == [None] * 50  # nobody listens: unseen

    flows = [udp_flow(i) for i in range(20_000)]
    changes, seen = await _overrun(lab, cache, flows)
    destroyed = {orig for kind, orig in flow_changes(changes) if kind == DESTROY}
    added = [orig for kind, orig in flow_changes(changes) if kind == NEW]
    assert destroyed == {f.orig for f in old}
    assert len(added) == len(set(added)) == 20_000 - seen
    assert len(changes) == len(destroyed) + len(added)  # nothing else changed


async def test_overrun_resync_does_not_send_the_peers_flows_back(lab: CtLab) -> None:
    """The conntrackd trap: a commit of 20k flows overruns the committing node's own
    event socket. The daemon marked what it committed; the resync that follows adds the
    flows whose events were lost as the peer's and sends none of them back."""
    cache = InternalCache()
    cache.origins[lab.ct.port_id] = Origin.COMMIT
    flows = [udp_flow(i) for i in range(20_000)]
    cache.mark_from_peer(flows)
    changes, _ = await _overrun(lab, cache, flows)
    assert changes == []
    assert len(cache) == 20_000
    assert sum(1 for _ in cache.flows(from_peer=True)) == 20_000


async def test_expectations_follow_their_master(lab: CtLab) -> None:
    """An expectation created through ctnetlink on an ftp master is mirrored (the master
    is cached); deleting it removes it; one whose master the cache does not hold (a
    filtered protocol) is dropped."""
    with lab.ns.entered():
        stream = EventStream(ALL_EVENT_GROUPS)
    cache = InternalCache(
        Filter(address=("ignore", ("198.18.66.0/24",))), expectations=True, limit=1000
    )
    client, server = v4("198.18.0.2"), v4("198.18.0.1")
    master = Flow(
        Tuple(client, server, IPPROTO_TCP, 40001, 21),
        timeout=600,
        helper="ftp",
        protoinfo=TcpInfo(ESTABLISHED),
        status=int(Status.SEEN_REPLY | Status.ASSURED),
    )
    ignored_master = master._replace(orig=master.orig._replace(src=v4("198.18.66.1")))
    exp_tuple = Tuple(client, server, IPPROTO_TCP, 0, 30001)
    exp = Expectation(master.orig, exp_tuple, full_mask(exp_tuple), timeout=300)
    orphan_tuple = exp_tuple._replace(src=v4("198.18.66.1"), dport=30002)
    orphan = Expectation(ignored_master.orig, orphan_tuple, full_mask(orphan_tuple), timeout=300)
    with stream:
        await lab.ct.create(master)
        await lab.ct.create(ignored_master)
        await lab.ct.create_expect(orphan)
        await lab.ct.create_expect(exp)
        changes = await feed(
            stream, cache, lambda: cache.expect_count() == 1, what="the expectation"
        )
        [exp_change] = [c for c in changes if isinstance(c.obj, Expectation)]
        assert exp_change.kind == NEW
        cached_exp = cache.get_expect(exp_tuple)
        assert cached_exp is not None
        assert cached_exp.master == master.orig and cached_exp.helper == "ftp"
        assert cache.stats.expects.no_master == 1
        assert cache.reconcile_expects(await lab.ct.dump_expect()) == []

        await lab.ct.delete_expect(exp)
        changes = await feed(stream, cache, lambda: cache.expect_count() == 0, what="DESTROY")
    assert [(c.kind, c.obj) for c in changes] == [(DESTROY, changes[0].obj)]
    assert isinstance(changes[0].obj, Expectation) and changes[0].obj.tuple == exp_tuple
