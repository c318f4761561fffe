"""ONNX Runtime YOLO detector: letterbox, decode, class-aware NMS, exact rescale to the frame.

Class names, input size and preprocessing come from the model's own metadata (as ultralytics writes it), so
the car never needs to be told what a model detects. Raw tensors are turned into `Detections` in exactly one
place (`decode_yolo_output`); nothing downstream knows the tensor layout.
"""

from __future__ import annotations

import ast
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


class ModelError(ValueError):
    """A model file is missing or not a usable YOLO ONNX model; the message names the file."""


@dataclass(frozen=True)
class Detections:
    """Boxes found in one frame, as parallel arrays (pixels of the original frame)."""

    xyxy: np.ndarray  # (n, 4) float32
    score: np.ndarray  # (n,) float32
    class_id: np.ndarray  # (n,) int32

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        if self.xyxy.shape != (n, 4) or self.score.shape != (n,) or self.class_id.shape != (n,):
            raise ValueError(
                f"Detections arrays disagree: xyxy {self.xyxy.shape}, score {self.score.shape}, "
                f"class_id {self.class_id.shape}"
            )

    def __len__(self) -> int:
        return len(self.xyxy)

    @classmethod
    def empty(cls) -> Detections:
        """No boxes."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    def filter(self, mask: np.ndarray) -> Detections:
        """The rows where ``mask`` is true."""
        return Detections(self.xyxy[mask], self.score[mask], self.class_id[mask])


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the model input: ``model = frame * scale + pad``."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float


def letterbox(image: np.ndarray, input_hw: tuple[int, int], keep_aspect: bool = True) -> tuple[np.ndarray, Letterbox]:
    """Resize ``image`` (BGR) into ``input_hw`` with grey padding, as ultralytics does.

    Returns the padded image and the exact transform. The scale is measured per axis from the rounded
    resized size, so mapping back is exact at any odd frame size.
    """
    h, w = image.shape[:2]
    in_h, in_w = input_hw
    if keep_aspect:
        r = min(in_h / h, in_w / w)
        new_w, new_h = round(w * r), round(h * r)
    else:
        new_w, new_h = in_w, in_h
    resized = image if (new_w, new_h) == (w, h) else cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = (in_w - new_w) / 2, (in_h - new_h) / 2
    top, left = round(dh - 0.1), round(dw - 0.1)
    bottom, right = in_h - new_h - top, in_w - new_w - left
    if top or bottom or left or right:
        resized = cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return resized, Letterbox(new_w / w, new_h / h, float(left), float(top))


def to_tensor(image_bgr: np.ndarray) -> np.ndarray:
    """HWC BGR uint8 -> NCHW RGB float32 in [0, 1]."""
    rgb = image_bgr[:, :, ::-1]
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


def nms_class_aware(xyxy: np.ndarray, score: np.ndarray, class_id: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy NMS applied per class (boxes of different classes never suppress each other)."""
    if len(xyxy) == 0:
        return np.zeros(0, np.int64)
    # Offset boxes by class so one vectorised pass never compares across classes.
    offset = class_id.astype(np.float64)[:, None] * (float(np.abs(xyxy).max()) + 1.0) * 2.0
    b = xyxy.astype(np.float64) + offset
    x1, y1, x2, y2 = b.T
    area = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-score, kind="stable")
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-12)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


def decode_yolo_output(
    output: np.ndarray,
    lb: Letterbox,
    frame_wh: tuple[int, int],
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> Detections:
    """Model output -> `Detections` in frame pixels.

    Handles the ultralytics layouts: ``(1, 4 + nc, N)`` (YOLOv8/11: cx, cy, w, h then class scores; NMS here)
    and ``(1, N, 6)`` end-to-end models (x1, y1, x2, y2, score, class; already NMS-free).
    """
    out = np.asarray(output)
    if out.ndim == 3:
        out = out[0]
    if out.ndim != 2:
        raise ModelError(f"unexpected model output shape {output.shape}")
    if out.shape[1] == 6 and out.shape[0] != 6:  # end-to-end: (N, 6)
        score = out[:, 4].astype(np.float32)
        m = score >= score_threshold
        xyxy = out[m, :4].astype(np.float64)
        score, cls = score[m], out[m, 5].astype(np.int32)
        xyxy, score, cls = _finite_only(xyxy, score, cls)
        keep = np.argsort(-score, kind="stable")[:max_detections]
    else:
        pred = out.T  # (N, 4 + nc)
        cls_scores = pred[:, 4:]
        cls = cls_scores.argmax(1).astype(np.int32)
        score = cls_scores[np.arange(len(cls)), cls].astype(np.float32)
        m = score >= score_threshold
        pred, cls, score = pred[m], cls[m], score[m]
        cx, cy, w, h = (pred[:, k].astype(np.float64) for k in range(4))
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        xyxy, score, cls = _finite_only(xyxy, score, cls)
        keep = nms_class_aware(xyxy, score, cls, iou_threshold)[:max_detections]
    xyxy, score, cls = xyxy[keep], score[keep], cls[keep]
    # Undo the letterbox exactly: frame = (model - pad) / scale, per axis.
    xyxy[:, [0, 2]] = (xyxy[:, [0, 2]] - lb.pad_x) / lb.scale_x
    xyxy[:, [1, 3]] = (xyxy[:, [1, 3]] - lb.pad_y) / lb.scale_y
    fw, fh = frame_wh
    xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, fw)
    xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, fh)
    return Detections(xyxy.astype(np.float32), score.astype(np.float32), cls.astype(np.int32))


def _finite_only(xyxy: np.ndarray, score: np.ndarray, cls: np.ndarray) -> tuple[np.ndarray, ...]:
    """Drop boxes with a NaN or infinite coordinate or score (an FP16 overflow must not reach the map)."""
    ok = np.isfinite(xyxy).all(axis=1) & np.isfinite(score)
    return (xyxy, score, cls) if ok.all() else (xyxy[ok], score[ok], cls[ok])


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (the model hash carried by every event)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _parse_names(raw: str | None, n_classes: int) -> list[str]:
    if not raw:
        return [f"class{i}" for i in range(n_classes)]
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise ModelError(f"model metadata 'names' is not a dict or list: {raw[:80]!r}") from None
    if isinstance(value, dict):
        return [str(value[k]) for k in sorted(value)]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise ModelError(f"model metadata 'names' is not a dict or list: {raw[:80]!r}")


class OnnxDetector:
    """A YOLO model in ONNX Runtime. ``detect(frame_bgr)`` returns `Detections`."""

    def __init__(
        self,
        model_file: str | Path,
        score_threshold: float = 0.25,
        iou_threshold: float = 0.5,
        max_detections: int = 100,
        providers: list[str] | tuple[str, ...] = ("cpu",),
        intra_op_threads: int = 0,
        tensorrt_fp16: bool = True,
        tensorrt_cache_dir: str | Path | None = None,
    ):
        import onnxruntime as ort  # imported here so that tools which never detect do not pay for it

        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise ModelError(f"{self.model_file}: model file not found")
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections
        available = set(ort.get_available_providers())
        chosen: list = []
        for name in providers:
            full = PROVIDER_NAMES[name]
            if full not in available:
                log.debug("execution provider %s not available here, skipped", full)
                continue
            if name == "tensorrt":
                cache = str(tensorrt_cache_dir or self.model_file.parent / "trt-cache")
                Path(cache).mkdir(parents=True, exist_ok=True)
                chosen.append(
                    (
                        full,
                        {
                            "trt_fp16_enable": tensorrt_fp16,
                            "trt_engine_cache_enable": True,  # a restart must not rebuild the engine for minutes
                            "trt_engine_cache_path": cache,
                        },
                    )
                )
            else:
                chosen.append(full)
        if not chosen:
            chosen = ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        try:
            self.session = ort.InferenceSession(str(self.model_file), sess_options=opts, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own types for corrupt files
            raise ModelError(f"{self.model_file}: not a loadable ONNX model: {str(exc).splitlines()[0]}") from None
        inputs = self.session.get_inputs()
        inp = inputs[0]
        if len(inputs) != 1 or len(inp.shape) != 4 or inp.type != "tensor(float)":
            raise ModelError(f"{self.model_file}: expected one float input of shape 1x3xHxW, got "
                             + ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs))
        self.input_name = inp.name
        meta = self.session.get_modelmeta().custom_metadata_map
        shape = inp.shape
        try:
            if meta.get("imgsz"):
                hw = ast.literal_eval(meta["imgsz"])
                self.input_hw = (int(hw[0]), int(hw[1])) if isinstance(hw, (list, tuple)) else (int(hw), int(hw))
            elif isinstance(shape[2], int) and isinstance(shape[3], int):
                self.input_hw = (shape[2], shape[3])
            else:
                raise ModelError(f"{self.model_file}: input size unknown (no 'imgsz' metadata, dynamic input shape)")
        except (ValueError, SyntaxError, TypeError, IndexError):
            raise ModelError(f"{self.model_file}: metadata 'imgsz' is not a size: {meta['imgsz'][:40]!r}") from None
        if not all(32 <= v <= 4096 for v in self.input_hw):
            raise ModelError(f"{self.model_file}: input size {self.input_hw} is outside 32..4096 pixels")
        out_shape = self.session.get_outputs()[0].shape
        n_cls = out_shape[1] - 4 if len(out_shape) == 3 and isinstance(out_shape[1], int) else 0
        try:
            self.names = _parse_names(meta.get("names"), n_cls)
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelError(f"{self.model_file}: {exc}") from None
        self.keep_aspect = meta.get("preprocess", "letterbox") != "resize"
        # Classes the model was actually trained on (our export writes it); the rest exist but never fire.
        covered = meta.get("trained_categories") or meta.get("covered")
        self.covered: list[str] | None = _parse_names(covered, 0) if covered else None
        self.sha256 = file_sha256(self.model_file)
        self.name = meta.get("model_name") or self.model_file.stem
        self.providers = self.session.get_providers()
        self._check_runs()

    def _check_runs(self) -> None:
        """One inference on a grey frame at start: a model that loads but cannot run, or answers in a layout the
        decoder does not know, fails here with its file named instead of at the first real frame."""
        h, w = self.input_hw
        try:
            raw = self.infer(np.full((1, 3, h, w), 114 / 255, np.float32))
        except Exception as exc:  # onnxruntime's own error types
            raise ModelError(f"{self.model_file}: does not run on a 1x3x{h}x{w} input: "
                             f"{str(exc).splitlines()[0]}") from None
        out = np.asarray(raw)
        out = out[0] if out.ndim == 3 else out
        end_to_end = out.ndim == 2 and out.shape[1] == 6 and out.shape[0] != 6
        if out.ndim != 2 or (not end_to_end and out.shape[0] < 5):
            raise ModelError(f"{self.model_file}: output shape {np.asarray(raw).shape} is not a YOLO layout "
                             "(1 x (4 + classes) x N, or 1 x N x 6)")
        if not end_to_end and out.shape[0] - 4 != len(self.names):
            raise ModelError(f"{self.model_file}: {out.shape[0] - 4} classes in the output, {len(self.names)} "
                             "in the 'names' metadata")

    def preprocess(self, image_bgr: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """Frame -> model input tensor and the transform to undo."""
        padded, lb = letterbox(image_bgr, self.input_hw, self.keep_aspect)
        return to_tensor(padded), lb

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """Run the session on a prepared tensor; the raw first output."""
        return self.session.run(None, {self.input_name: tensor})[0]

    def detect(self, image_bgr: np.ndarray) -> Detections:
        """Boxes in one BGR frame, in that frame's pixels."""
        tensor, lb = self.preprocess(image_bgr)
        raw = self.infer(tensor)
        h, w = image_bgr.shape[:2]
        return decode_yolo_output(raw, lb, (w, h), self.score_threshold, self.iou_threshold, self.max_detections)


class UltralyticsDetector:
    """A ``.pt`` model through ultralytics (extra ``train``), for judging a checkpoint before export.

    Same interface as `OnnxDetector`. Never used on the car: torch is not in the runtime path.
    """

    def __init__(self, model_file: str | Path, score_threshold: float = 0.25, iou_threshold: float = 0.5,
                 max_detections: int = 100, imgsz: int | None = None, **_ignored: object):
        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise ModelError(f"{self.model_file}: model file not found")
        try:
            from ultralytics import YOLO
        except ImportError:
            raise ModelError(f"{self.model_file}: .pt models need ultralytics: pip install -e '.[train]'") from None
        _import_training_modules()
        try:
            self.model = YOLO(str(self.model_file))
        except ModuleNotFoundError as exc:  # a checkpoint pickles its layer classes by module path
            raise ModelError(f"{self.model_file}: the checkpoint needs Python module {exc.name!r}, which is not "
                             "importable here (a model trained by another project?)") from None
        except Exception as exc:  # torch and ultralytics raise many kinds on a file that is not a checkpoint
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise ModelError(f"{self.model_file}: not a loadable ultralytics checkpoint ({first[:200]})") from None
        names = self.model.names
        self.names = [str(names[k]) for k in sorted(names)] if isinstance(names, dict) else list(names)
        args = getattr(self.model, "overrides", {}) or {}
        size = imgsz or int(args.get("imgsz", 640) if not isinstance(args.get("imgsz"), list) else args["imgsz"][0])
        self.input_hw = (size, size)
        self.score_threshold, self.iou_threshold, self.max_detections = score_threshold, iou_threshold, max_detections
        self.sha256 = file_sha256(self.model_file)
        self.covered = self._trained_categories()
        self.name = self.model_file.stem
        self.providers = ["ultralytics"]

    def _trained_categories(self) -> list[str] | None:
        """What the checkpoint was trained on: from the ONNX exported from it (same folder and name, its metadata
        naming this file's SHA-256); None (every class) with a warning when there is no such export."""
        onnx_file = self.model_file.with_suffix(".onnx")
        if onnx_file.is_file():
            try:  # its metadata only: onnx comes with the train extra, as ultralytics does
                import onnx

                meta = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
                if meta.get("source_weights_sha256") == self.sha256:
                    covered = meta.get("trained_categories") or meta.get("covered")
                    return _parse_names(covered, 0) if covered else None
            except Exception:  # an unreadable export tells nothing: fall through to the warning
                pass
        log.warning("%s: no ONNX export of these weights beside it: cannot tell which categories it was trained "
                    "on; counting all %d classes as covered", self.model_file, len(self.names))
        return None

    def detect(self, image_bgr: np.ndarray) -> Detections:
        """Boxes in one BGR frame, in that frame's pixels."""
        r = self.model.predict(image_bgr, imgsz=self.input_hw[0], conf=self.score_threshold, iou=self.iou_threshold,
                               max_det=self.max_detections, verbose=False)[0]
        b = r.boxes
        return Detections(b.xyxy.cpu().numpy().astype(np.float32), b.conf.cpu().numpy().astype(np.float32),
                          b.cls.cpu().numpy().astype(np.int32))


def _import_training_modules() -> None:
    """Register our own layer classes with torch's unpickler: the shipped checkpoint's pretrained backbone
    (`scripts.pretrained_backbone.DarknetLayers`) is stored by that module path, importable from the repo root."""
    import sys

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.append(root)
    try:
        import scripts.pretrained_backbone  # noqa: F401
    except ImportError:  # not a checkout (an installed wheel): checkpoints using it fail with a clear ModelError
        pass


def load_detector(model_file: str | Path, **kwargs) -> OnnxDetector | UltralyticsDetector:
    """`OnnxDetector` for ``.onnx`` files, `UltralyticsDetector` for ``.pt`` checkpoints."""
    if str(model_file).endswith(".pt"):
        return UltralyticsDetector(model_file, **kwargs)
    return OnnxDetector(model_file, **kwargs)
