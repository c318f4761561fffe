"""Real Mosquitto brokers for tests: started on a free port, stopped afterwards."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


@dataclass
class Broker:
    """A running Mosquitto process owned by a test."""

    host: str
    port: int
    workdir: Path
    extra_conf: str = ""
    proc: subprocess.Popen | None = None
    full_conf: str = ""  # when set: the whole config, written as is (the caller puts the port in it)

    @property
    def log_file(self) -> Path:
        return self.workdir / "mosquitto.log"

    def start(self) -> None:
        """Start (or restart) the broker on the same port."""
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            self.full_conf
            or f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # Running as root, mosquitto would switch to user "mosquitto", which cannot open files under
            # pytest's private tmp dirs (log, ACL, certificates); as any other user this line does nothing.
            "user root\n"
            "persistence false\n"
            f"log_dest file {self.log_file}\n"
            "log_type all\n"
            "max_inflight_messages 100\n"
            "max_queued_messages 100000\n" + self.extra_conf
        )
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(self.port)
        except TimeoutError:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
            raise RuntimeError(f"mosquitto did not start: {err.strip()}") from None

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@contextlib.contextmanager
def running_broker(
    workdir: Path, extra_conf: str = "", port: int | None = None, full_conf: str = ""
) -> Iterator[Broker]:
    """Context manager: a fresh Mosquitto on a free port in ``workdir`` (``full_conf``: the whole config)."""
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto not installed (scripts/setup.sh installs it)")
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker("127.0.0.1", port or free_port(), workdir, extra_conf, full_conf=full_conf)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass(frozen=True)
class Received:
    """One message a `Collector` got, with its arrival time (monotonic seconds)."""

    topic: str
    payload: bytes
    retain: bool
    t_monotonic: float


class Collector:
    """A real MQTT 5 subscriber that records what arrives; a persistent session when ``session_expiry_s`` > 0.

    With a persistent session (and ``persistence true`` on the broker) messages published while it is away,
    even across a broker restart, are queued for it and delivered when it is back.
    """

    def __init__(
        self,
        broker: Broker,
        topic: str = "patrol/v1/#",
        client_id: str = "test-collector",
        session_expiry_s: int = 0,
        username: str = "",
        password: str = "",
        ca_file: str = "",
    ):
        import threading

        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.topic = topic
        self.messages: list[Received] = []
        self.subscribed = threading.Event()
        self.connect_reasons: list[str] = []
        self._lock = threading.Lock()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        if username:
            self.client.username_pw_set(username, password)
        if ca_file:
            self.client.tls_set(ca_certs=ca_file)
        self.client.reconnect_delay_set(0.2, 1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        props = Properties(PacketTypes.CONNECT)
        if session_expiry_s:
            props.SessionExpiryInterval = session_expiry_s
        self.client.connect(broker.host, broker.port, clean_start=not session_expiry_s, properties=props)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            self.client.loop_stop()
            raise TimeoutError(f"collector could not subscribe: {self.connect_reasons}")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connect_reasons.append(str(reason_code))
        if not reason_code.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic()))

    def on(self, topic: str) -> list[Received]:
        """Messages received on one exact topic, in arrival order."""
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, predicate, timeout_s: float = 10.0) -> bool:
        """Poll until ``predicate(self)`` holds; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        return bool(predicate(self))

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()
