"""Traffic that measures a failover the way an operator sees it.

Every kind of traffic is a separate process started inside a lab namespace (``python -m
nfsyncd.lab.failover_traffic KIND ...``), so each measures with its own sockets, its own
scheduler slice, and the kernel path a real application would use. Clients print JSON
lines on stdout: ``{"event": "ready"}`` once their flow exists (the gateway has state for
it), ``{"event": "stat", ...}`` every 0.25 s, ``{"event": "result", ...}`` when stopped
with SIGTERM. Times in results are seconds; ``*_at`` fields are wall-clock (time.time()).

Python API (used by the e2e tests, ``make demo`` and the failover benchmark):

* :class:`TrafficServer` ``(ns, address, dir)``: TCP stream sink/source (``STREAM_PORT``),
  TCP echo for the interactive session (``ECHO_PORT``), UDP request/response
  (``UDP_PORT``). Start one in each namespace that clients connect to.
* :class:`TcpStream`, :class:`Interactive`, :class:`UdpRequests`, :class:`IcmpEcho`: the
  clients. ``start()`` returns once ready; ``snapshot()`` is the latest stat line (or
  None); ``stop()`` returns the final result dict. Result keys:

  - TcpStream: ``bytes_sent``, ``bytes_received``, ``server_bytes_received``,
    ``max_stall_s`` (the longest time either direction received nothing, the ongoing
    stall included), ``max_stall_down_s``, ``max_stall_up_s``, ``current_stall_s``,
    ``resets`` (1 once the connection broke: RST or unexpected EOF), ``error``.
  - Interactive: ``requests``, ``answered``, ``max_latency_s`` (ongoing request included),
    ``resets``, ``error``.
  - UdpRequests / IcmpEcho: ``sent``, ``answered``, ``lost`` (not answered within
    ``timeout``; the last in-flight ones do not count), ``max_gap_s`` (longest time
    without any answer).
* :class:`FtpServer` ``(ns, address, root, port=21)``: a real pyftpdlib server
  (anonymous, read/write, passive ports ``FTP_PASSIVE_PORTS``).
* :class:`FtpAnnounced`: an ftplib-driven session that logs in, lists, announces data
  connections *before* the failover (``PASV`` answered, so the gateway holds an
  expectation) and, after :meth:`FtpAnnounced.go`, opens them, lists and transfers files
  again in PASV and PORT mode on the same control connection. :class:`LftpSession`: the
  real lftp client doing ``ls``/``get`` before and after the failover on one control
  connection (it waits for a go-file in between).
"""

from __future__ import annotations

import argparse
import contextlib
import ftplib
import json
import logging
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from .netns import Netns

__all__ = [
    "ECHO_PORT",
    "FTP_PASSIVE_PORTS",
    "STREAM_PORT",
    "UDP_PORT",
    "FtpAnnounced",
    "FtpServer",
    "IcmpEcho",
    "Interactive",
    "LftpSession",
    "TcpStream",
    "TrafficError",
    "TrafficServer",
    "UdpRequests",
    "echo_request",
]

STREAM_PORT = 5001
ECHO_PORT = 5002
UDP_PORT = 5300
#: wide on purpose: the kernel's ftp helper drops a 227/PORT reply whose expectation clashes
#: with a live one of another control connection (same client, same server port), so a
#: narrow range shared by concurrent and back-to-back sessions makes reply drops likely
FTP_PASSIVE_PORTS = range(30000, 31000)
#: One stream frame; the server's frames start with its own counters.
FRAME = 1024
_FRAME_HEAD = struct.Struct("!QQ")  # server bytes received, server max gap (µs)
STAT_INTERVAL = 0.25
_REPO = Path(__file__).resolve().parents[2]


class TrafficError(RuntimeError):
    """A traffic process did not start or did not report; carries its stderr."""


# ==========================================================================================
# Process side (runs inside the namespaces)
# ==========================================================================================


class _Stop:
    """SIGTERM/SIGINT set a flag the loops poll (no exceptions in the middle of a send)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: self.event.set())
        signal.signal(signal.SIGINT, lambda *_: self.event.set())

    def __bool__(self) -> bool:
        return self.event.is_set()


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class _Gap:
    """Longest interval between arrivals, plus the one still running."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.max = 0.0
        self.lock = threading.Lock()

    def hit(self) -> None:
        now = time.monotonic()
        with self.lock:
            if self.last is not None:
                self.max = max(self.max, now - self.last)
            self.last = now

    def current(self) -> float:
        with self.lock:
            return 0.0 if self.last is None else time.monotonic() - self.last

    def worst(self) -> float:
        return max(self.max, self.current())


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError("connection closed by peer (EOF)")
        buf += chunk
    return buf


def _serve_stream(conn: socket.socket, interval: float) -> None:
    gap = _Gap()
    received = [0]
    done = threading.Event()

    def reader() -> None:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                received[0] += len(data)
                gap.hit()
        except OSError:
            pass
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    pad = b"\0" * (FRAME - _FRAME_HEAD.size)
    try:
        while not done.wait(interval):
            conn.sendall(_FRAME_HEAD.pack(received[0], int(gap.max * 1e6)) + pad)
    except OSError:
        pass
    conn.close()


def _serve_echo(conn: socket.socket) -> None:
    with conn, contextlib.suppress(OSError):
        while data := conn.recv(4096):
            conn.sendall(data)


def _tcp_listener(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(64)
    return sock


def run_server(args: argparse.Namespace) -> None:
    stop = _Stop()
    stream = _tcp_listener(args.address, args.stream_port)
    echo = _tcp_listener(args.address, args.echo_port)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((args.address, args.udp_port))

    def accept(listener: socket.socket, handler: Any) -> None:
        while True:
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    threading.Thread(
        target=accept, args=(stream, lambda c: _serve_stream(c, args.interval)), daemon=True
    ).start()
    threading.Thread(target=accept, args=(echo, _serve_echo), daemon=True).start()

    def udp_echo() -> None:
        while True:
            data, peer = udp.recvfrom(2048)
            udp.sendto(data, peer)

    threading.Thread(target=udp_echo, daemon=True).start()
    _emit("ready", address=args.address)
    stop.event.wait()


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=2.0)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            continue
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def _stat_loop(stop: _Stop, report: Any) -> None:
    while not stop.event.wait(STAT_INTERVAL):
        _emit("stat", **report())
    _emit("result", **report())


def run_stream(args: argparse.Namespace) -> None:
    stop = _Stop()
    sock = _connect(args.host, args.port, args.connect_timeout)
    state: dict[str, Any] = {"sent": 0, "received": 0, "server_received": 0}
    state.update(server_gap=0.0, error=None, resets=0)
    down = _Gap()
    broken = threading.Event()

    def fail(exc: BaseException) -> None:
        if not broken.is_set() and not stop:
            state["error"] = f"{type(exc).__name__}: {exc}"
            state["resets"] = 1
            broken.set()

    def reader() -> None:
        try:
            while True:
                frame = _recv_exact(sock, FRAME)
                rx, gap_us = _FRAME_HEAD.unpack_from(frame)
                state["received"] += FRAME
                state["server_received"] = rx
                state["server_gap"] = gap_us / 1e6
                down.hit()
        except OSError as exc:
            fail(exc)

    def writer() -> None:
        chunk = b"x" * FRAME
        try:
            while not stop and not broken.is_set():
                sock.sendall(chunk)
                state["sent"] += FRAME
                time.sleep(args.interval)
        except OSError as exc:
            fail(exc)

    _recv_exact(sock, FRAME)  # the server's first frame: the gateway has seen both ways
    state["received"] += FRAME
    down.hit()
    threading.Thread(target=reader, daemon=True).start()
    threading.Thread(target=writer, daemon=True).start()
    _emit("ready")

    def report() -> dict[str, Any]:
        current = down.current()
        return {
            "kind": "tcp-stream",
            "bytes_sent": state["sent"],
            "bytes_received": state["received"],
            "server_bytes_received": state["server_received"],
            "max_stall_down_s": round(down.worst(), 4),
            "max_stall_up_s": round(state["server_gap"], 4),
            "max_stall_s": round(max(down.worst(), state["server_gap"]), 4),
            "current_stall_s": round(current, 4),
            "resets": state["resets"],
            "error": state["error"],
            "at": time.time(),
        }

    _stat_loop(stop, report)
    with contextlib.suppress(OSError):
        sock.close()


def run_interactive(args: argparse.Namespace) -> None:
    stop = _Stop()
    sock = _connect(args.host, args.port, args.connect_timeout)
    state: dict[str, Any] = {"requests": 0, "answered": 0, "max": 0.0, "error": None}
    state.update(resets=0, pending_since=None)

    def loop() -> None:
        n = 0
        try:
            while not stop:
                n += 1
                line = f"request {n}\n".encode()
                state["pending_since"] = time.monotonic()
                state["requests"] += 1
                sock.sendall(line)
                if _recv_exact(sock, len(line)) != line:
                    raise ConnectionError("echo mismatch")
                latency = time.monotonic() - state["pending_since"]
                state["pending_since"] = None
                state["answered"] += 1
                state["max"] = max(state["max"], latency)
                if n == 1:
                    _emit("ready")
                time.sleep(args.interval)
        except OSError as exc:
            if not stop:
                state["error"] = f"{type(exc).__name__}: {exc}"
                state["resets"] = 1

    threading.Thread(target=loop, daemon=True).start()

    def report() -> dict[str, Any]:
        since = state["pending_since"]
        ongoing = 0.0 if since is None or state["error"] else time.monotonic() - since
        return {
            "kind": "interactive",
            "requests": state["requests"],
            "answered": state["answered"],
            "max_latency_s": round(max(state["max"], ongoing), 4),
            "resets": state["resets"],
            "error": state["error"],
            "at": time.time(),
        }

    _stat_loop(stop, report)


class _RequestTracker:
    """Shared bookkeeping of the datagram clients: sent, answered, lost, longest silence."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.sent: dict[int, float] = {}
        self.answered = 0
        self.lost = 0
        self.count = 0
        self.gap = _Gap()
        self.lock = threading.Lock()

    def on_send(self, seq: int) -> None:
        with self.lock:
            self.sent[seq] = time.monotonic()
            self.count += 1
            expired = [s for s, t in self.sent.items() if time.monotonic() - t > self.timeout]
            for s in expired:
                del self.sent[s]
                self.lost += 1

    def on_answer(self, seq: int) -> bool:
        with self.lock:
            if self.sent.pop(seq, None) is None:
                return False
            self.answered += 1
        self.gap.hit()
        return True

    def report(self, kind: str) -> dict[str, Any]:
        with self.lock:
            return {
                "kind": kind,
                "sent": self.count,
                "answered": self.answered,
                "lost": self.lost,
                "max_gap_s": round(self.gap.worst(), 4),
                "at": time.time(),
            }


def _datagram_client(
    stop: _Stop,
    kind: str,
    tracker: _RequestTracker,
    interval: float,
    send: Any,
    receive: Any,
) -> None:
    ready = threading.Event()

    def receiver() -> None:
        while True:
            seq = receive()
            if seq is not None and tracker.on_answer(seq):
                ready.set()

    threading.Thread(target=receiver, daemon=True).start()
    seq = 0
    while not ready.is_set():  # the first answer proves the path (and the gateway state)
        seq = (seq + 1) & 0xFFFF
        tracker.on_send(seq)
        send(seq)
        if ready.wait(0.2):
            break
    _emit("ready")

    def sender() -> None:
        nonlocal seq
        while not stop.event.wait(interval):
            seq = (seq + 1) & 0xFFFF
            tracker.on_send(seq)
            with contextlib.suppress(OSError):
                send(seq)

    threading.Thread(target=sender, daemon=True).start()
    _stat_loop(stop, lambda: tracker.report(kind))


def run_udp(args: argparse.Namespace) -> None:
    stop = _Stop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((args.host, args.port))
    tracker = _RequestTracker(args.timeout)

    def send(seq: int) -> None:
        sock.send(struct.pack("!H", seq) + b"\x01\x00\x00\x01" + b"\0" * 26)  # DNS-ish size

    def receive() -> int | None:
        try:
            data = sock.recv(2048)
        except OSError:
            time.sleep(0.01)  # ICMP errors surface here; keep listening
            return None
        return int(struct.unpack_from("!H", data)[0]) if len(data) >= 2 else None

    _datagram_client(stop, "udp", tracker, args.interval, send, receive)


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes, *, v6: bool = False) -> bytes:
    """An ICMP (or ICMPv6) echo request for a raw socket. Only ICMP carries our checksum:
    for ICMPv6 the kernel fills it in (it covers a pseudo-header we do not see)."""
    etype = 128 if v6 else 8
    packet = struct.pack("!BBHHH", etype, 0, 0, ident, seq) + payload
    if v6:
        return packet
    csum = _icmp_checksum(packet)
    return struct.pack("!BBHHH", etype, 0, csum, ident, seq) + payload


def run_icmp(args: argparse.Namespace) -> None:
    stop = _Stop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    tracker = _RequestTracker(args.timeout)

    def send(seq: int) -> None:
        sock.sendto(echo_request(ident, seq, b"nfsyncd-failover"), (args.host, 0))

    def receive() -> int | None:
        data = sock.recv(2048)
        ihl = (data[0] & 0x0F) * 4
        icmp_type, _, _, rid, seq = struct.unpack_from("!BBHHH", data, ihl)
        return int(seq) if icmp_type == 0 and rid == ident else None

    _datagram_client(stop, "icmp", tracker, args.interval, send, receive)


def ftp_handler(root: str, *, timeout: int = 300) -> type[Any]:
    """The pyftpdlib handler of the lab's and the tests' FTP servers: anonymous read/write
    on ``root``, passive ports from :data:`FTP_PASSIVE_PORTS`, data connections from the
    SNAT address allowed, and pyftpdlib's active-mode file descriptor bug worked around."""
    from pyftpdlib.authorizers import DummyAuthorizer  # type: ignore[import-untyped]
    from pyftpdlib.handlers import FTPHandler  # type: ignore[import-untyped]

    class ActiveDTP(FTPHandler.active_dtp):  # type: ignore[misc]
        def del_channel(self, map: object = None) -> None:
            # pyftpdlib (2.2) hands a connected active data channel's socket to the
            # transfer but keeps its descriptor number, and unregisters that number again
            # when this object closes (at the session's logout); by then another socket
            # may own the number (another session's passive listener or transfer), which
            # then never gets an event again. Only unregister what is still ours.
            if self.ioloop.socket_map.get(self._fileno) is self:
                super().del_channel(map)

    authorizer = DummyAuthorizer()
    authorizer.add_anonymous(root, perm="elradfmwMT")

    class Handler(FTPHandler):  # type: ignore[misc]
        pass

    Handler.authorizer = authorizer
    Handler.active_dtp = ActiveDTP
    Handler.passive_ports = list(FTP_PASSIVE_PORTS)
    Handler.timeout = timeout
    Handler.permit_foreign_addresses = True  # PORT names the SNAT address, not the peer's
    return Handler


def run_ftp_server(args: argparse.Namespace) -> None:
    from pyftpdlib.servers import FTPServer  # type: ignore[import-untyped]

    # pyftpdlib logs each session, transfer and refused data connection at INFO: the
    # lab shows that log when an FTP scenario fails
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    server = FTPServer((args.address, args.port), ftp_handler(args.root))
    signal.signal(signal.SIGTERM, lambda *_: (server.close_all(), sys.exit(0)))
    _emit("ready", address=args.address, port=args.port)
    server.serve_forever(handle_exit=False)


def _ftp_transfer(ftp: ftplib.FTP, passive: bool, files: list[str]) -> dict[str, Any]:
    ftp.set_pasv(passive)
    names = ftp.nlst()
    sizes = {}
    for name in files:
        chunks: list[bytes] = []
        ftp.retrbinary(f"RETR {name}", chunks.append)
        sizes[name] = sum(map(len, chunks))
    return {"listed": sorted(names), "retrieved": sizes}


def run_ftp_announced(args: argparse.Namespace) -> None:
    """Announce a PASV data connection, wait for "go" on stdin, then use it and go on."""
    result: dict[str, Any] = {"kind": "ftp-announced", "error": None, "steps": []}
    files = args.files.split(",")
    try:
        ftp = ftplib.FTP()
        ftp.connect(args.host, args.port, timeout=args.timeout)
        ftp.login()
        result["steps"].append({"before": _ftp_transfer(ftp, True, files)})
        # PASV answered: the gateway's ftp helper has made an expectation for this port.
        host, port = ftplib.parse227(ftp.sendcmd("PASV"))
        _emit("ready", announced=[host, port])
        line = sys.stdin.readline()
        if line.strip() != "go":
            raise RuntimeError(f"expected 'go' on stdin, got {line!r}")
        data = socket.create_connection((host, port), timeout=args.timeout)
        ftp.sendcmd("TYPE I")
        ftp.putcmd(f"RETR {files[0]}")
        reply = ftp.getresp()
        if not reply.startswith(("125", "150")):
            raise ftplib.error_reply(reply)
        received = b""
        while chunk := data.recv(65536):
            received += chunk
        data.close()
        ftp.voidresp()
        result["announced_transfer"] = len(received)
        result["steps"].append({"after_pasv": _ftp_transfer(ftp, True, files)})
        result["steps"].append({"after_port": _ftp_transfer(ftp, False, files)})
        stored = b"y" * 100_000
        ftp.set_pasv(True)
        ftp.storbinary("STOR uploaded.bin", _BytesReader(stored))
        result["stored"] = len(stored)
        ftp.quit()
    except (OSError, EOFError, ftplib.Error, RuntimeError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    _emit("result", **result)


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int = -1) -> bytes:
        n = len(self.data) if n < 0 else n
        out, self.data = self.data[:n], self.data[n:]
        return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="failover_traffic", description=__doc__)
    sub = p.add_subparsers(dest="kind", required=True)
    s = sub.add_parser("server")
    s.add_argument("--address", required=True)
    s.add_argument("--stream-port", type=int, default=STREAM_PORT)
    s.add_argument("--echo-port", type=int, default=ECHO_PORT)
    s.add_argument("--udp-port", type=int, default=UDP_PORT)
    s.add_argument("--interval", type=float, default=0.01)
    s.set_defaults(func=run_server)
    for name, func, interval in (
        ("stream", run_stream, 0.01),
        ("interactive", run_interactive, 0.05),
        ("udp", run_udp, 0.02),
    ):
        c = sub.add_parser(name)
        c.add_argument("--host", required=True)
        c.add_argument("--port", type=int, required=True)
        c.add_argument("--interval", type=float, default=interval)
        c.add_argument("--timeout", type=float, default=1.0)
        c.add_argument("--connect-timeout", type=float, default=10.0)
        c.set_defaults(func=func)
    c = sub.add_parser("icmp")
    c.add_argument("--host", required=True)
    c.add_argument("--interval", type=float, default=0.02)
    c.add_argument("--timeout", type=float, default=1.0)
    c.set_defaults(func=run_icmp)
    f = sub.add_parser("ftp-server")
    f.add_argument("--address", required=True)
    f.add_argument("--port", type=int, default=21)
    f.add_argument("--root", required=True)
    f.set_defaults(func=run_ftp_server)
    a = sub.add_parser("ftp-announced")
    a.add_argument("--host", required=True)
    a.add_argument("--port", type=int, default=21)
    a.add_argument("--files", required=True, help="comma-separated names to retrieve")
    a.add_argument("--timeout", type=float, default=20.0)
    a.set_defaults(func=run_ftp_announced)
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    args.func(args)


# ==========================================================================================
# Test-process side
# ==========================================================================================


class _Process:
    """One traffic process in a namespace whose JSON lines are collected by a thread."""

    kind = ""

    def __init__(self, ns: Netns, argv: list[str], *, stdin: bool = False) -> None:
        self.ns = ns
        self.argv = argv
        self.proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self._latest: dict[str, Any] | None = None
        self._result: dict[str, Any] | None = None
        self._ready: dict[str, Any] | None = None
        self._stderr: IO[str] | None = None
        self._want_stdin = stdin

    def start(self, timeout: float = 15.0) -> dict[str, Any]:
        """Start the process; return its ready line once the flow exists."""
        import tempfile

        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in kill())
        env = dict(os.environ, PYTHONPATH=str(_REPO), PYTHONUNBUFFERED="1")
        self.proc = self.ns.popen(
            sys.executable,
            "-m",
            "nfsyncd.lab.failover_traffic",
            *self.argv,
            stdin=subprocess.PIPE if self._want_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while self._ready is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.proc.poll() is not None and self._lines.empty()):
                self.kill()
                raise TrafficError(f"{self.kind} not ready: {self.stderr()}")
            with contextlib.suppress(queue.Empty):
                self._take(self._lines.get(timeout=min(remaining, 0.1)))
        return self._ready

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self._lines.put(json.loads(line))

    def _take(self, item: dict[str, Any]) -> None:
        event = item.pop("event", None)
        if event == "ready":
            self._ready = item
        elif event == "stat":
            self._latest = item
        elif event == "result":
            self._result = item

    def _drain(self) -> None:
        while True:
            try:
                self._take(self._lines.get_nowait())
            except queue.Empty:
                return

    def snapshot(self) -> dict[str, Any] | None:
        """The latest periodic stats (None before the first)."""
        self._drain()
        return self._latest

    def stderr(self, limit: int = 3000) -> str:
        """The last ``limit`` characters the process wrote to stderr."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()[-limit:]

    def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        """SIGTERM, then the final result."""
        if self.proc is None:
            raise TrafficError(f"{self.kind} was not started")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the process to report its result (and exit)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self._result is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise TrafficError(f"{self.kind} gave no result: {self.stderr()}")
            with contextlib.suppress(queue.Empty):
                self._take(self._lines.get(timeout=min(remaining, 0.1)))
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.kill()
        return self._result

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> _Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class TrafficServer(_Process):
    """The server side of the stream, interactive and UDP clients, bound to ``address``."""

    kind = "server"

    def __init__(self, ns: Netns, address: str) -> None:
        super().__init__(ns, ["server", "--address", address])
        self.address = address

    def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        self.kill()
        return {}


class TcpStream(_Process):
    """A long-lived TCP connection carrying a paced byte stream both ways (~100 KB/s each)."""

    kind = "tcp-stream"

    def __init__(self, ns: Netns, host: str, port: int = STREAM_PORT) -> None:
        super().__init__(ns, ["stream", "--host", host, "--port", str(port)])


class Interactive(_Process):
    """A request/response TCP session (a line every 50 ms, echoed), like an SSH session."""

    kind = "interactive"

    def __init__(self, ns: Netns, host: str, port: int = ECHO_PORT) -> None:
        super().__init__(ns, ["interactive", "--host", host, "--port", str(port)])


class UdpRequests(_Process):
    """DNS-like UDP requests every 20 ms on one socket; an answer within 1 s counts."""

    kind = "udp"

    def __init__(self, ns: Netns, host: str, port: int = UDP_PORT) -> None:
        super().__init__(ns, ["udp", "--host", host, "--port", str(port)])


class IcmpEcho(_Process):
    """ICMP echo every 20 ms (one ICMP id, so one conntrack entry); a reply within 1 s
    counts."""

    kind = "icmp"

    def __init__(self, ns: Netns, host: str) -> None:
        super().__init__(ns, ["icmp", "--host", host])


class FtpServer(_Process):
    """A real FTP server (pyftpdlib), anonymous read/write on ``root``."""

    kind = "ftp-server"

    def __init__(self, ns: Netns, address: str, root: Path, port: int = 21) -> None:
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(
            ns, ["ftp-server", "--address", address, "--port", str(port), "--root", str(root)]
        )
        self.address = address
        self.port = port
        self.root = root

    def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        self.kill()
        return {}


class FtpAnnounced(_Process):
    """An FTP session whose data connection is announced before the failover.

    ``start()`` returns once it has listed and retrieved ``files`` (PASV) and received the
    reply to a further PASV (the gateway now holds that expectation); :meth:`go` then lets
    it open that data connection and retrieve ``files[0]``, list and retrieve again in PASV
    and in PORT mode and store a file, all on the same control connection. The result has
    ``error`` (None on success), ``announced_transfer`` (bytes), ``steps``, ``stored``.
    """

    kind = "ftp-announced"

    def __init__(self, ns: Netns, host: str, files: list[str], port: int = 21) -> None:
        argv = ["ftp-announced", "--host", host, "--port", str(port), "--files", ",".join(files)]
        super().__init__(ns, argv, stdin=True)

    def go(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()


class LftpSession:
    """The real lftp client: ``ls`` and ``get`` (PASV, then PORT unless not
    ``port_before``), wait for the go-file, ``ls`` and ``get`` again (PASV and PORT) on the
    same control connection.

    With SNAT, the gateway's ftp NAT helper rewrites PORT (the address text changes
    length), so the control connection carries a TCP sequence adjustment from then on: a
    new primary must have it too or the control connection breaks after the failover.

    :meth:`start` returns once the first half is done; :meth:`go` creates the go-file;
    :meth:`wait` returns ``{"rc", "control_connections", "stdout", "stderr", "files"}``
    (``control_connections`` counts lftp's "Connecting to" lines: 1 means the control
    connection survived).
    """

    def __init__(
        self, ns: Netns, url: str, files: list[str], workdir: Path, *, port_before: bool = True
    ) -> None:
        self.ns = ns
        self.port_before = port_before
        self.url = url
        self.files = files
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.gofile = workdir / "go"
        self.halfway = workdir / "halfway"
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30.0) -> None:
        def transfers(tag: str) -> list[str]:
            lines = []
            modes = [("pasv", "on"), ("port", "off")]
            if tag == "before" and not self.port_before:
                modes = modes[:1]
            for mode, passive in modes:
                target = self.workdir / f"{tag}-{mode}"
                lines += [f"set ftp:passive-mode {passive}", "cls -1", f"!mkdir -p {target}"]
                lines += [f"get -O {target} {name}" for name in self.files]
            return lines

        script = [
            "set cmd:fail-exit yes",
            "set ftp:ssl-allow no",
            "set ftp:prefer-epsv no",
            "set ftp:use-feat no",
            "set net:max-retries 1",
            "set net:timeout 20",
            "set net:idle 300",
            "set xfer:clobber on",
            f"open {self.url}",
            *transfers("before"),
            f"!touch {self.halfway}",
            f"!while [ ! -e {self.gofile} ]; do sleep 0.05; done",
            *transfers("after"),
            "bye",
        ]
        script_file = self.workdir / "session.lftp"
        script_file.write_text("\n".join(script) + "\n")
        self.proc = self.ns.popen(
            "lftp",
            "-d",
            "-f",
            str(script_file),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while not self.halfway.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = self.wait(1)
                raise TrafficError(f"lftp did not get halfway: {out}")
            time.sleep(0.05)

    def go(self) -> None:
        self.gofile.touch()

    def wait(self, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc is not None
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        files = {
            str(p.relative_to(self.workdir)): p.stat().st_size
            for p in self.workdir.rglob("*")
            if p.is_file() and p.name not in ("go", "halfway", "session.lftp")
        }
        return {
            "rc": self.proc.returncode,
            "control_connections": err.count("Connecting to"),
            "stdout": out[-3000:],
            "stderr": err[-6000:],
            "files": files,
        }

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


if __name__ == "__main__":
    main()
