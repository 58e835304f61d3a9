"""Review of two changes: one DICOS TDR per alarmed bag (edge/tdr.py, edge/ingest.py) and the
synthesiser's fan-beam geometry (datasets/synth/geometry.py, bags.py). Each test fails on a confirmed fault."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pydicom
from test_bags import fake_coefficients
from test_review_dicos import _PIXELS, native_dx, template  # noqa: F401 (template: a fixture)
from test_tdr_bag import _view

from datasets.synth.bags import _outside_share, _place_group, _place_one
from datasets.synth.geometry import FanBeam
from datasets.synth.items import BasisAccumulator, make_item
from datasets.synth.layout import Placement, Pose
from edge.formats import DICOM_MEDIA_TYPE
from edge.tdr import build_tdr


def _read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


# -- one TDR per bag ------------------------------------------------------------------------------------------


def test_a_bag_series_stays_in_one_study_when_a_dicos_view_alarms_after_a_png_view(template):  # noqa: F811
    """A bag's reports are instances of a series, rewritten as views arrive, and a series belongs to exactly
    one study (and one frame of reference). A bag whose first alarmed view was a PNG and whose later view,
    sent as DICOS DX, alarms too: the first report's study is derived from the bag, the second joins the
    DX's study; they carried the same SeriesInstanceUID (one series in two studies). Now the second report
    is a series of the DX's study."""
    top = _view(7, "ab" * 32, "top", "cocaine")  # PNG, alarmed first
    side = dataclasses.replace(_view(8, "cd" * 32, "side", "cash"), media_type=DICOM_MEDIA_TYPE)
    dx = native_dx(template, _PIXELS)
    first = _read(build_tdr([top]))  # written when the top view arrived
    later = _read(build_tdr([top, side], images={side.image_sha256: dx}))  # rewritten when the side view did
    assert later.SOPInstanceUID != first.SOPInstanceUID
    assert later.StudyInstanceUID == _read(dx).StudyInstanceUID != first.StudyInstanceUID
    assert later.SeriesInstanceUID != first.SeriesInstanceUID  # one series, one study
    again = _read(build_tdr([top, side, _view(9, "ef" * 32, "front", None)], images={side.image_sha256: dx}))
    assert again.SeriesInstanceUID == later.SeriesInstanceUID  # and it stays the bag's series from then on


def test_a_bag_report_does_not_attribute_one_models_alarm_to_another():
    """A bag's views may be screened by different model versions (a package reloaded between views, or a
    re-screening of the bag later: `Store.bag_scans` holds both). The per-scan report named the model that
    raised its alarm; the per-bag report names only the latest alarmed view's model in its ATR block
    (`Threat Detection Algorithm and Version` and the `-model=` parameter), so the PTO of the view that
    model 0.1 flagged is reported as raised by model 0.2. The model of every view the report covers must be
    named somewhere in the ATR block."""
    top = dataclasses.replace(_view(7, "ab" * 32, "top", "cocaine"), model_version="0.1")
    side = dataclasses.replace(_view(8, "cd" * 32, "side", "cash"), model_version="0.2")
    ds = _read(build_tdr([top, side]))
    atr = [str(v) for v in ds[0x4010, 0x1029].value]
    assert any("0.2" in v for v in atr)
    assert any("0.1" in v for v in atr), atr


# -- fan-beam geometry ---------------------------------------------------------------------------------------


def _block(name: str, h: int, w: int, material: str = "polyethylene") -> object:
    return make_item(name, [(material, 0.95, np.full((h, w), 2.0, np.float32))])


def test_a_group_member_the_magnification_pushes_out_of_the_bag_is_drawn_at_mid_depth():
    """docs/realism.md (and the commit): "An item the magnification would push more than 5 % further out of
    the bag's outline (drawn at mid-depth) is drawn at mid-depth". `_place_group` checks only a group's first
    item (the contraband), so a false-bottom panel, a laptop cover or a host shoe around a small contraband
    object is drawn magnified out of the bag's outline (in generated 288x384 bags: 7 of 118 such helpers,
    up to 8 % of a false-bottom panel outside the bag)."""
    hw = (240, 320)
    acc = BasisAccumulator(hw, fake_coefficients)
    interior = np.zeros(hw, np.float32)
    interior[40:200, 40:280] = 1.0
    fan = FanBeam(source_cm=60.0, source_row_px=40.0, reference_cm=12.0)
    # A small package under a laptop that fills most of the bag across the belt at true scale (rows 50-190 of 40-200).
    package = Placement(_block("package", 20, 30, "cocaine"), Pose(0.0, (160.0, 120.0)), "drug_package", "under_dense")
    laptop = Placement(_block("laptop", 140, 160, "aluminium"), Pose(0.0, (160.0, 120.0)))
    placed = dict((p.item.name, q) for p, q in _place_group([package, laptop], fan, 0.0, acc, interior, hw))
    at_true_scale = _outside_share(_place_one(laptop, 1.0, 120.0, acc, interior, hw), interior)
    assert _outside_share(placed["laptop"], interior) <= at_true_scale + 0.05
