"""The contraband detector: input normalisation + CSP backbone + PAN neck + decoupled anchor-free head.

    model = build_detector(size="s", num_classes=7, in_channels=3, input_kind="rgb", input_bits=8,
                           input_hw=(512, 512))
    model.train(); maps = model(x_uint8)            # HeadMaps for training/loss.py
    model.eval();  boxes_xyxy, scores = model(x)    # B×A×4 input pixels, B×A×K probabilities

Input: B×C×H×W raw scanner values, uint8 or uint16 (any integer or float dtype holding those values; it is
cast inside). The model owns scaling (÷255 or ÷65535) and mean/std, and for dual-energy input derives the
Z_eff-like channel itself, so the exported ONNX graph takes exactly what the lane decodes and nobody can
normalise twice. H, W must be multiples of 32 (letterbox to `config.input_hw`).

Input kinds (`in_channels` is the raw channel count the caller feeds):
- "rgb" (3): false-colour rendering, channels R, G, B.
- "grey" (1): single-energy transmission image.
- "dual_energy" (2): raw low- and high-energy transmission, in that order. Inside the graph:
      t_k = clamp(x_k / full_scale, 1e-4, 1)          transmission of layer k
      a_k = −ln t_k                                    log-attenuation (Beer–Lambert: Σ μ_m t_m)
      r   = clamp((a_low + 0.05) / (a_high + 0.05), 0, 4)
  r is the low/high log-attenuation ratio, a monotone proxy of effective atomic number (organic ≈ 1.1–1.4,
  metals higher): the quantity scanners map to hue. The +0.05 offset pulls r to 1 where the bag is almost
  transparent (a_high → 0, the ratio of two noise values), and the clamps bound it for unpenetrated pixels
  (t → 0). The network sees three channels (t_low, t_high, r), each standardised by config.mean/std.

Output boxes are in the model's input pixels (the letterboxed image); NMS is not in the graph: it is
vision.postprocess, shared by evaluation, the ONNX engine and the service.

Sizes at 512×512, 7 classes (GFLOPs = 2 × multiply-accumulates of the Conv layers, the YOLO convention;
latency batch 1, 2 threads, FP32, on the 2-core dev box (Xeon, AVX-512), median):

    size  params  GFLOPs  torch eager  ONNX Runtime
    n     1.65 M   2.95     ~48 ms       ~17 ms
    s     3.01 M   5.18     ~58 ms       ~25 ms      ("s" is close to YOLOv8n's layout)
    m     8.66 M  16.89    ~120 ms       ~66 ms
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from training.backbone import SIZES, build_backbone
from training.head import (
    STRIDES,
    HeadMaps,
    build_head,
    dfl_expectation,
    distances_to_xyxy,
    flatten_levels,
    make_anchor_points,
)
from training.neck import build_neck

InputKind = Literal["rgb", "grey", "dual_energy"]

_RAW_CHANNELS: dict[str, int] = {"rgb": 3, "grey": 1, "dual_energy": 2}
_NET_CHANNELS: dict[str, int] = {"rgb": 3, "grey": 1, "dual_energy": 3}
# Default standardisation. X-ray scans are mostly bright (air and thin items transmit), so 0.5 ± 0.25 maps
# the [0, 1] range to about [−2, 2]; exact values matter little as BatchNorm follows the first conv, but
# they are stored in the config (and so in every checkpoint) so a rebuilt model normalises identically.
# The dual-energy ratio channel r lies in about [1, 2.5] for real materials.
_DEFAULT_MEAN: dict[str, tuple[float, ...]] = {
    "rgb": (0.5, 0.5, 0.5),
    "grey": (0.5,),
    "dual_energy": (0.5, 0.5, 1.3),
}
_DEFAULT_STD: dict[str, tuple[float, ...]] = {
    "rgb": (0.25, 0.25, 0.25),
    "grey": (0.25,),
    "dual_energy": (0.25, 0.25, 0.3),
}
_MIN_TRANSMISSION = 1e-4  # −ln(1e-4) ≈ 9.2: beyond that a scanner sees only noise (unpenetrated)
_RATIO_OFFSET = 0.05  # log-attenuation added to both layers before the ratio (see module docstring)
_RATIO_MAX = 4.0


@dataclass(frozen=True)
class DetectorConfig:
    """Everything needed to rebuild a detector (saved in checkpoints as `model_args`)."""

    size: str
    num_classes: int
    in_channels: int
    input_kind: InputKind
    input_bits: int
    input_hw: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    reg_max: int = 16

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; expected one of {sorted(SIZES)}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {self.num_classes}")
        if self.input_kind not in _RAW_CHANNELS:
            raise ValueError(f"unknown input_kind {self.input_kind!r}; expected one of {sorted(_RAW_CHANNELS)}")
        if self.in_channels != _RAW_CHANNELS[self.input_kind]:
            raise ValueError(
                f"input_kind {self.input_kind!r} takes {_RAW_CHANNELS[self.input_kind]} channels, "
                f"got in_channels={self.in_channels}"
            )
        if self.input_bits not in (8, 16):
            raise ValueError(f"input_bits must be 8 or 16, got {self.input_bits}")
        if len(self.input_hw) != 2 or any(v <= 0 or v % 32 for v in self.input_hw):
            raise ValueError(f"input_hw must be two positive multiples of 32, got {self.input_hw}")
        n = _NET_CHANNELS[self.input_kind]
        if len(self.mean) != n or len(self.std) != n or any(s <= 0 for s in self.std):
            raise ValueError(f"mean/std need {n} values (std > 0) for {self.input_kind!r}")
        if self.reg_max < 2:
            raise ValueError(f"reg_max must be ≥ 2, got {self.reg_max}")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-friendly dict (lists for tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, args: dict[str, Any]) -> DetectorConfig:
        """Inverse of `to_dict`; unknown keys are errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(args) - known
        if unknown:
            raise ValueError(f"unknown detector config keys: {sorted(unknown)}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
        return cls(**fixed)


class InputNormalizer(nn.Module):
    """B×C_raw×H×W raw values (any dtype) → B×C_net×H×W standardised float32 (see module docstring)."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.input_kind = config.input_kind
        self.full_scale = float(2**config.input_bits - 1)
        # Non-persistent buffers: derived from the config, so state_dicts stay free of them and a config
        # change cannot be silently overridden by stale saved values.
        self.register_buffer("mean", torch.tensor(config.mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32) / self.full_scale
        if self.input_kind == "dual_energy":
            t = x.clamp(_MIN_TRANSMISSION, 1.0)
            atten = -torch.log(t)
            ratio = (atten[:, 0:1] + _RATIO_OFFSET) / (atten[:, 1:2] + _RATIO_OFFSET)
            x = torch.cat((t, ratio.clamp(0.0, _RATIO_MAX)), dim=1)
        return (x - self.mean) / self.std


class Detector(nn.Module):
    """Single-stage anchor-free detector. `forward(x)`:

    x: B×C×H×W raw uint8/uint16 values (config.in_channels channels; H, W multiples of 32).
    training mode → HeadMaps (raw per-level logits, see training/head.py) for training/loss.py;
    eval mode → (boxes_xyxy B×A×4 float32 in input pixels, scores B×A×K float32 sigmoid probabilities),
    one row per anchor point of all levels (A = Σ H/s·W/s over s ∈ 8, 16, 32); no NMS.
    """

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        spec = SIZES[config.size]
        self.config = config
        self.strides = STRIDES
        self.reg_max = config.reg_max
        self.num_classes = config.num_classes
        self.normalize = InputNormalizer(config)
        self.backbone = build_backbone(in_channels=_NET_CHANNELS[config.input_kind], size=config.size)
        self.neck = build_neck(channels=self.backbone.out_channels, depth=spec.neck_depth)
        self.head = build_head(
            in_channels=self.neck.out_channels,
            num_classes=config.num_classes,
            reg_max=config.reg_max,
            box_width=spec.head_box_width,
            cls_width=spec.head_cls_width,
            input_hw=config.input_hw,
        )
        # Anchor points for the configured input size, precomputed so the exported graph holds them as a
        # constant instead of Range/Shape arithmetic; other sizes are computed on the fly.
        h, w = config.input_hw
        self._anchor_hws = [(h // s, w // s) for s in STRIDES]
        points, point_strides = make_anchor_points(self._anchor_hws, STRIDES)
        self.register_buffer("anchor_points", points, persistent=False)
        self.register_buffer("anchor_strides", point_strides, persistent=False)

    def forward(self, x: torch.Tensor) -> HeadMaps | tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected B×{self.config.in_channels}×H×W input, got {tuple(x.shape)}")
        if x.shape[2] % 32 or x.shape[3] % 32:
            raise ValueError(f"input H, W must be multiples of 32, got {tuple(x.shape[2:])}")
        maps = self.head(self.neck(self.backbone(self.normalize(x))))
        if self.training:
            return maps
        return self.decode(maps)

    def decode(self, maps: HeadMaps) -> tuple[torch.Tensor, torch.Tensor]:
        """HeadMaps → (boxes_xyxy B×A×4 input pixels, scores B×A×K sigmoid probabilities)."""
        hws = [(int(m.shape[2]), int(m.shape[3])) for m in maps.cls_logits]
        if hws == self._anchor_hws:
            points, point_strides = self.anchor_points, self.anchor_strides
        else:
            points, point_strides = make_anchor_points(hws, maps.strides, device=maps.cls_logits[0].device)
        distances = dfl_expectation(flatten_levels(maps.box_logits), self.reg_max) * point_strides
        boxes_xyxy = distances_to_xyxy(points, distances)
        scores = flatten_levels(maps.cls_logits).sigmoid()
        return boxes_xyxy, scores


def _load_backbone_weights(model: Detector, path: Path) -> None:
    """Load backbone weights from a bare backbone state_dict or a full `checkpoint_state` file."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        full = state["state_dict"]
        state = {k.removeprefix("backbone."): v for k, v in full.items() if k.startswith("backbone.")}
    model.backbone.load_state_dict(state, strict=True)


def build_detector(
    *,
    size: str,
    num_classes: int,
    in_channels: int,
    input_kind: InputKind,
    input_bits: int,
    input_hw: tuple[int, int],
    backbone_weights: Path | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    reg_max: int = 16,
) -> Detector:
    """Build a detector from scratch (or with a pretrained backbone from `backbone_weights`).

    size: "n", "s" or "m"; in_channels must match input_kind (rgb 3, grey 1, dual_energy 2);
    input_bits: 8 or 16 (full scale 255 or 65535); input_hw: (H, W), multiples of 32;
    mean/std: per network channel (default per input_kind, see module docstring).
    """
    config = DetectorConfig(
        size=size,
        num_classes=num_classes,
        in_channels=in_channels,
        input_kind=input_kind,
        input_bits=input_bits,
        input_hw=tuple(input_hw),  # type: ignore[arg-type]
        mean=tuple(mean) if mean is not None else _DEFAULT_MEAN[input_kind],
        std=tuple(std) if std is not None else _DEFAULT_STD[input_kind],
        reg_max=reg_max,
    )
    model = Detector(config)
    if backbone_weights is not None:
        _load_backbone_weights(model, Path(backbone_weights))
    return model


def checkpoint_state(model: Detector) -> dict[str, Any]:
    """{"model_args": config dict, "state_dict": weights}: enough to rebuild the model exactly."""
    return {"model_args": model.config.to_dict(), "state_dict": model.state_dict()}


def detector_from_checkpoint(state: dict[str, Any]) -> Detector:
    """Rebuild a detector from `checkpoint_state` output (extra top-level keys, e.g. the trainer's, are
    ignored). Weights are loaded strictly. The model is returned in eval mode."""
    config = DetectorConfig.from_dict(dict(state["model_args"]))
    model = Detector(config)
    model.load_state_dict(state["state_dict"], strict=True)
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_conv_macs(model: Detector, *, input_hw: tuple[int, int] | None = None) -> int:
    """Multiply-accumulates of all Conv2d layers for one image (batch 1) at `input_hw` (default config)."""
    h, w = input_hw or model.config.input_hw
    macs = 0

    def hook(module: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        nonlocal macs
        k = module.kernel_size[0] * module.kernel_size[1]
        macs += out.numel() * (module.in_channels // module.groups) * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, model.config.in_channels, h, w))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return macs
