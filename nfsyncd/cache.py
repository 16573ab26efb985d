"""The internal cache: this node's mirror of its kernel's conntrack and expectation tables,
and the source of everything that is replicated to the peer.

Kernel events (:meth:`InternalCache.apply_events`) and dumps
(:meth:`~InternalCache.reconcile_flows`, :meth:`~InternalCache.reconcile_expects`) go
in; the :class:`Change` list that comes out is what the sync layer sends.

Loop avoidance follows conntrackd (reference/conntrackd.md §0): the daemon registers the
port ids of the sockets it writes the kernel with in :attr:`InternalCache.origins`.

* events of an :attr:`Origin.INJECT` socket yield no change and add nothing to the
  cache (the backup of an inject-mode pair does not mirror its peer's whole table); only
  their keys are remembered as the peer's, and entries already cached are kept true to
  the kernel (updated, or removed on DESTROY) rather than left as ghosts;
* events of :attr:`Origin.COMMIT` and :attr:`Origin.FLUSH` sockets update the cache but
  yield no change (the peer already has them);
* everything else (traffic, other programs) updates the cache and yields changes.

What a change reports follows the cache, not the event: NEW when an entry was added (an
UPDATE event of an unknown flow adds it: events can be lost), UPDATE when a cached entry
was updated (a NEW event of a known flow updates it), DESTROY when one was removed.
Kernel UPDATE events are partial: fields an event leaves out (``None``) keep their cached
values.

The filter applies alike to events and dump entries.  A new entry it rejects is not
cached.  A cached entry whose new state it rejects (a TCP state rule) keeps its last
accepted state, as conntrackd ignores such an event; if the cached state is rejected too
(the filter changed since), the entry is removed and a DESTROY change says so.

Unlike conntrackd, a flow that the peer's state created (commit or inject) stays marked
"from the peer" in the cache, through later updates and through a resync from a kernel
dump, so that an overrun resync or a bulk send does not send the peer's own flows back
(the trap described in DESIGN.md).  The daemon also marks what it wrote itself
(:meth:`InternalCache.mark_from_peer`), because the events of a large commit are exactly
the ones an overrun loses.

Flows are stored as two short ``bytes`` each (see :mod:`nfsyncd._record`), which keeps
100k flows near 16 MiB instead of over 100 MiB of ``Flow`` objects.  Zero marks, zones and
secmarks, all-zero labels and an all-zero synproxy are stored as absent: the kernel treats
them alike but reports them inconsistently (traffic events leave a zero mark out, dumps
include it), and a spurious difference would resend every flow after a resync.
Expectations are few and stay as objects.
"""

from __future__ import annotations

import enum
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any, Final, NamedTuple

from ._prepared import Prepared
from ._record import (
    BODY_OFFSET,
    FLAG_FROM_PEER,
    FLAG_GEN,
    covers,
    flow_key,
    pack_canonical,
    record_since,
    unpack_key,
    unpack_record,
    with_flags,
)
from .filter import Filter
from .kernel import Event
from .model import EventKind, Expectation, Flow, Tuple

__all__ = [
    "CacheStats",
    "Change",
    "InternalCache",
    "Origin",
    "Stats",
    "flow_key",
]

NEW: Final = EventKind.NEW
UPDATE: Final = EventKind.UPDATE
DESTROY: Final = EventKind.DESTROY
_MAX_SINCE: Final = 0xFFFF_FFFF
#: what a record or flow may fail to pack with (values out of range, bad addresses)
_BAD_VALUE: Final = (ValueError, TypeError, OverflowError, IndexError, struct.error)

# what storing an update did
_STORED, _FAILED, _KEPT, _REMOVED = range(4)


class Origin(enum.IntEnum):
    """Who caused an event, by the writing socket's port id (conntrackd's origin types)."""

    NOT_ME = 0
    COMMIT = 1
    FLUSH = 2
    INJECT = 3


class Change(NamedTuple):
    """Something the peer must learn: NEW = the entry was added to the cache, UPDATE = a
    cached entry changed, DESTROY = it was removed.  ``obj`` is the flow or expectation
    as it now is (for DESTROY: as the kernel or the cache last knew it), or a flow event
    as the sender's fast path prepared it (:class:`~nfsyncd._prepared.Prepared`, payload
    included).  A flow's change may carry its cache key (:func:`flow_key`, the sync
    queue's key too)."""

    kind: EventKind
    obj: Flow | Expectation | Prepared
    key: bytes | None = None


@dataclass(slots=True)
class CacheStats:
    """Counters of one cache table, shaped like conntrackd's ``-s cache``.

    An UPDATE for an unknown entry adds it (events can be lost): it counts as created and
    in ``update_not_found``.  ``filtered``: events and dump entries the filter rejected;
    ``no_master``: expectations whose master flow is not cached; ``ignored``: events not
    looked at (our own injections; expectations while expectation sync is off).
    """

    active: int = 0
    created: int = 0
    create_failed: int = 0
    no_memory: int = 0
    no_space: int = 0
    updated: int = 0
    update_failed: int = 0
    update_not_found: int = 0
    deleted: int = 0
    delete_failed: int = 0
    delete_not_found: int = 0
    filtered: int = 0
    no_master: int = 0
    ignored: int = 0

    def reset(self) -> None:
        for f in fields(self):
            if f.name != "active":
                setattr(self, f.name, 0)


class Stats(NamedTuple):
    flows: CacheStats
    expects: CacheStats


#: an expectation's identity: its expected tuple and zone (0 = none)
ExpKey = tuple[Tuple, int]


class _ExpEntry(NamedTuple):
    exp: Expectation
    flags: int
    since: int


def _expect_key(exp: Expectation) -> ExpKey:
    return (exp.tuple, exp.zone or 0)


_new: Final = tuple.__new__


def _merge(event: Flow, cached: Flow) -> Flow:
    """A partial event over the cached flow: what the event leaves out stays as it was."""
    return _new(Flow, [e if e is not None else c for e, c in zip(event, cached, strict=True)])


def _merge_expect(event: Expectation, cached: Expectation) -> Expectation:
    return Expectation._make(
        [e if e is not None else c for e, c in zip(event, cached, strict=True)]
    )


def _same_expect(a: Expectation, b: Expectation) -> bool:
    return a._replace(timeout=None, id=None) == b._replace(timeout=None, id=None)


class InternalCache:
    """The local kernel tables as the peer should see them.

    ``filter`` decides what is mirrored (and so replicated); ``limit`` caps the entries
    of each table (conntrackd's HashLimit; may be changed at any time, entries over a
    lowered limit stay); ``expectations`` turns expectation mirroring on.  ``clock``
    (seconds, monotonic) dates the entries for :meth:`flows` and :meth:`expects`.
    """

    #: True for :class:`~nfsyncd.cache_bypass.BypassCache`, which stores nothing
    bypass = False

    def __init__(
        self,
        filter: Filter | None = None,
        *,
        limit: int = 262144,
        expectations: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._filter = filter if filter is not None else Filter()
        self.limit = limit
        self.expectations = expectations
        #: port id of each of the daemon's writing sockets -> what it writes
        self.origins: dict[int, Origin] = {}
        self._clock = clock
        self._t0 = clock()
        self._flows: dict[bytes, bytes] = {}
        self._exps: dict[ExpKey, _ExpEntry] = {}
        # keys the peer's state made that are not cached (yet): injected, or marked
        self._peer_flows: set[bytes] = set()
        self._peer_exps: set[ExpKey] = set()
        self._gen = 0  # FLAG_GEN of records the current/last reconcile wrote
        self._exp_gen = 0
        self._flow_stats = CacheStats()
        self._exp_stats = CacheStats()

    # -- configuration ---------------------------------------------------------------
    @property
    def filter(self) -> Filter:
        return self._filter

    def set_filter(self, filter: Filter) -> None:
        """Use ``filter`` from now on.  Cached entries it rejects are removed by the next
        reconcile (which yields their DESTROY changes)."""
        self._filter = filter

    # -- size, lookups -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._flows)

    def flow_count(self) -> int:
        return len(self._flows)

    def expect_count(self) -> int:
        return len(self._exps)

    def get_flow(self, orig: Tuple, zone: int | None = None) -> Flow | None:
        rec = self._flows.get(flow_key(orig, zone))
        return None if rec is None else unpack_record(orig, rec)

    def get_expect(self, tuple: Tuple, zone: int | None = None) -> Expectation | None:
        entry = self._exps.get((tuple, zone or 0))
        return None if entry is None else entry.exp

    def flows(self, *, from_peer: bool | None = None) -> Iterator[tuple[Flow, int]]:
        """Every cached flow and the seconds since it was added; only those from (or not
        from) the peer when ``from_peer`` is given.  Safe to interleave with changes to
        the cache: entries removed meanwhile are skipped."""
        now = self._now()
        table = self._flows
        for key in list(table):
            rec = table.get(key)
            if rec is None or (
                from_peer is not None and bool(rec[0] & FLAG_FROM_PEER) is not from_peer
            ):
                continue
            yield unpack_record(unpack_key(key)[0], rec), max(0, now - record_since(rec))

    def expects(self, *, from_peer: bool | None = None) -> Iterator[tuple[Expectation, int]]:
        now = self._now()
        for entry in list(self._exps.values()):
            if from_peer is None or bool(entry.flags & FLAG_FROM_PEER) is from_peer:
                yield entry.exp, max(0, now - entry.since)

    # -- the peer's entries --------------------------------------------------------------
    def is_from_peer(self, item: Flow | Expectation | bytes) -> bool:
        """Whether the peer's state made this flow or expectation (given as itself, or a
        flow as its :func:`flow_key`)."""
        if isinstance(item, Expectation):
            ekey = _expect_key(item)
            entry = self._exps.get(ekey)
            return ekey in self._peer_exps if entry is None else bool(entry.flags & FLAG_FROM_PEER)
        key = item if isinstance(item, bytes) else flow_key(item.orig, item.zone)
        rec = self._flows.get(key)
        return key in self._peer_flows if rec is None else bool(rec[0] & FLAG_FROM_PEER)

    def mark_from_peer(self, items: Iterable[Flow | Expectation | bytes]) -> int:
        """Remember that the peer's state made these (the daemon calls this for what it
        commits or injects, whose events an overrun may lose).  Entries not cached yet
        get the mark when they are added.  Returns how many cached entries were marked."""
        marked = 0
        for item in items:
            if isinstance(item, Expectation):
                ekey = _expect_key(item)
                entry = self._exps.get(ekey)
                if entry is None:
                    if len(self._peer_exps) < self.limit:
                        self._peer_exps.add(ekey)
                elif not entry.flags & FLAG_FROM_PEER:
                    self._exps[ekey] = entry._replace(flags=entry.flags | FLAG_FROM_PEER)
                    marked += 1
                continue
            key = item if isinstance(item, bytes) else flow_key(item.orig, item.zone)
            rec = self._flows.get(key)
            if rec is None:
                if len(self._peer_flows) < self.limit:
                    self._peer_flows.add(key)
            elif not rec[0] & FLAG_FROM_PEER:
                self._flows[key] = with_flags(rec, rec[0] | FLAG_FROM_PEER)
                marked += 1
        return marked

    # -- events --------------------------------------------------------------------------
    def apply_events(self, events: Iterable[Event]) -> list[Change]:
        """Mirror a batch of kernel events; the changes to replicate."""
        changes: list[Change] = []
        append = changes.append
        origins = self.origins
        now = self._now()
        table = self._flows
        st = self._flow_stats
        # The common case, a traffic flow new to the cache that the filter accepts, is
        # handled inline: this loop runs once per kernel event.
        fast = not self._peer_flows
        accepts = self._filter.accepts_flow if self._filter.filters_flows else None
        flags = self._gen
        limit = self.limit
        not_me = Origin.NOT_ME  # (locals: this loop runs once per kernel event)
        for kind, obj, port in events:
            origin = origins.get(port, not_me) if port else not_me
            if type(obj) is Prepared:  # the sender's fast path made key, record and payload
                key = obj[0]
            elif type(obj) is Flow:
                try:
                    key = flow_key(obj.orig, obj.zone)
                except _BAD_VALUE:
                    st.create_failed += 1
                    continue
            else:
                if isinstance(obj, Expectation):
                    self._expect_event(kind, obj, origin, now, changes)
                continue
            old = table.get(key)
            if (
                old is not None
                and kind == UPDATE
                and origin == not_me
                and covers(obj, old)
                and (accepts is None or accepts(obj))
            ):
                # an update that replaces the cached record whole (_store_update's first
                # case): an update storm is mostly these
                try:
                    table[key] = pack_canonical(
                        obj, (old[0] & FLAG_FROM_PEER) | flags, record_since(old)
                    )
                except _BAD_VALUE:
                    st.update_failed += 1
                    continue
                st.updated += 1
                append(_new(Change, (UPDATE, obj, key)))
                continue
            if (
                fast
                and old is None
                and kind != DESTROY
                and origin == not_me
                and len(table) < limit
                and (accepts is None or accepts(obj))
            ):
                try:
                    table[key] = pack_canonical(obj, flags, now)
                except _BAD_VALUE:
                    st.create_failed += 1
                    continue
                st.created += 1
                if kind == UPDATE:
                    st.update_not_found += 1
                # (the NamedTuple constructor is slower)
                append(_new(Change, (NEW, obj, key)))
                continue
            flow = obj.flow() if isinstance(obj, Prepared) else obj
            self._flow_event(kind, flow, key, origin, now, changes)
            fast = fast and not self._peer_flows
        return changes

    def _flow_event(
        self,
        kind: EventKind,
        flow: Flow,
        key: bytes,
        origin: Origin,
        now: int,
        changes: list[Change],
    ) -> None:
        st = self._flow_stats
        table = self._flows
        old = table.get(key)
        if origin == Origin.INJECT:
            merge = _injected(kind, key, old is not None, table, self._peer_flows, st, self.limit)
            if merge and old is not None:
                self._store_update(key, old, flow, FLAG_FROM_PEER, self._gen)
            return
        if kind == DESTROY:
            filt = self._filter
            rejected = old is None and filt.filters_flows and not filt.accepts_flow(flow)
            gone = _destroyed(key, old is not None, table, self._peer_flows, st, rejected)
            if gone and origin == Origin.NOT_ME:
                changes.append(Change(DESTROY, flow, key))
            return
        peer_flag = FLAG_FROM_PEER if origin == Origin.COMMIT else 0
        if old is None:
            if self._filter.filters_flows and not self._filter.accepts_flow(flow):
                st.filtered += 1
                return
            if len(table) >= self.limit:
                st.create_failed += 1
                st.no_space += 1
                return
            if self._peer_flows and key in self._peer_flows:
                self._peer_flows.discard(key)
                peer_flag = FLAG_FROM_PEER
            try:
                table[key] = pack_canonical(flow, self._gen | peer_flag, now)
            except _BAD_VALUE:
                st.create_failed += 1
                return
            st.created += 1
            if kind == UPDATE:
                st.update_not_found += 1
            if origin == Origin.NOT_ME:
                changes.append(Change(NEW, flow, key))
            return
        result, merged = self._store_update(key, old, flow, peer_flag, self._gen)
        if result == _STORED:
            st.updated += 1
            if origin == Origin.NOT_ME:
                changes.append(Change(UPDATE, merged, key))
        elif result == _FAILED:
            st.update_failed += 1
        elif result == _REMOVED and origin == Origin.NOT_ME:
            changes.append(Change(DESTROY, merged, key))

    def _store_update(
        self, key: bytes, old: bytes, flow: Flow, peer_flag: int, gen: int
    ) -> tuple[int, Flow]:
        """Merge ``flow`` into the cached record ``old``; what happened and the merged
        flow.  When the filter rejects the merged flow, the entry is kept as it was
        (``_KEPT``: conntrackd ignores such an event), or removed when its cached state is
        rejected too (``_REMOVED``: the filter changed since it was stored)."""
        table = self._flows
        filt = self._filter
        flags = (old[0] & FLAG_FROM_PEER) | peer_flag | gen
        since = record_since(old)
        merged = flow if covers(flow, old) else _merge(flow, unpack_record(flow.orig, old))
        try:
            rec = pack_canonical(merged, flags, since)
        except _BAD_VALUE:
            return _FAILED, flow
        if not filt.filters_flows or filt.accepts_flow(merged):
            table[key] = rec
            return _STORED, merged
        self._flow_stats.filtered += 1
        cached = unpack_record(flow.orig, old)
        if filt.accepts_flow(cached):
            if old[0] & FLAG_GEN != gen:
                table[key] = with_flags(old, (old[0] & ~FLAG_GEN) | gen)
            return _KEPT, merged
        del table[key]
        self._flow_stats.deleted += 1
        return _REMOVED, cached

    def _expect_event(
        self, kind: EventKind, exp: Expectation, origin: Origin, now: int, changes: list[Change]
    ) -> None:
        st = self._exp_stats
        if not self.expectations:
            st.ignored += 1
            return
        key = _expect_key(exp)
        table = self._exps
        old = table.get(key)
        if origin == Origin.INJECT:
            merge = _injected(kind, key, old is not None, table, self._peer_exps, st, self.limit)
            if merge and old is not None:
                self._store_expect(key, old, exp, FLAG_FROM_PEER, self._exp_gen, now, kind)
            return
        if kind == DESTROY:
            rejected = old is None and not self._filter.accepts_expect(exp)
            gone = _destroyed(key, old is not None, table, self._peer_exps, st, rejected)
            if gone and origin == Origin.NOT_ME:
                changes.append(Change(DESTROY, exp))
            return
        peer_flag = FLAG_FROM_PEER if origin == Origin.COMMIT else 0
        change = self._store_expect(key, old, exp, peer_flag, self._exp_gen, now, kind)
        if change is not None and origin == Origin.NOT_ME:
            changes.append(change)

    def _store_expect(
        self,
        key: ExpKey,
        old: _ExpEntry | None,
        exp: Expectation,
        peer_flag: int,
        gen: int,
        now: int,
        kind: EventKind | None,
    ) -> Change | None:
        """Add or merge ``exp`` (an event of ``kind``, or a dump entry: ``None``); the
        change it makes, if any (an entry that did not change makes none)."""
        st = self._exp_stats
        table = self._exps
        merged = exp._replace(id=None)
        if old is not None:
            merged = _merge_expect(merged, old.exp)
        reason = self._reject_expect(merged)
        if reason is not None:
            if reason == "filtered":
                st.filtered += 1
            else:
                st.no_master += 1
            if old is None:
                return None
            if self._reject_expect(old.exp) is None:
                table[key] = old._replace(flags=(old.flags & ~FLAG_GEN) | gen)
                return None
            del table[key]
            st.deleted += 1
            return Change(DESTROY, old.exp)
        if old is None:
            if len(table) >= self.limit:
                st.create_failed += 1
                st.no_space += 1
                return None
            if self._peer_exps and key in self._peer_exps:
                self._peer_exps.discard(key)
                peer_flag = FLAG_FROM_PEER
            table[key] = _ExpEntry(merged, gen | peer_flag, now)
            st.created += 1
            if kind == UPDATE:
                st.update_not_found += 1
            return Change(NEW, merged)
        flags = (old.flags & FLAG_FROM_PEER) | peer_flag | gen
        table[key] = _ExpEntry(merged, flags, old.since)
        if kind is None and _same_expect(merged, old.exp):
            return None
        st.updated += 1
        return Change(UPDATE, merged)

    def _reject_expect(self, exp: Expectation) -> str | None:
        """Why ``exp`` is not mirrored (``"filtered"``, ``"no_master"``), or ``None``.

        The master is looked up in the expectation's zone; the kernel never reports that
        zone (reference: tests/kernel/test_expectations.py), so expectations of masters
        in a non-default zone are found only when the zone was filled in by the caller.
        """
        if not self._filter.accepts_expect(exp):
            return "filtered"
        if flow_key(exp.master, exp.zone) not in self._flows:
            return "no_master"
        return None

    # -- dumps ---------------------------------------------------------------------------
    def reconcile_flows(self, dump: Iterable[Flow]) -> list[Change]:
        """Make the flow table equal to a kernel dump: adds, updates where something
        replicated differs (a timeout alone does not count), and DESTROY for entries the
        dump lacks.  The filter applies as to events; the peer's entries keep their mark
        and their adds are not returned (the peer has them)."""
        changes: list[Change] = []
        st = self._flow_stats
        table = self._flows
        self._gen ^= FLAG_GEN
        gen = self._gen
        now = self._now()
        pending = self._peer_flows
        still_pending: set[bytes] = set()
        filt = self._filter
        for flow in dump:
            try:
                key = flow_key(flow.orig, flow.zone)
            except _BAD_VALUE:
                st.create_failed += 1
                continue
            old = table.get(key)
            if old is None:
                peer = bool(pending) and key in pending
                if filt.filters_flows and not filt.accepts_flow(flow):
                    st.filtered += 1
                    if peer:
                        still_pending.add(key)
                    continue
                if len(table) >= self.limit:
                    st.create_failed += 1
                    st.no_space += 1
                    if peer:
                        still_pending.add(key)
                    continue
                try:
                    table[key] = pack_canonical(flow, gen | (FLAG_FROM_PEER if peer else 0), now)
                except _BAD_VALUE:
                    st.create_failed += 1
                    continue
                st.created += 1
                if not peer:
                    changes.append(Change(NEW, flow, key))
                continue
            result, merged = self._store_update(key, old, flow, 0, gen)
            if result == _STORED:
                if table[key][BODY_OFFSET:] != old[BODY_OFFSET:]:
                    st.updated += 1
                    changes.append(Change(UPDATE, merged, key))
            elif result == _FAILED:
                st.update_failed += 1
            elif result == _REMOVED:
                changes.append(Change(DESTROY, merged, key))
        self._peer_flows = still_pending
        stale = [key for key, rec in table.items() if rec[0] & FLAG_GEN != gen]
        for key in stale:
            rec = table.pop(key)
            st.deleted += 1
            changes.append(Change(DESTROY, unpack_record(unpack_key(key)[0], rec), key))
        return changes

    def reconcile_expects(self, dump: Iterable[Expectation]) -> list[Change]:
        """:meth:`reconcile_flows` for expectations (reconcile the flows first: an
        expectation is mirrored only while its master flow is)."""
        changes: list[Change] = []
        if not self.expectations:
            self._exp_stats.ignored += sum(1 for _ in dump)
            self._exps.clear()
            return changes
        table = self._exps
        self._exp_gen ^= FLAG_GEN
        gen = self._exp_gen
        now = self._now()
        pending = self._peer_exps
        still_pending: set[ExpKey] = set()
        for exp in dump:
            key = _expect_key(exp)
            old = table.get(key)
            peer = old is None and bool(pending) and key in pending
            change = self._store_expect(key, old, exp, 0, gen, now, None)
            if peer and key not in table:
                still_pending.add(key)
            if change is None:
                continue
            if peer and change.kind == NEW:
                continue
            changes.append(change)
        self._peer_exps = still_pending
        stale = [key for key, entry in table.items() if entry.flags & FLAG_GEN != gen]
        for key in stale:
            entry = table.pop(key)
            self._exp_stats.deleted += 1
            changes.append(Change(DESTROY, entry.exp))
        return changes

    # -- housekeeping ---------------------------------------------------------------------
    def flush(self) -> None:
        """Forget everything (conntrackd ``-f internal``); the counters stay."""
        self._flows.clear()
        self._exps.clear()
        self._peer_flows.clear()
        self._peer_exps.clear()

    @property
    def stats(self) -> Stats:
        self._flow_stats.active = len(self._flows)
        self._exp_stats.active = len(self._exps)
        return Stats(self._flow_stats, self._exp_stats)

    def stats_dict(self) -> dict[str, int]:
        """The counters, flat: the flow table's under their names, the expectation
        table's with an ``expect_`` prefix."""
        flows, exps = self.stats
        out = asdict(flows)
        out.update({f"expect_{k}": v for k, v in asdict(exps).items()})
        return out

    def reset(self) -> None:
        """Zero the counters (``active`` stays the current size)."""
        self._flow_stats.reset()
        self._exp_stats.reset()

    def _now(self) -> int:
        return min(max(int(self._clock() - self._t0), 0), _MAX_SINCE)


def _injected(
    kind: EventKind,
    key: Any,
    cached: bool,
    table: dict[Any, Any],
    peer_keys: set[Any],
    st: CacheStats,
    limit: int,
) -> bool:
    """An event our own injection caused: never replicated, only remembered as "from the
    peer".  True when the caller must merge it into the cached entry."""
    st.ignored += 1
    if kind == DESTROY:
        peer_keys.discard(key)
        if cached:
            del table[key]
            st.deleted += 1
        return False
    if cached:
        return True
    if len(peer_keys) < limit:
        peer_keys.add(key)
    return False


def _destroyed(
    key: Any,
    cached: bool,
    table: dict[Any, Any],
    peer_keys: set[Any],
    st: CacheStats,
    rejected: bool,
) -> bool:
    """Apply a DESTROY; True when a cached entry went (the caller replicates that)."""
    if cached:
        del table[key]
        st.deleted += 1
        return True
    if key in peer_keys:
        peer_keys.discard(key)  # an injected entry ended: known, not an error
    elif rejected:
        st.filtered += 1
    else:
        st.delete_failed += 1
        st.delete_not_found += 1
    return False
