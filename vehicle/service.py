"""systemd integration: READY, WATCHDOG and STATUS notifications on ``$NOTIFY_SOCKET``.

A few lines of the sd_notify protocol (one datagram per message) instead of a new dependency.
"""

from __future__ import annotations

import os
import socket
import time


class SystemdNotifier:
    """Sends sd_notify messages when run by systemd with ``Type=notify``; does nothing otherwise."""

    def __init__(self, socket_path: str | None = None):
        path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        self._sock: socket.socket | None = None
        if path:
            # A leading '@' names a socket in the abstract namespace.
            self.address = "\0" + path[1:] if path.startswith("@") else path
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        usec = os.environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval_s = int(usec) / 2e6 if usec.isdigit() else 0.0
        self._last_watchdog = 0.0

    @property
    def enabled(self) -> bool:
        """True when a notify socket was given."""
        return self._sock is not None

    def notify(self, message: str) -> None:
        """Send one raw message (e.g. ``READY=1``); errors are ignored, systemd may be gone."""
        if self._sock is None or self.address is None:
            return
        try:
            self._sock.sendto(message.encode("utf-8"), self.address)
        except OSError:
            pass

    def ready(self, status: str = "") -> None:
        """Tell systemd start-up is complete."""
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> None:
        """Pet the watchdog (rate-limited to half the configured interval); call from the frame loop."""
        now = time.monotonic()
        if self._sock is not None and now - self._last_watchdog >= min(self.watchdog_interval_s or 1.0, 1.0):
            self._last_watchdog = now
            self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        """A one-line status shown by ``systemctl status``."""
        self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        """Tell systemd the service is shutting down."""
        self.notify("STOPPING=1")
