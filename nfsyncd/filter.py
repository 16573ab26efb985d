"""Which flows and expectations are replicated: conntrackd's userspace filter.

Semantics (reference/conntrackd.md §4.6 and ExpectationSync in §4.4):

* protocol: ``accept`` replicates only the listed protocols, ``ignore`` all but them;
* address: a flow *matches* when its original source or its reply source (the two real
  endpoints; with NAT the reply source is the translated server) is one of the hosts or
  inside one of the networks, IPv4 and IPv6 alike; ``accept`` keeps matching flows,
  ``ignore`` drops them;
* tcp_state: only TCP flows whose state is known are judged; other protocols, and TCP
  flows without a state, pass;
* expectation helpers: an empty list accepts every expectation; otherwise the helper name
  must start with one of the listed names, ignoring case, and an expectation without a
  helper is rejected.

A flow must pass every rule that is set.  ``accepts_flow`` runs once per kernel event, so
everything is precomputed: hosts are a set of packed addresses, networks a set of masked
integers per prefix length, and a filter without flow rules is recognised up front
(:attr:`Filter.filters_flows`) so callers can skip it entirely.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final, Literal

from ._prepared import Prepared
from .model import IPPROTO_TCP, Expectation, Flow, TcpInfo

__all__ = ["Action", "Filter", "Rule"]

Action = Literal["accept", "ignore"]
#: one sub-filter: an action and its items
Rule = tuple[Action, Iterable[object]]

_ACTIONS: Final = ("accept", "ignore")
AddressItem = ipaddress.IPv4Network | ipaddress.IPv6Network


def _action(kind: str, action: str) -> bool:
    """True for accept, False for ignore."""
    if action not in _ACTIONS:
        raise ValueError(f"filter.{kind}: action must be 'accept' or 'ignore', got {action!r}")
    return action == "accept"


def _network(item: object) -> AddressItem:
    if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return item
    if isinstance(item, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return ipaddress.ip_network(item)
    if isinstance(item, bytes) and len(item) in (4, 16):
        return ipaddress.ip_network(ipaddress.ip_address(item))
    if isinstance(item, str):
        return ipaddress.ip_network(item)
    raise TypeError(f"filter.address: not an address or network: {item!r}")


class _AddressSet:
    """Hosts and networks of both families; ``contains`` takes a packed address."""

    __slots__ = ("hosts", "hosts_only", "nets4", "nets6")

    def __init__(self, items: Iterable[object]) -> None:
        self.hosts: set[bytes] = set()  # /32 and /128, packed
        by_prefix: dict[tuple[int, int], set[int]] = {}
        for item in items:
            net = _network(item)
            if net.prefixlen == net.max_prefixlen:
                self.hosts.add(net.network_address.packed)
            else:
                key = (net.version, net.prefixlen)
                by_prefix.setdefault(key, set()).add(int(net.network_address))
        self.nets4 = self._masks(by_prefix, 4, 32)
        self.nets6 = self._masks(by_prefix, 6, 128)
        self.hosts_only = not self.nets4 and not self.nets6

    @staticmethod
    def _masks(
        by_prefix: dict[tuple[int, int], set[int]], version: int, bits: int
    ) -> tuple[tuple[int, frozenset[int]], ...]:
        full = (1 << bits) - 1
        rows = [
            (full ^ (full >> plen), frozenset(nets))
            for (ver, plen), nets in by_prefix.items()
            if ver == version
        ]
        return tuple(sorted(rows, reverse=True, key=lambda r: r[0]))

    def contains(self, addr: bytes) -> bool:
        if addr in self.hosts:
            return True
        nets = self.nets4 if len(addr) == 4 else self.nets6
        if nets:
            value = int.from_bytes(addr, "big")
            for mask, masked in nets:  # a plain loop: faster than any() here
                if value & mask in masked:
                    return True
        return False

    def describe(self) -> tuple[str, ...]:
        """The hosts and networks, normalised (for equality and repr)."""
        out = [str(ipaddress.ip_address(h)) for h in self.hosts]
        for net_cls, bits, rows in (
            (ipaddress.IPv4Network, 32, self.nets4),
            (ipaddress.IPv6Network, 128, self.nets6),
        ):
            for mask, masked in rows:
                plen = bits - ((1 << bits) - 1 ^ mask).bit_length()
                out += [str(net_cls((value, plen))) for value in masked]
        return tuple(sorted(out))


class Filter:
    """A userspace filter: give each rule as ``(action, items)`` or ``None`` for "not set".

    ``protocol`` items are protocol numbers, ``address`` items ``ipaddress`` networks
    or addresses (or their text, or packed bytes), ``tcp_state`` items kernel TCP state
    numbers (``model.TCP_STATE_NAMES``), ``expect_helpers`` helper name prefixes.
    """

    __slots__ = (
        "_addr_accept",
        "_addresses",
        "_helpers",
        "_proto_accept",
        "_protocols",
        "_rules",
        "_state_accept",
        "_states",
        "filters_flows",
    )

    def __init__(
        self,
        protocol: Rule | None = None,
        address: Rule | None = None,
        tcp_state: Rule | None = None,
        expect_helpers: Iterable[str] = (),
    ) -> None:
        self._protocols: frozenset[int] | None = None
        self._proto_accept = True
        if protocol is not None:
            self._proto_accept = _action("protocol", protocol[0])
            self._protocols = frozenset(int(p) for p in protocol[1])  # type: ignore[call-overload]
        self._addresses: _AddressSet | None = None
        self._addr_accept = True
        if address is not None:
            self._addr_accept = _action("address", address[0])
            self._addresses = _AddressSet(address[1])
        self._states: frozenset[int] | None = None
        self._state_accept = True
        if tcp_state is not None:
            self._state_accept = _action("tcp_state", tcp_state[0])
            self._states = frozenset(int(s) for s in tcp_state[1])  # type: ignore[call-overload]
        self._helpers = tuple(h.lower() for h in expect_helpers)
        #: False when no flow rule is set: every flow passes, callers may skip the call
        self.filters_flows = (
            self._protocols is not None or self._addresses is not None or self._states is not None
        )
        self._rules = (
            None if protocol is None else (protocol[0], tuple(sorted(self._protocols or ()))),
            None if address is None else (address[0], self._addresses.describe()),  # type: ignore[union-attr]
            None if tcp_state is None else (tcp_state[0], tuple(sorted(self._states or ()))),
            tuple(sorted(set(self._helpers))),
        )

    @classmethod
    def from_config(cls, cfg: object, expectations: object | None = None) -> Filter:
        """The filter a configuration describes.

        ``cfg`` is the whole ``Config`` (its ``filter`` and ``expectations`` are used) or a
        ``FilterConfig`` (rules ``protocol``/``address``/``tcp_state``, each ``None`` or an
        object with ``action`` and ``items``), optionally with an ``ExpectConfig`` (its
        ``helpers``) as ``expectations``.  Attributes are read by name, so this module
        does not depend on the config module.
        """
        if hasattr(cfg, "filter") and not hasattr(cfg, "protocol"):
            if expectations is None:
                expectations = getattr(cfg, "expectations", None)
            cfg = cfg.filter

        def rule(name: str) -> Rule | None:
            sub = getattr(cfg, name, None)
            if sub is None:
                return None
            return (sub.action, tuple(sub.items))

        helpers: Iterable[str] = ()
        if expectations is not None:
            helpers = tuple(getattr(expectations, "helpers", ()))
        return cls(rule("protocol"), rule("address"), rule("tcp_state"), helpers)

    # -- decisions ---------------------------------------------------------------------
    def accepts_flow(self, flow: Flow | Prepared) -> bool:
        # (fields by index: this runs once per kernel event, and a field name costs more)
        reply_src: bytes | None
        state: int | None
        if isinstance(flow, Prepared):  # a TCP flow without NAT: the reply source is dst
            proto, src, reply_src, state = IPPROTO_TCP, flow[5], flow[6], flow[7]
        else:
            orig, reply, info = flow[0], flow[1], flow[8]
            proto, src = orig[2], orig[0]
            reply_src = None if reply is None else reply[0]
            state = info[0] if type(info) is TcpInfo else None
        protocols = self._protocols
        if protocols is not None and (proto in protocols) is not self._proto_accept:
            return False
        addresses = self._addresses
        if addresses is not None:
            if addresses.hosts_only:  # the usual list: set lookups, no calls
                hosts = addresses.hosts
                matched = src in hosts or (reply_src is not None and reply_src in hosts)
            else:
                matched = addresses.contains(src) or (
                    reply_src is not None and addresses.contains(reply_src)
                )
            if matched is not self._addr_accept:
                return False
        states = self._states
        if states is not None and proto == IPPROTO_TCP and state is not None:
            return (state in states) is self._state_accept
        return True

    def accepts_expect(self, exp: Expectation) -> bool:
        helpers = self._helpers
        if not helpers:
            return True
        name = exp.helper
        return name is not None and name.lower().startswith(helpers)

    # -- identity ------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Filter) and self._rules == other._rules

    def __hash__(self) -> int:
        return hash(self._rules)

    def __repr__(self) -> str:
        proto, addr, state, helpers = self._rules
        return (
            f"Filter(protocol={proto!r}, address={addr!r}, tcp_state={state!r}, "
            f"expect_helpers={helpers!r})"
        )
