"""Trio-native netlink: the socket core and the ctnetlink codec.

The private modules hold the machinery; this package re-exports what the daemon uses.
"""

from ._attrs import DecodeError, Schema, attr, iter_attrs
from ._socket import (
    NETLINK_NETFILTER,
    OVERRUN,
    Message,
    NetlinkError,
    NetlinkSocket,
    Overrun,
    Request,
    parse_messages,
)

__all__ = [
    "NETLINK_NETFILTER",
    "OVERRUN",
    "DecodeError",
    "Message",
    "NetlinkError",
    "NetlinkSocket",
    "Overrun",
    "Request",
    "Schema",
    "attr",
    "iter_attrs",
    "parse_messages",
]
