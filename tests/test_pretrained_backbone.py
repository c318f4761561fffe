"""scripts/pretrained_backbone.py: Yolo-Fastest's layers in torch give what the ONNX converter's graph gives for
the same layers (two independent readings of the Darknet files), and models/patrol-fastest.yaml builds a
detector whose frozen backbone holds the real COCO weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, shared_path

if importlib.util.find_spec("ultralytics") is None:
    pytest.skip("ultralytics not installed (pip install -e '.[train]')", allow_module_level=True)

import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from scripts import convert_darknet
from scripts.pretrained_backbone import DarknetLayers

MODEL = "yolo-fastest-1.1-xl"
TAPS = (57, 80, 108)  # the ends of the last blocks at strides 8, 16, 32 (models/patrol-fastest.yaml)


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return shared_path("models", "yolo-fastest-1.1-coco")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A real street frame, RGB 0..1, 1x3x320x320 (stretched, as Darknet feeds it)."""
    import cv2

    cap = cv2.VideoCapture(str(shared_path("drives", "gopro-max-walk", "video.mp4")))
    ok, frame = cap.read()
    cap.release()
    assert ok
    rgb = cv2.resize(frame, (320, 320))[:, :, ::-1].astype(np.float32) / 255.0
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None])


def _onnx_taps(model_dir: Path, image: np.ndarray) -> list[np.ndarray]:
    """The converter's graph, with the shortcut outputs of the tap layers exposed."""
    proto = convert_darknet.build_model(model_dir / f"{MODEL}.cfg", model_dir / f"{MODEL}.weights",
                                        [str(i) for i in range(80)], imgsz=(320, 320))
    names = [f"L{t}_add_{t - 5}" for t in TAPS]  # every tap is a [shortcut] from=-5
    produced = {o for n in proto.graph.node for o in n.output}
    assert set(names) <= produced
    proto.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(names, {"images": image})


def test_torch_layers_match_the_onnx_converter_on_a_real_frame(model_dir: Path, image: np.ndarray) -> None:
    want = _onnx_taps(model_dir, image)
    # the same split as the model yaml: two slices, the second fed by the first's last tap
    first = DarknetLayers(MODEL, 0, 58, [57]).eval()
    second = DarknetLayers(MODEL, 58, 109, [80, 108]).eval()
    with torch.no_grad():
        (p3,) = first(torch.from_numpy(image))
        p4, p5 = second(p3)
    for name, got, ref in zip(("P3", "P4", "P5"), (p3, p4, p5), want, strict=True):
        assert got.shape == ref.shape, name
        scale = float(np.abs(ref).max())
        assert scale > 0.1, f"{name}: the tap is all but zero: nothing was compared"
        assert np.abs(got.numpy() - ref).max() < 1e-3 * scale, name
    assert [tuple(t.shape[1:]) for t in (p3, p4, p5)] == [(32, 40, 40), (48, 20, 20), (96, 10, 10)]


def test_the_model_yaml_builds_on_the_real_weights_and_says_what_to_freeze(model_dir: Path) -> None:
    import yaml
    from ultralytics import YOLO

    yaml_path = REPO_ROOT / "models" / "patrol-fastest.yaml"
    model = YOLO(str(yaml_path)).model
    assert yaml.safe_load(yaml_path.read_text())["freeze"] == 1
    first_conv = model.model[0].layers[0].conv.weight.detach().numpy()
    values = convert_darknet.read_weights(model_dir / f"{MODEL}.weights").values
    # Darknet stores the first layer as 16 betas, gammas, means, variances, then its 16x3x3x3 kernel
    assert np.array_equal(first_conv.ravel(), values[64:64 + 16 * 27])
    out = model.eval()(torch.zeros(1, 3, 320, 320))
    pred = out[0] if isinstance(out, (list, tuple)) else out
    assert tuple(pred.shape) == (1, 4 + 13, 40 * 40 + 20 * 20 + 10 * 10)


def test_a_missing_darknet_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "none.cfg")):
        DarknetLayers(str(tmp_path / "none"), 0, 3)


def test_a_shortcut_leaving_the_slice_is_refused() -> None:
    shared_path("models", "yolo-fastest-1.1-coco")
    # layer 8 is a [shortcut] from=-5 (layer 3): a slice starting at 5 cannot compute it
    with pytest.raises(convert_darknet.DarknetError, match="leaves the slice"):
        DarknetLayers(MODEL, 5, 10)
