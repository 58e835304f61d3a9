"""What shrinking a scan into the model's input costs, per scan: `vision.letterbox` against OpenCV's INTER_AREA.

    python bench/letterbox_cost.py [--input-px 512] [--runs 200] [--threads 1]

Scans of the sizes the public datasets ship (PIDray 640 × 480, the lane bench's 768 × 576, OPIXray 1224 × 918)
and a 2448 × 1836 one, 8-bit RGB, shrunk into --input-px: the CPU time of a `letterbox` call (the whole step:
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

from vision.letterbox import LetterboxSpec, letterbox

SIZES = [(480, 640), (576, 768), (918, 1224), (1836, 2448)]


def cpu_ms(call, runs: int) -> float:
    """Mean CPU time of `call()` in ms (all threads of the process), after one uncounted call."""
    call()
    start = time.process_time()
    for _ in range(runs):
        call()
    return (time.process_time() - start) / runs * 1e3


def scan_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A bag-like RGB image: smooth shading, sharp-edged objects and 1-px wires."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([200 - 60 * np.sin(xx / 91 + c) * np.cos(yy / 57 - c) for c in (0.0, 0.7, 1.4)], -1)
    for _ in range(40):
        x, y = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        cv2.rectangle(image, (x, y), (x + int(rng.integers(10, w // 4)), y + int(rng.integers(10, h // 4))),
                      tuple(float(v) for v in rng.uniform(20, 180, 3)), -1)
    for _ in range(30):
        cv2.line(image, tuple(int(v) for v in rng.integers(0, [w, h])), tuple(int(v) for v in rng.integers(0, [w, h])),
                 (10.0, 10.0, 40.0), 1)
    return image.clip(0, 255).astype(np.uint8)


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
        image = scan_like(h, w)
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
