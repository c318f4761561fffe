"""Cached detections: ``--save-detections F.jsonl`` writes them, ``--detections F.jsonl`` replays them.

One JSON object per line. The first line is a header naming the model; then one line per frame::

    {"header": {"format": "patrol-detections", "version": 1, "model": {"name": ..., "sha256": ...}}}
    {"frame": 12, "time_utc": 1574120714.4, "size_wh": [848, 480],
     "detections": [{"category": "road_damage", "score": 0.71, "xyxy": [10.5, 20.0, 80.2, 95.0]},
                    {"category": "illegal_parking", "score": 0.55, "xyxy": [...], "object_class": "car"}]}

A detection with ``object_class`` came from the general-object model and is a rule *candidate* of its category.
Location and deduplication can be tuned by replaying such a file, without a model and even without video.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
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

    def __init__(self, path: str | Path, model: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = open(self.path, "w", encoding="utf-8")
        self._fh.write(json.dumps({"header": {"format": FORMAT, "version": 1, "model": model}}) + "\n")

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

    def close(self) -> None:
        """Flush and close."""
        self._fh.close()


def read_detection_log(path: str | Path) -> tuple[dict, Iterator[FrameDetections]]:
    """The header's model reference and an iterator over the frames; `DetectionLogError` on bad lines."""
    path = Path(path)
    if not path.is_file():
        raise DetectionLogError(f"{path}: detections file not found")
    fh = open(path, encoding="utf-8")
    first = fh.readline()
    try:
        header = json.loads(first)["header"]
        if header.get("format") != FORMAT:
            raise KeyError("format")
    except (json.JSONDecodeError, KeyError, TypeError):
        fh.close()
        raise DetectionLogError(f"{path}:1: not a {FORMAT} header line") from None

    def frames() -> Iterator[FrameDetections]:
        with fh:
            for lineno, line in enumerate(fh, start=2):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                    boxes = tuple(
                        CategoryBox(
                            str(b["category"]), float(b["score"]),
                            tuple(float(v) for v in b["xyxy"]),  # type: ignore[arg-type]
                            b.get("object_class"),
                        )
                        for b in d["detections"]
                    )
                    if any(len(b.xyxy) != 4 for b in boxes):
                        raise ValueError("xyxy needs 4 numbers")
                    yield FrameDetections(int(d["frame"]), float(d["time_utc"]),
                                          (int(d["size_wh"][0]), int(d["size_wh"][1])), boxes)
                except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
                    raise DetectionLogError(f"{path}:{lineno}: bad frame line ({exc})") from None

    return header.get("model", {}), frames()
