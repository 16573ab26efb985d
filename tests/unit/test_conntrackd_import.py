"""``nfsyncctl config import``: conntrackd.conf -> nfsyncd TOML.

Golden files pin the whole output of some test configs; the other tests check the mapping
field by field through nfsyncd's own config parser, that comments and notes survive, and
that malformed files fail with a message naming the line. When conntrackd itself is
installed, its parser (``conntrackd -C FILE -s`` in an empty network namespace, against a
control socket path that does not exist, so it stops right after reading the file) must
accept and reject the same files, at the same line.
"""

from __future__ import annotations

import gzip
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from nfsyncd.config import Config, ConfigError, parse_config
from nfsyncd.conntrackd_conf import (
    ConntrackdConfError,
    ImportResult,
    import_conntrackd_conf,
    parse_conntrackd_conf,
    tokenize,
)
from tests._support import skip_or_fail

DATA = Path(__file__).resolve().parent.parent / "data" / "conntrackd"
EXAMPLES = Path("/usr/share/doc/conntrackd/examples")
CONNTRACKD = Path("/usr/sbin/conntrackd")
TEST_CONFIGS = sorted(DATA.glob("*.conf"))
GOLDEN = sorted(DATA.glob("*.expected.toml"))
UPDATE_GOLDEN = os.environ.get("NFSYNC_UPDATE_GOLDEN") == "1"


def convert(text: str, source: str = "t.conf") -> ImportResult:
    return import_conntrackd_conf(text, source)


def load(text: str) -> Config:
    """Import text and read the result back the way the daemon will."""
    return parse_config(convert(text).toml, "imported.toml")


def has_note(result: ImportResult, prefix: str) -> bool:
    return any(note.startswith(prefix) for note in result.notes)


def load_file(name: str) -> tuple[Config, ImportResult]:
    result = convert((DATA / name).read_text(), name)
    return parse_config(result.toml, f"{name}.toml"), result


def example_files() -> list[Path]:
    if not EXAMPLES.is_dir():
        return []
    return sorted(p for p in EXAMPLES.rglob("*") if p.is_file())


def read_example(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------- golden outputs


def test_golden_files_exist() -> None:
    assert len(GOLDEN) >= 3


@pytest.mark.parametrize("golden", GOLDEN, ids=lambda p: p.name)
def test_golden_output(golden: Path) -> None:
    name = golden.name.removesuffix(".expected.toml") + ".conf"
    result = convert((DATA / name).read_text(), name)
    if UPDATE_GOLDEN:
        golden.write_text(result.toml)
    assert result.toml == golden.read_text()


@pytest.mark.parametrize("conf", TEST_CONFIGS, ids=lambda p: p.name)
def test_test_configs_parse_and_are_deterministic(conf: Path) -> None:
    text = conf.read_text()
    first = convert(text, conf.name)
    assert convert(text, conf.name) == first  # no dates, no set ordering
    assert first.toml.startswith(
        f"# nfsyncd configuration generated from {conf.name} by nfsyncctl config import.\n"
    )
    tomllib.loads(first.toml)
    parse_config(first.toml, f"{conf.name}.toml")


def test_test_configs_cover_the_brief() -> None:
    names = {p.name for p in TEST_CONFIGS}
    assert {
        "ftfw_udp_filters.conf",
        "multicast_redundant.conf",
        "notrack_tcp.conf",
        "alarm.conf",
        "helper.conf",
        "stats.conf",
        "aliases.conf",
    } <= names


# ------------------------------------------------------------- conntrackd's own examples


@pytest.mark.parametrize("path", example_files(), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_debian_examples(path: Path) -> None:
    text = read_example(path)
    if path.name.removesuffix(".gz") == "conntrackd.conf":
        result = convert(text, str(path))
        config = parse_config(result.toml, "example.toml")
        assert config.general.control_socket == "/var/run/conntrackd.ctl"
        assert all(re.match(rf"{re.escape(str(path))}:\d+: ", n) for n in result.notes if ":" in n)
    else:
        # keepalived.conf, README, primary-backup.sh: conntrackd rejects them as configs too
        with pytest.raises(ConntrackdConfError) as info:
            convert(text, str(path))
        assert info.value.line >= 1


def test_debian_examples_present_or_explained() -> None:
    if not example_files():
        skip_or_fail(f"{EXAMPLES} is missing (apt-get install conntrackd)")
    assert any(p.name == "conntrackd.conf" for p in example_files())


def test_debian_ftfw_example_mapping() -> None:
    path = EXAMPLES / "sync" / "ftfw" / "conntrackd.conf"
    if not path.exists():
        skip_or_fail(f"{path} is missing (apt-get install conntrackd)")
    config = load(path.read_text())
    assert config.sync is not None
    assert config.sync.mode == "ftfw"
    (link,) = config.sync.links
    assert (link.transport, link.interface, link.port) == ("multicast", "eth2", 3780)
    assert link.group == ipaddress.ip_address("225.0.0.50")
    assert link.local == ipaddress.ip_address("192.168.100.100")
    assert (link.sndbuf, link.rcvbuf, link.checksum) == (1249280, 1249280, True)
    assert config.filter.protocol is not None
    assert config.filter.protocol.action == "accept"
    assert config.filter.protocol.items == (6, 132, 33)
    assert config.general.netlink_buffer_size == 2097152
    assert config.general.netlink_buffer_max == 8388608
    assert config.general.cache_limit == 131072


# ------------------------------------------------------------------ field-by-field maps


def test_ftfw_udp_filters_mapping() -> None:
    config, _ = load_file("ftfw_udp_filters.conf")
    general = config.general
    assert general.control_socket == "/var/run/conntrackd.ctl"
    assert general.netlink_buffer_size == 2097152
    assert general.netlink_buffer_max == 8388608
    assert general.overrun_resync_delay == 45
    assert general.cache_limit == 524288
    assert general.poll_interval is None
    assert config.filter.kernel_side is False
    assert config.filter.protocol is not None
    assert config.filter.protocol.action == "accept"
    assert config.filter.protocol.items == (6, 17, 132, 58)
    assert config.filter.address is not None
    assert config.filter.address.action == "ignore"
    assert config.filter.address.items == (
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("198.18.0.1"),
        ipaddress.ip_network("198.18.1.0/24"),
        ipaddress.ip_network("10.20.0.0/16"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_network("2001:db8:ff::/48"),
        ipaddress.ip_network("fe80::/10"),
    )
    assert config.filter.tcp_state is not None
    assert config.filter.tcp_state.action == "accept"
    assert config.filter.tcp_state.items == (3, 8, 7, 5)
    sync = config.sync
    assert sync is not None
    assert sync.mode == "ftfw"
    assert sync.resend_queue_size == 262144
    assert sync.ack_window_size == 200
    assert sync.disable_external_cache is False
    assert sync.startup_resync is True
    assert sync.purge_timeout == 30
    assert sync.commit_timeout == 180
    (link,) = sync.links
    assert link.transport == "udp"
    assert link.interface == "eth3"
    assert link.local == ipaddress.ip_address("198.18.1.1")
    assert link.peer == ipaddress.ip_address("198.18.1.2")
    assert link.port == 3780
    assert link.group is None
    assert (link.sndbuf, link.rcvbuf, link.checksum, link.default) == (
        1249280,
        1249280,
        True,
        False,
    )
    assert config.expectations.sync is False
    assert config.helpers.userspace == ()


def test_multicast_redundant_mapping() -> None:
    config, result = load_file("multicast_redundant.conf")
    assert config.general.control_socket == "/run/conntrackd.ctl"
    assert config.general.netlink_buffer_size == 4194304  # SocketBufferSize
    assert config.general.netlink_buffer_max == 16777216  # SocketBufferSizeMaxGrowth
    assert config.sync is not None
    assert config.sync.tcp_window_tracking is True
    first, second = config.sync.links
    assert first.transport == second.transport == "multicast"
    assert (first.group, first.port, first.local, first.interface) == (
        ipaddress.ip_address("225.0.0.50"),
        3780,
        ipaddress.ip_address("198.18.2.1"),
        "eth2",
    )
    assert (first.default, first.checksum, first.peer) == (False, True, None)
    assert (second.group, second.port, second.interface) == (
        ipaddress.ip_address("225.0.0.51"),
        3781,
        "eth3",
    )
    assert (second.default, second.checksum, second.sndbuf) == (True, False, 1249280)
    assert result.notes == []


def test_notrack_tcp_mapping() -> None:
    config, result = load_file("notrack_tcp.conf")
    assert config.general.reliable_events is True
    assert config.general.overrun_resync_delay is None  # NetlinkOverrunResync off
    assert config.general.cache_limit == 262144  # HashLimit 0 = conntrackd's default
    sync = config.sync
    assert sync is not None
    assert sync.mode == "notrack"
    assert sync.disable_internal_cache is True
    assert sync.disable_external_cache is True
    assert sync.startup_resync is True
    assert sync.purge_timeout == 15
    (link,) = sync.links
    assert link.transport == "tcp"
    assert link.local == ipaddress.ip_address("2001:db8:100::1")
    assert link.peer == ipaddress.ip_address("2001:db8:100::2")
    assert (link.port, link.interface, link.error_queue_length) == (3782, "eth4", 256)
    assert "notrack_tcp.conf:3: HashLimit: 0 means the default (262144) in conntrackd" in (
        result.notes
    )


def test_alarm_mapping() -> None:
    config, result = load_file("alarm.conf")
    sync = config.sync
    assert sync is not None
    assert sync.mode == "alarm"  # Mode PERSISTENT
    assert (sync.refresh_time, sync.cache_timeout, sync.commit_timeout) == (15, 180, 120)
    (link,) = sync.links
    assert link.default is True
    assert link.interface == "bond0.30"
    assert link.port == 3780  # conntrackd had no Port: see the note
    assert config.general.poll_interval == 20
    # NetlinkBufferSize without MaxGrowth: conntrackd never grew it, nor does the import
    assert config.general.netlink_buffer_size == config.general.netlink_buffer_max == 1048576
    assert has_note(result, "alarm.conf:2: Mode: 'PERSISTENT' is the old name")
    assert has_note(result, "alarm.conf:7: Port: not set, so conntrackd used port 0")


def test_helper_mapping() -> None:
    config, result = load_file("helper.conf")
    ftp, tns = config.helpers.userspace
    assert (ftp.name, ftp.family, ftp.protocol, ftp.queue, ftp.queue_len) == (
        "ftp",
        "inet",
        "tcp",
        5,
        10240,
    )
    assert [(p.name, p.expect_max, p.expect_timeout) for p in ftp.policies] == [("ftp", 1, 300)]
    assert (tns.name, tns.queue, tns.queue_len) == ("tns", 6, 0)
    # no Policy block: conntrackd's built-in tns policy, written out
    assert [(p.name, p.expect_max, p.expect_timeout) for p in tns.policies] == [("tns", 1, 300)]
    assert config.helpers.assign == ()  # only suggested, commented out
    assert config.expectations.sync is True
    assert config.expectations.helpers == ("ftp", "sip")
    assert config.sync is not None
    assert config.sync.disable_external_cache is True
    assert "# [[helpers.assign]]" in result.toml
    assert has_note(result, "helper.conf:4: Type ftp: ftp is also an in-kernel helper")
    assert not any("Type tns" in n for n in result.notes)  # tns has no kernel helper


def test_helper_assign_suggestion_is_valid_when_uncommented() -> None:
    result = convert((DATA / "helper.conf").read_text())
    lines = result.toml.splitlines()
    start = lines.index("# [[helpers.assign]]")
    block = []
    for line in lines[start:]:
        if not line.startswith("# "):
            break
        block.append(line.removeprefix("# "))
    config = parse_config(result.toml + "\n" + "\n".join(block) + "\n", "uncommented.toml")
    (assign,) = config.helpers.assign
    assert (assign.helper, assign.protocol, assign.ports, assign.family) == (
        "ftp",
        "tcp",
        ((21, 21),),
        "ip",
    )


def test_stats_mode_has_no_sync() -> None:
    config, result = load_file("stats.conf")
    assert config.sync is None
    assert not re.search(r"^\[sync", result.toml, re.M)
    assert config.filter.protocol is not None
    assert config.filter.protocol.items == (6,)
    assert has_note(result, "stats.conf:14: Stats: stats mode is not supported")
    assert "# conntrackd: Stats { LogFile on Syslog local3 } (line 14): stats mode" in result.toml


def test_no_sync_and_no_stats_is_stats_mode_too() -> None:
    result = convert("General { UNIX { Path /run/x.ctl } }\n")
    assert parse_config(result.toml, "t.toml").sync is None
    assert has_note(result, "t.conf: Sync: not present: conntrackd ran in stats mode")


def test_aliases_mapping() -> None:
    config, result = load_file("aliases.conf")
    general = config.general
    assert general.netlink_buffer_size == 1048576  # SocketBufferSize
    assert general.netlink_buffer_max == 8388608  # the last of the two MaxGrow(n|th) aliases
    assert general.overrun_resync_delay == 30  # On
    assert general.reliable_events is False  # No
    assert general.event_batch_limit == 200
    assert config.filter.kernel_side is True
    assert config.filter.protocol is not None
    assert (config.filter.protocol.action, config.filter.protocol.items) == ("ignore", (17, 1))
    assert config.filter.tcp_state is not None
    assert config.filter.tcp_state.action == "ignore"
    assert config.filter.tcp_state.items[:2] == (1, 2)
    sync = config.sync
    assert sync is not None
    assert sync.mode == "ftfw"  # nack
    assert (sync.resend_queue_size, sync.ack_window_size) == (131072, 300)  # 0 = default
    assert sync.tcp_window_tracking is False
    (link,) = sync.links
    assert (link.transport, link.group, link.port, link.interface, link.local) == (
        "multicast",
        ipaddress.ip_address("ff02::1:3"),
        3790,
        "br-sync",
        None,
    )
    assert config.expectations.sync is True
    assert config.expectations.helpers == ()
    assert has_note(result, "aliases.conf:13: Mode: 'nack' is the old name of FTFW")


@pytest.mark.parametrize(
    ("line", "field", "value"),
    [
        ("NetlinkOverrunResync on", "overrun_resync_delay", 30),
        ("NetlinkOverrunResync off", "overrun_resync_delay", None),
        ("NetlinkOverrunResync 12", "overrun_resync_delay", 12),
        ("NetlinkOverrunResync 0", "overrun_resync_delay", 30),
        ("NetlinkEventsReliable yes", "reliable_events", True),
        ("PollSecs 7", "poll_interval", 7),
        ("HashLimit 1000", "cache_limit", 1000),
        ("EventIterationLimit 0", "event_batch_limit", 100),
        ("UNIX { Path /run/ct.sock }", "control_socket", "/run/ct.sock"),
        ("NetlinkBufferSize 4096 NetlinkBufferSizeMaxGrowth 8192", "netlink_buffer_size", 4096),
        ("NetlinkBufferSize 4096 NetlinkBufferSizeMaxGrowth 8192", "netlink_buffer_max", 8192),
        ("NetlinkBufferSize 9000 NetlinkBufferSizeMaxGrowth 8192", "netlink_buffer_size", 8192),
        ("NetlinkBufferSizeMaxGrowth 1000000", "netlink_buffer_size", 1000000),
        ("NetlinkBufferSizeMaxGrowth 1000000000", "netlink_buffer_size", 16 * 1024 * 1024),
    ],
)
def test_general_options(line: str, field: str, value: object) -> None:
    config = load(f"General {{ {line} }}\n")
    assert getattr(config.general, field) == value


SYNC_HEAD = "General { UNIX { Path /run/x.ctl } }\n"
UDP_LINK = (
    "UDP { IPv4_address 198.18.0.1 IPv4_Destination_Address 198.18.0.2 Interface eth0 Port 3780 }\n"
)


@pytest.mark.parametrize(
    ("body", "field", "value"),
    [
        ("Mode FTFW { } RefreshTime 5", "refresh_time", 60.0),  # dropped: ALARM only
        ("Mode ALARM { } RefreshTime 5", "refresh_time", 5),
        ("Mode ALARM { RefreshTime 0 }", "refresh_time", 60),
        ("Mode FTFW { } CacheTimeout 9", "cache_timeout", 9),
        ("Mode NOTRACK { DisableExternalCache on CommitTimeout 5 }", "commit_timeout", None),
        ("Mode NOTRACK { CommitTimeout 0 }", "commit_timeout", None),
        ("Mode NOTRACK { PurgeTimeout 0 }", "purge_timeout", 60),
        ("Mode ALARM { } Mode FTFW { } Mode NOTRACK { }", "mode", "ftfw"),
        ("Mode NOTRACK { } Mode ALARM { }", "mode", "alarm"),
        ("Mode Notrack { }", "mode", "notrack"),
        ("Mode nAcK { }", "mode", "ftfw"),
        ("PurgeTimeout 1", "mode", "ftfw"),  # no Mode: conntrackd defaults to FTFW
        ("Mode FTFW { } Options { TCPWindowTracking On }", "tcp_window_tracking", True),
    ],
)
def test_sync_options(body: str, field: str, value: object) -> None:
    config = load(SYNC_HEAD + "Sync {\n" + body + "\n" + UDP_LINK + "}\n")
    assert config.sync is not None
    assert getattr(config.sync, field) == value


def test_udp_without_local_address_binds_the_wildcard() -> None:
    link = "UDP { IPv6_Destination_Address fe80::2 Port 1 Interface eth0 }"
    text = SYNC_HEAD + "Sync { Mode FTFW { } " + link + " }"
    result = convert(text)
    config = parse_config(result.toml, "t.toml")
    assert config.sync is not None
    assert config.sync.links[0].local == ipaddress.ip_address("::")
    assert has_note(
        result, "t.conf:2: IPv6_address: not set, so conntrackd listened on the wildcard"
    )


def test_last_default_link_wins() -> None:
    links = "".join(
        f"UDP Default {{ IPv4_address 198.18.0.1 IPv4_Destination_Address 198.18.0.2 "
        f"Interface eth{i} Port 3780 }}\n"
        for i in range(3)
    )
    result = convert(SYNC_HEAD + "Sync { Mode FTFW { }\n" + links + "}\n")
    config = parse_config(result.toml, "t.toml")
    assert config.sync is not None
    assert [link.default for link in config.sync.links] == [False, False, True]
    assert sum("Default: also given at line 5" in n for n in result.notes) == 2


def test_error_queue_length_is_global_in_conntrackd() -> None:
    links = (
        "TCP { IPv4_address 198.18.0.1 IPv4_Destination_Address 198.18.0.2 Interface eth0 "
        "Port 3780 ErrorQueueLength 64 }\n"
        "TCP { IPv4_address 198.18.1.1 IPv4_Destination_Address 198.18.1.2 Interface eth1 "
        "Port 3780 }\n"
    )
    config = load(SYNC_HEAD + "Sync { Mode NOTRACK { }\n" + links + "}\n")
    assert config.sync is not None
    assert [link.error_queue_length for link in config.sync.links] == [64, 64]


def test_filter_details() -> None:
    text = (
        "General { Filter From Kernelspace {\n"
        "  Protocol Ignore { ospf GRE Nonexistent UDPLite }\n"
        "  Address Accept { IPv4_address 10.1.2.3/8 IPv4_address 10.1.2.3/32 "
        "IPv6_address 2001:db8::1/32 IPv4_address 198.18.0.1 IPv4_address 198.18.0.1 }\n"
        "  State Ignore { SYN_SENT CLOSE for TCP LISTEN CLOSED for TCP }\n"
        "} }\n"
    )
    result = convert(text)
    config = parse_config(result.toml, "t.toml")
    flt = config.filter
    assert flt.kernel_side is True
    assert flt.protocol is not None
    assert flt.protocol.items == (89, 47, 136)  # ospf from /etc/protocols, unknown dropped
    assert "89,  # ospf" in result.toml
    assert flt.address is not None
    assert flt.address.items == (
        ipaddress.ip_network("10.0.0.0/8"),  # host bits: conntrackd matches the network
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_address("198.18.0.1"),  # given twice, listed once
    )
    assert flt.tcp_state is not None
    assert flt.tcp_state.items[:2] == (1, 8)
    notes = "\n".join(result.notes)
    assert "t.conf:2: Nonexistent: not in /etc/protocols" in notes
    assert "t.conf:3: IPv4_address: host bits set; conntrackd matches the network 10.0.0.0/8" in (
        notes
    )
    assert "t.conf:4: State LISTEN: LISTEN matched kernel state 9" in notes


def test_empty_ignore_list_is_no_filter() -> None:
    config = load("General { Filter { Protocol Ignore { } Address Ignore { } } }\n")
    assert config.filter.protocol is None
    assert config.filter.address is None


def test_mixed_accept_and_ignore_use_the_last() -> None:
    result = convert(
        "General { Filter { Protocol Accept { TCP } } Filter { Protocol Ignore { UDP } } }\n"
    )
    config = parse_config(result.toml, "t.toml")
    assert config.filter.protocol is not None
    assert (config.filter.protocol.action, config.filter.protocol.items) == ("ignore", (6, 17))
    assert any("Protocol is given both as Accept and Ignore" in n for n in result.notes)


def test_expectation_sync_variants() -> None:
    def expect(options: str) -> tuple[bool, tuple[str, ...]]:
        body = SYNC_HEAD + "Sync { Mode FTFW { }\n" + UDP_LINK + options + "\n}\n"
        cfg = load(body).expectations
        return cfg.sync, cfg.helpers

    assert expect("Options { ExpectationSync on }") == (True, ())
    assert expect("Options { ExpectationSync off }") == (False, ())
    assert expect("Options { ExpectationSync { } }") == (True, ())  # conntrackd: all helpers
    assert expect("Options { ExpectationSync { ftp FTP q.931 } }") == (True, ("ftp", "q.931"))
    assert expect("Options { ExpectationSync { ftp } ExpectationSync off }") == (False, ())


def test_helper_policy_given_partially_is_zero_filled() -> None:
    result = convert("Helper { Type ftp inet6 tcp { QueueNum 3 Policy ftp { ExpectMax 4 } } }\n")
    config = parse_config(result.toml, "t.toml")
    (ftp,) = config.helpers.userspace
    assert ftp.family == "inet6"
    assert [(p.expect_max, p.expect_timeout) for p in ftp.policies] == [(4, 0)]
    assert any("ExpectTimeout: not set: a Policy block replaces" in n for n in result.notes)
    assert 'family = "ip6"' in result.toml  # the suggestion follows the helper's family


# --------------------------------------------------------------------------- comments


def input_comments(text: str) -> list[str]:
    return [t.text for t in tokenize(text) if t.kind in ("comment", "comment-blank", "trailing")]


@pytest.mark.parametrize(
    "path",
    TEST_CONFIGS + [p for p in example_files() if p.name == "conntrackd.conf"],
    ids=lambda p: p.name if p.parent == DATA else str(p.relative_to(EXAMPLES)),
)
def test_every_comment_is_kept(path: Path) -> None:
    text = path.read_text()
    out = convert(text).toml
    comments = [line.strip() for line in out.splitlines()]
    found = [c for c in input_comments(text) if c.strip() in comments or f"  {c}" in out]
    assert found == input_comments(text)


def test_comments_sit_next_to_their_key() -> None:
    text = (
        "# file header\n"
        "\n"
        "General {\n"
        "\t# the control socket\n"
        "\tUNIX { Path /run/x.ctl }  # trailing on the UNIX line\n"
        "\tHashLimit 5  # small\n"
        "\tFilter {\n"
        "\t\tAddress Ignore {\n"
        "\t\t\t# the firewall itself\n"
        "\t\t\tIPv4_address 198.18.0.1 # fw1\n"
        "\t\t\t# IPv4_address 198.18.0.2\n"
        "\t\t}\n"
        "\t}\n"
        "}\n"
    )
    lines = convert(text).toml.splitlines()
    assert lines[4] == "# file header"  # after the generated header, before any table
    sock = lines.index('control_socket = "/run/x.ctl"')
    assert lines[sock - 2 : sock] == ["# the control socket", "# trailing on the UNIX line"]
    assert "cache_limit = 5  # small" in lines
    item = lines.index('    "198.18.0.1",  # fw1')
    assert lines[item - 1] == "    # the firewall itself"
    assert lines[item + 1 : item + 3] == ["    # IPv4_address 198.18.0.2", "]"]


# ------------------------------------------------------------------------------ notes


@pytest.mark.parametrize(
    ("statement", "subject"),
    [
        ("General { HashSize 8192 }", "HashSize"),
        ("General { LogFile on }", "LogFile"),
        ("General { Syslog local2 }", "Syslog"),
        ("General { LockFile /var/lock/conntrack.lock }", "LockFile"),
        ("General { Scheduler { Type RR Priority 10 } }", "Scheduler"),
        ("General { Nice -5 }", "Nice"),
        ("General { Systemd on }", "Systemd"),
        ("General { UNIX { Backlog 20 } }", "UNIX Backlog"),
        ("Stats { LogFile on }", "Stats"),
        ("Helper { Setup on }", "Setup"),
        (
            "Sync { Mode FTFW { } Multicast { IPv6_address ff02::5 IPv6_interface fe80::1 "
            "Group 3780 Interface eth0 } }",
            "IPv6_interface",
        ),
    ],
)
def test_unsupported_options_get_a_note_and_a_comment(statement: str, subject: str) -> None:
    result = convert("\n" + statement + "\n")
    keyword = subject.split()[-1]
    assert any(n.startswith(f"t.conf:2: {subject}: ") for n in result.notes), result.notes
    assert re.search(
        rf"^# conntrackd: .*\b{re.escape(keyword)}\b.* \(line 2\): ", result.toml, re.M
    )
    parse_config(result.toml, "t.toml")


def test_notes_are_in_line_order() -> None:
    _, result = load_file("aliases.conf")
    lines = [int(m.group(1)) for n in result.notes if (m := re.match(r"aliases\.conf:(\d+):", n))]
    assert lines == sorted(lines)


# ------------------------------------------------------------------------ bad configs

UNIX = "General {\n\tUNIX { Path /nonexistent/nfsyncd-test.ctl }\n}\n"  # lines 1-3
LINK = (
    "\tUDP { IPv4_address 198.18.0.1 IPv4_Destination_Address 198.18.0.2 Port 3780 "
    "Interface eth0 }\n"
)
MCAST = "\tMulticast { IPv4_address 225.0.0.50 Group 3780 Interface eth1 }\n"

# (id, text, exact message, how conntrackd 1.4.7 reacts: "syntax" = syntax error at the same
# line and symbol, "rejects" = another fatal error, "accepts" = only a warning)
MALFORMED: list[tuple[str, str, str, str]] = [
    (
        "unbalanced_brace",
        UNIX + "Sync {\n\tMode FTFW { }\n" + LINK,
        "t.conf:7: near end of file: expected '}' to close Sync (opened at line 4)",
        "syntax",
    ),
    (
        "unclosed_mode_block",
        UNIX + "Sync {\n\tMode FTFW {\n" + LINK + "}\n",
        "t.conf:6: near 'UDP': expected one of ResendQueueSize, CommitTimeout, PurgeTimeout, "
        "ACKWindowSize, DisableExternalCache, StartupResync or '}' (UDP is not valid inside "
        "Mode FTFW)",
        "syntax",
    ),
    (
        "extra_closing_brace",
        UNIX + "}\n",
        "t.conf:4: near '}': expected one of General, Sync, Stats, Helper",
        "syntax",
    ),
    (
        "unknown_keyword",
        UNIX + "Sync {\n\tMode FTFW {\n\t\tWindowSize 20\n\t}\n" + LINK + "}\n",
        "t.conf:6: near 'WindowSize': expected one of ResendQueueSize, CommitTimeout, "
        "PurgeTimeout, ACKWindowSize, DisableExternalCache, StartupResync or '}'",
        "syntax",
    ),
    (
        "general_lower_case",
        "general {\n\tUNIX { Path /nonexistent/nfsyncd-test.ctl }\n}\n",
        "t.conf:1: near 'general': expected one of General, Sync, Stats, Helper (keywords are "
        "case-sensitive: did you mean General?)",
        "syntax",
    ),
    (
        "nice_unsigned",
        "General {\n\tUNIX { Path /nonexistent/nfsyncd-test.ctl }\n\tNice 5\n}\n",
        "t.conf:3: near '5': expected a signed number such as -5 or +5 after Nice (conntrackd "
        "only accepts a number with an explicit sign here)",
        "syntax",
    ),
    (
        "refreshtime_in_ftfw",
        UNIX + "Sync {\n\tMode FTFW {\n\t\tRefreshTime 5\n\t}\n" + LINK + "}\n",
        "t.conf:6: near 'RefreshTime': expected one of ResendQueueSize, CommitTimeout, "
        "PurgeTimeout, ACKWindowSize, DisableExternalCache, StartupResync or '}' (RefreshTime "
        "is not valid inside Mode FTFW)",
        "syntax",
    ),
    (
        "ackwindowsize_in_notrack",
        UNIX + "Sync {\n\tMode NOTRACK {\n\t\tACKWindowSize 5\n\t}\n" + LINK + "}\n",
        "t.conf:6: near 'ACKWindowSize': expected one of CommitTimeout, PurgeTimeout, "
        "DisableInternalCache, DisableExternalCache, StartupResync or '}' (ACKWindowSize is "
        "not valid inside Mode NOTRACK)",
        "syntax",
    ),
    (
        "disableinternalcache_in_ftfw",
        UNIX + "Sync {\n\tMode FTFW {\n\t\tDisableInternalCache on\n\t}\n" + LINK + "}\n",
        "t.conf:6: near 'DisableInternalCache': expected one of ResendQueueSize, "
        "CommitTimeout, PurgeTimeout, ACKWindowSize, DisableExternalCache, StartupResync or "
        "'}' (DisableInternalCache is not valid inside Mode FTFW)",
        "syntax",
    ),
    (
        "relative_lockfile",
        "General {\n\tUNIX { Path /nonexistent/nfsyncd-test.ctl }\n\tLockFile conntrackd.lock\n}\n",
        "t.conf:3: near 'conntrackd.lock': expected an absolute path after LockFile (paths "
        "must start with '/')",
        "syntax",
    ),
    (
        "udp_with_multicast",
        UNIX + "Sync {\n\tMode FTFW { }\n" + LINK + MCAST + "}\n",
        "t.conf:7: near 'Multicast': expected another UDP block: all dedicated links use one "
        "transport (UDP at line 6)",
        "rejects",
    ),
    (
        "five_links",
        UNIX
        + "Sync {\n\tMode FTFW { }\n"
        + "".join(
            f"\tUDP {{ IPv4_address 198.18.0.1 IPv4_Destination_Address 198.18.0.2 "
            f"Port {3780 + i} Interface eth0 }}\n"
            for i in range(5)
        )
        + "}\n",
        "t.conf:10: near 'UDP': expected at most 4 dedicated links (this is the 5th)",
        "rejects",
    ),
    (
        "bad_ipv4_address",
        UNIX + "Sync {\n\tMode FTFW { }\n\tUDP {\n\t\tIPv4_address 198.18.0.300\n"
        "\t\tIPv4_Destination_Address 198.18.0.2\n\t\tPort 3780\n\t\tInterface eth0\n\t}\n}\n",
        "t.conf:7: near '198.18.0.300': expected an IPv4 address after IPv4_address",
        "accepts",  # conntrackd warns and leaves the address unset
    ),
    (
        "missing_value",
        UNIX + "Sync {\n\tMode FTFW { }\n\tUDP {\n\t\tIPv4_address 198.18.0.1\n"
        "\t\tIPv4_Destination_Address 198.18.0.2\n\t\tPort\n\t\tInterface eth0\n\t}\n}\n",
        "t.conf:10: near 'Interface': expected a number after Port",
        "syntax",
    ),
    (
        "persistent_lower_case",
        UNIX + "Sync {\n\tMode persistent { }\n" + LINK + "}\n",
        "t.conf:5: near 'persistent': expected FTFW, ALARM or NOTRACK after Mode (conntrackd "
        "1.4 only recognises this old alias spelled with a capital T at the end, e.g. "
        "PERSISTENT; write ALARM)",
        "syntax",
    ),
    (
        "sync_and_stats",
        UNIX + "Sync {\n\tMode FTFW { }\n" + LINK + "}\nStats { LogFile on }\n",
        "t.conf:8: near 'Stats': expected either a Sync or a Stats section, not both (Sync at "
        "line 4)",
        "rejects",
    ),
    (
        "netlinkeventsreliable_in_stats",
        UNIX + "Stats {\n\tNetlinkEventsReliable on\n}\n",
        "t.conf:5: near 'NetlinkEventsReliable': expected one of LogFile, Syslog or '}' "
        "(NetlinkEventsReliable is not valid inside Stats)",
        "syntax",
    ),
    (
        "pollsecs_zero",
        "General {\n\tUNIX { Path /nonexistent/nfsyncd-test.ctl }\n\tPollSecs 0\n}\n",
        "t.conf:3: near '0': expected a number greater than 0 after PollSecs",
        "rejects",
    ),
    (
        "scheduler_priority",
        "General {\n\tUNIX { Path /nonexistent/nfsyncd-test.ctl }\n"
        "\tScheduler { Priority 100 }\n}\n",
        "t.conf:3: near '100': expected a priority from 0 to 99 after Priority",
        "rejects",
    ),
    (
        "unknown_helper",
        UNIX + "Helper {\n\tType ftpx inet tcp { QueueNum 1 }\n}\n",
        "t.conf:5: near 'ftpx': expected the name of a conntrackd user-space helper (amanda, "
        "dhcpv6, ftp, mdns, rpc, sane, slp, ssdp, tftp, tns)",
        "rejects",
    ),
    (
        "helper_wrong_protocol",
        UNIX + "Helper {\n\tType ftp inet udp { QueueNum 1 }\n}\n",
        "t.conf:5: near 'udp': expected tcp (the ftp helper only handles that)",
        "rejects",
    ),
    (
        "empty_policy",
        UNIX + "Helper {\n\tType ftp inet tcp {\n\t\tQueueNum 1\n\t\tPolicy ftp { }\n\t}\n}\n",
        "t.conf:7: near '}': expected ExpectMax or ExpectTimeout in Policy ftp (conntrackd "
        "rejects an empty policy)",
        "rejects",
    ),
    (
        "state_without_for_tcp",
        "General {\n\tFilter { State Accept { ESTABLISHED } }\n}\n",
        "t.conf:2: near '}': expected another TCP state or 'for TCP' in State Accept",
        "syntax",
    ),
    (
        "interface_that_reads_as_ipv6",
        UNIX + "Sync {\n\tMode FTFW { }\n\tUDP { Interface bad0 }\n}\n",
        "t.conf:6: near 'bad0': expected a name after Interface ('bad0' reads as a number or "
        "address)",
        "syntax",
    ),
    (
        "path_swallows_brace",
        "General {\n\tUNIX { Path /nonexistent/nfsyncd-test.ctl}\n}\n",
        "t.conf:4: near end of file: expected '}' to close General (opened at line 1); the "
        "path at line 2 swallowed a '}': conntrackd reads a path up to the next space",
        "syntax",
    ),
    (
        "link_without_interface",
        UNIX + "Sync {\n\tMode FTFW { }\n\tUDP { IPv4_address 198.18.0.1 "
        "IPv4_Destination_Address 198.18.0.2 Port 3780 }\n}\n",
        "t.conf:6: near '}': expected Interface in UDP (conntrackd cannot open a link without it)",
        "accepts",  # the parser does; the daemon then fails to open the link
    ),
    (
        "empty_accept_list",
        "General {\n\tFilter { Protocol Accept { Bogus } }\n}\n",
        "t.conf:2: near 'Accept': expected at least one protocol in Protocol Accept (with an "
        "empty list conntrackd replicates no flow at all)",
        "accepts",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"),
    [pytest.param(text, message, id=name) for name, text, message, _ in MALFORMED],
)
def test_malformed(text: str, message: str) -> None:
    with pytest.raises(ConntrackdConfError) as info:
        convert(text)
    assert str(info.value) == message
    err = info.value
    assert (err.source, err.line) == ("t.conf", int(message.split(":")[1]))
    assert message.startswith(f"t.conf:{err.line}: near ")
    assert err.expected in message


def test_error_attributes() -> None:
    with pytest.raises(ConntrackdConfError) as info:
        parse_conntrackd_conf("General {\n  HashSize x\n}\n", "/etc/conntrackd/conntrackd.conf")
    err = info.value
    assert (err.source, err.line, err.symbol) == ("/etc/conntrackd/conntrackd.conf", 2, "x")
    assert err.expected == "a number after HashSize"


def test_malformed_table_is_big_enough() -> None:
    assert len(MALFORMED) >= 12


# ------------------------------------------------------------------------------ lexer


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("bad0", [("ip", "bad0")]),
        ("0eth", [("ip", "0e"), ("str", "th")]),
        ("3780x", [("num", "3780"), ("str", "x")]),
        ("eth0.100", [("str", "eth0.100")]),
        ("fe80::1/64", [("ip", "fe80::1/64")]),
        ("198.18.0.1/24", [("ip", "198.18.0.1/24")]),
        ("Interfaces", [("str", "Interfaces")]),
        ("Interface", [("kw", "Interface")]),
        ("NOTRACK No on YES", [("mode", "NOTRACK"), ("off", "No"), ("on", "on"), ("on", "YES")]),
        ("persistent PERSISTENT", [("str", "persistent"), ("mode", "PERSISTENT")]),
        ("-5 +5", [("signed", "-5"), ("signed", "+5")]),
        ("/a/b}c x", [("path", "/a/b}c"), ("str", "x")]),
    ],
)
def test_tokens_follow_conntrackd_scanner(text: str, kinds: list[tuple[str, str]]) -> None:
    tokens = [(t.kind, t.text) for t in tokenize(text) if t.kind != "eof"]
    assert tokens == kinds


def test_crlf_files_are_read() -> None:
    config = load("General {\r\n UNIX { Path /run/x.ctl }\r\n HashLimit 10\r\n}\r\n")
    assert config.general.control_socket == "/run/x.ctl"
    assert config.general.cache_limit == 10


def test_import_is_light() -> None:
    code = (
        "import sys; import nfsyncd.conntrackd_conf as m; "
        "m.import_conntrackd_conf('General { HashSize 5 }'); "
        "bad = [n for n in ('trio', 'pyroute2') if n in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=DATA.parents[2])


# ------------------------------------------------------ cross-check with real conntrackd


def conntrackd_verdict(text: str, tmp_path: Path) -> tuple[str, int | None, str | None]:
    """("accepts" | "syntax" | "rejects", line, symbol) from conntrackd's own parser.

    ``conntrackd -C FILE -s`` is a client request: conntrackd reads the whole file, then
    connects to the UNIX Path. Every Path is pointed at a file that does not exist, and the
    process runs in an empty network namespace, so nothing outside is ever reached.
    """
    missing = tmp_path / "no-such-dir" / "ctl"
    safe = re.sub(r"(\bPath\s+)/[^\s\"}]*", lambda m: m.group(1) + str(missing), text)
    conf = tmp_path / "conntrackd.conf"
    conf.write_text(safe)
    proc = subprocess.run(
        ["unshare", "--net", str(CONNTRACKD), "-C", str(conf), "-s"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    output = proc.stdout + proc.stderr
    if "can't connect" in output:
        return "accepts", None, None
    match = re.search(r"parsing config file in line \((\d+)\), symbol '(.*)': syntax error", output)
    if match:
        return "syntax", int(match.group(1)), match.group(2)
    assert proc.returncode != 0, output
    return "rejects", None, None


@pytest.fixture
def conntrackd() -> None:
    if not CONNTRACKD.exists():
        skip_or_fail(f"{CONNTRACKD} is not installed (apt-get install conntrackd)")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        skip_or_fail("the conntrackd cross-check needs root and unshare (empty netns)")


@pytest.mark.usefixtures("conntrackd")
@pytest.mark.parametrize(
    ("text", "message", "verdict"),
    [pytest.param(text, message, verdict, id=name) for name, text, message, verdict in MALFORMED],
)
def test_conntrackd_agrees_on_malformed(
    text: str, message: str, verdict: str, tmp_path: Path
) -> None:
    kind, line, symbol = conntrackd_verdict(text, tmp_path)
    assert kind == verdict
    if kind == "syntax":
        with pytest.raises(ConntrackdConfError) as info:
            convert(text)
        assert (line, symbol) == (info.value.line, info.value.symbol)


@pytest.mark.usefixtures("conntrackd")
@pytest.mark.parametrize(
    "path",
    TEST_CONFIGS + [p for p in example_files() if p.name == "conntrackd.conf"],
    ids=lambda p: p.name if p.parent == DATA else str(p.relative_to(EXAMPLES)),
)
def test_conntrackd_accepts_what_we_import(path: Path, tmp_path: Path) -> None:
    assert conntrackd_verdict(path.read_text(), tmp_path)[0] == "accepts"


@pytest.mark.usefixtures("conntrackd")
def test_conntrackd_rejects_non_configs_at_the_same_line(tmp_path: Path) -> None:
    path = EXAMPLES / "sync" / "keepalived.conf"
    if not path.exists():
        skip_or_fail(f"{path} is missing")
    kind, line, symbol = conntrackd_verdict(path.read_text(), tmp_path)
    with pytest.raises(ConntrackdConfError) as info:
        convert(path.read_text())
    assert (kind, line, symbol) == ("syntax", info.value.line, info.value.symbol)


def test_import_config_errors_are_not_config_errors() -> None:
    """The two error types stay distinct: the CLI reports them differently."""
    assert not issubclass(ConntrackdConfError, ConfigError)
