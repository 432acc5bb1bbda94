"""Read and write MindSpore ``.ckpt`` files without MindSpore or a protobuf dependency.

A checkpoint is one protobuf message (MindSpore ``checkpoint.proto``)::

    message Checkpoint { repeated Value value = 1; }
    message Value { string tag = 1; TensorProto tensor = 2; MapTensorProto maptensor = 3; }
    message TensorProto { repeated int64 dims = 1; string tensor_type = 2; bytes tensor_content = 3; }

``tensor_content`` is the raw little-endian array. MindSpore splits very large tensors into several
``Value`` entries with the same tag, whose contents are concatenated in order.
"""

from __future__ import annotations

import numpy as np

DTYPES = {
    "Float16": np.float16, "Float32": np.float32, "Float64": np.float64,
    "Int8": np.int8, "Int16": np.int16, "Int32": np.int32, "Int64": np.int64,
    "UInt8": np.uint8, "Bool": np.bool_,
}
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class CheckpointFormatError(ValueError):
    """The bytes are not a MindSpore checkpoint."""


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise CheckpointFormatError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes):
    """Yield (field number, wire type, value) of one message; value is an int or bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _read_varint(data, pos)
        elif wire == _BYTES:
            size, pos = _read_varint(data, pos)
            if pos + size > len(data):
                raise CheckpointFormatError("truncated field")
            value, pos = data[pos : pos + size], pos + size
        elif wire in (_FIXED64, _FIXED32):
            width = 8 if wire == _FIXED64 else 4
            value, pos = data[pos : pos + width], pos + width
        else:
            raise CheckpointFormatError(f"unsupported wire type {wire}")
        yield field, wire, value


def _parse_tensor(data: bytes) -> tuple[list[int], str, bytes]:
    dims: list[int] = []
    dtype, content = "", b""
    for field, wire, value in _fields(data):
        if field == 1 and wire == _VARINT:
            dims.append(value)
        elif field == 1 and wire == _BYTES:  # packed repeated int64
            pos = 0
            while pos < len(value):
                dim, pos = _read_varint(value, pos)
                dims.append(dim)
        elif field == 2:
            dtype = value.decode()
        elif field == 3:
            content = value
    return dims, dtype, content


def read_checkpoint(data: bytes) -> dict[str, np.ndarray]:
    """Parameter name -> array. Raises ``CheckpointFormatError`` on anything malformed."""
    pieces: dict[str, tuple[list[int], str, list[bytes]]] = {}
    for field, wire, value in _fields(data):
        if field != 1 or wire != _BYTES:
            raise CheckpointFormatError("not a MindSpore checkpoint (unexpected top-level field)")
        tag, tensor = None, None
        for sub_field, _, sub_value in _fields(value):
            if sub_field == 1:
                tag = sub_value.decode()
            elif sub_field == 2:
                tensor = _parse_tensor(sub_value)
        if tag is None or tensor is None:
            continue  # map tensors (embedding tables) have no dense tensor
        dims, dtype, content = tensor
        if tag in pieces:
            pieces[tag][2].append(content)
        else:
            pieces[tag] = (dims, dtype, [content])
    if not pieces:
        raise CheckpointFormatError("no tensors found")
    return {tag: _to_array(tag, dims, dtype, b"".join(parts)) for tag, (dims, dtype, parts) in pieces.items()}


def _to_array(tag: str, dims: list[int], dtype: str, content: bytes) -> np.ndarray:
    if dtype not in DTYPES:
        raise CheckpointFormatError(f"{tag}: unsupported tensor type {dtype!r}")
    array = np.frombuffer(content, dtype=DTYPES[dtype])
    if array.size != int(np.prod(dims)):
        raise CheckpointFormatError(f"{tag}: {array.size} values for shape {tuple(dims)} (truncated file?)")
    return array.reshape(dims)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _BYTES) + _varint(len(payload)) + payload


def write_checkpoint(arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise name -> array as MindSpore does (unpacked dims), for tests and round trips."""
    names = {np.dtype(v): k for k, v in DTYPES.items()}
    out = bytearray()
    for tag, array in arrays.items():
        array = np.ascontiguousarray(array)
        dims = b"".join(_varint(1 << 3 | _VARINT) + _varint(d) for d in array.shape)
        tensor = dims + _field(2, names[array.dtype].encode()) + _field(3, array.tobytes())
        out += _field(1, _field(1, tag.encode()) + _field(2, tensor))
    return bytes(out)
