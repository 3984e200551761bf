"""Two-party ECDH-PSI on X25519 (Meadows 1986; Huberman-Franklin-Hogg 1999).

Messages on the link (each a typed veilpay message, so a truncated or foreign
message is a WireFormatError):

    R -> S  hello: version, mode, reveal, |X|, 16 random salt bytes
    S -> R  hello: the same fields for S
    R -> S  A  = [a] H(x) for R's ids, in R's order
    S -> R  B  = [b] H(y) for S's ids, shuffled
    S -> R  BA = [b] A, in A's order (shuffled in cardinality mode)
    R -> S  matches: positions in B of the common ids (only when both learn them)

R computes [a] B and compares it with BA. S sends B before blinding A, so both
parties' scalar multiplications overlap. The salt is H(salt_R || salt_S): neither
side fixes it alone, and each session's hashes differ. What each side learns is
written in docs/psi.md.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from veilpay.crypto import (
    BlindingKey,
    InvalidPointError,
    Prg,
    check_points,
    hash_to_points,
    label_digest,
    random_seed,
)
from veilpay.errors import InvalidInput, InvalidPoint, ProtocolMismatch
from veilpay.net import Communicator

__all__ = ["MODES", "PSI_VERSION", "PsiResult", "ecdh_psi"]

PSI_VERSION = 1
DST = b"veilpay/psi/ecdh-x25519/v1"
MODES = {"intersection": 1, "cardinality": 2}
REVEAL = {"receiver": 1, "both": 2}


@dataclass
class PsiResult:
    """``indices``: positions in this party's id list that are common (sorted; None in
    cardinality mode); ``size``: the intersection size; ``peer_size``: |peer's set|."""

    indices: np.ndarray | None
    size: int
    peer_size: int


def _hello(n: int, mode: str, reveal: str, salt: bytes) -> np.ndarray:
    head = np.array([PSI_VERSION, MODES[mode], REVEAL[reveal], n], dtype=np.uint64)
    return np.concatenate([head.view(np.uint8), np.frombuffer(salt, dtype=np.uint8)])


def _check_hello(peer: str, got: np.ndarray, mode: str, reveal: str) -> tuple[int, bytes]:
    if got.dtype != np.uint8 or got.shape != (48,):
        raise ProtocolMismatch(peer, "hello message of the wrong shape")
    version, m, r, n = (int(v) for v in got[:32].view(np.uint64))
    if version != PSI_VERSION:
        raise ProtocolMismatch(peer, f"peer speaks ECDH-PSI version {version}, we speak {PSI_VERSION}")
    if m != MODES[mode] or r != REVEAL[reveal]:
        raise ProtocolMismatch(peer, f"peer asks for mode {m} / reveal {r}; we run {mode} / {reveal}")
    return n, got[32:].tobytes()


def _points(peer: str, arr: np.ndarray, n: int) -> np.ndarray:
    if arr.dtype != np.uint8 or arr.shape != (n, 32):
        raise InvalidPoint(peer, f"expected {n} points of 32 bytes, got {arr.dtype} {arr.shape}")
    try:
        check_points(arr)
    except InvalidPointError as exc:
        raise InvalidPoint(peer, str(exc)) from exc
    return arr


def _blind(key: BlindingKey, peer: str, points: np.ndarray, workers: int | None) -> np.ndarray:
    try:
        return key.blind(points, workers=workers)
    except InvalidPointError as exc:
        raise InvalidPoint(peer, str(exc)) from exc


def _permutation(n: int) -> np.ndarray:
    """A random permutation: sort order of 64-bit keys from an AES-CTR PRG seeded by OS
    entropy (a tie, probability below n^2 / 2^65, only biases, never repeats)."""
    return np.argsort(Prg(random_seed()).uint64((n,)), kind="stable")


def ecdh_psi(
    comm: Communicator,
    peer: str,
    role: str,
    ids: Sequence[bytes],
    mode: str = "intersection",
    reveal: str = "receiver",
    workers: int | None = None,
) -> PsiResult:
    """Run one side of ECDH-PSI with ``peer``. ``ids`` must be distinct byte strings
    (psi.data normalises and deduplicates); the result indexes into them."""
    if role not in ("receiver", "sender"):
        raise InvalidInput(f"role must be 'receiver' or 'sender', not {role!r}")
    if mode not in MODES or reveal not in REVEAL:
        raise InvalidInput(f"mode must be one of {sorted(MODES)}, reveal one of {sorted(REVEAL)}")
    if len(set(ids)) != len(ids):
        raise InvalidInput("ids must be distinct: deduplicate first")
    salt_mine = secrets.token_bytes(16)
    got = comm.exchange("psi.hello", {peer: [_hello(len(ids), mode, reveal, salt_mine)]}, {peer: 1})
    peer_n, salt_peer = _check_hello(peer, got[peer][0], mode, reveal)
    salts = salt_mine + salt_peer if role == "receiver" else salt_peer + salt_mine
    salt = label_digest("veilpay/psi/salt/" + salts.hex(), 32)
    key = BlindingKey.generate()
    mine = hash_to_points(ids, salt, DST)
    if role == "receiver":
        comm.exchange("psi.A", {peer: [_blind(key, peer, mine, workers)]})
        b = _points(peer, comm.exchange("psi.B", recv={peer: 1})[peer][0], peer_n)
        ab = _blind(key, peer, b, workers)
        ba = _points(peer, comm.exchange("psi.BA", recv={peer: 1})[peer][0], len(ids))
        lookup = {row.tobytes(): j for j, row in enumerate(ab)}
        hits = [(i, lookup[row.tobytes()]) for i, row in enumerate(ba) if row.tobytes() in lookup]
        if reveal == "both":
            payload = np.array([j for _, j in hits] if mode == "intersection" else [len(hits)], dtype=np.uint64)
            comm.exchange("psi.matches", {peer: [payload]})
        if mode == "cardinality":
            return PsiResult(None, len(hits), peer_n)
        return PsiResult(np.array(sorted(i for i, _ in hits), dtype=np.int64), len(hits), peer_n)
    perm = _permutation(len(ids))  # S's order never reaches R
    comm.exchange("psi.B", {peer: [_blind(key, peer, mine[perm], workers)]})
    a = _points(peer, comm.exchange("psi.A", recv={peer: 1})[peer][0], peer_n)
    ba = _blind(key, peer, a, workers)
    if mode == "cardinality":
        ba = ba[_permutation(len(ba))]  # R must not learn which of its ids matched
    comm.exchange("psi.BA", {peer: [ba]})
    if reveal == "receiver":
        return PsiResult(None, -1, peer_n)
    answer = comm.exchange("psi.matches", recv={peer: 1})[peer][0]
    if mode == "cardinality":
        if answer.shape != (1,):
            raise ProtocolMismatch(peer, "cardinality answer of the wrong shape")
        return PsiResult(None, int(answer[0]), peer_n)
    if answer.dtype != np.uint64 or answer.ndim != 1 or (len(answer) and int(answer.max()) >= len(ids)):
        raise ProtocolMismatch(peer, "match positions out of range")
    return PsiResult(np.sort(perm[answer.astype(np.int64)]), len(answer), peer_n)
