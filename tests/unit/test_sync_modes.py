"""Sync modes (nfsyncd/sync/_mode.py, ftfw.py, alarm.py, notrack.py) as sans-IO state
machines on a fake clock and a fake wire (tests/unit/_fake_peer.py).

What these tests guarantee:

* the tx queue coalesces per object (NEW+UPDATE -> NEW with the newest state, anything +
  DESTROY -> DEL, DESTROY + NEW -> NEW), keeps first-queueing order, numbers every message
  consecutively and counts objects it cannot encode;
* FTFW follows reference §2.1: HELLO on everything until HELLO_BACK (header bytes as
  observed), an ACK after W messages, ACK+NACK with the exact ranges on a gap, resends with
  new seqs, ACK frees the resend queue, a full resend queue drops its oldest entry and
  counts it, a restarted peer's HELLO is accepted and flushes the resend queue and gets one
  HELLO_BACK, the 1 s ALIVE/ACK timer, the idle ACK ping-pong, and exact convergence of
  5000 changes over a 10 % and 30 % lossy wire in both directions;
* NOTRACK: ALIVE after 1 s idle, ACK/NACK counted malformed, RESYNC honoured;
* ALARM: refresh timers within 1..refresh_time s plus the conntrackd jitter, re-armed on
  update, cancelled by DEL, refreshed as NEW or UPD, flagged messages ignored, and no
  control message ever;
* hypothesis: any interleaving of changes, loss and time keeps the FTFW invariants.
"""

from __future__ import annotations

import itertools
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfsyncd.cache import Change, flow_key
from nfsyncd.model import IPPROTO_TCP, EventKind, Expectation, Flow, Tuple
from nfsyncd.sync import (
    Encoder,
    Flag,
    Message,
    MsgType,
    NetworkStats,
    SeqCounter,
    ack_message,
    alive_message,
    decode_message,
    nack_message,
    resync_message,
)
from nfsyncd.sync.modes import (
    AlarmMode,
    FtfwMode,
    NotrackMode,
    SyncMode,
    make_mode,
    object_key,
)
from tests.unit._fake_peer import (
    Clock,
    Pair,
    apply_changes,
    config,
    decode,
    flow,
    round_trip,
)

NEW, UPD, DEL = EventKind.NEW, EventKind.UPDATE, EventKind.DESTROY


def make(mode: str, clock: Clock | None = None, seq: int = 100, **kw: object) -> SyncMode:
    return make_mode(config(mode, **kw), Encoder(), clock=clock or Clock(), seq=SeqCounter(seq))


def ftfw(clock: Clock | None = None, seq: int = 100, **kw: object) -> FtfwMode:
    mode = make("ftfw", clock, seq, **kw)
    assert isinstance(mode, FtfwMode)
    return mode


def rs_len(mode: SyncMode) -> int:
    value = mode.stats_dict()["rs_queue"]
    assert isinstance(value, int)
    return value


def header(raw: bytes) -> tuple[int, int, int, int]:
    b0, flags, ln, seq = struct.unpack_from(">BBHI", raw)
    return b0, flags, ln, seq


def data_msg(seq: int, obj: Flow, mtype: int = 0, flags: int = 0) -> Message:
    return decode_message(Encoder().flow_message(mtype, obj, seq, flags))


def ctl(raw: bytes) -> Message:
    return decode_message(raw)


def done_hello(mode: FtfwMode, peer_seq: int = 9000) -> int:
    """Complete ``mode``'s handshake with a pretend peer (this opens an ACK range at
    ``peer_seq``); returns the peer's next seq."""
    mode.receive([ctl(alive_message(peer_seq, Flag.HELLO_BACK))])
    assert mode.hello_done and not mode.has_output()
    return peer_seq + 1


def connect(a: FtfwMode, b: FtfwMode) -> None:
    """Both handshakes done: each got one ALIVE|HELLO_BACK from the other (taking one seq
    of each; the ACK ranges open at those)."""
    done_hello(a, b.seq.take())
    done_hello(b, a.seq.take())


# --- shared: tx queue ----------------------------------------------------------------------
def test_make_mode_picks_the_class() -> None:
    assert isinstance(make("ftfw"), FtfwMode)
    assert isinstance(make("alarm"), AlarmMode)
    assert isinstance(make("notrack"), NotrackMode)
    with pytest.raises(ValueError, match="unknown sync mode"):
        make("bogus")


@pytest.mark.parametrize("mode", ["ftfw", "notrack", "alarm"])
def test_coalescing_rules(mode: str) -> None:
    m = make(mode)
    assert isinstance(m, (FtfwMode, NotrackMode, AlarmMode))
    a, b, c, d = flow(1), flow(2), flow(3), flow(4)
    m.queue(
        [
            Change(NEW, a),
            Change(UPD, b),
            Change(UPD, a._replace(mark=5)),  # NEW + UPDATE -> NEW, newest state
            Change(UPD, b._replace(mark=6)),  # UPDATE + UPDATE -> UPDATE
            Change(NEW, c),
            Change(DEL, c),  # NEW + DESTROY -> DEL
            Change(DEL, d),
            Change(NEW, d._replace(mark=7)),  # DESTROY + NEW -> NEW
        ]
    )
    out = decode(m.output())
    assert [(x.type, x.obj) for x in out] == [
        (MsgType.CT_NEW, round_trip(a._replace(mark=5))),
        (MsgType.CT_UPD, round_trip(b._replace(mark=6))),
        (MsgType.CT_DEL, round_trip(c)),
        (MsgType.CT_NEW, round_trip(d._replace(mark=7))),
    ]
    assert m.output() == []


def test_expectations_and_zones_are_distinct_objects() -> None:
    m = make("notrack")
    assert isinstance(m, NotrackMode)
    f = flow(1)
    exp = Expectation(f.orig, Tuple(f.orig.src, f.orig.dst, IPPROTO_TCP, 0, 2000), f.orig)
    m.queue([Change(NEW, f), Change(NEW, f._replace(zone=3)), Change(NEW, exp)])
    m.queue([Change(UPD, exp), Change(DEL, f._replace(zone=3))])
    out = decode(m.output())
    assert [x.type for x in out] == [MsgType.CT_NEW, MsgType.CT_DEL, MsgType.EXP_NEW]
    assert object_key(exp) == ("exp", exp.tuple, 0)
    assert object_key(f) == flow_key(f.orig)  # the internal cache's key
    assert object_key(f._replace(zone=0)) == object_key(f)  # zone 0 is no zone


def test_every_message_takes_the_next_seq() -> None:
    clock = Clock()
    m = ftfw(clock, seq=0xFFFF_FFFE)
    m.queue([Change(NEW, flow(i)) for i in range(3)])
    m.request_resync()
    seqs = [header(raw)[3] for raw in m.output()]
    assert seqs == [0xFFFF_FFFE, 0xFFFF_FFFF, 0, 1]  # control first, wraps at 2**32


def test_unencodable_objects_are_counted_and_skipped() -> None:
    m = make("notrack")
    assert isinstance(m, NotrackMode)
    bad = flow(1)._replace(orig=flow(1).orig._replace(sport=70000))
    m.queue([Change(NEW, bad), Change(NEW, flow(2))])
    out = decode(m.output())
    assert [x.obj for x in out] == [round_trip(flow(2))]
    assert m.network.send_malformed == 1
    assert m.stats_dict()["send_malformed"] == 1


# --- FTFW ----------------------------------------------------------------------------------
def test_hello_flags_until_hello_back() -> None:
    """§1.1/§2.1 [obs]: the first ALIVE is ``1a 30 00 08 <seq>``; the peer answers with
    HELLO_BACK; then the flags go."""
    clock = Clock()
    a = ftfw(clock, seq=0x6B023620)
    b = ftfw(clock, seq=0x10)
    assert a.output() == [] and a.deadline() == clock.t + 1
    clock.advance(1)
    a.tick()
    (raw,) = a.output()
    assert raw == bytes.fromhex("1a30 0008 6b023620")
    assert not a.hello_done
    assert b.receive([ctl(raw)]) == []
    assert b.has_output()  # an ALIVE to carry HELLO_BACK at once
    (back,) = b.output()
    assert header(back)[:2] == (0x1A, Flag.ALIVE | Flag.HELLO | Flag.HELLO_BACK)
    a.receive([ctl(back)])
    assert a.stats_dict()["hello_done"] is True
    a.queue([Change(NEW, flow(1))])
    out = a.output()
    # a answers b's HELLO with HELLO_BACK once (no HELLO any more), on the ALIVE that
    # receive() queued for it
    assert [header(raw)[:2] for raw in out] == [(0x1A, Flag.ALIVE | Flag.HELLO_BACK), (0x10, 0)]
    a.queue([Change(NEW, flow(2))])
    assert header(a.output()[0])[:2] == (0x10, 0)
    # b still says HELLO until a's HELLO_BACK arrives
    b.queue([Change(NEW, flow(3))])
    assert header(b.output()[0])[1] == Flag.HELLO
    b.receive(decode(out))
    assert b.stats_dict()["hello_done"] is True
    b.queue([Change(NEW, flow(4))])
    assert header(b.output()[0])[1] == 0


def test_window_ack_after_w_messages() -> None:
    a, b = ftfw(seq=100, ack_window_size=5), ftfw(seq=900, ack_window_size=5)
    connect(a, b)
    a.queue([Change(NEW, flow(i)) for i in range(12)])
    msgs = decode(a.output())
    assert [m.seq for m in msgs] == list(range(101, 113))  # 100 went to connect()
    got = b.receive(msgs)
    assert [m.obj for m in got] == [round_trip(flow(i)) for i in range(12)]
    acks = decode(b.output())
    assert [(m.flags, m.from_seq, m.to_seq) for m in acks] == [
        (Flag.ACK, 100, 104),
        (Flag.ACK, 105, 109),
    ]
    assert rs_len(a) == 12
    a.receive(acks)
    assert rs_len(a) == 3  # 110..112 wait for the next ACK
    assert a.acks_recv == 2


def test_gap_gives_ack_and_nack_then_resend_with_new_seqs() -> None:
    a, b = ftfw(seq=100), ftfw(seq=900)
    connect(a, b)
    a.queue([Change(NEW, flow(i)) for i in range(10)])
    msgs = decode(a.output())  # seqs 101..110
    lost = msgs[2:5]
    got = b.receive(msgs[:2] + msgs[5:])
    assert len(got) == 7
    assert b.network.lost == 3
    reply = decode(b.output())
    assert [(m.flags, m.from_seq, m.to_seq) for m in reply] == [
        (Flag.ACK, 100, 102),
        (Flag.NACK, 103, 105),
    ]
    a.receive(reply)
    assert a.resent == 3
    again = decode(a.output())
    assert [m.seq for m in again] == [111, 112, 113]
    assert [(m.type, m.obj) for m in again] == [(m.type, m.obj) for m in lost]
    assert [m.obj for m in b.receive(again)] == [m.obj for m in lost]
    assert rs_len(a) == 5 + 3  # 106..110 and the resends await an ACK


def test_ack_frees_the_resend_queue_and_bad_ranges_are_malformed() -> None:
    a = ftfw(seq=100)
    peer = done_hello(a)
    a.queue([Change(NEW, flow(i)) for i in range(4)])
    a.output()  # 100..103
    a.receive([ctl(ack_message(peer, 103, 100))])  # to before from
    assert a.network.malformed_header == 1
    assert rs_len(a) == 4
    a.receive([ctl(ack_message(peer + 1, 100, 101))])
    assert rs_len(a) == 2
    a.receive([ctl(nack_message(peer + 2, 100, 101))])  # already freed: nothing to resend
    assert not a.has_output()
    a.receive([ctl(ack_message(peer + 3, 102, 103))])
    assert rs_len(a) == 0


def test_resend_queue_limit_drops_the_oldest() -> None:
    a = ftfw(seq=100, resend_queue_size=10)
    peer = done_hello(a)
    a.queue([Change(NEW, flow(i)) for i in range(15)])
    a.output()  # 100..114
    stats = a.stats_dict()
    assert (stats["rs_queue"], stats["rs_dropped"]) == (10, 5)
    a.receive([ctl(nack_message(peer, 100, 114))])
    again = decode(a.output())
    assert [m.obj for m in again] == [round_trip(flow(i)) for i in range(5, 15)]


def test_changed_object_leaves_the_resend_queue() -> None:
    """A NEW waiting for its ACK must not be resent after the flow's DEL."""
    a = ftfw(seq=100)
    peer = done_hello(a)
    a.queue([Change(NEW, flow(1)), Change(NEW, flow(2))])
    a.output()  # 100, 101
    a.queue([Change(DEL, flow(1))])
    assert rs_len(a) == 1
    (dele,) = decode(a.output())
    assert (dele.type, dele.seq) == (MsgType.CT_DEL, 102)
    a.receive([ctl(nack_message(peer, 100, 102))])
    again = decode(a.output())
    assert [(m.type, m.obj) for m in again] == [
        (MsgType.CT_NEW, round_trip(flow(2))),
        (MsgType.CT_DEL, round_trip(flow(1))),
    ]


def test_control_messages_are_resent_on_nack() -> None:
    a = ftfw(seq=100)
    peer = done_hello(a)
    a.request_resync()
    (rs,) = decode(a.output())
    assert (rs.is_resync, rs.seq) == (True, 100)
    a.receive([ctl(nack_message(peer, 100, 100))])
    (again,) = decode(a.output())
    assert (again.is_resync, again.seq) == (True, 101)
    b = ftfw(seq=5)
    b.receive([again])
    assert b.resync_wanted and b.resyncs_recv == 1


def test_restarted_peer_hello_is_accepted_and_flushes() -> None:
    a = ftfw(seq=100)
    peer = done_hello(a, peer_seq=50_000)
    a.receive([ctl(alive_message(peer))])
    a.queue([Change(NEW, flow(i)) for i in range(3)])
    a.output()
    assert rs_len(a) >= 3
    # the peer restarts: a lower seq, HELLO on everything
    got = a.receive([data_msg(7, flow(9), flags=Flag.HELLO), ctl(alive_message(8, Flag.HELLO))])
    assert [m.obj for m in got] == [round_trip(flow(9))]  # not dropped as "before"
    assert a.network.before == 0
    assert rs_len(a) == 0
    assert a.tracker.last == 8
    out = a.output()
    assert header(out[0])[1] & Flag.HELLO_BACK
    a.queue([Change(NEW, flow(10))])
    assert all(not header(raw)[1] & Flag.HELLO_BACK for raw in a.output())
    assert a.hellos == 1


def test_alive_timer_sends_alive_or_ack() -> None:
    clock = Clock()
    a = ftfw(clock, seq=100)
    peer = done_hello(a)
    a.queue([Change(NEW, flow(1))])
    a.output()
    assert a.deadline() == clock.t + 1
    clock.advance(0.9)
    a.tick()
    assert not a.has_output()
    clock.advance(0.1)
    a.tick()
    (ack,) = decode(a.output())  # the range done_hello() opened
    assert (ack.flags, ack.from_seq, ack.to_seq) == (Flag.ACK, peer - 1, peer - 1)
    assert a.deadline() == clock.t + 1
    clock.advance(1)
    a.tick()
    (alive,) = decode(a.output())  # nothing received since: no range
    assert alive.is_alive and alive.flags == Flag.ALIVE
    a.receive([ctl(alive_message(peer)), ctl(alive_message(peer + 1))])
    clock.advance(1)
    a.tick()
    (ack,) = decode(a.output())
    assert (ack.is_ack, ack.from_seq, ack.to_seq) == (True, peer, peer + 1)


def test_idle_pair_pings_one_ack_per_second_each_way() -> None:
    pair = Pair("ftfw")
    pair.handshake()
    pair.run(5)
    pair.sent_a.clear()
    pair.sent_b.clear()
    pair.run(10)
    for sent in (pair.sent_a, pair.sent_b):
        msgs = [m for batch in sent for m in batch]
        assert 9 <= len(msgs) <= 11
        assert all(m.is_ack and m.from_seq == m.to_seq for m in msgs)
    assert rs_len(pair.a) <= 1 and rs_len(pair.b) <= 1


def changes_script(seed: int, n: int = 5000) -> list[list[Change]]:
    """Batches of creates, updates and deletes over a few hundred flows."""
    rng = random.Random(seed)
    live: dict[int, Flow] = {}
    batches: list[list[Change]] = []
    batch: list[Change] = []
    for _ in range(n):
        i = rng.randrange(800)
        if i not in live:
            live[i] = flow(i, mark=rng.randrange(1 << 16))
            batch.append(Change(NEW, live[i]))
        elif rng.random() < 0.25:
            batch.append(Change(DEL, live.pop(i)))
        else:
            live[i] = live[i]._replace(mark=rng.randrange(1 << 16), timeout=rng.randrange(600))
            batch.append(Change(UPD, live[i]))
        if len(batch) >= rng.randrange(1, 200):
            batches.append(batch)
            batch = []
    batches.append(batch)
    return batches


@pytest.mark.parametrize(("loss", "seed"), [(0.1, 1), (0.3, 2), (0.3, 3)])
def test_convergence_over_a_lossy_wire(loss: float, seed: int) -> None:
    pair = Pair("ftfw", loss=loss, seed=seed, max_size=600)
    pair.handshake()
    expected: dict[object, Flow | Expectation] = {}
    for batch in changes_script(seed):
        pair.a.queue(batch)
        apply_changes(expected, batch)
        pair.run(0.1)
    want = {k: round_trip(v) for k, v in expected.items()}
    for _ in range(120):
        if pair.at_b == want:
            break
        pair.run(1)
    assert pair.at_b == want
    assert pair.b.network.lost > 0  # the wire really lost messages
    assert isinstance(pair.a, FtfwMode) and pair.a.resent > 0
    pair.run(5)
    # only what lost ACKs left behind (conntrackd keeps those until the queue overflows)
    assert rs_len(pair.a) <= 20


def test_convergence_both_ways() -> None:
    pair = Pair("ftfw", loss=0.2, seed=7, max_size=400)
    pair.handshake()
    want_b: dict[object, Flow | Expectation] = {}
    want_a: dict[object, Flow | Expectation] = {}
    for ba, bb in zip(changes_script(11, 1500), changes_script(12, 1500), strict=False):
        pair.a.queue(ba)
        apply_changes(want_b, ba)
        bb = [Change(c.kind, flow(10_000 + i)) for i, c in enumerate(bb) if c.kind is NEW]
        pair.b.queue(bb)
        apply_changes(want_a, bb)
        pair.run(0.1)
    pair.run(60)
    assert pair.at_b == {k: round_trip(v) for k, v in want_b.items()}
    assert pair.at_a == {k: round_trip(v) for k, v in want_a.items()}


# --- hypothesis: FTFW invariants -------------------------------------------------------------
def check_invariants(mode: FtfwMode) -> None:
    rs = list(mode._rs.items())
    seqs = [entry[0] for _, entry in rs]
    assert all(
        ((b - a) & 0xFFFF_FFFF) < 0x8000_0000 and a != b for a, b in itertools.pairwise(seqs)
    )
    assert not set(mode._tx) & {k for k, _ in rs}  # an object in at most one queue
    assert len(rs) <= mode.rs_limit


ops = st.lists(
    st.one_of(
        st.tuples(st.just("queue"), st.lists(st.tuples(st.integers(0, 2), st.integers(0, 15)))),
        st.tuples(st.just("tick"), st.floats(0, 2)),
        st.tuples(st.just("loss"), st.floats(0, 1)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.integers(0, 2**32 - 1), st.integers(2, 20))
def test_ftfw_invariants_hold(script: list[tuple[str, object]], start: int, rs_size: int) -> None:
    pair = Pair("ftfw", a_seq=start, resend_queue_size=rs_size, ack_window_size=3)
    kinds = (NEW, UPD, DEL)
    for op, arg in script:
        if op == "queue":
            assert isinstance(arg, list)
            pair.a.queue([Change(kinds[k], flow(i, mark=k)) for k, i in arg])
            pair.b.queue([Change(kinds[k], flow(i + 100)) for k, i in arg[:3]])
        elif op == "loss":
            assert isinstance(arg, float)
            pair.ab.loss = pair.ba.loss = arg
        else:
            assert isinstance(arg, float)
            pair.run(arg, step=0.25)
        for mode in (pair.a, pair.b):
            assert isinstance(mode, FtfwMode)
            check_invariants(mode)


#: a peer's batches as the receiver gets them: mostly runs of the next data messages
#: (the batch fast path's case), and what must leave it to the loop - a gap, a repeat, an
#: old seq, HELLO flags, control messages - in any order
batch_steps = st.lists(
    st.tuples(
        st.sampled_from(["run", "run", "run", "gap", "repeat", "old", "hello", "ack", "alive"]),
        st.integers(1, 40),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch_steps,
    st.sampled_from([0, 9000, 2**32 - 30]),  # 2**32 - 30: the seqs wrap mid-test
    st.integers(1, 7),
    st.booleans(),
)
def test_ftfw_batch_fast_path_is_the_loop(
    steps: list[tuple[str, int]], start: int, window: int, sent: bool
) -> None:
    """Two receivers get the same batches, one without the batch fast path
    (``_next_run``): they return the same messages and end in the same state, with the
    same control messages queued (the ACKs of each window)."""
    fast, slow = ftfw(ack_window_size=window), ftfw(ack_window_size=window)
    slow._next_run = lambda msgs: None  # type: ignore[method-assign]
    runs: list[int] = []
    take_run = fast._next_run

    def counted(msgs: list[Message]) -> list[Message] | None:
        got = take_run(msgs)
        if got is not None:
            runs.append(len(got))
        return got

    fast._next_run = counted  # type: ignore[method-assign]
    for mode in (fast, slow):  # the peer's session starts (its HELLO, our HELLO_BACK)
        mode.receive([ctl(alive_message(start, Flag.HELLO | Flag.HELLO_BACK))])
        if sent:  # what sending does: HELLO_BACK went out
            mode.output()
    seq = start + 1
    for what, n in steps:
        batch: list[Message] = []
        if what in ("run", "gap"):
            seq += 3 if what == "gap" else 0
            batch = [Message(0, 0, (seq + i) & 0xFFFF_FFFF, None) for i in range(n)]
            seq += n
        elif what in ("repeat", "old"):
            back = 1 if what == "repeat" else min(n, 5)
            batch = [Message(1, 0, (seq - back) & 0xFFFF_FFFF, None)]
        elif what == "hello":
            batch = [Message(0, Flag.HELLO, seq & 0xFFFF_FFFF, None)]
            seq += 1
        else:
            m32 = 0xFFFF_FFFF
            raw = (
                ack_message(seq & m32, start, (start + n) & m32)
                if what == "ack"
                else alive_message(seq & m32)
            )
            batch = [ctl(raw)]
            seq += 1
        got = [mode.receive(list(batch)) for mode in (fast, slow)]
        assert got[0] == got[1], (what, n)
    state = [
        (
            list(m._ctl),
            m._window,
            m._range_start,
            m.tracker.last,
            m.last_receive,
            m._peer_hello,
            m.stats_dict(),
            m.network,
        )
        for m in (fast, slow)
    ]
    assert state[0] == state[1]
    assert fast.output() == slow.output()
    first, n = steps[0]
    if sent and first == "run" and start + 1 + n <= 0xFFFF_FFFF:
        assert runs, "the first batch is the next messages in order: the fast path's"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(1, 3), max_size=40),  # the steps between the queue's seqs
    st.sampled_from([0, 2**32 - 20]),
    st.integers(-3, 3),
    st.integers(0, 45),
)
def test_ftfw_ack_drops_exactly_the_acked_front(
    steps: list[int], start: int, shift: int, span: int
) -> None:
    """An ACK removes the resend-queue entries with seqs in its range and keeps the rest
    in order, whether the range is the queue's gap-free front (found by one skip), has
    gaps, starts before or after the front, or wraps."""
    mode = ftfw()
    seqs = list(itertools.accumulate(steps, initial=start))
    for i, seq in enumerate(seqs):
        mode._rs[("k", i)] = (seq & 0xFFFF_FFFF, 0, b"", None)
    first = (start + shift) & 0xFFFF_FFFF
    last = (first + span) & 0xFFFF_FFFF
    acked = {(s & 0xFFFF_FFFF) for s in seqs if 0 <= ((s - first) & 0xFFFF_FFFF) <= span}
    want = [e for e in mode._rs.values() if e[0] not in acked]
    mode._ack(first, last)
    assert list(mode._rs.values()) == want


# --- NOTRACK -------------------------------------------------------------------------------
def test_notrack_alive_after_one_second_idle() -> None:
    clock = Clock()
    m = make("notrack", clock, seq=40)
    assert isinstance(m, NotrackMode)
    m.queue([Change(NEW, flow(1))])
    (raw,) = m.output()
    assert header(raw)[:2] == (0x10, 0)  # no HELLO in NOTRACK
    clock.advance(0.99)
    m.tick()
    assert m.output() == []
    clock.advance(0.01)
    m.tick()
    assert m.output() == [alive_message(41)]
    assert m.deadline() == clock.t + 1


def test_notrack_receive() -> None:
    m = make("notrack")
    assert isinstance(m, NotrackMode)
    got = m.receive(
        [
            data_msg(10, flow(1)),
            ctl(ack_message(11, 1, 2)),
            ctl(nack_message(12, 1, 2)),
            ctl(alive_message(13)),
            data_msg(16, flow(2), mtype=1),  # two lost
            data_msg(3, flow(3)),  # a restarted peer: recorded, still applied
            ctl(resync_message(4)),
        ]
    )
    assert [m.obj for m in got] == [round_trip(flow(i)) for i in (1, 2, 3)]
    assert m.network.malformed_header == 2
    assert (m.network.lost, m.network.before) == (2, 1)
    assert m.tracker.last == 4
    assert m.resync_wanted
    assert m.request_resync()
    assert decode(m.output())[0].is_resync


# --- ALARM ---------------------------------------------------------------------------------
def alarm(clock: Clock, **kw: object) -> AlarmMode:
    m = make_mode(
        config("alarm", **kw), Encoder(), clock=clock, seq=SeqCounter(1), rng=random.Random(5)
    )
    assert isinstance(m, AlarmMode)
    return m


JITTERS = {0.199999, 0.399999, 0.599999, 0.799999, 0.999999}


def test_alarm_refresh_timing_bounds() -> None:
    clock = Clock()
    m = alarm(clock, refresh_time=10)
    start = clock.t
    m.queue([Change(NEW, flow(i)) for i in range(500)])
    m.output()
    dues = sorted(due for due, _, _ in m._timers.values())
    delays = [d - start for d in dues]
    assert all(1.199999 - 1e-9 <= d <= 10.999999 + 1e-9 for d in delays)
    assert {round(d % 1, 6) for d in delays} == JITTERS
    assert {int(d) for d in delays} == set(range(1, 11))
    assert m.deadline() == dues[0]
    # each object is first refreshed when its own timer is due
    due_of = {key: due for key, (due, _, _) in m._timers.items()}
    first: dict[tuple[object, ...], float] = {}
    types: set[int] = set()
    while clock.t < start + 11:
        clock.advance(0.05)
        m.tick()
        for msg in decode(m.output()):
            assert msg.obj is not None
            first.setdefault(object_key(msg.obj), clock.t)
            types.add(msg.type)
    assert len(first) == 500
    assert all(due_of[k] <= t < due_of[k] + 0.05 + 1e-9 for k, t in first.items())
    assert types == {MsgType.CT_NEW}  # never updated: refreshed as NEW


def test_alarm_rearm_on_update_and_type_upd() -> None:
    clock = Clock()
    m = alarm(clock, refresh_time=5)
    m.queue([Change(NEW, flow(1))])
    m.output()
    first = m.deadline()
    assert first is not None
    clock.advance(first - clock.t - 0.1)
    m.queue([Change(UPD, flow(1, mark=9))])
    m.output()
    second = m.deadline()
    assert second is not None and second >= clock.t + 1.199999 - 1e-9
    clock.t = first
    m.tick()
    assert m.output() == []  # the old timer was replaced
    clock.t = second
    m.tick()
    (msg,) = decode(m.output())
    assert (msg.type, msg.obj) == (MsgType.CT_UPD, round_trip(flow(1, mark=9)))
    assert m.refreshes == 1


def test_alarm_refresh_uses_lookup_and_del_cancels() -> None:
    clock = Clock()
    current = {object_key(flow(1)): flow(1, mark=3)}
    m = make_mode(
        config("alarm", refresh_time=3),
        Encoder(),
        clock=clock,
        rng=random.Random(1),
        lookup=lambda obj: current.get(object_key(obj)),
    )
    m.queue([Change(NEW, flow(1)), Change(NEW, flow(2)), Change(NEW, flow(3))])
    m.output()
    m.queue([Change(DEL, flow(3))])
    assert [x.type for x in decode(m.output())] == [MsgType.CT_DEL]
    clock.advance(5)
    m.tick()
    out = decode(m.output())
    # flow 1 refreshed in its current state, flow 2 gone from the cache, flow 3 deleted
    assert [(x.type, x.obj) for x in out] == [(MsgType.CT_NEW, round_trip(flow(1, mark=3)))]
    assert m.stats_dict()["refresh_timers"] == 1
    clock.advance(5)
    m.tick()
    assert len(decode(m.output())) == 1  # and again, re-armed


def test_alarm_ignores_flags_and_sends_no_control() -> None:
    clock = Clock()
    m = alarm(clock)
    got = m.receive(
        [
            data_msg(5, flow(1)),
            data_msg(6, flow(2), flags=Flag.HELLO),
            ctl(ack_message(7, 1, 2)),
            ctl(alive_message(8)),
            ctl(resync_message(9)),
            data_msg(3, flow(3), mtype=2),
        ]
    )
    assert [(x.type, x.obj) for x in got] == [
        (MsgType.CT_NEW, round_trip(flow(1))),
        (MsgType.CT_DEL, round_trip(flow(3))),
    ]
    assert not m.resync_wanted
    assert m.network.lost == 0 and m.network.malformed == 0
    assert m.request_resync() is False
    assert m.deadline() is None
    for _ in range(50):
        clock.advance(1)
        m.tick()
        assert m.output() == []


def test_forget_drops_queues_and_timers() -> None:
    clock = Clock()
    m = alarm(clock)
    m.queue([Change(NEW, flow(1))])
    m.forget()
    assert not m.has_output() and m.deadline() is None
    f = ftfw(clock)
    f.queue([Change(NEW, flow(1))])
    f.output()
    f.queue([Change(NEW, flow(2))])
    f.forget()
    assert not f.has_output() and rs_len(f) == 0


def test_stats_dict_is_flat() -> None:
    for mode in ("ftfw", "notrack", "alarm"):
        m = make(mode)
        assert isinstance(m, (FtfwMode, NotrackMode, AlarmMode))
        stats = m.stats_dict()
        assert stats["mode"] == mode
        assert all(isinstance(v, (int, float, bool, str)) for v in stats.values())


def test_network_stats_are_shared_when_given() -> None:
    net = NetworkStats()
    m = make_mode(config("notrack"), Encoder(), clock=Clock(), network=net)
    m.receive([ctl(ack_message(1, 1, 1))])
    assert net.malformed_header == 1
