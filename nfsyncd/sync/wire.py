"""conntrackd's sync messages: header, types and flags, control messages, framing of many
messages per datagram, sequence numbers (reference/conntrackd.md §1.1-1.4, §1.11).

Everything here is pure (no I/O) so that sync modes and channels can share it and tests
can drive it byte by byte.  The receive side never trusts its input: :func:`decode_datagram`
returns the messages it could decode and counts every one it dropped in
:class:`NetworkStats` under a :class:`~.attrs.Reason` that mirrors conntrackd's
``-s network`` counters; it does not raise, whatever the bytes.

Framing follows conntrackd's receiver: each message's ``len`` (header included) moves to
the next one.  A zero length, a length below the header's size, or one past the end of the
datagram ends the datagram (nothing after it can be trusted); a message with a wrong
version, a bad type or flags, or a payload conntrackd would reject is skipped on its own
and the next one is still read.  The send side packs whole messages into datagrams
(:class:`Batcher`); a message is never split.
"""

from __future__ import annotations

import enum
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from ..model import Expectation, Flow
from .attrs import (
    _CT_LAYOUTS,
    LATEST_PEER_VERSION,
    AttrEncoder,
    Extra,
    LazyFlow,
    Reason,
    WireError,
    decode_expect,
    decode_flow,
    decode_flow_lazy,
)
from .shapes import DatagramShapes

__all__ = [
    "NETHDR_ACK_SIZE",
    "NETHDR_SIZE",
    "PROTOCOL_VERSION",
    "Batcher",
    "Encoder",
    "Flag",
    "Message",
    "MsgType",
    "NetworkStats",
    "SeqCounter",
    "SeqTracker",
    "SeqVerdict",
    "StreamDecoder",
    "ack_message",
    "alive_message",
    "channel_payload_size",
    "data_message",
    "decode_datagram",
    "decode_message",
    "nack_message",
    "pack_datagrams",
    "resync_message",
    "seq_add",
    "seq_after",
    "seq_before",
]

PROTOCOL_VERSION: Final = 1
NETHDR_SIZE: Final = 8
NETHDR_ACK_SIZE: Final = 16


class MsgType(enum.IntEnum):
    """``enum nethdr_type`` (§1.2); 6-9 and 11-15 are invalid."""

    CT_NEW = 0
    CT_UPD = 1
    CT_DEL = 2
    EXP_NEW = 3
    EXP_UPD = 4
    EXP_DEL = 5
    CTL = 10


class Flag(enum.IntFlag):
    """Header flags (§1.3).  ACK, NACK, RESYNC and ALIVE only on CTL messages; HELLO and
    HELLO_BACK on any message (FTFW's restart handshake)."""

    UNUSED = 0x01
    RESYNC = 0x02
    NACK = 0x04
    ACK = 0x08
    ALIVE = 0x10
    HELLO = 0x20
    HELLO_BACK = 0x40


# plain ints on the hot paths (IntFlag arithmetic costs microseconds)
_CTL: Final = 10
_RESYNC, _NACK, _ACK, _ALIVE = 0x02, 0x04, 0x08, 0x10
_HELLO, _HELLO_BACK = 0x20, 0x40
_HELLO_BITS: Final = _HELLO | _HELLO_BACK
_RANGE_BITS: Final = _RESYNC | _NACK | _ACK  # control messages with from/to (16 bytes)
_CTL_BITS: Final = _RANGE_BITS | _ALIVE

_NETHDR = struct.Struct(">BBHI")
_NETHDR_ACK = struct.Struct(">BBHIII")
_pack_hdr = _NETHDR.pack
_pack_ack = _NETHDR_ACK.pack
_unpack_hdr = _NETHDR.unpack_from
_RANGE = struct.Struct(">II").unpack_from
_new = tuple.__new__
#: version 2, type CTL: nfsyncd's extension messages (conntrackd skips them as a wrong
#: version); a receiver that sets :attr:`NetworkStats.extension` gets them whole
_EXTENSION_CTL: Final = 0x20 | _CTL


class Message(NamedTuple):
    """One decoded message.

    ``obj`` is the Flow (types 0-2) or Expectation (3-5) of a data message; ``from_seq`` and
    ``to_seq`` the inclusive range of an ACK or NACK (0, 0 for RESYNC and ALIVE); ``extra``
    holds attributes the model has no place for (see :mod:`.attrs`), usually ``()``.
    ``body`` is what was received: the object, or for most flows from a datagram a
    :class:`~.attrs.LazyFlow` that ``obj`` decodes on each access (the external cache
    stores those without decoding them).
    """

    type: int
    flags: int
    seq: int
    body: Flow | Expectation | LazyFlow | None = None
    from_seq: int = 0
    to_seq: int = 0
    extra: Extra = ()

    @property
    def obj(self) -> Flow | Expectation | None:
        body = self.body
        if type(body) is LazyFlow:
            return body.flow()
        return body  # type: ignore[return-value]

    @property
    def is_data(self) -> bool:
        return self.type <= 5

    @property
    def is_ct(self) -> bool:
        return self.type <= 2

    @property
    def is_exp(self) -> bool:
        return 3 <= self.type <= 5

    @property
    def is_ack(self) -> bool:
        return self.type == _CTL and bool(self.flags & _ACK)

    @property
    def is_nack(self) -> bool:
        return self.type == _CTL and bool(self.flags & _NACK)

    @property
    def is_resync(self) -> bool:
        return self.type == _CTL and bool(self.flags & _RESYNC)

    @property
    def is_alive(self) -> bool:
        return self.type == _CTL and bool(self.flags & _ALIVE)

    @property
    def hello(self) -> bool:
        return bool(self.flags & _HELLO)

    @property
    def hello_back(self) -> bool:
        return bool(self.flags & _HELLO_BACK)

    def encode(self, encoder: Encoder | None = None) -> bytes:
        """This message as bytes again (data messages through ``encoder``, by default one
        for the newest conntrackd)."""
        if self.type == _CTL:
            if self.flags & _RANGE_BITS:
                return _pack_ack(
                    0x10 | _CTL, self.flags, NETHDR_ACK_SIZE, self.seq, self.from_seq, self.to_seq
                )
            return _pack_hdr(0x10 | _CTL, self.flags, NETHDR_SIZE, self.seq)
        enc = encoder or _DEFAULT_ENCODER
        obj = self.obj
        if self.type <= 2 and isinstance(obj, Flow):
            return enc.flow_message(self.type, obj, self.seq, self.flags)
        if 3 <= self.type <= 5 and isinstance(obj, Expectation):
            return enc.expect_message(self.type, obj, self.seq, self.flags)
        raise ValueError(f"message type {self.type} does not carry {type(obj).__name__}")


# --- encoding ------------------------------------------------------------------------------
def data_message(mtype: int, payload: bytes, seq: int, flags: int = 0) -> bytes:
    """A data message around an already built payload (a retransmission rebuilds only the
    header: it needs a new sequence number, §1.11)."""
    if not 0 <= mtype <= 5:
        raise ValueError(f"data message type must be 0-5, not {mtype}")
    if flags & ~_HELLO_BITS:
        raise ValueError(f"data messages carry only HELLO/HELLO_BACK flags, not {flags:#x}")
    try:
        return _pack_hdr(0x10 | mtype, flags, NETHDR_SIZE + len(payload), seq) + payload
    except struct.error as exc:
        raise ValueError(f"message header: {exc} (len {NETHDR_SIZE + len(payload)})") from None


class Encoder(AttrEncoder):
    """Whole data messages for one peer (see :class:`~.attrs.AttrEncoder` for the peer
    version and the options)."""

    __slots__ = ()

    def flow_message(self, mtype: int, flow: Flow, seq: int, flags: int = 0) -> bytes:
        """CT_NEW, CT_UPD or CT_DEL for ``flow``."""
        if not 0 <= mtype <= 2 or flags & ~_HELLO_BITS:
            raise ValueError(f"not a CT message type/flags: {mtype}/{flags:#x}")
        payload = self.flow(flow)
        try:
            return _pack_hdr(0x10 | mtype, flags, 8 + len(payload), seq) + payload
        except struct.error as exc:
            raise ValueError(f"message header: {exc}") from None

    def expect_message(self, mtype: int, exp: Expectation, seq: int, flags: int = 0) -> bytes:
        """EXP_NEW, EXP_UPD or EXP_DEL for ``exp``."""
        if not 3 <= mtype <= 5 or flags & ~_HELLO_BITS:
            raise ValueError(f"not an EXP message type/flags: {mtype}/{flags:#x}")
        payload = self.expect(exp)
        try:
            return _pack_hdr(0x10 | mtype, flags, 8 + len(payload), seq) + payload
        except struct.error as exc:
            raise ValueError(f"message header: {exc}") from None


_DEFAULT_ENCODER: Final = Encoder(LATEST_PEER_VERSION)


def _control(kind: int, seq: int, flags: int, first: int, last: int) -> bytes:
    if flags & ~_HELLO_BITS:
        raise ValueError(f"extra control flags may be HELLO/HELLO_BACK only, not {flags:#x}")
    try:
        if kind == _ALIVE:
            return _pack_hdr(0x10 | _CTL, kind | flags, NETHDR_SIZE, seq)
        return _pack_ack(0x10 | _CTL, kind | flags, NETHDR_ACK_SIZE, seq, first, last)
    except struct.error as exc:
        raise ValueError(f"control message: {exc}") from None


def ack_message(seq: int, first: int, last: int, flags: int = 0) -> bytes:
    """ACK of the inclusive range ``[first, last]``; ``flags`` may add HELLO/HELLO_BACK."""
    return _control(_ACK, seq, flags, first, last)


def nack_message(seq: int, first: int, last: int, flags: int = 0) -> bytes:
    """NACK: the inclusive range ``[first, last]`` is missing, please resend."""
    return _control(_NACK, seq, flags, first, last)


def resync_message(seq: int, flags: int = 0) -> bytes:
    """RESYNC: ask the peer for a full bulk send (from = to = 0)."""
    return _control(_RESYNC, seq, flags, 0, 0)


def alive_message(seq: int, flags: int = 0) -> bytes:
    """ALIVE keepalive (8 bytes)."""
    return _control(_ALIVE, seq, flags, 0, 0)


# --- decoding ------------------------------------------------------------------------------
def _decode_body(buf: bytes, off: int, ln: int) -> Message:
    """One message whose framing (``ln`` fits, >= its minimum) is already checked."""
    b0, flags, _, seq = _unpack_hdr(buf, off)
    if b0 >> 4 != PROTOCOL_VERSION:
        raise WireError(Reason.WRONG_VERSION, f"protocol version {b0 >> 4}, expected 1")
    mtype = b0 & 0x0F
    if mtype <= 5:
        if flags & ~_HELLO_BITS:
            raise WireError(
                Reason.MALFORMED_HEADER, f"data message (type {mtype}) with flags {flags:#x}"
            )
        if mtype <= 2:
            obj: Flow | Expectation
            obj, extra = decode_flow(buf, off + NETHDR_SIZE, off + ln)
        else:
            obj, extra = decode_expect(buf, off + NETHDR_SIZE, off + ln)
        return _new(Message, (mtype, flags, seq, obj, 0, 0, extra))
    if mtype == _CTL:
        if flags & _RANGE_BITS:
            first, last = _RANGE(buf, off + NETHDR_SIZE)
            return _new(Message, (_CTL, flags, seq, None, first, last, ()))
        if flags & _ALIVE:
            return _new(Message, (_CTL, flags, seq, None, 0, 0, ()))
        raise WireError(
            Reason.MALFORMED_HEADER, f"control message without ACK/NACK/RESYNC/ALIVE ({flags:#x})"
        )
    raise WireError(Reason.BAD_TYPE, f"message type {mtype}")


def _frame(buf: bytes, off: int, end: int) -> int:
    """The length of the message at ``off``; raises for conntrackd's framing errors."""
    rem = end - off
    if rem < 4:
        raise WireError(Reason.TRUNCATED, f"{rem} bytes left, too few for a message length")
    ln = (buf[off + 2] << 8) | buf[off + 3]
    if ln == 0:
        raise WireError(Reason.BAD_SIZE, "message length 0")
    if ln > rem:
        raise WireError(Reason.TRUNCATED, f"message length {ln}, {rem} bytes left")
    if buf[off] & 0x0F == _CTL and buf[off + 1] & _RANGE_BITS:
        if ln < NETHDR_ACK_SIZE:
            raise WireError(Reason.BAD_SIZE, f"ACK/NACK/RESYNC of {ln} bytes, need 16")
    elif ln < NETHDR_SIZE:
        raise WireError(Reason.BAD_SIZE, f"message of {ln} bytes, shorter than its header")
    return ln


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    """Exactly one message (``len`` must cover all of ``data``); raises :class:`WireError`
    with the reason a receiver would count.  For tests and tools; receivers use
    :func:`decode_datagram`."""
    buf = data if type(data) is bytes else bytes(data)
    ln = _frame(buf, 0, len(buf))
    if ln != len(buf):
        raise WireError(Reason.BAD_SIZE, f"message length {ln}, but {len(buf)} bytes given")
    return _decode_body(buf, 0, ln)


def _decode_into(
    buf: bytes, stats: NetworkStats, out: list[Message], stream: bool
) -> tuple[int, bool]:
    """Decode messages from ``buf`` into ``out``; returns (bytes consumed, framing broken).

    On a stream a partial trailing message is not an error: it waits for more bytes.
    """
    off = 0
    end = len(buf)
    append = out.append
    while off < end:
        if end - off >= NETHDR_SIZE:
            # The usual case inline: a well-framed data message (version 1, type 0-5, no
            # flags but HELLO bits), what _frame and _decode_body would accept as one.
            b0, flags, ln, seq = _unpack_hdr(buf, off)
            if 0x10 <= b0 <= 0x15 and NETHDR_SIZE <= ln <= end - off and not flags & ~_HELLO_BITS:
                obj: Flow | Expectation | LazyFlow
                try:
                    if b0 <= 0x12:
                        obj, extra = decode_flow_lazy(buf, off + NETHDR_SIZE, off + ln)
                    else:
                        obj, extra = decode_expect(buf, off + NETHDR_SIZE, off + ln)
                    append(_new(Message, (b0 & 0x0F, flags, seq, obj, 0, 0, extra)))
                except WireError as exc:
                    stats.count(exc.reason, exc)
                except Exception as exc:  # a decoder bug must not kill the receiver
                    bug = WireError(Reason.MALFORMED_PAYLOAD, f"internal decoder error {exc!r}")
                    stats.count(Reason.MALFORMED_PAYLOAD, bug)
                off += ln
                continue
        try:
            ln = _frame(buf, off, end)
        except WireError as exc:
            if stream and exc.reason is Reason.TRUNCATED:
                return off, False
            stats.count(exc.reason, exc)
            return end, True
        try:
            append(_decode_body(buf, off, ln))
        except WireError as exc:
            if buf[off] == _EXTENSION_CTL and stats.extension is not None:
                stats.extension(buf[off : off + ln])  # nfsyncd's own, not a wrong version
            else:
                stats.count(exc.reason, exc)
        except Exception as exc:  # a decoder bug must not kill the receiver; tests hunt these
            bug = WireError(Reason.MALFORMED_PAYLOAD, f"internal decoder error {exc!r}")
            stats.count(Reason.MALFORMED_PAYLOAD, bug)
        off += ln
    return off, False


def decode_datagram(data: bytes | bytearray | memoryview, stats: NetworkStats) -> list[Message]:
    """Every valid message of one datagram, in order; the rest is counted in ``stats``.

    Never raises: malformed input only ever shows up in the counters (and
    :attr:`NetworkStats.last_error`).
    """
    buf = data if type(data) is bytes else bytes(data)
    stats.datagrams += 1
    out: list[Message] | None = _SHAPES.decode(buf)
    if out is None:
        out = []
        _decode_into(buf, stats, out, False)
        _SHAPES.learn(buf, out)
    stats.messages += len(out)
    return out


#: shapes of the datagrams of lazy flows seen (a datagram's messages are no stream's)
_SHAPES: Final = DatagramShapes(_CT_LAYOUTS, Message)


class StreamDecoder:
    """Messages from a byte stream (the TCP channel): the same framing, but a message cut
    by a ``recv`` boundary is kept until the rest arrives.  A framing error (zero or too
    small a length) loses the stream's alignment, so everything buffered is dropped and
    counted; the channel should then reconnect (:attr:`broken` tells it)."""

    __slots__ = ("_tail", "broken")

    def __init__(self) -> None:
        self._tail = b""
        self.broken = False

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message waiting for the next read."""
        return len(self._tail)

    def feed(self, data: bytes | bytearray | memoryview, stats: NetworkStats) -> list[Message]:
        buf = self._tail + bytes(data) if self._tail else bytes(data)
        out: list[Message] = []
        consumed, broken = _decode_into(buf, stats, out, True)
        self._tail = b"" if broken else buf[consumed:]
        self.broken = self.broken or broken
        stats.messages += len(out)
        return out

    def reset(self) -> None:
        """Forget buffered bytes (a new connection)."""
        self._tail = b""
        self.broken = False


# --- statistics ----------------------------------------------------------------------------
_REASON_FIELD: Final = {
    Reason.WRONG_VERSION: "wrong_version",
    Reason.MALFORMED_HEADER: "malformed_header",
    Reason.MALFORMED_PAYLOAD: "malformed_payload",
    Reason.BAD_TYPE: "bad_type",
    Reason.TRUNCATED: "truncated",
    Reason.BAD_SIZE: "bad_size",
    Reason.UNKNOWN_ATTRIBUTE: "unknown_attribute",
}


@dataclass(slots=True)
class NetworkStats:
    """Receive-side counters of one channel or peer (conntrackd's ``-s network``).

    One counter per :class:`~.attrs.Reason`; ``unknown_attrs`` says which attribute
    numbers a newer peer sent (``"ct:33"``, ``"exp:21"``), the usual cause of dropped
    messages in a mixed-version pair.  ``lost`` and ``before`` are the sequence tracking
    counters (:class:`SeqTracker`); ``lost`` is the true number of missing messages
    (conntrackd's own counter reads 2 more per gap, §1.11).  ``send_malformed`` is for
    the sender to count objects it could not encode.
    """

    datagrams: int = 0
    messages: int = 0
    wrong_version: int = 0
    malformed_header: int = 0
    malformed_payload: int = 0
    bad_type: int = 0
    truncated: int = 0
    bad_size: int = 0
    unknown_attribute: int = 0
    unknown_attrs: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    before: int = 0
    send_malformed: int = 0
    last_error: str | None = None
    extension: Callable[[bytes], None] | None = field(default=None, repr=False, compare=False)

    def count(self, reason: Reason, error: WireError | None = None) -> None:
        """One dropped message (sync modes call this too, e.g. NOTRACK for an ACK)."""
        name = _REASON_FIELD[reason]
        setattr(self, name, getattr(self, name) + 1)
        if error is not None:
            self.last_error = str(error)
            if reason is Reason.UNKNOWN_ATTRIBUTE and error.attr is not None:
                key = f"{error.kind or '?'}:{error.attr}"
                self.unknown_attrs[key] = self.unknown_attrs.get(key, 0) + 1

    def __getitem__(self, reason: Reason) -> int:
        value: int = getattr(self, _REASON_FIELD[reason])
        return value

    @property
    def malformed(self) -> int:
        """Every dropped message, whatever the reason."""
        return sum(getattr(self, name) for name in _REASON_FIELD.values())

    def conntrackd_view(self, mode: str = "ftfw") -> dict[str, int]:
        """The counters as conntrackd would show them for ``mode``: it has no separate
        unknown-attribute counter (those are "Malformed payload"), and FTFW and NOTRACK
        count bad types as "Malformed header", only ALARM as "Bad message type" (§1.2)."""
        alarm = mode.lower() == "alarm"
        return {
            "Malformed messages": self.malformed,
            "Wrong protocol version": self.wrong_version,
            "Malformed header": self.malformed_header + (0 if alarm else self.bad_type),
            "Malformed payload": self.malformed_payload + self.unknown_attribute,
            "Bad message type": self.bad_type if alarm else 0,
            "Truncated message": self.truncated,
            "Bad message size": self.bad_size,
            "Packets lost": self.lost,
            "Packets before": self.before,
        }


# --- sending: datagrams --------------------------------------------------------------------
_TRANSPORT_OVERHEAD: Final = {"udp": 28, "mcast": 28, "multicast": 28, "tcp": 40}


def channel_payload_size(mtu: int, transport: str = "udp", *, ipv6: bool = False) -> int:
    """Bytes of messages that fit one packet on a link of ``mtu``.

    conntrackd subtracts 28 (IPv4 + UDP) or 40 (IPv4 + TCP) whatever the address family;
    over IPv6 that overshoots by 20 bytes, so ``ipv6`` adds the IPv6 header's extra 20.
    """
    try:
        overhead = _TRANSPORT_OVERHEAD[transport.lower()]
    except KeyError:
        raise ValueError(f"unknown transport {transport!r} (udp, mcast or tcp)") from None
    size = mtu - overhead - (20 if ipv6 else 0)
    if size < NETHDR_ACK_SIZE:
        raise ValueError(f"an MTU of {mtu} leaves no room for a message")
    return size


class Batcher:
    """Packs whole messages into datagrams of at most ``max_size`` bytes.

    :meth:`add` returns a finished datagram when the new message does not fit after what
    is buffered (the new message then starts the next one); :meth:`flush` returns the
    rest.  A message is never split: one larger than ``max_size`` goes out alone.
    conntrackd appends only while ``buffered + len < size`` (strictly less); here the
    datagram may reach ``max_size`` exactly, still one unfragmented packet.
    """

    __slots__ = ("_parts", "_size", "max_size")

    def __init__(self, max_size: int) -> None:
        if max_size < NETHDR_ACK_SIZE:
            raise ValueError(f"a datagram of {max_size} bytes cannot hold a message")
        self.max_size = max_size
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, message: bytes) -> bytes | None:
        size = self._size + len(message)
        if size <= self.max_size or not self._parts:
            self._parts.append(message)
            self._size = size
            return None
        out = b"".join(self._parts)
        self._parts = [message]
        self._size = len(message)
        return out

    def flush(self) -> bytes | None:
        if not self._parts:
            return None
        out = b"".join(self._parts)
        self._parts = []
        self._size = 0
        return out

    @property
    def pending_bytes(self) -> int:
        return self._size

    @property
    def pending_messages(self) -> int:
        return len(self._parts)


def pack_datagrams(messages: Iterable[bytes], max_size: int) -> list[bytes]:
    """All of ``messages`` as datagrams (a :class:`Batcher` run to the end)."""
    batcher = Batcher(max_size)
    out = [d for d in map(batcher.add, messages) if d is not None]
    last = batcher.flush()
    if last is not None:
        out.append(last)
    return out


# --- sequence numbers (§1.11) --------------------------------------------------------------
SEQ_MASK: Final = 0xFFFF_FFFF


def seq_before(a: int, b: int) -> bool:
    """``a`` comes before ``b`` in 32-bit serial arithmetic (``(int32)(a - b) < 0``)."""
    return ((a - b) & SEQ_MASK) > 0x7FFF_FFFF


def seq_after(a: int, b: int) -> bool:
    return ((b - a) & SEQ_MASK) > 0x7FFF_FFFF


def seq_add(seq: int, n: int = 1) -> int:
    return (seq + n) & SEQ_MASK


class SeqCounter:
    """The sender's sequence: starts at ``time()`` (as conntrackd does) and moves by one
    for every message transmitted, control messages included."""

    __slots__ = ("next_seq",)

    def __init__(self, start: int | None = None) -> None:
        self.next_seq = (int(time.time()) if start is None else start) & SEQ_MASK

    def take(self) -> int:
        seq = self.next_seq
        self.next_seq = (seq + 1) & SEQ_MASK
        return seq


class SeqVerdict(enum.Enum):
    UNSET = "unset"  # nothing received yet
    IN_SYNC = "in_sync"  # the expected next one
    AFTER = "after"  # a gap: messages were lost
    BEFORE = "before"  # old or duplicate


class SeqTracker:
    """The receiver's view of a peer's sequence (conntrackd's ``nethdr_track_seq``).

    :meth:`check` classifies a sequence number and counts lost/before in ``stats``;
    updating :attr:`last` is the sync mode's decision (:meth:`update`): FTFW and NOTRACK
    do, ALARM never does, and FTFW drops BEFORE messages without updating.
    """

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: int | None = None

    @property
    def expected(self) -> int | None:
        return None if self.last is None else (self.last + 1) & SEQ_MASK

    def check(self, seq: int, stats: NetworkStats | None = None) -> SeqVerdict:
        last = self.last
        if last is None:
            return SeqVerdict.UNSET
        expected = (last + 1) & SEQ_MASK
        if seq == expected:
            return SeqVerdict.IN_SYNC
        if ((seq - expected) & SEQ_MASK) <= 0x7FFF_FFFF:  # after(seq, expected)
            if stats is not None:
                stats.lost += (seq - expected) & SEQ_MASK
            return SeqVerdict.AFTER
        if stats is not None:
            stats.before += 1
        return SeqVerdict.BEFORE

    def update(self, seq: int) -> None:
        self.last = seq & SEQ_MASK

    def reset(self) -> None:
        self.last = None
