"""Creates per second through the batched create path (what commit to the kernel uses).

Three figures for 100k flows in a throwaway namespace: end to end (encode each flow, then
write in batches), prepared (messages encoded beforehand, then written: the kernel's own
pace), and commit (:func:`nfsyncd.commit.commit` of an external cache that received the
flows as sync messages: what ``nfsyncctl commit`` costs inside the daemon, without the
client's start-up and without the daemon's event reading).  The table is flushed between
runs; each figure is the best of ``runs``.

    .venv/bin/python -m bench.batch_create [N]     (as root)
"""

from __future__ import annotations

import time

import trio

from nfsyncd.commit import commit
from nfsyncd.daemon import tune_thread_switching
from nfsyncd.external import ExternalCache
from nfsyncd.kernel import Conntrack
from nfsyncd.lab import Netns
from nfsyncd.netlink import ctnetlink as ct
from nfsyncd.sync.wire import Message, MsgType

from ._common import Result, count_arg, report, synthetic_flows

CONNTRACKD_COMMIT_ANCHOR = 114_000  # entries/s, conntrackd 1.4.7 -c on these machines


async def measure(ns: Netns, n: int, runs: int) -> dict[str, float]:
    flows = list(synthetic_flows(n, proto=6))
    with ns.entered():
        k = Conntrack()
    ext = ExternalCache()
    ext.apply(Message(MsgType.CT_NEW, 0, i, f) for i, f in enumerate(flows))
    best_e2e = best_prepared = best_commit = 0.0
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
            t0 = time.perf_counter()
            done = await commit(ext, k)
            committed = n / (time.perf_counter() - t0)
            assert done.flows == n and not done.errors, done
            await k.flush()
            best_e2e, best_prepared = max(best_e2e, e2e), max(best_prepared, prepared)
            best_commit = max(best_commit, committed)
    return {"end_to_end": best_e2e, "prepared": best_prepared, "commit": best_commit}


def main(n: int = 100_000, runs: int = 3) -> list[Result]:
    tune_thread_switching()  # as the daemon does: its commit is what the last row measures
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
            f"commit of an external cache, {n // 1000}k flows (in process)",
            r["commit"],
            "flows/s",
            f"{r['commit'] / anchor:.1f}x the anchor",
        ),
        Result(
            "anchor: conntrackd 1.4.7 commit (-c), measured earlier on this machine",
            anchor,
            "flows/s",
            "same-run comparison comes with the sync benchmarks",
        ),
    ]


if __name__ == "__main__":
    report("batch_create", "batched create path", main(count_arg()))
