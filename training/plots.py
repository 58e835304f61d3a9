"""PNG plots of an evaluation: per-class PR curves, the bag ROC, the confusion matrix.

matplotlib is imported inside the functions, and figures are drawn on an Agg canvas directly (no pyplot),
so importing this module costs nothing, no display is needed, and no global backend state is changed in
the caller's process.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from training.metrics import DetectionReport, EvaluationReport
    from training.screening import ScreeningReport

__all__ = ["plot_confusion_matrix", "plot_pr_curves", "plot_roc", "write_plots"]


def _figure(width_in: float, height_in: float) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _unit_axes(ax, title: str, xlabel: str, ylabel: str, *, legend_loc: str) -> None:
    """Title, labels, [0, 1] axes (a little headroom on y), grid and legend: the frame of PR and ROC plots."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend_loc, fontsize="small")


def plot_pr_curves(detection: DetectionReport, path: str | Path) -> Path:
    """Interpolated precision vs recall at IoU 0.5, one line per class with ground truth (AP50 in the
    legend); classes without ground truth are listed as such. Writes a PNG; returns its path."""
    fig, ax = _figure(7.0, 5.5)
    for k, name in enumerate(detection.class_names):
        ap = detection.ap50_per_class[name]
        if ap is None:
            ax.plot([], [], linestyle="none", label=f"{name}: no ground truth")
            continue
        ax.plot(detection.pr_recall, detection.pr_precision[k], linewidth=1.5, label=f"{name}: AP50 {ap:.3f}")
    m = detection.map50
    title = f"Precision–recall at IoU 0.5 (mAP50 {m:.3f})" if m is not None else "Precision–recall at IoU 0.5"
    _unit_axes(ax, title, "recall", "precision", legend_loc="lower left")
    return _save(fig, Path(path))


def plot_roc(screening: ScreeningReport, path: str | Path) -> Path:
    """Bag-level ROC (Pfa on x, Pd on y) with the chance line and the Pd-at-Pfa operating points marked.
    When one class of bag is missing the plot says so instead of drawing a curve. Writes a PNG."""
    fig, ax = _figure(6.0, 5.5)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    if screening.auroc is None:
        ax.text(0.5, 0.5, "ROC undefined:\n" + "\n".join(screening.notes), ha="center", va="center", wrap=True)
    else:
        ax.plot(screening.fpr, screening.tpr, linewidth=1.8, label=f"bags (AUROC {screening.auroc:.3f})")
        for op in screening.operating_points:
            label = f"Pd {op.pd:.3f} @ Pfa ≤ {op.target_pfa:g}"
            ax.plot([op.pfa], [op.pd], marker="o", linestyle="none", label=label)
    title = f"Bag ROC ({screening.n_threat} threat, {screening.n_clean} clean)"
    _unit_axes(ax, title, "Pfa (clean bags that alarm)", "Pd (threat bags that alarm)", legend_loc="lower right")
    return _save(fig, Path(path))


def plot_confusion_matrix(detection: DetectionReport, path: str | Path) -> Path:
    """The (K+1)×(K+1) confusion matrix (rows true, columns predicted, last = background), coloured by
    share of each true row so rare classes stay readable, annotated with raw counts. Writes a PNG."""
    cm = detection.confusion
    labels = [*detection.class_names, "background"]
    n = len(labels)
    row_sums = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, row_sums, out=np.zeros(cm.shape, dtype=np.float64), where=row_sums > 0)
    side = 2.0 + 0.6 * n
    fig, ax = _figure(side + 1.0, side)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of true row")
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize="small",
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    thr = np.unique(detection.confusion_score_thresholds)
    thr_text = f"{thr[0]:g}" if thr.size == 1 else "per class"
    ax.set_title(f"Confusion at IoU {detection.confusion_iou:g}, score ≥ {thr_text}")
    return _save(fig, Path(path))


def write_plots(report: EvaluationReport, out_dir: str | Path) -> list[Path]:
    """Write pr_curves.png, confusion_matrix.png and (with screening data) bag_roc.png into out_dir
    (created if needed). Returns the paths written."""
    out = Path(out_dir)
    paths = [
        plot_pr_curves(report.detection, out / "pr_curves.png"),
        plot_confusion_matrix(report.detection, out / "confusion_matrix.png"),
    ]
    if report.screening is not None:
        paths.append(plot_roc(report.screening, out / "bag_roc.png"))
    return paths
