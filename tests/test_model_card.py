"""models/MODEL_CARD.md tells the truth about the shipped model: its accuracy table is recomputed here on the
real validation split (built from ../shared) and must match; the categories it lists as never reported are
exactly those without training data and those the model's metadata leaves out."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import onnx
import pytest

from tests.conftest import REPO_ROOT, shared_path
from vehicle.categories import Taxonomy

CARD = REPO_ROOT / "models" / "MODEL_CARD.md"
MODEL = REPO_ROOT / "models" / "patrol-detector.onnx"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return sys.modules[name]


model_card = _load("model_card")
build_dataset = _load("build_dataset")


@pytest.fixture(scope="module")
def card() -> str:
    assert CARD.is_file(), f"{CARD}: run scripts/model_card.py"
    return CARD.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def val_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for source in build_dataset.load_sources()["sources"]:
        shared_path(*source["path"].split("/"))
    items = build_dataset.collect_all(build_dataset.load_sources(), build_dataset.shared_root(), Taxonomy.load())
    return build_dataset.write_dataset(items, tmp_path_factory.mktemp("card") / "patrol13", Taxonomy.load())


def test_the_card_names_the_shipped_file(card: str) -> None:
    assert f"SHA-256 `{model_card.file_sha256(MODEL)[:16]}" in card, "the card describes another model file"


def test_never_reported_list_is_the_categories_without_training_boxes(card: str) -> None:
    section = card.split("## This model never reports these", 1)[1].split("##", 1)[0]
    listed = {line[2:].strip() for line in section.splitlines() if line.startswith("- ")}
    meta = {p.key: p.value for p in onnx.load(str(MODEL)).metadata_props}
    covered = set(json.loads(meta["trained_categories"]))
    assert covered == {"exposed_garbage", "overflowing_bin", "road_damage"}  # what ../shared/imagery labels
    assert listed == set(Taxonomy.load().names) - covered


@pytest.mark.slow
def test_accuracy_table_matches_a_fresh_evaluation(card: str, val_data: Path) -> None:
    table = model_card.parse_accuracy_table(card)
    fresh = model_card.patrol_eval(MODEL, val_data)
    names = Taxonomy.load().names
    assert set(table) == {names[i] for i in fresh}
    for cid, scores in fresh.items():
        want = (scores.precision, scores.recall, scores.ap50, scores.ap50_95)
        assert table[names[cid]] == pytest.approx(want, abs=0.0015), names[cid]  # the card rounds to 3 places
