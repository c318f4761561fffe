"""Shared fixtures: paths to ../shared, a real Mosquitto broker."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers import Broker, running_broker

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PATROL_SHARED", REPO_ROOT.parent / "shared")).resolve()

os.environ.setdefault("YOLO_OFFLINE", "1")


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test saying what is missing."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data missing: {p} (tests read real data from ../shared beside the repo)")
    return p


def converted_coco_model(name: str = "yolo-fastest-1.1-xl") -> Path:
    """``models/external/<name>.onnx``, converted from ../shared's Darknet files by scripts/convert_darknet.py
    when missing (a clean checkout has none: the converted file is not shipped); skips without ../shared."""
    out = REPO_ROOT / "models" / "external" / f"{name}.onnx"
    if out.is_file():
        return out
    cfg = shared_path("models", "yolo-fastest-1.1-coco", f"{name}.cfg")
    from scripts import convert_darknet

    tmp = out.with_suffix(".onnx.part")  # a concurrent or killed run never leaves half a model behind
    assert convert_darknet.main(["--cfg", str(cfg), "--out", str(tmp)]) == 0
    tmp.replace(out)
    return out


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A real Mosquitto on a free port, anonymous, stopped after the test."""
    with running_broker(tmp_path / "broker") as b:
        yield b
