"""NOTRACK, the best-effort mode (reference §2.3, §10.6): changes go out once, nothing is
acknowledged or retransmitted; an ALIVE after 1 s without transmission tells the peer we
are here (and lets it count lost messages from the seq gaps)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from ._mode import CTL_ALIVE, CTL_RESYNC, SyncMode
from .attrs import Reason
from .wire import Message, SeqTracker

if TYPE_CHECKING:
    pass

__all__ = ["NotrackMode"]


class NotrackMode(SyncMode):
    name: ClassVar[str] = "notrack"

    def _setup(self) -> None:
        self.tracker = SeqTracker()

    def receive(self, msgs: Iterable[Message]) -> list[Message]:
        """Data messages in order; RESYNC asks for a bulk; ACK/NACK (an FTFW peer) are
        malformed here.  The peer's seq is always recorded, even when it went back (a
        restarted peer starts again at ``time()``)."""
        out: list[Message] = []
        tracker = self.tracker
        net = self.network
        now = self.clock()
        for m in msgs:
            self.last_receive = now
            self.msgs_recv += 1
            tracker.check(m.seq, net)
            tracker.update(m.seq)
            if m.type <= 5:
                out.append(m)
                continue
            flags = m.flags
            if flags & CTL_RESYNC:
                self.resyncs_recv += 1
                self.resync_wanted = True
            elif not flags & CTL_ALIVE:
                net.count(Reason.MALFORMED_HEADER)
        return out
