"""conntrackd.conf syntax tree -> nfsyncd TOML (see /tmp/spec/config_schema.md) and notes.

Two passes: :class:`_Converter` decides what each conntrackd statement becomes (a key, a
changed key with a note, or a ``# conntrackd:`` comment when nothing in nfsyncd matches) and
raises on what conntrackd would reject at startup or what nfsyncd's schema cannot express;
:class:`_Writer` renders the tables in the schema's order and carries every input comment
to the key that came from the statement it was written above.
"""

from __future__ import annotations

import ipaddress
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field

from nfsyncd.conntrackd_conf import (
    Block,
    Comment,
    ConfFile,
    ConntrackdConfError,
    Stmt,
    Token,
    mode_of,
)

__all__ = ["convert"]

Scalar = str | int | bool

# conntrackd's defaults where nfsyncd's match them; "0" in conntrackd.conf means "default".
_ZERO_MEANS = {
    "PurgeTimeout": 60,
    "ResendQueueSize": 131072,
    "ACKWindowSize": 300,
    "RefreshTime": 60,
    "CacheTimeout": 180,
    "EventIterationLimit": 100,
    "HashLimit": 262144,
    "NetlinkOverrunResync": 30,
    "ErrorQueueLength": 128,
}
_DEFAULT_PORT = 3780
_NL_SIZE, _NL_MAX = 16 * 1024 * 1024, 128 * 1024 * 1024
_UNIX_PATH_MAX = 107

_WHY = {
    "HashSize": "no equivalent; nfsyncd sizes its cache hash tables itself (HashLimit maps to "
    "general.cache_limit)",
    "LogFile": "no equivalent; nfsyncd logs to stderr (the journal under systemd); "
    'general.log_format = "json" gives machine-readable lines',
    "Syslog": "no equivalent; nfsyncd logs to stderr, and under systemd the journal can forward "
    "to syslog",
    "LockFile": "no equivalent; nfsyncd uses no lock file (run one instance per node, as the "
    "systemd unit does)",
    "Scheduler": "no equivalent; nfsyncd keeps the normal scheduler: use systemd's "
    "CPUSchedulingPolicy= and CPUSchedulingPriority= (conntrackd used SCHED_RR priority 99 "
    "even without this section)",
    "Nice": "no equivalent (conntrackd ignored it too); use systemd's Nice= or nice(1)",
    "Systemd": "no equivalent; nfsyncd always sends sd_notify messages when it runs under systemd",
    "UNIX Backlog": "no equivalent (conntrackd ignored it too)",
    "IPv6_interface": "no equivalent (conntrackd ignored it too)",
    "Setup": "no equivalent; nfsyncd registers the helpers listed in [[helpers.userspace]] "
    "with the kernel itself",
    "Stats": "stats mode is not supported; without [sync] nfsyncd runs as a single node that "
    "only mirrors the kernel table, the closest equivalent; logging destroyed flows (Stats "
    "LogFile/Syslog) has no equivalent",
}

# Protocol names as /etc/protocols spells them (conntrackd looks them up case-sensitively).
_PROTOCOLS = {
    "tcp": "tcp",
    "TCP": "tcp",
    "udp": "udp",
    "UDP": "udp",
    "icmp": "icmp",
    "ICMP": "icmp",
    "ipv6-icmp": "ipv6-icmp",
    "IPv6-ICMP": "ipv6-icmp",
    "sctp": "sctp",
    "SCTP": "sctp",
    "dccp": "dccp",
    "DCCP": "dccp",
    "gre": "gre",
    "GRE": "gre",
    "udplite": "udplite",
    "UDPLite": "udplite",
}

# conntrackd's user-space helpers (reference §7.3): protocols, built-in policy max/timeout.
_USERSPACE_HELPERS: dict[str, tuple[tuple[str, ...], int, int]] = {
    "amanda": (("udp",), 3, 180),
    "dhcpv6": (("udp",), 1, 300),
    "ftp": (("tcp",), 1, 300),
    "mdns": (("udp",), 8, 30),
    "rpc": (("tcp", "udp"), 1, 300),
    "sane": (("tcp",), 1, 300),
    "slp": (("udp",), 8, 16),
    "ssdp": (("tcp", "udp"), 8, 300),
    "tftp": (("udp",), 1, 300),
    "tns": (("tcp",), 1, 300),
}
# Helpers the kernel has too (schema [[helpers.assign]]), with their usual port.
_KERNEL_HELPER_PORTS = {"ftp": 21, "tftp": 69, "amanda": 10080, "sane": 6566}

_MODE_ORDER = ("FTFW", "ALARM", "NOTRACK")  # conntrackd's choice when several are given
_ALL_MODES = frozenset({"ftfw", "alarm", "notrack"})
# conntrackd option -> (nfsyncd [sync] key, modes the schema allows it in); schema key order.
_SYNC_KEYS: dict[str, tuple[str, frozenset[str]]] = {
    "DisableExternalCache": ("disable_external_cache", frozenset({"ftfw", "notrack"})),
    "DisableInternalCache": ("disable_internal_cache", frozenset({"notrack"})),
    "StartupResync": ("startup_resync", frozenset({"ftfw", "notrack"})),
    "CommitTimeout": ("commit_timeout", _ALL_MODES),
    "PurgeTimeout": ("purge_timeout", _ALL_MODES),
    "TCPWindowTracking": ("tcp_window_tracking", _ALL_MODES),
    "ResendQueueSize": ("resend_queue_size", frozenset({"ftfw"})),
    "ACKWindowSize": ("ack_window_size", frozenset({"ftfw"})),
    "RefreshTime": ("refresh_time", frozenset({"alarm"})),
    "CacheTimeout": ("cache_timeout", _ALL_MODES),
}
_GENERAL_ALIASES = {
    "SocketBufferSize": "NetlinkBufferSize",
    "SocketBufferSizeMaxGrown": "NetlinkBufferSizeMaxGrowth",
    "SocketBufferSizeMaxGrowth": "NetlinkBufferSizeMaxGrowth",
}
_GENERAL_MAPPED = frozenset(
    {
        "NetlinkBufferSize",
        "NetlinkBufferSizeMaxGrowth",
        "NetlinkOverrunResync",
        "NetlinkEventsReliable",
        "PollSecs",
        "HashLimit",
        "EventIterationLimit",
    }
)


# ------------------------------------------------------------------------- output model


@dataclass(eq=False)
class _Item:
    """One array element; value None keeps only its comments (a dropped entry)."""

    value: Scalar | None
    src: Stmt | None = None
    comment: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(eq=False)
class _Array:
    parts: list[_Item | Block]  # a Block stands for the comments before its closing brace


@dataclass(eq=False)
class _Entry:
    """``key = value`` with the statement whose comments go above it; key None: comments only."""

    key: str | None
    value: Scalar | _Array | None = None
    src: Stmt | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(eq=False)
class _Table:
    name: str | None  # None: no header (comments placed between tables)
    array: bool = False
    src: Stmt | None = None
    notes: list[str] = field(default_factory=list)
    entries: list[_Entry] = field(default_factory=list)
    tail: list[Stmt | Block] = field(default_factory=list)  # leftover comments go after it
    commented: bool = False  # a suggestion: every line is a comment


# ---------------------------------------------------------------------------- converter


class _Converter:
    def __init__(self, conf: ConfFile) -> None:
        self.conf = conf
        self.source = conf.source
        self.notes: list[tuple[int, str]] = []
        self.tables: list[_Table] = []
        self.header_notes: list[str] = []

    # -- helpers

    def note(
        self,
        stmt: Stmt | None,
        text: str,
        *,
        subject: str = "",
        whole: bool = False,
        shown: str | None = None,
    ) -> str:
        """Record a note; return the comment that says the same next to the output key."""
        if stmt is None:
            self.notes.append((0, f"{self.source}: {subject}: {text}"))
            return f"conntrackd: {subject}: {text}"
        self.notes.append(
            (stmt.line, f"{self.source}:{stmt.line}: {subject or stmt.keyword}: {text}")
        )
        if shown is None:
            shown = stmt.flat() if whole else stmt.head()
            if subject and subject.split()[-1] not in shown.split():
                text = f"{subject}: {text}"
        return f"conntrackd: {shown} (line {stmt.line}): {text}"

    def error(self, tok: Token, expected: str) -> ConntrackdConfError:
        return ConntrackdConfError(self.source, tok.line, tok.text, expected)

    def unsupported(self, stmt: Stmt, subject: str = "", shown: str | None = None) -> _Entry:
        text = _WHY[subject or stmt.keyword]
        note = self.note(stmt, text, subject=subject, whole=True, shown=shown)
        return _Entry(None, src=stmt, notes=[note])

    def last_wins(self, stmts: list[Stmt], out: list[_Entry]) -> Stmt:
        """conntrackd keeps the last of repeated options; the others become comments."""
        last = stmts[-1]
        for old in stmts[:-1]:
            text = f"overridden by {last.head()} at line {last.line} (conntrackd uses the last one)"
            out.append(_Entry(None, src=old, notes=[self.note(old, text)]))
        return last

    def number(self, stmt: Stmt) -> int:
        return int(stmt.value.text)

    # -- driver

    def run(self) -> None:
        tops: dict[str, list[Stmt]] = {"General": [], "Sync": [], "Stats": [], "Helper": []}
        for stmt in self.conf.items:
            tops[stmt.keyword].append(stmt)
        if tops["Sync"] and tops["Stats"]:
            later = max(tops["Sync"][0], tops["Stats"][0], key=lambda s: s.line)
            other = tops["Stats" if later.keyword == "Sync" else "Sync"][0]
            raise self.error(
                later.words[0],
                f"either a Sync or a Stats section, not both ({other.keyword} at line "
                f"{other.line})",
            )
        self.general(tops["General"])
        if tops["Sync"]:
            self.sync(tops["Sync"])
        else:
            self.stats(tops["Stats"])
        self.helpers(tops["Helper"])

    # -- General

    def general(self, sections: list[Stmt]) -> None:
        items = [s for sec in sections if sec.block for s in sec.block.items]
        by_key: dict[str, list[Stmt]] = {}
        unmapped: list[_Entry] = []
        filters: list[Stmt] = []
        paths: list[Stmt] = []
        for stmt in items:
            key = _GENERAL_ALIASES.get(stmt.keyword, stmt.keyword)
            if key in _GENERAL_MAPPED:
                by_key.setdefault(key, []).append(stmt)
            elif key == "UNIX":
                assert stmt.block is not None
                for sub in stmt.block.items:
                    if sub.keyword == "Path":
                        paths.append(sub)
                    else:
                        shown = f"UNIX {{ {sub.flat()} }}"
                        unmapped.append(self.unsupported(sub, "UNIX Backlog", shown))
            elif key == "Filter":
                filters.append(stmt)
            else:
                if key == "Scheduler":
                    self.check_scheduler(stmt)
                unmapped.append(self.unsupported(stmt))
        entries: list[_Entry] = []
        if paths:
            path = self.last_wins(paths, entries)
            if len(path.value.text) > _UNIX_PATH_MAX:
                raise self.error(
                    path.value, f"a path of at most {_UNIX_PATH_MAX} characters after Path"
                )
            entries.append(_Entry("control_socket", path.value.text, path))
        else:
            text = (
                "not set: conntrackd's daemon and CLI cannot run without it; "
                "nfsyncd uses its default control socket /run/nfsyncd/control.sock"
            )
            entries.append(_Entry(None, notes=[self.note(None, text, subject="UNIX Path")]))
        last = {k: self.last_wins(v, entries) for k, v in by_key.items()}
        entries.extend(self.netlink_buffers(last))
        if "NetlinkOverrunResync" in last:
            stmt = last["NetlinkOverrunResync"]
            tok = stmt.value
            notes = []
            value: Scalar
            if tok.kind == "on":
                value = 30
            elif tok.kind == "off":
                value = False
            elif int(tok.text) == 0:
                value = 30
                notes.append(self.note(stmt, "0 means the default (30 s) in conntrackd"))
            else:
                value = int(tok.text)
            entries.append(_Entry("overrun_resync_delay", value, stmt, notes))
        if "NetlinkEventsReliable" in last:
            stmt = last["NetlinkEventsReliable"]
            entries.append(_Entry("reliable_events", stmt.value.kind == "on", stmt))
        if "PollSecs" in last:
            stmt = last["PollSecs"]
            if self.number(stmt) == 0:
                raise self.error(stmt.value, "a number greater than 0 after PollSecs")
            entries.append(_Entry("poll_interval", self.number(stmt), stmt))
        for key, name in (
            ("HashLimit", "cache_limit"),
            ("EventIterationLimit", "event_batch_limit"),
        ):
            if key in last:
                entries.append(self.zero_default(last[key], name))
        entries.extend(unmapped)
        if sections:
            table = _Table("general", src=sections[0], entries=entries)
            for sec in sections:
                assert sec.block is not None
                table.tail.extend(s for s in sec.block.items if s.keyword != "Filter")
                table.tail.append(sec.block)
            self.tables.append(table)
        else:
            self.header_notes.extend(n for e in entries for n in e.notes)
        if filters:
            self.filter(filters)

    def zero_default(self, stmt: Stmt, key: str) -> _Entry:
        value = self.number(stmt)
        if value == 0:
            default = _ZERO_MEANS[stmt.keyword]
            text = f"0 means the default ({default}) in conntrackd"
            return _Entry(key, default, stmt, [self.note(stmt, text)])
        return _Entry(key, value, stmt)

    def check_scheduler(self, stmt: Stmt) -> None:
        assert stmt.block is not None
        for sub in stmt.block.items:
            if sub.keyword == "Type" and sub.value.text.lower() not in ("rr", "fifo"):
                raise self.error(sub.value, "RR or FIFO after Type")
            if sub.keyword == "Priority" and self.number(sub) > 99:
                raise self.error(sub.value, "a priority from 0 to 99 after Priority")

    def netlink_buffers(self, last: dict[str, Stmt]) -> list[_Entry]:
        size_stmt = last.get("NetlinkBufferSize")
        max_stmt = last.get("NetlinkBufferSizeMaxGrowth")
        size = self.number(size_stmt) if size_stmt else 0
        grow = self.number(max_stmt) if max_stmt else 0
        if size == 0 and grow == 0:
            text = (
                "neither it nor NetlinkBufferSizeMaxGrowth is set: conntrackd used "
                "the kernel's default buffer (net.core.rmem_default) and never grew it; nfsyncd "
                "starts at 16 MiB and grows up to 128 MiB under a backlog or on overruns"
            )
            note = self.note(None, text, subject="NetlinkBufferSize")
            return [_Entry(None, src=size_stmt or max_stmt, notes=[note])]
        if grow == 0:
            assert size_stmt is not None
            text = (
                "conntrackd ignored it because NetlinkBufferSizeMaxGrowth was not set (it only "
                "applies a size up to that limit, and never grows past it); imported as a fixed "
                f"buffer of {size} bytes"
            )
            note = self.note(size_stmt, text)
            return [
                _Entry("netlink_buffer_size", size, size_stmt, [note]),
                _Entry("netlink_buffer_max", size),
            ]
        assert max_stmt is not None
        if size == 0:
            start = min(_NL_SIZE, grow)
            text = (
                "not set: conntrackd started at the kernel's default "
                f"buffer (net.core.rmem_default); nfsyncd starts at {start} bytes"
            )
            note = self.note(None, text, subject="NetlinkBufferSize")
            return [
                _Entry("netlink_buffer_size", start, None, [note]),
                _Entry("netlink_buffer_max", grow, max_stmt),
            ]
        assert size_stmt is not None
        if size > grow:
            text = (
                f"conntrackd ignored it because it exceeds NetlinkBufferSizeMaxGrowth {grow} "
                f"(it started at the kernel's default buffer); imported as {grow}"
            )
            note = self.note(size_stmt, text)
            return [
                _Entry("netlink_buffer_size", grow, size_stmt, [note]),
                _Entry("netlink_buffer_max", grow, max_stmt),
            ]
        return [
            _Entry("netlink_buffer_size", size, size_stmt),
            _Entry("netlink_buffer_max", grow, max_stmt),
        ]

    # -- Filter

    def filter(self, filters: list[Stmt]) -> None:
        table = _Table("filter", src=filters[0])
        last = filters[-1]
        if len(last.words) == 3 and last.words[2].text == "Kernelspace":
            table.entries.append(_Entry("kernel_side", True, last))
        self.tables.append(table)
        subs = [s for f in filters if f.block for s in f.block.items]
        for kind, name in (
            ("Protocol", "protocol"),
            ("Address", "address"),
            ("State", "tcp_state"),
        ):
            blocks = [s for s in subs if s.keyword == kind]
            sub_table = self.filter_list(blocks, name) if blocks else None
            if sub_table is not None:
                self.tables.append(sub_table)
        self.tables[-1].tail.extend(filters)

    def filter_list(self, stmts: list[Stmt], name: str) -> _Table | None:
        actions = [s.words[1].text.lower() for s in stmts]
        table = _Table(f"filter.{name}", src=stmts[0])
        if len(set(actions)) > 1:
            text = (
                f"{stmts[-1].keyword} is given both as Accept and Ignore; conntrackd applies the "
                f"last one ({stmts[-1].words[1].text}) to every entry listed"
            )
            table.notes.append(self.note(stmts[-1], text))
        parts: list[_Item | Block] = []
        seen: set[Scalar] = set()
        for stmt in stmts:
            assert stmt.block is not None
            for sub in stmt.block.items:
                for item in self.filter_items(name, sub):
                    if item.value is not None and item.value in seen:
                        item.value = None  # the same entry twice: keep only its comments
                    elif item.value is not None:
                        seen.add(item.value)
                    parts.append(item)
            parts.append(stmt.block)
        values = [p for p in parts if isinstance(p, _Item) and p.value is not None]
        if not values and actions[-1] == "ignore":
            return None  # ignores nothing: no filter at all (its comments still get placed)
        if not values:
            what = {"protocol": "protocol", "address": "address", "tcp_state": "TCP state"}[name]
            flows = "TCP flow" if name == "tcp_state" else "flow"
            raise self.error(
                stmts[-1].words[1],
                f"at least one {what} in {stmts[-1].keyword} Accept (with an empty list "
                f"conntrackd replicates no {flows} at all)",
            )
        table.entries.append(_Entry(actions[-1], _Array(parts)))
        return table

    def filter_items(self, name: str, stmt: Stmt) -> list[_Item]:
        if name == "protocol":
            return [self.protocol_item(stmt)]
        if name == "address":
            family = 4 if stmt.keyword == "IPv4_address" else 6
            return [self.address_item(stmt, family)]
        states = [w.text for w in stmt.words if w.text not in ("for", "TCP")]
        if not states:
            return [_Item(None, stmt)]
        items = [_Item(state) for state in states]
        items[0].src = stmt
        for item in items:
            if item.value == "LISTEN":
                text = (
                    "LISTEN matched kernel state 9 (SYN_SENT2, a simultaneous open) in "
                    "conntrackd; nfsyncd accepts LISTEN but it never matches a flow"
                )
                item.notes.append(self.note(stmt, text, subject="State LISTEN"))
        return items

    def protocol_item(self, stmt: Stmt) -> _Item:
        tok = stmt.value
        if tok.kind == "kw":
            return _Item(tok.text.lower(), stmt)
        if tok.text in _PROTOCOLS:
            return _Item(_PROTOCOLS[tok.text], stmt)
        import socket  # only for names outside the usual set; /etc/protocols, like conntrackd

        try:
            number = socket.getprotobyname(tok.text)
        except OSError:
            text = "not in /etc/protocols; conntrackd skipped it with a warning, so it is dropped"
            return _Item(None, stmt, notes=[self.note(stmt, text, subject=tok.text)])
        return _Item(number, stmt, comment=f"# {tok.text}")

    def address_item(self, stmt: Stmt, family: int) -> _Item:
        tok = stmt.value
        address, slash, prefix = tok.text.partition("/")
        ip = self.parse_ip(tok, address, family, stmt.keyword)
        if not slash:
            return _Item(str(ip), stmt)
        bits = 32 if family == 4 else 128
        length = int(prefix)
        if length > bits:
            raise self.error(tok, f"a prefix length of at most {bits} after {stmt.keyword}")
        if length == bits:
            return _Item(str(ip), stmt)
        net = ipaddress.ip_network(f"{ip}/{length}", strict=False)
        if net.network_address == ip:
            return _Item(str(net), stmt)
        text = f"host bits set; conntrackd matches the network {net}, imported as such"
        return _Item(str(net), stmt, notes=[self.note(stmt, text)])

    def parse_ip(
        self, tok: Token, text: str, family: int, keyword: str
    ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        try:
            if family == 4:
                return ipaddress.IPv4Address(text)
            return ipaddress.IPv6Address(text)
        except ValueError:
            raise self.error(tok, f"an IPv{family} address after {keyword}") from None

    # -- Sync

    def sync(self, sections: list[Stmt]) -> None:
        items = [s for sec in sections if sec.block for s in sec.block.items]
        modes = [s for s in items if s.keyword == "Mode"]
        links = [s for s in items if s.keyword in ("Multicast", "UDP", "TCP")]
        options: dict[str, list[Stmt]] = {}
        expects: list[Stmt] = []
        for item in items:
            inner = item.block.items if item.keyword in ("Mode", "Options") and item.block else []
            for sub in [item] if item.keyword in _SYNC_KEYS else inner:
                if sub.keyword == "ExpectationSync":
                    expects.append(sub)
                else:
                    options.setdefault(sub.keyword, []).append(sub)
        table = _Table("sync", src=sections[0])
        self.tables.append(table)
        mode = self.mode(modes, sections[0], table)
        last = {k: self.last_wins(v, table.entries) for k, v in options.items()}
        external = (
            "DisableExternalCache" in last and last["DisableExternalCache"].value.kind == "on"
        )
        for keyword, (key, allowed) in _SYNC_KEYS.items():
            stmt = last.get(keyword)
            if stmt is None:
                continue
            if mode not in allowed:
                text = (
                    f"only used in {'/'.join(m.upper() for m in sorted(allowed))} mode and the "
                    f"mode is {mode.upper()}; conntrackd ignored it, so it is dropped"
                )
                table.entries.append(_Entry(None, src=stmt, notes=[self.note(stmt, text)]))
            elif stmt.value.kind in ("on", "off"):
                table.entries.append(_Entry(key, stmt.value.kind == "on", stmt))
            elif keyword == "CommitTimeout" and external:
                text = (
                    "conntrackd ignores CommitTimeout when DisableExternalCache is on "
                    "(it warns at startup), so it is dropped"
                )
                table.entries.append(_Entry(None, src=stmt, notes=[self.note(stmt, text)]))
            elif keyword == "CommitTimeout" and self.number(stmt) == 0:
                text = "0 means not set in conntrackd, so it is dropped"
                table.entries.append(_Entry(None, src=stmt, notes=[self.note(stmt, text)]))
            elif keyword == "CommitTimeout":
                table.entries.append(_Entry(key, self.number(stmt), stmt))
            else:
                table.entries.append(self.zero_default(stmt, key))
        table.tail.extend(modes)
        self.links(links, sections)
        self.expectations(expects)
        self.tables[-1].tail.extend(sections)

    def mode(self, modes: list[Stmt], section: Stmt, table: _Table) -> str:
        if not modes:
            text = "not set, so conntrackd used FTFW"
            note = self.note(section, text, subject="Mode")
            table.entries.append(_Entry("mode", "ftfw", None, [note]))
            return "ftfw"
        chosen = min((_MODE_ORDER.index(mode_of(s.value)), i) for i, s in enumerate(modes))
        stmt = modes[chosen[1]]
        name = mode_of(stmt.value)
        notes = []
        alias = stmt.value.text.lower()
        if alias in ("nack", "persistent"):
            text = f"'{stmt.value.text}' is the old name of {name}; imported as {name.lower()}"
            notes.append(self.note(stmt, text))
        for other in modes:
            if other is not stmt:
                text = (
                    f"ignored: conntrackd uses {name} when several Mode blocks are given "
                    "(FTFW before ALARM before NOTRACK)"
                )
                notes.append(self.note(other, text))
        table.entries.append(_Entry("mode", name.lower(), stmt, notes))
        return name.lower()

    def links(self, links: list[Stmt], sections: list[Stmt]) -> None:
        if not links:
            close = sections[-1].block.close if sections[-1].block else sections[-1].words[0]
            raise self.error(close, "a Multicast, UDP or TCP block in Sync (a dedicated link)")
        first = links[0]
        for index, link in enumerate(links):
            if index >= 4:
                raise self.error(link.words[0], "at most 4 dedicated links (this is the 5th)")
            if link.keyword != first.keyword:
                raise self.error(
                    link.words[0],
                    f"another {first.keyword} block: all dedicated links use one transport "
                    f"({first.keyword} at line {first.line})",
                )
        defaults = [s for s in links if len(s.words) > 1]
        tcp_eql = [
            sub
            for s in links
            if s.block
            for sub in s.block.items
            if sub.keyword == "ErrorQueueLength"
        ]
        seen: dict[tuple[str, int], Stmt] = {}
        for link in links:
            table = self.link(link, defaults, tcp_eql, links)
            iface = next(e.value for e in table.entries if e.key == "interface")
            port = next(e.value for e in table.entries if e.key == "port")
            assert isinstance(iface, str) and isinstance(port, int)
            if (iface, port) in seen:
                raise self.error(
                    link.words[0],
                    f"a link on another Interface or port than the one at line "
                    f"{seen[iface, port].line} (both use {iface} port {port})",
                )
            seen[iface, port] = link
            self.tables.append(table)

    def link(
        self, link: Stmt, defaults: list[Stmt], tcp_eql: list[Stmt], defaults_all: list[Stmt]
    ) -> _Table:
        assert link.block is not None
        transport = link.keyword.lower()
        table = _Table("sync.links", array=True, src=link, tail=[link])
        entries = table.entries
        entries.append(_Entry("transport", transport))
        groups: dict[str, list[Stmt]] = {}
        ignored: list[_Entry] = []
        for sub in link.block.items:
            if sub.keyword == "ErrorQueueLength":
                continue  # global in conntrackd, handled below
            if sub.keyword == "IPv6_interface":
                ignored.append(self.unsupported(sub))
                continue
            groups.setdefault(sub.keyword, []).append(sub)
        opts = {k: self.last_wins(v, entries) for k, v in groups.items()}
        iface = opts.get("Interface")
        if iface is None:
            raise self.error(
                link.block.close,
                f"Interface in {link.block.name} (conntrackd cannot open a link without it)",
            )
        if len(iface.value.text) > 15:
            raise self.error(iface.value, "an interface name of at most 15 characters")
        entries.append(_Entry("interface", iface.value.text, iface))
        if transport == "multicast":
            self.multicast_addresses(link, opts, entries)
            port_stmt = opts.get("Group")
        else:
            self.unicast_addresses(link, opts, entries)
            port_stmt = opts.get("Port")
        entries.append(self.port(link, port_stmt))
        if len(link.words) > 1 and link is defaults[-1]:
            entries.append(_Entry("default", True))
        elif len(link.words) > 1:
            text = (
                f"also given at line {defaults[-1].line}; conntrackd starts on the last link "
                "marked Default"
            )
            entries.append(_Entry(None, notes=[self.note(link, text, subject="Default")]))
        for keyword, key in (("SndSocketBuffer", "sndbuf"), ("RcvSocketBuffer", "rcvbuf")):
            if keyword in opts:
                entries.append(_Entry(key, self.number(opts[keyword]), opts[keyword]))
        if "Checksum" in opts:
            entries.append(
                _Entry("checksum", opts["Checksum"].value.kind == "on", opts["Checksum"])
            )
        if transport == "tcp" and tcp_eql:
            entries.append(self.error_queue(link, tcp_eql, len(defaults_all)))
        entries.extend(ignored)
        return table

    def error_queue(self, link: Stmt, stmts: list[Stmt], nlinks: int) -> _Entry:
        last = stmts[-1]
        value = self.number(last) or _ZERO_MEANS["ErrorQueueLength"]
        mine = [s for s in stmts if s.parent is link]
        src = mine[-1] if mine else None
        notes = []
        if src is not None and (nlinks > 1 or len(stmts) > 1 or self.number(last) == 0):
            text = (
                "conntrackd has one ErrorQueueLength for all TCP links (the last one given, "
                f"line {last.line}; 0 means 128); imported as {value} on every link"
            )
            notes.append(self.note(src, text))
        return _Entry("error_queue_length", value, src, notes)

    def port(self, link: Stmt, stmt: Stmt | None) -> _Entry:
        keyword = "Group" if link.keyword == "Multicast" else "Port"
        if stmt is not None and self.number(stmt) > 65535:
            raise self.error(stmt.value, f"a port from 1 to 65535 after {keyword}")
        if stmt is not None and self.number(stmt) > 0:
            return _Entry("port", self.number(stmt), stmt)
        what = "0" if stmt is not None else "not set"
        text = (
            f"{what}, so conntrackd used port 0, which cannot carry traffic; imported as "
            f"port = {_DEFAULT_PORT} (the port of conntrackd's examples): use the same on the "
            "peer"
        )
        note = self.note(stmt or link, text, subject=keyword)
        return _Entry("port", _DEFAULT_PORT, stmt, [note])

    def multicast_addresses(self, link: Stmt, opts: dict[str, Stmt], entries: list[_Entry]) -> None:
        assert link.block is not None
        v4, v6, local = (
            opts.get("IPv4_address"),
            opts.get("IPv6_address"),
            opts.get("IPv4_interface"),
        )
        if v4 is not None and v6 is not None:
            later = max(v4, v6, key=lambda s: s.line)
            raise self.error(
                later.words[0],
                "only one of IPv4_address and IPv6_address in Multicast (the group)",
            )
        group_stmt = v4 or v6
        if group_stmt is None:
            raise self.error(
                link.block.close, "IPv4_address or IPv6_address (the multicast group) in Multicast"
            )
        family = 4 if group_stmt is v4 else 6
        group = self.parse_ip(group_stmt.value, group_stmt.value.text, family, group_stmt.keyword)
        if not group.is_multicast:
            scope = "224.0.0.0/4" if family == 4 else "ff00::/8"
            raise self.error(
                group_stmt.value,
                f"a multicast group address ({scope}) after {group_stmt.keyword}",
            )
        if local is not None:
            if family == 6:
                raise self.error(
                    local.words[0],
                    "no IPv4_interface with an IPv6 group (Interface selects the device)",
                )
            addr = self.parse_ip(local.value, local.value.text, 4, local.keyword)
            entries.append(_Entry("local", str(addr), local))
        entries.append(_Entry("group", str(group), group_stmt))

    def unicast_addresses(self, link: Stmt, opts: dict[str, Stmt], entries: list[_Entry]) -> None:
        assert link.block is not None
        found: dict[str, tuple[Stmt, ipaddress.IPv4Address | ipaddress.IPv6Address]] = {}
        for role, names in (
            ("local", ("IPv4_address", "IPv6_address")),
            ("peer", ("IPv4_Destination_Address", "IPv6_Destination_Address")),
        ):
            given = [opts[n] for n in names if n in opts]
            if len(given) == 2:
                later = max(given, key=lambda s: s.line)
                raise self.error(later.words[0], f"only one of {names[0]} and {names[1]}")
            if given:
                stmt = given[0]
                family = 4 if stmt.keyword.startswith("IPv4") else 6
                found[role] = (
                    stmt,
                    self.parse_ip(stmt.value, stmt.value.text, family, stmt.keyword),
                )
        if "peer" not in found:
            raise self.error(
                link.block.close,
                f"IPv4_Destination_Address or IPv6_Destination_Address in {link.block.name} "
                "(the peer's address)",
            )
        peer_stmt, peer = found["peer"]
        if "local" in found:
            local_stmt, local = found["local"]
            if local.version != peer.version:
                later, other = (
                    (peer_stmt, local_stmt)
                    if peer_stmt.line >= local_stmt.line
                    else (local_stmt, peer_stmt)
                )
                version = 4 if other.keyword.startswith("IPv4") else 6
                wanted = later.keyword.replace("IPv4", f"IPv{version}").replace(
                    "IPv6", f"IPv{version}"
                )
                raise self.error(
                    later.words[0],
                    f"{wanted} ({other.keyword} at line {other.line} makes this an "
                    f"IPv{version} link)",
                )
            entries.append(_Entry("local", str(local), local_stmt))
        else:
            wildcard = "0.0.0.0" if peer.version == 4 else "::"
            text = (
                "not set, so conntrackd listened on the wildcard address; imported as "
                f'local = "{wildcard}"'
            )
            note = self.note(link, text, subject=f"IPv{peer.version}_address")
            entries.append(_Entry("local", wildcard, None, [note]))
        entries.append(_Entry("peer", str(peer), peer_stmt))

    # -- expectations

    def expectations(self, stmts: list[Stmt]) -> None:
        if not stmts:
            return
        table = _Table("expectations", src=stmts[0])
        last = stmts[-1]
        table.entries.append(_Entry("sync", last.value.kind != "off", last))
        lists = [s for s in stmts if s.block is not None]
        if lists and last.value.kind != "off":
            parts: list[_Item | Block] = []
            seen: set[str] = set()
            for stmt in lists:
                assert stmt.block is not None
                for sub in stmt.block.items:
                    name = sub.value.text
                    parts.append(_Item(None if name.lower() in seen else name, sub))
                    seen.add(name.lower())
                parts.append(stmt.block)
            if seen:
                table.entries.append(_Entry("helpers", _Array(parts)))
        table.tail.extend(s.parent for s in stmts if s.parent is not None)
        self.tables.append(table)

    # -- Stats

    def stats(self, sections: list[Stmt]) -> None:
        table = _Table(None, tail=list(sections))
        for sec in sections:
            table.entries.append(self.unsupported(sec))
        if not sections:
            text = (
                "not present: conntrackd ran in stats mode, which nfsyncd does not support; "
                "without [sync] nfsyncd runs as a single node that only mirrors the kernel "
                "table, the closest equivalent"
            )
            self.header_notes.append(self.note(None, text, subject="Sync"))
        if table.entries:
            self.tables.append(table)

    # -- Helper

    def helpers(self, sections: list[Stmt]) -> None:
        types: list[Stmt] = []
        setup: list[_Entry] = []
        for sec in sections:
            assert sec.block is not None
            for stmt in sec.block.items:
                if stmt.keyword == "Setup":
                    setup.append(self.unsupported(stmt))
                else:
                    types.append(stmt)
        tables = [self.helper_type(stmt) for stmt in types]
        queues: dict[int, Stmt] = {}
        for stmt, group in zip(types, tables, strict=True):
            entry = next(e for e in group[0].entries if e.key == "queue")
            assert isinstance(entry.value, int)
            other = queues.setdefault(entry.value, stmt)
            if other is not stmt:
                where = entry.src.value if entry.src is not None else stmt.words[1]
                raise self.error(
                    where,
                    f"a QueueNum other than {entry.value}, which {other.head()} at line "
                    f"{other.line} uses already",
                )
        suggestions = [t for t in map(self.suggestion, types) if t is not None]
        if setup:
            self.tables.append(_Table(None, entries=setup))
        self.tables.extend(suggestions)
        for group in tables:
            self.tables.extend(group)
        if sections and self.tables:
            self.tables[-1].tail.extend(sections)

    def helper_type(self, stmt: Stmt) -> list[_Table]:
        assert stmt.block is not None
        name, l3, l4 = stmt.words[1], stmt.words[2], stmt.words[3]
        if l3.text not in ("inet", "inet6"):
            raise self.error(l3, f"inet or inet6 after Type {name.text}")
        if l4.text not in ("tcp", "udp"):
            raise self.error(l4, f"tcp or udp after Type {name.text} {l3.text}")
        known = _USERSPACE_HELPERS.get(name.text)
        if known is None:
            names = ", ".join(_USERSPACE_HELPERS)
            raise self.error(name, f"the name of a conntrackd user-space helper ({names})")
        protocols, default_max, default_timeout = known
        if l4.text not in protocols:
            raise self.error(
                l4, f"{' or '.join(protocols)} (the {name.text} helper only handles that)"
            )
        table = _Table("helpers.userspace", array=True, src=stmt, tail=[stmt])
        entries = table.entries
        entries.append(_Entry("name", name.text))
        entries.append(_Entry("family", l3.text))
        entries.append(_Entry("protocol", l4.text))
        groups: dict[str, list[Stmt]] = {}
        for sub in stmt.block.items:
            groups.setdefault(sub.keyword, []).append(sub)
        firsts: dict[str, Stmt] = {}
        for key, subs in groups.items():
            firsts[key] = subs[0]  # conntrackd applies these in reverse, so the first one wins
            for dup in subs[1:]:
                text = f"also given at line {subs[0].line}; conntrackd uses the first one"
                entries.append(_Entry(None, src=dup, notes=[self.note(dup, text)]))
        queue = firsts.get("QueueNum")
        if queue is None:
            text = "not set, so conntrackd used queue 0"
            note = self.note(stmt, text, subject="QueueNum")
            entries.append(_Entry("queue", 0, None, [note]))
        elif self.number(queue) > 65535:
            raise self.error(queue.value, "a queue number from 0 to 65535 after QueueNum")
        else:
            entries.append(_Entry("queue", self.number(queue), queue))
        if "QueueLen" in firsts:
            entries.append(_Entry("queue_len", self.number(firsts["QueueLen"]), firsts["QueueLen"]))
        tables = [table]
        policy = firsts.get("Policy")
        if policy is None:
            text = (
                f"not set, so conntrackd used the {name.text} helper's built-in policy; written "
                "out explicitly"
            )
            note = self.note(stmt, text, subject="Policy")
            pol = _Table("helpers.userspace.policies", array=True, notes=[note])
            pol.entries += [
                _Entry("name", name.text),
                _Entry("expect_max", default_max),
                _Entry("expect_timeout", default_timeout),
            ]
            tables.append(pol)
        else:
            tables.append(self.policy(policy, name.text))
        return tables

    def policy(self, stmt: Stmt, helper: str) -> _Table:
        assert stmt.block is not None
        if stmt.value.text != helper:
            raise self.error(
                stmt.value, f"the policy name {helper} (the {helper} helper has no other policy)"
            )
        if not stmt.block.items:
            raise self.error(
                stmt.block.close,
                f"ExpectMax or ExpectTimeout in Policy {helper} (conntrackd rejects an empty "
                "policy)",
            )
        table = _Table("helpers.userspace.policies", array=True, src=stmt, tail=[stmt])
        table.entries.append(_Entry("name", helper))
        fields: dict[str, list[Stmt]] = {}
        for sub in stmt.block.items:
            fields.setdefault(sub.keyword, []).append(sub)
        for keyword, key in (("ExpectMax", "expect_max"), ("ExpectTimeout", "expect_timeout")):
            if keyword in fields:
                sub = self.last_wins(fields[keyword], table.entries)
                table.entries.append(_Entry(key, self.number(sub), sub))
            else:
                text = (
                    "not set: a Policy block replaces the built-in policy as a whole, so "
                    "conntrackd used 0"
                )
                note = self.note(stmt, text, subject=keyword)
                table.entries.append(_Entry(key, 0, None, [note]))
        return table

    def suggestion(self, stmt: Stmt) -> _Table | None:
        name, l3, l4 = (w.text for w in stmt.words[1:4])
        port = _KERNEL_HELPER_PORTS.get(name)
        if port is None:
            return None
        text = (
            f"{name} is also an in-kernel helper: kernels >= 6.0 run a helper only where a rule "
            "assigns it, which conntrackd left to your own iptables/nft rules; a commented-out "
            "[[helpers.assign]] suggestion was added (if enabled while the kernel's "
            f"nf_conntrack_{name} is loaded, that helper takes the traffic, not the user-space "
            "one)"
        )
        table = _Table("helpers.assign", array=True, commented=True)
        table.notes.append(self.note(stmt, text, subject=f"Type {name}"))
        table.entries += [
            _Entry("helper", name),
            _Entry("protocol", l4),
            _Entry("ports", _Array([_Item(port)])),
            _Entry("family", "ip" if l3 == "inet" else "ip6"),
        ]
        return table


# ------------------------------------------------------------------------------- writer


def _quote(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _scalar(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return _quote(value)


def _clean(text: str) -> str:
    """A comment TOML accepts: no control characters but tab."""
    return "".join(
        ch if ch == "\t" or (ord(ch) >= 0x20 and ord(ch) != 0x7F) else "?" for ch in text
    )


def _subtree_comments(node: Stmt | Block) -> Iterator[Comment]:
    if isinstance(node, Block):
        for stmt in node.items:
            yield from _subtree_comments(stmt)
        yield from node.footer
        return
    yield from node.leading
    yield from node.trailing
    if node.block is not None:
        yield from _subtree_comments(node.block)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.claimed: set[int] = set()

    def emit(self, line: str, prefix: str = "") -> None:
        self.lines.append(prefix + line if line else prefix.rstrip())

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def unclaimed(self, comments: list[Comment]) -> list[Comment]:
        return [c for c in comments if id(c) not in self.claimed]

    def separate(self, indent: str) -> None:
        """An empty line between a key and the comments that introduce the next one."""
        last = self.lines[-1] if self.lines else ""
        key_line = " = " in last and not last.startswith("#") and not last.endswith("[")
        if not indent and key_line:
            self.lines.append("")

    def comments(self, comments: list[Comment], indent: str = "", prefix: str = "") -> None:
        for c in self.unclaimed(comments):
            self.separate(indent)
            self.claimed.add(id(c))
            last = self.lines[-1].removeprefix("# ") if self.lines else ""
            if c.blank_before and last and not last.startswith("[") and not last.endswith("["):
                self.lines.append("")
            self.emit(indent + _clean(c.text), prefix)

    def note(self, text: str, indent: str = "", prefix: str = "") -> None:
        wrapped = textwrap.wrap(
            text,
            width=99 - len(indent),
            initial_indent="# ",
            subsequent_indent="#   ",
            break_long_words=False,
            break_on_hyphens=False,
        )
        self.separate(indent)
        for line in wrapped:
            self.emit(indent + _clean(line), prefix)

    def lead(self, stmt: Stmt | None, indent: str = "", prefix: str = "") -> None:
        """Comments above stmt, its enclosing blocks' first: they explain what follows."""
        if stmt is None:
            return
        chain: list[Stmt] = []
        node: Stmt | None = stmt
        while node is not None:
            chain.append(node)
            node = node.parent
        for anc in reversed(chain):
            self.comments(anc.leading, indent, prefix)
            if anc.block is not None or anc is not stmt:
                self.comments(anc.trailing, indent, prefix)

    def inline(self, stmt: Stmt | None) -> str:
        if stmt is None or stmt.block is not None:
            return ""
        rest = self.unclaimed(stmt.trailing)
        if not rest:
            return ""
        self.claimed.add(id(rest[0]))
        return "  " + _clean(rest[0].text)

    def flush(self, node: Stmt | Block, prefix: str = "") -> None:
        """Comments of node nobody claimed yet; a Block gives only its closing comments."""
        found = node.footer if isinstance(node, Block) else list(_subtree_comments(node))
        self.comments(sorted(found, key=lambda c: c.line), prefix=prefix)

    def table(self, table: _Table) -> None:
        prefix = "# " if table.commented else ""
        self.blank()
        self.lead(table.src)
        for text in table.notes:
            self.note(text)
        if table.name is not None:
            self.emit(f"[[{table.name}]]" if table.array else f"[{table.name}]", prefix)
        for entry in table.entries:
            self.entry(entry, prefix)
        for node in table.tail:
            self.flush(node)

    def entry(self, entry: _Entry, prefix: str) -> None:
        self.lead(entry.src)
        for text in entry.notes:
            self.note(text)
        if entry.key is None:
            if entry.src is not None:
                self.comments(entry.src.trailing)
            return
        if isinstance(entry.value, _Array):
            self.array(entry.key, entry.value, prefix)
        elif entry.value is not None:
            self.emit(f"{entry.key} = {_scalar(entry.value)}{self.inline(entry.src)}", prefix)
        if entry.src is not None:
            self.comments(entry.src.trailing)

    def has_comments(self, array: _Array) -> bool:
        for part in array.parts:
            if isinstance(part, Block):
                if self.unclaimed(part.footer):
                    return True
            elif (
                part.comment
                or part.notes
                or part.value is None
                or (part.src is not None and self.unclaimed(part.src.leading + part.src.trailing))
            ):
                return True
        return False

    def array(self, key: str, array: _Array, prefix: str) -> None:
        values = [p.value for p in array.parts if isinstance(p, _Item) and p.value is not None]
        inline = "[" + ", ".join(_scalar(v) for v in values) + "]"
        if not self.has_comments(array) and len(key) + len(inline) < 96:
            self.emit(f"{key} = {inline}", prefix)
            return
        self.emit(f"{key} = [", prefix)
        pad = "    "
        for part in array.parts:
            if isinstance(part, Block):
                self.comments(part.footer, pad, prefix)
                continue
            self.lead(part.src, pad, prefix)
            for text in part.notes:
                self.note(text, pad, prefix)
            if part.value is None:
                if part.src is not None:
                    self.comments(part.src.trailing, pad, prefix)
                continue
            tail = (part.comment and "  " + part.comment) or ""
            self.emit(f"{pad}{_scalar(part.value)},{tail}{self.inline(part.src)}", prefix)
            if part.src is not None and part.src.block is None:
                self.comments(part.src.trailing, pad, prefix)
        self.emit("]", prefix)


def convert(conf: ConfFile) -> tuple[str, list[str]]:
    """Render the nfsyncd TOML for a parsed conntrackd.conf; returns (toml, notes)."""
    conv = _Converter(conf)
    conv.run()
    out = _Writer()
    source = _clean(conf.source)
    out.emit(f"# nfsyncd configuration generated from {source} by nfsyncctl config import.")
    out.emit('# Lines starting with "# conntrackd:" explain options that have no nfsyncd')
    out.emit("# equivalent or whose meaning changed: review them before use.")
    first = conf.items[0] if conf.items else None
    if first is not None and first.words[0].blank_before and first.leading:
        out.blank()  # the file's own header: it describes the whole file, not the first section
        out.comments(first.leading)
    if conv.header_notes:
        out.blank()
    for text in conv.header_notes:
        out.note(text)
    for table in conv.tables:
        out.table(table)
    rest = sorted(
        (c for s in conf.items for c in _subtree_comments(s) if id(c) not in out.claimed),
        key=lambda c: c.line,
    )
    rest += out.unclaimed(conf.footer)
    if rest:
        out.blank()
        out.comments(rest)
    while out.lines and out.lines[-1] == "":
        out.lines.pop()
    notes = [text for _, text in sorted(conv.notes, key=lambda n: n[0])]
    return "\n".join(out.lines) + "\n", notes
