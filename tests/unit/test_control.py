"""The control socket server, HTTP listener, metrics text and sd_notify, without root."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from nfsyncd.control import ControlError, ControlServer, Send
from nfsyncd.http import parse_listen, serve_http
from nfsyncd.metrics import Metric, render
from nfsyncd.sdnotify import Notifier


async def _handler(req: dict[str, Any], send: Send) -> dict[str, Any]:
    if req["cmd"] == "items":
        for i in range(req["n"]):
            await send({"i": i})
        return {"count": req["n"]}
    if req["cmd"] == "slow":
        await trio.sleep(0.3)
        return {"slow": True}
    if req["cmd"] == "boom":
        raise RuntimeError("a bug")
    raise ControlError(f"unknown command {req['cmd']!r}")


async def _ask(path: Path, *lines: bytes) -> list[dict[str, Any]]:
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        await stream.send_all(b"".join(lines))
        await stream.send_eof()
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return [json.loads(x) for x in data.splitlines()]


async def test_requests_replies_and_errors(tmp_path: Path) -> None:
    """Streamed items then one final line; refused, malformed and failing requests get an
    error line and are counted; the connection carries several requests in turn."""
    path = tmp_path / "run" / "c.sock"
    server = ControlServer(str(path), _handler)
    sock = server.bind()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, sock)
        replies = await _ask(
            path,
            b'{"cmd": "items", "n": 3}\n',
            b"not json\n",
            b'{"cmd": "nope"}\n',
            b'{"cmd": "boom"}\n',
            b'["cmd"]\n',
        )
        assert replies[:4] == [
            {"item": {"i": 0}},
            {"item": {"i": 1}},
            {"item": {"i": 2}},
            {"ok": True, "count": 3},
        ]
        assert replies[4]["ok"] is False and replies[4]["error"].startswith("bad request")
        assert replies[5] == {"ok": False, "error": "unknown command 'nope'"}
        assert replies[6] == {"ok": False, "error": "internal error: a bug"}
        assert replies[7]["ok"] is False
        assert server.stats.errors == 4
        assert server.stats.requests == {"items": 1, "nope": 1, "boom": 1}
        many = await _ask(path, b'{"cmd": "items", "n": 20000}\n')
        assert len(many) == 20001 and many[-1] == {"ok": True, "count": 20000}
        server.stop_accepting()
    assert not path.exists() and not path.parent.exists()


async def test_in_flight_requests_finish_after_stop_accepting(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    server = ControlServer(str(path), _handler, grace=5)
    sock = server.bind()
    result: list[dict[str, Any]] = []

    async def slow_client() -> None:
        result.extend(await _ask(path, b'{"cmd": "slow"}\n'))

    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, sock)
        nursery.start_soon(slow_client)
        await trio.testing.wait_all_tasks_blocked()
        server.stop_accepting()
    assert result == [{"ok": True, "slow": True}]
    assert not path.exists()
    assert path.parent.exists()  # not created by the server: left alone


async def test_stale_socket_is_replaced_and_a_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a crashed daemon's leftover
    server = ControlServer(str(path), _handler)
    sock = server.bind()
    try:
        with pytest.raises(OSError) as exc:
            ControlServer(str(path), _handler).bind()
        assert exc.value.errno == errno.EADDRINUSE
        assert "another nfsyncd is already running" in str(exc.value)
    finally:
        sock.close()
        server.remove_socket()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="exists and is not a socket"):
        ControlServer(str(path), _handler).bind()


async def test_http_routes(tmp_path: Path) -> None:
    routes = {"/healthz": lambda: (200, "text/plain", b"ok\n")}

    async def get(port: int, request: bytes) -> bytes:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            data = b""
            while chunk := await stream.receive_some(4096):
                data += chunk
        return data

    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(serve_http, "127.0.0.1:0", routes)
        ok = await get(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.0 200 OK\r\n") and ok.endswith(b"\r\n\r\nok\n")
        assert b"Content-Length: 3\r\n" in ok
        assert (await get(port, b"GET /x HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 404")
        assert (await get(port, b"POST /healthz HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 405")
        assert (await get(port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.0 400")
        head = await get(port, b"HEAD /healthz HTTP/1.0\r\n\r\n")
        assert head.endswith(b"\r\n\r\n") and b"Content-Length: 3" in head
        nursery.cancel_scope.cancel()


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9477") == ("127.0.0.1", 9477)
    assert parse_listen("[::1]:0") == ("::1", 0)
    with pytest.raises(ValueError):
        parse_listen("localhost")


def test_metrics_text_format() -> None:
    text = render(
        [
            Metric("a_total", "counter", "Things.").add(3, kind="new").add(1.5, kind='q"x'),
            Metric("b", "gauge", "Level.").add(7),
        ]
    )
    assert text == (
        "# HELP a_total Things.\n# TYPE a_total counter\n"
        'a_total{kind="new"} 3\na_total{kind="q\\"x"} 1.5\n'
        "# HELP b Level.\n# TYPE b gauge\nb 7\n"
    )


def test_sd_notify_messages_and_watchdog_interval(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    with sock:
        n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "3000000"})
        assert n.enabled and n.watchdog_interval == 1.5
        n.ready("all good")
        assert sock.recv(100) == b"READY=1\nSTATUS=all good"
        n.reloading()
        msg = sock.recv(100).decode()
        assert msg.startswith("RELOADING=1\nMONOTONIC_USEC=")
        n.stopping()
        assert sock.recv(100) == b"STOPPING=1"
        n.close()
    assert Notifier({}).enabled is False
    assert Notifier({"WATCHDOG_USEC": "100", "WATCHDOG_PID": "1"}).watchdog_interval is None
