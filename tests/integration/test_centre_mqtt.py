"""Three cars -> real Mosquitto -> two `patrol centre` processes sharing one database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.brokers import Broker
from tests.test_centre import (
    GEOJSON_POINT_COLLECTION,
    JPEG,
    PG_DSN,
    make_event,
    offset,
    pg_schema,  # noqa: F401  (fixture, used by db_args)
)
from vehicle.centre_store import CentreStore, haversine_m
from vehicle.events import Event, Status, events_topic, snapshot_topic, status_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
LAT0, LON0 = 31.2304, 121.4737

# The real world: (category, lat, lon). Objects 3 and 4 stand at the same spot but are different problems.
OBJECTS = [
    ("street_vending", *offset(LAT0, LON0, 0, 0)),
    ("street_vending", *offset(LAT0, LON0, 0, 60)),
    ("exposed_garbage", *offset(LAT0, LON0, 30, 30)),
    ("piled_materials", *offset(LAT0, LON0, -40, 10)),
    ("exposed_garbage", *offset(LAT0, LON0, -40, 10)),
    ("overflowing_bin", *offset(LAT0, LON0, 80, -20)),
]
# Which objects each car sees, and its own (small) position error in metres north/east.
CARS = {
    "car-1": ([0, 1, 2, 3, 4], (1.2, -0.8)),
    "car-2": ([1, 2, 3, 4, 5], (-1.5, 1.0)),
    "car-3": ([0, 2, 4, 5], (0.6, 1.9)),
}


@dataclass(frozen=True)
class Publication:
    topic: str
    payload: bytes
    object_index: int | None  # None: not an event
    event_id: str | None = None


def car_script(vehicle_id: str) -> list[Publication]:
    """What one car publishes: status, events (some re-reported, some redelivered), photos, one malformed."""
    seen, (dn, de) = CARS[vehicle_id]
    pubs = [Publication(status_topic(vehicle_id), b"", None)]  # placeholder: status is published retained first
    for k in seen:
        category, lat, lon = OBJECTS[k]
        # The car's local object id differs from other cars'; publication 1 is a later re-report of the object.
        for publication in (0, 1) if k % 2 == 0 else (0,):
            ev = make_event(vehicle_id, f"trk-{k}", category, *offset(lat, lon, dn, de), publication=publication)
            eid = ev.properties.event_id
            pubs.append(Publication(events_topic(vehicle_id), ev.to_json(), k, eid))
            pubs.append(Publication(snapshot_topic(vehicle_id, eid), JPEG, None))
            if k in (1, 2, 5):  # at-least-once: the same message again after a reconnect
                pubs.append(Publication(events_topic(vehicle_id), ev.to_json(), k, eid))
                pubs.append(Publication(snapshot_topic(vehicle_id, eid), JPEG, None))
    if vehicle_id == "car-2":
        pubs.append(Publication(events_topic(vehicle_id), b'{"type": "Feature", "id": "truncated', None))
    return pubs


def publish_car(broker: Broker, vehicle_id: str, errors: list[str]) -> None:
    """One car: a paho MQTT 5 client with a Last Will, publishing its script at QoS 1."""
    try:
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"patrol-{vehicle_id}", protocol=mqtt.MQTTv5
        )
        offline = Status(vehicle_id=vehicle_id, state="offline", time="2026-12-03T09:59:00Z")
        client.will_set(status_topic(vehicle_id), offline.to_json(), qos=1, retain=True)
        client.connect(broker.host, broker.port)
        client.loop_start()
        online = Status(vehicle_id=vehicle_id, state="online", time="2026-12-03T10:00:00Z")
        client.publish(status_topic(vehicle_id), online.to_json(), qos=1, retain=True).wait_for_publish(10)
        for pub in car_script(vehicle_id)[1:]:
            info = client.publish(pub.topic, pub.payload, qos=1)
            info.wait_for_publish(10)
            if not info.is_published():
                errors.append(f"{vehicle_id}: {pub.topic} not acknowledged")
        client.disconnect()
        client.loop_stop()
    except Exception as exc:  # reported by the test thread
        errors.append(f"{vehicle_id}: {exc!r}")


def publish_fleet(broker: Broker) -> None:
    errors: list[str] = []
    threads = [threading.Thread(target=publish_car, args=(broker, v, errors)) for v in CARS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


class CentreProcess:
    """`python -m vehicle.centre` (same code as `patrol centre`) in its own process, logging to a file."""

    def __init__(self, broker: Broker, db_args: list[str], client_id: str, log_dir: Path) -> None:
        self.client_id = client_id
        self.log_file = log_dir / f"{client_id}.log"
        self.cmd = [
            sys.executable, "-m", "vehicle.centre", "--host", broker.host, "--port", str(broker.port),
            "--client-id", client_id, "--group", "centre", "--session-expiry-s", "300", *db_args,
        ]  # fmt: skip
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        offset_bytes = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: "subscribed:" in self.log_file.read_bytes()[offset_bytes:].decode(errors="replace"),
                 20, f"{self.client_id} did not subscribe; log: {self.log_text()}", self.proc)  # fmt: skip

    def stop(self) -> dict[str, int]:
        """SIGTERM, wait, and return what the instance handled (from its last log line)."""
        if self.proc is None:
            return {}
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        assert self.proc.returncode == 0, f"{self.client_id} exited {self.proc.returncode}: {self.log_text()}"
        self.proc = None
        handled = re.findall(r"stopped; handled (\{.*\})", self.log_text())
        return json.loads(handled[-1]) if handled else {}

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s: {what}")


@pytest.fixture(params=["sqlite", "postgres"])
def db_args(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """CLI arguments naming one database both centre instances share."""
    if request.param == "sqlite":
        yield ["--db", str(tmp_path / "centre.sqlite3")]
    else:
        schema = request.getfixturevalue("pg_schema")
        yield ["--db", PG_DSN, "--db-schema", schema]


def open_store(db_args: list[str]) -> CentreStore:
    db = db_args[db_args.index("--db") + 1]
    schema = db_args[db_args.index("--db-schema") + 1] if "--db-schema" in db_args else None
    return CentreStore(db, pg_schema=schema)


def expected_events() -> dict[str, int]:
    """event_id -> index of the real-world object it reports."""
    out = {}
    for vehicle_id in CARS:
        for pub in car_script(vehicle_id):
            if pub.event_id is not None:
                out[pub.event_id] = pub.object_index
    return out


def test_three_cars_two_centres_one_database(broker: Broker, db_args: list[str], tmp_path: Path) -> None:
    centres = [CentreProcess(broker, db_args, cid, tmp_path) for cid in ("centre-a", "centre-b")]
    for c in centres:
        c.start()
    expected = expected_events()
    redeliveries = sum(
        1 for v in CARS for p in car_script(v) if p.event_id is not None
    ) - len(expected)  # fmt: skip
    try:
        publish_fleet(broker)
        store = open_store(db_args)
        wait_for(lambda: store.event_count() >= len(expected) and len(store.rejected()) >= 1, 30,
                 f"events stored: {store.event_count()} of {len(expected)}")  # fmt: skip
        time.sleep(1.0)  # let any straggling redelivery land, so "exactly once" is checked after it
    finally:
        handled = [c.stop() for c in centres]

    # Every event stored exactly once (the primary key would refuse a second row; none is missing).
    assert store.event_ids() == sorted(expected)
    # The shared subscription split the load: each instance stored some events, and the redeliveries were
    # recognised as duplicates by whichever instance got them.
    by_instance = store.received_by_counts()
    assert set(by_instance) == {"centre-a", "centre-b"} and all(n > 0 for n in by_instance.values()), by_instance
    assert sum(h.get("event", 0) for h in handled) == len(expected), handled
    assert sum(h.get("duplicate", 0) for h in handled) == redeliveries, handled
    # The malformed message was kept aside with its topic.
    [(topic, reason, payload)] = store.rejected()
    assert topic == events_topic("car-2") and payload.startswith(b'{"type": "Feature"') and reason
    # Photos: one per event, stored once.
    assert store.snapshot_count() == len(expected)
    assert store.statuses() == {v: "online" for v in CARS}

    # Overlapping sightings became single cases: one case per real object, holding all its sightings.
    cases = store.cases()
    assert len(cases) == len(OBJECTS)
    for case in cases:
        objects = {expected[s.event_id] for s in case.sightings}
        assert len(objects) == 1, f"case {case.case_id} mixes objects {objects}"
        k = objects.pop()
        assert case.category == OBJECTS[k][0]
        assert {s.event_id for s in case.sightings} == {e for e, o in expected.items() if o == k}
        assert case.vehicle_ids == sorted(v for v, (seen, _) in CARS.items() if k in seen)
    store.close()

    # The export opens as valid GeoJSON, [lon, lat], each case near its real object.
    out = tmp_path / "cases.geojson"
    subprocess.run(
        [sys.executable, "-m", "vehicle.centre", *db_args, "export", "--geojson", str(out), "--csv",
         str(tmp_path / "cases.csv")],
        cwd=REPO_ROOT, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    collection = json.loads(out.read_text())
    jsonschema.validate(collection, GEOJSON_POINT_COLLECTION)
    assert len(collection["features"]) == len(OBJECTS)
    for feature in collection["features"]:
        lon, lat = feature["geometry"]["coordinates"]
        category = feature["properties"]["category"]
        nearest_m = min(haversine_m(lat, lon, o_lat, o_lon) for c, o_lat, o_lon in OBJECTS if c == category)
        assert nearest_m < 3.0, feature
    assert len((tmp_path / "cases.csv").read_text().splitlines()) == len(OBJECTS) + 1


def test_events_published_while_the_centre_is_down_are_not_lost(broker: Broker, tmp_path: Path) -> None:
    db_args = ["--db", str(tmp_path / "centre.sqlite3")]
    centre = CentreProcess(broker, db_args, "centre-p", tmp_path)
    centre.start()
    centre.stop()  # the broker keeps its persistent session and queues for it
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="car-9", protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    events: list[Event] = [make_event("car-9", f"o{i}", "street_vending", *offset(LAT0, LON0, 50 * i, 0))
                           for i in range(5)]  # fmt: skip
    for ev in events:
        client.publish(events_topic("car-9"), ev.to_json(), qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()
    centre.start()
    with CentreStore(db_args[1]) as store:
        try:
            wait_for(lambda: store.event_count() == len(events), 20, "queued events after restart")
        finally:
            centre.stop()
        assert store.event_ids() == sorted(e.properties.event_id for e in events)
        assert len(store.cases()) == 5
