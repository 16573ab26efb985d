"""Where a replicated flow's CPU goes, stage by stage, on real kernel events.

The sync benchmark (bench/sync.py) gives each daemon's CPU per replicated flow; this one
splits it.  In a throwaway namespace it creates N flows through ctnetlink and then sets
the mark of each (an update storm), keeping the raw event datagrams the kernel sent.  Then,
in this process and with the daemon's GC settings, it replays them through the sender's
stages in batches of 100 events (as the daemon reads them): the event decoder (with the
sender's fast path, as the daemon has it: most events come out with key, record and
payload made), the internal cache, the FTFW mode's queue and output, datagram packing; and the
datagrams that produced through the receiver's: wire decoding, the FTFW mode, the external
cache.  The socket calls around them are measured too: one netlink ``recv`` per event and
the UDP sends of the datagrams over a veth pair to a second namespace, as on the lab's
sync link (each read's datagrams as the channel sends them: runs of one size in one
segmented call), kernel time included (CPU time of a loop of each).

    .venv/bin/python -m bench.pipeline [N]     (as root)

µs per flow; numbers are reported, never asserted.
"""

from __future__ import annotations

import gc
import socket
import time

import trio

from nfsyncd._config_types import SyncConfig
from nfsyncd.cache import InternalCache
from nfsyncd.daemon import tune_gc
from nfsyncd.external import ExternalCache
from nfsyncd.kernel import FLOW_EVENT_GROUPS, Conntrack, EventStream
from nfsyncd.lab import Netns
from nfsyncd.lab.netns import veth_pair
from nfsyncd.netlink import NetlinkSocket
from nfsyncd.netlink import ctnetlink as ct
from nfsyncd.sync import Encoder, NetworkStats, decode_datagram, pack_datagrams
from nfsyncd.sync.modes import make_mode
from nfsyncd.sync.segment import runs, send_run
from nfsyncd.sync.sendpath import SendPath

from ._common import Result, count_arg, cpu_seconds, report, synthetic_flows

BATCH = 100  # events per read, the daemon's event_batch_limit
PAYLOAD = 1472  # UDP payload of a 1500-byte link
PEER_VERSION = (1, 4, 7)


async def _drain(nl: NetlinkSocket) -> list[bytes]:
    """Every datagram queued on ``nl`` until it stays quiet for 0.3 s."""
    out: list[bytes] = []
    while True:
        with trio.move_on_after(0.3):
            got = await nl.recv_datagrams(1000)
            assert isinstance(got, list), "the capture socket overran"
            out += got
            continue
        return out


async def capture(ns: Netns, n: int) -> tuple[list[bytes], list[bytes], float]:
    """The NEW and then the UPDATE event datagrams of ``n`` flows, and the CPU seconds per
    ``recv`` of the NEW ones (kernel time included)."""
    with ns.entered():
        nl = NetlinkSocket(groups=FLOW_EVENT_GROUPS, rcvbuf=1 << 30)
        conntrack = Conntrack()
    with nl, conntrack:
        flows = list(synthetic_flows(n))
        assert not any(await conntrack.create_many(flows))
        before = cpu_seconds()
        new = await _drain(nl)
        recv_s = (cpu_seconds() - before) / max(len(new), 1)
        updates = [ct.flow_update(f._replace(mark=7, protoinfo=None)) for f in flows]
        assert not any(await conntrack.write_many(updates))
        update = await _drain(nl)
        await conntrack.flush()
    return new, update, recv_s


class _Laps:
    """Seconds per stage, accumulated: ``start()``, then ``lap(name)`` after each stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = 0.0

    def start(self) -> None:
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._t
        self._t = now


class Pair:
    """A sender and a receiver wired back to back (FTFW: the receiver's ACKs go back to
    the sender and release its resend queue, as on a link)."""

    def __init__(self) -> None:
        config = SyncConfig(mode="ftfw", links=())
        encoder = Encoder(PEER_VERSION)
        self.tx = make_mode(config, encoder, clock=time.monotonic)
        self.rx = make_mode(config, Encoder(PEER_VERSION), clock=time.monotonic)
        self.stream = EventStream(
            nl=NetlinkSocket(sock=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)),
            prepare=SendPath(encoder).derive,  # as the daemon's sync engine has it
        )
        self.cache = InternalCache(limit=1 << 22)
        self.external = ExternalCache(limit=1 << 22)
        self.net = NetworkStats()
        #: the sync datagrams the sender made, one list per read of events
        self.wire: list[list[bytes]] = []

    def replay(self, datagrams: list[bytes], sender: _Laps, receiver: _Laps) -> None:
        """Kernel event datagrams through both sides, a read of BATCH events at a time."""
        tx, rx, net = self.tx, self.rx, self.net
        for i in range(0, len(datagrams), BATCH):
            sender.start()
            events = self.stream.decode_datagrams(datagrams[i : i + BATCH], [])
            sender.lap("decode events")
            changes = self.cache.apply_events(events)
            sender.lap("internal cache")
            tx.queue(changes)
            sender.lap("sync queue")
            msgs = tx.output()
            sender.lap("encode (mode output)")
            wire = pack_datagrams(msgs, PAYLOAD)
            sender.lap("pack datagrams")
            self.wire.append(wire)
            for d in wire:
                receiver.start()
                got = decode_datagram(d, net)
                receiver.lap("decode wire")
                data = rx.receive(got)
                receiver.lap("ftfw receive")
                self.external.apply(data)
                receiver.lap("external cache")
            if rx.has_output():
                acks = [
                    m for d in pack_datagrams(rx.output(), PAYLOAD) for m in decode_datagram(d, net)
                ]
                sender.start()
                tx.receive(acks)
                sender.lap("ftfw acks")


def udp_send_seconds(wire: list[list[bytes]], a: Netns, b: Netns) -> float:
    """CPU seconds per datagram to send these datagrams from ``a`` to ``b`` over a veth
    pair, as on the lab's sync link, to a socket that drains them (the veth hands each
    datagram to ``b``'s stack in the sender's context, so that is counted too): each read's
    datagrams as the UDP channel sends them, runs of one size in one segmented call."""
    veth_pair(a, b, "198.18.0.1/30", "198.18.0.2/30", "sync0")
    with a.entered():
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with b.entered():
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with tx, rx:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
        rx.bind(("198.18.0.2", 3780))
        rx.setblocking(False)
        tx.bind(("198.18.0.1", 0))
        spent = 0.0
        dest = ("198.18.0.2", 3780)
        for i in range(0, len(wire), 10):
            t0 = cpu_seconds()
            for run in (run for batch in wire[i : i + 10] for run in runs(batch)):
                if len(run) == 1:
                    tx.sendto(run[0], dest)
                else:
                    send_run(tx, run, dest)
            spent += cpu_seconds() - t0
            while True:
                try:
                    rx.recv(2048)
                except BlockingIOError:
                    break
    return spent / max(sum(map(len, wire)), 1)


def main(n: int = 100_000) -> list[Result]:
    with Netns.create("nfsbench") as ns:
        new, update, recv_s = trio.run(capture, ns, n)
        tune_gc()  # as the daemon does once started
        try:
            pair = Pair()
            create_tx, create_rx, update_tx, update_rx = _Laps(), _Laps(), _Laps(), _Laps()
            pair.replay(new, create_tx, create_rx)
            create_wire = list(pair.wire)
            pair.replay(update, update_tx, update_rx)
        finally:
            gc.unfreeze()
        with Netns.create("nfsbench") as peer:
            send_s = udp_send_seconds(create_wire, ns, peer)
    flows_per_datagram = len(new) / max(sum(map(len, create_wire)), 1)
    results = [Result("netlink recv per event (kernel included)", recv_s * 1e6, "µs")]
    for title, stages, count in (
        ("sender, NEW", create_tx, len(new)),
        ("receiver, NEW", create_rx, len(new)),
        ("sender, UPDATE (mark)", update_tx, len(update)),
        ("receiver, UPDATE (mark)", update_rx, len(update)),
    ):
        for name, seconds in stages.seconds.items():
            results.append(Result(f"{title}: {name}", seconds / count * 1e6, "µs"))
        total = sum(stages.seconds.values())
        results.append(Result(f"{title}: in-process total", total / count * 1e6, "µs"))
    results.append(
        Result(
            "UDP send per flow (kernel included)",
            send_s / flows_per_datagram * 1e6,
            "µs",
            f"{send_s * 1e6:.1f} µs per datagram of {flows_per_datagram:.1f} flows",
        )
    )
    return results


if __name__ == "__main__":
    report("pipeline", "sync hot path, stage by stage (µs per flow)", main(count_arg()))
