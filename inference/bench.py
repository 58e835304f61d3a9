"""Lane-side benchmarks (torch-free): ONNX Runtime latency of a package, its op profile, and the cost of
the numpy post-processing (score floor, top-k, NMS) per image.

    results = bench_package(Path("model.onnx"), inputs, batches=(1, 4, 8), threads=2)
    top_ops = profile_package(Path("model.onnx"), inputs[:1], threads=2)

Latency per image at batch b is (time of one session call) / b: what each scan costs when the micro-batcher
fills batches of b. p50/p95 are over `runs` timed calls after `warmup` untimed ones.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from inference.engine import Engine
from vision.postprocess import PostprocessParams, postprocess


@dataclass(frozen=True)
class Latency:
    """Timing of one (runtime, batch size): milliseconds per image (p50, p95) and per call, images/s."""

    label: str
    batch: int
    runs: int
    p50_ms_per_image: float
    p95_ms_per_image: float
    p50_ms_per_batch: float
    images_per_s: float

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def time_calls(label: str, call: Callable[[np.ndarray], object], batch: np.ndarray, *, runs: int = 30, warmup: int = 5) -> Latency:
    """Time `call(batch)`; see module docstring for the figures."""
    for _ in range(warmup):
        call(batch)
    times = np.empty(runs)
    for r in range(runs):
        t0 = time.perf_counter()
        call(batch)
        times[r] = time.perf_counter() - t0
    b = int(batch.shape[0])
    per_image = times * 1e3 / b
    return Latency(
        label=label,
        batch=b,
        runs=runs,
        p50_ms_per_image=float(np.percentile(per_image, 50)),
        p95_ms_per_image=float(np.percentile(per_image, 95)),
        p50_ms_per_batch=float(np.percentile(times * 1e3, 50)),
        images_per_s=float(b / np.median(times)),
    )


def _batch_of(inputs: np.ndarray, b: int) -> np.ndarray:
    """b inputs, repeating the given ones when there are fewer."""
    idx = np.arange(b) % len(inputs)
    return np.ascontiguousarray(inputs[idx])


def bench_package(
    path: Path, inputs: np.ndarray, *, batches: Sequence[int] = (1, 4, 8), threads: int = 2, runs: int = 30,
    warmup: int = 5, label: str | None = None,
) -> list[Latency]:
    """ONNX Runtime latency of the package's graph (Engine.run: no pre/post-processing) per batch size."""
    engine = Engine(path, threads=threads, max_batch=max(batches))
    name = label or f"onnxruntime {engine.package.precision}"
    return [time_calls(name, engine.run, _batch_of(inputs, b), runs=runs, warmup=warmup) for b in batches]


def profile_package(path: Path, inputs: np.ndarray, *, threads: int = 2, runs: int = 20, top: int = 10) -> list[dict[str, float | str]]:
    """ONNX Runtime's own profile (SessionOptions.enable_profiling) of `runs` calls on `inputs`: the op
    types taking most kernel time, as {"op_type", "ms_per_run", "share"} (share of all kernel time)."""
    with tempfile.TemporaryDirectory(prefix="xscreen-profile-") as tmp:
        engine = Engine(path, threads=threads, profile_prefix=str(Path(tmp) / "ort"))
        for _ in range(3):  # warm-up runs are profiled too; they are dropped below by counting only the last `runs`
            engine.run(inputs)
        marks = []
        for _ in range(runs):
            marks.append(time.perf_counter())
            engine.run(inputs)
        events = json.loads(Path(engine.session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    model_runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first_timed = model_runs[-runs]["ts"] if len(model_runs) >= runs else 0
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e.get("ts", 0) >= first_timed:
            per_op[e.get("args", {}).get("op_name", "?")] += e.get("dur", 0) / 1e3
    total = sum(per_op.values()) or 1.0
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1])[:top]
    return [{"op_type": op, "ms_per_run": ms / runs, "share": ms / total} for op, ms in ranked]


def _candidate_outputs(
    rng: np.random.Generator, anchors: int, classes: int, n: int, per_object: int, floor: float
) -> tuple[np.ndarray, np.ndarray]:
    """Raw outputs with `n` class scores above `floor`, in groups of `per_object` anchors of one class
    whose boxes jitter around one object box (what a trained detector gives around each object); the rest
    of the anchors score below the floor. per_object=1: scattered candidates that suppress nothing."""
    scores = rng.uniform(0.0, floor * 0.9, (anchors, classes)).astype(np.float32)
    boxes = np.zeros((anchors, 4), np.float32)
    cells = rng.choice(anchors, size=min(n, anchors), replace=False)
    for start in range(0, cells.size, per_object):
        group = cells[start : start + per_object]
        centre, size = rng.uniform(40, 470, 2), rng.uniform(20, 120, 2)
        jitter = rng.normal(0, 0.04 * size.mean(), (group.size, 4))
        boxes[group] = np.concatenate([centre - size / 2, centre + size / 2]) + jitter
        scores[group, rng.integers(classes)] = rng.uniform(floor, 1.0, group.size)
    return boxes, scores


def nms_cost(
    *, anchors: int = 5376, classes: int = 7, candidates: Sequence[int] = (30, 100, 300, 1000), per_object: int = 20,
    repeats: int = 30, params: PostprocessParams = PostprocessParams(), seed: int = 0,
) -> list[dict[str, float | int | str]]:
    """Milliseconds per image of vision.postprocess (score floor, top-k, per-class NMS) on `anchors`
    anchors × `classes` classes (5376 anchors = a 512×512 input) with `candidates` scores above the floor:
    "clustered" (per_object anchors around each object, as a detector gives: the typical case) and
    "scattered" (nothing to suppress: the worst case, one greedy NMS step per kept box, up to top-k)."""
    rng = np.random.default_rng(seed)
    out: list[dict[str, float | int | str]] = []
    for layout, group in (("clustered", per_object), ("scattered", 1)):
        for n in candidates:
            boxes, scores = _candidate_outputs(rng, anchors, classes, n, group, params.score_floor)
            dets = postprocess(boxes, scores, params)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                postprocess(boxes, scores, params)
                times.append(time.perf_counter() - t0)
            out.append({"layout": layout, "candidates": n, "kept": len(dets), "ms_per_image": float(np.median(times) * 1e3)})
    return out


def format_table(rows: Sequence[Latency]) -> str:
    """A plain-text table of latencies."""
    head = f"{'runtime':<24} {'batch':>5} {'p50 ms/img':>11} {'p95 ms/img':>11} {'img/s':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.label:<24} {r.batch:>5} {r.p50_ms_per_image:>11.1f} {r.p95_ms_per_image:>11.1f} {r.images_per_s:>7.1f}")
    return "\n".join(lines)
