"""The GPU check's Python part (run by bench/gpu_check.sh, which prepares the environment).

Sections: environment; a short AMP training run on CUDA (timed: ms/step, images/s, peak memory) that
also gives the model something better than random-init outputs; export of FP32 and FP16 packages through
training.export (parity gate included, on the CPU); ONNX Runtime CUDA EP vs CPU EP on the same prepared
images (agreement with the gate's tolerances, ms/img); PyTorch eager on CUDA for reference. Writes every
figure to --json. `--allow-cpu` runs everything without a GPU (to test this script itself).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CLASSES = ("drug_package", "cannabis", "cash_bundle", "tobacco", "medicine_pills", "ivory", "pangolin_scales")


def section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 72 - len(title)), flush=True)


def environment(allow_cpu: bool) -> dict:
    import onnxruntime as ort
    import torch

    section("environment")
    if hasattr(ort, "preload_dlls"):
        try:  # CUDA/cuDNN from torch's or the nvidia-* wheels, so the CUDA EP finds them
            ort.preload_dlls()
        except Exception as exc:  # noqa: BLE001 — reported, the EP check below decides
            print(f"onnxruntime.preload_dlls failed: {exc}")
    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(),
        "cpu_count": os.cpu_count(),
    }
    for k, v in info.items():
        print(f"{k:>16}: {v}")
    if not allow_cpu:
        if not info["cuda_available"]:
            sys.exit("FAIL: torch sees no CUDA device")
        if "CUDAExecutionProvider" not in info["ort_providers"]:
            sys.exit("FAIL: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu, not onnxruntime)")
    return info


def make_batches(spec, n: int, seed: int):
    """n synthetic bags prepared for the model (inputs N×C×H×W) with letterboxed boxes and class ids."""
    import numpy as np

    from training.export_data import bag_pixels, synthetic_scans
    from vision.letterbox import letterbox_boxes
    from vision.preprocess import prepare

    inputs, boxes, labels = [], [], []
    for bag in synthetic_scans(spec, seed=seed, count=n):
        x, params = prepare(bag_pixels(bag, spec), spec)
        inputs.append(x)
        boxes.append(letterbox_boxes(bag.boxes_xyxy, params))
        labels.append(np.array([CLASSES.index(c) for c in bag.class_names], np.int64))
    return np.stack(inputs), boxes, labels


def train_amp(args, device: str, work: Path) -> tuple[dict, Path]:
    """A few AMP training steps (timed); the result is saved as a checkpoint for the export."""
    import numpy as np
    import torch

    from training.loss import build_loss
    from training.model import build_detector, checkpoint_state
    from vision.postprocess import PostprocessParams
    from vision.preprocess import PreprocessSpec

    section(f"AMP training steps ({device}, size {args.size}, {args.input} px, batch {args.batch})")
    spec = PreprocessSpec(height=args.input, width=args.input)
    t0 = time.perf_counter()
    inputs, boxes, labels = make_batches(spec, args.bags, seed=4242)
    print(f"made {len(inputs)} synthetic bags in {time.perf_counter() - t0:.1f} s")
    torch.manual_seed(0)
    model = build_detector(size=args.size, num_classes=len(CLASSES), in_channels=3, input_kind="rgb", input_bits=8,
                           input_hw=(args.input, args.input)).to(device).train()
    loss_fn = build_loss(num_classes=len(CLASSES)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    amp_dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    use_amp = device == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    rng = np.random.default_rng(0)
    x_all = torch.from_numpy(inputs).to(device)
    times = []
    for step in range(args.steps):
        idx = rng.choice(len(inputs), args.batch, replace=len(inputs) < args.batch)
        x = x_all[idx]
        gt_boxes = [torch.from_numpy(boxes[i]).to(device) for i in idx]
        gt_labels = [torch.from_numpy(labels[i]).to(device) for i in idx]
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device_type=device, dtype=amp_dtype, enabled=use_amp):
            out = loss_fn(model(x), gt_boxes, gt_labels)
        opt.zero_grad(set_to_none=True)
        scaler.scale(out.total).backward()
        scaler.step(opt)
        scaler.update()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        if step % 20 == 0 or step == args.steps - 1:
            print(f"step {step:4d} loss {float(out.total):.3f}", flush=True)
    timed = np.array(times[min(5, len(times) - 1):]) * 1e3  # the first steps include cuDNN autotuning
    result = {
        "amp_dtype": str(amp_dtype).replace("torch.", "") if use_amp else "fp32",
        "steps": args.steps,
        "batch": args.batch,
        "ms_per_step_p50": float(np.median(timed)),
        "images_per_s": float(args.batch / np.median(timed) * 1e3),
        "peak_memory_gb": float(torch.cuda.max_memory_allocated() / 1e9) if device == "cuda" else None,
        "final_loss": float(out.total),
    }
    print(f"{result['ms_per_step_p50']:.1f} ms/step p50 → {result['images_per_s']:.0f} images/s, "
          f"peak memory {result['peak_memory_gb']} GB, AMP {result['amp_dtype']}")
    state = checkpoint_state(model.eval().cpu())
    state.update(classes=list(CLASSES), preprocess=spec.model_dump(), postprocess=PostprocessParams().model_dump(),
                 datasets=[{"kind": "synth", "name": "xscreen-synth"}], config={"name": "gpu-check"}, epoch=0)
    ckpt = work / "gpu_check.ckpt"
    torch.save(state, ckpt)
    return result, ckpt


def export(ckpt: Path, work: Path) -> dict:
    from training.export import export_package

    section("export (FP32 and FP16 packages; parity gate on the CPU)")
    out = {}
    for precision in ("fp32", "fp16"):
        report = export_package(ckpt, work / f"{precision}.onnx", fp16=precision == "fp16")
        print(report.summary())
        out[precision] = {"path": str(report.out), "seconds": report.seconds,
                          "checks": {c.name: c.figures for c in report.checks}}
    return out


def ort_cuda_vs_cpu(work: Path, args, allow_cpu: bool) -> dict:
    from inference.bench import _batch_of, time_calls
    from inference.engine import Engine
    from training.parity import FP16_TOLERANCES, Tolerances, agreement_check

    section("ONNX Runtime: CUDA EP vs CPU EP on the same images")
    fp32 = work / "fp32.onnx"
    cpu = Engine(fp32, providers=["CPUExecutionProvider"])
    inputs, _, _ = make_batches(cpu.spec, 16, seed=777)
    ref = cpu.run(inputs)
    result: dict = {"cpu": [], "cuda": {}}
    for threads in sorted({2, os.cpu_count() or 2}):
        eng = Engine(fp32, threads=threads, providers=["CPUExecutionProvider"])
        for b in (1, 8):
            lat = time_calls(f"ort cpu fp32 {threads}t", eng.run, _batch_of(inputs, b), runs=args.runs, warmup=3)
            result["cpu"].append(lat.to_dict())
            print(f"CPU EP {threads:>2} threads, batch {b:>2}: {lat.p50_ms_per_image:7.2f} ms/img p50")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    for precision in ("fp32", "fp16"):
        if allow_cpu and "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
            providers = ["CPUExecutionProvider"]
        eng = Engine(work / f"{precision}.onnx", providers=providers, max_batch=32)
        active = eng.session.get_providers()
        if active[0] != "CUDAExecutionProvider" and not allow_cpu:
            sys.exit(f"FAIL: the session fell back to {active}: the CUDA EP could not load (CUDA/cuDNN libraries?)")
        tol = FP16_TOLERANCES if precision == "fp16" else Tolerances()
        check = agreement_check(f"onnx {precision} {active[0]} vs onnx fp32 CPU", ref, eng.run(inputs), cpu.package.postprocess, tol)
        print(check.summary())
        rows = []
        for b in (1, 8, 32):
            lat = time_calls(f"ort cuda {precision}", eng.run, _batch_of(inputs, b), runs=args.runs, warmup=5)
            rows.append(lat.to_dict())
            print(f"{active[0]} {precision}, batch {b:>2}: {lat.p50_ms_per_image:7.3f} ms/img p50 ({lat.images_per_s:.0f} img/s)")
        result["cuda"][precision] = {"providers": active, "agreement": check.figures, "passed": check.passed, "latency": rows}
    return result


def torch_cuda(ckpt: Path, args, device: str) -> list[dict]:
    import numpy as np
    import torch

    from inference.bench import _batch_of, time_calls
    from training.export import load_export_checkpoint

    section(f"PyTorch eager inference ({device})")
    ck = load_export_checkpoint(ckpt)
    model = ck.model.to(device).eval()
    inputs, _, _ = make_batches(ck.preprocess, 8, seed=778)
    rows = []
    for b in (1, 8, 32):
        x = torch.from_numpy(_batch_of(inputs, b)).to(device)

        def call(_batch: np.ndarray, x: torch.Tensor = x) -> object:
            with torch.inference_mode():
                out = model(x)
            if device == "cuda":
                torch.cuda.synchronize()
            return out

        lat = time_calls(f"torch {device}", call, inputs[:b], runs=args.runs, warmup=5)
        rows.append(lat.to_dict())
        print(f"torch eager {device}, batch {b:>2}: {lat.p50_ms_per_image:7.3f} ms/img p50")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", type=Path, default=REPO / "gpu_check.json")
    ap.add_argument("--size", default="s")
    ap.add_argument("--input", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--bags", type=int, default=64)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--allow-cpu", action="store_true", help="run without a GPU (tests this script)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    report["environment"] = environment(args.allow_cpu)
    device = "cuda" if report["environment"]["cuda_available"] else "cpu"
    with tempfile.TemporaryDirectory(prefix="xscreen-gpu-check-") as tmp:
        work = Path(tmp)
        report["training"], ckpt = train_amp(args, device, work)
        report["export"] = export(ckpt, work)
        report["onnxruntime"] = ort_cuda_vs_cpu(work, args, args.allow_cpu)
        report["torch_eager"] = torch_cuda(ckpt, args, device)
    report["seconds"] = time.perf_counter() - t0
    failed = [p for p, r in report["onnxruntime"]["cuda"].items() if not r["passed"]]
    section("summary")
    print(f"done in {report['seconds']:.0f} s; CUDA vs CPU agreement: {'FAILED for ' + ', '.join(failed) if failed else 'passed'}")
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {args.json}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
