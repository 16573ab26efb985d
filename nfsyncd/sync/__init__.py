"""State synchronization with a peer, wire-compatible with conntrackd 1.4.x.

:mod:`.attrs` maps flows and expectations to conntrackd's attributes; :mod:`.wire` frames
them as messages and datagrams and decodes what a peer sent.  One sync mode per module
(:mod:`.ftfw`, :mod:`.alarm`, :mod:`.notrack`, built by :func:`make_mode`), one transport per
module (:mod:`.udp`, :mod:`.mcast`, :mod:`.tcp`, grouped into redundant links by
:class:`LinkSet`); :mod:`.engine` wires them to the daemon's caches and the kernel.
"""

from .attrs import (
    LATEST_PEER_VERSION,
    OLDEST_PEER_VERSION,
    Extra,
    Reason,
    WireError,
    decode_expect,
    decode_flow,
    nta_max,
    parse_version,
)
from .channel import Channel, LinkStats, open_channel
from .links import LinkSet
from .modes import SyncMode, make_mode
from .wire import (
    Batcher,
    Encoder,
    Flag,
    Message,
    MsgType,
    NetworkStats,
    SeqCounter,
    SeqTracker,
    SeqVerdict,
    StreamDecoder,
    ack_message,
    alive_message,
    channel_payload_size,
    data_message,
    decode_datagram,
    decode_message,
    nack_message,
    pack_datagrams,
    resync_message,
    seq_add,
    seq_after,
    seq_before,
)

__all__ = [
    "LATEST_PEER_VERSION",
    "OLDEST_PEER_VERSION",
    "Batcher",
    "Channel",
    "Encoder",
    "Extra",
    "Flag",
    "LinkSet",
    "LinkStats",
    "Message",
    "MsgType",
    "NetworkStats",
    "Reason",
    "SeqCounter",
    "SeqTracker",
    "SeqVerdict",
    "StreamDecoder",
    "SyncMode",
    "WireError",
    "ack_message",
    "alive_message",
    "channel_payload_size",
    "data_message",
    "decode_datagram",
    "decode_expect",
    "decode_flow",
    "decode_message",
    "make_mode",
    "nack_message",
    "nta_max",
    "open_channel",
    "pack_datagrams",
    "parse_version",
    "resync_message",
    "seq_add",
    "seq_after",
    "seq_before",
]
