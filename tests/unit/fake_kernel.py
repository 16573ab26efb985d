"""A fake kernel for :class:`~nfsyncd.netlink.NetlinkSocket`: the other end of a
``socketpair``, driven by the test.

The test reads what the socket sent (parsed with ``parse_messages``) and answers with
datagrams built here the way the kernel builds them: ``NLMSG_ERROR`` (an ack when errno is
0) echoing the request header, optionally with extended-ack TLVs, multipart dump replies and
``NLMSG_DONE``.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

import trio

from nfsyncd.netlink import Message, NetlinkSocket, attr, parse_messages
from nfsyncd.netlink._socket import (
    NLM_F_ACK_TLVS,
    NLM_F_CAPPED,
    NLM_F_MULTI,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGERR_ATTR_MSG,
    NLMSGERR_ATTR_OFFS,
)

_NLMSGHDR = struct.Struct("=IHHII")

#: the port id NetlinkSocket reports for an injected socket
PORT_ID = 4242

#: answers the datagram the socket sent (as parsed messages) with datagrams to send back
Handler = Callable[[list[Message]], Iterable[bytes]]


def message(mtype: int, flags: int, seq: int, payload: bytes = b"", pid: int = PORT_ID) -> bytes:
    """One netlink message (header + payload, padded to 4 bytes)."""
    length = 16 + len(payload)
    return _NLMSGHDR.pack(length, mtype, flags, seq, pid) + payload + b"\0" * (-length & 3)


def raw_message(msg: Message) -> bytes:
    """The bytes of a received message, header included (what an error reply echoes)."""
    return bytes(msg.data[msg.offset - 16 : msg.end])


def ack(request: Message) -> bytes:
    """The kernel's ack: NLMSG_ERROR with error 0 and the request's header (capped)."""
    return error(request, 0)


def error(
    request: Message,
    errno_: int,
    ext_msg: str | None = None,
    *,
    capped: bool = True,
    offset: int | None = None,
) -> bytes:
    """An NLMSG_ERROR for ``request``: ``-errno``, then the request's header (capped, as
    with NETLINK_CAP_ACK) or the whole request, then the extended-ack TLVs, if any."""
    original = raw_message(request)
    echoed = original[:16] if capped else original
    flags = NLM_F_CAPPED if capped else 0
    tlvs = b""
    if ext_msg is not None:
        tlvs += attr(NLMSGERR_ATTR_MSG, ext_msg.encode() + b"\0")
    if offset is not None:
        tlvs += attr(NLMSGERR_ATTR_OFFS, struct.pack("=I", offset))
    if tlvs:
        flags |= NLM_F_ACK_TLVS
    payload = struct.pack("=i", -errno_) + echoed + b"\0" * (-len(echoed) & 3) + tlvs
    return message(NLMSG_ERROR, flags, request.seq, payload)


def done(request: Message) -> bytes:
    """The end of a dump."""
    return message(NLMSG_DONE, NLM_F_MULTI, request.seq, struct.pack("=i", 0))


def reply(request: Message, mtype: int, payload: bytes, *, multi: bool = False) -> bytes:
    """A reply message (a dump part when ``multi``) to ``request``."""
    return message(mtype, NLM_F_MULTI if multi else 0, request.seq, payload)


class FakeKernel:
    """Owns a socketpair: ``nl`` is the NetlinkSocket under test, the other end is ours.

    Everything the socket sends is kept in ``datagrams`` (raw) and ``received`` (one list
    of parsed messages per datagram).
    """

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        # room for a batch's worth of datagrams either way
        for s in (ours, theirs):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        theirs.setblocking(False)
        self._sock = theirs
        self.nl = NetlinkSocket(sock=ours)
        self.datagrams: list[bytes] = []
        self.received: list[list[Message]] = []

    def close(self) -> None:
        self.nl.close()
        self._sock.close()

    def send(self, *messages: bytes) -> None:
        """One datagram holding ``messages``, to the socket under test."""
        self._sock.send(b"".join(messages))

    async def receive(self) -> list[Message]:
        """Wait for the next datagram the socket sends; its messages."""
        await trio.lowlevel.wait_readable(self._sock)
        data = self._sock.recv(1 << 20)
        msgs = parse_messages(data)
        self.datagrams.append(data)
        self.received.append(msgs)
        return msgs

    @property
    def messages(self) -> list[Message]:
        """Every message the socket sent so far, in order."""
        return [m for dgram in self.received for m in dgram]

    @asynccontextmanager
    async def serving(self, handler: Handler, timeout: float = 5.0) -> AsyncIterator[None]:
        """Answer each datagram the socket sends with ``handler(messages)`` while the body
        runs (which fails after ``timeout`` seconds instead of hanging)."""

        async def serve() -> None:
            while True:
                msgs = await self.receive()
                for dgram in handler(msgs):
                    self._sock.send(dgram)

        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                yield
                nursery.cancel_scope.cancel()
