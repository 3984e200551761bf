"""SHA-256 digests of bytes and files (integrity checks of stored data), and of
ids (the 128-bit items of OT-based PSI)."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["item_digests", "sha256", "sha256_file"]


def sha256(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def sha256_file(path: str | Path) -> bytes:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def item_digests(ids: Sequence[bytes], dst: bytes) -> np.ndarray:
    """(n, 16) uint8: SHA-256(len(dst) || dst || id) truncated to 128 bits, one row per
    id (collisions among 2^30 ids: probability below 2^-68)."""
    prefix = struct.pack("<I", len(dst)) + dst
    h = hashlib.sha256
    joined = b"".join([h(prefix + i).digest()[:16] for i in ids])
    return np.frombuffer(joined, dtype=np.uint8).reshape(len(ids), 16).copy()
