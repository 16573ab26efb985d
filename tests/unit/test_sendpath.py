"""The sender's fast path (nfsyncd.sync.sendpath) makes exactly what the general path makes.

A kernel flow event of a learned layout decodes through a generated function that also
packs the flow's cache key, record and sync payload from the unpacked values.  The tests
are differential: whatever the values, the flow (decoded, or ``Prepared.flow()``) must
equal the schema decoder's, and a ``Prepared`` must be byte-equal to ``flow_key``,
``pack_canonical`` and ``Encoder.flow`` of that flow; flows of the shape must get one,
flows outside it (NAT, a non-zero zone or synproxy, another protocol in the same layout)
must not.  Then whole event streams go through the filter, the internal cache and a sync
mode with and without the fast path, and the cache tables, changes and wire messages must
be the same.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfsyncd._config_types import SyncConfig
from nfsyncd._prepared import Prepared
from nfsyncd.cache import InternalCache
from nfsyncd.filter import Filter
from nfsyncd.kernel import EventStream
from nfsyncd.model import IPPROTO_TCP, Flow, SeqAdj, Synproxy, TcpFlags, TcpInfo, Tuple
from nfsyncd.netlink import NetlinkSocket
from nfsyncd.netlink import ctnetlink as ct
from nfsyncd.netlink._socket import NLM_F_CREATE, NLM_F_EXCL
from nfsyncd.sync.modes import make_mode
from nfsyncd.sync.sendpath import SendPath, prepare
from nfsyncd.sync.wire import Encoder, SeqCounter
from tests.unit.fake_kernel import message
from tests.unit.test_codec import addr4, addr6, kernel_flow_bytes, u8, u16, u32
from tests.unit.test_codec import flows as any_flows
from tests.unit.test_layouts import _scramble
from tests.unit.test_socket import ScriptedSocket

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: encoders the fast path must follow: today's peer, a peer without NTA_SYNPROXY/NTA_ZONE
ENCODERS = st.sampled_from([(1, 4, 7), (1, 4, 4), (1, 2, 0)])


@st.composite
def plain_tcp_flows(draw: st.DrawFn) -> Flow:
    """The shape of a gateway's TCP flow events: no NAT, a complete TCP protoinfo, status,
    timeout and mark (zero or not); zone and synproxy absent or zero; kernel-owned fields."""
    addr = draw(st.sampled_from([addr4, addr6]))
    orig = Tuple(draw(addr), draw(addr), IPPROTO_TCP, draw(u16), draw(u16))
    flags = st.builds(TcpFlags, u8, u8)
    info = TcpInfo(draw(u8), draw(u8), draw(u8), draw(flags), draw(flags))
    return Flow(
        orig,
        orig.inverted(),
        status=draw(u32),
        timeout=draw(u32),
        mark=draw(st.sampled_from([0, 1]) | u32),
        zone=draw(st.sampled_from([None, 0])),
        protoinfo=info,
        synproxy=draw(st.sampled_from([None, Synproxy(0, 0, 0)])),
        secmark=draw(st.sampled_from([None, 0])),
        id=draw(st.none() | u32),
        use=draw(st.none() | u32),
    )


def decoded(got: Flow | Prepared) -> Flow:
    return got.flow() if isinstance(got, Prepared) else got


def check(got: Flow | Prepared, payload: bytes, encoder: Encoder) -> bool:
    """``got`` decodes as the schema does and, if prepared, as the general path would;
    whether it was prepared."""
    flow = decoded(got)
    assert flow == ct.FLOW.decode(payload, 0, len(payload))
    if isinstance(got, Prepared):
        assert got == prepare(flow, encoder, got)
        return True
    return False


def learned(path: SendPath, payload: bytes) -> Any:
    """A decoder of ``path`` that has learned ``payload``'s layout."""
    decoder = path.decoder()
    first = decoder(payload, 0, len(payload))  # the schema decodes it and learns
    assert type(first) is Flow
    return decoder


def tcp_flow(sport: int, **fields: Any) -> Flow:
    """An established TCP flow from 198.18.1.1 to 198.18.250.1:80, no NAT, zero mark."""
    orig = Tuple(bytes([198, 18, 1, 1]), bytes([198, 18, 250, 1]), IPPROTO_TCP, sport, 80)
    flow = Flow(
        orig,
        orig.inverted(),
        status=14,
        timeout=600,
        mark=0,
        protoinfo=TcpInfo(3, 7, 7, TcpFlags(35, 35), TcpFlags(35, 35)),
    )
    return flow._replace(**fields)


# --- one message ------------------------------------------------------------------------


@SETTINGS
@given(plain_tcp_flows(), ENCODERS, plain_tcp_flows())
def test_a_plain_tcp_flow_is_prepared_as_the_general_path_would(
    flow: Flow, version: tuple[int, int, int], other: Flow
) -> None:
    """The learned layout's function prepares the flow and every later flow of the layout
    (other addresses, ports, state, mark...) byte-equal to the general path."""
    encoder = Encoder(version)
    path = SendPath(encoder)
    payload = kernel_flow_bytes(flow)[4:]
    decoder = learned(path, payload)
    assert path.prepared_layouts == 1 and path.mismatches == 0
    assert check(decoder(payload, 0, len(payload)), payload, encoder)
    # another flow with the same attribute headers: the same function, other values
    if len(other.orig.src) == len(flow.orig.src):
        same = ("zone", "synproxy", "secmark", "id", "use")  # present as in ``flow``
        other = other._replace(
            **{f: None if getattr(flow, f) is None else getattr(other, f) or 0 for f in same}
        )
        if other.synproxy is not None:
            other = other._replace(synproxy=Synproxy(0, 0, 0))
        again = kernel_flow_bytes(other)[4:]
        assert check(decoder(again, 0, len(again)), again, encoder)


@SETTINGS
@given(plain_tcp_flows(), st.integers(0, 2**32))
def test_values_outside_the_shape_are_not_prepared(flow: Flow, seed: int) -> None:
    """Random values under the learned headers (NAT'd reply tuples, another protocol
    number, non-zero synproxy or zone): the flow is the schema decoder's, and a prepared
    part, when there is one, is still the general path's."""
    encoder = Encoder()
    path = SendPath(encoder)
    payload = kernel_flow_bytes(flow)[4:]
    decoder = learned(path, payload)
    layout = next(iter(decoder._by_size.values()))[0]
    other = _scramble(payload, layout.mask, seed)
    check(decoder(other, 0, len(other)), other, encoder)


def test_each_check_of_the_shape_can_fail() -> None:
    """One value out of the shape at a time: no prepared part (but the same flow)."""
    base = tcp_flow(1025, zone=0, synproxy=Synproxy(0, 0, 0), secmark=0)
    orig = base.orig
    outside = {
        "SNAT": base._replace(reply=base.reply._replace(dst=bytes([198, 19, 9, 9]))),  # type: ignore[union-attr]
        "DNAT": base._replace(reply=base.reply._replace(src=bytes([198, 19, 9, 9]))),  # type: ignore[union-attr]
        "port": base._replace(reply=base.reply._replace(sport=8080)),  # type: ignore[union-attr]
        "proto": base._replace(
            orig=orig._replace(proto=17), reply=orig._replace(proto=17).inverted()
        ),
        "zone": base._replace(zone=3),
        "secmark": base._replace(secmark=5),
        "synproxy": base._replace(synproxy=Synproxy(1, 0, 0)),
    }
    encoder = Encoder()
    path = SendPath(encoder)
    payload = kernel_flow_bytes(base)[4:]
    decoder = learned(path, payload)
    assert check(decoder(payload, 0, len(payload)), payload, encoder)
    for name, flow in outside.items():
        data = kernel_flow_bytes(flow)[4:]
        assert not check(decoder(data, 0, len(data)), data, encoder), name
    assert decoder.hits == 1 + len(outside)  # all of them the learned layout


@SETTINGS
@given(any_flows)
def test_any_kernel_flow_decodes_as_before(flow: Flow) -> None:
    """Every shape the codec knows: the flow is the schema decoder's; a prepared part only
    for the plain TCP shape, and then the general path's."""
    encoder = Encoder()
    path = SendPath(encoder)
    payload = kernel_flow_bytes(flow)[4:]
    decoder = path.decoder()
    for _ in range(2):
        check(decoder(payload, 0, len(payload)), payload, encoder)
    assert path.mismatches == 0


def test_encoders_without_a_one_pack_tcp_head_prepare_nothing() -> None:
    """TCP window tracking puts the window scales inside the head, a CommitTimeout leaves
    NTA_TIMEOUT out: the payload is not the one-pack head there, so no layout is prepared."""
    flow = tcp_flow(1)
    payload = kernel_flow_bytes(flow)[4:]
    for encoder in (Encoder(tcp_window_tracking=True), Encoder(send_timeout=False)):
        path = SendPath(encoder)
        decoder = learned(path, payload)
        assert decoder(payload, 0, len(payload)) == flow
        assert path.prepared_layouts == 0


# --- whole streams through the cache and a sync mode --------------------------------------

NEW_FLAGS = NLM_F_CREATE | NLM_F_EXCL


def _events(flows: list[Flow], kinds: list[int]) -> bytes:
    flags = {0: NEW_FLAGS, 1: 0}
    out = []
    for flow, kind in zip(flows, kinds, strict=True):
        if kind == 2:
            out.append(message(ct.CT_DELETE, 0, 0, kernel_flow_bytes(flow), pid=0))
        else:
            out.append(message(ct.CT_NEW, flags[kind], 0, kernel_flow_bytes(flow), pid=0))
    return b"".join(out)


#: the lab's kind of filter (the sync link's own addresses) and a TCP state rule that drops
#: half of the strategies' random states (the burst below is in state 3, ESTABLISHED)
FILTER = Filter(
    address=("ignore", ["127.0.0.1", "198.18.0.1", "::1"]),
    tcp_state=("ignore", range(0, 256, 2)),
)


def _run(datagram: bytes, *, prepared: bool, filter: Filter | None = None) -> tuple[Any, ...]:
    encoder = Encoder((1, 4, 7))
    path = SendPath(encoder)
    stream = EventStream(
        nl=NetlinkSocket(sock=ScriptedSocket([])), prepare=path.derive if prepared else None
    )
    ticks = iter(range(1000))
    # entries of each batch get another date
    cache = InternalCache(filter, clock=lambda: float(next(ticks)))
    config = SyncConfig(mode="ftfw", links=())
    mode = make_mode(config, encoder, clock=lambda: 5.0, seq=SeqCounter(1))  # (not time())
    with stream:
        events = stream.decode_datagram(datagram)
    changes = []
    for i in range(0, len(events), 7):  # in batches, as the daemon reads them
        changes += cache.apply_events(events[i : i + 7])
    mode.queue(changes)
    wire = mode.output()
    used = sum(isinstance(e.obj, Prepared) for e in events)
    return (
        dict(cache._flows),
        [(c.kind, decoded(c.obj), c.key) for c in changes],  # type: ignore[arg-type]
        wire,
        cache.stats_dict(),
        used,
    )


#: the addresses of the few flows the stream tests use, by family
_HOSTS = {4: (bytes([198, 18, 1, 1]), bytes([198, 18, 250, 1])), 16: (bytes(15) + b"\1", bytes(16))}


def _one_of_a_few(flow: Flow, which: int) -> Flow:
    """``flow`` moved onto one of a few original tuples (per family and protocol), so that
    a stream's events hit the same cache entries again; the reply stays the plain inverse
    if there is one (and any NAT the strategy drew is dropped)."""
    src, dst = _HOSTS[len(flow.orig.src)]
    orig = flow.orig._replace(src=src, dst=dst)
    if orig.sport is not None:
        orig = orig._replace(sport=which, dport=80)
    return flow._replace(orig=orig, reply=None if flow.reply is None else orig.inverted())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(plain_tcp_flows() | any_flows, st.integers(0, 2), st.integers(0, 5)),
        min_size=1,
        max_size=30,
    )
)
def test_the_cache_and_the_wire_are_the_same_with_the_fast_path(
    rows: list[tuple[Flow, int, int]],
) -> None:
    """NEW, UPDATE and DESTROY events of a few flows (the same original tuple again and
    again, so updates replace, merge and delete): the fast path changes nothing the cache
    stores, reports or sends."""
    flows = [_one_of_a_few(f, which) for f, _, which in rows]
    datagram = _events(flows, [kind for _, kind, _ in rows])
    for filter in (None, FILTER):
        with_fast = _run(datagram, prepared=True, filter=filter)
        without = _run(datagram, prepared=False, filter=filter)
        assert with_fast[:4] == without[:4]
        assert without[4] == 0


def test_a_burst_of_new_flows_takes_the_fast_path() -> None:
    """The benchmark's shape (a burst of new TCP flows, one layout): every event after the
    first is prepared, and the cache, changes and wire equal the general path's."""
    info = TcpInfo(3, 0, 0, TcpFlags(0, 0), TcpFlags(0, 0))
    flows = [
        tcp_flow(1024 + i, mark=i % 2, protoinfo=info, synproxy=Synproxy(0, 0, 0), id=i)
        for i in range(50)
    ]
    datagram = _events(flows, [0] * 50) + _events(flows[:10], [1] * 10)
    with_fast = _run(datagram, prepared=True, filter=FILTER)
    without = _run(datagram, prepared=False, filter=FILTER)
    assert with_fast[:4] == without[:4]
    assert with_fast[4] == 59
    assert with_fast[3]["created"] == 50 and with_fast[3]["updated"] == 10
    # a cached flow with more than a prepared event has (a helper, a master, sequence
    # adjustments): the event is merged into it, not stored over it
    master = flows[1].orig._replace(dport=21)
    rich = flows[0]._replace(helper="ftp", master=master, seqadj_orig=SeqAdj(1, 2, 3))
    merge = _events([flows[5], rich, flows[0]], [0, 0, 1])  # (flows[5]: learned)
    with_fast = _run(merge, prepared=True, filter=FILTER)
    assert with_fast[:4] == _run(merge, prepared=False, filter=FILTER)[:4]
    assert with_fast[4] == 1
    [kept] = [obj for _, obj, key in with_fast[1][2:]]
    assert (kept.helper, kept.master, kept.seqadj_orig) == ("ftp", master, SeqAdj(1, 2, 3))
    # the filter judges prepared events too: the server's address is ignored
    ignored = Filter(address=("ignore", ["198.18.250.1"]))
    with_fast = _run(datagram, prepared=True, filter=ignored)
    assert with_fast[4] == 59 and with_fast[0] == {} and with_fast[3]["filtered"] == 60


def test_alarm_refreshes_a_prepared_flow_as_the_flow() -> None:
    """ALARM keeps what it was given for its refresh; for a prepared event that is the
    ``Prepared``, which a refresh without a lookup sends as its decoded flow: the same
    payload the first send had."""
    flows = [tcp_flow(1025 + i, mark=3) for i in range(2)]
    encoder = Encoder()
    stream = EventStream(
        nl=NetlinkSocket(sock=ScriptedSocket([])), prepare=SendPath(encoder).derive
    )
    with stream:
        events = stream.decode_datagram(_events(flows, [0, 0]))
    assert isinstance(events[1].obj, Prepared)  # (the first one taught the layout)
    now = [0.0]
    mode = make_mode(
        SyncConfig(mode="alarm", links=(), refresh_time=2),
        encoder,
        clock=lambda: now[0],
        seq=SeqCounter(1),
    )
    mode.queue(InternalCache().apply_events(events))
    first = mode.output()
    now[0] = 10.0
    mode.tick()
    refreshed = mode.output()
    # the same payloads after the 8-byte header (in the order of their random due times)
    assert sorted(m[8:] for m in refreshed) == sorted(m[8:] for m in first)
    assert sorted(m[8:] for m in first) == sorted(encoder.flow(f) for f in flows)


def test_the_sync_queue_sends_a_prepared_payload_as_it_is() -> None:
    """The mode does not encode a prepared flow again: what goes out is its payload
    (here one the encoder would never write, to tell the two apart)."""
    encoder = Encoder()
    stream = EventStream(
        nl=NetlinkSocket(sock=ScriptedSocket([])), prepare=SendPath(encoder).derive
    )
    with stream:
        events = stream.decode_datagram(_events([tcp_flow(1025), tcp_flow(1026)], [0, 0]))
    prepared = events[1].obj
    assert isinstance(prepared, Prepared)
    marked = prepared._replace(payload=b"\0\x08\0\x07\0\0\0\x2a")  # only NTA_MARK 42
    mode = make_mode(SyncConfig(mode="notrack", links=()), encoder, clock=lambda: 0.0)
    mode.queue(InternalCache().apply_events([events[1]._replace(obj=marked)]))
    [message] = mode.output()
    assert message[8:] == marked.payload
