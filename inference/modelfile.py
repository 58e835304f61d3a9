"""Reading a model package's metadata and checksum straight from the ONNX file's bytes.

A lane box has ONNX Runtime but neither `onnx` nor torch (DESIGN.md §2), so this reads the protobuf wire
format itself. It only walks the top level of `onnx.ModelProto`; the graph is never decoded here (ONNX
Runtime does that, from the very bytes that were checked).

The package checksum (`ModelPackage.weights_sha256`) is the sha256 of the file's bytes with its
`metadata_props` entries (field 14) left out: every other top-level field — the graph with all its
weights and nodes (7), the opset imports (8), local functions (25), IR version and producer — is covered,
in file order. Metadata is excluded because the checksum is stored in it. Changing one weight byte, one
node or one opset version changes the checksum; re-writing only the metadata does not.

A package is one self-contained file: a tensor stored as ONNX "external data" (in a side file, which ONNX
Runtime reads from the working directory when given the bytes) is outside the checksum, so such a file is
refused. Finding them walks the graph's nodes, attributes and initializers, but only their field headers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

#: onnx.ModelProto field numbers (onnx/onnx.proto).
_GRAPH_FIELD = 7
_METADATA_FIELD = 14
_TRAINING_INFO_FIELD, _FUNCTIONS_FIELD = 20, 25
#: Where tensors can sit, by message: {field number: message type of the field} (onnx/onnx.proto).
_TENSOR_HOLDERS: dict[str, dict[int, str]] = {
    "graph": {1: "node", 5: "tensor", 15: "sparse"},  # node, initializer, sparse_initializer
    "function": {7: "node"},
    "training": {1: "graph", 2: "graph"},  # TrainingInfoProto: initialization, algorithm
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},  # values, indices
}
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 13, 14, 1
_ENTRY_KEY, _ENTRY_VALUE = 1, 2  # StringStringEntryProto

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class ModelFileError(ValueError):
    """The bytes are not a well-formed ONNX model (truncated, not protobuf, no graph)."""


class _Serializable(Protocol):
    def SerializeToString(self) -> bytes: ...  # noqa: N802 — protobuf's name


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ModelFileError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ModelFileError("varint longer than 10 bytes")


def iter_fields(buf: memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """Top-level fields of one protobuf message: (field number, wire type, start, value start, end).

    `start:end` spans the whole field (tag included), `value start:end` its payload (for length-delimited
    fields, without the length prefix).
    """
    pos = 0
    n = len(buf)
    while pos < n:
        start = pos
        tag, pos = _read_varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise ModelFileError(f"invalid field number 0 at byte {start}")
        if wire == _VARINT:
            _, pos = _read_varint(buf, pos)
            yield field, wire, start, start, pos
            continue
        if wire == _LEN:
            length, pos = _read_varint(buf, pos)
            value_start, pos = pos, pos + length
        elif wire == _I64:
            value_start, pos = pos, pos + 8
        elif wire == _I32:
            value_start, pos = pos, pos + 4
        else:  # groups (3, 4) are not used by ONNX; anything else is not protobuf
            raise ModelFileError(f"unsupported wire type {wire} at byte {start}")
        if pos > n:
            raise ModelFileError(f"field {field} runs past the end of the data (truncated file)")
        yield field, wire, start, value_start, pos


def _string_entry(buf: memoryview) -> tuple[str, str]:
    key = value = ""
    for field, wire, _start, vstart, end in iter_fields(buf):
        if wire != _LEN:
            continue
        text = bytes(buf[vstart:end]).decode("utf-8", errors="strict")
        if field == _ENTRY_KEY:
            key = text
        elif field == _ENTRY_VALUE:
            value = text
    return key, value


def _external_tensor(buf: memoryview, kind: str) -> bool:
    """Whether a message of type `kind` (see _TENSOR_HOLDERS, or "tensor") holds a tensor stored outside
    the file."""
    if kind == "tensor":
        for field, wire, start, _vstart, end in iter_fields(buf):
            if field == _TENSOR_EXTERNAL_DATA and wire == _LEN:
                return True
            if field == _TENSOR_DATA_LOCATION and wire == _VARINT:
                _, pos = _read_varint(buf, start)  # past the tag
                if _read_varint(buf, pos)[0] == _EXTERNAL:
                    return True
        return False
    children = _TENSOR_HOLDERS[kind]
    return any(
        wire == _LEN and field in children and _external_tensor(buf[vstart:end], children[field])
        for field, wire, _start, vstart, end in iter_fields(buf)
    )


@dataclass(frozen=True)
class ModelFile:
    """An ONNX model's bytes, its metadata_props (key → value) and its package checksum."""

    data: bytes
    metadata: dict[str, str]
    sha256: str


def parse_model_bytes(data: bytes) -> ModelFile:
    """Read metadata and checksum from serialized `onnx.ModelProto` bytes; `ModelFileError` if malformed."""
    if not data:
        raise ModelFileError("empty file")
    buf = memoryview(data)
    digest = hashlib.sha256()
    metadata: dict[str, str] = {}
    graphs = 0
    try:
        for field, wire, start, vstart, end in iter_fields(buf):
            if field == _METADATA_FIELD and wire == _LEN:
                key, value = _string_entry(buf[vstart:end])
                if key in metadata:  # two documents under one key: which one a reader takes is ambiguous
                    raise ModelFileError(f"metadata key {key!r} appears more than once")
                metadata[key] = value
                continue
            if field == _GRAPH_FIELD and wire == _LEN:
                graphs += 1
            holder = {_GRAPH_FIELD: "graph", _FUNCTIONS_FIELD: "function", _TRAINING_INFO_FIELD: "training"}.get(field)
            if holder and wire == _LEN and _external_tensor(buf[vstart:end], holder):
                raise ModelFileError("tensors are stored outside the file (ONNX external data), where the checksum "
                                     "does not cover them; a model package must be one self-contained file")
            digest.update(buf[start:end])
    except UnicodeDecodeError as exc:
        raise ModelFileError(f"metadata is not UTF-8 ({exc})") from exc
    if graphs != 1:
        raise ModelFileError(f"expected one graph in the model, found {graphs}: not an ONNX model")
    return ModelFile(data=data, metadata=metadata, sha256=digest.hexdigest())


def read_model_file(path: Path | str) -> ModelFile:
    """`parse_model_bytes` of a file (read once: the checked bytes are the bytes that get run)."""
    return parse_model_bytes(Path(path).read_bytes())


def package_sha256(model: bytes | Path | str | _Serializable) -> str:
    """The package checksum (see module docstring) of model bytes, an ONNX file, or an `onnx.ModelProto`."""
    if isinstance(model, (bytes, bytearray)):
        return parse_model_bytes(bytes(model)).sha256
    if isinstance(model, (str, Path)):
        return read_model_file(model).sha256
    return parse_model_bytes(model.SerializeToString()).sha256
