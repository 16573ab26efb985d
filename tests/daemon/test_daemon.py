"""The daemon on one node, as an operator meets it: the real ``nfsyncd`` process in a fresh
network namespace, real traffic through the kernel, and the real ``nfsyncctl``.

Each test is a walk-through of one behaviour: the table appears in the cache and leaves
it with the kernel; filters; overrun recovery; polling; reload with good and bad files;
signals and systemd notifications; health and metrics; clean-up.
"""

from __future__ import annotations

import ftplib
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from nfsyncd.kernel import Conntrack
from nfsyncd.lab.netns import Netns
from nfsyncd.model import IPPROTO_TCP, Flow, Status, TcpInfo, Tuple
from tests._support import NetnsPair, ftp_helper_ruleset, wait_until
from tests.daemon._harness import Daemon, base_config, start_daemon

pytestmark = pytest.mark.kernel

#: conntrack is off in a namespace until some rule needs it
TRACK = """
table inet track {
  chain pre { type filter hook prerouting priority 0; ct state new counter; }
  chain out { type filter hook output priority 0; ct state new counter; }
}
"""

Start = Callable[..., Daemon]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """``start(ns, extra_config="", **kw)``: a running daemon, stopped after the test."""
    daemons: list[Daemon] = []
    count = 0

    def run(ns: Netns, extra: str = "", **kw: Any) -> Daemon:
        nonlocal count
        count += 1
        d = start_daemon(
            ns, tmp_path / f"d{count}", base_config(tmp_path / f"d{count}", extra), **kw
        )
        daemons.append(d)
        return d

    try:
        yield run
    finally:
        for d in daemons:
            if d.proc.poll() is None:
                d.stop()


def _tcp_pair(
    server_ns: Netns, client_ns: Netns, server_ip: str, port: int
) -> tuple[socket.socket, socket.socket]:
    with server_ns.entered():
        listener = socket.create_server((server_ip, port))
    with client_ns.entered():
        client = socket.create_connection((server_ip, port), timeout=5)
    with listener:
        conn, _ = listener.accept()
    return client, conn


def _find(flows: list[dict[str, Any]], **orig: Any) -> list[dict[str, Any]]:
    return [f for f in flows if all(f["orig"].get(k) == v for k, v in orig.items())]


def _synthetic(n: int, base: int = 0) -> list[Flow]:
    """n distinct established TCP flows 198.18.1.x:port -> 198.18.2.1:80."""
    out = []
    for i in range(base, base + n):
        src = bytes([198, 18, 1 + (i >> 16) % 200, (i >> 8) & 0xFF])
        orig = Tuple(src, bytes([198, 18, 250, 1]), IPPROTO_TCP, 1024 + (i & 0xFF), 80)
        out.append(
            Flow(
                orig,
                orig.inverted(),
                status=int(Status.SEEN_REPLY | Status.ASSURED | Status.CONFIRMED),
                timeout=600,
                protoinfo=TcpInfo(state=3),
            )
        )
    return out


def test_flows_appear_in_the_cache_and_leave_with_the_kernel(
    netns_pair: NetnsPair, start: Start
) -> None:
    """Walk-through: nfsyncd runs in namespace a; b opens a TCP connection to a and pings it.
    Both flows show up in ``nfsyncctl dump internal`` (JSON) and in conntrackd's ``-i``
    text format with the right tuples and TCP state; when a's table is flushed by someone
    else (conntrack -F), the DESTROY events empty the cache."""
    a, b = netns_pair.a, netns_pair.b
    a.nft(TRACK)
    d = start(a)
    client, conn = _tcp_pair(a, b, netns_pair.a_ip, 5000)
    with client, conn:
        b.run("ping", "-c", "1", "-W", "2", netns_pair.a_ip)
        flows = wait_until(
            lambda: (
                (fl := d.flows())
                and _find(fl, dport=5000)
                and _find(fl, dport=5000)[0].get("state") == "ESTABLISHED"
                and [f for f in fl if f["proto"] == "icmp"]
                and fl
            ),
            timeout=10,
            what="the TCP and ICMP flows in the internal cache",
        )
        [tcp] = _find(flows, dport=5000)
        assert tcp["orig"]["src"] == netns_pair.b_ip and tcp["orig"]["dst"] == netns_pair.a_ip
        assert tcp["orig"]["sport"] == client.getsockname()[1]
        assert tcp["reply"]["src"] == netns_pair.a_ip and tcp["reply"]["sport"] == 5000
        assert "SEEN_REPLY" in tcp["status"]
        text = d.ctl("-i", check=True).stdout
        line = next(ln for ln in text.splitlines() if "dport=5000" in ln)
        assert line.startswith(
            f"tcp      6 ESTABLISHED src={netns_pair.b_ip} dst={netns_pair.a_ip} "
        )
        assert f"src={netns_pair.a_ip} dst={netns_pair.b_ip} sport=5000" in line
        assert "[active since" in line and "mark=0" in line
        assert any(ln.startswith("icmp     1 ") for ln in text.splitlines())
        assert d.status()["flows"] == len(flows)
    a.run("conntrack", "-F")
    wait_until(lambda: d.flows() == [], timeout=10, what="the cache to empty after conntrack -F")
    stats = d.ctl_json("stats", "cache")["cache"]["internal"]
    assert stats["deleted"] >= 2 and stats["active"] == 0


def test_expectations_are_mirrored(netns_pair: NetnsPair, start: Start, ftp_server: Any) -> None:
    """A real FTP PASV session through the in-kernel helper: its expectation appears in
    ``dump internal expect`` with the control connection as master, and leaves when the
    data connection uses it up."""
    a, b = netns_pair.a, netns_pair.b
    server = ftp_server(a, netns_pair.a_ip)
    a.nft(ftp_helper_ruleset(hooks=("prerouting",), port=server.port))
    d = start(a, "[expectations]\nsync = true\n")
    with b.entered():
        ftp = ftplib.FTP()
        ftp.connect(server.address, server.port, timeout=5)
    with ftp:
        ftp.login()
        reply = ftp.sendcmd("PASV")
        nums = reply[reply.index("(") + 1 : reply.index(")")].split(",")
        data_port = int(nums[4]) * 256 + int(nums[5])
        exps = wait_until(d.expects, timeout=10, what="the PASV expectation in the cache")
        [exp] = exps
        assert exp["helper"] == "ftp"
        assert exp["tuple"]["dport"] == data_port
        assert exp["master"]["dport"] == server.port
        assert exp["master"]["sport"] == ftp.sock.getsockname()[1]
        line = d.ctl("-i", "expect", check=True).stdout.strip()
        assert line.startswith(f"proto=6 src={netns_pair.b_ip} dst={netns_pair.a_ip} ")
        assert f"dport={data_port}" in line and "helper=ftp" in line
        with b.entered():
            data = socket.create_connection((server.address, data_port), timeout=5)
        with data:
            wait_until(lambda: d.expects() == [], timeout=10, what="the used expectation to go")


def test_filter_ignores_what_it_should(netns_pair: NetnsPair, start: Start) -> None:
    """``[filter.protocol] ignore = ["icmp"]``: pings never enter the cache, TCP does, and
    the ignored events are counted."""
    a, b = netns_pair.a, netns_pair.b
    a.nft(TRACK)
    d = start(a, '[filter.protocol]\nignore = ["icmp"]\n')
    b.run("ping", "-c", "2", "-i", "0.2", "-W", "2", netns_pair.a_ip)
    client, conn = _tcp_pair(a, b, netns_pair.a_ip, 5001)
    with client, conn:
        wait_until(lambda: _find(d.flows(), dport=5001), timeout=10, what="the TCP flow")
    assert [f for f in d.flows() if f["proto"] == "icmp"] == []
    assert d.ctl_json("stats", "runtime")["runtime"]["events_filtered"] >= 1


async def test_overrun_recovery_ends_equal_to_the_kernel(netns: Netns, start: Start) -> None:
    """A 16 KiB event buffer that may not grow, and a burst of 100k creates: the kernel
    drops events (the daemon counts an overrun), and the resync that follows leaves the
    cache holding exactly the kernel's table."""
    d = start(
        netns,
        'netlink_buffer_size = "16KiB"\nnetlink_buffer_max = "16KiB"\noverrun_resync_delay = 0.5\n',
    )
    with netns.entered():
        ct = Conntrack()
    with ct:
        errors = await ct.create_many(_synthetic(100_000))
        assert not [e for e in errors if e is not None]
        kernel = {(f.orig.src, f.orig.sport) for f in await ct.dump()}
    assert len(kernel) == 100_000
    wait_until(
        lambda: (
            (st := d.status())["overruns"] >= 1 and st["flows"] == 100_000 and st["resyncs"] >= 2
        ),
        timeout=60,
        interval=0.2,
        what="an overrun and a resync back to 100000 flows",
    )
    cached = {(socket.inet_aton(f["orig"]["src"]), f["orig"]["sport"]) for f in d.flows()}
    assert cached == kernel


async def test_a_backlog_grows_the_buffer_before_the_kernel_drops_events(
    netns: Netns, start: Start
) -> None:
    """A backlog that fills more than half the event buffer doubles it at once, so a
    burst that would overflow it costs no overrun (and no resync dump).

    Walk-through: a 2 MiB buffer (kernel accounting; a NEW event takes 1280 bytes of it)
    may grow to 8 MiB.  The daemon is stopped while 1200 flows are created: their events,
    1.5 MB, fit but fill it past half.  Continued, its first full read finds the backlog
    and doubles the buffer once (the rest of the backlog is under half of 4 MiB), nothing
    was dropped, and every flow is cached.
    """
    d = start(netns, 'netlink_buffer_size = "2MiB"\nnetlink_buffer_max = "8MiB"\n')
    runtime = d.ctl_json("stats", "runtime")["runtime"]
    assert (runtime["buffer_size"], runtime["buffer_grows"]) == (2 * 2**20, 0)
    with netns.entered():
        ct = Conntrack()
    d.signal(signal.SIGSTOP)
    try:
        with ct:
            errors = await ct.create_many(_synthetic(1200))
        assert not [e for e in errors if e is not None]
    finally:
        d.signal(signal.SIGCONT)
    wait_until(lambda: d.status()["flows"] == 1200, timeout=10, what="1200 cached flows")
    runtime = d.ctl_json("stats", "runtime")["runtime"]
    assert runtime["netlink_overrun"] == 0
    assert (runtime["buffer_size"], runtime["buffer_grows"]) == (4 * 2**20, 1)
    assert "netlink event backlog" in d.log_text()
    _, metrics = d.http_get("/metrics")
    assert "nfsyncd_netlink_buffer_grows_total 1" in metrics


async def test_polling_mode_follows_the_table(netns: Netns, start: Start) -> None:
    """``poll_interval``: no event socket; flows created and deleted by someone else show up
    in and leave the cache at the next poll."""
    d = start(netns, "poll_interval = 0.3\n")
    assert d.status()["source"] == "polling"
    flows = _synthetic(50)
    with netns.entered():
        ct = Conntrack()
    with ct:
        await ct.create_many(flows)
        wait_until(lambda: d.status()["flows"] == 50, timeout=10, what="50 polled flows")
        await ct.delete_many(flows[:20])
        wait_until(lambda: d.status()["flows"] == 30, timeout=10, what="30 flows after deletes")
    assert d.ctl_json("stats", "runtime")["runtime"]["polls"] >= 2


async def test_steady_events_are_read_in_coalesced_batches(netns: Netns, start: Start) -> None:
    """``event_coalesce``: flows created one by one about every millisecond are read a
    few dozen per wakeup, not one each (the daemon's CPU per connection is mostly per
    wakeup), and every one of them reaches the cache."""
    d = start(netns, "event_coalesce = 0.05\n")
    before = d.ctl_json("stats", "runtime")["runtime"]
    flows = _synthetic(300)
    with netns.entered():
        ct = Conntrack()
    with ct:
        for flow in flows:
            await ct.create(flow)
            await trio.sleep(0.001)  # the pace of new connections, not a synchronisation
    wait_until(lambda: d.status()["flows"] == 300, timeout=10, what="300 flows in the cache")
    after = d.ctl_json("stats", "runtime")["runtime"]
    events = after["events_received"] - before["events_received"]
    reads = after["event_reads"] - before["event_reads"]
    assert events == 300
    assert reads <= events / 5, f"{events} events in {reads} reads"


async def test_sighup_applies_a_good_config_and_keeps_a_bad_one(netns: Netns, start: Start) -> None:
    """SIGHUP with a new filter applies it live (the flows it ignores leave the cache),
    names the change that needs a restart, and a broken file is refused with its line while
    the daemon keeps running on the old configuration."""
    d = start(netns)
    with netns.entered():
        ct = Conntrack()
    with ct:
        await ct.create_many(_synthetic(10))
        wait_until(lambda: d.status()["flows"] == 10, timeout=10, what="10 flows")
        good = (
            d.config.read_text()
            .replace("[metrics]", '[filter.protocol]\nignore = ["tcp"]\n\n[metrics]')
            .replace('log_level = "debug"', 'log_level = "info"\nnetlink_buffer_size = "32MiB"')
        )
        d.config.write_text(good)
        d.signal(signal.SIGHUP)
        d.wait_log("configuration reloaded")
        d.wait_log("need a restart")
        assert "general.netlink_buffer_size" in d.log_text()
        wait_until(
            lambda: d.status()["flows"] == 0, timeout=10, what="tcp flows to be filtered out"
        )
        assert d.status()["reloads"] == 1

        d.config.write_text(good.replace('log_level = "info"', 'log_level = "chatty"'))
        d.signal(signal.SIGHUP)
        d.wait_log("reload failed, keeping the running configuration")
        assert "general.log_level: must be one of" in d.log_text()
        st = d.status()
        assert st["reload_failures"] == 1 and st["reloads"] == 1
        assert d.proc.poll() is None


def test_sigterm_removes_what_the_daemon_created(netns: Netns, start: Start) -> None:
    """The runtime directory (0700) and socket (0600) exist while it runs; SIGTERM stops it
    with status 0 within seconds and both are gone."""
    d = start(netns)
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d.socket.parent).st_mode) == 0o700
    assert stat.S_ISSOCK(os.stat(d.socket).st_mode)
    assert d.stop(timeout=10) == 0
    assert not d.socket.exists() and not d.socket.parent.exists()
    assert "stopped" in d.log_text()
    res = d.ctl("-s")
    assert res.returncode == 1 and "is nfsyncd running?" in res.stderr


def test_conntrackd_kill_flag_stops_it(netns: Netns, start: Start) -> None:
    d = start(netns)
    # conntrackd's way of naming the daemon: through its config file
    res = subprocess.run(
        [sys.executable, "-m", "nfsyncd.ctl", "-C", str(d.config), "-k"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    assert d.proc.wait(10) == 0
    assert not d.socket.exists()


def test_second_daemon_on_the_same_socket_is_refused(
    netns: Netns, start: Start, tmp_path: Path
) -> None:
    d = start(netns)
    other = start_daemon(netns, tmp_path / "second", d.config.read_text(), wait_ready=False)
    assert other.proc.wait(20) == 1
    assert "another nfsyncd is already running" in other.log_text()
    assert d.status()["ready"]


def test_systemd_notifications(netns: Netns, start: Start, tmp_path: Path) -> None:
    """READY=1 once the initial dump is done, WATCHDOG=1 at half of WATCHDOG_USEC while it
    runs, RELOADING=1 then READY=1 around a SIGHUP, STOPPING=1 on SIGTERM."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    msgs: list[str] = []

    def until(pred: Callable[[str], bool]) -> str:
        while True:
            msg = sock.recv(4096).decode()
            msgs.append(msg)
            if pred(msg):
                return msg

    with sock:
        d = start(netns, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"})
        ready = until(lambda m: "READY=1" in m)
        assert "STATUS=mirroring" in ready
        until(lambda m: m == "WATCHDOG=1")
        until(lambda m: m == "WATCHDOG=1")
        d.signal(signal.SIGHUP)
        until(lambda m: "RELOADING=1" in m)
        until(lambda m: "READY=1" in m)
        d.signal(signal.SIGTERM)
        until(lambda m: "STOPPING=1" in m)
        assert d.proc.wait(10) == 0


def test_health_readiness_and_metrics(netns: Netns, start: Start) -> None:
    d = start(netns)
    assert d.http_get("/healthz") == (200, "ok\n")
    assert d.http_get("/readyz") == (200, "ready\n")
    code, text = d.http_get("/metrics")
    assert code == 200
    assert 'nfsyncd_cache_entries{cache="internal",object="flow"} 0' in text
    assert "nfsyncd_ready 1" in text
    assert "# TYPE nfsyncd_kernel_events_total counter" in text
    d.ctl("status", check=True)
    _, text = d.http_get("/metrics")
    requests = [ln for ln in text.splitlines() if ln.startswith("nfsyncd_control_requests_total ")]
    assert requests and int(requests[0].split()[1]) >= 2
    assert d.http_get("/nope")[0] == 404
