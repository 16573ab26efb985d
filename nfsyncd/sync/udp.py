"""UDP unicast links (reference §3.2), and the datagram plumbing multicast shares.

Two sockets per link, as in conntrackd: an unbound sender (ephemeral source port) that
sends to ``peer:port``, and a receiver bound to ``local:port`` that accepts datagrams from
any source.  Sockets are made and bound synchronously inside :meth:`open`, so a caller
that entered a namespace around ``await chan.open()`` gets them all in that namespace.
"""

from __future__ import annotations

import logging
import socket
from typing import ClassVar

import trio

from .._config_types import SyncLink
from .channel import RECV_BUFFER, SO_NO_CHECK, Channel, set_buffers, sockaddr
from .wire import Message, NetworkStats, decode_datagram

__all__ = ["DatagramChannel", "UdpChannel"]

log = logging.getLogger("nfsyncd.sync.channel")

SockAddr = tuple[str, int] | tuple[str, int, int, int]


class DatagramChannel(Channel):
    """A sender and a receiver socket; subclasses say how they are made and bound."""

    stream: ClassVar[bool] = False

    def __init__(self, link: SyncLink, index: int, network: NetworkStats | None = None) -> None:
        super().__init__(link, index, network)
        self._rx: trio.socket.SocketType | None = None
        self._tx: trio.socket.SocketType | None = None
        self._dest: SockAddr = ("0.0.0.0", 0)
        self._failing = False

    def _family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if self.ipv6 else socket.AF_INET

    def _validate(self) -> None:
        raise NotImplementedError

    def _make_receiver(self) -> socket.socket:
        raise NotImplementedError

    def _make_sender(self) -> socket.socket:
        raise NotImplementedError

    async def open(self) -> None:
        if self._rx is not None:
            return
        self._check_family()
        self._validate()
        self._lookup_interface()
        rx = self._make_receiver()
        try:
            tx = self._make_sender()
        except BaseException:
            rx.close()
            raise
        if not self.link.checksum:
            tx.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        self._rx = trio.socket.from_stdlib_socket(rx)
        self._tx = trio.socket.from_stdlib_socket(tx)
        self.closed = False

    def _bind(self, sock: socket.socket, addr: SockAddr) -> None:
        try:
            sock.bind(addr)
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno, f"{self.name}: cannot bind [{addr[0]}]:{addr[1]}: {exc.strerror}"
            ) from None

    def _udp_socket(self) -> socket.socket:
        return socket.socket(self._family(), socket.SOCK_DGRAM)

    async def send(self, datagram: bytes) -> bool:
        tx = self._tx
        if tx is None:
            self.stats.send_errors += 1
            return False
        try:
            await tx.sendto(datagram, self._dest)
        except (OSError, trio.ClosedResourceError) as exc:
            self.stats.send_errors += 1
            if not self._failing:
                self._failing = True
                log.warning("%s: send failed: %s", self.name, exc)
            return False
        if self._failing:
            self._failing = False
            log.info("%s: sending again", self.name)
        self._count_sent(len(datagram))
        return True

    async def receive(self) -> list[Message]:
        while True:
            rx = self._rx
            if rx is None or self.closed:
                raise trio.ClosedResourceError(f"{self.name} is closed")
            try:
                data = await rx.recv(RECV_BUFFER)
            except OSError as exc:
                if self.closed:
                    raise trio.ClosedResourceError(f"{self.name} is closed") from exc
                self.stats.recv_errors += 1
                log.debug("%s: receive failed: %s", self.name, exc)
                await trio.lowlevel.checkpoint()
                continue
            self._count_received(len(data))
            return decode_datagram(data, self.network)

    def close(self) -> None:
        self.closed = True
        for sock in (self._rx, self._tx):
            if sock is not None:
                sock.close()


class UdpChannel(DatagramChannel):
    """conntrackd's ``UDP`` link: unicast to the peer, the same port on both sides."""

    def _validate(self) -> None:
        self._require("a peer address", self.link.peer)

    def _make_receiver(self) -> socket.socket:
        link = self.link
        sock = self._udp_socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            set_buffers(sock, rcvbuf=link.rcvbuf)
        except BaseException:
            sock.close()
            raise
        self._bind(sock, sockaddr(link.local, link.port, self.ifindex, self.ipv6))
        return sock

    def _make_sender(self) -> socket.socket:
        sock = self._udp_socket()
        try:
            set_buffers(sock, sndbuf=self.link.sndbuf)
        except BaseException:
            sock.close()
            raise
        self._dest = sockaddr(self.link.peer, self.link.port, self.ifindex, self.ipv6)
        return sock
