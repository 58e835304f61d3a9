"""The shared preprocessing path: layouts, depths, letterbox parameters."""

from __future__ import annotations

import numpy as np
import pytest

from vision.letterbox import unletterbox
from vision.preprocess import IncompatibleScanError, PreprocessSpec, prepare, prepare_batch


def test_rgb_model_from_rgb_and_grey():
    spec = PreprocessSpec(input_kind="rgb", height=64, width=64)
    rgb = np.zeros((32, 64, 3), np.uint8)
    rgb[..., 0] = 200
    x, params = prepare(rgb, spec)
    assert x.shape == (3, 64, 64) and x.dtype == np.uint8 and x[0, 32, 32] == 200 and x[1, 32, 32] == 0
    assert x[0, 0, 0] == 114  # padding
    grey16 = np.full((10, 10), 65535, np.uint16)
    x, _ = prepare(grey16, spec)
    assert x.dtype == np.uint8 and x.shape == (3, 64, 64) and x[:, 30, 30].tolist() == [255, 255, 255]


def test_grey_model_and_dual_energy_model():
    x, _ = prepare(np.zeros((20, 30, 3), np.uint8), PreprocessSpec(input_kind="grey", height=32, width=32))
    assert x.shape == (1, 32, 32)
    de = np.zeros((20, 30, 2), np.uint16)
    de[..., 0], de[..., 1] = 1000, 2000
    x, _ = prepare(de, PreprocessSpec(input_kind="dual_energy", input_bits=16, height=32, width=32, pad_value=60000))
    assert x.shape == (2, 32, 32) and x.dtype == np.uint16 and x[:, 16, 16].tolist() == [1000, 2000]
    assert x[0, 0, 0] == 60000


def test_incompatible_scans_refused():
    with pytest.raises(IncompatibleScanError, match="dual-energy"):
        prepare(np.zeros((8, 8, 3), np.uint8), PreprocessSpec(input_kind="dual_energy", input_bits=16))
    with pytest.raises(IncompatibleScanError, match="render"):
        prepare(np.zeros((8, 8, 2), np.uint16), PreprocessSpec(input_kind="rgb"))


def test_batch_params_invert_boxes():
    spec = PreprocessSpec(height=64, width=64)
    images = [np.zeros((100, 50, 3), np.uint8), np.zeros((30, 120, 3), np.uint8)]
    batch, params = prepare_batch(images, spec)
    assert batch.shape == (2, 3, 64, 64)
    full = unletterbox(np.array([[0, 0, 64, 64]]), params[1])
    np.testing.assert_allclose(full, [[0, 0, 120, 30]], atol=0.5)
