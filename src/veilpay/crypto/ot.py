"""Symmetric-key and base-OT pieces of OT-extension PSI: base oblivious transfer over
X25519, per-column AES-CTR streams, AES-ECB on numpy blocks, and a correlation-robust
hash from fixed-key AES.

Base OT (semi-honest): public-key encryption with obliviously sampled public keys
(Gertner, Kannan, Malkin, Reingold, Viswanathan, FOCS 2000, on the Even-Goldreich-
Lempel template), with hashed Diffie-Hellman on X25519 as the encryption. For OT i the
receiver with choice c makes a real key pair (sk, pk_c = X25519(sk)) and samples
pk_{1-c} without learning its discrete log: the u-coordinate of [k]P for a random
curve point P and a random clamped k (which it then forgets). Both keys are uniform
points of the prime-order subgroup (clamping clears the cofactor), so the sender
cannot tell which is real. The sender sends one A = X25519(a) and derives
key_b = SHA-256(dst, i, A, pk_b, X25519(a, pk_b)); the receiver gets key_c from
X25519(sk, A). Reusing a across all keys is multi-recipient hashed ElGamal
(Bellare-Boldyreva-Staddon 2003). Learning key_{1-c} means computing CDH(A, pk_{1-c})
for a point whose log nobody knows. That is exactly the semi-honest threat model: a
receiver that samples pk_{1-c} some other way (malicious) is out of scope.

The correlation-robust hash H(b, r) of a 512-bit row r = r_0..r_3 uses a fixed-key
AES permutation pi (the key is public, per session):
    w_i = r_i xor tau_i,   z = XOR_i (pi(w_i) xor w_i),   H(b, r) = pi(z xor b) xor z xor b
It is the shape of the AES hashing in libOTe's KKRT encoder (MMO per block, then MMO
again) with tweaks in the style of Guo et al. 2020 (TCCR): tau_i = i + 1 in the upper
half of block i, so H is not symmetric in the block order, and the OT index b. Since
x -> pi(x) xor x is one-way for a random permutation, checking a guess means guessing
every unknown bit of r at once: no meet-in-the-middle across the four blocks.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from veilpay.crypto.digest import sha256
from veilpay.crypto.points import InvalidPointError
from veilpay.errors import InvalidInput
from veilpay.packed import PackedIds

__all__ = [
    "AesEcb",
    "id_prf",
    "BaseOtReceiver",
    "BaseOtSender",
    "ColumnPrgs",
    "correlation_robust_hash",
    "tccr_hash",
    "oblivious_point",
]

P25519 = 2**255 - 19
_A24 = 486662  # Curve25519: v^2 = u^3 + A u^2 + u
_DST = b"veilpay/ot/x25519-gkm/v1"
KEY_BYTES = 16
# block i of a hashed row is tweaked by i + 1 in its upper 8 bytes (the OT index goes
# in the lower 8 of the final block), so that reordering blocks changes the hash
_BLOCK_TWEAKS = np.zeros((8, 16), dtype=np.uint8)
_BLOCK_TWEAKS[:, 8] = np.arange(1, 9, dtype=np.uint8)


def _on_curve(u: int) -> bool:
    """True when u is the u-coordinate of a point on Curve25519 (not on its twist)."""
    rhs = (u * u * u + _A24 * u * u + u) % P25519
    return rhs == 0 or pow(rhs, (P25519 - 1) // 2, P25519) == 1


def oblivious_point(rand: Callable[[int], bytes] = secrets.token_bytes) -> bytes:
    """A uniform point of Curve25519's prime-order subgroup whose discrete log nobody
    knows: [k]P for a random curve point P (rejection on the twist) and a random
    clamped k, which is dropped."""
    while True:
        u = int.from_bytes(rand(32), "little") & ((1 << 255) - 1)
        if u >= P25519 or not _on_curve(u):
            continue
        try:
            return X25519PrivateKey.from_private_bytes(rand(32)).exchange(
                X25519PublicKey.from_public_bytes(u.to_bytes(32, "little")))
        except ValueError:  # a small-order P (8 of the 2^254 curve points): draw again
            continue


def _ot_key(index: int, sender_public: bytes, pk: bytes, shared: bytes) -> bytes:
    return sha256(_DST + struct.pack("<Q", index) + sender_public + pk + shared)[:KEY_BYTES]


class BaseOtSender:
    """Gets both keys of each OT. ``secret``: 32 bytes for known-answer tests only."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._a = X25519PrivateKey.from_private_bytes(secret if secret is not None else secrets.token_bytes(32))
        self.public = self._a.public_key().public_bytes_raw()

    def __repr__(self) -> str:
        return "BaseOtSender(<keyed>)"

    def keys(self, public_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(key_0, key_1), each (count, 16) uint8, from the receiver's (count, 2, 32)
        public keys. A small-order key raises InvalidPointError."""
        if public_keys.dtype != np.uint8 or public_keys.ndim != 3 or public_keys.shape[1:] != (2, 32):
            raise InvalidInput(f"base OT public keys must be (count, 2, 32) bytes, got {public_keys.shape}")
        out = np.empty((2, len(public_keys), KEY_BYTES), dtype=np.uint8)
        for i, pair in enumerate(public_keys):
            for b in (0, 1):
                pk = pair[b].tobytes()
                try:
                    shared = self._a.exchange(X25519PublicKey.from_public_bytes(pk))
                except ValueError as exc:
                    raise InvalidPointError(i, "small-order base OT key") from exc
                out[b, i] = np.frombuffer(_ot_key(i, self.public, pk, shared), dtype=np.uint8)
        return out[0], out[1]


class BaseOtReceiver:
    """Gets key_{c_i} of OT i for its choice bits ``choices``. ``rand``: the randomness
    source (OS entropy; a fixed stream only in known-answer tests)."""

    def __init__(self, choices: np.ndarray, rand: Callable[[int], bytes] = secrets.token_bytes) -> None:
        bits = np.asarray(choices)
        if bits.ndim != 1 or not np.isin(bits, (0, 1)).all():
            raise InvalidInput("base OT choices must be a vector of 0/1")
        self._choices = bits.astype(np.uint8)
        self._keys = [X25519PrivateKey.from_private_bytes(rand(32)) for _ in range(len(bits))]
        pks = np.empty((len(bits), 2, 32), dtype=np.uint8)
        for i, (c, sk) in enumerate(zip(self._choices, self._keys, strict=True)):
            pks[i, c] = np.frombuffer(sk.public_key().public_bytes_raw(), dtype=np.uint8)
            pks[i, 1 - c] = np.frombuffer(oblivious_point(rand), dtype=np.uint8)
        self.public_keys = pks

    def __repr__(self) -> str:
        return f"BaseOtReceiver(count={len(self._keys)})"

    def keys(self, sender_public: bytes) -> np.ndarray:
        """(count, 16) uint8: key_{c_i} of each OT. A small-order A raises InvalidPointError."""
        if len(sender_public) != 32:
            raise InvalidInput("the base OT sender's key is 32 bytes")
        try:
            peer = X25519PublicKey.from_public_bytes(sender_public)
            out = [_ot_key(i, sender_public, self.public_keys[i, c].tobytes(), sk.exchange(peer))
                   for i, (c, sk) in enumerate(zip(self._choices, self._keys, strict=True))]
        except ValueError as exc:
            raise InvalidPointError(0, "small-order base OT sender key") from exc
        return np.frombuffer(b"".join(out), dtype=np.uint8).reshape(len(out), KEY_BYTES).copy()


class ColumnPrgs:
    """One AES-128-CTR keystream per 16-byte seed (zero IV: each seed keys one
    stream). ``next(width)`` gives the next ``width`` bytes of every stream as the rows
    of one array, a buffer reused by the following call."""

    def __init__(self, seeds: np.ndarray) -> None:
        if seeds.dtype != np.uint8 or seeds.ndim != 2 or seeds.shape[1] != KEY_BYTES:
            raise InvalidInput("column PRG seeds must be (count, 16) bytes")
        self._enc = [Cipher(algorithms.AES(s.tobytes()), modes.CTR(bytes(16))).encryptor() for s in seeds]
        self._zeros = b""
        self._buf = np.empty(0, dtype=np.uint8)

    def __repr__(self) -> str:
        return f"ColumnPrgs(count={len(self._enc)})"

    def next(self, width: int) -> np.ndarray:
        rows = len(self._enc)
        if len(self._zeros) < width:
            self._zeros = bytes(width)
        if self._buf.size < rows * width + 16:  # update_into wants a block of spare room
            self._buf = np.empty(rows * width + 16, dtype=np.uint8)
        src, view = memoryview(self._zeros)[:width], memoryview(self._buf)  # type: ignore[arg-type]
        for i, enc in enumerate(self._enc):
            enc.update_into(src, view[i * width : (i + 1) * width + 15])  # type: ignore[arg-type]
        return self._buf[: rows * width].reshape(rows, width)


class AesEcb:
    """AES-128 applied block by block to (..., 16) uint8 arrays. With a public key it
    is the fixed-key permutation of the hashes; with a secret one, a PRF."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 16:
            raise InvalidInput("an AES-128 key is 16 bytes")
        # ECB on purpose: a block-wise permutation (fixed-key hashing, PRF of a single block), never encryption
        self._enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305

    def __repr__(self) -> str:
        return "AesEcb(<keyed>)"

    def __call__(self, blocks: np.ndarray) -> np.ndarray:
        if blocks.dtype != np.uint8 or blocks.shape[-1] != 16:
            raise InvalidInput("AES blocks must be (..., 16) uint8")
        src = np.ascontiguousarray(blocks)
        buf = np.empty(src.size + 16, dtype=np.uint8)
        if src.size:
            self._enc.update_into(memoryview(src.reshape(-1)), memoryview(buf))  # type: ignore[arg-type]
        return buf[: src.size].reshape(src.shape)


def correlation_robust_hash(pi: AesEcb, rows: np.ndarray, index: np.ndarray, nbytes: int) -> np.ndarray:
    """H(b, r) of the module docstring for each (n, 64) row with its OT index b,
    truncated to ``nbytes`` (at most 16)."""
    if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] % 16:
        raise InvalidInput("rows must be (n, 16k) uint8")
    if not 1 <= nbytes <= 16 or index.shape != (len(rows),):
        raise InvalidInput("nbytes must be 1..16 and index one per row")
    blocks = rows.reshape(len(rows), rows.shape[1] // 16, 16) ^ _BLOCK_TWEAKS[: rows.shape[1] // 16]
    mixed = pi(blocks)
    np.bitwise_xor(mixed, blocks, out=mixed)
    z = np.bitwise_xor.reduce(mixed.view(np.uint64), axis=1)  # (n, 2) words
    z[:, 0] ^= index.astype(np.uint64)
    zb = z.view(np.uint8)
    out = pi(zb)
    np.bitwise_xor(out, zb, out=out)
    return out[:, :nbytes]


def tccr_hash(pi: AesEcb, x: np.ndarray, tweak: np.ndarray, nbytes: int) -> np.ndarray:
    """H(x, i) = pi(pi(x) xor i) xor pi(x) for (n, 16) blocks x and (n, 16) tweaks i,
    truncated to ``nbytes``: the tweakable circular correlation-robust hash of Guo, Katz,
    Wang, Weng and Yu ("Better concrete security for half-gates garbling (in the
    multi-instance setting)", CRYPTO 2020, section 7), two fixed-key AES calls a block."""
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 16 or tweak.shape != x.shape or tweak.dtype != np.uint8:
        raise InvalidInput("x and tweak must be (n, 16) uint8 of the same shape")
    if not 1 <= nbytes <= 16:
        raise InvalidInput("nbytes must be 1..16")
    y = pi(x)
    z = np.bitwise_xor(y, tweak)
    out = pi(z)
    np.bitwise_xor(out, y, out=out)
    return out[:, :nbytes]


def id_prf(key: bytes, ids: Sequence[bytes]) -> np.ndarray:
    """(n, 16) uint8: CBC-MAC under AES-128 ``key`` of len(id) (8 bytes LE) || id,
    zero-padded to whole blocks, one row per id.

    With the length in front no encoded id is a prefix of another, and CBC-MAC is a
    PRF on prefix-free messages (Petrank and Rackoff 2000; Bellare, Kilian, Rogaway
    2000), so ids fixed before the key is drawn map to 128-bit items that collide
    with probability about (n blocks)^2 / 2^128. This is ISO/IEC 9797-1 MAC algorithm
    1; it runs as one AES-ECB call per block position over all ids of a length, which
    is what makes it 10x faster than a SHA-256 call per id."""
    if isinstance(ids, PackedIds):  # the ids already lie in one buffer: no join, no per-id len()
        data, offsets = ids.data, ids.offsets
    else:
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)), out=offsets[1:])
        data = np.frombuffer(b"".join(ids), dtype=np.uint8)
    return _cbc_mac_ids(key, data, offsets)


def _cbc_mac_ids(key: bytes, data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """`id_prf` over ids ``data[offsets[i]:offsets[i + 1]]``: the padded messages of
    each length are gathered straight from the buffer."""
    n = len(offsets) - 1
    out = np.empty((n, 16), dtype=np.uint8)
    if not n:
        return out
    aes = AesEcb(key)
    lengths = np.diff(offsets)
    uniform = int(lengths.min()) == int(lengths.max())  # the common case: one id format
    starts = offsets[:-1]
    for length in [int(lengths[0])] if uniform else np.unique(lengths).tolist():
        rows = np.arange(n) if uniform else np.flatnonzero(lengths == length)
        nblocks = (8 + length + 15) // 16
        msg = np.zeros((len(rows), nblocks * 16), dtype=np.uint8)
        msg[:, :8] = np.frombuffer(struct.pack("<Q", length), dtype=np.uint8)
        if uniform:
            msg[:, 8 : 8 + length] = data[offsets[0] : offsets[-1]].reshape(n, length)
        elif length:
            msg[:, 8 : 8 + length] = data[starts[rows][:, None] + np.arange(length)]
        blocks = msg.reshape(len(rows), nblocks, 16)
        state = aes(blocks[:, 0])
        for b in range(1, nblocks):
            np.bitwise_xor(state, blocks[:, b], out=state)
            state = aes(state)
        out[rows] = state
    return out
