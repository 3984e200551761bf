"""Two-party ECDH-PSI on X25519 (Meadows 1986; Huberman-Franklin-Hogg 1999).

Messages on the link (each a typed veilpay message, so a truncated or foreign
message is a WireFormatError); point sets travel in chunks of the sender's chunk size:

    R -> S  hello: version, mode, reveal, |X|, chunk, 16 random salt bytes
    S -> R  hello: the same fields for S
    R -> S  A  = [a] H(x) for R's ids, in R's order
    S -> R  B  = [b] H(y) for S's ids, shuffled
    S -> R  BA = [b] A, in A's order (shuffled in cardinality mode)
    R -> S  matches: positions in B of the common ids (only when both learn them)

Each party hashes chunk by chunk while its worker pool (one process per core) blinds
the chunks before, and sends each chunk as soon as it is blinded; peer chunks are
blinded as they arrive. R computes [a] B and compares it with BA. The salt is
H(salt_R || salt_S): neither side fixes it alone, and each session's hashes differ.
What each side learns is written in docs/psi.md.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veilpay.crypto import (
    BlindingKey,
    BlindingPool,
    InvalidPointError,
    Prg,
    check_points,
    hash_to_points,
    label_digest,
    random_seed,
)
from veilpay.errors import InvalidInput, InvalidPoint, ProtocolMismatch
from veilpay.net import Communicator
from veilpay.packed import all_distinct
from veilpay.progress import progress

__all__ = ["MODES", "PSI_VERSION", "PsiResult", "ecdh_psi"]

PSI_VERSION = 2
CHUNK = 1 << 13  # points per message and per worker batch: small enough that no core waits long at a phase end
_MIN_FOR_WORKERS = 20000  # below this many points, worker start-up costs more than it saves
DST = b"veilpay/psi/ecdh-x25519/v1"
MODES = {"intersection": 1, "cardinality": 2}
REVEAL = {"receiver": 1, "both": 2}


def check_side(role: str, reveal: str) -> None:
    """InvalidInput unless ``role`` is receiver or sender and ``reveal`` one of REVEAL:
    the arguments every two-party PSI protocol here checks first."""
    if role not in ("receiver", "sender"):
        raise InvalidInput(f"role must be 'receiver' or 'sender', not {role!r}")
    if reveal not in REVEAL:
        raise InvalidInput(f"reveal must be one of {sorted(REVEAL)}")


@dataclass
class PsiResult:
    """``indices``: positions in this party's id list that are common (sorted; None in
    cardinality mode); ``size``: the intersection size; ``peer_size``: |peer's set|;
    ``phases``: seconds spent in each named step, where the protocol reports them."""

    indices: np.ndarray | None
    size: int
    peer_size: int
    phases: dict[str, float] = field(default_factory=dict)


def _hello(n: int, chunk: int, mode: str, reveal: str, salt: bytes) -> np.ndarray:
    head = np.array([PSI_VERSION, MODES[mode], REVEAL[reveal], n, chunk], dtype=np.uint64)
    return np.concatenate([head.view(np.uint8), np.frombuffer(salt, dtype=np.uint8)])


def _check_hello(peer: str, got: np.ndarray, mode: str, reveal: str) -> tuple[int, int, bytes]:
    if got.dtype != np.uint8 or got.shape != (56,):
        version = int(got[:8].view(np.uint64)[0]) if got.dtype == np.uint8 and got.size >= 8 else -1
        if version not in (-1, PSI_VERSION):
            raise ProtocolMismatch(peer, f"peer speaks ECDH-PSI version {version}, we speak {PSI_VERSION}")
        raise ProtocolMismatch(peer, "hello message of the wrong shape")
    version, m, r, n, chunk = (int(v) for v in got[:40].view(np.uint64))
    if version != PSI_VERSION:
        raise ProtocolMismatch(peer, f"peer speaks ECDH-PSI version {version}, we speak {PSI_VERSION}")
    if m != MODES[mode] or r != REVEAL[reveal]:
        raise ProtocolMismatch(peer, f"peer asks for mode {m} / reveal {r}; we run {mode} / {reveal}")
    if not 1 <= chunk <= 1 << 24:
        raise ProtocolMismatch(peer, f"chunk size {chunk} out of range")
    return n, chunk, got[40:].tobytes()


def spans(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]


def pool_size(workers: int | None, points: int, min_points: int) -> int:
    """Worker processes for ``points`` of curve work: as asked, else none for a small
    job (start-up would cost more than it saves), else one per core."""
    if workers is not None:
        return workers
    return 0 if points < min_points else os.cpu_count() or 1


def tracked(fut: Future[np.ndarray], bar: Any, steps: int) -> Future[np.ndarray]:
    """Advance a progress bar by ``steps`` when ``fut`` is done."""
    fut.add_done_callback(lambda _: bar.update(steps))
    return fut


class ChunkedSession:
    """One side's blinding work and its chunked traffic with the peer; ``check``
    refuses a malformed batch of the peer's points."""

    def __init__(self, comm: Communicator, peer: str, pool: BlindingPool, bar: object,
                 check: Callable[[np.ndarray], None] = check_points) -> None:
        self.comm, self.peer, self.pool, self.bar, self.check = comm, peer, pool, bar, check

    def submit(self, points: np.ndarray, start: int) -> Future[np.ndarray]:
        return tracked(self.pool.submit(points, start), self.bar, len(points))

    def wait(self, fut: Future[np.ndarray]) -> np.ndarray:
        try:
            return fut.result()
        except InvalidPointError as exc:
            raise InvalidPoint(self.peer, str(exc)) from exc

    def send(self, label: str, futures: Sequence[Future[np.ndarray]]) -> None:
        for fut in futures:
            self.comm.exchange(label, {self.peer: [self.wait(fut)]})

    def recv(self, label: str, n: int, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
        """The peer's n points in chunks of ``chunk``, each checked."""
        for lo, hi in spans(n, chunk):
            got = self.comm.exchange(label, recv={self.peer: 1})[self.peer][0]
            yield lo, peer_points(self.peer, got, hi - lo, lo, self.check)

    def blind_all(self, label_in: str, label_out: str, n: int, chunk: int) -> None:
        """Blind each chunk of the peer's points as it arrives and send it back."""
        self.send(label_out, [self.submit(got, lo) for lo, got in self.recv(label_in, n, chunk)])

    def gather(self, futures: Sequence[Future[np.ndarray]]) -> np.ndarray:
        return np.concatenate([self.wait(f) for f in futures]) if futures else np.empty((0, 32), dtype=np.uint8)


def peer_points(peer: str, arr: np.ndarray, n: int, offset: int = 0,
            check: Callable[[np.ndarray], None] = check_points) -> np.ndarray:
    if arr.dtype != np.uint8 or arr.shape != (n, 32):
        raise InvalidPoint(peer, f"expected {n} points of 32 bytes, got {arr.dtype} {arr.shape}")
    try:
        check(arr)
    except InvalidPointError as exc:
        raise InvalidPoint(peer, f"point {offset + exc.index}: {str(exc).split(': ', 1)[1]}") from exc
    return arr


def random_permutation(n: int) -> np.ndarray:
    """A random permutation: sort order of 64-bit keys from an AES-CTR PRG seeded by OS
    entropy (a tie, probability below n^2 / 2^65, only biases, never repeats)."""
    return np.argsort(Prg(random_seed()).uint64((n,)), kind="stable")


def match_pairs(mine: np.ndarray, theirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with mine[i] == theirs[j], i ascending; both are (n, w >= 8) uint8 arrays
    of distinct rows."""
    if not len(theirs):
        return match_sorted(mine, theirs, np.zeros(0, dtype="<u8"), np.zeros(0, dtype=np.int64))
    keys = np.ascontiguousarray(theirs[:, :8]).view("<u8").ravel()
    order = np.argsort(keys, kind="stable")
    return match_sorted(mine, theirs, keys[order], order)


def match_sorted(mine: np.ndarray, theirs: np.ndarray, sorted_keys: np.ndarray,
                 order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`match_pairs` where ``sorted_keys`` are the 64-bit prefixes of ``theirs`` in
    ascending order and ``order`` their positions in ``theirs``. Sorted prefixes find
    candidates, full rows confirm them; equal prefixes among ``theirs`` (probability
    n^2 / 2^65) fall back to an exact dictionary."""
    none = np.zeros(0, dtype=np.int64)
    if not len(mine) or not len(theirs):
        return none, none
    if len(sorted_keys) > 1 and bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
        table = {row.tobytes(): j for j, row in enumerate(theirs)}
        pairs = [(i, table[row.tobytes()]) for i, row in enumerate(mine) if row.tobytes() in table]
        return np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64)
    probe = np.ascontiguousarray(mine[:, :8]).view("<u8").ravel()
    pos = np.minimum(np.searchsorted(sorted_keys, probe), len(sorted_keys) - 1)
    cand = np.flatnonzero(sorted_keys[pos] == probe)
    same = (theirs[order[pos[cand]]] == mine[cand]).all(axis=1)
    return cand[same].astype(np.int64), order[pos[cand[same]]].astype(np.int64)


def match_points(mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Positions i (ascending) with mine[i] equal to some row of ``theirs``."""
    return match_pairs(mine, theirs)[0]


def ecdh_psi(
    comm: Communicator,
    peer: str,
    role: str,
    ids: Sequence[bytes],
    mode: str = "intersection",
    reveal: str = "receiver",
    workers: int | None = None,
    chunk: int = CHUNK,
    show_progress: bool | None = None,
) -> PsiResult:
    """Run one side of ECDH-PSI with ``peer``. ``ids`` must be distinct byte strings
    (psi.data normalises and deduplicates); the result indexes into them. ``workers``:
    blinding processes (default: every core; 0 blinds on a thread of this process).
    ``show_progress``: a bar on stderr (default: when stderr is a terminal)."""
    check_side(role, reveal)
    if mode not in MODES:
        raise InvalidInput(f"mode must be one of {sorted(MODES)}")
    if not 1 <= chunk <= 1 << 24:
        raise InvalidInput("chunk must be between 1 and 2^24 points")
    if not all_distinct(ids):
        raise InvalidInput("ids must be distinct: deduplicate first")
    salt_mine = secrets.token_bytes(16)
    got = comm.exchange("psi.hello", {peer: [_hello(len(ids), chunk, mode, reveal, salt_mine)]}, {peer: 1})
    peer_n, peer_chunk, salt_peer = _check_hello(peer, got[peer][0], mode, reveal)
    salts = salt_mine + salt_peer if role == "receiver" else salt_peer + salt_mine
    salt = label_digest("veilpay/psi/salt/" + salts.hex(), 32)
    workers = pool_size(workers, len(ids) + peer_n, _MIN_FOR_WORKERS)
    order = np.arange(len(ids)) if role == "receiver" else random_permutation(len(ids))  # S's order never reaches R
    with BlindingPool(BlindingKey.generate(), workers) as pool, \
            progress(len(ids) + peer_n, f"psi {role}", unit="pt", enabled=show_progress) as bar:
        s = ChunkedSession(comm, peer, pool, bar)
        own = [s.submit(hash_to_points([ids[i] for i in order[lo:hi]], salt, DST), lo)
               for lo, hi in spans(len(ids), chunk)]
        if role == "receiver":
            return _receiver(s, own, peer_n, peer_chunk, len(ids), chunk, mode, reveal)
        return _sender(s, own, order, peer_n, peer_chunk, mode, reveal)


def _receiver(s: ChunkedSession, own: list[Future[np.ndarray]], peer_n: int, peer_chunk: int, n: int, chunk: int,
              mode: str, reveal: str) -> PsiResult:
    s.send("psi.A", own)
    theirs = [s.submit(b, lo) for lo, b in s.recv("psi.B", peer_n, peer_chunk)]
    # AB first: a bad point of S's fails here, before waiting on S's BA.
    ab = s.gather(theirs)
    ba = np.empty((n, 32), dtype=np.uint8)
    for lo, got in s.recv("psi.BA", n, chunk):  # S answers in R's chunking
        ba[lo : lo + len(got)] = got
    hits, in_b = match_pairs(ba, ab)
    if reveal == "both":
        # intersection: positions in B, ascending (S learns no order of R's); cardinality: the count
        payload = np.sort(in_b).astype(np.uint64) if mode == "intersection" else np.array([len(hits)], np.uint64)
        s.comm.exchange("psi.matches", {s.peer: [payload]})
    if mode == "cardinality":
        return PsiResult(None, len(hits), peer_n)
    return PsiResult(hits, len(hits), peer_n)


def _sender(s: ChunkedSession, own: list[Future[np.ndarray]], order: np.ndarray, peer_n: int, peer_chunk: int, mode: str,
            reveal: str) -> PsiResult:
    s.send("psi.B", own)
    if mode == "cardinality":  # R must not learn which of its ids matched: shuffle BA whole
        ba = s.gather([s.submit(a, lo) for lo, a in s.recv("psi.A", peer_n, peer_chunk)])
        ba = ba[random_permutation(len(ba))]
        for lo, hi in spans(len(ba), peer_chunk):
            s.comm.exchange("psi.BA", {s.peer: [ba[lo:hi]]})
    else:  # BA goes back in the receiver's chunking, which is how R reads it
        s.blind_all("psi.A", "psi.BA", peer_n, peer_chunk)
    n = len(order)
    if reveal == "receiver":
        return PsiResult(None, -1, peer_n)
    answer = s.comm.exchange("psi.matches", recv={s.peer: 1})[s.peer][0]
    if mode == "cardinality":
        if answer.shape != (1,):
            raise ProtocolMismatch(s.peer, "cardinality answer of the wrong shape")
        return PsiResult(None, int(answer[0]), peer_n)
    if answer.dtype != np.uint64 or answer.ndim != 1 or (len(answer) and int(answer.max()) >= n):
        raise ProtocolMismatch(s.peer, "match positions out of range")
    return PsiResult(np.sort(order[answer.astype(np.int64)]), len(answer), peer_n)
