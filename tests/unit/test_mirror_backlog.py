"""The event buffer grows while a backlog fills it, before the kernel drops events.

The mirror is driven with a stand-in event stream whose fill level the test sets: a full
read with more than half the buffer queued doubles it (up to ``netlink_buffer_max``), less
than half leaves it alone, and a kernel that cannot report the fill level (SO_MEMINFO is
Linux 4.6+) turns the watch off instead of stopping the event task.  The real socket is
tested in tests/daemon/test_daemon.py and tests/unit/test_socket.py.
"""

from __future__ import annotations

import dataclasses
import errno

from nfsyncd.cache import InternalCache
from nfsyncd.config import default_config
from nfsyncd.kernel import EventStream
from nfsyncd.mirror import KernelMirror

MiB = 1 << 20


class Stream:
    """What the mirror asks of an event stream to size its buffer; sizes as the kernel
    reports them (twice what was set)."""

    def __init__(self, rcvbuf: int, queued: int = 0, *, reports: bool = True) -> None:
        self.rcvbuf = rcvbuf
        self.queued = queued
        self.reports = reports
        self.asked = 0

    def set_rcvbuf(self, size: int) -> None:
        self.rcvbuf = 2 * size

    def receive_queue(self) -> tuple[int, int]:
        self.asked += 1
        if not self.reports:
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        return self.queued, self.rcvbuf


def mirror(ceiling: int = 8 * MiB) -> KernelMirror:
    config = default_config()
    general = dataclasses.replace(config.general, netlink_buffer_max=ceiling)
    return KernelMirror(dataclasses.replace(config, general=general), InternalCache())


def watch(m: KernelMirror, stream: Stream) -> None:
    m._watch_backlog(stream)  # type: ignore[arg-type]


def test_a_buffer_more_than_half_full_doubles_up_to_the_ceiling() -> None:
    m = mirror(ceiling=8 * MiB)
    stream = Stream(2 * MiB, queued=MiB)  # exactly half: not yet
    watch(m, stream)
    assert (stream.rcvbuf, m.stats.buffer_grows) == (2 * MiB, 0)
    stream.queued = MiB + 1
    watch(m, stream)
    assert (stream.rcvbuf, m.stats.buffer_grows, m.stats.buffer_size) == (4 * MiB, 1, 4 * MiB)
    stream.queued = 3 * MiB
    watch(m, stream)
    assert stream.rcvbuf == 8 * MiB
    stream.queued = 7 * MiB
    watch(m, stream)  # at the ceiling: stays, and is not counted as grown
    assert (stream.rcvbuf, m.stats.buffer_grows) == (8 * MiB, 2)


def test_a_kernel_without_the_fill_level_turns_the_watch_off() -> None:
    m = mirror()
    stream = Stream(2 * MiB, queued=2 * MiB, reports=False)
    watch(m, stream)
    watch(m, stream)
    assert (stream.asked, stream.rcvbuf, m.stats.buffer_grows) == (1, 2 * MiB, 0)


def test_the_stand_in_has_what_the_mirror_uses() -> None:
    """The stand-in mirrors the real stream's interface (so these tests track it)."""
    for name in ("rcvbuf", "set_rcvbuf", "receive_queue"):
        assert hasattr(EventStream, name)
