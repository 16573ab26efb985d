"""Per-connection cost: kernel events and daemon CPU per replicated TCP connection lifecycle.

Issue 5 item 4. The two-gateway lab (:mod:`nfsyncd.lab.sync_lab`), one sync link, FTFW over
UDP, the same daemon kind on fw1 (sender) and fw2 (receiver). A load generator makes N real
TCP connections from srv1 to a server on fw1, K at a time: connect, send a few KB, half-close,
read a few KB back, close. Every connection is a flow in fw1's conntrack table, from NEW
through the TCP states to DESTROY, and each daemon replicates it to its peer.

Measured per variant, from the same run (fresh daemons, an empty table each time):

* **kernel events per connection** on fw1, counted by a separate event subscriber (our
  EventStream in fw1's namespace), split NEW / UPDATE / DESTROY;
* **sender and receiver CPU µs per replicated connection**: each daemon's on-CPU time
  (schedstat of its threads, plus reaped children) from the start of the load until fw2's
  external cache has seen every connection created and destroyed, divided by N;
* whether every connection was replicated: fw2's external "created" and "destroyed" (or
  "deleted") counters must each grow by N, and the subscriber must have seen N DESTROYs.
  nfsyncd may send a connection that opened and closed within one read of kernel events
  (``event_coalesce``) as a lone DEL, which the peer counts as "del_not_found": the peer's
  table ends the same, so such a connection counts as replicated (the report says how
  many). Likewise a connection whose client port came round again while the sender still
  held the previous connection's DEL: the two merge into one message that the peer counts
  as an update (the subscriber counts NEW events of an already seen 4-tuple). Whatever the
  counters, fw2's external cache must end as it started.
  A variant that lost data is marked LOST and its numbers are not comparable.

Each variant runs ``--rounds`` times, interleaved with the others so a noisy minute on a
shared machine hits all of them; the table shows medians. Variants: conntrackd (its
default: every event), nfsyncd with ``[nftables] event_filter =
false`` (every event, like conntrackd), nfsyncd with its generated table (default events:
new, related, destroy, assured, mark, label, helper). Ratios are against conntrackd.

fw1's TIME_WAIT timeout is 1 s and the subscriber dumps fw1's table twice a second: a
ctnetlink dump evicts expired entries at once, so DESTROY comes within a second or two of
the close instead of at the next periodic gc pass (up to a minute). Numbers are reported,
never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import Result, end_round, round_error, run_as_root, write_report
from nfsyncd.kernel import FLOW_EVENT_GROUPS, Conntrack, EventStream, Overrun
from nfsyncd.lab.netns import Netns
from nfsyncd.lab.sync_conntrackd import Conntrackd, parse_stats
from nfsyncd.lab.sync_daemons import start_sync_daemon
from nfsyncd.lab.sync_lab import FW, TRAFFIC_FW, SyncDaemon, SyncLab
from nfsyncd.lab.sync_nfsyncd import Nfsyncd
from nfsyncd.model import EventKind, Flow

PORT = 8181
PAYLOAD = 4096
CONNECTIONS = 5000
CONCURRENCY = 32
#: seconds of idle CPU measured before the load (reported, not subtracted)
IDLE_S = 2.0
ROUNDS = 3


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str
    nftables: str = ""
    """Lines for nfsyncd's [nftables] table ("" = the daemon's defaults)."""


VARIANTS = (
    Variant("conntrackd", "conntrackd"),
    Variant("nfsyncd, no event filter", "nfsyncd", "event_filter = false"),
    Variant("nfsyncd, generated filter", "nfsyncd"),
)


@dataclass
class Row:
    variant: str
    connections: int
    concurrency: int
    events: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    replicated: dict[str, int] = field(default_factory=dict)
    lost: bool = False
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    rounds: list[dict[str, float]] = field(default_factory=list)
    """Each round's metrics; ``metrics`` holds their medians."""


# -- the event subscriber on fw1 ----------------------------------------------------------


class EventCounter:
    """Counts fw1's flow events for the load's port in a thread of its own (own trio loop),
    and dumps fw1's table every half second so expired TIME_WAIT entries go at once."""

    def __init__(self, ns: Netns, port: int) -> None:
        self.port = port
        self.counts = dict.fromkeys(EventKind, 0)
        self.overruns = 0
        #: NEW events for a 4-tuple an earlier connection of the run already had (the
        #: client's port came round again): a sender may merge the old connection's DEL
        #: and the new one's NEW into one message, which the peer counts as an update
        self.reused = 0
        self._seen: set[object] = set()
        self._stop = threading.Event()
        with ns.entered():
            self._stream = EventStream(FLOW_EVENT_GROUPS, rcvbuf=128 * 1024 * 1024)
            self._ct = Conntrack()
        self._thread = threading.Thread(target=lambda: trio.run(self._main), daemon=True)
        self._thread.start()

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read)
            nursery.start_soon(self._evict)
            while not self._stop.is_set():
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    async def _read(self) -> None:
        counts, port = self.counts, self.port
        while True:
            batch = await self._stream.next_batch()
            if isinstance(batch, Overrun):
                self.overruns += 1
                continue
            for event in batch:
                obj = event.obj
                if isinstance(obj, Flow) and obj.orig.dport == port:
                    counts[event.kind] += 1
                    if event.kind == EventKind.NEW:
                        if obj.orig in self._seen:
                            self.reused += 1
                        self._seen.add(obj.orig)

    async def _evict(self) -> None:
        while True:
            await trio.sleep(0.5)
            await self._ct.dump()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._stream.close()
        self._ct.close()


# -- the load -------------------------------------------------------------------------------


async def _serve_one(conn: trio.socket.SocketType) -> None:
    async with trio.SocketStream(conn) as stream:
        while await stream.receive_some(65536):
            pass
        await stream.send_all(b"r" * PAYLOAD)


async def _load(server_ns: Netns, client_ns: Netns, n: int, concurrency: int) -> int:
    """``n`` connections from ``client_ns`` to ``server_ns``'s TRAFFIC_FW:PORT; returns how
    many completed (all of them, or an exception)."""
    with server_ns.entered():
        listener = trio.socket.socket()
    listener.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
    await listener.bind((TRAFFIC_FW, PORT))
    listener.listen(1024)
    done = 0
    todo = iter(range(n))

    async def serve(nursery: trio.Nursery) -> None:
        while True:
            conn, _ = await listener.accept()
            nursery.start_soon(_serve_one, conn)

    async def client() -> None:
        nonlocal done
        for _ in todo:
            with client_ns.entered():
                sock = trio.socket.socket()
            await sock.connect((TRAFFIC_FW, PORT))
            async with trio.SocketStream(sock) as stream:
                await stream.send_all(b"q" * PAYLOAD)
                await stream.send_eof()
                while await stream.receive_some(65536):
                    pass
            done += 1

    with listener:
        async with trio.open_nursery() as servers:
            servers.start_soon(serve, servers)
            with trio.fail_after(60 + n / 50):
                async with trio.open_nursery() as clients:
                    for _ in range(concurrency):
                        clients.start_soon(client)
            servers.cancel_scope.cancel()
    return done


# -- one variant ----------------------------------------------------------------------------


def _start(variant: Variant, lab: SyncLab, fw: FW, directory: Path) -> SyncDaemon:
    if variant.kind != "nfsyncd":
        return start_sync_daemon(variant.kind, lab, fw, directory)
    daemon = start_sync_daemon("nfsyncd", lab, fw, directory, start=False)
    config: Path = daemon.config  # type: ignore[attr-defined]
    if variant.nftables:
        text = config.read_text()
        if "[nftables]" in text:  # the harness writes its own table: add to it
            text = text.replace("[nftables]\n", f"[nftables]\n{variant.nftables}\n", 1)
        else:
            text += f"\n[nftables]\n{variant.nftables}\n"
        config.write_text(text)
    daemon.start()  # type: ignore[attr-defined]
    return daemon


def _counters(daemon: SyncDaemon) -> tuple[int, int, int]:
    """fw2's external cache: (created, destroyed, lone DELs for entries it never had)."""
    c = daemon.external_counters()
    return c.get("created", 0), c.get("destroyed", c.get("deleted", 0)), c.get("del_not_found", 0)


def _diagnosis(sender: SyncDaemon, receiver: SyncDaemon) -> str:
    """Where lost connections went missing: the counters of both daemons that tell (the
    sender's kernel events and overruns, the receiver's sequence tracking)."""
    if isinstance(sender, Nfsyncd) and isinstance(receiver, Nfsyncd):
        tx, rx = sender.stats(), receiver.stats()
        runtime = tx.get("runtime", {})
        sync = tx.get("sync", {})
        picked: dict[str, Any] = {
            "sender events": runtime.get("events_received"),
            "sender overruns": runtime.get("netlink_overrun"),
            "sender resyncs": runtime.get("resync_with_kernel_table"),
            "sender cache": tx.get("cache", {}).get("internal"),
            "sender sync": {k: sync.get(k) for k in ("messages_sent", "send_failures")},
            "sender queue": tx.get("queue"),
            "receiver network": {k: rx.get("network", {}).get(k) for k in ("lost", "before")},
            "receiver external": rx.get("cache", {}).get("external"),
        }
    elif isinstance(sender, Conntrackd) and isinstance(receiver, Conntrackd):
        runtime = parse_stats(sender.stats("runtime"))
        rx_counts = parse_stats(receiver.stats("network"))
        picked = {
            "sender runtime": {k: v for sec in runtime.values() for k, v in sec.items()},
            "receiver": {k: v for k, v in rx_counts.items() if "sequence" in k or "network" in k},
        }
    else:
        return "no counters for this pair"
    return "; ".join(f"{k}: {v}" for k, v in picked.items())


def _wait(probe: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def measure(variant: Variant, lab: SyncLab, tmp: Path, n: int, concurrency: int) -> Row:
    row = Row(variant.name, n, concurrency)
    d1 = d2 = None
    counter: EventCounter | None = None
    try:
        directory = tmp / variant.name.replace(" ", "").replace(",", "-")
        d1 = _start(variant, lab, "fw1", directory / "fw1")
        d2 = _start(variant, lab, "fw2", directory / "fw2")
        d1.wait_connected()
        d2.wait_connected()
        counter = EventCounter(lab.ns("fw1"), PORT)
        i1, i2, ti = d1.cpu_seconds(), d2.cpu_seconds(), time.monotonic()
        time.sleep(IDLE_S)  # what the daemons cost doing nothing (timers, keepalives)
        idle_s = time.monotonic() - ti
        idle1, idle2 = (d1.cpu_seconds() - i1) / idle_s, (d2.cpu_seconds() - i2) / idle_s
        created0, destroyed0, lone0 = _counters(d2)
        cached0 = d2.external_count()
        c1, c2 = d1.cpu_seconds(), d2.cpu_seconds()
        t0 = time.monotonic()
        completed = trio.run(_load, lab.ns("fw1"), lab.srv("fw1"), n, concurrency)
        load_s = time.monotonic() - t0
        ctr = counter
        all_destroyed = _wait(lambda: ctr.counts[EventKind.DESTROY] >= n, 30 + n / 200)
        receiver = d2

        def replicated() -> bool:
            created, destroyed, lone = _counters(receiver)
            created, destroyed, lone = created - created0, destroyed - destroyed0, lone - lone0
            # every connection arrived (a reused 4-tuple may have arrived as an update of
            # the one before it) and left: the peer's table is back where it started
            return (
                destroyed >= created
                and created + lone + ctr.reused >= n
                and receiver.external_count() == cached0
            )

        complete = _wait(replicated, 30 + n / 200)
        elapsed = time.monotonic() - t0
        cpu1, cpu2 = d1.cpu_seconds() - c1, d2.cpu_seconds() - c2
        created, destroyed, lone = _counters(d2)
        row.replicated = {
            "created": created - created0,
            "destroyed": destroyed - destroyed0,
            "lone_deletes": lone - lone0,
            "reused_tuples": counter.reused,
            "left_cached": receiver.external_count() - cached0,
            "kernel_destroy_events": counter.counts[EventKind.DESTROY],
            "completed_connections": completed,
            "overruns": counter.overruns,
        }
        row.events = {kind.name: count for kind, count in counter.counts.items()}
        total = sum(counter.counts.values())
        m = row.metrics
        m["events_per_conn"] = total / n
        for kind in EventKind:
            m[f"{kind.name.lower()}_per_conn"] = counter.counts[kind] / n
        m["cpu_sender_us"] = cpu1 / n * 1e6
        m["cpu_receiver_us"] = cpu2 / n * 1e6
        m["cpu_total_us"] = (cpu1 + cpu2) / n * 1e6
        m["idle_sender_ms_per_s"] = idle1 * 1e3
        m["idle_receiver_ms_per_s"] = idle2 * 1e3
        m["load_s"] = load_s
        m["conn_per_s"] = n / load_s
        m["elapsed_s"] = elapsed
        if not (complete and all_destroyed and completed == n and counter.overruns == 0):
            row.lost = True
            row.notes.append(
                f"LOST: fw2 created {created - created0}/{n}, destroyed "
                f"{destroyed - destroyed0}/{n}, lone DELs {lone - lone0}, "
                f"reused 4-tuples {counter.reused}, left cached {row.replicated['left_cached']}; "
                "fw1 DESTROY events "
                f"{counter.counts[EventKind.DESTROY]}/{n}; overruns {counter.overruns}"
            )
            row.notes.append(_diagnosis(d1, d2))
    except Exception as exc:  # a daemon that fails gives an n/a row
        row.error = round_error(exc)
    finally:
        if counter is not None:
            counter.close()
        end_round(lab, d1, d2)
    return row


# -- report ---------------------------------------------------------------------------------


def _short(error: str) -> str:
    lines = [ln.strip() for ln in error.splitlines() if ln.strip()]
    text = lines[0] if lines else error
    return (text[:200] + "…") if len(text) > 200 else text


def _ratio(value: float | None, ref: float | None) -> str:
    if value is None or not ref:
        return "n/a"
    return f"{value / ref:.2f}x"


def markdown(rows: list[Row]) -> str:
    ref = next((r for r in rows if r.variant == "conntrackd" and r.metrics), None)

    n = rows[0].connections if rows else 0
    k = rows[0].concurrency if rows else 0
    r = max((len(row.rounds) for row in rows), default=0)
    lines = [
        f"Per-connection cost, {n:,} TCP connections ({k} concurrent) to fw1, FTFW/UDP, "
        "one link; CPU = on-CPU time of each daemon from the start of the load until fw2 "
        f"has every connection created and destroyed, per connection; median of {r} "
        "interleaved rounds",
        "",
        "| variant | kernel events/conn (NEW+UPD+DEL) | sender CPU µs/conn | receiver CPU "
        "µs/conn | total CPU µs/conn | total vs conntrackd | replicated |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        if row.error and not row.metrics:
            lines.append(f"| {row.variant} | n/a | n/a | n/a | n/a | n/a | {_short(row.error)} |")
            continue
        m = row.metrics
        events = (
            f"{m['events_per_conn']:.2f} ({m['new_per_conn']:.2f}+{m['update_per_conn']:.2f}"
            f"+{m['destroy_per_conn']:.2f})"
        )
        ref_m = ref.metrics if ref else {}
        sender = (
            f"{m['cpu_sender_us']:.0f} ({_ratio(m['cpu_sender_us'], ref_m.get('cpu_sender_us'))})"
        )
        receiver = (
            f"{m['cpu_receiver_us']:.0f} "
            f"({_ratio(m['cpu_receiver_us'], ref_m.get('cpu_receiver_us'))})"
        )
        total = f"{m['cpu_total_us']:.0f}"
        ratio = _ratio(m["cpu_total_us"], ref_m.get("cpu_total_us"))
        rep = row.replicated
        status = (
            "; ".join(row.notes)
            if row.lost
            else f"all {rep['created']:,} created + {rep['destroyed']:,} destroyed on fw2"
            + (
                f", {rep['lone_deletes']:,} opened and closed within one event read (a lone DEL)"
                if rep.get("lone_deletes")
                else ""
            )
            + (
                f", {rep['reused_tuples']:,} reused an earlier connection's 4-tuple"
                if rep.get("reused_tuples")
                else ""
            )
        )
        lines.append(
            f"| {row.variant} | {events} | {sender} | {receiver} | {total} | {ratio} | {status} |"
        )
    idle = [
        f"{r.variant} {r.metrics['idle_sender_ms_per_s']:.1f}/"
        f"{r.metrics['idle_receiver_ms_per_s']:.1f}"
        for r in rows
        if "idle_sender_ms_per_s" in r.metrics
    ]
    if idle:
        lines += [
            "",
            "Idle CPU before the load (ms per s, sender/receiver; included above): "
            + ", ".join(idle),
        ]
    return "\n".join(lines)


def results(rows: list[Row]) -> list[Result]:
    out = []
    for row in rows:
        extra: dict[str, Any] = asdict(row)
        name = f"lifecycle {row.variant}, CPU per replicated connection"
        if "cpu_total_us" in row.metrics:
            m = row.metrics
            note = (
                f"sender {m['cpu_sender_us']:.0f} + receiver {m['cpu_receiver_us']:.0f} µs; "
                f"{m['events_per_conn']:.2f} kernel events/conn" + ("; LOST" if row.lost else "")
            )
            out.append(Result(name, m["cpu_total_us"], "µs/conn", note, extra))
        else:
            out.append(Result(name, 0.0, "µs/conn", "n/a: " + _short(row.error or ""), extra))
    return out


def combine(rounds: list[Row]) -> Row:
    """One row per variant: the median of each metric over the rounds that measured; lost
    if any round lost data; the first error if no round measured."""
    good = [r for r in rounds if r.metrics]
    if not good:
        return rounds[0]
    first = good[0]
    row = Row(first.variant, first.connections, first.concurrency, events=first.events)
    row.rounds = [r.metrics for r in good]
    for key in first.metrics:
        row.metrics[key] = statistics.median(r.metrics[key] for r in good if key in r.metrics)
    # the counters of one round, the one with the fewest creations (they explain each other)
    worst = min(good, key=lambda r: r.replicated.get("created", 0))
    row.replicated = dict(worst.replicated)
    row.replicated["overruns"] = max(r.replicated.get("overruns", 0) for r in good)
    row.lost = any(r.lost for r in good)
    row.notes = [n for r in rounds for n in r.notes] + [
        f"round failed: {_short(r.error)}" for r in rounds if r.error
    ]
    return row


def run(
    variants: tuple[Variant, ...] = VARIANTS,
    connections: int = CONNECTIONS,
    concurrency: int = CONCURRENCY,
    rounds: int = ROUNDS,
) -> list[Row]:
    """``rounds`` interleaved rounds of every variant (so a noisy minute hits all of them),
    combined per variant by :func:`combine`."""
    measured: dict[str, list[Row]] = {v.name: [] for v in variants}
    with (
        tempfile.TemporaryDirectory(prefix="nfsync-lifecycle-") as d,
        SyncLab(1, ipv6=False, prefix="lc") as lab,
    ):
        fw1 = lab.ns("fw1")
        fw1.sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", 1)
        lab.srv("fw1").sysctl("net.ipv4.ip_local_port_range", "10000 65000")
        lab.srv("fw1").sysctl("net.ipv4.tcp_tw_reuse", 1)
        for i in range(rounds):
            for variant in variants:
                print(
                    f"==> round {i + 1}/{rounds}, {variant.name}: {connections:,} connections",
                    file=sys.stderr,
                    flush=True,
                )
                # leftovers of an nfsyncd that could not clean up
                fw1.run("nft", "delete", "table", "inet", "nfsyncd", check=False)
                row = measure(variant, lab, Path(d) / f"r{i}", connections, concurrency)
                measured[variant.name].append(row)
                if row.error:
                    print(f"    n/a: {_short(row.error)}", file=sys.stderr)
    return [combine(rows) for rows in measured.values()]


def main(argv: list[str] | None = None) -> list[Result]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--connections", type=int, default=CONNECTIONS, help="N connections")
    p.add_argument("--concurrency", type=int, default=CONCURRENCY, help="K at a time")
    p.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds (median)")
    p.add_argument(
        "--variants",
        default=",".join(str(i) for i in range(len(VARIANTS))),
        help="comma-separated indexes into: "
        + "; ".join(f"{i}={v.name}" for i, v in enumerate(VARIANTS)),
    )
    p.add_argument("--json", action="store_true", help="print the rows as JSON, not Markdown")
    args = p.parse_args(argv if argv is not None else [])
    variants = tuple(VARIANTS[int(i)] for i in args.variants.split(",") if i.strip())
    t0 = time.monotonic()
    rows = run(variants, args.connections, args.concurrency, args.rounds)
    table = markdown(rows)
    write_report("lifecycle", table, [asdict(r) for r in rows], as_json=args.json, t0=t0)
    return results(rows)


if __name__ == "__main__":
    run_as_root("lifecycle", main)
