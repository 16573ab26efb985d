"""A tiny real SIP user agent pair (UAC and UAS over UDP 5060), for the kernel's sip helper.

The sip helper reads the SDP bodies of an INVITE and of its answer and expects the RTP (and
RTCP) flows they announce; nothing else tells a firewall that those media flows belong to
the call. This tool makes exactly that exchange with well-formed messages (RFC 3261 headers,
RFC 4566 SDP), so a test sees the helper work on real traffic. Run each side in a namespace:

    python tests/tools/sip.py uas --address 198.18.2.2 --rtp-port 40010
    python tests/tools/sip.py uac --address 198.18.1.2 --server 198.18.2.2 --rtp-port 40000

The UAS prints ``READY <address> <port>``, answers INVITE with 100 Trying and 200 OK (with
its own SDP), ACK with nothing, BYE with 200 OK, and echoes every RTP packet it receives on
its media port back to the sender's media port, until SIGTERM.

The UAC sends INVITE (SDP: its own address and ``--rtp-port``), waits for the 200 OK, sends
ACK and prints ``ANSWERED <uas media port>``. With ``--hold`` it then waits for a line on
stdin (time for a test to look at the expectations the call created), then sends ``--rtp``
RTP packets from its media port to the UAS's, waits for their echoes, sends BYE, waits for
its 200 OK and prints ``DONE <echoes received>``. It exits non-zero on a timeout.

The media address in each SDP is the sender's own signalling address: with the helper's
default ``sip_direct_media=1`` the kernel only expects media between the signalling peers.
"""

from __future__ import annotations

import argparse
import random
import select
import signal
import socket
import struct
import sys
import time

SIP_PORT = 5060
#: seconds before a request is sent again (RFC 3261 T1)
T1 = 0.5


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _ip_kind(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def sdp(address: str, rtp_port: int, session: int) -> str:
    kind = _ip_kind(address)
    return (
        "v=0\r\n"
        f"o=nfsyncd {session} {session} IN {kind} {address}\r\n"
        "s=nfsyncd test call\r\n"
        f"c=IN {kind} {address}\r\n"
        "t=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP 0\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
    )


def message(start: str, headers: list[tuple[str, str]], body: str = "") -> bytes:
    lines = [start, *(f"{name}: {value}" for name, value in headers)]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def parse(data: bytes) -> tuple[str, dict[str, str], str]:
    """``(start line, headers by lower-case name, body)``; the first of repeated headers."""
    text = data.decode(errors="replace")
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    return lines[0], headers, body


def sdp_port(body: str) -> int | None:
    for line in body.splitlines():
        if line.startswith("m=audio "):
            return int(line.split()[1])
    return None


def rtp_packet(seq: int, ssrc: int) -> bytes:
    # version 2, payload type 0 (PCMU), 20 ms of silence
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, ssrc) + b"\xff" * 160


# -- UAS ------------------------------------------------------------------------------------


def _reply(request: dict[str, str], status: str, address: str, body: str = "") -> bytes:
    headers = [(name.title(), request[name]) for name in ("via", "from", "call-id", "cseq")]
    to = request.get("to", "")
    if "tag=" not in to:
        to += ";tag=uas" + str(random.randrange(1 << 30))
    headers.insert(2, ("To", to))
    headers.append(("Contact", f"<sip:uas@{_host(address)}:{SIP_PORT}>"))
    return message(f"SIP/2.0 {status}", headers, body)


def uas(address: str, port: int, rtp_port: int) -> None:
    family = _family(address)
    sip = socket.socket(family, socket.SOCK_DGRAM)
    sip.bind((address, port))
    rtp = socket.socket(family, socket.SOCK_DGRAM)
    rtp.bind((address, rtp_port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    session = random.randrange(1 << 30)
    print(f"READY {address} {port}", flush=True)
    while True:
        ready, _, _ = select.select([sip, rtp], [], [])
        if rtp in ready:
            packet, peer = rtp.recvfrom(65536)
            rtp.sendto(packet, peer)  # echo: the UAC's media port is its RTP source port
        if sip in ready:
            data, peer = sip.recvfrom(65536)
            start, headers, _body = parse(data)
            method = start.split(" ", 1)[0]
            if method == "INVITE":
                sip.sendto(_reply(headers, "100 Trying", address), peer)
                answer = sdp(address, rtp_port, session)
                sip.sendto(_reply(headers, "200 OK", address, answer), peer)
            elif method in ("BYE", "OPTIONS", "CANCEL"):
                sip.sendto(_reply(headers, "200 OK", address), peer)
            # ACK and responses need no answer


# -- UAC ------------------------------------------------------------------------------------


class Uac:
    def __init__(self, address: str, server: str, port: int, rtp_port: int) -> None:
        self.address, self.server, self.port, self.rtp_port = address, server, port, rtp_port
        family = _family(address)
        self.sip = socket.socket(family, socket.SOCK_DGRAM)
        self.sip.bind((address, SIP_PORT))
        self.rtp = socket.socket(family, socket.SOCK_DGRAM)
        self.rtp.bind((address, rtp_port))
        self.call_id = f"{random.randrange(1 << 48):x}@{_host(address)}"
        self.tag = f"uac{random.randrange(1 << 30)}"
        self.to = f"<sip:uas@{_host(server)}>"
        self.cseq = 0

    def _request(self, method: str, body: str = "", cseq: int | None = None) -> bytes:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        branch = f"z9hG4bK{random.randrange(1 << 40):x}"
        headers = [
            ("Via", f"SIP/2.0/UDP {_host(self.address)}:{SIP_PORT};branch={branch}"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:uac@{_host(self.address)}>;tag={self.tag}"),
            ("To", self.to),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", f"<sip:uac@{_host(self.address)}:{SIP_PORT}>"),
        ]
        uri = f"sip:uas@{_host(self.server)}:{self.port}"
        return message(f"{method} {uri} SIP/2.0", headers, body)

    def transaction(
        self, request: bytes, method: str, timeout: float
    ) -> tuple[dict[str, str], str]:
        """Send ``request`` until a final (2xx) response for ``method`` arrives."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sip.sendto(request, (self.server, self.port))
            end = time.monotonic() + T1
            while (left := end - time.monotonic()) > 0:
                ready, _, _ = select.select([self.sip], [], [], left)
                if not ready:
                    break
                data, _peer = self.sip.recvfrom(65536)
                start, headers, body = parse(data)
                if start.startswith("SIP/2.0 2") and headers.get("cseq", "").endswith(method):
                    return headers, body
        raise TimeoutError(f"no 2xx answer to {method} after {timeout}s")

    def call(self, hold: bool, rtp_packets: int, timeout: float) -> int:
        offer = sdp(self.address, self.rtp_port, random.randrange(1 << 30))
        headers, body = self.transaction(self._request("INVITE", offer), "INVITE", timeout)
        self.to = headers.get("to", self.to)  # with the UAS's tag, for the dialog
        media = sdp_port(body)
        if media is None:
            raise RuntimeError("the 200 OK carried no audio media line")
        self.sip.sendto(self._request("ACK", cseq=self.cseq), (self.server, self.port))
        print(f"ANSWERED {media}", flush=True)
        if hold:
            sys.stdin.readline()
        echoes = 0
        ssrc = random.randrange(1 << 32)
        for seq in range(rtp_packets):
            self.rtp.sendto(rtp_packet(seq, ssrc), (self.server, media))
            ready, _, _ = select.select([self.rtp], [], [], 2.0)
            if ready:
                self.rtp.recvfrom(65536)
                echoes += 1
        self.transaction(self._request("BYE"), "BYE", timeout)
        print(f"DONE {echoes}", flush=True)
        return echoes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("uas")
    server.add_argument("--address", required=True)
    server.add_argument("--port", type=int, default=SIP_PORT)
    server.add_argument("--rtp-port", type=int, default=40010)
    client = sub.add_parser("uac")
    client.add_argument("--address", required=True, help="own address (also the SDP's)")
    client.add_argument("--server", required=True)
    client.add_argument("--port", type=int, default=SIP_PORT)
    client.add_argument("--rtp-port", type=int, default=40000)
    client.add_argument("--rtp", type=int, default=5, help="RTP packets to send")
    client.add_argument("--hold", action="store_true", help="wait for a stdin line after ACK")
    client.add_argument("--timeout", type=float, default=15.0)
    args = parser.parse_args(argv)
    if args.command == "uas":
        uas(args.address, args.port, args.rtp_port)
        return 0
    try:
        Uac(args.address, args.server, args.port, args.rtp_port).call(
            args.hold, args.rtp, args.timeout
        )
    except (OSError, RuntimeError, TimeoutError) as exc:
        print(f"sip uac failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
