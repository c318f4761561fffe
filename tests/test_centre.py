"""Centre store and message handling, on SQLite and on the real PostgreSQL when it is reachable."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from vehicle.categories import Taxonomy
from vehicle.centre import Centre, CentreSettings, add_centre_parser, cases_to_csv, cases_to_geojson, main
from vehicle.centre_store import CentreStore, CentreStoreError, haversine_m, is_postgres_dsn
from vehicle.events import Event, EventMode, Status, events_topic, make_event_id, snapshot_topic, status_topic

REPO_ROOT = Path(__file__).resolve().parent.parent
PG_DSN = os.environ.get("PATROL_TEST_PG_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres connect_timeout=3")
JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + bytes(range(64)) + b"\xff\xd9"
# Metres per degree of latitude on the WGS-84 mean sphere, to place test points at known distances.
M_PER_DEG_LAT = 6_371_008.8 * math.pi / 180


def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    """(lat, lon) moved by metres north/east (small offsets)."""
    return lat + north_m / M_PER_DEG_LAT, lon + east_m / (M_PER_DEG_LAT * math.cos(math.radians(lat)))


def make_event(
    vehicle_id: str,
    object_id: str,
    category: str,
    lat: float,
    lon: float,
    *,
    publication: int = 0,
    mode: str = "enforce",
    seen: str = "2026-12-03T10:00:00Z",
    rule: dict | None = None,
) -> Event:
    """A valid event as a car publishes it."""
    event_id = make_event_id(vehicle_id, object_id, publication)
    props = {
        "event_id": event_id, "vehicle_id": vehicle_id, "object_id": object_id, "category": category,
        "confidence": 0.8, "mode": mode, "first_seen": seen, "last_seen": seen, "observations": 4,
        "location": {"fix_mode": 3, "hdop": 0.9, "fix_age_s": 0.2, "ground_projection_ok": True, "range_m": 7.5},
        "vehicle_pose": {"lat": lat, "lon": lon, "heading_deg": 90.0, "speed_mps": 5.0},
        "box_xyxy": [10, 20, 110, 220], "image_size_wh": [1280, 720], "frame_index": 42,
        "model": {"name": "patrol-detector", "sha256": "0" * 64},
        "snapshot_topic": snapshot_topic(vehicle_id, event_id), "rule": rule,
    }  # fmt: skip
    return Event.model_validate(
        {
            "type": "Feature",
            "id": event_id,
            "geometry": {"type": "Point", "coordinates": [lon, lat]},
            "properties": props,
        }
    )


def pg_available() -> str | None:
    """None if the test PostgreSQL answers, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg not installed (pip install -e '.[centre]')"
    try:
        with psycopg.connect(PG_DSN):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable at {PG_DSN!r}: {str(exc).strip().splitlines()[0]}"


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh schema on the test PostgreSQL, dropped afterwards (or skip saying why)."""
    why = pg_available()
    if why:
        pytest.skip(why)
    import psycopg

    name = f"patrol_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def open_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest, **kw) -> CentreStore:
    if backend == "sqlite":
        return CentreStore(tmp_path / "centre.sqlite3", **kw)
    schema = request.getfixturevalue("pg_schema")
    return CentreStore(PG_DSN, pg_schema=schema, **kw)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CentreStore]:
    s = open_store(request.param, tmp_path, request, taxonomy=Taxonomy.load())
    yield s
    s.close()


LAT0, LON0 = 31.2304, 121.4737


def test_haversine_matches_known_distance() -> None:
    # One degree of latitude on the mean sphere, and 100 m east computed by the independent offset helper.
    assert haversine_m(0.0, 0.0, 1.0, 0.0) == pytest.approx(M_PER_DEG_LAT, rel=1e-9)
    lat, lon = offset(LAT0, LON0, 0.0, 100.0)
    assert haversine_m(LAT0, LON0, lat, lon) == pytest.approx(100.0, abs=0.01)


def test_dsn_detection() -> None:
    assert is_postgres_dsn("postgresql://u@h/db")
    assert is_postgres_dsn("host=127.0.0.1 dbname=test")
    assert not is_postgres_dsn("var/centre/centre.sqlite3")


def test_insert_is_idempotent_by_event_id(store: CentreStore) -> None:
    ev = make_event("car-1", "obj-1", "street_vending", LAT0, LON0)
    first = store.add_event(ev, topic=events_topic("car-1"), received_by="a")
    again = store.add_event(ev, topic=events_topic("car-1"), received_by="b")
    assert first.stored and first.new_case
    assert not again.stored and again.case_id == first.case_id
    assert store.event_count() == 1
    assert store.received_by_counts() == {"a": 1}
    [case] = store.cases()
    assert len(case.sightings) == 1 and case.sightings[0].event_id == ev.properties.event_id


def test_merge_by_radius_and_category(store: CentreStore) -> None:
    # street_vending has radius_m 10 in models/categories.yaml, exposed_garbage 5.
    assert store.radius_m("street_vending") == 10.0 and store.radius_m("exposed_garbage") == 5.0
    assert store.radius_m("not_in_taxonomy") == 10.0
    near = offset(LAT0, LON0, 6.0, 0.0)  # 6 m away: inside 10 m, outside 5 m
    far = offset(LAT0, LON0, 0.0, 40.0)
    evs = [
        make_event("car-1", "a", "street_vending", LAT0, LON0),
        make_event("car-2", "b", "street_vending", *near),  # same stall, another car
        make_event("car-3", "c", "street_vending", *far),  # another stall
        make_event("car-1", "d", "exposed_garbage", LAT0, LON0),  # other category, same spot
        make_event("car-2", "e", "exposed_garbage", *near, mode="warning"),  # 6 m > 5 m: its own case
    ]
    results = [store.add_event(e, topic=events_topic(e.properties.vehicle_id)) for e in evs]
    assert [r.new_case for r in results] == [True, False, True, True, True]
    assert results[1].case_id == results[0].case_id
    cases = {c.case_id: c for c in store.cases()}
    assert len(cases) == 4
    stall = cases[results[0].case_id]
    assert stall.category == "street_vending" and stall.vehicle_ids == ["car-1", "car-2"]
    # Centroid = mean of the two sightings.
    assert stall.lat == pytest.approx((LAT0 + near[0]) / 2, abs=1e-9)
    assert stall.lon == pytest.approx(LON0, abs=1e-9)
    assert cases[results[3].case_id].category == "exposed_garbage"
    assert cases[results[4].case_id].mode == "warning" and cases[results[3].case_id].mode == "enforce"


def test_merge_radius_override(tmp_path: Path) -> None:
    with CentreStore(tmp_path / "c.sqlite3", merge_radius_m=3.0) as s:
        a = s.add_event(make_event("car-1", "a", "street_vending", LAT0, LON0), topic="t")
        b = s.add_event(make_event("car-2", "b", "street_vending", *offset(LAT0, LON0, 4.0, 0.0)), topic="t")
        assert a.case_id != b.case_id
    with pytest.raises(CentreStoreError, match="merge_radius_m"):
        CentreStore(tmp_path / "d.sqlite3", merge_radius_m=0)


def test_snapshot_stored_once_even_before_its_event(store: CentreStore) -> None:
    ev = make_event("car-1", "a", "street_vending", LAT0, LON0)
    eid = ev.properties.event_id
    assert store.add_snapshot(eid, "car-1", JPEG, topic=snapshot_topic("car-1", eid))
    assert not store.add_snapshot(eid, "car-1", JPEG, topic=snapshot_topic("car-1", eid))
    store.add_event(ev, topic=events_topic("car-1"))
    assert store.snapshot(eid) == JPEG and store.snapshot_count() == 1
    assert store.cases()[0].sightings[0].has_snapshot


def test_status_keeps_latest(store: CentreStore) -> None:
    newer = Status(vehicle_id="car-1", state="offline", time="2026-12-03T10:05:00Z")
    older = Status(vehicle_id="car-1", state="online", time="2026-12-03T10:00:00Z")
    store.upsert_status(newer)
    store.upsert_status(older)  # a stale retained copy must not win
    assert store.statuses() == {"car-1": "offline"}


def test_a_last_will_marks_the_car_offline_though_its_time_is_older(store: CentreStore) -> None:
    # The Will is composed when the car connects (10:00) and published by the broker after the car's later
    # online statuses (10:05): it must still win, or a crashed car would look online forever.
    store.upsert_status(Status(vehicle_id="car-1", state="online", time="2026-12-03T10:05:00Z"))
    store.upsert_status(Status(vehicle_id="car-1", state="offline", time="2026-12-03T10:00:00Z"))
    assert store.statuses() == {"car-1": "offline"}
    store.upsert_status(Status(vehicle_id="car-1", state="online", time="2026-12-03T10:07:00Z"))  # back online
    assert store.statuses() == {"car-1": "online"}


def test_handle_rejects_malformed_without_crashing(store: CentreStore) -> None:
    centre = Centre(CentreSettings(client_id="centre-t"), store)
    good = make_event("car-1", "a", "street_vending", LAT0, LON0)
    bad_confidence = json.loads(good.to_json())
    bad_confidence["properties"]["confidence"] = 1.5
    wrong_car = make_event("car-2", "b", "street_vending", LAT0, LON0)
    cases = [
        (events_topic("car-1"), b"{not json", "rejected"),
        (events_topic("car-1"), json.dumps(bad_confidence).encode(), "rejected"),
        (events_topic("car-1"), wrong_car.to_json(), "rejected"),
        (events_topic("car-1"), b"\xff\xfe", "rejected"),
        (snapshot_topic("car-1", "x"), b"GIF89a", "rejected"),
        (status_topic("car-1"), b'{"state": "online"}', "rejected"),
        ("patrol/v1/car-1/telemetry", b"{}", "rejected"),
        (events_topic("car-1"), good.to_json(), "event"),
        (events_topic("car-1"), good.to_json(), "duplicate"),
        (snapshot_topic("car-1", good.properties.event_id), JPEG, "snapshot"),
        (snapshot_topic("car-1", good.properties.event_id), JPEG, "duplicate_snapshot"),
        (status_topic("car-1"), Status(vehicle_id="car-1", state="online", time="2026-12-03T10:00:00Z").to_json(),
         "status"),
    ]  # fmt: skip
    assert [centre.handle(t, p) for t, p, _ in cases] == [want for _, _, want in cases]
    rejected = store.rejected()
    assert len(rejected) == 7
    assert rejected[0][0] == events_topic("car-1") and rejected[0][2] == b"{not json"
    assert "properties.confidence" in rejected[1][1]
    assert "does not match the topic" in rejected[2][1]
    assert "not a JPEG" in rejected[4][1]
    assert store.event_count() == 1


def _forged(real: Event, by: str) -> bytes:
    """``real``'s event_id on an event of car ``by`` (event ids are predictable)."""
    doc = json.loads(make_event(by, "x", "street_vending", LAT0, LON0).to_json())
    doc["id"] = doc["properties"]["event_id"] = real.properties.event_id
    doc["properties"]["snapshot_topic"] = snapshot_topic(by, real.properties.event_id)
    return json.dumps(doc).encode()


def test_one_car_cannot_shadow_another_cars_event_or_photo(store: CentreStore) -> None:
    centre = Centre(CentreSettings(client_id="centre-t"), store)
    first = make_event("car-1", "a", "street_vending", LAT0, LON0)
    e1 = first.properties.event_id
    photo_1, photo_2 = JPEG + b"car-1", JPEG + b"car-2" * 20_000  # the forged photo is over 64 KiB: kept whole
    assert centre.handle(events_topic("car-1"), first.to_json()) == "event"
    assert centre.handle(events_topic("car-2"), _forged(first, "car-2")) == "rejected"
    assert centre.handle(snapshot_topic("car-2", e1), photo_2) == "rejected"
    assert centre.handle(snapshot_topic("car-1", e1), photo_1) == "snapshot"
    # A forged photo that arrives before the real event is set aside when the event comes, so the real one lands.
    later = make_event("car-1", "b", "street_vending", LAT0, LON0)
    e2 = later.properties.event_id
    assert centre.handle(snapshot_topic("car-2", e2), photo_2) == "snapshot"
    assert centre.handle(events_topic("car-1"), later.to_json()) == "event"
    assert centre.handle(snapshot_topic("car-1", e2), photo_1) == "snapshot"
    assert store.snapshot(e1) == photo_1 and store.snapshot(e2) == photo_1
    rejected = store.rejected()
    assert [r[0] for r in rejected] == [events_topic("car-2"), snapshot_topic("car-2", e1), snapshot_topic("car-2", e2)]
    assert f"event_id {e1} is already stored from vehicle 'car-1'" in rejected[0][1]
    assert "belongs to vehicle 'car-1'" in rejected[1][1] and "came from another vehicle" in rejected[2][1]
    assert rejected[1][2] == photo_2 and rejected[2][2] == photo_2  # nothing lost: kept aside whole
    assert store.event_count() == 2 and {s.vehicle_id for c in store.cases() for s in c.sightings} == {"car-1"}


def test_values_a_database_or_a_sort_would_choke_on_are_rejected(store: CentreStore) -> None:
    centre = Centre(CentreSettings(client_id="centre-t"), store)
    good = json.loads(make_event("car-1", "a", "street_vending", LAT0, LON0).to_json())
    nul_in_reason = json.loads(make_event("car-1", "n", "illegal_parking", LAT0, LON0,
                                          rule={"rule": "parking", "reason": "in zone\u0000x"}).to_json())
    bad_time = json.loads(json.dumps(good))
    bad_time["properties"]["last_seen"] = "zzz"
    nul_id = json.loads(json.dumps(good))
    nul_id["properties"]["event_id"] = nul_id["id"] = "a\u0000b"
    status_time = b'{"vehicle_id": "car-1", "state": "online", "time": "zzz"}'
    huge = b"x" * 300_000
    for topic, payload in ((events_topic("car-1"), json.dumps(nul_in_reason).encode()),
                           (events_topic("car-1"), json.dumps(bad_time).encode()),
                           (events_topic("car-1"), json.dumps(nul_id).encode()),
                           (status_topic("car-1"), status_time), (events_topic("car-1"), huge)):
        assert centre.handle(topic, payload) == "rejected", payload[:80]
    reasons = [r[1] for r in store.rejected()]
    assert reasons[0] == "contains a NUL character" and "last_seen" in reasons[1] and "time" in reasons[3]
    assert store.rejected()[4][2] == huge[:65536] and "300000 bytes, first 65536 kept" in reasons[4]
    assert store.event_count() == 0


def test_rule_and_warning_events_are_kept(store: CentreStore) -> None:
    rule = {"rule": "dwell", "reason": "umbrella stayed 300 s", "dwell_s": 300.0}
    ev = make_event("car-1", "u", "street_umbrella", LAT0, LON0, mode="warning", rule=rule)
    store.add_event(ev, topic=events_topic("car-1"))
    [case] = store.cases()
    assert case.mode == "warning" and case.sightings[0].rule == "dwell" and case.sightings[0].mode == "warning"
    assert EventMode(case.sightings[0].mode) is EventMode.warning


def test_export_geojson_and_csv(store: CentreStore) -> None:
    lat, lon = offset(LAT0, LON0, 0.0, 2.0)
    store.add_event(make_event("car-1", "a", "street_vending", LAT0, LON0), topic="t")
    store.add_event(make_event("car-2", "b", "street_vending", lat, lon), topic="t")
    store.add_event(make_event("car-2", "c", "exposed_garbage", LAT0, LON0), topic="t")
    collection = cases_to_geojson(store.cases())
    # Valid GeoJSON by the RFC 7946 shape: a FeatureCollection of Point Features with [lon, lat].
    jsonschema.validate(collection, GEOJSON_POINT_COLLECTION)
    json.loads(json.dumps(collection))  # plain JSON, no NaN / objects
    by_cat = {f["properties"]["category"]: f for f in collection["features"]}
    lon_c, lat_c = by_cat["street_vending"]["geometry"]["coordinates"]
    assert lat_c == pytest.approx(LAT0, abs=1e-7) and lon_c == pytest.approx((LON0 + lon) / 2, abs=1e-7)
    assert by_cat["street_vending"]["properties"]["sighting_count"] == 2
    assert by_cat["street_vending"]["properties"]["vehicle_ids"] == ["car-1", "car-2"]
    rows = list(csv.DictReader(io.StringIO(cases_to_csv(store.cases()))))
    assert len(rows) == 2
    row = next(r for r in rows if r["category"] == "street_vending")
    assert float(row["lat"]) == pytest.approx(LAT0, abs=1e-6) and row["vehicle_ids"] == "car-1;car-2"
    assert len(row["event_ids"].split(";")) == 2


GEOJSON_POINT_COLLECTION = {
    "type": "object",
    "required": ["type", "features"],
    "properties": {
        "type": {"const": "FeatureCollection"},
        "features": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "geometry", "properties"],
                "properties": {
                    "type": {"const": "Feature"},
                    "geometry": {
                        "type": "object",
                        "required": ["type", "coordinates"],
                        "properties": {
                            "type": {"const": "Point"},
                            "coordinates": {
                                "type": "array",
                                "prefixItems": [
                                    {"type": "number", "minimum": -180, "maximum": 180},
                                    {"type": "number", "minimum": -90, "maximum": 90},
                                ],
                                "minItems": 2,
                                "maxItems": 3,
                            },
                        },
                    },
                    "properties": {"type": "object"},
                },
            },
        },
    },
}


def test_sqlite_is_wal_and_shared_by_two_stores(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    with CentreStore(path) as a, CentreStore(path) as b:
        ra = a.add_event(make_event("car-1", "x", "street_vending", LAT0, LON0), topic="t")
        rb = b.add_event(make_event("car-2", "y", "street_vending", *offset(LAT0, LON0, 1.0, 1.0)), topic="t")
        assert rb.case_id == ra.case_id and not rb.new_case
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_writers_open_one_case(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # Eight stores (as eight centre instances would) report the same object at once, from eight cars.
    stores = [open_store(backend, tmp_path, request) for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    results: list = [None] * len(stores)

    def report(i: int) -> None:
        ev = make_event(f"car-{i}", "x", "street_vending", *offset(LAT0, LON0, i * 0.5, -i * 0.3))
        barrier.wait()
        results[i] = stores[i].add_event(ev, topic="t")

    threads = [threading.Thread(target=report, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(r.new_case for r in results) == 1 and len({r.case_id for r in results}) == 1
    [case] = stores[0].cases()
    assert len(case.sightings) == len(stores) and len(case.vehicle_ids) == len(stores)
    for s in stores:
        s.close()


def test_postgres_bad_dsn_is_one_line_error() -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(CentreStoreError, match="PostgreSQL") as exc:
        CentreStore("host=127.0.0.1 port=1 dbname=nope connect_timeout=2")
    assert "\n" not in str(exc.value)


def test_cli_export_writes_geojson_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "c.sqlite3"
    with CentreStore(db) as s:
        s.add_event(make_event("car-1", "a", "piled_materials", LAT0, LON0), topic="t")
    out = tmp_path / "out" / "cases.geojson"
    assert main(["--db", str(db), "export", "--geojson", str(out), "--csv", str(tmp_path / "cases.csv")]) == 0
    doc = json.loads(out.read_text())
    assert doc["features"][0]["geometry"]["coordinates"] == [round(LON0, 7), round(LAT0, 7)]
    assert (tmp_path / "cases.csv").read_text().startswith("case_id,category,mode,lon,lat")
    capsys.readouterr()
    assert main(["export", "--db", str(db)]) == 0  # no output file named: GeoJSON on stdout
    assert json.loads(capsys.readouterr().out)["features"][0]["properties"]["category"] == "piled_materials"
    # bad input, as for every patrol command: exit 1 with one line naming it
    assert main(["export", "--db", str(tmp_path / "missing.sqlite3")]) == 1
    assert capsys.readouterr().err.strip() == f"patrol centre export: {tmp_path / 'missing.sqlite3'}: no such database"
    for schema in ("CREATE TABLE x (a)", "CREATE TABLE cases (case_id, category, lat, court)"):
        other = tmp_path / "other.sqlite3"  # some other program's database: refused, and left as it was
        other.unlink(missing_ok=True)
        conn = sqlite3.connect(other)
        conn.execute(schema)
        conn.commit()
        conn.close()
        before = other.read_bytes()
        assert main(["export", "--db", str(other)]) == 1
        assert "not a patrol centre database" in capsys.readouterr().err
        assert other.read_bytes() == before and sorted(p.name for p in tmp_path.glob("other*")) == ["other.sqlite3"]
    odd = tmp_path / "we#ird?" / "c.sqlite3"  # characters a SQLite URI would misread
    odd.parent.mkdir()
    odd.write_bytes(db.read_bytes())
    assert main(["export", "--db", str(odd), "--csv", str(tmp_path / "odd.csv")]) == 0
    assert not (tmp_path / "we").exists()
    (tmp_path / "a-file").write_text("")
    assert main(["export", "--db", str(db), "--csv", str(tmp_path / "a-file" / "cases.csv")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a-file" in err[0] and "cannot write" in err[0]


def test_cli_export_never_overwrites_the_database_or_one_output_with_the_other(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "c.sqlite3"
    with CentreStore(db) as s:
        s.add_event(make_event("car-1", "a", "piled_materials", LAT0, LON0), topic="t")
    before = db.read_bytes()
    link = tmp_path / "link.csv"
    link.symlink_to(db)
    other_db = tmp_path / "other.sqlite3"
    other_db.write_bytes(before)
    cases = tmp_path / "cases.out"
    for args, why in (
        (["--csv", str(db)], "is the database being exported"),
        (["--geojson", str(tmp_path / "." / "c.sqlite3")], "is the database being exported"),
        (["--csv", str(link)], "is the database being exported"),  # another name for the same file
        (["--csv", str(other_db)], "is an SQLite database"),
        (["--geojson", str(cases), "--csv", str(cases)], "name the same file"),
        (["--csv", f"{db}-wal"], "is a file of the database being exported"),  # the running centre's WAL
        (["--geojson", f"{tmp_path / '.' / 'c.sqlite3'}-shm"], "is a file of the database being exported"),
    ):
        assert main(["export", "--db", str(db), *args]) == 1, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0], (args, err)
    assert db.read_bytes() == before and other_db.read_bytes() == before and not cases.exists()
    with CentreStore(db) as s:
        assert len(s.cases()) == 1  # every accepted case is still there


def test_parser_registers_centre_and_export() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_centre_parser(parser.add_subparsers(dest="command"))
    run_args = parser.parse_args(["centre", "--group", "g2", "--client-id", "c1", "--db", "x.sqlite3"])
    assert (run_args.group, run_args.client_id, run_args.db, run_args.centre_command) == ("g2", "c1", "x.sqlite3", None)
    exp = parser.parse_args(["centre", "--db", "y.sqlite3", "export", "--csv", "-"])
    assert exp.centre_command == "export" and exp.db == "y.sqlite3" and exp.csv == "-"
    exp2 = parser.parse_args(["centre", "export", "--db", "z.sqlite3"])
    assert exp2.db == "z.sqlite3"


def test_log_level_applies_through_the_patrol_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    db = tmp_path / "c.sqlite3"
    with CentreStore(db) as s:
        s.add_event(make_event("car-1", "a", "piled_materials", LAT0, LON0), topic="t")
    repo = Path(__file__).resolve().parent.parent

    def export(level: str) -> str:
        res = subprocess.run([sys.executable, "-m", "vehicle.cli", "centre", "--log-level", level, "--db", str(db),
                              "export", "--csv", str(tmp_path / "c.csv")], capture_output=True, text=True,
                             timeout=60, cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)))
        assert res.returncode == 0, res.stderr
        return res.stderr

    assert "INFO vehicle.centre: exported 1 cases" in export("INFO")
    assert export("ERROR") == ""  # `patrol` had configured INFO logging first; the option used to be ignored


def test_a_newer_cars_optional_property_is_taken_and_kept(store: CentreStore) -> None:
    centre = Centre(CentreSettings(client_id="centre-t"), store)
    doc = json.loads(make_event("car-1", "a", "street_vending", LAT0, LON0).to_json())
    doc["properties"]["added_later"] = {"lanes": 2}  # no v2 needed for this (README, Versioning)
    assert centre.handle(events_topic("car-1"), json.dumps(doc).encode()) == "event"
    [(payload,)] = store._exec("SELECT payload FROM events").fetchall()  # stored as it came
    assert json.loads(payload)["properties"]["added_later"] == {"lanes": 2}
    bad = json.loads(json.dumps(doc))
    bad["id"] = bad["properties"]["event_id"] = "other"
    bad["properties"]["confidence"] = True  # JSON true is not a number, whatever Python thinks
    assert centre.handle(events_topic("car-1"), json.dumps(bad).encode()) == "rejected"
    assert "properties.confidence" in store.rejected()[0][1]
