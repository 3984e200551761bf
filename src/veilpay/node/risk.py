"""Real-time fraud scoring at the privacy nodes (``docs/risk.md``).

An MPP asks the first share holder (the *leader*) to score a payment with two signed
feature bundles, its own and the ACQP's (``veilpay.sdk.features``). The leader
collects such requests into micro-batches (``batch_max`` payments or
``batch_wait_ms``) and sends each batch, with the rule sets in force, to the other
nodes over the scoring mesh, a TLS mesh of its own kept open between batches (its
ports are the network file's ``risk_address``). Every node then, in the same order:

1. checks each payment by itself: both bundles signed by the partners it pinned, for
   one payment, a model it holds, the widths that model takes, a time inside its
   skew, not scored before; and opens its own shares (the dealer holds none);
2. agrees with the other holders on the batch and on which payments passed
   (``node.programs.agree``: digests and flags), so that nodes fed differently stop;
3. computes the velocity windows of each payer token from its own share words
   (``veilpay.risk.velocity``);
4. records the batch in its risk ledger, agreed with every node, before any reveal;
5. runs the scoring program (``veilpay.risk.program``): only each payment's decision
   comes out, to the share holders;
6. stores the decisions and the velocity events, and signs one statement per
   decision; the followers send theirs to the leader, which answers the MPP with all.

A payment is scored once: asked again, a node answers the stored decision. A rule
set, signed by its MPP, is adopted by each node under its own policy (versions only
go up, at most once per ``rules_min_interval_s``); the leader sends the rule sets it
scores a batch with, and a follower adopts a newer one then, so a reload lands
between two batches. A batch that fails (a node gone, a timeout) fails its payments
with ``RISK_UNAVAILABLE`` and the mesh is opened again."""

from __future__ import annotations

import calendar
import contextlib
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
from sqlalchemy import Engine, insert, select, update

from veilpay.crypto import label_digest
from veilpay.crypto.digest import sha256
from veilpay.crypto.tokens import random_id
from veilpay.errors import DecryptionError, InvalidInput, NodeError, SignatureError, VeilpayError, WireFormatError
from veilpay.mpc.protocol import Protocol
from veilpay.mpc.runtime import make_protocol, ring_errstate
from veilpay.net import Communicator
from veilpay.node.config import RiskPolicy
from veilpay.node.ledger import Ledger, Proposal, agree_heads
from veilpay.node.programs import agree
from veilpay.node.store import (
    risk_decisions,
    risk_events,
    risk_ledger,
    risk_model_parts,
    risk_models,
    risk_rules,
    risk_statements,
)
from veilpay.risk.program import DECISIONS, score_batch, tensor_of
from veilpay.risk.rules import RuleSet
from veilpay.risk.shares import words_per_node
from veilpay.risk.velocity import WINDOWS_MS, window_features
from veilpay.sdk import wirejson
from veilpay.sdk.features import (
    MAX_WIDTH,
    open_feature_share,
    open_model_part,
    sign_decisions,
    verify_feature_bundle,
    verify_model_part,
    verify_rules,
)
from veilpay.sdk.keys import PartyKeys, PublicEntry
from veilpay.sdk.shares import Privacy

__all__ = ["RiskService"]

log = logging.getLogger("veilpay.node")
_MASK = (1 << 64) - 1
_BATCH = re.compile(r"rb_[0-9a-f]{32}")  # random_id("rb_"): fits risk_statements.batch


def _i64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


class _RiskLedger(Ledger):
    """The risk chain. Only this node's scoring thread appends to it, and a batch id is
    never used twice (the leader draws one per batch, a follower refuses one it has
    seen), so the next position is the head, kept here rather than read back per batch;
    ``append`` still checks it against the database in its transaction."""

    def __init__(self, engine: Engine, keys: PartyKeys) -> None:
        super().__init__(engine, keys, risk_ledger)
        self._head: tuple[int, str] | None = None

    def position(self, proposal: Proposal) -> tuple[int, str, bool]:
        if self._head is None:
            self._head = self.head()
        return self._head[0] + 1, self._head[1], False

    def append(self, proposal: Proposal, seq: int, prev: str, budget: Fraction | None = None) -> dict[str, Any]:
        try:
            rec = super().append(proposal, seq, prev, budget)
        except BaseException:
            self._head = None  # read it again next time
            raise
        self._head = (int(rec["seq"]), str(rec["hash"]))
        return rec


@dataclass
class _Model:
    name: str
    mpp: str
    acqp: str
    frac: int
    d_mpp: int
    d_acqp: int
    words: np.ndarray | None  # (d + 1, words) at a holder

    def meta(self) -> dict[str, Any]:
        return {"mpp": self.mpp, "acqp": self.acqp, "frac": self.frac, "d_mpp": self.d_mpp, "d_acqp": self.d_acqp}


@dataclass
class _Pending:
    item: dict[str, Any]
    key: str
    checked: dict[str, Any]       # the leader's check of it (signatures verified once)
    done: Future[dict[str, Any]] = field(default_factory=Future)


class RiskService:
    """One node's part of the scoring. ``mesh(session)`` opens the scoring mesh;
    ``partners()`` gives the partner keys this node pinned; ``clock()`` is ms."""

    def __init__(self, keys: PartyKeys, privacy: Privacy, engine: Engine, mesh: Callable[[bytes], Communicator],
                 partners: Callable[[], dict[str, PublicEntry]], policy: RiskPolicy, max_skew_s: float,
                 clock: Callable[[], int], metrics: Any) -> None:
        self.keys, self.privacy, self.engine, self.mesh, self.partners = keys, privacy, engine, mesh, partners
        self.policy, self.max_skew_ms, self.clock, self.metrics = policy, int(max_skew_s * 1000), clock, metrics
        self.me = keys.id
        self.holder = self.me in privacy.nodes
        self.leader = privacy.nodes[0]
        self.words = words_per_node(privacy.protocol)
        self.book = _RiskLedger(engine, keys)
        self._queue: queue.Queue[_Pending | None] = queue.Queue()  # None: stop waiting
        self._inflight: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._comm: Communicator | None = None
        self._protocols: dict[int, Protocol] = {}
        self._models: dict[str, _Model] = {}
        self._adopted: dict[tuple[str, str], tuple[str, RuleSet]] = {}  # (mpp, mode) -> (doc digest, rules)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"risk-{self.me}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop scoring: a follower waiting for the next batch header is woken by closing
        its mesh, so a node shuts down at once rather than after a heartbeat timeout."""
        self._stop.set()
        self._queue.put(None)
        comm = self._comm
        if comm is not None:
            with contextlib.suppress(Exception):
                comm.close()
        if self._thread is not None:
            self._thread.join(timeout=self.policy.heartbeat_s * 3 + 5)

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:  # ``mesh`` gives up after a short connect timeout, so a stop is seen between tries
                comm = self.mesh(label_digest("veilpay/risk-mesh/v1"))
            except VeilpayError as exc:
                log.info("scoring mesh: not connected (%s); trying again", type(exc).__name__)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            self._protocols = {}
            self._comm = comm
            try:
                while not self._stop.is_set():
                    if self.me == self.leader:
                        self._lead_one(comm)
                    else:
                        self._follow_one(comm)
            except Exception as exc:  # noqa: BLE001 - a peer's input must not end this node's scoring
                log.warning("scoring mesh: %s (%s); opening it again", type(exc).__name__, str(exc)[:200])
            finally:
                self._comm = None
                comm.close()

    def _protocol(self, comm: Communicator, frac: int) -> Protocol:
        rt = self._protocols.get(frac)
        if rt is None:
            rt = self._protocols[frac] = make_protocol(self.privacy.protocol, comm, self.privacy.parties, frac)
        return rt

    # ------------------------------------------------------------------ the leader
    def score(self, obj: Any, caller: str) -> dict[str, Any]:
        """An MPP's call: ``{"requests": [{"mpp": {bundle, shares}, "acqp": {bundle,
        shares}}, ...]}`` (up to ``batch_max``). Answers, in order, each payment's
        ``{decision, model, rules, batch}`` or ``{error: {code, message}}``, and under
        ``statements`` every share holder's signed statement of each batch that decided
        them. A payment scored before gets its stored answer; the others wait for their
        micro-batch."""
        if not self.policy.enabled:
            raise NodeError("this node does not score payments", "RISK_DISABLED", 404)
        if self.me != self.leader:
            raise NodeError(f"ask the scoring leader {self.leader!r}", "RISK_NOT_LEADER", 409)
        reqs = obj.get("requests") if isinstance(obj, dict) else None
        if not isinstance(reqs, list) or not 1 <= len(reqs) <= self.policy.batch_max or set(obj) != {"requests"}:
            raise NodeError(f"a score call is {{requests: [1 .. {self.policy.batch_max}]}}", "RISK_BUNDLE_INVALID",
                            400)
        waits: list[Future[dict[str, Any]] | dict[str, Any]] = []
        stored = self._answers([self._key_of(r) for r in reqs], mpp=caller)
        for r in reqs:
            key = self._key_of(r)
            if key in stored:
                waits.append(stored[key])
                continue
            try:
                mine = self._check(r)
                if mine["mpp"]["bundle"]["party"] != caller:
                    raise NodeError("an MPP asks for its own payments' scores", "RISK_BUNDLE_INVALID", 403)
            except NodeError as exc:
                waits.append({"error": {"code": exc.code, "message": str(exc)}})
                continue
            with self._lock:
                pending = self._inflight.get(key)
                if pending is None:
                    pending = self._inflight[key] = _Pending(r, key, mine)
                    self._queue.put(pending)
            waits.append(pending.done)
        deadline = time.monotonic() + self.policy.answer_timeout_s
        answers: list[dict[str, Any]] = []
        for w in waits:
            if isinstance(w, dict):
                answers.append(w)
                continue
            try:
                answers.append(w.result(timeout=max(0.0, deadline - time.monotonic())))
            except FutureTimeout:
                answers.append({"error": {"code": "RISK_TIMEOUT", "message": "the batch did not finish in time; its "
                                          "decision is recorded when it does"}})
            except NodeError as exc:
                answers.append({"error": {"code": exc.code, "message": str(exc)}})
        batches = sorted({(a["batch"], caller) for a in answers if "batch" in a})
        return {"answers": answers, "statements": self._statements(batches)}

    def _answers(self, keys: list[str], mpp: str | None = None) -> dict[str, dict[str, Any]]:
        """The stored decisions of these ``acqp/requestId`` keys (of ``mpp``'s payments only,
        when named: a key is public, so the caller must be the payment's MPP)."""
        query = select(risk_decisions).where(risk_decisions.c.payment.in_(sorted(set(keys))))
        if mpp is not None:
            query = query.where(risk_decisions.c.mpp == mpp)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {r.payment: {"decision": r.decision, "model": r.model, "rules": int(r.rules), "batch": r.batch}
                for r in rows}

    def decision(self, key: str) -> dict[str, Any] | None:
        """The stored answer for ``acqp/requestId``, with the statements that cover it
        (every holder's at the leader, this node's own at a follower)."""
        with self.engine.connect() as conn:
            r = conn.execute(select(risk_decisions).where(risk_decisions.c.payment == key)).first()
        if r is None:
            return None
        return {"decision": r.decision, "model": r.model, "rules": int(r.rules), "batch": r.batch,
                "statements": self._statements([(r.batch, r.mpp)])}

    def _statements(self, batches: list[tuple[str, str]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            for batch, mpp in batches:
                row = conn.execute(select(risk_statements.c.statements).where(
                    risk_statements.c.batch == batch, risk_statements.c.mpp == mpp)).scalar()
                if row is not None:
                    out += json.loads(row)
        return out

    def _take_batch(self) -> list[_Pending]:
        try:
            first = self._queue.get(timeout=self.policy.heartbeat_s)
        except queue.Empty:
            return []
        if first is None:
            return []
        batch = [first]
        deadline = time.monotonic() + self.policy.batch_wait_ms / 1000
        while len(batch) < self.policy.batch_max:
            left = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                break
            batch.append(item)
        return batch

    def _lead_one(self, comm: Communicator) -> None:
        batch = self._take_batch()
        if not batch:
            self._send_head(comm, {"idle": True})
            return
        try:
            head = {"batch": random_id("rb_"), "items": [p.item for p in batch], "rules": self._rules_for(batch),
                    "models": self._models_for(batch)}
            self._send_head(comm, head)
            answers = self._score(comm, head, [p.checked for p in batch])
        except BaseException as exc:
            for p in batch:
                self._finish(p, exc=NodeError(f"scoring failed: {type(exc).__name__}", "RISK_UNAVAILABLE", 503))
            raise
        for p, ans in zip(batch, answers, strict=True):
            self._finish(p, ans)

    def _finish(self, p: _Pending, ans: Any = None, exc: BaseException | None = None) -> None:
        with self._lock:
            self._inflight.pop(p.key, None)
        if p.done.done():
            return
        if exc is not None:
            p.done.set_exception(exc)
        elif isinstance(ans, NodeError):
            p.done.set_exception(ans)
        else:
            p.done.set_result(ans)

    def _send_head(self, comm: Communicator, head: dict[str, Any]) -> None:
        raw = np.frombuffer(wirejson.dumps_sorted(head), dtype=np.uint8)
        comm.exchange("risk.head", {p: [raw] for p in comm.peers}, {})

    def _rules_for(self, batch: list[_Pending]) -> dict[str, dict[str, Any]]:
        mpps = sorted({str(p.item["mpp"]["bundle"]["mpp"]) for p in batch})
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for r in conn.execute(select(risk_rules).where(risk_rules.c.mpp.in_(mpps))):
                out.setdefault(r.mpp, {})[r.mode] = json.loads(r.doc)
        return out

    def _models_for(self, batch: list[_Pending]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for p in batch:
            name = str(p.item["mpp"]["bundle"]["model"])
            m = self._model(name)
            if m is not None:
                out[name] = m.meta()
        return out

    # ------------------------------------------------------------------ a follower
    def _follow_one(self, comm: Communicator) -> None:
        got = comm.exchange("risk.head", {}, {self.leader: 1})[self.leader][0]
        if got.dtype != np.uint8 or got.size > 64 << 20:
            raise WireFormatError(self.leader, "malformed batch header")
        try:
            head = wirejson.loads(got.tobytes())
        except ValueError as exc:
            raise WireFormatError(self.leader, "batch header is not JSON") from exc
        if not isinstance(head, dict):
            raise WireFormatError(self.leader, "batch header is not an object")
        if head.get("idle") is True:
            return
        items, rules, models = head.get("items"), head.get("rules"), head.get("models")
        if not isinstance(head.get("batch"), str) or not isinstance(items, list) or not isinstance(rules, dict) \
                or not isinstance(models, dict) or not 1 <= len(items) <= self.policy.batch_max \
                or not all(_item_shaped(it) for it in items):
            raise WireFormatError(self.leader, "malformed batch header")
        # a batch id seen before would take the ledger's entry as recorded (no new one)
        # and fail the statements' key after the reveal
        if not _BATCH.fullmatch(head["batch"]) or self.book.committed("risk", head["batch"]) is not None:
            raise WireFormatError(self.leader, "the batch id is malformed or was used before")
        self._score(comm, head)

    # ------------------------------------------------------------------ checks
    def _check(self, obj: Any) -> dict[str, Any]:
        """The payment's two bundles, verified; NodeError with a named code otherwise."""
        if not isinstance(obj, dict) or set(obj) != {"mpp", "acqp"}:
            raise NodeError("a score request is {mpp, acqp}, each {bundle, shares}", "RISK_BUNDLE_INVALID", 400)
        pinned = self.partners()
        out: dict[str, Any] = {}
        for role in ("mpp", "acqp"):
            part = obj[role]
            if not isinstance(part, dict) or set(part) != {"bundle", "shares"} or not isinstance(part["shares"], dict):
                raise NodeError(f"{role}: {{bundle, shares}}", "RISK_BUNDLE_INVALID", 400)
            b = part["bundle"]
            try:
                party = str(b.get("party", "")) if isinstance(b, dict) else ""
                verify_feature_bundle(b, pinned.get(party), self.privacy)
            except SignatureError as exc:
                raise NodeError(f"{role} bundle: {exc}", "INVALID_SIGNATURE", 401) from exc
            except InvalidInput as exc:
                raise NodeError(f"{role} bundle: {exc}", "RISK_BUNDLE_INVALID", 400) from exc
            if b["role"] != role:
                raise NodeError(f"{role} bundle: signed as {b['role']}", "RISK_BUNDLE_INVALID", 400)
            out[role] = part
        m, a = out["mpp"]["bundle"], out["acqp"]["bundle"]
        if (m["acqp"], m["mpp"], m["requestId"], m["model"]) != (a["acqp"], a["mpp"], a["requestId"], a["model"]):
            raise NodeError("the two bundles are about different payments or models", "RISK_BUNDLE_INVALID", 400)
        model = self._model(m["model"])
        if model is None:
            raise NodeError(f"model {m['model']!r} is not held here", "RISK_MODEL_UNKNOWN", 404)
        if (model.mpp, model.acqp) != (m["mpp"], m["acqp"]):
            raise NodeError(f"model {m['model']!r} is for another pair of partners", "RISK_MODEL_UNKNOWN", 404)
        if m["width"] != model.d_mpp or a["width"] != model.d_acqp + 1:
            raise NodeError(f"model {model.name!r} takes {model.d_mpp} MPP and {model.d_acqp} + 1 ACQP features",
                            "RISK_WIDTH", 400)
        now = self.clock()
        for b in (m, a):
            if abs(int(b["ts"]) - now) > self.max_skew_ms:
                raise NodeError("a bundle's time is outside this node's skew", "RISK_STALE", 400)
        return out

    def _model(self, name: str) -> _Model | None:
        """A model this node holds (cached: a held model never changes)."""
        hit = self._models.get(name)
        if hit is not None:
            return hit
        with self.engine.connect() as conn:
            row = conn.execute(select(risk_models).where(risk_models.c.model == name)).first()
        if row is None:
            return None
        meta = json.loads(row.meta)
        words = np.array([[int(w) for w in r] for r in json.loads(row.words)], dtype=np.uint64) if self.holder else None
        model = self._models[name] = _Model(name, meta["mpp"], meta["acqp"], meta["frac"], meta["d_mpp"],
                                            meta["d_acqp"], words)
        return model

    # ------------------------------------------------------------------ one batch, at every node
    def _score(self, comm: Communicator, head: dict[str, Any],
               checked: list[dict[str, Any]] | None = None) -> list[Any]:
        t0 = time.perf_counter()
        try:
            return self._score_batch(comm, head, checked)
        finally:
            self.metrics.risk_batch_seconds.observe(time.perf_counter() - t0)
            self.metrics.risk_batch_size.observe(len(head["items"]))

    def _score_batch(self, comm: Communicator, head: dict[str, Any],
                     prechecked: list[dict[str, Any]] | None) -> list[Any]:
        items: list[Any] = head["items"]
        n = len(items)
        rule_docs: dict[str, dict[str, Any]] = head["rules"]
        live, shadow = self._adopt(rule_docs)
        flags = np.zeros(n, dtype=bool)
        errors: list[NodeError | None] = [None] * n
        checked: list[dict[str, Any] | None] = [None] * n
        seen: set[str] = set()
        scored = set(self._answers([self._key_of(it) for it in items])) if self.holder else set()
        for i, it in enumerate(items if self.holder else []):
            try:
                c = prechecked[i] if prechecked is not None else self._check(it)
                key = f"{c['acqp']['bundle']['acqp']}/{c['acqp']['bundle']['requestId']}"
                if key in seen or key in scored:
                    raise NodeError("this payment was scored", "RISK_SCORED", 409)
                if c["mpp"]["bundle"]["mpp"] not in live:
                    raise NodeError("its MPP has no rule set at this node", "RISK_NO_RULES", 409)
                if live[c["mpp"]["bundle"]["mpp"]].model != c["mpp"]["bundle"]["model"]:
                    raise NodeError("its MPP's rule set is for another model", "RISK_NO_RULES", 409)
                seen.add(key)
                checked[i] = c
                flags[i] = True
            except NodeError as exc:
                errors[i] = exc
        # public description every node derives alike from the header: groups by (model, mpp)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, it in enumerate(items):
            b = it.get("mpp", {}).get("bundle", {}) if isinstance(it, dict) and isinstance(it.get("mpp"), dict) else {}
            groups.setdefault((str(b.get("model", "")), str(b.get("mpp", ""))), []).append(i)
        keys = [self._key_of(it) for it in items]
        digest = np.frombuffer(sha256(wirejson.dumps_sorted({"batch": head["batch"], "items": keys,
                                                             "rules": _rule_digests(rule_docs)})), dtype=np.uint64)
        opened: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if self.holder:
            for i, chk in enumerate(checked):
                if chk is None:
                    continue
                c = chk
                try:
                    xm = open_feature_share(c["mpp"]["bundle"], c["mpp"]["shares"].get(self.me), self.keys, self.words)
                    xa = open_feature_share(c["acqp"]["bundle"], c["acqp"]["shares"].get(self.me), self.keys,
                                            self.words)
                    opened[i] = (xm, xa)
                except DecryptionError:
                    flags[i] = False
                    errors[i] = NodeError("a share does not open at a node", "RISK_SHARE_INVALID", 400)
        rt0 = self._protocol(comm, 16)
        _, both = agree(rt0, "risk.agree", n if self.holder else None, digest if self.holder else None,
                        flags if self.holder else None)
        ok = both if both is not None else flags
        for i in range(n):
            if self.holder and not ok[i] and errors[i] is None:
                errors[i] = NodeError("another node refused this payment", "RISK_REFUSED_BY_PEER", 409)
        # the dealer learns the flags from the leader: it runs the same program shapes
        ok = self._share_flags(comm, ok)
        n_ok = int(ok.sum())
        mpps = sorted({g[1] for g, rows in groups.items() if any(ok[i] for i in rows)})
        proposal = Proposal("risk", head["batch"], tuple([*mpps, "gateway"]), (n_ok,), "0", "",
                            sha256(wirejson.dumps_sorted({"items": keys, "ok": ok.astype(int).tolist(),
                                                          "rules": _rule_digests(rule_docs)})).hex())
        agree_heads(rt0, self.book, proposal if self.holder else None)
        decisions: list[str | None] = [None] * n
        shadows: list[str] = [""] * n
        ts_of: dict[int, int] = {}
        for (model_name, mpp), rows in sorted(groups.items()):
            rows = [i for i in rows if ok[i]]
            if not rows:
                continue
            model = self._model_in(head, model_name)
            # a shadow rule set on the live model (a shadow model would need features of its own)
            sets = [live[mpp]] + ([shadow[mpp]] if mpp in shadow and shadow[mpp].model == model_name else [])
            *codes, amount_ok = self._run_group(comm, model, rows, items, opened, sets, ts_of)
            if codes[0] is not None and amount_ok is not None:
                for j, i in enumerate(rows):
                    if not amount_ok[j]:  # the ACQP's amount word is out of range: no decision, no event
                        errors[i] = NodeError("the acquirer's amount is outside 0 .. 10^13 USD cents",
                                              "RISK_AMOUNT_INVALID", 400)
                        continue
                    decisions[i] = DECISIONS[int(codes[0][j])]
                    if len(codes) > 1 and codes[1] is not None:
                        shadows[i] = DECISIONS[int(codes[1][j])]
        if not self.holder:
            return [None] * n
        mine = self._store(head["batch"], items, decisions, shadows, live, keys, opened, ts_of)
        return self._collect(comm, head["batch"], items, mine, decisions, live, errors)

    def _model_in(self, head: dict[str, Any], name: str) -> _Model:
        """A model of the batch: a holder's own, which must match the leader's shape; the
        dealer's from the header (it holds no shares and computes with the shape only)."""
        meta = head.get("models", {}).get(name)
        if self.holder:
            model = self._model(name)
            if model is None or model.meta() != meta:
                raise WireFormatError(self.leader, f"model {name!r}: the leader's shape is not this node's")
            return model
        try:
            model = _Model(name, str(meta["mpp"]), str(meta["acqp"]), int(meta["frac"]), int(meta["d_mpp"]),
                           int(meta["d_acqp"]), None)
        except (KeyError, TypeError, ValueError) as exc:
            raise WireFormatError(self.leader, f"model {name!r}: malformed shape") from exc
        # the bounds a model part is checked against (verify_model_part)
        if not (1 <= model.frac <= 40 and 1 <= model.d_mpp <= MAX_WIDTH and 1 <= model.d_acqp <= MAX_WIDTH):
            raise WireFormatError(self.leader, f"model {name!r}: a shape no model part can have")
        return model

    def _key_of(self, it: Any) -> str:
        try:
            b = it["acqp"]["bundle"]
            return f"{b['acqp']}/{b['requestId']}"
        except (KeyError, TypeError):
            return ""

    def _share_flags(self, comm: Communicator, ok: np.ndarray) -> np.ndarray:
        dealer = self.privacy.dealer
        if not dealer:
            return ok
        if self.me == self.leader:
            comm.exchange("risk.flags", {dealer: [ok.astype(np.uint8)]}, {})
            return ok
        if self.me == dealer:
            got = comm.exchange("risk.flags", {}, {self.leader: 1})[self.leader][0]
            if got.dtype != np.uint8 or got.shape != ok.shape:
                raise WireFormatError(self.leader, "malformed flags")
            return got.astype(bool)
        comm.exchange("risk.flags", {}, {})
        return ok

    def _run_group(self, comm: Communicator, model: _Model, rows: list[int], items: list[Any],
                   opened: dict[int, tuple[np.ndarray, np.ndarray]], sets: list[RuleSet],
                   ts_of: dict[int, int]) -> list[np.ndarray | None]:
        rt = self._protocol(comm, model.frac)
        m, d = len(rows), model.d_mpp + model.d_acqp
        x = w = b = sums = amounts = None
        counts = None
        if self.holder:
            xw = np.zeros((m, d, self.words), dtype=np.uint64)
            amounts = np.zeros((m, self.words), dtype=np.uint64)
            tokens, ts = [], []
            for j, i in enumerate(rows):
                xm, xa = opened[i]
                xw[j, :model.d_mpp] = xm
                xw[j, model.d_mpp:] = xa[:-1]
                amounts[j] = xa[-1]
                tokens.append(items[i]["mpp"]["bundle"]["payer"])
                ts.append(int(items[i]["mpp"]["bundle"]["ts"]))
                ts_of[i] = ts[-1]
            counts, sum_words = window_features(tokens, ts, amounts, self._history(tokens, min(ts)))
            x, sums = xw, sum_words
            w = model.words[:d].reshape(d, 1, self.words)  # type: ignore[index]
            b = model.words[d:].reshape(1, 1, self.words)  # type: ignore[index]
        with ring_errstate():
            return score_batch(rt, m, tensor_of(rt, x, (m, d), model.frac), tensor_of(rt, w, (d, 1), model.frac),
                               tensor_of(rt, b, (1, 1), model.frac), tensor_of(rt, sums, (m, 2), 0), counts, sets,
                               amounts=tensor_of(rt, amounts, (m,), 0))

    def _history(self, tokens: list[str], since: int) -> dict[str, list[tuple[int, np.ndarray]]]:
        out: dict[str, list[tuple[int, np.ndarray]]] = {}
        with self.engine.connect() as conn:
            rows = conn.execute(select(risk_events).where(risk_events.c.token.in_(sorted(set(tokens))),
                                                          risk_events.c.ts_ms > since - WINDOWS_MS[-1]))
            for r in rows:
                v = np.array([r.w0 & _MASK, r.w1 & _MASK][:self.words], dtype=np.uint64)
                out.setdefault(r.token, []).append((int(r.ts_ms), v))
        return out

    def _store(self, batch: str, items: list[Any], decisions: list[str | None], shadows: list[str],
               live: dict[str, RuleSet], keys: list[str], opened: dict[int, tuple[np.ndarray, np.ndarray]],
               ts_of: dict[int, int]) -> dict[str, dict[str, Any]]:
        """Record the batch's decisions and velocity events; this node's signed statement
        per MPP of the batch."""
        now = self.clock()
        per_mpp: dict[str, list[list[Any]]] = {}
        rows, events = [], []
        for i, dec in enumerate(decisions):
            if dec is None:
                continue
            mb = items[i]["mpp"]["bundle"]
            version = live[mb["mpp"]].version
            per_mpp.setdefault(mb["mpp"], []).append([mb["acqp"], mb["requestId"], dec, mb["model"], version])
            rows.append({"payment": keys[i], "mpp": mb["mpp"], "decision": dec, "shadow": shadows[i],
                         "model": mb["model"], "rules": version, "batch": batch, "created_ms": now})
            amount = opened[i][1][-1]
            events.append({"token": mb["payer"], "ts_ms": ts_of[i], "w0": _i64(int(amount[0])),
                           "w1": _i64(int(amount[1])) if self.words == 2 else 0})
            self.metrics.risk_payments.inc()  # no decision in public metrics: anyone may read them
        mine = {m: sign_decisions(self.keys, mpp=m, batch=batch, decisions=d) for m, d in per_mpp.items()}
        with self.engine.begin() as conn:
            if rows:
                conn.execute(insert(risk_decisions), rows)
                conn.execute(insert(risk_events), events)
            for m, st in mine.items():
                conn.execute(insert(risk_statements).values(batch=batch, mpp=m, statements=json.dumps([st])))
        return mine

    def _collect(self, comm: Communicator, batch: str, items: list[Any], mine: dict[str, dict[str, Any]],
                 decisions: list[str | None], live: dict[str, RuleSet], errors: list[NodeError | None]) -> list[Any]:
        """The followers' statements, to the leader, which keeps every holder's; the
        leader's answer per payment."""
        holders = list(self.privacy.nodes)
        if self.me != self.leader:
            raw = np.frombuffer(wirejson.dumps_sorted(mine), dtype=np.uint8)
            comm.exchange("risk.statements", {self.leader: [raw]}, {})
            return [None] * len(items)
        got = comm.exchange("risk.statements", {}, {p: 1 for p in holders if p != self.me})
        every: dict[str, list[dict[str, Any]]] = {m: [st] for m, st in mine.items()}
        for p, arrays in got.items():
            try:
                theirs = wirejson.loads(arrays[0].tobytes())
            except ValueError as exc:
                raise WireFormatError(p, "statements are not JSON") from exc
            if not isinstance(theirs, dict) or set(theirs) != set(mine):
                raise WireFormatError(p, "statements for other MPPs than this node's")
            for m in mine:
                every[m].append(theirs[m])
        with self.engine.begin() as conn:
            for m, sts in every.items():
                conn.execute(update(risk_statements).where(risk_statements.c.batch == batch,
                                                           risk_statements.c.mpp == m).values(statements=json.dumps(sts)))
        answers: list[Any] = []
        for i, dec in enumerate(decisions):
            if dec is None:
                answers.append(errors[i] or NodeError("not scored", "RISK_REFUSED_BY_PEER", 409))
                continue
            mb = items[i]["mpp"]["bundle"]
            answers.append({"decision": dec, "model": mb["model"], "rules": live[mb["mpp"]].version, "batch": batch})
        return answers

    def shadow_report(self, obj: Any, caller: str) -> dict[str, Any]:
        """For the MPP ``caller``: how its shadow rule set's decisions compared with the
        live ones over one closed UTC day, ``{"day": "YYYY-MM-DD"}``. Only whole days, at
        least ``report_after_s`` after their end, with at least ``report_min_count``
        payments (else suppressed): a report is no per-payment oracle."""
        if not self.policy.enabled:
            raise NodeError("this node does not score payments", "RISK_DISABLED", 404)
        day = obj.get("day") if isinstance(obj, dict) else None
        try:
            start = calendar.timegm(time.strptime(str(day), "%Y-%m-%d")) * 1000
        except (ValueError, OverflowError) as exc:
            raise NodeError("a shadow report is {day: YYYY-MM-DD}", "REPORT_INVALID", 400) from exc
        end = start + 86_400_000
        if self.clock() < end + self.policy.report_after_s * 1000:
            raise NodeError(f"{day} is not closed for reports yet", "PERIOD_OPEN", 409)
        with self.engine.connect() as conn:
            rows = conn.execute(select(risk_decisions.c.decision, risk_decisions.c.shadow).where(
                risk_decisions.c.mpp == caller, risk_decisions.c.created_ms >= start,
                risk_decisions.c.created_ms < end, risk_decisions.c.shadow != "")).all()
        if len(rows) < self.policy.report_min_count:
            return {"day": day, "payments": len(rows), "suppressed": True}
        pairs: dict[str, int] = {}
        for r in rows:
            if r.decision != r.shadow:
                key = f"{r.decision}->{r.shadow}"
                pairs[key] = pairs.get(key, 0) + 1
        return {"day": day, "payments": len(rows), "disagreements": sum(pairs.values()), "by_change": pairs}

    # ------------------------------------------------------------------ rule sets and models
    def put_rules(self, doc: Any, caller: str) -> dict[str, Any]:
        """A rule set from its MPP, adopted under this node's policy."""
        if not self.policy.enabled:
            raise NodeError("this node does not score payments", "RISK_DISABLED", 404)
        rs = self._adopt_one(doc, caller)
        return {"mpp": rs.mpp, "mode": rs.mode, "version": rs.version}

    def _adopt_one(self, doc: Any, caller: str | None) -> RuleSet:
        if caller is None and isinstance(doc, dict):  # a batch's rule set: the one in force here already?
            digest = sha256(wirejson.dumps_sorted(doc)).hex()
            hit = self._adopted.get((str(doc.get("mpp")), str(doc.get("mode"))))
            if hit is not None and hit[0] == digest:
                return hit[1]
        signer_id = str(doc.get("mpp", "")) if isinstance(doc, dict) else ""
        try:
            rs, signed = verify_rules(doc, self.partners().get(signer_id))
        except SignatureError as exc:
            raise NodeError(f"rule set: {exc}", "INVALID_SIGNATURE", 401) from exc
        except InvalidInput as exc:
            raise NodeError(str(exc), "RULES_INVALID", 400) from exc
        if caller is not None and caller != rs.mpp:
            raise NodeError("an MPP sends its own rule sets", "RULES_INVALID", 403)
        now = self.clock()
        with self.engine.begin() as conn:
            cur = conn.execute(select(risk_rules).where(risk_rules.c.mpp == rs.mpp,
                                                        risk_rules.c.mode == rs.mode)).first()
            if cur is not None:
                if int(cur.version) == rs.version:
                    if sha256(cur.doc.encode()) != sha256(json.dumps(signed, sort_keys=True).encode()):
                        raise NodeError(f"version {rs.version} is another rule set here", "RULES_VERSION", 409)
                    self._adopted[(rs.mpp, rs.mode)] = (sha256(wirejson.dumps_sorted(signed)).hex(), rs)
                    return rs
                if rs.version < int(cur.version):
                    raise NodeError(f"version {rs.version} is older than {int(cur.version)}", "RULES_VERSION", 409)
                if now - int(cur.adopted_ms) < self.policy.rules_min_interval_s * 1000:
                    raise NodeError(f"rule sets change at most every {self.policy.rules_min_interval_s:g} s",
                                    "RULES_TOO_SOON", 429)
                conn.execute(update(risk_rules).where(risk_rules.c.mpp == rs.mpp, risk_rules.c.mode == rs.mode)
                             .values(version=rs.version, doc=json.dumps(signed, sort_keys=True), adopted_ms=now))
            else:
                conn.execute(insert(risk_rules).values(mpp=rs.mpp, mode=rs.mode, version=rs.version,
                                                       doc=json.dumps(signed, sort_keys=True), adopted_ms=now))
        self._adopted[(rs.mpp, rs.mode)] = (sha256(wirejson.dumps_sorted(signed)).hex(), rs)
        return rs

    def _adopt(self, docs: Any) -> tuple[dict[str, RuleSet], dict[str, RuleSet]]:
        """The rule sets a batch is scored with: the leader's, each adopted here first
        (a follower takes a newer version now, between batches)."""
        live: dict[str, RuleSet] = {}
        shadow: dict[str, RuleSet] = {}
        if not isinstance(docs, dict):
            raise WireFormatError(self.leader, "malformed rule sets")
        for mpp, modes in sorted(docs.items()):
            if not isinstance(modes, dict):
                raise WireFormatError(self.leader, "malformed rule sets")
            for mode, doc in sorted(modes.items()):
                try:
                    rs = self._adopt_one(doc, None)
                except NodeError as exc:
                    raise WireFormatError(self.leader, f"rule set of {mpp!r} not adopted here: {exc.code}") from exc
                if rs.mpp != mpp or rs.mode != mode:
                    raise WireFormatError(self.leader, "rule set filed under another MPP or mode")
                (live if mode == "live" else shadow)[mpp] = rs
        return live, shadow

    def put_model_part(self, obj: Any, caller: str) -> dict[str, Any]:
        """One training party's re-shared part of a model; the model is held once both
        the MPP's and the ACQP's parts are in."""
        if not self.policy.enabled:
            raise NodeError("this node does not score payments", "RISK_DISABLED", 404)
        if not self.holder:
            raise NodeError("the dealer holds no model", "RISK_NOT_HOLDER", 409)
        if not isinstance(obj, dict) or set(obj) != {"part", "shares"} or not isinstance(obj["shares"], dict):
            raise NodeError("a model part is {part, shares}", "MODEL_INVALID", 400)
        part = obj["part"]
        party = str(part.get("party", "")) if isinstance(part, dict) else ""
        try:
            verify_model_part(part, self.partners().get(party), self.privacy)
            words = open_model_part(part, obj["shares"].get(self.me), self.keys, self.privacy)
        except SignatureError as exc:
            raise NodeError(f"model part: {exc}", "INVALID_SIGNATURE", 401) from exc
        except (InvalidInput, DecryptionError) as exc:
            raise NodeError(str(exc), "MODEL_INVALID", 400) from exc
        if party != caller:
            raise NodeError("a training party sends its own part", "MODEL_INVALID", 403)
        meta = {k: part[k] for k in ("mpp", "acqp", "protocol", "frac", "d_mpp", "d_acqp")}
        with self.engine.begin() as conn:
            if conn.execute(select(risk_models.c.model).where(risk_models.c.model == part["model"])).first():
                raise NodeError(f"model {part['model']!r} is held: publish a new version", "MODEL_EXISTS", 409)
            others = conn.execute(select(risk_model_parts).where(risk_model_parts.c.model == part["model"])).all()
            for o in others:
                if {k: json.loads(o.part)[k] for k in meta} != meta:
                    raise NodeError("the parts of this model disagree on its shape", "MODEL_INVALID", 409)
            if any(o.party == party for o in others):
                raise NodeError("this party's part is in", "MODEL_EXISTS", 409)
            enc = json.dumps([[str(int(v)) for v in row] for row in words])
            conn.execute(insert(risk_model_parts).values(model=part["model"], party=party, part=json.dumps(part),
                                                         words=enc))
            parties = {o.party for o in others} | {party}
            held = parties == {meta["mpp"], meta["acqp"]}
            if held:
                total = words.copy()
                for o in others:
                    total += np.array([[int(v) for v in row] for row in json.loads(o.words)], dtype=np.uint64)
                conn.execute(insert(risk_models).values(
                    model=part["model"], meta=json.dumps(meta), words=json.dumps([[str(int(v)) for v in row]
                                                                                 for row in total]),
                    created_ms=self.clock()))
        return {"model": part["model"], "held": held}


def _item_shaped(it: Any) -> bool:
    """A score request's outer shape (what the leader's own check took): {mpp, acqp},
    each {bundle, shares} with an object for the bundle."""
    return isinstance(it, dict) and set(it) == {"mpp", "acqp"} and all(
        isinstance(it[r], dict) and isinstance(it[r].get("bundle"), dict) for r in ("mpp", "acqp"))


def _rule_digests(docs: Any) -> dict[str, dict[str, str]]:
    if not isinstance(docs, dict):
        return {}
    return {m: {mode: sha256(wirejson.dumps_sorted(d)).hex() for mode, d in modes.items()}
            for m, modes in docs.items() if isinstance(modes, dict)}
