"""The bar of issue 5, end to end: a simulated 20 km drive replayed through the REAL pipeline.

Route: the real Munich city track from ../shared (12 km), driven on and back to 20 km, so part of it is a
repeat pass. Camera: the default 1080p roof camera. Noise: GPS error sigma 2 m per axis (Gauss-Markov, 30 s
correlation, as a real receiver's error drifts), 5 % box jitter, 10 % missed detections, 2 % false boxes.
Bar: event recall >= 0.95, duplicate rate <= 2 %, median location error <= 2.5 m for objects within 25 m.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import shared_path
from vehicle.evaluate import eval_events
from vehicle.geometry import CameraCalibration
from vehicle.simulate import SimSettings, load_route, simulate_drive

pytestmark = pytest.mark.slow

BAR_SETTINGS = SimSettings(length_km=20.0, objects=150, fps=10.0, gps_sigma_m=2.0, gps_corr_s=30.0, box_jitter=0.05,
                           miss_prob=0.10, fp_fraction=0.02, seed=1)


def _roof_camera() -> CameraCalibration:
    """calibration/default-roof-1080p.toml: 90 deg HFOV, 1.9 m up, 8 deg down, 0.5 m ahead of the antenna."""
    return CameraCalibration(image_size_wh=(1920, 1080),
                             camera_matrix=np.array([[960.0, 0, 959.5], [0, 960.0, 539.5], [0, 0, 1]]),
                             dist_coeffs=np.zeros(5), height_m=1.9, pitch_deg=8.0, roll_deg=0.0, yaw_deg=0.0,
                             lever_arm_m=(0.5, 0.0, 0.05), source="default roof 1080p")


@pytest.fixture(scope="module")
def bar_run(tmp_path_factory) -> dict:
    route = load_route(shared_path("gps", "genivi-drives", "extracted", "logs_v1", "munich-gps.nmea"))
    drive = tmp_path_factory.mktemp("bar") / "drive"
    simulate_drive(route, _roof_camera(), BAR_SETTINGS, drive)
    work = Path(tempfile.mkdtemp(prefix="patrol-bar-"))
    try:
        doc = eval_events(drive, drive / "truth.geojson", work / "report", [("bar", None, None)], progress=False)
        report = (work / "report" / "report.html").read_text(encoding="utf-8")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc["report_html"] = report
    print(json.dumps(doc["runs"][0]["overall"]))
    return doc


def test_bar_recall(bar_run: dict):
    o = bar_run["runs"][0]["overall"]
    assert o["objects"] == 150 and o["near_objects"] >= 140
    assert o["recall"] >= 0.95


def test_bar_location_error_near_the_camera(bar_run: dict):
    assert bar_run["runs"][0]["overall"]["error_near_median_m"] <= 2.5


def test_bar_duplicate_rate(bar_run: dict):
    assert bar_run["runs"][0]["overall"]["duplicate_rate"] <= 0.02


def test_bar_numbers_are_in_the_report(bar_run: dict):
    o = bar_run["runs"][0]["overall"]
    html = bar_run["report_html"]
    for key in ("recall", "duplicate_rate", "error_near_median_m"):
        assert f"<td>{key}</td>" in html
    assert f"{o['recall']:.3f}" in html and f"{o['error_near_median_m']:.3f}" in html
    assert "&gt;= 0.95" in html and "&lt;= 0.02" in html and "&lt;= 2.5" in html
