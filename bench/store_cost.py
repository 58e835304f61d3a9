"""What the lane service's durable writes cost per scan, on this machine's disk (or --data-dir's).

    python bench/store_cost.py [--scans 400] [--kb 556] [--data-dir DIR] [--db URL] [--json OUT]

For every scan it screens, the service (edge/ingest.py) hashes the image (sha256), reads the bag's recorded
views (the re-send check), writes the image file (edge/images.py: a temporary file, fsync, rename, fsync of
the directory) and records the scan (one write transaction, committed to disk before the answer). This
times each step alone, --scans calls each, on scans of --kb random bytes (a new image each call), and prints
the CPU time of the calling thread (user and kernel: what the step costs the machine's cores) and the wall
time p50/p95 (for the writes mostly waiting for the disk: what the step adds to the station's answer):
- sha256 of a scan;
- the re-send check (`Store.bag_scans` of a new bag);
- the image write into an existing directory (a store after its first day), into a new one (most writes
  of a young store: the directory is made and its parent fsynced too), and of an image already stored;
- the record (`Store.record_scan_in_bag` of a new bag, what the service calls), a scan without detections.
Point --data-dir at a lane box's data disk to see its fsync cost, and --db at a PostgreSQL URL to time that
database instead of SQLite (in --data-dir by default).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from idle_memory import clear_scan_result


def timed(prepare: Callable[[int], object], call: Callable[[object], object], count: int, warmup: int = 3) -> dict:
    """CPU ms (this thread, mean) and wall ms (p50, p95) of `call(prepare(i))`, `count` calls after `warmup`
    uncounted ones (statement compilation, the first connection); `prepare` is not timed."""
    cpu, wall = [], []
    for i in range(warmup + count):
        arg = prepare(i)
        c0, w0 = time.thread_time(), time.perf_counter()
        call(arg)
        if i >= warmup:
            wall.append(time.perf_counter() - w0)
            cpu.append(time.thread_time() - c0)
    return {"cpu_ms_mean": 1e3 * float(np.mean(cpu)), "wall_ms_p50": 1e3 * float(np.median(wall)),
            "wall_ms_p95": 1e3 * float(np.percentile(wall, 95))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=400, help="Calls per step.")
    ap.add_argument("--kb", type=int, default=556, help="Scan size in kB (the service bench's PNG scans: 556).")
    ap.add_argument("--data-dir", type=Path, help="Where to write (default: a temporary folder, removed after).")
    ap.add_argument("--db", help="Database URL (default: SQLite in the data folder, as `xscreen serve` makes it).")
    ap.add_argument("--json", type=Path, help="Write the figures here as JSON.")
    args = ap.parse_args()
    if args.scans < 1 or args.kb < 1:
        ap.error("--scans and --kb must be positive")

    from edge.images import ImageFiles
    from edge.store import Store

    result = clear_scan_result()
    base = os.urandom(args.kb * 1000)
    count = args.scans

    # A new image each call: the same bytes but for a counter in the last 8 (each step its own range).
    def image(step: int, i: int) -> bytes:
        return base[:-8] + (step * 10**9 + i).to_bytes(8, "little")

    parent = args.data_dir or Path(tempfile.mkdtemp(prefix="xscreen-store-cost-"))
    work = Path(tempfile.mkdtemp(prefix="run-", dir=parent))
    store = Store(args.db or f"sqlite:///{work / 'xscreen.db'}", work / "data")
    store.migrate()
    try:
        figures: dict[str, dict] = {}
        figures["sha256"] = timed(lambda i: image(0, i), lambda data: hashlib.sha256(data).hexdigest(), count)
        figures["re-send check"] = timed(lambda i: f"{work.name}-check-{i}", lambda bag: store.bag_scans("bench", bag), count)
        # Existing directories: the whole tree made first, as bench/service_load.py does.
        store.images.make_tree()
        young = ImageFiles(work / "young")  # an empty store: most writes make their directory

        def hashed(step: int) -> Callable[[int], tuple[bytes, str]]:
            def make(i: int) -> tuple[bytes, str]:
                data = image(step, i)
                return data, hashlib.sha256(data).hexdigest()
            return make

        figures["image, existing directory"] = timed(
            hashed(1), lambda pair: store.put_image(pair[0], suffix="png", sha256=pair[1]), count)
        figures["image, new directory"] = timed(
            hashed(2), lambda pair: young.put(pair[0], suffix="png", sha256=pair[1]), count)
        # The images of the first step again (64 of them, cycled): found stored, nothing written.
        figures["image, already stored"] = timed(
            lambda i: hashed(1)(i % 64), lambda pair: store.put_image(pair[0], suffix="png", sha256=pair[1]), count)
        figures["record"] = timed(
            lambda i: i,
            lambda i: store.record_scan_in_bag(
                station="bench", lane="1", bag_id=f"{work.name}-bag-{i}", view="top",
                image_sha256=hashlib.sha256(f"{work.name}-{i}".encode()).hexdigest(), media_type="image/png", width=768,
                height=576, result=result, model_name="bench", model_version="1", alarm=False, alarm_classes=[]),
            count)
    finally:
        store.close()
        if args.data_dir is None:
            shutil.rmtree(parent, ignore_errors=True)
    steps = ("sha256", "re-send check", "image, existing directory", "record")
    total = {"cpu_ms_mean": sum(figures[k]["cpu_ms_mean"] for k in steps),
             "wall_ms_p50": sum(figures[k]["wall_ms_p50"] for k in steps)}
    where = work if args.data_dir else "a temporary folder"
    print(f"{count} calls a step, {args.kb}-kB scans, {store.engine.dialect.name}, images in {where}")
    print(f"{'step':<28} {'CPU ms':>8} {'wall p50':>9} {'wall p95':>9}")
    for name, f in figures.items():
        print(f"{name:<28} {f['cpu_ms_mean']:8.3f} {f['wall_ms_p50']:9.3f} {f['wall_ms_p95']:9.3f}")
    print(f"{'a new scan, all four':<28} {total['cpu_ms_mean']:8.3f} {total['wall_ms_p50']:9.3f}"
          "   (sha256, re-send check, image in an existing directory, record)")
    if args.json:
        args.json.write_text(json.dumps({"scans": count, "kb": args.kb, "dialect": store.engine.dialect.name,
                                         "steps": figures, "new_scan_total": total}, indent=2))


if __name__ == "__main__":
    main()
