"""What the three sync modes share: the coalescing tx queue, message output with sequence
numbers, the one-shot ALIVE timer and the counters.

A mode is a sans-IO state machine: the engine feeds it local changes (:meth:`queue`) and
decoded peer messages (:meth:`receive`), asks it for encoded messages (:meth:`output`) and
runs its timers (:meth:`deadline`, :meth:`tick`).  Time only comes from the injected
``clock``, so every timer can be driven by a fake clock in tests.

The hot path (100k changes/s) is :meth:`queue` + :meth:`output`: one dict operation per
change, one payload encoding and one header per message; subclasses plug in through a
per-change hook and a few per-batch hooks only.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeAlias

from .._prepared import Prepared
from .._record import flow_key
from ..model import Expectation, Flow
from .wire import SEQ_MASK, Encoder, Message, NetworkStats, SeqCounter

if TYPE_CHECKING:
    from .._config_types import SyncConfig
    from ..cache import Change

__all__ = [
    "ALIVE_INTERVAL",
    "CTL_ACK",
    "CTL_ALIVE",
    "CTL_NACK",
    "CTL_RESYNC",
    "Key",
    "Lookup",
    "Obj",
    "SyncMode",
    "object_key",
]

#: what a change is about (a flow may come as the sender's fast path prepared it)
Obj: TypeAlias = Flow | Expectation | Prepared
#: the caches' keys: a flow's :func:`~nfsyncd._record.flow_key` (``("ct", orig, zone)`` for a
#: flow that has none: it cannot be encoded either), ``("exp", tuple, zone or 0)`` for an
#: expectation
Key: TypeAlias = bytes | tuple[object, ...]
Lookup: TypeAlias = Callable[[Obj], Obj | None]
#: a tx entry: message type, the object, its payload when already built (else None)
TxEntry: TypeAlias = tuple[int, Obj | None, bytes | None]
#: a pending control message: its flag (ACK, NACK, RESYNC or ALIVE), from, to
Ctl: TypeAlias = tuple[int, int, int]

#: seconds without own transmission after which FTFW and NOTRACK send something
ALIVE_INTERVAL: Final = 1.0

CTL_RESYNC: Final = 0x02
CTL_NACK: Final = 0x04
CTL_ACK: Final = 0x08
CTL_ALIVE: Final = 0x10
HELLO: Final = 0x20
HELLO_BACK: Final = 0x40

_NEW, _UPD, _DEL = 0, 1, 2  # offsets of NEW/UPD/DEL within CT (0-2) and EXP (3-5) types
_pack_hdr = struct.Struct(">BBHI").pack
_pack_ack = struct.Struct(">BBHIII").pack
_CTL_BYTE0: Final = 0x10 | 10
#: what packing a flow's key may fail with (addresses of a bad size, values out of range)
_BAD_VALUE: Final = (ValueError, TypeError, OverflowError, struct.error)


def object_key(obj: Obj) -> Key:
    """The identity a change coalesces on (the same as the caches' keys)."""
    if isinstance(obj, Prepared):
        return obj.key
    if isinstance(obj, Flow):
        try:
            return flow_key(obj.orig, obj.zone)
        except _BAD_VALUE:
            return ("ct", obj.orig, obj.zone)
    return ("exp", obj.tuple, obj.zone or 0)


def control_bytes(kind: int, seq: int, flags: int, first: int, last: int) -> bytes:
    if kind == CTL_ALIVE:
        return _pack_hdr(_CTL_BYTE0, kind | flags, 8, seq)
    return _pack_ack(_CTL_BYTE0, kind | flags, 16, seq, first, last)


class SyncMode:
    """Base of the FTFW, ALARM and NOTRACK state machines (see the module doc).

    Attributes the engine reads: :attr:`network` (receive-side counters, shared with the
    channel's decoder when the engine passes one in), :attr:`resync_wanted` (the peer asked
    for a bulk send; the engine clears it after queueing every cached object),
    :attr:`last_receive` and :attr:`hello_done` (readiness).
    """

    name: ClassVar[str] = "base"
    #: whether an ALIVE timer runs (not in ALARM, which sends no control messages at all)
    uses_alive: ClassVar[bool] = True

    def __init__(
        self,
        config: SyncConfig,
        encoder: Encoder,
        *,
        clock: Callable[[], float],
        seq: SeqCounter | None = None,
        network: NetworkStats | None = None,
        rng: random.Random | None = None,
        lookup: Lookup | None = None,
    ) -> None:
        self.config = config
        self.encoder = encoder
        self.clock = clock
        self.seq = seq if seq is not None else SeqCounter()
        self.network = network if network is not None else NetworkStats()
        self.rng = rng if rng is not None else random.Random()
        self.lookup = lookup
        self.resync_wanted = False
        self.last_receive: float | None = None
        self.hello_done = True
        self._tx: dict[Key, TxEntry] = {}
        self._ctl: list[Ctl] = []
        self._alive_due: float | None = clock() + ALIVE_INTERVAL if self.uses_alive else None
        #: called for every queued change with its key, its kind as sent (0 NEW, 1 UPDATE,
        #: 2 DESTROY; before coalescing) and the object
        self._on_queue: Callable[[Key, int, Obj], None] | None = None
        #: sent copies of objects, by key, that a newer change of the object makes stale
        #: (FTFW's resend queue): dropped as the change is queued, without a call per change
        self._sent_copies: dict[Key, Any] | None = None
        self.msgs_sent = 0
        self.msgs_recv = 0
        self.acks_sent = 0
        self.nacks_sent = 0
        self.resyncs_sent = 0
        self.alives_sent = 0
        self.resyncs_recv = 0
        self._setup()

    def _setup(self) -> None:
        """A mode's own state, made once the shared state exists (so subclasses need not
        repeat the constructor's signature)."""

    # .. local changes ......................................................................
    def queue(self, changes: Iterable[Change]) -> None:
        """Local changes to replicate, coalesced per object: a change for an object already
        waiting replaces it (NEW + UPDATE stays NEW, anything + DESTROY is a DEL, DESTROY +
        NEW/UPDATE is a NEW again); the object keeps its place in the queue."""
        tx = self._tx
        hook = self._on_queue
        sent = self._sent_copies
        for kind, obj, cache_key in changes:
            if cache_key is not None:  # (a flow's change from the cache: it knows the key)
                key: Key = cache_key
                base = 0
            else:
                key = object_key(obj)
                base = 0 if isinstance(obj, Flow) else 3
            k = raw = kind - 1
            prev = tx.get(key)
            if prev is not None and k != _DEL and prev[0] - base != _UPD:
                k = _NEW
            # (a prepared flow brings its payload: encoded by this mode's encoder)
            tx[key] = (base + k, obj, obj[3] if isinstance(obj, Prepared) else None)
            if sent:
                sent.pop(key, None)
            if hook is not None:
                hook(key, raw, obj)

    def request_resync(self) -> bool:
        """Ask the peer for a full bulk send; False when the mode cannot (ALARM)."""
        self._ctl.append((CTL_RESYNC, 0, 0))
        return True

    def forget(self) -> None:
        """Drop everything waiting to be sent (a flush or restart of the local state)."""
        self._tx.clear()

    # .. peer messages ......................................................................
    def receive(self, msgs: Iterable[Message]) -> list[Message]:
        raise NotImplementedError

    # .. output .............................................................................
    def has_output(self) -> bool:
        return bool(self._tx or self._ctl)

    def output(self) -> list[bytes]:
        """Every message ready now, encoded, with consecutive sequence numbers: control
        messages first (they are small and time-critical), then data in queue order."""
        tx = self._tx
        ctl = self._ctl
        if not tx and not ctl:
            return []
        out: list[bytes] = []
        append = out.append
        first_flags, flags = self._out_flags()
        cur = first_flags
        counter = self.seq
        s = counter.next_seq
        if ctl:
            self._ctl = []
            sent_ctl = self._sent_ctl
            for kind, lo, hi in ctl:
                append(control_bytes(kind, s, cur, lo, hi))
                sent_ctl(kind, s, lo, hi)
                s = (s + 1) & SEQ_MASK
                cur = flags
        if tx:
            keep = self._keep()
            enc_flow = self.encoder.flow
            enc_exp = self.encoder.expect
            net = self.network
            for key, (mtype, obj, payload) in tx.items():
                try:
                    if payload is None:
                        payload = enc_flow(obj) if mtype < 3 else enc_exp(obj)  # type: ignore[arg-type]
                    append(_pack_hdr(0x10 | mtype, cur, 8 + len(payload), s) + payload)
                except (ValueError, struct.error):
                    net.send_malformed += 1
                    continue
                if keep is not None:
                    keep[key] = (s, mtype, payload, None)
                s = (s + 1) & SEQ_MASK
                cur = flags
            tx.clear()
        counter.next_seq = s
        if out:
            self.msgs_sent += len(out)
            if self.uses_alive:
                self._alive_due = self.clock() + ALIVE_INTERVAL
            self._after_output()
        return out

    # .. timers .............................................................................
    def deadline(self) -> float | None:
        return self._alive_due

    def tick(self) -> None:
        due = self._alive_due
        if due is not None and self.clock() >= due:
            # output() re-arms it; armed here too in case nothing is sent
            self._alive_due = self.clock() + ALIVE_INTERVAL
            self._alive_fired()

    # .. stats ..............................................................................
    def stats_dict(self) -> dict[str, int | float | bool | str]:
        net = self.network
        return {
            "mode": self.name,
            "tx_queue": len(self._tx) + len(self._ctl),
            "msgs_sent": self.msgs_sent,
            "msgs_recv": self.msgs_recv,
            "alives_sent": self.alives_sent,
            "resyncs_sent": self.resyncs_sent,
            "resyncs_recv": self.resyncs_recv,
            "send_malformed": net.send_malformed,
            "lost": net.lost,
            "before": net.before,
            "malformed": net.malformed,
            "resync_wanted": self.resync_wanted,
            "hello_done": self.hello_done,
        }

    # .. hooks ..............................................................................
    def _out_flags(self) -> tuple[int, int]:
        """Header flags of the first message of an output batch and of the others."""
        return 0, 0

    def _keep(self) -> dict[Key, tuple[int, int, bytes, Ctl | None]] | None:
        """Where sent data messages are kept for retransmission (FTFW's resend queue)."""
        return None

    def _sent_ctl(self, kind: int, seq: int, first: int, last: int) -> None:
        if kind == CTL_ACK:
            self.acks_sent += 1
        elif kind == CTL_NACK:
            self.nacks_sent += 1
        elif kind == CTL_RESYNC:
            self.resyncs_sent += 1
        else:
            self.alives_sent += 1

    def _after_output(self) -> None:
        pass

    def _alive_fired(self) -> None:
        self._ctl.append((CTL_ALIVE, 0, 0))
