"""How far synthetic scans are from real ones: colour, structure, noise, and a real-vs-synthetic classifier.

    python bench/realism.py [--real ../shared/xray-real] [--bags 60] [--json OUT] [--seed 0] [--verbose]
                            [--only sixray pidray opixray] [--look key=value palette.key=value …] [--sheets DIR]
                            [--size 640] [--long-side 512]

For each comparison (synthetic "sixray" palette vs the real SIXray scans, "pidray" vs PIDray, "sixray" vs
OPIXray) it makes `--bags` synthetic bags with `datasets.synth.pipeline.make_bag` (exactly what `xscreen
synth` writes) at --size px, brings every image, real or synthetic, to a long side of --long-side px (512;
a detector's input size, e.g. `--size 256 --long-side 256`, compares what a model sees), and prints:
- HSV histogram distances over foreground pixels, pooled per set (intersection: 1 = identical;
  Bhattacharyya: 0 = identical). Foreground is a fixed rule, S > 40 or V < 190 (OpenCV 8-bit HSV): the
  datasets' backgrounds are unsaturated grey 225 or white, so neither counts;
- edge density: Canny edges per foreground pixel, mean ± sd per image;
- saturation and colourfulness (Hasler & Süsstrunk 2003) of the foreground, foreground fraction;
- the cross-validated accuracy of a real-vs-synthetic logistic regression on a handcrafted feature vector
  (HSV histograms, edges, gradient and local-binary-pattern histograms, noise, JPEG blockiness): classes
  balanced by subsampling, 5-fold stratified, repeated, its L2 strength chosen by inner CV on the training
  folds only. 0.5 = indistinguishable to it. The accuracy of each feature group alone shows which
  difference gives the synthetic scans away; --verbose lists the single features that differ most.
--look overrides fields of `datasets.synth.look.ScannerLook` (how its numbers were calibrated); --sheets
writes contact sheets of the synthetic scans. The real scans are read in place and never written anywhere.

Caveat: the scanner looks were calibrated against these same real samples with these same features, and
there is no held-out real set, so the figures flatter the synthesiser somewhat.
"""

from __future__ import annotations

import argparse
import glob
import json
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

LONG_SIDE_PX = 512
FG_MIN_S, FG_MAX_V = 40, 190  # fixed foreground rule, OpenCV 8-bit HSV
HIST_BINS = {"H": (18, 180), "S": (16, 256), "V": (16, 256)}

# (name, palette of the synthetic set, glob of the real images under --real)
COMPARISONS = (
    ("sixray", "sixray", "sixray/JPEGImages/*.jpg"),
    ("pidray", "pidray", "pidray/images/*.png"),
    ("opixray", "sixray", "opixray/images/*.jpg"),
)


# ----------------------------------------------------------------------------------------------------- images
def to_long_side(rgb: np.ndarray, long_side: int = LONG_SIDE_PX) -> np.ndarray:
    """Resize (area-averaging when shrinking) so the longer side is `long_side` px."""
    h, w = rgb.shape[:2]
    s = long_side / max(h, w)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=interp)


def load_real(pattern: str) -> list[np.ndarray]:
    """Real scans matching `pattern` as uint8 RGB at their native size (read only)."""
    out = []
    for f in sorted(glob.glob(pattern)):
        bgr = cv2.imread(f, cv2.IMREAD_COLOR)
        if bgr is not None:
            out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return out


def make_synthetic(palette: str, bags: int, seed: int, size_px: int,
                   overrides: dict[str, float] | None = None) -> list[np.ndarray]:
    """`bags` synthetic scans in `palette` (uint8 RGB), exactly as the synth pipeline makes them.

    overrides: ScannerLook fields to change from the palette's calibrated look (for calibration runs).
    """
    from dataclasses import replace

    from datasets.synth.look import look_for
    from datasets.synth.pipeline import SynthConfig, make_bag

    look = replace(look_for(palette), **overrides) if overrides else None
    config = SynthConfig(bags=bags, seed=seed, palette=palette, size_px=size_px, look=look)  # type: ignore[arg-type]
    return [make_bag(config, i).image for i in range(bags)]


def parse_overrides(items: list[str] | None, palette: str) -> dict[str, float]:
    """`key=value` (every palette) or `palette.key=value` items → ScannerLook overrides for `palette`."""
    out: dict[str, float] = {}
    for item in items or []:
        key, _, value = item.partition("=")
        scope, _, field_name = key.rpartition(".")
        if scope in ("", palette):
            out[field_name] = int(value) if field_name == "jpeg_quality" else float(value)
    return out


def foreground(hsv: np.ndarray) -> np.ndarray:
    """H×W bool: pixels that are not the (unsaturated, bright) background."""
    return (hsv[..., 1] > FG_MIN_S) | (hsv[..., 2] < FG_MAX_V)


# --------------------------------------------------------------------------------------------------- features
def _hist(values: np.ndarray, bins: int, top: float) -> np.ndarray:
    h = np.bincount(np.minimum((values.astype(np.float32) * (bins / top)).astype(np.int64), bins - 1), minlength=bins)
    return h.astype(np.float64) / max(1, h.sum())


def _lbp_codes(grey: np.ndarray) -> np.ndarray:
    """Rotation-invariant uniform LBP (8 neighbours, radius 1): 0–8 = number of brighter neighbours on a
    uniform ring, 9 = non-uniform. Shape (H−2)×(W−2)."""
    g = grey.astype(np.int16)
    c = g[1:-1, 1:-1]
    offsets = ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0))  # a ring, in order
    bits = np.stack([(g[dy : dy + c.shape[0], dx : dx + c.shape[1]] >= c + 2) for dy, dx in offsets]).astype(np.int8)
    transitions = np.abs(np.diff(np.concatenate([bits, bits[:1]]), axis=0)).sum(axis=0)
    ones = bits.sum(axis=0)
    return np.where(transitions <= 2, ones, 9)


def blockiness(rgb: np.ndarray) -> float:
    """JPEG 8×8 block artefact strength: mean |step| across block boundaries over the mean elsewhere
    (1 = none), on the native-resolution luma."""
    y = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    dx = np.abs(np.diff(y, axis=1))
    dy = np.abs(np.diff(y, axis=0))
    bx = (np.arange(dx.shape[1]) % 8) == 7
    by = (np.arange(dy.shape[0]) % 8) == 7
    at = dx[:, bx].mean() + dy[by, :].mean()
    off = dx[:, ~bx].mean() + dy[~by, :].mean()
    return float(at / max(off, 1e-6))


def grain_correlation(native_rgb: np.ndarray) -> tuple[float, float]:
    """Lag-1 correlation of a scan's fine grain along x and along y, at native resolution (the scanner's
    own grid): the high-pass (the grey image minus its σ 3 px blur) times itself shifted one pixel, over
    flat foreground (no edges: Sobel of the σ 1.5 px blurred grey under 20). A line scanner samples the belt's
    direction and the detector line's at different pitches, so its grain is correlated unequally along the
    two. Not a classifier feature; reported beside it."""
    grey = cv2.cvtColor(native_rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    smooth = cv2.GaussianBlur(grey, (0, 0), 3)
    hp = grey - smooth
    soft = cv2.GaussianBlur(grey, (0, 0), 1.5)
    flat = (smooth < 200) & (np.hypot(cv2.Sobel(soft, cv2.CV_32F, 1, 0), cv2.Sobel(soft, cv2.CV_32F, 0, 1)) < 20)
    m, c = flat[1:-1, 1:-1], hp[1:-1, 1:-1]
    power = float((c * c)[m].mean()) if m.any() else 0.0
    if power <= 0:
        return 0.0, 0.0
    return float((c * hp[1:-1, 2:])[m].mean()) / power, float((c * hp[2:, 1:-1])[m].mean()) / power


@dataclass
class ImageStats:
    """Per-image figures and the classifier's feature groups."""

    groups: dict[str, np.ndarray]
    edge_density: float
    saturation: float
    colourfulness: float
    fg_fraction: float
    fg_hsv: np.ndarray  # foreground pixels, N×3 uint8 (subsampled), for the pooled histograms
    grain_x: float = 0.0  # `grain_correlation` along x and y
    grain_y: float = 0.0


def image_stats(native_rgb: np.ndarray, rng: np.random.Generator, long_side: int = LONG_SIDE_PX) -> ImageStats:
    """Everything the benchmark measures on one scan (native size → `long_side` px long side)."""
    block = blockiness(native_rgb)
    rgb = to_long_side(native_rgb, long_side)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    fg = foreground(hsv)
    if fg.sum() < 100:  # an empty scan: treat everything as foreground rather than divide by zero
        fg = np.ones_like(fg)
    h, s, v = (hsv[..., k][fg] for k in range(3))
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(grey, 50, 150) > 0
    edge_density = float(edges[fg].mean())
    rgbf = rgb.astype(np.float32)
    rg = (rgbf[..., 0] - rgbf[..., 1])[fg]
    yb = (0.5 * (rgbf[..., 0] + rgbf[..., 1]) - rgbf[..., 2])[fg]
    colourful = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.log1p(np.hypot(gx, gy)[fg])  # 0 … ln(1+1443) ≈ 7.3
    lbp = _lbp_codes(grey)[fg[1:-1, 1:-1]]
    lap = np.abs(cv2.Laplacian(grey, cv2.CV_32F, ksize=1))
    hf = grey.astype(np.float32) - cv2.GaussianBlur(grey, (0, 0), 1.0).astype(np.float32)
    bg = ~fg
    bg_v = hsv[..., 2][bg] if bg.sum() > 100 else np.array([255], np.uint8)
    bg_hf = hf[bg] if bg.sum() > 100 else np.zeros(1, np.float32)
    saturated = s > FG_MIN_S
    hue_hist = _hist(h[saturated], *HIST_BINS["H"]) if saturated.any() else np.zeros(HIST_BINS["H"][0])
    groups = {
        "hue": hue_hist,
        "sat_val": np.concatenate([_hist(s, *HIST_BINS["S"]), _hist(v, *HIST_BINS["V"]), [colourful / 100.0]]),
        "edges": np.concatenate([[edge_density], _hist(mag, 12, 7.5), [float(lap[fg].mean()) / 10.0]]),
        "lbp": _hist(lbp, 10, 10),
        "noise": np.array([float(np.abs(hf[fg]).mean()), float(np.abs(bg_hf).mean()), float(bg_v.std()) / 10.0]),
        "layout": np.array([float(fg.mean()), float(np.median(bg_v)) / 255.0, float((v < 40).mean())]),
        "jpeg": np.array([block]),
    }
    idx = rng.choice(h.size, size=min(h.size, 20000), replace=False)
    return ImageStats(groups, edge_density, float(s.mean()) / 255.0, colourful, float(fg.mean()),
                      np.stack([h[idx], s[idx], v[idx]], axis=1), *grain_correlation(native_rgb))


# ------------------------------------------------------------------------------------------------- classifier
def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 25) -> np.ndarray:
    """L2-penalised logistic regression by Newton's method; x already standardised. Returns weights (d+1)."""
    xb = np.hstack([x, np.ones((x.shape[0], 1))])
    w = np.zeros(xb.shape[1])
    penalty = np.full(xb.shape[1], l2)
    penalty[-1] = 0.0  # the intercept is not shrunk
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -30, 30)))
        grad = xb.T @ (p - y) + penalty * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(penalty + 1e-8)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return w


def _predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (x @ w[:-1] + w[-1]) > 0


def _stratified_folds(y: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    folds: list[list[int]] = [[] for _ in range(k)]
    for label in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == label))
        for j, chunk in enumerate(np.array_split(idx, k)):
            folds[j] += chunk.tolist()
    return [np.array(f, int) for f in folds]


def _fit_predict(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, l2: float) -> np.ndarray:
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    return _predict(fit_logistic((xtr - mu) / sd, ytr, l2), (xte - mu) / sd)


L2_GRID = (0.1, 1.0, 10.0, 100.0)


def cv_accuracy(x: np.ndarray, y: np.ndarray, *, repeats: int = 10, k: int = 5, seed: int = 0) -> tuple[float, float]:
    """Balanced, stratified, repeated k-fold accuracy (mean, sd over repeats) of the real-vs-synthetic
    logistic regression; the L2 strength is chosen per outer fold by inner k-fold CV on its training part."""
    rng = np.random.default_rng(seed)
    n = int(min((y == 0).sum(), (y == 1).sum()))
    accs = []
    for _ in range(repeats):
        keep = np.concatenate([rng.choice(np.flatnonzero(y == c), n, replace=False) for c in (0, 1)])
        xs, ys = x[keep], y[keep]
        correct = 0
        for test in _stratified_folds(ys, k, rng):
            train = np.setdiff1d(np.arange(ys.size), test)
            inner = _stratified_folds(ys[train], min(k, 4), rng)
            scores = []
            for l2 in L2_GRID:
                hits = 0
                for itest in inner:
                    itrain = np.setdiff1d(np.arange(train.size), itest)
                    pred = _fit_predict(xs[train][itrain], ys[train][itrain], xs[train][itest], l2)
                    hits += int((pred == ys[train][itest]).sum())
                scores.append(hits)
            l2 = L2_GRID[int(np.argmax(scores))]
            correct += int((_fit_predict(xs[train], ys[train], xs[test], l2) == ys[test]).sum())
        accs.append(correct / ys.size)
    return float(np.mean(accs)), float(np.std(accs))


# ---------------------------------------------------------------------------------------------------- figures
def pooled_distances(real: list[ImageStats], synth: list[ImageStats]) -> dict[str, dict[str, float]]:
    """Per HSV channel: intersection and Bhattacharyya distance of the pooled foreground histograms."""
    a = np.concatenate([s.fg_hsv for s in real])
    b = np.concatenate([s.fg_hsv for s in synth])
    out = {}
    for k, (name, (bins, top)) in enumerate(HIST_BINS.items()):
        ha, hb = _hist(a[:, k], bins, top), _hist(b[:, k], bins, top)
        out[name] = {
            "intersection": float(np.minimum(ha, hb).sum()),
            "bhattacharyya": float(cv2.compareHist(ha.astype(np.float32), hb.astype(np.float32),
                                                   cv2.HISTCMP_BHATTACHARYYA)),
        }
    return out


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "sd": float(np.std(values))}


def compare(name: str, real: list[ImageStats], synth: list[ImageStats], *, repeats: int, seed: int) -> dict:
    """All figures for one real set against one synthetic set."""
    group_names = list(real[0].groups)
    x_all = np.array([np.concatenate([s.groups[g] for g in group_names]) for s in real + synth])
    y = np.array([0] * len(real) + [1] * len(synth))
    acc, acc_sd = cv_accuracy(x_all, y, repeats=repeats, seed=seed)
    per_group = {}
    for g in group_names:
        xg = np.array([s.groups[g] for s in real + synth])
        per_group[g] = cv_accuracy(xg, y, repeats=max(2, repeats // 2), seed=seed)[0]
    return {
        "name": name,
        "n_real": len(real),
        "n_synth": len(synth),
        "classifier_accuracy": {"mean": acc, "sd": acc_sd},
        "classifier_accuracy_by_group": per_group,
        "hsv_histograms": pooled_distances(real, synth),
        **{
            stat: {"real": _mean_sd([getattr(s, stat) for s in real]),
                   "synth": _mean_sd([getattr(s, stat) for s in synth])}
            for stat in ("edge_density", "saturation", "colourfulness", "fg_fraction", "grain_x", "grain_y")
        },
        "largest_differences": [
            {"feature": n, "cohens_d": d, "real": a, "synth": b} for n, d, a, b in effect_sizes(real, synth)
        ],
    }


def feature_names() -> list[str]:
    """Names of the classifier's features, in the order `compare` concatenates the groups."""
    hb, sb, vb = HIST_BINS["H"][0], HIST_BINS["S"][0], HIST_BINS["V"][0]
    return ([f"hue{i * 180 // hb * 2}deg" for i in range(hb)]
            + [f"S{i * 256 // sb}" for i in range(sb)] + [f"V{i * 256 // vb}" for i in range(vb)] + ["colourfulness"]
            + ["edge_density"] + [f"log_grad{i * 7.5 / 12:.1f}" for i in range(12)] + ["laplacian"]
            + [f"lbp{i}" for i in range(10)]
            + ["hf_fg", "hf_bg", "bg_v_sd"] + ["fg_fraction", "bg_level", "dark_fraction"] + ["jpeg_blockiness"])


def effect_sizes(real: list[ImageStats], synth: list[ImageStats],
                 top: int = 15) -> list[tuple[str, float, float, float]]:
    """The `top` features that differ most (|Cohen's d|): (name, d, real mean, synth mean)."""
    groups = list(real[0].groups)
    xr = np.array([np.concatenate([s.groups[g] for g in groups]) for s in real])
    xs = np.array([np.concatenate([s.groups[g] for g in groups]) for s in synth])
    pooled = np.sqrt(0.5 * (xr.var(0) + xs.var(0))) + 1e-9
    d = (xs.mean(0) - xr.mean(0)) / pooled
    order = np.argsort(-np.abs(d))[:top]
    names = feature_names()
    return [(names[i], float(d[i]), float(xr.mean(0)[i]), float(xs.mean(0)[i])) for i in order]


def print_table(results: list[dict], verbose: bool = False) -> None:
    def ms(d: dict[str, float], f: str = "{:.3f}") -> str:
        return f"{f.format(d['mean'])}±{f.format(d['sd'])}"

    print(f"{'set':8s} {'n r/s':>7s} {'clf acc':>12s} {'H ∩':>5s} {'S ∩':>5s} {'V ∩':>5s} "
          f"{'H Bh':>5s} {'S Bh':>5s} "
          f"{'V Bh':>5s} {'edges real':>12s} {'edges synth':>12s} {'sat real':>11s} {'sat synth':>11s} "
          f"{'colourf. r':>11s} {'colourf. s':>11s}")
    for r in results:
        hh = r["hsv_histograms"]
        print(f"{r['name']:8s} {r['n_real']:>3d}/{r['n_synth']:<3d} {ms(r['classifier_accuracy']):>12s} "
              + " ".join(f"{hh[c]['intersection']:5.2f}" for c in "HSV") + " "
              + " ".join(f"{hh[c]['bhattacharyya']:5.2f}" for c in "HSV") + " "
              + f"{ms(r['edge_density']['real']):>12s} {ms(r['edge_density']['synth']):>12s} "
              + f"{ms(r['saturation']['real'], '{:.2f}'):>11s} {ms(r['saturation']['synth'], '{:.2f}'):>11s} "
              + f"{ms(r['colourfulness']['real'], '{:.0f}'):>11s} {ms(r['colourfulness']['synth'], '{:.0f}'):>11s}")
    print("\nclassifier accuracy on each feature group alone:")
    groups = list(results[0]["classifier_accuracy_by_group"])
    print(f"{'set':8s} " + " ".join(f"{g:>8s}" for g in groups))
    for r in results:
        print(f"{r['name']:8s} " + " ".join(f"{r['classifier_accuracy_by_group'][g]:8.2f}" for g in groups))
    print("\ngrain: lag-1 correlation of the fine grain along x / along y (native pixels; real → synthetic):")
    for r in results:
        print(f"{r['name']:8s} x {ms(r['grain_x']['real'], '{:.2f}')} → {ms(r['grain_x']['synth'], '{:.2f}')}   "
              f"y {ms(r['grain_y']['real'], '{:.2f}')} → {ms(r['grain_y']['synth'], '{:.2f}')}")
    if verbose:
        for r in results:
            print(f"\n{r['name']}: largest differences (Cohen's d, synth − real; real mean → synth mean)")
            for e in r["largest_differences"]:
                print(f"  {e['feature']:16s} {e['cohens_d']:+6.2f}   {e['real']:.4f} → {e['synth']:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", type=Path, default=Path("../shared/xray-real"))
    ap.add_argument("--bags", type=int, default=60, help="synthetic bags per palette")
    ap.add_argument("--size", type=int, default=640, help="synthetic scan long side, px (real SIXray ≈ 300–1500)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=10, help="repeats of the 5-fold CV")
    ap.add_argument("--only", nargs="*", help="comparisons to run (sixray, pidray, opixray); default all")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--look", nargs="*", help="ScannerLook overrides, key=value or palette.key=value (calibration)")
    ap.add_argument("--sheets", type=Path,
                    help="write a contact sheet of the first 16 synthetic scans per palette here (never real ones)")
    ap.add_argument("--long-side", type=int, default=LONG_SIDE_PX,
                    help="long side (px) every image is resized to before it is measured")
    ap.add_argument("--verbose", action="store_true", help="also list the features that differ most")
    args = ap.parse_args()

    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    synth_cache: dict[str, list[ImageStats]] = {}
    results = []
    for name, palette, pattern in COMPARISONS:
        if args.only and name not in args.only:
            continue
        real_images = load_real(str(args.real / pattern))
        if not real_images:
            print(f"{name}: no real images under {args.real / pattern}, skipped")
            continue
        if palette not in synth_cache:
            images = make_synthetic(palette, args.bags, args.seed, args.size, parse_overrides(args.look, palette))
            synth_cache[palette] = [image_stats(im, rng, args.long_side) for im in images]
            if args.sheets:
                from vision.draw import contact_sheet

                args.sheets.mkdir(parents=True, exist_ok=True)
                sheet = contact_sheet(images[:16], columns=4, tile=400)
                cv2.imwrite(str(args.sheets / f"synth_{palette}.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        real = [image_stats(im, rng, args.long_side) for im in real_images]
        results.append(compare(name, real, synth_cache[palette], repeats=args.repeats, seed=args.seed))
    print_table(results, verbose=args.verbose)
    print(f"\n({time.perf_counter() - t0:.0f} s; synthetic: {args.bags} bags per palette at {args.size} px, "
          f"seed {args.seed}; "
          f"all images at long side {args.long_side} px)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"config": config, "results": results}, indent=1))


if __name__ == "__main__":
    main()
