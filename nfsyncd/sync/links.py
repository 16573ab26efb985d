"""Redundant sync links (reference §3.4): all links receive, only the active one sends.

The active link starts as the configured default.  It changes for two reasons:

* the kernel says its interface is no longer UP and RUNNING (an rtnetlink link event):
  the first other link that is UP or RUNNING takes over (conntrackd's looser test for the
  candidate), or, when there is none, we say so and keep the current one;
* the peer sent a data or control message on another link: the peer has switched, so we
  follow it and both ends converge on the same link.  Not onto a link without carrier,
  though: datagrams still queued on a link that just went down would otherwise pull the
  sender back onto it, where every send fails and no link event comes to undo it.

Link state comes from an ``RTMGRP_LINK`` netlink socket read by trio; the two fields we need
(name and flags) are decoded here rather than by pyroute2, whose import alone cost the daemon
~10 MiB of resident memory and ~65 ms of start-up for one message type.  The initial state is one
``RTM_GETLINK`` dump made while the sockets are opened, so it is read in the namespace the
links live in (``/sys`` would show the namespace sysfs was mounted in instead).
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Final

import trio

from .._config_types import SyncLink
from ..netlink import DecodeError, iter_attrs
from .channel import Channel, open_channel
from .wire import Message, MsgType, NetworkStats

__all__ = ["MAX_LINKS", "LinkSet", "LinkWatcher", "link_status"]

log = logging.getLogger("nfsyncd.sync.links")

#: conntrackd's MULTICHANNEL_MAX.
MAX_LINKS: Final = 4

IFF_UP: Final = 0x1
IFF_RUNNING: Final = 0x40

_NETLINK_ROUTE: Final = 0
_RTMGRP_LINK: Final = 1
_NLMSG_ERROR: Final = 2
_NLMSG_DONE: Final = 3
_RTM_NEWLINK: Final = 16
_RTM_DELLINK: Final = 17
_RTM_GETLINK: Final = 18
_NLM_F_REQUEST_DUMP: Final = 0x1 | 0x300
_NLMSGHDR: Final = struct.Struct("=IHHII")
_IFINFOMSG: Final = struct.Struct("=BxHiII")
_IFLA_IFNAME: Final = 3
_DUMP_TIMEOUT: Final = 2.0


def link_status(flags: int | None) -> str:
    """conntrackd's ``-s link`` status for interface flags (None: no such interface)."""
    if flags is None or not flags & IFF_UP:
        return "DOWN"
    return "RUNNING" if flags & IFF_RUNNING else "NO-CARRIER"


def _ifname_and_flags(data: bytes, start: int, end: int) -> tuple[str | None, int]:
    """Interface name and flags of one ``ifinfomsg`` (the name is None when absent or the
    message is malformed: such a message cannot concern a link we watch)."""
    body = start + _NLMSGHDR.size
    if end - body < _IFINFOMSG.size:
        return None, 0
    flags = _IFINFOMSG.unpack_from(data, body)[3]
    try:
        for atype, lo, hi in iter_attrs(data, body + _IFINFOMSG.size, end, "ifinfomsg"):
            if atype == _IFLA_IFNAME:
                return data[lo:hi].split(b"\0", 1)[0].decode(errors="replace"), flags
    except DecodeError as exc:
        log.warning("ignoring malformed link message: %s", exc)
    return None, flags


def _parse(data: bytes) -> Iterator[tuple[int, int, str | None, int]]:
    """``(type, seq, ifname, flags)`` per netlink message; ifname only for link messages."""
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, mtype, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            return
        name: str | None = None
        flags = 0
        if mtype in (_RTM_NEWLINK, _RTM_DELLINK):
            name, flags = _ifname_and_flags(data, off, off + length)
        yield mtype, seq, name, flags
        off += (length + 3) & ~3


class LinkWatcher:
    """Flags of the named interfaces, kept current from rtnetlink link events."""

    def __init__(self, interfaces: Sequence[str]) -> None:
        self.flags: dict[str, int | None] = dict.fromkeys(interfaces)
        self._sock: trio.socket.SocketType | None = None
        self._seq = 0

    def _dump_request(self) -> bytes:
        self._seq += 1
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        hdr = _NLMSGHDR.pack(
            _NLMSGHDR.size + len(body), _RTM_GETLINK, _NLM_F_REQUEST_DUMP, self._seq, 0
        )
        return hdr + body

    def _apply(self, data: bytes) -> bool:
        """Update flags from one netlink datagram; True when the dump we asked for ended."""
        done = False
        for mtype, seq, name, flags in _parse(data):
            if name is not None and name in self.flags:
                self.flags[name] = flags if mtype == _RTM_NEWLINK else None
            elif mtype in (_NLMSG_DONE, _NLMSG_ERROR) and seq == self._seq:
                done = True
        return done

    def open(self) -> None:
        """Subscribe to link events and read the current state (synchronously, so the
        socket and the dump belong to the caller's namespace)."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_ROUTE)
        try:
            sock.bind((0, _RTMGRP_LINK))
            sock.settimeout(_DUMP_TIMEOUT)
            for name in self.flags:
                self.flags[name] = None  # a link missing from the dump is gone
            sock.send(self._dump_request())
            while not self._apply(sock.recv(65536)):
                pass
        except BaseException:
            sock.close()
            raise
        self._sock = trio.socket.from_stdlib_socket(sock)

    async def watch(self, on_change: Callable[[], None]) -> None:
        """Follow link events forever, calling ``on_change`` after each batch."""
        sock = self._sock
        if sock is None:
            raise RuntimeError("LinkWatcher.open() first")
        while True:
            try:
                data = await sock.recv(65536)
            except trio.ClosedResourceError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # Events were dropped: the state may be stale, so ask for all of it again.
                log.warning("link events overran; re-reading link state")
                await sock.send(self._dump_request())
                continue
            self._apply(data)
            on_change()

    def status(self, interface: str) -> str:
        return link_status(self.flags.get(interface))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class LinkSet:
    """Up to :data:`MAX_LINKS` channels to the same peer, one of them active for sending."""

    def __init__(
        self,
        links: Sequence[SyncLink],
        *,
        default: int = 0,
        network: NetworkStats | None = None,
    ) -> None:
        if not 1 <= len(links) <= MAX_LINKS:
            raise ValueError(f"sync.links: {len(links)} links (1 to {MAX_LINKS} are allowed)")
        if len({link.transport for link in links}) > 1:
            raise ValueError("sync.links: all links must use the same transport")
        if not 0 <= default < len(links):
            raise ValueError(f"sync.links: default link {default} does not exist")
        self.network = network if network is not None else NetworkStats()
        self.channels: list[Channel] = [
            open_channel(link, i, self.network) for i, link in enumerate(links)
        ]
        self.active = default
        self.switches = 0
        self._watcher = LinkWatcher([link.interface for link in links])
        self._opened = False
        self._none_usable = False

    async def open(self) -> None:
        """Open every channel and the link watcher, in the current thread's namespace."""
        if self._opened:
            return
        try:
            for chan in self.channels:
                await chan.open()
            self._watcher.open()
        except BaseException:
            self.close()
            raise
        self._opened = True
        self._check_links()

    async def send(self, datagram: bytes) -> bool:
        return await self.channels[self.active].send(datagram)

    @property
    def payload_size(self) -> int:
        return self.channels[self.active].payload_size

    async def run(
        self,
        deliver: Callable[[int, list[Message]], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Receive on every link and follow link state until cancelled."""
        await self.open()
        async with trio.open_nursery() as nursery:
            for index, chan in enumerate(self.channels):
                nursery.start_soon(self._receive_loop, index, chan, deliver)
            nursery.start_soon(self._watcher.watch, self._check_links)
            task_status.started()

    async def _receive_loop(
        self, index: int, chan: Channel, deliver: Callable[[int, list[Message]], None]
    ) -> None:
        while True:
            try:
                msgs = await chan.receive()
            except trio.ClosedResourceError:
                return
            if not msgs:
                continue
            if (
                index != self.active
                and self._usable(index, IFF_RUNNING)
                and any(m.is_data or m.type == MsgType.CTL for m in msgs)
            ):
                self._switch(index, "traffic from peer")
            deliver(index, msgs)

    def _switch(self, index: int, why: str) -> None:
        self.active = index
        self.switches += 1
        self._none_usable = False
        log.warning(
            "link %s becomes the active link (%s)", self.channels[index].link.interface, why
        )

    def _usable(self, index: int, mask: int) -> bool:
        flags = self._watcher.flags.get(self.channels[index].link.interface)
        return flags is not None and flags & mask != 0

    def _check_links(self) -> None:
        """The failover policy (§3.4), run after every batch of link events."""
        current = self.active
        flags = self._watcher.flags.get(self.channels[current].link.interface)
        if flags is not None and flags & (IFF_UP | IFF_RUNNING) == IFF_UP | IFF_RUNNING:
            self._none_usable = False
            return
        for index in range(len(self.channels)):
            if index != current and self._usable(index, IFF_UP | IFF_RUNNING):
                old = self.channels[current].link.interface
                self._switch(index, f"{old} is down")
                return
        if not self._none_usable:
            self._none_usable = True
            log.error("no sync link available")

    def link_state(self) -> list[dict[str, object]]:
        """Every link as ``-s link`` shows it, with its traffic counters."""
        return [
            {
                "index": index,
                "interface": chan.link.interface,
                "transport": chan.link.transport,
                "status": self._watcher.status(chan.link.interface),
                "role": "ACTIVE" if index == self.active else "BACKUP",
                "stats": chan.stats.as_dict(),
                "channel": chan.describe(),
            }
            for index, chan in enumerate(self.channels)
        ]

    def close(self) -> None:
        for chan in self.channels:
            chan.close()
        self._watcher.close()
