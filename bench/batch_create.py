"""Creates per second through the batched create path (what commit to the kernel uses).

Two figures for 100k flows in a throwaway namespace: end to end (encode each flow, then
write in batches) and prepared (messages encoded beforehand, as the external cache keeps
them, then written): the second is what a commit costs at failover time.  The table is
flushed between runs; each figure is the best of ``runs``.

    .venv/bin/python -m bench.batch_create [N]     (as root)
"""

from __future__ import annotations

import sys
import time

import trio

from nfsyncd.kernel import Conntrack
from nfsyncd.lab import Netns
from nfsyncd.netlink import ctnetlink as ct

from ._common import Result, print_table, save, synthetic_flows

CONNTRACKD_COMMIT_ANCHOR = 114_000  # entries/s, conntrackd 1.4.7 -c on these machines


async def measure(ns: Netns, n: int, runs: int) -> dict[str, float]:
    flows = list(synthetic_flows(n, proto=6))
    with ns.entered():
        k = Conntrack()
    best_e2e = best_prepared = 0.0
    with k:
        for _ in range(runs):
            t0 = time.perf_counter()
            results = await k.create_many(flows)
            e2e = n / (time.perf_counter() - t0)
            assert all(r is None for r in results), next(r for r in results if r)
            assert await k.count() == n
            await k.flush()
            reqs = [ct.flow_create(f) for f in flows]
            t0 = time.perf_counter()
            results = await k.write_many(reqs)
            prepared = n / (time.perf_counter() - t0)
            assert all(r is None for r in results)
            await k.flush()
            best_e2e, best_prepared = max(best_e2e, e2e), max(best_prepared, prepared)
    return {"end_to_end": best_e2e, "prepared": best_prepared}


def main(n: int = 100_000, runs: int = 3) -> list[Result]:
    with Netns.create("nfsbench") as ns:
        r = trio.run(measure, ns, n, runs)
    anchor = CONNTRACKD_COMMIT_ANCHOR
    return [
        Result(
            f"batched create, encode + write, {n // 1000}k flows (target >= 150k/s)",
            r["end_to_end"],
            "flows/s",
            f"{r['end_to_end'] / anchor:.1f}x the anchor",
        ),
        Result(
            f"batched create, prepared messages, {n // 1000}k flows",
            r["prepared"],
            "flows/s",
            f"{r['prepared'] / anchor:.1f}x the anchor",
        ),
        Result(
            "anchor: conntrackd 1.4.7 commit (-c), measured earlier on this machine",
            anchor,
            "flows/s",
            "same-run comparison comes with the sync benchmarks",
        ),
    ]


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    res = main(count)
    print_table("batched create path", res)
    print(f"  saved {save('batch_create', res)}")
