"""Training step speed of the detector on this machine: float32 against mixed precision, NCHW against
channels-last (the layout `training.engine` trains in).

    python bench/train_speed.py [--size s] [--input 256] [--batch 8] [--steps 12] [--threads 2]

One step is what `training.engine.train_one_epoch` does per batch without the data loader: its
`forward_loss` (autocast for the mixed-precision rows, the loss in float32), backward, AdamW. Random uint8
images with two boxes each; the first 3 steps are warm-up. Prints ms per step (median) and images/s.
On a CPU without native bfloat16 (AVX512-BF16 or AMX) `training.engine.amp_dtype` trains in float32, and
the bfloat16 rows here show what emulation would cost.
"""

from __future__ import annotations

import argparse
import time

import torch

from training.engine import amp_dtype, forward_loss
from training.loss import build_loss
from training.model import build_detector


def step_time(*, size: str, hw: int, batch: int, steps: int, amp: torch.dtype | None, channels_last: bool) -> float:
    """Median seconds per training step (after 3 warm-up steps)."""
    torch.manual_seed(0)
    model = build_detector(size=size, num_classes=7, in_channels=3, input_kind="rgb", input_bits=8, input_hw=(hw, hw))
    model.train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    loss_fn = build_loss(num_classes=7, reg_max=model.reg_max)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randint(0, 256, (batch, 3, hw, hw), dtype=torch.uint8).contiguous(memory_format=fmt)
    boxes = [torch.tensor([[0.1, 0.15, 0.45, 0.6], [0.4, 0.4, 0.8, 0.7]]) * hw for _ in range(batch)]
    ids = [torch.tensor([1, 3]) for _ in range(batch)]
    times = []
    for _ in range(steps + 3):
        t0 = time.perf_counter()
        out = forward_loss(model, loss_fn, images, boxes, ids, amp=amp)
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    times = sorted(times[3:])
    return times[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="s", choices=["n", "s", "m"])
    ap.add_argument("--input", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    native = amp_dtype(True, torch.device("cpu"))
    print(f"{args.size} model, {args.input} px, batch {args.batch}, {args.threads} threads; "
          f"this CPU trains with optim.amp in {str(native or 'float32').removeprefix('torch.')}")
    for amp in (None, torch.bfloat16):
        for channels_last in (False, True):
            s = step_time(size=args.size, hw=args.input, batch=args.batch, steps=args.steps, amp=amp,
                          channels_last=channels_last)
            name = "bfloat16 autocast" if amp is not None else "float32"
            layout = "channels-last" if channels_last else "NCHW"
            print(f"  {name:<18} {layout:<14} {s * 1000:6.0f} ms/step  {args.batch / s:5.1f} images/s", flush=True)


if __name__ == "__main__":
    main()
