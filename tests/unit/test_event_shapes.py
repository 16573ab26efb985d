"""Whole event datagrams of a learned shape decode exactly as the message walk decodes them.

The kernel sends each conntrack event alone in a datagram.  Once the walk has decoded one
whose layout the flow decoder learned, :class:`~nfsyncd.kernel.EventStream` remembers the
datagram's shape (its length, headers and layout) and decodes later datagrams of that
shape with one mask compare and the layout's decoder.  The tests are differential: a stream
of such datagrams - any flow the codec knows, plain TCP ones for the sender's fast path,
NEW/UPDATE/DESTROY, new sequence numbers, traffic's port id 0, another socket's, a muted
one - must come out of a stream with shapes as it comes out of the walk alone: the same
events, counters and errors, and most of them without a walk.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfsyncd._prepared import Prepared
from nfsyncd.kernel import Event, EventStream
from nfsyncd.model import Flow, Tuple
from nfsyncd.netlink import NetlinkSocket
from nfsyncd.netlink import ctnetlink as ct
from nfsyncd.netlink._layout import MAX_LAYOUTS, Derive
from nfsyncd.netlink._socket import NLM_F_CREATE, NLM_F_EXCL
from nfsyncd.sync.sendpath import SendPath
from nfsyncd.sync.wire import Encoder
from tests.unit.fake_kernel import message
from tests.unit.test_codec import flows as kernel_flows
from tests.unit.test_codec import kernel_flow_bytes
from tests.unit.test_layouts import numbered_tcp_flow
from tests.unit.test_sendpath import plain_tcp_flows
from tests.unit.test_socket import ScriptedSocket

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MUTED = 4242
#: (message type, flags) of each event kind as the kernel sends them
KINDS = [(ct.CT_NEW, NLM_F_CREATE | NLM_F_EXCL), (ct.CT_NEW, 0), (ct.CT_DELETE, 0)]


def _stream(prepared: bool) -> EventStream:
    path = SendPath(Encoder((1, 4, 7)))
    # (a decoder of its own either way: the process's shared one may have used up its
    # layout budget in earlier tests)
    plain: Derive = lambda layout: layout.decode  # noqa: E731
    stream = EventStream(
        nl=NetlinkSocket(sock=ScriptedSocket([])), prepare=path.derive if prepared else plain
    )
    stream.muted.add(MUTED)
    return stream


class _Walks:
    """Counts the datagrams a stream walks message by message."""

    def __init__(self, stream: EventStream) -> None:
        self.count = 0
        walk = stream._decode_messages

        def counted(data: bytes, append: Any) -> None:
            self.count += 1
            walk(data, append)

        stream._decode_messages = counted  # type: ignore[method-assign]


def _comparable(events: list[Event]) -> list[tuple[Any, ...]]:
    """Events with a ``Prepared`` made comparable across streams (its decoder is each
    stream's own function): its flow and its prepared parts."""
    out = []
    for kind, obj, origin in events:
        if isinstance(obj, Prepared):
            out.append((kind, origin, obj.flow(), tuple(obj[:8])))
        else:
            out.append((kind, origin, obj))
    return out


def _outcome(stream: EventStream, datagrams: list[bytes]) -> tuple[Any, ...]:
    events = stream.decode_datagrams(datagrams, [])
    errors = stream.decode_errors
    stats = stream.stats
    return _comparable(events), dict(stats.flows), stats.muted, errors.count, errors.last


def _walked(datagrams: list[bytes], prepared: bool) -> tuple[Any, ...]:
    """What the message walk alone makes of the datagrams (the reference)."""
    stream = _stream(prepared)
    out: list[Event] = []
    for data in datagrams:
        stream._decode_messages(data, out.append)
    errors, stats = stream.decode_errors, stream.stats
    return _comparable(out), dict(stats.flows), stats.muted, errors.count, errors.last


datagram_draws = st.lists(
    st.tuples(
        st.integers(0, len(KINDS) - 1), st.sampled_from([0, 77, MUTED]), st.integers(0, 2**32 - 1)
    ),
    min_size=1,
    max_size=6,
)


@SETTINGS
@given(
    st.lists(kernel_flows | plain_tcp_flows(), min_size=1, max_size=4),
    datagram_draws,
    st.booleans(),
)
def test_shapes_decode_as_the_walk(
    flows: list[Flow], draws: list[tuple[int, int, int]], prepared: bool
) -> None:
    """Each flow is sent as several single-event datagrams (each kind, port id and
    sequence number drawn); the second and later datagrams of a learned shape skip the
    walk and still decode to the walk's events."""
    datagrams = []
    for flow in flows:
        payload = kernel_flow_bytes(flow)
        for which, pid, seq in draws:
            mtype, flags = KINDS[which]
            datagrams.append(message(mtype, flags, seq, payload, pid=pid))
    stream = _stream(prepared)
    walks = _Walks(stream)
    assert _outcome(stream, datagrams) == _walked(datagrams, prepared)
    # a datagram walked and learned is not walked again unless muted, or its layout is
    # one the decoder does not learn
    learned = {len(d) for d in datagrams if len(d) in stream._shapes.by_size}
    if learned:
        again = [d for d in datagrams if len(d) in learned]
        before = walks.count
        stream.muted.clear()
        stream.decode_datagrams(again, [])
        assert walks.count - before < len(again)


def _event(i: int, *, helper: str | None = None) -> bytes:
    flow = numbered_tcp_flow(i, helper)
    return message(ct.CT_NEW, NLM_F_CREATE | NLM_F_EXCL, i, kernel_flow_bytes(flow), pid=0)


def test_a_burst_is_walked_once() -> None:
    """A burst of one layout: the first datagram is walked (and teaches the shape), the
    rest decode through it; the flows are the schema's."""
    stream = _stream(prepared=True)
    walks = _Walks(stream)
    burst = [_event(i) for i in range(50)]
    events = stream.decode_datagrams(burst, [])
    assert walks.count == 1
    assert stream._shapes.count == 1
    assert [e.obj.flow() if isinstance(e.obj, Prepared) else e.obj for e in events] == [
        ct.FLOW.decode(d, 20, len(d)) for d in burst
    ]
    assert stream.stats.flows[events[0].kind] == 50


def test_a_muted_socket_s_events_are_skipped_in_a_learned_shape() -> None:
    stream = _stream(prepared=False)
    stream.decode_datagrams([_event(1)], [])
    own = bytearray(_event(2))
    own[12:16] = MUTED.to_bytes(4, "little")
    events = stream.decode_datagrams([bytes(own), _event(3)], [])
    assert [e.obj.mark for e in events] == [3]  # type: ignore[union-attr]
    assert stream.stats.muted == 1


def test_a_refused_value_in_a_learned_shape_is_the_walk_s_error() -> None:
    """A codec that checks content (a helper name must end in NUL) still does; the error
    names the attribute as the walk does, and the stream goes on."""
    stream = _stream(prepared=False)
    good = _event(1, helper="ftp")
    stream.decode_datagrams([good], [])
    assert stream._shapes.count == 1
    bad = good.replace(b"ftp\0", b"ftpX")
    events = stream.decode_datagrams([bad, _event(2, helper="ftp")], [])
    assert [e.obj.mark for e in events] == [2]  # type: ignore[union-attr]
    reference = _stream(prepared=False)
    reference._decode_messages(bad, [].append)
    assert stream.decode_errors.count == 1
    assert stream.decode_errors.last == reference.decode_errors.last
    assert stream.decode_errors.last is not None and "CTA_HELP_NAME" in stream.decode_errors.last


def test_a_datagram_of_two_events_is_walked() -> None:
    stream = _stream(prepared=False)
    stream.decode_datagrams([_event(1)], [])
    walks = _Walks(stream)
    events = stream.decode_datagrams([_event(2) + _event(3)], [])
    assert walks.count == 1
    assert [e.obj.mark for e in events] == [2, 3]  # type: ignore[union-attr]


def test_shapes_are_bounded() -> None:
    """A stream of ever-new shapes stops learning them (and still decodes them)."""
    stream = _stream(prepared=False)
    datagrams = []
    for labels in range(1, MAX_LAYOUTS + 10):
        flow = Flow(Tuple(b"\1\2\3\4", b"\5\6\7\10", 17, 1, 2), labels=b"\1" * 4 * labels)
        datagrams.append(message(ct.CT_NEW, 0, 0, kernel_flow_bytes(flow), pid=0))
    events = stream.decode_datagrams(datagrams, [])
    assert len(events) == len(datagrams)
    assert stream._shapes.count <= MAX_LAYOUTS
