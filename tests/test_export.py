"""The shipped ONNX detector (models/patrol-detector.onnx) and scripts/export.py's parity check."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.conftest import REPO_ROOT, shared_path
from vehicle.categories import Taxonomy

MODEL = REPO_ROOT / "models" / "patrol-detector.onnx"
WEIGHTS = REPO_ROOT / "models" / "patrol-detector.pt"  # the checkpoint the shipped .onnx was exported from

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


def test_metadata_holds_no_path_of_the_machine_it_was_exported_on(meta: dict[str, str]) -> None:
    assert not [k for k, v in meta.items() if "/work/" in v or str(REPO_ROOT) in v or "/home/" in v]


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


def test_the_shipped_onnx_names_the_shipped_checkpoint_as_its_source(meta: dict[str, str]) -> None:
    assert WEIGHTS.is_file(), f"{WEIGHTS}: the checkpoint is shipped beside the .onnx (scripts/train.py --ship)"
    assert meta["source_weights_sha256"] == export.sha256(WEIGHTS)


@pytest.mark.slow
def test_pt_and_onnx_agree_on_validation_images() -> None:
    if importlib.util.find_spec("ultralytics") is None:
        pytest.skip("ultralytics not installed: the .pt side of the parity check needs it (pip install .[train])")
    garbage = sorted(shared_path("imagery", "garbage-cn", "images", "valid").glob("*.jpg"))
    road = sorted(shared_path("imagery", "road-br", "images").glob("*_RAW.jpg"))
    images = garbage[::max(1, len(garbage) // 10)][:10] + road[::max(1, len(road) // 10)][:10]
    n_boxes, problems = export.parity(WEIGHTS, MODEL, images, conf=0.02)
    assert n_boxes > 0  # an empty comparison would prove nothing
    assert problems == []


@pytest.mark.slow
def test_the_shipped_checkpoint_runs_as_a_detector_in_a_fresh_process(tmp_path: Path, meta: dict[str, str]) -> None:
    """`detector.model_file = "models/patrol-detector.pt"` works from any folder (its backbone layer is pickled by
    module path) and reports the categories of the ONNX exported from it, not all 13; a copy without that ONNX
    beside it cannot tell and says so."""
    if importlib.util.find_spec("ultralytics") is None:
        pytest.skip("ultralytics not installed: the .pt backend needs it (pip install .[train])")
    copy = tmp_path / "alone.pt"
    copy.write_bytes(WEIGHTS.read_bytes())
    code = ("import sys, json\nfrom vehicle.detector import load_detector\nimport numpy as np\n"
            "out = {}\nfor f in sys.argv[1:]:\n    d = load_detector(f)\n"
            "    out[f] = [d.covered, len(d.detect(np.zeros((480, 848, 3), np.uint8)).score)]\n"
            "print(json.dumps(out))")
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONPATH": ""}
    r = subprocess.run([sys.executable, "-c", code, str(WEIGHTS), str(copy)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out[str(WEIGHTS)][0] == json.loads(meta["trained_categories"])
    assert out[str(copy)][0] is None and "cannot tell which categories" in r.stderr


def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path: Path) -> None:
    if importlib.util.find_spec("ultralytics") is None:
        pytest.skip("ultralytics not installed: the .pt backend needs it (pip install .[train])")
    from vehicle.detector import ModelError, load_detector

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match=r"junk\.pt: not a loadable ultralytics checkpoint") as exc:
        load_detector(junk)
    assert "\n" not in str(exc.value)
