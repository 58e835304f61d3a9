"""Synthesiser throughput: bags per second at a given size, end to end (scene, render, false colour,
PNG encoding and writing of every file), with N worker processes.

    python bench/synth_speed.py [--bags 100] [--size 768] [--workers 2]

Also prints the time per stage for one process, to show where the time goes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bags", type=int, default=100)
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--palette", default="sixray")
    args = ap.parse_args()

    from datasets.synth.bags import generate_bag
    from datasets.synth.look import display, look_for, scan
    from datasets.synth.physics import build_scanner
    from datasets.synth.pipeline import SynthConfig, bag_rng, synthesise_set
    from vision.decode import encode_png

    config = SynthConfig(bags=args.bags, seed=123, size_px=args.size, palette=args.palette)
    scanner = build_scanner(kvp=config.kvp)
    stages: dict[str, list[float]] = {"scene": [], "scan": [], "display": [], "png_encode(3)": []}
    look = look_for(args.palette)
    for i in range(min(10, args.bags)):
        rng = bag_rng(999, i)
        t0 = time.perf_counter()
        scene = generate_bag(rng, config.bag_config())
        t1 = time.perf_counter()
        raw = scan(scene.basis_cm, look, rng, scanner)
        t2 = time.perf_counter()
        image = display(raw, args.palette, look, rng)
        t3 = time.perf_counter()
        encode_png(image)
        encode_png(np.ascontiguousarray(raw[:, :, 0]), compression=0)  # as write_bag stores raw counts
        encode_png(np.ascontiguousarray(raw[:, :, 1]), compression=0)
        t4 = time.perf_counter()
        for k, v in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stages[k].append(v * 1000)
    print(f"per-stage, one process, {args.size} px (median ms):")
    for k, v in stages.items():
        print(f"  {k:16s} {np.median(v):7.1f}")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        synthesise_set(config, Path(tmp), workers=args.workers, progress=False)
        dt = time.perf_counter() - t0
    print(f"end to end: {args.bags} bags at {args.size} px with {args.workers} workers in {dt:.1f} s = {args.bags / dt:.2f} bags/s")


if __name__ == "__main__":
    main()
