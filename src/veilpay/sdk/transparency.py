"""The key transparency log: an append-only Merkle tree of certified key entries, as
RFC 9162 (Certificate Transparency 2.0) section 2.1 defines its hashes and proofs.

- Leaf hash: SHA-256(0x00 || leaf); interior node: SHA-256(0x01 || left || right);
  the tree hash of n leaves splits at the largest power of two below n.
- An inclusion proof (RFC 9162 2.1.3) shows a leaf is in the tree of a given head;
  a consistency proof (2.1.4) shows a head's tree extends an earlier head's.
- A signed tree head (``TreeHead``) is the size and root signed by the network's
  key authority (``veilpay.sdk.authority``): the authority appends an entry and
  signs the new head in one step, so a head is exactly a certification of every
  entry it covers. A party that keeps the last head it saw and accepts a newer one
  only with a consistency proof cannot be shown a history that was rewritten.

Pure functions over lists of leaf bytes and hashes; the log's size here is the
number of key entries of a network (thousands at most), so the tree is rebuilt from
the leaf hashes where a proof needs it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from veilpay.crypto.digest import sha256
from veilpay.crypto.signing import SigningKey, VerifyKey, b64d, b64e
from veilpay.errors import InvalidInput, LogInconsistent
from veilpay.sdk import wirejson

__all__ = ["EMPTY_ROOT", "TreeHead", "consistency_proof", "inclusion_proof", "leaf_hash", "node_hash", "tree_hash",
           "verify_consistency", "verify_inclusion"]

EMPTY_ROOT = sha256(b"")
_HEAD_LABEL = b"veilpay/key-log-head/v1\n"


def leaf_hash(leaf: bytes) -> bytes:
    return sha256(b"\x00" + leaf)


def node_hash(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


def tree_hash(leaves: Sequence[bytes]) -> bytes:
    """MTH of the leaf hashes ``leaves`` (already hashed with leaf_hash)."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(tree_hash(leaves[:k]), tree_hash(leaves[k:]))


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]) over leaf hashes (RFC 9162 2.1.3.1)."""
    n = len(leaves)
    if not 0 <= index < n:
        raise InvalidInput(f"leaf {index} is not in a tree of {n}")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return inclusion_proof(index, leaves[:k]) + [tree_hash(leaves[k:])]
    return inclusion_proof(index - k, leaves[k:]) + [tree_hash(leaves[:k])]


def consistency_proof(first: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(first, D[n]) over leaf hashes (RFC 9162 2.1.4.1); empty for first 0 or n."""
    n = len(leaves)
    if not 0 <= first <= n:
        raise InvalidInput(f"no consistency proof from {first} to {n}")
    if first in (0, n):
        return []

    def sub(m: int, d: Sequence[bytes], whole: bool) -> list[bytes]:
        if m == len(d):
            return [] if whole else [tree_hash(d)]
        k = _split(len(d))
        if m <= k:
            return sub(m, d[:k], whole) + [tree_hash(d[k:])]
        return sub(m - k, d[k:], False) + [tree_hash(d[:k])]

    return sub(first, leaves, True)


def verify_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes], root: bytes) -> bool:
    """Whether ``path`` proves the leaf hash ``leaf`` at ``index`` of the tree of
    ``size`` with ``root`` (RFC 9162 2.1.3.2)."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first: int, second: int, proof: Sequence[bytes], first_root: bytes,
                       second_root: bytes) -> bool:
    """Whether ``proof`` shows the tree of ``second`` leaves (``second_root``) extends
    the tree of ``first`` leaves (``first_root``) (RFC 9162 2.1.4.2)."""
    if not 0 <= first <= second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof  # every tree extends the empty one
    path = list(proof)
    if first & (first - 1) == 0:  # a power of two: the first tree is a node of the second
        path = [first_root, *path]
    if not path:
        return False
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


@dataclass(frozen=True)
class TreeHead:
    """A signed tree head: the log's size and root, when, signed by the key authority."""

    size: int
    root: bytes
    time_ms: int
    sig: bytes = b""

    def _message(self) -> bytes:
        return _HEAD_LABEL + wirejson.dumps_sorted({"size": self.size, "root": self.root.hex(), "time": self.time_ms})

    def signed(self, key: SigningKey) -> TreeHead:
        return TreeHead(self.size, self.root, self.time_ms, key.sign(self._message()))

    def verify(self, authority: VerifyKey) -> TreeHead:
        """This head, when the authority signed it; LogInconsistent otherwise."""
        if not authority.verify(self.sig, self._message()):
            raise LogInconsistent("a log head that the key authority did not sign")
        return self

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "root": self.root.hex(), "time": self.time_ms, "sig": b64e(self.sig)}

    @classmethod
    def from_json(cls, obj: Any) -> TreeHead:
        try:
            size, root, t = obj["size"], bytes.fromhex(obj["root"]), obj["time"]
            if isinstance(size, bool) or not isinstance(size, int) or size < 0 or len(root) != 32 \
                    or isinstance(t, bool) or not isinstance(t, int):
                raise ValueError("fields")
            return cls(size, root, t, b64d(obj["sig"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise LogInconsistent(f"a malformed log head: {exc}") from exc
