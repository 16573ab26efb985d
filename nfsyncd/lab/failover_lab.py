"""The failover lab: a client, two gateways sharing virtual IPs through real keepalived, and a
server, so a test (or ``make demo``, or a benchmark) can watch real connections cross a
failover exactly as an operator's would.

Topology (every address in 198.18.0.0/15; "lan" and "wan" are switch namespaces holding a
bridge each, so no gateway owns the segment)::

    client eth0 .10 ─┐                                          ┌─ eth0 .10 server
    198.18.100.0/24  ├─ lan br0 ─ lan0 gw1 wan0 ─ wan br0 ──────┤  198.19.100.0/24
    VIP .1 (gw .2/.3)└─────────── lan0 gw2 wan0 ────────────────┘  VIP .1 (gw .2/.3)
                                   gw1 sync0 198.18.200.1/30 ═ 198.18.200.2/30 sync0 gw2

* Client and server route via the VIPs. Gateways forward, SNAT client traffic to the
  server-side VIP (so replies follow the VIP), and port-forward ``VIP:DNAT_PORT`` on the
  server side to the client's stream port (NAT in both directions).
* A strict stateful ruleset (table ``inet lab``): forward policy drop, ``ct state invalid``
  dropped, established/related accepted, new state only from a TCP SYN to an allowed port
  (stream, echo, ftp control) or the first packet of an allowed UDP/ICMP flow, and
  ``nf_conntrack_tcp_loose=0``: a gateway without synced state cannot pick up a connection.
  The ruleset holds no helpers and no ``ct event`` rules: those come from nfsyncd's own
  generated table (``[[helpers.assign]]`` in its config). Only with ``lab_helpers=True``
  (conntrackd, which generates nothing) does the lab table assign the ftp helper, as a
  conntrackd operator would by hand.
* keepalived (VRRPv3, ``advert_int`` s) in each gateway: one ``vrrp_sync_group`` of two
  instances (LAN and WAN VIP); gw1 priority 150, gw2 100, preempt after
  ``preempt_delay`` s; a ``vrrp_script`` that fails when the gateway's sync daemon is not
  running (so killing it moves the VIPs); notify scripts that log wall-clock timestamps
  around ``nfsyncctl notify primary|backup|fault`` (or conntrackd's ``-c -f -R -B`` /
  ``-t -n`` / ``-t``), which gives :meth:`FailoverLab.transition_times`.

``FailoverLab(daemon)``: ``"nfsyncd"`` (FTFW, external cache: commit at takeover),
``"nfsyncd-inject"`` (``disable_external_cache``: state injected as it arrives),
``"conntrackd"`` (Debian's, FTFW over UDP), ``"none"`` (no sync: the control case, where
connections must break). Use it as a context manager: namespaces, processes (by PID) and
the temporary directory go even after a failure.

Scenario methods: :meth:`primary`, :meth:`wait_primary`, :meth:`stop_keepalived`,
:meth:`start_keepalived`, :meth:`kill_daemon`, :meth:`start_daemon`, :meth:`cut_links`,
:meth:`restore_links`, :meth:`transition_times`, :meth:`flows_synced`,
:meth:`kernel_flow_count`, :meth:`start_traffic` (see :mod:`.failover_traffic`).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Literal

from .failover_traffic import (
    ECHO_PORT,
    FTP_PASSIVE_PORTS,
    STREAM_PORT,
    UDP_PORT,
    IcmpEcho,
    Interactive,
    TcpStream,
    TrafficServer,
    UdpRequests,
)
from .netns import Netns, NetnsLab, veth_pair
from .sync_conntrackd import Conntrackd
from .sync_lab import wait_for
from .sync_nfsyncd import Nfsyncd

__all__ = [
    "CLIENT",
    "DAEMONS",
    "DNAT_PORT",
    "FTP_PORT",
    "GATEWAYS",
    "LAN_VIP",
    "SERVER",
    "WAN_VIP",
    "DaemonKind",
    "FailoverLab",
    "Gateway",
    "Traffic",
    "Transition",
]

DaemonKind = Literal["nfsyncd", "nfsyncd-inject", "conntrackd", "none"]
DAEMONS: tuple[DaemonKind, ...] = ("nfsyncd", "nfsyncd-inject", "conntrackd", "none")
Gateway = Literal["gw1", "gw2"]
GATEWAYS: tuple[Gateway, Gateway] = ("gw1", "gw2")

LAN_NET, WAN_NET = "198.18.100", "198.19.100"
LAN_VIP, WAN_VIP = f"{LAN_NET}.1", f"{WAN_NET}.1"
CLIENT, SERVER = f"{LAN_NET}.10", f"{WAN_NET}.10"
_GW_HOST = {"gw1": 2, "gw2": 3}
_SYNC_ADDR = {"gw1": "198.18.200.1", "gw2": "198.18.200.2"}
_PRIORITY = {"gw1": 150, "gw2": 100}
#: Server-side VIP port forwarded to the client's stream port.
DNAT_PORT = 2222
FTP_PORT = 21
#: the port fields of a ``conntrack -L`` line
_PORTS: Final = re.compile(r"\b[sd]port=(\d+)")
SYNC_PORT = 3780
_REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Transition:
    """One notify call: keepalived's transition (``began_at``) to the script's return
    (``ended_at``: for nfsyncd and conntrackd the new state is in the kernel then)."""

    gateway: str
    role: str
    began_at: float
    ended_at: float | None
    rc: int | None

    @property
    def seconds(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.began_at


@dataclass
class Traffic:
    """The running traffic of :meth:`FailoverLab.start_traffic`; :meth:`stop` returns
    ``{name: result}`` (see :mod:`.failover_traffic` for the result keys)."""

    clients: dict[str, Any] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        return {name: c.snapshot() for name, c in self.clients.items()}

    def stop(self) -> dict[str, dict[str, Any]]:
        results: dict[str, dict[str, Any]] = {}
        for name, client in self.clients.items():
            results[name] = client.stop()
        return results

    def kill(self) -> None:
        for client in self.clients.values():
            client.kill()


class FailoverLab(NetnsLab):
    """Client, gw1, gw2, server (+ lan/wan switches), keepalived and the sync daemons.

    ``daemon``: see the module doc. ``advert_int``: VRRP advertisement interval (s);
    takeover after a silent primary takes about ``3 * advert_int`` (+ skew).
    ``lab_helpers``: assign the ftp helper in the lab table (for conntrackd / "none").
    ``directory``: where configs and logs go (default: a temporary directory, removed on
    close unless ``keep=True``). ``start=False`` builds the network only; call
    :meth:`start` later.
    """

    def __init__(
        self,
        daemon: DaemonKind = "nfsyncd",
        *,
        advert_int: float = 0.3,
        preempt_delay: float = 2.0,
        lab_helpers: bool | None = None,
        directory: Path | None = None,
        keep: bool = False,
        start: bool = True,
        log_level: str = "info",
    ) -> None:
        if daemon not in DAEMONS:
            raise ValueError(f"daemon must be one of {', '.join(DAEMONS)}, got {daemon!r}")
        self.daemon = daemon
        self.advert_int = advert_int
        self.preempt_delay = preempt_delay
        self.lab_helpers = daemon in ("conntrackd", "none") if lab_helpers is None else lab_helpers
        self.log_level = log_level
        self._own_dir = directory is None
        self.keep = keep
        self.dir = Path(directory or tempfile.mkdtemp(prefix="nfsfo-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        super().__init__()
        self._keepalived: dict[str, subprocess.Popen[bytes] | None] = {g: None for g in GATEWAYS}
        self._ka_logs: dict[str, IO[bytes]] = {}
        self.daemons: dict[str, Nfsyncd | Conntrackd | None] = {g: None for g in GATEWAYS}
        self._servers: list[Any] = []
        self.events: list[tuple[float, str]] = []
        try:
            self._build()
            if start:
                self.start()
        except BaseException:
            self.close()
            raise

    # -- building -------------------------------------------------------------------------

    def _build(self) -> None:
        self.client = self._ns("foc")
        self.gw1 = self._ns("fog1")
        self.gw2 = self._ns("fog2")
        self.server = self._ns("fos")
        self.lan = self._ns("fol")
        self.wan = self._ns("fow")
        for switch in (self.lan, self.wan):
            switch.ip("link", "add", "br0", "type", "bridge")
            switch.ip("link", "set", "br0", "up")
        self._attach(self.lan, self.client, "p-client", "eth0", f"{CLIENT}/24")
        self._attach(self.wan, self.server, "p-server", "eth0", f"{SERVER}/24")
        for gw in GATEWAYS:
            ns = self.gw(gw)
            host = _GW_HOST[gw]
            self._attach(self.lan, ns, f"p-{gw}", "lan0", f"{LAN_NET}.{host}/24")
            self._attach(self.wan, ns, f"p-{gw}", "wan0", f"{WAN_NET}.{host}/24")
        veth_pair(self.gw1, self.gw2, "198.18.200.1/30", "198.18.200.2/30", "sync0", "sync0")
        self.client.ip("route", "add", "default", "via", LAN_VIP)
        self.server.ip("route", "add", "default", "via", WAN_VIP)
        for gw in GATEWAYS:
            ns = self.gw(gw)
            ns.sysctl("net.ipv4.ip_forward", 1)
            ns.sysctl("net.netfilter.nf_conntrack_tcp_loose", 0)
            ns.nft(self.ruleset())

    @staticmethod
    def _attach(switch: Netns, ns: Netns, port: str, ifname: str, cidr: str) -> None:
        veth_pair(switch, ns, None, cidr, port, ifname)
        switch.ip("link", "set", port, "master", "br0")

    def ruleset(self) -> str:
        """The strict lab ruleset of a gateway (table ``inet lab``)."""
        syn = "tcp flags & (fin|syn|rst|ack) == syn"
        helpers = (
            '  ct helper ftp-lab { type "ftp" protocol tcp; }\n'
            "  chain helpers { type filter hook prerouting priority filter; "
            f'tcp dport {FTP_PORT} ct helper set "ftp-lab"; }}\n'
            if self.lab_helpers
            else ""
        )
        return f"""table inet lab {{
{helpers}  chain raw_pre {{ type filter hook prerouting priority raw;
    ip protocol vrrp notrack; iifname "sync0" notrack; }}
  chain raw_out {{ type filter hook output priority raw;
    ip protocol vrrp notrack; oifname "sync0" notrack; }}
  chain input {{ type filter hook input priority filter;
    ct state invalid counter drop comment "no RST from the VIP before state arrives"
  }}
  chain forward {{ type filter hook forward priority filter; policy drop;
    ct state invalid counter drop
    ct state established,related counter accept
    iifname "lan0" oifname "wan0" ct state new tcp dport {{ {STREAM_PORT}, {ECHO_PORT}, \
{FTP_PORT} }} {syn} counter accept
    iifname "lan0" oifname "wan0" ct state new udp dport {UDP_PORT} counter accept
    iifname "lan0" oifname "wan0" ct state new icmp type echo-request counter accept
    iifname "wan0" oifname "lan0" ct state new ct status dnat {syn} counter accept
    counter comment "dropped"
  }}
  chain dstnat {{ type nat hook prerouting priority dstnat;
    iifname "wan0" ip daddr {WAN_VIP} tcp dport {DNAT_PORT} dnat ip to {CLIENT}:{STREAM_PORT}
  }}
  chain srcnat {{ type nat hook postrouting priority srcnat;
    oifname "wan0" ip saddr {LAN_NET}.0/24 snat ip to {WAN_VIP}
  }}
}}
"""

    # -- access ---------------------------------------------------------------------------

    def gw(self, name: str) -> Netns:
        if name == "gw1":
            return self.gw1
        if name == "gw2":
            return self.gw2
        raise ValueError(f"no gateway {name!r} (gw1, gw2)")

    @staticmethod
    def other(name: str) -> Gateway:
        return "gw2" if name == "gw1" else "gw1"

    def _gw_dir(self, gw: str) -> Path:
        path = self.dir / gw
        path.mkdir(exist_ok=True)
        return path

    def _event(self, what: str) -> None:
        self.events.append((time.time(), what))

    # -- daemons --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sync daemons, keepalived on gw1 (primary), then on gw2 (backup)."""
        for gw in GATEWAYS:
            self._write_scripts(gw)
            if self.daemon != "none":
                self.start_daemon(gw)
        self.start_keepalived("gw1")
        self.wait_primary("gw1", timeout=30)
        self.start_keepalived("gw2")
        self._wait_state("gw2", "BACKUP", timeout=30)

    def _ignore(self, gw: str) -> list[str]:
        host = _GW_HOST[gw]
        return [f"{LAN_NET}.{host}", f"{WAN_NET}.{host}", *_SYNC_ADDR.values()]

    def start_daemon(self, gw: str, timeout: float = 30.0) -> None:
        """(Re)start ``gw``'s sync daemon; returns once it answers."""
        if self.daemon == "none":
            raise RuntimeError("this lab runs no sync daemon")
        old = self.daemons[gw]
        if old is not None:
            old.close()
        directory = self._gw_dir(gw) / self.daemon
        links = [("sync0", _SYNC_ADDR[gw], _SYNC_ADDR[self.other(gw)])]
        both: dict[str, Any] = {
            "links": links,
            "port": SYNC_PORT,
            "expectations": True,
            "startup_resync": True,
            "ignore_addresses": self._ignore(gw),
            "start_timeout": timeout,
        }
        daemon: Nfsyncd | Conntrackd
        if self.daemon == "conntrackd":
            daemon = Conntrackd(self.gw(gw), directory, **both)
        else:
            daemon = Nfsyncd(
                self.gw(gw),
                directory,
                disable_external_cache=self.daemon == "nfsyncd-inject",
                extra_toml=self._helper_toml(),
                log_level=self.log_level,
                **both,
            )
        self.daemons[gw] = daemon
        (self._gw_dir(gw) / "daemon.pid").write_text(f"{daemon.pid}\n")
        self._event(f"{gw}: {self.daemon} started (pid {daemon.pid})")

    def _helper_toml(self) -> str:
        if self.lab_helpers:
            return ""
        return f'\n[[helpers.assign]]\nhelper = "ftp"\nports = [{FTP_PORT}]\n'

    def kill_daemon(self, gw: str) -> None:
        """SIGKILL ``gw``'s sync daemon (by PID): keepalived's check then fails."""
        daemon = self.daemons[gw]
        if daemon is None or daemon.proc is None:
            raise RuntimeError(f"no daemon on {gw}")
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait()
        self._event(f"{gw}: {self.daemon} killed")

    def daemon_log(self, gw: str) -> str:
        daemon = self.daemons[gw]
        return "" if daemon is None else daemon.log_text()

    # -- keepalived -----------------------------------------------------------------------

    def _write_scripts(self, gw: str) -> None:
        d = self._gw_dir(gw)
        check = d / "check_daemon.sh"
        if self.daemon == "none":
            check.write_text("#!/bin/sh\nexit 0\n")
        else:
            check.write_text(
                f"#!/bin/sh\n# fails when the sync daemon is not running\n"
                f'pid=$(cat "{d}/daemon.pid" 2>/dev/null) || exit 1\n'
                f'kill -0 "$pid" 2>/dev/null && ! grep -q "^State:.*Z" /proc/"$pid"/status\n'
            )
        notify = d / "notify.sh"
        notify.write_text(self._notify_script(gw))
        (d / "keepalived.conf").write_text(self.keepalived_conf(gw))
        for script in (check, notify):
            script.chmod(0o755)

    def _notify_script(self, gw: str) -> str:
        d = self._gw_dir(gw)
        log = d / "notify.log"
        if self.daemon in ("nfsyncd", "nfsyncd-inject"):
            sock = d / self.daemon / "control.sock"
            action = (
                f'PYTHONPATH="{_REPO}" "{sys.executable}" -m nfsyncd.ctl '
                f'--socket "{sock}" notify "$1"'
            )
        elif self.daemon == "conntrackd":
            ctd = f'conntrackd -C "{d / "conntrackd" / "conntrackd.conf"}"'
            # what conntrackd's primary-backup.sh does (without restarting the daemon)
            action = (
                'case "$1" in\n'
                f"  primary) {ctd} -c; {ctd} -f; {ctd} -R; {ctd} -B ;;\n"
                f"  backup) {ctd} -t; {ctd} -n ;;\n"
                f"  fault) {ctd} -t ;;\n"
                "esac"
            )
        else:
            action = "true"
        return (
            "#!/bin/sh\n"
            "# keepalived notify: $1 = primary | backup | fault\n"
            f'echo "begin $1 $(date +%s.%N)" >> "{log}"\n'
            f'{{\n{action}\n}} >> "{log}.out" 2>&1\n'
            "rc=$?\n"
            f'echo "end $1 $(date +%s.%N) $rc" >> "{log}"\n'
        )

    def keepalived_conf(self, gw: str) -> str:
        d = self._gw_dir(gw)
        prio = _PRIORITY[gw]
        instances = []
        for name, ifname, vrid, vip in (
            ("LAN", "lan0", 51, LAN_VIP),
            ("WAN", "wan0", 52, WAN_VIP),
        ):
            instances.append(
                f"""vrrp_instance {name} {{
    state BACKUP
    interface {ifname}
    virtual_router_id {vrid}
    priority {prio}
    advert_int {self.advert_int}
    preempt_delay {self.preempt_delay}
    virtual_ipaddress {{
        {vip}/24 dev {ifname}
    }}
    track_script {{
        chk_sync
    }}
}}
"""
            )
        notify = d / "notify.sh"
        return f"""global_defs {{
    router_id {gw}
    vrrp_version 3
    script_user root
    vrrp_garp_master_delay 1
    vrrp_garp_master_repeat 3
}}

vrrp_script chk_sync {{
    script "{d / "check_daemon.sh"}"
    interval 1
    timeout 1
    fall 1
    rise 1
}}

vrrp_sync_group G {{
    group {{
        LAN
        WAN
    }}
    notify_master "{notify} primary"
    notify_backup "{notify} backup"
    notify_fault "{notify} fault"
}}

""" + "\n".join(instances)

    def start_keepalived(self, gw: str) -> None:
        if self.keepalived_running(gw):
            raise RuntimeError(f"keepalived already runs on {gw}")
        d = self._gw_dir(gw)
        log = self._ka_logs.get(gw)
        if log is None:
            log = self._ka_logs[gw] = (d / "keepalived.log").open("ab")
        self._keepalived[gw] = self.gw(gw).popen(
            "keepalived",
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--vrrp",
            "-f",
            str(d / "keepalived.conf"),
            "-p",
            str(d / "keepalived.pid"),
            "-r",
            str(d / "vrrp.pid"),
            "-c",
            str(d / "checkers.pid"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self._event(f"{gw}: keepalived started")

    def stop_keepalived(self, gw: str, timeout: float = 10.0) -> None:
        """SIGTERM ``gw``'s keepalived (by PID): it gives up the VIPs at once (priority 0)."""
        proc = self._keepalived[gw]
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._keepalived[gw] = None
        self._event(f"{gw}: keepalived stopped")

    def keepalived_running(self, gw: str) -> bool:
        proc = self._keepalived[gw]
        return proc is not None and proc.poll() is None

    def keepalived_log(self, gw: str) -> str:
        path = self._gw_dir(gw) / "keepalived.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    # -- links ----------------------------------------------------------------------------

    def cut_links(self, gw: str, *, sync: bool = False) -> None:
        """Unplug ``gw`` from both switches (and from the sync link with ``sync``): the
        switch ports go down, so the gateway loses carrier and keepalived goes to FAULT."""
        self.lan.ip("link", "set", f"p-{gw}", "down")
        self.wan.ip("link", "set", f"p-{gw}", "down")
        if sync:
            self.gw(gw).ip("link", "set", "sync0", "down")
        self._event(f"{gw}: links cut")

    def restore_links(self, gw: str) -> None:
        self.lan.ip("link", "set", f"p-{gw}", "up")
        self.wan.ip("link", "set", f"p-{gw}", "up")
        self.gw(gw).ip("link", "set", "sync0", "up")
        self.gw(self.other(gw)).ip("link", "set", "sync0", "up")
        self._event(f"{gw}: links restored")

    # -- state ----------------------------------------------------------------------------

    def has_vips(self, gw: str) -> bool:
        out = self.gw(gw).ip("-o", "-4", "address", "show").stdout
        return f" {LAN_VIP}/" in out and f" {WAN_VIP}/" in out

    def primary(self) -> Gateway | None:
        """The gateway holding both VIPs (None if neither, or both: a split brain)."""
        holders = [gw for gw in GATEWAYS if self.has_vips(gw)]
        return holders[0] if len(holders) == 1 else None

    def transition_times(self, gw: str | None = None) -> list[Transition]:
        """Every notify call so far (of ``gw``, or both), oldest first."""
        out: list[Transition] = []
        for name in GATEWAYS if gw is None else (gw,):
            path = self._gw_dir(name) / "notify.log"
            if not path.exists():
                continue
            open_: dict[str, Transition] = {}
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "begin":
                    open_[parts[1]] = Transition(name, parts[1], float(parts[2]), None, None)
                    out.append(open_[parts[1]])
                elif len(parts) >= 4 and parts[0] == "end" and parts[1] in open_:
                    began = open_.pop(parts[1])
                    done = Transition(
                        name, parts[1], began.began_at, float(parts[2]), int(parts[3])
                    )
                    out[out.index(began)] = done
        return sorted(out, key=lambda t: t.began_at)

    def last_transition(self, gw: str) -> Transition | None:
        times = self.transition_times(gw)
        return times[-1] if times else None

    def _wait_state(self, gw: str, state: str, timeout: float) -> None:
        marker = f"Entering {state} STATE"
        wait_for(
            lambda: marker in self.keepalived_log(gw),
            timeout=timeout,
            what=f"{gw} keepalived {state}\n{self.keepalived_log(gw)}",
        )

    def wait_primary(self, gw: str, timeout: float = 20.0, *, notified: bool = True) -> float:
        """Wait until ``gw`` alone holds both VIPs and (``notified``) its notify primary
        script has returned; seconds waited."""
        t0 = time.monotonic()

        def done() -> bool:
            if self.primary() != gw:
                return False
            if not notified:
                return True
            last = self.last_transition(gw)
            return last is not None and last.role == "primary" and last.ended_at is not None

        wait_for(
            done,
            timeout=timeout,
            interval=0.02,
            what=f"{gw} to become primary\n{self.state_text()}",
        )
        self._event(f"{gw}: primary")
        return time.monotonic() - t0

    def state_text(self) -> str:
        """A short picture of the lab for failure messages."""
        lines = [f"primary: {self.primary()}"]
        for gw in GATEWAYS:
            lines.append(f"--- {gw} transitions: {self.transition_times(gw)}")
            lines.append(f"--- {gw} keepalived:\n{self.keepalived_log(gw)[-1500:]}")
        return "\n".join(lines)

    def kernel_flow_count(self, gw: str) -> int:
        """Flows in ``gw``'s conntrack table (``conntrack -C``)."""
        return int(self.gw(gw).run("conntrack", "-C").stdout.strip() or 0)

    def kernel_flows(self, gw: str) -> str:
        return self.gw(gw).run("conntrack", "-L", check=False).stdout

    def kernel_expectations(self, gw: str) -> str:
        return self.gw(gw).run("conntrack", "-L", "expect", check=False).stdout

    def ftp_picture(self) -> str:
        """Where an FTP session's state is, for a failure message: each gateway's FTP
        control and passive-range flows and its expectations, and the client's neighbours
        (which gateway's MAC it sends to)."""
        ftp_ports = {FTP_PORT, *FTP_PASSIVE_PORTS}
        lines: list[str] = []
        for gw in GATEWAYS:
            flows = [
                ln for ln in self.kernel_flows(gw).splitlines()
                if ftp_ports.intersection(map(int, _PORTS.findall(ln)))
            ]  # fmt: skip
            lines.append(f"--- {gw} ftp flows ({len(flows)}):")
            lines.extend(flows[-20:])
            lines.append(f"--- {gw} expectations:\n{self.kernel_expectations(gw).strip()}")
            lines.append(f"--- {gw} links: {self.gw(gw).run('ip', '-br', 'link').stdout.strip()}")
            rules = self.gw(gw).run("nft", "list", "table", "inet", "lab").stdout
            lines.append(f"--- {gw} lab ruleset with its counters:\n{rules}")
        lines.append(f"--- client neighbours:\n{self.client.run('ip', 'neigh').stdout.strip()}")
        return "\n".join(lines)

    def flows_synced(self, gw: str) -> int:
        """How many flows ``gw`` holds from its peer: the external cache (cache modes), or
        what the injector created (inject mode); 0 without a daemon."""
        daemon = self.daemons[gw]
        if daemon is None or not daemon.alive:
            return 0
        if isinstance(daemon, Nfsyncd) and daemon.disable_external_cache:
            counters = daemon.external_counters()
            return int(counters.get("created", counters.get("flows", 0)))
        return daemon.external_count()

    def expectations_synced(self, gw: str) -> int:
        """Expectations ``gw`` holds from its peer (external cache, or its kernel in inject
        mode); 0 without a daemon."""
        daemon = self.daemons[gw]
        if daemon is None or not daemon.alive:
            return 0
        if isinstance(daemon, Conntrackd):
            return len(daemon.external_expects())
        if daemon.disable_external_cache:
            return self.kernel_expectations(gw).count("proto=")
        return len(daemon.dump("external", "expect"))

    def nft_tables(self, gw: str) -> list[str]:
        """``nft list tables`` in ``gw`` (e.g. to see whether nfsyncd made its table)."""
        return self.gw(gw).run("nft", "list", "tables").stdout.split("\n")

    # -- traffic --------------------------------------------------------------------------

    def start_servers(self) -> None:
        """Traffic servers in the server and client namespaces (once)."""
        if self._servers:
            return
        for ns, address in ((self.server, SERVER), (self.client, CLIENT)):
            server = TrafficServer(ns, address)
            self._servers.append(server)
            server.start()

    def start_traffic(
        self, kinds: tuple[str, ...] = ("stream", "interactive", "udp", "icmp", "dnat")
    ) -> Traffic:
        """Start clients (each returns once its flow exists): ``stream`` and
        ``interactive`` client→server (SNAT), ``dnat`` a stream server→VIP:DNAT_PORT→client,
        ``udp``, ``icmp``."""
        self.start_servers()
        traffic = Traffic()
        makers: dict[str, Callable[[], Any]] = {
            "stream": lambda: TcpStream(self.client, SERVER),
            "interactive": lambda: Interactive(self.client, SERVER),
            "udp": lambda: UdpRequests(self.client, SERVER),
            "icmp": lambda: IcmpEcho(self.client, SERVER),
            "dnat": lambda: TcpStream(self.server, WAN_VIP, DNAT_PORT),
        }
        try:
            for kind in kinds:
                client = makers[kind]()
                traffic.clients[kind] = client
                client.start()
        except BaseException:
            traffic.kill()
            raise
        self._event(f"traffic started: {', '.join(kinds)}")
        return traffic

    @contextlib.contextmanager
    def traffic(self, kinds: tuple[str, ...] | None = None) -> Iterator[Traffic]:
        t = self.start_traffic(kinds) if kinds else self.start_traffic()
        try:
            yield t
        finally:
            t.kill()

    # -- teardown -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop keepalived, the daemons, the traffic (by PID), delete every namespace and
        (unless ``keep``) the directory. Idempotent."""
        errors: list[BaseException] = []
        for gw in GATEWAYS:
            with contextlib.suppress(Exception):
                self.stop_keepalived(gw)
            daemon = self.daemons.get(gw)
            if daemon is not None:
                try:
                    daemon.close()
                except Exception as exc:
                    errors.append(exc)
                self.daemons[gw] = None
        for server in self._servers:
            server.kill()
        self._servers.clear()
        for log in self._ka_logs.values():
            log.close()
        self._ka_logs.clear()
        self._close_namespaces(errors)
        if self._own_dir and not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise errors[0]

    def __repr__(self) -> str:
        return f"<FailoverLab {self.daemon} {', '.join(ns.name for ns in self._made)}>"
