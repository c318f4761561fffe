"""The bar of issue 5, end to end: a simulated 20 km drive replayed through the REAL pipeline.

Route: the real Munich city track from ../shared (12 km), driven on and back to 20 km, so part of it is a
repeat pass. Camera: the default 1080p roof camera. Noise: GPS error sigma 2 m per axis (Gauss-Markov, 30 s
correlation, as a real receiver's error drifts), 5 % box jitter, 10 % missed detections, 2 % false boxes.
Bar: event recall >= 0.95, duplicate rate <= 2 %, median location error <= 2.5 m for objects within 25 m.

Read "sigma 2 m" per axis, the GPS error alone puts half the fixes more than 2.35 m off (the median of a
Rayleigh distribution, 1.18 sigma), so the location bar sits at what the receiver allows and a single seeded drive
passes or fails it by luck. Ten seeds are run: recall and duplicates must hold on every one, the location bar on
the typical drive (the median over seeds), and, read as 2 m horizontal RMS (1.41 m per axis), on every drive.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
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


SEEDS = range(10)


def _overall(route, drive: Path, settings: SimSettings, report: Path | None = None) -> dict:
    simulate_drive(route, _roof_camera(), settings, drive)
    work = Path(tempfile.mkdtemp(prefix="patrol-bar-"))
    try:
        doc = eval_events(drive, drive / "truth.geojson", work / "report", [("bar", None, None)], progress=False)
        if report is not None:
            shutil.copyfile(work / "report" / "report.html", report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(drive, ignore_errors=True)
    return doc


@pytest.fixture(scope="module")
def bar_runs(tmp_path_factory) -> dict:
    """seed -> overall numbers at sigma 2 m per axis; "rms" -> the same seeds at 2 m horizontal RMS."""
    route = load_route(shared_path("gps", "genivi-drives", "extracted", "logs_v1", "munich-gps.nmea"))
    root = tmp_path_factory.mktemp("bar")
    runs: dict = {"per_axis": {}, "rms": {}}
    for seed in SEEDS:
        report = root / "report.html" if seed == BAR_SETTINGS.seed else None
        doc = _overall(route, root / "drive", replace(BAR_SETTINGS, seed=seed), report)
        runs["per_axis"][seed] = doc["runs"][0]["overall"]
        if report is not None:
            runs["report_doc"] = doc
            runs["report_html"] = report.read_text(encoding="utf-8")
        rms = replace(BAR_SETTINGS, seed=seed, gps_sigma_m=2.0 / np.sqrt(2.0))
        runs["rms"][seed] = _overall(route, root / "drive", rms)["runs"][0]["overall"]
    print(json.dumps({k: {s: round(o["error_near_median_m"], 2) for s, o in runs[k].items()}
                      for k in ("per_axis", "rms")}))
    return runs


def test_bar_recall(bar_runs: dict):
    for o in [*bar_runs["per_axis"].values(), *bar_runs["rms"].values()]:
        assert o["objects"] == 150 and o["near_objects"] >= 140
        assert o["recall"] >= 0.95


def test_bar_duplicate_rate(bar_runs: dict):
    for o in [*bar_runs["per_axis"].values(), *bar_runs["rms"].values()]:
        assert o["duplicate_rate"] <= 0.02


def test_bar_location_error_near_the_camera(bar_runs: dict):
    per_axis = [o["error_near_median_m"] for o in bar_runs["per_axis"].values()]
    assert float(np.median(per_axis)) <= 2.5, per_axis  # the typical drive, at the receiver's own floor
    assert max(o["error_near_median_m"] for o in bar_runs["rms"].values()) <= 2.5  # every drive


def test_bar_numbers_are_in_the_report(bar_runs: dict):
    o = bar_runs["report_doc"]["runs"][0]["overall"]
    html = bar_runs["report_html"]
    for key in ("recall", "duplicate_rate", "error_near_median_m"):
        assert f"<td>{key}</td>" in html
    assert f"{o['recall']:.3f}" in html and f"{o['error_near_median_m']:.3f}" in html
    assert "&gt;= 0.95" in html and "&lt;= 0.02" in html and "&lt;= 2.5" in html
