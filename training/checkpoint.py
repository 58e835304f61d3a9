"""Checkpoints: one `torch.save`d dict that holds what it takes to rebuild, evaluate, export and resume.

Keys (all plain data and tensors, so `torch.load(..., weights_only=True)` reads them):

    format, format_version        "xscreen.checkpoint", 1
    model_args, state_dict        `training.model.checkpoint_state` of the EMA model (what we evaluate and
                                  export); `detector_from_checkpoint(ckpt)` rebuilds it
    classes                       class names in head order
    preprocess                    `PreprocessSpec.model_dump()`: what the model takes
    postprocess                   `PostprocessParams.model_dump()`: how its outputs become detections
    thresholds                    class → alarm threshold (0.5 until `xscreen calibrate`)
    operating_point               None, or what `calibrate` reached: target_pfa, achieved_pfa, pd, data
    config, config_hash           the resolved TrainConfig (`config_to_dict`) and its sha256
    datasets                      provenance of the training data: one entry per training source (kind,
                                  name, path, format, …), plus, for a fine-tuned model, the entries of the
                                  checkpoint it started from (marked "via"): its weights carry that data too
    val_datasets                  the validation sources, same form
    epoch                         the last completed epoch (0-based); step: optimiser steps so far
    scheduler                     the per-step schedule (peak_lr, total_steps, warmup_steps, step)
    ema                           `ModelEMA.state_dict()` (updates, decay, tau)
    best_map50, metrics           best validation mAP50 so far; this epoch's metrics line
  resumable checkpoints (last.ckpt) also hold
    train_state_dict              the raw (non-averaged) weights the optimiser works on
    optimizer, scaler             AdamW state; AMP GradScaler state (None without AMP)
    rng                           torch CPU (and CUDA) generator states
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from training.config import SourceConfig, TrainConfig, config_hash, config_to_dict
from training.ema import ModelEMA
from training.model import Detector, checkpoint_state
from training.schedule import WarmupCosine
from vision.postprocess import PostprocessParams
from vision.preprocess import PreprocessSpec

FORMAT = "xscreen.checkpoint"
FORMAT_VERSION = 1
DEFAULT_THRESHOLD = 0.5


def default_thresholds(classes: Sequence[str]) -> dict[str, float]:
    """Every class at DEFAULT_THRESHOLD: the uncalibrated policy (vision.decide's default)."""
    return {name: DEFAULT_THRESHOLD for name in classes}


def default_postprocess() -> dict[str, Any]:
    return PostprocessParams().model_dump()


def _source_name(source: SourceConfig) -> str:
    if source.kind == "synth":
        return "xscreen-synth"
    base = Path(source.path).name if source.path else "unknown"
    if source.kind == "tip":
        return f"tip:{base}"
    # A dataset named by --format ("pidray", "sixray", …) is recorded by that name: the exporter marks
    # academic-only datasets from it. A generic layout ("coco", "auto") falls back to the folder name.
    return source.format if source.format not in ("auto", "coco", "voc", "yolo", "lines", "gdxray") else base


def dataset_provenance(sources: Sequence[SourceConfig]) -> list[dict[str, Any]]:
    """One entry per source: what a model package lists as the data behind its weights."""
    return [
        {
            "kind": s.kind,
            "name": _source_name(s),
            "path": s.path,
            "format": s.format,
            "palette": s.palette if s.kind == "synth" else None,
            "seed": s.seed if s.kind != "dataset" else None,
        }
        for s in sources
    ]


def inherited_provenance(source: dict[str, Any], source_path: Path | str) -> list[dict[str, Any]]:
    """The training data of a checkpoint we fine-tune from, each entry marked with where it came from."""
    return [dict(e, via=f"finetune:{source_path}") for e in source.get("datasets") or ()]


def build_checkpoint(
    *,
    config: TrainConfig,
    spec: PreprocessSpec,
    model: Detector,
    ema: ModelEMA,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    schedule: WarmupCosine,
    step: int,
    epoch: int,
    best_map50: float | None,
    metrics: dict[str, Any] | None,
    datasets: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The checkpoint of a run after `epoch` (0-based) and `step` optimiser steps: the EMA weights as the
    model, the raw weights, optimiser, scaler and RNG state for resuming, and what a lane needs (keys: see
    the module docstring). datasets: the training provenance (default: the config's training sources)."""
    classes = tuple(config.data.classes)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **checkpoint_state(ema.model),
        "classes": list(classes),
        "preprocess": spec.model_dump(),
        "postprocess": default_postprocess(),
        "thresholds": default_thresholds(classes),
        "operating_point": None,
        "config": config_to_dict(config),
        "config_hash": config_hash(config),
        "datasets": dataset_provenance(config.data.train) if datasets is None else list(datasets),
        "val_datasets": dataset_provenance(config.data.val),
        "epoch": epoch,
        "step": step,
        "scheduler": {
            "peak_lr": schedule.peak_lr,
            "total_steps": schedule.total_steps,
            "warmup_steps": schedule.warmup_steps,
            "step": step,
        },
        "ema": ema.state_dict(),
        "best_map50": best_map50,
        "metrics": metrics,
        "train_state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "rng": rng_state(),
    }


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write atomically and durably (temporary file, flushed to disk, then renamed, then the folder flushed):
    neither a killed process nor a power loss leaves a torn or empty last.ckpt in place of the previous one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return path


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a checkpoint onto the CPU (safe loader: tensors and plain data only)."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not an xscreen training checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format version {state.get('format_version')} is not {FORMAT_VERSION}")
    return state


def strip_training_state(state: dict[str, Any]) -> dict[str, Any]:
    """A copy without what only resuming needs (raw weights, optimiser, scaler, RNG): for best.ckpt."""
    return {k: v for k, v in state.items() if k not in ("train_state_dict", "optimizer", "scaler", "rng")}


def with_thresholds(
    state: dict[str, Any], thresholds: dict[str, float], operating_point: dict[str, Any] | None,
    *, score_floor: float | None = None,
) -> dict[str, Any]:
    """A copy of `state` with calibrated per-class thresholds (every class, in (0, 1]) and their operating
    point; `score_floor`, if given, becomes the post-processing floor (it must not exceed any threshold)."""
    classes = list(state["classes"])
    if set(thresholds) != set(classes):
        raise ValueError(f"thresholds must name every class exactly: {sorted(thresholds)} vs {classes}")
    bad = {k: v for k, v in thresholds.items() if not 0.0 < v <= 1.0}
    if bad:
        raise ValueError(f"thresholds must lie in (0, 1]: {bad}")
    out = dict(state)
    out["thresholds"] = {name: float(thresholds[name]) for name in classes}
    out["operating_point"] = operating_point
    if score_floor is not None:
        if not 0.0 <= score_floor <= min(out["thresholds"].values()):
            raise ValueError(f"score_floor {score_floor} must lie in [0, lowest threshold]")
        out["postprocess"] = {**dict(state.get("postprocess") or {}), "score_floor": float(score_floor)}
    return out


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any] | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
