"""ONNX detector: exact letterbox round trip, decoding, class-aware NMS, metadata, provider fallback."""

from __future__ import annotations

import numpy as np
import pytest

from tests.onnx_fixtures import constant_yolo_model, yolo_rows
from vehicle.detector import ModelError, OnnxDetector, decode_yolo_output, letterbox, nms_class_aware


@pytest.mark.parametrize("frame_wh", [(853, 479), (1280, 720), (640, 640), (481, 1001), (1920, 1080)])
def test_letterbox_maps_a_drawn_rectangle_back_to_the_pixel(frame_wh):
    w, h = frame_wh
    img = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = int(w * 0.3), int(h * 0.4), int(w * 0.7), int(h * 0.9)
    img[y1:y2, x1:x2] = 255
    padded, lb = letterbox(img, (640, 640))
    assert padded.shape == (640, 640, 3)
    # Find the rectangle in the letterboxed image (where it really landed), then map it back.
    ys, xs = np.where(padded[:, :, 0] > 127)
    found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
    back_x = (found[[0, 2]] - lb.pad_x) / lb.scale_x
    back_y = (found[[1, 3]] - lb.pad_y) / lb.scale_y
    # Linear resampling smears an edge by at most one model pixel: 1/scale frame pixels.
    tol = 1.0 / min(lb.scale_x, lb.scale_y) + 0.5
    assert np.abs(back_x - [x1, x2]).max() <= tol
    assert np.abs(back_y - [y1, y2]).max() <= tol
    # Padding is split evenly (no off-by-padding shift): both sides differ by at most one pixel.
    new_w, new_h = round(w * lb.scale_x), round(h * lb.scale_y)
    assert abs((640 - new_w - lb.pad_x) - lb.pad_x) <= 1
    assert abs((640 - new_h - lb.pad_y) - lb.pad_y) <= 1


def test_decode_rescales_exactly_and_suppresses_per_class():
    # Frame 1280x720 -> 640x640: scale 0.5, pad_y = (640 - 360) / 2 = 140.
    out = yolo_rows(
        [(320, 320, 100, 50), (322, 321, 100, 50), (321, 320, 100, 50), (100, 200, 20, 20)],
        [[0.9, 0.0], [0.8, 0.0], [0.0, 0.7], [0.1, 0.05]],
    )
    _, lb = letterbox(np.zeros((720, 1280, 3), np.uint8), (640, 640))
    assert (lb.scale_x, lb.scale_y, lb.pad_x, lb.pad_y) == (0.5, 0.5, 0.0, 140.0)
    d = decode_yolo_output(out, lb, (1280, 720), 0.25, 0.5, 100)
    # Box 2 (same class, IoU ~0.94 with box 1) is suppressed; box 3 is another class and stays; box 4 is too weak.
    assert sorted(d.class_id.tolist()) == [0, 1]
    i0 = int(np.where(d.class_id == 0)[0][0])
    np.testing.assert_allclose(d.xyxy[i0], [(270) / 0.5, (295 - 140) / 0.5, (370) / 0.5, (345 - 140) / 0.5], atol=1e-3)
    assert d.score[i0] == pytest.approx(0.9)


def test_decode_end_to_end_layout():
    rows = np.array([[[10, 150, 110, 250, 0.8, 1], [0, 0, 5, 5, 0.1, 0]]], np.float32)
    _, lb = letterbox(np.zeros((640, 640, 3), np.uint8), (640, 640))
    d = decode_yolo_output(rows, lb, (640, 640), 0.25, 0.5, 100)
    assert d.class_id.tolist() == [1]
    np.testing.assert_allclose(d.xyxy[0], [10, 150, 110, 250])


def test_nms_keeps_highest_and_separates_classes():
    xyxy = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10]], np.float32)
    keep = nms_class_aware(xyxy, np.array([0.5, 0.9, 0.8]), np.array([0, 0, 1]), 0.5)
    assert keep.tolist() == [1, 2]


def test_onnx_detector_runs_a_real_model_and_reads_metadata(tmp_path):
    out = yolo_rows([(320, 320, 64, 32)], [[0.0, 0.75]])
    model = constant_yolo_model(tmp_path / "m.onnx", out, names={0: "exposed_garbage", 1: "road_damage"},
                                extra_meta={"trained_categories": '["road_damage"]'})
    det = OnnxDetector(model, providers=["tensorrt", "cuda", "cpu"])  # unavailable providers fall back to CPU
    assert det.providers == ["CPUExecutionProvider"]
    assert det.names == ["exposed_garbage", "road_damage"]
    assert det.input_hw == (640, 640)
    assert det.covered == ["road_damage"]
    assert len(det.sha256) == 64
    frame = np.full((480, 848, 3), 90, np.uint8)
    d = det.detect(frame)
    # 848x480 -> scale 640/848, new size 640x362, pad_y = 139.
    s = 640 / 848
    assert d.class_id.tolist() == [1]
    np.testing.assert_allclose(d.xyxy[0], [(288) / s, (304 - 139) / (362 / 480), 352 / s, (336 - 139) / (362 / 480)],
                               atol=1e-2)


def test_missing_and_corrupt_models_give_one_line_errors(tmp_path):
    with pytest.raises(ModelError, match=r"nope\.onnx: model file not found"):
        OnnxDetector(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a model")
    with pytest.raises(ModelError) as exc:
        OnnxDetector(bad)
    assert "bad.onnx" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(("output", "meta", "why"), [
    (np.zeros((1, 3, 2100), np.float32), {}, r"output shape \(1, 3, 2100\) is not a YOLO layout"),
    (np.zeros((1, 7, 2100), np.float32), {}, "3 classes in the output, 2 in the 'names' metadata"),
    (np.zeros((1, 6, 2100), np.float32), {"imgsz": "'abc'"}, "metadata 'imgsz' is not a size"),
    (np.zeros((1, 6, 2100), np.float32), {"imgsz": "[0, 0]"}, r"input size \(0, 0\) is outside 32..4096"),
    (np.zeros((1, 6, 2100), np.float32), {"names": "5"}, "'names' is not a dict or list"),
    (np.zeros((1, 6, 2100), np.float32), {"imgsz": "[320, 320]"}, "does not run on a 1x3x320x320 input"),
])
def test_a_model_that_loads_but_cannot_serve_fails_at_start(tmp_path, output, meta, why):
    model = constant_yolo_model(tmp_path / "m.onnx", output, extra_meta=meta)
    with pytest.raises(ModelError, match=rf"m\.onnx: .*{why}"):
        OnnxDetector(model)


def test_non_finite_boxes_never_leave_the_decoder():
    out = yolo_rows([(320, 320, 64, 32), (np.nan, 100, 10, 10), (100, np.inf, 10, 10), (200, 200, 10, 10)],
                    [[0.9, 0.0], [0.95, 0.0], [0.0, 0.9], [np.nan, 0.0]])
    _, lb = letterbox(np.zeros((640, 640, 3), np.uint8), (640, 640))
    d = decode_yolo_output(out, lb, (640, 640), 0.25, 0.5, 100)
    assert d.class_id.tolist() == [0] and np.isfinite(d.xyxy).all()
    e2e = np.array([[[np.nan, 0, 5, 5, 0.9, 0], [10, 150, 110, 250, 0.8, 1]]], np.float32)
    assert decode_yolo_output(e2e, lb, (640, 640), 0.25, 0.5, 100).class_id.tolist() == [1]


def test_pt_backend_through_ultralytics(tmp_path):
    """The optional .pt backend (extra 'train') answers like the ONNX one; skipped where torch is absent."""
    ultralytics = pytest.importorskip("ultralytics", reason="the .pt backend needs the 'train' extra")
    from vehicle.detector import UltralyticsDetector, load_detector

    model = ultralytics.YOLO("yolo11n.yaml")  # built from the yaml: nothing is downloaded
    pt = tmp_path / "tiny.pt"
    model.save(str(pt))
    det = load_detector(pt, score_threshold=0.0)
    assert isinstance(det, UltralyticsDetector)
    assert det.names == [str(i) for i in range(80)]  # a yaml-built model has no dataset names
    d = det.detect(np.full((360, 640, 3), 127, np.uint8))
    assert d.xyxy.shape[1] == 4 and len(d.score) == len(d.class_id) == len(d)
    assert (d.xyxy[:, [0, 2]] <= 640).all() and (d.xyxy[:, [1, 3]] <= 360).all()
