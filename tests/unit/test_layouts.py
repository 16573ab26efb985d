"""The layout-learning fast paths decode exactly what the general decoders decode.

Both the ctnetlink flow decoder (:mod:`nfsyncd.netlink._layout`) and the sync wire decoder
(``attrs._Layouts``) reuse what they learned from an earlier message of the same layout.
The tests here are differential: learn a message's layout, then feed messages with that
layout but other values (random bytes everywhere except the attribute headers) to both
the fast path and the general decoder, which must agree on the value or on the error.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfsyncd._record import flow_key
from nfsyncd.model import Flow, TcpFlags, TcpInfo, Tuple
from nfsyncd.netlink import DecodeError
from nfsyncd.netlink import ctnetlink as ct
from nfsyncd.netlink._layout import LayoutDecoder
from nfsyncd.sync import attrs as A
from nfsyncd.sync.attrs import AttrEncoder, WireError
from tests.unit.test_codec import flows as kernel_flows
from tests.unit.test_codec import kernel_flow_bytes
from tests.unit.test_wire_attrs import flows as wire_flows

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except (DecodeError, WireError) as exc:
        return type(exc).__name__, str(exc)


def _scramble(msg: bytes, mask: int, seed: int) -> bytes:
    """``msg`` with every byte outside ``mask`` (the attribute headers) randomised."""
    rng = random.Random(seed)
    keep = mask.to_bytes(len(msg), "big")
    return bytes(b if k else rng.randrange(256) for b, k in zip(msg, keep, strict=True))


def _encoded(enc: AttrEncoder, flow: Flow) -> tuple[str, Any]:
    try:
        return "ok", enc.flow(flow)
    except ValueError as exc:
        return "ValueError", str(exc)


def fresh_wire_layouts() -> A._Layouts:
    """Wire layouts learned from nothing (a process learns at most A._MAX_LAYOUTS, and
    earlier tests may have used them up)."""
    return A._Layouts(A._CT_LEN, A.CT_ATTRS, "ct", A._flow_builder)


def _fresh_flow_decoder() -> LayoutDecoder:
    return LayoutDecoder(ct.FLOW, ct.FLOW.decoder().slow)  # type: ignore[attr-defined]


def test_flow_schema_decodes_through_a_layout_decoder() -> None:
    assert isinstance(ct.FLOW.decoder(), LayoutDecoder)


@SETTINGS
@given(kernel_flows, st.integers(0, 2**32))
def test_kernel_flow_layouts_agree_with_the_schema(flow: Flow, seed: int) -> None:
    dec = _fresh_flow_decoder()
    payload = kernel_flow_bytes(flow)[4:]
    first = dec(payload, 0, len(payload))  # learns
    assert first == dec.slow(payload, 0, len(payload))
    again = dec(payload, 0, len(payload))
    assert again == first
    layouts = [lay for lays in dec._by_size.values() for lay in lays]
    if not layouts:
        return  # a shape that is not learned (e.g. a repeated attribute): always slow
    assert dec.hits == 1
    other = _scramble(payload, layouts[0].mask, seed)
    assert _outcome(dec, other, 0, len(other)) == _outcome(dec.slow, other, 0, len(other))


def numbered_tcp_flow(i: int, helper: str | None = None) -> Flow:
    """The ``i``-th of a burst of kernel TCP flows of one layout (values vary with ``i``)."""
    return Flow(
        Tuple(bytes((198, 18, 0, i)), bytes((198, 19, 0, 1)), 6, 1000 + i, 80),
        Tuple(bytes((198, 19, 0, 1)), bytes((198, 18, 0, i)), 6, 80, 1000 + i),
        status=0x0E,
        timeout=600 - i,
        mark=i,
        helper=helper,
        protoinfo=TcpInfo(3, 7, 7, TcpFlags(i, 0xFF), TcpFlags(0, 0)),
        id=i,
    )


def test_kernel_flow_layout_is_reused_with_new_values() -> None:
    dec = _fresh_flow_decoder()

    def event(i: int, helper: str | None = None) -> bytes:
        return kernel_flow_bytes(numbered_tcp_flow(i, helper))[4:]

    msgs = [event(i) for i in range(50)]
    decoded = [dec(m, 0, len(m)) for m in msgs]
    assert decoded == [dec.slow(m, 0, len(m)) for m in msgs]
    assert dec.learned == 1 and dec.hits == 49
    assert [f.mark for f in decoded] == list(range(50))
    # a codec that validates content still does: a helper name without its NUL
    good = event(1, "ftp")
    dec(good, 0, len(good))
    bad = good.replace(b"ftp\0", b"ftpX")
    with pytest.raises(DecodeError) as fast:
        dec(bad, 0, len(bad))
    with pytest.raises(DecodeError) as slow:
        dec.slow(bad, 0, len(bad))
    assert str(fast.value) == str(slow.value)


def test_layout_budget_is_bounded() -> None:
    dec = LayoutDecoder(ct.FLOW, ct.FLOW.decoder().slow, max_layouts=2)  # type: ignore[attr-defined]
    for labels_len in (4, 8, 12, 16):
        flow = Flow(Tuple(b"\1\2\3\4", b"\5\6\7\10", 17, 1, 2), labels=b"\1" * labels_len)
        msg = kernel_flow_bytes(flow)[4:]
        assert dec(msg, 0, len(msg)) == dec.slow(msg, 0, len(msg))
    assert dec.learned == 2


@SETTINGS
@given(wire_flows(), st.booleans(), st.integers(0, 2**32))
def test_wire_layouts_agree_with_a_fresh_walk(flow: Flow, window: bool, seed: int) -> None:
    encoded, payload = _encoded(AttrEncoder(tcp_window_tracking=window), flow)
    if encoded != "ok":
        return
    fresh = fresh_wire_layouts()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(A, "_CT_LAYOUTS", fresh)
        learned = _outcome(A.decode_flow, payload, 0, len(payload))
        reused = _outcome(A.decode_flow, payload, 0, len(payload))
        assert learned == reused
        if learned[0] != "ok":
            return
        (mask, expected, pos, _), *_ = fresh.by_size[len(payload)]
        assert int.from_bytes(payload, "big") & mask == expected  # its layout was learned
        # random values, with the learned protocol (the generated decoder's case) and any
        proto = pos[A.NTA_L4PROTO]
        same_proto = mask | (0xFF << (8 * (len(payload) - proto - 1)) if proto else 0)
        others = [
            b"\0" * 3 + _scramble(payload, m, seed)  # not at offset 0 either
            for m in (mask, same_proto)
        ]
        fast = [_outcome(A.decode_flow, other, 3, len(other)) for other in others]
        walk_only = A._Layouts(A._CT_LEN, A.CT_ATTRS, "ct")
        walk_only.attempts = A._MAX_LAYOUTS  # knows no layout, learns none
        m.setattr(A, "_CT_LAYOUTS", walk_only)
        slow = [_outcome(A.decode_flow, other, 3, len(other)) for other in others]
    assert fast == slow


def test_plain_wire_layouts_get_a_generated_decoder() -> None:
    enc = AttrEncoder()
    layouts = fresh_wire_layouts()
    flows = [
        Flow(
            Tuple(bytes((198, 18, 0, i)), bytes((198, 19, 0, 1)), proto, 1000 + i, 80),
            Tuple(bytes((198, 19, 0, 1)), bytes((198, 51, 0, 1)), proto, 80, 2000 + i),
            status=0x0E,
            timeout=600 - i,
            mark=i,
            protoinfo=TcpInfo(3, None, None, None, None) if proto == 6 else None,
        )
        for proto in (6, 17)
        for i in range(20)
    ]
    with pytest.MonkeyPatch.context() as m:
        m.setattr(A, "_CT_LAYOUTS", layouts)
        got = [A.decode_flow(p, 0, len(p)) for p in map(enc.flow, flows)]
    assert [f for f, _ in got] == flows
    entries = [entry for size in layouts.by_size.values() for entry in size]
    assert len(entries) == 2 and all(build is not None for *_, build in entries)


def _plain(flow: Flow, proto: int, sport: int, dport: int) -> Flow:
    """``flow`` as the kind that may travel lazily: a port protocol, no NAT, zone, master..."""
    orig = Tuple(flow.orig.src, flow.orig.dst, proto, sport, dport)
    none = dict.fromkeys(("reply", "zone", "labels", "helper", "master", "seqadj_orig"))
    return flow._replace(orig=orig, seqadj_reply=None, **none)


plain_wire_flows = st.builds(
    _plain,
    wire_flows(),
    st.sampled_from((6, 17, 132, 33)),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
)


@SETTINGS
@given(st.one_of(wire_flows(), plain_wire_flows), st.integers(0, 2**32))
def test_a_lazy_flow_splits_into_its_key_timeout_and_a_rest(flow: Flow, seed: int) -> None:
    """A message of a lazy layout decodes (``flow()``) to what the general code decodes,
    ``keyed`` gives its cache key and timeout, and two messages of the layout with equal
    other values decode alike but for tuple and timeout (what the external cache
    relies on when it stores such flows undecoded)."""
    enc = AttrEncoder()
    encoded, payload = _encoded(enc, flow)
    if encoded != "ok":
        return
    layouts = fresh_wire_layouts()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(A, "_CT_LAYOUTS", layouts)
        if _outcome(A.decode_flow_lazy, payload, 0, len(payload))[0] != "ok":
            return
        (mask, _, pos, _), *_ = layouts.by_size[len(payload)]
        proto = pos[A.NTA_L4PROTO]
        keep = mask | (0xFF << (8 * (len(payload) - proto - 1)) if proto else 0)
        others = [_scramble(payload, keep, seed + i) for i in range(2)]
        if type(A.decode_flow_lazy(payload, 0, len(payload))[0]) is not A.LazyFlow:
            return  # not a lazy layout
        # a lazy layout's messages cannot fail to decode
        got = [A.decode_flow_lazy(other, 0, len(other))[0] for other in others]
        # the second message's tuple and timeout with the first's other values
        split = [g.layout.keyed(g.payload) for g in got]  # type: ignore[union-attr]
        first = got[0].flow()  # type: ignore[union-attr]
        second = got[1].flow()  # type: ignore[union-attr]
        moved = enc.flow(first._replace(orig=second.orig, reply=None, timeout=second.timeout))
        again = A.decode_flow_lazy(moved, 0, len(moved))[0]
        m.setattr(A, "_CT_LAYOUTS", A._Layouts(A._CT_LEN, A.CT_ATTRS, "ct"))
        general = [A.decode_flow(other, 0, len(other))[0] for other in (*others, moved)]
    assert [type(g) for g in got] == [A.LazyFlow] * 2 and got[0].layout is got[1].layout
    assert [g.flow() for g in got] == general[:2]  # type: ignore[union-attr]
    for (key, timeout, _), f in zip(split, general, strict=False):
        assert (key, timeout) == (flow_key(f.orig), f.timeout)
        assert f.reply is not None and f.reply == f.orig.inverted()
        assert f.master is None and f.zone is None
    assert type(again) is A.LazyFlow and again.layout is got[0].layout  # type: ignore[union-attr]
    assert again.layout.keyed(again.payload) == (*split[1][:2], split[0][2])
    assert (
        again.flow()
        == general[2]
        == general[0]._replace(  # equal but for tuple and timeout
            orig=general[1].orig, reply=general[1].reply, timeout=general[1].timeout
        )
    )


def test_nat_and_zones_are_never_lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Their stored form depends on more than the tuple and the other values (the reply
    tuple, the zone index), so the external cache must get them decoded."""
    monkeypatch.setattr(A, "_CT_LAYOUTS", fresh_wire_layouts())
    enc = AttrEncoder()
    a, b, c = bytes((198, 18, 0, 1)), bytes((198, 18, 0, 2)), bytes((198, 18, 0, 3))
    plain = Flow(Tuple(a, b, 6, 1000, 80), status=0x0E, timeout=60, mark=1)
    for flow, lazy in [
        (plain, True),
        (plain._replace(reply=Tuple(b, c, 6, 80, 1000)), False),  # SNAT
        (plain._replace(reply=Tuple(b, a, 6, 8080, 1000)), False),  # port rewrite
        (plain._replace(zone=3), False),
        (Flow(Tuple(a, b, 1, icmp_type=8, icmp_code=0, icmp_id=7), timeout=30), False),
    ]:
        payload = enc.flow(flow)
        kinds = {type(A.decode_flow_lazy(payload, 0, len(payload))[0]) for _ in range(3)}
        assert (A.LazyFlow in kinds) is lazy, flow


@SETTINGS
@given(wire_flows(), st.integers(0, 0xFF), st.integers(0, 2**33), st.integers(0, 2**33))
def test_tcp_head_in_one_pack_equals_attribute_by_attribute(
    flow: Flow, state: int, timeout: int, mark: int
) -> None:
    """The one-pack start of a TCP message (A.TCP_HEADS) writes what the attribute-wise
    path writes, and out-of-range values still fail with the attribute's name."""
    tcp = flow._replace(
        orig=flow.orig._replace(proto=6, sport=flow.orig.sport or 1, dport=flow.orig.dport or 2),
        protoinfo=TcpInfo(state, None, None, None, None),
        timeout=timeout,
        mark=mark,
    )
    for candidate in (flow, tcp):
        fast, slow = AttrEncoder(), AttrEncoder()
        slow._fast_head = False
        assert _encoded(fast, candidate) == _encoded(slow, candidate)
