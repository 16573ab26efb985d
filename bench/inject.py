"""Injector process for bench.kernel_events: creates N flows in batches, as fast as it can.

    python -m bench.inject N [BASE]     (inside the benchmark's namespace)

Prints one JSON line: {"created": N, "seconds": t, "errors": e}.
"""

from __future__ import annotations

import json
import sys
import time

import trio

from nfsyncd.kernel import Conntrack
from nfsyncd.netlink import ctnetlink as ct

from ._common import synthetic_flows


async def inject(n: int, base: int) -> dict[str, float]:
    reqs = [ct.flow_create(f) for f in synthetic_flows(n, proto=17, base=base)]
    with Conntrack() as k:
        t0 = time.perf_counter()
        results = await k.write_many(reqs)
        dt = time.perf_counter() - t0
    return {"created": n, "seconds": dt, "errors": sum(r is not None for r in results)}


if __name__ == "__main__":
    count = int(sys.argv[1])
    base = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    print(json.dumps(trio.run(inject, count, base)), flush=True)
