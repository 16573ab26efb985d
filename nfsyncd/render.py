"""How flows and expectations look to people and scripts.

The daemon sends cache entries over the control socket as JSON objects (``flow_json``,
``expect_json``); ``nfsyncctl`` prints them either as they are (``--json``) or as the
one-line text conntrackd's ``-i``/``-e`` prints (``flow_line``, ``expect_line``), so scripts
that parse conntrackd's output keep working.  The text is built from the JSON form, not from
the model, because that is what the client has; this module therefore imports nothing heavy
(``nfsyncctl`` must start fast).
"""

from __future__ import annotations

from typing import Any

from .model import (
    PROTO_NAMES,
    TCP_STATE_NAMES,
    Expectation,
    Flow,
    SctpInfo,
    Status,
    TcpInfo,
    Tuple,
    format_addr,
)

__all__ = ["expect_json", "expect_line", "flow_json", "flow_line", "tuple_json"]

JsonDict = dict[str, Any]

SCTP_STATE_NAMES = {
    0: "NONE",
    1: "CLOSED",
    2: "COOKIE_WAIT",
    3: "COOKIE_ECHOED",
    4: "ESTABLISHED",
    5: "SHUTDOWN_SENT",
    6: "SHUTDOWN_RECD",
    7: "SHUTDOWN_ACK_SENT",
    8: "HEARTBEAT_SENT",
}


def tuple_json(t: Tuple) -> JsonDict:
    out: JsonDict = {"src": format_addr(t.src), "dst": format_addr(t.dst)}
    if t.sport is not None:
        out["sport"] = t.sport
    if t.dport is not None:
        out["dport"] = t.dport
    if t.icmp_type is not None:
        out["type"] = t.icmp_type
        out["code"] = t.icmp_code
        out["id"] = t.icmp_id
    if t.zone is not None:
        out["zone"] = t.zone
    return out


def flow_json(flow: Flow, active_since: float | None = None) -> JsonDict:
    """A flow as a JSON object; ``active_since`` is how many seconds the cache has held it."""
    proto = flow.orig.proto
    out: JsonDict = {
        "family": "ipv4" if len(flow.orig.src) == 4 else "ipv6",
        "proto": PROTO_NAMES.get(proto, "unknown"),
        "protonum": proto,
        "orig": tuple_json(flow.orig),
        "reply": tuple_json(flow.reply) if flow.reply is not None else None,
    }
    state = _state_name(flow)
    if state is not None:
        out["state"] = state
    status = flow.status or 0
    out["status"] = [s.name for s in Status if status & s]
    out["timeout"] = flow.timeout
    out["mark"] = flow.mark or 0
    out["zone"] = flow.zone
    out["helper"] = flow.helper
    out["labels"] = flow.labels.hex() if flow.labels else None
    if flow.master is not None:
        out["master"] = tuple_json(flow.master)
    if active_since is not None:
        out["active_since"] = round(active_since, 3)
    return out


def expect_json(exp: Expectation, active_since: float | None = None) -> JsonDict:
    out: JsonDict = {
        "family": "ipv4" if len(exp.tuple.src) == 4 else "ipv6",
        "proto": PROTO_NAMES.get(exp.tuple.proto, "unknown"),
        "protonum": exp.tuple.proto,
        "tuple": tuple_json(exp.tuple),
        "mask": tuple_json(exp.mask),
        "master": tuple_json(exp.master),
        "timeout": exp.timeout,
        "helper": exp.helper,
        "zone": exp.zone,
        "class": exp.klass,
        "flags": exp.flags,
    }
    if active_since is not None:
        out["active_since"] = round(active_since, 3)
    return out


def _state_name(flow: Flow) -> str | None:
    info = flow.protoinfo
    if isinstance(info, TcpInfo) and info.state is not None:
        return TCP_STATE_NAMES.get(info.state, str(info.state))
    if isinstance(info, SctpInfo) and info.state is not None:
        return SCTP_STATE_NAMES.get(info.state, str(info.state))
    return None


def _tuple_text(t: JsonDict, prefix: str = "") -> list[str]:
    parts = [f"{prefix}src={t['src']}", f"{prefix}dst={t['dst']}"]
    if "sport" in t:
        parts += [f"sport={t['sport']}", f"dport={t['dport']}"]
    if "type" in t:
        parts += [f"type={t['type']}", f"code={t['code']}", f"id={t['id']}"]
    return parts


def _since(d: JsonDict) -> list[str]:
    since = d.get("active_since")
    return [] if since is None else [f"[active since {int(since)}s]"]


def flow_line(d: JsonDict) -> str:
    """conntrackd's ``-i`` line: ``tcp      6 ESTABLISHED src=... [ASSURED] mark=0 ...``."""
    parts = [f"{d['proto']:<8} {d['protonum']}"]
    if d.get("state"):
        parts.append(d["state"])
    parts += _tuple_text(d["orig"])
    status = set(d.get("status") or ())
    if "SEEN_REPLY" not in status:
        parts.append("[UNREPLIED]")
    if d.get("reply") is not None:
        parts += _tuple_text(d["reply"])
    if "ASSURED" in status:
        parts.append("[ASSURED]")
    parts.append(f"mark={d.get('mark') or 0}")
    if d.get("zone"):
        parts.append(f"zone={d['zone']}")
    if d.get("labels"):
        parts.append(f"labels=0x{d['labels']}")
    if d.get("helper"):
        parts.append(f"helper={d['helper']}")
    return " ".join(parts + _since(d))


def expect_line(d: JsonDict) -> str:
    """conntrackd's ``-i expect`` line: tuple, mask, master, class and helper."""
    parts = [f"proto={d['protonum']}"]
    parts += _tuple_text(d["tuple"])
    mask = d["mask"]
    parts += [f"mask-src={mask['src']}", f"mask-dst={mask['dst']}"]
    parts += _tuple_text(mask)[2:]
    parts += _tuple_text(d["master"], "master-")
    if d.get("class") is not None:
        parts.append(f"class={d['class']}")
    if d.get("helper"):
        parts.append(f"helper={d['helper']}")
    return " ".join(parts + _since(d))
