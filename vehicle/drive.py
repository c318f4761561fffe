"""The recorded-drive format: a folder that `patrol record` writes and `patrol replay` reads.

```
DRIVE/
  manifest.json        what is in the drive (below)
  video/000000.mp4     video segments, in time order (or stills/ with timestamps.csv)
  gps.nmea | gps.json  the GPS log: NMEA 0183 or gpsd JSON (`gpspipe -w`)
  calibration.toml     the camera calibration used while recording
  detections.jsonl     optional cached detections (`patrol replay --save-detections`)
```
``manifest.json``::

    {"format": "patrol-drive", "version": 1, "vehicle_id": "car-001",
     "video": [{"file": "video/000000.mp4", "start_utc": "2019-11-18T23:45:14Z"}],
     "stills": null, "gps": "gps.nmea", "calibration": "calibration.toml",
     "time_offset_s": 0.0, "source": "free text: where the drive came from"}

``start_utc`` is the UTC time of the segment's first frame; a frame's time is that plus its presentation time,
unless the segment names a ``frame_times`` CSV (``frame,utc`` per frame, as `patrol record` writes): live
cameras do not deliver frames at an exact rate, so recorded drives keep each frame's own capture time.
A drive of stills names ``"stills": {"folder": "stills", "start_utc": ..., "interval_s": 1.0}``: times come from the
folder's ``timestamps.csv`` (``file,utc``) when it has one, else from ``start_utc`` (then required) and
``interval_s`` (default: the replay config's ``camera.stills_interval_s``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from vehicle.frames import Frame, FrameSourceError, SourceCounters, StillsSource, VideoFileSource, parse_utc

MANIFEST = "manifest.json"
FORMAT = "patrol-drive"


class DriveError(ValueError):
    """A drive folder is missing or malformed; the message names the file and field."""


@dataclass(frozen=True)
class VideoSegment:
    """One video file of a drive and the UTC time of its first frame."""

    file: Path
    start_utc: float
    frame_times_utc: tuple[float, ...] | None = None  # from the segment's optional ``frame_times`` CSV


@dataclass(frozen=True)
class Drive:
    """An opened drive folder."""

    root: Path
    vehicle_id: str
    segments: tuple[VideoSegment, ...]
    stills: Path | None
    stills_start_utc: float
    gps_file: Path | None
    calibration_file: Path | None
    detections_file: Path | None
    time_offset_s: float
    source: str
    stills_interval_s: float | None = None  # None: the replay config's camera.stills_interval_s

    def frames(self, counters: SourceCounters | None = None, stills_interval_s: float = 1.0) -> Iterator[Frame]:
        """Every frame of the drive, in order, with continuous indices across segments.

        ``counters`` (optional) accumulates decoded and undecodable frames over all segments;
        ``stills_interval_s`` spaces stills without timestamps when the manifest gives no ``interval_s``.
        """
        if self.stills is not None:  # opened now, not at the first frame: a bad folder fails before a run starts
            interval = self.stills_interval_s if self.stills_interval_s is not None else stills_interval_s
            return iter(StillsSource(self.stills, self.stills_start_utc + self.time_offset_s, interval,
                                     counters=counters))
        return self._video_frames(counters)

    def _video_frames(self, counters: SourceCounters | None) -> Iterator[Frame]:
        # Every segment is opened (and its first frame decoded) now, not when the replay reaches it: an unreadable
        # file fails the replay before it commits anything (with cached detections, hours of events would
        # otherwise be committed without photos first).
        sources = []
        for seg in self.segments:
            times = None if seg.frame_times_utc is None else [t + self.time_offset_s for t in seg.frame_times_utc]
            sources.append(VideoFileSource(seg.file, seg.start_utc + self.time_offset_s, counters=counters,
                                           frame_times_utc=times))
        return self._numbered(sources)

    @staticmethod
    def _numbered(sources: list[VideoFileSource]) -> Iterator[Frame]:
        next_index = 0
        for src in sources:
            src.first_index = next_index
            last = next_index - 1
            for frame in src:
                last = frame.index
                yield frame
            next_index = max(last + 1, next_index + src.frame_count)


def _read_frame_times(path: Path, where: str) -> tuple[float, ...]:
    """A segment's ``frame,utc`` CSV (one row per frame written) as POSIX seconds."""
    if not path.is_file():
        raise DriveError(f"{where}: {path} not found")
    out = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
                if lineno == 1 and line.startswith("frame"):
                    continue
                out.append(parse_utc(line.rstrip("\r\n").split(",")[1]))
            except (IndexError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
                raise DriveError(f"{path}:{lineno}: bad frame time ({exc})") from None
            if len(out) > 1 and out[-1] < out[-2]:
                raise DriveError(f"{path}:{lineno}: frame time goes backwards")
    return tuple(out)


def utc_iso(t: float) -> str:
    """POSIX seconds -> ISO 8601 UTC with 'Z' (millisecond precision)."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def open_drive(path: str | Path) -> Drive:
    """Read and check a drive folder; raise `DriveError` naming what is wrong."""
    root = Path(path)
    mpath = root / MANIFEST
    if not root.is_dir():
        raise DriveError(f"{root}: " + ("not a folder (a drive is a folder with a manifest.json)" if root.exists()
                                        else "drive folder not found"))
    if not mpath.is_file():
        raise DriveError(f"{mpath}: manifest missing (not a drive folder?)")
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DriveError(f"{mpath}: not valid JSON: {exc}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise DriveError(f"{mpath}: format: expected {FORMAT!r}")
    if m.get("version") != 1:
        raise DriveError(f"{mpath}: version: unsupported {m.get('version')!r} (this software reads 1)")

    def text(value: object, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise DriveError(f"{mpath}: {key}: expected a non-empty string, got {value!r}")
        return value

    def utc(value: object, key: str) -> float:
        value = text(value, key)  # its own error names the key once
        try:
            return parse_utc(value)
        except ValueError as exc:
            raise DriveError(f"{mpath}: {key}: {exc}") from None

    def file_field(key: str) -> Path | None:
        value = m.get(key)
        if value is None or value == "":
            return None
        p = root / text(value, key)
        if not p.exists():
            raise DriveError(f"{mpath}: {key}: {p} not found")
        return p

    segments = []
    video = m.get("video") or []
    if not isinstance(video, list):
        raise DriveError(f"{mpath}: video: expected a list of {{file, start_utc}} segments")
    for i, seg in enumerate(video):
        if not isinstance(seg, dict):
            raise DriveError(f"{mpath}: video[{i}]: expected {{file, start_utc}}")
        f = root / text(seg.get("file"), f"video[{i}].file")
        start = utc(seg.get("start_utc"), f"video[{i}].start_utc")
        if not f.is_file():
            raise DriveError(f"{mpath}: video[{i}].file: {f} not found")
        times = None
        if seg.get("frame_times"):
            key = f"video[{i}].frame_times"
            times = _read_frame_times(root / text(seg["frame_times"], key), f"{mpath}: {key}")
        segments.append(VideoSegment(f, start, times))
    stills = None
    stills_start = 0.0
    stills_interval = None
    if m.get("stills"):
        st = m["stills"]
        if not isinstance(st, dict):
            raise DriveError(f"{mpath}: stills: expected {{folder, start_utc}}")
        stills = root / text(st.get("folder"), "stills.folder")
        if st.get("start_utc") is not None:
            stills_start = utc(st["start_utc"], "stills.start_utc")
        elif not (stills / "timestamps.csv").is_file():  # never silently 1970: the GPS log would not match
            raise DriveError(f"{mpath}: stills.start_utc: required when {stills} has no timestamps.csv")
        if st.get("interval_s") is not None:
            v = st["interval_s"]
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 3600:
                raise DriveError(f"{mpath}: stills.interval_s: not a number of seconds in (0, 3600] (got {v!r})")
            stills_interval = float(v)
    detections = root / "detections.jsonl"
    try:
        offset = float(m.get("time_offset_s", 0.0))
        if not abs(offset) < 86400 * 366:  # also nan and inf
            raise ValueError
    except (TypeError, ValueError):
        raise DriveError(f"{mpath}: time_offset_s: not a number of seconds (within a year)") from None
    return Drive(
        root=root,
        vehicle_id=str(m.get("vehicle_id", "")),
        segments=tuple(segments),
        stills=stills,
        stills_start_utc=stills_start,
        gps_file=file_field("gps"),
        calibration_file=file_field("calibration"),
        detections_file=detections if detections.is_file() else None,
        time_offset_s=offset,
        source=str(m.get("source", "")),
        stills_interval_s=stills_interval,
    )


def write_manifest(
    root: Path,
    segments: list[tuple[str, float]] | list[dict],
    gps: str | None,
    calibration: str | None,
    vehicle_id: str = "",
    source: str = "",
    time_offset_s: float = 0.0,
) -> Path:
    """Write ``manifest.json`` for a drive folder; ``segments`` are (relative file, start UTC seconds)."""
    doc = {
        "format": FORMAT,
        "version": 1,
        "vehicle_id": vehicle_id,
        "video": [s if isinstance(s, dict) else {"file": s[0], "start_utc": utc_iso(s[1])} for s in segments],
        "stills": None,
        "gps": gps,
        "calibration": calibration,
        "time_offset_s": time_offset_s,
        "source": source,
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / MANIFEST
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path


__all__ = ["Drive", "DriveError", "FrameSourceError", "VideoSegment", "open_drive", "utc_iso", "write_manifest"]
