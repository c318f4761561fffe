"""scripts/bench.py on tiny sizes with a real model, real video, real Mosquitto and real SQLite.

Nothing here judges speed (the floors are the benchmark's business): the tests check that every section
runs, that the printed table and the JSON carry the fields, and that the values agree with each other.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest

from scripts import bench
from tests.conftest import converted_coco_model, shared_path


def _model() -> Path:
    """A real COCO detector (converted from ../shared): it finds the parked cars of the GoPro walk, so mapping
    "car" onto a category makes real events flow end to end (the shipped model may find nothing on this clip)."""
    shared_path("drives", "gopro-max-walk", "video.mp4")
    return converted_coco_model("yolo-fastest-1.1")


def _run(tmp_path: Path, capsys, *args: str) -> tuple[dict, str]:
    out = tmp_path / "bench.json"
    rc = bench.main([*args, "--json", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    return json.loads(out.read_text()), printed


@pytest.mark.integration
@pytest.mark.slow
def test_inference_and_pipeline_on_the_same_frames(tmp_path, capsys):
    if not shutil.which("mosquitto") and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto not installed (scripts/setup.sh installs it)")
    r, printed = _run(tmp_path, capsys, "--model", str(_model()), "--class-map", "car=illegal_parking",
                      "--sections", "a,b", "--frames", "40", "--repeats", "2")
    m = r["machine"]
    assert m["cores"] == os.cpu_count() and m["onnxruntime"] == ort.__version__
    assert "CPUExecutionProvider" in m["providers_available"]
    assert r["frames"] == {"drive": "gopro-max-walk", "count": 40, "size_wh": [848, 480]}
    assert r["model"]["input_hw"] == [320, 320] and len(r["model"]["sha256"]) == 64

    a, b = r["inference"], r["pipeline"]
    # a b a b a: three inference runs around two pipeline runs; each ratio against its two neighbours.
    assert len(a["fps_runs"]) == 3 and all(f > 0 for f in a["fps_runs"])
    assert a["fps"] == pytest.approx(sum(a["fps_runs"]) / 3)
    af, bf = a["fps_runs"], b["fps_runs"]
    assert len(bf) == 2 and b["fps"] in bf
    expected = sorted(bf[i] / ((af[i] + af[i + 1]) / 2) for i in range(2))
    assert sorted(b["ratio_runs"]) == pytest.approx(expected)
    assert b["ratio_to_inference"] == pytest.approx((expected[0] + expected[1]) / 2)  # the median of two
    assert b["frames"] == a["frames"] == 40
    # seconds are rounded to the millisecond, so 40/seconds is only known to within that rounding
    assert b["seconds"] == pytest.approx(40 / b["fps"], abs=5.01e-4)
    s = b["stage_ms_per_frame"]
    assert s["decode"] > 0 and s["preprocess_inference"] > 0 and s["post"] > 0
    parts = s["post_locate"] + s["post_dedup"] + s["post_events"]
    assert s["post_other"] == pytest.approx(s["post"] - parts) and parts <= s["post"]
    assert 0 < b["inference_busy"] <= 1.0
    # Parked cars along the walk: real detections, real events, each one received by the subscriber.
    assert b["detections"] > 0 and b["events"] >= 1
    assert b["events_received"] == b["events"] == b["latency_ms"]["n"] == b["publish_ms"]["n"]
    lat, pub = b["latency_ms"], b["publish_ms"]
    assert 0 < lat["p50"] <= lat["p99"] and 0 < pub["p50"] <= pub["p99"]
    # Per event, frame-to-subscriber contains outbox-to-subscriber, so the medians keep that order.
    assert lat["p50"] >= pub["p50"]
    # The child's peak RSS: a Python with ONNX Runtime, OpenCV and a model loaded is tens of MB at least.
    assert 50 < b["peak_rss_mb"] < 4000
    assert max(mb for _, mb in b["rss_samples"]) <= b["peak_rss_mb"] + 1

    names = [c["name"] for c in r["checks"]]
    assert names == ["(b)/(a) fps ratio", "(b) peak RSS, MB"]
    assert r["checks"][0]["ok"] == (b["ratio_to_inference"] >= 0.95)
    for line in ("(a) bare inference fps", "(b) pipeline fps", "(b) frame-to-publish ms p50 / p99", "machine:"):
        assert line in printed


def test_dedup_and_outbox_sections(tmp_path, capsys):
    r, printed = _run(tmp_path, capsys, "--sections", "c,d", "--dedup-sizes", "1000,3000", "--dedup-sightings",
                      "200", "--outbox-events", "300", "--outbox-batches", "1,10")
    assert "model" not in r and "pipeline" not in r  # no model needed for these two
    sizes = [d["objects"] for d in r["dedup"]]
    assert sizes == [1000, 3000]
    for d in r["dedup"]:
        assert d["sightings"] == 200 and d["us_per_detection"] > 0 and d["cpu_us_per_detection"] > 0
        # The drive passes new problems, each seen in many frames: far fewer objects than sightings.
        assert d["objects"] < d["stored_after_drive"] <= d["objects"] + 200 // 10
        # Then half the random sightings land at fresh places (inserted), half within a metre of a stored object.
        assert d["stored_after_drive"] + 90 <= d["stored_after"] <= d["stored_after_drive"] + 100
    assert r["dedup_growth"] == pytest.approx(r["dedup"][1]["us_per_detection"] / r["dedup"][0]["us_per_detection"])
    ob = {o["batch"]: o for o in r["outbox"]}
    assert set(ob) == {1, 10}
    assert ob[10]["events"] == ob[10]["acked"] == 300 and ob[1]["events"] == ob[1]["acked"] == 300
    for o in ob.values():
        assert 0 < o["events_per_s"] <= o["put_events_per_s"] * 1.0001  # acks finish after the last put
    checks = {c["name"]: c for c in r["checks"]}
    assert checks["(c) dedup us/detection at 3e+03"]["value"] == r["dedup"][1]["us_per_detection"]
    assert checks["(d) outbox events/s, batch 1"]["ok"] == (ob[1]["events_per_s"] >= 2000)
    assert "(c) dedup us/detection at 3,000" in printed and "(d) outbox durable events/s, batch 10" in printed


@pytest.mark.integration
@pytest.mark.slow
def test_soak_samples_rss_over_a_replay_loop(tmp_path, capsys):
    if not shutil.which("mosquitto") and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto not installed (scripts/setup.sh installs it)")
    r, printed = _run(tmp_path, capsys, "--model", str(_model()), "--class-map", "car=illegal_parking",
                      "--sections", "e", "--soak-minutes", "0.3")
    so = r["soak"]
    # 18 s of replay (the loop stops at the deadline), sampled every 0.3 s from start to end.
    assert so["minutes"] == 0.3 and so["frames"] > 0
    times = [t for t, _ in so["rss_samples"]]
    assert times == sorted(times) and times[-1] >= 17.0 and len(times) >= 40
    assert so["rss_first_mb"] == so["rss_samples"][0][1] and so["rss_last_mb"] == so["rss_samples"][-1][1]
    assert isinstance(so["rss_growth_mb_per_10min"], float)
    assert max(mb for _, mb in so["rss_samples"]) <= so["peak_rss_mb"] + 1
    assert "(e) soak 0.3 min: RSS growth MB/10 min" in printed


def test_rss_growth_is_the_least_squares_slope_after_warm_up():
    # 2 MB per minute after a 60 s warm-up in which memory jumped: 20 MB per 10 minutes.
    samples = [[0.0, 10.0], [30.0, 80.0]] + [[60.0 + 10 * i, 100.0 + 2.0 * (10 * i) / 60] for i in range(30)]
    assert bench.rss_growth(samples, warmup_s=60.0) == pytest.approx(20.0)
    assert bench.rss_growth(samples[:3], warmup_s=60.0) is None


def test_missing_model_is_one_clear_line(tmp_path, capsys):
    missing = tmp_path / "nope.onnx"
    assert bench.main(["--model", str(missing), "--sections", "a"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bench: {missing}: model not found (train/export it, or pass --model PATH)"]
