"""Writing the peer's state into the kernel: prepared creates, commit, selective flush.

A synced entry becomes a ctnetlink create in two steps.  :func:`prepare_flow` and
:func:`prepare_expect` build everything except the timeout as soon as a message arrives
(the external cache keeps those bytes); at commit time only the estimated ``CTA_TIMEOUT``
is appended and the requests go out many per ``sendmsg`` (DESIGN.md: "commit replays
prepared messages").  The inject path (:mod:`nfsyncd.inject`) uses the same preparation.

What a create looks like follows conntrackd (reference/conntrackd.md §2.5): the status
without the bits the kernel owns (EXPECTED among them) and with CONFIRMED, the reply tuple
as the inverse of the original with NAT requested through ``CTA_NAT_*``, and TCP made
window-liberal in both directions (``IP_CT_TCP_FLAG_BE_LIBERAL``) unless the receiver
tracks windows: the backup never saw the window, so strict tracking would drop the
takeover's first packets.
"""

from __future__ import annotations

import errno
import math
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Final

from ._record import unpack_key
from .model import IPPROTO_TCP, Expectation, Flow, TcpFlags, TcpInfo, Tuple
from .netlink import ctnetlink as ct
from .netlink._attrs import NLA_F_NESTED, attr
from .netlink._socket import NLM_F_CREATE, NLM_F_EXCL, NetlinkError, Request

if TYPE_CHECKING:
    from .external import ExternalCache
    from .kernel import Conntrack

__all__ = [
    "ADDED_FLAGS_ORIG",
    "ADDED_FLAGS_REPLY",
    "ADDED_PROTOINFO",
    "CHUNK",
    "CREATE_FLAGS",
    "DEFAULT_TIMEOUT",
    "CommitResult",
    "commit",
    "delete_expect_request",
    "delete_flow_request",
    "errno_name",
    "estimate_timeout",
    "expect_timeout_attr",
    "flow_timeout_attr",
    "flush_kernel",
    "liberal",
    "prepare_expect",
    "prepare_flow",
    "prepare_flow_rest",
    "prepare_tuples",
]

#: the timeout of an entry whose own is unknown or used up (conntrackd's fallback)
DEFAULT_TIMEOUT: Final = 60
#: ``IP_CT_TCP_FLAG_BE_LIBERAL``
TCP_FLAG_BE_LIBERAL: Final = 0x08
#: what :func:`liberal` had to add (so a cache can show the flow as it was received)
ADDED_PROTOINFO: Final = 0x1
ADDED_FLAGS_ORIG: Final = 0x2
ADDED_FLAGS_REPLY: Final = 0x4

CREATE_FLAGS: Final = NLM_F_CREATE | NLM_F_EXCL
#: operations the injector writes per write_many call: bounds the memory of a big bulk
CHUNK: Final = 4096

_LIBERAL_FLAGS: Final = TcpFlags(TCP_FLAG_BE_LIBERAL, TCP_FLAG_BE_LIBERAL)
_LIBERAL_INFO: Final = TcpInfo(flags_orig=_LIBERAL_FLAGS, flags_reply=_LIBERAL_FLAGS)
_NFGEN: Final = {4: ct.nfgenmsg(2), 16: ct.nfgenmsg(10)}  # AF_INET, AF_INET6
_ATTR_HDR: Final = struct.Struct("=HH")
_new: Final = tuple.__new__


# -- preparing creates --------------------------------------------------------------------
def liberal(flow: Flow) -> tuple[Flow, int]:
    """``flow`` with BE_LIBERAL in both TCP directions, and which ``ADDED_*`` parts were
    absent before (a decoded sync message never carries TCP flags)."""
    if flow.orig.proto != IPPROTO_TCP:
        return flow, 0
    pi = flow.protoinfo
    if pi is None:
        return flow._replace(protoinfo=_LIBERAL_INFO), ADDED_PROTOINFO
    if type(pi) is not TcpInfo:
        return flow, 0
    state, wso, wsr, fo, fr = pi
    added = 0
    if fo is None:
        fo, added = _LIBERAL_FLAGS, ADDED_FLAGS_ORIG
    else:
        fo = TcpFlags(fo.flags | TCP_FLAG_BE_LIBERAL, fo.mask | TCP_FLAG_BE_LIBERAL)
    if fr is None:
        fr, added = _LIBERAL_FLAGS, added | ADDED_FLAGS_REPLY
    else:
        fr = TcpFlags(fr.flags | TCP_FLAG_BE_LIBERAL, fr.mask | TCP_FLAG_BE_LIBERAL)
    info = _new(TcpInfo, (state, wso, wsr, fo, fr))
    return _new(Flow, (*flow[:8], info, *flow[9:])), added


def prepare_flow(flow: Flow, *, tcp_window_tracking: bool = False) -> tuple[bytes, int]:
    """The payload of the ctnetlink create of ``flow``, without ``CTA_TIMEOUT``, and the
    ``ADDED_*`` bits of :func:`liberal`.  Raises ValueError (or struct.error) for a flow
    the kernel could not be asked to create."""
    rest, added = prepare_flow_rest(flow, tcp_window_tracking=tcp_window_tracking)
    return prepare_tuples(flow.orig) + rest, added


def prepare_tuples(orig: Tuple) -> bytes:
    """The start of a create: nfgenmsg, the original tuple, its inverse as the reply
    tuple (NAT is asked for separately, see :func:`nfsyncd.netlink.ctnetlink.nat_attrs`)."""
    header = _NFGEN.get(len(orig.src))
    if header is None:
        raise ValueError(f"CTA_TUPLE_ORIG: addresses of {len(orig.src)} bytes")
    encode = ct.TUPLE.encode
    return (
        header
        + attr(ct.CTA_TUPLE_ORIG | NLA_F_NESTED, encode(orig))
        + attr(ct.CTA_TUPLE_REPLY | NLA_F_NESTED, encode(orig.inverted()))
    )


def prepare_flow_rest(flow: Flow, *, tcp_window_tracking: bool = False) -> tuple[bytes, int]:
    """The rest of the create after :func:`prepare_tuples`, without ``CTA_TIMEOUT``: the
    status the kernel accepts, TCP made liberal, NAT, mark, zone, helper, master..."""
    added = 0
    if not tcp_window_tracking:
        flow, added = liberal(flow)
    rest = _new(Flow, (None, None, ct.create_status(flow.status), None, *flow[4:]))
    reply, orig = flow.reply, flow.orig
    if reply is None or (
        reply.src == orig.dst
        and reply.dst == orig.src
        and reply.sport == orig.dport
        and reply.dport == orig.sport
    ):
        return ct.FLOW.encode(rest), added  # no NAT: the common case, quickly
    return ct.FLOW.encode(rest) + ct.nat_attrs(flow), added


def prepare_expect(exp: Expectation) -> bytes:
    """The payload of the create of ``exp`` without ``CTA_EXPECT_TIMEOUT`` (its zone must
    already be the master's: the kernel finds the master by tuple and zone)."""
    header = _NFGEN.get(len(exp.tuple.src))
    if header is None:
        raise ValueError(f"CTA_EXPECT_TUPLE: addresses of {len(exp.tuple.src)} bytes")
    return header + ct.EXPECT.encode(exp._replace(timeout=None, id=None))


def _u32_attr_cache(atype: int) -> Callable[[int], bytes]:
    cache: dict[int, bytes] = {}
    hdr = _ATTR_HDR.pack(8, atype)

    def make(seconds: int) -> bytes:
        out = cache.get(seconds)
        if out is None:
            if len(cache) > 4096:
                cache.clear()
            out = cache[seconds] = hdr + seconds.to_bytes(4, "big")
        return out

    return make


#: ``CTA_TIMEOUT`` / ``CTA_EXPECT_TIMEOUT`` attributes, memoised (a commit uses few values)
flow_timeout_attr: Final = _u32_attr_cache(ct.CTA_TIMEOUT)
expect_timeout_attr: Final = _u32_attr_cache(ct.CTA_EXPECT_TIMEOUT)


def estimate_timeout(
    received: int | None, arrival: float, now: float, commit_timeout: float | None
) -> int:
    """The timeout to commit an entry with: ``commit_timeout`` when set, else what the
    peer sent minus the time since it arrived; 60 when that is used up, unknown, or the
    clock went backwards.  (conntrackd sends no timeout at all when the estimate is
    exactly 0, which the kernel rejects; we never do.)"""
    if commit_timeout is not None:
        return max(1, math.ceil(commit_timeout))
    if received is None or now < arrival:
        return DEFAULT_TIMEOUT
    remaining = received - (now - arrival)
    if remaining <= 0:
        return DEFAULT_TIMEOUT
    return min(math.ceil(remaining), 0xFFFFFFFF)


def delete_flow_request(orig: Tuple, zone: int | None) -> Request:
    return Request(ct.CT_DELETE, 0, ct.flow_key(orig, zone or None))


def delete_expect_request(exp: Expectation) -> Request:
    return Request(ct.EXP_DELETE, 0, ct.expect_key(exp))


def errno_name(code: int) -> str:
    """``EOPNOTSUPP`` rather than Linux's first name for 95, ``ENOTSUP``: it is the one
    ctnetlink documents and conntrack prints."""
    return "EOPNOTSUPP" if code == errno.EOPNOTSUPP else errno.errorcode.get(code, str(code))


# -- commit -------------------------------------------------------------------------------
@dataclass
class CommitResult:
    """What a commit did.  ``flows`` counts every flow created (masters and related),
    ``related`` the related ones among them; ``errors`` the final failures by errno name
    (an EEXIST clash that the retry resolved is not an error)."""

    flows: int = 0
    flows_failed: int = 0
    related: int = 0
    expects: int = 0
    expects_failed: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def _fail(self, err: NetlinkError) -> None:
        name = errno_name(err.errno or 0)
        self.errors[name] = self.errors.get(name, 0) + 1


async def _create_flows(
    ext: ExternalCache,
    conntrack: Conntrack,
    now: float,
    creates: Iterable[tuple[bytes, bytes]],
    result: CommitResult,
    related: bool,
) -> None:
    """Create ``creates`` (key, payload) as one streamed batch; clashes (EEXIST) are
    deleted in one batch and created once more from the cache."""
    keys: list[bytes] = []
    keep = keys.append

    def requests() -> Iterator[Request]:
        for key, payload in creates:
            keep(key)
            yield Request(ct.CT_NEW, CREATE_FLAGS, payload)

    outcomes = await conntrack.write_many(requests())
    clashes: list[bytes] = []
    done = 0
    for key, err in zip(keys, outcomes, strict=True):
        if err is None:
            done += 1
        elif err.errno == errno.EEXIST:
            clashes.append(key)
        else:
            result.flows_failed += 1
            result._fail(err)
    if clashes:
        # ENOENT: it went away meanwhile, fine
        await conntrack.write_many(delete_flow_request(*unpack_key(key)) for key in clashes)
        retries = ext.flow_creates(now, clashes)
        for err in await conntrack.write_many(
            Request(ct.CT_NEW, CREATE_FLAGS, payload) for _, _, payload in retries
        ):
            if err is None:
                done += 1
            else:
                result.flows_failed += 1
                result._fail(err)
    result.flows += done
    if related:
        result.related += done


async def commit(
    ext: ExternalCache,
    conntrack: Conntrack,
    *,
    what: str = "all",
    now: float | None = None,
) -> CommitResult:
    """Write the external cache into the kernel: masters, then related flows (their
    masters must exist), then expectations (their masters must exist and carry a helper).

    ``what`` is "all", "ct" or "expect"; ``now`` is on the cache's clock (default: its
    current time).  The cache is left as it is (conntrackd's ``-c`` does not empty it).
    """
    if what not in ("all", "ct", "expect"):
        raise ValueError(f"commit: what must be 'all', 'ct' or 'expect', not {what!r}")
    started = time.monotonic()
    if now is None:
        now = ext.clock()
    result = CommitResult()
    if what in ("all", "ct"):
        related: list[bytes] = []
        later = related.append

        def masters() -> Iterator[tuple[bytes, bytes]]:
            for key, is_related, payload in ext.flow_creates(now):
                if is_related:
                    later(key)
                else:
                    yield key, payload

        await _create_flows(ext, conntrack, now, masters(), result, False)
        if related:
            creates = ((key, payload) for key, _, payload in ext.flow_creates(now, related))
            await _create_flows(ext, conntrack, now, creates, result, True)
    if what in ("all", "expect"):
        exps = [
            (exp, Request(ct.EXP_NEW, CREATE_FLAGS, payload))
            for exp, payload in ext.expect_creates(now)
        ]
        outcomes = await conntrack.write_many([req for _, req in exps])
        clashes = [item for item, err in zip(exps, outcomes, strict=True)
                   if err is not None and err.errno == errno.EEXIST]  # fmt: skip
        for err in outcomes:
            if err is None:
                result.expects += 1
            elif err.errno != errno.EEXIST:
                result.expects_failed += 1
                result._fail(err)
        if clashes:
            await conntrack.write_many([delete_expect_request(e) for e, _ in clashes])
            for err in await conntrack.write_many([req for _, req in clashes]):
                if err is None:
                    result.expects += 1
                else:
                    result.expects_failed += 1
                    result._fail(err)
    result.seconds = time.monotonic() - started
    return result


# -- selective flush ------------------------------------------------------------------------
def _count_deleted(outcomes: Sequence[NetlinkError | None]) -> int:
    """Successful deletes; ENOENT (gone meanwhile) is no error, others are not counted."""
    return sum(1 for err in outcomes if err is None)


async def flush_kernel(
    conntrack: Conntrack,
    accepts: Callable[[Flow], bool] | None,
    *,
    expectations: bool,
    flows: bool = True,
) -> tuple[int, int]:
    """Delete from the kernel every flow ``accepts`` takes (``None``: every flow, with the
    kernel's own flush), then every expectation if asked: conntrackd's ``-F`` and the
    purge timer of ``-t`` (``flows=False``: expectations only, ``-F expect``).  Returns
    (flows deleted, expectations deleted); with the real flush the first is the table size
    just before it.  Deletions go through ``conntrack``, whose port id the daemon registers
    as FLUSH so they are not synced.
    """
    deleted = 0
    if not flows:
        pass  # -F expect
    elif accepts is None:
        deleted = await conntrack.count()
        await conntrack.flush()
    else:
        # the dump must end before the deletes: both use the same socket
        doomed: list[Flow] = []
        async for chunk in conntrack.dump_chunks():
            doomed.extend(f for f in chunk if accepts(f))
        requests = (delete_flow_request(f.orig, f.zone) for f in doomed)
        deleted = _count_deleted(await conntrack.write_many(requests))
    exps = 0
    if expectations:
        # After the flows (deleting a master took its expectations with it), and with the
        # kernel's flush: a dump reports no zone, so a zoned one could not be named.
        exps = len(await conntrack.dump_expect())
        await conntrack.flush_expect()
    return deleted, exps
