"""ALARM, the periodic-refresh mode (reference §2.2, §10.7): no control messages at all;
instead every live object is sent again at a random moment within ``refresh_time``
seconds, so a lost message (or a peer that joins late) is repaired by the next refresh,
and the peer's external cache expires entries that stop being refreshed.

Refresh timers live in a heap of ``(due, n, key)`` with lazy invalidation: re-arming or
cancelling only touches the per-object table, stale heap entries are skipped when they
surface, and the heap is rebuilt when stale entries outnumber live ones.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from .._prepared import Prepared
from ._mode import Key, Obj, SyncMode
from .wire import Message

if TYPE_CHECKING:
    from ..cache import Change

__all__ = ["AlarmMode"]

_COMPACT_SLACK = 1024


class AlarmMode(SyncMode):
    name: ClassVar[str] = "alarm"
    uses_alive: ClassVar[bool] = False

    def _setup(self) -> None:
        config = self.config
        self.refresh_time = max(1, int(config.refresh_time))
        #: key -> (due, last known object, ever updated)
        self._timers: dict[Key, tuple[float, Obj, bool]] = {}
        self._heap: list[tuple[float, int, Key]] = []
        self._n = 0
        self._now = 0.0
        self._on_queue = self._arm
        self.refreshes = 0
        self.ignored = 0

    # .. refresh timers .....................................................................
    def refresh_delay(self) -> float:
        """1..refresh_time whole seconds plus 0.2-1.0 s of jitter (minus 1 µs), as conntrackd
        draws it: spreads refreshes of objects created together."""
        rng = self.rng
        return rng.randrange(self.refresh_time) + 1 + ((rng.randrange(5) + 1) * 0.2 - 1e-6)

    def _push(self, key: Key, obj: Obj, updated: bool) -> None:
        due = self._now + self.refresh_delay()
        self._timers[key] = (due, obj, updated)
        self._n += 1
        heapq.heappush(self._heap, (due, self._n, key))

    def _arm(self, key: Key, kind: int, obj: Obj) -> None:
        if kind == 2:  # DEL
            self._timers.pop(key, None)
            return
        # a NEW is a new object (refreshed as NEW); an UPDATE marks it updated
        self._push(key, obj, kind == 1)

    def queue(self, changes: Iterable[Change]) -> None:
        self._now = self.clock()
        super().queue(changes)
        if len(self._heap) > 2 * len(self._timers) + _COMPACT_SLACK:
            self._compact()

    def _compact(self) -> None:
        heap = [(due, 0, key) for key, (due, _, _) in self._timers.items()]
        self._heap = [(due, i, key) for i, (due, _, key) in enumerate(heap)]
        self._n = len(heap)
        heapq.heapify(self._heap)

    def _live_top(self) -> tuple[float, int, Key] | None:
        heap = self._heap
        timers = self._timers
        while heap:
            top = heap[0]
            st = timers.get(top[2])
            if st is not None and st[0] == top[0]:
                return top
            heapq.heappop(heap)
        return None

    def deadline(self) -> float | None:
        top = self._live_top()
        return None if top is None else top[0]

    def tick(self) -> None:
        """Queue every object whose refresh is due, in its current state (``lookup``: an
        object the cache no longer has is dropped), and re-arm its timer."""
        now = self._now = self.clock()
        heap = self._heap
        timers = self._timers
        tx = self._tx
        lookup = self.lookup
        while True:
            top = self._live_top()
            if top is None or top[0] > now:
                break
            heapq.heappop(heap)
            key = top[2]
            _, obj, updated = timers[key]
            current = obj if lookup is None else lookup(obj)
            if type(current) is Prepared:
                current = current.flow()
            if current is None:
                del timers[key]
                continue
            self._push(key, current, updated)
            if key not in tx:
                tx[key] = ((3 if key[0] == "exp" else 0) + (1 if updated else 0), current, None)
            self.refreshes += 1

    def forget(self) -> None:
        super().forget()
        self._timers.clear()
        self._heap.clear()

    # .. no control messages ................................................................
    def request_resync(self) -> bool:
        return False

    def _alive_fired(self) -> None:
        pass

    def receive(self, msgs: Iterable[Message]) -> list[Message]:
        """Data messages without flags; anything flagged (an FTFW peer's HELLO, its control
        messages) is ignored.  No sequence state is kept."""
        out: list[Message] = []
        now = self.clock()
        for m in msgs:
            self.last_receive = now
            self.msgs_recv += 1
            if m.flags or m.type > 5:
                self.ignored += 1
                continue
            out.append(m)
        return out

    def stats_dict(self) -> dict[str, int | float | bool | str]:
        d = super().stats_dict()
        d.update(refresh_timers=len(self._timers), refreshes=self.refreshes, ignored=self.ignored)
        return d
