"""The ONNX Runtime engine of the lane box. Imports neither torch nor onnx (a lane installs neither).

`Engine(path)` loads a model package, refuses it unless its metadata is complete, of a known schema and
its checksum matches (vision.package, inference.modelfile), checks that the graph takes and gives what the
metadata says, picks execution providers (TensorRT, CUDA, else CPU) and thread counts, and runs batches.
`predict` is the whole lane path: vision.preprocess → ONNX Runtime → vision.postprocess (with
vision.letterbox.unletterbox; boxes wholly in the padding dropped) → vision.decide, so detections come back
in the scan's own pixels.

The file is read once; the bytes whose checksum was verified are the bytes the session is built from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import onnxruntime as ort

from inference.cores import usable_cores
from inference.modelfile import ModelFile, ModelFileError, package_sha256, read_model_file
from vision.decide import BagDecision, decide
from vision.letterbox import LetterboxParams
from vision.package import ChecksumMismatchError, ModelPackage, PackageError
from vision.postprocess import Detections, postprocess_to_scans
from vision.preprocess import prepare

#: Providers in order of preference; only those this onnxruntime build has are used.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

#: The package checksum (sha256 of the file minus its metadata; see inference.modelfile). Kept under this
#: name because the metadata field is `weights_sha256`; it covers the weights and the graph around them.
weights_sha256 = package_sha256

_ORT_INPUT_TYPES = {8: "tensor(uint8)", 16: "tensor(uint16)"}


def read_package(path: Path | str) -> tuple[ModelFile, ModelPackage]:
    """Read an ONNX file and its validated package metadata; refuse a changed, foreign or damaged file.

    Raises `PackageError` (`MissingMetadataError`, `UnknownSchemaError`, `ChecksumMismatchError`, or the
    base class for an unreadable file).
    """
    path = Path(path)
    try:
        model = read_model_file(path)
    except OSError as exc:
        raise PackageError(f"{path}: cannot read the model file ({exc})") from exc
    except ModelFileError as exc:
        raise PackageError(f"{path}: not a readable ONNX model ({exc})") from exc
    package = ModelPackage.from_metadata(model.metadata, source=str(path))
    if model.sha256 != package.weights_sha256:
        raise ChecksumMismatchError(
            f"{path}: checksum {model.sha256[:12]}… does not match the package's {package.weights_sha256[:12]}…; "
            "the file was changed after export"
        )
    return model, package


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """Execution providers to use: `requested` (each must be available) or the best available ones."""
    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ValueError(f"execution provider(s) {missing} not available; this onnxruntime has {available}")
        return list(requested)
    return [p for p in PREFERRED_PROVIDERS if p in available] or ["CPUExecutionProvider"]


#: How idle intra-op threads wait for work (see `session_options`).
SpinMode = Literal["on", "run", "off"]
SPIN_MODES: tuple[str, ...] = get_args(SpinMode)


def session_options(threads: int | None = None, *, profile_prefix: str | None = None,
                    spin: SpinMode = "on") -> ort.SessionOptions:
    """CPU session settings of the lane: `threads` intra-op threads (default: the cores this process may run
    on), one inter-op thread (the graph is a chain; parallel branches gain nothing on 2 cores), every graph
    optimisation.

    spin: how idle intra-op threads wait for the next operator.
    - "on" (ONNX Runtime's default): they busy-wait, and go on spinning for a while after a call ends.
      Right for a process that only runs the model, call after call.
    - "run": they busy-wait between the operators of a call and stop when it ends
      (`session.force_spinning_stop`). A call is as fast as with "on", and between calls the cores are
      free for other work: the lane service's choice, whose request threads decode, write and answer
      there (bench/service_load.py: half-load model call p50 23 ms against 26–29 ms with "off").
    - "off": they block at once (`session.intra_op.allow_spinning = 0`); every operator then pays a
      thread wake-up.
    """
    if spin not in SPIN_MODES:
        raise ValueError(f"spin must be one of {SPIN_MODES}, got {spin!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or usable_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if spin == "off":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    elif spin == "run":
        options.add_session_config_entry("session.force_spinning_stop", "1")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


@dataclass(frozen=True)
class Prediction:
    """One scan's result: detections in the scan's pixels and the bag decision at the package thresholds."""

    detections: Detections
    decision: BagDecision


class Engine:
    """An ONNX Runtime session for one model package.

    threads: intra-op threads (default: the cores this process may run on); providers: as `choose_providers`;
    max_batch: `detect`/`predict` run at most this many scans per session call (memory stays bounded);
    spin: how idle intra-op threads wait for work, "on", "run" or "off" (see `session_options`).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        max_batch: int = 8,
        profile_prefix: str | None = None,
        spin: SpinMode = "on",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be ≥ 1, got {max_batch}")
        self.path = Path(path)
        model, self.package = read_package(self.path)
        self.spec = self.package.preprocess
        self.class_names = self.package.class_names
        self.policy = self.package.policy()
        self.max_batch = max_batch
        self.providers = choose_providers(providers)
        try:
            self.session = ort.InferenceSession(
                model.data, sess_options=session_options(threads, profile_prefix=profile_prefix, spin=spin),
                providers=self.providers,
            )
        except Exception as exc:  # ORT raises its own exception types for invalid graphs
            raise PackageError(f"{self.path}: ONNX Runtime cannot load the graph ({exc})") from exc
        # ONNX Runtime leaves out, with a warning only, a provider it cannot start (a CUDA library missing):
        # what was asked for by name must run; what was picked by default is reported as it really is.
        running = list(self.session.get_providers())
        lost = [p for p in self.providers if p not in running]
        if lost and providers:
            raise ValueError(f"execution provider(s) {lost} could not be started (ONNX Runtime fell back to {running}); "
                             "check the GPU driver and CUDA libraries, or run on the CPU")
        self.providers = running
        self._input, self._outputs = self._check_io()
        self.input_dtype = np.dtype(np.uint16 if self.spec.input_bits == 16 else np.uint8)

    def _check_io(self) -> tuple[str, list[str]]:
        """The graph must take one B×C×H×W uint8/uint16 tensor and give the package's named outputs."""
        where = str(self.path)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise PackageError(f"{where}: the graph has {len(inputs)} inputs; a package has exactly one")
        inp = inputs[0]
        want_type = _ORT_INPUT_TYPES[self.spec.input_bits]
        if inp.type != want_type:
            raise PackageError(f"{where}: graph input is {inp.type}, the package says {want_type}")
        want_shape = [self.spec.channels, self.spec.height, self.spec.width]
        if len(inp.shape) != 4 or list(inp.shape[1:]) != want_shape:
            raise PackageError(f"{where}: graph input shape {inp.shape} is not (batch, {', '.join(map(str, want_shape))})")
        if isinstance(inp.shape[0], int):
            # Export writes a dynamic batch; the micro-batcher sends 1..max_batch scans per call, which a
            # fixed batch would refuse call by call at run time.
            raise PackageError(f"{where}: graph input shape {inp.shape} has a fixed batch of {inp.shape[0]}; "
                               "a package takes a dynamic batch dimension")
        outputs = self.session.get_outputs()
        names = [o.name for o in outputs]
        if tuple(names) != tuple(self.package.outputs):
            raise PackageError(f"{where}: graph outputs {names} differ from the package's {list(self.package.outputs)}")
        # B×A×4 boxes and B×A×K scores, K = the package's class names: a class map that disagrees with the
        # graph would otherwise load and then fail, or alarm on the wrong class, scan by scan.
        if len(outputs) != 2:
            raise PackageError(f"{where}: the graph has {len(outputs)} outputs; a package has boxes and scores")
        k = len(self.class_names)
        wants = list(zip(outputs, (4, k), ("4 box coordinates", f"{k} classes, one per class name")))
        for out, last, what in wants:
            shape = list(out.shape)
            if len(shape) != 3 or (isinstance(shape[2], int) and shape[2] != last):
                raise PackageError(f"{where}: graph output {out.name} has shape {shape}; the package expects "
                                   f"(batch, anchors, {last}): {what}")
        if not all(isinstance(out.shape[2], int) for out, _, _ in wants):
            # A width the graph leaves symbolic is seen by running it once, on one blank input.
            blank = np.zeros((1, *want_shape), np.uint16 if self.spec.input_bits == 16 else np.uint8)
            try:
                got = self.session.run(names, {inp.name: blank})
            except Exception as exc:  # ORT's own exception types
                raise PackageError(f"{where}: the graph fails on a blank input ({exc})") from exc
            for (out, last, what), value in zip(wants, got):
                if value.ndim != 3 or value.shape[2] != last:
                    raise PackageError(f"{where}: graph output {out.name} gives shape {list(value.shape)}; the "
                                       f"package expects (batch, anchors, {last}): {what}")
        return inp.name, names

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw outputs for B×C×H×W input: boxes_xyxy B×A×4 (input pixels), scores B×A×K (probabilities).

        batch: the package's input dtype (uint8/uint16), or any integer array whose values fit it (e.g.
        int32 holding uint16 values, as the training pipeline makes).
        """
        if batch.ndim != 4 or batch.shape[1:] != (self.spec.channels, self.spec.height, self.spec.width):
            raise ValueError(
                f"batch shape {batch.shape} does not match the package's input "
                f"(B, {self.spec.channels}, {self.spec.height}, {self.spec.width})"
            )
        if batch.dtype != self.input_dtype:
            if not np.issubdtype(batch.dtype, np.integer):
                raise ValueError(f"batch dtype {batch.dtype} is not an integer type; the model takes {self.input_dtype}")
            info = np.iinfo(self.input_dtype)
            if batch.size and (batch.min() < info.min or batch.max() > info.max):
                # A silent wrap-around (e.g. 16-bit counts into a uint8 model) would give confident nonsense.
                raise ValueError(f"batch values outside the {self.input_dtype} range of this model")
        out = self.session.run(self._outputs, {self._input: np.ascontiguousarray(batch, dtype=self.input_dtype)})
        return out[0], out[1]

    def detect_prepared(self, batch: np.ndarray, params: Sequence[LetterboxParams]) -> list[Detections]:
        """Detections in each scan's own pixels for input already made by vision.preprocess (the
        micro-batcher's path). batch: B×C×H×W; params: the B LetterboxParams `prepare` returned."""
        if len(params) != batch.shape[0]:
            raise ValueError(f"{batch.shape[0]} inputs but {len(params)} letterbox parameter sets")
        boxes, scores = self.run(batch)
        return postprocess_to_scans(boxes, scores, self.package.postprocess, params)

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections, in each scan's own pixels, for decoded scans (any layout vision.preprocess takes),
        run in chunks of at most `max_batch`."""
        out: list[Detections] = []
        for i in range(0, len(images), self.max_batch):
            prepared = [prepare(im, self.spec) for im in images[i : i + self.max_batch]]
            batch = np.stack([p[0] for p in prepared])
            out.extend(self.detect_prepared(batch, [p[1] for p in prepared]))
        return out

    def decide(self, detections: Detections) -> BagDecision:
        """The bag decision for one view's detections at the package's calibrated thresholds."""
        return decide(detections, self.class_names, self.policy)

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Detections and the bag decision for each scan."""
        return [Prediction(d, self.decide(d)) for d in self.detect(images)]
