"""Fixtures of the kernel tests: a namespace with our Conntrack socket in it, a routed
three-namespace path (client -> router -> server) for NAT and forwarding scenarios."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from nfsyncd.kernel import Conntrack
from nfsyncd.lab.netns import Netns, veth_pair
from tests.kernel._ctutil import CtLab


@pytest.fixture
def lab(netns: Netns) -> Iterator[CtLab]:
    """A fresh namespace and a :class:`Conntrack` whose socket lives in it."""
    with netns.entered():
        ct = Conntrack()
    with ct:
        yield CtLab(netns, ct)


@dataclass
class RoutedPath:
    """client (198.18.1.2) -- lan -- router (198.18.1.1 | 198.18.2.1) -- wan -- server
    (198.18.2.2). The client routes 198.18.2.0/24 via the router; the server has no route
    back (only SNAT, or an explicit route, lets replies find the client). The router
    forwards."""

    client: Netns
    router: Netns
    server: Netns
    client_ip: str = "198.18.1.2"
    router_lan_ip: str = "198.18.1.1"
    router_wan_ip: str = "198.18.2.1"
    server_ip: str = "198.18.2.2"
    lan_if: str = "lan"
    wan_if: str = "wan"


@pytest.fixture
def routed_path(root: None) -> Iterator[RoutedPath]:
    made: list[Netns] = []
    try:
        for prefix in ("tcl", "trt", "tsv"):
            made.append(Netns.create(prefix))
        client, router, server = made
        path = RoutedPath(client, router, server)
        veth_pair(client, router, f"{path.client_ip}/24", f"{path.router_lan_ip}/24", "eth0", "lan")
        veth_pair(router, server, f"{path.router_wan_ip}/24", f"{path.server_ip}/24", "wan", "eth0")
        client.ip("route", "add", "198.18.2.0/24", "via", path.router_lan_ip)
        router.sysctl("net.ipv4.ip_forward", 1)
        yield path
    finally:
        for ns in reversed(made):
            ns.close()
