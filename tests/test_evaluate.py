"""``patrol eval``: events on a replayed simulated drive, A/B, detections on labelled images, bad input."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.onnx_fixtures import constant_yolo_model, yolo_rows
from tests.test_simulate import SETTINGS, _calib, _l_route
from vehicle.cli import main
from vehicle.evaluate import EvalError, Progress, load_truth
from vehicle.simulate import simulate_drive


@pytest.fixture(scope="module")
def sim_drive(tmp_path_factory) -> Path:
    """A 3 km drive (the L route back and forth) at 5 fps with 40 objects, mild noise, no GPS error."""
    d = tmp_path_factory.mktemp("sim") / "drive"
    simulate_drive(_l_route(), _calib(), replace(SETTINGS, objects=40, length_km=3.0, fps=5.0, speed_kmh=30.0,
                                                  box_jitter=0.03, miss_prob=0.05, fp_fraction=0.02), d)
    return d


def _self_contained(html: str) -> None:
    assert "<script" not in html.lower()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html, re.I)  # nothing fetched from anywhere
    assert html.count("data:image/png;base64,") >= 2


def test_eval_events_replays_the_drive_and_scores_it(sim_drive: Path, tmp_path: Path, capsys):
    out = tmp_path / "report"
    rc = main(["eval", "events", str(sim_drive), "--truth", str(sim_drive / "truth.geojson"), "--out", str(out)])
    assert rc == 0
    assert "replay run [" in capsys.readouterr().err  # the progress bar
    doc = json.loads((out / "metrics.json").read_text())
    run = doc["runs"][0]
    o = run["overall"]
    events_written = (out / "replay-run" / "events.jsonl").read_text().splitlines()
    assert o["events"] == len(events_written) > 0
    assert o["objects"] == 40
    # without GPS error the pipeline places objects to within centimetres of the truth
    assert o["recall"] >= 0.9 and o["error_median_m"] < 0.5 and o["duplicates"] == 0
    assert o["matched"] + o["duplicates"] + o["false_events"] == o["events"]
    sim = json.loads((sim_drive / "simulation.json").read_text())
    assert run["km_driven"] == pytest.approx(3.0, rel=0.02)
    assert run["events_per_km"] == pytest.approx(o["events"] / run["km_driven"], rel=1e-3)
    tp = run["throughput"]
    assert tp["frames"] == sim["frames"]
    assert tp["drive_s"] == pytest.approx((sim["frames"] - 1) / 5.0, abs=0.01)
    assert tp["realtime_factor"] == pytest.approx(tp["drive_s"] / tp["wall_s"], rel=1e-2)
    assert sum(c["objects"] for c in run["per_category"]) == 40
    _self_contained((out / "report.html").read_text())
    events = json.loads((out / "events.geojson").read_text())["features"]
    assert len(events) == o["events"]
    assert sum(e["properties"]["eval_match"] == "matched" for e in events) == o["matched"]
    truth = json.loads((out / "truth.geojson").read_text())["features"]
    assert sum(f["properties"]["eval_found"] for f in truth) == round(o["recall"] * 40)
    track = json.loads((out / "track.geojson").read_text())["features"][0]
    assert track["geometry"]["type"] == "LineString" and len(track["geometry"]["coordinates"]) > 100
    # a second run into the same folder starts from a fresh dedup state: the same numbers
    assert main(["eval", "events", str(sim_drive), "--truth", str(sim_drive / "truth.geojson"), "--out", str(out),
                 "--no-progress"]) == 0
    again = json.loads((out / "metrics.json").read_text())["runs"][0]["overall"]
    assert again == o


def test_eval_ab_side_by_side_with_deltas(sim_drive: Path, tmp_path: Path):
    # B: the same detections with every road_damage box removed -> B finds no road damage
    lines = (sim_drive / "detections.jsonl").read_text().splitlines()
    b_lines = [lines[0]]
    for line in lines[1:]:
        d = json.loads(line)
        d["detections"] = [x for x in d["detections"] if x["category"] != "road_damage"]
        b_lines.append(json.dumps(d))
    b_file = tmp_path / "b.jsonl"
    b_file.write_text("\n".join(b_lines) + "\n")
    out = tmp_path / "ab"
    rc = main(["eval", "ab", str(sim_drive), "--truth", str(sim_drive / "truth.geojson"), "--out", str(out),
               "--a-detections", str(sim_drive / "detections.jsonl"), "--b-detections", str(b_file),
               "--b-label", "no-potholes", "--no-progress"])
    assert rc == 0
    doc = json.loads((out / "metrics.json").read_text())
    a, b = doc["runs"]
    assert b["label"] == "no-potholes"
    truth, _ = load_truth(sim_drive / "truth.geojson")
    n_road = truth.category.count("road_damage")
    assert n_road > 0
    road_b = next(c for c in b["per_category"] if c["category"] == "road_damage")
    assert road_b["recall"] == 0.0 and road_b["events"] == 0
    assert b["overall"]["recall"] == pytest.approx(a["overall"]["recall"] - n_road / 40, abs=1e-9)
    for k in ("recall", "precision", "events"):
        assert doc["deltas"][k] == pytest.approx(b["overall"][k] - a["overall"][k])
    html = (out / "report.html").read_text()
    _self_contained(html)
    assert "no-potholes" in html and "B − A" in html
    assert (out / "events-A.geojson").is_file() and (out / "events-no-potholes.geojson").is_file()


def _yolo_line(cls: int, xyxy: tuple[float, float, float, float], size: int = 640, score: float | None = None) -> str:
    x1, y1, x2, y2 = xyxy
    v = [(x1 + x2) / 2 / size, (y1 + y2) / 2 / size, (x2 - x1) / size, (y2 - y1) / size]
    return " ".join([str(cls), *(f"{x:.8f}" for x in v)] + ([f"{score}"] if score is not None else []))


def test_eval_detections_from_saved_predictions(tmp_path: Path):
    images, labels, preds = tmp_path / "images", tmp_path / "labels", tmp_path / "preds"
    for d in (images, labels, preds):
        d.mkdir()
    for name in ("a", "b"):
        cv2.imwrite(str(images / f"{name}.png"), np.zeros((640, 640, 3), np.uint8))
    (labels / "a.txt").write_text(_yolo_line(0, (10, 10, 110, 60)) + "\n")
    (labels / "b.txt").write_text(_yolo_line(1, (100, 100, 200, 200)) + "\n")
    (preds / "a.txt").write_text(_yolo_line(0, (10, 10, 110, 60), score=0.9) + "\n")
    # b: a false box scored above a true one of IoU 0.63 (counts at IoU 0.50, 0.55, 0.60)
    (preds / "b.txt").write_text(_yolo_line(1, (100, 100, 200, 163), score=0.8) + "\n"
                                 + _yolo_line(1, (400, 400, 450, 450), score=0.95) + "\n")
    out = tmp_path / "out"
    rc = main(["eval", "detections", "--images", str(images), "--predictions", str(preds), "--names", "bag,pothole",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    doc = json.loads((out / "metrics.json").read_text())
    c0, c1 = doc["classes"]
    assert (c0["name"], c0["ap50"], c0["ap50_95"], c0["precision"], c0["recall"]) == ("bag", 1.0, 1.0, 1.0, 1.0)
    assert c1["ap50"] == pytest.approx(0.5) and c1["ap50_95"] == pytest.approx(0.15)
    assert c1["precision"] == pytest.approx(0.5) and c1["recall"] == 1.0
    assert doc["mean"]["ap50"] == pytest.approx(0.75)
    cm = doc["confusion_matrix"]["rows_predicted_cols_true"]
    assert cm == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    _self_contained((out / "report.html").read_text())


@pytest.mark.parametrize(("line", "why"), [
    ("0 0.5 0.5 2.0 0.1", "box width/height 2 0.1 not in (0, 1]"),
    ("0 0.5 0.5 0 0.1", "box width/height 0 0.1 not in (0, 1]"),
    ("0 0.9 0.5 0.4 0.1", "box centre 0.9 0.5 size 0.4 0.1 reaches outside the image"),
    ("1.5 0.5 0.5 0.1 0.1", "class id 1.5 is not a non-negative integer"),
    ("-1 0.5 0.5 0.1 0.1", "class id -1 is not a non-negative integer"),
    ("0 nan 0.5 0.1 0.1", "not finite numbers"),
    ("0 0.5 0.5 0.1 0.1 0.2 0.3", "expected 5 numbers (cls cx cy w h), got 7"),  # a segmentation polygon
    ("100000 0.5 0.5 0.1 0.1", "class id 100000 is not below 1000"),
])
def test_eval_detections_refuses_labels_ultralytics_would_call_corrupt(tmp_path: Path, capsys, line: str, why: str):
    images, labels, preds = tmp_path / "images", tmp_path / "labels", tmp_path / "preds"
    for d in (images, labels, preds):
        d.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((64, 64, 3), np.uint8))
    (labels / "a.txt").write_text(_yolo_line(0, (10, 10, 20, 20), size=64) + "\n" + line + "\n")
    (preds / "a.txt").write_text("")
    rc = main(["eval", "detections", "--images", str(images), "--predictions", str(preds), "--out",
               str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and f"a.txt:2: {why}" in err[0], err


def test_eval_detections_refuses_class_ids_past_the_names_and_bytes_that_are_not_text(tmp_path: Path, capsys):
    images, labels, preds = tmp_path / "images", tmp_path / "labels", tmp_path / "preds"
    for d in (images, labels, preds):
        d.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((64, 64, 3), np.uint8))
    (preds / "a.txt").write_text("")
    for content, why in ((b"5 0.5 0.5 0.2 0.2\n", "a.txt: class id 5 but only 3 class names"),
                         (b"\xff\xfe\x00bad\n", "a.txt: not UTF-8 text")):
        (labels / "a.txt").write_bytes(content)
        rc = main(["eval", "detections", "--images", str(images), "--predictions", str(preds), "--names", "a,b,c",
                   "--out", str(tmp_path / "o"), "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and len(err) == 1 and why in err[0], err


def test_eval_detections_refuses_names_that_do_not_fit_the_model(tmp_path: Path, capsys):
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    cv2.imwrite(str(images / "x.jpg"), np.full((64, 64, 3), 90, np.uint8))
    model = constant_yolo_model(tmp_path / "m.onnx", yolo_rows([(10, 10, 5, 5)], [[0.9, 0.0]]))
    rc = main(["eval", "detections", "--images", str(images), "--model", str(model), "--names", "bag",
               "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "the model has 2 classes but 1 names were given" in err[0], err


def test_eval_detections_runs_an_onnx_model(tmp_path: Path):
    images = tmp_path / "data" / "images"
    labels = tmp_path / "data" / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    cv2.imwrite(str(images / "x.jpg"), np.full((640, 640, 3), 90, np.uint8))
    (labels / "x.txt").write_text(_yolo_line(0, (75, 75, 125, 125)) + "\n" + _yolo_line(1, (300, 300, 340, 340)) + "\n")
    out = yolo_rows([(100, 100, 50, 50), (500, 500, 40, 40)], [[0.9, 0.0], [0.0, 0.7]])
    model = constant_yolo_model(tmp_path / "m.onnx", out)
    rc = main(["eval", "detections", "--images", str(images), "--model", str(model), "--out", str(tmp_path / "o"),
               "--no-progress"])
    assert rc == 0
    doc = json.loads((tmp_path / "o" / "metrics.json").read_text())
    by_name = {c["name"]: c for c in doc["classes"]}
    assert by_name["exposed_garbage"]["ap50_95"] == pytest.approx(1.0)  # names come from the model
    assert by_name["road_damage"]["ap50"] == 0.0 and by_name["road_damage"]["recall"] == 0.0


def test_bad_inputs_are_one_line_errors(tmp_path: Path, sim_drive: Path, capsys):
    bad = tmp_path / "t.geojson"
    bad.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [11.5, 48.1]},
         "properties": {"category": "bin"}},
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
         "properties": {"category": "bin"}}]}))
    with pytest.raises(EvalError, match=r"features\[1\].*Point"):
        load_truth(bad)
    for feature, why in ((None, "not a Feature with a geometry object"), ({"geometry": None}, "not a Feature"),
                         ({"geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": "bin"},
                          "properties must be an object")):
        bad.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
        with pytest.raises(EvalError, match=rf"t\.geojson: features\[0\]: {why}"):
            load_truth(bad)
    bad.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [11.5, 48.1]},
         "properties": {"category": "overflowing_bin"}},
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
         "properties": {"category": "overflowing_bin"}}]}))
    rc = main(["eval", "events", str(sim_drive), "--truth", str(bad), "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "features[1]" in err[0]
    rc = main(["eval", "events", str(sim_drive), "--truth", str(sim_drive / "truth.geojson"), "--out", str(bad),
               "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err == [f"patrol: error: {bad}: --out is a file; the report needs a folder"]
    # A category the taxonomy lacks (a typo) would score as a miss of every object of it: refused, naming it.
    for geometry, category, why in (({"type": "Point", "coordinates": [11.5, 48.1]}, "unicorn",
                                     "properties.category 'unicorn' is not a category of the taxonomy"),
                                    ({"type": "Point", "coordinates": [11.5]}, "overflowing_bin",
                                     "coordinates must be [lon, lat]"),
                                    ({"type": "Point", "coordinates": [True, False]}, "overflowing_bin",
                                     "coordinates must be [lon, lat] numbers")):
        bad.write_text(json.dumps({"type": "FeatureCollection", "features": [
            {"type": "Feature", "geometry": geometry, "properties": {"category": category}}]}))
        rc = main(["eval", "events", str(sim_drive), "--truth", str(bad), "--out", str(tmp_path / "o"),
                   "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and len(err) == 1 and f"features[0]: {why}" in err[0], err
    events = tmp_path / "e.jsonl"
    events.write_text('{"type": "Feature"}\n')
    with pytest.raises(EvalError, match=r"e\.jsonl:1: not an event"):
        from vehicle.evaluate import load_events

        load_events(events)


def test_a_missing_or_broken_dataset_yaml_is_one_line(tmp_path: Path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    not_yaml = tmp_path / "notes.yaml"
    not_yaml.write_text("a: [1, 2\nb: }")
    no_names = tmp_path / "data.yaml"
    no_names.write_text("path: x\ntrain: images\n")
    for data, want in ((tmp_path / "none.yaml", "dataset yaml not found (the patrol13 dataset"),
                       (not_yaml, "not a readable dataset yaml"), (no_names, "no 'names'")):
        rc = main(["eval", "detections", "--images", str(images), "--data", str(data), "--out", str(tmp_path / "o"),
                   "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and len(err) == 1, err
        assert err[0].startswith(f"patrol: error: {data}: {want}"), err[0]


def test_progress_bar_text(capsys):
    p = Progress("replay x", 200)
    p.update(50, force=True)
    p.close()
    err = capsys.readouterr().err
    assert "replay x [#######" in err and " 25.0% 50/200" in err and "100.0% 200/200" in err


def test_eval_ab_of_two_configs(sim_drive: Path, tmp_path: Path):
    """B asks for 1,000 frames before a road_damage becomes an event: B publishes none, everything else equal."""
    repo = Path(__file__).resolve().parent.parent
    cfg = tmp_path / "b.toml"
    cfg.write_text(f'[detector]\ncategories_file = "{repo / "models" / "categories.yaml"}"\n'
                   '[dedup]\nmin_frames = { road_damage = 1000 }\n')
    out = tmp_path / "ab"
    rc = main(["eval", "ab", str(sim_drive), "--truth", str(sim_drive / "truth.geojson"), "--out", str(out),
               "--b-config", str(cfg), "--no-progress"])
    assert rc == 0
    a, b = json.loads((out / "metrics.json").read_text())["runs"]
    rows_a = {c["category"]: c for c in a["per_category"]}
    rows_b = {c["category"]: c for c in b["per_category"]}
    assert rows_a["road_damage"]["events"] > 0 and rows_b["road_damage"]["events"] == 0
    for cat, row in rows_a.items():
        if cat != "road_damage":
            assert rows_b[cat]["events"] == row["events"] and rows_b[cat]["recall"] == row["recall"]
    assert a["throughput"]["frames"] == b["throughput"]["frames"] > 0
