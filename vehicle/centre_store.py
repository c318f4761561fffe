"""The command centre's database: events, photos, rejects, car status, and cases merged from many cars.

One `CentreStore` API over two backends: SQLite (default; WAL, so several centre processes can share the
file) and PostgreSQL (psycopg 3, when a DSN is given). Every write is idempotent: an event or photo is keyed
by its ``event_id`` (``INSERT ... ON CONFLICT DO NOTHING``), because MQTT QoS 1 delivers at least once.

A *case* is one real-world problem: events of the same category whose positions lie within the category's
radius of the case's centroid join it, whichever car sent them. The case assignment runs in one write
transaction that first takes a lock (SQLite ``BEGIN IMMEDIATE``; PostgreSQL an advisory lock per
category), so two centre instances sharing a database never open two cases for one object.
"""

from __future__ import annotations

import contextlib
import math
import re
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vehicle.categories import Taxonomy
from vehicle.events import Event, EventMode, Status

DEFAULT_RADIUS_M = 10.0
EARTH_RADIUS_M = 6_371_008.8
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_TABLES = """
CREATE TABLE IF NOT EXISTS cases (
    case_id {id_pk},
    category TEXT NOT NULL,
    lon {real} NOT NULL,
    lat {real} NOT NULL,
    sighting_count INTEGER NOT NULL,
    enforce_count INTEGER NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    opened_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cases_category_lat ON cases (category, lat);
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    vehicle_id TEXT NOT NULL,
    object_id TEXT NOT NULL,
    category TEXT NOT NULL,
    mode TEXT NOT NULL,
    rule TEXT,
    confidence {real} NOT NULL,
    lon {real} NOT NULL,
    lat {real} NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    topic TEXT NOT NULL,
    received_at TEXT NOT NULL,
    received_by TEXT NOT NULL,
    case_id BIGINT REFERENCES cases (case_id),
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_case_id ON events (case_id);
CREATE TABLE IF NOT EXISTS snapshots (
    event_id TEXT PRIMARY KEY,
    vehicle_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    jpeg {blob} NOT NULL,
    received_at TEXT NOT NULL,
    received_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    rejected_id {id_pk},
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    payload {blob} NOT NULL,
    received_at TEXT NOT NULL,
    received_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vehicle_status (
    vehicle_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    time TEXT NOT NULL,
    payload TEXT NOT NULL,
    received_at TEXT NOT NULL
);
"""


REJECTED_KEEP_BYTES = 65536


def centre_columns() -> dict[str, set[str]]:
    """Table -> column names of the centre's schema (to recognise a centre database without writing to it)."""
    out: dict[str, set[str]] = {}
    for table, body in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\);", _TABLES, re.S):
        out[table] = {line.split()[0] for line in body.strip().splitlines() if line.strip()
                      and not line.strip().upper().startswith(("PRIMARY", "UNIQUE", "FOREIGN", "CHECK"))}
    return out


class CentreStoreError(ValueError):
    """The database cannot be opened or is not usable; the message names it."""


@dataclass(frozen=True)
class AddResult:
    """What storing one event did."""

    stored: bool  # False: the event_id was already there (a redelivery)
    case_id: int | None
    new_case: bool = False
    stored_vehicle_id: str | None = None  # when not stored: the car whose event holds that event_id


@dataclass(frozen=True)
class Sighting:
    """One stored event as part of a case."""

    event_id: str
    vehicle_id: str
    object_id: str
    mode: str
    rule: str | None
    confidence: float
    lon: float
    lat: float
    first_seen: str
    last_seen: str
    has_snapshot: bool


@dataclass(frozen=True)
class Case:
    """One real-world problem and every sighting of it."""

    case_id: int
    category: str
    lon: float  # centroid of the sightings, WGS-84 degrees
    lat: float
    first_seen: str
    last_seen: str
    mode: str  # "enforce" if any sighting asks for action, else "warning"
    sightings: tuple[Sighting, ...]

    @property
    def vehicle_ids(self) -> list[str]:
        """Cars that reported this case, sorted."""
        return sorted({s.vehicle_id for s in self.sightings})


def haversine_m(lat1_deg: float, lon1_deg: float, lat2_deg: float, lon2_deg: float) -> float:
    """Great-circle distance in metres between two WGS-84 points given in degrees."""
    p1, p2 = math.radians(lat1_deg), math.radians(lat2_deg)
    dp, dl = p2 - p1, math.radians(lon2_deg - lon1_deg)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def is_postgres_dsn(db: str) -> bool:
    """True when ``db`` names a PostgreSQL database (URL or libpq keywords) rather than a SQLite file."""
    return db.startswith(("postgresql://", "postgres://")) or bool(re.search(r"\b(dbname|host)=", db))


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CentreStore:
    """Events, photos, rejects, status and cases in SQLite or PostgreSQL (see the module docstring).

    Thread-safe: one connection guarded by a lock (paho calls back on its network thread).
    """

    def __init__(
        self,
        db: str | Path,
        *,
        taxonomy: Taxonomy | None = None,
        merge_radius_m: float | None = None,
        pg_schema: str | None = None,
    ) -> None:
        """Open (and create if needed) the store.

        Args:
            db: a SQLite file path, or a PostgreSQL DSN (``postgresql://...`` or ``host=... dbname=...``).
            taxonomy: gives each category's merge radius (``radius_m``); unknown categories use 10 m.
            merge_radius_m: if set, one merge radius in metres for every category.
            pg_schema: PostgreSQL only: keep the tables in this schema (created if missing).
        """
        if merge_radius_m is not None and merge_radius_m <= 0:
            raise CentreStoreError(f"merge_radius_m must be > 0, got {merge_radius_m}")
        self._taxonomy = taxonomy
        self._merge_radius_m = merge_radius_m
        self._lock = threading.RLock()
        self.db = str(db)
        self.is_postgres = is_postgres_dsn(self.db)
        if self.is_postgres:
            self._open_postgres(pg_schema)
        else:
            if pg_schema:
                raise CentreStoreError("pg_schema is only for PostgreSQL databases")
            self._open_sqlite(Path(self.db))

    # --- opening -----------------------------------------------------------------------------------------

    def _open_sqlite(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so the write lock is taken up front.
            self._conn: Any = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout = 30000")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            ddl = _TABLES.format(id_pk="INTEGER PRIMARY KEY AUTOINCREMENT", real="REAL", blob="BLOB")
            with self._write():
                for stmt in _split_sql(ddl):
                    self._conn.execute(stmt)
        except (sqlite3.Error, OSError) as exc:
            raise CentreStoreError(f"{path}: cannot open the SQLite database: {exc}") from None

    def _open_postgres(self, pg_schema: str | None) -> None:
        try:
            import psycopg
        except ImportError:
            raise CentreStoreError("PostgreSQL needs psycopg 3: pip install 'patrol-vehicle[centre]'") from None
        if pg_schema is not None and not _SCHEMA_NAME.match(pg_schema):
            raise CentreStoreError(f"pg_schema {pg_schema!r}: must be a lower-case SQL identifier")
        self._pg_schema = pg_schema
        try:
            self._conn = psycopg.connect(self.db, autocommit=True)
            ddl = _TABLES.format(
                id_pk="BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", real="DOUBLE PRECISION", blob="BYTEA"
            )
            # Two instances starting together would race on CREATE ... IF NOT EXISTS: serialise them. And skip
            # the DDL once the tables exist: CREATE INDEX IF NOT EXISTS locks its table before checking, which
            # deadlocks against a running instance's inserts.
            with self._write("patrol-centre-ddl"):
                if pg_schema:
                    self._conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{pg_schema}"')
                    self._conn.execute(f'SET search_path TO "{pg_schema}"')
                missing = [t for t in ("cases", "events", "snapshots", "rejected", "vehicle_status")
                           if self._conn.execute("SELECT to_regclass(%s)", (t,)).fetchone()[0] is None]
                if missing:
                    for stmt in _split_sql(ddl):
                        self._conn.execute(stmt)
        except psycopg.Error as exc:
            raise CentreStoreError(f"PostgreSQL {self._redacted_dsn()}: {str(exc).strip().splitlines()[0]}") from None

    def _pg_connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(self.db, autocommit=True)
        if self._pg_schema:
            conn.execute(f'SET search_path TO "{self._pg_schema}"')
        return conn

    def _redacted_dsn(self) -> str:
        return re.sub(r"(password=|:)[^@\s]*@", r"\1***@", self.db)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> CentreStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- low-level helpers ---------------------------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.is_postgres else sql

    def _exec(self, sql: str, params: tuple = ()) -> Any:
        return self._conn.execute(self._sql(sql), params)

    @contextlib.contextmanager
    def _write(self, lock_key: str | None = None) -> Iterator[None]:
        """One write transaction; ``lock_key`` serialises writers that must not interleave (PostgreSQL)."""
        with self._lock:
            if self.is_postgres:
                if self._conn.broken:  # the server restarted or the network dropped: start afresh
                    self._conn = self._pg_connect()
                with self._conn.transaction():
                    if lock_key is not None:
                        self._conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock_key,))
                    yield
            else:
                # BEGIN IMMEDIATE takes SQLite's single write lock now, not at the first write, so the
                # read-then-write of the case assignment cannot interleave with another process.
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")

    def radius_m(self, category: str) -> float:
        """Merge radius in metres for ``category``."""
        if self._merge_radius_m is not None:
            return self._merge_radius_m
        cat = self._taxonomy.get(category) if self._taxonomy else None
        return cat.radius_m if cat else DEFAULT_RADIUS_M

    # --- writes ------------------------------------------------------------------------------------------

    def add_event(self, event: Event, *, topic: str, received_by: str = "", raw: bytes | None = None) -> AddResult:
        """Store a validated event once and attach it to a case (an existing one nearby, or a new one).

        ``raw`` is the payload as received: stored as it came, so properties a newer car added (which this
        version ignores) are kept.

        Returns:
            ``AddResult(stored=False, ...)`` when the event_id was already stored (nothing changes).
        """
        p = event.properties
        lon, lat = event.geometry.coordinates
        with self._write(f"patrol-centre-case:{p.category}"):
            cur = self._exec(
                "INSERT INTO events (event_id, vehicle_id, object_id, category, mode, rule, confidence, lon, lat,"
                " first_seen, last_seen, topic, received_at, received_by, payload)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                (p.event_id, p.vehicle_id, p.object_id, p.category, p.mode.value,
                 p.rule.rule if p.rule else None, p.confidence, lon, lat, p.first_seen, p.last_seen,
                 topic, _utc_now(), received_by, raw.decode("utf-8") if raw is not None else event.model_dump_json()),
            )  # fmt: skip
            if cur.rowcount == 0:
                row = self._exec("SELECT case_id, vehicle_id FROM events WHERE event_id = ?", (p.event_id,)).fetchone()
                return AddResult(stored=False, case_id=row[0] if row else None,
                                 stored_vehicle_id=row[1] if row else None)
            case_id, new_case = self._assign_case(p.category, lon, lat, p.first_seen, p.last_seen, p.mode)
            self._exec("UPDATE events SET case_id = ? WHERE event_id = ?", (case_id, p.event_id))
        return AddResult(stored=True, case_id=case_id, new_case=new_case)

    def _assign_case(
        self, category: str, lon: float, lat: float, first_seen: str, last_seen: str, mode: EventMode
    ) -> tuple[int, bool]:
        """Nearest case of ``category`` within its radius, updated with this sighting, or a new case."""
        radius_m = self.radius_m(category)
        dlat = math.degrees(radius_m / EARTH_RADIUS_M)
        dlon = dlat / max(math.cos(math.radians(lat)), 1e-6)
        rows = self._exec(
            "SELECT case_id, lon, lat, sighting_count, enforce_count, first_seen, last_seen FROM cases"
            " WHERE category = ? AND lat BETWEEN ? AND ? AND lon BETWEEN ? AND ?",
            (category, lat - dlat, lat + dlat, lon - dlon, lon + dlon),
        ).fetchall()
        best = None
        for row in rows:
            d = haversine_m(lat, lon, row[2], row[1])
            if d <= radius_m and (best is None or d < best[0]):
                best = (d, row)
        enforce = 1 if mode == EventMode.enforce else 0
        if best is None:
            cur = self._exec(
                "INSERT INTO cases (category, lon, lat, sighting_count, enforce_count, first_seen, last_seen,"
                " opened_at) VALUES (?, ?, ?, 1, ?, ?, ?, ?) RETURNING case_id",
                (category, lon, lat, enforce, first_seen, last_seen, _utc_now()),
            )
            return int(cur.fetchone()[0]), True
        case_id, c_lon, c_lat, n, n_enforce, c_first, c_last = best[1]
        n_new = n + 1
        # Running mean: the centroid of all sightings (ISO-8601 UTC strings compare in time order).
        self._exec(
            "UPDATE cases SET lon = ?, lat = ?, sighting_count = ?, enforce_count = ?, first_seen = ?,"
            " last_seen = ? WHERE case_id = ?",
            (c_lon + (lon - c_lon) / n_new, c_lat + (lat - c_lat) / n_new, n_new, n_enforce + enforce,
             min(c_first, first_seen), max(c_last, last_seen), case_id),
        )  # fmt: skip
        return int(case_id), False

    def add_snapshot(self, event_id: str, vehicle_id: str, jpeg: bytes, *, topic: str, received_by: str = "") -> bool:
        """Store an event's evidence photo once; True if it was new. It may arrive before its event."""
        with self._write():
            cur = self._exec(
                "INSERT INTO snapshots (event_id, vehicle_id, topic, jpeg, received_at, received_by)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                (event_id, vehicle_id, topic, bytes(jpeg), _utc_now(), received_by),
            )
            return cur.rowcount > 0

    def owner_of(self, event_id: str) -> str | None:
        """The car whose event, or else whose photo, holds ``event_id`` (None: neither is stored)."""
        row = self._exec("SELECT vehicle_id FROM events WHERE event_id = ?", (event_id,)).fetchone()
        return row[0] if row else self.snapshot_owner(event_id)

    def snapshot_owner(self, event_id: str) -> str | None:
        """The car whose photo is stored for ``event_id`` (None: none is)."""
        row = self._exec("SELECT vehicle_id FROM snapshots WHERE event_id = ?", (event_id,)).fetchone()
        return row[0] if row else None

    def set_snapshot_aside(self, event_id: str, reason: str) -> bool:
        """Move an event's stored photo to the rejected messages, whole (it came from another car than the
        event's); True if there was one."""
        with self._write():
            row = self._exec("SELECT topic, jpeg, received_by FROM snapshots WHERE event_id = ?",
                             (event_id,)).fetchone()
            if row is None:
                return False
            self._exec("INSERT INTO rejected (topic, reason, payload, received_at, received_by)"
                       " VALUES (?, ?, ?, ?, ?)", (row[0], reason, bytes(row[1]), _utc_now(), row[2]))
            self._exec("DELETE FROM snapshots WHERE event_id = ?", (event_id,))
            return True

    def add_rejected(self, topic: str, payload: bytes, reason: str, *, received_by: str = "",
                     whole: bool = False) -> None:
        """Keep a message that failed validation, with why, for an operator to inspect (the first 64 KiB: a
        flood of junk must not fill the database; ``whole`` keeps all of a well-formed one, such as a photo
        that conflicts with another car's)."""
        if len(payload) > REJECTED_KEEP_BYTES and not whole:
            reason = f"{reason} (payload {len(payload)} bytes, first {REJECTED_KEEP_BYTES} kept)"
            payload = payload[:REJECTED_KEEP_BYTES]
        with self._write():
            self._exec(
                "INSERT INTO rejected (topic, reason, payload, received_at, received_by) VALUES (?, ?, ?, ?, ?)",
                (topic, reason, bytes(payload), _utc_now(), received_by),
            )

    def upsert_status(self, status: Status) -> None:
        """Keep each car's latest status: by its own ``time``, except that an offline status always replaces an
        online one (a Last Will carries the time of the connection it guards, older than the statuses sent on
        it; the broker publishes it after them)."""
        with self._write():
            self._exec(
                "INSERT INTO vehicle_status (vehicle_id, state, time, payload, received_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (vehicle_id) DO UPDATE SET state = excluded.state, time = excluded.time,"
                " payload = excluded.payload, received_at = excluded.received_at"
                " WHERE excluded.time >= vehicle_status.time"
                " OR (excluded.state = 'offline' AND vehicle_status.state = 'online')",
                (status.vehicle_id, status.state.value, status.time, status.to_json().decode(), _utc_now()),
            )

    # --- reads -------------------------------------------------------------------------------------------

    def event_count(self) -> int:
        """Number of distinct events stored."""
        with self._lock:
            return int(self._exec("SELECT COUNT(*) FROM events").fetchone()[0])

    def event_ids(self) -> list[str]:
        """All stored event ids, sorted."""
        with self._lock:
            return [r[0] for r in self._exec("SELECT event_id FROM events ORDER BY event_id").fetchall()]

    def received_by_counts(self) -> dict[str, int]:
        """Stored events per receiving centre instance (its MQTT client id)."""
        with self._lock:
            rows = self._exec("SELECT received_by, COUNT(*) FROM events GROUP BY received_by").fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def rejected(self) -> list[tuple[str, str, bytes]]:
        """Rejected messages as (topic, reason, payload), oldest first."""
        with self._lock:
            rows = self._exec("SELECT topic, reason, payload FROM rejected ORDER BY rejected_id").fetchall()
        return [(r[0], r[1], bytes(r[2])) for r in rows]

    def snapshot(self, event_id: str) -> bytes | None:
        """The stored JPEG of an event, or None."""
        with self._lock:
            row = self._exec("SELECT jpeg FROM snapshots WHERE event_id = ?", (event_id,)).fetchone()
        return bytes(row[0]) if row else None

    def snapshot_count(self) -> int:
        """Number of distinct photos stored."""
        with self._lock:
            return int(self._exec("SELECT COUNT(*) FROM snapshots").fetchone()[0])

    def statuses(self) -> dict[str, str]:
        """Latest state per car: vehicle_id -> "online" / "offline"."""
        with self._lock:
            rows = self._exec("SELECT vehicle_id, state FROM vehicle_status").fetchall()
        return {r[0]: r[1] for r in rows}

    def cases(self) -> list[Case]:
        """Every case with its sightings, by case id."""
        with self._lock:
            case_rows = self._exec(
                "SELECT case_id, category, lon, lat, first_seen, last_seen, enforce_count FROM cases ORDER BY case_id"
            ).fetchall()
            ev_rows = self._exec(
                "SELECT e.case_id, e.event_id, e.vehicle_id, e.object_id, e.mode, e.rule, e.confidence, e.lon, e.lat,"
                " e.first_seen, e.last_seen, s.event_id IS NOT NULL FROM events e"
                " LEFT JOIN snapshots s ON s.event_id = e.event_id"
                " WHERE e.case_id IS NOT NULL ORDER BY e.case_id, e.first_seen, e.event_id"
            ).fetchall()
        by_case: dict[int, list[Sighting]] = {}
        for r in ev_rows:
            by_case.setdefault(int(r[0]), []).append(Sighting(*r[1:11], has_snapshot=bool(r[11])))
        return [
            Case(case_id=int(r[0]), category=r[1], lon=float(r[2]), lat=float(r[3]), first_seen=r[4],
                 last_seen=r[5], mode="enforce" if r[6] > 0 else "warning",
                 sightings=tuple(by_case.get(int(r[0]), ())))
            for r in case_rows
        ]  # fmt: skip


def _split_sql(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
