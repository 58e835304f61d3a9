"""Second review of training/: targets in the letterbox padding, soft class targets of small boxes, resume
with changed optimiser settings or frozen parts, and config values the trainer cannot use.

Each test asserts the correct behaviour and fails on the code it was written against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_checkpoint import one_torch_thread  # noqa: F401 - one_torch_thread: autouse fixture
from training import engine
from training.assign import TaskAlignedAssigner, box_iou_pairwise, pad_targets
from training.checkpoint import load_checkpoint
from training.config import ConfigError, ModelConfig, load_config
from training.data import DetectionDataset, ScanItem, preprocess_spec_for
from training.head import make_anchor_points

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
# Smaller than tests/test_train.py's: 64 px, one step of 4 bags per epoch, 2 validation bags.
SMALL = ["model.input_size=64", "data.train.0.length=4", "data.val.0.length=2", "log_every=1000"]


def small_config(*extra: str):
    return load_config(TINY, [*SMALL, *extra])


class _OneScan(DetectionDataset):
    """One 50×100 (H×W) bright scan whose annotation runs past its bottom edge, and a second box that
    lies wholly below the scan (both happen in public datasets' annotations)."""

    def __len__(self) -> int:
        return 1

    def load(self, i: int, epoch: int) -> ScanItem:
        pixels = np.full((50, 100, 3), 220, np.uint8)
        pixels[10:50, 10:40] = 60
        boxes = np.array([[10, 10, 40, 70], [10, 55, 40, 80]], np.float32)
        return ScanItem(pixels, boxes, np.array([0, 1], np.int64), "one")

    def box_counts(self) -> np.ndarray:
        return np.array([1.0, 1.0])


def test_training_boxes_stay_on_the_scan_not_in_the_letterbox_padding():
    """Without augmentation (data.augment: false) a box that runs past the scan's edge was letterboxed
    unclipped: its target reached 13 px into the grey padding, and a box wholly outside the scan became a
    training target drawn on the padding alone — the model is taught to find contraband in the border."""
    spec = preprocess_spec_for(ModelConfig(input_size=64))
    ds = _OneScan(classes=("a", "b"), spec=spec, train=True, augment=False, seed=0)
    _, target = ds[0]
    lb = target["letterbox"]
    assert lb.pad_y > 0  # the 2:1 scan is padded above and below
    content = np.array([lb.pad_x, lb.pad_y, lb.pad_x + lb.dst_width, lb.pad_y + lb.dst_height], np.float32)
    boxes = target["boxes_xyxy"].numpy()
    assert (boxes[:, :2] >= content[:2] - 1e-4).all() and (boxes[:, 2:] <= content[2:] + 1e-4).all(), (boxes, content)
    # Only the box on the scan stays a target, and it ends where the scan ends.
    assert target["class_ids"].tolist() == [0]
    assert boxes[0, 3] == pytest.approx(content[3], abs=1e-3)


def test_small_box_best_point_gets_its_iou_as_class_target():
    """The assigner's contract (training/assign.py): a box's best point gets a class target equal to its
    IoU. The normalisation divides by (max alignment + 1e-9); for an 8×8 px object (a pill, a folded note)
    against the untrained model's ~120 px boxes the alignment is ~1e-16, so the target came out ~1e-9 instead
    of ~0.004 and the box and DFL weights with it: small contraband is a positive with a zero target — taught
    as background — and its tiny-box fallback (points near the centre) has no effect."""
    hws = [(64 // s, 64 // s) for s in (8, 16, 32)]
    points, strides = make_anchor_points(hws, (8, 16, 32))
    a = points.shape[0]
    half = 60.0  # an untrained head's box: ~7.5 bins either side at stride 8
    pred_boxes = torch.cat([points - half, points + half], dim=-1)[None]  # 1×A×4
    pred_scores = torch.full((1, a, 3), 0.01)
    for box in ([24.0, 24.0, 32.0, 32.0], [26.0, 26.0, 30.0, 30.0]):  # one stride; smaller than a stride
        gt, labels, valid = pad_targets([torch.tensor([box])], [torch.tensor([1])], device=torch.device("cpu"))
        out = TaskAlignedAssigner(num_classes=3)(pred_scores, pred_boxes, points, strides, gt, labels, valid)
        assert out.fg_mask.any()
        ious = box_iou_pairwise(gt[0, 0][None], pred_boxes[0])  # A
        best_iou = float(ious[out.fg_mask[0]].max())
        assert best_iou > 1e-3
        assert float(out.target_scores[0, :, 1].max()) == pytest.approx(best_iou, rel=1e-3), box


def test_resume_takes_the_configs_weight_decay(tmp_path):
    """`--resume … --set optim.weight_decay=0.1`: the run records 0.1 in its config and checkpoints, but
    optimizer.load_state_dict brought back the old run's weight decay (5e-4) and AdamW kept using it — the
    setting is silently ignored (as ema_decay was, fixed by the first review)."""
    run = tmp_path / "run"
    engine.train(small_config("optim.epochs=1"), run)
    config = small_config("optim.epochs=2", "optim.weight_decay=0.1")
    engine.train(config, run, resume=run / "last.ckpt")
    state = load_checkpoint(run / "last.ckpt")
    assert state["config"]["optim"]["weight_decay"] == 0.1
    decays = sorted(g["weight_decay"] for g in state["optimizer"]["param_groups"])
    assert decays == [0.0, 0.1]  # BatchNorm and biases undecayed, conv weights at the config's rate


def test_resume_with_other_frozen_parts_is_refused_clearly_or_honoured(tmp_path):
    """Resuming with `--set finetune.freeze=[backbone]` (or dropping a freeze) changes the optimiser's
    parameter groups: optimizer.load_state_dict raised a bare ValueError ("parameter group that doesn't
    match"), which `xscreen train` does not catch (a traceback, exit 1). It should be a ResumeError naming the
    frozen parts (exit 2), or be honoured."""
    run = tmp_path / "run"
    engine.train(small_config("optim.epochs=1"), run)
    before = load_checkpoint(run / "last.ckpt")["train_state_dict"]
    config = small_config("optim.epochs=2", "finetune.freeze=[backbone]")
    try:
        engine.train(config, run, resume=run / "last.ckpt")
    except engine.ResumeError:
        return  # refused, with a message the CLI shows
    after = load_checkpoint(run / "last.ckpt")["train_state_dict"]
    for name, tensor in after.items():
        if name.startswith("backbone."):
            assert torch.equal(tensor, before[name]), name


def test_log_every_zero_does_not_crash_a_run(tmp_path):
    """`--set log_every=0` (to quiet the log) passed the config check, then the run died after its first
    optimiser step with ZeroDivisionError (`done % log_every` in train_one_epoch; the progress display
    itself treats 0 as 1). Either refuse it when the config is read, or train."""
    try:
        config = small_config("optim.epochs=1", "log_every=0")
    except ConfigError:
        return
    last = engine.train(config, tmp_path / "run")
    assert load_checkpoint(last)["step"] == 1


class _Trained(Exception):
    """Raised by the stand-in train_one_epoch: the run got as far as training."""


@pytest.mark.parametrize(
    "override",
    [
        "model.input_size=100",  # the detector needs multiples of 32
        "data.classes=[]",
        "data.classes=[drug_package,cash_bundle,drug_package]",
    ],
)
def test_train_cli_refuses_unusable_model_and_class_settings(tmp_path, monkeypatch, override):
    """`xscreen train` promises exit 2 with a one-line error for a bad config. input_size 100 and an empty
    class list escaped as a bare ValueError from the model builder (traceback, exit 1); a class listed twice
    was not checked at all: the run trained a whole epoch (one head output never learnt) and then died in
    validation ("duplicate class names")."""
    from typer.testing import CliRunner

    from vision.cli import app

    def trained(*args, **kwargs):
        raise _Trained

    monkeypatch.setattr(engine, "train_one_epoch", trained)
    args = ["train", "--config", str(TINY), "--out", str(tmp_path / "run")]
    for item in [*SMALL, "optim.epochs=1", override]:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert not isinstance(result.exception, _Trained), "the run started training with this config"
    assert result.exit_code == 2, (result.exit_code, repr(result.exception), result.output[-500:])
    assert "error:" in result.output
