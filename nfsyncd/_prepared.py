"""A kernel flow event as the sender's fast path leaves it: made straight from the
message's bytes into what the internal cache stores and the sync link sends, without
building the ``Flow``.

Why a type of its own: the kernel event stream yields it in place of a ``Flow``
(:class:`nfsyncd.kernel.Event`), the filter, the record codec, the internal cache and the
sync modes take it where they take a flow, and none of them should import another's
internals for that.  :mod:`nfsyncd.sync.sendpath` makes it; :meth:`Prepared.flow` decodes
the flow itself for whoever needs more (the cache's general path, an ALARM refresh).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .model import Flow

__all__ = ["Prepared"]


class Prepared(NamedTuple):
    """A TCP flow event without NAT, zone or synproxy state, each artefact byte-equal to
    what the general path makes of the decoded flow: ``key`` is its
    :func:`~nfsyncd._record.flow_key`, ``timeout`` and ``body`` its record
    (:func:`~nfsyncd._record.pack_canonical` from ``BODY_OFFSET`` on, whatever the entry
    flags and date), ``payload`` its sync message payload
    (:meth:`nfsyncd.sync.wire.Encoder.flow`).  ``present`` has the record field bits
    (``F_*``) of the fields the event has a value for (what :func:`~nfsyncd._record.covers`
    asks), ``src``, ``dst`` and ``state`` are what the filter looks at (the reply source
    is ``dst``: no NAT).  The flow is ``decode(buf, start)``."""

    key: bytes
    timeout: int
    body: bytes
    payload: bytes
    present: int
    src: bytes
    dst: bytes
    state: int
    buf: bytes
    start: int
    decode: Callable[[bytes, int], Flow]

    def flow(self) -> Flow:
        """The event's flow, decoded as the schema decoder would."""
        return self.decode(self.buf, self.start)
