"""Yolo-Fastest's COCO-trained layers as a pretrained backbone for the patrol detector (training side only).

No pretrained weights can be downloaded here, and a YOLO11n trained from nothing on ~1,600 images and two CPU
cores learns slowly. The only pretrained network at hand is Yolo-Fastest 1.1 XL (Darknet, public domain,
``../shared/models/yolo-fastest-1.1-coco``): its backbone, a MobileNetV2-like stack of inverted residual
blocks, already knows edges, textures and objects. `DarknetLayers` turns a slice of its cfg into torch modules
with the Darknet weights loaded, so an ultralytics model yaml (``models/patrol-fastest.yaml``) can put a YOLO11
neck and detection head on top of it; everything after the backbone is trained from scratch.

The layers are ultralytics ``Conv`` blocks (conv + batch norm + activation), so ultralytics fuses them for export
like its own; the exported ONNX runs on the car without anything from this file. A ``.pt`` checkpoint of such a
model pickles `DarknetLayers` by its import path, ``scripts.pretrained_backbone``: load one with the repository
root on ``sys.path`` (the training, export and model-card scripts put it there).

Importing this module registers `DarknetLayers` with ultralytics' model-yaml parser.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from scripts.convert_darknet import DarknetError, Section, parse_cfg, read_weights  # noqa: E402

LEAKY_SLOPE = 0.1  # Darknet's leaky ReLU


def darknet_model_dir() -> Path:
    """Where the Darknet files live: ``$PATROL_SHARED/models/yolo-fastest-1.1-coco`` (default ``../shared``)."""
    shared = Path(os.environ.get("PATROL_SHARED", REPO_ROOT / ".." / "shared"))
    return (shared / "models" / "yolo-fastest-1.1-coco").resolve()


class DarknetLayers(nn.Module):
    """Layers ``start`` .. ``stop - 1`` of a Darknet cfg (0-based, ``[net]`` not counted) with their weights.

    Supports what Yolo-Fastest's backbone uses: convolutional (groups, batch norm, leaky or linear), shortcut
    (plain add) and dropout (ignored). A shortcut may only reach layers inside the slice, so slices are cut at
    block boundaries.

    Args:
        model: cfg/weights stem in `darknet_model_dir` (e.g. ``yolo-fastest-1.1-xl``) or a path without suffix.
        start: first layer of the slice.
        stop: one past the last layer.
        taps: layers whose outputs are returned as a list (in this order); empty: return the last output.
    """

    def __init__(self, model: str, start: int, stop: int, taps: list[int] | tuple[int, ...] = ()):
        super().__init__()
        base = Path(model) if ("/" in model or os.sep in model) else darknet_model_dir() / model
        cfg, weights = (base.parent / f"{base.name}{suffix}" for suffix in (".cfg", ".weights"))
        for f in (cfg, weights):
            if not f.is_file():
                raise FileNotFoundError(f"{f}: Darknet file for the pretrained backbone not found "
                                        "(../shared/models/yolo-fastest-1.1-coco, or set PATROL_SHARED)")
        sections = parse_cfg(cfg)[1:]
        if not 0 <= start < stop <= len(sections):
            raise DarknetError(f"{cfg}: layers {start}..{stop - 1} are outside 0..{len(sections) - 1}")
        if any(not start <= t < stop for t in taps):
            raise DarknetError(f"{cfg}: taps {list(taps)} must lie in {start}..{stop - 1}")
        values = read_weights(weights).values
        self.start, self.stop, self.taps = start, stop, tuple(int(t) for t in taps)
        self.layers = nn.ModuleList()
        self.shortcut_from: list[int | None] = []  # absolute layer index added to this layer's input, if any
        self.channels_out = 0
        pos, channels = 0, 3
        for i, sec in enumerate(sections[:stop]):
            if sec.kind == "convolutional":
                conv, pos = self._conv(sec, channels, values, pos)
                channels = conv.conv.out_channels
                if i >= start:
                    self.layers.append(conv)
                    self.shortcut_from.append(None)
            elif sec.kind in ("shortcut", "dropout"):
                if sec.kind == "shortcut" and sec.options.get("activation", "linear") != "linear":
                    raise DarknetError(f"{sec.where()}: only a linear shortcut is supported")
                src = None
                if sec.kind == "shortcut":
                    (ref,) = sec.get_ints("from")
                    src = i + ref if ref < 0 else ref
                    if i >= start and not start <= src < i:
                        raise DarknetError(f"{sec.where()}: shortcut to layer {src} leaves the slice {start}..")
                if i >= start:
                    self.layers.append(nn.Identity())
                    self.shortcut_from.append(src)
            else:
                raise DarknetError(f"{sec.where()}: [{sec.kind}] is not supported in a backbone slice")
            if i == stop - 1:
                self.channels_out = channels

    @staticmethod
    def _conv(sec: Section, c_in: int, values: np.ndarray, pos: int) -> tuple[nn.Module, int]:
        """One ``[convolutional]`` as an ultralytics ``Conv`` with its Darknet weights; the next weight offset."""
        from ultralytics.nn.modules import Conv

        n, size, stride = sec.get_int("filters", 1), sec.get_int("size", 1), sec.get_int("stride", 1)
        groups = sec.get_int("groups", 1)
        # Darknet: pad=1 means "same" padding size // 2 and overrides any explicit padding=
        pad = size // 2 if sec.get_int("pad", 0) else sec.get_int("padding", 0)
        if not sec.get_int("batch_normalize", 0):
            raise DarknetError(f"{sec.where()}: only batch-normalised convolutions are supported")
        act_name = sec.options.get("activation", "linear")
        if act_name not in ("leaky", "linear"):
            raise DarknetError(f"{sec.where()}: activation '{act_name}' is not supported")
        act: nn.Module | bool = nn.LeakyReLU(LEAKY_SLOPE) if act_name == "leaky" else False
        conv = Conv(c_in, n, size, stride, pad, groups, 1, act)
        k = n * (c_in // groups) * size * size

        def take(count: int) -> torch.Tensor:
            nonlocal pos
            if pos + count > values.size:
                raise DarknetError(f"{sec.where()}: weights file ends early")
            pos += count
            return torch.from_numpy(values[pos - count : pos].copy())

        beta, gamma, mean, var = take(n), take(n), take(n), take(n)  # Darknet's order
        conv.conv.weight.data = take(k).reshape(n, c_in // groups, size, size)
        conv.bn.weight.data, conv.bn.bias.data = gamma, beta
        conv.bn.running_mean.data, conv.bn.running_var.data = mean, var
        return conv, pos

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """The slice's output, or the listed taps."""
        outs: dict[int, torch.Tensor] = {}
        keep = set(self.taps) | {s for s in self.shortcut_from if s is not None}
        for i, (layer, src) in enumerate(zip(self.layers, self.shortcut_from, strict=True), start=self.start):
            x = layer(x) if src is None else x + outs[src]
            if i in keep:
                outs[i] = x
        return [outs[t] for t in self.taps] if self.taps else x


def register() -> None:
    """Make `DarknetLayers` known to ultralytics' model-yaml parser (it looks names up in its own globals)."""
    import ultralytics.nn.tasks as tasks

    tasks.DarknetLayers = DarknetLayers


register()
