"""A trio-native netlink socket: requests with acks, dumps, batches and event draining.

Why not ``trio.socket``'s ``await recv()``: a busy gateway emits hundreds of thousands of
conntrack events per second, and one trio round-trip per message caps us at a quarter of
what draining gives (measured, platform.md).  So the socket is a plain non-blocking stdlib
socket: we ``wait_readable`` once and then ``recv`` until ``EWOULDBLOCK``, yielding to the
scheduler between batches.

Writes are batched too: many requests go out in one ``sendmsg``; only the last asks for an
ack, and the kernel (which processes a netlink write synchronously and in order) answers
failures individually, so every error is mapped back to its request by sequence number.

An overrun (``ENOBUFS``) means the kernel dropped messages for us.  It is never swallowed:
:meth:`NetlinkSocket.recv_batch` returns :data:`OVERRUN` and the caller must resync.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Final, NamedTuple

import outcome
import trio

from ._attrs import DecodeError, iter_attrs

__all__ = [
    "NETLINK_NETFILTER",
    "NLM_F_ACK",
    "NLM_F_APPEND",
    "NLM_F_CREATE",
    "NLM_F_DUMP",
    "NLM_F_EXCL",
    "NLM_F_MULTI",
    "NLM_F_REPLACE",
    "NLM_F_REQUEST",
    "OVERRUN",
    "Message",
    "NetlinkError",
    "NetlinkSocket",
    "Overrun",
    "Request",
]

NETLINK_NETFILTER: Final = 12
SOL_NETLINK: Final = 270
NETLINK_ADD_MEMBERSHIP: Final = 1
NETLINK_DROP_MEMBERSHIP: Final = 2
NETLINK_BROADCAST_ERROR: Final = 4
NETLINK_NO_ENOBUFS: Final = 5
NETLINK_CAP_ACK: Final = 10
NETLINK_EXT_ACK: Final = 11
NETLINK_GET_STRICT_CHK: Final = 12

SO_RCVBUFFORCE: Final = 33
SO_SNDBUFFORCE: Final = 32
#: getsockopt: the socket's memory accounting (struct of u32: rmem_alloc, rcvbuf, ...)
SO_MEMINFO: Final = 55
_MEMINFO_HEAD = struct.Struct("=2I")

NLM_F_REQUEST: Final = 0x1
NLM_F_MULTI: Final = 0x2
NLM_F_ACK: Final = 0x4
NLM_F_ECHO: Final = 0x8
NLM_F_DUMP_INTR: Final = 0x10
NLM_F_ROOT: Final = 0x100
NLM_F_MATCH: Final = 0x200
NLM_F_DUMP: Final = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE: Final = 0x100
NLM_F_EXCL: Final = 0x200
NLM_F_CREATE: Final = 0x400
NLM_F_APPEND: Final = 0x800
NLM_F_CAPPED: Final = 0x100
NLM_F_ACK_TLVS: Final = 0x200

NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_OVERRUN: Final = 4

NLMSGERR_ATTR_MSG: Final = 1
NLMSGERR_ATTR_OFFS: Final = 2

_NLMSGHDR = struct.Struct("=IHHII")
_unpack_nlmsghdr = _NLMSGHDR.unpack_from
_pack_nlmsghdr = _NLMSGHDR.pack
_ERRNO = struct.Struct("=i")
_PADDING: Final = (b"", b"\0", b"\0\0", b"\0\0\0")

# Messages per sendmsg: bounded so a batch in which every request fails still fits its
# error replies in the receive buffer (each costs ~1 KiB of buffer accounting).
MAX_BATCH_BYTES: Final = 256 * 1024
DEFAULT_RCVBUF: Final = 8 * 1024 * 1024
RECV_SIZE: Final = 256 * 1024


class NetlinkError(OSError):
    """The kernel refused a request: ``errno`` plus its extended-ack text, if any."""

    def __init__(self, err: int, what: str = "", ext_msg: str | None = None) -> None:
        text = os.strerror(err)
        if ext_msg:
            text = f"{text} ({ext_msg})"
        if what:
            text = f"{what}: {text}"
        super().__init__(err, text)
        self.ext_msg = ext_msg


class Overrun:
    """Marker returned instead of messages when the kernel dropped some for us (ENOBUFS)."""

    _instance: Overrun | None = None

    def __new__(cls) -> Overrun:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "OVERRUN"


OVERRUN: Final = Overrun()


class Message(NamedTuple):
    """One received netlink message: ``data[offset:end]`` is its payload (after the
    16-byte header); the datagram is shared, not copied, between its messages."""

    type: int
    flags: int
    seq: int
    pid: int
    data: bytes
    offset: int
    end: int

    @property
    def payload(self) -> bytes:
        return self.data[self.offset : self.end]


class Request(NamedTuple):
    """A request to send: message type, flags and the payload after the netlink header."""

    type: int
    flags: int
    payload: bytes


def parse_messages(data: bytes) -> list[Message]:
    """Split a datagram into netlink messages (a truncated tail raises DecodeError)."""
    out = []
    off = 0
    end = len(data)
    while off + 16 <= end:
        length, mtype, flags, seq, pid = _unpack_nlmsghdr(data, off)
        if length < 16 or off + length > end:
            raise DecodeError("nlmsghdr", f"message claims length {length}, {end - off} left")
        out.append(Message(mtype, flags, seq, pid, data, off + 16, off + length))
        off += (length + 3) & ~3
    return out


def _error_of(msg: Message) -> tuple[int, str | None]:
    """The errno (positive, 0 for an ack) and extended-ack text of an NLMSG_ERROR."""
    data, off, end = msg.data, msg.offset, msg.end
    (neg,) = _ERRNO.unpack_from(data, off)
    ext_msg = None
    if msg.flags & NLM_F_ACK_TLVS:
        # error code, then the original header (capped) or the whole original message.
        inner_len = 16 if msg.flags & NLM_F_CAPPED else _unpack_nlmsghdr(data, off + 4)[0]
        tlv_start = off + 4 + ((inner_len + 3) & ~3)
        try:
            for atype, ps, pe in iter_attrs(data, tlv_start, end, "nlmsgerr"):
                if atype == NLMSGERR_ATTR_MSG:
                    ext_msg = data[ps:pe].rstrip(b"\0").decode("utf-8", "replace")
        except DecodeError:
            pass
    return -neg, ext_msg


class _Write:
    """One chunk written by a worker thread: the kernel does a netlink write's work inside
    ``sendmsg`` with the GIL released, so the trio thread can encode the next meanwhile."""

    def __init__(self, sock: socket.socket, data: bytes, span: tuple[int, int, int]) -> None:
        self.span = span
        self._event = trio.Event()
        self._outcome: outcome.Outcome[int] | None = None
        token = trio.lowlevel.current_trio_token()

        def deliver(result: outcome.Outcome[int]) -> None:
            self._outcome = result
            token.run_sync_soon(self._event.set)

        trio.lowlevel.start_thread_soon(lambda: sock.send(data), deliver)

    async def done(self) -> None:
        """Wait for the write (shielded: the chunk is in the kernel's hands either way, and
        its acks must not be taken for a later request's)."""
        with trio.CancelScope(shield=True):
            await self._event.wait()
        assert self._outcome is not None
        self._outcome.unwrap()


class NetlinkSocket:
    """One netlink socket; not safe for concurrent requests from several tasks.

    Use one socket for requests and a separate one for events: an event socket's
    stream would otherwise interleave with dump replies.
    """

    def __init__(
        self,
        protocol: int = NETLINK_NETFILTER,
        *,
        groups: Iterable[int] = (),
        rcvbuf: int = DEFAULT_RCVBUF,
        sndbuf: int = 4 * 1024 * 1024,
        sock: socket.socket | None = None,
    ) -> None:
        """Open and bind a netlink socket.

        ``sock`` replaces the kernel with anything datagram-shaped (a ``socketpair``): unit
        tests play the kernel's side of the conversation without privileges.
        """
        if sock is not None:
            sock.setblocking(False)
            self._sock = sock
            self.port_id = 4242
        else:
            self._sock = self._open(protocol, groups, rcvbuf, sndbuf)
            self.port_id = self._sock.getsockname()[0]
        self._seq = int.from_bytes(os.urandom(2), "little") << 8
        self._buf = bytearray(RECV_SIZE)
        self._view = memoryview(self._buf)

    @classmethod
    def _open(cls, protocol: int, groups: Iterable[int], rcvbuf: int, sndbuf: int) -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        try:
            sock.bind((0, 0))
            cls._set_buffer(sock, socket.SO_RCVBUF, SO_RCVBUFFORCE, rcvbuf)
            cls._set_buffer(sock, socket.SO_SNDBUF, SO_SNDBUFFORCE, sndbuf)
            for opt in (NETLINK_EXT_ACK, NETLINK_CAP_ACK):
                with contextlib.suppress(OSError):  # older kernels: plain errors still work
                    sock.setsockopt(SOL_NETLINK, opt, 1)
            for group in groups:
                sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    def _set_buffer(sock: socket.socket, plain: int, force: int, size: int) -> None:
        # FORCE ignores net.core.[rw]mem_max but needs CAP_NET_ADMIN, which we need anyway
        # for ctnetlink; fall back to the capped option for unprivileged unit tests.
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)

    @property
    def rcvbuf(self) -> int:
        """The kernel's accounting size of the receive buffer (twice what was asked)."""
        return int(self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    def set_rcvbuf(self, size: int) -> None:
        self._set_buffer(self._sock, socket.SO_RCVBUF, SO_RCVBUFFORCE, size)

    def receive_queue(self) -> tuple[int, int]:
        """Bytes waiting to be read and the most the kernel will queue, both in its own
        accounting (a datagram counts its whole buffer, ~1-2 KiB for a conntrack event).

        The kernel drops what does not fit; watching the fill level lets a reader grow
        the buffer before that, not after.
        """
        info = self._sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO_HEAD.size)
        queued, limit = _MEMINFO_HEAD.unpack(info)
        return queued, limit

    def set_reliable(self, on: bool) -> None:
        """Ask the kernel not to lose events silently on our behalf.

        With ``NETLINK_BROADCAST_ERROR`` a conntrack change whose event cannot be delivered
        is held back and redelivered by the kernel; ``NETLINK_NO_ENOBUFS`` stops the socket
        from reporting overruns, which can then no longer happen.
        """
        for opt in (NETLINK_BROADCAST_ERROR, NETLINK_NO_ENOBUFS):
            self._sock.setsockopt(SOL_NETLINK, opt, int(on))

    def set_membership(self, group: int, member: bool) -> None:
        """Join or leave a multicast group."""
        opt = NETLINK_ADD_MEMBERSHIP if member else NETLINK_DROP_MEMBERSHIP
        self._sock.setsockopt(SOL_NETLINK, opt, group)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NetlinkSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    # -- receiving ----------------------------------------------------------------------
    async def recv_datagrams(self, max_datagrams: int = 512) -> list[bytes] | Overrun:
        """Wait for data, then drain up to ``max_datagrams`` datagrams without blocking.

        Returns at least one datagram, or :data:`OVERRUN` (datagrams already drained in
        this batch are dropped too: the caller resyncs from a dump anyway).
        """
        sock, view, buf = self._sock, self._view, self._buf
        while True:
            await trio.lowlevel.wait_readable(sock)
            out: list[bytes] = []
            for _ in range(max_datagrams):
                try:
                    # recv() would allocate RECV_SIZE bytes per call, above malloc's mmap
                    # threshold: an mmap/munmap per event (~9 µs). Reuse one buffer instead.
                    size = sock.recv_into(buf)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        return OVERRUN
                    raise
                out.append(view[:size].tobytes())
            if out:
                return out

    async def recv_batch(self, max_datagrams: int = 512) -> list[Message] | Overrun:
        """Like :meth:`recv_datagrams`, split into messages (at least one, or OVERRUN)."""
        while True:
            datagrams = await self.recv_datagrams(max_datagrams)
            if isinstance(datagrams, Overrun):
                return OVERRUN
            out: list[Message] = []
            for data in datagrams:
                out += parse_messages(data)
            if out:
                return out

    # -- requests -----------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        # Netlink writes to the kernel are processed synchronously inside sendmsg; they do
        # not block on the peer, so a non-blocking send only fails for real errors.
        self._sock.send(data)

    def encode(self, req: Request, seq: int) -> bytes:
        length = 16 + len(req.payload)
        return (
            _pack_nlmsghdr(length, req.type, req.flags | NLM_F_REQUEST, seq, 0)
            + req.payload
            + b"\0" * (-length & 3)
        )

    async def request(self, req: Request, what: str = "") -> list[Message]:
        """Send one request and collect its replies until the ack (or DONE for a dump).

        Raises :class:`NetlinkError` when the kernel answers with an error.
        """
        replies: list[Message] = []
        async for chunk in self.request_chunks(req, what):
            replies += chunk
        return replies

    async def request_chunks(self, req: Request, what: str = "") -> AsyncIterator[list[Message]]:
        """Like :meth:`request`, yielding replies as they arrive, one received batch at a time.

        A dump of a million flows then never sits in memory whole: the caller digests each
        chunk before the next is read.
        """
        seq = self.next_seq()
        flags = req.flags | NLM_F_ACK
        self._send(self.encode(Request(req.type, flags, req.payload), seq))
        dump = (req.flags & NLM_F_DUMP) == NLM_F_DUMP
        while True:
            batch = await self.recv_batch()
            if batch is OVERRUN:
                raise NetlinkError(errno.ENOBUFS, what or "request", "reply overran the buffer")
            assert not isinstance(batch, Overrun)
            replies: list[Message] = []
            for msg in batch:
                if msg.seq != seq:
                    continue  # a late reply to an earlier, abandoned request
                if msg.type == NLMSG_ERROR:
                    err, ext = _error_of(msg)
                    if err:
                        raise NetlinkError(err, what, ext)
                    if not dump:
                        yield replies
                        return
                elif msg.type == NLMSG_DONE:
                    # A dump that failed part-way says so in DONE's payload (an errno).
                    if msg.end - msg.offset >= 4:
                        err = -_ERRNO.unpack_from(msg.data, msg.offset)[0]
                        if err > 0:
                            raise NetlinkError(err, what, "dump ended early")
                    yield replies
                    return
                elif msg.type != NLMSG_NOOP:
                    replies.append(msg)
            if replies:
                yield replies

    async def dump(self, req: Request, what: str = "dump") -> list[Message]:
        return await self.request(self._as_dump(req), what)

    def dump_chunks(self, req: Request, what: str = "dump") -> AsyncIterator[list[Message]]:
        return self.request_chunks(self._as_dump(req), what)

    @staticmethod
    def _as_dump(req: Request) -> Request:
        return Request(req.type, req.flags | NLM_F_DUMP, req.payload)

    async def batch(
        self, reqs: Iterable[Request], *, max_bytes: int = MAX_BATCH_BYTES
    ) -> list[NetlinkError | None]:
        """Send many requests, several per ``sendmsg``; one result per request, in order.

        Only the last request of each chunk asks for an ack: the kernel handles a chunk in
        order, so that ack means every earlier request in it is done, and failures arrive
        as individual error messages carrying their own sequence number.

        ``reqs`` is consumed lazily, and while the kernel works through one full chunk
        (inside ``sendmsg``, in a worker thread, without the GIL) the next one is taken
        from ``reqs`` and encoded: a commit then costs about the kernel's time, not the
        kernel's plus ours.
        """
        results: list[NetlinkError | None] = []
        it = iter(reqs)
        carry: Request | None = None
        in_flight: _Write | None = None
        while True:
            chunk, carry = self._encode_chunk(it, carry, max_bytes)
            if in_flight is not None:
                await in_flight.done()
                await self._collect_acks(results, *in_flight.span)
                in_flight = None
            if chunk is None:
                return results
            data, first_seq, last_seq = chunk
            span = (len(results), first_seq, last_seq)
            results += [None] * (last_seq - first_seq + 1)
            if carry is not None and self._threaded_writes:
                in_flight = _Write(self._sock, data, span)  # more follows: overlap it
            else:
                self._send(data)
                await self._collect_acks(results, *span)

    @property
    def _threaded_writes(self) -> bool:
        """Only a kernel socket takes a write without blocking; a unit test's socketpair
        may not, and plays the kernel in the same thread."""
        return self._sock.family == socket.AF_NETLINK

    def _encode_chunk(
        self, it: Iterator[Request], carry: Request | None, max_bytes: int
    ) -> tuple[tuple[bytes, int, int] | None, Request | None]:
        """The next requests from ``carry`` and ``it`` as one write of at most ``max_bytes``
        (or one request, if bigger), only the last asking for an ack: (data, first and
        last sequence number) or None when there are no more, and the request that did
        not fit.  :meth:`encode` and :meth:`next_seq` inlined: a commit encodes ~100k."""
        if carry is None:
            carry = next(it, None)
            if carry is None:
                return None, None
        if self._seq > 0xFFFFFFFF - max_bytes // 16:
            self._seq = 0  # keep the chunk's sequence numbers contiguous
        parts: list[bytes] = []
        add = parts.append
        seq = first = self._seq + 1
        mtype, flags, payload = carry
        size = 0
        while True:
            length = 16 + len(payload)
            pad = -length & 3
            size += length + pad
            add(_pack_nlmsghdr(length, mtype, flags | NLM_F_REQUEST, seq, 0))
            add(payload)
            if pad:
                add(_PADDING[pad])
            nxt = next(it, None)
            if nxt is None or size + 20 + len(nxt.payload) > max_bytes:
                break
            seq += 1
            mtype, flags, payload = nxt
        # the last one asks for the ack: its header is the third- or second-last part
        at = -3 if pad else -2
        parts[at] = _pack_nlmsghdr(length, mtype, flags | NLM_F_REQUEST | NLM_F_ACK, seq, 0)
        self._seq = seq
        return (b"".join(parts), first, seq), nxt

    async def _collect_acks(
        self, results: list[NetlinkError | None], start: int, first_seq: int, last_seq: int
    ) -> None:
        while True:
            batch = await self.recv_batch()
            if batch is OVERRUN:
                raise NetlinkError(errno.ENOBUFS, "batch", "error replies overran the buffer")
            assert not isinstance(batch, Overrun)
            for msg in batch:
                if msg.type != NLMSG_ERROR:
                    continue
                seq = msg.seq
                if not first_seq <= seq <= last_seq:
                    continue
                err, ext = _error_of(msg)
                if err:
                    results[start + seq - first_seq] = NetlinkError(err, "", ext)
                if seq == last_seq:
                    return
