"""Real-time fraud scoring on shares (veilpay.risk, veilpay.node.risk,
veilpay.sdk.features): the scoring program against its plaintext reference, velocity
windows across their boundaries, rule sets, signed feature bundles, and the nodes'
scoring service (three nodes in one process over in-memory meshes): decisions equal
to plaintext, scored once, refusals by name, a rule reload between batches, and a
node that does not answer."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veilpay.errors import InvalidInput, NodeError, SignatureError
from veilpay.mpc.runtime import run_local
from veilpay.net.local import local_mesh
from veilpay.node.config import RiskPolicy
from veilpay.node.risk import RiskService
from veilpay.node.service import NodeMetrics
from veilpay.node.store import open_store
from veilpay.risk.program import DECISIONS, score_batch, tensor_of
from veilpay.risk.rules import RuleSet, parse_rules
from veilpay.risk.shares import encode_fixed, split_words
from veilpay.risk.velocity import window_features
from veilpay.sdk import create_party
from veilpay.sdk.features import (
    model_part,
    risk_token,
    share_features,
    sign_rules,
    verify_decisions,
    verify_feature_bundle,
    verify_rules,
)
from veilpay.sdk.shares import Privacy

FRAC = 20
SEMI = Privacy("semi2k", ("a", "b"), "d")
ABY = Privacy("aby3", ("a", "b", "c"))
RULES = {"mpp": "mpp-1", "version": 1, "mode": "live", "model": "m1", "review": 0.5, "decline": 0.9,
         "rules": [{"name": "burst", "then": "decline", "if": [["count_1h", ">", 3], ["score", ">", 0.2]]},
                   {"name": "big-day", "then": "review", "if": [["sum_24h", ">=", 500_000]]}]}


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


# ---------------------------------------------------------------- rule sets
def test_rule_sets_are_checked() -> None:
    rs = parse_rules(RULES)
    assert rs.decide(0.95, (1, 1), (0, 0)) == "decline"
    assert rs.decide(0.3, (4, 4), (0, 0)) == "decline"
    assert rs.decide(0.3, (3, 3), (0, 600_000)) == "review"
    assert rs.decide(0.1, (9, 9), (0, 0)) == "approve"
    for bad, why in (({**RULES, "review": 0.95}, "at most"), ({**RULES, "version": 0}, "version"),
                     ({**RULES, "rules": [{"name": "x", "then": "decline", "if": [["amount", ">", 1]]}]}, "feature"),
                     ({**RULES, "rules": [{"name": "x", "then": "decline", "if": [["score", ">", 1.5]]}]},
                      "probability"),
                     ({**RULES, "extra": 1}, "fields"), ({**RULES, "mode": "dry"}, "mode")):
        with pytest.raises(InvalidInput, match=why):
            parse_rules(bad)


# ---------------------------------------------------------------- velocity
def test_velocity_windows_across_their_boundaries() -> None:
    hour = 3_600_000
    t0 = 10 * 86_400_000
    words = np.array([[7], [11], [13]], dtype=np.uint64)
    history = {"tok": [(t0 - hour, np.array([100], dtype=np.uint64)),        # exactly 1 h old: out of 1 h
                       (t0 - hour + 1, np.array([200], dtype=np.uint64)),    # just inside 1 h
                       (t0 - 24 * hour, np.array([400], dtype=np.uint64)),   # exactly 24 h old: out
                       (t0 - 24 * hour + 1, np.array([800], dtype=np.uint64)),
                       (t0 + 5, np.array([1600], dtype=np.uint64))],         # later than the payment: out
               "other": [(t0, np.array([3200], dtype=np.uint64))]}
    counts, sums = window_features(["tok", "tok", "new"], [t0, t0, t0], words, history)
    assert counts.tolist() == [[2, 4], [3, 5], [1, 1]]
    assert sums[:, :, 0].tolist() == [[207, 1107], [218, 1118], [13, 13]]


# ---------------------------------------------------------------- the program against plaintext
def _program_case(privacy: Privacy, x: np.ndarray, w: np.ndarray, b: float, counts: np.ndarray, sums: np.ndarray,
                  rule_sets: list[RuleSet]) -> dict[str, Any]:
    n, d = x.shape
    xw = split_words(encode_fixed(x.reshape(-1), FRAC), privacy.protocol)
    mw = split_words(encode_fixed(np.concatenate([w, [b]]), FRAC), privacy.protocol)
    sw = split_words(sums.reshape(-1).astype(np.uint64), privacy.protocol)
    words = 1 if privacy.protocol == "semi2k" else 2
    kwargs = {p: {"i": i} for i, p in enumerate(privacy.nodes)}
    if privacy.dealer:
        kwargs[privacy.dealer] = {"i": None}

    def program(rt: Any, i: int | None) -> Any:
        hold = i is not None
        xs = tensor_of(rt, xw[i].reshape(n, d, words) if hold else None, (n, d), FRAC)
        ws = tensor_of(rt, mw[i][:d].reshape(d, 1, words) if hold else None, (d, 1), FRAC)
        bs = tensor_of(rt, mw[i][d:].reshape(1, 1, words) if hold else None, (1, 1), FRAC)
        ss = tensor_of(rt, sw[i].reshape(n, 2, words) if hold else None, (n, 2), 0)
        return score_batch(rt, n, xs, ws, bs, ss, counts if hold else None, rule_sets)

    return run_local(program, privacy.protocol, privacy.parties, frac_bits=FRAC, kwargs=kwargs)


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from([SEMI, ABY]))
def test_scoring_equals_the_plaintext_decision(seed: int, privacy: Privacy) -> None:
    rng = np.random.default_rng(seed)
    n, d = 24, 6
    x = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    b = float(rng.normal())
    counts = rng.integers(1, 7, size=(n, 2))
    sums = rng.integers(0, 1_000_000, size=(n, 2))
    live = parse_rules(RULES)
    shadow = parse_rules({**RULES, "mode": "shadow", "review": 0.3, "decline": 0.6, "rules": []})
    out = _program_case(privacy, x, w, b, counts, sums, [live, shadow])
    xq = np.rint(x * 2**FRAC) / 2**FRAC
    wq = np.rint(w * 2**FRAC) / 2**FRAC
    z = xq @ wq + np.rint(b * 2**FRAC) / 2**FRAC
    bound = (d + 2) * 2.0**-FRAC  # the fixed-point tie bound of docs/risk.md
    logits = [math.log(t / (1 - t)) for t in (0.2, 0.3, 0.5, 0.6, 0.9)]
    for k, rs in enumerate((live, shadow)):
        got = out[privacy.nodes[0]][k]
        for p in privacy.nodes[1:]:
            assert np.array_equal(out[p][k], got)  # every holder sees the same decisions
        if privacy.dealer:
            assert out[privacy.dealer][k] is None  # the dealer sees none
        for i in range(n):
            if min(abs(z[i] - t) for t in logits) < bound:
                continue  # a documented fixed-point tie
            want = rs.decide(_sigmoid(z[i]), (int(counts[i, 0]), int(counts[i, 1])),
                             (int(sums[i, 0]), int(sums[i, 1])))
            assert DECISIONS[int(got[i])] == want, (i, z[i])


# ---------------------------------------------------------------- the nodes' scoring service
class Nodes:
    """Three nodes' RiskServices over an in-memory scoring mesh, SQLite each, pinning
    one MPP and one ACQP; ``clock`` is shared and settable."""

    def __init__(self, tmp: Path, privacy: Privacy = SEMI, **policy: Any) -> None:
        self.tmp, self.privacy = tmp, privacy
        self.now = int(time.time() * 1000)
        self.mpp = create_party(tmp / "mpp", "mpp-1", "mpp")
        self.acqp = create_party(tmp / "acqp", "acqp-1", "acqp")
        self.keys = {n: create_party(tmp / n, n, "node") for n in privacy.parties}
        self.entries = {n: k.public for n, k in self.keys.items()}
        pinned = {"mpp-1": self.mpp.public, "acqp-1": self.acqp.public}
        self.policy = RiskPolicy(**{"enabled": True, "batch_wait_ms": 20.0, "heartbeat_s": 0.5,
                                    "rules_min_interval_s": 0.0, "answer_timeout_s": 10.0, **policy})
        self._gen = 0
        self._meshes: dict[int, Any] = {}
        self._lock = threading.Lock()
        self.down: set[str] = set()
        self.svc = {n: RiskService(self.keys[n], privacy, open_store(f"sqlite:///{tmp}/{n}.db"), self._mesh(n),
                                   lambda: pinned, self.policy, 300.0, lambda: self.now, NodeMetrics())
                    for n in privacy.parties}
        self.leader = self.svc[privacy.nodes[0]]

    def _mesh(self, me: str) -> Any:
        seen = {"gen": -1}

        def connect(_session: bytes) -> Any:
            if me in self.down:
                time.sleep(0.1)
                from veilpay.errors import PeerDisconnected
                raise PeerDisconnected(me, "down")
            with self._lock:
                gen = max(seen["gen"] + 1, 0)
                if gen not in self._meshes:
                    # 6 s: a busy 2-core CI machine once took over 2 s between two messages of a batch
                    self._meshes[gen] = local_mesh(list(self.privacy.parties), timeout=6.0)
                seen["gen"] = gen
                return self._meshes[gen][me]
        return connect

    def start(self) -> None:
        for s in self.svc.values():
            s.start()

    def stop(self) -> None:
        for s in self.svc.values():
            s._stop.set()
        for s in self.svc.values():
            s.stop()

    def publish(self, w: np.ndarray, b: float, d_mpp: int, name: str = "m1") -> None:
        comp = encode_fixed(np.concatenate([w, [b]]), FRAC)
        r = split_words(comp, "semi2k")  # the two training parties' shares of the weights
        for party, keys, c in ((self.mpp.id, self.mpp, r[0][:, 0]), (self.acqp.id, self.acqp, r[1][:, 0])):
            part = model_part(keys, model=name, mpp="mpp-1", acqp="acqp-1", component=c, frac=FRAC, d_mpp=d_mpp,
                              d_acqp=len(w) - d_mpp, nodes=self.entries, privacy=self.privacy)
            for n in self.privacy.nodes:
                assert self.svc[n].put_model_part(part, party)["held"] == (party == "acqp-1")

    def rules(self, doc: dict[str, Any]) -> None:
        signed = sign_rules(self.mpp, doc)
        for n in self.privacy.nodes:
            self.svc[n].put_rules(signed, "mpp-1")

    def request(self, rid: str, xm: np.ndarray, xa: np.ndarray, cents: int, payer: str = "alice",
                model: str = "m1", ts: int | None = None) -> dict[str, Any]:
        ts = self.now if ts is None else ts
        common = {"acqp": "acqp-1", "mpp": "mpp-1", "request_id": rid, "model": model, "frac": FRAC,
                  "nodes": self.entries, "privacy": self.privacy, "ts_ms": ts}
        return {"mpp": share_features(self.mpp, features=xm, payer=risk_token(self.mpp, payer), **common),
                "acqp": share_features(self.acqp, features=xa, amount_usd_cents=cents, **common)}


@pytest.fixture
def nodes(tmp_path: Path) -> Any:
    net = Nodes(tmp_path)
    yield net
    net.stop()


def _score(svc: RiskService, req: dict[str, Any], caller: str = "mpp-1") -> dict[str, Any]:
    """One payment's answer from a node, with the statements that cover it; NodeError
    with the node's code when it refused the payment."""
    out = svc.score({"requests": [req]}, caller)
    ans = out["answers"][0]
    if "error" in ans:
        raise NodeError(ans["error"]["message"], ans["error"]["code"])
    return {**ans, "statements": out["statements"]}


def _decide(rs: RuleSet, w: np.ndarray, b: float, x: np.ndarray, counts: tuple[int, int],
            sums: tuple[int, int]) -> str:
    return rs.decide(_sigmoid(float(x @ w + b)), counts, sums)


def test_nodes_score_payments_as_plaintext_would(nodes: Nodes) -> None:
    rng = np.random.default_rng(5)
    w, b = rng.normal(size=5), -1.0
    nodes.publish(w, b, d_mpp=2)
    nodes.rules(RULES)
    nodes.start()
    rs = parse_rules(RULES)
    xs = rng.normal(size=(12, 5))
    reqs = [nodes.request(f"r{i}", xs[i, :2], xs[i, 2:], 120_000, payer="alice" if i < 6 else f"p{i}")
            for i in range(12)]
    with ThreadPoolExecutor(12) as pool:  # concurrent: they share micro-batches
        answers = list(pool.map(lambda r: _score(nodes.leader, r), reqs))
    for i, ans in enumerate(answers):
        assert {st["node"] for st in ans["statements"]} == {"a", "b"}
        for stmt in ans["statements"]:  # each holder signed this payment's decision
            said = verify_decisions(stmt, nodes.entries[stmt["node"]], mpp="mpp-1")
            assert said[("acqp-1", f"r{i}")] == (ans["decision"], "m1", 1)
            with pytest.raises(InvalidInput):
                verify_decisions(stmt, nodes.entries[stmt["node"]], mpp="mpp-2")
    # alice's payments: the velocity count depends on the order the batch took them in,
    # so compare the others exactly and alice's against the decision set of her counts
    for i in range(6, 12):
        assert answers[i]["decision"] == _decide(rs, w, b, xs[i], (1, 1), (120_000, 120_000))
    for i in range(6):
        possible = {_decide(rs, w, b, xs[i], (c, c), (120_000 * c, 120_000 * c)) for c in range(1, 7)}
        assert answers[i]["decision"] in possible
    # scored once: asked again, the stored answer, even with other features
    again = _score(nodes.leader, nodes.request("r0", xs[1, :2], xs[1, 2:], 1))
    assert again["decision"] == answers[0]["decision"] and again["statements"] == answers[0]["statements"]


def test_bad_bundles_are_refused_by_name(nodes: Nodes) -> None:
    nodes.publish(np.ones(4), 0.0, d_mpp=2)
    nodes.rules(RULES)
    ok = nodes.request("ok", np.zeros(2), np.zeros(2), 100)
    wide = nodes.request("wide", np.zeros(3), np.zeros(2), 100)
    with pytest.raises(NodeError) as e:
        _score(nodes.leader, wide)
    assert e.value.code == "RISK_WIDTH"
    unknown = nodes.request("u", np.zeros(2), np.zeros(2), 100, model="m9")
    with pytest.raises(NodeError) as e:
        _score(nodes.leader, unknown)
    assert e.value.code == "RISK_MODEL_UNKNOWN"
    forged = {**ok, "acqp": {**ok["acqp"], "bundle": {**ok["acqp"]["bundle"], "ts": nodes.now + 1}}}
    with pytest.raises(NodeError) as e:
        _score(nodes.leader, forged)
    assert e.value.code == "INVALID_SIGNATURE"
    unsigned = {**ok, "mpp": {**ok["mpp"], "bundle": {**ok["mpp"]["bundle"], "sig": "AAAA"}}}
    with pytest.raises(NodeError) as e:
        _score(nodes.leader, unsigned)
    assert e.value.code == "INVALID_SIGNATURE"
    other = nodes.request("other", np.zeros(2), np.zeros(2), 100)
    mixed = {"mpp": ok["mpp"], "acqp": other["acqp"]}  # two payments' bundles
    with pytest.raises(NodeError) as e:
        _score(nodes.leader, mixed)
    assert e.value.code == "RISK_BUNDLE_INVALID"
    stale = nodes.request("stale", np.zeros(2), np.zeros(2), 100, ts=nodes.now - 3_600_000)
    with pytest.raises(NodeError) as e:
        _score(nodes.leader, stale)
    assert e.value.code == "RISK_STALE"
    with pytest.raises(NodeError) as e:  # only the payment's MPP asks
        _score(nodes.leader, ok, "acqp-1")
    with pytest.raises(NodeError) as e:
        _score(nodes.svc["b"], ok)
    assert e.value.code == "RISK_NOT_LEADER"


def test_bundles_and_rule_sets_are_signed(nodes: Nodes) -> None:
    req = nodes.request("r", np.zeros(2), np.zeros(2), 100)
    b = req["acqp"]["bundle"]
    assert verify_feature_bundle(b, nodes.acqp.public, SEMI) == b
    with pytest.raises(SignatureError):
        verify_feature_bundle(b, nodes.mpp.public, SEMI)  # not the signer it names
    with pytest.raises(SignatureError):
        verify_feature_bundle({**b, "requestId": "r2"}, nodes.acqp.public, SEMI)
    signed = sign_rules(nodes.mpp, RULES)
    assert verify_rules(signed, nodes.mpp.public)[0] == parse_rules(RULES)
    with pytest.raises(SignatureError):
        verify_rules({**signed, "decline": 0.99}, nodes.mpp.public)
    with pytest.raises(InvalidInput):
        sign_rules(nodes.mpp, {**RULES, "mpp": "mpp-2"})
    # the canary: no feature value appears in what the gateway relays
    text = str(nodes.request("c", np.array([0.123456789, 1.5]), np.array([2.5, 3.5]), 4242)["acqp"])
    assert "4242" not in text and "0.123456789" not in text


def test_rule_sets_change_under_the_nodes_policy(tmp_path: Path) -> None:
    net = Nodes(tmp_path, rules_min_interval_s=3600.0)
    try:
        net.publish(np.ones(4), 0.0, d_mpp=2)
        net.rules(RULES)
        with pytest.raises(NodeError) as e:
            net.rules({**RULES, "version": 2, "decline": 0.95})
        assert e.value.code == "RULES_TOO_SOON"
        net.now += 3_600_001
        net.rules({**RULES, "version": 2, "decline": 0.95})
        with pytest.raises(NodeError) as e:
            net.rules(RULES)  # version 1 again
        assert e.value.code == "RULES_VERSION"
        with pytest.raises(NodeError) as e:  # another MPP's rules
            net.svc["a"].put_rules(sign_rules(net.mpp, {**RULES, "version": 3}), "acqp-1")
    finally:
        net.stop()


def test_a_rule_reload_lands_between_batches(nodes: Nodes) -> None:
    nodes.publish(np.array([1.0, 0.0, 0.0, 0.0]), 0.0, d_mpp=2)  # z = x0
    nodes.rules(RULES)
    nodes.start()
    x = np.array([math.log(0.7 / 0.3), 0.0])  # p = 0.7: review under v1
    assert _score(nodes.leader, nodes.request("a", x, np.zeros(2), 1))["decision"] == "review"
    # v2 reaches only the leader: the followers adopt it from the next batch's header
    nodes.leader.put_rules(sign_rules(nodes.mpp, {**RULES, "version": 2, "decline": 0.6}), "mpp-1")
    ans = _score(nodes.leader, nodes.request("b", x, np.zeros(2), 1))
    assert (ans["decision"], ans["rules"]) == ("decline", 2)
    assert {verify_decisions(st, nodes.entries[st["node"]], mpp="mpp-1")[("acqp-1", "b")][2]
            for st in ans["statements"]} == {2}


def test_a_node_that_does_not_answer_fails_the_batch_by_name(tmp_path: Path) -> None:
    net = Nodes(tmp_path, answer_timeout_s=1.0)
    try:
        net.publish(np.ones(4), 0.0, d_mpp=2)
        net.rules(RULES)
        net.down.add("b")
        net.svc["a"].start()
        net.svc["d"].start()
        t = time.monotonic()
        with pytest.raises(NodeError) as e:
            _score(net.leader, net.request("r", np.zeros(2), np.zeros(2), 1))
        assert e.value.code in ("RISK_TIMEOUT", "RISK_UNAVAILABLE")
        assert time.monotonic() - t < 5
    finally:
        net.stop()


# ---------------------------------------------------------------- on the payment path
def risk_net(tmp_path: Path, weights: list[float], rules: dict[str, Any], budget_ms: float) -> Any:
    """The in-process network (tests/gateway_net.py) with privacy nodes that score
    mpp-1's payments: the MPP's columns v1 and the hour (weight 0), the ACQP's one
    column a1, the model ``weights`` (v1, hour, a1, bias) published as the two training
    parties' shares, and ``rules`` signed once by mpp-1 and given to every holder.
    Returns the net, with ``entries`` (the nodes' public entries) and ``risk`` (each
    node's RiskService) set on it."""
    import json

    from gateway_net import Net

    prep = tmp_path / "prep.json"
    prep.write_text(json.dumps({"columns": [{"name": "v1", "kind": "numeric", "mean": 0.0, "std": 1.0},
                                            {"name": "hour", "kind": "numeric", "mean": 12.0, "std": 100.0}]}))
    net = Net(tmp_path, privacy="semi2k", risk={"model": "m1", "prep": prep, "budget_ms": budget_ms})
    mpp, acqp = net.keys("mpp-1"), net.keys("acqp-1")
    net.entries = {n: net.keys(n).public for n in net.node_ids}
    net.risk_svc = {n: net.node_apps[n].state.service.risk for n in net.node_ids}
    parts = split_words(encode_fixed(np.array(weights), FRAC), "semi2k")
    for keys, c in ((mpp, parts[0][:, 0]), (acqp, parts[1][:, 0])):
        part = model_part(keys, model="m1", mpp="mpp-1", acqp="acqp-1", component=c, frac=FRAC, d_mpp=2, d_acqp=1,
                          nodes=net.entries, privacy=net.privacy)
        for n in net.privacy.nodes:
            net.risk_svc[n].put_model_part(part, keys.id)
    signed = sign_rules(mpp, rules)  # one document, every node
    for n in net.privacy.nodes:
        net.risk_svc[n].put_rules(signed, "mpp-1")
    return net


def test_payments_are_scored_on_the_payment_path(tmp_path: Path) -> None:
    """The ACQP's SDK sends its features sealed to the nodes, the gateway relays them,
    the MPP adds its own and asks the nodes: a fraudulent-looking payment is declined
    (RISK_REJECT), a normal one approved, each with its riskResult in the answer and
    the inquiry; no feature value reaches the gateway."""
    from gateway_net import run

    from veilpay.sdk.features import share_features as share

    A1 = 1.000123456789  # the ACQP's feature: a canary  # noqa: N806
    net = risk_net(tmp_path, [3.0, 0.0, 2.0, -4.0], {**RULES, "rules": []}, 5000.0)  # z = 3 v1 + 2 a1 - 4
    acqp, entries = net.keys("acqp-1"), net.entries

    async def go() -> None:
        c = net.client()
        for user, v1 in (("alice", 2.0), ("bob", -1.0)):
            await net.wallet(user, 10**9)
            await net.admin("mpp-1", "POST", "/admin/risk-profiles", {"userId": user, "features": {"v1": v1}})
        out = {}
        for rid, user in (("pay-fraud", "alice"), ("pay-ok", "bob")):
            feats = share(acqp, acqp="acqp-1", mpp="mpp-1", request_id=rid, model="m1", features=np.array([A1]),
                          frac=FRAC, nodes=entries, privacy=net.privacy, amount_usd_cents=9_876_543_210)
            out[rid] = await c.pay(rid, {"currency": "JPY", "value": "5000"}, await net.code(user),
                                   {"orderId": rid, "goods": "tea"}, risk_features=feats)
        assert out["pay-fraud"].code == "RISK_REJECT", out["pay-fraud"].body.get("riskResult")
        assert out["pay-fraud"].risk_result["decision"] == "decline"
        assert out["pay-ok"].code == "SUCCESS", out["pay-ok"].body
        assert out["pay-ok"].risk_result == {"decision": "approve", "reason": "RISK_SCORE", "modelVersion": "m1",
                                             "rulesVersion": 1}
        inq = await c.inquiry_payment(payment_request_id="pay-fraud")
        assert inq.body["riskResult"]["decision"] == "decline"
        assert await net.balance("alice") == 10**9  # declined: nothing debited
        # the canary: no feature value, amount word or score reaches the gateway, in its
        # database, its logs or its answers
        raw = b"".join(p.read_bytes() for p in (tmp_path / "gw").iterdir())
        seen = raw + b"".join(req + resp for host, _, req, resp in net.router.log if host == "gateway.test")
        for canary in ("9876543210", repr(A1)):  # long or dotted: not found in base64 or timestamps by chance
            assert canary.encode() not in seen, canary

    try:
        run(go())
    finally:
        net.close()


def test_the_mpp_follows_its_fail_policy_and_late_decisions_are_kept(tmp_path: Path) -> None:
    """With the leader unreachable the payment goes on under the fail policy (review,
    approved and flagged) with a named reason; with a budget shorter than a batch the
    MPP answers RISK_TIMEOUT and the nodes still record the decision, in the risk
    ledger too, which a partner can verify."""
    from gateway_net import run

    from veilpay.sdk.features import share_features as share
    from veilpay.sdk.ledger import verify_records

    net = risk_net(tmp_path, [1.0, 0.0, 1.0, -1.0], RULES, 0.5)
    acqp, entries, svc = net.keys("acqp-1"), net.entries, net.risk_svc

    async def go() -> None:
        c = net.client()
        await net.wallet("carol", 10**9)
        await net.admin("mpp-1", "POST", "/admin/risk-profiles", {"userId": "carol", "features": {"v1": 0.0}})

        async def pay(rid: str) -> Any:
            feats = share(acqp, acqp="acqp-1", mpp="mpp-1", request_id=rid, model="m1", features=np.array([0.0]),
                          frac=FRAC, nodes=entries, privacy=net.privacy, amount_usd_cents=100)
            return await c.pay(rid, {"currency": "JPY", "value": "700"}, await net.code("carol"),
                               {"orderId": rid}, risk_features=feats)

        late = await pay("late")  # a 0.5 ms budget: the batch takes longer
        assert late.code == "SUCCESS" and late.risk_result["decision"] == "review"
        assert late.risk_result["reason"] == "RISK_TIMEOUT"
        for _ in range(200):  # ... and the nodes still decide it
            if svc["node-a"].decision("acqp-1/late") is not None:
                break
            await asyncio.sleep(0.05)
        assert svc["node-a"].decision("acqp-1/late")["decision"] == "approve"
        net.router.down.add("node-a.test")
        down = await pay("down")
        assert down.code == "SUCCESS", down.body
        assert down.risk_result["decision"] == "review"
        assert down.risk_result["reason"] in ("RISK_UNAVAILABLE", "RISK_TIMEOUT")
        # the risk ledger: one entry per batch, agreed and verifiable by a partner
        for n in net.privacy.nodes:
            page = net.node_apps[n].state.service.ledger_page(0, 100, "risk")
            assert page["records"] and verify_records(page["records"], entries[n])[0] == page["head"]["seq"]
            assert all(r["body"]["function"] == "risk" for r in page["records"])

    try:
        run(go())
    finally:
        net.close()


def test_a_shadow_rule_set_is_scored_beside_the_live_one_without_acting(tmp_path: Path) -> None:
    """A shadow rule set is evaluated in the same batch; the answer is the live
    decision; the shadow one is stored at the nodes, never in their public metrics, and
    reported to the MPP per closed day, suppressed under the policy's count."""
    from prometheus_client import generate_latest
    from sqlalchemy import select

    from veilpay.node.store import risk_decisions

    nodes = Nodes(tmp_path, report_min_count=2)
    try:
        nodes.publish(np.array([1.0, 0.0, 0.0, 0.0]), 0.0, d_mpp=2)  # z = x0
        nodes.rules(RULES)
        nodes.rules({**RULES, "mode": "shadow", "review": 0.2, "decline": 0.4})
        nodes.start()
        x = np.array([math.log(0.45 / 0.55), 0.0])  # p = 0.45: approve live, decline in shadow
        ans = _score(nodes.leader, nodes.request("s1", x, np.zeros(2), 1))
        assert ans["decision"] == "approve"
        for n in ("a", "b"):
            svc = nodes.svc[n]
            with svc.engine.connect() as conn:
                row = conn.execute(select(risk_decisions.c.decision, risk_decisions.c.shadow)).one()
            assert (row.decision, row.shadow) == ("approve", "decline")
            assert b"shadow" not in generate_latest(svc.metrics.registry)
        day = time.strftime("%Y-%m-%d", time.gmtime(nodes.now / 1000))
        with pytest.raises(NodeError) as e:  # the day is not over
            nodes.leader.shadow_report({"day": day}, "mpp-1")
        assert e.value.code == "PERIOD_OPEN"
        nodes.now += 2 * 86_400_000
        assert nodes.leader.shadow_report({"day": day}, "mpp-1") == {"day": day, "payments": 1, "suppressed": True}
        nodes.now -= 2 * 86_400_000
        _score(nodes.leader, nodes.request("s2", x, np.zeros(2), 1))
        nodes.now += 2 * 86_400_000
        assert nodes.leader.shadow_report({"day": day}, "mpp-1") == {
            "day": day, "payments": 2, "disagreements": 2, "by_change": {"approve->decline": 2}}
        assert nodes.leader.shadow_report({"day": day}, "mpp-2")["payments"] == 0  # only its own payments
    finally:
        nodes.stop()
