"""The only place that wires the stages: frames + GPS -> detect -> locate -> dedup -> events -> outbox -> MQTT.

Three threads joined by bounded queues: capture (decode), inference (the model), and post-processing on the
calling thread (locate, deduplicate, make events and photos, queue them durably). The MQTT publisher drains
the outbox on its own thread. Replays block instead of dropping; a live camera keeps only its newest frame,
so a slow model drops (and counts) frames rather than growing memory.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

import numpy as np

from vehicle.dedup import Confirmation, DedupIndex, Sighting
from vehicle.detection_log import CategoryBox, DetectionLogError, DetectionLogWriter, FrameDetections
from vehicle.detector import Detections, OnnxDetector, UltralyticsDetector
from vehicle.drive import utc_iso
from vehicle.events import (
    Event,
    EventMode,
    EventProperties,
    LocationQuality,
    ModelRef,
    PointGeometry,
    RuleFired,
    Status,
    StatusState,
    VehiclePose,
    events_topic,
    make_event_id,
    snapshot_topic,
)
from vehicle.evidence import draw_evidence, encode_jpeg, save_photo
from vehicle.frames import Frame
from vehicle.geometry import CameraCalibration, locate
from vehicle.outbox import Outbox, OutgoingMessage

log = logging.getLogger(__name__)

_END = object()


class FrameOrderError(ValueError):
    """A replayed frame is older than the one before it; the message names the source and the frames."""


@dataclass
class RunCounters:
    """What one run did; printed at the end of a replay and sent on the status topic."""

    frames: int = 0
    frames_without_fix: int = 0
    detections: int = 0
    sightings: int = 0
    sightings_dropped_no_fix: int = 0
    events: int = 0
    started_mono: float = field(default_factory=time.monotonic)
    inference_s: float = 0.0
    interrupted_by: int | None = None  # the signal that stopped a replay early

    def frames_per_s(self) -> float:
        """Frames processed per second of wall time since the start."""
        dt = time.monotonic() - self.started_mono
        return self.frames / dt if dt > 0 else 0.0


class ModelStage:
    """Runs the detector(s) on a frame and maps classes onto the taxonomy."""

    def __init__(
        self,
        detector: OnnxDetector | UltralyticsDetector,
        class_to_category: dict[str, str],
        object_detector: OnnxDetector | UltralyticsDetector | None = None,
        object_class_to_category: dict[str, str] | None = None,
    ):
        self.detector = detector
        self.object_detector = object_detector
        self._cat_of_class = [class_to_category.get(n) for n in detector.names]
        self._obj_cat_of_class = (
            [(object_class_to_category or {}).get(n) for n in object_detector.names] if object_detector else []
        )
        unmapped = [n for n, c in zip(detector.names, self._cat_of_class, strict=True) if c is None]
        if unmapped:
            log.warning("model classes with no category (ignored): %s", ", ".join(unmapped))

    @staticmethod
    def _boxes(dets: Detections, cats: list[str | None], names: list[str], candidate: bool) -> list[CategoryBox]:
        out = []
        for xyxy, score, cls in zip(dets.xyxy, dets.score, dets.class_id, strict=True):
            cat = cats[cls] if 0 <= cls < len(cats) else None
            if cat is None:
                continue
            box = (float(xyxy[0]), float(xyxy[1]), float(xyxy[2]), float(xyxy[3]))
            out.append(CategoryBox(cat, float(score), box, names[cls] if candidate else None))
        return out

    def __call__(self, frame: Frame) -> FrameDetections:
        boxes = self._boxes(self.detector.detect(frame.image), self._cat_of_class, self.detector.names, False)
        if self.object_detector is not None:
            dets = self.object_detector.detect(frame.image)
            boxes += self._boxes(dets, self._obj_cat_of_class, self.object_detector.names, True)
        return FrameDetections(frame.index, frame.time_utc, frame.size_wh, tuple(boxes))


@dataclass
class PipelineParts:
    """Everything a run needs, built by `vehicle.app` from the config."""

    vehicle_id: str
    frames: Iterable[Frame]
    detect: Callable[[Frame], FrameDetections] | None  # None: detections come with the frames (cached)
    cached: Iterator[FrameDetections] | None
    pose_at: Callable[[float], object]  # time_utc -> vehicle.gps.Pose | None
    calibration: CameraCalibration
    dedup: DedupIndex
    outbox: Outbox
    model_ref: ModelRef
    photos_dir: Path
    object_model_ref: ModelRef | None = None  # the general-object model's, for events its candidates confirmed
    min_range_m: float = 1.0
    max_range_m: float = 40.0
    no_fix_policy: str = "hold"
    jpeg_quality: int = 85
    photo_max_width_px: int = 1920
    publish_snapshots: bool = True
    frame_queue_size: int = 4
    result_queue_size: int = 16
    realtime: bool = False
    cached_name: str = "cached detections"  # the file the cached detections come from, for error messages
    progress_key: str | None = None  # replay: remember the newest committed frame under this key
    resume_after_utc: float | None = None  # replay resumed: frames up to this time were already committed
    rules: object | None = None  # vehicle.rules.RuleEngine
    warning_categories: frozenset[str] = frozenset()
    events_out: IO[str] | None = None
    detections_out: DetectionLogWriter | None = None
    on_events: Callable[[], None] | None = None  # e.g. Publisher.wake
    on_frame: Callable[[RunCounters], None] | None = None  # watchdog, status
    stop: threading.Event = field(default_factory=threading.Event)


class _Worker(threading.Thread):
    """A stage thread that forwards items into a bounded queue and remembers its failure."""

    def __init__(self, name: str, produce: Callable[[], Iterable], out: queue.Queue, stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self.produce, self.out, self.stop_event = produce, out, stop
        self.error: BaseException | None = None

    def _put(self, item: object) -> bool:
        while not self.stop_event.is_set():
            try:
                self.out.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        try:
            for item in self.produce():
                if not self._put(item):
                    return
        except BaseException as exc:  # re-raised on the main thread
            self.error = exc
        finally:
            self._put(_END)


class _Pace:
    """Holds a replay back to the pace it was recorded at; a stop request ends the wait at once."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.t0_utc: float | None = None
        self.t0_mono = 0.0

    def wait(self, time_utc: float) -> None:
        """Return when the item recorded at ``time_utc`` is due (or ``stop`` is set)."""
        if self.t0_utc is None:
            self.t0_utc, self.t0_mono = time_utc, time.monotonic()
            return
        delay = (time_utc - self.t0_utc) - (time.monotonic() - self.t0_mono)
        if delay > 0:
            self.stop.wait(delay)


def _paced(frames: Iterable[Frame], realtime: bool, resume_after_utc: float | None = None,
           stop: threading.Event | None = None) -> Iterator[Frame]:
    """Frames, at the pace they were recorded when ``realtime`` is set, skipping those already committed."""
    pace = _Pace(stop or threading.Event()) if realtime else None
    for frame in frames:
        if resume_after_utc is not None and frame.time_utc <= resume_after_utc:
            continue
        if pace is not None:
            pace.wait(frame.time_utc)
        if stop is not None and stop.is_set():
            return
        yield frame


class Pipeline:
    """One run of the onboard job over a frame source (live or replayed)."""

    def __init__(self, parts: PipelineParts):
        self.p = parts
        self.counters = RunCounters()
        self._calib_by_size: dict[tuple[int, int], CameraCalibration] = {}
        self._last_good_pose = None
        self.last_pose = None  # pose at the newest processed frame (for the status topic)
        self._progress_utc = -float("inf")  # frame time of the newest progress mark
        self._last_frame_utc: float | None = None
        parts.outbox.connection.execute(
            "CREATE TABLE IF NOT EXISTS pipeline_progress (key TEXT PRIMARY KEY, last_time_utc REAL NOT NULL)")
        parts.outbox.connection.commit()

    # -- stages -------------------------------------------------------------------------------------------------
    def _detect_stream(self, frames_q: queue.Queue) -> Iterator[tuple[Frame | None, FrameDetections]]:
        p = self.p
        if p.cached is not None:
            # Cached detections drive the run; video frames (when the drive has them) are matched by index.
            video_done = p.frames is None
            pace = _Pace(p.stop) if p.realtime and video_done else None  # with video, the frames set the pace
            pending = None
            for fd in p.cached:
                if p.resume_after_utc is not None and fd.time_utc <= p.resume_after_utc:
                    continue
                if pace is not None:
                    pace.wait(fd.time_utc)
                if p.stop.is_set():
                    return
                frame = None
                while not video_done:
                    item, pending = (pending if pending is not None else self._next_frame(frames_q)), None
                    if item is _END:
                        video_done = True
                    elif item.index == fd.frame_index:
                        frame = item
                    elif item.index > fd.frame_index:
                        pending = item
                    else:
                        continue
                    break
                if frame is not None and frame.time_utc != fd.time_utc:
                    # The drive's own timing (start_utc, time_offset_s) wins over the file's: offsets can be tuned.
                    fd = replace(fd, time_utc=frame.time_utc)
                if frame is not None and frame.size_wh != fd.size_wh:
                    # Boxes are pixels of the frames they were detected in: on other frames they are meaningless.
                    raise DetectionLogError(
                        f"{p.cached_name}: frame {fd.frame_index}: detections are for {fd.size_wh[0]}x"
                        f"{fd.size_wh[1]} frames, this drive's video is {frame.size_wh[0]}x{frame.size_wh[1]}: "
                        "they come from another drive or camera")
                yield frame, fd
            return
        while True:
            item = self._next_frame(frames_q)
            if item is _END:
                return
            t0 = time.perf_counter()
            fd = p.detect(item)
            self.counters.inference_s += time.perf_counter() - t0
            yield item, fd

    def _next_frame(self, frames_q: queue.Queue):
        """The next captured frame, or `_END` once the source ends or a stop is requested (a stopped capture
        thread may never send its end marker: a plain ``get()`` would hang the shutdown)."""
        while True:
            try:
                return frames_q.get(timeout=0.2)
            except queue.Empty:
                if self.p.stop.is_set():
                    return _END

    def _calibration_for(self, size_wh: tuple[int, int]) -> CameraCalibration:
        calib = self._calib_by_size.get(size_wh)
        if calib is None:
            calib = self.p.calibration.for_image_size(*size_wh)
            self._calib_by_size[size_wh] = calib
        return calib

    def _sightings(self, fd: FrameDetections, pose) -> tuple[list[Sighting], list[tuple[CategoryBox, Sighting]]]:
        p = self.p
        usable = pose is not None and pose.valid
        if usable:
            self._last_good_pose = pose
        elif p.no_fix_policy == "flag" and self._last_good_pose is not None:
            pose = self._last_good_pose
        else:
            self.counters.sightings_dropped_no_fix += len(fd.boxes)
            return [], []
        uv = np.array([b.foot_px for b in fd.boxes], dtype=np.float64).reshape(-1, 2)
        points = locate(self._calibration_for(fd.size_wh), uv, pose.lat_deg, pose.lon_deg, pose.heading_deg,
                        p.min_range_m, p.max_range_m)
        plain, candidates = [], []
        for box, gp in zip(fd.boxes, points, strict=True):
            s = Sighting(box.category, gp.lat_deg, gp.lon_deg, gp.ok, gp.range_m, box.score, fd.time_utc,
                         fd.frame_index, box.xyxy)
            (candidates.append((box, s)) if box.object_class else plain.append(s))
        return plain, candidates

    # -- events -------------------------------------------------------------------------------------------------
    def _event(self, c: Confirmation, fd: FrameDetections, pose, rule: RuleFired | None) -> Event:
        p = self.p
        event_id = make_event_id(p.vehicle_id, c.obj.object_id, c.publication)
        mode = EventMode.warning if c.obj.category in p.warning_categories else EventMode.enforce
        props = EventProperties(
            event_id=event_id,
            vehicle_id=p.vehicle_id,
            object_id=c.obj.object_id,
            category=c.obj.category,
            confidence=round(min(max(c.obj.median_score, 0.0), 1.0), 4),
            mode=mode,
            first_seen=utc_iso(c.obj.first_seen_utc),
            last_seen=utc_iso(c.obj.last_seen_utc),
            observations=c.obj.observations,
            location=LocationQuality(
                fix_mode=pose.fix_mode if pose.valid else min(pose.fix_mode, 1),
                hdop=pose.hdop,
                fix_age_s=max(0.0, round(pose.fix_age_s, 3)),
                ground_projection_ok=c.obj.ground_ok,
                range_m=None if c.sighting.range_m is None else round(float(c.sighting.range_m), 2),
                interpolated=pose.interpolated,
            ),
            vehicle_pose=VehiclePose(
                lat=pose.lat_deg, lon=pose.lon_deg,
                heading_deg=None if pose.heading_deg is None else float(pose.heading_deg) % 360.0,
                speed_mps=None if pose.speed_mps is None else max(0.0, float(pose.speed_mps)),
            ),
            box_xyxy=tuple(round(float(v), 1) for v in c.sighting.box_xyxy),
            image_size_wh=fd.size_wh,
            frame_index=fd.frame_index,
            model=p.object_model_ref if rule is not None and p.object_model_ref is not None else p.model_ref,
            snapshot_topic=None,
            rule=rule,
        )
        return Event(id=event_id, geometry=PointGeometry(coordinates=(c.obj.lon_deg, c.obj.lat_deg)), properties=props)

    def _note_progress(self, time_utc: float) -> None:
        # Same transaction as the dedup changes of this frame: a resumed replay skips exactly what was committed.
        self._progress_utc = time_utc
        if self.p.progress_key is not None:
            self.p.outbox.connection.execute(
                "INSERT OR REPLACE INTO pipeline_progress VALUES (?, ?)", (self.p.progress_key, time_utc))

    def _queue_events(self, confirmations: list[tuple[Confirmation, RuleFired | None]], frame: Frame | None,
                      fd: FrameDetections, pose) -> None:
        p = self.p
        messages: list[OutgoingMessage] = []
        events: list[Event] = []
        for c, rule in confirmations:
            event = self._event(c, fd, pose, rule)
            photo_path = None
            if frame is not None and frame.image is not None:
                label = f"{c.obj.category} {c.obj.median_score:.2f}"  # the event's confidence
                jpeg = encode_jpeg(draw_evidence(frame.image, c.sighting.box_xyxy, label, p.photo_max_width_px),
                                   p.jpeg_quality)
                photo_path = save_photo(p.photos_dir, event.id, jpeg)
                if p.publish_snapshots:
                    topic = snapshot_topic(p.vehicle_id, event.id)
                    event = event.model_copy(
                        update={"properties": event.properties.model_copy(update={"snapshot_topic": topic})}
                    )
            events.append(event)
            messages.append(OutgoingMessage(events_topic(p.vehicle_id), event.to_json(), "event", event.id))
            if photo_path is not None and p.publish_snapshots:
                messages.append(OutgoingMessage(snapshot_topic(p.vehicle_id, event.id), None, "snapshot", event.id,
                                                str(photo_path)))
        # Dedup state and queued events commit together: a crash keeps both or neither.
        p.outbox.put(messages, commit=False)
        p.outbox.connection.commit()
        p.outbox.enforce_bounds()
        self.counters.events += len(events)
        if p.events_out is not None:
            for e in events:
                p.events_out.write(e.model_dump_json() + "\n")
            p.events_out.flush()
        if p.on_events is not None:
            p.on_events()

    def _post(self, frame: Frame | None, fd: FrameDetections) -> None:
        p = self.p
        self.counters.frames += 1
        self.counters.detections += len(fd.boxes)
        if p.detections_out is not None:
            p.detections_out.write(fd)
        if p.progress_key is not None and self._last_frame_utc is not None and fd.time_utc < self._last_frame_utc:
            # A replay resumes after the newest committed frame time: out of order, it would skip frames.
            source = p.cached_name if p.cached is not None else "the drive's frames"
            raise FrameOrderError(f"{source}: frame {fd.frame_index} ({utc_iso(fd.time_utc)}) is older than the "
                                  f"frame before it ({utc_iso(self._last_frame_utc)}): a replay needs frames in "
                                  "time order")
        pose = p.pose_at(fd.time_utc)
        self.last_pose = pose
        self._last_frame_utc = fd.time_utc
        if pose is None or not pose.valid:
            self.counters.frames_without_fix += 1
        confirmations: list[tuple[Confirmation, RuleFired | None]] = []
        if fd.boxes:
            plain, candidates = self._sightings(fd, pose)
            self.counters.sightings += len(plain) + len(candidates)
            if plain:
                confirmations += [(c, None) for c in p.dedup.update(plain, fd.time_utc)]
            if candidates and p.rules is not None:
                confirmations += p.rules.update(candidates, pose, fd.time_utc)
        if self.counters.frames % 200 == 0:
            p.dedup.expire(fd.time_utc)
        quiet_for_s = fd.time_utc - self._progress_utc
        if p.progress_key is not None and not p.outbox.connection.in_transaction and quiet_for_s >= 5.0:
            # A stretch without detections still moves the resume point (a few-row commit every 5 s of drive).
            p.dedup.flush(fd.time_utc)
            self._note_progress(fd.time_utc)
        if p.outbox.connection.in_transaction or confirmations:
            # Something is being committed: bring the dedup index up to this frame too, so the progress mark
            # never runs ahead of the observations it stands for.
            p.dedup.flush(fd.time_utc)
            self._note_progress(fd.time_utc)
        if confirmations:
            event_pose = pose if pose is not None and pose.valid else self._last_good_pose
            self._queue_events(confirmations, frame, fd, event_pose)
        elif p.outbox.connection.in_transaction:
            p.outbox.connection.commit()
        if p.on_frame is not None:
            p.on_frame(self.counters)

    # -- run ----------------------------------------------------------------------------------------------------
    def run(self) -> RunCounters:
        """Process every frame until the source ends or ``stop`` is set; returns the counters."""
        p = self.p
        frames_q: queue.Queue = queue.Queue(maxsize=p.frame_queue_size)
        results_q: queue.Queue = queue.Queue(maxsize=p.result_queue_size)
        workers = []
        if p.frames is not None:
            frames = lambda: _paced(p.frames, p.realtime, p.resume_after_utc, p.stop)  # noqa: E731
            workers.append(_Worker("capture", frames, frames_q, p.stop))
        workers.append(_Worker("inference", lambda: self._detect_stream(frames_q), results_q, p.stop))
        for w in workers:
            w.start()
        failed = False
        try:
            while True:
                try:
                    item = results_q.get(timeout=0.5)
                except queue.Empty:
                    if p.stop.is_set():
                        break
                    if p.on_frame is not None:
                        p.on_frame(self.counters)
                    continue
                if item is _END:
                    break
                frame, fd = item
                self._post(frame, fd)
        except BaseException:
            failed = True
            raise
        finally:
            p.stop.set()
            for w in workers:
                w.join(5)
            if failed:
                # A frame broke half-way (an object may be marked published whose event was never queued):
                # keep only what was committed with its events; a rerun redoes the frames after that.
                if p.outbox.connection.in_transaction:
                    p.outbox.connection.rollback()
                p.dedup.discard_unsaved()
            else:
                p.dedup.flush()  # the last observations (events were committed with their objects already)
                if self._last_frame_utc is not None:
                    self._note_progress(self._last_frame_utc)
                if p.outbox.connection.in_transaction:
                    p.outbox.connection.commit()
        for w in workers:
            if w.error is not None:
                raise w.error
        return self.counters

    def status(self, state: StatusState = StatusState.online, pose=None, outbox_stats=None,
               dropped: int = 0, bad: int = 0, covered: list[str] | None = None) -> Status:
        """The status message for the current moment."""
        st = outbox_stats
        return Status(
            vehicle_id=self.p.vehicle_id,
            state=state,
            time=utc_iso(time.time()),
            gps_fix_mode=None if pose is None else pose.fix_mode,
            gps_fix_age_s=None if pose is None else round(max(pose.fix_age_s, 0.0), 2),
            frames_per_s=round(self.counters.frames_per_s(), 2),
            frames_total=self.counters.frames,
            frames_dropped=dropped,
            frames_bad=bad,
            outbox_depth=None if st is None else st.depth,
            outbox_bytes=None if st is None else st.bytes,
            outbox_dropped=None if st is None else st.dropped_events + st.dropped_snapshots,
            events_total=self.counters.events,
            model=self.p.model_ref,
            categories_covered=covered,
        )


def committed_progress(outbox: Outbox, key: str) -> float | None:
    """Time of the newest frame whose results a previous run committed under ``key`` (None: none)."""
    try:
        row = outbox.connection.execute(
            "SELECT last_time_utc FROM pipeline_progress WHERE key = ?", (key,)).fetchone()
    except sqlite3.OperationalError:  # a state folder from before progress was kept
        return None
    return None if row is None else float(row[0])


def summary_line(c: RunCounters) -> str:
    """One line summarising a run."""
    dt = time.monotonic() - c.started_mono
    return (f"frames={c.frames} detections={c.detections} sightings={c.sightings} events={c.events} "
            f"no_fix_frames={c.frames_without_fix} elapsed_s={dt:.1f} fps={c.frames / dt if dt else 0:.1f}")


def print_err(msg: str) -> None:
    """One line on stderr."""
    print(msg, file=sys.stderr, flush=True)
