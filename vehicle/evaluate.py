"""``patrol eval``: judge a model or a configuration before it goes onto the cars.

Sub-commands (each writes ``report.html``, ``metrics.json`` and GeoJSON into ``--out``):

* ``events DRIVE --truth T.geojson``: replay the drive through the real pipeline (or score a ready
  ``--events`` file) and compare the events with the real objects: precision, recall, duplicate rate,
  location error, events per km, per category; plus the replay's throughput (fps, real-time factor).
* ``ab DRIVE --truth T.geojson``: the same for two configs or two cached-detection files, side by side.
* ``detections --images DIR``: per-class P, R, AP50, AP50-95 (COCO), confusion matrix and PR curves of a
  model (or of saved predictions) on YOLO-labelled images.

The numbers are defined in `vehicle.metrics`, the output in `vehicle.report`; the detections mode lives in
`vehicle.eval_detections`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vehicle.arguments import number, one_line
from vehicle.metrics import (
    EventMatch,
    EventScores,
    PointSet,
    distance_to_track_m,
    event_scores,
    match_events,
    track_length_km,
)
from vehicle.report import Progress

DEFAULT_MATCH_RADIUS_M = 8.0
DEFAULT_NEAR_M = 25.0


class EvalError(ValueError):
    """Bad evaluation input; the message names the file, line or feature."""


# -- inputs ----------------------------------------------------------------------------------------------------


def load_truth(path: str | Path, categories: Collection[str] | None = None) -> tuple[PointSet, list[dict]]:
    """Real objects from a GeoJSON FeatureCollection of Points with a ``category`` property (one of
    ``categories`` when given: a misspelt one would silently score as a miss).

    Returns:
        The points and the features as read (for the report's GeoJSON).
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EvalError(f"{p}: cannot read truth: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalError(f"{p}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection" or not isinstance(doc.get("features"), list):
        raise EvalError(f"{p}: not a GeoJSON FeatureCollection")
    ids, cats, lat, lon = [], [], [], []
    for i, f in enumerate(doc["features"]):
        try:
            if not isinstance(f, dict) or not isinstance(f.get("geometry"), dict):
                raise ValueError("not a Feature with a geometry object")
            geom, props = f["geometry"], f.get("properties") or {}
            if not isinstance(props, dict):
                raise ValueError("properties must be an object")
            if geom.get("type") != "Point":
                raise ValueError(f"geometry type {geom.get('type')!r}, expected Point")
            coords = geom.get("coordinates")
            if not isinstance(coords, list) or len(coords) < 2 or \
                    not all(isinstance(v, int | float) and not isinstance(v, bool) for v in coords[:2]):
                raise ValueError("coordinates must be [lon, lat] numbers")
            x, y = float(coords[0]), float(coords[1])
            if not (-180 <= x <= 180 and -90 <= y <= 90):
                raise ValueError(f"coordinates {x}, {y} are not [lon, lat] degrees")
            cat = props.get("category")
            if not isinstance(cat, str) or not cat:
                raise ValueError("properties.category must be a non-empty string")
            if categories is not None and cat not in categories:
                raise ValueError(f"properties.category {cat!r} is not a category of the taxonomy")
        except (KeyError, TypeError, ValueError) as exc:
            raise EvalError(f"{p}: features[{i}]: {exc}") from None
        ids.append(str(f.get("id", props.get("object_id", f"truth-{i}"))))
        cats.append(cat)
        lat.append(y)
        lon.append(x)
    return PointSet(tuple(ids), tuple(cats), np.array(lat, float), np.array(lon, float)), doc["features"]


def load_events(path: str | Path) -> tuple[PointSet, list[dict]]:
    """Events from a JSON-lines file as ``patrol replay --out`` writes it (one Event per line)."""
    from vehicle.events import Event

    p = Path(path)
    if not p.is_file():
        raise EvalError(f"{p}: events file not found")
    events = []
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                events.append(Event.model_validate_json(line).model_dump(mode="json"))
            except ValueError as exc:
                first = str(exc).splitlines()
                raise EvalError(f"{p}:{lineno}: not an event ({first[0] if first else exc})") from None
    return PointSet(tuple(e["id"] for e in events), tuple(e["properties"]["category"] for e in events),
                    np.array([e["geometry"]["coordinates"][1] for e in events], float),
                    np.array([e["geometry"]["coordinates"][0] for e in events], float)), events


@dataclass(frozen=True)
class Track:
    """The driven track as logged: parallel arrays (degrees, m/s, POSIX seconds)."""

    lat_deg: np.ndarray
    lon_deg: np.ndarray
    speed_mps: np.ndarray
    time_utc: np.ndarray

    @property
    def length_km(self) -> float:
        """Distance driven (standstill noise excluded)."""
        return track_length_km(self.lat_deg, self.lon_deg, self.speed_mps)


def load_track_log(path: str | Path) -> Track:
    """Position fixes of a GPS log (NMEA or gpsd JSON)."""
    from vehicle.gps import open_gps_log

    fixes = [f for f in open_gps_log(path) if f.has_position]
    if not fixes:
        raise EvalError(f"{path}: no position fix in the GPS log")
    speed = np.array([np.nan if f.speed_mps is None else f.speed_mps for f in fixes])
    return Track(np.array([f.lat_deg for f in fixes]), np.array([f.lon_deg for f in fixes]), speed,
                 np.array([f.time_utc for f in fixes]))


# -- replay ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    """How fast a replay ran: frames per second of wall time and drive seconds per wall second."""

    frames: int
    wall_s: float
    drive_s: float

    @property
    def fps(self) -> float:
        """Frames per second of wall time."""
        return self.frames / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def realtime_factor(self) -> float:
        """Seconds of drive replayed per second of wall time (> 1: faster than the car records)."""
        return self.drive_s / self.wall_s if self.wall_s > 0 else math.nan

    def as_dict(self) -> dict:
        """Plain numbers for JSON."""
        return {"frames": self.frames, "wall_s": round(self.wall_s, 3), "drive_s": round(self.drive_s, 3),
                "fps": round(self.fps, 2), "realtime_factor": round(self.realtime_factor, 3)}


def _detections_span(path: Path) -> tuple[int, float]:
    """Frames in a cached-detections file and the time from its first to its last frame."""
    frames, first, last = 0, None, None
    with path.open(encoding="utf-8") as fh:
        fh.readline()
        for line in fh:
            if not line.strip():
                continue
            frames += 1
            # time_utc sits near the start of each line: avoid a full JSON parse of big lines
            k = line.find('"time_utc":')
            t = float(line[k + 11:].split(",", 1)[0]) if k >= 0 else None
            if t is not None:
                first = t if first is None else first
                last = t
    return frames, (last - first) if first is not None and last is not None else 0.0


def _watch_read_offset(path: Path, total: int, progress: Progress, stop: threading.Event) -> None:
    """Progress of a replay from the read offset of its detections file (/proc/self/fdinfo; Linux only)."""
    target = os.path.realpath(path)
    fd_dir = Path("/proc/self/fd")
    while not stop.wait(0.3):
        try:
            for fd in fd_dir.iterdir():
                if os.path.realpath(fd) == target:
                    pos = int((Path("/proc/self/fdinfo") / fd.name).read_text().split()[1])
                    progress.update(min(pos, total))
                    break
        except (OSError, ValueError, IndexError):
            continue


def run_replay(drive_dir: Path, out_dir: Path, label: str, config: Path | None = None,
               detections: Path | None = None, progress: bool = True) -> tuple[Path, Throughput]:
    """Replay a drive through the real pipeline (no MQTT, fresh state under ``out_dir``).

    Returns:
        The events file written and the replay's throughput.
    """
    from vehicle.app import ReplayOptions, replay
    from vehicle.drive import open_drive

    drive = open_drive(drive_dir)
    det = detections or (drive.detections_file if not drive.segments and not drive.stills else None)
    work = out_dir / f"replay-{label}"
    events_file = work / "events.jsonl"
    if work.exists():
        shutil.rmtree(work)  # a dedup index left by an earlier run would swallow every event
    work.mkdir(parents=True)
    bar = Progress(f"replay {label}", det.stat().st_size if det else None, progress)
    stop = threading.Event()
    watcher = None
    if det is not None and progress:
        watcher = threading.Thread(target=_watch_read_offset, args=(det, det.stat().st_size, bar, stop), daemon=True)
        watcher.start()
    t0 = time.monotonic()
    try:
        counters = replay(ReplayOptions(drive_dir=drive_dir, config_file=config, out=str(events_file),
                                        detections=det, state_dir=work / "state", no_mqtt=True,
                                        summary=not progress))  # its summary line would run into the bar
    finally:
        stop.set()
        if watcher is not None:
            watcher.join(1.0)
    wall = time.monotonic() - t0
    bar.close()
    if det is not None:
        _, drive_s = _detections_span(det)
    else:
        track = load_track_log(drive.gps_file) if drive.gps_file else None
        drive_s = float(track.time_utc[-1] - track.time_utc[0]) if track is not None else math.nan
    events_file.touch()
    return events_file, Throughput(counters.frames, wall, drive_s)


# -- events ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventEvaluation:
    """One run's events scored against the truth."""

    label: str
    overall: EventScores
    per_category: tuple[EventScores, ...]
    match: EventMatch
    events: PointSet
    event_docs: tuple[dict, ...]
    km_driven: float
    throughput: Throughput | None

    @property
    def events_per_km(self) -> float:
        """Events published per km driven."""
        return len(self.events) / self.km_driven if self.km_driven > 0 else math.nan

    def as_dict(self) -> dict:
        """The numbers, for metrics.json."""
        return {"label": self.label, "km_driven": round(self.km_driven, 3),
                "events_per_km": None if math.isnan(self.events_per_km) else round(self.events_per_km, 4),
                "overall": self.overall.as_dict(), "per_category": [c.as_dict() for c in self.per_category],
                "throughput": None if self.throughput is None else self.throughput.as_dict()}


def evaluate_events(label: str, events: PointSet, event_docs: list[dict], truth: PointSet, track: Track,
                    radius_m: float = DEFAULT_MATCH_RADIUS_M, near_m: float = DEFAULT_NEAR_M,
                    throughput: Throughput | None = None) -> EventEvaluation:
    """Match events to the truth and score them overall and per category.

    Args:
        label: the run's name in the report.
        events: published events.
        event_docs: the same events as dicts (kept for the GeoJSON output).
        truth: the real objects.
        track: the driven track (km driven; which objects passed within ``near_m`` of the camera).
        radius_m: an event farther than this from an object of its category does not match it.
        near_m: objects within this distance of the track count as "near" for the near location error.
        throughput: the replay's speed, when it was run here.
    """
    m = match_events(events, truth, radius_m)
    near = distance_to_track_m(truth, track.lat_deg, track.lon_deg) <= near_m
    cats = sorted(set(truth.category) | set(events.category))
    per_cat = tuple(event_scores(events, truth, m, near, c) for c in cats)
    return EventEvaluation(label, event_scores(events, truth, m, near), per_cat, m, events, tuple(event_docs),
                           track.length_km, throughput)


def make_out_folder(out_dir: Path) -> None:
    """Create the report folder (``--out``); an `EvalError` naming it when it cannot be one."""
    if out_dir.exists() and not out_dir.is_dir():
        raise EvalError(f"{out_dir}: --out is a file; the report needs a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvalError(f"{out_dir}: --out: cannot create the report folder: {exc.strerror or exc}") from None


def write_json(path: Path, doc: object) -> None:
    path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def clean_json(obj: object) -> object:
    """NaN -> None, numpy -> Python, recursively (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _taxonomy_names(config: Path | None) -> list[str] | None:
    """The category names the (first) run's config uses; None when the config cannot be read (the replay then
    reports that, naming the key)."""
    from vehicle.categories import Taxonomy, TaxonomyError
    from vehicle.config import Config, ConfigError, load_config, resolve_path

    try:
        cfg = load_config(config) if config is not None else Config()
        base = config.resolve().parent if config is not None else Path.cwd()
        return list(Taxonomy.load(resolve_path(cfg.detector.categories_file, base)).names)
    except (ConfigError, TaxonomyError, OSError):
        return None


def eval_events(drive_dir: Path, truth_file: Path, out_dir: Path, runs: list[tuple[str, Path | None, Path | None]],
                events_files: list[Path] | None = None, radius_m: float = DEFAULT_MATCH_RADIUS_M,
                near_m: float = DEFAULT_NEAR_M, progress: bool = True) -> dict:
    """Replay (or take ready events files) and write the report; returns the metrics document.

    Args:
        drive_dir: the drive folder (its GPS log is the driven track).
        truth_file: GeoJSON of the real objects.
        out_dir: where report.html, metrics.json and the GeoJSON files go.
        runs: (label, config, detections) per replay; two runs make an A/B report.
        events_files: score these events files instead of replaying (one per label in ``runs``).
        radius_m: matching radius.
        near_m: "near the camera" distance.
        progress: show progress bars on stderr.
    """
    from vehicle.drive import open_drive
    from vehicle.report import events_geojson, track_geojson, truth_geojson, write_events_report

    drive = open_drive(drive_dir)
    if drive.gps_file is None:
        raise EvalError(f"{drive_dir}: the drive has no GPS log")
    truth, truth_features = load_truth(truth_file, _taxonomy_names(runs[0][1] if runs else None))
    track = load_track_log(drive.gps_file)
    make_out_folder(out_dir)
    evals = []
    for k, (label, config, detections) in enumerate(runs):
        if events_files:
            events_file, tp = events_files[k], None
        else:
            events_file, tp = run_replay(drive_dir, out_dir, label, config, detections, progress)
        events, docs = load_events(events_file)
        ev = evaluate_events(label, events, docs, truth, track, radius_m, near_m, tp)
        evals.append(ev)
        suffix = "" if len(runs) == 1 else f"-{label}"
        write_json(out_dir / f"events{suffix}.geojson", clean_json(events_geojson(ev, truth)))
        write_json(out_dir / f"truth{suffix}.geojson", clean_json(truth_geojson(ev, truth_features)))
    write_json(out_dir / "track.geojson", track_geojson(track))
    doc = {"kind": "events" if len(evals) == 1 else "ab", "drive": str(drive_dir), "truth": str(truth_file),
           "match_radius_m": radius_m, "near_m": near_m, "runs": [e.as_dict() for e in evals]}
    if len(evals) == 2:
        doc["deltas"] = ab_deltas(evals[0], evals[1])
    doc = clean_json(doc)
    write_json(out_dir / "metrics.json", doc)
    write_events_report(out_dir / "report.html", doc, evals, truth, track)
    return doc


AB_KEYS = ("matched", "precision", "recall", "duplicate_rate", "error_median_m", "error_p90_m", "error_near_median_m",
           "events", "false_events", "duplicates")


def ab_deltas(a: EventEvaluation, b: EventEvaluation) -> dict:
    """B minus A for the headline numbers (overall, throughput and events per km)."""
    out = {}
    da, db = a.overall.as_dict(), b.overall.as_dict()
    for k in AB_KEYS:
        out[k] = None if da[k] is None or db[k] is None else db[k] - da[k]
    out["events_per_km"] = b.events_per_km - a.events_per_km
    if a.throughput is not None and b.throughput is not None:
        out["fps"] = b.throughput.fps - a.throughput.fps
        out["realtime_factor"] = b.throughput.realtime_factor - a.throughput.realtime_factor
    return out


# -- command line ----------------------------------------------------------------------------------------------


def _print_summary(doc: dict, out: Path) -> None:
    if doc["kind"] == "detections":
        m = doc["mean"]
        print(json.dumps({"report": str(out / "report.html"), **m}))
        return
    for r in doc["runs"]:
        o = r["overall"]
        print(json.dumps({"label": r["label"], "precision": o["precision"], "recall": o["recall"],
                          "duplicate_rate": o["duplicate_rate"], "error_median_m": o["error_median_m"],
                          "error_near_median_m": o["error_near_median_m"], "events_per_km": r["events_per_km"],
                          "fps": (r["throughput"] or {}).get("fps"), "report": str(out / "report.html")}))


def _one_line_errors(cmd):
    """`vehicle.cli` turns the app's input errors into one line and exit 1; do the same for `EvalError`."""
    def run(args: argparse.Namespace) -> int:
        try:
            return cmd(args)
        except EvalError as exc:
            print(f"patrol: error: {one_line(exc)}", file=sys.stderr)
            return 1

    return run


@_one_line_errors
def _cmd_events(args: argparse.Namespace) -> int:
    out = Path(args.out)
    doc = eval_events(Path(args.drive_dir), Path(args.truth), out,
                      [(args.label, _opt_path(args.config), _opt_path(args.detections))],
                      [Path(args.events)] if args.events else None, args.match_radius_m, args.near_m,
                      not args.no_progress)
    _print_summary(doc, out)
    return 0


@_one_line_errors
def _cmd_ab(args: argparse.Namespace) -> int:
    out = Path(args.out)
    runs = [(args.a_label, _opt_path(args.a_config), _opt_path(args.a_detections)),
            (args.b_label, _opt_path(args.b_config), _opt_path(args.b_detections))]
    if bool(args.a_events) != bool(args.b_events):  # scoring one file against a replay would compare unlike runs
        print("patrol eval ab: error: --a-events and --b-events go together (give both or neither)", file=sys.stderr)
        return 2
    for side in ("a", "b"):  # an events file is scored as it is: a config or detections file would be ignored
        if getattr(args, f"{side}_events") and (getattr(args, f"{side}_config") or getattr(args, f"{side}_detections")):
            print(f"patrol eval ab: error: --{side}-events is scored as it is: drop --{side}-config and "
                  f"--{side}-detections, or replay instead of --{side}-events", file=sys.stderr)
            return 2
    events = [Path(args.a_events), Path(args.b_events)] if args.a_events else None
    doc = eval_events(Path(args.drive_dir), Path(args.truth), out, runs, events, args.match_radius_m, args.near_m,
                      not args.no_progress)
    _print_summary(doc, out)
    return 0


@_one_line_errors
def _cmd_detections(args: argparse.Namespace) -> int:
    out = Path(args.out)
    names = None
    if args.names:
        names = [n.strip() for n in args.names.split(",")]
    elif args.data:
        names = _names_from_data_yaml(Path(args.data))
    from vehicle.eval_detections import eval_detections

    doc = eval_detections(Path(args.images), out, names, _opt_path(args.labels), _opt_path(args.model),
                          _opt_path(args.predictions), args.max_dets, args.conf, args.iou, not args.no_progress)
    _print_summary(doc, out)
    return 0


def _names_from_data_yaml(path: Path) -> list[str]:
    """Class names from an ultralytics dataset yaml (``names`` as a list or an id -> name mapping)."""
    import yaml

    if not path.is_file():
        raise EvalError(f"{path}: dataset yaml not found (the patrol13 dataset: .venv/bin/python "
                        "scripts/build_dataset.py)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise EvalError(f"{path}: not a readable dataset yaml ({str(exc).splitlines()[0]})") from None
    raw = data.get("names") if isinstance(data, dict) else None
    if not raw or not isinstance(raw, (dict, list)):
        raise EvalError(f"{path}: no 'names' (list, or id -> name mapping) in the dataset yaml")
    try:
        return [str(raw[k]) for k in sorted(raw)] if isinstance(raw, dict) else [str(n) for n in raw]
    except TypeError:
        raise EvalError(f"{path}: 'names' keys must be class ids") from None


def _opt_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def add_eval_parser(subparsers) -> None:
    """Register ``patrol eval`` (events, ab, detections) on the ``patrol`` sub-command parser."""
    p = subparsers.add_parser("eval", help="evaluate a model or config: events vs truth, A/B, detection mAP")
    sub = p.add_subparsers(dest="eval_mode", required=True)

    metres = number(0, 10_000, low_open=True, unit="m")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("drive_dir", help="drive folder (its GPS log is the driven track)")
        q.add_argument("--truth", required=True, help="GeoJSON FeatureCollection of real objects (category)")
        q.add_argument("--out", required=True, help="report folder")
        q.add_argument("--match-radius-m", type=metres, default=DEFAULT_MATCH_RADIUS_M)
        q.add_argument("--near-m", type=metres, default=DEFAULT_NEAR_M, help="'near the camera' distance")
        q.add_argument("--no-progress", action="store_true")

    q = sub.add_parser("events", help="replay a drive and score its events against ground truth")
    common(q)
    q.add_argument("--config", help="TOML configuration for the replay")
    q.add_argument("--detections", help="cached detections (default: the drive's, when it has no video)")
    q.add_argument("--events", help="score this events file (patrol replay --out) instead of replaying")
    q.add_argument("--label", default="run")
    q.set_defaults(func=_cmd_events)

    q = sub.add_parser("ab", help="two configs or two detection files on the same drive, side by side")
    common(q)
    for side in ("a", "b"):
        q.add_argument(f"--{side}-config")
        q.add_argument(f"--{side}-detections")
        q.add_argument(f"--{side}-events", help="score this events file instead of replaying")
        q.add_argument(f"--{side}-label", default=side.upper())
    q.set_defaults(func=_cmd_ab)

    q = sub.add_parser("detections", help="COCO P/R/AP50/AP50-95 on YOLO-labelled images")
    q.add_argument("--images", required=True, help="folder of images")
    q.add_argument("--labels", help="folder of YOLO txt labels (default: ../labels beside images)")
    q.add_argument("--model", help="ONNX model to run")
    q.add_argument("--predictions", help="folder of YOLO txt predictions with a score column")
    q.add_argument("--names", help="class names by id, comma-separated")
    q.add_argument("--data", help="ultralytics data.yaml to take class names from")
    q.add_argument("--max-dets", type=int, default=100)
    q.add_argument("--conf", type=number(0, 1), default=0.25, help="confusion matrix score threshold")
    q.add_argument("--iou", type=number(0, 1, low_open=True), default=0.5, help="confusion matrix IoU threshold")
    q.add_argument("--out", required=True, help="report folder")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=_cmd_detections)
