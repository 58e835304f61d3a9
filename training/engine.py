"""The training loop: `train(config, out_dir)` → RUN/last.ckpt.

Per optimiser step: learning rate from the warm-up + cosine schedule (training.schedule), forward under
autocast (optim.amp: float16 with a GradScaler on CUDA, bfloat16 on a CPU that computes it natively — see
`amp_dtype`), loss in float32, backward, gradient clipping, AdamW step, EMA update (training.ema). The
model and its inputs are kept channels-last (NHWC), the layout oneDNN's and cuDNN's fast convolutions use.
Per epoch: rank 0 evaluates the EMA weights on the validation sources through the lane's post-processing
(training.evaluate), appends a line to metrics.jsonl, writes TensorBoard scalars under tb/, and saves
last.ckpt (resumable) and best.ckpt (highest val mAP50). With optim.minutes, rank 0 also re-plans how many
epochs fit the wall-clock budget (training.schedule.epochs_within) and the cosine is re-fitted to end with
them; every rank follows its plan.

Run folder: config.yaml (the resolved config), last.ckpt, best.ckpt, metrics.jsonl, tb/.

Distributed: the same function runs under `torchrun --nproc_per_node=N` (training.distributed).
optim.batch_size is the *global* batch: each of N ranks takes batch_size // N, so a config trains the same
way on one GPU or eight. The sampler gives every rank a disjoint shard of the same epoch.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from training import data as data_lib
from training.checkpoint import (
    build_checkpoint,
    dataset_provenance,
    inherited_provenance,
    load_checkpoint,
    restore_rng_state,
)
from training.config import TrainConfig, save_config
from training.distributed import (
    DistContext,
    all_reduce_min_int,
    all_reduce_sum,
    barrier,
    broadcast_object,
    cleanup,
    gather_ints,
    init_distributed,
)
from training.ema import ModelEMA
from training.evaluate import MAP_SCORE_FLOOR, evaluate_model, torch_predictor
from training.finetune import freeze_parts, set_train_mode, transfer_weights
from training.head import HeadMaps
from training.loss import DetectionLoss, LossOutput, build_loss
from training.metrics import EvaluationReport
from training.model import Detector, build_detector
from training.progress import TrainProgress
from training.run_record import RunRecorder, metrics_line
from training.schedule import WarmupCosine, build_optimizer, build_schedule, epochs_within, set_lr
from vision.decide import DecisionPolicy
from vision.postprocess import PostprocessParams
from vision.preprocess import PreprocessSpec

# Class weights are clipped to this range: a class seen a handful of times must not get a BCE positive
# weight in the hundreds, which makes it fire everywhere.
_CLASS_WEIGHT_RANGE = (0.1, 10.0)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (every rank the same: DDP also broadcasts rank 0's initial weights)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(config: TrainConfig, spec: PreprocessSpec) -> Detector:
    """The detector a config asks for, with the input geometry of `spec` and one output per class."""
    weights = Path(config.model.backbone_weights) if config.model.backbone_weights else None
    return build_detector(
        size=config.model.size,
        num_classes=len(config.data.classes),
        in_channels=spec.channels,
        input_kind=spec.input_kind,
        input_bits=spec.input_bits,
        input_hw=(spec.height, spec.width),
        backbone_weights=weights,
    )


def class_weights_from_counts(counts: np.ndarray) -> np.ndarray:
    """Inverse-square-root frequency weights, K float64.

    w_k ∝ 1/√n_k (the softer cousin of 1/n_k: full inverse frequency over-corrects and makes rare classes
    fire on clutter), normalised so the box-weighted mean Σ n_k w_k / Σ n_k is 1 — the loss keeps its scale
    and only its balance between classes changes — then clipped to _CLASS_WEIGHT_RANGE. A class without
    boxes is counted as one box (its weight only matters if it ever appears)."""
    counts = np.asarray(counts, dtype=np.float64)
    w = 1.0 / np.sqrt(np.maximum(counts, 1.0))
    if counts.sum() > 0:
        w = w * counts.sum() / (counts * w).sum()
    return np.clip(w, *_CLASS_WEIGHT_RANGE)


def amp_dtype(enabled: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training on `device`, or None for plain float32.

    CUDA: float16 (with a GradScaler). CPU: bfloat16 where the CPU computes it natively (AVX512-BF16 or AMX
    tiles: oneDNN then runs the convolutions about 1.5× faster than in float32, measured on this project's
    2-core machine by bench/train_speed.py); elsewhere bfloat16 would be emulated and slower, so float32.
    """
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return torch.bfloat16
    return None


def forward_loss(
    model: nn.Module,
    loss_fn: DetectionLoss,
    images: torch.Tensor,
    gt_boxes: list[torch.Tensor],
    gt_ids: list[torch.Tensor],
    *,
    amp: torch.dtype | None,
) -> LossOutput:
    """The forward half of a training step: the model under autocast in `amp` (None: float32), the loss in
    float32 — BCE on thousands of near-zero targets and the DFL softmax lose too much in half precision.
    images: B×C×H×W on the model's device, in the layout the caller chose (the trainer: channels-last)."""
    with torch.autocast(device_type=images.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        maps: HeadMaps = model(images)
    maps = HeadMaps([m.float() for m in maps.cls_logits], [m.float() for m in maps.box_logits], maps.strides)
    return loss_fn(maps, gt_boxes, gt_ids)


@dataclass(frozen=True)
class EpochStats:
    """Mean losses over all ranks' steps of one epoch, the steps taken, images per rank (rank order)."""

    loss: float
    cls: float
    box: float
    dfl: float
    steps: int
    images_per_rank: list[int]


@dataclass(frozen=True)
class RunParts:
    """What a checkpoint is made of besides the config: the raw (unwrapped) model, its EMA, the optimiser,
    the AMP scaler, the schedule and the training-data provenance."""

    model: Detector
    ema: ModelEMA
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: WarmupCosine
    datasets: list[dict[str, Any]]


def _unwrap(model: nn.Module) -> Detector:
    return model.module if isinstance(model, DistributedDataParallel) else model  # type: ignore[return-value]


def train_one_epoch(
    model: nn.Module,
    loss_fn: DetectionLoss,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    ema: ModelEMA,
    schedule: WarmupCosine,
    *,
    start_step: int,
    steps: int,
    ctx: DistContext,
    amp: torch.dtype | None,
    grad_clip_norm: float,
    frozen_parts: tuple[str, ...],
    progress: TrainProgress,
    recorder: RunRecorder | None,
    log_every: int,
) -> EpochStats:
    """One pass over `steps` batches of `loader` (images B×C×H×W, targets with boxes_xyxy N×4 input px and
    class_ids N). Returns the epoch's mean losses; the global step after it is start_step + steps."""
    set_train_mode(_unwrap(model), frozen_parts)
    device = ctx.device
    params = [p for p in model.parameters() if p.requires_grad]
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    images_seen = 0
    step = start_step
    done = 0
    for images, targets in loader:
        if done >= steps:
            break  # every rank stops at the same count, or DDP's all-reduce would wait forever
        lr = schedule.lr(step)
        set_lr(optimizer, lr)
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        gt_boxes = [t["boxes_xyxy"].to(device, dtype=torch.float32) for t in targets]
        gt_ids = [t["class_ids"].to(device, dtype=torch.int64) for t in targets]
        out = forward_loss(model, loss_fn, images, gt_boxes, gt_ids, amp=amp)
        if not scaler.is_enabled() and not bool(torch.isfinite(out.total)):  # the scaler skips such steps
            raise FloatingPointError(f"non-finite loss at step {step} (lr {lr:.3g}); lower optim.lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(out.total).backward()
        if grad_clip_norm > 0:
            scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
            nn.utils.clip_grad_norm_(params, grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        ema.update(_unwrap(model))
        step += 1
        done += 1
        images_seen += int(images.shape[0])
        values = torch.stack([out.total.detach(), out.cls, out.box, out.dfl]).double()
        sums += values
        if progress.enabled:
            v = values.tolist()
            progress.step(done, {"loss": v[0], "cls": v[1], "box": v[2], "dfl": v[3]}, lr)
            if recorder is not None and (done % log_every == 0 or done == steps):
                recorder.train_step(step, {"loss": v[0], "cls": v[1], "box": v[2], "dfl": v[3]}, lr)
    total = all_reduce_sum(ctx, torch.cat([sums, torch.tensor([done], dtype=torch.float64, device=device)]))
    n = max(1.0, float(total[4]))
    mean = (total[:4] / n).tolist()
    return EpochStats(
        loss=mean[0], cls=mean[1], box=mean[2], dfl=mean[3], steps=done, images_per_rank=gather_ints(ctx, images_seen)
    )


def validate(
    ema_model: Detector, dataset: Dataset, *, classes: tuple[str, ...], batch_size: int, device: torch.device, workers: int
) -> EvaluationReport:
    """The EMA weights on the validation set, through the lane's post-processing at default thresholds.

    Every figure counts detections down to MAP_SCORE_FLOOR: a model in training is not calibrated yet, and
    at the lane's default floor an under-confident one would show a bag AUROC of exactly 0.5 however well
    it ranks bags (`xscreen calibrate` later lowers the package's floor to its thresholds where needed)."""
    return evaluate_model(
        torch_predictor(ema_model, device=device),
        dataset,
        classes=classes,
        postprocess=PostprocessParams(score_floor=MAP_SCORE_FLOOR),
        policy=DecisionPolicy(class_names=classes),
        batch_size=batch_size,
        workers=workers,
    )


class ResumeError(ValueError):
    """A checkpoint this config cannot continue from; the message says why."""


def _check_resume(state: dict[str, Any], config: TrainConfig, model: Detector) -> None:
    if tuple(state["classes"]) != tuple(config.data.classes):
        raise ResumeError(f"cannot resume: the checkpoint's classes {state['classes']} differ from the config's")
    if dict(state["model_args"]) != model.config.to_dict():
        raise ResumeError("cannot resume: the checkpoint's model differs from the config's (size, input or classes)")
    if "train_state_dict" not in state or "optimizer" not in state:
        raise ResumeError("cannot resume from this checkpoint: it holds no training state (use last.ckpt)")
    saved_freeze = tuple((state.get("config") or {}).get("finetune", {}).get("freeze") or ())
    if tuple(saved_freeze) != tuple(config.finetune.freeze):
        raise ResumeError(f"cannot resume: the checkpoint trained with finetune.freeze={list(saved_freeze)}, the config "
                          f"says {list(config.finetune.freeze)} (the optimiser's state is for the parts it trained)")
    if int(state["epoch"]) + 1 >= config.optim.epochs:
        raise ResumeError(
            f"the checkpoint already holds {int(state['epoch']) + 1} of {config.optim.epochs} epochs; "
            "raise optim.epochs (--set optim.epochs=N) to train longer"
        )


def train(config: TrainConfig, out_dir: Path, *, resume: Path | None = None) -> Path:
    """Train a detector as `config` says into the run folder `out_dir`; returns the path of last.ckpt.

    resume: a last.ckpt to continue from (its epoch, step, weights, optimiser, EMA and RNG state); the
    config's optim.epochs may be raised to train longer (the cosine then stretches to the new end).
    Under torchrun every rank calls this; rank 0 alone writes the run folder.
    """
    ctx = init_distributed(config.device)
    ok = False
    try:
        last = _train(config, Path(out_dir), resume, ctx)
        ok = True
        return last
    finally:
        cleanup(ctx, wait=ok)


@dataclass(frozen=True)
class TrainData:
    """The data of a run on this rank: the training set, its sampler (call `set_epoch`) and loader, and
    the validation set (rank 0 only; None elsewhere)."""

    train: Dataset
    sampler: Any
    loader: DataLoader
    val: Dataset | None


def build_train_data(config: TrainConfig, spec: PreprocessSpec, ctx: DistContext) -> TrainData:
    """Datasets and loader for `config` on this rank: each rank loads batch_size / world_size items per step
    from its own shard of every epoch."""
    classes = tuple(config.data.classes)
    if config.optim.batch_size % ctx.world_size:
        raise ValueError(f"optim.batch_size {config.optim.batch_size} must be a multiple of the {ctx.world_size} ranks")
    train_ds = data_lib.build_dataset(
        config.data.train, classes=classes, spec=spec, train=True, augment=config.data.augment, seed=config.seed
    )
    sampler = data_lib.build_sampler(
        train_ds, config.data.train, epoch_len=config.data.epoch_len, seed=config.seed, rank=ctx.rank, world_size=ctx.world_size
    )
    workers = config.data.workers
    loader = DataLoader(
        train_ds,
        batch_size=config.optim.batch_size // ctx.world_size,
        sampler=sampler,
        collate_fn=data_lib.collate,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=ctx.device.type == "cuda",
    )
    val_ds = None
    if ctx.is_main:
        val_ds = data_lib.build_dataset(
            config.data.val, classes=classes, spec=spec, train=False, augment=False, seed=config.seed
        )
    return TrainData(train=train_ds, sampler=sampler, loader=loader, val=val_ds)


def build_class_weights(config: TrainConfig, train_ds: Dataset, ctx: DistContext) -> np.ndarray | None:
    """K loss weights from the training set's class frequencies (`class_weights_from_counts`), or None
    when optim.class_balance is off. Rank 0 counts (it may read every annotation) and shares the result."""
    if not config.optim.class_balance:
        return None
    counts = data_lib.class_frequencies(train_ds) if ctx.is_main else None
    return class_weights_from_counts(broadcast_object(ctx, counts))


def _prepare_model(
    config: TrainConfig, spec: PreprocessSpec, state: dict[str, Any] | None, progress: TrainProgress
) -> tuple[Detector, tuple[str, ...], list[dict[str, Any]]]:
    """The model to train (fresh, fine-tuned from config.finetune, or resumed from `state`'s raw weights),
    with the frozen parts frozen. Returns it, the frozen state_dict prefixes and the training provenance."""
    classes = tuple(config.data.classes)
    model = build_model(config, spec)
    provenance = dataset_provenance(config.data.train) if state is None else list(state["datasets"])
    if state is None and config.finetune.checkpoint:
        source = load_checkpoint(config.finetune.checkpoint)
        report = transfer_weights(model, source, classes=classes)
        provenance += inherited_provenance(source, config.finetune.checkpoint)
        progress.log(
            f"fine-tuning from {config.finetune.checkpoint}: {len(report.copied)} tensors kept, "
            f"{len(report.reinitialised)} class-conv tensors re-initialised (shared classes: {list(report.shared_classes)})"
        )
    frozen_prefixes = freeze_parts(model, config.finetune.freeze)
    if state is not None:
        _check_resume(state, config, model)
        model.load_state_dict(state["train_state_dict"], strict=True)
    return model, frozen_prefixes, provenance


def _train(config: TrainConfig, out: Path, resume: Path | None, ctx: DistContext) -> Path:
    t_command = time.perf_counter()  # optim.minutes budgets the whole command, set-up included
    seed_everything(config.seed)
    device = ctx.device
    classes = tuple(config.data.classes)
    spec = data_lib.preprocess_spec_for(config.model)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
    progress = TrainProgress(enabled=ctx.is_main, epochs=config.optim.epochs, log_every=config.log_every)
    state = load_checkpoint(resume) if resume is not None else None
    model, frozen_prefixes, provenance = _prepare_model(config, spec, state, progress)
    frozen = tuple(config.finetune.freeze)
    model.to(device, memory_format=torch.channels_last)

    data = build_train_data(config, spec, ctx)
    weights = build_class_weights(config, data.train, ctx)
    if weights is not None:
        progress.log("class weights: " + ", ".join(f"{c} {w:.2f}" for c, w in zip(classes, weights)))
    loss_fn = build_loss(num_classes=len(classes), reg_max=model.reg_max, class_weights=weights).to(device)

    optimizer = build_optimizer(model, lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    steps_per_epoch = all_reduce_min_int(ctx, len(data.loader))
    if steps_per_epoch < 1:
        raise ValueError("the training sources yield no batch: raise their length or lower optim.batch_size")
    schedule = build_schedule(
        peak_lr=config.optim.lr,
        epochs=config.optim.epochs,
        steps_per_epoch=steps_per_epoch,
        warmup_epochs=config.optim.warmup_epochs,
    )
    amp = amp_dtype(config.optim.amp, device)
    if amp is not None:
        progress.log(f"mixed precision: {str(amp).removeprefix('torch.')} autocast on {device.type}")
    use_scaler = amp == torch.float16  # bfloat16 has float32's range: nothing to scale
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    ema = ModelEMA(model, decay=config.optim.ema_decay, frozen_prefixes=frozen_prefixes)

    start_epoch, step, best_map50 = 0, 0, None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        # The config's weight decay, not the old run's (load_state_dict brings back its groups' settings);
        # `build_optimizer`'s groups: decayed weights, then the undecayed rest.
        optimizer.param_groups[0]["weight_decay"] = config.optim.weight_decay
        optimizer.param_groups[1]["weight_decay"] = 0.0
        if use_scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        ema.load_state_dict(state["ema"], state["state_dict"])
        ema.decay = config.optim.ema_decay  # the config's (which this run's checkpoints record), not the old run's
        start_epoch, step, best_map50 = int(state["epoch"]) + 1, int(state["step"]), state.get("best_map50")
        if config.optim.minutes is not None and state.get("scheduler"):
            # A budgeted run re-fitted its cosine to the epochs that fitted: continue on that plan (re-planned
            # after the next epoch) rather than on the optim.epochs cosine, whose rate there is far higher.
            saved_total = int(state["scheduler"]["total_steps"])
            schedule = replace(schedule, total_steps=min(schedule.total_steps, max(schedule.warmup_steps, step, saved_total)))
        restore_rng_state(state.get("rng"))
        progress.log(f"resuming {resume} at epoch {start_epoch + 1}/{config.optim.epochs}, step {step}")
        del state  # the weights are loaded; do not keep a second copy for the whole run

    raw_model = model
    if ctx.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    recorder = RunRecorder(out, start_epoch=start_epoch, start_step=step, best_map50=best_map50) if ctx.is_main else None
    parts = RunParts(model=raw_model, ema=ema, optimizer=optimizer, scaler=scaler, schedule=schedule, datasets=provenance)
    planned, t_start = config.optim.epochs, time.perf_counter()
    setup_s = t_start - t_command
    try:
        with progress:
            epoch = start_epoch
            while epoch < planned:
                t0 = time.perf_counter()
                data.sampler.set_epoch(epoch)
                progress.start_epoch(epoch, steps_per_epoch)
                stats = train_one_epoch(
                    model, loss_fn, data.loader, optimizer, scaler, ema, schedule,
                    start_step=step, steps=steps_per_epoch, ctx=ctx, amp=amp,
                    grad_clip_norm=config.optim.grad_clip_norm, frozen_parts=frozen, progress=progress,
                    recorder=recorder, log_every=config.log_every,
                )  # fmt: skip
                step += stats.steps
                train_s = time.perf_counter() - t0
                report = None
                if recorder is not None:
                    report = validate(
                        parts.ema.model, data.val, classes=classes, batch_size=config.optim.batch_size,
                        device=device, workers=config.data.workers,
                    )  # fmt: skip
                if config.optim.minutes is not None:
                    # Re-plan (rank 0 decides for all; the others wait here while it validates) after this
                    # epoch's validation, so the pace counts it, and before its checkpoint, which records the
                    # schedule. The set-up before the first epoch comes out of the budget, not the pace.
                    planned = broadcast_object(ctx, epochs_within(
                        done=epoch + 1 - start_epoch, elapsed_s=time.perf_counter() - t_start,
                        budget_s=60.0 * config.optim.minutes - setup_s, max_epochs=config.optim.epochs - start_epoch,
                    ) + start_epoch)  # fmt: skip
                    schedule = replace(schedule, total_steps=max(schedule.warmup_steps, step, planned * steps_per_epoch))
                    parts = replace(parts, schedule=schedule)
                    progress.epochs = planned
                if recorder is not None:
                    _end_epoch(
                        config=config, spec=spec, recorder=recorder, epoch=epoch, step=step, stats=stats,
                        seconds=train_s, ctx=ctx, progress=progress, report=report, parts=parts,
                    )  # fmt: skip
                barrier(ctx)  # the others wait while rank 0 evaluates and saves
                epoch += 1
    finally:
        if recorder is not None:
            recorder.close()
    return out / "last.ckpt"


def _end_epoch(
    *,
    config: TrainConfig,
    spec: PreprocessSpec,
    recorder: RunRecorder,
    epoch: int,
    step: int,
    stats: EpochStats,
    seconds: float,
    ctx: DistContext,
    progress: TrainProgress,
    report: EvaluationReport,
    parts: RunParts,
) -> None:
    """Rank 0 after an epoch: record the EMA weights' validation `report` in the metrics line, and the
    checkpoints. seconds: the epoch's training time."""
    line = metrics_line(
        epoch=epoch, step=step, lr=parts.schedule.lr(max(0, step - 1)),
        losses={"loss": stats.loss, "cls": stats.cls, "box": stats.box, "dfl": stats.dfl}, report=report,
        seconds=seconds, world_size=ctx.world_size, images_per_rank=stats.images_per_rank,
    )  # fmt: skip
    improved, line["best_map50"] = recorder.score(line)
    state = build_checkpoint(
        config=config, spec=spec, model=parts.model, ema=parts.ema, optimizer=parts.optimizer, scaler=parts.scaler,
        schedule=parts.schedule, step=step, epoch=epoch, best_map50=line["best_map50"], metrics=line,
        datasets=parts.datasets,
    )  # fmt: skip
    recorder.epoch(line, state, improved=improved)
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    progress.log(
        f"epoch {epoch + 1}/{progress.epochs}: loss {stats.loss:.3f}  val mAP50 {fmt(line['val_map50'])}  "
        f"mAP50-95 {fmt(line['val_map50_95'])}  AUROC {fmt(line['val_bag_auroc'])}  "
        f"Pd@Pfa0.05 {fmt(line['val_pd_at_pfa'].get('0.05'))}  ({seconds:.1f} s{', best' if improved else ''})"
    )
