"""Cached detections: ``--save-detections F.jsonl`` writes them, ``--detections F.jsonl`` replays them.

One JSON object per line. The first line is a header naming the model; then one line per frame::

    {"header": {"format": "patrol-detections", "version": 1, "model": {"name": ..., "sha256": ..., "covered": [...],
                "object_model": {"name": ..., "sha256": ...}}}}  # object_model: only with a general-object model
    {"frame": 12, "time_utc": 1574120714.4, "size_wh": [848, 480],
     "detections": [{"category": "road_damage", "score": 0.71, "xyxy": [10.5, 20.0, 80.2, 95.0]},
                    {"category": "illegal_parking", "score": 0.55, "xyxy": [...], "object_class": "car"}]}

A detection with ``object_class`` came from the general-object model and is a rule *candidate* of its category.
Location and deduplication can be tuned by replaying such a file, without a model and even without video.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

FORMAT = "patrol-detections"


class DetectionLogError(ValueError):
    """A cached-detections file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class CategoryBox:
    """One detection, already mapped onto the city's taxonomy."""

    category: str
    score: float
    xyxy: tuple[float, float, float, float]
    object_class: str | None = None  # set for general-object candidates (rules decide)

    @property
    def foot_px(self) -> tuple[float, float]:
        """Bottom centre of the box: where the object touches the ground."""
        return ((self.xyxy[0] + self.xyxy[2]) / 2.0, self.xyxy[3])


@dataclass(frozen=True)
class FrameDetections:
    """All boxes of one frame."""

    frame_index: int
    time_utc: float
    size_wh: tuple[int, int]
    boxes: tuple[CategoryBox, ...]


class DetectionLogWriter:
    """Appends frames of detections to a JSON-lines file."""

    def __init__(self, path: str | Path, model: dict, keep_until_utc: float | None = None):
        """Start the file afresh, or, for a resumed replay (``keep_until_utc``), keep the frames an earlier run
        wrote up to that time and go on after them (frames after it are redone by the resumed run)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = self._frames_until(keep_until_utc) if keep_until_utc is not None and self.path.is_file() else []
        self._fh: IO[str] = open(self.path, "w", encoding="utf-8")
        self._fh.write(json.dumps({"header": {"format": FORMAT, "version": 1, "model": model}}) + "\n")
        self._fh.writelines(kept)

    def _frames_until(self, until_utc: float) -> list[str]:
        try:
            read_detection_log(self.path)[1].close()  # the header must be ours
            lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)[1:]
        except (DetectionLogError, OSError, UnicodeDecodeError):
            return []  # not a detections file: start afresh
        kept = []
        for line in lines:
            try:
                if line.endswith("\n") and json.loads(line)["time_utc"] <= until_utc:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                pass  # the line a kill cut short
        return kept

    def write(self, fd: FrameDetections) -> None:
        """Write one frame."""
        dets = []
        for b in fd.boxes:
            d = {"category": b.category, "score": round(float(b.score), 5),
                 "xyxy": [round(float(v), 2) for v in b.xyxy]}
            if b.object_class:
                d["object_class"] = b.object_class
            dets.append(d)
        line = {"frame": fd.frame_index, "time_utc": round(fd.time_utc, 6), "size_wh": list(fd.size_wh),
                "detections": dets}
        self._fh.write(json.dumps(line) + "\n")
        self._fh.flush()  # before the frame's commit: a resumed replay keeps what the kill left in the file

    def close(self) -> None:
        """Flush and close."""
        self._fh.close()


def is_detection_log(path: str | Path) -> bool:
    """Whether ``path`` is a file whose first line is a detections header (of any version)."""
    try:
        with open(path, "rb") as fh:
            head = json.loads(fh.readline(1 << 16))
        header = head.get("header") if isinstance(head, dict) else None
        return isinstance(header, dict) and header.get("format") == FORMAT
    except (OSError, ValueError):
        return False


def read_detection_log(path: str | Path, categories: Collection[str] | None = None
                       ) -> tuple[dict, Iterator[FrameDetections]]:
    """The header's model reference and an iterator over the frames; `DetectionLogError` on bad lines.

    Args:
        path: the JSON-lines file.
        categories: the taxonomy's names; a box of any other category is a bad line (None: not checked).
    """
    path = Path(path)
    if not path.is_file():
        raise DetectionLogError(f"{path}: " + ("is a folder, not a detections file" if path.is_dir()
                                               else "detections file not found"))
    fh = open(path, "rb")  # decoded line by line: a bad byte is named by its line
    try:
        header = json.loads(fh.readline().decode("utf-8"))["header"]
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise KeyError("format")
        if header.get("version", 1) != 1:
            fh.close()
            raise DetectionLogError(f"{path}:1: {FORMAT} version {header.get('version')!r}: this patrol reads "
                                    "version 1 (a newer patrol wrote it?)")
        model = header.get("model", {})
        if not isinstance(model, dict) or not isinstance(model.get("covered", []), list):
            raise KeyError("model")
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        fh.close()
        raise DetectionLogError(f"{path}:1: not a {FORMAT} header line") from None
    known = None if categories is None else frozenset(categories)

    def frames() -> Iterator[FrameDetections]:
        last = -1
        with fh:
            for lineno, raw in enumerate(fh, start=2):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise DetectionLogError(f"{path}:{lineno}: not UTF-8 text") from None
                if not line.strip():
                    continue
                try:
                    fd = _frame(json.loads(line), known)
                except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
                    raise DetectionLogError(f"{path}:{lineno}: bad frame line ({exc})") from None
                if fd.frame_index <= last:  # frames are matched to video by index: one line a frame, in order
                    raise DetectionLogError(f"{path}:{lineno}: bad frame line (frame {fd.frame_index} does not "
                                            f"come after frame {last})")
                last = fd.frame_index
                yield fd

    return model, frames()


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):  # JSON true or "0.5" is not a number
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return v


def _frame(d: dict, known: frozenset[str] | None) -> FrameDetections:
    """One frame line, checked: a cached box is trusted as much as the model's own output."""
    frame = d["frame"]
    if not isinstance(frame, int) or isinstance(frame, bool) or not 0 <= frame < 2**62:
        raise ValueError(f"frame must be a whole number >= 0, got {frame!r}")
    size = d["size_wh"]
    if not isinstance(size, list) or len(size) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v < 100_000 for v in size):
        raise ValueError(f"size_wh must be two positive whole numbers of pixels, got {size!r}")
    w, h = size
    if not isinstance(d["detections"], list):
        raise ValueError(f"detections must be a list, got {type(d['detections']).__name__}")
    boxes = []
    for b in d["detections"]:
        category = b["category"]
        if not isinstance(category, str) or (known is not None and category not in known):
            raise ValueError(f"category {category!r} is not in the taxonomy")
        xyxy = tuple(_finite(v, "xyxy") for v in b["xyxy"])
        if len(xyxy) != 4:
            raise ValueError("xyxy needs 4 numbers")
        x1, y1, x2, y2 = xyxy
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"xyxy {list(xyxy)} is empty or inverted (needs x1 < x2 and y1 < y2)")
        slack = 0.5  # pixels: rounding in whoever wrote the file
        if x1 < -slack or y1 < -slack or x2 > w + slack or y2 > h + slack:
            raise ValueError(f"xyxy {list(xyxy)} reaches outside the {w}x{h} image")
        score = _finite(b["score"], "score")
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"score must be within [0, 1], got {b['score']!r}")
        cls = b.get("object_class")
        if cls is not None and (not isinstance(cls, str) or not cls):
            raise ValueError(f"object_class must be a class name, got {cls!r}")
        boxes.append(CategoryBox(category, score, xyxy, cls))  # type: ignore[arg-type]
    return FrameDetections(frame, _finite(d["time_utc"], "time_utc"), (w, h), tuple(boxes))
