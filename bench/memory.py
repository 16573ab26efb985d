"""Memory: resident size of the daemon holding 100k flows, against conntrackd, same run.

Both daemons run in throwaway namespaces; the same 100k established TCP flows are created
through ctnetlink and each daemon mirrors them from events into its internal cache.  RSS is
read from /proc once each daemon reports all 100k.  conntrackd runs in FTFW/UDP mode with a
dedicated link to a second namespace (its internal cache is the one that matters).

A million flows cannot be put into the kernel here (the host's nf_conntrack_max is 262144
and it is not ours to change), so the 1M figure fills the same cache code in a separate
process from synthetic NEW events, and reports its RSS.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from bench._common import Result, synthetic_flows
from nfsyncd.kernel import Conntrack
from nfsyncd.lab.netns import Netns, veth_pair

FLOWS = 100_000


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", text).group(1))  # type: ignore[union-attr]
    hwm = int(re.search(r"VmHWM:\s+(\d+)", text).group(1))  # type: ignore[union-attr]
    return rss / 1024, hwm / 1024


def _wait(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


async def _create(ns: Netns, n: int) -> None:
    with ns.entered():
        ct = Conntrack()
    with ct:
        errors = await ct.create_many(synthetic_flows(n))
        failed = sum(e is not None for e in errors)
        if failed:
            raise RuntimeError(f"{failed} creates failed")


def measure_nfsyncd(tmp: Path) -> tuple[float, float, float]:
    """(RSS before, RSS with 100k, peak) of nfsyncd, MiB."""
    with Netns.create("bmn") as ns:
        sock = tmp / "nfsyncd.sock"
        cfg = tmp / "nfsyncd.toml"
        cfg.write_text(
            f'[general]\ncontrol_socket = "{sock}"\nnetlink_buffer_size = "64MiB"\n'
            '[metrics]\nlisten = ""\n'
        )
        log = (tmp / "nfsyncd.log").open("wb")
        proc = ns.popen(
            sys.executable,
            "-m",
            "nfsyncd.daemon",
            "-C",
            str(cfg),
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def status() -> dict[str, object]:
            out = subprocess.run(
                [sys.executable, "-m", "nfsyncd.ctl", "--socket", str(sock), "--json", "status"],
                capture_output=True,
                text=True,
            )
            return json.loads(out.stdout) if out.returncode == 0 else {}

        try:
            _wait(lambda: status().get("ready"), 30, "nfsyncd ready")
            before, _ = rss_mib(proc.pid)
            trio.run(_create, ns, FLOWS)
            _wait(lambda: status().get("flows") == FLOWS, 120, "nfsyncd to cache 100k flows")
            after, peak = rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(15)
            log.close()
    return before, after, peak


CONNTRACKD_CONF = """\
General {{
    HashSize 65536
    HashLimit 524288
    LockFile {tmp}/conntrackd.lock
    LogFile {tmp}/conntrackd.log
    Syslog off
    NetlinkBufferSize 67108864
    NetlinkBufferSizeMaxGrowth 134217728
    UNIX {{ Path {tmp}/conntrackd.ctl }}
}}
Sync {{
    Mode FTFW {{ }}
    UDP {{
        IPv4_address 198.18.0.1
        IPv4_Destination_Address 198.18.0.2
        Port 3780
        Interface {ifname}
    }}
}}
"""


def _conntrackd_active(cfg: Path) -> int | None:
    out = subprocess.run(["conntrackd", "-C", str(cfg), "-s"], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    m = re.search(r"cache internal:\s*\ncurrent active connections:\s+(\d+)", out.stdout)
    return int(m.group(1)) if m else None


def measure_conntrackd(tmp: Path) -> tuple[float, float, float] | None:
    if subprocess.run(["which", "conntrackd"], capture_output=True).returncode != 0:
        return None
    with Netns.create("bmc") as a, Netns.create("bmp") as b:
        a_if, _ = veth_pair(a, b, "198.18.0.1/24", "198.18.0.2/24")
        cfg = tmp / "conntrackd.conf"
        cfg.write_text(CONNTRACKD_CONF.format(tmp=tmp, ifname=a_if))
        proc = a.popen(
            "conntrackd", "-C", str(cfg), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            _wait(lambda: _conntrackd_active(cfg) is not None, 30, "conntrackd ready")
            before, _ = rss_mib(proc.pid)
            trio.run(_create, a, FLOWS)
            _wait(lambda: _conntrackd_active(cfg) == FLOWS, 120, "conntrackd to cache 100k")
            after, peak = rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(15)
    return before, after, peak


FILL = """
import re, sys
from pathlib import Path
from bench._common import synthetic_flows
from nfsyncd.cache import InternalCache
from nfsyncd.filter import Filter
from nfsyncd.kernel import Event
from nfsyncd.model import EventKind
import nfsyncd.daemon  # the daemon's imports, so the baseline is the daemon's
n = int(sys.argv[1])
cache = InternalCache(Filter(), limit=n + 1)
gen = synthetic_flows(n)
while True:
    chunk = [Event(EventKind.NEW, f, 0) for _, f in zip(range(10000), gen)]
    if not chunk:
        break
    cache.apply_events(chunk)
assert cache.flow_count() == n, cache.flow_count()
text = Path("/proc/self/status").read_text()
print(int(re.search(r"VmRSS:\\s+(\\d+)", text).group(1)) / 1024)
"""


def fill_in_process(n: int) -> float:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", FILL, str(n)], capture_output=True, text=True, cwd=root, check=True
    )
    return float(out.stdout.strip())


def main() -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="nfsync-mem-") as d:
        tmp = Path(d)
        (tmp / "n").mkdir()
        (tmp / "c").mkdir()
        n_before, n_after, n_peak = measure_nfsyncd(tmp / "n")
        c = measure_conntrackd(tmp / "c")
    note = f"idle {n_before:.1f} MiB, peak {n_peak:.1f} MiB"
    results.append(Result("nfsyncd RSS, 100k flows cached (kernel events)", n_after, "MiB", note))
    if c is not None:
        c_before, c_after, c_peak = c
        results.append(
            Result(
                "conntrackd RSS, 100k flows cached (same run)",
                c_after,
                "MiB",
                f"idle {c_before:.1f} MiB, peak {c_peak:.1f} MiB",
            )
        )
        results.append(
            Result("RSS ratio nfsyncd / conntrackd, 100k", n_after / c_after, "x", "target <= 1.0")
        )
    results.append(
        Result(
            "RSS, 1M flows cached (synthetic events, in-process)",
            fill_in_process(1_000_000),
            "MiB",
            "the kernel here caps at 262144 flows",
        )
    )
    return results


if __name__ == "__main__":
    from bench._common import report

    report("memory", "memory", main())
