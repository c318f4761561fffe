"""Rules: stationary test, zones, bike heaps, warning mode, config errors and persistence (simulated drives)."""

from __future__ import annotations

import json
import math
import sqlite3
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tomllib

import vehicle.rules
from vehicle.categories import Taxonomy
from vehicle.config import ConfigError
from vehicle.dedup import Sighting, distance_m
from vehicle.detection_log import CategoryBox
from vehicle.gps import Pose
from vehicle.rules import RuleEngine, rules_from_config
from vehicle.zones import load_zones, point_in_ring

LAT0, LON0 = 48.137, 11.575
M_PER_DEG_LAT = 111_132.0
SPEED_MPS = 8.0
FRAME_S = 0.1
T0 = 1_700_000_000.0
CLASS_OF = {"illegal_parking": "car", "disorderly_bikes": "bicycle", "street_umbrella": "umbrella"}

# An object at (east_m, north_m) relative to (LAT0, LON0) as a function of time since the drive started.
Track = tuple[str, Callable[[float], tuple[float, float]]]


def offset(east_m: float, north_m: float) -> tuple[float, float]:
    """Lat/lon of a point east_m/north_m from (LAT0, LON0), by plain spherical trigonometry."""
    return LAT0 + north_m / M_PER_DEG_LAT, LON0 + east_m / (M_PER_DEG_LAT * math.cos(math.radians(LAT0)))


def rect(east0: float, north0: float, east1: float, north1: float) -> list[list[float]]:
    """A closed [lon, lat] ring around a street rectangle given in metres."""
    corners = [(east0, north0), (east1, north0), (east1, north1), (east0, north1), (east0, north0)]
    return [[offset(e, n)[1], offset(e, n)[0]] for e, n in corners]


def zone_file(tmp_path: Path, name: str, *zones: tuple[str, str, list]) -> str:
    """Write a FeatureCollection of (id, kind, rings) polygons; returns its file name (relative to tmp_path)."""
    feats = [{"type": "Feature", "properties": {"id": zid, "kind": kind},
              "geometry": {"type": "Polygon", "coordinates": rings}} for zid, kind, rings in zones]
    (tmp_path / name).write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return name


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return Taxonomy.load()


def engine_for(tmp_path: Path, taxonomy: Taxonomy, rules: dict, db: str = "state.sqlite") -> RuleEngine:
    conn = sqlite3.connect(tmp_path / db)
    return RuleEngine(conn, rules_from_config(rules, tmp_path, taxonomy), taxonomy)


def pose_at(t_s: float, east0_m: float = -10.0, valid: bool = True) -> Pose:
    """The patrol car driving east along the street (north 0) at SPEED_MPS."""
    lat, lon = offset(east0_m + SPEED_MPS * t_s, 0.0)
    return Pose(T0 + t_s, lat, lon, 90.0, SPEED_MPS, 3 if valid else 1, 1.0, 0.1, True, valid)


def drive(engine: RuleEngine, objects: list[Track], frames: int = 100, first_frame: int = 0,
          east0_m: float = -10.0) -> list:
    """Drive past ``objects``; each is seen (with ~0.4 m of noise) when 3..35 m ahead. Returns the rule events."""
    events = []
    for i in range(first_frame, first_frame + frames):
        t = i * FRAME_S
        pose = pose_at(t, east0_m)
        car_e = east0_m + SPEED_MPS * t
        candidates = []
        for k, (cat, where) in enumerate(objects):
            e, n = where(t)
            if not 3.0 <= e - car_e <= 35.0:
                continue
            # Projection noise, deterministic so the test cannot flake.
            e += 0.4 * math.sin(1.7 * i + k)
            n += 0.3 * math.cos(1.3 * i + 2 * k)
            lat, lon = offset(e, n)
            rng = math.hypot(e - car_e, n)
            box = CategoryBox(cat, 0.7, (100.0, 100.0, 200.0, 180.0), CLASS_OF[cat])
            candidates.append((box, Sighting(cat, lat, lon, True, rng, 0.7, T0 + t, i, box.xyxy)))
        if candidates:  # the pipeline calls the engine only on frames with candidates
            events += engine.update(candidates, pose, T0 + t)
    return events


def parked(east_m: float, north_m: float, cat: str = "illegal_parking") -> Track:
    return cat, lambda _t: (east_m, north_m)


NO_PARKING = ("np-1", "no_parking", [rect(30.0, -10.0, 50.0, -2.0)])


# -- stationary test + zones ----------------------------------------------------------------------------------------
def test_parked_car_in_no_parking_zone_is_one_event(tmp_path, taxonomy):
    zones = [{"file": zone_file(tmp_path, "np.geojson", NO_PARKING)}]
    engine = engine_for(tmp_path, taxonomy, {"zones": zones, "min_travel_m": 15.0})
    events = drive(engine, [parked(40.0, -5.0)])
    assert len(events) == 1
    conf, fired = events[0]
    assert conf.obj.category == "illegal_parking" and conf.publication == 1
    assert fired.rule == "stationary_in_no_parking_zone" and fired.zone_id == "np-1"
    # First seen 35 m ahead (car at east 5); fires on the first frame the car has travelled >= 15 m: 19 steps.
    assert fired.distance_travelled_m == pytest.approx(19 * SPEED_MPS * FRAME_S, rel=5e-3)
    assert fired.distance_travelled_m >= 15.0
    assert fired.dwell_s == pytest.approx(19 * FRAME_S, abs=1e-6)
    assert distance_m(conf.obj.lat_deg, conf.obj.lon_deg, *offset(40.0, -5.0)) < 0.5
    ring = np.array(NO_PARKING[2][0])
    assert point_in_ring(conf.obj.lon_deg, conf.obj.lat_deg, ring)
    assert engine.odometer_m() == pytest.approx((35.0 - 3.0), abs=SPEED_MPS * FRAME_S + 0.1)


def test_parked_car_without_zone_is_nothing(tmp_path, taxonomy):
    engine = engine_for(tmp_path, taxonomy, {"min_travel_m": 15.0})
    assert drive(engine, [parked(40.0, -5.0)]) == []


def test_far_off_carriageway_fallback_uses_lateral_offset(tmp_path, taxonomy):
    rules = {"parking": {"fallback": "far_off_carriageway", "min_lateral_offset_m": 6.0}}
    events = drive(engine_for(tmp_path, taxonomy, rules, "a.sqlite"), [parked(40.0, -8.0), parked(40.0, 4.5)])
    assert [(e[1].rule, round(e[0].obj.lat_deg, 4)) for e in events] == [
        ("stationary_far_off_carriageway", round(offset(40.0, -8.0)[0], 4))]
    assert events[0][1].zone_id is None


def test_car_moving_with_traffic_is_never_an_event(tmp_path, taxonomy):
    zones = [{"file": zone_file(tmp_path, "np.geojson", ("street", "no_parking", [rect(-50, -20, 200, 20)]))}]
    engine = engine_for(tmp_path, taxonomy, {"zones": zones})
    ahead = ("illegal_parking", lambda t: (-10.0 + SPEED_MPS * t + 15.0, -3.0))  # keeps 15 m ahead of us
    slower = ("illegal_parking", lambda t: (20.0 + 4.0 * t, 3.0))  # overtaken at half our speed
    assert drive(engine, [ahead, slower], frames=150) == []
    # The same street, same settings: a parked car there is reported (the zone is not the reason for silence).
    assert len(drive(engine_for(tmp_path, taxonomy, {"zones": zones}, "b.sqlite"), [parked(40.0, -5.0)])) == 1


def test_nothing_counts_while_the_patrol_car_stands_still(tmp_path, taxonomy):
    zones = [{"file": zone_file(tmp_path, "np.geojson", NO_PARKING)}]
    engine = engine_for(tmp_path, taxonomy, {"zones": zones})
    lat, lon = offset(40.0, -5.0)
    events = []
    for i in range(300):  # 30 s parked 20 m behind it
        pose = pose_at(0.0, east0_m=20.0)
        box = CategoryBox("illegal_parking", 0.8, (0.0, 0.0, 9.0, 9.0), "car")
        events += engine.update([(box, Sighting("illegal_parking", lat, lon, True, 20.0, 0.8, T0 + i * 0.1, i,
                                                box.xyxy))], pose, T0 + i * 0.1)
    assert events == [] and engine.odometer_m() == 0.0


def test_exclusion_zone_wins_over_no_parking(tmp_path, taxonomy):
    zones = [{"file": zone_file(tmp_path, "np.geojson", NO_PARKING)},
             {"file": zone_file(tmp_path, "depot.geojson", ("depot", "exclusion", [rect(35, -8, 45, -3)])),
              "kind": "exclusion"}]
    engine = engine_for(tmp_path, taxonomy, {"zones": zones})
    events = drive(engine, [parked(40.0, -5.0), parked(48.0, -5.0)])
    assert len(events) == 1  # only the car outside the depot
    assert distance_m(events[0][0].obj.lat_deg, events[0][0].obj.lon_deg, *offset(48.0, -5.0)) < 0.5


# -- bikes ------------------------------------------------------------------------------------------------------------
def bike_heap(n: int, east_m: float = 40.0, north_m: float = -6.0) -> list[Track]:
    """``n`` bikes on a circle of 1.2 m radius (all within 2.4 m of each other)."""
    return [parked(east_m + 1.2 * math.cos(2 * math.pi * k / n), north_m + 1.2 * math.sin(2 * math.pi * k / n),
                   "disorderly_bikes") for k in range(n)]


def test_six_bikes_outside_bike_parking_are_one_heap(tmp_path, taxonomy):
    engine = engine_for(tmp_path, taxonomy, {})
    events = drive(engine, bike_heap(6))
    assert len(events) == 1
    conf, fired = events[0]
    assert conf.obj.category == "disorderly_bikes" and fired.rule == "bike_cluster_outside_bike_parking"
    # Reported the moment min_bikes (5) of them pass the stationary test; the 6th (farthest east) comes into view
    # last and joins the already reported heap silently.
    assert fired.cluster_size == 5 and fired.distance_travelled_m >= 15.0
    assert distance_m(conf.obj.lat_deg, conf.obj.lon_deg, *offset(40.0, -6.0)) < 0.6
    six = drive(engine_for(tmp_path, taxonomy, {"bike_cluster": {"min_bikes": 6}}, "six.sqlite"), bike_heap(6))
    assert [e[1].cluster_size for e in six] == [6]


def test_bikes_inside_bike_parking_or_too_few_are_nothing(tmp_path, taxonomy):
    zones = [{"file": zone_file(tmp_path, "bp.geojson", ("rack", "bike_parking", [rect(36, -10, 44, -3)]))}]
    assert drive(engine_for(tmp_path, taxonomy, {"zones": zones}), bike_heap(6)) == []
    few = engine_for(tmp_path, taxonomy, {}, "few.sqlite")
    assert drive(few, bike_heap(4)) == []


def test_bike_parking_with_a_hole_reports_the_heap_in_the_hole(tmp_path, taxonomy):
    rings = [rect(30, -12, 50, 0), rect(37, -9, 43, -3)]  # outer, hole
    zones = [{"file": zone_file(tmp_path, "bp.geojson", ("rack", "bike_parking", rings))}]
    assert len(drive(engine_for(tmp_path, taxonomy, {"zones": zones}),
                     bike_heap(6))) == 1


# -- umbrella, warning, persistence -----------------------------------------------------------------------------------
def test_umbrella_only_inside_listed_zones(tmp_path, taxonomy):
    zf = zone_file(tmp_path, "market.geojson", ("market", "no_parking", [rect(30, -10, 50, -2)]))
    rules = {"zones": [{"file": zf}], "umbrella": {"zone_ids": ["market"]}}
    events = drive(engine_for(tmp_path, taxonomy, rules),
                   [parked(40.0, -5.0, "street_umbrella"), parked(60.0, -5.0, "street_umbrella")], frames=130)
    assert [(e[0].obj.category, e[1].rule, e[1].zone_id) for e in events] == [
        ("street_umbrella", "stationary_umbrella", "market")]


def test_warning_categories(tmp_path, taxonomy):
    assert rules_from_config({"warning_categories": ["disorderly_bikes"]}, tmp_path, taxonomy).warning_categories \
        == frozenset({"disorderly_bikes"})
    assert rules_from_config({}, tmp_path, taxonomy).warning_categories == frozenset()


def test_state_survives_reopening_the_connection(tmp_path, taxonomy):
    zones = [{"file": zone_file(tmp_path, "np.geojson", NO_PARKING)}]
    rules = {"zones": zones}
    first = engine_for(tmp_path, taxonomy, rules)
    assert drive(first, [parked(40.0, -5.0)], frames=35) == []  # seen from frame 19 on: 12 m of travel only
    first.conn.commit()
    first.conn.close()
    second = engine_for(tmp_path, taxonomy, rules)
    assert second.odometer_m() == pytest.approx(15 * SPEED_MPS * FRAME_S, rel=5e-3)
    events = drive(second, [parked(40.0, -5.0)], frames=65, first_frame=35)
    assert len(events) == 1 and events[0][0].publication == 1
    assert events[0][1].distance_travelled_m == pytest.approx(19 * SPEED_MPS * FRAME_S, rel=5e-3)
    second.conn.commit()
    object_id = events[0][0].obj.object_id
    second.conn.close()
    # A second pass within the suppression period publishes nothing for the same car.
    third = engine_for(tmp_path, taxonomy, rules)
    # Five minutes later (past track_ttl_s) the car passes again from east -10: seen over 32 m of travel.
    again = drive(third, [parked(40.0, -5.0)], frames=100, first_frame=3000, east0_m=-10.0 - SPEED_MPS * 300.0)
    assert again == []
    rows = third.conn.execute("SELECT track_id, publications, observations FROM rules_tracks").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(object_id, 1)] and rows[0][2] > 70


def test_republished_after_suppress_s_with_the_next_publication_number(tmp_path, taxonomy):
    zones = [{"file": zone_file(tmp_path, "np.geojson", NO_PARKING)}]
    engine = engine_for(tmp_path, taxonomy, {"zones": zones, "suppress_s": 60.0})
    first = drive(engine, [parked(40.0, -5.0)])
    # Two minutes later the car passes again: past suppress_s, the same object is reported a second time.
    second = drive(engine, [parked(40.0, -5.0)], first_frame=1200, east0_m=-10.0 - SPEED_MPS * 120.0)
    assert [(c.obj.object_id, c.publication) for c, _ in first + second] == [
        (first[0][0].obj.object_id, 1), (first[0][0].obj.object_id, 2)]


def test_sightings_without_ground_position_or_fix_prove_nothing(tmp_path, taxonomy):
    zones = [{"file": zone_file(tmp_path, "np.geojson", NO_PARKING)}]
    engine = engine_for(tmp_path, taxonomy, {"zones": zones})
    lat, lon = offset(40.0, -5.0)
    box = CategoryBox("illegal_parking", 0.9, (0.0, 0.0, 9.0, 9.0), "car")
    events = []
    for i in range(100):
        t = i * FRAME_S
        no_ground = Sighting("illegal_parking", lat, lon, False, None, 0.9, T0 + t, i, box.xyxy)
        events += engine.update([(box, no_ground)], pose_at(t), T0 + t)
    assert events == [] and engine.conn.execute("SELECT COUNT(*) FROM rules_tracks").fetchone() == (0,)
    for i in range(100, 200):  # GPS lost: the car may be moving but the odometer cannot tell
        t = i * FRAME_S
        s = Sighting("illegal_parking", lat, lon, True, 20.0, 0.9, T0 + t, i, box.xyxy)
        events += engine.update([(box, s)], pose_at(t, valid=False), T0 + t)
    assert events == []


# -- config + geometry ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("rules", "message"), [
    ({"zones": [{"file": "a.geojson"}, {"file": "b.geojson", "kind": "parking"}]}, "rules.zones[1].kind: "),
    ({"stationary_radus_m": 2.0}, "rules.stationary_radus_m: unknown key"),
    ({"min_travel_m": -1}, "rules.min_travel_m: "),
    ({"min_travel_m": "3"}, "rules.min_travel_m: Input should be a valid number"),
    ({"bike_cluster": {"min_bikes": True}}, "rules.bike_cluster.min_bikes: Input should be a valid integer"),
    ({"bike_cluster": {"min_bikes": 0}}, "rules.bike_cluster.min_bikes: "),
    ({"parking": {"fallback": "kerb"}}, "rules.parking.fallback: "),
    ({"parking": {"category": "parked_cars"}}, "rules.parking.category: unknown category 'parked_cars'"),
    ({"warning_categories": ["road_damage", "bikes"]}, "rules.warning_categories[1]: unknown category 'bikes'"),
    ({"umbrella": {"zone_ids": ["nowhere"]}}, "rules.umbrella.zone_ids[0]: no zone has id 'nowhere'"),
    ({"zones": [{"file": "missing.geojson"}]}, "rules.zones[0].file: "),
])
def test_config_errors_name_the_dotted_key(tmp_path, taxonomy, rules, message):
    with pytest.raises(ConfigError) as exc:
        rules_from_config(rules, tmp_path, taxonomy)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_bad_geojson_names_the_feature(tmp_path, taxonomy):
    zone_file(tmp_path, "z.geojson", ("a", "no_parking", [rect(0, 0, 1, 1)]), ("b", "car_park", [rect(0, 0, 1, 1)]))
    with pytest.raises(ConfigError, match=r"^rules\.zones\[0\]\.file: .*z\.geojson: features\[1\]\.properties\.kind"):
        rules_from_config({"zones": [{"file": "z.geojson"}]}, tmp_path, taxonomy)
    zone_file(tmp_path, "ok.geojson", ("a", "no_parking", [rect(0, 0, 1, 1)]))
    zone_file(tmp_path, "dup.geojson", ("a", "exclusion", [rect(5, 5, 6, 6)]))
    with pytest.raises(ConfigError, match=r"^rules\.zones\[1\]\.file: .*zone id 'a' already used in rules\.zones\[0\]"):
        rules_from_config({"zones": [{"file": "ok.geojson"}, {"file": "dup.geojson"}]}, tmp_path, taxonomy)


def test_documented_example_is_valid_and_shows_the_defaults(tmp_path, taxonomy):
    doc = vehicle.rules.__doc__
    block = doc[doc.index("    [rules]\n"):doc.index("\nA rule whose")]
    raw = tomllib.loads(textwrap.dedent(block))["rules"]
    (tmp_path / "zones").mkdir()
    zone_file(tmp_path, "zones/old-town.geojson", ("old-town", "no_parking", [rect(0, 0, 100, 100)]))
    zone_file(tmp_path, "zones/depots.geojson", ("depot-1", "exclusion", [rect(200, 0, 300, 100)]))
    settings = rules_from_config(raw, tmp_path, taxonomy)
    assert [(z.zone_id, z.kind) for z in settings.zones] == [("old-town", "no_parking"), ("depot-1", "exclusion")]
    defaults = rules_from_config({}, tmp_path, taxonomy).config
    assert settings.config.model_dump(exclude={"zones"}) == defaults.model_dump(exclude={"zones"})
    assert settings.rule_of_category == {"illegal_parking": "parking", "disorderly_bikes": "bike_cluster",
                                         "street_umbrella": "umbrella"}


def test_point_in_ring_and_multipolygon_with_hole(tmp_path):
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], dtype=float)  # unclosed ring is fine
    assert point_in_ring(5, 5, square) and not point_in_ring(11, 5, square) and not point_in_ring(5, -0.1, square)
    doc = {"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"id": "m"},
        "geometry": {"type": "MultiPolygon", "coordinates": [
            [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]], [[1, 1], [3, 1], [3, 3], [1, 3], [1, 1]]],
            [[[10, 10], [12, 10], [11, 12], [10, 10]]]]}}]}
    (tmp_path / "m.geojson").write_text(json.dumps(doc))
    (zone,) = load_zones(tmp_path / "m.geojson", "exclusion")
    assert zone.kind == "exclusion"
    # contains(lat, lon): GeoJSON x is longitude.
    assert [zone.contains(lat, lon) for lon, lat in [(0.5, 0.5), (2, 2), (11, 11), (5, 5), (10.2, 11.9)]] == [
        True, False, True, False, False]
