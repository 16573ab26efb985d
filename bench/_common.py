"""Shared pieces of the benchmarks: flow generators, timing, result records.

Benchmarks report numbers, they never assert them: these machines are noisy, so targets
are judged as ratios against a reference measured in the same run.
"""

from __future__ import annotations

import json
import resource
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nfsyncd.model import Flow, TcpInfo, Tuple

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
