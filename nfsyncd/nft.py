"""The nftables table nfsyncd generates from its config, and how it is applied.

The table (``inet nfsyncd`` by default) holds what conntrackd left to hand-written firewall
rules: ``ct helper`` objects and the rules that assign them (kernels since 6.x assign no
helper by port), ``ct event set`` rules so the kernel only generates the events sync needs
(and none for flows the userspace filter would drop anyway), and ``notrack`` for the sync
links' own packets. It is built as a small model (``_nft_model``), rendered to libnftables
JSON to apply and to nft syntax to show, and replaced as one atomic transaction: a batch
that adds, deletes and re-adds the table either fully applies or leaves the old table as
it was. No other table is ever named in a batch.

``nfsyncctl`` imports this module (``nft show``/``nft check``), so it stays cheap:
python3-nftables (a system package) is only imported when a real backend is made.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from typing import Any, Final, Literal, Protocol

from ._config_types import (
    Config,
    HelperAssign,
    IPAddress,
    IPNetwork,
    ListFilter,
    SyncLink,
)
from ._nft_model import (
    Accept,
    Chain,
    Ct,
    CtEventSet,
    CtHelper,
    CtHelperSet,
    Match,
    Meta,
    Notrack,
    Payload,
    Quoted,
    Rule,
    Table,
    Value,
    to_json,
    to_text,
)
from .config import HELPER_IPV4_ONLY, HELPER_KERNEL

__all__ = [
    "Backend",
    "NftBackend",
    "NftError",
    "Table",
    "TableOwner",
    "apply",
    "build_table",
    "check",
    "current",
    "has_net_admin",
    "kernel_check",
    "remove",
    "render_json",
    "render_text",
    "userspace_helper_rules",
]

JsonDict = dict[str, Any]
Family = Literal["ip", "ip6"]

PRIO_RAW: Final = -300  # before conntrack: the only place notrack works
PRIO_FILTER: Final = 0  # after conntrack: ct helper set and ct event set need the entry
CAP_NET_ADMIN: Final = 12

# Object names may not hold "." (Q.931): the config's spelling of the kernel helper.
_OBJECT_BASE: Final = {"Q.931": "q931", "RAS": "ras"}


class NftError(Exception):
    """libnftables refused a command; ``where`` names what failed when it could be told."""

    def __init__(self, message: str, where: str | None = None) -> None:
        super().__init__(message if where is None else f"{where}: {message}")
        self.message = message
        self.where = where


# --- building the model -------------------------------------------------------------------


def build_table(config: Config) -> Table:
    """The table ``config`` asks for (pure: no I/O, no kernel)."""
    helpers: dict[tuple[str, str, str], CtHelper] = {}
    pre: list[Rule] = []
    out: list[Rule] = []
    for index, entry in enumerate(config.helpers.assign):
        obj = _helper_object(entry, helpers)
        comment = f"helpers.assign[{index}]"
        pre += _assign_rules(entry, obj.name, comment, output=False)
        out += _assign_rules(entry, obj.name, comment, output=True)
    chains: list[Chain] = []
    if pre:
        chains.append(Chain("helpers_prerouting", "prerouting", PRIO_FILTER, tuple(pre)))
    if out:
        chains.append(Chain("helpers_output", "output", PRIO_FILTER, tuple(out)))
    chains += userspace_helper_rules(config)
    if config.nftables.event_filter:
        rules, notes = _event_rules(config)
        for hook in ("prerouting", "output"):
            chains.append(Chain(f"events_{hook}", hook, PRIO_FILTER, rules, notes))
    if config.nftables.notrack_sync and config.sync is not None:
        links = config.sync.links
        pre_rules = tuple(r for i, link in enumerate(links) for r in _notrack(i, link, False))
        out_rules = tuple(r for i, link in enumerate(links) for r in _notrack(i, link, True))
        chains.append(Chain("notrack_prerouting", "prerouting", PRIO_RAW, pre_rules))
        chains.append(Chain("notrack_output", "output", PRIO_RAW, out_rules))
    return Table(config.nftables.table, tuple(helpers.values()), tuple(chains))


def render_json(table: Table) -> JsonDict:
    """The batch that replaces the table atomically (libnftables JSON)."""
    return {"nftables": [command for command, _ in _replace_batch(table, None)]}


def render_text(table: Table) -> str:
    """The table in nft syntax (what ``nfsyncctl nft show`` prints)."""
    return to_text(table)


def userspace_helper_rules(config: Config) -> list[Chain]:
    """Chains for the userspace helpers of [[helpers.userspace]]: none yet.

    When userspace helpers land (issue 7), their packets reach nfsyncd through NFQUEUE: a
    chain here at hook prerouting and output, priority filter + 1 (after the helper
    assignment chains, so ``ct helper`` already names the userspace helper), with one rule
    per helper matching ``ct helper "<name>"`` and its protocol and sending the packet to
    ``queue num <helpers.userspace[i].queue> bypass`` (bypass: traffic flows, unhelped,
    when nfsyncd is down). This kernel lacks the nft ``queue`` statement (NFT_QUEUE), so
    such rules must be probed with ``check`` first.
    """
    del config
    return []


def _helper_object(entry: HelperAssign, known: dict[tuple[str, str, str], CtHelper]) -> CtHelper:
    kind = HELPER_KERNEL[entry.helper][entry.protocol]
    natural: Literal["inet", "ip"] = "ip" if entry.helper in HELPER_IPV4_ONLY else "inet"
    l3proto = entry.family if entry.family != "inet" else natural
    key = (kind, entry.protocol, l3proto)
    if key not in known:
        name = f"{_OBJECT_BASE.get(kind, kind)}-{entry.protocol}"
        if l3proto != natural:
            name += f"-{l3proto}"
        known[key] = CtHelper(name, kind, entry.protocol, l3proto)
    return known[key]


def _assign_rules(entry: HelperAssign, obj: str, comment: str, *, output: bool) -> list[Rule]:
    """One rule per address family the entry's addresses need (one rule when it has none)."""
    if output and entry.interfaces:
        return []  # locally originated connections have no input interface
    dport = Match(Payload(entry.protocol, "dport"), tuple(sorted(entry.ports)))
    iif: tuple[Match, ...] = ()
    if entry.interfaces:
        iif = (Match(Meta("iifname"), tuple(Quoted(n) for n in sorted(set(entry.interfaces)))),)
    new = Match(Ct("state"), ("new",))
    action = (CtHelperSet(obj),)
    if not entry.addresses:
        nfproto: tuple[Match, ...] = ()
        if entry.family != "inet":
            nfproto = (Match(Meta("nfproto"), ("ipv4" if entry.family == "ip" else "ipv6",)),)
        return [Rule((*nfproto, new, dport, *iif), action, comment)]
    rules = []
    for family, values in _by_family(entry.addresses):
        daddr = Match(Payload(family, "daddr"), values)
        rules.append(Rule((new, dport, daddr, *iif), action, comment))
    return rules


def _by_family(items: Sequence[IPAddress | IPNetwork]) -> list[tuple[Family, tuple[Value, ...]]]:
    """Addresses split by family, sorted and collapsed (nested and adjacent networks merged),
    as the kernel's interval set holds them."""
    nets = [ipaddress.ip_network(item) for item in items]
    v4 = [net for net in nets if isinstance(net, ipaddress.IPv4Network)]
    v6 = [net for net in nets if isinstance(net, ipaddress.IPv6Network)]
    out: list[tuple[Family, tuple[Value, ...]]] = []
    if v4:
        out.append(("ip", tuple(ipaddress.collapse_addresses(v4))))
    if v6:
        out.append(("ip6", tuple(ipaddress.collapse_addresses(v6))))
    return out


def _event_rules(config: Config) -> tuple[tuple[Rule, ...], tuple[str, ...]]:
    """The ``ct event set`` rules, and notes on filter parts the kernel side cannot mirror.

    Rules match a conntrack entry's first packet (``ct state new`` or, for an expected
    connection, ``related``) and set its event mask once. With ``filter.kernel_side`` the
    userspace filter's flows-to-drop get mask 0 first (and ``accept`` to leave the chain
    before the general rule resets it). Every decision reads the conntrack entry, not the
    packet, so an ICMP error (``related`` to an existing entry) sets the same mask again.
    Expectation events have their own mask, which ``ct event set`` does not change.
    """
    first = Match(Ct("state"), ("related", "new"))
    silence = (CtEventSet(()), Accept())
    rules: list[Rule] = []
    notes: list[str] = []
    filt = config.filter
    if filt.kernel_side:
        if filt.protocol is not None:
            protos = Match(
                Ct("protocol"), tuple(sorted(filt.protocol.items)), filt.protocol.action == "accept"
            )
            rules.append(Rule((first, protos), silence, "filter.protocol"))
        if filt.address is not None:
            rules += _address_rules(filt.address, first, silence)
        if filt.tcp_state is not None:
            notes.append(
                "filter.tcp_state: not mirrored here (a flow's TCP state changes after its "
                "first packet); the userspace filter still applies it"
            )
    rules.append(Rule((first,), (CtEventSet(config.nftables.events),), "nftables.events"))
    return tuple(rules), tuple(notes)


def _address_rules(
    address: ListFilter[IPAddress | IPNetwork],
    first: Match,
    silence: tuple[CtEventSet, Accept],
) -> list[Rule]:
    """Mirror "the original or the reply source is listed" per address family."""
    rules: list[Rule] = []
    listed = dict(_by_family(address.items))
    pairs: tuple[tuple[Family, str], ...] = (("ip", "ipv4"), ("ip6", "ipv6"))
    for family, nfproto in pairs:
        proto = Match(Meta("nfproto"), (nfproto,))
        values = listed.get(family)
        if address.action == "accept":
            if values is None:  # nothing of this family is accepted
                rules.append(Rule((first, proto), silence, "filter.address"))
                continue
            orig = Match(Ct("saddr", "original", family), values, negate=True)
            reply = Match(Ct("saddr", "reply", family), values, negate=True)
            rules.append(Rule((first, proto, orig, reply), silence, "filter.address"))
        elif values is not None:
            for direction in ("original", "reply"):
                src = Match(Ct("saddr", direction, family), values)
                rules.append(Rule((first, proto, src), silence, "filter.address"))
    return rules


def _notrack(index: int, link: SyncLink, output: bool) -> list[Rule]:
    """The sync link's packets, in one direction, by addresses and port.

    Incoming packets come from the peer to us (to the group for multicast, whose sender is
    unknown here); outgoing ones the other way. UDP and multicast use the link's port as
    destination in both directions; a TCP link is a connection either end may have opened,
    so both its source and its destination port are matched.
    """
    comment = f"sync.links[{index}]"
    l4: Literal["tcp", "udp"] = "tcp" if link.transport == "tcp" else "udp"
    remote = link.group if link.transport == "multicast" else link.peer
    src, dst = (link.local, remote) if output else (remote, link.local)
    if link.transport == "multicast" and not output:
        src, dst = None, link.group
    addrs: list[Match] = []
    for field, addr in (("saddr", src), ("daddr", dst)):
        if addr is not None:
            family: Family = "ip" if addr.version == 4 else "ip6"
            addrs.append(Match(Payload(family, field), (addr,)))  # type: ignore[arg-type]
    ports: tuple[Literal["sport", "dport"], ...] = ("dport", "sport") if l4 == "tcp" else ("dport",)
    return [
        Rule((*addrs, Match(Payload(l4, port), (link.port,))), (Notrack(),), comment)
        for port in ports
    ]


# --- applying it ----------------------------------------------------------------------------


class Backend(Protocol):
    """Runs one libnftables JSON batch; a fake stands in for it in unit tests."""

    def run(self, commands: list[JsonDict], *, dry_run: bool = False) -> list[JsonDict]:
        """Run ``{"nftables": commands}`` as one transaction; return the output items.

        Raises NftError with libnftables' message when anything in it fails (then nothing
        of it is applied). ``dry_run``: the kernel checks the batch and throws it away.
        """
        ...


class NftBackend:
    """The real backend: libnftables through Debian's python3-nftables."""

    def __init__(self) -> None:
        try:
            import nftables  # the system package; see the module docstring
        except ImportError:
            raise NftError(
                "python3-nftables is not installed (apt install python3-nftables), "
                "or set nftables.enabled = false"
            ) from None
        try:
            self._nft = nftables.Nftables()
        except OSError as exc:
            raise NftError(f"cannot load libnftables: {exc}") from None
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)

    def run(self, commands: list[JsonDict], *, dry_run: bool = False) -> list[JsonDict]:
        self._nft.set_dry_run(dry_run)
        try:
            rc, output, error = self._nft.json_cmd({"nftables": commands})
        finally:
            self._nft.set_dry_run(False)
        if rc != 0:
            raise NftError(_clean_error(error) or f"libnftables failed (status {rc})")
        if isinstance(output, dict):
            items: list[JsonDict] = output.get("nftables", [])
            return items
        return []


def _clean_error(error: str) -> str:
    """libnftables' messages, once each (it repeats one per refused command of a batch)."""
    lines: dict[str, None] = {}
    for line in error.splitlines():
        line = line.strip().removeprefix("internal:0:0-0: ")
        if line:
            lines[line] = None
    return "; ".join(lines)


def _table_ref(name: str) -> JsonDict:
    return {"table": {"family": "inet", "name": name}}


def _replace_batch(table: Table, previous: str | None) -> list[tuple[JsonDict, str]]:
    # "add" then "delete" removes the table whether or not it exists; the re-add follows in
    # the same transaction, so the kernel never runs without the table (or with half of it).
    batch: list[tuple[JsonDict, str]] = []
    for name in dict.fromkeys([previous or table.name, table.name]):
        batch.append(({"add": _table_ref(name)}, f"table {name}"))
        batch.append(({"delete": _table_ref(name)}, f"table {name}"))
    return batch + to_json(table)


def apply(table: Table, backend: Backend, *, previous: str | None = None) -> None:
    """Replace the table in one transaction (and drop ``previous``, a renamed old table).

    On failure nothing changed and NftError names the command that failed when it can be
    found (by dry-running ever shorter prefixes of the batch).
    """
    _run(_replace_batch(table, previous), backend, dry_run=False)


def check(table: Table, backend: Backend) -> None:
    """Dry-run ``apply``: raise NftError when the kernel would refuse the table."""
    _run(_replace_batch(table, None), backend, dry_run=True)


def remove(name: str, backend: Backend) -> None:
    """Delete the table ``inet name`` if it exists (and nothing else)."""
    backend.run([{"add": _table_ref(name)}, {"delete": _table_ref(name)}])


def current(name: str, backend: Backend) -> JsonDict | None:
    """``nft -j list table inet name`` as ``{"nftables": [...]}``; None when there is none."""
    try:
        items = backend.run([{"list": _table_ref(name)}])
    except NftError as exc:
        if "No such file or directory" in exc.message:
            return None
        raise
    return {"nftables": items}


def _run(batch: list[tuple[JsonDict, str]], backend: Backend, *, dry_run: bool) -> None:
    commands = [command for command, _ in batch]
    try:
        backend.run(commands, dry_run=dry_run)
    except NftError as exc:
        raise NftError(exc.message, _culprit(batch, backend)) from None


def _culprit(batch: list[tuple[JsonDict, str]], backend: Backend) -> str | None:
    """The first command whose prefix of the batch fails a dry run (binary search)."""
    commands = [command for command, _ in batch]
    low, high = 0, len(commands)  # commands[:low] passes; commands[:high] fails (assumed)
    while high - low > 1:
        middle = (low + high) // 2
        try:
            backend.run(commands[:middle], dry_run=True)
        except NftError:
            high = middle
        else:
            low = middle
    try:
        backend.run(commands[:high], dry_run=True)
    except NftError:
        return batch[high - 1][1]
    return None  # the failure did not reproduce in a dry run


# --- the daemon's table and the config checks -----------------------------------------------


class TableOwner:
    """The table a daemon owns: applied at start and on reload, removed at exit."""

    def __init__(self, backend: Backend | None = None) -> None:
        self._backend = backend
        self.name: str | None = None
        self.applied = False
        self.rules = 0
        self.last_error: str | None = None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = NftBackend()
        return self._backend

    def apply(self, config: Config) -> None:
        """Make the kernel hold ``config``'s table (or none); NftError leaves all as it was."""
        try:
            if not config.nftables.enabled:
                if self.applied and self.name is not None:
                    remove(self.name, self.backend)
                self.applied, self.name, self.rules = False, None, 0
                return
            table = build_table(config)
            previous = self.name if self.applied else None
            apply(table, self.backend, previous=previous)
        except NftError as exc:
            self.last_error = str(exc)
            raise
        self.name, self.applied, self.rules = table.name, True, table.rule_count
        self.last_error = None

    def remove(self) -> None:
        if self.applied and self.name is not None:
            remove(self.name, self.backend)
            self.applied = False

    def status(self, config: Config) -> JsonDict:
        return {
            "enabled": config.nftables.enabled,
            "table": f"inet {self.name or config.nftables.table}",
            "applied": self.applied,
            "rules": self.rules,
            "last_error": self.last_error,
        }


def has_net_admin() -> bool:
    """Whether this process may change the ruleset (CAP_NET_ADMIN in its effective set)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def kernel_check(config: Config, backend: Backend | None = None) -> tuple[bool | None, str]:
    """Dry-run ``config``'s table against the running kernel, for --check-config.

    ``(True, msg)`` the kernel accepts it, ``(False, error)`` it refuses it, ``(None, why)``
    the check could not run (no CAP_NET_ADMIN, no python3-nftables), which is not an error.
    """
    if not config.nftables.enabled:
        return None, "nftables.enabled = false: no table to check"
    if backend is None:
        if not has_net_admin():
            return None, "kernel dry-run skipped: this process lacks CAP_NET_ADMIN"
        try:
            backend = NftBackend()
        except NftError as exc:
            return None, f"kernel dry-run skipped: {exc}"
    table = build_table(config)
    try:
        check(table, backend)
    except NftError as exc:
        return False, f"the kernel refuses table inet {table.name}: {exc}"
    return True, f"the kernel accepts table inet {table.name} ({table.rule_count} rules)"
