"""The live GPS path: a gpsd reader thread that survives anything gpsd sends, and a GNSS-disciplined clock.

`GpsdReader` polls a gpsd through gpsd-py3 and feeds a `vehicle.gps.PoseTrack`; `GnssClock` maps the monotonic
clock to GNSS UTC from the fixes it reads, so a jump of the system clock never moves event times.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from vehicle.gpsd_json import fix_from_tpv, json_object, last_item, number
from vehicle.nmea import Fix

if TYPE_CHECKING:
    from vehicle.gps import PoseTrack

log = logging.getLogger(__name__)

# gpsd-py3 keeps its one connection in module globals: one live reader per process at a time.
_GPSD_LOCK = threading.Lock()


def _abort_gpsd_socket() -> None:
    """Shut down gpsd-py3's current socket, waking a read blocked in `gpsd.connect`."""
    import gpsd

    sock = gpsd.gpsd_socket
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class GpsdReader:
    """Feeds a `PoseTrack` from a live gpsd on a daemon thread that never dies.

    It connects with gpsd-py3 and polls (`?POLL;`) every `poll_s`. gpsd-py3's own `get_current()` raises on
    reports without a fix or a SKY, on any unsolicited line, and fills missing keys with 0.0 (a position at
    0, 0, a speed of 0); so the POLL answer is read from gpsd-py3's stream and checked here. A bad report is
    counted and skipped; a lost connection is retried with back-off. A fix gpsd keeps repeating (same time)
    is counted as stale and not added again, so its age keeps growing from its own time.

    Args:
        track: where fixes go.
        host: gpsd's address.
        port: gpsd's TCP port.
        poll_s: seconds between polls.
        clock: optionally a `GnssClock` to update with each new fix.
        timeout_s: socket timeout; a gpsd silent this long counts as lost.
        max_backoff_s: longest wait between reconnection attempts.
    """

    def __init__(
        self,
        track: PoseTrack,
        host: str = "127.0.0.1",
        port: int = 2947,
        poll_s: float = 0.2,
        clock: GnssClock | None = None,
        timeout_s: float = 3.0,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.track = track
        self.host, self.port, self.poll_s = host, port, poll_s
        self.clock = clock
        self.timeout_s, self.max_backoff_s = timeout_s, max_backoff_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._connected = False
        self._connecting = False
        self._last_time: float | None = None
        self._counts_lock = threading.Lock()
        self._counters = dict.fromkeys(
            (
                "connects",
                "connect_failures",
                "disconnects",
                "polls",
                "fixes",
                "no_fix",
                "stale",
                "backward",
                "bad_reports",
                "inactive",
            ),
            0,
        )

    @property
    def connected(self) -> bool:
        """True while a gpsd connection is up."""
        return self._connected

    @property
    def counters(self) -> dict[str, int]:
        """What happened so far (a copy).

        Keys: connects, connect_failures, disconnects, polls, fixes (new 2D/3D fixes added to the track),
        no_fix (reports without a fix), stale (gpsd repeating a fix already taken), backward (an older time
        than the last one; passed on, the track decides), bad_reports (junk lines, a fix without time or
        position), inactive (gpsd has no active receiver).
        """
        with self._counts_lock:
            return dict(self._counters)

    def _count(self, key: str) -> None:
        with self._counts_lock:
            self._counters[key] += 1

    def start(self) -> None:
        """Start the reader thread (once; a stopped reader is not restarted)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="gpsd-reader", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and close the connection."""
        self._stop.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked readline
            except OSError:
                pass
        elif self._connecting:
            _abort_gpsd_socket()  # this reader's connection is still waiting for gpsd's greeting
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        backoff_s = 0.25
        while not self._stop.is_set():
            if not _GPSD_LOCK.acquire(timeout=0.5):
                continue  # another reader holds gpsd-py3's one connection
            try:
                self._session()
            except Exception as exc:  # the thread must outlive anything gpsd or gpsd-py3 throws
                if self._connected:
                    self._count("disconnects")
                    log.warning("gpsd %s:%s connection lost: %s", self.host, self.port, exc)
                    backoff_s = 0.25  # it was up: try again soon
                else:
                    self._count("connect_failures")
                    log.debug("gpsd %s:%s not reachable: %s", self.host, self.port, exc)
            finally:
                self._connected = False
                self._close()
                _GPSD_LOCK.release()
            self._stop.wait(backoff_s)
            backoff_s = min(backoff_s * 2.0, self.max_backoff_s)

    def _session(self) -> None:
        """One connection: connect, then poll until it fails or the reader stops."""
        import gpsd  # gpsd-py3

        # gpsd-py3 connects and reads gpsd's greeting without a timeout: probe first, so an unreachable host
        # cannot block for minutes, and shut its socket down if the greeting does not come in time
        socket.create_connection((self.host, self.port), timeout=self.timeout_s).close()
        watchdog = threading.Timer(self.timeout_s, _abort_gpsd_socket)
        watchdog.daemon = True
        watchdog.start()
        self._connecting = True
        try:
            gpsd.connect(host=self.host, port=self.port)
        finally:
            self._connecting = False
            watchdog.cancel()
        self._sock = gpsd.gpsd_socket
        self._sock.settimeout(self.timeout_s)
        if self._stop.is_set():
            return
        self._connected = True
        self._count("connects")
        log.info("gpsd %s:%s connected", self.host, self.port)
        stream = gpsd.gpsd_stream
        while not self._stop.is_set():
            stream.write("?POLL;\n")
            stream.flush()
            packet = self._read_poll(stream)
            self._count("polls")
            self._take(packet, time.monotonic())
            self._stop.wait(self.poll_s)

    def _read_poll(self, stream: Any) -> Any:
        """The next POLL answer; other lines (DEVICE notices, junk) are skipped, EOF is a lost connection."""
        for _ in range(50):
            line = stream.readline()
            if not line:
                raise ConnectionError("gpsd closed the connection")
            obj = json_object(line.encode("utf-8", "replace"))
            if obj is not None and obj.get("class") == "POLL":
                return obj
            if obj is None and line.strip():
                self._count("bad_reports")
        raise ConnectionError("no POLL answer from gpsd in 50 lines")

    def _take(self, packet: dict, received_mono: float) -> None:
        if not packet.get("active"):
            self._count("inactive")
            return
        sky = last_item(packet.get("sky"))
        hdop = number(sky.get("hdop")) if isinstance(sky, dict) else None
        tpv = last_item(packet.get("tpv"))
        if tpv is None:
            self._count("no_fix")
            return
        fix = fix_from_tpv(tpv, hdop, received_mono)
        if fix is None:
            # mode 0/1 reports without time mean "no fix yet"; a fix without time or position is a bad report
            self._count("no_fix" if isinstance(tpv, dict) and tpv.get("mode", 0) in (0, 1) else "bad_reports")
            return
        if fix.time_utc == self._last_time:  # gpsd repeats its last fix until a new one comes
            self._count("stale")
            return
        if self._last_time is not None and fix.time_utc < self._last_time:
            self._count("backward")  # the track ignores it, or restarts if the receiver's time stepped back
        self._last_time = fix.time_utc
        self._count("fixes" if fix.fix_mode >= 2 else "no_fix")
        self.track.add(fix)
        if self.clock is not None:
            self.clock.update(fix)

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


class GnssClock:
    """Maps `time.monotonic()` to GNSS UTC, so event times never follow a jump of the system clock.

    Each fresh fix gives an offset UTC - monotonic; reception delays only ever make it smaller, so the largest
    offset of the last `window_s` is the best estimate. An offset more than `max_step_s` away from it is held
    back until `confirm_n` fixes in a row agree on it (the receiver's time really stepped), so one glitched
    fix never moves the clock. A fix repeated with the time already taken (gpsd's stale fix) is ignored.

    Args:
        window_s: seconds of monotonic time over which offsets are kept.
        max_step_s: an offset change larger than this is a step, not jitter.
        confirm_n: fixes needed to accept a step.
    """

    def __init__(self, window_s: float = 60.0, max_step_s: float = 1.0, confirm_n: int = 3) -> None:
        self.window_s, self.max_step_s, self.confirm_n = window_s, max_step_s, confirm_n
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, float]] = deque()
        self._step: list[tuple[float, float]] = []  # offsets that disagree with the estimate, awaiting confirmation
        self._offset_s: float | None = None
        self._last_fix_utc: float | None = None
        self.steps = 0

    def update(self, fix: Fix) -> None:
        """Take a fix's receiver time and its `received_mono`; fixes without either, or repeated, are ignored."""
        mono = fix.received_mono
        if mono is None or not math.isfinite(fix.time_utc) or not math.isfinite(mono):
            return
        with self._lock:
            if fix.time_utc == self._last_fix_utc:
                return  # a stale fix repeated later would pull the offset back
            self._last_fix_utc = fix.time_utc
            offset = fix.time_utc - mono
            if self._offset_s is not None and abs(offset - self._offset_s) > self.max_step_s:
                if self._step and abs(offset - self._step[0][1]) > self.max_step_s:
                    self._step.clear()
                self._step.append((mono, offset))
                if len(self._step) < self.confirm_n:
                    return
                self._samples = deque(self._step)
                self._step = []
                self.steps += 1
            else:
                self._step.clear()
                self._samples.append((mono, offset))
            while self._samples[0][0] < mono - self.window_s:
                self._samples.popleft()
            self._offset_s = max(o for _, o in self._samples)

    def utc_at(self, mono: float) -> float | None:
        """GNSS UTC (POSIX seconds) at a `time.monotonic()` reading; None until a fix with time arrived."""
        with self._lock:
            return None if self._offset_s is None else mono + self._offset_s
