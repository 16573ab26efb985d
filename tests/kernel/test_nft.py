"""The generated nft table against the real kernel, inside throwaway namespaces.

What the kernel holds after ``apply`` is compared with the model through a normal form
(handles dropped, sets as merged intervals, protocol names as numbers): nft merges and
reorders set elements, and that must not hide a real difference nor fake one.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nfsyncd._nft_model import CtHelper
from nfsyncd.config import Config, parse_config
from nfsyncd.lab.netns import Netns
from nfsyncd.nft import (
    NftBackend,
    NftError,
    apply,
    build_table,
    current,
    remove,
    render_json,
    render_text,
)
from tests._support import FTP_PASSIVE_PORTS, FtpServer, NetnsPair, lftp, wait_until
from tests.daemon._harness import base_config, start_daemon

pytestmark = pytest.mark.kernel

JsonDict = dict[str, Any]

CONFIG = """
[filter]
kernel_side = true
[filter.protocol]
accept = ["tcp", "udp", "icmp"]
[filter.address]
ignore = ["127.0.0.1", "::1", "198.18.5.0/24", "198.18.4.0/24", "fd00:198:18:9::/64"]
[sync]
mode = "ftfw"
[[sync.links]]
transport = "tcp"
interface = "sync0"
local = "198.18.1.1"
peer = "198.18.1.2"
[[helpers.assign]]
helper = "ftp"
ports = [21, "2121-2130", "2125-2140"]
addresses = ["198.18.2.0/24", "198.18.3.0/24", "198.18.0.10", "fd00:198:18:1::/64"]
interfaces = ["veth*", "eth0"]
[[helpers.assign]]
helper = "sip"
[[helpers.assign]]
helper = "sip"
protocol = "tcp"
family = "ip6"
[[helpers.assign]]
helper = "h323"
[[helpers.assign]]
helper = "ras"
[[helpers.assign]]
helper = "tftp"
[[helpers.assign]]
helper = "irc"
[[helpers.assign]]
helper = "pptp"
[[helpers.assign]]
helper = "amanda"
[[helpers.assign]]
helper = "sane"
[[helpers.assign]]
helper = "snmp"
[[helpers.assign]]
helper = "netbios-ns"
"""


def config(text: str = CONFIG) -> Config:
    return parse_config(text, "nfsyncd.toml")


class NsBackend:
    """The real backend, run from inside ``ns`` (never the host's ruleset)."""

    def __init__(self, ns: Netns) -> None:
        self.ns = ns
        with ns.entered():
            self.inner = NftBackend()

    def run(self, commands: list[JsonDict], *, dry_run: bool = False) -> list[JsonDict]:
        with self.ns.entered():
            return self.inner.run(commands, dry_run=dry_run)


@pytest.fixture
def backend(netns: Netns) -> NsBackend:
    return NsBackend(netns)


def listing(ns: Netns, name: str = "nfsyncd") -> list[JsonDict]:
    items: list[JsonDict] = json.loads(ns.run("nft", "-j", "list", "table", "inet", name).stdout)[
        "nftables"
    ]
    return items


# --- the normal form -------------------------------------------------------------------------


def _interval(value: Any) -> tuple[int, int] | str:
    if isinstance(value, bool):
        raise AssertionError(value)
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, dict) and "range" in value:
        low, high = value["range"]
        return (int(low), int(high))
    if isinstance(value, dict) and "prefix" in value:
        net = ipaddress.ip_network(f"{value['prefix']['addr']}/{value['prefix']['len']}")
        return (int(net.network_address), int(net.broadcast_address))
    if isinstance(value, str):
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            return value
        return (int(addr), int(addr))
    raise AssertionError(value)


def _merged(values: list[Any], left: JsonDict) -> list[Any]:
    if left.get("ct", {}).get("key") == "protocol" or left.get("meta", {}).get("key") in (
        "l4proto",
    ):
        values = [socket.getprotobyname(v) if isinstance(v, str) else v for v in values]
    items = [_interval(v) for v in values]
    words = sorted(v for v in items if isinstance(v, str))
    ranges = sorted(v for v in items if isinstance(v, tuple))
    merged: list[list[int]] = []
    for low, high in ranges:
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return [*words, *merged]


def _expr(expr: JsonDict) -> Any:
    if "match" in expr:
        match = expr["match"]
        right = match["right"]
        values = right["set"] if isinstance(right, dict) and "set" in right else right
        values = values if isinstance(values, list) else [values]
        op = "==" if match["op"] == "in" else match["op"]
        return ["match", op, match["left"], _merged(values, match["left"])]
    if "mangle" in expr:
        value = expr["mangle"]["value"]
        events = [] if value == 0 else value if isinstance(value, list) else [value]
        return ["ct event set", sorted(events)]
    return expr


def normal_form(items: list[JsonDict]) -> JsonDict:
    """Objects, chains and rules of a listing or of ``add`` commands, comparable."""
    out: JsonDict = {"helpers": [], "chains": [], "rules": []}
    for item in items:
        if "add" in item:
            item = item["add"]
        if "ct helper" in item:
            obj = {k: v for k, v in item["ct helper"].items() if k != "handle"}
            out["helpers"].append(obj)
        elif "chain" in item:
            obj = {k: v for k, v in item["chain"].items() if k != "handle"}
            out["chains"].append(obj)
        elif "rule" in item:
            rule = item["rule"]
            out["rules"].append(
                [rule["chain"], rule.get("comment"), [_expr(e) for e in rule["expr"]]]
            )
    out["helpers"].sort(key=lambda h: h["name"])
    out["chains"].sort(key=lambda c: c["name"])
    return out


def model_form(cfg: Config) -> JsonDict:
    batch = render_json(build_table(cfg))["nftables"]
    return normal_form([c for c in batch if "add" in c and "table" not in c["add"]])


# --- tests -----------------------------------------------------------------------------------


def test_applied_table_is_the_model(netns: Netns, backend: NsBackend) -> None:
    cfg = config()
    apply(build_table(cfg), backend)
    listed = normal_form(listing(netns))
    assert listed == model_form(cfg)
    # the normal form does not hide everything: the model has what we configured
    assert len(listed["helpers"]) == 12
    assert {c["name"]: c["prio"] for c in listed["chains"]}["notrack_output"] == -300
    assert current("nfsyncd", backend) is not None


def test_text_rendering_loads_as_the_same_table(netns: Netns, backend: NsBackend) -> None:
    cfg = config()
    text = render_text(build_table(cfg))
    netns.run("nft", "-c", "-f", "-", input=text)  # parses and the kernel would take it
    netns.nft(text)
    from_text = normal_form(listing(netns))
    remove("nfsyncd", backend)
    apply(build_table(cfg), backend)
    assert normal_form(listing(netns)) == from_text


def test_reapply_is_idempotent(netns: Netns, backend: NsBackend) -> None:
    table = build_table(config())
    apply(table, backend)
    first = listing(netns)
    apply(table, backend)
    second = listing(netns)

    def no_handles(items: list[JsonDict]) -> list[JsonDict]:
        out = []
        for item in items:
            for body in item.values():
                if isinstance(body, dict):
                    body.pop("handle", None)
            out.append(item)
        return out

    assert no_handles(first) == no_handles(second)


def test_a_refused_table_leaves_the_previous_one(netns: Netns, backend: NsBackend) -> None:
    good = build_table(config())
    apply(good, backend)
    before = normal_form(listing(netns))
    bad = dataclasses.replace(
        build_table(config('[[helpers.assign]]\nhelper = "ftp"\nports = [2121]\n')),
        helpers=(CtHelper("bogus", "no-such-helper", "tcp", "inet"),),
    )
    with pytest.raises(NftError) as info:
        apply(bad, backend)
    assert info.value.where == 'ct helper "bogus"'
    assert "No such file or directory" in info.value.message
    assert normal_form(listing(netns)) == before


def test_other_tables_are_never_touched(netns: Netns, backend: NsBackend) -> None:
    netns.nft(
        "table inet other {\n chain c {\n  type filter hook input priority 10;\n"
        '  tcp dport 22 counter accept comment "mine"\n }\n}\n'
        "table ip nfsyncd {\n chain c {\n  type filter hook input priority 10;\n }\n}\n"
    )
    before = netns.run("nft", "list", "ruleset").stdout
    apply(build_table(config()), backend)
    apply(build_table(config('[nftables]\ntable = "renamed"\n')), backend, previous="nfsyncd")
    remove("renamed", backend)
    remove("renamed", backend)  # gone already: still no error, still nothing else touched
    assert netns.run("nft", "list", "ruleset").stdout == before


@pytest.fixture
def owned_table(netns: Netns) -> Iterator[str]:
    """A table ``inet nfsyncd`` that another process owns (nft ``flags owner``).

    The kernel lets only its owner change or delete it, so every batch of ours that names
    it is refused: what another nfsyncd holding the table looks like.
    """
    code = (
        "import nftables, sys\n"
        "n = nftables.Nftables()\n"
        "rc, _, err = n.cmd('add table inet nfsyncd { flags owner; }')\n"
        "print('ready' if rc == 0 else err, flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = netns.popen(
        sys.executable, "-c", code, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield "nfsyncd"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


def test_check_config_and_nft_check_report_what_the_kernel_refuses(
    netns: Netns, owned_table: str, tmp_path: Path
) -> None:
    path = tmp_path / "nfsyncd.toml"
    path.write_text('[[helpers.assign]]\nhelper = "ftp"\n')
    py = sys.executable
    daemon = netns.run(py, "-m", "nfsyncd.daemon", "--check-config", str(path), check=False)
    assert daemon.returncode == 2, daemon.stdout + daemon.stderr
    assert "refuses table inet nfsyncd" in daemon.stderr
    assert "Operation not permitted" in daemon.stderr
    ctl = netns.run(py, "-m", "nfsyncd.ctl", "check-config", str(path), check=False)
    assert ctl.returncode == 2 and "Operation not permitted" in ctl.stderr
    check = netns.run(py, "-m", "nfsyncd.ctl", "nft", "check", "-C", str(path), check=False)
    assert check.returncode == 1 and "Operation not permitted" in check.stderr
    # the same config passes where the name is free
    path.write_text('[nftables]\ntable = "free"\n[[helpers.assign]]\nhelper = "ftp"\n')
    ok = netns.run(py, "-m", "nfsyncd.daemon", "--check-config", str(path), check=False)
    assert ok.returncode == 0 and "the kernel accepts table inet free (4 rules)" in ok.stdout
    assert netns.run("nft", "list", "tables").stdout.split() == ["table", "inet", "nfsyncd"]


def test_check_config_without_cap_net_admin_is_skipped(netns: Netns, tmp_path: Path) -> None:
    path = tmp_path / "nfsyncd.toml"
    path.write_text('[[helpers.assign]]\nhelper = "ftp"\n')
    result = netns.run(
        "capsh", "--drop=cap_net_admin", "--", "-c",
        f"{sys.executable} -m nfsyncd.ctl check-config {path}",
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "kernel dry-run skipped: this process lacks CAP_NET_ADMIN" in result.stdout


def test_daemon_start_failure_is_a_startup_error(
    netns: Netns, owned_table: str, tmp_path: Path
) -> None:
    text = base_config(tmp_path, nftables="")
    daemon = start_daemon(netns, tmp_path, text, wait_ready=False)
    assert daemon.proc.wait(20) == 1
    assert "nftables: cannot apply table inet nfsyncd" in daemon.log_text()
    assert "Operation not permitted" in daemon.log_text()


def test_daemon_applies_reloads_and_removes_its_table(
    netns: Netns, owned_table: str, tmp_path: Path
) -> None:
    # "inet nfsyncd" is taken (owned by another process): the daemon uses "mine", and a
    # reload that renames it to the taken one must fail and keep everything as it was.
    def text(port: int, table: str = "mine") -> str:
        helpers = f'\n[[helpers.assign]]\nhelper = "ftp"\nports = [{port}]\n'
        return base_config(tmp_path, nftables=f'table = "{table}"\n') + helpers

    daemon = start_daemon(netns, tmp_path, text(2121))
    try:
        status = daemon.status()["nftables"]
        assert status == {
            "enabled": True,
            "table": "inet mine",
            "applied": True,
            "rules": 4,
            "last_error": None,
        }

        def ports() -> list[Any]:
            for item in listing(netns, "mine"):
                rule = item.get("rule")
                if rule and rule["chain"] == "helpers_prerouting":
                    return [e["match"]["right"] for e in rule["expr"] if "match" in e][1:]
            return []

        assert ports() == [2121]
        daemon.config.write_text(text(2122))
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: ports() == [2122], timeout=20, what="the reloaded helper port")
        wait_until(lambda: daemon.status()["reloads"] == 1, timeout=20, what="reload counted")

        daemon.config.write_text(text(2123, table="nfsyncd"))  # refused by the kernel
        daemon.signal(signal.SIGHUP)
        wait_until(
            lambda: daemon.status()["reload_failures"] == 1, timeout=20, what="a failed reload"
        )
        status = daemon.status()["nftables"]
        assert status["table"] == "inet mine" and status["applied"]
        assert "Operation not permitted" in status["last_error"]
        assert ports() == [2122]
        daemon.wait_log("keeping the running configuration and nftables table")
    finally:
        assert daemon.stop() == 0
    tables = netns.run("nft", "list", "tables").stdout
    assert "inet mine" not in tables and "inet nfsyncd" in tables  # ours gone, theirs kept


def test_expectation_events_are_not_filtered_by_ct_event_set(
    netns_pair: NetnsPair, ftp_server: Callable[..., FtpServer]
) -> None:
    # Flow events cut to DESTROY only; the FTP helper's expectation still reports NEW,
    # because ``ct event set`` changes a flow's event mask, not its expectation mask.
    server_ns = netns_pair.b
    cfg = config(
        '[nftables]\nevents = ["destroy"]\n[[helpers.assign]]\nhelper = "ftp"\nports = [2121]\n'
    )
    apply(build_table(cfg), NsBackend(server_ns))
    # both monitors subscribe while the server starts (that waits for its port to answer)
    events = server_ns.popen("conntrack", "-E", "expect", stdout=subprocess.PIPE, text=True)
    flows = server_ns.popen("conntrack", "-E", "-e", "NEW", stdout=subprocess.PIPE, text=True)
    try:
        server = ftp_server(server_ns, netns_pair.b_ip)
        lftp(netns_pair.a, server.url, "ls", passive=True)
        assert events.stdout is not None
        ready, _, _ = select.select([events.stdout], [], [], 10)
        assert ready, "no expectation event within 10 s"
        line = events.stdout.readline()
        assert "[NEW]" in line and "helper=ftp" in line, line
        dport = re.search(r" sport=0 dport=(\d+) ", line)
        assert dport is not None and int(dport[1]) in FTP_PASSIVE_PORTS, line
    finally:
        events.terminate()
        flows.terminate()
        events.wait(5)
        flows.wait(5)
    assert flows.stdout is not None
    assert flows.stdout.read() == ""  # no NEW flow event at all: the flow filter works
