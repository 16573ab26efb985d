"""What the conntrackd and nfsyncd lab harnesses share: the sync options both daemons take,
the control-socket path, and the life of the process (start, ready probe, stop by PID, log).

Each harness only says how to write its config, how to start its binary, how to tell that
it is ready and how to talk to it; everything an operator would set the same way on both
daemons lives here, so the two can be compared option for option.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, ClassVar, Literal, TypedDict

from .netns import Closing, Netns
from .sync_lab import PeerLink, Transport, proc_cpu_seconds, proc_rss, wait_for

__all__ = ["Mode", "SyncDaemonProcess", "SyncOptions", "as_links"]

Mode = Literal["ftfw", "alarm", "notrack"]

#: sun_path is 108 bytes with its NUL.
_UNIX_PATH_MAX = 107
SOCKET_BUFFER = 8 * 1024 * 1024


class SyncOptions(TypedDict, total=False):
    """The keyword options both harnesses take (defaults: :class:`SyncDaemonProcess`)."""

    mode: Mode
    transport: Transport
    links: Sequence[PeerLink | tuple[str, str, str]]
    port: int
    expectations: bool
    disable_external_cache: bool
    disable_internal_cache: bool
    startup_resync: bool
    commit_timeout: int | None
    refresh_time: int | None
    cache_timeout: int | None
    ignore_addresses: Sequence[str]
    socket_buffer: int


def as_links(links: Sequence[PeerLink | tuple[str, str, str]], port: int) -> list[PeerLink]:
    """``(ifname, local, peer_or_group)`` tuples become link i on ``port + i`` (the first is
    the default link); :class:`PeerLink` values pass through."""
    out = []
    for i, link in enumerate(links):
        if isinstance(link, PeerLink):
            out.append(link)
        else:
            ifname, local, peer = link
            out.append(PeerLink(ifname, local, peer, port + i, i == 0))
    return out


class SyncDaemonProcess(Closing):
    """One daemon process in ``ns`` with its config, control socket and log in ``dir``.

    A subclass sets the class attributes below, calls ``super().__init__`` with the shared
    options, sets its own, then :meth:`_launch` (which writes the config and maybe starts).
    """

    kind: str  # an instance variable to the SyncDaemon protocol
    #: what a daemon that did not start (or a failed command) raises
    error: ClassVar[type[RuntimeError]]
    config_name: ClassVar[str]
    socket_name: ClassVar[str]
    #: mkdtemp prefix for the socket when ``dir`` makes its path too long for sun_path
    socket_prefix: ClassVar[str]
    max_links: ClassVar[int | None] = None
    start_timeout: ClassVar[float]
    stop_grace: ClassVar[float]
    ready_interval: ClassVar[float] = 0.02
    ready_what: ClassVar[str]
    connected_what: ClassVar[str]
    log_tail: ClassVar[int]

    def __init__(
        self,
        ns: Netns,
        dir: Path,
        *,
        mode: Mode = "ftfw",
        transport: Transport = "udp",
        links: Sequence[PeerLink | tuple[str, str, str]],
        port: int = 3780,
        expectations: bool = False,
        disable_external_cache: bool = False,
        disable_internal_cache: bool = False,
        startup_resync: bool = False,
        commit_timeout: int | None = None,
        refresh_time: int | None = None,
        cache_timeout: int | None = None,
        ignore_addresses: Sequence[str] = (),
        socket_buffer: int = SOCKET_BUFFER,
    ) -> None:
        self.ns = ns
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self.transport = transport
        self.links = as_links(links, port)
        if self.max_links is not None and not 1 <= len(self.links) <= self.max_links:
            raise ValueError(
                f"{self.kind} takes 1 to {self.max_links} links, got {len(self.links)}"
            )
        self.expectations = expectations
        self.disable_external_cache = disable_external_cache
        self.disable_internal_cache = disable_internal_cache
        self.startup_resync = startup_resync
        self.commit_timeout = commit_timeout
        self.refresh_time = refresh_time
        self.cache_timeout = cache_timeout
        self.ignore_addresses = list(ignore_addresses)
        self.socket_buffer = socket_buffer
        self.config = self.dir / self.config_name
        self.log = self.dir / f"{self.kind}.log"
        #: where the process's stdout and stderr go (the log itself unless a subclass says)
        self.out = self.log
        self._sock_dir: str | None = None
        self.socket = self.dir / self.socket_name
        if len(str(self.socket)) > _UNIX_PATH_MAX:
            self._sock_dir = tempfile.mkdtemp(prefix=self.socket_prefix)
            self.socket = Path(self._sock_dir) / self.socket_name
        self.proc: subprocess.Popen[bytes] | None = None
        self._out_fh: IO[bytes] | None = None

    def _launch(self, start: bool, timeout: float | None) -> None:
        self.config.write_text(self.config_text())
        if start:
            self.start(timeout)

    # -- what a subclass provides ---------------------------------------------------------

    def config_text(self) -> str:
        raise NotImplementedError

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _popen_options(self) -> dict[str, Any]:
        return {}

    def _before_start(self) -> None:
        """Hook: clear what a SIGKILLed run may have left behind."""

    def _ready(self) -> bool:
        raise NotImplementedError

    # -- process --------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise self.error(f"{self.kind} is not started")
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float | None = None) -> None:
        """Start the daemon in the foreground; return once :meth:`_ready` says so (within
        ``timeout`` s, default :attr:`start_timeout`)."""
        if self.alive:
            raise self.error(f"{self.kind} is already running")
        self._before_start()
        self._out_fh = self.out.open("ab")
        self.proc = self.ns.popen(
            *self._argv(), stdout=self._out_fh, stderr=subprocess.STDOUT, **self._popen_options()
        )

        def ready() -> bool:
            if not self.alive:
                rc = self.proc.returncode if self.proc else None
                raise self.error(f"{self.kind} exited with {rc}:\n{self.log_text()}")
            return self._ready()

        try:
            wait_for(
                ready,
                timeout=self.start_timeout if timeout is None else timeout,
                interval=self.ready_interval,
                what=self.ready_what,
            )
        except TimeoutError as exc:
            self.stop()
            raise self.error(f"{exc}\n{self.log_text()}") from None

    def stop(self, grace: float | None = None) -> int | None:
        """SIGTERM by PID, then SIGKILL after ``grace`` s (default :attr:`stop_grace`).
        Returns the exit status."""
        rc: int | None = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(self.stop_grace if grace is None else grace)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            rc = self.proc.returncode
        if self._out_fh is not None:
            self._out_fh.close()
            self._out_fh = None
        if self._sock_dir is not None and not self.alive:
            for leftover in Path(self._sock_dir).iterdir():
                leftover.unlink(missing_ok=True)
        return rc

    def close(self) -> None:
        self.stop()
        if self._sock_dir is not None:
            with contextlib.suppress(OSError):
                Path(self._sock_dir).rmdir()
            self._sock_dir = None

    def log_text(self) -> str:
        """The tail of the log (and of the console output, where that is another file and
        says something the log does not)."""
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        text = f"--- {self.log}\n{log[-self.log_tail :]}"
        if self.out != self.log:
            out = self.out.read_text(errors="replace") if self.out.exists() else ""
            extra = "\n".join(ln for ln in out.splitlines() if ln not in log)
            if extra:
                text += f"\n--- {self.out}\n{extra[-2000:]}"
        return text

    def cpu_seconds(self) -> float:
        """CPU time of the daemon's threads and its reaped children (e.g. dump forks)."""
        return proc_cpu_seconds(self.pid)

    def rss(self) -> int:
        """Resident set size in bytes."""
        return proc_rss(self.pid)

    # -- sync state -----------------------------------------------------------------------

    def connected(self) -> bool:
        raise NotImplementedError

    def wait_connected(self, timeout: float = 10.0) -> None:
        wait_for(self.connected, timeout=timeout, what=f"{self.connected_what}\n{self.log_text()}")

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "pid": self.pid, "mode": self.mode, "config": str(self.config)}
