"""Flows in a real kernel conntrack table, written and read through nfsyncd's Conntrack.

Every scenario runs in a throwaway namespace (its own conntrack table and ruleset) and
checks what the kernel really holds twice: read back through our codec, and listed by
conntrack-tools (``conntrack -L``/``-C``/``-S``), which decodes with libnetfilter_conntrack,
an implementation independent of ours.

Kernel facts these tests pin down (kernel 6.18, measured):

* Flows of every protocol with a conntrack module can be created (TCP, UDP, UDP-Lite,
  ICMP, ICMPv6, SCTP, GRE with its keys in the port attributes). DCCP conntrack was removed
  from Linux in 6.16: a DCCP create is accepted but stored as a generic flow (ports and
  protoinfo dropped).
* Labels need the conntrack label extension, which the kernel enables only while some nft
  rule references ``ct label``. Without it a create *silently drops* ``CTA_LABELS`` and an
  update carrying labels fails with ENOSPC (after applying the other attributes).
* Zone 0 is the default zone: a flow without ``CTA_ZONE`` and one in zone 0 are the same
  entry. The same tuple can exist once per zone.
* A NAT flow made through ctnetlink translates traffic only where the nat hooks run, i.e.
  when the namespace has nft chains of type nat (they may be empty).
* The kernel reports TCP flag masks as 0; SEEN_REPLY and ASSURED can be set, never cleared
  (EBUSY).
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import pytest
import trio

from nfsyncd.kernel import Conntrack
from nfsyncd.model import (
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPPROTO_UDPLITE,
    TCP_STATE_NAMES,
    DccpInfo,
    Flow,
    SctpInfo,
    Status,
    TcpFlags,
    TcpInfo,
    Tuple,
)
from nfsyncd.netlink import NetlinkError
from tests._support import NetnsPair, ftp_helper_ruleset, skip_or_fail
from tests.kernel._ctutil import (
    CtLab,
    assert_matches_conntrack,
    conntrack_count,
    conntrack_list,
    conntrack_list_labels,
    conntrack_stats,
    find_line,
    label_bits,
    tuple_text,
    v4,
    v6,
)
from tests.kernel.conftest import RoutedPath

pytestmark = pytest.mark.kernel

A4, B4 = v4("198.18.0.1"), v4("198.18.0.2")
A6, B6 = v6("fd00:198:18::1"), v6("fd00:198:18::2")

CONFIRMED = int(Status.CONFIRMED)
SEEN_REPLY = int(Status.SEEN_REPLY)
ASSURED = int(Status.ASSURED)
NAT_DONE = int(Status.SRC_NAT_DONE | Status.DST_NAT_DONE)

#: conntrack's names of SCTP states (nf_conntrack_sctp.h order)
SCTP_STATE_NAMES = {4: "ESTABLISHED"}

LABEL_RULESET = (
    "table inet labels {\n"
    "  chain input { type filter hook input priority filter; ct label 127 accept\n  }\n}\n"
)

CASES = {
    "tcp4": Flow(
        Tuple(A4, B4, IPPROTO_TCP, 40000, 80),
        timeout=120,
        status=SEEN_REPLY | ASSURED,
        protoinfo=TcpInfo(
            state=3,
            wscale_orig=7,
            wscale_reply=5,
            flags_orig=TcpFlags(0x3, 0x3),
            flags_reply=TcpFlags(0x1, 0x1),
        ),
    ),
    "tcp6": Flow(Tuple(A6, B6, IPPROTO_TCP, 40000, 443), timeout=120, protoinfo=TcpInfo(state=1)),
    "udp4": Flow(Tuple(A4, B4, IPPROTO_UDP, 5353, 53), timeout=30),
    "udp6": Flow(Tuple(A6, B6, IPPROTO_UDP, 5353, 53), timeout=30, status=SEEN_REPLY),
    "udplite4": Flow(Tuple(A4, B4, IPPROTO_UDPLITE, 7000, 7001), timeout=30),
    "icmp4": Flow(Tuple(A4, B4, IPPROTO_ICMP, icmp_type=8, icmp_code=0, icmp_id=4242), timeout=30),
    "icmpv6": Flow(
        Tuple(A6, B6, IPPROTO_ICMPV6, icmp_type=128, icmp_code=0, icmp_id=4242), timeout=30
    ),
    "sctp4": Flow(
        Tuple(A4, B4, IPPROTO_SCTP, 5000, 5001),
        timeout=60,
        protoinfo=SctpInfo(state=4, vtag_orig=0x1234, vtag_reply=0x5678),
    ),
    "sctp6": Flow(
        Tuple(A6, B6, IPPROTO_SCTP, 5000, 5001),
        timeout=60,
        protoinfo=SctpInfo(state=4, vtag_orig=0xAABBCCDD, vtag_reply=1),
    ),
    "gre4": Flow(Tuple(A4, B4, IPPROTO_GRE, 0x10, 0x20), timeout=60),
}


def _family(flow: Flow) -> int:
    return socket.AF_INET if len(flow.orig.src) == 4 else socket.AF_INET6


@pytest.mark.parametrize("name", list(CASES))
async def test_create_get_dump_delete(lab: CtLab, name: str) -> None:
    """Each protocol's flow goes in through ctnetlink and reads back field by field.

    Walk-through: create the flow; ``get`` it by its original tuple and check the reply
    tuple is the inverse (ICMP echo request -> reply type), status = what we asked +
    CONFIRMED, timeout counting down from what we asked, protoinfo kept; the family-
    filtered dump holds it and the other family's does not; ``conntrack -L -o id`` lists
    the same tuples, timeout, state, flags, mark and id; delete it and the table is empty.
    """
    flow = CASES[name]
    ct = lab.ct
    await ct.create(flow)
    got = await ct.get(flow.orig)
    assert got is not None
    assert got.orig == flow.orig
    assert got.reply == flow.orig.inverted()
    assert got.status == (flow.status or 0) | CONFIRMED
    assert flow.timeout is not None and got.timeout is not None
    assert flow.timeout - 3 <= got.timeout <= flow.timeout
    assert got.mark == 0  # a get reports CTA_MARK even when 0 (events leave it out)
    assert got.zone is None
    assert got.helper is None
    assert got.labels is None
    assert got.id is not None
    if isinstance(flow.protoinfo, TcpInfo):
        assert isinstance(got.protoinfo, TcpInfo)
        want = flow.protoinfo
        assert got.protoinfo.state == want.state
        if want.wscale_orig is not None:
            assert (got.protoinfo.wscale_orig, got.protoinfo.wscale_reply) == (
                want.wscale_orig,
                want.wscale_reply,
            )
            # the flags are kept; the kernel reports their mask as 0
            assert want.flags_orig is not None and want.flags_reply is not None
            assert got.protoinfo.flags_orig == TcpFlags(want.flags_orig.flags, 0)
            assert got.protoinfo.flags_reply == TcpFlags(want.flags_reply.flags, 0)
    elif isinstance(flow.protoinfo, SctpInfo):
        assert got.protoinfo == flow.protoinfo
    elif flow.orig.proto == IPPROTO_TCP:
        assert isinstance(got.protoinfo, TcpInfo)
    else:
        assert got.protoinfo is None

    family = _family(flow)
    other = socket.AF_INET6 if family == socket.AF_INET else socket.AF_INET
    assert [f.orig for f in await ct.dump(family)] == [flow.orig]
    assert await ct.dump(other) == []
    dumped = (await ct.dump())[0]
    assert dumped._replace(timeout=None, use=None) == got._replace(timeout=None, use=None)
    # a get reports one more reference than a dump: its own lookup holds one
    assert (dumped.use, got.use) == (1, 2)

    line = find_line(conntrack_list(lab.ns, "-o", "id"), flow)
    assert_matches_conntrack(line, got)
    if isinstance(got.protoinfo, TcpInfo):
        assert line.state == TCP_STATE_NAMES[got.protoinfo.state or 0]
    if isinstance(got.protoinfo, SctpInfo):
        assert line.state == SCTP_STATE_NAMES[got.protoinfo.state or 0]

    await ct.delete(flow.orig)
    assert await ct.get(flow.orig) is None
    assert await ct.dump() == []
    assert conntrack_list(lab.ns) == []
    with pytest.raises(NetlinkError) as info:
        await ct.delete(flow.orig)
    assert info.value.errno == errno.ENOENT


def test_dccp(lab: CtLab) -> None:
    """DCCP flows keep their ports and protoinfo only where the kernel still has DCCP
    conntrack (removed in Linux 6.16: there the create succeeds as a generic flow).

    A plain test running trio itself: a skip raised inside a pytest-trio test loses its
    reason (pytest-trio 0.8 re-raises it as a bare ``pytest.skip()``).
    """
    flow = Flow(
        Tuple(A4, B4, 33, 5000, 5001),
        timeout=60,
        protoinfo=DccpInfo(state=3, role=0, handshake_seq=7),
    )

    async def create_and_get() -> Flow | None:
        await lab.ct.create(flow)
        return await lab.ct.get(flow.orig)

    got = trio.run(create_and_get)
    assert got is not None
    if got.orig.sport is None:
        assert got.protoinfo is None
        release = tuple(int(x) for x in os.uname().release.split(".")[:2])
        reason = "no DCCP conntrack: the kernel stores DCCP flows as generic ones"
        if release >= (6, 16):
            pytest.skip(f"{reason} (DCCP was removed from Linux in 6.16)")
        skip_or_fail(reason)
    assert got.orig == flow.orig
    assert isinstance(got.protoinfo, DccpInfo)
    assert got.protoinfo.state == 3


async def test_update_timeout_mark_status_protoinfo(lab: CtLab) -> None:
    """An update changes timeout, mark, status bits and the TCP state of a live flow.

    SEEN_REPLY/ASSURED can be set but never cleared again (the kernel answers EBUSY), and
    updating a flow that does not exist is ENOENT. conntrack -L agrees after each step.
    """
    ct = lab.ct
    flow = Flow(Tuple(A4, B4, IPPROTO_TCP, 41000, 22), timeout=100, mark=1, protoinfo=TcpInfo(3))
    await ct.create(flow)
    await ct.update(
        Flow(flow.orig, timeout=3000, mark=0x77, status=SEEN_REPLY | ASSURED, protoinfo=TcpInfo(4))
    )
    got = await ct.get(flow.orig)
    assert got is not None and got.timeout is not None
    assert 2997 <= got.timeout <= 3000
    assert got.mark == 0x77
    assert got.status == CONFIRMED | SEEN_REPLY | ASSURED
    assert isinstance(got.protoinfo, TcpInfo) and got.protoinfo.state == 4
    line = find_line(conntrack_list(lab.ns), flow)
    assert_matches_conntrack(line, got)
    assert line.state == "FIN_WAIT"

    # the mark alone: other attributes stay
    await ct.update(Flow(flow.orig, mark=0))
    again = await ct.get(flow.orig)
    assert again is not None and again.mark == 0 and again.status == got.status

    with pytest.raises(NetlinkError) as info:
        await ct.update(Flow(flow.orig, status=0))
    assert info.value.errno == errno.EBUSY
    with pytest.raises(NetlinkError) as info:
        await ct.update(Flow(flow.orig._replace(sport=41001), timeout=5))
    assert info.value.errno == errno.ENOENT


async def test_labels_with_the_label_extension(lab: CtLab, tmp_path: Path) -> None:
    """With an nft rule referencing ``ct label`` the kernel keeps labels: create sets them,
    update replaces the whole bitmap, and ``conntrack -o labels`` names the same bits."""
    lab.ns.nft(LABEL_RULESET)
    ct = lab.ct
    labels = bytes([0b101, 0, 0, 0x80]) + bytes(11) + b"\x80"  # bits 0, 2, 31, 127
    flow = Flow(Tuple(A4, B4, IPPROTO_UDP, 6000, 53), timeout=100, mark=3, labels=labels)
    await ct.create(flow)
    got = await ct.get(flow.orig)
    assert got is not None and got.labels is not None
    assert label_bits(got.labels) == {0, 2, 31, 127}
    line = find_line(conntrack_list_labels(lab.ns, tmp_path), flow)
    assert line.extra["labels"] == "bit0,bit2,bit31,bit127"

    new = (1 << 1 | 1 << 64).to_bytes(16, "little")
    await ct.update(Flow(flow.orig, labels=new, timeout=50))
    got = await ct.get(flow.orig)
    assert got is not None and got.labels is not None
    assert label_bits(got.labels) == {1, 64}
    assert got.mark == 3
    line = find_line(conntrack_list_labels(lab.ns, tmp_path), flow)
    assert line.extra["labels"] == "bit1,bit64"
    assert_matches_conntrack(line, got)


async def test_labels_without_the_label_extension(lab: CtLab) -> None:
    """No nft rule uses ``ct label``: the kernel has no label storage on its flows.

    A create with labels succeeds but the labels are silently dropped; an update with
    labels fails with ENOSPC, yet the attributes processed before them (mark, timeout) are
    already applied. A daemon syncing labels must keep a ``ct label`` rule loaded.
    """
    ct = lab.ct
    flow = Flow(Tuple(A4, B4, IPPROTO_UDP, 6001, 53), timeout=100, labels=b"\x01" + bytes(15))
    await ct.create(flow)
    got = await ct.get(flow.orig)
    assert got is not None and got.labels is None
    with pytest.raises(NetlinkError) as info:
        await ct.update(Flow(flow.orig, mark=9, timeout=500, labels=b"\x02" + bytes(15)))
    assert info.value.errno == errno.ENOSPC
    got = await ct.get(flow.orig)
    assert got is not None and got.labels is None
    assert got.mark == 9 and got.timeout is not None and got.timeout > 400


async def test_zones(lab: CtLab) -> None:
    """The same tuple lives once per zone; get, delete and the dump filter select by zone.

    Zone 0 is the default zone (no ``CTA_ZONE``); conntrack -L -w agrees with the filter.
    """
    ct = lab.ct
    orig = Tuple(A4, B4, IPPROTO_UDP, 7000, 53)
    for zone in (None, 7, 8):
        await ct.create(Flow(orig, timeout=100, zone=zone, mark=zone or 0))
    with pytest.raises(NetlinkError) as info:
        await ct.create(Flow(orig, timeout=100, zone=0))
    assert info.value.errno == errno.EEXIST

    default = await ct.get(orig)
    assert default is not None and default.zone is None and default.mark == 0
    seven = await ct.get(orig, zone=7)
    assert seven is not None and seven.zone == 7 and seven.mark == 7
    assert seven.orig.zone is None  # the flow-wide zone, not a per-tuple one
    assert sorted(f.zone or 0 for f in await ct.dump()) == [0, 7, 8]
    assert [f.zone for f in await ct.dump(zone=7)] == [7]
    assert [f.zone for f in await ct.dump(zone=0)] == [None]
    assert await ct.dump(zone=9) == []

    lines = conntrack_list(lab.ns, "-w", "7")
    assert len(lines) == 1
    assert_matches_conntrack(lines[0], seven)

    await ct.delete(orig, zone=7)
    assert await ct.get(orig, zone=7) is None
    assert sorted(f.zone or 0 for f in await ct.dump()) == [0, 8]
    assert sorted(ln.extra.get("zone", "0") for ln in conntrack_list(lab.ns)) == ["0", "8"]


async def test_dump_filter_by_mark(lab: CtLab) -> None:
    """The kernel filters a dump by ``mark & mask == value``, like ``conntrack -L -m``."""
    ct = lab.ct
    marks = [0x100, 0x1FF, 0x200, 0, 0x10100]
    flows = [
        Flow(Tuple(A4, B4, IPPROTO_UDP, 8000 + i, 53), timeout=100, mark=m)
        for i, m in enumerate(marks)
    ]
    assert await ct.create_many(flows) == [None] * len(flows)

    masked = await ct.dump(mark=0x100, mark_mask=0xF00)
    assert sorted(f.mark or 0 for f in masked) == [0x100, 0x1FF, 0x10100]
    exact = await ct.dump(mark=0x100)
    assert [f.mark for f in exact] == [0x100]
    assert [f.mark for f in await ct.dump(mark=0)] == [0]

    lines = conntrack_list(lab.ns, "-m", "0x100/0xf00")
    assert sorted(ln.orig["sport"] for ln in lines) == sorted(str(f.orig.sport) for f in masked)


async def test_dump_filter_by_status(lab: CtLab) -> None:
    """The kernel filters a dump by ``status & mask == value`` (conntrack -L -u)."""
    ct = lab.ct
    statuses = {9000: SEEN_REPLY | ASSURED, 9001: SEEN_REPLY, 9002: 0}
    for port, status in statuses.items():
        await ct.create(Flow(Tuple(A4, B4, IPPROTO_UDP, port, 53), timeout=100, status=status))

    def ports(flows: list[Flow]) -> list[int]:
        return sorted(f.orig.sport or 0 for f in flows)

    assert ports(await ct.dump(status=ASSURED)) == [9000]
    assert ports(await ct.dump(status=SEEN_REPLY)) == [9000, 9001]
    assert ports(await ct.dump(status=SEEN_REPLY, status_mask=SEEN_REPLY | ASSURED)) == [9001]
    assert ports(await ct.dump(status=0, status_mask=SEEN_REPLY)) == [9002]

    for flag, want in (("ASSURED", [9000]), ("SEEN_REPLY", [9000, 9001])):
        lines = conntrack_list(lab.ns, "-u", flag)
        assert sorted(int(ln.orig["sport"]) for ln in lines) == want


async def test_batch_create_10k_with_duplicates_then_flush(lab: CtLab) -> None:
    """10 000 creates in a few large sendmsg batches; each duplicate fails at its own index.

    Duplicates sit in different chunks of the batch: one of a flow made before the batch
    (index 0), one of an earlier flow of the same batch (index 5000), one of the batch's
    previous entry (last). Only those three get EEXIST; the table then holds exactly the
    10 000 distinct flows + the earlier one (our count, our dump, conntrack -C, global
    stats), the per-CPU insert counter grew by 10 000 (our stats, conntrack -S).
    delete_many maps ENOENT the same way; flush empties the table.
    """
    ct = lab.ct
    earlier = Flow(Tuple(A4, B4, IPPROTO_UDP, 1, 53), timeout=300)
    await ct.create(earlier)
    inserts_before = (await ct.stats_cpu())["insert"]

    unique = [
        Flow(
            Tuple(A4, v4(f"198.18.{1 + i // 250}.{1 + i % 250}"), IPPROTO_UDP, 2000, 53),
            timeout=300,
        )
        for i in range(10_000)
    ]
    batch = [earlier, *unique[:5000], unique[10], *unique[5000:], unique[-1]]
    results = await ct.create_many(batch)
    assert len(results) == len(batch)
    failed = {i: r.errno for i, r in enumerate(results) if r is not None}
    assert failed == {0: errno.EEXIST, 5001: errno.EEXIST, len(batch) - 1: errno.EEXIST}

    assert await ct.count() == 10_001
    assert len(await ct.dump()) == 10_001
    assert conntrack_count(lab.ns) == 10_001
    stats = await ct.stats_global()
    assert stats["entries"] == 10_001
    assert stats["max_entries"] == int(lab.ns.get_sysctl("net.netfilter.nf_conntrack_max"))
    cpu = await ct.stats_cpu()
    assert cpu["insert"] - inserts_before == 10_000
    tool = conntrack_stats(lab.ns)
    for name in ("found", "invalid", "insert", "insert_failed", "drop", "early_drop", "error"):
        assert tool[name] == cpu[name], name
    assert tool["chaintoolong"] == cpu["chain_toolong"]

    missing = Flow(Tuple(A4, B4, IPPROTO_UDP, 2, 53))
    deletes = await ct.delete_many([unique[0], missing, unique[1]])
    assert deletes[0] is None and deletes[2] is None
    assert deletes[1] is not None and deletes[1].errno == errno.ENOENT
    assert await ct.count() == 9_999

    await ct.flush()
    assert await ct.count() == 0
    assert conntrack_count(lab.ns) == 0


async def test_flush_by_family(lab: CtLab) -> None:
    """Flushing one family leaves the other's flows alone."""
    ct = lab.ct
    await ct.create(CASES["udp4"])
    await ct.create(CASES["udp6"])
    await ct.flush(socket.AF_INET6)
    assert [f.orig for f in await ct.dump()] == [CASES["udp4"].orig]
    await ct.flush()
    assert await ct.dump() == []


async def test_nat_flow_v6_created_through_ctnetlink(lab: CtLab) -> None:
    """A flow whose reply tuple is not the inverse of the original asks for NAT: the kernel
    sets the NAT status bits itself and reports exactly the reply tuple we gave."""
    orig = Tuple(A6, B6, IPPROTO_TCP, 50000, 80)
    reply = Tuple(v6("fd00:198:18:2::2"), v6("fd00:198:18:2::1"), IPPROTO_TCP, 8080, 61000)
    await lab.ct.create(Flow(orig, reply, timeout=100, protoinfo=TcpInfo(3)))
    got = await lab.ct.get(orig)
    assert got is not None
    assert got.reply == reply
    assert got.status == int(Status.SRC_NAT | Status.DST_NAT) | NAT_DONE | CONFIRMED
    assert_matches_conntrack(find_line(conntrack_list(lab.ns), got), got)


# -- real traffic --------------------------------------------------------------------------


def _nat_ruleset(path: RoutedPath, snat: bool, dnat: bool) -> str:
    pre = f"iifname {path.lan_if} tcp dport 80 dnat to {path.server_ip}:8080" if dnat else ""
    post = (
        f"oifname {path.wan_if} ip protocol tcp snat to {path.router_wan_ip}:61000" if snat else ""
    )
    return (
        "table ip nat {\n"
        f"  chain pre {{ type nat hook prerouting priority dstnat;\n    {pre}\n  }}\n"
        f"  chain post {{ type nat hook postrouting priority srcnat;\n    {post}\n  }}\n"
        "}\n"
    )


@pytest.mark.parametrize(
    ("snat", "dnat"),
    [(True, False), (False, True), (True, True)],
    ids=["snat", "dnat", "snat+dnat"],
)
async def test_nat_by_rules_through_a_router(
    routed_path: RoutedPath, snat: bool, dnat: bool
) -> None:
    """Real TCP through a forwarding router whose nft rules translate it.

    Walk-through: the client connects (to the router's :80 when DNAT, else straight to the
    server's :8080) and exchanges data; the server sees the translated source. The
    router's flow, decoded by us, has the original tuple the client sent and the reply
    tuple the server answers with (server:8080 -> router:61000 under SNAT, -> client
    under DNAT alone), status = CONFIRMED|SEEN_REPLY|ASSURED + both NAT_DONE bits + the
    SRC_NAT/DST_NAT bit of each translation; conntrack -L on the router agrees.
    """
    p = routed_path
    p.router.nft(_nat_ruleset(p, snat, dnat))
    if not snat:
        p.server.ip("route", "add", "198.18.1.0/24", "via", p.router_wan_ip)
    with p.router.entered():
        ct = Conntrack()
    with p.server.entered():
        listener = socket.create_server((p.server_ip, 8080))
    target = (p.router_lan_ip, 80) if dnat else (p.server_ip, 8080)
    with p.client.entered():
        client = socket.create_connection(target, timeout=5)
    with ct, listener, client:
        conn, peer = listener.accept()
        with conn:
            client.sendall(b"hello")
            assert conn.recv(5) == b"hello"
            conn.sendall(b"world")
            assert client.recv(5) == b"world"
            # read while the connection is open: ESTABLISHED
            flows = await ct.dump()
            lines = conntrack_list(p.router, "-p", "tcp")
        client_port = client.getsockname()[1]
        assert peer == ((p.router_wan_ip, 61000) if snat else (p.client_ip, client_port))

        flows = [f for f in flows if f.orig.sport == client_port]
        assert len(flows) == 1
        flow = flows[0]
        assert flow.orig == Tuple(
            v4(p.client_ip), v4(target[0]), IPPROTO_TCP, client_port, target[1]
        )
        want_reply = Tuple(
            v4(p.server_ip),
            v4(p.router_wan_ip if snat else p.client_ip),
            IPPROTO_TCP,
            8080,
            61000 if snat else client_port,
        )
        assert flow.reply == want_reply
        want_status = CONFIRMED | SEEN_REPLY | ASSURED | NAT_DONE
        want_status |= int(Status.SRC_NAT) if snat else 0
        want_status |= int(Status.DST_NAT) if dnat else 0
        assert flow.status == want_status
        assert isinstance(flow.protoinfo, TcpInfo) and flow.protoinfo.state == 3
        line = find_line(lines, flow)
        assert_matches_conntrack(line, flow)
        assert line.state == "ESTABLISHED"


#: conntrack active for forwarded traffic: some rule must need it
FORWARD_CT_RULESET = (
    "table inet filter {\n"
    "  chain forward { type filter hook forward priority filter;\n"
    "    ct state established,related accept\n  }\n}\n"
)


@pytest.mark.parametrize("nat_chains", [True, False], ids=["nat-chains", "no-nat-chains"])
async def test_nat_flow_created_through_ctnetlink_translates(
    routed_path: RoutedPath, nat_chains: bool
) -> None:
    """A NAT flow we create on the router really translates packets, if nat hooks run.

    The flow says: client:41000 -> router:9999 is really router:41001 -> server:5000 (DNAT
    and SNAT at once). The router tracks forwarded traffic (a ``ct state`` rule). With
    nat chains in the router as well (empty ones: no rule makes a mapping), the client's
    UDP datagram reaches the server from router:41001 and the answer comes back from
    router:9999: the kernel applied our mapping. Without nat chains the same flow exists
    (status and tuples identical) but nothing is translated and the datagram never reaches
    the server: a node receiving synced NAT flows needs nat chains for them to work.

    (Measured alongside: empty nat chains without any ``ct`` rule translate nothing
    either, because a nat-type chain registers the nat hooks but does not turn conntrack
    on; a ``dnat``/``snat`` statement or a ``ct`` match does.)
    """
    p = routed_path
    p.router.nft(FORWARD_CT_RULESET)
    if nat_chains:
        p.router.nft(_nat_ruleset(p, snat=False, dnat=False))
    with p.router.entered():
        ct = Conntrack()
    with p.server.entered():
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind((p.server_ip, 5000))
    with p.client.entered():
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind((p.client_ip, 41000))
    with ct, server, client:
        orig = Tuple(v4(p.client_ip), v4(p.router_lan_ip), IPPROTO_UDP, 41000, 9999)
        reply = Tuple(v4(p.server_ip), v4(p.router_wan_ip), IPPROTO_UDP, 5000, 41001)
        await ct.create(Flow(orig, reply, timeout=60))
        got = await ct.get(orig)
        assert got is not None
        assert got.reply == reply
        nat_status = int(Status.SRC_NAT | Status.DST_NAT) | NAT_DONE | CONFIRMED
        assert got.status == nat_status
        assert_matches_conntrack(find_line(conntrack_list(p.router), got), got)

        client.sendto(b"ping", (p.router_lan_ip, 9999))
        if not nat_chains:
            server.settimeout(0.5)  # a negative check: the datagram must never arrive
            with pytest.raises(TimeoutError):
                server.recvfrom(100)
            return
        server.settimeout(5)
        client.settimeout(5)
        data, source = server.recvfrom(100)
        assert (data, source) == (b"ping", (p.router_wan_ip, 41001))
        server.sendto(b"pong", source)
        assert client.recvfrom(100) == (b"pong", (p.router_lan_ip, 9999))
        got = await ct.get(orig)
        assert got is not None and got.status == nat_status | SEEN_REPLY


async def test_helper_assigned_by_nft_rule(netns_pair: NetnsPair) -> None:
    """An nft ``ct helper`` object assigned on the first packet shows as ``helper="ftp"``
    (and the HELPER status bit) on the decoded flow and in conntrack -L."""
    server_ns, client_ns = netns_pair.a, netns_pair.b
    server_ns.nft(ftp_helper_ruleset(hooks=("prerouting",), port=2121))
    with server_ns.entered():
        ct = Conntrack()
        listener = socket.create_server((netns_pair.a_ip, 2121))
    with client_ns.entered():
        client = socket.create_connection((netns_pair.a_ip, 2121), timeout=5)
    with ct, listener, client:
        conn, _ = listener.accept()
        conn.close()
        flows = [f for f in await ct.dump() if f.orig.dport == 2121]
        assert len(flows) == 1
        flow = flows[0]
        assert flow.helper == "ftp"
        assert flow.status is not None and flow.status & Status.HELPER
        assert flow.orig == Tuple(
            v4(netns_pair.b_ip), v4(netns_pair.a_ip), IPPROTO_TCP, client.getsockname()[1], 2121
        )
        line = find_line(conntrack_list(server_ns), flow)
        assert line.extra["helper"] == "ftp"
        assert line.orig == tuple_text(flow.orig)


async def test_helper_assigned_through_ctnetlink(lab: CtLab) -> None:
    """ctnetlink accepts ``CTA_HELP`` on create: the flow gets the in-kernel ftp helper."""
    flow = Flow(
        Tuple(A4, B4, IPPROTO_TCP, 40100, 21), timeout=100, helper="ftp", protoinfo=TcpInfo(3)
    )
    await lab.ct.create(flow)
    got = await lab.ct.get(flow.orig)
    assert got is not None and got.helper == "ftp"
    assert got.status == CONFIRMED | int(Status.HELPER)
    assert find_line(conntrack_list(lab.ns), got).extra["helper"] == "ftp"
    with pytest.raises(NetlinkError) as info:
        await lab.ct.create(flow._replace(orig=flow.orig._replace(sport=40101), helper="nope"))
    assert info.value.errno == errno.EOPNOTSUPP
