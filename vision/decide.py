"""The decision policy: detections of a bag → alarm or clear (numpy and pydantic only).

A bag alarms when any detection's score reaches its class's threshold (thresholds are calibrated per
class on validation data and shipped in the model package). A bag scanned in several views (e.g. a
dual-view scanner's top and side) alarms when any view alarms.

For ROC / Pd-at-Pfa over bags, `bag_score` gives one scalar per bag consistent with the policy:

    bag_score = max over detections of score / threshold(class)      (0 for a bag with no detections)

so `decide(...).alarm` ⇔ `bag_score(...) ≥ 1`. Sweeping a cut c over bag scores is the same as scaling
every class threshold by c: the ROC moves the operating point while keeping the calibrated balance
between classes, and its point at c = 1 is exactly the deployed policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from vision.postprocess import Detections


class DecisionPolicy(BaseModel):
    """Per-class alarm thresholds on detection score. Classes without an entry use default_threshold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    class_names: tuple[str, ...] = Field(min_length=1)
    thresholds: dict[str, float] = Field(default_factory=dict)
    default_threshold: float = Field(default=0.5, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _check(self) -> DecisionPolicy:
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"duplicate class names: {self.class_names}")
        unknown = set(self.thresholds) - set(self.class_names)
        if unknown:
            raise ValueError(f"thresholds for unknown classes: {sorted(unknown)}")
        bad = {k: v for k, v in self.thresholds.items() if not 0.0 < v <= 1.0}
        if bad:
            raise ValueError(f"thresholds must lie in (0, 1]: {bad}")
        return self

    def threshold_for(self, class_name: str) -> float:
        return self.thresholds.get(class_name, self.default_threshold)

    def threshold_array(self) -> np.ndarray:
        """Thresholds indexed by class id (K float64)."""
        return np.array([self.threshold_for(n) for n in self.class_names], dtype=np.float64)


@dataclass(frozen=True, eq=False)
class BagDecision:
    """Outcome for one bag.

    alarm: any detection reached its class threshold. alarm_classes: those classes, in class-id order.
    alarm_detections: per view, the detections that reached their threshold (one entry for a single
    view; boxes stay in that view's coordinates). max_score_per_class: every class name → its highest
    detection score over all views (0.0 when absent). suspicion: `bag_score` (max over views).
    """

    alarm: bool
    alarm_classes: tuple[str, ...]
    alarm_detections: tuple[Detections, ...]
    max_score_per_class: dict[str, float]
    suspicion: float


def _check_class_ids(detections: Detections, policy: DecisionPolicy) -> None:
    k = len(policy.class_names)
    if len(detections) and (detections.class_ids.min() < 0 or detections.class_ids.max() >= k):
        raise ValueError(f"class ids outside [0, {k})")


def bag_score(detections: Detections, class_ids: Sequence[int] | None, policy: DecisionPolicy) -> float:
    """Suspicion of one bag view: max over detections of score / threshold(class) (see module docstring).

    class_ids: count only detections of these classes (e.g. a per-class ROC); None counts all classes.
    Returns 0.0 when no detection counts.
    """
    _check_class_ids(detections, policy)
    if len(detections) == 0:
        return 0.0
    ratio = detections.scores.astype(np.float64) / policy.threshold_array()[detections.class_ids]
    if class_ids is not None:
        ratio = ratio[np.isin(detections.class_ids, np.asarray(list(class_ids), dtype=np.int64))]
    return float(ratio.max()) if ratio.size else 0.0


def decide(detections: Detections, class_names: Sequence[str], policy: DecisionPolicy) -> BagDecision:
    """Apply the policy to one view's detections. class_names must equal policy.class_names (the model's
    class order); detections.class_ids index into it."""
    if tuple(class_names) != policy.class_names:
        # A model/policy class-map mismatch silently alarms on the wrong class: refuse it.
        raise ValueError(f"class names {tuple(class_names)} do not match the policy's {policy.class_names}")
    _check_class_ids(detections, policy)
    names = policy.class_names
    thresholds = policy.threshold_array()
    over = detections.scores.astype(np.float64) >= thresholds[detections.class_ids]
    alarm_ids = sorted(set(detections.class_ids[over].tolist()))
    max_score = {name: 0.0 for name in names}
    for cid, score in zip(detections.class_ids.tolist(), detections.scores.tolist()):
        max_score[names[cid]] = max(max_score[names[cid]], float(score))
    return BagDecision(
        alarm=bool(over.any()),
        alarm_classes=tuple(names[i] for i in alarm_ids),
        alarm_detections=(detections.select(over),),
        max_score_per_class=max_score,
        suspicion=bag_score(detections, None, policy),
    )


def fuse_views(decisions: Sequence[BagDecision]) -> BagDecision:
    """Combine the decisions of several views of one bag: alarm if any view alarms; alarm classes are the
    union; per-class max scores and suspicion are maxima; alarm detections are kept per view, in the order
    given (their class ids are each view's own).

    Classes are matched by name, so views screened under different class maps (a bag scanned across a
    model update, or by two service processes mid-rollout) fuse too: an alarm in any view is never lost.
    Class order is the first decision's, then the classes only later ones have, in their order; a class a
    view does not know counts 0.0 there."""
    if not decisions:
        raise ValueError("fuse_views needs at least one decision")
    names = list(dict.fromkeys(n for d in decisions for n in d.max_score_per_class))
    alarm_set = {c for d in decisions for c in d.alarm_classes}
    return BagDecision(
        alarm=any(d.alarm for d in decisions),
        alarm_classes=tuple(n for n in names if n in alarm_set),
        alarm_detections=tuple(det for d in decisions for det in d.alarm_detections),
        max_score_per_class={n: max(d.max_score_per_class.get(n, 0.0) for d in decisions) for n in names},
        suspicion=max(d.suspicion for d in decisions),
    )
