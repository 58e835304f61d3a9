"""Train the contraband detector within a time budget on this machine, then measure it in screening terms.

    python bench/train_eval.py [--minutes 45] [--size s] [--input 416] [--out runs/bench] [--json OUT]
                               [--train-contraband 1,3] [--train-clean 0.3] [--train-min-contrast 0]
                               [--evaluate-only CKPT]

Prints:
- on a held-out synthetic test set (bag seeds never used in training, SIXray and PIDray palettes, all seven
  classes, 30 % clean bags): mAP@0.5 and bag-level Pd at Pfa 5 %, and the recall of contraband objects by
  how they were hidden and by how far they stand out of their clutter (quarters of `BagScene.contrast`);
- on real bags from ../shared/xray-real (weapons and tools, no contraband): the share that alarm at the
  calibrated thresholds;
- on the same real bags with contraband projected by TIP: bag-level Pd at those thresholds.

Training data: --train-bags synthetic bags (both palettes; --train-clean of them clean, the others with
--train-contraband objects; by default as the test set: 30 %, 1–3; --train-min-contrast takes objects
fainter than that out of the training bags, never out of the test set) made once (within the budget; a later
run with the same settings reuses them), plus contraband projected on the fly into the training half of the
real scans. The trainer gets what is left of --minutes as its wall-clock budget (`optim.minutes`): after
each epoch it plans how many more fit and fits its cosine schedule to end with them.

The real scans are split in two by a fixed rule on file names (crc32 of the file stem, even → training
half): training may use the first half (as TIP backgrounds and as bags without contraband, and for the
threshold calibration); every real-bag figure comes from the other half only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import zlib
from pathlib import Path

import numpy as np

REAL_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "xray-real"
DIAGNOSTIC_IOUS = (0.1, 0.3, 0.5)
#: Score from which a detection counts as boxing an object in the naming diagnostic (the mAP floor is lower).
NAMING_SCORE = 0.05
#: Training images per epoch (a validation pass follows each) and an upper bound on the epochs: the trainer
#: plans how many fit the time budget (`optim.minutes`) after each epoch.
EPOCH_IMAGES = 1000
MAX_EPOCHS = 200


def split_real(real: Path, out: Path) -> tuple[Path, Path, dict[str, int]]:
    """Symlink the real scans into out/real_train and out/real_eval by the crc32 rule; returns both folders."""
    from datasets.readers.images import IMAGE_SUFFIXES

    train_dir, eval_dir = out / "real_train", out / "real_eval"
    for d in (train_dir, eval_dir):
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():
            old.unlink()
    counts = {"train": 0, "eval": 0}
    for path in sorted(real.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        half = "train" if zlib.crc32(path.stem.encode()) % 2 == 0 else "eval"
        dest = (train_dir if half == "train" else eval_dir) / f"{path.parent.parent.name}_{path.name}"
        dest.symlink_to(path.resolve())
        counts[half] += 1
    return train_dir, eval_dir, counts


def make_train_set(args: argparse.Namespace) -> Path:
    """The synthetic training bags, made once with all cores (faster than making them on the fly: the
    training loop then only decodes PNGs). Bag seeds 0…; the test and calibration sets use other seeds."""
    from datasets.synth.pipeline import SynthConfig, synthesise_set

    lo, hi = args.train_contraband
    size = int(round(args.input * 1.25 / 32) * 32)
    config = SynthConfig(bags=args.train_bags, seed=0, palette="mixed", size_px=size, n_contraband=(lo, hi),
                         clean_fraction=args.train_clean, min_contrast=args.train_min_contrast)
    # Named by everything that shapes the bags, so a later run with other settings never reuses them.
    floor = f"_minc{args.train_min_contrast:g}" if args.train_min_contrast else ""
    out = Path(args.out) / f"train_synth_{args.train_bags}x{size}px_{lo}-{hi}_clean{args.train_clean:g}{floor}"
    if not (out / "annotations.json").exists():
        synthesise_set(config, out, workers=2)
    return out


def bench_config(args: argparse.Namespace, real_train: Path | None, train_set: Path, minutes: float):
    """The training config: at most MAX_EPOCHS epochs of EPOCH_IMAGES images, within `minutes` of wall clock
    (the trainer re-plans the epochs after each one so that its cosine ends when the budget does)."""
    from training.config import load_config

    train = [
        {"kind": "dataset", "path": str(train_set), "weight": 0.75},
    ]
    if real_train is not None:
        train.append({"kind": "tip", "path": str(real_train), "seed": 1, "length": 1000, "weight": 0.25, "clean_fraction": 0.3})
    else:
        train[0]["weight"] = 1.0
    overrides = {
        "name": "bench",
        "model": {"size": args.size, "input_kind": "rgb", "input_size": args.input},
        "data": {"train": train, "val": [{"kind": "synth", "palette": "mixed", "seed": 10_000, "length": 48}], "workers": 1,
                 "epoch_len": EPOCH_IMAGES},
        "optim": {"epochs": MAX_EPOCHS, "minutes": minutes, "batch_size": args.batch, "lr": args.lr,
                  "warmup_epochs": 1.0, "ema_decay": 0.999},
        "device": "cpu",
        "log_every": 20,
    }
    tmp = Path(args.out) / "bench_config.json"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(overrides))
    return load_config(tmp)


def calibration_source(args: argparse.Namespace):
    """The synthetic bags of the threshold calibration (and of the checkpoint selection): seeds of their own,
    half of them clean."""
    from training.config import SourceConfig

    return SourceConfig(kind="synth", palette="mixed", seed=20_000, length=args.cal_bags, clean_fraction=0.5)


def select_checkpoint(candidates: list[Path], args: argparse.Namespace) -> tuple[Path, dict[str, float]]:
    """The candidate with the higher mAP@0.5 on the synthetic calibration bags (seeds of their own, neither
    training nor test). best.ckpt is picked by the trainer on a 48-bag validation set, whose mAP swings by
    ±0.04 between epochs on a plateau; the EMA weights at the end of the cosine (last.ckpt) are often
    better, and the 200 calibration bags tell the two apart without looking at the test set."""
    from training.data import build_dataset
    from training.evaluate import evaluate_model, load_model

    scores: dict[str, float] = {}
    for path in candidates:
        loaded = load_model(path, device="cpu")
        ds = build_dataset((calibration_source(args),), classes=loaded.classes, spec=loaded.spec, train=False,
                           augment=False, seed=0)
        report = evaluate_model(loaded.predictor, ds, classes=loaded.classes, postprocess=loaded.postprocess,
                                policy=loaded.policy, batch_size=8)
        scores[path.name] = float(report.detection.map50 or 0.0)
    print("checkpoint selection on the calibration bags (mAP@0.5): "
          + ", ".join(f"{name} {v:.3f}" for name, v in scores.items()))
    best = max(candidates, key=lambda p: scores[p.name])
    return best, scores


def evaluate(ckpt: Path, real_train: Path | None, real_eval: Path | None, args: argparse.Namespace) -> dict:
    from datasets.synth.pipeline import make_bag
    from training.breakdown import match_groups, recall_by_group
    from training.checkpoint import load_checkpoint
    from training.config import SourceConfig
    from training.data import build_dataset
    from training.evaluate import (
        calibrate_from_predictions,
        calibrated_score_floor,
        map_postprocess,
        predict_dataset,
        report_from_predictions,
        torch_predictor,
    )
    from training.metrics import confusion_matrix, evaluation_json, map_at_ious
    from training.model import detector_from_checkpoint
    from vision.decide import DecisionPolicy, bag_score
    from vision.postprocess import PostprocessParams
    from vision.preprocess import PreprocessSpec

    state = load_checkpoint(ckpt)
    model = detector_from_checkpoint(state)
    classes = tuple(state["classes"])
    spec = PreprocessSpec(**state["preprocess"])
    post = PostprocessParams(**state.get("postprocess", {}))
    predictor = torch_predictor(model)

    # Every set is predicted down to MAP_SCORE_FLOOR (mAP needs the whole PR curve); alarms follow the
    # thresholds, and the lane's floor is the calibrated one (`xscreen calibrate` does the same).
    low = map_postprocess(post)

    def preds(*sources: SourceConfig):
        ds = build_dataset(sources, classes=classes, spec=spec, train=False, augment=False, seed=0)
        return predict_dataset(predictor, ds, postprocess=low, batch_size=8)

    def concat(a, b):
        return dataclasses.replace(a, truths=a.truths + b.truths, detections=a.detections + b.detections,
                                   has_threat=np.concatenate([a.has_threat, b.has_threat]))

    def n_scans(folder: Path) -> int:
        return sum(1 for _ in folder.iterdir())

    results: dict = {}
    # Calibration data: a synthetic validation set (its own seeds) plus the training half of the real bags.
    cal = preds(calibration_source(args))
    if real_train is not None:
        cal = concat(cal, preds(SourceConfig(kind="tip", path=str(real_train), seed=3, length=n_scans(real_train), clean_fraction=1.0)))
    calibration = calibrate_from_predictions(cal, classes=classes, target_pfa=0.05, score_floor=low.score_floor)
    policy = DecisionPolicy(class_names=classes, thresholds=calibration.thresholds)
    lane_floor = calibrated_score_floor(calibration.thresholds, post.score_floor)
    results["calibration"] = {"thresholds": calibration.thresholds, "achieved_pfa": calibration.achieved_pfa,
                              "n_clean": calibration.n_clean, "score_floor": lane_floor}

    test_source = SourceConfig(kind="synth", palette="mixed", seed=50_000, length=args.test_bags, clean_fraction=0.3)
    test = preds(test_source)
    report = evaluation_json(report_from_predictions(test, classes=classes, policy=policy, lane_score_floor=lane_floor))
    # How each test object was hidden, from the bag itself (made again: bags are deterministic).
    synth = build_dataset((test_source,), classes=classes, spec=spec, train=False, augment=False, seed=0).datasets[0]

    objects: dict[str, list[dict]] = {}

    def objects_of(image_id: str) -> list[dict]:
        if image_id not in objects:
            scene = make_bag(synth.config, int(image_id.rsplit(":", 1)[1])).scene
            objects[image_id] = [{"class": o.class_name, "box_xyxy": o.box_xyxy, "concealment": o.concealment,
                                  "contrast": scene.contrast(o)} for o in scene.contraband]
        return objects[image_id]

    concealments = match_groups(test.truths, classes, objects_of)
    by_concealment = recall_by_group(test.truths, test.detections, concealments, policy, score_floor=lane_floor)
    # The same recall by how far each object stands out of its clutter (BagScene.contrast), in quarters of
    # the test objects: does the detector miss what is hard to see, or everything alike?
    contrasts = match_groups(test.truths, classes, objects_of, key="contrast")
    values = np.array([float(c) for row in contrasts for c in row if c is not None] or [0.0])
    bounds = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0])  # the quarters' edges, lowest to highest
    labels = [f"q{i + 1} {bounds[i]:.1f}–{bounds[i + 1]:.1f}" for i in range(4)]
    quarters = [[None if c is None else labels[int(np.searchsorted(bounds[1:4], float(c), side="right"))]
                 for c in row] for row in contrasts]
    by_contrast = recall_by_group(test.truths, test.detections, quarters, policy, score_floor=lane_floor)
    alarms = np.array([bag_score(d, None, policy) >= 1.0 for d in test.detections])
    results["synthetic_test"] = {
        "bags": len(test.detections),
        "map50": report["map50"],
        "map50_95": report["map50_95"],
        "per_class": report["per_class"],
        "bag_auroc": report["bag_auroc"],
        "pd_at_pfa": report["pd_at_pfa"],
        "pd_at_calibrated": float(alarms[test.has_threat].mean()) if test.has_threat.any() else None,
        "pfa_at_calibrated": float(alarms[~test.has_threat].mean()) if (~test.has_threat).any() else None,
        "per_concealment": by_concealment,
        "per_contrast_quarter": by_contrast,
        # Finding vs boxing vs naming: mAP at looser IoU thresholds, per class and with classes merged.
        "map_by_iou": {"per_class": map_at_ious(test.truths, test.detections, classes, DIAGNOSTIC_IOUS),
                       "class_agnostic": map_at_ious(test.truths, test.detections, classes, DIAGNOSTIC_IOUS,
                                                     class_agnostic=True)},
        "naming": naming(confusion_matrix(test.truths, test.detections, len(classes), iou_threshold=0.5,
                                          score_threshold=NAMING_SCORE), classes),
    }
    if real_eval is not None:
        clean = preds(SourceConfig(kind="tip", path=str(real_eval), seed=5, length=n_scans(real_eval), clean_fraction=1.0))
        clean_alarm = np.array([bag_score(d, None, policy) >= 1.0 for d in clean.detections])
        tip = preds(SourceConfig(kind="tip", path=str(real_eval), seed=7, length=n_scans(real_eval), clean_fraction=0.0))
        tip_alarm = np.array([bag_score(d, None, policy) >= 1.0 for d in tip.detections])
        results["real_clean"] = {"bags": int(clean_alarm.size), "alarm_share": float(clean_alarm.mean())}
        results["real_tip"] = {"bags": int(tip_alarm[tip.has_threat].size), "pd": float(tip_alarm[tip.has_threat].mean())}
    return results


def naming(cm: np.ndarray, classes: tuple[str, ...]) -> dict[str, dict]:
    """Per class, from a confusion matrix (`training.metrics.confusion_matrix`, last row/column background):
    the share of its objects that some detection boxes at all (any class), the share of those with a box of
    their own class (the matrix matches same-class boxes first), and the class the others are most often
    taken for."""
    k = len(classes)
    out = {}
    for i, name in enumerate(classes):
        row = cm[i]
        located = int(row[:k].sum())
        wrong = row[:k].copy()
        wrong[i] = 0
        out[name] = {"objects": int(row.sum()), "located": located / max(int(row.sum()), 1),
                     "named_right": int(row[i]) / located if located else None,
                     "taken_for": classes[int(wrong.argmax())] if wrong.any() else None}
    return out


def _pair(text: str) -> tuple[int, int]:
    lo, hi = (int(v) for v in text.split(","))
    if not 0 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"need MIN,MAX with 0 ≤ MIN ≤ MAX, got {text!r}")
    return lo, hi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=45.0, help="time budget: making the training bags and training (the evaluation after it not included)")
    ap.add_argument("--size", default="s", choices=["n", "s", "m"])
    ap.add_argument("--input", type=int, default=416)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate (docs/detector_bench.md: 0.001 beat 0.004 side by side)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--real", type=Path, default=REAL_DEFAULT)
    ap.add_argument("--test-bags", type=int, default=300)
    ap.add_argument("--cal-bags", type=int, default=200)
    ap.add_argument("--train-bags", type=int, default=2000, help="synthetic training bags, made before training")
    ap.add_argument("--train-contraband", type=_pair, default=(1, 3), metavar="MIN,MAX",
                    help="contraband objects in each non-clean training bag (the test set keeps 1,3)")
    ap.add_argument("--train-clean", type=float, default=0.3, help="share of clean training bags (test: 0.3)")
    ap.add_argument("--train-min-contrast", type=float, default=0.0,
                    help="take training contraband fainter than this out of its bag (SynthConfig.min_contrast; test: 0)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--evaluate-only", type=Path, default=None, metavar="CKPT",
                    help="skip training: evaluate this checkpoint (e.g. an earlier run's best.ckpt)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    t_start = time.perf_counter()
    real_train = real_eval = None
    split = {}
    if args.real.is_dir():
        real_train, real_eval, split = split_real(args.real, args.out)
        print(f"real scans: {split['train']} for training, {split['eval']} held out (crc32 rule)")
    else:
        print(f"{args.real} not found: real-bag figures are skipped")
    if args.evaluate_only is not None:
        ckpt = args.evaluate_only
        print(f"evaluating {ckpt} (no training)")
        results = evaluate(ckpt, real_train, real_eval, args)
        results.update({"real_split": split, "checkpoint": str(ckpt)})
    else:
        train_set = make_train_set(args)
        left_min = args.minutes - (time.perf_counter() - t_start) / 60
        if left_min <= 0:
            raise SystemExit(f"making the training bags took the whole budget of {args.minutes:g} min")
        print(f"training for {left_min:.1f} min (the trainer fits its epochs of {EPOCH_IMAGES} images to that)")
        config = bench_config(args, real_train, train_set, left_min)
        from training.engine import train

        t0 = time.perf_counter()
        last = train(config, args.out / "run")
        train_min = (time.perf_counter() - t0) / 60
        from training.checkpoint import load_checkpoint

        epochs = int(load_checkpoint(last)["epoch"]) + 1
        print(f"trained {epochs} epochs in {train_min:.1f} min ({(time.perf_counter() - t_start) / 60:.1f} min in all)")
        best = args.out / "run" / "best.ckpt"
        ckpt, selection = select_checkpoint([best, last] if best.exists() else [last], args)
        print(f"evaluating {ckpt.name}")
        results = evaluate(ckpt, real_train, real_eval, args)
        results["selection"] = selection
        results.update({"train_minutes": train_min, "epochs": epochs, "images_per_epoch": EPOCH_IMAGES, "model": args.size,
                        "lr": args.lr, "train_contraband": list(args.train_contraband), "train_clean": args.train_clean,
                        "train_min_contrast": args.train_min_contrast,
                        "input": args.input, "real_split": split, "checkpoint": str(ckpt)})
    st = results["synthetic_test"]
    print("\n== held-out synthetic test set ==")
    print(f"bags {st['bags']}  mAP@0.5 {st['map50']:.3f} (target ≥ 0.80)  mAP@0.5:0.95 {st['map50_95']:.3f}  "
          f"bag AUROC {st['bag_auroc']}  Pd@Pfa5% {st['pd_at_pfa']['0.05']} (target ≥ 0.90)")
    print("AP50 per class: " + ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in st["per_class"].items()))
    print(f"at the calibrated thresholds: Pd {st['pd_at_calibrated']}, Pfa {st['pfa_at_calibrated']} "
          f"(lane score floor {results['calibration']['score_floor']:.4f})")
    print("recall at the calibrated thresholds by concealment (found: own class; located: any class): " + ", ".join(
        f"{k} {v['found']:.2f}/{v['located']:.2f} of {v['objects']}" for k, v in st["per_concealment"].items()))
    if "map_by_iou" in st:
        m = st["map_by_iou"]
        print("mAP by IoU threshold (per class | classes merged): " + ", ".join(
            f"{k} {m['per_class'][k] or 0:.3f} | {m['class_agnostic'][k] or 0:.3f}" for k in m["per_class"]))
    if "naming" in st:
        print(f"boxed at IoU 0.5 by a detection scoring ≥ {NAMING_SCORE} (any class), and of those boxed in their own class: " + ", ".join(
            f"{k} {v['located']:.2f}, {v['named_right'] or 0:.2f} (else mostly {v['taken_for']})" for k, v in st["naming"].items()))
    if "per_contrast_quarter" in st:
        print("the same by contrast to clutter (BagScene.contrast), quarters of the test objects: " + ", ".join(
            f"{k} {v['found']:.2f}/{v['located']:.2f} of {v['objects']}" for k, v in st["per_contrast_quarter"].items()))
    if "real_clean" in results:
        print("\n== real bags, held-out half ==")
        print(f"clean real bags alarming: {results['real_clean']['alarm_share']:.3f} of {results['real_clean']['bags']} (target ≤ 0.05)")
        print(f"real bags with TIP contraband: Pd {results['real_tip']['pd']:.3f} of {results['real_tip']['bags']} (target ≥ 0.80)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
