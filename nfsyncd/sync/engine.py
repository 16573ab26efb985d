"""Peer sync for one daemon: wires the sync mode, the links and the receiving side together.

Local changes come from the kernel mirror (:meth:`SyncEngine.sink`) and go through the sync
mode (sequencing, acks, refreshes) to the active link; what the peer sends comes back from
the links, through the mode (sequence tracking, control messages) to the external cache or,
with ``disable_external_cache``, straight into the kernel.  The operations keepalived and
operators need (commit, flush, bulk, resync requests, the purge timer, and the whole
primary/backup/fault transition) live here, so the daemon only routes requests.

Everything runs in the daemon's trio nursery; the mode itself is sans-IO, so its timers are
driven from :meth:`_timers` with trio's clock.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from .._prepared import Prepared
from .._record import unpack_key
from ..cache import Change, InternalCache, Origin
from ..commit import CommitResult, commit, flush_kernel
from ..config import Config, SyncConfig
from ..external import ExternalCache
from ..inject import Injector
from ..kernel import Conntrack
from ..mirror import KernelMirror
from ..model import EventKind, Expectation, Flow
from .links import LinkSet
from .modes import SyncMode, make_mode
from .parity import HelperMismatchError, HelperParity, local_helpers
from .sendpath import SendPath
from .wire import Encoder, Message, NetworkStats, pack_datagrams

__all__ = ["ROLES", "SyncEngine", "TransitionResult"]

log = logging.getLogger("nfsyncd.sync")

ROLES = ("primary", "backup", "fault")
#: a peer that sent nothing for this long (ftfw/notrack send at least one message a second)
#: is considered unreachable
PEER_TIMEOUT = 3.0
#: the peer's bulk answer to our RESYNC is complete when no state message came for this long
#: (the protocol has no end-of-bulk message) ...
RESYNC_QUIET = 1.0
#: ... or, from a peer whose table never stops changing, this long after it first answered
#: (a bulk of a million entries takes a few seconds at the measured rates)
RESYNC_MAX = 5.0
_NEW = EventKind.NEW
#: datagrams sent between two checkpoints (~100 µs of sending: the receive side and the
#: control socket stay responsive during a bulk send)
SEND_BATCH = 64


@dataclass(slots=True)
class SyncStats:
    datagrams_sent: int = 0
    messages_sent: int = 0
    send_failures: int = 0
    data_received: int = 0
    bulks: int = 0
    bulk_objects: int = 0
    resyncs_requested: int = 0
    commits: int = 0
    purges: int = 0
    transitions: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class TransitionResult:
    role: str
    seconds: float
    commit: dict[str, Any] | None
    bulk: int
    purge_in: float | None
    resync_requested: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "seconds": round(self.seconds, 3),
            "commit": self.commit,
            "bulk": self.bulk,
            "purge_in": self.purge_in,
            "resync_requested": self.resync_requested,
        }


def _peer_version(sync: SyncConfig) -> tuple[int, int, int]:
    """Every link reaches the same peer: emit only what the oldest configured version reads."""
    return min(link.peer_version for link in sync.links)


class SyncEngine:
    def __init__(self, config: Config, cache: InternalCache, mirror: KernelMirror) -> None:
        assert config.sync is not None, "SyncEngine needs a [sync] table"
        self.config = config
        self.sync: SyncConfig = config.sync
        self.cache = cache
        self.mirror = mirror
        self.network = NetworkStats()
        self.stats = SyncStats()
        self.encoder = Encoder(
            _peer_version(self.sync),
            send_timeout=self.sync.commit_timeout is None,
            tcp_window_tracking=self.sync.tcp_window_tracking,
        )
        # the mirror decodes flow events through the fast path for this encoder
        self.send_path = SendPath(self.encoder)
        mirror.prepare = self.send_path.derive
        self.mode: SyncMode = make_mode(
            self.sync,
            self.encoder,
            clock=time.monotonic,
            network=self.network,
            lookup=self._lookup,
        )
        self.links = LinkSet(self.sync.links, default=self.sync.default_link, network=self.network)
        self.external: ExternalCache | None = None
        if not self.sync.disable_external_cache:
            self.external = ExternalCache(
                clock=time.monotonic,
                timeout=self.sync.cache_timeout if self.sync.mode == "alarm" else None,
                commit_timeout=self.sync.commit_timeout,
                tcp_window_tracking=self.sync.tcp_window_tracking,
                limit=config.general.cache_limit,
            )
        self.role = "unknown"
        self.ready = trio.Event()  # links open
        self.commit_ct: Conntrack | None = None
        self.flush_ct: Conntrack | None = None
        self.injector: Injector | None = None
        self._inject_queue: list[Message] = []
        self._inject_wake = trio.Event()
        self._send_wake = trio.Event()
        self._flushing = False  # the sender task is sending: the sink must not overtake it
        self._unsent: list[bytes] = []  # numbered datagrams the socket did not take yet
        self._timer_wake = trio.Event()
        self._timer_due = -math.inf  # what the timer task sleeps until (none yet: wake it)
        self._purge_due: float | None = None
        # a RESYNC we sent whose answer is not complete yet: when we sent it, and when the
        # peer was first heard from after that (None: not yet)
        self._resync_sent: float | None = None
        self._resync_heard: float | None = None
        self._last_data: float | None = None
        self._commit_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        # helper parity with the peer: only expectation sync needs it
        self.parity: HelperParity | None = None
        self._parity_wake = trio.Event()
        self._parity_hellos = 0
        if config.expectations.sync:
            self.parity = HelperParity(
                local_helpers(config),
                clock=time.monotonic,
                policy=config.expectations.helper_mismatch,
            )
            # the decoder hands nfsyncd's version-2 extension messages over instead of
            # counting them as a wrong protocol version
            self.network.extension = self._extension

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Writing sockets first: their port ids tell the mirror which events we caused.
        with Conntrack() as commit_ct, Conntrack() as flush_ct:
            self.commit_ct, self.flush_ct = commit_ct, flush_ct
            origins = self.cache.origins
            origins[commit_ct.port_id] = Origin.COMMIT
            origins[flush_ct.port_id] = Origin.FLUSH
            # A commit's events are not read back: the cache learns the committed flows
            # from one dump afterwards (commit()), off the commit's critical path.
            self.mirror.mute(commit_ct.port_id)
            inject_ct: Conntrack | None = None
            try:
                if self.sync.disable_external_cache:
                    inject_ct = Conntrack()
                    origins[inject_ct.port_id] = Origin.INJECT
                    self.injector = Injector(
                        inject_ct,
                        commit_timeout=self.sync.commit_timeout,
                        tcp_window_tracking=self.sync.tcp_window_tracking,
                    )
                await self.links.open()
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(self.links.run, self._deliver)
                    nursery.start_soon(self._sender)
                    nursery.start_soon(self._timers)
                    if self.parity is not None:
                        nursery.start_soon(self._parity_loop)
                    if self.injector is not None:
                        nursery.start_soon(self._injecting)
                    if self.sync.startup_resync:
                        self.request_resync()
                    self.ready.set()
                    log.info(
                        "peer sync: %s over %s; active link %s",
                        self.sync.mode,
                        ", ".join(f"{ln.transport}/{ln.interface}" for ln in self.sync.links),
                        self.sync.links[self.links.active].interface,
                    )
                    task_status.started()
            finally:
                self.links.close()
                if inject_ct is not None:
                    origins.pop(inject_ct.port_id, None)
                    inject_ct.close()
                origins.pop(commit_ct.port_id, None)
                origins.pop(flush_ct.port_id, None)
                self.mirror.unmute(commit_ct.port_id)

    # -- local side -> peer --------------------------------------------------------------------
    def sink(self, changes: list[Change]) -> None:
        """The mirror's changes: queue them for the peer, and send them right away when
        the link takes them without waiting.

        At a real connection's pace (a few events at a time) waking the sender task costs
        about as much as the events themselves; sending here saves that task switch
        (sender CPU per connection 1.04-1.07x -> 0.99x conntrackd's in bench/lifecycle.py).
        Order is kept: this only sends while the sender task is idle and nothing it was
        given is still waiting, and what the socket does not take goes to it first."""
        self.mode.queue(changes)
        if not self._flushing and not self._unsent and self._send_ready():
            return
        self._send_wake.set()

    def _send_ready(self) -> bool:
        """Everything the mode has ready, sent without awaiting; False if the channel
        cannot do that (the sender task then sends it)."""
        channel = self.links.channels[self.links.active]
        if not channel.sends_without_waiting:
            return False
        while self.mode.has_output():
            msgs = self.mode.output()
            if not msgs:
                break
            datagrams = pack_datagrams(msgs, self.links.payload_size)
            self.stats.messages_sent += len(msgs)
            ok = channel.send_ready(datagrams)
            self.stats.datagrams_sent += ok
            if ok < len(datagrams):
                self._unsent = datagrams[ok:]  # numbered already: they go out next
                self._send_wake.set()
                break
        self._retime()
        return True

    def _lookup(self, obj: Flow | Expectation | Prepared) -> Flow | Expectation | None:
        """The current state of a cached object (ALARM refreshes re-read it)."""
        if isinstance(obj, Prepared):
            orig, zone = unpack_key(obj.key)
            return self.cache.get_flow(orig, zone)
        if isinstance(obj, Flow):
            return self.cache.get_flow(obj.orig, obj.zone)
        return self.cache.get_expect(obj.tuple, obj.zone)

    async def _sender(self) -> None:
        while True:
            await self._send_wake.wait()
            self._send_wake = trio.Event()
            await self._send_parity()
            self._flushing = True
            try:
                if self._unsent:
                    unsent, self._unsent = self._unsent, []
                    await self._send_datagrams(unsent)
                await self.flush_output()
            finally:
                self._flushing = False

    async def flush_output(self) -> int:
        """Send whatever the mode has ready; returns the number of messages sent.

        Only the sender task calls this: sequence numbers are taken in :meth:`output`, so
        two tasks sending at once would put them on the wire out of order (and the peer
        would drop the "before" ones and ask for them again)."""
        sent = 0
        while self.mode.has_output():
            msgs = self.mode.output()
            if not msgs:
                break
            await self._send_datagrams(pack_datagrams(msgs, self.links.payload_size))
            sent += len(msgs)
            self.stats.messages_sent += len(msgs)
        self._retime()  # sending re-armed the mode's timers (maybe new ALARM refreshes)
        return sent

    async def _send_datagrams(self, datagrams: list[bytes]) -> None:
        """Hand the datagrams to the active link in batches of :data:`SEND_BATCH`: each
        batch is one loop of plain socket sends and one checkpoint, and the active link is
        looked up again for the next one (it may change meanwhile)."""
        stats = self.stats
        links = self.links
        for i in range(0, len(datagrams), SEND_BATCH):
            batch = datagrams[i : i + SEND_BATCH]
            ok = await links.channels[links.active].send_many(batch)
            stats.datagrams_sent += ok
            stats.send_failures += len(batch) - ok

    def _retime(self) -> None:
        """Wake the timer task only when a deadline earlier than the one it sleeps for
        appeared; a later one is picked up when it wakes (this runs per datagram)."""
        if min(self._deadlines(), default=math.inf) < self._timer_due:
            self._timer_wake.set()

    async def _timers(self) -> None:
        # Every deadline is on time.monotonic (the mode's and the external cache's clock).
        while True:
            due = self._timer_due = min(self._deadlines(), default=math.inf)
            with trio.move_on_after(max(0.0, due - time.monotonic())):
                await self._timer_wake.wait()
            self._timer_wake = trio.Event()
            now = time.monotonic()
            if now >= due:
                self.mode.tick()
                if self.external is not None:
                    self.external.expire()
                if self._purge_due is not None and now >= self._purge_due:
                    self._purge_due = None
                    await self._purge()
                if self.mode.has_output():
                    self._send_wake.set()

    def _deadlines(self) -> Iterable[float]:
        mode_due = self.mode.deadline()
        if mode_due is not None:
            yield mode_due
        if self.external is not None:
            expiry = self.external.next_expiry()
            if expiry is not None:
                yield expiry
        if self._purge_due is not None:
            yield self._purge_due

    # -- peer -> local side --------------------------------------------------------------------
    def _deliver(self, link: int, msgs: list[Message]) -> None:
        now = time.monotonic()
        # (settled is checked before this batch counts: a quiet gap may just have ended)
        pending = self._resync_sent is not None and not self._resync_settled(now)
        if pending and self._resync_heard is None:
            self._resync_heard = now
        data = self.mode.receive(msgs)
        if self.parity is not None:
            self._parity_check(data)
        if data:
            self.stats.data_received += len(data)
            self._last_data = now
            if self.external is not None:
                self.external.apply(data)
                self._retime()  # maybe a first entry to expire
            else:
                self._inject_queue.extend(data)
                self._inject_wake.set()
        if self.mode.resync_wanted:
            self.mode.resync_wanted = False
            log.info("resync requested by the peer: sending a bulk update")
            self.bulk()
        if self.mode.has_output():
            self._send_wake.set()

    # -- helper parity (nfsyncd/sync/parity.py) -----------------------------------------------
    def _extension(self, message: bytes) -> None:
        """A version-2 message (nfsyncd's own, which conntrackd skips), from the decoder."""
        assert self.parity is not None
        try:
            self.parity.receive(message)
        except Exception:  # a bug here must not stop the receive loop
            log.exception("helper announce from the peer")
        self._parity_wake.set()

    def _parity_check(self, data: list[Message]) -> None:
        parity = self.parity
        assert parity is not None
        hellos = getattr(self.mode, "hellos", 0)  # FTFW's peer sessions
        if hellos != self._parity_hellos:
            if self._parity_hellos:  # not the first session: the peer restarted
                parity.peer_restarted()
                self._parity_wake.set()
            self._parity_hellos = hellos
        if data:
            parity.check_messages(data)
            if parity.fatal is not None:
                self._parity_wake.set()

    def set_helpers(self, config: Config) -> bool:
        """A reload: announce the new local helper set if it changed."""
        if self.parity is None or not self.parity.set_local(local_helpers(config)):
            return False
        self._parity_wake.set()
        return True

    async def _parity_loop(self) -> None:
        """The announce timer; raises (ends the daemon) on a fatal mismatch."""
        parity = self.parity
        assert parity is not None
        parity.start()
        while True:
            parity.tick()
            if parity.fatal is not None:
                raise HelperMismatchError(f"helper mismatch: {parity.fatal}")
            if parity.has_output():
                self._send_wake.set()
            due = parity.deadline()
            with trio.move_on_after(math.inf if due is None else max(0.0, due - time.monotonic())):
                await self._parity_wake.wait()
            self._parity_wake = trio.Event()

    async def _send_parity(self) -> None:
        """Announces go out from the sender task, as datagrams of their own, so they never
        interleave with a data datagram on a TCP link."""
        if self.parity is None:
            return
        for message in self.parity.output():
            if not await self.links.send(message):
                self.stats.send_failures += 1

    async def _injecting(self) -> None:
        assert self.injector is not None
        while True:
            await self._inject_wake.wait()
            self._inject_wake = trio.Event()
            while self._inject_queue:
                batch, self._inject_queue = self._inject_queue, []
                try:
                    await self.injector.apply(batch)
                except OSError as exc:
                    log.error("injecting %d peer messages failed: %s", len(batch), exc)

    # -- operations ------------------------------------------------------------------------------
    def bulk(self) -> int:
        """Queue every cached flow and expectation for the peer (conntrackd -B).

        Without an internal cache, a kernel dump is sent instead (in the background; the
        count returned is then 0)."""
        if self.cache.bypass:
            if self._nursery is not None:
                self._nursery.start_soon(self.mirror.resync)
            self.stats.bulks += 1
            return 0
        changes = [Change(_NEW, flow) for flow, _ in self.cache.flows()]
        changes += [Change(_NEW, exp) for exp, _ in self.cache.expects()]
        self.mode.queue(changes)
        self._send_wake.set()
        self.stats.bulks += 1
        self.stats.bulk_objects += len(changes)
        return len(changes)

    def request_resync(self) -> bool:
        """Ask the peer for its whole table (conntrackd -n); False in ALARM (no such message)."""
        if not self.mode.request_resync():
            return False
        self.stats.resyncs_requested += 1
        self._resync_sent = time.monotonic()
        self._resync_heard = None
        self._send_wake.set()
        return True

    async def commit(self, what: str = "all", *, refresh: bool = True) -> CommitResult | None:
        """Write the external cache into the kernel (conntrackd -c); None in inject mode.

        Returns once the kernel holds the entries.  The kernel sends no NEW events
        meanwhile (the daemon leaves that group) and the commit's other events are not
        read; the internal cache learns the committed flows, and anything new from
        traffic meanwhile, from a dump that starts then (``refresh``), so a ``dump
        internal`` right after may not list them yet; ``stats runtime`` shows
        ``cache_refresh_pending`` until it does.  A caller that dumps anyway passes
        ``refresh=False``.
        """
        if self.external is None or self.commit_ct is None:
            return None
        async with self._commit_lock:
            self.cancel_purge()
            # The dump that refreshes the internal cache (or an overrun's resync) must know
            # these came from the peer, and not send them back.
            if what in ("all", "ct"):
                self.cache.mark_from_peer(self.external.flow_keys())
            if what in ("all", "expect"):
                self.cache.mark_from_peer(exp for exp, _ in self.external.expects())
            with self.mirror.new_flow_events_paused(refresh=refresh):
                result = await commit(self.external, self.commit_ct, what=what)
        self.stats.commits += 1
        log.info("commit (%s): %s", what, result.as_dict())
        return result

    def flush_external(self, what: str = "all") -> int:
        return self.external.flush(what) if self.external is not None else 0

    async def flush_kernel(
        self, *, flows: bool = True, expectations: bool | None = None
    ) -> tuple[int, int]:
        """Delete the kernel's flows the filter accepts, and expectations (conntrackd -F);
        the deletions are not replicated (FLUSH origin)."""
        assert self.flush_ct is not None, "flush_kernel before run()"
        filt = self.cache.filter
        accepts = filt.accepts_flow if filt.filters_flows else None
        exps = self.config.expectations.sync if expectations is None else expectations
        return await flush_kernel(self.flush_ct, accepts, expectations=exps, flows=flows)

    def schedule_purge(self) -> float:
        """Flush the kernel table after purge_timeout (conntrackd -t); calls do not stack."""
        if self._purge_due is None:
            self._purge_due = time.monotonic() + self.sync.purge_timeout
            self._timer_wake.set()
        return max(0.0, self._purge_due - time.monotonic())

    def cancel_purge(self) -> bool:
        pending = self._purge_due is not None
        self._purge_due = None
        return pending

    @property
    def purge_in(self) -> float | None:
        if self._purge_due is None:
            return None
        return max(0.0, self._purge_due - time.monotonic())

    async def _purge(self) -> None:
        try:
            flows, exps = await self.flush_kernel()
        except OSError as exc:
            log.error("purge of the kernel table failed: %s", exc)
            return
        self.cache.flush()
        self.stats.purges += 1
        log.info("purge: deleted %d flows and %d expectations from the kernel", flows, exps)

    async def transition(self, role: str) -> TransitionResult:
        """keepalived's notify, in one step and without race windows.

        primary: commit the peer's state (masters, related flows, expectations), forget the
        external cache, re-read the kernel so the internal cache holds the committed flows,
        and bulk-send everything so the new backup learns the table.  backup: purge the
        kernel after purge_timeout and ask the new primary for its table.  fault: purge.
        Returns once the new state is in the kernel (the bulk is queued, not awaited).
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        start = time.monotonic()
        committed: dict[str, Any] | None = None
        bulk = 0
        resync = False
        purge_in: float | None = None
        if role == "primary":
            self.cancel_purge()
            result = await self.commit("all", refresh=False)  # the resync below refreshes
            committed = result.as_dict() if result is not None else None
            self.flush_external("all")
            await self.mirror.resync(replicate=False)
            bulk = self.bulk()
        else:
            purge_in = self.schedule_purge()
            if role == "backup":
                resync = self.request_resync()
        self.role = role
        self.stats.transitions[role] = self.stats.transitions.get(role, 0) + 1
        seconds = time.monotonic() - start
        log.info(
            "transition to %s done in %.3fs%s", role, seconds, f": {committed}" if committed else ""
        )
        return TransitionResult(role, seconds, committed, bulk, purge_in, resync)

    # -- state for status, readiness and metrics --------------------------------------------
    def peer_reachable(self) -> bool:
        last = self.mode.last_receive
        if self.sync.mode == "alarm":
            return True  # ALARM has no keepalive: silence is normal
        return last is not None and time.monotonic() - last < PEER_TIMEOUT

    def initial_sync_done(self) -> bool:
        return self._resync_sent is None or self._resync_settled(time.monotonic())

    def _resync_settled(self, now: float) -> bool:
        """Whether the answer to our last RESYNC is complete; once it is, it stays so (until
        the next request): later state messages are live changes, not a missing bulk.

        Quiet is counted from when the peer was first heard after the request, so a request
        made while the peer was away does not look answered by its silence."""
        heard = self._resync_heard
        if heard is None:
            return False
        last = self._last_data
        quiet_since = heard if last is None or last < heard else last
        if now - quiet_since < RESYNC_QUIET and now - heard < RESYNC_MAX:
            return False
        self._resync_sent = self._resync_heard = None
        log.info("the peer's answer to our resync request is complete")
        return True

    def in_sync(self) -> tuple[bool, str]:
        if not self.ready.is_set():
            return False, "sync links not open yet"
        if not self.peer_reachable():
            return False, f"peer not reachable (nothing received for {PEER_TIMEOUT:g}s)"
        if not self.initial_sync_done():
            return False, "initial resync from the peer in progress"
        return True, "peer reachable and in sync"

    def status(self) -> dict[str, Any]:
        last = self.mode.last_receive
        ok, why = self.in_sync() if self.ready.is_set() else (False, "starting")
        ext = self.external
        return {
            "mode": self.sync.mode,
            "role": self.role,
            "in_sync": ok,
            "state": why,
            "connected": self.connected(),
            "peer_last_heard": None if last is None else round(time.monotonic() - last, 3),
            "hello_done": self.mode.hello_done,
            "active_link": self.sync.links[self.links.active].interface,
            "links": len(self.sync.links),
            "external_cache": ext is not None,
            "purge_in": None if self.purge_in is None else round(self.purge_in, 1),
            "helpers": None if self.parity is None else self.parity.status(),
        }

    def _parity_counters(self) -> dict[str, int]:
        parity = self.parity
        if parity is None:
            return {}
        return {
            "helper_mismatches": parity.mismatches,
            "expectations_without_local_helper": sum(parity.without_helper.values()),
            "announces_sent": parity.sent,
            "announces_received": parity.received,
        }

    def external_counts(self) -> dict[str, int]:
        """Sizes of the external cache and what arrived into it (or was injected)."""
        source = self.external if self.external is not None else self.injector
        stats = source.stats_dict() if source is not None else {}
        counts: dict[str, int] = {
            k: stats[k] for k in ("created", "updated", "deleted") if k in stats
        }
        if self.external is None:
            return {"flows": 0, "expects": 0, **counts}
        return {
            "flows": self.external.flow_count(),
            "expects": self.external.expect_count(),
            **counts,
        }

    def connected(self) -> bool:
        """Whether the active link can carry traffic now (TCP: both connections up)."""
        info = self.links.channels[self.links.active].describe()
        return all(info.get(side, "connected") == "connected" for side in ("server", "client"))

    def stats_sections(self) -> dict[str, Any]:
        s = self.stats
        return {
            "network": {
                **self.network.conntrackd_view(self.sync.mode),
                "lost": self.network.lost,
                "before": self.network.before,
                "unknown_attrs": dict(self.network.unknown_attrs),
                "last_error": self.network.last_error,
                "send_malformed": self.network.send_malformed,
                "omitted_attrs": {str(k): v for k, v in self.encoder.omitted.items()},
            },
            "link": self.links.link_state(),
            "queue": self.mode.stats_dict(),
            "sync": {
                "datagrams_sent": s.datagrams_sent,
                "messages_sent": s.messages_sent,
                "send_failures": s.send_failures,
                "data_received": s.data_received,
                "bulks": s.bulks,
                "bulk_objects": s.bulk_objects,
                "resyncs_requested": s.resyncs_requested,
                "commits": s.commits,
                "purges": s.purges,
                "transitions": dict(s.transitions),
                "link_switches": self.links.switches,
                # kernel event layouts the sender's fast path handles (mismatches: layouts
                # whose self-check failed, a bug; they take the general path)
                "fast_path_layouts": self.send_path.prepared_layouts,
                "fast_path_mismatches": self.send_path.mismatches,
                **self._parity_counters(),
            },
            "external": self.external.stats_dict()
            if self.external is not None
            else (self.injector.stats_dict() if self.injector is not None else {}),
        }
