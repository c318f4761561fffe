#!/usr/bin/env python3
"""Build replayable drive folders from the real recordings in ../shared (they are not shipped in the repo).

    python scripts/make_sample_drives.py            # -> var/drives/gopro-max-walk, var/drives/udacity-highway

* gopro-max-walk: a GoPro MAX walk past parked cars with the camera's own GPS (GPMF, ~18 Hz). The video's
  first frame is the first GPS fix's UTC time (``gps.csv``: video_time_s 0 = 2019-11-18T23:45:14Z).
* udacity-highway: a real car camera with a real chessboard calibration, paired with a real highway track
  (genivi Switzerland drive, ~110 km/h) because the video came without GPS. The pairing is synthetic; the
  calibration and both recordings are real.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vehicle.drive import write_manifest  # noqa: E402
from vehicle.frames import parse_utc  # noqa: E402
from vehicle.gps import open_gps_log  # noqa: E402

SHARED = ROOT.parent / "shared"
SWISS_LOG = "gps/genivi-drives/extracted/NMEA_Logs/20100403_Z205_Switzerland.txt"


def _need(path: Path) -> Path:
    if not path.exists():
        sys.exit(f"make_sample_drives: {path} missing (../shared must sit beside the repo)")
    return path


def make_gopro(out: Path) -> Path:
    """The GoPro walk, its own GPS and an estimated calibration."""
    src = SHARED / "drives" / "gopro-max-walk"
    drive = out / "gopro-max-walk"
    (drive / "video").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_need(src / "video.mp4"), drive / "video" / "000000.mp4")
    shutil.copyfile(_need(src / "gps.nmea"), drive / "gps.nmea")
    shutil.copyfile(ROOT / "calibration" / "gopro-max-walk.toml", drive / "calibration.toml")
    with open(src / "gps.csv", newline="") as fh:
        first = next(csv.DictReader(fh))
    start = parse_utc(first["utc"]) - float(first["video_time_s"])
    write_manifest(drive, [("video/000000.mp4", start)], "gps.nmea", "calibration.toml",
                   vehicle_id="gopro-walk", source="../shared/drives/gopro-max-walk (GoPro MAX, GPMF GPS)")
    return drive


def make_udacity(out: Path) -> Path:
    """The Udacity highway clip on a real highway track, with the camera's real calibration."""
    video = _need(SHARED / "drives" / "udacity-highway" / "test_video.mp4")
    calib = ROOT / "calibration" / "udacity-car-camera.toml"
    if not calib.is_file():
        sys.exit(f"make_sample_drives: {calib} missing (made by `patrol calibrate intrinsics`, see calibration/)")
    drive = out / "udacity-highway"
    (drive / "video").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(video, drive / "video" / "000000.mp4")
    shutil.copyfile(_need(SHARED / SWISS_LOG), drive / "gps.nmea")
    shutil.copyfile(calib, drive / "calibration.toml")
    fixes = [f for f in open_gps_log(drive / "gps.nmea") if f.fix_mode >= 2 and (f.speed_mps or 0) > 25]
    if not fixes:
        sys.exit(f"make_sample_drives: no highway-speed fix in {SWISS_LOG}")
    start = fixes[len(fixes) // 2].time_utc  # the middle of the fast part of the drive
    write_manifest(drive, [("video/000000.mp4", start)], "gps.nmea", "calibration.toml", vehicle_id="udacity-car",
                   source="video ../shared/drives/udacity-highway + track " + SWISS_LOG + " (paired)")
    return drive


def main(argv: list[str] | None = None) -> int:
    """Build both sample drives."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "var" / "drives"), help="folder to write the drives into")
    args = ap.parse_args(argv)
    out = Path(args.out)
    for make in (make_gopro, make_udacity):
        print(f"wrote {make(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
