"""The daemon's view of the kernel conntrack table: dumps, writes and the event stream.

Everything that reads or changes kernel conntrack state goes through here, so the rest of
the daemon deals only in :mod:`nfsyncd.model` values.  Requests and events use separate
sockets (:class:`Conntrack` and :class:`EventStream`) because an event socket's stream would
interleave with dump replies.  Each event carries the port id of the socket whose write
caused it (:attr:`Event.origin`); compare it with :attr:`Conntrack.port_id` to recognise
the daemon's own writes.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, TypeVar

from ._prepared import Prepared
from .model import EventKind, Expectation, Flow, Tuple
from .netlink import ctnetlink as ct
from .netlink._attrs import BE32, DecodeError, iter_attrs
from .netlink._layout import MAX_LAYOUTS, Derive, LayoutDecoder
from .netlink._socket import (
    NLM_F_CREATE,
    NLM_F_EXCL,
    OVERRUN,
    Message,
    NetlinkError,
    NetlinkSocket,
    Overrun,
    Request,
)

__all__ = [
    "ALL_EVENT_GROUPS",
    "EXPECT_EVENT_GROUPS",
    "FLOW_EVENT_GROUPS",
    "OVERRUN",
    "Conntrack",
    "DecodeErrors",
    "Event",
    "EventStats",
    "EventStream",
    "Overrun",
    "flow_decoder",
]

FLOW_EVENT_GROUPS: Final = (ct.GROUP_CT_NEW, ct.GROUP_CT_UPDATE, ct.GROUP_CT_DESTROY)
EXPECT_EVENT_GROUPS: Final = (ct.GROUP_EXP_NEW, ct.GROUP_EXP_UPDATE, ct.GROUP_EXP_DESTROY)
ALL_EVENT_GROUPS: Final = FLOW_EVENT_GROUPS + EXPECT_EVENT_GROUPS

_T = TypeVar("_T")


class Event(NamedTuple):
    """A kernel notification: what happened, to what, and whose write caused it.  From a
    stream with a ``prepare``, a flow may come as what that made of it
    (:class:`~nfsyncd._prepared.Prepared`; its ``flow()`` is the flow)."""

    kind: EventKind
    obj: Flow | Expectation | Prepared
    origin: int


@dataclass(slots=True)
class DecodeErrors:
    """Messages the codec refused; counted, remembered, and skipped."""

    count: int = 0
    last: str | None = None

    def add(self, exc: DecodeError) -> None:
        self.count += 1
        self.last = str(exc)


class Conntrack:
    """Requests to the conntrack and expectation tables.

    ``port_id`` is the netlink port of the request socket: events whose origin equals it
    were caused by this object's writes.
    """

    def __init__(self, *, rcvbuf: int = 8 * 1024 * 1024, nl: NetlinkSocket | None = None) -> None:
        self._nl = nl if nl is not None else NetlinkSocket(rcvbuf=rcvbuf)
        self.port_id: int = self._nl.port_id
        self.decode_errors = DecodeErrors()

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> Conntrack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- flows --------------------------------------------------------------------------
    async def dump(
        self,
        family: int = socket.AF_UNSPEC,
        *,
        mark: int | None = None,
        mark_mask: int = 0xFFFFFFFF,
        zone: int | None = None,
        status: int | None = None,
        status_mask: int | None = None,
    ) -> list[Flow]:
        """Every flow, filtered in the kernel by family, mark/mask, zone and status."""
        body = ct.flow_dump_filter(
            family,
            mark=mark,
            mark_mask=mark_mask,
            zone=zone,
            status=status,
            status_mask=status_mask,
        )
        msgs = await self._nl.dump(Request(ct.CT_GET, 0, body), "dump conntrack table")
        return self._decode_all(msgs, ct.decode_flow)

    async def dump_chunks(self, family: int = socket.AF_UNSPEC) -> AsyncIterator[list[Flow]]:
        """The whole table, in pieces as the kernel sends them (bounded memory for 1M flows)."""
        req = Request(ct.CT_GET, 0, ct.flow_dump_filter(family))
        async for msgs in self._nl.dump_chunks(req, "dump conntrack table"):
            yield self._decode_all(msgs, ct.decode_flow)

    async def get(self, orig: Tuple, zone: int | None = None) -> Flow | None:
        """The flow with this original tuple, or ``None`` when the kernel has none."""
        try:
            msgs = await self._nl.request(Request(ct.CT_GET, 0, ct.flow_key(orig, zone)), "get")
        except NetlinkError as exc:
            if exc.errno == 2:  # ENOENT
                return None
            raise
        flows = self._decode_all(msgs, ct.decode_flow)
        return flows[0] if flows else None

    async def create(self, flow: Flow) -> None:
        await self._one(ct.flow_create(flow), "create flow")

    async def create_many(
        self, flows: Iterable[Flow], *, exclusive: bool = True
    ) -> list[NetlinkError | None]:
        """Create flows in large batches; one result per flow (``None`` = created).

        Encoded lazily, chunk by chunk, as the batch is written: the requests of a
        100k-flow batch are never all alive together (memory, and the cyclic GC)."""
        return await self._nl.batch(ct.flow_create(f, exclusive=exclusive) for f in flows)

    async def write_many(self, requests: Iterable[Request]) -> list[NetlinkError | None]:
        """Send prepared requests in batches (see :meth:`NetlinkSocket.batch`)."""
        return await self._nl.batch(requests)

    async def update(self, flow: Flow) -> None:
        await self._one(ct.flow_update(flow), "update flow")

    async def delete(self, orig: Tuple, zone: int | None = None) -> None:
        await self._one(Request(ct.CT_DELETE, 0, ct.flow_key(orig, zone)), "delete flow")

    async def delete_many(self, flows: Iterable[Flow]) -> list[NetlinkError | None]:
        reqs = [Request(ct.CT_DELETE, 0, ct.flow_key(f.orig, f.zone)) for f in flows]
        return await self._nl.batch(reqs)

    async def flush(self, family: int = socket.AF_UNSPEC) -> None:
        """Delete every flow (of one family, if given)."""
        await self._one(ct.flow_flush(family), "flush conntrack table")

    async def count(self) -> int:
        return (await self.stats_global())["entries"]

    async def stats_global(self) -> dict[str, int]:
        """Table size and limit (``CTA_STATS_GLOBAL_*``)."""
        msgs = await self._nl.request(Request(ct.CT_GET_STATS, 0, ct.nfgenmsg()), "stats")
        values = self._attr_ints(msgs[0]) if msgs else {}
        return {
            "entries": values.get(ct.CTA_STATS_GLOBAL_ENTRIES, 0),
            "max_entries": values.get(ct.CTA_STATS_GLOBAL_MAX_ENTRIES, 0),
        }

    async def stats_cpu(self) -> dict[str, int]:
        """Per-CPU conntrack counters, summed over CPUs (insert_failed, drop, ...)."""
        msgs = await self._nl.dump(Request(ct.CT_GET_STATS_CPU, 0, ct.nfgenmsg()), "stats")
        return self._sum_cpu(msgs, ct.CT_CPU_STATS)

    # -- expectations -------------------------------------------------------------------
    async def dump_expect(self, family: int = socket.AF_UNSPEC) -> list[Expectation]:
        msgs = await self._nl.dump(Request(ct.EXP_GET, 0, ct.nfgenmsg(family)), "dump expect")
        return self._decode_all(msgs, ct.decode_expect)

    async def create_expect(self, exp: Expectation) -> None:
        await self._one(ct.expect_create(exp), "create expectation")

    async def create_expect_many(self, exps: Iterable[Expectation]) -> list[NetlinkError | None]:
        return await self._nl.batch([ct.expect_create(e) for e in exps])

    async def delete_expect(self, exp: Expectation) -> None:
        await self._one(Request(ct.EXP_DELETE, 0, ct.expect_key(exp)), "delete expectation")

    async def flush_expect(self, family: int = socket.AF_UNSPEC) -> None:
        """Delete every expectation (of one family, if given).

        The kernel's expectation flush ignores the family (it always empties the whole
        table), so a per-family flush deletes what a family-filtered dump lists; one that
        expired in between is no error.
        """
        if family == socket.AF_UNSPEC:
            await self._one(Request(ct.EXP_DELETE, 0, ct.nfgenmsg()), "flush expectations")
            return
        exps = await self.dump_expect(family)
        reqs = [Request(ct.EXP_DELETE, 0, ct.expect_key(e)) for e in exps]
        for result in await self._nl.batch(reqs):
            if result is not None and result.errno != errno.ENOENT:
                raise result

    async def expect_stats_cpu(self) -> dict[str, int]:
        msgs = await self._nl.dump(Request(ct.EXP_GET_STATS_CPU, 0, ct.nfgenmsg()), "stats")
        return self._sum_cpu(msgs, ct.EXP_CPU_STATS)

    # -- helpers ------------------------------------------------------------------------
    async def _one(self, req: Request, what: str) -> None:
        await self._nl.request(req, what)

    def _decode_all(self, msgs: list[Message], decode: Callable[[bytes, int, int], _T]) -> list[_T]:
        out = []
        for msg in msgs:
            try:
                out.append(decode(msg.data, msg.offset, msg.end))
            except DecodeError as exc:
                self.decode_errors.add(exc)
        return out

    @staticmethod
    def _attr_ints(msg: Message) -> dict[int, int]:
        values = {}
        for atype, ps, pe in iter_attrs(msg.data, msg.offset + 4, msg.end, "stats"):
            if pe - ps == 4:
                values[atype] = BE32.decode(msg.data, ps, pe)
        return values

    def _sum_cpu(self, msgs: list[Message], names: tuple[str, ...]) -> dict[str, int]:
        total = dict.fromkeys(names, 0)
        for msg in msgs:
            for key, value in ct.decode_stats_cpu(self._attr_ints(msg), names).items():
                total[key] += value
        return total


@dataclass(slots=True)
class EventStats:
    flows: dict[EventKind, int] = field(default_factory=lambda: dict.fromkeys(EventKind, 0))
    expects: dict[EventKind, int] = field(default_factory=lambda: dict.fromkeys(EventKind, 0))
    overruns: int = 0
    #: messages skipped undecoded because a muted socket caused them
    muted: int = 0


class EventStream:
    """Kernel conntrack/expectation events, delivered in batches.

    ``batches()`` yields lists of :class:`Event`, or :data:`OVERRUN` when the kernel had to
    drop events because we were too slow: the caller's picture of the table is then stale
    and it must resync from a dump.  Malformed messages are counted in ``decode_errors``
    and skipped; the stream goes on with the next one.

    Events caused by a socket whose port id is in ``muted`` are skipped undecoded (counted
    in ``stats.muted``): the daemon's own large writes (a commit) would otherwise cost
    it as much again in reading back what it just wrote.

    ``prepare`` derives the decoder of each learned flow layout
    (:class:`~nfsyncd.netlink._layout.LayoutDecoder`): the sender's fast path
    (:mod:`nfsyncd.sync.sendpath`), whose events may carry a
    :class:`~nfsyncd._prepared.Prepared` instead of a ``Flow``.
    """

    def __init__(
        self,
        groups: Iterable[int] = ALL_EVENT_GROUPS,
        *,
        rcvbuf: int = 16 * 1024 * 1024,
        nl: NetlinkSocket | None = None,
        muted: set[int] | None = None,
        prepare: Derive | None = None,
    ) -> None:
        self._nl = nl if nl is not None else NetlinkSocket(groups=groups, rcvbuf=rcvbuf)
        self._decode_flow = flow_decoder(prepare)
        self._shapes = _Shapes()
        self.decode_errors = DecodeErrors()
        self.stats = EventStats()
        self.muted: set[int] = muted if muted is not None else set()

    @property
    def rcvbuf(self) -> int:
        return self._nl.rcvbuf

    def set_rcvbuf(self, size: int) -> None:
        self._nl.set_rcvbuf(size)

    def receive_queue(self) -> tuple[int, int]:
        """Bytes of events waiting and the buffer's limit (:meth:`NetlinkSocket.receive_queue`)."""
        return self._nl.receive_queue()

    def set_reliable(self, on: bool) -> None:
        self._nl.set_reliable(on)

    def set_group(self, group: int, member: bool) -> None:
        """Subscribe to or leave one event group (``ct.GROUP_*``)."""
        self._nl.set_membership(group, member)

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def next_batch(self, max_datagrams: int = 512) -> list[Event] | Overrun:
        """The next events (at least one), at most ``max_datagrams`` datagrams' worth."""
        while True:
            datagrams = await self._nl.recv_datagrams(max_datagrams)
            if isinstance(datagrams, Overrun):
                self.stats.overruns += 1
                return OVERRUN
            events = self.decode_datagrams(datagrams, [])
            if events:
                return events

    async def batches(self) -> AsyncIterator[list[Event] | Overrun]:
        while True:
            yield await self.next_batch()

    def decode_datagram(self, data: bytes, out: list[Event] | None = None) -> list[Event]:
        """The events in one datagram, appended to ``out`` (also returned)."""
        return self.decode_datagrams((data,), [] if out is None else out)

    def decode_datagrams(self, datagrams: Iterable[bytes], out: list[Event]) -> list[Event]:
        """The events in these datagrams, appended to ``out`` (also returned).

        This is the event hot path: the kernel sends each event in a datagram of its own,
        and nearly all of a gateway's are of a few shapes (:class:`_Shapes`), each of
        which decodes with one mask compare and one call of its layout's decoder.  Any
        other datagram is walked message by message (:meth:`_decode_messages`).
        """
        append = out.append
        flow_stats = self.stats.flows
        muted = self.muted
        shapes = self._shapes.by_size
        for data in datagrams:
            event = None
            entries = shapes.get(len(data))
            if entries is not None:
                value = int.from_bytes(data, "big")
                for mask, expected, decode, kind in entries:
                    if value & mask == expected:
                        pid = _unpack_pid(data, _PID_AT)[0]
                        if not (pid and pid in muted):
                            try:  # noqa: SIM105 (suppress() costs a context manager per event)
                                event = _new(Event, (kind, decode(data, _PAYLOAD_AT), pid))
                            except DecodeError:
                                pass  # the walk below says what is wrong, and where
                        break
            if event is not None:
                flow_stats[event[0]] += 1
                append(event)
            else:
                self._decode_messages(data, append)
        return out

    def _decode_messages(self, data: bytes, append: Callable[[Event], None]) -> None:
        """The events of one datagram, walked message by message: a malformed message is
        counted in ``decode_errors`` and skipped; a malformed header ends the datagram
        (the next header cannot be found), never the stream."""
        flow_stats, exp_stats = self.stats.flows, self.stats.expects
        muted = self.muted
        decode_flow = self._decode_flow
        off, end = 0, len(data)
        while off + 16 <= end:
            length, mtype, flags, _seq, pid = _unpack_nlmsghdr(data, off)
            if length < 16 or off + length > end:
                self.decode_errors.add(
                    DecodeError("nlmsghdr", f"message claims length {length}, {end - off} left")
                )
                break
            subsys = mtype >> 8
            if subsys in (_CT, _EXP):
                if pid and pid in muted:  # traffic's events have pid 0: one test
                    self.stats.muted += 1
                else:
                    try:
                        if length < 20:
                            raise DecodeError(
                                "nfgenmsg", f"message of {length} bytes has no nfgenmsg"
                            )
                        kind = _KINDS[mtype & 0xFF, flags & _CREATE_FLAGS]
                        start = off + 20
                        if subsys == _CT:
                            obj: Flow | Expectation | Prepared = decode_flow(
                                data, start, off + length
                            )
                            flow_stats[kind] += 1
                            if length == end:
                                self._shapes.learn(data, kind, decode_flow)
                        else:
                            obj = _decode_expect(data, start, off + length)
                            exp_stats[kind] += 1
                        append(_new(Event, (kind, obj, pid)))  # (faster than Event())
                    except DecodeError as exc:
                        self.decode_errors.add(exc)
            off += (length + 3) & ~3


class _Shapes:
    """Whole event datagrams whose layout the flow decoder has learned.

    Why: the kernel sends each event alone in a datagram, so a datagram's length, its
    netlink and nfnetlink headers and its message's layout together decide everything
    the message walk would find out (the message's kind too: its type and flags are in
    the headers).  One mask compare over the whole datagram then replaces the header
    unpack, its checks and the layout decoder's own compare (in process, on a captured
    burst: 2.3-2.7 -> 1.9-2.0 µs per event).  Only the sequence number and port id are
    left out of the mask: the port id varies with whoever caused the event, and is read
    to honour ``muted``.
    """

    __slots__ = ("by_size", "count")

    def __init__(self) -> None:
        #: datagram length -> (mask, datagram under it, the layout's decoder, event kind)
        self.by_size: dict[int, list[tuple[int, int, Callable[[bytes, int], Any], EventKind]]]
        self.by_size = {}
        self.count = 0

    def learn(self, data: bytes, kind: EventKind, decoder: LayoutDecoder) -> None:
        """Remember the shape of ``data``, a datagram of one flow message just decoded by
        ``decoder``, if that has learned its layout (a bounded number of shapes)."""
        if self.count >= MAX_LAYOUTS:
            return
        layout = decoder.match(data, _PAYLOAD_AT, len(data))
        if layout is None:
            return
        size = len(data)
        # the message's payload is the datagram's last bytes: its mask applies unshifted
        mask = _HEADERS_MASK << (8 * (size - _PAYLOAD_AT)) | layout.mask
        expected = int.from_bytes(data, "big") & mask
        entries = self.by_size.setdefault(size, [])
        if all(e[:2] != (mask, expected) for e in entries):  # (a muted one comes here too)
            entries.append((mask, expected, layout.decode, kind))
            self.count += 1


def flow_decoder(derive: Derive | None = None) -> LayoutDecoder:
    """The ctnetlink flow decoder: the process's shared one, or with ``derive`` one of its
    own whose layouts decode through what ``derive`` makes of them."""
    if derive is None:
        return _decode_flow
    return LayoutDecoder(ct.FLOW, _decode_flow.slow, derive=derive)


_unpack_nlmsghdr = struct.Struct("=IHHII").unpack_from
_unpack_pid = struct.Struct("=I").unpack_from
#: where an event datagram's port id and its message's payload (after nfgenmsg) are
_PID_AT: Final = 12
_PAYLOAD_AT: Final = 20
#: the bytes of an event datagram's headers that a shape fixes: nlmsghdr's length, type
#: and flags, not its sequence number or port id, and all of nfgenmsg
_HEADERS_MASK: Final = int.from_bytes(b"\xff" * 8 + b"\x00" * 8 + b"\xff" * 4, "big")
_CT: Final = ct.NFNL_SUBSYS_CTNETLINK
_EXP: Final = ct.NFNL_SUBSYS_CTNETLINK_EXP
_decode_flow: Final[LayoutDecoder] = ct.FLOW.decoder()  # type: ignore[assignment]
_decode_expect: Final = ct.EXPECT.decoder()
_new: Final = tuple.__new__
_CREATE_FLAGS: Final = NLM_F_CREATE | NLM_F_EXCL
#: (message type within the subsystem, create flags) -> what the event reports: one dict
#: lookup per event instead of a call (ct.event_kind, for any flags, is the reference)
_KINDS: Final = {
    (t, f): ct.event_kind(t, f)
    for t in range(256)
    for f in (0, NLM_F_CREATE, NLM_F_EXCL, _CREATE_FLAGS)
}
