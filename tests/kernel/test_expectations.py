"""Expectations in a real kernel: made by the in-kernel ftp helper from real FTP sessions,
and made through nfsyncd's Conntrack; decoded by us and cross-checked with
``conntrack -L expect``.

Kernel facts these tests pin down (kernel 6.18, measured):

* An expectation can be created through ctnetlink only when its master flow has a helper
  (EOPNOTSUPP otherwise, ENOENT when the master does not exist). The helper may come from
  an nft ``ct helper`` rule on real traffic or from ``CTA_HELP`` on a ctnetlink create.
* The timeout of a created expectation is the helper's expect policy (ftp: 300 s), not
  ``CTA_EXPECT_TIMEOUT``; a non-exclusive create of an existing expectation changes its
  timeout to the requested value (and sends no event).
* The expectation flush ignores the family: it always empties the whole table
  (``Conntrack.flush_expect(family)`` therefore deletes per expectation).
* The mask's protocol number is reported as the tuple's, whatever was sent.
* The ftp helper allows one expectation per master; another one evicts the older.
* ``CTA_EXPECT_ZONE`` is needed to create or delete an expectation in a zone but is never
  reported back (dumps and events carry no zone).
"""

from __future__ import annotations

import errno
import ftplib
import re
import socket
from collections.abc import Callable

import pytest

from nfsyncd.kernel import Conntrack
from nfsyncd.lab.netns import Netns
from nfsyncd.model import IPPROTO_TCP, Expectation, Flow, Status, TcpInfo, Tuple
from nfsyncd.netlink import NetlinkError, Request
from nfsyncd.netlink import ctnetlink as ctnl
from nfsyncd.netlink._socket import NLM_F_CREATE
from tests._support import (
    FTP_PASSIVE_PORTS,
    FtpServer,
    NetnsPair,
    ftp_helper_ruleset,
    wait_until,
)
from tests.kernel._ctutil import (
    CtLab,
    assert_expect_matches_conntrack,
    conntrack_list_expect,
    conntrack_stats,
    full_mask,
    poll_until,
    v4,
    v6,
)

pytestmark = pytest.mark.kernel

FtpFactory = Callable[..., FtpServer]

CLIENT4, SERVER4 = v4("198.18.0.2"), v4("198.18.0.1")
CLIENT6, SERVER6 = v6("fd00:198:18::2"), v6("fd00:198:18::1")

#: the ftp helper's expect policy timeout (nf_conntrack_ftp.c: 5 * 60 s)
FTP_EXPECT_TIMEOUT = 300


def _pasv_port(reply: str) -> int:
    nums = [int(n) for n in re.findall(r"\d+", reply.split("(", 1)[1])]
    return nums[4] * 256 + nums[5]


def _assert_ftp_expectation(
    exp: Expectation, master: Tuple, src: bytes, dst: bytes, port: int
) -> None:
    assert exp.master == master
    assert exp.tuple == Tuple(src, dst, IPPROTO_TCP, 0, port)
    # any source port, exactly this destination port and these addresses
    assert exp.mask.src == b"\xff" * len(src) and exp.mask.dst == b"\xff" * len(dst)
    assert (exp.mask.sport, exp.mask.dport) == (0, 0xFFFF)
    assert exp.helper == "ftp"
    assert exp.timeout is not None and FTP_EXPECT_TIMEOUT - 5 <= exp.timeout <= FTP_EXPECT_TIMEOUT
    assert exp.klass == 0 and exp.flags == 0
    assert exp.zone is None and exp.nat is None and exp.fn is None
    assert exp.id is not None


async def test_pasv_session_expectation(netns_pair: NetnsPair, ftp_server: FtpFactory) -> None:
    """A real FTP PASV exchange makes the ftp helper expect the data connection.

    Walk-through: pyftpdlib serves in namespace a, whose prerouting chain assigns the ftp
    helper; ftplib logs in from namespace b and sends PASV, and the session stays open.
    Our dump of a's expectations holds exactly one: master = the control connection's
    original tuple (client:port -> server:2121), tuple = client -> server:passive port
    from any source port, mask = all address bits + the destination port, helper "ftp",
    timeout of the helper's policy; conntrack -L expect agrees. The control flow carries
    helper "ftp". Then the client opens the data connection: the expectation is used up,
    and the data flow has status EXPECTED and the control tuple as its master.
    """
    server_ns, client_ns = netns_pair.a, netns_pair.b
    server = ftp_server(server_ns, netns_pair.a_ip)
    server_ns.nft(ftp_helper_ruleset(hooks=("prerouting",), port=server.port))
    with server_ns.entered():
        ct = Conntrack()
    with client_ns.entered():
        ftp = ftplib.FTP()
        ftp.connect(server.address, server.port, timeout=5)
    with ct, ftp:
        ftp.login()
        data_port = _pasv_port(ftp.sendcmd("PASV"))
        assert data_port in FTP_PASSIVE_PORTS
        control = Tuple(CLIENT4, SERVER4, IPPROTO_TCP, ftp.sock.getsockname()[1], server.port)

        exps = await poll_until(ct.dump_expect, what="the PASV expectation")
        assert len(exps) == 1
        exp = exps[0]
        _assert_ftp_expectation(exp, control, CLIENT4, SERVER4, data_port)
        [line] = conntrack_list_expect(server_ns)
        assert_expect_matches_conntrack(line, exp)
        masters = [f for f in await ct.dump() if f.orig == control]
        assert len(masters) == 1 and masters[0].helper == "ftp"

        with client_ns.entered():
            data = socket.create_connection((server.address, data_port), timeout=5)
        with data:
            assert await ct.dump_expect() == []
            assert conntrack_list_expect(server_ns) == []
            related = [f for f in await ct.dump() if f.orig.dport == data_port]
            assert len(related) == 1
            flow = related[0]
            assert flow.orig.sport == data.getsockname()[1]
            assert flow.status is not None and flow.status & Status.EXPECTED
            assert flow.master == control


async def test_port_session_expectation(netns_pair: NetnsPair, ftp_server: FtpFactory) -> None:
    """Active FTP (PORT): the server's helper expects the server -> client connection.

    pyftpdlib connects back at once, which would use the expectation up within
    milliseconds; an output chain at priority raw (before conntrack) holds the server's
    data SYN so the expectation stays observable (see tests/test_lab.py). Expected:
    tuple = server -> client:port from any source port, master = the control connection.
    """
    server_ns, client_ns = netns_pair.a, netns_pair.b
    server = ftp_server(server_ns, netns_pair.a_ip)
    server_ns.nft(ftp_helper_ruleset(hooks=("prerouting",), port=server.port))
    server_ns.nft(
        "table inet hold {\n  chain out { type filter hook output priority raw;\n"
        f"    tcp sport != {server.port} tcp flags & (syn | ack) == syn drop\n  }}\n}}\n"
    )
    with server_ns.entered():
        ct = Conntrack()
    with client_ns.entered():
        ftp = ftplib.FTP()
        ftp.connect(server.address, server.port, timeout=5)
        listener = socket.create_server((netns_pair.b_ip, 0))
    with ct, ftp, listener:
        ftp.login()
        data_port = listener.getsockname()[1]
        ip_part = netns_pair.b_ip.replace(".", ",")
        ftp.putcmd(f"PORT {ip_part},{data_port >> 8},{data_port & 0xFF}")  # reply held back
        control = Tuple(CLIENT4, SERVER4, IPPROTO_TCP, ftp.sock.getsockname()[1], server.port)

        exps = await poll_until(ct.dump_expect, what="the PORT expectation")
        assert len(exps) == 1
        _assert_ftp_expectation(exps[0], control, SERVER4, CLIENT4, data_port)
        [line] = conntrack_list_expect(server_ns)
        assert_expect_matches_conntrack(line, exps[0])


def _master(src: bytes, dst: bytes, sport: int, *, helper: str | None = "ftp") -> Flow:
    return Flow(
        Tuple(src, dst, IPPROTO_TCP, sport, 21),
        timeout=600,
        helper=helper,
        protoinfo=TcpInfo(3),
        status=int(Status.SEEN_REPLY | Status.ASSURED),
    )


def _expect(master: Flow, dport: int, timeout: int = 120) -> Expectation:
    src, dst = master.orig.src, master.orig.dst
    tup = Tuple(src, dst, IPPROTO_TCP, 0, dport)
    return Expectation(master.orig, tup, full_mask(tup), timeout=timeout)


async def test_expectation_lifecycle_through_ctnetlink(lab: CtLab) -> None:
    """Create, read, refresh, delete and flush expectations, all through Conntrack.

    Walk-through: a master made through ctnetlink with helper "ftp"; an expectation on it
    appears in our dump and in conntrack -L expect (with the helper's timeout, not ours);
    a second exclusive create is EEXIST; a non-exclusive one sets the timeout we ask;
    delete_expect removes it; v4 + v6 expectations, flush_expect(AF_INET6) leaves the v4
    one, flush_expect() empties the table. The per-CPU counters match conntrack -S expect.
    (Each expectation has its own master: see test_one_expectation_per_ftp_master.)
    Errors: a master without helper -> EOPNOTSUPP, a missing master -> ENOENT.
    """
    ct = lab.ct
    master4 = _master(CLIENT4, SERVER4, 40000)
    master6 = _master(CLIENT6, SERVER6, 40000)
    plain = _master(CLIENT4, SERVER4, 40001, helper=None)
    for flow in (master4, master6, plain):
        await ct.create(flow)

    exp = _expect(master4, 30100, timeout=120)
    await ct.create_expect(exp)
    [got] = await ct.dump_expect()
    assert got.master == master4.orig
    assert got.tuple == exp.tuple
    assert got.mask == exp.mask._replace(proto=IPPROTO_TCP)  # reported with the tuple's proto
    assert got.helper == "ftp"
    assert got.timeout is not None and FTP_EXPECT_TIMEOUT - 3 <= got.timeout <= FTP_EXPECT_TIMEOUT
    [line] = conntrack_list_expect(lab.ns)
    assert_expect_matches_conntrack(line, got)

    with pytest.raises(NetlinkError) as info:
        await ct.create_expect(exp)
    assert info.value.errno == errno.EEXIST
    refresh = Request(
        ctnl.EXP_NEW, NLM_F_CREATE, ctnl.expect_create(exp._replace(timeout=1000)).payload
    )
    assert await ct.write_many([refresh]) == [None]
    [got] = await ct.dump_expect()
    assert got.timeout is not None and 997 <= got.timeout <= 1000
    assert 997 <= conntrack_list_expect(lab.ns)[0].timeout <= 1000

    await ct.delete_expect(got)
    assert await ct.dump_expect() == []
    assert conntrack_list_expect(lab.ns) == []
    with pytest.raises(NetlinkError) as info:
        await ct.delete_expect(got)
    assert info.value.errno == errno.ENOENT

    # the ftp policy allows one expectation per master: use a master for each
    second4 = _master(CLIENT4, SERVER4, 40002)
    await ct.create(second4)
    for e in (_expect(master4, 30101), _expect(second4, 30102), _expect(master6, 30101)):
        await ct.create_expect(e)
    assert len(await ct.dump_expect(socket.AF_INET6)) == 1
    await ct.flush_expect(socket.AF_INET6)
    assert sorted(e.tuple.dport for e in await ct.dump_expect()) == [30101, 30102]
    assert all(e.tuple.src == CLIENT4 for e in await ct.dump_expect())
    await ct.flush_expect()
    assert await ct.dump_expect() == []
    assert conntrack_list_expect(lab.ns) == []

    with pytest.raises(NetlinkError) as info:
        await ct.create_expect(_expect(plain, 30103))
    assert info.value.errno == errno.EOPNOTSUPP
    with pytest.raises(NetlinkError) as info:
        await ct.create_expect(_expect(_master(CLIENT4, SERVER4, 40999), 30104))
    assert info.value.errno == errno.ENOENT

    stats = await ct.expect_stats_cpu()
    assert stats["create"] == 4 and stats["delete"] == 4
    tool = conntrack_stats(lab.ns, "expect")
    assert (tool["expect_new"], tool["expect_create"], tool["expect_delete"]) == (
        stats["new"],
        stats["create"],
        stats["delete"],
    )


async def test_one_expectation_per_ftp_master(lab: CtLab) -> None:
    """The ftp helper's expect policy allows one expectation per master (max_expected 1):
    a second one on the same master silently evicts the first (both creates succeed)."""
    ct = lab.ct
    master = _master(CLIENT4, SERVER4, 40000)
    await ct.create(master)
    await ct.create_expect(_expect(master, 30110))
    await ct.create_expect(_expect(master, 30111))
    assert [e.tuple.dport for e in await ct.dump_expect()] == [30111]


async def test_expectation_in_a_zone(lab: CtLab) -> None:
    """Zoned expectations: ``CTA_EXPECT_ZONE`` is needed to create (find the master) and to
    delete them, yet the kernel never reports it in a dump (nor does conntrack -L expect
    show it): the zone of an expectation can only be learnt from its master flow."""
    ct = lab.ct
    master = _master(CLIENT4, SERVER4, 40000)._replace(zone=7)
    await ct.create(master)
    exp = _expect(master, 30200)
    with pytest.raises(NetlinkError) as info:
        await ct.create_expect(exp)  # no zone: the master is looked up in zone 0
    assert info.value.errno == errno.ENOENT
    await ct.create_expect(exp._replace(zone=7))
    [got] = await ct.dump_expect()
    assert got.master == master.orig and got.tuple == exp.tuple
    assert got.zone is None  # not reported
    assert "zone" not in conntrack_list_expect(lab.ns)[0].extra
    with pytest.raises(NetlinkError) as info:
        await ct.delete_expect(got)
    assert info.value.errno == errno.ENOENT
    await ct.delete_expect(got._replace(zone=7))
    assert await ct.dump_expect() == []


STRICT_SERVER_RULESET = """table inet strict {
  counter related_in {}
  counter dropped {}
  chain input { type filter hook input priority filter; policy drop;
    iif lo accept
    ct state established accept
    ct state related counter name "related_in" accept
    tcp dport 2121 ct state new accept
    tcp dport 30500 counter name "dropped"
  }
}
"""


def _counter(ns: Netns, name: str) -> int:
    out = ns.run("nft", "list", "counter", "inet", "strict", name).stdout
    match = re.search(r"packets (\d+)", out)
    assert match is not None, out
    return int(match.group(1))


async def test_created_expectation_admits_real_traffic(netns_pair: NetnsPair) -> None:
    """An expectation we create on a real control connection lets the kernel classify a
    new connection as RELATED, which a strict firewall then admits.

    The server namespace drops every new connection except to the control port 2121 and
    accepts ``ct state related``; an nft rule gives the control connection the ftp helper.
    Without an expectation, a SYN to port 30500 is dropped (the drop counter moves). After
    we create an expectation for client -> server:30500 on the control flow, the client's
    connection to 30500 is established, counted as related, and its flow has status
    EXPECTED with the control connection as master; the expectation is used up.
    """
    server_ns, client_ns = netns_pair.a, netns_pair.b
    server_ns.nft(STRICT_SERVER_RULESET)
    server_ns.nft(ftp_helper_ruleset(hooks=("prerouting",), port=2121))
    with server_ns.entered():
        ct = Conntrack()
        control_listener = socket.create_server((netns_pair.a_ip, 2121))
        data_listener = socket.create_server((netns_pair.a_ip, 30500))
    with client_ns.entered():
        control = socket.create_connection((netns_pair.a_ip, 2121), timeout=5)
        refused = socket.socket()
    with ct, control_listener, data_listener, control, refused:
        conn, _ = control_listener.accept()
        conn.close()
        control_tuple = Tuple(CLIENT4, SERVER4, IPPROTO_TCP, control.getsockname()[1], 2121)
        [master] = [f for f in await ct.dump() if f.orig == control_tuple]
        assert master.helper == "ftp"

        # No expectation yet: the SYN to 30500 is dropped.
        refused.setblocking(False)
        assert refused.connect_ex((netns_pair.a_ip, 30500)) == errno.EINPROGRESS
        wait_until(lambda: _counter(server_ns, "dropped") > 0, what="the SYN to be dropped")
        refused.close()
        assert _counter(server_ns, "related_in") == 0

        tup = Tuple(CLIENT4, SERVER4, IPPROTO_TCP, 0, 30500)
        await ct.create_expect(Expectation(control_tuple, tup, full_mask(tup), timeout=60))
        with client_ns.entered():
            data = socket.create_connection((netns_pair.a_ip, 30500), timeout=5)
        with data:
            accepted, _ = data_listener.accept()
            accepted.close()
            assert _counter(server_ns, "related_in") > 0
            assert await ct.dump_expect() == []
            [flow] = [f for f in await ct.dump() if f.orig.sport == data.getsockname()[1]]
            assert flow.status is not None and flow.status & Status.EXPECTED
            assert flow.master == control_tuple
