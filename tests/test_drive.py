"""The recorded-drive format: manifest round trip, per-frame times, one-line errors."""

from __future__ import annotations

import itertools
import json

import cv2
import numpy as np
import pytest

from tests.drives import gopro_drive
from vehicle.drive import DriveError, open_drive, utc_iso, write_manifest
from vehicle.frames import SourceCounters, parse_utc


def test_gopro_drive_frames_carry_gps_utc(tmp_path):
    drive = open_drive(gopro_drive(tmp_path))
    assert drive.gps_file.name == "gps.nmea" and drive.calibration_file.name == "calibration.toml"
    counters = SourceCounters()
    frames = list(drive.frames(counters))
    assert len(frames) == 315 == counters.frames and counters.bad_frames == 0
    assert frames[0].time_utc == parse_utc("2019-11-18T23:45:14Z")
    # 315 frames at 29.97 fps: the last one is 314 / 29.97 s after the first.
    assert frames[-1].time_utc - frames[0].time_utc == pytest.approx(314 / 29.97, abs=0.02)
    assert [f.index for f in frames] == list(range(315))


def test_frame_times_csv_overrides_presentation_time(tmp_path):
    root = gopro_drive(tmp_path)
    times = [1_600_000_000.0 + 0.1 * i ** 1.1 for i in range(315)]  # an irregular live camera
    (root / "video" / "000000.csv").write_text(
        "frame,utc\n" + "".join(f"{i},{utc_iso(t)}\n" for i, t in enumerate(times)))
    write_manifest(root, [{"file": "video/000000.mp4", "start_utc": utc_iso(times[0]),
                           "frame_times": "video/000000.csv"}], "gps.nmea", "calibration.toml")
    frames = list(open_drive(root).frames())
    assert [f.time_utc for f in frames[:5]] == pytest.approx(times[:5], abs=1e-3)  # CSV keeps milliseconds
    assert frames[200].time_utc == pytest.approx(times[200], abs=1e-3)


def test_frame_times_that_end_early_go_on_at_the_frame_rate(tmp_path, caplog):
    """A recording cut off mid-segment can leave more frames in the video than lines in its CSV."""
    root = gopro_drive(tmp_path)
    times = [1_600_000_000.0 + 0.05 * i for i in range(100)]  # 20 fps in the CSV, only the first 100 frames
    (root / "video" / "000000.csv").write_text(
        "frame,utc\n" + "".join(f"{i},{utc_iso(t)}\n" for i, t in enumerate(times)))
    write_manifest(root, [{"file": "video/000000.mp4", "start_utc": utc_iso(times[0]),
                           "frame_times": "video/000000.csv"}], "gps.nmea", "calibration.toml")
    frames = list(open_drive(root).frames())
    assert len(frames) == 315
    t = [f.time_utc for f in frames]
    assert all(b > a for a, b in itertools.pairwise(t))  # still in time order: the replay accepts it
    assert t[99] == pytest.approx(times[99], abs=1e-3)
    assert t[100] - t[99] == pytest.approx(1001 / 30000, rel=1e-3)  # the video's own rate (29.97 fps)
    assert "frame times end at frame 100" in caplog.text


def test_two_segments_have_continuous_indices(tmp_path):
    root = gopro_drive(tmp_path)
    (root / "video" / "000001.mp4").write_bytes((root / "video" / "000000.mp4").read_bytes())
    write_manifest(root, [("video/000000.mp4", 1000.0), ("video/000001.mp4", 1011.0)], "gps.nmea", None)
    frames = list(open_drive(root).frames())
    assert len(frames) == 630
    assert [f.index for f in frames] == list(range(630))
    assert frames[315].time_utc == pytest.approx(1011.0)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.update(format="other"), "format"),
        (lambda m: m.update(version=7), "version"),
        (lambda m: m["video"][0].update(start_utc="yesterday"), r"video\[0\]\.start_utc"),
        (lambda m: m["video"][0].update(start_utc="2019-11-18T23:45:14"), "timezone"),
        (lambda m: m["video"][0].update(file="video/missing.mp4"), r"video\[0\]\.file"),
        (lambda m: m.update(gps="nope.nmea"), "gps"),
        (lambda m: m.update(gps=5), "gps: expected a non-empty string, got 5"),
        (lambda m: m.update(calibration=["x"]), "calibration: expected a non-empty string"),
        (lambda m: m["video"][0].update(start_utc=12345), r"video\[0\]\.start_utc: expected a non-empty string"),
        (lambda m: m["video"][0].update(file=None), r"video\[0\]\.file: expected a non-empty string, got None"),
        (lambda m: m["video"][0].update(frame_times=5), r"video\[0\]\.frame_times: expected a non-empty string"),
        (lambda m: m.update(stills="stills"), r"stills: expected \{folder, start_utc\}"),
        (lambda m: m.update(stills={"start_utc": "2019-11-18T23:45:14Z"}), "stills.folder: expected"),
        (lambda m: m.update(stills={"folder": "s", "start_utc": "garbage"}), "stills.start_utc"),
        (lambda m: m.update(stills={"folder": "s"}), "stills.start_utc: required when .* has no timestamps.csv"),
        (lambda m: m.update(stills={"folder": "s", "start_utc": "2019-11-18T23:45:14Z", "interval_s": 0}),
         r"stills.interval_s: not a number of seconds in \(0, 3600\] \(got 0\)"),
        (lambda m: m.update(time_offset_s="nan"), "time_offset_s: not a number of seconds"),
    ],
)
def test_bad_manifests_name_the_field(tmp_path, mutate, message):
    root = gopro_drive(tmp_path)
    m = json.loads((root / "manifest.json").read_text())
    mutate(m)
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DriveError, match=message) as exc:
        open_drive(root)
    assert str(exc.value).count("manifest.json") == 1 and "\n" not in str(exc.value)  # named once, one line


def test_stills_are_spaced_by_the_manifest_or_the_replay_config(tmp_path):
    root = tmp_path / "stills-drive"
    (root / "stills").mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(root / "stills" / f"{i:03d}.jpg"), np.full((48, 64, 3), 40 * i, np.uint8))
    (root / "gps.nmea").write_text("")
    m = {"format": "patrol-drive", "version": 1, "gps": "gps.nmea",
         "stills": {"folder": "stills", "start_utc": "2019-11-18T23:45:14Z"}}
    (root / "manifest.json").write_text(json.dumps(m))
    t0 = 1574120714.0
    assert [f.time_utc - t0 for f in open_drive(root).frames(stills_interval_s=0.5)] == [0.0, 0.5, 1.0]
    m["stills"]["interval_s"] = 2.5  # the drive's own spacing wins over the config's
    (root / "manifest.json").write_text(json.dumps(m))
    assert [f.time_utc - t0 for f in open_drive(root).frames(stills_interval_s=0.5)] == [0.0, 2.5, 5.0]


def test_bytes_that_are_not_utf8_are_named(tmp_path):
    root = gopro_drive(tmp_path)
    (root / "manifest.json").write_bytes(b'{"format": "patrol-drive", "vehicle_id": "\xff"}')
    with pytest.raises(DriveError, match=r"manifest\.json: not valid JSON"):
        open_drive(root)
    m = json.loads(json.dumps({"format": "patrol-drive", "version": 1, "gps": "gps.nmea",
                               "video": [{"file": "video/000000.mp4", "start_utc": "2019-11-18T23:45:14Z",
                                          "frame_times": "t.csv"}]}))
    (root / "manifest.json").write_text(json.dumps(m))
    (root / "t.csv").write_bytes(b"frame,utc\n0,2019-11-18T23:45:14Z\n1,\xff\n")
    with pytest.raises(DriveError, match=r"t\.csv:3: bad frame time"):
        open_drive(root)
    (root / "t.csv").write_bytes(b"frame,utc\n0,2019-11-18T23:45:14Z\n1,2019-11-18T23:45:13Z\n")
    with pytest.raises(DriveError, match=r"t\.csv:3: frame time goes backwards"):
        open_drive(root)


def test_not_a_drive(tmp_path):
    with pytest.raises(DriveError, match="manifest missing"):
        open_drive(tmp_path)
    with pytest.raises(DriveError, match="not found"):
        open_drive(tmp_path / "nowhere")


def test_a_file_given_as_the_drive_is_named_as_not_a_folder(tmp_path) -> None:
    f = tmp_path / "README.md"
    f.write_text("x")
    with pytest.raises(DriveError, match=r"README\.md: not a folder \(a drive is a folder with a manifest\.json\)"):
        open_drive(f)
    with pytest.raises(DriveError, match=r"nope: drive folder not found"):
        open_drive(tmp_path / "nope")
