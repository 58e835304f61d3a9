"""edge.formats: the lane service's own inputs (DICOS DX, the dual-energy container) when damaged.

A station's network, disk or firmware can hand the service any bytes. Whatever arrives, `decode_upload`
(what the service decodes every scan with) returns a well-formed scan or raises a `DecodeError`, which
the service answers with a 4xx; nothing else may escape, and no damaged file may crash the process (pydicos
is a C++ toolkit).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.formats import (
    DICOM_MEDIA_TYPE,
    DUAL_ENERGY_MEDIA_TYPE,
    Upload,
    decode_upload,
    pack_dual_energy,
    write_dicos_dx,
)
from tests.damage import EDITS, assert_well_formed, damaged, decoded_truncations
from vision.decode import DecodeError, encode_png

_RNG = np.random.default_rng(11)
_GREY16 = (_RNG.random((48, 64)) * 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Upload]:
    path = Path(tmp_path_factory.mktemp("dicos")) / "scan.dcs"
    write_dicos_dx(_GREY16, path)
    low, high = encode_png(_GREY16), encode_png(_GREY16 // 2)
    return {
        "dicos": Upload(data=path.with_suffix(".dcs").read_bytes(), media_type=DICOM_MEDIA_TYPE, suffix="dcs"),
        "dual-energy": Upload(data=pack_dual_energy(low, high), media_type=DUAL_ENERGY_MEDIA_TYPE, suffix="xde"),
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["dicos", "dual-energy"]), edits=EDITS)
def test_damaged_service_inputs_decode_or_raise_a_decode_error(valid, kind, edits):
    upload = valid[kind]
    keep = 132 if kind == "dicos" else 0
    broken = Upload(data=damaged(upload.data, edits, keep=keep), media_type=upload.media_type,
                    suffix=upload.suffix)
    try:
        scan = decode_upload(broken, max_pixels=10_000_000)
    except DecodeError as exc:
        assert str(exc)
        return
    assert_well_formed(scan, max_pixels=10_000_000)


@pytest.mark.parametrize("kind", ["dicos", "dual-energy"])
def test_every_truncation_of_a_service_input_is_refused(valid, kind):
    upload = valid[kind]
    assert decode_upload(upload, max_pixels=10_000_000).pixels.shape[:2] == _GREY16.shape
    accepted = decoded_truncations(upload.data, lambda data: decode_upload(
        Upload(data=data, media_type=upload.media_type, suffix=upload.suffix), max_pixels=10_000_000), cuts=200)
    assert accepted == [], f"{kind}: decoded although cut to {accepted[:5]} of {len(upload.data)} bytes"
