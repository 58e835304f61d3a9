"""Bag-level screening figures: ROC over bags, Pd at a fixed Pfa, and per-class threshold calibration.

numpy and the standard library only. A "bag" is one row of the inputs; for a multi-view scanner the caller
fuses views first (max over views, as `vision.decide.fuse_views` does), so one bag is one decision.

Alarm rule everywhere: a bag alarms when its score is ≥ the threshold (the same `>=` as `vision.decide`).
Pd = share of threat bags that alarm; Pfa = share of clean bags that alarm — a supervisor's workload.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "OperatingPoint",
    "ScreeningReport",
    "ThresholdCalibration",
    "calibrate_thresholds",
    "roc_curve",
    "screening_metrics",
]

# Guards floor(target · n) against binary rounding: 0.29 · 100 = 28.999999999999996 must allow 29.
_COUNT_EPS = 1e-9


def _allowed_false_alarms(target_pfa: float, n_clean: int) -> int:
    """Most clean bags that may alarm while the false-alarm share stays ≤ target_pfa."""
    return int(math.floor(target_pfa * n_clean + _COUNT_EPS))


def roc_curve(bag_scores: np.ndarray, bag_has_threat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC over bags: (fpr, tpr, thresholds), each P+1 float64 for P distinct scores.

    Point i is the rule "alarm if score ≥ thresholds[i]"; thresholds descend from +inf (nothing alarms,
    point (0, 0)) to the lowest score (everything alarms, point (1, 1)). Tied scores form one point, so a
    tie between a clean and a threat bag draws a diagonal segment (counted half, as the Mann–Whitney
    statistic does). A rate whose class is absent (no clean or no threat bag) is NaN.
    """
    scores = np.asarray(bag_scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(bag_has_threat, dtype=bool).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.shape[0]} scores but {labels.shape[0]} labels")
    if not np.all(np.isfinite(scores)):
        raise ValueError("bag scores must be finite")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.zeros(0, np.int64)
    tps = np.r_[0, np.cumsum(y)[last_of_tie]].astype(np.float64)
    fps = np.r_[0, np.cumsum(~y)[last_of_tie]].astype(np.float64)
    thresholds = np.r_[np.inf, s[last_of_tie]]
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    tpr = tps / n_pos if n_pos else np.full_like(tps, np.nan)
    fpr = fps / n_neg if n_neg else np.full_like(fps, np.nan)
    return fpr, tpr, thresholds


@dataclass(frozen=True)
class OperatingPoint:
    """Pd at a target Pfa. threshold: alarm if bag score ≥ threshold (+inf: nothing may alarm).
    pfa: the false-alarm share actually reached (≤ target_pfa). None where undefined (one class absent)."""

    target_pfa: float
    pd: float | None
    pfa: float | None
    threshold: float | None


@dataclass(frozen=True, eq=False)
class ScreeningReport:
    """Bag-level ROC (fpr, tpr, thresholds: see `roc_curve`), AUROC by the trapezoid rule (None when
    all bags are of one class), operating points at the requested Pfa targets, counts and notes."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auroc: float | None
    operating_points: tuple[OperatingPoint, ...]
    n_threat: int
    n_clean: int
    notes: tuple[str, ...]

    def pd_at(self, target_pfa: float) -> float | None:
        """Pd at one of the computed targets (KeyError if it was not requested)."""
        for op in self.operating_points:
            if math.isclose(op.target_pfa, target_pfa):
                return op.pd
        raise KeyError(target_pfa)


def screening_metrics(
    bag_scores: np.ndarray, bag_has_threat: np.ndarray, *, target_pfas: Sequence[float] = (0.01, 0.05)
) -> ScreeningReport:
    """ROC, AUROC and Pd at each target Pfa over bags.

    bag_scores: B float, higher = more suspicious (e.g. `vision.decide.bag_score`, or a bag's max detection
    score). bag_has_threat: B bool.

    Pd at Pfa (the standard way: the threshold is set on the clean bags): the lowest threshold at which at
    most floor(target · n_clean) clean bags alarm, and Pd is the share of threat bags at or above it — the
    largest Pd on the ROC whose Pfa ≤ target. Being the lowest such threshold, it is the one that catches
    the most threats at that workload. With fewer than 1/target clean bags the only measurable Pfa is 0;
    a note says so.
    """
    fpr, tpr, thresholds = roc_curve(bag_scores, bag_has_threat)
    labels = np.asarray(bag_has_threat, dtype=bool).reshape(-1)
    n_threat, n_clean = int(labels.sum()), int((~labels).sum())
    notes: list[str] = []
    one_class = n_threat == 0 or n_clean == 0
    if one_class:
        which = "threat" if n_threat == 0 else "clean"
        notes.append(f"no {which} bags among {labels.size}: ROC, AUROC and Pd at Pfa are undefined (null)")
        auroc = None
    else:
        auroc = float(np.trapezoid(tpr, fpr))
    points = []
    for target in target_pfas:
        if not 0.0 <= target <= 1.0:
            raise ValueError(f"target Pfa {target} outside [0, 1]")
        if one_class:
            points.append(OperatingPoint(target_pfa=float(target), pd=None, pfa=None, threshold=None))
            continue
        if n_clean * target < 1.0 - _COUNT_EPS and target > 0:
            notes.append(
                f"only {n_clean} clean bags: Pfa resolution 1/{n_clean} is coarser than {target:g}, "
                f"so Pd at Pfa {target:g} is measured with no false alarm allowed"
            )
        allowed = _allowed_false_alarms(target, n_clean)
        # fpr is non-decreasing along the curve, so the feasible points form a prefix; take its end.
        i = int(np.flatnonzero(np.rint(fpr * n_clean) <= allowed)[-1])
        points.append(
            OperatingPoint(
                target_pfa=float(target), pd=float(tpr[i]), pfa=float(fpr[i]), threshold=float(thresholds[i])
            )
        )
    return ScreeningReport(
        fpr=fpr,
        tpr=tpr,
        thresholds=thresholds,
        auroc=auroc,
        operating_points=tuple(points),
        n_threat=n_threat,
        n_clean=n_clean,
        notes=tuple(notes),
    )


@dataclass(frozen=True)
class ThresholdCalibration:
    """Per-class thresholds (class name → alarm if that class's score ≥ threshold) and what they reach on
    the calibration bags: achieved_pfa ≤ target_pfa (unless a note says otherwise), pd on threat bags
    (None when there were none), per_class_false_alarms = m, the clean-bag alarm budget each class got."""

    thresholds: dict[str, float]
    target_pfa: float
    achieved_pfa: float
    pd: float | None
    per_class_false_alarms: int
    n_clean: int
    n_threat: int
    notes: tuple[str, ...]


def _just_above(values: np.ndarray) -> np.ndarray:
    """The next float32 above each value, as float64. Scores are float32 on the lane; a float64 'just
    above' could round back down to the score itself when stored or compared as float32 and alarm."""
    v32 = values.astype(np.float32)
    return np.nextafter(v32, np.float32(np.inf)).astype(np.float64)


def calibrate_thresholds(
    per_bag_class_max_scores: np.ndarray,
    bag_is_clean: np.ndarray,
    target_pfa: float,
    class_names: Sequence[str],
) -> ThresholdCalibration:
    """Per-class thresholds whose bag-level false-alarm rate on the clean bags is at most target_pfa.

    per_bag_class_max_scores: B×K, each bag's highest detection score per class (0 where none; see
    `training.metrics.per_image_class_max_scores`). bag_is_clean: B bool; the other bags are threat bags,
    used only to report Pd. A bag alarms if any class k has score ≥ thresholds[k].

    Method (simple and exact on the calibration set): give every class the same budget of m clean bags it
    may alarm on. For a budget m, class k's threshold is just above its (m+1)-th highest clean score, so at
    most m clean bags reach it. The bag-level alarm set is the union over classes, whose size is at least
    the largest per-class count and at most K·m (union bound), and grows with m. A binary search takes the
    largest m whose union stays within floor(target · n_clean) bags. By the union bound m = floor(budget/K)
    always qualifies, so the search never does worse than splitting the budget evenly; overlapping false
    alarms (one clean bag firing several classes) let m grow beyond it, up to the full budget. A shared
    budget keeps rare classes from being starved; it does not maximise Pd (that would need threat bags per
    class and overfits small sets), and with disjoint false alarms up to K-1 bags of the budget stay unused.

    Thresholds are capped at 1.0 (`vision.decide.DecisionPolicy` needs (0, 1]); if clean bags score
    exactly 1.0 the target may then be missed, which achieved_pfa and a note report.
    """
    names = tuple(class_names)
    scores = np.asarray(per_bag_class_max_scores, dtype=np.float64)
    clean = np.asarray(bag_is_clean, dtype=bool).reshape(-1)
    if scores.ndim != 2 or scores.shape != (clean.size, len(names)):
        raise ValueError(f"scores {scores.shape} do not match {clean.size} bags × {len(names)} classes")
    if not 0.0 <= target_pfa < 1.0:
        raise ValueError(f"target_pfa {target_pfa} must lie in [0, 1)")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    clean_scores, threat_scores = scores[clean], scores[~clean]
    n_clean, n_threat = clean_scores.shape[0], threat_scores.shape[0]
    if n_clean == 0:
        raise ValueError("no clean bags: a false-alarm rate cannot be calibrated")
    notes: list[str] = []
    if n_clean * target_pfa < 1.0 - _COUNT_EPS:
        notes.append(f"only {n_clean} clean bags for target Pfa {target_pfa:g}: thresholds allow no false alarm")
    budget = _allowed_false_alarms(target_pfa, n_clean)
    ranked = -np.sort(-clean_scores, axis=0)  # n_clean×K, each column descending

    def thresholds_for(m: int) -> np.ndarray:
        return np.minimum(_just_above(ranked[min(m, n_clean - 1)]), 1.0)

    def union_alarms(thr: np.ndarray) -> int:
        return int(np.any(clean_scores >= thr, axis=1).sum())

    lo, hi = 0, min(budget, n_clean - 1)  # invariant: the answer lies in [lo, hi]; m = 0 is the fallback
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if union_alarms(thresholds_for(mid)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    thr = thresholds_for(lo)
    achieved = union_alarms(thr) / n_clean
    if union_alarms(thr) > budget:
        notes.append(
            f"clean bags score 1.0 on some class: thresholds capped at 1.0 reach Pfa {achieved:.4f} "
            f"> target {target_pfa:g}"
        )
    pd = float(np.any(threat_scores >= thr, axis=1).mean()) if n_threat else None
    if pd is None:
        notes.append("no threat bags: Pd not measured")
    return ThresholdCalibration(
        thresholds={n: float(t) for n, t in zip(names, thr)},
        target_pfa=float(target_pfa),
        achieved_pfa=float(achieved),
        pd=pd,
        per_class_false_alarms=lo,
        n_clean=n_clean,
        n_threat=n_threat,
        notes=tuple(notes),
    )
