#!/usr/bin/env python3
"""Train the 13-category patrol detector (nothing is downloaded) and, with ``--ship``, ship it.

    .venv/bin/python scripts/train.py --profile cpu --ship     # retrain on every source, export, check, card
    .venv/bin/python scripts/train.py --ship-only              # ship the run's newest checkpoint (it may go on)
    .venv/bin/python scripts/train.py --profile gpu            # one GPU, 640 px (see scripts/train_gpu.sh)

One command retrains: the dataset is rebuilt from every source in ``scripts/dataset_sources.yaml`` (a new folder in
``../shared/imagery`` is one entry there), so it never trains on a stale copy. Where training starts:

1. ``runs/<name>/weights/last.pt`` from an interrupted run (killed, machine shut down): resumed where it stopped,
   with its optimizer and lr schedule;
2. else ``--init WEIGHTS``, or by default the shipped ``models/patrol-detector.pt`` when it exists: a new
   segment (fresh lr schedule) from those weights. This is how training goes on across sessions and machines:
   ``runs/`` is not in git, the shipped checkpoint is;
3. else (or with ``--fresh``) from the model yaml, by default ``models/patrol-fastest.yaml``: Yolo-Fastest's
   COCO-trained backbone from ``../shared`` (the only pretrained network here; nothing can be downloaded) under a
   YOLO11n neck and head trained from scratch. The yaml's ``freeze`` key says how many of its layers stay frozen.

``--ship`` then copies the run's ``last.pt`` (optimizer stripped) to ``models/patrol-detector.pt``, exports
``models/patrol-detector.onnx`` with ``scripts/export.py`` (parity check on 50 validation images) and rewrites
``models/MODEL_CARD.md`` with ``scripts/model_card.py``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

# Before ultralytics is imported: no hub, no downloads, no settings sync, no pip installs.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "scripts")]
DEFAULT_DATA = REPO_ROOT / "datasets" / "patrol13" / "data.yaml"
RUNS_DIR = REPO_ROOT / "runs"
SHIPPED_WEIGHTS = REPO_ROOT / "models" / "patrol-detector.pt"
DEFAULT_MODEL_YAML = REPO_ROOT / "models" / "patrol-fastest.yaml"


class TrainSetupError(ValueError):
    """A file training needs is missing or an argument is wrong; the message names it."""


@dataclass(frozen=True)
class Profile:
    """Training settings for one kind of machine (ultralytics argument names)."""

    imgsz: int
    batch: int
    workers: int
    epochs: int
    time: float | None  # hours; ultralytics fits the epoch count and the lr schedule to it after the first epoch
    device: str
    close_mosaic: int
    mosaic: float
    optimizer: str
    lr0: float
    warmup_epochs: float
    cache: str | bool
    val: bool  # validate after every epoch (the final epoch is always validated)
    fraction: float = 1.0  # share of the training images used (below 1 only for smoke runs)


PROFILES: dict[str, Profile] = {
    # 2 cores: time-limited, so ultralytics fits the epoch count and the lr schedule to --time-h; AdamW with a
    # short warm-up converges fast on a small set; validating every epoch costs ~10 % but shows progress in
    # results.csv. 512 px (~7 min an epoch here; 320 px took ~3): at 320 a road frame shrinks to 320x200 and
    # distant potholes and thin cracks to a few pixels (road_damage AP50 stayed near 0.23 while the other two
    # categories passed 0.5)
    "cpu": Profile(imgsz=512, batch=16, workers=2, epochs=300, time=5.0, device="cpu", close_mosaic=10,
                   mosaic=1.0, optimizer="AdamW", lr0=0.002, warmup_epochs=2.0, cache="ram", val=True),
    "gpu": Profile(imgsz=640, batch=64, workers=8, epochs=300, time=None, device="0", close_mosaic=20,
                   mosaic=1.0, optimizer="SGD", lr0=0.01, warmup_epochs=3.0, cache="ram", val=True),
}


def rebuild_dataset(data: Path) -> Path:
    """The dataset yaml to train on: the default one is rebuilt from the sources file every time."""
    if data.resolve() != DEFAULT_DATA.resolve():
        if not data.is_file():
            raise TrainSetupError(f"{data}: dataset yaml not found")
        return data
    import build_dataset

    print("rebuilding the dataset from scripts/dataset_sources.yaml")
    try:
        return build_dataset.build(DEFAULT_DATA.parent)
    except build_dataset.DatasetSourceError as exc:
        raise TrainSetupError(str(exc)) from exc


def _record_command(run: Path) -> None:
    """Append this command line to ``<run>/command.txt`` (the model card quotes the last one)."""
    run.mkdir(parents=True, exist_ok=True)
    argv = [".venv/bin/python", "scripts/train.py", *sys.argv[1:]]
    with (run / "command.txt").open("a") as fh:
        fh.write(" ".join(shlex.quote(a) for a in argv) + "\n")


def checkpoint_state(checkpoint: Path) -> str:
    """``"interrupted"`` (mid-run: ultralytics keeps the optimizer), ``"finished"`` (stripped, epoch -1) or
    ``"damaged"`` (unreadable: the machine went away while it was being written)."""
    import torch

    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception:  # torch raises many kinds of error on a truncated file
        return "damaged"
    if not isinstance(ckpt, dict):
        return "damaged"
    return "interrupted" if ckpt.get("optimizer") is not None and int(ckpt.get("epoch", -1)) >= 0 else "finished"


def _keep_safe_copy(trainer: object) -> None:
    """After each checkpoint write, keep a durable copy beside it (``last.safe.pt``): ultralytics overwrites
    ``last.pt`` in place, so a kill during that write would otherwise cost the whole run."""
    last = Path(trainer.last)
    tmp = last.with_name("last.safe.pt.tmp")
    with last.open("rb") as src, tmp.open("wb") as dst:
        shutil.copyfileobj(src, dst)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, last.with_name("last.safe.pt"))


def _resumable(last: Path) -> bool:
    """Whether ``last`` is an interrupted run to resume; a damaged one is first replaced by its safe copy."""
    if not last.is_file():
        return False
    state = checkpoint_state(last)
    if state == "damaged":
        safe = last.with_name("last.safe.pt")
        if not safe.is_file() or checkpoint_state(safe) != "interrupted":
            raise TrainSetupError(f"{last}: checkpoint is damaged and has no usable safe copy: use --fresh or --init")
        print(f"{last} is damaged (killed while it was written): resuming from {safe}, one epoch earlier")
        shutil.copyfile(safe, last)
        return True
    return state == "interrupted"


def _use_every_core() -> None:
    """Train on every core: ultralytics leaves one for the data loader (1 torch thread on 2 cores); here the model
    is the bottleneck and using both is ~1.7x faster, loader workers included."""
    import torch
    import ultralytics.utils.torch_utils as torch_utils

    torch_utils.NUM_THREADS = os.cpu_count() or 1
    torch.set_num_threads(torch_utils.NUM_THREADS)


def train(profile_name: str, name: str | None = None, data: Path = DEFAULT_DATA,
          model_yaml: str = str(DEFAULT_MODEL_YAML),
          init: Path | None = None, fresh: bool = False, runs_dir: Path = RUNS_DIR, **overrides: object) -> Path:
    """Train (or resume) and return the run folder.

    Args:
        profile_name: key of `PROFILES`.
        name: run name under ``runs/`` (default ``patrol13-<profile>``).
        data: dataset yaml (default: the patrol13 dataset, rebuilt from the sources file).
        model_yaml: ultralytics model yaml used when starting from scratch; ``nc`` is taken from the dataset.
        init: weights to start a new segment from (default: the shipped checkpoint, when present).
        fresh: start from ``model_yaml`` even if a checkpoint exists.
        runs_dir: folder of the run folders.
        **overrides: `Profile` fields to change (e.g. ``time=0.05``); None values are ignored.
    """
    if profile_name not in PROFILES:
        raise TrainSetupError(f"unknown profile {profile_name!r} (known: {sorted(PROFILES)})")
    if init is not None and not init.is_file():
        raise TrainSetupError(f"{init}: --init weights not found")
    if model_yaml.endswith(".pt"):
        raise TrainSetupError(f"{model_yaml}: --model takes a model yaml; start from weights with --init")
    if not Path(model_yaml).is_file() and (REPO_ROOT / model_yaml).is_file():  # a repo path from another folder
        model_yaml = str(REPO_ROOT / model_yaml)
    prof = replace(PROFILES[profile_name], **{k: v for k, v in overrides.items() if v is not None})
    name = name or f"patrol13-{profile_name}"
    run = runs_dir / name
    last = run / "weights" / "last.pt"
    data = rebuild_dataset(Path(data))
    _record_command(run)

    from ultralytics import YOLO

    import scripts.pretrained_backbone  # noqa: F401  (registers DarknetLayers; checkpoints pickle it by this path)
    from scripts.ultralytics_offline import forbid_downloads

    forbid_downloads()
    if prof.device == "cpu":
        _use_every_core()
    if not fresh and init is None and _resumable(last):
        print(f"resuming the interrupted run from {last}")
        model = YOLO(str(last))
        model.add_callback("on_model_save", _keep_safe_copy)
        model.train(resume=True)
        return run
    start: str | bool = False
    if not fresh:
        source = init or (SHIPPED_WEIGHTS if SHIPPED_WEIGHTS.is_file() else None)
        if source is not None:
            # a copy: the run's own folder records what it started from, and --ship may overwrite the source
            run.mkdir(parents=True, exist_ok=True)
            start = str(shutil.copyfile(source, run / "start.pt"))
            print(f"new training segment from {source} (a fresh lr schedule on those weights)")
    args = {k: v for k, v in asdict(prof).items() if v is not None and not (k == "time" and not v)}
    print(f"training {start or model_yaml} on {data} with profile {profile_name}: {args}")
    model = YOLO(start or model_yaml)
    model.add_callback("on_model_save", _keep_safe_copy)
    freeze = int(getattr(model.model, "yaml", {}).get("freeze", 0))  # the model yaml says which layers stay frozen
    model.train(
        data=str(data), project=str(runs_dir.resolve()), name=name, exist_ok=True, pretrained=start, freeze=freeze,
        amp=False,  # off: ultralytics' AMP check would download yolo11n.pt; with it off nothing is fetched
        plots=False,  # plotting fetches a font
        patience=0, seed=0, deterministic=False, verbose=True, **args)
    return run


def ship(run: Path, data: Path) -> None:
    """Ship ``run``'s last checkpoint: stripped .pt and exported .onnx in ``models/``, parity check, model card."""
    import export
    import model_card
    from ultralytics.utils.torch_utils import strip_optimizer

    last = run / "weights" / "last.pt"
    if not last.is_file():
        raise TrainSetupError(f"{last}: no checkpoint to ship")
    if checkpoint_state(last) == "damaged":  # a run still training may be rewriting it right now
        last = last.with_name("last.safe.pt")
        if not last.is_file() or checkpoint_state(last) == "damaged":
            raise TrainSetupError(f"{run / 'weights'}: no readable checkpoint to ship")
    SHIPPED_WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    strip_optimizer(str(last), str(SHIPPED_WEIGHTS))  # EMA weights in fp16, no optimizer: ~5 MB
    onnx_path = export.export(SHIPPED_WEIGHTS, export.DEFAULT_OUT, data)
    n_boxes, problems = export.parity(SHIPPED_WEIGHTS, onnx_path, export.val_images(data, 50))
    if problems or not n_boxes:
        raise TrainSetupError(f"{onnx_path}: parity check failed: {(problems or ['no boxes compared'])[:3]}")
    print(f"parity PASS on 50 validation images ({n_boxes} boxes)")
    card = model_card.render(onnx_path, data, run.resolve(), None)
    model_card.CARD.write_text(card, encoding="utf-8")
    print(f"wrote {model_card.CARD}")


def main() -> None:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    ap.add_argument("--name", default=None, help="run name under runs/ (default patrol13-<profile>)")
    ap.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="folder of the run folders")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="dataset yaml (default: rebuilt from scripts/dataset_sources.yaml)")
    ap.add_argument("--model", default=str(DEFAULT_MODEL_YAML.relative_to(REPO_ROOT)),
                    help="model yaml when starting from scratch (ultralytics' own, e.g. yolo11n.yaml, work too)")
    ap.add_argument("--init", type=Path, default=None,
                    help="weights to start from (default: models/patrol-detector.pt when present)")
    ap.add_argument("--fresh", action="store_true", help="start from the model yaml, ignoring every checkpoint")
    ap.add_argument("--time-h", type=float, default=None, help="stop after this many hours (0: no time limit)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--imgsz", type=int, default=None, help="override the profile's image size")
    ap.add_argument("--fraction", type=float, default=None, help="train on this fraction of the images (smoke runs)")
    ap.add_argument("--ship", action="store_true", help="afterwards export, check and document the model in models/")
    ap.add_argument("--ship-only", action="store_true",
                    help="do not train: ship the newest checkpoint of the run (--name), e.g. while it goes on")
    args = ap.parse_args()
    try:
        # --epochs alone means exactly that many epochs, not the profile's time limit
        time_h = 0.0 if args.epochs is not None and args.time_h is None else args.time_h
        if args.ship_only:
            data = rebuild_dataset(args.data) if not args.data.is_file() else args.data
            ship(args.runs_dir / (args.name or f"patrol13-{args.profile}"), data)
            return
        run = train(args.profile, args.name, args.data, args.model, args.init, args.fresh, args.runs_dir, time=time_h,
                    epochs=args.epochs, batch=args.batch, imgsz=args.imgsz, fraction=args.fraction)
        print(f"run folder: {run}")
        if args.ship:
            ship(run, args.data)
    except TrainSetupError as exc:
        sys.exit(f"train: {exc}")


if __name__ == "__main__":
    main()
