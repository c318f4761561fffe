"""Cached detections: written by one replay, read back by the next, bad lines named."""

from __future__ import annotations

import pytest

from vehicle.detection_log import (
    CategoryBox,
    DetectionLogError,
    DetectionLogWriter,
    FrameDetections,
    read_detection_log,
)


def test_round_trip(tmp_path):
    path = tmp_path / "d.jsonl"
    w = DetectionLogWriter(path, {"name": "m", "sha256": "ab" * 32})
    frames = [
        FrameDetections(0, 100.0, (848, 480), (CategoryBox("road_damage", 0.5, (1.0, 2.0, 3.0, 4.0)),)),
        FrameDetections(1, 100.1, (848, 480), ()),
        FrameDetections(2, 100.2, (848, 480),
                        (CategoryBox("illegal_parking", 0.61234567, (5.0, 6.0, 7.5, 8.25), "car"),)),
    ]
    for f in frames:
        w.write(f)
    w.close()
    model, it = read_detection_log(path)
    assert model == {"name": "m", "sha256": "ab" * 32}
    back = list(it)
    assert [f.frame_index for f in back] == [0, 1, 2]
    assert back[2].boxes[0].object_class == "car"
    assert back[2].boxes[0].score == pytest.approx(0.61235, abs=1e-6)
    assert back[2].boxes[0].foot_px == (6.25, 8.25)
    assert back[0] == frames[0]


def test_bad_lines_are_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"header": {"format": "patrol-detections", "version": 1, "model": {}}}\n'
                    '{"frame": 0, "time_utc": 1, "size_wh": [1, 1], "detections": []}\n'
                    '{"frame": 1, "time_utc": 1, "size_wh": [1, 1], "detections": [{"category": "x"}]}\n')
    _, it = read_detection_log(path)
    with pytest.raises(DetectionLogError, match=r"d\.jsonl:3: bad frame line"):
        list(it)
    path.write_text("not json\n")
    with pytest.raises(DetectionLogError, match=r"d\.jsonl:1: not a patrol-detections header"):
        read_detection_log(path)
    with pytest.raises(DetectionLogError, match="not found"):
        read_detection_log(tmp_path / "none.jsonl")
