"""Privacy nodes: amounts sealed to the partners and secret-shared to the nodes, refund
bounds and settlement computed in MPC, the feed that survives a node being down, bad
shares, and the amount canary. The gateway, partners and nodes run in one process
(tests/gateway_net.py); the nodes' MPC mesh is real TCP + mutual TLS on loopback."""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from gateway_net import Net, run
from hypothesis import given, settings
from hypothesis import strategies as st

from veilpay.errors import ConfigError, DecryptionError, NodeError, NodesDisagree, PartyFailed, PeerDisconnected
from veilpay.mpc.runtime import run_local
from veilpay.node.programs import Items, agree_items, noisy_totals, refund_bound, valid_groups
from veilpay.sdk import seal_fields
from veilpay.sdk.settlement import assemble
from veilpay.sdk.shares import Privacy, open_share, seal_amount, sign_bundle, split_value

ORDER = {"orderId": "A-1", "goods": "matcha"}
ORDER_ENV = {"ip": "198.51.100.1", "deviceId": "dev-1"}
SEMI = Privacy("semi2k", ("a", "b"), "d")
ABY = Privacy("aby3", ("a", "b", "c"))


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _today() -> str:
    """Today by the clock the gateway and the nodes read (pinned to midday by the
    ``utc_midday`` fixture, so that a test does not straddle midnight)."""
    return time.strftime("%Y-%m-%d", time.gmtime(time.time()))


def _join(parts: dict[str, list[int]], privacy: Privacy) -> int:
    if privacy.protocol == "semi2k":
        return sum(v[0] for v in parts.values()) % 2**64
    a, b, c = (parts[n] for n in privacy.nodes)
    assert a[1] == b[0] and b[1] == c[0] and c[1] == a[0]  # replicated: neighbours share one component
    return (a[0] + b[0] + c[0]) % 2**64


# ---------------------------------------------------------------- sharing and programs
@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**64 - 1), st.sampled_from([SEMI, ABY]))
def test_split_value_reconstructs(value: int, privacy: Privacy) -> None:
    parts = split_value(value, privacy)
    assert set(parts) == set(privacy.nodes)
    assert _join(parts, privacy) == value


def test_privacy_config_checks_roles() -> None:
    with pytest.raises(ConfigError):
        Privacy("semi2k", ("a", "b"), "")
    with pytest.raises(ConfigError):
        Privacy("aby3", ("a", "b"), "")
    with pytest.raises(ConfigError):
        Privacy("spdz", ("a", "b", "c"))
    assert Privacy.from_json(SEMI.to_json()) == SEMI


def _items(values: list[int], keys: list[str], privacy: Privacy, unopened: dict[str, set[int]] | None = None,
           caps: list[int] | None = None) -> dict[str, dict[str, Any]]:
    shares = [split_value(v % 2**64, privacy) for v in values]
    out = {}
    for n in privacy.nodes:
        w = np.zeros((len(values), 2), dtype=np.uint64)
        for i, s in enumerate(shares):
            w[i, :len(s[n])] = s[n]
        opened = np.ones(len(values), dtype=bool)
        for i in (unopened or {}).get(n, set()):
            opened[i] = False
            w[i] = 0
        out[n] = {"items": Items([f"t{i:03d}" for i in range(len(values))], list(keys), w, opened,
                                 None if caps is None else np.array(caps, dtype=np.int64))}
    return out


def _groups(rt: Any, items: Items | None = None) -> Any:
    n, opened = agree_items(rt, items)
    return valid_groups(rt, items, n, opened)[0]


def _join_words(per_node: dict[str, Any], g: int, privacy: Privacy) -> int:
    """A group's total from the holders' share words of it (what a partner does: each
    holder's first word is its additive part, s_i for semi2k and c_i for aby3)."""
    return int(sum(int(per_node[n].words[g][0]) for n in privacy.nodes) % 2**64)


@pytest.mark.parametrize("privacy", [SEMI, ABY], ids=["semi2k", "aby3"])
def test_valid_groups_against_plaintext(privacy: Privacy) -> None:
    """The range check leaves out exactly the invalid items, and the holders' share
    words of each group's sum add up to the plaintext sum of its valid items (the
    sums stay shared: valid_groups reveals nothing but the per-item range bits)."""
    rng = np.random.default_rng(7)
    values = [int(v) for v in rng.integers(1, 10**9, size=40)]
    values[3] = 0                      # below the range
    values[5] = 10**15 + 1             # above the range
    values[8] = 2**63 + 11             # a "negative" ring value
    values[9] = 10**15                 # the largest valid amount
    keys = [f"g{v % 3}" for v in range(40)]
    kw = _items(values, keys, privacy, {privacy.nodes[1]: {12}})
    res = run_local(_groups, protocol=privacy.protocol, parties=privacy.parties, kwargs=kw)
    first = res[privacy.nodes[0]]
    assert all(res[n].keys == first.keys and res[n].ids == first.ids for n in privacy.nodes)
    for g, key in enumerate(first.keys):
        members = [i for i in range(40) if keys[i] == key]
        bad = {i for i in members if not 1 <= values[i] <= 10**15}
        good = [i for i in members if i not in bad and i != 12]
        assert _join_words(res, g, privacy) == sum(values[i] for i in good)
        assert first.ids[g] == [f"t{i:03d}" for i in good]
        assert first.out_of_range[g] == sorted(f"t{i:03d}" for i in bad)
        assert first.rejected[g] == (["t012"] if 12 in members else [])


@pytest.mark.parametrize("privacy", [SEMI, ABY], ids=["semi2k", "aby3"])
def test_noisy_totals_clip_and_add_every_holders_noise(privacy: Privacy) -> None:
    """Analytics in MPC: each amount capped at its item's cap, the shown groups' sums
    revealed only with every holder's own noise added."""
    values = [5, 70, 300, 40, 1000, 9]
    keys, caps = ["a", "a", "a", "b", "b", "c"], [100, 100, 100, 500, 500, 100]
    kw = _items(values, keys, privacy, caps=caps)
    noise = {n: np.array([3 * (i + 1), -2], dtype=np.int64) for i, n in enumerate(privacy.nodes)}
    for n in privacy.nodes:
        kw[n]["noise"] = noise[n]

    def prog(rt: Any, items: Items | None = None, noise: Any = None) -> Any:
        n, opened = agree_items(rt, items)
        groups, sums = valid_groups(rt, items, n, opened, clip=True)
        shown = np.array([0, 1]) if groups is not None else None  # groups a and b; c is "suppressed"
        return noisy_totals(rt, sums, shown, noise)

    res = run_local(prog, protocol=privacy.protocol, parties=privacy.parties, kwargs=kw)
    extra = sum(noise[n] for n in privacy.nodes)
    want = np.array([5 + 70 + 100, 40 + 500]) + extra
    assert all(np.array_equal(res[n], want) for n in privacy.nodes)


def test_nodes_with_different_items_refuse_to_compute() -> None:
    kw = _items([5, 6], ["k", "k"], SEMI)
    kw["b"]["items"].keys[1] = "other"  # the gateway told node b another group for one item
    with pytest.raises(PartyFailed) as info:
        run_local(_groups, protocol="semi2k", parties=SEMI.parties, kwargs=kw)
    assert isinstance(info.value.__cause__, NodesDisagree | PeerDisconnected)


@pytest.mark.parametrize("privacy", [SEMI, ABY], ids=["semi2k", "aby3"])
@pytest.mark.parametrize(("pay", "others", "refund", "ok"), [
    (100, 30, 70, True), (100, 30, 71, False), (100, 0, 100, True), (100, 0, 0, False),
    (100, 0, 2**63 + 1, False), (10**15 + 1, 0, 5, False), (10**15, 10**15 - 1, 1, True)])
def test_refund_bound(privacy: Privacy, pay: int, others: int, refund: int, ok: bool) -> None:
    def words(v: int) -> dict[str, np.ndarray]:
        s = split_value(v % 2**64, privacy)
        return {n: np.array(s[n] + [0] * (2 - len(s[n])), dtype=np.uint64) for n in privacy.nodes}

    p, o, r = words(pay), words(others), words(refund)
    kw = {n: {"p": p[n], "o": o[n], "r": r[n]} for n in privacy.nodes}
    res = run_local(lambda rt, p=None, o=None, r=None: refund_bound(rt, p, o, r, "tag", True),
                    protocol=privacy.protocol, parties=privacy.parties, kwargs=kw)
    assert all(res[n] is ok for n in privacy.nodes)


# ---------------------------------------------------------------- the network
async def _pay(net: Net, c: Any, req: str, value: int, user: str = "u1", currency: str = "JPY") -> Any:
    code = await net.code(user)
    return await c.pay(req, {"currency": currency, "value": str(value)}, code, ORDER, ORDER_ENV)


def _gateway_bytes(net: Net) -> bytes:
    out = b""
    for p in (net.tmp / "gw").glob("gateway.db*"):
        out += p.read_bytes()
    return out


def test_hidden_amounts_are_sealed_in_sessions(tmp_path: Path) -> None:
    """The SDK seals a payment's hidden amount to the MPP, to itself and to each node in
    its sessions with them: four HPKE seals for any number of payments, and every
    recipient still opens its own envelope (the MPP debits the right amount, the nodes
    take their shares, the ACQP reads the amount back)."""
    net = Net(tmp_path, privacy="semi2k")

    async def go() -> None:
        c = net.client()
        await net.wallet("u1", 10**9)
        answers = [await _pay(net, c, f"ss-{i}", 1000 + i) for i in range(3)]
        assert [a.code for a in answers] == ["SUCCESS"] * 3
        assert c._sessions.heads == 4  # mpp-1, acqp-1, node-a, node-b
        assert all(a.body["paymentAmount"] == {"currency": "JPY", "value": str(1000 + i)}
                   for i, a in enumerate(answers))
        assert await net.balance("u1") == 10**9 - sum(int((1000 + i) * 38) for i in range(3))
        await net.relay()
        assert net.gateway.state.nodes.pending("node-a") == 0 == net.gateway.state.nodes.pending("node-b")
        await c.aclose()

    run(go())


def _node_entries(net: Net) -> dict[str, Any]:
    return {n: net.keys(n).public for n in net.node_ids}


def _assemble(net: Net, pid: str, period: str) -> Any:
    doc = json.loads((net.tmp / "settlement" / period / pid / "settlement.json").read_text())
    return assemble(doc, net.keys(pid), _node_entries(net), Privacy.from_json(doc["privacy"]))


@pytest.mark.parametrize("privacy", ["semi2k", "aby3"])
@pytest.mark.usefixtures("utc_midday")  # settles "today"
def test_hidden_amounts_end_to_end(tmp_path: Path, privacy: str) -> None:
    """Pays, refunds (one refused by the nodes' bound check), a cancel; today's
    settlement only once today has closed by the nodes' clocks; the totals reach the
    ACQP and the MPP sealed, never the gateway, and equal the partners' own books;
    the gateway's database and files hold no amount and no total."""
    net = Net(tmp_path, privacy=privacy, node_policy={"epsilon": "1000000000", "monthly_budget": "1000000000",
                                                         "default_clip": 10**6})

    async def go() -> None:
        c = net.client()
        await net.wallet("u1", 10**9)
        amounts = [731_947, 402_213, 99_173, 55_501]
        answers = [await _pay(net, c, f"p{i}", v) for i, v in enumerate(amounts)]
        assert [a.code for a in answers] == ["SUCCESS"] * 4
        assert answers[0].body["paymentAmount"] == {"currency": "JPY", "value": "731947"}  # opened by the SDK
        part = await c.refund("r1", {"currency": "JPY", "value": "31947"}, payment_request_id="p0")
        assert part.code == "SUCCESS", part.body
        over = await c.refund("r2", {"currency": "JPY", "value": "700001"}, payment_request_id="p0")
        assert over.code == "REFUND_AMOUNT_EXCEED"
        rest = await c.refund("r3", {"currency": "JPY", "value": "700000"}, payment_id=answers[0].body["paymentId"])
        assert rest.code == "SUCCESS"
        assert (await c.cancel_payment(payment_request_id="p3")).code == "SUCCESS"
        await net.deliver()
        notes = (await net.notifications())["notifications"]
        assert len(notes) >= 4
        early = await net.operator("/admin/v1/settle", {"settlementDate": _today()})
        assert early["status"] == "WAITING" and "PERIOD_OPEN" in early["message"], early
        net.close_today()
        done = await net.operator("/admin/v1/settle", {"settlementDate": _today()})
        assert done["status"] == "DONE", done
        counts = {g["kind"]: g["count"] for g in done["groups"]}
        assert counts == {"pay": 3, "refund": 2}
        assert "Total" not in json.dumps(done)  # the operator gets counts, never a total
        # the ACQP's SDK opens the totals the nodes sealed to it
        summary = await c.settlement_summary(_today())
        (cur,) = summary.body["summaries"]
        assert (cur["paymentCount"], cur["paymentTotal"]["value"]) == (3, str(731_947 + 402_213 + 99_173))
        assert (cur["refundCount"], cur["refundTotal"]["value"]) == (2, str(731_947))
        assert cur["netTotal"]["value"] == str(402_213 + 99_173)
        # each partner assembles its own files from its sealed document
        acq = _assemble(net, "acqp-1", _today())
        assert acq.mismatches == []
        assert sorted(r[7] for r in acq.detail) == sorted([731_947, 402_213, 99_173, 31_947, 700_000])
        (row,) = acq.summary
        assert row[4:] == [3, 731_947 + 402_213 + 99_173, 2, 731_947, 402_213 + 99_173]
        mpp = _assemble(net, "mpp-1", _today())
        assert mpp.summary == acq.summary and mpp.mismatches == []
        mpp.write(tmp_path / "mpp-files")
        assert _csv(tmp_path / "mpp-files" / "summary.csv")[0]["netSettlementAmount"] == str(402_213 + 99_173)
        # analytics: one corridor PH -> JP with 3 payments (noise negligible at this epsilon)
        an = await net.operator("/admin/v1/analytics", {"period": _today()})
        assert an["corridors"] == [{"from": "PH", "to": "JP", "currency": "JPY", "count": 3,
                                    "total": str(731_947 + 402_213 + 99_173), "clip": 10**6}]
        assert an["epsilon"] == "1000000000" and an["minCount"] == 2
        # the canary: no amount and no settlement total reached the gateway's database or files
        blob = _gateway_bytes(net) + b"".join(p.read_bytes() for p in (tmp_path / "settlement").rglob("*.json"))
        for v in amounts + [31_947, 700_000, 700_001, 731_947 + 402_213 + 99_173, 402_213 + 99_173]:
            # as a number of its own (not digits inside base64 text, which a long blob
            # of ciphertext and tokens holds by chance)
            assert re.search(rb"(?<![A-Za-z0-9_+/=-])" + str(v).encode() + rb"(?![A-Za-z0-9_+/=-])", blob) is None
            assert int(v).to_bytes(8, "little") not in blob and int(v).to_bytes(8, "big") not in blob
        await c.aclose()

    run(go())


def test_clear_amount_refused_when_amounts_are_hidden(tmp_path: Path) -> None:
    net = Net(tmp_path, privacy="semi2k")

    async def go() -> None:
        c = net.client()
        await net.wallet("u1", 10**6)
        code = await net.code("u1")
        d = await c.directory()
        body = c._pay_body(d, "plain", {"currency": "JPY", "value": "100"}, code, ORDER, None)
        body["paymentAmount"] = {"currency": "JPY", "value": "100"}
        ans = await c.call("/v1/payments/pay", body)
        assert ans.code == "AMOUNT_NOT_HIDDEN"
        body = c._pay_body(d, "wrong", {"currency": "JPY", "value": "100"}, code, ORDER, None)
        shares = body["paymentAmount"]["shares"]
        shares["node-a"], shares["node-b"] = shares["node-b"], shares["node-a"]  # each share to the wrong node
        assert (await c.call("/v1/payments/pay", body)).code == "SEALED_FIELD_INVALID"
        await c.aclose()

    run(go())


@pytest.mark.usefixtures("utc_midday")
def test_node_down_at_payment_and_at_settlement(tmp_path: Path) -> None:
    """A node that is down does not stop payments; its feed waits. Settlement waits
    with a clear status while it is down and gives the right totals once it is back."""
    net = Net(tmp_path, privacy="semi2k")

    async def go() -> None:
        c = net.client()
        await net.wallet("u1", 10**9)
        net.router.down.add("node-b.test")
        assert (await _pay(net, c, "d1", 1234)).code == "SUCCESS"
        assert (await _pay(net, c, "d2", 4321)).code == "SUCCESS"
        await net.relay()
        assert net.gateway.state.nodes.pending("node-b") > 0
        assert net.gateway.state.nodes.pending("node-a") == 0
        # a refund needs the nodes: it waits (U), never guesses
        waiting = await c.refund("dr", {"currency": "JPY", "value": "34"}, payment_request_id="d1")
        assert waiting.status == "U"
        net.close_today()
        wait = await net.operator("/admin/v1/settle", {"settlementDate": _today()})
        assert wait["status"] == "WAITING" and "NODE_UNAVAILABLE" in wait["message"]
        assert (await c.settlement_summary(_today())).code == "SETTLEMENT_PENDING"
        # node-b comes back (restarted on its own database) and catches up
        net.router.down.discard("node-b.test")
        net.add_node("node-b")
        await net.relay()
        assert net.gateway.state.nodes.pending("node-b") == 0
        svc = net.gateway.state.service
        with svc.engine.begin() as conn:
            from veilpay.gateway.store import refunds
            conn.execute(refunds.update().values(next_check_ms=0))
        await svc.resolve_pending()
        again = await c.inquiry_refund(refund_request_id="dr")
        assert again.body["refundStatus"] == "SUCCESS"
        done = await net.operator("/admin/v1/settle", {"settlementDate": _today()})
        assert done["status"] == "DONE"
        (s,) = (await c.settlement_summary(_today())).body["summaries"]
        assert int(s["paymentTotal"]["value"]) == 1234 + 4321 and int(s["refundTotal"]["value"]) == 34
        await c.aclose()

    run(go())


def test_node_relay_backs_off_a_down_node_and_lingers_to_batch(tmp_path: Path) -> None:
    """The background relay: a node that failed is retried only when its backoff is
    due (its cursor says why and when); rows queued while the relay lingers travel in
    one feed call; the cursor ends at the last row."""
    import asyncio

    from sqlalchemy import select

    from veilpay.gateway.store import node_cursor, node_feed

    net = Net(tmp_path, privacy="semi2k", node_relay_linger_s=1.5, node_relay_interval_s=0.05)
    link = net.gateway.state.nodes
    engine = net.gateway.state.engine

    def cursor(node: str) -> Any:
        with engine.connect() as conn:
            return conn.execute(select(node_cursor).where(node_cursor.c.node == node)).first()

    def feed_calls(node: str) -> list[int]:
        return [len(json.loads(b)["items"]) for h, p, b, _ in net.router.log if h == f"{node}.test" and p == "/node/v1/feed"]

    async def go() -> None:
        c = net.client()
        await net.wallet("u1", 10**9)
        net.router.down.add("node-b.test")
        assert (await _pay(net, c, "b1", 100)).code == "SUCCESS"
        assert await link.run_once() == 1  # node-a reached; node-b down
        down = cursor("node-b")
        assert down.attempts == 1 and down.last_error and down.next_attempt_ms > time.time() * 1000
        tries = len([1 for h, p, _, _ in net.router.log if h == "node-b.test"])
        assert await link.run_once() == 1  # node-b's retry is not yet due: not tried
        assert len([1 for h, p, _, _ in net.router.log if h == "node-b.test"]) == tries
        net.router.down.discard("node-b.test")
        with engine.begin() as conn:  # the backoff runs out
            conn.execute(node_cursor.update().where(node_cursor.c.node == "node-b").values(next_attempt_ms=0))
        assert await link.run_once() == 2
        up = cursor("node-b")
        assert (up.attempts, up.last_error) == (0, "")
        # the running relay lingers: four payments' rows go to each node in one call
        before = {n: len(feed_calls(n)) for n in ("node-a", "node-b")}
        stop = asyncio.Event()
        relay = asyncio.create_task(link.run(stop))
        for i in range(4):
            assert (await _pay(net, c, f"l{i}", 100 + i)).code == "SUCCESS"
        for _ in range(400):
            if link.pending("node-a") == 0 and link.pending("node-b") == 0:
                break
            await asyncio.sleep(0.02)
        stop.set()
        await relay
        for n in ("node-a", "node-b"):
            new_calls = feed_calls(n)[before[n]:]
            assert new_calls == [8]  # a share row and a status row per payment, in one call
            with engine.connect() as conn:
                last = conn.execute(select(node_feed.c.pos).where(node_feed.c.node == n)
                                    .order_by(node_feed.c.pos.desc())).scalars().first()
                unplaced = conn.execute(select(node_feed.c.seq).where(node_feed.c.node == n,
                                                                     node_feed.c.pos.is_(None))).all()
            assert cursor(n).delivered == last and not unplaced

    run(go())


@pytest.mark.usefixtures("utc_midday")
def test_bad_shares_are_left_out_and_named(tmp_path: Path) -> None:
    """A cheating ACQP: shares that add up outside 1..10^15, and a share that does not
    open at its node. The payments complete (the MPP debits what it was sealed); the
    settlement leaves both out and says why."""
    net = Net(tmp_path, privacy="semi2k")

    async def go() -> None:
        c = net.client()
        await net.wallet("u1", 10**9)
        assert (await _pay(net, c, "ok", 500)).code == "SUCCESS"
        d = await c.directory()
        code = await net.code("u1")
        body = c._pay_body(d, "huge", {"currency": "JPY", "value": "600"}, code, ORDER, None)
        me = net.keys("acqp-1")
        # re-share 2^62 under the same context, signed: a valid envelope for each node, an invalid amount
        shares = {n: seal_fields({"s": [str(x) for x in w]}, d.get(n), "share", "acqp-1/pay/huge/JPY")
                  for n, w in split_value(2**62, d.privacy).items()}
        body["paymentAmount"]["shares"] = shares
        body["paymentAmount"]["bundle"] = sign_bundle(me, "mpp-1", "pay", "huge", "JPY", shares)
        assert (await c.call("/v1/payments/pay", body)).code == "SUCCESS"
        code = await net.code("u1")
        body = c._pay_body(d, "garbled", {"currency": "JPY", "value": "700"}, code, ORDER, None)
        other = c._pay_body(d, "elsewhere", {"currency": "JPY", "value": "700"}, code, ORDER, None)
        shares = {**body["paymentAmount"]["shares"], "node-b": other["paymentAmount"]["shares"]["node-b"]}
        body["paymentAmount"]["shares"] = shares  # another payment's share, signed as this one's
        body["paymentAmount"]["bundle"] = sign_bundle(me, "mpp-1", "pay", "garbled", "JPY", shares)
        assert (await c.call("/v1/payments/pay", body)).code == "SUCCESS"
        net.close_today()
        done = await net.operator("/admin/v1/settle", {"settlementDate": _today()})
        assert done["status"] == "DONE", done
        (g,) = done["groups"]
        assert g["count"] == 1 and len(g["excluded"]) == 2
        (s,) = (await c.settlement_summary(_today())).body["summaries"]
        assert (s["paymentCount"], s["paymentTotal"]["value"]) == (1, "500")
        rows = {r[1]: r[8] for r in _assemble(net, "acqp-1", _today()).detail}
        assert rows == {"ok": "SETTLED", "huge": "EXCLUDED_OUT_OF_RANGE", "garbled": "EXCLUDED_SHARE_REFUSED"}
        await c.aclose()

    run(go())


def test_node_control_api_refuses_bad_calls(tmp_path: Path) -> None:
    net = Net(tmp_path, privacy="semi2k")
    svc = net.node_apps["node-a"].state.service

    async def go() -> None:
        async with httpx.AsyncClient(transport=net.router) as h:
            r = await h.post("http://node-a.test/node/v1/feed", json={"items": []})
            assert r.status_code == 401 and r.json()["error"]["code"] == "INVALID_SIGNATURE"
        c = net.client()
        await net.wallet("u1", 10**6)
        assert (await _pay(net, c, "x1", 77)).code == "SUCCESS"
        await net.relay()
        await c.aclose()

    run(go())
    bad = svc.ingest([{"seq": 10**6, "op": "share", "id": "pay_x"}, {"seq": 10**6 + 1, "op": "launch"}])
    assert [r["code"] for r in bad["rejected"]] == ["BUNDLE_INVALID", "FEED_INVALID"]
    with pytest.raises(NodeError) as no_seq:
        svc.ingest([{"op": "status"}])
    assert no_seq.value.code == "FEED_INVALID"
    with pytest.raises(NodeError) as job:
        svc.run_job({"jobId": "short", "kind": "settle", "params": {}})
    assert job.value.code == "JOB_INVALID"
    # a replay: the same acquirer request shared again under another payment id
    from sqlalchemy import select

    from veilpay.node.store import items
    with svc.engine.connect() as conn:
        row = conn.execute(select(items)).first()
    keys = net.keys("acqp-1")
    d_nodes = {n: net.keys(n).public for n in ("node-a", "node-b")}
    amt = seal_amount({"currency": "JPY", "value": "77"}, "pay", keys, row.request_id, net.keys("mpp-1").public,
                      d_nodes, Privacy("semi2k", ("node-a", "node-b"), "node-c"))
    got = svc.ingest([{"seq": 10**6 + 2, "op": "share", "id": "pay_" + "0" * 32, "bundle": amt["bundle"],
                       "envelope": amt["shares"]["node-a"]}])
    assert got["rejected"] == [{"seq": 10**6 + 2, "id": "pay_" + "0" * 32, "code": "REPLAYED_SHARE"}]
    with pytest.raises(DecryptionError):
        open_share(amt["shares"]["node-a"], net.keys("node-b"), "pay", "acqp-1", row.request_id, "JPY", 1)


# ---------------------------------------------------------------- bundles, periods, config
def test_share_bundle_signature_covers_every_field(tmp_path: Path) -> None:
    from veilpay.errors import InvalidInput, SignatureError
    from veilpay.sdk import create_party
    from veilpay.sdk.shares import verify_bundle

    me = create_party(tmp_path / "a", "acqp-1", "acqp")
    other = create_party(tmp_path / "b", "acqp-2", "acqp")
    b = sign_bundle(me, "mpp-1", "refund", "r-1", "JPY", {"node-a": {"x": 1}, "node-b": {"x": 2}}, payment="p-1")
    assert verify_bundle(b, me.public) == b
    for field, value in [("acqp", "acqp-2"), ("mpp", "mpp-2"), ("requestId", "r-2"), ("currency", "USD"),
                         ("payment", "p-2"), ("ts", b["ts"] + 1), ("shares", {"node-a": "0" * 64, "node-b": "1" * 64})]:
        with pytest.raises(SignatureError):
            verify_bundle({**b, field: value}, me.public if field != "acqp" else other.public)
    with pytest.raises(InvalidInput):
        verify_bundle({**b, "kind": "pay"}, me.public)  # a payment names no refunded payment
    with pytest.raises(SignatureError):
        verify_bundle(b, other.public)  # not the signer the verifier pinned
    with pytest.raises(InvalidInput):
        verify_bundle({k: v for k, v in b.items() if k != "ts"}, me.public)


@settings(max_examples=80, deadline=None)
@given(st.integers(min_value=0, max_value=4_000_000_000_000), st.sampled_from([86400, 3600, 600, 10, 1]))
def test_periods_round_trip(ms: int, cycle: int) -> None:
    from veilpay.sdk.periods import Period

    p = Period.of(ms, cycle)
    assert p.start_ms <= ms < p.end_ms and Period.parse(p.label, cycle) == p
    assert p.closed(p.end_ms + 5000, 5) and not p.closed(p.end_ms + 4999, 5)


def test_period_labels_are_checked() -> None:
    from veilpay.errors import InvalidInput
    from veilpay.sdk.periods import Period

    for bad, cycle in [("2026-13-01", 86400), ("2026-12-05T00:00:00Z", 86400), ("2026-12-05", 10),
                       ("2026-12-05T00:00:05Z", 10), (20261205, 86400), ("x" * 30, 86400)]:
        with pytest.raises(InvalidInput):
            Period.parse(bad, cycle)
    with pytest.raises(InvalidInput):
        Period.of(0, 7)  # does not divide a day


def test_example_node_config_loads_and_bad_ones_do_not(tmp_path: Path) -> None:
    from fractions import Fraction

    from veilpay.node.config import load_node_config

    example = Path(__file__).resolve().parent.parent / "examples" / "node.toml"
    cfg = load_node_config(example)
    assert cfg.party == "node-a" and cfg.policy.clip_of("JPY") == 50_000 and cfg.policy.clip_of("USD") == 100_000
    assert cfg.policy.eps == Fraction(1, 2) and cfg.partner_keys[0] == example.parent / "keys/acqp-1/public.json"
    text = example.read_text()
    for broken in (text.replace("cycle_s = 86400", "cycle_s = 7"), text.replace("min_count = 10", "min_count = 0"),
                   text.replace('epsilon = "0.5"', 'epsilon = "9"'), text.replace("JPY = 50000", "XXX = 5"),
                   text + "surprise = 1\n", text.replace("partner_keys", "partners"),
                   text.replace('epsilon = "0.5"', 'epsilon = "lots"')):
        p = tmp_path / "node.toml"
        p.write_text(broken)
        with pytest.raises(ConfigError):
            load_node_config(p)
