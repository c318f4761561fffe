"""gpsd's JSON reports (TPV, SKY, POLL) into `Fix` epochs: from `gpspipe -w` logs and from a live gpsd.

Missing keys, wrong types, NaN and junk lines never raise: a report that cannot give a fix is counted and
skipped. Only an unreadable or empty file, or one without a single TPV report, raises `GpsLogError`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vehicle.nmea import Fix, GpsLogError


def number(value: Any) -> float | None:
    """A finite float from a JSON value, or None (bools, strings, NaN and huge ints are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def gpsd_time(value: Any) -> float | None:
    """gpsd's TPV time: ISO 8601 (gpsd >= 3.10) or POSIX seconds (older)."""
    if isinstance(value, str):
        try:
            t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.timezone.utc)
        return t.timestamp()
    return number(value)


def fix_from_tpv(tpv: Any, hdop: float | None = None, received_mono: float | None = None) -> Fix | None:
    """A gpsd TPV object as a Fix; None when it has no time, or claims a fix without a usable position.

    Args:
        tpv: the decoded TPV object (anything else gives None).
        hdop: HDOP from the matching SKY report, if any.
        received_mono: `time.monotonic()` when the report arrived (live only).
    """
    if not isinstance(tpv, dict) or tpv.get("class", "TPV") != "TPV":
        return None
    t = gpsd_time(tpv.get("time"))
    mode = number(tpv.get("mode"))
    if t is None:
        return None
    mode_i = int(mode) if mode is not None and mode in (0, 1, 2, 3) else 0
    if mode_i < 2:
        return Fix(t, math.nan, math.nan, None, None, None, mode_i, None, received_mono)  # no fix: no DOP
    lat, lon = number(tpv.get("lat")), number(tpv.get("lon"))
    if lat is None or lon is None or abs(lat) > 90 or abs(lon) > 180:
        return None
    alt = number(tpv.get("altMSL"))
    alt = number(tpv.get("alt")) if alt is None else alt
    speed, track = number(tpv.get("speed")), number(tpv.get("track"))
    track = None if track is None or not 0 <= track <= 360 else track % 360.0
    return Fix(t, lat, lon, alt, speed, track, mode_i, hdop, received_mono)


class GpsdJsonLog(Iterator[Fix]):
    """Iterator over the TPV reports of a `gpspipe -w` log, with `counters`; use `read_gpsd_json`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.counters = dict.fromkeys(("lines", "junk", "tpv", "sky", "bad_tpv", "other"), 0)
        try:
            size = self.path.stat().st_size
            if not self.path.is_file():
                raise GpsLogError("not a file", path=path)
        except OSError as exc:
            raise GpsLogError(f"cannot read GPS log: {exc.strerror or exc}", path=path) from None
        if size == 0:
            raise GpsLogError("empty GPS log", path=path, line=0)
        self._hdop: float | None = None  # from the latest SKY
        self._pending: dict | None = None  # the TPV not yet yielded, and its HDOP
        self._pending_hdop: float | None = None
        self._gen = self._fixes()

    def __iter__(self) -> GpsdJsonLog:
        return self

    def __next__(self) -> Fix:
        return next(self._gen)

    def _fixes(self) -> Iterator[Fix]:
        c = self.counters
        try:
            with self.path.open("rb") as f:
                for raw in f:
                    c["lines"] += 1
                    obj = json_object(raw)
                    if obj is None:
                        c["junk"] += 1
                    elif obj.get("class") == "POLL":  # a logged ?POLL answer carries its TPV and SKY lists
                        sky, tpv = last_item(obj.get("sky")), last_item(obj.get("tpv"))
                        if isinstance(tpv, dict):
                            yield from self._take(tpv)
                        if isinstance(sky, dict) and isinstance(tpv, dict):
                            yield from self._take({**sky, "time": tpv.get("time")})
                    else:
                        yield from self._take(obj)
        except OSError as exc:
            raise GpsLogError(f"cannot read GPS log: {exc.strerror or exc}", path=self.path, line=c["lines"]) from None
        yield from self._emit()
        if c["tpv"] == 0:
            raise GpsLogError(f"no gpsd TPV report in {c['lines']} lines", path=self.path, line=c["lines"])

    def _take(self, obj: dict) -> Iterator[Fix]:
        """One report. A TPV waits for the next one: gpsd sends a cycle's SKY before or after its TPV, and
        several TPVs for one epoch (merged here, later keys winning)."""
        c, cls = self.counters, obj.get("class")
        if cls == "SKY":
            c["sky"] += 1
            if "hdop" in obj:
                self._hdop = number(obj.get("hdop"))
                sky_time = gpsd_time(obj.get("time"))
                if self._pending is not None and sky_time in (None, gpsd_time(self._pending.get("time"))):
                    self._pending_hdop = self._hdop
        elif cls == "TPV":
            c["tpv"] += 1
            if self._pending is not None and obj.get("time") == self._pending.get("time") is not None:
                self._pending = {**self._pending, **obj}
                return
            yield from self._emit()
            self._pending, self._pending_hdop = obj, self._hdop
        else:
            c["other"] += 1

    def _emit(self) -> Iterator[Fix]:
        if self._pending is None:
            return
        fix = fix_from_tpv(self._pending, self._pending_hdop)
        self._pending = None
        if fix is None:
            self.counters["bad_tpv"] += 1
        else:
            yield fix


def json_object(raw: bytes) -> dict | None:
    """One line as a JSON object, or None for anything else (junk, NMEA, truncated JSON)."""
    text = raw.strip()
    if not text.startswith(b"{"):
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return obj if isinstance(obj, dict) else None


def last_item(items: Any) -> Any:
    """The last element of a JSON list, or None."""
    return items[-1] if isinstance(items, list) and items else None


def read_gpsd_json(path: str | Path) -> GpsdJsonLog:
    """Read a `gpspipe -w` log (TPV, with HDOP from the latest SKY) as fixes; other lines are skipped.

    Raises:
        GpsLogError: the file is unreadable or empty (at once), or holds no TPV report (at the end).
    """
    return GpsdJsonLog(path)
