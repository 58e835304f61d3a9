"""`xscreen train`, `xscreen eval` and `xscreen calibrate`.

Only typer, the standard library and vision.files are imported here; torch and the training code are imported inside
each command, so `xscreen --help` stays fast and works on a lane box without torch.

    xscreen train --config configs/tiny.yaml --out runs/tiny [--set optim.epochs=5 ...] [--resume runs/tiny/last.ckpt]
    torchrun --nproc_per_node=2 -m vision.cli train --config configs/s512.yaml --out runs/s512
    xscreen eval --model runs/tiny/best.ckpt --data synth-val/ --json eval.json --plots plots/
    xscreen calibrate --model runs/tiny/best.ckpt --data synth-val/ --target-pfa 0.05 [--out calibrated.ckpt]

Exit codes: 0 done; 2 bad input (config, checkpoint, dataset, or a model format this install cannot run).
"""

from __future__ import annotations

import json
import pickle
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from vision.files import write_text_atomic

_FORMAT_HELP = "Dataset layout for --data: auto, coco, voc, lines, yolo, gdxray, or a dataset name (pidray, …)."


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


def _resolve_config(config: Path | None, overrides: list[str], resume: Path | None) -> Any:
    """The run's TrainConfig: the file + overrides, or (resuming without --config) the checkpoint's own."""
    from training.config import ConfigError, load_config

    try:
        if config is not None:
            return load_config(config, overrides)
        if resume is None:
            raise _fail("--config is required (or --resume a checkpoint, whose config is then used)")
        import yaml

        saved = _read_checkpoint(resume)["config"]
        # Through a file, so the checkpoint's config is validated exactly as a config file is.
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(saved, sort_keys=False))
            return load_config(path, overrides)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    except (OSError, ValueError) as exc:  # an unreadable file, or a config that is not text
        raise _fail(f"{config if config is not None else resume}: {exc}") from None


#: What torch.load raises on a file that is no checkpoint (an ONNX package, a text file) or one cut short.
_UNREADABLE = (pickle.UnpicklingError, RuntimeError, EOFError)
_UNREADABLE_HINT = "not a training checkpoint, or a damaged one (cut short?); train writes RUN/last.ckpt and RUN/best.ckpt"


def _read_checkpoint(path: Path) -> dict[str, Any]:
    from training.checkpoint import load_checkpoint

    try:
        return load_checkpoint(path)
    except _UNREADABLE:
        raise _fail(f"{path}: {_UNREADABLE_HINT}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise _fail(f"{path}: cannot read the checkpoint: {exc}") from None


def _check_device(name: str, what: str = "--device") -> None:
    """Refuse a device torch does not know, or CUDA where there is none, before any work starts."""
    from training.distributed import DeviceError, resolve_device

    try:
        resolve_device(name)
    except DeviceError as exc:
        raise _fail(f"{what} {exc}") from None


def _check_out(flag: str, path: Path | None, *, folder: bool = False) -> None:
    """Refuse an output path of the wrong kind (a folder for a file, or the reverse) before the work."""
    if path is None or not path.exists():
        return
    if folder and not path.is_dir():
        raise _fail(f"{flag} {path} is a file, not a folder; give a folder path")
    if not folder and path.is_dir():
        raise _fail(f"{flag} {path} is a folder; give a file path")


def train_command(
    out: Annotated[Path, typer.Option("--out", help="Run folder: config.yaml, last.ckpt, best.ckpt, metrics.jsonl, tb/.")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", exists=True, dir_okay=False, help="Training config (YAML).")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config value: key.sub=value (repeatable).")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", exists=True, dir_okay=False, help="Continue from RUN/last.ckpt.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start a new run in a folder that holds one (its checkpoints are replaced).")
    ] = False,
) -> None:
    """Train the detector (also under `torchrun --nproc_per_node=N -m vision.cli train ...`)."""
    _check_out("--out", out, folder=True)
    if resume is None and not overwrite and any((out / name).is_file() for name in ("last.ckpt", "best.ckpt")):
        # A retyped command must not replace hours of training after its first epoch.
        raise _fail(f"--out {out} holds a run (its checkpoints): continue it with --resume {out / 'last.ckpt'}, "
                    "replace it with --overwrite, or give another --out")
    cfg = _resolve_config(config, list(overrides or []), resume)
    _check_device(cfg.device, "device")
    if resume is not None and config is not None:
        _read_checkpoint(resume)  # before the run folder is touched; the trainer reads it again
    from training.engine import ResumeError, train

    try:
        last = train(cfg, out, resume=resume)
    except ResumeError as exc:
        raise _fail(f"{resume}: {exc}") from None
    import os

    if os.environ.get("RANK", "0") == "0":
        typer.echo(f"last checkpoint: {last}")


def _load(model: Path, device: str) -> Any:
    from training.evaluate import OnnxEngineUnavailableError, load_model

    try:
        return load_model(model, device=device)
    except OnnxEngineUnavailableError as exc:
        raise _fail(str(exc)) from None
    except _UNREADABLE:
        raise _fail(f"{model}: cannot load the model: {_UNREADABLE_HINT}; a model package must end in .onnx") from None
    except (OSError, ValueError, KeyError) as exc:
        raise _fail(f"{model}: cannot load the model: {exc}") from None


def _about(path: Path, exc: Exception) -> str:
    """`path: message`, unless the message names the path already (the readers' errors do)."""
    message = str(exc)
    return message if message.startswith(str(path)) else f"{path}: {message}"


def _dataset(data: Path, format: str, loaded: Any) -> Any:
    from training.evaluate import build_eval_dataset

    try:
        return build_eval_dataset(data, format=format, classes=loaded.classes, spec=loaded.spec)
    except (OSError, ValueError) as exc:  # layout, annotation and class-map errors are ValueErrors
        raise _fail(_about(data, exc)) from None


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def eval_command(
    model: Annotated[Path, typer.Option("--model", exists=True, dir_okay=False, help="Checkpoint (.ckpt) or ONNX package (.onnx).")],
    data: Annotated[Path, typer.Option("--data", exists=True, help="Dataset folder or annotation file.")],
    format: Annotated[str, typer.Option("--format", "-f", help=_FORMAT_HELP)] = "auto",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the evaluation summary here (JSON).")] = None,
    plots: Annotated[Path | None, typer.Option("--plots", help="Folder for PR, ROC and confusion-matrix PNGs.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda (checkpoints only).")] = "auto",
    workers: Annotated[int, typer.Option("--workers", min=0, help="DataLoader worker processes.")] = 0,
) -> None:
    """Measure a model on a dataset: COCO mAP per class, bag ROC, Pd at Pfa 0.01 and 0.05 — through the
    lane's post-processing and decision code, at the model's own thresholds."""
    from training.breakdown import recall_by_group, synth_concealments
    from training.evaluate import predict_and_report
    from training.metrics import evaluation_json

    _check_out("--json", json_out)
    _check_out("--plots", plots, folder=True)
    _check_device(device)
    loaded = _load(model, device)
    dataset = _dataset(data, format, loaded)
    predictions, report = predict_and_report(
        loaded.predictor, dataset, classes=loaded.classes, postprocess=loaded.postprocess, policy=loaded.policy,
        batch_size=batch_size, workers=workers,
    )  # fmt: skip
    summary = evaluation_json(report)
    summary["model"] = str(model)
    summary["data"] = str(data)
    typer.echo(f"{summary['counts']['images']} images, {summary['counts']['boxes']} boxes")
    typer.echo(f"mAP50 {_fmt(summary['map50'])}  mAP50-95 {_fmt(summary['map50_95'])}  bag AUROC {_fmt(summary['bag_auroc'])}")
    for key, pd in summary["pd_at_pfa"].items():
        typer.echo(f"Pd at Pfa {key}: {_fmt(pd)}")
    for name, ap in summary["per_class"].items():
        typer.echo(f"  {name:<18} AP50 {_fmt(ap)}")
    # A set made by `xscreen synth` records how each object was hidden: recall per concealment, at the
    # model's alarm thresholds (only detections the lane reports).
    concealments = synth_concealments(predictions.truths, loaded.classes)
    if concealments is not None:
        summary["per_concealment"] = recall_by_group(predictions.truths, predictions.detections, concealments,
                                                     loaded.policy, score_floor=loaded.postprocess.score_floor)
        typer.echo("recall at the alarm thresholds, by concealment (found: own class; located: any class)")
        for name, row in summary["per_concealment"].items():
            typer.echo(f"  {name:<18} {row['objects']:>5} objects  found {row['found']:.2f}  located {row['located']:.2f}")
    if json_out is not None:
        try:
            write_text_atomic(json_out, json.dumps(summary, indent=2, allow_nan=False))
        except OSError as exc:
            raise _fail(f"cannot write the summary to {json_out} ({exc})") from None
        typer.echo(f"wrote {json_out}")
    if plots is not None:
        from training.plots import write_plots

        for path in write_plots(report, plots):
            typer.echo(f"wrote {path}")


def calibrate_command(
    model: Annotated[Path, typer.Option("--model", exists=True, dir_okay=False, help="Training checkpoint (.ckpt).")],
    data: Annotated[Path, typer.Option("--data", exists=True, help="Validation dataset (with clean bags).")],
    format: Annotated[str, typer.Option("--format", "-f", help=_FORMAT_HELP)] = "auto",
    target_pfa: Annotated[
        float, typer.Option("--target-pfa", min=0.0, max=0.999, help="Bag-level false-alarm rate to calibrate for.")
    ] = 0.05,
    out: Annotated[Path | None, typer.Option("--out", help="Checkpoint to write (default: update --model in place).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda.")] = "auto",
    workers: Annotated[int, typer.Option("--workers", min=0)] = 0,
) -> None:
    """Set per-class alarm thresholds so that at most --target-pfa of the clean bags alarm, save them in the
    checkpoint (the model package takes them from there), and print them with the Pd they reach."""
    from training.checkpoint import save_checkpoint, with_thresholds
    from training.evaluate import calibrate_from_predictions, calibrated_score_floor, map_postprocess, predict_dataset

    if model.suffix.lower() == ".onnx":
        raise _fail("calibrate works on a training checkpoint; export the calibrated checkpoint afterwards")
    _check_out("--out", out)
    _check_device(device)
    loaded = _load(model, device)
    dataset = _dataset(data, format, loaded)
    # Scores down to MAP_SCORE_FLOOR are looked at: an under-confident model's operating point may lie
    # below the package's floor, which is then lowered to the lowest threshold (calibrated_score_floor).
    low = map_postprocess(loaded.postprocess)
    predictions = predict_dataset(loaded.predictor, dataset, postprocess=low, batch_size=batch_size, workers=workers)
    try:
        cal = calibrate_from_predictions(
            predictions, classes=loaded.classes, target_pfa=target_pfa, score_floor=low.score_floor
        )
    except ValueError as exc:  # e.g. no clean bags
        raise _fail(_about(data, exc)) from None
    floor = calibrated_score_floor(cal.thresholds, loaded.postprocess.score_floor)
    operating_point = {
        "target_pfa": cal.target_pfa,
        "achieved_pfa": cal.achieved_pfa,
        "pd": cal.pd,
        "calibration_data": str(data),
        "score_floor": floor,
    }
    state = with_thresholds(loaded.checkpoint, cal.thresholds, operating_point, score_floor=floor)
    if floor < loaded.postprocess.score_floor:
        typer.echo(f"note: the post-processing floor is lowered from {loaded.postprocess.score_floor:g} to "
                   f"{floor:.4f}, the lowest threshold, so the lane reports every detection that may alarm")
    dest = save_checkpoint(state, out or model)
    typer.echo(f"calibrated on {cal.n_clean} clean and {cal.n_threat} threat bags for Pfa ≤ {cal.target_pfa:g}")
    for name, thr in cal.thresholds.items():
        typer.echo(f"  {name:<18} threshold {thr:.4f}")
    typer.echo(f"Pfa reached {cal.achieved_pfa:.4f}, Pd {_fmt(cal.pd)}")
    for note in cal.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"wrote {dest}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("eval")(eval_command)
    app.command("calibrate")(calibrate_command)
