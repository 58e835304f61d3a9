"""vision.decide: per-class thresholds, multi-view fusion and the bag suspicion score, on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from vision.decide import BagDecision, DecisionPolicy, bag_score, decide, fuse_views
from vision.postprocess import Detections

NAMES = ("drug_package", "cash_bundle", "ivory")
POLICY = DecisionPolicy(class_names=NAMES, thresholds={"drug_package": 0.4, "ivory": 0.8}, default_threshold=0.6)


def _det(scores, class_ids):
    n = len(scores)
    boxes = np.array([[i, i, i + 10, i + 10] for i in range(n)], dtype=np.float32).reshape(n, 4)
    return Detections.from_arrays(boxes, scores, class_ids)


def test_alarm_when_a_detection_reaches_its_class_threshold():
    # drug 0.45 ≥ 0.4 alarms; cash 0.55 < default 0.6 does not; ivory 0.7 < 0.8 does not.
    d = decide(_det([0.7, 0.55, 0.45], [2, 1, 0]), NAMES, POLICY)
    assert d.alarm and d.alarm_classes == ("drug_package",)
    assert len(d.alarm_detections) == 1
    alarm_det = d.alarm_detections[0]
    assert alarm_det.class_ids.tolist() == [0] and alarm_det.scores.tolist() == pytest.approx([0.45])
    assert d.max_score_per_class == pytest.approx({"drug_package": 0.45, "cash_bundle": 0.55, "ivory": 0.7})
    assert d.suspicion == pytest.approx(0.45 / 0.4)


def test_threshold_is_inclusive_and_clear_bag_does_not_alarm():
    d = decide(_det([0.6], [1]), NAMES, POLICY)
    assert d.alarm and d.alarm_classes == ("cash_bundle",)
    clear = decide(_det([0.39, 0.59, 0.79], [0, 1, 2]), NAMES, POLICY)
    assert not clear.alarm and clear.alarm_classes == () and len(clear.alarm_detections[0]) == 0
    empty = decide(Detections.empty(), NAMES, POLICY)
    assert not empty.alarm and empty.suspicion == 0.0
    assert empty.max_score_per_class == {n: 0.0 for n in NAMES}


def test_alarm_classes_in_class_order_without_duplicates():
    d = decide(_det([0.9, 0.95, 0.5, 0.85], [2, 0, 0, 2]), NAMES, POLICY)
    assert d.alarm_classes == ("drug_package", "ivory")
    assert len(d.alarm_detections[0]) == 4


def test_class_map_mismatch_is_refused():
    with pytest.raises(ValueError, match="do not match"):
        decide(_det([0.9], [0]), ("cash_bundle", "drug_package", "ivory"), POLICY)
    with pytest.raises(ValueError, match="class ids"):
        decide(_det([0.9], [3]), NAMES, POLICY)


def test_policy_validation():
    with pytest.raises(ValidationError):
        DecisionPolicy(class_names=NAMES, thresholds={"weapon": 0.5})
    with pytest.raises(ValidationError):
        DecisionPolicy(class_names=NAMES, thresholds={"ivory": 0.0})
    with pytest.raises(ValidationError):
        DecisionPolicy(class_names=NAMES, extra_field=1)
    with pytest.raises(ValidationError):
        DecisionPolicy(class_names=("a", "a"))
    assert POLICY.threshold_for("cash_bundle") == 0.6


def test_fuse_views_any_alarm_and_per_class_max():
    top = decide(_det([0.3, 0.5], [0, 1]), NAMES, POLICY)  # clear
    side = decide(_det([0.85, 0.2], [2, 0]), NAMES, POLICY)  # ivory alarm
    fused = fuse_views([top, side])
    assert isinstance(fused, BagDecision)
    assert fused.alarm and fused.alarm_classes == ("ivory",)
    assert fused.max_score_per_class == pytest.approx({"drug_package": 0.3, "cash_bundle": 0.5, "ivory": 0.85})
    assert len(fused.alarm_detections) == 2
    assert len(fused.alarm_detections[0]) == 0 and fused.alarm_detections[1].class_ids.tolist() == [2]
    assert fused.suspicion == pytest.approx(max(top.suspicion, side.suspicion))
    assert not fuse_views([top, top]).alarm
    assert fuse_views([side]).alarm_classes == side.alarm_classes
    with pytest.raises(ValueError):
        fuse_views([])


def test_views_of_different_class_maps_fuse_by_class_name():
    """A bag whose top view was screened by an older model (another class map) and its side view by the
    new one: the old view's alarm stands, scores fuse per name, unknown classes count 0."""
    old_names = ("drug_package", "ivory")
    old_policy = DecisionPolicy(class_names=old_names, thresholds={"drug_package": 0.4, "ivory": 0.8})
    top = decide(_det([0.9], [1]), old_names, old_policy)  # ivory alarm under the old map
    side = decide(_det([0.2], [1]), NAMES, POLICY)  # clear under the new one
    fused = fuse_views([top, side])
    assert fused.alarm and fused.alarm_classes == ("ivory",)
    assert list(fused.max_score_per_class) == ["drug_package", "ivory", "cash_bundle"]
    assert fused.max_score_per_class == pytest.approx({"drug_package": 0.0, "ivory": 0.9, "cash_bundle": 0.2})
    assert not fuse_views([side]).alarm


def test_fused_alarm_classes_union_in_class_order():
    a = decide(_det([0.9], [2]), NAMES, POLICY)
    b = decide(_det([0.5], [0]), NAMES, POLICY)
    assert fuse_views([a, b]).alarm_classes == ("drug_package", "ivory")


def test_bag_score_is_threshold_normalised_and_consistent_with_decide():
    det = _det([0.7, 0.55, 0.3], [2, 1, 0])
    assert bag_score(det, None, POLICY) == pytest.approx(max(0.7 / 0.8, 0.55 / 0.6, 0.3 / 0.4))
    assert bag_score(det, [2], POLICY) == pytest.approx(0.7 / 0.8)
    assert bag_score(det, [0, 1], POLICY) == pytest.approx(0.55 / 0.6)
    assert bag_score(_det([0.9], [2]), [0], POLICY) == 0.0
    assert bag_score(Detections.empty(), None, POLICY) == 0.0
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(0, 5))
        det = _det(rng.uniform(0, 1, n).astype(np.float32), rng.integers(0, 3, n))
        assert decide(det, NAMES, POLICY).alarm == (bag_score(det, None, POLICY) >= 1.0)


def test_bag_score_orders_bags_for_roc():
    # A bag with a strong detection of a strict class outranks one with a weak detection of a loose class.
    strong = bag_score(_det([0.9], [2]), None, POLICY)  # 0.9 / 0.8
    weak = bag_score(_det([0.3], [0]), None, POLICY)  # 0.3 / 0.4
    assert strong > 1.0 > weak > 0.0
