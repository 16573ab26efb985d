"""Peer sync: how fast and how cheaply a daemon pair replicates bursts of flows.

The two-gateway lab (:mod:`nfsyncd.lab.sync_lab`): a daemon on fw1 and one on fw2 joined
by one dedicated link (FTFW over UDP unless told otherwise). For each burst size, with fresh
daemons and empty tables:

* **create**: N established TCP flows created on fw1 through ctnetlink (large batches);
  replication rate = N / (first create .. all N in fw2's external cache), lag = end of the
  burst .. all N there. The rate cannot exceed the rate the burst is made at (also shown):
  a daemon that keeps up shows a lag near 0. fw2's count is polled over the control socket
  in-process (the cheapest question each daemon answers: conntrackd's ``-s`` counters,
  nfsyncd's status).
* **update**: the mark of every flow changes (one ctnetlink batch); done when fw2's external
  "updated" counter has grown by N.
* **delete**: every flow deleted on fw1; done when fw2's external cache is empty.
* **commit**: the burst is created again, then fw2 commits (timed, blocking) and fw2's kernel
  table is counted: committed entries per second.  Then once more with fw1's daemon
  stopped, as on two machines: netlink's listener bitmap is per machine, so fw1's event
  subscription makes fw2's kernel build an event for every committed flow even when
  fw2's own daemon has left the NEW group (nfsyncd does during a commit).
* CPU µs per replicated flow on each side (the daemon's on-CPU time from schedstat, plus
  reaped children) for the create phase, RSS of both with N flows cached.  fw2's CPU
  includes answering the create phase's polls (one every POLL s); what one costs it is
  measured beforehand (0.5 s polled against 0.5 s idle) and given in the note column.

The daemon kind is a parameter (``--daemons conntrackd,nfsyncd``): both sides run the same
kind. A daemon that cannot start or does not finish gives an "n/a" row with the error.
Numbers are reported, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import Result, end_round, round_error, run_as_root, write_report
from nfsyncd.lab.sync_daemons import start_sync_daemon
from nfsyncd.lab.sync_lab import FW, SyncDaemon, SyncLab

BURSTS = (1_000, 10_000, 100_000)
DAEMONS = ("conntrackd", "nfsyncd")
POLL = 0.01


def start(kind: str, lab: SyncLab, fw: FW, directory: Path, options: dict[str, Any]) -> SyncDaemon:
    return start_sync_daemon(kind, lab, fw, directory, **options)


@dataclass
class Row:
    daemon: str
    flows: int
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def _wait(probe: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until ``probe()`` holds (polled every POLL s), None after ``timeout``."""
    t0 = time.monotonic()
    while not probe():
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(POLL)
    return time.monotonic()


def _settle(daemon: SyncDaemon, timeout: float = 30.0) -> None:
    """Until ``daemon`` has used under 10 ms of CPU in 0.2 s (done with what came before)."""
    deadline = time.monotonic() + timeout
    last = daemon.cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = daemon.cpu_seconds()
        if now - last < 0.01:
            return
        last = now


def _poll_cost(daemon: SyncDaemon, seconds: float = 0.5) -> float:
    """µs of ``daemon``'s CPU per status poll at the bench's pace (one every POLL s), its
    idle CPU subtracted: the create phase polls the receiver so, and its CPU column pays."""
    c = daemon.cpu_seconds()
    time.sleep(seconds)  # a measuring window, not a wait for anything
    idle = daemon.cpu_seconds() - c
    c = daemon.cpu_seconds()
    t0 = time.monotonic()
    polls = 0
    while time.monotonic() - t0 < seconds:
        daemon.external_count()
        polls += 1
        time.sleep(POLL)
    busy = daemon.cpu_seconds() - c
    return max(0.0, busy - idle * (time.monotonic() - t0) / seconds) / polls * 1e6


def _budget(n: int) -> float:
    return 15.0 + n / 2_000  # generous: 65 s for 100k


def measure(kind: str, n: int, lab: SyncLab, tmp: Path, options: dict[str, Any]) -> Row:
    row = Row(kind, n)
    m = row.metrics
    d1 = d2 = None
    try:
        d1 = start(kind, lab, "fw1", tmp / f"{kind}-{n}-fw1", options)
        d2 = start(kind, lab, "fw2", tmp / f"{kind}-{n}-fw2", options)
        d1.wait_connected()
        d2.wait_connected()
        ext = d2  # bind for the closures
        poll_us = _poll_cost(d2)
        polls = 0

        def arrived() -> bool:
            nonlocal polls
            polls += 1
            return ext.external_count() >= n

        # create
        c1, c2 = d1.cpu_seconds(), d2.cpu_seconds()
        t0 = time.monotonic()
        flows = lab.create_flows("fw1", n)
        t_burst = time.monotonic()
        done = _wait(arrived, _budget(n))
        if done is None:
            row.error = f"create: {ext.external_count()} of {n} flows arrived in {_budget(n)} s"
            return row
        m["create_rate"] = n / (done - t0)
        m["create_lag_ms"] = (done - t_burst) * 1e3
        m["burst_rate"] = n / (t_burst - t0)
        m["cpu_fw1_us"] = (d1.cpu_seconds() - c1) / n * 1e6
        m["cpu_fw2_us"] = (d2.cpu_seconds() - c2) / n * 1e6
        m["poll_fw2_us"] = poll_us
        row.notes.append(
            f"fw2's CPU includes {polls} status polls at ~{poll_us:.0f} µs each "
            f"({polls * poll_us / n:.2f} µs/flow)"
        )
        m["rss_fw1_mib"] = d1.rss() / 2**20
        m["rss_fw2_mib"] = d2.rss() / 2**20

        # update storm
        before = ext.external_counters().get("updated")
        if before is None:
            row.notes.append("update: no 'updated' counter")
        else:
            c1, c2 = d1.cpu_seconds(), d2.cpu_seconds()
            t0 = time.monotonic()
            lab.update_flows("fw1", flows, mark=7)
            done = _wait(
                lambda: ext.external_counters().get("updated", 0) - before >= n, _budget(n)
            )
            if done is None:
                got = ext.external_counters().get("updated", 0) - before
                row.notes.append(f"update: {got} of {n} arrived")
            else:
                m["update_rate"] = n / (done - t0)
                m["update_cpu_fw1_us"] = (d1.cpu_seconds() - c1) / n * 1e6
                m["update_cpu_fw2_us"] = (d2.cpu_seconds() - c2) / n * 1e6

        # delete burst
        t0 = time.monotonic()
        lab.delete_flows("fw1", flows)
        done = _wait(lambda: ext.external_count() == 0, _budget(n))
        if done is None:
            row.notes.append(f"delete: {ext.external_count()} of {n} still cached")
        else:
            m["delete_rate"] = n / (done - t0)

        # commit: the burst again, then commit on fw2 and count its kernel table
        flows = lab.create_flows("fw1", n, base=n)
        if _wait(lambda: ext.external_count() >= n, _budget(n)) is None:
            row.notes.append(f"commit: only {ext.external_count()} of {n} to commit")
        seconds = d2.commit()
        committed = lab.kernel_count("fw2")
        m["commit_s"] = seconds
        m["commit_rate"] = committed / seconds if seconds > 0 else 0.0
        if committed < n:
            row.notes.append(f"commit: {committed} of {n} in fw2's kernel")

        # the same commit as on two machines: with fw1's daemon gone, nobody else on this
        # machine subscribes to conntrack events (netlink's listener bitmap is per
        # machine, not per namespace), so the kernel builds events for fw2's commit only
        # if fw2's daemon itself listens
        lab.flush_kernel("fw2")
        _settle(d2)
        d1.close()
        seconds = d2.commit()
        committed = lab.kernel_count("fw2")
        m["commit_alone_rate"] = committed / seconds if seconds > 0 else 0.0
        if committed < n:
            row.notes.append(f"commit alone: {committed} of {n} in fw2's kernel")
    except Exception as exc:  # a daemon that is not ready yet gives an n/a row
        row.error = round_error(exc)
    finally:
        end_round(lab, d1, d2)
    return row


def _short(error: str) -> str:
    lines = [ln.strip() for ln in error.splitlines() if ln.strip()]
    head = lines[0] if lines else error
    tail = next((ln for ln in reversed(lines) if "Error" in ln and ln != head), "")
    text = f"{head} … {tail}" if tail else head
    return (text[:200] + "…") if len(text) > 200 else text


COLUMNS = (
    ("burst_rate", "burst made (flows/s)", "{:,.0f}"),
    ("create_rate", "replication (flows/s)", "{:,.0f}"),
    ("create_lag_ms", "lag (ms)", "{:,.0f}"),
    ("update_rate", "updates (flows/s)", "{:,.0f}"),
    ("delete_rate", "deletes (flows/s)", "{:,.0f}"),
    ("commit_rate", "commit (entries/s)", "{:,.0f}"),
    ("commit_alone_rate", "commit, peer daemon stopped (entries/s)", "{:,.0f}"),
    ("cpu_fw1_us", "CPU fw1 (µs/flow)", "{:.1f}"),
    ("cpu_fw2_us", "CPU fw2 (µs/flow)", "{:.1f}"),
    ("rss_fw1_mib", "RSS fw1 (MiB)", "{:.1f}"),
    ("rss_fw2_mib", "RSS fw2 (MiB)", "{:.1f}"),
)


def markdown(rows: list[Row], options: dict[str, Any]) -> str:
    mode = f"{options.get('mode', 'ftfw')}/{options.get('transport', 'udp')}"
    head = ["daemon", "flows", *(title for _, title, _ in COLUMNS), "note"]
    lines = [
        f"Peer sync, {mode}, one link, both sides the same daemon",
        "",
        "| " + " | ".join(head) + " |",
        "|---|---:|" + "---:|" * len(COLUMNS) + "---|",
    ]
    for row in rows:
        if row.error and not row.metrics:
            cells = ["n/a"] * len(COLUMNS)
            note = _short(row.error)
        else:
            cells = [
                fmt.format(row.metrics[key]) if key in row.metrics else "n/a"
                for key, _, fmt in COLUMNS
            ]
            note = "; ".join(row.notes + ([_short(row.error)] if row.error else []))
        lines.append(f"| {row.daemon} | {row.flows:,} | " + " | ".join(cells) + f" | {note} |")
    return "\n".join(lines)


def results(rows: list[Row]) -> list[Result]:
    out = []
    for row in rows:
        extra: dict[str, Any] = {"metrics": row.metrics, "notes": row.notes, "error": row.error}
        name = f"sync {row.daemon}, {row.flows:,} flows, replication"
        if "create_rate" in row.metrics:
            note = f"lag {row.metrics['create_lag_ms']:.0f} ms"
            out.append(Result(name, row.metrics["create_rate"], "flows/s", note, extra))
        else:
            out.append(Result(name, 0.0, "flows/s", "n/a: " + _short(row.error or ""), extra))
    return out


def run(
    daemons: tuple[str, ...] = DAEMONS,
    bursts: tuple[int, ...] = BURSTS,
    options: dict[str, Any] | None = None,
) -> list[Row]:
    options = dict(options or {})
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="nfsync-sync-") as d, SyncLab(1, ipv6=False) as lab:
        for kind in daemons:
            for n in bursts:
                print(f"==> {kind}: {n:,} flows", file=sys.stderr, flush=True)
                row = measure(kind, n, lab, Path(d), options)
                rows.append(row)
                if row.error and not row.metrics:
                    print(f"    n/a: {_short(row.error)}", file=sys.stderr)
                    break  # the larger bursts would fail the same way
    return rows


def main(argv: list[str] | None = None) -> list[Result]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--daemons", default=",".join(DAEMONS), help="comma-separated kinds")
    p.add_argument("--bursts", default=",".join(map(str, BURSTS)), help="comma-separated sizes")
    p.add_argument("--mode", default="ftfw", choices=("ftfw", "alarm", "notrack"))
    p.add_argument("--transport", default="udp", choices=("udp", "multicast", "tcp"))
    args = p.parse_args(argv if argv is not None else [])
    daemons = tuple(k.strip() for k in args.daemons.split(",") if k.strip())
    bursts = tuple(int(b) for b in args.bursts.split(",") if b.strip())
    options = {"mode": args.mode, "transport": args.transport}
    t0 = time.monotonic()
    rows = run(daemons, bursts, options)
    table = markdown(rows, options)
    data = [
        {"daemon": r.daemon, "flows": r.flows, **r.metrics, "notes": r.notes, "error": r.error}
        for r in rows
    ]
    write_report("sync", table, data, t0=t0)
    return results(rows)


if __name__ == "__main__":
    run_as_root("sync", main)
