"""Remapping a dataset's classes into a target taxonomy, explicitly.

One `ClassMap` per source dataset: every source class is mapped to a target class or to None (drop its
boxes). A class the map does not mention is an error naming the class and the sample, unless
`drop_unmapped` is set: silently losing a class is how a "knife" detector ends up trained without the
dataset's folding knives. The target classes are an ordered list, so index i means the same class in every
dataset mapped into it (the one explicit class map that DESIGN.md asks for, instead of max id + 1).

YAML form (unknown keys are errors):

    target_classes: [knife, gun, blunt_tool]
    mapping:
      Straight_Knife: knife
      Folding_Knife: knife
      Scissor: null          # explicit: drop these boxes
    drop_unmapped: false
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from datasets.sample import DatasetRead, Sample

_KEYS = frozenset({"target_classes", "mapping", "drop_unmapped"})


class ClassMapError(ValueError):
    """An invalid class map, or a sample holding a class the map does not mention."""


@dataclass(frozen=True)
class ClassMap:
    """source class → target class (or None: drop). `target_classes` fixes the target order."""

    target_classes: tuple[str, ...]
    mapping: Mapping[str, str | None] = field(default_factory=dict)
    drop_unmapped: bool = False

    def __post_init__(self) -> None:
        targets = tuple(str(t) for t in self.target_classes)
        if len(set(targets)) != len(targets):
            raise ClassMapError(f"target_classes has duplicates: {list(targets)}")
        for source, target in self.mapping.items():
            if target is not None and target not in targets:
                raise ClassMapError(f"{source!r} maps to {target!r}, which is not in target_classes {list(targets)}")
        object.__setattr__(self, "target_classes", targets)
        object.__setattr__(self, "mapping", types.MappingProxyType(dict(self.mapping)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, origin: str = "class map") -> ClassMap:
        """Build from a dict of the YAML form; `origin` (a file name) prefixes error messages."""
        if not isinstance(data, Mapping):
            raise ClassMapError(
                f"{origin}: expected a mapping with target_classes and mapping, got {type(data).__name__}"
            )
        unknown = set(data) - _KEYS
        if unknown:
            raise ClassMapError(f"{origin}: unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
        targets = data.get("target_classes")
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise ClassMapError(f"{origin}: target_classes must be a list of names, got {targets!r}")
        mapping = data.get("mapping", {}) or {}
        if not isinstance(mapping, Mapping) or not all(t is None or isinstance(t, str) for t in mapping.values()):
            raise ClassMapError(f"{origin}: mapping must map class names to a target name or null, got {mapping!r}")
        drop = data.get("drop_unmapped", False)
        if not isinstance(drop, bool):
            raise ClassMapError(f"{origin}: drop_unmapped must be true or false, got {drop!r}")
        try:
            return cls(tuple(targets), {str(k): v for k, v in mapping.items()}, drop)
        except ClassMapError as exc:
            raise ClassMapError(f"{origin}: {exc}") from None

    @classmethod
    def from_yaml(cls, path: Path | str) -> ClassMap:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ClassMapError(f"{path}: invalid YAML: {exc}") from None
        return cls.from_dict(data, origin=str(path))

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_classes": list(self.target_classes),
            "mapping": dict(self.mapping),
            "drop_unmapped": self.drop_unmapped,
        }

    def unmapped(self, classes: Iterable[str]) -> list[str]:
        """The classes among `classes` the map does not mention (check a dataset's list up front)."""
        return [c for c in classes if c not in self.mapping]

    def target_of(self, source_class: str, *, context: str = "") -> str | None:
        """The target of one source class; None to drop. Raises `ClassMapError` for an unmapped class
        (unless `drop_unmapped`), naming `context` (the sample)."""
        if source_class in self.mapping:
            return self.mapping[source_class]
        if self.drop_unmapped:
            return None
        where = f" in {context}" if context else ""
        raise ClassMapError(
            f"class {source_class!r}{where} is not in the class map; map it to a target class, to null to drop it, "
            "or set drop_unmapped"
        )

    def apply(self, sample: Sample) -> Sample:
        """A new sample with its boxes' classes mapped; dropped classes' boxes (and masks) removed.

        Image-level labels are mapped too: a target class is present when any source class mapped to it is.
        """
        context = str(sample.image_path)
        targets = [self.target_of(c, context=context) for c in sample.class_names]
        keep = np.array([t is not None for t in targets], dtype=bool)
        labels = None
        if sample.image_level_labels is not None:
            labels = {}
            for source_class, present in sample.image_level_labels.items():
                target = self.target_of(source_class, context=context)
                if target is not None:
                    labels[target] = labels.get(target, False) or present
        masks = None if sample.masks is None else tuple(m for m, k in zip(sample.masks, keep, strict=True) if k)
        return Sample(
            image_path=sample.image_path,
            width=sample.width,
            height=sample.height,
            boxes_xyxy=sample.boxes_xyxy[keep],
            class_names=tuple(t for t in targets if t is not None),
            source=sample.source,
            masks=masks,
            image_level_labels=labels,
        )

    def apply_dataset(self, read: DatasetRead) -> DatasetRead:
        """The whole read remapped; its class list becomes `target_classes`. Checks every class the samples
        use first, so an unmapped class fails before any sample is mapped, with all such classes named."""
        used = {c for s in read.samples for c in (*s.class_names, *(s.image_level_labels or {}))}
        ordered = [c for c in read.classes if c in used] + sorted(used - set(read.classes))
        missing = [] if self.drop_unmapped else self.unmapped(ordered)
        if missing:
            raise ClassMapError(f"{read.path}: classes {missing} of {read.source} are not in the class map")
        return DatasetRead(
            samples=tuple(self.apply(s) for s in read.samples),
            classes=self.target_classes,
            problems=read.problems,
            format=read.format,
            source=read.source,
            path=read.path,
        )
