"""Broker outage through the whole pipeline: a real-time replay keeps producing events while the test stops the
real Mosquitto and starts it again on the same port; every event arrives, in order, paced, and the outbox
(read from the car's state file during the outage) and the retained status show the backlog."""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path

import pytest

from tests.brokers import Broker, Collector, running_broker
from tests.drives import gopro_drive
from tests.integration.test_crash import crafted_detections, open_state_readonly
from tests.onnx_fixtures import constant_yolo_model, yolo_rows
from tests.test_frames import GOPRO_FRAMES, corrupt_copy
from vehicle.app import ReplayOptions, replay
from vehicle.events import events_topic, status_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VEHICLE_ID = "car-outage"
RATE_PER_S = 8.0  # mqtt.max_messages_per_s: the drain after the outage must respect it


def queued_events(db: Path) -> int:
    """Events waiting in the car's outbox, read without touching the writer."""
    conn = open_state_readonly(db)
    try:
        return conn.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'event'").fetchone()[0]
    finally:
        conn.close()


def test_broker_outage_mid_drive_delivers_every_event_in_order_at_a_capped_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    drive = gopro_drive(tmp_path / "drives")
    detections = tmp_path / "detections.jsonl"
    # A new object every 24 frames (0.8 s) over the whole 10.5 s walk: events keep coming during the outage.
    objects = crafted_detections(drive, detections, frames=315, window=24, visible=5)
    assert objects == 13
    persistence = f"persistence true\npersistence_location {tmp_path / 'broker'}/\n"
    with running_broker(tmp_path / "broker", extra_conf=persistence) as broker:
        cfg = tmp_path / "patrol.toml"
        cfg.write_text(
            f'vehicle_id = "{VEHICLE_ID}"\ndata_dir = "{tmp_path / "data"}"\n[gps]\nstopped_speed_mps = 0.3\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nmax_messages_per_s = {RATE_PER_S}\n'
            "status_interval_s = 0.5\nconnect_timeout_s = 2\n"
        )
        # A persistent session on a persistent broker: what the car sends before the centre is back is kept.
        col = Collector(broker, topic="patrol/v1/#", client_id="centre-outage", session_expiry_s=600)
        state = tmp_path / "state"
        out = tmp_path / "events.jsonl"
        result: dict = {}

        def run() -> None:
            try:
                result["counters"] = replay(ReplayOptions(drive, cfg, realtime=True, out=str(out), state_dir=state,
                                                          detections=detections, flush_timeout_s=60))
            except BaseException as exc:  # re-raised below
                result["error"] = exc

        car = threading.Thread(target=run, name="replay")
        car.start()
        try:
            ev_topic = events_topic(VEHICLE_ID)
            assert col.wait_for(lambda c: len(c.on(ev_topic)) >= 2, 30), "no event before the outage"
            broker.stop()
            t_down = time.monotonic()
            depth = [(0.0, queued_events(state / "state.sqlite"))]
            while time.monotonic() - t_down < 3.5:  # about 4 new objects meanwhile
                time.sleep(0.25)
                depth.append((round(time.monotonic() - t_down, 2), queued_events(state / "state.sqlite")))
            broker.start()
            t_up = time.monotonic()
            car.join(90)
            assert not car.is_alive(), "the replay did not finish"
            if "error" in result:
                raise result["error"]
            produced = [json.loads(line)["id"] for line in out.read_text().splitlines()]
            assert col.wait_for(lambda c: {json.loads(m.payload)["id"] for m in c.on(ev_topic)} >= set(produced), 30)
        finally:
            col.close()

    assert len(produced) == objects == result["counters"].events
    print(f"\noutbox depth (s since broker stop, events queued): {depth}")
    # The outbox grew while the broker was away (read from the car's own state file).
    assert depth[-1][1] >= depth[0][1] + 3, depth
    assert all(b[1] >= a[1] for a, b in itertools.pairwise(depth)), "nothing can leave without a broker"
    events = col.on(ev_topic)
    ids = [json.loads(m.payload)["id"] for m in events]
    first_arrival = list(dict.fromkeys(ids))
    redelivered = len(ids) - len(first_arrival)
    lost = set(produced) - set(ids)
    objects_seen = {json.loads(m.payload)["properties"]["category"] for m in events}
    duplicated = len(first_arrival) - len(objects_seen)
    with capsys.disabled():  # the counts are part of the bar: shown even when the test passes
        print(f"\noutage test: events produced={len(produced)} delivered={len(first_arrival)} "
              f"redelivered(same id)={redelivered} duplicated={duplicated} lost={len(lost)} "
              f"outbox during the outage={[d for _, d in depth]}")
    assert not lost and duplicated == 0
    assert first_arrival == produced  # in production order, across the outage
    # No flood on reconnect: the backlog (events and photos) drains at no more than the configured rate.
    backlog = [m for m in col.messages if m.t_monotonic >= t_up and m.topic != status_topic(VEHICLE_ID)]
    assert len(backlog) >= 6
    span_s = backlog[-1].t_monotonic - backlog[0].t_monotonic
    assert span_s >= (len(backlog) - 1) / RATE_PER_S * 0.8, (len(backlog), span_s)
    # The retained status the car re-sends on reconnect shows the backlog it built up during the outage.
    statuses = [json.loads(m.payload) for m in col.on(status_topic(VEHICLE_ID)) if m.t_monotonic >= t_up]
    assert any((s.get("outbox_depth") or 0) >= 3 for s in statuses), statuses


def test_corrupt_video_replay_skips_bad_frames_counts_them_and_finishes(tmp_path: Path, broker: Broker) -> None:
    drive = gopro_drive(tmp_path / "drives")
    video = drive / "video" / "000000.mp4"
    corrupt = corrupt_copy(tmp_path)
    video.unlink()
    corrupt.rename(video)
    from vehicle.frames import VideoFileSource

    reference = VideoFileSource(video, 0.0)  # the source on its own: how many frames are bad
    good = sum(1 for _ in reference)
    bad = reference.counters.bad_frames
    assert bad > 0 and good + bad == GOPRO_FRAMES
    model = constant_yolo_model(tmp_path / "m.onnx", yolo_rows([(320, 440, 60, 40)], [[0.0, 0.9]]))
    cfg = tmp_path / "patrol.toml"
    cfg.write_text(f'vehicle_id = "{VEHICLE_ID}"\n[detector]\nmodel_file = "{model}"\n[gps]\nstopped_speed_mps = 0.3\n'
                   f'[mqtt]\nport = {broker.port}\nmax_messages_per_s = 200\n')
    col = Collector(broker, topic=status_topic(VEHICLE_ID), client_id="centre-corrupt")
    try:
        counters = replay(ReplayOptions(drive, cfg, state_dir=tmp_path / "state"))
        assert col.wait_for(lambda c: any(json.loads(m.payload)["state"] == "offline" for m in c.messages), 10)
    finally:
        col.close()
    assert counters.frames == good  # every decodable frame went through the model
    assert counters.events >= 1
    final = [json.loads(m.payload) for m in col.messages if json.loads(m.payload)["state"] == "online"][-1]
    assert final["frames_bad"] == bad and final["frames_total"] == good
