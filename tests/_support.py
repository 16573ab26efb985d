"""Shared helpers for the test suite (importable as ``tests._support``)."""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest

from nfsyncd.lab.failover_traffic import FTP_PASSIVE_PORTS  # noqa: F401 (re-exported)
from nfsyncd.lab.netns import Netns
from nfsyncd.lab.sync_lab import wait_for

T = TypeVar("T")

#: With this environment variable set to 1, a skip for a missing prerequisite is a failure:
#: on a full-featured machine nothing may be silently skipped.
REQUIRE_ALL_ENV = "NFSYNC_REQUIRE_ALL"
#: Binaries every kernel test needs.
KERNEL_BINARIES = ("ip", "nft", "conntrack")

TOOLS = Path(__file__).parent / "tools"


def require_all() -> bool:
    return os.environ.get(REQUIRE_ALL_ENV) == "1"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test with ``reason``, or fail it when NFSYNC_REQUIRE_ALL=1."""
    if require_all():
        pytest.fail(f"{REQUIRE_ALL_ENV}=1: {reason}", pytrace=False)
    pytest.skip(reason)


def kernel_unavailable() -> str | None:
    """Why kernel tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "kernel test needs root (network namespaces, nft, conntrack)"
    missing = [b for b in KERNEL_BINARIES if shutil.which(b) is None]
    if missing:
        return f"kernel test needs the binaries: {', '.join(missing)} (run scripts/install-deps.sh)"
    return None


def require_kernel() -> None:
    reason = kernel_unavailable()
    if reason is not None:
        skip_or_fail(reason)


def require_binary(*names: str) -> None:
    missing = [b for b in names if shutil.which(b) is None]
    if missing:
        skip_or_fail(f"needs the binaries: {', '.join(missing)} (run scripts/install-deps.sh)")


def wait_until(
    probe: Callable[[], T | None], *, timeout: float = 5.0, interval: float = 0.01, what: str = ""
) -> T:
    """Call ``probe`` until it returns something truthy, at most ``timeout`` seconds.

    Returns that value; fails the test with ``what`` and the deadline when it never comes.
    """
    try:
        return wait_for(probe, timeout=timeout, interval=interval, what=what)
    except TimeoutError as exc:
        pytest.fail(str(exc))


@dataclass
class NetnsPair:
    """Two namespaces joined by one veth: ``a`` (a_ip on a_if) and ``b`` (b_ip on b_if)."""

    a: Netns
    b: Netns
    a_if: str
    b_if: str
    a_ip: str
    b_ip: str


# -- FTP ------------------------------------------------------------------------------------


def ftp_helper_ruleset(
    hooks: tuple[str, ...] = ("prerouting", "output"), port: int = 2121, table: str = "ftphelp"
) -> str:
    """An nft table that attaches the in-kernel ftp helper to control connections to ``port``.

    The rule must see the connection's *first* packet in the namespace whose conntrack table
    is to hold the expectation (see the ``ftp_server`` fixture for which hooks work where).
    """
    chains = "\n".join(
        f"  chain {hook} {{ type filter hook {hook} priority filter; "
        f'tcp dport {port} ct helper set "ftp-standard"; }}'
        for hook in hooks
    )
    return (
        f"table inet {table} {{\n"
        f'  ct helper ftp-standard {{ type "ftp" protocol tcp; }}\n'
        f"{chains}\n}}\n"
    )


@dataclass
class FtpServer:
    ns: Netns
    address: str
    port: int
    root: Path
    log: Path
    proc: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"ftp://{host}:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_ftp_server(ns: Netns, address: str, root: Path, port: int = 2121) -> FtpServer:
    """Start tests/tools/ftpserver.py in ``ns`` and return once it accepts connections."""
    root.mkdir(parents=True, exist_ok=True)
    log = root.parent / f"{root.name}-ftpserver.log"
    with log.open("wb") as log_file:
        proc: subprocess.Popen[bytes] = ns.popen(
            sys.executable,
            str(TOOLS / "ftpserver.py"),
            "--address",
            address,
            "--port",
            str(port),
            "--root",
            str(root),
            stdout=subprocess.PIPE,
            stderr=log_file,
        )
    server = FtpServer(ns, address, port, root, log, proc)
    try:
        _wait_ready_line(proc, timeout=10.0, log=log)
        # The server prints READY after binding; prove the port accepts from inside the ns.
        with ns.entered():
            probe = socket.create_connection((address, port), timeout=5)
        probe.close()
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready_line(proc: subprocess.Popen[bytes], *, timeout: float, log: Path) -> None:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"FTP server not ready after {timeout}s: {log.read_text()}")
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                proc.wait(timeout=5)
                raise RuntimeError(
                    f"FTP server exited with {proc.returncode} before READY: {log.read_text()}"
                )
            buf += chunk
    if not buf.startswith(b"READY"):
        raise RuntimeError(f"unexpected FTP server output {buf!r}")


def lftp(
    ns: Netns, url: str, commands: str, *, passive: bool, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run the real lftp client in ``ns`` against ``url``; debug output (the FTP commands
    sent, e.g. ``---> PASV``) is in stderr. Raises CommandError when lftp fails."""
    script = "; ".join(
        [
            "set cmd:fail-exit yes",
            "set ftp:ssl-allow no",
            "set ftp:prefer-epsv no",
            f"set ftp:passive-mode {'on' if passive else 'off'}",
            "set net:max-retries 1",
            "set net:timeout 5",
            "set net:reconnect-interval-base 1",
            f"open {url}",
            commands,
            "bye",
        ]
    )
    return ns.run("lftp", "-d", "-c", script, timeout=timeout)
