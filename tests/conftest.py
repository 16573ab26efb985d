"""Fixtures for kernel tests: throwaway namespaces, a veth pair, a real FTP server.

Kernel tests (``@pytest.mark.kernel``, or any test using the namespace fixtures) are skipped
with the reason printed when not root or when ip/nft/conntrack are missing; with
NFSYNC_REQUIRE_ALL=1 those skips are failures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nfsyncd.lab.netns import Netns, cleanup_all, veth_pair
from tests._support import (
    FtpServer,
    NetnsPair,
    kernel_unavailable,
    require_all,
    require_kernel,
    skip_or_fail,
    start_ftp_server,
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Skip markers (rather than a skip raised in setup) make `-rs` name each test's location.
    reason = kernel_unavailable()
    if reason is None or require_all():
        return
    for item in items:
        if item.get_closest_marker("kernel") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernel") is not None:
        require_kernel()  # with NFSYNC_REQUIRE_ALL=1: fails instead of skipping


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Safety net: whatever a test or fixture forgot, this process's namespaces go now.
    cleanup_all()


@pytest.fixture(scope="session", autouse=True)
def _jail() -> Iterator[None]:
    """Run the test session's main thread in an empty namespace of its own (when root).

    A socket belongs to the namespace its thread was in when it was made. A test that forgets
    ``ns.entered()`` (or a library that makes a socket later, like ftplib's data connection)
    would otherwise reach the host's network, and a netlink socket the host's conntrack
    table. In the jail such a socket sees only ``lo`` and an empty conntrack table. Child
    processes inherit the jail too; ``ip netns exec`` still switches to its target.
    """
    if kernel_unavailable() is not None:
        yield
        return
    with Netns.create("jail") as jail, jail.entered():
        yield


@pytest.fixture
def require() -> Callable[[str], None]:
    """``require(reason)``: skip the test, or fail it when NFSYNC_REQUIRE_ALL=1."""
    return skip_or_fail


@pytest.fixture
def root() -> None:
    """Skip (or fail, with NFSYNC_REQUIRE_ALL=1) unless kernel tests can run here."""
    require_kernel()


@pytest.fixture
def netns(root: None) -> Iterator[Netns]:
    """A fresh network namespace with only ``lo`` (up); deleted after the test."""
    ns = Netns.create("t")
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture
def netns_pair(root: None) -> Iterator[NetnsPair]:
    """Namespaces ``a`` (198.18.0.1/24) and ``b`` (198.18.0.2/24) joined by a veth."""
    a = Netns.create("ta")
    try:
        b = Netns.create("tb")
        try:
            a_if, b_if = veth_pair(a, b, "198.18.0.1/24", "198.18.0.2/24")
            yield NetnsPair(a, b, a_if, b_if, "198.18.0.1", "198.18.0.2")
        finally:
            b.close()
    finally:
        a.close()


@pytest.fixture
def ftp_server(root: None, tmp_path: Path) -> Iterator[Callable[..., FtpServer]]:
    """Factory ``ftp_server(ns, address, port=2121) -> FtpServer``: a real pyftpdlib server.

    Anonymous read/write on a fresh directory (``server.root``), passive data ports
    30000-30009, returned once the port accepts connections. Use ``tests._support.lftp``
    (the real lftp client, PASV or active) or ftplib from inside ``ns.entered()``.

    What makes the in-kernel ftp helper create an expectation (measured on kernel 6.18, see
    tests/test_lab.py, which checks each of these):

    * Nothing happens without a rule: the kernel no longer attaches helpers by port, so an
      nft ``ct helper`` object must be assigned with ``ct helper set`` (because it is assigned
      by rule, a nonstandard control port such as 2121 works the same as 21).
    * The rule must see the control connection's *first* packet (the SYN, while the
      conntrack entry is unconfirmed) in a chain after conntrack (priority > -200, e.g.
      ``filter``), in the namespace whose conntrack table is to hold the expectation. Each
      namespace has its own table; the expectation appears only there.
      - server namespace: hook ``prerouting`` or ``input`` works; ``output``/``postrouting``
        do nothing (they only see replies of an already confirmed entry);
      - client namespace: hook ``output`` or ``postrouting`` works; ``prerouting``/``input``
        do nothing.
      A forwarding gateway would use ``prerouting`` (or ``forward``).
    * PASV: the expectation (src=client, dst=server, dport=the passive port, any source
      port) is in ``conntrack -L expect`` as soon as the client has read the 227 reply, and
      stays until the data connection uses it.
    * PORT (active): created when the PORT command passes, but pyftpdlib connects back at
      once (before it even replies 200), so the expectation is consumed within milliseconds.
      To observe it, hold the server's data SYN in an output chain at priority ``raw``
      (before conntrack, so the expectation is not consumed) and send PORT without waiting
      for the reply.
    * The data connection is then ``ct state related`` (on the server: inbound for PASV,
      outbound for PORT), which is what lets a strict stateful ruleset admit it.
    """
    servers: list[FtpServer] = []
    counter = 0

    def start(ns: Netns, address: str, port: int = 2121) -> FtpServer:
        nonlocal counter
        counter += 1
        server = start_ftp_server(ns, address, tmp_path / f"ftproot{counter}", port)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
