"""The compact value format of the online store: one blob per (entity, feature group).

Layout (little endian, 16-byte header so the vector starts 8-byte aligned)::

    offset  size  field
    0       1     format            uint8, FORMAT_V1 = 1
    1       3     reserved          zero
    4       4     schema version    uint32 fingerprint of the group's feature name list
    8       8     event time        int64, microseconds since the Unix epoch (UTC)
    16      8*F   values            float64[F], in the order of the feature name list

A missing value (null) is stored as NaN, and a NaN read back means missing:
the online store does not distinguish "null" from "not a number".
``+inf``/``-inf`` are kept as they are.

The event time sits at bytes 8..15 in every format version: the Lua guard of
the Redis store reads it there to refuse older writes, so future formats must
keep it in place.

Encoding and decoding of many vectors is vectorized with numpy (one array
fill and one ``tobytes``); decoding one vector is a ``struct`` unpack and a
zero-copy ``np.frombuffer``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FORMAT_V1 = 1
HEADER = struct.Struct("<B3xIq")
HEADER_SIZE = HEADER.size  # 16
EVENT_TIME_OFFSET = 8
VALUE_DTYPE = np.dtype("<f8")


def schema_fingerprint(feature_names: Sequence[str]) -> int:
    """The schema version of a feature name list: a stable uint32.

    Any change of names or order gives a new number (with overwhelming
    probability), so a reader never decodes a vector with the wrong names.
    """
    text = "loom-online-v1\n" + "\n".join(feature_names)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")


def blob_size(n_features: int) -> int:
    """Bytes of one encoded vector with ``n_features`` values."""
    return HEADER_SIZE + VALUE_DTYPE.itemsize * n_features


def as_matrix(values: object, n_features: int) -> np.ndarray:
    """``values`` as a C-contiguous float64 (n, n_features) matrix; None becomes NaN.

    One vector (shape ``(n_features,)``) is accepted as a matrix of one row.
    """
    matrix = np.asarray(values, dtype=np.float64)  # numpy maps None to NaN for float dtypes
    if matrix.ndim == 1 and matrix.size == n_features:
        matrix = matrix.reshape(1, n_features)
    if matrix.ndim != 2 or matrix.shape[1] != n_features:
        raise ValueError(f"expected a matrix of shape (rows, {n_features}), got shape {matrix.shape}")
    return np.ascontiguousarray(matrix)


def encode_matrix(values: np.ndarray, event_times_us: np.ndarray, schema_version: int) -> np.ndarray:
    """Encode n vectors at once: a (n, blob_size) uint8 matrix, one row per blob.

    ``values`` is float64 (n, F) with NaN for missing, ``event_times_us`` int64 (n,).
    """
    values = np.ascontiguousarray(values, dtype=np.float64)
    rows, n_features = values.shape
    times = np.asarray(event_times_us, dtype=np.int64)
    if times.shape != (rows,):
        raise ValueError(f"expected {rows} event times, got shape {times.shape}")
    out = np.zeros((rows, blob_size(n_features)), dtype=np.uint8)
    out[:, 0] = FORMAT_V1
    out[:, 4:8].view("<u4")[:, 0] = schema_version
    out[:, 8:16].view("<i8")[:, 0] = times
    out[:, HEADER_SIZE:].view(VALUE_DTYPE)[:] = values
    return out


def encode_many(values: np.ndarray, event_times_us: np.ndarray, schema_version: int) -> list[bytes]:
    """Encode n vectors into n blobs (vectorized; slicing one buffer is the only loop)."""
    encoded = encode_matrix(values, event_times_us, schema_version)
    width = encoded.shape[1]
    buffer = encoded.tobytes()
    return [buffer[start : start + width] for start in range(0, len(buffer), width)]


def encode_one(values: Sequence[float | None] | np.ndarray, event_time_us: int, schema_version: int) -> bytes:
    """Encode one vector (None or NaN = missing)."""
    vector = np.ascontiguousarray(values, dtype=VALUE_DTYPE)  # None -> NaN
    return HEADER.pack(FORMAT_V1, schema_version, int(event_time_us)) + vector.tobytes()


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed part of a blob."""

    format: int
    schema_version: int
    event_time_us: int


def read_header(blob: bytes) -> Header | None:
    """The header of ``blob``, or None when the blob is too short to hold one."""
    if len(blob) < HEADER_SIZE:
        return None
    return Header(*HEADER.unpack_from(blob))


def decode_one(blob: bytes) -> tuple[Header, np.ndarray]:
    """Header and values of one blob; the values are a read-only zero-copy view.

    Raises ValueError if the blob is not a FORMAT_V1 vector.
    """
    header = read_header(blob)
    if header is None or header.format != FORMAT_V1 or (len(blob) - HEADER_SIZE) % VALUE_DTYPE.itemsize:
        raise ValueError(f"not a Loom online vector (format {FORMAT_V1}): {len(blob)} bytes")
    return header, np.frombuffer(blob, dtype=VALUE_DTYPE, offset=HEADER_SIZE)


def decode_many(blobs: Sequence[bytes], n_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decode blobs of one size at once: (formats, schema versions, event times µs, values (n, F)).

    All blobs must be ``blob_size(n_features)`` bytes long (callers sort out
    the others first); the arrays are read-only views of one joined buffer.
    """
    return decode_many_joined(b"".join(blobs), len(blobs), n_features)


def decode_many_joined(
    joined: bytes, count: int, n_features: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`decode_many` of ``count`` blobs already joined into one buffer."""
    width = blob_size(n_features)
    if len(joined) != width * count:
        raise ValueError(f"every blob must be {width} bytes for {n_features} features")
    matrix = np.frombuffer(joined, dtype=np.uint8).reshape(count, width)
    formats = matrix[:, 0]
    versions = matrix[:, 4:8].view("<u4")[:, 0]
    times = matrix[:, 8:16].view("<i8")[:, 0]
    values = matrix[:, HEADER_SIZE:].view(VALUE_DTYPE)
    return formats, versions, times, values
