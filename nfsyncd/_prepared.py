"""What the sender's fast path makes of a kernel flow event, straight from its bytes.

Why a type of its own: the kernel module carries it (:attr:`nfsyncd.kernel.Event.prep`),
the internal cache stores from it and the sync modes send its payload, and none of them
should import another's internals for it.  :mod:`nfsyncd.sync.sendpath` makes it.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Prepared"]


class Prepared(NamedTuple):
    """A flow event's artefacts, each byte-equal to what the general path makes of the
    decoded flow: ``key`` is its :func:`~nfsyncd._record.flow_key`, ``timeout`` and
    ``body`` its record (:func:`~nfsyncd._record.pack_canonical` from ``BODY_OFFSET``,
    whatever the entry flags and date), ``payload`` its sync message payload
    (:meth:`nfsyncd.sync.wire.Encoder.flow`)."""

    key: bytes
    timeout: int
    body: bytes
    payload: bytes
