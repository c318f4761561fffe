"""Reference command-centre subscriber: MQTT 5 in, validated events, photos and cases in a database.

Several instances split a fleet's load through shared subscriptions (``$share/<group>/patrol/v1/+/events``
and ``.../snapshots/+``): the broker hands each message to one member of the group. Each instance keeps a
persistent session (``clean_start=False`` with a session expiry), so what is published while it restarts is
queued by the broker, and it acknowledges a message only after the database write committed: a crash
between the two means a redelivery, which the store absorbs (idempotent by ``event_id``).
Status messages are read by every instance (plain subscription; the write is an idempotent upsert).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import signal
import socket
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import ValidationError

from vehicle.arguments import same_file
from vehicle.categories import DEFAULT_CATEGORIES_FILE, Taxonomy, TaxonomyError
from vehicle.centre_store import Case, CentreStore, CentreStoreError, centre_columns, is_postgres_dsn
from vehicle.events import TOPIC_ROOT, Event, Status

log = logging.getLogger("vehicle.centre")

DEFAULT_DB = "var/centre/centre.sqlite3"
JPEG_MAGIC = b"\xff\xd8\xff"
_STORE_RETRIES_S = (0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class CentreSettings:
    """How one centre instance connects to the broker."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""  # stable per instance, so its persistent session survives restarts
    share_group: str = "centre"
    keepalive_s: int = 30
    session_expiry_s: int = 86_400
    username: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        if not self.client_id:
            object.__setattr__(self, "client_id", f"centre-{socket.gethostname()}")
        if not self.share_group or any(c in self.share_group for c in "/+#"):
            raise ValueError(f"share_group {self.share_group!r}: must be non-empty without '/', '+', '#'")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port}: must be in 1..65535")


def subscriptions(share_group: str) -> list[str]:
    """Topic filters one centre instance subscribes to (all QoS 1)."""
    return [
        f"$share/{share_group}/{TOPIC_ROOT}/+/events",
        f"$share/{share_group}/{TOPIC_ROOT}/+/snapshots/+",
        f"{TOPIC_ROOT}/+/status",
    ]


def _validation_reason(exc: ValidationError) -> str:
    """One line: the first offending field and why, plus how many more."""
    errs = exc.errors()
    first = errs[0]
    loc = ".".join(str(x) for x in first.get("loc", ())) or "(payload)"
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{loc}: {first.get('msg', 'invalid')}{more}"


class Centre:
    """One centre instance: dispatches MQTT messages to a `CentreStore`."""

    def __init__(self, settings: CentreSettings, store: CentreStore) -> None:
        self.settings = settings
        self.store = store
        self.counts: dict[str, int] = {}
        self.ready = threading.Event()  # set once the broker granted every subscription
        self._connect_failed_logged = False
        self._client: mqtt.Client | None = None

    # --- message handling (no MQTT needed: tests call it directly) ------------------------------------

    def handle(self, topic: str, payload: bytes) -> str:
        """Validate and store one message; return what happened.

        Returns:
            One of ``"event"``, ``"duplicate"``, ``"snapshot"``, ``"duplicate_snapshot"``, ``"status"``,
            ``"rejected"``. Storage errors (database down) propagate; bad input never does.
        """
        outcome = self._dispatch(topic, payload)
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        return outcome

    def _dispatch(self, topic: str, payload: bytes) -> str:
        me = self.settings.client_id
        parts = topic.split("/")
        root = TOPIC_ROOT.split("/")
        if parts[: len(root)] != root or len(parts) < len(root) + 2:
            return self._reject(topic, payload, f"unexpected topic {topic!r}")
        vehicle_id, kind, rest = parts[len(root)], parts[len(root) + 1], parts[len(root) + 2 :]
        if kind in ("events", "status") and (b"\\u0000" in payload or b"\x00" in payload):
            # PostgreSQL text cannot hold NUL: left to the database it would fail on every redelivery
            return self._reject(topic, payload, "contains a NUL character")
        if kind == "events" and not rest:
            try:
                event = Event.from_json(payload)
            except ValidationError as exc:
                return self._reject(topic, payload, _validation_reason(exc))
            if event.properties.vehicle_id != vehicle_id:
                return self._reject(
                    topic, payload, f"properties.vehicle_id {event.properties.vehicle_id!r} does not match the topic"
                )
            result = self.store.add_event(event, topic=topic, received_by=me, raw=bytes(payload))
            if not result.stored:
                if result.stored_vehicle_id not in (None, vehicle_id):
                    # event ids are predictable: one car must not be able to shadow another's event
                    return self._reject(topic, payload, f"event_id {event.properties.event_id} is already stored "
                                                        f"from vehicle {result.stored_vehicle_id!r}")
                log.debug("duplicate event %s on %s", event.properties.event_id, topic)
                return "duplicate"
            if self.store.snapshot_owner(event.properties.event_id) not in (None, vehicle_id):  # sent first
                self.store.set_snapshot_aside(event.properties.event_id, f"snapshot for vehicle {vehicle_id!r}'s "
                                              "event came from another vehicle")
                log.warning("snapshot for event %s came from another vehicle: set aside",
                            event.properties.event_id)
            log.info(
                "event %s %s from %s -> case %s%s", event.properties.event_id, event.properties.category,
                vehicle_id, result.case_id, " (new)" if result.new_case else "",
            )  # fmt: skip
            return "event"
        if kind == "snapshots" and len(rest) == 1 and rest[0]:
            if not bytes(payload[:3]) == JPEG_MAGIC:
                return self._reject(topic, payload, "snapshot is not a JPEG (no FF D8 FF start)")
            owner = self.store.owner_of(rest[0])
            if owner not in (None, vehicle_id):
                log.warning("rejected message on %s: event %s belongs to vehicle %r", topic, rest[0], owner)
                self.store.add_rejected(topic, payload, f"event {rest[0]} belongs to vehicle {owner!r}",
                                        received_by=me, whole=True)
                return "rejected"
            new = self.store.add_snapshot(rest[0], vehicle_id, payload, topic=topic, received_by=me)
            return "snapshot" if new else "duplicate_snapshot"
        if kind == "status" and not rest:
            try:
                status = Status.model_validate_json(payload, strict=True)
            except ValidationError as exc:
                return self._reject(topic, payload, _validation_reason(exc))
            if status.vehicle_id != vehicle_id:
                return self._reject(topic, payload, f"vehicle_id {status.vehicle_id!r} does not match the topic")
            self.store.upsert_status(status)
            log.info("status %s: %s", vehicle_id, status.state.value)
            return "status"
        return self._reject(topic, payload, f"unexpected topic {topic!r}")

    def _reject(self, topic: str, payload: bytes, reason: str) -> str:
        log.warning("rejected message on %s: %s", topic, reason)
        self.store.add_rejected(topic, payload, reason, received_by=self.settings.client_id)
        return "rejected"

    # --- MQTT ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect (in the background, retrying) and start the network thread."""
        s = self.settings
        # manual_ack: the PUBACK goes out only after the database write, so nothing acked is ever lost.
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=s.client_id,
            protocol=mqtt.MQTTv5, manual_ack=True,
        )  # fmt: skip
        if s.username:
            client.username_pw_set(s.username, s.password)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.reconnect_delay_set(1, 30)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = s.session_expiry_s
        client.connect_async(s.host, s.port, keepalive=s.keepalive_s, clean_start=False, properties=props)
        self._client = client
        client.loop_start()

    def stop(self) -> None:
        """Disconnect (the broker keeps the session for ``session_expiry_s``) and stop the network thread."""
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        self.ready.clear()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%s refused the connection: %s", self.settings.host, self.settings.port, reason_code)
            return
        self._connect_failed_logged = False
        log.info(
            "connected to %s:%s as %s (session present: %s)", self.settings.host, self.settings.port,
            self.settings.client_id, flags.session_present,
        )  # fmt: skip
        # Subscribe every time: cheap, and a broker that lost the session gets the filters back.
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in subscriptions(self.settings.share_group)])

    def _on_connect_fail(self, client, userdata) -> None:
        # Logged once per outage, not on every retry: the centre keeps trying in the background.
        if not self._connect_failed_logged:
            self._connect_failed_logged = True
            log.warning("cannot connect to the broker at %s:%s; retrying", self.settings.host, self.settings.port)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("broker refused subscriptions: %s", ", ".join(failed))
            return
        log.info("subscribed: %s", " ".join(subscriptions(self.settings.share_group)))
        self.ready.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.ready.clear()
        if reason_code.is_failure:
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, msg) -> None:
        payload = bytes(msg.payload)
        for attempt, delay_s in enumerate((*_STORE_RETRIES_S, None)):
            try:
                self.handle(msg.topic, payload)
                break
            except Exception as exc:  # the database, not the message: keep it unacknowledged
                if delay_s is None:
                    log.error(
                        "could not store message on %s (%s); left unacknowledged, the broker redelivers it "
                        "after a reconnect", msg.topic, exc,
                    )  # fmt: skip
                    return
                log.warning("storing message on %s failed (try %d: %s); retrying", msg.topic, attempt + 1, exc)
                time.sleep(delay_s)
        client.ack(msg.mid, msg.qos)


# --- export ---------------------------------------------------------------------------------------------------


CSV_COLUMNS = (
    "case_id", "category", "mode", "lon", "lat", "sighting_count", "vehicle_ids",
    "first_seen", "last_seen", "max_confidence", "event_ids",
)  # fmt: skip


def cases_to_geojson(cases: list[Case]) -> dict:
    """GeoJSON FeatureCollection of cases; each feature keeps every sighting in ``properties.sightings``."""
    features = []
    for c in cases:
        features.append(
            {
                "type": "Feature",
                "id": f"case-{c.case_id}",
                "geometry": {"type": "Point", "coordinates": [round(c.lon, 7), round(c.lat, 7)]},
                "properties": {
                    "case_id": c.case_id,
                    "category": c.category,
                    "mode": c.mode,
                    "sighting_count": len(c.sightings),
                    "vehicle_ids": c.vehicle_ids,
                    "first_seen": c.first_seen,
                    "last_seen": c.last_seen,
                    "max_confidence": max((s.confidence for s in c.sightings), default=None),
                    "sightings": [
                        {
                            "event_id": s.event_id,
                            "vehicle_id": s.vehicle_id,
                            "object_id": s.object_id,
                            "mode": s.mode,
                            "rule": s.rule,
                            "confidence": s.confidence,
                            "coordinates": [s.lon, s.lat],
                            "first_seen": s.first_seen,
                            "last_seen": s.last_seen,
                            "has_snapshot": s.has_snapshot,
                        }
                        for s in c.sightings
                    ],
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def cases_to_csv(cases: list[Case]) -> str:
    """CSV text of cases, one row per case; list columns are ``;``-separated."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for c in cases:
        w.writerow([
            c.case_id, c.category, c.mode, f"{c.lon:.7f}", f"{c.lat:.7f}", len(c.sightings),
            ";".join(c.vehicle_ids), c.first_seen, c.last_seen,
            max((s.confidence for s in c.sightings), default=""), ";".join(s.event_id for s in c.sightings),
        ])  # fmt: skip
    return buf.getvalue()


def dump_geojson(collection: dict) -> str:
    """Stable text form of an exported FeatureCollection."""
    return json.dumps(collection, indent=2, ensure_ascii=False) + "\n"


# --- command line -------------------------------------------------------------------------------------------


def _add_db_args(p: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    default = argparse.SUPPRESS if suppress else None
    p.add_argument(
        "--db", default=argparse.SUPPRESS if suppress else DEFAULT_DB,
        help=f"SQLite file, or PostgreSQL DSN (postgresql://... or 'host=... dbname=...'); default {DEFAULT_DB}",
    )  # fmt: skip
    p.add_argument("--db-schema", default=default, help="PostgreSQL: schema for the tables (created if missing)")


def _bounded(kind: type, lo: float, hi: float):
    """An argparse type: a finite ``kind`` in ``lo..hi`` (argparse turns its ValueError into one usage line)."""

    def parse(text: str):
        value = kind(text)
        if not lo <= value <= hi:  # also refuses nan
            raise ValueError(text)
        return value

    parse.__name__ = f"{kind.__name__} in {lo:g}..{hi:g}"
    return parse


def add_centre_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``centre`` (run the subscriber) and ``centre export`` (write cases) on ``subparsers``."""
    p = subparsers.add_parser(
        "centre", help="reference command-centre subscriber: events from MQTT into a database, merged into cases",
        description="Subscribe to the fleet's events (MQTT 5 shared subscription), store them and their photos "
        "idempotently, merge sightings into cases. Run several with distinct --client-id to split the load.",
    )  # fmt: skip
    _add_db_args(p)
    p.add_argument("--host", default="127.0.0.1", help="MQTT broker host")
    p.add_argument("--port", type=int, default=1883, help="MQTT broker port")
    p.add_argument(
        "--client-id", default="", help="stable, unique per instance (default centre-<hostname>): its persistent "
        "session keeps what arrives while it is down",
    )  # fmt: skip
    p.add_argument("--group", default="centre", help="shared-subscription group; instances in one group split the load")
    p.add_argument("--session-expiry-s", type=_bounded(int, 0, 2**32 - 1), default=86_400,
                   help="how long the broker keeps the session")
    p.add_argument("--keepalive-s", type=_bounded(int, 5, 65535), default=30)
    p.add_argument("--username", default=None)
    p.add_argument("--password", default=None)
    p.add_argument("--categories-file", default=str(DEFAULT_CATEGORIES_FILE), help="per-category merge radius_m")
    p.add_argument("--merge-radius-m", type=_bounded(float, 0.1, 10_000), default=None,
                   help="one merge radius for every category")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="centre_command", metavar="{export}")
    e = sub.add_parser("export", help="write all cases as GeoJSON and/or CSV, then exit")
    _add_db_args(e, suppress=True)
    e.add_argument("--geojson", default=None, help="GeoJSON FeatureCollection output file ('-': stdout)")
    e.add_argument("--csv", default=None, help="CSV output file ('-': stdout)")
    p.set_defaults(func=run_centre)
    return p


def _open_store(args: argparse.Namespace, taxonomy: Taxonomy | None = None) -> CentreStore:
    return CentreStore(
        args.db, taxonomy=taxonomy, merge_radius_m=getattr(args, "merge_radius_m", None),
        pg_schema=args.db_schema or None,
    )  # fmt: skip


def _is_centre_sqlite(path: Path) -> bool:
    """Whether ``path`` is a SQLite file holding every table and column of the centre's schema (looked at
    read-only: an export must never change another program's database)."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)  # as_uri escapes '?' and '#'
        try:
            for table, columns in centre_columns().items():
                have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                if not columns <= have:
                    return False
            return True
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False


def _refused_outputs(db: str, *outputs: str | None) -> str | None:
    """Why these export outputs must not be written, or None: an export never overwrites the database it reads
    (nor any other SQLite file), and two outputs are never one file."""
    files = [Path(o) for o in outputs if o and o != "-"]
    db_path = Path(db) if db and not is_postgres_dsn(db) else None
    for i, f in enumerate(files):
        for other in files[:i]:
            if same_file(f, other):
                return f"{f}: --geojson and --csv name the same file"
        if db_path is not None and same_file(f, db_path):
            return f"{f}: is the database being exported (--db); choose another output file"
        if db_path is not None and any(f.resolve() == Path(f"{db_path.resolve()}{suffix}")
                                       for suffix in ("-wal", "-shm", "-journal")):
            return f"{f}: is a file of the database being exported (--db); choose another output file"
        if f.is_file():
            with open(f, "rb") as fh:
                if fh.read(16) == b"SQLite format 3\x00":
                    return f"{f}: is an SQLite database; an export will not overwrite it"
    return None


def _write_out(dest: str, text: str) -> None:
    if dest == "-":
        sys.stdout.write(text)
    else:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_text(text, encoding="utf-8")


def run_centre(args: argparse.Namespace) -> int:
    """Run ``patrol centre`` (until SIGINT/SIGTERM) or ``patrol centre export``; return the exit code."""
    level = getattr(args, "log_level", "INFO")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)  # `patrol` itself has set up logging by now: --log-level must still win
    if getattr(args, "centre_command", None) == "export":
        db = str(getattr(args, "db", "") or "")
        # a database that is missing or unreadable, or a file that cannot be written, is bad input: exit 1
        if db and not is_postgres_dsn(db) and not Path(db).is_file():
            print(f"patrol centre export: {db}: no such database", file=sys.stderr)
            return 1
        if db and not is_postgres_dsn(db) and not _is_centre_sqlite(Path(db)):  # export never writes to it
            print(f"patrol centre export: {db}: not a patrol centre database (its tables differ)", file=sys.stderr)
            return 1
        refused = _refused_outputs(db, args.geojson, args.csv)
        if refused:
            print(f"patrol centre export: {refused}", file=sys.stderr)
            return 1
        try:
            with _open_store(args) as store:
                cases = store.cases()
        except CentreStoreError as exc:
            print(f"patrol centre export: {exc}", file=sys.stderr)
            return 1
        if not args.geojson and not args.csv:
            args.geojson = "-"
        try:
            if args.geojson:
                _write_out(args.geojson, dump_geojson(cases_to_geojson(cases)))
            if args.csv:
                _write_out(args.csv, cases_to_csv(cases))
        except OSError as exc:
            print(f"patrol centre export: {exc.filename}: cannot write: {exc.strerror or exc}", file=sys.stderr)
            return 1
        log.info("exported %d cases", len(cases))
        return 0
    try:
        taxonomy = Taxonomy.load(args.categories_file)
        settings = CentreSettings(
            host=args.host, port=args.port, client_id=args.client_id, share_group=args.group,
            keepalive_s=args.keepalive_s, session_expiry_s=args.session_expiry_s,
            username=args.username, password=args.password,
        )  # fmt: skip
        store = _open_store(args, taxonomy)
    except (TaxonomyError, CentreStoreError, ValueError) as exc:
        print(f"patrol centre: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    centre = Centre(settings, store)
    centre.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        centre.stop()
        store.close()
        log.info("stopped; handled %s", json.dumps(centre.counts, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m vehicle.centre ...``: the same as ``patrol centre ...``."""
    parser = argparse.ArgumentParser(prog="patrol")
    add_centre_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["centre", *(argv if argv is not None else sys.argv[1:])])
    return run_centre(args)


if __name__ == "__main__":
    sys.exit(main())
