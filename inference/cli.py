"""`xscreen predict` and `xscreen bench`: the lane's engine over files. Imports only typer and the standard
library at load time (onnxruntime and numpy are imported inside the commands)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from vision.files import write_text_atomic


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _check_out_file(flag: str, path: Optional[Path]) -> None:
    """Refuse an output file path that cannot be written, before the work that would fill it."""
    if path is not None and path.is_dir():
        raise _fail(f"cannot write {flag} {path}: it is a folder; give a file path")


def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders (their images, not recursive).")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model package (.onnx) made by `xscreen export`.")],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the records here (default: stdout).")] = None,
    overlays: Annotated[Optional[Path], typer.Option("--overlays", help="Folder for PNG overlays of the alarm detections.")] = None,
    overlay_all: Annotated[bool, typer.Option("--overlay-all", help="Draw every detection, not only those at alarm level.")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="ONNX Runtime intra-op threads (default: the cores this process may run on).")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Scans per ONNX Runtime call.")] = 8,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar (stderr).")] = True,
) -> None:
    """Detect contraband in scans: one JSON record per scan (image, alarm, detections with class, score and
    box_xyxy in the scan's pixels). A dual-energy model takes <stem>_low/<stem>_high pairs as one scan."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from inference.engine import Engine
    from inference.predict import check_overlays_dir, collect_inputs, predict_inputs
    from vision.package import PackageError

    _check_out_file("--json", json_out)
    try:
        engine = Engine(model, threads=threads, max_batch=batch)
    except (PackageError, OSError) as exc:
        raise _fail(str(exc)) from None
    inputs = collect_inputs(images, dual_energy=engine.spec.input_kind == "dual_energy")
    if not inputs:
        raise _fail("no images found in the given paths")
    if overlays is not None:
        try:
            check_overlays_dir(overlays, inputs)
        except ValueError as exc:
            raise _fail(str(exc)) from None
        try:
            overlays.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _fail(f"cannot make the overlays folder {overlays} ({exc})") from None
    console = Console(stderr=True)
    columns = (TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("predict", total=len(inputs))
        records = predict_inputs(engine, inputs, overlays_dir=overlays, overlay_all=overlay_all,
                                 on_progress=lambda n: bar.advance(task, n))
    text = json.dumps(records, indent=2)
    if json_out is None:
        sys.stdout.write(text + "\n")
    else:
        try:
            write_text_atomic(json_out, text + "\n")
        except OSError as exc:
            raise _fail(f"cannot write the records to {json_out} ({exc})") from None
    errors = [r for r in records if "error" in r]
    alarms = sum(bool(r["alarm"]) for r in records)
    console.print(f"{len(records)} scans, {alarms} alarms, {len(errors)} errors ({engine.package.name} {engine.package.version}, "
                  f"{engine.package.precision}, {', '.join(engine.providers)})")
    for r in errors[:10]:
        console.print(f"  {r['image']}: {r['error']}")
    if errors:
        raise typer.Exit(1)


def bench(
    model: Annotated[Path, typer.Argument(help="Model package (.onnx).")],
    batches: Annotated[str, typer.Option("--batch", help="Comma-separated batch sizes.")] = "1,4,8",
    threads: Annotated[int, typer.Option("--threads", min=1)] = 2,
    runs: Annotated[int, typer.Option("--runs", min=3)] = 30,
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder of scans to time on (default: random input).")] = None,
    profile: Annotated[bool, typer.Option("--profile", help="Also print ONNX Runtime's top op types at batch 1.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json")] = None,
) -> None:
    """ONNX Runtime latency of a package on this machine: p50/p95 ms per image at each batch size."""
    import numpy as np

    from inference.bench import bench_package, format_table, nms_cost, profile_package
    from inference.engine import Engine
    from inference.predict import collect_inputs, load_scan
    from vision.decode import DecodeError
    from vision.package import PackageError
    from vision.preprocess import IncompatibleScanError, prepare

    try:
        sizes = [int(b) for b in batches.split(",") if b.strip()]
    except ValueError as exc:
        raise _fail(f"--batch must be comma-separated integers ({exc})") from None
    if not sizes or min(sizes) < 1:
        raise _fail(f"--batch must list batch sizes of at least 1, got {batches!r}")
    _check_out_file("--json", json_out)
    try:
        engine = Engine(model, threads=threads)
    except (PackageError, OSError) as exc:
        raise _fail(str(exc)) from None
    spec = engine.spec
    if images is not None:
        prepared = []
        for scan in collect_inputs([images], dual_energy=spec.input_kind == "dual_energy"):
            if len(prepared) == max(sizes):
                break
            if scan.problem:
                typer.echo(f"skipped {scan.name}: {scan.problem}", err=True)
                continue
            try:
                prepared.append(prepare(load_scan(scan), spec)[0])
            except (OSError, DecodeError, IncompatibleScanError) as exc:
                typer.echo(f"skipped {scan.name}: {exc}", err=True)
        if not prepared:
            raise _fail(f"no scans this model can take in {images}")
        inputs = np.stack(prepared)
    else:
        high = 2**spec.input_bits - 1
        inputs = np.random.default_rng(0).integers(0, high, (max(sizes), spec.channels, spec.height, spec.width)).astype(engine.input_dtype)
    rows = bench_package(model, inputs, batches=sizes, threads=threads, runs=runs)
    typer.echo(format_table(rows))
    anchors = sum((spec.height // s) * (spec.width // s) for s in (8, 16, 32))
    nms = nms_cost(anchors=anchors, classes=len(engine.class_names), params=engine.package.postprocess)
    typer.echo("post-processing (numpy, per image): " + ", ".join(
        f"{r['candidates']} {r['layout']} candidates {r['ms_per_image']:.2f} ms" for r in nms))
    report: dict = {"model": str(model), "threads": threads, "latency": [r.to_dict() for r in rows], "postprocess": nms}
    if profile:
        ops = profile_package(model, inputs[:1], threads=threads)
        typer.echo("top op types, batch 1: " + ", ".join(f"{o['op_type']} {o['ms_per_run']:.2f} ms ({100 * o['share']:.0f}%)" for o in ops))
        report["profile_batch1"] = ops
    if json_out is not None:
        try:
            write_text_atomic(json_out, json.dumps(report, indent=2) + "\n")
        except OSError as exc:
            raise _fail(f"cannot write the figures to {json_out} ({exc})") from None


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
    app.command("bench")(bench)
