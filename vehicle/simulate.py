"""Drive simulator: a drive folder with known truth, for judging location and deduplication end to end.

A real GPS track is the road. Objects of given categories stand beside it (seeded random lateral offsets, left
or right). The car drives the road (repeated back and forth to reach a length, with optional stop-and-go); at
each frame every object inside the camera's view and range is projected through the calibration with
`vehicle_to_pixels`: the box's bottom centre is the projection of the object's ground point, its size comes
from the object's width and height. Noise is added to what the pipeline sees only: GPS error (first-order
Gauss-Markov per axis) on the logged fixes, box jitter, misses, occlusion, false positives. The truth keeps
the true positions.

Output (a drive folder `vehicle.drive.open_drive` reads, with no video)::

    manifest.json  gps.nmea  calibration.toml  detections.jsonl  truth.geojson  simulation.json

(route and formats: `vehicle.simulate_io`; truth features carry ``category``, ``lateral_m`` (+ right of the route's
first direction), ``frames_in_view`` and ``frames_detected``).

Speed: visibility is found per frame through a uniform grid of objects (cell = detection range) and projected
in chunks of frames with numpy, so a 50 km drive with 2,000 objects takes well under a minute.
"""

from __future__ import annotations

import calendar
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vehicle.drive import write_manifest
from vehicle.geometry import CameraCalibration, enu_to_wgs84, vehicle_to_pixels
from vehicle.simulate_io import (
    ROUTE_STEP_M,
    Route,
    SimulationError,
    load_route,
    write_detections,
    write_nmea,
    write_truth,
)

#: Apparent width and height in metres of one object of each category (a billboard facing the camera).
#: Flat things (manholes, potholes) get the height their near-to-far extent shows at a low viewing angle.
OBJECT_SIZE_M: dict[str, tuple[float, float]] = {
    "street_vending": (2.0, 1.3),
    "out_of_store_business": (2.0, 1.2),
    "street_umbrella": (2.5, 2.2),
    "piled_materials": (2.0, 1.0),
    "exposed_garbage": (1.0, 0.6),
    "overflowing_bin": (0.8, 1.2),
    "bulky_waste": (1.8, 1.0),
    "street_drying": (2.0, 1.5),
    "outdoor_advertising": (2.0, 1.5),
    "illegal_parking": (4.5, 1.5),
    "disorderly_bikes": (2.0, 1.0),
    "damaged_manhole": (0.8, 0.25),
    "road_damage": (1.2, 0.25),
}
DEFAULT_SIZE_M = (1.0, 1.0)
_FRAME_CHUNK = 4000  # frames projected together


@dataclass(frozen=True)
class SimSettings:
    """What to simulate. Distances in metres, times in seconds, probabilities in [0, 1].

    Attributes:
        length_km: drive this far (the route is driven back and forth as often as needed); None: one pass.
        fps: camera frames per second.
        speed_kmh: cruising speed.
        stop_every_m: mean distance between stops (stop-and-go); 0: no stops except turnarounds.
        stop_s: shortest and longest stop.
        accel_mps2: acceleration and braking.
        gps_hz: GPS fixes per second in the log.
        gps_sigma_m: standard deviation of the GPS position error per axis (east and north).
        gps_corr_s: correlation time of that error (first-order Gauss-Markov); 0: independent per fix.
        heading_sigma_deg: noise of the logged course over ground while moving.
        objects: number of real objects to place.
        categories: categories to draw objects from (uniformly).
        lateral_m: nearest and farthest lateral offset of an object from the road centre line.
        min_spacing_m: objects of one category are at least this far apart (so the truth is unambiguous).
        min_range_m: the detector sees objects from this range from the camera...
        max_range_m: ...to this one.
        min_box_px: boxes smaller than this (height) are not detected.
        box_jitter: standard deviation of box centre, width and height noise, as a fraction of the box size.
        miss_prob: probability that a visible object is not detected in a frame.
        fp_fraction: false boxes as a fraction of all boxes (placed at random frames, ground pixels).
        occlusion_prob: probability that an object is hidden over one 5-15 m band of range.
        score_mean: mean detector score of true boxes (standard deviation 0.12, clipped to [0.3, 0.99]).
        start_utc: POSIX time of the first frame.
        seed: random seed; the same settings and seed give the same drive.
    """

    length_km: float | None = None
    fps: float = 10.0
    speed_kmh: float = 40.0
    stop_every_m: float = 0.0
    stop_s: tuple[float, float] = (5.0, 30.0)
    accel_mps2: float = 1.5
    gps_hz: float = 5.0
    gps_sigma_m: float = 0.0
    gps_corr_s: float = 30.0
    heading_sigma_deg: float = 0.5
    objects: int = 200
    categories: tuple[str, ...] = ("exposed_garbage", "overflowing_bin", "bulky_waste", "piled_materials",
                                   "road_damage", "street_vending", "outdoor_advertising")
    lateral_m: tuple[float, float] = (3.0, 15.0)
    min_spacing_m: float = 25.0
    min_range_m: float = 2.0
    max_range_m: float = 35.0
    min_box_px: float = 8.0
    box_jitter: float = 0.0
    miss_prob: float = 0.0
    fp_fraction: float = 0.0
    occlusion_prob: float = 0.0
    score_mean: float = 0.72
    start_utc: float = field(default_factory=lambda: float(calendar.timegm((2026, 6, 1, 8, 0, 0))))
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("fps", "speed_kmh", "accel_mps2", "gps_hz", "max_range_m")
        for name in positive:
            if not getattr(self, name) > 0:
                raise SimulationError(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in ("miss_prob", "occlusion_prob", "box_jitter"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SimulationError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.fp_fraction < 1.0:
            raise SimulationError(f"fp_fraction: must be in [0, 1), got {self.fp_fraction}")
        for name in ("gps_sigma_m", "gps_corr_s", "heading_sigma_deg", "stop_every_m", "min_spacing_m"):
            if not getattr(self, name) >= 0:
                raise SimulationError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.length_km is not None and not self.length_km > 0:
            raise SimulationError(f"length_km: must be > 0, got {self.length_km}")
        lo, hi = self.lateral_m
        if not 0 <= lo <= hi:
            raise SimulationError(f"lateral_m: need 0 <= near <= far, got {self.lateral_m}")
        if not 0 <= self.stop_s[0] <= self.stop_s[1]:
            raise SimulationError(f"stop_s: need 0 <= shortest <= longest, got {self.stop_s}")
        if self.objects < 0 or not self.categories:
            raise SimulationError("objects/categories: need objects >= 0 and at least one category")


@dataclass(frozen=True)
class SimResult:
    """What `simulate_drive` wrote and counted."""

    drive_dir: Path
    frames: int
    duration_s: float
    length_km: float
    objects: int
    true_boxes: int
    false_boxes: int
    elapsed_s: float


def _headings_deg(e: np.ndarray, n: np.ndarray, span: int = 3) -> np.ndarray:
    """Direction of travel at each sample (clockwise from north), from points ``span`` samples either side."""
    idx = np.arange(e.size)
    a, b = np.clip(idx - span, 0, e.size - 1), np.clip(idx + span, 0, e.size - 1)
    return np.degrees(np.arctan2(e[b] - e[a], n[b] - n[a])) % 360.0


# -- driving ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Path:
    """The driven path (passes of the route joined), one sample per metre, with time at each sample."""

    east_m: np.ndarray
    north_m: np.ndarray
    heading_deg: np.ndarray
    knot_t: np.ndarray  # distance along the path (knot_s, m) against time (knot_t, s): piecewise linear
    knot_s: np.ndarray
    passes: int

    @property
    def duration_s(self) -> float:
        """Time from the start to the end of the drive."""
        return float(self.knot_t[-1])


def _drive(route: Route, s: SimSettings, rng: np.random.Generator) -> _Path:
    base_len = route.east_m.size
    want = base_len if s.length_km is None else round(s.length_km * 1000.0 / ROUTE_STEP_M) + 1
    es, ns, hs, turns = [], [], [], []
    total, forward = 0, True
    while total < want:
        e = route.east_m if forward else route.east_m[::-1]
        n = route.north_m if forward else route.north_m[::-1]
        if total:
            e, n = e[1:], n[1:]  # the turnaround point is shared
            turns.append(total - 1)
        take = min(e.size, want - total)
        es.append(e[:take])
        ns.append(n[:take])
        hs.append(_headings_deg(e, n)[:take])
        total += take
        forward = not forward
    east, north, heading = np.concatenate(es), np.concatenate(ns), np.concatenate(hs)
    v = s.speed_kmh / 3.6
    # stops: turnarounds, the end, and (stop-and-go) random ones with exponential spacing
    stops = [0, *turns, east.size - 1]
    if s.stop_every_m > 0:
        pos = 0.0
        while True:
            pos += rng.exponential(s.stop_every_m)
            if pos >= east.size - 1:
                break
            stops.append(int(pos / ROUTE_STEP_M))
    stops_arr = np.unique(np.array(stops, dtype=np.int64))
    idx = np.arange(east.size)
    nearest = np.searchsorted(stops_arr, idx)
    prev_stop = stops_arr[np.clip(nearest - 1, 0, stops_arr.size - 1)]
    next_stop = stops_arr[np.clip(nearest, 0, stops_arr.size - 1)]
    gap = np.minimum(np.abs(idx - prev_stop), np.abs(next_stop - idx)) * ROUTE_STEP_M
    speed = np.minimum(v, np.sqrt(2.0 * s.accel_mps2 * gap))
    # time to cross each 1 m step at the mean of its end speeds (>= a crawl, so a stop point is reachable)
    mean_v = np.maximum((speed[1:] + speed[:-1]) / 2.0, 0.5 * math.sqrt(2.0 * s.accel_mps2 * ROUTE_STEP_M))
    dt = ROUTE_STEP_M / mean_v
    dwell = np.zeros(east.size)
    inner = stops_arr[(stops_arr > 0) & (stops_arr < east.size - 1)]
    dwell[inner] = rng.uniform(s.stop_s[0], s.stop_s[1], inner.size)
    arrive = np.concatenate([[0.0], np.cumsum(dt + dwell[:-1])])
    # distance(t) is piecewise linear with a flat part for each stop: knots at arrival and departure
    knot_t = np.column_stack([arrive, arrive + dwell]).ravel()
    knot_s = np.repeat(idx.astype(np.float64) * ROUTE_STEP_M, 2)
    return _Path(east, north, heading, knot_t, knot_s, len(es))


def _pose_at(path: _Path, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """True east, north (m), heading (deg) and speed (m/s) of the GPS antenna at times ``t`` (s from start)."""
    dist = np.interp(t, path.knot_t, path.knot_s)
    grid = np.arange(path.east_m.size) * ROUTE_STEP_M
    east, north = np.interp(dist, grid, path.east_m), np.interp(dist, grid, path.north_m)
    h = np.radians(path.heading_deg)
    hx, hy = np.interp(dist, grid, np.sin(h)), np.interp(dist, grid, np.cos(h))
    heading = np.degrees(np.arctan2(hx, hy)) % 360.0
    dt = 0.05
    speed = (np.interp(t + dt, path.knot_t, path.knot_s) - np.interp(t - dt, path.knot_t, path.knot_s)) / (2 * dt)
    return east, north, heading, np.maximum(speed, 0.0)


# -- objects ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Objects:
    """The real objects, as parallel arrays."""

    east_m: np.ndarray
    north_m: np.ndarray
    category: np.ndarray  # index into SimSettings.categories
    lateral_m: np.ndarray  # + = right of the route's first direction
    width_m: np.ndarray
    height_m: np.ndarray
    occluded_from_m: np.ndarray  # hidden while the range is in [from, to) (empty band: never)
    occluded_to_m: np.ndarray


def _place_objects(route: Route, s: SimSettings, rng: np.random.Generator) -> _Objects:
    """Objects beside the route: uniform along it (not in its first and last 30 m), left or right."""
    e, n = route.east_m, route.north_m
    heading = np.radians(_headings_deg(e, n))
    length = e.size
    road_cell = max(s.lateral_m[0], 5.0)
    road: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(np.floor(e / road_cell).astype(int), np.floor(n / road_cell).astype(int),
                                strict=True)):
        road.setdefault(key, []).append(i)
    spacing_cell = max(s.min_spacing_m, 1.0)
    placed: dict[tuple[int, int, int], list[tuple[float, float]]] = {}
    out: list[tuple[float, float, int, float]] = []
    margin = min(30, length // 4)
    attempts = 0
    while len(out) < s.objects:
        attempts += 1
        if attempts > 50 * s.objects + 1000:
            raise SimulationError(f"objects: cannot place {s.objects} objects {s.min_spacing_m} m apart per category "
                                  f"beside a {route.length_m / 1000:.1f} km route (placed {len(out)})")
        i = int(rng.integers(margin, length - margin))
        lat_off = float(rng.uniform(*s.lateral_m)) * (1.0 if rng.random() < 0.5 else -1.0)
        oe = e[i] + lat_off * math.cos(heading[i])  # right of heading h is (cos h, -sin h) in east/north
        on = n[i] - lat_off * math.sin(heading[i])
        # never on another stretch of the same road (a loop or a crossing)
        cx, cy = math.floor(oe / road_cell), math.floor(on / road_cell)
        near = [j for dx in (-1, 0, 1) for dy in (-1, 0, 1) for j in road.get((cx + dx, cy + dy), [])]
        if near and np.min(np.hypot(e[near] - oe, n[near] - on)) < s.lateral_m[0] - 0.5:
            continue
        cat = int(rng.integers(len(s.categories)))
        gx, gy = math.floor(oe / spacing_cell), math.floor(on / spacing_cell)
        if any(math.hypot(pe - oe, pn - on) < s.min_spacing_m
               for dx in (-1, 0, 1) for dy in (-1, 0, 1) for pe, pn in placed.get((cat, gx + dx, gy + dy), [])):
            continue
        placed.setdefault((cat, gx, gy), []).append((oe, on))
        out.append((oe, on, cat, lat_off))
    arr = np.array(out, dtype=np.float64).reshape(-1, 4)
    cats = arr[:, 2].astype(np.int64)
    sizes = np.array([OBJECT_SIZE_M.get(c, DEFAULT_SIZE_M) for c in s.categories]).reshape(-1, 2)
    k = arr.shape[0]
    occluded = rng.random(k) < s.occlusion_prob
    band_from = rng.uniform(s.min_range_m, max(s.min_range_m, s.max_range_m - 5.0), k)
    band_to = np.where(occluded, band_from + rng.uniform(5.0, 15.0, k), band_from)
    return _Objects(arr[:, 0], arr[:, 1], cats, arr[:, 3], sizes[cats, 0] if k else np.zeros(0),
                    sizes[cats, 1] if k else np.zeros(0), band_from, band_to)


# -- seeing ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Boxes:
    """Boxes of all frames, as parallel arrays sorted by frame."""

    frame: np.ndarray
    xyxy: np.ndarray
    score: np.ndarray
    category: np.ndarray
    object_index: np.ndarray  # -1 for false positives


def _visible_pairs(objs: _Objects, cam_e: np.ndarray, cam_n: np.ndarray, max_range_m: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(frame, object) pairs within ``max_range_m`` of the antenna, found through a uniform grid of objects."""
    cell = max_range_m + 5.0  # + lever arm margin
    if objs.east_m.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ox, oy = np.floor(objs.east_m / cell).astype(np.int64), np.floor(objs.north_m / cell).astype(np.int64)
    order = np.lexsort((oy, ox))
    keys = ox[order] * 1_000_003 + oy[order]
    uniq, start = np.unique(keys, return_index=True)
    end = np.append(start[1:], keys.size)
    fx, fy = np.floor(cam_e / cell).astype(np.int64), np.floor(cam_n / cell).astype(np.int64)
    frames_out, objs_out = [], []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            k = (fx + dx) * 1_000_003 + (fy + dy)
            pos = np.searchsorted(uniq, k)
            hit = (pos < uniq.size) & (uniq[np.minimum(pos, uniq.size - 1)] == k)
            fr = np.flatnonzero(hit)
            lo, hi = start[pos[fr]], end[pos[fr]]
            counts = hi - lo
            frames_out.append(np.repeat(fr, counts))
            # object indices lo..hi-1 for each frame, without a Python loop
            offs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            objs_out.append(order[np.repeat(lo, counts) + offs])
    return np.concatenate(frames_out), np.concatenate(objs_out)


def _true_boxes(objs: _Objects, calib: CameraCalibration, cam_e: np.ndarray, cam_n: np.ndarray,
                heading_deg: np.ndarray, s: SimSettings, rng: np.random.Generator,
                first_frame: int) -> tuple[_Boxes, np.ndarray]:
    """Boxes of the real objects seen in a chunk of frames, and how often each object was in view."""
    fr, ob = _visible_pairs(objs, cam_e, cam_n, s.max_range_m + 2.0)
    h = np.radians(heading_deg[fr])
    de, dn = objs.east_m[ob] - cam_e[fr], objs.north_m[ob] - cam_n[fr]
    fwd, right = de * np.sin(h) + dn * np.cos(h), de * np.cos(h) - dn * np.sin(h)
    arm = calib.lever_arm_m
    rng_m = np.hypot(fwd - arm[0], right - arm[1])  # horizontal range from the camera, as the pipeline measures
    near = (rng_m >= s.min_range_m) & (rng_m <= s.max_range_m) & (fwd - arm[0] > 0)
    fr, ob, fwd, right, rng_m = fr[near], ob[near], fwd[near], right[near], rng_m[near]
    uv, inside = vehicle_to_pixels(calib, fwd, right)
    pts_frd = np.column_stack([fwd - arm[0], right - arm[1], np.full(fwd.size, calib.height_m)])
    depth = (pts_frd @ calib.camera_to_vehicle_rotation())[:, 2]
    fx, fy = calib.camera_matrix[0, 0], calib.camera_matrix[1, 1]
    w_px = fx * objs.width_m[ob] / np.maximum(depth, 1e-6)
    h_px = fy * objs.height_m[ob] / np.maximum(depth, 1e-6)
    seen = inside & (h_px >= s.min_box_px)
    in_view = np.bincount(ob[seen], minlength=objs.east_m.size)
    hidden = (rng_m >= objs.occluded_from_m[ob]) & (rng_m < objs.occluded_to_m[ob])
    detected = seen & ~hidden & (rng.random(fr.size) >= s.miss_prob)
    fr, ob, uv, w_px, h_px = fr[detected], ob[detected], uv[detected], w_px[detected], h_px[detected]
    j = s.box_jitter
    cx = uv[:, 0] + rng.normal(0.0, j, fr.size) * w_px
    foot = uv[:, 1] + rng.normal(0.0, j, fr.size) * h_px
    w_px = w_px * np.maximum(1.0 + rng.normal(0.0, j, fr.size), 0.2)
    h_px = h_px * np.maximum(1.0 + rng.normal(0.0, j, fr.size), 0.2)
    xyxy = np.column_stack([cx - w_px / 2, foot - h_px, cx + w_px / 2, foot])
    width, height = calib.image_size_wh
    xyxy = np.clip(xyxy, 0.0, [width - 1, height - 1, width - 1, height - 1])
    score = np.clip(rng.normal(s.score_mean, 0.12, fr.size), 0.3, 0.99)
    return _Boxes(fr + first_frame, xyxy, score, objs.category[ob], ob), in_view


def _false_boxes(count: int, frames: int, calib: CameraCalibration, s: SimSettings,
                 rng: np.random.Generator) -> _Boxes:
    """``count`` boxes at random frames whose bottom centre lies on the ground within range."""
    width, height = calib.image_size_wh
    fwd = rng.uniform(max(s.min_range_m, 3.0), s.max_range_m, count * 3) + calib.lever_arm_m[0]
    right = rng.uniform(-15.0, 15.0, count * 3)
    uv, inside = vehicle_to_pixels(calib, fwd, right)
    uv = uv[inside][:count]
    while uv.shape[0] < count:  # a very narrow camera: fall back to the lower image half
        extra = np.column_stack([rng.uniform(0, width - 1, count), rng.uniform(height / 2, height - 1, count)])
        uv = np.vstack([uv, extra])[:count]
    h_px = rng.uniform(s.min_box_px, max(s.min_box_px * 4, height / 8), count)
    w_px = h_px * rng.uniform(0.5, 2.5, count)
    xyxy = np.clip(np.column_stack([uv[:, 0] - w_px / 2, uv[:, 1] - h_px, uv[:, 0] + w_px / 2, uv[:, 1]]),
                   0.0, [width - 1, height - 1, width - 1, height - 1])
    return _Boxes(rng.integers(0, frames, count), xyxy, rng.uniform(0.25, 0.7, count),
                  rng.integers(0, len(s.categories), count), np.full(count, -1, np.int64))


# -- GPS error ---------------------------------------------------------------------------------------------------


def _gps_errors(n: int, s: SimSettings, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """East and north GPS errors of ``n`` fixes: first-order Gauss-Markov, stationary sigma ``gps_sigma_m``."""
    w = rng.normal(0.0, s.gps_sigma_m, (n, 2))
    if s.gps_corr_s <= 0 or n == 0:
        return w[:, 0], w[:, 1]
    a = math.exp(-1.0 / (s.gps_hz * s.gps_corr_s))
    b = math.sqrt(1.0 - a * a)
    err = np.empty((n, 2))
    err[0] = w[0]
    for i in range(1, n):  # a plain loop: ~10^4-10^5 fixes, well under a second
        err[i] = a * err[i - 1] + b * w[i]
    return err[:, 0], err[:, 1]


def simulate_drive(route: Route, calib: CameraCalibration, settings: SimSettings, out_dir: str | Path,
                   vehicle_id: str = "sim-001", progress: bool = False) -> SimResult:
    """Simulate a drive along ``route`` seen through ``calib`` and write it as a drive folder.

    Args:
        route: the road (`load_route`).
        calib: the camera; its image size is the frames' size.
        settings: what to simulate (`SimSettings`).
        out_dir: the drive folder to write (created; files in it are replaced).
        vehicle_id: written to the manifest.
        progress: print a progress line per chunk on stderr.

    Returns:
        Counts of what was written.
    """
    started = time.monotonic()
    s = settings
    unknown = [c for c in s.categories if not c or not c.replace("_", "").isalnum()]
    if unknown:
        raise SimulationError(f"categories: bad names {unknown}")
    rng = np.random.default_rng(s.seed)
    out = Path(out_dir)
    if s.length_km is not None and s.length_km * 1000.0 < route.length_m:
        keep = round(s.length_km * 1000.0 / ROUTE_STEP_M) + 1  # objects only beside the part driven
        route = Route(route.lat0_deg, route.lon0_deg, route.east_m[:keep], route.north_m[:keep], route.source)
    path = _drive(route, s, rng)
    objs = _place_objects(route, s, rng)
    frames = math.floor(path.duration_s * s.fps) + 1
    t_frames = np.arange(frames) / s.fps
    parts: list[_Boxes] = []
    in_view = np.zeros(objs.east_m.size, np.int64)
    for c0 in range(0, frames, _FRAME_CHUNK):
        tt = t_frames[c0:c0 + _FRAME_CHUNK]
        e, n, hd, _ = _pose_at(path, tt)
        b, seen = _true_boxes(objs, calib, e, n, hd, s, rng, c0)
        parts.append(b)
        in_view += seen
        if progress:
            print(f"\rsimulate: frames {min(c0 + _FRAME_CHUNK, frames)}/{frames}", end="", file=sys.stderr,
                  flush=True)
    if progress:
        print(file=sys.stderr)
    true_count = int(sum(p.frame.size for p in parts))
    fp_count = round(true_count * s.fp_fraction / (1.0 - s.fp_fraction)) if s.fp_fraction > 0 else 0
    parts.append(_false_boxes(fp_count, frames, calib, s, rng))
    boxes = _Boxes(*(np.concatenate([getattr(p, k) for p in parts]) for k in
                     ("frame", "xyxy", "score", "category", "object_index")))
    detected = np.bincount(boxes.object_index[boxes.object_index >= 0], minlength=objs.east_m.size)

    # GPS log: the true antenna track at gps_hz, with error on the logged positions only
    t_fix = np.arange(0.0, path.duration_s + 1e-9, 1.0 / s.gps_hz)
    e, n, course, speed = _pose_at(path, t_fix)
    err_e, err_n = _gps_errors(t_fix.size, s, rng)
    lat, lon = enu_to_wgs84(route.lat0_deg, route.lon0_deg, e + err_e, n + err_n)
    course = (course + rng.normal(0.0, s.heading_sigma_deg, t_fix.size)) % 360.0
    stopped = speed < 0.3
    course[stopped] = rng.uniform(0.0, 360.0, int(stopped.sum()))  # a receiver's course at a standstill is noise
    speed_logged = np.maximum(speed + rng.normal(0.0, 0.05, t_fix.size), 0.0)
    out.mkdir(parents=True, exist_ok=True)  # only now: settings that cannot be simulated leave no folder behind
    write_nmea(out / "gps.nmea", s.start_utc + t_fix, np.atleast_1d(lat), np.atleast_1d(lon), speed_logged, course)

    calib.save(out / "calibration.toml")
    write_detections(out / "detections.jsonl", boxes.frame, boxes.xyxy, boxes.score,
                     [s.categories[c] for c in boxes.category.tolist()], frames, s.start_utc, s.fps,
                     calib.image_size_wh)
    olat, olon = enu_to_wgs84(route.lat0_deg, route.lon0_deg, objs.east_m, objs.north_m)
    props = [{"category": s.categories[int(objs.category[i])], "lateral_m": round(float(objs.lateral_m[i]), 2),
              "width_m": float(objs.width_m[i]), "height_m": float(objs.height_m[i]),
              "frames_in_view": int(in_view[i]), "frames_detected": int(detected[i])} for i in range(objs.east_m.size)]
    write_truth(out / "truth.geojson", np.atleast_1d(olat), np.atleast_1d(olon), props)
    length_km = float(path.knot_s[-1]) / 1000.0
    result = SimResult(out, frames, path.duration_s, length_km, int(objs.east_m.size), true_count, fp_count,
                       time.monotonic() - started)
    doc = {"settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()},
           "route": route.source, "passes": path.passes, "frames": frames, "duration_s": round(path.duration_s, 2),
           "length_km": round(length_km, 3), "objects": result.objects, "true_boxes": true_count,
           "false_boxes": fp_count, "elapsed_s": round(result.elapsed_s, 2)}
    (out / "simulation.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    write_manifest(out, [], "gps.nmea", "calibration.toml", vehicle_id=vehicle_id,
                   source=f"simulated by vehicle.simulate from {route.source} (seed {s.seed})")
    return result


__all__ = ["OBJECT_SIZE_M", "Route", "SimResult", "SimSettings", "SimulationError", "load_route", "simulate_drive"]
