"""Review of export and the model-package contract: what a trainer exporting a package, or a lane loading
one, would otherwise hit. Each test failed on the code it was written against."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from inference.engine import Engine
from inference.modelfile import iter_fields, package_sha256
from tiny_checkpoint import exported_package
from training.export import export_package, operational_use, provenance_entry
from vision.package import METADATA_KEY, PackageError, academic_dataset_in


def _repackage(src: Path, dst: Path, edit_graph) -> Path:
    """A copy of a package whose graph was changed by `edit_graph(proto)` and whose metadata was re-stamped
    with the new checksum: a well-formed package, as a careless tool (or trainer) might write one."""
    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    edit_graph(proto)
    del proto.metadata_props[:]
    doc = json.loads(props[METADATA_KEY])
    doc["weights_sha256"] = package_sha256(proto)
    onnx.helper.set_model_props(proto, {**props, METADATA_KEY: json.dumps(doc)})
    onnx.save(proto, str(dst))
    return dst


# ------------------------------------------------------------------------------------- engine: the batch


def test_engine_refuses_a_graph_with_a_fixed_batch(tmp_path):
    """The contract is a dynamic batch (the micro-batcher sends 1..max_batch scans per call). A graph fixed
    at batch 1 used to load, then failed on every batched call at run time."""
    _, package = exported_package("rgb")

    def fix_batch(proto):
        for value in (*proto.graph.input, *proto.graph.output):
            value.type.tensor_type.shape.dim[0].dim_value = 1  # replaces the "batch" dim_param

    fixed = _repackage(package, tmp_path / "fixed.onnx", fix_batch)
    assert onnx.load(str(fixed)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    with pytest.raises(PackageError, match="batch"):
        Engine(fixed, threads=1)
    Engine(package, threads=1).run(np.zeros((3, 3, 64, 64), np.uint8))  # the exported one still loads and batches


# -------------------------------------------------------------------- export: the read-back of the file


class _GpuLikeSession:
    """An ONNX Runtime session that answers like a GPU execution provider: the same graph, but outputs that
    differ from the CPU's in the last bits (other kernels, other summation order, TF32/FP16 arithmetic)."""

    def __init__(self, session):
        self._session = session

    def __getattr__(self, name):
        return getattr(self._session, name)

    def run(self, *args, **kwargs):
        return [o + np.float32(1e-3) * np.abs(o).max() for o in self._session.run(*args, **kwargs)]


def test_read_back_of_the_written_package_runs_where_the_gate_ran(tmp_path, monkeypatch):
    """On a trainer's GPU machine (onnxruntime-gpu), `Engine` picks the CUDA provider by default while the gate
    runs on the CPU. The read-back check compared the two at atol 1e-4 and refused every package there: the
    export failed with "the written package gives different outputs from the graph that was checked"."""
    import onnxruntime as ort

    real_session, requested = ort.InferenceSession, []

    def session(model, sess_options=None, providers=None, **kwargs):
        requested.append(list(providers or []))
        made = real_session(model, sess_options, providers=["CPUExecutionProvider"], **kwargs)
        return _GpuLikeSession(made) if providers and providers[0] == "CUDAExecutionProvider" else made

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", session)
    ckpt, _ = exported_package("rgb")
    report = export_package(ckpt, tmp_path / "m.onnx", parity_images=2)
    assert report.out.is_file() and requested and all(p == ["CPUExecutionProvider"] for p in requested)


# ------------------------------------------------------------------------------------------- provenance


@pytest.mark.parametrize("text", ["SIXray10", "/data/SIXray100/JPEGImage", "sixray1000", "tip:PIDray2", "HiXray_1"])
def test_academic_datasets_are_recognised_in_their_subset_names(text):
    """SIXray is published as SIXray10, SIXray100 and SIXray1000: a dataset of such a folder (read with
    --format auto/voc, so recorded by its folder name) was exported with licence "unknown" instead of
    academic, and a "private" entry of that name was even marked fit for operational use."""
    assert academic_dataset_in(text) is not None
    entry = provenance_entry({"kind": "dataset", "name": "SIXray10", "path": "/data/SIXray10", "format": "auto"})
    assert entry.licence.startswith("academic") and "sixray" in entry.name.lower()
    assert not operational_use((provenance_entry({"kind": "private", "name": "SIXray10"}),))


@pytest.mark.parametrize("text", ["seeds", "needs10", "xscreen-synth", "airport_x", "sixraylike", "pidrays"])
def test_words_that_only_contain_a_dataset_name_are_not_academic(text):
    assert academic_dataset_in(text) is None


# --------------------------------------------------------------------------------- checksum: external data


def test_engine_refuses_a_package_whose_weights_live_outside_the_file(tmp_path, monkeypatch):
    """ONNX can keep tensors in a side file ("external data"); ONNX Runtime, given the file's bytes, reads
    them from the working directory. The checksum covers only the file, so such a package's weights could be
    swapped without the checksum noticing: it must be refused, a package is one self-contained file."""
    _, package = exported_package("rgb")
    proto = onnx.load(str(package))
    props = {p.key: p.value for p in proto.metadata_props}
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=1024)
    proto = onnx.load(str(tmp_path / "ext.onnx"), load_external_data=False)
    doc = json.loads(props[METADATA_KEY])
    data = memoryview(proto.SerializeToString())  # no metadata yet: its checksum is the sha256 of its fields
    doc["weights_sha256"] = hashlib.sha256(b"".join(data[s:e] for _f, _w, s, _v, e in iter_fields(data))).hexdigest()
    onnx.helper.set_model_props(proto, {**props, METADATA_KEY: json.dumps(doc)})
    (tmp_path / "ext.onnx").write_bytes(proto.SerializeToString())
    weights = tmp_path / "weights.bin"
    weights.write_bytes((np.frombuffer(weights.read_bytes(), np.uint8) ^ 1).tobytes())  # every weight changed
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PackageError, match="external"):
        Engine(tmp_path / "ext.onnx", threads=1)
