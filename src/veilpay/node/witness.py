"""A privacy node as a witness of the key log: where partners exchange the log heads
they have seen, so that a gateway that shows one partner a different log than another
(a split view, which needs the authority's key too) is caught.

The node keeps the newest key-log head a partner has offered it (in its ``meta``
table), signed by the authority the node pinned. A partner offers its own newest head
with a consistency proof against the node's (``base`` names the size the proof starts
from; the partner has the whole log and computes it). The node takes a larger head
only if the proof shows it extends the one it holds, checks a smaller one the same way
the other round, and refuses a head of the same size with another root. A refusal
(``LOG_INCONSISTENT``, 409) is the alarm: two partners were shown two logs. An offer
whose ``base`` is not the node's current head size is answered with that head and not
taken, so the partner checks the head against its own log first (a head outside the
partner's history is the same alarm, raised by the partner) and offers again.

The node checks only signatures and proofs; it holds no leaves, and it trusts nobody
for the heads it keeps (each is the authority's)."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from veilpay.errors import LogInconsistent, NodeError
from veilpay.node.store import meta
from veilpay.sdk.authority import Authority
from veilpay.sdk.transparency import TreeHead, verify_consistency

__all__ = ["Witness"]

log = logging.getLogger("veilpay.node")
_KEY = "witness_head"
_MAX_PROOF = 64  # hashes: a consistency proof has at most about 2 log2(size)


class Witness:
    def __init__(self, engine: Engine, authority: Authority) -> None:
        self.engine, self.authority = engine, authority
        self._lock = threading.Lock()

    def head(self) -> TreeHead | None:
        with self.engine.connect() as conn:
            raw = conn.execute(select(meta.c.value).where(meta.c.key == _KEY)).scalar()
        return None if raw is None else TreeHead.from_json(json.loads(raw))

    def _store(self, head: TreeHead, fresh: bool) -> None:
        value = json.dumps(head.to_json())
        with self.engine.begin() as conn:
            if fresh:
                conn.execute(insert(meta).values(key=_KEY, value=value))
            else:
                conn.execute(update(meta).where(meta.c.key == _KEY).values(value=value))

    def offer(self, obj: Any) -> dict[str, Any]:
        """``{"head", "base", "proof"}`` from a partner; answers ``{"head": the node's
        newest, "accepted"}``. NodeError HEAD_INVALID (400) for a malformed offer or a
        head the authority did not sign, LOG_INCONSISTENT (409) for a head that is not
        one history with the node's."""
        if not isinstance(obj, dict):
            raise NodeError("an object with head, base and proof", "HEAD_INVALID", 400)
        try:
            head = TreeHead.from_json(obj.get("head")).verify(self.authority.key)
            base, raw = obj.get("base"), obj.get("proof") or []
            if base is not None and (isinstance(base, bool) or not isinstance(base, int)) \
                    or not isinstance(raw, list) or len(raw) > _MAX_PROOF:
                raise ValueError("base or proof")
            proof = [bytes.fromhex(h) for h in raw]
        except (LogInconsistent, ValueError, TypeError) as exc:
            raise NodeError(f"not a key-log head the pinned authority signed, with a proof: {exc}", "HEAD_INVALID",
                            400) from exc
        with self._lock:
            cur = self.head()
            if cur is None:
                self._store(head, fresh=True)
                return {"head": head.to_json(), "accepted": True}
            if base != cur.size:
                return {"head": cur.to_json(), "accepted": False}
            if head.size == cur.size:
                ok = head.root == cur.root
            elif head.size > cur.size:
                ok = verify_consistency(cur.size, head.size, proof, cur.root, head.root)
            else:
                ok = verify_consistency(head.size, cur.size, proof, head.root, cur.root)
            if not ok:
                log.error("a partner offered a key-log head outside the history this node witnessed",
                          extra={"event": "log_inconsistent", "size": head.size, "witnessed": cur.size})
                raise NodeError(f"the key-log head of size {head.size} is not one history with the head of size "
                                f"{cur.size} this node witnessed: two views of the log", "LOG_INCONSISTENT", 409)
            if head.size > cur.size:
                self._store(head, fresh=False)
                cur = head
            return {"head": cur.to_json(), "accepted": True}
