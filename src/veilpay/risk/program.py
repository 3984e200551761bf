"""The MPC program that scores a micro-batch of payments (SPMD: every node of the mesh
runs it; the semi2k dealer takes part with no data).

Inputs, at each share holder: the payments' feature shares (the MPP's columns, then
the ACQP's, fixed point with the model's fraction bits), the model's weight and bias
shares, the velocity sums' shares (USD cents, integers) and the velocity counts
(public to the nodes). Steps:

1. ``z = X w + b``: one Beaver matrix product, kept at scale ``2^(2 frac)`` with no
   truncation (the model's linear score; the fraud probability is ``sigmoid(z)``,
   monotone, so thresholds on the probability are thresholds on ``z`` at their logit,
   scaled alike, and no sigmoid is needed);
2. every secret condition of the rule set, all at once, as the sign of a difference
   (``msb``: one bit decomposition of a (n, k) matrix);
3. each rule is the AND of its conditions, decline and review are the ORs of theirs
   with the score thresholds; ANDs are products of bits, ORs ``1 - prod(1 - b)``, in a
   balanced tree (log rounds);
4. the decision's two bits ``decline`` and ``review and not decline`` are revealed to
   the share holders; nothing else is.

Fixed-point ties: ``z`` is the exact product of the rounded features and weights, so
it carries their rounding (each scaled by the other's magnitude) and the bias's; a
payment whose score lies within ``(|x|_1 + |w|_1 + 4) * 2^-(frac + 1)`` of a
threshold's logit may fall on the other side of it than in plaintext (``docs/risk.md``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from veilpay.errors import InvalidInput
from veilpay.mpc.nonlinear import msb
from veilpay.mpc.protocol import Protocol, map_shares
from veilpay.mpc.tensor import SharedTensor, concatenate
from veilpay.risk.rules import MAX_AMOUNT_CENTS, PUBLIC_FEATURES, Condition, RuleSet

__all__ = ["DECISIONS", "decisions_of", "score_batch", "tensor_of"]

DECISIONS = ("approve", "review", "decline")
_SUM_COLUMN = {"sum_1h": 0, "sum_24h": 1}
_COUNT_COLUMN = {"count_1h": 0, "count_24h": 1}


def tensor_of(rt: Protocol, words: np.ndarray | None, shape: tuple[int, ...], frac: int) -> SharedTensor:
    """A SharedTensor of a holder's share words (``shape + (words,)``, uint64: one word
    for semi2k, the two replicated components for aby3); the dealer passes None."""
    if rt.me not in rt.compute or words is None:
        return SharedTensor(rt, None, shape, frac)
    need = 1 if rt.name == "semi2k" else 2
    if words.dtype != np.uint64 or words.shape != (*shape, need):
        raise InvalidInput(f"share words of shape {shape + (need,)} expected, got {words.shape}")
    return SharedTensor(rt, tuple(np.ascontiguousarray(words[..., i]) for i in range(need)), shape, frac)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _and_tree(rt: Protocol, columns: list[list[SharedTensor]]) -> list[SharedTensor]:
    """The product of each list of 0/1 tensors (n,), all lists reduced level by level
    together (one multiplication round per level)."""
    cols = [list(c) for c in columns]
    while any(len(c) > 1 for c in cols):
        left: list[SharedTensor] = []
        right: list[SharedTensor] = []
        where: list[int] = []
        for i, c in enumerate(cols):
            while len(c) > 1:
                left.append(c.pop())
                right.append(c.pop())
                where.append(i)
        n = left[0].shape[0]
        prod = concatenate(left) * concatenate(right)  # integers: no truncation
        for j, i in enumerate(where):
            cols[i].insert(0, prod[j * n:(j + 1) * n])
    return [c[0] for c in cols]


def score_batch(rt: Protocol, n: int, x: SharedTensor, w: SharedTensor, b: SharedTensor, sums: SharedTensor,
                counts: np.ndarray | None, rule_sets: Sequence[RuleSet],
                amounts: SharedTensor | None = None) -> list[np.ndarray | None]:
    """Decisions (0 approve, 1 review, 2 decline; int8 (n,)) of each rule set, at the
    share holders (None at the dealer). ``x``: (n, d) fixed point; ``w``: (d, 1);
    ``b``: (1, 1); ``sums``: (n, 2) integers (1 h, 24 h); ``counts``: public (n, 2) at
    the holders, None at the dealer. With ``amounts`` ((n,) integers, the ACQP's amount
    words), one more array comes last: 1 where the amount is in 0..MAX_AMOUNT_CENTS,
    else 0 (checked in the same bit decomposition; the holders learn this bit only)."""
    frac = rt.fxp.frac_bits
    # z at scale 2^(2 frac), with no truncation (a round saved): the features' words are
    # read as integers, so the product takes the weights' frac bits only; the bias is
    # scaled up to match, locally.
    xi = SharedTensor(rt, x.sh, x.shape, 0)
    bi = SharedTensor(rt, map_shares(lambda s: s << np.uint64(frac), b.sh), b.shape, frac)
    z = xi @ w + bi                                     # (n, 1): logit * 2^(2 frac)
    z_int = SharedTensor(rt, None if z.sh is None else tuple(s.reshape(n) for s in z.sh), (n,), 0)
    holder = rt.me in rt.compute
    if holder and (counts is None or counts.shape != (n, 2)):
        raise InvalidInput("velocity counts: (n, 2) at every share holder")

    # every secret comparison as one column of differences whose sign is the answer:
    # column = a - c, bit = [a - c < 0]
    diffs: list[SharedTensor] = []
    index: dict[tuple[str, str, float], int] = {}

    def secret(feature: str, op: str, value: float) -> tuple[int, bool]:
        """(column, negate): the condition is bit(column), or 1 - bit when negate."""
        if feature == "score":
            thr = int(round(_logit(value) * (1 << (2 * frac))))
            col_value = z_int
        else:
            thr = int(value)
            col_value = sums[:, _SUM_COLUMN[feature]]
        # x > t  <=>  t - x < 0;  x >= t  <=>  not (x - t < 0);  x < t  <=>  x - t < 0;  x <= t  <=>  not (t - x < 0)
        lower_first = op in (">", "<=")
        key = (feature, "t-x" if lower_first else "x-t", float(value))
        if key not in index:
            index[key] = len(diffs)
            t = np.full(n, thr, dtype=np.int64)
            diffs.append((-col_value + t) if lower_first else (col_value - t))
        return index[key], op in (">=", "<=")

    plans = []
    for rs in rule_sets:
        decline_terms: list[tuple[list[tuple[int, bool]], np.ndarray | None]] = [
            ([secret("score", ">=", rs.decline)], None)]
        review_terms: list[tuple[list[tuple[int, bool]], np.ndarray | None]] = [
            ([secret("score", ">=", rs.review)], None)]
        for r in rs.rules:
            sec = [secret(c.feature, c.op, c.value) for c in r.conditions if c.feature not in PUBLIC_FEATURES]
            pub = _public_bits(r.conditions, counts) if holder else None
            (decline_terms if r.action == "decline" else review_terms).append((sec, pub))
        plans.append((decline_terms, review_terms))

    k = len(diffs)
    if amounts is not None:  # in range: not (a < 0) and not (MAX - a < 0)
        diffs += [amounts, -amounts + np.full(n, MAX_AMOUNT_CENTS, dtype=np.int64)]
    bits = msb(concatenate([d.reshape(n, 1) for d in diffs], axis=1))  # (n, k [+ 2])

    def term_columns(term: tuple[list[tuple[int, bool]], np.ndarray | None]) -> list[SharedTensor]:
        cols = [(1 - bits[:, c]) if neg else bits[:, c] for c, neg in term[0]]
        if not cols:  # only public conditions: a constant sharing of them
            cols = [bits[:, 0] * 0 + 1]
        if term[1] is not None:
            cols[0] = cols[0] * term[1]
        return cols

    # rules: AND of their conditions; then, per rule set, NOT decline / NOT review as
    # products of (1 - term), in one tree; then review and not decline.
    terms = [t for dec, rev in plans for t in (*dec, *rev)]
    anded = _and_tree(rt, [term_columns(t) for t in terms])
    groups: list[list[SharedTensor]] = []
    pos = 0
    for dec, rev in plans:
        groups.append([1 - a for a in anded[pos:pos + len(dec)]])
        pos += len(dec)
        groups.append([1 - a for a in anded[pos:pos + len(rev)]])
        pos += len(rev)
    nots = _and_tree(rt, groups)
    declines = [1 - nots[2 * i] for i in range(len(plans))]
    # the amount check rides in the last level, which every batch has
    checks = [[1 - bits[:, k], 1 - bits[:, k + 1]]] if amounts is not None else []
    reviews = _and_tree(rt, [[1 - nots[2 * i + 1], nots[2 * i]] for i in range(len(plans))] + checks)
    amount_ok = reviews.pop() if amounts is not None else None
    opened = concatenate([concatenate([d, r]) for d, r in zip(declines, reviews, strict=True)]
                         + ([amount_ok] if amount_ok is not None else [])).reveal(list(rt.compute))
    if opened is None:
        return [None for _ in range(len(rule_sets) + (amounts is not None))]
    out: list[np.ndarray | None] = []
    for i in range(len(rule_sets)):
        d_bits = opened[2 * i * n:(2 * i + 1) * n]
        r_bits = opened[(2 * i + 1) * n:(2 * i + 2) * n]
        if not (np.isin(d_bits, (0, 1)).all() and np.isin(r_bits, (0, 1)).all()):
            raise InvalidInput("the decision bits are not bits: a node's shares are inconsistent")
        out.append(np.where(d_bits == 1, 2, np.where(r_bits == 1, 1, 0)).astype(np.int8))
    if amounts is not None:
        ok = opened[2 * len(rule_sets) * n:]
        if not np.isin(ok, (0, 1)).all():
            raise InvalidInput("the amount bits are not bits: a node's shares are inconsistent")
        out.append(ok.astype(np.int8))
    return out


def _public_bits(conditions: Sequence[Condition], counts: np.ndarray | None) -> np.ndarray | None:
    pub = [c for c in conditions if c.feature in PUBLIC_FEATURES]
    if not pub or counts is None:
        return None
    out = np.ones(counts.shape[0], dtype=bool)
    for c in pub:
        col = counts[:, _COUNT_COLUMN[c.feature]]
        out &= {">": col > c.value, ">=": col >= c.value, "<": col < c.value, "<=": col <= c.value}[c.op]
    return out.astype(np.int64)


def decisions_of(codes: np.ndarray) -> list[str]:
    return [DECISIONS[int(c)] for c in codes]
