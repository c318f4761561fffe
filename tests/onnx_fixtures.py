"""Real ONNX files built for tests: a YOLO-shaped model whose output is a known tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def constant_yolo_model(path: Path, output: np.ndarray, input_hw: tuple[int, int] = (640, 640),
                        names: dict[int, str] | None = None, extra_meta: dict[str, str] | None = None) -> Path:
    """Write an ONNX model with an ultralytics-style interface that always returns ``output``.

    The graph really consumes its input (``output + 0 * mean(images)``), so ONNX Runtime runs it like any
    detector; the output is known exactly, which lets tests check decoding, NMS and rescaling to the pixel.
    """
    h, w = input_hw
    out = output.astype(np.float32)
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, h, w])
    res = helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(out.shape))
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["const", "z"], ["output0"]),
    ]
    inits = [numpy_helper.from_array(out, "const"), numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    graph = helper.make_graph(nodes, "constant_yolo", [inp], [res], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"names": str(names or {0: "exposed_garbage", 1: "road_damage"}), "imgsz": str([h, w]), "stride": "32"}
    meta.update(extra_meta or {})
    for k, v in meta.items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def yolo_rows(boxes_cxcywh: list[tuple[float, float, float, float]], class_scores: list[list[float]]) -> np.ndarray:
    """An ultralytics (1, 4 + nc, N) output from candidate boxes and their per-class scores."""
    b = np.array(boxes_cxcywh, np.float32).T
    s = np.array(class_scores, np.float32).T
    return np.concatenate([b, s], axis=0)[None]
