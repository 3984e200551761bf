"""Two-party PSI from VOLE and an OKVS: the protocol of Rindal and Schoppmann ("VOLE-PSI:
fast OPRF and circuit-PSI from vector-OLE", Eurocrypt 2021, section 4) with the OKVS
of Raghuraman and Rindal ("Blazing fast PSI from improved OKVS and subfield VOLE", CCS
2022, section 3), semi-honest.

The receiver R (set X) encodes an OKVS P with Decode(P, x) = x for each of its items
(an item is the session's public PRF of an id); a silent VOLE (`veilpay.psi.vole`) of
the store's length gives R a uniform A and C, and the sender S a secret scalar Delta
and B with C = B + A * Delta. R sends P' = P + A. S's value for its item y is

    H(Decode(B, y) + Delta * (Decode(P', y) + y), y),

R's for x is H(Decode(C, x), x); they are equal exactly when x = y is in both sets
(Decode is F_2-linear, so Decode(B, x) + Delta * Decode(A, x) = Decode(C, x)). H is
the tweakable circular correlation-robust hash `veilpay.crypto.ot.tccr_hash` (Guo,
Katz, Wang, Weng, Yu, CRYPTO 2020) tweaked by the item, truncated to `oprf_bytes`.

Messages (typed veilpay messages; a malformed or foreign one is a named error):

    R -> S  hello: version, role, reveal, |X|, stat_sec, the OKVS and VOLE parameter
            tags, nonce_R, A (the base-OT sender key)
    S -> R  hello: the same for S and its value chunk, nonce_S, 128 pairs of base-OT
            public keys
    R -> S  U: the IKNP correction matrix of the VOLE's base correlations (the
            VOLE's length is the OKVS's, known from |X|: sent before the encoding)
    S -> R  the tree OT messages and sums of the VOLE
    R -> S  attempt: which OKVS key (a new one after an encoding failure), as soon
            as the OKVS is encoded, so that S decodes B while R finishes its VOLE
    R -> S  P': the masked OKVS, |P| x 16 bytes
    S -> R  S's values, in chunks as they are ready, its items in a random order
    R -> S  matches (only when both learn the intersection): the common items,
            sorted by value

S refuses, in the hello, a receiver that claims more than `MAX_PEER` ids (the most
whose OKVS the VOLE can mask) before anything is sized from the claim; R's work grows
only with the chunks that actually arrive, so it takes S's claim up to ``max_peer``
(no limit of its own by default). R refuses values that match one of its own twice (a
replayed chunk, or ids that repeat at S).

What each side learns: R learns |Y| and which of its ids are in Y; S learns |X| (and
the common ids with reveal='both', in an order that carries nothing) and the attempt
number (an attempt > 0 happens with probability below 2^-40). P' is uniform to S
(A is); S's values for ids outside X are pseudorandom to R, since each involves
Delta * (a nonzero value). S's values arrive in an order drawn afresh each run, so
they say nothing of S's file order. Parameters and failure bounds: docs/psi.md.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator, Sequence

import numpy as np

from veilpay.crypto import derive_seed
from veilpay.crypto.ot import AesEcb, BaseOtReceiver, BaseOtSender, id_prf, tccr_hash
from veilpay.crypto.points import InvalidPointError
from veilpay.errors import InvalidInput, InvalidPoint, OkvsFailure, ProtocolMismatch
from veilpay.host import keep_freed_memory
from veilpay.net import Communicator
from veilpay.packed import PackedIds
from veilpay.progress import progress
from veilpay.psi.ecdh import REVEAL, PsiResult, check_side
from veilpay.psi.kkrt import _item_words, _lookup_keys, _members, _value_order, oprf_bytes
from veilpay.psi.okvs import _SEG_FLOOR, DENSE, EXPANSION, OKVS_VERSION, SMALL_EXPANSION, SMALL_N, Okvs, OkvsRows, okvs_size
from veilpay.psi.vole import BASE, NOISE_WEIGHT, SCALER, WEIGHT, GfScalar, VoleReceiver, VoleSender, vole_params

__all__ = ["CHUNK", "MAX_PEER", "RR22_VERSION", "rr22_psi"]

RR22_VERSION = 1
CHUNK = 1 << 17  # S's values per message
MAX_ATTEMPTS = 8
# The most ids a receiver may claim: the most whose OKVS the VOLE can mask
# (okvs_size(MAX_PEER) < 2^27). S sizes its trees from R's claim (10 GiB of leaves at
# this limit), so the claim is checked first.
MAX_PEER = 103_244_337
_NO_LIMIT = 1 << 62  # R: S's claim sizes nothing (S's values are taken a chunk at a time)
_MATCH = 1 << 17  # S's values R matches at once, whatever chunk S announced
DST = b"veilpay/psi/rr22/v1"
_ROLES = {"receiver": 1, "sender": 2}
_HEAD = 8  # uint64 fields of the hello header
_NONCE = 16
# both parties must build the same OKVS and VOLE: every constant that sizes or shapes them
# travels in the hello
_PARAMS = (OKVS_VERSION, int(EXPANSION * 1000), DENSE, SMALL_N, int(SMALL_EXPANSION * 1000), _SEG_FLOOR,
           SCALER, WEIGHT, NOISE_WEIGHT)
_PARAM_TAG = int.from_bytes(derive_seed(repr(_PARAMS).encode().ljust(16, b"."), "rr22/params")[:8], "little")


class _Keys:
    """The session's public keys, from both nonces."""

    def __init__(self, nonce_r: bytes, nonce_s: bytes) -> None:
        self.joint = DST + nonce_r + nonce_s
        self.id_key = derive_seed(self.joint, "rr22/ids")[:16]
        self.pi = AesEcb(derive_seed(self.joint, "rr22/cr-hash")[:16])
        self.vole = derive_seed(self.joint, "rr22/vole")

    def okvs(self, n: int, attempt: int) -> Okvs:
        return Okvs(n, derive_seed(self.joint, f"rr22/okvs/{attempt}")[:16])


def _hello(role: str, reveal: str, n: int, stat_sec: int, chunk: int, nonce: bytes, payload: np.ndarray) -> np.ndarray:
    head = np.array([RR22_VERSION, _ROLES[role], REVEAL[reveal], n, stat_sec, _PARAM_TAG, chunk, 0], dtype=np.uint64)
    return np.concatenate([head.view(np.uint8), np.frombuffer(nonce, dtype=np.uint8), payload.reshape(-1)])


def _check_hello(peer: str, got: np.ndarray, role: str, reveal: str, stat_sec: int, max_peer: int,
                 payload_bytes: int) -> tuple[int, int, bytes, np.ndarray]:
    """The peer's (n, chunk, nonce, payload), or ProtocolMismatch naming what differs
    (a set size past ``max_peer`` included: nothing is sized from the claim before)."""
    if got.dtype != np.uint8 or got.ndim != 1 or got.size < 8 * _HEAD + _NONCE:
        raise ProtocolMismatch(peer, "RR22 hello of the wrong shape")
    version, prole, prev, n, psec, tag, chunk, _ = (int(v) for v in got[: 8 * _HEAD].view(np.uint64))
    if version != RR22_VERSION:
        raise ProtocolMismatch(peer, f"peer speaks RR22-PSI version {version}, we speak {RR22_VERSION}")
    if prole == _ROLES[role]:
        raise ProtocolMismatch(peer, f"both parties are the {role}")
    if prole not in _ROLES.values():
        raise ProtocolMismatch(peer, f"unknown role {prole} in the hello")
    if prev != REVEAL[reveal]:
        raise ProtocolMismatch(peer, f"peer asks for reveal {prev}; we run {reveal}")
    if psec != stat_sec:
        raise ProtocolMismatch(peer, f"parameter sets differ: peer stat_sec={psec}, ours {stat_sec}")
    if tag != _PARAM_TAG:
        raise ProtocolMismatch(peer, "the OKVS or VOLE parameter sets differ (another veilpay version?)")
    if got.size != 8 * _HEAD + _NONCE + payload_bytes:
        raise ProtocolMismatch(peer, "RR22 hello of the wrong size")
    if n > max_peer:
        raise ProtocolMismatch(peer, f"peer claims {n} ids, past this side's limit of {max_peer} (max_peer)")
    if role == "receiver" and not 1 <= chunk <= 1 << 24:
        raise ProtocolMismatch(peer, f"value chunk {chunk} out of range")
    start = 8 * _HEAD
    return n, chunk, got[start : start + _NONCE].tobytes(), got[start + _NONCE :]


class _Clock:
    """Seconds per named phase; ``wait`` is time blocked on the peer's next message."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = round(self.phases.get(name, 0.0) + time.perf_counter() - t0, 4)


def _values(keys: _Keys, decoded: np.ndarray, items: np.ndarray, size: int) -> np.ndarray:
    """H(decoded, item) for (k, 16) decoded values, each tweaked by its item."""
    return tccr_hash(keys.pi, decoded.reshape(len(items), 16), items, size)


class _Lookup:
    """R's own values, ready for S's chunks: their 64-bit prefixes sorted, with the
    start of each bucket of top bits (about 4 buckets a value), so that a probe costs
    one read, and a second only in the few buckets that hold more than one value."""

    def __init__(self, peer: str, own: np.ndarray, items: np.ndarray) -> None:
        keys = _lookup_keys(own)
        self.order = np.argsort(keys)
        self.keys = keys[self.order]
        self.table: dict[bytes, int] | None = None
        same = np.flatnonzero(self.keys[1:] == self.keys[:-1])
        if len(same):  # equal prefixes: the same id twice, or (probability n^2 / 2^65) two ids
            a, b = self.order[same], self.order[same + 1]
            if bool((items[a] == items[b]).all(axis=1).any()):
                raise InvalidInput("ids must be distinct: deduplicate first")
            # an exact table, built once (per chunk it would cost O(|X|) Python work a chunk)
            self.table = {row.tobytes(): j for j, row in enumerate(own)}
        bits = max(1, min(40, int(np.ceil(np.log2(max(2, len(keys))))) + 2))
        self.shift = np.uint64(64 - bits)
        counts = np.bincount((self.keys >> self.shift).astype(np.intp), minlength=1 << bits)
        self.starts: np.ndarray = np.zeros(len(counts) + 1, dtype=np.int32 if len(keys) < 1 << 31 else np.int64)
        np.cumsum(counts, out=self.starts[1:])
        self.padded = np.append(self.keys, np.uint64(0))  # a read one past the end is harmless
        self.tail = _tail(own)[self.order] if own.shape[1] > 8 else None

    def find(self, theirs: np.ndarray) -> np.ndarray:
        """Positions in R's list of the values in ``theirs`` (any order)."""
        if self.table is not None:
            at = np.fromiter((self.table.get(row.tobytes(), -1) for row in theirs), dtype=np.int64, count=len(theirs))
            return at[at >= 0]
        probe = _lookup_keys(theirs)
        bucket = (probe >> self.shift).astype(np.intp)
        cur = self.starts[bucket].astype(np.intp)
        end: np.ndarray = self.starts[bucket + 1].astype(np.intp)
        hit = (self.padded[cur] == probe) & (cur < end)
        got_i, got_at = [np.flatnonzero(hit)], []
        got_at.append(cur[got_i[0]])
        more = np.flatnonzero(~hit & (end - cur > 1))  # the rare buckets with a second value to try
        while len(more):
            cur_m = cur[more] + 1
            cur[more] = cur_m
            eq = self.padded[cur_m] == probe[more]
            got_i.append(more[eq])
            got_at.append(cur_m[eq])
            more = more[~eq & (end[more] - cur_m > 1)]
        i = np.concatenate(got_i)
        at = np.concatenate(got_at)
        if self.tail is not None:  # the rest of the value, not only its prefix
            keep = self.tail[at] == _tail(theirs[i])
            i, at = i[keep], at[keep]
        return self.order[at].astype(np.int64)


def _tail(values: np.ndarray) -> np.ndarray:
    """Bytes 8.. of each value (at most 8 more) as a uint64."""
    out = np.zeros((len(values), 8), dtype=np.uint8)
    out[:, : values.shape[1] - 8] = values[:, 8:]
    return out.view("<u8").reshape(-1)


def rr22_psi(
    comm: Communicator,
    peer: str,
    role: str,
    ids: Sequence[bytes],
    reveal: str = "receiver",
    stat_sec: int = 40,
    chunk: int = CHUNK,
    show_progress: bool | None = None,
    max_peer: int | None = None,
) -> PsiResult:
    """Run one side of RR22 PSI with ``peer``. ``ids``: distinct byte strings (psi.data
    normalises and deduplicates); the result indexes into them. ``chunk``: S's values
    per message (S's choice). ``max_peer``: the most ids the peer may claim
    (ProtocolMismatch in the hello past it); S allows R at most `MAX_PEER` whatever
    is asked, since the VOLE can mask no larger OKVS; R allows any size unless told."""
    check_side(role, reveal)
    if not 20 <= stat_sec <= 80:
        raise InvalidInput("stat_sec must be within 20..80")
    if not 1 <= chunk <= 1 << 24:
        raise InvalidInput("chunk must be within 1..2^24")
    if max_peer is not None and max_peer < 0:
        raise InvalidInput("max_peer must be >= 0")
    if role == "receiver" and len(ids) > MAX_PEER:
        raise InvalidInput(f"the receiver's VOLE masks at most {MAX_PEER} ids: partition larger sets "
                           "(psi --ray-address)")
    keep_freed_memory()  # the arrays of each phase reuse the last one's memory: no page faults
    clock = _Clock()
    nonce = secrets.token_bytes(_NONCE)
    if role == "receiver":
        ot_send = BaseOtSender()
        mine = _hello(role, reveal, len(ids), stat_sec, 0, nonce, np.frombuffer(ot_send.public, dtype=np.uint8))
        got = comm.exchange("rr22.hello", {peer: [mine]}, {peer: 1})[peer][0]
        n_peer, peer_chunk, nonce_peer, pks = _check_hello(peer, got, role, reveal, stat_sec,
                                                           _NO_LIMIT if max_peer is None else max_peer, BASE * 2 * 32)
        try:
            k0, k1 = ot_send.keys(pks.reshape(BASE, 2, 32))
        except InvalidPointError as exc:
            raise InvalidPoint(peer, f"base OT {exc.index}: small-order key") from exc
        keys = _Keys(nonce, nonce_peer)
        with clock("items"):
            items = id_prf(keys.id_key, ids)
            _distinct(ids, items)
        if not len(ids) or not n_peer:
            return PsiResult(np.zeros(0, dtype=np.int64), 0, n_peer)
        return _receiver(comm, peer, keys, items, n_peer, k0, k1, reveal, stat_sec, peer_chunk, show_progress, clock)
    s_bits = np.unpackbits(np.frombuffer(secrets.token_bytes(BASE // 8), dtype=np.uint8), bitorder="little")
    ot_recv = BaseOtReceiver(s_bits)
    mine = _hello(role, reveal, len(ids), stat_sec, chunk, nonce, ot_recv.public_keys)
    got = comm.exchange("rr22.hello", {peer: [mine]}, {peer: 1})[peer][0]
    n_peer, _, nonce_peer, pub = _check_hello(peer, got, role, reveal, stat_sec,
                                              MAX_PEER if max_peer is None else min(max_peer, MAX_PEER), 32)
    try:
        ks = ot_recv.keys(pub.tobytes())
    except InvalidPointError as exc:
        raise InvalidPoint(peer, "small-order base OT sender key") from exc
    keys = _Keys(nonce_peer, nonce)
    with clock("items"):
        items = id_prf(keys.id_key, ids)
        _distinct(ids, items)
    if not len(ids) or not n_peer:
        return PsiResult(np.zeros(0, dtype=np.int64) if reveal == "both" else None,
                         0 if reveal == "both" else -1, n_peer)
    return _sender(comm, peer, keys, items, n_peer, ks, s_bits, reveal, stat_sec, chunk, show_progress, clock)


def _spans(n: int, chunk: int) -> Iterator[tuple[int, int]]:
    """(lo, hi) of each chunk of n, one at a time: a peer's count sizes no list."""
    for lo in range(0, n, chunk):
        yield lo, min(lo + chunk, n)


def _distinct(ids: Sequence[bytes], items: np.ndarray) -> None:
    """Distinct ids give distinct items (the PRF collides with probability n^2 / 2^128).
    Ids that `veilpay.psi.data` deduplicated are taken as they are; a caller's own list
    is checked on the items, with one sort of their first words."""
    if isinstance(ids, PackedIds) and ids.distinct:
        return
    high, low = _item_words(items)
    order = _value_order(high, low)
    h, lo = high[order], low[order]
    if len(h) > 1 and bool(((h[1:] == h[:-1]) & (lo[1:] == lo[:-1])).any()):
        raise InvalidInput("ids must be distinct: deduplicate first")


def _receiver(comm: Communicator, peer: str, keys: _Keys, items: np.ndarray, n_peer: int, k0: np.ndarray,
              k1: np.ndarray, reveal: str, stat_sec: int, chunk: int, show_progress: bool | None,
              clock: _Clock) -> PsiResult:
    n = len(items)
    with clock("vole"):  # the VOLE's size is the OKVS's: its correction goes out before the encoding
        vole = VoleReceiver(vole_params(okvs_size(n)), keys.vole, k0, k1)
        comm.exchange("rr22.vole", {peer: [vole.correction()]})
    with clock("okvs"):
        for attempt in range(MAX_ATTEMPTS):
            store = keys.okvs(n, attempt)
            rows = store.rows(items)
            try:
                table = store.encode(rows, items)
                break
            except OkvsFailure:
                continue
        else:
            raise OkvsFailure(f"the OKVS could not be encoded under {MAX_ATTEMPTS} keys")
        comm.exchange("rr22.attempt", {peer: [np.array([attempt], dtype=np.uint64)]})
    with clock("wait"):
        answer = comm.exchange("rr22.trees", recv={peer: 2})[peer]
    del rows  # 32 bytes an id: computed again below rather than held through the VOLE's peak
    with clock("vole"):
        masked, c = vole.finish(peer, answer[0], answer[1], into=table.view("<u8").reshape(store.size, 2))
        del vole
    with clock("send"):
        comm.exchange("rr22.okvs", {peer: [masked.view(np.uint8).reshape(store.size, 16)]})
    del masked, table
    size = oprf_bytes(n, n_peer, stat_sec)
    with clock("values"):
        own = _values(keys, store.decode(c.view(np.uint8).reshape(store.size, 16), store.rows(items)), items, size)
        del c
        lookup = _Lookup(peer, own, items)
    hits: list[np.ndarray] = []
    matched = 0
    with progress(n_peer, "rr22 receiver", unit="id", enabled=show_progress) as bar:
        for lo, hi in _spans(n_peer, chunk):
            with clock("wait"):
                theirs = comm.exchange("rr22.values", recv={peer: 1})[peer][0]
            if theirs.dtype != np.uint8 or theirs.shape != (hi - lo, size):
                raise ProtocolMismatch(peer, f"value chunk should be ({hi - lo}, {size}) bytes, "
                                             f"got {theirs.dtype} {theirs.shape}")
            with clock("match"):
                for at in range(0, hi - lo, _MATCH):  # scratch of a slice, not of S's chunk
                    hits.append(lookup.find(theirs[at : at + _MATCH]))
                    matched += len(hits[-1])
            if matched > n:
                raise ProtocolMismatch(peer, "the sender's values match our ids twice (a replayed chunk?)")
            bar.update(hi - lo)
    with clock("match"):
        found = np.sort(np.concatenate(hits)) if hits else np.zeros(0, dtype=np.int64)
        # an honest S's values for distinct ids never match one of R's twice: a replayed
        # chunk, or an id repeated at S, would put a row twice in R's output
        if len(found) > 1 and bool((found[1:] == found[:-1]).any()):
            raise ProtocolMismatch(peer, "the sender's values match one of our ids twice (a replayed chunk, "
                                         "or ids that repeat at the sender)")
        if reveal == "both":  # the common items, sorted by value: which ids, and nothing of S's order
            common = items[found]
            comm.exchange("rr22.matches", {peer: [np.ascontiguousarray(common[_value_order(*_item_words(common))])]})
    return PsiResult(found.astype(np.int64), len(found), n_peer, clock.phases)


def _sender(comm: Communicator, peer: str, keys: _Keys, items: np.ndarray, n_peer: int, ks: np.ndarray,
            s_bits: np.ndarray, reveal: str, stat_sec: int, chunk: int, show_progress: bool | None,
            clock: _Clock) -> PsiResult:
    n = len(items)
    with clock("wait"):
        u = comm.exchange("rr22.vole", recv={peer: 1})[peer][0]
    size_okvs = okvs_size(n_peer)
    with clock("vole"):
        vole = VoleSender(vole_params(size_okvs), keys.vole, ks, s_bits)
        comm.exchange("rr22.trees", {peer: list(vole.respond(peer, u))})
        b = vole.finish().view(np.uint8).reshape(size_okvs, 16)
        times_delta = GfScalar(vole.delta)
        del vole
    with clock("shuffle"):
        # S's items in an order drawn afresh: its values go out chunk by chunk in this order
        shuffled = items[np.argsort(np.frombuffer(secrets.token_bytes(8 * n), dtype="<u8"))]
    with clock("wait"):
        attempt = comm.exchange("rr22.attempt", recv={peer: 1})[peer][0]
    if attempt.dtype != np.uint64 or attempt.shape != (1,) or not int(attempt[0]) < MAX_ATTEMPTS:
        raise ProtocolMismatch(peer, "bad OKVS attempt number")
    with clock("values"):  # all that does not need P' yet: each item's equation and Decode(B, y)
        store = keys.okvs(n_peer, int(attempt[0]))
        rows = store.rows(shuffled)
        dec_b = store.decode(b, rows).view("<u8").reshape(n, 2)
        del b
    with clock("wait"):
        masked = comm.exchange("rr22.okvs", recv={peer: 1})[peer][0]
    if masked.dtype != np.uint8 or masked.shape != (store.size, 16):
        raise ProtocolMismatch(peer, f"the OKVS should be ({store.size}, 16) bytes for {n_peer} ids, "
                                     f"got {masked.dtype} {masked.shape}")
    size = oprf_bytes(n_peer, n, stat_sec)
    with progress(n, "rr22 sender", unit="id", enabled=show_progress) as bar:
        for lo, hi in _spans(n, chunk):
            with clock("values"):
                part = OkvsRows(rows.pos[:, lo:hi], rows.dense[lo:hi], rows.size)
                diff = store.decode(masked, part).view("<u8").reshape(hi - lo, 2)
                np.bitwise_xor(diff, shuffled[lo:hi].view("<u8").reshape(hi - lo, 2), out=diff)
                value = dec_b[lo:hi] ^ times_delta(diff)  # Decode(B, y) + Delta * (Decode(P', y) + y)
                out = _values(keys, value.view(np.uint8), shuffled[lo:hi], size)
            with clock("send"):
                comm.exchange("rr22.values", {peer: [out]})
            bar.update(hi - lo)
    if reveal == "receiver":
        return PsiResult(None, -1, n_peer, clock.phases)
    with clock("wait"):
        answer = comm.exchange("rr22.matches", recv={peer: 1})[peer][0]
    if answer.dtype != np.uint8 or answer.ndim != 2 or answer.shape[1] != items.shape[1] or len(answer) > n:
        raise ProtocolMismatch(peer, "the common items are not (k, 16) bytes with k <= |Y|")
    mine = _members(items, answer)
    return PsiResult(mine.astype(np.int64), len(mine), n_peer, clock.phases)
