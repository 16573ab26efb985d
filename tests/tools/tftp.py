"""A tiny real TFTP (RFC 1350) server and client, for the kernel's tftp helper.

TFTP is the simplest protocol a conntrack helper exists for: the client sends a read request
(RRQ) to the server's well-known port, and the server answers from a *fresh* port of its own.
That answer is a new flow the kernel only admits as related because the tftp helper, which
saw the RRQ, expected it. Run each side inside a lab namespace:

    python tests/tools/tftp.py server --address 198.18.2.2 --port 69 --root DIR
    python tests/tools/tftp.py get --server 198.18.2.2 --port 69 --file NAME --out PATH

The server prints ``READY <address> <port>`` once bound, then serves until SIGTERM; every
transfer runs from a new socket bound to port 0 (never the listening port). The client prints
``DONE <bytes> <server data port>`` when the file is complete, and exits non-zero on failure.
Both retransmit on a timeout, so a test may hold packets for a while (e.g. to look at the
expectation before the data uses it) and the transfer still completes.
"""

from __future__ import annotations

import argparse
import select
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

OP_RRQ, OP_WRQ, OP_DATA, OP_ACK, OP_ERROR = 1, 2, 3, 4, 5
BLOCK = 512
#: seconds before a DATA or an RRQ is sent again
RETRANSMIT = 0.5


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def rrq(filename: str, mode: str = "octet") -> bytes:
    return struct.pack("!H", OP_RRQ) + filename.encode() + b"\0" + mode.encode() + b"\0"


def parse_request(packet: bytes) -> tuple[int, str, str] | None:
    """``(opcode, filename, mode)`` of an RRQ/WRQ, None for anything else."""
    if len(packet) < 4:
        return None
    (opcode,) = struct.unpack("!H", packet[:2])
    if opcode not in (OP_RRQ, OP_WRQ):
        return None
    parts = packet[2:].split(b"\0")
    if len(parts) < 3:
        return None
    return opcode, parts[0].decode(errors="replace"), parts[1].decode(errors="replace").lower()


def error_packet(code: int, message: str) -> bytes:
    return struct.pack("!HH", OP_ERROR, code) + message.encode() + b"\0"


# -- server ---------------------------------------------------------------------------------


def _send_file(address: str, client: tuple[str, int], path: Path, timeout: float) -> None:
    """One transfer from a new ephemeral port: DATA n, wait for ACK n, retransmit on silence."""
    sock = socket.socket(_family(address), socket.SOCK_DGRAM)
    try:
        sock.bind((address, 0))
        try:
            data = path.read_bytes()
        except OSError as exc:
            sock.sendto(error_packet(1, f"cannot read: {exc.strerror}"), client)
            return
        block = 1
        deadline = time.monotonic() + timeout
        while True:
            chunk = data[(block - 1) * BLOCK : block * BLOCK]
            packet = struct.pack("!HH", OP_DATA, block & 0xFFFF) + chunk
            acked = False
            while not acked:
                if time.monotonic() > deadline:
                    print(f"transfer to {client} timed out at block {block}", file=sys.stderr)
                    return
                sock.sendto(packet, client)
                ready, _, _ = select.select([sock], [], [], RETRANSMIT)
                while ready:
                    reply, peer = sock.recvfrom(65536)
                    if peer[:2] == client[:2] and reply[:2] == struct.pack("!H", OP_ACK):
                        (acked_block,) = struct.unpack("!H", reply[2:4])
                        if acked_block == block & 0xFFFF:
                            acked = True
                            break
                    ready, _, _ = select.select([sock], [], [], 0)
            if len(chunk) < BLOCK:
                print(f"sent {len(data)} bytes to {client}", file=sys.stderr, flush=True)
                return
            block += 1
    finally:
        sock.close()


def serve(address: str, port: int, root: Path, timeout: float) -> None:
    listener = socket.socket(_family(address), socket.SOCK_DGRAM)
    listener.bind((address, port))
    active: dict[tuple[str, int], threading.Thread] = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"READY {address} {port}", flush=True)
    while True:
        packet, client = listener.recvfrom(65536)
        request = parse_request(packet)
        if request is None:
            continue
        opcode, filename, _mode = request
        if opcode != OP_RRQ:
            listener.sendto(error_packet(4, "read requests only"), client)
            continue
        key = client[:2]
        running = active.get(key)
        if running is not None and running.is_alive():
            continue  # a retransmitted RRQ: that transfer is already under way
        path = root / Path(filename).name
        worker = threading.Thread(
            target=_send_file, args=(address, client, path, timeout), daemon=True
        )
        active[key] = worker
        worker.start()


# -- client ---------------------------------------------------------------------------------


def get(server: str, port: int, filename: str, out: Path, timeout: float, local: str) -> int:
    """Fetch ``filename``; returns the byte count. Raises on error or timeout."""
    sock = socket.socket(_family(server), socket.SOCK_DGRAM)
    try:
        sock.bind((local, 0))
        request = rrq(filename)
        expected = 1
        received = bytearray()
        data_peer: tuple[str, int] | None = None
        last_sent: tuple[bytes, tuple[str, int]] = (request, (server, port))
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no complete file after {timeout}s ({len(received)} bytes)")
            sock.sendto(*last_sent)
            ready, _, _ = select.select([sock], [], [], RETRANSMIT)
            if not ready:
                continue
            packet, peer = sock.recvfrom(65536)
            if peer[0] != server or (data_peer is not None and peer[:2] != data_peer):
                continue
            opcode = struct.unpack("!H", packet[:2])[0]
            if opcode == OP_ERROR:
                message = packet[4:].rstrip(b"\0").decode(errors="replace")
                raise RuntimeError(f"server error: {message}")
            if opcode != OP_DATA:
                continue
            if peer[1] == port:
                raise RuntimeError("DATA came from the request port, not a fresh one")
            data_peer = peer[:2]
            (block,) = struct.unpack("!H", packet[2:4])
            ack = struct.pack("!HH", OP_ACK, block)
            last_sent = (ack, data_peer)
            if block == expected & 0xFFFF:
                received += packet[4:]
                expected += 1
                if len(packet) - 4 < BLOCK:
                    sock.sendto(ack, data_peer)
                    out.write_bytes(received)
                    print(f"DONE {len(received)} {data_peer[1]}", flush=True)
                    return len(received)
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("server")
    srv.add_argument("--address", required=True)
    srv.add_argument("--port", type=int, default=69)
    srv.add_argument("--root", required=True, type=Path)
    srv.add_argument("--timeout", type=float, default=30.0)
    cli = sub.add_parser("get")
    cli.add_argument("--server", required=True)
    cli.add_argument("--port", type=int, default=69)
    cli.add_argument("--file", required=True)
    cli.add_argument("--out", required=True, type=Path)
    cli.add_argument("--local", default="", help="local address to bind (default: any)")
    cli.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.command == "server":
        serve(args.address, args.port, args.root, args.timeout)
        return 0
    try:
        local = args.local or ("::" if ":" in args.server else "0.0.0.0")
        get(args.server, args.port, args.file, args.out, args.timeout, local)
    except (OSError, RuntimeError, TimeoutError) as exc:
        print(f"tftp get failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
