"""Events per second drained from the kernel while a batched injector creates 100k flows.

The injector (bench.inject, a separate process) creates flows through ctnetlink as fast as
the kernel takes them; this process drains the NEW events with nfsyncd's EventStream and
reports the rate, the CPU it spent per event and whether the kernel had to drop any
(ENOBUFS).  Everything happens in a throwaway namespace.

    .venv/bin/python -m bench.kernel_events [N]     (as root)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import trio

from nfsyncd.kernel import EventStream, Overrun
from nfsyncd.lab import Netns
from nfsyncd.netlink import ctnetlink as ct

from ._common import Result, count_arg, cpu_seconds, report


async def drain(ns: Netns, n: int, rcvbuf: int) -> dict[str, float]:
    with ns.entered():
        events = EventStream([ct.GROUP_CT_NEW], rcvbuf=rcvbuf)
    got = overruns = 0
    first = last = 0.0
    with events:
        proc = ns.popen(sys.executable, "-m", "bench.inject", str(n), stdout=subprocess.PIPE)
        cpu0 = cpu_seconds()
        idle_deadline = None
        while got < n:
            with trio.move_on_after(0.5) as scope:
                batch = await events.next_batch()
            if scope.cancelled_caught:
                if proc.poll() is not None:  # injector done and nothing more is coming
                    idle_deadline = idle_deadline or time.monotonic() + 2
                    if time.monotonic() > idle_deadline:
                        break
                continue
            if isinstance(batch, Overrun):
                overruns += 1
                continue
            now = time.perf_counter()
            if not got:
                first = now
            got += len(batch)
            last = now
        cpu = cpu_seconds() - cpu0
        out, _ = proc.communicate(timeout=60)
    injector = json.loads(out)
    span = max(last - first, 1e-9)
    return {
        "received": got,
        "lost": n - got,
        "overruns": overruns,
        "events_per_s": got / span,
        "cpu_us_per_event": cpu / max(got, 1) * 1e6,
        "inject_per_s": injector["created"] / injector["seconds"],
    }


def main(n: int = 100_000) -> list[Result]:
    results = []
    for label, rcvbuf in (("64 MiB", 64 << 20), ("8 MiB", 8 << 20)):
        with Netns.create("nfsbench") as ns:
            r = trio.run(drain, ns, n, rcvbuf)
        results += [
            Result(
                f"events drained/s, {n // 1000}k NEW, rcvbuf {label}",
                r["events_per_s"],
                "ev/s",
                f"injector created {r['inject_per_s']:,.0f}/s",
                r,
            ),
            Result(f"  reader CPU per event, rcvbuf {label}", r["cpu_us_per_event"], "µs"),
            Result(
                f"  events lost (ENOBUFS overruns: {r['overruns']}), rcvbuf {label}",
                r["lost"],
                "events",
            ),
        ]
    return results


if __name__ == "__main__":
    report("kernel_events", "kernel event stream", main(count_arg()))
