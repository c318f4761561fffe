"""``patrol``: argument parsing only; each command calls one function.

Exit codes: 0 success, 1 bad input (a one-line error naming the file, field or frame), 2 invalid configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
from pathlib import Path

from vehicle.arguments import one_line, seconds

os.environ.setdefault("YOLO_OFFLINE", "1")  # never let ultralytics (training extras) reach for the network
# FFmpeg's own stderr chatter would break the one-line error contract; decode problems are counted instead.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # its "[ WARN ] cannot open camera": we log our own line

EXIT_INPUT = 1
EXIT_CONFIG = 2


def _replay(args: argparse.Namespace) -> int:
    from vehicle.app import ReplayOptions, replay

    counters = replay(ReplayOptions(
        drive_dir=Path(args.drive_dir), config_file=Path(args.config) if args.config else None,
        realtime=args.realtime, out=args.out or "", save_detections=Path(args.save_detections)
        if args.save_detections else None, detections=Path(args.detections) if args.detections else None,
        state_dir=Path(args.state) if args.state else None, no_mqtt=args.no_mqtt,
        flush_timeout_s=args.flush_timeout_s,
    ))
    # stopped by a signal: not the whole drive, say so the shell's way (128 + signal)
    return 0 if counters.interrupted_by is None else 128 + counters.interrupted_by


def _run(args: argparse.Namespace) -> int:
    from vehicle.app import run_live

    return run_live(Path(args.config))


def _check_config(args: argparse.Namespace) -> int:
    from vehicle.app import check_config

    print(check_config(Path(args.config), args.replay))
    return 0


def _record(args: argparse.Namespace) -> int:
    from vehicle.recorder import record

    return record(Path(args.config), Path(args.out), args.duration_s, args.segment_s)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(prog="patrol", description="Smart patrol vehicle: onboard detection and reporting")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the onboard service: camera + GPS -> events over MQTT")
    p.add_argument("--config", required=True, help="TOML configuration file")
    p.set_defaults(func=_run)

    p = sub.add_parser("replay", help="replay a recorded drive through the same pipeline")
    p.add_argument("drive_dir", help="drive folder (manifest.json, video, GPS log)")
    p.add_argument("--config", help="TOML configuration (default: built-in defaults)")
    p.add_argument("--realtime", action="store_true", help="pace frames as recorded instead of as fast as possible")
    p.add_argument("--out", help="append events as JSON lines to this file ('-': stdout)")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--save-detections", metavar="F.jsonl", help="write per-frame detections for later replays")
    cache.add_argument("--detections", metavar="F.jsonl", help="replay cached detections instead of running the model")
    p.add_argument("--state", metavar="DIR", help="dedup index + outbox folder to reuse (default: a fresh one)")
    p.add_argument("--no-mqtt", action="store_true", help="do not connect to a broker")
    p.add_argument("--flush-timeout-s", type=seconds(0.0), default=30.0,
                   help="wait this long for the broker at the end")
    p.set_defaults(func=_replay)

    p = sub.add_parser("record", help="record a drive folder from the live camera and gpsd")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="drive folder to create")
    p.add_argument("--duration-s", type=seconds(0.0), default=0.0, help="stop after this long (0: until Ctrl-C)")
    p.add_argument("--segment-s", type=seconds(1.0), default=300.0, help="start a new video file this often")
    p.set_defaults(func=_record)

    p = sub.add_parser("check-config", help="validate a configuration file and the files it names")
    p.add_argument("config")
    p.add_argument("--replay", action="store_true", help="a replay's config: no camera or GPS source needed")
    p.set_defaults(func=_check_config)

    for module, adder in (("vehicle.calibrate", "add_calibrate_parser"), ("vehicle.centre", "add_centre_parser"),
                          ("vehicle.evaluate", "add_eval_parser")):
        try:
            mod = __import__(module, fromlist=[adder])
        except ImportError:
            continue
        getattr(mod, adder)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``patrol``; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from vehicle.app import INPUT_ERRORS
    from vehicle.config import ConfigError

    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"patrol: config error: {one_line(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    except INPUT_ERRORS as exc:
        print(f"patrol: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `patrol replay --out - | head`: the reader left; nothing to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except sqlite3.DatabaseError as exc:  # the state database: disk full, I/O error, read-only
        print(f"patrol: error: state database: {one_line(exc)}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as exc:  # the machine, not the input: still one line
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"patrol: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
