"""The shipped centre broker config (scripts/mosquitto) on a real Mosquitto: TLS, passwords, per-car ACL.

The CA and server certificate are made at test time by scripts/mosquitto/make-certs.sh (openssl); the
password file by mosquitto_passwd. The broker runs the shipped mosquitto.conf and acl, paths rewritten.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers import Broker, Collector, free_port, running_broker
from vehicle.events import events_topic, status_topic
from vehicle.mqtt import BrokerSettings, Publisher
from vehicle.outbox import Outbox, OutgoingMessage

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED = REPO_ROOT / "scripts" / "mosquitto"
PASSWORDS = {"car-7": "s3cret-car7-Zq!", "car-8": "s3cret-car8-Xw#", "centre": "s3cret-centre-Vb%"}
OFFLINE = b'{"state":"offline"}'


def _make_certs(out: Path, *names: str) -> Path:
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    subprocess.run(["bash", str(SHIPPED / "make-certs.sh"), str(out), *names], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, Path, Path]]:
    """The shipped config on a free port; yields (broker, our CA file, a foreign CA file)."""
    if not shutil.which("mosquitto_passwd"):
        pytest.skip("mosquitto_passwd not installed (package mosquitto)")
    root = tmp_path_factory.mktemp("secure-broker")
    certs = _make_certs(root / "certs", "localhost", "127.0.0.1")
    foreign = _make_certs(root / "foreign", "localhost", "127.0.0.1")  # same name, another CA
    passwd = root / "passwd"
    for i, (user, pw) in enumerate(PASSWORDS.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwd), user, pw], check=True)
    shutil.copy(SHIPPED / "acl", root / "acl")
    port = free_port()
    workdir = root / "broker"
    workdir.mkdir()
    conf = (SHIPPED / "mosquitto.conf").read_text()
    conf = conf.replace("/etc/mosquitto/patrol", str(root)).replace("/var/lib/mosquitto/", f"{workdir}/")
    conf = conf.replace("listener 8883", f"listener {port} 127.0.0.1").replace(
        "log_dest syslog", f"log_dest file {workdir / 'mosquitto.log'}\nuser root"
    )
    assert str(root / "acl") in conf and f"listener {port}" in conf  # the rewrite hit the shipped lines
    with running_broker(workdir, port=port, full_conf=conf) as broker:
        yield broker, certs / "ca.crt", foreign / "ca.crt"


def car_settings(port: int, ca: Path, user: str = "car-7", password: str | None = None) -> BrokerSettings:
    return BrokerSettings(
        host="localhost", port=port, client_id=f"patrol-{user}", username=user,
        password=PASSWORDS[user] if password is None else password, tls_ca_file=str(ca),
        max_messages_per_s=100.0,
    )


def centre(broker: Broker, ca: Path, client_id: str = "centre-test") -> Collector:
    return Collector(broker, client_id=client_id, username="centre", password=PASSWORDS["centre"], ca_file=str(ca))


def event(car: str, i: int) -> OutgoingMessage:
    return OutgoingMessage(events_topic(car), json.dumps({"car": car, "i": i}).encode(), "event", f"{car}-{i}")


def assert_no_password_in(text: str) -> None:
    for pw in PASSWORDS.values():
        assert pw not in text


def test_car_with_right_ca_and_password_delivers(secure, tmp_path: Path, caplog) -> None:
    broker, ca, _ = secure
    caplog.set_level(logging.DEBUG)
    col = centre(broker, ca)
    outbox = Outbox(tmp_path / "o.db")
    outbox.put([event("car-7", i) for i in range(3)])
    pub = Publisher(car_settings(broker.port, ca), outbox.path, status_topic("car-7"), OFFLINE)
    pub.start()
    try:
        assert pub.flush(15.0), pub.counters
        assert col.wait_for(lambda c: len(c.on(events_topic("car-7"))) == 3)
        assert [json.loads(m.payload)["i"] for m in col.on(events_topic("car-7"))] == [0, 1, 2]
    finally:
        pub.stop()
        col.close()
        outbox.close()
    assert_no_password_in(caplog.text)


def test_wrong_password_is_refused_logged_once_without_the_password(secure, tmp_path: Path, caplog) -> None:
    broker, ca, _ = secure
    caplog.set_level(logging.DEBUG)  # paho's own debug lines included
    wrong = "not-the-password-Qm7"
    outbox = Outbox(tmp_path / "o.db")
    outbox.put([event("car-7", 0)])
    pub = Publisher(car_settings(broker.port, ca, password=wrong), outbox.path, status_topic("car-7"), OFFLINE)
    pub.start()
    try:
        time.sleep(4.0)  # long enough for several refused attempts with back-off
        assert not pub.connected
        assert outbox.stats().depth == 1 and pub.counters["published"] == 0
    finally:
        pub.stop()
        outbox.close()
    refusals = [r for r in caplog.records if r.name == "vehicle.mqtt" and "refused the connection" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]  # once, not once per retry
    assert "Bad user name or password" in refusals[0].getMessage() or "Not authorized" in refusals[0].getMessage()
    assert wrong not in caplog.text and wrong not in repr(pub.settings)
    assert_no_password_in(caplog.text)
    assert wrong not in broker.log_file.read_text(errors="replace")


def test_anonymous_and_plain_text_clients_are_refused(secure, tmp_path: Path) -> None:
    broker, ca, _ = secure
    anon = Publisher(
        BrokerSettings("localhost", broker.port, "anon", tls_ca_file=str(ca)), tmp_path / "a.db", "t/anon", OFFLINE
    )
    plain = Publisher(
        BrokerSettings("localhost", broker.port, "plain", username="car-7", password=PASSWORDS["car-7"]),
        tmp_path / "p.db", "t/plain", OFFLINE,
    )
    anon.start()
    plain.start()
    try:
        time.sleep(3.0)
        assert not anon.connected and not plain.connected
    finally:
        anon.stop()
        plain.stop()


def test_wrong_ca_is_refused(secure, tmp_path: Path, caplog) -> None:
    broker, _, foreign_ca = secure
    caplog.set_level(logging.DEBUG)
    pub = Publisher(car_settings(broker.port, foreign_ca), tmp_path / "o.db", status_topic("car-7"), OFFLINE)
    pub.start()
    try:
        time.sleep(3.0)
        assert not pub.connected
    finally:
        pub.stop()
    problems = [r.getMessage() for r in caplog.records if r.name == "vehicle.mqtt" and r.levelno >= logging.WARNING]
    assert len(problems) == 1 and "cannot connect" in problems[0], problems
    assert "certificate verify failed" in problems[0]  # the operator sees why
    assert_no_password_in(caplog.text)


def test_car_cannot_publish_as_another_car_and_learns_it_from_the_reason_code(secure, tmp_path: Path, caplog) -> None:
    broker, ca, _ = secure
    caplog.set_level(logging.DEBUG)
    col = centre(broker, ca, client_id="centre-acl")
    outbox = Outbox(tmp_path / "o.db")
    outbox.put([event("car-7", 0), event("car-8", 99), event("car-7", 1)])  # car-7 tries car-8's topic
    pub = Publisher(car_settings(broker.port, ca), outbox.path, status_topic("car-7"), OFFLINE)
    pub.start()
    try:
        assert not pub.flush(10.0)  # the refused message stays (parked)
        assert col.wait_for(lambda c: len(c.on(events_topic("car-7"))) == 2)
        time.sleep(0.5)
        assert col.on(events_topic("car-8")) == []  # never reached the centre
        assert pub.counters["refused"] == 1 and pub.counters["acked"] == 2
        assert outbox.stats().parked == 1
    finally:
        pub.stop()
        col.close()
        outbox.close()
    refused = [r.getMessage() for r in caplog.records if "refused the publish" in r.getMessage()]
    assert len(refused) == 1
    assert events_topic("car-8") in refused[0] and "0x87" in refused[0] and "Not authorized" in refused[0]
    assert_no_password_in(caplog.text)


def test_car_cannot_read_another_cars_topics(secure, tmp_path: Path) -> None:
    broker, ca, _ = secure
    spy = Collector(
        broker, client_id="spy-car-7", username="car-7", password=PASSWORDS["car-7"], ca_file=str(ca)
    )
    col = centre(broker, ca, client_id="centre-read")
    outbox = Outbox(tmp_path / "o.db")
    outbox.put([event("car-8", i) for i in range(3)])
    pub = Publisher(car_settings(broker.port, ca, user="car-8"), outbox.path, status_topic("car-8"), OFFLINE)
    pub.start()
    try:
        assert pub.flush(15.0), pub.counters
        assert col.wait_for(lambda c: len(c.on(events_topic("car-8"))) == 3)  # the centre reads it
        time.sleep(0.5)
        assert spy.messages == []  # car-7, subscribed to patrol/v1/#, got nothing
    finally:
        pub.stop()
        spy.close()
        col.close()
        outbox.close()
