"""``make demo``: watch nfsyncd decode a real kernel's conntrack events, live.

Builds a throwaway two-namespace network (a client and a gateway joined by a veth pair on
198.18.0.0/24), subscribes to the gateway's conntrack events with nfsyncd's own netlink
layer, makes real ICMP, TCP and UDP traffic from the client, prints every event as it is
decoded, then flushes the gateway's table through nfsyncd (its own write, recognised by
the event's origin port) and removes everything it created.

Alongside, the real ``nfsyncd`` daemon runs in the gateway namespace; after the traffic
the demo shows its internal cache through ``nfsyncctl`` (the same lines conntrackd's ``-i``
prints), and after the flush shows it empty again, then stops it with SIGTERM.

The two-gateway failover demo replaces this once sync lands.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import trio

from ..kernel import Conntrack, Event, EventStream, Overrun
from ..model import EventKind, Expectation, Flow
from .netns import Netns, veth_pair

GATEWAY_ADDR = "198.18.0.1"
CLIENT_ADDR = "198.18.0.2"
TCP_PORT = 8080
UDP_PORT = 5353

# A tiny TCP echo + UDP echo server run inside the gateway namespace (stdlib only).
_SERVER = f"""
import socket, threading
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("{GATEWAY_ADDR}", {TCP_PORT})); s.listen()
    while True:
        c, _ = s.accept()
        with c:
            c.sendall(c.recv(1024).upper())
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("{GATEWAY_ADDR}", {UDP_PORT}))
    while True:
        data, peer = u.recvfrom(1024); u.sendto(data[::-1], peer)
threading.Thread(target=udp, daemon=True).start()
tcp()
"""

_GATEWAY_RULES = f"""
table inet nfsdemo {{
    chain input {{
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        ct state invalid drop
        iif lo accept
        icmp type echo-request accept
        tcp dport {TCP_PORT} ct state new accept
        udp dport {UDP_PORT} accept
    }}
}}
"""

_CLIENT = f"""
import socket, sys
for i in range(3):
    with socket.create_connection(("{GATEWAY_ADDR}", {TCP_PORT}), timeout=5) as c:
        c.sendall(b"hello nfsyncd %d" % i); print("  tcp reply:", c.recv(1024).decode())
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
u.sendto(b"query", ("{GATEWAY_ADDR}", {UDP_PORT})); print("  udp reply:", u.recv(1024).decode())
"""


def describe(event: Event, own_port: int) -> str:
    obj = event.obj
    what = "expect" if isinstance(obj, Expectation) else "flow"
    origin = "  (our own write)" if event.origin == own_port else ""
    return f"[{event.kind.name:<7}] {what}: {obj.describe()}{origin}"


async def _wait_port(ns: Netns, port: int, deadline: float) -> None:
    while True:
        r = await trio.run_process(
            ["ip", "netns", "exec", ns.name, "ss", "-Hltn", f"sport = :{port}"],
            capture_stdout=True,
            check=False,
        )
        if r.stdout.strip():
            return
        if trio.current_time() > deadline:
            raise RuntimeError(f"the demo server did not listen on port {port}")
        await trio.sleep(0.05)  # polling a condition with a deadline


def _ctl(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nfsyncd.ctl", "--socket", str(sock), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _ctl_status(sock: Path) -> dict[str, object]:
    res = _ctl(sock, "--json", "status")
    return json.loads(res.stdout) if res.returncode == 0 else {}


async def _until(pred: object, timeout: float) -> bool:
    with trio.move_on_after(timeout):
        while not pred():  # type: ignore[operator]
            await trio.sleep(0.05)
        return True
    return False


async def run(verbose: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="nfsyncd-demo-") as tmp:
        return await _run(verbose, Path(tmp))


async def _run(verbose: bool, tmp: Path) -> int:
    start = time.monotonic()
    counts: Counter[EventKind] = Counter()
    flows_seen: set[tuple[object, ...]] = set()
    print("==> creating two network namespaces (client, gateway) joined by a veth pair")
    with Netns.create("nfsdemo-gw") as gw, Netns.create("nfsdemo-cl") as client:
        veth_pair(gw, client, f"{GATEWAY_ADDR}/24", f"{CLIENT_ADDR}/24")
        print(f"    gateway {gw.name} = {GATEWAY_ADDR}, client {client.name} = {CLIENT_ADDR}")
        # The kernel tracks connections in a namespace only once a rule needs conntrack.
        gw.nft(_GATEWAY_RULES)
        print("    gateway ruleset: a stateful input chain (ct state), so conntrack is on")
        sock = tmp / "run" / "control.sock"
        config = tmp / "nfsyncd.toml"
        config.write_text(f'[general]\ncontrol_socket = "{sock}"\n[metrics]\nlisten = ""\n')
        log = (tmp / "nfsyncd.log").open("wb")
        daemon = gw.popen(
            sys.executable,
            "-m",
            "nfsyncd.daemon",
            "-C",
            str(config),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if not await _until(lambda: _ctl_status(sock).get("ready"), 20):
            print("!! nfsyncd did not become ready; its log:")
            print((tmp / "nfsyncd.log").read_text())
            return 1
        print(f"==> nfsyncd is running in the gateway (pid {daemon.pid}), control socket {sock}")
        with gw.entered():  # sockets stay in the namespace they were created in
            events = EventStream()
            conntrack = Conntrack()
        with events, conntrack:
            print(
                f"==> subscribed to the gateway's conntrack events (netlink port "
                f"{conntrack.port_id} is ours)\n"
            )

            async def show_events(done: trio.Event) -> None:
                while True:
                    batch = await events.next_batch()
                    if isinstance(batch, Overrun):
                        print("!! the kernel dropped events (ENOBUFS): a daemon would resync")
                        continue
                    for ev in batch:
                        counts[ev.kind] += 1
                        if isinstance(ev.obj, Flow):
                            flows_seen.add(tuple(ev.obj.orig))
                        stamp = f"+{time.monotonic() - start:6.3f}s"
                        print(f"  {stamp} {describe(ev, conntrack.port_id)}", flush=True)
                    if done.is_set() and not _pending(counts):
                        return

            done = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(show_events, done)
                server = gw.popen(sys.executable, "-c", _SERVER)
                await _wait_port(gw, TCP_PORT, trio.current_time() + 10)
                print("--- client: ping -c 2 the gateway")
                await trio.run_process(
                    [
                        "ip",
                        "netns",
                        "exec",
                        client.name,
                        "ping",
                        "-c",
                        "2",
                        "-i",
                        "0.2",
                        "-q",
                        GATEWAY_ADDR,
                    ],
                    stdout=None if verbose else subprocess.DEVNULL,
                )
                print("--- client: 3 TCP connections and a UDP request/response")
                await trio.run_process(
                    ["ip", "netns", "exec", client.name, sys.executable, "-c", _CLIENT]
                )
                before = len(await conntrack.dump())
                await _until(lambda: _ctl_status(sock).get("flows") == before, 5)
                print("--- the daemon's internal cache (nfsyncctl -i, as conntrackd -i prints):")
                for line in _ctl(sock, "-i").stdout.splitlines():
                    print(f"    {line}")
                print(
                    f"--- the gateway's table now holds {before} flows; flushing it through nfsyncd"
                )
                await conntrack.flush()
                done.set()
                with trio.move_on_after(5):
                    while _pending(counts):
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
            server.terminate()
        emptied = await _until(lambda: _ctl_status(sock).get("flows") == 0, 5)
        print(
            "==> the daemon saw the flush: its cache is "
            + ("empty" if emptied else f"still holding {_ctl_status(sock).get('flows')} flows")
        )
        daemon.terminate()
        code = daemon.wait(15)
        log.close()
        print(
            f"==> nfsyncd stopped on SIGTERM (exit status {code}); socket removed: "
            f"{not sock.exists()}"
        )
    print("\n==> summary")
    print(f"    events decoded: {dict((k.name, v) for k, v in sorted(counts.items()))}")
    print(f"    distinct flows seen: {len(flows_seen)}")
    print("    namespaces and processes removed")
    ok = counts[EventKind.NEW] and counts[EventKind.DESTROY] and emptied and code == 0
    return 0 if ok else 1


def _pending(counts: Counter[EventKind]) -> bool:
    """True until every flow we saw created was also seen destroyed (by the flush)."""
    return counts[EventKind.DESTROY] < counts[EventKind.NEW]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nfsyncd.lab.demo",
        description="Build a throwaway two-namespace network, make real traffic and print "
        "the gateway's conntrack events as nfsyncd decodes them. Needs root (or "
        "CAP_NET_ADMIN + CAP_SYS_ADMIN); touches nothing outside its own namespaces.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show ping's output")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(
            "error: the demo creates network namespaces and needs root (try: sudo make demo)",
            file=sys.stderr,
        )
        return 2
    return trio.run(run, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
