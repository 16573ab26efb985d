"""What a configuration value can be: the dataclasses and the converters that fill them.

There is one frozen dataclass per TOML table. Field names are the TOML key names, so an error
path, a ``changed()`` path and the example file all use the same words. Values are normalised
by the converters at the end of this module (bytes, seconds, ``ipaddress`` objects, protocol
and state numbers), so consumers never re-parse strings. A converter checks one raw value and
knows nothing about where it sits; ``config.py`` walks the tables and checks across keys.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, is_dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Final, Generic, Literal, TypeVar, cast

from nfsyncd._config_locate import KeyPath

__all__ = [
    "CT_EVENT_NAMES",
    "DEFAULT_CT_EVENTS",
    "LIVE_KEYS",
    "Config",
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
    "split_listen",
]

T = TypeVar("T")

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
PortRange = tuple[int, int]
"""Inclusive ``(first, last)``; a single port is ``(p, p)``."""

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
SyncMode = Literal["ftfw", "alarm", "notrack"]
Transport = Literal["udp", "multicast", "tcp"]
L4Protocol = Literal["tcp", "udp"]
AssignFamily = Literal["inet", "ip", "ip6"]
HelperFamily = Literal["inet", "inet6"]
HelperMismatch = Literal["warn", "fatal"]

MiB: Final = 1 << 20

LIVE_KEYS: Final[frozenset[str]] = frozenset(
    {
        "general.log_level",
        "general.log_format",
        "general.overrun_resync_delay",
        "general.cache_limit",
        "general.event_batch_limit",
        "general.event_coalesce",
        "filter.*",
        "expectations.helpers",
        "helpers.assign",
        "nftables.*",
    }
)
"""Key paths a reload (SIGHUP) applies without a restart; ``x.*`` covers everything under x.

``helpers.assign`` and ``nftables.*`` take effect by re-applying the generated nft table.
Everything else (sockets, buffers, the sync mode and links, helper queues, the metrics
listener, polling vs events) is wired up once at start, so changing it needs a restart.
"""


@dataclass(frozen=True, slots=True)
class General:
    """[general]: logging, the control socket and how kernel events are read."""

    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    control_socket: str = "/run/nfsyncd/control.sock"
    netlink_buffer_size: int = 16 * MiB
    netlink_buffer_max: int = 128 * MiB
    overrun_resync_delay: float | None = 30.0
    """Seconds; None = never resync after an overrun."""
    reliable_events: bool = False
    poll_interval: float | None = None
    """Seconds between dumps in polling mode; None = event mode."""
    cache_limit: int = 262144
    event_batch_limit: int = 100
    event_coalesce: float = 0.002
    """Seconds: the least time between two reads of kernel events while they keep coming
    (0 = read each as it arrives)."""


# Not ``slots=True``: with Generic, the class that option rebuilds breaks ``ListFilter[int](...)``
# (the frozen __setattr__ refers to the old class); a hand-written __slots__ avoids that.
@dataclass(frozen=True)
class ListFilter(Generic[T]):
    """One accept-or-ignore list of ``[filter.*]``."""

    __slots__ = ("action", "items")
    action: Literal["accept", "ignore"]
    items: tuple[T, ...]


@dataclass(frozen=True, slots=True)
class FilterConfig:
    """[filter]: which flows are synchronised; ``None`` sub-filters let everything pass."""

    kernel_side: bool = False
    protocol: ListFilter[int] | None = None
    """IP protocol numbers."""
    address: ListFilter[IPAddress | IPNetwork] | None = None
    """A plain address stays an address; ``a/n`` becomes a network."""
    tcp_state: ListFilter[int] | None = None
    """Kernel TCP conntrack state numbers; LISTEN is 10, which no kernel state has."""


@dataclass(frozen=True, slots=True)
class SyncLink:
    """One [[sync.links]] entry: a dedicated link to the peer."""

    transport: Transport
    interface: str
    local: IPAddress | None = None
    peer: IPAddress | None = None
    group: IPAddress | None = None
    port: int = 3780
    default: bool = False
    sndbuf: int = 0
    rcvbuf: int = 0
    checksum: bool = True
    segment_offload: bool = True
    peer_version: tuple[int, int, int] = (1, 4, 7)
    error_queue_length: int = 128


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """[sync]: the peer protocol; absent (``Config.sync is None``) in single-node mode."""

    mode: SyncMode
    links: tuple[SyncLink, ...]
    disable_external_cache: bool = False
    disable_internal_cache: bool = False
    startup_resync: bool = False
    commit_timeout: float | None = None
    purge_timeout: float = 60.0
    tcp_window_tracking: bool = False
    resend_queue_size: int = 131072
    ack_window_size: int = 300
    refresh_time: float = 60.0
    cache_timeout: float = 180.0

    @property
    def default_link(self) -> int:
        """Index of the link that sends first (the one marked default, else the first)."""
        return next((i for i, link in enumerate(self.links) if link.default), 0)


@dataclass(frozen=True, slots=True)
class ExpectConfig:
    """[expectations]: whether (and which) conntrack expectations are synchronised."""

    sync: bool = False
    helpers: tuple[str, ...] = ()
    """Empty = every helper; else case-insensitive prefixes of helper names (as written)."""
    helper_mismatch: HelperMismatch = "warn"
    """What a helper set differing from the peer's does: log and count, or stop the daemon."""


@dataclass(frozen=True, slots=True)
class HelperAssign:
    """One [[helpers.assign]] entry: a kernel helper attached by the nft table."""

    helper: str
    protocol: L4Protocol
    ports: tuple[PortRange, ...]
    family: AssignFamily = "inet"
    addresses: tuple[IPAddress | IPNetwork, ...] = ()
    interfaces: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HelperPolicy:
    """One expectation policy of a userspace helper."""

    name: str
    expect_max: int
    expect_timeout: float


@dataclass(frozen=True, slots=True)
class UserspaceHelper:
    """One [[helpers.userspace]] entry: a userspace helper fed by an NFQUEUE."""

    name: str
    protocol: L4Protocol
    queue: int
    policies: tuple[HelperPolicy, ...]
    family: HelperFamily = "inet"
    queue_len: int = 0


@dataclass(frozen=True, slots=True)
class HelpersConfig:
    """[helpers]: kernel helper assignments and userspace helpers."""

    assign: tuple[HelperAssign, ...] = ()
    userspace: tuple[UserspaceHelper, ...] = ()


CT_EVENT_NAMES: Final = (
    "new",
    "related",
    "destroy",
    "reply",
    "assured",
    "protoinfo",
    "helper",
    "mark",
    "seqadj",
    "secmark",
    "label",
)
"""``ct event`` names nft knows, in kernel bit order (the order nft lists them in)."""

DEFAULT_CT_EVENTS: Final = ("new", "related", "destroy", "assured", "helper", "mark", "label")
"""What a takeover needs: a flow when it starts, again once assured, and when it ends.

"protoinfo" and "reply" add an event per TCP state change (exact TCP state replication) at
a CPU cost on both nodes.
"""


@dataclass(frozen=True, slots=True)
class NftConfig:
    """[nftables]: the table nfsyncd generates and owns."""

    enabled: bool = True
    table: str = "nfsyncd"
    event_filter: bool = True
    notrack_sync: bool = True
    events: tuple[str, ...] = DEFAULT_CT_EVENTS
    """``ct event`` names (kernel bit order, no duplicates) the event filter lets through."""


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """[metrics]: the HTTP listener for /metrics, /healthz and /readyz."""

    listen: str = "127.0.0.1:9477"

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` to bind (IPv6 without brackets); None when disabled."""
        return split_listen(self.listen)


@dataclass(frozen=True, slots=True)
class Config:
    """A whole, validated configuration file."""

    general: General
    filter: FilterConfig
    sync: SyncConfig | None
    expectations: ExpectConfig
    helpers: HelpersConfig
    nftables: NftConfig
    metrics: MetricsConfig
    source: str
    """The file this came from, or "<defaults>"."""

    def changed(self, new: Config) -> list[str]:
        """Key paths (e.g. ``sync.links[0].port``) whose value differs in ``new``.

        A sub-filter, a list of plain values, an added or removed list element and an added
        or removed ``[sync]`` are each reported as one path. ``source`` is not compared.
        """
        out: list[str] = []
        for field in fields(self):
            if field.name != "source":
                _diff(getattr(self, field.name), getattr(new, field.name), field.name, out)
        return out

    def restart_needed(self, new: Config) -> list[str]:
        """The changed key paths that a reload cannot apply (see ``LIVE_KEYS``)."""
        return [path for path in self.changed(new) if not is_live(path)]


def is_live(path: str) -> bool:
    """Whether a changed key path is covered by ``LIVE_KEYS``."""
    for key in LIVE_KEYS:
        base = key.removesuffix(".*")
        if path == base or path.startswith((base + "[", base + ".")):
            return True
    return False


def _diff(old: object, new: object, path: str, out: list[str]) -> None:
    if old == new:
        return
    if (
        isinstance(old, tuple)
        and isinstance(new, tuple)
        and all(_is_record(item) for item in (*old, *new))
    ):
        for index in range(max(len(old), len(new))):
            item = f"{path}[{index}]"
            if index < len(old) and index < len(new):
                _diff(old[index], new[index], item, out)
            else:
                out.append(item)
        return
    if _is_record(old) and type(old) is type(new):
        for field in fields(old):  # type: ignore[arg-type]
            _diff(getattr(old, field.name), getattr(new, field.name), f"{path}.{field.name}", out)
        return
    out.append(path)


def _is_record(value: object) -> bool:
    # A sub-filter is one setting to the user, so it is compared as a whole.
    return is_dataclass(value) and not isinstance(value, (type, ListFilter))


def split_listen(listen: str) -> tuple[str, int] | None:
    """Split ``host:port`` / ``[v6]:port``; None for ""; ValueError when malformed."""
    if listen == "":
        return None
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError(listen)
    if host.startswith("[") and host.endswith("]"):
        IPv6Address(host[1:-1])  # raises ValueError
        return host[1:-1], int(port)
    if not host or ":" in host or "[" in host or "]" in host:
        raise ValueError(listen)
    return host, int(port)


# --- converters: one raw TOML value -> a normalised value, or BadValue --------------------

MAX_SOCKET_SIZE: Final = 2**31 - 1  # socket buffer options take a C int

TCP_STATES: Final[dict[str, int]] = {
    "SYN_SENT": 1,
    "SYN_RECV": 2,
    "ESTABLISHED": 3,
    "FIN_WAIT": 4,
    "CLOSE_WAIT": 5,
    "LAST_ACK": 6,
    "TIME_WAIT": 7,
    "CLOSE": 8,
    "LISTEN": 10,  # conntrackd accepts it; no kernel state has this number, so it never matches
}
_TCP_STATE_ALIASES: Final = {**TCP_STATES, "CLOSED": 8}

PROTOCOLS: Final[dict[str, int]] = {
    "tcp": 6,
    "udp": 17,
    "udplite": 136,
    "icmp": 1,
    "ipv6-icmp": 58,
    "icmpv6": 58,
    "sctp": 132,
    "dccp": 33,
    "gre": 47,
}

_SIZE = re.compile(r"\s*(\d+)\s*(?:([KMG])(?:iB)?)?\s*", re.IGNORECASE)
_SIZE_UNITS: Final = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_VERSION = re.compile(r"(\d{1,4})\.(\d{1,4})\.(\d{1,4})")
_PORT_RANGE = re.compile(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*")
_NFT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,31}")
_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+")


class BadValue(Exception):
    """A value is wrong; ``problems`` are (path below the value, message) pairs."""

    def __init__(self, message: str, *, problems: list[tuple[KeyPath, str]] | None = None):
        super().__init__(message)
        self.problems = problems if problems is not None else [((), message)]


def show(value: object) -> str:
    """A value the way it would be written in TOML, shortened for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        escaped = escaped.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
        return f'"{escaped}"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        shown = "[" + ", ".join(show(item) for item in value) + "]"
        return shown if len(shown) <= 60 else f"an array of {len(value)} items"
    return str(value)


def one_of(choices: Iterable[str]) -> str:
    return ", ".join(f'"{choice}"' for choice in choices)


def range_text(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"must be {low}-{high}"
    if low is not None:
        return f"must be >= {low}"
    return f"must be <= {high}"


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadValue(f"must be true or false, got {show(value)}")
    return value


def integer(low: int | None = None, high: int | None = None) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadValue(f"must be an integer, got {show(value)}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise BadValue(f"{range_text(low, high)}, got {value}")
        return value

    return convert


def choice(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise BadValue(f"must be one of {one_of(choices)}, got {show(value)}")
        return value

    return convert


def string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadValue(f"must be a non-empty string, got {show(value)}")
    return value


def size(low: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        elif isinstance(value, str) and (found := _SIZE.fullmatch(value)) is not None:
            unit = found.group(2)
            size = int(found.group(1)) * (_SIZE_UNITS[unit.upper()] if unit else 1)
        else:
            raise BadValue(
                f'must be a number of bytes or a string like "64KiB", "16MiB", "1GiB", '
                f"got {show(value)}"
            )
        if size < low:
            raise BadValue(f"must be >= {low}, got {show(value)}")
        if size > MAX_SOCKET_SIZE:
            raise BadValue(f"must be at most {MAX_SOCKET_SIZE} bytes (2GiB - 1), got {show(value)}")
        return size

    return convert


def duration(
    *, positive: bool = False, or_false: bool = False, maximum: float | None = None
) -> Callable[[Any], float | None]:
    def convert(value: Any) -> float | None:
        if value is False and or_false:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            what = "a number of seconds or false" if or_false else "a number of seconds"
            raise BadValue(f"must be {what}, got {show(value)}")
        if not math.isfinite(value):
            raise BadValue(f"must be a finite number of seconds, got {show(value)}")
        if value < 0 or (positive and value == 0):
            raise BadValue(f"must be {'> 0' if positive else '>= 0'}, got {show(value)}")
        if maximum is not None and value > maximum:
            raise BadValue(f"must be <= {maximum:g}, got {show(value)}")
        return float(value)

    return convert


def seconds(*, positive: bool = False, maximum: float | None = None) -> Callable[[Any], float]:
    inner = duration(positive=positive, maximum=maximum)
    return lambda value: cast(float, inner(value))


def address(value: Any) -> IPAddress:
    if not isinstance(value, str):
        raise BadValue(f"must be an IPv4 or IPv6 address string, got {show(value)}")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise BadValue(f"{show(value)} is not an IPv4 or IPv6 address") from None


def address_or_network(value: Any) -> IPAddress | IPNetwork:
    if not isinstance(value, str):
        raise BadValue(f"must be an IPv4 or IPv6 address or network string, got {show(value)}")
    try:
        if "/" not in value:
            return ipaddress.ip_address(value)
        interface = ipaddress.ip_interface(value)
    except ValueError:
        raise BadValue(f"{show(value)} is not an IPv4 or IPv6 address or network") from None
    network = interface.network
    if interface.ip != network.network_address:
        raise BadValue(f"{value}: host bits set; did you mean {network}?")
    return network


def ifname(value: Any) -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value.encode()) <= 15
        or value in (".", "..")
        or any(char in "/:" or char.isspace() for char in value)
    ):
        raise BadValue(
            'must be an interface name (1-15 characters, no "/", ":" or whitespace), '
            f"got {show(value)}"
        )
    return value


def protocol(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return integer(0, 255)(value)
    if isinstance(value, str):
        number = PROTOCOLS.get(value.lower())
        if number is None:
            number = _system_protocols().get(value.lower())
        if number is not None:
            return number
    raise BadValue(
        f"{show(value)} is not a protocol name or number "
        f"({', '.join(PROTOCOLS)}, a name from /etc/protocols, or 0-255)"
    )


@functools.cache
def _system_protocols() -> dict[str, int]:
    """Names and aliases from /etc/protocols (read once, only for names we don't know)."""
    names: dict[str, int] = {}
    try:
        with open("/etc/protocols", encoding="utf-8", errors="replace") as file:
            for line in file:
                words = line.split("#", 1)[0].split()
                if len(words) >= 2 and words[1].isdigit() and int(words[1]) <= 255:
                    for name in (words[0], *words[2:]):
                        names.setdefault(name.lower(), int(words[1]))
    except OSError:
        pass
    return names


def tcp_state(value: Any) -> int:
    state = _TCP_STATE_ALIASES.get(value.upper()) if isinstance(value, str) else None
    if state is None:
        raise BadValue(f"must be one of {one_of(TCP_STATES)}, got {show(value)}")
    return state


def port_range(value: Any) -> PortRange:
    if isinstance(value, int) and not isinstance(value, bool):
        port = integer(1, 65535)(value)
        return (port, port)
    found = _PORT_RANGE.fullmatch(value) if isinstance(value, str) else None
    if found is not None:
        first, last = int(found.group(1)), int(found.group(2))
        if 1 <= first <= last <= 65535:
            return (first, last)
    raise BadValue(f'must be a port 1-65535 or a range "first-last", got {show(value)}')


def version(value: Any) -> tuple[int, int, int]:
    found = _VERSION.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        raise BadValue(f'must be a version "X.Y.Z", got {show(value)}')
    return (int(found.group(1)), int(found.group(2)), int(found.group(3)))


def absolute_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise BadValue(f"must be an absolute path, got {show(value)}")
    if len(value.encode()) > 107:
        raise BadValue(f"must be at most 107 bytes long (a UNIX socket path), got {show(value)}")
    return value


def nft_name(value: Any) -> str:
    if not isinstance(value, str) or _NFT_NAME.fullmatch(value) is None:
        raise BadValue(
            'must be a table name (a letter or "_", then up to 31 letters, digits, "_" or "-"), '
            f"got {show(value)}"
        )
    return value


def listen(value: Any) -> str:
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        address = split_listen(value)
        if address is not None and ":" not in address[0] and not _HOSTNAME.fullmatch(address[0]):
            raise ValueError(value)
    except ValueError:
        raise BadValue(
            f'must be "host:port", "[ipv6-address]:port" or "" (disabled), got {show(value)}'
        ) from None
    return value


def array(
    item: Callable[[Any], T], what: str, *, nonempty: bool = False
) -> Callable[[Any], list[T]]:
    """A list converter that reports every bad element at its own index."""

    def convert(value: Any) -> list[T]:
        if not isinstance(value, list):
            raise BadValue(f"must be an array of {what}, got {show(value)}")
        if nonempty and not value:
            raise BadValue(f"must not be empty (an array of {what})")
        out: list[T] = []
        problems: list[tuple[KeyPath, str]] = []
        for index, element in enumerate(value):
            try:
                out.append(item(element))
            except BadValue as bad:
                problems.extend(((index, *below), message) for below, message in bad.problems)
        if problems:
            raise BadValue(problems[0][1], problems=problems)
        return out

    return convert
