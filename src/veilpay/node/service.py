"""A privacy node: takes the share envelopes and status changes the gateway relays (its
feed, applied in order and exactly once), and runs the jobs the gateway submits with
the other nodes over mutual-TLS channels.

The node decides what it computes over. A settlement job names a date; the node
selects that day's successful items from its own store and groups them by their
(acquirer, MPP, currency, kind), so the gateway cannot ask for the total of a subset
of its choosing. Analytics reveal a group's total only when it has at least
``min_count`` payments, a floor the node enforces whatever the job asks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import Engine, and_, bindparam, insert, select, update

from veilpay.crypto import label_digest
from veilpay.crypto.digest import sha256
from veilpay.errors import DecryptionError, NodeError, NodesDisagree, ProtocolError
from veilpay.mpc.runtime import make_protocol, ring_errstate
from veilpay.net import Communicator
from veilpay.node.programs import GroupResult, Items, group_totals, refund_bound
from veilpay.node.store import items, jobs, state
from veilpay.sdk.keys import PartyKeys
from veilpay.sdk.shares import KINDS, Privacy, open_share

__all__ = ["JOB_KINDS", "NodeService"]

JOB_KINDS = ("refund_check", "settle", "analytics")
_PAY_STATUS = {"SUCCESS", "FAIL", "CANCELLED"}
_REFUND_STATUS = {"SUCCESS": "SUCCESS", "FAIL": "RELEASED"}
_DAY = 10
_MOD = 1 << 64
# The feed's statements, built once: building one per item cost SQLAlchemy more CPU
# than running it (bench/gateway.py, shared amounts).
_ITEM_EXISTS = select(items.c.id).where(items.c.id == bindparam("b_id"))
_OPENED_REQUEST = select(items.c.id).where(and_(
    items.c.acqp_id == bindparam("b_acqp"), items.c.kind == bindparam("b_kind"),
    items.c.request_id == bindparam("b_req"), items.c.opened.is_(True)))
_INSERT_ITEM = insert(items)
_ITEM_STATE = select(items.c.kind, items.c.status).where(items.c.id == bindparam("b_id"))
_SET_STATUS = update(items).where(items.c.id == bindparam("b_id")).values(status=bindparam("b_status"),
                                                                         day=bindparam("b_day"))


def _signed(w: int) -> int:
    return w - _MOD if w >= 1 << 63 else w


def _words(rows: Sequence[Any]) -> np.ndarray:
    arr = np.array([(r.w0, r.w1) for r in rows], dtype=np.int64).reshape(-1, 2)
    return arr.view(np.uint64)


def _text(obj: dict[str, Any], key: str, limit: int = 64) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v or len(v) > limit:
        raise NodeError(f"feed item: {key!r} must be a string of 1..{limit} characters", "FEED_INVALID", 400)
    return v


class NodeService:
    def __init__(self, keys: PartyKeys, privacy: Privacy, engine: Engine, mesh: Callable[[bytes], Communicator],
                 min_count: int = 10) -> None:
        if keys.id not in privacy.parties:
            raise NodeError(f"{keys.id!r} is not a node of the privacy network", "JOB_INVALID", 400)
        self.keys, self.privacy, self.engine, self.mesh = keys, privacy, engine, mesh
        self.me = keys.id
        self.holder = self.me in privacy.nodes
        self.min_count = min_count
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ feed
    def applied(self) -> int:
        with self.engine.connect() as conn:
            v = conn.execute(select(state.c.value).where(state.c.key == "applied_seq")).scalar()
        return int(v or 0)

    def ingest(self, batch: Any) -> dict[str, Any]:
        """Apply the feed items with a sequence number above the one applied; returns the
        new position and the items refused (an envelope for another node, one that does
        not open, a replay of another payment's request). Refused items are kept, marked,
        so every node still lists them and settlement reports them."""
        if not isinstance(batch, list) or len(batch) > 10_000:
            raise NodeError("feed: 'items' must be a list of at most 10000 items", "FEED_INVALID", 400)
        if not self.holder:
            raise NodeError("feed: the dealer holds no shares", "FEED_INVALID", 400)
        rejected: list[dict[str, Any]] = []
        with self.engine.begin() as conn:
            applied = int(conn.execute(select(state.c.value).where(state.c.key == "applied_seq")).scalar() or 0)
            start = applied
            for it in sorted(batch, key=lambda i: int(i.get("seq", 0)) if isinstance(i, dict) else 0):
                if not isinstance(it, dict) or not isinstance(it.get("seq"), int):
                    raise NodeError("feed item without an integer 'seq'", "FEED_INVALID", 400)
                seq = it["seq"]
                if seq <= applied:
                    continue
                op = it.get("op")
                if op == "share":
                    err = self._put_share(conn, it, seq)
                elif op == "status":
                    err = self._set_status(conn, it)
                else:
                    raise NodeError(f"feed item {seq}: unknown op {op!r}", "FEED_INVALID", 400)
                if err:
                    rejected.append({"seq": seq, "id": it.get("id"), "code": err})
                applied = seq
            if applied != start:
                if start == 0 and conn.execute(select(state.c.key).where(state.c.key == "applied_seq")).first() is None:
                    conn.execute(insert(state).values(key="applied_seq", value=applied))
                else:
                    conn.execute(update(state).where(state.c.key == "applied_seq").values(value=applied))
        return {"applied": applied, "rejected": rejected}

    def _put_share(self, conn: Any, it: dict[str, Any], seq: int) -> str:
        iid, kind = _text(it, "id", 40), _text(it, "kind", 8)
        acqp, mpp, req = _text(it, "acqp"), _text(it, "mpp"), _text(it, "requestId")
        currency = _text(it, "currency", 3)
        if kind not in KINDS:
            raise NodeError(f"feed item {seq}: kind must be one of {KINDS}", "FEED_INVALID", 400)
        payment = _text(it, "paymentId", 40) if kind == "refund" else None
        if conn.execute(_ITEM_EXISTS, {"b_id": iid}).first() is not None:
            return ""
        words, err = [0, 0], ""
        dup = conn.execute(_OPENED_REQUEST, {"b_acqp": acqp, "b_kind": kind, "b_req": req}).first()
        env = it.get("envelope")
        if dup is not None:
            err = "REPLAYED_SHARE"
        elif isinstance(env, dict) and env.get("to") != self.me:
            err = "WRONG_NODE"
        else:
            try:
                got = open_share(env, self.keys, kind, acqp, req, currency, self.privacy.words)
                words[:len(got)] = got
            except DecryptionError:
                err = "SHARE_INVALID"
        conn.execute(_INSERT_ITEM, {
            "id": iid, "kind": kind, "payment_id": payment, "acqp_id": acqp, "mpp_id": mpp, "currency": currency,
            "request_id": req, "w0": _signed(words[0]), "w1": _signed(words[1]), "opened": not err, "error": err,
            "status": "NEW", "day": None, "seq": seq})
        return err

    def _set_status(self, conn: Any, it: dict[str, Any]) -> str:
        iid, status = _text(it, "id", 40), _text(it, "status", 12)
        day = it.get("day")
        if day is not None and (not isinstance(day, str) or len(day) != _DAY):
            raise NodeError("feed item: 'day' must be YYYY-MM-DD", "FEED_INVALID", 400)
        row = conn.execute(_ITEM_STATE, {"b_id": iid}).first()
        if row is None:
            return "UNKNOWN_ITEM"
        if row.kind == "pay":
            if status not in _PAY_STATUS:
                raise NodeError(f"feed item: payment status {status!r}", "FEED_INVALID", 400)
            new = status
        else:
            if status not in _REFUND_STATUS:
                raise NodeError(f"feed item: refund status {status!r}", "FEED_INVALID", 400)
            new = _REFUND_STATUS[status]
        conn.execute(_SET_STATUS, {"b_id": iid, "b_status": new, "b_day": day if new == "SUCCESS" else None})
        return ""

    # ------------------------------------------------------------------ jobs
    def run_job(self, job: Any) -> dict[str, Any]:
        """Run one job with the other nodes; the same job id answers from the record."""
        if not isinstance(job, dict):
            raise NodeError("a job is a JSON object", "JOB_INVALID", 400)
        jid, kind, params = job.get("jobId"), job.get("kind"), job.get("params")
        if not isinstance(jid, str) or not 8 <= len(jid) <= 64 or kind not in JOB_KINDS or not isinstance(params, dict):
            raise NodeError(f"a job needs jobId (8..64 chars), kind in {JOB_KINDS} and params", "JOB_INVALID", 400)
        digest = sha256(json.dumps([kind, params], sort_keys=True).encode()).hex()
        with self.engine.connect() as conn:
            old = conn.execute(select(jobs).where(jobs.c.id == jid)).first()
        if old is not None:
            if old.params != digest:
                raise NodeError(f"job {jid} was run with other parameters", "JOB_INVALID", 409)
            return dict(json.loads(old.result))
        through = job.get("through") or {}
        need = through.get(self.me, 0) if isinstance(through, dict) else 0
        if self.holder and isinstance(need, int) and self.applied() < need:
            raise NodeError(f"this node has applied its feed to {self.applied()}, the job needs {need}", "NODE_BEHIND")
        if not self._lock.acquire(timeout=30):
            raise NodeError("another job is running", "NODE_BUSY", 503)
        try:
            comm = self.mesh(label_digest("veilpay/node-job/" + jid))
            try:
                with ring_errstate():
                    rt = make_protocol(self.privacy.protocol, comm, self.privacy.parties)
                    result = getattr(self, "_job_" + kind)(rt, params)
                comm.flush()
                stats = comm.total()
            finally:
                comm.close()
        except NodesDisagree as exc:
            raise NodeError(str(exc), "NODES_DISAGREE") from exc
        except ProtocolError as exc:
            raise NodeError(f"{kind}: {type(exc).__name__}: {exc}", "JOB_FAILED", 502) from exc
        finally:
            self._lock.release()
        result["bytesSent"], result["rounds"] = stats.bytes_sent, stats.rounds
        with self.engine.begin() as conn:
            conn.execute(insert(jobs).values(id=jid, kind=kind, params=digest, result=json.dumps(result),
                                             created_ms=int(time.time() * 1000)))
        return result

    def _job_refund_check(self, rt: Any, params: dict[str, Any]) -> dict[str, Any]:
        rid = params.get("refundId")
        if not isinstance(rid, str):
            raise NodeError("refund_check needs refundId", "JOB_INVALID", 400)
        if not self.holder:
            refund_bound(rt, None, None, None, "", False)
            return {"ok": None}
        zero = np.zeros(2, dtype=np.uint64)
        with self.engine.connect() as conn:
            ref = conn.execute(select(items).where(and_(items.c.id == rid, items.c.kind == "refund"))).first()
            pay = conn.execute(select(items).where(and_(items.c.id == ref.payment_id, items.c.kind == "pay"))).first() \
                if ref is not None else None
            others = conn.execute(select(items).where(and_(
                items.c.payment_id == (ref.payment_id if ref is not None else ""), items.c.kind == "refund",
                items.c.id != rid, items.c.status.in_(("RESERVED", "SUCCESS")), items.c.opened.is_(True)))
                .order_by(items.c.id)).all()
        opened = ref is not None and pay is not None and ref.opened and pay.opened and pay.status == "SUCCESS"
        tag = "|".join([rid, ref.payment_id if ref is not None else "", pay.status if pay is not None else "",
                        *[o.id for o in others]])
        p = _words([pay])[0] if pay is not None else zero
        r = _words([ref])[0] if ref is not None else zero
        o = _words(others).sum(axis=0, dtype=np.uint64) if others else zero
        ok = refund_bound(rt, p, o, r, tag, bool(opened))
        if ref is not None:
            with self.engine.begin() as conn:
                conn.execute(update(items).where(and_(items.c.id == rid, items.c.status.in_(
                    ("NEW", "RESERVED", "REJECTED")))).values(status="RESERVED" if ok else "REJECTED"))
        return {"ok": ok}

    def _day_items(self, day: Any, kinds: tuple[str, ...], key: Callable[[Any], str]) -> Items:
        if not isinstance(day, str) or len(day) != _DAY:
            raise NodeError("the job needs a day YYYY-MM-DD", "JOB_INVALID", 400)
        with self.engine.connect() as conn:
            rows = conn.execute(select(items.c.id, items.c.kind, items.c.acqp_id, items.c.mpp_id, items.c.currency,
                                       items.c.w0, items.c.w1, items.c.opened)
                                .where(and_(items.c.day == day, items.c.status == "SUCCESS", items.c.kind.in_(kinds)))
                                .order_by(items.c.id)).all()
        return Items([r.id for r in rows], [key(r) for r in rows], _words(rows),
                     np.array([bool(r.opened) for r in rows], dtype=bool))

    @staticmethod
    def _groups(res: list[GroupResult], names: tuple[str, ...]) -> list[dict[str, Any]]:
        out = []
        for g in res:
            parts = g.key.split("|")
            out.append({**dict(zip(names, parts, strict=True)), "count": g.count,
                        "total": None if g.total is None else str(g.total), "rejected": g.rejected,
                        "outOfRange": g.out_of_range})
        return out

    def _job_settle(self, rt: Any, params: dict[str, Any]) -> dict[str, Any]:
        day = params.get("day")
        data = self._day_items(day, KINDS, lambda r: f"{r.acqp_id}|{r.mpp_id}|{r.currency}|{r.kind}") \
            if self.holder else None
        res = group_totals(rt, data, 1)
        return {"day": day, "groups": self._groups(res, ("acqp", "mpp", "currency", "kind"))}

    def _job_analytics(self, rt: Any, params: dict[str, Any]) -> dict[str, Any]:
        day, regions = params.get("day"), params.get("regions") or {}
        asked = params.get("minCount", self.min_count)
        if not isinstance(asked, int) or not isinstance(regions, dict):
            raise NodeError("analytics needs minCount (integer) and regions (object)", "JOB_INVALID", 400)
        k = max(asked, self.min_count)

        def corridor(r: Any) -> str:
            return f"{regions.get(r.mpp_id) or 'ZZ'}|{regions.get(r.acqp_id) or 'ZZ'}|{r.currency}"

        data = self._day_items(day, ("pay",), corridor) if self.holder else None
        res = group_totals(rt, data, k)
        return {"day": day, "minCount": k, "corridors": self._groups(res, ("from", "to", "currency"))}
