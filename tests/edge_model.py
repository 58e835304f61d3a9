"""A tiny exported model package for the edge tests, built without training.export.

The detector is built and exported to ONNX in a *subprocess*, so torch never loads into the test process
(the edge service must run without it, DESIGN.md §2). The package carries complete xscreen metadata
(vision.package) and a matching weights sha256, so `inference.Engine` accepts it like a real one.

Thresholds are low (0.01 by default) so a randomly initialised model still alarms; tests that need a
different policy pass their own thresholds.

    path = tiny_package()                 # built once per test process, cached on disk
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CLASS_NAMES = ("drug_package", "cannabis", "cash_bundle", "tobacco", "medicine_pills", "ivory", "pangolin_scales")
INPUT_HW = (64, 64)

# Runs in a child interpreter: imports torch, builds, exports, writes metadata. Arguments: out path, JSON
# of {thresholds, score_floor, seed}.
_BUILD_SCRIPT = r"""
import json, sys
from datetime import datetime, timezone
import onnx, torch
from training.model import build_detector
from inference.engine import weights_sha256
from vision.package import ModelPackage
from vision.preprocess import PreprocessSpec
from vision.postprocess import PostprocessParams

out, cfg = sys.argv[1], json.loads(sys.argv[2])
torch.manual_seed(cfg["seed"])
h, w = cfg["input_hw"]
model = build_detector(size="n", num_classes=len(cfg["class_names"]), in_channels=3, input_kind="rgb",
                       input_bits=8, input_hw=(h, w)).eval()
x = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8)
torch.onnx.export(model, (x,), out, dynamo=False, opset_version=17, input_names=["images"],
                  output_names=["boxes_xyxy", "scores"],
                  dynamic_axes={"images": {0: "batch"}, "boxes_xyxy": {0: "batch"}, "scores": {0: "batch"}})
proto = onnx.load(out)
package = ModelPackage(
    name="tiny-test", version="0.0.1", created_at=datetime.now(timezone.utc),
    weights_sha256=weights_sha256(proto), class_names=tuple(cfg["class_names"]),
    thresholds=cfg["thresholds"],
    preprocess=PreprocessSpec(input_kind="rgb", input_bits=8, height=h, width=w),
    postprocess=PostprocessParams(score_floor=cfg["score_floor"], max_detections=20),
    operational_use=False,
)
del proto.metadata_props[:]
for k, v in package.to_metadata().items():
    entry = proto.metadata_props.add()
    entry.key, entry.value = k, v
onnx.save(proto, out)
"""


def build_tiny_package(
    out: Path, *, threshold: float = 0.01, score_floor: float = 0.001, seed: int = 0
) -> Path:
    """Build and export a tiny random 7-class RGB detector (64×64 input) to `out` in a subprocess."""
    cfg = {
        "class_names": list(CLASS_NAMES),
        "thresholds": {c: threshold for c in CLASS_NAMES},
        "score_floor": score_floor,
        "seed": seed,
        "input_hw": list(INPUT_HW),
    }
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", _BUILD_SCRIPT, str(out), json.dumps(cfg)],
        capture_output=True,
        text=True,
        cwd=repo,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building the tiny model package failed:\n{proc.stderr[-4000:]}")
    return out


@functools.cache
def tiny_package() -> Path:
    """The default tiny package, built once per test process into a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="xscreen-tiny-model-"))
    return build_tiny_package(folder / "tiny.onnx")
