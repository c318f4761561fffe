"""Metrics for `patrol eval`: events against ground-truth objects, and detections against labelled boxes.

Event metrics (`match_events`, `event_metrics`): events and real objects are matched one to one within a
radius, same category only, greedily by distance (nearest pairs first). An unmatched event within the radius
of an already matched object of its category is a *duplicate* (an extra event for one object); any other
unmatched event is a *false event*.

* precision = matched events / all events (duplicates and false events both count against it)
* recall = matched objects / real objects
* duplicate rate = duplicates / (matched events + duplicates): the share of events about a real object
  that were extra
* location error = distance from a matched event to its object, metres

Detection metrics (`coco_ap`, `confusion_matrix`) follow the COCO definitions: per image and class the
detections are taken by descending score (at most ``max_dets``), each matched to the unmatched ground-truth
box of highest IoU at or above the threshold; precision is made monotone and sampled at 101 recall points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vehicle.geometry import wgs84_to_enu

IOU_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


# -- events ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointSet:
    """Points with a category each: events or real objects (parallel arrays)."""

    ids: tuple[str, ...]
    category: tuple[str, ...]
    lat_deg: np.ndarray
    lon_deg: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.category) != n or self.lat_deg.shape != (n,) or self.lon_deg.shape != (n,):
            raise ValueError(f"PointSet arrays disagree: {n} ids, {len(self.category)} categories, "
                             f"lat {self.lat_deg.shape}, lon {self.lon_deg.shape}")

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class EventMatch:
    """The outcome of matching events to objects.

    Attributes:
        object_of_event: for each event, the index of its object (matched or duplicate) or -1 (false event).
        duplicate: for each event, True when it is an extra event for an already matched object.
        event_of_object: for each object, the index of its matched event or -1 (missed).
        error_m: for each object, the distance to its matched event (NaN when missed).
    """

    object_of_event: np.ndarray
    duplicate: np.ndarray
    event_of_object: np.ndarray
    error_m: np.ndarray


def _enu(lat0: float, lon0: float, p: PointSet) -> np.ndarray:
    e, n = wgs84_to_enu(lat0, lon0, p.lat_deg, p.lon_deg)
    return np.column_stack([np.atleast_1d(e), np.atleast_1d(n)]).reshape(-1, 2)


def match_events(events: PointSet, objects: PointSet, radius_m: float) -> EventMatch:
    """Match events to real objects of the same category within ``radius_m``, nearest pairs first.

    Args:
        events: the published events.
        objects: the ground truth.
        radius_m: the farthest an event may be from its object.
    """
    ne, no = len(events), len(objects)
    object_of_event = np.full(ne, -1, np.int64)
    duplicate = np.zeros(ne, bool)
    event_of_object = np.full(no, -1, np.int64)
    error = np.full(no, np.nan)
    if ne == 0 or no == 0:
        return EventMatch(object_of_event, duplicate, event_of_object, error)
    lat0, lon0 = float(objects.lat_deg[0]), float(objects.lon_deg[0])
    pe, po = _enu(lat0, lon0, events), _enu(lat0, lon0, objects)
    cats_e, cats_o = np.array(events.category), np.array(objects.category)
    # candidate pairs through a grid (cell = radius), so 10^4 x 10^4 never builds a full distance matrix
    cell = max(radius_m, 1e-3)
    grid: dict[tuple[int, int], list[int]] = {}
    for j, (x, y) in enumerate(np.floor(po / cell).astype(np.int64).tolist()):
        grid.setdefault((x, y), []).append(j)
    pairs_e, pairs_o = [], []
    for i, (x, y) in enumerate(np.floor(pe / cell).astype(np.int64).tolist()):
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in grid.get((x + dx, y + dy), ()):
                    pairs_e.append(i)
                    pairs_o.append(j)
    if not pairs_e:
        return EventMatch(object_of_event, duplicate, event_of_object, error)
    ie, io = np.array(pairs_e), np.array(pairs_o)
    d = np.hypot(*(pe[ie] - po[io]).T)
    ok = (d <= radius_m) & (cats_e[ie] == cats_o[io])
    ie, io, d = ie[ok], io[ok], d[ok]
    order = np.lexsort((io, ie, d))  # ties broken by index: the same input always matches the same way
    taken_e = np.zeros(ne, bool)
    for k in order:
        i, j = ie[k], io[k]
        if taken_e[i] or event_of_object[j] >= 0:
            continue
        taken_e[i] = True
        event_of_object[j] = i
        object_of_event[i] = j
        error[j] = d[k]
    # an unmatched event near a matched object of its category is that object's duplicate
    for k in order:
        i, j = ie[k], io[k]
        if not taken_e[i] and event_of_object[j] >= 0:
            taken_e[i] = True
            object_of_event[i] = j
            duplicate[i] = True
    return EventMatch(object_of_event, duplicate, event_of_object, error)


@dataclass(frozen=True)
class EventScores:
    """Event metrics of one category (or of all: category ``"all"``)."""

    category: str
    objects: int
    events: int
    matched: int
    duplicates: int
    false_events: int
    precision: float
    recall: float
    duplicate_rate: float
    error_median_m: float
    error_p90_m: float
    error_near_median_m: float  # objects that passed within `near_m` of the camera
    near_objects: int

    def as_dict(self) -> dict:
        """Plain numbers for JSON (NaN becomes None)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.__dict__.items()}


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def _pct(values: np.ndarray, q: float) -> float:
    v = values[np.isfinite(values)]
    return float(np.percentile(v, q)) if v.size else math.nan


def event_scores(events: PointSet, objects: PointSet, m: EventMatch, near: np.ndarray,
                 category: str | None = None) -> EventScores:
    """Scores of one category (``None``: all) from a match; ``near`` marks objects close to the camera."""
    ev = np.ones(len(events), bool) if category is None else np.array(events.category) == category
    ob = np.ones(len(objects), bool) if category is None else np.array(objects.category) == category
    matched = int(np.sum(ev & (m.object_of_event >= 0) & ~m.duplicate))
    dups = int(np.sum(ev & m.duplicate))
    false = int(np.sum(ev & (m.object_of_event < 0)))
    found = ob & (m.event_of_object >= 0)
    return EventScores(
        category=category or "all", objects=int(ob.sum()), events=int(ev.sum()), matched=matched,
        duplicates=dups, false_events=false, precision=_ratio(matched, int(ev.sum())),
        recall=_ratio(int(found.sum()), int(ob.sum())), duplicate_rate=_ratio(dups, matched + dups),
        error_median_m=_pct(m.error_m[found], 50), error_p90_m=_pct(m.error_m[found], 90),
        error_near_median_m=_pct(m.error_m[found & near], 50), near_objects=int((ob & near).sum()))


def distance_to_track_m(objects: PointSet, track_lat: np.ndarray, track_lon: np.ndarray) -> np.ndarray:
    """Shortest distance from each object to a polyline (the driven track), metres."""
    if len(objects) == 0 or track_lat.size == 0:
        return np.full(len(objects), np.inf)
    lat0, lon0 = float(track_lat[0]), float(track_lon[0])
    te, tn = wgs84_to_enu(lat0, lon0, track_lat, track_lon)
    t = np.column_stack([np.atleast_1d(te), np.atleast_1d(tn)])
    p = _enu(lat0, lon0, objects)
    if t.shape[0] == 1:
        return np.hypot(*(p - t[0]).T)
    a, b = t[:-1], t[1:]
    ab = b - a
    len2 = np.maximum((ab**2).sum(axis=1), 1e-12)
    out = np.empty(len(objects))
    for k0 in range(0, p.shape[0], 256):  # chunks keep the (objects x segments) block small
        q = p[k0:k0 + 256, None, :]
        u = np.clip(((q - a) * ab).sum(axis=2) / len2, 0.0, 1.0)
        closest = a + u[..., None] * ab
        out[k0:k0 + 256] = np.sqrt(((q - closest) ** 2).sum(axis=2)).min(axis=1)
    return out


def track_length_km(lat: np.ndarray, lon: np.ndarray, speed_mps: np.ndarray | None = None,
                    min_speed_mps: float = 0.5) -> float:
    """Length of a driven track, km; steps taken while the logged speed is below ``min_speed_mps`` are left
    out (GPS noise at a standstill is not driving)."""
    if lat.size < 2:
        return 0.0
    e, n = wgs84_to_enu(float(lat[0]), float(lon[0]), lat, lon)
    step = np.hypot(np.diff(np.atleast_1d(e)), np.diff(np.atleast_1d(n)))
    if speed_mps is not None:
        moving = np.nan_to_num(speed_mps[1:], nan=min_speed_mps) >= min_speed_mps
        step = step[moving]
    return float(step.sum() / 1000.0)


# -- detections ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageBoxes:
    """Boxes of one image: ground truth (score None) or predictions. Pixels, xyxy."""

    image_id: str
    xyxy: np.ndarray  # (n, 4)
    class_id: np.ndarray  # (n,)
    score: np.ndarray | None = None  # (n,) for predictions

    def __post_init__(self) -> None:
        n = self.class_id.shape[0]
        if self.xyxy.shape != (n, 4) or (self.score is not None and self.score.shape != (n,)):
            raise ValueError(f"{self.image_id}: boxes arrays disagree: xyxy {self.xyxy.shape}, class {n}")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (n, 4) with every box in ``b`` (m, 4), xyxy, COCO style (no +1)."""
    if a.size == 0 or b.size == 0:
        return np.zeros((a.shape[0], b.shape[0]))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclass(frozen=True)
class ClassAP:
    """COCO-style results of one class.

    Attributes:
        class_id: the class.
        gt: ground-truth boxes.
        ap: AP at each IoU threshold of `IOU_THRESHOLDS` (NaN when the class has no ground truth).
        precision_curve: precision at the 101 recall points, IoU 0.50.
        precision: at the score threshold of the best F1 (IoU 0.50).
        recall: at that threshold.
        best_f1_score: that score threshold.
    """

    class_id: int
    gt: int
    ap: np.ndarray
    precision_curve: np.ndarray
    precision: float
    recall: float
    best_f1_score: float
    pr_recall: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    pr_precision: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    @property
    def ap50(self) -> float:
        """AP at IoU 0.50."""
        return float(self.ap[0])

    @property
    def ap50_95(self) -> float:
        """AP averaged over IoU 0.50:0.05:0.95."""
        return float(np.mean(self.ap))


def _match_image(gt: np.ndarray, dt: np.ndarray, iou_thresholds: np.ndarray) -> np.ndarray:
    """(T, n_dt) bool: is each detection (already sorted by score) a true positive at each threshold."""
    tp = np.zeros((iou_thresholds.size, dt.shape[0]), bool)
    if gt.shape[0] == 0 or dt.shape[0] == 0:
        return tp
    ious = box_iou(dt, gt)
    for t, thr in enumerate(iou_thresholds):
        used = np.zeros(gt.shape[0], bool)
        for d in range(dt.shape[0]):
            best, best_iou = -1, min(thr, 1 - 1e-10)
            for g in range(gt.shape[0]):
                if used[g] or ious[d, g] < best_iou:
                    continue
                best, best_iou = g, ious[d, g]
            if best >= 0:
                used[best] = True
                tp[t, d] = True
    return tp


def coco_ap(truth: Sequence[ImageBoxes], predictions: Sequence[ImageBoxes], class_ids: Sequence[int],
            max_dets: int = 100) -> list[ClassAP]:
    """Per-class AP over IoU 0.50:0.05:0.95 with COCO's 101-point interpolation (area range "all").

    Images are matched by ``image_id``; an image with predictions but no truth entry counts as having no
    ground truth. Results agree with pycocotools' ``COCOeval`` (tests/test_metrics.py).
    """
    by_id = {p.image_id: p for p in predictions}
    out = []
    for c in class_ids:
        scores, tps, n_gt = [], [], 0
        image_ids = {t.image_id for t in truth} | set(by_id)
        truth_by_id = {t.image_id: t for t in truth}
        for iid in sorted(image_ids):
            t = truth_by_id.get(iid)
            gt = t.xyxy[t.class_id == c] if t is not None else np.zeros((0, 4))
            n_gt += gt.shape[0]
            p = by_id.get(iid)
            if p is None:
                continue
            sel = p.class_id == c
            dt, sc = p.xyxy[sel], p.score[sel]
            order = np.argsort(-sc, kind="mergesort")[:max_dets]
            dt, sc = dt[order], sc[order]
            scores.append(sc)
            tps.append(_match_image(gt, dt, IOU_THRESHOLDS))
        score = np.concatenate(scores) if scores else np.zeros(0)
        tp = np.concatenate(tps, axis=1) if tps else np.zeros((IOU_THRESHOLDS.size, 0), bool)
        order = np.argsort(-score, kind="mergesort")
        score, tp = score[order], tp[:, order]
        ap = np.full(IOU_THRESHOLDS.size, np.nan)
        curve = np.zeros(RECALL_POINTS.size)
        p_best = r_best = s_best = math.nan
        pr_r = pr_p = np.zeros(0)
        if n_gt > 0:
            for t in range(IOU_THRESHOLDS.size):
                tpc = np.cumsum(tp[t]).astype(np.float64)
                fpc = np.cumsum(~tp[t]).astype(np.float64)
                rc = tpc / n_gt
                pr = tpc / np.maximum(tpc + fpc, np.spacing(1))
                q = np.zeros(RECALL_POINTS.size)
                if pr.size:
                    env = np.maximum.accumulate(pr[::-1])[::-1]  # precision made monotone
                    idx = np.searchsorted(rc, RECALL_POINTS, side="left")
                    valid = idx < env.size
                    q[valid] = env[idx[valid]]
                ap[t] = q.mean()
                if t == 0:
                    curve, pr_r, pr_p = q, rc, pr
                    if pr.size:
                        f1 = 2 * pr * rc / np.maximum(pr + rc, 1e-12)
                        k = int(np.argmax(f1))
                        p_best, r_best, s_best = float(pr[k]), float(rc[k]), float(score[k])
                    else:
                        p_best, r_best, s_best = 0.0, 0.0, math.nan
        out.append(ClassAP(int(c), n_gt, ap, curve, p_best, r_best, s_best, pr_r, pr_p))
    return out


def confusion_matrix(truth: Sequence[ImageBoxes], predictions: Sequence[ImageBoxes], n_classes: int,
                     score_threshold: float = 0.25, iou_threshold: float = 0.5) -> np.ndarray:
    """(n+1, n+1) counts, rows = predicted class, columns = true class; index n is background.

    Matching is class-agnostic and greedy by IoU (highest first): a matched pair counts at (predicted, true),
    an unmatched prediction at (predicted, background), an unmatched true box at (background, true).
    """
    cm = np.zeros((n_classes + 1, n_classes + 1), np.int64)
    by_id = {p.image_id: p for p in predictions}
    ids = {t.image_id for t in truth} | set(by_id)
    truth_by_id = {t.image_id: t for t in truth}
    for iid in sorted(ids):
        t = truth_by_id.get(iid)
        p = by_id.get(iid)
        gt_xyxy = t.xyxy if t is not None else np.zeros((0, 4))
        gt_cls = t.class_id if t is not None else np.zeros(0, np.int64)
        if p is not None:
            keep = p.score >= score_threshold
            dt_xyxy, dt_cls = p.xyxy[keep], p.class_id[keep]
        else:
            dt_xyxy, dt_cls = np.zeros((0, 4)), np.zeros(0, np.int64)
        ious = box_iou(dt_xyxy, gt_xyxy)
        di, gi = np.nonzero(ious >= iou_threshold)
        order = np.argsort(-ious[di, gi], kind="mergesort")
        used_d, used_g = np.zeros(dt_cls.size, bool), np.zeros(gt_cls.size, bool)
        for k in order:
            d, g = di[k], gi[k]
            if used_d[d] or used_g[g]:
                continue
            used_d[d] = used_g[g] = True
            cm[dt_cls[d], gt_cls[g]] += 1
        for d in np.flatnonzero(~used_d):
            cm[dt_cls[d], n_classes] += 1
        for g in np.flatnonzero(~used_g):
            cm[n_classes, gt_cls[g]] += 1
    return cm
