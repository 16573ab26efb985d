"""The external cache: the peer's tables as last synced, held ready to become the kernel's.

Incoming data messages change it (:meth:`ExternalCache.apply`, reference/conntrackd.md
§2.4): NEW (re)creates an entry, UPD updates it or creates it when missing, DEL removes
it; expectations alike, EXP_UPD like EXP_NEW.  Nothing reaches the kernel until
:func:`nfsyncd.commit.commit`.

Each flow is kept as the ctnetlink create it will become (DESIGN.md: "commit replays
prepared messages"): one ``bytes`` key (:func:`nfsyncd._record.flow_key`) and one
``bytes`` record per flow, the record being a small header (entry flags, the arrival
time, the received timeout, the status as received) followed by the create payload
without ``CTA_TIMEOUT``.  For the usual port tuples the payload's start (nfgenmsg and both
tuples) is left out, as it follows from the key (:class:`_TuplePair`).  The rest of the
payload of a flow without NAT or master (status, mark, protoinfo... ~75 bytes) repeats
across a burst, so it is kept once in a table of shared rests, with its status, and the
record only names it: ~150 bytes per IPv4 TCP flow at 100k flows (key, 15-byte record,
dict slot) instead of ~230 (~340 with the tuples).  A commit packs the tuples back in and
appends the estimated timeout.  Most flows of a burst arrive undecoded
(:class:`~nfsyncd.sync.attrs.LazyFlow`: no NAT, zone or master) and are stored from their
key, timeout and other values without building a flow (:meth:`ExternalCache.apply`);
their records are byte for byte those of the decoded path.  Reading a flow back (dumps,
``-e``) decodes the payload and undoes what preparation changed, which is rare and may be
slow.  Expectations are few and stay as objects next to their prepared payload.

With a ``timeout`` (ALARM's CacheTimeout) entries expire unless refreshed.  Every store
re-inserts its key, so each table is ordered by arrival and expiry only ever looks at the
oldest entries.

The wire never carries an expectation's zone; it is taken from the master flow when this
cache holds it (zoned flows are rare, so a small index maps their zone-less key to the zone).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Final, NamedTuple

from ._record import flow_key, unpack_key
from .commit import (
    ADDED_FLAGS_ORIG,
    ADDED_FLAGS_REPLY,
    ADDED_PROTOINFO,
    estimate_timeout,
    expect_timeout_attr,
    flow_timeout_attr,
    prepare_expect,
    prepare_flow,
    prepare_flow_rest,
    prepare_tuples,
)
from .model import Expectation, Flow, TcpInfo, Tuple
from .netlink import ctnetlink as ct
from .netlink._attrs import BE16, DecodeError, iter_attrs
from .sync.attrs import LazyFlow, LazyLayout
from .sync.wire import Message, MsgType

__all__ = ["ExtStats", "ExternalCache"]

# Every record starts with its entry flags B, arrival d (clock) and received timeout I.  A
# record holding its payload's rest goes on with the status as received I and the rest; a
# record sharing it, with the rest's number H (the status goes with the shared rest).
# Their sizes tell them apart: a shared one is 15 bytes (a 48-byte object, the next size
# class is 64), one holding its rest at least 21 (the rest has one attribute or more).
_unpack_head: Final = struct.Struct("<BdI").unpack_from
_pack_holding: Final = struct.Struct("<BdII").pack
_pack_sharing: Final = struct.Struct("<BdIH").pack
_REST_AT: Final = 17  # where a holding record's rest starts
_SHARING_SIZE: Final = 15
_unpack_u16: Final = struct.Struct("<H").unpack_from
_unpack_u32: Final = struct.Struct("<I").unpack_from
_AFTER_HEAD: Final = 13  # the status (holding) or the rest's number (sharing)
# record flags; the ADDED_* bits of commit.liberal share the low bits
_R_ADDED: Final = ADDED_PROTOINFO | ADDED_FLAGS_ORIG | ADDED_FLAGS_REPLY
_R_STATUS: Final = 0x08
_R_TIMEOUT: Final = 0x10
_R_RELATED: Final = 0x20
_R_NO_REPLY: Final = 0x40
_R_PAIR: Final = 0x80  # the tuples are left out: rebuilt from the key (_TuplePair)

_CT_NEW, _CT_UPD, _CT_DEL = int(MsgType.CT_NEW), int(MsgType.CT_UPD), int(MsgType.CT_DEL)
_EXP_DEL: Final = int(MsgType.EXP_DEL)
#: what a flow or expectation may fail to prepare with
_BAD_VALUE: Final = (ValueError, TypeError, OverflowError, IndexError, struct.error)
#: distinct create "rests" remembered (a few in practice; labels or odd marks may add more)
_REST_MEMO_SIZE: Final = 4096
#: distinct rests records may share; later ones are kept in their records.  The table only
#: empties with a flush, so this bounds what rests no record names any more can hold on to
#: (~1 MiB; a burst shares a handful)
_SHARED_RESTS: Final = 4096

ExpKey = tuple[Tuple, int]


class _ExpEntry(NamedTuple):
    exp: Expectation  # as received, with the zone taken from its master when known
    arrival: float
    payload: bytes  # the prepared create, without CTA_EXPECT_TIMEOUT


@dataclass(slots=True)
class ExtStats:
    """Counters of one table.  ``update_not_found``: entries an UPD created (also in
    ``created``); ``no_space``: entries refused at the limit; ``bad``: entries that could
    not be prepared as a kernel create (dropped)."""

    created: int = 0
    updated: int = 0
    deleted: int = 0
    update_not_found: int = 0
    del_not_found: int = 0
    no_space: int = 0
    bad: int = 0
    expired: int = 0
    flushed: int = 0


def _removed(table: dict[Any, Any], key: object, st: ExtStats) -> bool:
    """Take a DEL's entry out of ``table``: counted as deleted, or as del_not_found when
    it was not there (the counterpart of :meth:`ExternalCache._admit`)."""
    if table.pop(key, None) is None:
        st.del_not_found += 1
        return False
    st.deleted += 1
    return True


class _SharedRests:
    """The create rests that records share (see the module doc), by number, each with the
    status as received of the flows that name it (the rest depends on the status, but two
    statuses may give the same rest)."""

    __slots__ = ("_numbers", "rests", "statuses")

    def __init__(self) -> None:
        self.rests: list[bytes] = []
        self.statuses: list[int] = []
        self._numbers: dict[tuple[bytes, int], int] = {}

    def number(self, rest: bytes, status: int | None) -> int:
        """The number of the shared ``rest`` for flows with ``status`` (-1: the table is
        full, the record holds its rest)."""
        key = (rest, status or 0)
        number = self._numbers.get(key)
        if number is None:
            if len(self.rests) >= _SHARED_RESTS:
                return -1
            number = len(self.rests)
            self.rests.append(rest)
            self.statuses.append(status or 0)
            self._numbers[key] = number
        return number


class ExternalCache:
    """The peer's flows and expectations, prepared for commit.

    ``timeout``: seconds an entry lives without a refresh (ALARM), ``None`` = forever
    (FTFW, NOTRACK); ``commit_timeout``: fixed timeout for committed entries;
    ``tcp_window_tracking``: do not make committed TCP flows window-liberal; ``limit``:
    entries per table.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        timeout: float | None = None,
        commit_timeout: float | None = None,
        tcp_window_tracking: bool = False,
        limit: int = 262144,
    ) -> None:
        self.clock = clock
        self.timeout = timeout
        self.commit_timeout = commit_timeout
        self.tcp_window_tracking = tcp_window_tracking
        self.limit = limit
        self._flows: dict[bytes, bytes] = {}
        self._exps: dict[ExpKey, _ExpEntry] = {}
        #: zone-less key -> zone, for the flows in a zone other than 0
        self._zones: dict[bytes, int] = {}
        self._flow_stats = ExtStats()
        self._exp_stats = ExtStats()
        #: (proto, status, flow[4:13]) -> (shared rest number or -1, the rest, added flags)
        #: (see _prepare_rest)
        self._rest_memo: dict[tuple[object, ...], tuple[int, bytes, int]] = {}
        #: (layout, values besides tuple and timeout) -> (shared rest number, record flags)
        #: for flows that arrive undecoded (apply reads it, _lazy_flow fills it)
        self._lazy_memo: dict[tuple[LazyLayout, tuple[object, ...]], tuple[int, int]] = {}
        self._shared = _SharedRests()

    # -- incoming messages -----------------------------------------------------------
    def apply(self, msgs: Iterable[Message]) -> None:
        """Apply a batch of data messages (others are ignored)."""
        now = self.clock()
        table = self._flows
        st = self._flow_stats
        memo = self._lazy_memo
        admit = self._admit
        for msg in msgs:
            obj = msg.body
            if obj is None:
                continue
            mtype = msg.type
            if mtype <= _CT_DEL:
                if type(obj) is LazyFlow:
                    # A burst's flow, its rest seen before: what _lazy_flow does, inline
                    # (this runs once per received flow).
                    payload, layout = obj
                    key, timeout, values = layout.keyed(payload)
                    found = memo.get((layout, values)) if mtype != _CT_DEL else None
                    if found is None:
                        self._lazy_flow(mtype, obj, key, timeout, values, now)
                    elif admit(table, key, st, mtype == _CT_UPD):
                        table[key] = _pack_sharing(found[1], now, timeout or 0, found[0])
                elif isinstance(obj, Flow):
                    self._flow(mtype, obj, now)
            elif mtype <= _EXP_DEL and isinstance(obj, Expectation):
                self._expect(mtype, obj, now)

    def _flow(self, mtype: int, flow: Flow, now: float) -> None:
        st = self._flow_stats
        table = self._flows
        orig, reply, status, timeout = flow[:4]  # (indexing: the field properties cost more)
        zone = flow[5]
        try:
            key = flow_key(orig, zone)
        except _BAD_VALUE:
            st.bad += 1
            return
        if mtype == _CT_DEL:
            if _removed(table, key, st) and zone:
                self._zones.pop(flow_key(orig), None)
            return
        pair = _PAIRS.get(key[0])
        try:
            shared, payload, flags = self._prepare_rest(flow)
            if pair is None:
                shared = -1
                payload = prepare_tuples(orig) + payload
        except _BAD_VALUE:
            st.bad += 1
            return
        if status is not None:
            flags |= _R_STATUS
        if timeout is not None:
            flags |= _R_TIMEOUT
        if flow[9] is not None:  # a master
            flags |= _R_RELATED
        if reply is None:
            flags |= _R_NO_REPLY
        if pair is not None:
            flags |= _R_PAIR
        try:
            if shared >= 0:
                rec = _pack_sharing(flags, now, timeout or 0, shared)
            else:
                rec = _pack_holding(flags, now, timeout or 0, status or 0) + payload
        except _BAD_VALUE:
            st.bad += 1
            return
        new = key not in table
        if not self._admit(table, key, st, mtype == _CT_UPD):
            return
        if new and zone:
            self._zones[flow_key(orig)] = zone
        table[key] = rec

    def _lazy_flow(
        self,
        mtype: int,
        lazy: LazyFlow,
        key: bytes,
        timeout: int | None,
        values: tuple[object, ...],
        now: float,
    ) -> None:
        """:meth:`_flow` for a flow that arrived undecoded (``key``, ``timeout`` and the
        other ``values`` split from it by its layout), stored without decoding it.

        Its layout says it has ports, no NAT, zone or master, so its key follows from the
        tuple's values, and the shared rest from the layout and the other values, seen
        before for the whole burst (one dict lookup: :meth:`apply` stores those itself and
        calls this for a DEL or a rest not seen before).  The flow is decoded once per new
        rest, and always when the rest cannot be shared (:meth:`_flow` then stores it):
        ~1.5 µs per flow less than decoding it and storing the flow."""
        layout = lazy.layout
        table = self._flows
        st = self._flow_stats
        if mtype == _CT_DEL:
            _removed(table, key, st)
            return
        flow = lazy.flow()
        try:
            shared, _, added = self._prepare_rest(flow)
        except _BAD_VALUE:
            shared = -1
        if shared < 0:  # not shareable: stored whole, or counted as bad, by _flow
            self._flow(mtype, flow, now)
            return
        flags = added | _R_PAIR
        if layout.has_status:
            flags |= _R_STATUS
        if layout.has_timeout:
            flags |= _R_TIMEOUT
        memo = self._lazy_memo
        if len(memo) >= _REST_MEMO_SIZE:
            memo.clear()
        memo[(layout, values)] = (shared, flags)
        if self._admit(table, key, st, mtype == _CT_UPD):
            table[key] = _pack_sharing(flags, now, timeout or 0, shared)

    def _admit(
        self, table: dict[Any, Any], key: object, st: ExtStats, update: bool = False
    ) -> bool:
        """Whether ``key`` may be (re)stored in ``table``, counted as an update or a
        creation (and, for an ``update`` message, as update_not_found); a refused one (the
        table is at its limit) is counted as no_space.

        An update is taken out of the table so that storing it again puts it last:
        with ALARM's expiry the tables stay ordered by arrival."""
        if key in table:
            st.updated += 1
            if self.timeout is not None:
                del table[key]
            return True
        if len(table) >= self.limit:
            st.no_space += 1
            return False
        st.created += 1
        if update:
            st.update_not_found += 1
        return True

    def _prepare_rest(self, flow: Flow) -> tuple[int, bytes, int]:
        """:func:`~nfsyncd.commit.prepare_flow_rest` and the number of the shared rest
        equal to it (-1: not shared), memoised for flows without NAT.

        Without NAT the rest of a create depends only on the protocol, status, mark, zone,
        labels, helper, protoinfo, master, sequence adjustments and synproxy, and a burst of
        flows repeats a few combinations of those (established TCP, replied UDP...): one
        dict lookup instead of an encode (~3 µs) per received flow, and records that share
        the bytes.  Flows with NAT, or a master (unique per flow), are prepared each time
        and keep their rest inline."""
        orig, reply = flow[0], flow[1]
        if flow[9] is not None or (
            reply is not None
            and (
                reply[0] != orig[1]
                or reply[1] != orig[0]
                or reply[3] != orig[4]
                or reply[4] != orig[3]
            )
        ):
            rest, added = prepare_flow_rest(flow, tcp_window_tracking=self.tcp_window_tracking)
            return -1, rest, added
        memo = self._rest_memo
        mkey = (orig[2], flow[2], *flow[4:13])
        found = memo.get(mkey)
        if found is None:
            rest, added = prepare_flow_rest(flow, tcp_window_tracking=self.tcp_window_tracking)
            found = (self._shared.number(rest, flow[2]), rest, added)
            if len(memo) >= _REST_MEMO_SIZE:
                memo.clear()
            memo[mkey] = found
        return found

    def _master_zone(self, master: Tuple) -> int | None:
        if not self._zones:
            return None
        try:
            plain = flow_key(master)
        except _BAD_VALUE:
            return None
        if plain in self._flows:
            return None
        return self._zones.get(plain)

    def _expect(self, mtype: int, exp: Expectation, now: float) -> None:
        st = self._exp_stats
        table = self._exps
        if exp.zone is None:
            zone = self._master_zone(exp.master)
            if zone is not None:
                exp = exp._replace(zone=zone)
        key = (exp.tuple, exp.zone or 0)
        if mtype == _EXP_DEL:
            _removed(table, key, st)
            return
        try:
            payload = prepare_expect(exp)
        except _BAD_VALUE:
            st.bad += 1
            return
        if self._admit(table, key, st):
            table[key] = _ExpEntry(exp, now, payload)

    # -- expiry (ALARM) --------------------------------------------------------------
    def expire(self) -> int:
        """Drop the entries not refreshed within ``timeout``; how many went."""
        if self.timeout is None:
            return 0
        limit = self.clock() - self.timeout
        flows = self._flows
        gone: list[bytes] = []
        for key, rec in flows.items():
            if _unpack_head(rec)[1] > limit:
                break
            gone.append(key)
        for key in gone:
            del flows[key]
            if self._zones:
                orig, zone = unpack_key(key)
                if zone:
                    self._zones.pop(flow_key(orig), None)
        exps = self._exps
        gone_exps = []
        for ekey, entry in exps.items():
            if entry.arrival > limit:
                break
            gone_exps.append(ekey)
        for ekey in gone_exps:
            del exps[ekey]
        self._flow_stats.expired += len(gone)
        self._exp_stats.expired += len(gone_exps)
        return len(gone) + len(gone_exps)

    def next_expiry(self) -> float | None:
        """When (on the clock) the oldest entry expires; None when none will."""
        if self.timeout is None:
            return None
        first: float | None = None
        for rec in self._flows.values():
            first = _unpack_head(rec)[1]
            break
        for entry in self._exps.values():
            if first is None or entry.arrival < first:
                first = entry.arrival
            break
        return None if first is None else first + self.timeout

    def expires_in(self, item: Flow | Expectation) -> float | None:
        """Seconds until ``item`` expires here (None: not cached, or no expiry)."""
        if self.timeout is None:
            return None
        arrival: float
        if isinstance(item, Expectation):
            zone = item.zone if item.zone is not None else self._master_zone(item.master)
            entry = self._exps.get((item.tuple, zone or 0))
            if entry is None:
                return None
            arrival = entry.arrival
        else:
            rec = self._flows.get(flow_key(item.orig, item.zone))
            if rec is None:
                return None
            arrival = _unpack_head(rec)[1]
        return max(0.0, arrival + self.timeout - self.clock())

    # -- reading -----------------------------------------------------------------------
    def flow_count(self) -> int:
        return len(self._flows)

    def expect_count(self) -> int:
        return len(self._exps)

    def get_flow(self, orig: Tuple, zone: int | None = None) -> Flow | None:
        key = flow_key(orig, zone)
        rec = self._flows.get(key)
        return None if rec is None else _rebuild(key, rec, self._shared)

    def flows(self) -> Iterator[tuple[Flow, float]]:
        """Every flow as received, and the seconds since its last update.  Safe to
        interleave with changes: it walks a snapshot."""
        now = self.clock()
        shared = self._shared  # the table the snapshot's records name, even after a flush
        for key, rec in list(self._flows.items()):
            yield _rebuild(key, rec, shared), max(0.0, now - _unpack_head(rec)[1])

    def flow_keys(self) -> list[bytes]:
        """Every flow's :func:`nfsyncd._record.flow_key` (the internal cache's key too:
        :meth:`~nfsyncd.cache.InternalCache.mark_from_peer` takes them), without decoding
        a flow: marking 100k flows before a takeover commit must not cost seconds."""
        return list(self._flows)

    def expects(self) -> Iterator[tuple[Expectation, float]]:
        now = self.clock()
        for entry in list(self._exps.values()):
            yield entry.exp, max(0.0, now - entry.arrival)

    # -- for commit --------------------------------------------------------------------
    def flow_creates(
        self, now: float, keys: Iterable[bytes] | None = None
    ) -> Iterator[tuple[bytes, bool, bytes]]:
        """(key, is related, create payload with its estimated ``CTA_TIMEOUT``) per flow
        (or per one of ``keys`` still cached), from a snapshot taken at the first step."""
        commit_timeout = self.commit_timeout
        fixed = None if commit_timeout is None else flow_timeout_attr(
            estimate_timeout(None, now, now, commit_timeout)
        )  # fmt: skip
        join = b"".join
        flows = self._flows
        rests = self._shared.rests
        if keys is None:
            items = list(flows.items())
        else:
            items = [(key, flows[key]) for key in keys if key in flows]
        for key, rec in items:
            flags, arrival, received = _unpack_head(rec)
            if fixed is None:
                timeout = estimate_timeout(
                    received if flags & _R_TIMEOUT else None, arrival, now, None
                )
                tattr = flow_timeout_attr(timeout)
            else:
                tattr = fixed
            tail = _rest(rec, rests)
            if flags & _R_PAIR:
                yield key, bool(flags & _R_RELATED), join((_PAIRS[key[0]].build(key), tail, tattr))
            else:
                yield key, bool(flags & _R_RELATED), join((tail, tattr))

    def expect_creates(self, now: float) -> Iterator[tuple[Expectation, bytes]]:
        """(expectation, create payload with its estimated timeout) per expectation.  An
        expectation whose master zone was unknown when it arrived is looked up again."""
        for ekey, entry in list(self._exps.items()):
            exp, payload = entry.exp, entry.payload
            if exp.zone is None:
                zone = self._master_zone(exp.master)
                if zone is not None:
                    exp = exp._replace(zone=zone)
                    try:
                        payload = prepare_expect(exp)
                    except _BAD_VALUE:
                        continue
                    if self._exps.get(ekey) is entry:
                        self._exps[ekey] = entry._replace(exp=exp, payload=payload)
            timeout = estimate_timeout(exp.timeout, entry.arrival, now, self.commit_timeout)
            yield exp, payload + expect_timeout_attr(timeout)

    # -- flush, stats --------------------------------------------------------------------
    def flush(self, what: str = "all") -> int:
        """Empty the flows ("ct"), the expectations ("expect") or both ("all")."""
        if what not in ("all", "ct", "expect"):
            raise ValueError(f"flush: what must be 'all', 'ct' or 'expect', not {what!r}")
        n = 0
        if what in ("all", "ct"):
            count = len(self._flows)
            self._flows = {}  # a new dict: a huge one would never shrink
            self._zones.clear()
            self._shared = _SharedRests()  # no record names one any more
            self._rest_memo.clear()
            self._lazy_memo.clear()
            self._flow_stats.flushed += count
            n += count
        if what in ("all", "expect"):
            count = len(self._exps)
            self._exps = {}
            self._exp_stats.flushed += count
            n += count
        return n

    def stats_dict(self) -> dict[str, int]:
        """Flat counters: flow ones as named in :class:`ExtStats` plus ``active``,
        expectation ones with an ``expect_`` prefix."""
        out = {"active": len(self._flows)}
        out.update((f.name, getattr(self._flow_stats, f.name)) for f in fields(ExtStats))
        out["expect_active"] = len(self._exps)
        out.update((f"expect_{f.name}", getattr(self._exp_stats, f.name)) for f in fields(ExtStats))
        return out


# -- reading a prepared record back ---------------------------------------------------------
def _rest(rec: bytes, rests: list[bytes]) -> bytes | memoryview:
    """The create rest of a record: the shared one it names, or its own (not copied)."""
    if len(rec) == _SHARING_SIZE:
        return rests[_rest_number(rec)]
    return memoryview(rec)[_REST_AT:]


def _payload(key: bytes, rec: bytes, shared: _SharedRests) -> bytes:
    """The prepared create of a record (without its timeout)."""
    rest = _rest(rec, shared.rests)
    if rec[0] & _R_PAIR:
        return _PAIRS[key[0]].build(key) + rest
    return bytes(rest)


def _rest_number(rec: bytes) -> int:
    """The number of the shared rest a sharing record names."""
    number: int = _unpack_u16(rec, _AFTER_HEAD)[0]
    return number


def _status(rec: bytes, shared: _SharedRests) -> int:
    """The status a record's flow arrived with (0 when it came without one)."""
    if len(rec) == _SHARING_SIZE:
        return shared.statuses[_rest_number(rec)]
    status: int = _unpack_u32(rec, _AFTER_HEAD)[0]
    return status


def _rebuild(key: bytes, rec: bytes, shared: _SharedRests) -> Flow:
    """The flow a record was prepared from (as far as it was kept: readonly fields such
    as counters never reach the cache)."""
    flags, _arrival, timeout = _unpack_head(rec)
    status = _status(rec, shared)
    payload = _payload(key, rec, shared)
    flow = ct.decode_flow(payload)
    reply = None if flags & _R_NO_REPLY else _nat_reply(flow.orig, payload)
    pi = flow.protoinfo
    if flags & ADDED_PROTOINFO:
        pi = None
    elif flags & (ADDED_FLAGS_ORIG | ADDED_FLAGS_REPLY) and isinstance(pi, TcpInfo):
        if flags & ADDED_FLAGS_ORIG:
            pi = pi._replace(flags_orig=None)
        if flags & ADDED_FLAGS_REPLY:
            pi = pi._replace(flags_reply=None)
    return flow._replace(
        reply=reply,
        status=status if flags & _R_STATUS else None,
        timeout=timeout if flags & _R_TIMEOUT else None,
        protoinfo=pi,
    )


def _nat_reply(orig: Tuple, payload: bytes) -> Tuple:
    """The reply tuple: the inverse of the original with the requested NAT applied."""
    reply = orig.inverted()
    for atype, start, end in iter_attrs(payload, 4, len(payload)):
        if atype == ct.CTA_NAT_SRC:
            addr, port = _nat_target(payload, start, end)
            reply = reply._replace(dst=addr, dport=reply.dport if port is None else port)
        elif atype == ct.CTA_NAT_DST:
            addr, port = _nat_target(payload, start, end)
            reply = reply._replace(src=addr, sport=reply.sport if port is None else port)
    return reply


def _nat_target(buf: bytes, start: int, end: int) -> tuple[bytes, int | None]:
    addr: bytes | None = None
    port: int | None = None
    for atype, ps, pe in iter_attrs(buf, start, end):
        if atype in (ct.CTA_NAT_V4_MINIP, ct.CTA_NAT_V6_MINIP):
            addr = buf[ps:pe]
        elif atype == ct.CTA_NAT_PROTO:
            for ptype, qs, qe in iter_attrs(buf, ps, pe):
                if ptype == ct.CTA_PROTONAT_PORT_MIN:
                    port = BE16.decode(buf, qs, qe)
    if addr is None:
        raise DecodeError("CTA_NAT", "no minimum address")
    return addr, port


class _TuplePair:
    """The start of every prepared create of a flow with a plain port tuple (TCP, UDP,
    SCTP... without ICMP fields or tuple zone): nfgenmsg, ``CTA_TUPLE_ORIG`` and its
    inverse as ``CTA_TUPLE_REPLY``.  It follows from the cache key alone, so records leave
    it out (about 110 of ~200 bytes per IPv4 flow) and a commit packs it back in one
    ``struct`` call.  The constant bytes come from what the ctnetlink tables encode, and
    the layout is checked against them at import."""

    def __init__(self, n: int) -> None:
        canon = f"8s{n}s4s{n}s8sB3x4sH2x4sH2x"
        self._st = struct.Struct(f">4s4s{canon}4s{canon}")
        self._key = struct.Struct(f"<B{n}s{n}sBHH")
        self.size = self._st.size
        a, b = bytes(range(1, n + 1)), bytes(range(101, 101 + n))
        sample_tuple = Tuple(a, b, 6, 0x1111, 0x2222)
        sample = prepare_flow(Flow(sample_tuple), tcp_window_tracking=True)[0]
        u = self._st.unpack(sample)
        self._c = tuple(u[i] for i in (0, 1, 2, 4, 6, 8, 10, 12, 13, 15, 17, 19, 21))
        if self.build(flow_key(sample_tuple)) != sample:
            raise AssertionError("tuple pair layout does not match the ctnetlink tables")

    def build(self, key: bytes) -> bytes:
        _, src, dst, proto, sport, dport = self._key.unpack_from(key)
        c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12 = self._c
        return self._st.pack(
            c0, c1, c2, src, c3, dst, c4, proto, c5, sport, c6, dport,
            c7, c8, dst, c9, src, c10, proto, c11, dport, c12, sport,
        )  # fmt: skip


#: by the key's first byte (_record's tuple header: ports, IPv4 or IPv6)
_PAIRS: Final = {0x03: _TuplePair(4), 0x83: _TuplePair(16)}
