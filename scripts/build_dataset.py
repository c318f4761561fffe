#!/usr/bin/env python3
"""Build the 13-category YOLO dataset from every source listed in ``scripts/dataset_sources.yaml``.

Writes ``datasets/patrol13/{images,labels}/{train,val}`` (images are symlinks into the shared folder, which stays
outside git) and ``datasets/patrol13/data.yaml`` whose ``names`` are the taxonomy names in id order, then prints
boxes per class per split.

    .venv/bin/python scripts/build_dataset.py [--sample 6]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from vehicle.categories import Taxonomy  # noqa: E402

SOURCES_FILE = REPO_ROOT / "scripts" / "dataset_sources.yaml"
SPLITS = ("train", "val")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


class DatasetSourceError(ValueError):
    """A source entry or source file is missing or malformed; the message names the file and field."""


@dataclass(frozen=True)
class LabelledImage:
    """One image of the built dataset with its boxes (class ids of the taxonomy, normalised cxcywh)."""

    source: str
    image_path: Path
    group: str
    split: str
    class_ids: tuple[int, ...]
    boxes_cxcywh: tuple[tuple[float, float, float, float], ...]

    @property
    def out_stem(self) -> str:
        """File stem in the built dataset: source-prefixed so two sources never collide."""
        return f"{self.source}__{self.image_path.stem}"


def shared_root() -> Path:
    """The shared data folder: $PATROL_SHARED, else ``../shared`` next to the repo."""
    env = os.environ.get("PATROL_SHARED")
    return Path(env) if env else (REPO_ROOT / ".." / "shared").resolve()


def load_sources(path: Path = SOURCES_FILE) -> dict:
    """Read the sources file and check its top-level fields."""
    if not path.is_file():
        raise DatasetSourceError(f"{path}: sources file not found")
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or not isinstance(doc.get("sources"), list):
        raise DatasetSourceError(f"{path}: expected a mapping with a 'sources' list")
    for i, src in enumerate(doc["sources"]):
        for key in ("name", "path", "format", "group_regex", "classes", "licence"):
            if key not in src:
                raise DatasetSourceError(f"{path}: sources[{i}] lacks '{key}'")
    return doc


def group_of(file_name: str, group_regex: str, where: str) -> str:
    """The split group of a file (source photo id or road sequence) from ``group_regex``."""
    m = re.search(group_regex, file_name)
    if not m:
        raise DatasetSourceError(f"{where}: file name {file_name!r} does not match group_regex {group_regex!r}")
    return m.group("group")


def is_val_group(group: str, val_fraction: float) -> bool:
    """Stable hash split of a group name: the same group always lands in the same split."""
    h = int(hashlib.sha1(group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < val_fraction


def mask_to_boxes(mask: np.ndarray, merge_px: int, min_area_px: int) -> list[tuple[int, int, int, int]]:
    """Derive one box per defect region from a binary mask.

    Fragments closer than about ``merge_px`` pixels are joined (dilation before labelling) so one fragmented
    crack becomes one box; the box is fitted to the original mask pixels of the joined region, not to the
    dilated blob. Regions with fewer than ``min_area_px`` mask pixels are dropped as specks.

    Args:
        mask: HxW array, non-zero = defect.
        merge_px: diameter in pixels of the elliptical dilation kernel (<= 1: no merging).
        min_area_px: minimum count of original mask pixels a region needs to become a box.

    Returns:
        Boxes as (x0, y0, x1, y1) pixel coordinates, x1/y1 exclusive, sorted by x0 then y0.
    """
    binary = (mask > 0).astype(np.uint8)
    if not binary.any():
        return []
    joined = binary
    if merge_px > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (merge_px, merge_px))
        joined = cv2.dilate(binary, kernel)
    n, labels = cv2.connectedComponents(joined, connectivity=8)
    boxes: list[tuple[int, int, int, int]] = []
    for k in range(1, n):
        ys, xs = np.nonzero((labels == k) & (binary > 0))
        if len(xs) < min_area_px:
            continue
        boxes.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    return sorted(boxes)


def merge_overlapping_boxes(boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Replace every group of boxes that overlap (directly or through a chain) by the group's bounding box.

    Masks of two source classes of one category (a pothole inside a cracked patch) would otherwise give nested
    boxes for one damaged area: a label the model cannot satisfy with one box, and an NMS it must fight.

    Args:
        boxes: (x0, y0, x1, y1) pixel boxes, x1/y1 exclusive.

    Returns:
        Disjoint boxes, sorted by x0 then y0.
    """
    out = list(boxes)
    merged = True
    while merged:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                a, b = out[i], out[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    out[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    del out[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(out)


def _class_map(src: dict, taxonomy: Taxonomy, where: str) -> dict:
    """Source class key -> (taxonomy id or None, entry), checking that every target is a taxonomy name."""
    out = {}
    for key, entry in src["classes"].items():
        target = entry.get("to")
        if "why" not in entry:
            raise DatasetSourceError(f"{where}: classes[{key}] has no 'why'")
        if target is None:
            out[key] = (None, entry)
            continue
        cat = taxonomy.get(target)
        if cat is None:
            raise DatasetSourceError(f"{where}: classes[{key}].to={target!r} is not in the taxonomy")
        out[key] = (cat.id, entry)
    return out


def collect_yolo(src: dict, root: Path, taxonomy: Taxonomy, where: str) -> list[LabelledImage]:
    """Images and remapped boxes of a YOLO-txt source; a group in both splits is kept in val only."""
    base = root / src["path"]
    cmap = _class_map(src, taxonomy, where)
    names_file = base / "data.yaml"
    if names_file.is_file():  # guard against a source whose class order changed under us
        names = (yaml.safe_load(names_file.read_text(encoding="utf-8")) or {}).get("names") or []
        for key, (_, entry) in cmap.items():
            want = entry.get("source_name")
            if want and names and (int(key) >= len(names) or names[int(key)] != want):
                raise DatasetSourceError(f"{names_file}: class {key} is not {want!r} (names: {names})")
    per_split: dict[str, list[LabelledImage]] = {}
    for split, folder in src["splits"].items():
        img_dir, lbl_dir = base / "images" / folder, base / "labels" / folder
        if not img_dir.is_dir():
            raise DatasetSourceError(f"{where}: image folder {img_dir} not found")
        items = []
        for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            ids, boxes = [], []
            lbl = lbl_dir / f"{img.stem}.txt"
            lines = lbl.read_text().split("\n") if lbl.is_file() else []
            for ln, line in enumerate(lines, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 5:
                    raise DatasetSourceError(f"{lbl}:{ln}: expected 'class cx cy w h', got {line!r}")
                key = int(parts[0])
                if key not in cmap:
                    raise DatasetSourceError(f"{lbl}:{ln}: class {key} not listed in {where}.classes")
                cat_id = cmap[key][0]
                if cat_id is None:
                    continue  # hard negative: the box goes, the image stays
                ids.append(cat_id)
                boxes.append(tuple(float(v) for v in parts[1:]))
            group = group_of(img.name, src["group_regex"], where)
            items.append(LabelledImage(src["name"], img, group, split, tuple(ids), tuple(boxes)))
        per_split[split] = items
    val_groups = {it.group for it in per_split.get("val", [])}
    train = [it for it in per_split.get("train", []) if it.group not in val_groups]
    dropped = len(per_split.get("train", [])) - len(train)
    print(f"{src['name']}: {dropped} train copies dropped because their source image is in val")
    return train + per_split.get("val", [])


def collect_masks(src: dict, root: Path, taxonomy: Taxonomy, where: str) -> list[LabelledImage]:
    """Images of a mask source with boxes derived per class mask; split by group hash."""
    base = root / src["path"]
    img_dir, mask_dir = base / src["images"], base / src["masks"]
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise DatasetSourceError(f"{where}: folder {d} not found")
    cmap = _class_map(src, taxonomy, where)
    val_fraction = float(src.get("val_fraction", 0.2))
    items = []
    for img in sorted(img_dir.iterdir()):
        m = re.match(src["image_regex"], img.name)
        if not m:
            continue
        stem = m.group("stem")
        h = w = None
        per_category: dict[int, list[tuple[int, int, int, int]]] = {}
        for key, (cat_id, entry) in cmap.items():
            mask_path = mask_dir / f"{stem}_{key}.png"
            if not mask_path.is_file():
                continue
            mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise DatasetSourceError(f"{mask_path}: not a readable image")
            h, w = mask.shape
            if cat_id is None:
                continue
            per_category.setdefault(cat_id, []).extend(
                mask_to_boxes(mask, int(entry["merge_px"]), int(entry["min_area_px"])))
        ids, boxes = [], []
        for cat_id, cat_boxes in sorted(per_category.items()):
            for x0, y0, x1, y1 in merge_overlapping_boxes(cat_boxes):
                ids.append(cat_id)
                boxes.append(((x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h))
        group = group_of(img.name, src["group_regex"], where)
        split = "val" if is_val_group(group, val_fraction) else "train"
        items.append(LabelledImage(src["name"], img, group, split, tuple(ids), tuple(boxes)))
    return items


COLLECTORS = {"yolo": collect_yolo, "masks": collect_masks}


def collect_all(sources: dict, root: Path, taxonomy: Taxonomy) -> list[LabelledImage]:
    """Every labelled image of every source, already assigned to a split."""
    if not root.is_dir():
        raise DatasetSourceError(f"shared data folder {root} not found (set PATROL_SHARED)")
    out: list[LabelledImage] = []
    for i, src in enumerate(sources["sources"]):
        where = f"{SOURCES_FILE.name}: sources[{i}] ({src['name']})"
        fmt = src["format"]
        if fmt not in COLLECTORS:
            raise DatasetSourceError(f"{where}: unknown format {fmt!r} (known: {sorted(COLLECTORS)})")
        out.extend(COLLECTORS[fmt](src, root, taxonomy, where))
    return out


def write_dataset(items: list[LabelledImage], out_dir: Path, taxonomy: Taxonomy,
                  jpeg_quality: int | None = None, max_side_px: int | None = None) -> Path:
    """Write images, labels and data.yaml; returns the data.yaml path.

    Images are symlinks into the shared folder, or with ``jpeg_quality`` re-encoded JPEG copies (for carrying
    a self-contained dataset to another machine, e.g. the GPU lease), shrunk to ``max_side_px`` if given
    (labels are normalised, so they stay valid).
    """
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for split in SPLITS:
        (out_dir / "images" / split).mkdir(parents=True)
        (out_dir / "labels" / split).mkdir(parents=True)
    for it in items:
        if jpeg_quality is None:
            link = out_dir / "images" / it.split / f"{it.out_stem}{it.image_path.suffix.lower()}"
            link.symlink_to(it.image_path.resolve())
        else:
            img = cv2.imread(str(it.image_path))
            scale = (max_side_px or 1 << 30) / max(img.shape[:2])
            if scale < 1:
                size = (round(img.shape[1] * scale), round(img.shape[0] * scale))
                img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(out_dir / "images" / it.split / f"{it.out_stem}.jpg"), img,
                        [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        lines = [f"{c} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}" for c, (cx, cy, bw, bh) in
                 zip(it.class_ids, it.boxes_cxcywh, strict=True)]
        (out_dir / "labels" / it.split / f"{it.out_stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    data = {"path": str(out_dir.resolve()), "train": "images/train", "val": "images/val",
            "nc": len(taxonomy.names), "names": dict(enumerate(taxonomy.names))}
    data_yaml = out_dir / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return data_yaml


def count_table(items: list[LabelledImage], taxonomy: Taxonomy) -> str:
    """Markdown table: images and boxes per class per split."""
    counts = {s: Counter(c for it in items if it.split == s for c in it.class_ids) for s in SPLITS}
    n_img = {s: sum(1 for it in items if it.split == s) for s in SPLITS}
    rows = ["| id | category | train boxes | val boxes |", "|---|---|---|---|"]
    for cid, name in enumerate(taxonomy.names):
        rows.append(f"| {cid} | {name} | {counts['train'][cid]} | {counts['val'][cid]} |")
    rows.append(f"| | images (incl. negatives) | {n_img['train']} | {n_img['val']} |")
    return "\n".join(rows)


def draw_sample(items: list[LabelledImage], taxonomy: Taxonomy, out_path: Path, source: str, n: int) -> None:
    """Save a grid of ``n`` images of ``source`` with their derived boxes, to check the derivation by eye."""
    chosen = [it for it in items if it.source == source and it.class_ids]
    step = max(1, len(chosen) // max(n, 1))
    tiles = []
    for it in chosen[::step][:n]:
        img = cv2.imread(str(it.image_path))
        h, w = img.shape[:2]
        for c, (cx, cy, bw, bh) in zip(it.class_ids, it.boxes_cxcywh, strict=True):
            p0 = (int((cx - bw / 2) * w), int((cy - bh / 2) * h))
            p1 = (int((cx + bw / 2) * w), int((cy + bh / 2) * h))
            cv2.rectangle(img, p0, p1, (0, 0, 255), 2)
            cv2.putText(img, taxonomy.names[c], (p0[0], max(12, p0[1] - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        (0, 0, 255), 1)
        tiles.append(cv2.resize(img, (640, 400)))
    if not tiles:
        return
    while len(tiles) % 2:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.vstack([np.hstack(tiles[i:i + 2]) for i in range(0, len(tiles), 2)])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_path), grid)


def build(out_dir: Path | None = None, sample: int = 6, jpeg_quality: int | None = None,
          max_side_px: int | None = None) -> Path:
    """Build the dataset and print its table; returns the data.yaml path."""
    taxonomy = Taxonomy.load()
    sources = load_sources()
    out_dir = out_dir or REPO_ROOT / sources.get("output", "datasets/patrol13")
    items = collect_all(sources, shared_root(), taxonomy)
    data_yaml = write_dataset(items, out_dir, taxonomy, jpeg_quality, max_side_px)
    for src in sources["sources"]:
        if src["format"] == "masks" and sample:
            draw_sample(items, taxonomy, out_dir.parent / f"sample_{src['name']}.png", src["name"], sample)
    print(count_table(items, taxonomy))
    print(f"wrote {data_yaml}")
    return data_yaml


def main() -> None:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="output folder (default from the sources file)")
    ap.add_argument("--sample", type=int, default=6, help="images per mask source in the check drawing")
    ap.add_argument("--copy-jpeg-quality", type=int, default=None,
                    help="write re-encoded JPEG copies at this quality instead of symlinks (self-contained)")
    ap.add_argument("--copy-max-side", type=int, default=None, help="with --copy-jpeg-quality: shrink to this")
    args = ap.parse_args()
    try:
        build(args.out, args.sample, args.copy_jpeg_quality, args.copy_max_side)
    except DatasetSourceError as exc:
        sys.exit(f"build_dataset: {exc}")


if __name__ == "__main__":
    main()
