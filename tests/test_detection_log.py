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


HEADER = '{"header": {"format": "patrol-detections", "version": 1, "model": {}}}\n'


@pytest.mark.parametrize(("line", "why"), [
    ('{"frame": -5, "time_utc": 1, "size_wh": [8, 8], "detections": []}', "frame must be a whole number >= 0"),
    ('{"frame": 1180591620717411303424, "time_utc": 1, "size_wh": [8, 8], "detections": []}', "frame must be"),
    ('{"frame": 1, "time_utc": 1, "size_wh": [0, 8], "detections": []}', "size_wh must be two positive"),
    ('{"frame": 1, "time_utc": 1, "size_wh": ["848", "480"], "detections": []}', "size_wh must be two positive"),
    ('{"frame": 1, "time_utc": 1, "size_wh": [8, 8], "detections": {}}', "detections must be a list"),
    ('{"frame": 1, "time_utc": 1, "size_wh": [8, 8], "detections": [{"category": "road_damage", "score": 0.5, '
     '"xyxy": [0, 1, 2, 3], "object_class": 5}]}', "object_class must be a class name, got 5"),
    ('{"frame": 1, "time_utc": NaN, "size_wh": [8, 8], "detections": []}', "time_utc must be a finite number"),
    ('{"frame": 1, "time_utc": 1, "size_wh": [8, 8], "detections": [{"category": "road_damage", "score": 0.5, '
     '"xyxy": [NaN, 1, 2, 3]}]}', "xyxy must be a finite number"),
    ('{"frame": 1, "time_utc": 1, "size_wh": [8, 8], "detections": [{"category": "road_damage", "score": Infinity, '
     '"xyxy": [0, 1, 2, 3]}]}', "score must be a finite number"),
    ('{"frame": 1, "time_utc": 1, "size_wh": [8, 8], "detections": [{"category": "nuclear_waste", "score": 0.5, '
     '"xyxy": [0, 1, 2, 3]}]}', "category 'nuclear_waste' is not in the taxonomy"),
    ('{"frame": 1, "time_utc": 1, "size_wh": [8, 8], "detections": [{"category": "road_damage", "score": "0.5", '
     '"xyxy": [0, 1, 2, 3]}]}', "score must be a finite number, got '0.5'"),
    ('{"frame": 1, "time_utc": 1, "size_wh": [8, 8], "detections": [{"category": "road_damage", "score": 0.5, '
     '"xyxy": [true, 1, 2, 3]}]}', "xyxy must be a finite number, got True"),
    ('{"frame": 1, "time_utc": 1, "size_wh": [8, 8], "detections": [{"category": "road_damage", "score": 0.5, '
     '"xyxy": [2, 1, 2, 3]}]}', r"xyxy \[2.0, 1.0, 2.0, 3.0\] is empty or inverted"),
    ('{"frame": 0, "time_utc": 2, "size_wh": [8, 8], "detections": []}', "frame 0 does not come after frame 0"),
    ('{"frame": 1, "time_utc": 1, "size_wh": [8, 8], "detections": [{"category": "road_damage", "score": 1.5, '
     '"xyxy": [0, 1, 2, 3]}]}', r"score must be within \[0, 1\], got 1.5"),
    ('{"frame": 1, "time_utc": 1, "size_wh": [8, 8], "detections": [{"category": "road_damage", "score": 0.5, '
     '"xyxy": [5, 1, 2, 3]}]}', r"xyxy \[5.0, 1.0, 2.0, 3.0\] is empty or inverted"),
    ('{"frame": 1, "time_utc": 1, "size_wh": [8, 8], "detections": [{"category": "road_damage", "score": 0.5, '
     '"xyxy": [0, 1, 20, 3]}]}', r"xyxy \[0.0, 1.0, 20.0, 3.0\] reaches outside the 8x8 image"),
])
def test_values_the_pipeline_cannot_trust_are_bad_lines(tmp_path, line: str, why: str) -> None:
    path = tmp_path / "d.jsonl"
    good = '{"frame": 0, "time_utc": 1, "size_wh": [8, 8], "detections": []}\n'
    path.write_text(HEADER + good + line + "\n")
    _, it = read_detection_log(path, ["road_damage"])
    assert next(it).frame_index == 0  # what came before the bad line is still read
    with pytest.raises(DetectionLogError, match=rf"d\.jsonl:3: bad frame line \({why}"):
        next(it)


@pytest.mark.parametrize("header", ['{"header": "x"}', '{"header": []}',
                                    '{"header": {"format": "patrol-detections", "model": "abc"}}',
                                    '{"header": {"format": "patrol-detections", "model": {"covered": 5}}}'])
def test_a_malformed_header_is_named(tmp_path, header: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(header + "\n")
    with pytest.raises(DetectionLogError, match=r"d\.jsonl:1: not a patrol-detections header line"):
        read_detection_log(path)


def test_another_version_and_a_folder_are_named_as_such(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"header": {"format": "patrol-detections", "version": 2, "model": {}}}\n')
    with pytest.raises(DetectionLogError, match=r"d\.jsonl:1: patrol-detections version 2: this patrol reads"):
        read_detection_log(path)
    with pytest.raises(DetectionLogError, match=r": is a folder, not a detections file"):
        read_detection_log(tmp_path)


def test_bytes_that_are_not_utf8_are_named(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(HEADER.encode() + b'{"frame": 0, "time_utc": 1, "size_wh": [8, 8], "detections": []}\n\xff\xfe\n')
    _, it = read_detection_log(path)
    with pytest.raises(DetectionLogError, match=r"d\.jsonl:3: not UTF-8 text"):
        list(it)
    path.write_bytes(b"\xff\xfe\n")
    with pytest.raises(DetectionLogError, match="header line"):
        read_detection_log(path)


def test_a_resumed_replay_keeps_the_frames_already_committed(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    w = DetectionLogWriter(path, {"name": "m"})
    for i in range(5):
        w.write(FrameDetections(i, 100.0 + i, (8, 8), (CategoryBox("road_damage", 0.5, (1.0, 2.0, 3.0, 4.0)),)))
    w.close()
    with open(path, "a") as fh:
        fh.write('{"frame": 5, "time_u')  # what a kill mid-write leaves
    # the earlier run committed up to frame 2 (t = 102): frames 3-4 are redone by the resumed run
    w = DetectionLogWriter(path, {"name": "m"}, keep_until_utc=102.0)
    w.write(FrameDetections(3, 103.0, (8, 8), ()))
    w.close()
    _, it = read_detection_log(path)
    assert [(f.frame_index, len(f.boxes)) for f in it] == [(0, 1), (1, 1), (2, 1), (3, 0)]
    fresh = DetectionLogWriter(path, {"name": "m"})  # not resumed: a new file
    fresh.close()
    assert list(read_detection_log(path)[1]) == []
