"""The generated nftables table against real traffic through a forwarding gateway.

Every scenario starts from a TOML config only (no hand-written helper or event rules): the
config goes through :func:`nfsyncd.config.parse_config` and :func:`nfsyncd.nft.build_table`,
and the table is applied with the real libnftables backend inside the gateway's namespace.
Then real clients and servers talk through the gateway, and the gateway's conntrack table
and event stream show whether the table did its job:

* ``[[helpers.assign]]`` makes the in-kernel ftp, tftp and sip helpers see real sessions
  (lftp + pyftpdlib, tests/tools/tftp.py, tests/tools/sip.py): the master flow carries the
  helper and the expectation appears in the gateway's table; without the entry there is none.
* ``[nftables] events`` cuts a TCP connection's events to NEW, one UPDATE (assured) and
  DESTROY; ``event_filter = false`` gives every state change; ``[filter] kernel_side``
  silences flows the userspace filter would ignore.
* ``notrack_sync``: the sync link's own packets leave no conntrack entry.

Topology (routed, no NAT)::

    client 198.18.1.2 --eth0/lan-- 198.18.1.1 gw 198.18.2.1 --wan/eth0-- 198.18.2.2 server
                                                                          (198.18.2.3 too)

A closed TCP flow sits in TIME_WAIT before its DESTROY; the gateway's TIME_WAIT (and UDP)
timeout is 1 s, and a ctnetlink dump evicts expired entries at once (the periodic gc may
take up to a minute), so the tests dump the table while they wait for DESTROY events.
"""

from __future__ import annotations

import contextlib
import ftplib
import re
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from nfsyncd import nft
from nfsyncd.config import parse_config
from nfsyncd.kernel import FLOW_EVENT_GROUPS, Conntrack, Event, EventStream, Overrun
from nfsyncd.lab.netns import Netns, add_address, veth_pair
from nfsyncd.model import IPPROTO_TCP, IPPROTO_UDP, EventKind, Expectation, Flow, Status, Tuple
from tests._support import TOOLS, FtpServer, lftp, require_binary
from tests.kernel._ctutil import poll_until, v4
from tests.kernel.conftest import RoutedPath

pytestmark = pytest.mark.kernel

FtpFactory = Callable[..., FtpServer]

CLIENT, SERVER, SERVER_IGNORED = "198.18.1.2", "198.18.2.2", "198.18.2.3"
FTP_PORT = 2121
ECHO_PORT = 8080
#: TCP connections per event scenario
CONNECTIONS = 20
PAYLOAD = 4096


# -- the generated table ----------------------------------------------------------------------


def apply_config(ns: Netns, toml: str) -> Any:
    """Build the table from ``toml`` and apply it in ``ns``; returns the table."""
    table = nft.build_table(parse_config(toml, "<test_nft_traffic>"))
    with ns.entered():
        backend = nft.NftBackend()
        nft.apply(table, backend)
    return table


# -- topology ---------------------------------------------------------------------------------


@pytest.fixture
def path(routed_path: RoutedPath) -> RoutedPath:
    """The routed client -> gw -> server path, with a route back, short gw timeouts and a
    minimal stateful ruleset on the gateway."""
    p = routed_path
    p.server.ip("route", "add", "198.18.1.0/24", "via", p.router_wan_ip)
    add_address(p.server, "eth0", f"{SERVER_IGNORED}/24")
    p.router.sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", 1)
    p.router.sysctl("net.netfilter.nf_conntrack_udp_timeout", 1)
    # the operator's own firewall: it is what makes the gateway track connections at all
    p.router.nft(
        "table inet fw {\n  chain through { type filter hook forward priority filter; "
        "ct state new counter; }\n}\n"
    )
    return p


@contextlib.contextmanager
def gw_conntrack(gw: Netns) -> Iterator[Conntrack]:
    with gw.entered():
        ct = Conntrack()
    with ct:
        yield ct


def hold(ns: Netns, rule: str) -> None:
    """Drop matching packets before conntrack sees them (so an expectation stays unused)."""
    ns.nft(
        "table inet hold {\n  chain pre { type filter hook prerouting priority raw;\n"
        f"    {rule}\n  }}\n}}\n"
    )


def release(ns: Netns) -> None:
    ns.run("nft", "delete", "table", "inet", "hold")


async def expectations_of(ct: Conntrack, helper: str, n: int = 1) -> list[Expectation]:
    async def probe() -> list[Expectation] | None:
        exps = [e for e in await ct.dump_expect() if e.helper == helper]
        return exps if len(exps) >= n else None

    return await poll_until(probe, timeout=15.0, what=f"{n} {helper} expectation(s) in gw")


async def flow(ct: Conntrack, orig: Tuple) -> Flow:
    flows = [f for f in await ct.dump() if f.orig == orig]
    assert len(flows) == 1, f"no single flow {orig.describe()} in gw"
    return flows[0]


def is_related(f: Flow) -> bool:
    return f.status is not None and bool(f.status & Status.EXPECTED)


# -- FTP --------------------------------------------------------------------------------------

FTP_ASSIGN = f'[[helpers.assign]]\nhelper = "ftp"\nports = [{FTP_PORT}]\n'


def control_port(ftp: ftplib.FTP) -> int:
    assert ftp.sock is not None
    port: int = ftp.sock.getsockname()[1]
    return port


def _pasv_port(reply: str) -> int:
    nums = [int(n) for n in re.findall(r"\d+", reply.split("(", 1)[1])]
    return nums[4] * 256 + nums[5]


@pytest.mark.parametrize("passive", [True, False], ids=["pasv", "port"])
async def test_ftp_helper_from_config(
    path: RoutedPath, ftp_server: FtpFactory, tmp_path: Path, passive: bool
) -> None:
    """Only ``[[helpers.assign]] ftp`` on the gateway: the control flow gets helper "ftp",
    the data connection is expected (PASV: client -> server:passive port; PORT: server ->
    client:port), and a real lftp session lists and downloads through the gateway with the
    data flows related to the control flow.

    For PORT the server connects back at once, so its data SYN is held on the gateway (a
    raw-priority drop, before conntrack) until the expectation has been looked at.
    """
    require_binary("lftp")
    apply_config(path.router, FTP_ASSIGN)
    server = ftp_server(path.server, SERVER, FTP_PORT)
    (server.root / "file.bin").write_bytes(bytes(range(256)) * 64)
    with gw_conntrack(path.router) as ct:
        with path.client.entered():
            ftp = ftplib.FTP()
            ftp.connect(SERVER, FTP_PORT, timeout=10)
            listener = socket.create_server((CLIENT, 0))
        with ftp, listener:
            ftp.login()
            control = Tuple(v4(CLIENT), v4(SERVER), IPPROTO_TCP, control_port(ftp), FTP_PORT)
            if passive:
                data_port = _pasv_port(ftp.sendcmd("PASV"))
                want = Tuple(v4(CLIENT), v4(SERVER), IPPROTO_TCP, 0, data_port)
            else:
                data_port = listener.getsockname()[1]
                hold(path.router, f'iifname "wan" tcp sport != {FTP_PORT} tcp flags syn drop')
                ip = CLIENT.replace(".", ",")
                ftp.putcmd(f"PORT {ip},{data_port >> 8},{data_port & 0xFF}")
                want = Tuple(v4(SERVER), v4(CLIENT), IPPROTO_TCP, 0, data_port)
            [exp] = await expectations_of(ct, "ftp")
            assert exp.master == control
            assert exp.tuple == want
            assert (await flow(ct, control)).helper == "ftp"
            ftp.close()  # no QUIT: the PORT reply may still be pending
        if not passive:
            release(path.router)

        out = tmp_path / "got.bin"
        result = lftp(
            path.client,
            f"ftp://{SERVER}:{FTP_PORT}",
            f"ls; get file.bin -o {out}",
            passive=passive,
        )
        assert "file.bin" in result.stdout
        assert out.read_bytes() == (server.root / "file.bin").read_bytes()
        related = [f for f in await ct.dump() if is_related(f)]
        # the data connections of ls and get are children of an ftp control flow (the
        # gateway's 1 s TIME_WAIT may already have let the first one go)
        assert related, "no related data flow in the gateway"

        for f in related:
            assert f.master is not None and f.master.dport == FTP_PORT


async def test_ftp_without_assign_has_no_expectation(
    path: RoutedPath, ftp_server: FtpFactory
) -> None:
    """The same PASV exchange with a config that assigns no helper: the kernel attaches none
    by port (kernel 6.x), so the gateway has no expectation (this is what the test above
    would see without the config entry). The expectation, if any, is made while the 227
    reply crosses the gateway, so once the client has read it the answer is final."""
    apply_config(path.router, "[nftables]\nenabled = true\n")
    ftp_server(path.server, SERVER, FTP_PORT)
    with gw_conntrack(path.router) as ct:
        with path.client.entered():
            ftp = ftplib.FTP()
            ftp.connect(SERVER, FTP_PORT, timeout=10)
        with ftp:
            ftp.login()
            _pasv_port(ftp.sendcmd("PASV"))
            control = Tuple(v4(CLIENT), v4(SERVER), IPPROTO_TCP, control_port(ftp), FTP_PORT)
            assert await ct.dump_expect() == []
            assert (await flow(ct, control)).helper is None


# -- TFTP -------------------------------------------------------------------------------------


@contextlib.contextmanager
def tool(ns: Netns, *argv: str, stdin: bool = False) -> Iterator[subprocess.Popen[str]]:
    """A tests/tools/*.py process in ``ns`` (text pipes), stopped by PID at the end."""
    proc: subprocess.Popen[str] = ns.popen(
        sys.executable,
        *argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def ready_line(proc: subprocess.Popen[str], prefix: str) -> str:
    """The process's next stdout line, which must start with ``prefix``."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(prefix):
        proc.terminate()
        _, err = proc.communicate(timeout=5)
        pytest.fail(f"expected {prefix!r} from {proc.args!r}, got {line!r}; stderr: {err}")
    return line


async def test_tftp_helper_from_config(path: RoutedPath, tmp_path: Path) -> None:
    """``[[helpers.assign]] tftp`` (port 69 by default): the RRQ's flow gets helper "tftp",
    the gateway expects server -> client:the client's port from any port, and the file
    arrives from a port other than 69 as a related flow. The server's DATA is held on the
    gateway until the expectation has been seen; the tools retransmit, so it completes."""
    apply_config(path.router, '[[helpers.assign]]\nhelper = "tftp"\n')
    root = tmp_path / "tftp"
    root.mkdir()
    payload = bytes(range(256)) * 9 + b"end"  # 2307 bytes: five DATA blocks
    (root / "boot.img").write_bytes(payload)
    out = tmp_path / "boot.out"
    hold(path.router, 'iifname "wan" udp sport != 69 drop')
    server_argv = ("server", "--address", SERVER, "--port", "69", "--root", str(root))
    client_argv = ("get", "--server", SERVER, "--file", "boot.img", "--out", str(out))
    with (
        gw_conntrack(path.router) as ct,
        tool(path.server, str(TOOLS / "tftp.py"), *server_argv) as server,
    ):
        ready_line(server, "READY")
        with tool(path.client, str(TOOLS / "tftp.py"), *client_argv) as client:
            [exp] = await expectations_of(ct, "tftp")
            assert exp.master.dport == 69 and exp.master.src == v4(CLIENT)
            assert exp.tuple.src == v4(SERVER) and exp.tuple.dst == v4(CLIENT)
            assert exp.tuple.proto == IPPROTO_UDP and exp.tuple.dport == exp.master.sport
            assert (await flow(ct, exp.master)).helper == "tftp"
            release(path.router)
            stdout, stderr = client.communicate(timeout=30)
            assert client.returncode == 0, stderr
        done, size, data_port = stdout.split()
        assert (done, int(size)) == ("DONE", len(payload)) and int(data_port) != 69
        assert out.read_bytes() == payload
        data = Tuple(v4(SERVER), v4(CLIENT), IPPROTO_UDP, int(data_port), exp.master.sport)
        related = await flow(ct, data)
        assert is_related(related) and related.master == exp.master


# -- SIP --------------------------------------------------------------------------------------


async def test_sip_helper_from_config(path: RoutedPath) -> None:
    """``[[helpers.assign]] sip`` (udp 5060): after a real INVITE/200 OK exchange with SDP
    bodies, the gateway holds RTP (and RTCP) expectations towards both parties' media ports,
    mastered by the 5060 flow which carries helper "sip"; the RTP packets that follow are
    related flows."""
    apply_config(path.router, '[[helpers.assign]]\nhelper = "sip"\n')
    uas_argv = ("uas", "--address", SERVER, "--rtp-port", "40010")
    uac_argv = ("uac", "--address", CLIENT, "--server", SERVER, "--rtp-port", "40000", "--hold")
    with (
        gw_conntrack(path.router) as ct,
        tool(path.server, str(TOOLS / "sip.py"), *uas_argv) as uas,
    ):
        ready_line(uas, "READY")
        with tool(path.client, str(TOOLS / "sip.py"), *uac_argv, stdin=True) as uac:
            assert ready_line(uac, "ANSWERED").split()[1] == "40010"
            exps = await expectations_of(ct, "sip", 4)
            master = Tuple(v4(CLIENT), v4(SERVER), IPPROTO_UDP, 5060, 5060)
            assert {e.master for e in exps} == {master}
            expected = {(e.tuple.dst, e.tuple.dport) for e in exps}
            # RTP and RTCP towards the caller (from the INVITE) and the callee (200 OK)
            for addr, port in ((CLIENT, 40000), (CLIENT, 40001), (SERVER, 40010), (SERVER, 40011)):
                assert (v4(addr), port) in expected
            assert (await flow(ct, master)).helper == "sip"
            stdout, stderr = uac.communicate("go\n", timeout=30)
            assert uac.returncode == 0, stderr
        assert stdout.split()[-2:] == ["DONE", "5"]
        rtp = await flow(ct, Tuple(v4(CLIENT), v4(SERVER), IPPROTO_UDP, 40000, 40010))
        assert is_related(rtp) and rtp.master == master


# -- events -----------------------------------------------------------------------------------


class EchoServer:
    """Accepts on ``address:port`` in ``ns``: reads to EOF, answers PAYLOAD bytes, closes."""

    def __init__(self, ns: Netns, address: str, port: int = ECHO_PORT) -> None:
        with ns.entered():
            self.sock = socket.create_server((address, port), backlog=128)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                while conn.recv(65536):
                    pass
                conn.sendall(b"r" * PAYLOAD)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def lifecycle(ns: Netns, address: str, n: int, port: int = ECHO_PORT) -> list[Tuple]:
    """``n`` real TCP connections from ``ns``: connect, send, half-close, read to EOF, close.

    Returns their original tuples."""
    out = []
    for _ in range(n):
        with ns.entered():
            sock = socket.socket()
        with sock:
            sock.settimeout(10)
            sock.connect((address, port))
            sock.sendall(b"q" * PAYLOAD)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
            src, sport = sock.getsockname()
        out.append(Tuple(v4(src), v4(address), IPPROTO_TCP, sport, port))
    return out


async def events_until_gone(
    stream: EventStream, ct: Conntrack, done: Callable[[list[Event]], bool], timeout: float = 30
) -> list[Event]:
    """Collect events until ``done(events)`` and the gateway's table is empty; dumping the
    table meanwhile evicts expired entries (their DESTROY comes at once)."""
    events: list[Event] = []
    empty = False
    with trio.move_on_after(timeout):
        while not (empty and done(events)):
            with trio.move_on_after(0.2):
                batch = await stream.next_batch()
                if isinstance(batch, Overrun):
                    pytest.fail("event overrun (the test's buffer should hold everything)")
                events.extend(batch)
                continue
            empty = not await ct.dump()
        return events
    kinds = Counter(e.kind.name for e in events)
    pytest.fail(f"timed out after {timeout}s: events {dict(kinds)}, table empty: {empty}")


def per_flow(events: list[Event], tuples: list[Tuple]) -> dict[Tuple, list[EventKind]]:
    wanted: dict[Tuple, list[EventKind]] = {t: [] for t in tuples}
    for e in events:
        if isinstance(e.obj, Flow) and e.obj.orig in wanted:
            wanted[e.obj.orig].append(e.kind)
    return wanted


def destroyed(tuples: list[Tuple]) -> Callable[[list[Event]], bool]:
    def check(events: list[Event]) -> bool:
        seen = per_flow(events, tuples)
        return all(kinds and kinds[-1] == EventKind.DESTROY for kinds in seen.values())

    return check


@contextlib.contextmanager
def gw_events(gw: Netns) -> Iterator[EventStream]:
    with gw.entered():
        stream = EventStream(FLOW_EVENT_GROUPS, rcvbuf=32 * 1024 * 1024)
    with stream:
        yield stream


@pytest.mark.parametrize("filtered", [True, False], ids=["default-events", "no-event-filter"])
async def test_events_per_connection(path: RoutedPath, filtered: bool) -> None:
    """CONNECTIONS real TCP lifecycles through the gateway. With the default event set each
    connection produces exactly NEW, one UPDATE (assured) and DESTROY; with
    ``event_filter = false`` every state change is an event (SYN_RECV, ESTABLISHED,
    FIN_WAIT, CLOSE_WAIT/LAST_ACK, TIME_WAIT...: at least four updates each)."""
    toml = "" if filtered else "[nftables]\nevent_filter = false\n"
    apply_config(path.router, toml)
    server = EchoServer(path.server, SERVER)
    try:
        with gw_events(path.router) as stream, gw_conntrack(path.router) as ct:
            tuples = lifecycle(path.client, SERVER, CONNECTIONS)
            events = await events_until_gone(stream, ct, destroyed(tuples))
    finally:
        server.close()
    seen = per_flow(events, tuples)
    for t, kinds in seen.items():
        if filtered:
            assert kinds == [EventKind.NEW, EventKind.UPDATE, EventKind.DESTROY], t.describe()
        else:
            assert kinds[0] == EventKind.NEW and kinds[-1] == EventKind.DESTROY, t.describe()
            assert kinds.count(EventKind.UPDATE) >= 4, (t.describe(), kinds)
    if filtered:
        updates = [e.obj for e in events if e.kind == EventKind.UPDATE]
        assert all(
            isinstance(f, Flow) and f.status is not None and f.status & Status.ASSURED
            for f in updates
        )


async def test_kernel_side_filter_silences_ignored_flows(path: RoutedPath) -> None:
    """``[filter] kernel_side`` with an ignored address and an ignored protocol: TCP
    connections to the ignored address and UDP datagrams produce no event at all (not even
    NEW or DESTROY), while connections to the other address still produce the default
    three. Both kinds of ignored flow are in the table meanwhile (tracked, just silent)."""
    apply_config(
        path.router,
        "[filter]\nkernel_side = true\n"
        f'[filter.address]\nignore = ["{SERVER_IGNORED}"]\n'
        '[filter.protocol]\nignore = ["udp"]\n',
    )
    server = EchoServer(path.server, "0.0.0.0")
    try:
        with gw_events(path.router) as stream, gw_conntrack(path.router) as ct:
            ignored = lifecycle(path.client, SERVER_IGNORED, 5)
            with path.client.entered():
                udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with udp:
                udp.bind((CLIENT, 0))
                udp.sendto(b"ignored", (SERVER, 5353))
                udp_tuple = Tuple(v4(CLIENT), v4(SERVER), IPPROTO_UDP, udp.getsockname()[1], 5353)
            tracked = {f.orig for f in await ct.dump()}
            assert udp_tuple in tracked and set(ignored) <= tracked
            watched = lifecycle(path.client, SERVER, 5)
            events = await events_until_gone(stream, ct, destroyed(watched))
    finally:
        server.close()
    seen = per_flow(events, [*ignored, udp_tuple, *watched])
    for t in (*ignored, udp_tuple):
        assert seen[t] == [], (t.describe(), seen[t])
    for t in watched:
        assert seen[t] == [EventKind.NEW, EventKind.UPDATE, EventKind.DESTROY], t.describe()


# -- sync traffic -----------------------------------------------------------------------------


@dataclass
class SyncPair:
    fw1: Netns
    fw2: Netns


@pytest.fixture
def sync_pair(root: None) -> Iterator[SyncPair]:
    made: list[Netns] = []
    try:
        made += [Netns.create("tnf1"), Netns.create("tnf2")]
        veth_pair(made[0], made[1], "198.18.5.1/24", "198.18.5.2/24", "sync0", "sync0")
        yield SyncPair(made[0], made[1])
    finally:
        for ns in reversed(made):
            ns.close()


def exchange(
    src_ns: Netns, src: tuple[str, int], dst_ns: Netns, dst: tuple[str, int], kind: int
) -> None:
    """One datagram (UDP) or one connection with a reply (TCP) from ``src`` to ``dst``;
    port 0 in ``src`` = any. Every socket is closed afterwards."""
    with dst_ns.entered():
        server = socket.socket(socket.AF_INET, kind)
    with src_ns.entered():
        client = socket.socket(socket.AF_INET, kind)
    with server, client:
        for sock in (server, client):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.settimeout(5)
        server.bind(dst)
        client.bind(src)
        if kind == socket.SOCK_DGRAM:
            client.sendto(b"sync", dst)
            assert server.recvfrom(64)[0] == b"sync"
            return
        server.listen()
        client.connect(dst)
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"sync")
            assert client.recv(64) == b"sync"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_sync_traffic_is_not_tracked(sync_pair: SyncPair, transport: str) -> None:
    """fw1's config has a sync link on port 3780: a datagram or connection to that port from
    fw1 to fw2 and from fw2 to fw1 (replies included) leaves no conntrack entry in fw1, while
    the same two exchanges on port 3781 leave two (an ``inet track`` table of the test makes
    fw1 track new flows). This is how both daemons talk: to the peer's link port."""
    fw1, fw2 = sync_pair.fw1, sync_pair.fw2
    apply_config(
        fw1,
        '[sync]\nmode = "ftfw"\n[[sync.links]]\n'
        f'transport = "{transport}"\ninterface = "sync0"\n'
        'local = "198.18.5.1"\npeer = "198.18.5.2"\nport = 3780\n',
    )
    fw1.nft(
        "table inet track {\n"
        "  chain in { type filter hook input priority filter; ct state new counter; }\n"
        "  chain out { type filter hook output priority filter; ct state new counter; }\n}\n"
    )
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    for port in (3780, 3781):
        exchange(fw1, ("198.18.5.1", 0), fw2, ("198.18.5.2", port), kind)
        exchange(fw2, ("198.18.5.2", 0), fw1, ("198.18.5.1", port), kind)
    with gw_conntrack(fw1) as ct:
        flows = await ct.dump()
    ports = sorted((f.orig.proto, f.orig.sport, f.orig.dport) for f in flows)
    assert not [p for p in ports if 3780 in p[1:]], ports
    proto = IPPROTO_UDP if transport == "udp" else IPPROTO_TCP
    assert len([p for p in ports if p[0] == proto and 3781 in p[1:]]) == 2, ports
