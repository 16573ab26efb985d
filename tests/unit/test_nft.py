"""The generated nft table: model -> JSON and text, and the apply logic on a fake backend."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from nfsyncd._nft_fake import FakeBackend
from nfsyncd.config import Config, ConfigError, parse_config
from nfsyncd.nft import (
    NftError,
    TableOwner,
    apply,
    build_table,
    check,
    current,
    kernel_check,
    remove,
    render_json,
    render_text,
)

SYNC = """
[sync]
mode = "ftfw"
[[sync.links]]
transport = "udp"
interface = "sync0"
local = "198.18.1.1"
peer = "198.18.1.2"
[[sync.links]]
transport = "udp"
interface = "sync1"
local = "fd00:198:18::1"
peer = "fd00:198:18::2"
port = 3781
"""

HELPERS = """
[[helpers.assign]]
helper = "ftp"
ports = [21, "2121-2130"]
addresses = ["198.18.2.0/24", "198.18.0.10", "fd00:198:18:1::/64"]
interfaces = ["veth*", "eth0"]
[[helpers.assign]]
helper = "h323"
[[helpers.assign]]
helper = "q931"
family = "ip"
[[helpers.assign]]
helper = "netbios-ns"
"""

FILTER = """
[filter]
kernel_side = true
[filter.protocol]
accept = ["tcp", "udp"]
[filter.address]
ignore = ["127.0.0.1", "::1", "198.18.5.0/24"]
[filter.tcp_state]
accept = ["ESTABLISHED"]
"""


def config(text: str) -> Config:
    return parse_config(text, "nfsyncd.toml")


def commands(table_json: dict[str, Any], verb: str, kind: str) -> list[dict[str, Any]]:
    return [c[verb][kind] for c in table_json["nftables"] if verb in c and kind in c[verb]]


def rules_of(table_json: dict[str, Any], chain: str) -> list[dict[str, Any]]:
    return [r for r in commands(table_json, "add", "rule") if r["chain"] == chain]


# --- the model ------------------------------------------------------------------------------


def test_defaults_make_an_event_filter_only() -> None:
    table = build_table(config(""))
    assert table.name == "nfsyncd" and table.family == "inet"
    assert table.helpers == ()
    assert [(c.name, c.hook, c.priority) for c in table.chains] == [
        ("events_prerouting", "prerouting", 0),
        ("events_output", "output", 0),
    ]
    out = render_json(table)
    (rule,) = rules_of(out, "events_prerouting")
    assert rule["comment"] == "nftables.events"
    assert rule["expr"] == [
        {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["related", "new"]}},
        {
            "mangle": {
                "key": {"ct": {"key": "event"}},
                "value": ["new", "related", "destroy", "assured", "helper", "mark", "label"],
            }
        },
    ]
    assert 'ct event set new,related,destroy,assured,"helper","mark",label' in render_text(table)


def test_batch_replaces_only_its_own_table() -> None:
    out = render_json(build_table(config('[nftables]\ntable = "fw_sync"\n' + HELPERS + SYNC)))
    head = out["nftables"][:3]
    ref = {"table": {"family": "inet", "name": "fw_sync"}}
    assert head == [{"add": ref}, {"delete": ref}, {"add": ref}]
    for command in out["nftables"]:
        (body,) = command.values()
        (obj,) = body.values()
        assert obj.get("table", obj.get("name")) == "fw_sync"
        assert obj["family"] == "inet"


def test_helper_objects_one_per_kernel_helper_protocol_and_family() -> None:
    table = build_table(config(HELPERS))
    objects = [(h.name, h.type, h.protocol, h.l3proto) for h in table.helpers]
    assert objects == [
        ("ftp-tcp", "ftp", "tcp", "inet"),
        ("q931-tcp", "Q.931", "tcp", "inet"),  # h323 over tcp is the kernel's Q.931
        ("q931-tcp-ip", "Q.931", "tcp", "ip"),
        ("netbios-ns-udp", "netbios-ns", "udp", "ip"),  # an IPv4-only kernel helper
    ]
    assert commands(render_json(table), "add", "ct helper")[0] == {
        "family": "inet",
        "table": "nfsyncd",
        "name": "ftp-tcp",
        "type": "ftp",
        "protocol": "tcp",
        "l3proto": "inet",
    }


def test_assignment_rules_match_ports_addresses_and_interfaces() -> None:
    table = build_table(config(HELPERS))
    chains = {c.name: c for c in table.chains}
    assert (chains["helpers_prerouting"].hook, chains["helpers_prerouting"].priority) == (
        "prerouting",
        0,
    )
    assert (chains["helpers_output"].hook, chains["helpers_output"].priority) == ("output", 0)
    pre = [r.text() for r in chains["helpers_prerouting"].rules]
    assert pre == [
        "ct state new tcp dport { 21, 2121-2130 } ip daddr { 198.18.0.10, 198.18.2.0/24 } "
        'iifname { "eth0", "veth*" } ct helper set "ftp-tcp" comment "helpers.assign[0]"',
        "ct state new tcp dport { 21, 2121-2130 } ip6 daddr fd00:198:18:1::/64 "
        'iifname { "eth0", "veth*" } ct helper set "ftp-tcp" comment "helpers.assign[0]"',
        'ct state new tcp dport 1720 ct helper set "q931-tcp" comment "helpers.assign[1]"',
        'meta nfproto ipv4 ct state new tcp dport 1720 ct helper set "q931-tcp-ip" '
        'comment "helpers.assign[2]"',
        'meta nfproto ipv4 ct state new udp dport 137 ct helper set "netbios-ns-udp" '
        'comment "helpers.assign[3]"',
    ]
    # no input interface on locally originated connections: entry 0 has no output rule
    out = [r.comment for r in chains["helpers_output"].rules]
    assert out == ["helpers.assign[1]", "helpers.assign[2]", "helpers.assign[3]"]
    expr = rules_of(render_json(table), "helpers_prerouting")[0]["expr"]
    assert expr[1] == {
        "match": {
            "op": "==",
            "left": {"payload": {"protocol": "tcp", "field": "dport"}},
            "right": {"set": [21, {"range": [2121, 2130]}]},
        }
    }
    assert expr[2]["match"]["right"] == {
        "set": ["198.18.0.10", {"prefix": {"addr": "198.18.2.0", "len": 24}}]
    }
    assert expr[3]["match"]["left"] == {"meta": {"key": "iifname"}}
    assert expr[-1] == {"ct helper": "ftp-tcp"}


def test_kernel_side_filter_silences_ignored_flows_first() -> None:
    table = build_table(config(FILTER))
    chain = next(c for c in table.chains if c.name == "events_output")
    assert [r.text() for r in chain.rules] == [
        "ct state related,new ct protocol != { 6, 17 } ct event set 0x0 accept "
        'comment "filter.protocol"',
        "ct state related,new meta nfproto ipv4 ct original ip saddr "
        '{ 127.0.0.1, 198.18.5.0/24 } ct event set 0x0 accept comment "filter.address"',
        "ct state related,new meta nfproto ipv4 ct reply ip saddr "
        '{ 127.0.0.1, 198.18.5.0/24 } ct event set 0x0 accept comment "filter.address"',
        "ct state related,new meta nfproto ipv6 ct original ip6 saddr ::1 ct event set 0x0 "
        'accept comment "filter.address"',
        "ct state related,new meta nfproto ipv6 ct reply ip6 saddr ::1 ct event set 0x0 "
        'accept comment "filter.address"',
        'ct state related,new ct event set new,related,destroy,assured,"helper","mark",label '
        'comment "nftables.events"',
    ]
    assert chain.notes and "filter.tcp_state" in chain.notes[0]
    assert "# filter.tcp_state: not mirrored here" in render_text(table)
    silenced = rules_of(render_json(table), "events_prerouting")[1]["expr"]
    assert silenced[2] == {
        "match": {
            "op": "==",
            "left": {"ct": {"key": "ip saddr", "dir": "original"}},
            "right": {"set": ["127.0.0.1", {"prefix": {"addr": "198.18.5.0", "len": 24}}]},
        }
    }
    assert silenced[-2:] == [
        {"mangle": {"key": {"ct": {"key": "event"}}, "value": 0}},
        {"accept": None},
    ]


def test_accept_address_filter_needs_neither_source_listed() -> None:
    text = "[filter]\nkernel_side = true\n[filter.address]\naccept = ['198.18.0.0/15']\n"
    chain = build_table(config(text)).chains[0]
    assert [r.text() for r in chain.rules[:2]] == [
        "ct state related,new meta nfproto ipv4 ct original ip saddr != 198.18.0.0/15 "
        "ct reply ip saddr != 198.18.0.0/15 ct event set 0x0 accept "
        'comment "filter.address"',
        # nothing IPv6 is accepted: every IPv6 flow is silenced
        'ct state related,new meta nfproto ipv6 ct event set 0x0 accept comment "filter.address"',
    ]


def test_the_userspace_filter_alone_adds_no_kernel_rules() -> None:
    chain = build_table(config(FILTER.replace("kernel_side = true", ""))).chains[0]
    assert [r.comment for r in chain.rules] == ["nftables.events"]
    assert chain.notes == ()


def test_events_config_and_event_filter_off() -> None:
    table = build_table(config('[nftables]\nevents = ["destroy"]\n'))
    (rule,) = rules_of(render_json(table), "events_output")
    assert rule["expr"][-1]["mangle"]["value"] == "destroy"
    table = build_table(config("[nftables]\nevent_filter = false\n"))
    assert table.chains == ()
    assert render_text(table) == "table inet nfsyncd {\n}\n"


def test_unknown_event_is_a_config_error_naming_key_and_value() -> None:
    with pytest.raises(ConfigError) as info:
        config('[nftables]\nevents = ["new", "assurd"]\n')
    assert info.value.path == "nftables.events[1]"
    assert '"assurd"' in info.value.message


def test_notrack_for_each_sync_link() -> None:
    table = build_table(config(SYNC))
    chains = {c.name: c for c in table.chains}
    assert chains["notrack_prerouting"].priority == chains["notrack_output"].priority == -300
    assert [r.text() for r in chains["notrack_prerouting"].rules] == [
        'ip saddr 198.18.1.2 ip daddr 198.18.1.1 udp dport 3780 notrack comment "sync.links[0]"',
        "ip6 saddr fd00:198:18::2 ip6 daddr fd00:198:18::1 udp dport 3781 notrack "
        'comment "sync.links[1]"',
    ]
    assert chains["notrack_output"].rules[0].text() == (
        'ip saddr 198.18.1.1 ip daddr 198.18.1.2 udp dport 3780 notrack comment "sync.links[0]"'
    )
    assert rules_of(render_json(table), "notrack_output")[0]["expr"][-1] == {"notrack": None}
    off = build_table(config("[nftables]\nnotrack_sync = false\n" + SYNC))
    assert not any(c.name.startswith("notrack") for c in off.chains)


def test_notrack_for_a_tcp_link_matches_both_ports() -> None:
    chains = {c.name: c for c in build_table(config(SYNC.replace('"udp"', '"tcp"'))).chains}
    assert [r.text() for r in chains["notrack_output"].rules] == [
        'ip saddr 198.18.1.1 ip daddr 198.18.1.2 tcp dport 3780 notrack comment "sync.links[0]"',
        'ip saddr 198.18.1.1 ip daddr 198.18.1.2 tcp sport 3780 notrack comment "sync.links[0]"',
        "ip6 saddr fd00:198:18::1 ip6 daddr fd00:198:18::2 tcp dport 3781 notrack "
        'comment "sync.links[1]"',
        "ip6 saddr fd00:198:18::1 ip6 daddr fd00:198:18::2 tcp sport 3781 notrack "
        'comment "sync.links[1]"',
    ]


def test_notrack_for_a_multicast_link() -> None:
    text = (
        '[sync]\nmode = "notrack"\n[[sync.links]]\ntransport = "multicast"\n'
        'interface = "sync0"\ngroup = "225.0.0.50"\nlocal = "198.18.1.1"\n'
    )
    chains = {c.name: c for c in build_table(config(text)).chains}
    assert [r.text() for r in chains["notrack_prerouting"].rules] == [
        'ip daddr 225.0.0.50 udp dport 3780 notrack comment "sync.links[0]"'
    ]
    assert [r.text() for r in chains["notrack_output"].rules] == [
        'ip saddr 198.18.1.1 ip daddr 225.0.0.50 udp dport 3780 notrack comment "sync.links[0]"'
    ]


def test_json_and_text_say_the_same() -> None:
    # Every rule's text is its JSON expressions, one by one, in the same order.
    table = build_table(config(HELPERS + FILTER + SYNC))
    out = render_json(table)
    for chain in table.chains:
        listed = rules_of(out, chain.name)
        assert len(listed) == len(chain.rules)
        for rule, body in zip(chain.rules, listed, strict=True):
            assert body["comment"] == rule.comment
            assert len(body["expr"]) == len(rule.matches) + len(rule.statements)
    text = render_text(table)
    assert (
        text.count("\t\tct state") + text.count("\t\tmeta nfproto") + text.count("\t\tip")
        == table.rule_count
    )
    json.dumps(out)  # plain JSON


# --- applying, with the fake backend --------------------------------------------------------


def test_apply_is_one_batch_and_reapply_is_idempotent() -> None:
    backend = FakeBackend()
    table = build_table(config(HELPERS + SYNC))
    apply(table, backend)
    assert len(backend.batches) == 1
    first = current("nfsyncd", backend)
    apply(table, backend)
    assert len(backend.applied) == 2
    assert current("nfsyncd", backend) == first
    assert first is not None
    assert len([i for i in first["nftables"] if "rule" in i]) == table.rule_count


def test_apply_leaves_other_tables_alone_and_remove_only_removes_ours() -> None:
    backend = FakeBackend(tables={"other": [{"chain": {"name": "x", "table": "other"}}]})
    apply(build_table(config("")), backend)
    assert set(backend.tables) == {"other", "nfsyncd"}
    remove("nfsyncd", backend)
    assert set(backend.tables) == {"other"}
    remove("nfsyncd", backend)  # absent: still fine
    assert current("nfsyncd", backend) is None
    assert backend.tables["other"] == [{"chain": {"name": "x", "table": "other"}}]


def test_a_refused_batch_changes_nothing_and_names_the_rule() -> None:
    table = build_table(config(HELPERS + SYNC))
    backend = FakeBackend()
    apply(table, backend)
    before = current("nfsyncd", backend)

    def refuse(command: dict[str, Any]) -> str | None:
        rule = command.get("add", {}).get("rule")
        if rule and rule["comment"] == "helpers.assign[3]":
            return "No such file or directory"
        return None

    backend.fail = refuse
    with pytest.raises(NftError) as info:
        apply(table, backend)
    assert info.value.where == "rule 4 of chain helpers_prerouting (from helpers.assign[3])"
    assert "No such file or directory" in str(info.value)
    backend.fail = None
    assert current("nfsyncd", backend) == before
    with pytest.raises(NftError):
        check(table, FakeBackend(fail=refuse))


def test_check_is_a_dry_run() -> None:
    backend = FakeBackend()
    check(build_table(config(HELPERS)), backend)
    assert backend.tables == {} and backend.batches[0][1] is True
    ok, message = kernel_check(config(HELPERS), backend)
    assert ok is True and "accepts table inet nfsyncd" in message
    ok, message = kernel_check(config("[nftables]\nenabled = false\n"), backend)
    assert ok is None


def test_table_owner_applies_renames_disables_and_remembers_errors() -> None:
    backend = FakeBackend()
    owner = TableOwner(backend)
    owner.apply(config(HELPERS))
    assert owner.status(config(HELPERS)) == {
        "enabled": True,
        "table": "inet nfsyncd",
        "applied": True,
        "rules": 10,
        "last_error": None,
    }
    owner.apply(config('[nftables]\ntable = "renamed"\n'))
    assert set(backend.tables) == {"renamed"}
    assert len(backend.applied) == 2  # the rename is one transaction too
    backend.fail = lambda c: "Invalid argument" if "chain" in c.get("add", {}) else None
    with pytest.raises(NftError):
        owner.apply(config(HELPERS))
    assert owner.name == "renamed" and owner.applied and owner.last_error
    backend.fail = None
    owner.apply(config("[nftables]\nenabled = false\n"))
    assert backend.tables == {} and not owner.applied
    owner.remove()  # nothing applied: nothing sent
    assert len(backend.applied) == 4  # apply, rename, the refused one, the removal


# --- nfsyncctl nft ---------------------------------------------------------------------------


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nfsyncd.ctl", *args], capture_output=True, text=True, timeout=60
    )


def test_nfsyncctl_nft_show_text_and_json(tmp_path: Any) -> None:
    path = tmp_path / "nfsyncd.toml"
    path.write_text(HELPERS + SYNC)
    shown = ctl("-C", str(path), "nft", "show")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == render_text(build_table(config(HELPERS + SYNC)))
    as_json = ctl("nft", "show", "--json", "-C", str(path))
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == render_json(build_table(config(HELPERS + SYNC)))


def test_nfsyncctl_nft_config_errors_exit_2(tmp_path: Any) -> None:
    path = tmp_path / "nfsyncd.toml"
    path.write_text('[nftables]\nevents = ["nope"]\n')
    for action in ("show", "check"):
        result = ctl("nft", action, "-C", str(path))
        assert result.returncode == 2
        assert "nftables.events[0]" in result.stderr
    assert ctl("nft").returncode == 2  # an action is required


def test_nfsyncctl_nft_help_describes_the_table() -> None:
    result = ctl("nft", "--help")
    assert result.returncode == 0
    for word in ("helpers_prerouting", "notrack", "exit status", "never touches"):
        assert word in result.stdout


def test_nft_module_stays_light() -> None:
    code = (
        "import sys, nfsyncd.ctl, nfsyncd.nft\n"
        "bad = {'trio', 'pyroute2', 'nftables'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
