"""The simulator's files: the route it drives (a real GPS log) in, and the drive folder's files out.

`vehicle.simulate` computes; this module reads the road and formats the GPS log (NMEA), the cached
detections and the ground truth (GeoJSON). The NMEA log has RMC + GGA + GSA per epoch (3D fix,
HDOP 0.9) with positions to 1e-6 arc minutes (~2 mm), so the log adds no error of its own.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vehicle.detection_log import FORMAT as DETECTIONS_FORMAT
from vehicle.geometry import wgs84_to_enu
from vehicle.gps import read_nmea

KNOTS_PER_MPS = 3600.0 / 1852.0
ROUTE_STEP_M = 1.0  # the road is resampled at this spacing


class SimulationError(ValueError):
    """Bad simulator input; the message names the file or setting."""


@dataclass(frozen=True)
class Route:
    """A road centre line in local metres about (lat0, lon0), resampled every metre."""

    lat0_deg: float
    lon0_deg: float
    east_m: np.ndarray
    north_m: np.ndarray
    source: str

    @classmethod
    def from_enu(cls, lat0_deg: float, lon0_deg: float, east_m: np.ndarray, north_m: np.ndarray,
                 source: str = "") -> Route:
        """A road from any polyline in local metres about (lat0, lon0): resampled every metre."""
        e, n = _resample(np.asarray(east_m, float), np.asarray(north_m, float), ROUTE_STEP_M)
        if e.size < 3:
            raise SimulationError(f"{source or 'route'}: shorter than 3 m")
        return cls(float(lat0_deg), float(lon0_deg), e, n, source)

    @property
    def length_m(self) -> float:
        """Length along the line."""
        return float(np.hypot(np.diff(self.east_m), np.diff(self.north_m)).sum())


def load_route(path: str | Path, smooth_m: float = 15.0) -> Route:
    """A real GPS log as a road: fixes in time order, duplicates dropped, smoothed, resampled every metre.

    Args:
        path: an NMEA log.
        smooth_m: width of the moving average along the line that removes the log's own GPS jitter.

    Raises:
        SimulationError: fewer than two distinct positions.
    """
    fixes = [f for f in read_nmea(path) if f.has_position]
    fixes.sort(key=lambda f: f.time_utc)  # real logs may step back in time once
    if len(fixes) < 2:
        raise SimulationError(f"{path}: fewer than two position fixes: not a route")
    lat = np.array([f.lat_deg for f in fixes])
    lon = np.array([f.lon_deg for f in fixes])
    e, n = wgs84_to_enu(lat[0], lon[0], lat, lon)
    step = np.hypot(np.diff(e), np.diff(n))
    keep = np.concatenate([[True], step > 0.5])  # a stopped car logs one point many times
    e, n = e[keep], n[keep]
    e, n = _resample(e, n, ROUTE_STEP_M)
    if e.size < 3:
        raise SimulationError(f"{path}: the route is shorter than 3 m")
    k = max(1, round(smooth_m / ROUTE_STEP_M))
    if k > 1 and e.size > 2 * k:
        kernel = np.ones(k) / k
        pad = k // 2
        e = np.convolve(np.pad(e, pad, mode="edge"), kernel, mode="same")[pad:-pad or None]
        n = np.convolve(np.pad(n, pad, mode="edge"), kernel, mode="same")[pad:-pad or None]
        e, n = _resample(e, n, ROUTE_STEP_M)
    return Route(float(lat[0]), float(lon[0]), e, n, str(path))


def _resample(e: np.ndarray, n: np.ndarray, step_m: float) -> tuple[np.ndarray, np.ndarray]:
    s = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(e), np.diff(n)))])
    grid = np.arange(0.0, s[-1] + 1e-9, step_m)
    return np.interp(grid, s, e), np.interp(grid, s, n)





def _nmea_sentence(body: str) -> str:
    check = 0
    for ch in body.encode("ascii"):
        check ^= ch
    return f"${body}*{check:02X}"


def _nmea_angle(value: float, deg_digits: int, pos: str, neg: str) -> tuple[str, str]:
    v = abs(value)
    deg = int(v)
    minutes = (v - deg) * 60.0
    if round(minutes, 6) >= 60.0:
        deg, minutes = deg + 1, 0.0
    return f"{deg:0{deg_digits}d}{minutes:09.6f}", pos if value >= 0 else neg


def write_nmea(path: Path, t_utc: np.ndarray, lat_deg: np.ndarray, lon_deg: np.ndarray, speed_mps: np.ndarray,
               course_deg: np.ndarray) -> None:
    """Write one RMC + GGA + GSA epoch per fix (3D fix, HDOP 0.9); times to 1/100 s, as receivers log them."""
    lines = []
    for t, la, lo, v, c in zip(t_utc, lat_deg, lon_deg, speed_mps, course_deg, strict=True):
        st = time.gmtime(math.floor(t))
        cs = round((t - math.floor(t)) * 100)
        if cs == 100:
            st, cs = time.gmtime(math.floor(t) + 1), 0
        hms = f"{st.tm_hour:02d}{st.tm_min:02d}{st.tm_sec:02d}.{cs:02d}"
        dmy = f"{st.tm_mday:02d}{st.tm_mon:02d}{st.tm_year % 100:02d}"
        lat_s, ns = _nmea_angle(float(la), 2, "N", "S")
        lon_s, ew = _nmea_angle(float(lo), 3, "E", "W")
        lines.append(_nmea_sentence(f"GPRMC,{hms},A,{lat_s},{ns},{lon_s},{ew},{v * KNOTS_PER_MPS:.2f},{c:.1f},"
                                    f"{dmy},,,A"))
        lines.append(_nmea_sentence(f"GPGGA,{hms},{lat_s},{ns},{lon_s},{ew},1,09,0.9,520.0,M,47.0,M,,"))
        lines.append(_nmea_sentence("GPGSA,A,3,01,03,06,09,12,17,19,22,28,,,,1.6,0.9,1.3"))
    path.write_text("\r\n".join(lines) + "\r\n", encoding="ascii")


def write_detections(path: Path, frame: np.ndarray, xyxy: np.ndarray, score: np.ndarray, category: list[str],
                     frames: int, t0_utc: float, fps: float, size_wh: tuple[int, int]) -> None:
    """Write a cached-detections file (`vehicle.detection_log` format) with a line for every frame.

    Args:
        path: the file.
        frame, xyxy, score, category: the boxes (any order), parallel.
        frames: frames in the drive (frames without boxes get an empty line too).
        t0_utc: POSIX time of frame 0.
        fps: frame rate.
        size_wh: image size.
    """
    order = np.argsort(frame, kind="stable")
    fr = frame[order]
    boxes = np.round(xyxy[order], 2).tolist()
    scores = np.round(score[order], 4).tolist()
    cats = [category[i] for i in order]
    bounds = np.searchsorted(fr, np.arange(frames + 1))
    size = list(size_wh)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"header": {"format": DETECTIONS_FORMAT, "version": 1,
                                        "model": {"name": "simulated", "sha256": "0" * 64}}}) + "\n")
        for f in range(frames):
            dets = [{"category": cats[i], "score": scores[i], "xyxy": boxes[i]}
                    for i in range(bounds[f], bounds[f + 1])]
            fh.write(json.dumps({"frame": f, "time_utc": round(t0_utc + f / fps, 6), "size_wh": size,
                                 "detections": dets}) + "\n")


def write_truth(path: Path, lat_deg: np.ndarray, lon_deg: np.ndarray, properties: list[dict]) -> None:
    """Write the real objects as a GeoJSON FeatureCollection of Points (ids ``obj-00000``...)."""
    feats = []
    for i, props in enumerate(properties):
        oid = f"obj-{i:05d}"
        feats.append({"type": "Feature", "id": oid,
                      "geometry": {"type": "Point",
                                   "coordinates": [round(float(lon_deg[i]), 8), round(float(lat_deg[i]), 8)]},
                      "properties": {"object_id": oid, **props}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}) + "\n", encoding="utf-8")
