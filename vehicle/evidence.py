"""Evidence photos: the full frame with the event's box drawn, as a JPEG on disk.

Photos are encoded only for events, never for every frame.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np


def draw_evidence(
    image_bgr: np.ndarray, box_xyxy: tuple[float, float, float, float], label: str, max_width_px: int = 1920
) -> np.ndarray:
    """A copy of the frame with the box and its label drawn, scaled down to at most ``max_width_px``."""
    out = image_bgr.copy()
    h, w = out.shape[:2]
    thickness = max(2, round(min(w, h) / 300))
    x1, y1, x2, y2 = (round(v) for v in box_xyxy)
    cv2.rectangle(out, (x1, y1), (x2, y2), (0, 0, 255), thickness)
    scale = max(0.5, min(w, h) / 900)
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    ty = y1 - 4 if y1 - th - base - 4 > 0 else y2 + th + 4
    cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 4, ty + base), (0, 0, 255), -1)
    cv2.putText(out, label, (x1 + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    if w > max_width_px:
        r = max_width_px / w
        out = cv2.resize(out, (max_width_px, round(h * r)), interpolation=cv2.INTER_AREA)
    return out


def encode_jpeg(image_bgr: np.ndarray, quality: int = 85) -> bytes:
    """JPEG bytes of a BGR image."""
    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


class PhotoError(OSError):
    """An evidence photo could not be written; the message names the file."""


def save_photo(folder: Path, event_id: str, jpeg: bytes) -> Path:
    """Write a photo atomically (temp file + rename) and return its path; `PhotoError` naming it on failure."""
    path = folder / f"{event_id}.jpg"
    tmp = path.with_suffix(".jpg.tmp")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(jpeg)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # disk full, read-only, a file where the folder should be
        raise PhotoError(f"{path}: cannot write the evidence photo: {exc.strerror or exc}") from None
    return path
