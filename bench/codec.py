"""µs per decoded event and per encoded create: nfsyncd's codec next to pyroute2's.

Both decoders read the same real kernel messages: a dump of a mix of TCP (with protoinfo),
UDP and IPv6 flows that this benchmark creates in a throwaway namespace, plus the golden
captures under tests/data/ctnetlink.  Both encoders build the same create request.

    .venv/bin/python -m bench.codec          (as root)
"""

from __future__ import annotations

import gc
import socket
from itertools import islice
from pathlib import Path

import trio

from nfsyncd.kernel import Conntrack
from nfsyncd.lab import Netns
from nfsyncd.model import format_addr
from nfsyncd.netlink import ctnetlink as ct
from nfsyncd.netlink import parse_messages
from nfsyncd.netlink._socket import Request

from ._common import Result, per_item_us, report, synthetic_flows

GOLDEN = Path(__file__).parent.parent / "tests" / "data" / "ctnetlink"


async def _capture(n: int) -> list[bytes]:
    """Create ``n`` mixed flows in a fresh namespace and return the raw dump messages."""
    with Netns.create("nfsbench") as ns:
        with ns.entered():
            k = Conntrack()
        with k:
            flows = [
                *synthetic_flows(n // 2, proto=6),
                *synthetic_flows(n // 4, proto=17, base=n),
                *synthetic_flows(n - n // 2 - n // 4, proto=6, v6=True),
            ]
            errors = [e for e in await k.create_many(flows) if e is not None]
            if errors:
                raise RuntimeError(f"could not create benchmark flows: {errors[0]}")
            msgs = await k._nl.dump(Request(ct.CT_GET, 0, ct.nfgenmsg()))
            return [bytes(m.data[m.offset - 16 : m.end]) for m in msgs]


def _golden_messages() -> list[bytes]:
    out = []
    for path in sorted(GOLDEN.glob("*.bin")):
        for m in parse_messages(path.read_bytes()):
            if m.type >> 8 == ct.NFNL_SUBSYS_CTNETLINK:
                out.append(bytes(m.data[m.offset - 16 : m.end]))
    return out


def main() -> list[Result]:
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple, nfct_msg

    raw = trio.run(_capture, 3000) + _golden_messages()
    payloads = [(m, 16, len(m)) for m in raw]
    n = len(raw)
    gc.collect()

    def ours() -> None:
        for data, start, end in payloads:
            ct.decode_flow(data, start, end)

    def theirs() -> None:
        for data in raw:
            msg = nfct_msg(data)
            msg.decode()

    ours_best, ours_med = per_item_us(ours, n)
    theirs_best, theirs_med = per_item_us(theirs, n, repeat=3)

    flows = list(islice(synthetic_flows(2000, proto=17), 2000))

    def enc_ours() -> None:
        for f in flows:
            ct.flow_create(f)

    def enc_theirs() -> None:
        for f in flows:
            o = f.orig
            tup = NFCTAttrTuple(
                saddr=format_addr(o.src),
                daddr=format_addr(o.dst),
                proto=o.proto,
                sport=o.sport,
                dport=o.dport,
            )
            msg = nfct_msg.create_from(
                timeout=f.timeout, tuple_orig=tup, tuple_reply=tup.reverse(), status=8
            )
            msg["header"]["type"] = ct.CT_NEW
            msg["nfgen_family"] = socket.AF_INET
            msg.encode()

    enc_best, enc_med = per_item_us(enc_ours, len(flows))
    penc_best, penc_med = per_item_us(enc_theirs, len(flows), repeat=3)
    results = [
        Result(
            "decode, nfsyncd (µs per message)",
            ours_best,
            "µs",
            f"median {ours_med:.2f}",
            {"messages": n},
        ),
        Result(
            "decode, pyroute2 0.9 (µs per message)", theirs_best, "µs", f"median {theirs_med:.2f}"
        ),
        Result("decode speed-up vs pyroute2 (target >= 3x)", theirs_best / ours_best, "x"),
        Result("encode create, nfsyncd (µs per flow)", enc_best, "µs", f"median {enc_med:.2f}"),
        Result(
            "encode create, pyroute2 0.9 (µs per flow)", penc_best, "µs", f"median {penc_med:.2f}"
        ),
        Result("encode speed-up vs pyroute2", penc_best / enc_best, "x"),
    ]
    return results


if __name__ == "__main__":
    report("codec", "codec (same messages, same run)", main())
