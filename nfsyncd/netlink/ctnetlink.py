"""ctnetlink: the kernel's conntrack and expectation messages, as tables.

The attribute numbers come from ``include/uapi/linux/netfilter/nfnetlink_conntrack.h``.
Each nesting level is one :class:`~nfsyncd.netlink._attrs.Schema`; flows and expectations
decode to the value types of :mod:`nfsyncd.model` and encode back from them.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Final

from ..model import (
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    Counters,
    DccpInfo,
    EventKind,
    Expectation,
    ExpectNat,
    Flow,
    SctpInfo,
    SeqAdj,
    Status,
    Synproxy,
    TcpFlags,
    TcpInfo,
    Timestamp,
    Tuple,
)
from ._attrs import (
    BE16,
    BE32,
    BE64,
    U8,
    Codec,
    DecodeError,
    Field,
    Schema,
    attr,
    raw_bytes,
    string,
)
from ._socket import NLM_F_CREATE, NLM_F_EXCL, Message, Request

# --- nfnetlink framing -----------------------------------------------------------------
NFNL_SUBSYS_CTNETLINK: Final = 1
NFNL_SUBSYS_CTNETLINK_EXP: Final = 2
NFNETLINK_V0: Final = 0
#: nfgenmsg version that makes the kernel honour the family of a flush (see flow_flush)
NFNETLINK_V1: Final = 1

IPCTNL_MSG_CT_NEW: Final = 0
IPCTNL_MSG_CT_GET: Final = 1
IPCTNL_MSG_CT_DELETE: Final = 2
IPCTNL_MSG_CT_GET_CTRZERO: Final = 3
IPCTNL_MSG_CT_GET_STATS_CPU: Final = 4
IPCTNL_MSG_CT_GET_STATS: Final = 5

IPCTNL_MSG_EXP_NEW: Final = 0
IPCTNL_MSG_EXP_GET: Final = 1
IPCTNL_MSG_EXP_DELETE: Final = 2
IPCTNL_MSG_EXP_GET_STATS_CPU: Final = 3

# multicast groups (NFNLGRP_*)
GROUP_CT_NEW: Final = 1
GROUP_CT_UPDATE: Final = 2
GROUP_CT_DESTROY: Final = 3
GROUP_EXP_NEW: Final = 4
GROUP_EXP_UPDATE: Final = 5
GROUP_EXP_DESTROY: Final = 6

CT_NEW: Final = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
CT_GET: Final = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
CT_DELETE: Final = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
CT_GET_STATS: Final = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET_STATS
CT_GET_STATS_CPU: Final = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET_STATS_CPU
EXP_NEW: Final = (NFNL_SUBSYS_CTNETLINK_EXP << 8) | IPCTNL_MSG_EXP_NEW
EXP_GET: Final = (NFNL_SUBSYS_CTNETLINK_EXP << 8) | IPCTNL_MSG_EXP_GET
EXP_DELETE: Final = (NFNL_SUBSYS_CTNETLINK_EXP << 8) | IPCTNL_MSG_EXP_DELETE
EXP_GET_STATS_CPU: Final = (NFNL_SUBSYS_CTNETLINK_EXP << 8) | IPCTNL_MSG_EXP_GET_STATS_CPU

_NFGENMSG = struct.Struct("=BBH")

# --- attribute numbers -----------------------------------------------------------------
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO, CTA_HELP = 1, 2, 3, 4, 5
CTA_NAT_SRC, CTA_TIMEOUT, CTA_MARK, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY = 6, 7, 8, 9, 10
CTA_USE, CTA_ID, CTA_NAT_DST, CTA_TUPLE_MASTER = 11, 12, 13, 14
CTA_SEQ_ADJ_ORIG, CTA_SEQ_ADJ_REPLY, CTA_SECMARK, CTA_ZONE, CTA_SECCTX = 15, 16, 17, 18, 19
CTA_TIMESTAMP, CTA_MARK_MASK, CTA_LABELS, CTA_LABELS_MASK, CTA_SYNPROXY = 20, 21, 22, 23, 24
CTA_FILTER, CTA_STATUS_MASK, CTA_TIMESTAMP_EVENT = 25, 26, 27

CTA_TUPLE_IP, CTA_TUPLE_PROTO, CTA_TUPLE_ZONE = 1, 2, 3
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE = 4, 5, 6
CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE = 7, 8, 9
CTA_PROTOINFO_TCP, CTA_PROTOINFO_DCCP, CTA_PROTOINFO_SCTP = 1, 2, 3
CTA_HELP_NAME = 1
CTA_NAT_V4_MINIP, CTA_NAT_V4_MAXIP, CTA_NAT_PROTO, CTA_NAT_V6_MINIP, CTA_NAT_V6_MAXIP = (
    1,
    2,
    3,
    4,
    5,
)
CTA_PROTONAT_PORT_MIN, CTA_PROTONAT_PORT_MAX = 1, 2
CTA_STATS_GLOBAL_ENTRIES, CTA_STATS_GLOBAL_MAX_ENTRIES = 1, 2

CTA_EXPECT_MASTER, CTA_EXPECT_TUPLE, CTA_EXPECT_MASK, CTA_EXPECT_TIMEOUT = 1, 2, 3, 4
CTA_EXPECT_ID, CTA_EXPECT_HELP_NAME, CTA_EXPECT_ZONE, CTA_EXPECT_FLAGS = 5, 6, 7, 8
CTA_EXPECT_CLASS, CTA_EXPECT_NAT, CTA_EXPECT_FN = 9, 10, 11
CTA_EXPECT_NAT_DIR, CTA_EXPECT_NAT_TUPLE = 1, 2

# per-CPU statistics, in attribute order (CTA_STATS_SEARCHED = 1 ...)
CT_CPU_STATS: Final = (
    "searched",
    "found",
    "new",
    "invalid",
    "ignore",
    "delete",
    "delete_list",
    "insert",
    "insert_failed",
    "drop",
    "early_drop",
    "error",
    "search_restart",
    "clash_resolve",
    "chain_toolong",
)
EXP_CPU_STATS: Final = ("new", "create", "delete")

# --- tables ----------------------------------------------------------------------------
IP4 = raw_bytes(4)
IP6 = raw_bytes(16)


def _v4(t: Any) -> bool:
    return len(t.src) == 4


def _v6(t: Any) -> bool:
    return len(t.src) == 16


def _not_icmpv6(t: Any) -> bool:
    return bool(t.proto != IPPROTO_ICMPV6)


def _icmpv6(t: Any) -> bool:
    return bool(t.proto == IPPROTO_ICMPV6)


_IP = Schema(
    "CTA_TUPLE_IP",
    [
        Field(CTA_IP_V4_SRC, "CTA_IP_V4_SRC", "src", IP4, when=_v4),
        Field(CTA_IP_V4_DST, "CTA_IP_V4_DST", "dst", IP4, when=_v4),
        Field(CTA_IP_V6_SRC, "CTA_IP_V6_SRC", "src", IP6, when=_v6),
        Field(CTA_IP_V6_DST, "CTA_IP_V6_DST", "dst", IP6, when=_v6),
    ],
)

_PROTO = Schema(
    "CTA_TUPLE_PROTO",
    [
        Field(CTA_PROTO_NUM, "CTA_PROTO_NUM", "proto", U8),
        Field(CTA_PROTO_SRC_PORT, "CTA_PROTO_SRC_PORT", "sport", BE16),
        Field(CTA_PROTO_DST_PORT, "CTA_PROTO_DST_PORT", "dport", BE16),
        Field(CTA_PROTO_ICMP_ID, "CTA_PROTO_ICMP_ID", "icmp_id", BE16, when=_not_icmpv6),
        Field(CTA_PROTO_ICMP_TYPE, "CTA_PROTO_ICMP_TYPE", "icmp_type", U8, when=_not_icmpv6),
        Field(CTA_PROTO_ICMP_CODE, "CTA_PROTO_ICMP_CODE", "icmp_code", U8, when=_not_icmpv6),
        Field(CTA_PROTO_ICMPV6_ID, "CTA_PROTO_ICMPV6_ID", "icmp_id", BE16, when=_icmpv6),
        Field(CTA_PROTO_ICMPV6_TYPE, "CTA_PROTO_ICMPV6_TYPE", "icmp_type", U8, when=_icmpv6),
        Field(CTA_PROTO_ICMPV6_CODE, "CTA_PROTO_ICMPV6_CODE", "icmp_code", U8, when=_icmpv6),
    ],
)

TUPLE = Schema(
    "tuple",
    [
        Field(CTA_TUPLE_IP, "CTA_TUPLE_IP", "", schema=_IP, inline=True),
        Field(CTA_TUPLE_PROTO, "CTA_TUPLE_PROTO", "", schema=_PROTO, inline=True),
        Field(CTA_TUPLE_ZONE, "CTA_TUPLE_ZONE", "zone", BE16),
    ],
    Tuple,
)


class _CanonicalTuple:
    """Fast paths for the layout the kernel always uses for a tuple with ports.

    One ``unpack`` reads (one ``pack`` writes) the whole tuple.  The attribute headers are
    taken from what the table itself encodes for such a tuple, and a decoded tuple whose
    headers differ returns ``None`` so the table decodes it: the tables stay the truth.
    """

    def __init__(self, address_size: int) -> None:
        addr = f"{address_size}s"
        self.layout = struct.Struct(f">8s{addr}4s{addr}8sB3x4sH2x4sH2x")
        zero = b"\0" * address_size
        sample = TUPLE.encode(Tuple(zero, zero, IPPROTO_TCP, 0, 0))
        if len(sample) != self.layout.size:
            raise AssertionError("canonical tuple layout does not match the table")
        u = self.layout.unpack(sample)
        self.headers = (u[0], u[2], u[4], u[6], u[8])
        self.size = self.layout.size
        self.address_size = address_size

    def decode(self, buf: bytes, start: int) -> Tuple | None:
        h0, src, h1, dst, h2, proto, h3, sport, h4, dport = self.layout.unpack_from(buf, start)
        if (h0, h1, h2, h3, h4) != self.headers:
            return None
        return tuple.__new__(Tuple, (src, dst, proto, sport, dport, None, None, None, None))

    def encode(self, t: Tuple) -> bytes | None:
        h0, h1, h2, h3, h4 = self.headers
        try:
            return self.layout.pack(h0, t.src, h1, t.dst, h2, t.proto, h3, t.sport, h4, t.dport)
        except struct.error:
            return None  # a value out of range: the table reports it with its attribute path


def _tuple_fast_decode(buf: bytes, start: int, end: int) -> Tuple | None:
    canon = _CANONICAL.get(end - start)
    return None if canon is None else canon.decode(buf, start)


def _tuple_fast_encode(t: Tuple) -> bytes | None:
    if (
        t.sport is None
        or t.dport is None
        or t.icmp_type is not None
        or t.icmp_code is not None
        or t.icmp_id is not None
        or t.zone is not None
    ):
        return None
    canon = _CANONICAL_BY_ADDR.get(len(t.src))
    if canon is None or len(t.dst) != canon.address_size:
        return None
    return canon.encode(t)


_CANONICAL_BY_ADDR = {size: _CanonicalTuple(size) for size in (4, 16)}
_CANONICAL = {c.size: c for c in _CANONICAL_BY_ADDR.values()}
TUPLE.fast_decode = _tuple_fast_decode
TUPLE.fast_encode = _tuple_fast_encode


def _tcp_flags_codec() -> Codec[TcpFlags]:
    st = struct.Struct("BB")

    def decode(buf: bytes, start: int, end: int) -> TcpFlags:
        if end - start != 2:
            raise DecodeError("", f"expected 2 bytes (flags, mask), got {end - start}")
        return TcpFlags(*st.unpack_from(buf, start))

    return Codec("tcp_flags", decode, lambda v: st.pack(v.flags, v.mask), parts=("BB", TcpFlags))


_TCP_FLAGS = _tcp_flags_codec()

_PROTOINFO_TCP = Schema(
    "CTA_PROTOINFO_TCP",
    [
        Field(1, "CTA_PROTOINFO_TCP_STATE", "state", U8),
        Field(2, "CTA_PROTOINFO_TCP_WSCALE_ORIGINAL", "wscale_orig", U8),
        Field(3, "CTA_PROTOINFO_TCP_WSCALE_REPLY", "wscale_reply", U8),
        Field(4, "CTA_PROTOINFO_TCP_FLAGS_ORIGINAL", "flags_orig", _TCP_FLAGS),
        Field(5, "CTA_PROTOINFO_TCP_FLAGS_REPLY", "flags_reply", _TCP_FLAGS),
    ],
    TcpInfo,
)
_PROTOINFO_DCCP = Schema(
    "CTA_PROTOINFO_DCCP",
    [
        Field(1, "CTA_PROTOINFO_DCCP_STATE", "state", U8),
        Field(2, "CTA_PROTOINFO_DCCP_ROLE", "role", U8),
        Field(3, "CTA_PROTOINFO_DCCP_HANDSHAKE_SEQ", "handshake_seq", BE64),
    ],
    DccpInfo,
)
_PROTOINFO_SCTP = Schema(
    "CTA_PROTOINFO_SCTP",
    [
        Field(1, "CTA_PROTOINFO_SCTP_STATE", "state", U8),
        Field(2, "CTA_PROTOINFO_SCTP_VTAG_ORIGINAL", "vtag_orig", BE32),
        Field(3, "CTA_PROTOINFO_SCTP_VTAG_REPLY", "vtag_reply", BE32),
    ],
    SctpInfo,
)


def _protoinfo_row(atype: int, name: str, schema: Schema, kind: type) -> Field:
    """One of the alternative nests of ``CTA_PROTOINFO``, chosen by the protoinfo's type."""
    return Field(atype, name, "protoinfo", schema=schema,
                 when=lambda f: isinstance(f.protoinfo, kind))  # fmt: skip


_PROTOINFO = Schema(
    "CTA_PROTOINFO",
    [
        _protoinfo_row(CTA_PROTOINFO_TCP, "CTA_PROTOINFO_TCP", _PROTOINFO_TCP, TcpInfo),
        _protoinfo_row(CTA_PROTOINFO_DCCP, "CTA_PROTOINFO_DCCP", _PROTOINFO_DCCP, DccpInfo),
        _protoinfo_row(CTA_PROTOINFO_SCTP, "CTA_PROTOINFO_SCTP", _PROTOINFO_SCTP, SctpInfo),
    ],
)


_HELP = Schema("CTA_HELP", [Field(CTA_HELP_NAME, "CTA_HELP_NAME", "helper", string(16))])


_COUNTERS = Schema(
    "counters",
    [
        Field(1, "CTA_COUNTERS_PACKETS", "packets", BE64),
        Field(2, "CTA_COUNTERS_BYTES", "bytes", BE64),
    ],
    Counters,
)
_TIMESTAMP = Schema(
    "CTA_TIMESTAMP",
    [Field(1, "CTA_TIMESTAMP_START", "start", BE64), Field(2, "CTA_TIMESTAMP_STOP", "stop", BE64)],
    Timestamp,
)
_SEQADJ = Schema(
    "seq_adj",
    [
        Field(1, "CTA_SEQADJ_CORRECTION_POS", "correction_pos", BE32),
        Field(2, "CTA_SEQADJ_OFFSET_BEFORE", "offset_before", BE32),
        Field(3, "CTA_SEQADJ_OFFSET_AFTER", "offset_after", BE32),
    ],
    SeqAdj,
)
_SYNPROXY = Schema(
    "CTA_SYNPROXY",
    [
        Field(1, "CTA_SYNPROXY_ISN", "isn", BE32),
        Field(2, "CTA_SYNPROXY_ITS", "its", BE32),
        Field(3, "CTA_SYNPROXY_TSOFF", "tsoff", BE32),
    ],
    Synproxy,
)

FLOW = Schema(
    "flow",
    [
        Field(CTA_TUPLE_ORIG, "CTA_TUPLE_ORIG", "orig", schema=TUPLE),
        Field(CTA_TUPLE_REPLY, "CTA_TUPLE_REPLY", "reply", schema=TUPLE),
        Field(CTA_STATUS, "CTA_STATUS", "status", BE32),
        Field(CTA_PROTOINFO, "CTA_PROTOINFO", "", schema=_PROTOINFO, inline=True),
        Field(CTA_HELP, "CTA_HELP", "", schema=_HELP, inline=True),
        Field(CTA_TIMEOUT, "CTA_TIMEOUT", "timeout", BE32),
        Field(CTA_MARK, "CTA_MARK", "mark", BE32),
        Field(
            CTA_COUNTERS_ORIG, "CTA_COUNTERS_ORIG", "counters_orig", schema=_COUNTERS, readonly=True
        ),
        Field(
            CTA_COUNTERS_REPLY,
            "CTA_COUNTERS_REPLY",
            "counters_reply",
            schema=_COUNTERS,
            readonly=True,
        ),
        Field(CTA_USE, "CTA_USE", "use", BE32, readonly=True),
        Field(CTA_ID, "CTA_ID", "id", BE32, readonly=True),
        Field(CTA_TUPLE_MASTER, "CTA_TUPLE_MASTER", "master", schema=TUPLE),
        Field(CTA_SEQ_ADJ_ORIG, "CTA_SEQ_ADJ_ORIG", "seqadj_orig", schema=_SEQADJ),
        Field(CTA_SEQ_ADJ_REPLY, "CTA_SEQ_ADJ_REPLY", "seqadj_reply", schema=_SEQADJ),
        Field(CTA_SECMARK, "CTA_SECMARK", "secmark", BE32, readonly=True),
        Field(CTA_ZONE, "CTA_ZONE", "zone", BE16),
        Field(CTA_TIMESTAMP, "CTA_TIMESTAMP", "timestamp", schema=_TIMESTAMP, readonly=True),
        Field(CTA_LABELS, "CTA_LABELS", "labels", raw_bytes()),
        Field(CTA_SYNPROXY, "CTA_SYNPROXY", "synproxy", schema=_SYNPROXY),
        Field(CTA_TIMESTAMP_EVENT, "CTA_TIMESTAMP_EVENT", "timestamp_event", BE64, readonly=True),
    ],
    Flow,
)

# flow events and dump entries come in a few layouts by the hundred thousand
FLOW.learn_layouts = True

_EXPECT_NAT = Schema(
    "CTA_EXPECT_NAT",
    [
        Field(CTA_EXPECT_NAT_DIR, "CTA_EXPECT_NAT_DIR", "dir", BE32),
        Field(CTA_EXPECT_NAT_TUPLE, "CTA_EXPECT_NAT_TUPLE", "tuple", schema=TUPLE),
    ],
    ExpectNat,
)

EXPECT = Schema(
    "expectation",
    [
        Field(CTA_EXPECT_MASTER, "CTA_EXPECT_MASTER", "master", schema=TUPLE),
        Field(CTA_EXPECT_TUPLE, "CTA_EXPECT_TUPLE", "tuple", schema=TUPLE),
        Field(CTA_EXPECT_MASK, "CTA_EXPECT_MASK", "mask", schema=TUPLE),
        Field(CTA_EXPECT_TIMEOUT, "CTA_EXPECT_TIMEOUT", "timeout", BE32),
        Field(CTA_EXPECT_ID, "CTA_EXPECT_ID", "id", BE32, readonly=True),
        Field(CTA_EXPECT_HELP_NAME, "CTA_EXPECT_HELP_NAME", "helper", string(16)),
        Field(CTA_EXPECT_ZONE, "CTA_EXPECT_ZONE", "zone", BE16),
        Field(CTA_EXPECT_FLAGS, "CTA_EXPECT_FLAGS", "flags", BE32),
        Field(CTA_EXPECT_CLASS, "CTA_EXPECT_CLASS", "klass", BE32),
        Field(CTA_EXPECT_NAT, "CTA_EXPECT_NAT", "nat", schema=_EXPECT_NAT),
        Field(CTA_EXPECT_FN, "CTA_EXPECT_FN", "fn", string(32)),
    ],
    Expectation,
)


# --- messages --------------------------------------------------------------------------
def nfgenmsg(family: int = socket.AF_UNSPEC, res_id: int = 0, version: int = NFNETLINK_V0) -> bytes:
    return _NFGENMSG.pack(family, version, socket.htons(res_id))


_NFGEN_BY_ADDR_LEN: Final = {4: nfgenmsg(socket.AF_INET), 16: nfgenmsg(socket.AF_INET6)}


def decode_flow(data: bytes, start: int = 0, end: int | None = None) -> Flow:
    """A flow from a ctnetlink message payload (nfgenmsg + attributes)."""
    end = len(data) if end is None else end
    if end - start < 4:
        raise DecodeError("nfgenmsg", f"payload of {end - start} bytes has no nfgenmsg")
    flow: Flow = FLOW.decode(data, start + 4, end)
    return flow


def decode_expect(data: bytes, start: int = 0, end: int | None = None) -> Expectation:
    end = len(data) if end is None else end
    if end - start < 4:
        raise DecodeError("nfgenmsg", f"payload of {end - start} bytes has no nfgenmsg")
    exp: Expectation = EXPECT.decode(data, start + 4, end)
    return exp


def nat_attrs(flow: Flow) -> bytes:
    """``CTA_NAT_SRC``/``CTA_NAT_DST`` derived from the tuples, for a create.

    The kernel does not take NAT from the reply tuple alone: NAT status bits are not
    settable, so the mapping must be requested the way a NAT rule would make it. A source
    NAT shows as the reply tuple's destination differing from the original source.
    """
    orig, reply = flow.orig, flow.reply
    if reply is None:
        return b""
    out = b""
    v6 = len(orig.src) == 16
    for atype, addr, port, same_addr, same_port in (
        (CTA_NAT_SRC, reply.dst, reply.dport, orig.src, orig.sport),
        (CTA_NAT_DST, reply.src, reply.sport, orig.dst, orig.dport),
    ):
        if addr == same_addr and port == same_port:
            continue
        if v6:
            body = attr(CTA_NAT_V6_MINIP, addr) + attr(CTA_NAT_V6_MAXIP, addr)
        else:
            body = attr(CTA_NAT_V4_MINIP, addr) + attr(CTA_NAT_V4_MAXIP, addr)
        if port is not None and port != same_port:
            pb = BE16.encode(port)
            body += attr(
                CTA_NAT_PROTO | 0x8000,
                attr(CTA_PROTONAT_PORT_MIN, pb) + attr(CTA_PROTONAT_PORT_MAX, pb),
            )
        out += attr(atype | 0x8000, body)
    return out


def flow_create(flow: Flow, *, exclusive: bool = True) -> Request:
    """A create request.

    The kernel needs both tuples, a timeout and, with a status, the CONFIRMED bit (EBUSY
    otherwise).  NAT is requested with ``CTA_NAT_*`` (see :func:`nat_attrs`), and the reply
    tuple sent is the un-NATed inverse: the kernel's NAT setup derives the translated one
    and sets the NAT status bits only when it changes the reply tuple itself.
    """
    if flow.timeout is None:
        raise ValueError("CTA_TIMEOUT: the kernel requires a timeout to create a flow")
    nat = nat_attrs(flow)
    status = create_status(flow.status)
    orig = flow.orig
    header = _NFGEN_BY_ADDR_LEN.get(len(orig.src))
    if header is None:  # the source address decides the family
        raise ValueError(
            f"CTA_TUPLE_ORIG: the source address must be 4 (IPv4) or 16 (IPv6) bytes, "
            f"got {len(orig.src)}"
        )
    sent = tuple.__new__(Flow, (orig, orig.inverted(), status, *flow[3:]))
    payload = header + FLOW.encode(sent) + nat
    flags = NLM_F_CREATE | (NLM_F_EXCL if exclusive else 0)
    return Request(CT_NEW, flags, payload)


# plain ints: IntFlag arithmetic costs microseconds per operation on the create path
_CONFIRMED: Final = int(Status.CONFIRMED)
_SETTABLE_STATUS: Final = int(
    Status.SEEN_REPLY
    | Status.ASSURED
    | Status.CONFIRMED
    | Status.SEQ_ADJUST
    | Status.FIXED_TIMEOUT
    | Status.HELPER
)


def create_status(status: int | None) -> int | None:
    """The status a create or update may carry: CONFIRMED set (EBUSY otherwise), the bits
    the kernel owns (NAT done, EXPECTED, DYING...) cleared."""
    return None if status is None else (status | _CONFIRMED) & _SETTABLE_STATUS


def flow_update(flow: Flow) -> Request:
    """Change a live flow's timeout, mark, status, labels or protoinfo.

    Only the original tuple identifies the flow; tuples, helper and NAT cannot change.
    """
    status = create_status(flow.status)
    ident = flow._replace(reply=None, status=status, helper=None, master=None)
    return Request(CT_NEW, 0, nfgenmsg(flow.orig.family) + FLOW.encode(ident))


def flow_flush(family: int = socket.AF_UNSPEC) -> Request:
    """A request deleting every flow, or every flow of one family.

    The kernel applies the family of a flush only when the nfgenmsg version is 1
    (``ctnetlink_del_conntrack``: ``u3 = nfmsg->version ? family : AF_UNSPEC``); with
    version 0, kept for old conntrack-tools, it flushes every family.  Measured on 6.18.
    """
    return Request(CT_DELETE, 0, nfgenmsg(family, version=NFNETLINK_V1))


def flow_key(orig: Tuple, zone: int | None = None) -> bytes:
    """Attributes naming one flow (for get and delete)."""
    return (
        nfgenmsg(orig.family)
        + attr(CTA_TUPLE_ORIG | 0x8000, TUPLE.encode(orig))
        + (attr(CTA_ZONE, BE16.encode(zone)) if zone is not None else b"")
    )


def flow_dump_filter(
    family: int = socket.AF_UNSPEC,
    *,
    mark: int | None = None,
    mark_mask: int = 0xFFFFFFFF,
    zone: int | None = None,
    status: int | None = None,
    status_mask: int | None = None,
) -> bytes:
    """A dump request body with the filters the kernel applies itself."""
    out = nfgenmsg(family)
    if mark is not None:
        out += attr(CTA_MARK, BE32.encode(mark)) + attr(CTA_MARK_MASK, BE32.encode(mark_mask))
    if zone is not None:
        out += attr(CTA_ZONE, BE16.encode(zone))
    if status is not None:
        mask = status if status_mask is None else status_mask
        out += attr(CTA_STATUS, BE32.encode(status)) + attr(CTA_STATUS_MASK, BE32.encode(mask))
    return out


def expect_create(exp: Expectation) -> Request:
    if exp.timeout is None:
        raise ValueError("CTA_EXPECT_TIMEOUT: the kernel requires a timeout")
    payload = nfgenmsg(exp.tuple.family) + EXPECT.encode(exp)
    return Request(EXP_NEW, NLM_F_CREATE | NLM_F_EXCL, payload)


def expect_key(exp: Expectation) -> bytes:
    body = attr(CTA_EXPECT_TUPLE | 0x8000, TUPLE.encode(exp.tuple))
    if exp.zone is not None:
        body += attr(CTA_EXPECT_ZONE, BE16.encode(exp.zone))
    return nfgenmsg(exp.tuple.family) + body


# --- events ----------------------------------------------------------------------------
def event_kind(msg_type: int, flags: int) -> EventKind:
    """NEW and UPDATE share a message type and differ by the create flags."""
    if msg_type & 0xFF == IPCTNL_MSG_CT_DELETE:
        return EventKind.DESTROY
    if flags & (NLM_F_CREATE | NLM_F_EXCL):
        return EventKind.NEW
    return EventKind.UPDATE


def subsystem(msg: Message) -> int:
    """Which nfnetlink subsystem a message belongs to (flows, expectations, ...)."""
    return msg.type >> 8


def decode_stats_cpu(payload_attrs: dict[int, int], names: tuple[str, ...]) -> dict[str, int]:
    return {name: payload_attrs.get(i + 1, 0) for i, name in enumerate(names)}
