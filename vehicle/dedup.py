"""Deduplication: repeat sightings of one problem become one object, and an object one event.

Sightings of a category within that category's ``radius_m`` are one object. An object is published once it is
confirmed (seen in ``min_frames`` frames of one pass with a median score of at least ``min_median_score``), so
a one-frame flicker never reaches the centre. Later sightings update the object and publish nothing until
``suppress_s`` has passed since its last publication. A published object is also re-acquired from further away
(``reacquire_factor`` x radius) when nothing closer matches: a later pass sees it through a different GPS error.

The index lives in SQLite (it survives restarts) and shares its connection with the outbox, so that "object
published" and "event queued" commit in one transaction: a crash can lose neither without the other. Lookups
go through a uniform grid (cell = the re-acquisition gate) with an index on ``(category, cell)``: the cost of
one lookup is a few B-tree probes, whatever the number of stored objects.
"""

from __future__ import annotations

import json
import math
import sqlite3
import statistics
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

M_PER_DEG_LAT = 110_574.0
M_PER_DEG_LON_EQUATOR = 111_320.0
_CELL_BIAS = 1 << 29
MAX_SCORES_KEPT = 64
_OBJECT_ID_NAMESPACE = uuid.UUID("1b0f5c52-2f4e-4a8e-9d47-8c3a0e3f6a21")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dedup_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dedup_objects (
    object_id TEXT PRIMARY KEY,
    category TEXT NOT NULL,
    cell INTEGER NOT NULL,
    lat REAL NOT NULL,
    lon REAL NOT NULL,
    weight REAL NOT NULL,
    ground_ok INTEGER NOT NULL,
    observations INTEGER NOT NULL,
    pass_scores TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    last_frame INTEGER NOT NULL,
    published_at REAL,
    publications INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS dedup_objects_cell ON dedup_objects (category, cell);
CREATE INDEX IF NOT EXISTS dedup_objects_candidates ON dedup_objects (publications, last_seen);
"""


@dataclass(frozen=True)
class Sighting:
    """One detection of a category, placed on the map."""

    category: str
    lat_deg: float
    lon_deg: float
    ground_ok: bool  # False: the position is the car's, the box could not be cast onto the ground
    range_m: float | None
    score: float
    time_utc: float
    frame_index: int
    box_xyxy: tuple[float, float, float, float]


@dataclass(frozen=True)
class TrackedObject:
    """The index's view of one real-world problem."""

    object_id: str
    category: str
    lat_deg: float
    lon_deg: float
    ground_ok: bool
    observations: int
    median_score: float
    first_seen_utc: float
    last_seen_utc: float
    publications: int


@dataclass(frozen=True)
class Confirmation:
    """The index decided an object must be published (for the ``publication``-th time)."""

    obj: TrackedObject
    sighting: Sighting  # the sighting, in the current frame, that completed the confirmation
    publication: int


@dataclass(frozen=True)
class CategoryPolicy:
    """Deduplication settings of one category."""

    radius_m: float
    min_frames: int
    min_median_score: float


@dataclass(frozen=True)
class DedupPolicy:
    """Settings for all categories."""

    categories: Mapping[str, CategoryPolicy]
    suppress_s: float = 86400.0
    candidate_ttl_s: float = 120.0
    reacquire_factor: float = 2.0
    default: CategoryPolicy = field(default_factory=lambda: CategoryPolicy(5.0, 3, 0.4))

    def __post_init__(self) -> None:
        for name, p in self.categories.items():
            if p.radius_m <= 0:
                raise ValueError(f"dedup: radius_m of {name!r} must be > 0, got {p.radius_m}")
            if p.min_frames < 1:
                raise ValueError(f"dedup: min_frames of {name!r} must be >= 1, got {p.min_frames}")
        if self.suppress_s < 0:
            raise ValueError(f"dedup: suppress_s must be >= 0, got {self.suppress_s}")
        if self.candidate_ttl_s <= 0:
            raise ValueError(f"dedup: candidate_ttl_s must be > 0, got {self.candidate_ttl_s}")
        if self.reacquire_factor < 1:
            raise ValueError(f"dedup: reacquire_factor must be >= 1, got {self.reacquire_factor}")

    def for_category(self, name: str) -> CategoryPolicy:
        """The policy of ``name`` (the default for a category the taxonomy does not list)."""
        return self.categories.get(name, self.default)


def object_id_for(first: Sighting) -> str:
    """Deterministic object id from an object's first sighting (same drive, same ids; crash-safe)."""
    key = f"{first.category}/{first.time_utc:.6f}/{first.frame_index}/{first.lat_deg:.7f}/{first.lon_deg:.7f}"
    return uuid.uuid5(_OBJECT_ID_NAMESPACE, key).hex


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine; exact enough at dedup radii)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(min(1.0, math.sqrt(a)))


class DedupIndex:
    """Persistent spatial index of known objects. ``update(sightings, now)`` returns what to publish.

    Not thread-safe: one thread (the pipeline's post-processing thread) owns it. It never commits: the
    caller commits the shared transaction after queuing the events (see `vehicle.outbox`).
    """

    def __init__(self, conn: sqlite3.Connection, policy: DedupPolicy):
        self.conn = conn
        self.policy = policy
        conn.executescript(_SCHEMA)
        row = conn.execute("SELECT value FROM dedup_meta WHERE key = 'lat_ref'").fetchone()
        self._lat_ref: float | None = float(row[0]) if row else None

    # -- grid ---------------------------------------------------------------------------------------------------
    def _xy_m(self, lat: float, lon: float) -> tuple[float, float]:
        if self._lat_ref is None:
            # One reference latitude for the life of the index keeps cell keys stable across restarts.
            self._lat_ref = round(lat, 1)
            self.conn.execute("INSERT OR REPLACE INTO dedup_meta VALUES ('lat_ref', ?)", (str(self._lat_ref),))
        return lon * M_PER_DEG_LON_EQUATOR * math.cos(math.radians(self._lat_ref)), lat * M_PER_DEG_LAT

    @staticmethod
    def _cell_key(cx: int, cy: int) -> int:
        return (cx + _CELL_BIAS) * (1 << 30) + (cy + _CELL_BIAS)

    def _cell(self, lat: float, lon: float, size_m: float) -> tuple[int, int]:
        x, y = self._xy_m(lat, lon)
        return math.floor(x / size_m), math.floor(y / size_m)

    def _nearest(self, s: Sighting, radius_m: float) -> tuple | None:
        """The object this sighting belongs to: the nearest within ``radius_m``, else the nearest already
        published one within the re-acquisition gate (a repeat pass carries a fresh GPS error, so the same
        object comes back further away than sightings of one pass scatter)."""
        gate_m = radius_m * self.policy.reacquire_factor
        cx, cy = self._cell(s.lat_deg, s.lon_deg, gate_m)
        keys = [self._cell_key(cx + dx, cy + dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
        rows = self.conn.execute(
            "SELECT object_id, lat, lon, weight, ground_ok, observations, pass_scores, first_seen, last_seen,"
            " last_frame, published_at, publications FROM dedup_objects"
            " WHERE category = ? AND cell IN (?,?,?,?,?,?,?,?,?)",
            (s.category, *keys),
        ).fetchall()
        best, best_d = None, radius_m
        published, published_d = None, gate_m
        for row in rows:
            d = distance_m(s.lat_deg, s.lon_deg, row[1], row[2])
            if d <= best_d:
                best, best_d = row, d
            if row[11] > 0 and d <= published_d:
                published, published_d = row, d
        return best if best is not None else published

    # -- update -------------------------------------------------------------------------------------------------
    def update(self, sightings: Sequence[Sighting], now_utc: float) -> list[Confirmation]:
        """Merge one frame's sightings into the index; return the objects to publish now."""
        out: list[Confirmation] = []
        for s in sorted(sightings, key=lambda s: -s.score):
            pol = self.policy.for_category(s.category)
            w = 1.0 / max(s.range_m or 3.0, 3.0) ** 2 if s.ground_ok else 1e-4
            row = self._nearest(s, pol.radius_m)
            if row is None:
                # Deterministic: the same first sighting always makes the same object (and so the same event
                # ids), whether a drive is replayed twice or a killed run redoes frames it had not committed.
                obj_id = object_id_for(s)
                lat, lon, weight, ground_ok = s.lat_deg, s.lon_deg, w, s.ground_ok
                observations, scores = 1, [s.score]
                first_seen, published_at, publications = s.time_utc, None, 0
            else:
                (obj_id, lat, lon, weight, ground_ok, observations, scores_json, first_seen, last_seen,
                 last_frame, published_at, publications) = row
                scores = json.loads(scores_json)
                if last_frame == s.frame_index and last_seen == s.time_utc:
                    continue  # a second box of the same object in one frame adds nothing
                if s.time_utc - last_seen > self.policy.candidate_ttl_s:
                    scores = []  # a new pass: confirmation starts again
                # Near sightings place an object better than far ones: weight by 1/range^2.
                total = weight + w
                lat = (lat * weight + s.lat_deg * w) / total
                lon = (lon * weight + s.lon_deg * w) / total
                weight, ground_ok = total, bool(ground_ok) or s.ground_ok
                observations += 1
                scores = [*scores, s.score][-MAX_SCORES_KEPT:]
            median = statistics.median(scores)
            publish = False
            if len(scores) >= pol.min_frames and median >= pol.min_median_score:
                if publications == 0 or (
                    published_at is not None and s.time_utc - published_at >= self.policy.suppress_s
                ):
                    publish = True
                    publications += 1
                    published_at = s.time_utc
            cx, cy = self._cell(lat, lon, pol.radius_m * self.policy.reacquire_factor)
            self.conn.execute(
                "INSERT INTO dedup_objects (object_id, category, cell, lat, lon, weight, ground_ok, observations,"
                " pass_scores, first_seen, last_seen, last_frame, published_at, publications)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(object_id) DO UPDATE SET cell=excluded.cell, lat=excluded.lat, lon=excluded.lon,"
                " weight=excluded.weight, ground_ok=excluded.ground_ok, observations=excluded.observations,"
                " pass_scores=excluded.pass_scores, last_seen=excluded.last_seen, last_frame=excluded.last_frame,"
                " published_at=excluded.published_at, publications=excluded.publications",
                (obj_id, s.category, self._cell_key(cx, cy), lat, lon, weight, int(ground_ok), observations,
                 json.dumps(scores), first_seen, s.time_utc, s.frame_index, published_at, publications),
            )
            if publish:
                obj = TrackedObject(obj_id, s.category, lat, lon, bool(ground_ok), observations, float(median),
                                    first_seen, s.time_utc, publications)
                out.append(Confirmation(obj, s, publications))
        return out

    def expire(self, now_utc: float) -> int:
        """Forget never-published objects not seen for ``candidate_ttl_s``; returns how many."""
        cur = self.conn.execute(
            "DELETE FROM dedup_objects WHERE publications = 0 AND last_seen < ?",
            (now_utc - self.policy.candidate_ttl_s,),
        )
        return cur.rowcount

    def count(self) -> int:
        """Objects stored (candidates and published)."""
        return self.conn.execute("SELECT COUNT(*) FROM dedup_objects").fetchone()[0]

    def published_count(self) -> int:
        """Objects published at least once."""
        return self.conn.execute("SELECT COUNT(*) FROM dedup_objects WHERE publications > 0").fetchone()[0]


def policy_from_taxonomy(taxonomy, dedup_cfg) -> DedupPolicy:
    """Per-category defaults from the taxonomy, overridden by the config's ``[dedup]`` tables."""
    cats: dict[str, CategoryPolicy] = {}
    for c in taxonomy.categories:
        cats[c.name] = CategoryPolicy(
            radius_m=dedup_cfg.radius_m.get(c.name, c.radius_m),
            min_frames=dedup_cfg.min_frames.get(c.name, c.min_frames),
            min_median_score=dedup_cfg.min_median_score.get(c.name, c.min_median_score),
        )
    for key in (*dedup_cfg.radius_m, *dedup_cfg.min_frames, *dedup_cfg.min_median_score):
        if key not in cats:
            raise ValueError(f"dedup: unknown category {key!r} in an override (not in {taxonomy.source})")
    return DedupPolicy(cats, suppress_s=dedup_cfg.suppress_s, candidate_ttl_s=dedup_cfg.candidate_ttl_s,
                       reacquire_factor=dedup_cfg.reacquire_factor)
