"""Throwaway network labs for tests, the demo and the benchmarks.

Everything in here creates its own network namespaces and works only inside them: the host's
interfaces, nft ruleset and conntrack table are never touched. See :mod:`nfsyncd.lab.netns`.
"""

from nfsyncd.lab.netns import (
    ALLOWED_NETWORKS,
    CommandError,
    Netns,
    add_address,
    cleanup_all,
    veth_pair,
)

__all__ = [
    "ALLOWED_NETWORKS",
    "CommandError",
    "Netns",
    "add_address",
    "cleanup_all",
    "veth_pair",
]
