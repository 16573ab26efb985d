"""Helper parity (nfsyncd/sync/parity.py): the ANNOUNCE codec byte by byte, the decoder
on arbitrary bytes, the announce policy on a fake clock, and both checks."""

from __future__ import annotations

import contextlib
import logging
import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfsyncd._config_types import HelperAssign, HelperPolicy, HelpersConfig, UserspaceHelper
from nfsyncd.config import ConfigError, default_config, parse_config
from nfsyncd.model import Expectation, Flow, Tuple
from nfsyncd.sync.parity import (
    MAX_TRIES,
    NO_ANNOUNCE,
    RESEND_INTERVAL,
    Announce,
    AnnounceError,
    HelperParity,
    Problem,
    decode_announce,
    encode_announce,
    is_extension,
    local_helpers,
)
from nfsyncd.sync.wire import Message, NetworkStats, decode_datagram

# -- the codec ----------------------------------------------------------------------------------


def test_announce_bytes() -> None:
    wire = encode_announce(Announce(frozenset({"sip", "ftp"}), reply_wanted=True))
    assert wire == bytes.fromhex("2a000014 00000000 01010002") + b"ftp\0sip\0"
    assert decode_announce(wire) == Announce(frozenset({"ftp", "sip"}), True)
    # padding to a multiple of 4; no names at all is a valid (empty) set
    wire = encode_announce(Announce(frozenset({"Q.931"})))
    assert wire == bytes.fromhex("2a000014 00000000 01000001") + b"Q.931\0\0\0"
    assert encode_announce(Announce(frozenset())) == bytes.fromhex("2a00000c0000000001000000")
    assert decode_announce(bytes.fromhex("2a00000c0000000001000000")) == Announce(frozenset())


def test_conntrackd_sees_a_wrong_version_and_our_decoder_agrees() -> None:
    """Version 2 in the high nibble, a plain 8-byte-header framing: a receiver that does not
    know it counts one wrong-version message and goes on with the next one."""
    wire = encode_announce(Announce(frozenset({"ftp"}), reply_wanted=True))
    assert wire[0] >> 4 == 2 and wire[0] & 0x0F == 10 and is_extension(wire)
    alive = struct.pack(">BBHI", 0x1A, 0x10, 8, 7)
    stats = NetworkStats()  # no extension hook set: counted like any wrong version
    msgs = decode_datagram(wire + alive, stats)
    assert [m.seq for m in msgs] == [7]
    assert stats.wrong_version == 1 and stats.malformed == 1


def test_decoder_hook_hands_over_the_whole_message() -> None:
    wire = encode_announce(Announce(frozenset({"ftp"})))
    got: list[bytes] = []
    stats = NetworkStats()
    stats.extension = got.append
    garbage = b"\x20" + wire[1:]  # version 2 but not type 10: still a wrong version
    decode_datagram(wire + garbage, stats)
    assert got == [wire] and stats.wrong_version == 1


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x2a\x00\x00\x0c\x00\x00\x00\x00\x01\x00", Problem.TOO_SHORT),
        (bytes.fromhex("1a00000c0000000001000000"), Problem.NOT_ANNOUNCE),
        (bytes.fromhex("2b00000c0000000001000000"), Problem.NOT_ANNOUNCE),
        (bytes.fromhex("2a10000c0000000001000000"), Problem.BAD_HEADER),
        (bytes.fromhex("2a00000c0000000101000000"), Problem.BAD_HEADER),
        (bytes.fromhex("2a0000100000000001000000"), Problem.BAD_LENGTH),
        (bytes.fromhex("2a00000d000000000100000000"), Problem.BAD_LENGTH),
        (bytes.fromhex("2a00000c0000000002000000"), Problem.BAD_FORMAT),
        (bytes.fromhex("2a00000c0000000001020000"), Problem.BAD_FLAGS),
        (bytes.fromhex("2a000010000000000100000100000000"), Problem.BAD_NAME),
        (bytes.fromhex("2a00001000000000010000016120ff00"), Problem.BAD_NAME),
        (bytes.fromhex("2a0000140000000001000002") + b"ftp\0ftp\0", Problem.DUPLICATE_NAME),
        (bytes.fromhex("2a0000100000000001000002") + b"ftp\0", Problem.BAD_COUNT),
        (bytes.fromhex("2a0000100000000001000000") + b"ftp\0", Problem.BAD_PADDING),
        (bytes.fromhex("2a0000140000000001000001") + b"ftp\0\0\0\0\0", Problem.BAD_PADDING),
    ],
)
def test_decode_rejects(data: bytes, problem: Problem) -> None:
    with pytest.raises(AnnounceError) as info:
        decode_announce(data)
    assert info.value.problem is problem


def test_encode_refuses_names_the_wire_cannot_carry() -> None:
    for bad in ("", "with space", "x" * 64, "caf\u00e9"):
        with pytest.raises(ValueError):
            encode_announce(Announce(frozenset({bad})))


names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=63)


@settings(max_examples=300, deadline=None)
@given(st.frozensets(names, max_size=20), st.booleans())
def test_round_trip(helpers: frozenset[str], reply: bool) -> None:
    wire = encode_announce(Announce(helpers, reply))
    assert len(wire) % 4 == 0 and struct.unpack_from(">H", wire, 2)[0] == len(wire)
    assert decode_announce(wire) == Announce(helpers, reply)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=80) | st.builds(lambda b: bytes.fromhex("2a0000") + b, st.binary()))
def test_decoder_raises_only_its_named_error(data: bytes) -> None:
    try:
        ann = decode_announce(data)
    except AnnounceError as exc:
        assert isinstance(exc.problem, Problem)
    else:
        assert encode_announce(ann) == data  # what it accepts is exactly what we send


@settings(max_examples=500, deadline=None)
@given(st.frozensets(names, min_size=1, max_size=5), st.integers(0, 200), st.integers(0, 255))
def test_one_flipped_byte_never_escapes(helpers: frozenset[str], pos: int, value: int) -> None:
    wire = bytearray(encode_announce(Announce(helpers, True)))
    wire[pos % len(wire)] = value
    with contextlib.suppress(AnnounceError):
        decode_announce(bytes(wire))


# -- the local set ------------------------------------------------------------------------------


def test_local_helpers_are_kernel_names() -> None:
    cfg = default_config()
    cfg = replace(
        cfg,
        helpers=HelpersConfig(
            assign=(
                HelperAssign("ftp", "tcp", ((21, 21),)),
                HelperAssign("h323", "tcp", ((1720, 1720),)),
                HelperAssign("ras", "udp", ((1719, 1719),)),
                HelperAssign("ftp", "tcp", ((2121, 2121),)),
            ),
            userspace=(UserspaceHelper("dhcpv6", "udp", 5, (HelperPolicy("p", 1, 30.0),)),),
        ),
    )
    assert local_helpers(cfg) == {"ftp", "Q.931", "H.245", "RAS", "dhcpv6"}
    assert local_helpers(default_config()) == frozenset()


def test_helper_mismatch_key() -> None:
    base = "[expectations]\nsync = true\n"
    assert parse_config(base, "t.toml").expectations.helper_mismatch == "warn"
    cfg = parse_config(base + 'helper_mismatch = "fatal"\n', "t.toml")
    assert cfg.expectations.helper_mismatch == "fatal"
    with pytest.raises(ConfigError, match='helper_mismatch: must be one of "warn", "fatal"'):
        parse_config(base + 'helper_mismatch = "ignore"\n', "t.toml")


# -- the policy on a fake clock -----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(parity: HelperParity) -> list[Announce]:
    """What the engine does when woken: tick, then send whatever is ready."""
    parity.tick()
    return [decode_announce(m) for m in parity.output()]


def make(local: set[str], **kw: object) -> tuple[HelperParity, Clock]:
    clock = Clock()
    parity = HelperParity(local, clock=clock, **kw)  # type: ignore[arg-type]
    return parity, clock


def test_announce_resend_and_give_up() -> None:
    parity, clock = make({"ftp"})
    assert run(parity) == [] and parity.deadline() is None  # nothing before start()
    parity.start()
    sent = run(parity)
    assert sent == [Announce(frozenset({"ftp"}), reply_wanted=True)]
    assert run(parity) == []  # not again before the interval
    assert parity.deadline() == pytest.approx(clock.now + RESEND_INTERVAL)
    for _ in range(MAX_TRIES - 1):
        clock.now += RESEND_INTERVAL
        assert parity.has_output()
        assert len(run(parity)) == 1
    clock.now += RESEND_INTERVAL
    assert run(parity) == []  # the third went unanswered: give up
    assert parity.sent == MAX_TRIES and parity.deadline() is None
    assert parity.status()["peer"] is None
    assert (
        parity.status()["peer_state"] == NO_ANNOUNCE == "peer: conntrackd-compatible, no announce"
    )
    clock.now += 60
    assert run(parity) == [] and parity.sent == MAX_TRIES


def test_answer_and_stop_resending() -> None:
    parity, clock = make({"ftp", "sip"})
    parity.start()
    run(parity)
    # the peer's own start-up announce wants an answer: one, without "reply wanted"
    parity.receive(encode_announce(Announce(frozenset({"sip", "ftp"}), reply_wanted=True)))
    assert parity.has_output()
    assert run(parity) == [Announce(frozenset({"ftp", "sip"}), reply_wanted=False)]
    clock.now += 10 * RESEND_INTERVAL
    assert run(parity) == [] and parity.deadline() is None
    st_ = parity.status()
    assert st_["peer"] == ["ftp", "sip"] and st_["mismatches"] == 0
    assert (st_["announces_sent"], st_["announces_received"]) == (2, 1)
    # an answer (no reply wanted) is not answered again
    parity.receive(encode_announce(Announce(frozenset({"ftp", "sip"}))))
    assert not parity.has_output()


def test_peer_restart_starts_again_and_a_late_announce_is_taken() -> None:
    parity, clock = make({"ftp"})
    parity.start()
    for _ in range(MAX_TRIES + 1):
        run(parity)
        clock.now += RESEND_INTERVAL
    assert parity.gave_up
    parity.peer_restarted()
    assert [a.reply_wanted for a in run(parity)] == [True]
    # a peer that starts later announces itself: taken even after giving up
    parity.receive(encode_announce(Announce(frozenset({"ftp"}), True)))
    assert parity.status()["peer"] == ["ftp"] and not parity.gave_up
    assert run(parity) == [Announce(frozenset({"ftp"}), False)]


def test_reload_announces_the_new_set_but_not_to_a_mute_peer() -> None:
    parity, _ = make({"ftp"})
    parity.start()
    run(parity)
    parity.receive(encode_announce(Announce(frozenset({"ftp"}))))
    assert not parity.set_local({"ftp"})
    assert parity.set_local({"ftp", "sip"})
    assert run(parity) == [Announce(frozenset({"ftp", "sip"}), True)]
    assert parity.status()["missing_on_peer"] == ["sip"] and parity.mismatches == 1
    mute, clock2 = make({"ftp"})
    mute.start()
    for _ in range(MAX_TRIES + 1):
        run(mute)
        clock2.now += RESEND_INTERVAL
    assert mute.set_local({"sip"}) and run(mute) == [] and mute.sent == MAX_TRIES


def test_announce_off() -> None:
    parity, _ = make({"ftp"}, announce=False)
    parity.start()
    assert run(parity) == [] and parity.deadline() is None
    assert "announces off" in parity.status()["peer_state"]


# -- the checks ---------------------------------------------------------------------------------


def test_mismatch_counted_and_logged_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    parity, _ = make({"ftp", "sip"})
    caplog.set_level(logging.WARNING, "nfsyncd.sync.parity")
    for _ in range(3):
        parity.receive(encode_announce(Announce(frozenset({"ftp", "tftp"}))))
    assert parity.mismatches == 1 and len(caplog.records) == 1
    assert "missing here: tftp; missing on the peer: sip" in caplog.text
    st_ = parity.status()
    assert (st_["missing_here"], st_["missing_on_peer"]) == (["tftp"], ["sip"])
    parity.receive(encode_announce(Announce(frozenset({"ftp", "sip"}))))  # fixed
    assert parity.status()["missing_here"] == [] and parity.mismatches == 1
    parity.receive(encode_announce(Announce(frozenset({"ftp"}))))
    assert parity.mismatches == 2 and parity.fatal is None


def test_fatal_policy_names_the_helpers() -> None:
    parity, _ = make({"ftp"}, policy="fatal")
    parity.receive(encode_announce(Announce(frozenset({"ftp"}))))
    assert parity.fatal is None
    parity.receive(encode_announce(Announce(frozenset({"sip"}))))
    assert parity.fatal is not None and "missing here: sip" in parity.fatal
    assert "missing on the peer: ftp" in parity.fatal


def _exp(helper: str | None) -> Expectation:
    t = Tuple(bytes(4), bytes(4), 6, 0, 1)
    return Expectation(t, t, t, helper=helper)


def test_expectations_without_local_helper(caplog: pytest.LogCaptureFixture) -> None:
    parity, _ = make({"ftp"})
    caplog.set_level(logging.WARNING, "nfsyncd.sync.parity")
    flow = Flow(Tuple(bytes(4), bytes(4), 6, 1, 2))
    msgs = [
        Message(3, 0, 1, _exp("ftp")),
        Message(3, 0, 2, _exp("sip")),
        Message(4, 0, 3, _exp("sip")),
        Message(5, 0, 4, _exp("sip")),  # a delete needs no helper
        Message(3, 0, 5, _exp(None)),
        Message(0, 0, 6, flow),
        Message(3, 0, 7, _exp("Q.931")),
    ]
    parity.check_messages(msgs)
    assert parity.status()["expectations_without_local_helper"] == {"Q.931": 1, "sip": 2}
    assert len(caplog.records) == 2 and "'sip'" in caplog.text
    fatal, _ = make(set(), policy="fatal")
    fatal.check_expectation(_exp("ftp"))
    assert fatal.fatal is not None and "'ftp'" in fatal.fatal


def test_malformed_announce_is_counted_not_raised() -> None:
    parity, _ = make({"ftp"})
    assert parity.receive(b"\x2a\x00\x00\x08\x00\x00\x00\x00") is None
    assert parity.status()["announces_malformed"] == 1 and parity.peer is None


def test_metrics() -> None:
    from nfsyncd.metrics import render
    from nfsyncd.sync.metrics import _parity_metrics

    parity, _ = make({"ftp"})
    parity.receive(encode_announce(Announce(frozenset({"sip"}))))
    parity.check_expectation(_exp("sip"))
    text = render(_parity_metrics(parity))
    assert "nfsyncd_helper_mismatches_total 1" in text
    assert 'nfsyncd_helpers_missing{helper="sip",missing="here"} 1' in text
    assert 'nfsyncd_expectations_without_local_helper_total{helper="sip"} 1' in text
    assert 'nfsyncd_helper_announces_total{direction="received"} 1' in text
