"""The public X-ray datasets the readers recognise by their class lists (see ../shared/DATASETS.md).

Recognising the dataset gives two things: `Sample.source` (so a model package can record which
academic-only datasets trained it) and the dataset's full class list in its published order, so that class
indices are the same whichever subset of the dataset a folder holds.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Published class lists, in the order the datasets' own tooling uses, per native format.
KNOWN_CLASSES: dict[str, dict[str, tuple[str, ...]]] = {
    "voc": {
        "sixray": ("Gun", "Knife", "Wrench", "Pliers", "Scissors", "Hammer"),
    },
    "lines": {
        "opixray": ("Folding_Knife", "Straight_Knife", "Scissor", "Utility_Knife", "Multi-tool_Knife"),
        "hixray": (
            "Portable_Charger_1",
            "Portable_Charger_2",
            "Mobile_Phone",
            "Laptop",
            "Tablet",
            "Cosmetic",
            "Water",
            "Nonmetallic_Lighter",
        ),
        "eds": (
            "device",
            "glassbottle",
            "knife",
            "laptop",
            "lighter",
            "plasticbottle",
            "powerbank",
            "pressure",
            "scissor",
            "umbrella",
        ),
    },
    "coco": {
        "pidray": (
            "Baton",
            "Pliers",
            "Hammer",
            "Powerbank",
            "Scissors",
            "Wrench",
            "Gun",
            "Bullet",
            "Sprayer",
            "HandCuffs",
            "Knife",
            "Lighter",
        ),
        "clcxray": (
            "blade",
            "dagger",
            "knife",
            "scissors",
            "SwissArmyKnife",
            "Cans",
            "CartonDrinks",
            "GlassBottle",
            "PlasticBottle",
            "VacuumCup",
            "SprayCans",
            "Tin",
        ),
    },
}


def recognise(format_name: str, seen_classes: Iterable[str]) -> tuple[str, tuple[str, ...]] | None:
    """(dataset name, its full class list) when every seen class belongs to exactly one known dataset of
    this format; None when none or several fit (an empty set of classes fits nothing)."""
    seen = set(seen_classes)
    if not seen:
        return None
    fits = [(name, classes) for name, classes in KNOWN_CLASSES.get(format_name, {}).items() if seen <= set(classes)]
    return fits[0] if len(fits) == 1 else None


def recognise_any(seen_classes: Iterable[str]) -> str | None:
    """The one known dataset, of any native format, whose class list holds every seen class; None when
    none or several do. For converted layouts (YOLO) that keep no trace of the original format."""
    seen = set(seen_classes)
    if not seen:
        return None
    fits = [
        name for per_format in KNOWN_CLASSES.values() for name, classes in per_format.items() if seen <= set(classes)
    ]
    return fits[0] if len(fits) == 1 else None
