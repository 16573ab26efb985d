"""conntrackd's sync attributes (nfsyncd/sync/attrs.py): flows and expectations <-> TLVs.

What these tests guarantee:

* the annotated messages and fragments of reference/conntrackd.md §1.7-1.9 decode to the
  flows/expectations they describe and encode back byte for byte (emission order, sizes,
  padding, the little-endian NAT ports and ICMP id);
* any flow or expectation decodes back to exactly what the wire can carry (a model of
  that is written out here, independently of the codec: :func:`carried`), and re-encodes
  to the same bytes;
* an encoder for conntrackd release X never emits an attribute X does not know, for every
  release of the compatibility matrix (§1.10), and counts what it had to leave out;
* decoding rejects what conntrackd rejects, with the reason it would count, and keeps what
  the model cannot hold in ``extra`` instead of losing it silently;
* bad values to encode raise ``ValueError`` naming the attribute.
"""

from __future__ import annotations

import socket
import string
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfsyncd.model import (
    IPPROTO_DCCP,
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPPROTO_UDPLITE,
    DccpInfo,
    Expectation,
    ExpectNat,
    Flow,
    SctpInfo,
    SeqAdj,
    Synproxy,
    TcpFlags,
    TcpInfo,
    Tuple,
)
from nfsyncd.sync import (
    Encoder,
    Reason,
    WireError,
    decode_expect,
    decode_flow,
    decode_message,
    nta_max,
    parse_version,
)
from nfsyncd.sync import attrs as A

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ip(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def h(text: str) -> bytes:
    """Hex with spaces and line breaks, as the reference prints dumps."""
    return bytes.fromhex("".join(text.split()))


def tlvs(payload: bytes) -> list[tuple[int, bytes]]:
    """An independent TLV walker: (attribute number, payload) in order."""
    out = []
    off = 0
    while len(payload) - off > 4:
        ln, at = struct.unpack_from(">HH", payload, off)
        assert ln >= 4
        out.append((at, payload[off + 4 : off + ln]))
        off += (ln + 3) & ~3
    assert off == len(payload), "attributes must be padded to 4 bytes"
    return out


def ids(payload: bytes) -> list[int]:
    return [at for at, _ in tlvs(payload)]


def dec_flow(payload: bytes) -> Flow:
    flow, extra = decode_flow(payload, 0, len(payload))
    assert extra == ()
    return flow


def dec_exp(payload: bytes) -> Expectation:
    exp, extra = decode_expect(payload, 0, len(payload))
    assert extra == ()
    return exp


ENC = Encoder()

# --- golden: the annotated messages (§1.8, §1.9) -------------------------------------------

CT_GOLDEN = h("""
10 00 00 54 6b 02 36 35
00 0c 00 00 0a010101 0a020202
00 08 00 05 0000000c
00 05 00 02 06 000000
00 08 00 03 0457 0050
00 05 00 04 03 000000
00 08 00 06 0000012c
00 08 00 07 00000007
00 10 00 1f 000000000000000000000000
""")
CT_GOLDEN_ORIG = Tuple(ip("10.1.1.1"), ip("10.2.2.2"), IPPROTO_TCP, 1111, 80)
CT_GOLDEN_FLOW = Flow(
    CT_GOLDEN_ORIG,
    Tuple(ip("10.2.2.2"), ip("10.1.1.1"), IPPROTO_TCP, 80, 1111),
    status=0x0C,
    timeout=300,
    mark=7,
    protoinfo=TcpInfo(state=3),
    synproxy=Synproxy(0, 0, 0),
)

EXP_GOLDEN = h("""
13 00 00 7c 6b 02 36 b3
00 0c 00 00  7f000001 7f000001
00 05 00 02  06 000000
00 08 00 03  dbfe 0849
00 0c 00 04  7f000001 7f000001
00 05 00 06  06 000000
00 08 00 07  0000 4e20
00 0c 00 08  ffffffff ffffffff
00 05 00 0a  06 000000
00 08 00 0b  0000 ffff
00 08 00 0c  0000012c
00 08 00 0d  00000000
00 08 00 0e  00000000
00 08 00 13  66 74 70 00
""")
LO = ip("127.0.0.1")
EXP_GOLDEN_EXP = Expectation(
    master=Tuple(LO, LO, IPPROTO_TCP, 56318, 2121),
    tuple=Tuple(LO, LO, IPPROTO_TCP, 0, 20000),
    mask=Tuple(ip("255.255.255.255"), ip("255.255.255.255"), IPPROTO_TCP, 0, 0xFFFF),
    timeout=300,
    flags=0,
    klass=0,
    helper="ftp",
)


def test_golden_ct_message_decodes() -> None:
    assert len(CT_GOLDEN) == 84  # "IPv4 TCP flow 84 B" (§1.4)
    assert dec_flow(CT_GOLDEN[8:]) == CT_GOLDEN_FLOW


def test_golden_ct_message_encodes_byte_for_byte() -> None:
    assert ENC.flow(CT_GOLDEN_FLOW) == CT_GOLDEN[8:]
    assert ENC.flow_message(0, CT_GOLDEN_FLOW, 0x6B023635) == CT_GOLDEN


def test_golden_exp_message_both_ways() -> None:
    assert len(EXP_GOLDEN) == 124  # "expectation 124 B"
    assert dec_exp(EXP_GOLDEN[8:]) == EXP_GOLDEN_EXP
    assert ENC.expect_message(3, EXP_GOLDEN_EXP, 0x6B0236B3) == EXP_GOLDEN
    assert decode_message(EXP_GOLDEN).obj == EXP_GOLDEN_EXP


# --- golden: the observed fragments (§1.9), assembled in conntrackd's order ----------------

CLIENT, SERVER = ip("198.18.0.1"), ip("198.18.1.2")


def test_snat_fragments() -> None:
    """SNAT 192.0.2.1:40000 (§1.9): the port is little-endian on the wire."""
    orig = Tuple(CLIENT, SERVER, IPPROTO_UDP, 5000, 53)
    reply = Tuple(SERVER, ip("192.0.2.1"), IPPROTO_UDP, 53, 40000)
    flow = Flow(orig, reply, status=0x198, timeout=30)
    expected = h(f"""
        000c0000 {CLIENT.hex()} {SERVER.hex()}
        00080005 00000198
        00050002 11000000
        00080003 13880035
        00080006 0000001e
        0008000c c0000201
        0006000e 409c0000
    """)
    assert ENC.flow(flow) == expected
    assert dec_flow(expected) == flow


def test_dnat_fragments() -> None:
    """DNAT 192.0.2.9:5353 (§1.9)."""
    orig = Tuple(CLIENT, SERVER, IPPROTO_UDP, 5000, 53)
    reply = Tuple(ip("192.0.2.9"), CLIENT, IPPROTO_UDP, 5353, 5000)
    flow = Flow(orig, reply, status=0x1A8, timeout=30)
    expected = h(f"""
        000c0000 {CLIENT.hex()} {SERVER.hex()}
        00080005 000001a8
        00050002 11000000
        00080003 13880035
        00080006 0000001e
        0008000d c0000209
        0006000f e9140000
    """)
    assert ENC.flow(flow) == expected
    assert dec_flow(expected) == flow


def test_snat_and_dnat_order() -> None:
    """Both NATs: SNAT, DNAT, then SPAT, DPAT (§1.7 emission order)."""
    orig = Tuple(CLIENT, SERVER, IPPROTO_TCP, 5000, 80)
    reply = Tuple(ip("192.0.2.9"), ip("192.0.2.1"), IPPROTO_TCP, 5353, 40000)
    payload = ENC.flow(Flow(orig, reply, status=0))
    assert ids(payload) == [0, 5, 2, 3, 12, 13, 14, 15]
    assert dec_flow(payload).reply == reply


def test_icmp_fragments() -> None:
    """ICMP echo id 4660: TYPE, CODE, ID (little-endian), and no NTA_PORT (§1.9)."""
    orig = Tuple(CLIENT, SERVER, IPPROTO_ICMP, icmp_type=8, icmp_code=0, icmp_id=4660)
    flow = Flow(orig, orig.inverted(), status=0x8, timeout=30)
    expected = h(f"""
        000c0000 {CLIENT.hex()} {SERVER.hex()}
        00080005 00000008
        00050002 01000000
        00050016 08000000
        00050017 00000000
        00060018 34120000
        00080006 0000001e
    """)
    assert ENC.flow(flow) == expected
    decoded = dec_flow(expected)
    assert decoded == flow
    assert decoded.reply is not None and decoded.reply.icmp_type == 0  # echo reply


def test_icmpv6_reply_type() -> None:
    orig = Tuple(ip("2001:db8::1"), ip("2001:db8::2"), IPPROTO_ICMPV6, None, None, 128, 0, 7)
    flow = Flow(orig, orig.inverted(), status=0)
    decoded = dec_flow(ENC.flow(flow))
    assert decoded.reply is not None and decoded.reply.icmp_type == 129
    assert decoded == flow


def test_zone_and_helper_fragments() -> None:
    """Zone 7 and helper "ftp" (§1.9), after NAT_SEQ_ADJ and before nothing else."""
    flow = Flow(CT_GOLDEN_ORIG, CT_GOLDEN_FLOW.reply, status=0x200E, zone=7, helper="ftp")
    payload = ENC.flow(flow)
    assert payload.endswith(h("0008001b 66747000 00060020 00070000"))
    assert dec_flow(payload) == flow


def test_labels_words_are_big_endian_and_trimmed() -> None:
    """Bit b of word i = label 32*i+b; word count = highest bit / 32 + 1 (§1.7)."""
    if struct.pack("=I", 1) != struct.pack("<I", 1):
        pytest.skip("the model's label bitmap is in host order; this test assumes LE")
    labels = (1 | (1 << 33)).to_bytes(16, "little")  # labels 0 and 33
    flow = Flow(CT_GOLDEN_ORIG, status=0, labels=labels)
    payload = ENC.flow(flow)
    assert (A.NTA_LABELS, h("00000001 00000002")) in tlvs(payload)
    assert dec_flow(payload).labels == labels
    # all-zero labels are not sent (conntrackd: "some label bit set")
    assert A.NTA_LABELS not in ids(ENC.flow(flow._replace(labels=bytes(16))))


def test_labels_longer_than_the_kernels() -> None:
    labels = bytes(20) + b"\x80" + bytes(3)  # label 167
    decoded = dec_flow(ENC.flow(Flow(CT_GOLDEN_ORIG, status=0, labels=labels)))
    assert decoded.labels == labels


def test_seqadj_and_synproxy_field_order() -> None:
    """NAT_SEQ_ADJ: orig then reply, each correction_pos, offset_before, offset_after;
    SYNPROXY: its, isn, tsoff (the model's Synproxy is isn, its, tsoff)."""
    flow = Flow(
        CT_GOLDEN_ORIG,
        status=0,
        seqadj_orig=SeqAdj(1, 2, 3),
        seqadj_reply=SeqAdj(4, 5, 6),
        synproxy=Synproxy(isn=7, its=8, tsoff=9),
    )
    attrs = dict(tlvs(ENC.flow(flow)))
    assert attrs[A.NTA_NAT_SEQ_ADJ] == struct.pack(">6I", 1, 2, 3, 4, 5, 6)
    assert attrs[A.NTA_SYNPROXY] == struct.pack(">3I", 8, 7, 9)
    assert dec_flow(ENC.flow(flow)).synproxy == Synproxy(isn=7, its=8, tsoff=9)


def test_window_scales_only_with_window_tracking() -> None:
    flow = CT_GOLDEN_FLOW._replace(protoinfo=TcpInfo(3, 7, 9, TcpFlags(1, 1), TcpFlags(2, 2)))
    assert ids(ENC.flow(flow)) == [0, 5, 2, 3, 4, 6, 7, 31]
    tracking = Encoder(tcp_window_tracking=True)
    payload = tracking.flow(flow)
    assert ids(payload) == [0, 5, 2, 3, 4, 25, 26, 6, 7, 31]
    assert dec_flow(payload).protoinfo == TcpInfo(3, 7, 9)  # TCP flags are never carried


def test_sctp_and_dccp_blocks() -> None:
    sctp = Flow(Tuple(CLIENT, SERVER, IPPROTO_SCTP, 1, 2), status=0,
                protoinfo=SctpInfo(3, 0xDEADBEEF, 0x01020304))  # fmt: skip
    payload = ENC.flow(sctp)
    assert ids(payload) == [0, 5, 2, 3, 17, 18, 19]
    assert dict(tlvs(payload))[18] == h("deadbeef")
    assert dec_flow(payload).protoinfo == SctpInfo(3, 0xDEADBEEF, 0x01020304)
    dccp = Flow(Tuple(CLIENT, SERVER, IPPROTO_DCCP, 1, 2), status=0,
                protoinfo=DccpInfo(4, 1, 123456))  # fmt: skip
    payload = ENC.flow(dccp)
    assert ids(payload) == [0, 5, 2, 3, 20, 21]
    assert dec_flow(payload).protoinfo == DccpInfo(4, 1, None)


def test_master_tuple() -> None:
    master = Tuple(CLIENT, SERVER, IPPROTO_TCP, 40000, 21)
    flow = Flow(Tuple(SERVER, CLIENT, IPPROTO_TCP, 20, 50000), status=0x8, master=master)
    payload = ENC.flow(flow)
    assert ids(payload) == [0, 5, 2, 3, 8, 10, 11]
    assert dec_flow(payload).master == master


def test_protocols_without_a_port_builder_send_only_l4proto() -> None:
    """GRE keys and UDP-Lite ports are not carried (§1.7 "Not carried")."""
    for proto in (IPPROTO_GRE, IPPROTO_UDPLITE, 115):
        orig = Tuple(CLIENT, SERVER, proto, 0x1234, 0x5678)
        payload = ENC.flow(Flow(orig, orig.inverted(), status=0))
        assert ids(payload) == [0, 5, 2]
        assert dec_flow(payload).orig == Tuple(CLIENT, SERVER, proto)


def test_sender_with_commit_timeout_sends_no_timeout() -> None:
    enc = Encoder(send_timeout=False)
    assert A.NTA_TIMEOUT not in ids(enc.flow(CT_GOLDEN_FLOW))
    assert A.NTA_EXP_TIMEOUT not in ids(enc.expect(EXP_GOLDEN_EXP))


def test_status_and_exp_flags_are_always_sent() -> None:
    """STATUS and EXP_FLAGS are "always" (§1.7, §1.8): 0 when the model has none."""
    assert dict(tlvs(ENC.flow(Flow(CT_GOLDEN_ORIG))))[A.NTA_STATUS] == bytes(4)
    exp = EXP_GOLDEN_EXP._replace(flags=None)
    assert dict(tlvs(ENC.expect(exp)))[A.NTA_EXP_FLAGS] == bytes(4)


def test_expectation_nat_order_and_ipv6_nat_is_dropped() -> None:
    nat = ExpectNat(1, Tuple(ip("192.0.2.1"), LO, IPPROTO_TCP, 0, 2000))
    exp = EXP_GOLDEN_EXP._replace(nat=nat, fn="nat-follow-master")
    payload = ENC.expect(exp)
    assert ids(payload) == [0, 2, 3, 4, 6, 7, 8, 10, 11, 12, 13, 14, 15, 17, 16, 18, 19, 20]
    assert dec_exp(payload) == exp
    enc = Encoder()
    v6nat = ExpectNat(0, Tuple(ip("2001:db8::1"), ip("2001:db8::2"), IPPROTO_TCP, 1, 2))
    payload = enc.expect(exp._replace(nat=v6nat))
    assert not {15, 16, 17, 18} & set(ids(payload))
    assert enc.omitted == {A.NTA_EXP_NAT_IPV4: 1}


def test_expectation_ports_follow_the_masters_protocol() -> None:
    """PPTP: a TCP master expects GRE; the GRE keys go in EXPECT_PORT/MASK_PORT because the
    master is TCP (the port builder is chosen by the master's protocol, §1.8)."""
    exp = Expectation(
        master=Tuple(CLIENT, SERVER, IPPROTO_TCP, 40000, 1723),
        tuple=Tuple(SERVER, CLIENT, IPPROTO_GRE, 0, 0x1234),
        mask=Tuple(ip("255.255.255.255"), ip("255.255.255.255"), IPPROTO_GRE, 0, 0xFFFF),
        timeout=60,
        flags=0,
    )
    payload = ENC.expect(exp)
    assert ids(payload) == [0, 2, 3, 4, 6, 7, 8, 10, 11, 12, 13]
    assert dec_exp(payload) == exp
    icmp_master = exp._replace(master=Tuple(CLIENT, SERVER, IPPROTO_ICMP, None, None, 8, 0, 1))
    assert not {3, 7, 11} & set(ids(ENC.expect(icmp_master)))


def test_expectation_ipv6() -> None:
    a, b = ip("2001:db8::1"), ip("2001:db8::2")
    ones = b"\xff" * 16
    exp = Expectation(
        Tuple(a, b, IPPROTO_TCP, 1000, 21),
        Tuple(a, b, IPPROTO_TCP, 0, 3000),
        Tuple(ones, ones, IPPROTO_TCP, 0, 0xFFFF),
        timeout=10,
        flags=2,
        klass=1,
        helper="ftp",
    )
    payload = ENC.expect(exp)
    assert ids(payload)[:8] == [1, 2, 3, 5, 6, 7, 9, 10]
    assert dec_exp(payload) == exp


# --- round trips ---------------------------------------------------------------------------

PORT_PROTOS = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_DCCP)
ICMP_PROTOS = (IPPROTO_ICMP, IPPROTO_ICMPV6)
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)


def opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def tuples_of(size: int) -> st.SearchStrategy[Tuple]:
    addr = st.binary(min_size=size, max_size=size)
    icmp = IPPROTO_ICMP if size == 4 else IPPROTO_ICMPV6
    with_ports = st.builds(
        Tuple,
        addr,
        addr,
        st.sampled_from((*PORT_PROTOS, IPPROTO_GRE, IPPROTO_UDPLITE)),
        opt(u16),
        opt(u16),
        zone=opt(u16),
    )
    icmps = st.builds(
        Tuple, addr, addr, st.just(icmp), st.none(), st.none(), opt(u8), opt(u8), opt(u16)
    )
    other = st.builds(Tuple, addr, addr, u8, opt(u16), opt(u16), opt(u8), opt(u8), opt(u16))
    return with_ports | icmps | other


def nat_replies(orig: Tuple, size: int) -> st.SearchStrategy[Tuple | None]:
    """The reply tuple of a flow: plain inverse, NATed in either or both directions, or
    anything of the same family (odd shapes the wire cannot fully carry)."""
    addr = st.binary(min_size=size, max_size=size)
    inv = orig.inverted()
    natted = st.builds(
        lambda src, dst, sport, dport: inv._replace(
            src=src or inv.src,
            dst=dst or inv.dst,
            sport=inv.sport if sport is None else sport,
            dport=inv.dport if dport is None else dport,
        ),
        opt(addr),
        opt(addr),
        opt(u16),
        opt(u16),
    )
    return st.none() | st.just(inv) | natted | tuples_of(size)


tcp_infos = st.builds(
    TcpInfo, opt(u8), opt(u8), opt(u8), opt(st.builds(TcpFlags, u8, u8)), opt(st.just(None))
)
protoinfos = (
    tcp_infos
    | st.builds(SctpInfo, opt(u8), opt(u32), opt(u32))
    | st.builds(DccpInfo, opt(u8), opt(u8), opt(u64))
)
#: conntrackd's limit: 11 characters plus the NUL in 16 bytes with the header
helpers = st.text(string.ascii_letters + string.digits + "-_.", max_size=11)
labels = st.binary(max_size=40)


@st.composite
def flows(draw: st.DrawFn, size: int | None = None) -> Flow:
    size = size or draw(st.sampled_from((4, 16)))
    orig = draw(tuples_of(size))
    return Flow(
        orig,
        draw(nat_replies(orig, size)),
        status=draw(opt(u32)),
        timeout=draw(opt(u32)),
        mark=draw(opt(u32)),
        zone=draw(opt(u16)),
        labels=draw(opt(labels)),
        helper=draw(opt(helpers)),
        protoinfo=draw(opt(protoinfos)),
        master=draw(opt(tuples_of(draw(st.sampled_from((4, 16)))))),
        seqadj_orig=draw(opt(st.builds(SeqAdj, u32, u32, u32))),
        seqadj_reply=draw(opt(st.builds(SeqAdj, u32, u32, u32))),
        synproxy=draw(opt(st.builds(Synproxy, u32, u32, u32))),
        secmark=draw(opt(u32)),
        id=draw(opt(u32)),
        use=draw(opt(u32)),
    )


@st.composite
def expectations(draw: st.DrawFn) -> Expectation:
    size = draw(st.sampled_from((4, 16)))
    tup = tuples_of(size)
    nat_size = draw(st.sampled_from((4, 4, 16)))
    return Expectation(
        draw(tup),
        draw(tup),
        draw(tup),
        timeout=draw(opt(u32)),
        id=draw(opt(u32)),
        helper=draw(opt(helpers)),
        zone=draw(opt(u16)),
        flags=draw(opt(u32)),
        klass=draw(opt(u32)),
        nat=draw(opt(st.builds(ExpectNat, u32, tuples_of(nat_size)))),
        fn=draw(opt(st.text(string.ascii_letters + "-_", max_size=27))),
    )


PEER_VERSIONS = [
    (1, 2, 0), (1, 3, 0), (1, 4, 0), (1, 4, 1), (1, 4, 2), (1, 4, 3), (1, 4, 4), (1, 4, 5),
    (1, 4, 6), (1, 4, 7), (1, 4, 8), (1, 4, 9),
]  # fmt: skip


def wire_labels(value: bytes | None) -> bytes | None:
    """What the receiver's bitmap looks like: whole words up to the highest set one,
    at least the kernel's 16 bytes; None when no bit is set."""
    if not value or not any(value):
        return None
    value = value + bytes(-len(value) % 4)
    while not any(value[-4:]):
        value = value[:-4]
    return value + bytes(max(0, 16 - len(value)))


def carried(flow: Flow, enc: Encoder) -> Flow:
    """The flow a receiver rebuilds from what ``enc`` sends: an independent statement of
    §1.7's rules (which attributes exist, when they are sent, and how the reply tuple is
    rebuilt from the original tuple and the NAT attributes)."""
    o = flow.orig
    proto = o.proto
    icmp = proto in ICMP_PROTOS
    ports = proto in PORT_PROTOS and o.sport is not None and o.dport is not None
    sport, dport = (o.sport, o.dport) if ports else (None, None)
    if icmp:
        orig = Tuple(o.src, o.dst, proto, None, None, o.icmp_type, o.icmp_code, o.icmp_id)
    else:
        orig = Tuple(o.src, o.dst, proto, sport, dport)
    inv = orig.inverted()
    rsrc, rdst, rsport, rdport = inv.src, inv.dst, inv.sport, inv.dport
    r = flow.reply
    if r is not None:
        nat_ok = len(o.src) == 4 or enc.peer_version >= (1, 4, 4)
        if nat_ok:
            rsrc, rdst = r.src, r.dst
        if proto in PORT_PROTOS:
            if r.dport is not None and r.dport != o.sport:
                rdport = r.dport
            if r.sport is not None and r.sport != o.dport:
                rsport = r.sport
    reply = inv._replace(src=rsrc, dst=rdst, sport=rsport, dport=rdport)
    protoinfo: Any = None
    p = flow.protoinfo
    if proto == IPPROTO_TCP and isinstance(p, TcpInfo):
        wscale = enc.tcp_window_tracking
        info = TcpInfo(
            p.state, p.wscale_orig if wscale else None, p.wscale_reply if wscale else None
        )
        protoinfo = info if info != TcpInfo() else None
    elif proto == IPPROTO_SCTP and isinstance(p, SctpInfo):
        protoinfo = p if p != SctpInfo() else None
    elif proto == IPPROTO_DCCP and isinstance(p, DccpInfo):
        protoinfo = DccpInfo(p.state, p.role) if (p.state, p.role) != (None, None) else None
    master = None
    if flow.master is not None:
        m = flow.master
        both = m.sport is not None and m.dport is not None
        master = Tuple(m.src, m.dst, m.proto, *((m.sport, m.dport) if both else (None, None)))
    both_seqadj = flow.seqadj_orig is not None and flow.seqadj_reply is not None
    version = enc.peer_version
    return Flow(
        orig,
        reply,
        status=flow.status or 0,
        timeout=flow.timeout if enc.send_timeout else None,
        mark=flow.mark,
        zone=flow.zone if version >= (1, 4, 7) else None,
        labels=wire_labels(flow.labels) if version >= (1, 4, 2) else None,
        helper=flow.helper,
        protoinfo=protoinfo,
        master=master,
        seqadj_orig=flow.seqadj_orig if both_seqadj else None,
        seqadj_reply=flow.seqadj_reply if both_seqadj else None,
        synproxy=flow.synproxy if version >= (1, 4, 5) else None,
    )


def carried_exp(exp: Expectation, enc: Encoder) -> Expectation:
    ports = exp.master.proto in PORT_PROTOS

    def tup(t: Tuple, with_ports: bool) -> Tuple:
        both = with_ports and t.sport is not None and t.dport is not None
        return Tuple(t.src, t.dst, t.proto, *((t.sport, t.dport) if both else (None, None)))

    nat = None
    if exp.nat is not None and len(exp.nat.tuple.src) == 4:
        nt = exp.nat.tuple
        nat = ExpectNat(exp.nat.dir, tup(nt, nt.proto in PORT_PROTOS))
    return Expectation(
        tup(exp.master, ports),
        tup(exp.tuple, ports),
        tup(exp.mask, ports),
        timeout=exp.timeout if enc.send_timeout else None,
        helper=exp.helper,
        flags=exp.flags or 0,
        klass=exp.klass,
        nat=nat,
        fn=exp.fn,
    )


encoders = st.builds(
    Encoder, st.sampled_from(PEER_VERSIONS), send_timeout=st.booleans(),
    tcp_window_tracking=st.booleans(),
)  # fmt: skip


@FAST
@given(flows(), encoders)
def test_flow_round_trip(flow: Flow, enc: Encoder) -> None:
    """decode(encode(flow)) is exactly what the wire carries, and re-encodes identically."""
    payload = enc.flow(flow)
    decoded = dec_flow(payload)
    assert decoded == carried(flow, enc)
    assert enc.flow(decoded) == payload


@FAST
@given(expectations(), encoders)
def test_expectation_round_trip(exp: Expectation, enc: Encoder) -> None:
    payload = enc.expect(exp)
    decoded = dec_exp(payload)
    assert decoded == carried_exp(exp, enc)
    assert enc.expect(decoded) == payload


@FAST
@given(flows(), encoders)
def test_every_attribute_has_its_table_size(flow: Flow, enc: Encoder) -> None:
    """What the encoder emits matches the table the decoder validates with (§1.7)."""
    for at, payload in tlvs(enc.flow(flow)):
        spec = A.CT_ATTRS[at]
        if spec.variable:
            assert 4 + len(payload) <= spec.size
        else:
            assert 4 + len(payload) == spec.size, spec.name


# --- the compatibility matrix (§1.10) ------------------------------------------------------

EXPECTED_NTA_MAX = {
    (1, 2, 0): 28, (1, 3, 0): 28, (1, 4, 0): 28, (1, 4, 1): 28, (1, 4, 2): 29, (1, 4, 3): 29,
    (1, 4, 4): 31, (1, 4, 5): 32, (1, 4, 6): 32, (1, 4, 7): 33, (1, 4, 8): 33, (1, 4, 9): 33,
    (1, 5): 33, (2, 0, 0): 33,
}  # fmt: skip


@pytest.mark.parametrize(("version", "limit"), EXPECTED_NTA_MAX.items())
def test_nta_max_per_release(version: tuple[int, ...], limit: int) -> None:
    assert nta_max(version) == limit


@pytest.mark.parametrize("version", [(1, 0, 5), (1, 1, 0), (0, 9, 9)])
def test_protocol_version_0_peers_are_refused(version: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="protocol version 0"):
        Encoder(version)


def test_parse_version() -> None:
    assert parse_version("1.4.7") == (1, 4, 7)
    assert parse_version(" 1.4 ") == (1, 4)
    for bad in ("", "1.x", "1..4", "-1.4"):
        with pytest.raises(ValueError):
            parse_version(bad)


V6A, V6B, V6N = ip("2001:db8::1"), ip("2001:db8:1::2"), ip("2001:db8:ff::9")
KITCHEN_SINK_V6 = Flow(
    Tuple(V6A, V6B, IPPROTO_TCP, 1000, 443),
    Tuple(V6N, ip("2001:db8:ff::1"), IPPROTO_TCP, 8443, 2000),
    status=0x1BE,
    timeout=100,
    mark=1,
    zone=3,
    labels=(1 << 5).to_bytes(16, "little"),
    helper="ftp",
    protoinfo=TcpInfo(3),
    synproxy=Synproxy(1, 2, 3),
)


@pytest.mark.parametrize("version", PEER_VERSIONS)
def test_matrix_only_known_attributes_are_emitted(version: tuple[int, ...]) -> None:
    """Every attribute sent is below the peer's NTA_MAX; everything else the flow has is
    sent; each meaningful omission is counted."""
    enc = Encoder(version)
    payload = enc.flow(KITCHEN_SINK_V6)
    limit = EXPECTED_NTA_MAX[version]
    sent = ids(payload)
    assert max(sent) < limit
    full = [1, 5, 2, 3, 4, 6, 7, 29, 30, 14, 15, 27, 28, 31, 32]
    assert sent == [a for a in full if a < limit]
    assert enc.omitted == {a: 1 for a in full if a >= limit}
    # a receiver of that release accepts it: no attribute at or above its NTA_MAX
    decoded = dec_flow(payload)
    assert decoded == carried(KITCHEN_SINK_V6, enc)


@pytest.mark.parametrize("version", PEER_VERSIONS)
def test_matrix_harmless_omissions_are_not_counted(version: tuple[int, ...]) -> None:
    """Zone 0 and a zeroed synproxy (every committed flow has one) lose nothing."""
    enc = Encoder(version)
    enc.flow(CT_GOLDEN_FLOW._replace(zone=0, labels=bytes(16)))
    assert enc.omitted == {}


@FAST
@given(flows(), st.sampled_from(PEER_VERSIONS))
def test_matrix_any_flow_any_release(flow: Flow, version: tuple[int, ...]) -> None:
    payload = Encoder(version).flow(flow)
    assert all(at < nta_max(version) for at in ids(payload))


# --- decoding: rejects, and what the model cannot hold -------------------------------------


def attr(at: int, payload: bytes, length: int | None = None) -> bytes:
    ln = 4 + len(payload) if length is None else length
    raw = struct.pack(">HH", ln, at) + payload
    return raw + bytes(-len(raw) % 4)


BASE = CT_GOLDEN[8:]  # a valid payload to append to


def reject(payload: bytes, decoder: Any = decode_flow) -> WireError:
    with pytest.raises(WireError) as info:
        decoder(payload, 0, len(payload))
    return info.value


@pytest.mark.parametrize("spec", [s for s in A.CT_ATTRS if not s.variable], ids=lambda s: s.name)
@pytest.mark.parametrize("delta", [-1, 1])
def test_fixed_size_attribute_with_a_wrong_length(spec: A.AttrSpec, delta: int) -> None:
    body = bytes(max(0, spec.size - 4 + delta))
    err = reject(attr(spec.id, body) + BASE)  # first: a trailing empty one is ignored
    assert err.reason is Reason.MALFORMED_PAYLOAD
    assert err.attr == spec.id and spec.name in str(err)


@pytest.mark.parametrize("spec", [s for s in A.EXP_ATTRS if not s.variable], ids=lambda s: s.name)
def test_fixed_size_exp_attribute_with_a_wrong_length(spec: A.AttrSpec) -> None:
    err = reject(EXP_GOLDEN[8:] + attr(spec.id, bytes(spec.size - 3)), decode_expect)
    assert err.reason is Reason.MALFORMED_PAYLOAD and spec.name in str(err)


@pytest.mark.parametrize(
    ("table", "at", "limit"),
    [("ct", A.NTA_HELPER_NAME, 16), ("ct", A.NTA_LABELS, 1028), ("exp", A.NTA_EXP_HELPER_NAME, 16),
     ("exp", A.NTA_EXP_FN, 32)],
)  # fmt: skip
def test_variable_attribute_limits(table: str, at: int, limit: int) -> None:
    """The maximum includes the 4-byte header (§1.5): at the limit accepted, past it not."""
    base, decoder = (BASE, decode_flow) if table == "ct" else (EXP_GOLDEN[8:], decode_expect)
    ok = base + attr(at, b"a" * (limit - 5) + b"\0" if at != A.NTA_LABELS else bytes(limit - 4))
    decoder(ok, 0, len(ok))
    err = reject(base + attr(at, b"a" * (limit - 3)), decoder)
    assert err.reason is Reason.MALFORMED_PAYLOAD and err.attr == at


@pytest.mark.parametrize("at", [A.NTA_MAX, 40, 0x7FFF, 0xFFFF])
def test_unknown_attribute_rejects_the_message(at: int) -> None:
    """conntrackd does not skip unknown attributes: the whole message goes (§1.5, §10)."""
    err = reject(BASE + attr(at, bytes(4)))
    assert err.reason is Reason.UNKNOWN_ATTRIBUTE and err.attr == at and err.kind == "ct"
    err = reject(EXP_GOLDEN[8:] + attr(A.NTA_EXP_MAX, bytes(4)), decode_expect)
    assert err.reason is Reason.UNKNOWN_ATTRIBUTE and err.kind == "exp"


def test_attribute_lengths_past_the_end_or_below_the_header() -> None:
    for bad in (attr(A.NTA_MARK, bytes(4), length=40), attr(A.NTA_MARK, bytes(4), length=3)):
        assert reject(BASE + bad).reason is Reason.MALFORMED_PAYLOAD


def test_trailing_bytes_up_to_four_are_ignored() -> None:
    """The walk runs while more than 4 bytes remain (§1.5): even a trailing empty attribute
    with an unknown number is never looked at."""
    for tail in (b"\0", b"\0" * 3, struct.pack(">HH", 4, 999)):
        assert decode_flow(BASE + tail, 0, len(BASE) + len(tail))[0] == CT_GOLDEN_FLOW


def test_a_later_copy_of_an_attribute_wins() -> None:
    flow, _ = decode_flow(BASE + attr(A.NTA_MARK, h("00000009")), 0, len(BASE) + 8)
    assert flow.mark == 9


def test_missing_original_tuple_is_malformed() -> None:
    no_addr = b"".join(attr(a, p) for a, p in tlvs(BASE) if a != A.NTA_IPV4)
    assert "NTA_IPV4" in str(reject(no_addr))
    no_proto = b"".join(attr(a, p) for a, p in tlvs(BASE) if a != A.NTA_L4PROTO)
    assert "NTA_L4PROTO" in str(reject(no_proto))
    both = BASE + attr(A.NTA_IPV6, bytes(32))
    assert reject(both).reason is Reason.MALFORMED_PAYLOAD
    for group in (A.NTA_EXP_MASTER_IPV4, A.NTA_EXP_EXPECT_IPV4, A.NTA_EXP_MASK_IPV4):
        body = b"".join(attr(a, p) for a, p in tlvs(EXP_GOLDEN[8:]) if a != group)
        assert A.EXP_ATTRS[group].name in str(reject(body, decode_expect))


def test_non_ascii_names_are_malformed() -> None:
    err = reject(BASE + attr(A.NTA_HELPER_NAME, b"f\xfftp\0"))
    assert err.reason is Reason.MALFORMED_PAYLOAD and "NTA_HELPER_NAME" in str(err)


def test_names_without_nul_are_accepted() -> None:
    """conntrackd does not check the NUL (§1.5)."""
    payload = BASE + attr(A.NTA_HELPER_NAME, b"sip")
    assert decode_flow(payload, 0, len(payload))[0].helper == "sip"


def test_labels_must_be_whole_words() -> None:
    assert reject(BASE + attr(A.NTA_LABELS, b"\1\0\0")).attr == A.NTA_LABELS


@pytest.mark.parametrize(
    ("added", "where"),
    [
        (attr(A.NTA_SCTP_STATE, b"\3"), [A.NTA_SCTP_STATE]),
        (attr(A.NTA_DCCP_ROLE, b"\1"), [A.NTA_DCCP_ROLE]),
        (attr(A.NTA_ICMP_ID, b"\1\0"), [A.NTA_ICMP_ID]),
        (attr(A.NTA_SNAT_IPV6, bytes(16)), [A.NTA_SNAT_IPV6]),
        (attr(A.NTA_MASTER_PORT, h("00010002")), [A.NTA_MASTER_PORT]),
        (attr(A.NTA_MASTER_IPV4, bytes(8)), [A.NTA_MASTER_IPV4]),
    ],
)
def test_what_the_model_cannot_hold_goes_to_extra(added: bytes, where: list[int]) -> None:
    """SCTP state on a TCP flow, an IPv6 NAT address on an IPv4 flow, a master tuple with
    no address or protocol...: kept raw, the rest of the flow decoded as usual."""
    flow, extra = decode_flow(BASE + added, 0, len(BASE) + len(added))
    assert [at for at, _ in extra] == where
    assert extra[0][1] == tlvs(added)[0][1]
    assert flow == CT_GOLDEN_FLOW


def test_tcp_attributes_on_a_udp_flow_go_to_extra() -> None:
    udp = Flow(Tuple(CLIENT, SERVER, IPPROTO_UDP, 1, 2), status=0)
    payload = ENC.flow(udp) + attr(A.NTA_TCP_STATE, b"\3") + attr(A.NTA_TCP_WSCALE_ORIG, b"\7")
    flow, extra = decode_flow(payload, 0, len(payload))
    assert flow.protoinfo is None
    assert extra == ((A.NTA_TCP_STATE, b"\3"), (A.NTA_TCP_WSCALE_ORIG, b"\7"))


def test_ports_on_an_icmp_flow_go_to_extra() -> None:
    orig = Tuple(CLIENT, SERVER, IPPROTO_ICMP, None, None, 8, 0, 1)
    payload = ENC.flow(Flow(orig, status=0)) + attr(A.NTA_PORT, h("00010002"))
    payload += attr(A.NTA_SPAT_PORT, b"\1\0")
    flow, extra = decode_flow(payload, 0, len(payload))
    assert flow.orig == orig
    assert [at for at, _ in extra] == [A.NTA_PORT, A.NTA_SPAT_PORT]


def test_partial_expectation_nat_goes_to_extra() -> None:
    payload = EXP_GOLDEN[8:] + attr(A.NTA_EXP_NAT_DIR, h("00000001"))
    exp, extra = decode_expect(payload, 0, len(payload))
    assert exp == EXP_GOLDEN_EXP
    assert extra == ((A.NTA_EXP_NAT_DIR, h("00000001")),)


# --- encoding errors name the attribute ----------------------------------------------------


@pytest.mark.parametrize(
    ("flow", "name"),
    [
        (Flow(Tuple(CLIENT, SERVER, IPPROTO_TCP, 70000, 1)), "NTA_PORT"),
        (Flow(Tuple(CLIENT, SERVER, IPPROTO_TCP), status=1 << 32), "NTA_STATUS"),
        (Flow(Tuple(CLIENT, SERVER, IPPROTO_TCP), timeout=-1), "NTA_TIMEOUT"),
        (Flow(Tuple(CLIENT, SERVER, 256)), "NTA_L4PROTO"),
        (Flow(Tuple(CLIENT, V6A, IPPROTO_TCP)), "NTA_IPV4"),
        (Flow(Tuple(CLIENT, SERVER, IPPROTO_ICMP, icmp_id=1 << 16)), "NTA_ICMP_ID"),
        (Flow(Tuple(CLIENT, SERVER, IPPROTO_TCP), helper="a-very-long-name"), "NTA_HELPER_NAME"),
        (Flow(Tuple(CLIENT, SERVER, IPPROTO_TCP), helper="ftp\u00e9"), "NTA_HELPER_NAME"),
        (Flow(Tuple(CLIENT, SERVER, IPPROTO_TCP), labels=b"\1" * 1100), "NTA_LABELS"),
        (Flow(Tuple(CLIENT, SERVER, IPPROTO_TCP), zone=1 << 16), "NTA_ZONE"),
        (Flow(Tuple(CLIENT, SERVER, IPPROTO_TCP), master=Tuple(CLIENT, SERVER, 6, -1, 2)),
         "NTA_MASTER_PORT"),
        (Flow(Tuple(CLIENT, SERVER, IPPROTO_TCP, 1, 2), Tuple(SERVER, CLIENT, 6, 1 << 17, 1)),
         "NTA_DPAT_PORT"),
        (Flow(Tuple(CLIENT, SERVER, IPPROTO_TCP), Tuple(V6A, CLIENT, 6)), "reply tuple"),
    ],
)  # fmt: skip
def test_flow_encode_errors_name_the_attribute(flow: Flow, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ENC.flow(flow)


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"fn": "x" * 28}, "NTA_EXP_FN"),
        ({"helper": "x" * 12}, "NTA_EXP_HELPER_NAME"),
        ({"klass": -1}, "NTA_EXP_CLASS"),
        ({"mask": Tuple(LO, LO, 6, 0, 1 << 16)}, "NTA_EXP_MASK_PORT"),
        ({"tuple": Tuple(LO, V6A, 6, 0, 1)}, "NTA_EXP_EXPECT_IPV4"),
        ({"nat": ExpectNat(1 << 40, Tuple(LO, LO, 6))}, "NTA_EXP_NAT_DIR"),
    ],
)
def test_expect_encode_errors_name_the_attribute(change: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ENC.expect(EXP_GOLDEN_EXP._replace(**change))
