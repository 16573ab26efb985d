"""The receiving side against a real kernel: the external cache committed into a fresh
namespace's conntrack table, the inject path, and the selective kernel flush.

Every synced object goes through the wire codec first (encode as a peer would, decode as
we receive), so what is committed is exactly what a backup would hold.  The kernel's state
is read back through our codec and, where conntrack-tools prints it, through
``conntrack -L``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from nfsyncd.commit import CREATE_FLAGS, commit, flush_kernel
from nfsyncd.external import ExternalCache
from nfsyncd.inject import Injector
from nfsyncd.model import (
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Expectation,
    Flow,
    Status,
    TcpInfo,
    Tuple,
)
from nfsyncd.netlink import Request
from nfsyncd.netlink import ctnetlink as ct
from nfsyncd.sync import MsgType
from tests.kernel._ctutil import (
    CtLab,
    assert_matches_conntrack,
    conntrack_list,
    conntrack_list_labels,
    find_line,
    full_mask,
    label_bits,
    v4,
    v6,
)
from tests.unit._fake_peer import Clock, established_tcp, over_the_wire

pytestmark = pytest.mark.kernel

A4, B4, N4 = v4("198.18.0.1"), v4("198.18.0.2"), v4("198.18.9.9")
A6, B6, N6 = v6("fd00:198:18::1"), v6("fd00:198:18::2"), v6("fd00:198:18::99")
SR_AS = int(Status.SEEN_REPLY | Status.ASSURED)
CONFIRMED = int(Status.CONFIRMED)
EXPECTED = int(Status.EXPECTED)
SNAT = int(Status.SRC_NAT | Status.SRC_NAT_DONE)
DNAT = int(Status.DST_NAT | Status.DST_NAT_DONE)
CLOCK_START = 5000.0  # the fake clock at arrival
TIME_PASSED = 40  # seconds between arrival and commit, on the cache's fake clock

#: nat hooks (so NAT flows would translate) and a ct label rule (so labels are kept)
RULESET = """
table ip nat {
  chain pre { type nat hook prerouting priority dstnat; }
  chain post { type nat hook postrouting priority srcnat; }
}
table ip6 nat {
  chain pre { type nat hook prerouting priority dstnat; }
  chain post { type nat hook postrouting priority srcnat; }
}
table inet labels {
  chain input { type filter hook input priority filter; ct label 127 accept; }
}
"""


def est(sport: int, **kw: Any) -> Flow:
    return established_tcp(A4, B4, sport, timeout=300)._replace(**kw)


LABELS = bytes([0b101]) + bytes(14) + b"\x80"  # bits 0, 2, 127

CASES = {
    "tcp4": est(40000),
    "tcp6": est(40001, orig=Tuple(A6, B6, IPPROTO_TCP, 40001, 443)),
    "udp4": Flow(Tuple(A4, B4, IPPROTO_UDP, 5353, 53), status=2, timeout=120),
    "udp6": Flow(Tuple(A6, B6, IPPROTO_UDP, 5353, 53), timeout=120),
    "icmp4": Flow(
        Tuple(A4, B4, IPPROTO_ICMP, icmp_type=8, icmp_code=0, icmp_id=77), status=2, timeout=100
    ),
    "snat4": est(40002, reply=Tuple(B4, N4, IPPROTO_TCP, 80, 61000), status=SR_AS | SNAT),
    "dnat4": est(40003, reply=Tuple(N4, A4, IPPROTO_TCP, 8080, 40003), status=SR_AS | DNAT),
    "snat6": est(
        40004,
        orig=Tuple(A6, B6, IPPROTO_TCP, 40004, 80),
        reply=Tuple(B6, N6, IPPROTO_TCP, 80, 40004),
        status=SR_AS | SNAT,
    ),
    "dnat6": est(
        40005,
        orig=Tuple(A6, B6, IPPROTO_TCP, 40005, 80),
        reply=Tuple(N6, A6, IPPROTO_TCP, 8080, 40005),
        status=SR_AS | DNAT,
    ),
    "mark-zone": est(40006, mark=0x42, zone=7),
    "labels": est(40007, labels=LABELS),
    "ftp": est(40008, orig=Tuple(A4, B4, IPPROTO_TCP, 40008, 21), helper="ftp"),
}


async def test_commit_flows(lab: CtLab, tmp_path: Path) -> None:
    """Each kind of synced flow, committed: the kernel holds the right tuples (NAT as the
    peer had it), status bits, mark, zone, labels, helper, TCP state made liberal, and the
    timeout the peer sent minus the time since it arrived; conntrack -L agrees."""
    lab.ns.nft(RULESET)
    clock = Clock(CLOCK_START)
    ext = ExternalCache(clock=clock)
    msgs = [over_the_wire(MsgType.CT_NEW, flow) for flow in CASES.values()]
    ext.apply(msgs)
    clock.t += TIME_PASSED
    result = await commit(ext, lab.ct)
    assert result.errors == {} and result.flows == len(CASES) and result.flows_failed == 0
    assert ext.flow_count() == len(CASES)
    lines = conntrack_list(lab.ns)
    for name, msg in zip(CASES, msgs, strict=True):
        sent = msg.obj
        assert isinstance(sent, Flow)
        got = await lab.ct.get(sent.orig, sent.zone)
        assert got is not None, name
        assert got.reply == sent.reply, name
        assert got.status is not None and sent.status is not None
        # the kernel's own bits: both NAT hooks done on a NAT flow it sets up itself,
        # HELPER on a flow with a helper
        done = int(Status.SRC_NAT_DONE | Status.DST_NAT_DONE | Status.HELPER)
        assert got.status & ~done == (sent.status & ~(EXPECTED | done)) | CONFIRMED, name
        assert bool(got.status & int(Status.HELPER)) == (sent.helper is not None), name
        assert sent.timeout is not None and got.timeout is not None
        want = sent.timeout - TIME_PASSED
        assert want - 3 <= got.timeout <= want, name
        assert (got.mark or 0) == (sent.mark or 0), name
        assert got.zone == sent.zone, name
        assert got.helper == sent.helper, name
        if sent.orig.proto == IPPROTO_TCP:
            assert isinstance(got.protoinfo, TcpInfo)
            assert got.protoinfo.state == 3
            assert got.protoinfo.flags_orig is not None and got.protoinfo.flags_reply is not None
            assert got.protoinfo.flags_orig.flags & 0x08, name  # BE_LIBERAL
            assert got.protoinfo.flags_reply.flags & 0x08, name
        assert_matches_conntrack(find_line(lines, got), got)
    labelled = await lab.ct.get(CASES["labels"].orig)
    assert labelled is not None and labelled.labels is not None
    assert label_bits(labelled.labels) == {0, 2, 127}
    line = find_line(conntrack_list_labels(lab.ns, tmp_path), CASES["labels"])
    assert line.extra["labels"] == "bit0,bit2,bit127"


async def test_commit_timeout_fixed_and_fallback(lab: CtLab) -> None:
    """CommitTimeout overrides the estimate; a used-up or missing timeout becomes 60."""
    clock = Clock(CLOCK_START)
    ext = ExternalCache(clock=clock)
    ext.apply([over_the_wire(MsgType.CT_NEW, est(1, timeout=30))])
    ext.apply([over_the_wire(MsgType.CT_NEW, est(2, timeout=None))])
    clock.t += 100
    assert (await commit(ext, lab.ct)).flows == 2
    for sport in (1, 2):
        got = await lab.ct.get(est(sport).orig)
        assert got is not None and got.timeout is not None and 57 <= got.timeout <= 60
    await lab.ct.flush()
    fixed = ExternalCache(clock=clock, commit_timeout=1000)
    fixed.apply([over_the_wire(MsgType.CT_NEW, est(3, timeout=30))])
    assert (await commit(fixed, lab.ct)).flows == 1
    got = await lab.ct.get(est(3).orig)
    assert got is not None and got.timeout is not None and 997 <= got.timeout <= 1000


def ftp_master(sport: int, zone: int | None = None) -> Flow:
    return est(sport, orig=Tuple(A4, B4, IPPROTO_TCP, sport, 21), helper="ftp", zone=zone)


def ftp_expect(master: Flow, dport: int) -> Expectation:
    tup = Tuple(A4, B4, IPPROTO_TCP, 0, dport)
    return Expectation(master.orig, tup, full_mask(tup), timeout=200, helper="ftp")


async def test_commit_related_and_expectations_after_masters(lab: CtLab) -> None:
    """Arrival order is wrong on purpose (related flow and expectations first); the commit
    still succeeds because masters go first, then related flows, then expectations.  The
    related flow gets its master; the expectation of a zoned master is created in that
    zone, which the wire never carries and the cache took from the master."""
    plain, zoned = ftp_master(40100), ftp_master(40101, zone=5)
    data = est(50000, master=plain.orig, status=SR_AS | EXPECTED)
    ext = ExternalCache()
    ext.apply(
        [
            over_the_wire(MsgType.CT_NEW, data),
            over_the_wire(MsgType.EXP_NEW, ftp_expect(plain, 30001)),
            over_the_wire(MsgType.EXP_NEW, ftp_expect(zoned, 30002)),
            over_the_wire(MsgType.CT_NEW, plain),
            over_the_wire(MsgType.CT_NEW, zoned),
        ]
    )
    result = await commit(ext, lab.ct)
    assert result.errors == {}
    assert (result.flows, result.related, result.expects) == (3, 1, 2)
    got = await lab.ct.get(data.orig)
    assert got is not None and got.master == plain.orig
    assert got.status is not None and got.status & EXPECTED
    exps = {e.tuple.dport: e for e in await lab.ct.dump_expect()}
    assert set(exps) == {30001, 30002}
    assert exps[30001].master == plain.orig and exps[30002].master == zoned.orig
    assert all(e.helper == "ftp" for e in exps.values())
    # the zoned one really is in zone 5: only a delete naming the zone finds it
    await lab.ct.delete_expect(exps[30002]._replace(zone=5))


async def test_commit_expectations_alone_and_missing_master(lab: CtLab) -> None:
    """``what="expect"`` writes only expectations: without their masters in the kernel
    they fail with ENOENT (counted); after ``what="ct"`` they go in."""
    master = ftp_master(40200)
    ext = ExternalCache()
    ext.apply(
        [
            over_the_wire(MsgType.CT_NEW, master),
            over_the_wire(MsgType.EXP_NEW, ftp_expect(master, 1)),
        ]
    )
    first = await commit(ext, lab.ct, what="expect")
    assert (first.expects, first.expects_failed, first.errors) == (0, 1, {"ENOENT": 1})
    assert await lab.ct.dump() == []
    assert (await commit(ext, lab.ct, what="ct")).flows == 1
    assert await lab.ct.dump_expect() == []
    assert (await commit(ext, lab.ct, what="expect")).expects == 1
    assert len(await lab.ct.dump_expect()) == 1


async def test_commit_clash_recreates(lab: CtLab) -> None:
    """A flow the kernel already has (EEXIST) is deleted and created again from the
    cache: the peer's state wins, and nothing counts as failed."""
    await lab.ct.create(est(40300, mark=1, timeout=50))
    ext = ExternalCache()
    ext.apply([over_the_wire(MsgType.CT_NEW, est(n, mark=2)) for n in (40300, 40301)])
    result = await commit(ext, lab.ct)
    assert (result.flows, result.flows_failed, result.errors) == (2, 0, {})
    got = await lab.ct.get(est(40300).orig)
    assert got is not None and got.mark == 2 and got.timeout is not None and got.timeout > 250


async def test_commit_10k_rate(lab: CtLab) -> None:
    """10k synced flows commit in a few large batches.  Prints the rate next to the same
    creates sent one netlink call per entry, as conntrackd does (it measured ~110k
    entries/s on an idle machine; both numbers here move with the machine's load)."""
    n = 10_000
    ext = ExternalCache()
    ext.apply(over_the_wire(MsgType.CT_NEW, est(1024 + i)) for i in range(n))
    assert ext.flow_count() == n
    started = time.perf_counter()
    result = await commit(ext, lab.ct)
    batched = time.perf_counter() - started
    assert (result.flows, result.flows_failed) == (n, 0)
    assert await lab.ct.count() == n

    await lab.ct.flush()
    requests = [Request(ct.CT_NEW, CREATE_FLAGS, p) for _, _, p in ext.flow_creates(ext.clock())]
    started = time.perf_counter()
    for req in requests:
        assert await lab.ct.write_many([req]) == [None]
    one_by_one = time.perf_counter() - started
    print(
        f"commit of {n} flows: {n / batched / 1000:.0f}k entries/s batched "
        f"(prepare included), {n / one_by_one / 1000:.0f}k/s one call per entry"
    )
    assert batched < one_by_one


# -- inject ----------------------------------------------------------------------------------
async def test_inject(lab: CtLab) -> None:
    """NEW creates (a clash is replaced), UPD updates or creates what is missing, DEL
    deletes and ignores what is missing; a NEW then DEL in one batch ends deleted."""
    lab.ns.nft(RULESET)
    ct = lab.ct
    await ct.create(est(2, mark=1, timeout=50))  # clashes with the NEW below
    inj = Injector(ct)
    await inj.apply(
        [
            over_the_wire(MsgType.CT_NEW, est(1, mark=3)),
            over_the_wire(MsgType.CT_NEW, est(2, mark=3)),
            over_the_wire(MsgType.CT_NEW, CASES["snat4"]),
            over_the_wire(MsgType.CT_NEW, est(9)),
            over_the_wire(MsgType.CT_DEL, est(9)),
        ]
    )
    flows = {f.orig.sport: f for f in await ct.dump()}
    assert set(flows) == {1, 2, 40002}
    assert flows[1].mark == 3 and flows[2].mark == 3
    assert flows[40002].reply == CASES["snat4"].reply
    pi = flows[1].protoinfo
    assert isinstance(pi, TcpInfo) and pi.flags_orig is not None and pi.flags_orig.flags & 8
    await inj.apply(
        [
            over_the_wire(MsgType.CT_UPD, est(1, mark=4, timeout=77)),
            over_the_wire(MsgType.CT_UPD, est(3, mark=5)),  # unknown: created
            over_the_wire(MsgType.CT_DEL, est(2)),
            over_the_wire(MsgType.CT_DEL, est(8)),  # unknown: ignored
        ]
    )
    flows = {f.orig.sport: f for f in await ct.dump()}
    assert set(flows) == {1, 3, 40002}
    assert flows[1].mark == 4 and flows[1].timeout is not None and flows[1].timeout <= 77
    assert flows[3].mark == 5
    st = inj.stats_dict()
    # created: 1, 2 (after its clash), snat4, and 3 (an UPD of a missing flow); 9 never
    assert st["created"] == 4 and st["update_not_found"] == 1 and st["updated"] == 1
    # not found: 9 (its NEW and DEL coalesced into the DEL) and 8
    assert st["deleted"] == 1 and st["delete_not_found"] == 2
    assert st["create_failed"] == st["update_failed"] == st["delete_failed"] == 0


async def test_inject_expectation_and_related(lab: CtLab) -> None:
    """Masters, related flows and expectations in one batch, in the wrong order; an
    EXP_UPD creates like EXP_NEW; EXP_DEL removes."""
    inj = Injector(lab.ct)
    master = ftp_master(40400, zone=3)
    data = est(50001, master=master.orig, zone=3)
    await inj.apply(
        [
            over_the_wire(MsgType.EXP_UPD, ftp_expect(master, 30010)),
            over_the_wire(MsgType.CT_NEW, data),
            over_the_wire(MsgType.CT_NEW, master),
        ]
    )
    got = await lab.ct.get(data.orig, 3)
    assert got is not None and got.master == master.orig
    # an update of the related flow (its status has EXPECTED, which the kernel owns)
    await inj.apply([over_the_wire(MsgType.CT_UPD, data._replace(mark=9, status=SR_AS | EXPECTED))])
    updated = await lab.ct.get(data.orig, 3)
    assert updated is not None and updated.mark == 9 and updated.master == master.orig
    assert updated.id == got.id  # in place, not deleted and created again
    assert inj.stats_dict()["updated"] == 1
    [exp] = await lab.ct.dump_expect()
    assert exp.tuple.dport == 30010 and exp.master == master.orig
    await inj.apply([over_the_wire(MsgType.EXP_DEL, ftp_expect(master, 30010))])
    assert await lab.ct.dump_expect() == []
    st = inj.stats_dict()
    assert (st["created"], st["expect_created"], st["expect_deleted"]) == (2, 1, 1)


# -- flush -----------------------------------------------------------------------------------
async def test_flush_kernel_selective(lab: CtLab) -> None:
    """The purge flush deletes what the filter accepts and leaves the rest; expectations
    go when asked; without a filter the whole table goes."""
    ct = lab.ct
    master = ftp_master(40500)
    for flow in (est(1), est(2), est(22, orig=Tuple(A4, B4, IPPROTO_TCP, 22, 22)), master):
        await ct.create(flow)
    await ct.create_expect(ftp_expect(master, 30020))
    deleted = await flush_kernel(ct, lambda f: f.orig.sport in (1, 2), expectations=False)
    assert deleted == (2, 0)
    assert sorted(f.orig.sport or 0 for f in await ct.dump()) == [22, 40500]
    assert len(await ct.dump_expect()) == 1
    deleted = await flush_kernel(ct, lambda f: f.orig.sport == 1, expectations=True)
    assert deleted == (0, 1)
    assert await ct.dump_expect() == []
    assert await flush_kernel(ct, None, expectations=True) == (2, 0)
    assert await ct.dump() == []
