"""Prometheus metrics of peer sync: what an operator alerts on (peer gone, not in sync,
messages lost or dropped as malformed, queues growing) and the per-link traffic."""

from __future__ import annotations

from ..metrics import Metric
from .engine import SyncEngine
from .parity import HelperParity

__all__ = ["sync_metrics"]


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def sync_metrics(engine: SyncEngine) -> list[Metric]:
    net = engine.network
    ok, _ = engine.in_sync()
    st = engine.stats
    traffic = Metric("nfsyncd_sync_link_packets_total", "counter", "Datagrams per sync link.")
    traffic_bytes = Metric("nfsyncd_sync_link_bytes_total", "counter", "Bytes per sync link.")
    errors = Metric("nfsyncd_sync_link_errors_total", "counter", "Send/receive errors per link.")
    active = Metric("nfsyncd_sync_link_active", "gauge", "1 for the link that sends.")
    for chan in engine.links.channels:
        iface = chan.link.interface
        ls = chan.stats
        traffic.add(ls.sent_packets, link=iface, direction="sent")
        traffic.add(ls.recv_packets, link=iface, direction="received")
        traffic_bytes.add(ls.sent_bytes, link=iface, direction="sent")
        traffic_bytes.add(ls.recv_bytes, link=iface, direction="received")
        errors.add(ls.send_errors, link=iface, direction="sent")
        errors.add(ls.recv_errors, link=iface, direction="received")
        active.add(int(chan.index == engine.links.active), link=iface)
    dropped = Metric(
        "nfsyncd_sync_messages_dropped_total", "counter", "Peer messages dropped, by reason."
    )
    for reason, count in net.conntrackd_view(engine.sync.mode).items():
        if reason not in ("Malformed messages", "Packets lost", "Packets before"):
            dropped.add(count, reason=reason)
    queues = engine.mode.stats_dict()
    queue = Metric("nfsyncd_sync_queue_messages", "gauge", "Messages waiting in a sync queue.")
    for name in ("tx_queue", "rs_queue"):
        if name in queues:
            queue.add(_num(queues[name]), queue=name.removesuffix("_queue"))
    ext = engine.external_counts()
    out = [
        Metric("nfsyncd_sync_in_sync", "gauge", "1 when the peer is reachable and in sync.").add(
            int(ok)
        ),
        Metric("nfsyncd_sync_role", "gauge", "1 for the current keepalived role.")
        .add(int(engine.role == "primary"), role="primary")
        .add(int(engine.role == "backup"), role="backup")
        .add(int(engine.role == "fault"), role="fault"),
        traffic,
        traffic_bytes,
        errors,
        active,
        Metric("nfsyncd_sync_messages_total", "counter", "Sync messages by direction.")
        .add(st.messages_sent, direction="sent")
        .add(st.data_received, direction="received_state"),
        Metric("nfsyncd_sync_messages_lost_total", "counter", "Gaps in the peer's sequence.").add(
            net.lost
        ),
        Metric(
            "nfsyncd_sync_messages_before_total", "counter", "Peer messages older than expected."
        ).add(net.before),
        dropped,
        queue,
        Metric("nfsyncd_cache_entries_external", "gauge", "Entries in the external cache.")
        .add(ext["flows"], object="flow")
        .add(ext["expects"], object="expectation"),
        Metric("nfsyncd_sync_commits_total", "counter", "Commits to the kernel.").add(st.commits),
        Metric("nfsyncd_sync_link_switches_total", "counter", "Active link changes.").add(
            engine.links.switches
        ),
    ]
    if engine.parity is not None:
        out += _parity_metrics(engine.parity)
    return out


def _parity_metrics(parity: HelperParity) -> list[Metric]:
    missing = Metric(
        "nfsyncd_helpers_missing", "gauge", "Helpers one side assigns and the other does not."
    )
    for helper in sorted(parity.missing_here):
        missing.add(1, helper=helper, missing="here")
    for helper in sorted(parity.missing_on_peer):
        missing.add(1, helper=helper, missing="peer")
    without = Metric(
        "nfsyncd_expectations_without_local_helper_total",
        "counter",
        "Peer expectations whose helper this node does not assign.",
    )
    for helper, count in sorted(parity.without_helper.items()):
        without.add(count, helper=helper)
    return [
        Metric("nfsyncd_helper_mismatches_total", "counter", "Helper set mismatches seen.").add(
            parity.mismatches
        ),
        missing,
        without,
        Metric("nfsyncd_helper_announces_total", "counter", "Helper announces.")
        .add(parity.sent, direction="sent")
        .add(parity.received, direction="received")
        .add(parity.malformed, direction="malformed"),
        Metric(
            "nfsyncd_helper_peer_announces", "gauge", "1 when the peer announced its helpers."
        ).add(int(parity.peer is not None)),
    ]
