"""The userspace filter: conntrackd's Filter semantics (reference/conntrackd.md §4.6) and
ExpectationSync's helper list (§4.4).

What these tests guarantee:

* each rule kind (protocol, address, TCP state) accepts and ignores as conntrackd does,
  and a flow must pass every rule that is set;
* an address rule matches the original source or the reply source (never a destination),
  for IPv4 and IPv6 hosts and networks, and agrees with ``ipaddress`` on random input;
* TCP state rules judge only TCP flows with a known state;
* the expectation helper list is a case-insensitive prefix match that rejects
  expectations without a helper, and an empty list accepts everything;
* a filter is built the same from plain arguments and from the configuration.
"""

from __future__ import annotations

import ipaddress
import socket
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfsyncd.filter import Filter
from nfsyncd.model import (
    IPPROTO_ICMP,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Expectation,
    Flow,
    SctpInfo,
    TcpInfo,
    Tuple,
)

SYN_SENT, ESTABLISHED, FIN_WAIT, TIME_WAIT, LISTEN = 1, 3, 4, 7, 10


def ip(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def flow(
    src: str = "198.18.0.1",
    dst: str = "198.18.1.1",
    proto: int = IPPROTO_TCP,
    *,
    reply_src: str | None = None,
    no_reply: bool = False,
    state: int | None = None,
) -> Flow:
    """A flow from ``src`` to ``dst``; ``reply_src`` makes it DNATed to that server."""
    if proto in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP):
        orig = Tuple(ip(src), ip(dst), proto, 40000, 80)
    else:
        orig = Tuple(ip(src), ip(dst), proto, icmp_type=8, icmp_code=0, icmp_id=1)
    reply = None if no_reply else orig.inverted()
    if reply is not None and reply_src is not None:
        reply = reply._replace(src=ip(reply_src))
    info = TcpInfo(state) if proto == IPPROTO_TCP and state is not None else None
    return Flow(orig, reply, status=8, timeout=60, protoinfo=info)


def expect(helper: str | None) -> Expectation:
    t = Tuple(ip("198.18.0.1"), ip("198.18.1.1"), IPPROTO_TCP, 0, 30000)
    mask = Tuple(ip("255.255.255.255"), ip("255.255.255.255"), 0xFF, 0, 0xFFFF)
    master = Tuple(ip("198.18.0.1"), ip("198.18.1.1"), IPPROTO_TCP, 40000, 21)
    return Expectation(master, t, mask, timeout=30, helper=helper)


# --- no rules -------------------------------------------------------------------------------


def test_a_filter_without_rules_accepts_everything_and_says_so() -> None:
    f = Filter()
    assert f.filters_flows is False
    for fl in (flow(), flow(proto=IPPROTO_UDP), flow("2001:db8::1", "2001:db8::2", state=1)):
        assert f.accepts_flow(fl)
    assert f.accepts_expect(expect("ftp")) and f.accepts_expect(expect(None))


def test_helper_list_alone_does_not_filter_flows() -> None:
    assert Filter(expect_helpers=("ftp",)).filters_flows is False


# --- protocol -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "proto", "accepted"),
    [
        ("accept", IPPROTO_TCP, True),
        ("accept", IPPROTO_UDP, True),
        ("accept", IPPROTO_ICMP, False),
        ("accept", IPPROTO_SCTP, False),
        ("ignore", IPPROTO_TCP, False),
        ("ignore", IPPROTO_UDP, False),
        ("ignore", IPPROTO_ICMP, True),
        ("ignore", IPPROTO_SCTP, True),
    ],
)
def test_protocol_rule(action: str, proto: int, accepted: bool) -> None:
    """accept = replicate only the listed protocols; ignore = all but them."""
    f = Filter(protocol=(action, (IPPROTO_TCP, IPPROTO_UDP)))  # type: ignore[arg-type]
    assert f.filters_flows
    assert f.accepts_flow(flow(proto=proto)) is accepted


# --- address --------------------------------------------------------------------------------

ADDRESSES = ("198.18.5.5", "198.18.8.0/24", "2001:db8::5", "2001:db8:1::/48")


@pytest.mark.parametrize(
    ("fl", "matches"),
    [
        pytest.param(flow("198.18.5.5", "198.18.1.1"), True, id="v4 host, orig src"),
        pytest.param(flow("198.18.5.6", "198.18.1.1"), False, id="v4 neighbour of the host"),
        pytest.param(flow("198.18.8.200", "198.18.1.1"), True, id="v4 net, orig src"),
        pytest.param(flow("198.18.9.1", "198.18.1.1"), False, id="v4 just outside the net"),
        pytest.param(flow("198.18.1.1", "198.18.5.5"), True, id="v4 host, reply src"),
        pytest.param(flow("198.18.1.1", "198.18.8.1"), True, id="v4 net, reply src"),
        pytest.param(
            flow("198.18.1.1", "198.18.0.100", reply_src="198.18.5.5"),
            True,
            id="DNAT: the real server answers",
        ),
        pytest.param(
            flow("198.18.1.1", "198.18.5.5", reply_src="198.18.2.2"),
            False,
            id="DNAT: the listed address is only the original destination",
        ),
        pytest.param(
            flow("198.18.1.1", "198.18.5.5", no_reply=True),
            False,
            id="no reply tuple: the original source alone counts",
        ),
        pytest.param(
            flow("198.18.5.5", "198.18.1.1", no_reply=True), True, id="no reply tuple, orig src"
        ),
        pytest.param(flow("2001:db8::5", "2001:db8:9::1"), True, id="v6 host, orig src"),
        pytest.param(flow("2001:db8::6", "2001:db8:9::1"), False, id="v6 neighbour of the host"),
        pytest.param(flow("2001:db8:1:ffff::1", "2001:db8:9::1"), True, id="v6 net, orig src"),
        pytest.param(flow("2001:db8:2::1", "2001:db8:9::1"), False, id="v6 just outside the net"),
        pytest.param(flow("2001:db8:9::1", "2001:db8::5"), True, id="v6 host, reply src"),
        pytest.param(flow("2001:db8:9::1", "2001:db8:1::9"), True, id="v6 net, reply src"),
    ],
)
def test_address_rule_matches_either_real_source(fl: Flow, matches: bool) -> None:
    """A flow matches when its original or reply source is a listed host or inside a
    listed network; accept keeps exactly the matching flows, ignore drops them."""
    accept = Filter(address=("accept", ADDRESSES))
    ignore = Filter(address=("ignore", ADDRESSES))
    assert accept.accepts_flow(fl) is matches
    assert ignore.accepts_flow(fl) is not matches


def test_address_items_in_every_form_the_config_may_give() -> None:
    """ipaddress networks and addresses (the config's types), text and packed bytes."""
    items = (
        ipaddress.ip_network("198.18.8.0/24"),
        ipaddress.ip_address("198.18.5.5"),
        ipaddress.ip_network("2001:db8::5/128"),
        "198.18.6.0/23",
        ip("198.18.9.9"),
    )
    f = Filter(address=("accept", items))
    for src in ("198.18.8.1", "198.18.5.5", "2001:db8::5", "198.18.7.255", "198.18.9.9"):
        assert f.accepts_flow(flow(src, "198.18.1.1" if "." in src else "2001:db8:9::1")), src
    assert not f.accepts_flow(flow("198.18.10.1", "198.18.1.1"))


def test_a_whole_family_network_matches_only_its_family() -> None:
    f = Filter(address=("ignore", ("0.0.0.0/0",)))
    assert not f.accepts_flow(flow("203.0.113.1", "198.18.1.1"))
    assert f.accepts_flow(flow("2001:db8::1", "2001:db8::2"))


def test_an_accept_list_of_one_family_rejects_the_other() -> None:
    f = Filter(address=("accept", ("198.18.0.0/15",)))
    assert f.accepts_flow(flow("198.18.0.1", "198.18.1.1"))
    assert not f.accepts_flow(flow("2001:db8::1", "2001:db8::2"))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(8, 32)), min_size=1, max_size=6),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
)
def test_address_rule_agrees_with_ipaddress(
    nets: list[tuple[int, int]], src: int, reply_src: int
) -> None:
    """Random networks (hosts at /32) and endpoints: the precomputed sets decide as a
    plain ``address in network`` test over both sources does."""
    networks = [ipaddress.IPv4Network((addr, plen), strict=False) for addr, plen in nets]
    srcs = [ipaddress.IPv4Address(src), ipaddress.IPv4Address(reply_src)]
    want = any(a in n for a in srcs for n in networks)
    fl = flow(str(srcs[0]), "198.18.1.1", reply_src=str(srcs[1]))
    assert Filter(address=("accept", networks)).accepts_flow(fl) is want
    assert Filter(address=("ignore", networks)).accepts_flow(fl) is not want


# --- TCP state ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "fl", "accepted"),
    [
        ("accept", flow(state=ESTABLISHED), True),
        ("accept", flow(state=TIME_WAIT), True),
        ("accept", flow(state=SYN_SENT), False),
        ("accept", flow(state=FIN_WAIT), False),
        ("ignore", flow(state=ESTABLISHED), False),
        ("ignore", flow(state=SYN_SENT), True),
        ("accept", flow(state=None), True),  # a TCP flow without protoinfo
        ("ignore", flow(state=None), True),
        ("accept", flow(proto=IPPROTO_UDP), True),  # other protocols pass
        ("ignore", flow(proto=IPPROTO_UDP), True),
        ("accept", flow(proto=IPPROTO_ICMP), True),
    ],
)
def test_tcp_state_rule(action: str, fl: Flow, accepted: bool) -> None:
    f = Filter(tcp_state=(action, (ESTABLISHED, TIME_WAIT)))  # type: ignore[arg-type]
    assert f.accepts_flow(fl) is accepted


def test_tcp_state_rule_ignores_state_less_protoinfo() -> None:
    """A TCP flow whose protoinfo carries no state (partial update), or SCTP's protoinfo
    on a TCP tuple, is not judged."""
    f = Filter(tcp_state=("accept", (ESTABLISHED,)))
    assert f.accepts_flow(flow()._replace(protoinfo=TcpInfo(None, 7, 7)))
    assert f.accepts_flow(flow()._replace(protoinfo=SctpInfo(3)))


def test_listen_never_matches_a_kernel_state() -> None:
    """The config stores LISTEN as 10, which no kernel state has: accept [LISTEN] rejects
    every TCP flow with a state, ignore [LISTEN] rejects none."""
    for state in range(10):
        assert not Filter(tcp_state=("accept", (LISTEN,))).accepts_flow(flow(state=state))
        assert Filter(tcp_state=("ignore", (LISTEN,))).accepts_flow(flow(state=state))


# --- rules together -------------------------------------------------------------------------


def test_every_rule_that_is_set_must_pass() -> None:
    f = Filter(
        protocol=("accept", (IPPROTO_TCP,)),
        address=("ignore", ("198.18.5.5",)),
        tcp_state=("ignore", (SYN_SENT,)),
    )
    assert f.accepts_flow(flow(state=ESTABLISHED))
    assert not f.accepts_flow(flow(proto=IPPROTO_UDP))
    assert not f.accepts_flow(flow("198.18.5.5", state=ESTABLISHED))
    assert not f.accepts_flow(flow(state=SYN_SENT))


def test_a_bad_action_is_refused() -> None:
    with pytest.raises(ValueError, match="accept' or 'ignore"):
        Filter(protocol=("drop", (6,)))  # type: ignore[arg-type]


def test_a_network_with_host_bits_is_refused() -> None:
    with pytest.raises(ValueError):
        Filter(address=("accept", ("198.18.0.1/24",)))


# --- expectations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("helper", "accepted"),
    [
        ("ftp", True),
        ("FTP", True),
        ("sip", True),
        ("sip-5060", True),  # prefix match
        ("SIP-5060", True),
        ("tftp", False),  # not a prefix
        ("ft", False),
        ("h323", False),
        (None, False),  # no helper: rejected when a list is given
    ],
)
def test_expectation_helper_list(helper: str | None, accepted: bool) -> None:
    f = Filter(expect_helpers=("ftp", "Sip"))
    assert f.accepts_expect(expect(helper)) is accepted


# --- construction ---------------------------------------------------------------------------


def test_from_config_reads_the_config_attributes() -> None:
    """Duck-typed: a FilterConfig-like object (rules with action/items, or None) and an
    ExpectConfig-like one, or a whole Config-like object holding both."""
    fcfg = SimpleNamespace(
        kernel_side=False,
        protocol=SimpleNamespace(action="accept", items=(IPPROTO_TCP,)),
        address=SimpleNamespace(action="ignore", items=(ipaddress.ip_network("198.18.5.0/24"),)),
        tcp_state=None,
    )
    ecfg = SimpleNamespace(sync=True, helpers=("ftp",))
    want = Filter(
        protocol=("accept", (IPPROTO_TCP,)),
        address=("ignore", ("198.18.5.0/24",)),
        expect_helpers=("FTP",),
    )
    assert Filter.from_config(fcfg, ecfg) == want
    assert Filter.from_config(SimpleNamespace(filter=fcfg, expectations=ecfg)) == want
    assert Filter.from_config(fcfg) == Filter(
        protocol=("accept", (IPPROTO_TCP,)), address=("ignore", ("198.18.5.0/24",))
    )
    assert Filter.from_config(fcfg, ecfg) != Filter.from_config(fcfg)


def test_from_config_with_the_real_config() -> None:
    config = pytest.importorskip("nfsyncd.config")
    cfg = config.parse_config(
        "[filter.protocol]\naccept = ['tcp', 'udp']\n"
        "[filter.address]\nignore = ['198.18.5.5', '198.18.8.0/24', '2001:db8::/32']\n"
        "[filter.tcp_state]\nignore = ['SYN_SENT']\n"
        "[expectations]\nsync = true\nhelpers = ['ftp']\n",
        "test.toml",
    )
    f = Filter.from_config(cfg.filter, cfg.expectations)
    assert f == Filter.from_config(cfg)
    assert f.accepts_flow(flow(state=ESTABLISHED))
    assert not f.accepts_flow(flow(state=SYN_SENT))
    assert not f.accepts_flow(flow(proto=IPPROTO_ICMP))
    assert not f.accepts_flow(flow("198.18.8.8", state=ESTABLISHED))
    assert not f.accepts_flow(flow("2001:db8::1", "2001:db9::1", state=ESTABLISHED))
    assert f.accepts_expect(expect("ftp")) and not f.accepts_expect(expect("sip"))
    assert Filter.from_config(config.default_config()) == Filter()
