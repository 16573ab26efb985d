"""Kernel conntrack events received and decoded by nfsyncd's EventStream.

Real traffic between namespaces makes the events; ``conntrack -E`` subscribed to the same
namespace is the independent view they are compared with (it also prints, for an event a
userspace write caused, ``[USERSPACE] portid=N``: the origin we decode).

Kernel facts these tests pin down (kernel 6.18, measured):

* Flow events: NEW (``CT_NEW`` + ``NLM_F_CREATE|NLM_F_EXCL``), UPDATE (``CT_NEW``, flags 0)
  on each state/status change, DESTROY (``CT_DELETE``). Counters and timestamps come only
  on DESTROY (with the acct/timestamp sysctls on); ``CTA_MARK`` is left out when the mark
  is 0; every event carries ``CTA_TIMESTAMP_EVENT`` on this kernel.
* An expired flow is destroyed by the garbage collector (seconds later) or at once by the
  next lookup of it: a ctnetlink get or dump reaps it, and that DESTROY's origin is 0,
  not the port of the socket whose lookup reaped it.
* Expectation events: NEW and DESTROY only. Nothing emits an expectation UPDATE: a
  timeout refresh (non-exclusive create) is silent.
* The origin (``nlmsg_pid``) of an event is the port id of the socket whose write caused
  it, and 0 for traffic.
* Overrun: a full event socket loses events (ENOBUFS). The kernel then keeps the socket
  "congested" and drops every further event until the backlog is read out; after that,
  events flow again.
"""

from __future__ import annotations

import ftplib
import re
import socket
from collections.abc import Callable

import pytest
import trio

from nfsyncd.kernel import (
    ALL_EVENT_GROUPS,
    FLOW_EVENT_GROUPS,
    OVERRUN,
    Conntrack,
    Event,
    EventStream,
)
from nfsyncd.model import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    TCP_STATE_NAMES,
    EventKind,
    Expectation,
    Flow,
    Status,
    TcpInfo,
    Tuple,
)
from nfsyncd.netlink import Request
from nfsyncd.netlink import ctnetlink as ctnl
from nfsyncd.netlink._socket import NLM_F_CREATE
from tests._support import FtpServer, NetnsPair, ftp_helper_ruleset
from tests.kernel._ctutil import (
    ConntrackEvents,
    CtLab,
    collect_events,
    flow_events,
    full_mask,
    poll_until,
    tuple_text,
    v4,
)

pytestmark = pytest.mark.kernel

FtpFactory = Callable[..., FtpServer]

SERVER, CLIENT = v4("198.18.0.1"), v4("198.18.0.2")

#: conntrack on for traffic into the server namespace; UDP to port 5000 gets ct mark 0x42
TRACKING_RULESET = """table inet track {
  chain input { type filter hook input priority filter;
    udp dport 5000 ct mark set 0x42
    ct state established,related accept
  }
}
"""


def _marker(port: int) -> Flow:
    """A flow made only to see its event come by (a synchronisation point)."""
    return Flow(Tuple(v4("198.18.99.1"), v4("198.18.99.2"), IPPROTO_UDP, port, 9), timeout=60)


def _has_flow(orig: Tuple, kind: EventKind) -> Callable[[list[Event]], bool]:
    return lambda evs: any(e.kind == kind for e in flow_events(evs, orig))


async def _subscribe_tool(tool: ConntrackEvents, stream: EventStream, ct: Conntrack) -> None:
    """Return once both conntrack -E and our stream see events.

    conntrack -E gives no sign of having subscribed, so marker flows are created until it
    prints one (each attempt waits briefly for the line); our stream, subscribed before,
    then gets the last marker's NEW too. The markers are deleted again.
    """
    deadline = trio.current_time() + 10
    markers: list[Flow] = []
    while True:
        markers.append(_marker(len(markers) + 1))
        await ct.create(markers[-1])
        want = tuple_text(markers[-1].orig)
        seen = tool.read_until(
            lambda lines, want=want: any(ln.orig == want for _, ln in lines),
            timeout=0.2,
            required=False,
        )
        if seen is not None:
            break
        if trio.current_time() > deadline:
            pytest.fail("conntrack -E never reported a marker flow")
    last = markers[-1].orig
    await collect_events(stream, _has_flow(last, EventKind.NEW), what="the marker NEW")
    assert await ct.delete_many(markers) == [None] * len(markers)


def _state(event: Event) -> int | None:
    obj = event.obj
    if isinstance(obj, Flow) and isinstance(obj.protoinfo, TcpInfo):
        return obj.protoinfo.state
    return None


async def _gone(ct: Conntrack, orig: Tuple) -> bool:
    return await ct.get(orig) is None


async def test_tcp_lifecycle_events_from_traffic(netns_pair: NetnsPair) -> None:
    """NEW, UPDATEs and DESTROY of one real TCP connection, as we and conntrack -E see them.

    Walk-through: the server namespace tracks traffic, counts bytes, stamps times and keeps
    TIME_WAIT for 1 s. A client connects, both sides exchange data and close. We decode NEW
    (SYN_SENT, status CONFIRMED only, no mark, no counters), UPDATEs through ESTABLISHED
    (SEEN_REPLY|ASSURED) to TIME_WAIT, all with origin 0 (traffic). Once TIME_WAIT has
    expired, our ``get`` reaps the flow: DESTROY, still origin 0, with packet/byte counters
    for both directions and start/stop timestamps. conntrack -E reports the same sequence
    of kinds and TCP states, the same id and the same counters.
    """
    server_ns, client_ns = netns_pair.a, netns_pair.b
    server_ns.nft(TRACKING_RULESET)
    server_ns.sysctl("net.netfilter.nf_conntrack_acct", 1)
    server_ns.sysctl("net.netfilter.nf_conntrack_timestamp", 1)
    server_ns.sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", 1)
    with server_ns.entered():
        stream = EventStream(FLOW_EVENT_GROUPS)
        ct = Conntrack()
        listener = socket.create_server((netns_pair.a_ip, 8080))
    tool = ConntrackEvents(server_ns)
    try:
        with stream, ct, listener:
            await _subscribe_tool(tool, stream, ct)
            with client_ns.entered():
                client = socket.create_connection((netns_pair.a_ip, 8080), timeout=5)
            conn, _ = listener.accept()
            with conn, client:
                orig = Tuple(CLIENT, SERVER, IPPROTO_TCP, client.getsockname()[1], 8080)
                client.sendall(b"x" * 100)
                assert conn.recv(100) == b"x" * 100
                conn.sendall(b"y" * 10)
                assert client.recv(10) == b"y" * 10
                client.shutdown(socket.SHUT_WR)
                assert conn.recv(1) == b""
                conn.shutdown(socket.SHUT_WR)
                assert client.recv(1) == b""

            def in_time_wait(evs: list[Event]) -> bool:
                mine = flow_events(evs, orig)
                return bool(mine) and _state(mine[-1]) == 7

            events = await collect_events(stream, in_time_wait, what="TIME_WAIT")
            # TIME_WAIT lasts 1 s; a lookup of an expired flow destroys it at once.
            await poll_until(lambda: _gone(ct, orig), what="the flow to expire")
            events += await collect_events(
                stream, _has_flow(orig, EventKind.DESTROY), what="DESTROY"
            )
        want = tuple_text(orig)
        tool_lines = tool.read_until(
            lambda lines: any(k == "DESTROY" and ln.orig == want for k, ln in lines),
            what="DESTROY",
        )
        assert tool_lines is not None
    finally:
        tool.close()

    ours = flow_events(events, orig)
    kinds = [e.kind for e in ours]
    assert kinds[0] == EventKind.NEW and kinds[-1] == EventKind.DESTROY
    assert set(kinds[1:-1]) == {EventKind.UPDATE}
    assert all(e.origin == 0 for e in ours)  # traffic, even the DESTROY our get caused

    new = ours[0].obj
    assert isinstance(new, Flow)
    assert new.reply == orig.inverted()
    assert _state(ours[0]) == 1  # SYN_SENT
    assert new.status == int(Status.CONFIRMED)
    assert new.mark is None  # CTA_MARK is left out when 0
    assert new.counters_orig is None and new.timestamp is None
    assert new.timestamp_event is not None
    states = [_state(e) for e in ours[1:-1]]
    assert 3 in states and states[-1] == 7  # ESTABLISHED ... TIME_WAIT
    established = ours[1 + states.index(3)].obj
    assert isinstance(established, Flow) and established.status is not None
    both = Status.SEEN_REPLY | Status.ASSURED
    assert established.status & both == both
    destroy = ours[-1].obj
    assert isinstance(destroy, Flow)
    assert destroy.counters_orig is not None and destroy.counters_reply is not None
    assert destroy.counters_orig.packets >= 4 and destroy.counters_orig.bytes >= 100
    assert destroy.counters_reply.packets >= 3 and destroy.counters_reply.bytes >= 10
    assert destroy.timestamp is not None
    assert destroy.timestamp.start and destroy.timestamp.stop
    assert destroy.timestamp.stop > destroy.timestamp.start
    assert {e.obj.id for e in ours} == {new.id}

    # conntrack -E saw the same
    theirs = [(k, ln) for k, ln in tool_lines if ln.orig == want]
    assert [k for k, _ in theirs] == [e.kind.name for e in ours]
    assert [ln.state for _, ln in theirs[:-1]] == [
        TCP_STATE_NAMES[_state(e) or 0] for e in ours[:-1]
    ]
    assert all("USERSPACE" not in ln.flags for _, ln in theirs)
    assert {ln.extra["id"] for _, ln in theirs} == {str(new.id)}
    last = theirs[-1][1].extra
    assert int(last["orig_packets"]) == destroy.counters_orig.packets
    assert int(last["orig_bytes"]) == destroy.counters_orig.bytes
    assert int(last["reply_packets"]) == destroy.counters_reply.packets
    assert int(last["reply_bytes"]) == destroy.counters_reply.bytes


async def test_new_event_carries_the_mark_a_rule_set(netns_pair: NetnsPair) -> None:
    """A ``ct mark set`` rule on the first packet: the NEW event already carries the mark
    (the event is sent when the entry is confirmed, after the input chain ran); another
    flow with mark 0 has no CTA_MARK at all."""
    server_ns, client_ns = netns_pair.a, netns_pair.b
    server_ns.nft(TRACKING_RULESET)
    with server_ns.entered():
        stream = EventStream(FLOW_EVENT_GROUPS)
    with client_ns.entered():
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind((netns_pair.b_ip, 0))
    with stream, sender:
        port = sender.getsockname()[1]
        marked = Tuple(CLIENT, SERVER, IPPROTO_UDP, port, 5000)
        plain = Tuple(CLIENT, SERVER, IPPROTO_UDP, port, 5001)
        sender.sendto(b"a", (netns_pair.a_ip, 5000))
        sender.sendto(b"b", (netns_pair.a_ip, 5001))
        events = await collect_events(
            stream,
            lambda evs: bool(flow_events(evs, marked) and flow_events(evs, plain)),
            what="both NEW events",
        )
    [first_marked] = flow_events(events, marked)[:1]
    [first_plain] = flow_events(events, plain)[:1]
    assert first_marked.kind == first_plain.kind == EventKind.NEW
    assert isinstance(first_marked.obj, Flow) and first_marked.obj.mark == 0x42
    assert isinstance(first_plain.obj, Flow) and first_plain.obj.mark is None


def _pasv_port(reply: str) -> int:
    nums = [int(n) for n in re.findall(r"\d+", reply.split("(", 1)[1])]
    return nums[4] * 256 + nums[5]


async def test_expectation_events_from_ftp(netns_pair: NetnsPair, ftp_server: FtpFactory) -> None:
    """A real FTP PASV session: expectation NEW when the 227 reply passes the helper,
    DESTROY when the data connection uses it; no UPDATE ever.

    Walk-through: events of the server namespace (flows and expectations). PASV -> an
    expectation NEW event (origin 0: the helper made it) decoding to the same expectation
    our dump shows. We then refresh its timeout through ctnetlink (a non-exclusive create,
    which the kernel accepts) and create a marker flow: events arrive in order, so once the
    marker's NEW is in, any expectation UPDATE would have been too, and none is. The data
    connection then consumes the expectation: its DESTROY event comes, and the data flow's
    NEW event carries status EXPECTED and the control connection as master.
    """
    server_ns, client_ns = netns_pair.a, netns_pair.b
    server = ftp_server(server_ns, netns_pair.a_ip)
    server_ns.nft(ftp_helper_ruleset(hooks=("prerouting",), port=server.port))
    with server_ns.entered():
        stream = EventStream(ALL_EVENT_GROUPS)
        ct = Conntrack()
    with client_ns.entered():
        ftp = ftplib.FTP()
        ftp.connect(server.address, server.port, timeout=5)
    with stream, ct, ftp:
        ftp.login()
        data_port = _pasv_port(ftp.sendcmd("PASV"))
        control = Tuple(CLIENT, SERVER, IPPROTO_TCP, ftp.sock.getsockname()[1], server.port)

        def exp_events(evs: list[Event], kind: EventKind) -> list[Event]:
            return [e for e in evs if isinstance(e.obj, Expectation) and e.kind == kind]

        events = await collect_events(
            stream, lambda evs: bool(exp_events(evs, EventKind.NEW)), what="expectation NEW"
        )
        [new] = exp_events(events, EventKind.NEW)
        assert new.origin == 0
        exp = new.obj
        assert isinstance(exp, Expectation)
        assert exp.master == control
        assert exp.tuple == Tuple(CLIENT, SERVER, IPPROTO_TCP, 0, data_port)
        assert exp.helper == "ftp"
        [dumped] = await ct.dump_expect()
        assert dumped._replace(timeout=None) == exp._replace(timeout=None)

        refresh = ctnl.expect_create(exp._replace(timeout=1000))
        assert await ct.write_many([Request(ctnl.EXP_NEW, NLM_F_CREATE, refresh.payload)]) == [None]
        [refreshed] = await ct.dump_expect()
        assert refreshed.timeout is not None and refreshed.timeout > 900
        marker = _marker(2)
        await ct.create(marker)
        events = await collect_events(
            stream, _has_flow(marker.orig, EventKind.NEW), what="the marker NEW"
        )
        assert [e for e in events if isinstance(e.obj, Expectation)] == []

        with client_ns.entered():
            data = socket.create_connection((server.address, data_port), timeout=5)
        with data:
            data_orig = Tuple(CLIENT, SERVER, IPPROTO_TCP, data.getsockname()[1], data_port)
            events = await collect_events(
                stream,
                lambda evs: (
                    bool(exp_events(evs, EventKind.DESTROY)) and bool(flow_events(evs, data_orig))
                ),
                what="expectation DESTROY and the data flow",
            )
    [destroy] = exp_events(events, EventKind.DESTROY)
    assert isinstance(destroy.obj, Expectation)
    assert destroy.obj.tuple == exp.tuple and destroy.obj.master == control
    assert exp_events(events, EventKind.UPDATE) == []
    first = flow_events(events, data_orig)[0]
    assert first.kind == EventKind.NEW and isinstance(first.obj, Flow)
    assert first.obj.status is not None and first.obj.status & Status.EXPECTED
    assert first.obj.master == control


async def test_origin_is_the_writing_socket(netns_pair: NetnsPair) -> None:
    """Each event names the socket whose write caused it; traffic events name none (0).

    Walk-through: two Conntrack sockets A and B in one namespace, our stream and
    conntrack -E listening. A creates, updates and deletes a flow, B creates one, A
    creates a helper master and an expectation and deletes the expectation, a client
    sends a datagram (a traffic flow), A flushes. Every event of A's writes has origin =
    A.port_id, B's = B.port_id (different), the traffic flow's NEW has origin 0 and its
    DESTROY by A's flush has A's. conntrack -E prints the same port ids (``[USERSPACE]
    portid=N``) and nothing for the traffic NEW.
    """
    server_ns, client_ns = netns_pair.a, netns_pair.b
    server_ns.nft(TRACKING_RULESET)
    with server_ns.entered():
        stream = EventStream(ALL_EVENT_GROUPS)
        a = Conntrack()
        b = Conntrack()
    with client_ns.entered():
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind((netns_pair.b_ip, 0))
    tool = ConntrackEvents(server_ns)
    try:
        with stream, a, b, sender:
            assert a.port_id != b.port_id
            await _subscribe_tool(tool, stream, a)
            f1 = Flow(Tuple(CLIENT, SERVER, IPPROTO_UDP, 1001, 53), timeout=60)
            f2 = Flow(Tuple(CLIENT, SERVER, IPPROTO_UDP, 1002, 53), timeout=60)
            master = Flow(
                Tuple(CLIENT, SERVER, IPPROTO_TCP, 1003, 21),
                timeout=60,
                helper="ftp",
                protoinfo=TcpInfo(3),
            )
            await a.create(f1)
            await a.update(Flow(f1.orig, mark=5))
            await b.create(f2)
            await a.delete(f1.orig)
            await a.create(master)
            tup = Tuple(CLIENT, SERVER, IPPROTO_TCP, 0, 30000)
            exp = Expectation(master.orig, tup, full_mask(tup), timeout=60)
            await a.create_expect(exp)
            await a.delete_expect(exp)
            sender.sendto(b"x", (netns_pair.a_ip, 5353))
            traffic = Tuple(CLIENT, SERVER, IPPROTO_UDP, sender.getsockname()[1], 5353)
            events = await collect_events(
                stream, _has_flow(traffic, EventKind.NEW), what="traffic NEW"
            )
            await a.flush()
            flushed = (traffic, f2.orig, master.orig)  # deleted in hash order
            events += await collect_events(
                stream,
                lambda evs: all(_has_flow(o, EventKind.DESTROY)(evs) for o in flushed),
                what="the flush's DESTROY events",
            )
            wanted = [tuple_text(o) for o in flushed]
            tool_lines = tool.read_until(
                lambda lines: all(
                    any(k == "DESTROY" and ln.orig == w for k, ln in lines) for w in wanted
                ),
                what="the flush's DESTROY events",
            )
            assert tool_lines is not None
    finally:
        tool.close()

    def origins(orig: Tuple) -> list[tuple[str, int]]:
        return [(e.kind.name, e.origin) for e in flow_events(events, orig)]

    assert origins(f1.orig) == [("NEW", a.port_id), ("UPDATE", a.port_id), ("DESTROY", a.port_id)]
    assert origins(f2.orig) == [("NEW", b.port_id), ("DESTROY", a.port_id)]
    assert origins(master.orig) == [("NEW", a.port_id), ("DESTROY", a.port_id)]
    assert origins(traffic) == [("NEW", 0), ("DESTROY", a.port_id)]
    exp_origins = [(e.kind.name, e.origin) for e in events if isinstance(e.obj, Expectation)]
    assert exp_origins == [("NEW", a.port_id), ("DESTROY", a.port_id)]

    def tool_origins(orig: Tuple) -> list[tuple[str, int]]:
        want = tuple_text(orig)
        return [
            (k, int(ln.extra["portid"]) if "USERSPACE" in ln.flags else 0)
            for k, ln in tool_lines
            if ln.orig == want
        ]

    for orig in (f1.orig, f2.orig, master.orig, traffic):
        assert tool_origins(orig) == origins(orig)


async def test_overrun_is_reported_and_the_stream_recovers(lab: CtLab) -> None:
    """A deliberately tiny event buffer overflows under a burst of creates: next_batch()
    returns OVERRUN and counts it; once the backlog is read out, events flow again.

    Walk-through: our stream's receive buffer is set to 4 KiB (the kernel doubles it); a
    second Conntrack creates 5000 flows in one batched call while nobody reads the stream.
    The next batch is OVERRUN and ``stats.overruns`` is 1. Recovery: the kernel drops
    every event while the socket is congested, i.e. until what is queued has been read, so
    we create a marker flow, read, and make a new marker after each batch that does not
    hold the current one; a marker's NEW arrives within a few rounds. A last create then
    arrives as its own, complete event.
    """
    with lab.ns.entered():
        stream = EventStream(FLOW_EVENT_GROUPS)
    with stream:
        stream.set_rcvbuf(4096)
        assert stream.rcvbuf <= 16384
        burst = [
            Flow(
                Tuple(SERVER, v4(f"198.18.{1 + i // 250}.{1 + i % 250}"), IPPROTO_UDP, 1, 2),
                timeout=60,
            )
            for i in range(5000)
        ]
        assert await lab.ct.create_many(burst) == [None] * len(burst)
        assert await stream.next_batch() is OVERRUN
        assert stream.stats.overruns == 1

        port = 10
        marker = _marker(port)
        await lab.ct.create(marker)
        with trio.fail_after(10):
            while True:
                batch = await stream.next_batch()
                if batch is not OVERRUN:
                    assert isinstance(batch, list)
                    if flow_events(batch, marker.orig):
                        break
                port += 1
                marker = _marker(port)
                await lab.ct.create(marker)
        last = _marker(9999)
        await lab.ct.create(last)
        events = await collect_events(stream, _has_flow(last.orig, EventKind.NEW), what="last")
        [new] = flow_events(events, last.orig)
        assert new.origin == lab.ct.port_id
        assert stream.decode_errors.count == 0


async def test_large_buffer_receives_a_whole_burst(lab: CtLab) -> None:
    """The same 5000-create burst with the default (16 MiB) buffer: no overrun, one NEW
    event per flow, all with the creating socket's port id."""
    with lab.ns.entered():
        stream = EventStream(FLOW_EVENT_GROUPS)
    with stream:
        burst = [
            Flow(
                Tuple(SERVER, v4(f"198.18.{1 + i // 250}.{1 + i % 250}"), IPPROTO_UDP, 1, 2),
                timeout=60,
            )
            for i in range(5000)
        ]
        assert await lab.ct.create_many(burst) == [None] * len(burst)
        events = await collect_events(stream, lambda evs: len(evs) >= 5000, what="5000 events")
        assert len(events) == 5000
        assert {e.kind for e in events} == {EventKind.NEW}
        assert {e.origin for e in events} == {lab.ct.port_id}
        assert {e.obj.orig for e in events} == {f.orig for f in burst}
        assert stream.stats.overruns == 0
        assert stream.stats.flows[EventKind.NEW] == 5000
