"""Recall of contraband objects broken down by a property of each object — for synthetic sets, how it was
hidden (packed openly, in a lining, under a false bottom, inside another item, under a dense item, wrapped
in foil or carbon paper). It tells a trainer which concealments the detector misses, which mAP alone hides.

An object counts as *found* when a detection of its own class overlaps it (IoU ≥ 0.5) with a score at or
above that class's alarm threshold — a box the officer would see on it; *located* relaxes the class (any
alarming detection overlapping it: the bag alarms, though for another class). Detections are not matched
one-to-one: this is recall as the screener experiences it, not the COCO matching behind mAP.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.metrics import ImageTruth
from vision.boxes import iou_xyxy
from vision.decide import DecisionPolicy
from vision.postprocess import Detections

__all__ = ["RECALL_IOU", "match_groups", "recall_by_group", "synth_concealments"]

RECALL_IOU = 0.5


def recall_by_group(
    truths: Sequence[ImageTruth],
    detections: Sequence[Detections],
    groups: Sequence[Sequence[str | None]],
    policy: DecisionPolicy,
    *,
    score_floor: float = 0.0,
    iou: float = RECALL_IOU,
) -> dict[str, dict[str, Any]]:
    """Per group: {"objects": n, "found": share found, "located": share located} (see the module docstring).

    truths / detections: per image, in the same pixels. groups[i][j]: the group of truth j of image i; None
    leaves that object out. score_floor: the lane's post-processing floor (a detection below it is never
    reported, whatever the threshold). Groups are returned in sorted order.
    """
    if not len(truths) == len(detections) == len(groups):
        raise ValueError(f"{len(truths)} truths, {len(detections)} detection sets and {len(groups)} group lists")
    thresholds = np.maximum(np.asarray(policy.threshold_array(), np.float64), float(score_floor))
    counts: dict[str, list[int]] = {}
    for truth, dets, names in zip(truths, detections, groups, strict=True):
        boxes = np.asarray(truth.boxes_xyxy, np.float64).reshape(-1, 4)
        ids = np.asarray(truth.class_ids, np.int64).reshape(-1)
        if len(names) != len(ids):
            raise ValueError(f"image {truth.image_id}: {len(ids)} boxes but {len(names)} group names")
        det_boxes = np.asarray(dets.boxes_xyxy, np.float64).reshape(-1, 4)
        det_ids = np.asarray(dets.class_ids, np.int64).reshape(-1)
        scores = np.asarray(dets.scores, np.float64).reshape(-1)
        alarming = scores >= thresholds[det_ids] if det_ids.size else np.zeros(0, bool)
        for box, cid, name in zip(boxes, ids, names):
            if name is None:
                continue
            hit = alarming & (iou_xyxy(box, det_boxes)[0] >= iou) if det_ids.size else np.zeros(0, bool)
            row = counts.setdefault(str(name), [0, 0, 0])
            row[0] += 1
            row[1] += int(bool((hit & (det_ids == cid)).any()))
            row[2] += int(bool(hit.any()))
    return {
        name: {"objects": n, "found": found / n, "located": located / n}
        for name, (n, found, located) in sorted(counts.items())
    }


def match_groups(
    truths: Sequence[ImageTruth],
    class_names: Sequence[str],
    objects_of: Callable[[str], Sequence[dict[str, Any]] | None],
    *,
    key: str = "concealment",
) -> list[list[str | None]] | None:
    """The `key` of every truth box, looked up among its image's recorded objects.

    objects_of(image_id) → that image's objects as dicts with "class", "box_xyxy" (the truths' pixels) and
    `key`, or None when nothing is recorded for it. A box takes the value of the object of its class it
    overlaps most (IoU ≥ 0.5); unmatched boxes get None. Returns None when no image has a record.
    """
    out: list[list[str | None]] = []
    any_record = False
    for truth in truths:
        ids = np.asarray(truth.class_ids, np.int64).reshape(-1)
        objects = objects_of(str(truth.image_id))
        if objects is None:
            out.append([None] * len(ids))
            continue
        any_record = True
        objects = [o for o in objects if o.get("class")]
        meta_boxes = np.array([o["box_xyxy"] for o in objects], np.float64).reshape(-1, 4)
        meta_classes = np.array([o["class"] for o in objects], dtype=object)
        names: list[str | None] = []
        for box, cid in zip(np.asarray(truth.boxes_xyxy, np.float64).reshape(-1, 4), ids):
            if not objects:
                names.append(None)
                continue
            overlaps = np.where(meta_classes == class_names[int(cid)], iou_xyxy(box, meta_boxes)[0], 0.0)
            best = int(np.argmax(overlaps))
            names.append(str(objects[best].get(key)) if overlaps[best] >= 0.5 else None)
        out.append(names)
    return out if any_record else None


def _meta_objects(image_id: str) -> list[dict[str, Any]] | None:
    """The objects recorded in `<set>/meta/<stem>.json` for the image `<set>/images/<stem>.png`."""
    path = Path(image_id)
    meta_path = path.parent.parent / "meta" / f"{path.stem}.json"
    if not meta_path.is_file():
        return None
    return list(json.loads(meta_path.read_text()).get("objects", []))


def synth_concealments(truths: Sequence[ImageTruth], class_names: Sequence[str]) -> list[list[str | None]] | None:
    """The concealment of every truth box of a set made by `xscreen synth` (image ids are the images' paths),
    from its `meta/<stem>.json` files; None when no image has one (not a synthetic set). See `match_groups`."""
    return match_groups(truths, class_names, _meta_objects)
