"""Whole sync datagrams of a learnt shape decode exactly as message by message.

A datagram whose messages all came out lazy flows of one layout teaches
:class:`~nfsyncd.sync.shapes.DatagramShapes` its shape; a later datagram with the same
bytes under the shape's mask is cut into its messages without looking at each.  The
tests are differential against the message-by-message decoder (``wire._decode_into``)
with the same learnt layouts: for datagrams of any flows the encoder makes, for datagrams
of a learnt shape with every other byte random (sequence numbers and values), and for
the near misses (another protocol in the same layout, HELLO flags, a malformed message),
which must not be taken for the shape.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfsyncd.model import Flow, TcpInfo, Tuple
from nfsyncd.sync import attrs as A
from nfsyncd.sync import wire as W
from nfsyncd.sync.attrs import AttrEncoder
from nfsyncd.sync.shapes import DatagramShapes
from nfsyncd.sync.wire import Flag, Message, NetworkStats, data_message, decode_datagram
from tests.unit.test_layouts import fresh_wire_layouts, plain_wire_flows
from tests.unit.test_wire_attrs import flows as wire_flows

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _fresh(m: pytest.MonkeyPatch, limit: int = 256) -> DatagramShapes:
    """Layouts and shapes learnt from nothing (earlier tests may have used the budgets)."""
    layouts = fresh_wire_layouts()
    shapes = DatagramShapes(layouts, Message, limit)
    m.setattr(A, "_CT_LAYOUTS", layouts)
    m.setattr(W, "_SHAPES", shapes)
    return shapes


def _one_by_one(buf: bytes) -> tuple[list[Message], NetworkStats]:
    stats = NetworkStats()
    out: list[Message] = []
    W._decode_into(buf, stats, out, False)
    return out, stats


def _datagram(payloads: list[bytes], seqs: list[int], flags: int = 0) -> bytes:
    return b"".join(data_message(0, p, s, flags) for p, s in zip(payloads, seqs, strict=True))


def _counters(stats: NetworkStats) -> dict[str, Any]:
    return {
        f.name: getattr(stats, f.name)
        for f in dataclasses.fields(stats)
        if f.name not in ("datagrams", "messages", "extension")
    }


def _plain(i: int, proto: int = 6) -> Flow:
    return Flow(
        Tuple(bytes((198, 18, 0, i)), bytes((198, 19, 0, 1)), proto, 1000 + i, 80),
        status=0x0E,
        timeout=600 - i,
        mark=i,
        protoinfo=TcpInfo(3, None, None, None, None) if proto == 6 else None,
    )


@SETTINGS
@given(
    st.lists(st.one_of(wire_flows(), plain_wire_flows), min_size=1, max_size=5),
    st.integers(1, 4),
    st.integers(0, 2**32 - 1),
)
def test_datagrams_decode_as_message_by_message(flows: list[Flow], copies: int, seed: int) -> None:
    """Each flow goes out in a datagram of ``copies`` messages (and then all of them in
    one); decoded twice, the second time through any shape the first taught, the
    messages and counters are the message-by-message decoder's."""
    enc = AttrEncoder()
    payloads = []
    for flow in flows:
        try:
            payloads.append(enc.flow(flow))
        except ValueError:
            continue
    rng = random.Random(seed)
    datagrams = [
        _datagram([p] * copies, [rng.randrange(2**32) for _ in range(copies)]) for p in payloads
    ]
    datagrams.append(_datagram(payloads, [rng.randrange(2**32) for _ in payloads]))
    with pytest.MonkeyPatch.context() as m:
        _fresh(m)
        for buf in datagrams:  # the first decode learns (the message's layout, its shape)
            assert [msg.obj for msg in decode_datagram(buf, NetworkStats())] == [
                msg.obj for msg in _one_by_one(buf)[0]
            ]
        for buf in datagrams:
            stats = NetworkStats()
            got = decode_datagram(buf, stats)
            want, want_stats = _one_by_one(buf)
            assert got == want
            assert [msg.obj for msg in got] == [msg.obj for msg in want]
            assert _counters(stats) == _counters(want_stats)
            assert stats.messages == len(want)


def test_a_burst_is_cut_without_a_walk_and_random_values_keep_the_shape() -> None:
    """Full datagrams of one layout: the first teaches the layout (its first message is
    walked), the second the shape, the next (other flows, other sequence numbers) decode
    through it; bytes outside its mask may be anything."""
    enc = AttrEncoder()
    with pytest.MonkeyPatch.context() as m:
        shapes = _fresh(m)
        first = _datagram([enc.flow(_plain(i)) for i in range(10)], list(range(10)))
        decode_datagram(first, NetworkStats())
        assert shapes.count == 0
        decode_datagram(first, NetworkStats())
        assert shapes.count == 1
        [shape] = shapes.by_size[len(first)]
        rng = random.Random(7)
        keep = shape.mask.to_bytes(len(first), "big")
        for _ in range(50):
            other = bytes(b if k else rng.randrange(256) for b, k in zip(first, keep, strict=True))
            got = shapes.decode(other)
            assert got is not None
            want, _ = _one_by_one(other)
            assert got == want
            assert [msg.obj for msg in got] == [msg.obj for msg in want]
            assert all(type(msg.body) is A.LazyFlow for msg in got)


def test_near_misses_are_not_the_shape() -> None:
    """Another protocol in the same attribute layout, a HELLO flag, a length that says
    the datagram holds other messages: each decodes message by message, as it must."""
    enc = AttrEncoder()
    with pytest.MonkeyPatch.context() as m:
        shapes = _fresh(m)
        tcp = [enc.flow(_plain(i)) for i in range(4)]
        for _ in range(2):  # the layout, then the shape
            decode_datagram(_datagram(tcp, [1, 2, 3, 4]), NetworkStats())
        assert shapes.count == 1
        other_proto = bytearray(_datagram(tcp, [5, 6, 7, 8]))
        at = W.NETHDR_SIZE + shapes.by_size[len(other_proto)][0].layout.proto_at
        other_proto[at] = 132  # an SCTP flow first, in a TCP layout: not the shape
        hello = _datagram(tcp, [5, 6, 7, 8], Flag.HELLO)
        for buf in (bytes(other_proto), hello):
            assert shapes.decode(buf) is None
            got = decode_datagram(buf, NetworkStats())
            assert got == _one_by_one(buf)[0] and len(got) == 4
        kinds = [type(msg.body) for msg in decode_datagram(bytes(other_proto), NetworkStats())]
        assert kinds == [Flow] + [A.LazyFlow] * 3  # the SCTP one is decoded
        assert shapes.count == 1  # neither was learnt


def test_a_datagram_with_a_dropped_message_teaches_no_shape() -> None:
    enc = AttrEncoder()
    with pytest.MonkeyPatch.context() as m:
        shapes = _fresh(m)
        good = enc.flow(_plain(1))
        decode_datagram(_datagram([good], [0]), NetworkStats())  # its layout
        bad = bytearray(good)
        bad[2:4] = (0x7FFF).to_bytes(2, "big")  # the first attribute type: unknown
        buf = _datagram([good, bytes(bad), good], [1, 2, 3])
        stats = NetworkStats()
        assert len(decode_datagram(buf, stats)) == 2
        assert stats.unknown_attribute + stats.malformed_payload == 1
        assert shapes.count == 0


def test_shapes_are_bounded() -> None:
    enc = AttrEncoder()
    with pytest.MonkeyPatch.context() as m:
        shapes = _fresh(m, limit=3)
        decode_datagram(_datagram([enc.flow(_plain(0))], [0]), NetworkStats())  # the layout
        for n in range(1, 8):
            buf = _datagram([enc.flow(_plain(i)) for i in range(n)], list(range(n)))
            assert decode_datagram(buf, NetworkStats()) == _one_by_one(buf)[0]
        assert shapes.count == 3
