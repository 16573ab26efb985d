"""systemd's notify protocol: readiness, status text, reload/stop and watchdog pings.

A unit with ``Type=notify`` (or ``notify-reload``) waits for ``READY=1`` before it calls the
service started, and ``WatchdogSec=`` restarts it when pings stop.  The protocol is one
datagram per message to ``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace), so
it is written here rather than pulled in as a dependency.  Without ``NOTIFY_SOCKET`` (not
under systemd) every call is a no-op.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

__all__ = ["Notifier"]


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self._addr: str | bytes | None = None
        if addr.startswith("@"):
            self._addr = b"\0" + addr[1:].encode()
        elif addr.startswith("/"):
            self._addr = addr
        self._sock: socket.socket | None = None
        if self._addr is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.watchdog_interval = _watchdog_interval(env)
        self.sent: list[str] = []  # the last messages, for status and tests

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, **fields: str | int) -> None:
        """Send ``KEY=value`` lines (keys upper-cased); errors are ignored, as systemd does."""
        msg = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        self.sent = ([*self.sent, msg])[-20:]
        if self._sock is None or self._addr is None:
            return
        with contextlib.suppress(OSError):
            self._sock.sendto(msg.encode(), self._addr)

    def ready(self, status: str) -> None:
        self.notify(ready=1, status=status)

    def reloading(self) -> None:
        # notify-reload units also want the monotonic time at which the reload started
        self.notify(reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> None:
        self.notify(stopping=1)

    def status(self, text: str) -> None:
        self.notify(status=text)

    def watchdog(self) -> None:
        self.notify(watchdog=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: dict[str, str] | os._Environ[str]) -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds, when the watchdog is meant for this process."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None
