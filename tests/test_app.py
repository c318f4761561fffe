"""Replay set-up errors: one line naming what is wrong, nothing started."""

from __future__ import annotations

import json

import pytest

from tests.drives import gopro_drive
from vehicle.app import OutputError, ReplayOptions, replay
from vehicle.config import ConfigError
from vehicle.drive import DriveError, open_drive
from vehicle.frames import FrameSourceError


def _no_mqtt(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[mqtt]\nenabled = false\n')
    return cfg


def test_a_drive_without_video_needs_cached_detections(tmp_path):
    drive = gopro_drive(tmp_path / "d")
    m = json.loads((drive / "manifest.json").read_text())
    m["video"] = []
    (drive / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DriveError, match="no video or stills: replay it with --detections"):
        replay(ReplayOptions(drive, _no_mqtt(tmp_path), state_dir=tmp_path / "s"))


def test_unwritable_outputs_are_named(tmp_path):
    drive = gopro_drive(tmp_path / "d")
    cfg = _no_mqtt(tmp_path)
    with pytest.raises(OutputError, match=r"x\.jsonl: cannot write events"):
        replay(ReplayOptions(drive, cfg, out=str(tmp_path / "missing" / "x.jsonl"), state_dir=tmp_path / "s"))
    assert not (tmp_path / "s").exists()  # a failed start leaves no state folder behind
    with pytest.raises(OutputError, match=r"x\.jsonl: cannot write events"):
        replay(ReplayOptions(drive, cfg, out=str(tmp_path / "missing" / "x.jsonl")))
    assert list((tmp_path / "data").iterdir()) == []  # nor a fresh replay-* one
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(OutputError, match=r"a-file: is a file, not a state folder"):
        replay(ReplayOptions(drive, cfg, state_dir=a_file))


def test_a_class_map_typo_stops_a_replay_naming_the_key(tmp_path):
    drive = gopro_drive(tmp_path / "d")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[mqtt]\nenabled = false\n'
                   '[detector.class_map]\ngarbage = "exposed_garbaje"\n')
    with pytest.raises(ConfigError, match=r"c\.toml: detector\.class_map\.garbage: unknown category 'exposed_garbaje'"):
        replay(ReplayOptions(drive, cfg, state_dir=tmp_path / "s"))
    assert not (tmp_path / "s").exists()  # nothing started


def test_without_out_the_configs_jsonl_file_gets_the_events(tmp_path):
    drive = gopro_drive(tmp_path / "d")
    seg = open_drive(drive).segments[0]
    lines = [json.dumps({"header": {"format": "patrol-detections", "version": 1,
                                    "model": {"name": "crafted", "sha256": "c" * 64}}})]
    for i in range(20):  # one confident box, low in the frame (on the ground a few metres ahead), 20 frames
        t = seg.frame_times_utc[i] if seg.frame_times_utc else seg.start_utc + i / 30.0
        lines.append(json.dumps({"frame": i, "time_utc": t, "size_wh": [848, 480], "detections": [
            {"category": "exposed_garbage", "score": 0.9, "xyxy": [384, 380, 464, 440]}]}))
    detections = tmp_path / "det.jsonl"
    detections.write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[mqtt]\nenabled = false\n'
                   '[output]\njsonl_file = "out/ev.jsonl"\n')
    replay(ReplayOptions(drive, cfg, detections=detections, state_dir=tmp_path / "s"))
    events = [json.loads(line) for line in (tmp_path / "out" / "ev.jsonl").read_text().splitlines()]
    assert [e["properties"]["category"] for e in events] == ["exposed_garbage"]
    assert events[0]["properties"]["model"] == {"name": "crafted", "sha256": "c" * 64}


def test_a_bad_stills_folder_fails_before_any_state_is_made(tmp_path):
    drive = gopro_drive(tmp_path / "d")
    m = json.loads((drive / "manifest.json").read_text())
    m["video"] = []
    m["stills"] = {"folder": "stills", "start_utc": "2019-11-18T23:45:14Z"}
    (drive / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FrameSourceError, match="stills: folder of stills not found"):
        replay(ReplayOptions(drive, _no_mqtt(tmp_path), state_dir=tmp_path / "s"))
    (drive / "stills").mkdir()
    (drive / "stills" / "timestamps.csv").write_text("file,utc\n")
    with pytest.raises(FrameSourceError, match=r"timestamps\.csv: lists no images"):
        replay(ReplayOptions(drive, _no_mqtt(tmp_path), state_dir=tmp_path / "s"))
    assert not (tmp_path / "s").exists()


def test_a_replay_error_names_the_config_file(tmp_path):
    drive = gopro_drive(tmp_path / "d")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[mqtt]\nenabled = false\n[rules]\nmin_travle_m = 3\n'
                   '[object_detector]\nenabled = true\nmodel_file = "x.onnx"\n')
    detections = tmp_path / "det.jsonl"
    detections.write_text('{"header": {"format": "patrol-detections", "version": 1, "model": {}}}\n')
    with pytest.raises(ConfigError) as exc:
        replay(ReplayOptions(drive, cfg, detections=detections, state_dir=tmp_path / "s"))
    assert str(exc.value).startswith(f"{cfg}: rules.min_travle_m: unknown key")
