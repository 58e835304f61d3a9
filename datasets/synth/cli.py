"""`xscreen synth` and `xscreen tip`. Heavy imports happen inside the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def synth_command(
    out: Path = typer.Option(..., "--out", help="Folder to write the set into."),
    bags: int = typer.Option(100, "--bags", min=0, help="Number of bags."),
    seed: int = typer.Option(0, "--seed", help="Set seed: the same seed gives byte-identical output."),
    palette: str = typer.Option("sixray", "--palette", help="sixray, pidray, grey, or mixed (sixray/pidray per bag)."),
    size: int = typer.Option(768, "--size", min=64, help="Long side of each scan in pixels (height is 3/4 of it)."),
    classes: Optional[list[str]] = typer.Option(None, "--classes", help="Contraband classes (repeat or comma-separate); default all seven."),
    clean_fraction: float = typer.Option(0.3, "--clean-fraction", min=0.0, max=1.0, help="Share of bags without contraband."),
    min_contrast: float = typer.Option(0.0, "--min-contrast", min=0.0, help="Take contraband fainter than this (contrast to its clutter) out of the bags: for training sets, never test sets."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes to use."),
) -> None:
    """Make synthetic dual-energy bags: false-colour PNG, raw 16-bit low/high, masks, metadata, COCO and YOLO."""
    from datasets.synth.pipeline import SynthConfig, parse_classes, synthesise_set

    try:
        config = SynthConfig(bags=bags, seed=seed, palette=palette, size_px=size, classes=parse_classes(classes), clean_fraction=clean_fraction,
                             min_contrast=min_contrast)  # type: ignore[arg-type]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    coco = synthesise_set(config, out, workers=workers)
    typer.echo(f"wrote {bags} bags to {out} (COCO: {coco})")


def tip_command(
    scans: Path = typer.Option(..., "--scans", exists=True, help="Folder of scans (an annotated dataset or plain images)."),
    out: Path = typer.Option(..., "--out", help="Folder to write the projected set into."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed: the same seed gives the same projections."),
    classes: Optional[list[str]] = typer.Option(None, "--classes", help="Contraband classes to project; default all seven."),
    per_scan: int = typer.Option(1, "--per-scan", min=0, help="Items projected into each scan."),
    palette: str = typer.Option("auto", "--palette", help="Palette of the scans: auto, sixray or pidray."),
) -> None:
    """Threat Image Projection: project contraband into every scan of a folder; writes COCO with the original
    boxes kept and the new ones added."""
    from datasets.synth.pipeline import parse_classes
    from datasets.synth.tip_set import tip_folder

    chosen = parse_classes(classes)
    from datasets.synth.materials import CONTRABAND_CLASSES

    unknown = [c for c in chosen if c not in CONTRABAND_CLASSES]
    if unknown:
        raise typer.BadParameter(f"unknown contraband classes {unknown}; known: {list(CONTRABAND_CLASSES)}")
    if palette not in ("auto", "sixray", "pidray"):
        raise typer.BadParameter(f"palette must be auto, sixray or pidray, got {palette!r}")
    summary = tip_folder(scans, out, seed=seed, classes=chosen, per_scan=per_scan, palette=palette)
    typer.echo(f"projected {summary.projected} items into {summary.scans} scans; COCO: {summary.annotations}")
    for line in summary.skipped:
        typer.echo(f"skipped: {line}", err=True)


def register(app: typer.Typer) -> None:
    app.command("synth")(synth_command)
    app.command("tip")(tip_command)
