"""The wire format: a fixed typed header, the label, the shape, then raw array bytes.

    offset size field
    0      2    magic b"VP"
    2      1    format version (1)
    3      1    dtype code (see DTYPES)
    4      8    sequence number of this message on its link (u64, little endian)
    12     16   session id
    28     2    label length L (u16)
    30     1    ndim D (u8, at most 8)
    31     1    reserved, zero
    32     8    payload length in bytes (u64)
    40     L    label, UTF-8
    40+L   8*D  shape (u64 each)
    ...         payload: the array in C order, little endian

Nothing here can carry code: a receiver allocates a buffer of the announced dtype and
size (bounded by ``max_payload``) and fills it with bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

__all__ = ["DTYPES", "FORMAT_VERSION", "Header", "HeaderError", "decode_fixed", "encode_header"]

FORMAT_VERSION = 1
MAGIC = b"VP"
FIXED = struct.Struct("<2sBBQ16sHBBQ")
MAX_NDIM = 8
MAX_LABEL = 256

DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<u8"),
    2: np.dtype("<i8"),
    3: np.dtype("u1"),
    4: np.dtype("<f8"),
    5: np.dtype("<u4"),
    6: np.dtype("<i4"),
    7: np.dtype("<u2"),
}
_CODES = {dt: code for code, dt in DTYPES.items()}


class HeaderError(ValueError):
    """A header that does not parse; the channel turns it into WireFormatError."""


@dataclass(frozen=True)
class Header:
    dtype: np.dtype
    seq: int
    session: bytes
    label: str
    shape: tuple[int, ...]
    payload_len: int


def encode_header(array: np.ndarray, seq: int, session: bytes, label: str) -> bytes:
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    code = _CODES.get(np.dtype(dtype))
    if code is None:
        raise TypeError(f"dtype {array.dtype} cannot travel on the wire")
    raw_label = label.encode()
    if len(raw_label) > MAX_LABEL or array.ndim > MAX_NDIM:
        raise ValueError("label or rank too large for the wire format")
    fixed = FIXED.pack(
        MAGIC, FORMAT_VERSION, code, seq, session, len(raw_label), array.ndim, 0, array.nbytes
    )
    return fixed + raw_label + struct.pack(f"<{array.ndim}Q", *array.shape)


def decode_fixed(raw: bytes) -> tuple[int, int, bytes, int, int, int, int]:
    """Parse the fixed part; returns (dtype code, seq, session, label len, ndim, payload len)."""
    magic, version, code, seq, session, label_len, ndim, reserved, payload_len = FIXED.unpack(raw)
    if magic != MAGIC:
        raise HeaderError("bad magic: not a veilpay message")
    if version != FORMAT_VERSION:
        raise HeaderError(f"wire format version {version}, expected {FORMAT_VERSION}")
    if code not in DTYPES:
        raise HeaderError(f"unknown dtype code {code}")
    if ndim > MAX_NDIM or label_len > MAX_LABEL or reserved != 0:
        raise HeaderError("header fields out of range")
    return code, seq, session, label_len, ndim, payload_len, version


def check_shape(dtype: np.dtype, shape: tuple[int, ...], payload_len: int) -> None:
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize if shape else dtype.itemsize
    if expected != payload_len:
        raise HeaderError(f"payload of {payload_len} bytes does not match shape {shape}")
