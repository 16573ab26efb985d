"""UDP unicast links (reference §3.2), and the datagram plumbing multicast shares.

Two sockets per link, as in conntrackd: an unbound sender (ephemeral source port) that
sends to ``peer:port``, and a receiver bound to ``local:port`` that accepts datagrams from
any source.  Sockets are made and bound synchronously inside :meth:`open`, so a caller
that entered a namespace around ``await chan.open()`` gets them all in that namespace.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from typing import ClassVar

import trio

from .._config_types import SyncLink
from .channel import RECV_BUFFER, SO_NO_CHECK, Channel, set_buffers, sockaddr
from .segment import REFUSED, run_end, send_run
from .wire import Message, NetworkStats, decode_datagram

__all__ = ["RECV_BATCH", "DatagramChannel", "UdpChannel"]

log = logging.getLogger("nfsyncd.sync.channel")

SockAddr = tuple[str, int] | tuple[str, int, int, int]

#: datagrams read per :meth:`DatagramChannel.receive` at most (then the caller's turn)
RECV_BATCH = 64


class DatagramChannel(Channel):
    """A sender and a receiver socket; subclasses say how they are made and bound."""

    stream: ClassVar[bool] = False
    sends_without_waiting: ClassVar[bool] = True

    def __init__(self, link: SyncLink, index: int, network: NetworkStats | None = None) -> None:
        super().__init__(link, index, network)
        self._rx: trio.socket.SocketType | None = None
        self._tx: trio.socket.SocketType | None = None
        self._dest: SockAddr = ("0.0.0.0", 0)
        self._failing = False
        #: the sender as the stdlib socket trio wraps (non-blocking), for send_many
        self._tx_raw: socket.socket | None = None
        self._rx_raw: socket.socket | None = None
        #: whether runs of datagrams go out in one call (until the kernel refuses one)
        self._segment = link.segment_offload

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
        self._tx_raw = tx
        self._rx_raw = rx
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
            self._send_failed(exc)
            return False
        self._sent(len(datagram))
        return True

    async def send_many(self, datagrams: Sequence[bytes]) -> int:
        """Send in a loop of plain non-blocking calls, waiting for the socket only when its
        buffer is full, then one checkpoint: an awaited trio ``sendto`` per datagram cost
        ~15 µs, more than the ~16 flows each datagram carries cost to encode.  The caller
        hands over bounded batches, so the loop stays responsive."""
        tx = self._tx_raw
        if tx is None or self.closed:
            self.stats.send_errors += len(datagrams)
            return 0
        sent = 0
        while sent < len(datagrams):
            try:
                sent = self._send_next(tx, datagrams, sent)
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_writable(tx)
                except (OSError, trio.ClosedResourceError) as exc:
                    self._send_failed(exc)
                    break
            except OSError as exc:
                self._send_failed(exc)
                break
        await trio.lowlevel.checkpoint()
        return sent

    def send_ready(self, datagrams: Sequence[bytes]) -> int:
        """The same loop, stopping (not waiting) when the buffer is full: the engine calls
        it from the mirror's task, so a few events cost no task switch."""
        tx = self._tx_raw
        if tx is None or self.closed:
            return 0  # the sender task tries, and counts the failure
        sent = 0
        while sent < len(datagrams):
            try:
                sent = self._send_next(tx, datagrams, sent)
            except OSError:  # full, or failing: the sender task retries and counts it
                break
        return sent

    def _send_next(self, tx: socket.socket, datagrams: Sequence[bytes], i: int) -> int:
        """Send the datagram at ``i``, or the run of datagrams from there (module
        :mod:`.segment`); the index after what went.  Raises the socket's error when nothing
        went."""
        end = run_end(datagrams, i) if self._segment else i + 1
        if end - i == 1:
            tx.sendto(datagrams[i], self._dest)
            self._sent(len(datagrams[i]))
            return end
        run = datagrams[i:end]
        try:
            send_run(tx, run, self._dest)
        except OSError as exc:
            if exc.errno not in REFUSED:
                raise
            self._segment = False
            log.info("%s: sending one datagram per call (segmentation refused: %s)", self.name, exc)
            return i
        self.stats.segmented_sends += 1
        for datagram in run:
            self._sent(len(datagram))
        return end

    def _send_failed(self, exc: BaseException) -> None:
        self.stats.send_errors += 1
        if not self._failing:
            self._failing = True
            log.warning("%s: send failed: %s", self.name, exc)

    def _sent(self, nbytes: int) -> None:
        if self._failing:
            self._failing = False
            log.info("%s: sending again", self.name)
        self._count_sent(nbytes)

    async def receive(self) -> list[Message]:
        """The messages of every datagram waiting (at most :data:`RECV_BATCH`): one wait
        for the socket, then plain non-blocking reads until it is empty; an awaited trio
        ``recv`` per datagram cost about as much as decoding the datagram."""
        while True:
            rx = self._rx_raw
            if rx is None or self.closed:
                raise trio.ClosedResourceError(f"{self.name} is closed")
            try:
                await trio.lowlevel.wait_readable(rx)
            except OSError as exc:  # ClosedResourceError, or a socket closed under us
                raise trio.ClosedResourceError(f"{self.name} is closed") from exc
            msgs: list[Message] = []
            got = 0
            for _ in range(RECV_BATCH):
                try:
                    data = rx.recv(RECV_BUFFER)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if self.closed:
                        raise trio.ClosedResourceError(f"{self.name} is closed") from exc
                    self.stats.recv_errors += 1
                    log.debug("%s: receive failed: %s", self.name, exc)
                    break
                got += 1
                self._count_received(len(data))
                msgs += decode_datagram(data, self.network)
            if got:
                return msgs
            await trio.lowlevel.checkpoint()

    def close(self) -> None:
        self.closed = True
        self._tx_raw = self._rx_raw = None
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
