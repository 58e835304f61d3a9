"""Export a training checkpoint to a model package: one `.onnx` file a lane runs and trusts (DESIGN.md §3).

    report = export_package(Path("runs/x/best.ckpt"), Path("model.onnx"))            # FP32
    report = export_package(ckpt, out, int8=True, calib_dir=Path("scans/"))           # static QDQ INT8

The graph takes B×C×H×W uint8 (uint16 for 16-bit models) at the fixed input size with a dynamic batch
dimension; scaling and mean/std are inside it (training.model.InputNormalizer). Outputs are
`boxes_xyxy` B×A×4 (input pixels) and `scores` B×A×K (probabilities); NMS is not in the graph: it is
vision.postprocess, the one post-processing path shared by evaluation, this gate and the lane (numpy NMS
costs well under a millisecond per image at the candidate counts a trained model gives; see the report of
bench/latency.py), so no second NMS implementation can drift from it.

Nothing is written until every gate check passed (training.parity): PyTorch vs ONNX FP32 on fixed images,
then INT8 vs FP32 on the validation set (or FP16 vs PyTorch). The checksum is computed on the final graph
and the file is written atomically, then read back through `inference.engine.Engine` as a lane would.
"""

from __future__ import annotations

import io
import os
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch

from inference.engine import Engine, session_options
from inference.modelfile import package_sha256
from training.export_data import PreparedSet, calibration_set, parity_set, validation_set
from training.model import Detector, detector_from_checkpoint
from training.parity import FP16_TOLERANCES, GateCheck, RawOutputs, Tolerances, agreement_check, int8_check
from training.quantize import Fp16UnavailableError, convert_fp16, fp16_available, quantize_int8
from vision.package import DatasetProvenance, ModelPackage, OperatingPoint, academic_dataset_in
from vision.postprocess import PostprocessParams
from vision.preprocess import PreprocessSpec

OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes_xyxy", "scores")
DEFAULT_THRESHOLD = 0.5
Precision = Literal["fp32", "fp16", "int8"]


class CheckpointError(ValueError):
    """The checkpoint lacks what an export needs, or contradicts itself."""


class ExportGateError(RuntimeError):
    """The exported graph disagreed with the reference beyond tolerance; no package was written."""

    def __init__(self, message: str, checks: tuple[GateCheck, ...]) -> None:
        super().__init__(message)
        self.checks = checks


@dataclass(frozen=True)
class ExportCheckpoint:
    """What an export takes from a checkpoint (see training.checkpoint for the file's keys)."""

    model: Detector
    classes: tuple[str, ...]
    preprocess: PreprocessSpec
    postprocess: PostprocessParams
    thresholds: dict[str, float]
    operating_point: OperatingPoint
    datasets: tuple[DatasetProvenance, ...]
    config_sha256: str | None
    name: str
    version: str


@dataclass(frozen=True)
class ExportReport:
    """The written package and how it passed the gate."""

    out: Path
    package: ModelPackage
    checks: tuple[GateCheck, ...]
    excluded_nodes: tuple[str, ...]
    size_bytes: int
    seconds: float

    def summary(self) -> str:
        p = self.package
        lines = [
            f"wrote {self.out} ({self.size_bytes / 1e6:.2f} MB, {p.precision}) in {self.seconds:.1f} s",
            f"  {p.name} {p.version}: {len(p.class_names)} classes, input {p.preprocess.input_kind} "
            f"{p.preprocess.input_bits}-bit {p.preprocess.height}×{p.preprocess.width}, sha256 {p.weights_sha256[:16]}…",
            f"  operational use: {'yes' if p.operational_use else 'NO (academic-only or unknown-licence training data)'}",
        ]
        if self.excluded_nodes:
            lines.append(f"  {len(self.excluded_nodes)} nodes kept in float (input normalisation, head outputs, decode)")
        lines += [c.summary() for c in self.checks]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- checkpoint


def provenance_entry(entry: Any) -> DatasetProvenance:
    """One checkpoint `datasets` entry ({"name","licence","kind"}, or the trainer's source description
    {"kind": synth|dataset|tip, "name", "path", "format", …}, or a bare name) as package provenance.
    Academic-only datasets are recognised in the name, path or format and named in `name`."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict):
        raise CheckpointError(f"dataset provenance entry {entry!r} is neither a name nor a mapping")
    text = " ".join(str(entry.get(k) or "") for k in ("name", "path", "format"))
    academic = academic_dataset_in(text)
    name = str(entry.get("name") or entry.get("path") or "unknown")
    if academic and not academic_dataset_in(name):
        name = f"{name} ({academic})"
    kinds = {"synth": "synthetic", "synthetic": "synthetic", "tip": "tip", "dataset": "public", "public": "public",
             "private": "private"}
    kind = kinds.get(str(entry.get("kind", "public")))
    if kind is None:
        raise CheckpointError(f"dataset {name!r}: unknown kind {entry.get('kind')!r}")
    licence = entry.get("licence") or entry.get("license")
    if not licence:
        licence = "academic, non-commercial" if academic else "xscreen synthesiser output" if kind == "synthetic" else "unknown"
    return DatasetProvenance(name=name, licence=str(licence), kind=kind)  # type: ignore[arg-type]


def operational_use(datasets: tuple[DatasetProvenance, ...]) -> bool:
    """Fit for operational use only when every training source is synthetic or the operator's own: any
    academic-only dataset (or TIP into its scans), public data of unstated licence, or no provenance at all
    makes a package not for operational use."""
    return bool(datasets) and all(d.kind in ("synthetic", "private") and not academic_dataset_in(d.name) for d in datasets)


def load_export_checkpoint(path: Path, *, name: str | None = None, version: str | None = None) -> ExportCheckpoint:
    """Read a checkpoint and rebuild its (EMA) model in eval mode; `CheckpointError` names what is wrong."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises several types for a foreign or damaged file
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not an xscreen checkpoint (top level is {type(state).__name__})")
    if state.get("format", "xscreen.checkpoint") != "xscreen.checkpoint":
        raise CheckpointError(f"{path}: checkpoint format {state.get('format')!r} is not xscreen.checkpoint")
    missing = [k for k in ("model_args", "state_dict", "classes", "preprocess") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    try:
        model = detector_from_checkpoint(state)
        spec = PreprocessSpec.model_validate(state["preprocess"])
        post = PostprocessParams.model_validate(state.get("postprocess") or {})
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    classes = tuple(str(c) for c in state["classes"])
    cfg = model.config
    if len(classes) != cfg.num_classes:
        raise CheckpointError(f"{path}: {len(classes)} class names for a {cfg.num_classes}-class head")
    if (spec.input_kind, spec.input_bits, (spec.height, spec.width)) != (cfg.input_kind, cfg.input_bits, tuple(cfg.input_hw)):
        raise CheckpointError(
            f"{path}: preprocess spec ({spec.input_kind}, {spec.input_bits}-bit, {spec.height}×{spec.width}) does not "
            f"match the model ({cfg.input_kind}, {cfg.input_bits}-bit, {cfg.input_hw[0]}×{cfg.input_hw[1]})"
        )
    given = {str(k): float(v) for k, v in (state.get("thresholds") or {}).items()}
    unknown = sorted(set(given) - set(classes))
    if unknown:
        raise CheckpointError(f"{path}: thresholds for classes the model does not have: {unknown}")
    thresholds = {c: given.get(c, DEFAULT_THRESHOLD) for c in classes}
    under = {c: t for c, t in thresholds.items() if t < post.score_floor}
    if under:
        raise CheckpointError(f"{path}: thresholds {under} lie below the post-processing score floor "
                              f"{post.score_floor:g}, which would drop those detections first")
    op = state.get("operating_point") or {}
    operating_point = OperatingPoint(
        target_pfa=op.get("target_pfa"),
        achieved_pfa=op.get("achieved_pfa"),
        pd=op.get("pd"),
        calibration_data=op.get("calibration_data") or (str(op["data"]) if op.get("data") is not None else None),
    )
    datasets = tuple(dict.fromkeys(provenance_entry(e) for e in state.get("datasets") or ()))
    config = state.get("config") or {}
    config_sha = state.get("config_hash")
    epoch = state.get("epoch")
    default_version = "+".join(p for p in (f"e{epoch}" if epoch is not None else "e0", (config_sha or "")[:8]) if p)
    return ExportCheckpoint(
        model=model,
        classes=classes,
        preprocess=spec,
        postprocess=post,
        thresholds=thresholds,
        operating_point=operating_point,
        datasets=datasets,
        config_sha256=config_sha,
        name=name or str(config.get("name") or Path(path).stem),
        version=version or default_version,
    )


# ------------------------------------------------------------------------------------------ graph and runs


def torch_to_onnx(model: Detector, *, opset: int = OPSET) -> onnx.ModelProto:
    """Trace `model` (eval mode) to a simplified, checked ONNX graph with a dynamic batch dimension.

    16-bit models: torch's exporter refuses uint16 inputs, so the graph is traced with int32 and its input
    re-typed to UINT16 afterwards. That is exact because the first op on the input is a Cast to float
    (InputNormalizer), which ONNX defines for uint16 too.
    """
    import onnxslim

    cfg = model.config
    model = model.eval()
    h, w = cfg.input_hw
    # Batch 2 in the trace so no batch-1 shape is baked into a Reshape.
    dummy = torch.zeros(2, cfg.in_channels, h, w, dtype=torch.uint8 if cfg.input_bits == 8 else torch.int32)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on the shape checks, the legacy-exporter notice
        torch.onnx.export(
            model, (dummy,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES), do_constant_folding=True,
            dynamic_axes={INPUT_NAME: {0: "batch"}, **{o: {0: "batch"} for o in OUTPUT_NAMES}},
        )
    proto = onnx.load_from_string(buf.getvalue())
    if cfg.input_bits == 16:
        consumers = [n for n in proto.graph.node if INPUT_NAME in n.input]
        if [n.op_type for n in consumers] != ["Cast"]:
            raise RuntimeError(f"16-bit export: the input must feed one Cast, it feeds {[n.op_type for n in consumers]}")
        proto.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.UINT16
    proto = onnxslim.slim(proto)
    onnx.checker.check_model(proto, full_check=True)
    _check_interface(proto, cfg.in_channels, (h, w), cfg.input_bits)
    return proto


def _check_interface(proto: onnx.ModelProto, channels: int, hw: tuple[int, int], bits: int) -> None:
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        raise RuntimeError(f"exported graph inputs {[i.name for i in inputs]} are not [{INPUT_NAME!r}]")
    t = inputs[0].type.tensor_type
    want_type = onnx.TensorProto.UINT8 if bits == 8 else onnx.TensorProto.UINT16
    dims = [d.dim_param or d.dim_value for d in t.shape.dim]
    if t.elem_type != want_type or len(dims) != 4 or not isinstance(dims[0], str) or dims[1:] != [channels, *hw]:
        raise RuntimeError(f"exported graph input is type {t.elem_type} shape {dims}; expected (batch, {channels}, {hw[0]}, {hw[1]})")
    if tuple(o.name for o in proto.graph.output) != OUTPUT_NAMES:
        raise RuntimeError(f"exported graph outputs {[o.name for o in proto.graph.output]} are not {list(OUTPUT_NAMES)}")


def run_torch(model: Detector, inputs: np.ndarray, *, batch_size: int = 8) -> RawOutputs:
    """Eval-mode outputs of the PyTorch model for prepared input (uint16 is fed as int32: same values)."""
    boxes, scores = [], []
    model = model.eval()
    with torch.inference_mode():
        for i in range(0, len(inputs), batch_size):
            chunk = inputs[i : i + batch_size]
            x = torch.from_numpy(chunk.astype(np.int32) if chunk.dtype == np.uint16 else np.ascontiguousarray(chunk))
            b, s = model(x)
            boxes.append(b.float().numpy())
            scores.append(s.float().numpy())
    return np.concatenate(boxes), np.concatenate(scores)


def run_onnx(proto: onnx.ModelProto, inputs: np.ndarray, *, batch_size: int = 8, threads: int | None = None) -> RawOutputs:
    """ONNX Runtime (CPU, the lane's session settings) outputs of a graph for prepared input."""
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outs = [session.run(list(OUTPUT_NAMES), {name: inputs[i : i + batch_size]}) for i in range(0, len(inputs), batch_size)]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


# ---------------------------------------------------------------------------------------------- the export


def _gate_failed(checks: list[GateCheck]) -> ExportGateError:
    failed = [c for c in checks if not c.passed]
    text = "\n".join(c.summary() for c in checks)
    return ExportGateError(
        f"export gate failed ({', '.join(c.name for c in failed)}); no package was written:\n{text}", tuple(checks)
    )


def _write_checked(proto: onnx.ModelProto, out: Path, inputs: np.ndarray, expected: RawOutputs) -> None:
    """Write next to `out`, read the file back as a lane would (inference.engine.Engine: metadata, checksum,
    interface) and check it gives the outputs that were gated, then move it into place. A file that fails
    is removed, and an existing `out` is left untouched."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(proto.SerializeToString())
        # On the CPU, as the gate ran (run_onnx): by default Engine takes CUDA/TensorRT where this machine has
        # them, whose kernels differ from the CPU's by far more than this check's tolerance.
        back = Engine(tmp, providers=["CPUExecutionProvider"]).run(inputs)
        # Same graph, same session settings: equal up to the summation order of threaded kernels.
        if not all(np.allclose(b, e, rtol=0.0, atol=1e-4) for b, e in zip(back, expected)):
            raise RuntimeError("the written package gives different outputs from the graph that was checked")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def export_package(
    ckpt: Path,
    out: Path,
    *,
    int8: bool = False,
    calib_dir: Path | None = None,
    fp16: bool = False,
    name: str | None = None,
    version: str | None = None,
    parity_images: int = 8,
    val_images: int = 32,
    calib_synthetic: int = 32,
) -> ExportReport:
    """Export `ckpt` to the package `out`; see the module docstring.

    int8: static QDQ quantisation calibrated on `calib_dir` scans plus synthetic bags; fp16: FP16 graph
    (for GPU lanes). Raises `ExportGateError` (nothing written) when a gate check fails, `CheckpointError`
    for an unusable checkpoint, `Fp16UnavailableError` when FP16 is asked for and cannot be made.
    """
    start = time.perf_counter()
    if int8 and fp16:
        raise ValueError("choose one of int8 and fp16")
    if calib_dir is not None and not int8:
        raise ValueError("a calibration folder is only used with int8")
    if fp16 and not fp16_available():
        raise Fp16UnavailableError("FP16 export needs onnxruntime.transformers.float16, which this install lacks")
    ck = load_export_checkpoint(Path(ckpt), name=name, version=version)
    spec, post = ck.preprocess, ck.postprocess

    fp32 = torch_to_onnx(ck.model)
    parity: PreparedSet = parity_set(spec, count=parity_images)
    ref = run_torch(ck.model, parity.inputs)
    fp32_out = run_onnx(fp32, parity.inputs)
    checks = [agreement_check("pytorch vs onnx fp32", ref, fp32_out, post)]
    if not checks[0].passed:
        raise _gate_failed(checks)

    final, precision, excluded = fp32, "fp32", ()
    if int8:
        calib = calibration_set(spec, calib_dir, synthetic=calib_synthetic)
        final, excluded = quantize_int8(fp32, calib.inputs)
        val = validation_set(spec, ck.classes, count=val_images, calib_dir=calib_dir)
        assert val.truths is not None
        checks.append(int8_check(run_onnx(fp32, val.inputs), run_onnx(final, val.inputs), val.letterbox, val.truths,
                                 ck.classes, post))
        precision = "int8"
    elif fp16:
        final = convert_fp16(fp32)
        checks.append(agreement_check("pytorch vs onnx fp16", ref, run_onnx(final, parity.inputs), post, FP16_TOLERANCES))
        precision = "fp16"
    if not all(c.passed for c in checks):
        raise _gate_failed(checks)

    del final.metadata_props[:]
    package = ModelPackage(
        name=ck.name,
        version=ck.version,
        created_at=datetime.now(timezone.utc),
        weights_sha256=package_sha256(final),
        class_names=ck.classes,
        thresholds=ck.thresholds,
        operating_point=ck.operating_point,
        preprocess=spec,
        postprocess=post,
        precision=precision,  # type: ignore[arg-type]
        datasets=ck.datasets,
        operational_use=operational_use(ck.datasets),
        training_config_sha256=ck.config_sha256,
        outputs=OUTPUT_NAMES,
    )
    onnx.helper.set_model_props(final, package.to_metadata())
    out = Path(out)
    _write_checked(final, out, parity.inputs, run_onnx(final, parity.inputs))
    return ExportReport(
        out=out,
        package=package,
        checks=tuple(checks),
        excluded_nodes=tuple(excluded),
        size_bytes=out.stat().st_size,
        seconds=time.perf_counter() - start,
    )


__all__ = [
    "CheckpointError",
    "ExportCheckpoint",
    "ExportGateError",
    "ExportReport",
    "Fp16UnavailableError",
    "Tolerances",
    "export_package",
    "load_export_checkpoint",
    "operational_use",
    "provenance_entry",
    "run_onnx",
    "run_torch",
    "torch_to_onnx",
]
