"""Run the real nfsyncd with peer sync in a lab namespace, behind the same small interface
as :class:`~nfsyncd.lab.sync_conntrackd.Conntrackd`, so a test or a benchmark can take
either daemon (or one of each: an interop pair) as a parameter.

The config is the TOML an operator would write; commands go through ``nfsyncctl`` (the
real CLI, :meth:`Nfsyncd.ctl`) or, for cheap polling, straight over the control socket with
the CLI's own client class (JSON lines, no process spawn).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Unpack

from ..ctl import Client, CtlError
from .netns import Netns
from .sync_daemon_base import SyncDaemonProcess, SyncOptions
from .sync_lab import FlowKey, json_flow_key

__all__ = ["Nfsyncd", "NfsyncdError"]


class NfsyncdError(RuntimeError):
    """nfsyncd did not start, or a command failed; carries the log tail."""


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


class Nfsyncd(SyncDaemonProcess):
    """One nfsyncd process in ``ns`` with config, control socket and log in ``dir``.

    Mirrors :class:`~nfsyncd.lab.sync_conntrackd.Conntrackd`'s arguments; ``extra_toml`` is
    appended to the generated file (new tables only: TOML forbids reopening one).
    ``metrics`` is the [metrics] listen value ("" = off). ``nftables`` turns the daemon's
    own nft table on (default) or off; ``nft_events`` sets ``nftables.events`` (e.g. add
    "protoinfo" and "reply" where a test checks exact TCP state replication).
    """

    kind = "nfsyncd"
    error = NfsyncdError
    config_name = "nfsyncd.toml"
    socket_name = "control.sock"
    socket_prefix = "nfs-"
    start_timeout = 30.0
    stop_grace = 10.0
    ready_interval = 0.05
    ready_what = "nfsyncd to become ready"
    connected_what = "nfsyncd sync links"
    log_tail = 6000

    def __init__(
        self,
        ns: Netns,
        dir: Path,
        *,
        peer_version: str | None = None,
        sync_options: dict[str, Any] | None = None,
        nftables: bool = True,
        nft_events: Sequence[str] | None = None,
        extra_toml: str = "",
        metrics: str = "",
        log_level: str = "info",
        python: str = sys.executable,
        start: bool = True,
        start_timeout: float | None = None,
        **options: Unpack[SyncOptions],
    ) -> None:
        super().__init__(ns, dir, **options)
        self.peer_version = peer_version
        self.sync_options = dict(sync_options or {})
        self.nftables = nftables
        self.nft_events = None if nft_events is None else list(nft_events)
        self.extra_toml = extra_toml
        self.metrics = metrics
        self.log_level = log_level
        self.python = python
        self._launch(start, start_timeout)

    # -- config ---------------------------------------------------------------------------

    def config_text(self) -> str:
        lines = [
            "[general]",
            f"control_socket = {_toml_str(str(self.socket))}",
            f"log_level = {_toml_str(self.log_level)}",
            'netlink_buffer_size = "64MiB"',
            'netlink_buffer_max = "256MiB"',
            "cache_limit = 524288",
            "",
            "[metrics]",
            f"listen = {_toml_str(self.metrics)}",
            "",
        ]
        ignore = ["127.0.0.1", "::1", *self.ignore_addresses]
        lines += ["[filter.address]", f"ignore = {json.dumps(ignore)}", ""]
        lines += ["[sync]", f"mode = {_toml_str(self.mode)}"]
        if self.mode in ("ftfw", "notrack"):
            if self.disable_external_cache:
                lines.append("disable_external_cache = true")
            if self.startup_resync:
                lines.append("startup_resync = true")
        if self.mode == "notrack" and self.disable_internal_cache:
            lines.append("disable_internal_cache = true")
        if self.mode == "alarm" and self.refresh_time is not None:
            lines.append(f"refresh_time = {self.refresh_time}")
        if self.cache_timeout is not None:
            lines.append(f"cache_timeout = {self.cache_timeout}")
        if self.commit_timeout is not None:
            lines.append(f"commit_timeout = {self.commit_timeout}")
        for key, value in self.sync_options.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
        for link in self.links:
            lines += ["[[sync.links]]", f"transport = {_toml_str(self.transport)}"]
            lines.append(f"interface = {_toml_str(link.interface)}")
            lines.append(f"local = {_toml_str(link.local)}")
            key = "group" if self.transport == "multicast" else "peer"
            lines.append(f"{key} = {_toml_str(link.peer)}")
            lines.append(f"port = {link.port}")
            if link.default:
                lines.append("default = true")
            lines.append(f"sndbuf = {self.socket_buffer}")
            lines.append(f"rcvbuf = {self.socket_buffer}")
            if self.peer_version is not None:
                lines.append(f"peer_version = {_toml_str(self.peer_version)}")
            lines.append("")
        lines += ["[expectations]", f"sync = {'true' if self.expectations else 'false'}", ""]
        # the daemon's own table "inet nfsyncd"; the lab's "inet lab" table stays as it is
        lines += ["[nftables]", f"enabled = {'true' if self.nftables else 'false'}"]
        if self.nft_events is not None:
            lines.append(f"events = {json.dumps(self.nft_events)}")
        lines.append("")
        return "\n".join(lines) + self.extra_toml

    # -- process --------------------------------------------------------------------------

    def _argv(self) -> list[str]:
        return [self.python, "-m", "nfsyncd.daemon", "-C", str(self.config)]

    def _popen_options(self) -> dict[str, Any]:
        return {"cwd": str(Path(__file__).resolve().parents[2])}

    def _ready(self) -> bool:
        try:
            return bool(self.status().get("ready"))
        except (OSError, CtlError):
            return False

    # -- client ---------------------------------------------------------------------------

    def ctl(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """``nfsyncctl --socket S ARGS`` as a separate process (the real CLI)."""
        proc = subprocess.run(
            [self.python, "-m", "nfsyncd.ctl", "--socket", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise NfsyncdError(
                f"nfsyncctl {' '.join(args)} exited {proc.returncode}: {proc.stderr}\n"
                f"{self.log_text()}"
            )
        return proc

    def ctl_json(self, *args: str, timeout: float = 120.0) -> Any:
        return json.loads(self.ctl("--json", *args, timeout=timeout).stdout)

    def _client(self, timeout: float = 120.0) -> Client:
        return Client(str(self.socket), timeout)

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """One control request over the socket, in process (cheap); the final reply object."""
        return self._client().call(cmd, **args)

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def stats(self, section: str | None = None) -> dict[str, Any]:
        stats: dict[str, Any] = self.call("stats", section=section).get("stats", {})
        return stats

    def dump(self, cache: Literal["internal", "external"], what: str = "ct") -> list[Any]:
        items = list(self._client().request("dump", cache=cache, what=what))
        return [i for i in items if not ("ok" in i and "count" in i)]

    def internal_keys(self) -> set[FlowKey]:
        return {json_flow_key(i) for i in self.dump("internal")}

    def external_keys(self) -> set[FlowKey]:
        return {json_flow_key(i) for i in self.dump("external")}

    def external_count(self) -> int:
        """``status`` → ``external.flows`` (0 until the daemon reports an external cache)."""
        ext = self.status().get("external") or {}
        return int(ext.get("flows", 0))

    def external_counters(self) -> dict[str, int]:
        """``status`` → ``external``: at least ``flows``; created/updated/destroyed when the
        daemon reports them."""
        ext = self.status().get("external") or {}
        return {k: int(v) for k, v in ext.items() if isinstance(v, int | float)}

    def internal_count(self) -> int:
        st = self.status()
        internal = st.get("internal")
        if isinstance(internal, dict):
            return int(internal.get("flows", 0))
        return int(st.get("flows", 0))

    def commit(self) -> float:
        """``nfsyncctl commit``: blocks until done; seconds taken."""
        t0 = time.monotonic()
        self.ctl("commit")
        return time.monotonic() - t0

    def connected(self) -> bool:
        """Whether ``status`` → ``sync`` reports the link(s) usable (True if it does not say)."""
        sync = self.status().get("sync") or {}
        value = sync.get("connected", True)
        return bool(value)
