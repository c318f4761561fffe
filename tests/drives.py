"""Drive folders for tests, built from the real recordings in ../shared."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import shared_path


def gopro_drive(tmp: Path) -> Path:
    """The real GoPro walk (video + its own GPS) as a drive folder under ``tmp``."""
    shared_path("drives", "gopro-max-walk", "video.mp4")
    from scripts.make_sample_drives import make_gopro

    return make_gopro(tmp)


def without_video(drive: Path, dest: Path) -> Path:
    """A copy of ``drive`` at ``dest`` with no video (its manifest lists none): replayed from cached detections."""
    shutil.copytree(drive, dest)
    m = json.loads((dest / "manifest.json").read_text())
    m["video"] = []
    (dest / "manifest.json").write_text(json.dumps(m))
    shutil.rmtree(dest / "video")
    return dest
