"""Attacks on real-time scoring (docs/risk.md, "Who learns what"), each written as one
adversary with only what it has: the MPP (its own features, its rule sets, its calls),
the ACQP (its own bundle), another partner or the gateway (a signed call to the leader
naming someone else's payment), and one node, the leader (the batch header it sends
the others). A test that finds the claim holds stays, named for what it tries; an
attack the docs list as a limit is measured (the MPP learning its own columns'
weights through decisions)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest
from test_risk import FRAC, RULES, SEMI, Nodes, _program_case, _score, _sigmoid, risk_net

from veilpay.errors import NodeError, WireFormatError
from veilpay.node.risk import RiskService
from veilpay.risk.program import DECISIONS
from veilpay.risk.rules import parse_rules
from veilpay.risk.shares import encode_fixed, split_words
from veilpay.sdk import wirejson
from veilpay.sdk.features import _bundle_context, _seal_words, _sign, risk_token, sign_rules
from veilpay.sdk.shares import envelope_digest


@pytest.fixture
def nodes(tmp_path: Path) -> Any:
    net = Nodes(tmp_path)
    yield net
    net.stop()


class _HeaderOnly:
    """A follower's view of a malicious leader: the batch header, then silence."""

    def __init__(self, leader: str, head: Any) -> None:
        raw = head if isinstance(head, bytes) else wirejson.dumps(head)
        self.leader, self.raw = leader, np.frombuffer(raw, dtype=np.uint8)
        self.peers = [leader]

    def exchange(self, label: str, send: Any, recv: Any) -> dict[str, list[np.ndarray]]:
        if label == "risk.head":
            return {self.leader: [self.raw]}
        raise WireFormatError(self.leader, f"the leader went quiet at {label}")


def _follow(svc: RiskService, head: Any) -> None:
    svc._follow_one(_HeaderOnly(svc.leader, head))  # type: ignore[arg-type]


# ---------------------------------------------------------------- another party asks for a payment's decision
@pytest.mark.parametrize("caller", ["acqp-1", "mpp-2", "gateway"])
def test_only_the_payments_mpp_reads_its_stored_decision(nodes: Nodes, caller: str) -> None:
    """Another MPP, the ACQP or the gateway (all may sign calls to a node) names a scored
    payment by ``acqp/requestId`` alone: the leader looked stored decisions up before it
    checked who asked, and answered them to anyone."""
    nodes.publish(np.ones(4), 0.0, d_mpp=2)
    nodes.rules(RULES)
    nodes.start()
    req = nodes.request("r0", np.zeros(2), np.zeros(2), 100)
    assert _score(nodes.leader, req)["decision"] == "review"  # z = 0: p = 0.5
    probe = {"mpp": {}, "acqp": {"bundle": {"acqp": "acqp-1", "requestId": "r0"}}}
    for ask in (probe, req):  # a bare name, or the real bundles replayed
        out = nodes.leader.score({"requests": [ask]}, caller)
        assert "decision" not in out["answers"][0] and out["statements"] == []
        assert out["answers"][0]["error"]["code"] in ("RISK_BUNDLE_INVALID", "INVALID_SIGNATURE")


# ---------------------------------------------------------------- the MPP re-asks
def test_one_acqp_bundle_twice_in_one_call_is_scored_once(nodes: Nodes) -> None:
    """The MPP sends the ACQP's bundle twice in one call, with two feature vectors of
    its own: one decision, the first's, for both."""
    nodes.publish(np.array([1.0, 0.0, 0.0, 0.0]), 0.0, d_mpp=2)
    nodes.rules({**RULES, "rules": []})
    nodes.start()
    low = nodes.request("twice", np.array([-5.0, 0.0]), np.zeros(2), 1)
    high = nodes.request("twice", np.array([5.0, 0.0]), np.zeros(2), 1)
    out = nodes.leader.score({"requests": [low, {"mpp": high["mpp"], "acqp": low["acqp"]}]}, "mpp-1")
    a, b = out["answers"]
    assert a["decision"] == b["decision"] == "approve" and a["batch"] == b["batch"]
    assert _score(nodes.leader, high)["decision"] == "approve"  # asked again later: the stored one


def test_a_payment_refused_before_scoring_reveals_nothing_and_is_scored_once_after(nodes: Nodes) -> None:
    """A request the nodes refuse (a wrong width) is not scored: no decision comes out.
    Retried well formed it is scored once, and the refusal left nothing to difference."""
    nodes.publish(np.array([1.0, 0.0, 0.0, 0.0]), 0.0, d_mpp=2)
    nodes.rules({**RULES, "rules": []})
    nodes.start()
    good = nodes.request("p", np.array([5.0, 0.0]), np.zeros(2), 1)
    wide = nodes.request("p", np.array([5.0, 0.0, 1.0]), np.zeros(2), 1)
    with pytest.raises(NodeError) as e:
        _score(nodes.leader, {"mpp": wide["mpp"], "acqp": good["acqp"]})
    assert e.value.code == "RISK_WIDTH"
    assert nodes.leader.decision("acqp-1/p") is None
    assert _score(nodes.leader, good)["decision"] == "decline"
    assert _score(nodes.leader, nodes.request("p", np.array([-5.0, 0.0]), np.zeros(2), 1))["decision"] == "decline"


# ---------------------------------------------------------------- the MPP moves its thresholds
def test_rule_sets_change_once_per_interval_in_each_mode_and_at_every_node(tmp_path: Path) -> None:
    """Shadow beside live, one version re-signed with another document, and a leader
    that pushes a newer version in a batch header before the follower's interval is up:
    all refused by name."""
    net = Nodes(tmp_path, rules_min_interval_s=3600.0)
    try:
        net.publish(np.ones(4), 0.0, d_mpp=2)
        net.rules(RULES)
        net.rules({**RULES, "mode": "shadow", "review": 0.3})  # a shadow's first version
        for doc, code in (({**RULES, "mode": "shadow", "version": 2, "review": 0.31}, "RULES_TOO_SOON"),
                          ({**RULES, "review": 0.51}, "RULES_VERSION"),  # version 1, another document
                          ({**RULES, "version": 2, "review": 0.51}, "RULES_TOO_SOON")):
            with pytest.raises(NodeError) as e:
                net.rules(doc)
            assert e.value.code == code
        v2 = sign_rules(net.mpp, {**RULES, "version": 2, "review": 0.51})
        with pytest.raises(WireFormatError, match="RULES_TOO_SOON"):
            net.svc["b"]._adopt({"mpp-1": {"live": v2}})  # the leader's header carries it
    finally:
        net.stop()


def test_the_mpp_learns_no_shadow_decision(nodes: Nodes) -> None:
    nodes.publish(np.array([1.0, 0.0, 0.0, 0.0]), 0.0, d_mpp=2)  # z = the MPP's first feature
    nodes.rules({**RULES, "rules": []})
    nodes.rules({**RULES, "mode": "shadow", "review": 0.3, "decline": 0.6, "rules": []})
    nodes.start()

    def metrics_delta(rid: str, p: float) -> tuple[str, bytes]:
        before = generate_latest(nodes.leader.metrics.registry)
        dec = _score(nodes.leader, nodes.request(rid, np.array([math.log(p / (1 - p)), 0.0]), np.zeros(2), 1))
        after = generate_latest(nodes.leader.metrics.registry)
        counters = [line for line in after.splitlines() if line.startswith(b"veilpay_node_risk_shadow")]
        return dec["decision"], b"".join(counters) if before != after else b""

    live_a, seen_a = metrics_delta("a", 0.2)   # shadow: approve
    live_b, seen_b = metrics_delta("b", 0.4)   # shadow: review
    assert live_a == live_b == "approve"
    assert seen_a == seen_b, "the metrics tell the two payments' shadow decisions apart"


# ---------------------------------------------------------------- the MPP queries the model with its own features
def test_an_mpp_learns_its_own_columns_weights_through_decisions_as_documented(nodes: Nodes) -> None:
    """docs/risk.md, Limits: each real payment is a fresh query on features the MPP
    chooses, so two binary searches on one of its columns give that column's weight
    (relative to the thresholds' gap) from the decisions alone; scored-once bounds
    re-asking one bundle, not queries per MPP. This measures what the limit costs: 32
    payments for four decimals of one weight."""
    w0 = 0.7
    nodes.publish(np.array([w0, -1.3, 0.4, 0.2]), -1.0, d_mpp=2)
    nodes.rules({**RULES, "rules": []})  # review at p 0.5 (logit 0), decline at 0.9 (logit log 9)
    nodes.start()
    count = [0]

    def decision(c: float) -> str:
        count[0] += 1  # one payment each, the ACQP's features unknown and fixed
        req = nodes.request(f"q{count[0]}", np.array([c, 0.0]), np.array([0.5, -0.5]), 100, payer=f"u{count[0]}")
        return str(_score(nodes.leader, req)["decision"])

    def crossing(past: str) -> float:
        lo, hi = 0.0, 64.0
        for _ in range(16):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if DECISIONS.index(decision(mid)) >= DECISIONS.index(past) else (mid, hi)
        return (lo + hi) / 2

    estimate = math.log(9) / (crossing("decline") - crossing("review"))
    assert abs(estimate - w0) < 1e-3 and count[0] == 32


# ---------------------------------------------------------------- the ACQP states the amount
def _acqp_bundle_with_words(nodes: Nodes, rid: str, words: np.ndarray) -> dict[str, Any]:
    """What a cheating ACQP can send: any ring words as its features and amount."""
    b: dict[str, Any] = {"v": 1, "role": "acqp", "party": "acqp-1", "acqp": "acqp-1", "mpp": "mpp-1",
                         "requestId": rid, "model": "m1", "width": int(words.shape[0]), "ts": nodes.now, "payer": ""}
    shares = _seal_words(split_words(words, "semi2k"), nodes.privacy, nodes.entries, "risk", _bundle_context(b), None)
    b["shares"] = {n: envelope_digest(e) for n, e in sorted(shares.items())}
    return {"bundle": _sign(nodes.acqp, "bundle", b), "shares": shares}


def test_an_acqp_cannot_cancel_a_payers_velocity_sums(nodes: Nodes) -> None:
    nodes.publish(np.zeros(4), -5.0, d_mpp=2)  # p about 0.007: only the rules decide
    nodes.rules(RULES)  # big-day: review at sum_24h >= 500000
    nodes.start()
    cheat = encode_fixed(np.zeros(2), FRAC)
    cheat = np.concatenate([cheat, np.array([(1 << 64) - 10**8], dtype=np.uint64)])  # -1,000,000 USD
    first = nodes.request("c1", np.zeros(2), np.zeros(2), 1)
    first = {"mpp": first["mpp"], "acqp": _acqp_bundle_with_words(nodes, "c1", cheat)}
    with pytest.raises(NodeError) as e:  # the nodes check the amount word in MPC: refused, not counted
        _score(nodes.leader, first)
    assert e.value.code == "RISK_AMOUNT_INVALID"
    big = _score(nodes.leader, nodes.request("c2", np.zeros(2), np.zeros(2), 600_000))
    assert big["decision"] == "review", "the payer's day sum was cancelled by a negative amount"


# ---------------------------------------------------------------- one node: the leader's batch header
def test_a_follower_refuses_a_malformed_batch_header_by_name(nodes: Nodes) -> None:
    nodes.publish(np.ones(4), 0.0, d_mpp=2)
    nodes.rules(RULES)
    req = nodes.request("h", np.zeros(2), np.zeros(2), 1)
    follower = nodes.svc["b"]
    ok = {"batch": "rb_" + "0" * 32, "items": [req], "rules": {}, "models": {}}
    bad: list[Any] = [b"\xff not json", [1, 2], {**ok, "items": [req] * 10_000},  # more than batch_max
                      {**ok, "items": []}, {**ok, "rules": []}, {**ok, "batch": 7}]
    for head in bad:
        with pytest.raises(WireFormatError):
            _follow(follower, head)


@pytest.mark.parametrize("item", [{"mpp": {"bundle": [1]}, "acqp": {}}, {"mpp": {"bundle": "x"}, "acqp": {}},
                                  {"mpp": [], "acqp": []}, 7])
def test_a_malformed_item_does_not_end_a_followers_loop(nodes: Nodes, item: Any) -> None:
    """An item whose bundle is not an object raised AttributeError at the follower, which
    its scoring loop does not catch: one header ended the node's scoring for good."""
    follower = nodes.svc["b"]
    with pytest.raises(WireFormatError):
        _follow(follower, {"batch": "rb_" + "1" * 32, "items": [item], "rules": {}, "models": {}})


def test_a_follower_refuses_a_batch_id_it_has_seen_or_cannot_store(nodes: Nodes) -> None:
    """The leader names the batch: an id already in the risk ledger would replay the
    entry without a new one (Ledger.position takes it as recorded) and then fail the
    statements' primary key after the reveal; one longer than the column is refused too."""
    nodes.publish(np.ones(4), 0.0, d_mpp=2)
    nodes.rules(RULES)
    nodes.start()
    done = _score(nodes.leader, nodes.request("s", np.zeros(2), np.zeros(2), 1))
    nodes.stop()
    req = nodes.request("s2", np.zeros(2), np.zeros(2), 1)
    for batch in (done["batch"], "rb_" + "f" * 300, "../x"):
        with pytest.raises(WireFormatError, match="batch"):
            _follow(nodes.svc["b"], {"batch": batch, "items": [req], "rules": {}, "models": {}})


def test_the_dealer_refuses_a_model_shape_no_model_can_have(nodes: Nodes) -> None:
    """The dealer holds no model and takes its shape from the leader's header: a huge
    ``d`` made it draw (n, d) correlated randomness, memory it does not have."""
    dealer = nodes.svc["d"]
    for meta in ({"mpp": "mpp-1", "acqp": "acqp-1", "frac": 20, "d_mpp": 10**9, "d_acqp": 1},
                 {"mpp": "mpp-1", "acqp": "acqp-1", "frac": 900, "d_mpp": 2, "d_acqp": 2},
                 {"mpp": "mpp-1", "acqp": "acqp-1", "frac": 20, "d_mpp": -1, "d_acqp": 2}):
        with pytest.raises(WireFormatError, match="shape"):
            dealer._model_in({"models": {"m1": meta}}, "m1")
    ok = dealer._model_in({"models": {"m1": {"mpp": "mpp-1", "acqp": "acqp-1", "frac": 20, "d_mpp": 2,
                                             "d_acqp": 2}}}, "m1")
    assert (ok.d_mpp, ok.d_acqp, ok.words) == (2, 2, None)


# ---------------------------------------------------------------- the gateway relays
def test_the_gateway_cannot_move_or_replay_an_acqp_bundle(nodes: Nodes) -> None:
    """With only what it relays (the ACQP's bundles of two payments): another payment's
    bundle with this payment's MPP bundle, the bundle re-labelled, and a bundle replayed
    after the nodes' skew are refused by name; a re-send of a scored one gets the stored
    decision only, with the payment's own MPP bundle."""
    nodes.publish(np.ones(4), 0.0, d_mpp=2)
    nodes.rules(RULES)
    nodes.start()
    one, two = (nodes.request(r, np.zeros(2), np.zeros(2), 1) for r in ("g1", "g2"))
    codes = []
    for req in ({"mpp": one["mpp"], "acqp": two["acqp"]},
                {"mpp": one["mpp"], "acqp": {**two["acqp"], "bundle": {**two["acqp"]["bundle"], "requestId": "g1"}}},
                {"mpp": one["mpp"], "acqp": {"bundle": one["acqp"]["bundle"], "shares": two["acqp"]["shares"]}}):
        with pytest.raises(NodeError) as e:
            _score(nodes.leader, req)
        codes.append(e.value.code)
    assert codes[:2] == ["RISK_BUNDLE_INVALID", "INVALID_SIGNATURE"]
    assert codes[2] in ("RISK_SHARE_INVALID", "RISK_REFUSED_BY_PEER")
    first = _score(nodes.leader, one)
    nodes.now += 301_000  # past the nodes' 300 s skew
    late = nodes.request("g3", np.zeros(2), np.zeros(2), 1, ts=nodes.now - 301_000)
    with pytest.raises(NodeError) as e:
        _score(nodes.leader, late)
    assert e.value.code == "RISK_STALE"
    assert _score(nodes.leader, one)["batch"] == first["batch"]


# ---------------------------------------------------------------- fixed point
def _tie_bound(x: np.ndarray, w: np.ndarray, frac: int) -> float:
    """docs/risk.md's bound on how far the MPC logit may lie from the real-valued one."""
    return float((np.abs(x).sum() + np.abs(w).sum() + 4) * 2.0 ** -(frac + 1))


def test_the_tie_bound_covers_large_features() -> None:
    """(d + 2) * 2^-frac holds only for |x|, |w| <= 1: a feature of 1000 times a weight
    rounded by half a unit moves z by about 500 units. A payment 2.3e-4 from the review
    logit, 60 times the old bound, is decided on the other side; the bound in the
    documentation now grows with |x| and |w| and covers it."""
    w = np.array([(1049 + 0.49) / 2**FRAC, 0.0])
    x = np.array([[1000.0, 0.0]])
    b = -1.0
    z_real = float(x[0] @ w + b)
    z_fixed = float(x[0] @ (np.rint(w * 2**FRAC) / 2**FRAC) + b)
    t = (z_real + z_fixed) / 2
    rs = parse_rules({**RULES, "review": _sigmoid(t), "rules": []})
    got = _program_case(SEMI, x, w, b, np.ones((1, 2), dtype=np.int64), np.zeros((1, 2), dtype=np.int64), [rs])
    assert rs.decide(_sigmoid(z_real), (1, 1), (0, 0)) == "review"
    assert DECISIONS[int(got[SEMI.nodes[0]][0][0])] == "approve"
    assert abs(z_real - t) > 50 * (x.shape[1] + 2) * 2.0**-FRAC
    assert abs(z_real - t) < _tie_bound(x[0], w, FRAC)


@pytest.mark.parametrize("seed", range(4))
def test_scoring_is_the_real_valued_decision_outside_the_tie_bound(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, d = 32, 6
    x = rng.normal(size=(n, d)) * rng.choice([1.0, 100.0], size=(n, d))
    w = rng.normal(size=d) * 0.01
    b = float(rng.normal())
    live = parse_rules({**RULES, "rules": []})
    got = _program_case(SEMI, x, w, b, np.ones((n, 2), dtype=np.int64), np.zeros((n, 2), dtype=np.int64), [live])
    logits = [math.log(t / (1 - t)) for t in (live.review, live.decline)]
    for i in range(n):
        z = float(x[i] @ w + b)
        if min(abs(z - t) for t in logits) < _tie_bound(x[i], w, FRAC):
            continue
        assert DECISIONS[int(got[SEMI.nodes[0]][0][i])] == live.decide(_sigmoid(z), (1, 1), (0, 0))


def test_risk_tokens_do_not_link_to_customer_tokens(nodes: Nodes) -> None:
    """A node with the gateway's view: the risk token it sees and the customerToken the
    gateway sees are two HMAC labels, equal for no customer."""
    from veilpay.sdk.keys import customer_token

    for user in ("alice", "bob"):
        assert risk_token(nodes.mpp, user) != customer_token(nodes.mpp, user)


def test_withholding_the_acqps_bundle_does_not_turn_a_decline_into_a_payment(tmp_path: Path) -> None:
    from gateway_net import run

    net = risk_net(tmp_path, [3.0, 0.0, 2.0, -4.0], {**RULES, "rules": []}, 5000.0)

    async def go() -> None:
        c = net.client()
        await net.wallet("mallory", 10**9)
        await net.admin("mpp-1", "POST", "/admin/risk-profiles", {"userId": "mallory", "features": {"v1": 2.0}})
        out = await c.pay("pay-stripped", {"currency": "JPY", "value": "5000"}, await net.code("mallory"),
                          {"orderId": "pay-stripped"})  # the bundle the gateway dropped: z = 6 + 2 a1 - 4
        assert out.code == "RISK_REJECT", out.risk_result  # on_missing_features: decline by default
        assert out.risk_result["reason"] == "RISK_NO_FEATURES"

    try:
        run(go())
    finally:
        net.close()
