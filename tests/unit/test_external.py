"""The receiving side without a kernel: external cache semantics, prepared creates, timeout
estimation, commit order and clash handling, and the inject path, against a small fake
conntrack table that answers like ctnetlink (EEXIST, ENOENT)."""

from __future__ import annotations

import errno
import gc
import socket
import tracemalloc
from collections.abc import Sequence
from typing import Any

import pytest

from nfsyncd import external
from nfsyncd.commit import (
    DEFAULT_TIMEOUT,
    CommitResult,
    commit,
    estimate_timeout,
    flush_kernel,
    prepare_flow,
)
from nfsyncd.external import ExternalCache
from nfsyncd.inject import Injector
from nfsyncd.model import (
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Expectation,
    Flow,
    Status,
    TcpFlags,
    TcpInfo,
    Tuple,
)
from nfsyncd.netlink import NetlinkError, Request, iter_attrs
from nfsyncd.netlink import ctnetlink as ct
from nfsyncd.netlink._socket import NLM_F_CREATE, NLM_F_EXCL
from nfsyncd.sync import Message, MsgType
from nfsyncd.sync import attrs as wire_attrs
from tests.unit._fake_peer import Clock, established_tcp, over_the_wire
from tests.unit.test_layouts import fresh_wire_layouts

A, B, C = (socket.inet_aton(f"198.18.0.{n}") for n in (1, 2, 3))
A6 = socket.inet_pton(socket.AF_INET6, "fd00:198:18::1")
B6 = socket.inet_pton(socket.AF_INET6, "fd00:198:18::2")
SR_AS = int(Status.SEEN_REPLY | Status.ASSURED)


def tcp(sport: int, **kw: Any) -> Flow:
    return established_tcp(A, B, sport, timeout=120)._replace(**kw)


def msg(mtype: MsgType, obj: Flow | Expectation) -> Message:
    return Message(int(mtype), 0, 1, obj)


def ftp_master(sport: int = 40000, zone: int | None = None) -> Flow:
    return tcp(sport, orig=Tuple(A, B, IPPROTO_TCP, sport, 21), helper="ftp", zone=zone)


def ftp_expect(master: Flow, dport: int = 30000) -> Expectation:
    tup = Tuple(A, B, IPPROTO_TCP, 0, dport)
    mask = Tuple(b"\xff" * 4, b"\xff" * 4, 0xFF, 0, 0xFFFF)
    return Expectation(master.orig, tup, mask, timeout=100, helper="ftp")


def attrs_of(payload: bytes) -> dict[int, bytes]:
    return {t: payload[s:e] for t, s, e in iter_attrs(payload, 4, len(payload))}


def timeout_of(payload: bytes, atype: int = ct.CTA_TIMEOUT) -> int:
    return int.from_bytes(attrs_of(payload)[atype], "big")


# -- apply semantics ---------------------------------------------------------------------
def test_new_update_delete() -> None:
    ext = ExternalCache()
    ext.apply([msg(MsgType.CT_NEW, tcp(1)), msg(MsgType.CT_NEW, tcp(2))])
    assert ext.flow_count() == 2
    ext.apply([msg(MsgType.CT_UPD, tcp(1, mark=5))])
    got = ext.get_flow(tcp(1).orig)
    assert got is not None and got.mark == 5
    ext.apply([msg(MsgType.CT_DEL, tcp(2))])
    assert ext.flow_count() == 1 and ext.get_flow(tcp(2).orig) is None
    st = ext.stats_dict()
    assert (st["created"], st["updated"], st["deleted"], st["active"]) == (2, 1, 1, 1)
    assert st["update_not_found"] == st["del_not_found"] == st["bad"] == 0


def test_upd_of_unknown_creates_and_del_of_unknown_is_silent() -> None:
    ext = ExternalCache()
    ext.apply([msg(MsgType.CT_UPD, tcp(1)), msg(MsgType.CT_DEL, tcp(9))])
    assert [f.orig for f, _ in ext.flows()] == [tcp(1).orig]
    st = ext.stats_dict()
    assert st["created"] == 1 and st["update_not_found"] == 1
    assert st["del_not_found"] == 1 and st["deleted"] == 0


def test_new_replaces() -> None:
    ext = ExternalCache()
    ext.apply([msg(MsgType.CT_NEW, tcp(1, mark=1, helper="ftp"))])
    ext.apply([msg(MsgType.CT_NEW, tcp(1, mark=2))])
    got = ext.get_flow(tcp(1).orig)
    assert got is not None and got.mark == 2 and got.helper is None
    assert ext.flow_count() == 1
    assert ext.stats_dict()["updated"] == 1


def test_flow_keys_are_the_internal_cache_keys() -> None:
    from nfsyncd.cache import flow_key

    ext = ExternalCache()
    ext.apply([msg(MsgType.CT_NEW, tcp(1)), msg(MsgType.CT_NEW, tcp(2, zone=3))])
    assert sorted(ext.flow_keys()) == sorted([flow_key(tcp(1).orig), flow_key(tcp(2).orig, 3)])


def test_zone_is_part_of_the_identity() -> None:
    ext = ExternalCache()
    ext.apply([msg(MsgType.CT_NEW, tcp(1)), msg(MsgType.CT_NEW, tcp(1, zone=7))])
    assert ext.flow_count() == 2
    ext.apply([msg(MsgType.CT_DEL, tcp(1, zone=7))])
    [(left, _)] = ext.flows()
    assert left.zone is None


def test_bad_entry_is_counted_and_the_batch_goes_on() -> None:
    ext = ExternalCache()
    broken = Flow(Tuple(b"\x01\x02\x03", B, IPPROTO_UDP, 1, 2), timeout=30)
    ext.apply([msg(MsgType.CT_NEW, broken), msg(MsgType.CT_NEW, tcp(1))])
    assert ext.flow_count() == 1
    assert ext.stats_dict()["bad"] == 1


def test_limit_counts_no_space() -> None:
    ext = ExternalCache(limit=2)
    ext.apply([msg(MsgType.CT_NEW, tcp(n)) for n in range(1, 5)])
    assert ext.flow_count() == 2
    ext.apply([msg(MsgType.CT_UPD, tcp(1, mark=3))])  # updating an entry still works
    assert ext.stats_dict()["no_space"] == 2 and ext.stats_dict()["updated"] == 1


def test_non_data_messages_are_ignored() -> None:
    ext = ExternalCache()
    ext.apply([Message(int(MsgType.CTL), 0x8, 1, None, 1, 2)])
    assert ext.flow_count() == 0 and ext.expect_count() == 0


# -- what is kept: the flow as received, the create as the kernel needs it ---------------
WIRE_CASES = {
    "tcp": tcp(1, mark=7, labels=bytes([1]) + bytes(15)),
    "tcp-snat": tcp(2, reply=Tuple(B, C, IPPROTO_TCP, 80, 61000), status=SR_AS | 0x90),
    "tcp-dnat": tcp(3, reply=Tuple(C, A, IPPROTO_TCP, 8080, 3), status=SR_AS | 0x120),
    "udp6": Flow(Tuple(A6, B6, IPPROTO_UDP, 5353, 53), status=2, timeout=30, zone=3),
    "icmp": Flow(Tuple(A, B, IPPROTO_ICMP, icmp_type=8, icmp_code=0, icmp_id=77), timeout=30),
    "related": tcp(4, master=Tuple(A, B, IPPROTO_TCP, 40000, 21), status=SR_AS | 1),
}


@pytest.mark.parametrize("name", list(WIRE_CASES))
def test_flows_reads_back_what_arrived(name: str) -> None:
    sent = over_the_wire(MsgType.CT_NEW, WIRE_CASES[name])
    assert isinstance(sent.obj, Flow)
    ext = ExternalCache(clock=Clock())
    ext.apply([sent])
    [(flow, age)] = ext.flows()
    assert flow == sent.obj
    assert age == 0


@pytest.mark.parametrize("name", list(WIRE_CASES))
def test_prepared_create_is_flow_create(name: str) -> None:
    """The prepared payload plus the estimated timeout carries the same attributes as
    :func:`ct.flow_create` of the received flow made liberal, with that timeout."""
    sent = over_the_wire(MsgType.CT_NEW, WIRE_CASES[name])
    flow = sent.obj
    assert isinstance(flow, Flow)
    clock = Clock()
    ext = ExternalCache(clock=clock)
    ext.apply([sent])
    [(_key, related, payload)] = ext.flow_creates(clock())
    assert related == (flow.master is not None)
    liberal = flow
    if flow.orig.proto == IPPROTO_TCP:
        assert isinstance(flow.protoinfo, TcpInfo)
        liberal = flow._replace(
            protoinfo=flow.protoinfo._replace(flags_orig=TcpFlags(8, 8), flags_reply=TcpFlags(8, 8))
        )
    want = ct.flow_create(liberal._replace(timeout=flow.timeout))
    assert attrs_of(payload) == attrs_of(want.payload)
    assert payload[:4] == want.payload[:4]  # nfgenmsg: the family
    decoded = ct.decode_flow(payload)
    assert decoded.orig == flow.orig and decoded.reply == flow.orig.inverted()
    assert decoded.status is not None and decoded.status & int(Status.CONFIRMED)
    assert not decoded.status & int(Status.EXPECTED)


def test_be_liberal_unless_window_tracking() -> None:
    flow = tcp(1, protoinfo=TcpInfo(state=3, flags_orig=TcpFlags(0x3, 0x3)))
    payload, _ = prepare_flow(flow)
    pi = ct.decode_flow(payload).protoinfo
    assert pi == TcpInfo(state=3, flags_orig=TcpFlags(0xB, 0xB), flags_reply=TcpFlags(8, 8))
    no_info, _ = prepare_flow(tcp(2, protoinfo=None))
    assert ct.decode_flow(no_info).protoinfo == TcpInfo(
        flags_orig=TcpFlags(8, 8), flags_reply=TcpFlags(8, 8)
    )
    tracked, _ = prepare_flow(tcp(3), tcp_window_tracking=True)
    assert ct.decode_flow(tracked).protoinfo == TcpInfo(state=3)
    udp, _ = prepare_flow(Flow(Tuple(A, B, IPPROTO_UDP, 1, 2), timeout=3))
    assert ct.decode_flow(udp).protoinfo is None
    # and the cache still shows the flow as it arrived
    ext = ExternalCache()
    ext.apply([msg(MsgType.CT_NEW, tcp(4)), msg(MsgType.CT_NEW, tcp(5, protoinfo=None))])
    assert {f.protoinfo for f, _ in ext.flows()} == {TcpInfo(state=3), None}


# -- timeouts ------------------------------------------------------------------------------
def test_estimate_timeout() -> None:
    assert estimate_timeout(100, 10.0, 40.0, None) == 70
    assert estimate_timeout(100, 10.0, 40.5, None) == 70  # rounded up: still alive then
    assert estimate_timeout(100, 10.0, 110.0, None) == DEFAULT_TIMEOUT  # used up
    assert estimate_timeout(100, 10.0, 200.0, None) == DEFAULT_TIMEOUT
    assert estimate_timeout(None, 10.0, 10.0, None) == DEFAULT_TIMEOUT  # sender omitted it
    assert estimate_timeout(100, 50.0, 10.0, None) == DEFAULT_TIMEOUT  # clock went back
    assert estimate_timeout(100, 10.0, 500.0, 180) == 180
    assert estimate_timeout(None, 10.0, 10.0, 0.2) == 1


def test_commit_timeout_estimated_from_arrival() -> None:
    clock = Clock(0.0)
    ext = ExternalCache(clock=clock)
    ext.apply([msg(MsgType.CT_NEW, tcp(1, timeout=300))])
    clock.t = 20.0
    ext.apply([msg(MsgType.CT_NEW, tcp(2, timeout=300)), msg(MsgType.CT_NEW, tcp(3, timeout=None))])
    clock.t = 100.0
    got = {ct.decode_flow(p).orig.sport: timeout_of(p) for _, _, p in ext.flow_creates(100.0)}
    assert got == {1: 200, 2: 220, 3: DEFAULT_TIMEOUT}
    fixed = ExternalCache(clock=clock, commit_timeout=45)
    fixed.apply([msg(MsgType.CT_NEW, tcp(1, timeout=300))])
    assert [timeout_of(p) for _, _, p in fixed.flow_creates(100.0)] == [45]


# -- expiry (ALARM) ------------------------------------------------------------------------
def test_expiry_on_a_fake_clock() -> None:
    clock = Clock(0.0)
    ext = ExternalCache(clock=clock, timeout=10)
    assert ext.next_expiry() is None
    master = ftp_master()
    ext.apply([msg(MsgType.CT_NEW, tcp(1)), msg(MsgType.CT_NEW, master)])
    clock.t = 5.0
    ext.apply([msg(MsgType.CT_NEW, tcp(2)), msg(MsgType.EXP_NEW, ftp_expect(master))])
    clock.t = 8.0
    ext.apply([msg(MsgType.CT_UPD, tcp(1))])  # refreshed: moves to the back
    assert ext.next_expiry() == 10.0  # the master
    assert ext.expires_in(tcp(1)) == 10.0
    assert ext.expires_in(tcp(99)) is None
    clock.t = 10.0
    assert ext.expire() == 1  # the master
    assert ext.next_expiry() == 15.0
    clock.t = 15.5
    assert ext.expire() == 2  # tcp(2) and the expectation
    assert [f.orig.sport for f, _ in ext.flows()] == [1]
    assert ext.expect_count() == 0
    assert ext.expires_in(tcp(1)) == pytest.approx(2.5)
    clock.t = 18.0
    assert ext.expire() == 1 and ext.flow_count() == 0
    assert ext.next_expiry() is None
    st = ext.stats_dict()
    assert st["expired"] == 3 and st["expect_expired"] == 1


def test_no_expiry_without_timeout() -> None:
    clock = Clock(0.0)
    ext = ExternalCache(clock=clock)
    ext.apply([msg(MsgType.CT_NEW, tcp(1))])
    clock.t = 1e6
    assert ext.expire() == 0 and ext.next_expiry() is None and ext.expires_in(tcp(1)) is None
    [(_, age)] = ext.flows()
    assert age == 1e6 - 0.0


# -- expectations ----------------------------------------------------------------------------
def test_expectation_zone_from_master() -> None:
    ext = ExternalCache()
    zoned = ftp_master(40001, zone=7)
    plain = ftp_master(40002)
    ext.apply([msg(MsgType.CT_NEW, zoned), msg(MsgType.CT_NEW, plain)])
    ext.apply(
        [
            over_the_wire(MsgType.EXP_NEW, ftp_expect(zoned, 30001)),
            over_the_wire(MsgType.EXP_UPD, ftp_expect(plain, 30002)),
        ]
    )
    zones = {e.tuple.dport: e.zone for e, _ in ext.expects()}
    assert zones == {30001: 7, 30002: None}
    creates = {e.tuple.dport: p for e, p in ext.expect_creates(0.0)}
    assert attrs_of(creates[30001])[ct.CTA_EXPECT_ZONE] == (7).to_bytes(2, "big")
    assert ct.CTA_EXPECT_ZONE not in attrs_of(creates[30002])
    assert timeout_of(creates[30001], ct.CTA_EXPECT_TIMEOUT) > 0
    # a delete finds the zoned one through its master too
    ext.apply([over_the_wire(MsgType.EXP_DEL, ftp_expect(zoned, 30001))])
    assert [e.tuple.dport for e, _ in ext.expects()] == [30002]
    assert ext.stats_dict()["expect_deleted"] == 1


def test_expectation_zone_learnt_when_master_arrives_later() -> None:
    ext = ExternalCache()
    zoned = ftp_master(40001, zone=9)
    ext.apply([msg(MsgType.EXP_NEW, ftp_expect(zoned))])
    [(exp, _)] = ext.expects()
    assert exp.zone is None
    ext.apply([msg(MsgType.CT_NEW, zoned)])
    [(exp, payload)] = ext.expect_creates(0.0)
    assert exp.zone == 9
    assert attrs_of(payload)[ct.CTA_EXPECT_ZONE] == (9).to_bytes(2, "big")


def test_flush_variants() -> None:
    def filled() -> ExternalCache:
        ext = ExternalCache()
        master = ftp_master()
        ext.apply([msg(MsgType.CT_NEW, master), msg(MsgType.CT_NEW, tcp(1))])
        ext.apply([msg(MsgType.EXP_NEW, ftp_expect(master))])
        return ext

    ext = filled()
    assert ext.flush("ct") == 2 and (ext.flow_count(), ext.expect_count()) == (0, 1)
    ext = filled()
    assert ext.flush("expect") == 1 and (ext.flow_count(), ext.expect_count()) == (2, 0)
    ext = filled()
    assert ext.flush() == 3 and (ext.flow_count(), ext.expect_count()) == (0, 0)
    assert ext.stats_dict()["flushed"] == 2 and ext.stats_dict()["expect_flushed"] == 1
    with pytest.raises(ValueError):
        ext.flush("internal")


def test_rests_beyond_the_shared_table_stay_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records of flows without NAT name a shared copy of their payload's rest; once the
    table of shared rests is full, further distinct rests are kept in the record: either
    way every flow reads back and commits as it arrived, also after a flush empties the
    table and the same numbers are given out again."""
    monkeypatch.setattr(external, "_SHARED_RESTS", 2)
    ext = ExternalCache(clock=Clock())
    for _ in range(2):
        sent = [over_the_wire(MsgType.CT_NEW, tcp(i, mark=i % 5)) for i in range(1, 21)]
        ext.apply(sent)
        assert sorted(f for f, _ in ext.flows()) == sorted(m.obj for m in sent)  # type: ignore[type-var]
        marks = sorted(
            (ct.decode_flow(p).orig.sport, ct.decode_flow(p).mark)
            for _, _, p in ext.flow_creates(0.0)
        )
        assert marks == [(i, i % 5) for i in range(1, 21)]
        ext.flush("ct")


def test_a_listing_outlives_a_flush() -> None:
    """``flows()`` walks a snapshot: a flush and new flows meanwhile (whose shared rests
    get the numbers the old ones had) do not change what the rest of the listing shows."""
    ext = ExternalCache(clock=Clock())
    before = [over_the_wire(MsgType.CT_NEW, tcp(i, mark=1)) for i in range(1, 4)]
    ext.apply(before)
    listing = ext.flows()
    first, _ = next(listing)
    ext.flush("ct")
    ext.apply([over_the_wire(MsgType.CT_NEW, tcp(i, mark=2)) for i in range(1, 4)])
    rest = [f for f, _ in listing]
    assert [first, *rest] == [m.obj for m in before]


def test_flows_sharing_a_rest_keep_their_own_status() -> None:
    """With and without CONFIRMED, two flows prepare the same create (a create always
    carries CONFIRMED), so their records name one shared rest; each still reads back with
    the status it arrived with."""
    with_confirmed = over_the_wire(MsgType.CT_NEW, tcp(1, status=SR_AS | Status.CONFIRMED))
    without = over_the_wire(MsgType.CT_NEW, tcp(2, status=SR_AS))
    ext = ExternalCache(clock=Clock())
    ext.apply([with_confirmed, without])
    payloads = [p for _, _, p in ext.flow_creates(0.0)]
    assert [ct.decode_flow(p).status for p in payloads] == [SR_AS | Status.CONFIRMED] * 2
    got = {f.orig.sport: f.status for f, _ in ext.flows()}
    assert got == {1: SR_AS | Status.CONFIRMED, 2: SR_AS}


@pytest.mark.slow
def test_memory_per_flow_at_100k() -> None:
    """100k IPv4 TCP flows as decoded from the wire: bytes per flow by tracemalloc
    (measured 147: a 14-byte key, a 15-byte record naming the payload rest it shares with
    the other flows and the dict slot; 237 when each record held its rest; conntrackd needs
    ~0.5 KiB).  Slow only because tracing slows the encoder down tenfold."""
    n = 100_000
    template = over_the_wire(MsgType.CT_NEW, tcp(1, mark=1)).obj
    assert isinstance(template, Flow)
    origs = [
        template.orig._replace(sport=1024 + i % 60000, src=(i // 60000 + 1).to_bytes(4, "big"))
        for i in range(n)
    ]
    # as the wire decoder gives them: without NAT the reply is the original's inverse
    msgs = [msg(MsgType.CT_NEW, template._replace(orig=o, reply=o.inverted())) for o in origs]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ext = ExternalCache()
        ext.apply(msgs)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert ext.flow_count() == n
    per_flow = used / n
    print(f"external cache: {per_flow:.0f} B per IPv4 TCP flow at {n} flows")
    assert per_flow <= 170


# -- a fake ctnetlink table for commit and inject ------------------------------------------
class FakeConntrack:
    """Flows and expectations keyed like the kernel keys them; answers creates, updates
    and deletes with the kernel's errnos.  ``log`` records (operation, key) in order."""

    port_id = 4242

    def __init__(self) -> None:
        self.flows: dict[tuple[Tuple, int], Flow] = {}
        self.exps: dict[tuple[Tuple, int], Expectation] = {}
        self.log: list[tuple[str, object]] = []
        self.calls = 0
        self.fail_update: int | None = None  # errno every update fails with

    async def write_many(self, requests: Sequence[Request]) -> list[NetlinkError | None]:
        self.calls += 1
        return [self._one(r) for r in requests]

    def _one(self, req: Request) -> NetlinkError | None:
        if req.type == ct.CT_NEW:
            flow = ct.decode_flow(req.payload)
            key = (flow.orig, flow.zone or 0)
            if req.flags & NLM_F_CREATE:
                self.log.append(("create", flow.orig.sport))
                if key in self.flows and req.flags & NLM_F_EXCL:
                    return NetlinkError(errno.EEXIST)
                if flow.master is not None and (flow.master, flow.zone or 0) not in self.flows:
                    return NetlinkError(errno.ENOENT)
                self.flows[key] = flow
                return None
            self.log.append(("update", flow.orig.sport))
            if key not in self.flows:
                return NetlinkError(errno.ENOENT)
            if self.fail_update is not None:
                return NetlinkError(self.fail_update)
            self.flows[key] = flow
            return None
        if req.type == ct.CT_DELETE:
            flow = ct.decode_flow(req.payload)
            self.log.append(("delete", flow.orig.sport))
            return None if self.flows.pop((flow.orig, flow.zone or 0), None) else _enoent()
        if req.type == ct.EXP_DELETE:
            for key, exp in self.exps.items():
                if ct.expect_key(exp) == req.payload:
                    self.log.append(("delete-expect", exp.tuple.dport))
                    del self.exps[key]
                    return None
            return _enoent()
        exp = ct.decode_expect(req.payload)
        key = (exp.tuple, exp.zone or 0)
        if req.type == ct.EXP_NEW:
            self.log.append(("create-expect", exp.tuple.dport))
            master = self.flows.get((exp.master, exp.zone or 0))
            if master is None:
                return NetlinkError(errno.ENOENT)
            if master.helper is None:
                return NetlinkError(errno.EOPNOTSUPP)
            if key in self.exps:
                return NetlinkError(errno.EEXIST)
            self.exps[key] = exp
            return None
        raise AssertionError(f"unexpected request type {req.type:#x}")

    async def count(self) -> int:
        return len(self.flows)

    async def flush(self) -> None:
        self.flows.clear()
        self.exps.clear()  # each went with its master

    async def dump_chunks(self):  # type: ignore[no-untyped-def]
        yield list(self.flows.values())

    async def dump_expect(self) -> list[Expectation]:
        return [e._replace(zone=None) for e in self.exps.values()]

    async def flush_expect(self) -> None:
        self.exps.clear()


def _enoent() -> NetlinkError:
    return NetlinkError(errno.ENOENT)


async def test_commit_order_masters_related_expectations() -> None:
    ext = ExternalCache()
    master = ftp_master(40000)
    data = tcp(5000, master=master.orig, status=SR_AS | 1)
    # arrival order puts the related flow and the expectation first
    ext.apply([msg(MsgType.EXP_NEW, ftp_expect(master)), msg(MsgType.CT_NEW, data)])
    ext.apply([msg(MsgType.CT_NEW, master), msg(MsgType.CT_NEW, tcp(1))])
    kernel = FakeConntrack()
    result = await commit(ext, kernel)  # type: ignore[arg-type]
    assert kernel.log == [
        ("create", 40000),
        ("create", 1),
        ("create", 5000),
        ("create-expect", 30000),
    ]
    assert (result.flows, result.related, result.expects) == (3, 1, 1)
    assert result.flows_failed == result.expects_failed == 0 and result.errors == {}
    assert ext.flow_count() == 3 and ext.expect_count() == 1  # commit does not empty it
    assert set(result.as_dict()) == {
        "flows",
        "flows_failed",
        "related",
        "expects",
        "expects_failed",
        "seconds",
        "errors",
    }
    committed = kernel.flows[(master.orig, 0)]
    assert committed.timeout == 120 and committed.helper == "ftp"


async def test_commit_what() -> None:
    ext = ExternalCache()
    master = ftp_master()
    ext.apply([msg(MsgType.CT_NEW, master), msg(MsgType.EXP_NEW, ftp_expect(master))])
    kernel = FakeConntrack()
    only_exp = await commit(ext, kernel, what="expect")  # type: ignore[arg-type]
    assert only_exp.expects_failed == 1 and only_exp.errors == {"ENOENT": 1}  # no master yet
    only_ct = await commit(ext, kernel, what="ct")  # type: ignore[arg-type]
    assert (only_ct.flows, only_ct.expects) == (1, 0)
    again = await commit(ext, kernel, what="expect")  # type: ignore[arg-type]
    assert again.expects == 1
    with pytest.raises(ValueError):
        await commit(ext, kernel, what="internal")  # type: ignore[arg-type]


async def test_commit_clash_is_deleted_and_created_once() -> None:
    ext = ExternalCache()
    ext.apply([msg(MsgType.CT_NEW, tcp(n, mark=2)) for n in (1, 2, 3)])
    kernel = FakeConntrack()
    stale = tcp(2, mark=1)
    kernel.flows[(stale.orig, 0)] = stale
    result = await commit(ext, kernel)  # type: ignore[arg-type]
    assert result.flows == 3 and result.flows_failed == 0 and result.errors == {}
    assert kernel.flows[(stale.orig, 0)].mark == 2
    assert kernel.log[-2:] == [("delete", 2), ("create", 2)]


async def test_commit_counts_failures_by_errno() -> None:
    ext = ExternalCache()
    orphan = tcp(7, master=Tuple(A, B, IPPROTO_TCP, 1, 21))
    ext.apply([msg(MsgType.CT_NEW, orphan), msg(MsgType.CT_NEW, tcp(1))])
    ext.apply([msg(MsgType.EXP_NEW, ftp_expect(tcp(1)))])  # master has no helper
    result = await commit(ext, FakeConntrack())  # type: ignore[arg-type]
    assert isinstance(result, CommitResult)
    assert (result.flows, result.flows_failed, result.expects_failed) == (1, 1, 1)
    assert result.errors == {"ENOENT": 1, "EOPNOTSUPP": 1}


async def test_commit_large_batch_is_few_calls() -> None:
    ext = ExternalCache()
    ext.apply([msg(MsgType.CT_NEW, tcp(n)) for n in range(1, 10001)])
    kernel = FakeConntrack()
    result = await commit(ext, kernel)  # type: ignore[arg-type]
    assert result.flows == 10000
    assert kernel.calls <= 5


async def test_flush_kernel_selective_and_all() -> None:
    kernel = FakeConntrack()
    for n in (1, 2, 3):
        kernel.flows[(tcp(n).orig, 0)] = tcp(n)
    master = ftp_master()
    kernel.flows[(master.orig, 0)] = master
    kernel.exps[(ftp_expect(master).tuple, 0)] = ftp_expect(master)
    got = await flush_kernel(
        kernel,  # type: ignore[arg-type]
        lambda f: f.orig.sport in (1, 2),
        expectations=False,
    )
    assert got == (2, 0)
    assert sorted(k[0].sport or 0 for k in kernel.flows) == [3, 40000]
    assert len(kernel.exps) == 1
    got = await flush_kernel(kernel, None, expectations=True)  # type: ignore[arg-type]
    assert got == (2, 0)  # the master's expectation went with it
    assert not kernel.flows and not kernel.exps


# -- inject --------------------------------------------------------------------------------
async def test_inject_new_upd_del() -> None:
    kernel = FakeConntrack()
    inj = Injector(kernel)  # type: ignore[arg-type]
    await inj.apply([msg(MsgType.CT_NEW, tcp(1)), msg(MsgType.CT_NEW, tcp(2))])
    assert len(kernel.flows) == 2
    pi = kernel.flows[(tcp(1).orig, 0)].protoinfo
    assert isinstance(pi, TcpInfo) and pi.flags_orig == TcpFlags(8, 8)
    await inj.apply(
        [
            msg(MsgType.CT_UPD, tcp(1, mark=4)),
            msg(MsgType.CT_UPD, tcp(3)),  # unknown: created
            msg(MsgType.CT_DEL, tcp(2)),
            msg(MsgType.CT_DEL, tcp(9)),  # unknown: ignored
        ]
    )
    assert sorted(k[0].sport or 0 for k in kernel.flows) == [1, 3]
    assert kernel.flows[(tcp(1).orig, 0)].mark == 4
    st = inj.stats_dict()
    assert st["created"] == 3 and st["update_not_found"] == 1 and st["updated"] == 1
    assert st["deleted"] == 1 and st["delete_not_found"] == 1
    assert st["create_failed"] == st["update_failed"] == st["delete_failed"] == 0


async def test_inject_new_clash_and_update_error_recreate() -> None:
    kernel = FakeConntrack()
    kernel.flows[(tcp(1).orig, 0)] = tcp(1, mark=1)
    kernel.flows[(tcp(2).orig, 0)] = tcp(2, mark=1)
    kernel.fail_update = errno.EBUSY
    inj = Injector(kernel, commit_timeout=30)  # type: ignore[arg-type]
    await inj.apply([msg(MsgType.CT_NEW, tcp(1, mark=2)), msg(MsgType.CT_UPD, tcp(2, mark=2))])
    assert kernel.flows[(tcp(1).orig, 0)].mark == 2
    assert kernel.flows[(tcp(2).orig, 0)].mark == 2
    assert kernel.flows[(tcp(2).orig, 0)].timeout == 30
    st = inj.stats_dict()
    assert st["created"] == 1 and st["updated"] == 1 and st["update_failed"] == 0


async def test_inject_coalesces_per_key_last_wins() -> None:
    kernel = FakeConntrack()
    inj = Injector(kernel)  # type: ignore[arg-type]
    await inj.apply(
        [
            msg(MsgType.CT_NEW, tcp(1)),
            msg(MsgType.CT_DEL, tcp(1)),
            msg(MsgType.CT_DEL, tcp(2)),
            msg(MsgType.CT_NEW, tcp(2, mark=9)),
        ]
    )
    assert list(kernel.flows) == [(tcp(2).orig, 0)]
    assert kernel.flows[(tcp(2).orig, 0)].mark == 9
    assert ("create", 1) not in kernel.log


async def test_inject_orders_masters_related_expectations() -> None:
    kernel = FakeConntrack()
    inj = Injector(kernel)  # type: ignore[arg-type]
    master = ftp_master(40000, zone=4)
    data = tcp(5000, master=master.orig, zone=4)
    await inj.apply(
        [
            msg(MsgType.EXP_UPD, ftp_expect(master)),
            msg(MsgType.CT_NEW, data),
            msg(MsgType.CT_NEW, master),
        ]
    )
    assert [op for op, _ in kernel.log] == ["create", "create", "create-expect"]
    assert kernel.log[0] == ("create", 40000)
    [(key, _)] = kernel.exps.items()
    assert key[1] == 4  # the zone came from the master
    assert inj.stats_dict()["expect_created"] == 1
    await inj.apply([msg(MsgType.EXP_DEL, ftp_expect(master))])
    assert not kernel.exps and inj.stats_dict()["expect_deleted"] == 1


# -- flows that arrive undecoded ------------------------------------------------------------
def _lazy_mix() -> list[Flow]:
    """Flows of every kind the lazy path takes, and some it leaves to the decoded path."""
    udp = Flow(Tuple(A, C, IPPROTO_UDP, 5353, 53), status=SR_AS, timeout=30)
    v6 = Flow(Tuple(A6, B6, IPPROTO_TCP, 4000, 443), status=SR_AS, timeout=60, mark=9,
              protoinfo=TcpInfo(state=3))  # fmt: skip
    return [
        *(tcp(i, mark=i % 3) for i in range(1, 7)),  # three rests, one layout
        *(tcp(i, status=SR_AS | Status.CONFIRMED) for i in range(7, 9)),
        *(udp._replace(orig=udp.orig._replace(sport=p)) for p in (5000, 5001)),
        *(v6._replace(orig=v6.orig._replace(sport=p)) for p in (4000, 4001)),
        tcp(20, orig=Tuple(A, B, IPPROTO_TCP, 20, 80), reply=Tuple(B, C, IPPROTO_TCP, 80, 9)),
        tcp(21, zone=4),
        tcp(22, zone=4),
        tcp(23, timeout=None),
        tcp(24, timeout=None),
    ]


def _sent(kind: MsgType, flows: Sequence[Flow]) -> list[Message]:
    """``flows`` in one datagram each, decoded as a receiver decodes them."""
    return [over_the_wire(kind, f) for f in flows]


@pytest.mark.parametrize(
    ("shared_rests", "timeout", "limit"), [(4096, None, 1000), (2, None, 1000), (4096, 60.0, 12)]
)
def test_flows_kept_undecoded_are_stored_as_decoded_ones(
    shared_rests: int, timeout: float | None, limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flow of a plain layout reaches the external cache undecoded (a LazyFlow) and is
    stored from its split values; the same messages decoded first give byte-identical
    records in the same order, listings, commit payloads and counters, through creates,
    updates, deletes and a flush, also once the table of shared rests is full (those flows
    are decoded), and with ALARM's timeout (an update moves its entry last) and a table
    limit that refuses some."""
    monkeypatch.setattr(external, "_SHARED_RESTS", shared_rests)
    monkeypatch.setattr(wire_attrs, "_CT_LAYOUTS", fresh_wire_layouts())
    lazy, eager = (ExternalCache(clock=Clock(), timeout=timeout, limit=limit) for _ in range(2))
    flows = _lazy_mix()
    rounds = [
        _sent(MsgType.CT_NEW, flows),
        _sent(MsgType.CT_UPD, [f._replace(timeout=(f.timeout or 0) + 7) for f in flows]),
        _sent(MsgType.CT_UPD, [tcp(i, mark=5) for i in range(30, 33)]),  # unknown: created
        _sent(MsgType.CT_UPD, flows[::-3]),  # some, backwards: moved last with a timeout
        _sent(MsgType.CT_DEL, [*flows[::2], tcp(40)]),  # one unknown
    ]
    assert sum(type(m.body) is not Flow for r in rounds for m in r) > 20  # most are lazy
    for n, msgs in enumerate(rounds * 2):
        lazy.apply(msgs)
        eager.apply([m._replace(body=m.obj) for m in msgs])
        assert list(lazy._flows.items()) == list(eager._flows.items())
        assert list(lazy.flows()) == list(eager.flows())
        assert list(lazy.flow_creates(0.0)) == list(eager.flow_creates(0.0))
        assert lazy.stats_dict() == eager.stats_dict()
        if n == len(rounds) - 1:
            lazy.flush("ct")
            eager.flush("ct")
    assert lazy.flow_count() > 0
