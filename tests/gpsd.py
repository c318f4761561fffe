"""A real gpsd fed by `gpsfake` from a receiver log, on a free port, for tests of the live GPS path.

gpsfake starts its own gpsd (found on PATH; /usr/sbin is added) on a pseudo-terminal and writes the log into it.
Tests skip, saying why, when gpsfake or gpsd is not installed (Debian: `apt install gpsd gpsd-clients`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.brokers import free_port, wait_port

_PATH = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/usr/local/sbin"


def require_gpsfake() -> str:
    """The gpsfake executable, or skip the test saying what is missing."""
    gpsfake = shutil.which("gpsfake", path=_PATH)
    if gpsfake is None:
        pytest.skip("gpsfake not installed (Debian package gpsd-clients): no real gpsd to test against")
    if shutil.which("gpsd", path=_PATH) is None:
        pytest.skip("gpsd not installed (Debian package gpsd): gpsfake cannot start it")
    return gpsfake


@dataclass
class FakeGpsd:
    """gpsfake + gpsd serving `logfile` on 127.0.0.1:`port`.

    Attributes:
        cycle_s: pause between sentences (gpsfake -c).
        loop: replay the log forever instead of once.
        stepped: feed one sentence per `step()` call only (gpsfake -i), so the last fix can go stale.
    """

    logfile: Path
    workdir: Path
    port: int = field(default_factory=free_port)
    cycle_s: float = 0.0
    loop: bool = False
    stepped: bool = False
    proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"gpsfake-{self.port}.log"

    def start(self, logfile: Path | None = None) -> None:
        """Start (or start again, possibly with another log) on the same port."""
        if logfile is not None:
            self.logfile = logfile
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [require_gpsfake(), "-q", "-P", str(self.port), "-c", str(self.cycle_s)]
        cmd.append("-n")  # gpsd reads the device before any client watches, so nothing is lost
        if self.stepped:
            cmd.append("-i")
        if not self.loop:
            cmd.append("-1")
        cmd.append(str(self.logfile))
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE if self.stepped else subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, "PATH": _PATH},
                start_new_session=True,  # its own process group: gpsfake and its gpsd stop together
            )
        try:
            wait_port(self.port, timeout_s=20.0)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"gpsd did not start on port {self.port}; see {self.log_path}") from None

    def step(self, sentences: int = 1) -> None:
        """Feed the next sentences (stepped mode only)."""
        assert self.proc is not None and self.proc.stdin is not None and self.stepped
        self.proc.stdin.write(b"\n" * sentences)
        self.proc.stdin.flush()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Stop gpsfake and its gpsd (the process group this object started), like a gpsd crash or restart."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()


@contextlib.contextmanager
def running_gpsd(logfile: Path, workdir: Path, **options: object) -> Iterator[FakeGpsd]:
    """A started `FakeGpsd` (options as its fields), stopped afterwards."""
    gpsd = FakeGpsd(logfile=logfile, workdir=workdir, **options)  # type: ignore[arg-type]
    gpsd.start()
    try:
        yield gpsd
    finally:
        gpsd.stop()
