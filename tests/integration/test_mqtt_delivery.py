"""Outbox -> MQTT delivery against a real Mosquitto: order, payloads, outages, status and Last Will."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.brokers import Broker, Collector, free_port, running_broker
from vehicle.events import events_topic, snapshot_topic, status_topic
from vehicle.mqtt import BrokerSettings, Publisher
from vehicle.outbox import Outbox, OutgoingMessage

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
CAR = "car-7"
ONLINE = b'{"state":"online"}'
OFFLINE = b'{"state":"offline"}'


def events(start: int, n: int) -> list[OutgoingMessage]:
    """n events whose payload carries its production index (and some bulk, to check it arrives intact)."""
    return [
        OutgoingMessage(events_topic(CAR), json.dumps({"i": i, "pad": "x" * (i % 50)}).encode(), "event", f"ev-{i}")
        for i in range(start, start + n)
    ]


def indices(collector: Collector) -> list[int]:
    return [json.loads(m.payload)["i"] for m in collector.on(events_topic(CAR))]


def first_arrivals(collector: Collector) -> list[int]:
    seen: list[int] = []
    for i in indices(collector):
        if i not in seen:
            seen.append(i)
    return seen


def settings(broker_port: int, **kw: object) -> BrokerSettings:
    return BrokerSettings(host="127.0.0.1", port=broker_port, client_id=f"patrol-{CAR}", **kw)


def test_events_and_snapshot_arrive_in_order_intact(broker: Broker, tmp_path: Path) -> None:
    col = Collector(broker)
    outbox = Outbox(tmp_path / "outbox.db")
    photo = tmp_path / "ev-3.jpg"
    photo.write_bytes(bytes(range(256)) * 40)
    sent = events(0, 30)
    outbox.put(sent[:3])
    outbox.put([OutgoingMessage(snapshot_topic(CAR, "ev-3"), None, "snapshot", "ev-3", payload_file=str(photo))])
    outbox.put(sent[3:])
    pub = Publisher(settings(broker.port, max_messages_per_s=200.0), outbox.path, status_topic(CAR), OFFLINE)
    pub.start()
    try:
        assert pub.flush(20.0), pub.counters
        assert col.wait_for(lambda c: len(c.messages) >= 31)
        got = col.on(events_topic(CAR))
        assert [m.payload for m in got] == [m.payload for m in sent]  # order and bytes
        assert not any(m.retain for m in got)  # events are never retained
        (snap,) = col.on(snapshot_topic(CAR, "ev-3"))
        assert snap.payload == bytes(range(256)) * 40
        assert not photo.exists()  # delivered: the car deletes its copy
        assert [m.topic for m in col.messages].index(snap.topic) == 3  # in its place in the stream
        assert outbox.stats().depth == 0
        c = pub.counters
        assert (c["published"], c["acked"], c["refused"]) == (31, 31, 0)
        assert pub.connected
    finally:
        pub.stop()
        col.close()
        outbox.close()


def test_no_broker_holds_the_outbox_then_delivers_when_one_appears(tmp_path: Path) -> None:
    port = free_port()
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.put(events(0, 5))
    pub = Publisher(settings(port, max_messages_per_s=100.0), outbox.path, status_topic(CAR), OFFLINE)
    t0 = time.monotonic()
    pub.start()
    assert time.monotonic() - t0 < 0.5  # start never blocks on an unreachable broker
    try:
        assert not pub.flush(1.5)
        assert not pub.connected and outbox.stats().depth == 5
        with running_broker(tmp_path / "broker", port=port) as broker:
            col = Collector(broker)
            outbox.put(events(5, 5))
            pub.wake()
            assert pub.flush(20.0), pub.counters
            assert col.wait_for(lambda c: len(indices(c)) >= 10)
            assert indices(col) == list(range(10))
            col.close()
    finally:
        pub.stop()
        outbox.close()


def test_broker_outage_loses_nothing_keeps_order_and_drains_at_capped_rate(tmp_path: Path) -> None:
    rate = 10.0
    # persistence + a persistent subscriber session: what the car sends while the collector is still
    # reconnecting after the restart is queued for it, as at the real centre.
    conf = f"persistence true\npersistence_location {tmp_path / 'broker'}/\n"
    with running_broker(tmp_path / "broker", extra_conf=conf) as broker:
        col = Collector(broker, client_id="centre-test", session_expiry_s=600)
        outbox = Outbox(tmp_path / "outbox.db")
        pub = Publisher(settings(broker.port, max_messages_per_s=rate), outbox.path, status_topic(CAR), OFFLINE)
        pub.start()
        try:
            outbox.put(events(0, 10))
            pub.wake()
            assert pub.flush(20.0), pub.counters
            broker.stop()
            assert col.wait_for(lambda c: not pub.connected, 5.0)
            n_out = 40
            for b in range(0, n_out, 5):  # the pipeline keeps producing during the outage
                outbox.put(events(10 + b, 5))
                pub.wake()
            time.sleep(1.0)
            assert outbox.stats().depth == n_out  # held, not lost
            assert pub.counters["published"] == 10
            broker.start()
            assert pub.flush(60.0), pub.counters
            assert col.wait_for(lambda c: len(set(indices(c))) >= 10 + n_out, 20.0), indices(col)
            assert first_arrivals(col) == list(range(10 + n_out))  # nothing lost, in production order
            after = [m for m in col.on(events_topic(CAR)) if json.loads(m.payload)["i"] >= 10]
            span_s = after[-1].t_monotonic - after[0].t_monotonic
            assert span_s >= 0.9 * (n_out - 1) / rate  # no flood on reconnect: the cap holds
            assert pub.counters["reconnects"] >= 1
            print(f"outage: produced {10 + n_out}, delivered {len(set(indices(col)))}, "
                  f"duplicates {len(indices(col)) - len(set(indices(col)))}, drain span {span_s:.1f} s")
        finally:
            pub.stop()
            col.close()
            outbox.close()


def test_acl_refusal_is_counted_parked_and_does_not_block_the_rest(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text(f"topic write patrol/v1/{CAR}/#\ntopic read patrol/v1/#\n")  # anonymous: its own car only
    with running_broker(tmp_path / "broker", extra_conf=f"acl_file {acl}\n") as broker:
        col = Collector(broker)
        outbox = Outbox(tmp_path / "outbox.db")
        stray = OutgoingMessage(events_topic("car-8"), b'{"i": -1}', "event", "stray")
        outbox.put([*events(0, 2), stray, *events(2, 2)])
        pub = Publisher(settings(broker.port, max_messages_per_s=100.0), outbox.path, status_topic(CAR), OFFLINE)
        pub.start()
        try:
            assert not pub.flush(10.0)  # False: a refused message is still in the outbox
            assert col.wait_for(lambda c: len(indices(c)) >= 4)
            assert indices(col) == [0, 1, 2, 3]
            assert col.on(events_topic("car-8")) == []
            c = pub.counters
            assert (c["published"], c["acked"], c["refused"]) == (5, 4, 1)
            st = outbox.stats()
            assert (st.depth, st.parked) == (1, 1)  # kept, never silently dropped
        finally:
            pub.stop()
        pub2 = Publisher(settings(broker.port, max_messages_per_s=100.0), outbox.path, status_topic(CAR), OFFLINE)
        pub2.start()  # a new start retries the parked message (the ACL may have been fixed): still refused
        try:
            assert not pub2.flush(5.0)
            assert pub2.counters["refused"] == 1
        finally:
            pub2.stop()
            col.close()
            outbox.close()


def test_status_is_retained_and_clean_stop_leaves_offline(broker: Broker, tmp_path: Path) -> None:
    pub = Publisher(settings(broker.port), tmp_path / "outbox.db", status_topic(CAR), OFFLINE)
    pub.start()
    pub.publish_status(ONLINE)
    col = Collector(broker, topic=status_topic(CAR))
    try:
        assert col.wait_for(lambda c: [m.payload for m in c.messages] == [ONLINE])
        late = Collector(broker, topic=status_topic(CAR), client_id="late")
        assert late.wait_for(lambda c: len(c.messages) == 1)
        assert late.messages[0].retain and late.messages[0].payload == ONLINE
        late.close()
        pub.stop()
        assert col.wait_for(lambda c: [m.payload for m in c.messages][-1:] == [OFFLINE])
        after = Collector(broker, topic=status_topic(CAR), client_id="after")
        assert after.wait_for(lambda c: len(c.messages) == 1)
        assert after.messages[0].retain and after.messages[0].payload == OFFLINE
        after.close()
    finally:
        pub.stop()
        col.close()


def test_last_will_publishes_retained_offline_when_the_car_process_is_killed(broker: Broker, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from vehicle.mqtt import BrokerSettings, Publisher
        pub = Publisher(BrokerSettings("127.0.0.1", {broker.port}, "patrol-{CAR}"), {str(tmp_path / "o.db")!r},
                        {status_topic(CAR)!r}, {OFFLINE!r})
        pub.start()
        pub.publish_status({ONLINE!r})
        while not pub.connected:
            time.sleep(0.05)
        print("connected", flush=True)
        time.sleep(60)
        """
    )
    col = Collector(broker, topic=status_topic(CAR))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "connected"
        assert col.wait_for(lambda c: ONLINE in [m.payload for m in c.messages])
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert col.wait_for(lambda c: c.messages[-1].payload == OFFLINE, 10.0), col.messages
        after = Collector(broker, topic=status_topic(CAR), client_id="after")
        assert after.wait_for(lambda c: len(c.messages) == 1)
        assert after.messages[0].retain and after.messages[0].payload == OFFLINE
        after.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        col.close()


def test_missing_puback_makes_a_new_connection_that_resends_in_order(broker: Broker, tmp_path: Path, caplog) -> None:
    """A frozen broker (SIGSTOP: TCP still up, no PUBACK) past ack_timeout_s: reconnect, resend, nothing lost."""
    col = Collector(broker)
    outbox = Outbox(tmp_path / "outbox.db")
    pub = Publisher(
        settings(broker.port, max_messages_per_s=50.0, ack_timeout_s=1.5, keepalive_s=60),
        outbox.path, status_topic(CAR), OFFLINE,
    )
    pub.start()
    try:
        outbox.put(events(0, 3))
        pub.wake()
        assert pub.flush(10.0)
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGSTOP)
        try:
            outbox.put(events(3, 5))
            pub.wake()
            time.sleep(3.0)  # > ack_timeout_s: the sender gives up on this connection
        finally:
            broker.proc.send_signal(signal.SIGCONT)
        assert pub.flush(30.0), pub.counters
        assert col.wait_for(lambda c: len(set(indices(c))) >= 8, 10.0)
        assert first_arrivals(col) == list(range(8))
        assert pub.counters["reconnects"] >= 1
        assert any("no PUBACK" in r.getMessage() for r in caplog.records)
    finally:
        pub.stop()
        col.close()
        outbox.close()


def test_message_over_the_brokers_packet_limit_is_parked_not_looped(tmp_path: Path) -> None:
    """A photo larger than the broker accepts would get the car disconnected on every resend: park it."""
    with running_broker(tmp_path / "broker", extra_conf="max_packet_size 4000\n") as broker:
        col = Collector(broker)
        outbox = Outbox(tmp_path / "outbox.db")
        big = tmp_path / "big.jpg"
        big.write_bytes(b"\xff" * 6000)
        outbox.put([*events(0, 2)])
        outbox.put([OutgoingMessage(snapshot_topic(CAR, "ev-1"), None, "snapshot", "ev-1", payload_file=str(big))])
        outbox.put([*events(2, 2)])
        pub = Publisher(settings(broker.port, max_messages_per_s=100.0), outbox.path, status_topic(CAR), OFFLINE)
        pub.start()
        try:
            assert not pub.flush(10.0)
            assert col.wait_for(lambda c: len(indices(c)) >= 4)
            assert indices(col) == [0, 1, 2, 3]
            c = pub.counters
            assert (c["acked"], c["refused"], c["reconnects"]) == (4, 1, 0)
            assert outbox.stats().parked == 1
        finally:
            pub.stop()
            col.close()
            outbox.close()
