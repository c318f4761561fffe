"""Frame sources on real video: corrupt and truncated files, and a live source that stalls or vanishes.

Only the camera itself is simulated (there is none here): `StallingCapture` is a real ``cv2.VideoCapture`` on
the real GoPro video whose ``read`` stops returning frames, as a V4L2 device does when its cable shakes loose.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import threading
import time
from pathlib import Path

import cv2
import pytest

from tests.conftest import shared_path
from vehicle.frames import FrameSourceError, LiveSource, VideoFileSource, open_source

GOPRO_FRAMES = 315


def gopro_video() -> Path:
    return shared_path("drives", "gopro-max-walk", "video.mp4")


def decodable_frames(path: Path) -> int:
    """Frames OpenCV decodes from ``path`` read plainly (an independent count)."""
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def corrupt_copy(tmp: Path, offset_fraction: float = 0.5, n_bytes: int = 200_000, seed: int = 6) -> Path:
    """A copy of the real GoPro video with ``n_bytes`` of seeded noise written over its middle."""
    dst = tmp / "corrupt.mp4"
    shutil.copyfile(gopro_video(), dst)
    os.chmod(dst, 0o644)
    size = dst.stat().st_size
    with open(dst, "r+b") as fh:
        fh.seek(int(size * offset_fraction))
        fh.write(random.Random(seed).randbytes(n_bytes))
    return dst


def test_the_real_video_decodes_whole() -> None:
    src = VideoFileSource(gopro_video(), 1000.0)
    frames = list(src)
    assert len(frames) == GOPRO_FRAMES == decodable_frames(gopro_video())
    assert src.counters.bad_frames == 0
    assert frames[0].time_utc == 1000.0 and frames[-1].time_utc == pytest.approx(1000.0 + 314 / 29.97, abs=0.05)


def test_corrupt_frames_are_skipped_counted_and_the_file_is_read_to_its_end(tmp_path: Path) -> None:
    path = corrupt_copy(tmp_path)
    src = VideoFileSource(path, 0.0)
    frames = list(src)
    good = len(frames)
    assert 0 < src.counters.bad_frames < 100
    assert good + src.counters.bad_frames == GOPRO_FRAMES  # every frame slot is either decoded or counted
    assert src.counters.frames == good
    assert frames[-1].index == GOPRO_FRAMES - 1  # went on to the last frame after the damage
    idx = [f.index for f in frames]
    assert idx == sorted(set(idx))  # the gap is skipped, not filled or repeated
    gaps = [b - a for a, b in itertools.pairwise(idx) if b - a > 1]
    assert sum(g - 1 for g in gaps) == src.counters.bad_frames
    assert all(f.image is not None and f.image.shape == (480, 848, 3) for f in frames)


def test_truncated_mp4_without_its_index_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "truncated.mp4"
    shutil.copyfile(gopro_video(), path)
    os.chmod(path, 0o644)
    os.truncate(path, path.stat().st_size * 6 // 10)  # the GoPro writes its index (moov) last: it is gone
    with pytest.raises(FrameSourceError) as err:
        VideoFileSource(path, 0.0)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_stream_decodes_up_to_the_cut_and_counts_the_rest(tmp_path: Path) -> None:
    # An AVI (MJPEG, made from the real video's first 60 frames) stays readable when cut short, like a
    # recording interrupted by a power cut.
    path = tmp_path / "cut.avi"
    cap = cv2.VideoCapture(str(gopro_video()))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (848, 480))
    for _ in range(60):
        ok, image = cap.read()
        assert ok
        writer.write(image)
    writer.release()
    cap.release()
    os.truncate(path, path.stat().st_size * 7 // 10)
    readable = decodable_frames(path)
    assert 30 < readable < 60
    src = VideoFileSource(path, 0.0)
    frames = list(src)
    assert len(frames) == readable
    assert [f.index for f in frames] == list(range(readable))
    assert src.counters.bad_frames == 60 - 1 - readable  # the container announced 60: the missing ones are counted


def test_missing_and_unreadable_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FrameSourceError, match="not found"):
        open_source(str(tmp_path / "nope.mp4"))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(random.Random(1).randbytes(50_000))
    with pytest.raises(FrameSourceError, match=r"junk\.mp4"):
        open_source(str(junk))


class StallingCapture:
    """A real ``cv2.VideoCapture`` of a real file that stops delivering after ``frames`` reads (a stalled camera).

    It wraps the capture rather than subclassing it: with a Python subclass of ``cv2.VideoCapture`` used from
    the capture thread, this test run segfaulted in the garbage collector (OpenCV 5.1).
    """

    def __init__(self, path: str, frames: int):
        self.cap = cv2.VideoCapture(path)
        self.left = frames

    def isOpened(self) -> bool:  # cv2's method name
        return self.cap.isOpened()

    def read(self):
        if self.left <= 0:
            time.sleep(0.01)  # a stalled device blocks a little, then reports nothing
            return False, None
        self.left -= 1
        ok, image = self.cap.read()
        if not ok:  # a camera has no end of file: the file starts again (an idle machine decodes it in a second)
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self.cap.read()
        return ok, image

    def release(self) -> None:
        self.cap.release()


def collect(src: LiveSource, seconds: float) -> list:
    """Frames a consumer gets from ``src`` in ``seconds``."""
    got: list = []

    def consume() -> None:
        for frame in src:
            got.append(frame)

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    time.sleep(seconds)
    src.close()
    t.join(5)
    assert not t.is_alive()
    return got


def test_stalled_camera_is_noticed_by_the_watchdog_and_reopened() -> None:
    video = str(gopro_video())
    opened: list[float] = []

    def opener(spec: str) -> cv2.VideoCapture:
        opened.append(time.monotonic())
        return StallingCapture(video, frames=5)

    src = LiveSource("/dev/video0", watchdog_timeout_s=0.3, reopen_backoff_max_s=1.0, opener=opener)
    frames = collect(src, 3.0)
    # Each open gives 5 frames, then 0.3 s without one trips the watchdog, then a 0.5 s back-off.
    assert src.counters.reopens >= 2
    # Closed while waiting out a back-off, the last reopen has not called the opener yet.
    assert src.counters.reopens <= len(opened) <= src.counters.reopens + 1
    assert src.counters.frames == len(frames) >= 5 * len(opened) - src.counters.dropped_frames - 5
    assert src.counters.bad_frames > 0
    gaps = [b - a for a, b in itertools.pairwise(opened)]
    assert all(g >= 0.3 + 0.5 - 0.05 for g in gaps), gaps  # watchdog timeout + back-off, never a busy loop
    assert [f.index for f in frames] == sorted({f.index for f in frames})


def test_vanished_camera_is_retried_with_growing_back_off_until_it_returns() -> None:
    video = str(gopro_video())
    attempts: list[float] = []

    def opener(spec: str) -> cv2.VideoCapture:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            return StallingCapture(video, frames=3)  # works, then the cable is pulled
        if len(attempts) < 4:
            return cv2.VideoCapture(str(Path(video).with_name("unplugged.mp4")))  # device gone: not opened
        return StallingCapture(video, frames=10**9)  # plugged back in, for good

    src = LiveSource("/dev/video0", watchdog_timeout_s=0.2, reopen_backoff_max_s=1.5, opener=opener)
    frames = collect(src, 4.5)
    assert len(attempts) == 4, attempts  # the 4th open works and stays up
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    # watchdog 0.2 s + back-off 0.5 s; then it doubles to 1 s, then 2 s capped at 1.5 s.
    assert gaps == [pytest.approx(0.7, abs=0.2), pytest.approx(1.0, abs=0.2), pytest.approx(1.5, abs=0.2)]
    assert src.counters.reopens >= 1
    assert any(f.index >= 3 for f in frames)  # frames flow again after the camera returned
