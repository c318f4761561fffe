"""NMEA 0183 logs into `Fix` epochs: tolerant of what real receivers and serial lines produce.

RMC, GGA, GNS, GSA, VTG and ZDA sentences from any talker ($GP, $GN, $GL, $GA, $BD, ...) are merged into one epoch per
time of day. The date comes from RMC or ZDA only (never from the system clock); epochs before the first dated one are
back-filled, and a time of day that wraps past midnight advances the date. Dates before 2000 are taken for a GPS
10-bit week rollover and moved forward by 1024 weeks, as gpsd does for receivers whose firmware predates it.

Bad checksums, spliced or truncated sentences and binary noise are skipped and counted; only an unreadable file,
an empty one, or one without a single usable sentence raises `GpsLogError`.
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
import re
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path

KNOTS_TO_MPS = 1852.0 / 3600.0
KMH_TO_MPS = 1000.0 / 3600.0
GPS_WEEK_ROLLOVER_S = 1024 * 7 * 86400
#: Receiver dates before this are a 10-bit week rollover (1999-08-22 or 2019-04-06) not yet corrected.
ROLLOVER_FLOOR_UTC = calendar.timegm((2000, 1, 1, 0, 0, 0))

_UNSIGNED = re.compile(r"\d+(\.\d*)?|\.\d+")
_SIGNED = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)")
_TIME = re.compile(r"(\d\d)(\d\d)(\d\d(\.\d*)?)")
_DATE = re.compile(r"(\d\d)(\d\d)(\d\d|-1)")  # "-1": Telit year after the 2019 rollover (1999)
_ADDRESS = re.compile(r"[A-Z]{2}[A-Z]{3}")
_HEX = "0123456789abcdefABCDEF"
_HALF_DAY_S = 43200.0
_TIMED = ("RMC", "GGA", "GNS", "ZDA")
_KINDS = ("RMC", "GGA", "GNS", "GSA", "VTG", "ZDA")
_MAX_UNDATED = 100_000


class GpsLogError(ValueError):
    """A GPS log that cannot be used at all; the message is one line naming the file (and line)."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        where = "" if path is None else (f"{path}:{line}: " if line is not None else f"{path}: ")
        super().__init__(where + message)


@dataclass(frozen=True)
class Fix:
    """One epoch of receiver output.

    Attributes:
        time_utc: POSIX seconds from the receiver (RMC date + time, or gpsd's TPV time); never the system clock.
        lat_deg: WGS-84 latitude in degrees; NaN when the epoch has no position (fix_mode < 2).
        lon_deg: WGS-84 longitude in degrees; NaN when the epoch has no position.
        alt_m: altitude above mean sea level in metres, or None.
        speed_mps: speed over ground in m/s, or None.
        track_deg: course over ground in degrees from true north, or None.
        fix_mode: 0 unknown, 1 no fix, 2 2D, 3 3D (gpsd's TPV mode).
        hdop: horizontal dilution of precision, or None.
        received_mono: `time.monotonic()` when a live fix arrived; None for logs.
    """

    time_utc: float
    lat_deg: float
    lon_deg: float
    alt_m: float | None
    speed_mps: float | None
    track_deg: float | None
    fix_mode: int
    hdop: float | None
    received_mono: float | None = None

    @property
    def has_position(self) -> bool:
        """True for a 2D/3D fix with a finite position that is not the null island (0, 0)."""
        return (
            self.fix_mode >= 2
            and math.isfinite(self.lat_deg)
            and math.isfinite(self.lon_deg)
            and not (self.lat_deg == 0.0 and self.lon_deg == 0.0)
        )


def _unsigned(s: str) -> float | None:
    return float(s) if _UNSIGNED.fullmatch(s) else None


def _signed(s: str) -> float | None:
    return float(s) if _SIGNED.fullmatch(s) else None


def _time_of_day(s: str) -> float | None:
    m = _TIME.fullmatch(s)
    if not m:
        return None
    hh, mm, ss = int(m.group(1)), int(m.group(2)), float(m.group(3))
    if hh > 23 or mm > 59 or ss >= 61.0:  # 60.x is a leap second
        return None
    return hh * 3600.0 + mm * 60.0 + ss


def _date(s: str) -> dt.date | None:
    m = _DATE.fullmatch(s)
    if not m:
        return None
    day, month, yy = int(m.group(1)), int(m.group(2)), int(m.group(3))
    # GPS began in 1980: two-digit years 80..99 are 19xx (and then a rollover candidate), the rest 20xx
    year = 1999 if yy == -1 else (1900 + yy if yy >= 80 else 2000 + yy)
    try:
        return dt.date(year, month, day)
    except ValueError:
        return None


def _angle(value: str, hemisphere: str, max_deg: float) -> float | None:
    """ddmm.mmmm (or dddmm.mmmm) plus N/S/E/W into signed degrees."""
    v = _unsigned(value)
    if v is None or hemisphere not in ("N", "S", "E", "W"):
        return None
    degrees = math.floor(v / 100.0)
    minutes = v - degrees * 100.0
    deg = degrees + minutes / 60.0
    if minutes >= 60.0 or deg > max_deg:
        return None
    return -deg if hemisphere in ("S", "W") else deg


def _lat_lon(fields: list[str], i: int) -> tuple[float, float] | None:
    if len(fields) < i + 4:
        return None
    if (fields[i + 1] not in ("N", "S")) or (fields[i + 3] not in ("E", "W")):
        return None
    lat = _angle(fields[i], fields[i + 1], 90.0)
    lon = _angle(fields[i + 2], fields[i + 3], 180.0)
    return None if lat is None or lon is None else (lat, lon)


def _field(fields: list[str], i: int) -> str:
    return fields[i] if i < len(fields) else ""


@dataclass
class _Epoch:
    """Sentences of one time of day, merged."""

    tod_s: float
    line: int
    date: dt.date | None = None
    lat_lon: tuple[float, float] | None = None
    alt_m: float | None = None
    speed_mps: float | None = None
    track_deg: float | None = None
    hdop: float | None = None
    rmc_valid: bool | None = None
    gga_quality: int | None = None
    gsa_mode: int | None = None

    def fix(self, date: dt.date, floor_utc: float) -> Fix | None:
        """The epoch as a Fix, its date moved past a week rollover; None for a no-fix epoch dated before
        `floor_utc` (a receiver without a fix reports its default date, 1980 or its firmware's, not a time)."""
        t = calendar.timegm(date.timetuple()) + self.tod_s
        valid = self.lat_lon is not None and self.rmc_valid is not False and self.gga_quality != 0
        valid = valid and (self.rmc_valid is not None or self.gga_quality is not None)
        if t < floor_utc and not valid:
            return None
        while t < floor_utc:
            t += GPS_WEEK_ROLLOVER_S
        if not valid or self.lat_lon is None:
            return Fix(t, math.nan, math.nan, None, None, None, 1, None)
        mode = self.gsa_mode if self.gsa_mode in (2, 3) else (3 if self.alt_m is not None else 2)
        lat, lon = self.lat_lon
        return Fix(t, lat, lon, self.alt_m, self.speed_mps, self.track_deg, mode, self.hdop)


def split_sentences(line: bytes, wanted: Container[str] | None = None) -> tuple[list[list[str]], dict[str, int]]:
    """Checked NMEA sentences found in one raw line, as field lists (field 0 is the address, e.g. "GPRMC").

    Several sentences spliced into one line are separated at each '$'. A sentence with a '*hh' checksum must
    match it; one without is accepted only when it is alone on a clean line (a truncated fragment never is).

    Args:
        line: raw bytes of one line.
        wanted: sentence types (e.g. "RMC") to return; others with a well-formed address are counted as
            "ignored" without checking them. None: return all.

    Returns:
        The sentences and counts of what was left out ("bad_checksum", "no_checksum", "garbled", "ignored").
    """
    counts = {"bad_checksum": 0, "no_checksum": 0, "garbled": 0, "ignored": 0}
    chunks = line.decode("latin-1").strip().split("$")  # chunks[0]: whatever came before the first '$'
    alone = len(chunks) == 2 and not chunks[0]
    sentences: list[list[str]] = []
    for chunk in chunks[1:]:
        chunk = chunk.rstrip()
        if wanted is not None and chunk[5:6] == "," and _ADDRESS.fullmatch(chunk[:5]):
            if chunk[0] == "P" or chunk[2:5] not in wanted:
                counts["ignored"] += 1
                continue
        star = chunk.find("*")
        if star >= 0:
            body, given = chunk[:star], chunk[star + 1 : star + 3]
            if len(given) != 2 or given.strip(_HEX) or int(given, 16) != _xor(body):
                counts["bad_checksum"] += 1
                continue
        else:
            body = chunk
            if not alone:
                counts["garbled"] += 1
                continue
            counts["no_checksum"] += 1
        if not body.isascii() or not body.isprintable():
            counts["garbled"] += 1
            continue
        sentences.append([f.strip() for f in body.split(",")])
    return sentences, counts


def _xor(body: str) -> int:
    x = 0
    for c in body.encode("latin-1"):
        x ^= c
    return x


class NmeaLog(Iterator[Fix]):
    """Iterator over the epochs of an NMEA log, with `counters` of what was read and skipped.

    Use `read_nmea`; counters are complete once the iterator is exhausted. Keys: lines, skipped_lines (lines
    with nothing usable: noise, bad checksums), sentences (checked ones of the types used), used_sentences,
    bad_checksum, no_checksum (accepted: alone on a clean line), garbled (fragments, binary), malformed (bad
    fields), ignored (other sentence types), epochs, no_fix_epochs, undated_epochs (no RMC/ZDA date ever),
    untimed_no_fix (no-fix epochs at the receiver's default date, dropped), rollover_corrected.
    """

    def __init__(self, path: str | Path, rollover_floor_utc: float = ROLLOVER_FLOOR_UTC) -> None:
        self.path = Path(path)
        self.rollover_floor_utc = rollover_floor_utc
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "lines",
                "skipped_lines",
                "sentences",
                "used_sentences",
                "bad_checksum",
                "no_checksum",
                "garbled",
                "malformed",
                "ignored",
                "epochs",
                "no_fix_epochs",
                "undated_epochs",
                "untimed_no_fix",
                "rollover_corrected",
            ),
            0,
        )
        try:
            size = self.path.stat().st_size
        except OSError as exc:
            raise GpsLogError(f"cannot read GPS log: {exc.strerror or exc}", path=path) from None
        if not self.path.is_file():
            raise GpsLogError("not a file", path=path)
        if size == 0:
            raise GpsLogError("empty GPS log", path=path, line=0)
        self._last_date: dt.date | None = None
        self._last_tod = 0.0
        self._gen = self._epochs()

    def __iter__(self) -> NmeaLog:
        return self

    def __next__(self) -> Fix:
        return next(self._gen)

    # -- parsing -----------------------------------------------------------------------------------------------

    def _lines(self) -> Iterator[bytes]:
        try:
            with self.path.open("rb") as f:
                # Binary receivers may emit bare '\r': split on both so each NMEA sentence starts a line.
                for raw in f:
                    yield from raw.split(b"\r")
        except OSError as exc:
            raise GpsLogError(
                f"cannot read GPS log: {exc.strerror or exc}", path=self.path, line=self.counters["lines"]
            ) from None

    def _epochs(self) -> Iterator[Fix]:
        c = self.counters
        current: _Epoch | None = None
        undated: list[_Epoch] = []
        for raw in self._lines():
            if not raw.strip():
                continue
            c["lines"] += 1
            sentences, rejected = split_sentences(raw, _KINDS)
            for key, n in rejected.items():
                c[key] += n
            used_here, ignored_here = 0, rejected["ignored"]
            for fields in sentences:
                c["sentences"] += 1
                address = fields[0]
                kind = address[2:]
                if not _ADDRESS.fullmatch(address) or address[0] == "P" or kind not in _KINDS:
                    ignored_here += 1  # a valid sentence we do not need (GSV, GLL, proprietary, AIS...)
                    continue
                tod = _time_of_day(_field(fields, 1)) if kind in _TIMED else None
                if kind in _TIMED and tod is None:
                    c["malformed"] += 1  # no time of day: cannot be placed in any epoch
                    continue
                if kind == "ZDA":
                    if not self._zda(fields, tod, current):
                        c["malformed"] += 1
                        continue
                    used_here += 1
                    continue
                if tod is not None and (current is None or tod != current.tod_s):
                    # a new time of day starts an epoch, unless the sentence turns out malformed
                    fresh = _Epoch(tod_s=tod, line=c["lines"])
                    if not _merge(fresh, kind, fields):
                        c["malformed"] += 1
                        continue
                    if current is not None:
                        yield from self._finish(current, undated)
                    current = fresh
                elif current is None or not _merge(current, kind, fields):
                    c["malformed"] += 1
                    continue
                used_here += 1
            c["used_sentences"] += used_here
            c["ignored"] += ignored_here - rejected["ignored"]
            if used_here == 0 and ignored_here == 0:
                c["skipped_lines"] += 1
        if current is not None:
            yield from self._finish(current, undated)
        c["undated_epochs"] += len(undated)
        if c["used_sentences"] == 0:
            raise GpsLogError(
                f"no usable NMEA sentence in {c['lines']} lines "
                f"({c['bad_checksum']} bad checksums, {c['garbled']} garbled, {c['malformed']} malformed)",
                path=self.path,
                line=c["lines"],
            )

    def _zda(self, f: list[str], tod: float | None, current: _Epoch | None) -> bool:
        """A ZDA date anchors the dates of GGA/GNS-only logs (it may belong to the next epoch)."""
        try:
            date = dt.date(int(_field(f, 4)), int(_field(f, 3)), int(_field(f, 2)))
        except ValueError:
            return False
        if tod is None:
            return False
        if current is not None and current.tod_s == tod:
            current.date = date
        self._last_date, self._last_tod = date, tod
        return True

    def _finish(self, epoch: _Epoch, undated: list[_Epoch]) -> Iterator[Fix]:
        """Date the epoch (and any waiting for a date), yield their fixes, remember the date and time."""
        date = epoch.date
        if date is None and self._last_date is not None:
            date = self._last_date
            if epoch.tod_s < self._last_tod - _HALF_DAY_S:  # past midnight
                date += dt.timedelta(days=1)
            elif epoch.tod_s > self._last_tod + _HALF_DAY_S:  # a late sentence from before midnight
                date -= dt.timedelta(days=1)
        if date is None:
            if len(undated) >= _MAX_UNDATED:
                undated.pop(0)
                self.counters["undated_epochs"] += 1
            undated.append(epoch)
            return
        if undated:
            # Back-fill from the first date, stepping back a day where the time of day wraps.
            back_date, back_tod = date, epoch.tod_s
            dated: list[tuple[_Epoch, dt.date]] = []
            for early in reversed(undated):
                if early.tod_s > back_tod + _HALF_DAY_S:
                    back_date -= dt.timedelta(days=1)
                dated.append((early, back_date))
                back_tod = early.tod_s
            undated.clear()
            for early, early_date in reversed(dated):
                yield from self._fix(early, early_date)
        self._last_date, self._last_tod = date, epoch.tod_s
        yield from self._fix(epoch, date)

    def _fix(self, epoch: _Epoch, date: dt.date) -> Iterator[Fix]:
        fix = epoch.fix(date, self.rollover_floor_utc)
        if fix is None:
            self.counters["untimed_no_fix"] += 1
            return
        self.counters["epochs"] += 1
        self.counters["no_fix_epochs"] += fix.fix_mode < 2
        self.counters["rollover_corrected"] += calendar.timegm(date.timetuple()) < self.rollover_floor_utc
        yield fix


def _merge(epoch: _Epoch, kind: str, f: list[str]) -> bool:
    """Fold one sentence into its epoch; False when the sentence is malformed."""
    if kind == "RMC":
        status = _field(f, 2)
        if status not in ("A", "V") or len(f) < 10:
            return False
        date = _date(f[9]) if f[9] else None
        if f[9] and date is None:
            return False
        mode = _field(f, 12)[:1]  # NMEA 2.3 mode indicator: N = data not valid
        epoch.rmc_valid = status == "A" and mode != "N"
        if date is not None:
            epoch.date = date
        pos = _lat_lon(f, 3)
        if epoch.rmc_valid:
            if pos is None:
                return False
            epoch.lat_lon = pos
            knots, track = _unsigned(f[7]), _unsigned(f[8])
            if knots is not None:
                epoch.speed_mps = knots * KNOTS_TO_MPS
            if track is not None and track <= 360.0:
                epoch.track_deg = track % 360.0
        return True
    if kind in ("GGA", "GNS"):
        quality = _field(f, 6)
        if len(f) < 10:
            return False
        if kind == "GNS":  # one mode letter per constellation; N: no fix
            if not quality.isalpha():
                return False
            epoch.gga_quality = 0 if set(quality) <= {"N"} else 1
        elif quality.isdigit():
            epoch.gga_quality = int(quality)
        else:
            return False
        if epoch.gga_quality == 0:
            return True
        pos = _lat_lon(f, 2)
        if pos is None:
            return False
        epoch.lat_lon = pos  # the later sentence of an epoch wins, as in gpsd
        hdop, alt = _unsigned(f[8]), _signed(f[9])
        if hdop is not None:
            epoch.hdop = hdop
        if alt is not None and (kind == "GNS" or _field(f, 10) in ("M", "")):  # GNS has no unit field
            epoch.alt_m = alt
        return True
    if kind == "GSA":
        mode = _field(f, 2)
        if mode not in ("1", "2", "3"):
            return False
        epoch.gsa_mode = int(mode)
        hdop = _unsigned(_field(f, 16))
        if hdop is not None and epoch.hdop is None:
            epoch.hdop = hdop
        return True
    # VTG: "cog,T,cogm,M,knots,N,kmh,K[,mode]", or the pre-2.3 "cog,cogm,knots,kmh"
    if _field(f, 2) == "T":
        track, knots, kmh = _unsigned(_field(f, 1)), _unsigned(_field(f, 5)), _unsigned(_field(f, 7))
        if _field(f, 9)[:1] == "N":
            return True
    elif len(f) == 5:
        track, knots, kmh = _unsigned(f[1]), _unsigned(f[3]), _unsigned(f[4])
    else:
        return False
    if epoch.speed_mps is None:
        if knots is not None:
            epoch.speed_mps = knots * KNOTS_TO_MPS
        elif kmh is not None:
            epoch.speed_mps = kmh * KMH_TO_MPS
    if epoch.track_deg is None and track is not None and track <= 360.0:
        epoch.track_deg = track % 360.0
    return True


def read_nmea(path: str | Path, *, rollover_floor_utc: float = ROLLOVER_FLOOR_UTC) -> NmeaLog:
    """Read an NMEA 0183 log as one `Fix` per epoch, in file order.

    Args:
        path: the log file (text or mixed binary).
        rollover_floor_utc: receiver dates before this POSIX time are moved forward by 1024-week steps.

    Returns:
        An iterator of fixes; its `counters` say what was skipped (final once exhausted).

    Raises:
        GpsLogError: the file is unreadable or empty (at once), or holds no usable sentence (at the end).
    """
    return NmeaLog(path, rollover_floor_utc)
