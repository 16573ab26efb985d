"""Whole sync datagrams of lazy flows: a datagram shaped like one decoded before is checked
with one mask compare and cut into its messages without looking at each.

Why: during a burst the peer sends full datagrams of flows of one layout (each message
the same size, with the same attribute headers: :class:`~.attrs.LazyLayout`), and the
receiver spent ~0.8 µs per message deciding, message by message, what the previous
message's decision had been (framing checks, the layout's mask compare, the protocol).
All of that depends only on bytes that are the same in every such datagram: each
message's version, type, flags and length, its attribute headers and its protocol.  Once
a datagram has been decoded message by message and every message came out a lazy flow of
the same layout, its shape (length, those bytes, and where each message's sequence number
and payload sit) is remembered; a later datagram whose bytes under the shape's mask are
the same decodes, by construction, to the same kind of messages, each the
:class:`~.attrs.LazyFlow` of its payload with its own sequence number.  Nothing else
changes: the sync modes and the caches see the same messages.

Shapes are learnt from datagrams without HELLO flags (the steady state), a bounded number
per process, like the layouts themselves.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from .attrs import LazyFlow, LazyLayout, _Layouts

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["MAX_SHAPES", "DatagramShapes"]

#: shapes remembered per process: a burst needs one per layout (full datagrams) plus one
#: per short last datagram; past this, datagrams of a new shape are decoded one by one
MAX_SHAPES: Final = 256

_HDR: Final = struct.Struct(">BBHI")
_HDR_SIZE: Final = 8
_new: Final = tuple.__new__


class _Shape(NamedTuple):
    mask: int
    expected: int
    #: the datagram -> every message's sequence number
    seqs: Callable[[bytes], tuple[int, ...]]
    type: int
    layout: LazyLayout
    #: (start, end) of each message's payload
    spans: tuple[tuple[int, int], ...]


class DatagramShapes:
    """The shapes learnt for one table of wire layouts; ``message`` is the message type
    to build (:class:`~.wire.Message`, whose module uses this one)."""

    __slots__ = ("_layouts", "_message", "by_size", "count", "limit")

    def __init__(self, layouts: _Layouts, message: type[Any], limit: int = MAX_SHAPES) -> None:
        self._layouts = layouts
        self._message = message
        self.limit = limit
        self.by_size: dict[int, list[_Shape]] = {}
        self.count = 0

    def decode(self, buf: bytes) -> list[Any] | None:
        """The messages of ``buf`` when it has a learnt shape, else None."""
        shapes = self.by_size.get(len(buf))
        if shapes is None:
            return None
        value = int.from_bytes(buf, "big")
        for shape in shapes:
            if value & shape.mask == shape.expected:
                message, mtype, layout = self._message, shape.type, shape.layout
                return [
                    _new(message, (mtype, 0, seq, _new(LazyFlow, (buf[a:b], layout)), 0, 0, ()))
                    for seq, (a, b) in zip(shape.seqs(buf), shape.spans, strict=True)
                ]
        return None

    def learn(self, buf: bytes, msgs: Sequence[Any]) -> None:
        """Remember the shape of ``buf``, just decoded message by message into ``msgs``,
        if every message is a lazy flow of one layout, type and size, without flags."""
        if self.count >= self.limit or not msgs:
            return
        first = msgs[0]
        body = first.body
        if type(body) is not LazyFlow or first.flags:
            return
        size, rest = divmod(len(buf), len(msgs))
        if rest or size <= _HDR_SIZE:
            return
        b0 = buf[0]
        for i, msg in enumerate(msgs):
            # every byte accounted for: message i is at i * size, none was dropped
            if _HDR.unpack_from(buf, i * size) != (b0, 0, size, msg.seq):
                return
            if type(msg.body) is not LazyFlow or msg.body.layout is not body.layout:
                return
        found = self._layouts.lazy_mask(buf[_HDR_SIZE:size])
        if found is None or found[1] is not body.layout:
            return
        payload_mask, layout = found
        one = 0xFFFFFFFF << 8 * (size - 4) | payload_mask  # version/type, flags, length
        mask = 0
        for _ in msgs:
            mask = mask << 8 * size | one
        expected = int.from_bytes(buf, "big") & mask
        shapes = self.by_size.setdefault(len(buf), [])
        if any(s.mask == mask and s.expected == expected for s in shapes):
            return
        seqs = struct.Struct(">" + f"4xI{size - _HDR_SIZE}x" * len(msgs)).unpack_from
        spans = tuple((i * size + _HDR_SIZE, (i + 1) * size) for i in range(len(msgs)))
        shapes.append(_Shape(mask, expected, seqs, first.type, layout, spans))
        self.count += 1
