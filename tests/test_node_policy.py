"""The privacy nodes' disclosure policy, attacked by the operator with only what it has:
the gateway's own keys, database and software (so it can relay any feed it likes,
ask for any job, re-run jobs, pick metadata, and seal to the nodes' public keys),
but no partner's signing key and no node's secrets. Each attack of the privacy-node
issue is a test here: settle-twice differencing, the single-refund day, a payment
moved to a chosen day, the forged-refund oracle, re-opened final states, analytics
differencing; and the ledger: a tampered entry, a forked head, a node that skips an
entry. docs/nodes.md's trust table cites these tests."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from gateway_net import Net, run
from sqlalchemy import delete, select, update

from veilpay.errors import LedgerError, NodeError
from veilpay.node.store import items, ledger
from veilpay.sdk import seal_fields, wirejson
from veilpay.sdk.ledger import compare_records, entry_hash, signed_message, verify_records
from veilpay.sdk.settlement import summaries
from veilpay.sdk.shares import envelope_digest, sign_bundle, split_value

ORDER = {"orderId": "A-1", "goods": "matcha"}
# The attacks settle and release "today": on a clock pinned to midday, never across midnight.
pytestmark = pytest.mark.usefixtures("utc_midday")


def _today() -> str:
    """Today by the clock the gateway and the nodes read (pinned to midday by the
    ``utc_midday`` fixture, so that a test does not straddle midnight)."""
    return time.strftime("%Y-%m-%d", time.gmtime(time.time()))


async def _pay(net: Net, c: Any, req: str, value: int) -> Any:
    return await c.pay(req, {"currency": "JPY", "value": str(value)}, await net.code("u1"), ORDER)


def _inject(net: Net, per_node: dict[str, dict[str, Any]]) -> None:
    """The operator writes feed rows of its choosing, as its own relay would."""
    link = net.gateway.state.nodes
    with net.gateway.state.engine.begin() as conn:
        link.enqueue(conn, per_node)


def _node(net: Net, n: str) -> Any:
    return net.node_apps[n].state.service


def _refused(net: Net, n: str, code: str) -> float:
    return _node(net, n).metrics.refusal_count(code)


def _rows(net: Net, n: str) -> list[Any]:
    with _node(net, n).engine.connect() as conn:
        return list(conn.execute(select(items.c.id, items.c.kind, items.c.status, items.c.period_ms)).all())


def _gateway_view(net: Net) -> bytes:
    """Every byte the operator holds: its database, its settlement files."""
    out = b"".join(p.read_bytes() for p in (net.tmp / "gw").glob("gateway.db*"))
    return out + b"".join(p.read_bytes() for p in (net.tmp / "settlement").rglob("*") if p.is_file())


def _stop_after_reveal(net: Net, n: str, kind: str) -> None:
    """Node ``n`` runs its next ``kind`` job up to the reveal, then stops before storing
    the release (a crash); it runs normally after that."""
    from veilpay.errors import PeerDisconnected

    jobs = _node(net, n).jobs
    real = getattr(jobs, "_job_" + kind)

    def run_then_stop(*a: Any) -> Any:
        real(*a)
        delattr(jobs, "_job_" + kind)
        raise PeerDisconnected(n, "stopped before storing its release")
    setattr(jobs, "_job_" + kind, run_then_stop)


def test_settle_twice_reveals_nothing_new(tmp_path: Path) -> None:
    """Differencing: settle, let a payment happen, settle again. The operator never
    gets a total, and the second answer is the first, byte for byte; the late payment
    is settled in the next period, to its partners only."""
    net = Net(tmp_path, privacy="semi2k")

    async def go() -> None:
        c = net.client()
        await net.wallet("u1", 10**9)
        assert (await _pay(net, c, "a", 4_321_987)).code == "SUCCESS"
        net.close_today()
        link = net.gateway.state.nodes
        first = await link.job("settle", {"period": _today()})
        assert (await _pay(net, c, "b", 1_234_567)).code == "SUCCESS"  # signed today: today's period, now closed
        second = await link.job("settle", {"period": _today()})
        assert second["stored"] and second["result"] == first["result"] and second["outputs"] == first["outputs"]
        assert [g["count"] for g in second["result"]["groups"]] == [1]
        assert not any(k.endswith("Total") or k == "total" for g in second["result"]["groups"] for k in g)
        # the payment is not lost: the next period's settlement takes it as a late item, owed to its partners
        net.node_offset_ms += 86_400_000
        nxt = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86_400))
        done = await net.operator("/admin/v1/settle", {"settlementDate": nxt})
        assert done["status"] == "DONE" and [g["count"] for g in done["groups"]] == [1]
        (s,) = (await c.settlement_summary(nxt)).body["summaries"]
        assert s["paymentTotal"]["value"] == "1234567"
        for v in (4_321_987, 1_234_567, 5_556_554):  # seven digits: no chance match with times or base64
            assert str(v).encode() not in _gateway_view(net)
        await c.aclose()

    run(go())


def test_a_single_refund_day_reveals_nothing_to_the_operator(tmp_path: Path) -> None:
    """Groups of one: a period whose only refund is one refund. The operator learns
    its count (it routed it), the ACQP and MPP its amount; nothing else has it."""
    net = Net(tmp_path, privacy="semi2k")

    async def go() -> None:
        c = net.client()
        await net.wallet("u1", 10**9)
        assert (await _pay(net, c, "p", 9_876_543)).code == "SUCCESS"
        assert (await c.refund("r", {"currency": "JPY", "value": "3721919"}, payment_request_id="p")).code == "SUCCESS"
        net.close_today()
        done = await net.operator("/admin/v1/settle", {"settlementDate": _today()})
        assert {g["kind"]: g["count"] for g in done["groups"]} == {"pay": 1, "refund": 1}
        blob = json.dumps(done).encode() + _gateway_view(net)
        assert b"3721919" not in blob and (3721919).to_bytes(8, "little") not in blob
        assert b"6154624" not in blob  # nor the net
        for n in ("node-a", "node-b", "node-c"):  # nor any node: each holds share words only
            nb = b"".join(p.read_bytes() for p in (tmp_path / n).glob("node.db*"))
            assert b"3721919" not in nb and b"6154624" not in nb and (3721919).to_bytes(8, "little") not in nb
        (s,) = (await c.settlement_summary(_today())).body["summaries"]
        assert s["refundTotal"]["value"] == "3721919"  # owed to the ACQP: it opens it
        await c.aclose()

    run(go())


def test_the_operator_cannot_move_a_payment_to_a_day_of_its_choosing(tmp_path: Path) -> None:
    """Metadata: the operator relays a status with a day of its choosing, and asks for
    that day. The nodes place the payment by the time its ACQP signed; the chosen day
    holds nothing, and its analytics reveal nothing."""
    net = Net(tmp_path, privacy="semi2k")

    async def go() -> None:
        c = net.client()
        await net.wallet("u1", 10**9)
        r = await _pay(net, c, "victim", 77_777)
        assert r.code == "SUCCESS"
        _inject(net, {n: {"op": "status", "id": r.body["paymentId"], "status": "SUCCESS", "day": "2001-02-03"}
                      for n in ("node-a", "node-b")})
        await net.relay()
        link = net.gateway.state.nodes
        moved = await link.job("settle", {"period": "2001-02-03"})
        assert moved["result"]["groups"] == []
        an = await link.job("analytics", {"period": "2001-02-03"})
        assert an["result"]["corridors"] == []
        with pytest.raises(NodeError) as chosen:  # a cell of its choosing: the job takes no regions or thresholds
            await net.gateway.state.nodes.job("analytics", {"period": _today(), "minCount": 1})
        assert chosen.value.code == "PERIOD_OPEN"  # today is still open; and minCount is not the job's to set
        assert set(await net.operator("/admin/v1/analytics", {"period": _today(), "minCount": 1})) == {"result"}
        await c.aclose()

    run(go())


def test_forged_refund_shares_are_no_oracle(tmp_path: Path) -> None:
    """The forged-refund oracle: the operator seals refund shares of values it knows to
    the nodes' public keys (HPKE base mode lets anyone), attaches them to the victim's
    payment and asks the refund check, bisecting on the answer. The nodes refuse the
    unsigned and the operator-signed bundles and store nothing, and they refuse to
    check a refund they do not hold before any computation: no bit, no ledger entry."""
    net = Net(tmp_path, privacy="semi2k")
    for n in net.node_ids:  # the dealer waits for a mesh the holders never open: keep that short
        net.add_node(n, connect_timeout_s=1)

    async def go() -> None:
        c = net.client()
        await net.wallet("u1", 10**9)
        victim = await _pay(net, c, "victim", 61_803)
        d = await c.directory()
        gw_keys = net.keys("gateway")
        await net.relay()
        before = {n: len(_rows(net, n)) for n in ("node-a", "node-b")}
        assert before == {"node-a": 1, "node-b": 1}
        answers = []
        for i, guess in enumerate((50_000, 70_000, 60_000, 62_000, 61_000)):
            req = f"forged-{i}"
            ctx = f"acqp-1/refund/{req}/JPY"
            shares = {n: seal_fields({"s": [str(w) for w in ws]}, d.get(n), "share", ctx)
                      for n, ws in split_value(guess, d.privacy).items()}
            bundle = {"v": 1, "acqp": "acqp-1", "mpp": "mpp-1", "kind": "refund", "requestId": req, "currency": "JPY",
                      "payment": "victim", "ts": int(time.time() * 1000),
                      "shares": {n: envelope_digest(e) for n, e in shares.items()}, "kv": 1, "sig": "A" * 86}
            if i % 2:  # or signed with the gateway's own key, posing as the ACQP
                gw_keys.public.id, gw_keys.public.role = "acqp-1", "acqp"
                bundle = sign_bundle(gw_keys, "mpp-1", "refund", req, "JPY", shares, payment="victim")
            rid = f"rfd_{i:032x}"
            _inject(net, {n: {"op": "share", "id": rid, "bundle": bundle, "envelope": e} for n, e in shares.items()})
            await net.relay()
            with pytest.raises(NodeError) as no:
                await net.gateway.state.nodes.job("refund_check", {"refundId": rid})
            answers.append(no.value.code)
        assert answers == ["REFUND_NOT_PENDING"] * 5  # no dependence on the guess: no oracle
        assert _node(net, "node-a").ledger.export() == []  # and nothing was computed or revealed
        assert {n: len(_rows(net, n)) for n in ("node-a", "node-b")} == before  # nothing stored
        assert _refused(net, "node-a", "BUNDLE_SIGNATURE_INVALID") >= 3
        assert _refused(net, "node-a", "UNKNOWN_KEY") + _refused(net, "node-a", "BUNDLE_SIGNATURE_INVALID") == 5
        # a genuine refund's bundle replayed under another id is refused too
        ok = await c.refund("real", {"currency": "JPY", "value": "100"}, payment_request_id="victim")
        assert ok.code == "SUCCESS"
        with net.gateway.state.engine.connect() as conn:
            from veilpay.gateway.store import node_feed
            row = conn.execute(select(node_feed.c.item).where(node_feed.c.node == "node-a",
                                                              node_feed.c.item.like(f'%{ok.body["refundId"]}%'))
                               .order_by(node_feed.c.seq)).first()  # its share, queued before its status
        replay = {**json.loads(row.item), "id": "rfd_" + "f" * 32}
        _inject(net, {"node-a": replay})
        await net.relay()
        assert _refused(net, "node-a", "REPLAYED_SHARE") == 1
        # and a genuine refund is checked once: asking again returns the stored bit without a computation
        again = await net.gateway.state.nodes.job("refund_check", {"refundId": ok.body["refundId"]})
        assert again["stored"] and again["result"] == {"ok": True} and again["rounds"] == 0
        assert victim.code == "SUCCESS"
        await c.aclose()

    run(go())


def test_final_states_stay_final(tmp_path: Path) -> None:
    """The operator replays SUCCESS after a cancel, and completes a refund the nodes
    never checked: both refused by name, counted, and nothing changes."""
    net = Net(tmp_path, privacy="semi2k")

    async def go() -> None:
        c = net.client()
        await net.wallet("u1", 10**9)
        r = await _pay(net, c, "x", 5_000)
        assert (await c.cancel_payment(payment_request_id="x")).code == "SUCCESS"
        await net.relay()
        pid = r.body["paymentId"]
        _inject(net, {n: {"op": "status", "id": pid, "status": "SUCCESS"} for n in ("node-a", "node-b")})
        await net.relay()
        assert _refused(net, "node-a", "FINAL_STATE") == 1 and _refused(net, "node-b", "FINAL_STATE") == 1
        assert {row.status for row in _rows(net, "node-a") if row.id == pid} == {"CANCELLED"}
        # a refund whose check the nodes never ran cannot be completed
        y = await _pay(net, c, "y", 9_000)
        me = net.keys("acqp-1")
        amt = c._refund_body(await c.directory(), "unchecked", {"currency": "JPY", "value": "10"}, None, "y", None,
                             "mpp-1")["refundAmount"]
        rid = "rfd_" + "a" * 32
        _inject(net, {n: {"op": "share", "id": rid, "bundle": amt["bundle"], "envelope": amt["shares"][n]}
                      for n in ("node-a", "node-b")})
        _inject(net, {n: {"op": "status", "id": rid, "status": "SUCCESS"} for n in ("node-a", "node-b")})
        await net.relay()
        assert _refused(net, "node-a", "REFUND_NOT_CHECKED") == 1
        assert {row.status for row in _rows(net, "node-a") if row.id == rid} == {"NEW"}
        assert y.code == "SUCCESS" and me.id == "acqp-1"
        await c.aclose()

    run(go())


def test_bad_feed_input_is_refused_by_name_and_not_stored(tmp_path: Path) -> None:
    """An unsigned bundle, a bundle for other nodes (the envelope swapped), a bundle
    signed with a time ahead of the node's clock, an unknown signer: each a named
    refusal at the node, counted in its metrics, and no item stored."""
    net = Net(tmp_path, privacy="semi2k")

    async def go() -> None:
        c = net.client()
        await net.wallet("u1", 10**9)
        d = await c.directory()
        me = net.keys("acqp-1")
        body = c._pay_body(d, "q1", {"currency": "JPY", "value": "100"}, await net.code("u1"), ORDER, None)
        amt = body["paymentAmount"]
        cases = {
            "BUNDLE_SIGNATURE_INVALID": ({**amt["bundle"], "sig": amt["bundle"]["sig"][::-1]}, "node-a"),
            "WRONG_NODE": (amt["bundle"], "node-b"),  # node-a's envelope to node-b
            "TIME_OUT_OF_RANGE": (sign_bundle(me, "mpp-1", "pay", "q1", "JPY", amt["shares"],
                                              ts_ms=int(time.time() * 1000) + 3_600_000), "node-a"),
            "UNKNOWN_KEY": ({**amt["bundle"], "kv": 9}, "node-a"),
        }
        for i, (bundle, node) in enumerate(cases.values()):
            _inject(net, {node: {"op": "share", "id": f"pay_{i:032x}", "bundle": bundle,
                                 "envelope": amt["shares"]["node-a"]}})
        await net.relay()
        for code, (_, node) in cases.items():
            assert _refused(net, node, code) == 1, code
        assert _rows(net, "node-a") == [] and _rows(net, "node-b") == []
        metrics = (await _get(net, "node-a", "/metrics")).decode()
        assert 'veilpay_node_refusals_total{code="TIME_OUT_OF_RANGE"} 1.0' in metrics
        await c.aclose()

    run(go())


async def _get(net: Net, node: str, path: str) -> bytes:
    import httpx

    async with httpx.AsyncClient(transport=net.router) as h:
        return (await h.get(f"http://{node}.test{path}")).content


def test_analytics_once_per_period_under_a_budget(tmp_path: Path) -> None:
    """Analytics differencing: the release of a closed day, a payment, the release
    again: the same release, no new noise draw, no new epsilon spent. A month's
    budget caps the releases: the next day's release that would exceed it is refused."""
    net = Net(tmp_path, privacy="aby3", node_policy={"epsilon": "0.6", "monthly_budget": "1"})

    async def go() -> None:
        c = net.client()
        await net.wallet("u1", 10**9)
        for i in range(3):
            assert (await _pay(net, c, f"a{i}", 1_000 + i)).code == "SUCCESS"
        net.close_today()
        first = await net.operator("/admin/v1/analytics", {"period": _today()})
        (cell,) = first["corridors"]
        assert cell["count"] == 3 and first["epsilon"] == "0.6"
        assert (await _pay(net, c, "late", 50_000)).code == "SUCCESS"
        second = await net.operator("/admin/v1/analytics", {"period": _today()})
        assert second == first  # one release per period: nothing to difference
        assert _node(net, "node-a").ledger.spent(time.strftime("%Y-%m", time.gmtime())) == pytest.approx(0.6)
        # another closed day of the same month: the budget has no room for a second 0.6
        other = _today()[:8] + ("01" if _today()[8:] != "01" else "02")
        net.node_offset_ms += 2 * 86_400_000
        over = await net.operator("/admin/v1/analytics", {"period": other})
        assert over["result"]["resultCode"] == "BUDGET_EXHAUSTED"
        assert _node(net, "node-a").ledger.spent(other[:7]) == pytest.approx(0.6)
        await c.aclose()

    run(go())


# ---------------------------------------------------------------- the disclosure ledger
def _settled_net(tmp_path: Path) -> Net:
    net = Net(tmp_path, privacy="semi2k")

    async def go() -> None:
        c = net.client()
        await net.wallet("u1", 10**9)
        assert (await _pay(net, c, "a", 700)).code == "SUCCESS"
        assert (await c.refund("r", {"currency": "JPY", "value": "70"}, payment_request_id="a")).code == "SUCCESS"
        net.close_today()
        assert (await net.operator("/admin/v1/settle", {"settlementDate": _today()}))["status"] == "DONE"
        await c.aclose()

    run(go())
    return net


def test_ledger_copies_verify_and_a_tampered_entry_does_not(tmp_path: Path) -> None:
    net = _settled_net(tmp_path)
    copies = {n: _node(net, n).ledger.export() for n in ("node-a", "node-b", "node-c")}
    keys = {n: net.keys(n).public for n in copies}
    for n, recs in copies.items():
        assert [r["body"]["function"] for r in recs] == ["refund_check", "settle"]
        assert verify_records(recs, keys[n])[0] == 2
    assert compare_records(copies["node-a"], copies["node-c"]) == 2
    settle = copies["node-a"][1]["body"]
    assert settle["recipients"] == ["acqp-1", "mpp-1"] and settle["cells"] == [1, 1] and settle["subject"] == _today()
    tampered = [dict(r) for r in copies["node-a"]]
    tampered[0] = {**tampered[0], "body": {**tampered[0]["body"], "recipients": ["nobody"]}}
    with pytest.raises(LedgerError) as bad:
        verify_records(tampered, keys["node-a"])
    assert bad.value.seq == 1
    with pytest.raises(LedgerError):  # another node's signature does not pass for node-a's
        verify_records(copies["node-b"], keys["node-a"])
    with pytest.raises(LedgerError) as gap:  # a copy with an entry left out
        verify_records(copies["node-a"][1:], keys["node-a"])
    assert gap.value.seq == 1


def _rewrite_last(net: Net, n: str, **content: Any) -> None:
    """Node ``n`` rewrites its own last entry (a fork), re-hashed and re-signed."""
    svc = _node(net, n)
    with svc.engine.begin() as conn:
        row = conn.execute(select(ledger).order_by(ledger.c.seq.desc())).first()
        body = {**wirejson.loads(row.body), **content}
        h = entry_hash(body)
        kv, key = svc.keys.signer()
        from veilpay.crypto.signing import b64e

        conn.execute(update(ledger).where(ledger.c.seq == row.seq).values(
            body=wirejson.dumps_sorted(body).decode(), hash=h,
            sig=f"{kv}:{b64e(key.sign(signed_message(svc.keys.id, h, row.at_ms)))}"))


def test_a_forked_ledger_stops_every_reveal(tmp_path: Path) -> None:
    """Node-b rewrote an entry of its history: its copy verifies on its own, but it
    forks from node-a's, and the nodes refuse the next job before revealing anything."""
    net = _settled_net(tmp_path)
    _rewrite_last(net, "node-b", cells=[99, 99])
    a, b = _node(net, "node-a").ledger.export(), _node(net, "node-b").ledger.export()
    verify_records(b, net.keys("node-b").public)
    with pytest.raises(LedgerError) as fork:
        compare_records(a, b)
    assert fork.value.seq == 2

    async def go() -> None:
        c = net.client()
        r = await _pay(net, c, "after", 300)
        ref = await c.refund("r2", {"currency": "JPY", "value": "3"}, payment_request_id="after")
        assert ref.code == "REFUND_IN_PROCESS"  # the check waits: no node revealed the bit
        with pytest.raises(NodeError) as refused:
            await net.gateway.state.nodes.job("refund_check", {"refundId": ref.body["refundId"]})
        assert refused.value.code == "LEDGER_MISMATCH" and r.code == "SUCCESS"
        await c.aclose()

    run(go())
    assert len(_node(net, "node-a").ledger.export()) == 2  # nothing appended, nothing revealed


def test_a_node_that_skips_an_entry_stops_every_reveal(tmp_path: Path) -> None:
    net = _settled_net(tmp_path)
    svc = _node(net, "node-c")
    with svc.engine.begin() as conn:  # the dealer "forgets" the settlement's entry
        conn.execute(delete(ledger).where(ledger.c.seq == 2))

    async def go() -> None:
        c = net.client()
        await _pay(net, c, "after", 300)
        ref = await c.refund("r2", {"currency": "JPY", "value": "3"}, payment_request_id="after")
        assert ref.code == "REFUND_IN_PROCESS"
        with pytest.raises(NodeError) as refused:
            await net.gateway.state.nodes.job("refund_check", {"refundId": ref.body["refundId"]})
        assert refused.value.code == "LEDGER_MISMATCH"
        await c.aclose()

    run(go())


def test_sealed_totals_name_their_recipient_and_node(tmp_path: Path) -> None:
    """The settlement outputs the gateway routes: the ACQP's open; the MPP's do not
    open for the ACQP; an output the gateway swaps between groups or alters does not
    verify."""
    net = _settled_net(tmp_path)
    with net.gateway.state.engine.connect() as conn:
        from veilpay.gateway.store import settlements
        rows = conn.execute(select(settlements)).all()
    me, nodes = net.keys("acqp-1"), {n: net.keys(n).public for n in net.node_ids}
    from veilpay.sdk.shares import Privacy

    privacy = Privacy("semi2k", ("node-a", "node-b"), "node-c")
    groups = [{"outputs": {n: o["acqp-1"] for n, o in json.loads(r.outputs).items()}} for r in rows]
    assert {s["paymentTotal"]["value"] for s in summaries(groups, me, nodes, privacy)} == {"700"}
    from veilpay.errors import DecryptionError, SignatureError

    mpp_side = [{"outputs": {n: o["mpp-1"] for n, o in json.loads(r.outputs).items()}} for r in rows]
    with pytest.raises(DecryptionError):
        summaries(mpp_side, me, nodes, privacy)
    swapped = [{"outputs": {"node-a": groups[0]["outputs"]["node-a"], "node-b": groups[1]["outputs"]["node-b"]}}]
    with pytest.raises(DecryptionError):
        summaries(swapped, me, nodes, privacy)
    altered = json.loads(json.dumps(groups[:1]))
    altered[0]["outputs"]["node-a"]["stmt"]["count"] = 5
    with pytest.raises(SignatureError):
        summaries(altered, me, nodes, privacy)


def test_a_node_that_stopped_between_reveal_and_store_rejoins(tmp_path: Path) -> None:
    """A node appended the ledger entry and took part in the reveal, then stopped
    before storing its release; the others stored theirs. Asked again, the nodes that
    stored it answer from storage, the gateway sees a mixed answer and asks them to
    rejoin: they recompute over the inputs they recorded (the same ledger entry, so
    nothing new is revealed) and the lagging node stores the release."""

    net = Net(tmp_path, privacy="semi2k")
    for n in net.node_ids:
        net.add_node(n, connect_timeout_s=2)

    def rejoined(n: str, kind: str) -> float:  # noqa: E306
        return float(_node(net, n).metrics.jobs.labels(kind=kind, outcome="rejoined")._value.get())

    async def go() -> None:
        c = net.client()
        await net.wallet("u1", 10**9)
        assert (await _pay(net, c, "a", 800)).code == "SUCCESS"
        _stop_after_reveal(net, "node-b", "refund_check")
        ref = await c.refund("r", {"currency": "JPY", "value": "80"}, payment_request_id="a")
        # the first check failed at node-b, so the gateway answered U; the SDK's retry
        # found node-a and node-c with the release stored and node-b without: a rejoin
        assert ref.code == "SUCCESS" and ref.attempts == 2
        assert rejoined("node-a", "refund_check") == 1 and rejoined("node-b", "refund_check") == 0
        net.close_today()
        _stop_after_reveal(net, "node-a", "settle")
        first = await net.operator("/admin/v1/settle", {"settlementDate": _today()})
        assert first["status"] == "WAITING"
        done = await net.operator("/admin/v1/settle", {"settlementDate": _today()})
        assert done["status"] == "DONE" and rejoined("node-b", "settle") == 1
        (s,) = (await c.settlement_summary(_today())).body["summaries"]
        assert (s["paymentTotal"]["value"], s["refundTotal"]["value"]) == ("800", "80")
        await c.aclose()

    run(go())
    heads = {n: _node(net, n).ledger.head() for n in net.node_ids}
    assert len(set(heads.values())) == 1 and heads["node-a"][0] == 2  # one entry each for the check and the settlement


@pytest.mark.parametrize("stopped", [("node-b",), ("node-a", "node-b")])
def test_a_rejoin_never_computes_over_changed_inputs(tmp_path: Path, stopped: tuple[str, ...]) -> None:
    """The differencing a rejoin could open: holders stop after the day's analytics
    reveal, before storing it (one of them: it rejoins; both: found by the adversary
    review, neither stored it); meanwhile one more payment of that day succeeds. The
    ledger entry commits the period to what it was computed over, so the next attempt
    is refused (RELEASE_CHANGED) instead of drawing the same noise over other items
    (which would reveal the new payment exactly), and nothing more is revealed."""

    net = Net(tmp_path, privacy="semi2k")
    for n in net.node_ids:
        net.add_node(n, connect_timeout_s=2)

    async def go() -> None:
        c = net.client()
        await net.wallet("u1", 10**9)
        for i in range(3):
            assert (await _pay(net, c, f"a{i}", 2_000_000 + i)).code == "SUCCESS"
        net.close_today()
        for n in stopped:
            _stop_after_reveal(net, n, "analytics")
        first = await net.operator("/admin/v1/analytics", {"period": _today()})
        assert first["result"]["resultCode"] == "NODE_UNAVAILABLE"
        assert (await _pay(net, c, "late", 3_133_777)).code == "SUCCESS"  # signed today: the same period
        again = await net.operator("/admin/v1/analytics", {"period": _today()})
        assert again["result"]["resultCode"] == "NODE_UNAVAILABLE"
        assert "RELEASE_CHANGED" in again["result"]["resultMessage"]
        await c.aclose()

    run(go())
    assert [r["body"]["function"] for r in _node(net, "node-a").ledger.export()] == ["analytics"]


# ---------------------------------------------------------------- found by the adversary review
def test_two_analytics_jobs_at_once_cannot_overspend_the_budget(tmp_path: Path) -> None:
    """Two analytics jobs for two closed days of one month, posted to the nodes at once
    with the gateway's key (bypassing the gateway's own job lock): the budget is checked
    under each node's job lock and again in the transaction that appends the entry, so
    at most the budget is spent."""
    import asyncio

    from veilpay.crypto.tokens import random_id

    net = Net(tmp_path, privacy="semi2k", node_policy={"epsilon": "0.6", "monthly_budget": "1"})
    for n in net.node_ids:
        net.add_node(n, connect_timeout_s=2)
    net.node_offset_ms = 40 * 86_400_000  # every day of this month has closed
    month = time.strftime("%Y-%m", time.gmtime())

    async def go() -> None:
        link = net.gateway.state.nodes

        async def post_all(day: str) -> list[Any]:
            body = {"jobId": random_id("job_"), "kind": "analytics", "params": {"period": f"{month}-{day}"}, "through": {}}
            return list(await asyncio.gather(*[link._post(n, "/node/v1/jobs", body, 60) for n in link.privacy.parties],
                                             return_exceptions=True))

        # the nodes take the two in one order (the second is refused) or in two (both fail): never both
        first, second = await asyncio.gather(post_all("03"), post_all("04"))
        releases = [all(isinstance(a, dict) for a in r) for r in (first, second)].count(True)
        assert releases <= 1
        for day in ("05", "06"):  # then one at a time, until the budget says no
            try:
                await link.job("analytics", {"period": f"{month}-{day}"})
                releases += 1
            except NodeError as exc:
                assert exc.code == "BUDGET_EXHAUSTED"
                break
        assert releases == 1

    run(go())
    for n in net.node_ids:
        assert _node(net, n).ledger.spent(month) <= 1


def test_a_poisoned_share_does_not_stall_the_feed(tmp_path: Path) -> None:
    """An acquirer signs a share whose ring element is "²" (str.isdigit() says yes, int()
    says no): the node keeps it marked SHARE_INVALID and the feed goes on. Malformed
    fields the gateway could send (a list as the currency, a huge seq) get named refusals."""
    import veilpay.sdk.shares as shares_mod

    net = Net(tmp_path, privacy="semi2k")

    class Sup(int):
        def __str__(self) -> str:
            return "\u00b2"

    async def go() -> None:
        bad, good = net.client("acqp-1"), net.client("acqp-2")
        await net.wallet("u1", 10**9)
        real = shares_mod.split_value
        shares_mod.split_value = lambda v, p: {p.nodes[0]: [Sup(0)], p.nodes[1]: [v]}
        try:
            assert (await _pay(net, bad, "poison", 100)).code == "SUCCESS"
        finally:
            shares_mod.split_value = real
        ok = await good.pay("honest", {"currency": "JPY", "value": "5000"}, await net.code("u1"), ORDER)
        await net.relay()
        assert _node(net, "node-a").metrics.refusal_count("SHARE_INVALID") == 1
        assert {r.id for r in _rows(net, "node-a")} == {r.id for r in _rows(net, "node-b")}
        ref = await good.refund("honest-r", {"currency": "JPY", "value": "10"}, payment_request_id="honest")
        assert ref.code == "SUCCESS" and ok.code == "SUCCESS"
        d = await bad.directory()
        body = bad._pay_body(d, "q", {"currency": "JPY", "value": "100"}, await net.code("u1"), ORDER, None)
        amt = body["paymentAmount"]
        _inject(net, {"node-a": {"op": "share", "id": "pay_" + "9" * 32, "bundle": {**amt["bundle"], "currency": ["J"]},
                                 "envelope": amt["shares"]["node-a"]}})
        await net.relay()
        assert _refused(net, "node-a", "BUNDLE_INVALID") == 1
        with pytest.raises(NodeError) as huge:
            _node(net, "node-a").ingest([{"seq": 2**63, "op": "status", "id": "x", "status": "SUCCESS"}])
        assert huge.value.code == "FEED_INVALID"
        await bad.aclose()
        await good.aclose()

    run(go())


def test_sealed_amounts_all_have_one_length(tmp_path: Path) -> None:
    """A sealed amount's ciphertext must not tell the relay how many digits it holds."""
    from veilpay.sdk import create_party
    from veilpay.sdk.shares import Privacy, seal_amount

    me, mpp = create_party(tmp_path / "a", "acqp-1", "acqp"), create_party(tmp_path / "m", "mpp-1", "mpp")
    nodes = {n: create_party(tmp_path / n, n, "node").public for n in ("node-a", "node-b")}
    privacy = Privacy("semi2k", ("node-a", "node-b"), "node-c")
    sizes = {len(seal_amount({"currency": "JPY", "value": str(v)}, "pay", me, f"r{v}", mpp.public, nodes,
                             privacy)["sealed"][who]["ct"])
             for v in (7, 50_000, 12_345_678, 10**15) for who in ("mpp-1", "acqp-1")}
    assert len(sizes) == 1


def test_shares_swapped_between_items_stop_the_job(tmp_path: Path) -> None:
    """The relay gives node-b payment Y's share under X's id and X's under Y's: each
    bundle verifies alone, but the nodes agree on every item's signed request, so the
    settlement stops with NODES_DISAGREE instead of dropping both payments."""
    net = Net(tmp_path, privacy="semi2k")

    async def go() -> None:
        from veilpay.gateway.store import node_feed

        c = net.client()
        await net.wallet("u1", 10**9)
        x, y = await _pay(net, c, "X", 1_000), await _pay(net, c, "Y", 2_000)
        ix, iy = x.body["paymentId"], y.body["paymentId"]
        with net.gateway.state.engine.begin() as conn:
            rows = conn.execute(select(node_feed).where(node_feed.c.node == "node-b")).all()
            sh = {json.loads(r.item)["id"]: (r.seq, json.loads(r.item)) for r in rows
                  if json.loads(r.item)["op"] == "share"}
            conn.execute(delete(node_feed).where(node_feed.c.seq.in_([sh[ix][0], sh[iy][0]])))
        _inject(net, {"node-b": {**sh[iy][1], "id": ix}})
        _inject(net, {"node-b": {**sh[ix][1], "id": iy}})
        _inject(net, {"node-b": {"op": "status", "id": ix, "status": "SUCCESS"}})
        _inject(net, {"node-b": {"op": "status", "id": iy, "status": "SUCCESS"}})
        await net.relay()
        net.close_today()
        done = await net.operator("/admin/v1/settle", {"settlementDate": _today()})
        assert done["status"] == "WAITING" and "NODES_DISAGREE" in done["message"]
        await c.aclose()

    run(go())


def test_a_rejoin_of_a_stored_release_appends_nothing(tmp_path: Path) -> None:
    """The operator sends rejoin to every node after the ledger moved on: the nodes
    recompute the same entry, find it recorded, spend no more epsilon and add nothing."""
    import asyncio

    from veilpay.crypto.tokens import random_id

    net = Net(tmp_path, privacy="semi2k", node_policy={"epsilon": "0.5", "monthly_budget": "4"})

    async def go() -> None:
        c = net.client()
        await net.wallet("u1", 10**9)
        for i in range(2):
            assert (await _pay(net, c, f"a{i}", 2_000 + i)).code == "SUCCESS"
        net.close_today()
        first = await net.operator("/admin/v1/analytics", {"period": _today()})
        assert (await net.operator("/admin/v1/settle", {"settlementDate": _today()}))["status"] == "DONE"
        link = net.gateway.state.nodes
        body = {"jobId": random_id("job_"), "kind": "analytics", "params": {"period": _today()}, "rejoin": True}
        answers = await asyncio.gather(*[link._post(n, "/node/v1/jobs", body, 60) for n in link.privacy.parties])
        assert all(a["stored"] for a in answers) and answers[0]["result"] == {k: v for k, v in first.items()
                                                                             if k not in ("result", "ledger")}
        await c.aclose()

    run(go())
    recs = _node(net, "node-a").ledger.export()
    assert [r["body"]["function"] for r in recs].count("analytics") == 1
    assert _node(net, "node-a").ledger.spent(time.strftime("%Y-%m", time.gmtime())) == pytest.approx(0.5)


def test_a_period_that_is_not_the_nodes_cycle_is_param_illegal(tmp_path: Path) -> None:
    """A label of the wrong form for the nodes' cycle never settles: the operator is told
    so (PARAM_ILLEGAL), not asked to wait."""
    net = Net(tmp_path, privacy="semi2k", node_policy={"cycle_s": 10})

    async def go() -> None:
        bad = await net.operator("/admin/v1/settle", {"settlementDate": "2026-12-05"})
        assert bad["result"]["resultCode"] == "PARAM_ILLEGAL" and "cycles of 10 s" in bad["result"]["resultMessage"]
        an = await net.operator("/admin/v1/analytics", {"period": "2026-12-05"})
        assert an["result"]["resultCode"] == "PARAM_ILLEGAL"

    run(go())


def test_operator_cli_without_a_gateway_is_a_clear_error(tmp_path: Path, capsys: Any) -> None:
    from veilpay.cli.localnet import free_port
    from veilpay.cli.main import main
    from veilpay.sdk import create_party

    create_party(tmp_path / "keys" / "gateway", "gateway", "gateway")
    (tmp_path / "gw.toml").write_text(f'[gateway]\nkeys = "keys/gateway"\ndatabase = "sqlite:///gw.db"\n'
                                      f'listen = "127.0.0.1:{free_port()}"\npartners = []\n'
                                      'authority = "authority/authority.json"\nkey_log = "authority/log"\n')
    assert main(["gateway", "settle", "--config", str(tmp_path / "gw.toml"), "--date", "2026-12-05"]) == 3  # unreachable
    err = capsys.readouterr().err
    assert "GatewayUnavailable" in err and "Traceback" not in err
