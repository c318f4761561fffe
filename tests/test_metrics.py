"""Event matching and COCO detection metrics: hand-computed cases and a cross-check against pycocotools."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vehicle.geometry import enu_to_wgs84
from vehicle.metrics import (
    ImageBoxes,
    PointSet,
    box_iou,
    coco_ap,
    confusion_matrix,
    distance_to_track_m,
    event_scores,
    match_events,
    track_length_km,
)

LAT0, LON0 = 48.15, 11.55


def _points(prefix: str, cats: list[str], east_north: list[tuple[float, float]]) -> PointSet:
    e = np.array([p[0] for p in east_north], float)
    n = np.array([p[1] for p in east_north], float)
    lat, lon = enu_to_wgs84(LAT0, LON0, e, n)
    return PointSet(tuple(f"{prefix}{i}" for i in range(len(cats))), tuple(cats), np.atleast_1d(lat),
                    np.atleast_1d(lon))


def test_match_events_nearest_first_duplicates_and_false_events():
    objects = _points("o", ["bin", "bin", "garbage"], [(0, 0), (30, 0), (0, 40)])
    events = _points("e", ["bin", "bin", "bin", "garbage", "garbage"],
                     [(1.0, 0.0),    # bin 0, 1 m
                      (0.0, 3.0),    # bin 0 again: duplicate (3 m)
                      (33.0, 4.0),   # bin 1, 5 m
                      (0.0, 0.5),    # a garbage event on the bin: no garbage within 8 m -> false
                      (0.0, 46.0)])  # garbage object, 6 m
    m = match_events(events, objects, radius_m=8.0)
    assert m.object_of_event.tolist() == [0, 0, 1, -1, 2]
    assert m.duplicate.tolist() == [False, True, False, False, False]
    assert m.event_of_object.tolist() == [0, 2, 4]
    assert m.error_m == pytest.approx([1.0, 5.0, 6.0], abs=0.01)
    near = np.array([True, True, False])
    s = event_scores(events, objects, m, near)
    assert (s.events, s.matched, s.duplicates, s.false_events) == (5, 3, 1, 1)
    assert s.precision == pytest.approx(3 / 5)
    assert s.recall == pytest.approx(1.0)
    assert s.duplicate_rate == pytest.approx(1 / 4)
    assert s.error_median_m == pytest.approx(5.0, abs=0.01)
    assert s.error_near_median_m == pytest.approx(3.0, abs=0.01)  # median of 1 and 5
    bins = event_scores(events, objects, m, near, "bin")
    assert (bins.objects, bins.events, bins.matched, bins.duplicates) == (2, 3, 2, 1)


def test_match_prefers_the_nearer_pair_over_event_order():
    objects = _points("o", ["bin", "bin"], [(0, 0), (6, 0)])
    # event 0 is 2 m from object 1 and 4 m from object 0; event 1 is 3 m from object 0 only (9 m from object 1)
    events = _points("e", ["bin", "bin"], [(4.0, 0.0), (-3.0, 0.0)])
    m = match_events(events, objects, radius_m=5.0)
    assert m.object_of_event.tolist() == [1, 0]
    assert m.error_m == pytest.approx([3.0, 2.0], abs=0.01)


def test_match_radius_is_a_hard_limit_and_empty_inputs_work():
    objects = _points("o", ["bin"], [(0, 0)])
    far = _points("e", ["bin"], [(8.5, 0.0)])
    m = match_events(far, objects, radius_m=8.0)
    assert m.object_of_event.tolist() == [-1] and m.event_of_object.tolist() == [-1]
    none = _points("e", [], [])
    s = event_scores(none, objects, match_events(none, objects, 8.0), np.array([True]))
    assert s.recall == 0.0 and math.isnan(s.precision)


def test_distance_to_track_and_length():
    track_e = np.array([0.0, 100.0, 200.0])
    lat, lon = enu_to_wgs84(LAT0, LON0, track_e, np.zeros(3))
    objects = _points("o", ["a", "a", "a"], [(50, 10), (250, 0), (-30, -40)])
    d = distance_to_track_m(objects, np.atleast_1d(lat), np.atleast_1d(lon))
    assert d == pytest.approx([10.0, 50.0, 50.0], abs=0.02)
    assert track_length_km(np.atleast_1d(lat), np.atleast_1d(lon)) == pytest.approx(0.2, abs=1e-4)
    # steps logged at a standstill are not driving
    assert track_length_km(np.atleast_1d(lat), np.atleast_1d(lon), np.array([5.0, 0.1, 5.0])) == pytest.approx(
        0.1, abs=1e-4)


def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float)
    assert box_iou(a, b)[0] == pytest.approx([1.0, 50 / 150, 0.0])


def _img(iid: str, boxes: list[list[float]], cls: list[int], score: list[float] | None = None) -> ImageBoxes:
    return ImageBoxes(iid, np.array(boxes, float).reshape(-1, 4), np.array(cls, np.int64),
                      None if score is None else np.array(score, float))


def test_coco_ap_hand_computed():
    truth = [_img("a", [[0, 0, 10, 10]], [0])]
    # a false positive scored above the true positive: precision 1/2 at recall 1 -> AP 0.5 at every IoU
    preds = [_img("a", [[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0], [0.6, 0.9])]
    r = coco_ap(truth, preds, [0])[0]
    assert r.ap50 == pytest.approx(0.5) and r.ap50_95 == pytest.approx(0.5)
    # the true positive first: AP 1
    preds = [_img("a", [[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0], [0.9, 0.6])]
    r = coco_ap(truth, preds, [0])[0]
    assert r.ap50 == pytest.approx(1.0) and r.precision == 1.0 and r.recall == 1.0 and r.best_f1_score == 0.9
    # a box of IoU 0.68 counts at 0.50..0.65 (4 of 10 thresholds)
    preds = [_img("a", [[0, 0, 10, 6.8]], [0], [0.9])]
    r = coco_ap(truth, preds, [0])[0]
    assert r.ap50 == 1.0 and r.ap50_95 == pytest.approx(0.4)


def test_confusion_matrix_counts():
    truth = [_img("a", [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], [0, 1, 1])]
    preds = [_img("a", [[0, 0, 10, 10], [20, 0, 30, 10], [60, 0, 70, 10], [40, 0, 50, 10]], [0, 0, 1, 1],
                  [0.9, 0.8, 0.7, 0.1])]  # the last is below the 0.25 threshold
    cm = confusion_matrix(truth, preds, 2)
    expected = np.array([[1, 1, 0],   # predicted 0: true 0, true 1 (misclassified)
                         [0, 0, 1],   # predicted 1 on background
                         [0, 1, 0]])  # true 1 missed
    assert cm.tolist() == expected.tolist()


def _synthetic_set(rng: np.random.Generator, n_images: int = 40, n_classes: int = 3):
    """Ground truth and noisy predictions: shifted copies, misses, false boxes, wrong classes."""
    truth, preds = [], []
    for i in range(n_images):
        k = int(rng.integers(0, 6))
        xy = rng.uniform(0, 500, (k, 2))
        wh = rng.uniform(10, 120, (k, 2))
        gt = np.column_stack([xy, xy + wh])
        gcls = rng.integers(0, n_classes, k)
        keep = rng.random(k) > 0.2
        shift = rng.normal(0, 0.08, (k, 4)) * np.repeat(wh, 2, axis=1)
        dt = (gt + shift)[keep]
        dt = np.column_stack([np.minimum(dt[:, :2], dt[:, 2:]), np.maximum(dt[:, :2], dt[:, 2:])])  # valid boxes
        dcls = np.where(rng.random(k) < 0.1, rng.integers(0, n_classes, k), gcls)[keep]
        nf = int(rng.integers(0, 4))
        fxy = rng.uniform(0, 500, (nf, 2))
        fp = np.column_stack([fxy, fxy + rng.uniform(10, 80, (nf, 2))])
        dt = np.vstack([dt, fp])
        dcls = np.concatenate([dcls, rng.integers(0, n_classes, nf)])
        score = np.round(rng.uniform(0.05, 1.0, dt.shape[0]), 6)
        truth.append(ImageBoxes(f"img{i}", gt, gcls))
        preds.append(ImageBoxes(f"img{i}", dt, dcls.astype(np.int64), score))
    return truth, preds


@pytest.mark.parametrize("seed", [3, 7, 11])
def test_coco_ap_agrees_with_pycocotools(seed):
    coco_mod = pytest.importorskip("pycocotools.coco", reason="pycocotools (dev extra) not installed")
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(seed)
    truth, preds = _synthetic_set(rng)
    n_classes = 3
    images = [{"id": i, "width": 640, "height": 640} for i in range(len(truth))]
    anns, dets = [], []
    for i, (t, p) in enumerate(zip(truth, preds, strict=True)):
        for b, c in zip(t.xyxy, t.class_id, strict=True):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c) + 1, "iscrowd": 0,
                         "bbox": [b[0], b[1], w, h], "area": w * h})
        for b, c, s in zip(p.xyxy, p.class_id, p.score, strict=True):
            dets.append({"image_id": i, "category_id": int(c) + 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                         "score": float(s)})
    gt = coco_mod.COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": c + 1, "name": str(c)} for c in range(n_classes)]}
    gt.createIndex()
    dt = gt.loadRes(dets)
    ours = coco_ap(truth, preds, range(n_classes))
    for c in range(n_classes):
        ev = COCOeval(gt, dt, "bbox")
        ev.params.catIds = [c + 1]
        ev.params.areaRng = [ev.params.areaRng[0]]  # "all" only: we do not split by area
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
        prec = ev.eval["precision"][:, :, 0, 0, -1]  # T x R, class c, area all, maxDets 100
        ref_ap = np.where(prec > -1, prec, np.nan).mean(axis=1)
        assert ours[c].ap == pytest.approx(ref_ap, abs=0.01)
        assert ours[c].ap50 == pytest.approx(ref_ap[0], abs=0.01)
        assert ours[c].ap50_95 == pytest.approx(float(np.mean(ref_ap)), abs=0.01)
        assert ours[c].precision_curve == pytest.approx(prec[0], abs=0.01)
    assert all(0.2 < r.ap50 < 0.95 for r in ours)  # a set that tests something: neither trivial nor hopeless
