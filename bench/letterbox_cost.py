"""What shrinking a scan into the model's input costs, per scan: `vision.letterbox` against OpenCV's INTER_AREA.

    python bench/letterbox_cost.py [--input-px 512] [--runs 200] [--threads 1]

Synthetic bags (`datasets.synth.pipeline.make_bag`, as the lane bench makes its scans) of the sizes the public
datasets ship (PIDray 640 × 480, the lane bench's 768 × 576, OPIXray 1224 × 918) and a 2448 × 1836 one, 8-bit
RGB, shrunk into --input-px: the CPU time of a `letterbox` call (the whole step:
resampling, padding) and of a bare `cv2.resize` with INTER_AREA (what `letterbox` used to resample with), and
the mean and largest difference between the two resampled images, in grey levels. OpenCV on --threads threads
(the lane service runs each scan's preprocessing in its model call's thread, so 1 is what a scan costs there;
0 keeps OpenCV's default).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from datasets.synth.pipeline import SynthConfig, make_bag
from vision.letterbox import LetterboxSpec, letterbox

SIZES = [(480, 640), (576, 768), (918, 1224), (1836, 2448)]


def cpu_ms(call, runs: int) -> float:
    """Mean CPU time of `call()` in ms (all threads of the process), after one uncounted call."""
    call()
    start = time.process_time()
    for _ in range(runs):
        call()
    return (time.process_time() - start) / runs * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input-px", type=int, default=512)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (0: OpenCV's default)")
    args = parser.parse_args()
    if args.threads:
        cv2.setNumThreads(args.threads)
    spec = LetterboxSpec(height=args.input_px, width=args.input_px)
    print(f"OpenCV {cv2.__version__}, {cv2.getNumThreads()} thread(s); into {args.input_px} px; CPU ms per scan")
    print(f"{'scan':>12} {'letterbox':>10} {'INTER_AREA':>11} {'mean |diff|':>12} {'max':>5}")
    for h, w in SIZES:
        image = make_bag(SynthConfig(size_px=w, seed=0, palette="sixray"), 0).image
        assert image.shape[:2] == (h, w), image.shape
        out, params = letterbox(image, spec)
        size = (params.dst_width, params.dst_height)
        area = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        content = out[params.pad_y : params.pad_y + params.dst_height, params.pad_x : params.pad_x + params.dst_width]
        diff = np.abs(content.astype(np.int16) - area.astype(np.int16))
        ours = cpu_ms(lambda: letterbox(image, spec), args.runs)
        theirs = cpu_ms(lambda: cv2.resize(image, size, interpolation=cv2.INTER_AREA), args.runs)
        print(f"{w:>5} × {h:<4} {ours:>10.2f} {theirs:>11.2f} {diff.mean():>12.2f} {int(diff.max()):>5}")


if __name__ == "__main__":
    main()
