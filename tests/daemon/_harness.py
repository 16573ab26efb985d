"""Runs the real ``nfsyncd`` as a process in a test's namespace and drives it with the real
``nfsyncctl``, the way an operator would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nfsyncd.lab.netns import Netns
from tests._support import wait_until

STOP_TIMEOUT = 10.0


def base_config(
    tmp: Path, extra: str = "", *, metrics: str = "127.0.0.1:0", nftables: str | None = None
) -> str:
    """A config whose control socket lives in ``tmp/run``; ``extra`` goes into [general].

    ``nftables`` is the body of the [nftables] table; by default the daemon's own nft table
    is off here, because its ct rules switch conntrack on in a namespace that had none, and
    these tests count the flows of a quiet namespace (the control and HTTP connections on
    127.0.0.1 would become flows). Pass ``nftables=""`` for the default table.
    """
    table = "enabled = false\n" if nftables is None else nftables
    return (
        "[general]\n"
        f'control_socket = "{tmp / "run" / "control.sock"}"\n'
        'log_level = "debug"\n'
        f"{extra}\n"
        "[metrics]\n"
        f'listen = "{metrics}"\n'
        "[nftables]\n"
        f"{table}"
    )


@dataclass
class Daemon:
    ns: Netns
    dir: Path
    config: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def socket(self) -> Path:
        return self.dir / "run" / "control.sock"

    def ctl(
        self, *args: str, check: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``nfsyncctl --socket <our socket> ARGS`` as a separate process.

        (``--socket`` rather than ``-C``, so a test may break the config file on purpose.)
        """
        proc = subprocess.run(
            [sys.executable, "-m", "nfsyncd.ctl", "--socket", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"nfsyncctl {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc

    def ctl_json(self, *args: str) -> Any:
        return json.loads(self.ctl("--json", *args, check=True).stdout)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.ctl_json("status")
        return result

    def flows(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.ctl_json("dump", "internal", "ct")
        return result

    def expects(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.ctl_json("dump", "internal", "expect")
        return result

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 10.0) -> None:
        wait_until(
            lambda: needle in self.log_text(),
            timeout=timeout,
            what=f"{needle!r} in the daemon log:\n{self.log_text()[-3000:]}",
        )

    def http_get(self, path: str) -> tuple[int, str]:
        """GET from the daemon's metrics listener (inside its namespace)."""
        url = self.status()["metrics"]
        host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        with self.ns.entered():
            conn = socket.create_connection((host, int(port)), timeout=5)
        with conn:
            conn.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode()

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"nfsyncd did not stop within {timeout}s of SIGTERM")


def start_daemon(
    ns: Netns,
    tmp: Path,
    config_text: str,
    *,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
) -> Daemon:
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "nfsyncd.toml"
    config.write_text(config_text)
    log = tmp / "nfsyncd.log"
    full_env = {**os.environ, **(env or {})}
    with log.open("wb") as log_fh:
        proc = ns.popen(
            sys.executable,
            "-m",
            "nfsyncd.daemon",
            "-C",
            str(config),
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    daemon = Daemon(ns, tmp, config, proc, log)
    if wait_ready:

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"nfsyncd exited with {proc.returncode}:\n{daemon.log_text()}")
            res = daemon.ctl("--json", "status")
            return res.returncode == 0 and json.loads(res.stdout)["ready"]

        wait_until(ready, timeout=20, interval=0.05, what="nfsyncd to become ready")
    return daemon
