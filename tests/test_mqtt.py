"""BrokerSettings from the config: secrets from a file or the environment, paths, and no password in repr."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from vehicle.config import ConfigError, MqttConfig, TlsConfig
from vehicle.mqtt import BrokerSettings


def test_defaults_and_client_id(tmp_path: Path) -> None:
    s = BrokerSettings.from_config(MqttConfig(host="broker.example", port=8883), "car-9", tmp_path)
    assert (s.host, s.port, s.client_id, s.username, s.password) == ("broker.example", 8883, "patrol-car-9", "", "")
    assert not s.tls_enabled
    assert (s.max_messages_per_s, s.max_inflight, s.ack_timeout_s, s.keepalive_s) == (20.0, 10, 30.0, 30)


def test_password_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "mqtt.pw").write_text("hunter2-pw\nignored second line\n")
    cfg = MqttConfig(username="car-9", password_file="secrets/mqtt.pw", client_id="custom")
    s = BrokerSettings.from_config(cfg, "car-9", tmp_path)
    assert (s.username, s.password, s.client_id) == ("car-9", "hunter2-pw", "custom")
    assert "hunter2-pw" not in repr(s) and "hunter2-pw" not in str(s)


def test_password_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATROL_TEST_MQTT_PW", "from-env-pw")
    s = BrokerSettings.from_config(MqttConfig(username="u", password="${PATROL_TEST_MQTT_PW}"), "c", tmp_path)
    assert s.password == "from-env-pw"
    monkeypatch.delenv("PATROL_TEST_MQTT_PW")
    with pytest.raises(ConfigError, match=r"mqtt\.password: environment variable PATROL_TEST_MQTT_PW is not set"):
        BrokerSettings.from_config(MqttConfig(username="u", password="${PATROL_TEST_MQTT_PW}"), "c", tmp_path)


def test_unreadable_or_empty_password_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.password_file: cannot read .*missing\.pw"):
        BrokerSettings.from_config(MqttConfig(username="u", password_file="missing.pw"), "c", tmp_path)
    (tmp_path / "empty.pw").write_text("\n")
    with pytest.raises(ConfigError, match=r"mqtt\.password_file: .*empty\.pw is empty"):
        BrokerSettings.from_config(MqttConfig(username="u", password_file="empty.pw"), "c", tmp_path)


def test_tls_paths_resolved_only_when_enabled(tmp_path: Path) -> None:
    tls = TlsConfig(enabled=True, ca_file="certs/ca.crt", insecure_skip_verify=True)
    s = BrokerSettings.from_config(MqttConfig(tls=tls), "c", tmp_path)
    assert s.tls_enabled and s.tls_insecure
    assert s.tls_ca_file == str(tmp_path / "certs" / "ca.crt")
    off = BrokerSettings.from_config(MqttConfig(tls=TlsConfig(enabled=False, ca_file="ca.crt")), "c", tmp_path)
    assert not off.tls_enabled and off.tls_ca_file == ""


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"max_messages_per_s": 0.0}, "max_messages_per_s"),
        ({"max_inflight": 0}, "max_inflight"),
        ({"password": "x"}, "needs a username"),
    ],
)
def test_bad_settings_are_rejected(kw: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        BrokerSettings("h", 1883, "c", **kw)


def test_a_host_name_that_cannot_be_encoded_is_retried_not_fatal(tmp_path: Path, caplog) -> None:
    """IDNA refuses an empty label; paho's network thread would die on that UnicodeError and never publish
    again. The config refuses such names, and the publisher still treats one as a connection failure."""
    import threading

    from vehicle.events import status_topic
    from vehicle.mqtt import Publisher
    from vehicle.outbox import Outbox

    outbox = Outbox(tmp_path / "o.db")
    pub = Publisher(BrokerSettings(host="broker..example", port=1, client_id="c"), outbox.path,
                    status_topic("car-1"), b"{}")
    caplog.set_level(logging.WARNING)
    pub.start()
    try:
        deadline = time.monotonic() + 10
        while "cannot be resolved" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "host name 'broker..example' cannot be resolved" in caplog.text
        assert any(t.name.startswith("paho-mqtt-client") and t.is_alive() for t in threading.enumerate())
        assert not pub.connected
    finally:
        pub.stop(timeout_s=2.0)
        outbox.close()
