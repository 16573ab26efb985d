"""Which datagrams a UDP link sends in one segmented call, and what it does when the
kernel refuses or the buffer fills part-way (a fake socket; tests/kernel/test_channels.py
sends real segmented runs between namespaces)."""

from __future__ import annotations

import errno
import ipaddress
import struct
from typing import Any

import pytest
import trio

from nfsyncd._config_types import SyncLink
from nfsyncd.sync.segment import MAX_BYTES, MAX_SEGMENTS, SOL_UDP, UDP_SEGMENT, runs
from nfsyncd.sync.udp import UdpChannel


def sizes(*lengths: int) -> list[bytes]:
    return [bytes(n) for n in lengths]


def run_lengths(datagrams: list[bytes]) -> list[int]:
    """The lengths of the runs the datagrams are cut into, in order."""
    cut = list(runs(datagrams))
    assert [d for run in cut for d in run] == datagrams
    return [len(run) for run in cut]


def test_a_run_is_one_size_then_at_most_one_shorter_datagram() -> None:
    assert run_lengths(sizes(1400, 1400, 1400, 900)) == [4]
    assert run_lengths(sizes(1400, 1400, 900, 900)) == [3, 1]  # a second short one starts anew
    assert run_lengths(sizes(900, 1400, 1400)) == [1, 2]  # the kernel cuts at the first one's size
    assert run_lengths(sizes(1400)) == [1]
    assert run_lengths(sizes(88, 88, 1400, 1400)) == [2, 2]


def test_a_run_stays_within_the_kernels_limits() -> None:
    assert run_lengths(sizes(*[100] * (MAX_SEGMENTS + 3))) == [MAX_SEGMENTS, 3]
    per_run = MAX_BYTES // 1472
    got = run_lengths(sizes(*[1472] * 100))
    assert got[0] == per_run and sum(got) == 100
    assert all(n * 1472 <= MAX_BYTES for n in got)


class FakeSocket:
    """Records what was sent; ``refuse`` makes ``sendmsg`` fail like a kernel that does not
    segment, ``room`` is how many datagrams fit before the buffer is full."""

    def __init__(self, *, refuse: int | None = None, room: int = 1000) -> None:
        self.refuse = refuse
        self.room = room
        self.calls: list[tuple[str, list[bytes]]] = []

    def _take(self, n: int) -> None:
        if n > self.room:
            raise BlockingIOError(errno.EAGAIN, "full")
        self.room -= n

    def sendto(self, data: bytes, dest: Any) -> int:
        self._take(1)
        self.calls.append(("sendto", [data]))
        return len(data)

    def sendmsg(self, bufs: list[bytes], cmsg: Any, flags: int, dest: Any) -> int:
        if self.refuse is not None:
            raise OSError(self.refuse, "refused")
        [(level, kind, data)] = cmsg
        assert (level, kind) == (SOL_UDP, UDP_SEGMENT)
        assert struct.unpack("=H", data)[0] == len(bufs[0])
        self._take(len(bufs))
        self.calls.append(("sendmsg", list(bufs)))
        return sum(map(len, bufs))


def channel(sock: FakeSocket, **kw: Any) -> UdpChannel:
    link = SyncLink(
        "udp",
        "eth1",
        local=ipaddress.ip_address("198.18.0.1"),
        peer=ipaddress.ip_address("198.18.0.2"),
        **kw,
    )
    chan = UdpChannel(link, 0)
    chan._tx_raw = sock  # type: ignore[assignment]
    chan._dest = ("198.18.0.2", 3780)
    return chan


BATCH = sizes(1400, 1400, 1400, 700, 1400, 1400)


def test_a_batch_goes_out_in_runs_and_is_counted_per_datagram() -> None:
    sock = FakeSocket()
    chan = channel(sock)
    assert chan.send_ready(BATCH) == 6
    assert [(kind, len(bufs)) for kind, bufs in sock.calls] == [("sendmsg", 4), ("sendmsg", 2)]
    assert chan.stats.segmented_sends == 2
    assert chan.stats.sent_packets == 6 and chan.stats.sent_bytes == sum(map(len, BATCH))


@pytest.mark.parametrize("refusal", [errno.EIO, errno.EINVAL])
def test_a_refusal_falls_back_to_one_call_per_datagram_for_good(refusal: int) -> None:
    sock = FakeSocket(refuse=refusal)
    chan = channel(sock)
    assert chan.send_ready(BATCH) == 6
    assert [bufs[0] for _, bufs in sock.calls] == BATCH  # all of them, in order
    assert {kind for kind, _ in sock.calls} == {"sendto"}
    assert chan.stats.segmented_sends == 0 and chan.stats.sent_packets == 6
    sock.refuse = None  # the link does not try again
    assert chan.send_ready(BATCH[:2]) == 2
    assert sock.calls[-1][0] == "sendto"


def test_another_error_is_a_failed_send_not_a_fallback() -> None:
    sock = FakeSocket(refuse=errno.ENETUNREACH)
    chan = channel(sock)
    assert chan.send_ready(BATCH) == 0
    assert trio.run(chan.send_many, BATCH) == 0
    assert chan.stats.send_errors == 1 and chan._segment


def test_a_full_buffer_stops_between_runs() -> None:
    sock = FakeSocket(room=5)
    chan = channel(sock)
    assert chan.send_ready(BATCH) == 4  # the second run does not fit whole: nothing of it
    assert chan.stats.sent_packets == 4


def test_turned_off_sends_one_datagram_per_call() -> None:
    sock = FakeSocket()
    chan = channel(sock, segment_offload=False)
    assert chan.send_ready(BATCH) == 6
    assert [kind for kind, _ in sock.calls] == ["sendto"] * 6
