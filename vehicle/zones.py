"""Zones: GeoJSON polygons (no-parking areas, bike parking, exclusion zones) and point-in-polygon tests.

Zones are GeoJSON FeatureCollections of Polygon/MultiPolygon features (``[lon, lat]``, holes allowed), each
feature with ``properties.id`` and ``properties.kind`` in ``no_parking``, ``bike_parking``, ``exclusion``.
Plain even-odd ray casting on lon/lat: exact enough for zones of a city block, no geometry library needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

ZoneKind = Literal["no_parking", "bike_parking", "exclusion"]
ZONE_KINDS: tuple[str, ...] = ("no_parking", "bike_parking", "exclusion")


@dataclass(frozen=True)
class Zone:
    """One zone: polygons of ``(outer ring, holes)``, each ring an (n, 2) array of ``[lon, lat]`` degrees."""

    zone_id: str
    kind: str
    polygons: tuple[tuple[np.ndarray, tuple[np.ndarray, ...]], ...]
    bbox: tuple[float, float, float, float]  # min lon, min lat, max lon, max lat

    def contains(self, lat_deg: float, lon_deg: float) -> bool:
        """Whether the point lies inside the zone (inside an outer ring and outside its holes)."""
        x0, y0, x1, y1 = self.bbox
        if not (x0 <= lon_deg <= x1 and y0 <= lat_deg <= y1):
            return False
        return any(point_in_ring(lon_deg, lat_deg, outer) and not any(point_in_ring(lon_deg, lat_deg, h)
                                                                           for h in holes)
                   for outer, holes in self.polygons)


def point_in_ring(x: float, y: float, ring: np.ndarray) -> bool:
    """Even-odd ray casting: is (x, y) inside the closed ring ((n, 2) array; closing vertex optional)?"""
    xi, yi = ring[:, 0], ring[:, 1]
    xj, yj = np.roll(xi, 1), np.roll(yi, 1)
    crosses = (yi > y) != (yj > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at_y = xj + (y - yj) * (xi - xj) / (yi - yj)
    return bool(np.count_nonzero(crosses & (x < x_at_y)) % 2)


def _ring(coords: object, where: str) -> np.ndarray:
    try:
        ring = np.asarray(coords, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: a ring must be a list of [lon, lat] positions") from None
    if ring.ndim != 2 or ring.shape[1] < 2 or len(ring) < 3:
        raise ValueError(f"{where}: a ring needs at least 3 [lon, lat] positions")
    ring = ring[:, :2]
    if not (np.all(np.abs(ring[:, 0]) <= 180) and np.all(np.abs(ring[:, 1]) <= 90)):
        raise ValueError(f"{where}: positions must be [lon, lat] in degrees")
    return ring


def load_zones(path: Path, kind: str | None = None) -> list[Zone]:
    """Zones of one GeoJSON file; ``ValueError`` naming the feature on anything malformed."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: zone file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable GeoJSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection" or not isinstance(doc.get("features"), list):
        raise ValueError(f"{path}: expected a GeoJSON FeatureCollection")
    zones = []
    for i, feat in enumerate(doc["features"]):
        where = f"{path}: features[{i}]"
        if not isinstance(feat, dict):
            raise ValueError(f"{where}: expected a GeoJSON Feature")
        props = feat.get("properties") or {}
        geom = feat.get("geometry")
        zone_id = props.get("id")
        if not isinstance(zone_id, str | int) or str(zone_id) == "":
            raise ValueError(f"{where}.properties.id: required (a non-empty string)")
        fkind = props.get("kind", kind)
        if fkind not in ZONE_KINDS:
            raise ValueError(f"{where}.properties.kind: must be one of {', '.join(ZONE_KINDS)} (got {fkind!r})")
        if kind is not None and fkind != kind:
            raise ValueError(f"{where}.properties.kind: {fkind!r} contradicts the file's kind {kind!r}")
        if not isinstance(geom, dict) or geom.get("type") not in ("Polygon", "MultiPolygon"):
            raise ValueError(f"{where}.geometry: must be a Polygon or MultiPolygon")
        coords = geom.get("coordinates")
        polys = [coords] if geom["type"] == "Polygon" else coords
        if not isinstance(polys, list) or not polys:
            raise ValueError(f"{where}.geometry.coordinates: empty")
        polygons = []
        for j, poly in enumerate(polys):
            if not isinstance(poly, list) or not poly:
                raise ValueError(f"{where}.geometry.coordinates: polygon {j} has no rings")
            rings = [_ring(r, f"{where}.geometry.coordinates") for r in poly]
            polygons.append((rings[0], tuple(rings[1:])))
        allpts = np.vstack([p[0] for p in polygons])
        bbox = (float(allpts[:, 0].min()), float(allpts[:, 1].min()), float(allpts[:, 0].max()),
                float(allpts[:, 1].max()))
        zones.append(Zone(str(zone_id), str(fkind), tuple(polygons), bbox))
    return zones
