"""The daemon's UNIX control socket: JSON lines in, JSON lines out.

One request per line, ``{"cmd": "...", ...}``.  A reply is zero or more item lines
(``{"item": {...}}``, used by dumps so a million flows stream instead of building one huge
document) followed by exactly one final line ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``.  A connection may carry several requests in turn.

The socket lives in a runtime directory the daemon creates (0700) and is itself 0600:
whoever can talk to it can flush the conntrack table.  Shutdown is two-phase so that a
``commit`` or ``dump`` in progress finishes: :meth:`ControlServer.stop_accepting` closes the
listener at once, in-flight requests get a grace period, then they are cancelled.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

__all__ = ["ControlError", "ControlServer", "Handler", "Send", "claim_socket_path"]

log = logging.getLogger("nfsyncd.control")

JsonDict = dict[str, Any]
#: streams one item of a reply to the client
Send = Callable[[JsonDict], Awaitable[None]]
#: answers one request; returns the fields of the final ``ok`` line
Handler = Callable[[JsonDict, Send], Awaitable[JsonDict]]

MAX_REQUEST = 64 * 1024


class ControlError(Exception):
    """A request the daemon refuses; the message goes back to the client as ``error``."""


@dataclass(slots=True)
class ControlStats:
    connections: int = 0
    requests: dict[str, int] = field(default_factory=dict)
    errors: int = 0


def claim_socket_path(path: str) -> bool:
    """Make ``path`` free for binding; returns whether the runtime directory was created.

    A stale socket from a crashed daemon is removed, but a live one (something answers) is
    an error: two daemons on one table would fight over it.
    """
    directory = os.path.dirname(path) or "."
    created = False
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700)
        created = True
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise OSError(
                errno.EEXIST,
                f"{path} exists and is not a socket; remove it or "
                "choose another general.control_socket",
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: left over from a daemon that died
        else:
            raise OSError(
                errno.EADDRINUSE,
                f"another nfsyncd is already running on {path}; "
                "stop it first (nfsyncctl -C FILE -k) or use another control_socket",
            )
        finally:
            probe.close()
    return created


class ControlServer:
    def __init__(self, path: str, handler: Handler, *, grace: float = 5.0) -> None:
        self.path = path
        self._handler = handler
        self._grace = grace
        self._accept_scope = trio.CancelScope()
        self.stats = ControlStats()
        self.created_dir = False
        self._bound = False

    def bind(self) -> trio.socket.SocketType:
        """Bind and listen now (synchronously), so the socket exists before READY=1."""
        self.created_dir = claim_socket_path(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)  # the socket file is born 0600, with no window open to others
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        self._bound = True
        sock.listen(100)
        return trio.socket.from_stdlib_socket(sock)

    def stop_accepting(self) -> None:
        self._accept_scope.cancel()

    async def serve(
        self,
        sock: trio.socket.SocketType,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept until :meth:`stop_accepting`, then let in-flight requests finish (bounded)."""
        listener = trio.SocketListener(sock)
        async with trio.open_nursery() as handlers:
            with self._accept_scope:
                task_status.started()
                while True:
                    stream = await listener.accept()
                    self.stats.connections += 1
                    handlers.start_soon(self._connection, stream)
            await listener.aclose()
            self.remove_socket()
            handlers.cancel_scope.deadline = trio.current_time() + self._grace

    def remove_socket(self) -> None:
        if self._bound:
            self._bound = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            if self.created_dir:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.dirname(self.path))

    async def _connection(self, stream: trio.SocketStream) -> None:
        buf = b""
        try:
            async with stream:
                while True:
                    while b"\n" not in buf:
                        if len(buf) > MAX_REQUEST:
                            await self._send(stream, {"ok": False, "error": "request too long"})
                            return
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            return
                        buf += chunk
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        await self._request(stream, line)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; nothing to answer

    async def _request(self, stream: trio.SocketStream, line: bytes) -> None:
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                raise ControlError('a request is a JSON object with a "cmd" string')
        except (ValueError, ControlError) as exc:
            self.stats.errors += 1
            await self._send(stream, {"ok": False, "error": f"bad request: {exc}"})
            return
        cmd = req["cmd"]
        self.stats.requests[cmd] = self.stats.requests.get(cmd, 0) + 1

        out = bytearray()

        async def send(item: JsonDict) -> None:
            # Items are coalesced into ~64 KiB writes: a dump of 1M flows must not cost
            # 1M syscalls, but must not sit in memory whole either.
            out.extend(_encode({"item": item}))
            if len(out) >= 65536:
                await stream.send_all(bytes(out))
                out.clear()

        try:
            result = await self._handler(req, send)
            if out:
                await stream.send_all(bytes(out))
                out.clear()
        except ControlError as exc:
            self.stats.errors += 1
            if out:
                await stream.send_all(bytes(out))
            await self._send(stream, {"ok": False, "error": str(exc)})
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception as exc:  # a bug must not take the daemon down with it
            self.stats.errors += 1
            log.exception("control request %r failed", cmd)
            await self._send(stream, {"ok": False, "error": f"internal error: {exc}"})
            return
        await self._send(stream, {"ok": True, **result})

    @staticmethod
    async def _send(stream: trio.SocketStream, obj: JsonDict) -> None:
        await stream.send_all(_encode(obj))


def _encode(obj: JsonDict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"
