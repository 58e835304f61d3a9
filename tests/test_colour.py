"""False-colour rendering, grey rendering, the palette inverse and projection into false-colour scans."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.synth.physics import log_attenuation_full
from vision.colour import (
    PALETTES,
    RAW_AIR_LEVEL,
    RAW_DARK_LEVEL,
    false_colour_to_pseudo_log_attenuation,
    project_log_attenuation,
    render_false_colour,
    render_false_colour_from_log_attenuation,
    render_grey,
)

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "xray-real"

# Hue ranges (degrees) of the three material classes, as scanners show them.
ORANGE = (15.0, 50.0)
GREEN = (80.0, 170.0)
BLUE = (185.0, 250.0)


def _raw_from_log_attenuation(log_att: np.ndarray) -> np.ndarray:
    """Noise-free raw counts H×W×2 uint16 for log-attenuation H×W×2."""
    raw = RAW_DARK_LEVEL + (RAW_AIR_LEVEL - RAW_DARK_LEVEL) * np.exp(-log_att)
    return np.round(raw).astype(np.uint16)


def _patch(material: str, thickness_cm: float) -> np.ndarray:
    return log_attenuation_full({material: np.full((8, 8), thickness_cm)}).astype(np.float32)


def _hsv(rgb: np.ndarray) -> np.ndarray:
    """Median HSV of an RGB uint8 image: hue degrees, S and V in 0–1."""
    hsv = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
    return np.median(hsv.reshape(-1, 3), axis=0)


@pytest.mark.parametrize("palette", sorted(PALETTES))
@pytest.mark.parametrize(
    ("material", "thickness_cm", "hue_range"),
    [("water", 10.0, ORANGE), ("cotton", 20.0, ORANGE), ("glass", 1.0, GREEN), ("aluminium", 1.0, GREEN),
     ("iron", 0.5, BLUE), ("copper", 0.2, BLUE)],
)
def test_material_classes_get_their_hue(palette: str, material: str, thickness_cm: float,
                                        hue_range: tuple[float, float]) -> None:
    rgb = render_false_colour(_raw_from_log_attenuation(_patch(material, thickness_cm)), palette=palette)
    hue, sat, _ = _hsv(rgb)
    assert hue_range[0] <= hue <= hue_range[1], hue
    assert sat > 0.25  # visibly coloured, not grey


@pytest.mark.parametrize("palette", sorted(PALETTES))
def test_air_is_near_white_and_unpenetrated_is_black(palette: str) -> None:
    air = render_false_colour(np.full((4, 4, 2), RAW_AIR_LEVEL, np.uint16), palette=palette)
    assert air.min() >= 220 and int(air.max()) - int(air.min()) <= 3  # neutral light grey/white
    black = render_false_colour(np.full((4, 4, 2), RAW_DARK_LEVEL, np.uint16), palette=palette)
    assert black.max() <= 5


@pytest.mark.parametrize("palette", sorted(PALETTES))
def test_thicker_is_darker(palette: str) -> None:
    values = [_hsv(render_false_colour(_raw_from_log_attenuation(_patch("water", t)), palette=palette))[2]
              for t in (1.0, 5.0, 15.0, 30.0)]
    assert values == sorted(values, reverse=True) and values[0] > values[-1] + 0.2


def test_palettes_differ() -> None:
    raw = _raw_from_log_attenuation(_patch("water", 10.0))
    a, b = (render_false_colour(raw, palette=p) for p in ("sixray", "pidray"))
    assert np.abs(a.astype(int) - b).mean() > 10


def _random_scene(seed: int) -> np.ndarray:
    """Smooth random mixtures of organics and metals with air around, H×W×2 log-attenuation."""
    rng = np.random.default_rng(seed)
    shape = (48, 64)
    fields = {}
    for name, max_cm in (("cotton", 30.0), ("water", 15.0), ("aluminium", 2.0), ("iron", 0.8)):
        noise = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 4)
        noise = (noise - noise.min()) / (np.ptp(noise) + 1e-6)
        fields[name] = max_cm * np.clip(noise * 2 - 1, 0, None)
    log_att = log_attenuation_full(fields).astype(np.float32)
    log_att[:, :6] = 0.0  # a strip of air, as every scan has
    return log_att


@pytest.mark.parametrize("palette", sorted(PALETTES))
def test_render_inverse_render_is_near_identity(palette: str) -> None:
    rgb = render_false_colour_from_log_attenuation(_random_scene(1), palette=palette)
    again = render_false_colour_from_log_attenuation(false_colour_to_pseudo_log_attenuation(rgb, palette),
                                                     palette=palette)
    diff = np.abs(rgb.astype(int) - again)
    assert diff.max() <= 4 and diff.mean() < 0.5


@pytest.mark.parametrize("palette", sorted(PALETTES))
def test_inverse_recovers_log_attenuation(palette: str) -> None:
    log_att = _random_scene(2)
    recovered = false_colour_to_pseudo_log_attenuation(render_false_colour_from_log_attenuation(log_att, palette=palette),
                                                       palette)
    visible = (log_att[..., 1] > 0.3) & (log_att[..., 1] < 5.0)
    assert visible.sum() > 100
    err = np.abs(recovered[..., 1] - log_att[..., 1])[visible]
    assert np.median(err) < 0.05 and np.percentile(err, 95) < 0.2


def test_projection_adds_an_object_and_leaves_the_rest() -> None:
    rgb = render_false_colour_from_log_attenuation(_random_scene(3), palette="sixray")
    extra = np.zeros((*rgb.shape[:2], 2), np.float32)
    assert np.array_equal(project_log_attenuation(rgb, extra, "sixray"), rgb)
    extra[10:30, 20:40] = _patch("cocaine", 5.0)[0, 0]
    out = project_log_attenuation(rgb, extra, "sixray")
    assert np.array_equal(out[extra[..., 1] == 0], rgb[extra[..., 1] == 0])
    assert out[10:30, 20:40].astype(int).sum() < rgb[10:30, 20:40].astype(int).sum()  # darker


def test_render_grey() -> None:
    raw = np.stack([np.full((2, 3), RAW_AIR_LEVEL), np.full((2, 3), RAW_AIR_LEVEL)], -1).astype(np.uint16)
    raw[:, 1] = _raw_from_log_attenuation(np.full((2, 2), 2.0, np.float32))
    raw[:, 2] = RAW_DARK_LEVEL
    for channel in ("high", "low", "mean"):
        grey = render_grey(raw, channel=channel)
        assert grey.shape == (2, 3) and grey.dtype == np.uint8
        assert grey[0, 0] == 255 and grey[0, 2] == 0 and 100 < grey[0, 1] < 220
    with pytest.raises(ValueError):
        render_grey(raw, channel="red")


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/xray-real not present")
@pytest.mark.parametrize(("palette", "pattern"), [("sixray", "sixray/JPEGImages/P0[3-9]*.jpg"),
                                                  ("pidray", "pidray/images/*.png")])
def test_palette_resembles_real_scans(palette: str, pattern: str) -> None:
    # A real scan mapped into the palette's pseudo-attenuation and rendered back should look like
    # itself: colours on the palette's loci survive, so the mean colour error stays small.
    paths = sorted(REAL.glob(pattern))[:6]
    assert paths
    for path in paths:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        again = render_false_colour_from_log_attenuation(false_colour_to_pseudo_log_attenuation(rgb, palette),
                                                         palette=palette)
        assert np.abs(rgb.astype(int) - again).mean() < 12, path.name
