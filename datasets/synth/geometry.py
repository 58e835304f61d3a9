"""The belt's line-scan geometry (DESIGN.md §4): a fan beam across the belt, a parallel projection along it.

A cabin-baggage line scanner takes one line across the belt at a time: a fan of rays from the focal spot
(under the belt) to a line of detectors, while the belt carries the bag through the fan. Along the belt
(image x) each line is taken where the bag is at that moment, so lengths along the belt are true whatever
an item's height. Across the belt (image y) each detector looks along its own ray from the source: a point
at height h above the belt and u across the belt from the source's own ray (the one perpendicular to the
belt) lands at u·(d + h_ref)/(d + h) on an image scaled true at height h_ref, d being the focal spot's
distance below the belt. Items low in the bag (nearer the source) look wider across the belt, items high
in it narrower, and both move away from or towards the source's row in the same proportion: a round tin
is an ellipse, two equal bottles at different heights differ in width, as in real scans.

The scene is built at the bag's mid-depth (`reference_cm`): the container's outline is drawn there, and
every item gets its height in the bag and the magnification across the belt that goes with it
(`FanBeam.magnification`, applied by `datasets.synth.items.place` as `squeeze_y`).

Numbers chosen: the focal spot 60–100 cm from the belt (cabin units put the tube under or beside a tunnel of
about 60 × 40 cm, the detector line over and beside it at about a metre from the spot), and its own ray
anywhere in the middle three fifths of the scan's height (datasets crop scans to the bag, not to the
tunnel). With a 25-cm-deep suitcase that gives magnifications from about 0.85 (the top of the bag) to 1.2
(its floor) around the true scale at mid-depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Focal spot to belt, cm (drawn per bag).
SOURCE_CM = (60.0, 100.0)
#: The source's own ray, as a share of the scan's height (drawn per bag).
SOURCE_ROW = (0.2, 0.8)
#: Share of the bag's depth in which clothes lie: they are packed first, at the bottom.
SOFT_LAYER = 0.4


@dataclass(frozen=True)
class FanBeam:
    """The fan beam of one scan. source_cm: focal spot to belt; source_row_px: image row of the source's own
    ray; reference_cm: the height above the belt shown at true scale (the bag's mid-depth)."""

    source_cm: float
    source_row_px: float
    reference_cm: float

    def __post_init__(self) -> None:
        if not self.source_cm > 0 or self.reference_cm < 0:
            raise ValueError(f"source_cm must be > 0 and reference_cm ≥ 0, got {self.source_cm}, {self.reference_cm}")

    def magnification(self, height_cm: float) -> float:
        """Scale across the belt of an item at `height_cm` above the belt, relative to the reference height."""
        if height_cm < 0:
            raise ValueError(f"height_cm must be ≥ 0 (above the belt), got {height_cm}")
        return (self.source_cm + self.reference_cm) / (self.source_cm + height_cm)

    def project_row(self, row_px: float, height_cm: float) -> float:
        """Image row of a point drawn at `row_px` (true scale) that lies at `height_cm` above the belt."""
        return self.source_row_px + (row_px - self.source_row_px) * self.magnification(height_cm)

    def to_dict(self) -> dict[str, float]:
        return {"source_cm": round(self.source_cm, 3), "source_row_px": round(self.source_row_px, 3),
                "reference_cm": round(self.reference_cm, 3)}


def draw_fan_beam(rng: np.random.Generator, image_h: int, bag_depth_cm: float) -> FanBeam:
    """The fan beam of a scan `image_h` rows high of a bag `bag_depth_cm` deep (true scale at mid-depth)."""
    return FanBeam(
        source_cm=float(rng.uniform(*SOURCE_CM)),
        source_row_px=float(rng.uniform(*SOURCE_ROW) * image_h),
        reference_cm=max(0.0, bag_depth_cm) / 2.0,
    )


def draw_height(rng: np.random.Generator, bag_depth_cm: float, *, soft: bool = False,
                concealment: str | None = None) -> float:
    """Height above the belt (cm) of an item in a bag `bag_depth_cm` deep: clothes in its lower layer, a
    false bottom on its floor, anything else anywhere in it."""
    depth = max(0.0, bag_depth_cm)
    if concealment == "false_bottom":
        return 0.0
    if soft:
        return float(rng.uniform(0.0, SOFT_LAYER * depth))
    return float(rng.uniform(0.0, depth))
