"""Pose interpolation, gpsd-JSON logs, replay tracks, the GNSS clock, and the live reader's fault handling."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import math
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import shared_path
from vehicle.gps import (
    Fix,
    GnssClock,
    GpsdJsonLog,
    GpsdReader,
    GpsLogError,
    NmeaLog,
    PoseTrack,
    fix_from_tpv,
    load_track,
    open_gps_log,
    read_gpsd_json,
    read_nmea,
)

R_EARTH_M = 6_371_008.8


def utc(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def fix(
    t: float,
    lat: float = 48.0,
    lon: float = 11.0,
    speed: float | None = 10.0,
    track: float | None = 90.0,
    mode: int = 3,
    hdop: float | None = 1.0,
) -> Fix:
    return Fix(t, lat, lon, 500.0, speed, track, mode, hdop)


def no_fix(t: float) -> Fix:
    return Fix(t, math.nan, math.nan, None, None, None, 1, None)


def angle_diff(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


# -- PoseTrack -------------------------------------------------------------------------------------------------


def test_midpoint_interpolation_by_hand():
    track = PoseTrack()
    track.add(fix(100.0, 48.0000, 11.0000, speed=10.0, track=80.0, hdop=1.0))
    track.add(fix(101.0, 48.0001, 11.0002, speed=12.0, track=100.0, hdop=2.0, mode=2))
    p = track.pose_at(100.5)
    assert p.lat_deg == pytest.approx(48.00005, abs=1e-12) and p.lon_deg == pytest.approx(11.0001, abs=1e-12)
    assert p.speed_mps == pytest.approx(11.0) and p.heading_deg == pytest.approx(90.0)
    assert (p.fix_mode, p.hdop, p.fix_age_s, p.interpolated, p.valid) == (2, 2.0, 0.5, True, True)
    q = track.pose_at(100.25)
    assert q.lat_deg == pytest.approx(48.000025, abs=1e-12) and q.heading_deg == pytest.approx(85.0)
    exact = track.pose_at(100.0)
    assert exact.interpolated is False and exact.lat_deg == 48.0 and exact.fix_age_s == 0.0


def test_heading_interpolates_across_north():
    track = PoseTrack()
    track.add(fix(0.0, track=359.0))
    track.add(fix(1.0, track=1.0))
    assert angle_diff(track.pose_at(0.5).heading_deg, 0.0) < 1e-9
    assert track.pose_at(0.25).heading_deg == pytest.approx(359.5)
    assert track.pose_at(0.75).heading_deg == pytest.approx(0.5)


def test_heading_held_while_stopped():
    track = PoseTrack(stopped_speed_mps=1.0)
    track.add(fix(0.0, speed=8.0, track=45.0))
    track.add(fix(1.0, speed=0.3, track=200.0))  # course over ground is noise when nearly stopped
    track.add(fix(2.0, speed=0.0, track=310.0))
    track.add(fix(3.0, speed=5.0, track=100.0))
    assert track.pose_at(1.0).heading_deg == 45.0
    assert track.pose_at(1.5).heading_deg == 45.0
    assert track.pose_at(2.0).heading_deg == 45.0
    assert track.pose_at(3.0).heading_deg == 100.0
    assert track.pose_at(2.5).heading_deg == pytest.approx(72.5)  # held 45 to 100 over the half second


def test_heading_unknown_until_the_car_moves():
    track = PoseTrack()
    track.add(fix(0.0, speed=0.2, track=123.0))
    assert track.pose_at(0.0).heading_deg is None


def test_heading_and_speed_from_positions_when_no_cog():
    step_deg = 0.0001
    track = PoseTrack()
    for k in range(3):  # eastwards along the equator, then northwards
        track.add(fix(float(k), lat=0.0, lon=10.0 + k * step_deg, speed=None, track=None))
    for k in range(1, 3):
        track.add(fix(2.0 + k, lat=k * step_deg, lon=10.0 + 2 * step_deg, speed=None, track=None))
    metres_per_step = math.radians(step_deg) * R_EARTH_M  # 11.12 m in one second
    east, north = track.pose_at(1.0), track.pose_at(4.0)
    assert east.heading_deg == pytest.approx(90.0) and east.speed_mps == pytest.approx(metres_per_step, rel=1e-6)
    assert angle_diff(north.heading_deg, 0.0) < 1e-6 and north.speed_mps == pytest.approx(metres_per_step, rel=1e-4)
    assert track.pose_at(0.0).heading_deg is None  # the first fix has nothing to derive from


def test_no_extrapolation_past_the_newest_fix():
    track = PoseTrack(max_fix_age_s=3.0)
    track.add(fix(10.0, 48.0, 11.0))
    track.add(fix(11.0, 48.001, 11.0))
    p = track.pose_at(13.0)
    assert (p.lat_deg, p.lon_deg, p.fix_age_s, p.interpolated, p.valid) == (48.001, 11.0, 2.0, False, True)
    late = track.pose_at(14.5)
    assert late.lat_deg == 48.001 and late.fix_age_s == 3.5 and not late.valid


def test_no_interpolation_across_a_long_gap():
    track = PoseTrack(max_gap_s=5.0, max_fix_age_s=3.0)
    track.add(fix(100.0, 48.0, 11.0))
    track.add(fix(110.0, 48.01, 11.0))
    p = track.pose_at(105.0)
    assert (p.lat_deg, p.interpolated, p.fix_age_s, p.valid) == (48.0, False, 5.0, False)


def test_nothing_before_the_first_fix():
    track = PoseTrack()
    assert track.pose_at(0.0) is None
    track.add(no_fix(5.0))
    assert track.pose_at(6.0) is None  # no position yet at all
    track.add(fix(7.0))
    assert track.pose_at(6.9) is None and track.pose_at(7.0).valid


def test_losing_the_fix_keeps_the_last_position_but_not_valid():
    track = PoseTrack()
    track.add(fix(100.0, 48.0, 11.0, track=30.0))
    track.add(no_fix(101.0))
    track.add(fix(102.0, 48.1, 11.0))
    before = track.pose_at(100.5)  # between a fix and a no-fix epoch: no interpolation
    assert (before.lat_deg, before.fix_mode, before.interpolated, before.valid) == (48.0, 3, False, True)
    lost = track.pose_at(101.5)
    assert (lost.lat_deg, lost.lon_deg, lost.heading_deg) == (48.0, 11.0, 30.0)
    assert (lost.fix_mode, lost.fix_age_s, lost.valid) == (1, 1.5, False)
    assert track.pose_at(102.0).valid
    assert track.counters["no_fix"] == 1


def test_null_island_is_never_a_position():
    track = PoseTrack()
    track.add(fix(1.0, 0.0, 0.0))
    assert track.pose_at(1.0) is None and track.counters["zero_position"] == 1
    track.add(fix(2.0, 48.0, 11.0))
    track.add(fix(3.0, 0.0, 0.0))
    p = track.pose_at(3.5)
    assert (p.lat_deg, p.lon_deg, p.valid) == (48.0, 11.0, False)


def test_out_of_order_and_duplicate_times_are_ignored_and_counted():
    track = PoseTrack()
    track.add(fix(10.0, 48.0))
    track.add(fix(10.0, 49.0))
    track.add(fix(9.0, 50.0))
    track.add(fix(math.nan, 51.0))
    track.add(fix(11.0, 48.001))
    c = track.counters
    assert (c["fixes"], c["duplicate"], c["out_of_order"], len(track)) == (2, 1, 2, 2)
    assert track.pose_at(10.0).lat_deg == 48.0


def test_receiver_time_stepping_back_restarts_the_track():
    track = PoseTrack(reset_after_n=5)
    for k in range(10):
        track.add(fix(1000.0 + k, 48.0 + k * 1e-5))
    for k in range(4):
        track.add(fix(500.0 + k, 47.0))  # ignored so far: may be a glitch
    assert track.pose_at(501.0) is None and track.counters["time_resets"] == 0
    track.add(fix(504.0, 47.0))  # five in a row, increasing: the receiver's time really stepped back
    assert track.counters["time_resets"] == 1 and track.counters["out_of_order"] == 5
    assert track.pose_at(502.5).valid and len(track) == 5  # the superseded times are gone
    stale = track.pose_at(1005.0)
    assert (stale.lat_deg, stale.fix_age_s, stale.valid) == (47.0, 501.0, False)
    track.add(fix(505.0, 47.0))
    assert track.latest.time_utc == 505.0 and len(track) == 6


def test_one_fix_from_the_future_costs_only_a_few_fixes():
    """A single glitched time far ahead would otherwise block every later fix."""
    track = PoseTrack(reset_after_n=5)
    for k in range(10):
        track.add(fix(float(k), 48.0 + k * 1e-5))
    track.add(fix(1e6, 10.0))
    for k in range(10, 20):
        track.add(fix(float(k), 48.0 + k * 1e-5))
    assert track.counters["time_resets"] == 1 and len(track) == 20
    assert track.pose_at(4.5).lat_deg == pytest.approx(48.000045) and track.pose_at(19.0).valid
    assert PoseTrack(reset_after_n=0).counters["time_resets"] == 0


def test_memory_bounded_by_keep_s():
    track = PoseTrack(keep_s=10.0)
    for k in range(100):
        track.add(fix(float(k), 48.0 + k * 1e-5))
    assert len(track) == 11 and track.counters["dropped_old"] == 89
    assert track.pose_at(50.0) is None and track.pose_at(95.0).lat_deg == pytest.approx(48.00095)


def test_bad_parameters_name_themselves():
    with pytest.raises(ValueError, match="max_gap_s must be > 0"):
        PoseTrack(max_gap_s=0)
    with pytest.raises(ValueError, match="stopped_speed_mps"):
        PoseTrack(stopped_speed_mps=-1)


def test_concurrent_writer_and_readers():
    track = PoseTrack(keep_s=50.0)
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                for t in (0.5, 100.5, 1999.5, 5000.0):
                    p = track.pose_at(t)
                    assert p is None or math.isfinite(p.lat_deg)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for r in readers:
        r.start()
    for k in range(4000):
        track.add(fix(k * 0.5, 48.0 + k * 1e-6))
    done.set()
    for r in readers:
        r.join()
    assert not errors
    assert track.counters["fixes"] == 4000 and len(track) == 101


_FIX = st.builds(
    Fix,
    time_utc=st.one_of(st.floats(0, 100), st.just(math.nan)),
    lat_deg=st.one_of(st.floats(-90, 90), st.just(0.0), st.just(math.nan)),
    lon_deg=st.one_of(st.floats(-180, 180), st.just(0.0)),
    alt_m=st.none(),
    speed_mps=st.one_of(st.none(), st.floats(0, 60)),
    track_deg=st.one_of(st.none(), st.floats(0, 359.99)),
    fix_mode=st.integers(0, 3),
    hdop=st.one_of(st.none(), st.floats(0.5, 50)),
)


@settings(max_examples=300, deadline=None)
@given(
    fixes=st.lists(_FIX, max_size=40),
    queries=st.lists(st.one_of(st.floats(-10, 200), st.just(math.nan), st.just(math.inf)), max_size=20),
)
def test_fuzz_pose_track(fixes, queries):
    track = PoseTrack(max_fix_age_s=3.0, keep_s=50.0, reset_after_n=3)
    for f in fixes:
        track.add(f)
    assert len(track) <= len(fixes)
    for t in queries:
        p = track.pose_at(t)
        if p is None:
            continue
        assert math.isfinite(p.lat_deg) and math.isfinite(p.lon_deg) and p.fix_age_s >= 0
        assert p.heading_deg is None or 0 <= p.heading_deg < 360
        if p.valid:
            assert p.fix_mode >= 2 and p.fix_age_s <= 3.0 and (p.lat_deg, p.lon_deg) != (0.0, 0.0)


def test_gopro_walk_poses_match_its_csv():
    """Poses at the CSV's own (sub-centisecond) times land within NMEA rounding of the camera's GPS5 track."""
    drive = shared_path("drives", "gopro-max-walk")
    track = load_track(drive / "gps.nmea")
    with (drive / "gps.csv").open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        p = track.pose_at(utc(row["utc"]))
        north = math.radians(p.lat_deg - float(row["lat"])) * R_EARTH_M
        east = math.radians(p.lon_deg - float(row["lon"])) * math.cos(math.radians(p.lat_deg)) * R_EARTH_M
        assert math.hypot(north, east) < 0.25
        assert p.valid and p.fix_mode == 3 and p.hdop == 1.6 and p.fix_age_s < 0.06
    # the walk goes roughly south-south-east along the sidewalk
    headings = [track.pose_at(utc(r["utc"])).heading_deg for r in rows]
    assert sum(90 < h < 200 for h in headings if h is not None) > 0.9 * len(headings)


def test_load_track_keeps_a_whole_long_drive():
    track = load_track(shared_path("gps", "genivi-drives", "extracted", "NMEA_Logs", "20100403_Z205_Switzerland.txt"))
    assert track.counters["dropped_old"] == 0 and track.counters["fixes"] > 10_000
    assert track.pose_at(utc("2010-04-03T11:30:00Z")).valid


def test_load_track_without_a_fix_is_one_clear_error():
    path = shared_path("gps", "gpsd-testlogs", "skytraq.log")
    with pytest.raises(GpsLogError, match=r"^no fix in .*skytraq\.log \(") as err:
        load_track(path)
    assert "\n" not in str(err.value)


# -- gpsd JSON -------------------------------------------------------------------------------------------------


def test_gpspipe_capture_quectel():
    fixes = list(read_gpsd_json(shared_path("gps", "gpsd-json", "test", "gpsd.log")))
    assert len(fixes) == 2  # three TPVs, two of them for the same second
    first = fixes[0]
    assert first.time_utc == utc("2025-12-17T12:10:32Z")
    assert (first.lat_deg, first.lon_deg, first.alt_m) == (50.074039133, 14.466591817, 257.3)
    assert (first.track_deg, first.speed_mps, first.fix_mode) == (320.5, 0.0, 3)
    assert first.hdop == 0.5  # from the SKY that follows its TPV
    assert fixes[1].time_utc == utc("2025-12-17T12:10:33Z") and fixes[1].lat_deg == 50.0740391


def test_gpspipe_capture_ublox():
    (f,) = read_gpsd_json(shared_path("gps", "gpsd-json", "test", "gpsd_ublox.log"))
    assert f.time_utc == utc("2025-12-15T16:17:02Z") and f.hdop == 1.47 and f.alt_m == 48.18


def test_gpsd_regression_output_matches_the_nmea_it_came_from():
    """gpsd's .chk of telit-he910 (JSON with NMEA lines between) against our NMEA reading of the raw log."""
    log = shared_path("gps", "gpsd-testlogs", "telit-he910.log")
    from_json = list(read_gpsd_json(log.with_suffix(".log.chk")))
    from_nmea = list(read_nmea(log))
    assert len(from_json) == len(from_nmea) == 187
    for a, b in zip(from_json, from_nmea, strict=True):
        assert a.time_utc == pytest.approx(b.time_utc, abs=1e-6)
        assert (a.lat_deg, a.lon_deg) == pytest.approx((b.lat_deg, b.lon_deg), abs=1e-9)
        assert a.fix_mode == b.fix_mode == 3


def test_bad_tpv_reports_are_skipped(tmp_path):
    good = {"class": "TPV", "mode": 3, "time": "2024-05-01T10:00:01.000Z", "lat": 48.1, "lon": 11.5}
    lines = [
        "garbage",
        '{"class":"TPV","mode":3,"time":"2024-05-01T10:00:00.000Z","lat":48.1}',  # no lon
        '{"class":"TPV","mode":3,"lat":48.1,"lon":11.5}',  # no time
        '{"class":"TPV","mode":3,"time":"yesterday","lat":48.1,"lon":11.5}',
        '{"class":"TPV","mode":3,"time":"2024-05-01T10:00:00.500Z","lat":NaN,"lon":11.5}',
        '{"class":"TPV","mode":3,"time":"2024-05-01T10:00:00.700Z","lat":1e400,"lon":11.5}',
        "[" * 100_000,
        '{"class":"TPV","mode":true,"time":"2024-05-01T10:00:00.800Z","lat":48.1,"lon":11.5}',
        '{"class":"TPV","mode":1,"time":"2024-05-01T10:00:00.900Z"}',
        json.dumps(good),
        '{"class":"TPV","mode":3,"time":"2024-05-01T10:00:02',  # cut off
    ]
    path = tmp_path / "gpspipe.json"
    path.write_text("\n".join(lines))
    reader = read_gpsd_json(path)
    fixes = list(reader)
    assert [(f.time_utc, f.fix_mode) for f in fixes] == [
        (utc("2024-05-01T10:00:00.800Z"), 0),  # a bool is not a mode: unknown, and no position
        (utc("2024-05-01T10:00:00.900Z"), 1),
        (utc("2024-05-01T10:00:01Z"), 3),
    ]
    assert reader.counters["bad_tpv"] == 5 and reader.counters["junk"] == 3


def test_fix_from_tpv_old_gpsd_numeric_time_and_missing_keys():
    f = fix_from_tpv({"class": "TPV", "mode": 2, "time": 1700000000.5, "lat": -33.9, "lon": 151.2, "track": 360})
    assert (f.time_utc, f.fix_mode, f.track_deg, f.alt_m, f.speed_mps) == (1700000000.5, 2, 0.0, None, None)
    assert fix_from_tpv({"class": "SKY"}) is None and fix_from_tpv("TPV") is None


def test_gpsd_json_file_errors(tmp_path):
    with pytest.raises(GpsLogError, match="cannot read"):
        read_gpsd_json(tmp_path / "missing.json")
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    with pytest.raises(GpsLogError, match=r"empty\.json:0: empty GPS log"):
        read_gpsd_json(empty)
    sky_only = tmp_path / "sky.json"
    sky_only.write_text('{"class":"SKY","hdop":1.2}\n')
    with pytest.raises(GpsLogError, match=r"sky\.json:1: no gpsd TPV report in 1 lines"):
        list(read_gpsd_json(sky_only))


def test_open_gps_log_sniffs_the_format():
    assert isinstance(open_gps_log(shared_path("gps", "gpsd-json", "test", "gpsd.log")), GpsdJsonLog)
    assert isinstance(open_gps_log(shared_path("gps", "gpsd-testlogs", "telit-he910.log.chk")), GpsdJsonLog)
    assert isinstance(open_gps_log(shared_path("drives", "gopro-max-walk", "gps.nmea")), NmeaLog)
    assert isinstance(open_gps_log(shared_path("gps", "gpsd-testlogs", "ublox-zed-f9r.log")), NmeaLog)


_JSON_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["2024-05-01T10:00:00Z", "TPV", "SKY", "POLL"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
_REPORT = st.fixed_dictionaries(
    {"class": st.sampled_from(["TPV", "SKY", "POLL", "DEVICE", 3])},
    optional={
        k: _JSON_VALUE | st.floats(-200, 200)
        for k in ("time", "mode", "lat", "lon", "alt", "altMSL", "speed", "track", "hdop", "tpv", "sky", "active")
    },
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reports=st.lists(st.one_of(_REPORT.map(json.dumps), st.text(max_size=40)), max_size=20))
def test_fuzz_gpsd_json_reports(tmp_path, reports):
    path = tmp_path / "fuzz.json"
    path.write_text("\n".join(reports))
    try:
        for f in read_gpsd_json(path):
            assert math.isfinite(f.time_utc) and f.fix_mode in (0, 1, 2, 3)
            if f.fix_mode >= 2:
                assert abs(f.lat_deg) <= 90 and abs(f.lon_deg) <= 180
    except GpsLogError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=3000))
def test_fuzz_gps_log_bytes(tmp_path, data):
    path = tmp_path / "fuzz.log"
    path.write_bytes(data)
    try:
        list(open_gps_log(path))
    except GpsLogError as exc:
        assert "\n" not in str(exc)


# -- GnssClock -------------------------------------------------------------------------------------------------


def live(t: float, mono: float) -> Fix:
    return Fix(t, 48.0, 11.0, None, None, None, 3, None, received_mono=mono)


def test_gnss_clock_takes_the_least_delayed_fix():
    clock = GnssClock()
    assert clock.utc_at(5.0) is None
    clock.update(fix(1000.0))  # a log fix has no reception time
    assert clock.utc_at(5.0) is None
    for k, delay in enumerate((0.30, 0.10, 0.25)):
        clock.update(live(1000.0 + k, 50.0 + k + delay))
    assert clock.utc_at(60.0) == pytest.approx(60.0 + 950.0 - 0.10)


def test_gnss_clock_ignores_the_system_clock(monkeypatch):
    """The system clock jumping back an hour (NTP, a dead RTC battery) moves nothing: only fixes and the
    monotonic clock count. (The jump is simulated: stepping the real clock would disturb the machine.)"""
    clock = GnssClock()
    clock.update(live(1_700_000_000.0, 100.0))
    before = clock.utc_at(105.0)
    monkeypatch.setattr(time, "time", lambda: 1_699_996_400.0)
    clock.update(live(1_700_000_001.0, 101.0))
    assert clock.utc_at(105.0) == before == pytest.approx(1_700_000_005.0)


def test_gnss_clock_ignores_a_stale_repeated_fix():
    clock = GnssClock()
    clock.update(live(1000.0, 50.1))
    clock.update(live(1000.0, 57.0))  # gpsd repeating the same fix much later
    clock.update(live(999.0, 58.0))
    assert clock.utc_at(50.1) == pytest.approx(1000.0)


def test_gnss_clock_follows_a_receiver_time_step_and_forgets_old_samples():
    clock = GnssClock(window_s=10.0, max_step_s=1.0, confirm_n=3)
    clock.update(live(1000.0, 50.0))
    clock.update(live(1006.0, 51.0))  # receiver time stepped by 5 s...
    assert clock.utc_at(51.0) == pytest.approx(1001.0)  # ...or a glitch: not yet believed
    clock.update(live(1007.0, 52.0))
    clock.update(live(1008.0, 53.0))  # three fixes agree: a real step
    assert clock.utc_at(51.0) == pytest.approx(1006.0) and clock.steps == 1
    clock.update(live(1100.0, 54.0))  # one glitched fix
    clock.update(live(1010.0, 55.0))
    assert clock.utc_at(55.0) == pytest.approx(1010.0) and clock.steps == 1
    clock = GnssClock(window_s=10.0)
    clock.update(live(1000.0, 50.0))  # a lucky low delay...
    for k in range(1, 30):
        clock.update(live(1000.0 + k, 50.0 + k + 0.2))  # ...ages out after window_s
    assert clock.utc_at(100.0) == pytest.approx(100.0 + 950.0 - 0.2)


# -- GpsdReader against a scripted peer ------------------------------------------------------------------------


class ScriptedGpsd:
    """A TCP peer speaking gpsd's protocol from a script, to inject what a real gpsd rarely sends on cue
    (reports without keys, junk, unsolicited notices, a dropped connection). The real gpsd runs in
    tests/integration/test_gpsd_live.py."""

    def __init__(self, sessions: list[list[str]]) -> None:
        self.sessions = sessions
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        sessions = list(self.sessions)
        while sessions:
            conn, _ = self.server.accept()
            with contextlib.suppress(OSError), conn, conn.makefile("rw") as f:
                f.write('{"class":"VERSION","release":"3.22","rev":"3.22","proto_major":3,"proto_minor":14}\n')
                f.flush()
                if not f.readline():  # ?WATCH, or nothing from a probing connection
                    continue
                answers = sessions.pop(0)
                f.write('{"class":"DEVICES","devices":[{"class":"DEVICE","path":"/dev/pts/1"}]}\n')
                f.write('{"class":"WATCH","enable":true,"json":false}\n')
                f.flush()
                for answer in answers:
                    if not f.readline():
                        return
                    f.write(answer + "\n")
                    f.flush()
        self.server.close()


def poll(*tpv: dict, sky: list | None = None, active: int = 1) -> str:
    return json.dumps(
        {
            "class": "POLL",
            "time": "2026-01-01T00:00:00Z",
            "active": active,
            "tpv": list(tpv),
            "sky": [{"class": "SKY", "hdop": 1.3}] if sky is None else sky,
        }
    )


def tpv(t: str, **keys: object) -> dict:
    return {"class": "TPV", "mode": 3, "time": t, "lat": 48.0, "lon": 11.0, "speed": 5.0, "track": 90.0, **keys}


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_reader_survives_bad_reports_stale_fixes_and_a_dropped_connection():
    first = [
        poll(tpv("2026-01-01T00:00:01Z")),
        poll({"class": "TPV", "mode": 3, "lat": 48.0, "lon": 11.0}),  # a fix without time
        poll({"class": "TPV", "mode": 3, "time": "2026-01-01T00:00:02Z"}),  # a fix without position
        "not json at all\n"
        + '{"class":"DEVICE","path":"/dev/pts/1","activated":0}\n'
        + poll(tpv("2026-01-01T00:00:02Z")),
        poll(tpv("2026-01-01T00:00:02Z")),  # the same fix again: stale
        poll({"class": "TPV", "mode": 1}),  # no fix, no time
        poll(tpv("2026-01-01T00:00:03Z"), sky=[]),  # no SKY: gpsd-py3 would raise IndexError
        poll(active=0),
    ]  # then the peer hangs up, like a gpsd restart
    second = [poll(tpv("2026-01-01T00:00:04Z", lat=48.001))] * 3 + [poll(tpv("2026-01-01T00:00:00Z"))]
    peer = ScriptedGpsd([first, second])
    track = PoseTrack(max_fix_age_s=100.0)
    clock = GnssClock()
    reader = GpsdReader(track, port=peer.port, poll_s=0.01, clock=clock, timeout_s=2.0)
    reader.start()
    try:
        wait_for(lambda: reader.counters["connects"] == 2 and reader.counters["backward"] == 1)
        c = reader.counters
        assert c["fixes"] == 5 and c["bad_reports"] == 3 and c["stale"] == 3
        assert c["no_fix"] == 1 and c["inactive"] == 1
        assert c["disconnects"] >= 1  # the peer hung up (and hangs up again once its script ends)
        assert reader._thread.is_alive()
        assert track.pose_at(utc("2026-01-01T00:00:04Z")).lat_deg == 48.001
        p = track.pose_at(utc("2026-01-01T00:00:03Z"))
        assert p.hdop is None and p.valid
        assert clock.utc_at(time.monotonic()) == pytest.approx(utc("2026-01-01T00:00:04Z"), abs=60.0)
    finally:
        reader.stop()
    assert not reader.connected and not reader._thread.is_alive()


def test_reader_gives_up_on_a_peer_that_never_greets():
    """A port that accepts connections but never speaks must not hang the reader (gpsd-py3 has no timeout)."""
    with socket.create_server(("127.0.0.1", 0)) as server:  # listening, never accepting: the kernel completes
        reader = GpsdReader(PoseTrack(), port=server.getsockname()[1], timeout_s=0.3, max_backoff_s=0.05)
        reader.start()
        wait_for(lambda: reader.counters["connect_failures"] >= 2)
        started = time.monotonic()
        reader.stop()
        assert time.monotonic() - started < 2.0 and not reader._thread.is_alive()


def test_reader_retries_when_nothing_listens():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        reader = GpsdReader(PoseTrack(), port=port, max_backoff_s=0.05)
        reader.start()
        wait_for(lambda: reader.counters["connect_failures"] >= 3)
        assert not reader.connected and reader._thread.is_alive()
        reader.stop()
