"""The MPC programs the privacy nodes run on hidden amounts (SPMD: every node of the
job's mesh runs the same function; the semi2k dealer takes part with no data).

Amounts are integers in Z_2^64 (fraction bits 0). A valid amount is 1..MAX_VALUE
minor units; the range test is exact: ``x - 1`` and ``MAX_VALUE - x`` must both have
a clear most significant bit, which ``msb`` computes by bit decomposition
(``docs/mpc.md``), so no share pair outside the range passes whatever its values.

Before any arithmetic the share-holding nodes agree on what they compute over: they
exchange the item count and a SHA-256 of the item ids, kinds and group keys, and the
per-item "my share opened" flags. Nodes that were fed different metadata stop with
NodesDisagree before anything is revealed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from veilpay.crypto.digest import sha256
from veilpay.errors import NodesDisagree, WireFormatError
from veilpay.mpc.nonlinear import msb
from veilpay.mpc.protocol import Protocol
from veilpay.mpc.tensor import SharedTensor, concatenate
from veilpay.sdk.money import MAX_VALUE

__all__ = ["GroupResult", "Items", "group_totals", "refund_bound"]


@dataclass
class Items:
    """A share-holding node's view of the items of a job, sorted by id. ``words`` is
    (n, 2) uint64: one ring element per item for semi2k (the second column unused),
    two for aby3; rows whose share did not open are zero and ``opened`` is False."""

    ids: list[str]
    keys: list[str]              # the public group key of each item
    words: np.ndarray
    opened: np.ndarray           # bool (n,)

    @classmethod
    def empty(cls) -> Items:
        return cls([], [], np.zeros((0, 2), dtype=np.uint64), np.zeros(0, dtype=bool))


@dataclass
class GroupResult:
    key: str
    count: int
    total: int | None            # None where the group was below the reveal threshold
    rejected: list[str]          # items left out: share did not open at some node
    out_of_range: list[str]      # items left out: shares add up outside 1..MAX_VALUE


def _holders(rt: Protocol) -> tuple[str, ...]:
    return rt.compute


def _is_holder(rt: Protocol) -> bool:
    return rt.me in _holders(rt)


def _digest(*parts: Sequence[str]) -> np.ndarray:
    data = b"\x01".join(b"".join(s.encode() + b"\x00" for s in seq) for seq in parts)
    return np.frombuffer(sha256(data), dtype=np.uint64)


def agree(rt: Protocol, label: str, n: int | None, digest: np.ndarray | None,
          flags: np.ndarray | None) -> tuple[int, np.ndarray | None]:
    """Share holders exchange (count, digest) with every party and their per-item flags
    with each other. Returns the count (the dealer learns it here) and, at holders, the
    AND of all holders' flags. NodesDisagree when two holders differ."""
    me_holds = _is_holder(rt)
    head = np.concatenate([np.array([n or 0], dtype=np.uint64), digest]) if me_holds else None
    send: dict[str, list[np.ndarray]] = {}
    if head is not None and flags is not None:
        for p in rt.comm.peers:
            send[p] = [head] if p not in _holders(rt) else [head, flags.astype(np.uint8)]
    recv = {p: (2 if me_holds else 1) for p in _holders(rt) if p != rt.me}
    got = rt.comm.exchange(label, send, recv)
    ref = head
    combined = flags.copy() if flags is not None else None
    for p, arrays in got.items():
        h = arrays[0]
        if h.dtype != np.uint64 or h.shape != (5,):
            raise WireFormatError(p, "malformed agreement message")
        if ref is None:
            ref = h
        elif not np.array_equal(ref, h):
            raise NodesDisagree(p, f"{label}: this node holds other items than {p!r}")
        if me_holds:
            f = arrays[1]
            if f.dtype != np.uint8 or f.shape != (int(h[0]),):
                raise WireFormatError(p, "malformed flags")
            combined = combined & f.astype(bool)  # type: ignore[operator]
    if ref is None:
        raise NodesDisagree(rt.me, "no share-holding node took part")
    return int(ref[0]), combined


def _tensor(rt: Protocol, words: np.ndarray | None, n: int) -> SharedTensor:
    if not _is_holder(rt) or words is None:
        return SharedTensor(rt, None, (n,), 0)
    if rt.name == "semi2k":
        return SharedTensor(rt, (np.ascontiguousarray(words[:, 0]),), (n,), 0)
    return SharedTensor(rt, (np.ascontiguousarray(words[:, 0]), np.ascontiguousarray(words[:, 1])), (n,), 0)


def out_of_range(x: SharedTensor) -> SharedTensor:
    """1 where x is outside 1..MAX_VALUE (exactly, for any ring value), else 0."""
    n = x.shape[0]
    m = msb(concatenate([x - 1, MAX_VALUE - x]))
    lo, hi = m[:n], m[n:]
    return lo + hi - lo * hi


def group_totals(rt: Protocol, items: Items | None, min_count: int = 1) -> list[GroupResult]:
    """Per group key: the count and, where the count reaches ``min_count``, the total of
    the items whose shares opened at every node and add up to 1..MAX_VALUE. Totals are
    revealed to the share holders only; the dealer (semi2k) returns an empty list."""
    holder = _is_holder(rt)
    if holder and items is None:
        items = Items.empty()
    digest = _digest(items.ids, items.keys) if holder else None  # type: ignore[union-attr]
    n, opened = agree(rt, "agree", len(items.ids) if holder else None, digest,  # type: ignore[union-attr]
                      items.opened if holder else None)  # type: ignore[union-attr]
    if n == 0:
        return []
    x = _tensor(rt, items.words if holder else None, n)  # type: ignore[union-attr]
    bad_t = out_of_range(x).reveal(list(_holders(rt)))
    if not holder:
        return []
    bad = bad_t.astype(bool)  # type: ignore[union-attr]
    keep = opened & ~bad  # type: ignore[operator]
    keys = np.asarray(items.keys, dtype=object)  # type: ignore[union-attr]
    uniq, inverse = np.unique(keys, return_inverse=True)
    counts = np.bincount(inverse[keep], minlength=len(uniq))
    shown = np.flatnonzero(counts >= min_count)
    order = np.argsort(inverse[keep], kind="stable")
    sel = np.flatnonzero(keep)[order]
    gid = inverse[sel]
    present = np.unique(gid)
    every = np.zeros((len(uniq), 2), dtype=np.uint64)
    if len(present):
        every[present] = np.add.reduceat(items.words[sel], np.searchsorted(gid, present), axis=0)  # type: ignore[union-attr]
    sums = every[shown]
    totals = _tensor(rt, sums, len(shown)).reveal(list(_holders(rt)))
    tot_by_group = {int(g): int(t) for g, t in zip(shown, totals, strict=True)}  # type: ignore[arg-type]
    left_out: list[tuple[list[str], list[str]]] = [([], []) for _ in uniq]
    for i in np.flatnonzero(~keep):  # few: shares that did not open or add up out of range
        left_out[inverse[i]][0 if not opened[i] else 1].append(items.ids[i])  # type: ignore[index, union-attr]
    return [GroupResult(str(key), int(counts[g]), tot_by_group.get(g), sorted(left_out[g][0]), sorted(left_out[g][1]))
            for g, key in enumerate(uniq)]


def refund_bound(rt: Protocol, payment: np.ndarray | None, others: np.ndarray | None, refund: np.ndarray | None,
                 tag: str, opened: bool) -> bool:
    """One bit for the gateway: the refund is 1..MAX_VALUE, the payment is 1..MAX_VALUE,
    and payment - (refunds already reserved or made) - refund >= 0. ``payment``,
    ``others`` (the sum of the earlier refunds' shares) and ``refund`` are this node's
    share words (2,); ``tag`` names the refund and payment (the nodes agree on it);
    ``opened`` is False where this node could not open one of the shares."""
    holder = _is_holder(rt)
    digest = _digest([tag]) if holder else None
    _, flags = agree(rt, "agree", 1 if holder else None, digest,
                     np.array([opened]) if holder else None)
    if holder:
        p, o, r = (np.asarray(a, dtype=np.uint64).reshape(1, 2) for a in (payment, others, refund))
        words = np.concatenate([p, p - o - r, r])
    else:
        words = None
    x = _tensor(rt, words, 3)
    pay, rest, ref = x[0:1], x[1:2], x[2:3]
    m = msb(concatenate([ref - 1, MAX_VALUE - ref, rest, pay - 1, MAX_VALUE - pay]))
    t = 1 - m
    pair = t[0:2] * t[2:4]
    ok = pair[0:1] * pair[1:2] * t[4:5]
    bit = ok.reveal(list(_holders(rt)))
    if not holder:
        return False
    return bool(int(bit[0]) == 1 and bool(flags[0]))  # type: ignore[index]
