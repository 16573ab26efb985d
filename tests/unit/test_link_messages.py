"""Link-state messages: the daemon decodes the name and flags of rtnetlink link messages itself.

pyroute2 (a test-only dependency now) encodes the same messages, so the two implementations
check each other; the redundant-link tests in tests/kernel/test_channels.py read the real
kernel's messages.
"""

from __future__ import annotations

import struct

from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from nfsyncd.sync.links import IFF_RUNNING, IFF_UP, LinkWatcher, _parse

RTM_NEWLINK = 16
RTM_DELLINK = 17
NLMSG_DONE = 3


def link_message(mtype: int, name: str, flags: int, seq: int = 0) -> bytes:
    """One link message as the kernel sends it, encoded by pyroute2."""
    msg = ifinfmsg()
    msg["family"] = 0
    msg["index"] = 7
    msg["flags"] = flags
    msg["change"] = 0
    msg["attrs"] = [("IFLA_MTU", 1500), ("IFLA_IFNAME", name), ("IFLA_TXQLEN", 1000)]
    msg["header"]["type"] = mtype
    msg["header"]["sequence_number"] = seq
    msg.encode()
    return bytes(msg.data)


def done_message(seq: int) -> bytes:
    return struct.pack("=IHHIIi", 20, NLMSG_DONE, 2, seq, 0, 0)


def test_a_link_message_yields_its_name_and_flags() -> None:
    data = link_message(RTM_NEWLINK, "sync0", IFF_UP | IFF_RUNNING, seq=5)
    assert list(_parse(data)) == [(RTM_NEWLINK, 5, "sync0", IFF_UP | IFF_RUNNING)]


def test_a_dump_updates_the_watched_links_and_ends_on_done() -> None:
    watcher = LinkWatcher(["sync0", "sync1"])
    request = watcher._dump_request()
    seq = struct.unpack_from("=IHHII", request)[3]
    datagram = (
        link_message(RTM_NEWLINK, "lo", IFF_UP | IFF_RUNNING, seq)
        + link_message(RTM_NEWLINK, "sync0", IFF_UP | IFF_RUNNING, seq)
        + link_message(RTM_NEWLINK, "sync1", IFF_UP, seq)
    )
    assert not watcher._apply(datagram)  # the dump is not over yet
    assert watcher._apply(done_message(seq))
    assert watcher.flags == {"sync0": IFF_UP | IFF_RUNNING, "sync1": IFF_UP}

    watcher._apply(link_message(RTM_DELLINK, "sync1", 0))
    assert watcher.flags["sync1"] is None  # deleted: no such interface


def test_malformed_link_messages_concern_no_link() -> None:
    good = link_message(RTM_NEWLINK, "sync0", IFF_UP)
    # An attribute claiming more bytes than the message holds.
    broken = bytearray(good)
    attrs_at = 16 + 16
    struct.pack_into("=H", broken, attrs_at, 4000)
    assert [name for _, _, name, _ in _parse(bytes(broken))] == [None]
    # A message too short for its ifinfomsg header.
    short = struct.pack("=IHHII", 20, RTM_NEWLINK, 0, 0, 0) + b"\0" * 4
    assert [name for _, _, name, _ in _parse(short)] == [None]
    # A message claiming more than the datagram holds ends the parse.
    assert list(_parse(good[:-4])) == []

    watcher = LinkWatcher(["sync0"])
    watcher.flags["sync0"] = IFF_UP | IFF_RUNNING
    watcher._apply(bytes(broken) + short)
    assert watcher.flags["sync0"] == IFF_UP | IFF_RUNNING  # unchanged
