"""Frame sources: video files, folders of stills, V4L2 devices, RTSP URLs and GStreamer pipelines.

Every source yields `Frame` values carrying the capture time in UTC and on the monotonic clock. Recorded
sources (files, stills) never drop a frame; live sources are read by a capture thread, watched by a frame-age
watchdog and reopened with back-off when they stall or vanish.
"""

from __future__ import annotations

import csv
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

STILL_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


class FrameSourceError(ValueError):
    """A frame source cannot be opened; the message names the source."""


@dataclass(frozen=True)
class Frame:
    """One camera image and when it was taken."""

    index: int
    time_utc: float  # POSIX seconds
    mono: float  # time.monotonic() when the frame entered the process
    image: np.ndarray | None  # BGR; None when replaying cached detections without video
    size_wh: tuple[int, int]
    source: str = ""


@dataclass
class SourceCounters:
    """What a source has seen so far (reported on the status topic)."""

    frames: int = 0
    bad_frames: int = 0
    dropped_frames: int = 0
    reopens: int = 0


def parse_utc(text: str) -> float:
    """ISO 8601 time (``Z`` or offset) to POSIX seconds; raises ValueError on bad text."""
    t = text.strip().replace("Z", "+00:00")
    dt = datetime.fromisoformat(t)
    if dt.tzinfo is None:
        raise ValueError(f"time {text!r} has no timezone; write it in UTC with a 'Z'")
    return dt.timestamp()


class VideoFileSource:
    """A recorded video file; frame time = ``start_utc`` + the frame's presentation time.

    Frames that fail to decode are skipped and counted; the file is read to its end.
    """

    def __init__(self, path: str | Path, start_utc: float, first_index: int = 0, max_bad_in_row: int = 50,
                 counters: SourceCounters | None = None, frame_times_utc: list[float] | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FrameSourceError(f"{self.path}: video file not found")
        self.start_utc = start_utc
        self.first_index = first_index
        self.max_bad_in_row = max_bad_in_row
        self.counters = counters if counters is not None else SourceCounters()
        # Recorded drives keep each frame's capture time (live cameras do not run at an exact rate).
        self.frame_times_utc = frame_times_utc
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise FrameSourceError(f"{self.path}: cannot open video (unreadable or unsupported format)")
        self.fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        self.frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        ok, _ = cap.read()
        cap.release()
        if not ok:
            raise FrameSourceError(f"{self.path}: no decodable frame in video")

    is_live = False

    def __iter__(self) -> Iterator[Frame]:
        cap = cv2.VideoCapture(str(self.path))
        fps = self.fps if self.fps > 0 else 30.0
        pos = 0  # frame position in the file, counting bad frames too
        bad_in_row = 0
        try:
            while True:
                ok = cap.grab()
                if not ok:
                    # A corrupt packet or the end of the file: peek further if the container says there is more.
                    if self.frame_count and pos < self.frame_count - 1 and bad_in_row < self.max_bad_in_row:
                        self.counters.bad_frames += 1
                        bad_in_row += 1
                        pos += 1
                        continue
                    break
                ok, image = cap.retrieve()
                if not ok or image is None or image.size == 0:
                    self.counters.bad_frames += 1
                    bad_in_row += 1
                    pos += 1
                    continue
                bad_in_row = 0
                msec = cap.get(cv2.CAP_PROP_POS_MSEC)
                t_video = msec / 1000.0 if msec and msec > 0 else pos / fps
                if pos == 0:
                    t_video = 0.0
                t_utc = self.start_utc + t_video
                times = self.frame_times_utc
                if times is not None and pos < len(times):
                    t_utc = times[pos]
                elif times:  # the list ends early (a recording cut off): go on from its last time at the frame rate
                    if pos == len(times):
                        log.warning("%s: frame times end at frame %d; later frames are timed by the frame rate",
                                    self.path, pos)
                    t_utc = times[-1] + (pos - len(times) + 1) / fps
                self.counters.frames += 1
                h, w = image.shape[:2]
                yield Frame(
                    index=self.first_index + pos,
                    time_utc=t_utc,
                    mono=time.monotonic(),
                    image=image,
                    size_wh=(w, h),
                    source=str(self.path),
                )
                pos += 1
        finally:
            cap.release()

    def close(self) -> None:
        """Nothing to release between iterations."""


class StillsSource:
    """A folder of still images (survey cameras shooting every few metres).

    Times come from ``timestamps.csv`` in the folder (columns ``file,utc``) when present; otherwise the
    images are taken as ``interval_s`` apart from ``start_utc`` in file-name order.
    """

    is_live = False

    def __init__(self, folder: str | Path, start_utc: float = 0.0, interval_s: float = 1.0,
                 counters: SourceCounters | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FrameSourceError(f"{self.folder}: folder of stills not found")
        self.counters = counters if counters is not None else SourceCounters()
        stamps = self.folder / "timestamps.csv"
        items: list[tuple[Path, float]] = []
        if stamps.is_file():
            try:
                rows = list(csv.DictReader(stamps.read_text(encoding="utf-8").splitlines()))
            except (UnicodeDecodeError, csv.Error) as exc:
                raise FrameSourceError(f"{stamps}: not a UTF-8 CSV of file,utc ({exc})") from None
            for lineno, row in enumerate(rows, start=2):
                try:
                    items.append((self.folder / row["file"], parse_utc(row["utc"])))
                except (KeyError, ValueError, TypeError) as exc:
                    raise FrameSourceError(f"{stamps}:{lineno}: bad row ({exc})") from None
            if not items:
                raise FrameSourceError(f"{stamps}: lists no images (header file,utc, then one row per image)")
            listed = {p.name for p, _ in items}
            unlisted = [p.name for p in self.folder.iterdir() if p.suffix.lower() in STILL_SUFFIXES
                        and p.name not in listed]
            if unlisted:
                log.warning("%s: %d image(s) not in timestamps.csv are skipped (e.g. %s)", self.folder,
                            len(unlisted), sorted(unlisted)[0])
        else:
            files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in STILL_SUFFIXES)
            items = [(p, start_utc + i * interval_s) for i, p in enumerate(files)]
        if not items:
            raise FrameSourceError(f"{self.folder}: no images found")
        self.items = items

    def __iter__(self) -> Iterator[Frame]:
        for i, (path, t) in enumerate(self.items):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                self.counters.bad_frames += 1
                log.warning("%s: unreadable image, skipped", path)
                continue
            self.counters.frames += 1
            h, w = image.shape[:2]
            yield Frame(index=i, time_utc=t, mono=time.monotonic(), image=image, size_wh=(w, h), source=str(path))

    def close(self) -> None:
        """Nothing to release."""


def _open_capture(spec: str) -> cv2.VideoCapture:
    if "!" in spec:  # a GStreamer pipeline, e.g. nvarguscamerasrc ! ... ! appsink (Jetson CSI camera)
        return cv2.VideoCapture(spec, cv2.CAP_GSTREAMER)
    if spec.isdigit():
        return cv2.VideoCapture(int(spec), cv2.CAP_V4L2)
    if spec.startswith("/dev/video"):
        return cv2.VideoCapture(spec, cv2.CAP_V4L2)
    return cv2.VideoCapture(spec)  # rtsp://, http://, files


@dataclass
class _Latest:
    frame: Frame | None = None
    cond: threading.Condition = field(default_factory=threading.Condition)


class LiveSource:
    """A live camera (V4L2 device, RTSP URL or GStreamer pipeline) read by its own capture thread.

    Only the newest frame is kept: when the consumer is slower than the camera, older frames are
    dropped and counted, so memory never grows. A frame-age watchdog reopens a stalled or vanished
    source with exponential back-off.
    """

    is_live = True

    def __init__(
        self,
        spec: str,
        utc_now: Callable[[float], float] | None = None,
        watchdog_timeout_s: float = 5.0,
        reopen_backoff_max_s: float = 30.0,
        max_fps: float = 0.0,
        opener: Callable[[str], cv2.VideoCapture] = _open_capture,
    ):
        self.spec = spec
        self.utc_now = utc_now or (lambda mono: time.time())
        self.watchdog_timeout_s = watchdog_timeout_s
        self.reopen_backoff_max_s = reopen_backoff_max_s
        self.min_interval_s = 1.0 / max_fps if max_fps > 0 else 0.0
        self.opener = opener
        self.counters = SourceCounters()
        self._latest = _Latest()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._index = 0
        self.last_frame_mono = time.monotonic()

    def _capture_loop(self) -> None:
        backoff_s = 0.5
        cap: cv2.VideoCapture | None = None
        last_emit = 0.0
        while not self._stop.is_set():
            if cap is None:
                cap = self.opener(self.spec)
                if not cap.isOpened():
                    cap.release()
                    cap = None
                    log.warning("camera %s: cannot open, retrying in %.1f s", self.spec, backoff_s)
                    self._stop.wait(backoff_s)
                    backoff_s = min(backoff_s * 2, self.reopen_backoff_max_s)
                    continue
                self.last_frame_mono = time.monotonic()
            ok, image = cap.read()
            now = time.monotonic()
            if not ok or image is None:
                self.counters.bad_frames += 1
                if now - self.last_frame_mono > self.watchdog_timeout_s:
                    log.warning("camera %s: no frame for %.1f s, reopening", self.spec, now - self.last_frame_mono)
                    cap.release()
                    cap = None
                    self.counters.reopens += 1
                    self._stop.wait(backoff_s)
                    backoff_s = min(backoff_s * 2, self.reopen_backoff_max_s)
                else:
                    self._stop.wait(0.01)
                continue
            backoff_s = 0.5
            self.last_frame_mono = now
            if self.min_interval_s and now - last_emit < self.min_interval_s:
                continue
            last_emit = now
            h, w = image.shape[:2]
            frame = Frame(self._index, self.utc_now(now), now, image, (w, h), self.spec)
            self._index += 1
            with self._latest.cond:
                if self._latest.frame is not None:
                    self.counters.dropped_frames += 1
                self._latest.frame = frame
                self._latest.cond.notify()
        if cap is not None:
            cap.release()

    def __iter__(self) -> Iterator[Frame]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._capture_loop, name="capture", daemon=True)
            self._thread.start()
        while not self._stop.is_set():
            with self._latest.cond:
                self._latest.cond.wait_for(lambda: self._latest.frame is not None or self._stop.is_set(), 1.0)
                frame, self._latest.frame = self._latest.frame, None
            if frame is not None:
                self.counters.frames += 1
                yield frame

    def request_stop(self) -> None:
        """Make iteration end within a second, even while the camera cannot be opened (safe in a signal
        handler: it only sets an event); `close` then joins the capture thread."""
        self._stop.set()

    def close(self) -> None:
        """Stop the capture thread."""
        self._stop.set()
        with self._latest.cond:
            self._latest.cond.notify_all()
        if self._thread is not None:
            self._thread.join(5)


def is_live_spec(spec: str) -> bool:
    """Whether a camera source names a live device, stream or GStreamer pipeline rather than a file or folder."""
    return spec.startswith(("/dev/video", "rtsp://", "rtsps://", "http://", "https://")) or "!" in spec or \
        spec.isdigit()


def open_source(spec: str, start_utc: float = 0.0, stills_interval_s: float = 1.0, **live_kwargs):
    """The right source for ``spec``: a video file, a folder of stills, or a live camera."""
    p = Path(spec)
    if p.is_dir():
        return StillsSource(p, start_utc, stills_interval_s)
    if p.is_file():
        return VideoFileSource(p, start_utc)
    if spec.startswith(("/dev/video", "rtsp://", "rtsps://", "http://", "https://")) or "!" in spec or spec.isdigit():
        return LiveSource(spec, **live_kwargs)
    raise FrameSourceError(f"{spec}: camera source not found (not a file, folder, device, URL or pipeline)")
