"""Rules that turn general-object candidates (a car, a bike, an umbrella) into violations.

A COCO detector finds everyday objects; what makes one a violation is where it stands and that it stays there.
Each candidate category has one rule:

* ``parking`` (illegal_parking): a *stationary* vehicle inside a ``no_parking`` zone. With no no-parking zone
  configured, ``fallback`` decides: ``"none"`` reports nothing, ``"far_off_carriageway"`` reports a stationary
  vehicle at least ``min_lateral_offset_m`` to the side of the patrol car's track in every sighting.
  ``rule``: ``stationary_in_no_parking_zone`` or ``stationary_far_off_carriageway``.
* ``bike_cluster`` (disorderly_bikes): at least ``min_bikes`` stationary bikes within ``cluster_radius_m`` of one
  of them, outside every ``bike_parking`` zone. The heap is one event (its oldest bike's object id), reported as
  soon as ``min_bikes`` qualify; ``rule``: ``bike_cluster_outside_bike_parking`` with ``cluster_size``.
* ``umbrella`` (street_umbrella): a stationary umbrella; with ``zone_ids`` set, only inside those zones.
  ``rule``: ``stationary_umbrella``.

*Stationary* means that all ground positions of the object since its test (re)started lie within
``stationary_radius_m`` of their centre while the patrol car's odometer (summed from successive poses) advanced at
least ``min_travel_m``: traffic moving with the car and passers-by never count, and neither does anything seen
only while the car stands still. A position outside the radius restarts the test. Anything inside an
``exclusion`` zone is never reported. A reported object stays silent for ``suppress_s``, and so does any other
candidate of its category within the taxonomy's ``radius_m`` of it (one parked car, one event, even when its
ground positions wander over two tracks). Each event carries a `RuleFired` saying which rule fired and why.

State (the car's odometer, object tracks, publications) lives in ``rules_*`` tables of the outbox's SQLite
connection; the engine never commits: the pipeline commits it with the queued events.

Zones are GeoJSON FeatureCollections of Polygon/MultiPolygon features (``[lon, lat]``, holes allowed), each
feature with ``properties.id`` (unique over all files) and ``properties.kind`` in ``no_parking``, ``bike_parking``,
``exclusion``.

The ``[rules]`` table of the car's config (read only when ``[object_detector] enabled = true``); every key is
optional, the values shown are the defaults unless marked "example"::

    [rules]
    warning_categories = []        # example: ["disorderly_bikes"] -> published with "mode": "warning"
    stationary_radius_m = 3.0      # the object's ground positions stay within this radius of their centre ...
    min_travel_m = 15.0            # ... while the patrol car travels at least this far (odometry from GPS)
    min_dwell_s = 0.0              # and the object was seen over at least this long (e.g. 60: skip red-light queues)
    track_ttl_s = 120.0            # an object not seen for this long is forgotten (its test starts again)
    suppress_s = 86400.0           # after an event, the same object (or bike heap) stays silent this long

    [[rules.zones]]                # example: zero or more GeoJSON files, paths relative to the config file
    file = "zones/old-town.geojson"
    [[rules.zones]]
    file = "zones/depots.geojson"
    kind = "exclusion"             # optional: every feature of the file is of this kind (properties.kind may agree)

    [rules.parking]
    category = "illegal_parking"
    fallback = "none"              # no no_parking zone configured: "none" | "far_off_carriageway"
    min_lateral_offset_m = 6.0     # far_off_carriageway: this far to the side of the car's track, every sighting

    [rules.bike_cluster]
    category = "disorderly_bikes"
    min_bikes = 5
    cluster_radius_m = 3.0

    [rules.umbrella]
    category = "street_umbrella"
    zone_ids = []                  # example: ["market-st"] -> only inside these zones (any kind but exclusion)

A rule whose default category is not in the taxonomy is off; naming an unknown category is an error. A
candidate also needs the taxonomy's ``min_frames`` sightings with a median score of ``min_median_score``.
"""

from __future__ import annotations

import json
import math
import sqlite3
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vehicle.categories import Taxonomy
from vehicle.config import ConfigError, resolve_path
from vehicle.dedup import (
    M_PER_DEG_LAT,
    M_PER_DEG_LON_EQUATOR,
    Confirmation,
    Sighting,
    TrackedObject,
    distance_m,
    object_id_for,
)
from vehicle.detection_log import CategoryBox
from vehicle.events import RuleFired
from vehicle.zones import Zone, ZoneKind, load_zones

MAX_SCORES_KEPT = 64


# -- configuration ------------------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)  # as vehicle.config


class ZoneFileConfig(_Strict):
    """One GeoJSON file of zones."""

    file: str = Field(min_length=1, description="GeoJSON FeatureCollection, relative to the config's folder")
    kind: ZoneKind | None = Field(default=None, description="every feature is of this kind")


class ParkingRuleConfig(_Strict):
    """Illegal parking: a stationary vehicle in a no-parking zone."""

    category: str = "illegal_parking"
    fallback: Literal["none", "far_off_carriageway"] = "none"
    min_lateral_offset_m: float = Field(default=6.0, gt=0)


class BikeClusterRuleConfig(_Strict):
    """Disorderly bikes: a heap of stationary bikes outside bike parking."""

    category: str = "disorderly_bikes"
    min_bikes: int = Field(default=5, ge=1)
    cluster_radius_m: float = Field(default=3.0, gt=0)


class UmbrellaRuleConfig(_Strict):
    """Street umbrella: a stationary umbrella, optionally only inside some zones."""

    category: str = "street_umbrella"
    zone_ids: list[str] = Field(default_factory=list)


class RulesConfig(_Strict):
    """The ``[rules]`` table."""

    warning_categories: list[str] = Field(default_factory=list)
    stationary_radius_m: float = Field(default=3.0, gt=0)
    min_travel_m: float = Field(default=15.0, gt=0)
    min_dwell_s: float = Field(default=0.0, ge=0)
    track_ttl_s: float = Field(default=120.0, gt=0)
    suppress_s: float = Field(default=86400.0, ge=0)
    zones: list[ZoneFileConfig] = Field(default_factory=list)
    parking: ParkingRuleConfig = ParkingRuleConfig()
    bike_cluster: BikeClusterRuleConfig = BikeClusterRuleConfig()
    umbrella: UmbrellaRuleConfig = UmbrellaRuleConfig()


# -- settings -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RuleSettings:
    """Validated rule settings with the zones loaded; made by `rules_from_config`."""

    config: RulesConfig
    zones: tuple[Zone, ...]
    rule_of_category: dict[str, str]  # candidate category -> "parking" | "bike_cluster" | "umbrella"
    warning_categories: frozenset[str]

    def zones_of(self, kind: str) -> tuple[Zone, ...]:
        """The zones of one kind."""
        return tuple(z for z in self.zones if z.kind == kind)


def _dotted(loc: Sequence[object]) -> str:
    out = "rules"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def rules_from_config(raw: dict, base_dir: Path, taxonomy: Taxonomy) -> RuleSettings:
    """Validate the config's ``[rules]`` table and load its zone files.

    Args:
        raw: the ``[rules]`` table as parsed from TOML (``Config.rules``).
        base_dir: folder the zone file paths are relative to (the config file's folder).
        taxonomy: the city's categories; rule and warning categories must be among them.

    Returns:
        The settings the `RuleEngine` runs with.

    Raises:
        ConfigError: one line naming the dotted key, e.g. ``rules.zones[1].kind: ...``.
    """
    try:
        cfg = RulesConfig.model_validate(raw or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (misspelt?)"
        value = err.get("input")
        shown = "" if isinstance(value, dict) or err["type"] in ("extra_forbidden", "missing") else f" (got {value!r})"
        raise ConfigError(f"{_dotted(err['loc'])}: {msg}{shown}") from None
    given = raw or {}
    rule_of: dict[str, str] = {}
    for rule in ("parking", "bike_cluster", "umbrella"):
        category = getattr(cfg, rule).category
        if taxonomy.get(category) is None:
            if "category" in (given.get(rule) or {}):
                raise ConfigError(f"rules.{rule}.category: unknown category {category!r} (not in {taxonomy.source})")
            continue  # a default category this city does not have: the rule is off
        if category in rule_of:
            raise ConfigError(f"rules.{rule}.category: {category!r} already belongs to rules.{rule_of[category]}")
        rule_of[category] = rule
    for i, name in enumerate(cfg.warning_categories):
        if taxonomy.get(name) is None:
            raise ConfigError(f"rules.warning_categories[{i}]: unknown category {name!r} (not in {taxonomy.source})")
    zones: list[Zone] = []
    seen: dict[str, int] = {}
    for i, zf in enumerate(cfg.zones):
        path = resolve_path(zf.file, base_dir)
        try:
            loaded = load_zones(path, zf.kind)
        except ValueError as exc:
            raise ConfigError(f"rules.zones[{i}].file: {exc}") from None
        for z in loaded:
            if z.zone_id in seen:
                raise ConfigError(f"rules.zones[{i}].file: {path}: zone id {z.zone_id!r} already used in "
                                  f"rules.zones[{seen[z.zone_id]}]")
            seen[z.zone_id] = i
        zones += loaded
    for i, zid in enumerate(cfg.umbrella.zone_ids):
        if zid not in seen:
            raise ConfigError(f"rules.umbrella.zone_ids[{i}]: no zone has id {zid!r}")
    return RuleSettings(cfg, tuple(zones), rule_of, frozenset(cfg.warning_categories))


# -- engine -------------------------------------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS rules_meta (key TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rules_tracks (
    track_id TEXT PRIMARY KEY,
    category TEXT NOT NULL,
    lat REAL NOT NULL,
    lon REAL NOT NULL,
    weight REAL NOT NULL,
    min_lat REAL NOT NULL, max_lat REAL NOT NULL, min_lon REAL NOT NULL, max_lon REAL NOT NULL,
    min_lateral_m REAL NOT NULL,
    observations INTEGER NOT NULL,
    scores TEXT NOT NULL,
    first_seen REAL NOT NULL,
    still_since REAL NOT NULL,
    last_seen REAL NOT NULL,
    last_frame INTEGER NOT NULL,
    odometer_start_m REAL NOT NULL,
    odometer_last_m REAL NOT NULL,
    published_at REAL,
    publications INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS rules_tracks_position ON rules_tracks (category, lat);
CREATE INDEX IF NOT EXISTS rules_tracks_seen ON rules_tracks (last_seen);
"""
_COLUMNS = ("track_id", "category", "lat", "lon", "weight", "min_lat", "max_lat", "min_lon", "max_lon",
            "min_lateral_m", "observations", "scores", "first_seen", "still_since", "last_seen", "last_frame",
            "odometer_start_m", "odometer_last_m", "published_at", "publications")


@dataclass
class _Track:
    """One candidate object as the engine follows it (a row of ``rules_tracks``)."""

    track_id: str
    category: str
    lat: float
    lon: float
    weight: float
    min_lat: float
    max_lat: float
    min_lon: float
    max_lon: float
    min_lateral_m: float
    observations: int
    scores: list[float]
    first_seen: float
    still_since: float
    last_seen: float
    last_frame: int
    odometer_start_m: float
    odometer_last_m: float
    published_at: float | None
    publications: int

    @property
    def travel_m(self) -> float:
        return self.odometer_last_m - self.odometer_start_m

    @property
    def dwell_s(self) -> float:
        return self.last_seen - self.still_since

    def spread_m(self) -> float:
        """Radius of the box around all positions since the stationary test (re)started."""
        return _half_diagonal_m(self.min_lat, self.max_lat, self.min_lon, self.max_lon)

    def restart(self, s: Sighting, weight: float, lateral_m: float, odometer_m: float) -> None:
        """Start the stationary test again at this sighting."""
        self.lat, self.lon, self.weight = s.lat_deg, s.lon_deg, weight
        self.min_lat = self.max_lat = s.lat_deg
        self.min_lon = self.max_lon = s.lon_deg
        self.min_lateral_m = lateral_m
        self.scores = [s.score]
        self.still_since = s.time_utc
        self.odometer_start_m = odometer_m


class RuleEngine:
    """Follows candidate objects and returns the ones a rule makes a violation, once each.

    Not thread-safe: the pipeline's post-processing thread owns it. It never commits (see module docstring).
    """

    def __init__(self, conn: sqlite3.Connection, settings: RuleSettings, taxonomy: Taxonomy):
        self.conn = conn
        self.settings = settings
        self.taxonomy = taxonomy
        conn.executescript(_SCHEMA)

    # -- odometer -----------------------------------------------------------------------------------------------
    def _meta(self, key: str) -> float | None:
        row = self.conn.execute("SELECT value FROM rules_meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else float(row[0])

    def _advance_odometer(self, pose, now_utc: float) -> float:
        """The car's odometer after this pose (metres; only valid poses later than the last one move it)."""
        odo = self._meta("odometer_m") or 0.0
        if pose is None or not pose.valid:
            return odo
        last_lat, last_lon, last_t = self._meta("last_lat"), self._meta("last_lon"), self._meta("last_utc")
        if last_lat is not None and last_lon is not None and last_t is not None and now_utc > last_t:
            odo += distance_m(last_lat, last_lon, pose.lat_deg, pose.lon_deg)
        # Time going backwards (a drive replayed on kept state) is a new start, not a journey.
        self.conn.executemany("INSERT OR REPLACE INTO rules_meta VALUES (?, ?)",
                              [("odometer_m", odo), ("last_lat", pose.lat_deg), ("last_lon", pose.lon_deg),
                               ("last_utc", now_utc)])
        return odo

    def odometer_m(self) -> float:
        """Distance the patrol car has travelled, summed over the poses seen (metres)."""
        return self._meta("odometer_m") or 0.0

    # -- tracks -------------------------------------------------------------------------------------------------
    def _near(self, category: str, lat: float, lon: float, radius_m: float) -> list[_Track]:
        dlat = radius_m / M_PER_DEG_LAT
        dlon = radius_m / (M_PER_DEG_LON_EQUATOR * max(math.cos(math.radians(lat)), 1e-6))
        rows = self.conn.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM rules_tracks WHERE category = ? AND lat BETWEEN ? AND ?"
            " AND lon BETWEEN ? AND ?", (category, lat - dlat, lat + dlat, lon - dlon, lon + dlon)).fetchall()
        tracks = [_Track(*r[:11], json.loads(r[11]), *r[12:]) for r in rows]
        return [t for t in tracks if distance_m(lat, lon, t.lat, t.lon) <= radius_m]

    def _save(self, t: _Track) -> None:
        values = [getattr(t, c) for c in _COLUMNS]
        values[_COLUMNS.index("scores")] = json.dumps(t.scores)
        self.conn.execute(f"INSERT OR REPLACE INTO rules_tracks ({', '.join(_COLUMNS)})"
                          f" VALUES ({', '.join('?' * len(_COLUMNS))})", values)

    def _follow(self, s: Sighting, pose, odo: float) -> _Track:
        """Add a sighting to its track (the nearest one not yet fed this frame) or start a new one."""
        cfg = self.settings.config
        radius = cfg.stationary_radius_m
        w = 1.0 / max(s.range_m or 3.0, 3.0) ** 2  # near sightings place an object better than far ones
        lateral = _lateral_offset_m(pose, s.lat_deg, s.lon_deg)
        near = [t for t in self._near(s.category, s.lat_deg, s.lon_deg, 2.0 * radius)
                if (t.last_frame, t.last_seen) != (s.frame_index, s.time_utc)]
        if not near:
            t = _Track(object_id_for(s), s.category, s.lat_deg, s.lon_deg, w, s.lat_deg, s.lat_deg, s.lon_deg,
                       s.lon_deg, lateral, 1, [s.score], s.time_utc, s.time_utc, s.time_utc, s.frame_index, odo, odo,
                       None, 0)
            return t
        t = min(near, key=lambda t: distance_m(s.lat_deg, s.lon_deg, t.lat, t.lon))
        t.observations += 1
        stale = not 0.0 <= s.time_utc - t.last_seen <= cfg.track_ttl_s  # lost, or time went backwards
        t.last_seen, t.last_frame, t.odometer_last_m = s.time_utc, s.frame_index, odo
        if self._silent(t, s.time_utc):
            return t  # a reported object stays where it was reported: other tracks are judged against that
        box = (min(t.min_lat, s.lat_deg), max(t.max_lat, s.lat_deg), min(t.min_lon, s.lon_deg),
               max(t.max_lon, s.lon_deg))
        if stale or _half_diagonal_m(*box) > radius:
            t.restart(s, w, lateral, odo)  # it moved (or we lost it): the test starts again here
            return t
        t.min_lat, t.max_lat, t.min_lon, t.max_lon = box
        total = t.weight + w
        t.lat = (t.lat * t.weight + s.lat_deg * w) / total
        t.lon = (t.lon * t.weight + s.lon_deg * w) / total
        t.weight = total
        t.min_lateral_m = min(t.min_lateral_m, lateral)
        t.scores = [*t.scores, s.score][-MAX_SCORES_KEPT:]
        return t

    def _stationary(self, t: _Track) -> bool:
        """Whether the track passes the stationary test and has enough confident sightings."""
        cfg = self.settings.config
        cat = self.taxonomy[t.category]
        return (t.travel_m >= cfg.min_travel_m and t.dwell_s >= cfg.min_dwell_s
                and len(t.scores) >= cat.min_frames and statistics.median(t.scores) >= cat.min_median_score)

    def _silent(self, t: _Track, now_utc: float) -> bool:
        """Whether ``t`` was reported less than ``suppress_s`` ago."""
        return t.published_at is not None and now_utc - t.published_at < self.settings.config.suppress_s

    def _reported_near(self, t: _Track, now_utc: float) -> bool:
        """Whether another track within the category's dedup radius was reported within ``suppress_s``."""
        near = self._near(t.category, t.lat, t.lon, self.taxonomy[t.category].radius_m)
        return any(m.track_id != t.track_id and self._silent(m, now_utc) for m in near)

    def _zone(self, kind: str | None, lat: float, lon: float, ids: Sequence[str] = ()) -> Zone | None:
        """The first zone of ``kind`` (or, with ``ids``, of those ids but no exclusion) containing the point."""
        for z in self.settings.zones:
            if (z.kind == kind or (ids and z.zone_id in ids and z.kind != "exclusion")) and z.contains(lat, lon):
                return z
        return None

    def _why(self, t: _Track) -> str:
        return (f"stayed within {t.spread_m():.1f} m for {t.dwell_s:.1f} s while the patrol car travelled "
                f"{t.travel_m:.1f} m")

    # -- rules --------------------------------------------------------------------------------------------------
    def _single(self, rule: str, t: _Track) -> RuleFired | None:
        """The single-object rules (parking, umbrella): why ``t`` is a violation, or None."""
        cfg = self.settings.config
        common = {"distance_travelled_m": round(t.travel_m, 2), "dwell_s": round(t.dwell_s, 2)}
        if rule == "parking":
            if self.settings.zones_of("no_parking"):
                z = self._zone("no_parking", t.lat, t.lon)
                if z is None:
                    return None
                return RuleFired(rule="stationary_in_no_parking_zone", zone_id=z.zone_id,
                                 reason=f"vehicle {self._why(t)}, inside no-parking zone {z.zone_id}", **common)
            if cfg.parking.fallback == "far_off_carriageway" and t.min_lateral_m >= cfg.parking.min_lateral_offset_m:
                return RuleFired(rule="stationary_far_off_carriageway",
                                 reason=f"vehicle {self._why(t)}, at least {t.min_lateral_m:.1f} m beside the "
                                        "patrol car's track (no no-parking zones configured)", **common)
            return None
        ids = cfg.umbrella.zone_ids
        z = self._zone(None, t.lat, t.lon, ids) if ids else None
        if ids and z is None:
            return None
        where = f", inside zone {z.zone_id}" if z is not None else ""
        return RuleFired(rule="stationary_umbrella", zone_id=None if z is None else z.zone_id,
                         reason=f"umbrella {self._why(t)}{where}", **common)

    def _bike_heap(self, t: _Track, now_utc: float) -> tuple[list[_Track], RuleFired] | None:
        """The heap of stationary bikes around ``t`` when it is big enough and not yet reported."""
        cfg = self.settings.config
        bc = cfg.bike_cluster
        members = [m for m in self._near(t.category, t.lat, t.lon, bc.cluster_radius_m)
                   if now_utc - m.last_seen <= cfg.track_ttl_s and self._stationary(m)
                   and self._zone("bike_parking", m.lat, m.lon) is None
                   and self._zone("exclusion", m.lat, m.lon) is None]
        if len(members) < bc.min_bikes or any(self._silent(m, now_utc) for m in members):
            return None
        travel = min(m.travel_m for m in members)
        dwell = min(m.dwell_s for m in members)
        return members, RuleFired(
            rule="bike_cluster_outside_bike_parking", cluster_size=len(members),
            distance_travelled_m=round(travel, 2), dwell_s=round(dwell, 2),
            reason=f"{len(members)} bikes within {bc.cluster_radius_m:g} m stayed put while the patrol car travelled "
                   f"at least {travel:.1f} m, outside any bike-parking zone")

    def update(self, candidates: list[tuple[CategoryBox, Sighting]], pose, now_utc: float
               ) -> list[tuple[Confirmation, RuleFired]]:
        """Feed one frame's candidates; return the violations to publish now, each with the rule that fired.

        Args:
            candidates: the frame's general-object boxes and their ground sightings.
            pose: the car's `vehicle.gps.Pose` at the frame (an invalid or missing one does not move the odometer).
            now_utc: the frame's time, POSIX seconds.
        """
        odo = self._advance_odometer(pose, now_utc)
        self.conn.execute("DELETE FROM rules_tracks WHERE last_seen < ? AND (publications = 0 OR published_at < ?)",
                          (now_utc - self.settings.config.track_ttl_s, now_utc - self.settings.config.suppress_s))
        out: list[tuple[Confirmation, RuleFired]] = []
        fed: list[tuple[_Track, Sighting]] = []
        for _box, s in sorted(candidates, key=lambda c: -c[1].score):
            if not s.ground_ok or s.category not in self.settings.rule_of_category:
                continue  # a position that is the car's own cannot show an object standing still
            t = self._follow(s, pose, odo)
            self._save(t)
            fed.append((t, s))
        for t, s in fed:
            rule = self.settings.rule_of_category[t.category]
            if self._silent(t, now_utc) or not self._stationary(t) or self._zone("exclusion", t.lat, t.lon):
                continue
            if rule == "bike_cluster":
                heap = self._bike_heap(t, now_utc)
                if heap is None:
                    continue
                members, fired = heap
                out.append((self._publish(members, s, now_utc), fired))
                continue
            if self._reported_near(t, now_utc):
                continue  # a second track of an object already reported (its box's foot point wandered)
            fired = self._single(rule, t)
            if fired is not None:
                out.append((self._publish([t], s, now_utc), fired))
        return out

    def _publish(self, members: list[_Track], s: Sighting, now_utc: float) -> Confirmation:
        """Mark ``members`` published; the object is the oldest member (stable id across publications)."""
        head = min(members, key=lambda m: (m.first_seen, m.track_id))
        publication = head.publications + 1
        for m in members:
            m.publications = publication if m is head else max(m.publications, 1)
            m.published_at = now_utc
            self._save(m)
        scores = [x for m in members for x in m.scores]
        lat = sum(m.lat for m in members) / len(members)
        lon = sum(m.lon for m in members) / len(members)
        obj = TrackedObject(head.track_id, head.category, lat, lon, True, sum(m.observations for m in members),
                            float(statistics.median(scores)), min(m.first_seen for m in members),
                            max(m.last_seen for m in members), publication)
        return Confirmation(obj, s, publication)


def _lateral_offset_m(pose, lat_deg: float, lon_deg: float) -> float:
    """Distance of a point to the side of the car's line of travel (metres; 0 without a heading)."""
    if pose is None or pose.heading_deg is None:
        return 0.0
    east = (lon_deg - pose.lon_deg) * M_PER_DEG_LON_EQUATOR * math.cos(math.radians(pose.lat_deg))
    north = (lat_deg - pose.lat_deg) * M_PER_DEG_LAT
    h = math.radians(pose.heading_deg)
    return abs(east * math.cos(h) - north * math.sin(h))


def _half_diagonal_m(min_lat: float, max_lat: float, min_lon: float, max_lon: float) -> float:
    """Half the diagonal of a small lat/lon box, in metres."""
    dy = (max_lat - min_lat) * M_PER_DEG_LAT
    dx = (max_lon - min_lon) * M_PER_DEG_LON_EQUATOR * math.cos(math.radians((min_lat + max_lat) / 2.0))
    return math.hypot(dx, dy) / 2.0
