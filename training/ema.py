"""Exponential moving average of the weights (the weights we evaluate, save and export).

As YOLO does it (after Polyak averaging / timm's ModelEma): after each optimiser step

    ema = d · ema + (1 − d) · model,   d = decay · (1 − exp(−updates / tau))

The ramp makes d ≈ 0 at the start — the average follows the (random, fast-moving) early weights instead of
remembering the initialisation for thousands of steps — and approaches `decay` after a few · tau updates.
BatchNorm running statistics are averaged the same way (they are floating-point state).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

# Steps over which the decay ramps up (YOLOv8's tau = 2000).
DEFAULT_TAU = 2000.0


class ModelEMA:
    """EMA of `model`'s state (a deep copy kept in eval mode, no gradients).

    frozen_prefixes: state_dict key prefixes (e.g. "backbone.") copied from the model instead of averaged:
    frozen weights do not change, and averaging a constant in float32 can still move it by rounding.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        decay: float,
        tau: float = DEFAULT_TAU,
        updates: int = 0,
        frozen_prefixes: tuple[str, ...] = (),
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = updates
        self.frozen_prefixes = frozen_prefixes

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current state in (call after each optimiser step; `model` unwrapped from DDP)."""
        self.updates += 1
        d = self.current_decay()
        source = model.state_dict()
        for key, value in self.model.state_dict().items():
            new = source[key].detach()
            if value.dtype.is_floating_point and not key.startswith(self.frozen_prefixes):
                value.mul_(d).add_(new.to(value.dtype), alpha=1.0 - d)
            else:
                value.copy_(new)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs besides the averaged weights themselves (saved as the model)."""
        return {"updates": self.updates, "decay": self.decay, "tau": self.tau}

    def load_state_dict(self, state: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        """Restore from a checkpoint's "ema" entry and its averaged weights."""
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])
        self.tau = float(state["tau"])
        self.model.load_state_dict(weights, strict=True)
