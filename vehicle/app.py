"""Builds a run from the config and the command line: live (`run`), `replay`, `record`, `check-config`.

Every user-facing failure is raised as one of `INPUT_ERRORS` with a one-line message; `vehicle.cli` prints it
and exits non-zero (2 for configuration errors), never with a traceback. Nothing already queued in the
outbox is touched by a failed start.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from vehicle.arguments import same_file
from vehicle.categories import Taxonomy, TaxonomyError
from vehicle.config import Config, ConfigError, DetectorConfig, ObjectDetectorConfig, load_config, resolve_path
from vehicle.dedup import DedupConfigError, DedupIndex, policy_from_taxonomy
from vehicle.detection_log import DetectionLogError, DetectionLogWriter, is_detection_log, read_detection_log
from vehicle.detector import ModelError, load_detector
from vehicle.drive import Drive, DriveError, open_drive, utc_iso
from vehicle.events import ModelRef, Status, StatusState, status_topic
from vehicle.evidence import PhotoError
from vehicle.frames import FrameSourceError, SourceCounters, is_live_spec, open_source
from vehicle.geometry import CalibrationError, CameraCalibration
from vehicle.gps import GnssClock, GpsdReader, GpsLogError, PoseTrack, load_track
from vehicle.mqtt import BrokerSettings, Publisher
from vehicle.outbox import Outbox, OutboxError
from vehicle.pipeline import (
    FrameOrderError,
    ModelStage,
    Pipeline,
    PipelineParts,
    RunCounters,
    committed_progress,
    summary_line,
)
from vehicle.service import SystemdNotifier

log = logging.getLogger(__name__)

class OutputError(ValueError):
    """An output file or folder cannot be written; the message names it."""


INPUT_ERRORS = (ConfigError, TaxonomyError, ModelError, FrameSourceError, DriveError, GpsLogError, CalibrationError,
                DetectionLogError, OutboxError, OutputError, PhotoError, FrameOrderError)


@dataclass(frozen=True)
class ReplayOptions:
    """What `patrol replay` was asked to do."""

    drive_dir: Path
    config_file: Path | None = None
    realtime: bool = False
    out: str = ""  # JSON-lines file of events, '-' for stdout
    save_detections: Path | None = None
    detections: Path | None = None
    state_dir: Path | None = None  # keep dedup + outbox here (resumable); default: a fresh folder
    no_mqtt: bool = False
    flush_timeout_s: float = 30.0
    on_frame: Callable[[RunCounters], None] | None = None  # e.g. a progress bar
    summary: bool = True  # print the one-line summary on stderr at the end


def _first_error(exc: Exception) -> str:
    """The first line of a validation error (pydantic's span several)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        e = errors()[0]
        return f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
    return str(exc).splitlines()[0]


def _load(config_file: Path | None) -> tuple[Config, Path]:
    if config_file is None:
        return Config(), Path.cwd()
    return load_config(config_file), config_file.resolve().parent


def _detectors(
    cfg: Config, base: Path, data_dir: Path, taxonomy: Taxonomy
) -> tuple[ModelStage, ModelRef, ModelRef | None, list[str]]:
    """The detection stage, the model reference of each model (its events name the one that saw them), coverage."""
    d = cfg.detector  # class maps are checked by the callers' config validation (replay, run), before this
    detector = _load_model("detector", d, base, data_dir)
    class_map = {n: d.class_map.get(n, n) for n in detector.names}
    class_map = {k: v for k, v in class_map.items() if taxonomy.get(v) is not None}
    covered = sorted(set(class_map.values()) & set(detector.covered or class_map.values()),
                     key=lambda n: taxonomy[n].id)
    obj = None
    obj_map: dict[str, str] = {}
    if cfg.object_detector.enabled:
        o = cfg.object_detector
        if not o.model_file:
            raise ConfigError("object_detector.model_file: required when object_detector.enabled = true")
        obj = _load_model("object_detector", o, base, data_dir)
        # the taxonomy's object_classes, with the config's class_map on top (a city's own model may name them so)
        obj_map = {k: v for k, v in {**taxonomy.object_class_map(), **o.class_map}.items() if k in obj.names}
        covered = sorted(set(covered) | set(obj_map.values()), key=lambda n: taxonomy[n].id)
    ref = ModelRef(name=detector.name, sha256=detector.sha256)
    obj_ref = None if obj is None else ModelRef(name=obj.name, sha256=obj.sha256)
    return ModelStage(detector, class_map, obj, obj_map), ref, obj_ref, covered


def _load_model(key: str, d: DetectorConfig | ObjectDetectorConfig, base: Path, data_dir: Path):
    """One configured model, loaded; a `ConfigError` naming ``key.model_file`` when it cannot be."""
    trt_cache = resolve_path(d.tensorrt_cache_dir, base, output=True) if d.tensorrt_cache_dir \
        else data_dir / "trt-cache"
    try:
        return load_detector(resolve_path(d.model_file, base), score_threshold=d.score_threshold,
                             iou_threshold=d.iou_threshold, max_detections=d.max_detections,
                             providers=d.providers, intra_op_threads=d.intra_op_threads,
                             tensorrt_fp16=d.tensorrt_fp16, tensorrt_cache_dir=trt_cache)
    except ModelError as exc:
        raise _as_config_error(f"{key}.model_file", exc) from None


def _check_class_maps(cfg: Config, taxonomy: Taxonomy) -> None:
    """Every class_map target is a category of the taxonomy (a typo would silently lose a class)."""
    for key, d in (("detector", cfg.detector), ("object_detector", cfg.object_detector)):
        for name, target in d.class_map.items():
            if taxonomy.get(target) is None:
                raise ConfigError(f"{key}.class_map.{name}: unknown category {target!r} "
                                  f"(not in {cfg.detector.categories_file})")


def _rules(cfg: Config, base: Path, taxonomy: Taxonomy, conn):
    """The rule engine for object-proxy categories, when the config asks for one."""
    if not cfg.object_detector.enabled:
        return None, frozenset()
    from vehicle.rules import RuleEngine, rules_from_config  # only cars that run the object model need it

    settings = rules_from_config(cfg.rules, base, taxonomy)
    return RuleEngine(conn, settings, taxonomy), settings.warning_categories


def _policy(cfg: Config, taxonomy: Taxonomy):
    try:
        return policy_from_taxonomy(taxonomy, cfg.dedup)
    except DedupConfigError as exc:
        raise ConfigError(str(exc)) from None


def _lock_state(state_dir: Path) -> IO[str]:
    """Hold the state folder for this process (released when the returned file closes or the process ends):
    two runs on one dedup index and outbox would each publish what the other already did."""
    if state_dir.exists() and not state_dir.is_dir():
        raise OutputError(f"{state_dir}: is a file, not a state folder")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fh = open(state_dir / "lock", "a+", encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{state_dir}: cannot create the state folder: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise OutputError(f"{state_dir}: in use by another patrol process (pid {holder})") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def _state(cfg: Config, base: Path, taxonomy: Taxonomy, state_dir: Path,
           power_safe: bool = True) -> tuple[Outbox, DedupIndex]:
    policy = _policy(cfg, taxonomy)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{state_dir}: cannot create the state folder: {exc.strerror or exc}") from None
    outbox = Outbox(state_dir / "state.sqlite", cfg.outbox.max_bytes, power_safe=power_safe)
    dedup = DedupIndex(outbox.connection, policy)
    return outbox, dedup


def _fresh_state_dir(parent: Path, name: str) -> Path:
    """A new, empty folder of this replay's own: two replays started in the same second never share one (and
    nothing is ever deleted to make room)."""
    for n in range(1, 1000):
        folder = parent / (name if n == 1 else f"{name}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(f"{folder}: cannot create the state folder: {exc.strerror or exc}") from None
    raise OutputError(f"{parent}: no free state folder name for {name}")


def _offline_status(vehicle_id: str) -> bytes:
    return Status(vehicle_id=vehicle_id, state=StatusState.offline, time=utc_iso(time.time())).to_json()


def _broker_settings(cfg: Config, base: Path) -> BrokerSettings:
    """The broker connection from the config, with every file it names tried as the connection will use it;
    a `ConfigError` naming the key (the caller adds the config file)."""
    settings = BrokerSettings.from_config(cfg.mqtt, cfg.vehicle_id, base)
    tls = cfg.mqtt.tls
    if not tls.enabled:
        return settings
    for key in ("ca_file", "cert_file", "key_file"):
        value = getattr(tls, key)
        if value and not resolve_path(value, base).is_file():
            raise ConfigError(f"mqtt.tls.{key}: {value} not found")
    if tls.ca_file:
        try:
            ssl.create_default_context(cafile=str(resolve_path(tls.ca_file, base)))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"mqtt.tls.ca_file: {tls.ca_file}: not a usable CA bundle ({exc})") from None
    if tls.key_file and not tls.cert_file:
        raise ConfigError("mqtt.tls.cert_file: required with mqtt.tls.key_file")
    if tls.cert_file:
        cert = resolve_path(tls.cert_file, base)
        key = resolve_path(tls.key_file, base) if tls.key_file else None
        try:  # the pair the broker will see; a passphrase-protected key cannot be used unattended (and would
            # make OpenSSL prompt on a terminal)
            ssl.create_default_context().load_cert_chain(cert, key, password=lambda: b"")
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"mqtt.tls.cert_file: {tls.cert_file} with key {tls.key_file or '(in the same file)'}: "
                              f"not a usable client certificate and key ({exc})") from None
    return settings


def _publisher(cfg: Config, base: Path, outbox_path: Path) -> Publisher:
    settings = _broker_settings(cfg, base)
    try:
        pub = Publisher(settings, outbox_path, status_topic(cfg.vehicle_id), _offline_status(cfg.vehicle_id))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"mqtt.tls: cannot use the TLS files: {exc}") from None
    pub.start()
    return pub


class StatusReporter:
    """Called after every frame: pets the systemd watchdog and publishes the retained status periodically."""

    def __init__(self, interval_s: float, publisher: Publisher | None, outbox: Outbox, covered: list[str],
                 source_counters: SourceCounters | None, notifier: SystemdNotifier | None = None):
        self.interval_s = interval_s
        self.publisher, self.outbox, self.covered = publisher, outbox, covered
        self.source_counters = source_counters
        self.notifier = notifier
        self.pipeline: Pipeline | None = None
        self._last = -1e9

    def status(self, state: StatusState = StatusState.online) -> Status:
        """The status message for now."""
        assert self.pipeline is not None
        sc = self.source_counters
        return self.pipeline.status(state, self.pipeline.last_pose, self.outbox.stats(),
                                    sc.dropped_frames if sc else 0, sc.bad_frames if sc else 0, self.covered)

    def __call__(self, counters: RunCounters) -> None:
        if self.notifier is not None:
            self.notifier.watchdog()
        now = time.monotonic()
        if now - self._last < self.interval_s or self.pipeline is None:
            return
        self._last = now
        status = self.status()
        if self.publisher is not None:
            self.publisher.publish_status(status.to_json())
        if self.notifier is not None:
            self.notifier.status(f"frames={counters.frames} events={counters.events} outbox={status.outbox_depth}")


def replay(opts: ReplayOptions) -> RunCounters:
    """Replay a recorded drive through the whole pipeline; returns the run's counters.

    Raises:
        ConfigError: one line naming the config file and the key.
        DriveError, DetectionLogError, ...: bad input (`INPUT_ERRORS`), one line naming the file.
    """
    try:
        return _replay(opts)
    except ConfigError as exc:
        where, msg = str(opts.config_file or "built-in defaults"), str(exc)
        raise ConfigError(msg if msg.startswith(where) else f"{where}: {msg}") from None


def _is_events_file(path: Path) -> bool:
    """Whether ``path`` starts with an event line (a JSON GeoJSON Feature), as ``--out`` writes them."""
    try:
        with open(path, "rb") as fh:
            first = json.loads(fh.readline(1 << 20))
        return isinstance(first, dict) and first.get("type") == "Feature" and isinstance(first.get("properties"), dict)
    except (OSError, ValueError):
        return False


def _check_replay_files(opts: ReplayOptions, drive: Drive, events_file: Path | None) -> None:
    """Refuse, before anything is written, outputs that would destroy an input or each other: an `OutputError`."""
    inputs = [("--detections", opts.detections), ("the drive's GPS log", drive.gps_file),
              ("the drive's calibration", drive.calibration_file)]
    inputs += [("a video segment of the drive", seg.file) for seg in drive.segments]
    outputs = [("--out", Path(opts.out) if opts.out and opts.out != "-" else None),
               ("--save-detections", opts.save_detections), ("output.jsonl_file", events_file)]

    for i, (key, path) in enumerate(outputs):
        if path is None:
            continue
        for other_key, other in inputs + outputs[:i]:
            if other is not None and same_file(path, other):
                raise OutputError(f"{path}: {key} is also {other_key}; choose another file")
    state = opts.state_dir.resolve() if opts.state_dir is not None else None
    if state is not None and drive.root.resolve() in (state, *state.parents):
        raise OutputError(f"{opts.state_dir}: --state is inside the drive {drive.root}; keep the state elsewhere")
    out, saved = outputs[0][1] or outputs[2][1], opts.save_detections
    if out is not None and out.is_file() and out.stat().st_size and not _is_events_file(out):
        # events are appended: a manifest, config, zone file or detections file would be spoilt
        raise OutputError(f"{out}: not an events file (its first line is not an event); events will not be "
                          "appended to it")
    if saved is not None and saved.is_file() and saved.stat().st_size and not is_detection_log(saved):
        raise OutputError(f"{saved}: --save-detections: not a detections file; it will not be overwritten")


def _replay(opts: ReplayOptions) -> RunCounters:
    drive: Drive = open_drive(opts.drive_dir)
    cfg, base = _load(opts.config_file)
    where = str(opts.config_file or "built-in defaults")
    try:
        taxonomy = Taxonomy.load(resolve_path(cfg.detector.categories_file, base))
    except TaxonomyError as exc:
        raise _as_config_error(f"{where}: detector.categories_file", exc) from None
    calib_file = drive.calibration_file or resolve_path(cfg.camera.calibration_file, base)
    try:
        calibration = CameraCalibration.load(calib_file)
    except CalibrationError as exc:
        if drive.calibration_file:
            raise  # the drive's own file: bad input, named by its path
        raise _as_config_error(f"{where}: camera.calibration_file", exc) from None
    if drive.gps_file is None:
        raise DriveError(f"{drive.root}: the drive has no GPS log (manifest 'gps')")
    g = cfg.gps
    track = load_track(drive.gps_file, max_fix_age_s=g.max_fix_age_s, stopped_speed_mps=g.stopped_speed_mps,
                       max_gap_s=g.max_interpolation_gap_s)
    data_dir = resolve_path(cfg.data_dir, base, output=True).resolve()  # as `patrol run` finds it
    _check_class_maps(cfg, taxonomy)  # also when cached detections stand in for the models
    with ExitStack() as stack:
        if opts.detections is not None:
            model, cached = read_detection_log(opts.detections, taxonomy.names)
            stage = None
            try:
                ref = ModelRef(name=str(model.get("name", "cached")), sha256=str(model.get("sha256", "0" * 64)))
                obj_model = model.get("object_model")
                obj_ref = None if not isinstance(obj_model, dict) else ModelRef(
                    name=str(obj_model.get("name", "cached")), sha256=str(obj_model.get("sha256", "0" * 64)))
            except ValueError as exc:  # pydantic's ValidationError
                raise DetectionLogError(f"{opts.detections}:1: header model: {_first_error(exc)}") from None
            covered = [c for c in model.get("covered") or taxonomy.names if taxonomy.get(c) is not None]
        else:
            if not (drive.segments or drive.stills):
                raise DriveError(f"{drive.root}: the drive has no video or stills: replay it with --detections F.jsonl")
            cached = None
            try:  # the TensorRT engine cache is the car's, not this replay's: built once
                stage, ref, obj_ref, covered = _detectors(cfg, base, data_dir, taxonomy)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        events_file = resolve_path(cfg.output.jsonl_file, base, output=True) \
            if cfg.output.jsonl_file and not opts.out else None
        _check_replay_files(opts, drive, events_file)
        source_counters = SourceCounters()
        frames = drive.frames(source_counters, cfg.camera.stills_interval_s) if (drive.segments or drive.stills) \
            else None
        # only now, with everything checked: a failed start leaves no folder behind
        created = opts.state_dir is None or not opts.state_dir.exists()
        state_dir = opts.state_dir or _fresh_state_dir(
            data_dir, f"replay-{drive.root.name}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}")
        started = threading.Event()
        if created:  # registered first, so it runs last: after the lock and the databases are closed
            stack.callback(lambda: started.is_set() or shutil.rmtree(state_dir, ignore_errors=True))
        stack.callback(_lock_state(state_dir).close)
        outbox, dedup = _state(cfg, base, taxonomy, state_dir, power_safe=False)  # a replay: crash-safe only
        stack.callback(outbox.close)
        progress_key = f"replay:{drive.root.resolve()}"  # one drive, one progress, whichever way it is replayed
        resume_after = committed_progress(outbox, progress_key) if opts.state_dir is not None else None
        if resume_after is not None:
            log.info("resuming %s after %s (already committed in %s)", drive.root, utc_iso(resume_after), state_dir)
        rules, warning = _rules(cfg, base, taxonomy, outbox.connection)
        publisher = None
        if cfg.mqtt.enabled and not opts.no_mqtt:
            publisher = _publisher(cfg, base, outbox.path)
        events_out = None
        if opts.out == "-":
            events_out = sys.stdout
        elif opts.out:
            out_path = Path(opts.out)
            if not out_path.exists():  # a failed start leaves no empty events file behind either
                stack.callback(lambda: started.is_set() or (out_path.is_file() and out_path.stat().st_size) or
                               out_path.unlink(missing_ok=True))
            try:
                events_out = stack.enter_context(open(opts.out, "a", encoding="utf-8"))
            except OSError as exc:
                raise OutputError(f"{opts.out}: cannot write events: {exc.strerror or exc}") from None
        elif cfg.output.jsonl_file:  # as `patrol run` writes it
            events_out = stack.enter_context(_open_events_file(cfg, base, opts.config_file or Path("<defaults>")))
        det_out = None
        if opts.save_detections is not None:
            header_model: dict = {"name": ref.name, "sha256": ref.sha256, "covered": covered}
            if obj_ref is not None:
                header_model["object_model"] = {"name": obj_ref.name, "sha256": obj_ref.sha256}
            try:
                det_out = DetectionLogWriter(opts.save_detections, header_model,
                                             keep_until_utc=resume_after)  # a resumed replay goes on
            except OSError as exc:
                raise OutputError(f"{opts.save_detections}: cannot write detections: {exc.strerror or exc}") from None
            stack.callback(det_out.close)
        parts = PipelineParts(
            vehicle_id=cfg.vehicle_id, frames=frames, detect=stage, cached=cached, pose_at=track.pose_at,
            cached_name=str(opts.detections),
            calibration=calibration, dedup=dedup, outbox=outbox, model_ref=ref, object_model_ref=obj_ref,
            photos_dir=state_dir / "photos",
            min_range_m=cfg.location.min_range_m, max_range_m=cfg.location.max_range_m,
            no_fix_policy=g.no_fix_policy, jpeg_quality=cfg.photo.jpeg_quality,
            photo_max_width_px=cfg.photo.max_width_px, publish_snapshots=cfg.mqtt.publish_snapshots,
            frame_queue_size=cfg.runtime.frame_queue_size, result_queue_size=cfg.runtime.result_queue_size,
            realtime=opts.realtime, progress_key=progress_key, resume_after_utc=resume_after,
            rules=rules, warning_categories=warning, events_out=events_out,
            detections_out=det_out, on_events=publisher.wake if publisher else None,
        )
        reporter = StatusReporter(cfg.mqtt.status_interval_s, publisher, outbox, covered, source_counters)
        parts.on_frame = reporter if opts.on_frame is None else (lambda c: (reporter(c), opts.on_frame(c)))
        pipeline = Pipeline(parts)
        reporter.pipeline = pipeline
        caught = _stop_on_signals(parts.stop)
        started.set()  # from here on the state folder holds this replay's work: kept whatever happens
        counters = pipeline.run()
        counters.interrupted_by = caught[0] if caught else None
        if publisher is not None:
            publisher.publish_status(reporter.status().to_json())
            if not publisher.flush(opts.flush_timeout_s):
                log.warning("broker did not take every event within %.0f s: %d stay in the outbox %s",
                            opts.flush_timeout_s, outbox.stats().depth, outbox.path)
            publisher.stop(offline_status_payload=_offline_status(cfg.vehicle_id))
        if counters.frames and counters.frames_without_fix == counters.frames:
            # events may still come (held or flagged per gps.no_fix_policy), but none was placed by a fix
            log.warning("no frame of %s had a GPS fix: the video and %s do not overlap in time (the manifest's "
                        "start_utc / time_offset_s?)", drive.root, drive.gps_file)
        if opts.summary:
            stopped = "" if counters.interrupted_by is None else \
                f" INTERRUPTED by {signal.Signals(counters.interrupted_by).name} (resume with --state)"
            print(f"replay {drive.root.name}: {summary_line(counters)} bad_frames={source_counters.bad_frames} "
                  f"covered={','.join(covered)} state={state_dir}{stopped}", file=sys.stderr, flush=True)
        return counters


def _stop_on_signals(stop: threading.Event) -> list[int]:
    """SIGTERM/SIGINT end the run cleanly (what was committed stays); a second one stops at once, also while
    waiting for the broker (the outbox keeps what was not sent). Returns the list the first signal goes into."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        return caught

    def first(sig: int, _frame: object) -> None:
        caught.append(sig)
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, first)
    return caught


def _open_events_file(cfg: Config, base: Path, config_file: Path) -> IO[str]:
    """The config's output.jsonl_file, opened for appending (its folder made); a `ConfigError` naming the key."""
    path = resolve_path(cfg.output.jsonl_file, base, output=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{config_file}: output.jsonl_file: {path}: cannot write events: "
                          f"{exc.strerror or exc}") from None


def run_live(config_file: Path) -> int:
    """The car's service: camera + gpsd until SIGTERM. Returns the exit code."""
    cfg = load_config(config_file)
    base = config_file.resolve().parent
    taxonomy = validate_service_config(cfg, base, config_file)  # exit 2 before anything starts
    notifier = SystemdNotifier()
    calibration = CameraCalibration.load(resolve_path(cfg.camera.calibration_file, base))
    data_dir = resolve_path(cfg.data_dir, base, output=True)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{config_file}: data_dir: {data_dir}: cannot create: {exc.strerror or exc}") from None
    stage, ref, obj_ref, covered = _detectors(cfg, base, data_dir, taxonomy)
    g = cfg.gps
    clock = GnssClock()
    if g.source == "gpsd":
        track = PoseTrack(max_fix_age_s=g.max_fix_age_s, stopped_speed_mps=g.stopped_speed_mps,
                          max_gap_s=g.max_interpolation_gap_s)
        reader = GpsdReader(track, g.gpsd_host, g.gpsd_port, clock=clock)
        reader.start()
    else:
        track = load_track(resolve_path(g.source, base), max_fix_age_s=g.max_fix_age_s,
                           stopped_speed_mps=g.stopped_speed_mps, max_gap_s=g.max_interpolation_gap_s)
        reader = None

    def utc_now(mono: float) -> float:
        t = clock.utc_at(mono)
        return t if t is not None else time.time()  # before the first fix: the system clock, flagged by no fix

    if is_live_spec(cfg.camera.source):
        source = open_source(cfg.camera.source, time.time(), cfg.camera.stills_interval_s, utc_now=utc_now,
                             watchdog_timeout_s=cfg.camera.watchdog_timeout_s,
                             reopen_backoff_max_s=cfg.camera.reopen_backoff_max_s, max_fps=cfg.camera.max_fps)
    else:
        # A recorded video (bench tests, dry runs): with a GPS log it starts at the log's first fix, so the two
        # line up; with gpsd it starts now.
        start = track.first_time_utc() if reader is None else time.time()
        source = open_source(str(resolve_path(cfg.camera.source, base)), start, cfg.camera.stills_interval_s)
    events_out = _open_events_file(cfg, base, config_file) if cfg.output.jsonl_file else None
    state_lock = _lock_state(data_dir)  # held until the process ends
    outbox, dedup = _state(cfg, base, taxonomy, data_dir)
    rules, warning = _rules(cfg, base, taxonomy, outbox.connection)
    publisher = _publisher(cfg, base, outbox.path) if cfg.mqtt.enabled else None
    reporter = StatusReporter(cfg.mqtt.status_interval_s, publisher, outbox, covered,
                              getattr(source, "counters", None), notifier)
    parts = PipelineParts(
        vehicle_id=cfg.vehicle_id, frames=source, detect=stage, cached=None, pose_at=track.pose_at,
        calibration=calibration, dedup=dedup, outbox=outbox, model_ref=ref, object_model_ref=obj_ref,
        photos_dir=data_dir / "photos",
        min_range_m=cfg.location.min_range_m, max_range_m=cfg.location.max_range_m, no_fix_policy=g.no_fix_policy,
        jpeg_quality=cfg.photo.jpeg_quality, photo_max_width_px=cfg.photo.max_width_px,
        publish_snapshots=cfg.mqtt.publish_snapshots, frame_queue_size=cfg.runtime.frame_queue_size,
        result_queue_size=cfg.runtime.result_queue_size, rules=rules, warning_categories=warning,
        events_out=events_out, on_events=publisher.wake if publisher else None, on_frame=reporter,
    )
    pipeline = Pipeline(parts)
    reporter.pipeline = pipeline
    _stop_on_signals(parts.stop)
    notifier.ready(f"vehicle {cfg.vehicle_id}: running")
    try:
        counters = pipeline.run()
    finally:
        notifier.stopping()
        if hasattr(source, "close"):
            source.close()
        if reader is not None:
            reader.stop()
        if publisher is not None:
            publisher.flush(5.0)
            publisher.stop(offline_status_payload=_offline_status(cfg.vehicle_id))
        if events_out is not None:
            events_out.close()
        outbox.close()
        state_lock.close()
    print(f"run: {summary_line(counters)}", file=sys.stderr, flush=True)
    return 0



def _as_config_error(key: str, exc: Exception) -> ConfigError:
    return ConfigError(f"{key}: {exc}")


def validate_service_config(cfg: Config, base: Path, config_file: Path, for_replay: bool = False) -> Taxonomy:
    """Everything `patrol run` needs from its config, checked before anything starts.

    With ``for_replay`` the camera and GPS sources are not needed (a replay reads the drive's).
    Raises `ConfigError` (exit code 2) with one line naming the key, also for the files the keys name.
    """
    where = str(config_file)
    if not cfg.camera.source and not for_replay:
        raise ConfigError(f"{where}: camera.source: required for `patrol run` (check a replay's config with "
                          "--replay)")
    if cfg.camera.source and not is_live_spec(cfg.camera.source) and \
            not resolve_path(cfg.camera.source, base).exists():
        raise ConfigError(f"{where}: camera.source: {cfg.camera.source} not found (not a file, folder, "
                          "device, URL or pipeline)")
    try:
        taxonomy = Taxonomy.load(resolve_path(cfg.detector.categories_file, base))
    except TaxonomyError as exc:
        raise _as_config_error(f"{where}: detector.categories_file", exc) from None
    try:
        _policy(cfg, taxonomy)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    try:
        _check_class_maps(cfg, taxonomy)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    calib = resolve_path(cfg.camera.calibration_file, base)
    if not calib.is_file():
        raise ConfigError(f"{where}: camera.calibration_file: {cfg.camera.calibration_file} not found")
    try:
        CameraCalibration.load(calib)
    except CalibrationError as exc:
        raise _as_config_error(f"{where}: camera.calibration_file", exc) from None
    models = [("detector", cfg.detector)] + ([("object_detector", cfg.object_detector)]
                                              if cfg.object_detector.enabled else [])
    for key, d in models:
        if not d.model_file:
            raise ConfigError(f"{where}: {key}.model_file: required")
        try:
            load_detector(resolve_path(d.model_file, base), providers=["cpu"])
        except ModelError as exc:
            raise _as_config_error(f"{where}: {key}.model_file", exc) from None
    if cfg.object_detector.enabled:
        from vehicle.rules import rules_from_config

        try:
            rules_from_config(cfg.rules, base, taxonomy)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if not for_replay and cfg.gps.source != "gpsd":
        if not resolve_path(cfg.gps.source, base).is_file():
            raise ConfigError(f"{where}: gps.source: {cfg.gps.source} not found ('gpsd' or a log file)")
        try:  # read as `patrol run` will: a file without one fix would only fail once the service starts
            load_track(resolve_path(cfg.gps.source, base))
        except GpsLogError as exc:
            raise ConfigError(f"{where}: gps.source: {exc}") from None
    if cfg.mqtt.enabled:
        try:
            _broker_settings(cfg, base)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    _check_writable(where, "data_dir", resolve_path(cfg.data_dir, base, output=True), folder=True)
    if cfg.output.jsonl_file:
        _check_writable(where, "output.jsonl_file", resolve_path(cfg.output.jsonl_file, base, output=True),
                        folder=False)
    return taxonomy


def _check_writable(where: str, key: str, path: Path, folder: bool) -> None:
    """A folder (or file) the run will create or write: it, or its nearest existing parent, must allow that."""
    if path.exists() and path.is_dir() != folder:
        raise ConfigError(f"{where}: {key}: {path} is {'a file' if folder else 'a folder'}")
    probe = path if folder and path.exists() else path.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK) or \
            (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{where}: {key}: {path} cannot be written (no permission under {probe})")
    try:  # permissions say nothing to root, nor about /proc, a read-only mount or a full disk: try it
        os.rmdir(tempfile.mkdtemp(prefix=".patrol-check-", dir=probe))
    except OSError as exc:
        raise ConfigError(f"{where}: {key}: {path} cannot be written ({exc.strerror or exc} under {probe})") from None


def check_config(config_file: Path, for_replay: bool = False) -> str:
    """Validate a config and the files it names, starting nothing; returns a one-line summary."""
    cfg = load_config(config_file)
    validate_service_config(cfg, config_file.resolve().parent, config_file, for_replay)
    return json.dumps({"config": str(config_file), "vehicle_id": cfg.vehicle_id, "ok": True,
                       "for": "replay" if for_replay else "run"})
