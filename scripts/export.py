#!/usr/bin/env python3
"""Export a trained checkpoint to ONNX for the car and check it against the ``.pt`` on validation images.

    .venv/bin/python scripts/export.py --weights runs/patrol13-cpu/weights/last.pt

Writes ``models/patrol-detector.onnx`` (static input, imgsz as trained, opset 17 so TensorRT 8.5+ on the Jetson
reads it) with ultralytics' metadata (``names``, ``imgsz``, ``stride``) plus ``trained_categories`` (JSON list of
the categories that had training boxes). Then runs the parity check: the same letterboxed image through the
``.pt`` (ultralytics predict) and the ``.onnx`` (onnxruntime); every box must have a partner of the same class
with IoU > 0.95 and score difference < 0.02. Exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")  # never pip-install onnxslim & co. at run time

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from vehicle.categories import Taxonomy  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "models" / "patrol-detector.onnx"
DEFAULT_DATA = REPO_ROOT / "datasets" / "patrol13" / "data.yaml"
OPSET = 17
MAX_MODEL_MB = 15.0


class ExportError(ValueError):
    """Export or parity failed; the message says which file or check."""


@dataclass(frozen=True)
class BoxSet:
    """Detections on one letterboxed image: xyxy (n,4) pixels of the model input, score (n,), class_id (n,)."""

    xyxy: np.ndarray
    score: np.ndarray
    class_id: np.ndarray


def letterbox(image_bgr: np.ndarray, size: int) -> np.ndarray:
    """Resize keeping aspect and pad to ``size`` x ``size`` with grey 114, centred (as ultralytics does)."""
    h, w = image_bgr.shape[:2]
    r = min(size / h, size / w)
    nw, nh = round(w * r), round(h * r)
    resized = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nw, nh) != (w, h) else image_bgr
    top, left = round((size - nh) / 2 - 0.1), round((size - nw) / 2 - 0.1)
    out = np.full((size, size, 3), 114, dtype=np.uint8)
    out[top:top + nh, left:left + nw] = resized
    return out


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (n,4 xyxy) with every box in ``b`` (m,4 xyxy)."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(xyxy: np.ndarray, score: np.ndarray, iou_thr: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-score, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        if order.size == 1:
            break
        ious = iou_matrix(xyxy[i:i + 1], xyxy[order[1:]])[0]
        order = order[1:][ious <= iou_thr]
    return np.array(keep, dtype=int)


def decode_onnx(output: np.ndarray, conf: float, iou_thr: float, size: int) -> BoxSet:
    """Raw YOLO11 output (1, 4+nc, anchors) -> class-aware NMS boxes clipped to the ``size`` x ``size`` input,
    as ultralytics' own postprocessing does."""
    pred = output[0].T  # (anchors, 4+nc)
    scores = pred[:, 4:]
    cls = scores.argmax(1)
    best = scores[np.arange(len(cls)), cls]
    m = best > conf
    cxcywh, best, cls = pred[m, :4], best[m], cls[m]
    xyxy = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], axis=1)
    offset = cls[:, None].astype(np.float32) * 7680.0  # separate classes so NMS never crosses them
    keep = nms(xyxy + offset, best, iou_thr)
    return BoxSet(np.clip(xyxy[keep], 0, size), best[keep], cls[keep])


def run_onnx(session, image_sq_bgr: np.ndarray, conf: float, iou_thr: float) -> BoxSet:
    """One letterboxed BGR image through the ONNX session."""
    x = image_sq_bgr[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    out = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x)})[0]
    return decode_onnx(out, conf, iou_thr, image_sq_bgr.shape[0])


def compare(pt: BoxSet, ox: BoxSet, conf: float, iou_min: float, score_tol: float) -> list[str]:
    """Problems between two box sets; boxes whose score is within ``score_tol`` of ``conf`` may be unpaired."""
    problems = []
    for a, b, tag in ((pt, ox, "pt"), (ox, pt, "onnx")):
        ious = iou_matrix(a.xyxy, b.xyxy) if len(a.score) and len(b.score) else np.zeros((len(a.score), 0))
        for i in range(len(a.score)):
            same = np.nonzero(b.class_id == a.class_id[i])[0]
            j = same[np.argmax(ious[i, same])] if same.size else None
            ok = j is not None and ious[i, j] > iou_min and abs(a.score[i] - b.score[j]) < score_tol
            if not ok and a.score[i] - conf >= score_tol:
                detail = "no partner" if j is None else f"IoU {ious[i, j]:.3f}, score {a.score[i]:.3f} vs " \
                                                          f"{b.score[j]:.3f}"
                problems.append(f"{tag} box class {a.class_id[i]} score {a.score[i]:.3f}: {detail}")
    return problems


def val_images(data_yaml: Path, n: int) -> list[Path]:
    """The first ``n`` validation images (sorted, spread across sources) of the dataset."""
    import yaml

    if not data_yaml.is_file():
        raise ExportError(f"{data_yaml}: dataset yaml not found (run scripts/build_dataset.py)")
    doc = yaml.safe_load(data_yaml.read_text())
    folder = Path(doc["path"]) / doc["val"]
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not files:
        raise ExportError(f"{folder}: no validation images")
    step = max(1, len(files) // n)
    return files[::step][:n]


def trained_categories(data_yaml: Path, names: list[str]) -> list[str]:
    """Taxonomy names that have at least one box in the dataset's train labels."""
    import yaml

    doc = yaml.safe_load(data_yaml.read_text())
    seen: set[int] = set()
    for lbl in (Path(doc["path"]) / "labels" / "train").glob("*.txt"):
        seen.update(int(line.split()[0]) for line in lbl.read_text().splitlines() if line.strip())
    return [n for i, n in enumerate(names) if i in seen]


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file (ties the shipped .onnx to the checkpoint it came from)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export(weights: Path, out: Path, data_yaml: Path) -> Path:
    """Export ``weights`` to ONNX at ``out``, check its metadata against the taxonomy; returns ``out``."""
    import onnx
    from ultralytics import YOLO

    from scripts.ultralytics_offline import forbid_downloads

    forbid_downloads()

    if not weights.is_file():
        raise ExportError(f"{weights}: checkpoint not found")
    model = YOLO(str(weights))
    imgsz = int(model.ckpt["train_args"]["imgsz"]) if getattr(model, "ckpt", None) else 640
    simplify = importlib.util.find_spec("onnxslim") is not None
    produced = Path(model.export(format="onnx", imgsz=imgsz, opset=OPSET, dynamic=False, simplify=simplify,
                                 device="cpu"))
    out.parent.mkdir(parents=True, exist_ok=True)
    if produced.resolve() != out.resolve():
        shutil.copyfile(produced, out)
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    taxonomy = Taxonomy.load()
    names = [v for _, v in sorted(ast.literal_eval(meta.get("names", "{}")).items())]
    if names != taxonomy.names:
        raise ExportError(f"{out}: metadata names {names} differ from the taxonomy {taxonomy.names}")
    covered = trained_categories(data_yaml, names) if data_yaml.is_file() else []
    for entry in proto.metadata_props:
        if entry.key == "description":  # ultralytics writes this machine's absolute dataset path there
            entry.value = f"patrol detector from {weights.name}, trained on the patrol13 dataset"
    for key, value in (("trained_categories", json.dumps(covered)), ("source_weights_sha256", sha256(weights))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out))
    size_mb = out.stat().st_size / 1e6
    if size_mb > MAX_MODEL_MB:
        raise ExportError(f"{out}: {size_mb:.1f} MB exceeds {MAX_MODEL_MB} MB")
    print(f"exported {out} ({size_mb:.1f} MB, opset {OPSET}, imgsz {imgsz}, simplify={simplify}); "
          f"metadata keys {sorted(k.key for k in proto.metadata_props)}; trained categories {covered}")
    return out


def parity(weights: Path, onnx_path: Path, images: list[Path], conf: float = 0.1, iou_thr: float = 0.7,
           iou_min: float = 0.95, score_tol: float = 0.02) -> tuple[int, list[str]]:
    """Compare ``.pt`` and ``.onnx`` detections on ``images``; returns (boxes compared, problems)."""
    import onnxruntime as ort
    from ultralytics import YOLO

    from scripts.ultralytics_offline import forbid_downloads

    forbid_downloads()

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    size = int(session.get_inputs()[0].shape[2])
    model = YOLO(str(weights))
    n_boxes, problems = 0, []
    for path in images:
        img = cv2.imread(str(path))
        if img is None:
            raise ExportError(f"{path}: not a readable image")
        sq = letterbox(img, size)  # both models see the very same square input
        r = model.predict(sq, imgsz=size, conf=conf, iou=iou_thr, device="cpu", verbose=False)[0].boxes
        pt = BoxSet(r.xyxy.numpy(), r.conf.numpy(), r.cls.numpy().astype(int))
        ox = run_onnx(session, sq, conf, iou_thr)
        n_boxes += len(pt.score)
        problems += [f"{path.name}: {p}" for p in compare(pt, ox, conf, iou_min, score_tol)]
    return n_boxes, problems


def main() -> None:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=REPO_ROOT / "runs" / "patrol13-cpu" / "weights" / "last.pt")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=50, help="validation images for the parity check")
    ap.add_argument("--conf", type=float, default=0.1, help="score threshold of the parity check")
    ap.add_argument("--skip-export", action="store_true", help="only run the parity check on --out")
    args = ap.parse_args()
    try:
        if not args.skip_export:
            export(args.weights, args.out, args.data)
        n_boxes, problems = parity(args.weights, args.out, val_images(args.data, args.n), conf=args.conf)
    except ExportError as exc:
        sys.exit(f"export: {exc}")
    if n_boxes == 0:
        problems.append("the .pt found no box at all: nothing was compared (lower --conf)")
    verdict = "PASS" if not problems else "FAIL"
    print(f"parity {verdict}: {args.n} val images, {n_boxes} .pt boxes (conf >= {args.conf}), "
          f"{len(problems)} mismatches (IoU > 0.95 and |score diff| < 0.02 required)")
    for p in problems[:20]:
        print("  " + p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
