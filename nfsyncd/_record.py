"""Compact byte records for the internal cache: one ``bytes`` key and one ``bytes`` value
per flow instead of a tree of ``Flow``/``Tuple``/``int`` objects.

Why: a decoded ``Flow`` with its tuples and protoinfo costs well over 1 KiB of Python
objects; two short ``bytes`` cost about 100 bytes.  At 100k+ flows that is the difference
between beating conntrackd's memory and losing to it.  The price is packing on every store
and unpacking on every read, which the cache does rarely (merges, dumps, lookups).

Only what replication needs is kept: the kernel-owned fields (``id``, ``use``, counters,
timestamps) are dropped.  Everything kept packs and unpacks to an equal value, including
the difference between ``None`` ("the kernel did not say") and zero.

Key layout (a flow's identity): the packed original tuple, then the flow zone as ``<H``
when it is not zero (zone 0 and no zone are the same table to the kernel).

Packed tuple: one header byte, then src, dst (4 or 16 bytes each), proto (B), then the
optional fields the header names, in this order::

    bit 0x01 sport H   0x02 dport H   0x04 icmp_type B   0x08 icmp_code B
    bit 0x10 icmp_id H 0x20 zone H    0x80 IPv6 addresses (clear: IPv4)

Record layout (little endian, no padding)::

    0  B   entry flags (owned by the cache: FLAG_*)
    1  I   since: seconds from cache creation to when the entry was added
    5  I   timeout (meaningful when FLAG_TIMEOUT is set)
    9  H   field mask (F_*), then the present fields in this order:
           status I, mark I, zone H, secmark I, reply tuple (unless F_REPLY_INV: the
           plain inverse of the original, as without NAT), protoinfo, helper (B length +
           UTF-8), labels (B length + bytes), master tuple, seqadj orig III, seqadj
           reply III, synproxy III

Everything from offset 9 on is the sync-relevant state: two records with equal tails
describe the same flow state, whatever their timeouts.

Protoinfo: a header byte with the kind in bits 0-1 (0 TCP, 1 SCTP, 2 DCCP) and one
presence bit per field from bit 2, then the present fields: TCP state B, wscale orig B,
wscale reply B, flags orig BB, flags reply BB; SCTP state B, vtag orig I, vtag reply I;
DCCP state B, role B, handshake seq Q.

A typical IPv4 TCP flow (plain reply, status, full TCP protoinfo) is a 14-byte key and a
23-byte record: about 155 bytes per cached flow with the ``bytes`` headers and the dict
slot (tracemalloc, 100k flows).  :func:`pack_canonical` packs that shape in one struct
call; everything else takes the general path.
"""

from __future__ import annotations

import struct
from typing import Final

from ._prepared import Prepared
from .model import (
    DccpInfo,
    Flow,
    ProtoInfo,
    SctpInfo,
    SeqAdj,
    Synproxy,
    TcpFlags,
    TcpInfo,
    Tuple,
)

__all__ = [
    "BODY_OFFSET",
    "COMMON_MASK",
    "FLAG_FROM_PEER",
    "FLAG_GEN",
    "FLAG_TIMEOUT",
    "MARKED_MASK",
    "NO_MARK",
    "PORT_KEYS",
    "RECORD_PREFIX",
    "TCP_BODY",
    "TCP_BODY_MARKED",
    "TCP_FULL_HDR",
    "canonical",
    "covers",
    "flow_key",
    "pack_canonical",
    "pack_record",
    "pack_tuple",
    "present_mask",
    "record_since",
    "unpack_key",
    "unpack_record",
    "unpack_tuple",
    "with_flags",
]

#: entry flags (record byte 0)
FLAG_FROM_PEER: Final = 0x01  # created by the peer (commit or inject), not by local traffic
FLAG_TIMEOUT: Final = 0x02  # the timeout field is meaningful
FLAG_GEN: Final = 0x04  # reconcile generation: entries the last dump did not touch differ

# field mask bits
F_REPLY: Final = 0x0001
F_REPLY_INV: Final = 0x0002
F_STATUS: Final = 0x0004
F_MARK: Final = 0x0008
F_ZONE: Final = 0x0010
F_SECMARK: Final = 0x0020
F_PROTOINFO: Final = 0x0040
F_HELPER: Final = 0x0080
F_LABELS: Final = 0x0100
F_MASTER: Final = 0x0200
F_SEQADJ_ORIG: Final = 0x0400
F_SEQADJ_REPLY: Final = 0x0800
F_SYNPROXY: Final = 0x1000

#: where the sync-relevant part of a record starts (the field mask)
BODY_OFFSET: Final = 9

_T_V6: Final = 0x80
_T_PORTS: Final = 0x03
# (presence bit, struct code) of the optional tuple fields, in field order
_T_OPTIONAL: Final = ((0x01, "H"), (0x02, "H"), (0x04, "B"), (0x08, "B"), (0x10, "H"), (0x20, "H"))


def _tuple_structs() -> list[struct.Struct | None]:
    out: list[struct.Struct | None] = []
    for hdr in range(256):
        if hdr & 0x40:
            out.append(None)
            continue
        n = 16 if hdr & _T_V6 else 4
        fmt = f"<B{n}s{n}sB" + "".join(code for bit, code in _T_OPTIONAL if hdr & bit)
        out.append(struct.Struct(fmt))
    return out


_TUPLE_ST: Final = _tuple_structs()
_PORTS4: Final = _TUPLE_ST[_T_PORTS]
_PORTS6: Final = _TUPLE_ST[_T_V6 | _T_PORTS]
_ZONE: Final = struct.Struct("<H")
_U8: Final = struct.Struct("<B")
_III: Final = struct.Struct("<III")


def pack_tuple(t: Tuple) -> bytes:
    src, dst, proto, sport, dport, icmp_type, icmp_code, icmp_id, zone = t
    n = len(src)
    if n != len(dst) or n not in (4, 16):
        raise ValueError(f"tuple addresses must both be 4 or 16 bytes, got {n} and {len(dst)}")
    if (
        icmp_type is None
        and icmp_code is None
        and icmp_id is None
        and zone is None
        and sport is not None
        and dport is not None
    ):
        if n == 4:
            return _PORTS4.pack(_T_PORTS, src, dst, proto, sport, dport)  # type: ignore[union-attr]
        return _PORTS6.pack(_T_V6 | _T_PORTS, src, dst, proto, sport, dport)  # type: ignore[union-attr]
    hdr = 0 if n == 4 else _T_V6
    values: list[int] = []
    optional = (sport, dport, icmp_type, icmp_code, icmp_id, zone)
    for (bit, _), value in zip(_T_OPTIONAL, optional, strict=True):
        if value is not None:
            hdr |= bit
            values.append(value)
    return _TUPLE_ST[hdr].pack(hdr, src, dst, proto, *values)  # type: ignore[union-attr]


def unpack_tuple(buf: bytes, off: int) -> tuple[Tuple, int]:
    """The tuple packed at ``off`` and the offset just after it."""
    hdr = buf[off]
    st = _TUPLE_ST[hdr]
    if st is None:
        raise ValueError(f"bad packed tuple header {hdr:#x}")
    v = st.unpack_from(buf, off)
    if hdr & 0x7F == _T_PORTS:
        return Tuple(v[1], v[2], v[3], v[4], v[5]), off + st.size
    rest = iter(v[4:])
    opt = [next(rest) if hdr & bit else None for bit, _ in _T_OPTIONAL]
    return Tuple(v[1], v[2], v[3], *opt), off + st.size


#: IPv6 or not -> the first byte and the ``pack`` of the key of a flow with ports and no
#: zone (what :func:`flow_key` packs then): ``pack(first, src, dst, proto, sport, dport)``,
#: for callers that have the values but no tuple
PORT_KEYS: Final = {
    False: (_T_PORTS, _PORTS4.pack),  # type: ignore[union-attr]
    True: (_T_V6 | _T_PORTS, _PORTS6.pack),  # type: ignore[union-attr]
}


def flow_key(orig: Tuple, zone: int | None = None) -> bytes:
    """The cache key of the flow with original tuple ``orig`` in ``zone``."""
    key = pack_tuple(orig)
    return key + _ZONE.pack(zone) if zone else key


def unpack_key(key: bytes) -> tuple[Tuple, int]:
    """The original tuple and zone (0 for none) a key was made from."""
    orig, off = unpack_tuple(key, 0)
    return orig, (_ZONE.unpack_from(key, off)[0] if off < len(key) else 0)


# --- protoinfo --------------------------------------------------------------------------

_PI_TCP, _PI_SCTP, _PI_DCCP = 0, 1, 2
_PI_FIELDS: Final = {
    _PI_TCP: ("B", "B", "B", "BB", "BB"),
    _PI_SCTP: ("B", "I", "I"),
    _PI_DCCP: ("B", "B", "Q"),
}


def _protoinfo_structs() -> dict[int, struct.Struct]:
    out = {}
    for kind, codes in _PI_FIELDS.items():
        for present in range(1 << len(codes)):
            fmt = "<B" + "".join(c for i, c in enumerate(codes) if present >> i & 1)
            out[kind | present << 2] = struct.Struct(fmt)
    return out


_PI_ST: Final = _protoinfo_structs()
TCP_FULL_HDR: Final = _PI_TCP | 0x1F << 2
_TCP_FULL: Final = _PI_ST[TCP_FULL_HDR]


def _pack_protoinfo(pi: ProtoInfo) -> bytes:
    if type(pi) is TcpInfo:
        state, wo, wr, fo, fr = pi
        if state is not None and wo is not None and wr is not None and fo and fr:
            return _TCP_FULL.pack(TCP_FULL_HDR, state, wo, wr, fo[0], fo[1], fr[0], fr[1])
        kind = _PI_TCP
    elif type(pi) is SctpInfo:
        kind = _PI_SCTP
    elif type(pi) is DccpInfo:
        kind = _PI_DCCP
    else:
        raise TypeError(f"unknown protoinfo {pi!r}")
    hdr = kind
    values: list[int] = []
    for i, value in enumerate(pi):
        if value is not None:
            hdr |= 1 << (i + 2)
            if isinstance(value, TcpFlags):
                values += value
            else:
                values.append(value)
    return _PI_ST[hdr].pack(hdr, *values)


def _unpack_protoinfo(buf: bytes, off: int) -> tuple[ProtoInfo, int]:
    hdr = buf[off]
    st = _PI_ST.get(hdr)
    if st is None:
        raise ValueError(f"bad packed protoinfo header {hdr:#x}")
    v = st.unpack_from(buf, off)
    end = off + st.size
    kind = hdr & 3
    if hdr == TCP_FULL_HDR:
        return TcpInfo(v[1], v[2], v[3], TcpFlags(v[4], v[5]), TcpFlags(v[6], v[7])), end
    vals = iter(v[1:])
    fields: list[object] = []
    for i, code in enumerate(_PI_FIELDS[kind]):
        if not hdr >> (i + 2) & 1:
            fields.append(None)
        elif code == "BB":
            fields.append(TcpFlags(next(vals), next(vals)))
        else:
            fields.append(next(vals))
    cls = (TcpInfo, SctpInfo, DccpInfo)[kind]
    return cls(*fields), end  # type: ignore[arg-type]


# --- records ----------------------------------------------------------------------------

_SCALARS: Final = ((F_STATUS, "I"), (F_MARK, "I"), (F_ZONE, "H"), (F_SECMARK, "I"))
_SCALAR_FLAGS: Final = tuple(bit for bit, _ in _SCALARS)
_SCALAR_BITS: Final = F_STATUS | F_MARK | F_ZONE | F_SECMARK


def _head_structs() -> dict[int, struct.Struct]:
    out = {}
    for combo in range(16):
        bits = combo << 2
        fmt = "<BIIH" + "".join(code for bit, code in _SCALARS if bits & bit)
        out[bits] = struct.Struct(fmt)
    return out


_HEAD: Final = _head_structs()
_HEAD_STATUS: Final = _HEAD[F_STATUS]
#: what every record starts with: entry flags, since, timeout (``BODY_OFFSET`` bytes)
RECORD_PREFIX: Final = struct.Struct("<BII")
#: the shape of nearly every TCP flow: plain reply, status, complete TCP protoinfo
COMMON_MASK: Final = F_REPLY_INV | F_STATUS | F_PROTOINFO
#: the same with a mark (what an update storm of ``ct mark set`` makes of every flow)
MARKED_MASK: Final = COMMON_MASK | F_MARK
#: the body (from ``BODY_OFFSET``) of those two shapes: ``pack(mask, status, mark,
#: TCP_FULL_HDR, state, wscale orig, wscale reply, flags orig, mask orig, flags reply,
#: mask reply)``; the unmarked one's ``0s`` stands where the mark would, takes
#: ``NO_MARK`` and writes nothing, so one call packs either shape
TCP_BODY_MARKED: Final = struct.Struct("<HIIBBBBBBBB")
TCP_BODY: Final = struct.Struct("<HI0sBBBBBBBB")
NO_MARK: Final = b""
_prefix: Final = RECORD_PREFIX.pack
_COMMON: Final = struct.Struct("<BIIHIBBBBBBBB")
_COMMON_MARKED: Final = struct.Struct(RECORD_PREFIX.format + TCP_BODY_MARKED.format[1:])
_COMMON_NO_MARK: Final = struct.Struct(RECORD_PREFIX.format + TCP_BODY.format[1:])
_ZERO_SYNPROXY: Final = Synproxy(0, 0, 0)


_new: Final = tuple.__new__
_NONE11: Final = (None,) * 11


def _inverse(orig: Tuple) -> Tuple:
    """``orig.inverted()``, faster for the tuples without an ICMP type."""
    if orig[5] is None:
        return _new(Tuple, (orig[1], orig[0], orig[2], orig[4], orig[3], None, *orig[6:]))
    return orig.inverted()


def _plain_inverse(orig: Tuple, reply: Tuple) -> bool:
    """Whether ``reply`` is what the kernel makes of ``orig`` without NAT."""
    if orig[5] is None:  # no ICMP type to map
        return (
            reply[0] == orig[1]
            and reply[1] == orig[0]
            and reply[3] == orig[4]
            and reply[4] == orig[3]
            and reply[2] == orig[2]
            and reply[5:] == orig[5:]
        )
    return reply == orig.inverted()


def pack_record(flow: Flow, flags: int, since: int) -> bytes:
    """The record of ``flow`` (everything kept but the original tuple and zone, which are
    the key)."""
    (
        orig,
        reply,
        status,
        timeout,
        mark,
        zone,
        labels,
        helper,
        protoinfo,
        master,
        seqadj_orig,
        seqadj_reply,
        synproxy,
        secmark,
    ) = flow[:14]
    if timeout is None:
        flags &= ~FLAG_TIMEOUT
        timeout = 0
    else:
        flags |= FLAG_TIMEOUT
    mask = 0
    tail: list[bytes] = []
    if reply is not None:
        if _plain_inverse(orig, reply):
            mask = F_REPLY_INV
        else:
            mask = F_REPLY
            tail.append(pack_tuple(reply))
    if protoinfo is not None:
        mask |= F_PROTOINFO
        tail.append(_pack_protoinfo(protoinfo))
    if helper is not None:
        raw = helper.encode()
        mask |= F_HELPER
        tail.append(_U8.pack(len(raw)) + raw)
    if labels is not None:
        mask |= F_LABELS
        tail.append(_U8.pack(len(labels)) + labels)
    if master is not None:
        mask |= F_MASTER
        tail.append(pack_tuple(master))
    if seqadj_orig is not None:
        mask |= F_SEQADJ_ORIG
        tail.append(_III.pack(*seqadj_orig))
    if seqadj_reply is not None:
        mask |= F_SEQADJ_REPLY
        tail.append(_III.pack(*seqadj_reply))
    if synproxy is not None:
        mask |= F_SYNPROXY
        tail.append(_III.pack(*synproxy))
    if mark is None and zone is None and secmark is None:
        if status is not None:
            head = _HEAD_STATUS.pack(flags, since, timeout, mask | F_STATUS, status)
        else:
            head = _HEAD[0].pack(flags, since, timeout, mask)
    else:
        scalars = []
        for bit, value in zip(_SCALAR_FLAGS, (status, mark, zone, secmark), strict=True):
            if value is not None:
                mask |= bit
                scalars.append(value)
        head = _HEAD[mask & _SCALAR_BITS].pack(flags, since, timeout, mask, *scalars)
    if not tail:
        return head
    tail.insert(0, head)
    return b"".join(tail)


def canonical(flow: Flow) -> Flow:
    """``flow`` with the zero values the kernel may or may not report made absent: a zero
    mark, zone or secmark, all-zero labels, an all-zero synproxy."""
    labels = flow.labels
    if (
        flow.mark == 0
        or flow.zone == 0
        or flow.secmark == 0
        or flow.synproxy == _ZERO_SYNPROXY
        or (labels is not None and not any(labels))
    ):
        return flow._replace(
            mark=flow.mark or None,
            zone=flow.zone or None,
            secmark=flow.secmark or None,
            synproxy=None if flow.synproxy == _ZERO_SYNPROXY else flow.synproxy,
            labels=labels if labels and any(labels) else None,
        )
    return flow


def pack_canonical(flow: Flow | Prepared, flags: int, since: int) -> bytes:
    """``pack_record(canonical(flow), flags, since)``, with a fast path for the shape
    of nearly every TCP flow (this runs once per kernel event); a prepared event has
    its record body made already."""
    if isinstance(flow, Prepared):
        return _prefix(flags | FLAG_TIMEOUT, since, flow[1]) + flow[2]
    (
        orig,
        reply,
        status,
        timeout,
        mark,
        zone,
        labels,
        helper,
        protoinfo,
        master,
        seqadj_orig,
        seqadj_reply,
        synproxy,
        secmark,
    ) = flow[:14]
    if (
        type(protoinfo) is TcpInfo
        and not zone
        and not secmark
        and labels is None
        and helper is None
        and master is None
        and seqadj_orig is None
        and seqadj_reply is None
        and (synproxy is None or synproxy == _ZERO_SYNPROXY)
        and status is not None
        and timeout is not None
        and reply is not None
    ):
        state, wo, wr, fo, fr = protoinfo
        if (
            state is not None
            and wo is not None
            and wr is not None
            and fo is not None
            and fr is not None
            and _plain_inverse(orig, reply)
        ):
            return (_COMMON_MARKED if mark else _COMMON_NO_MARK).pack(
                flags | FLAG_TIMEOUT,
                since,
                timeout,
                MARKED_MASK if mark else COMMON_MASK,
                status,
                mark or NO_MARK,
                TCP_FULL_HDR,
                state,
                wo,
                wr,
                fo[0],
                fo[1],
                fr[0],
                fr[1],
            )
    return pack_record(canonical(flow), flags, since)


def unpack_record(orig: Tuple, rec: bytes) -> Flow:
    """The flow a record (and the original tuple of its key) stands for."""
    mask = rec[9] | rec[10] << 8
    if mask == COMMON_MASK and rec[15] == TCP_FULL_HDR and rec[0] & FLAG_TIMEOUT:
        # built with tuple.__new__ (what NamedTuple._make does): this runs for every
        # merge and every listed flow, and the generated __new__ costs twice as much
        v = _COMMON.unpack_from(rec, 0)
        info = _new(TcpInfo, (v[6], v[7], v[8], _new(TcpFlags, v[9:11]), _new(TcpFlags, v[11:13])))
        return _new(
            Flow, (orig, _inverse(orig), v[4], v[2], None, None, None, None, info, *_NONE11)
        )
    st = _HEAD[mask & _SCALAR_BITS]
    head = st.unpack_from(rec, 0)
    off = st.size
    flags, timeout = head[0], head[2]
    scalars = iter(head[4:])
    status = next(scalars) if mask & F_STATUS else None
    mark = next(scalars) if mask & F_MARK else None
    zone = next(scalars) if mask & F_ZONE else None
    secmark = next(scalars) if mask & F_SECMARK else None
    reply = protoinfo = helper = labels = master = None
    seqadj_orig = seqadj_reply = synproxy = None
    if mask & F_REPLY_INV:
        reply = _inverse(orig)
    elif mask & F_REPLY:
        reply, off = unpack_tuple(rec, off)
    if mask & F_PROTOINFO:
        protoinfo, off = _unpack_protoinfo(rec, off)
    if mask & F_HELPER:
        n = rec[off]
        helper = rec[off + 1 : off + 1 + n].decode()
        off += 1 + n
    if mask & F_LABELS:
        n = rec[off]
        labels = rec[off + 1 : off + 1 + n]
        off += 1 + n
    if mask & F_MASTER:
        master, off = unpack_tuple(rec, off)
    if mask & F_SEQADJ_ORIG:
        seqadj_orig = SeqAdj(*_III.unpack_from(rec, off))
        off += 12
    if mask & F_SEQADJ_REPLY:
        seqadj_reply = SeqAdj(*_III.unpack_from(rec, off))
        off += 12
    if mask & F_SYNPROXY:
        synproxy = Synproxy(*_III.unpack_from(rec, off))
        off += 12
    return Flow(
        orig,
        reply,
        status,
        timeout if flags & FLAG_TIMEOUT else None,
        mark,
        zone,
        labels,
        helper,
        protoinfo,
        master,
        seqadj_orig,
        seqadj_reply,
        synproxy,
        secmark,
    )


# (field mask bits, index of the Flow field they stand for)
_FIELD_OF_BITS: Final = (
    (F_REPLY | F_REPLY_INV, 1),
    (F_STATUS, 2),
    (F_MARK, 4),
    (F_ZONE, 5),
    (F_LABELS, 6),
    (F_HELPER, 7),
    (F_PROTOINFO, 8),
    (F_MASTER, 9),
    (F_SEQADJ_ORIG, 10),
    (F_SEQADJ_REPLY, 11),
    (F_SYNPROXY, 12),
    (F_SECMARK, 13),
)
_TIMEOUT_FIELD: Final = 3
_needed_cache: dict[int, tuple[int, ...]] = {}


def _needed(mask: int, has_timeout: int) -> tuple[int, ...]:
    key = mask << 1 | bool(has_timeout)
    found = _needed_cache.get(key)
    if found is None:
        found = tuple(i for bits, i in _FIELD_OF_BITS if mask & bits)
        if has_timeout:
            found += (_TIMEOUT_FIELD,)
        _needed_cache[key] = found
    return found


def covers(flow: Flow | Prepared, rec: bytes) -> bool:
    """Whether ``flow`` has a value for every field the record has (then it replaces the
    record whole; otherwise it is a partial update to merge)."""
    if isinstance(flow, Prepared):  # (which has a timeout, and knows its other fields)
        return not (rec[9] | rec[10] << 8) & ~flow[4]
    for i in _needed(rec[9] | rec[10] << 8, rec[0] & FLAG_TIMEOUT):  # noqa: SIM110 (speed)
        if flow[i] is None:
            return False
    return True


def present_mask(flow: Flow) -> int:
    """The field bits (``F_*``) of the fields ``flow`` has a value for: it
    :func:`covers` a record whose mask has no other bit (timeout aside)."""
    mask = 0
    for bits, i in _FIELD_OF_BITS:
        if flow[i] is not None:
            mask |= bits
    return mask


_SINCE: Final = struct.Struct("<I")


def record_since(rec: bytes) -> int:
    since: int = _SINCE.unpack_from(rec, 1)[0]
    return since


def with_flags(rec: bytes, flags: int) -> bytes:
    """``rec`` with its entry flags replaced (the timeout flag is the record's own)."""
    return bytes(((flags & ~FLAG_TIMEOUT) | (rec[0] & FLAG_TIMEOUT),)) + rec[1:]
