"""Run the real conntrackd (1.4.x) in a lab namespace and read its state.

conntrackd is the reference every sync test and benchmark compares nfsyncd with, and the
peer of the interop tests, so it must be driven exactly as an operator would: a generated
``conntrackd.conf``, the daemon in the foreground, its client (``conntrackd -C conf -X``)
for commands. For cheap polling (benchmarks ask "how many flows?" hundreds of times) the
harness also speaks the control socket directly: one native ``int`` request code, a text
reply until EOF (reference §5.3), which spares a process per poll.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Literal, Unpack

from .netns import Netns
from .sync_daemon_base import SyncDaemonProcess, SyncOptions
from .sync_lab import FlowKey, PeerLink

__all__ = [
    "Conntrackd",
    "ConntrackdError",
    "parse_dump_line",
    "parse_stats",
]

#: Control-socket request codes (include/conntrackd.h, reference §5.2).
CT_DUMP_INTERNAL = 16
CT_DUMP_EXTERNAL = 17
CT_COMMIT = 18
STATS = 21
STATS_NETWORK = 28
STATS_CACHE = 29
STATS_LINK = 31
STATS_RSQUEUE = 32
STATS_QUEUE = 36
EXP_DUMP_INTERNAL = 40
EXP_DUMP_EXTERNAL = 41
ALL_COMMIT = 46


class ConntrackdError(RuntimeError):
    """conntrackd did not start, or a client command failed; carries the log tail."""


_PROTO_NUMS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132, "dccp": 33}
_KV = re.compile(r"(\w[\w-]*)=(\S+)")


def parse_dump_line(line: str) -> FlowKey | None:
    """The :class:`FlowKey` of one ``-i``/``-e`` line (reference §5.4); None if not a flow.

    Only the first tuple counts (the original direction); ``zone=`` anywhere on the line.
    """
    toks = line.split()
    if len(toks) < 3 or not toks[1].isdigit():
        return None
    proto = int(toks[1])
    fields: dict[str, str] = {}
    zone = 0
    for key, value in _KV.findall(line):
        if key == "zone":
            zone = int(value)
        elif key not in fields:  # the first src=/dst=/... belong to the original tuple
            fields[key] = value
    if "src" not in fields or "dst" not in fields:
        return None

    def num(name: str) -> int | None:
        return int(fields[name]) if name in fields else None

    return FlowKey(
        proto,
        str(ipaddress.ip_address(fields["src"])),
        str(ipaddress.ip_address(fields["dst"])),
        num("sport"),
        num("dport"),
        num("type"),
        num("code"),
        num("id"),
        zone,
    )


_LABEL_FIRST = re.compile(r"([A-Za-z][A-Za-z /()._-]*?):\s+(\d+)")
_NUMBER_FIRST = re.compile(r"(\d+) ((?:[A-Za-z]+ ?)+)")


def parse_stats(text: str) -> dict[str, dict[str, int]]:
    """``-s`` style output as ``{section header: {label: number}}``.

    Headers are the unindented lines ending in ``:`` ("cache internal", "external inject",
    "UDP traffic (active device=sync0)", ...). ``label:\\t N\\tfailed:\\t M`` gives
    ``label`` and ``label failed``; ``N Bytes sent  M Bytes recv`` gives both labels.
    """
    out: dict[str, dict[str, int]] = {}
    section: dict[str, int] | None = None
    for line in text.splitlines():
        if not line.strip():
            section = None
            continue
        stripped = line.strip()
        if section is None and not line[0].isspace() and stripped.endswith(":"):
            section = out.setdefault(stripped[:-1], {})
            continue
        if section is None:
            continue
        pairs = _LABEL_FIRST.findall(line)
        if pairs:
            prev = ""
            for label, value in pairs:
                label = label.strip()
                if label == "failed" and prev:
                    label = f"{prev} failed"
                section[label] = int(value)
                prev = label
            continue
        for value, label in _NUMBER_FIRST.findall(line):
            section[label.strip()] = int(value)
    return out


class Conntrackd(SyncDaemonProcess):
    """One conntrackd process in ``ns``, with its config, socket, lock and log in ``dir``.

    ``links``: :class:`PeerLink` (see ``SyncLab.peer_links``) or ``(ifname, local,
    peer_or_group)`` tuples, link i on port ``port + i``. ``ignore_addresses`` go into an
    ``Address Ignore`` filter (pass the sync link addresses). The daemon runs with a normal
    (not real-time) scheduler, see :meth:`config_text`. The options both harnesses take
    are :class:`~nfsyncd.lab.sync_daemon_base.SyncOptions`.
    """

    kind = "conntrackd"
    error = ConntrackdError
    config_name = "conntrackd.conf"
    socket_name = "ctd.ctl"
    socket_prefix = "ctd-"
    max_links = 4
    start_timeout = 15.0
    stop_grace = 5.0
    ready_what = "conntrackd to answer on its socket"
    connected_what = "conntrackd TCP links"
    log_tail = 4000

    def __init__(
        self,
        ns: Netns,
        dir: Path,
        *,
        hash_size: int = 65536,
        hash_limit: int = 524288,
        extra_general: str = "",
        extra_sync: str = "",
        binary: str = "conntrackd",
        start: bool = True,
        start_timeout: float | None = None,
        **options: Unpack[SyncOptions],
    ) -> None:
        super().__init__(ns, dir, **options)
        self.hash_size = hash_size
        self.hash_limit = hash_limit
        self.extra_general = extra_general
        self.extra_sync = extra_sync
        self.binary = binary
        self.out = self.dir / "conntrackd.out"
        self.lock = self.dir / "conntrackd.lock"
        self._launch(start, start_timeout)

    # -- config ---------------------------------------------------------------------------

    def config_text(self) -> str:
        """The generated conntrackd.conf.

        ``Scheduler { Type RR Priority 0 }``: without a Scheduler section conntrackd makes
        itself SCHED_RR 99 (reference §4.3), which on a small test machine can starve
        everything else; priority 0 is invalid for RR, the sched_setscheduler call fails
        with a warning and the daemon stays SCHED_OTHER.
        """
        return f"General {{\n{self._general()}}}\nSync {{\n{self._sync()}}}\n"

    def _general(self) -> str:
        ignore = ["127.0.0.1", *self.ignore_addresses]
        addrs = "".join(
            f"            {'IPv6' if ':' in a else 'IPv4'}_address {a}\n" for a in ignore
        )
        return (
            f"    HashSize {self.hash_size}\n"
            f"    HashLimit {self.hash_limit}\n"
            f"    LogFile {self.log}\n"
            "    Syslog off\n"
            f"    LockFile {self.lock}\n"
            f"    UNIX {{\n        Path {self.socket}\n    }}\n"
            "    NetlinkBufferSize 67108864\n"
            "    NetlinkBufferSizeMaxGrowth 268435456\n"
            "    NetlinkOverrunResync on\n"
            "    Systemd off\n"
            "    Scheduler {\n        Type RR\n        Priority 0\n    }\n"
            "    Filter From Userspace {\n"
            f"        Address Ignore {{\n{addrs}        }}\n"
            "    }\n"
            f"{self.extra_general}"
        )

    def _mode_block(self) -> str:
        opts: list[str] = []
        if self.mode in ("ftfw", "notrack"):
            if self.disable_external_cache:
                opts.append("DisableExternalCache on")
            if self.startup_resync:
                opts.append("StartupResync on")
        if self.mode == "notrack" and self.disable_internal_cache:
            opts.append("DisableInternalCache on")
        if self.mode == "alarm":
            if self.refresh_time is not None:
                opts.append(f"RefreshTime {self.refresh_time}")
            if self.cache_timeout is not None:
                opts.append(f"CacheTimeout {self.cache_timeout}")
        if self.commit_timeout is not None:
            opts.append(f"CommitTimeout {self.commit_timeout}")
        body = "".join(f"        {o}\n" for o in opts)
        return f"    Mode {self.mode.upper()} {{\n{body}    }}\n"

    def _link_block(self, link: PeerLink) -> str:
        v = "IPv6" if link.ipv6 else "IPv4"
        lines: list[str]
        if self.transport == "multicast":
            name = "Multicast"
            lines = [f"{v}_address {link.peer}", f"Group {link.port}"]
            if not link.ipv6:
                lines.append(f"IPv4_interface {link.local}")
            lines.append(f"Interface {link.interface}")  # after IPv6_address (§3.1)
        else:
            name = "UDP" if self.transport == "udp" else "TCP"
            lines = [
                f"{v}_address {link.local}",
                f"{v}_Destination_Address {link.peer}",
                f"Port {link.port}",
                f"Interface {link.interface}",
            ]
        lines += [
            f"SndSocketBuffer {self.socket_buffer}",
            f"RcvSocketBuffer {self.socket_buffer}",
            "Checksum on",
        ]
        body = "".join(f"        {line}\n" for line in lines)
        default = " Default" if link.default else ""
        return f"    {name}{default} {{\n{body}    }}\n"

    def _sync(self) -> str:
        text = self._mode_block() + "".join(self._link_block(link) for link in self.links)
        if self.expectations:
            text += "    Options {\n        ExpectationSync on\n    }\n"
        return text + self.extra_sync

    # -- process --------------------------------------------------------------------------

    def _argv(self) -> list[str]:
        return [self.binary, "-C", str(self.config)]

    def _before_start(self) -> None:
        self.lock.unlink(missing_ok=True)  # a previous SIGKILLed run leaves it behind

    def _ready(self) -> bool:
        try:
            self.request(STATS, timeout=2)
        except OSError:
            return False
        return True

    def connected(self) -> bool:
        """TCP: both connections (ours to the peer, the peer's to us) are up; else True."""
        if self.transport != "tcp":
            return True
        headers = [h for h in self.counts() if h.startswith("TCP traffic")]
        return bool(headers) and all(
            "server=connected" in h and "client=connected" in h for h in headers
        )

    # -- client ---------------------------------------------------------------------------

    def ctl(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """``conntrackd -C conf ARGS`` in the namespace (the real client)."""
        proc = self.ns.run(self.binary, "-C", str(self.config), *args, check=False, timeout=timeout)
        if check and proc.returncode != 0:
            raise ConntrackdError(
                f"conntrackd {' '.join(args)} exited {proc.returncode}: {proc.stdout}"
                f"{proc.stderr}\n{self.log_text()}"
            )
        return proc

    def request(self, code: int, timeout: float = 120.0) -> str:
        """Send one request code on the control socket; the text reply (no process spawn)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket))
            sock.sendall(struct.pack("=i", code))
            chunks = []
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def stats(self, section: str | None = None) -> str:
        """``conntrackd -s [section]`` output, as text."""
        return self.ctl("-s", *([section] if section else [])).stdout

    def counts(self) -> dict[str, dict[str, int]]:
        """``-s`` parsed (see :func:`parse_stats`), read straight from the socket."""
        return parse_stats(self.request(STATS))

    def external_count(self) -> int:
        """Flows in the external cache (or created by inject, with the cache disabled)."""
        st = self.counts()
        if "cache external" in st:
            return st["cache external"].get("current active connections", 0)
        inject = st.get("external inject", {})
        return inject.get("connections created", 0) - inject.get("connections destroyed", 0)

    def external_counters(self) -> dict[str, int]:
        """External cache counters: flows, created, updated, destroyed (inject: the same
        names from the "external inject" block; flows = created - destroyed there)."""
        st = self.counts()
        block = st.get("cache external") or st.get("external inject") or {}
        out = {
            "created": block.get("connections created", 0),
            "updated": block.get("connections updated", 0),
            "destroyed": block.get("connections destroyed", 0),
        }
        out["flows"] = block.get("current active connections", out["created"] - out["destroyed"])
        return out

    def internal_count(self) -> int:
        st = self.counts()
        return st.get("cache internal", {}).get("current active connections", 0)

    def internal(self) -> list[str]:
        """``-i`` lines (internal cache)."""
        return [ln for ln in self.request(CT_DUMP_INTERNAL).splitlines() if ln.strip()]

    def external(self) -> list[str]:
        """``-e`` lines (external cache)."""
        return [ln for ln in self.request(CT_DUMP_EXTERNAL).splitlines() if ln.strip()]

    def internal_expects(self) -> list[str]:
        return [ln for ln in self.request(EXP_DUMP_INTERNAL).splitlines() if ln.strip()]

    def external_expects(self) -> list[str]:
        return [ln for ln in self.request(EXP_DUMP_EXTERNAL).splitlines() if ln.strip()]

    def internal_keys(self) -> set[FlowKey]:
        return {k for k in map(parse_dump_line, self.internal()) if k is not None}

    def external_keys(self) -> set[FlowKey]:
        return {k for k in map(parse_dump_line, self.external()) if k is not None}

    def commit(self, what: Literal["all", "ct", "expect"] = "all") -> float:
        """``conntrackd -c [ct|expect]``: blocks until the commit is done; seconds taken."""
        t0 = time.monotonic()
        self.ctl("-c", *([] if what == "all" else [what]))
        return time.monotonic() - t0

    def flush(self, cache: Literal["all", "internal", "external"] = "all") -> None:
        self.ctl("-f", *([] if cache == "all" else [cache]))

    def resync_request(self) -> None:
        """``-n``: ask the peer for a full resync."""
        self.ctl("-n")

    def bulk_send(self) -> None:
        """``-B``: send the whole internal cache to the peer."""
        self.ctl("-B")
