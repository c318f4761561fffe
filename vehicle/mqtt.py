"""Delivery to the command centre: the outbox drained over MQTT 5 (paho-mqtt 2.x), QoS 1, at a capped rate.

This module knows topics and bytes, never what a detection is. One `Publisher` owns one paho client (its
network loop runs in paho's thread) and one sender thread, which is the only code touching the outbox:

* it leases messages in seq order with its own SQLite connection and publishes them QoS 1, never retained,
  at most ``max_messages_per_s`` (a token bucket holding one token, so a reconnect after an outage drains
  at a steady pace instead of a flood) and at most ``max_inflight`` without a PUBACK;
* a row leaves the outbox only when its PUBACK carries a success reason code (0x10 "no matching
  subscribers" is a success);
* a PUBACK with an error reason code (0x87 not authorized from an ACL, 0x97 quota, ...) is logged with the
  topic, counted as ``refused`` and the row is *parked*: kept in the outbox (``OutboxStats.parked``), not
  retried in this run, since the same broker would refuse it again, and put back in line at the next start,
  when the centre may have fixed its ACL. It is never silently dropped. A message the broker would certainly
  refuse (larger than the Maximum Packet Size of its CONNACK, or a topic paho rejects) is parked the same way
  before sending, instead of getting the car disconnected on every resend;
* paho keeps every unacknowledged QoS 1 message and resends it first, in order, after a reconnect; a new
  process resends everything still in the outbox from its head. Delivery is at least once (consumers key
  on ``event_id``) and one car's messages arrive, first copies, in production order;
* no PUBACK within ``ack_timeout_s`` on a live connection means a wedged link: the connection is dropped and
  re-made, which makes paho resend (MQTT 5 forbids resending on the same connection).

The connect reason code is checked: a refused CONNECT leaves `Publisher.connected` False and is logged once
per distinct reason, without credentials. The Last Will is the caller's retained "offline" status.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from vehicle.config import ConfigError, resolve_path
from vehicle.outbox import Outbox, StoredMessage

if TYPE_CHECKING:
    from vehicle.config import MqttConfig

log = logging.getLogger(__name__)
_PAHO_LOG = logging.getLogger(__name__ + ".paho")


class _QuietRetries(logging.Filter):
    """paho logs an ERROR on every loop pass while it waits to reconnect; we log the cause once ourselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith("Client is not connected"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return _PAHO_LOG.isEnabledFor(logging.DEBUG)
        return True


_PAHO_LOG.addFilter(_QuietRetries())

_RECONNECT_MIN_S = 1
_RECONNECT_MAX_S = 60
_SENDER_RETRY_S = 5.0
_IDLE_POLL_S = 1.0  # the sender re-reads the outbox this often even without wake()
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


@dataclass(frozen=True)
class BrokerSettings:
    """How to reach the centre's broker. ``password`` is kept out of ``repr`` (and so out of logs).

    TLS is used when ``tls`` is set or any ``tls_*_file`` is given; an empty ``tls_ca_file`` then means the
    system's trusted CAs.
    """

    host: str
    port: int
    client_id: str
    username: str = ""
    password: str = field(default="", repr=False)
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_insecure: bool = False
    keepalive_s: int = 30
    max_messages_per_s: float = 20.0
    max_inflight: int = 10
    ack_timeout_s: float = 30.0
    tls: bool = False
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_messages_per_s <= 0:
            raise ValueError(f"max_messages_per_s must be > 0 (got {self.max_messages_per_s})")
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1 (got {self.max_inflight})")
        if self.password and not self.username:
            raise ValueError("a password needs a username")

    @property
    def tls_enabled(self) -> bool:
        """Whether the connection uses TLS."""
        return self.tls or bool(self.tls_ca_file or self.tls_cert_file)

    @classmethod
    def from_config(cls, mqtt_cfg: MqttConfig, vehicle_id: str, base_dir: Path) -> BrokerSettings:
        """Settings from the ``[mqtt]`` config section.

        Args:
            mqtt_cfg: the validated section.
            vehicle_id: used for the default client id ``patrol-<vehicle_id>``.
            base_dir: folder of the config file; relative file names are resolved against it.

        Raises:
            ConfigError: the password file cannot be read, or a ``${ENV}`` reference is unset.
        """
        password = mqtt_cfg.password
        if mqtt_cfg.password_file:
            pw_path = resolve_path(mqtt_cfg.password_file, base_dir)
            try:
                lines = pw_path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"mqtt.password_file: cannot read {pw_path}: {exc.__class__.__name__}") from None
            password = lines[0].strip() if lines else ""
            if not password:
                raise ConfigError(f"mqtt.password_file: {pw_path} is empty")
        else:
            password = _expand_env("mqtt.password", password)
        tls = mqtt_cfg.tls

        def path_or_empty(value: str) -> str:
            return str(resolve_path(value, base_dir)) if value else ""

        return cls(
            host=mqtt_cfg.host,
            port=mqtt_cfg.port,
            client_id=mqtt_cfg.client_id or f"patrol-{vehicle_id}",
            username=_expand_env("mqtt.username", mqtt_cfg.username),
            password=password,
            tls_ca_file=path_or_empty(tls.ca_file) if tls.enabled else "",
            tls_cert_file=path_or_empty(tls.cert_file) if tls.enabled else "",
            tls_key_file=path_or_empty(tls.key_file) if tls.enabled else "",
            tls_insecure=tls.insecure_skip_verify,
            keepalive_s=mqtt_cfg.keepalive_s,
            max_messages_per_s=mqtt_cfg.max_messages_per_s,
            max_inflight=mqtt_cfg.max_inflight,
            ack_timeout_s=mqtt_cfg.ack_timeout_s,
            tls=tls.enabled,
            connect_timeout_s=mqtt_cfg.connect_timeout_s,
        )


def _expand_env(key: str, value: str) -> str:
    m = _ENV_REF.match(value)
    if not m:
        return value
    if m.group(1) not in os.environ:
        raise ConfigError(f"{key}: environment variable {m.group(1)} is not set")
    return os.environ[m.group(1)]


@dataclass
class _Inflight:
    seq: int
    topic: str
    sent_monotonic: float


class Publisher:
    """Drains an outbox to the broker and keeps the car's retained status (see the module docstring).

    Example (the pipeline's side)::

        outbox = Outbox(data_dir / "outbox.db", max_bytes=cfg.outbox.max_bytes)
        pub = Publisher(BrokerSettings.from_config(cfg.mqtt, cfg.vehicle_id, config_dir), outbox.path,
                        status_topic(cfg.vehicle_id), offline_status.to_json())
        pub.start()
        outbox.put(messages, commit=False)   # same transaction as the dedup index's writes
        outbox.connection.commit()
        outbox.enforce_bounds()
        pub.wake()
        pub.publish_status(status.to_json())  # every status_interval_s
        pub.flush(timeout_s=10.0)             # at the end of a replay
        pub.stop()
    """

    def __init__(
        self, settings: BrokerSettings, outbox_path: str | Path, status_topic: str, offline_status_payload: bytes
    ):
        """Set up the client; nothing connects before `start`.

        Args:
            settings: the broker and the pacing limits.
            outbox_path: the SQLite outbox the pipeline writes (the sender opens its own connection).
            status_topic: retained status topic; also the Last Will's topic.
            offline_status_payload: retained Last Will payload (and what `stop` publishes).
        """
        self.settings = settings
        self.outbox_path = Path(outbox_path)
        self.status_topic = status_topic
        self._offline_payload = offline_status_payload
        self._events: queue.SimpleQueue[tuple[int, ReasonCode]] = queue.SimpleQueue()  # (mid, PUBACK reason)
        self._wake = threading.Event()
        self._state = threading.Condition()  # guards the counters and the flush generations below
        self._wake_gen = 0
        self._drained_gen = -1
        self._parked = 0
        self._counters = {"published": 0, "acked": 0, "refused": 0, "reconnects": 0, "dropped": 0}
        self._connected = False
        self._ever_connected = False
        self._last_connect_problem = ""
        self._last_status: bytes | None = None
        self._last_connect_exc: OSError | None = None
        self._status_mids: set[int] = set()
        self._stopping = threading.Event()  # no new publishes
        self._exit = threading.Event()  # sender thread leaves
        self._client_lock = threading.Lock()  # start/stop vs the sender's reconnect after an ack timeout
        self._sender: threading.Thread | None = None
        self._sender_error: BaseException | None = None
        self._dropped_base: int | None = None  # dropped_snapshots when this sender started
        self._max_packet_bytes = 0  # the broker's Maximum Packet Size from CONNACK (0: no limit announced)
        self._client = self._make_client()

    # -- public -------------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a CONNECT was accepted and the link has not dropped since."""
        return self._connected

    @property
    def counters(self) -> dict[str, int]:
        """published (PUBLISH sent), acked (success PUBACK), refused (error PUBACK, parked), reconnects,
        dropped (snapshot files that vanished before sending)."""
        with self._state:
            return dict(self._counters)

    def start(self) -> None:
        """Start connecting (in the background, with back-off) and sending; never blocks on the broker."""
        with self._client_lock:
            self._connect_async()
        self._sender = threading.Thread(target=self._sender_main, name="mqtt-sender", daemon=True)
        self._sender.start()

    def publish_status(self, payload: bytes) -> None:
        """Publish the retained status, QoS 1, best effort (not queued; re-sent on every reconnect)."""
        self._last_status = payload
        if self._connected:
            self._publish_status_now(payload)

    def wake(self) -> None:
        """New rows were committed to the outbox: look now instead of at the next poll."""
        with self._state:
            self._wake_gen += 1
        self._wake.set()

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything in the outbox was sent and acknowledged.

        Returns:
            True when the outbox was emptied; False on timeout, or when refused (parked) rows remain.
        """
        with self._state:
            self._wake_gen += 1
            target = self._wake_gen
        self._wake.set()
        with self._state:
            done = self._state.wait_for(lambda: self._drained_gen >= target, timeout=timeout_s)
            return done and self._parked == 0

    def stop(self, timeout_s: float = 5.0, offline_status_payload: bytes | None = None) -> None:
        """Stop sending, publish the offline status (retained), disconnect cleanly, join the threads.

        ``offline_status_payload`` (optional) replaces the one given at construction, so a clean stop can
        say when it happened. Messages still unacknowledged stay in the outbox and are sent after the next start.
        """
        if offline_status_payload is not None:
            self._offline_payload = offline_status_payload
        deadline = time.monotonic() + timeout_s
        self._stopping.set()
        self._wake.set()
        with self._client_lock:
            if self._connected:
                info = self._client.publish(self.status_topic, self._offline_payload, qos=1, retain=True)
                try:
                    info.wait_for_publish(max(0.1, deadline - time.monotonic()))
                except (RuntimeError, ValueError):
                    pass  # the link dropped: the broker publishes the same offline Will itself
            if self._connected:
                self._client.disconnect()
            self._client.loop_stop()
        self._exit.set()
        self._wake.set()
        if self._sender is not None:
            self._sender.join(max(0.1, deadline - time.monotonic()))
        self._connected = False

    # -- paho callbacks (paho's network thread: no SQLite here, just hand over) ---------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
                    properties: Any) -> None:
        if reason_code.is_failure:
            self._connected = False
            self._note_connect_problem(f"broker {self._where()} refused the connection: {reason_code}")
            return
        self._max_packet_bytes = int(getattr(properties, "MaximumPacketSize", 0) or 0)
        self._connected = True
        self._last_connect_problem = ""
        with self._state:
            if self._ever_connected:
                self._counters["reconnects"] += 1
        self._ever_connected = True
        log.info("connected to MQTT broker %s as %s", self._where(), self.settings.client_id)
        if self._last_status is not None:
            self._publish_status_now(self._last_status)  # replaces the Will's offline if it fired
        self._wake.set()

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._connected = False
        why = self._last_connect_exc
        detail = f": {why.__class__.__name__}: {why}" if why is not None else ""
        self._note_connect_problem(f"cannot connect to MQTT broker {self._where()}{detail} (retrying with back-off)")

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
                       properties: Any) -> None:
        was = self._connected
        self._connected = False
        if was and not self._stopping.is_set():
            log.warning("disconnected from MQTT broker %s: %s (reconnecting)", self._where(), reason_code)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode,
                    properties: Any) -> None:
        self._events.put((mid, reason_code))
        self._wake.set()

    # -- sender thread ------------------------------------------------------------------------------------

    def _sender_main(self) -> None:
        unpark = True
        while not self._exit.is_set():
            try:
                outbox = Outbox(self.outbox_path)
            except Exception as exc:
                self._sender_error = exc
                log.error("MQTT sender cannot open the outbox (retrying in %.0f s): %s", _SENDER_RETRY_S, exc)
                self._exit.wait(_SENDER_RETRY_S)
                continue
            try:
                if unpark:
                    n = outbox.unpark_all()
                    unpark = False
                    if n:
                        log.warning("outbox: %d message(s) the broker refused before are queued again", n)
                self._send_loop(outbox)
                return
            except Exception as exc:  # loud, and never fatal: the rows are safe in the outbox
                self._sender_error = exc
                log.exception("MQTT sender failed (restarting in %.0f s): %s", _SENDER_RETRY_S, exc)
            finally:
                outbox.close()
            self._exit.wait(_SENDER_RETRY_S)

    def _send_loop(self, outbox: Outbox) -> None:
        s = self.settings
        inflight: dict[int, _Inflight] = {}
        pending: deque[StoredMessage] = deque()
        attempted: list[int] = []  # seqs published since attempts were last written (batched: fewer fsyncs)
        attempts_written = time.monotonic()
        cursor = 0  # highest seq handed to paho by this process
        interval_s = 1.0 / s.max_messages_per_s
        next_send = time.monotonic()
        while not self._exit.is_set():
            self._wake.clear()
            self._settle(outbox, inflight)
            now = time.monotonic()
            if attempted and (len(attempted) >= 50 or now - attempts_written > 2.0):
                outbox.record_attempts(attempted)
                attempted, attempts_written = [], now
            if inflight and self._connected:
                oldest = min(f.sent_monotonic for f in inflight.values())
                if now - oldest > s.ack_timeout_s:
                    self._restart_connection(now - oldest)
                    for f in inflight.values():
                        f.sent_monotonic = time.monotonic()
                    continue
            if not pending and not self._stopping.is_set():
                with self._state:
                    gen = self._wake_gen
                pending.extend(outbox.lease(max(2 * s.max_inflight, 16), after_seq=cursor))
                self._count_dropped(outbox)
                if not pending:
                    if not inflight:  # everything acked (or parked): flush() may return
                        with self._state:
                            self._parked = outbox.stats().parked
                            self._drained_gen = max(self._drained_gen, gen)
                            self._state.notify_all()
                    self._wake.wait(_IDLE_POLL_S)
                    continue
            if self._stopping.is_set() or not self._connected or len(inflight) >= s.max_inflight:
                self._wake.wait(_IDLE_POLL_S if not inflight else 0.2)
                continue
            if now < next_send:
                self._wake.wait(next_send - now)
                continue
            msg = pending.popleft()
            problem = self._unsendable(msg)
            if problem:
                self._refuse(outbox, msg.seq, msg.topic, problem)
                continue
            try:
                info = self._client.publish(msg.topic, msg.payload, qos=1, retain=False)
            except ValueError as exc:  # a malformed topic: sending it again can never work
                self._refuse(outbox, msg.seq, msg.topic, f"rejected by the MQTT client: {exc}")
                continue
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                # NO_CONN is fine: paho keeps the message and sends it first after the reconnect.
                log.error("paho refused to queue %s: %s (retrying)", msg.topic, paho.error_string(info.rc))
                pending.appendleft(msg)
                self._wake.wait(1.0)
                continue
            inflight[info.mid] = _Inflight(msg.seq, msg.topic, time.monotonic())
            cursor = msg.seq
            attempted.append(msg.seq)
            next_send = max(next_send, now) + interval_s
            with self._state:
                self._counters["published"] += 1
        self._settle(outbox, inflight)
        if attempted:
            outbox.record_attempts(attempted)

    def _unsendable(self, msg: StoredMessage) -> str:
        """Why the broker would certainly refuse this message (a reason to park it), or ''."""
        limit = self._max_packet_bytes
        # PUBLISH size: fixed header (<= 5), topic (2 + len), packet id (2), properties length (1), payload.
        size = 5 + 2 + len(msg.topic.encode("utf-8")) + 2 + 1 + len(msg.payload)
        if limit and size > limit:
            return f"{size} bytes exceed the broker's maximum packet size ({limit} bytes)"
        return ""

    def _refuse(self, outbox: Outbox, seq: int, topic: str, reason: str) -> None:
        outbox.park(seq, reason)
        log.error("cannot publish to %s: %s; message kept in the outbox (parked) until the next start", topic, reason)
        with self._state:
            self._counters["refused"] += 1

    def _settle(self, outbox: Outbox, inflight: dict[int, _Inflight]) -> None:
        """Apply the PUBACKs paho reported: ack successes, park refusals."""
        acked: list[int] = []
        refused: list[tuple[_Inflight, ReasonCode]] = []
        while True:
            try:
                mid, rc = self._events.get_nowait()
            except queue.Empty:
                break
            entry = inflight.pop(mid, None)
            if entry is None:
                if mid in self._status_mids:
                    self._status_mids.discard(mid)
                    if rc.is_failure:
                        log.warning("broker refused the status on %s: %s", self.status_topic, rc)
                continue
            if rc.is_failure:
                refused.append((entry, rc))
            else:
                acked.append(entry.seq)
        if acked:
            outbox.ack_many(acked)
        for entry, rc in refused:
            outbox.park(entry.seq, f"{rc} (0x{rc.value:02x})")
            log.error(
                "broker refused the publish to %s: %s (0x%02x); message kept in the outbox (parked) until the "
                "next start", entry.topic, rc, rc.value,
            )
        if acked or refused:
            with self._state:
                self._counters["acked"] += len(acked)
                self._counters["refused"] += len(refused)

    def _count_dropped(self, outbox: Outbox) -> None:
        dropped = outbox.stats().dropped_snapshots
        if self._dropped_base is None:
            self._dropped_base = dropped
        with self._state:
            self._counters["dropped"] = dropped - self._dropped_base

    def _restart_connection(self, waited_s: float) -> None:
        log.warning("no PUBACK from %s for %.0f s: reconnecting to resend", self._where(), waited_s)
        with self._client_lock:
            if self._stopping.is_set():
                return
            # A normal DISCONNECT: the broker discards the Will (we are back at once); paho keeps the
            # unacknowledged messages and resends them, in order, on the new connection.
            self._client.disconnect()
            self._client.loop_stop()
            self._connected = False
            self._connect_async()

    # -- helpers ------------------------------------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        s = self.settings
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.enable_logger(_PAHO_LOG)
        if s.username:
            client.username_pw_set(s.username, s.password or None)
        if s.tls_enabled:
            client.tls_set(
                ca_certs=s.tls_ca_file or None,
                certfile=s.tls_cert_file or None,
                keyfile=s.tls_key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            if s.tls_insecure:
                client.tls_insecure_set(True)
        client.will_set(self.status_topic, self._offline_payload, qos=1, retain=True)
        client.reconnect_delay_set(_RECONNECT_MIN_S, _RECONNECT_MAX_S)
        # paho may hold more than we send at once: the sender enforces max_inflight itself.
        client.max_inflight_messages_set(max(s.max_inflight, 20))
        client.max_queued_messages_set(0)
        client.connect_timeout = s.connect_timeout_s
        client.on_connect = self._on_connect
        # paho's on_connect_fail does not say why (TLS verification, refused port...): keep the exception.
        paho_reconnect = client.reconnect

        def reconnect() -> MQTTErrorCode:
            try:
                return paho_reconnect()
            except OSError as exc:
                self._last_connect_exc = exc
                raise
            except UnicodeError as exc:  # a host name IDNA cannot encode: paho's thread would die, not retry
                err = OSError(f"host name {s.host!r} cannot be resolved ({exc})")
                self._last_connect_exc = err
                raise err from None

        client.reconnect = reconnect  # type: ignore[method-assign]
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _connect_async(self) -> None:
        s = self.settings
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        self._client.loop_start()

    def _publish_status_now(self, payload: bytes) -> None:
        info = self._client.publish(self.status_topic, payload, qos=1, retain=True)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._status_mids.add(info.mid)

    def _note_connect_problem(self, text: str) -> None:
        if text != self._last_connect_problem:  # once per distinct reason, not once per retry
            log.warning("%s", text)
            self._last_connect_problem = text

    def _where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}{' (TLS)' if self.settings.tls_enabled else ''}"
