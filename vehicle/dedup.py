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
import uuid
from array import array
from collections import OrderedDict
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
    pass_scores BLOB NOT NULL,  -- float32 scores of the current pass
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    last_frame INTEGER NOT NULL,
    published_at REAL,
    publications INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS dedup_objects_cell ON dedup_objects (category, cell);
DROP INDEX IF EXISTS dedup_objects_candidates;
CREATE INDEX IF NOT EXISTS dedup_candidates_last_seen ON dedup_objects (last_seen) WHERE publications = 0;
"""
_COLUMNS = ("object_id, category, cell, lat, lon, weight, ground_ok, observations, pass_scores, first_seen,"
            " last_seen, last_frame, published_at, publications")
_UPSERT = (
    f"INSERT INTO dedup_objects ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT(object_id) DO UPDATE SET cell=excluded.cell, lat=excluded.lat, lon=excluded.lon,"
    " weight=excluded.weight, ground_ok=excluded.ground_ok, observations=excluded.observations,"
    " pass_scores=excluded.pass_scores, last_seen=excluded.last_seen, last_frame=excluded.last_frame,"
    " published_at=excluded.published_at, publications=excluded.publications"
)
# Cell keys of the 3 x 3 neighbourhood relative to the centre's (see DedupIndex._cell_key); centre in the middle.
_NEIGHBOUR_OFFSETS = tuple(dx * (1 << 30) + dy for dx in (-1, 0, 1) for dy in (-1, 0, 1))
MAX_CACHED_CELLS = 50_000  # the cells around where the car has just been; a few tens of MB at most


class _Obj:
    """One stored object while it sits in the in-memory cell cache (a row of ``dedup_objects``)."""

    __slots__ = ("_scores", "category", "cell", "first_seen", "ground_ok", "last_frame", "last_seen", "lat", "lon",
                 "object_id", "observations", "publications", "published_at", "weight", "x", "y")

    def __init__(self, row: tuple, xy: tuple[float, float]):
        (self.object_id, self.category, self.cell, self.lat, self.lon, self.weight, ground_ok, self.observations,
         self._scores, self.first_seen, self.last_seen, self.last_frame, self.published_at, self.publications) = row
        self.ground_ok = bool(ground_ok)
        self.x, self.y = xy  # metres on the index's projection (see DedupIndex._xy_m), kept with lat/lon

    @property
    def scores(self) -> list[float]:
        # Decoded only for objects a sighting actually joins: most loaded neighbours are just distance-checked.
        if isinstance(self._scores, bytes):
            self._scores = array("f", self._scores).tolist()
        elif isinstance(self._scores, str):  # written by an older version as JSON
            self._scores = json.loads(self._scores)
        return self._scores

    @scores.setter
    def scores(self, value: list[float]) -> None:
        self._scores = value

    def as_row(self) -> tuple:
        scores = self._scores if isinstance(self._scores, bytes) else array("f", self._scores).tobytes()
        return (self.object_id, self.category, self.cell, self.lat, self.lon, self.weight, int(self.ground_ok),
                self.observations, scores, self.first_seen, self.last_seen, self.last_frame,
                self.published_at, self.publications)


class DedupConfigError(ValueError):
    """A dedup override names a category the taxonomy does not have; the message names the key."""


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


def _median(values: list[float]) -> float:
    """Median of a short list (statistics.median's generality costs more than the rest of a lookup)."""
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2.0


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

    def __init__(self, conn: sqlite3.Connection, policy: DedupPolicy, flush_interval_s: float = 1.0):
        self.conn = conn
        self.policy = policy
        self._policies = dict(policy.categories)  # a plain dict lookup per sighting
        # Changes are written at once when an object is published (so the event and its object commit together)
        # and otherwise at most this often (frame time): a crash loses at most this much observation history,
        # never an event, and the car does not pay an SQLite write (and an fsync) for every frame.
        self.flush_interval_s = flush_interval_s
        # A larger page cache and memory-mapped reads keep a million-object index's B-trees in memory.
        conn.execute("PRAGMA cache_size = -65536")
        conn.execute("PRAGMA mmap_size = 268435456")
        conn.executescript(_SCHEMA)
        row = conn.execute("SELECT value FROM dedup_meta WHERE key = 'lat_ref'").fetchone()
        self._lat_ref: float | None = float(row[0]) if row else None
        self._m_per_deg_lon: float | None = None
        # Write-through cache of recently used cells: (category, cell) -> {object_id: _Obj}. A car sees each
        # object in many consecutive frames, so almost every lookup after the first is answered from memory.
        self._cells: OrderedDict[tuple[str, int], dict[str, _Obj]] = OrderedDict()
        # The 3 x 3 cells around the last sighting of each category: consecutive frames see the same objects, so
        # most sightings reuse them without nine cache probes. Cleared whenever cells leave the cache.
        self._hood: dict[str, tuple[int, list[dict[str, _Obj]]]] = {}
        self._dirty: dict[str, _Obj] = {}
        self._flushed_utc = -math.inf

    # -- grid ---------------------------------------------------------------------------------------------------
    def _xy_m(self, lat: float, lon: float) -> tuple[float, float]:
        if self._lat_ref is None:
            # One reference latitude for the life of the index keeps cell keys stable across restarts.
            self._lat_ref = round(lat, 1)
            self.conn.execute("INSERT OR REPLACE INTO dedup_meta VALUES ('lat_ref', ?)", (str(self._lat_ref),))
        if self._m_per_deg_lon is None:
            self._m_per_deg_lon = M_PER_DEG_LON_EQUATOR * math.cos(math.radians(self._lat_ref))
        return lon * self._m_per_deg_lon, lat * M_PER_DEG_LAT

    @staticmethod
    def _cell_key(cx: int, cy: int) -> int:
        return (cx + _CELL_BIAS) * (1 << 30) + (cy + _CELL_BIAS)

    def _cell(self, lat: float, lon: float, size_m: float) -> tuple[int, int]:
        x, y = self._xy_m(lat, lon)
        return math.floor(x / size_m), math.floor(y / size_m)

    def _load_cells(self, category: str, keys: list[int]) -> list[dict[str, _Obj]]:
        """The cached contents of these cells, reading the missing ones from SQLite in one query."""
        missing = [k for k in keys if (category, k) not in self._cells]
        if missing:
            fresh: dict[int, dict[str, _Obj]] = {k: {} for k in missing}
            marks = ",".join("?" * len(missing))
            for row in self.conn.execute(
                    f"SELECT {_COLUMNS} FROM dedup_objects WHERE category = ? AND cell IN ({marks})",
                    (category, *missing)):
                obj = self._dirty.get(row[0]) or _Obj(row, self._xy_m(row[3], row[4]))
                fresh[obj.cell][obj.object_id] = obj
            for k, objs in fresh.items():
                self._cells[(category, k)] = objs
        out = []
        for k in keys:
            self._cells.move_to_end((category, k))
            out.append(self._cells[(category, k)])
        return out

    def _nearest(self, s: Sighting, radius_m: float) -> tuple[_Obj | None, int, float, float]:
        """The object this sighting belongs to: the nearest within ``radius_m``, else the nearest already
        published one within the re-acquisition gate (a repeat pass carries a fresh GPS error, so the same
        object comes back further away than sightings of one pass scatter). Also the sighting's cell key and
        its planar position."""
        gate_m = radius_m * self.policy.reacquire_factor
        x, y = self._xy_m(s.lat_deg, s.lon_deg)
        centre = (math.floor(x / gate_m) + _CELL_BIAS) * (1 << 30) + math.floor(y / gate_m) + _CELL_BIAS  # _cell_key
        cat = s.category
        hood = self._hood.get(cat)
        if hood is not None and hood[0] == centre:
            cells = hood[1]
        else:
            keys = [centre + o for o in _NEIGHBOUR_OFFSETS]
            get = self._cells.get
            cells = [get((cat, k)) for k in keys]
            if None in cells:
                cells = self._load_cells(cat, keys)
            else:
                self._cells.move_to_end((cat, centre))
            self._hood[cat] = (centre, cells)
        # Planar distances on the index's own projection: exact to millimetres over a few tens of metres.
        best, best_d2 = None, radius_m * radius_m
        published, published_d2 = None, gate_m * gate_m
        for objs in cells:
            for obj in objs.values():
                d2 = (obj.x - x) ** 2 + (obj.y - y) ** 2
                if d2 <= best_d2:
                    best, best_d2 = obj, d2
                if obj.publications > 0 and d2 <= published_d2:
                    published, published_d2 = obj, d2
        return (best if best is not None else published), centre, x, y

    # -- update -------------------------------------------------------------------------------------------------
    def update(self, sightings: Sequence[Sighting], now_utc: float) -> list[Confirmation]:
        """Merge one frame's sightings into the index; return the objects to publish now."""
        out: list[Confirmation] = []
        suppress_s, ttl_s = self.policy.suppress_s, self.policy.candidate_ttl_s
        for s in sorted(sightings, key=lambda s: -s.score):
            pol = self._policies.get(s.category) or self.policy.for_category(s.category)
            gate_m = pol.radius_m * self.policy.reacquire_factor
            w = 1.0 / max(s.range_m or 3.0, 3.0) ** 2 if s.ground_ok else 1e-4
            obj, cell, x, y = self._nearest(s, pol.radius_m)
            if obj is None:
                # Deterministic: the same first sighting always makes the same object (and so the same event
                # ids), whether a drive is replayed twice or a killed run redoes frames it had not committed.
                obj = _Obj((object_id_for(s), s.category, cell, s.lat_deg, s.lon_deg, w, s.ground_ok, 1, [s.score],
                            s.time_utc, s.time_utc, s.frame_index, None, 0), (x, y))
                self._cells[(s.category, cell)][obj.object_id] = obj
                scores = obj.scores
            else:
                if obj.last_frame == s.frame_index and obj.last_seen == s.time_utc:
                    continue  # a second box of the same object in one frame adds nothing
                if s.time_utc - obj.last_seen > ttl_s:
                    obj.scores = []  # a new pass: confirmation starts again
                # Near sightings place an object better than far ones: weight by 1/range^2.
                total = obj.weight + w
                obj.lat = (obj.lat * obj.weight + s.lat_deg * w) / total
                obj.lon = (obj.lon * obj.weight + s.lon_deg * w) / total
                obj.x, obj.y = (obj.x * obj.weight + x * w) / total, (obj.y * obj.weight + y * w) / total
                obj.weight, obj.ground_ok = total, obj.ground_ok or s.ground_ok
                obj.observations += 1
                scores = obj.scores  # the object's own list: appended in place
                scores.append(s.score)
                if len(scores) > MAX_SCORES_KEPT:
                    del scores[0]
                obj.last_seen, obj.last_frame = s.time_utc, s.frame_index
                new_cell = self._cell_key(math.floor(obj.x / gate_m), math.floor(obj.y / gate_m))
                if new_cell != obj.cell:  # the mean moved across a cell border
                    self._load_cells(s.category, [obj.cell])[0].pop(obj.object_id, None)
                    self._load_cells(s.category, [new_cell])[0][obj.object_id] = obj
                    obj.cell = new_cell
            self._dirty[obj.object_id] = obj
            # The cheap tests first: most sightings are of objects still confirming or already published.
            if len(scores) < pol.min_frames or not (
                obj.publications == 0
                or (obj.published_at is not None and s.time_utc - obj.published_at >= suppress_s)
            ):
                continue
            median = _median(scores)
            if median >= pol.min_median_score:
                obj.publications += 1
                obj.published_at = s.time_utc
                snap = TrackedObject(obj.object_id, s.category, obj.lat, obj.lon, obj.ground_ok, obj.observations,
                                     float(median), obj.first_seen, s.time_utc, obj.publications)
                out.append(Confirmation(snap, s, obj.publications))
        if out or now_utc - self._flushed_utc >= self.flush_interval_s or now_utc < self._flushed_utc:
            self.flush(now_utc)
        return out

    def flush(self, now_utc: float | None = None) -> None:
        """Write every changed object in one batch (the caller commits) and trim the cache."""
        if self._dirty:
            self.conn.executemany(_UPSERT, [o.as_row() for o in self._dirty.values()])
            self._dirty.clear()
        if now_utc is not None:
            self._flushed_utc = now_utc
        if len(self._cells) > MAX_CACHED_CELLS:
            self._hood.clear()
            while len(self._cells) > MAX_CACHED_CELLS * 0.9:
                self._cells.popitem(last=False)

    def discard_unsaved(self) -> None:
        """Forget changes not yet written and every cached cell (after the caller rolled its transaction back):
        the next lookups read what SQLite holds."""
        self._dirty.clear()
        self._cells.clear()
        self._hood.clear()
        self._flushed_utc = -math.inf
        row = self.conn.execute("SELECT value FROM dedup_meta WHERE key = 'lat_ref'").fetchone()
        self._lat_ref, self._m_per_deg_lon = (float(row[0]) if row else None), None

    def expire(self, now_utc: float) -> int:
        """Forget never-published objects not seen for ``candidate_ttl_s``; returns how many."""
        self.flush(now_utc)
        cutoff = now_utc - self.policy.candidate_ttl_s
        stale = self.conn.execute(
            "SELECT object_id, category, cell FROM dedup_objects WHERE publications = 0 AND last_seen < ?",
            (cutoff,)).fetchall()
        for object_id, category, cell in stale:
            cached = self._cells.get((category, cell))
            if cached is not None:
                cached.pop(object_id, None)
        self.conn.execute("DELETE FROM dedup_objects WHERE publications = 0 AND last_seen < ?", (cutoff,))
        return len(stale)

    def count(self) -> int:
        """Objects stored (candidates and published)."""
        self.flush()
        return self.conn.execute("SELECT COUNT(*) FROM dedup_objects").fetchone()[0]

    def published_count(self) -> int:
        """Objects published at least once."""
        self.flush()
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
    for table in ("radius_m", "min_frames", "min_median_score"):
        for key in getattr(dedup_cfg, table):
            if key not in cats:
                raise DedupConfigError(f"dedup.{table}.{key}: unknown category (not in {taxonomy.source})")
    return DedupPolicy(cats, suppress_s=dedup_cfg.suppress_s, candidate_ttl_s=dedup_cfg.candidate_ttl_s,
                       reacquire_factor=dedup_cfg.reacquire_factor)
