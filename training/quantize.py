"""INT8 (static QDQ) and FP16 versions of an exported FP32 graph.

INT8: onnxruntime's `quantize_static` in QDQ format, activations QUInt8, weights QInt8 per output channel,
calibrated (MinMax) on prepared scans. On the lane CPU (AVX-512 VNNI) unsigned activations with signed
weights is what ORT's x86 kernels run fastest (its NHWC QLinearConv): a YOLO11n measured 1.6–1.7× over
FP32 that way, while signed activations and dynamic quantisation were slower than FP32; bench/latency.py
measures ours (s, 512 px: 1.6–1.8× FP32's speed at batch 1–8, README).

Left in float:
- the input normalisation (`/normalize/…`): a few element-wise ops on raw counts, and for dual-energy
  input a log and a ratio whose range a single uint8 scale would crush;
- the head's final 1×1 convs (`/head/{cls,box}_branches.L/….2/Conv`) and everything after them: the class
  logits feed a sigmoid, the box-bin logits a softmax whose expectation is a sub-pixel distance, and the
  decode is reshapes and a few multiply-adds (no speed to gain). Quantising them too cost box precision on
  a briefly trained model: median IoU of INT8 vs FP32 boxes 0.93 instead of 0.98.
They are found by name (the module paths torch's exporter writes) and by following the graph from them to
its outputs; a graph whose head cannot be found is refused rather than quantised blindly.

FP16: onnxruntime.transformers.float16 with float32 inputs/outputs kept (`keep_io_types`); for GPUs.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx

#: Final 1×1 convs of the head (nn.Sequential index 2 of each branch), as torch's exporter names them.
HEAD_OUTPUT_CONV = re.compile(r"^/head/(cls|box)_branches\.\d+/[^/]*\.2/Conv$")
NORMALIZER_PREFIX = "/normalize/"


class QuantizationError(RuntimeError):
    """The graph cannot be quantised safely (its head was not found) or calibration data is missing."""


class Fp16UnavailableError(RuntimeError):
    """This install has no FP16 converter."""


def downstream_nodes(model: onnx.ModelProto, seeds: Iterable[str]) -> set[str]:
    """Names of the nodes `seeds` and every node that consumes (transitively) one of their outputs."""
    nodes = list(model.graph.node)
    names = set(seeds)
    produced = {o for n in nodes if n.name in names for o in n.output}
    # Nodes are topologically sorted in a valid ONNX graph, so one pass in order reaches every descendant.
    for node in nodes:
        if node.name not in names and any(i in produced for i in node.input):
            names.add(node.name)
            produced.update(node.output)
    return names


def int8_excluded_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes kept in float (see module docstring), sorted; `QuantizationError` if the head is not found."""
    seeds = [n.name for n in model.graph.node if HEAD_OUTPUT_CONV.match(n.name)]
    if len(seeds) != 6:  # two branches × three levels
        raise QuantizationError(
            f"expected the head's 6 final convs (names like /head/cls_branches.0/cls_branches.0.2/Conv), found "
            f"{len(seeds)}: {seeds}; the graph was not exported by training.export"
        )
    excluded = downstream_nodes(model, seeds)
    excluded |= {n.name for n in model.graph.node if n.name.startswith(NORMALIZER_PREFIX)}
    return sorted(excluded)


def quantize_int8(
    fp32: onnx.ModelProto, calibration: np.ndarray, *, batch_size: int = 8
) -> tuple[onnx.ModelProto, tuple[str, ...]]:
    """Static QDQ INT8 graph of `fp32`, calibrated on `calibration` (N×C×H×W prepared model input).

    Returns the quantised graph and the names of the nodes left in float.
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration.ndim != 4 or calibration.shape[0] == 0:
        raise QuantizationError(f"calibration data must be N×C×H×W with N ≥ 1, got {calibration.shape}")
    input_name = fp32.graph.input[0].name

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(
                [{input_name: np.ascontiguousarray(calibration[i : i + batch_size])} for i in range(0, len(calibration), batch_size)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    with tempfile.TemporaryDirectory(prefix="xscreen-int8-") as tmp:
        src, pre, out = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        onnx.save(fp32, src)
        # Shape inference + ORT's basic graph optimisations, so every activation has a known type and
        # shape; the symbolic (sympy) pass is for transformers and fails on our reshapes, so it is skipped.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        prepared = onnx.load(str(pre))
        excluded = int8_excluded_nodes(prepared)
        quantize_static(
            str(pre),
            str(out),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            # 7-bit weights: on x86 CPUs without VNNI (AVX2 only, as many lane boxes and this project's build
            # machines are) ONNX Runtime's u8×s8 kernels add pairs of products in saturating 16-bit sums, and
            # full-range weights overflow them (measured: the int8 gate failed on an AVX2-only EPYC with 8-bit
            # weights, p99 score error 0.076 against 0.05, and passed with 7). A package may run on any CPU.
            reduce_range=True,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=excluded,
        )
        quantized = onnx.load(str(out))
    if not any(n.op_type == "QuantizeLinear" for n in quantized.graph.node):
        raise QuantizationError("quantisation produced no QuantizeLinear node")
    return quantized, tuple(excluded)


def fp16_available() -> bool:
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: F401
    except ImportError:
        return False
    return True


def convert_fp16(fp32: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and compute, uint8/uint16 input and float32 outputs unchanged (keep_io_types)."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:
        raise Fp16UnavailableError(
            f"FP16 conversion needs onnxruntime.transformers.float16, which this install lacks ({exc})"
        ) from exc
    copy = onnx.ModelProto()
    copy.CopyFrom(fp32)  # the converter edits its argument in place; the FP32 graph is still needed
    return convert_float_to_float16(copy, keep_io_types=True)
