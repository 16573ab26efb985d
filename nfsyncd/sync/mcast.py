"""Multicast links, IPv4 and IPv6 (reference §3.1).

``link.group`` is the group and ``link.port`` the UDP port (conntrackd's confusingly named
``Group``).  The sender leaves through the link's interface with TTL/hops 1 and no
loopback; the receiver binds ``group:port`` (conntrackd 1.4.9 behaviour) and joins the group
on the link's interface.

One deliberate difference from conntrackd: the receiver turns ``IP(V6)_MULTICAST_ALL``
off, so with redundant links on the same group each socket only gets the datagrams of the
interface it joined on (Linux otherwise delivers a group joined anywhere to every socket
bound to it, which would make every datagram arrive once per link).
"""

from __future__ import annotations

import socket
import struct
from typing import Final

from .channel import set_buffers, sockaddr
from .udp import DatagramChannel

__all__ = ["MulticastChannel"]

_IP_MULTICAST_ALL: Final = 49
_IPV6_MULTICAST_ALL: Final = 29


class MulticastChannel(DatagramChannel):
    """conntrackd's ``Multicast`` link."""

    def _validate(self) -> None:
        self._require("a group address", self.link.group)
        assert self.link.group is not None
        if not self.link.group.is_multicast:
            raise ValueError(f"{self.name}: {self.link.group} is not a multicast address")

    def _membership(self) -> bytes:
        """``ip_mreqn``: the group, our local address (any when unset) and the ifindex."""
        assert self.link.group is not None
        local = self.link.local.packed if self.link.local is not None else bytes(4)
        return struct.pack("4s4si", self.link.group.packed, local, self.ifindex)

    def _make_receiver(self) -> socket.socket:
        link = self.link
        assert link.group is not None
        sock = self._udp_socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            set_buffers(sock, rcvbuf=link.rcvbuf)
            if self.ipv6:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MULTICAST_ALL, 0)
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
        except BaseException:
            sock.close()
            raise
        self._bind(sock, sockaddr(link.group, link.port, self.ifindex, self.ipv6))
        try:
            if self.ipv6:
                mreq6 = struct.pack("16si", link.group.packed, self.ifindex)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq6)
            else:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, self._membership())
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"{self.name}: cannot join {link.group}: {exc}") from None
        return sock

    def _make_sender(self) -> socket.socket:
        link = self.link
        sock = self._udp_socket()
        try:
            set_buffers(sock, sndbuf=link.sndbuf)
            if self.ipv6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self.ifindex)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, self._membership())
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"{self.name}: cannot set up the sender: {exc}") from None
        self._dest = sockaddr(link.group, link.port, self.ifindex, self.ipv6)
        return sock
