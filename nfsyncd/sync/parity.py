"""Helper parity with the peer: an expectation is only useful on a node whose kernel has
(and assigns) the helper that made it, so both nodes must assign the same helpers.

Two checks, both sans-IO (time comes from the injected clock, bytes in and out):

* nfsyncd peers tell each other their helper sets in an ANNOUNCE message, an nfsyncd
  extension that conntrackd skips: its header says protocol version 2, which conntrackd
  counts once as "Wrong protocol version" and steps over (reference §1.1), and it carries
  no sequence number, so it never disturbs FTFW's.  The two sets are compared and a
  difference is logged once per change, counted, and (``helper_mismatch = "fatal"``) ends
  the daemon.
* every expectation the peer sends (whatever the peer is) names its helper; one this node
  does not assign could not be committed here, so it is counted and logged once per name.

ANNOUNCE on the wire (every integer big-endian, total length a multiple of 4)::

    0x2a  0x00  len:u16  seq:u32=0        header: version 2, type 10, flags 0
    0x01  aflags  count:u16               payload format 1; aflags 0x01 = reply wanted
    name NUL name NUL ...  NUL*0-3        ``count`` helper names, sorted, then padding

A node announces when it starts and whenever its own set changes, with "reply wanted",
and repeats every :data:`RESEND_INTERVAL` seconds until the peer's ANNOUNCE arrives, at
most :data:`MAX_TRIES` times a peer session: a peer that never answers is taken for
conntrackd (or an nfsyncd without expectation sync).  A peer restart starts it again.
"""

from __future__ import annotations

import enum
import logging
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

from .._config_types import Config
from ..model import Expectation
from .wire import Message

__all__ = [
    "ANNOUNCE_BYTE0",
    "KERNEL_HELPER_NAMES",
    "MAX_TRIES",
    "RESEND_INTERVAL",
    "Announce",
    "AnnounceError",
    "HelperMismatchError",
    "HelperParity",
    "Problem",
    "decode_announce",
    "encode_announce",
    "is_extension",
    "local_helpers",
]

log = logging.getLogger("nfsyncd.sync.parity")

EXTENSION_VERSION: Final = 2
ANNOUNCE_TYPE: Final = 10
#: first header byte: version 2 in the high nibble, type 10 in the low one
ANNOUNCE_BYTE0: Final = (EXTENSION_VERSION << 4) | ANNOUNCE_TYPE
PAYLOAD_FORMAT: Final = 1
REPLY_WANTED: Final = 0x01
#: longest helper name accepted; the kernel's own limit is 15 (NF_CT_HELPER_NAME_LEN - 1)
MAX_NAME: Final = 63
RESEND_INTERVAL: Final = 2.0
MAX_TRIES: Final = 3
NO_ANNOUNCE: Final = "peer: conntrackd-compatible, no announce"

_HEADER = struct.Struct(">BBHI")
_PAYLOAD_HEAD = struct.Struct(">BBH")
_MIN_LEN: Final = _HEADER.size + _PAYLOAD_HEAD.size

#: [[helpers.assign]] names whose kernel helper is called otherwise; the h323 helpers also
#: give the H.245 channels they expect a helper of their own (which then makes expectations)
KERNEL_HELPER_NAMES: Final[dict[str, tuple[str, ...]]] = {
    "h323": ("Q.931", "H.245"),
    "q931": ("Q.931", "H.245"),
    "ras": ("RAS",),
}

Policy = Literal["warn", "fatal"]


class Problem(enum.Enum):
    """Why bytes are not an ANNOUNCE (the name is the counter a status shows)."""

    TOO_SHORT = "too_short"
    NOT_ANNOUNCE = "not_announce"
    BAD_HEADER = "bad_header"
    BAD_LENGTH = "bad_length"
    BAD_FORMAT = "bad_format"
    BAD_FLAGS = "bad_flags"
    BAD_NAME = "bad_name"
    DUPLICATE_NAME = "duplicate_name"
    BAD_COUNT = "bad_count"
    BAD_PADDING = "bad_padding"


class AnnounceError(ValueError):
    """Bytes that are not a well-formed ANNOUNCE; :attr:`problem` says which rule broke."""

    def __init__(self, problem: Problem, detail: str) -> None:
        super().__init__(f"{problem.value}: {detail}")
        self.problem = problem


class HelperMismatchError(OSError):
    """The helper sets differ and ``helper_mismatch = "fatal"``.  An OSError, because that
    is what the daemon reports as a runtime failure (one log line, exit status 1)."""


@dataclass(frozen=True, slots=True)
class Announce:
    helpers: frozenset[str]
    reply_wanted: bool = False


def _check_name(name: str) -> bytes:
    raw = name.encode("utf-8")
    if not 0 < len(raw) <= MAX_NAME or any(b <= 0x20 or b >= 0x7F for b in raw):
        raise ValueError(f"helper name {name!r}: 1-{MAX_NAME} printable ASCII characters")
    return raw


def encode_announce(announce: Announce) -> bytes:
    """The whole message (raises ValueError for a name the wire cannot carry)."""
    names = sorted(announce.helpers)
    body = b"".join(_check_name(name) + b"\0" for name in names)
    body += b"\0" * (-(_MIN_LEN + len(body)) % 4)
    length = _MIN_LEN + len(body)
    if length > 0xFFFF:
        raise ValueError(f"{len(names)} helper names do not fit one message")
    flags = REPLY_WANTED if announce.reply_wanted else 0
    return (
        _HEADER.pack(ANNOUNCE_BYTE0, 0, length, 0)
        + _PAYLOAD_HEAD.pack(PAYLOAD_FORMAT, flags, len(names))
        + body
    )


def is_extension(data: bytes | bytearray | memoryview) -> bool:
    """Whether a message starts with nfsyncd's extension version (what a receiver routes
    here instead of counting it as a wrong protocol version)."""
    return len(data) > 0 and data[0] >> 4 == EXTENSION_VERSION


def decode_announce(data: bytes | bytearray | memoryview) -> Announce:
    """Exactly one ANNOUNCE; anything else raises :class:`AnnounceError`, nothing else."""
    buf = bytes(data)
    if len(buf) < _MIN_LEN:
        raise AnnounceError(Problem.TOO_SHORT, f"{len(buf)} bytes, an ANNOUNCE has >= {_MIN_LEN}")
    byte0, hflags, length, seq = _HEADER.unpack_from(buf)
    if byte0 != ANNOUNCE_BYTE0:
        raise AnnounceError(
            Problem.NOT_ANNOUNCE, f"header byte {byte0:#04x}, not {ANNOUNCE_BYTE0:#04x}"
        )
    if hflags or seq:
        raise AnnounceError(Problem.BAD_HEADER, f"flags {hflags:#x} and seq {seq}, must be 0")
    if length != len(buf) or length % 4:
        raise AnnounceError(
            Problem.BAD_LENGTH, f"length field {length}, message of {len(buf)} bytes"
        )
    fmt, aflags, count = _PAYLOAD_HEAD.unpack_from(buf, _HEADER.size)
    if fmt != PAYLOAD_FORMAT:
        raise AnnounceError(Problem.BAD_FORMAT, f"payload format {fmt}, expected 1")
    if aflags & ~REPLY_WANTED:
        raise AnnounceError(Problem.BAD_FLAGS, f"announce flags {aflags:#x}")
    names: set[str] = set()
    off = _MIN_LEN
    for index in range(count):
        end = buf.find(b"\0", off)
        if end < 0:
            raise AnnounceError(Problem.BAD_COUNT, f"{count} names announced, {index} present")
        raw = buf[off:end]
        if not 0 < len(raw) <= MAX_NAME or any(b <= 0x20 or b >= 0x7F for b in raw):
            raise AnnounceError(Problem.BAD_NAME, f"name {index} is {raw!r}")
        name = raw.decode("ascii")
        if name in names:
            raise AnnounceError(Problem.DUPLICATE_NAME, f"{name!r} twice")
        names.add(name)
        off = end + 1
    rest = buf[off:]
    if len(rest) > 3 or rest.strip(b"\0"):
        raise AnnounceError(Problem.BAD_PADDING, f"{len(rest)} bytes after the last name")
    return Announce(frozenset(names), bool(aflags & REPLY_WANTED))


def local_helpers(config: Config) -> frozenset[str]:
    """The helper names this node's kernel gives flows: every [[helpers.assign]] helper under
    its kernel name, and every [[helpers.userspace]] helper."""
    names: set[str] = set()
    for assign in config.helpers.assign:
        names.update(KERNEL_HELPER_NAMES.get(assign.helper, (assign.helper,)))
    names.update(helper.name for helper in config.helpers.userspace)
    return frozenset(names)


def _names(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "none"


class HelperParity:
    """The announce policy and both checks for one peer (see the module doc).

    The engine feeds it the peer's extension messages (:meth:`receive`), its decoded data
    messages (:meth:`check_messages`) and peer restarts (:meth:`peer_restarted`), sends
    what :meth:`output` returns and calls :meth:`tick` at :meth:`deadline`.  With the
    fatal policy :attr:`fatal` is set to the error message; the engine stops on it.
    """

    def __init__(
        self,
        local: Iterable[str],
        *,
        clock: Callable[[], float],
        policy: Policy = "warn",
        announce: bool = True,
    ) -> None:
        self.local = frozenset(local)
        for name in self.local:
            _check_name(name)
        self.clock = clock
        self.policy = policy
        #: False: never send announces (the receive side cannot take the peer's either)
        self.announce = announce
        self.peer: frozenset[str] | None = None
        self.peer_announces = False  # the peer ever announced (it is an nfsyncd)
        self.gave_up = False  # MAX_TRIES unanswered: the peer does not announce
        self.tries = 0  # announces sent this round without an answer
        self.sent = 0
        self.received = 0
        self.malformed = 0
        self.last_error: str | None = None
        self.mismatches = 0
        self.without_helper: dict[str, int] = {}
        self.fatal: str | None = None
        self._awaiting = False  # an announce of ours wants the peer's
        self._heard_this_session = False
        self._due: float | None = None
        self._pending = False  # a try tick() counted, not sent yet
        self._answer = False  # the peer wants our announce
        self._last_diff: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())

    # .. policy .............................................................................
    def start(self) -> None:
        """Announce now (with "reply wanted") and repeat until the peer answers."""
        if not self.announce:
            return
        self._awaiting = True
        self.tries = 0
        self.gave_up = False
        self._due = self.clock()

    def peer_restarted(self) -> None:
        """A new peer session (an FTFW HELLO after the first): it may be another daemon."""
        self._heard_this_session = False
        self.start()

    def set_local(self, names: Iterable[str]) -> bool:
        """A reload: when the set changed, check again and tell the peer; True if it did."""
        new = frozenset(names)
        if new == self.local:
            return False
        for name in new:
            _check_name(name)
        log.info("local helpers changed: %s (were %s)", _names(new), _names(self.local))
        self.local = new
        self._compare()
        if not (self.gave_up and not self._heard_this_session):  # not to a mute peer again
            self.start()
        return True

    def deadline(self) -> float | None:
        """When :meth:`tick` has something to do (an answer is due at once: see
        :meth:`has_output`)."""
        return self._due

    def tick(self) -> None:
        """Count the next try when it is due, or give up after :data:`MAX_TRIES`."""
        due = self._due
        if due is None or self.clock() < due:
            return
        if self.tries >= MAX_TRIES:
            self._due = None
            self._awaiting = False
            self.gave_up = True
            if not self._heard_this_session:
                self.peer = None
                self._last_diff = (frozenset(), frozenset())
                log.info(
                    "%s (after %d tries): only expectations are checked", NO_ANNOUNCE, MAX_TRIES
                )
            else:
                log.warning("the peer did not answer our last %d announces", MAX_TRIES)
            return
        self.tries += 1
        self._pending = True
        self._due = self.clock() + RESEND_INTERVAL

    def has_output(self) -> bool:
        if self._pending or self._answer:
            return True
        return self._due is not None and self.clock() >= self._due

    def output(self) -> list[bytes]:
        """The announce due now (one at most: a try and an answer go out as one), encoded."""
        self.tick()
        if not self._pending and not self._answer:
            return []
        self._pending = self._answer = False
        self.sent += 1
        return [encode_announce(Announce(self.local, reply_wanted=self._awaiting))]

    def receive(self, data: bytes | bytearray | memoryview) -> Announce | None:
        """One extension message from the peer; None (and counted) when it is malformed."""
        try:
            ann = decode_announce(data)
        except AnnounceError as exc:
            self.malformed += 1
            self.last_error = str(exc)
            if self.malformed == 1:
                log.warning("malformed helper announce from the peer: %s", exc)
            return None
        self.received += 1
        self.peer_announces = True
        self._heard_this_session = True
        self.gave_up = False
        if self.peer != ann.helpers:
            log.info("peer helpers: %s", _names(ann.helpers))
        self.peer = ann.helpers
        if self._awaiting:
            self._awaiting = False
            self._due = None
            self.tries = 0
            self._pending = False
        if ann.reply_wanted:
            self._answer = True
        self._compare()
        return ann

    # .. checks .............................................................................
    @property
    def missing_here(self) -> frozenset[str]:
        """Helpers the peer assigns and this node does not."""
        return frozenset() if self.peer is None else self.peer - self.local

    @property
    def missing_on_peer(self) -> frozenset[str]:
        return frozenset() if self.peer is None else self.local - self.peer

    def _compare(self) -> None:
        if self.peer is None:
            return
        diff = (self.missing_here, self.missing_on_peer)
        if diff == self._last_diff:
            return
        self._last_diff = diff
        here, there = diff
        if not here and not there:
            log.info("helpers match the peer's again: %s", _names(self.local))
            return
        self.mismatches += 1
        text = (
            f"helper mismatch with the peer: missing here: {_names(here)}; "
            f"missing on the peer: {_names(there)} (expectations of those helpers cannot be "
            "committed on the node that lacks them)"
        )
        self._fail(text)

    def check_messages(self, msgs: Iterable[Message]) -> None:
        """The peer's data messages: count expectations whose helper is not assigned here."""
        local = self.local
        for m in msgs:
            if 3 <= m.type <= 4:
                obj = m.obj
                if isinstance(obj, Expectation):
                    helper = obj.helper
                    if helper is not None and helper not in local:
                        self._without(helper)

    def check_expectation(self, exp: Expectation) -> None:
        if exp.helper is not None and exp.helper not in self.local:
            self._without(exp.helper)

    def _without(self, helper: str) -> None:
        count = self.without_helper.get(helper, 0)
        self.without_helper[helper] = count + 1
        if count == 0:
            self._fail(
                f"the peer syncs expectations of helper {helper!r}, which this node does not "
                f"assign (local helpers: {_names(self.local)}): committing them will fail"
            )

    def _fail(self, text: str) -> None:
        if self.policy == "fatal":
            log.error('%s; stopping (expectations.helper_mismatch = "fatal")', text)
            if self.fatal is None:
                self.fatal = text
        else:
            log.warning("%s", text)

    # .. state ..............................................................................
    def peer_state(self) -> str:
        if self.peer is not None:
            return "peer announced its helpers"
        if not self.announce:
            return "announces off: only expectations are checked"
        if self.gave_up:
            return NO_ANNOUNCE
        if self._awaiting:
            return f"waiting for the peer's announce (try {self.tries} of {MAX_TRIES})"
        return "peer not heard yet"

    def status(self) -> dict[str, Any]:
        return {
            "local": sorted(self.local),
            "peer": None if self.peer is None else sorted(self.peer),
            "peer_state": self.peer_state(),
            "missing_here": sorted(self.missing_here),
            "missing_on_peer": sorted(self.missing_on_peer),
            "mismatches": self.mismatches,
            "expectations_without_local_helper": dict(sorted(self.without_helper.items())),
            "announces_sent": self.sent,
            "announces_received": self.received,
            "announces_malformed": self.malformed,
            "policy": self.policy,
        }
