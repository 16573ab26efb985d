"""The internal cache: how kernel events and dumps become cached state and changes to
replicate, and how compactly that state is kept.

What these tests guarantee:

* the compact record keeps every replicated field exactly (hypothesis, over the codec
  tests' strategies), and drops only what the kernel owns (id, use, counters,
  timestamps);
* events: NEW adds, NEW of a known flow updates, UPDATE merges a partial event into the
  cached flow and adds an unknown one, DESTROY removes, and the counters say what
  happened (not found, no space);
* origins: our own injections are not cached and yield nothing, commits and flushes
  update the cache silently, and "came from the peer" survives updates and resyncs;
* expectations: mirrored only when enabled, when the helper list accepts them and while
  their master flow is cached;
* reconcile: a dump adds, updates only what a peer would care about, removes what
  vanished, applies the filter, and sends nothing back that the peer created;
* a random event sequence leaves the cache equal to a plain dictionary model;
* 100k cached IPv4 TCP flows cost less than 300 bytes each.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfsyncd import _record
from nfsyncd.cache import Change, InternalCache, Origin, flow_key
from nfsyncd.filter import Filter
from nfsyncd.kernel import Event
from nfsyncd.model import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    Counters,
    EventKind,
    Expectation,
    Flow,
    Status,
    Synproxy,
    TcpFlags,
    TcpInfo,
    Timestamp,
    Tuple,
)
from tests.unit.test_codec import flows as any_flows
from tests.unit.test_codec import odd_tuples, tuples

NEW, UPDATE, DESTROY = EventKind.NEW, EventKind.UPDATE, EventKind.DESTROY
SYN_SENT, ESTABLISHED, FIN_WAIT, TIME_WAIT = 1, 3, 4, 7
COMMIT_PORT, FLUSH_PORT, INJECT_PORT, OTHER_PORT = 101, 102, 103, 104
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEPT_FIELDS = Flow._fields[:14]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def v4(i: int, net: int = 0) -> bytes:
    return bytes((198, 18 + (net & 1), (i >> 8) & 0xFF, i & 0xFF))


def tcp(i: int, state: int = ESTABLISHED, **fields: Any) -> Flow:
    """TCP flow number ``i`` as the kernel reports it (id, timestamp and all)."""
    orig = Tuple(v4(i), v4(1, 1), IPPROTO_TCP, 1024 + i, 80)
    base = Flow(
        orig,
        orig.inverted(),
        status=int(Status.CONFIRMED | Status.SEEN_REPLY | Status.ASSURED),
        timeout=432000,
        protoinfo=TcpInfo(state, 7, 7, TcpFlags(0x23, 0x23), TcpFlags(0x23, 0x23)),
        id=0x1000 + i,
        timestamp_event=1_700_000_000_000_000_000,
    )
    return base._replace(**fields)


def udp(i: int, **fields: Any) -> Flow:
    orig = Tuple(v4(i), v4(1, 1), IPPROTO_UDP, 1024 + i, 53)
    return Flow(orig, orig.inverted(), status=8, timeout=30)._replace(**fields)


def kept(flow: Flow) -> Flow:
    """What the cache keeps of ``flow``: no kernel-owned fields, zero values absent."""
    stripped = flow._replace(**dict.fromkeys(Flow._fields[14:]))
    return _record.canonical(stripped)


def ev(kind: EventKind, obj: Flow | Expectation, origin: int = 0) -> Event:
    return Event(kind, obj, origin)


def change(kind: EventKind, flow: Flow) -> Change:
    """The change the cache makes of a flow event: with the flow's key (the sync queue's)."""
    return Change(kind, flow, flow_key(flow.orig, flow.zone))


def new_cache(filter: Filter | None = None, **kw: Any) -> InternalCache:
    cache = InternalCache(filter, clock=FakeClock(), **kw)
    cache.origins.update(
        {COMMIT_PORT: Origin.COMMIT, FLUSH_PORT: Origin.FLUSH, INJECT_PORT: Origin.INJECT}
    )
    return cache


def cached(cache: InternalCache) -> dict[tuple[Tuple, int], Flow]:
    return {(f.orig, f.zone or 0): f for f in (f for f, _ in cache.flows())}


def kinds(changes: Iterable[Change]) -> list[tuple[str, Any]]:
    return [(c.kind.name, c.obj.orig if isinstance(c.obj, Flow) else c.obj.tuple) for c in changes]


# --- the record codec -----------------------------------------------------------------------


@FAST
@given(any_flows)
def test_record_round_trip_is_exact_for_every_kept_field(flow: Flow) -> None:
    """Any flow (v4/v6, NAT or not, every optional field present or not) packs and
    unpacks to itself minus the kernel-owned fields; its key gives back tuple and zone."""
    key = flow_key(flow.orig, flow.zone)
    rec = _record.pack_record(flow, _record.FLAG_FROM_PEER, 12345)
    orig, zone = _record.unpack_key(key)
    assert (orig, zone) == (flow.orig, flow.zone or 0)
    assert _record.unpack_record(orig, rec) == Flow(*flow[:14])
    assert _record.record_since(rec) == 12345
    assert rec[0] & _record.FLAG_FROM_PEER


@FAST
@given(any_flows)
def test_canonical_packing_equals_packing_the_canonical_flow(flow: Flow) -> None:
    """The fast path of ``pack_canonical`` writes the same bytes as the general one."""
    want = _record.pack_record(_record.canonical(flow), 0, 7)
    assert _record.pack_canonical(flow, 0, 7) == want
    common = tcp(3)._replace(mark=flow.mark, timeout=flow.timeout or 1)
    want = _record.pack_record(_record.canonical(common), 0, 7)
    assert _record.pack_canonical(common, 0, 7) == want


@FAST
@given(tuples | odd_tuples)
def test_tuple_round_trip(t: Tuple) -> None:
    data = _record.pack_tuple(t)
    assert _record.unpack_tuple(b"xx" + data, 2) == (t, 2 + len(data))


def test_record_of_a_common_tcp_flow_is_small() -> None:
    """The shape of nearly every TCP flow: 23 bytes of record, 13 of key."""
    flow = tcp(1)
    assert len(_record.pack_canonical(flow, 0, 0)) == 23
    assert len(flow_key(flow.orig, None)) == 14
    assert len(flow_key(flow.orig, 7)) == 16


def test_a_nat_reply_is_stored_whole_and_a_plain_one_as_a_flag() -> None:
    nat = tcp(1)._replace(reply=tcp(1).orig.inverted()._replace(dst=v4(99)))
    plain = _record.pack_record(tcp(1), 0, 0)
    natted = _record.pack_record(nat, 0, 0)
    assert len(natted) == len(plain) + 14
    assert _record.unpack_record(nat.orig, natted).reply == nat.reply


def test_addresses_of_mixed_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="4 or 16"):
        _record.pack_tuple(Tuple(b"\1\2\3\4", b"\0" * 16, IPPROTO_TCP, 1, 2))


# --- events: flows --------------------------------------------------------------------------


def test_new_event_adds_and_is_replicated() -> None:
    cache = new_cache()
    flow = tcp(1, mark=0x42, zone=3, helper="ftp")
    changes = cache.apply_events([ev(NEW, flow)])
    assert changes == [change(NEW, flow)]
    assert cache.get_flow(flow.orig, 3) == kept(flow)
    assert cache.get_flow(flow.orig) is None  # another zone
    assert len(cache) == cache.flow_count() == 1
    assert cache.stats.flows.created == 1 and cache.stats.flows.active == 1


def test_zone_zero_and_no_zone_are_the_same_flow() -> None:
    cache = new_cache()
    cache.apply_events([ev(NEW, tcp(1, zone=0))])
    assert cache.get_flow(tcp(1).orig) == kept(tcp(1))
    cache.apply_events([ev(UPDATE, tcp(1, state=FIN_WAIT))])
    assert len(cache) == 1


def test_new_event_of_a_known_flow_updates_it() -> None:
    cache = new_cache()
    cache.apply_events([ev(NEW, tcp(1, state=SYN_SENT))])
    changes = cache.apply_events([ev(NEW, tcp(1))])
    assert changes == [change(UPDATE, tcp(1))]
    assert cache.get_flow(tcp(1).orig) == kept(tcp(1))
    assert (cache.stats.flows.created, cache.stats.flows.updated) == (1, 1)


def test_partial_update_keeps_what_the_event_leaves_out() -> None:
    """Kernel UPDATE events carry tuples, status and timeout, plus only what changed:
    fields the event leaves out keep their cached values, the others replace them."""
    cache = new_cache()
    full = tcp(1, state=SYN_SENT, mark=5, helper="ftp", labels=b"\x01" + bytes(15))
    cache.apply_events([ev(NEW, full)])
    partial = Flow(
        full.orig,
        full.reply,
        status=full.status,
        timeout=100,
        protoinfo=TcpInfo(ESTABLISHED, 7, 7, TcpFlags(0, 0), TcpFlags(0, 0)),
        id=full.id,
    )
    [change] = cache.apply_events([ev(UPDATE, partial)])
    want = kept(full)._replace(timeout=100, protoinfo=partial.protoinfo)
    assert cache.get_flow(full.orig) == want
    assert change.kind == UPDATE and kept(change.obj) == want  # type: ignore[arg-type]


def test_an_update_to_zero_clears_the_field() -> None:
    """A mark set back to 0 arrives as CTA_MARK 0: the change carries the 0 (the peer
    must clear its mark), the cache stores "no mark"."""
    cache = new_cache()
    cache.apply_events([ev(NEW, tcp(1, mark=5))])
    [change] = cache.apply_events([ev(UPDATE, tcp(1, mark=0))])
    assert change.obj.mark == 0  # type: ignore[union-attr]
    assert cache.get_flow(tcp(1).orig).mark is None  # type: ignore[union-attr]


def test_update_of_an_unknown_flow_adds_it() -> None:
    """Events can be lost (or a NEW filtered): an UPDATE of an unknown flow adds it."""
    cache = new_cache()
    changes = cache.apply_events([ev(UPDATE, tcp(1))])
    assert changes == [change(NEW, tcp(1))]
    assert cache.get_flow(tcp(1).orig) == kept(tcp(1))
    s = cache.stats.flows
    assert (s.created, s.update_not_found, s.updated, s.update_failed) == (1, 1, 0, 0)


def test_destroy_removes_and_is_replicated() -> None:
    cache = new_cache()
    cache.apply_events([ev(NEW, tcp(1)), ev(NEW, tcp(2))])
    destroy = tcp(1, status=int(Status.CONFIRMED | Status.DYING), protoinfo=TcpInfo(3))
    destroy = destroy._replace(counters_orig=Counters(1, 2), timestamp=Timestamp(1, 2))
    assert cache.apply_events([ev(DESTROY, destroy)]) == [change(DESTROY, destroy)]
    assert cache.get_flow(tcp(1).orig) is None and len(cache) == 1
    assert cache.stats.flows.deleted == 1


def test_destroy_of_an_unknown_flow_is_counted_not_found() -> None:
    cache = new_cache()
    assert cache.apply_events([ev(DESTROY, tcp(1))]) == []
    s = cache.stats.flows
    assert (s.delete_failed, s.delete_not_found, s.deleted) == (1, 1, 0)


def test_the_limit_refuses_new_entries_but_not_updates() -> None:
    cache = new_cache(limit=2)
    changes = cache.apply_events([ev(NEW, tcp(i)) for i in range(3)])
    assert kinds(changes) == [("NEW", tcp(0).orig), ("NEW", tcp(1).orig)]
    assert len(cache) == 2
    s = cache.stats.flows
    assert (s.created, s.create_failed, s.no_space) == (2, 1, 1)
    assert kinds(cache.apply_events([ev(UPDATE, tcp(0, state=FIN_WAIT))])) == [
        ("UPDATE", tcp(0).orig)
    ]
    cache.limit = 3  # changeable at run time
    cache.apply_events([ev(NEW, tcp(2))])
    assert len(cache) == 3


def test_v6_icmp_and_nat_flows_are_cached_exactly() -> None:
    orig = Tuple(b"\x20\x01\x0d\xb8" + bytes(11) + b"\x01", b"\x20\x01\x0d\xb8" + bytes(12), 58)
    icmp6 = Flow(
        orig._replace(icmp_type=128, icmp_code=0, icmp_id=7),
        orig._replace(src=orig.dst, dst=orig.src, icmp_type=129, icmp_code=0, icmp_id=7),
        status=8,
        timeout=30,
    )
    plain = tcp(5)
    nat = plain._replace(reply=plain.orig.inverted()._replace(dst=v4(200)), status=0x1BE)
    cache = new_cache()
    cache.apply_events([ev(NEW, icmp6), ev(NEW, nat)])
    assert cache.get_flow(icmp6.orig) == kept(icmp6)
    assert cache.get_flow(nat.orig) == kept(nat)


def test_flows_lists_entries_with_their_age() -> None:
    cache = new_cache()
    clock = cache._clock
    assert isinstance(clock, FakeClock)
    cache.apply_events([ev(NEW, tcp(1))])
    clock.now += 30
    cache.apply_events([ev(NEW, tcp(2)), ev(UPDATE, tcp(1, state=FIN_WAIT))])
    clock.now += 12
    ages = {f.orig: age for f, age in cache.flows()}
    assert ages == {tcp(1).orig: 42, tcp(2).orig: 12}  # an update does not reset the age


def test_flows_iteration_survives_changes_to_the_cache() -> None:
    cache = new_cache()
    cache.apply_events([ev(NEW, tcp(i)) for i in range(10)])
    seen = []
    for flow, _ in cache.flows():
        seen.append(flow.orig)
        cache.apply_events([ev(DESTROY, tcp(9)), ev(NEW, tcp(50 + len(seen)))])
    assert tcp(9).orig not in seen and len(seen) == 9


def test_bad_values_are_counted_not_raised() -> None:
    cache = new_cache()
    bad = Flow(Tuple(b"\1\2\3", b"\1\2\3", IPPROTO_TCP, 1, 2), timeout=1)
    worse = tcp(1, mark=1 << 40)
    assert cache.apply_events([ev(NEW, bad), ev(NEW, worse), ev(NEW, tcp(2))]) == [
        change(NEW, tcp(2))
    ]
    assert cache.stats.flows.create_failed == 2


# --- origins --------------------------------------------------------------------------------


def test_commit_events_update_the_cache_silently_and_mark_the_peer() -> None:
    cache = new_cache()
    assert cache.apply_events([ev(NEW, tcp(1), COMMIT_PORT), ev(NEW, tcp(2))]) == [
        change(NEW, tcp(2))
    ]
    assert cache.get_flow(tcp(1).orig) == kept(tcp(1))
    assert cache.is_from_peer(tcp(1)) and not cache.is_from_peer(tcp(2))
    assert cache.is_from_peer(flow_key(tcp(1).orig))
    # traffic updates it later: replicated, still the peer's
    assert kinds(cache.apply_events([ev(UPDATE, tcp(1, state=FIN_WAIT))])) == [
        ("UPDATE", tcp(1).orig)
    ]
    assert cache.is_from_peer(tcp(1))
    assert [f.orig for f, _ in cache.flows(from_peer=True)] == [tcp(1).orig]
    assert [f.orig for f, _ in cache.flows(from_peer=False)] == [tcp(2).orig]


def test_flush_events_remove_silently() -> None:
    cache = new_cache()
    cache.apply_events([ev(NEW, tcp(1)), ev(NEW, tcp(2))])
    assert cache.apply_events([ev(DESTROY, tcp(1), FLUSH_PORT)]) == []
    assert cache.get_flow(tcp(1).orig) is None and cache.stats.flows.deleted == 1


def test_events_of_unregistered_sockets_are_replicated() -> None:
    cache = new_cache()
    assert cache.apply_events([ev(NEW, tcp(1), OTHER_PORT)]) == [change(NEW, tcp(1))]


def test_injected_flows_are_not_cached_but_remembered_as_the_peers() -> None:
    cache = new_cache()
    assert cache.apply_events([ev(NEW, tcp(1), INJECT_PORT)]) == []
    assert len(cache) == 0 and cache.is_from_peer(tcp(1))
    assert cache.stats.flows.ignored == 1 and cache.stats.flows.created == 0
    # a later traffic update adds it; it is replicated but stays the peer's
    assert kinds(cache.apply_events([ev(UPDATE, tcp(1, state=FIN_WAIT))])) == [("NEW", tcp(1).orig)]
    assert cache.is_from_peer(tcp(1))
    # an injected DESTROY removes a cached entry silently (no ghost)
    assert cache.apply_events([ev(DESTROY, tcp(1), INJECT_PORT)]) == []
    assert len(cache) == 0 and not cache.is_from_peer(tcp(1))


def test_injected_destroy_forgets_the_key() -> None:
    cache = new_cache()
    cache.apply_events([ev(NEW, tcp(1), INJECT_PORT), ev(DESTROY, tcp(1), INJECT_PORT)])
    assert not cache.is_from_peer(tcp(1))
    cache.apply_events([ev(NEW, tcp(2), INJECT_PORT)])
    assert cache.apply_events([ev(DESTROY, tcp(2))]) == []  # expired: known, not an error
    assert not cache.is_from_peer(tcp(2)) and cache.stats.flows.delete_not_found == 0


def test_injected_update_of_a_cached_flow_marks_and_updates_it() -> None:
    cache = new_cache()
    cache.apply_events([ev(NEW, tcp(1))])
    assert cache.apply_events([ev(UPDATE, tcp(1, state=FIN_WAIT), INJECT_PORT)]) == []
    assert cache.is_from_peer(tcp(1))
    assert cache.get_flow(tcp(1).orig).protoinfo.state == FIN_WAIT  # type: ignore[union-attr]


def test_the_peer_mark_survives_a_resync() -> None:
    """Committed flows (their events seen) and flows the daemon marked (their events
    lost to an overrun): a resync from a dump keeps them the peer's and sends none of
    them back; a flow only local traffic made is sent."""
    cache = new_cache()
    cache.apply_events([ev(NEW, tcp(i), COMMIT_PORT) for i in range(3)])
    assert cache.mark_from_peer([tcp(i) for i in range(3, 6)]) == 0  # not cached yet
    assert cache.mark_from_peer([flow_key(tcp(0).orig), tcp(6)]) == 0  # 0 already marked
    dump = [tcp(i, timeout=400000, mark=0, synproxy=Synproxy(0, 0, 0)) for i in range(8)]
    changes = cache.reconcile_flows(dump)
    assert kinds(changes) == [("NEW", tcp(7).orig)]
    assert {f.orig for f, _ in cache.flows(from_peer=True)} == {tcp(i).orig for i in range(7)}
    assert len(cache) == 8


def test_a_changed_peer_flow_is_still_replicated_by_a_resync() -> None:
    """After a takeover, local traffic moves the peer's flows on; a resync that finds one
    changed sends the change (a timeout alone is no change)."""
    cache = new_cache()
    cache.apply_events([ev(NEW, tcp(1), COMMIT_PORT), ev(NEW, tcp(2), COMMIT_PORT)])
    changes = cache.reconcile_flows([tcp(1, state=FIN_WAIT), tcp(2, timeout=5)])
    assert kinds(changes) == [("UPDATE", tcp(1).orig)]
    assert cache.is_from_peer(tcp(1)) and cache.is_from_peer(tcp(2))
    assert cache.get_flow(tcp(2).orig).timeout == 5  # type: ignore[union-attr]


def test_mark_from_peer_marks_cached_entries_and_forgets_vanished_keys() -> None:
    cache = new_cache()
    cache.apply_events([ev(NEW, tcp(1))])
    assert cache.mark_from_peer([tcp(1), tcp(2)]) == 1
    assert cache.is_from_peer(tcp(1)) and cache.is_from_peer(tcp(2))
    cache.reconcile_flows([tcp(1)])  # tcp(2) is not in the kernel: forget it
    assert cache.is_from_peer(tcp(1)) and not cache.is_from_peer(tcp(2))


# --- filter ---------------------------------------------------------------------------------


def test_events_the_filter_rejects_are_not_cached() -> None:
    cache = new_cache(Filter(protocol=("ignore", (IPPROTO_UDP,))))
    changes = cache.apply_events([ev(NEW, udp(1)), ev(NEW, tcp(1)), ev(DESTROY, udp(1))])
    assert changes == [change(NEW, tcp(1))]
    assert len(cache) == 1
    s = cache.stats.flows
    assert (s.filtered, s.delete_not_found) == (2, 0)


def test_tcp_state_filter_keeps_the_last_accepted_state() -> None:
    """State Accept {ESTABLISHED TIME_WAIT}: the handshake is not replicated; a flow is
    added once established; a FIN_WAIT update is ignored (conntrackd semantics: the
    entry keeps its ESTABLISHED state); TIME_WAIT is replicated; DESTROY removes."""
    cache = new_cache(Filter(tcp_state=("accept", (ESTABLISHED, TIME_WAIT))))
    assert cache.apply_events([ev(NEW, tcp(1, state=SYN_SENT))]) == []
    assert kinds(cache.apply_events([ev(UPDATE, tcp(1))])) == [("NEW", tcp(1).orig)]
    assert cache.apply_events([ev(UPDATE, tcp(1, state=FIN_WAIT))]) == []
    assert cache.get_flow(tcp(1).orig).protoinfo.state == ESTABLISHED  # type: ignore[union-attr]
    assert kinds(cache.apply_events([ev(UPDATE, tcp(1, state=TIME_WAIT))])) == [
        ("UPDATE", tcp(1).orig)
    ]
    destroy = tcp(1, protoinfo=TcpInfo(TIME_WAIT))
    assert kinds(cache.apply_events([ev(DESTROY, destroy)])) == [("DESTROY", tcp(1).orig)]
    assert cache.stats.flows.filtered == 2


def test_a_new_filter_removes_what_it_rejects_at_the_next_resync() -> None:
    cache = new_cache()
    cache.apply_events([ev(NEW, tcp(1)), ev(NEW, udp(2)), ev(NEW, tcp(3, state=SYN_SENT))])
    cache.set_filter(Filter(protocol=("accept", (IPPROTO_TCP,)), tcp_state=("ignore", (SYN_SENT,))))
    changes = cache.reconcile_flows([tcp(1), udp(2), tcp(3, state=SYN_SENT), udp(4)])
    assert sorted(kinds(changes)) == sorted([("DESTROY", udp(2).orig), ("DESTROY", tcp(3).orig)])
    assert [f.orig for f, _ in cache.flows()] == [tcp(1).orig]
    assert cache.stats.flows.filtered == 3


def test_a_filter_change_seen_by_an_event_removes_the_entry() -> None:
    cache = new_cache()
    cache.apply_events([ev(NEW, udp(1))])
    cache.set_filter(Filter(protocol=("ignore", (IPPROTO_UDP,))))
    assert kinds(cache.apply_events([ev(UPDATE, udp(1, timeout=20))])) == [("DESTROY", udp(1).orig)]
    assert len(cache) == 0


# --- reconcile ------------------------------------------------------------------------------


def test_reconcile_adds_updates_and_removes() -> None:
    cache = new_cache()
    cache.apply_events([ev(NEW, tcp(i)) for i in range(4)])
    dump = [
        tcp(0, timeout=5, id=None, mark=0),  # only the timeout and a zero mark: no change
        tcp(1, state=FIN_WAIT),  # changed
        tcp(3),  # unchanged
        tcp(4),  # new
    ]
    changes = cache.reconcile_flows(dump)
    assert sorted(kinds(changes), key=str) == sorted(
        [("UPDATE", tcp(1).orig), ("DESTROY", tcp(2).orig), ("NEW", tcp(4).orig)], key=str
    )
    [destroyed] = [c.obj for c in changes if c.kind == DESTROY]
    assert destroyed == kept(tcp(2))
    assert cached(cache) == {(f.orig, 0): kept(f) for f in dump}
    s = cache.stats.flows
    assert (s.created, s.updated, s.deleted) == (5, 1, 1)
    assert cache.reconcile_flows(dump) == []  # the same dump again changes nothing


def test_reconcile_merges_what_a_dump_leaves_out() -> None:
    """A dump entry missing a field the cache has (the cached helper) keeps it."""
    cache = new_cache()
    cache.apply_events([ev(NEW, tcp(1, helper="ftp"))])
    assert cache.reconcile_flows([tcp(1)]) == []
    assert cache.get_flow(tcp(1).orig).helper == "ftp"  # type: ignore[union-attr]


def test_reconcile_of_an_empty_dump_empties_the_cache() -> None:
    cache = new_cache()
    cache.apply_events([ev(NEW, tcp(i)) for i in range(3)])
    assert [c.kind for c in cache.reconcile_flows([])] == [DESTROY] * 3
    assert len(cache) == 0


def test_reconcile_respects_the_limit() -> None:
    cache = new_cache(limit=2)
    changes = cache.reconcile_flows([tcp(i) for i in range(3)])
    assert len(changes) == 2 and cache.stats.flows.no_space == 1


def test_flush_and_reset() -> None:
    cache = new_cache(expectations=True)
    cache.apply_events([ev(NEW, tcp(1)), ev(NEW, tcp(2), INJECT_PORT)])
    cache.flush()
    assert len(cache) == 0 and not cache.is_from_peer(tcp(2))
    assert cache.stats.flows.created == 1
    cache.reset()
    stats = cache.stats_dict()
    assert all(v == 0 for v in stats.values())
    assert {"active", "created", "create_failed", "no_space", "updated", "update_failed"} <= set(
        stats
    )
    assert {"update_not_found", "deleted", "delete_failed", "delete_not_found"} <= set(stats)
    assert {"filtered", "expect_active", "expect_created", "expect_no_master"} <= set(stats)


# --- expectations ---------------------------------------------------------------------------


def expectation(master: Flow, port: int, helper: str | None = "ftp", **kw: Any) -> Expectation:
    t = Tuple(master.orig.src, master.orig.dst, IPPROTO_TCP, 0, port)
    mask = Tuple(b"\xff" * 4, b"\xff" * 4, 0xFF, 0, 0xFFFF)
    return Expectation(master.orig, t, mask, timeout=300, id=port, helper=helper)._replace(**kw)


def test_expectations_are_ignored_when_disabled() -> None:
    cache = new_cache()
    cache.apply_events([ev(NEW, tcp(1))])
    assert cache.apply_events([ev(NEW, expectation(tcp(1), 30000))]) == []
    assert cache.expect_count() == 0 and cache.stats.expects.ignored == 1


def test_expectation_lifecycle() -> None:
    cache = new_cache(expectations=True)
    exp = expectation(tcp(1), 30000)
    cache.apply_events([ev(NEW, tcp(1))])
    assert cache.apply_events([ev(NEW, exp)]) == [Change(NEW, exp._replace(id=None))]
    assert cache.get_expect(exp.tuple) == exp._replace(id=None)
    assert [(e.tuple, age) for e, age in cache.expects()] == [(exp.tuple, 0)]
    assert kinds(cache.apply_events([ev(NEW, exp._replace(timeout=200))])) == [
        ("UPDATE", exp.tuple)
    ]
    assert kinds(cache.apply_events([ev(DESTROY, exp)])) == [("DESTROY", exp.tuple)]
    assert cache.apply_events([ev(DESTROY, exp)]) == []
    s = cache.stats.expects
    assert (s.created, s.updated, s.deleted, s.delete_not_found) == (1, 1, 1, 1)
    assert cache.stats.flows.created == 1  # counted apart


def test_expectation_without_its_master_is_dropped() -> None:
    cache = new_cache(expectations=True)
    assert cache.apply_events([ev(NEW, expectation(tcp(1), 30000))]) == []
    assert cache.stats.expects.no_master == 1
    # zones must agree too
    cache.apply_events([ev(NEW, tcp(1, zone=5))])
    assert cache.apply_events([ev(NEW, expectation(tcp(1), 30000))]) == []
    assert len(cache.apply_events([ev(NEW, expectation(tcp(1), 30000, zone=5))])) == 1


def test_expectation_helper_filter() -> None:
    cache = new_cache(Filter(expect_helpers=("sip",)), expectations=True)
    cache.apply_events([ev(NEW, tcp(1))])
    events = [
        ev(NEW, expectation(tcp(1), 1, "ftp")),
        ev(NEW, expectation(tcp(1), 2, None)),
        ev(NEW, expectation(tcp(1), 3, "SIP-5060")),
    ]
    assert kinds(cache.apply_events(events)) == [("NEW", expectation(tcp(1), 3).tuple)]
    assert cache.stats.expects.filtered == 2


def test_expectation_origins() -> None:
    cache = new_cache(expectations=True)
    cache.apply_events([ev(NEW, tcp(1))])
    committed, injected = expectation(tcp(1), 1), expectation(tcp(1), 2)
    assert cache.apply_events([ev(NEW, committed, COMMIT_PORT)]) == []
    assert cache.apply_events([ev(NEW, injected, INJECT_PORT)]) == []
    assert cache.expect_count() == 1
    assert cache.is_from_peer(committed) and cache.is_from_peer(injected)
    # a resync adds the injected one silently, keeps both the peer's
    assert cache.reconcile_expects([committed, injected]) == []
    assert cache.expect_count() == 2
    assert [e.tuple for e, _ in cache.expects(from_peer=True)] == [committed.tuple, injected.tuple]


def test_reconcile_expects() -> None:
    cache = new_cache(expectations=True)
    cache.apply_events([ev(NEW, tcp(1)), ev(NEW, tcp(2))])
    a, b, c = (expectation(tcp(1), p) for p in (1, 2, 3))
    orphan = expectation(tcp(9), 4)
    cache.apply_events([ev(NEW, a), ev(NEW, b)])
    changes = cache.reconcile_expects([a._replace(timeout=7), c, orphan])
    assert sorted(kinds(changes), key=str) == sorted(
        [("DESTROY", b.tuple), ("NEW", c.tuple)], key=str
    )
    assert cache.stats.expects.no_master == 1
    # the master goes: the expectation goes with it at the next resync
    cache.reconcile_flows([tcp(2)])
    assert kinds(cache.reconcile_expects([a, c])) == [("DESTROY", a.tuple), ("DESTROY", c.tuple)]
    assert cache.expect_count() == 0


# --- model-based ----------------------------------------------------------------------------

small_flows = st.builds(
    lambda i, state, mark, helper, timeout: tcp(
        i, state=state, mark=mark, helper=helper, timeout=timeout
    ),
    st.integers(0, 5),
    st.sampled_from([SYN_SENT, ESTABLISHED, FIN_WAIT]),
    st.none() | st.integers(0, 3),
    st.none() | st.sampled_from(["ftp", "sip"]),
    st.none() | st.integers(0, 100),
)
partial = st.builds(
    lambda f, drop: f._replace(**dict.fromkeys(drop)),
    small_flows,
    st.sets(st.sampled_from(["mark", "helper", "protoinfo", "timeout", "status"])),
)
events_strategy = st.lists(
    st.tuples(st.sampled_from([NEW, UPDATE, DESTROY]), small_flows | partial), max_size=40
)


def _merge_model(event: Flow, old: Flow | None) -> Flow:
    """The merge rule: the event's values win where it has them; zeros are dropped after
    merging (a mark set to 0 clears the cached one)."""
    if old is None:
        return kept(event)
    stripped = event._replace(**dict.fromkeys(Flow._fields[14:]))
    merged = [e if e is not None else o for e, o in zip(stripped, old, strict=True)]
    return _record.canonical(Flow(*merged))


@FAST
@given(events_strategy, st.none() | st.integers(1, 6))
def test_random_event_sequences_match_a_dictionary_model(
    seq: list[tuple[EventKind, Flow]], limit: int | None
) -> None:
    """Whatever the order of NEW, UPDATE (full or partial) and DESTROY events, the cache
    holds what a plain dict applying the same rules holds, and reports one change per
    event that did something."""
    cache = new_cache(limit=limit or 100)
    model: dict[Tuple, Flow] = {}
    expected_changes = []
    for kind, flow in seq:
        old = model.get(flow.orig)
        if kind == DESTROY:
            if old is not None:
                del model[flow.orig]
                expected_changes.append(("DESTROY", flow.orig))
            continue
        if old is None and len(model) >= (limit or 100):
            continue
        model[flow.orig] = _merge_model(flow, old)
        expected_changes.append(("NEW" if old is None else "UPDATE", flow.orig))
    changes = cache.apply_events([ev(kind, flow) for kind, flow in seq])
    assert kinds(changes) == expected_changes
    assert cached(cache) == {(o, 0): f for o, f in model.items()}
    # and a dump of the model's state is no change at all
    assert cache.reconcile_flows(list(model.values())) == []


# --- memory ---------------------------------------------------------------------------------


def test_memory_per_cached_v4_tcp_flow() -> None:
    """100k IPv4 TCP flows as traffic makes them: under 300 bytes each (measured ~155:
    a 14-byte key, a 23-byte record and the dict slot)."""
    n = 100_000
    events = []
    for i in range(n):
        orig = Tuple(v4(i % 60000), v4(1, 1), IPPROTO_TCP, 1024 + i // 60000, 80)
        events.append(ev(NEW, tcp(0, orig=orig, reply=orig.inverted(), id=i)))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = InternalCache(limit=1 << 20)
        changes = cache.apply_events(events)
        del changes
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache) == n
    per_flow = used / n
    print(f"{per_flow:.1f} bytes per cached flow")
    assert per_flow < 300
