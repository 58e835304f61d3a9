"""Tiny training checkpoints for the export and engine tests, in the trainer's format, without training.

The head's class bias is raised (`class_bias`) and its weights spread so a random model gives detections
of varied scores above the score floor; without it every score sits at the class prior (~1e-3) and the
detection-level checks would compare empty lists.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from training.model import build_detector, checkpoint_state
from training.export_data import parity_set
from vision.postprocess import PostprocessParams
from vision.preprocess import PreprocessSpec

CLASSES = ("drug_package", "cannabis", "cash_bundle", "tobacco", "medicine_pills", "ivory", "pangolin_scales")
HW = 64


def liven(model: torch.nn.Module, spec: PreprocessSpec, *, class_bias: float, logit_std: float = 1.5) -> None:
    """Give a random model varied outputs. At PyTorch's default init the activations shrink with depth
    (eval-mode BatchNorm does not rescale them), so every anchor gets the same score and box; re-init the
    convs variance-preserving, then scale each level's class conv so its logits on the export gate's own
    images spread by ~`logit_std`."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * (2.0 / mod.weight[0].numel()) ** 0.5)
        x = torch.from_numpy(parity_set(spec, count=2).inputs.astype(np.int32))
        maps = model.head(model.neck(model.backbone(model.normalize(x))))
        for branch, logits in zip(model.head.cls_branches, maps.cls_logits):
            conv = branch[-1]
            spread = float((logits - conv.bias.view(1, -1, 1, 1)).std())
            conv.weight.mul_(logit_std / max(spread, 1e-6))
            conv.bias.fill_(class_bias)


def make_checkpoint(
    path: Path,
    *,
    input_kind: str = "rgb",
    input_bits: int = 8,
    hw: int = HW,
    class_bias: float | None = -4.0,
    seed: int = 0,
    datasets: list[Any] | None = None,
    thresholds: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint of a random tiny "n" detector (7 classes) to `path`."""
    torch.manual_seed(seed)
    channels = {"rgb": 3, "grey": 1, "dual_energy": 2}[input_kind]
    model = build_detector(
        size="n", num_classes=len(CLASSES), in_channels=channels, input_kind=input_kind, input_bits=input_bits,
        input_hw=(hw, hw),
    ).eval()
    spec = PreprocessSpec(input_kind=input_kind, input_bits=input_bits, height=hw, width=hw)
    if class_bias is not None:
        liven(model, spec, class_bias=class_bias)
    state = checkpoint_state(model)
    state.update(
        format="xscreen.checkpoint",
        format_version=1,
        classes=list(CLASSES),
        preprocess=spec.model_dump(),
        postprocess=PostprocessParams(score_floor=0.05, max_detections=50).model_dump(),
        thresholds=thresholds if thresholds is not None else {c: 0.4 for c in CLASSES},
        datasets=datasets if datasets is not None else [{"split": "train", "kind": "synth", "name": "xscreen-synth"}],
        config={"name": "tiny"},
        config_hash="ab" * 32,
        epoch=3,
    )
    state.update(extra or {})
    torch.save(state, path)
    return path


@functools.cache
def exported_package(input_kind: str = "rgb") -> tuple[Path, Path]:
    """(checkpoint, FP32 package) of a tiny model, exported once per test process (removed at exit)."""
    from training.export import export_package

    folder = Path(tempfile.mkdtemp(prefix="xscreen-export-test-"))
    atexit.register(shutil.rmtree, folder, True)
    ckpt = make_checkpoint(folder / f"{input_kind}.ckpt", input_kind=input_kind, input_bits=16 if input_kind == "dual_energy" else 8)
    out = folder / f"{input_kind}.onnx"
    export_package(ckpt, out)
    return ckpt, out


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Torch on one thread for a test (autouse in the modules that import it): two cores are shared with
    other test processes, one thread is faster on tiny tensors and makes CPU training repeatable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TrainingKilled(Exception):
    """Stands for the process being killed mid-run (see `train_killed_at_validation`)."""


def train_killed_at_validation(monkeypatch: Any, config: Any, out: Path, *, at: int = 2) -> None:
    """`training.engine.train(config, out)`, killed as it starts its validation number `at` (last.ckpt then
    holds epoch at − 2). Wraps whatever `engine.validate` is at the call (e.g. a test's timed one)."""
    from training import engine

    real_validate, calls = engine.validate, {"n": 0}

    def validate_then_die(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == at:
            raise TrainingKilled
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(engine, "validate", validate_then_die)
    try:
        with pytest.raises(TrainingKilled):
            engine.train(config, out)
    finally:
        monkeypatch.setattr(engine, "validate", real_validate)
