"""Where things go in a bag: the bag's frame on the image and random poses of items inside it.

Items are posed in the bag's own frame (x along the bag's length, cm from its centre) and mapped to
image pixels through the bag's rotation, so packed items line up with the bag as they do in real bags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from datasets.synth.items import Item


@dataclass(frozen=True)
class Pose:
    """Where an item lands: rotation (degrees, counter-clockwise on screen), centre (image px), mirror flip."""

    angle_deg: float
    centre_xy: tuple[float, float]
    flip: bool = False


@dataclass(frozen=True)
class Placement:
    """An item, its pose and its role in the scene (class and concealment for contraband; `soft` items
    are clipped to the bag's interior, as clothes take the bag's shape)."""

    item: Item
    pose: Pose
    class_name: str | None = None
    concealment: str | None = None
    soft: bool = False


@dataclass(frozen=True)
class BagFrame:
    """The bag on the image: centre (px), rotation (degrees), pixel size, packable interior (length, width cm)."""

    centre_xy: tuple[float, float]
    angle_deg: float
    pixel_mm: float
    interior_cm: tuple[float, float]

    def to_image(self, x_cm: float, y_cm: float) -> tuple[float, float]:
        """Image px of a point given in cm in the bag's frame (same rotation convention as cv2)."""
        a = math.radians(self.angle_deg)
        s = 10.0 / self.pixel_mm
        dx, dy = x_cm * s, y_cm * s
        return (
            self.centre_xy[0] + math.cos(a) * dx + math.sin(a) * dy,
            self.centre_xy[1] - math.sin(a) * dx + math.cos(a) * dy,
        )

    def pose_at(self, x_cm: float, y_cm: float, local_angle_deg: float, flip: bool = False) -> Pose:
        """Pose of an item centred at (x_cm, y_cm) of the bag frame and turned `local_angle_deg` relative to the bag."""
        return Pose(self.angle_deg + local_angle_deg, self.to_image(x_cm, y_cm), flip)

    def random_pose(
        self, rng: np.random.Generator, item: Item, aligned_p: float = 0.6, spill: float = 0.0, must_fit: bool = False
    ) -> Pose | None:
        """A random pose that keeps `item` inside the interior.

        With probability `aligned_p` the item lies along or across the bag (packed); otherwise at any
        angle. `spill` (0–1) lets the item's centre go that share of its half-size past the interior edge.
        An item too big for the drawn angle is turned along the bag, across it, or along a diagonal; if
        none fits it is refused (None), unless `must_fit`, when the best of those angles is used.
        """
        if rng.random() < aligned_p:
            local = 90.0 * int(rng.integers(4)) + rng.normal(0.0, 5.0)
        else:
            local = rng.uniform(0.0, 360.0)
        diag = math.degrees(math.atan2(self.interior_cm[1], self.interior_cm[0]))
        best: tuple[float, float, float, float] | None = None
        for angle in (local, 0.0, 90.0, diag, -diag):
            room_x, room_y = self._room_cm(item, angle, spill)
            if room_x >= 0 and room_y >= 0:
                best = (angle, room_x, room_y, 0.0)
                break
            overflow = -min(room_x, 0.0) - min(room_y, 0.0)
            if best is None or overflow < best[3]:
                best = (angle, room_x, room_y, overflow)
        assert best is not None
        angle, room_x, room_y, overflow = best
        if overflow > 0 and not must_fit:
            return None
        if angle != local:
            angle += 180.0 * int(rng.integers(2))
        x = rng.uniform(-room_x, room_x) if room_x > 0 else 0.0
        y = rng.uniform(-room_y, room_y) if room_y > 0 else 0.0
        return self.pose_at(x, y, angle, flip=bool(rng.random() < 0.5))

    def _room_cm(self, item: Item, local_deg: float, spill: float) -> tuple[float, float]:
        """How far (cm) the item's centre may move along the bag's x and y at this angle (< 0: it sticks out)."""
        h, w = item.shape_hw
        step = self.pixel_mm * item.scale / 10.0
        a = math.radians(local_deg)
        half_x = 0.5 * step * (abs(w * math.cos(a)) + abs(h * math.sin(a)))
        half_y = 0.5 * step * (abs(w * math.sin(a)) + abs(h * math.cos(a)))
        return self.interior_cm[0] / 2 - half_x * (1.0 - spill), self.interior_cm[1] / 2 - half_y * (1.0 - spill)
