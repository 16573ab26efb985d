"""FTFW, the reliable mode (reference §2.1, §10.5): windowed ACKs, NACK on a gap,
retransmission from a resend queue, and the HELLO handshake that resets sequence state
across restarts.

Every sent data message and every sent ACK/NACK/RESYNC is kept in the resend queue
(``rs``, ordered by seq) until the peer ACKs it; a NACK moves the range back to the tx
queue, to go out again with new seqs.  Lost control messages are recovered the same way,
which is what makes a one-shot NACK enough: when it is lost, the peer's next message
reveals the gap and our NACK comes back.  An object lives in at most one of tx and rs, so
a stale copy is never resent after a newer one.

One deliberate refinement over conntrackd: only the first HELLO of a peer session (the
peer's seq does not continue what we saw, or we had heard from an earlier incarnation)
bypasses sequence tracking and empties the resend queue.  The further HELLO-flagged
messages of the same session (a peer sets HELLO on everything until our HELLO_BACK
arrives) are tracked and NACKed like any others, so a lossy start loses nothing.

A second one: a message still unacknowledged :data:`RESEND_AFTER` seconds after it was sent
goes out again by itself (as if NACKed; the wire is unchanged, a conntrackd peer sees an
ordinary retransmission).  NACK-driven recovery alone can stall for good under heavy loss:
what was lost before the first message a peer session accepted (it bypasses sequence
tracking) is never NACKed, nor is a NACK whose loss the peer noticed only after the first
HELLO it accepted; those entries would sit in the resend queue forever while the peer
misses the flows.  The timer only runs while the peer is heard from, so a dead link does
not turn the resend queue into a send storm.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from itertools import islice
from operator import itemgetter
from typing import TYPE_CHECKING, ClassVar, Final

from ._mode import (
    CTL_ACK,
    CTL_ALIVE,
    CTL_NACK,
    CTL_RESYNC,
    HELLO,
    HELLO_BACK,
    Ctl,
    Key,
    SyncMode,
)
from .attrs import Reason
from .wire import SEQ_MASK, Message, MsgType, SeqTracker, SeqVerdict

if TYPE_CHECKING:
    pass

__all__ = ["RESEND_AFTER", "FtfwMode"]

#: seconds a sent message may wait for its ACK before it is resent without a NACK: well
#: above the peer's ACK delay (every W messages, or its 1 s ALIVE/ACK timer) and a busy
#: peer's pauses, since a spurious resend costs a whole unacked window of traffic
RESEND_AFTER: Final = 5.0

_IN_SYNC = SeqVerdict.IN_SYNC
_AFTER = SeqVerdict.AFTER
_BEFORE = SeqVerdict.BEFORE
_HELLOS: Final = HELLO | HELLO_BACK
#: message types up to this one carry data (flows, expectations), the rest are control
_LAST_DATA_TYPE: Final = int(MsgType.EXP_DEL)

_TYPE_OF: Final = itemgetter(0)
_FLAGS_OF: Final = itemgetter(1)
_SEQ_OF: Final = itemgetter(2)

#: resend-queue entry: seq, message type, payload (data) or b"", the control message or None
RsEntry = tuple[int, int, bytes, Ctl | None]


def _in_range(seq: int, first: int, last: int) -> bool:
    return ((seq - first) & SEQ_MASK) <= ((last - first) & SEQ_MASK)


def _after(a: int, b: int) -> bool:
    return a != b and ((a - b) & SEQ_MASK) <= 0x7FFF_FFFF


class FtfwMode(SyncMode):
    name: ClassVar[str] = "ftfw"

    def _setup(self) -> None:
        config = self.config
        self.hello_done = False
        self.window_size = max(1, config.ack_window_size)
        self.rs_limit = max(1, config.resend_queue_size)
        self.tracker = SeqTracker()
        self._rs: OrderedDict[Key, RsEntry] = OrderedDict()
        self._window = self.window_size
        self._range_start: int | None = None
        self._hello_back = False  # set HELLO_BACK on the next message we send
        self._peer_hello = False  # the peer's last message carried HELLO
        self._sent_copies = self._rs  # an object changed: its copy awaiting an ACK is stale
        self.resend_after = RESEND_AFTER
        #: (time sent, last seq of that output batch), oldest first, for the resend timer
        self._sent_marks: deque[tuple[float, int]] = deque()
        self.rs_dropped = 0
        self.acks_recv = 0
        self.nacks_recv = 0
        self.resent = 0
        self.timer_resent = 0
        self.hellos = 0
        self.hello_msgs_recv = 0

    # .. sending ............................................................................
    def _out_flags(self) -> tuple[int, int]:
        rest = 0 if self.hello_done else HELLO
        return (rest | HELLO_BACK if self._hello_back else rest), rest

    def _keep(self) -> OrderedDict[Key, RsEntry]:
        return self._rs

    def _sent_ctl(self, kind: int, seq: int, first: int, last: int) -> None:
        super()._sent_ctl(kind, seq, first, last)
        if kind != CTL_ALIVE:
            self._rs[("ctl", seq)] = (seq, 10, b"", (kind, first, last))

    def _after_output(self) -> None:
        self._hello_back = False
        rs = self._rs
        extra = len(rs) - self.rs_limit
        if extra > 0:
            pop = rs.popitem
            for _ in range(extra):
                pop(last=False)
            self.rs_dropped += extra
        if rs:
            self._sent_marks.append((self.clock(), (self.seq.next_seq - 1) & SEQ_MASK))

    def _alive_fired(self) -> None:
        start = self._range_start
        last = self.tracker.last
        if start is not None and last is not None:
            self._ctl.append((CTL_ACK, start, last))
            self._range_start = None
            self._window = self.window_size
        else:
            self._ctl.append((CTL_ALIVE, 0, 0))

    def forget(self) -> None:
        super().forget()
        self._rs.clear()
        self._sent_marks.clear()

    # .. the resend timer ...................................................................
    def _resend_due(self) -> float | None:
        """When the oldest unacknowledged message is due for a resend (None: nothing waits)."""
        rs = self._rs
        marks = self._sent_marks
        if not rs:
            marks.clear()
            return None
        front = next(iter(rs.values()))[0]
        while marks and _after(front, marks[0][1]):  # that batch is acked (or resent) already
            marks.popleft()
        return marks[0][0] + self.resend_after if marks else None

    def deadline(self) -> float | None:
        alive = super().deadline()
        due = self._resend_due()
        if due is None:
            return alive
        return due if alive is None else min(alive, due)

    def tick(self) -> None:
        super().tick()
        due = self._resend_due()
        now = self.clock()
        if due is None or now < due:
            return
        marks = self._sent_marks
        cutoff = marks[0][1]
        while marks and marks[0][0] + self.resend_after <= now:
            cutoff = marks.popleft()[1]
        last = self.last_receive
        if last is None or now - last >= self.resend_after:
            # a silent peer: look again later rather than resend into the void
            marks.appendleft((now, cutoff))
            return
        front = next(iter(self._rs.values()))[0]
        self.timer_resent += self._resend(front, cutoff)

    # .. receiving ..........................................................................
    def receive(self, msgs: Iterable[Message]) -> list[Message]:
        """Track the peer's seqs (ACK every W messages, NACK gaps), act on its control
        messages, and return its data messages in order, except old or duplicate ones."""
        if type(msgs) is list:
            run = self._next_run(msgs)
            if run is not None:
                return run
        out: list[Message] = []
        tracker = self.tracker
        net = self.network
        now = self.clock()
        ctl = self._ctl
        for m in msgs:
            self.last_receive = now
            self.msgs_recv += 1
            seq = m.seq
            flags = m.flags
            counted = False
            if not flags & _HELLOS:
                self._peer_hello = False
                last = tracker.last
                # the next message in order, nearly every one, without the tracker's call
                if last is not None and seq == (last + 1) & SEQ_MASK:
                    verdict = _IN_SYNC
                else:
                    verdict = tracker.check(seq, net)
            else:
                if flags & HELLO_BACK:
                    self.hello_done = True
                if flags & HELLO:
                    self.hello_msgs_recv += 1
                    self._hello_back = True
                    verdict = tracker.check(seq)
                    if self._peer_hello and (verdict is _IN_SYNC or verdict is _AFTER):
                        verdict = tracker.check(seq, net)  # same session: count its gap
                    else:
                        # a peer session starts: accept whatever its seq, and what was sent
                        # to an earlier incarnation of the peer will never be ACKed
                        self.hellos += 1
                        if tracker.last is not None:
                            self._rs.clear()
                        start = self._range_start
                        if start is not None and _after(start, seq):
                            self._window = self.window_size - 1
                            self._range_start = seq
                            counted = True
                        verdict = _IN_SYNC
                    self._peer_hello = True
                else:
                    self._peer_hello = False
                    verdict = tracker.check(seq, net)
            if verdict is _BEFORE:
                continue
            if m.type <= _LAST_DATA_TYPE:
                out.append(m)  # (what _digest does with data, without the call)
            else:
                self._digest(m, out)
            if verdict is _AFTER:
                expected = (tracker.last + 1) & SEQ_MASK  # type: ignore[operator]
                if self._range_start is not None:
                    ctl.append((CTL_ACK, self._range_start, (expected - 1) & SEQ_MASK))
                ctl.append((CTL_NACK, expected, (seq - 1) & SEQ_MASK))
                self._range_start = seq
                self._window = self.window_size - 1
            else:
                if self._range_start is None:
                    self._range_start = seq
                if not counted:
                    self._window -= 1
                if self._window <= 0:
                    ctl.append((CTL_ACK, self._range_start, seq))
                    self._window = self.window_size
                    self._range_start = None
            tracker.last = seq  # (SeqTracker.update, inline)
        if self._hello_back and not ctl and not self._tx:
            ctl.append((CTL_ALIVE, 0, 0))  # carries HELLO_BACK promptly
        return out

    def _next_run(self, msgs: list[Message]) -> list[Message] | None:
        """:meth:`receive` for a batch that is only the peer's next data messages, in
        order and without flags (a burst's: nearly every batch), or None for any other.

        Why: the loop's per-message work (~0.25 µs) is then the same for every message;
        here its checks are three over the whole batch, and the ACKs its window would
        send are computed at once."""
        tracker = self.tracker
        last = tracker.last
        window = self._window
        n = len(msgs)
        if last is None or not n or window < 1 or self._hello_back:
            return None
        first = (last + 1) & SEQ_MASK
        end = first + n
        if end > SEQ_MASK + 1:  # the numbers wrap in this batch: the loop
            return None
        if any(map(_FLAGS_OF, msgs)) or max(map(_TYPE_OF, msgs)) > _LAST_DATA_TYPE:
            return None
        if list(map(_SEQ_OF, msgs)) != list(range(first, end)):
            return None
        self.last_receive = self.clock()
        self.msgs_recv += n
        self._peer_hello = False
        start = self._range_start
        ctl = self._ctl
        done = 0
        while n - done >= window:  # the window closes on message done + window - 1
            opened = first + done if start is None else start
            done += window
            ctl.append((CTL_ACK, opened, first + done - 1))
            window, start = self.window_size, None
        if done < n:
            if start is None:
                start = first + done
            window -= n - done
        self._window, self._range_start = window, start
        tracker.last = end - 1
        return list(msgs)

    def _digest(self, m: Message, out: list[Message]) -> None:
        if m.type <= _LAST_DATA_TYPE:
            out.append(m)
            return
        flags = m.flags
        if flags & CTL_ACK:
            self.acks_recv += 1
            self._ack(m.from_seq, m.to_seq)
        if flags & CTL_NACK:
            self.nacks_recv += 1
            self._nack(m.from_seq, m.to_seq)
        if flags & CTL_RESYNC:
            self.resyncs_recv += 1
            self.resync_wanted = True

    def _range(self, first: int, last: int) -> list[Key]:
        """Keys of the rs entries with seq in [first, last] (rs is ordered by seq)."""
        keys: list[Key] = []
        for key, entry in self._rs.items():
            s = entry[0]
            if _in_range(s, first, last):
                keys.append(key)
            elif _after(s, last):
                break
        return keys

    def _ack(self, first: int, last: int) -> None:
        if _after(first, last):
            self.network.count(Reason.MALFORMED_HEADER)
            return
        rs = self._rs
        # Usually the range is the front of the queue (ACKs come in order): count the
        # leading entries in it and drop them, without collecting their keys.
        span = (last - first) & SEQ_MASK
        n = self._leading(first, last, span)
        if n == len(rs):
            rs.clear()
        elif n > len(rs) // 2:  # rebuilt in place (one C loop over what stays)
            rest = list(islice(rs.items(), n, None))
            rs.clear()
            rs.update(rest)
        else:
            pop = rs.popitem
            for _ in range(n):
                pop(last=False)
        if rs and not _after(next(iter(rs.values()))[0], last):
            for key in self._range(first, last):  # older entries were left in front
                del rs[key]

    def _leading(self, first: int, last: int, span: int) -> int:
        """How many entries at the front of rs have seqs in [first, last].

        The queue is ordered by seq, each seq at most once: when its front is ``first``
        and its entry ``span`` places on is ``last``, the ``span + 1`` entries up to there
        are exactly the range (found by one C-level skip instead of a Python loop over
        them); otherwise (gaps: stale copies dropped, ALIVEs not kept) they are counted."""
        rs = self._rs
        values = rs.values()
        front = next(iter(values), None)
        if front is not None and front[0] == first:
            end = next(islice(values, span, None), None)
            if end is not None and end[0] == last:
                return span + 1
        n = 0
        for entry in values:
            if (entry[0] - first) & SEQ_MASK > span:
                break
            n += 1
        return n

    def _nack(self, first: int, last: int) -> None:
        if _after(first, last):
            self.network.count(Reason.MALFORMED_HEADER)
            return
        self.resent += self._resend(first, last)

    def _resend(self, first: int, last: int) -> int:
        """Move the rs entries with seq in [first, last] back to the queues; how many."""
        rs = self._rs
        tx = self._tx
        keys = self._range(first, last)
        for key in keys:
            _, mtype, payload, ctl = rs.pop(key)
            if ctl is not None:
                self._ctl.append(ctl)
            else:
                tx[key] = (mtype, None, payload)
        return len(keys)

    # .. stats ..............................................................................
    def stats_dict(self) -> dict[str, int | float | bool | str]:
        d = super().stats_dict()
        d.update(
            rs_queue=len(self._rs),
            rs_dropped=self.rs_dropped,
            acks_sent=self.acks_sent,
            acks_recv=self.acks_recv,
            nacks_sent=self.nacks_sent,
            nacks_recv=self.nacks_recv,
            resent=self.resent,
            timer_resent=self.timer_resent,
            hellos=self.hellos,
            hello_msgs_recv=self.hello_msgs_recv,
        )
        return d
