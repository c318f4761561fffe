"""Drive folders for tests, built from the real recordings in ../shared."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import shared_path


def gopro_drive(tmp: Path) -> Path:
    """The real GoPro walk (video + its own GPS) as a drive folder under ``tmp``."""
    shared_path("drives", "gopro-max-walk", "video.mp4")
    from scripts.make_sample_drives import make_gopro

    return make_gopro(tmp)
