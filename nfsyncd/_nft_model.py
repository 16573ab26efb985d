"""The generated nftables table as plain data, and its two renderings.

One model, two renderers: ``to_json`` gives the libnftables JSON commands that are applied,
``to_text`` the nft syntax ``nfsyncctl nft show`` prints. Both walk the same objects, so they
cannot say different things. The model only knows the handful of expressions the generator
uses, each written in the canonical form ``nft list`` prints back (no implied ``meta
l4proto`` before a ``tcp dport``, no ``meta nfproto`` next to an ``ip daddr``, a one-element
set as a plain value, ``ct state`` values and ``ct event`` names in kernel bit order), so a
listing of the applied table compares equal to the model without guessing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Final, Literal

from ._config_types import CT_EVENT_NAMES as CT_EVENTS

__all__ = [
    "CT_EVENTS",
    "Accept",
    "Chain",
    "Ct",
    "CtEventSet",
    "CtHelper",
    "CtHelperSet",
    "Match",
    "Meta",
    "Notrack",
    "Payload",
    "Quoted",
    "Rule",
    "Statement",
    "Table",
    "Value",
    "to_json",
    "to_text",
]

JsonDict = dict[str, Any]

# nft's parser reads these as keywords; quoted they are event names again.
_EVENT_KEYWORDS: Final = frozenset({"helper", "mark", "secmark"})
_PRIORITY_NAMES: Final = {-300: "raw", -150: "mangle", -100: "dstnat", 0: "filter"}


@dataclass(frozen=True, slots=True)
class Quoted:
    """A string nft must see in double quotes (an interface name, a pattern like "veth*")."""

    text: str


Value = (
    int
    | str
    | Quoted
    | tuple[int, int]
    | ipaddress.IPv4Address
    | ipaddress.IPv6Address
    | ipaddress.IPv4Network
    | ipaddress.IPv6Network
)
"""int, symbol (``"ipv4"``, ``"new"``), quoted string, port range, address or network."""


@dataclass(frozen=True, slots=True)
class Meta:
    key: Literal["nfproto", "l4proto", "iifname", "oifname"]

    def text(self) -> str:
        return f"meta {self.key}" if self.key in ("nfproto", "l4proto") else self.key

    def json(self) -> JsonDict:
        return {"meta": {"key": self.key}}


@dataclass(frozen=True, slots=True)
class Payload:
    protocol: Literal["ip", "ip6", "tcp", "udp"]
    field: Literal["saddr", "daddr", "sport", "dport"]

    def text(self) -> str:
        return f"{self.protocol} {self.field}"

    def json(self) -> JsonDict:
        return {"payload": {"protocol": self.protocol, "field": self.field}}


@dataclass(frozen=True, slots=True)
class Ct:
    """A conntrack key; ``saddr`` needs a direction and a family (``ct original ip saddr``)."""

    key: Literal["state", "protocol", "saddr"]
    direction: Literal["original", "reply"] | None = None
    family: Literal["ip", "ip6"] | None = None

    def text(self) -> str:
        words = ["ct", self.direction, self.family, self.key]
        return " ".join(word for word in words if word)

    def json(self) -> JsonDict:
        # libnftables 1.0.6 reads and writes the family inside the key ("ip saddr").
        key = f"{self.family} {self.key}" if self.family else self.key
        out: JsonDict = {"key": key}
        if self.direction:
            out["dir"] = self.direction
        return {"ct": out}


Key = Meta | Payload | Ct


@dataclass(frozen=True, slots=True)
class Match:
    """``left op values``: one value is compared, several form an anonymous set."""

    left: Key
    values: tuple[Value, ...]
    negate: bool = False

    def text(self) -> str:
        if isinstance(self.left, Ct) and self.left.key == "state":
            right = ",".join(str(value) for value in self.values)
        elif len(self.values) == 1:
            right = _value_text(self.values[0])
        else:
            right = "{ " + ", ".join(_value_text(value) for value in self.values) + " }"
        return f"{self.left.text()} {'!= ' if self.negate else ''}{right}"

    def json(self) -> JsonDict:
        op = "!=" if self.negate else "=="
        right: Any
        if isinstance(self.left, Ct) and self.left.key == "state":
            op = "in"  # a bitmask match: what nft lists for ``ct state x``
            right = self.values[0] if len(self.values) == 1 else list(self.values)
        elif len(self.values) == 1:
            right = _value_json(self.values[0])
        else:
            right = {"set": [_value_json(value) for value in self.values]}
        return {"match": {"op": op, "left": self.left.json(), "right": right}}


def _value_text(value: Value) -> str:
    if isinstance(value, Quoted):
        return '"' + value.text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return f"{value[0]}-{value[1]}" if value[0] != value[1] else str(value[0])
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        if value.prefixlen == value.max_prefixlen:
            return str(value.network_address)
        return str(value)
    return str(value)


def _value_json(value: Value) -> Any:
    if isinstance(value, Quoted):
        return value.text
    if isinstance(value, tuple):
        return {"range": list(value)} if value[0] != value[1] else value[0]
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        if value.prefixlen == value.max_prefixlen:
            return str(value.network_address)
        return {"prefix": {"addr": str(value.network_address), "len": value.prefixlen}}
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    return value


@dataclass(frozen=True, slots=True)
class CtHelperSet:
    name: str

    def text(self) -> str:
        return f'ct helper set "{self.name}"'

    def json(self) -> JsonDict:
        return {"ct helper": self.name}


@dataclass(frozen=True, slots=True)
class CtEventSet:
    """``ct event set``; no events at all is the mask 0."""

    events: tuple[str, ...]

    def text(self) -> str:
        if not self.events:
            return "ct event set 0x0"
        names = (f'"{e}"' if e in _EVENT_KEYWORDS else e for e in self.events)
        return "ct event set " + ",".join(names)

    def json(self) -> JsonDict:
        value: Any = 0 if not self.events else list(self.events)
        if len(self.events) == 1:
            value = self.events[0]
        return {"mangle": {"key": {"ct": {"key": "event"}}, "value": value}}


@dataclass(frozen=True, slots=True)
class Notrack:
    def text(self) -> str:
        return "notrack"

    def json(self) -> JsonDict:
        return {"notrack": None}


@dataclass(frozen=True, slots=True)
class Accept:
    def text(self) -> str:
        return "accept"

    def json(self) -> JsonDict:
        return {"accept": None}


Statement = CtHelperSet | CtEventSet | Notrack | Accept


@dataclass(frozen=True, slots=True)
class Rule:
    matches: tuple[Match, ...]
    statements: tuple[Statement, ...]
    comment: str
    """The config entry that produced the rule (``helpers.assign[0]``, ``sync.links[1]``)."""

    def text(self) -> str:
        words = [m.text() for m in self.matches] + [s.text() for s in self.statements]
        return " ".join([*words, f'comment "{self.comment}"'])

    def expr(self) -> list[JsonDict]:
        return [m.json() for m in self.matches] + [s.json() for s in self.statements]


@dataclass(frozen=True, slots=True)
class Chain:
    """A base chain (``type filter``, policy accept: the table only marks, never drops)."""

    name: str
    hook: Literal["prerouting", "output"]
    priority: int
    rules: tuple[Rule, ...]
    notes: tuple[str, ...] = ()
    """Why a rule one might expect is not there; printed as comments by ``to_text``."""


@dataclass(frozen=True, slots=True)
class CtHelper:
    """A ``ct helper`` object: the kernel helper ``type`` for one protocol and family."""

    name: str
    type: str
    protocol: Literal["tcp", "udp"]
    l3proto: Literal["inet", "ip", "ip6"]


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    helpers: tuple[CtHelper, ...]
    chains: tuple[Chain, ...]
    family: Literal["inet"] = "inet"

    @property
    def rule_count(self) -> int:
        return sum(len(chain.rules) for chain in self.chains)


def to_json(table: Table) -> list[tuple[JsonDict, str]]:
    """The ``add`` commands that create the table, each with what it is (for error messages)."""
    ident = {"family": table.family, "table": table.name}
    out: list[tuple[JsonDict, str]] = [
        ({"add": {"table": {"family": table.family, "name": table.name}}}, f"table {table.name}")
    ]
    for helper in table.helpers:
        obj = {
            **ident,
            "name": helper.name,
            "type": helper.type,
            "protocol": helper.protocol,
            "l3proto": helper.l3proto,
        }
        out.append(({"add": {"ct helper": obj}}, f'ct helper "{helper.name}"'))
    for chain in table.chains:
        body = {
            **ident,
            "name": chain.name,
            "type": "filter",
            "hook": chain.hook,
            "prio": chain.priority,
            "policy": "accept",
        }
        out.append(({"add": {"chain": body}}, f"chain {chain.name}"))
    for chain in table.chains:
        for index, rule in enumerate(chain.rules):
            body = {**ident, "chain": chain.name, "expr": rule.expr(), "comment": rule.comment}
            what = f"rule {index} of chain {chain.name} (from {rule.comment})"
            out.append(({"add": {"rule": body}}, what))
    return out


def to_text(table: Table) -> str:
    """The table in nft syntax, laid out as ``nft list table`` does; ``nft -f`` reads it."""
    blocks: list[str] = []
    for helper in table.helpers:
        blocks.append(
            f"\tct helper {helper.name} {{\n"
            f'\t\ttype "{helper.type}" protocol {helper.protocol}\n'
            f"\t\tl3proto {helper.l3proto}\n"
            "\t}\n"
        )
    for chain in table.chains:
        priority = _PRIORITY_NAMES.get(chain.priority, str(chain.priority))
        lines = [
            f"\tchain {chain.name} {{",
            f"\t\ttype filter hook {chain.hook} priority {priority}; policy accept;",
        ]
        lines += [f"\t\t# {note}" for note in chain.notes]
        lines += [f"\t\t{rule.text()}" for rule in chain.rules]
        blocks.append("\n".join(lines) + "\n\t}\n")
    return f"table {table.family} {table.name} {{\n" + "\n".join(blocks) + "}\n"
