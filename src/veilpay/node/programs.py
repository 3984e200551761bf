"""The MPC programs the privacy nodes run on hidden amounts (SPMD: every node of the
job's mesh runs the same function; the semi2k dealer takes part with no data).

Amounts are integers in Z_2^64 (fraction bits 0). A valid amount is 1..MAX_VALUE
minor units; the range test is exact: ``x - 1`` and ``MAX_VALUE - x`` must both have
a clear most significant bit, which ``msb`` computes by bit decomposition
(``docs/mpc.md``), so no share pair outside the range passes whatever its values.

Before any arithmetic the share-holding nodes agree on what they compute over: they
exchange the item count and a SHA-256 of the item ids, kinds and group keys, and the
per-item "my share opened" flags. Nodes that were fed different metadata stop with
NodesDisagree before anything is revealed. A job then records what it is about to
reveal in the disclosure ledger (``node.ledger.agree_heads``) before its first reveal.

What each program reveals, and to whom:
- ``valid_groups``: to the share holders, one bit per item (its shares add up
  outside 1..MAX_VALUE); the group sums stay shared, and the settlement job seals
  each holder's words of them to the partners the group's total is owed to.
- ``noisy_totals`` (analytics): to the share holders, each shown group's sum of
  min(amount, cap) plus every holder's discrete Laplace noise; no node knows the
  noise of another, so none sees an exact total.
- ``refund_bound``: one bit to the share holders (and through them the gateway)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from veilpay.crypto.digest import sha256
from veilpay.errors import NodesDisagree, WireFormatError
from veilpay.mpc.nonlinear import msb
from veilpay.mpc.protocol import Protocol
from veilpay.mpc.tensor import SharedTensor, concatenate, share
from veilpay.sdk.money import MAX_VALUE

__all__ = ["Groups", "Items", "agree_items", "noisy_totals", "refund_bound", "valid_groups"]


@dataclass
class Items:
    """A share-holding node's view of the items of a job, sorted by id. ``words`` is
    (n, 2) uint64: one ring element per item for semi2k (the second column unused),
    two for aby3; rows whose share did not open are zero and ``opened`` is False.
    ``caps``: analytics only, the public cap on each item's contribution."""

    ids: list[str]
    keys: list[str]              # the public group key of each item
    words: np.ndarray
    opened: np.ndarray           # bool (n,)
    caps: np.ndarray | None = None
    refs: list[str] | None = None  # each item's signed request (acquirer/kind/request id): agreed on too

    @classmethod
    def empty(cls) -> Items:
        return cls([], [], np.zeros((0, 2), dtype=np.uint64), np.zeros(0, dtype=bool))


@dataclass
class Groups:
    """A share holder's view of a job's groups after the range check, in key order:
    the valid items of each group (``ids``), those left out because a share did not
    open at some node (``rejected``) or because the shares add up outside
    1..MAX_VALUE (``out_of_range``), and this holder's share words of each group's sum
    of valid items (``words``, (groups, 2) uint64)."""

    keys: list[str]
    ids: list[list[str]]
    rejected: list[list[str]]
    out_of_range: list[list[str]]
    words: np.ndarray

    @property
    def counts(self) -> list[int]:
        return [len(i) for i in self.ids]


def _holders(rt: Protocol) -> tuple[str, ...]:
    return rt.compute


def _is_holder(rt: Protocol) -> bool:
    return rt.me in _holders(rt)


def _digest(*parts: Sequence[str]) -> np.ndarray:
    data = "\x01".join("".join(s + "\x00" for s in seq) for seq in parts).encode()
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


def agree_items(rt: Protocol, items: Items | None) -> tuple[int, np.ndarray | None]:
    """The job's item count (every node learns it) and, at the share holders, which
    items opened at every holder. NodesDisagree when the holders were fed different
    items, groups or flags."""
    if not _is_holder(rt):
        return agree(rt, "agree", None, None, None)
    items = items or Items.empty()
    return agree(rt, "agree", len(items.ids), _digest(items.ids, items.keys, items.refs or []), items.opened)


def _reduce(words: np.ndarray, sel: np.ndarray, gid: np.ndarray, groups: int) -> np.ndarray:
    """Per group, the sum (mod 2^64) of ``words[sel]`` whose group is ``gid``."""
    out = np.zeros((groups,) + words.shape[1:], dtype=np.uint64)
    if len(sel):
        order = np.argsort(gid, kind="stable")
        g, rows = gid[order], words[sel[order]]
        present = np.unique(g)
        out[present] = np.add.reduceat(rows, np.searchsorted(g, present), axis=0)
    return out


def valid_groups(rt: Protocol, items: Items | None, n: int, opened: np.ndarray | None,
                 clip: bool = False) -> tuple[Groups | None, SharedTensor | None]:
    """Range-check every item in MPC, revealing the per-item "outside 1..MAX_VALUE" bits
    to the share holders, and group the valid items by key. With ``clip`` also each
    group's sum of min(amount, cap) (``items.caps``), still shared: the second result,
    one element per group. The dealer gets (None, None)."""
    holder = _is_holder(rt)
    if holder:
        items = items or Items.empty()
    if n == 0:
        return (Groups([], [], [], [], np.zeros((0, 2), dtype=np.uint64)) if holder else None), None
    x = _tensor(rt, items.words if holder else None, n)  # type: ignore[union-attr]
    caps = np.zeros(n, dtype=np.int64)
    if clip and holder:
        if items.caps is None or items.caps.shape != (n,):  # type: ignore[union-attr]
            raise ValueError("clipping needs one cap per item")
        caps = items.caps  # type: ignore[union-attr]
    parts = [x - 1, MAX_VALUE - x] + ([-x + caps] if clip else [])
    m = msb(concatenate(parts))
    lo, hi = m[:n], m[n:2 * n]
    bad_t = (lo + hi - lo * hi).reveal(list(_holders(rt)))
    clipped = x - (x - caps) * m[2 * n:] if clip else None  # min(x, cap): x - (x - cap) * [x > cap]
    if not holder:
        return None, None
    bad = bad_t.astype(bool)  # type: ignore[union-attr]
    keep = opened & ~bad  # type: ignore[operator]
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(k, len(index)) for k in items.keys), dtype=np.int64,  # type: ignore[union-attr]
                        count=n)
    names = sorted(index)
    rank = np.empty(len(names), dtype=np.int64)
    rank[[index[k] for k in names]] = np.arange(len(names))
    inverse = rank[codes]  # each item's group, in key order
    g = len(names)
    ids_arr = np.asarray(items.ids, dtype=object)  # type: ignore[union-attr]
    sel = np.flatnonzero(keep)
    order = sel[np.argsort(inverse[sel], kind="stable")]  # kept items by group, in id order within each
    bounds = np.searchsorted(inverse[order], np.arange(g + 1))
    ids = [ids_arr[order[bounds[j]:bounds[j + 1]]].tolist() for j in range(g)]
    rejected: list[list[str]] = [[] for _ in range(g)]
    out_rng: list[list[str]] = [[] for _ in range(g)]
    for i in np.flatnonzero(~keep):  # few: shares that did not open, or add up out of range
        (rejected if not opened[i] else out_rng)[inverse[i]].append(items.ids[i])  # type: ignore[index, union-attr]
    groups = Groups(names, ids, rejected, out_rng, _reduce(items.words, sel, inverse[sel], g))  # type: ignore[union-attr]
    if clipped is None:
        return groups, None
    sums = tuple(_reduce(np.ascontiguousarray(s), sel, inverse[sel], g) for s in clipped.sh)  # type: ignore[union-attr]
    return groups, SharedTensor(rt, sums, (g,), 0)


def noisy_totals(rt: Protocol, sums: SharedTensor | None, shown: np.ndarray | None,
                 noise: np.ndarray | None) -> np.ndarray | None:
    """The share holders' common view of each shown group's sum plus every holder's
    ``noise`` (int64, one per shown group; each holder inputs its own): only the noisy
    values are revealed, to the holders. The dealer takes no part (None)."""
    if not _is_holder(rt):
        return None
    g = len(shown)  # type: ignore[arg-type]
    picked = sums[shown] if g else None  # type: ignore[index]
    if g == 0:
        return np.zeros(0, dtype=np.int64)
    total = picked
    for h in _holders(rt):
        total = total + share(rt, h, noise if h == rt.me else None, shape=(g,), fixed=False)  # type: ignore[operator]
    return total.reveal(list(_holders(rt)))  # type: ignore[union-attr]


def refund_bound(rt: Protocol, payment: np.ndarray | None, others: np.ndarray | None, refund: np.ndarray | None,
                 tag: str, opened: bool, before_reveal: Callable[[], object] | None = None) -> bool:
    """One bit for the gateway: the refund is 1..MAX_VALUE, the payment is 1..MAX_VALUE,
    and payment - (refunds already reserved or made) - refund >= 0. ``payment``,
    ``others`` (the sum of the earlier refunds' shares) and ``refund`` are this node's
    share words (2,); ``tag`` names the refund and payment (the nodes agree on it);
    ``opened`` is False where this node could not open one of the shares.
    ``before_reveal`` runs at every node after the nodes agree and before the bit is
    revealed (the ledger entry)."""
    holder = _is_holder(rt)
    digest = _digest([tag]) if holder else None
    _, flags = agree(rt, "agree", 1 if holder else None, digest,
                     np.array([opened]) if holder else None)
    if before_reveal is not None:
        before_reveal()
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
