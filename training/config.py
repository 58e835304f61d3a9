"""Training configuration: frozen dataclasses loaded from YAML, `--set key=value` overrides, unknown keys
are errors, and the resolved config is saved with every run and checkpoint.

Configs are plain data: no `eval`/`exec`, values are parsed with YAML's safe loader.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from datasets.synth.materials import CONTRABAND_CLASSES


# A number in exponent notation without a dot (1e-4, 5E3): YAML 1.1's safe loader leaves it a string.
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


@dataclass(frozen=True)
class ModelConfig:
    size: Literal["n", "s", "m"] = "s"
    input_kind: Literal["rgb", "grey", "dual_energy"] = "rgb"
    input_size: int = 512
    backbone_weights: str | None = None

    def __post_init__(self) -> None:
        if self.input_size < 32 or self.input_size % 32:
            raise ConfigError(f"model.input_size: must be a positive multiple of 32 (the detector's largest "
                              f"stride), got {self.input_size}")


@dataclass(frozen=True)
class SourceConfig:
    """One stream of training samples.

    kind: `dataset` (a public dataset in its native format, read by `datasets.readers`), `synth` (bags made
    on the fly by the physics synthesiser) or `tip` (contraband projected into the scans of `path`).
    weight: the share of each batch drawn from this source, relative to the other sources.
    class_map: for `dataset`, {source class: target class or null to drop}.
    min_contrast: for `synth`, take contraband too faint to see out of the bags (`SynthConfig.min_contrast`).
    """

    kind: Literal["dataset", "synth", "tip"] = "synth"
    weight: float = 1.0
    path: str | None = None
    format: str = "auto"
    class_map: dict[str, str | None] | None = None
    palette: Literal["sixray", "pidray", "grey", "mixed"] = "mixed"
    seed: int = 0
    length: int = 1000  # samples per epoch for on-the-fly sources
    clean_fraction: float = 0.3
    min_contrast: float = 0.0


@dataclass(frozen=True)
class DataConfig:
    classes: tuple[str, ...] = CONTRABAND_CLASSES
    train: tuple[SourceConfig, ...] = (SourceConfig(),)
    val: tuple[SourceConfig, ...] = (SourceConfig(seed=10_000, length=64),)
    workers: int = 0
    augment: bool = True
    #: Training samples per epoch, drawn from the sources by weight; default: the sum of the sources' sizes.
    epoch_len: int | None = None

    def __post_init__(self) -> None:
        if not self.classes:
            raise ConfigError("data.classes: the model needs at least one class")
        twice = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if twice:
            raise ConfigError(f"data.classes: {twice} listed more than once")


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    ema_decay: float = 0.999
    grad_clip_norm: float = 10.0
    amp: bool = True  # mixed precision: float16 on CUDA, bfloat16 on CPUs with native bf16 (training.engine.amp_dtype)
    class_balance: bool = True  # inverse-frequency class weights in the classification loss
    #: Wall-clock budget of the run (this command, data loading and validation included): after every epoch
    #: the run re-plans how many epochs fit (at most `epochs`), stretching or shrinking the cosine to end
    #: with them, and stops when the budget is spent. None: exactly `epochs`.
    minutes: float | None = None

    def __post_init__(self) -> None:
        if self.minutes is not None and not self.minutes > 0:
            raise ConfigError(f"optim.minutes: a time budget must be positive, got {self.minutes}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"optim.{name}: must be at least 1, got {getattr(self, name)}")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.warmup_epochs >= 0 and self.grad_clip_norm > 0):
            raise ConfigError(f"optim: lr and grad_clip_norm must be positive, weight_decay and warmup_epochs "
                              f"not negative (got {self.lr}, {self.grad_clip_norm}, {self.weight_decay}, "
                              f"{self.warmup_epochs})")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"optim.ema_decay: must lie in [0, 1), got {self.ema_decay}")


@dataclass(frozen=True)
class FinetuneConfig:
    """Start from a checkpoint onto (possibly) another class list: the backbone and neck are kept, heads
    are re-initialised when the classes differ; `freeze` names the parts kept fixed."""

    checkpoint: str | None = None
    freeze: tuple[Literal["backbone", "neck"], ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    name: str = "xscreen"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    device: str = "auto"
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.log_every < 1:
            raise ConfigError(f"log_every: must be at least 1 (steps between progress lines), got {self.log_every}")


def _build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from plain data, checking every key and type."""
    if dataclasses.is_dataclass(cls):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"{where or 'config'}: unknown key(s) {unknown}; known: {sorted(fields)}")
        hints = typing.get_type_hints(cls)
        kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
        return cls(**kwargs)
    return _coerce(cls, data, where)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} fits none of {tp}: {'; '.join(errors)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0]
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args
        return {_coerce(kt, k, where): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string; the usual way to write a rate
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain-data form (tuples as lists) for YAML, JSON and checkpoints."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(config)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for i, p in enumerate(parts):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise ConfigError(f"--set {key}: {where} is not one of the {len(node)} list items (0..{len(node) - 1})")
            if i == len(parts) - 1:
                node[int(p)] = value
            else:
                node = node[int(p)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[:i])!r} is not a section")
        if i == len(parts) - 1:
            node[p] = value
        else:
            node = node.setdefault(p, {})


def load_config(path: Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Load a YAML config (or the defaults), apply `key.sub=value` overrides (values parsed as YAML), and
    validate the result. Unknown keys and wrong types are `ConfigError`s."""
    tree: dict[str, Any] = config_to_dict(TrainConfig())
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        try:
            _build(TrainConfig, loaded, "")  # unknown keys in the file are named against the file
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        tree = _merge(tree, loaded)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return _build(TrainConfig, tree, "")


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def config_hash(config: TrainConfig) -> str:
    """sha256 of the resolved config's canonical JSON (recorded in checkpoints and model packages)."""
    blob = json.dumps(config_to_dict(config), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def save_config(config: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
