"""Detector backbone: a compact CSP network (YOLOv8-style C2f blocks) built from Conv+BN+SiLU only.

Every op here (Conv, BatchNorm folded into Conv at export, SiLU, Split, Concat, MaxPool, Add) exports to
ONNX opset 17 as-is and quantises well; there is no attention, no deformable conv and no depthwise conv
(depthwise layers are memory-bound on a 2-core CPU and gain little wall time per FLOP saved there).

Tensor layout is NCHW float throughout. The backbone returns three feature maps at strides 8, 16, 32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SizeSpec:
    """Channel widths and block depths of one model size.

    widths: channels after the stride-2, 4, 8, 16, 32 stages (the last three feed the neck).
    depths: bottleneck blocks in the C2f of the stride-4, 8, 16, 32 stages.
    neck_depth: bottleneck blocks in each C2f of the neck.
    head_box_width / head_cls_width: channels of the two 3×3 convs in each head branch.
    """

    widths: tuple[int, int, int, int, int]
    depths: tuple[int, int, int, int]
    neck_depth: int
    head_box_width: int
    head_cls_width: int


# Sizes were tuned by measurement (torch and ONNX Runtime, 2 CPU threads, 512×512): "s" is close to
# YOLOv8n's layout and sits in the lane-box budget; "n" trades ~half its FLOPs for speed; "m" is for
# servers/GPUs. GFLOPs and timings are in training/model.py's module docstring.
SIZES: dict[str, SizeSpec] = {
    "n": SizeSpec(widths=(16, 32, 48, 96, 192), depths=(1, 1, 1, 1), neck_depth=1, head_box_width=48, head_cls_width=48),
    "s": SizeSpec(widths=(16, 32, 64, 128, 256), depths=(1, 2, 2, 1), neck_depth=1, head_box_width=64, head_cls_width=64),
    "m": SizeSpec(
        widths=(32, 64, 128, 256, 384), depths=(1, 2, 2, 1), neck_depth=1, head_box_width=64, head_cls_width=128
    ),
}


class ConvBNAct(nn.Module):
    """Conv2d (no bias) → BatchNorm → SiLU. 'same' padding for odd kernels, so stride s divides H, W by s."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, padding=k // 2, bias=False)
        # eps/momentum as in the YOLO family: momentum 0.03 keeps running stats stable with small batches.
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3×3 ConvBNAct with an optional residual (channels preserved)."""

    def __init__(self, c: int, *, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = ConvBNAct(c, c, 3)
        self.cv2 = ConvBNAct(c, c, 3)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.shortcut else y


class C2f(nn.Module):
    """CSP block with two branches: half the channels go through n bottlenecks, every intermediate is
    concatenated (rich gradient paths at low cost), then fused by a 1×1 conv. B×c_in×H×W → B×c_out×H×W."""

    def __init__(self, c_in: int, c_out: int, *, n: int, shortcut: bool) -> None:
        super().__init__()
        self.hidden = c_out // 2
        self.cv1 = ConvBNAct(c_in, 2 * self.hidden, 1)
        self.cv2 = ConvBNAct((2 + n) * self.hidden, c_out, 1)
        self.blocks = nn.ModuleList(Bottleneck(self.hidden, shortcut=shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = list(self.cv1(x).split((self.hidden, self.hidden), dim=1))
        for block in self.blocks:
            ys.append(block(ys[-1]))
        return self.cv2(torch.cat(ys, dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5×5 max-pools ≈ 5/9/13 receptive fields, concatenated.
    Widens the stride-32 receptive field for large objects (bags are mostly large items)."""

    def __init__(self, c_in: int, c_out: int, k: int = 5) -> None:
        super().__init__()
        hidden = c_in // 2
        self.cv1 = ConvBNAct(c_in, hidden, 1)
        self.cv2 = ConvBNAct(hidden * 4, c_out, 1)
        self.pool = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        p1 = self.pool(x)
        p2 = self.pool(p1)
        p3 = self.pool(p2)
        return self.cv2(torch.cat((x, p1, p2, p3), dim=1))


class Backbone(nn.Module):
    """B×in_channels×H×W (normalised float) → (C3: stride 8, C4: stride 16, C5: stride 32) feature maps
    with spec.widths[2], widths[3], widths[4] channels. H and W must be multiples of 32."""

    def __init__(self, *, in_channels: int, spec: SizeSpec) -> None:
        super().__init__()
        w, d = spec.widths, spec.depths
        self.stem = ConvBNAct(in_channels, w[0], 3, 2)  # stride 2
        self.stage2 = nn.Sequential(ConvBNAct(w[0], w[1], 3, 2), C2f(w[1], w[1], n=d[0], shortcut=True))
        self.stage3 = nn.Sequential(ConvBNAct(w[1], w[2], 3, 2), C2f(w[2], w[2], n=d[1], shortcut=True))
        self.stage4 = nn.Sequential(ConvBNAct(w[2], w[3], 3, 2), C2f(w[3], w[3], n=d[2], shortcut=True))
        self.stage5 = nn.Sequential(
            ConvBNAct(w[3], w[4], 3, 2), C2f(w[4], w[4], n=d[3], shortcut=True), SPPF(w[4], w[4])
        )
        self.out_channels = (w[2], w[3], w[4])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c3 = self.stage3(self.stage2(self.stem(x)))
        c4 = self.stage4(c3)
        c5 = self.stage5(c4)
        return c3, c4, c5


def build_backbone(*, in_channels: int, size: str) -> Backbone:
    """The backbone for model size "n", "s" or "m" taking `in_channels` (network-side) channels."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; expected one of {sorted(SIZES)}")
    return Backbone(in_channels=in_channels, spec=SIZES[size])
