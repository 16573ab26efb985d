"""Netlink attributes (TLVs): a table-driven codec with paired encode/decode per type.

A :class:`Schema` lists, for one nesting level, which attribute number maps to which field
of a value type and with which :class:`Codec`.  Decoding walks the attributes once and
builds the value; encoding walks the schema and emits what the value has.  Both directions
come from one table, so they cannot drift apart, and every error names the attribute path
(``CTA_TUPLE_ORIG.CTA_TUPLE_PROTO.CTA_PROTO_SRC_PORT``) where it happened.

Unknown attribute numbers are skipped on decode: newer kernels add attributes
(``CTA_TIMESTAMP_EVENT`` appeared in 6.14) and an old daemon must not choke on them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = [
    "BE16",
    "BE32",
    "BE64",
    "NLA_F_NESTED",
    "NLA_TYPE_MASK",
    "U8",
    "Codec",
    "DecodeError",
    "Field",
    "Schema",
    "attr",
    "iter_attrs",
    "raw_bytes",
    "string",
]

NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = 0x3FFF

_HDR = struct.Struct("=HH")
_unpack_hdr = _HDR.unpack_from


class DecodeError(ValueError):
    """A message or attribute the codec cannot accept; ``path`` names the attribute."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason

    def within(self, outer: str) -> DecodeError:
        """The same error seen from the enclosing attribute (paths are built only on error,
        so the hot path never concatenates strings)."""
        return DecodeError(f"{outer}.{self.path}" if self.path else outer, self.reason)


def iter_attrs(buf: bytes, start: int, end: int, path: str = "") -> Iterator[tuple[int, int, int]]:
    """Yield ``(type, payload_start, payload_end)`` for each attribute in ``buf[start:end]``."""
    off = start
    while off < end:
        if end - off < 4:
            raise DecodeError(path, f"{end - off} trailing bytes, too short for an attribute")
        length, atype = _unpack_hdr(buf, off)
        if length < 4 or off + length > end:
            raise DecodeError(
                path,
                f"attribute type {atype & NLA_TYPE_MASK} claims length {length}, "
                f"{end - off} bytes left",
            )
        yield atype & NLA_TYPE_MASK, off + 4, off + length
        off += (length + 3) & ~3


def attr(atype: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    length = 4 + len(payload)
    return _HDR.pack(length, atype) + payload + b"\0" * (-length & 3)


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Codec(Generic[T]):
    """How one attribute's payload maps to a Python value, both ways."""

    name: str
    decode: Callable[[bytes, int, int], T]
    encode: Callable[[T], bytes]
    #: struct format of a fixed-size integer, or "bytes" for opaque bytes; lets the schema
    #: compiler inline the codec instead of calling it.
    fmt: str | None = None
    size: int | None = None
    #: for a codec whose payload is exactly one big-endian struct (one format letter per
    #: value) made into ``factory(*values)``: lets :mod:`._layout` unpack it with the rest
    #: of a message instead of calling ``decode``
    parts: tuple[str, Callable[..., Any]] | None = None


def _fixed(name: str, fmt: str) -> Codec[int]:
    st = struct.Struct(fmt)
    size = st.size
    unpack = st.unpack_from

    def decode(buf: bytes, start: int, end: int) -> int:
        if end - start != size:
            raise DecodeError("", f"expected {size} bytes ({name}), got {end - start}")
        value: int = unpack(buf, start)[0]
        return value

    def encode(value: int) -> bytes:
        try:
            return st.pack(value)
        except struct.error as exc:
            raise ValueError(f"{value!r} does not fit {name}") from exc

    return Codec(name, decode, encode, fmt=fmt, size=size)


U8 = _fixed("u8", "B")
BE16 = _fixed("be16", ">H")
BE32 = _fixed("be32", ">I")
BE64 = _fixed("be64", ">Q")


def raw_bytes(size: int | None = None) -> Codec[bytes]:
    """Opaque bytes, optionally of an exact size (addresses: 4 or 16)."""

    def decode(buf: bytes, start: int, end: int) -> bytes:
        if size is not None and end - start != size:
            raise DecodeError("", f"expected {size} bytes, got {end - start}")
        return bytes(buf[start:end])

    def encode(value: bytes) -> bytes:
        if size is not None and len(value) != size:
            raise ValueError(f"expected {size} bytes, got {len(value)}")
        return bytes(value)

    return Codec(f"bytes[{size}]" if size else "bytes", decode, encode, fmt="bytes", size=size)


def string(max_len: int) -> Codec[str]:
    """A NUL-terminated string as the kernel sends names (helper, expectfn)."""

    def decode(buf: bytes, start: int, end: int) -> str:
        raw = bytes(buf[start:end])
        nul = raw.find(b"\0")
        if nul < 0:
            raise DecodeError("", "string is not NUL-terminated")
        try:
            return raw[:nul].decode("ascii")
        except UnicodeDecodeError as exc:
            raise DecodeError("", f"string is not ASCII: {raw[:nul]!r}") from exc

    def encode(value: str) -> bytes:
        data = value.encode("ascii") + b"\0"
        if len(data) > max_len:
            raise ValueError(f"{value!r} is longer than {max_len - 1} characters")
        return data

    return Codec("string", decode, encode)


@dataclass(frozen=True, slots=True)
class Field:
    """One row of a schema table.

    ``field`` is the attribute of the value type it fills.  With ``inline`` the attribute is
    a nest whose fields belong to the *enclosing* value (the kernel nests a tuple's addresses
    in ``CTA_TUPLE_IP`` but we keep them flat on :class:`~nfsyncd.model.Tuple`).  ``when``
    picks between alternative encodings of one field (IPv4 or IPv6 attribute, TCP or SCTP
    protoinfo).  ``readonly`` fields are reported by the kernel but never sent to it.
    """

    atype: int
    name: str
    field: str
    codec: Codec[Any] | None = None
    schema: Schema | None = None
    inline: bool = False
    when: Callable[[Any], bool] | None = None
    readonly: bool = False


class Schema:
    """The attribute table of one nesting level and the value type it decodes to.

    ``factory`` builds the value from the decoded fields (called positionally, in the order
    of its ``_fields`` when it is a NamedTuple); ``None`` makes an inline-only schema whose
    fields are merged into the parent's.

    The table is compiled once, when first used, into two straight-line Python functions
    (see :mod:`._compile`): walking the table per message cost 18 µs per flow decode and
    25 µs per create encode, the compiled form a few µs, and both still come from the one
    table.
    """

    def __init__(
        self,
        name: str,
        fields: list[Field],
        factory: Callable[..., Any] | None = None,
        fast_decode: Callable[[bytes, int, int], Any] | None = None,
        fast_encode: Callable[[Any], bytes | None] | None = None,
    ) -> None:
        self.name = name
        self.fields = fields
        self.factory = factory
        #: optional shortcut for the kernel's canonical layout; returns None to fall back
        #: to the table (it must agree with it: see tests/unit/test_codec.py)
        self.fast_decode = fast_decode
        self.fast_encode = fast_encode
        #: decode through a :class:`~._layout.LayoutDecoder` (for schemas of whole
        #: messages that arrive by the hundred thousand in a few layouts: flow events)
        self.learn_layouts = False
        self._decode: Callable[[bytes, int, int], Any] | None = None
        self._encode: Callable[[Any], bytes] | None = None

    def decode(self, buf: bytes, start: int, end: int, path: str = "") -> Any:
        fn = self._decode
        if fn is None:
            fn = self._compile()[0]
        try:
            return fn(buf, start, end)
        except DecodeError as exc:
            if path:
                raise exc.within(path) from None
            raise

    def decoder(self) -> Callable[[bytes, int, int], Any]:
        """The compiled decode function itself, for hot loops that handle DecodeError."""
        return self._decode or self._compile()[0]

    def encode(self, value: Any, path: str = "") -> bytes:
        fn = self._encode
        if fn is None:
            fn = self._compile()[1]
        try:
            return fn(value)
        except (ValueError, TypeError) as exc:
            if isinstance(exc, DecodeError):
                raise
            where = f"{path}: " if path else ""
            raise ValueError(f"{where}{exc}") from None

    def _compile(self) -> tuple[Callable[[bytes, int, int], Any], Callable[[Any], bytes]]:
        from ._compile import compile_schema

        self._decode, self._encode = compile_schema(self)
        if self.learn_layouts:
            from ._layout import LayoutDecoder

            self._decode = LayoutDecoder(self, self._decode)
        return self._decode, self._encode
