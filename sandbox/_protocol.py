"""Wire format between the host, the worker and the program process. JSON only, never pickle.

A frame is ``>II`` (header length, blob length), a UTF-8 JSON header, then raw array bytes.
Numpy arrays in ``args`` travel as raw bytes of an allowlisted numeric dtype, described in
the header by ``{ARRAY_MARKER: [blob index, dtype, shape]}``; nothing in a frame can name a
type or a callable, so decoding cannot run code.

This module is shared by the host (imported as ``sandbox._protocol``) and the worker (loaded
by file path), so it imports only the standard library and numpy.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np

ARRAY_MARKER = "\x00ndarray"
ALLOWED_ARRAY_KINDS = {"b", "i", "u", "f"}
MAX_DEPTH = 64
FRAME_PREFIX = struct.Struct(">II")


class ValueNotData(TypeError):
    """A value that is not plain JSON data (or a numeric numpy array on the way in)."""


class ValueTooLarge(ValueError):
    """A value whose JSON form exceeds the size bound."""


# -- framing -------------------------------------------------------------------------------
def encode_frame(header: dict, blobs: list[bytes] = ()) -> bytes:
    header = dict(header, blobs=[len(b) for b in blobs])
    head = json.dumps(header, separators=(",", ":")).encode()
    body = b"".join(blobs)
    return FRAME_PREFIX.pack(len(head), len(body)) + head + body


def read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError("the other side closed the pipe")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, max_bytes: int = 1 << 31) -> tuple[dict, list[memoryview]]:
    head_len, body_len = FRAME_PREFIX.unpack(read_exact(fd, FRAME_PREFIX.size))
    if head_len + body_len > max_bytes:
        raise ValueTooLarge(f"frame of {head_len + body_len} bytes exceeds {max_bytes}")
    header = json.loads(read_exact(fd, head_len))
    if not isinstance(header, dict):
        raise ValueError("frame header is not a JSON object")
    body = memoryview(bytearray(read_exact(fd, body_len))) if body_len else memoryview(b"")
    blobs, offset = [], 0
    for size in header.get("blobs", []):
        blobs.append(body[offset: offset + size])
        offset += size
    return header, blobs


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# -- arguments: host -> program ---------------------------------------------------------------
def encode_args(args: dict[str, Any]) -> tuple[Any, list[bytes]]:
    """Plain data with numpy arrays swapped for blob references. Raises ValueNotData."""
    blobs: list[bytes] = []

    def enc(value: Any, where: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise ValueNotData(f"{where} is nested deeper than {MAX_DEPTH} levels")
        if value is None or type(value) in (bool, int, float, str):
            return value
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in ALLOWED_ARRAY_KINDS:
                raise ValueNotData(f"{where} is a numpy array of dtype {value.dtype}; only bool, int, uint and float arrays can be passed")
            arr = np.ascontiguousarray(value)
            blobs.append(arr.tobytes())
            return {ARRAY_MARKER: [len(blobs) - 1, arr.dtype.str, list(arr.shape)]}
        if isinstance(value, np.generic) and value.dtype.kind in ALLOWED_ARRAY_KINDS:
            return value.item()
        if isinstance(value, str):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [enc(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    raise ValueNotData(f"{where} has a key {k!r} of type {type(k).__name__}; keys must be strings")
                if k == ARRAY_MARKER:
                    raise ValueNotData(f"{where} uses the reserved key {k!r}")
                out[str(k)] = enc(v, f"{where}[{k!r}]", depth + 1)
            return out
        raise ValueNotData(
            f"{where} has type {type(value).__name__}; pass plain data (dict, list, str, int, float, bool, None) or numpy arrays"
        )

    return {k: enc(v, f"args[{k!r}]", 1) for k, v in args.items()}, blobs


def decode_args(data: Any, blobs: list[memoryview]) -> Any:
    """Inverse of :func:`encode_args`; arrays come back writable and owned by the program."""

    def dec(value: Any) -> Any:
        if isinstance(value, list):
            return [dec(v) for v in value]
        if isinstance(value, dict):
            if len(value) == 1 and ARRAY_MARKER in value:
                index, dtype, shape = value[ARRAY_MARKER]
                dt = np.dtype(dtype)
                if dt.kind not in ALLOWED_ARRAY_KINDS:
                    raise ValueError(f"array dtype {dtype} is not allowed")
                return np.frombuffer(blobs[index], dtype=dt).reshape(shape).copy()
            return {k: dec(v) for k, v in value.items()}
        return value

    return dec(data)


# -- results: program -> host -----------------------------------------------------------------
def to_json_data(value: Any, max_bytes: int) -> Any:
    """Converts a program's return value into plain JSON data without calling any of its
    methods (only exact built-in types and numpy values are accepted). Raises ValueNotData
    or ValueTooLarge. The byte count is an estimate used to stop early on huge values."""
    budget = [max_bytes]

    def spend(n: int) -> None:
        budget[0] -= n
        if budget[0] < 0:
            raise ValueTooLarge(f"the return value is larger than {max_bytes} bytes as JSON")

    def conv(v: Any, where: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise ValueNotData(f"the return value is nested deeper than {MAX_DEPTH} levels (at {where})")
        t = type(v)
        if v is None or t is bool:
            spend(5)
            return v
        if t is int:
            if v.bit_length() > 4096:
                raise ValueTooLarge(f"{where} is an integer with {v.bit_length()} bits")
            spend(v.bit_length() // 3 + 2)
            return v
        if t is float:
            spend(24)
            return v
        if t is str:
            spend(len(v) + 2)
            return v
        if t is list or t is tuple:
            spend(2)
            return [conv(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(v)]
        if t is dict:
            spend(2)
            out = {}
            for k, item in dict.items(v):
                tk = type(k)
                if tk is str:
                    key = k
                elif tk in (int, bool) or k is None:
                    key = json.dumps(k)  # the key JSON itself would write
                elif isinstance(k, np.generic) and k.dtype.kind in "biuU":
                    key = str(k.item())
                else:
                    raise ValueNotData(f"{where} has a key of type {tk.__name__}; dict keys must be strings")
                spend(len(key) + 4)
                out[key] = conv(item, f"{where}[{key!r}]", depth + 1)
            return out
        if isinstance(v, np.ndarray):
            if v.dtype.kind not in ALLOWED_ARRAY_KINDS:
                raise ValueNotData(f"{where} is a numpy array of dtype {v.dtype}")
            spend(v.size * 4)
            return conv(v.tolist(), where, depth)
        if isinstance(v, np.generic):
            if v.dtype.kind in ALLOWED_ARRAY_KINDS or v.dtype.kind == "U":
                return conv(v.item(), where, depth)
        raise ValueNotData(
            f"{where} is of type {t.__name__}; return plain data (dict, list, str, int, float, bool, None)"
        )

    return conv(value, "the return value", 0)


def validate_json_data(value: Any, depth: int = 0) -> bool:
    """True when ``value`` is made only of JSON types (the host re-checks what it receives)."""
    if depth > MAX_DEPTH + 2:
        return False
    if value is None or type(value) in (bool, int, str):
        return True
    if type(value) is float:
        return True
    if type(value) is list:
        return all(validate_json_data(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(type(k) is str and validate_json_data(v, depth + 1) for k, v in value.items())
    return False
