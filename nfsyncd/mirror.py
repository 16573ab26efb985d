"""Keeps the internal cache equal to the local kernel table, and says so when it cannot.

Sources, in the order they are wired: the event socket is subscribed *before* the initial
dump, so nothing that happens during the dump is missed; the dump is reconciled into the
cache while event handling is paused (the events queue up in the socket buffer and are
applied afterwards, in order, so a flow destroyed during the dump does not come back as a
ghost).  An overrun (the kernel dropped events for us) doubles the socket buffer up to its
configured ceiling and schedules a resync (once the backlog is read, or after the configured
delay, whichever comes first); polling mode replaces events with periodic dumps
for kernels that have none.

Every change that must reach a peer goes to ``sink`` (the sync layer plugs in there).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import trio

from .cache import Change, InternalCache
from .config import Config
from .kernel import ALL_EVENT_GROUPS, FLOW_EVENT_GROUPS, Conntrack, Event, EventStream, Overrun
from .model import EventKind, Expectation, Flow, Status
from .netlink import ctnetlink as ct
from .netlink._layout import Derive

__all__ = ["KernelMirror", "MirrorStats", "ResyncResult"]

log = logging.getLogger("nfsyncd.mirror")

Sink = Callable[[list[Change]], None]
#: after an overrun, resync this long after the event backlog has been read, when that is
#: sooner than general.overrun_resync_delay (the lost events are then repaired in about a
#: second rather than half a minute; a storm still going on only gets one resync at a time)
CAUGHT_UP_DELAY = 1.0


@dataclass(slots=True)
class MirrorStats:
    events: int = 0
    reads: int = 0  # batches of events read (wakeups of the event task)
    overruns: int = 0
    resyncs: int = 0
    resync_failures: int = 0
    last_resync: float | None = None  # time.time() of the last completed resync
    last_resync_seconds: float = 0.0
    buffer_size: int = 0
    buffer_grows: int = 0  # growths before an overrun (a backlog filled half the buffer)
    polls: int = 0


@dataclass(slots=True, frozen=True)
class ResyncResult:
    flows: int
    expects: int
    added: int
    updated: int
    removed: int
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return {
            "flows": self.flows,
            "expects": self.expects,
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "seconds": round(self.seconds, 3),
        }


class KernelMirror:
    def __init__(self, config: Config, cache: InternalCache, sink: Sink | None = None) -> None:
        self.config = config
        self.cache = cache
        self.sink = sink
        self.stats = MirrorStats()
        self.ready = trio.Event()
        self.conntrack: Conntrack | None = None
        self.stream: EventStream | None = None
        self._lock = trio.Lock()  # held by a resync: event batches wait for it
        self._resync_due: float | None = None
        self._wake = trio.Event()
        self._caught_up_resync = False
        #: whether the kernel reports the event socket's fill level (_watch_backlog)
        self._backlog_watch = True
        #: port ids of the daemon's writing sockets whose events are not read (see mute())
        self.muted: set[int] = set()
        #: the sender's fast path for flow events (the sync engine's; see EventStream)
        self.prepare: Derive | None = None
        self._refresh_wanted = False

    @property
    def polling(self) -> bool:
        return self.config.general.poll_interval is not None

    @property
    def expectations(self) -> bool:
        return self.config.expectations.sync

    def apply_config(self, config: Config) -> None:
        """Take the live-changeable settings of a reloaded config."""
        self.config = config

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        general = self.config.general
        with Conntrack() as conntrack:
            self.conntrack = conntrack
            if self.polling:
                await self.resync()
                self.ready.set()
                task_status.started()
                await self._poll_forever()
                return
            groups = ALL_EVENT_GROUPS if self.expectations else FLOW_EVENT_GROUPS
            with EventStream(
                groups,
                rcvbuf=general.netlink_buffer_size // 2,
                muted=self.muted,
                prepare=self.prepare,
            ) as stream:
                self.stream = stream
                if general.reliable_events:
                    stream.set_reliable(True)
                self.stats.buffer_size = stream.rcvbuf
                await self.resync()  # events already queue in the socket meanwhile
                self.ready.set()
                task_status.started()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._resync_timer)
                    await self._events(stream)

    async def _events(self, stream: EventStream) -> None:
        next_read = 0.0
        while True:
            general = self.config.general
            if general.event_coalesce:
                # Events that keep coming are read at most once per event_coalesce: at a
                # connection's pace each wakeup (the dominant cost, not the decoding) then
                # handles several events, and one sync datagram carries them.  A quiet
                # table is read at once; a full batch (a backlog) is read again at once.
                now = trio.current_time()
                if now < next_read:
                    await trio.sleep_until(next_read)
            # a bounded batch, then a checkpoint: control requests stay responsive in a storm
            batch = await stream.next_batch(general.event_batch_limit)
            self.stats.reads += 1
            full = isinstance(batch, Overrun) or len(batch) >= general.event_batch_limit
            next_read = 0.0 if full else trio.current_time() + general.event_coalesce
            async with self._lock:
                if isinstance(batch, Overrun):
                    self._overrun(stream)
                    continue
                if full:
                    self._watch_backlog(stream)  # events arrive faster than handled
                self.stats.events += len(batch)
                changes = self.cache.apply_events(batch)
                if self.expectations:
                    changes += await self._reread_rewritten_masters(batch)
                if self._caught_up_resync and not full:
                    # The backlog is read (a short batch): the kernel delivers events again,
                    # so the resync need not wait out the whole overrun delay.
                    self._caught_up_resync = False
                    self.schedule_resync(CAUGHT_UP_DELAY)
            if changes and self.sink is not None:
                self.sink(changes)

    async def _reread_rewritten_masters(self, batch: list[Event]) -> list[Change]:
        """Masters of this batch's new expectations, re-read when a NAT helper rewrote them.

        A NAT helper that changes a packet's length (an FTP PORT or 227 reply through NAT)
        leaves a TCP sequence adjustment on the master, which a new primary must have or
        the connection breaks; the kernel reports it in no event (only synproxy raises
        IPCT_SEQADJ), but every such rewrite announces an expectation.  So the master of
        each new expectation is fetched (one GET, a few per FTP session) and, when it has
        an adjustment, mirrored as an update.
        """
        assert self.conntrack is not None
        masters = {
            (obj.master, obj.zone)
            for kind, obj, port in batch
            if kind == EventKind.NEW and not port and type(obj) is Expectation
        }
        changes: list[Change] = []
        for master, zone in masters:
            try:
                flow = await self.conntrack.get(master, zone)
            except OSError:
                continue  # gone meanwhile; a resync repairs anything else
            if flow is not None and (flow.status or 0) & Status.SEQ_ADJUST:
                changes += self.cache.apply_events([Event(EventKind.UPDATE, flow, 0)])
        return changes

    def _grow_buffer(self, stream: EventStream) -> bool:
        """Double the event buffer, up to ``netlink_buffer_max``; False when it is there."""
        ceiling = self.config.general.netlink_buffer_max
        current = stream.rcvbuf  # the kernel reports (and uses) twice what was set
        if current >= ceiling:
            return False
        stream.set_rcvbuf(min(2 * current, ceiling) // 2)
        self.stats.buffer_size = stream.rcvbuf
        return True

    def _watch_backlog(self, stream: EventStream) -> None:
        """Grow the event buffer while a backlog fills it, before the kernel drops events.

        Called after each full batch (events arrive faster than they are handled, as in a
        burst or an update storm).  An overrun costs a resync, a dump of the whole table
        (about 1 s of CPU per 100k flows) on top of the events still queued; the buffer
        is only a limit, so a larger one costs memory only while a backlog is queued.
        One getsockopt per full batch.
        """
        if not self._backlog_watch:
            return
        try:
            queued, limit = stream.receive_queue()
        except OSError as exc:  # SO_MEMINFO is Linux 4.6+: grow on overruns only
            self._backlog_watch = False
            log.info("event backlog not watched (%s): the buffer grows on overruns only", exc)
            return
        if 2 * queued > limit and self._grow_buffer(stream):
            self.stats.buffer_grows += 1
            log.info(
                "netlink event backlog: %d of %d bytes queued; buffer grown to %d bytes",
                queued,
                limit,
                self.stats.buffer_size,
            )

    def _overrun(self, stream: EventStream) -> None:
        general = self.config.general
        self.stats.overruns += 1
        self._grow_buffer(stream)
        delay = general.overrun_resync_delay
        log.warning(
            "netlink event overrun: the kernel dropped events; buffer now %d bytes; %s",
            self.stats.buffer_size,
            "resync disabled (general.overrun_resync_delay = false): the cache may be stale"
            if delay is None
            else f"resync in {delay:g}s",
        )
        if delay is not None:
            self.schedule_resync(delay)
            self._caught_up_resync = delay > CAUGHT_UP_DELAY

    def mute(self, port_id: int) -> None:
        """Do not read the events that the socket ``port_id`` causes.

        For a socket whose writes the cache learns better from a dump afterwards
        (:meth:`refresh_soon`): decoding a commit's events would cost the daemon ~5 us
        each, on the thread the commit runs on, for nothing the peer needs.  Skipping one
        costs a header read.
        """
        self.muted.add(port_id)

    def unmute(self, port_id: int) -> None:
        self.muted.discard(port_id)

    @contextlib.contextmanager
    def new_flow_events_paused(self, *, refresh: bool = True) -> Iterator[None]:
        """Leave the kernel's NEW flow event group for the duration, then refresh (unless
        the caller dumps the table itself: ``refresh=False``).

        With nobody in the group the kernel does not even build NEW events, which took
        about half of its time per created flow (perf, a 100k-flow commit).  NEW events of
        other flows (traffic) that arrive meanwhile are missed; the refresh dump
        afterwards adds them to the cache and replicates them, as after an overrun.
        Another listener anywhere on the machine (``conntrack -E``; the other daemon of a
        one-machine lab) makes the kernel build the events anyway: netlink keeps one
        listener bitmap per machine, not per namespace.
        """
        stream = self.stream
        if stream is None or self.polling:
            yield
            return
        stream.set_group(ct.GROUP_CT_NEW, False)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # closed: the daemon is stopping
                stream.set_group(ct.GROUP_CT_NEW, True)
            if refresh:
                self.refresh_soon()

    def refresh_soon(self) -> None:
        """Re-read the kernel table into the cache as soon as the event task lets go
        (after a paused or muted write; it shares the overrun resync's timer, so several
        requests make one dump).  The peer's entries among the additions are not sent back
        (:meth:`InternalCache.mark_from_peer` before the write), anything else new is
        replicated."""
        self._refresh_wanted = True
        self.schedule_resync(0.0)

    @property
    def refresh_pending(self) -> bool:
        return self._refresh_wanted

    def schedule_resync(self, delay: float) -> None:
        due = trio.current_time() + delay
        if self._resync_due is None or due < self._resync_due:
            self._resync_due = due
            self._wake.set()

    async def _resync_timer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._resync_due is not None:
                with trio.move_on_at(self._resync_due):
                    await self._wake.wait()  # an earlier deadline may arrive meanwhile
                    self._wake = trio.Event()
                    continue
                self._resync_due = None
                await self._resync_logged("commit" if self._refresh_wanted else "overrun")

    async def _poll_forever(self) -> None:
        while True:
            interval = self.config.general.poll_interval or 1.0
            await trio.sleep(interval)
            self.stats.polls += 1
            await self._resync_logged("poll")

    async def _resync_logged(self, why: str) -> None:
        try:
            result = await self.resync()
        except OSError as exc:
            log.error("resync after %s failed: %s; retrying in 1s", why, exc)
            self.schedule_resync(1.0)
            return
        level = logging.DEBUG if why == "poll" else logging.INFO
        log.log(level, "resync (%s): %s", why, result.as_dict())

    async def resync(self, *, replicate: bool = True) -> ResyncResult:
        """Dump the kernel and make the cache equal to it (adds, updates, removals).

        ``replicate=False`` only populates the cache (conntrackd's ``-R``): the changes are
        not handed to the sink, e.g. when a bulk send follows anyway."""
        assert self.conntrack is not None, "resync before run()"
        start = time.monotonic()
        self._refresh_wanted = False  # any dump from here on is the refresh asked for
        async with self._lock:
            try:
                flows: list[Flow] = []
                async for chunk in self.conntrack.dump_chunks():
                    flows += chunk
                exps: list[Expectation] = []
                if self.expectations:
                    exps = await self.conntrack.dump_expect()
            except OSError:
                self.stats.resync_failures += 1
                raise
            changes = self.cache.reconcile_flows(flows)
            if self.expectations:
                changes += self.cache.reconcile_expects(exps)
        seconds = time.monotonic() - start
        self.stats.resyncs += 1
        self.stats.last_resync = time.time()
        self.stats.last_resync_seconds = seconds
        if changes and replicate and self.sink is not None:
            self.sink(changes)
        return _summarise(changes, len(flows), len(exps), seconds)


def _summarise(changes: list[Change], flows: int, exps: int, seconds: float) -> ResyncResult:
    counts = dict.fromkeys(EventKind, 0)
    for change in changes:
        counts[change.kind] += 1
    return ResyncResult(
        flows,
        exps,
        counts[EventKind.NEW],
        counts[EventKind.UPDATE],
        counts[EventKind.DESTROY],
        seconds,
    )
