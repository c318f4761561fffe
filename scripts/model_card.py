#!/usr/bin/env python3
"""Regenerate ``models/MODEL_CARD.md`` from the shipped ONNX model and the validation split.

    .venv/bin/python scripts/model_card.py [--model models/patrol-detector.onnx] [--run runs/patrol13-cpu]

Every number in the card comes from this script, so anyone can rerun it: boxes per class from the built
dataset's labels; per-class P / R / AP50 / AP50-95 from ``patrol eval detections`` (the car's own detector code
on the original images, COCO definitions; checked against pycocotools in tests/test_metrics.py), with
ultralytics' validator on the same file as a second opinion; speed from onnxruntime on this machine.
tests/test_model_card.py recomputes the accuracy table and fails when the card no longer matches the model.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

import numpy as np
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from vehicle.categories import Taxonomy  # noqa: E402
from vehicle.detector import file_sha256  # noqa: E402

DEFAULT_MODEL = REPO_ROOT / "models" / "patrol-detector.onnx"
DEFAULT_DATA = REPO_ROOT / "datasets" / "patrol13" / "data.yaml"
DEFAULT_RUN = REPO_ROOT / "runs" / "patrol13-cpu"
SOURCES_FILE = REPO_ROOT / "scripts" / "dataset_sources.yaml"
CARD = REPO_ROOT / "models" / "MODEL_CARD.md"
AP50_BAR = 0.5
ACCURACY_HEADER = "| category | val boxes | P | R | AP50 | AP50-95 | AP50 (ultralytics val) | bar met |"


class ModelCardError(ValueError):
    """A file the card is built from is missing; the message names it."""


@dataclass(frozen=True)
class ClassScores:
    """Validation scores of one category: precision and recall at the best-F1 threshold, AP50, AP50-95."""

    precision: float
    recall: float
    ap50: float
    ap50_95: float


def box_counts(data_yaml: Path) -> dict[str, Counter]:
    """Boxes per class id per split, and images per split under the key ``images``."""
    if not data_yaml.is_file():
        raise ModelCardError(f"{data_yaml}: dataset yaml not found (run scripts/build_dataset.py)")
    root = Path(yaml.safe_load(data_yaml.read_text())["path"])
    out: dict[str, Counter] = {}
    for split in ("train", "val"):
        c: Counter = Counter()
        files = list((root / "labels" / split).glob("*.txt"))
        for f in files:
            c.update(int(line.split()[0]) for line in f.read_text().splitlines() if line.strip())
        c["images"] = len(files)
        out[split] = c
    return out


def patrol_eval(model: Path, data_yaml: Path, out_dir: Path | None = None) -> dict[int, ClassScores]:
    """Per-class scores of ``model`` on the val split with ``patrol eval detections`` (the car's detector)."""
    import tempfile

    from vehicle.eval_detections import eval_detections

    root = Path(yaml.safe_load(data_yaml.read_text())["path"])
    with tempfile.TemporaryDirectory() as tmp:
        doc = eval_detections(root / "images" / "val", out_dir or Path(tmp), model=model, progress=False)
    return {c["id"]: ClassScores(c["precision"], c["recall"], c["ap50"], c["ap50_95"]) for c in doc["classes"]}


def ultralytics_val(model: Path, data_yaml: Path, imgsz: int) -> dict[int, float]:
    """Per-class AP50 of ``model`` on the val split from ultralytics' own validator (a second opinion)."""
    from ultralytics import YOLO

    from scripts.ultralytics_offline import forbid_downloads

    forbid_downloads()
    metrics = YOLO(str(model), task="detect").val(data=str(data_yaml), imgsz=imgsz, batch=1, device="cpu",
                                                  plots=False, verbose=False, conf=0.001, iou=0.7)
    box = metrics.box
    return {int(c): float(box.ap50[i]) for i, c in enumerate(box.ap_class_index)}


def speed_ms(model: Path, runs: int = 50) -> tuple[float, float, int]:
    """Median and 90th percentile ms of one ``session.run`` on a random frame, and the core count."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).random(inp.shape, dtype=np.float32)
    for _ in range(5):
        sess.run(None, {inp.name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times)), float(np.percentile(times, 90)), os.cpu_count() or 0


def _start_of(run: Path) -> str:
    """What a run's segment started from: the weights it copied to ``start.pt`` (and what trained those), or the
    model yaml in its ``args.yaml``."""
    start = run / "start.pt"
    if start.is_file():
        text = f"weights {file_sha256(start)[:12]}"
        try:
            import torch

            ckpt = torch.load(start, map_location="cpu", weights_only=False)
            args = ckpt.get("train_args") or {}
            epoch = int(ckpt.get("epoch", -1))
            if epoch < 0:  # stripped for shipping: the previously shipped models/patrol-detector.pt
                text += f" (a shipped checkpoint: run `{args.get('name')}` at {args.get('imgsz')} px)"
            else:  # no machine paths in the card: the file name says enough
                text += (f" (epoch {epoch + 1} of run `{args.get('name')}`, trained at {args.get('imgsz')} px "
                         f"from `{Path(str(args.get('model'))).name}`)")
        except Exception:  # the card still names the file by its hash
            pass
        return text
    args_file = run / "args.yaml"
    model = yaml.safe_load(args_file.read_text()).get("model") if args_file.is_file() else None
    return f"the model yaml `{model}`" if model else "the model yaml"


def run_summary(run: Path) -> dict[str, object]:
    """What the training run folder says: last command, epochs, hours, final val mAP50, what it started from."""
    cmd_file = run / "command.txt"
    out: dict[str, object] = {
        "command": cmd_file.read_text().strip().splitlines()[-1] if cmd_file.is_file() else "(not recorded)",
        "epochs": 0, "hours": 0.0, "final_map50": None,
        "started_from": _start_of(run),
    }
    results = run / "results.csv"
    if results.is_file():
        with results.open() as fh:  # a resumed run may repeat the epoch it was killed in: the last row wins
            rows = {row["epoch"].strip(): row for row in csv.DictReader(fh)}
        if rows:
            last = list(rows.values())[-1]
            out.update(epochs=len(rows), hours=float(last["time"]) / 3600,
                       final_map50=float(last["metrics/mAP50(B)"]))
    return out


def accuracy_rows(taxonomy: Taxonomy, trained: list[str], val_boxes: Counter, ours: dict[int, ClassScores],
                  theirs: dict[int, float]) -> list[str]:
    """The accuracy table's rows, one per category that had training data."""
    rows = []
    for i, n in enumerate(taxonomy.names):
        if n not in trained:
            continue
        s = ours.get(i, ClassScores(0.0, 0.0, 0.0, 0.0))
        rows.append(f"| {n} | {val_boxes[i]} | {s.precision:.3f} | {s.recall:.3f} | {s.ap50:.3f} | {s.ap50_95:.3f} "
                    f"| {theirs.get(i, 0.0):.3f} | {'yes' if s.ap50 >= AP50_BAR else 'NO'} |")
    return rows


def parse_accuracy_table(card: str) -> dict[str, tuple[float, float, float, float]]:
    """The card's accuracy table back as ``{category: (P, R, AP50, AP50-95)}`` (for the test that rechecks it)."""
    lines = card.splitlines()
    start = lines.index(ACCURACY_HEADER) + 2
    out = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = tuple(float(v) for v in cells[2:6])
    return out


def render(model: Path, data_yaml: Path, run: Path, train_cmd: str | None = None,
           report_dir: Path | None = None) -> str:
    """The whole card as markdown."""
    import onnx
    import onnxruntime

    tax = Taxonomy.load()
    proto = onnx.load(str(model))
    meta = {p.key: p.value for p in proto.metadata_props}
    imgsz = ast.literal_eval(meta.get("imgsz", "[640, 640]"))[0]
    counts = box_counts(data_yaml)
    ours = patrol_eval(model, data_yaml, report_dir)
    theirs = ultralytics_val(model, data_yaml, imgsz)
    med, p90, ncpu = speed_ms(model)
    summary = run_summary(run)
    cmd = train_cmd or summary["command"]
    sources = yaml.safe_load(SOURCES_FILE.read_text())["sources"]
    no_data = [n for i, n in enumerate(tax.names) if counts["train"][i] == 0]
    trained = [n for i, n in enumerate(tax.names) if counts["train"][i] > 0]
    proxies = [c for c in tax.categories if getattr(c, "object_classes", None)]
    met = [n for i, n in enumerate(tax.names) if n in trained and ours.get(i, ClassScores(0, 0, 0, 0)).ap50 >= AP50_BAR]
    final_map = summary["final_map50"]

    lines = [
        f"# Model card: {model.stem}",
        "",
        f"Generated by `scripts/model_card.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from the files "
        "below; `scripts/train.py --ship` reruns it after training. Do not edit by hand.",
        "",
        f"- File: `models/{model.name}` ({model.stat().st_size / 1e6:.1f} MB, SHA-256 `{file_sha256(model)[:16]}…`), "
        "a YOLO11n neck and detection head on Yolo-Fastest 1.1 XL's COCO-trained backbone "
        f"(`models/patrol-fastest.yaml`), ONNX opset {proto.opset_import[0].version}, "
        f"static input 1x3x{imgsz}x{imgsz} (RGB, 0..1, "
        f"letterboxed with grey 114), output 1x{4 + len(tax.names)}xN (cx, cy, w, h, then one score per class; "
        f"NMS is the caller's job). Exported from `models/{model.stem}.pt` (its SHA-256 is in the metadata).",
        f"- Metadata: `names` (the {len(tax.names)} taxonomy names in id order), `imgsz`, `stride`, and "
        f"`trained_categories` = {meta.get('trained_categories', '(absent)')}, which the car puts on its status "
        "topic (`categories_covered`).",
        f"- Training: `{cmd}`; this segment started from {summary['started_from']} and ran "
        f"{summary['epochs']} epochs in {summary['hours']:.1f} h on this machine's CPU"
        + (f" (final validation mAP50 in training: {final_map:.3f})." if final_map is not None else ".")
        + " Nothing was downloaded: the first segment starts from `models/patrol-fastest.yaml`, whose backbone "
          "holds Yolo-Fastest 1.1 XL's COCO weights from `../shared/models/yolo-fastest-1.1-coco` (public domain; "
          "strides 2-8 frozen, strides 16-32 fine-tuned) and whose neck and head start from scratch. "
          "Settings: `scripts/train.py` (profiles `cpu` and `gpu`).",
        "",
        "## This model never reports these",
        "",
        "No labelled training images exist for them yet, so the model has never seen one; any score it gives these "
        "classes is noise (the car's per-category confirmation still applies):",
        "",
        *[f"- {n}" for n in no_data],
        "",
        f"It was trained for: {', '.join(trained)}.",
        "",
    ]
    if proxies:
        lines += [
            "Of the categories above, "
            + ", ".join(f"{c.name} (from {', '.join(c.object_classes)})" for c in proxies)
            + " can still be reported by the car through the general-object detector and the rules in "
              "`vehicle/rules.py` (`[object_detector]` in the config): that path does not use this model.",
            "",
        ]
    lines += [
        "## What it cannot see well",
        "",
        "- Viewpoint: the garbage and bin images are pedestrian-height photos of Chinese pavements, yards and "
        "alleys, many close up; the road images are a survey vehicle's roof camera on Brazilian highways. A city "
        "patrol car's roof camera sees garbage from farther away and higher up: expect lower recall on small, "
        "distant heaps until roof-camera images are labelled.",
        "- Road damage: boxes are derived from segmentation masks (one box per merged crack or pothole), so a "
        "detection may cover one crack or a patch of several; on city streets (manholes, paint, patches) it has "
        "no examples and may confuse them with damage.",
        "- Conditions: daylight only in both sources; night, rain and glare are untested.",
        f"- Input size {imgsz} px (chosen so that training fits two CPU cores): small or distant objects lose "
        "detail; the GPU profile trains at 640.",
        "",
        "## Data",
        "",
        "| source | licence | mapping (source class -> category) |",
        "|---|---|---|",
    ]
    for s in sources:
        mapping = "; ".join(f"{e.get('source_name', k)} -> {e['to'] or 'dropped (hard negative: image kept)'}"
                            for k, e in s["classes"].items())
        lines.append(f"| `../shared/{s['path']}` | {s['licence']} | {mapping} |")
    lines += [
        "",
        "Reasons for each mapping: `scripts/dataset_sources.yaml`. Split by source image (garbage-cn: the "
        "Roboflow source id, so augmented copies of one photo never straddle the split) and by road segment "
        "(road-br: consecutive frames are near-duplicates). Road boxes are derived from the masks "
        "(`build_dataset.mask_to_boxes`: crack fragments merged, specks dropped).",
        "",
        "| id | category | train boxes | val boxes |",
        "|---|---|---|---|",
        *[f"| {i} | {n} | {counts['train'][i]} | {counts['val'][i]} |" for i, n in enumerate(tax.names)],
        f"| | images (incl. negatives) | {counts['train']['images']} | {counts['val']['images']} |",
        "",
        "## Accuracy on the validation split",
        "",
        f"`patrol eval detections` on the shipped `.onnx` ({counts['val']['images']} validation images at their "
        "own size, the car's detector code, score threshold 0.001, NMS IoU 0.7, COCO AP definitions; P and R at "
        "the best-F1 score threshold). The ultralytics column is its own validator on the same file, as a "
        f"second opinion. Bar (issue 3): AP50 >= {AP50_BAR} for every category with training data.",
        "",
        ACCURACY_HEADER,
        "|---|---|---|---|---|---|---|---|",
        *accuracy_rows(tax, trained, counts["val"], ours, theirs),
        "",
        f"Bar met for {len(met)} of {len(trained)} trained categories" + (f": {', '.join(met)}." if met else "."),
        "",
        "## Speed",
        "",
        f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider on this machine "
        f"({platform.processor() or platform.machine()}, {ncpu} cores, shared with other jobs): "
        f"median {med:.1f} ms, p90 {p90:.1f} ms per {imgsz}x{imgsz} frame (model run only, no pre/post-processing). "
        "`scripts/bench.py` measures it inside the whole pipeline.",
        "",
        "## On the Jetson (TensorRT FP16)",
        "",
        "ONNX Runtime's TensorRT provider builds an FP16 engine on first start and caches it "
        "(`detector.tensorrt_fp16`, `detector.tensorrt_cache_dir`). To build one ahead of time:",
        "",
        "```sh",
        f"/usr/src/tensorrt/bin/trtexec --onnx=models/{model.name} --fp16 "
        f"--saveEngine=models/{model.stem}.fp16.engine",
        "```",
        "",
        "Build the engine on the Jetson itself (engines are tied to the GPU and TensorRT version), and check it "
        "against this file with `patrol eval detections` on the validation images before relying on it.",
        "",
        "## Licence note",
        "",
        "Trained with ultralytics (AGPL-3.0); the weights are derived from CC BY 4.0 (garbage-cn, attribution "
        "required) and MIT (road-br) data, starting from Yolo-Fastest 1.1 XL's public-domain COCO weights.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--run", type=Path, default=DEFAULT_RUN)
    ap.add_argument("--train-command", default=None, help="override the command recorded in <run>/command.txt")
    ap.add_argument("--report", type=Path, default=None, help="also keep the eval report (report.html) here")
    ap.add_argument("--out", type=Path, default=CARD)
    args = ap.parse_args()
    try:
        if not args.model.is_file():
            raise ModelCardError(f"{args.model}: model not found (run scripts/export.py)")
        text = render(args.model, args.data, args.run.resolve(), args.train_command, args.report)
    except ModelCardError as exc:
        sys.exit(f"model_card: {exc}")
    args.out.write_text(text, encoding="utf-8")
    print(text)
    print(json.dumps({"written": str(args.out)}))


if __name__ == "__main__":
    main()
