"""Worker process for BlindingPool. stdin: the curve id (1 X25519, 2 P-256) and the
32-byte scalar once, then batches of
(u64 count, count * 32 point bytes) until EOF. stdout per batch: u8 status, u64 value,
then for status 0 the blinded points (value = count); status 3 means a small-order
point at index value. Raw bytes only: no pickle."""

from __future__ import annotations

import struct
import sys

from veilpay.crypto.p256_oprf import OprfKey
from veilpay.crypto.points import POINT, InvalidPointError
from veilpay.crypto.x25519_blind import BlindingKey

KEYS: dict[int, type[BlindingKey] | type[OprfKey]] = {BlindingKey.curve_id: BlindingKey, OprfKey.curve_id: OprfKey}


def main() -> int:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    raw = stdin.read(33)
    if len(raw) != 33 or raw[0] not in KEYS:
        return 2
    key = KEYS[raw[0]].from_raw(raw[1:])
    while True:
        head = stdin.read(8)
        if not head:
            return 0
        if len(head) != 8:
            return 2
        (count,) = struct.unpack("<Q", head)
        data = stdin.read(count * POINT)
        if len(data) != count * POINT:
            return 2
        try:
            out = key._blind_bytes(data, 0)
        except InvalidPointError as exc:
            stdout.write(struct.pack("<BQ", 3, exc.index))
        else:
            stdout.write(struct.pack("<BQ", 0, count))
            stdout.write(out)
        stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
