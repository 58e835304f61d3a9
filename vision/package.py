"""The model package's metadata: the contract between trainers and lanes (DESIGN.md §3).

An exported `.onnx` file carries, in `metadata_props`, one JSON document under the key `xscreen.package`
and its schema version under `xscreen.schema_version`. A lane trusts nothing else: the preprocessing spec,
the post-processing settings, the class names and their calibrated thresholds all come from here.

`weights_sha256` is the package checksum: the sha256 of the ONNX file's bytes with the `metadata_props`
entries left out (inference.modelfile), so it covers every weight and every node of the final graph and is
checked on a lane without the `onnx` package; a package whose file no longer matches is refused.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vision.decide import DecisionPolicy
from vision.postprocess import PostprocessParams
from vision.preprocess import PreprocessSpec

SCHEMA_VERSION = 1
KNOWN_SCHEMA_VERSIONS = frozenset({1})
METADATA_KEY = "xscreen.package"
SCHEMA_KEY = "xscreen.schema_version"

#: Public datasets whose licences forbid operational (commercial) use of derived weights.
ACADEMIC_ONLY = frozenset({"sixray", "opixray", "pidray", "hixray", "gdxray", "clcxray", "eds", "dvxray"})


def academic_dataset_in(text: str) -> str | None:
    """The academic-only dataset named in `text` (a dataset name, source name or path), or None.

    Matches whole words of the lower-cased text, a trailing number allowed ("tip:SIXray", "/data/PIDray-easy"
    and SIXray's published subsets "SIXray10"/"SIXray1000" match; "seeds" does not match "eds"), so names
    decorated by the trainer are still recognised.
    """
    for word in re.split(r"[^0-9a-z]+", text.lower()):
        name = word.rstrip("0123456789")
        if name in ACADEMIC_ONLY:
            return name
    return None


class PackageError(ValueError):
    """A model package the lane must refuse; the message says why."""


class MissingMetadataError(PackageError):
    pass


class UnknownSchemaError(PackageError):
    pass


class ChecksumMismatchError(PackageError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatasetProvenance(_Strict):
    name: str
    licence: str
    kind: Literal["public", "synthetic", "tip", "private"] = "public"


class OperatingPoint(_Strict):
    """What the thresholds were calibrated for: a bag-level false-alarm rate and the Pd reached there."""

    target_pfa: float | None = None
    achieved_pfa: float | None = None
    pd: float | None = None
    calibration_data: str | None = None


class ModelPackage(_Strict):
    schema_version: int = SCHEMA_VERSION
    name: str
    version: str
    created_at: datetime
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    class_names: tuple[str, ...]
    thresholds: dict[str, float]
    operating_point: OperatingPoint = OperatingPoint()
    preprocess: PreprocessSpec
    postprocess: PostprocessParams
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    datasets: tuple[DatasetProvenance, ...] = ()
    operational_use: bool
    training_config_sha256: str | None = None
    outputs: tuple[str, ...] = ("boxes_xyxy", "scores")

    @model_validator(mode="after")
    def _check(self) -> "ModelPackage":
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class names must be non-empty and unique: {self.class_names}")
        missing = [c for c in self.class_names if c not in self.thresholds]
        extra = [c for c in self.thresholds if c not in self.class_names]
        if missing or extra:
            raise ValueError(f"thresholds must name every class exactly: missing {missing}, unknown {extra}")
        bad = {c: t for c, t in self.thresholds.items() if not 0.0 < t <= 1.0}
        if bad:
            raise ValueError(f"thresholds must lie in (0, 1]: {bad}")
        floor = self.postprocess.score_floor
        under = {c: t for c, t in self.thresholds.items() if t < floor}
        if under:
            # Post-processing drops every detection under its floor before the policy sees it: such a class
            # would alarm at the floor, not at its stated threshold (xscreen calibrate lowers the floor).
            raise ValueError(f"thresholds {under} lie below the post-processing score floor {floor:g}: "
                             "lower postprocess.score_floor to at most the lowest threshold")
        academic = [d.name for d in self.datasets if academic_dataset_in(d.name)]
        if academic and self.operational_use:
            raise ValueError(f"trained on academic-only datasets {academic}: operational_use must be false")
        return self

    def policy(self) -> DecisionPolicy:
        """The bag decision policy these thresholds define."""
        return DecisionPolicy(class_names=list(self.class_names), thresholds=dict(self.thresholds))

    def to_metadata(self) -> dict[str, str]:
        return {METADATA_KEY: self.model_dump_json(), SCHEMA_KEY: str(self.schema_version)}

    @classmethod
    def from_metadata(cls, props: dict[str, str], *, source: str = "model") -> "ModelPackage":
        """Parse and validate the metadata; refuse with a `PackageError` that names what is wrong."""
        if METADATA_KEY not in props or SCHEMA_KEY not in props:
            missing = [k for k in (METADATA_KEY, SCHEMA_KEY) if k not in props]
            raise MissingMetadataError(f"{source}: not an xscreen model package: metadata key(s) {missing} missing")
        try:
            version = int(props[SCHEMA_KEY])
        except ValueError:
            raise UnknownSchemaError(f"{source}: schema version {props[SCHEMA_KEY]!r} is not a number") from None
        if version not in KNOWN_SCHEMA_VERSIONS:
            raise UnknownSchemaError(
                f"{source}: package schema version {version} is not known to this lane (known: {sorted(KNOWN_SCHEMA_VERSIONS)})"
            )
        try:
            doc = json.loads(props[METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise MissingMetadataError(f"{source}: package metadata is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise MissingMetadataError(f"{source}: package metadata is not a JSON object")
        if doc.get("schema_version") != version:
            raise UnknownSchemaError(f"{source}: schema version differs between keys ({doc.get('schema_version')} vs {version})")
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            raise MissingMetadataError(f"{source}: package metadata is incomplete or invalid: {exc}") from exc
