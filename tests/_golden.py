"""Golden captures of ctnetlink messages: the file format, and helpers shared by the
capture tool (which writes them from the real kernel) and tests/unit/test_codec.py (which
checks that the codec decodes them to the recorded fields).

A capture named ``NAME`` is two files in ``tests/data/ctnetlink/``:

``NAME.bin``
    The raw netlink datagram bytes exactly as received (one datagram; it may hold several
    messages).
``NAME.json``
    ``{"messages": [{"kind": "flow" | "expect", "event": "NEW" | "UPDATE" | "DESTROY" | null,
    "fields": {...}}, ...]}``: one entry per ctnetlink message of the datagram, in order.
    Messages of other subsystems (``NLMSG_DONE``, ``NLMSG_ERROR``...) are not listed.
    ``event`` is null for replies to a request (dump or get: ``NLM_F_MULTI`` set or a
    non-zero sequence number), the event kind for multicast events. ``fields`` uses the
    model's field names in the form :func:`to_jsonable` gives: addresses as strings
    (``"198.18.0.1"``), nested tuples as objects, ``labels`` as hex, ``None`` as null. A
    field left out of ``fields`` is not checked; a field given as null must decode to None.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nfsyncd.model import EventKind, format_addr
from nfsyncd.netlink import ctnetlink as ct
from nfsyncd.netlink._socket import NLM_F_MULTI, Message, parse_messages

__all__ = [
    "CAPTURE_DIR",
    "captures",
    "decode_capture",
    "load_capture",
    "message_entry",
    "save_capture",
    "to_jsonable",
]

CAPTURE_DIR = Path(__file__).parent / "data" / "ctnetlink"

#: NamedTuple fields holding a packed address (everything else that is bytes goes to hex)
ADDRESS_FIELDS = frozenset({"src", "dst"})


def to_jsonable(obj: Any) -> Any:
    """``obj`` (a Flow, Expectation, Tuple or any part of them) as plain JSON values.

    NamedTuples become dicts keyed by field name (``None`` fields kept as null), ``src``/
    ``dst`` addresses become their text form, other bytes (``labels``) become hex, enums
    their name.
    """
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, EventKind):
        return obj.name
    if isinstance(obj, int):
        return int(obj)  # IntFlag/IntEnum members as plain numbers
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj).hex()
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        out = {}
        for name, value in zip(obj._fields, obj, strict=True):
            if name in ADDRESS_FIELDS and isinstance(value, bytes | bytearray | memoryview):
                out[name] = format_addr(bytes(value))
            else:
                out[name] = to_jsonable(value)
        return out
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    raise TypeError(f"cannot express {type(obj).__name__} as JSON: {obj!r}")


def message_entry(msg: Message) -> dict[str, Any] | None:
    """The sidecar entry for one received message, or None when it is not ctnetlink."""
    subsys = ct.subsystem(msg)
    if subsys == ct.NFNL_SUBSYS_CTNETLINK:
        kind, obj = "flow", ct.decode_flow(msg.data, msg.offset, msg.end)
    elif subsys == ct.NFNL_SUBSYS_CTNETLINK_EXP:
        kind, obj = "expect", ct.decode_expect(msg.data, msg.offset, msg.end)
    else:
        return None
    is_reply = bool(msg.flags & NLM_F_MULTI) or msg.seq != 0
    event = None if is_reply else ct.event_kind(msg.type, msg.flags).name
    return {"kind": kind, "event": event, "fields": to_jsonable(obj)}


def decode_capture(data: bytes) -> dict[str, Any]:
    """The sidecar document for a raw datagram (what the capture tool writes)."""
    entries = (message_entry(m) for m in parse_messages(data))
    return {"messages": [e for e in entries if e is not None]}


def save_capture(stem: Path, data: bytes) -> None:
    """Write ``stem.bin`` and its ``stem.json`` sidecar (decoded by the current codec: check
    the sidecar by eye, against ``conntrack -L``/``-E`` output, before committing it)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".bin").write_bytes(data)
    text = json.dumps(decode_capture(data), indent=2, sort_keys=True)
    stem.with_suffix(".json").write_text(text + "\n")


def load_capture(path: Path | str) -> tuple[bytes, dict[str, Any]]:
    """The raw bytes and the parsed sidecar of a capture (``path``: NAME.bin, NAME.json or
    NAME)."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".bin", ".json") else path
    data = stem.with_suffix(".bin").read_bytes()
    sidecar = stem.with_suffix(".json")
    if not sidecar.exists():
        raise FileNotFoundError(f"{stem.with_suffix('.bin')} has no sidecar {sidecar.name}")
    expected = json.loads(sidecar.read_text())
    if not isinstance(expected, dict) or not isinstance(expected.get("messages"), list):
        raise ValueError(f'{sidecar}: expected {{"messages": [...]}}')
    return data, expected


def captures(directory: Path = CAPTURE_DIR) -> list[Path]:
    """Every ``*.bin`` capture in ``directory`` (none when it does not exist yet)."""
    return sorted(directory.glob("*.bin")) if directory.is_dir() else []
