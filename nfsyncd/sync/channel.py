"""One dedicated sync link to the peer: the transport-independent part (reference §3).

A channel owns the sockets of one ``[[sync.links]]`` entry.  It only moves bytes: the
sender hands it datagrams that are already packed (whole messages, at most
:attr:`Channel.payload_size` bytes) and the receiving side gets decoded messages back.
Network errors never escape :meth:`Channel.send` or :meth:`Channel.receive`; they are
counted (conntrackd's ``-s link``), because a flapping link must not stop the daemon.

Sockets belong to the network namespace of the thread that made them.  :meth:`open` is
called in the right namespace; a channel that has to make sockets later (TCP reconnects)
remembers that namespace and makes them there (:class:`NetnsAnchor`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import os
import socket
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import ClassVar, Final

from .._config_types import SyncLink
from .wire import Message, NetworkStats, channel_payload_size

__all__ = [
    "RECV_BUFFER",
    "Channel",
    "LinkStats",
    "NetnsAnchor",
    "interface_info",
    "open_channel",
]

#: conntrackd's receive buffer; no datagram of ours is larger.
RECV_BUFFER: Final = 65536

SO_NO_CHECK: Final = 11
SO_SNDBUFFORCE: Final = 32
SO_RCVBUFFORCE: Final = 33
_SIOCGIFMTU: Final = 0x8921
_CLONE_NEWNET: Final = 0x40000000


@dataclass(slots=True)
class LinkStats:
    """Per-link traffic as conntrackd's ``-s link``: datagrams (not messages) and bytes;
    errors are failed send/receive calls (a would-block is not an error)."""

    sent_packets: int = 0
    sent_bytes: int = 0
    recv_packets: int = 0
    recv_bytes: int = 0
    send_errors: int = 0
    recv_errors: int = 0
    #: system calls that sent a run of datagrams (UDP segmentation offload)
    segmented_sends: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def link_name(link: SyncLink, index: int) -> str:
    """How errors and logs name a link, in the config's own terms."""
    return f"sync.links[{index}] (interface {link.interface})"


def interface_info(link: SyncLink, index: int) -> tuple[int, int]:
    """``(ifindex, mtu)`` of the link's interface in the current thread's namespace.

    The interface is mandatory (conntrackd reads the MTU and the scope from it), so a
    missing one is a configuration error that names the link.
    """
    try:
        ifindex = socket.if_nametoindex(link.interface)
    except OSError:
        raise OSError(errno.ENODEV, f"{link_name(link, index)}: no such interface") from None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        ifreq = struct.pack("16si12x", link.interface.encode(), 0)
        try:
            reply = fcntl.ioctl(probe.fileno(), _SIOCGIFMTU, ifreq)
        except OSError as exc:
            raise OSError(
                exc.errno, f"{link_name(link, index)}: cannot read the MTU: {exc}"
            ) from None
    (mtu,) = struct.unpack_from("i", reply, 16)
    return ifindex, mtu


def needs_scope(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Link-local unicast and link/interface-scoped multicast need an ifindex (scope id)."""
    if addr.version != 6:
        return False
    assert isinstance(addr, ipaddress.IPv6Address)
    return addr.is_link_local or (addr.is_multicast and (addr.packed[1] & 0x0F) <= 2)


def sockaddr(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
    port: int,
    ifindex: int,
    ipv6: bool,
) -> tuple[str, int] | tuple[str, int, int, int]:
    """A socket address for ``addr`` (the wildcard when None), scoped when it must be."""
    if not ipv6:
        return (str(addr) if addr is not None else "0.0.0.0", port)
    scope = ifindex if addr is not None and needs_scope(addr) else 0
    return (str(addr) if addr is not None else "::", port, 0, scope)


def set_buffers(sock: socket.socket, *, sndbuf: int = 0, rcvbuf: int = 0) -> None:
    """conntrackd's Snd/RcvSocketBuffer: the FORCE variants, so root can exceed rmem_max."""
    if sndbuf > 0:
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, sndbuf)
    if rcvbuf > 0:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)


def _setns_impl() -> Callable[[int, int], None]:
    native: Callable[[int, int], None] | None = getattr(os, "setns", None)  # Python >= 3.12
    if native is not None:
        return native
    libc = ctypes.CDLL(None, use_errno=True)

    def call(fd: int, nstype: int) -> None:
        if libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")

    return call


_setns = _setns_impl()


class NetnsAnchor:
    """The network namespace a channel was opened in, to make later sockets there too.

    The daemon never changes namespace, so usually this is a no-op (same inode); tests open
    channels for several namespaces from one thread and reconnect from another one.
    """

    __slots__ = ("_fd", "_ino")

    def __init__(self) -> None:
        self._fd: int | None = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._ino = os.fstat(self._fd).st_ino

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the (synchronous!) block in the anchored namespace: no awaits inside."""
        if self._fd is None:
            raise OSError(errno.EBADF, "channel closed")
        if os.stat("/proc/thread-self/ns/net").st_ino == self._ino:
            yield
            return
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(self._fd, _CLONE_NEWNET)
            try:
                yield
            finally:
                _setns(back, _CLONE_NEWNET)
        finally:
            os.close(back)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Channel(ABC):
    """Sends packed datagrams to the peer and decodes what it sends (one link)."""

    #: whether :meth:`send_ready` works (the engine then sends from the mirror's task)
    sends_without_waiting: ClassVar[bool] = False

    stream: ClassVar[bool] = False

    def __init__(self, link: SyncLink, index: int, network: NetworkStats | None = None) -> None:
        self.link = link
        self.index = index
        self.stats = LinkStats()
        self.network = network if network is not None else NetworkStats()
        self.payload_size = 0
        self.ifindex = 0
        self.mtu = 0
        self.closed = False

    @property
    def name(self) -> str:
        return link_name(self.link, self.index)

    @property
    def ipv6(self) -> bool:
        """The link's address family, from whichever address it names."""
        for addr in (self.link.group, self.link.peer, self.link.local):
            if addr is not None:
                return addr.version == 6
        return False

    def _lookup_interface(self) -> None:
        """Read ifindex and MTU and derive the payload size (part of every :meth:`open`)."""
        self.ifindex, self.mtu = interface_info(self.link, self.index)
        self.payload_size = channel_payload_size(self.mtu, self.link.transport, ipv6=self.ipv6)

    def _require(self, what: str, value: object) -> None:
        if value is None:
            raise ValueError(f"{self.name}: {self.link.transport} needs {what}")

    def _check_family(self) -> None:
        versions = {a.version for a in (self.link.local, self.link.peer, self.link.group) if a}
        if len(versions) > 1:
            raise ValueError(f"{self.name}: mixes IPv4 and IPv6 addresses")

    def _count_sent(self, nbytes: int) -> None:
        self.stats.sent_packets += 1
        self.stats.sent_bytes += nbytes

    def _count_received(self, nbytes: int) -> None:
        self.stats.recv_packets += 1
        self.stats.recv_bytes += nbytes

    @abstractmethod
    async def open(self) -> None:
        """Create, bind and join the sockets (in the current thread's namespace)."""

    @abstractmethod
    async def send(self, datagram: bytes) -> bool:
        """Send one packed datagram; False (and counted) when the network refused it."""

    async def send_many(self, datagrams: Sequence[bytes]) -> int:
        """Send datagrams in order; how many went (the others are counted as failed).

        Datagram channels override this with a loop of plain non-blocking sends: one
        awaited trio send per datagram cost more than building its messages."""
        sent = 0
        for datagram in datagrams:
            if await self.send(datagram):
                sent += 1
        return sent

    def send_ready(self, datagrams: Sequence[bytes]) -> int:
        """Send without waiting, in order, as many as the socket takes now; how many went.

        Only channels with :attr:`sends_without_waiting` implement it (a TCP stream may
        block part-way through a datagram, so it always goes through the sender task)."""
        raise NotImplementedError(f"{type(self).__name__} cannot send without waiting")

    @abstractmethod
    async def receive(self) -> list[Message]:
        """The next batch of decoded messages (possibly empty when all were malformed).

        Raises :class:`trio.ClosedResourceError` once the channel is closed.
        """

    @abstractmethod
    def close(self) -> None:
        """Close every socket; idempotent."""

    def describe(self) -> dict[str, object]:
        """The link as ``-s link``/``status`` shows it (subclasses add their state)."""
        link = self.link
        out: dict[str, object] = {
            "transport": link.transport,
            "interface": link.interface,
            "local": str(link.local) if link.local is not None else None,
            "port": link.port,
            "payload_size": self.payload_size,
        }
        if link.transport == "multicast":
            out["group"] = str(link.group) if link.group is not None else None
        else:
            out["peer"] = str(link.peer) if link.peer is not None else None
        return out


def open_channel(link: SyncLink, index: int, network: NetworkStats | None = None) -> Channel:
    """The channel class for ``link.transport`` (not opened yet: call :meth:`Channel.open`)."""
    if link.transport == "udp":
        from .udp import UdpChannel

        return UdpChannel(link, index, network)
    if link.transport == "multicast":
        from .mcast import MulticastChannel

        return MulticastChannel(link, index, network)
    if link.transport == "tcp":
        from .tcp import TcpChannel

        return TcpChannel(link, index, network)
    raise ValueError(f"{link_name(link, index)}: unknown transport {link.transport!r}")
