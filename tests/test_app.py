"""Replay set-up errors: one line naming what is wrong, nothing started."""

from __future__ import annotations

import json

import pytest

from tests.drives import gopro_drive
from vehicle.app import OutputError, ReplayOptions, replay
from vehicle.drive import DriveError


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
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(OutputError, match="cannot create the state folder"):
        replay(ReplayOptions(drive, cfg, state_dir=a_file))
