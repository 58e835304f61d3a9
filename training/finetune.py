"""Fine-tuning: start a detector for one class list from a checkpoint trained on another, and freeze parts.

What is transferred (source = the checkpoint's EMA weights):
- backbone and neck: always, strictly (same size and input kind, or it is an error);
- head, same class list: everything;
- head, other class list: the box branches (class-agnostic: they regress distances) and the hidden layers of
  the class branches (features); only the last 1×1 conv of each class branch, whose output channels *are*
  the classes, is re-initialised — with the detector's prior bias — except that rows of classes present in
  both lists are copied, so "drug_package" stays a trained drug_package detector in the new model.

Frozen parts get `requires_grad = False` and are kept in eval mode during training (`set_train_mode`), so
their BatchNorm running statistics do not drift on the new data either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from training.model import Detector, DetectorConfig

FREEZABLE = ("backbone", "neck")
# Fields that fix the shapes of the backbone and neck: a source must agree on all of them.
_STRUCTURAL = ("size", "input_kind", "in_channels", "reg_max")


@dataclass(frozen=True)
class TransferReport:
    """What `transfer_weights` did. copied: state_dict keys taken whole; reinitialised: class-conv keys
    started afresh (rows of shared_classes copied into them); same_classes: the class lists are identical."""

    copied: tuple[str, ...]
    reinitialised: tuple[str, ...]
    shared_classes: tuple[str, ...]
    same_classes: bool


def _class_conv_prefixes(model: Detector) -> list[str]:
    """state_dict prefixes of the last conv of every class branch (its output channels are the classes)."""
    return [f"head.cls_branches.{i}.{len(branch) - 1}." for i, branch in enumerate(model.head.cls_branches)]


def transfer_weights(model: Detector, source: dict[str, Any], *, classes: Sequence[str]) -> TransferReport:
    """Load a checkpoint's weights into `model` (built for `classes`) as the module docstring says.

    source: a checkpoint dict (needs "model_args", "state_dict" and "classes").
    """
    src_args = DetectorConfig.from_dict(dict(source["model_args"]))
    for name in _STRUCTURAL:
        if getattr(src_args, name) != getattr(model.config, name):
            raise ValueError(
                f"cannot fine-tune: the checkpoint's {name} is {getattr(src_args, name)!r}, "
                f"the config asks for {getattr(model.config, name)!r}"
            )
    src_classes = tuple(source["classes"])
    classes = tuple(classes)
    same = src_classes == classes
    src_sd: dict[str, torch.Tensor] = source["state_dict"]
    dst_sd = model.state_dict()
    class_convs = [] if same else _class_conv_prefixes(model)
    shared = tuple(c for c in classes if c in src_classes)
    copied, reinit = [], []
    with torch.no_grad():
        for key, dst in dst_sd.items():
            if key not in src_sd:
                raise ValueError(f"cannot fine-tune: the checkpoint has no {key!r}")
            src = src_sd[key]
            if any(key.startswith(p) for p in class_convs):
                # Output channel k of the class conv is class k: copy the rows of classes both lists have.
                for name in shared:
                    dst[classes.index(name)] = src[src_classes.index(name)]
                reinit.append(key)
                continue
            if src.shape != dst.shape:
                raise ValueError(f"cannot fine-tune: {key} is {tuple(src.shape)} in the checkpoint, {tuple(dst.shape)} here")
            dst.copy_(src)
            copied.append(key)
    return TransferReport(copied=tuple(copied), reinitialised=tuple(reinit), shared_classes=shared, same_classes=same)


def freeze_parts(model: Detector, parts: Sequence[str]) -> tuple[str, ...]:
    """Stop gradients into the named parts ("backbone", "neck"); returns their state_dict key prefixes."""
    prefixes = []
    for part in parts:
        if part not in FREEZABLE:
            raise ValueError(f"cannot freeze {part!r}; freezable parts: {list(FREEZABLE)}")
        for p in getattr(model, part).parameters():
            p.requires_grad_(False)
        prefixes.append(f"{part}.")
    return tuple(prefixes)


def set_train_mode(model: nn.Module, frozen_parts: Sequence[str]) -> None:
    """model.train(), with the frozen parts kept in eval mode (BatchNorm uses and keeps its running stats)."""
    model.train()
    for part in frozen_parts:
        getattr(model, part).eval()
