"""Two-party PSI from OT extension: KKRT16 (Kolesnikov, Kumaresan, Rosulek, Trieu,
"Efficient Batched Oblivious PRF with Applications to Private Set Intersection",
CCS 2016, sections 3-5), semi-honest.

The receiver R (set X) cuckoo-hashes X into m bins and a stash; the sender S (set Y)
learns a batched OPRF key and evaluates it on each of its ids under each hash
function (simple hashing) and for each stash slot; R compares S's values with its
own outputs. Messages (typed veilpay messages; a malformed or foreign one is a named
error):

    R -> S  hello: version, role, reveal, |X|, stat_sec, stash, chunk, nonce_R,
            A (the base-OT sender key)
    S -> R  hello: the same for S, nonce_S, 512 pairs of base-OT public keys
    R -> S  attempt: which hash functions (a new draw after a cuckoo failure)
    R -> S  U, in chunks of OTs: the IKNP-style correction matrix, 512 x M bits
    S -> R  V_t for each set t (3 hash functions, then stash slots): S's OPRF
            values, each set in a random order
    R -> S  matches (only when both learn the intersection): the common ids' items
            (the session's public PRF of each id), sorted by value

Roles inside: R is the base-OT sender (it gets both seeds k0_i, k1_i), S the base-OT
receiver with a random 512-bit choice vector s. Columns t0_i = PRG(k0_i), and R
sends u_i = t0_i ^ t1_i ^ c_i, c_i column i of the matrix of its codewords. S gets
q_i = PRG(k_{s_i}) ^ s_i u_i = t0_i ^ s_i c_i, so row b is q_b = t0_b ^ (C(x_b) & s).
R's output for bin b is H(b, t0_b); S's value for y in bin b is
H(b, q_b ^ (C(y) & s)), equal exactly when C(y) = C(x_b). C is a pseudorandom code of
width 512 (AES of the id under four tweaks), H the correlation-robust hash of
`veilpay.crypto.ot`. Public keys (id PRF, code, hash functions, fixed-key AES) come from
HKDF over nonce_R || nonce_S, so neither party picks them alone.

What each side learns: R learns |Y| and which of its ids are in Y, S learns |X| (and
the common ids with reveal='both': only which of its ids are common, in an order that
carries nothing; in particular not the hash function or stash slot that matched
each, which would depend on R's ids outside the intersection, through where cuckoo
hashing placed them). S's values for ids outside X are pseudorandom to
R; each set V_t is sorted by value, so R learns nothing of S's order or bin loads. S learns
nothing of X beyond |X| and the attempt number (an attempt > 0 happens with
probability about 2^-stat_sec). Parameters and their failure probabilities are in
docs/psi.md.
"""

from __future__ import annotations

import math
import secrets
import struct
from collections.abc import Sequence

import numpy as np

from veilpay.crypto import derive_seed
from veilpay.crypto.ot import AesEcb, BaseOtReceiver, BaseOtSender, ColumnPrgs, correlation_robust_hash, id_prf
from veilpay.crypto.points import InvalidPointError
from veilpay.errors import InvalidInput, InvalidPoint, ProtocolMismatch
from veilpay.host import keep_freed_memory
from veilpay.net import Communicator
from veilpay.packed import all_distinct
from veilpay.progress import progress
from veilpay.psi.bitmatrix import transpose
from veilpay.psi.cuckoo import HASHES, CuckooFailure, bin_count, hash_bins, place
from veilpay.psi.ecdh import REVEAL, PsiResult, check_side, match_sorted, spans

__all__ = ["CHUNK", "KKRT_VERSION", "WIDTH", "kkrt_psi", "oprf_bytes"]

KKRT_VERSION = 2  # 2: reveal="both" answers the common items, no positions
WIDTH = 512  # code width in bits = number of base OTs
_WBYTES = WIDTH // 8
CHUNK = 1 << 15  # OTs per correction message
MAX_ATTEMPTS = 8
MAX_PEER = 1 << 32  # ids a peer may claim: far past one process's reach, small enough to size nothing huge
DST = b"veilpay/psi/kkrt/v1"
_ROLES = {"receiver": 1, "sender": 2}
_HEAD = 7  # uint64 fields of the hello header
_NONCE = 16
_TWEAKS = np.frombuffer(b"".join(struct.pack("<QQ", 4 * j + i + 1, 0) for j in range(4) for i in range(4)),
                        dtype=np.uint8).reshape(4, 4, 16)  # code tweak of block i under function j (3: stash)


def oprf_bytes(n_receiver: int, n_sender: int, stat_sec: int) -> int:
    """Bytes of each OPRF value: stat_sec bits plus log2 of the number of comparisons
    R makes (each of its ids against one set of |Y| values), at least 8 (the lookup
    keys on 8 bytes), at most 16."""
    bits = stat_sec + math.ceil(math.log2(max(2, n_receiver * n_sender)))
    return min(16, max(8, math.ceil(bits / 8)))


def _hello(role: str, reveal: str, n: int, stat_sec: int, stash: int, chunk: int, nonce: bytes,
           payload: np.ndarray) -> np.ndarray:
    head = np.array([KKRT_VERSION, _ROLES[role], REVEAL[reveal], n, stat_sec, stash, chunk], dtype=np.uint64)
    return np.concatenate([head.view(np.uint8), np.frombuffer(nonce, dtype=np.uint8), payload.reshape(-1)])


def _check_hello(peer: str, got: np.ndarray, role: str, reveal: str, stat_sec: int, stash: int,
                 payload_bytes: int) -> tuple[int, int, bytes, np.ndarray]:
    """The peer's (n, chunk, nonce, payload), or ProtocolMismatch naming what differs."""
    if got.dtype != np.uint8 or got.ndim != 1 or got.size < 8 * _HEAD + _NONCE:
        raise ProtocolMismatch(peer, "KKRT hello of the wrong shape")
    version, prole, prev, n, psec, pstash, chunk = (int(v) for v in got[: 8 * _HEAD].view(np.uint64))
    if version != KKRT_VERSION:
        raise ProtocolMismatch(peer, f"peer speaks KKRT-PSI version {version}, we speak {KKRT_VERSION}")
    if prole == _ROLES[role]:
        raise ProtocolMismatch(peer, f"both parties are the {role}")
    if prev != REVEAL[reveal]:
        raise ProtocolMismatch(peer, f"peer asks for reveal {prev}; we run {reveal}")
    if psec != stat_sec or pstash != stash:
        raise ProtocolMismatch(peer, f"parameter sets differ: peer stat_sec={psec} stash={pstash}, "
                                     f"ours stat_sec={stat_sec} stash={stash}")
    if got.size != 8 * _HEAD + _NONCE + payload_bytes:
        raise ProtocolMismatch(peer, "KKRT hello of the wrong size")
    if n > MAX_PEER:  # S sizes its table of OT chunks from R's claim: checked before anything is
        raise ProtocolMismatch(peer, f"peer claims {n} ids, past the limit of {MAX_PEER}")
    if role == "sender" and not (128 <= chunk <= 1 << 20 and chunk % 128 == 0):
        raise ProtocolMismatch(peer, f"chunk size {chunk} out of range")
    start = 8 * _HEAD
    return n, chunk, got[start : start + _NONCE].tobytes(), got[start + _NONCE :]


class _Keys:
    """The session's public keys, from both nonces: ids to items, code, cuckoo hash
    functions, fixed-key AES of the hash, random-walk seed."""

    def __init__(self, nonce_r: bytes, nonce_s: bytes) -> None:
        self.joint = DST + nonce_r + nonce_s
        self.id_key = derive_seed(self.joint, "kkrt/ids")[:16]
        self.code = AesEcb(derive_seed(self.joint, "kkrt/code")[:16])
        self.pi = AesEcb(derive_seed(self.joint, "kkrt/cr-hash")[:16])

    def hash_fns(self, attempt: int) -> AesEcb:
        return AesEcb(derive_seed(self.joint, f"kkrt/hash-fns/{attempt}")[:16])

    def walk_seed(self, attempt: int) -> bytes:
        return derive_seed(self.joint, f"kkrt/walk/{attempt}")


def codewords(code: AesEcb, items: np.ndarray, fns: np.ndarray) -> np.ndarray:
    """(e, 64) codewords C(x, j): AES_code(x ^ tweak_{j,i}) for blocks i = 0..3."""
    blocks = items[:, None, :] ^ _TWEAKS[fns]
    return code(blocks).reshape(len(items), _WBYTES)


def _ot_rows(n_receiver: int, stash: int, stat_sec: int) -> tuple[int, int]:
    """(m bins, OT rows padded to a multiple of 8) for R's set size."""
    m = bin_count(n_receiver, stat_sec)
    return m, -(-(m + stash) // 8) * 8


def kkrt_psi(
    comm: Communicator,
    peer: str,
    role: str,
    ids: Sequence[bytes],
    reveal: str = "receiver",
    stat_sec: int = 40,
    stash: int = 0,
    chunk: int = CHUNK,
    show_progress: bool | None = None,
) -> PsiResult:
    """Run one side of KKRT PSI with ``peer``. ``ids``: distinct byte strings (psi.data
    normalises and deduplicates); the result indexes into them. ``stash``: cuckoo
    stash slots (both sides must agree; each slot costs S one OPRF value per id).
    ``chunk``: OTs per correction message (R's choice; a multiple of 128)."""
    check_side(role, reveal)
    if not 20 <= stat_sec <= 80 or not 0 <= stash <= 64:
        raise InvalidInput("stat_sec must be within 20..80 and stash within 0..64")
    if not (128 <= chunk <= 1 << 20 and chunk % 128 == 0):
        raise InvalidInput("chunk must be a multiple of 128 between 128 and 2^20")
    if not all_distinct(ids):
        raise InvalidInput("ids must be distinct: deduplicate first")
    keep_freed_memory()
    nonce = secrets.token_bytes(_NONCE)
    if role == "receiver":
        ot_send = BaseOtSender()
        mine = _hello(role, reveal, len(ids), stat_sec, stash, chunk, nonce,
                      np.frombuffer(ot_send.public, dtype=np.uint8))
        got = comm.exchange("kkrt.hello", {peer: [mine]}, {peer: 1})[peer][0]
        n_peer, _, nonce_peer, pks = _check_hello(peer, got, role, reveal, stat_sec, stash, WIDTH * 2 * 32)
        try:
            k0, k1 = ot_send.keys(pks.reshape(WIDTH, 2, 32))
        except InvalidPointError as exc:
            raise InvalidPoint(peer, f"base OT {exc.index}: small-order key") from exc
        keys = _Keys(nonce, nonce_peer)
        items = id_prf(keys.id_key, ids)
        if not len(ids) or not n_peer:
            return PsiResult(np.zeros(0, dtype=np.int64), 0, n_peer)
        return _receiver(comm, peer, keys, items, n_peer, k0, k1, reveal, stat_sec, stash, chunk, show_progress)
    choices = np.frombuffer(secrets.token_bytes(WIDTH // 8), dtype=np.uint8)
    s_bits = np.unpackbits(choices, bitorder="little")
    ot_recv = BaseOtReceiver(s_bits)
    mine = _hello(role, reveal, len(ids), stat_sec, stash, 0, nonce, ot_recv.public_keys)
    got = comm.exchange("kkrt.hello", {peer: [mine]}, {peer: 1})[peer][0]
    n_peer, peer_chunk, nonce_peer, pub = _check_hello(peer, got, role, reveal, stat_sec, stash, 32)
    try:
        ks = ot_recv.keys(pub.tobytes())
    except InvalidPointError as exc:
        raise InvalidPoint(peer, "small-order base OT sender key") from exc
    keys = _Keys(nonce_peer, nonce)
    items = id_prf(keys.id_key, ids)
    if not len(ids) or not n_peer:
        return PsiResult(np.zeros(0, dtype=np.int64) if reveal == "both" else None,
                         0 if reveal == "both" else -1, n_peer)
    return _sender(comm, peer, keys, items, n_peer, ks, s_bits, choices, reveal, stat_sec, stash, peer_chunk,
                   show_progress)


def _receiver(comm: Communicator, peer: str, keys: _Keys, items: np.ndarray, n_peer: int, k0: np.ndarray,
              k1: np.ndarray, reveal: str, stat_sec: int, stash: int, chunk: int,
              show_progress: bool | None) -> PsiResult:
    n = len(items)
    m, rows = _ot_rows(n, stash, stat_sec)
    for attempt in range(MAX_ATTEMPTS):
        try:
            table = place(hash_bins(keys.hash_fns(attempt), items, m), m, stash, keys.walk_seed(attempt))
            break
        except CuckooFailure:
            continue
    else:
        raise CuckooFailure(f"cuckoo hashing failed {MAX_ATTEMPTS} times; raise the stash size")
    comm.exchange("kkrt.attempt", {peer: [np.array([attempt], dtype=np.uint64)]})
    row_item = np.full(rows, -1, dtype=np.int64)
    row_item[:m] = table.item
    row_item[m : m + stash] = table.stash
    # the set of S's values each OT row is compared with: its hash function, or 3 + its stash slot
    row_set = np.full(rows, -1, dtype=np.int64)
    row_set[:m] = table.fn
    row_set[m : m + stash] = HASHES + np.arange(stash)
    size = oprf_bytes(n, n_peer, stat_sec)
    own = np.empty((n, size), dtype=np.uint8)
    g0, g1 = ColumnPrgs(k0), ColumnPrgs(k1)
    with progress(rows, "kkrt receiver", unit="ot", enabled=show_progress) as bar:
        for lo, hi in spans(rows, chunk):
            who = row_item[lo:hi]
            occ = np.flatnonzero(who >= 0)
            c = np.zeros((hi - lo, _WBYTES), dtype=np.uint8)
            c[occ] = codewords(keys.code, items[who[occ]], np.minimum(row_set[lo:hi][occ], HASHES))
            t0 = g0.next((hi - lo) // 8)
            u = transpose(c)
            np.bitwise_xor(u, t0, out=u)
            np.bitwise_xor(u, g1.next((hi - lo) // 8), out=u)
            comm.exchange("kkrt.U", {peer: [u]})
            t0_rows = transpose(t0)
            own[who[occ]] = correlation_robust_hash(keys.pi, t0_rows[occ], lo + occ, size)
            bar.update(hi - lo)
    which = np.empty(n, dtype=np.int64)
    used = np.flatnonzero(row_item >= 0)
    which[row_item[used]] = row_set[used]
    hits: list[np.ndarray] = []
    for t in range(HASHES + stash):
        theirs = comm.exchange("kkrt.V", recv={peer: 1})[peer][0]
        if theirs.dtype != np.uint8 or theirs.shape != (n_peer, size):
            raise ProtocolMismatch(peer, f"OPRF value set {t} should be ({n_peer}, {size}) bytes, "
                                         f"got {theirs.dtype} {theirs.shape}")
        mine_idx = np.flatnonzero(which == t)
        i, _ = _match_sorted(peer, own[mine_idx], theirs)
        hits.append(mine_idx[i])
    found = np.sort(np.concatenate(hits))
    if reveal == "both":  # the common items, sorted by value: which ids, and nothing of where they matched
        common = items[found]
        comm.exchange("kkrt.matches", {peer: [np.ascontiguousarray(common[_value_order(*_item_words(common))])]})
    return PsiResult(found.astype(np.int64), len(found), n_peer)


def _sender(comm: Communicator, peer: str, keys: _Keys, items: np.ndarray, n_peer: int, ks: np.ndarray,
            s_bits: np.ndarray, choices: np.ndarray, reveal: str, stat_sec: int, stash: int, chunk: int,
            show_progress: bool | None) -> PsiResult:
    n = len(items)
    m, rows = _ot_rows(n_peer, stash, stat_sec)
    got = comm.exchange("kkrt.attempt", recv={peer: 1})[peer][0]
    if got.dtype != np.uint64 or got.shape != (1,) or not int(got[0]) < MAX_ATTEMPTS:
        raise ProtocolMismatch(peer, "bad cuckoo attempt number")
    sets = HASHES + stash
    bins = hash_bins(keys.hash_fns(int(got[0])), items, m)
    # entry e = t * n + id: id under set t (hash function t, or stash slot t - 3), and its OT row
    ent_bin = np.concatenate([bins.T.reshape(-1), np.repeat(m + np.arange(stash, dtype=np.int64), n)])
    ent_chunk = ent_bin // chunk
    order = np.argsort(ent_chunk, kind="stable")
    bounds = np.searchsorted(ent_chunk[order], np.arange(-(-rows // chunk) + 1))
    size = oprf_bytes(n_peer, n, stat_sec)
    values = np.empty((sets, n, size), dtype=np.uint8)
    s_row = choices.copy()  # s as a 64-byte row
    col_mask = (s_bits.astype(np.uint8) * np.uint8(0xFF))[:, None]
    gs = ColumnPrgs(ks)
    with progress(rows, "kkrt sender", unit="ot", enabled=show_progress) as bar:
        for k, (lo, hi) in enumerate(spans(rows, chunk)):
            u = comm.exchange("kkrt.U", recv={peer: 1})[peer][0]
            if u.dtype != np.uint8 or u.shape != (WIDTH, (hi - lo) // 8):
                raise ProtocolMismatch(peer, f"correction matrix {k} should be ({WIDTH}, {(hi - lo) // 8}) "
                                             f"bytes, got {u.dtype} {u.shape}")
            np.bitwise_and(u, col_mask, out=u)
            np.bitwise_xor(u, gs.next((hi - lo) // 8), out=u)
            q_rows = transpose(u)
            e = order[bounds[k] : bounds[k + 1]]
            ent_set, who = e // n, e % n
            word = codewords(keys.code, items[who], np.minimum(ent_set, HASHES).astype(np.int8))
            np.bitwise_and(word, s_row, out=word)
            np.bitwise_xor(word, q_rows[ent_bin[e] - lo], out=word)
            values[ent_set, who] = correlation_robust_hash(keys.pi, word, ent_bin[e], size)
            bar.update(hi - lo)
    # each set goes out sorted by value: an order that says nothing of S's ids, and
    # R finds its values by binary search
    for t in range(sets):
        comm.exchange("kkrt.V", {peer: [values[t][np.argsort(_lookup_keys(values[t]), kind="stable")]]})
    if reveal == "receiver":
        return PsiResult(None, -1, n_peer)
    answer = comm.exchange("kkrt.matches", recv={peer: 1})[peer][0]
    if answer.dtype != np.uint8 or answer.ndim != 2 or answer.shape[1] != items.shape[1] or len(answer) > n:
        raise ProtocolMismatch(peer, "the common items are not (k, 16) bytes with k <= |Y|")
    mine = _members(items, answer)
    return PsiResult(mine.astype(np.int64), len(mine), n_peer)


def _item_words(items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each 16-byte item as two uint64 words (high, low) for sorting and search."""
    w = np.ascontiguousarray(items).view("<u8").reshape(-1, 2)
    return w[:, 0], w[:, 1]


def _value_order(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """The permutation that sorts items by value (high word, then low word). The first
    words of random items almost never repeat, so one sort on them does it; only when
    one does is the two-key sort run."""
    order = np.argsort(high, kind="stable")
    h = high[order]
    if len(h) > 1 and bool((h[1:] == h[:-1]).any()):
        return np.lexsort((low, high))
    return order


def _members(items: np.ndarray, common: np.ndarray) -> np.ndarray:
    """Indices (ascending) of ``items`` that are among ``common``, exactly (both words).
    The queries are searched in sorted order (cache-friendly); a first word shared by
    two common items (rare) is checked item by item."""
    hit = np.zeros(len(items), dtype=bool)
    if not len(common) or not len(items):
        return np.flatnonzero(hit)
    ch, cl = _item_words(common)
    order = np.argsort(ch, kind="stable")
    ch, cl = ch[order], cl[order]
    ih, il = _item_words(items)
    queries = np.argsort(ih, kind="stable")
    pos = np.minimum(np.searchsorted(ch, ih[queries], "left"), len(ch) - 1)
    hit[queries] = (ch[pos] == ih[queries]) & (cl[pos] == il[queries])
    shared = np.unique(ch[1:][ch[1:] == ch[:-1]])
    for i in np.flatnonzero(np.isin(ih, shared)) if len(shared) else ():
        lo, hi = np.searchsorted(ch, ih[i], "left"), np.searchsorted(ch, ih[i], "right")
        hit[i] = bool((cl[lo:hi] == il[i]).any())
    return np.flatnonzero(hit)


def _lookup_keys(values: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each OPRF value as a uint64: the sort and search key."""
    return np.ascontiguousarray(values[:, :8]).view("<u8").ravel()


def _match_sorted(peer: str, mine: np.ndarray, theirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with mine[i] == theirs[j] for ``theirs`` sorted by `_lookup_keys`."""
    keys = _lookup_keys(theirs)
    if len(keys) > 1 and bool((keys[1:] < keys[:-1]).any()):
        raise ProtocolMismatch(peer, "OPRF values are not sorted")
    return match_sorted(mine, theirs, keys, np.arange(len(keys)))
