"""Configuration: defaults, the example file, round trips, exact error messages, reload diffs."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import pickle
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfsyncd._config_locate import KeyPath, locate
from nfsyncd.config import (
    CT_EVENT_NAMES,
    HELPER_DEFAULTS,
    HELPER_IPV4_ONLY,
    HELPER_KERNEL,
    LIVE_KEYS,
    TCP_STATES,
    Config,
    ConfigError,
    ExpectConfig,
    FilterConfig,
    General,
    HelperAssign,
    HelperPolicy,
    HelpersConfig,
    IPAddress,
    ListFilter,
    MetricsConfig,
    NftConfig,
    SyncConfig,
    SyncLink,
    UserspaceHelper,
    default_config,
    load_config,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "nfsyncd.toml"
SRC = "nfsyncd.toml"
MiB = 1 << 20

LINK = """\
[[sync.links]]
transport = "udp"
interface = "eth1"
local = "198.18.0.1"
peer = "198.18.0.2"
"""
SYNC = '[sync]\nmode = "ftfw"\n' + LINK  # links[0] starts on line 3, its keys end on line 7


def parse(text: str) -> Config:
    return parse_config(text, SRC)


def errors_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return str(caught.value)


def no_source(config: Config) -> Config:
    return dataclasses.replace(config, source="<defaults>")


def uncomment_example(text: str, name: str) -> str:
    """Remove one "# " from every line of the named example block (markers dropped)."""
    begin, end = f"# --- {name} example begin ---", f"# --- {name} example end ---"
    assert begin in text and end in text, name
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        if line in (begin, end):
            inside = line == begin
            continue
        if inside:
            assert line.startswith("# ") or line == "#", f"example line not commented: {line!r}"
            line = line[2:]
        out.append(line)
    return "\n".join(out) + "\n"


def uncomment_defaults(text: str) -> str:
    """Turn every "# key = value" line outside the example blocks into a setting."""
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        if re.fullmatch(r"# --- \w+ example (begin|end) ---", line):
            inside = line.endswith("begin ---")
        elif not inside:
            line = re.sub(r"^# ([a-z_]+ = )", r"\1", line)
        out.append(line)
    return "\n".join(out) + "\n"


def all_keys() -> set[str]:
    """Every TOML key name the schema has (the dataclass field names)."""
    classes: tuple[type, ...] = (General, FilterConfig, SyncConfig, SyncLink, ExpectConfig)
    classes += (HelpersConfig, HelperAssign, UserspaceHelper, HelperPolicy, NftConfig)
    classes += (MetricsConfig,)
    keys = {field.name for cls in classes for field in dataclasses.fields(cls)}
    return keys | {"accept", "ignore"}


# --- defaults and the example file ---------------------------------------------------------


def test_defaults() -> None:
    config = default_config()
    assert config.source == "<defaults>"
    assert config.sync is None
    assert config.general == General(
        log_level="info",
        log_format="text",
        control_socket="/run/nfsyncd/control.sock",
        netlink_buffer_size=16777216,
        netlink_buffer_max=134217728,
        overrun_resync_delay=30.0,
        reliable_events=False,
        poll_interval=None,
        cache_limit=262144,
        event_batch_limit=100,
        event_coalesce=0.002,
    )
    assert config.filter == FilterConfig()
    assert config.expectations == ExpectConfig(sync=False, helpers=())
    assert config.helpers == HelpersConfig(assign=(), userspace=())
    assert config.nftables == NftConfig(
        enabled=True, table="nfsyncd", event_filter=True, notrack_sync=True
    )
    assert config.nftables.events == (
        "new",
        "related",
        "destroy",
        "assured",
        "helper",
        "mark",
        "label",
    )
    assert config.metrics.listen == "127.0.0.1:9477"
    assert config.metrics.address == ("127.0.0.1", 9477)


def test_empty_file_and_empty_tables_are_the_defaults() -> None:
    assert no_source(parse("")) == default_config()
    empty_tables = "[general]\n[filter]\n[expectations]\n[helpers]\n[nftables]\n[metrics]\n"
    assert no_source(parse(empty_tables)) == default_config()
    assert parse("").source == SRC


def test_dataclasses_are_frozen_and_slotted() -> None:
    config = default_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.general.log_level = "debug"  # type: ignore[misc]
    for value in (config, config.general, config.filter, config.nftables, config.metrics):
        assert not hasattr(value, "__dict__")
    flt = ListFilter[int]("accept", (6,))  # parametrised construction must work too
    assert flt == ListFilter("accept", (6,)) and not hasattr(flt, "__dict__")
    assert hash(default_config()) == hash(default_config())


def test_example_file_parses_to_the_defaults() -> None:
    config = load_config(EXAMPLE)
    assert config.source == str(EXAMPLE)
    assert no_source(config) == default_config()


def test_example_file_defaults_match_the_code() -> None:
    # Each "# key = value" line outside the examples shows the default: setting them all
    # must change nothing.
    text = uncomment_defaults(EXAMPLE.read_text())
    assert text.count("\nlog_level = ") == 1  # the uncommenting did something
    assert no_source(parse(text)) == default_config()


def test_example_file_shows_every_option_with_its_conntrackd_equivalent() -> None:
    text = EXAMPLE.read_text()
    for key in sorted(all_keys()):
        pattern = rf"^(# )*({key} = |\[\[?[a-z.]*\b{key}\]\]?$)"  # a key or a [table] header
        assert re.search(pattern, text, re.MULTILINE), f"{key} is not in the example"
    for field in dataclasses.fields(General):
        assert re.search(rf"\[conntrackd: [^\]]+\]\n# {field.name} = ", text), field.name
    assert "KiB" in text and '"16M" = "16MiB"' in text  # size units are explained


def test_sync_example_uncommented_is_ftfw_over_udp() -> None:
    config = parse(uncomment_example(EXAMPLE.read_text(), "sync"))
    assert config.sync is not None
    assert config.sync.mode == "ftfw"
    assert config.sync.links == (
        SyncLink(
            transport="udp",
            interface="eth1",
            local=ipaddress.ip_address("198.18.0.1"),
            peer=ipaddress.ip_address("198.18.0.2"),
            default=True,
        ),
    )
    assert dataclasses.replace(config.sync, mode="ftfw", links=()) == SyncConfig("ftfw", ())
    assert no_source(dataclasses.replace(config, sync=None)) == default_config()


def test_filter_and_helpers_examples_uncommented_are_valid() -> None:
    text = EXAMPLE.read_text()
    flt = parse(uncomment_example(text, "filter")).filter
    assert flt.protocol == ListFilter("accept", (6, 17, 132, 33, 1, 58))
    assert flt.address is not None and flt.address.action == "ignore"
    assert ipaddress.ip_network("198.18.1.0/24") in flt.address.items
    assert flt.tcp_state == ListFilter("ignore", (1, 2, 7, 8))
    helpers = parse(uncomment_example(text, "helpers")).helpers
    assert [entry.helper for entry in helpers.assign] == ["ftp"]
    assert helpers.assign[0].ports == ((21, 21), (2121, 2122))
    assert [entry.name for entry in helpers.userspace] == ["tftp"]
    assert helpers.userspace[0].policies == (HelperPolicy("tftp", 1, 5.0),)
    everything = text
    for name in ("filter", "sync", "helpers"):
        everything = uncomment_example(everything, name)
    parse(everything)


# --- round trips -----------------------------------------------------------------------------

SECTION_CASES: list[tuple[str, str, Callable[[Config], object], object]] = [
    (
        "general",
        """
        [general]
        log_level = "debug"
        log_format = "json"
        control_socket = "/run/x/ctl.sock"
        netlink_buffer_size = "64KiB"
        netlink_buffer_max = "1G"
        overrun_resync_delay = false
        reliable_events = true
        poll_interval = 2.5
        cache_limit = 1000
        event_batch_limit = 50
        """,
        lambda c: c.general,
        General("debug", "json", "/run/x/ctl.sock", 65536, 1 << 30, None, True, 2.5, 1000, 50),
    ),
    (
        "filter",
        """
        [filter]
        kernel_side = true
        [filter.protocol]
        ignore = ["TCP", "icmpv6", 47, "udplite"]
        [filter.address]
        accept = ["198.18.0.1", "198.18.0.0/15", "2001:db8::/32", "198.18.0.7/32"]
        [filter.tcp_state]
        accept = ["established", "Closed", "LISTEN"]
        """,
        lambda c: c.filter,
        FilterConfig(
            kernel_side=True,
            protocol=ListFilter("ignore", (6, 58, 47, 136)),
            address=ListFilter(
                "accept",
                (
                    ipaddress.ip_address("198.18.0.1"),
                    ipaddress.ip_network("198.18.0.0/15"),
                    ipaddress.ip_network("2001:db8::/32"),
                    ipaddress.ip_network("198.18.0.7/32"),
                ),
            ),
            tcp_state=ListFilter("accept", (3, 8, 10)),
        ),
    ),
    (
        "sync alarm over multicast",
        """
        [sync]
        mode = "alarm"
        commit_timeout = 10
        purge_timeout = 0
        tcp_window_tracking = true
        refresh_time = 15
        cache_timeout = 45.5
        [[sync.links]]
        transport = "multicast"
        interface = "eth1"
        group = "225.0.0.50"
        [[sync.links]]
        transport = "multicast"
        interface = "eth2"
        local = "198.18.1.1"
        group = "225.0.0.51"
        port = 3781
        default = true
        sndbuf = "1M"
        rcvbuf = 2097152
        checksum = false
        peer_version = "1.4.5"
        """,
        lambda c: c.sync,
        SyncConfig(
            mode="alarm",
            links=(
                SyncLink("multicast", "eth1", group=ipaddress.ip_address("225.0.0.50")),
                SyncLink(
                    "multicast",
                    "eth2",
                    local=ipaddress.ip_address("198.18.1.1"),
                    group=ipaddress.ip_address("225.0.0.51"),
                    port=3781,
                    default=True,
                    sndbuf=MiB,
                    rcvbuf=2 * MiB,
                    checksum=False,
                    peer_version=(1, 4, 5),
                ),
            ),
            commit_timeout=10.0,
            purge_timeout=0.0,
            tcp_window_tracking=True,
            refresh_time=15.0,
            cache_timeout=45.5,
        ),
    ),
    (
        "sync notrack over tcp, inline links",
        """
        [sync]
        mode = "notrack"
        disable_external_cache = true
        disable_internal_cache = true
        startup_resync = true
        links = [
        """
        + '{transport = "tcp", interface = "eth1", local = "2001:db8::1", '
        + 'peer = "2001:db8::2", error_queue_length = 16},\n]\n',
        lambda c: c.sync,
        SyncConfig(
            mode="notrack",
            links=(
                SyncLink(
                    "tcp",
                    "eth1",
                    local=ipaddress.ip_address("2001:db8::1"),
                    peer=ipaddress.ip_address("2001:db8::2"),
                    error_queue_length=16,
                ),
            ),
            disable_external_cache=True,
            disable_internal_cache=True,
            startup_resync=True,
        ),
    ),
    (
        "sync ftfw",
        '[sync]\nmode = "ftfw"\nresend_queue_size = 10\nack_window_size = 20\n' + LINK,
        lambda c: (
            (c.sync.resend_queue_size, c.sync.ack_window_size, c.sync.default_link)
            if c.sync
            else None
        ),
        (10, 20, 0),
    ),
    (
        "expectations",
        '[expectations]\nsync = true\nhelpers = ["ftp", "SIP"]\n',
        lambda c: c.expectations,
        ExpectConfig(sync=True, helpers=("ftp", "SIP")),
    ),
    (
        "helpers",
        """
        [[helpers.assign]]
        helper = "sip"
        [[helpers.assign]]
        helper = "h323"
        protocol = "udp"
        ports = [1720, "1000 - 1010"]
        family = "ip6"
        addresses = ["2001:db8::10", "2001:db8:1::/48"]
        interfaces = ["eth0", "bond0.100"]
        [[helpers.userspace]]
        name = "ssdp"
        protocol = "udp"
        queue = 5
        [[helpers.userspace.policies]]
        name = "ssdp"
        expect_max = 8
        expect_timeout = 300
        [[helpers.userspace]]
        name = "dhcpv6"
        family = "inet6"
        protocol = "udp"
        queue = 6
        queue_len = 4096
        policies = [{name = "dhcpv6", expect_max = 1, expect_timeout = 0.5}]
        """,
        lambda c: c.helpers,
        HelpersConfig(
            assign=(
                HelperAssign("sip", "udp", ((5060, 5060),)),
                HelperAssign(
                    "h323",
                    "udp",
                    ((1720, 1720), (1000, 1010)),
                    family="ip6",
                    addresses=(
                        ipaddress.ip_address("2001:db8::10"),
                        ipaddress.ip_network("2001:db8:1::/48"),
                    ),
                    interfaces=("eth0", "bond0.100"),
                ),
            ),
            userspace=(
                UserspaceHelper("ssdp", "udp", 5, (HelperPolicy("ssdp", 8, 300.0),)),
                UserspaceHelper(
                    "dhcpv6",
                    "udp",
                    6,
                    (HelperPolicy("dhcpv6", 1, 0.5),),
                    family="inet6",
                    queue_len=4096,
                ),
            ),
        ),
    ),
    (
        "nftables",
        '[nftables]\nenabled = false\ntable = "_fw-2"\n'
        "event_filter = false\nnotrack_sync = false\n",
        lambda c: c.nftables,
        NftConfig(enabled=False, table="_fw-2", event_filter=False, notrack_sync=False),
    ),
    (
        "nftables events: kernel order, duplicates dropped",
        '[nftables]\nevents = ["destroy", "protoinfo", "new", "destroy", "reply"]\n',
        lambda c: c.nftables.events,
        ("new", "destroy", "reply", "protoinfo"),
    ),
    (
        "an IPv4-only kernel helper gets family ip",
        '[[helpers.assign]]\nhelper = "irc"\n',
        lambda c: (c.helpers.assign[0].family, c.helpers.assign[0].protocol),
        ("ip", "tcp"),
    ),
    (
        "h323 over udp (RAS)",
        '[[helpers.assign]]\nhelper = "h323"\nprotocol = "udp"\nports = [1719]\n',
        lambda c: c.helpers.assign[0].protocol,
        "udp",
    ),
    (
        "metrics v6",
        '[metrics]\nlisten = "[::1]:0"\n',
        lambda c: (c.metrics, c.metrics.address),
        (MetricsConfig("[::1]:0"), ("::1", 0)),
    ),
    (
        "metrics off",
        '[metrics]\nlisten = ""\n',
        lambda c: (c.metrics, c.metrics.address),
        (MetricsConfig(""), None),
    ),
    (
        "metrics hostname",
        '[metrics]\nlisten = "localhost:9100"\n',
        lambda c: c.metrics.address,
        ("localhost", 9100),
    ),
]


@pytest.mark.parametrize(
    ("text", "pick", "expected"),
    [case[1:] for case in SECTION_CASES],
    ids=[case[0] for case in SECTION_CASES],
)
def test_section_parses_to(text: str, pick: Callable[[Config], object], expected: object) -> None:
    text = "\n".join(line.strip() for line in text.splitlines())
    assert pick(parse(text)) == expected


def test_sizes_and_their_units() -> None:
    sizes = {
        "1024": 1024,
        "1K": 1024,
        "1KiB": 1024,
        "3 MiB": 3 * MiB,
        "16M": 16 * MiB,
        "1g": 1 << 30,
        "1gib": 1 << 30,
        "0": 0,
    }
    for text, size in sizes.items():
        config = parse(SYNC + f'sndbuf = "{text}"\n')
        assert config.sync is not None and config.sync.links[0].sndbuf == size, text


def test_a_link_with_an_ipv6_multicast_group() -> None:
    text = '[sync]\nmode = "ftfw"\n[[sync.links]]\ntransport = "multicast"\n'
    config = parse(text + 'interface = "eth1"\ngroup = "ff12::3780"\n')
    assert config.sync is not None
    assert config.sync.links[0].group == ipaddress.ip_address("ff12::3780")


def test_protocol_names_from_etc_protocols() -> None:
    protocols = Path("/etc/protocols")
    if not protocols.exists() or not re.search(r"^ospf\s+89\s", protocols.read_text(), re.M):
        pytest.skip("no /etc/protocols with ospf on this machine")
    config = parse('[filter.protocol]\naccept = ["OSPFIGP", "esp"]\n')
    assert config.filter.protocol == ListFilter("accept", (89, 50))


# A renderer from Config back to TOML, for the property test below.


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return json.dumps(str(value))
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    raise AssertionError(value)


def _pairs(record: object, *, skip: Sequence[str] = ()) -> list[str]:
    lines = []
    for field in dataclasses.fields(record):  # type: ignore[arg-type]
        value = getattr(record, field.name)
        if field.name in skip:
            continue
        if field.name == "peer_version":
            value = ".".join(map(str, value))
        elif field.name == "ports":
            value = [lo if lo == hi else f"{lo}-{hi}" for lo, hi in value]
        lines.append(f"{field.name} = {_toml(value)}")
    return lines


STATE_NAMES = {number: name for name, number in TCP_STATES.items()}
MODE_ONLY = {
    "disable_external_cache": ("ftfw", "notrack"),
    "disable_internal_cache": ("notrack",),
    "startup_resync": ("ftfw", "notrack"),
    "resend_queue_size": ("ftfw",),
    "ack_window_size": ("ftfw",),
    "refresh_time": ("alarm",),
}


def render(config: Config) -> str:
    out = ["[general]", *_pairs(config.general)]
    out += ["[filter]", f"kernel_side = {_toml(config.filter.kernel_side)}"]
    for name in ("protocol", "address", "tcp_state"):
        flt = getattr(config.filter, name)
        if flt is not None:
            items = [STATE_NAMES[i] for i in flt.items] if name == "tcp_state" else flt.items
            out += [f"[filter.{name}]", f"{flt.action} = {_toml(items)}"]
    if config.sync is not None:
        sync = config.sync
        skip = ["links"] + [key for key, modes in MODE_ONLY.items() if sync.mode not in modes]
        out += ["[sync]", *_pairs(sync, skip=skip)]
        for link in sync.links:
            skip = [key for key in ("local", "peer", "group") if getattr(link, key) is None]
            skip += [] if link.transport == "tcp" else ["error_queue_length"]
            out += ["[[sync.links]]", *_pairs(link, skip=skip)]
    out += ["[expectations]", *_pairs(config.expectations)]
    for assign in config.helpers.assign:
        out += ["[[helpers.assign]]", *_pairs(assign)]
    for helper in config.helpers.userspace:
        out += ["[[helpers.userspace]]", *_pairs(helper, skip=["policies"])]
        for policy in helper.policies:
            out += ["[[helpers.userspace.policies]]", *_pairs(policy)]
    out += ["[nftables]", *_pairs(config.nftables), "[metrics]", *_pairs(config.metrics)]
    return "\n".join(out) + "\n"


seconds = st.floats(0, 1e7, allow_nan=False)
positive_seconds = st.floats(0.001, 1e7)
sizes = st.integers(0, 2**31 - 1)
v4: st.SearchStrategy[IPAddress] = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
v6: st.SearchStrategy[IPAddress] = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))
unicast4 = v4.filter(lambda a: not a.is_multicast)
unicast6 = v6.filter(lambda a: not a.is_multicast)
mcast4: st.SearchStrategy[IPAddress] = st.builds(
    ipaddress.IPv4Address, st.integers(0xE0000000, 0xEFFFFFFF)
)
mcast6: st.SearchStrategy[IPAddress] = st.builds(
    ipaddress.IPv6Address, st.integers(0xFF << 120, 2**128 - 1)
)
networks = st.one_of(
    st.builds(lambda a, n: ipaddress.ip_network(f"{a}/{n}", strict=False), v4, st.integers(0, 32)),
    st.builds(lambda a, n: ipaddress.ip_network(f"{a}/{n}", strict=False), v6, st.integers(0, 128)),
)
port_ranges = st.tuples(st.integers(1, 65535), st.integers(0, 100)).map(
    lambda pair: (pair[0], min(65535, pair[0] + pair[1]))
)
names = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)


@st.composite
def generals(draw: st.DrawFn) -> General:
    size = draw(st.integers(1, 2**31 - 1))
    return General(
        log_level=draw(st.sampled_from(["debug", "info", "warning", "error"])),
        log_format=draw(st.sampled_from(["text", "json"])),
        control_socket="/" + draw(st.from_regex(r"[a-z0-9_./-]{0,40}", fullmatch=True)),
        netlink_buffer_size=size,
        netlink_buffer_max=draw(st.integers(size, 2**31 - 1)),
        overrun_resync_delay=draw(st.none() | seconds),
        reliable_events=draw(st.booleans()),
        poll_interval=draw(st.none() | positive_seconds),
        cache_limit=draw(st.integers(1, 2**40)),
        event_batch_limit=draw(st.integers(1, 10**6)),
        event_coalesce=draw(st.floats(0, 0.1)),
    )


def list_filters(items: st.SearchStrategy[Any]) -> st.SearchStrategy[ListFilter[Any] | None]:
    return st.none() | st.builds(
        ListFilter,
        st.sampled_from(["accept", "ignore"]),
        st.lists(items, min_size=1, max_size=5).map(tuple),
    )


@st.composite
def links(draw: st.DrawFn, transport: str, index: int) -> SyncLink:
    six = draw(st.booleans())
    local: IPAddress | None = draw(unicast6 if six else unicast4)
    peer: IPAddress | None = draw(unicast6 if six else unicast4)
    group: IPAddress | None = None
    if transport == "multicast":
        group = draw(mcast6 if six else mcast4)
        local = draw(st.none() | st.just(local))
        peer = None
    return SyncLink(
        transport=transport,  # type: ignore[arg-type]
        interface=f"eth{index}",
        local=local,
        peer=peer,
        group=group,
        port=draw(st.integers(1, 65535)),
        sndbuf=draw(sizes),
        rcvbuf=draw(sizes),
        checksum=draw(st.booleans()),
        peer_version=draw(st.tuples(*[st.integers(0, 99)] * 3)),
        error_queue_length=draw(st.integers(1, 10**6)) if transport == "tcp" else 128,
    )


@st.composite
def syncs(draw: st.DrawFn) -> SyncConfig:
    mode = draw(st.sampled_from(["ftfw", "alarm", "notrack"]))
    transport = draw(st.sampled_from(["udp", "multicast", "tcp"]))
    count = draw(st.integers(1, 4))
    made = [draw(links(transport, index)) for index in range(count)]
    default = draw(st.none() | st.integers(0, count - 1))
    if default is not None:
        made[default] = dataclasses.replace(made[default], default=True)
    values: dict[str, Any] = {
        "disable_external_cache": draw(st.booleans()),
        "disable_internal_cache": draw(st.booleans()),
        "startup_resync": draw(st.booleans()),
        "resend_queue_size": draw(st.integers(1, 10**7)),
        "ack_window_size": draw(st.integers(1, 10**4)),
        "refresh_time": draw(positive_seconds),
    }
    plain = SyncConfig("ftfw", ())
    for key, modes in MODE_ONLY.items():
        if mode not in modes:
            values[key] = getattr(plain, key)
    return SyncConfig(
        mode=mode,  # type: ignore[arg-type]
        links=tuple(made),
        commit_timeout=draw(st.none() | seconds),
        purge_timeout=draw(seconds),
        tcp_window_tracking=draw(st.booleans()),
        cache_timeout=draw(positive_seconds),
        **values,
    )


@st.composite
def assigns(draw: st.DrawFn) -> HelperAssign:
    helper = draw(st.sampled_from(sorted(HELPER_DEFAULTS)))
    family = draw(st.sampled_from(["inet", "ip", "ip6"]))
    if helper in HELPER_IPV4_ONLY:
        family = "ip"  # what the parser makes of an IPv4-only kernel helper
    addresses = st.one_of(v4, v6, networks)
    if family != "inet":
        version = 4 if family == "ip" else 6
        addresses = addresses.filter(lambda a: a.version == version)
    return HelperAssign(
        helper=helper,
        protocol=draw(st.sampled_from(sorted(HELPER_KERNEL[helper]))),
        ports=tuple(draw(st.lists(port_ranges, min_size=1, max_size=3))),
        family=family,  # type: ignore[arg-type]
        addresses=tuple(draw(st.lists(addresses, max_size=3))),
        interfaces=tuple(draw(st.lists(names, max_size=2))),
    )


@st.composite
def userspace_helpers(draw: st.DrawFn, queue: int) -> UserspaceHelper:
    policy_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    policies = tuple(
        HelperPolicy(name, draw(st.integers(0, 1000)), draw(seconds)) for name in policy_names
    )
    return UserspaceHelper(
        name=draw(names),
        protocol=draw(st.sampled_from(["tcp", "udp"])),
        queue=queue,
        policies=policies,
        family=draw(st.sampled_from(["inet", "inet6"])),
        queue_len=draw(st.integers(0, 2**32 - 1)),
    )


@st.composite
def configs(draw: st.DrawFn) -> Config:
    nftables = NftConfig(
        enabled=draw(st.booleans()),
        table=draw(st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,31}", fullmatch=True)),
        event_filter=draw(st.booleans()),
        notrack_sync=draw(st.booleans()),
        events=tuple(
            sorted(
                draw(st.sets(st.sampled_from(CT_EVENT_NAMES), min_size=1)),
                key=CT_EVENT_NAMES.index,
            )
        ),
    )
    kernel_side = draw(st.booleans()) and nftables.enabled and nftables.event_filter
    queues = draw(st.lists(st.integers(0, 65535), max_size=2, unique=True))
    expect_sync = draw(st.booleans())
    return Config(
        general=draw(generals()),
        filter=FilterConfig(
            kernel_side=kernel_side,
            protocol=draw(list_filters(st.integers(0, 255))),
            address=draw(list_filters(st.one_of(v4, v6, networks))),
            tcp_state=draw(list_filters(st.sampled_from(sorted(set(TCP_STATES.values()))))),
        ),
        sync=draw(st.none() | syncs()),
        expectations=ExpectConfig(
            sync=expect_sync,
            helpers=tuple(draw(st.lists(names, max_size=3))) if expect_sync else (),
        ),
        helpers=HelpersConfig(
            assign=tuple(draw(st.lists(assigns(), max_size=2))) if nftables.enabled else (),
            userspace=tuple(draw(userspace_helpers(queue)) for queue in queues),
        ),
        nftables=nftables,
        metrics=MetricsConfig(
            draw(st.sampled_from(["", "127.0.0.1:9477", "[::1]:0", "gw-1.example:65535"]))
        ),
        source=SRC,
    )


@settings(max_examples=150, deadline=None)
@given(configs())
def test_every_section_round_trips(config: Config) -> None:
    assert parse(render(config)) == config


# --- errors: exact messages ------------------------------------------------------------------

FIVE_LINKS = '[sync]\nmode = "notrack"\n' + "".join(
    LINK.replace('"udp"\n', f'"udp"\nport = {3780 + i}\n') for i in range(5)
)
POLICY = "[[helpers.userspace.policies]]\n"

BAD_CONFIGS: list[tuple[str, str, str]] = [
    # TOML syntax
    (
        "syntax",
        '[general]\nlog_level = "info"\nlog_format = text\n',
        "nfsyncd.toml:3: TOML syntax error: Invalid value",
    ),
    (
        "syntax duplicate key",
        "[general]\ncache_limit = 1\ncache_limit = 2\n",
        "nfsyncd.toml:3: TOML syntax error: Cannot overwrite a value",
    ),
    (
        "syntax at end of document",
        '[general]\nlog_level = "info',
        "nfsyncd.toml:2: TOML syntax error: Unterminated string",
    ),
    # unknown keys, at every level
    (
        "unknown table",
        '[generl]\nlog_level = "info"\n',
        'nfsyncd.toml:1: generl: unknown key; did you mean "general"?',
    ),
    (
        "unknown general key",
        '[general]\nlog_level = "info"\nlog_levl = "debug"\n',
        'nfsyncd.toml:3: general.log_levl: unknown key; did you mean "log_level"?',
    ),
    (
        "unknown key, nothing close",
        "[general]\nfoo = 1\n",
        "nfsyncd.toml:2: general.foo: unknown key; valid keys: log_level, log_format, "
        "control_socket, netlink_buffer_size, netlink_buffer_max, overrun_resync_delay, "
        "reliable_events, poll_interval, cache_limit, event_batch_limit, event_coalesce",
    ),
    (
        "unknown top-level key, nothing close",
        "statistics = true\n",
        "nfsyncd.toml:1: statistics: unknown key; valid keys: general, filter, sync, "
        "expectations, helpers, nftables, metrics",
    ),
    (
        "unknown filter key",
        "[filter]\nkernel_sde = true\n",
        'nfsyncd.toml:2: filter.kernel_sde: unknown key; did you mean "kernel_side"?',
    ),
    (
        "unknown filter sub-table",
        '[filter.adress]\naccept = ["198.18.0.1"]\n',
        'nfsyncd.toml:1: filter.adress: unknown key; did you mean "address"?',
    ),
    (
        "unknown key in a filter sub-table",
        '[filter.address]\nacept = ["198.18.0.1"]\n',
        'nfsyncd.toml:2: filter.address.acept: unknown key; did you mean "accept"?',
    ),
    (
        "unknown sync key",
        SYNC.replace('mode = "ftfw"\n', 'mode = "alarm"\nrefresh = 5\n'),
        'nfsyncd.toml:3: sync.refresh: unknown key; did you mean "refresh_time"?',
    ),
    (
        "unknown link key",
        SYNC + "prot = 3781\n",
        'nfsyncd.toml:8: sync.links[0].prot: unknown key; did you mean "port"?',
    ),
    (
        "misspelt required link key is reported once",
        SYNC.replace("interface", "interfce"),
        'nfsyncd.toml:5: sync.links[0].interfce: unknown key; did you mean "interface"?',
    ),
    (
        "unknown expectations key",
        '[expectations]\nsync = true\nhelper = ["ftp"]\n',
        'nfsyncd.toml:3: expectations.helper: unknown key; did you mean "helpers"?',
    ),
    (
        "unknown helpers key",
        '[[helpers.asign]]\nhelper = "ftp"\n',
        'nfsyncd.toml:1: helpers.asign: unknown key; did you mean "assign"?',
    ),
    (
        "unknown helpers.assign key",
        '[[helpers.assign]]\nhelper = "ftp"\nport = [21]\n',
        'nfsyncd.toml:3: helpers.assign[0].port: unknown key; did you mean "ports"?',
    ),
    (
        "unknown policy key",
        '[[helpers.userspace]]\nname = "tftp"\nprotocol = "udp"\nqueue = 1\n'
        + POLICY
        + 'name = "tftp"\nexpect_max = 1\nexpect_timout = 5\n',
        "nfsyncd.toml:8: helpers.userspace[0].policies[0].expect_timout: unknown key; "
        'did you mean "expect_timeout"?',
    ),
    (
        "unknown nftables key",
        '[nftables]\ntabel = "x"\n',
        'nfsyncd.toml:2: nftables.tabel: unknown key; did you mean "table"?',
    ),
    (
        "unknown metrics key",
        '[metrics]\nlisten_address = "127.0.0.1:9477"\n',
        'nfsyncd.toml:2: metrics.listen_address: unknown key; did you mean "listen"?',
    ),
    (
        "unknown quoted key",
        '[general]\n"log level" = "info"\n',
        'nfsyncd.toml:2: general."log level": unknown key; did you mean "log_level"?',
    ),
    (
        "unknown dotted key",
        '[general]\ncache_limit = 5\nlog.level = "x"\n',
        "nfsyncd.toml:3: general.log: unknown key; valid keys: log_level, log_format, "
        "control_socket, netlink_buffer_size, netlink_buffer_max, overrun_resync_delay, "
        "reliable_events, poll_interval, cache_limit, event_batch_limit, event_coalesce",
    ),
    # wrong types
    (
        "bool as string",
        '[general]\nreliable_events = "yes"\n',
        'nfsyncd.toml:2: general.reliable_events: must be true or false, got "yes"',
    ),
    (
        "bool where an int is expected",
        "[general]\ncache_limit = true\n",
        "nfsyncd.toml:2: general.cache_limit: must be an integer, got true",
    ),
    (
        "float where an int is expected",
        SYNC + "port = 3780.0\n",
        "nfsyncd.toml:8: sync.links[0].port: must be an integer, got 3780.0",
    ),
    (
        "table expected",
        "general = 5\n",
        "nfsyncd.toml:1: general: must be a table, got 5",
    ),
    (
        "array of tables expected",
        '[sync]\nmode = "ftfw"\n[sync.links]\ntransport = "udp"\n',
        "nfsyncd.toml:3: sync.links: must be an array of tables ([[sync.links]]), got a table",
    ),
    (
        "array expected",
        '[filter.protocol]\naccept = "tcp"\n',
        "nfsyncd.toml:2: filter.protocol.accept: must be an array of protocol names or numbers, "
        'got "tcp"',
    ),
    (
        "address not a string",
        SYNC.replace('"198.18.0.2"', "1"),
        "nfsyncd.toml:7: sync.links[0].peer: must be an IPv4 or IPv6 address string, got 1",
    ),
    (
        "duration as a string",
        SYNC.replace('mode = "ftfw"\n', 'mode = "ftfw"\npurge_timeout = "60s"\n'),
        'nfsyncd.toml:3: sync.purge_timeout: must be a number of seconds, got "60s"',
    ),
    (
        "true for a duration-or-false",
        "[general]\noverrun_resync_delay = true\n",
        "nfsyncd.toml:2: general.overrun_resync_delay: must be a number of seconds or false, "
        "got true",
    ),
    (
        "infinite duration",
        SYNC.replace('mode = "ftfw"\n', 'mode = "ftfw"\ncommit_timeout = inf\n'),
        "nfsyncd.toml:3: sync.commit_timeout: must be a finite number of seconds, got inf",
    ),
    # ranges and sizes
    (
        "port out of range",
        SYNC + "port = 70000\n",
        "nfsyncd.toml:8: sync.links[0].port: must be 1-65535, got 70000",
    ),
    (
        "int below minimum",
        "[general]\ncache_limit = 0\n",
        "nfsyncd.toml:2: general.cache_limit: must be >= 1, got 0",
    ),
    (
        "zero poll interval",
        "[general]\npoll_interval = 0\n",
        "nfsyncd.toml:2: general.poll_interval: must be > 0, got 0",
    ),
    (
        "size with an SI unit",
        '[general]\nnetlink_buffer_size = "16MB"\n',
        "nfsyncd.toml:2: general.netlink_buffer_size: must be a number of bytes or a string like "
        '"64KiB", "16MiB", "1GiB", got "16MB"',
    ),
    (
        "negative size",
        SYNC + "sndbuf = -1\n",
        "nfsyncd.toml:8: sync.links[0].sndbuf: must be >= 0, got -1",
    ),
    (
        "size too big for a socket option",
        '[general]\nnetlink_buffer_max = "4GiB"\n',
        "nfsyncd.toml:2: general.netlink_buffer_max: must be at most 2147483647 bytes "
        '(2GiB - 1), got "4GiB"',
    ),
    (
        "buffer ceiling below the buffer",
        '[general]\nnetlink_buffer_size = "64MiB"\nnetlink_buffer_max = "32M"\n',
        "nfsyncd.toml:3: general.netlink_buffer_max: must be >= netlink_buffer_size "
        '(67108864), got "32M"',
    ),
    (
        "buffer above the default ceiling",
        '[general]\nnetlink_buffer_size = "256MiB"\n',
        "nfsyncd.toml:2: general.netlink_buffer_size: must be <= netlink_buffer_max "
        '(134217728), got "256MiB"',
    ),
    (
        "interface name too long",
        SYNC.replace('"eth1"', '"a-very-long-interface"'),
        "nfsyncd.toml:5: sync.links[0].interface: must be an interface name (1-15 characters, "
        'no "/", ":" or whitespace), got "a-very-long-interface"',
    ),
    (
        "peer version",
        SYNC + 'peer_version = "1.4"\n',
        'nfsyncd.toml:8: sync.links[0].peer_version: must be a version "X.Y.Z", got "1.4"',
    ),
    (
        "nft table name",
        '[nftables]\ntable = "1table"\n',
        'nfsyncd.toml:2: nftables.table: must be a table name (a letter or "_", then up to 31 '
        'letters, digits, "_" or "-"), got "1table"',
    ),
    (
        "metrics listen without a port",
        '[metrics]\nlisten = "localhost"\n',
        'nfsyncd.toml:2: metrics.listen: must be "host:port", "[ipv6-address]:port" or "" '
        '(disabled), got "localhost"',
    ),
    # addresses
    (
        "bad address in a filter",
        '[filter.address]\nignore = [\n  "198.18.0.1",\n  "198.18.0.0/24",\n  "198.18.0.300",\n]\n',
        'nfsyncd.toml:5: filter.address.ignore[2]: "198.18.0.300" is not an IPv4 or IPv6 '
        "address or network",
    ),
    (
        "host bits set",
        '[filter.address]\naccept = ["198.18.0.1/24", "2001:db8::1/64"]\n',
        "nfsyncd.toml:2: filter.address.accept[0]: 198.18.0.1/24: host bits set; did you mean "
        "198.18.0.0/24?\n"
        "nfsyncd.toml:2: filter.address.accept[1]: 2001:db8::1/64: host bits set; did you mean "
        "2001:db8::/64?",
    ),
    (
        "link address is an interface name",
        SYNC.replace('"198.18.0.1"', '"eth1"'),
        'nfsyncd.toml:6: sync.links[0].local: "eth1" is not an IPv4 or IPv6 address',
    ),
    (
        "helper address of the wrong family",
        '[[helpers.assign]]\nhelper = "ftp"\nfamily = "ip"\naddresses = ["2001:db8::1"]\n',
        "nfsyncd.toml:4: helpers.assign[0].addresses[0]: must be an IPv4 address or network "
        'with family = "ip", got 2001:db8::1',
    ),
    # enums and lists of names
    (
        "log level",
        '[general]\nlog_level = "verbose"\n',
        'nfsyncd.toml:2: general.log_level: must be one of "debug", "info", "warning", "error", '
        'got "verbose"',
    ),
    (
        "sync mode",
        '[sync]\nmode = "nack"\n' + LINK,
        'nfsyncd.toml:2: sync.mode: must be one of "ftfw", "alarm", "notrack", got "nack"',
    ),
    (
        "transport",
        SYNC.replace('"udp"', '"sctp"'),
        'nfsyncd.toml:4: sync.links[0].transport: must be one of "udp", "multicast", "tcp", '
        'got "sctp"',
    ),
    (
        "protocols",
        '[filter.protocol]\naccept = ["tcp", "nosuchproto", 300]\n',
        'nfsyncd.toml:2: filter.protocol.accept[1]: "nosuchproto" is not a protocol name or '
        "number (tcp, udp, udplite, icmp, ipv6-icmp, icmpv6, sctp, dccp, gre, a name from "
        "/etc/protocols, or 0-255)\n"
        "nfsyncd.toml:2: filter.protocol.accept[2]: must be 0-255, got 300",
    ),
    (
        "tcp state",
        '[filter.tcp_state]\nignore = ["established", "OPEN"]\n',
        'nfsyncd.toml:2: filter.tcp_state.ignore[1]: must be one of "SYN_SENT", "SYN_RECV", '
        '"ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "LISTEN", '
        'got "OPEN"',
    ),
    (
        "helper name",
        '[[helpers.assign]]\nhelper = "http"\n',
        'nfsyncd.toml:2: helpers.assign[0].helper: must be one of "ftp", "tftp", "sip", "h323", '
        '"ras", "q931", "irc", "pptp", "amanda", "sane", "snmp", "netbios-ns", got "http"',
    ),
    (
        "helper ports",
        '[[helpers.assign]]\nhelper = "ftp"\nports = [0, "30-20"]\n',
        "nfsyncd.toml:3: helpers.assign[0].ports[0]: must be 1-65535, got 0\n"
        "nfsyncd.toml:3: helpers.assign[0].ports[1]: must be a port 1-65535 or a range "
        '"first-last", got "30-20"',
    ),
    # filters
    (
        "accept and ignore",
        '[filter.address]\naccept = ["198.18.0.1"]\nignore = ["198.18.0.2"]\n',
        "nfsyncd.toml:1: filter.address: give either accept or ignore, not both",
    ),
    (
        "neither accept nor ignore",
        "[filter.protocol]\n",
        "nfsyncd.toml:1: filter.protocol: give accept or ignore (or remove the table)",
    ),
    (
        "empty accept list",
        "[filter.protocol]\naccept = []\n",
        "nfsyncd.toml:2: filter.protocol.accept: must not be empty (an array of protocol names "
        "or numbers)",
    ),
    (
        "kernel side filter without nft event rules",
        "[filter]\nkernel_side = true\n[nftables]\nevent_filter = false\n",
        "nfsyncd.toml:2: filter.kernel_side: needs nftables.enabled = true and "
        "nftables.event_filter = true (the kernel side is the generated ct event rules)",
    ),
    # mode- and transport-only options
    (
        "alarm option in ftfw",
        SYNC.replace('mode = "ftfw"\n', 'mode = "ftfw"\nrefresh_time = 5\n'),
        'nfsyncd.toml:3: sync.refresh_time: only valid with mode = "alarm" (mode is "ftfw")',
    ),
    (
        "notrack option in ftfw",
        SYNC.replace('mode = "ftfw"\n', 'mode = "ftfw"\ndisable_internal_cache = true\n'),
        'nfsyncd.toml:3: sync.disable_internal_cache: only valid with mode = "notrack" '
        '(mode is "ftfw")',
    ),
    (
        "ftfw and notrack options in alarm",
        SYNC.replace(
            'mode = "ftfw"\n', 'mode = "alarm"\nstartup_resync = true\nack_window_size = 9\n'
        ),
        'nfsyncd.toml:3: sync.startup_resync: only valid with mode = "ftfw" or "notrack" '
        '(mode is "alarm")\n'
        'nfsyncd.toml:4: sync.ack_window_size: only valid with mode = "ftfw" (mode is "alarm")',
    ),
    (
        "tcp option on udp",
        SYNC + "error_queue_length = 10\n",
        'nfsyncd.toml:8: sync.links[0].error_queue_length: only valid with transport = "tcp" '
        '(transport is "udp")',
    ),
    # links
    (
        "five links",
        FIVE_LINKS,
        "nfsyncd.toml:27: sync.links: at most 4 links, got 5",
    ),
    (
        "no links",
        '[sync]\nmode = "notrack"\nlinks = []\n',
        "nfsyncd.toml:3: sync.links: at least 1 link, got 0",
    ),
    (
        "mixed transports",
        SYNC + LINK.replace('"udp"', '"tcp"').replace("eth1", "eth2"),
        "nfsyncd.toml:9: sync.links[1].transport: all links must use the same transport "
        '(sync.links[0] uses "udp"), got "tcp"',
    ),
    (
        "two default links",
        SYNC + "default = true\n" + LINK.replace("eth1", "eth2") + "default = true\n",
        "nfsyncd.toml:14: sync.links[1].default: at most one link may be the default "
        "(sync.links[0] already is)",
    ),
    (
        "same interface and port",
        SYNC + LINK,
        'nfsyncd.toml:8: sync.links[1]: same interface and port as sync.links[0] ("eth1", 3780)',
    ),
    (
        "local and peer of different families",
        SYNC.replace('"198.18.0.2"', '"2001:db8::2"'),
        "nfsyncd.toml:7: sync.links[0].peer: must be the same address family as local (IPv4), "
        "got 2001:db8::2",
    ),
    (
        "multicast without group",
        '[sync]\nmode = "ftfw"\n[[sync.links]]\ntransport = "multicast"\ninterface = "eth1"\n',
        'nfsyncd.toml:3: sync.links[0].group: required with transport = "multicast"',
    ),
    (
        "multicast group not multicast, and a peer",
        '[sync]\nmode = "ftfw"\n[[sync.links]]\ntransport = "multicast"\ninterface = "eth1"\n'
        'group = "198.18.0.2"\npeer = "198.18.0.3"\n',
        "nfsyncd.toml:6: sync.links[0].group: must be a multicast address, got 198.18.0.2\n"
        'nfsyncd.toml:7: sync.links[0].peer: not allowed with transport = "multicast" '
        "(the destination is group)",
    ),
    (
        "multicast group of another family than local",
        '[sync]\nmode = "ftfw"\n[[sync.links]]\ntransport = "multicast"\ninterface = "eth1"\n'
        'local = "198.18.0.1"\ngroup = "ff12::1"\n',
        "nfsyncd.toml:7: sync.links[0].group: must be the same address family as local (IPv4), "
        "got ff12::1",
    ),
    (
        "group on udp",
        SYNC + 'group = "225.0.0.50"\n',
        'nfsyncd.toml:8: sync.links[0].group: not allowed with transport = "udp" '
        "(only with multicast)",
    ),
    (
        "udp peer is a multicast address",
        SYNC.replace('"198.18.0.2"', '"225.0.0.50"'),
        "nfsyncd.toml:7: sync.links[0].peer: must not be a multicast address with transport = "
        '"udp", got 225.0.0.50',
    ),
    (
        "bad port in an inline link",
        '[sync]\nmode = "ftfw"\nlinks = [\n'
        '  {transport = "udp", interface = "eth1", local = "198.18.0.1", peer = "198.18.0.2"},\n'
        '  {transport = "udp", interface = "eth1", local = "198.18.0.1", peer = "198.18.0.2", '
        "port = 99999},\n]\n",
        "nfsyncd.toml:5: sync.links[1].port: must be 1-65535, got 99999",
    ),
    # paths
    (
        "relative socket path",
        '[general]\ncontrol_socket = "nfsyncd.sock"\n',
        'nfsyncd.toml:2: general.control_socket: must be an absolute path, got "nfsyncd.sock"',
    ),
    # missing required keys
    (
        "missing mode",
        "[sync]\ndisable_external_cache = true\n" + LINK,
        'nfsyncd.toml:1: sync.mode: required when [sync] is present (one of "ftfw", "alarm", '
        '"notrack")',
    ),
    (
        "missing links",
        '[sync]\nmode = "ftfw"\n',
        "nfsyncd.toml:1: sync.links: required when [sync] is present (add a [[sync.links]] table)",
    ),
    (
        "missing links, [sync] made by a dotted key (no header: no line)",
        'sync.mode = "ftfw"\n',
        "nfsyncd.toml: sync.links: required when [sync] is present (add a [[sync.links]] table)",
    ),
    (
        "missing link keys",
        '[sync]\nmode = "ftfw"\n\n[[sync.links]]\nport = 3781\n',
        'nfsyncd.toml:4: sync.links[0].transport: required (one of "udp", "multicast", "tcp")\n'
        "nfsyncd.toml:4: sync.links[0].interface: required",
    ),
    (
        "missing udp addresses",
        '[sync]\nmode = "ftfw"\n[[sync.links]]\ntransport = "tcp"\ninterface = "eth1"\n',
        'nfsyncd.toml:3: sync.links[0].local: required with transport = "tcp"\n'
        'nfsyncd.toml:3: sync.links[0].peer: required with transport = "tcp"',
    ),
    (
        "missing helper",
        "[[helpers.assign]]\nports = [21]\n",
        'nfsyncd.toml:1: helpers.assign[0].helper: required (one of "ftp", "tftp", "sip", '
        '"h323", "ras", "q931", "irc", "pptp", "amanda", "sane", "snmp", "netbios-ns")',
    ),
    (
        "missing userspace helper keys",
        '[general]\n[[helpers.userspace]]\nname = "a"\n',
        'nfsyncd.toml:2: helpers.userspace[0].protocol: required (one of "tcp", "udp")\n'
        "nfsyncd.toml:2: helpers.userspace[0].queue: required (an NFQUEUE number 0-65535)\n"
        "nfsyncd.toml:2: helpers.userspace[0].policies: required "
        "(add a [[helpers.userspace.policies]] table)",
    ),
    # other cross-field checks
    (
        "two userspace helpers on one queue",
        '[[helpers.userspace]]\nname = "a"\nprotocol = "udp"\nqueue = 1\n'
        'policies = [{name = "a", expect_max = 1, expect_timeout = 5}]\n'
        '[[helpers.userspace]]\nname = "b"\nprotocol = "udp"\nqueue = 1\n'
        'policies = [{name = "b", expect_max = 1, expect_timeout = 5}]\n',
        "nfsyncd.toml:9: helpers.userspace[1].queue: queue 1 is already used by "
        "helpers.userspace[0]",
    ),
    (
        "bad value in an inline policy",
        '[[helpers.userspace]]\nname = "a"\nprotocol = "udp"\nqueue = 1\n'
        'policies = [{name = "a", expect_max = -1, expect_timeout = 5}]\n',
        "nfsyncd.toml:5: helpers.userspace[0].policies[0].expect_max: must be >= 0, got -1",
    ),
    (
        "expectation helpers without expectation sync",
        '[expectations]\nhelpers = ["ftp"]\n',
        "nfsyncd.toml:2: expectations.helpers: only valid with sync = true",
    ),
    (
        "unknown ct event",
        '[nftables]\nevents = ["new", "destroyed"]\n',
        'nfsyncd.toml:2: nftables.events[1]: must be one of "new", "related", "destroy", '
        '"reply", "assured", "protoinfo", "helper", "mark", "seqadj", "secmark", "label", '
        'got "destroyed"',
    ),
    (
        "no ct events",
        "[nftables]\nevents = []\n",
        "nfsyncd.toml:2: nftables.events: must not be empty (an array of ct event names)",
    ),
    (
        "a protocol the kernel helper does not handle",
        '[[helpers.assign]]\nhelper = "ftp"\nprotocol = "udp"\n',
        "nfsyncd.toml:3: helpers.assign[0].protocol: the kernel's ftp helper handles "
        'protocol = "tcp", got "udp"',
    ),
    (
        "an IPv4-only kernel helper with family ip6",
        '[[helpers.assign]]\nhelper = "pptp"\nfamily = "ip6"\n',
        "nfsyncd.toml:3: helpers.assign[0].family: the kernel's pptp helper is IPv4 only, "
        'got "ip6"',
    ),
    (
        "an IPv4-only kernel helper with an IPv6 address",
        '[[helpers.assign]]\nhelper = "snmp"\naddresses = ["2001:db8::1"]\n',
        "nfsyncd.toml:3: helpers.assign[0].addresses[0]: must be an IPv4 address or network "
        "(the kernel's snmp helper is IPv4 only), got 2001:db8::1",
    ),
    (
        "helper assignment without nftables",
        '[nftables]\nenabled = false\n[[helpers.assign]]\nhelper = "ftp"\n',
        "nfsyncd.toml:3: helpers.assign: needs nftables.enabled = true (helpers are assigned by "
        "its rules)",
    ),
    # several errors at once, in file order
    (
        "several errors together",
        '[general]\nlog_level = "verbose"\ncache_limit = -5\n\n[sync]\nmode = "ftfw"\n\n'
        '[[sync.links]]\ntransport = "udp"\ninterface = "eth1"\nlocal = "198.18.0.1"\n'
        'peer = "198.18.0.2"\nport = 0\n\n[metrics]\nlisten = 9477\n',
        'nfsyncd.toml:2: general.log_level: must be one of "debug", "info", "warning", "error", '
        'got "verbose"\n'
        "nfsyncd.toml:3: general.cache_limit: must be >= 1, got -5\n"
        "nfsyncd.toml:13: sync.links[0].port: must be 1-65535, got 0\n"
        'nfsyncd.toml:16: metrics.listen: must be "host:port", "[ipv6-address]:port" or "" '
        "(disabled), got 9477",
    ),
    (
        "several errors, lineless last",
        'sync.mode = "alarm"\n[general]\nevent_batch_limit = 0\n',
        "nfsyncd.toml:3: general.event_batch_limit: must be >= 1, got 0\n"
        "nfsyncd.toml: sync.links: required when [sync] is present (add a [[sync.links]] table)",
    ),
    (
        "event coalescing beyond its ceiling",
        "[general]\nevent_coalesce = 0.5\n",
        "nfsyncd.toml:2: general.event_coalesce: must be <= 0.1, got 0.5",
    ),
]


def test_bad_config_table_is_big_and_distinct() -> None:
    assert len(BAD_CONFIGS) >= 30
    assert len({case[0] for case in BAD_CONFIGS}) == len(BAD_CONFIGS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [case[1:] for case in BAD_CONFIGS],
    ids=[case[0] for case in BAD_CONFIGS],
)
def test_bad_config_is_reported_exactly(text: str, expected: str) -> None:
    assert errors_of(text) == expected


INTERESTING = [
    "ftfw", "alarm", "notrack", "udp", "tcp", "multicast", "eth1", "198.18.0.1", "225.0.0.50",
    "ff12::1", "2001:db8::1", "198.18.0.1/24", "16MiB", "ESTABLISHED", "1.4.7", "/run/x.sock",
    "127.0.0.1:9477", "", "ftp", "inet", "ip6", "21-22", "[::1]:1",
]  # fmt: skip
scalars = st.one_of(
    st.sampled_from(INTERESTING),
    st.integers(-5, 70000),
    st.booleans(),
    st.floats(-1e9, 1e9),
)
mutant_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=5)


@st.composite
def mutated_documents(draw: st.DrawFn) -> str:
    """A valid rendered config with a few lines changed: a value, a key name, or dropped."""
    lines = render(draw(configs())).splitlines()
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, len(lines) - 1))
        key, sep, _value = lines[index].partition(" = ")
        action = draw(st.sampled_from(["value", "key", "drop"]))
        if action == "drop":
            lines[index] = ""
        elif sep and action == "key":
            lines[index] = f"{key}x = {_value}"
        elif sep:
            lines[index] = f"{key} = {_toml(draw(mutant_values))}"
    return "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=None)
@given(mutated_documents())
def test_any_mutated_config_gives_a_config_or_config_errors(text: str) -> None:
    try:
        parse(text)
    except ConfigError as error:
        assert error.errors and str(error).count("\n") == len(error.errors) - 1
        for problem in error.errors:
            assert problem.source == SRC and problem.message
            assert problem.line is None or 1 <= problem.line <= text.count("\n")


def test_config_error_attributes_and_formats() -> None:
    with pytest.raises(ConfigError) as caught:
        parse('[general]\nlog_level = "verbose"\ncache_limit = 0\n')
    error = caught.value
    assert (error.source, error.line, error.path) == (SRC, 2, "general.log_level")
    assert error.message.startswith("must be one of")
    assert len(error.errors) == 2
    assert [e.line for e in error.errors] == [2, 3]
    assert str(error).splitlines() == [str(e) for e in error.errors]
    assert str(error).splitlines()[0] == error.describe()
    assert str(ConfigError("f.toml", None, "a.b", "bad")) == "f.toml: a.b: bad"
    assert str(ConfigError("f.toml", 3, "", "bad")) == "f.toml:3: bad"
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.line == 2


def test_load_config_reports_unreadable_and_undecodable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert str(caught.value) == f"{missing}: cannot read: No such file or directory"
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'[general]\nlog_level = "\xff"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(str(binary))
    assert str(caught.value) == f"{binary}:2: TOML syntax error: not valid UTF-8"
    good = tmp_path / "good.toml"
    good.write_bytes(b'\xef\xbb\xbf[general]\nlog_level = "debug"\n')  # with a BOM
    config = load_config(good)
    assert config.general.log_level == "debug" and config.source == str(good)


# --- the line locator ----------------------------------------------------------------------

LOCATOR_DOC = """\
# comment [not.a.table]
title = "x = 1 [fake]"          # line 2
multi = \"\"\"
[not_a_table]
key = 1
\"\"\"
after = 'lit'                   # line 7
[a]                             # line 8
b.c = 1                         # line 9
"quoted.key" = 2                # line 10
arr = [                         # line 11
  1,
  [2, 3],                       # line 13
  { x = 1 },                    # line 14
]
[[t]]                           # line 16
k = 1
[[t.sub]]                       # line 18
q = 1
[[t]]                           # line 20
[[t.sub]]                       # line 21
[[t.sub]]                       # line 22
r = '''
]'''
s = 3                           # line 25
[t.inner]                       # line 26
z = {a = 1, b = [1,
  2]}                           # line 28
"""


def test_locator_maps_every_form_of_key() -> None:
    lines = locate(LOCATOR_DOC)
    expected: dict[KeyPath, int | None] = {
        ("title",): 2,
        ("multi",): 3,
        ("after",): 7,
        ("a",): 8,
        ("a", "b", "c"): 9,
        ("a", "b"): 9,  # made by the dotted key
        ("a", "quoted.key"): 10,
        ("a", "arr"): 11,
        ("a", "arr", 0): 12,
        ("a", "arr", 1): 13,
        ("a", "arr", 1, 1): 13,
        ("a", "arr", 2): 14,
        ("a", "arr", 2, "x"): 14,
        ("t",): 16,
        ("t", 0): 16,
        ("t", 0, "k"): 17,
        ("t", 0, "sub", 0): 18,
        ("t", 0, "sub", 0, "q"): 19,
        ("t", 1): 20,
        ("t", 1, "sub", 0): 21,
        ("t", 1, "sub", 1): 22,
        ("t", 1, "sub", 1, "r"): 23,
        ("t", 1, "sub", 1, "s"): 25,
        ("t", 1, "inner"): 26,
        ("t", 1, "inner", "z"): 27,
        ("t", 1, "inner", "z", "b", 1): 28,
        ("not_a_table",): None,
        ("key",): None,
    }
    assert {path: lines.exact(path) for path in expected} == expected


def test_locator_nearest_falls_back_to_the_enclosing_header() -> None:
    lines = locate(LOCATOR_DOC)
    assert lines.nearest(("t", 1, "sub", 1, "missing")) == 22
    assert lines.nearest(("a", "arr", 2, "x", "deeper")) == 14
    assert lines.nearest(("a", "b", "missing")) == 8  # dotted table: its enclosing header
    assert lines.nearest(("nowhere", "x")) is None


def test_locator_agrees_with_tomllib_on_the_document() -> None:
    import tomllib

    doc = tomllib.loads(LOCATOR_DOC)
    assert doc["t"][1]["sub"][1]["r"] == "]" and doc["multi"].startswith("[not_a_table]")


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, dict[KeyPath, int]]:
    """A TOML document in assorted styles, with the line each leaf key was written on."""
    lines: list[str] = []
    expected: dict[KeyPath, int] = {}
    key = st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True)
    for table in draw(st.lists(key, unique=True, max_size=4)):
        for _ in range(draw(st.integers(0, 2))):
            lines.append(draw(st.sampled_from(["", "# [x]", "  # y = 2"])))
        lines.append(f"[{table}]")
        expected[(table,)] = len(lines)
        for name in draw(st.lists(key, unique=True, max_size=4)):
            style = draw(st.sampled_from(["int", "str", "mlstr", "array", "dotted", "inline"]))
            if style == "dotted":
                lines.append(f"{name}.leaf = 1")
                expected[(table, name, "leaf")] = len(lines)
                continue
            lines.append(f"{name} = ")
            expected[(table, name)] = len(lines)
            if style == "int":
                lines[-1] += "1  # c"
            elif style == "str":
                lines[-1] += json.dumps(draw(st.text("ab[]=#'\" ", max_size=8)))
            elif style == "mlstr":
                lines[-1] += '"""'
                lines += ["[fake]", "k = 1", '"""']
            elif style == "inline":
                lines[-1] += "{ p = 1, q = [1, 2] }"
                expected[(table, name, "q")] = len(lines)
            else:
                lines[-1] += "["
                for index in range(draw(st.integers(0, 3))):
                    lines.append(f"  {index},  # item")
                    expected[(table, name, index)] = len(lines)
                lines.append("]")
    return "\n".join(lines) + "\n", expected


@settings(max_examples=200, deadline=None)
@given(documents())
def test_locator_finds_generated_keys(document: tuple[str, dict[KeyPath, int]]) -> None:
    import tomllib

    text, expected = document
    tomllib.loads(text)  # the generator makes valid TOML
    lines = locate(text)
    assert {path: lines.exact(path) for path in expected} == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="[]{}=,.\"'#\n abc1-_\\", max_size=60))
def test_locator_never_raises(text: str) -> None:
    locate(text)  # best effort on anything, valid TOML or not


# --- reload: changed() and restart_needed() -------------------------------------------------

BASE = SYNC + '[general]\nlog_level = "info"\n'


@pytest.mark.parametrize(
    ("new_text", "changed", "restart"),
    [
        (BASE, [], []),
        (BASE.replace('"info"', '"debug"'), ["general.log_level"], []),
        (
            BASE + 'log_format = "json"\ncache_limit = 5\nevent_batch_limit = 7\n'
            "overrun_resync_delay = false\nevent_coalesce = 0\n",
            [
                "general.log_format",
                "general.overrun_resync_delay",
                "general.cache_limit",
                "general.event_batch_limit",
                "general.event_coalesce",
            ],
            [],
        ),
        (BASE + "poll_interval = 5\n", ["general.poll_interval"], ["general.poll_interval"]),
        (
            BASE + 'control_socket = "/run/other.sock"\n',
            ["general.control_socket"],
            ["general.control_socket"],
        ),
        (BASE.replace("eth1", "eth9"), ["sync.links[0].interface"], ["sync.links[0].interface"]),
        (BASE + LINK.replace("eth1", "eth2"), ["sync.links[1]"], ["sync.links[1]"]),
        ('[general]\nlog_level = "info"\n', ["sync"], ["sync"]),
        (
            BASE + '[filter]\nkernel_side = true\n[filter.protocol]\naccept = ["tcp"]\n',
            ["filter.kernel_side", "filter.protocol"],
            [],
        ),
        (
            BASE + '[expectations]\nsync = true\nhelpers = ["ftp"]\n',
            ["expectations.sync", "expectations.helpers"],
            ["expectations.sync"],
        ),
        (
            BASE + '[nftables]\ntable = "fw"\nnotrack_sync = false\n',
            ["nftables.table", "nftables.notrack_sync"],
            [],
        ),
        (BASE + '[metrics]\nlisten = ""\n', ["metrics.listen"], ["metrics.listen"]),
        (
            BASE + '[[helpers.userspace]]\nname = "a"\nprotocol = "udp"\nqueue = 1\n'
            'policies = [{name = "a", expect_max = 1, expect_timeout = 5}]\n',
            ["helpers.userspace[0]"],
            ["helpers.userspace[0]"],
        ),
    ],
)
def test_changed_and_restart_needed(new_text: str, changed: list[str], restart: list[str]) -> None:
    old = parse(BASE)
    new = parse_config(new_text, "other.toml")  # the source never counts as a change
    assert old.changed(new) == changed
    assert old.restart_needed(new) == restart


def test_changed_inside_list_entries() -> None:
    helper = (
        '[[helpers.userspace]]\nname = "a"\nprotocol = "udp"\nqueue = 1\n'
        'policies = [{name = "a", expect_max = 1, expect_timeout = 5}]\n'
    )
    old, new = parse(helper), parse(helper.replace("expect_max = 1", "expect_max = 2"))
    assert old.changed(new) == ["helpers.userspace[0].policies[0].expect_max"]
    assert new.changed(old) == ["helpers.userspace[0].policies[0].expect_max"]
    assert old.changed(parse("")) == ["helpers.userspace[0]"]


def test_live_keys_name_real_settings() -> None:
    config = default_config()
    for key in LIVE_KEYS:
        section, _, name = key.partition(".")
        assert name == "*" or name in {f.name for f in dataclasses.fields(getattr(config, section))}
    assert "general.poll_interval" not in LIVE_KEYS
    assert not any(key.startswith(("sync", "metrics")) for key in LIVE_KEYS)


# --- import hygiene ----------------------------------------------------------------------------


def test_import_is_light() -> None:
    # nfsyncctl imports this module: no trio, no pyroute2, and difflib only on a typo.
    code = (
        "import sys, nfsyncd.config as c\n"
        "c.parse_config('[general]\\nlog_level = \"debug\"\\n', 'x')\n"
        "print(sorted(m for m in ('trio', 'pyroute2', 'difflib') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
