"""A fake clock and a fake wire for the sync-mode tests: two modes talk through real
encoding (the modes' own output) and the real datagram decoder, with deterministic loss."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from nfsyncd._config_types import SyncConfig
from nfsyncd.cache import Change
from nfsyncd.model import IPPROTO_TCP, EventKind, Expectation, Flow, Status, TcpInfo, Tuple
from nfsyncd.sync import (
    Encoder,
    Message,
    NetworkStats,
    SeqCounter,
    decode_datagram,
    decode_message,
    pack_datagrams,
)
from nfsyncd.sync.modes import SyncMode, make_mode, object_key

Obj = Flow | Expectation


class Clock:
    """Monotonic seconds that only move when the test says so."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def config(mode: str, **kw: object) -> SyncConfig:
    return SyncConfig(mode=mode, links=(), **kw)  # type: ignore[arg-type]


def flow(i: int, *, mark: int | None = None, timeout: int = 300, zone: int | None = None) -> Flow:
    """A distinct TCP flow per ``i`` (198.18.0.0/15 addresses)."""
    src = bytes((198, 18, (i >> 8) & 0xFF, i & 0xFF))
    dst = bytes((198, 19, (i >> 16) & 0xFF, 1))
    orig = Tuple(src, dst, IPPROTO_TCP, 1024 + (i % 60000), 80)
    return Flow(
        orig,
        orig.inverted(),
        status=0x0E,
        timeout=timeout,
        mark=mark,
        zone=zone,
        protoinfo=TcpInfo(state=3),
    )


def established_tcp(src: bytes, dst: bytes, sport: int, *, timeout: int) -> Flow:
    """An established, assured TCP flow ``src:sport -> dst:80`` (``_replace`` the rest)."""
    return Flow(
        Tuple(src, dst, IPPROTO_TCP, sport, 80),
        status=int(Status.SEEN_REPLY | Status.ASSURED),
        timeout=timeout,
        protoinfo=TcpInfo(state=3),
    )


def decode(msgs: Iterable[bytes]) -> list[Message]:
    """Each encoded message on its own (no batching, no loss)."""
    return [decode_message(m) for m in msgs]


def over_the_wire(mtype: int, obj: Obj, seq: int = 1) -> Message:
    """``obj`` as a peer sends it and we decode it (the real encoder and decoder)."""
    enc = Encoder()
    if isinstance(obj, Flow):
        data = enc.flow_message(int(mtype), obj, seq)
    else:
        data = enc.expect_message(int(mtype), obj, seq)
    [msg] = decode_datagram(data, NetworkStats())
    assert msg.obj is not None
    return msg


def round_trip(obj: Obj) -> Obj:
    """What the peer decodes for ``obj`` (the wire rebuilds the reply tuple, etc.)."""
    decoded = over_the_wire(0 if isinstance(obj, Flow) else 3, obj).obj
    assert decoded is not None
    return decoded


def apply(state: dict[object, Obj], msgs: Iterable[Message]) -> None:
    """The receiving side's cache: NEW/UPD upsert, DEL remove."""
    for m in msgs:
        assert m.obj is not None
        key = object_key(m.obj)
        if m.type in (2, 5):
            state.pop(key, None)
        else:
            state[key] = m.obj


def apply_changes(state: dict[object, Obj], changes: Iterable[Change]) -> None:
    for ch in changes:
        key = object_key(ch.obj)
        if ch.kind is EventKind.DESTROY:
            state.pop(key, None)
        else:
            state[key] = ch.obj


@dataclass
class Link:
    """One direction of the wire: batches messages into datagrams and drops a fraction of
    them (deterministically, from ``seed``)."""

    loss: float = 0.0
    seed: int = 0
    max_size: int = 1472
    datagrams: list[bytes] = field(default_factory=list)
    stats: NetworkStats = field(default_factory=NetworkStats)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def carry(self, msgs: list[bytes]) -> list[Message]:
        out: list[Message] = []
        for dgram in pack_datagrams(msgs, self.max_size):
            self.datagrams.append(dgram)
            if self.loss and self.rng.random() < self.loss:
                continue
            out.extend(decode_datagram(dgram, self.stats))
        assert self.stats.malformed == 0, self.stats
        return out


class Pair:
    """Two modes, A and B, joined by two links; B applies what A replicates (and the other
    way round) into plain dicts."""

    def __init__(
        self,
        mode: str,
        *,
        loss: float = 0.0,
        seed: int = 0,
        max_size: int = 1472,
        a_seq: int = 1_000,
        b_seq: int = 500_000,
        **kw: object,
    ) -> None:
        self.clock = Clock()
        cfg = config(mode, **kw)
        self.a: SyncMode = make_mode(
            cfg, Encoder(), clock=self.clock, seq=SeqCounter(a_seq), rng=random.Random(seed)
        )
        self.b: SyncMode = make_mode(
            cfg, Encoder(), clock=self.clock, seq=SeqCounter(b_seq), rng=random.Random(seed + 1)
        )
        self.ab = Link(loss, seed * 2 + 1, max_size)
        self.ba = Link(loss, seed * 2 + 2, max_size)
        self.at_b: dict[object, Obj] = {}
        self.at_a: dict[object, Obj] = {}
        self.sent_a: list[list[Message]] = []
        self.sent_b: list[list[Message]] = []

    def exchange(self) -> None:
        """A sends what it has, B takes it in and answers, A takes the answer in."""
        out = self.a.output()
        self.sent_a.append(decode(out))
        apply(self.at_b, self.b.receive(self.ab.carry(out)))
        out = self.b.output()
        self.sent_b.append(decode(out))
        apply(self.at_a, self.a.receive(self.ba.carry(out)))

    def run(self, seconds: float, step: float = 0.1) -> None:
        """Let fake time pass: both run their due timers, then exchange."""
        end = self.clock.t + seconds
        while self.clock.t < end:
            self.clock.advance(step)
            for node in (self.a, self.b):
                due = node.deadline()
                if due is not None and due <= self.clock.t:
                    node.tick()
            self.exchange()

    def handshake(self, limit: float = 60.0) -> None:
        """Run until both sides completed HELLO (FTFW)."""
        end = self.clock.t + limit
        while not (self.a.hello_done and self.b.hello_done):
            assert self.clock.t < end, "no HELLO handshake"
            self.run(0.5)
