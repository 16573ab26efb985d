"""Value types shared by the whole daemon: flows, expectations and their parts.

They are ``NamedTuple`` rather than dataclasses on purpose: every kernel event builds one
``Flow`` and two ``Tuple`` objects, and the cache hashes tuples on every lookup, so
construction and hashing sit on the hot path.  Tuples give both at C speed, are
immutable and carry no per-instance ``__dict__`` (memory matters at 100k+ flows).

Addresses are kept as packed network-order ``bytes`` (4 or 16 long): that is what both the
kernel and the sync wire format carry, so no conversion happens unless a human reads them.
``None`` means "the kernel did not say" and is distinct from zero, so a decoded message
re-encodes to the same attributes.
"""

from __future__ import annotations

import enum
import socket
from typing import NamedTuple

__all__ = [
    "Counters",
    "DccpInfo",
    "EventKind",
    "ExpectNat",
    "Expectation",
    "Flow",
    "ProtoInfo",
    "SctpInfo",
    "SeqAdj",
    "Status",
    "Synproxy",
    "TcpInfo",
    "Timestamp",
    "Tuple",
    "format_addr",
]

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_DCCP = 33
IPPROTO_GRE = 47
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132
IPPROTO_UDPLITE = 136

PROTO_NAMES = {
    IPPROTO_ICMP: "icmp",
    IPPROTO_TCP: "tcp",
    IPPROTO_UDP: "udp",
    IPPROTO_DCCP: "dccp",
    IPPROTO_GRE: "gre",
    IPPROTO_ICMPV6: "icmpv6",
    IPPROTO_SCTP: "sctp",
    IPPROTO_UDPLITE: "udplite",
}


class Status(enum.IntFlag):
    """``IPS_*`` conntrack status bits (include/uapi/linux/netfilter/nf_conntrack_common.h)."""

    EXPECTED = 1 << 0
    SEEN_REPLY = 1 << 1
    ASSURED = 1 << 2
    CONFIRMED = 1 << 3
    SRC_NAT = 1 << 4
    DST_NAT = 1 << 5
    SEQ_ADJUST = 1 << 6
    SRC_NAT_DONE = 1 << 7
    DST_NAT_DONE = 1 << 8
    DYING = 1 << 9
    FIXED_TIMEOUT = 1 << 10
    TEMPLATE = 1 << 11
    UNTRACKED = 1 << 12
    HELPER = 1 << 13
    OFFLOAD = 1 << 14
    HW_OFFLOAD = 1 << 15


class EventKind(enum.IntEnum):
    """What happened to a flow or expectation, as the kernel reports it."""

    NEW = 1
    UPDATE = 2
    DESTROY = 3


def format_addr(addr: bytes) -> str:
    """Human form of a packed address (only for output, never on the hot path)."""
    if len(addr) == 4:
        return socket.inet_ntop(socket.AF_INET, addr)
    if len(addr) == 16:
        return socket.inet_ntop(socket.AF_INET6, addr)
    return addr.hex()


class Tuple(NamedTuple):
    """One direction of a connection: what the kernel hashes a conntrack entry by.

    ``sport``/``dport`` also carry the GRE keys (the kernel reuses the port attributes for
    them). ``zone`` is the per-tuple zone (``CTA_TUPLE_ZONE``), rarely used; the flow-wide
    zone lives on :class:`Flow`.
    """

    src: bytes
    dst: bytes
    proto: int
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    zone: int | None = None

    @property
    def family(self) -> int:
        return socket.AF_INET if len(self.src) == 4 else socket.AF_INET6

    def inverted(self) -> Tuple:
        """The tuple of the opposite direction when no NAT applies."""
        icmp_type = self.icmp_type
        if icmp_type is not None:
            icmp_type = _ICMP_REPLY_TYPE.get((self.proto, icmp_type), icmp_type)
        return Tuple(
            self.dst,
            self.src,
            self.proto,
            self.dport,
            self.sport,
            icmp_type,
            self.icmp_code,
            self.icmp_id,
            self.zone,
        )

    def describe(self) -> str:
        parts = [f"src={format_addr(self.src)}", f"dst={format_addr(self.dst)}"]
        if self.sport is not None:
            parts.append(f"sport={self.sport}")
        if self.dport is not None:
            parts.append(f"dport={self.dport}")
        if self.icmp_type is not None:
            parts.append(f"type={self.icmp_type} code={self.icmp_code} id={self.icmp_id}")
        if self.zone is not None:
            parts.append(f"zone={self.zone}")
        return " ".join(parts)


# echo request -> echo reply, for ICMP and ICMPv6 (what the kernel's invert_tuple does)
_ICMP_REPLY_TYPE = {
    (IPPROTO_ICMP, 8): 0,
    (IPPROTO_ICMP, 0): 8,
    (IPPROTO_ICMP, 13): 14,
    (IPPROTO_ICMP, 14): 13,
    (IPPROTO_ICMP, 15): 16,
    (IPPROTO_ICMP, 16): 15,
    (IPPROTO_ICMP, 17): 18,
    (IPPROTO_ICMP, 18): 17,
    (IPPROTO_ICMPV6, 128): 129,
    (IPPROTO_ICMPV6, 129): 128,
}


class TcpFlags(NamedTuple):
    flags: int
    mask: int


class TcpInfo(NamedTuple):
    state: int | None = None
    wscale_orig: int | None = None
    wscale_reply: int | None = None
    flags_orig: TcpFlags | None = None
    flags_reply: TcpFlags | None = None


class SctpInfo(NamedTuple):
    state: int | None = None
    vtag_orig: int | None = None
    vtag_reply: int | None = None


class DccpInfo(NamedTuple):
    state: int | None = None
    role: int | None = None
    handshake_seq: int | None = None


ProtoInfo = TcpInfo | SctpInfo | DccpInfo


class SeqAdj(NamedTuple):
    """TCP sequence adjustment of one direction, made by a helper that rewrote payload."""

    correction_pos: int
    offset_before: int
    offset_after: int


class Synproxy(NamedTuple):
    isn: int
    its: int
    tsoff: int


class Counters(NamedTuple):
    packets: int
    bytes: int


class Timestamp(NamedTuple):
    start: int | None = None
    stop: int | None = None


class Flow(NamedTuple):
    """A conntrack entry as the kernel reports it (or as we ask the kernel to create it).

    The reply tuple encodes NAT: a source NAT shows as ``reply.dst != orig.src``.
    """

    orig: Tuple
    reply: Tuple | None = None
    status: int | None = None
    timeout: int | None = None
    mark: int | None = None
    zone: int | None = None
    labels: bytes | None = None
    helper: str | None = None
    protoinfo: ProtoInfo | None = None
    master: Tuple | None = None
    seqadj_orig: SeqAdj | None = None
    seqadj_reply: SeqAdj | None = None
    synproxy: Synproxy | None = None
    secmark: int | None = None
    id: int | None = None
    use: int | None = None
    counters_orig: Counters | None = None
    counters_reply: Counters | None = None
    timestamp: Timestamp | None = None
    timestamp_event: int | None = None

    def describe(self) -> str:
        """One line, close to conntrack(8) ``-L`` output, for logs and the demo."""
        proto = PROTO_NAMES.get(self.orig.proto, str(self.orig.proto))
        parts = [proto, str(self.orig.proto)]
        if self.timeout is not None:
            parts.append(str(self.timeout))
        if isinstance(self.protoinfo, TcpInfo) and self.protoinfo.state is not None:
            parts.append(TCP_STATE_NAMES.get(self.protoinfo.state, str(self.protoinfo.state)))
        parts.append(self.orig.describe())
        if self.reply is not None:
            parts.append(self.reply.describe())
        if self.status is not None:
            flags = [b.name for b in Status if self.status & b and b.name in _SHOWN_STATUS]
            parts.extend(f"[{f}]" for f in flags)
        if self.mark:
            parts.append(f"mark={self.mark}")
        if self.zone is not None:
            parts.append(f"zone={self.zone}")
        if self.helper is not None:
            parts.append(f"helper={self.helper}")
        return " ".join(parts)


_SHOWN_STATUS = {"ASSURED", "SEEN_REPLY", "EXPECTED"}

TCP_STATE_NAMES = {
    0: "NONE",
    1: "SYN_SENT",
    2: "SYN_RECV",
    3: "ESTABLISHED",
    4: "FIN_WAIT",
    5: "CLOSE_WAIT",
    6: "LAST_ACK",
    7: "TIME_WAIT",
    8: "CLOSE",
    9: "SYN_SENT2",
}


class ExpectNat(NamedTuple):
    """Where the expected connection must be NATed to (``CTA_EXPECT_NAT``)."""

    dir: int
    tuple: Tuple


class Expectation(NamedTuple):
    """A conntrack expectation: a related connection a helper announced in advance."""

    master: Tuple
    tuple: Tuple
    mask: Tuple
    timeout: int | None = None
    id: int | None = None
    helper: str | None = None
    zone: int | None = None
    flags: int | None = None
    klass: int | None = None
    nat: ExpectNat | None = None
    fn: str | None = None

    def describe(self) -> str:
        proto = PROTO_NAMES.get(self.tuple.proto, str(self.tuple.proto))
        parts = []
        if self.timeout is not None:
            parts.append(str(self.timeout))
        parts += ["proto=" + str(self.tuple.proto), proto, self.tuple.describe()]
        parts.append("master: " + self.master.describe())
        if self.helper is not None:
            parts.append(f"helper={self.helper}")
        return " ".join(parts)
