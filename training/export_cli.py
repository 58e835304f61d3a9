"""`xscreen export`: a training checkpoint → a model package (training.export). Imports only typer and the
standard library at load time; torch loads when the command runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def export_command(
    ckpt: Annotated[Path, typer.Argument(help="Training checkpoint (best.ckpt / last.ckpt).", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model package to write (.onnx).")],
    int8: Annotated[bool, typer.Option("--int8", help="Static QDQ INT8 (uint8 activations, int8 per-channel weights).")] = False,
    calib: Annotated[
        Optional[Path],
        typer.Option("--calib", help="Folder of scans (or a dataset) to calibrate INT8 on, with synthetic bags.", file_okay=False, exists=True),
    ] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 graph, float32 outputs (for GPU lanes).")] = False,
    name: Annotated[Optional[str], typer.Option("--name", help="Package name (default: the training run's).")] = None,
    version: Annotated[Optional[str], typer.Option("--version", help="Package version (default: e<epoch>+<config hash>).")] = None,
    report_json: Annotated[Optional[Path], typer.Option("--report", help="Write the gate figures and metadata as JSON.")] = None,
) -> None:
    """Export a checkpoint to ONNX with its package metadata, after the parity gate: PyTorch vs ONNX FP32 on
    fixed images and, with --int8, INT8 vs FP32 on a validation set. A package that fails is not written
    and the command exits with status 1."""
    if int8 and fp16:
        raise typer.BadParameter("choose one of --int8 and --fp16")
    if calib is not None and not int8:
        raise typer.BadParameter("--calib is for --int8")
    # Checked before the export (minutes with --int8), so a bad path costs nothing and destroys nothing.
    if ckpt.suffix.lower() == ".onnx":
        _fail(f"{ckpt} is a model package; export takes a training checkpoint (.ckpt: RUN/best.ckpt, "
              "or the one `xscreen calibrate --out` wrote)")
    if out.exists() and ckpt.resolve() == out.resolve():
        _fail(f"--out {out} is the checkpoint being exported; writing the package there would destroy it: "
              "give --out a .onnx path")
    for flag, path in (("--out", out), ("--report", report_json)):
        if path is not None and path.is_dir():
            _fail(f"{flag} {path} is a folder; give a file path")
    from training.export import CheckpointError, ExportGateError, export_package
    from training.quantize import Fp16UnavailableError, QuantizationError

    try:
        report = export_package(ckpt, out, int8=int8, calib_dir=calib, fp16=fp16, name=name, version=version)
    except ExportGateError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    except (CheckpointError, Fp16UnavailableError, QuantizationError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(report.summary())
    if report_json is not None:
        doc = {
            "out": str(report.out),
            "size_bytes": report.size_bytes,
            "seconds": report.seconds,
            "package": json.loads(report.package.model_dump_json()),
            "checks": [
                {"name": c.name, "passed": c.passed, "figures": c.figures, "failures": list(c.failures), "notes": list(c.notes)}
                for c in report.checks
            ],
            "excluded_nodes": list(report.excluded_nodes),
        }
        try:
            report_json.parent.mkdir(parents=True, exist_ok=True)
            report_json.write_text(json.dumps(doc, indent=2) + "\n")
        except OSError as exc:
            _fail(f"the package {report.out} was written, but not the report {report_json} ({exc})")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
