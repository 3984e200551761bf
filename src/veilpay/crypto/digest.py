"""SHA-256 digests of bytes and files, for integrity checks of stored data."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["sha256", "sha256_file"]


def sha256(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def sha256_file(path: str | Path) -> bytes:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.digest()
