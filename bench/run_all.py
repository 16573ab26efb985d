"""Run every benchmark and print one Markdown table (``make bench``, as root).

Results also land in bench/results/*.json.  Numbers are reported, never asserted.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import batch_create, codec, failover, kernel_events, lifecycle, memory, sync
from bench._common import Result, save


def markdown(sections: list[tuple[str, list[Result]]]) -> str:
    lines = ["| benchmark | result | note |", "|---|---:|---|"]
    for _title, results in sections:
        for r in results:
            value = f"{r.value:,.2f}" if r.value < 100 else f"{r.value:,.0f}"
            lines.append(f"| {r.name.strip()} | {value} {r.unit} | {r.note} |")
    return "\n".join(lines)


def main() -> int:
    if os.geteuid() != 0:
        print("error: the benchmarks build network namespaces and need root", file=sys.stderr)
        return 2
    print(
        f"# nfsyncd benchmarks on {platform.node()}, {os.cpu_count()} CPUs, "
        f"kernel {platform.release()}, Python {platform.python_version()}"
    )
    sections = []
    for title, module in (
        ("codec", codec),
        ("batched create", batch_create),
        ("kernel events", kernel_events),
        ("memory", memory),
        ("peer sync", sync),
        ("connection lifecycle", lifecycle),
        ("failover", failover),
    ):
        print(f"==> {title} ...", flush=True)
        results = module.main()
        save(module.__name__.rsplit(".", 1)[-1], results)
        sections.append((title, results))
    table = markdown(sections)
    (Path(__file__).parent / "results" / "latest.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
