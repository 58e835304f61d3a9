"""What rank 0 writes into the run folder: one metrics.jsonl line per epoch, TensorBoard scalars under
tb/, last.ckpt every epoch and best.ckpt whenever the validation mAP50 improves."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from training.checkpoint import save_checkpoint, strip_training_state
from training.metrics import EvaluationReport, pfa_key

#: metrics.jsonl keys also drawn in TensorBoard ("train_loss" → "train/loss").
_TB_KEYS = ("train_loss", "train_cls", "train_box", "train_dfl", "val_map50", "val_map50_95", "val_bag_auroc")


def metrics_line(
    *,
    epoch: int,
    step: int,
    lr: float,
    losses: dict[str, float],
    report: EvaluationReport,
    seconds: float,
    world_size: int,
    images_per_rank: list[int],
) -> dict[str, Any]:
    """One epoch's metrics.jsonl record. losses: mean train "loss", "cls", "box", "dfl" over all ranks;
    report: the validation evaluation (figures None where undefined); images_per_rank in rank order."""
    det, scr = report.detection, report.screening
    return {
        "epoch": epoch,
        "step": step,
        "lr": lr,
        **{f"train_{k}": losses[k] for k in ("loss", "cls", "box", "dfl")},
        "val_map50": det.map50,
        "val_map50_95": det.map50_95,
        "val_bag_auroc": None if scr is None else scr.auroc,
        "val_pd_at_pfa": {} if scr is None else {pfa_key(op.target_pfa): op.pd for op in scr.operating_points},
        "epoch_s": round(seconds, 3),
        "world_size": world_size,
        "images_per_rank": list(images_per_rank),
    }


class RunRecorder:
    """Rank 0's writer of the run folder `out`.

    metrics.jsonl lines of epochs ≥ start_epoch are dropped — when resuming, those logged by a run that died
    before saving its checkpoint; a run from epoch 0 into a used folder starts a new file — and TensorBoard
    purges events from start_step on, so every epoch and step appears once. best_map50: the best validation
    mAP50 so far (None: none yet).
    """

    def __init__(self, out: Path, *, start_epoch: int = 0, start_step: int = 0, best_map50: float | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.out / "metrics.jsonl"
        # Lines and events a new or resumed run would repeat go: all of them for a run from epoch 0.
        self._truncate_metrics(start_epoch)
        self.tb = SummaryWriter(log_dir=str(self.out / "tb"), purge_step=start_step)
        # A resumed run whose epochs so far had no mAP (validation without ground truth) ranks them as the
        # run that scored them did (-1): its next mAP-less epoch does not replace best.ckpt.
        self.best = float(best_map50) if best_map50 is not None else (-1.0 if start_epoch > 0 else -math.inf)

    def _truncate_metrics(self, start_epoch: int) -> None:
        if not self.metrics_path.is_file():
            return
        lines = [x for x in self.metrics_path.read_text().splitlines() if x.strip()]
        kept = [x for x in lines if json.loads(x).get("epoch", -1) < start_epoch]
        if len(kept) != len(lines):
            self.metrics_path.write_text("".join(x + "\n" for x in kept))

    def train_step(self, step: int, losses: dict[str, float], lr: float) -> None:
        for name, value in losses.items():
            self.tb.add_scalar(f"train_step/{name}", value, step)
        self.tb.add_scalar("train_step/lr", lr, step)

    def score(self, line: dict[str, Any]) -> tuple[bool, float | None]:
        """Rank this epoch: (improved, best mAP50 so far). A validation set without ground truth gives mAP
        None, ranked below any real score, so the first epoch still leaves a best.ckpt."""
        value = -1.0 if line["val_map50"] is None else float(line["val_map50"])
        improved = value > self.best
        self.best = max(self.best, value)
        return improved, (self.best if self.best >= 0 else None)

    def epoch(self, line: dict[str, Any], checkpoint: dict[str, Any], *, improved: bool) -> None:
        """Append `line` to metrics.jsonl, draw it in TensorBoard, save best.ckpt when `improved` (without
        the resume-only state), then last.ckpt."""
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        step = int(line["step"])
        for key in _TB_KEYS:
            if line.get(key) is not None:
                self.tb.add_scalar(key.replace("_", "/", 1), line[key], step)
        for key, pd in line["val_pd_at_pfa"].items():
            if pd is not None:
                self.tb.add_scalar(f"val/pd_at_pfa_{key}", pd, step)
        self.tb.flush()
        # best.ckpt first: last.ckpt records the best mAP50 so far, and a run killed between the two
        # writes must not resume believing a best.ckpt it never got (later epochs would not replace it).
        if improved:
            save_checkpoint(strip_training_state(checkpoint), self.out / "best.ckpt")
        save_checkpoint(checkpoint, self.out / "last.ckpt")

    def close(self) -> None:
        self.tb.close()
