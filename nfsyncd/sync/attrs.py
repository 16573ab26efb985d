"""conntrackd's sync attributes (TLVs): Flow and Expectation <-> message payload.

The tables (:data:`CT_ATTRS`, :data:`EXP_ATTRS`) are the single statement of every
attribute's number, name, size and the conntrackd release that introduced it
(reference/conntrackd.md §1.7, §1.8, §1.10).  Decoding validates sizes from them, the peer
version gate is derived from them, and errors name attributes through them.  How the model
maps onto attributes is not 1:1 (the reply tuple travels as NAT attributes, one tuple is
split into an address group, a protocol and ports), so the mapping itself is code: one
encode and one decode function per object, side by side, written for speed (this runs
once per replicated flow, ~135k/s).

What the wire carries, and what it loses (by conntrackd's design, not ours):

* the original tuple (addresses, protocol; ports for TCP/UDP/SCTP/DCCP only; ICMP
  type/code/id for ICMP/ICMPv6), status, timeout (unless the sender has CommitTimeout),
  mark, zone, labels, helper name, master tuple, TCP state (and window scales if the
  sender tracks windows), SCTP state and vtags, DCCP state and role, sequence adjustment,
  synproxy;
* NAT as "reply tuple minus the inverse of the original": SNAT/DNAT addresses, and for
  port protocols SPAT/DPAT ports.  The receiver rebuilds the reply tuple from them
  (:func:`decode_flow`), like conntrackd's ``NFCT_SOPT_SETUP_REPLY``;
* never carried: the reply tuple itself (so a translated ICMP id, GRE keys and UDP-Lite
  ports are lost), per-tuple zones, TCP flags, the DCCP handshake sequence, counters,
  secmark, timestamps, ids, ``use``; for expectations the zone, id and an IPv6 NAT tuple.

Byte order follows conntrackd on little-endian hosts (§1.6): everything is big-endian
except NTA_SPAT_PORT, NTA_DPAT_PORT and NTA_ICMP_ID, which are little-endian.

Decoding mirrors conntrackd's receiver (§1.5): an attribute number it does not know
rejects the whole message (:attr:`Reason.UNKNOWN_ATTRIBUTE`), a wrong fixed size or an
over-long variable one rejects it too (:attr:`Reason.MALFORMED_PAYLOAD`), 1-4 trailing
bytes are ignored.  Where a message holds something the model has no place for (TCP
state on a UDP flow, an IPv4 NAT address on an IPv6 flow, master ports without a master
address...), the raw attribute is returned in the *extra* tuple next to the object instead
of being dropped silently: ``((attribute number, payload bytes), ...)``, usually empty.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from .._record import PORT_KEYS
from ..model import (
    IPPROTO_DCCP,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    DccpInfo,
    Expectation,
    ExpectNat,
    Flow,
    SctpInfo,
    SeqAdj,
    Synproxy,
    TcpInfo,
    Tuple,
)

__all__ = [
    "CT_ATTRS",
    "EXP_ATTRS",
    "LATEST_PEER_VERSION",
    "NTA_EXP_MAX",
    "NTA_MAX",
    "OLDEST_PEER_VERSION",
    "TCP_HEADS",
    "AttrEncoder",
    "AttrSpec",
    "Extra",
    "Reason",
    "WireError",
    "decode_expect",
    "decode_flow",
    "nta_max",
    "parse_version",
]

PeerVersion = tuple[int, ...]
#: attributes the model could not hold: ((attribute number, payload), ...)
Extra = tuple[tuple[int, bytes], ...]

#: conntrackd 1.2.0 introduced protocol version 1, the only one spoken here
OLDEST_PEER_VERSION: Final[PeerVersion] = (1, 2, 0)
#: the newest release checked; nothing changed on the wire after 1.4.7
LATEST_PEER_VERSION: Final[PeerVersion] = (1, 4, 9)


class Reason(enum.Enum):
    """Why a received message was dropped: conntrackd's ``-s network`` counters, plus
    unknown attributes told apart from other payload errors (conntrackd counts them as
    "Malformed payload"; see :meth:`NetworkStats.conntrackd_view`)."""

    WRONG_VERSION = "Wrong protocol version"
    MALFORMED_HEADER = "Malformed header"
    MALFORMED_PAYLOAD = "Malformed payload"
    BAD_TYPE = "Bad message type"
    TRUNCATED = "Truncated message"
    BAD_SIZE = "Bad message size"
    UNKNOWN_ATTRIBUTE = "Unknown attribute"


class WireError(ValueError):
    """A message the receiver must drop; ``reason`` says which counter it goes to and
    ``attr`` is the attribute number at fault, when there is one (``kind`` says whether
    it is a conntrack or an expectation attribute)."""

    def __init__(
        self, reason: Reason, detail: str, attr: int | None = None, kind: str | None = None
    ) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.attr = attr
        #: "ct" or "exp": which attribute table ``attr`` belongs to
        self.kind = kind


class AttrSpec(NamedTuple):
    """One row of an attribute table.

    ``size`` is the exact ``nta_len`` (4-byte header included, padding excluded) of a
    fixed-size attribute, or the largest one accepted for a variable-size attribute.
    """

    id: int
    name: str
    size: int
    variable: bool = False
    since: PeerVersion = OLDEST_PEER_VERSION


# --- conntrack attributes (§1.7) -----------------------------------------------------------
NTA_IPV4, NTA_IPV6, NTA_L4PROTO, NTA_PORT, NTA_TCP_STATE, NTA_STATUS = 0, 1, 2, 3, 4, 5
NTA_TIMEOUT, NTA_MARK, NTA_MASTER_IPV4, NTA_MASTER_IPV6, NTA_MASTER_L4PROTO = 6, 7, 8, 9, 10
NTA_MASTER_PORT, NTA_SNAT_IPV4, NTA_DNAT_IPV4, NTA_SPAT_PORT, NTA_DPAT_PORT = 11, 12, 13, 14, 15
NTA_NAT_SEQ_ADJ, NTA_SCTP_STATE, NTA_SCTP_VTAG_ORIG, NTA_SCTP_VTAG_REPL = 16, 17, 18, 19
NTA_DCCP_STATE, NTA_DCCP_ROLE, NTA_ICMP_TYPE, NTA_ICMP_CODE, NTA_ICMP_ID = 20, 21, 22, 23, 24
NTA_TCP_WSCALE_ORIG, NTA_TCP_WSCALE_REPL, NTA_HELPER_NAME, NTA_LABELS = 25, 26, 27, 28
NTA_SNAT_IPV6, NTA_DNAT_IPV6, NTA_SYNPROXY, NTA_ZONE = 29, 30, 31, 32

CT_ATTRS: Final[tuple[AttrSpec, ...]] = (
    AttrSpec(NTA_IPV4, "NTA_IPV4", 12),
    AttrSpec(NTA_IPV6, "NTA_IPV6", 36),
    AttrSpec(NTA_L4PROTO, "NTA_L4PROTO", 5),
    AttrSpec(NTA_PORT, "NTA_PORT", 8),
    AttrSpec(NTA_TCP_STATE, "NTA_TCP_STATE", 5),
    AttrSpec(NTA_STATUS, "NTA_STATUS", 8),
    AttrSpec(NTA_TIMEOUT, "NTA_TIMEOUT", 8),
    AttrSpec(NTA_MARK, "NTA_MARK", 8),
    AttrSpec(NTA_MASTER_IPV4, "NTA_MASTER_IPV4", 12),
    AttrSpec(NTA_MASTER_IPV6, "NTA_MASTER_IPV6", 36),
    AttrSpec(NTA_MASTER_L4PROTO, "NTA_MASTER_L4PROTO", 5),
    AttrSpec(NTA_MASTER_PORT, "NTA_MASTER_PORT", 8),
    AttrSpec(NTA_SNAT_IPV4, "NTA_SNAT_IPV4", 8),
    AttrSpec(NTA_DNAT_IPV4, "NTA_DNAT_IPV4", 8),
    AttrSpec(NTA_SPAT_PORT, "NTA_SPAT_PORT", 6),
    AttrSpec(NTA_DPAT_PORT, "NTA_DPAT_PORT", 6),
    AttrSpec(NTA_NAT_SEQ_ADJ, "NTA_NAT_SEQ_ADJ", 28),
    AttrSpec(NTA_SCTP_STATE, "NTA_SCTP_STATE", 5),
    AttrSpec(NTA_SCTP_VTAG_ORIG, "NTA_SCTP_VTAG_ORIG", 8),
    AttrSpec(NTA_SCTP_VTAG_REPL, "NTA_SCTP_VTAG_REPL", 8),
    AttrSpec(NTA_DCCP_STATE, "NTA_DCCP_STATE", 5),
    AttrSpec(NTA_DCCP_ROLE, "NTA_DCCP_ROLE", 5),
    AttrSpec(NTA_ICMP_TYPE, "NTA_ICMP_TYPE", 5),
    AttrSpec(NTA_ICMP_CODE, "NTA_ICMP_CODE", 5),
    AttrSpec(NTA_ICMP_ID, "NTA_ICMP_ID", 6),
    AttrSpec(NTA_TCP_WSCALE_ORIG, "NTA_TCP_WSCALE_ORIG", 5),
    AttrSpec(NTA_TCP_WSCALE_REPL, "NTA_TCP_WSCALE_REPL", 5),
    AttrSpec(NTA_HELPER_NAME, "NTA_HELPER_NAME", 16, variable=True),
    AttrSpec(NTA_LABELS, "NTA_LABELS", 4 + 1024, variable=True, since=(1, 4, 2)),
    AttrSpec(NTA_SNAT_IPV6, "NTA_SNAT_IPV6", 20, since=(1, 4, 4)),
    AttrSpec(NTA_DNAT_IPV6, "NTA_DNAT_IPV6", 20, since=(1, 4, 4)),
    AttrSpec(NTA_SYNPROXY, "NTA_SYNPROXY", 16, since=(1, 4, 5)),
    AttrSpec(NTA_ZONE, "NTA_ZONE", 6, since=(1, 4, 7)),
)
NTA_MAX: Final = len(CT_ATTRS)

# --- expectation attributes (§1.8) ---------------------------------------------------------
NTA_EXP_MASTER_IPV4, NTA_EXP_MASTER_IPV6, NTA_EXP_MASTER_L4PROTO = 0, 1, 2
NTA_EXP_MASTER_PORT, NTA_EXP_EXPECT_IPV4, NTA_EXP_EXPECT_IPV6 = 3, 4, 5
NTA_EXP_EXPECT_L4PROTO, NTA_EXP_EXPECT_PORT, NTA_EXP_MASK_IPV4 = 6, 7, 8
NTA_EXP_MASK_IPV6, NTA_EXP_MASK_L4PROTO, NTA_EXP_MASK_PORT = 9, 10, 11
NTA_EXP_TIMEOUT, NTA_EXP_FLAGS, NTA_EXP_CLASS, NTA_EXP_NAT_IPV4 = 12, 13, 14, 15
NTA_EXP_NAT_PORT, NTA_EXP_NAT_L4PROTO, NTA_EXP_NAT_DIR = 16, 17, 18
NTA_EXP_HELPER_NAME, NTA_EXP_FN = 19, 20

EXP_ATTRS: Final[tuple[AttrSpec, ...]] = (
    AttrSpec(NTA_EXP_MASTER_IPV4, "NTA_EXP_MASTER_IPV4", 12),
    AttrSpec(NTA_EXP_MASTER_IPV6, "NTA_EXP_MASTER_IPV6", 36),
    AttrSpec(NTA_EXP_MASTER_L4PROTO, "NTA_EXP_MASTER_L4PROTO", 5),
    AttrSpec(NTA_EXP_MASTER_PORT, "NTA_EXP_MASTER_PORT", 8),
    AttrSpec(NTA_EXP_EXPECT_IPV4, "NTA_EXP_EXPECT_IPV4", 12),
    AttrSpec(NTA_EXP_EXPECT_IPV6, "NTA_EXP_EXPECT_IPV6", 36),
    AttrSpec(NTA_EXP_EXPECT_L4PROTO, "NTA_EXP_EXPECT_L4PROTO", 5),
    AttrSpec(NTA_EXP_EXPECT_PORT, "NTA_EXP_EXPECT_PORT", 8),
    AttrSpec(NTA_EXP_MASK_IPV4, "NTA_EXP_MASK_IPV4", 12),
    AttrSpec(NTA_EXP_MASK_IPV6, "NTA_EXP_MASK_IPV6", 36),
    AttrSpec(NTA_EXP_MASK_L4PROTO, "NTA_EXP_MASK_L4PROTO", 5),
    AttrSpec(NTA_EXP_MASK_PORT, "NTA_EXP_MASK_PORT", 8),
    AttrSpec(NTA_EXP_TIMEOUT, "NTA_EXP_TIMEOUT", 8),
    AttrSpec(NTA_EXP_FLAGS, "NTA_EXP_FLAGS", 8),
    AttrSpec(NTA_EXP_CLASS, "NTA_EXP_CLASS", 8),
    AttrSpec(NTA_EXP_NAT_IPV4, "NTA_EXP_NAT_IPV4", 12),
    AttrSpec(NTA_EXP_NAT_PORT, "NTA_EXP_NAT_PORT", 8),
    AttrSpec(NTA_EXP_NAT_L4PROTO, "NTA_EXP_NAT_L4PROTO", 5),
    AttrSpec(NTA_EXP_NAT_DIR, "NTA_EXP_NAT_DIR", 8),
    AttrSpec(NTA_EXP_HELPER_NAME, "NTA_EXP_HELPER_NAME", 16, variable=True),
    # "artificial limit" in conntrackd
    AttrSpec(NTA_EXP_FN, "NTA_EXP_FN", 32, variable=True),
)
NTA_EXP_MAX: Final = len(EXP_ATTRS)


def _check_table(table: Sequence[AttrSpec]) -> None:
    for i, spec in enumerate(table):
        if spec.id != i:
            raise AssertionError(f"{spec.name} is row {i}, not {spec.id}")


_check_table(CT_ATTRS)
_check_table(EXP_ATTRS)

#: per attribute number: the exact nta_len, or minus the largest accepted one
_CT_LEN: Final = [-s.size if s.variable else s.size for s in CT_ATTRS]
_EXP_LEN: Final = [-s.size if s.variable else s.size for s in EXP_ATTRS]


def parse_version(text: str) -> PeerVersion:
    """``"1.4.7"`` -> ``(1, 4, 7)`` (config files and the CLI name peers this way)."""
    try:
        parts = tuple(int(p) for p in text.strip().split("."))
    except ValueError:
        raise ValueError(f"not a version number: {text!r}") from None
    if not parts or any(p < 0 for p in parts):
        raise ValueError(f"not a version number: {text!r}")
    return parts


def nta_max(peer_version: PeerVersion) -> int:
    """conntrackd's NTA_MAX for a release: conntrack attributes below it are understood."""
    if tuple(peer_version) < OLDEST_PEER_VERSION:
        raise ValueError(
            f"conntrackd {'.'.join(map(str, peer_version))} speaks sync protocol version 0; "
            f"only >= {'.'.join(map(str, OLDEST_PEER_VERSION))} (version 1) is supported"
        )
    return 1 + max(s.id for s in CT_ATTRS if s.since <= tuple(peer_version))


# --- shared pieces -------------------------------------------------------------------------
_PORT_PROTOS: Final = frozenset((IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_DCCP))
_ICMP_PROTOS: Final = frozenset((IPPROTO_ICMP, IPPROTO_ICMPV6))

_HDR = struct.Struct(">HH")
_hdr = _HDR.pack
_unpack_hdr = _HDR.unpack_from
# whole attributes, header and padding included: one pack call each
_A_U8 = struct.Struct(">HHB3x").pack
_A_U16 = struct.Struct(">HHH2x").pack
_A_U32 = struct.Struct(">HHI").pack
_A_PORTS = struct.Struct(">HHHH").pack
_A_SEQADJ = struct.Struct(">HH6I").pack
_A_3U32 = struct.Struct(">HH3I").pack
_LE16 = struct.Struct("<H2x").pack  # payload + padding of the host-swapped u16s

_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from
_PAIR16 = struct.Struct(">HH").unpack_from
_LE16_AT = struct.Struct("<H").unpack_from
_SEQADJ_AT = struct.Struct(">6I").unpack_from
_3U32_AT = struct.Struct(">3I").unpack_from

_PADS: Final = (b"", b"\0\0\0", b"\0\0", b"\0")

# headers of the address groups (fixed lengths)
_H_IPV4 = _hdr(12, NTA_IPV4)
_H_IPV6 = _hdr(36, NTA_IPV6)
_H_MASTER_IPV4 = _hdr(12, NTA_MASTER_IPV4)
_H_MASTER_IPV6 = _hdr(36, NTA_MASTER_IPV6)
_H_SNAT_IPV4 = _hdr(8, NTA_SNAT_IPV4)
_H_DNAT_IPV4 = _hdr(8, NTA_DNAT_IPV4)
_H_SNAT_IPV6 = _hdr(20, NTA_SNAT_IPV6)
_H_DNAT_IPV6 = _hdr(20, NTA_DNAT_IPV6)
_H_SPAT = _hdr(6, NTA_SPAT_PORT)
_H_DPAT = _hdr(6, NTA_DPAT_PORT)
_H_ICMP_ID = _hdr(6, NTA_ICMP_ID)

_ZERO_SYNPROXY: Final = Synproxy(0, 0, 0)


def _tcp_head(size: int, group: int) -> Callable[..., bytes]:
    """The usual start of a TCP flow's message in one ``pack``: the address group, then
    NTA_STATUS, NTA_L4PROTO, NTA_PORT, NTA_TCP_STATE, NTA_TIMEOUT and NTA_MARK, each as
    the attribute-wise path writes it (tests/unit/test_layouts.py compares the two)."""
    pack = struct.Struct(f">HH{size}s{size}sHHIHHB3xHHHHHHB3xHHIHHI").pack
    glen = 4 + 2 * size

    def head(
        src: bytes, dst: bytes, status: int, sport: int, dport: int, state: int, t: int, m: int
    ) -> bytes:
        return pack(
            glen, group, src, dst, 8, NTA_STATUS, status, 5, NTA_L4PROTO, IPPROTO_TCP,
            8, NTA_PORT, sport, dport, 5, NTA_TCP_STATE, state, 8, NTA_TIMEOUT, t,
            8, NTA_MARK, m,
        )  # fmt: skip

    return head


#: by address size
TCP_HEADS: Final = {4: _tcp_head(4, NTA_IPV4), 16: _tcp_head(16, NTA_IPV6)}

# Flow and Expectation are built with tuple.__new__ (the NamedTuple constructor costs
# ~1 µs per flow); these guard the positional layouts that relies on.
_FLOW_HEAD: Final = (
    "orig",
    "reply",
    "status",
    "timeout",
    "mark",
    "zone",
    "labels",
    "helper",
    "protoinfo",
    "master",
    "seqadj_orig",
    "seqadj_reply",
    "synproxy",
)
_EXP_FIELDS: Final = (
    "master",
    "tuple",
    "mask",
    "timeout",
    "id",
    "helper",
    "zone",
    "flags",
    "klass",
    "nat",
    "fn",
)
if Flow._fields[: len(_FLOW_HEAD)] != _FLOW_HEAD or Expectation._fields != _EXP_FIELDS:
    raise AssertionError("nfsyncd.model changed: update nfsyncd.sync.attrs")
if Tuple._fields[:5] != ("src", "dst", "proto", "sport", "dport"):
    raise AssertionError("nfsyncd.model.Tuple changed: update nfsyncd.sync.attrs")
_FLOW_TAIL: Final = (None,) * (len(Flow._fields) - len(_FLOW_HEAD))
_new = tuple.__new__


def _string(atype: int, value: str, max_len: int, name: str) -> bytes:
    """A NUL-terminated name; ``max_len`` is conntrackd's limit on ``nta_len``."""
    try:
        data = value.encode("ascii") + b"\0"
    except UnicodeEncodeError:
        raise ValueError(f"{name}: {value!r} is not ASCII") from None
    length = 4 + len(data)
    if length > max_len:
        raise ValueError(
            f"{name}: {value!r} is longer than {max_len - 5} characters (conntrackd's limit)"
        )
    return _hdr(length, atype) + data + _PADS[length & 3]


def _labels_payload(labels: bytes) -> bytes | None:
    """The model's label bitmap (the kernel's, in host order) as conntrackd's words.

    Each 32-bit word goes big-endian; trailing zero words are left out (word count =
    highest set bit / 32 + 1).  ``None`` when no bit is set: conntrackd sends nothing then.
    """
    if len(labels) & 3:
        labels = labels + b"\0" * (-len(labels) & 3)
    words = struct.unpack(f"={len(labels) >> 2}I", labels)
    count = len(words)
    while count and not words[count - 1]:
        count -= 1
    if not count:
        return None
    if count > 256:
        raise ValueError("NTA_LABELS: a label above 8191 is set (conntrackd carries 1024 bytes)")
    return struct.pack(f">{count}I", *words[:count])


def _labels_from_wire(buf: bytes, start: int, size: int) -> bytes:
    """conntrackd's label words as the kernel's bitmap, at least the kernel's 16 bytes."""
    if size & 3:
        raise WireError(
            Reason.MALFORMED_PAYLOAD,
            f"NTA_LABELS: {size} payload bytes is not a whole number of 32-bit words",
            NTA_LABELS,
        )
    count = size >> 2
    words = struct.unpack_from(f">{count}I", buf, start)
    data = struct.pack(f"={count}I", *words)
    if len(data) < 16:
        data += b"\0" * (16 - len(data))
    return data


def _name_from_wire(buf: bytes, start: int, end: int, atype: int, name: str) -> str:
    raw = buf[start:end]
    nul = raw.find(b"\0")
    if nul >= 0:
        raw = raw[:nul]
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise WireError(
            Reason.MALFORMED_PAYLOAD, f"{name}: {raw!r} is not an ASCII name", atype
        ) from None


def _malformed(detail: str, atype: int | None = None) -> WireError:
    return WireError(Reason.MALFORMED_PAYLOAD, detail, atype)


def _walk(
    buf: bytes, start: int, end: int, lens: list[int], table: tuple[AttrSpec, ...], kind: str
) -> list[int]:
    """Index the attributes of one message: payload offset per attribute number, 0 if absent.

    This is conntrackd's validation (§1.5): unknown numbers, wrong fixed sizes, too long
    variable sizes and lengths past the end reject the message; a later copy of an
    attribute replaces an earlier one; 1-4 trailing bytes are ignored.
    """
    limit = len(lens)
    pos = [0] * limit
    off = start
    while end - off > 4:
        ln, at = _unpack_hdr(buf, off)
        if ln < 4 or ln > end - off:
            raise WireError(
                Reason.MALFORMED_PAYLOAD,
                f"attribute {at} claims nta_len {ln}, {end - off} bytes left",
                at,
                kind,
            )
        if at >= limit:
            raise WireError(
                Reason.UNKNOWN_ATTRIBUTE,
                f"{kind} attribute number {at} (known: 0-{limit - 1}); the peer is newer",
                at,
                kind,
            )
        want = lens[at]
        if ln != want and (want > 0 or ln > -want):
            spec = table[at]
            rule = "at most" if spec.variable else "exactly"
            raise WireError(
                Reason.MALFORMED_PAYLOAD,
                f"{spec.name}: nta_len {ln}, must be {rule} {spec.size}",
                at,
                kind,
            )
        pos[at] = off + 4
        off += (ln + 3) & -4
    return pos


# --- flows: decode -------------------------------------------------------------------------
#: builds a flow from a message of a known layout, or says None (the general path decodes)
Builder = Callable[[bytes], "Flow | None"]


@dataclass(slots=True, frozen=True, eq=False)  # (eq=False: hashed by identity, a memo key)
class LazyLayout:
    """A plain layout (see :func:`_flow_builder`) whose messages a receiver may keep
    undecoded: a port protocol without NAT, zone or anything besides the original tuple,
    status, timeout, mark, protoinfo and synproxy.

    Why: most of what the peer sends a backup is such flows, and its external cache needs
    only their key, timeout and "everything else" as a whole (which it has seen before,
    for the whole burst).  ``keyed`` gives exactly that in two ``struct`` calls (unpack the
    message, pack the key), without the ~0.5 µs of building the flow's objects; ``build``
    builds them when wanted.  Its
    messages cannot fail to decode: their headers are those of a message walked before,
    and their values need no checking once the protocol byte is the layout's."""

    build: Builder
    #: the payload -> (cache key, timeout, every other value): the key is the flow's
    #: (:func:`nfsyncd._record.flow_key`, zone 0: the layout has no zone); the other
    #: values and the layout determine the flow but for its tuple and timeout
    keyed: Callable[[bytes], tuple[bytes, int | None, tuple[object, ...]]]
    proto: int
    proto_at: int
    has_status: bool
    has_timeout: bool


class LazyFlow(NamedTuple):
    """A CT message's payload of a :class:`LazyLayout`, not decoded yet."""

    payload: bytes
    layout: LazyLayout

    def flow(self) -> Flow:
        flow = self.layout.build(self.payload)
        assert flow is not None, "a lazy flow has its layout's protocol"
        return flow


class _Layouts:
    """Attribute offsets of message layouts seen before, so that most messages skip
    :func:`_walk`, and for the plainest layouts a generated decoder.

    A sender emits its flows in a few layouts (same attributes, same order, same lengths).
    The walk's outcome depends only on the message's size and its attribute headers, so a
    message whose headers are byte-for-byte those of a message walked before has the same
    offsets, relative to its start: one big-integer mask compare instead of a loop over
    every attribute.  Values are not checked here; what decodes them afterwards is the
    general code or (:func:`_flow_builder`) code generated to do exactly what it does."""

    __slots__ = ("attempts", "builder", "by_size", "kind", "lens", "table")

    def __init__(
        self,
        lens: list[int],
        table: tuple[AttrSpec, ...],
        kind: str,
        builder: Callable[[bytes, list[int]], Builder | LazyLayout | None] | None = None,
    ) -> None:
        self.lens = lens
        self.table = table
        self.kind = kind
        self.builder = builder
        #: message size -> each learned layout's (header mask, headers under it, attribute
        #: offsets, generated decoder or None); :func:`decode_flow_lazy` matches messages
        self.by_size: dict[int, list[tuple[int, int, list[int], Builder | LazyLayout | None]]] = {}
        self.attempts = 0

    def walk(self, msg: bytes) -> list[int]:
        """:func:`_walk` over all of ``msg``, remembering its layout (a bounded number)."""
        pos = _walk(msg, 0, len(msg), self.lens, self.table, self.kind)
        if self.attempts < _MAX_LAYOUTS:
            self.attempts += 1
            mask = bytearray(len(msg))
            off = 0
            while len(msg) - off > 4:  # the walk just accepted these headers
                mask[off : off + 4] = b"\xff\xff\xff\xff"
                off += (_unpack_hdr(msg, off)[0] + 3) & -4
            imask = int.from_bytes(mask, "big")
            expected = int.from_bytes(msg, "big") & imask
            build = None if self.builder is None else self.builder(msg, pos)
            self.by_size.setdefault(len(msg), []).append((imask, expected, pos, build))
        return pos

    def lazy_mask(self, msg: bytes) -> tuple[int, LazyLayout] | None:
        """When :func:`decode_flow_lazy` keeps ``msg`` lazy: its layout and the mask of
        every byte that decision depends on (the attribute headers and the protocol)."""
        value = int.from_bytes(msg, "big")
        for mask, expected, _pos, build in self.by_size.get(len(msg), ()):
            if value & mask == expected:  # the first that fits, as the decoder takes it
                if type(build) is LazyLayout and msg[build.proto_at] == build.proto:
                    return mask | 0xFF << 8 * (len(msg) - 1 - build.proto_at), build
                return None
        return None


#: layouts remembered per attribute table (a peer with ever-new layouts walks the rest)
_MAX_LAYOUTS: Final = 64

#: attributes a generated decoder handles, besides the address group of the flow's family
_PLAIN_ATTRS: Final = frozenset(
    (NTA_L4PROTO, NTA_PORT, NTA_STATUS, NTA_TIMEOUT, NTA_MARK, NTA_SPAT_PORT, NTA_DPAT_PORT,
     NTA_SYNPROXY, NTA_ZONE)
)  # fmt: skip
_PROTOINFO_ATTRS: Final[
    dict[int, tuple[type[TcpInfo | SctpInfo | DccpInfo] | None, tuple[int, ...]]]
] = {
    IPPROTO_TCP: (TcpInfo, (NTA_TCP_STATE, NTA_TCP_WSCALE_ORIG, NTA_TCP_WSCALE_REPL)),
    IPPROTO_SCTP: (SctpInfo, (NTA_SCTP_STATE, NTA_SCTP_VTAG_ORIG, NTA_SCTP_VTAG_REPL)),
    IPPROTO_DCCP: (DccpInfo, (NTA_DCCP_STATE, NTA_DCCP_ROLE)),
    IPPROTO_UDP: (None, ()),
}
#: struct code of each handled attribute's payload (NTA_SPAT/DPAT are swapped afterwards)
_PLAIN_CODES: Final = {
    NTA_L4PROTO: "B", NTA_PORT: "HH", NTA_STATUS: "I", NTA_TIMEOUT: "I", NTA_MARK: "I",
    NTA_SPAT_PORT: "H", NTA_DPAT_PORT: "H", NTA_SYNPROXY: "III", NTA_ZONE: "H",
    NTA_TCP_STATE: "B", NTA_TCP_WSCALE_ORIG: "B", NTA_TCP_WSCALE_REPL: "B",
    NTA_SCTP_STATE: "B", NTA_SCTP_VTAG_ORIG: "I", NTA_SCTP_VTAG_REPL: "I",
    NTA_DCCP_STATE: "B", NTA_DCCP_ROLE: "B",
}  # fmt: skip


def _flow_builder(msg: bytes, pos: list[int]) -> Builder | LazyLayout | None:
    """A decoder generated for the layout of ``msg`` and its protocol, doing what
    :func:`decode_flow` does for it, when that is simple: a port protocol, no master,
    labels, helper, sequence adjustment, ICMP fields or NAT address of the other family
    (anything else stays with :func:`decode_flow`).  It returns None for a message of the
    layout whose protocol differs (the general code then decodes it).  Simpler still
    (:class:`LazyLayout`): the decoder and a split of the values for a lazy receiver."""
    v6 = bool(pos[NTA_IPV6])
    group = NTA_IPV6 if v6 else NTA_IPV4
    snat, dnat = (NTA_SNAT_IPV6, NTA_DNAT_IPV6) if v6 else (NTA_SNAT_IPV4, NTA_DNAT_IPV4)
    proto = msg[pos[NTA_L4PROTO]] if pos[NTA_L4PROTO] else None
    if proto is None or (pos[NTA_IPV4] and pos[NTA_IPV6]) or proto not in _PROTOINFO_ATTRS:
        return None
    info_cls, info_attrs = _PROTOINFO_ATTRS[proto]
    present = {at for at, p in enumerate(pos) if p}
    if not present <= _PLAIN_ATTRS | {group, snat, dnat, *info_attrs}:
        return None
    size = 16 if v6 else 4
    codes = {**_PLAIN_CODES, group: f"{size}s{size}s", snat: f"{size}s", dnat: f"{size}s"}
    fmt, cursor, names = [">"], 0, {}
    for at in sorted(present, key=lambda a: pos[a]):
        if pos[at] < cursor:
            return None
        fmt.append(f"{pos[at] - cursor}x{codes[at]}")
        cursor = pos[at] + struct.calcsize(">" + codes[at])
        count = len(struct.unpack(">" + codes[at], bytes(struct.calcsize(">" + codes[at]))))
        names[at] = [f"a{at}_{i}" for i in range(count)]

    def val(at: int, i: int = 0) -> str:
        return names[at][i] if at in names else "None"

    def swapped(at: int) -> str:  # NTA_SPAT/DPAT are little-endian on the wire
        return f"((({names[at][0]} & 0xFF) << 8) | ({names[at][0]} >> 8))"

    sport, dport = val(NTA_PORT, 0), val(NTA_PORT, 1)
    rsport = swapped(NTA_DPAT_PORT) if NTA_DPAT_PORT in names else dport
    rdport = swapped(NTA_SPAT_PORT) if NTA_SPAT_PORT in names else sport
    src, dst = val(group, 0), val(group, 1)
    rsrc = val(dnat) if dnat in names else dst
    rdst = val(snat) if snat in names else src
    info = "None"
    if info_cls is not None and any(at in names for at in info_attrs):
        fields = [val(at) for at in info_attrs]
        fields += ["None"] * (len(info_cls._fields) - len(fields))
        info = f"_new(_{info_cls.__name__}, ({', '.join(fields)},))"
    synproxy = "None"
    if NTA_SYNPROXY in names:  # on the wire: its, isn, tsoff
        its, isn, tsoff = names[NTA_SYNPROXY]
        synproxy = f"_new(_Synproxy, ({isn}, {its}, {tsoff}))"
    flat = [n for at in sorted(names, key=lambda a: pos[a]) for n in names[at]]
    source = "\n".join(
        [
            "def build(msg):",
            f"    {', '.join(flat)}, = _unpack(msg)",
            f"    if {val(NTA_L4PROTO)} != {proto}:",
            "        return None",
            f"    orig = _new(_Tuple, ({src}, {dst}, {proto}, {sport}, {dport}) + _NONE4)",
            f"    reply = _new(_Tuple, ({rsrc}, {rdst}, {proto}, {rsport}, {rdport}) + _NONE4)",
            f"    return _new(_Flow, (orig, reply, {val(NTA_STATUS)}, {val(NTA_TIMEOUT)}, "
            f"{val(NTA_MARK)}, {val(NTA_ZONE)}, None, None, {info}, None, None, None, "
            f"{synproxy}) + _TAIL)",
        ]
    ) + "\n"  # fmt: skip
    ns: dict[str, object] = {
        "_new": _new, "_Tuple": Tuple, "_Flow": Flow, "_TcpInfo": TcpInfo, "_SctpInfo": SctpInfo,
        "_DccpInfo": DccpInfo, "_Synproxy": Synproxy, "_TAIL": _FLOW_TAIL, "_NONE4": (None,) * 4,
        "_unpack": struct.Struct("".join(fmt)).unpack_from,
    }  # fmt: skip
    lazy = NTA_PORT in names and not present & _NOT_LAZY
    if lazy:
        tail = [n for at in sorted(names, key=lambda a: pos[a]) if at not in _SPLIT_OUT
                for n in names[at]]  # fmt: skip
        source += "\n".join(
            [
                "def keyed(msg):",
                f"    {', '.join(flat)}, = _unpack(msg)",
                f"    return (_key(_first, {src}, {dst}, {proto}, {sport}, {dport}), "
                f"{val(NTA_TIMEOUT)}, ({''.join(n + ', ' for n in tail)}))",
            ]
        ) + "\n"  # fmt: skip
        ns["_first"], ns["_key"] = PORT_KEYS[v6]
    exec(compile(source, "<wire flow layout>", "exec"), ns)
    build: Builder = ns["build"]  # type: ignore[assignment]
    build.__source__ = source  # type: ignore[attr-defined]
    if not lazy:
        return build
    return LazyLayout(
        build,
        ns["keyed"],  # type: ignore[arg-type]
        proto=proto,
        proto_at=pos[NTA_L4PROTO],
        has_status=NTA_STATUS in names,
        has_timeout=NTA_TIMEOUT in names,
    )


#: attributes that keep a plain layout's messages from being split lazily
_NOT_LAZY: Final = frozenset(
    (NTA_SNAT_IPV4, NTA_DNAT_IPV4, NTA_SNAT_IPV6, NTA_DNAT_IPV6, NTA_SPAT_PORT, NTA_DPAT_PORT,
     NTA_ZONE)
)  # fmt: skip
#: what LazyLayout.keyed returns apart from the other values (in the key, or the timeout)
_SPLIT_OUT: Final = frozenset((NTA_IPV4, NTA_IPV6, NTA_PORT, NTA_TIMEOUT, NTA_L4PROTO))


def decode_flow(buf: bytes, start: int, end: int) -> tuple[Flow, Extra]:
    """A flow from the attributes in ``buf[start:end]`` (a CT message after its header).

    The reply tuple is the inverse of the original one with the NAT attributes applied.
    Raises :class:`WireError` for anything conntrackd would drop, and for messages with no
    usable original tuple (no address group, or no protocol), which are useless to us.
    """
    flow, extra = decode_flow_lazy(buf, start, end)
    if type(flow) is LazyFlow:
        return flow.flow(), extra
    return flow, extra  # type: ignore[return-value]


def decode_flow_lazy(buf: bytes, start: int, end: int) -> tuple[Flow | LazyFlow, Extra]:
    """:func:`decode_flow`, or the message kept as a :class:`LazyFlow` when its layout
    allows (the receiving side's hot path)."""
    buf = buf[start:end]  # offsets relative to the message: its layout's are reusable
    # a known layout: its headers under the layout's mask (inline: once per received flow)
    pos = None
    layouts = _CT_LAYOUTS.by_size.get(end - start)
    if layouts is not None:
        value = int.from_bytes(buf, "big")
        for mask, expected, offsets, build in layouts:  # noqa: B007 (build: after the break)
            if value & mask == expected:
                pos = offsets
                break
    if pos is None:
        pos = _CT_LAYOUTS.walk(buf)
    else:
        if type(build) is LazyLayout:
            if buf[build.proto_at] == build.proto:
                return _new(LazyFlow, (buf, build)), ()
        elif build is not None:
            flow = build(buf)  # type: ignore[operator]
            if flow is not None:
                return flow, ()
    # one local per attribute number (the table order): payload offset, 0 when absent
    (
        p_ipv4, p_ipv6, p_l4proto, p_port, p_tcp_state, p_status, p_timeout, p_mark,
        p_master_ipv4, p_master_ipv6, p_master_l4proto, p_master_port,
        p_snat_ipv4, p_dnat_ipv4, p_spat, p_dpat, p_seqadj,
        p_sctp_state, p_sctp_vtag_orig, p_sctp_vtag_repl, p_dccp_state, p_dccp_role,
        p_icmp_type, p_icmp_code, p_icmp_id, p_wscale_orig, p_wscale_repl,
        p_helper, p_labels, p_snat_ipv6, p_dnat_ipv6, p_synproxy, p_zone,
    ) = pos  # fmt: skip
    extra: list[tuple[int, bytes]] | None = None

    if p_ipv4:
        if p_ipv6:
            raise _malformed("both NTA_IPV4 and NTA_IPV6: the family is ambiguous", NTA_IPV6)
        size = 4
        src = buf[p_ipv4 : p_ipv4 + 4]
        dst = buf[p_ipv4 + 4 : p_ipv4 + 8]
    elif p_ipv6:
        size = 16
        src = buf[p_ipv6 : p_ipv6 + 16]
        dst = buf[p_ipv6 + 16 : p_ipv6 + 32]
    else:
        raise _malformed("no NTA_IPV4 or NTA_IPV6: the original tuple is missing")
    if not p_l4proto:
        raise _malformed("no NTA_L4PROTO: the original tuple is missing", NTA_L4PROTO)
    proto = buf[p_l4proto]
    icmp = proto in _ICMP_PROTOS

    sport = dport = itype = icode = iid = None
    if p_port:
        if icmp:
            extra = _extra(extra, buf, pos, (NTA_PORT,))
        else:
            sport, dport = _PAIR16(buf, p_port)
    if p_icmp_type or p_icmp_code or p_icmp_id:
        if icmp:
            itype = buf[p_icmp_type] if p_icmp_type else None
            icode = buf[p_icmp_code] if p_icmp_code else None
            iid = _LE16_AT(buf, p_icmp_id)[0] if p_icmp_id else None
        else:
            extra = _extra(extra, buf, pos, (NTA_ICMP_TYPE, NTA_ICMP_CODE, NTA_ICMP_ID))

    protoinfo: TcpInfo | SctpInfo | DccpInfo | None = None
    if p_tcp_state or p_wscale_orig or p_wscale_repl:
        if proto == IPPROTO_TCP:
            protoinfo = _new(
                TcpInfo,
                (
                    buf[p_tcp_state] if p_tcp_state else None,
                    buf[p_wscale_orig] if p_wscale_orig else None,
                    buf[p_wscale_repl] if p_wscale_repl else None,
                    None,
                    None,
                ),
            )
        else:
            extra = _extra(
                extra, buf, pos, (NTA_TCP_STATE, NTA_TCP_WSCALE_ORIG, NTA_TCP_WSCALE_REPL)
            )
    if p_sctp_state or p_sctp_vtag_orig or p_sctp_vtag_repl:
        if proto == IPPROTO_SCTP:
            protoinfo = _new(
                SctpInfo,
                (
                    buf[p_sctp_state] if p_sctp_state else None,
                    _U32(buf, p_sctp_vtag_orig)[0] if p_sctp_vtag_orig else None,
                    _U32(buf, p_sctp_vtag_repl)[0] if p_sctp_vtag_repl else None,
                ),
            )
        else:
            extra = _extra(
                extra, buf, pos, (NTA_SCTP_STATE, NTA_SCTP_VTAG_ORIG, NTA_SCTP_VTAG_REPL)
            )
    if p_dccp_state or p_dccp_role:
        if proto == IPPROTO_DCCP:
            protoinfo = _new(
                DccpInfo,
                (
                    buf[p_dccp_state] if p_dccp_state else None,
                    buf[p_dccp_role] if p_dccp_role else None,
                    None,
                ),
            )
        else:
            extra = _extra(extra, buf, pos, (NTA_DCCP_STATE, NTA_DCCP_ROLE))

    orig = _new(Tuple, (src, dst, proto, sport, dport, itype, icode, iid, None))

    # reply = inverse of orig, then NAT (conntrackd's NFCT_SOPT_SETUP_REPLY)
    rsrc, rdst, rsport, rdport = dst, src, dport, sport
    if size == 4:
        if p_snat_ipv4:
            rdst = buf[p_snat_ipv4 : p_snat_ipv4 + 4]
        if p_dnat_ipv4:
            rsrc = buf[p_dnat_ipv4 : p_dnat_ipv4 + 4]
        if p_snat_ipv6 or p_dnat_ipv6:
            extra = _extra(extra, buf, pos, (NTA_SNAT_IPV6, NTA_DNAT_IPV6))
    else:
        if p_snat_ipv6:
            rdst = buf[p_snat_ipv6 : p_snat_ipv6 + 16]
        if p_dnat_ipv6:
            rsrc = buf[p_dnat_ipv6 : p_dnat_ipv6 + 16]
        if p_snat_ipv4 or p_dnat_ipv4:
            extra = _extra(extra, buf, pos, (NTA_SNAT_IPV4, NTA_DNAT_IPV4))
    if icmp:
        if p_spat or p_dpat:
            extra = _extra(extra, buf, pos, (NTA_SPAT_PORT, NTA_DPAT_PORT))
        inv = orig.inverted()
        reply = _new(Tuple, (rsrc, rdst, proto, None, None, inv[5], inv[6], inv[7], None))
    else:
        if p_spat:
            rdport = _LE16_AT(buf, p_spat)[0]
        if p_dpat:
            rsport = _LE16_AT(buf, p_dpat)[0]
        reply = _new(Tuple, (rsrc, rdst, proto, rsport, rdport, None, None, None, None))

    status = _U32(buf, p_status)[0] if p_status else None
    timeout = _U32(buf, p_timeout)[0] if p_timeout else None
    mark = _U32(buf, p_mark)[0] if p_mark else None
    zone = _U16(buf, p_zone)[0] if p_zone else None

    master = None
    if p_master_ipv4 or p_master_ipv6 or p_master_l4proto or p_master_port:
        if p_master_ipv4 and p_master_ipv6:
            raise _malformed(
                "both NTA_MASTER_IPV4 and NTA_MASTER_IPV6: the family is ambiguous",
                NTA_MASTER_IPV6,
            )
        m = p_master_ipv4 or p_master_ipv6
        if m and p_master_l4proto:
            msize = 4 if p_master_ipv4 else 16
            msport, mdport = _PAIR16(buf, p_master_port) if p_master_port else (None, None)
            master = _new(
                Tuple,
                (
                    buf[m : m + msize],
                    buf[m + msize : m + 2 * msize],
                    buf[p_master_l4proto],
                    msport,
                    mdport,
                    None,
                    None,
                    None,
                    None,
                ),
            )
        else:  # an incomplete master tuple
            extra = _extra(
                extra,
                buf,
                pos,
                (NTA_MASTER_IPV4, NTA_MASTER_IPV6, NTA_MASTER_L4PROTO, NTA_MASTER_PORT),
            )

    seqadj_orig = seqadj_reply = None
    if p_seqadj:
        s = _SEQADJ_AT(buf, p_seqadj)
        seqadj_orig = _new(SeqAdj, s[:3])
        seqadj_reply = _new(SeqAdj, s[3:])

    helper = None
    if p_helper:
        ln = _unpack_hdr(buf, p_helper - 4)[0]
        helper = _name_from_wire(
            buf, p_helper, p_helper + ln - 4, NTA_HELPER_NAME, "NTA_HELPER_NAME"
        )

    labels = None
    if p_labels:
        labels = _labels_from_wire(buf, p_labels, _unpack_hdr(buf, p_labels - 4)[0] - 4)

    synproxy = None
    if p_synproxy:
        its, isn, tsoff = _3U32_AT(buf, p_synproxy)
        synproxy = _new(Synproxy, (isn, its, tsoff))

    flow = _new(
        Flow,
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
            *_FLOW_TAIL,
        ),
    )
    return flow, (tuple(extra) if extra else ())


def _extra(
    extra: list[tuple[int, bytes]] | None, buf: bytes, pos: list[int], attrs: Sequence[int]
) -> list[tuple[int, bytes]]:
    """Keep the raw payloads of ``attrs`` (those present) for the caller to inspect."""
    out = [] if extra is None else extra
    for at in attrs:
        a = pos[at]
        if a:
            out.append((at, buf[a : a + _unpack_hdr(buf, a - 4)[0] - 4]))
    return out


_CT_LAYOUTS: Final = _Layouts(_CT_LEN, CT_ATTRS, "ct", _flow_builder)


# --- flows and expectations: encode --------------------------------------------------------
class AttrEncoder:
    """Builds message payloads for one peer.

    ``peer_version`` is the peer's conntrackd release: attributes it does not know are left
    out, since it would drop the whole message (§1.10).  Leaving one out loses meaning only
    sometimes (a zone, labels, IPv6 NAT, a non-zero synproxy, an IPv6 expectation NAT): each
    such loss is counted in :attr:`omitted`, by attribute number, so that an operator can
    see that the peer needs an upgrade.  ``send_timeout`` is False when the sender has a
    CommitTimeout (conntrackd then sends no NTA_TIMEOUT / NTA_EXP_TIMEOUT);
    ``tcp_window_tracking`` sends the TCP window scales, as conntrackd does with
    ``TCPWindowTracking on``.

    Encoding never drops a whole object: a value that cannot be sent (a port above 65535,
    a helper name over conntrackd's 11 characters) raises ``ValueError`` naming the
    attribute.
    """

    __slots__ = (
        "_fast_head",
        "nta_max",
        "omitted",
        "peer_version",
        "send_timeout",
        "tcp_window_tracking",
    )

    def __init__(
        self,
        peer_version: PeerVersion = LATEST_PEER_VERSION,
        *,
        send_timeout: bool = True,
        tcp_window_tracking: bool = False,
    ) -> None:
        self.peer_version: PeerVersion = tuple(peer_version)
        self.nta_max = nta_max(self.peer_version)
        self.send_timeout = send_timeout
        self.tcp_window_tracking = tcp_window_tracking
        #: attribute number -> objects sent without it because the peer is too old
        self.omitted: dict[int, int] = {}
        #: whether a TCP flow's first attributes may come from one TCP_HEADS pack (the
        #: window scales would sit between them; a CommitTimeout leaves NTA_TIMEOUT out)
        self._fast_head = send_timeout and not tcp_window_tracking

    def _omit(self, atype: int) -> None:
        self.omitted[atype] = self.omitted.get(atype, 0) + 1

    # .. flows ..............................................................................
    def flow(self, flow: Flow) -> bytes:
        """The attributes of a CT message, in conntrackd's order (§1.7).

        One straight pass with a prebuilt ``struct`` per attribute shape, and the usual
        start of a TCP flow in a single one (:data:`TCP_HEADS`)."""
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
        ) = flow[:13]
        src, dst, proto, sport, dport, itype, icode, iid = orig[:8]
        out: list[bytes] | None = None
        if (
            self._fast_head
            and proto == IPPROTO_TCP
            and type(protoinfo) is TcpInfo
            and protoinfo[0] is not None
            and sport is not None
            and dport is not None
            and timeout is not None
            and mark is not None
            and len(src) == len(dst)
        ):
            head = TCP_HEADS.get(len(src))
            if head is not None:
                try:
                    out = [head(src, dst, status or 0, sport, dport, protoinfo[0], timeout, mark)]
                except struct.error:  # a value out of range: the attribute-wise path names it
                    out = None
        if out is None:
            out = self._head(src, dst, proto, sport, dport, itype, icode, iid, flow)
        v6 = len(src) == 16
        ap = out.append
        where = NTA_MARK
        try:
            if master is not None:
                where = NTA_MASTER_IPV4
                msrc, mdst, mproto, msport, mdport = master[:5]
                if len(msrc) == 4 and len(mdst) == 4:
                    ap(_H_MASTER_IPV4 + msrc + mdst)
                elif len(msrc) == 16 and len(mdst) == 16:
                    ap(_H_MASTER_IPV6 + msrc + mdst)
                else:
                    raise ValueError(
                        f"NTA_MASTER_IPV4/NTA_MASTER_IPV6: addresses of {len(msrc)} and "
                        f"{len(mdst)} bytes (need 4+4 or 16+16)"
                    )
                where = NTA_MASTER_L4PROTO
                ap(_A_U8(5, NTA_MASTER_L4PROTO, mproto))
                where = NTA_MASTER_PORT
                if msport is not None and mdport is not None:
                    ap(_A_PORTS(8, NTA_MASTER_PORT, msport, mdport))
            if reply is not None and (
                reply[0] != dst or reply[1] != src or reply[3] != dport or reply[4] != sport
            ):  # (the plain inverse, nearly every flow, needs no NAT attribute and no call)
                where = NTA_SNAT_IPV4
                self._nat(ap, v6, src, dst, sport, dport, proto, reply)
            where = NTA_NAT_SEQ_ADJ
            if seqadj_orig is not None and seqadj_reply is not None:
                ap(_A_SEQADJ(28, NTA_NAT_SEQ_ADJ, *seqadj_orig, *seqadj_reply))
            limit = self.nta_max
            if helper is not None:
                ap(_string(NTA_HELPER_NAME, helper, 16, "NTA_HELPER_NAME"))
            if labels is not None:
                words = _labels_payload(labels)
                if words is not None:
                    if limit > NTA_LABELS:
                        ap(_hdr(4 + len(words), NTA_LABELS) + words)
                    else:
                        self._omit(NTA_LABELS)
            where = NTA_SYNPROXY
            if synproxy is not None:
                if limit > NTA_SYNPROXY:
                    isn, its, tsoff = synproxy
                    ap(_A_3U32(16, NTA_SYNPROXY, its, isn, tsoff))
                elif synproxy != _ZERO_SYNPROXY:
                    self._omit(NTA_SYNPROXY)
            where = NTA_ZONE
            if zone is not None:
                if limit > NTA_ZONE:
                    ap(_A_U16(6, NTA_ZONE, zone))
                elif zone:
                    self._omit(NTA_ZONE)
        except (struct.error, TypeError) as exc:
            raise ValueError(f"{CT_ATTRS[where].name}: {exc}") from None
        return b"".join(out)

    def _head(
        self,
        src: bytes,
        dst: bytes,
        proto: int,
        sport: int | None,
        dport: int | None,
        itype: int | None,
        icode: int | None,
        iid: int | None,
        flow: Flow,
    ) -> list[bytes]:
        """The attributes from the address group to NTA_MARK, one by one (any flow)."""
        status, timeout, mark, protoinfo = flow[2], flow[3], flow[4], flow[8]
        size = len(src)
        if size == 4 and len(dst) == 4:
            out = [_H_IPV4 + src + dst]
        elif size == 16 and len(dst) == 16:
            out = [_H_IPV6 + src + dst]
        else:
            raise ValueError(
                f"NTA_IPV4/NTA_IPV6: addresses of {len(src)} and {len(dst)} bytes "
                "(need 4+4 or 16+16)"
            )
        ap = out.append
        where = NTA_STATUS
        try:
            ap(_A_U32(8, NTA_STATUS, status or 0))
            where = NTA_L4PROTO
            ap(_A_U8(5, NTA_L4PROTO, proto))
            if proto in _PORT_PROTOS:
                where = NTA_PORT
                if sport is not None and dport is not None:
                    ap(_A_PORTS(8, NTA_PORT, sport, dport))
                if proto == IPPROTO_TCP:
                    if type(protoinfo) is TcpInfo:
                        state, wso, wsr = protoinfo[:3]
                        where = NTA_TCP_STATE
                        if state is not None:
                            ap(_A_U8(5, NTA_TCP_STATE, state))
                        if self.tcp_window_tracking:
                            where = NTA_TCP_WSCALE_ORIG
                            if wso is not None:
                                ap(_A_U8(5, NTA_TCP_WSCALE_ORIG, wso))
                            where = NTA_TCP_WSCALE_REPL
                            if wsr is not None:
                                ap(_A_U8(5, NTA_TCP_WSCALE_REPL, wsr))
                elif proto == IPPROTO_SCTP:
                    if type(protoinfo) is SctpInfo:
                        state, vo, vr = protoinfo
                        where = NTA_SCTP_STATE
                        if state is not None:
                            ap(_A_U8(5, NTA_SCTP_STATE, state))
                        where = NTA_SCTP_VTAG_ORIG
                        if vo is not None:
                            ap(_A_U32(8, NTA_SCTP_VTAG_ORIG, vo))
                        where = NTA_SCTP_VTAG_REPL
                        if vr is not None:
                            ap(_A_U32(8, NTA_SCTP_VTAG_REPL, vr))
                elif proto == IPPROTO_DCCP and type(protoinfo) is DccpInfo:
                    state, role = protoinfo[:2]
                    where = NTA_DCCP_STATE
                    if state is not None:
                        ap(_A_U8(5, NTA_DCCP_STATE, state))
                    where = NTA_DCCP_ROLE
                    if role is not None:
                        ap(_A_U8(5, NTA_DCCP_ROLE, role))
            elif proto in _ICMP_PROTOS:
                where = NTA_ICMP_TYPE
                if itype is not None:
                    ap(_A_U8(5, NTA_ICMP_TYPE, itype))
                where = NTA_ICMP_CODE
                if icode is not None:
                    ap(_A_U8(5, NTA_ICMP_CODE, icode))
                where = NTA_ICMP_ID
                if iid is not None:
                    ap(_H_ICMP_ID + _LE16(iid))
            where = NTA_TIMEOUT
            if timeout is not None and self.send_timeout:
                ap(_A_U32(8, NTA_TIMEOUT, timeout))
            where = NTA_MARK
            if mark is not None:
                ap(_A_U32(8, NTA_MARK, mark))
        except (struct.error, TypeError) as exc:
            raise ValueError(f"{CT_ATTRS[where].name}: {exc}") from None
        return out

    def _nat(
        self,
        ap: Callable[[bytes], None],
        v6: bool,
        src: bytes,
        dst: bytes,
        sport: int | None,
        dport: int | None,
        proto: int,
        reply: Tuple,
    ) -> None:
        """SNAT/DNAT addresses and SPAT/DPAT ports: where the reply tuple differs from the
        plain inverse of the original one (§1.7)."""
        rsrc, rdst, _, rsport, rdport = reply[:5]
        if len(rsrc) != len(src) or len(rdst) != len(src):
            raise ValueError(
                f"reply tuple: addresses of {len(rsrc)} and {len(rdst)} bytes in a flow "
                f"whose original addresses have {len(src)}"
            )
        if v6:
            if rdst != src or rsrc != dst:
                if self.nta_max > NTA_DNAT_IPV6:
                    if rdst != src:
                        ap(_H_SNAT_IPV6 + rdst)
                    if rsrc != dst:
                        ap(_H_DNAT_IPV6 + rsrc)
                else:
                    if rdst != src:
                        self._omit(NTA_SNAT_IPV6)
                    if rsrc != dst:
                        self._omit(NTA_DNAT_IPV6)
        else:
            if rdst != src:
                ap(_H_SNAT_IPV4 + rdst)
            if rsrc != dst:
                ap(_H_DNAT_IPV4 + rsrc)
        if proto in _PORT_PROTOS:
            try:
                if rdport is not None and rdport != sport:
                    ap(_H_SPAT + _LE16(rdport))
                if rsport is not None and rsport != dport:
                    ap(_H_DPAT + _LE16(rsport))
            except struct.error as exc:
                raise ValueError(f"NTA_SPAT_PORT/NTA_DPAT_PORT: {exc}") from None

    # .. expectations .......................................................................
    def expect(self, exp: Expectation) -> bytes:
        """The attributes of an EXP message, in conntrackd's order (§1.8)."""
        master, tup, mask, timeout, _id, helper, _zone, flags, klass, nat, fn = exp
        out: list[bytes] = []
        ap = out.append
        ports = master[2] in _PORT_PROTOS  # conntrackd picks the port builder by the master
        where = NTA_EXP_MASTER_IPV4
        try:
            for t, base in ((master, NTA_EXP_MASTER_IPV4), (tup, NTA_EXP_EXPECT_IPV4),
                            (mask, NTA_EXP_MASK_IPV4)):  # fmt: skip
                where = base
                ap(_exp_group(t, base))
                where = base + 2
                ap(_A_U8(5, base + 2, t[2]))
                where = base + 3
                if ports and t[3] is not None and t[4] is not None:
                    ap(_A_PORTS(8, base + 3, t[3], t[4]))
            where = NTA_EXP_TIMEOUT
            if timeout is not None and self.send_timeout:
                ap(_A_U32(8, NTA_EXP_TIMEOUT, timeout))
            where = NTA_EXP_FLAGS
            ap(_A_U32(8, NTA_EXP_FLAGS, flags or 0))
            where = NTA_EXP_CLASS
            if klass is not None:
                ap(_A_U32(8, NTA_EXP_CLASS, klass))
            if nat is not None:
                where = NTA_EXP_NAT_IPV4
                ndir, nt = nat
                if len(nt[0]) == 4 and len(nt[1]) == 4:
                    ap(_hdr(12, NTA_EXP_NAT_IPV4) + nt[0] + nt[1])
                    where = NTA_EXP_NAT_L4PROTO
                    ap(_A_U8(5, NTA_EXP_NAT_L4PROTO, nt[2]))
                    where = NTA_EXP_NAT_PORT
                    if nt[2] in _PORT_PROTOS and nt[3] is not None and nt[4] is not None:
                        ap(_A_PORTS(8, NTA_EXP_NAT_PORT, nt[3], nt[4]))
                    where = NTA_EXP_NAT_DIR
                    ap(_A_U32(8, NTA_EXP_NAT_DIR, ndir))
                elif len(nt[0]) == 16 and len(nt[1]) == 16:
                    self._omit(NTA_EXP_NAT_IPV4)  # conntrackd has no IPv6 variant
                else:
                    raise ValueError(
                        f"NTA_EXP_NAT_IPV4: addresses of {len(nt[0])} and {len(nt[1])} bytes "
                        "(need 4+4 or 16+16)"
                    )
            if helper is not None:
                ap(_string(NTA_EXP_HELPER_NAME, helper, 16, "NTA_EXP_HELPER_NAME"))
            if fn is not None:
                ap(_string(NTA_EXP_FN, fn, 32, "NTA_EXP_FN"))
        except (struct.error, TypeError) as exc:
            raise ValueError(f"{EXP_ATTRS[where].name}: {exc}") from None
        return b"".join(out)


def _exp_group(t: Tuple, v4: int) -> bytes:
    """The address group of one expectation tuple: ``v4`` or the IPv6 number after it."""
    src, dst = t[0], t[1]
    if len(src) == 4 and len(dst) == 4:
        return _hdr(12, v4) + src + dst
    if len(src) == 16 and len(dst) == 16:
        return _hdr(36, v4 + 1) + src + dst
    raise ValueError(
        f"{EXP_ATTRS[v4].name}/{EXP_ATTRS[v4 + 1].name}: addresses of {len(src)} and "
        f"{len(dst)} bytes (need 4+4 or 16+16)"
    )


# --- expectations: decode ------------------------------------------------------------------
def _exp_tuple(
    buf: bytes, pos: list[int], base: int, what: str
) -> Tuple:  # base: the group's IPV4 number; IPV6, L4PROTO, PORT follow it
    a4 = pos[base]
    a6 = pos[base + 1]
    if a4 and a6:
        raise _malformed(
            f"both {EXP_ATTRS[base].name} and {EXP_ATTRS[base + 1].name}: the family is ambiguous",
            base + 1,
        )
    a = a4 or a6
    if not a:
        raise _malformed(f"no {EXP_ATTRS[base].name} or {EXP_ATTRS[base + 1].name}: no {what}")
    size = 4 if a4 else 16
    p = pos[base + 2]
    if not p:
        raise _malformed(f"no {EXP_ATTRS[base + 2].name}: no {what}", base + 2)
    q = pos[base + 3]
    sport, dport = _PAIR16(buf, q) if q else (None, None)
    return _new(
        Tuple,
        (buf[a : a + size], buf[a + size : a + 2 * size], buf[p], sport, dport) + (None,) * 4,
    )


def decode_expect(buf: bytes, start: int, end: int) -> tuple[Expectation, Extra]:
    """An expectation from the attributes in ``buf[start:end]`` (an EXP message after its
    header).  The master, expected and mask tuples are required; a NAT tuple needs its
    address, protocol and direction (a partial one goes to the extra tuple)."""
    pos = _walk(buf, start, end, _EXP_LEN, EXP_ATTRS, "exp")
    master = _exp_tuple(buf, pos, NTA_EXP_MASTER_IPV4, "master tuple")
    tup = _exp_tuple(buf, pos, NTA_EXP_EXPECT_IPV4, "expected tuple")
    mask = _exp_tuple(buf, pos, NTA_EXP_MASK_IPV4, "mask")
    a = pos[NTA_EXP_TIMEOUT]
    timeout = _U32(buf, a)[0] if a else None
    a = pos[NTA_EXP_FLAGS]
    flags = _U32(buf, a)[0] if a else None
    a = pos[NTA_EXP_CLASS]
    klass = _U32(buf, a)[0] if a else None
    nat = None
    extra: list[tuple[int, bytes]] | None = None
    na, nport, nproto, ndir = (
        pos[NTA_EXP_NAT_IPV4],
        pos[NTA_EXP_NAT_PORT],
        pos[NTA_EXP_NAT_L4PROTO],
        pos[NTA_EXP_NAT_DIR],
    )
    if na and nproto and ndir:
        nsport, ndport = _PAIR16(buf, nport) if nport else (None, None)
        nt = _new(
            Tuple,
            (buf[na : na + 4], buf[na + 4 : na + 8], buf[nproto], nsport, ndport) + (None,) * 4,
        )
        nat = _new(ExpectNat, (_U32(buf, ndir)[0], nt))
    elif na or nport or nproto or ndir:
        extra = _extra(
            extra,
            buf,
            pos,
            (NTA_EXP_NAT_IPV4, NTA_EXP_NAT_PORT, NTA_EXP_NAT_L4PROTO, NTA_EXP_NAT_DIR),
        )
    helper = fn = None
    a = pos[NTA_EXP_HELPER_NAME]
    if a:
        ln = _unpack_hdr(buf, a - 4)[0]
        helper = _name_from_wire(buf, a, a + ln - 4, NTA_EXP_HELPER_NAME, "NTA_EXP_HELPER_NAME")
    a = pos[NTA_EXP_FN]
    if a:
        ln = _unpack_hdr(buf, a - 4)[0]
        fn = _name_from_wire(buf, a, a + ln - 4, NTA_EXP_FN, "NTA_EXP_FN")
    exp = _new(Expectation, (master, tup, mask, timeout, None, helper, None, flags, klass, nat, fn))
    return exp, (tuple(extra) if extra else ())
