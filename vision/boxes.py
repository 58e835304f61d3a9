"""Box conversions and non-maximum suppression in numpy. Every name says its box format.

Formats: xyxy = (x1, y1, x2, y2); xywh = (x, y, w, h) top-left corner (COCO); cxcywh = centre and size
(YOLO, normalised or not). All in pixels unless a name says `norm`.
"""

from __future__ import annotations

import numpy as np


def _as_n4(boxes: np.ndarray) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    return arr.reshape(-1, 4)


def xywh_to_xyxy(boxes_xywh: np.ndarray) -> np.ndarray:
    b = _as_n4(boxes_xywh)
    return np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], axis=1)


def xyxy_to_xywh(boxes_xyxy: np.ndarray) -> np.ndarray:
    b = _as_n4(boxes_xyxy)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def cxcywh_to_xyxy(boxes_cxcywh: np.ndarray) -> np.ndarray:
    b = _as_n4(boxes_cxcywh)
    half_w, half_h = b[:, 2] / 2, b[:, 3] / 2
    return np.stack([b[:, 0] - half_w, b[:, 1] - half_h, b[:, 0] + half_w, b[:, 1] + half_h], axis=1)


def xyxy_to_cxcywh(boxes_xyxy: np.ndarray) -> np.ndarray:
    b = _as_n4(boxes_xyxy)
    return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def area_xyxy(boxes_xyxy: np.ndarray) -> np.ndarray:
    b = _as_n4(boxes_xyxy)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def clip_xyxy(boxes_xyxy: np.ndarray, width: float, height: float) -> np.ndarray:
    b = _as_n4(boxes_xyxy).copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    return b


def iou_xyxy(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """Pairwise IoU, N×M, of two box sets in xyxy."""
    a, b = _as_n4(a_xyxy), _as_n4(b_xyxy)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_xyxy(a)[:, None] + area_xyxy(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms_xyxy(
    boxes_xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float, *, max_keep: int | None = None
) -> np.ndarray:
    """Greedy NMS; returns kept indices, highest score first. Ties keep the lower index.

    max_keep: stop once that many are kept (the result is the same prefix greedy NMS would give); bounds
    the cost when a poorly trained model fires everywhere."""
    b = _as_n4(boxes_xyxy)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape[0] != b.shape[0]:
        raise ValueError(f"NMS needs one score per box: {b.shape[0]} boxes but {s.shape[0]} scores")
    order = np.lexsort((np.arange(len(s)), -s))
    keep: list[int] = []
    areas = area_xyxy(b)
    while order.size:
        i = int(order[0])
        keep.append(i)
        if max_keep is not None and len(keep) >= max_keep:
            break
        rest = order[1:]
        if not rest.size:
            break
        lt = np.maximum(b[i, :2], b[rest, :2])
        rb = np.minimum(b[i, 2:], b[rest, 2:])
        wh = np.clip(rb - lt, 0, None)
        inter = wh[:, 0] * wh[:, 1]
        union = areas[i] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms_xyxy(
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    iou_threshold: float,
    *,
    max_keep: int | None = None,
) -> np.ndarray:
    """Class-aware NMS: boxes of different classes never suppress each other. Returns kept indices,
    highest score first."""
    b = _as_n4(boxes_xyxy)
    cls = np.asarray(class_ids).reshape(-1)
    if cls.shape[0] != b.shape[0]:
        raise ValueError(f"class-aware NMS needs one class id per box: {b.shape[0]} boxes but {cls.shape[0]} class ids")
    if b.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    # One pass per class (not the trick of offsetting each class into its own region of the plane: one
    # huge box of a diverged model makes that offset so large that other boxes lose their area in float).
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    kept = np.concatenate([
        np.flatnonzero(cls == c)[nms_xyxy(b[cls == c], s[cls == c], iou_threshold, max_keep=max_keep)]
        for c in np.unique(cls)
    ])
    kept = kept[np.lexsort((kept, -s[kept]))]  # highest score first, ties by index (as nms_xyxy)
    return kept if max_keep is None else kept[:max_keep]
