"""End to end with real parts: real video + real GPS -> real ONNX model -> real Mosquitto -> a subscriber."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import jsonschema
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from tests.drives import gopro_drive
from tests.onnx_fixtures import constant_yolo_model, yolo_rows
from vehicle.app import ReplayOptions, replay
from vehicle.events import Event, event_schema

pytestmark = pytest.mark.integration


class Subscriber:
    """A plain paho MQTT 5 subscriber that records every message."""

    def __init__(self, port: int, topic: str):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sub", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "subscription not acknowledged"

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def wait_for(self, predicate, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(list(self.messages)):
                    return True
            time.sleep(0.05)
        return False

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def write_config(tmp: Path, model: Path, port: int, extra: str = "") -> Path:
    cfg = tmp / "patrol.toml"
    cfg.write_text(
        f'vehicle_id = "car-7"\ndata_dir = "{tmp / "data"}"\n'
        f'[detector]\nmodel_file = "{model}"\nscore_threshold = 0.3\n'
        f'[gps]\nstopped_speed_mps = 0.3\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nmax_messages_per_s = 200\n' + extra
    )
    return cfg


def test_replay_publishes_each_event_and_photo_to_a_real_broker(tmp_path, broker):
    drive = gopro_drive(tmp_path / "drives")
    # A real ONNX model that reports one pothole at the bottom centre of every frame: as the walker moves,
    # the ground point moves with them, so dedup must split it into several objects along the walk.
    model = constant_yolo_model(tmp_path / "m.onnx", yolo_rows([(320, 440, 60, 40)], [[0.0, 0.9]]),
                                names={0: "exposed_garbage", 1: "road_damage"})
    cfg = write_config(tmp_path, model, broker.port)
    sub = Subscriber(broker.port, "patrol/v1/#")
    out = tmp_path / "events.jsonl"
    counters = replay(ReplayOptions(drive, cfg, out=str(out), state_dir=tmp_path / "state"))
    assert counters.frames == 315
    events = [Event.model_validate_json(line) for line in out.read_text().splitlines()]
    assert 1 <= len(events) == counters.events
    ids = [e.id for e in events]
    assert sub.wait_for(lambda m: sum(t.endswith("/events") for t, _, _ in m) >= len(events)
                        and sum("/snapshots/" in t for t, _, _ in m) >= len(events))
    sub.close()
    schema = event_schema()
    received = [(t, p, r) for t, p, r in sub.messages if t.endswith("/events")]
    assert [json.loads(p)["id"] for _, p, _ in received] == ids  # in order, none twice
    for topic, payload, retained in received:
        assert topic == "patrol/v1/car-7/events" and not retained
        doc = json.loads(payload)
        jsonschema.validate(doc, schema)
        lon, lat = doc["geometry"]["coordinates"]
        assert 33.12 < lat < 33.13 and -117.33 < lon < -117.32  # Carlsbad, California: [lon, lat] order
        assert doc["properties"]["category"] == "road_damage"
        assert doc["properties"]["observations"] >= 2
        assert doc["properties"]["model"]["sha256"] == events[0].properties.model.sha256
    photos = {t.rsplit("/", 1)[1]: p for t, p, _ in sub.messages if "/snapshots/" in t}
    assert set(photos) == set(ids)
    for p in photos.values():
        assert p[:3] == b"\xff\xd8\xff" and len(p) > 10_000  # a real JPEG of the full frame
    assert all(e.properties.snapshot_topic == f"patrol/v1/car-7/snapshots/{e.id}" for e in events)


def test_events_wait_in_the_outbox_until_a_broker_appears(tmp_path):
    from tests.brokers import free_port, running_broker
    from vehicle.outbox import Outbox

    drive = gopro_drive(tmp_path / "drives")
    model = constant_yolo_model(tmp_path / "m.onnx", yolo_rows([(320, 440, 60, 40)], [[0.9, 0.0]]))
    port = free_port()
    cfg = write_config(tmp_path, model, port)
    counters = replay(ReplayOptions(drive, cfg, state_dir=tmp_path / "state", flush_timeout_s=1.0))
    assert counters.events >= 1
    with Outbox(tmp_path / "state" / "state.sqlite") as ob:
        assert ob.stats().depth == 2 * counters.events  # every event + its photo, held
    # Start a broker on that port and resume: the held events go out.
    with running_broker(tmp_path / "broker", port=port) as b:
        sub = Subscriber(b.port, "patrol/v1/+/events")
        replay(ReplayOptions(drive, cfg, state_dir=tmp_path / "state", flush_timeout_s=20.0))
        assert sub.wait_for(lambda m: len(m) >= counters.events)
        sub.close()
        assert len({json.loads(p)["id"] for _, p, _ in sub.messages}) == counters.events
    with Outbox(tmp_path / "state" / "state.sqlite") as ob:
        assert ob.stats().depth == 0
    assert np.isfinite(counters.frames_per_s())


def test_a_resumed_replay_skips_committed_frames_and_ids_are_stable(tmp_path):
    """Replaying into the same state resumes after the last committed frame; object and event ids are
    deterministic, so a fresh run of the same drive reproduces exactly the same event ids."""
    drive = gopro_drive(tmp_path / "drives")
    model = constant_yolo_model(tmp_path / "m.onnx", yolo_rows([(320, 440, 60, 40)], [[0.9, 0.0]]))
    cfg = write_config(tmp_path, model, 1, extra="")
    cfg.write_text(cfg.read_text().replace("[mqtt]\n", "[mqtt]\nenabled = false\n"))
    first = tmp_path / "a.jsonl"
    c1 = replay(ReplayOptions(drive, cfg, out=str(first), state_dir=tmp_path / "s1"))
    again = replay(ReplayOptions(drive, cfg, out=str(tmp_path / "b.jsonl"), state_dir=tmp_path / "s1"))
    assert c1.frames == 315 and again.frames < 10 and again.events == 0
    fresh = tmp_path / "c.jsonl"
    replay(ReplayOptions(drive, cfg, out=str(fresh), state_dir=tmp_path / "s2"))
    ids = [json.loads(line)["id"] for line in first.read_text().splitlines()]
    assert ids and ids == [json.loads(line)["id"] for line in fresh.read_text().splitlines()]
