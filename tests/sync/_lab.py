"""The two-gateway sync lab for tests (the code lives in :mod:`nfsyncd.lab.sync_lab`, which
the benchmarks share); see tests/sync/conftest.py for the fixtures."""

from nfsyncd.lab.sync_lab import (
    FW,
    FlowKey,
    LabLink,
    PeerLink,
    SyncDaemon,
    SyncLab,
    Transport,
    flow_key,
    json_flow_key,
    lab_flows,
    multicast_group,
)

__all__ = [
    "FW",
    "FlowKey",
    "LabLink",
    "PeerLink",
    "SyncDaemon",
    "SyncLab",
    "Transport",
    "flow_key",
    "json_flow_key",
    "lab_flows",
    "multicast_group",
]
