#!/usr/bin/env python3
"""Simulate a drive with known truth: a drive folder for `patrol replay --detections` and `patrol eval events`.

The route is a real GPS track (default: the Munich city drive in ../shared), driven back and forth to reach
``--length-km``; objects stand 3-15 m left or right of it; boxes are projected through ``--calibration``.
See `vehicle.simulate` for the model and the files written.

Examples::

    python scripts/simulate_drive.py /tmp/sim20 --length-km 20 --objects 400 --gps-sigma-m 2 \\
        --box-jitter 0.05 --miss-prob 0.1 --fp-fraction 0.02
    patrol eval events /tmp/sim20 --truth /tmp/sim20/truth.geojson --out /tmp/sim20-report
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from vehicle.geometry import CalibrationError, CameraCalibration  # noqa: E402
from vehicle.gps import GpsLogError  # noqa: E402
from vehicle.simulate import SimSettings, SimulationError, load_route, simulate_drive  # noqa: E402

SHARED = Path(os.environ.get("PATROL_SHARED", REPO_ROOT.parent / "shared"))
DEFAULT_ROUTE = SHARED / "gps" / "genivi-drives" / "extracted" / "logs_v1" / "munich-gps.nmea"
SWITZERLAND_ROUTE = SHARED / "gps" / "genivi-drives" / "extracted" / "NMEA_Logs" / "20100403_Z205_Switzerland.txt"
DEFAULT_CALIBRATION = REPO_ROOT / "calibration" / "default-roof-1080p.toml"


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    d = SimSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="drive folder to write")
    p.add_argument("--route", default=str(DEFAULT_ROUTE),
                   help="NMEA track to drive ('switzerland' for the 240 km Swiss log; default: Munich city)")
    p.add_argument("--calibration", default=str(DEFAULT_CALIBRATION), help="camera calibration TOML")
    p.add_argument("--length-km", type=float, help="drive this far (back and forth along the route)")
    p.add_argument("--fps", type=float, default=d.fps)
    p.add_argument("--speed-kmh", type=float, default=d.speed_kmh)
    p.add_argument("--stop-every-m", type=float, default=d.stop_every_m,
                   help="stop-and-go: mean distance between stops (0: none)")
    p.add_argument("--gps-hz", type=float, default=d.gps_hz)
    p.add_argument("--gps-sigma-m", type=float, default=d.gps_sigma_m, help="GPS error sigma per axis, metres")
    p.add_argument("--gps-corr-s", type=float, default=d.gps_corr_s, help="GPS error correlation time (0: white)")
    p.add_argument("--objects", type=int, default=d.objects)
    p.add_argument("--categories", default=",".join(d.categories), help="comma-separated categories")
    p.add_argument("--box-jitter", type=float, default=d.box_jitter, help="box noise, fraction of its size")
    p.add_argument("--miss-prob", type=float, default=d.miss_prob)
    p.add_argument("--fp-fraction", type=float, default=d.fp_fraction, help="false boxes / all boxes")
    p.add_argument("--occlusion-prob", type=float, default=d.occlusion_prob)
    p.add_argument("--max-range-m", type=float, default=d.max_range_m)
    p.add_argument("--seed", type=int, default=d.seed)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the simulator; returns the exit code."""
    args = build_parser().parse_args(argv)
    route_file = SWITZERLAND_ROUTE if args.route == "switzerland" else Path(args.route)
    try:
        if not route_file.is_file():
            raise SimulationError(f"{route_file}: route file not found (is ../shared beside the repo?)")
        settings = SimSettings(
            length_km=args.length_km, fps=args.fps, speed_kmh=args.speed_kmh, stop_every_m=args.stop_every_m,
            gps_hz=args.gps_hz, gps_sigma_m=args.gps_sigma_m, gps_corr_s=args.gps_corr_s, objects=args.objects,
            categories=tuple(c.strip() for c in args.categories.split(",") if c.strip()),
            box_jitter=args.box_jitter, miss_prob=args.miss_prob, fp_fraction=args.fp_fraction,
            occlusion_prob=args.occlusion_prob, max_range_m=args.max_range_m, seed=args.seed)
        calib = CameraCalibration.load(args.calibration)
        result = simulate_drive(load_route(route_file), calib, settings, args.out, progress=True)
    except (SimulationError, CalibrationError, GpsLogError) as exc:
        print(f"simulate_drive: error: {exc}", file=sys.stderr)
        return 1
    print(f"simulate_drive: {result.drive_dir}: {result.length_km:.1f} km, {result.frames} frames "
          f"({result.duration_s / 60:.1f} min), {result.objects} objects, {result.true_boxes} true + "
          f"{result.false_boxes} false boxes in {result.elapsed_s:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
