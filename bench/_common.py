"""Shared pieces of the benchmarks: flow generators, timing, result records.

Benchmarks report numbers, they never assert them: these machines are noisy, so targets
are judged as ratios against a reference measured in the same run.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nfsyncd.model import Flow, TcpInfo, Tuple

if TYPE_CHECKING:
    from nfsyncd.lab.sync_lab import SyncDaemon, SyncLab

RESULTS = Path(__file__).parent / "results"


@dataclass
class Result:
    name: str
    value: float
    unit: str
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def synthetic_flows(n: int, *, proto: int = 6, v6: bool = False, base: int = 0) -> Iterator[Flow]:
    """``n`` distinct established flows between 198.18.0.0/15 (or fd00:198:18::/48) hosts."""
    for i in range(base, base + n):
        if v6:
            src = socket.inet_pton(socket.AF_INET6, f"fd00:198:18::{i >> 16:x}:{i & 0xFFFF:x}")
            dst = socket.inet_pton(socket.AF_INET6, "fd00:198:18:1::1")
        else:
            src = bytes((198, 18 + ((i >> 16) & 1), (i >> 8) & 0xFF, i & 0xFF))
            dst = bytes((198, 19, 255, 1))
        sport = 1024 + (i >> 17)
        info = TcpInfo(state=3) if proto == 6 else None
        yield Flow(
            orig=Tuple(src, dst, proto, sport, 80 if proto == 6 else 53),
            status=0x0E if proto == 6 else 0,  # SEEN_REPLY|ASSURED|CONFIRMED
            timeout=600,
            protoinfo=info,
        )


def per_item_us(fn: Callable[[], object], items: int, repeat: int = 5) -> tuple[float, float]:
    """µs per item: best and median of ``repeat`` timed passes over ``items`` items."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) / items * 1e6)
    return min(samples), statistics.median(samples)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def save(name: str, results: list[Result]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return path


def print_table(title: str, results: list[Result]) -> None:
    print(f"\n{title}")
    for r in results:
        note = f"  ({r.note})" if r.note else ""
        print(f"  {r.name:<58} {r.value:>12,.2f} {r.unit}{note}")


def report(name: str, title: str, results: list[Result]) -> None:
    """A benchmark's ``__main__`` output: its table, saved as results/<name>.json."""
    print_table(title, results)
    print(f"  saved {save(name, results)}")


def count_arg(default: int = 100_000) -> int:
    """The flow count a benchmark was given as its first argument."""
    return int(sys.argv[1]) if len(sys.argv) > 1 else default


def round_error(exc: BaseException) -> str:
    """The error a failed round reports (an n/a row); ``NFSYNC_BENCH_DEBUG=1`` also prints
    the traceback, which the one line loses."""
    if os.environ.get("NFSYNC_BENCH_DEBUG"):
        traceback.print_exc()
    return f"{type(exc).__name__}: {exc}".strip()


def end_round(lab: SyncLab, *daemons: SyncDaemon | None) -> None:
    """Stop a round's daemons and empty both kernel tables, so the next round starts clean."""
    for daemon in daemons:
        if daemon is not None:
            daemon.close()
    lab.flush_kernel("fw1")
    lab.flush_kernel("fw2")


def write_report(
    name: str, table: str, data: object, *, rows: str = "rows", as_json: bool = False, t0: float
) -> None:
    """Keep the Markdown table and the raw rows under ``results/``, print one of them and the
    time since ``t0``."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(table + "\n")
    text = json.dumps(data, indent=2)
    (RESULTS / f"{name}_{rows}.json").write_text(text + "\n")
    print(text if as_json else table)
    print(f"\n({time.monotonic() - t0:.0f} s)", file=sys.stderr)


def run_as_root(name: str, main: Callable[[list[str]], list[Result]]) -> None:
    """A namespace benchmark's ``__main__``: refuse without root, else run and save."""
    if os.geteuid() != 0:
        print("error: the benchmark builds network namespaces and needs root", file=sys.stderr)
        sys.exit(2)
    save(name, main(sys.argv[1:]))
