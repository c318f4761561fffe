"""The city's taxonomy of problems (``models/categories.yaml``): names, ids and per-category defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEFAULT_CATEGORIES_FILE = Path(__file__).resolve().parent.parent / "models" / "categories.yaml"


class TaxonomyError(ValueError):
    """The categories file is missing or malformed; the message names the file and field."""


@dataclass(frozen=True)
class Category:
    """One kind of problem the car can report."""

    id: int
    name: str
    name_zh: str
    definition: str
    radius_m: float
    min_frames: int
    min_median_score: float
    object_classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Taxonomy:
    """All categories of one city, looked up by name or id."""

    categories: tuple[Category, ...]
    source: str = ""
    _by_name: dict[str, Category] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {c.name: c for c in self.categories}
        object.__setattr__(self, "_by_name", by_name)

    @property
    def names(self) -> list[str]:
        """Category names in id order."""
        return [c.name for c in sorted(self.categories, key=lambda c: c.id)]

    def get(self, name: str) -> Category | None:
        """The category called ``name``, or None."""
        return self._by_name.get(name)

    def __getitem__(self, name: str) -> Category:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"unknown category {name!r} (not in {self.source or 'the taxonomy'})") from None

    def object_class_map(self) -> dict[str, str]:
        """General-object class name -> candidate category name (for the object detector)."""
        out: dict[str, str] = {}
        for c in self.categories:
            for cls in c.object_classes:
                out[cls] = c.name
        return out

    @classmethod
    def load(cls, path: str | Path = DEFAULT_CATEGORIES_FILE) -> Taxonomy:
        """Read and validate a categories YAML file; raise `TaxonomyError` naming the bad field."""
        path = Path(path)
        if not path.is_file():
            raise TaxonomyError(f"{path}: categories file not found")
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise TaxonomyError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("categories"), list):
            raise TaxonomyError(f"{path}: expected a mapping with a 'categories' list")
        cats: list[Category] = []
        seen_ids: set[int] = set()
        seen_names: set[str] = set()
        for i, raw in enumerate(doc["categories"]):
            where = f"{path}: categories[{i}]"
            if not isinstance(raw, dict):
                raise TaxonomyError(f"{where}: expected a mapping")
            try:
                cat = Category(
                    id=int(raw["id"]),
                    name=str(raw["name"]),
                    name_zh=str(raw.get("name_zh", "")),
                    definition=str(raw.get("definition", "")),
                    radius_m=float(raw.get("radius_m", 5.0)),
                    min_frames=int(raw.get("min_frames", 3)),
                    min_median_score=float(raw.get("min_median_score", 0.4)),
                    object_classes=tuple(str(x) for x in raw.get("object_classes", []) or []),
                )
            except KeyError as exc:
                raise TaxonomyError(f"{where}.{exc.args[0]}: required field missing") from None
            except (TypeError, ValueError) as exc:
                raise TaxonomyError(f"{where}: {exc}") from None
            if cat.id in seen_ids:
                raise TaxonomyError(f"{where}.id: duplicate id {cat.id}")
            if cat.name in seen_names:
                raise TaxonomyError(f"{where}.name: duplicate name {cat.name!r}")
            if not cat.name.isidentifier():
                raise TaxonomyError(f"{where}.name: {cat.name!r} must be a lower_snake_case identifier")
            if cat.radius_m <= 0:
                raise TaxonomyError(f"{where}.radius_m: must be > 0, got {cat.radius_m}")
            if cat.min_frames < 1:
                raise TaxonomyError(f"{where}.min_frames: must be >= 1, got {cat.min_frames}")
            if not 0.0 <= cat.min_median_score <= 1.0:
                raise TaxonomyError(f"{where}.min_median_score: must be in [0, 1], got {cat.min_median_score}")
            seen_ids.add(cat.id)
            seen_names.add(cat.name)
            cats.append(cat)
        return cls(categories=tuple(cats), source=str(path))
