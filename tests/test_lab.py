"""Tests of the lab itself: namespaces, veths, entering, process cleanup, FTP + ftp helper."""

from __future__ import annotations

import errno
import ftplib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from nfsyncd.lab.netns import CommandError, Netns, add_address, cleanup_all
from tests._support import (
    FTP_PASSIVE_PORTS,
    FtpServer,
    NetnsPair,
    ftp_helper_ruleset,
    lftp,
    require_binary,
    wait_until,
)

pytestmark = pytest.mark.kernel

FtpFactory = Callable[..., FtpServer]


def netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def expectations(ns: Netns) -> list[str]:
    out = ns.run("conntrack", "-L", "expect").stdout
    return [line for line in out.splitlines() if line.strip()]


# -- namespaces -----------------------------------------------------------------------------


def test_namespace_created_and_deleted() -> None:
    ns = Netns.create("t")
    try:
        assert re.fullmatch(rf"t-{os.getpid()}-\d+", ns.name)
        assert ns.name in netns_names()
        links = ns.ip("-o", "link", "show").stdout.splitlines()
        assert len(links) == 1
        assert ": lo:" in links[0]
        assert "UP" in links[0].split("<", 1)[1].split(">", 1)[0].split(",")
    finally:
        ns.close()
    assert ns.closed
    assert ns.name not in netns_names()
    ns.close()  # idempotent
    with pytest.raises(RuntimeError, match="already deleted"):
        ns.run("true")


def test_context_manager_deletes_on_error() -> None:
    with pytest.raises(ZeroDivisionError), Netns.create("t") as ns:
        name = ns.name
        assert name in netns_names()
        1 / 0  # noqa: B018
    assert name not in netns_names()


def test_cleanup_all_deletes_only_own_namespaces() -> None:
    mine = [Netns.create("t"), Netns.create("t")]
    foreign = f"t-foreign-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    try:
        cleanup_all()
        names = netns_names()
        assert all(ns.name not in names for ns in mine)
        assert all(ns.closed for ns in mine)
        assert foreign in names
    finally:
        subprocess.run(["ip", "netns", "del", foreign], check=True)


def test_run_error_names_command_status_and_stderr(netns: Netns) -> None:
    with pytest.raises(CommandError) as info:
        netns.run("sh", "-c", "echo stdout-text; echo boom-on-stderr >&2; exit 3")
    err = info.value
    assert err.returncode == 3
    assert "stdout-text" in err.stdout
    message = str(err)
    assert "boom-on-stderr" in message
    assert "status 3" in message
    assert "sh -c" in message
    assert netns.run("false", check=False).returncode == 1
    assert netns.run("cat", input="fed on stdin").stdout == "fed on stdin"


def test_sysctl_is_per_namespace(netns: Netns) -> None:
    outside_before = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    netns.sysctl("net.ipv4.ip_forward", 1)
    assert netns.get_sysctl("net.ipv4.ip_forward") == "1"
    netns.sysctl("net.ipv4.ip_forward", 0)
    assert netns.get_sysctl("net.ipv4.ip_forward") == "0"
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == outside_before


def test_nft_is_per_namespace(netns: Netns) -> None:
    netns.nft(
        "table inet nfsyncd_lab_probe {\n chain c { type filter hook input priority 0; }\n}\n"
    )
    assert "table inet nfsyncd_lab_probe" in netns.run("nft", "list", "tables").stdout
    outside = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True)
    assert "nfsyncd_lab_probe" not in outside.stdout
    with pytest.raises(CommandError, match="syntax error"):
        netns.nft("table inet broken { chain c { this is not nft } }")


def test_addresses_outside_lab_networks_are_refused(netns: Netns) -> None:
    for bad in ("10.0.0.1/8", "198.18.0.1/8", "192.0.2.1/24", "2001:db8::1/64", "fd00::1/64"):
        with pytest.raises(ValueError, match="outside the lab networks"):
            add_address(netns, "lo", bad)
    add_address(netns, "lo", "198.19.255.1/32")
    add_address(netns, "lo", "fd00:198:18:ffff::1/128")
    addrs = netns.ip("-o", "address", "show", "dev", "lo").stdout
    assert "198.19.255.1/32" in addrs
    assert "fd00:198:18:ffff::1/128" in addrs
    assert "10.0.0.1" not in addrs


# -- veth, entering -------------------------------------------------------------------------


def test_veth_ping(netns_pair: NetnsPair) -> None:
    require_binary("ping")
    p = netns_pair
    p.a.run("ping", "-c1", "-W1", p.b_ip)
    p.b.run("ping", "-c1", "-W1", p.a_ip)
    add_address(p.a, p.a_if, "fd00:198:18::1/64")
    add_address(p.b, p.b_if, "fd00:198:18::2/64")
    p.a.run("ping", "-6", "-c1", "-W1", "fd00:198:18::2")
    # No route to anything else: the lab is closed.
    assert p.a.run("ping", "-c1", "-W1", "198.19.0.1", check=False).returncode != 0


def test_entered_creates_sockets_in_the_namespace(netns: Netns, netns_pair: NetnsPair) -> None:
    outside_ifaces = socket.if_nameindex()
    with netns.entered():
        assert [name for _, name in socket.if_nameindex()] == ["lo"]
    with netns_pair.b.entered():
        listener = socket.create_server((netns_pair.b_ip, 0))
    with netns_pair.a.entered():
        assert {name for _, name in socket.if_nameindex()} == {"lo", netns_pair.a_if}
        client = socket.socket()
    assert socket.if_nameindex() == outside_ifaces  # back in the original namespace
    with listener, client:
        # Both sockets were made in their namespaces and stay there after leaving them.
        client.settimeout(5)
        client.connect(listener.getsockname())
        conn, peer = listener.accept()
        with conn:
            assert peer[0] == netns_pair.a_ip
            client.sendall(b"hi")
            assert conn.recv(2) == b"hi"


def test_entered_restores_namespace_after_error(netns: Netns) -> None:
    outside_ifaces = socket.if_nameindex()
    with pytest.raises(KeyError), netns.entered():
        raise KeyError("inside")
    assert socket.if_nameindex() == outside_ifaces


def test_processes_stopped_by_pid_on_close() -> None:
    ns = Netns.create("t")
    try:
        polite = ns.popen("sleep", "600")
        stubborn = ns.popen(
            sys.executable,
            "-c",
            "import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n",
            stdout=subprocess.PIPE,
            text=True,
        )
        assert stubborn.stdout is not None
        assert stubborn.stdout.readline() == "ready\n"
        # `ip netns exec` execs in place: the tracked PID is the command itself.
        assert Path(f"/proc/{polite.pid}/comm").read_text().strip() == "sleep"
        ns_inode = os.stat(ns.path).st_ino
        assert os.stat(f"/proc/{polite.pid}/ns/net").st_ino == ns_inode
    finally:
        ns.close(grace=0.5)
    stubborn.stdout.close()
    assert polite.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL
    assert ns.name not in netns_names()


# -- FTP through the in-kernel ftp helper ---------------------------------------------------


@pytest.mark.parametrize("passive", [True, False], ids=["pasv", "active"])
def test_lftp_transfers(netns_pair: NetnsPair, ftp_server: FtpFactory, passive: bool) -> None:
    require_binary("lftp")
    server = ftp_server(netns_pair.a, netns_pair.a_ip)
    (server.root / "hello.txt").write_text("hello from the server\n")
    upload = server.root.parent / "upload.txt"
    upload.write_text("hello from the client\n")
    download = server.root.parent / "download.txt"
    result = lftp(
        netns_pair.b,
        server.url,
        f"ls; get hello.txt -o {download}; put {upload} -o uploaded.txt",
        passive=passive,
    )
    assert "hello.txt" in result.stdout
    assert download.read_text() == "hello from the server\n"
    assert (server.root / "uploaded.txt").read_text() == "hello from the client\n"
    sent = re.findall(r"---> (PASV|EPSV|PORT|EPRT)\b", result.stderr)
    assert sent, result.stderr
    assert set(sent) == ({"PASV"} if passive else {"PORT"})


@pytest.mark.parametrize(
    ("where", "hook", "works"),
    [
        ("server", "prerouting", True),
        ("server", "input", True),
        ("server", "output", False),
        ("client", "output", True),
        ("client", "postrouting", True),
        ("client", "prerouting", False),
        (None, None, False),
    ],
    ids=lambda v: str(v),
)
def test_pasv_expectation(
    netns_pair: NetnsPair,
    ftp_server: FtpFactory,
    where: str | None,
    hook: str | None,
    works: bool,
) -> None:
    server_ns, client_ns = netns_pair.a, netns_pair.b
    server = ftp_server(server_ns, netns_pair.a_ip)
    if where is not None and hook is not None:
        helper_ns = server_ns if where == "server" else client_ns
        helper_ns.nft(ftp_helper_ruleset(hooks=(hook,), port=server.port))
    with client_ns.entered():
        ftp = ftplib.FTP()
        ftp.connect(server.address, server.port, timeout=5)
    with ftp:
        ftp.login()
        reply = ftp.sendcmd("PASV")  # the session stays open: no data connection yet
        nums = [int(n) for n in re.findall(r"\d+", reply.split("(", 1)[1])]
        data_port = nums[4] * 256 + nums[5]
        assert data_port in FTP_PASSIVE_PORTS
        # The helper runs before the 227 reply is delivered, so once the client has read it
        # the expectation exists; poll briefly anyway.
        if works:
            helper_ns = server_ns if where == "server" else client_ns
            other_ns = client_ns if where == "server" else server_ns
            found = wait_until(lambda: expectations(helper_ns), what="an ftp expectation")
            assert len(found) == 1
            exp = found[0]
            assert f"src={netns_pair.b_ip} dst={netns_pair.a_ip} sport=0 dport={data_port}" in exp
            assert f"dport={server.port}" in exp  # the master is the control connection
            assert "helper=ftp" in exp
            assert expectations(other_ns) == []
        else:
            assert expectations(server_ns) == []
            assert expectations(client_ns) == []


def test_port_expectation_on_server(netns_pair: NetnsPair, ftp_server: FtpFactory) -> None:
    server_ns, client_ns = netns_pair.a, netns_pair.b
    server = ftp_server(server_ns, netns_pair.a_ip)
    server_ns.nft(ftp_helper_ruleset(hooks=("prerouting",), port=server.port))
    # pyftpdlib connects back as soon as it reads PORT, which would consume the expectation
    # at once. Hold its data SYN before conntrack sees it (priority raw), so the expectation
    # stays visible.
    server_ns.nft(
        "table inet hold {\n  chain out { type filter hook output priority raw;\n"
        f"    tcp sport != {server.port} tcp flags & (syn | ack) == syn drop\n  }}\n}}\n"
    )
    with client_ns.entered():
        ftp = ftplib.FTP()
        ftp.connect(server.address, server.port, timeout=5)
        listener = socket.create_server((netns_pair.b_ip, 0))
    with ftp, listener:
        ftp.login()
        data_port = listener.getsockname()[1]
        ip_part = netns_pair.b_ip.replace(".", ",")
        ftp.putcmd(f"PORT {ip_part},{data_port >> 8},{data_port & 0xFF}")  # no reply: held
        found = wait_until(lambda: expectations(server_ns), what="a PORT expectation")
        assert len(found) == 1
        assert f"src={netns_pair.a_ip} dst={netns_pair.b_ip} sport=0 dport={data_port}" in found[0]
        assert "helper=ftp" in found[0]


@pytest.mark.parametrize("helper", [True, False], ids=["helper", "no-helper"])
def test_strict_server_firewall_admits_pasv_data_only_with_helper(
    netns_pair: NetnsPair, ftp_server: FtpFactory, helper: bool
) -> None:
    server_ns, client_ns = netns_pair.a, netns_pair.b
    server = ftp_server(server_ns, netns_pair.a_ip)
    server_ns.nft(
        "table inet strict {\n"
        "  counter related_in {}\n"
        "  chain input { type filter hook input priority filter; policy drop;\n"
        "    iif lo accept\n"
        "    ct state established accept\n"
        '    ct state related counter name "related_in" accept\n'
        f"    tcp dport {server.port} ct state new accept\n"
        "  }\n}\n"
    )
    if helper:
        server_ns.nft(ftp_helper_ruleset(hooks=("prerouting",), port=server.port))
    (server.root / "f.txt").write_text("data\n")
    # ftplib makes the data socket during retrlines(): the whole session runs inside the
    # client namespace so that socket is made there too.
    with client_ns.entered(), ftplib.FTP() as ftp:
        ftp.connect(server.address, server.port, timeout=5)
        ftp.login()
        lines: list[str] = []
        if helper:
            ftp.retrlines("RETR f.txt", lines.append)
            assert lines == ["data"]
        else:
            ftp.timeout = 1.0  # the data SYN is dropped: the connect must time out
            with pytest.raises(OSError) as info:
                ftp.retrlines("RETR f.txt", lines.append)
            assert isinstance(info.value, TimeoutError) or info.value.errno == errno.ETIMEDOUT
    counter = server_ns.run("nft", "list", "counter", "inet", "strict", "related_in").stdout
    packets = int(re.search(r"packets (\d+)", counter).group(1))  # type: ignore[union-attr]
    assert (packets > 0) == helper


def test_session_runs_in_an_empty_jail_namespace() -> None:
    # conftest's autouse _jail fixture: a socket made without entering a lab namespace sees
    # only lo, so it can reach neither the host's network nor its conntrack table.
    assert [name for _, name in socket.if_nameindex()] == ["lo"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError) as info:
        s.connect(("198.18.0.1", 9))
    assert info.value.errno == errno.ENETUNREACH
