"""Failover numbers: what connections notice when the primary gateway fails (issue 6 item 3).

The failover lab (:class:`nfsyncd.lab.failover_lab.FailoverLab`: client, two gateways with
real keepalived moving two VIPs, a server; strict stateful ruleset, ``tcp_loose=0``, SNAT
and a DNAT port-forward) with, in the same run: nfsyncd in cache mode (FTFW; the backup
commits its external cache when keepalived's notify script runs ``nfsyncctl notify
primary``), nfsyncd in inject mode (``disable_external_cache``: state written into the
backup's kernel as it arrives) and conntrackd (Debian's, FTFW over UDP, primary-backup.sh's
commands in the notify script).

One round: gw1 primary, start the traffic of :mod:`nfsyncd.lab.failover_traffic` (a paced
TCP stream both ways client->server, the same through the port-forward, an interactive
session, DNS-like UDP requests and ICMP echo every 20 ms), wait until gw2 holds the synced
flows and everything flows, make gw1 fail, wait until gw2 is primary (notify returned) and
every client made progress for a second, stop the traffic. Then undo the failure and let
gw1 preempt back before the next round (the failback is not measured). Failures: stop
keepalived on gw1 (SIGTERM: it hands over at once), SIGKILL gw1's sync daemon (keepalived's
``vrrp_script`` notices within its 1 s interval), cut gw1's LAN and WAN links (the backup
waits VRRP's master-down interval: 3 adverts of 0.3 s + skew).

Per round:

* **VRRP takeover**: from the failure to keepalived calling gw2's notify script;
* **notify (state in kernel)**: the notify script's run time; when it returns the state is
  in gw2's kernel (for inject mode it already was);
* **TCP stall**: the longest time either TCP stream received nothing, either direction;
* **resets**: TCP connections (two streams, interactive) that broke;
* **UDP / ICMP lost**: requests not answered within 1 s.

Rounds are interleaved (round 1 of every daemon, then round 2, ...), a fresh lab each time,
so a noisy minute on a shared machine hits every daemon. The table shows medians and the
worst round; the stall ratio is against conntrackd's median from the same run. Numbers are
reported, never asserted.

    .venv/bin/python bench/failover.py [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import Result, run_as_root, write_report
from nfsyncd.lab.demo import FAILURES, TCP_KINDS, reset_lab, stall_bound, transition_after
from nfsyncd.lab.demo import wait_progress as progressed
from nfsyncd.lab.failover_lab import DaemonKind, FailoverLab
from nfsyncd.lab.failover_traffic import TrafficError

ROUNDS = 3
DAEMONS: tuple[DaemonKind, ...] = ("nfsyncd", "nfsyncd-inject", "conntrackd")
LABEL = {
    "nfsyncd": "nfsyncd (cache)",
    "nfsyncd-inject": "nfsyncd (inject)",
    "conntrackd": "conntrackd",
    "none": "none (no sync)",
}
_ERRORS = (TimeoutError, TrafficError, RuntimeError, OSError, subprocess.SubprocessError)


@dataclass
class Round:
    daemon: str
    failure: str
    round: int
    takeover_s: float | None = None
    notify_s: float | None = None
    stall_s: float | None = None
    interactive_max_s: float | None = None
    resets: int = 0
    udp_lost: int | None = None
    icmp_lost: int | None = None
    flowed: bool = False
    flows_synced: int = 0
    error: str | None = None


def one_round(lab: FailoverLab, failure: str, number: int) -> Round:
    """One failover of gw1 with all traffic running; failback afterwards (unmeasured)."""
    row = Round(lab.daemon, failure, number)
    how = FAILURES[failure]
    reset_lab(lab)
    with lab.traffic() as traffic:
        if lab.daemon != "none":
            deadline = time.monotonic() + 15
            while lab.flows_synced("gw2") < 4 and time.monotonic() < deadline:
                time.sleep(0.05)  # polling a condition with a deadline
        row.flows_synced = lab.flows_synced("gw2")
        if not progressed(traffic, seconds=1.0):
            raise TimeoutError(f"traffic did not flow before the failover: {traffic.snapshot()}")
        t_fail = time.time()
        how.fail(lab, "gw1")
        lab.wait_primary("gw2", timeout=20)
        row.flowed = progressed(traffic, seconds=1.0, timeout=stall_bound(lab) + 5)
        results = traffic.stop()
    trans = transition_after(lab, "gw2", t_fail)
    if trans is not None:
        row.takeover_s = round(trans.began_at - t_fail, 3)
        row.notify_s = None if trans.seconds is None else round(trans.seconds, 3)
    row.stall_s = max(float(results[k]["max_stall_s"]) for k in ("stream", "dnat"))
    row.interactive_max_s = float(results["interactive"]["max_latency_s"])
    row.resets = sum(int(results[k]["resets"]) for k in TCP_KINDS)
    row.udp_lost = int(results["udp"]["lost"])
    row.icmp_lost = int(results["icmp"]["lost"])
    how.recover(lab, "gw1")
    return row


def run(daemons: tuple[DaemonKind, ...], failures: tuple[str, ...], rounds: int) -> list[Round]:
    rows: list[Round] = []
    for number in range(1, rounds + 1):
        for daemon in daemons:
            print(f"--> round {number}/{rounds}: {LABEL[daemon]}", file=sys.stderr, flush=True)
            lab: FailoverLab | None = None
            try:
                for failure in failures:
                    try:
                        if lab is None:
                            lab = FailoverLab(daemon)
                        row = one_round(lab, failure, number)
                    except _ERRORS as exc:
                        row = Round(daemon, failure, number, error=f"{type(exc).__name__}: {exc}")
                        traceback.print_exc(limit=3)
                        if lab is not None:
                            lab.close()  # the next failure gets a fresh lab
                            lab = None
                    rows.append(row)
                    print(f"    {_line(row)}", file=sys.stderr, flush=True)
            finally:
                if lab is not None:
                    lab.close()
    return rows


def _line(r: Round) -> str:
    if r.error:
        return f"{r.failure:<16} ERROR {r.error[:200]}"
    return (
        f"{r.failure:<16} takeover {r.takeover_s} s, notify {r.notify_s} s, stall "
        f"{r.stall_s} s, resets {r.resets}, lost udp {r.udp_lost} icmp {r.icmp_lost}"
    )


def _med_worst(values: list[float | int | None], fmt: str) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    med, worst = statistics.median(vals), max(vals)
    return f"{med:{fmt}} / {worst:{fmt}}"


def _median(rows: list[Round], daemon: str, failure: str) -> float | None:
    vals = [
        r.stall_s
        for r in rows
        if r.daemon == daemon and r.failure == failure and r.stall_s is not None
    ]
    return statistics.median(vals) if vals else None


def markdown(rows: list[Round], daemons: tuple[str, ...], failures: tuple[str, ...]) -> str:
    head = (
        "| daemon | failure | rounds | VRRP takeover | notify (state in kernel) | TCP stall "
        "| stall vs conntrackd | resets | UDP lost | ICMP lost |"
    )
    lines = [
        head,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for daemon in daemons:
        for failure in failures:
            mine = [r for r in rows if r.daemon == daemon and r.failure == failure]
            ok = [r for r in mine if r.error is None]
            errors = len(mine) - len(ok)
            ref = _median(rows, "conntrackd", failure)
            med = _median(rows, daemon, failure)
            ratio = "-" if ref in (None, 0) or med is None else f"{med / ref:.2f}x"
            counted = f"{len(ok)}" + (f" (+{errors} failed)" if errors else "")
            lines.append(
                f"| {LABEL[daemon]} | {FAILURES[failure].words} | {counted} "
                f"| {_med_worst([r.takeover_s for r in ok], '.2f')} s "
                f"| {_med_worst([r.notify_s for r in ok], '.2f')} s "
                f"| {_med_worst([r.stall_s for r in ok], '.2f')} s | {ratio} "
                f"| {sum(r.resets for r in ok)} "
                f"| {_med_worst([r.udp_lost for r in ok], 'g')} "
                f"| {_med_worst([r.icmp_lost for r in ok], 'g')} |"
            )
    return "\n".join(lines)


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].split(". Licensed")[0] if text else "?"


def header(rounds: int, command: str) -> str:
    return (
        f"Failover numbers on {os.cpu_count()} CPUs, kernel {platform.release()}, "
        f"{_version(['keepalived', '--version'])}, {_version(['conntrackd', '-v'])}; "
        f"{rounds} round(s) per cell, medians / worst; VRRP advert_int 0.3 s; "
        "UDP and ICMP requests every 20 ms.\n"
        f"Reproduce: `{command}` (as root).\n"
    )


def results(rows: list[Round], daemons: tuple[str, ...], failures: tuple[str, ...]) -> list[Result]:
    out = []
    for daemon in daemons:
        for failure in failures:
            ok = [r for r in rows if r.daemon == daemon and r.failure == failure and not r.error]
            stalls = [r.stall_s for r in ok if r.stall_s is not None]
            if not stalls:
                continue
            notify = [r.notify_s for r in ok if r.notify_s is not None]
            out.append(
                Result(
                    f"failover TCP stall, {LABEL[daemon]}, {FAILURES[failure].words}",
                    statistics.median(stalls),
                    "s",
                    f"worst {max(stalls):.2f} s; notify median "
                    f"{statistics.median(notify) if notify else float('nan'):.2f} s; "
                    f"resets {sum(r.resets for r in ok)}",
                    extra={"rounds": [asdict(r) for r in ok]},
                )
            )
    return out


def main(argv: list[str] | None = None) -> list[Result]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=ROUNDS, help="rounds per daemon and failure")
    p.add_argument(
        "--daemons",
        default=",".join(DAEMONS),
        help="comma-separated: nfsyncd, nfsyncd-inject, conntrackd, none",
    )
    p.add_argument(
        "--failures", default=",".join(FAILURES), help=f"comma-separated: {', '.join(FAILURES)}"
    )
    p.add_argument("--json", action="store_true", help="print the rounds as JSON, not Markdown")
    args = p.parse_args(argv if argv is not None else [])
    daemons = tuple(cast(DaemonKind, d.strip()) for d in args.daemons.split(",") if d.strip())
    failures = tuple(f.strip() for f in args.failures.split(",") if f.strip())
    for d in daemons:
        if d not in LABEL:
            p.error(f"unknown daemon {d!r}")
    for f in failures:
        if f not in FAILURES:
            p.error(f"unknown failure {f!r}")
    t0 = time.monotonic()
    rows = run(daemons, failures, args.rounds)
    command = ".venv/bin/python bench/failover.py " + " ".join(argv or [f"--rounds {args.rounds}"])
    table = header(args.rounds, command.strip()) + "\n" + markdown(rows, daemons, failures)
    data = [asdict(r) for r in rows]
    write_report("failover", table, data, rows="rounds", as_json=args.json, t0=t0)
    return results(rows, daemons, failures)


if __name__ == "__main__":
    run_as_root("failover", main)
