"""The two-gateway sync lab: fw1 and fw2 joined by 1-4 dedicated sync links.

Sync tests, interop tests and the sync benchmark all need the same picture: two firewalls
whose daemons replicate conntrack state over dedicated links, a way to make real and
synthetic flows on one side, and a way to look at the other side's kernel after a commit.
This module builds it from throwaway namespaces and owns its cleanup.

Topology (every address in 198.18.0.0/15 or fd00:198:18::/48)::

    srv1 eth0 198.19.0.2 --- tr0 198.19.0.1  fw1  sync<i> 198.18.(1+i).1 ---+
                                                                            | link i
    srv2 eth0 198.19.0.2 --- tr0 198.19.0.1  fw2  sync<i> 198.18.(1+i).2 ---+

Both traffic sides use the *same* addresses, so a flow made on fw1 and committed on fw2 names
addresses fw2 owns too (as after a VRRP takeover). IPv6: sync link i carries
fd00:198:18:<1+i>::1/64 and ::2; the traffic side fd00:198:18:ff::1 and ::2 (the ULA range
the netns module allows, rather than fd00:198:19::).

Each firewall gets a table ``inet lab`` that makes its namespace track connections
(``ct state new counter`` in input and output) and, by default, does not track the sync
links' own packets, so fw2's kernel table holds only what the tests put there.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

import trio

from ..kernel import Conntrack
from ..model import IPPROTO_ICMP, IPPROTO_ICMPV6, Flow, TcpInfo, Tuple, format_addr
from ..netlink import ctnetlink as ct
from .failover_traffic import echo_request
from .netns import Netns, NetnsLab, veth_pair

__all__ = [
    "FW",
    "FlowKey",
    "LabLink",
    "PeerLink",
    "SyncDaemon",
    "SyncLab",
    "Transport",
    "flow_key",
    "json_flow_key",
    "lab_flows",
    "multicast_group",
    "proc_cpu_seconds",
    "proc_rss",
    "wait_for",
]

T = TypeVar("T")
FW = Literal["fw1", "fw2"]
Transport = Literal["udp", "multicast", "tcp"]

MAX_LINKS = 4
#: Address of the firewall side and of the server side of each traffic link.
TRAFFIC_FW = "198.19.0.1"
TRAFFIC_SRV = "198.19.0.2"
TRAFFIC_FW6 = "fd00:198:18:ff::1"
TRAFFIC_SRV6 = "fd00:198:18:ff::2"
#: Synthetic flows come from here (never a sync link address, which the daemons ignore).
SYNTH_NET = ipaddress.ip_network("198.19.128.0/17")
SYNTH_NET6_PREFIX = "fd00:198:18:fe"
SYNTH_DPORT = 80


def multicast_group(index: int, ipv6: bool = False) -> str:
    """The multicast group of sync link ``index``: one group per link, as the manual advises.

    Admin-scoped groups; the packets never leave the lab's veth pairs.
    """
    return f"ff15::198:18:{1 + index}" if ipv6 else f"239.198.18.{1 + index}"


class FlowKey(NamedTuple):
    """What makes a flow the same flow in every view (kernel, conntrackd text, nfsyncd JSON).

    Addresses are canonical text (``ipaddress`` form); a missing zone is zone 0.
    """

    proto: int
    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None
    zone: int = 0

    def describe(self) -> str:
        parts = [f"proto={self.proto}", f"src={self.src}", f"dst={self.dst}"]
        if self.sport is not None:
            parts.append(f"sport={self.sport} dport={self.dport}")
        if self.icmp_type is not None:
            parts.append(f"type={self.icmp_type} code={self.icmp_code} id={self.icmp_id}")
        if self.zone:
            parts.append(f"zone={self.zone}")
        return " ".join(parts)


def _canon(addr: str) -> str:
    return str(ipaddress.ip_address(addr))


def flow_key(flow: Flow) -> FlowKey:
    """The key of a :class:`~nfsyncd.model.Flow` (its original tuple and zone)."""
    t = flow.orig
    return FlowKey(
        t.proto,
        format_addr(t.src),
        format_addr(t.dst),
        t.sport,
        t.dport,
        t.icmp_type,
        t.icmp_code,
        t.icmp_id,
        flow.zone or 0,
    )


def json_flow_key(item: dict[str, Any]) -> FlowKey:
    """The key of a flow as nfsyncd renders it in JSON (``nfsyncd.render.flow_json``)."""
    orig = item["orig"]
    return FlowKey(
        int(item["protonum"]),
        _canon(orig["src"]),
        _canon(orig["dst"]),
        orig.get("sport"),
        orig.get("dport"),
        orig.get("type"),
        orig.get("code"),
        orig.get("id"),
        int(item.get("zone") or 0),
    )


def lab_flows(
    n: int,
    *,
    proto: int = 6,
    base: int = 0,
    v6: bool = False,
    mark: int | None = None,
    timeout: int = 600,
) -> Iterator[Flow]:
    """``n`` distinct established flows from the synthetic range to the lab's server.

    TCP (``proto=6``) or UDP (17), ESTABLISHED/ASSURED; flow ``i`` of one call with the same
    ``base`` and family is always the same flow, so a caller can update or delete them later.
    """
    dst = socket.inet_pton(
        socket.AF_INET6 if v6 else socket.AF_INET, TRAFFIC_SRV6 if v6 else TRAFFIC_SRV
    )
    hosts = SYNTH_NET.num_addresses
    first = int(SYNTH_NET.network_address)
    for i in range(base, base + n):
        if v6:
            src = socket.inet_pton(
                socket.AF_INET6, f"{SYNTH_NET6_PREFIX}::{i >> 16:x}:{i & 0xFFFF:x}"
            )
            sport = 1024 + (i & 0x7FFF)
        else:
            src = (first + i % hosts).to_bytes(4, "big")
            sport = 1024 + i // hosts
        yield Flow(
            orig=Tuple(src, dst, proto, sport, SYNTH_DPORT),
            status=0x0E,  # SEEN_REPLY|ASSURED|CONFIRMED
            timeout=timeout,
            mark=mark,
            protoinfo=TcpInfo(state=3) if proto == 6 else None,
        )


@dataclass(frozen=True)
class LabLink:
    """Sync link ``index``: the same interface name at both ends."""

    index: int
    ifname: str
    addr1: str
    addr2: str
    addr1_v6: str | None
    addr2_v6: str | None

    def local(self, fw: FW, ipv6: bool = False) -> str:
        a, b = (self.addr1_v6, self.addr2_v6) if ipv6 else (self.addr1, self.addr2)
        if a is None or b is None:
            raise ValueError("this lab was built without IPv6 on the sync links")
        return a if fw == "fw1" else b

    def peer(self, fw: FW, ipv6: bool = False) -> str:
        return self.local("fw2" if fw == "fw1" else "fw1", ipv6)


@dataclass(frozen=True)
class PeerLink:
    """One link as a daemon config names it: ``peer`` is the peer address or the group."""

    interface: str
    local: str
    peer: str
    port: int = 3780
    default: bool = False

    @property
    def ipv6(self) -> bool:
        return ":" in self.local


class SyncDaemon(Protocol):
    """What tests and benchmarks need from a sync daemon, whichever one it is.

    ``kind`` is ``"conntrackd"`` or ``"nfsyncd"``; keys are :class:`FlowKey` sets; counts
    are cheap (no dump); ``commit`` blocks until done and returns the seconds it took.
    """

    kind: str

    def external_keys(self) -> set[FlowKey]: ...
    def internal_keys(self) -> set[FlowKey]: ...
    def external_count(self) -> int: ...
    def external_counters(self) -> dict[str, int]: ...
    def internal_count(self) -> int: ...
    def commit(self) -> float: ...
    def cpu_seconds(self) -> float: ...
    def rss(self) -> int: ...
    def log_text(self) -> str: ...
    def connected(self) -> bool: ...
    def wait_connected(self, timeout: float = 10.0) -> None: ...
    def stop(self, grace: float = 5.0) -> int | None: ...
    def close(self) -> None: ...


_CLK_TCK: int = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int, *, children: bool = True) -> float:
    """CPU time of ``pid``'s threads (ns resolution, from /proc/PID/task/*/schedstat), plus
    its reaped children's utime+stime (clock ticks) when ``children``.

    utime+stime alone tick at 10 ms, too coarse for a 1000-flow burst.
    """
    ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that just exited
            continue
    seconds = ns / 1e9
    if children:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is field 3 (state); cutime and cstime are fields 16 and 17
        seconds += (int(fields[13]) + int(fields[14])) / _CLK_TCK
    return seconds


def proc_rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ProcessLookupError(f"no VmRSS for pid {pid} (exited?)")


def wait_for(
    probe: Callable[[], T | None], *, timeout: float, interval: float = 0.02, what: str = ""
) -> T:
    """Poll ``probe`` until it returns something truthy; TimeoutError after ``timeout`` s.

    (tests/_support.wait_until does the same but fails a pytest test; this one is for code
    that also runs outside pytest, like the benchmarks.)
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or probe!r}")
        time.sleep(interval)


@dataclass
class _Side:
    fw: Netns
    srv: Netns
    listeners: dict[tuple[int, int], socket.socket] = field(default_factory=dict)


class SyncLab(NetnsLab):
    """fw1 and fw2 joined by ``links`` sync links, each with a server namespace behind it.

    Use as a context manager (or call :meth:`close`): every namespace, socket and process
    goes, even when a test fails half-way through building it.
    """

    def __init__(
        self, links: int = 1, *, ipv6: bool = True, notrack_sync: bool = True, prefix: str = "sl"
    ) -> None:
        if not 1 <= links <= MAX_LINKS:
            raise ValueError(f"1 to {MAX_LINKS} sync links, got {links}")
        self.ipv6 = ipv6
        super().__init__()
        self.links: list[LabLink] = []
        self._sockets: list[socket.socket] = []
        self._icmp_ids = itertools.count(0x5100)
        try:
            self.fw1 = self._ns(f"{prefix}f1")
            self.fw2 = self._ns(f"{prefix}f2")
            self.srv1 = self._ns(f"{prefix}s1")
            self.srv2 = self._ns(f"{prefix}s2")
            self._sides = {"fw1": _Side(self.fw1, self.srv1), "fw2": _Side(self.fw2, self.srv2)}
            for i in range(links):
                self._add_link(i)
            for side in self._sides.values():
                self._add_traffic_side(side)
            for side in self._sides.values():
                side.fw.nft(self._lab_ruleset(notrack_sync))
            self.wait_links_running()
        except BaseException:
            self.close()
            raise

    # -- building -----------------------------------------------------------------------

    def _add_link(self, i: int) -> None:
        name = f"sync{i}"
        a1, a2 = f"198.18.{1 + i}.1", f"198.18.{1 + i}.2"
        veth_pair(self.fw1, self.fw2, f"{a1}/24", f"{a2}/24", name, name)
        v1 = v2 = None
        if self.ipv6:
            v1, v2 = f"fd00:198:18:{1 + i}::1", f"fd00:198:18:{1 + i}::2"
            self.fw1.ip("address", "add", f"{v1}/64", "dev", name, "nodad")
            self.fw2.ip("address", "add", f"{v2}/64", "dev", name, "nodad")
        self.links.append(LabLink(i, name, a1, a2, v1, v2))

    def _add_traffic_side(self, side: _Side) -> None:
        veth_pair(side.fw, side.srv, f"{TRAFFIC_FW}/24", f"{TRAFFIC_SRV}/24", "tr0", "eth0")
        if self.ipv6:
            side.fw.ip("address", "add", f"{TRAFFIC_FW6}/64", "dev", "tr0", "nodad")
            side.srv.ip("address", "add", f"{TRAFFIC_SRV6}/64", "dev", "eth0", "nodad")
        # replies to synthetic sources (should a test ever send some) go back to fw
        side.srv.ip("route", "add", str(SYNTH_NET), "via", TRAFFIC_FW)

    def _sync_ifset(self) -> str:
        return "{ " + ", ".join(f'"{link.ifname}"' for link in self.links) + " }"

    def _lab_ruleset(self, notrack_sync: bool) -> str:
        ifs = self._sync_ifset()
        raw = (
            "  chain raw_pre { type filter hook prerouting priority raw; "
            f"iifname {ifs} notrack; }}\n"
            "  chain raw_out { type filter hook output priority raw; "
            f"oifname {ifs} notrack; }}\n"
            if notrack_sync
            else ""
        )
        return (
            "table inet lab {\n"
            f"{raw}"
            "  chain input { type filter hook input priority filter; ct state new counter; }\n"
            "  chain output { type filter hook output priority filter; ct state new counter; }\n"
            "}\n"
        )

    # -- access -------------------------------------------------------------------------

    def ns(self, fw: FW) -> Netns:
        return self._sides[fw].fw

    def srv(self, fw: FW) -> Netns:
        return self._sides[fw].srv

    def peer_links(
        self,
        fw: FW,
        transport: Transport = "udp",
        *,
        ipv6: bool = False,
        port: int = 3780,
        count: int | None = None,
    ) -> list[PeerLink]:
        """The links as ``fw``'s daemon config names them (link i uses port ``port + i``).

        Distinct ports per link keep multicast receivers (bound to the wildcard address in
        conntrackd 1.4.7) from seeing each other's groups; both harnesses use this scheme,
        so a conntrackd on one side and an nfsyncd on the other agree.
        """
        out = []
        for link in self.links[: count or len(self.links)]:
            peer = (
                multicast_group(link.index, ipv6)
                if transport == "multicast"
                else link.peer(fw, ipv6)
            )
            out.append(
                PeerLink(
                    link.ifname, link.local(fw, ipv6), peer, port + link.index, link.index == 0
                )
            )
        return out

    def sync_addresses(self, ipv6: bool | None = None) -> list[str]:
        """Every address on the sync links (what the daemons' address filters ignore)."""
        out = []
        for link in self.links:
            out += [link.addr1, link.addr2]
            if (ipv6 if ipv6 is not None else self.ipv6) and link.addr1_v6 and link.addr2_v6:
                out += [link.addr1_v6, link.addr2_v6]
        return out

    # -- network conditions -------------------------------------------------------------

    def loss(self, fw: FW, percent: int) -> None:
        """Drop ``percent`` % of the packets arriving on ``fw``'s sync links (0 = none)."""
        if not 0 <= percent <= 100:
            raise ValueError(f"loss is a percentage, got {percent}")
        ns = self.ns(fw)
        if percent == 0:
            ns.run("nft", "delete", "table", "inet", "lossy", check=False)
            return
        ns.nft(
            "table inet lossy\n"
            "delete table inet lossy\n"
            "table inet lossy {\n"
            "  chain input { type filter hook prerouting priority -400; "
            f"iifname {self._sync_ifset()} numgen random mod 100 < {percent} drop; }}\n"
            "}\n"
        )

    def link_down(self, i: int, fw: FW | Literal["both"] = "fw1") -> None:
        """Take sync link ``i`` down at ``fw``'s end; the other end loses carrier."""
        for name in ("fw1", "fw2") if fw == "both" else (fw,):
            self.ns(name).ip("link", "set", self.links[i].ifname, "down")

    def link_up(self, i: int, fw: FW | Literal["both"] = "both") -> None:
        for name in ("fw1", "fw2") if fw == "both" else (fw,):
            self.ns(name).ip("link", "set", self.links[i].ifname, "up")
        if fw == "both":
            self.wait_links_running([i])

    def wait_links_running(
        self, indexes: Iterable[int] | None = None, timeout: float = 10.0
    ) -> None:
        """Wait until sync links have carrier at both ends: a fresh veth settles its carrier
        for up to a second, and a daemon started meanwhile takes it for NO-CARRIER."""
        names = [
            self.links[i].ifname for i in (range(len(self.links)) if indexes is None else indexes)
        ]

        def running() -> bool:
            return all(
                "state UP" in self.ns(fw).run("ip", "-o", "link", "show", name).stdout
                for fw in ("fw1", "fw2")
                for name in names
            )

        wait_for(running, timeout=timeout, interval=0.05, what="the sync links to be RUNNING")

    # -- ctnetlink ------------------------------------------------------------------------

    def run_ct(self, fw: FW, fn: Callable[[Conntrack], Awaitable[T]]) -> T:
        """Run ``fn(conntrack)`` with a Conntrack socket in ``fw``'s namespace; return its value.

        It runs in a thread of its own with its own trio loop, so it works from plain code,
        from inside a trio test, and never moves the caller's thread into the namespace.
        """
        ns = self.ns(fw)
        result: list[T] = []
        error: list[BaseException] = []

        async def main() -> None:
            with ns.entered():
                conntrack = Conntrack()
            with conntrack:
                result.append(await fn(conntrack))

        def thread() -> None:
            try:
                trio.run(main)
            except BaseException as exc:  # handed to the caller's thread
                error.append(exc)

        worker = threading.Thread(target=thread, name=f"lab-ct-{fw}", daemon=True)
        worker.start()
        worker.join()
        if error:
            raise error[0]
        return result[0]

    def create_flows(
        self,
        fw: FW,
        n: int | Sequence[Flow],
        *,
        proto: int = 6,
        base: int = 0,
        v6: bool = False,
        mark: int | None = None,
        timeout: int = 600,
    ) -> list[Flow]:
        """Create ``n`` :func:`lab_flows` (or the flows given) in ``fw``'s kernel, in batches.

        The daemons see them as NEW events from someone else (like conntrack -I). Raises if
        any create fails. Returns the flows.
        """
        flows = (
            list(lab_flows(n, proto=proto, base=base, v6=v6, mark=mark, timeout=timeout))
            if isinstance(n, int)
            else list(n)
        )

        async def create(conntrack: Conntrack) -> list[Any]:
            return await conntrack.create_many(flows)

        self._check("create", self.run_ct(fw, create))
        return flows

    def update_flows(self, fw: FW, flows: Iterable[Flow], *, mark: int) -> None:
        """Set the mark of each flow (one batch of ctnetlink updates): an update storm."""
        requests = [ct.flow_update(f._replace(mark=mark, protoinfo=None)) for f in flows]

        async def update(conntrack: Conntrack) -> list[Any]:
            return await conntrack.write_many(requests)

        self._check("update", self.run_ct(fw, update))

    def delete_flows(self, fw: FW, flows: Iterable[Flow]) -> None:
        """Delete the flows (one batch of ctnetlink deletes)."""
        flows = list(flows)

        async def delete(conntrack: Conntrack) -> list[Any]:
            return await conntrack.delete_many(flows)

        self._check("delete", self.run_ct(fw, delete))

    @staticmethod
    def _check(what: str, errors: list[Any]) -> None:
        failed = [e for e in errors if e is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(errors)} {what}s failed, e.g. {failed[0]}")

    def kernel_flows(self, fw: FW) -> list[Flow]:
        """Dump ``fw``'s conntrack table."""

        async def dump(conntrack: Conntrack) -> list[Flow]:
            return await conntrack.dump()

        return self.run_ct(fw, dump)

    def kernel_keys(self, fw: FW) -> set[FlowKey]:
        return {flow_key(f) for f in self.kernel_flows(fw)}

    def kernel_count(self, fw: FW) -> int:
        async def count(conntrack: Conntrack) -> int:
            return await conntrack.count()

        return self.run_ct(fw, count)

    def flush_kernel(self, fw: FW) -> None:
        async def flush(conntrack: Conntrack) -> None:
            await conntrack.flush()

        self.run_ct(fw, flush)

    # -- real traffic ---------------------------------------------------------------------

    def _listener(self, side: _Side, family: int, port: int) -> None:
        if (family, port) in side.listeners:
            return
        addr = TRAFFIC_SRV if family == socket.AF_INET else TRAFFIC_SRV6
        with side.srv.entered():
            sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))
        sock.listen(128)
        side.listeners[(family, port)] = sock
        self._sockets.append(sock)

    def tcp_flow(self, fw: FW, port: int = 8080, *, v6: bool = False) -> FlowKey:
        """Open a real TCP connection from ``fw`` to its server; it stays ESTABLISHED.

        The server never accepts (the kernel completes the handshake from the backlog); both
        sockets live until :meth:`close`. Returns the flow's key in ``fw``'s table.
        """
        side = self._sides[fw]
        family = socket.AF_INET6 if v6 else socket.AF_INET
        self._listener(side, family, port)
        with side.fw.entered():
            sock = socket.socket(family, socket.SOCK_STREAM)
        self._sockets.append(sock)
        sock.settimeout(5)
        sock.connect((TRAFFIC_SRV6 if v6 else TRAFFIC_SRV, port))
        src, sport = sock.getsockname()[:2]
        dst = TRAFFIC_SRV6 if v6 else TRAFFIC_SRV
        return FlowKey(6, _canon(src), _canon(dst), sport, port)

    def udp_flow(self, fw: FW, port: int = 5353, *, v6: bool = False) -> FlowKey:
        """Send one UDP datagram from ``fw`` to its server (an UNREPLIED UDP flow)."""
        family = socket.AF_INET6 if v6 else socket.AF_INET
        dst = TRAFFIC_SRV6 if v6 else TRAFFIC_SRV
        with self.ns(fw).entered():
            sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sockets.append(sock)
        sock.bind((TRAFFIC_FW6 if v6 else TRAFFIC_FW, 0))
        sock.sendto(b"nfsyncd lab", (dst, port))
        src, sport = sock.getsockname()[:2]
        return FlowKey(17, _canon(src), _canon(dst), sport, port)

    def ping(self, fw: FW, *, v6: bool = False) -> FlowKey:
        """Send one ICMP echo request from ``fw`` to its server, with an id of our choosing."""
        icmp_id = next(self._icmp_ids) & 0xFFFF
        family = socket.AF_INET6 if v6 else socket.AF_INET
        proto = IPPROTO_ICMPV6 if v6 else IPPROTO_ICMP
        etype = 128 if v6 else 8
        with self.ns(fw).entered():
            sock = socket.socket(family, socket.SOCK_RAW, proto)
        dst = TRAFFIC_SRV6 if v6 else TRAFFIC_SRV
        with sock:
            sock.sendto(echo_request(icmp_id, 1, b"nfsyncd lab ping", v6=v6), (dst, 0))
        src = TRAFFIC_FW6 if v6 else TRAFFIC_FW
        return FlowKey(proto, src, dst, None, None, etype, 0, icmp_id)

    # -- teardown -------------------------------------------------------------------------

    def close(self) -> None:
        """Close sockets, stop processes (by PID) and delete every namespace. Idempotent."""
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._sockets.clear()
        errors: list[BaseException] = []
        self._close_namespaces(errors)
        if errors:
            raise errors[0]

    def __repr__(self) -> str:
        names = ", ".join(ns.name for ns in self._made)
        return f"<SyncLab links={len(self.links)} [{names}] pid={os.getpid()}>"
