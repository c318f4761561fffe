#!/usr/bin/env python3
"""Convert a Darknet YOLO (.cfg + .weights) into an ONNX model laid out like an ultralytics export.

The converted model takes ``images`` float32 [1, 3, H, W] (RGB, 0..1, the frame *stretched* to H x W as
Darknet does: no letterbox) and returns ``output0`` float32 [1, 4 + classes, N]: rows 0-3 are box centre x,
centre y, width, height in input pixels, the other rows per-class scores (objectness x class probability).
The YOLO-layer decode (sigmoid, grid offsets, anchors, scale_x_y) is part of the graph, so the detector's
single ultralytics decoder serves it; ``metadata_props`` carry ``names``, ``imgsz``, ``stride`` and
``preprocess`` = ``resize`` as the detector expects.

Usage (from the repo root)::

    .venv/bin/python scripts/convert_darknet.py                      # Yolo-Fastest 1.1 XL, 320x320
    .venv/bin/python scripts/convert_darknet.py --cfg ../shared/models/yolo-fastest-1.1-coco/yolo-fastest-1.1.cfg \
        --out models/external/yolo-fastest-1.1.onnx

The converted file is made from weights the repo may not redistribute: it goes to the git-ignored
``models/external/`` unless told otherwise. ``scripts/verify_darknet_opencv.sh`` compares the result with
OpenCV 4.x's own Darknet reader (in a throwaway venv: OpenCV 5 dropped Darknet).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = (
    Path(os.environ.get("PATROL_SHARED", REPO_ROOT / ".." / "shared")) / "models" / "yolo-fastest-1.1-coco"
)
DEFAULT_CFG = DEFAULT_MODEL_DIR / "yolo-fastest-1.1-xl.cfg"
DEFAULT_OUT = REPO_ROOT / "models" / "external" / "yolo-fastest-1.1-xl.onnx"
OPSET = 13
IR_VERSION = 8  # opset 13 needs IR >= 7; 8 keeps older ONNX Runtime / TensorRT builds able to load it
BN_EPS = 1e-5  # Darknet (AlexeyAB) normalises with sqrt(variance + .00001f)
LEAKY_SLOPE = 0.1
INPUT_NAME = "images"
OUTPUT_NAME = "output0"


class DarknetError(ValueError):
    """A Darknet cfg/weights file this converter cannot read; the message names the file and section."""


@dataclass(frozen=True)
class Section:
    """One ``[kind]`` block of a cfg file: its options as raw strings and the line it starts on."""

    kind: str
    options: dict[str, str]
    line: int
    path: str = ""

    def where(self) -> str:
        return f"{self.path}:{self.line} [{self.kind}]"

    def _get(self, key: str, default: object, parse: Callable[[str], object], what: str) -> Any:
        raw = self.options.get(key)
        if raw is None:
            if default is None:
                raise DarknetError(f"{self.where()}: missing '{key}'")
            return default
        try:
            return parse(raw)
        except ValueError:
            raise DarknetError(f"{self.where()}: '{key}' must be {what}, got {raw!r}") from None

    def get_int(self, key: str, default: int | None = None) -> int:
        return self._get(key, default, int, "an integer")

    def get_float(self, key: str, default: float) -> float:
        return self._get(key, default, float, "a number")

    def get_ints(self, key: str, default: Sequence[int] | None = None) -> list[int]:
        fallback = None if default is None else list(default)
        return self._get(key, fallback, lambda r: [int(v) for v in r.split(",") if v.strip()], "integers")


def parse_cfg(path: str | Path) -> list[Section]:
    """Read a Darknet ``.cfg`` into its sections, ``[net]`` first.

    Args:
        path: the cfg file.

    Returns:
        The sections in file order; comments (``#``, ``;``) and blank lines dropped, keys lower-cased.

    Raises:
        DarknetError: no ``[net]`` first, or a line that is neither a section header nor ``key=value``.
    """
    path = Path(path)
    sections: list[Section] = []
    for n, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise DarknetError(f"{path}:{n}: bad section header {raw.strip()!r}")
            sections.append(Section(line[1:-1].strip().lower(), {}, n, str(path)))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1].options[key.strip().lower()] = value.strip()
        else:
            raise DarknetError(f"{path}:{n}: expected '[section]' or 'key=value', got {raw.strip()!r}")
    if not sections or sections[0].kind not in ("net", "network"):
        raise DarknetError(f"{path}: the first section must be [net]")
    return sections


@dataclass(frozen=True)
class WeightsFile:
    """A Darknet ``.weights`` file: its version header and the float32 values after it."""

    version: tuple[int, int, int]
    seen_images: int
    values: np.ndarray


def read_weights(path: str | Path) -> WeightsFile:
    """Read a Darknet ``.weights`` file.

    The header is major, minor, revision (int32) then the count of images seen, an int64 when
    major * 10 + minor >= 2 (Darknet's own rule) and an int32 before that.

    Raises:
        DarknetError: the file is shorter than its header or not a whole number of float32 values.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 12:
        raise DarknetError(f"{path}: {len(data)} bytes is too short for a Darknet weights header")
    major, minor, revision = (int(v) for v in np.frombuffer(data[:12], dtype="<i4"))
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        seen, offset = int(np.frombuffer(data[12:20], dtype="<i8")[0]), 20
    else:
        seen, offset = int(np.frombuffer(data[12:16], dtype="<i4")[0]), 16
    if (len(data) - offset) % 4:
        raise DarknetError(f"{path}: {len(data) - offset} bytes after the header is not a whole float32 count")
    return WeightsFile((major, minor, revision), seen, np.frombuffer(data[offset:], dtype="<f4"))


@dataclass(frozen=True)
class YoloHead:
    """What a ``[yolo]`` layer decodes: its input tensor, anchors in input pixels and grid size."""

    layer: int
    tensor: str
    anchors_px: np.ndarray  # (A, 2) width, height
    classes: int
    scale_x_y: float
    grid_hw: tuple[int, int]


Shape = tuple[int, int, int]  # C, H, W
_UNSUPPORTED_CONV_KEYS = ("binary", "xnor", "deform", "antialiasing", "share_index", "stride_x", "stride_y")
_ACTIVATIONS = {"leaky": "LeakyRelu", "relu": "Relu", "logistic": "Sigmoid"}


@dataclass
class _Builder:
    """Walks the cfg layer by layer, collecting ONNX nodes and initializers and consuming the weights."""

    weights: np.ndarray
    bn_eps: float
    pos: int = 0  # next unread value of the weights
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # tensor per layer ("" for [yolo])
    shapes: list[Shape] = field(default_factory=list)
    heads: list[YoloHead] = field(default_factory=list)

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def take(self, sec: Section, count: int) -> np.ndarray:
        if self.pos + count > self.weights.size:
            left = self.weights.size - self.pos
            raise DarknetError(f"{sec.where()}: weights file ends early (needs {count} more values, {left} left)")
        self.pos += count
        return self.weights[self.pos - count : self.pos].astype(np.float64)

    def activation(self, sec: Section, x: str, name: str) -> str:
        act = sec.options.get("activation", "linear").lower()
        if act == "linear":
            return x
        if act in _ACTIVATIONS:
            attrs = {"alpha": LEAKY_SLOPE} if act == "leaky" else {}
            return self.node(_ACTIVATIONS[act], [x], name, **attrs)
        if act == "relu6":
            bounds = [self.const(f"{name}_{k}", np.array(v, np.float32)) for k, v in (("lo", 0.0), ("hi", 6.0))]
            return self.node("Clip", [x, *bounds], name)
        if act == "swish":
            return self.node("Mul", [x, self.node("Sigmoid", [x], f"{name}_sig")], name)
        if act == "mish":  # x * tanh(softplus(x)); opset 13 has no Mish
            soft = self.node("Softplus", [x], f"{name}_sp")
            return self.node("Mul", [x, self.node("Tanh", [soft], f"{name}_tanh")], name)
        raise DarknetError(f"{sec.where()}: activation '{act}' is not supported")

    def source(self, sec: Section, i: int, ref: int) -> int:
        """The absolute index of a layer reference (negative: relative to layer i); never a [yolo] layer."""
        j = i + ref if ref < 0 else ref
        if not 0 <= j < i:
            raise DarknetError(f"{sec.where()}: layer reference {ref} points outside layers 0..{i - 1}")
        if not self.outputs[j]:
            raise DarknetError(f"{sec.where()}: cannot use the output of [yolo] layer {j}")
        return j

    def convolutional(self, sec: Section, i: int, x: str, shape: Shape) -> tuple[str, Shape]:
        c, h, w = shape
        for key in _UNSUPPORTED_CONV_KEYS:
            if sec.options.get(key, "0") not in ("0", ""):
                raise DarknetError(f"{sec.where()}: '{key}' is not supported")
        n, size, stride = sec.get_int("filters", 1), sec.get_int("size", 1), sec.get_int("stride", 1)
        dilation, groups = sec.get_int("dilation", 1), sec.get_int("groups", 1)
        # Darknet: pad=1 means "same" padding size/2 and overrides any explicit padding=
        pad = size // 2 if sec.get_int("pad", 0) else sec.get_int("padding", 0)
        if groups < 1 or c % groups or n % groups:
            raise DarknetError(f"{sec.where()}: groups={groups} must divide input channels {c} and filters {n}")
        bias = self.take(sec, n)  # the batch norm's beta when batch_normalize=1
        if sec.get_int("batch_normalize", 0):
            scale, mean, var = self.take(sec, n), self.take(sec, n), self.take(sec, n)
            factor = scale / np.sqrt(var + self.bn_eps)  # fold scale * (y - mean) / sqrt(var + eps) + beta
            kernel = self.take(sec, n * (c // groups) * size * size).reshape(n, c // groups, size, size)
            kernel, bias = kernel * factor[:, None, None, None], bias - mean * factor
        else:
            kernel = self.take(sec, n * (c // groups) * size * size).reshape(n, c // groups, size, size)
        weights = [self.const(f"L{i}_conv_{k}", v.astype(np.float32)) for k, v in (("w", kernel), ("b", bias))]
        x = self.node("Conv", [x, *weights], f"L{i}_conv", kernel_shape=[size, size], strides=[stride] * 2,
                      pads=[pad] * 4, dilations=[dilation] * 2, group=groups)  # fmt: skip
        span = dilation * (size - 1) + 1
        out_h, out_w = (h + 2 * pad - span) // stride + 1, (w + 2 * pad - span) // stride + 1
        if out_h < 1 or out_w < 1:
            raise DarknetError(f"{sec.where()}: input {h}x{w} is too small for this convolution")
        return self.activation(sec, x, f"L{i}_act"), (n, out_h, out_w)

    def maxpool(self, sec: Section, i: int, x: str, shape: Shape) -> tuple[str, Shape]:
        c, h, w = shape
        if sec.get_int("maxpool_depth", 0):
            raise DarknetError(f"{sec.where()}: maxpool_depth is not supported")
        size = sec.get_int("size", 1)
        stride = sec.get_int("stride", size)
        # Darknet pads size-1 in total by default, starting padding//2 before the first pixel
        padding = sec.get_int("padding", size - 1)
        lo, hi = padding // 2, padding - padding // 2
        x = self.node("MaxPool", [x], f"L{i}_maxpool", kernel_shape=[size, size], strides=[stride, stride],
                      pads=[lo, lo, hi, hi])  # fmt: skip
        return x, (c, (h + padding - size) // stride + 1, (w + padding - size) // stride + 1)

    def dropout(self, sec: Section, i: int, x: str, shape: Shape) -> tuple[str, Shape]:
        return x, shape  # identity at inference

    def shortcut(self, sec: Section, i: int, x: str, shape: Shape) -> tuple[str, Shape]:
        if sec.options.get("weights_type", "none") != "none":
            raise DarknetError(f"{sec.where()}: weighted shortcut is not supported")
        for ref in sec.get_ints("from"):
            j = self.source(sec, i, ref)
            if self.shapes[j] != shape:  # Darknet would add the overlapping part only; no such model is known
                raise DarknetError(f"{sec.where()}: shape {self.shapes[j]} of layer {j} differs from {shape}")
            x = self.node("Add", [x, self.outputs[j]], f"L{i}_add_{j}")
        return self.activation(sec, x, f"L{i}_act"), shape

    def route(self, sec: Section, i: int, x: str, shape: Shape) -> tuple[str, Shape]:
        groups, group_id = sec.get_int("groups", 1), sec.get_int("group_id", 0)
        if not 0 <= group_id < groups:
            raise DarknetError(f"{sec.where()}: group_id={group_id} must be in 0..groups-1")
        refs = [self.source(sec, i, ref) for ref in sec.get_ints("layers")]
        parts, channels = [], 0
        for j in refs:
            cj, hj, wj = self.shapes[j]
            if (hj, wj) != self.shapes[refs[0]][1:]:
                raise DarknetError(
                    f"{sec.where()}: routed layers differ in size: {self.shapes[j]}, {self.shapes[refs[0]]}"
                )
            part = self.outputs[j]
            if groups > 1:  # keep channel chunk group_id of groups (CSP-style split)
                cj //= groups
                ends = {"s": cj * group_id, "e": cj * (group_id + 1), "a": 1}
                bounds = [(k, np.array([v], np.int64)) for k, v in ends.items()]
                part = self.node(
                    "Slice", [part, *(self.const(f"L{i}_{k}{j}", v) for k, v in bounds)], f"L{i}_slice_{j}"
                )
            parts.append(part)
            channels += cj
        x = parts[0] if len(parts) == 1 else self.node("Concat", parts, f"L{i}_concat", axis=1)
        return x, (channels, *self.shapes[refs[0]][1:])

    def upsample(self, sec: Section, i: int, x: str, shape: Shape) -> tuple[str, Shape]:
        stride = sec.get_int("stride", 2)
        if stride < 1:
            raise DarknetError(f"{sec.where()}: downsampling (negative stride) is not supported")
        scales = self.const(f"L{i}_scales", np.array([1, 1, stride, stride], np.float32))
        x = self.node("Resize", [x, "", scales], f"L{i}_upsample", mode="nearest",
                      coordinate_transformation_mode="asymmetric", nearest_mode="floor")  # fmt: skip
        factor = sec.get_float("scale", 1.0)
        if factor != 1.0:
            x = self.node("Mul", [x, self.const(f"L{i}_k", np.array(factor, np.float32))], f"L{i}_scale")
        return x, (shape[0], shape[1] * stride, shape[2] * stride)

    def yolo(self, sec: Section, i: int, x: str, shape: Shape) -> tuple[str, Shape]:
        if sec.get_int("new_coords", 0):
            raise DarknetError(f"{sec.where()}: new_coords=1 (scaled-YOLOv4 decode) is not supported")
        classes = sec.get_int("classes", 20)
        anchors = np.array(sec.get_ints("anchors"), np.float32).reshape(-1, 2)
        mask = sec.get_ints("mask", list(range(len(anchors))))
        if any(not 0 <= m < len(anchors) for m in mask):
            raise DarknetError(f"{sec.where()}: mask {mask} indexes past the {len(anchors)} anchors")
        if shape[0] != len(mask) * (5 + classes):
            raise DarknetError(f"{sec.where()}: input has {shape[0]} channels, not {len(mask)} x (5 + {classes})")
        self.heads.append(YoloHead(i, x, anchors[mask], classes, sec.get_float("scale_x_y", 1.0), shape[1:]))
        return "", shape  # the decoded output is the model's; nothing in the cfg may consume it

    def decode(self, h: YoloHead, in_hw: tuple[int, int]) -> str:
        """Decode one YOLO layer into [1, 4+C, gh*gw*A], boxes ordered by row, column, anchor."""
        a, c, (gh, gw), p = len(h.anchors_px), h.classes, h.grid_hw, f"yolo{h.layer}"
        t = self.node("Reshape", [h.tensor, self.const(f"{p}_shape5", np.array([1, a, 5 + c, gh, gw], np.int64))],
                      f"{p}_r5")  # fmt: skip
        parts = [f"{p}_txy", f"{p}_twh", f"{p}_tobj", f"{p}_tcls"]
        split = self.const(f"{p}_split", np.array([2, 2, 1, c], np.int64))
        self.nodes.append(helper.make_node("Split", [t, split], parts, name=f"{p}_split", axis=2))
        # centre = (sigmoid(t) * s - (s - 1) / 2 + cell) * stride, in input pixels; size = exp(t) * anchor
        stride_xy = np.array([in_hw[1] / gw, in_hw[0] / gh]).reshape(1, 1, 2, 1, 1)
        gy, gx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        offset = (np.stack([gx, gy])[None, None] - 0.5 * (h.scale_x_y - 1.0)) * stride_xy
        xy = self.node("Sigmoid", [parts[0]], f"{p}_sxy")
        xy = self.node("Mul", [xy, self.const(f"{p}_xy_k", (h.scale_x_y * stride_xy).astype(np.float32))], f"{p}_xym")
        xy = self.node("Add", [xy, self.const(f"{p}_xy_b", offset.astype(np.float32))], f"{p}_xy")
        anchors = self.const(f"{p}_anchors", h.anchors_px.reshape(1, a, 2, 1, 1).astype(np.float32))
        wh = self.node("Mul", [self.node("Exp", [parts[1]], f"{p}_ewh"), anchors], f"{p}_wh")
        obj, cls = (self.node("Sigmoid", [part], f"{part}_sig") for part in parts[2:])
        scores = self.node("Mul", [obj, cls], f"{p}_scores")  # objectness x class probability
        y = self.node("Concat", [xy, wh, scores], f"{p}_cat", axis=2)  # [1, A, 4+C, gh, gw]
        y = self.node("Transpose", [y], f"{p}_t", perm=[0, 2, 3, 4, 1])  # [1, 4+C, gh, gw, A]
        shape3 = self.const(f"{p}_shape3", np.array([1, 4 + c, gh * gw * a], np.int64))
        return self.node("Reshape", [y, shape3], f"{p}_out")


_LAYER_KINDS = ("convolutional", "maxpool", "dropout", "shortcut", "route", "upsample", "yolo")
_ALIASES = {"conv": "convolutional", "max": "maxpool"}


def build_model(
    cfg_path: str | Path,
    weights_path: str | Path,
    names: Sequence[str],
    imgsz: tuple[int, int] | None = None,
    expose_heads: bool = False,
    bn_eps: float = BN_EPS,
) -> onnx.ModelProto:
    """Build the ONNX model of a Darknet YOLO.

    Args:
        cfg_path: the Darknet ``.cfg``.
        weights_path: its ``.weights``.
        names: class names, index = class id; their count must match the YOLO layers' ``classes``.
        imgsz: input (height, width) in pixels; default the cfg's ``height``/``width``.
        expose_heads: also output each YOLO layer's raw input as ``head<k>`` [1, A*(5+C), gh, gw]
            (for comparing with other Darknet readers; the detector ignores extra outputs).
        bn_eps: batch-norm epsilon; Darknet's 1e-5 by default (OpenCV's Darknet reader uses 1e-6).

    Returns:
        A checked ONNX model: ``images`` [1,3,H,W] -> ``output0`` [1, 4+C, N], metadata without ``source``.

    Raises:
        DarknetError: unsupported layer/option, a weights file of the wrong length, or names/classes mismatch.
    """
    cfg_path, weights_path = Path(cfg_path), Path(weights_path)
    sections = parse_cfg(cfg_path)
    net = sections[0]
    height, width = imgsz if imgsz else (net.get_int("height"), net.get_int("width"))
    if net.get_int("channels", 3) != 3:
        raise DarknetError(f"{net.where()}: only 3-channel (RGB) networks are supported")
    b = _Builder(read_weights(weights_path).values, bn_eps)
    x, shape = INPUT_NAME, (3, height, width)
    for i, sec in enumerate(sections[1:]):
        kind = _ALIASES.get(sec.kind, sec.kind)
        if kind not in _LAYER_KINDS:
            raise DarknetError(f"{sec.where()}: layer type [{sec.kind}] is not supported")
        if not x and kind != "route":
            raise DarknetError(f"{sec.where()}: cannot use the output of the [yolo] layer before it")
        x, shape = getattr(b, kind)(sec, i, x, shape)
        b.outputs.append(x)
        b.shapes.append(shape)
    if b.pos != b.weights.size:
        raise DarknetError(
            f"{weights_path}: holds {b.weights.size} values but {cfg_path.name} uses {b.pos}: cfg and weights differ"
        )
    if not b.heads:
        raise DarknetError(f"{cfg_path}: no [yolo] layer")
    n_classes = b.heads[0].classes
    if any(h.classes != n_classes for h in b.heads) or len(names) != n_classes:
        raise DarknetError(f"{cfg_path}: [yolo] classes={n_classes} but {len(names)} names were given")
    b.node("Concat", [b.decode(h, (height, width)) for h in b.heads], OUTPUT_NAME, axis=2)
    n_boxes = sum(h.grid_hw[0] * h.grid_hw[1] * len(h.anchors_px) for h in b.heads)
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, 4 + n_classes, n_boxes])]
    for k, h in enumerate(b.heads if expose_heads else []):
        b.node("Identity", [h.tensor], f"head{k}")
        dims = [1, len(h.anchors_px) * (5 + n_classes), *h.grid_hw]
        outputs.append(helper.make_tensor_value_info(f"head{k}", TensorProto.FLOAT, dims))
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, 3, height, width])]
    graph = helper.make_graph(b.nodes, cfg_path.stem, inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="convert_darknet")
    model.ir_version = IR_VERSION
    meta = {  # the keys ultralytics writes, as strings the way it writes them, plus "preprocess"
        "description": f"{cfg_path.stem} (Darknet) converted to ONNX, ultralytics output layout",
        "author": "scripts/convert_darknet.py",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "license": "see the source model's LICENSE",
        "stride": str(max(round(height / h.grid_hw[0]) for h in b.heads)),
        "task": "detect",
        "batch": "1",
        "imgsz": str([height, width]),
        "names": str(dict(enumerate(names))),
        "channels": "3",
        "end2end": "False",
        "preprocess": "resize",  # Darknet stretches the frame to the input size: no letterbox
        "model_name": cfg_path.stem,
    }
    for k, v in meta.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = k, v
    onnx.checker.check_model(model, full_check=True)
    return model


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Darknet's coco.names keeps six VOC-era spellings; ultralytics (and models/categories.yaml) use COCO's own
COCO_SPELLING = {
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "sofa": "couch",
    "pottedplant": "potted plant",
    "diningtable": "dining table",
    "tvmonitor": "tv",
}


def read_names(path: str | Path) -> list[str]:
    """Class names, one a line (Darknet ``.names``); blank lines dropped."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def convert(
    cfg_path: str | Path,
    weights_path: str | Path | None = None,
    names_path: str | Path | None = None,
    out_path: str | Path = DEFAULT_OUT,
    imgsz: tuple[int, int] | None = None,
    darknet_names: bool = False,
) -> Path:
    """Convert a Darknet model and write it, with ``source`` metadata (file names and SHA-256).

    Args:
        cfg_path: the ``.cfg``.
        weights_path: the ``.weights``; default the cfg's path with ``.weights``.
        names_path: class names; default ``coco.names`` beside the cfg.
        out_path: where to write the ONNX file (folders are created).
        imgsz: input (height, width); default the cfg's.
        darknet_names: keep Darknet's spellings (``motorbike``...) instead of COCO's (``motorcycle``...).

    Returns:
        The written path.
    """
    cfg_path = Path(cfg_path)
    weights_path = Path(weights_path) if weights_path else cfg_path.with_suffix(".weights")
    names_path = Path(names_path) if names_path else cfg_path.parent / "coco.names"
    for p in (cfg_path, weights_path, names_path):
        if not p.is_file():
            raise DarknetError(f"{p}: no such file")
    names = read_names(names_path)
    if not darknet_names:
        names = [COCO_SPELLING.get(n, n) for n in names]
    model = build_model(cfg_path, weights_path, names, imgsz)
    licence = cfg_path.parent / "LICENSE"
    if licence.is_file():  # e.g. "YOLO LICENSE Version 2, July 29 2016"
        title = [line.strip() for line in licence.read_text(errors="replace").splitlines() if line.strip()][:2]
        next(p for p in model.metadata_props if p.key == "license").value = f"{' '.join(title)} ({licence.name})"
    prop = model.metadata_props.add()
    prop.key = "source"
    prop.value = (
        f"{cfg_path.name} sha256:{sha256_of(cfg_path)}; {weights_path.name} sha256:{sha256_of(weights_path)}; "
        f"{names_path.name} sha256:{sha256_of(names_path)}"
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out_path)
    return out_path


def _parse_imgsz(text: str) -> tuple[int, int]:
    parts = [int(v) for v in text.lower().replace("x", ",").split(",") if v]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 32 or any(v % 32 for v in parts):
        raise argparse.ArgumentTypeError(f"--imgsz {text!r}: want H or H,W, multiples of 32")
    return parts[0], parts[1]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: convert and print where the model went."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cfg", type=Path, default=DEFAULT_CFG, help="Darknet .cfg (default: Yolo-Fastest 1.1 XL)")
    ap.add_argument("--weights", type=Path, help="Darknet .weights (default: the cfg with .weights)")
    ap.add_argument("--names", type=Path, help="class names, one a line (default: coco.names beside the cfg)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"ONNX file to write (default: {DEFAULT_OUT})")
    ap.add_argument("--imgsz", type=_parse_imgsz, help="input H or H,W (default: the cfg's height,width)")
    ap.add_argument("--darknet-names", action="store_true", help="keep 'motorbike', 'tvmonitor'... as in the file")
    args = ap.parse_args(argv)
    try:
        out = convert(args.cfg, args.weights, args.names, args.out, args.imgsz, args.darknet_names)
    except (DarknetError, OSError) as exc:
        print(f"convert_darknet: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
