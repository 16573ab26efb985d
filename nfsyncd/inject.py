"""Direct injection (``disable_external_cache``): the peer's changes go straight into the
kernel, so a takeover needs no commit (reference/conntrackd.md §2.4).

Per message, as conntrackd: NEW creates; UPD updates (ENOENT: create; any other error:
delete and create); DEL deletes (ENOENT is fine); an expectation's UPD is handled like its
NEW.  Unlike conntrackd, a whole batch of messages is written at once (many requests per
``sendmsg``).  Within a batch only the last message about an entry counts (each message
carries the entry's whole state), which keeps the outcome of "NEW then DEL" right whatever
order the requests are answered in, and masters are written before related flows, flows
before expectations.

A NEW whose flow exists already (EEXIST) is where we differ from conntrackd, which deletes
the entry and creates it again.  That happens to every flow when the new primary's bulk
reaches the old one after a takeover, and deleting an FTP control connection there takes
its live expectations with it; the kernel reports those deaths as nobody's doing (port id
0), so they went back to the new primary as EXP_DEL and removed the very expectation it
needed.  It also loses what only the kernel holds: the helper's private state and a NAT
helper's sequence adjustment.  So the existing entry is looked up first: when it is the
peer's connection (same reply tuple, i.e. NAT, same helper, same master) it is updated
in place; only a different connection under the same tuple is deleted and created again,
and the expectations of this batch whose master was so replaced are created once more.

Timeouts: ``commit_timeout`` when set, else the received one, else 60 for a create (the
kernel requires one; conntrackd sends none and fails with EINVAL when the sender has
CommitTimeout).  The wire carries no expectation zone: it is taken from the master when
an injected flow in a zone had that tuple.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Final

from ._record import flow_key
from .commit import (
    CHUNK,
    CREATE_FLAGS,
    DEFAULT_TIMEOUT,
    delete_expect_request,
    delete_flow_request,
    estimate_timeout,
    expect_timeout_attr,
    flow_timeout_attr,
    liberal,
    prepare_expect,
    prepare_flow,
)
from .model import Expectation, Flow, Status, Tuple
from .netlink import ctnetlink as ct
from .netlink._socket import NetlinkError, Request
from .sync.wire import Message, MsgType

if TYPE_CHECKING:
    from .kernel import Conntrack

__all__ = ["InjectStats", "Injector", "same_connection"]

_CT_NEW, _CT_UPD, _CT_DEL = int(MsgType.CT_NEW), int(MsgType.CT_UPD), int(MsgType.CT_DEL)
_EXP_DEL: Final = int(MsgType.EXP_DEL)
_BAD_VALUE: Final = (ValueError, TypeError, OverflowError, IndexError, struct.error)
#: zoned flows remembered for their expectations' zone
_ZONE_MEMORY: Final = 65536
#: one GET round trip costs about as much as decoding this many flows of a dump
_GET_COST_IN_FLOWS: Final = 8
_EXPECTED: Final = int(Status.EXPECTED)

# operations
_CREATE, _UPDATE, _DELETE = range(3)


@dataclass(slots=True)
class InjectStats:
    """Counters of one table, like conntrackd's "external inject" section.
    ``update_not_found``: UPDs whose entry was missing and was created instead."""

    created: int = 0
    create_failed: int = 0
    updated: int = 0
    update_failed: int = 0
    update_not_found: int = 0
    deleted: int = 0
    delete_failed: int = 0
    delete_not_found: int = 0
    bad: int = 0


class _Op:
    """One entry's write in a batch, and what to do if the kernel refuses it.  ``key``
    is the cache key of a flow, or of an expectation's master; ``obj`` the flow of a NEW
    or UPD (a NEW that finds it in the kernel already is compared with it)."""

    __slots__ = ("create", "delete", "flow", "key", "kind", "obj", "request", "stats")

    def __init__(
        self,
        kind: int,
        request: Request,
        stats: InjectStats,
        create: Request | None = None,
        delete: Request | None = None,
        flow: bool = True,
        *,
        key: bytes = b"",
        obj: Flow | None = None,
    ) -> None:
        self.kind = kind
        self.request = request
        self.stats = stats
        self.create = create  # the create to fall back to
        self.delete = delete  # the delete before a re-create
        self.flow = flow
        self.key = key
        self.obj = obj


class Injector:
    """Writes the peer's messages into the kernel through ``conntrack`` (whose port id
    the daemon registers as INJECT, so the resulting events are not synced back)."""

    def __init__(
        self,
        conntrack: Conntrack,
        *,
        commit_timeout: float | None = None,
        tcp_window_tracking: bool = False,
    ) -> None:
        self._ct = conntrack
        self.commit_timeout = commit_timeout
        self.tcp_window_tracking = tcp_window_tracking
        self._flow_stats = InjectStats()
        self._exp_stats = InjectStats()
        #: zone-less flow key -> zone, for injected flows in a zone other than 0
        self._zones: dict[bytes, int] = {}

    # -- building requests -------------------------------------------------------------
    def _timeout(self, received: int | None) -> int | None:
        if self.commit_timeout is not None:
            return estimate_timeout(None, 0.0, 0.0, self.commit_timeout)
        return received

    def _update_request(self, flow: Flow, timeout: int | None) -> Request:
        """An in-place update.  A related flow keeps EXPECTED in its status: the kernel
        refuses (EBUSY) a status that would clear it, which would force a re-create."""
        target = flow if self.tcp_window_tracking else liberal(flow)[0]
        request = ct.flow_update(target._replace(timeout=timeout))
        status = flow.status
        if flow.master is None or status is None or not status & _EXPECTED:
            return request
        kept = ct.create_status(status)
        assert kept is not None
        target = target._replace(timeout=timeout, status=kept | _EXPECTED, reply=None)
        ident = target._replace(helper=None, master=None)
        return Request(ct.CT_NEW, 0, ct.nfgenmsg(flow.orig.family) + ct.FLOW.encode(ident))

    def _flow_op(self, mtype: int, flow: Flow) -> _Op:
        st = self._flow_stats
        delete = delete_flow_request(flow.orig, flow.zone)
        key = flow_key(flow.orig, flow.zone)
        if flow.zone:
            plain = flow_key(flow.orig)
            if mtype == _CT_DEL:
                self._zones.pop(plain, None)
            else:
                if len(self._zones) >= _ZONE_MEMORY:
                    self._zones.pop(next(iter(self._zones)))
                self._zones[plain] = flow.zone
        if mtype == _CT_DEL:
            return _Op(_DELETE, delete, st, key=key)
        timeout = self._timeout(flow.timeout)
        payload, _ = prepare_flow(flow, tcp_window_tracking=self.tcp_window_tracking)
        create = Request(
            ct.CT_NEW,
            CREATE_FLAGS,
            payload + flow_timeout_attr(DEFAULT_TIMEOUT if timeout is None else timeout),
        )
        if mtype == _CT_NEW:  # the update for a clash is built only if one happens
            return _Op(_CREATE, create, st, delete=delete, key=key, obj=flow)
        update = self._update_request(flow, timeout)
        return _Op(_UPDATE, update, st, create=create, delete=delete, key=key, obj=flow)

    def _expect_op(self, mtype: int, exp: Expectation) -> _Op:
        st = self._exp_stats
        if exp.zone is None and self._zones:
            zone = self._zones.get(flow_key(exp.master))
            if zone is not None:
                exp = exp._replace(zone=zone)
        delete = delete_expect_request(exp)
        if mtype == _EXP_DEL:
            return _Op(_DELETE, delete, st, flow=False)
        timeout = self._timeout(exp.timeout)
        payload = prepare_expect(exp) + expect_timeout_attr(
            DEFAULT_TIMEOUT if timeout is None else timeout
        )
        create = Request(ct.EXP_NEW, CREATE_FLAGS, payload)
        key = flow_key(exp.master, exp.zone)
        return _Op(_CREATE, create, st, delete=delete, flow=False, key=key)

    # -- applying ----------------------------------------------------------------------
    async def apply(self, msgs: Sequence[Message]) -> None:
        """Write a batch of data messages (others are ignored) into the kernel."""
        latest: dict[object, Message] = {}
        for msg in msgs:
            obj = msg.obj
            if obj is None or msg.type > _EXP_DEL:
                continue
            key: object
            if isinstance(obj, Flow):
                key = (obj.orig, obj.zone or 0)
            else:
                key = (obj.tuple, obj.zone or 0, obj.master)
            latest.pop(key, None)  # last wins, and keeps its place in the order
            latest[key] = msg
        deletes: list[_Op] = []
        masters: list[_Op] = []
        related: list[_Op] = []
        exps: list[_Op] = []
        later: list[tuple[int, Expectation]] = []
        for msg in latest.values():
            obj = msg.obj
            if isinstance(obj, Expectation):
                later.append((msg.type, obj))  # after the flows: their zones may be needed
                continue
            assert isinstance(obj, Flow)
            try:
                op = self._flow_op(msg.type, obj)
            except _BAD_VALUE:
                self._flow_stats.bad += 1
                continue
            if op.kind == _DELETE:
                deletes.append(op)
            elif obj.master is not None:
                related.append(op)
            else:
                masters.append(op)
        for mtype, exp in later:
            try:
                exps.append(self._expect_op(mtype, exp))
            except _BAD_VALUE:
                self._exp_stats.bad += 1
        ops = deletes + masters + related + exps
        for i in range(0, len(ops), CHUNK):
            await self._run(ops[i : i + CHUNK])

    async def _run(self, ops: list[_Op]) -> None:
        outcomes = await self._ct.write_many([op.request for op in ops])
        # (position in ops, the write to retry, the delete to do before it)
        retries: list[tuple[int, _Op, Request | None]] = []
        clashes: list[int] = []  # flow NEWs that found their tuple taken
        for i, (op, err) in enumerate(zip(ops, outcomes, strict=True)):
            st = op.stats
            kind = op.kind
            if err is None:
                if kind == _CREATE:
                    st.created += 1
                elif kind == _UPDATE:
                    st.updated += 1
                else:
                    st.deleted += 1
                continue
            code = err.errno
            if kind == _DELETE:
                if code == errno.ENOENT:
                    st.delete_not_found += 1
                else:
                    st.delete_failed += 1
            elif kind == _CREATE:
                if code != errno.EEXIST or op.delete is None:
                    st.create_failed += 1
                elif op.obj is not None:
                    clashes.append(i)
                else:
                    retries.append((i, op, op.delete))
            else:  # update: ENOENT -> create; anything else -> delete and create
                assert op.create is not None
                if code == errno.ENOENT:
                    st.update_not_found += 1
                    retries.append((i, _Op(_CREATE, op.create, st), None))
                else:
                    retries.append((i, _Op(_UPDATE, op.create, st), op.delete))
        if clashes:
            retries += await self._resolve_clashes(ops, clashes)
        if not retries:
            return
        self._recreate_orphans(ops, outcomes, retries)
        retries.sort(key=lambda r: r[0])  # masters, related flows, expectations
        deletes = [delete for _, _, delete in retries if delete is not None]
        if deletes:
            await self._ct.write_many(deletes)  # ENOENT: gone meanwhile, fine
        second = await self._ct.write_many([op.request for _, op, _ in retries])
        for (_, op, _), err2 in zip(retries, second, strict=True):
            _count_retry(op, err2)

    async def _resolve_clashes(
        self, ops: list[_Op], clashes: list[int]
    ) -> list[tuple[int, _Op, Request | None]]:
        """Update in place each clashing flow that is the peer's connection; the others
        are to be deleted and created again (returned as retries)."""
        retries: list[tuple[int, _Op, Request | None]] = []
        existing = await self._existing([ops[i] for i in clashes])
        updates: list[int] = []
        for i in clashes:
            op = ops[i]
            assert op.obj is not None
            have = existing.get(op.key) if existing is not None else None
            if have is not None and same_connection(have, op.obj):
                updates.append(i)
            else:
                retries.append((i, op, op.delete))
        if not updates:
            return retries
        requests = []
        for i in updates:
            flow = ops[i].obj
            assert flow is not None
            requests.append(self._update_request(flow, self._timeout(flow.timeout)))
        outcomes = await self._ct.write_many(requests)
        for i, err in zip(updates, outcomes, strict=True):
            op = ops[i]
            if err is None:
                op.stats.created += 1  # the NEW's outcome: the flow is in the kernel as sent
            else:  # gone meanwhile, or refused: create (again)
                retries.append((i, op, None if err.errno == errno.ENOENT else op.delete))
        return retries

    async def _existing(self, clashes: list[_Op]) -> dict[bytes, Flow] | None:
        """The kernel's flows under these keys (None: the kernel could not be asked).

        One GET each, or a single dump when the table is small next to their number
        (the bulk that follows a takeover clashes on every flow)."""
        wanted = {op.key: op.obj for op in clashes if op.obj is not None}
        found: dict[bytes, Flow] = {}
        try:
            if await self._ct.count() <= _GET_COST_IN_FLOWS * len(wanted):
                async for chunk in self._ct.dump_chunks():
                    for flow in chunk:
                        key = flow_key(flow.orig, flow.zone)
                        if key in wanted:
                            found[key] = flow
                return found
            for key, flow in wanted.items():
                assert flow is not None
                have = await self._ct.get(flow.orig, flow.zone or None)
                if have is not None:
                    found[key] = have
        except OSError:
            return None
        return found

    @staticmethod
    def _recreate_orphans(
        ops: list[_Op],
        outcomes: list[NetlinkError | None],
        retries: list[tuple[int, _Op, Request | None]],
    ) -> None:
        """Expectations of this batch created on a master that is now to be deleted
        and created again die with it: create them once more after it."""
        replaced = {ops[i].key for i, op, delete in retries if delete is not None and op.flow}
        if not replaced:
            return
        for i, (op, err) in enumerate(zip(ops, outcomes, strict=True)):
            if err is None and not op.flow and op.kind == _CREATE and op.key in replaced:
                op.stats.created -= 1  # counted again by the retry
                retries.append((i, op, None))

    def stats_dict(self) -> dict[str, int]:
        """Flat counters: flow ones as named in :class:`InjectStats`, expectation ones
        with an ``expect_`` prefix."""
        out = {f.name: getattr(self._flow_stats, f.name) for f in fields(InjectStats)}
        out.update(
            (f"expect_{f.name}", getattr(self._exp_stats, f.name)) for f in fields(InjectStats)
        )
        return out


def same_connection(have: Flow, want: Flow) -> bool:
    """Whether the kernel's flow ``have`` is the connection ``want`` describes, up to
    what an update can change: the same NAT (reply tuple), helper and master."""
    if (have.helper or None) != (want.helper or None):
        return False
    if not _same_tuple(have.master, want.master):
        return False
    return want.reply is None or _same_tuple(have.reply, want.reply)


def _same_tuple(a: Tuple | None, b: Tuple | None) -> bool:
    """Equal addresses and protocol, and equal ports and ICMP id where both know them
    (a tuple decoded from the wire may leave out what the kernel reports)."""
    if a is None or b is None:
        return a is b
    if a.src != b.src or a.dst != b.dst or a.proto != b.proto:
        return False
    pairs = ((a.sport, b.sport), (a.dport, b.dport), (a.icmp_id, b.icmp_id))
    return all(x is None or y is None or x == y for x, y in pairs)


def _count_retry(op: _Op, err: NetlinkError | None) -> None:
    """A re-create: an update that fell back to delete + create counts as an update; a
    create (a clash retried, or an UPD of a missing entry) as a create."""
    st = op.stats
    if op.kind == _UPDATE:
        if err is None:
            st.updated += 1
        else:
            st.update_failed += 1
    elif err is None:
        st.created += 1
    else:
        st.create_failed += 1
