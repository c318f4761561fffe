"""The live GPS path against a real gpsd fed by gpsfake with real receiver logs from ../shared/gps."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pytest

from tests.conftest import shared_path
from tests.gpsd import require_gpsfake, running_gpsd
from vehicle.gps import Fix, GnssClock, GpsdReader, PoseTrack, read_nmea

pytestmark = pytest.mark.integration

R_EARTH_M = 6_371_008.8


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def metres(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    north = math.radians(lat2 - lat1) * R_EARTH_M
    east = math.radians(lon2 - lon1) * math.cos(math.radians(lat1)) * R_EARTH_M
    return math.hypot(north, east)


@pytest.fixture(autouse=True)
def _needs_gpsfake() -> None:
    require_gpsfake()


def test_live_fixes_and_poses_match_the_log(tmp_path):
    """gpsfake plays the GoPro walk; every fix read live equals the log's epoch at that time."""
    log = shared_path("drives", "gopro-max-walk", "gps.nmea")
    by_time = {round(f.time_utc, 2): f for f in read_nmea(log)}
    track, clock = PoseTrack(), GnssClock()
    seen: list[Fix] = []
    with running_gpsd(log, tmp_path, cycle_s=0.0278) as gpsd:  # two sentences per 1/18 s epoch: about real time
        reader = GpsdReader(track, port=gpsd.port, poll_s=0.05, clock=clock)
        reader.start()
        try:
            deadline = time.monotonic() + 30
            while len(seen) < 60 and time.monotonic() < deadline:
                latest = track.latest
                if latest is not None and (not seen or latest.time_utc > seen[-1].time_utc):
                    seen.append(latest)
                    now = clock.utc_at(time.monotonic())
                    pose = track.pose_at(now)
                    assert pose is not None and pose.valid and pose.fix_age_s < 1.0
                time.sleep(0.01)
        finally:
            reader.stop()
    assert len(seen) >= 60, reader.counters
    assert reader.counters["bad_reports"] == 0
    assert sum(f.fix_mode == 3 and f.hdop == 1.6 for f in seen) >= len(seen) - 1
    for f in seen:
        expected = by_time[round(f.time_utc, 2)]
        # a poll may fall between the RMC and the GGA of the very first epoch: 2D, no HDOP yet
        assert f.received_mono is not None and f.fix_mode in (2, 3) and f.hdop in (None, 1.6)
        assert f.lat_deg == pytest.approx(expected.lat_deg, abs=1e-8)
        assert f.lon_deg == pytest.approx(expected.lon_deg, abs=1e-8)
        assert f.speed_mps == pytest.approx(expected.speed_mps, abs=0.001)
        assert f.track_deg == pytest.approx(expected.track_deg, abs=1e-3)
    # poses between the fixes read live follow the full log within walking-noise
    for expected in by_time.values():
        if seen[0].time_utc <= expected.time_utc <= seen[-1].time_utc:
            pose = track.pose_at(expected.time_utc)
            assert metres(pose.lat_deg, pose.lon_deg, expected.lat_deg, expected.lon_deg) < 1.0


def test_a_fix_gpsd_keeps_repeating_goes_stale(tmp_path):
    """gpsfake single-steps the log, then stops: gpsd answers every poll with the same old fix."""
    log = shared_path("drives", "gopro-max-walk", "gps.nmea")
    track, clock = PoseTrack(max_fix_age_s=1.0), GnssClock()
    with running_gpsd(log, tmp_path, stepped=True) as gpsd:
        reader = GpsdReader(track, port=gpsd.port, poll_s=0.05, clock=clock)
        reader.start()
        try:
            deadline = time.monotonic() + 20
            while reader.counters["fixes"] < 4:  # one epoch (RMC + GGA) at a time until fixes flow
                assert time.monotonic() < deadline, reader.counters
                gpsd.step(2)
                time.sleep(0.1)
            time.sleep(0.3)
            fixes_then, newest = reader.counters["fixes"], track.latest.time_utc
            t_fresh = time.monotonic()
            fresh = track.pose_at(clock.utc_at(t_fresh))
            time.sleep(1.5)  # nothing fed: gpsd repeats its last fix
            t_stale = time.monotonic()
            stale = track.pose_at(clock.utc_at(t_stale))
            counters = reader.counters
        finally:
            reader.stop()
    assert counters["fixes"] == fixes_then and counters["stale"] >= 10
    assert track.latest.time_utc == newest
    # The fix's age grows with the clock while gpsd repeats it (load on the machine only delays the reads).
    assert fresh.valid and fresh.fix_age_s < 1.0
    assert stale.fix_age_s == pytest.approx(fresh.fix_age_s + (t_stale - t_fresh), abs=0.05) and not stale.valid


def test_reader_reconnects_after_gpsd_restarts(tmp_path):
    first = shared_path("drives", "gopro-max-walk", "gps.nmea")  # 2019
    later = shared_path("gps", "gpsd-testlogs", "quectel-l76k-nmea.log")  # 2026
    track = PoseTrack()
    with running_gpsd(first, tmp_path, cycle_s=0.02, loop=True) as gpsd:
        reader = GpsdReader(track, port=gpsd.port, poll_s=0.05, max_backoff_s=0.5)
        reader.start()
        try:
            wait_for(lambda: reader.counters["fixes"] >= 5, 20, "fixes from the first gpsd")
            gpsd.stop()  # gpsd dies
            wait_for(lambda: not reader.connected, 10, "the reader to notice")
            time.sleep(1.0)  # a few failed reconnection attempts
            assert reader.counters["connect_failures"] >= 1
            gpsd.start(later)  # and comes back on the same port
            wait_for(lambda: reader.counters["connects"] >= 2, 20, "a reconnection")
            wait_for(lambda: track.latest is not None and track.latest.time_utc > 1.7e9, 20, "fixes from 2026")
            assert reader.connected and reader._thread.is_alive()
        finally:
            reader.stop()
    assert reader.counters["disconnects"] >= 1
    pose = track.pose_at(track.latest.time_utc)
    assert pose.valid and 20 < pose.lat_deg < 60  # quectel-l76k-nmea.log was recorded in the northern mid-latitudes


def test_a_receiver_without_fix(tmp_path):
    """skytraq.log never gets a fix: gpsd reports mode 1 without time or position; no pose comes out."""
    log = shared_path("gps", "gpsd-testlogs", "skytraq.log")
    track = PoseTrack()
    with running_gpsd(log, tmp_path, cycle_s=0.01) as gpsd:
        reader = GpsdReader(track, port=gpsd.port, poll_s=0.05)
        reader.start()
        try:
            wait_for(lambda: reader.counters["polls"] >= 20, 20, "polls")
        finally:
            reader.stop()
    c = reader.counters
    assert c["fixes"] == 0 and c["no_fix"] + c["inactive"] >= 10 and c["bad_reports"] == 0
    assert track.counters["fixes"] == 0 and track.pose_at(time.time()) is None
