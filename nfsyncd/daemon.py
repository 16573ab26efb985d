"""``nfsyncd``: the daemon process.

Everything runs as tasks of one trio nursery: the kernel mirror (events, resyncs,
polling), the control socket, the HTTP health/metrics listener, signal handling and the
systemd watchdog.  Shutdown is ordered: stop taking requests, let in-flight ones finish
(bounded), cancel the rest, remove what the daemon created.  ``SIGHUP`` reloads the
configuration: live settings take effect at once, the others are named in the log as
needing a restart, and a config that fails validation leaves the running one untouched.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import gc
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, Final

import trio

from . import __version__
from .cache import InternalCache
from .config import Config, ConfigError, default_config, load_config
from .control import ControlError, ControlServer, Send
from .filter import Filter
from .http import Response, serve_http
from .logs import setup_logging
from .metrics import Metric, render
from .mirror import KernelMirror
from .model import EventKind
from .nft import NftError, TableOwner, kernel_check
from .render import expect_json, flow_json
from .sdnotify import Notifier

if TYPE_CHECKING:
    from .sync.engine import SyncEngine

__all__ = ["DEFAULT_CONFIG", "Daemon", "main"]

log = logging.getLogger("nfsyncd")

DEFAULT_CONFIG = "/etc/nfsyncd/nfsyncd.toml"
SHUTDOWN_GRACE = 5.0
JsonDict = dict[str, Any]
_ROLES = ("primary", "backup", "fault")
_SYNC_COMMANDS = ("commit", "flush-kernel", "bulk", "request-resync", "purge", "notify")


def tune_gc() -> None:
    """Make CPython's cyclic collector cheap for the event hot path (the daemon calls it
    once, when startup is done).

    Every kernel event becomes a handful of tuples that live for one batch (a few hundred
    events) and then die by reference counting; none forms a cycle.  With the default
    thresholds (a young collection every 700 allocations) those batch objects are still
    alive when the collector runs, get promoted, and keep triggering full collections
    that rescan the whole heap: measured at 30-40% of the sender's CPU per replicated
    flow.  So: freeze what startup made (modules, config, trio; never garbage) out of the
    collector's sight, and collect the young generation only every 50k allocations.
    Cyclic garbage is still collected, just in larger and rarer steps.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


#: allocations between two young-generation collections (CPython's default is 700)
GC_THRESHOLD: Final = 50_000


def tune_thread_switching() -> None:
    """Let a netlink write's worker thread start as soon as it is handed a chunk.

    :meth:`~nfsyncd.netlink.NetlinkSocket.batch` pipelines large writes: a worker thread
    sits in ``sendmsg`` (the kernel's work, without the GIL) while the trio thread encodes
    the next chunk.  But the worker needs the GIL for a moment before its ``sendmsg``
    starts, and with CPython's default 5 ms switch interval it waited until the encoder
    was done, which made the two take turns: a 100k-flow commit in process took
    0.41-0.47 s, and 0.28-0.32 s with 0.5 ms (the commit row of ``bench.batch_create``).
    The daemon has no other threads that compete for the GIL, so this costs nothing else.
    """
    sys.setswitchinterval(SWITCH_INTERVAL)


#: seconds a thread waiting for the GIL waits before asking for it (CPython's default 0.005)
SWITCH_INTERVAL: Final = 0.0005


def build_filter(config: Config) -> Filter:
    return Filter.from_config(config.filter, config.expectations)


class Daemon:
    def __init__(self, config: Config, config_path: str | None, notifier: Notifier) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = notifier
        self.started = time.time()
        sync_cfg = config.sync
        cache_type = InternalCache
        if sync_cfg is not None and sync_cfg.disable_internal_cache:
            from .cache_bypass import BypassCache as cache_type
        self.cache = cache_type(
            build_filter(config),
            limit=config.general.cache_limit,
            expectations=config.expectations.sync,
        )
        self.mirror = KernelMirror(config, self.cache)
        self.sync: SyncEngine | None = None
        if config.sync is not None:
            from .sync.engine import SyncEngine  # peer sync code loads only when configured

            self.sync = SyncEngine(config, self.cache, self.mirror)
            self.mirror.sink = self.sync.sink
        self.control = ControlServer(
            config.general.control_socket, self.handle, grace=SHUTDOWN_GRACE
        )
        self.http_address: tuple[str, int] | None = None
        self.reloads = 0
        self.reload_failures = 0
        self.nft = TableOwner()
        self._shutdown = trio.Event()
        self._control_done = trio.Event()
        self._nursery: trio.Nursery | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> int:
        """Apply the nft table, run until asked to stop, then remove the table.

        The table goes in before anything subscribes to events, so the first flows already
        get the event filter; NftError (the kernel refused it) is a startup error. It is
        removed on a clean stop only: after a crash the helpers stay assigned until the
        restarted daemon replaces the table.
        """
        if self.config.nftables.enabled:
            self.nft.apply(self.config)
            log.info("nftables: applied table inet %s (%d rules)", self.nft.name, self.nft.rules)
        try:
            return await self._run()
        finally:
            if self._shutdown.is_set() and self.nft.applied:
                try:
                    self.nft.remove()
                    log.info("nftables: removed table inet %s", self.nft.name)
                except NftError as exc:
                    log.error("nftables: could not remove table inet %s: %s", self.nft.name, exc)

    async def _run(self) -> int:
        sock = self.control.bind()
        try:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._signals, sigs)
                    await nursery.start(self._serve_control, sock)
                    if self.config.metrics.listen:
                        self.http_address = await nursery.start(
                            serve_http, self.config.metrics.listen, self._routes()
                        )
                        log.info("health and metrics on http://%s:%d/", *self.http_address)
                    if self.sync is not None:
                        await nursery.start(self.sync.run)  # links open before the dump
                    await nursery.start(self.mirror.run)
                    tune_gc()  # startup is done: what it made is long-lived
                    tune_thread_switching()
                    nursery.start_soon(self._keepalive)
                    log.info(
                        "ready: mirroring %d flows, %d expectations; control socket %s",
                        self.cache.flow_count(),
                        self.cache.expect_count(),
                        self.control.path,
                    )
                    self.notifier.ready(self._status_text())
                    await self._shutdown.wait()
                    await self._stop(nursery)
        finally:
            self.control.remove_socket()
            self.notifier.close()
        log.info("stopped")
        return 0

    async def _serve_control(
        self, sock: trio.socket.SocketType, *, task_status: trio.TaskStatus[None]
    ) -> None:
        try:
            await self.control.serve(sock, task_status=task_status)
        finally:
            self._control_done.set()

    async def _stop(self, nursery: trio.Nursery) -> None:
        log.info("shutting down")
        self.notifier.stopping()
        self.control.stop_accepting()
        with trio.move_on_after(SHUTDOWN_GRACE + 1):
            await self._control_done.wait()
        nursery.cancel_scope.cancel()

    def request_shutdown(self) -> None:
        self._shutdown.set()

    async def _signals(self, sigs: Any) -> None:
        async for signum in sigs:
            if signum == signal.SIGHUP:
                self.reload()
            elif self._shutdown.is_set() and self._nursery is not None:
                log.warning("second %s: stopping at once", signal.Signals(signum).name)
                self._nursery.cancel_scope.cancel()
            else:
                log.info("%s received", signal.Signals(signum).name)
                self.request_shutdown()

    async def _keepalive(self) -> None:
        """Watchdog pings and the status line; both stop if the event loop stops."""
        interval = self.notifier.watchdog_interval
        tick = min(interval, 10.0) if interval else 10.0
        while True:
            await trio.sleep(tick)
            if interval:
                self.notifier.watchdog()
            if self.notifier.enabled:
                self.notifier.status(self._status_text())

    def _status_text(self) -> str:
        text = (
            f"mirroring {self.cache.flow_count()} flows, {self.cache.expect_count()} "
            f"expectations; {self.mirror.stats.overruns} overruns, "
            f"{self.mirror.stats.resyncs} resyncs"
        )
        if self.sync is not None:
            ext = self.sync.external_counts()
            text += f"; peer: {self.sync.in_sync()[1]}; external {ext['flows']} flows"
        return text

    # -- reload ------------------------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read the config file; apply what can change live, keep the rest."""
        self.notifier.reloading()
        path = self.config_path
        try:
            new = load_config(path) if path else default_config()
        except (ConfigError, OSError) as exc:
            self.reload_failures += 1
            log.error("reload failed, keeping the running configuration:\n%s", exc)
            self.notifier.ready(self._status_text())
            return False
        old = self.config
        changed = old.changed(new)
        restart = old.restart_needed(new)
        live = dataclasses.replace(
            old,
            general=dataclasses.replace(
                old.general,
                log_level=new.general.log_level,
                log_format=new.general.log_format,
                overrun_resync_delay=new.general.overrun_resync_delay,
                cache_limit=new.general.cache_limit,
                event_batch_limit=new.general.event_batch_limit,
                event_coalesce=new.general.event_coalesce,
            ),
            filter=new.filter,
            expectations=dataclasses.replace(old.expectations, helpers=new.expectations.helpers),
            helpers=dataclasses.replace(old.helpers, assign=new.helpers.assign),
            nftables=new.nftables,
        )
        if old.nftables.enabled or live.nftables.enabled:
            try:
                self.nft.apply(live)  # atomic: on failure the old table stays
            except NftError as exc:
                self.reload_failures += 1
                log.error(
                    "reload failed, keeping the running configuration and nftables table: "
                    "the kernel refused the new table: %s",
                    exc,
                )
                self.notifier.ready(self._status_text())
                return False
        self.config = live
        setup_logging(live.general.log_level, live.general.log_format)
        self.cache.set_filter(build_filter(live))
        self.cache.limit = live.general.cache_limit
        self.mirror.apply_config(live)
        if old.filter != live.filter or old.expectations != live.expectations:
            self.mirror.schedule_resync(0)  # entries the new filter rejects (or admits)
        self.reloads += 1
        applied = [k for k in changed if k not in restart]
        log.info(
            "configuration reloaded from %s; applied: %s",
            path or "<defaults>",
            ", ".join(applied) or "nothing changed",
        )
        if restart:
            log.warning(
                "these changes need a restart to take effect (still running with the old "
                "values): %s",
                ", ".join(restart),
            )
        self.notifier.ready(self._status_text())
        return True

    # -- control requests --------------------------------------------------------------------
    async def handle(self, req: JsonDict, send: Send) -> JsonDict:
        cmd = req["cmd"]
        if cmd == "status":
            return self.status()
        if cmd == "stats":
            return {"stats": self.stats(req.get("section"))}
        if cmd == "dump":
            return await self._dump(req, send)
        if cmd == "flush":
            return self._flush(req.get("cache", "all"))
        if cmd == "resync":
            # conntrackd's -R: populate the internal cache only; -B sends
            result = await self.mirror.resync(replicate=False)
            return {"resync": result.as_dict()}
        if cmd in _SYNC_COMMANDS:
            return await self._sync_command(cmd, req)
        if cmd == "reload":
            if not self.reload():
                raise ControlError("the new configuration is invalid; see the daemon's log")
            return {}
        if cmd == "shutdown":
            self.request_shutdown()
            return {}
        raise ControlError(
            f"unknown command {cmd!r}; known: status, stats, dump, flush, resync, reload, "
            f"shutdown, {', '.join(_SYNC_COMMANDS)}"
        )

    async def _sync_command(self, cmd: str, req: JsonDict) -> JsonDict:
        sync = self.sync
        if sync is None:
            raise ControlError(f"{cmd}: peer sync is not configured (add a [sync] table)")
        if cmd == "commit":
            what = req.get("what", "all")
            if what not in ("all", "ct", "expect"):
                raise ControlError(f"commit: what must be ct, expect or all, got {what!r}")
            result = await sync.commit(what)
            return {"commit": None if result is None else result.as_dict()}
        if cmd == "flush-kernel":
            what = req.get("what", "all")
            if what not in ("all", "ct", "expect"):
                raise ControlError(f"flush-kernel: what must be ct, expect or all, got {what!r}")
            flows, exps = await sync.flush_kernel(
                flows=what != "expect",
                expectations={"all": None, "ct": False, "expect": True}[what],
            )
            return {"flows": flows, "expects": exps}
        if cmd == "bulk":
            return {"queued": sync.bulk()}
        if cmd == "request-resync":
            # alarm has no such message: a no-op, as in conntrackd (scripts call it anyway)
            return {"requested": sync.request_resync()}
        if cmd == "purge":
            return {"purge_in": round(sync.schedule_purge(), 1)}
        # notify
        role = req.get("role")
        if role not in _ROLES:
            raise ControlError(f"notify: role must be one of {', '.join(_ROLES)}, got {role!r}")
        done = await sync.transition(role)
        return {"transition": done.as_dict()}

    def status(self) -> JsonDict:
        st = self.mirror.stats
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(time.time() - self.started, 1),
            "config": self.config_path,
            "mode": self.sync.sync.mode if self.sync is not None else "mirror",
            "ready": self.mirror.ready.is_set(),
            "source": "polling" if self.mirror.polling else "events",
            "flows": self.cache.flow_count(),
            "expectations": self.cache.expect_count(),
            "overruns": st.overruns,
            "resyncs": st.resyncs,
            "last_resync": st.last_resync,
            "control_socket": self.control.path,
            "metrics": f"http://{self.http_address[0]}:{self.http_address[1]}/"
            if self.http_address
            else None,
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
            "sync": self.sync.status() if self.sync is not None else None,
            "external": self.sync.external_counts() if self.sync is not None else None,
            "nftables": self.nft.status(self.config),
        }

    def stats(self, section: str | None) -> JsonDict:
        st = self.mirror.stats
        stream = self.mirror.stream
        sections: JsonDict = {
            "cache": {"internal": self.cache.stats_dict()},
            "runtime": {
                "uptime": round(time.time() - self.started, 1),
                "events_received": st.events,
                "event_reads": st.reads,
                # the daemon's own commits, skipped unread (a dump refreshes the cache)
                "events_muted": stream.stats.muted if stream else 0,
                "cache_refresh_pending": self.mirror.refresh_pending,
                "events_filtered": self.cache.stats_dict().get("filtered", 0),
                "decode_errors": stream.decode_errors.count if stream else 0,
                "last_decode_error": stream.decode_errors.last if stream else None,
                "netlink_overrun": st.overruns,
                "resync_with_kernel_table": st.resyncs,
                "resync_failures": st.resync_failures,
                "last_resync_seconds": round(st.last_resync_seconds, 3),
                "polls": st.polls,
                "buffer_size": st.buffer_size,
                # doublings before an overrun: a backlog had filled half the buffer
                "buffer_grows": st.buffer_grows,
            },
            "control": {
                "connections": self.control.stats.connections,
                "requests": dict(self.control.stats.requests),
                "errors": self.control.stats.errors,
            },
        }
        if self.sync is not None:
            extra = self.sync.stats_sections()
            sections["cache"]["external"] = extra.pop("external")
            sections.update(extra)
        if section in (None, "", "all", "general"):
            return sections
        if section not in sections:
            raise ControlError(
                f"no stats section {section!r}; sections: {', '.join(sorted(sections))}"
            )
        return {section: sections[section]}

    async def _dump(self, req: JsonDict, send: Send) -> JsonDict:
        which = req.get("cache", "internal")
        what = req.get("what", "ct")
        if which == "external":
            return await self._dump_external(what, send)
        if which != "internal":
            raise ControlError(f"dump: cache must be internal or external, got {which!r}")
        count = 0
        if self.cache.bypass:  # no internal cache: list the kernel table, as conntrackd
            return await self._dump_kernel(what, send)
        if what == "ct":
            for flow, since in self.cache.flows():
                await send(flow_json(flow, since))
                count += 1
        elif what == "expect":
            for exp, since in self.cache.expects():
                await send(expect_json(exp, since))
                count += 1
        else:
            raise ControlError(f"dump: what must be ct or expect, got {what!r}")
        return {"count": count}

    async def _dump_kernel(self, what: str, send: Send) -> JsonDict:
        conntrack = self.mirror.conntrack
        if conntrack is None:
            raise ControlError("the kernel mirror is not running yet")
        filt = self.cache.filter
        count = 0
        if what == "ct":
            for flow in await conntrack.dump():
                if not filt.filters_flows or filt.accepts_flow(flow):
                    await send(flow_json(flow, 0))
                    count += 1
        elif what == "expect":
            for exp in await conntrack.dump_expect():
                await send(expect_json(exp, 0))
                count += 1
        else:
            raise ControlError(f"dump: what must be ct or expect, got {what!r}")
        return {"count": count}

    async def _dump_external(self, what: str, send: Send) -> JsonDict:
        ext = self.sync.external if self.sync is not None else None
        if self.sync is None:
            raise ControlError(
                "there is no external cache: peer sync is not configured (add a [sync] table)"
            )
        count = 0
        if ext is None:  # inject mode: nothing kept, like conntrackd's -e
            return {"count": 0}
        if what == "ct":
            for flow, age in ext.flows():
                await send(flow_json(flow, int(age)))
                count += 1
        elif what == "expect":
            for exp, age in ext.expects():
                await send(expect_json(exp, int(age)))
                count += 1
        else:
            raise ControlError(f"dump: what must be ct or expect, got {what!r}")
        return {"count": count}

    def _flush(self, which: str) -> JsonDict:
        if which not in ("all", "internal", "external"):
            raise ControlError(f"flush: cache must be internal, external or all, got {which!r}")
        flushed = 0
        if which in ("all", "internal"):
            flushed = self.cache.flow_count() + self.cache.expect_count()
            self.cache.flush()
            if self.sync is not None:
                self.sync.cancel_purge()  # as conntrackd: -f and -f internal cancel -t
        if which in ("all", "external") and self.sync is not None:
            flushed += self.sync.flush_external("all")
        return {"flushed": flushed}

    # -- HTTP ------------------------------------------------------------------------------
    def _routes(self) -> dict[str, Any]:
        def healthz() -> Response:
            return 200, "text/plain", b"ok\n"

        def readyz() -> Response:
            if not self.mirror.ready.is_set():
                return 503, "text/plain", b"not ready: initial kernel dump in progress\n"
            if self.sync is not None:
                ok, why = self.sync.in_sync()
                if not ok:
                    return 503, "text/plain", f"not ready: {why}\n".encode()
                return 200, "text/plain", f"ready: {why}\n".encode()
            return 200, "text/plain", b"ready\n"

        def metrics() -> Response:
            return 200, "text/plain; version=0.0.4", render(self.metrics()).encode()

        return {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}

    def metrics(self) -> list[Metric]:
        st = self.mirror.stream.stats if self.mirror.stream else None
        ev = Metric("nfsyncd_kernel_events_total", "counter", "Kernel conntrack events received.")
        if st is not None:
            for kind in EventKind:
                ev.add(st.flows[kind], kind=kind.name.lower(), object="flow")
                ev.add(st.expects[kind], kind=kind.name.lower(), object="expectation")
        cstats = self.cache.stats_dict()
        ms = self.mirror.stats
        stream = self.mirror.stream
        out = [
            ev,
            Metric("nfsyncd_events_filtered_total", "counter", "Events the filter ignored.").add(
                cstats.get("filtered", 0)
            ),
            Metric("nfsyncd_netlink_overruns_total", "counter", "Event socket overruns.").add(
                ms.overruns
            ),
            Metric("nfsyncd_resyncs_total", "counter", "Resyncs with the kernel table.").add(
                ms.resyncs
            ),
            Metric("nfsyncd_resync_failures_total", "counter", "Failed resyncs.").add(
                ms.resync_failures
            ),
            Metric("nfsyncd_decode_errors_total", "counter", "Malformed kernel messages.").add(
                stream.decode_errors.count if stream else 0
            ),
            Metric(
                "nfsyncd_kernel_events_muted_total",
                "counter",
                "Events of the daemon's own commits, skipped unread.",
            ).add(st.muted if st is not None else 0),
            Metric("nfsyncd_cache_entries", "gauge", "Entries in a cache.")
            .add(self.cache.flow_count(), cache="internal", object="flow")
            .add(self.cache.expect_count(), cache="internal", object="expectation"),
            Metric("nfsyncd_netlink_buffer_bytes", "gauge", "Event socket buffer size.").add(
                ms.buffer_size
            ),
            Metric(
                "nfsyncd_netlink_buffer_grows_total",
                "counter",
                "Event buffer doublings ahead of an overrun (a backlog filled half of it).",
            ).add(ms.buffer_grows),
            Metric("nfsyncd_control_requests_total", "counter", "Control socket requests.").add(
                sum(self.control.stats.requests.values())
            ),
            Metric("nfsyncd_control_errors_total", "counter", "Refused control requests.").add(
                self.control.stats.errors
            ),
            Metric("nfsyncd_config_reloads_total", "counter", "Configuration reloads.")
            .add(self.reloads, result="ok")
            .add(self.reload_failures, result="failed"),
            Metric("nfsyncd_ready", "gauge", "1 once the initial dump is done.").add(
                int(self.mirror.ready.is_set())
            ),
            Metric("nfsyncd_uptime_seconds", "gauge", "Seconds since start.").add(
                round(time.time() - self.started, 1)
            ),
        ]
        if self.sync is not None:
            from .sync.metrics import sync_metrics

            out += sync_metrics(self.sync)
        return out


# -- command line -------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nfsyncd",
        description=(
            "Conntrack table synchronisation daemon. Mirrors the kernel's connection-tracking "
            "table (flows and expectations) in memory and serves it to nfsyncctl; with a "
            "[sync] table in the config it also replicates it to a peer gateway."
        ),
        epilog=(
            "Runs in the foreground and logs to stderr (use systemd or a container runtime to "
            "supervise it). Needs CAP_NET_ADMIN. Signals: SIGTERM/SIGINT stop cleanly, SIGHUP "
            "reloads the config. Exit status: 0 clean stop, 1 runtime failure, 2 config or "
            "usage error. Control it with nfsyncctl; example config: config/nfsyncd.toml."
        ),
    )
    p.add_argument(
        "-C",
        "--config",
        metavar="FILE",
        help=f"configuration file (default {DEFAULT_CONFIG}; built-in defaults if it is absent)",
    )
    p.add_argument(
        "--check-config",
        nargs="?",
        const="",
        metavar="FILE",
        help="validate the configuration (FILE, or the -C file) and exit: 0 valid, 2 invalid; "
        "with nftables enabled, also dry-run the generated table against the running kernel "
        "(skipped, not failed, without CAP_NET_ADMIN)",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="override general.log_level",
    )
    p.add_argument("--version", action="version", version=f"nfsyncd {__version__}")
    return p


def _load(path: str | None, explicit: bool) -> tuple[Config, str | None]:
    if path is None:
        path = DEFAULT_CONFIG
    if not explicit and not os.path.exists(path):
        return default_config(), None
    return load_config(path), path


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.check_config is not None:
        path = args.check_config or args.config or DEFAULT_CONFIG
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"nfsyncd: cannot read {path}: {exc.strerror}", file=sys.stderr)
            return 2
        ok, message = kernel_check(cfg)
        if ok is False:
            print(f"{path}: {message}", file=sys.stderr)
            return 2
        mode = cfg.sync.mode if cfg.sync else "no peer sync (mirror only)"
        print(f"{path}: configuration is valid ({mode}); nftables: {message}")
        return 0
    try:
        config, path = _load(args.config, args.config is not None)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"nfsyncd: cannot read {args.config}: {exc.strerror}", file=sys.stderr)
        return 2
    if args.log_level:
        config = dataclasses.replace(
            config, general=dataclasses.replace(config.general, log_level=args.log_level)
        )
    setup_logging(config.general.log_level, config.general.log_format)
    if path is None:
        log.info("no config file at %s: running with built-in defaults", DEFAULT_CONFIG)
    daemon = Daemon(config, path, Notifier())
    try:
        return trio.run(daemon.run)
    except NftError as exc:
        log.error("nftables: cannot apply table inet %s: %s", config.nftables.table, exc)
        return 1
    except (OSError, BaseExceptionGroup) as exc:
        failure = _first_os_error(exc)
        if failure is None:
            raise
        log.error("%s", failure)
        if failure.errno == errno.EPERM:
            log.error("nfsyncd needs CAP_NET_ADMIN (run it as root or grant the capability)")
        return 1


def _first_os_error(exc: BaseException) -> OSError | None:
    """The OSError that stopped the daemon, looking inside trio's exception groups."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_os_error(inner)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    sys.exit(main())
