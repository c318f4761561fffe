"""The shipped ONNX detector (models/patrol-yolo11n.onnx) and scripts/export.py's parity check."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.conftest import REPO_ROOT, shared_path
from vehicle.categories import Taxonomy

MODEL = REPO_ROOT / "models" / "patrol-yolo11n.onnx"
WEIGHTS = REPO_ROOT / "runs" / "patrol13-cpu" / "weights" / "last.pt"

_spec = importlib.util.spec_from_file_location("patrol_export", REPO_ROOT / "scripts" / "export.py")
export = importlib.util.module_from_spec(_spec)
sys.modules["patrol_export"] = export
_spec.loader.exec_module(export)


@pytest.fixture(scope="module")
def meta() -> dict[str, str]:
    assert MODEL.is_file(), f"{MODEL} is the shipped model: run scripts/export.py"
    return {p.key: p.value for p in onnx.load(str(MODEL)).metadata_props}


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])


def test_model_is_small_enough_for_the_repo() -> None:
    assert MODEL.stat().st_size < 15e6


def test_metadata_names_are_the_taxonomy_in_id_order(meta: dict[str, str]) -> None:
    names = ast.literal_eval(meta["names"])
    assert [names[i] for i in sorted(names)] == Taxonomy.load().names
    assert set(json.loads(meta["trained_categories"])) <= set(Taxonomy.load().names)


def test_input_and_output_shapes_match_metadata(meta: dict[str, str], session: ort.InferenceSession) -> None:
    size = ast.literal_eval(meta["imgsz"])
    shape = session.get_inputs()[0].shape
    assert shape == [1, 3, size[0], size[1]]
    x = np.zeros(shape, np.float32)
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    anchors = sum((size[0] // s) * (size[1] // s) for s in (8, 16, 32))  # YOLO11 heads at strides 8/16/32
    assert out.shape == (1, 4 + len(Taxonomy.load().names), anchors)


def test_runs_on_a_real_frame(session: ort.InferenceSession) -> None:
    img = cv2.imread(str(next(iter(sorted(shared_path("imagery", "road-br", "images").glob("*.jpg"))))))
    size = session.get_inputs()[0].shape[2]
    sq = export.letterbox(img, size)
    assert sq.shape == (size, size, 3)
    boxes = export.run_onnx(session, sq, conf=0.001, iou_thr=0.7)
    assert np.isfinite(boxes.xyxy).all()
    assert ((boxes.score > 0.001) & (boxes.score <= 1.0)).all()


def test_compare_flags_a_moved_box_and_accepts_a_copy() -> None:
    a = export.BoxSet(np.array([[10.0, 10, 50, 50]]), np.array([0.8]), np.array([3]))
    assert export.compare(a, a, conf=0.1, iou_min=0.95, score_tol=0.02) == []
    moved = export.BoxSet(np.array([[12.0, 10, 52, 50]]), np.array([0.8]), np.array([3]))  # IoU 38/42 = 0.905
    assert len(export.compare(a, moved, conf=0.1, iou_min=0.95, score_tol=0.02)) == 2
    other_cls = export.BoxSet(a.xyxy, a.score, np.array([4]))
    assert len(export.compare(a, other_cls, conf=0.1, iou_min=0.95, score_tol=0.02)) == 2


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    xyxy = np.array([[0.0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]])
    keep = export.nms(xyxy, np.array([0.5, 0.9, 0.4]), iou_thr=0.7)
    assert keep.tolist() == [1, 2]


@pytest.mark.slow
def test_pt_and_onnx_agree_on_validation_images() -> None:
    if importlib.util.find_spec("ultralytics") is None:
        pytest.skip("ultralytics not installed: the .pt side of the parity check needs it (pip install .[train])")
    if not WEIGHTS.is_file():
        pytest.skip(f"{WEIGHTS} absent (training checkpoints stay out of git): run scripts/train.py first")
    shipped_from = {p.key: p.value for p in onnx.load(str(MODEL)).metadata_props}.get("source_weights_sha256")
    if export.sha256(WEIGHTS) != shipped_from:
        pytest.skip(f"{WEIGHTS} is not the checkpoint the shipped model was exported from (retrained since?)")
    data = REPO_ROOT / "datasets" / "patrol13" / "data.yaml"
    if not data.is_file():
        pytest.skip(f"{data} absent: run scripts/build_dataset.py")
    n_boxes, problems = export.parity(WEIGHTS, MODEL, export.val_images(data, 20), conf=0.02)
    assert n_boxes > 0  # an empty comparison would prove nothing
    assert problems == []
