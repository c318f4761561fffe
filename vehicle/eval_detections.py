"""``patrol eval detections``: a model (or saved predictions) on YOLO-labelled images, COCO metrics.

Labels are YOLO txt (``cls cx cy w h``, normalised), one file per image in the ``labels`` folder beside
``images`` (ultralytics' layout) or ``--labels``. Predictions come from an ONNX model run with
`vehicle.detector.OnnxDetector` at a score threshold of 0.001 (as for mAP), or from one txt per image with a
score column (``cls cx cy w h score``, as ``yolo predict save_txt save_conf`` writes).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from vehicle.evaluate import EvalError, clean_json, make_out_folder, write_json
from vehicle.report import Progress

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


MAX_CLASSES = 1000  # without names, ids above this are a broken file, not classes (the matrix is n x n)


def _check_yolo_row(row: list[float], where: str) -> list[float]:
    """A label row as ultralytics accepts it: an integer class id, a box inside the image in normalised
    coordinates (a little slack for rounding), and a score in [0, 1]."""
    cls, cx, cy, w, h = row[:5]
    if not all(math.isfinite(v) for v in row):
        raise EvalError(f"{where}: not finite numbers")
    if not (cls >= 0 and cls == int(cls)):
        raise EvalError(f"{where}: class id {row[0]:g} is not a non-negative integer")
    if cls >= MAX_CLASSES:
        raise EvalError(f"{where}: class id {row[0]:g} is not below {MAX_CLASSES}")
    if not (0 < w <= 1.001 and 0 < h <= 1.001):
        raise EvalError(f"{where}: box width/height {w:g} {h:g} not in (0, 1] (normalised to the image)")
    if not (-0.001 <= cx - w / 2 and cx + w / 2 <= 1.001 and -0.001 <= cy - h / 2 and cy + h / 2 <= 1.001):
        raise EvalError(f"{where}: box centre {cx:g} {cy:g} size {w:g} {h:g} reaches outside the image")
    if len(row) == 6 and not 0 <= row[5] <= 1:
        raise EvalError(f"{where}: score {row[5]:g} not in [0, 1]")
    return row


def _read_yolo_txt(path: Path, size_wh: tuple[int, int], with_score: bool) -> tuple[np.ndarray, ...]:
    """A YOLO txt file (``cls cx cy w h [score]``, normalised) as pixel xyxy, class ids and scores."""
    rows = []
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise EvalError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        for lineno, line in enumerate(text.splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            want = 6 if with_score else 5
            if len(parts) != want:  # more is a segmentation polygon, not a box
                fields = "cls cx cy w h" + (" score" if with_score else "")
                raise EvalError(f"{path}:{lineno}: expected {want} numbers ({fields}), got {len(parts)}")
            try:
                row = [float(v) for v in parts[:want]]
            except ValueError:
                raise EvalError(f"{path}:{lineno}: not numbers: {line.strip()!r}") from None
            rows.append(_check_yolo_row(row, f"{path}:{lineno}"))
    a = np.array(rows, float).reshape(-1, 6 if with_score else 5)
    w, h = size_wh
    xyxy = np.column_stack([(a[:, 1] - a[:, 3] / 2) * w, (a[:, 2] - a[:, 4] / 2) * h,
                            (a[:, 1] + a[:, 3] / 2) * w, (a[:, 2] + a[:, 4] / 2) * h])
    return xyxy, a[:, 0].astype(np.int64), (a[:, 5] if with_score else np.ones(a.shape[0]))


def _check_named(path: Path, class_ids: np.ndarray, names: list[str] | None) -> None:
    """With names given (--names, --data or the model's), a class id past them is a wrong file or wrong names."""
    if names and class_ids.size and int(class_ids.max()) >= len(names):
        raise EvalError(f"{path}: class id {int(class_ids.max())} but only {len(names)} class names "
                        "(--names / --data / the model's)")


def _labels_dir_for(images: Path) -> Path:
    """Ultralytics' convention: .../images/... -> .../labels/..."""
    parts = list(images.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return images.parent / "labels"


def eval_detections(images_dir: Path, out_dir: Path, names: list[str] | None = None, labels_dir: Path | None = None,
                    model: Path | None = None, predictions_dir: Path | None = None, max_dets: int = 100,
                    confusion_score: float = 0.25, confusion_iou: float = 0.5, progress: bool = True) -> dict:
    """Score a model (or saved YOLO-txt predictions with scores) on YOLO-labelled images; write the report.

    Args:
        images_dir: the images.
        out_dir: where report.html and metrics.json go.
        names: class names by id (default: the model's, or "0", "1", ...).
        labels_dir: the YOLO label files (default: the ``labels`` folder beside ``images``).
        model: an ONNX model run with `vehicle.detector.OnnxDetector` (score threshold 0.001, as for mAP).
        predictions_dir: instead of a model, one ``cls cx cy w h score`` txt per image.
        max_dets: detections kept per image and class (COCO: 100).
        confusion_score: score threshold of the confusion matrix.
        confusion_iou: IoU threshold of the confusion matrix.
        progress: show a progress bar.
    """
    import cv2

    from vehicle.metrics import ImageBoxes, coco_ap, confusion_matrix
    from vehicle.report import write_detections_report

    if (model is None) == (predictions_dir is None):
        raise EvalError("detections: give exactly one of --model or --predictions")
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
        if images_dir.is_dir() else []
    if not files:
        raise EvalError(f"{images_dir}: no images found")
    labels_dir = labels_dir or _labels_dir_for(images_dir)
    detector = None
    if model is not None:
        from vehicle.detector import OnnxDetector

        detector = OnnxDetector(model, score_threshold=0.001, iou_threshold=0.7, max_detections=300)
        if names and len(names) != len(detector.names):  # every class id would be misnamed in the report
            raise EvalError(f"{model}: the model has {len(detector.names)} classes but {len(names)} names were given "
                            "(--names / --data)")
        names = names or list(detector.names)
    truth, preds = [], []
    bar = Progress("eval detections", len(files), progress)
    for k, f in enumerate(files):
        image = cv2.imread(str(f))
        if image is None:
            raise EvalError(f"{f}: not a readable image")
        size = (image.shape[1], image.shape[0])
        xyxy, cls, _ = _read_yolo_txt(labels_dir / f"{f.stem}.txt", size, False)
        _check_named(labels_dir / f"{f.stem}.txt", cls, names)
        truth.append(ImageBoxes(f.stem, xyxy, cls))
        if detector is not None:
            d = detector.detect(image)
            preds.append(ImageBoxes(f.stem, d.xyxy.astype(float), d.class_id.astype(np.int64),
                                    d.score.astype(float)))
        else:
            pxy, pcls, psc = _read_yolo_txt(predictions_dir / f"{f.stem}.txt", size, True)
            _check_named(predictions_dir / f"{f.stem}.txt", pcls, names)
            preds.append(ImageBoxes(f.stem, pxy, pcls, psc))
        bar.update(k + 1)
    bar.close()
    n_cls = 1 + max([int(t.class_id.max()) for t in truth if t.class_id.size] +
                    [int(p.class_id.max()) for p in preds if p.class_id.size] + [len(names or []) - 1, 0])
    names = list(names or []) + [str(i) for i in range(len(names or []), n_cls)]
    results = coco_ap(truth, preds, range(n_cls), max_dets)
    cm = confusion_matrix(truth, preds, n_cls, confusion_score, confusion_iou)
    with_gt = [r for r in results if r.gt]
    classes = [{"id": r.class_id, "name": names[r.class_id], "labels": r.gt, "precision": r.precision,
                "recall": r.recall, "ap50": r.ap50, "ap50_95": r.ap50_95, "best_f1_score": r.best_f1_score}
               for r in results if r.gt]
    doc = clean_json({
        "kind": "detections", "images": len(files), "boxes": int(sum(r.gt for r in results)),
        "predictions": str(model or predictions_dir), "max_dets": max_dets, "confusion_score": confusion_score,
        "confusion_iou": confusion_iou, "classes": classes,
        "mean": {k: float(np.mean([c[k] for c in classes])) if classes else None
                 for k in ("precision", "recall", "ap50", "ap50_95")},
        "confusion_matrix": {"labels": [*names, "background"], "rows_predicted_cols_true": cm.tolist()},
        "pr_curves_iou50": {names[r.class_id]: r.precision_curve.round(4).tolist() for r in with_gt},
    })
    make_out_folder(out_dir)
    write_json(out_dir / "metrics.json", doc)
    write_detections_report(out_dir / "report.html", doc, names, results, cm)
    return doc
