"""conntrackd's sync messages (nfsyncd/sync/wire.py): header, control messages, framing,
datagram decoding and its counters, sequence numbers.

What these tests guarantee:

* the control messages observed in reference/conntrackd.md §1.1/§1.9 encode and decode
  byte for byte; data messages carry version 1, the type, the flags, the total length and
  the sequence number (§1.1-1.3);
* :func:`decode_datagram` returns every valid message of a datagram in order, and counts
  each dropped one under the reason conntrackd's ``-s network`` would (truncation at every
  offset, bad lengths, wrong version, bad type, bad flags, unknown attributes, attribute
  sizes); content errors skip one message, framing errors end the datagram;
* no input makes it raise, and no input makes the message decoder raise anything but
  :class:`WireError` (hypothesis fuzz, random and mutated valid datagrams);
* the batcher packs whole messages up to the size limit exactly and never splits one;
  the stream decoder reassembles messages cut anywhere;
* sequence comparison wraps at 2**32 and the tracker classifies and counts like §1.11.
"""

from __future__ import annotations

import contextlib
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfsyncd.model import IPPROTO_TCP, Flow, TcpInfo, Tuple
from nfsyncd.sync import (
    Batcher,
    Encoder,
    Flag,
    Message,
    MsgType,
    NetworkStats,
    Reason,
    SeqCounter,
    SeqTracker,
    SeqVerdict,
    StreamDecoder,
    WireError,
    ack_message,
    alive_message,
    channel_payload_size,
    data_message,
    decode_datagram,
    decode_message,
    nack_message,
    pack_datagrams,
    resync_message,
    seq_add,
    seq_after,
    seq_before,
)
from tests.unit.test_wire_attrs import (
    CT_GOLDEN,
    CT_GOLDEN_FLOW,
    EXP_GOLDEN,
    EXP_GOLDEN_EXP,
    attr,
    expectations,
    flows,
    h,
)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENC = Encoder()


def decode(data: bytes) -> tuple[list[Message], NetworkStats]:
    stats = NetworkStats()
    return decode_datagram(data, stats), stats


def only(stats: NetworkStats, reason: Reason, n: int = 1) -> None:
    """``stats`` counted exactly ``n`` drops, all under ``reason``."""
    assert stats[reason] == n, stats
    assert stats.malformed == n, stats


# --- header and control messages (§1.1-1.3, §1.9) ------------------------------------------


def test_alive_hello_golden() -> None:
    raw = h("1a 30 00 08 6b 02 36 20")
    assert alive_message(0x6B023620, Flag.HELLO) == raw
    msg = decode_message(raw)
    assert msg == Message(MsgType.CTL, 0x30, 0x6B023620)
    assert msg.is_alive and msg.hello and not msg.hello_back and not msg.is_ack
    assert msg.encode() == raw


def test_resync_golden() -> None:
    raw = h("1a 02 00 10 6b023640 00000000 00000000")
    assert resync_message(0x6B023640) == raw
    msg = decode_message(raw)
    assert msg.is_resync and (msg.from_seq, msg.to_seq) == (0, 0)


def test_nack_golden() -> None:
    """ "missing 0x..55 to 0x..56" (§1.9)."""
    raw = h("1a 04 00 10 6b023650 6b023655 6b023656")
    assert nack_message(0x6B023650, 0x6B023655, 0x6B023656) == raw
    msg = decode_message(raw)
    assert msg.is_nack and (msg.seq, msg.from_seq, msg.to_seq) == (
        0x6B023650,
        0x6B023655,
        0x6B023656,
    )
    assert msg.encode() == raw


def test_ack_with_hello_and_hello_back() -> None:
    """``1a 68``: ACK|HELLO|HELLO_BACK (§1.3)."""
    raw = ack_message(5, 1, 4, Flag.HELLO | Flag.HELLO_BACK)
    assert raw[:2] == h("1a 68") and len(raw) == 16
    msg = decode_message(raw)
    assert msg.is_ack and msg.hello and msg.hello_back and (msg.from_seq, msg.to_seq) == (1, 4)


def test_data_message_header() -> None:
    """byte0 = 0x10 | type, flags, BE total length, BE seq (§1.1, §10.1)."""
    for mtype in MsgType:
        if mtype == MsgType.CTL:
            continue
        raw = data_message(mtype, b"\0" * 12, 0xA0B0C0D0, Flag.HELLO_BACK)
        assert raw[:8] == bytes([0x10 | mtype, 0x40, 0, 20, 0xA0, 0xB0, 0xC0, 0xD0])
    raw = ENC.flow_message(MsgType.CT_UPD, CT_GOLDEN_FLOW, 7, Flag.HELLO)
    assert raw[:8] == h("11 20 00 54 00000007") and raw[8:] == CT_GOLDEN[8:]
    raw = ENC.expect_message(MsgType.EXP_DEL, EXP_GOLDEN_EXP, 9)
    assert raw[:8] == h("15 00 00 7c 00000009") and raw[8:] == EXP_GOLDEN[8:]


def test_message_properties() -> None:
    msg = decode_message(CT_GOLDEN)
    assert msg.is_data and msg.is_ct and not msg.is_exp and not msg.is_alive
    assert msg.obj == CT_GOLDEN_FLOW and msg.extra == ()
    msg = decode_message(EXP_GOLDEN)
    assert msg.is_data and msg.is_exp and not msg.is_ct
    assert msg.encode() == EXP_GOLDEN


@pytest.mark.parametrize(
    "call",
    [
        lambda: data_message(6, b"", 1),
        lambda: data_message(0, b"", 1, Flag.ACK),
        lambda: data_message(0, b"\0" * 65530, 1),
        lambda: data_message(0, b"", 1 << 32),
        lambda: ENC.flow_message(3, CT_GOLDEN_FLOW, 1),
        lambda: ENC.flow_message(0, CT_GOLDEN_FLOW, 1, Flag.RESYNC),
        lambda: ENC.expect_message(0, EXP_GOLDEN_EXP, 1),
        lambda: ack_message(1, 2, 3, Flag.NACK),
        lambda: ack_message(1, -1, 3),
        lambda: alive_message(-1),
        lambda: Message(0, 0, 1, EXP_GOLDEN_EXP).encode(),
    ],
)
def test_building_invalid_messages_raises(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


# --- datagrams: valid --------------------------------------------------------------------


def test_datagram_with_several_messages() -> None:
    """[obs] "a bulk of 7 flows fit in one 620-byte datagram": messages back to back."""
    parts = [ENC.flow_message(0, CT_GOLDEN_FLOW._replace(mark=i), 100 + i) for i in range(5)] + [
        EXP_GOLDEN,
        alive_message(200),
        ack_message(201, 1, 2),
    ]
    msgs, stats = decode(b"".join(parts))
    assert [m.seq for m in msgs] == [100, 101, 102, 103, 104, 0x6B0236B3, 200, 201]
    assert [m.obj.mark for m in msgs[:5]] == [0, 1, 2, 3, 4]  # type: ignore[union-attr]
    assert stats.malformed == 0 and stats.messages == 8 and stats.datagrams == 1


@FAST
@given(st.lists(flows() | expectations(), min_size=1, max_size=8), st.data())
def test_datagram_round_trip(objs: list[object], data: st.DataObject) -> None:
    raws = []
    for i, obj in enumerate(objs):
        flags = data.draw(st.sampled_from((0, Flag.HELLO, Flag.HELLO_BACK)))
        if isinstance(obj, Flow):
            raws.append(ENC.flow_message(data.draw(st.integers(0, 2)), obj, i, flags))
        else:
            raws.append(ENC.expect_message(data.draw(st.integers(3, 5)), obj, i, flags))  # type: ignore[arg-type]
    msgs, stats = decode(b"".join(raws))
    assert stats.malformed == 0
    assert [m.encode() for m in msgs] == raws


def test_unaligned_lengths_are_accepted() -> None:
    """No alignment check is done on len (§1.4): an ALIVE of 9 bytes, then another."""
    odd = bytearray(alive_message(1) + b"\0")
    odd[3] = 9
    msgs, stats = decode(bytes(odd) + alive_message(2))
    assert [m.seq for m in msgs] == [1, 2] and stats.malformed == 0


def test_control_messages_longer_than_needed() -> None:
    raw = bytearray(ack_message(1, 2, 3) + bytes(8))
    raw[3] = 24
    msgs, _ = decode(bytes(raw))
    assert msgs[0].is_ack and (msgs[0].from_seq, msgs[0].to_seq) == (2, 3)


# --- datagrams: malformed, each under its reason -------------------------------------------


@pytest.mark.parametrize("cut", range(1, len(CT_GOLDEN)))
def test_truncated_at_every_offset(cut: int) -> None:
    """A message cut anywhere is "Truncated message"; what came before it survives."""
    msgs, stats = decode(CT_GOLDEN[:cut])
    assert msgs == []
    only(stats, Reason.TRUNCATED)
    msgs, stats = decode(EXP_GOLDEN + CT_GOLDEN[:cut])
    assert [m.obj for m in msgs] == [EXP_GOLDEN_EXP]
    only(stats, Reason.TRUNCATED)


def with_len(raw: bytes, length: int) -> bytes:
    return raw[:2] + struct.pack(">H", length) + raw[4:]


def with_byte(raw: bytes, index: int, value: int) -> bytes:
    return raw[:index] + bytes([value]) + raw[index + 1 :]


def ct_message(*attrs: bytes, seq: int = 1) -> bytes:
    payload = b"".join(attrs)
    return struct.pack(">BBHI", 0x10, 0, 8 + len(payload), seq) + payload


GOOD = CT_GOLDEN[8:]

MALFORMED = {
    # framing (ends the datagram)
    "len beyond the datagram": (with_len(CT_GOLDEN, 200), Reason.TRUNCATED),
    "len 0": (with_len(CT_GOLDEN, 0), Reason.BAD_SIZE),
    "len below the header": (with_len(alive_message(1), 4), Reason.BAD_SIZE),
    "ack shorter than 16": (with_len(ack_message(1, 2, 3)[:8], 8), Reason.BAD_SIZE),
    "nack shorter than 16": (with_len(nack_message(1, 2, 3)[:12], 12), Reason.BAD_SIZE),
    "resync of 8 bytes": (with_len(resync_message(1)[:8], 8), Reason.BAD_SIZE),
    "3 bytes": (b"\x10\0\0", Reason.TRUNCATED),
    # header (skips one message)
    "version 0": (with_byte(CT_GOLDEN, 0, 0x00), Reason.WRONG_VERSION),
    "version 2 control": (with_byte(alive_message(1), 0, 0x2A), Reason.WRONG_VERSION),
    "version 15": (with_byte(CT_GOLDEN, 0, 0xF0), Reason.WRONG_VERSION),
    **{
        f"type {t}": (with_byte(alive_message(1), 0, 0x10 | t), Reason.BAD_TYPE)
        for t in (6, 7, 8, 9, 11, 12, 13, 14, 15)
    },
    "data with ACK flag": (with_byte(CT_GOLDEN, 1, 0x08), Reason.MALFORMED_HEADER),
    "data with UNUSED flag": (with_byte(CT_GOLDEN, 1, 0x01), Reason.MALFORMED_HEADER),
    "control without a kind": (with_byte(alive_message(1), 1, 0x20), Reason.MALFORMED_HEADER),
    "control with no flags": (with_byte(alive_message(1), 1, 0x00), Reason.MALFORMED_HEADER),
    # payload (skips one message)
    "unknown ct attribute 33": (ct_message(GOOD, attr(33, bytes(4))), Reason.UNKNOWN_ATTRIBUTE),
    "unknown ct attribute 0xffff": (
        ct_message(attr(0xFFFF, b""), GOOD),
        Reason.UNKNOWN_ATTRIBUTE,
    ),
    "unknown exp attribute 21": (
        with_len(EXP_GOLDEN + attr(21, bytes(4)), len(EXP_GOLDEN) + 8),
        Reason.UNKNOWN_ATTRIBUTE,
    ),
    "NTA_PORT of 9": (ct_message(attr(3, bytes(5)), GOOD), Reason.MALFORMED_PAYLOAD),
    "NTA_L4PROTO of 8": (ct_message(attr(2, bytes(4)), GOOD), Reason.MALFORMED_PAYLOAD),
    "NTA_IPV4 of 36": (ct_message(attr(0, bytes(32)), GOOD), Reason.MALFORMED_PAYLOAD),
    "NTA_ZONE of 8": (ct_message(GOOD, attr(32, bytes(4))), Reason.MALFORMED_PAYLOAD),
    "NTA_HELPER_NAME of 20": (ct_message(GOOD, attr(27, b"x" * 16)), Reason.MALFORMED_PAYLOAD),
    "nta_len past the message": (
        ct_message(GOOD, struct.pack(">HHI", 40, 7, 1)),
        Reason.MALFORMED_PAYLOAD,
    ),
    "nta_len 2": (ct_message(GOOD, struct.pack(">HHI", 2, 7, 1)), Reason.MALFORMED_PAYLOAD),
    "no attributes": (ct_message(), Reason.MALFORMED_PAYLOAD),
    "no address": (ct_message(GOOD[12:]), Reason.MALFORMED_PAYLOAD),
    "expectation without mask": (
        with_len(EXP_GOLDEN[:60], 60),
        Reason.MALFORMED_PAYLOAD,
    ),
}

FRAMING = {Reason.TRUNCATED, Reason.BAD_SIZE}


@pytest.mark.parametrize(("raw", "reason"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_message_is_counted(raw: bytes, reason: Reason) -> None:
    msgs, stats = decode(raw)
    assert msgs == []
    only(stats, reason)
    assert stats.last_error is not None and reason.value in stats.last_error
    if reason not in FRAMING:
        with pytest.raises(WireError) as info:
            decode_message(raw)
        assert info.value.reason is reason


@pytest.mark.parametrize(("raw", "reason"), MALFORMED.values(), ids=MALFORMED.keys())
def test_what_follows_a_malformed_message(raw: bytes, reason: Reason) -> None:
    """Content errors skip one message and decoding goes on; framing errors end the
    datagram (nothing after them can be trusted), but what came before is kept."""
    before, after = alive_message(10), alive_message(11)
    msgs, stats = decode(before + raw + after)
    expected = [10] if reason in FRAMING else [10, 11]
    assert [m.seq for m in msgs] == expected
    only(stats, reason)


def test_unknown_attribute_numbers_are_reported() -> None:
    stats = NetworkStats()
    decode_datagram(MALFORMED["unknown ct attribute 33"][0] * 2, stats)
    decode_datagram(MALFORMED["unknown exp attribute 21"][0], stats)
    assert stats.unknown_attribute == 3
    assert stats.unknown_attrs == {"ct:33": 2, "exp:21": 1}


def test_conntrackd_view_of_the_counters() -> None:
    """conntrackd has no unknown-attribute counter ("Malformed payload"), and counts bad
    types as "Malformed header" in FTFW/NOTRACK, "Bad message type" in ALARM (§1.2)."""
    stats = NetworkStats()
    for name in ("type 7", "unknown ct attribute 33", "NTA_PORT of 9", "version 0", "len 0"):
        decode_datagram(MALFORMED[name][0], stats)
    stats.lost, stats.before = 4, 2
    ftfw = stats.conntrackd_view("ftfw")
    assert ftfw == {
        "Malformed messages": 5,
        "Wrong protocol version": 1,
        "Malformed header": 1,
        "Malformed payload": 2,
        "Bad message type": 0,
        "Truncated message": 0,
        "Bad message size": 1,
        "Packets lost": 4,
        "Packets before": 2,
    }
    alarm = stats.conntrackd_view("alarm")
    assert alarm["Malformed header"] == 0 and alarm["Bad message type"] == 1
    stats.count(Reason.MALFORMED_HEADER)  # e.g. NOTRACK receiving an ACK
    assert stats.malformed_header == 1 and stats.malformed == 6


def test_decode_message_wants_exactly_one_message() -> None:
    with pytest.raises(WireError) as info:
        decode_message(CT_GOLDEN + alive_message(1))
    assert info.value.reason is Reason.BAD_SIZE
    assert decode_message(bytearray(CT_GOLDEN)).obj == CT_GOLDEN_FLOW
    assert decode_message(memoryview(CT_GOLDEN)).obj == CT_GOLDEN_FLOW


# --- fuzz ----------------------------------------------------------------------------------

VALID = [CT_GOLDEN, EXP_GOLDEN, alive_message(1), ack_message(2, 3, 4), resync_message(5)]
FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))


def check_never_raises(data: bytes) -> None:
    stats = NetworkStats()
    msgs = decode_datagram(data, stats)
    assert all(isinstance(m, Message) for m in msgs)
    # a decoder bug would be counted as "Malformed payload" too: it must not happen
    assert stats.last_error is None or "internal decoder error" not in stats.last_error
    off = 0
    while len(data) - off >= 4:
        ln = (data[off + 2] << 8) | data[off + 3]
        if ln == 0 or ln > len(data) - off:
            break
        with contextlib.suppress(WireError):
            decode_message(data[off : off + ln])
        off += ln


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    check_never_raises(data)


@FUZZ
@given(
    st.binary(max_size=200).map(
        lambda b: b"\x10\x00" + struct.pack(">H", len(b) + 8) + bytes(4) + b
    )
)
def test_fuzz_random_ct_payloads(data: bytes) -> None:  # fmt: skip
    check_never_raises(data)


@FUZZ
@given(
    st.lists(st.sampled_from(VALID), min_size=1, max_size=4).map(b"".join),
    st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=6),
    st.integers(0, 600),
)
def test_fuzz_mutated_valid_datagrams(data: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    raw = bytearray(data)
    for index, value in edits:
        raw[index % len(raw)] = value
    check_never_raises(bytes(raw[: max(1, cut)]))
    check_never_raises(bytes(raw))


@FUZZ
@given(st.binary(max_size=120), st.integers(0, 40))
def test_fuzz_attribute_soup(data: bytes, seed: int) -> None:
    """Well-formed TLV framing with random numbers and sizes around the real ones."""
    body = b""
    for i in range(0, len(data) - 2, 3):
        at = (data[i] + seed) % 36
        size = data[i + 1] % 40
        body += attr(at, data[:size])
    check_never_raises(ct_message(body))
    check_never_raises(struct.pack(">BBHI", 0x13, 0, 8 + len(body), 1) + body)


# --- batching (§1.4) -----------------------------------------------------------------------


def test_channel_payload_size() -> None:
    assert channel_payload_size(1500) == 1472
    assert channel_payload_size(1500, "mcast") == 1472
    assert channel_payload_size(1500, "tcp") == 1460
    assert channel_payload_size(1500, "udp", ipv6=True) == 1452
    with pytest.raises(ValueError):
        channel_payload_size(1500, "sctp")
    with pytest.raises(ValueError):
        channel_payload_size(40)


def test_batcher_fills_exactly_to_the_limit() -> None:
    msg = alive_message(1)  # 8 bytes
    batcher = Batcher(24)
    assert batcher.add(msg) is None and batcher.add(msg) is None and batcher.add(msg) is None
    assert batcher.pending_bytes == 24 and batcher.pending_messages == 3
    out = batcher.add(msg)  # 32 > 24: the first three go out, the fourth waits
    assert out == msg * 3
    assert batcher.flush() == msg and batcher.flush() is None


def test_batcher_one_byte_over_starts_a_new_datagram() -> None:
    a = ENC.flow_message(0, CT_GOLDEN_FLOW, 1)  # 84
    b = ack_message(2, 0, 1)  # 16
    assert pack_datagrams([a, b], 100) == [a + b]
    assert pack_datagrams([a, b], 99) == [a, b]


def test_batcher_never_splits_an_oversized_message() -> None:
    big = ENC.flow_message(0, CT_GOLDEN_FLOW, 1)
    small = alive_message(2)
    assert pack_datagrams([small, big, small], 40) == [small, big, small]
    assert pack_datagrams([big, big], 40) == [big, big]


@FAST
@given(
    st.lists(st.integers(0, 40).map(lambda n: data_message(1, bytes(4 * n), n)), max_size=60),
    st.integers(16, 400),
)
def test_batcher_properties(messages: list[bytes], limit: int) -> None:
    datagrams = pack_datagrams(messages, limit)
    assert b"".join(datagrams) == b"".join(messages)
    stats = NetworkStats()
    msgs = [m for d in datagrams for m in decode_datagram(d, stats)]
    assert stats.malformed_payload == len(messages) and msgs == []  # empty CT payloads
    for d in datagrams:
        assert len(d) <= limit or d in messages  # only a single oversized message
    # greedy: no datagram could have taken the next one's first message
    sizes = [len(d) for d in datagrams]
    starts = iter(messages)
    firsts = []
    for d in datagrams:
        first = next(starts)
        firsts.append(len(first))
        rest = len(d) - len(first)
        while rest > 0:
            rest -= len(next(starts))
    for size, nxt in zip(sizes, firsts[1:], strict=False):
        assert size + nxt > limit


def test_batcher_minimum_size() -> None:
    with pytest.raises(ValueError):
        Batcher(15)


# --- streams (TCP channel) -----------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3, 7, 16, 83, 84, 85, 500])
def test_stream_reassembles_messages_cut_anywhere(chunk: int) -> None:
    data = CT_GOLDEN + alive_message(5) + EXP_GOLDEN + ack_message(6, 1, 2)
    decoder, stats = StreamDecoder(), NetworkStats()
    msgs = []
    for i in range(0, len(data), chunk):
        msgs += decoder.feed(data[i : i + chunk], stats)
    assert [m.encode() for m in msgs] == [
        CT_GOLDEN,
        alive_message(5),
        EXP_GOLDEN,
        ack_message(6, 1, 2),
    ]
    assert decoder.pending == 0 and stats.malformed == 0 and stats.messages == 4


def test_stream_framing_error_drops_the_buffer() -> None:
    decoder, stats = StreamDecoder(), NetworkStats()
    assert decoder.feed(alive_message(1) + with_len(alive_message(2), 0) + CT_GOLDEN[:10],
                        stats) == [Message(10, 0x10, 1)]  # fmt: skip
    assert (decoder.broken, decoder.pending) == (True, 0)
    only(stats, Reason.BAD_SIZE)
    decoder.reset()
    assert (decoder.broken, decoder.pending) == (False, 0)
    assert [m.seq for m in decoder.feed(alive_message(3), stats)] == [3]


# --- sequence numbers (§1.11) --------------------------------------------------------------


def test_serial_comparison_wraps() -> None:
    assert seq_before(1, 2) and seq_after(2, 1)
    assert seq_before(0xFFFF_FFFF, 0) and seq_after(0, 0xFFFF_FFFF)
    assert seq_before(0xFFFF_FFF0, 5)
    assert not seq_before(5, 5) and not seq_after(5, 5)
    assert seq_add(0xFFFF_FFFF) == 0 and seq_add(0xFFFF_FFFE, 3) == 1


@given(st.integers(0, 0xFFFF_FFFF), st.integers(1, 0x7FFF_FFFF))
def test_serial_comparison_properties(a: int, d: int) -> None:
    b = seq_add(a, d)
    assert seq_before(a, b) and seq_after(b, a)
    assert not seq_after(a, b) and not seq_before(b, a)


def test_seq_counter_starts_at_time_and_wraps() -> None:
    counter = SeqCounter(0xFFFF_FFFE)
    assert [counter.take() for _ in range(3)] == [0xFFFF_FFFE, 0xFFFF_FFFF, 0]
    assert abs(SeqCounter().take() - int(time.time())) < 5


def test_seq_tracker() -> None:
    stats = NetworkStats()
    tracker = SeqTracker()
    assert (tracker.check(100, stats), tracker.expected) == (SeqVerdict.UNSET, None)
    tracker.update(100)
    assert tracker.check(101, stats) is SeqVerdict.IN_SYNC
    tracker.update(101)
    # 2 messages lost (102, 103): counted as 2 (conntrackd would say 4)
    assert tracker.check(104, stats) is SeqVerdict.AFTER and stats.lost == 2
    assert tracker.check(101, stats) is SeqVerdict.BEFORE and stats.before == 1
    assert tracker.check(50, stats) is SeqVerdict.BEFORE and stats.before == 2
    tracker.update(0xFFFF_FFFF)
    assert tracker.expected == 0
    assert tracker.check(0, stats) is SeqVerdict.IN_SYNC
    assert tracker.check(3, stats) is SeqVerdict.AFTER and stats.lost == 5
    tracker.reset()
    assert tracker.check(7) is SeqVerdict.UNSET


def test_a_typical_flow_encodes_without_the_slow_path() -> None:
    """Sanity for the benchmark's subject: a kernel-shaped TCP flow encodes to 60 bytes."""
    orig = Tuple(b"\xc6\x12\0\1", b"\xc6\x12\1\2", IPPROTO_TCP, 40000, 80)
    flow = Flow(orig, orig.inverted(), status=0x18E, timeout=432000, protoinfo=TcpInfo(3, 7, 7))
    assert len(ENC.flow_message(0, flow, 1)) == 60
