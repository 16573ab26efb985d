"""Layout-specialised decoders: a message shaped like one seen before decodes in one
``struct`` call.

Why: the kernel reports nearly every conntrack event of a gateway in one of a handful of
byte layouts (IPv4 TCP with protoinfo, IPv4 UDP, ...): the same attributes, in the same
order, with the same lengths.  Walking the attributes one by one is most of what a
compiled schema decoder costs (~4.5 µs per flow event); once a layout is known, all of its
values sit at fixed offsets.  So the first message of each layout is decoded by the schema
and also *learned*: a function is generated that unpacks every value at once and builds
the same objects the schema decoder builds.

A later message uses a learned layout only when every attribute header (length and type,
nested ones included) is byte-for-byte the one learned: the headers alone decide how the
schema decoder walks a message, so such a message would have been walked identically.
That check is one big-integer mask compare.  Values are not checked (any value decodes
the same way in both), except through the codecs that validate content (strings), which
are still called; if one of them objects, the schema decoder runs and reports the error
with its usual attribute path.  Layouts with a repeated attribute or a part the schema
cannot build are simply not learned.

A learned layout also says where each value sits (:attr:`Layout.paths`), so that a hot
consumer can have its own function generated per layout, which makes what it needs
straight from the values (``LayoutDecoder(derive=...)``; the sender's fast path in
:mod:`nfsyncd.sync.sendpath`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from itertools import count
from typing import TYPE_CHECKING, Any, Final

from ._attrs import NLA_TYPE_MASK, DecodeError

if TYPE_CHECKING:
    from ._attrs import Field, Schema

__all__ = ["Derive", "Layout", "LayoutDecoder", "Path"]

Decode = Callable[[bytes, int, int], Any]
#: where a value sits in the decoded object: field names from the top, then the index of
#: a value within a multi-value field (``("protoinfo", "flags_orig", 0)``)
Path = tuple[str | int, ...]

#: layouts kept per decoder; past it, new layouts are decoded by the schema only (a
#: stream of ever-new layouts must not turn into a stream of code generation)
MAX_LAYOUTS: Final = 64

_HDR = struct.Struct("=HH")
_FULL: Final = b"\xff" * 4


class _Unsupported(Exception):
    """The message has a shape a generated decoder does not handle."""


class _Learner:
    """Walks one message as the schema decoder does and records where everything is."""

    def __init__(self, buf: bytes, start: int, end: int) -> None:
        self.buf = buf
        self.base = start
        self.size = end - start
        self.mask = bytearray(self.size)
        self.codes: list[str] = []  # struct codes for the values, in offset order
        self.cursor = 0  # relative offset the struct has consumed up to
        self.values = count()
        self.ns: dict[str, Any] = {"_new": tuple.__new__}
        self.names = count()
        #: the unpacked value (its variable name) at each path
        self.paths: dict[Path, str] = {}
        #: every field the object will have a value for, nested ones included
        self.present: set[Path] = set()
        #: the factory of each nested object built (TcpInfo at ("protoinfo",))
        self.kinds: dict[Path, Any] = {}

    def constant(self, name: str, value: Any) -> str:
        key = f"{name}{next(self.names)}"
        self.ns[key] = value
        return key

    def _value(self, rel: int, code: str, size: int) -> str:
        if rel < self.cursor:
            raise _Unsupported("overlapping values")
        if rel > self.cursor:
            self.codes.append(f"{rel - self.cursor}x")
        self.codes.append(code)
        self.cursor = rel + size
        return f"v{next(self.values)}"

    def level(
        self, schema: Schema, start: int, end: int, exprs: dict[str, str], path: Path = ()
    ) -> None:
        """Fill ``exprs`` (field -> Python expression) from the attributes in [start, end)."""
        buf = self.buf
        first: dict[int, Field] = {}
        for row in schema.fields:
            first.setdefault(row.atype, row)
        seen: set[int] = set()
        off = start
        while off < end:
            if end - off < 4:
                raise _Unsupported("trailing bytes")
            ln, at = _HDR.unpack_from(buf, off)
            if ln < 4 or off + ln > end:
                raise _Unsupported("bad length")
            rel = off - self.base
            self.mask[rel : rel + 4] = _FULL
            at &= NLA_TYPE_MASK
            if at in seen:
                raise _Unsupported("repeated attribute")
            seen.add(at)
            found = first.get(at)
            if found is not None:
                self.field(found, off + 4, off + ln, exprs, path)
            off += (ln + 3) & -4

    def field(self, f: Field, ps: int, pe: int, exprs: dict[str, str], path: Path) -> None:
        if not f.inline and f.field in exprs:
            # two attributes for one field (TCP and SCTP protoinfo): the schema decoder
            # keeps the last, after decoding (and maybe rejecting) the first
            raise _Unsupported(f"{f.field} given twice")
        here = (*path, f.field)
        if f.schema is not None:
            if f.inline:
                self.level(f.schema, ps, pe, exprs, path)
            else:
                exprs[f.field] = self.build(f.schema, ps, pe, here)
                self.present.add(here)
            return
        self.present.add(here)
        codec = f.codec
        assert codec is not None
        rel, n = ps - self.base, pe - ps
        fmt = codec.fmt
        if fmt == "bytes":
            exprs[f.field] = self.paths[here] = self._value(rel, f"{n}s", n)
        elif fmt is not None and len(fmt) == 1 and struct.calcsize(fmt) == 1:
            exprs[f.field] = self.paths[here] = self._value(rel, fmt, 1)
        elif fmt is not None and len(fmt) == 2 and fmt[0] in ">!":
            exprs[f.field] = self.paths[here] = self._value(rel, fmt[1], struct.calcsize(fmt))
        elif codec.parts is not None and struct.calcsize(">" + codec.parts[0]) == n:
            codes, factory = codec.parts
            values = []
            at = rel
            for i, code in enumerate(codes):  # one letter per value; big-endian: no padding
                size = struct.calcsize(">" + code)
                values.append(self._value(at, code, size))
                self.paths[(*here, i)] = values[-1]
                at += size
            cls = self.constant("_cls", factory)
            exprs[f.field] = f"_new({cls}, ({', '.join(values)},))"
        elif fmt is None:
            # a codec that validates or converts: called as the schema decoder calls it
            dec = self.constant("_dec", codec.decode)
            exprs[f.field] = f"{dec}(buf, start + {rel}, start + {rel + n})"
        else:
            raise _Unsupported(f"codec format {fmt!r}")

    def build(self, schema: Schema, start: int, end: int, path: Path = ()) -> str:
        """The expression building ``schema``'s value from the attributes in [start, end)."""
        factory = schema.factory
        fields = getattr(factory, "_fields", None)
        if factory is None or fields is None:
            raise _Unsupported(f"{schema.name} has no NamedTuple factory")
        self.kinds[path] = factory
        exprs: dict[str, str] = {}
        self.level(schema, start, end, exprs, path)
        known = {f.field for f in _leaf_fields(schema)}
        defaults = getattr(factory, "_field_defaults", {})
        args = []
        for name in fields:
            if name in exprs:
                args.append(exprs[name])
            elif name in known:
                args.append("None")
            else:
                args.append(self.constant("_default", defaults.get(name)))
        cls = self.constant("_cls", factory)
        return f"_new({cls}, ({', '.join(args)},))"


def _leaf_fields(schema: Schema) -> list[Field]:
    """The fields of one value, with those of inline nests merged in."""
    out: list[Field] = []
    for f in schema.fields:
        if f.inline and f.schema is not None:
            out += _leaf_fields(f.schema)
        else:
            out.append(f)
    return out


class Layout:
    """One learned message layout: which messages it fits (``mask``/``expected``), the
    function that decodes them (``decode(buf, start)``), and what a derived decoder
    needs to generate its own: the ``unpack`` of every value at once (into the variables
    ``names``), the expression ``build`` that makes the object from them (with the
    constants in ``namespace``), the variable at each path (``paths``), every field the
    object has (``present``), the factory of each nested object (``kinds``), and the
    message it was learned from (``sample``)."""

    __slots__ = (
        "build",
        "decode",
        "expected",
        "kinds",
        "mask",
        "names",
        "namespace",
        "paths",
        "present",
        "sample",
        "unpack",
    )

    def __init__(self, learner: _Learner, build: str) -> None:
        self.sample = learner.buf
        self.mask = int.from_bytes(learner.mask, "big")
        self.expected = int.from_bytes(learner.buf, "big") & self.mask
        self.unpack: Callable[[bytes, int], tuple[Any, ...]] = struct.Struct(
            ">" + "".join(learner.codes)
        ).unpack_from
        self.names = tuple(f"v{i}" for i in range(next(learner.values)))
        self.build = build
        self.namespace = learner.ns
        self.paths = learner.paths
        self.present = frozenset(learner.present)
        self.kinds = learner.kinds
        self.decode: Callable[[bytes, int], Any] = self.function("_layout", f"return {build}")

    def function(self, name: str, body: str, **constants: Any) -> Callable[[bytes, int], Any]:
        """A generated ``name(buf, start)`` that unpacks every value into its variable and
        then runs ``body`` (indented lines; ``constants`` are added to its globals)."""
        lines = [f"def {name}(buf, start):"]
        if self.names:
            lines.append(f"    {', '.join(self.names)}, = _unpack(buf, start)")
        lines += [f"    {line}" for line in body.splitlines()]
        source = "\n".join(lines) + "\n"
        ns = {**self.namespace, **constants, "_unpack": self.unpack}
        exec(compile(source, f"<layout {name}>", "exec"), ns)
        fn: Callable[[bytes, int], Any] = ns[name]
        fn.__source__ = source  # type: ignore[attr-defined]
        return fn


#: what a derived decoder makes of a layout: the ``fn(buf, start)`` that decodes its messages
Derive = Callable[[Layout], Callable[[bytes, int], Any]]


def learn(schema: Schema, buf: bytes, start: int, end: int) -> Layout | None:
    """The layout of the message in ``buf[start:end]``, or None when it cannot be learned."""
    learner = _Learner(bytes(buf[start:end]), 0, end - start)
    try:
        build = learner.build(schema, 0, end - start)
    except _Unsupported:
        return None
    return Layout(learner, build)


class LayoutDecoder:
    """A schema decoder that learns message layouts (see the module doc); called like the
    schema decoder it wraps, and returns equal values.

    With ``derive``, a message of a learned layout decodes through the function
    ``derive`` made of the layout instead (which may return something else than the
    schema's value); messages of no learned layout still decode through the schema."""

    def __init__(
        self,
        schema: Schema,
        decode: Decode,
        max_layouts: int = MAX_LAYOUTS,
        *,
        derive: Derive | None = None,
    ) -> None:
        self.schema = schema
        self.slow = decode
        self.max_layouts = max_layouts
        self.derive = derive
        self._by_size: dict[int, list[Layout]] = {}
        self.learned = 0
        self.hits = 0

    def __call__(self, buf: bytes, start: int, end: int) -> Any:
        layout = self.match(buf, start, end)
        if layout is not None:
            try:
                obj = layout.decode(buf, start)
            except DecodeError:
                pass  # let the schema decoder say what is wrong, and where
            else:
                self.hits += 1
                return obj
        obj = self.slow(buf, start, end)
        if self.learned < self.max_layouts:
            self._learn(buf, start, end)
        return obj

    def match(self, buf: bytes, start: int, end: int) -> Layout | None:
        """The learned layout of the message in ``buf[start:end]``, if there is one."""
        layouts = self._by_size.get(end - start)
        if layouts is not None:
            value = int.from_bytes(buf[start:end], "big")
            for layout in layouts:
                if value & layout.mask == layout.expected:
                    return layout
        return None

    def _learn(self, buf: bytes, start: int, end: int) -> None:
        # a layout that cannot be learned uses up an attempt too, or each of its messages
        # would try again
        self.learned += 1
        layout = learn(self.schema, buf, start, end)
        if layout is not None:
            if self.derive is not None:
                layout.decode = self.derive(layout)
            self._by_size.setdefault(end - start, []).append(layout)
