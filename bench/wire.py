"""The sync wire codec: µs to encode and decode one conntrackd-format flow message, and the
datagram decoder's cost per message.  Pure CPU, no namespaces needed.

Reproduces the per-message numbers in the issue notes; compare with the sender/receiver CPU
per replicated flow that conntrackd spends end to end (~5.7 / ~3.4 µs, DESIGN.md).
"""

from __future__ import annotations

from bench._common import Result, per_item_us, synthetic_flows
from nfsyncd.sync import (
    Encoder,
    MsgType,
    NetworkStats,
    decode_datagram,
    decode_message,
    pack_datagrams,
)

N = 20_000


def main() -> list[Result]:
    flows = list(synthetic_flows(N))
    enc = Encoder((1, 4, 7))
    msgs = [enc.flow_message(MsgType.CT_NEW, f, i) for i, f in enumerate(flows)]
    datagrams = pack_datagrams(msgs, 1472)
    stats = NetworkStats()

    def encode() -> None:
        for i, f in enumerate(flows):
            enc.flow_message(MsgType.CT_NEW, f, i)

    def decode() -> None:
        for m in msgs:
            decode_message(m)

    def decode_dgrams() -> None:
        for d in datagrams:
            decode_datagram(d, stats)

    out = []
    for name, fn in (
        ("encode flow message, IPv4 TCP (µs per message)", encode),
        ("decode flow message, one at a time (µs per message)", decode),
        ("decode_datagram, full 1472-byte datagrams (µs per message)", decode_dgrams),
    ):
        best, median = per_item_us(fn, N)
        out.append(Result(name, best, "µs", f"median {median:.2f}"))
    out.append(Result("messages per 1472-byte datagram", N / len(datagrams), "msgs"))
    return out


if __name__ == "__main__":
    from bench._common import report

    report("wire", "sync wire codec", main())
