"""PAN neck: top-down (FPN) then bottom-up path aggregation over the stride 8/16/32 backbone maps.

Upsampling is nearest ×2 (ONNX Resize, nearest, exports and quantises cleanly); downsampling is a stride-2
3×3 ConvBNAct. Output channels equal the backbone's (c3, c4, c5).
"""

from __future__ import annotations

import torch
from torch import nn

from training.backbone import C2f, ConvBNAct


class PAN(nn.Module):
    """(C3 B×c3×H/8×W/8, C4 B×c4×H/16×W/16, C5 B×c5×H/32×W/32) → (P3, P4, P5) with the same shapes."""

    def __init__(self, *, channels: tuple[int, int, int], depth: int) -> None:
        super().__init__()
        c3, c4, c5 = channels
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        # shortcut=False in the neck, as in YOLOv8: the fused maps mix two scales, an identity path would
        # favour one of them.
        self.top4 = C2f(c5 + c4, c4, n=depth, shortcut=False)
        self.top3 = C2f(c4 + c3, c3, n=depth, shortcut=False)
        self.down3 = ConvBNAct(c3, c3, 3, 2)
        self.bottom4 = C2f(c3 + c4, c4, n=depth, shortcut=False)
        self.down4 = ConvBNAct(c4, c4, 3, 2)
        self.bottom5 = C2f(c4 + c5, c5, n=depth, shortcut=False)
        self.out_channels = channels

    def forward(
        self, feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c3, c4, c5 = feats
        t4 = self.top4(torch.cat((self.up(c5), c4), dim=1))
        p3 = self.top3(torch.cat((self.up(t4), c3), dim=1))
        p4 = self.bottom4(torch.cat((self.down3(p3), t4), dim=1))
        p5 = self.bottom5(torch.cat((self.down4(p4), c5), dim=1))
        return p3, p4, p5


def build_neck(*, channels: tuple[int, int, int], depth: int) -> PAN:
    """The PAN neck for backbone output channels (c3, c4, c5)."""
    return PAN(channels=channels, depth=depth)
