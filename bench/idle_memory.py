"""How much slower is work on memory that sat idle? A property of the machine, not of xscreen.

    python bench/idle_memory.py [--repeats 15]

On some virtual machines (this project's 2-core development VM among them) memory that a process has not
touched for a few tens of milliseconds is much slower to touch again. A lane service at part load sits
idle between scans, so every scan then pays for it in decoding, letterboxing and the model call; a
benchmark that calls the same function back to back never does. This prints, for pauses of 0 to 300 ms
between calls, the median time of two memory-bound calls on the same data:
- summing an 8 MB float64 array (numpy);
- decoding a 768-px synthetic scan from PNG (`vision.decode`), the service's first step for each scan.
On bare metal both stay flat; a figure that grows with the pause is this effect.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

PAUSES_S = (0.0, 0.005, 0.02, 0.067, 0.3)


def median_ms(call, *, pause_s: float, repeats: int) -> float:
    """Median ms of `call` when each call follows a `pause_s` sleep (the first 3 calls are not counted)."""
    times = []
    for _ in range(repeats + 3):
        time.sleep(pause_s)
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times[3:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15, help="Calls per pause length.")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be positive")

    from datasets.synth.pipeline import SynthConfig, make_bag
    from vision.decode import decode, encode_png

    array = np.random.default_rng(0).random((1000, 1000))
    png = encode_png(make_bag(SynthConfig(bags=1, seed=0, size_px=768), 0).image)
    print(f"{'pause':>8}  {'sum 8 MB':>10}  {'decode PNG':>11}")
    for pause in PAUSES_S:
        s = median_ms(array.sum, pause_s=pause, repeats=args.repeats)
        d = median_ms(lambda: decode(png), pause_s=pause, repeats=args.repeats)
        print(f"{pause * 1e3:6.0f} ms  {s:8.2f} ms  {d:8.2f} ms", flush=True)


if __name__ == "__main__":
    main()
