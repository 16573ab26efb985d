"""TOML configuration: parse, validate and normalise into frozen dataclasses.

The schema lives in /work/shared's config_schema (and in config/nfsyncd.toml, which shows
every option). Validation reports every problem of a file in one go, each naming the file,
line, key path, the bad value and what was expected, because an operator editing a config on
a firewall should not have to restart the daemon once per typo.

Both the daemon and ``nfsyncctl`` import this module, so it sticks to the standard library
and cheap imports (``difflib`` is only loaded when a key is unknown).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from typing import Any, Final, Literal, TypeVar, cast

from nfsyncd import _config_types as v
from nfsyncd._config_locate import KeyPath, LineMap, locate
from nfsyncd._config_types import (
    CT_EVENT_NAMES,
    LIVE_KEYS,
    TCP_STATES,
    AssignFamily,
    Config,
    ExpectConfig,
    FilterConfig,
    General,
    HelperAssign,
    HelperFamily,
    HelperPolicy,
    HelpersConfig,
    IPAddress,
    IPNetwork,
    L4Protocol,
    ListFilter,
    LogFormat,
    LogLevel,
    MetricsConfig,
    NftConfig,
    PortRange,
    SyncConfig,
    SyncLink,
    SyncMode,
    Transport,
    UserspaceHelper,
    is_live,
)

__all__ = [
    "CT_EVENT_NAMES",
    "HELPER_DEFAULTS",
    "HELPER_IPV4_ONLY",
    "HELPER_KERNEL",
    "LIVE_KEYS",
    "TCP_STATES",
    "Config",
    "ConfigError",
    "ExpectConfig",
    "FilterConfig",
    "General",
    "HelperAssign",
    "HelperPolicy",
    "HelpersConfig",
    "IPAddress",
    "IPNetwork",
    "ListFilter",
    "MetricsConfig",
    "NftConfig",
    "PortRange",
    "SyncConfig",
    "SyncLink",
    "UserspaceHelper",
    "default_config",
    "is_live",
    "load_config",
    "parse_config",
]

T = TypeVar("T")
D = TypeVar("D")

DEFAULT_SOURCE: Final = "<defaults>"
MAX_LINKS: Final = 4
#: seconds; a longer pause between event reads would only add sync lag, not save CPU
MAX_EVENT_COALESCE: Final = 0.1

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")
SYNC_MODES: Final = ("ftfw", "alarm", "notrack")
TRANSPORTS: Final = ("udp", "multicast", "tcp")
L4_PROTOCOLS: Final = ("tcp", "udp")

MODE_ONLY: Final[dict[str, tuple[str, ...]]] = {
    "disable_external_cache": ("ftfw", "notrack"),
    "disable_internal_cache": ("notrack",),
    "startup_resync": ("ftfw", "notrack"),
    "resend_queue_size": ("ftfw",),
    "ack_window_size": ("ftfw",),
    "refresh_time": ("alarm",),
}
"""[sync] keys that only some modes use; giving one for another mode is a mistake."""

HELPER_DEFAULTS: Final[dict[str, tuple[L4Protocol, tuple[PortRange, ...]]]] = {
    "ftp": ("tcp", ((21, 21),)),
    "tftp": ("udp", ((69, 69),)),
    "sip": ("udp", ((5060, 5060),)),
    "h323": ("tcp", ((1720, 1720),)),
    "ras": ("udp", ((1719, 1719),)),
    "q931": ("tcp", ((1720, 1720),)),
    "irc": ("tcp", ((6667, 6667),)),
    "pptp": ("tcp", ((1723, 1723),)),
    "amanda": ("udp", ((10080, 10080),)),
    "sane": ("tcp", ((6566, 6566),)),
    "snmp": ("udp", ((161, 161),)),
    "netbios-ns": ("udp", ((137, 137),)),
}
"""Kernel helpers [[helpers.assign]] may name: their usual protocol and port(s)."""

HELPER_KERNEL: Final[dict[str, dict[L4Protocol, str]]] = {
    "ftp": {"tcp": "ftp"},
    "tftp": {"udp": "tftp"},
    "sip": {"udp": "sip", "tcp": "sip"},
    "h323": {"tcp": "Q.931", "udp": "RAS"},
    "ras": {"udp": "RAS"},
    "q931": {"tcp": "Q.931"},
    "irc": {"tcp": "irc"},
    "pptp": {"tcp": "pptp"},
    "amanda": {"udp": "amanda"},
    "sane": {"tcp": "sane"},
    "snmp": {"udp": "snmp"},
    "netbios-ns": {"udp": "netbios-ns"},
}
"""Per [[helpers.assign]] name: the kernel's helper name for each protocol it handles."""

HELPER_IPV4_ONLY: Final = frozenset({"irc", "pptp", "snmp", "netbios-ns"})
"""Kernel helpers registered for IPv4 only (their ``ct helper`` objects get l3proto ip)."""

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOML_POSITION = re.compile(r"\s*\((?:at line (\d+), column \d+|at end of document)\)\s*$")


class ConfigError(Exception):
    """One or more problems in a configuration file.

    The attributes describe the first problem (in file order); ``errors`` lists them all,
    each a ``ConfigError`` of its own, and ``str()`` gives one line per problem:
    ``SOURCE:LINE: PATH: MESSAGE``, without ``LINE`` when it is unknown and without
    ``PATH`` for problems of the file as a whole (syntax, reading).
    """

    source: str
    line: int | None
    path: str
    message: str
    errors: list[ConfigError]

    def __init__(
        self,
        source: str,
        line: int | None,
        path: str,
        message: str,
        errors: Sequence[ConfigError] | None = None,
    ) -> None:
        super().__init__(source, line, path, message)
        self.source = source
        self.line = line
        self.path = path
        self.message = message
        self.errors = [self] if errors is None else list(errors)

    @classmethod
    def combine(cls, errors: Sequence[ConfigError]) -> ConfigError:
        """One exception for several problems, ordered by line (unknown lines last)."""
        ordered = sorted(errors, key=lambda e: (e.line is None, e.line or 0))
        first = ordered[0]
        return cls(first.source, first.line, first.path, first.message, ordered)

    def __str__(self) -> str:
        return "\n".join(error.describe() for error in self.errors)

    def describe(self) -> str:
        """This problem alone, as one line."""
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        if self.path:
            return f"{where}: {self.path}: {self.message}"
        return f"{where}: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        errors = None if self.errors == [self] else self.errors
        return (type(self), (self.source, self.line, self.path, self.message, errors))


def default_config() -> Config:
    """The configuration an empty file gives: single-node mode, nothing filtered."""
    return Config(
        general=General(),
        filter=FilterConfig(),
        sync=None,
        expectations=ExpectConfig(),
        helpers=HelpersConfig(),
        nftables=NftConfig(),
        metrics=MetricsConfig(),
        source=DEFAULT_SOURCE,
    )


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and parse a config file; every problem is raised as one ``ConfigError``."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError(source, None, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")  # tolerate the BOM some editors write
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(source, line, "", "TOML syntax error: not valid UTF-8") from None
    return parse_config(text, source)


def parse_config(text: str, source: str) -> Config:
    """Parse TOML text; ``source`` names it in errors and in ``Config.source``."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(text, source, exc) from None
    ctx = _Context(source, locate(text))
    root = _Table(ctx, (), raw)
    root.check_keys(_keys(Config, exclude="source"))
    nftables = _nftables(root.table("nftables"))
    config = Config(
        general=_general(root.table("general")),
        filter=_filter(root.table("filter"), nftables),
        sync=_sync(root.table("sync")),
        expectations=_expectations(root.table("expectations")),
        helpers=_helpers(root.table("helpers"), nftables),
        nftables=nftables,
        metrics=_metrics(root.table("metrics")),
        source=source,
    )
    if ctx.errors:
        raise ConfigError.combine(ctx.errors)
    return config


def _syntax_error(text: str, source: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    message = str(exc)
    position = _TOML_POSITION.search(message)
    line: int | None = None
    if position is not None:
        message = message[: position.start()]
        if position.group(1) is not None:
            line = int(position.group(1))
        else:  # at end of document: the last line
            line = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
    return ConfigError(source, line, "", f"TOML syntax error: {message}")


# --- collecting problems -------------------------------------------------------------------


class _Context:
    def __init__(self, source: str, lines: LineMap) -> None:
        self.source = source
        self.lines = lines
        self.errors: list[ConfigError] = []

    def error(self, path: KeyPath, message: str, *, line_of: KeyPath | None = None) -> None:
        line = self.lines.nearest(path if line_of is None else line_of)
        self.errors.append(ConfigError(self.source, line, _format_path(path), message))


class _Table:
    """One TOML table being read, with the key path that leads to it."""

    def __init__(self, ctx: _Context, path: KeyPath, raw: dict[str, Any]) -> None:
        self.ctx = ctx
        self.path = path
        self.raw = raw
        self.bad: set[str] = set()  # keys given with a value that was reported as wrong
        self.misspelt: set[str] = set()  # valid keys suggested for an unknown key

    def given(self, key: str) -> bool:
        return key in self.raw

    def ok(self, *keys: str) -> bool:
        """Whether none of ``keys`` was reported as wrong (absent keys are fine)."""
        return not self.bad.intersection(keys)

    def error(self, key: str | None, message: str) -> None:
        path = self.path if key is None else (*self.path, key)
        if key is not None:
            self.bad.add(key)
        self.ctx.error(path, message)

    def check_keys(self, valid: Sequence[str]) -> bool:
        """Report keys that are not in ``valid``; True when there were none."""
        unknown = [key for key in self.raw if key not in valid]
        for key in unknown:
            import difflib  # only on this error path: keeps the module's import cheap

            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f'did you mean "{close[0]}"?' if close else "valid keys: " + ", ".join(valid)
            self.ctx.error((*self.path, key), f"unknown key; {hint}")
            self.misspelt.update(close)
        return not unknown

    def missing(self, key: str, message: str) -> None:
        """Report a required key as absent, unless a misspelling of it was reported."""
        if key in self.misspelt:
            self.bad.add(key)
        else:
            self.error(key, message)

    def get(self, key: str, default: D, convert: Callable[[Any], T]) -> T | D:
        """The converted value of ``key``, or ``default`` when absent or wrong (reported)."""
        if key not in self.raw:
            return default
        return self.convert(key, convert, default)

    def require(self, key: str, convert: Callable[[Any], T], missing: str) -> T | None:
        """Like ``get`` but reports ``missing`` when the key is absent."""
        if key not in self.raw:
            self.missing(key, missing)
            return None
        return self.convert(key, convert, None)

    def convert(self, key: str, convert: Callable[[Any], T], default: D) -> T | D:
        try:
            return convert(self.raw[key])
        except v.BadValue as bad:
            self.bad.add(key)
            for below, message in bad.problems:
                self.ctx.error((*self.path, key, *below), message)
            return default

    def table(self, key: str) -> _Table | None:
        """The sub-table ``key``; None when absent or not a table (reported)."""
        if key not in self.raw:
            return None
        value = self.raw[key]
        if not isinstance(value, dict):
            self.error(key, f"must be a table, got {v.show(value)}")
            return None
        return _Table(self.ctx, (*self.path, key), value)

    def tables(self, key: str, header: str) -> list[_Table] | None:
        """The array of tables ``key``; None when absent or not an array (reported)."""
        if key not in self.raw:
            return None
        value = self.raw[key]
        if not isinstance(value, list):
            self.error(key, f"must be an array of tables ({header}), got {v.show(value)}")
            return None
        out: list[_Table] = []
        for index, item in enumerate(value):
            path = (*self.path, key, index)
            if isinstance(item, dict):
                out.append(_Table(self.ctx, path, item))
            else:
                self.bad.add(key)
                self.ctx.error(path, f"must be a table, got {v.show(item)}")
        return out


def _keys(cls: type, exclude: str = "") -> tuple[str, ...]:
    return tuple(field.name for field in fields(cls) if field.name != exclude)


def _format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if _BARE_KEY.fullmatch(part) else v.show(part)
            out += f".{key}" if out else key
    return out


# --- tables ---------------------------------------------------------------------------------


def _general(table: _Table | None) -> General:
    default = General()
    if table is None:
        return default
    table.check_keys(_keys(General))
    general = General(
        log_level=cast(LogLevel, table.get("log_level", default.log_level, v.choice(*LOG_LEVELS))),
        log_format=cast(
            LogFormat, table.get("log_format", default.log_format, v.choice(*LOG_FORMATS))
        ),
        control_socket=table.get("control_socket", default.control_socket, v.absolute_path),
        netlink_buffer_size=table.get(
            "netlink_buffer_size", default.netlink_buffer_size, v.size(1)
        ),
        netlink_buffer_max=table.get("netlink_buffer_max", default.netlink_buffer_max, v.size(1)),
        overrun_resync_delay=table.get(
            "overrun_resync_delay", default.overrun_resync_delay, v.duration(or_false=True)
        ),
        reliable_events=table.get("reliable_events", default.reliable_events, v.boolean),
        poll_interval=table.get(
            "poll_interval", default.poll_interval, v.duration(positive=True, or_false=True)
        ),
        cache_limit=table.get("cache_limit", default.cache_limit, v.integer(1)),
        event_batch_limit=table.get("event_batch_limit", default.event_batch_limit, v.integer(1)),
        event_coalesce=table.get(
            "event_coalesce", default.event_coalesce, v.seconds(maximum=MAX_EVENT_COALESCE)
        ),
    )
    size, ceiling = general.netlink_buffer_size, general.netlink_buffer_max
    if size > ceiling and table.ok("netlink_buffer_size", "netlink_buffer_max"):
        if table.given("netlink_buffer_max"):
            table.error(
                "netlink_buffer_max",
                f"must be >= netlink_buffer_size ({size}), "
                f"got {v.show(table.raw['netlink_buffer_max'])}",
            )
        else:
            table.error(
                "netlink_buffer_size",
                f"must be <= netlink_buffer_max ({ceiling}), "
                f"got {v.show(table.raw['netlink_buffer_size'])}",
            )
    return general


def _filter(table: _Table | None, nftables: NftConfig) -> FilterConfig:
    if table is None:
        return FilterConfig()
    table.check_keys(_keys(FilterConfig))
    kernel_side = table.get("kernel_side", False, v.boolean)
    if kernel_side and not (nftables.enabled and nftables.event_filter):
        table.error(
            "kernel_side",
            "needs nftables.enabled = true and nftables.event_filter = true "
            "(the kernel side is the generated ct event rules)",
        )
    return FilterConfig(
        kernel_side=kernel_side,
        protocol=_list_filter(table, "protocol", v.protocol, "protocol names or numbers"),
        address=_list_filter(table, "address", v.address_or_network, "addresses or networks"),
        tcp_state=_list_filter(table, "tcp_state", v.tcp_state, "TCP state names"),
    )


def _list_filter(
    parent: _Table, key: str, item: Callable[[Any], T], what: str
) -> ListFilter[T] | None:
    table = parent.table(key)
    if table is None:
        return None
    known = table.check_keys(("accept", "ignore"))
    actions = [action for action in ("accept", "ignore") if table.given(action)]
    lists = {
        action: table.get(action, None, v.array(item, what, nonempty=True)) for action in actions
    }
    if len(actions) == 2:
        table.error(None, "give either accept or ignore, not both")
        return None
    if not actions:
        if known:
            table.error(None, "give accept or ignore (or remove the table)")
        return None
    action = cast(Literal["accept", "ignore"], actions[0])
    items = lists[action]
    return None if items is None else ListFilter(action, tuple(items))


def _sync(table: _Table | None) -> SyncConfig | None:
    if table is None:
        return None
    table.check_keys(_keys(SyncConfig))
    mode = table.require(
        "mode",
        v.choice(*SYNC_MODES),
        f"required when [sync] is present (one of {v.one_of(SYNC_MODES)})",
    )
    for key, modes in MODE_ONLY.items():
        if mode is not None and table.given(key) and mode not in modes:
            allowed = " or ".join(f'"{name}"' for name in modes)
            table.error(key, f'only valid with mode = {allowed} (mode is "{mode}")')
    default = SyncConfig(mode="ftfw", links=())

    def get(key: str, convert: Callable[[Any], T]) -> T:
        value: T = getattr(default, key)
        return value if not table.ok(key) else table.get(key, value, convert)

    # Read every option before deciding the result, so that all their problems are reported.
    options = SyncConfig(
        mode="ftfw",
        links=(),
        disable_external_cache=get("disable_external_cache", v.boolean),
        disable_internal_cache=get("disable_internal_cache", v.boolean),
        startup_resync=get("startup_resync", v.boolean),
        commit_timeout=get("commit_timeout", v.duration(or_false=True)),
        purge_timeout=get("purge_timeout", v.seconds()),
        tcp_window_tracking=get("tcp_window_tracking", v.boolean),
        resend_queue_size=get("resend_queue_size", v.integer(1)),
        ack_window_size=get("ack_window_size", v.integer(1)),
        refresh_time=get("refresh_time", v.seconds(positive=True)),
        cache_timeout=get("cache_timeout", v.seconds(positive=True)),
    )
    links = _links(table)
    if mode is None or links is None:
        return None
    return replace(options, mode=cast(SyncMode, mode), links=links)


def _links(sync: _Table) -> tuple[SyncLink, ...] | None:
    tables = sync.tables("links", "[[sync.links]]")
    if tables is None:
        if not sync.given("links"):
            sync.missing("links", "required when [sync] is present (add a [[sync.links]] table)")
        return None
    count = len(sync.raw["links"])
    if count == 0:
        sync.error("links", "at least 1 link, got 0")
    elif count > MAX_LINKS:
        sync.ctx.error(
            (*sync.path, "links"),
            f"at most {MAX_LINKS} links, got {count}",
            line_of=(*sync.path, "links", MAX_LINKS),
        )
    links = [_link(table) for table in tables]
    _check_links(tables, links)
    if None in links or len(links) != count or not 1 <= count <= MAX_LINKS:
        return None
    return tuple(link for link in links if link is not None)


def _link(table: _Table) -> SyncLink | None:
    table.check_keys(_keys(SyncLink))
    default = SyncLink(transport="udp", interface="")
    transport = table.require(
        "transport", v.choice(*TRANSPORTS), f"required (one of {v.one_of(TRANSPORTS)})"
    )
    interface = table.require("interface", v.ifname, "required")
    local = table.get("local", None, v.address)
    peer = table.get("peer", None, v.address)
    group = table.get("group", None, v.address)
    options = SyncLink(
        transport="udp",
        interface="",
        port=table.get("port", default.port, v.integer(1, 65535)),
        default=table.get("default", default.default, v.boolean),
        sndbuf=table.get("sndbuf", default.sndbuf, v.size(0)),
        rcvbuf=table.get("rcvbuf", default.rcvbuf, v.size(0)),
        checksum=table.get("checksum", default.checksum, v.boolean),
        segment_offload=table.get("segment_offload", default.segment_offload, v.boolean),
        peer_version=table.get("peer_version", default.peer_version, v.version),
        error_queue_length=table.get(
            "error_queue_length", default.error_queue_length, v.integer(1)
        ),
    )
    complete = _check_transport(table, transport, local, peer, group)
    if transport is None or interface is None or not complete or table.bad:
        return None
    return replace(
        options,
        transport=cast(Transport, transport),
        interface=interface,
        local=local,
        peer=peer,
        group=group,
    )


def _check_transport(
    table: _Table,
    transport: str | None,
    local: IPAddress | None,
    peer: IPAddress | None,
    group: IPAddress | None,
) -> bool:
    """Check the keys that depend on the transport; False when a required one is missing."""
    if transport is None:
        return False
    complete = True
    using = f'with transport = "{transport}"'
    if transport == "multicast":
        if table.given("peer"):
            table.error("peer", f"not allowed {using} (the destination is group)")
        if not table.given("group"):
            table.missing("group", f"required {using}")
            complete = False
    else:
        for key in ("local", "peer"):
            if not table.given(key):
                table.missing(key, f"required {using}")
                complete = False
        if table.given("group"):
            table.error("group", f"not allowed {using} (only with multicast)")
        for key, address in (("local", local), ("peer", peer)):
            if address is not None and address.is_multicast:
                table.error(key, f"must not be a multicast address {using}, got {address}")
    if table.given("error_queue_length") and transport != "tcp":
        table.error(
            "error_queue_length", f'only valid with transport = "tcp" (transport is "{transport}")'
        )
    if local is not None and peer is not None and local.version != peer.version:
        table.error(
            "peer", f"must be the same address family as local (IPv{local.version}), got {peer}"
        )
    if group is not None and transport == "multicast":
        if not group.is_multicast:
            table.error("group", f"must be a multicast address, got {group}")
        elif local is not None and local.version != group.version:
            table.error(
                "group",
                f"must be the same address family as local (IPv{local.version}), got {group}",
            )
    return complete


def _check_links(tables: list[_Table], links: list[SyncLink | None]) -> None:
    """Checks across links: one transport, one default, distinct (interface, port)."""
    first_transport: tuple[int, str] | None = None
    first_default: int | None = None
    seen: dict[tuple[str, int], int] = {}
    for index, (table, link) in enumerate(zip(tables, links, strict=True)):
        transport = table.raw.get("transport")
        if transport in TRANSPORTS and table.ok("transport"):
            if first_transport is None:
                first_transport = (index, transport)
            elif transport != first_transport[1]:
                where, used = first_transport
                table.error(
                    "transport",
                    f'all links must use the same transport (sync.links[{where}] uses "{used}"), '
                    f'got "{transport}"',
                )
        if table.raw.get("default") is True:
            if first_default is None:
                first_default = index
            else:
                table.error(
                    "default",
                    f"at most one link may be the default (sync.links[{first_default}] already is)",
                )
        if link is not None:
            other = seen.setdefault((link.interface, link.port), index)
            if other != index:
                table.error(
                    None,
                    f"same interface and port as sync.links[{other}] "
                    f'("{link.interface}", {link.port})',
                )


def _expectations(table: _Table | None) -> ExpectConfig:
    if table is None:
        return ExpectConfig()
    table.check_keys(_keys(ExpectConfig))
    sync = table.get("sync", False, v.boolean)
    helpers: list[str] = table.get("helpers", [], v.array(v.string, "helper names"))
    if helpers and not sync and table.ok("sync"):
        table.error("helpers", "only valid with sync = true")
    mismatch = cast(
        v.HelperMismatch, table.get("helper_mismatch", "warn", v.choice("warn", "fatal"))
    )
    return ExpectConfig(sync=sync, helpers=tuple(helpers), helper_mismatch=mismatch)


def _helpers(table: _Table | None, nftables: NftConfig) -> HelpersConfig:
    if table is None:
        return HelpersConfig()
    table.check_keys(_keys(HelpersConfig))
    assign = [_assign(entry) for entry in table.tables("assign", "[[helpers.assign]]") or []]
    if assign and not nftables.enabled:
        table.error("assign", "needs nftables.enabled = true (helpers are assigned by its rules)")
    userspace_tables = table.tables("userspace", "[[helpers.userspace]]") or []
    userspace = [_userspace(entry) for entry in userspace_tables]
    queues: dict[int, int] = {}
    for index, (entry, helper) in enumerate(zip(userspace_tables, userspace, strict=True)):
        if helper is not None:
            other = queues.setdefault(helper.queue, index)
            if other != index:
                entry.error(
                    "queue", f"queue {helper.queue} is already used by helpers.userspace[{other}]"
                )
    return HelpersConfig(
        assign=tuple(entry for entry in assign if entry is not None),
        userspace=tuple(entry for entry in userspace if entry is not None),
    )


def _assign(table: _Table) -> HelperAssign | None:
    table.check_keys(_keys(HelperAssign))
    helper = table.require(
        "helper", v.choice(*HELPER_DEFAULTS), f"required (one of {v.one_of(HELPER_DEFAULTS)})"
    )
    protocol, ports = HELPER_DEFAULTS.get(helper or "", ("tcp", ()))
    protocol = cast(L4Protocol, table.get("protocol", protocol, v.choice(*L4_PROTOCOLS)))
    ports = tuple(
        table.get("ports", list(ports), v.array(v.port_range, "ports or ranges", nonempty=True))
    )
    family = cast(AssignFamily, table.get("family", "inet", v.choice("inet", "ip", "ip6")))
    addresses: list[IPAddress | IPNetwork] = table.get(
        "addresses", [], v.array(v.address_or_network, "addresses or networks")
    )
    interfaces: list[str] = table.get("interfaces", [], v.array(v.ifname, "interface names"))
    if helper is not None and table.ok("protocol") and protocol not in HELPER_KERNEL[helper]:
        handled = " or ".join(f'"{name}"' for name in HELPER_KERNEL[helper])
        table.error(
            "protocol",
            f'the kernel\'s {helper} helper handles protocol = {handled}, got "{protocol}"',
        )
    if helper in HELPER_IPV4_ONLY:
        if family == "ip6" and table.ok("family"):
            table.error("family", f'the kernel\'s {helper} helper is IPv4 only, got "ip6"')
        family = "ip"
    if family != "inet":
        version = 4 if family == "ip" else 6
        for index, address in enumerate(addresses):
            if address.version != version:
                table.ctx.error(
                    (*table.path, "addresses", index),
                    f"must be an IPv{version} address or network "
                    + (
                        f"(the kernel's {helper} helper is IPv4 only), "
                        if helper in HELPER_IPV4_ONLY
                        else f'with family = "{family}", '
                    )
                    + f"got {address}",
                )
    if helper is None or table.bad:
        return None
    return HelperAssign(
        helper=helper,
        protocol=protocol,
        ports=ports,
        family=family,
        addresses=tuple(addresses),
        interfaces=tuple(interfaces),
    )


def _userspace(table: _Table) -> UserspaceHelper | None:
    table.check_keys(_keys(UserspaceHelper))
    name = table.require("name", v.string, "required")
    protocol = table.require(
        "protocol", v.choice(*L4_PROTOCOLS), f"required (one of {v.one_of(L4_PROTOCOLS)})"
    )
    queue = table.require("queue", v.integer(0, 65535), "required (an NFQUEUE number 0-65535)")
    family = cast(HelperFamily, table.get("family", "inet", v.choice("inet", "inet6")))
    queue_len = table.get("queue_len", 0, v.integer(0, 2**32 - 1))
    policies = _policies(table)
    if name is None or protocol is None or queue is None or policies is None or table.bad:
        return None
    return UserspaceHelper(
        name=name,
        protocol=cast(L4Protocol, protocol),
        queue=queue,
        policies=policies,
        family=family,
        queue_len=queue_len,
    )


def _policies(helper: _Table) -> tuple[HelperPolicy, ...] | None:
    header = "[[helpers.userspace.policies]]"
    tables = helper.tables("policies", header)
    if tables is None:
        if not helper.given("policies"):
            helper.missing("policies", f"required (add a {header} table)")
        return None
    if not helper.raw["policies"]:
        helper.error("policies", "at least 1 policy, got 0")
    policies: list[HelperPolicy | None] = []
    names: dict[str, int] = {}
    for index, table in enumerate(tables):
        table.check_keys(_keys(HelperPolicy))
        name = table.require("name", v.string, "required")
        expect_max = table.require("expect_max", v.integer(0), "required")
        timeout = table.require("expect_timeout", v.seconds(), "required (seconds)")
        if name is not None and names.setdefault(name, index) != index:
            table.error("name", f'policy "{name}" is already defined by policies[{names[name]}]')
        if name is None or expect_max is None or timeout is None:
            policies.append(None)
        else:
            policies.append(HelperPolicy(name, expect_max, timeout))
    if None in policies or not policies or len(policies) != len(helper.raw["policies"]):
        return None
    return tuple(policy for policy in policies if policy is not None)


def _nftables(table: _Table | None) -> NftConfig:
    default = NftConfig()
    if table is None:
        return default
    table.check_keys(_keys(NftConfig))
    event_filter = table.get("event_filter", default.event_filter, v.boolean)
    events: list[str] = table.get(
        "events",
        list(default.events),
        v.array(v.choice(*CT_EVENT_NAMES), "ct event names", nonempty=True),
    )
    return NftConfig(
        enabled=table.get("enabled", default.enabled, v.boolean),
        table=table.get("table", default.table, v.nft_name),
        event_filter=event_filter,
        notrack_sync=table.get("notrack_sync", default.notrack_sync, v.boolean),
        events=tuple(name for name in CT_EVENT_NAMES if name in events),
    )


def _metrics(table: _Table | None) -> MetricsConfig:
    default = MetricsConfig()
    if table is None:
        return default
    table.check_keys(_keys(MetricsConfig))
    return MetricsConfig(listen=table.get("listen", default.listen, v.listen))
