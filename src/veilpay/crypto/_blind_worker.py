"""Worker process for BlindingKey.blind: stdin = 32-byte scalar, u64 count, count * 32
point bytes; stdout = the blinded points. Exit 3 with the bad index on stderr for a
small-order point. Raw bytes only: no pickle."""

from __future__ import annotations

import struct
import sys

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from veilpay.crypto.x25519_blind import POINT, BlindingKey, InvalidPointError


def main() -> int:
    data = sys.stdin.buffer.read()
    if len(data) < 40:
        return 2
    key = BlindingKey(X25519PrivateKey.from_private_bytes(data[:32]))
    (count,) = struct.unpack("<Q", data[32:40])
    if len(data) != 40 + count * POINT:
        return 2
    points = np.frombuffer(data[40:], dtype=np.uint8).reshape(-1, POINT)
    try:
        out = key._blind_range(points, 0)
    except InvalidPointError as exc:
        sys.stderr.write(str(exc.index))
        return 3
    sys.stdout.buffer.write(out.tobytes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
