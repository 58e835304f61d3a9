"""Learning-rate schedule and optimiser: linear warm-up then cosine decay, per optimiser step; AdamW with
weight decay on conv/linear weights only.

The schedule is a pure function of the step, so resuming needs only the step count (saved in every
checkpoint) — no scheduler object whose state could drift from the optimiser's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

# The cosine ends at 1 % of the peak rate (YOLOv8's lrf = 0.01): the last epochs still move the weights a
# little, which the EMA then averages, instead of freezing them at exactly zero.
FINAL_LR_FRACTION = 0.01
# Warm-up starts from a small fraction of the peak, not 0, so the first step is not wasted.
WARMUP_START_FRACTION = 0.01


@dataclass(frozen=True)
class WarmupCosine:
    """lr(step) = peak · factor(step), step = optimiser steps taken so far (0-based).

    warm-up (step < warmup_steps): factor rises linearly from WARMUP_START_FRACTION to 1;
    afterwards: cosine from 1 down to FINAL_LR_FRACTION at total_steps (held there beyond).
    """

    peak_lr: float
    total_steps: int
    warmup_steps: int

    def __post_init__(self) -> None:
        if self.total_steps < 1 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"need 0 ≤ warmup_steps ≤ total_steps, total ≥ 1; got {self}")

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return WARMUP_START_FRACTION + (1.0 - WARMUP_START_FRACTION) * step / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return FINAL_LR_FRACTION + (1.0 - FINAL_LR_FRACTION) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def lr(self, step: int) -> float:
        return self.peak_lr * self.factor(step)


def build_schedule(*, peak_lr: float, epochs: int, steps_per_epoch: int, warmup_epochs: float) -> WarmupCosine:
    """The per-step schedule of a run: total = epochs · steps_per_epoch, warm-up = warmup_epochs of steps
    (rounded, at most the whole run)."""
    total = max(1, epochs * steps_per_epoch)
    warmup = min(total, max(0, round(warmup_epochs * steps_per_epoch)))
    return WarmupCosine(peak_lr=peak_lr, total_steps=total, warmup_steps=warmup)


def epochs_within(*, done: int, elapsed_s: float, budget_s: float, max_epochs: int) -> int:
    """How many epochs a run with a wall-clock budget plans in all, after `done` epochs in `elapsed_s`:
    those done plus as many more as fit in what is left at their mean pace, at least `done` (stop now)
    and at most `max_epochs`."""
    if done < 1 or elapsed_s <= 0:
        return max_epochs
    more = int((budget_s - elapsed_s) // (elapsed_s / done))
    return min(max_epochs, done + max(0, more))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters. Weight decay applies to conv/linear weights (ndim ≥ 2) only:
    decaying BatchNorm scales and biases pulls them towards 0, which only fights the normalisation."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # betas (0.9, 0.999) are the AdamW defaults; YOLOv8's AdamW uses β1 = 0.937 with SGD-style momentum
    # in mind, which makes no measurable difference here.
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
