"""Latency of one model as PyTorch eager, ONNX Runtime FP32 and ONNX Runtime INT8, on the lane's CPU budget.

    python bench/latency.py [--json OUT] [--size s] [--input 512] [--ckpt CKPT] [--threads 2] [--runs 30]

The model is a fresh random-init detector of --size at --input px (or --ckpt); it is exported through
training.export (so FP32 and INT8 are the packages a lane would get, parity gate included) and timed on
the same prepared synthetic bags at batch 1, 4 and 8: p50/p95 milliseconds per image (batch time / batch).

Each runtime is timed in its own process: PyTorch's OpenMP threads keep spinning after a call and slow
ONNX Runtime ~4× when both live in one process; and the parent imports neither. Also printed: ONNX
Runtime's own profile of FP32 at batch 1 (top op types by kernel time) and the cost per image of the numpy
post-processing (score floor, top-k, per-class NMS) at typical candidate counts.

Targets (DESIGN.md §5): s model at 512 px, 2 threads: FP32 p50 ≤ 25 ms at batch 1; INT8 ≥ 1.5× faster.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("drug_package", "cannabis", "cash_bundle", "tobacco", "medicine_pills", "ivory", "pangolin_scales")


def _stage_prepare(args: argparse.Namespace, work: Path) -> dict:
    """(torch) the checkpoint, its FP32 and INT8 packages, and the prepared input images."""
    import numpy as np
    import torch

    from training.export import export_package, load_export_checkpoint
    from training.export_data import parity_set
    from training.model import build_detector, checkpoint_state
    from vision.postprocess import PostprocessParams
    from vision.preprocess import PreprocessSpec

    torch.set_num_threads(args.threads)
    ckpt = Path(args.ckpt) if args.ckpt else work / "model.ckpt"
    if not args.ckpt:
        torch.manual_seed(0)
        model = build_detector(size=args.size, num_classes=len(CLASSES), in_channels=3, input_kind="rgb", input_bits=8,
                               input_hw=(args.input, args.input))
        spec = PreprocessSpec(height=args.input, width=args.input)
        state = checkpoint_state(model.eval())
        state.update(classes=list(CLASSES), preprocess=spec.model_dump(), postprocess=PostprocessParams().model_dump(),
                     datasets=[{"kind": "synth", "name": "xscreen-synth"}], config={"name": f"random-{args.size}"})
        torch.save(state, ckpt)
    spec = load_export_checkpoint(ckpt).preprocess
    reports = {}
    for precision in ("fp32", "int8"):
        report = export_package(ckpt, work / f"{precision}.onnx", int8=precision == "int8")
        reports[precision] = report.summary()
    np.save(work / "inputs.npy", parity_set(spec, count=8).inputs)
    return {"ckpt": str(ckpt), "export": reports, "input_hw": [spec.height, spec.width]}


def _stage_torch(args: argparse.Namespace, work: Path, ckpt: str) -> list[dict]:
    """(torch only) eager latency."""
    import numpy as np
    import torch

    from inference.bench import _batch_of, time_calls
    from training.export import load_export_checkpoint

    torch.set_num_threads(args.threads)
    model = load_export_checkpoint(Path(ckpt)).model.eval()
    inputs = np.load(work / "inputs.npy")

    def call(batch: np.ndarray) -> object:
        with torch.inference_mode():
            return model(torch.from_numpy(batch))

    return [time_calls("pytorch eager fp32", call, _batch_of(inputs, b), runs=args.runs).to_dict() for b in args.batches]


def _stage_ort(args: argparse.Namespace, work: Path) -> dict:
    """(onnxruntime only) FP32 and INT8 latency, the FP32 profile, the post-processing cost."""
    import numpy as np

    from inference.bench import bench_package, nms_cost, profile_package
    from inference.engine import Engine

    inputs = np.load(work / "inputs.npy")
    rows = []
    for precision in ("fp32", "int8"):
        rows += [r.to_dict() for r in bench_package(work / f"{precision}.onnx", inputs, batches=args.batches,
                                                     threads=args.threads, runs=args.runs, label=f"onnxruntime {precision}")]
    engine = Engine(work / "fp32.onnx", threads=args.threads)
    boxes, scores = engine.run(inputs[:1])
    candidates = int((scores >= engine.package.postprocess.score_floor).sum())
    return {
        "latency": rows,
        "profile_fp32_batch1": profile_package(work / "fp32.onnx", inputs[:1], threads=args.threads),
        "postprocess": nms_cost(anchors=int(boxes.shape[1]), classes=int(scores.shape[2]),
                                params=engine.package.postprocess),
        "model_candidates_above_floor_image0": candidates,
    }


def _run_stage(stage: str, args: argparse.Namespace, work: Path, extra: list[str] = ()) -> dict:
    cmd = [sys.executable, __file__, "--stage", stage, "--work", str(work), "--size", args.size, "--input", str(args.input),
           "--threads", str(args.threads), "--runs", str(args.runs), "--batches", ",".join(map(str, args.batches)), *extra]
    if args.ckpt:
        cmd += ["--ckpt", args.ckpt]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"stage {stage} failed:\n{proc.stderr[-3000:]}")
    return json.loads((work / f"{stage}.json").read_text())


def _report(prep: dict, torch_rows: list[dict], ort: dict, args: argparse.Namespace) -> dict:
    rows = torch_rows + ort["latency"]
    by = {(r["label"].split()[0] + " " + r["label"].split()[-1], r["batch"]): r for r in rows}
    print(f"\nmodel: {'random-init ' + args.size if not args.ckpt else args.ckpt}, input {prep['input_hw'][0]}×{prep['input_hw'][1]}, "
          f"{args.threads} threads, {args.runs} timed runs per cell")
    head = f"{'runtime':<22} {'batch':>5} {'p50 ms/img':>11} {'p95 ms/img':>11} {'img/s':>7}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['label']:<22} {r['batch']:>5} {r['p50_ms_per_image']:>11.1f} {r['p95_ms_per_image']:>11.1f} {r['images_per_s']:>7.1f}")
    ratios = {}
    for b in args.batches:
        pt, f32, i8 = by[("pytorch fp32", b)], by[("onnxruntime fp32", b)], by[("onnxruntime int8", b)]
        ratios[b] = {"ort_fp32_over_pytorch": f32["p50_ms_per_image"] / pt["p50_ms_per_image"],
                     "int8_speedup_over_fp32": f32["p50_ms_per_image"] / i8["p50_ms_per_image"]}
        print(f"batch {b}: ORT FP32 / PyTorch = {ratios[b]['ort_fp32_over_pytorch']:.2f}, "
              f"INT8 speed-up over ORT FP32 = {ratios[b]['int8_speedup_over_fp32']:.2f}×")
    b1 = by[("onnxruntime fp32", 1)]["p50_ms_per_image"]
    speedup = ratios[1]["int8_speedup_over_fp32"] if 1 in ratios else float("nan")
    print(f"targets: FP32 p50 batch 1 {b1:.1f} ms (≤ 25: {'met' if b1 <= 25 else 'NOT met'}); "
          f"INT8 {speedup:.2f}× (≥ 1.5: {'met' if speedup >= 1.5 else 'NOT met'})")
    print("ONNX Runtime FP32 profile, batch 1: " + ", ".join(
        f"{o['op_type']} {o['ms_per_run']:.2f} ms ({100 * o['share']:.0f}%)" for o in ort["profile_fp32_batch1"][:6]))
    print("post-processing (numpy) per image: " + ", ".join(
        f"{p['candidates']} {p['layout']} → {p['ms_per_image']:.2f} ms ({p['kept']} kept)" for p in ort["postprocess"]))
    return {"args": {k: v for k, v in vars(args).items() if k not in ("stage", "work", "json")}, "export": prep["export"],
            "latency": rows, "ratios": {str(k): v for k, v in ratios.items()}, **{k: v for k, v in ort.items() if k != "latency"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--size", default="s", choices=("n", "s", "m"))
    ap.add_argument("--input", type=int, default=512)
    ap.add_argument("--ckpt", default=None, help="a training checkpoint instead of a random-init model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4, 8])
    ap.add_argument("--stage", choices=("prepare", "torch", "ort"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--from-ckpt", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))

    if args.stage is not None:  # a child process: one runtime only
        if args.stage == "prepare":
            out = _stage_prepare(args, args.work)
        elif args.stage == "torch":
            out = _stage_torch(args, args.work, args.from_ckpt)
        else:
            out = _stage_ort(args, args.work)
        (args.work / f"{args.stage}.json").write_text(json.dumps(out))
        return

    with tempfile.TemporaryDirectory(prefix="xscreen-latency-") as tmp:
        work = Path(tmp)
        print("exporting FP32 and INT8 packages (parity gate included)…", flush=True)
        prep = _run_stage("prepare", args, work)
        print("timing ONNX Runtime…", flush=True)
        ort = _run_stage("ort", args, work)
        print("timing PyTorch eager…", flush=True)
        torch_rows = _run_stage("torch", args, work, ["--from-ckpt", prep["ckpt"]])
        report = _report(prep, torch_rows, ort, args)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
