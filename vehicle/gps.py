"""GPS stage: fixes from gpsd (live), NMEA or gpsd-JSON logs (replay), and the car's pose at any frame time.

`PoseTrack` keeps recent fixes and answers `pose_at(time_utc)`: position interpolated between bracketing fixes,
heading from course over ground (held while the car is nearly stopped), fix mode, HDOP and the age of the newest
fix. `GpsdReader` feeds a track from a live gpsd on a daemon thread that survives bad reports and gpsd restarts.
`GnssClock` maps the monotonic clock to GNSS UTC so a system clock jump never moves event times.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vehicle.gps_live import GnssClock, GpsdReader
from vehicle.gpsd_json import GpsdJsonLog, fix_from_tpv, json_object, read_gpsd_json
from vehicle.nmea import Fix, GpsLogError, NmeaLog, read_nmea

__all__ = [
    "Fix",
    "GnssClock",
    "GpsLogError",
    "GpsdJsonLog",
    "GpsdReader",
    "NmeaLog",
    "Pose",
    "PoseTrack",
    "fix_from_tpv",
    "load_track",
    "open_gps_log",
    "read_gpsd_json",
    "read_nmea",
]

EARTH_RADIUS_M = 6_371_008.8


@dataclass(frozen=True)
class Pose:
    """The car's pose at one instant.

    Attributes:
        time_utc: the instant asked for, POSIX seconds (UTC).
        lat_deg: WGS-84 latitude, degrees (the last good fix's when there is no fix now).
        lon_deg: WGS-84 longitude, degrees.
        heading_deg: direction of travel, degrees clockwise from true north; None until known.
        speed_mps: speed over ground, m/s; None when unknown.
        fix_mode: 0 unknown, 1 no fix, 2 2D, 3 3D (the receiver's mode at this instant).
        hdop: horizontal dilution of precision, or None.
        fix_age_s: seconds from the newest position fix at/before `time_utc` to `time_utc`.
        interpolated: True when the position lies between two fixes.
        valid: fix_mode >= 2, fix_age_s <= max_fix_age_s and the position is not (0, 0).
    """

    time_utc: float
    lat_deg: float
    lon_deg: float
    heading_deg: float | None
    speed_mps: float | None
    fix_mode: int
    hdop: float | None
    fix_age_s: float
    interpolated: bool
    valid: bool


@dataclass(frozen=True)
class _Epoch:
    """A fix as the track stores it: speed and held heading resolved once, on arrival."""

    fix: Fix
    speed_mps: float | None
    heading_deg: float | None
    last_position: _Epoch | None  # newest epoch with a position at/before this one (itself if it has one)


def _wrap180(deg: float) -> float:
    return (deg + 180.0) % 360.0 - 180.0


def _step_m(a: Fix, b: Fix) -> tuple[float, float]:
    """East and north metres from a to b (equirectangular: fine for steps of a few hundred metres)."""
    lat_mid = math.radians((a.lat_deg + b.lat_deg) / 2.0)
    east = math.radians(_wrap180(b.lon_deg - a.lon_deg)) * math.cos(lat_mid) * EARTH_RADIUS_M
    north = math.radians(b.lat_deg - a.lat_deg) * EARTH_RADIUS_M
    return east, north


class PoseTrack:
    """Recent fixes and the pose at any time between them. Thread-safe; memory bounded by `keep_s`.

    Args:
        max_fix_age_s: a pose whose newest fix is older than this is not valid.
        stopped_speed_mps: below this speed the heading is held at the last heading taken while moving.
        max_gap_s: never interpolate between fixes further apart than this.
        keep_s: fixes older than this behind the newest one are dropped.
        reset_after_n: restart from fixes this many in a row older than the newest (0: never); see `add`.
    """

    def __init__(
        self,
        max_fix_age_s: float = 3.0,
        stopped_speed_mps: float = 1.0,
        max_gap_s: float = 5.0,
        keep_s: float = 600.0,
        reset_after_n: int = 5,
    ) -> None:
        for name, value in (("max_fix_age_s", max_fix_age_s), ("max_gap_s", max_gap_s), ("keep_s", keep_s)):
            if not value > 0:
                raise ValueError(f"PoseTrack: {name} must be > 0, got {value}")
        if not stopped_speed_mps >= 0:
            raise ValueError(f"PoseTrack: stopped_speed_mps must be >= 0, got {stopped_speed_mps}")
        if reset_after_n < 0:
            raise ValueError(f"PoseTrack: reset_after_n must be >= 0, got {reset_after_n}")
        self.max_fix_age_s = max_fix_age_s
        self.stopped_speed_mps = stopped_speed_mps
        self.max_gap_s = max_gap_s
        self.keep_s = keep_s
        self.reset_after_n = reset_after_n
        self._lock = threading.Lock()
        self._times: list[float] = []
        self._epochs: list[_Epoch] = []
        self._held_heading: float | None = None
        self._behind: list[Fix] = []  # consecutive, increasing position fixes older than the newest epoch
        self._counters = dict.fromkeys(
            ("fixes", "no_fix", "zero_position", "out_of_order", "duplicate", "dropped_old", "time_resets"), 0
        )

    @property
    def counters(self) -> dict[str, int]:
        """Counts of fixes taken, no-fix epochs, and fixes ignored or dropped (a copy)."""
        with self._lock:
            return dict(self._counters)

    @property
    def latest(self) -> Fix | None:
        """The newest epoch added (with or without a fix), or None."""
        with self._lock:
            return self._epochs[-1].fix if self._epochs else None

    def first_time_utc(self) -> float:
        """Time of the oldest epoch kept (a replayed log's start); the current time when empty."""
        with self._lock:
            return self._times[0] if self._times else time.time()

    def __len__(self) -> int:
        with self._lock:
            return len(self._epochs)

    def add(self, fix: Fix) -> None:
        """Add the next epoch. Times not after the newest one are ignored and counted.

        A receiver whose clock stepped back (a restart, a corrected rollover) would otherwise be ignored for
        good: after `reset_after_n` consecutive, increasing position fixes all older than the newest epoch,
        the epochs from the first of them on are replaced by them (counted as "time_resets"; 0: never).
        """
        with self._lock:
            c = self._counters
            if not math.isfinite(fix.time_utc):
                c["out_of_order"] += 1
                return
            if self._times and fix.time_utc <= self._times[-1]:
                if fix.time_utc == self._times[-1]:
                    c["duplicate"] += 1
                    return
                c["out_of_order"] += 1
                if self.reset_after_n and fix.has_position:
                    if self._behind and fix.time_utc <= self._behind[-1].time_utc:
                        self._behind.clear()
                    self._behind.append(fix)
                    if len(self._behind) >= self.reset_after_n:
                        # keep what came before the step back, drop what it supersedes
                        restart, self._behind = self._behind, []
                        cut = bisect.bisect_left(self._times, restart[0].time_utc)
                        del self._times[cut:], self._epochs[cut:]
                        last = self._epochs[-1].last_position if self._epochs else None
                        self._held_heading = None if last is None else last.heading_deg
                        c["time_resets"] += 1
                        for f in restart:
                            self._append(f)
                return
            self._behind.clear()
            self._append(fix)

    def _append(self, fix: Fix) -> None:
        c = self._counters
        prev = self._epochs[-1].last_position if self._epochs else None
        if fix.has_position:
            c["fixes"] += 1
            epoch = self._resolve(fix, prev)
        else:
            c["no_fix" if fix.fix_mode < 2 else "zero_position"] += 1
            epoch = _Epoch(fix, None, None, prev)
        # measure age from the previous epoch when this one jumps far ahead: one glitched time must not
        # wipe the history (a real jump prunes with the next fix)
        newest = min(fix.time_utc, self._times[-1] + self.max_gap_s) if self._times else fix.time_utc
        self._times.append(fix.time_utc)
        self._epochs.append(epoch)
        cut = bisect.bisect_left(self._times, newest - self.keep_s)
        if cut:
            del self._times[:cut], self._epochs[:cut]
            c["dropped_old"] += cut

    def _resolve(self, fix: Fix, prev: _Epoch | None) -> _Epoch:
        """Speed (reported, or from the last position) and heading (COG, derived, or held)."""
        speed, course = fix.speed_mps, fix.track_deg
        if prev is not None and (speed is None or course is None):
            dt_s = fix.time_utc - prev.fix.time_utc
            if 0 < dt_s <= self.max_gap_s:
                east, north = _step_m(prev.fix, fix)
                moved_mps = math.hypot(east, north) / dt_s
                if speed is None:
                    speed = moved_mps
                if course is None and moved_mps >= max(self.stopped_speed_mps, 1e-9):
                    course = math.degrees(math.atan2(east, north)) % 360.0
        moving = speed is None or speed >= self.stopped_speed_mps
        if moving and course is not None:
            self._held_heading = course
        epoch = _Epoch(fix, speed, self._held_heading, None)
        object.__setattr__(epoch, "last_position", epoch)  # a frozen dataclass cannot name itself otherwise
        return epoch

    def pose_at(self, time_utc: float) -> Pose | None:
        """The pose at `time_utc` (POSIX seconds), or None before the first position fix (or for NaN).

        Between two position fixes at most `max_gap_s` apart, latitude, longitude and speed are interpolated
        linearly and heading along the shorter arc. Past the newest fix nothing is extrapolated: the newest fix
        comes back with its growing `fix_age_s`. After a no-fix epoch (or a "fix" at 0, 0) the last good position
        comes back with fix_mode 1 (0 if the receiver said unknown), so the pose is not valid.
        """
        if not math.isfinite(time_utc):
            return None
        with self._lock:
            i = bisect.bisect_right(self._times, time_utc) - 1
            if i < 0:
                return None
            e0 = self._epochs[i]
            base = e0.last_position
            if base is None:
                return None
            e1 = self._epochs[i + 1] if i + 1 < len(self._epochs) else None
        f0 = base.fix
        age_s = time_utc - f0.time_utc
        if base is not e0:  # the receiver has lost its fix since `base` (a "fix" at 0, 0 counts as lost)
            return self._pose(
                time_utc,
                f0.lat_deg,
                f0.lon_deg,
                base.heading_deg,
                base.speed_mps,
                min(e0.fix.fix_mode, 1),
                e0.fix.hdop,
                age_s,
                False,
            )
        if e1 is None or e1.last_position is not e1 or e1.fix.time_utc - f0.time_utc > self.max_gap_s or age_s == 0:
            return self._pose(
                time_utc, f0.lat_deg, f0.lon_deg, e0.heading_deg, e0.speed_mps, f0.fix_mode, f0.hdop, age_s, False
            )
        f1 = e1.fix
        w = age_s / (f1.time_utc - f0.time_utc)
        lat = f0.lat_deg + w * (f1.lat_deg - f0.lat_deg)
        lon = _wrap180(f0.lon_deg + w * _wrap180(f1.lon_deg - f0.lon_deg))
        h0, h1 = e0.heading_deg, e1.heading_deg
        heading = h0 if h1 is None else h1 if h0 is None else (h0 + w * _wrap180(h1 - h0)) % 360.0
        s0, s1 = e0.speed_mps, e1.speed_mps
        speed = None if s0 is None or s1 is None else s0 + w * (s1 - s0)
        hdops = [h for h in (f0.hdop, f1.hdop) if h is not None]
        return self._pose(
            time_utc,
            lat,
            lon,
            heading,
            speed,
            min(f0.fix_mode, f1.fix_mode),
            max(hdops) if hdops else None,
            age_s,
            True,
        )

    def _pose(
        self,
        t: float,
        lat: float,
        lon: float,
        heading: float | None,
        speed: float | None,
        mode: int,
        hdop: float | None,
        age_s: float,
        interpolated: bool,
    ) -> Pose:
        valid = mode >= 2 and age_s <= self.max_fix_age_s and not (lat == 0.0 and lon == 0.0)
        return Pose(t, lat, lon, heading, speed, mode, hdop, age_s, interpolated, valid)


def open_gps_log(path: str | Path) -> Iterator[Fix]:
    """Read a GPS log as fixes, NMEA 0183 or gpsd JSON, whichever its first 64 KiB look like."""
    try:
        with Path(path).open("rb") as f:
            head = f.read(65536)
    except OSError as exc:
        raise GpsLogError(f"cannot read GPS log: {exc.strerror or exc}", path=path) from None
    for line in head.splitlines():
        obj = json_object(line)
        if obj is not None and obj.get("class") in ("TPV", "SKY", "VERSION", "DEVICES", "WATCH", "POLL"):
            return read_gpsd_json(path)
    return read_nmea(path)


def load_track(path: str | Path, **pose_track_kwargs: float) -> PoseTrack:
    """A whole GPS log in a `PoseTrack`, for replay (nothing is dropped for age unless keep_s is given).

    Raises:
        GpsLogError: unreadable, empty, or without a single valid fix ("no fix in FILE").
    """
    pose_track_kwargs.setdefault("keep_s", math.inf)
    track = PoseTrack(**pose_track_kwargs)
    fixes = open_gps_log(path)
    for fix in fixes:
        track.add(fix)
    if track.counters["fixes"] == 0:
        read = getattr(fixes, "counters", {})
        detail = ", ".join(f"{k} {v}" for k, v in read.items() if v)
        raise GpsLogError(f"no fix in {path}" + (f" ({detail})" if detail else ""))
    return track
