"""TCP links (reference §3.3): each node is a server for what it receives and a client for
what it sends, so a pair uses two connections, one per direction.

The server listens on ``local:port`` (backlog 1); a newly accepted connection replaces the
current one, because a peer that reconnects has given up on the old one.  The client
connects to ``peer:port`` without blocking the sender: a send while disconnected starts a
connect (at most one per second, like conntrackd) and waits for it only briefly; whatever
cannot go out is kept in an error queue of ``error_queue_length`` datagrams that is flushed,
in order, before any new data once the connection is up.

TCP is a stream, so a datagram here is just a run of whole messages; the receiving side
reassembles messages cut by ``recv`` boundaries (:class:`~.wire.StreamDecoder`).
"""

from __future__ import annotations

import collections
import errno
import logging
import math
import select
import socket
import time
from typing import ClassVar, Final

import trio

from .._config_types import SyncLink
from .channel import RECV_BUFFER, Channel, NetnsAnchor, set_buffers, sockaddr
from .wire import Message, NetworkStats, StreamDecoder

__all__ = ["CONNECT_WAIT", "RECONNECT_INTERVAL", "TcpChannel"]

log = logging.getLogger("nfsyncd.sync.channel")

#: At most one connect() per this many seconds (conntrackd's rate limit).
RECONNECT_INTERVAL: Final = 1.0
#: How long a send waits for a connect it just started before queueing its data.
CONNECT_WAIT: Final = 0.25
#: A connect still pending after this long is abandoned (the next send retries).
CONNECT_GIVE_UP: Final = 5.0

_BACKLOG: Final = 1
_CLOSED_EVENTS: Final = select.POLLIN | select.POLLERR | select.POLLHUP | select.POLLRDHUP


class TcpChannel(Channel):
    """conntrackd's ``TCP`` link: a listening server and a reconnecting client."""

    stream: ClassVar[bool] = True

    def __init__(self, link: SyncLink, index: int, network: NetworkStats | None = None) -> None:
        super().__init__(link, index, network)
        self._anchor: NetnsAnchor | None = None
        self._listener: trio.socket.SocketType | None = None
        self._server: trio.socket.SocketType | None = None
        self._decoder = StreamDecoder()
        self._client: trio.socket.SocketType | None = None
        self._client_connected = False
        self._connect_started = 0.0
        self._last_connect = -math.inf
        self._errq: collections.deque[bytes] = collections.deque()
        self._dest: tuple[str, int] | tuple[str, int, int, int] = ("0.0.0.0", 0)
        #: Datagrams dropped because the error queue was full (oldest first).
        self.error_queue_dropped = 0

    # -- opening ---------------------------------------------------------------------------

    def _family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if self.ipv6 else socket.AF_INET

    async def open(self) -> None:
        if self._listener is not None:
            return
        self._check_family()
        self._require("a peer address", self.link.peer)
        self._lookup_interface()
        link = self.link
        sock = socket.socket(self._family(), socket.SOCK_STREAM)
        addr = sockaddr(link.local, link.port, self.ifindex, self.ipv6)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            set_buffers(sock, rcvbuf=link.rcvbuf)
            sock.bind(addr)
            sock.listen(_BACKLOG)
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno, f"{self.name}: cannot listen on [{addr[0]}]:{addr[1]}: {exc.strerror}"
            ) from None
        self._anchor = NetnsAnchor()
        self._listener = trio.socket.from_stdlib_socket(sock)
        self._dest = sockaddr(link.peer, link.port, self.ifindex, self.ipv6)
        self.closed = False

    # -- client side: sending --------------------------------------------------------------

    def _start_connect(self) -> trio.socket.SocketType | None:
        """Begin a non-blocking connect from a fresh socket made in the channel's netns."""
        assert self._anchor is not None
        self._last_connect = time.monotonic()
        try:
            with self._anchor.entered():
                sock = socket.socket(self._family(), socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("%s: cannot create the client socket: %s", self.name, exc)
            return None
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            set_buffers(sock, sndbuf=self.link.sndbuf)
            err = sock.connect_ex(self._dest)
        except OSError as exc:
            err = exc.errno or errno.EIO
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            log.debug("%s: connect failed: %s", self.name, errno.errorcode.get(err, err))
            return None
        self._client = client = trio.socket.from_stdlib_socket(sock)
        self._client_connected = err == 0
        self._connect_started = self._last_connect
        return client

    def _check_connect(self) -> None:
        """Settle a pending connect without blocking: connected, failed or still pending."""
        client = self._client
        assert client is not None
        err = client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._drop_client(f"connect failed: {errno.errorcode.get(err, err)}")
            return
        try:
            client.getpeername()
        except OSError:
            if time.monotonic() - self._connect_started > CONNECT_GIVE_UP:
                self._drop_client("connect timed out")
            return
        self._client_connected = True
        log.info("%s: connected to the peer", self.name)

    def _peer_gone(self) -> bool:
        """Whether the peer closed or reset our client connection (it never sends on it, so
        anything readable is end-of-stream or an error)."""
        if self._client is None:
            return True
        poller = select.poll()
        poller.register(self._client.fileno(), _CLOSED_EVENTS)
        return bool(poller.poll(0))

    def _drop_client(self, why: str) -> None:
        if self._client is not None:
            if self._client_connected:
                log.warning("%s: connection to the peer lost: %s", self.name, why)
            self._client.close()
        self._client = None
        self._client_connected = False

    async def _ensure_client(self) -> bool:
        if self._client is not None and self._client_connected:
            if not self._peer_gone():
                return True
            self._drop_client("closed by the peer")
        if self._client is None:
            if time.monotonic() - self._last_connect < RECONNECT_INTERVAL:
                return False
            client = self._start_connect()
            if client is None:
                return False
            if not self._client_connected:
                with trio.move_on_after(CONNECT_WAIT):
                    await trio.lowlevel.wait_writable(client)
        if not self._client_connected:
            self._check_connect()
        return self._client_connected

    async def _write(self, buf: bytes) -> bool:
        client = self._client
        assert client is not None
        view = memoryview(buf)
        try:
            while view:
                sent = await client.send(view)
                view = view[sent:]
        except (OSError, trio.ClosedResourceError) as exc:
            self._drop_client(str(exc))
            return False
        finally:
            if view and len(view) < len(buf) and self._client is client:
                # Cancelled halfway: the peer holds part of a message.  The buffer stays
                # queued, so it must go again whole, on a fresh stream.
                self._drop_client("send interrupted")
        self._count_sent(len(buf))
        return True

    def _enqueue(self, buf: bytes) -> None:
        limit = self.link.error_queue_length
        while self._errq and len(self._errq) >= limit:
            self._errq.popleft()
            self.error_queue_dropped += 1
        if limit > 0:
            self._errq.append(buf)
        else:
            self.error_queue_dropped += 1

    async def send(self, datagram: bytes) -> bool:
        if self.closed or self._listener is None:
            self.stats.send_errors += 1
            return False
        ok = await self._ensure_client()
        while ok and self._errq:
            ok = await self._write(self._errq[0])
            if ok:
                self._errq.popleft()
        if ok and await self._write(datagram):
            return True
        self.stats.send_errors += 1
        self._enqueue(datagram)
        return False

    @property
    def error_queue(self) -> int:
        """Datagrams waiting for the connection to come back."""
        return len(self._errq)

    # -- server side: receiving ------------------------------------------------------------

    async def _next_events(
        self, listener: trio.socket.SocketType, server: trio.socket.SocketType | None
    ) -> list[tuple[str, object]]:
        """Wait for a new connection or data on the current one, whichever comes first."""
        events: list[tuple[str, object]] = []

        async def accept(cancel: trio.CancelScope) -> None:
            try:
                conn, _ = await listener.accept()
            except trio.ClosedResourceError:
                events.append(("closed", None))
            except OSError as exc:
                events.append(("accept_error", exc))
            else:
                events.append(("accept", conn))
            cancel.cancel()

        async def read(conn: trio.socket.SocketType, cancel: trio.CancelScope) -> None:
            try:
                data = await conn.recv(RECV_BUFFER)
            except trio.ClosedResourceError:
                events.append(("closed", None))
            except OSError as exc:
                events.append(("read_error", exc))
            else:
                events.append(("data", data))
            cancel.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept, nursery.cancel_scope)
            if server is not None:
                nursery.start_soon(read, server, nursery.cancel_scope)
        # Data read from the old connection comes before a replacement connection.
        events.sort(key=lambda ev: ev[0] == "accept")
        return events

    def _drop_server(self, why: str) -> None:
        if self._server is not None:
            log.info("%s: peer connection closed: %s", self.name, why)
            self._server.close()
        self._server = None
        self._decoder.reset()

    async def receive(self) -> list[Message]:
        while True:
            listener = self._listener
            if self.closed or listener is None:
                raise trio.ClosedResourceError(f"{self.name} is closed")
            msgs: list[Message] = []
            events = await self._next_events(listener, self._server)
            if self.closed or any(kind == "closed" for kind, _ in events):
                for kind, value in events:
                    if kind == "accept":
                        assert isinstance(value, trio.socket.SocketType)
                        value.close()
                raise trio.ClosedResourceError(f"{self.name} is closed")
            for kind, value in events:
                if kind == "accept":
                    assert isinstance(value, trio.socket.SocketType)
                    if self._server is not None:
                        self._drop_server("replaced by a new connection")
                    self._server = value
                    log.info("%s: peer connected", self.name)
                elif kind == "data":
                    assert isinstance(value, bytes)
                    if not value:
                        self._drop_server("end of stream")
                        continue
                    self._count_received(len(value))
                    msgs.extend(self._decoder.feed(value, self.network))
                    if self._decoder.broken:
                        self._drop_server("stream out of sync (malformed framing)")
                else:
                    self.stats.recv_errors += 1
                    if kind == "read_error":
                        self._drop_server(str(value))
                    else:
                        log.debug("%s: accept failed: %s", self.name, value)
                        await trio.lowlevel.checkpoint()
            if msgs:
                return msgs

    @property
    def rx_pending(self) -> int:
        """Bytes of a message cut by a read boundary, waiting for the rest."""
        return self._decoder.pending

    # -- the rest --------------------------------------------------------------------------

    def close(self) -> None:
        self.closed = True
        for sock in (self._listener, self._server, self._client):
            if sock is not None:
                sock.close()
        self._server = None
        self._client = None
        self._client_connected = False
        if self._anchor is not None:
            self._anchor.close()

    def describe(self) -> dict[str, object]:
        out = super().describe()
        out["server"] = "connected" if self._server is not None else "disconnected"
        connected = self._client_connected and not self._peer_gone()
        out["client"] = "connected" if connected else "disconnected"
        out["error_queue"] = len(self._errq)
        out["error_queue_dropped"] = self.error_queue_dropped
        out["rx_pending"] = self._decoder.pending
        return out
