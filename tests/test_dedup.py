"""Deduplication: repeat sightings become one object, objects become events only once confirmed."""

from __future__ import annotations

import math
import sqlite3

import pytest

from vehicle.dedup import CategoryPolicy, DedupIndex, DedupPolicy, Sighting, distance_m

LAT0, LON0 = 48.137, 11.575  # Munich
M_PER_DEG_LAT = 111_132.0


def offset(north_m: float, east_m: float) -> tuple[float, float]:
    """Lat/lon of a point north_m/east_m from (LAT0, LON0), by plain spherical trigonometry."""
    lat = LAT0 + north_m / M_PER_DEG_LAT
    lon = LON0 + east_m / (M_PER_DEG_LAT * math.cos(math.radians(LAT0)))
    return lat, lon


def sighting(cat: str, north_m: float, east_m: float, t: float, frame: int, score: float = 0.8) -> Sighting:
    lat, lon = offset(north_m, east_m)
    return Sighting(cat, lat, lon, True, 10.0, score, t, frame, (0.0, 0.0, 10.0, 10.0))


@pytest.fixture
def index(tmp_path) -> DedupIndex:
    conn = sqlite3.connect(tmp_path / "state.sqlite")
    policy = DedupPolicy(
        {"exposed_garbage": CategoryPolicy(5.0, 3, 0.4), "road_damage": CategoryPolicy(5.0, 3, 0.4)},
        suppress_s=86400.0,
        candidate_ttl_s=120.0,
    )
    return DedupIndex(conn, policy)


def test_distance_matches_spherical_offset():
    lat, lon = offset(300.0, 400.0)
    assert distance_m(LAT0, LON0, lat, lon) == pytest.approx(500.0, rel=2e-3)


def test_forty_frames_driving_past_is_one_event(index):
    events = []
    for i in range(40):
        # GPS/projection noise of up to 1.5 m around the true spot while the car passes.
        n = 1.5 * math.sin(i * 0.7)
        e = 1.5 * math.cos(i * 1.3)
        events += index.update([sighting("exposed_garbage", n, e, 1000.0 + i * 0.1, i)], 1000.0 + i * 0.1)
    assert len(events) == 1
    ev = events[0]
    assert ev.publication == 1
    assert ev.obj.observations == 3  # published the moment it was confirmed
    assert index.count() == 1
    row = index.conn.execute("SELECT observations FROM dedup_objects").fetchone()
    assert row[0] == 40


def test_two_categories_three_metres_apart_are_two_events(index):
    events = []
    for i in range(5):
        t = 2000.0 + i
        events += index.update(
            [sighting("exposed_garbage", 0, 0, t, i), sighting("road_damage", 3.0, 0, t, i)], t
        )
    assert sorted(e.obj.category for e in events) == ["exposed_garbage", "road_damage"]


def test_two_objects_of_one_category_beyond_radius_are_two(index):
    events = []
    for i in range(5):
        t = 2000.0 + i
        events += index.update([sighting("exposed_garbage", 0, 0, t, i)], t)
        events += index.update([sighting("exposed_garbage", 0, 12.0, t, i + 100)], t)
    assert len(events) == 2


def test_second_pass_an_hour_later_publishes_nothing(index):
    first = []
    for i in range(10):
        first += index.update([sighting("exposed_garbage", 0, 0, 5000.0 + i, i)], 5000.0 + i)
    assert len(first) == 1
    later = []
    for i in range(10):
        t = 5000.0 + 3600 + i
        later += index.update([sighting("exposed_garbage", 0.5, -0.5, t, 1000 + i)], t)
    assert later == []


def test_after_suppression_period_it_publishes_again(index):
    for i in range(5):
        index.update([sighting("exposed_garbage", 0, 0, 0.0 + i, i)], 0.0 + i)
    again = []
    for i in range(5):
        t = 86400.0 + 10 + i
        again += index.update([sighting("exposed_garbage", 0, 0, t, 500 + i)], t)
    assert [e.publication for e in again] == [2]


def test_one_frame_flicker_publishes_nothing_and_expires(index):
    assert index.update([sighting("exposed_garbage", 0, 0, 100.0, 1)], 100.0) == []
    assert index.count() == 1
    assert index.expire(100.0 + 121) == 1
    assert index.count() == 0


def test_low_median_score_is_not_confirmed(index):
    events = []
    for i in range(10):
        events += index.update([sighting("exposed_garbage", 0, 0, 10.0 + i, i, score=0.3)], 10.0 + i)
    assert events == []


def test_index_survives_restart(tmp_path, index):
    for i in range(5):
        index.update([sighting("exposed_garbage", 0, 0, 10.0 + i, i)], 10.0 + i)
    index.conn.commit()
    index.conn.close()
    conn = sqlite3.connect(tmp_path / "state.sqlite")
    reopened = DedupIndex(conn, index.policy)
    assert reopened.count() == 1
    assert reopened.update([sighting("exposed_garbage", 1, 1, 60.0, 99)], 60.0) == []


def test_position_is_weighted_mean_of_sightings(index):
    for i, e in enumerate([-1.0, 1.0, -1.0, 1.0]):
        index.update([sighting("exposed_garbage", 2.0, e, 10.0 + i, i)], 10.0 + i)
    lat, lon = index.conn.execute("SELECT lat, lon FROM dedup_objects").fetchone()
    exp_lat, exp_lon = offset(2.0, 0.0)
    assert distance_m(lat, lon, exp_lat, exp_lon) < 0.05


def test_a_repeat_pass_with_a_different_gps_error_reacquires_the_published_object(index):
    first = []
    for i in range(5):
        first += index.update([sighting("exposed_garbage", 0, 0, 100.0 + i, i)], 100.0 + i)
    assert len(first) == 1
    # An hour later the car passes again; its GPS is off by 7 m this time (beyond radius 5, within 2 x 5).
    later = []
    for i in range(5):
        t = 3700.0 + i
        later += index.update([sighting("exposed_garbage", 7.0, 0, t, 100 + i)], t)
    assert later == [] and index.count() == 1


def test_a_new_object_near_an_unpublished_candidate_is_not_pulled_in(index):
    # Only published objects are re-acquired from afar: two fresh candidates 7 m apart stay two.
    index.update([sighting("exposed_garbage", 0, 0, 10.0, 1)], 10.0)
    index.update([sighting("exposed_garbage", 7.0, 0, 10.0, 1)], 10.0)
    assert index.count() == 2
