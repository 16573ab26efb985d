"""Throwaway network namespaces for tests, the demo and the benchmarks.

Why this module exists, and the rules it enforces:

* **Safety.** nfsyncd manipulates the conntrack table and the nft ruleset, and its tests
  send real traffic. All of that must happen inside network namespaces this process created
  itself, never on the host. A :class:`Netns` is always a fresh, uniquely named namespace
  (``{prefix}-{pid}-{counter}``), and every command goes through ``ip netns exec NAME`` or
  ``ip -n NAME``, so nothing here can reach the host's interfaces, ruleset or conntrack table.
* **Addresses.** :func:`add_address` and :func:`veth_pair` only accept addresses inside
  :data:`ALLOWED_NETWORKS` (the benchmarking range 198.18.0.0/15 and the ULA prefix
  fd00:198:18::/48), so a lab can never route to a real address by accident.
* **Cleanup by name and PID, never by pattern.** Each namespace is registered in a
  module-level registry; :func:`cleanup_all` (also run at interpreter exit) deletes exactly
  the namespaces this process created, by name. Background processes started with
  :meth:`Netns.popen` are tracked and stopped by PID (SIGTERM, a grace period, then SIGKILL)
  before their namespace is deleted. Nothing is ever killed or deleted by name matching.
  Deleting a namespace also destroys its conntrack table and nft ruleset with it.
* **Sockets from the test process.** :meth:`Netns.entered` moves the *current thread* into the
  namespace with setns(2). A socket belongs to the namespace it was created in for its whole
  life, so a test can create sockets for several namespaces from one process and then leave.
"""

from __future__ import annotations

import atexit
import ctypes
import ipaddress
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "ALLOWED_NETWORKS",
    "CLONE_NEWNET",
    "Closing",
    "CommandError",
    "Netns",
    "NetnsLab",
    "add_address",
    "cleanup_all",
    "veth_pair",
]

#: setns(2) flag selecting the network namespace (linux/sched.h).
CLONE_NEWNET = 0x40000000
#: Where ``ip netns add`` bind-mounts named namespaces.
NETNS_RUN_DIR = Path("/run/netns")
#: The only networks a lab may put on an interface.
ALLOWED_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.ip_network("198.18.0.0/15"),
    ipaddress.ip_network("fd00:198:18::/48"),
)
#: Longest interface name the kernel accepts (IFNAMSIZ - 1).
IFNAME_MAX = 15
#: Seconds a tracked process gets between SIGTERM and SIGKILL.
TERM_GRACE = 3.0

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_counter = itertools.count(1)
_lock = threading.Lock()
_registry: dict[str, Netns] = {}


class CommandError(subprocess.CalledProcessError):
    """A command failed; the message carries the command, its exit status and its stderr."""

    def __str__(self) -> str:
        cmd = self.cmd if isinstance(self.cmd, str) else " ".join(map(str, self.cmd))
        stderr = (self.stderr or "").strip()
        return f"command {cmd!r} exited with status {self.returncode}: {stderr or '(no stderr)'}"


def _run(
    argv: list[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = 30.0,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv,
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc


def _setns_impl() -> Callable[[int, int], None]:
    native: Callable[[int, int], None] | None = getattr(os, "setns", None)  # Python >= 3.12
    if native is not None:
        return native
    libc = ctypes.CDLL(None, use_errno=True)
    setns = libc.setns
    setns.argtypes = [ctypes.c_int, ctypes.c_int]
    setns.restype = ctypes.c_int

    def call(fd: int, nstype: int) -> None:
        if setns(fd, nstype) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")

    return call


_setns = _setns_impl()


class Closing:
    """Base for what a ``with`` block must clean up: leaving it calls :meth:`close`, even on
    an exception, so namespaces and processes go after a failed test too."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Netns(Closing):
    """A network namespace this process created; delete it with :meth:`close` (or ``with``)."""

    def __init__(self, name: str) -> None:
        """Wrap an existing namespace; use :meth:`create` to make a new one."""
        self.name = name
        self.path = NETNS_RUN_DIR / name
        self._owner_pid = os.getpid()
        self._procs: list[subprocess.Popen[Any]] = []
        self._closed = False

    @classmethod
    def create(cls, prefix: str = "nfs") -> Self:
        """Make a fresh namespace named ``{prefix}-{pid}-{counter}`` with ``lo`` up."""
        if not _NAME_RE.match(prefix):
            raise ValueError(f"namespace prefix must match {_NAME_RE.pattern}: {prefix!r}")
        while True:
            name = f"{prefix}-{os.getpid()}-{next(_counter)}"
            if not (NETNS_RUN_DIR / name).exists():
                break
        _run(["ip", "netns", "add", name])
        ns = cls(name)
        with _lock:
            _registry[name] = ns
        try:
            ns.ip("link", "set", "lo", "up")
        except BaseException:
            ns.close()
            raise
        return ns

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Netns {self.name} {state}>"

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"namespace {self.name} is already deleted")

    # -- commands -------------------------------------------------------------------------

    def run(
        self,
        *argv: str,
        check: bool = True,
        input: str | None = None,
        timeout: float | None = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace and capture its output (text).

        With ``check`` a non-zero exit raises :class:`CommandError` naming the command, the
        exit status and stderr. ``timeout`` kills the command and raises TimeoutExpired.
        """
        self._check_open()
        return _run(
            ["ip", "netns", "exec", self.name, *argv], check=check, input=input, timeout=timeout
        )

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ip -n NAME args...`` (cheaper than ``run("ip", ...)``)."""
        self._check_open()
        return _run(["ip", "-n", self.name, *args], check=check)

    def popen(self, *argv: str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in the background inside the namespace; stopped by PID on close.

        ``ip netns exec`` execs the command in place, so the returned PID is the command's.
        Keyword arguments go to :class:`subprocess.Popen` (stdin defaults to /dev/null).
        """
        self._check_open()
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *argv], **kwargs
        )
        self._procs = [p for p in self._procs if p.poll() is None]
        self._procs.append(proc)
        return proc

    def sysctl(self, key: str, value: str | int) -> None:
        """Set a sysctl inside the namespace, e.g. ``sysctl("net.ipv4.ip_forward", 1)``."""
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def get_sysctl(self, key: str) -> str:
        """Read a sysctl inside the namespace."""
        return self.run("sysctl", "-n", key).stdout.strip()

    def nft(self, ruleset: str) -> None:
        """Apply an nft ruleset text inside the namespace (``nft -f -``, one transaction)."""
        self.run("nft", "-f", "-", input=ruleset)

    # -- entering -------------------------------------------------------------------------

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Move the current thread into the namespace for the ``with`` block, then back.

        Sockets created inside the block belong to this namespace for good. Only the current
        thread moves: under trio, do not await inside the block (other tasks would run in
        the namespace too); create the sockets, leave, then use them. Beware of libraries
        that make sockets later (ftplib makes its data socket per transfer): keep such
        calls inside the block, or they make their sockets wherever the thread is then.
        """
        self._check_open()
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target, CLONE_NEWNET)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(original, CLONE_NEWNET)
        finally:
            os.close(original)

    # -- teardown -------------------------------------------------------------------------

    def stop_processes(self, grace: float = TERM_GRACE) -> None:
        """Stop every tracked process by PID: SIGTERM, wait up to ``grace`` s, then SIGKILL."""
        procs, self._procs = self._procs, []
        running = [p for p in procs if p.poll() is None]
        for p in running:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in running:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def close(self, grace: float = TERM_GRACE) -> None:
        """Stop tracked processes, then delete the namespace. Idempotent."""
        if self._closed or self._owner_pid != os.getpid():
            return
        try:
            self.stop_processes(grace)
        finally:
            self._closed = True
            with _lock:
                _registry.pop(self.name, None)
            if self.path.exists():
                _run(["ip", "netns", "del", self.name])

    delete = close


class NetnsLab(Closing):
    """Base for a lab built from several namespaces: it remembers the ones it made so that
    :meth:`_close_namespaces` deletes exactly those, newest first."""

    def __init__(self) -> None:
        self._made: list[Netns] = []

    def _ns(self, prefix: str) -> Netns:
        ns = Netns.create(prefix)
        self._made.append(ns)
        return ns

    def _close_namespaces(self, errors: list[BaseException]) -> None:
        """Delete the namespaces; a failure goes to ``errors`` and the others still go."""
        for ns in reversed(self._made):
            try:
                ns.close()
            except Exception as exc:
                errors.append(exc)
        self._made.clear()


def cleanup_all() -> None:
    """Delete every namespace this process created and has not deleted yet (safety net)."""
    with _lock:
        namespaces = list(_registry.values())
    for ns in namespaces:
        try:
            ns.close()
        except Exception as exc:  # keep going: the others must still go
            print(f"nfsyncd.lab: could not delete namespace {ns.name}: {exc}", file=sys.stderr)


atexit.register(cleanup_all)


def _check_ifname(name: str) -> None:
    if not name or len(name) > IFNAME_MAX or not _NAME_RE.match(name):
        raise ValueError(f"bad interface name {name!r} (1-{IFNAME_MAX} of [A-Za-z0-9_.-])")


def _check_cidr(cidr: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    iface = ipaddress.ip_interface(cidr)
    if not any(
        iface.network.version == net.version and iface.network.subnet_of(net)  # type: ignore[arg-type]
        for net in ALLOWED_NETWORKS
    ):
        allowed = ", ".join(map(str, ALLOWED_NETWORKS))
        raise ValueError(f"{cidr} is outside the lab networks ({allowed})")
    return iface


def add_address(ns: Netns, ifname: str, cidr: str) -> None:
    """Add ``cidr`` (e.g. ``198.18.0.1/24``) to ``ifname`` inside ``ns``.

    IPv6 addresses skip duplicate address detection so they are usable at once.
    """
    iface = _check_cidr(cidr)
    extra = ["nodad"] if iface.version == 6 else []
    ns.ip("address", "add", cidr, "dev", ifname, *extra)


def veth_pair(
    a: Netns,
    b: Netns,
    a_addr: str | None,
    b_addr: str | None,
    name: str | None = None,
    peer_name: str | None = None,
) -> tuple[str, str]:
    """Join ``a`` and ``b`` with a veth pair, address both ends, bring them up.

    The end in ``a`` is called ``name`` (default ``veth<N>``), the end in ``b`` ``peer_name``
    (default: the same name; names are per namespace). Returns ``(a_ifname, b_ifname)``.
    """
    if a is b:
        raise ValueError("veth_pair needs two different namespaces")
    a_if = name or f"veth{next(_counter)}"
    b_if = peer_name or a_if
    _check_ifname(a_if)
    _check_ifname(b_if)
    for cidr in (a_addr, b_addr):
        if cidr is not None:
            _check_cidr(cidr)
    a.ip("link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
    for ns, ifname, cidr in ((a, a_if, a_addr), (b, b_if, b_addr)):
        if cidr is not None:
            add_address(ns, ifname, cidr)
        ns.ip("link", "set", ifname, "up")
    return a_if, b_if
