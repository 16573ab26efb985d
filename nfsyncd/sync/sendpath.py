"""The sender's fast path: a kernel flow event straight to its cache key, record and sync
payload, in one generated function per kernel message layout.

Why: the sender spent most of a replicated flow's CPU in three general functions that
each look at the whole ``Flow`` again - the cache key (:func:`~nfsyncd._record.flow_key`),
the record (:func:`~nfsyncd._record.pack_canonical`, which canonicalises zero values and
compares the reply tuple with the original's inverse) and the payload
(:meth:`~nfsyncd.sync.wire.Encoder.flow`) - about 3 µs per flow on top of decoding it.  A
learned kernel layout (:class:`~nfsyncd.netlink._layout.Layout`) already has every value
of a message in local variables; for the shape of nearly every TCP flow the three
results are a few ``struct`` packs of those variables.

The generated function checks the values the shape depends on (TCP, a reply tuple that
is the plain inverse of the original - no NAT -, zero zone, secmark and synproxy) and
returns a :class:`~nfsyncd._prepared.Prepared` without building the ``Flow`` at all (its
``flow()`` decodes it when a consumer needs more), or the decoded ``Flow`` when a check
fails.  Only layouts whose fields the shape covers get this (no helper, labels, master,
sequence adjustment, ICMP or tuple zone; the event has a status, timeout, mark and
complete TCP protoinfo), and only for an encoder that writes the start of a TCP message
in one pack (no CommitTimeout, no TCP window tracking).  The payload's tail after that
start is taken from the encoder itself, for a flow of the layout with the checked
values, so the peer version's choices (synproxy and zone attributes) are the encoder's.
Each derived function is checked against the general path on the message its layout was
learned from.

tests/unit/test_sendpath.py compares the prepared artefacts with the general path's on
random flows of every shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from .._prepared import Prepared
from .._record import (
    BODY_OFFSET,
    COMMON_MASK,
    MARKED_MASK,
    NO_MARK,
    PORT_KEYS,
    TCP_BODY,
    TCP_BODY_MARKED,
    TCP_FULL_HDR,
    flow_key,
    pack_canonical,
    present_mask,
)
from ..kernel import flow_decoder
from ..model import IPPROTO_TCP, Flow, Synproxy, TcpInfo
from ..netlink._layout import Layout, LayoutDecoder, Path
from .attrs import TCP_HEADS, AttrEncoder

__all__ = ["SendPath", "prepare"]

_TUPLE: Final = ("src", "dst", "proto", "sport", "dport")
_TCP: Final[tuple[Path, ...]] = (
    ("protoinfo", "state"),
    ("protoinfo", "wscale_orig"),
    ("protoinfo", "wscale_reply"),
    ("protoinfo", "flags_orig", 0),
    ("protoinfo", "flags_orig", 1),
    ("protoinfo", "flags_reply", 0),
    ("protoinfo", "flags_reply", 1),
)
#: top-level fields of the shape: needed ones, ones that must be zero, and the kernel's own
#: (neither the record nor the payload has them)
_NEEDED: Final = frozenset({"orig", "reply", "status", "timeout", "mark", "protoinfo"})
_ZERO: Final = frozenset({"zone", "secmark", "synproxy"})
_KERNEL_OWNED: Final = frozenset(
    {"id", "use", "counters_orig", "counters_reply", "timestamp", "timestamp_event"}
)
_ZERO_SYNPROXY: Final = Synproxy(0, 0, 0)

Decode = Callable[[bytes, int], Flow | Prepared]


class SendPath:
    """Derives the fast path of each learned kernel flow layout for one encoder (one peer's
    wire choices); :meth:`decoder` is the flow decoder that uses them."""

    def __init__(self, encoder: AttrEncoder) -> None:
        self.encoder = encoder
        #: layouts that got a fast path; layouts whose fast path disagreed with the
        #: general path on the message it was learned from (a bug: they decode as before)
        self.prepared_layouts = 0
        self.mismatches = 0

    def decoder(self) -> LayoutDecoder:
        """A ctnetlink flow decoder that returns a ``Prepared`` where it can, else the
        ``Flow``."""
        return flow_decoder(self.derive)

    def derive(self, layout: Layout) -> Decode:
        """The decoder of ``layout``'s messages: the fast path, or the layout's own."""
        plain: Decode = layout.decode
        plan = self._plan(layout)
        if plan is None:
            return plain
        body, constants = plan
        fast: Decode = layout.function("_prepared", body, _decode=plain, **constants)
        if not self._agrees(fast, layout.sample):
            self.mismatches += 1
            return plain
        self.prepared_layouts += 1
        return fast

    # -- the plan ------------------------------------------------------------------------
    def _plan(self, layout: Layout) -> tuple[str, dict[str, Any]] | None:
        """The generated function's body for ``layout`` and the constants it uses, or None
        when the layout is not the shape."""
        enc = self.encoder
        if not enc.send_timeout or enc.tcp_window_tracking:
            return None  # the payload does not start with one TCP_HEADS pack
        if layout.kinds.get(()) is not Flow or layout.kinds.get(("protoinfo",)) is not TcpInfo:
            return None
        present = layout.present
        top = {path[0] for path in present}
        if not top >= _NEEDED or top - _NEEDED - _ZERO - _KERNEL_OWNED:
            return None
        paths = layout.paths
        tuples = {side: {p for p in present if p[0] == side and len(p) > 1} for side in _SIDES}
        for side, fields in tuples.items():
            if fields != {(side, name) for name in _TUPLE}:
                return None  # ICMP, or a zone inside the tuple
        needed: list[Path] = [(side, name) for side in _SIDES for name in _TUPLE]
        needed += [("status",), ("timeout",), ("mark",), *_TCP]
        # the values of the must-be-zero fields (the synproxy object's, not the object)
        zeros = sorted((p for p in present if p[0] in _ZERO and p not in layout.kinds), key=str)
        if any(p not in paths for p in (*needed, *zeros)):
            return None  # a value a codec function makes (not a plain unpacked one)
        size = _address_size(layout)
        if size not in TCP_HEADS:
            return None
        template = self._template(layout)
        head = TCP_HEADS[size]
        tail = self._tail(template, head)
        if tail is None:
            return None
        v = {p: paths[p] for p in needed}
        src, dst, proto, sport, dport = (v["orig", n] for n in _TUPLE)
        rsrc, rdst, rproto, rsport, rdport = (v["reply", n] for n in _TUPLE)
        status, timeout, mark = v["status",], v["timeout",], v["mark",]
        tcp = ", ".join(v[p] for p in _TCP)
        checks = [
            f"{proto} == {IPPROTO_TCP}",
            f"{rproto} == {proto}",
            f"{rsrc} == {dst}",
            f"{rdst} == {src}",
            f"{rsport} == {dport}",
            f"{rdport} == {sport}",
            *(f"not {paths[p]}" for p in zeros),
        ]
        state = v[_TCP[0]]
        first, pack_key = PORT_KEYS[size == 16]
        constants = {
            "_PRESENT": present_mask(template),
            "_Prepared": Prepared,
            "_new": tuple.__new__,
            "_key": pack_key,
            "_first": first,
            "_marked": TCP_BODY_MARKED.pack,
            "_unmarked": TCP_BODY.pack,
            "_MARKED": MARKED_MASK,
            "_COMMON": COMMON_MASK,
            "_NO_MARK": NO_MARK,
            "_TCP_HDR": TCP_FULL_HDR,
            "_head": head,
            "_tail": tail,
        }
        body = "\n".join(
            [
                f"if {' and '.join(checks)}:",
                f"    key = _key(_first, {src}, {dst}, {proto}, {sport}, {dport})",
                f"    if {mark}:",
                f"        body = _marked(_MARKED, {status}, {mark}, _TCP_HDR, {tcp})",
                "    else:",
                f"        body = _unmarked(_COMMON, {status}, _NO_MARK, _TCP_HDR, {tcp})",
                f"    payload = _head({src}, {dst}, {status}, {sport}, {dport}, "
                f"{state}, {timeout}, {mark}) + _tail",
                f"    return _new(_Prepared, (key, {timeout}, body, payload, _PRESENT, "
                f"{src}, {dst}, {state}, buf, start, _decode))",
                f"return {layout.build}",
            ]
        )
        return body, constants

    @staticmethod
    def _template(layout: Layout) -> Flow:
        """A flow of this layout that passes the checks (the learned one, made to)."""
        flow: Flow = layout.decode(layout.sample, 0)
        orig = flow.orig._replace(proto=IPPROTO_TCP)
        return flow._replace(
            orig=orig,
            reply=orig.inverted(),
            zone=None if flow.zone is None else 0,
            secmark=None if flow.secmark is None else 0,
            synproxy=None if flow.synproxy is None else _ZERO_SYNPROXY,
        )

    def _tail(self, flow: Flow, head: Callable[..., bytes]) -> bytes | None:
        """What the encoder writes after the TCP head for ``flow`` (its synproxy and zone
        attributes, as the peer version wants); None if it does not start with that head
        after all."""
        orig, info = flow.orig, flow.protoinfo
        assert flow.status is not None and flow.timeout is not None and flow.mark is not None
        assert isinstance(info, TcpInfo) and info.state is not None
        assert orig.sport is not None and orig.dport is not None
        args = (orig.sport, orig.dport, info.state, flow.timeout, flow.mark)
        start = head(orig.src, orig.dst, flow.status, *args)
        full = self.encoder.flow(flow)
        return full[len(start) :] if full.startswith(start) else None

    def _agrees(self, fast: Decode, sample: bytes) -> bool:
        """Whether ``fast`` makes of ``sample`` what the general path does."""
        got = fast(sample, 0)
        flow = got.flow() if isinstance(got, Prepared) else got
        if flow != flow_decoder().slow(sample, 0, len(sample)):
            return False
        return type(got) is not Prepared or got == prepare(flow, self.encoder, got)


def prepare(flow: Flow, encoder: AttrEncoder, source: Prepared) -> Prepared:
    """What the general path makes of ``flow`` in a ``Prepared``'s shape (the buffer,
    offset and decoder taken from ``source``): the reference the fast path must equal."""
    assert flow.timeout is not None and isinstance(flow.protoinfo, TcpInfo)
    assert flow.protoinfo.state is not None
    return Prepared(
        flow_key(flow.orig, flow.zone),
        flow.timeout,
        pack_canonical(flow, 0, 0)[BODY_OFFSET:],
        encoder.flow(flow),
        present_mask(flow),
        flow.orig.src,
        flow.orig.dst,
        flow.protoinfo.state,
        source.buf,
        source.start,
        source.decode,
    )


_SIDES: Final = ("orig", "reply")


def _address_size(layout: Layout) -> int:
    """The size of the layout's addresses (0 when its tuples do not agree)."""
    values = layout.unpack(layout.sample, 0)
    names = [layout.paths[(side, n)] for side in _SIDES for n in ("src", "dst")]
    sizes = {len(values[int(name[1:])]) for name in names}  # (the variables are v0, v1, ...)
    return sizes.pop() if len(sizes) == 1 else 0
