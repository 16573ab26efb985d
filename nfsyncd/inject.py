"""Direct injection (``disable_external_cache``): the peer's changes go straight into the
kernel, so a takeover needs no commit (reference/conntrackd.md §2.4).

Per message, as conntrackd: NEW creates (EEXIST: delete and create once more); UPD
updates (ENOENT: create; any other error: delete and create); DEL deletes (ENOENT is
fine); an expectation's UPD is handled like its NEW.  Unlike conntrackd, a whole batch of
messages is written at once (many requests per ``sendmsg``).  Within a batch only the last
message about an entry counts (each message carries the entry's whole state), which keeps
the outcome of "NEW then DEL" right whatever order the requests are answered in, and
masters are written before related flows, flows before expectations.

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
from .model import Expectation, Flow
from .netlink import ctnetlink as ct
from .netlink._socket import NetlinkError, Request
from .sync.wire import Message, MsgType

if TYPE_CHECKING:
    from .kernel import Conntrack

__all__ = ["InjectStats", "Injector"]

_CT_NEW, _CT_UPD, _CT_DEL = int(MsgType.CT_NEW), int(MsgType.CT_UPD), int(MsgType.CT_DEL)
_EXP_DEL: Final = int(MsgType.EXP_DEL)
_BAD_VALUE: Final = (ValueError, TypeError, OverflowError, IndexError, struct.error)
#: zoned flows remembered for their expectations' zone
_ZONE_MEMORY: Final = 65536

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
    """One entry's write in a batch, and what to do if the kernel refuses it."""

    __slots__ = ("create", "delete", "flow", "kind", "request", "stats")

    def __init__(
        self,
        kind: int,
        request: Request,
        stats: InjectStats,
        create: Request | None = None,
        delete: Request | None = None,
        flow: bool = True,
    ) -> None:
        self.kind = kind
        self.request = request
        self.stats = stats
        self.create = create  # the create to fall back to
        self.delete = delete  # the delete before a re-create
        self.flow = flow


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

    def _flow_op(self, mtype: int, flow: Flow) -> _Op:
        st = self._flow_stats
        delete = delete_flow_request(flow.orig, flow.zone)
        if flow.zone:
            plain = flow_key(flow.orig)
            if mtype == _CT_DEL:
                self._zones.pop(plain, None)
            else:
                if len(self._zones) >= _ZONE_MEMORY:
                    self._zones.pop(next(iter(self._zones)))
                self._zones[plain] = flow.zone
        if mtype == _CT_DEL:
            return _Op(_DELETE, delete, st)
        timeout = self._timeout(flow.timeout)
        payload, _ = prepare_flow(flow, tcp_window_tracking=self.tcp_window_tracking)
        create = Request(
            ct.CT_NEW,
            CREATE_FLAGS,
            payload + flow_timeout_attr(DEFAULT_TIMEOUT if timeout is None else timeout),
        )
        if mtype == _CT_NEW:
            return _Op(_CREATE, create, st, delete=delete)
        target = flow if self.tcp_window_tracking else liberal(flow)[0]
        update = ct.flow_update(target._replace(timeout=timeout))
        return _Op(_UPDATE, update, st, create=create, delete=delete)

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
        return _Op(_CREATE, create, st, delete=delete, flow=False)

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
        retry_delete: list[Request] = []
        retry_create: list[_Op] = []  # created after the deletes, in the same order
        for op, err in zip(ops, outcomes, strict=True):
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
                if code == errno.EEXIST and op.delete is not None:
                    retry_delete.append(op.delete)
                    retry_create.append(op)
                else:
                    st.create_failed += 1
            else:  # update: ENOENT -> create; anything else -> delete and create
                assert op.create is not None
                if code == errno.ENOENT:
                    st.update_not_found += 1
                    retry_create.append(_Op(_CREATE, op.create, st))
                else:
                    if op.delete is not None:
                        retry_delete.append(op.delete)
                    retry_create.append(_Op(_UPDATE, op.create, st))
        if not retry_create:
            return
        if retry_delete:
            await self._ct.write_many(retry_delete)  # ENOENT: gone meanwhile, fine
        second = await self._ct.write_many([op.request for op in retry_create])
        for op, err2 in zip(retry_create, second, strict=True):
            _count_retry(op, err2)

    def stats_dict(self) -> dict[str, int]:
        """Flat counters: flow ones as named in :class:`InjectStats`, expectation ones
        with an ``expect_`` prefix."""
        out = {f.name: getattr(self._flow_stats, f.name) for f in fields(InjectStats)}
        out.update(
            (f"expect_{f.name}", getattr(self._exp_stats, f.name)) for f in fields(InjectStats)
        )
        return out


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
