"""`patrol record` with real parts: a real video as the camera and a real gpsd fed by gpsfake."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT, shared_path
from tests.gpsd import running_gpsd
from vehicle.drive import open_drive
from vehicle.gps import GpsdReader, PoseTrack, load_track
from vehicle.recorder import record

pytestmark = pytest.mark.integration


def _walk_config(tmp_path, vehicle_id: str, gpsd_port: int):
    """A car config recording the GoPro walk's video, as its camera, with fixes from gpsd on ``gpsd_port``."""
    video = shared_path("drives", "gopro-max-walk", "video.mp4")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'vehicle_id = "{vehicle_id}"\n[camera]\nsource = "{video}"\n'
                   f'calibration_file = "{REPO_ROOT / "calibration" / "gopro-max-walk.toml"}"\n'
                   f"[gps]\ngpsd_port = {gpsd_port}\n")
    return cfg


def _wait_for_fixes(port: int) -> None:
    """Until gpsd serves fixes: recording starts with the first fix, and a loaded machine could otherwise see the
    whole file camera go by before gpsfake has fed gpsd anything."""
    probe = PoseTrack(max_fix_age_s=3.0)
    reader = GpsdReader(probe, port=port, poll_s=0.05)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while probe.latest is None:
            assert time.monotonic() < deadline, "gpsfake never served a fix"
            time.sleep(0.05)
    finally:
        reader.stop()


def test_record_writes_a_replayable_drive(tmp_path):
    log = shared_path("drives", "gopro-max-walk", "gps.nmea")
    with running_gpsd(log, tmp_path / "gpsd", cycle_s=0.01) as gpsd:
        cfg = _walk_config(tmp_path, "rec-1", gpsd.port)
        _wait_for_fixes(gpsd.port)
        out = tmp_path / "drive"
        assert record(cfg, out, duration_s=0.0, segment_s=1.0, fps=30.0) == 0
    drive = open_drive(out)
    m = json.loads((out / "manifest.json").read_text())
    assert m["vehicle_id"] == "rec-1" and len(drive.segments) == len(m["video"]) >= 1
    frames = list(drive.frames())
    # Every frame of the source from the recorder's first fix on (its own gpsd client needs a moment), across segments.
    assert 250 <= len(frames) <= 315, len(frames)
    # Each frame keeps its own capture time from the segment's CSV.
    assert all(s.frame_times_utc is not None for s in drive.segments)
    assert [f.index for f in frames] == list(range(len(frames)))
    assert all(b.time_utc >= a.time_utc for a, b in itertools.pairwise(frames))
    # The GPS log was written as gpsd JSON and reads back as the walk's real fixes.
    track = load_track(out / "gps.json")
    # A file camera is delivered at its own pace and stamped by the GNSS clock, like a live camera: the frames
    # fall on the recorded fixes (read as fast as it decoded, it was stamped by the system clock: no pose at all).
    posed = sum(track.pose_at(f.time_utc) is not None for f in frames)
    assert posed >= 0.9 * len(frames), posed
    first = track.latest
    assert first is not None and 33.12 < first.lat_deg < 33.13 and -117.33 < first.lon_deg < -117.32
    assert (out / "calibration.toml").read_text() == (REPO_ROOT / "calibration" / "gopro-max-walk.toml").read_text()


# The child records the real video through `record`, then cuts its own power (SIGKILL) at frame 200, with the
# segment open: the camera is the one part replaced (a file source would end by itself, a live one cannot run here).
_POWER_CUT = """
import os, signal, sys
from pathlib import Path
import vehicle.recorder as recorder
from vehicle.frames import VideoFileSource

def camera(spec, start_utc, *args, **kwargs):
    for frame in VideoFileSource(Path(spec), start_utc):
        if frame.index == 200:
            os.kill(os.getpid(), signal.SIGKILL)
        yield frame

recorder.open_source = camera
recorder.record(Path(sys.argv[1]), Path(sys.argv[2]), segment_s=3600.0, fps=30.0)
"""


def test_a_power_cut_keeps_the_segment_being_written(tmp_path):
    log = shared_path("drives", "gopro-max-walk", "gps.nmea")
    with running_gpsd(log, tmp_path / "gpsd", cycle_s=0.01) as gpsd:
        cfg = _walk_config(tmp_path, "rec-2", gpsd.port)
        _wait_for_fixes(gpsd.port)
        out = tmp_path / "drive"
        done = subprocess.run([sys.executable, "-c", _POWER_CUT, str(cfg), str(out)], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert [s["file"] for s in m["video"]] == ["video/000000.mkv"]  # listed before it was finished
    rows = (out / "video" / "000000.csv").read_text().splitlines()
    written = len(rows) - 1  # every frame's time, flushed as written (from the recorder's first fix on)
    assert rows[0] == "frame,utc" and 140 <= written <= 200, written
    frames = list(open_drive(out).frames())
    # The file was never closed: what reads back is all but the muxer's last unwritten cluster (an MP4 here
    # reads back nothing at all).
    assert written - 60 <= len(frames) <= written, (len(frames), written)
    assert [f.index for f in frames] == list(range(len(frames)))
    assert all(b.time_utc >= a.time_utc for a, b in itertools.pairwise(frames))  # never back (held if the clock steps)
