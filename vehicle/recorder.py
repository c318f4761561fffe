"""`patrol record`: write a drive folder from the live camera and gpsd, for replay later.

Video goes into segments (``video/NNNNNN.mkv``) with a ``frame,utc`` CSV beside each (the capture time of
every frame, from the GNSS-disciplined clock); fixes go into ``gps.json`` as gpsd JSON (TPV + SKY), which
`vehicle.gps.read_gpsd_json` reads back. The calibration in use is copied in.

Frames are recorded from the first GPS fix on, stamped by the GNSS clock. A power cut must not cost the segment
being written. Matroska is written as a stream of clusters, so a file
that was never closed reads back up to its last complete cluster (an MP4 is unreadable until its index is
written at close); ``manifest.json`` lists each segment once it holds two seconds of frames, and the CSV and
GPS log are flushed as they are written. A cut loses the last few seconds, not the segment.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import cv2

from vehicle.config import ConfigError, load_config, resolve_path
from vehicle.drive import DriveError, utc_iso, write_manifest
from vehicle.frames import Frame, LiveSource, is_live_spec, open_source
from vehicle.gps import Fix, GnssClock, GpsdReader, PoseTrack

log = logging.getLogger(__name__)


class _LoggingTrack(PoseTrack):
    """A PoseTrack that also writes every fix it is given as gpsd JSON."""

    def __init__(self, out: IO[str], **kwargs: float):
        super().__init__(**kwargs)
        self._out = out
        self._out_lock = threading.Lock()

    def add(self, fix: Fix) -> None:
        super().add(fix)
        tpv = {"class": "TPV", "mode": fix.fix_mode, "time": utc_iso(fix.time_utc), "lat": fix.lat_deg,
               "lon": fix.lon_deg}
        for key, value in (("alt", fix.alt_m), ("speed", fix.speed_mps), ("track", fix.track_deg)):
            if value is not None:
                tpv[key] = value
        with self._out_lock:
            if fix.hdop is not None:
                self._out.write(json.dumps({"class": "SKY", "time": tpv["time"], "hdop": fix.hdop}) + "\n")
            self._out.write(json.dumps(tpv) + "\n")
            self._out.flush()


def _as_camera(frames: Iterator[Frame], utc_now: Callable[[float], float], stop: threading.Event) -> Iterator[Frame]:
    """A video file or stills folder given as the camera, delivered as a camera would: at its own pace, each
    frame stamped by the GNSS clock when it is delivered. Read as fast as it decodes, seconds of video would be
    stamped by the system clock against a GPS log that covered a fraction of that time: no frame would match a
    fix on replay."""
    t0, first = time.monotonic(), None
    for frame in frames:
        first = frame.time_utc if first is None else first
        wait = t0 + (frame.time_utc - first) - time.monotonic()
        if wait > 0 and stop.wait(wait):
            return
        now = time.monotonic()
        yield dataclasses.replace(frame, time_utc=utc_now(now), mono=now)


def record(config_file: Path, out_dir: Path, duration_s: float = 0.0, segment_s: float = 300.0,
           fps: float = 0.0) -> int:
    """Record until ``duration_s`` has passed (0: until SIGINT/SIGTERM); returns the exit code."""
    cfg = load_config(config_file)
    base = config_file.resolve().parent
    if not cfg.camera.source:
        raise ConfigError(f"{config_file}: camera.source: required for `patrol record`")
    source_spec = cfg.camera.source if is_live_spec(cfg.camera.source) else str(resolve_path(cfg.camera.source, base))
    if not is_live_spec(source_spec) and not Path(source_spec).exists():  # as `patrol run` checks it
        raise ConfigError(f"{config_file}: camera.source: {cfg.camera.source} not found (not a file, folder, "
                          "device, URL or pipeline)")
    if cfg.gps.source != "gpsd":
        raise ConfigError(f"{config_file}: gps.source: `patrol record` logs fixes from gpsd; set it to \"gpsd\" "
                          f"(not {cfg.gps.source})")
    calibration = resolve_path(cfg.camera.calibration_file, base)
    if not calibration.is_file():
        raise ConfigError(f"{config_file}: camera.calibration_file: {calibration} not found")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DriveError(f"{out_dir}: --out: drive folder exists and is not empty; choose a new one")
    (out_dir / "video").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(calibration, out_dir / "calibration.toml")
    stop = threading.Event()
    gps_out = open(out_dir / "gps.json", "w", encoding="utf-8")
    clock = GnssClock()
    track = _LoggingTrack(gps_out, max_fix_age_s=cfg.gps.max_fix_age_s)
    reader = GpsdReader(track, cfg.gps.gpsd_host, cfg.gps.gpsd_port, clock=clock)
    reader.start()

    def utc_now(mono: float) -> float:
        t = clock.utc_at(mono)
        return t if t is not None else time.time()

    source = open_source(source_spec, time.time(), cfg.camera.stills_interval_s, utc_now=utc_now,
                         watchdog_timeout_s=cfg.camera.watchdog_timeout_s, max_fps=cfg.camera.max_fps)
    frames_in = source if isinstance(source, LiveSource) else _as_camera(iter(source), utc_now, stop)

    def halt(*_: object) -> None:
        # A live camera that cannot be opened (or stalls) yields no frames, so the frame loop alone would never
        # see the stop: end the source's iteration too.
        stop.set()
        if isinstance(source, LiveSource):
            source.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, halt)
    timer = threading.Timer(duration_s, halt) if duration_s > 0 else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    rate = fps or cfg.camera.max_fps or getattr(source, "fps", 0.0) or 15.0  # a file camera: its own rate
    list_after_frames = max(1, round(2.0 * rate))
    segments: list[dict] = []
    writer = times = None
    seg_started = 0.0
    frames = 0
    started, gps_warned, held_back, delivered = time.monotonic(), False, 0, 0
    try:
        last_utc = -math.inf
        for frame in frames_in:
            if stop.is_set():  # SIGTERM/SIGINT or --duration-s (the timer)
                break
            delivered += 1
            if clock.utc_at(frame.mono) is None:
                # Before the first fix a frame can only be stamped by the system clock, which may be far from GNSS
                # time (and could then never be placed): recording starts with the GNSS clock.
                if not gps_warned and time.monotonic() - started > 10.0:
                    gps_warned = True
                    log.warning("gps: no fix from gpsd at %s:%d after 10 s; recording starts with the first fix",
                                cfg.gps.gpsd_host, cfg.gps.gpsd_port)
                continue
            if frame.time_utc < last_utc:
                # The GNSS clock stepped back (a confirmed receiver time step): a drive's frame times must not, or
                # replay refuses it. Held at the last time until the clock catches up.
                if not held_back:
                    log.warning("camera: the GNSS clock stepped back %.3f s; frame times held until it catches up",
                                last_utc - frame.time_utc)
                held_back += 1
                frame = dataclasses.replace(frame, time_utc=last_utc)
            last_utc = frame.time_utc
            if writer is None or time.monotonic() - seg_started >= segment_s:
                if writer is not None:
                    writer.release()
                    times.close()
                name = f"video/{len(segments):06d}"
                writer = cv2.VideoWriter(str(out_dir / f"{name}.mkv"), cv2.VideoWriter_fourcc(*"mp4v"), rate,
                                         frame.size_wh)
                if not writer.isOpened():
                    raise DriveError(f"{out_dir / name}.mkv: OpenCV cannot write Matroska video here (it needs "
                                     "OpenCV's FFmpeg backend)")
                times = open(out_dir / f"{name}.csv", "w", encoding="utf-8")
                times.write("frame,utc\n")
                segments.append({"file": f"{name}.mkv", "start_utc": utc_iso(frame.time_utc),
                                 "frame_times": f"{name}.csv"})
                seg_started = time.monotonic()
                seg_frame = 0
            writer.write(frame.image)
            times.write(f"{seg_frame},{utc_iso(frame.time_utc)}\n")
            times.flush()  # the frame's time must be on disk no later than the frame (one write a frame)
            seg_frame += 1
            if seg_frame == list_after_frames:
                # Listed once it holds two seconds of frames, so a drive cut short names the segment it was
                # writing; not before, as a file cut in its first second may hold no readable frame at all, and
                # a listed file that cannot be read fails the whole replay.
                write_manifest(out_dir, segments, "gps.json", "calibration.toml", cfg.vehicle_id, "patrol record")
            frames += 1
    finally:
        if timer is not None:
            timer.cancel()
        if writer is not None:
            writer.release()
            times.close()
        if isinstance(source, LiveSource):
            source.close()
        reader.stop()
        gps_out.close()
        write_manifest(out_dir, segments, "gps.json", "calibration.toml", cfg.vehicle_id, "patrol record")
    print(f"record: {frames} frames in {len(segments)} segment(s) -> {out_dir}", flush=True)
    if frames:
        return 0
    # Nothing recorded: the folder holds no drive (a copied calibration, perhaps a GPS log), and left behind it
    # would block a retry with the same --out.
    no_gps = (out_dir / "gps.json").stat().st_size == 0
    shutil.rmtree(out_dir, ignore_errors=True)
    if delivered == 0:
        why = (f"{config_file}: camera.source: {cfg.camera.source}: no frame was recorded (the camera never "
               "delivered one)")
    elif no_gps:
        why = (f"{config_file}: gps: no frame was recorded: no GPS report came (gpsd at {cfg.gps.gpsd_host}:"
               f"{cfg.gps.gpsd_port} never answered)")
    else:
        why = f"{config_file}: gps: no frame was recorded: gpsd at {cfg.gps.gpsd_host}:{cfg.gps.gpsd_port} had no fix"
    print(f"patrol: error: {why}", file=sys.stderr, flush=True)
    return 1
