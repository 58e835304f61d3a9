"""`xscreen data ...`: inspect and convert the public X-ray datasets.

Only typer and the standard library are imported here; the readers (numpy, Pillow, OpenCV) are imported
inside each command so that `xscreen --help` stays fast.

Exit codes: 0 done; 2 the input could not be read (malformed annotation, unknown layout, bad class map) or,
with --strict, had problems.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated

import typer

_FORMAT_HELP = (
    "Layout: auto, coco, voc, lines, yolo, gdxray, or a dataset name that also fixes its class list: "
    "sixray, opixray, hixray, eds, pidray, clcxray."
)
_TABLE_PROBLEMS = 40  # problems listed in the table; --json lists all


class ConvertTarget(enum.StrEnum):
    coco = "coco"
    yolo = "yolo"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


def _read(path: Path, format: str, image_root: Path | None = None):  # -> DatasetRead (lazy import)
    from datasets.readers import read_dataset
    from datasets.sample import AnnotationError, DatasetLayoutError

    try:
        return read_dataset(path, format, image_root=image_root)
    except (AnnotationError, DatasetLayoutError) as exc:
        raise _fail(str(exc)) from None


def inspect_command(
    path: Annotated[Path, typer.Argument(help="Dataset folder, or a COCO .json / line .txt file.")],
    format: Annotated[str, typer.Option("--format", "-f", help=_FORMAT_HELP)] = "auto",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON on stdout (and nothing else).")
    ] = False,
    sheet: Annotated[
        Path | None, typer.Option("--sheet", help="Contact-sheet PNG to write (default: ./inspect-sheet.png).")
    ] = None,
    no_sheet: Annotated[bool, typer.Option("--no-sheet", help="Write no contact sheet.")] = False,
    sheet_images: Annotated[int, typer.Option("--sheet-images", min=1, max=64, help="Images on the sheet.")] = 16,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 2 when any problem is found.")] = False,
) -> None:
    """Count images, boxes per class and image sizes; list problems; draw a contact sheet with the boxes."""
    from datasets.inspect import inspect_dataset, write_contact_sheet

    if not no_sheet and sheet is not None and sheet.is_dir():
        raise _fail(f"--sheet {sheet} is a folder; give the PNG file to write (or --no-sheet)")
    read = _read(path, format)
    report = inspect_dataset(read)
    sheet_problems = []
    sheet_path = None
    if not no_sheet:
        sheet_path, sheet_problems = write_contact_sheet(
            read.samples, sheet or Path.cwd() / "inspect-sheet.png", max_images=sheet_images
        )
    if sheet_problems:
        from dataclasses import replace

        report = replace(report, problems=report.problems + tuple(sheet_problems))
    if as_json:
        doc = report.to_dict() | {"sheet": str(sheet_path) if sheet_path else None}
        typer.echo(json.dumps(doc, indent=2))
    else:
        _print_report(report, sheet_path)
    if strict and report.problems:
        raise typer.Exit(code=2)


def _print_report(report, sheet_path: Path | None) -> None:  # report: InspectReport (lazy import)
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table(title=f"{report.path}", show_header=False)
    summary.add_row("format", f"{report.format} ({report.source})")
    summary.add_row("images", f"{report.images} ({report.images_with_boxes} with boxes)")
    summary.add_row("boxes", str(report.boxes))
    if report.width_range_px and report.height_range_px:
        (w0, w1), (h0, h1) = report.width_range_px, report.height_range_px
        summary.add_row("image size (px)", f"width {w0}–{w1}, height {h0}–{h1}")
    summary.add_row("problems", ", ".join(f"{k}: {n}" for k, n in report.problems_per_kind.items()) or "none")
    if sheet_path:
        summary.add_row("contact sheet", str(sheet_path))
    console.print(summary)

    per_class = Table(title="boxes per class")
    per_class.add_column("class")
    per_class.add_column("boxes", justify="right")
    for name, count in report.boxes_per_class.items():
        per_class.add_row(name, str(count))
    console.print(per_class)

    if report.problems:
        problems = Table(title=f"problems ({len(report.problems)})")
        problems.add_column("kind")
        problems.add_column("where", overflow="fold")
        problems.add_column("what", overflow="fold")
        for p in report.problems[:_TABLE_PROBLEMS]:
            problems.add_row(p.kind, p.where, p.message)
        if len(report.problems) > _TABLE_PROBLEMS:
            problems.add_row("…", f"{len(report.problems) - _TABLE_PROBLEMS} more (use --json for all)", "")
        console.print(problems)


def convert_command(
    path: Annotated[Path, typer.Argument(help="Dataset folder, or a COCO .json / line .txt file.")],
    to: Annotated[ConvertTarget, typer.Option("--to", help="Output layout.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="coco: the JSON file to write; yolo: the folder to write.")],
    format: Annotated[str, typer.Option("--format", "-f", help=_FORMAT_HELP)] = "auto",
    image_root: Annotated[
        Path | None,
        typer.Option(
            "--image-root", help="coco only: write file_name relative to this folder (default: absolute paths)."
        ),
    ] = None,
    classmap: Annotated[Path | None, typer.Option("--classmap", help="YAML class map applied before writing.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse to write when the reader found problems.")] = False,
) -> None:
    """Convert a dataset to COCO JSON or a YOLO folder. Images are referenced (absolute or --image-root
    relative paths in COCO, symbolic links in YOLO), never copied."""
    from datasets.classmap import ClassMap, ClassMapError
    from datasets.writers import write_coco, write_yolo

    # Checked before reading (large sets take a while), so a wrong --out costs nothing and leaves nothing.
    if to is ConvertTarget.coco and out.is_dir():
        raise _fail(f"--out {out} is a folder; --to coco writes one JSON file")
    if to is ConvertTarget.yolo and out.exists() and not out.is_dir():
        raise _fail(f"--out {out} is a file; --to yolo writes a folder")
    if classmap is not None and not classmap.is_file():
        raise _fail(f"--classmap {classmap}: no such file")
    read = _read(path, format)
    if read.problems:
        typer.echo(
            f"{len(read.problems)} problems found while reading (see `xscreen data inspect`); first: "
            f"{read.problems[0]}",
            err=True,
        )
        if strict:
            raise typer.Exit(code=2)
    if classmap is not None:
        try:
            read = ClassMap.from_yaml(classmap).apply_dataset(read)
        except ClassMapError as exc:
            raise _fail(str(exc)) from None
        except (OSError, ValueError) as exc:  # unreadable, or not text
            raise _fail(f"--classmap {classmap}: cannot read the class map ({exc})") from None
    try:
        if to is ConvertTarget.coco:
            summary = write_coco(read.samples, read.classes, out, image_root=image_root)
        else:
            summary = write_yolo(read.samples, read.classes, out)
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"wrote {summary.images} images, {summary.boxes} boxes ({read.source}, {len(read.classes)} classes) "
        f"as {to.value} to {summary.path}"
    )
    if summary.clipped_boxes or summary.dropped_boxes or summary.missing_images:
        typer.echo(
            f"note: {summary.clipped_boxes} boxes clipped to the image, {summary.dropped_boxes} dropped "
            f"(nothing left inside), {summary.missing_images} images missing (not linked)",
            err=True,
        )
    if summary.incomplete_images:
        typer.echo(
            f"note: {summary.incomplete_images} images left out: their image-level labels name a class no box "
            "marks (they would be clean bags holding it)",
            err=True,
        )


def register(app: typer.Typer) -> None:
    """Add the `data` command group to the root `xscreen` app."""
    data = typer.Typer(name="data", help="Read, check and convert the public X-ray datasets.", no_args_is_help=True)
    data.command("inspect")(inspect_command)
    data.command("convert")(convert_command)
    app.add_typer(data, name="data")
