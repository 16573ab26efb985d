"""Helpers for the kernel tests: addresses, conntrack-tools output parsing, event waiting.

conntrack-tools (``conntrack -L``, ``-L expect``, ``-S``, ``-C``) is the independent oracle
the kernel tests compare nfsyncd's decoded state with; this module turns its text output
into dicts keyed the way conntrack prints them.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from nfsyncd.kernel import Conntrack, Event, EventStream, Overrun
from nfsyncd.lab.netns import Netns
from nfsyncd.model import (
    IPPROTO_GRE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    Expectation,
    Flow,
    Tuple,
    format_addr,
)

T = TypeVar("T")

#: Keys conntrack prints inside one tuple (``id`` is the ICMP id there, after ``type``;
#: elsewhere ``id`` is the conntrack id).
_TUPLE_KEYS = frozenset({"src", "dst", "sport", "dport", "type", "code", "id", "srckey", "dstkey"})


def v4(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, text)


def v6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


def full_mask(t: Tuple) -> Tuple:
    """The mask of an expectation on exactly ``t``'s addresses and destination port."""
    ones = b"\xff" * len(t.src)
    return Tuple(ones, ones, 0xFF, 0, 0xFFFF)


# -- conntrack -L --------------------------------------------------------------------------


@dataclass
class CtLine:
    """One line of ``conntrack -L`` output, split the way conntrack prints it."""

    proto: str
    protonum: int
    timeout: int | None
    state: str | None
    orig: dict[str, str]
    reply: dict[str, str]
    flags: set[str] = field(default_factory=set)
    extra: dict[str, str] = field(default_factory=dict)
    text: str = ""


def parse_ct_line(line: str) -> CtLine:
    toks = line.split()
    i = 2 if toks[0] in ("ipv4", "ipv6") else 0  # `-o extended` prefixes the family
    proto, protonum = toks[i], int(toks[i + 1])
    i += 2
    timeout = None
    if i < len(toks) and toks[i].isdigit():
        timeout = int(toks[i])
        i += 1
    out = CtLine(proto, protonum, timeout, None, {}, {}, text=line)
    cur: dict[str, str] | None = None
    for tok in toks[i:]:
        if tok.startswith("["):
            out.flags.add(tok.strip("[]"))
            continue
        if "=" not in tok:
            out.state = tok
            continue
        key, value = tok.split("=", 1)
        if cur is None and key == "src":
            cur = out.orig
        elif cur is out.orig and key == "src":
            cur = out.reply
        if key in ("packets", "bytes") and cur in (out.orig, out.reply):
            # counters (conntrack -E DESTROY, -o extended) print inside each tuple
            out.extra[f"{'orig' if cur is out.orig else 'reply'}_{key}"] = value
            continue
        in_tuple = key in _TUPLE_KEYS and (key != "id" or "type" in (cur or {}))
        if cur is not None and cur is not out.extra and in_tuple and key not in cur:
            cur[key] = value
        else:
            cur = out.extra  # after the reply tuple: mark=, zone=, use=, id=, helper=...
            out.extra[key] = value
    return out


def conntrack_list(ns: Netns, *args: str) -> list[CtLine]:
    """``conntrack -L ARGS`` in ``ns``, parsed."""
    out = ns.run("conntrack", "-L", *args).stdout
    return [parse_ct_line(line) for line in out.splitlines() if line.strip()]


def conntrack_count(ns: Netns) -> int:
    return int(ns.run("conntrack", "-C").stdout.strip())


def conntrack_stats(ns: Netns, *args: str) -> dict[str, int]:
    """``conntrack -S [expect]``: the per-CPU counters summed over CPUs."""
    total: dict[str, int] = {}
    for line in ns.run("conntrack", "-S", *args).stdout.splitlines():
        for tok in line.split():
            key, _, value = tok.partition("=")
            if key != "cpu" and value.isdigit():
                total[key] = total.get(key, 0) + int(value)
    return total


def conntrack_list_labels(ns: Netns, tmp: Path, *args: str) -> list[CtLine]:
    """``conntrack -L -o labels``: conntrack names label bits through
    /etc/xtables/connlabel.conf and prints nothing without it. The file is provided in a
    private mount namespace (a bind mount over /etc that only this one command sees), so
    the host's /etc is never touched. Bit N is printed as ``bitN``."""
    etc = tmp / "etc"
    (etc / "xtables").mkdir(parents=True, exist_ok=True)
    (etc / "xtables" / "connlabel.conf").write_text("".join(f"{n} bit{n}\n" for n in range(128)))
    script = f'mount --bind "{etc}" /etc && exec conntrack -L -o labels "$@"'
    out = ns.run("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *args)
    return [parse_ct_line(line) for line in out.stdout.splitlines() if line.strip()]


def label_bits(labels: bytes) -> set[int]:
    """Bit numbers set in a ``CTA_LABELS`` bitmap (the kernel's long words, host order:
    little endian here)."""
    value = int.from_bytes(labels, "little")
    return {n for n in range(len(labels) * 8) if value >> n & 1}


def tuple_text(t: Tuple) -> dict[str, str]:
    """A decoded tuple the way conntrack prints it."""
    out = {"src": format_addr(t.src), "dst": format_addr(t.dst)}
    if t.proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        out |= {"type": str(t.icmp_type), "code": str(t.icmp_code), "id": str(t.icmp_id)}
    elif t.proto == IPPROTO_GRE:
        out |= {"srckey": hex(t.sport or 0), "dstkey": hex(t.dport or 0)}
    else:
        out |= {"sport": str(t.sport), "dport": str(t.dport)}
    return out


def find_line(lines: list[CtLine], flow: Flow) -> CtLine:
    """The conntrack line of ``flow`` (matched by original tuple and zone)."""
    want = tuple_text(flow.orig)
    zone = str(flow.zone) if flow.zone else None
    found = [ln for ln in lines if ln.orig == want and ln.extra.get("zone") == zone]
    assert len(found) == 1, f"conntrack lists {len(found)} entries for {flow.describe()}"
    return found[0]


def assert_matches_conntrack(line: CtLine, flow: Flow) -> None:
    """Everything conntrack prints about a flow agrees with our decoded ``flow``."""
    assert line.protonum == flow.orig.proto
    assert line.orig == tuple_text(flow.orig)
    assert flow.reply is not None
    assert line.reply == tuple_text(flow.reply)
    assert line.timeout is not None and flow.timeout is not None
    assert abs(line.timeout - flow.timeout) <= 2  # read a moment apart
    assert int(line.extra.get("mark", "0")) == (flow.mark or 0)
    assert line.extra.get("zone") == (str(flow.zone) if flow.zone else None)
    assert line.extra.get("helper") == flow.helper
    assert flow.status is not None
    assert ("UNREPLIED" in line.flags) == (not flow.status & 0x2)  # SEEN_REPLY
    assert ("ASSURED" in line.flags) == bool(flow.status & 0x4)
    if "id" in line.extra and flow.id is not None:
        assert int(line.extra["id"]) == flow.id


class ConntrackEvents:
    """``conntrack -E -o id`` running in a namespace: the independent view of the events.

    For an event a userspace write caused, conntrack prints ``[USERSPACE] portid=N``.
    """

    def __init__(self, ns: Netns, *args: str) -> None:
        self.proc = ns.popen(
            "conntrack",
            "-E",
            "-o",
            "id",
            *args,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.lines: list[tuple[str, CtLine]] = []
        self._partial = b""

    def read_until(
        self,
        done: Callable[[list[tuple[str, CtLine]]], bool],
        *,
        timeout: float = 5.0,
        what: str = "",
        required: bool = True,
    ) -> list[tuple[str, CtLine]] | None:
        """Read event lines until ``done(lines so far)``, then return them all; after
        ``timeout`` s fail the test (or return None when not ``required``)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()  # raw reads: a buffered readline would hide lines
        deadline = time.monotonic() + timeout
        while not done(self.lines):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if not required:
                    return None
                pytest.fail(f"conntrack -E: timed out waiting for {what}: {self.lines}")
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                pytest.fail(f"conntrack -E exited with {self.proc.wait()}")
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            for raw in complete:
                kind, _, rest = raw.decode().strip().partition(" ")
                self.lines.append((kind.strip("[]"), parse_ct_line(rest)))
        return self.lines

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# -- conntrack -L expect -------------------------------------------------------------------


@dataclass
class ExpLine:
    timeout: int
    proto: int
    tuple: dict[str, str]
    mask: dict[str, str]
    master: dict[str, str]
    extra: dict[str, str]
    flags: set[str]
    text: str


def parse_exp_line(line: str) -> ExpLine:
    toks = line.split()
    out = ExpLine(int(toks[0]), 0, {}, {}, {}, {}, set(), line)
    cur = out.tuple
    for tok in toks[1:]:
        if "=" not in tok:
            out.flags.add(tok)  # PERMANENT, INACTIVE, USERSPACE
            continue
        key, value = tok.split("=", 1)
        if key == "proto":
            out.proto = int(value)
            continue
        if key.startswith("mask-"):
            cur, key = out.mask, key[5:]
        elif key.startswith("master-"):
            cur, key = out.master, key[7:]
        if key in _TUPLE_KEYS and key not in cur and cur is not out.extra:
            cur[key] = value
        else:
            cur = out.extra
            out.extra[key] = value
    return out


def conntrack_list_expect(ns: Netns) -> list[ExpLine]:
    out = ns.run("conntrack", "-L", "expect").stdout
    return [parse_exp_line(line) for line in out.splitlines() if line.strip()]


def mask_text(t: Tuple) -> dict[str, str]:
    return {
        "src": format_addr(t.src),
        "dst": format_addr(t.dst),
        "sport": str(t.sport),
        "dport": str(t.dport),
    }


def assert_expect_matches_conntrack(line: ExpLine, exp: Expectation) -> None:
    assert line.proto == exp.tuple.proto
    assert line.tuple == tuple_text(exp.tuple)
    assert line.mask == mask_text(exp.mask)
    assert line.master == tuple_text(exp.master)
    assert exp.timeout is not None
    assert abs(line.timeout - exp.timeout) <= 2
    assert line.extra.get("helper") == exp.helper
    assert int(line.extra.get("class", "0")) == (exp.klass or 0)


# -- waiting -------------------------------------------------------------------------------


async def poll_until(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 5.0,
    interval: float = 0.01,
    what: str = "",
) -> T:
    """Await ``probe()`` until it returns something truthy, at most ``timeout`` seconds."""
    deadline = trio.current_time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if trio.current_time() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or probe!r}")
        await trio.sleep(interval)


async def collect_events(
    stream: EventStream,
    until: Callable[[list[Event]], bool],
    *,
    timeout: float = 5.0,
    what: str = "",
) -> list[Event]:
    """Read event batches until ``until(events so far)`` holds; fail after ``timeout`` s.

    An overrun fails the test: these tests size their buffers so none can happen."""
    events: list[Event] = []
    with trio.move_on_after(timeout):
        while not until(events):
            batch = await stream.next_batch()
            if isinstance(batch, Overrun):
                pytest.fail("unexpected event overrun")
            events.extend(batch)
        return events
    seen = "\n  ".join(f"{e.kind.name} {e.obj.describe()}" for e in events)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; events seen:\n  {seen}")


def flow_events(events: list[Event], orig: Tuple) -> list[Event]:
    """The events of the flow whose original tuple is ``orig``, in order."""
    return [e for e in events if isinstance(e.obj, Flow) and e.obj.orig == orig]


@dataclass
class CtLab:
    """A namespace and a Conntrack request socket made inside it."""

    ns: Netns
    ct: Conntrack
