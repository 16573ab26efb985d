"""NOTRACK without an internal cache (``sync.disable_internal_cache``): keep nothing.

Every event the filter accepts becomes a change for the peer at once, and a resync (the
startup dump, an overrun, a bulk request) offers every dumped entry as NEW.  It saves the
cache's memory on a node that only ever sends; the price is conntrackd's: no deletions are
derived from a dump (entries that vanished during an overrun stay on the peer until their
own DESTROY or a flush there), and ``dump internal`` lists the kernel table instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ._prepared import Prepared
from .cache import Change, InternalCache, Origin
from .kernel import Event
from .model import EventKind, Expectation, Flow

__all__ = ["BypassCache"]

_NEW = EventKind.NEW
_NOT_ME = Origin.NOT_ME


class BypassCache(InternalCache):
    """An :class:`InternalCache` that forwards instead of storing."""

    bypass = True

    def apply_events(self, events: Iterable[Event]) -> list[Change]:
        changes: list[Change] = []
        origins = self.origins
        filt = self.filter
        flow_filter = filt.accepts_flow if filt.filters_flows else None
        st = self._flow_stats
        for kind, obj, port in events:
            if port and origins.get(port, _NOT_ME) != _NOT_ME:
                continue  # our own commits, flushes and injections are never sent back
            if type(obj) is Flow or type(obj) is Prepared:
                if flow_filter is not None and not flow_filter(obj):
                    st.filtered += 1
                    continue
            elif isinstance(obj, Expectation) and not (
                self.expectations and filt.accepts_expect(obj)
            ):
                self._exp_stats.filtered += 1
                continue
            changes.append(Change(kind, obj, obj.key if isinstance(obj, Prepared) else None))
        return changes

    def reconcile_flows(self, dump: Iterable[Flow]) -> list[Change]:
        filt = self.filter
        if not filt.filters_flows:
            return [Change(_NEW, flow) for flow in dump]
        return [Change(_NEW, flow) for flow in dump if filt.accepts_flow(flow)]

    def reconcile_expects(self, dump: Iterable[Expectation]) -> list[Change]:
        accepts = self.filter.accepts_expect
        return [Change(_NEW, exp) for exp in dump if accepts(exp)]

    def flows(self, *, from_peer: bool | None = None) -> Iterator[tuple[Flow, int]]:
        return iter(())

    def expects(self, *, from_peer: bool | None = None) -> Iterator[tuple[Expectation, int]]:
        return iter(())
