"""Real Mosquitto brokers for tests: started on a free port, stopped afterwards."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


@dataclass
class Broker:
    """A running Mosquitto process owned by a test."""

    host: str
    port: int
    workdir: Path
    extra_conf: str = ""
    proc: subprocess.Popen | None = None

    @property
    def log_file(self) -> Path:
        return self.workdir / "mosquitto.log"

    def start(self) -> None:
        """Start (or restart) the broker on the same port."""
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            f"log_dest file {self.log_file}\n"
            "log_type all\n"
            "max_inflight_messages 100\n"
            "max_queued_messages 100000\n" + self.extra_conf
        )
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(self.port)
        except TimeoutError:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
            raise RuntimeError(f"mosquitto did not start: {err.strip()}") from None

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@contextlib.contextmanager
def running_broker(workdir: Path, extra_conf: str = "", port: int | None = None) -> Iterator[Broker]:
    """Context manager: a fresh Mosquitto on a free port in ``workdir``."""
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto not installed (scripts/setup.sh installs it)")
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker("127.0.0.1", port or free_port(), workdir, extra_conf)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
