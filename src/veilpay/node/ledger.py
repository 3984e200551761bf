"""The disclosure ledger: every reveal the privacy nodes make, recorded before it is
made, in a hash chain that every node keeps and signs.

An entry names the function (``refund_check``, ``settle``, ``analytics``), its
subject (a period, or a refund), the recipients, the size of each cell it reveals
about, the differential privacy it spends (``epsilon``, analytics only, with the
calendar month whose budget it draws on) and the SHA-256 of everything the job
computed over (its items and the nodes' policy). Its hash covers the previous
entry's hash, so the chain fixes the whole history: an entry cannot be changed,
dropped or reordered without changing every later hash.

Before a job reveals anything, the nodes taking part compare the entry they are
about to append and the head they would append it to (``agree_heads``, over their
TLS mesh); a node whose history differs (it skipped an entry, or was fed another
one) stops the job with ``LedgerMismatch``, and nothing is revealed. Each node then
appends the entry and signs it with its own key (the signature covers the hash and
when this node recorded it). A node that crashed between appending and revealing
finds the same entry as its last one when the job runs again and does not append it
twice.

Reading a copy, as a partner or an auditor does, is ``veilpay.sdk.ledger``
(``veilpay node ledger fetch`` / ``verify``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from sqlalchemy import Engine, Table, func, insert, select

from veilpay.crypto.digest import sha256
from veilpay.crypto.signing import b64e
from veilpay.errors import LedgerMismatch, NodeError, WireFormatError
from veilpay.mpc.protocol import Protocol
from veilpay.node.store import ledger
from veilpay.sdk import wirejson
from veilpay.sdk.keys import PartyKeys
from veilpay.sdk.ledger import CONTENT, GENESIS, entry_hash, signed_message

__all__ = ["Ledger", "Proposal", "agree_heads"]



@dataclass(frozen=True)
class Proposal:
    """What a job is about to reveal: the content of its ledger entry."""

    function: str
    subject: str
    recipients: tuple[str, ...]
    cells: tuple[int, ...]
    epsilon: str
    month: str
    params: str

    def content(self) -> dict[str, Any]:
        return {"function": self.function, "subject": self.subject, "recipients": list(self.recipients),
                "cells": list(self.cells), "epsilon": self.epsilon, "month": self.month, "params": self.params}

    def to_bytes(self) -> bytes:
        return wirejson.dumps_sorted(self.content())

    @classmethod
    def from_bytes(cls, raw: bytes, peer: str) -> Proposal:
        try:
            c = wirejson.loads(raw)
            if not isinstance(c, dict) or set(c) != set(CONTENT):
                raise ValueError("fields")
            return cls(str(c["function"]), str(c["subject"]), tuple(str(r) for r in c["recipients"]),
                       tuple(int(n) for n in c["cells"]), str(c["epsilon"]), str(c["month"]), str(c["params"]))
        except (ValueError, TypeError) as exc:
            raise WireFormatError(peer, "malformed ledger proposal") from exc


class Ledger:
    """This node's copy of the ledger, in its database."""

    def __init__(self, engine: Engine, keys: PartyKeys, table: Table = ledger) -> None:
        self.engine, self.keys, self.t = engine, keys, table

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last entry; (0, GENESIS) for an empty ledger."""
        with self.engine.connect() as conn:
            row = conn.execute(select(self.t.c.seq, self.t.c.hash).order_by(self.t.c.seq.desc()).limit(1)).first()
        return (0, GENESIS) if row is None else (int(row.seq), str(row.hash))

    def position(self, proposal: Proposal) -> tuple[int, str, bool]:
        """(seq, prev, recorded): where ``proposal`` goes, or, when this ledger already
        holds exactly this entry (a job computed again after a node stopped between
        append and reveal), where it is."""
        with self.engine.connect() as conn:
            same = conn.execute(select(self.t.c.seq, self.t.c.prev, self.t.c.body).where(
                self.t.c.function == proposal.function, self.t.c.subject == proposal.subject)).all()
            for entry in same:
                body = wirejson.loads(entry.body)
                if {k: body.get(k) for k in CONTENT} == proposal.content():
                    return int(entry.seq), str(entry.prev), True
            head = conn.execute(select(self.t.c.seq, self.t.c.hash).order_by(self.t.c.seq.desc()).limit(1)).first()
        return (1, GENESIS, False) if head is None else (int(head.seq) + 1, str(head.hash), False)

    def committed(self, function: str, subject: str) -> str | None:
        """The params of the last entry recorded for (function, subject), if any."""
        with self.engine.connect() as conn:
            body = conn.execute(select(self.t.c.body).where(self.t.c.function == function, self.t.c.subject == subject)
                                .order_by(self.t.c.seq.desc()).limit(1)).scalar()
        return None if body is None else str(wirejson.loads(body)["params"])

    def append(self, proposal: Proposal, seq: int, prev: str, budget: Fraction | None = None) -> dict[str, Any]:
        """Record ``proposal`` at ``seq`` after ``prev``; returns its record. With
        ``budget``, an entry that would take its month's epsilon over it is refused, in
        the transaction that would append it."""
        body = {"v": 1, "seq": seq, "prev": prev, **proposal.content()}
        h = entry_hash(body)
        at = int(time.time() * 1000)
        kv, key = self.keys.signer()
        sig = b64e(key.sign(signed_message(self.keys.id, h, at)))
        with self.engine.begin() as conn:
            row = conn.execute(select(self.t.c.seq, self.t.c.hash).order_by(self.t.c.seq.desc()).limit(1)).first()
            if ((0, GENESIS) if row is None else (int(row.seq), str(row.hash))) != (seq - 1, prev):
                raise LedgerMismatch(self.keys.id, "the ledger moved while the job ran")
            if budget is not None and Fraction(proposal.epsilon) > 0:
                spent = conn.execute(select(self.t.c.epsilon).where(self.t.c.month == proposal.month,
                                                                    self.t.c.function == proposal.function)).scalars()
                if sum((Fraction(e) for e in spent), Fraction(0)) + Fraction(proposal.epsilon) > budget:
                    raise NodeError(f"{proposal.month}: epsilon {proposal.epsilon} more is over the privacy budget",
                                    "BUDGET_EXHAUSTED", 409)
            conn.execute(insert(self.t).values(seq=seq, prev=prev, hash=h, body=wirejson.dumps_sorted(body).decode(),
                                               function=proposal.function, subject=proposal.subject,
                                               month=proposal.month, epsilon=proposal.epsilon, at_ms=at,
                                               sig=f"{kv}:{sig}"))
        return {"seq": seq, "hash": h}

    def spent(self, month: str) -> Fraction:
        """Epsilon that this month's analytics releases have spent."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(self.t.c.epsilon).where(self.t.c.function == "analytics",
                                                               self.t.c.month == month)).scalars().all()
        return sum((Fraction(e) for e in rows), Fraction(0))

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(self.t)).scalar() or 0)

    def export(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """The records after ``after``, oldest first, as ``verify_records`` reads them."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(self.t).where(self.t.c.seq > after).order_by(self.t.c.seq).limit(limit)).all()
        out = []
        for r in rows:
            kv, _, sig = str(r.sig).partition(":")
            out.append({"seq": int(r.seq), "prev": r.prev, "hash": r.hash, "body": wirejson.loads(r.body),
                        "node": self.keys.id, "at": int(r.at_ms), "kv": int(kv), "sig": sig})
        return out


# ------------------------------------------------------------------ agreement before a reveal
def _header(seq: int, prev: str, proposal: Proposal) -> np.ndarray:
    return np.frombuffer(seq.to_bytes(8, "big") + bytes.fromhex(prev) + sha256(proposal.to_bytes()), dtype=np.uint8)


def agree_heads(rt: Protocol, book: Ledger, proposal: Proposal | None,
                budget: Fraction | None = None) -> dict[str, Any]:
    """Every node of the job agrees on the next ledger entry and the head it follows,
    then appends it; the share holders pass the ``proposal`` (a dealer, which holds no
    items, passes None and takes the holders' proposal once they agree on it).
    LedgerMismatch when any two nodes' histories or proposals differ. Returns the
    appended record's (seq, hash)."""
    holders = rt.compute
    me_holds = rt.me in holders
    others = [p for p in rt.comm.parties if p not in holders]  # the dealer, if any
    send: dict[str, list[np.ndarray]] = {}
    mine: np.ndarray | None = None
    if me_holds:
        if proposal is None:
            raise LedgerMismatch(rt.me, "a share holder must propose the entry")
        seq, prev, recorded = book.position(proposal)
        mine = _header(seq, prev, proposal)
        raw = np.frombuffer(proposal.to_bytes(), dtype=np.uint8)
        for p in rt.comm.peers:
            send[p] = [mine] if p in holders else [mine, raw]
    got = rt.comm.exchange("ledger", send, {p: (1 if me_holds else 2) for p in holders if p != rt.me})
    for p in holders:
        if p == rt.me:
            continue
        h = got[p][0]
        if h.dtype != np.uint8 or h.shape != (72,):
            raise WireFormatError(p, "malformed ledger header")
        if not me_holds:
            prop = Proposal.from_bytes(got[p][1].tobytes(), p)
            if proposal is None:
                proposal = prop
                seq, prev, recorded = book.position(proposal)
                mine = _header(seq, prev, proposal)
            elif prop != proposal:
                raise LedgerMismatch(p, "the share holders propose different ledger entries")
        if not np.array_equal(h, mine):  # type: ignore[arg-type]
            raise LedgerMismatch(p, f"ledger of {p!r} differs from {rt.me!r}'s (another history or entry)")
    if others:  # the holders hear back from the dealer that it agrees
        back = rt.comm.exchange("ledger-ack", {p: [mine] for p in holders} if not me_holds else {},  # type: ignore[list-item]
                                {p: 1 for p in others} if me_holds else {})
        for p in others if me_holds else []:
            h = back[p][0]
            if h.dtype != np.uint8 or not np.array_equal(h, mine):  # type: ignore[arg-type]
                raise LedgerMismatch(p, f"ledger of {p!r} differs from {rt.me!r}'s")
    if proposal is None:
        raise LedgerMismatch(rt.me, "no share holder proposed an entry")
    if recorded:
        return {"seq": seq, "hash": entry_hash({"v": 1, "seq": seq, "prev": prev, **proposal.content()})}
    return book.append(proposal, seq, prev, budget)
