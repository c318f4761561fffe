"""scripts/build_dataset.py: boxes from masks, the class mapping and a leak-free split on the real shared data."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import REPO_ROOT, shared_path
from vehicle.categories import Taxonomy

_spec = importlib.util.spec_from_file_location("build_dataset", REPO_ROOT / "scripts" / "build_dataset.py")
build_dataset = importlib.util.module_from_spec(_spec)
sys.modules["build_dataset"] = build_dataset
_spec.loader.exec_module(build_dataset)


def _synthetic_mask() -> np.ndarray:
    """A 240x320 mask: one pothole disc, one crack in five fragments with 6 px gaps, one 3x3 speck."""
    mask = np.zeros((240, 320), np.uint8)
    cv2.circle(mask, (50, 60), 15, 255, thickness=-1)  # pothole: x 35..65, y 45..75
    for i in range(5):  # crack along y=179, x 150..283 in 5 pieces of 22 px, gaps of 6 px
        x0 = 150 + i * 28
        mask[178:181, x0:x0 + 22] = 255
    mask[20:23, 280:283] = 255  # speck: 9 px, far from everything
    return mask


def test_mask_to_boxes_merges_crack_fragments_and_drops_speck() -> None:
    boxes = build_dataset.mask_to_boxes(_synthetic_mask(), merge_px=15, min_area_px=20)
    # the pothole box and the whole crack (first fragment start to last fragment end); no speck box
    assert boxes == [(35, 45, 66, 76), (150, 178, 284, 181)]


def test_mask_to_boxes_without_merging_keeps_fragments_apart() -> None:
    boxes = build_dataset.mask_to_boxes(_synthetic_mask(), merge_px=1, min_area_px=20)
    crack = [b for b in boxes if b[1] == 178]
    assert crack == [(150 + i * 28, 178, 172 + i * 28, 181) for i in range(5)]
    assert not any(b[0] == 280 for b in boxes)  # the speck is still too small


def test_mask_to_boxes_empty_mask() -> None:
    assert build_dataset.mask_to_boxes(np.zeros((10, 10), np.uint8), merge_px=5, min_area_px=1) == []


def test_every_mapping_target_is_a_taxonomy_name_with_a_reason() -> None:
    names = set(Taxonomy.load().names)
    for src in build_dataset.load_sources()["sources"]:
        for key, entry in src["classes"].items():
            assert entry["to"] is None or entry["to"] in names, (src["name"], key)
            assert entry["why"].strip(), (src["name"], key)


def test_stable_group_split() -> None:
    groups = [f"seg{i}" for i in range(400)]
    first = [build_dataset.is_val_group(g, 0.2) for g in groups]
    assert first == [build_dataset.is_val_group(g, 0.2) for g in groups]
    assert 0.12 < sum(first) / len(first) < 0.28


@pytest.fixture(scope="module")
def real_items() -> list:
    shared_path("imagery", "garbage-cn")
    shared_path("imagery", "road-br")
    sources = build_dataset.load_sources()
    return build_dataset.collect_all(sources, build_dataset.shared_root(), Taxonomy.load())


def _independent_group(item: build_dataset.LabelledImage) -> str:
    """Group recomputed from the file name without the sources file's regexes."""
    name = Path(item.image_path).name
    if item.source == "garbage-cn":
        return name.split("_jpg.rf.")[0]  # Roboflow: <sourceid>_jpg.rf.<hash>.jpg
    return name.split("_")[3]  # road-br: <frame>_<state>_<highway>_<segment>_...


@pytest.mark.slow
def test_real_split_has_no_source_in_both_splits(real_items: list) -> None:
    for source in ("garbage-cn", "road-br"):
        items = [it for it in real_items if it.source == source]
        train = {_independent_group(it) for it in items if it.split == "train"}
        val = {_independent_group(it) for it in items if it.split == "val"}
        assert train and val, source
        assert not train & val, f"{source}: {sorted(train & val)[:5]} in both splits"
        n_val = sum(it.split == "val" for it in items)
        assert 0.1 < n_val / len(items) < 0.4, (source, n_val, len(items))


@pytest.mark.slow
def test_real_labels_are_mapped_and_inside_the_image(real_items: list) -> None:
    tax = Taxonomy.load()
    used = {tax.names[c] for it in real_items for c in it.class_ids}
    mapped = {e["to"] for src in build_dataset.load_sources()["sources"] for e in src["classes"].values()}
    assert used == mapped - {None}  # every mapped class has boxes, nothing else does
    boxes = np.array([b for it in real_items for b in it.boxes_cxcywh])
    lo = boxes[:, :2] - boxes[:, 2:] / 2
    hi = boxes[:, :2] + boxes[:, 2:] / 2
    assert (lo >= -1e-6).all() and (hi <= 1 + 1e-6).all()
    # garbage_bin is a hard negative: images whose only boxes were bins stay, with no boxes
    garbage_lbl = shared_path("imagery", "garbage-cn", "labels", "train")
    bins_only = [p.stem for p in garbage_lbl.glob("*.txt")
                 if {ln.split()[0] for ln in p.read_text().splitlines() if ln.strip()} == {"1"}]
    assert bins_only
    kept = {Path(it.image_path).stem: it for it in real_items if it.source == "garbage-cn"}
    assert all(stem in kept and kept[stem].class_ids == () for stem in bins_only)


def test_overlapping_boxes_of_one_category_merge_into_one() -> None:
    nested = [(100, 100, 300, 200), (150, 120, 180, 150)]  # a pothole box inside its cracked patch
    assert build_dataset.merge_overlapping_boxes(nested) == [(100, 100, 300, 200)]
    chain = [(0, 0, 10, 10), (9, 9, 20, 20), (19, 0, 30, 10)]  # a overlaps b, b overlaps c, a and c do not
    assert build_dataset.merge_overlapping_boxes(chain) == [(0, 0, 30, 20)]
    apart = [(0, 0, 10, 10), (10, 0, 20, 10), (50, 50, 60, 60)]  # touching edges (x1 exclusive) do not overlap
    assert build_dataset.merge_overlapping_boxes(apart) == apart


@pytest.mark.slow
def test_real_mask_boxes_of_one_image_never_overlap(real_items: list) -> None:
    def overlap(a, b) -> bool:
        return abs(a[0] - b[0]) * 2 < a[2] + b[2] - 1e-9 and abs(a[1] - b[1]) * 2 < a[3] + b[3] - 1e-9

    road = [it for it in real_items if it.source == "road-br"]
    assert sum(len(it.boxes_cxcywh) for it in road) > 1500
    for it in road:
        boxes = it.boxes_cxcywh
        assert not any(overlap(boxes[i], boxes[j]) for i in range(len(boxes)) for j in range(i + 1, len(boxes))), \
            it.image_path.name
