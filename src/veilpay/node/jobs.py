"""The jobs a privacy node runs with the other nodes, under its own disclosure policy.

The gateway names a job and its subject, a closed period or a signed refund; the node
decides everything else and enforces:

- **Once each.** A (kind, subject) is computed once. Asking again, under any job id,
  returns the stored answer: a settlement's sealed outputs, the analytics release,
  the refund's bit. Re-running a job can never difference two answers.
- **Closed periods only**, by this node's clock with the policy's margin; an item is
  placed in a period by the time its ACQP signed. A settlement takes every successful
  item of its period or earlier not yet settled (late ones are adjustments of the
  period that takes them) and, as ``reversal``, payments cancelled after their
  period was settled; nothing is ever revealed twice.
- **Owed parties only.** Settlement totals are never revealed: each share holder
  seals its share words of a group's total to the group's acquirer and its MPP
  (``veilpay.sdk.settlement``); the gateway routes them and sees counts.
- **Operator analytics with a privacy guarantee.** Per corridor of the period's
  payments (regions from the partner keys this node pinned): cells below
  ``min_count`` suppressed, each amount capped, and every share holder's own discrete
  Laplace noise of scale cap / epsilon added inside MPC before the one reveal; the
  release states its epsilon, and a month's releases may not spend more than the
  policy's budget.
- **One bit per signed refund.** ``refund_check`` runs once per refund the ACQP
  signed, against the payment the ACQP signed it for.
- **Recorded first.** Every reveal is an entry of the disclosure ledger, agreed by
  every node of the job before the first bit leaves the MPC (``node.ledger``)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
from sqlalchemy import Engine, and_, insert, or_, select, update

from veilpay.crypto import label_digest
from veilpay.crypto.digest import sha256
from veilpay.crypto.prg import Prg, derive_seed
from veilpay.errors import InvalidInput, LedgerMismatch, NodeError, NodesDisagree, ProtocolError
from veilpay.mpc.noise import UniformSource, discrete_laplace
from veilpay.mpc.runtime import make_protocol, ring_errstate
from veilpay.net import Communicator
from veilpay.node.config import NodePolicy
from veilpay.node.ledger import Ledger, Proposal, agree_heads
from veilpay.node.programs import Groups, Items, agree_items, noisy_totals, refund_bound, valid_groups
from veilpay.node.store import items, noise_key, releases, state
from veilpay.sdk.keys import PartyKeys, PublicEntry
from veilpay.sdk.periods import Period
from veilpay.sdk.settlement import seal_output
from veilpay.sdk.shares import Privacy

__all__ = ["JOB_KINDS", "Jobs"]

JOB_KINDS = ("refund_check", "settle", "analytics")


def _words(rows: Any) -> np.ndarray:
    arr = np.array([(r.w0, r.w1) for r in rows], dtype=np.int64).reshape(-1, 2)
    return arr.view(np.uint64)


def _items(rows: Any, keys: list[str], caps: np.ndarray | None = None) -> Items:
    return Items([r.id for r in rows], keys, _words(rows), np.array([bool(r.opened) for r in rows], dtype=bool), caps)


class Jobs:
    def __init__(self, keys: PartyKeys, privacy: Privacy, engine: Engine, mesh: Callable[[bytes], Communicator],
                 policy: NodePolicy, book: Ledger, partners: Callable[[], dict[str, PublicEntry]],
                 clock: Callable[[], int], applied: Callable[[], int], counted: Callable[[str, str], None]) -> None:
        self.keys, self.privacy, self.engine, self.mesh, self.policy = keys, privacy, engine, mesh, policy
        self.book, self.partners, self.clock, self.applied, self.counted = book, partners, clock, applied, counted
        self.me = keys.id
        self.holder = self.me in privacy.nodes
        self._lock = threading.Lock()
        self._rejoin = False  # computing a stored release again: over the inputs it recorded
        self._expect: str | None = None  # the params a recorded release was computed over: reproduce them

    # ------------------------------------------------------------------ the job
    def run(self, job: Any) -> dict[str, Any]:
        """Run one job with the other nodes, or answer it from the stored release.

        ``"rejoin": true`` (the gateway sends it when some nodes answered from their
        stored release and others failed: a node stopped between the reveal and
        storing it) makes a node that stored the release take part again, over the
        inputs it recorded for it; it refuses (``RELEASE_CHANGED``) if they no longer
        give the same ledger entry, so a second computation can never reveal anything
        the first did not, and it answers with the stored release."""
        if not isinstance(job, dict):
            raise NodeError("a job is a JSON object", "JOB_INVALID", 400)
        jid, kind, params = job.get("jobId"), job.get("kind"), job.get("params")
        if not isinstance(jid, str) or not 8 <= len(jid) <= 64 or kind not in JOB_KINDS or not isinstance(params, dict):
            raise NodeError(f"a job needs jobId (8..64 chars), kind in {JOB_KINDS} and params", "JOB_INVALID", 400)
        subject, period = self._subject(kind, params)
        rejoin = job.get("rejoin") is True
        stored = self._stored(kind, subject)
        if stored is not None and not rejoin:
            self.counted(kind, "stored")
            return stored
        if stored is None:
            through = job.get("through") or {}
            need = through.get(self.me, 0) if isinstance(through, dict) else 0
            if self.holder and isinstance(need, int) and self.applied() < need:
                raise NodeError(f"this node has applied its feed to {self.applied()}, the job needs {need}",
                                "NODE_BEHIND")
        if not self._lock.acquire(timeout=30):
            raise NodeError("another job is running", "NODE_BUSY", 503)
        try:
            stored = self._stored(kind, subject)  # again, under the lock: another job may have made it
            if stored is not None and not rejoin:
                return stored
            if stored is None:
                self._admissible(kind, subject, period)  # under the lock: two jobs never pass on one budget
            # A subject the ledger already records is committed to what it was computed
            # over, stored or not (a node may have stopped after the reveal): computing it
            # again must reproduce that entry. Settlement is owed to its partners, who may
            # receive it again over other items (late ones), so only it is exempt.
            committed = self.book.committed(kind, subject) if kind != "settle" else None
            self._rejoin = stored is not None
            self._expect = stored["params"] if stored is not None else committed
            comm = self.mesh(label_digest("veilpay/node-job/" + jid))
            try:
                with ring_errstate():
                    rt = make_protocol(self.privacy.protocol, comm, self.privacy.parties)
                    result, outputs, ledger_at, save = getattr(self, "_job_" + kind)(rt, subject, period)
                comm.flush()
                stats = comm.total()
            finally:
                comm.close()
            if stored is not None:
                self.counted(kind, "rejoined")
                return {**stored, "bytesSent": stats.bytes_sent, "rounds": stats.rounds}
            answer = {"kind": kind, "subject": subject, "result": result, "outputs": outputs, "ledger": ledger_at}
            with self.engine.begin() as conn:
                save(conn)
                conn.execute(insert(releases).values(
                    kind=kind, subject=subject, params=ledger_at.pop("params", ""), result=json.dumps(result),
                    outputs=json.dumps(outputs), ledger_seq=ledger_at["seq"], created_ms=int(time.time() * 1000)))
        except LedgerMismatch as exc:
            self.counted(kind, "LEDGER_MISMATCH")
            raise NodeError(str(exc), "LEDGER_MISMATCH") from exc
        except NodesDisagree as exc:
            self.counted(kind, "NODES_DISAGREE")
            raise NodeError(str(exc), "NODES_DISAGREE") from exc
        except ProtocolError as exc:
            self.counted(kind, "JOB_FAILED")
            raise NodeError(f"{kind}: {type(exc).__name__}: {exc}", "JOB_FAILED", 502) from exc
        finally:
            self._rejoin, self._expect = False, None
            self._lock.release()
        self.counted(kind, "done")
        return {**answer, "bytesSent": stats.bytes_sent, "rounds": stats.rounds}

    def _admissible(self, kind: str, subject: str, period: Period | None) -> None:
        """The policy's checks before a new release: its period has closed, its month's
        privacy budget has room (analytics), the refund awaits its one check."""
        if period is not None and not period.closed(self.clock(), self.policy.close_margin_s):
            self.counted(kind, "PERIOD_OPEN")
            raise NodeError(f"period {period} has not closed by this node's clock (margin "
                            f"{self.policy.close_margin_s:g} s)", "PERIOD_OPEN", 409)
        if kind == "analytics" and self.book.spent(period.month) + self.policy.eps > self.policy.budget:  # type: ignore[union-attr]
            self.counted(kind, "BUDGET_EXHAUSTED")
            raise NodeError(f"the privacy budget of {period.month} (epsilon {self.policy.monthly_budget}) "  # type: ignore[union-attr]
                            "has no room for another release", "BUDGET_EXHAUSTED", 409)
        if kind == "refund_check" and self.holder:
            with self.engine.connect() as conn:
                st = conn.execute(select(items.c.status).where(and_(items.c.id == subject,
                                                                    items.c.kind == "refund"))).scalar()
            if st != "NEW":
                self.counted(kind, "REFUND_NOT_PENDING")
                raise NodeError(f"refund {subject[:40]} is not a signed refund awaiting its check here "
                                f"({st or 'unknown'})", "REFUND_NOT_PENDING", 409)

    def _subject(self, kind: str, params: dict[str, Any]) -> tuple[str, Period | None]:
        if kind == "refund_check":
            rid = params.get("refundId")
            if not isinstance(rid, str) or not 1 <= len(rid) <= 40:
                raise NodeError("refund_check needs refundId", "JOB_INVALID", 400)
            return rid, None
        try:
            period = Period.parse(params.get("period"), self.policy.cycle_s)
        except InvalidInput as exc:
            raise NodeError(f"{kind}: {exc}", "JOB_INVALID", 400) from exc
        return period.label, period

    def _stored(self, kind: str, subject: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(releases).where(and_(releases.c.kind == kind,
                                                           releases.c.subject == subject))).first()
        if row is None:
            return None
        head = self.book.export(int(row.ledger_seq) - 1, 1)
        return {"kind": kind, "subject": subject, "result": json.loads(row.result), "outputs": json.loads(row.outputs),
                "ledger": {"seq": int(row.ledger_seq), "hash": head[0]["hash"] if head else ""}, "stored": True,
                "params": row.params}

    def _params(self, kind: str, subject: str, detail: str) -> str:
        """SHA-256 of what a job computes over: its kind, subject, items and the policy."""
        return sha256(json.dumps([kind, subject, detail, self.policy.to_json()], sort_keys=True).encode()).hex()

    def _record(self, rt: Any, proposal: Proposal | None) -> dict[str, Any]:
        """Agree the ledger entry with the other nodes and append it (before any reveal)."""
        if self._expect is not None and proposal is not None and proposal.params != self._expect:
            raise NodeError("the job's inputs changed since its release was recorded; it is not computed again",
                            "RELEASE_CHANGED", 409)
        at = agree_heads(rt, self.book, proposal, self.policy.budget)
        return {**at, "params": proposal.params if proposal is not None else self._dealer_params(at)}

    def _dealer_params(self, at: dict[str, Any]) -> str:
        rec = self.book.export(at["seq"] - 1, 1)
        return str(rec[0]["body"]["params"]) if rec else ""

    # ------------------------------------------------------------------ refund check
    def _job_refund_check(self, rt: Any, rid: str, _period: None) -> tuple[Any, ...]:
        if not self.holder:
            at: dict[str, Any] = {}
            refund_bound(rt, None, None, None, "", False, lambda: at.update(self._record(rt, None)))
            return {"ok": None}, {}, at, lambda conn: None
        zero = np.zeros(2, dtype=np.uint64)
        with self.engine.connect() as conn:
            ref = conn.execute(select(items).where(and_(items.c.id == rid, items.c.kind == "refund"))).first()
            pay = conn.execute(select(items).where(and_(items.c.id == ref.payment_id, items.c.kind == "pay"))).first() \
                if ref is not None else None
            others = conn.execute(select(items).where(and_(
                items.c.payment_id == (ref.payment_id if ref is not None else ""), items.c.kind == "refund",
                items.c.id != rid, items.c.status.in_(("RESERVED", "SUCCESS")), items.c.opened.is_(True)))
                .order_by(items.c.id)).all()
        # once per refund: a refund the nodes have checked is not checked again (a rejoin
        # recomputes the same check over the same inputs)
        fresh = ref is not None and (ref.status == "NEW" or self._rejoin)
        opened = fresh and pay is not None and ref.opened and pay.opened and pay.status == "SUCCESS"  # type: ignore[union-attr]
        tag = "|".join([rid, ref.request_id if ref is not None else "", ref.payment_id if ref is not None else "",
                        pay.request_id if pay is not None else "", pay.status if pay is not None else "",
                        *[o.id for o in others]])
        p = _words([pay])[0] if pay is not None else zero
        r = _words([ref])[0] if ref is not None else zero
        o = _words(others).sum(axis=0, dtype=np.uint64) if others else zero
        month = Period.of(ref.ts_ms, self.policy.cycle_s).month if ref is not None else ""
        proposal = Proposal("refund_check", rid, ("gateway",), (1,), "0", month, self._params("refund_check", rid, tag))
        at = {}
        ok = refund_bound(rt, p, o, r, tag, bool(opened), lambda: at.update(self._record(rt, proposal)))

        def save(conn: Any) -> None:
            conn.execute(update(items).where(and_(items.c.id == rid, items.c.status == "NEW"))
                         .values(status="RESERVED" if ok else "REJECTED"))
        return {"ok": ok}, {}, at, save

    # ------------------------------------------------------------------ settlement
    def _settle_where(self, period: Period, through: int | None) -> Any:
        """The items a settlement of ``period`` takes: successful ones of the period or
        earlier not yet settled, and (``reversal``) payments cancelled after an earlier
        period settled them; only statuses the feed set up to position ``through``.
        For a rejoin (``through`` None): the ones this node's release of it took."""
        p = period.start_ms
        if through is None:
            return or_(items.c.settled_ms == p, items.c.reversed_ms == p)  # a rejoin
        return or_(
            and_(items.c.status == "SUCCESS", items.c.settled_ms.is_(None), items.c.period_ms <= p,
                 items.c.status_seq <= through),
            and_(items.c.kind == "pay", items.c.status == "CANCELLED", items.c.settled_ms < p,
                 items.c.reversed_ms.is_(None), items.c.status_seq <= through))

    def _settle_items(self, period: Period) -> tuple[Items, int | None]:
        cols = (items.c.id, items.c.kind, items.c.acqp_id, items.c.mpp_id, items.c.currency, items.c.w0, items.c.w1,
                items.c.opened, items.c.status, items.c.settled_ms, items.c.request_id)
        with self.engine.connect() as conn:  # one read transaction: the feed position and the rows agree
            through = None if self._rejoin else int(
                conn.execute(select(state.c.value).where(state.c.key == "applied_seq")).scalar() or 0)
            rows = conn.execute(select(*cols).where(self._settle_where(period, through)).order_by(items.c.id)).all()
        if not rows:
            return Items.empty(), through
        ids, kinds, acqp, mpp, cur, w0, w1, opened, status, settled, req = zip(*rows, strict=True)
        p = period.start_ms
        names: dict[tuple[str, ...], str] = {}
        keys = []
        for a, m, c, k, st, sm in zip(acqp, mpp, cur, kinds, status, settled, strict=True):
            t = (a, m, c, "reversal" if st == "CANCELLED" and sm is not None and sm < p else k)
            keys.append(names.get(t) or names.setdefault(t, "|".join(t)))
        words = np.stack([np.array(w0, dtype=np.int64), np.array(w1, dtype=np.int64)], axis=1).view(np.uint64)
        refs = [f"{a}/{k}/{r}" for a, k, r in zip(acqp, kinds, req, strict=True)]
        return Items(list(ids), keys, words, np.array(opened, dtype=bool), refs=refs), through

    def _job_settle(self, rt: Any, label: str, period: Period) -> tuple[Any, ...]:
        data, proposal, through = None, None, None
        if self.holder:
            data, through = self._settle_items(period)
        n, opened = agree_items(rt, data)
        if self.holder:
            cells = Counter(data.keys)  # type: ignore[union-attr]
            owed = sorted({p for k in cells for p in k.split("|")[:2]})
            proposal = Proposal("settle", label, tuple(owed), tuple(cells[k] for k in sorted(cells)), "0", period.month,
                                self._params("settle", label, sha256("\n".join(data.ids).encode()).hex()))  # type: ignore[union-attr]
        at = self._record(rt, proposal)
        groups, _ = valid_groups(rt, data, n, opened)
        if not self.holder:
            return {"period": label}, {}, at, lambda conn: None
        return self._settle_outputs(label, groups, period, through, at)  # type: ignore[arg-type]

    def _settle_outputs(self, label: str, groups: Groups, period: Period, through: int | None,
                        at: dict[str, Any]) -> tuple[Any, ...]:
        pinned = self.partners()
        public, outputs = [], []
        for g, key in enumerate(groups.keys):
            acqp, mpp, currency, kind = key.split("|")
            grp = {"acqp": acqp, "mpp": mpp, "currency": currency, "kind": kind, "count": len(groups.ids[g])}
            public.append({**grp, "ids": groups.ids[g], "rejected": groups.rejected[g],
                           "outOfRange": groups.out_of_range[g]})
            words = [int(w) for w in groups.words[g][:self.privacy.words]]
            sealed = {}
            for pid in (acqp, mpp):
                entry = pinned.get(pid)
                if entry is None:
                    raise NodeError(f"settle: {pid!r} is no longer a pinned partner", "JOB_FAILED", 502)
                sealed[pid] = seal_output(self.keys, entry, label, grp, groups.ids[g], words)
            outputs.append(sealed)

        def save(conn: Any) -> None:
            """Mark what this settlement took, by the same criteria it selected with (the
            feed may have moved on meanwhile: later statuses are past ``through``)."""
            if through is None:
                return
            p = period.start_ms
            taken, reversals = self._settle_where(period, through).clauses
            conn.execute(update(items).where(taken).values(settled_ms=p))
            conn.execute(update(items).where(reversals).values(reversed_ms=p))
        return {"period": label, "groups": public}, {"groups": outputs}, at, save

    # ------------------------------------------------------------------ analytics
    def _job_analytics(self, rt: Any, label: str, period: Period) -> tuple[Any, ...]:
        data, proposal = None, None
        if self.holder:
            pinned = self.partners()

            def region(pid: str) -> str:
                e = pinned.get(pid)
                return e.region if e is not None and e.region else "ZZ"

            with self.engine.connect() as conn:
                rows = conn.execute(select(items.c.id, items.c.acqp_id, items.c.mpp_id, items.c.currency, items.c.w0,
                                           items.c.w1, items.c.opened, items.c.request_id).where(and_(
                    items.c.kind == "pay", items.c.status == "SUCCESS", items.c.period_ms == period.start_ms))
                    .order_by(items.c.id)).all()
            keys = [f"{region(r.mpp_id)}|{region(r.acqp_id)}|{r.currency}" for r in rows]
            data = _items(rows, keys, np.array([self.policy.clip_of(r.currency) for r in rows], dtype=np.int64))
            data.refs = [f"{r.acqp_id}/pay/{r.request_id}" for r in rows]
        n, opened = agree_items(rt, data)
        if self.holder:
            cells = Counter(data.keys)  # type: ignore[union-attr]
            proposal = Proposal("analytics", label, ("gateway",), tuple(cells[k] for k in sorted(cells)),
                                str(self.policy.epsilon),
                                period.month, self._params("analytics", label, sha256("\n".join(data.ids).encode()).hex()))  # type: ignore[union-attr]
        at = self._record(rt, proposal)
        groups, sums = valid_groups(rt, data, n, opened, clip=True)
        if not self.holder:
            return {"period": label}, {}, at, lambda conn: None
        k = self.policy.min_count
        shown = np.array([g for g, c in enumerate(groups.counts) if c >= k], dtype=np.int64)  # type: ignore[union-attr]
        eps = self.policy.eps
        caps = [self.policy.clip_of(key.split("|")[2]) for key in groups.keys]  # type: ignore[union-attr]
        # the noise is this node's own, and a function of the release's name and of what it
        # is computed over: the same release again draws the same noise, another does not
        src = UniformSource(Prg(derive_seed(noise_key(self.engine), f"analytics/{label}/{proposal.params}")))  # type: ignore[union-attr]
        noise = np.array([discrete_laplace(Fraction(caps[g]) / eps, src) for g in shown], dtype=np.int64)
        totals = noisy_totals(rt, sums, shown, noise)
        tot = {int(g): int(t) for g, t in zip(shown, totals, strict=True)}  # type: ignore[arg-type]
        corridors = []
        for g, key in enumerate(groups.keys):  # type: ignore[union-attr]
            frm, to, cur = key.split("|")
            corridors.append({"from": frm, "to": to, "currency": cur, "count": groups.counts[g],  # type: ignore[union-attr]
                          "total": str(tot[g]) if g in tot else None, "clip": caps[g]})
        result = {"period": label, "epsilon": str(self.policy.epsilon), "minCount": k,
                  "mechanism": "discrete Laplace, scale clip/epsilon, one draw per share holder", "corridors": corridors}
        return result, {}, at, lambda conn: None
