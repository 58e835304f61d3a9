"""How much slower is work on memory that sat idle? A property of the machine, not of xscreen.

    python bench/idle_memory.py [--repeats 15]

On some virtual machines (this project's 2-core development VM among them) memory that a process has not
touched for a few tens of milliseconds is much slower to touch again. A lane service at part load sits
idle between scans, so every scan then pays for it in decoding, letterboxing and the model call; a
benchmark that calls the same function back to back never does. This prints, for pauses of 0 to 300 ms
between calls, the median time of three calls that the service makes for every scan or that are memory-bound:
- summing an 8 MB float64 array (numpy), once as numpy allocates it and once on an anonymous mapping
  aligned to 2 MB and advised for transparent huge pages (`MADV_HUGEPAGE`: 2 MB pages where the kernel's
  THP mode is `madvise` or `always`; the header says which it is), to tell how much of the effect is paid
  page by page;
- decoding a 768-px synthetic scan from PNG (`vision.decode`), the service's first step for each scan;
- recording a screened scan (`edge.store.Store.record_scan` on SQLite in a temporary folder, a new bag
  each call: one write transaction, committed to disk with synchronous=FULL), its last step.
On bare metal all stay flat; a figure that grows with the pause is this effect.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import mmap
import tempfile
import time
from pathlib import Path

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


def clear_scan_result() -> dict:
    """What the service stores for a 768 × 576 PNG scan without detections, built as the service builds it."""
    from datasets.synth.materials import CONTRABAND_CLASSES
    from edge.ingest import result_document
    from vision.decide import DecisionPolicy, decide
    from vision.postprocess import Detections

    policy = DecisionPolicy(class_names=CONTRABAND_CLASSES)
    none = Detections.empty()
    return result_document(
        none, decide(none, CONTRABAND_CLASSES, policy), class_names=CONTRABAND_CLASSES,
        thresholds=policy.threshold_array(),
        scan_info={"width": 768, "height": 576, "layout": "rgb", "bit_depth": 8, "format": "png"},
        timings={"decode_ms": 5.0, "queue_ms": 0.5, "inference_ms": 30.0},
        model={"name": "bench", "version": "1", "sha256": "0" * 64},
    )


def huge_page_array(nbytes: int) -> np.ndarray:
    """A float64 array of `nbytes` on an anonymous mapping advised for huge pages, aligned to 2 MB, filled
    (so its pages exist) with random values (the array holds the mapping: it lives as long as the array)."""
    align = 2 << 20
    buf = mmap.mmap(-1, nbytes + align, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_HUGEPAGE)
    whole = np.frombuffer(buf, dtype=np.uint8)
    start = -whole.ctypes.data % align
    array = whole[start:start + nbytes].view(np.float64)
    array[:] = np.random.default_rng(0).random(array.size)
    return array


def thp_mode() -> str:
    """The kernel's transparent-huge-page mode (the bracketed word), or "unknown"."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "unknown"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15, help="Calls per pause length.")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be positive")

    from datasets.synth.pipeline import SynthConfig, make_bag
    from edge.store import Store
    from vision.decode import decode, encode_png

    result = clear_scan_result()

    array = np.random.default_rng(0).random((1000, 1000))
    huge = huge_page_array(array.nbytes)
    png = encode_png(make_bag(SynthConfig(bags=1, seed=0, size_px=768), 0).image)
    with tempfile.TemporaryDirectory(prefix="xscreen-idle-") as work:
        store = Store(f"sqlite:///{Path(work) / 'bench.db'}", Path(work) / "data")
        store.migrate()
        bags = itertools.count()

        def record() -> None:
            n = next(bags)
            store.record_scan(station="bench", lane="1", bag_id=f"bag-{n}", view="top",
                              image_sha256=hashlib.sha256(str(n).encode()).hexdigest(), media_type="image/png",
                              width=768, height=576, result=result, model_name="bench", model_version="1",
                              alarm=False, alarm_classes=[])

        print(f"transparent huge pages: {thp_mode()}")
        print(f"{'pause':>8}  {'sum 8 MB':>10}  {'same, 2 MB pages':>17}  {'decode PNG':>11}  {'record scan':>12}")
        for pause in PAUSES_S:
            s = median_ms(array.sum, pause_s=pause, repeats=args.repeats)
            h = median_ms(huge.sum, pause_s=pause, repeats=args.repeats)
            d = median_ms(lambda: decode(png), pause_s=pause, repeats=args.repeats)
            r = median_ms(record, pause_s=pause, repeats=args.repeats)
            print(f"{pause * 1e3:6.0f} ms  {s:8.2f} ms  {h:15.2f} ms  {d:8.2f} ms  {r:9.2f} ms", flush=True)
        store.close()


if __name__ == "__main__":
    main()
