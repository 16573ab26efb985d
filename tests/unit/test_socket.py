"""The netlink socket and the kernel layer, with the test playing the kernel.

A :class:`FakeKernel` holds the other end of a datagram socketpair: it reads exactly what
:class:`NetlinkSocket` sent and answers with the datagrams the kernel would send (acks,
errors with extended-ack text, multipart dumps, events).  What these tests guarantee:

* a request ends at its ack, an error reply raises NetlinkError with errno and the
  kernel's extended-ack message, and replies to other sequence numbers are ignored;
* a dump collects every part until NLMSG_DONE;
* a batch packs requests into as few datagrams as its size limit allows, asks for one ack
  per datagram, and maps each error back to the request that caused it;
* an overrun (ENOBUFS) is never swallowed: it surfaces as OVERRUN, or as an ENOBUFS error
  for a request;
* the event stream classifies NEW/UPDATE/DESTROY, decodes flows and expectations, carries
  the origin port id, and skips (but counts) malformed messages.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterable, Iterator

import pytest
import trio

from nfsyncd.kernel import Conntrack, Event, EventStream
from nfsyncd.model import (
    IPPROTO_TCP,
    EventKind,
    Expectation,
    Flow,
    TcpInfo,
    Tuple,
)
from nfsyncd.netlink import (
    OVERRUN,
    Message,
    NetlinkError,
    NetlinkSocket,
    Request,
    attr,
    parse_messages,
)
from nfsyncd.netlink import ctnetlink as ct
from nfsyncd.netlink._socket import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_NOOP,
)
from tests.unit.fake_kernel import (
    PORT_ID,
    FakeKernel,
    Handler,
    ack,
    done,
    error,
    message,
    reply,
)

CLIENT = socket.inet_aton("198.18.0.1")
SERVER = socket.inet_aton("198.18.1.2")
NEW_FLAGS = NLM_F_CREATE | NLM_F_EXCL


def flow(sport: int, **fields: object) -> Flow:
    orig = Tuple(CLIENT, SERVER, IPPROTO_TCP, sport, 80)
    return Flow(orig, reply=orig.inverted(), status=0xE, timeout=120, **fields)


def flow_payload(f: Flow) -> bytes:
    return ct.nfgenmsg(socket.AF_INET) + ct.FLOW.encode(f)


def malformed_flow_payload() -> bytes:
    """A flow whose CTA_STATUS has 3 bytes (the codec must refuse it)."""
    return flow_payload(Flow(flow(1).orig)) + attr(ct.CTA_STATUS, b"\0\0\x08")


EXPECT = Expectation(
    master=Tuple(CLIENT, SERVER, IPPROTO_TCP, 39999, 21),
    tuple=Tuple(CLIENT, SERVER, IPPROTO_TCP, 0, 30001),
    mask=Tuple(b"\xff" * 4, b"\xff" * 4, 0xFF, 0, 0xFFFF),
    timeout=300,
    id=12,
    helper="ftp",
)


def expect_payload(exp: Expectation) -> bytes:
    return (
        ct.nfgenmsg(socket.AF_INET)
        + ct.EXPECT.encode(exp)
        + (attr(ct.CTA_EXPECT_ID, struct.pack(">I", exp.id)) if exp.id is not None else b"")
    )


@pytest.fixture
def kernel() -> Iterator[FakeKernel]:
    k = FakeKernel()
    try:
        yield k
    finally:
        k.close()


# --- single requests -----------------------------------------------------------------------


async def test_request_ends_at_the_ack(kernel: FakeKernel) -> None:
    """A request goes out as one message asking for an ack, with our payload verbatim, and
    returns (with no replies) when the kernel acks it."""
    req = ct.flow_create(flow(40000))
    async with kernel.serving(lambda msgs: [ack(msgs[0])]):
        assert await kernel.nl.request(req, "create flow") == []
    assert len(kernel.datagrams) == 1
    (sent,) = kernel.messages
    assert sent.type == ct.CT_NEW
    assert sent.flags == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    assert sent.seq != 0
    assert sent.payload == req.payload
    assert struct.unpack_from("=I", kernel.datagrams[0])[0] == 16 + len(req.payload)
    assert len(kernel.datagrams[0]) % 4 == 0


async def test_each_request_gets_a_new_sequence_number(kernel: FakeKernel) -> None:
    req = Request(ct.CT_DELETE, 0, ct.flow_key(flow(1).orig))
    async with kernel.serving(lambda msgs: [ack(msgs[0])]):
        for _ in range(3):
            await kernel.nl.request(req)
    seqs = [m.seq for m in kernel.messages]
    assert len(set(seqs)) == 3 and seqs == sorted(seqs)


async def test_get_returns_the_reply_before_the_ack(kernel: FakeKernel) -> None:
    """Conntrack.get decodes the kernel's reply; ENOENT means "no such flow" (None)."""
    wanted = flow(40000, mark=5, protoinfo=TcpInfo(state=3))
    conntrack = Conntrack(nl=kernel.nl)

    def answer(msgs: list[Message]) -> Iterable[bytes]:
        (req,) = msgs
        orig = ct.decode_flow(req.data, req.offset, req.end).orig
        if orig == wanted.orig:
            # reply and ack in one datagram, as the kernel does for a small reply
            return [reply(req, ct.CT_NEW, flow_payload(wanted)) + ack(req)]
        return [error(req, errno.ENOENT)]

    async with kernel.serving(answer):
        assert await conntrack.get(wanted.orig) == wanted
        assert await conntrack.get(flow(1).orig) is None
    assert [m.type for m in kernel.messages] == [ct.CT_GET, ct.CT_GET]


@pytest.mark.parametrize("capped", [True, False], ids=["capped", "full-echo"])
async def test_error_reply_raises_with_errno_and_extended_ack(
    kernel: FakeKernel, capped: bool
) -> None:
    """NLMSG_ERROR with NLM_F_ACK_TLVS: errno plus NLMSGERR_ATTR_MSG, found after the echoed
    request whether the kernel echoed only its header (NETLINK_CAP_ACK) or all of it."""
    req = ct.flow_create(flow(40000))
    text = "ctnetlink: conntrack entry exists"
    async with kernel.serving(
        lambda msgs: [error(msgs[0], errno.EEXIST, text, capped=capped, offset=20)]
    ):
        with pytest.raises(NetlinkError) as info:
            await kernel.nl.request(req, "create flow")
    exc = info.value
    assert exc.errno == errno.EEXIST
    assert exc.ext_msg == text
    assert str(exc) == f"[Errno {errno.EEXIST}] create flow: {os.strerror(errno.EEXIST)} ({text})"


async def test_error_reply_without_extended_ack(kernel: FakeKernel) -> None:
    async with kernel.serving(lambda msgs: [error(msgs[0], errno.EBUSY, capped=False)]):
        with pytest.raises(NetlinkError) as info:
            await kernel.nl.request(ct.flow_create(flow(1)))
    assert info.value.errno == errno.EBUSY
    assert info.value.ext_msg is None


async def test_replies_to_other_sequence_numbers_are_ignored(kernel: FakeKernel) -> None:
    """Late answers to an earlier, abandoned request (an error, a reply) do not end or fail
    the current one."""

    def answer(msgs: list[Message]) -> Iterable[bytes]:
        (req,) = msgs
        stale = req._replace(seq=req.seq - 1)
        return [
            error(stale, errno.ENOENT, "stale"),
            reply(stale, ct.CT_NEW, flow_payload(flow(9))),
            reply(req, ct.CT_NEW, flow_payload(flow(7))),
            ack(req),
        ]

    async with kernel.serving(answer):
        replies = await kernel.nl.request(Request(ct.CT_GET, 0, ct.flow_key(flow(7).orig)))
    assert [ct.decode_flow(m.data, m.offset, m.end) for m in replies] == [flow(7)]


# --- dumps ---------------------------------------------------------------------------------


def dump_answer(parts: list[list[bytes]]) -> Handler:
    """A handler answering a dump with ``parts``: one datagram per inner list of payloads,
    then NLMSG_DONE (after a stale part with another sequence number)."""

    def answer(msgs: list[Message]) -> Iterable[bytes]:
        (req,) = msgs
        dgrams = [
            b"".join(reply(req, ct.CT_NEW, p, multi=True) for p in payloads) for payloads in parts
        ]
        stale = reply(
            req._replace(seq=req.seq + 1000), ct.CT_NEW, flow_payload(flow(1)), multi=True
        )
        return [*dgrams, stale + done(req)]

    return answer


async def test_dump_collects_every_part_until_done(kernel: FakeKernel) -> None:
    """A dump request carries NLM_F_DUMP; the replies of several datagrams are collected in
    order until NLMSG_DONE, skipping messages of another sequence number."""
    flows = [flow(p) for p in (1001, 1002, 1003, 1004, 1005)]
    payloads = [flow_payload(f) for f in flows]
    answer = dump_answer([payloads[:2], payloads[2:4], payloads[4:]])
    async with kernel.serving(answer):
        got = await kernel.nl.dump(Request(ct.CT_GET, 0, ct.nfgenmsg()))
    assert [ct.decode_flow(m.data, m.offset, m.end) for m in got] == flows
    assert all(m.flags & NLM_F_MULTI for m in got)
    (sent,) = kernel.messages
    assert sent.flags & NLM_F_DUMP == NLM_F_DUMP
    assert sent.type == ct.CT_GET


async def test_conntrack_dump_decodes_and_skips_malformed(kernel: FakeKernel) -> None:
    """Conntrack.dump sends the kernel-side filters, returns the decoded flows and counts
    (rather than raises on) a message it cannot decode."""
    flows = [flow(p, mark=0x10) for p in (2001, 2002)]
    answer = dump_answer(
        [[flow_payload(flows[0]), malformed_flow_payload()], [flow_payload(flows[1])]]
    )
    conntrack = Conntrack(nl=kernel.nl)
    async with kernel.serving(answer):
        got = await conntrack.dump(socket.AF_INET, mark=0x10, mark_mask=0xF0)
    assert got == flows
    assert conntrack.decode_errors.count == 1
    assert conntrack.decode_errors.last is not None
    assert conntrack.decode_errors.last.startswith("CTA_STATUS: ")
    (sent,) = kernel.messages
    assert sent.payload == ct.flow_dump_filter(socket.AF_INET, mark=0x10, mark_mask=0xF0)


async def test_dump_error_raises(kernel: FakeKernel) -> None:
    async with kernel.serving(lambda msgs: [error(msgs[0], errno.EPERM)]):
        with pytest.raises(NetlinkError) as info:
            await Conntrack(nl=kernel.nl).dump()
    assert info.value.errno == errno.EPERM
    assert "dump conntrack table" in str(info.value)


# --- batches -------------------------------------------------------------------------------


def failing_by_port(failures: dict[int, tuple[int, str | None]]) -> Handler:
    """A handler that answers each datagram like the kernel: an error (in order) for each
    request whose orig sport is in ``failures``, and an ack for the request that asked."""

    def answer(msgs: list[Message]) -> Iterable[bytes]:
        out = []
        for msg in msgs:
            sport = ct.decode_flow(msg.data, msg.offset, msg.end).orig.sport
            if sport in failures:
                err, text = failures[sport]
                out.append(error(msg, err, text))
            elif msg.flags & NLM_F_ACK:
                out.append(ack(msg))
        return out

    return answer


async def test_batch_sends_one_datagram_and_maps_errors(kernel: FakeKernel) -> None:
    """Five creates go out in one datagram with consecutive sequence numbers; only the last
    asks for an ack; the errors for the 2nd and 4th map back to them, the rest are None."""
    reqs = [ct.flow_create(flow(3000 + i)) for i in range(5)]
    answer = failing_by_port({3001: (errno.EEXIST, "entry exists"), 3003: (errno.EINVAL, None)})
    async with kernel.serving(answer):
        results = await kernel.nl.batch(reqs)

    assert len(kernel.datagrams) == 1
    sent = kernel.messages
    assert [m.payload for m in sent] == [r.payload for r in reqs]
    assert [m.seq - sent[0].seq for m in sent] == [0, 1, 2, 3, 4]
    assert [bool(m.flags & NLM_F_ACK) for m in sent] == [False, False, False, False, True]
    assert all(m.flags & NLM_F_REQUEST and m.flags & NLM_F_CREATE for m in sent)

    assert [None if r is None else r.errno for r in results] == [
        None,
        errno.EEXIST,
        None,
        errno.EINVAL,
        None,
    ]
    assert results[1] is not None and results[1].ext_msg == "entry exists"
    assert results[3] is not None and results[3].ext_msg is None


async def test_batch_whose_last_request_fails(kernel: FakeKernel) -> None:
    """The last request's error replaces its ack and still ends the wait."""
    reqs = [ct.flow_create(flow(3100 + i)) for i in range(3)]
    answer = failing_by_port({3102: (errno.EEXIST, None), 3100: (errno.ENOMEM, None)})
    async with kernel.serving(answer):
        results = await kernel.nl.batch(reqs)
    assert [None if r is None else r.errno for r in results] == [errno.ENOMEM, None, errno.EEXIST]


async def test_batch_chunks_by_size_and_maps_errors_across_chunks(kernel: FakeKernel) -> None:
    """With a small size limit the batch goes out in several datagrams (2 + 2 + 1 requests
    here), each ending with the one request that asks for an ack, and errors still map to
    their request's index across chunks."""
    reqs = [ct.flow_create(flow(4000 + i)) for i in range(5)]
    (size,) = {len(r.payload) for r in reqs}
    answer = failing_by_port({4002: (errno.EEXIST, "dup"), 4004: (errno.EBUSY, None)})
    async with kernel.serving(answer):
        results = await kernel.nl.batch(reqs, max_bytes=2 * (20 + size))

    assert [len(d) for d in kernel.received] == [2, 2, 1]
    for dgram in kernel.received:
        assert [bool(m.flags & NLM_F_ACK) for m in dgram] == [False] * (len(dgram) - 1) + [True]
    assert [m.payload for m in kernel.messages] == [r.payload for r in reqs]
    assert [None if r is None else r.errno for r in results] == [
        None,
        None,
        errno.EEXIST,
        None,
        errno.EBUSY,
    ]
    assert results[2] is not None and results[2].ext_msg == "dup"


async def test_batch_sequence_numbers_stay_contiguous_at_wraparound(kernel: FakeKernel) -> None:
    kernel.nl._seq = 0xFFFF_FFFE
    reqs = [ct.flow_create(flow(4100 + i)) for i in range(3)]
    answer = failing_by_port({4101: (errno.EEXIST, None)})
    async with kernel.serving(answer):
        results = await kernel.nl.batch(reqs)
    seqs = [m.seq for m in kernel.messages]
    assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2] and 0 not in seqs
    assert [r is None for r in results] == [True, False, True]


async def test_create_many_returns_one_result_per_flow(kernel: FakeKernel) -> None:
    flows = [flow(4200 + i) for i in range(4)]
    answer = failing_by_port({4203: (errno.EEXIST, None)})
    conntrack = Conntrack(nl=kernel.nl)
    async with kernel.serving(answer):
        results = await conntrack.create_many(flows)
    assert [r is None for r in results] == [True, True, True, False]
    assert [ct.decode_flow(m.data, m.offset, m.end).orig for m in kernel.messages] == [
        f.orig for f in flows
    ]


async def test_batch_of_nothing_sends_nothing(kernel: FakeKernel) -> None:
    assert await kernel.nl.batch([]) == []
    assert kernel.datagrams == []


# --- receiving and overruns ----------------------------------------------------------------


async def test_recv_batch_drains_several_datagrams(kernel: FakeKernel) -> None:
    """One wake-up drains everything queued, up to ``max_datagrams`` datagrams."""
    for i in range(3):
        kernel.send(
            message(ct.CT_NEW, 0, 0, flow_payload(flow(5000 + 2 * i)), pid=0),
            message(ct.CT_NEW, 0, 0, flow_payload(flow(5001 + 2 * i)), pid=0),
        )
    first = await kernel.nl.recv_batch(max_datagrams=2)
    assert first is not OVERRUN and len(first) == 4
    rest = await kernel.nl.recv_batch()
    assert rest is not OVERRUN and len(rest) == 2
    got = [ct.decode_flow(m.data, m.offset, m.end).orig.sport for m in [*first, *rest]]
    assert got == list(range(5000, 5006))


class ScriptedSocket:
    """A stand-in for a netlink socket whose receives follow a script: each entry is one
    datagram (bytes) or an exception to raise. Readable (for trio) while entries remain."""

    def __init__(self, script: list[bytes | OSError]) -> None:
        self.script = list(script)
        self.sent: list[bytes] = []
        self._r, self._w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._w.send(b"!")  # keeps the fd readable; never read

    def fileno(self) -> int:
        return self._r.fileno()

    def setblocking(self, flag: bool) -> None:
        self._r.setblocking(flag)

    def recv_into(self, buf: bytearray | memoryview, nbytes: int = 0) -> int:
        if not self.script:
            raise BlockingIOError(errno.EAGAIN, "nothing queued")
        item = self.script.pop(0)
        if isinstance(item, OSError):
            raise item
        buf[: len(item)] = item
        return len(item)

    def recv(self, size: int) -> bytes:
        buf = bytearray(size)
        return bytes(buf[: self.recv_into(buf)])

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def close(self) -> None:
        self._r.close()
        self._w.close()


def enobufs() -> OSError:
    return OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))


async def test_recv_batch_reports_overrun() -> None:
    """ENOBUFS from recv (the kernel dropped messages for us) comes back as OVERRUN, even
    after messages were already drained in the same batch (they are dropped: the caller
    resyncs from a dump)."""
    good = message(ct.CT_NEW, 0, 0, flow_payload(flow(1)), pid=0)
    with NetlinkSocket(sock=ScriptedSocket([enobufs()])) as nl:
        assert await nl.recv_batch() is OVERRUN
    with NetlinkSocket(sock=ScriptedSocket([good, enobufs(), good])) as nl:
        assert await nl.recv_batch() is OVERRUN
        after = await nl.recv_batch()
        assert after is not OVERRUN and len(after) == 1


async def test_receive_queue_reports_what_waits_against_the_limit() -> None:
    """The fill level a reader watches to grow its buffer before the kernel drops data:
    bytes queued (the kernel's accounting, more than the payload) against the limit, and
    nothing once drained.  Two NETLINK_USERSOCK sockets (no privileges needed; a
    socketpair's queue is charged to its sender) stand in for the kernel and the reader."""
    NETLINK_USERSOCK = 2
    reader = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_USERSOCK)
    reader.bind((0, 0))
    address = (reader.getsockname()[0], 0)
    with (
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_USERSOCK) as sender,
        NetlinkSocket(sock=reader) as nl,
    ):
        assert nl.receive_queue() == (0, nl.rcvbuf)
        payload = message(ct.CT_NEW, 0, 0, flow_payload(flow(1)), pid=0)
        for _ in range(3):
            sender.sendto(payload, address)
        queued, limit = nl.receive_queue()
        assert queued > 3 * len(payload) and limit == nl.rcvbuf
        assert await nl.recv_datagrams() == [payload] * 3
        assert nl.receive_queue() == (0, limit)


async def test_other_receive_errors_propagate() -> None:
    nl = NetlinkSocket(sock=ScriptedSocket([OSError(errno.EIO, "boom")]))
    with nl, pytest.raises(OSError) as info:
        await nl.recv_batch()
    assert info.value.errno == errno.EIO


async def test_overrun_during_a_request_or_batch_is_an_enobufs_error() -> None:
    """A request cannot resync: an overrun while waiting for its answer is an error."""
    with NetlinkSocket(sock=ScriptedSocket([enobufs()])) as nl:
        with pytest.raises(NetlinkError) as info:
            await nl.request(ct.flow_create(flow(1)), "create")
        assert info.value.errno == errno.ENOBUFS
    with NetlinkSocket(sock=ScriptedSocket([enobufs()])) as nl:
        with pytest.raises(NetlinkError) as info:
            await nl.batch([ct.flow_create(flow(1)), ct.flow_create(flow(2))])
        assert info.value.errno == errno.ENOBUFS


async def test_event_stream_reports_overrun() -> None:
    stream = EventStream(nl=NetlinkSocket(sock=ScriptedSocket([enobufs()])))
    with stream:
        assert await stream.next_batch() is OVERRUN
    assert stream.stats.overruns == 1


# --- events --------------------------------------------------------------------------------

OUR_PORT = PORT_ID  # the Conntrack object below writes from this port
OTHER_PORT = 31337


def event_datagram() -> bytes:
    """A datagram of events as the kernel multicasts them (sequence number 0): flow NEW,
    UPDATE, a malformed one, DESTROY caused by our own write, a non-ctnetlink message, an
    expectation NEW and its DESTROY."""
    destroyed = flow(6003, mark=1)
    return b"".join(
        [
            message(ct.CT_NEW, NEW_FLAGS, 0, flow_payload(flow(6001)), pid=0),
            message(ct.CT_NEW, 0, 0, flow_payload(flow(6002, mark=7)), pid=OTHER_PORT),
            message(ct.CT_NEW, NEW_FLAGS, 0, malformed_flow_payload(), pid=0),
            message(ct.CT_DELETE, 0, 0, flow_payload(destroyed), pid=OUR_PORT),
            message(NLMSG_NOOP, 0, 0, b""),
            message(ct.EXP_NEW, NEW_FLAGS, 0, expect_payload(EXPECT), pid=0),
            message(ct.EXP_DELETE, 0, 0, expect_payload(EXPECT), pid=OTHER_PORT),
        ]
    )


EXPECTED_EVENTS = [
    Event(EventKind.NEW, flow(6001), 0),
    Event(EventKind.UPDATE, flow(6002, mark=7), OTHER_PORT),
    Event(EventKind.DESTROY, flow(6003, mark=1), OUR_PORT),
    Event(EventKind.NEW, EXPECT, 0),
    Event(EventKind.DESTROY, EXPECT, OTHER_PORT),
]


def test_a_broken_header_ends_the_datagram_not_the_stream() -> None:
    """A message whose header claims more bytes than the datagram holds: the events before
    it are kept, the error is counted with what was wrong, and nothing is raised."""
    good = message(ct.CT_NEW, NEW_FLAGS, 0, flow_payload(flow(6001)), pid=0)
    broken = struct.pack("=IHHII", 4000, ct.CT_NEW, NEW_FLAGS, 0, 0) + b"\0" * 24
    stream = EventStream(nl=NetlinkSocket(sock=ScriptedSocket([])))
    with stream:
        events = stream.decode_datagram(good + broken)
    assert events == [Event(EventKind.NEW, flow(6001), 0)]
    assert stream.decode_errors.count == 1
    assert stream.decode_errors.last == "nlmsghdr: message claims length 4000, 40 left"


def test_event_decode_classifies_and_skips_malformed() -> None:
    """NEW is CT_NEW with CREATE|EXCL, UPDATE is CT_NEW without, DESTROY is CT_DELETE (for
    expectations likewise); expectations decode as Expectation; each event carries the port
    id of the writer; a malformed message is counted, remembered and skipped."""
    stream = EventStream(nl=NetlinkSocket(sock=ScriptedSocket([])))
    with stream:
        events = stream.decode_datagram(event_datagram())
    assert events == EXPECTED_EVENTS
    assert stream.decode_errors.count == 1
    assert stream.decode_errors.last == "CTA_STATUS: expected 4 bytes (be32), got 3"
    assert stream.stats.flows == {EventKind.NEW: 1, EventKind.UPDATE: 1, EventKind.DESTROY: 1}
    assert stream.stats.expects == {EventKind.NEW: 1, EventKind.UPDATE: 0, EventKind.DESTROY: 1}


def test_events_of_a_muted_writer_are_skipped_unread() -> None:
    """The daemon mutes its commit socket: that writer's events (even a malformed one,
    which is never decoded) are counted as muted; everyone else's decode as before."""
    mine = message(ct.CT_NEW, NEW_FLAGS, 0, malformed_flow_payload(), pid=OUR_PORT)
    stream = EventStream(nl=NetlinkSocket(sock=ScriptedSocket([])), muted={OUR_PORT})
    with stream:
        events = stream.decode_datagram(event_datagram() + mine)
    assert events == [e for e in EXPECTED_EVENTS if e.origin != OUR_PORT]
    assert stream.stats.muted == 2
    assert stream.decode_errors.count == 1  # only the traffic event's, not ours
    assert stream.stats.flows[EventKind.DESTROY] == 0

    stream.muted.discard(OUR_PORT)  # unmuted: the same datagram yields every event
    assert stream.decode_datagram(event_datagram()) == EXPECTED_EVENTS


async def test_event_stream_from_the_socket(kernel: FakeKernel) -> None:
    """The same through the socket: next_batch returns the decoded events; own writes are
    recognisable by comparing the origin with Conntrack.port_id."""
    stream = EventStream(nl=kernel.nl)
    kernel.send(event_datagram())
    with trio.fail_after(5):
        batch = await stream.next_batch()
    assert batch == EXPECTED_EVENTS
    own = Conntrack(nl=NetlinkSocket(sock=ScriptedSocket([])))
    with own:
        assert [e.origin == own.port_id for e in batch] == [False, False, True, False, False]


async def test_a_batch_of_only_malformed_messages_is_not_returned(kernel: FakeKernel) -> None:
    """next_batch never returns an empty list: a datagram with nothing decodable is counted
    and the stream waits for the next one."""
    stream = EventStream(nl=kernel.nl)
    kernel.send(message(ct.CT_NEW, NEW_FLAGS, 0, malformed_flow_payload(), pid=0))

    async def later() -> None:
        await trio.sleep(0.05)
        kernel.send(message(ct.CT_DELETE, 0, 0, flow_payload(flow(7000)), pid=0))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(later)
            batch = await stream.next_batch()
    assert batch == [Event(EventKind.DESTROY, flow(7000), 0)]
    assert stream.decode_errors.count == 1


@pytest.mark.parametrize(
    ("mtype", "flags", "kind"),
    [
        (ct.CT_NEW, NLM_F_CREATE | NLM_F_EXCL, EventKind.NEW),
        (ct.CT_NEW, 0, EventKind.UPDATE),
        (ct.CT_DELETE, 0, EventKind.DESTROY),
        (ct.EXP_NEW, NLM_F_CREATE | NLM_F_EXCL, EventKind.NEW),
        (ct.EXP_DELETE, 0, EventKind.DESTROY),
    ],
)
def test_event_kind(mtype: int, flags: int, kind: EventKind) -> None:
    msg = Message(mtype, flags, 0, 0, b"", 0, 0)
    assert ct.event_kind(msg.type, msg.flags) is kind


async def test_dump_that_ends_with_an_error_in_done_raises() -> None:
    """A dump the kernel aborted reports the errno in NLMSG_DONE's payload; it must not be
    mistaken for a complete (shorter) table."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    nl = NetlinkSocket(sock=a)
    with nl, b:
        async with trio.open_nursery() as nursery:

            async def kernel() -> None:
                await trio.lowlevel.wait_readable(b)
                (req,) = parse_messages(b.recv(65536))
                body = struct.pack("=i", -errno.ENOMEM)
                b.send(struct.pack("=IHHII", 20, 3, 2, req.seq, 0) + body)  # NLMSG_DONE|MULTI

            nursery.start_soon(kernel)
            with pytest.raises(NetlinkError) as info:
                await nl.dump(Request(0x101, 0, b"\0" * 4), "dump conntrack table")
        assert info.value.errno == errno.ENOMEM
        assert "dump ended early" in str(info.value)


def test_flow_create_rejects_addresses_of_the_wrong_size() -> None:
    bad = Flow(orig=Tuple(b"\1\2\3", b"\1\2\3", 17, 1, 2), timeout=30)
    with pytest.raises(ValueError, match="CTA_TUPLE_ORIG: the source address must be 4"):
        ct.flow_create(bad)
