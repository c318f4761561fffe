"""Rules on a real recording: the GoPro walk past a car park, with the converted Yolo-Fastest COCO model.

A first replay runs the real object model (and saves its detections); the parked cars' ground positions are then
worked out here, independently of the rule engine, from those detections, the drive's GPS and its calibration,
and a no-parking zone is drawn over them. Later replays reuse the saved detections.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, converted_coco_model, shared_path
from vehicle.app import ReplayOptions, replay
from vehicle.config import Config
from vehicle.dedup import distance_m
from vehicle.detection_log import read_detection_log
from vehicle.detector import file_sha256
from vehicle.geometry import CameraCalibration, enu_to_wgs84, locate, wgs84_to_enu
from vehicle.gps import load_track

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A walk is slow (~1.2 m/s, ~12 m in 10.5 s): the car-speed default of 15 m of travel would never be reached.
WALK_RULES = "min_travel_m = 5.0\nstationary_radius_m = 3.0\n"
DEDUP_RADIUS_M = 4.0  # illegal_parking's radius_m in models/categories.yaml


def _models() -> tuple[Path, Path]:
    # The object model: the XL one; the small one stands in for the 13-category model (its COCO classes map to
    # no category, so it adds nothing but keeps the run cheap).
    return converted_coco_model("yolo-fastest-1.1"), converted_coco_model("yolo-fastest-1.1-xl")


def _config(path: Path, models: tuple[Path, Path], rules: str) -> Path:
    main, obj = models
    path.write_text(
        f'data_dir = "{path.parent / "data"}"\n'
        f'[detector]\nmodel_file = "{main}"\nproviders = ["cpu"]\n'
        f'[object_detector]\nenabled = true\nmodel_file = "{obj}"\nproviders = ["cpu"]\n'
        f"[mqtt]\nenabled = false\n[rules]\n{WALK_RULES}{rules}")
    return path


def _replay(root: Path, name: str, drive: Path, cfg: Path, detections: Path | None = None,
            save: Path | None = None, state: Path | None = None) -> list[dict]:
    out = root / f"{name}.jsonl"
    replay(ReplayOptions(drive, cfg, out=str(out), detections=detections, save_detections=save, no_mqtt=True,
                         state_dir=state or root / f"state-{name}"))
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def walk(tmp_path_factory) -> dict:
    """The drive built from ../shared, one replay with the real model, and its saved detections."""
    models = _models()
    shared_path("drives", "gopro-max-walk", "video.mp4")
    root = tmp_path_factory.mktemp("rules-gopro")
    spec = importlib.util.spec_from_file_location("make_sample_drives", REPO_ROOT / "scripts" / "make_sample_drives.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    drive = make.make_gopro(root / "drives")
    detections = root / "detections.jsonl"
    events = _replay(root, "model", drive, _config(root / "model.toml", models, ""), save=detections)
    return {"root": root, "drive": drive, "models": models, "detections": detections, "no_zone_events": events}


def _car_ground_points(walk: dict) -> np.ndarray:
    """(lat, lon) of every confident car box cast onto the ground from the walk's own GPS and calibration."""
    drive = walk["drive"]
    calib = CameraCalibration.load(drive / "calibration.toml")
    g = Config().gps
    track = load_track(drive / "gps.nmea", max_fix_age_s=g.max_fix_age_s, stopped_speed_mps=g.stopped_speed_mps,
                       max_gap_s=g.max_interpolation_gap_s)
    _, frames = read_detection_log(walk["detections"])
    points = []
    for fd in frames:
        boxes = [b for b in fd.boxes if b.object_class in ("car", "truck", "bus") and b.score >= 0.5]
        pose = track.pose_at(fd.time_utc)
        if not boxes or pose is None or not pose.valid:
            continue
        uv = np.array([b.foot_px for b in boxes], dtype=np.float64)
        for gp in locate(calib.for_image_size(*fd.size_wh), uv, pose.lat_deg, pose.lon_deg, pose.heading_deg,
                         1.0, 25.0):
            if gp.ok:
                points.append((gp.lat_deg, gp.lon_deg))
    return np.array(points)


def _zone_over(points: np.ndarray, margin_m: float, path: Path) -> tuple[float, float, float, float]:
    """Write a rectangular no-parking zone around ``points`` (plus a margin); returns its lat/lon bounds."""
    lat0, lon0 = points[:, 0].mean(), points[:, 1].mean()
    e, n = wgs84_to_enu(lat0, lon0, points[:, 0], points[:, 1])
    lats, lons = enu_to_wgs84(lat0, lon0, np.array([e.min() - margin_m, e.max() + margin_m]),
                              np.array([n.min() - margin_m, n.max() + margin_m]))
    (s, w), (nn, ee) = (lats[0], lons[0]), (lats[1], lons[1])
    ring = [[w, s], [ee, s], [ee, nn], [w, nn], [w, s]]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"id": "car-park", "kind": "no_parking"},
        "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    return float(s), float(w), float(nn), float(ee)


def test_parked_cars_in_a_no_parking_zone_become_events_once(walk):
    assert walk["no_zone_events"] == []  # the real model's run, no zone and fallback "none": nothing
    root, drive, models = walk["root"], walk["drive"], walk["models"]
    points = _car_ground_points(walk)
    assert len(points) > 50, "the model should see the parked cars in many frames"
    south, west, north, east = _zone_over(points, 2.0, root / "car-park.geojson")
    zone_rules = '[[rules.zones]]\nfile = "car-park.geojson"\n'
    cfg = _config(root / "zone.toml", models, zone_rules)
    events = _replay(root, "zone", drive, cfg, detections=walk["detections"])
    assert len(events) >= 1
    main_sha, obj_sha = file_sha256(models[0]), file_sha256(models[1])
    header, _ = read_detection_log(walk["detections"])
    assert header["sha256"] == main_sha and header["object_model"]["sha256"] == obj_sha
    for e in events:
        p = e["properties"]
        assert p["model"]["sha256"] == obj_sha  # the model that saw the car, not the 13-category one
        lon, lat = e["geometry"]["coordinates"]
        assert p["category"] == "illegal_parking" and p["mode"] == "enforce"
        assert p["rule"]["rule"] == "stationary_in_no_parking_zone" and p["rule"]["zone_id"] == "car-park"
        assert p["rule"]["distance_travelled_m"] >= 5.0
        assert south <= lat <= north and west <= lon <= east
    # Each car once: no two events closer than the category's dedup radius, and no event id twice.
    for a, b in itertools.combinations(events, 2):
        (lon1, lat1), (lon2, lat2) = a["geometry"]["coordinates"], b["geometry"]["coordinates"]
        assert distance_m(lat1, lon1, lat2, lon2) > DEDUP_RADIUS_M
    assert len({e["id"] for e in events}) == len(events)
    # Warning mode: the same events, flagged.
    warn = _config(root / "warn.toml", models, 'warning_categories = ["illegal_parking"]\n' + zone_rules)
    warned = _replay(root, "warn", drive, warn, detections=walk["detections"])
    assert len(warned) == len(events) and {e["properties"]["mode"] for e in warned} == {"warning"}


def test_without_the_zone_no_car_is_reported(walk):
    cfg = _config(walk["root"] / "none.toml", walk["models"], "")
    assert _replay(walk["root"], "none", walk["drive"], cfg, detections=walk["detections"]) == []
