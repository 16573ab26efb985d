"""A minimal HTTP/1.0 server for ``/healthz``, ``/readyz`` and ``/metrics``.

Probes and Prometheus send one small GET and read one reply, so a full HTTP stack would
only add start-up time and dependencies.  Each connection gets one response and is closed;
slow or oversized requests are cut off so a misbehaving client cannot pin the daemon.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

__all__ = ["Response", "Route", "parse_listen", "serve_http"]

log = logging.getLogger("nfsyncd.http")

#: status code, content type, body
Response = tuple[int, str, bytes]
Route = Callable[[], Response]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}
_MAX_REQUEST = 8192
_REQUEST_TIMEOUT = 5.0


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9477"`` or ``"[::1]:9477"`` into host and port."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{listen!r}: expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


async def serve_http(
    listen: str,
    routes: dict[str, Route],
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``routes`` on ``listen``; reports the bound address (port 0 picks one)."""
    host, port = parse_listen(listen)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    task_status.started((bound[0], bound[1]))

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(_REQUEST_TIMEOUT):
                await _answer(stream, routes)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await stream.aclose()

    await trio.serve_listeners(handle, listeners)


async def _answer(stream: trio.SocketStream, routes: dict[str, Route]) -> None:
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > _MAX_REQUEST:
            break
    line = data.split(b"\n", 1)[0].decode("latin-1").strip()
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        status, ctype, body = 400, "text/plain", b"bad request\n"
    elif parts[0] not in ("GET", "HEAD"):
        status, ctype, body = 405, "text/plain", b"only GET\n"
    else:
        route = routes.get(parts[1].split("?", 1)[0])
        if route is None:
            status, ctype, body = 404, "text/plain", b"not found; try /healthz /readyz /metrics\n"
        else:
            status, ctype, body = route()
    head = (
        f"HTTP/1.0 {status} {_REASONS.get(status, '')}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    if parts and parts[0] == "HEAD":
        body = b""  # HEAD: the length of what GET would send, and no body
    await stream.send_all(head.encode() + body)
