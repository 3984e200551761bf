"""Attacks on the gateway's replicas (two gateway apps on one PostgreSQL, in one
process; ``tests/test_gateway_replicas.py`` holds the harness's own tests), each as the
party that attacks, with only what that party has: an acquirer racing the replicas
with its own requests, evading the shared rate limit, replaying its own signed
requests or passing off the gateway's signed answers; a replica paused past its
leases or dead while holding one; and the seams under them (the resolver's claim,
GroupCommit, the SDK's failover, migrations at startup).

Each test fails if its attack works. An attack that works is kept as
``xfail(strict=True)`` with the bug in its reason."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_net import Net, run
from sqlalchemy import func, select, text, update

from veilpay.errors import NodeError, SignatureError
from veilpay.gateway import leases
from veilpay.gateway.store import leases as leases_table
from veilpay.gateway.store import node_cursor, node_feed, payments, rate_windows, refunds, seen_requests
from veilpay.sdk import sign_headers

ORDER = {"orderId": "o-1", "goods": "tea"}
INQUIRY = "/v1/payments/inquiryPayment"


def _jpy(v: int) -> dict[str, str]:
    return {"currency": "JPY", "value": str(v)}


def _count(engine: Any, q: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def _signed(net: Net, path: str, raw: bytes, pid: str = "acqp-1") -> dict[str, str]:
    v, sk = net.keys(pid).signer()
    h = sign_headers(sk, v, "POST", path, pid, raw, time.time())
    h["Content-Type"] = "application/json"
    return h


async def _post(net: Net, host: str, path: str, raw: bytes, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(transport=net.router) as c:
        return await c.post(f"http://{host}{path}", content=raw, headers=headers)


def _code(resp: httpx.Response) -> str:
    return str(resp.json()["result"]["resultCode"])


async def _early_in_a_second() -> int:
    """Wait for the start of a second, so that a short burst stays in it."""
    while time.time() % 1 > 0.15:
        await asyncio.sleep(0.01)
    return int(time.time())


def _books_balance(ledger: list[dict[str, Any]], start: int) -> int:
    return start - sum(p["debit"] - p["credited"] for p in ledger)


# ====================================================================== 1. a client racing the replicas

def _pair(net: Net) -> tuple[Any, Any]:
    """A client of the first replica and one of the second, neither retrying."""
    return net.client(retries=0), net.client(gateway="gateway-2.test", retries=0)


async def _paid(net: Net, client: Any, prefix: str, n: int) -> None:
    """n payments of 1,000 by u1 through ``client``, request ids prefix-0 .. prefix-(n-1)."""
    for i in range(n):
        assert (await client.pay(f"{prefix}-{i}", _jpy(1000), await net.code("u1"), ORDER)).code == "SUCCESS"


def test_one_request_id_two_bodies_at_two_replicas_makes_one_payment(tmp_path: Path, postgres_url: str) -> None:
    """The acquirer sends each paymentRequestId with two different amounts, one to each
    replica at the same moment: one payment, of the amount of the copy answered
    SUCCESS; the other copy REPEAT_REQ_INCONSISTENT; never two payments or a row that
    mixes the two bodies."""
    net = Net(tmp_path, database=postgres_url)
    net.replica("gateway-2.test")
    start = 10**9

    async def go() -> None:
        await net.wallet("u1", start)
        one, two = _pair(net)
        n = 10
        codes = [await net.code("u1") for _ in range(n)]
        got = await asyncio.gather(*[c.pay(f"mix-{i}", _jpy(amount), codes[i], ORDER)
                                     for i in range(n) for c, amount in ((one, 100 + i), (two, 5000 + i))])
        engine = net.gateway.state.engine
        with engine.connect() as conn:
            rows = {r.payment_request_id: r for r in conn.execute(select(payments)).all()}
        assert len(rows) == n
        ledger = {p["payment_id"]: p for p in (await net.admin("mpp-1", "GET", "/admin/ledger"))["payments"]}
        assert len(ledger) == n
        for i in range(n):
            a, b = got[2 * i], got[2 * i + 1]
            assert sorted([a.code, b.code]) == ["REPEAT_REQ_INCONSISTENT", "SUCCESS"], (a.code, b.code)
            won, amount = (a, 100 + i) if a.code == "SUCCESS" else (b, 5000 + i)
            row = rows[f"mix-{i}"]
            assert row.id == won.body["paymentId"] and row.amount == amount and row.status == "SUCCESS"
            assert ledger[row.id]["amount"] == amount and ledger[row.id]["status"] == "SUCCESS"
        assert await net.balance("u1") == _books_balance(list(ledger.values()), start)
        await one.aclose()
        await two.aclose()

    run(go())


def test_refunds_racing_on_two_replicas_never_refund_more_than_the_payment(tmp_path: Path,
                                                                            postgres_url: str) -> None:
    """Clear amounts: for each payment of 1,000, three refunds of 400 sent at once, to
    alternating replicas: at most two succeed (800), the third REFUND_AMOUNT_EXCEED; the
    gateway's and the MPP's books agree."""
    net = Net(tmp_path, database=postgres_url)
    net.replica("gateway-2.test")
    start = 10**9

    async def go() -> None:
        await net.wallet("u1", start)
        one, two = _pair(net)
        n = 6
        await _paid(net, one, "rp", n)
        got = await asyncio.gather(*[(one, two, one)[k].refund(f"rf-{i}-{k}", _jpy(400), payment_request_id=f"rp-{i}")
                                     for i in range(n) for k in range(3)])
        for i in range(n):
            codes = sorted(g.code for g in got[3 * i:3 * i + 3])
            assert codes == ["REFUND_AMOUNT_EXCEED", "SUCCESS", "SUCCESS"], codes
        engine = net.gateway.state.engine
        with engine.connect() as conn:
            assert {r.refunded for r in conn.execute(select(payments.c.refunded))} == {800}
            assert _count(engine, select(func.count()).select_from(refunds).where(refunds.c.status == "SUCCESS")) \
                == 2 * n
        ledger = (await net.admin("mpp-1", "GET", "/admin/ledger"))["payments"]
        assert {p["refunded"] for p in ledger} == {800}
        assert await net.balance("u1") == _books_balance(ledger, start)
        await one.aclose()
        await two.aclose()

    run(go())


def test_a_cancel_on_one_replica_racing_the_pay_on_the_other(tmp_path: Path, postgres_url: str) -> None:
    """The acquirer pays through one replica and cancels the same payment through the
    other while the pay is in flight (the cancel may reach the MPP before the pay):
    the cancel is answered, the payment ends CANCELLED at the gateway and at the MPP,
    and the wallet is debited nothing in the end (a debit made first is reversed)."""
    net = Net(tmp_path, database=postgres_url)
    net.replica("gateway-2.test")
    start = 10**9

    async def go() -> None:
        await net.wallet("u1", start)
        one, two = _pair(net)
        n = 8

        async def cancel_soon(rid: str, delay: float) -> Any:
            await asyncio.sleep(delay)
            for _ in range(200):
                ans = await two.cancel_payment(payment_request_id=rid)
                if ans.code != "ORDER_NOT_EXIST":
                    return ans
                await asyncio.sleep(0)
            return ans

        results = []
        for i in range(n):
            code = await net.code("u1")
            results.append(await asyncio.gather(one.pay(f"cx-{i}", _jpy(100 + i), code, ORDER),
                                                cancel_soon(f"cx-{i}", 0.002 * i)))
        for i, (paid, cancelled) in enumerate(results):
            assert cancelled.code in ("SUCCESS", "UNKNOWN_EXCEPTION"), cancelled.code
            final = await one.inquiry_payment(payment_request_id=f"cx-{i}")
            assert final.body["paymentStatus"] == "CANCELLED", (paid.code, cancelled.code, final.body)
        ledger = (await net.admin("mpp-1", "GET", "/admin/ledger"))["payments"]
        for p in ledger:
            assert p["status"] == "CANCELLED" and p["debit"] == p["credited"], p
        assert await net.balance("u1") == start
        await one.aclose()
        await two.aclose()

    run(go())


def test_a_refund_racing_a_cancel_on_the_other_replica_never_both(tmp_path: Path, postgres_url: str) -> None:
    """A refund on one replica and a cancel on the other of the same successful payment,
    at once: never a payment both refunded and cancelled (the customer credited twice)."""
    net = Net(tmp_path, database=postgres_url)
    net.replica("gateway-2.test")
    start = 10**9

    async def go() -> None:
        await net.wallet("u1", start)
        one, two = _pair(net)
        n = 8
        await _paid(net, one, "rc", n)
        got = await asyncio.gather(*[
            x for i in range(n) for x in (one.refund(f"rcr-{i}", _jpy(300), payment_request_id=f"rc-{i}"),
                                          two.cancel_payment(payment_request_id=f"rc-{i}"))])
        for i in range(n):
            refunded, cancelled = got[2 * i], got[2 * i + 1]
            assert not (refunded.code == "SUCCESS" and cancelled.code == "SUCCESS"), (refunded.code, cancelled.code)
        ledger = (await net.admin("mpp-1", "GET", "/admin/ledger"))["payments"]
        for p in ledger:
            assert not (p["status"] == "CANCELLED" and p["refunded"]), p
            assert p["credited"] <= p["debit"], p
        assert await net.balance("u1") == _books_balance(ledger, start)
        await one.aclose()
        await two.aclose()

    run(go())


def test_one_refund_request_id_on_both_replicas(tmp_path: Path, postgres_url: str) -> None:
    """The same refundRequestId at both replicas at once: the same body is one refund
    (both answered with it, refunded once at the MPP); a different amount under a used
    refundRequestId is REPEAT_REQ_INCONSISTENT and changes nothing."""
    net = Net(tmp_path, database=postgres_url)
    net.replica("gateway-2.test")
    start = 10**9

    async def go() -> None:
        await net.wallet("u1", start)
        one, two = _pair(net)
        n = 6
        await _paid(net, one, "sr", n)
        same = await asyncio.gather(*[c.refund(f"srr-{i}", _jpy(300), payment_request_id=f"sr-{i}")
                                      for i in range(n) for c in (one, two)])
        for i in range(n):
            a, b = same[2 * i], same[2 * i + 1]
            assert a.code == b.code == "SUCCESS" and a.body["refundId"] == b.body["refundId"], (a.code, b.code)
        other = await asyncio.gather(*[c.refund(f"srx-{i}", _jpy(v), payment_request_id=f"sr-{i}")
                                       for i in range(n) for c, v in ((one, 100), (two, 200))])
        for i in range(n):
            codes = sorted(g.code for g in other[2 * i:2 * i + 2])
            assert codes == ["REPEAT_REQ_INCONSISTENT", "SUCCESS"], codes
        ledger = (await net.admin("mpp-1", "GET", "/admin/ledger"))["payments"]
        engine = net.gateway.state.engine
        with engine.connect() as conn:
            gw = {r.id: r.refunded for r in conn.execute(select(payments.c.id, payments.c.refunded))}
        assert {p["payment_id"]: p["refunded"] for p in ledger} == gw
        assert all(300 + 100 <= v <= 300 + 200 for v in gw.values())
        assert _count(engine, select(func.count()).select_from(refunds)) == 2 * n
        assert await net.balance("u1") == _books_balance(ledger, start)
        await one.aclose()
        await two.aclose()

    run(go())


# ====================================================================== 2. the shared rate limit
def test_every_endpoint_and_a_malformed_body_spend_the_one_budget_over_both_replicas(tmp_path: Path,
                                                                                     postgres_url: str) -> None:
    """An acquirer spreads its requests over both replicas and over every endpoint, some
    of them malformed (not JSON, not the model): each genuine signed request counts once
    in the one budget, so no mix gets more than rate_limit_per_s answered in a second."""
    net = Net(tmp_path, database=postgres_url, rate_limit_per_s=6)
    net.replica("gateway-2.test")
    calls = [("/v1/payments/inquiryPayment", b'{"paymentRequestId":"none"}'),
             ("/v1/payments/listPayments", b"{}"),
             ("/v1/payments/inquiryRefund", b'{"refundRequestId":"none"}'),
             ("/v1/payments/refund", b"not json at all"),
             ("/v1/payments/pay", b'{"unexpected":1}'),
             ("/v1/payments/cancelPayment", b"[1,2,3]")]

    async def go() -> list[str]:
        second = await _early_in_a_second()
        codes = []
        for i in range(14):
            path, raw = calls[i % len(calls)]
            r = await _post(net, ("gateway.test", "gateway-2.test")[i % 2], path, raw, _signed(net, path, raw))
            codes.append(_code(r))
        assert int(time.time()) == second, "the burst spilled into the next second; the machine is too slow"
        return codes

    codes = run(go())
    assert codes[:6] == ["ORDER_NOT_EXIST", "SUCCESS", "ORDER_NOT_EXIST", "MALFORMED_REQUEST", "PARAM_ILLEGAL",
                         "MALFORMED_REQUEST"], codes
    assert codes[6:] == ["REQUEST_TRAFFIC_EXCEED_LIMIT"] * 8, codes
    with net.gateway.state.engine.connect() as conn:
        assert conn.execute(select(rate_windows.c.count)).scalars().all() == [14]  # the refused ones count too


def test_a_concurrent_burst_at_both_replicas_gets_exactly_the_limit(tmp_path: Path, postgres_url: str) -> None:
    """Thirty requests at once, half at each replica (concurrent groups on both replicas
    upserting the one row): exactly the limit answered, never more."""
    net = Net(tmp_path, database=postgres_url, rate_limit_per_s=7)
    net.replica("gateway-2.test")
    raw = b'{"paymentRequestId":"none"}'

    async def go() -> list[str]:
        second = await _early_in_a_second()
        rs = await asyncio.gather(*[_post(net, ("gateway.test", "gateway-2.test")[i % 2], INQUIRY, raw,
                                          _signed(net, INQUIRY, raw)) for i in range(30)])
        assert int(time.time()) == second, "the burst spilled into the next second; the machine is too slow"
        return [_code(r) for r in rs]

    codes = run(go())
    assert codes.count("ORDER_NOT_EXIST") == 7 and codes.count("REQUEST_TRAFFIC_EXCEED_LIMIT") == 23, codes


def test_one_acquirer_cannot_spend_anothers_budget_and_replays_evade_nothing(tmp_path: Path,
                                                                             postgres_url: str) -> None:
    """acqp-1 exhausts its own budget at both replicas, then sends requests that claim
    to be acqp-2's (signed with its own key) and replays of its own spent requests:
    the forgeries are refused unsigned and do not touch acqp-2's count, the replays are
    refused as replays (never served, whatever the budget), and acqp-2 still gets its
    whole budget."""
    net = Net(tmp_path, database=postgres_url, rate_limit_per_s=4)
    net.replica("gateway-2.test")
    raw = b'{"paymentRequestId":"none"}'

    async def go() -> None:
        second = await _early_in_a_second()
        hosts = ("gateway.test", "gateway-2.test")
        first = [_signed(net, INQUIRY, raw) for _ in range(8)]
        own = [_code(await _post(net, hosts[i % 2], INQUIRY, raw, h)) for i, h in enumerate(first)]
        assert own == ["ORDER_NOT_EXIST"] * 4 + ["REQUEST_TRAFFIC_EXCEED_LIMIT"] * 4, own
        for i in range(6):  # acqp-1's key, acqp-2's name
            h = _signed(net, INQUIRY, raw)
            h["Client-Id"] = "acqp-2"
            r = await _post(net, hosts[i % 2], INQUIRY, raw, h)
            assert (r.status_code, _code(r)) == (401, "INVALID_SIGNATURE") and "signature" not in {
                k.lower() for k in r.headers}
        for i, h in enumerate(first):  # replays, each to the replica it did not go to
            r = await _post(net, hosts[(i + 1) % 2], INQUIRY, raw, h)
            assert (r.status_code, _code(r)) == (401, "REPLAYED_REQUEST")
        theirs = [_code(await _post(net, hosts[i % 2], INQUIRY, raw, _signed(net, INQUIRY, raw, "acqp-2")))
                  for i in range(5)]
        assert theirs == ["ORDER_NOT_EXIST"] * 4 + ["REQUEST_TRAFFIC_EXCEED_LIMIT"], theirs
        assert int(time.time()) == second, "the burst spilled into the next second; the machine is too slow"

    run(go())
    with net.gateway.state.engine.connect() as conn:
        counts = dict(conn.execute(select(rate_windows.c.client_id, rate_windows.c.count)).all())
    assert counts == {"acqp-1": 8, "acqp-2": 5}  # forgeries and replays counted for no one


# ====================================================================== 3. replays
def test_a_signed_pay_sent_to_both_replicas_at_once_runs_once(tmp_path: Path, postgres_url: str) -> None:
    """The acquirer's own signed pay request, the very bytes and headers, posted to both
    replicas at the same moment (a replay raced against the original): one is run, the
    other REPLAYED_REQUEST; one payment, debited once."""
    net = Net(tmp_path, database=postgres_url)
    net.replica("gateway-2.test")
    path = "/v1/payments/pay"

    async def go() -> None:
        await net.wallet("u1", 10**9)
        c = net.client()
        d = await c.directory()
        for i in range(6):
            raw = json.dumps(c._pay_body(d, f"rep-{i}", _jpy(100), await net.code("u1"), ORDER, None)).encode()
            h = _signed(net, path, raw)
            a, b = await asyncio.gather(_post(net, "gateway.test", path, raw, h),
                                        _post(net, "gateway-2.test", path, raw, h))
            assert sorted([_code(a), _code(b)]) == ["REPLAYED_REQUEST", "SUCCESS"], (_code(a), _code(b))
        ledger = (await net.admin("mpp-1", "GET", "/admin/ledger"))["payments"]
        assert len(ledger) == 6
        await c.aclose()

    run(go())


def test_a_request_replayed_to_the_other_replica_after_its_window_is_refused(
        tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A signed request replayed to the other replica once its window has passed and
    both replicas have purged the nonces they remember: refused by its time, not run."""
    net = Net(tmp_path, database=postgres_url, request_window_s=30)
    second = net.replica("gateway-2.test")
    raw = b'{"paymentRequestId":"none"}'
    h = _signed(net, INQUIRY, raw)
    real = time.time

    async def go() -> None:
        assert _code(await _post(net, "gateway.test", INQUIRY, raw, h)) == "ORDER_NOT_EXIST"
        monkeypatch.setattr(time, "time", lambda: real() + 91)  # past 3 x the window: the nonce may be forgotten
        for app in (net.gateway, second):
            await app.state.service.purge_seen()
        assert _count(net.gateway.state.engine, select(func.count()).select_from(seen_requests)) == 0
        r = await _post(net, "gateway-2.test", INQUIRY, raw, h)
        assert (r.status_code, _code(r)) == (401, "REQUEST_TIME_EXPIRED")

    run(go())


def test_a_signed_answer_of_one_replica_is_not_taken_for_a_request_to_the_other(tmp_path: Path,
                                                                                postgres_url: str) -> None:
    """A man in the middle keeps replica 1's signed answers and hands them back for the
    client's later requests to replica 2 (a SUCCESS of one payment for another
    payment's pay, an inquiry's answer for the same inquiry sent again): the SDK refuses
    each, since an answer is bound to the digest of the request it answers."""
    net = Net(tmp_path, database=postgres_url)
    net.replica("gateway-2.test")
    kept: dict[str, httpx.Response] = {}

    class Swap(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.host == "gateway-2.test" and request.url.path in kept:
                old = kept[request.url.path]
                return httpx.Response(old.status_code, headers=old.headers, content=old.content, request=request)
            resp = await net.router.handle_async_request(request)
            if request.url.host == "gateway.test" and request.url.path.startswith("/v1/payments/"):
                kept[request.url.path] = resp
            return resp

    async def go() -> None:
        await net.wallet("u1", 10**9)
        one = net.client(transport=Swap())
        two = net.client(gateway="gateway-2.test", transport=Swap(), retries=0)
        assert (await one.pay("ans-1", _jpy(100), await net.code("u1"), ORDER)).code == "SUCCESS"
        assert (await one.inquiry_payment(payment_request_id="ans-1")).code == "SUCCESS"
        await two.directory()
        with pytest.raises(SignatureError):
            await two.pay("ans-1", _jpy(100), await net.code("u1"), ORDER)  # even the same request id
        with pytest.raises(SignatureError):
            await two.pay("ans-2", _jpy(100), await net.code("u1"), ORDER)
        with pytest.raises(SignatureError):
            await two.inquiry_payment(payment_request_id="ans-1")
        await one.aclose()
        await two.aclose()

    run(go())


# ====================================================================== 4. leases and the node feed
def _lease(engine: Any, name: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(leases_table).where(leases_table.c.name == name)).first()


async def _hidden_pays(net: Net, n: int, prefix: str, gateway: str = "gateway.test", value: int = 1000) -> None:
    c = net.client(gateway=gateway)
    for i in range(n):
        assert (await c.pay(f"{prefix}-{i}", _jpy(value), await net.code("u1"), ORDER)).code == "SUCCESS"
    await c.aclose()


@pytest.mark.parametrize("taken", [True, False])
def test_a_replica_paused_past_its_relay_lease_can_neither_place_nor_save(tmp_path: Path, postgres_url: str,
                                                                         taken: bool) -> None:
    """Replica 1 takes node-a's relay lease, then stalls past its lapse (a GC pause, a
    stopped VM); replica 2 takes the lease over (``taken``) or nobody does yet. When
    replica 1 wakes, it can neither give its rows positions nor move the node's cursor,
    and its drop leaves replica 2's lease alone."""
    net = Net(tmp_path, database=postgres_url, privacy="semi2k")
    second = net.replica("gateway-2.test")
    one, two = net.gateway.state.nodes, second.state.nodes
    engine = net.gateway.state.engine

    async def go() -> None:
        await net.wallet("u1", 10**9)
        await _hidden_pays(net, 2, "pz")

    run(go())
    one.relay_lease_ms = 5
    with engine.begin() as conn:
        cur = one._take_relay(conn, "node-a")
    assert cur is not None and cur.delivered == 0
    time.sleep(0.02)
    if taken:
        with engine.begin() as conn:
            assert two._take_relay(conn, "node-a") is not None
    with engine.begin() as conn:
        assert one._place(conn, "node-a") is None
    with engine.begin() as conn:
        assert one._save_cursor(conn, "node-a", cur, delivered=4) is None
        assert one._save_cursor(conn, "node-a", cur, delivered=None, error="boom") is None
    with engine.begin() as conn:
        leases.drop(conn, "relay:node-a", one.me)
    with engine.connect() as conn:
        row = conn.execute(select(node_cursor).where(node_cursor.c.node == "node-a")).one()
        assert (row.delivered, row.assigned, row.attempts, row.last_error) == (0, 0, 0, "")
        assert conn.execute(select(func.count()).select_from(node_feed).where(
            node_feed.c.node == "node-a", node_feed.c.pos.is_not(None))).scalar_one() == 0
    lease = _lease(engine, "relay:node-a")
    if taken:
        assert lease.owner == two.me and lease.until_ms > time.time() * 1000


def test_a_relay_that_stalls_mid_post_loses_nothing_and_moves_no_cursor_back(tmp_path: Path,
                                                                              postgres_url: str) -> None:
    """Replica 1 places node-a's rows and stalls in its feed post past its lease; replica
    2 takes over, places the rows committed since and delivers them all; replica 1's
    stale post then lands. Every row has one position, the cursor stays at the last
    one, and replica 1 records nothing."""
    net = Net(tmp_path, database=postgres_url, privacy="semi2k")
    second = net.replica("gateway-2.test")
    one, two = net.gateway.state.nodes, second.state.nodes
    engine = net.gateway.state.engine
    real_post = one._post
    stalled, resume = asyncio.Event(), asyncio.Event()

    async def slow_post(node: str, path: str, body: Any, timeout: float) -> Any:
        if node == "node-a" and path == "/node/v1/feed" and not resume.is_set():
            stalled.set()
            await resume.wait()
        return await real_post(node, path, body, timeout)

    one._post = slow_post  # type: ignore[method-assign]
    one.relay_lease_ms = 50

    async def go() -> Any:
        await net.wallet("u1", 10**9)
        await _hidden_pays(net, 2, "ms")
        stale = asyncio.create_task(one.flush("node-a"))
        await stalled.wait()
        await asyncio.sleep(0.1)  # past replica 1's lease
        await _hidden_pays(net, 2, "ms2", gateway="gateway-2.test")
        reached = await two.flush("node-a")
        resume.set()
        return reached, await stale

    reached, stale = run(go())
    with engine.connect() as conn:
        rows = conn.execute(select(node_feed.c.pos).where(node_feed.c.node == "node-a")).scalars().all()
        cur = conn.execute(select(node_cursor).where(node_cursor.c.node == "node-a")).one()
    assert sorted(rows) == list(range(1, len(rows) + 1))  # one position each, none given twice
    assert reached == len(rows) == cur.delivered == cur.assigned and cur.last_error == ""
    assert stale is None  # replica 1 saw that it lost the lease
    assert one.pending("node-a") == 0 and net.node_apps["node-a"].state.service.feed.applied() == len(rows)


def test_two_replicas_refunding_one_hidden_payment_at_once(tmp_path: Path, postgres_url: str) -> None:
    """Hidden amounts: two refunds of 600 of one payment of 1,000, one at each replica at
    the same moment; each replica runs its refund check at the nodes (the jobs lease
    lets one at a time): exactly one refund succeeds, the other REFUND_AMOUNT_EXCEED,
    and the nodes never answered NODES_DISAGREE."""
    net = Net(tmp_path, database=postgres_url, privacy="semi2k")
    net.replica("gateway-2.test")

    async def go() -> None:
        await net.wallet("u1", 10**9)
        await _hidden_pays(net, 1, "hr")
        one, two = _pair(net)
        a, b = await asyncio.gather(one.refund("hrr-1", _jpy(600), payment_request_id="hr-0", mpp_id="mpp-1"),
                                    two.refund("hrr-2", _jpy(600), payment_request_id="hr-0", mpp_id="mpp-1"))
        assert sorted([a.code, b.code]) == ["REFUND_AMOUNT_EXCEED", "SUCCESS"], (a.code, b.code)
        ledger = (await net.admin("mpp-1", "GET", "/admin/ledger"))["payments"]
        assert [p["refunded"] for p in ledger] == [600]
        await one.aclose()
        await two.aclose()

    run(go())


def test_a_dead_replicas_job_lease_holds_refund_checks_until_it_lapses(tmp_path: Path, postgres_url: str) -> None:
    """A replica died holding the ``jobs`` lease (until node_job_timeout_s + 30 s from
    when it took it). Meanwhile every refund check waits node_timeout_s and gives up
    with NODE_BUSY: the refund is answered REFUND_IN_PROCESS and stays PROCESSING, with
    its next check set; once the lease lapses the resolver's next check refunds it."""
    net = Net(tmp_path, database=postgres_url, privacy="semi2k", node_timeout_s=0.5)
    second = net.replica("gateway-2.test")
    engine = net.gateway.state.engine

    async def go() -> None:
        await net.wallet("u1", 10**9)
        await _hidden_pays(net, 1, "dj")
        with engine.begin() as conn:
            conn.execute(leases_table.insert().values(name="jobs", owner="dead-host:4242:abc",
                                                      until_ms=int(time.time() * 1000) + 330_000))
        c = net.client(gateway="gateway-2.test", retries=0)
        ans = await c.refund("djr-1", _jpy(100), payment_request_id="dj-0", mpp_id="mpp-1")
        assert ans.code == "REFUND_IN_PROCESS"
        with engine.connect() as conn:
            row = conn.execute(select(refunds)).one()
        assert row.status == "PROCESSING" and row.attempts == 1 and row.next_check_ms > time.time() * 1000
        with pytest.raises(NodeError) as err:
            await second.state.nodes.job("refund_check", {"refundId": row.id})
        assert err.value.code == "NODE_BUSY"
        with engine.begin() as conn:  # the lease lapses (fast-forwarded)
            conn.execute(update(leases_table).where(leases_table.c.name == "jobs").values(until_ms=1))
            conn.execute(update(refunds).values(next_check_ms=0))
        assert await net.gateway.state.service.resolve_pending() == 1
        assert (await c.inquiry_refund(refund_request_id="djr-1")).body["refundStatus"] == "SUCCESS"
        await c.aclose()

    run(go())


def test_a_job_held_up_by_a_lease_names_its_holder_and_lapse(tmp_path: Path, postgres_url: str) -> None:
    net = Net(tmp_path, database=postgres_url, privacy="semi2k", node_timeout_s=0.2)
    engine = net.gateway.state.engine
    until = int(time.time() * 1000) + 330_000
    with engine.begin() as conn:
        conn.execute(leases_table.insert().values(name="jobs", owner="dead-host:4242:abc", until_ms=until))

    async def go() -> NodeError:
        try:
            await net.gateway.state.nodes.job("refund_check", {"refundId": "rfd_x"})
        except NodeError as exc:
            return exc
        raise AssertionError("the job ran under another replica's lease")

    err = run(go())
    assert err.code == "NODE_BUSY"
    assert "dead-host:4242:abc" in str(err) and ("330" in str(err) or "lapse" in str(err)), str(err)


def test_a_job_that_runs_past_its_lease_keeps_other_replicas_out(tmp_path: Path, postgres_url: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    net = Net(tmp_path, database=postgres_url, privacy="semi2k", node_timeout_s=0.3)
    second = net.replica("gateway-2.test")
    one, two = net.gateway.state.nodes, second.state.nodes
    timeout_ms = int(one.cfg.node_job_timeout_s * 1000)
    real_ms = leases._now_ms
    elapsed = [0]
    monkeypatch.setattr(leases, "_now_ms", lambda: real_ms() + elapsed[0])
    in_rejoin, done = asyncio.Event(), asyncio.Event()
    posted_by_two: list[Any] = []
    ok = {"stored": True, "result": {"ok": True}, "ledger": 1, "subject": "s"}

    async def flushed(node: str) -> int:
        return 0

    async def one_posts(body: dict[str, Any]) -> list[Any]:
        if not body.get("rejoin"):  # one holder stored the release, the other dropped out: rejoin
            elapsed[0] = timeout_ms  # the first post ran its full node_job_timeout_s
            return [ok, NodeError("lost", "NODE_UNAVAILABLE", 503), ok]
        elapsed[0] = timeout_ms + 31_000  # 31 s into the rejoin's node_job_timeout_s
        in_rejoin.set()
        await done.wait()
        return [ok, ok, ok]

    async def two_posts(body: dict[str, Any]) -> list[Any]:
        posted_by_two.append(body)
        return [ok, ok, ok]

    one._flush_all = two._flush_all = flushed  # type: ignore[method-assign]
    one._post_all, two._post_all = one_posts, two_posts  # type: ignore[method-assign]

    async def go() -> None:
        first = asyncio.create_task(one.job("refund_check", {"refundId": "rfd_1"}))
        await in_rejoin.wait()
        try:
            with pytest.raises(NodeError) as err:
                await two.job("refund_check", {"refundId": "rfd_2"})
            assert err.value.code == "NODE_BUSY"
        finally:
            done.set()
            await first
        assert posted_by_two == []

    run(go())


def test_a_replay_to_a_replica_whose_clock_runs_behind_after_the_other_purged(
        tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    net = Net(tmp_path, database=postgres_url, request_window_s=30)
    net.replica("gateway-2.test")
    raw = b'{"paymentRequestId":"none"}'
    real = time.time
    t0 = real()
    v, sk = net.keys("acqp-1").signer()
    h = sign_headers(sk, v, "POST", INQUIRY, "acqp-1", raw, t0 + 29.9)  # dated ahead, within the window
    h["Content-Type"] = "application/json"

    async def go() -> None:
        assert _code(await _post(net, "gateway.test", INQUIRY, raw, h)) == "ORDER_NOT_EXIST"
        behind = t0 + 60 - 0.3  # replica 2's clock, 60 s on; replica 1's runs 0.5 s ahead of it
        monkeypatch.setattr(time, "time", lambda: real() - t0 + behind + 0.5)
        await net.gateway.state.service.purge_seen()
        monkeypatch.setattr(time, "time", lambda: real() - t0 + behind)
        r = await _post(net, "gateway-2.test", INQUIRY, raw, h)
        assert (r.status_code, _code(r)) in ((401, "REPLAYED_REQUEST"), (401, "REQUEST_TIME_EXPIRED")), _code(r)

    run(go())


# ====================================================================== 5. the seams under the replicas
def _due_payment(i: int) -> dict[str, Any]:
    return {"id": f"pay_due_{i:04d}", "acqp_id": "acqp-1", "payment_request_id": f"due-{i}", "request_hash": "0" * 64,
            "mpp_id": "mpp-1", "code_issuer": "2810", "currency": "JPY", "amount": 100, "amount_sealed": None,
            "refund_count": 0, "status": "PROCESSING", "result_code": "PAYMENT_IN_PROCESS", "result_message": "",
            "customer_token": None, "forward": "{}", "customer_info": None, "risk_result": None, "refunded": 0,
            "cancel_requested": False, "created_ms": 1, "updated_ms": 1, "payment_time_ms": None,
            "expires_ms": 2**40, "next_check_ms": 0, "attempts": 0}


def test_resolvers_on_both_replicas_never_claim_one_row_twice(tmp_path: Path, postgres_url: str) -> None:
    """Eight claims at once, four from each replica, over 120 due payments: no row is
    claimed by two of them, and rounds of claims (each lease run out) take them all."""
    net = Net(tmp_path, database=postgres_url)
    second = net.replica("gateway-2.test")
    engine = net.gateway.state.engine
    with engine.begin() as conn:
        conn.execute(payments.insert(), [_due_payment(i) for i in range(120)])
    ledgers = (net.gateway.state.service.ledger, second.state.service.ledger)

    async def go() -> None:
        seen: set[str] = set()
        for _ in range(10):
            now = int(time.time() * 1000)
            got = await asyncio.gather(*[ledgers[k % 2].claim_due(now, 60_000, 25) for k in range(8)])
            ids = [p for pids, rids in got for p in pids]
            assert len(ids) == len(set(ids)) and not set(ids) & seen, "a row claimed twice"
            seen |= set(ids)
            if len(seen) == 120:
                break
        assert len(seen) == 120

    run(go())


def test_a_failing_unit_in_a_group_and_a_cancelled_waiter(tmp_path: Path, postgres_url: str) -> None:
    """GroupCommit on PostgreSQL: a replayed nonce in a group of three fails only its
    own caller (the others commit, counted once); a caller cancelled before its group
    leaves writes nothing; one cancelled while its group commits still has its write."""
    net = Net(tmp_path, database=postgres_url)
    db = net.gateway.state.db
    ledger = net.gateway.state.service.ledger
    engine = net.gateway.state.engine
    from sqlalchemy.exc import IntegrityError

    async def go() -> None:
        sec = int(time.time())
        await ledger.record_seen("acqp-1", "d" * 64, 2**40, sec)
        got = await asyncio.gather(ledger.record_seen("acqp-1", "a" * 64, 2**40, sec),
                                   ledger.record_seen("acqp-1", "d" * 64, 2**40, sec),
                                   ledger.record_seen("acqp-1", "c" * 64, 2**40, sec), return_exceptions=True)
        assert isinstance(got[1], IntegrityError) and sorted(got[::2]) == [2, 3], got  # type: ignore[type-var]
        early = asyncio.create_task(ledger.record_seen("acqp-1", "e" * 64, 2**40))
        await asyncio.sleep(0)
        early.cancel()
        gate = threading.Event()

        def held(conn: Any) -> None:
            gate.wait(5)
            conn.execute(seen_requests.insert().values(client_id="acqp-1", digest="f" * 64, expires_ms=2**40))
        late = asyncio.create_task(db.grouped(held))
        await asyncio.sleep(0.05)
        late.cancel()
        gate.set()
        for t in (early, late):
            with pytest.raises(asyncio.CancelledError):
                await t
        await db.write(lambda conn: None)  # the pool is FIFO past the held unit's group
        await asyncio.sleep(0.1)

    run(go())
    with engine.connect() as conn:
        digests = {d[0] for d in conn.execute(select(seen_requests.c.digest)).scalars()}
        count = conn.execute(select(rate_windows.c.count)).scalar_one()
    assert digests == {"a", "c", "d", "f"} and count == 3


# Each group runs its units sorted by the rows they lock (GroupCommit's ``order``): both
# groups take acqp-1's rate row first, so one waits for the other instead of a deadlock.
def test_two_groups_meeting_two_acquirers_in_opposite_orders_do_not_stall(tmp_path: Path,
                                                                           postgres_url: str) -> None:
    net = Net(tmp_path, database=postgres_url, rate_limit_per_s=100)
    second = net.replica("gateway-2.test")
    dbs = (net.gateway.state.db, second.state.db)
    ledgers = (net.gateway.state.service.ledger, second.state.service.ledger)

    def busy(conn: Any) -> None:  # the units of other requests between the two (their inserts, a lock wait)
        time.sleep(0.3)

    async def group(k: int, first: str, then: str, sec: int) -> Any:
        return await asyncio.gather(ledgers[k].record_seen(first, f"{k}a".ljust(64, "0"), 2**40, sec),
                                    dbs[k].grouped(busy),
                                    ledgers[k].record_seen(then, f"{k}b".ljust(64, "0"), 2**40, sec))

    async def go() -> float:
        sec = int(time.time()) + 5  # a second of its own
        started = time.monotonic()
        one = asyncio.create_task(group(0, "acqp-1", "acqp-2", sec))
        await asyncio.sleep(0.05)
        await asyncio.gather(one, group(1, "acqp-2", "acqp-1", sec))
        return time.monotonic() - started

    took = run(go())
    with net.gateway.state.engine.connect() as conn:
        counts = dict(conn.execute(select(rate_windows.c.client_id, rate_windows.c.count)).all())
    assert counts == {"acqp-1": 2, "acqp-2": 2}  # correct either way: the split reruns each unit
    assert took < 0.95, f"the groups took {took:.2f} s: a deadlock and its 1 s timeout"


class _LoseAnswers(httpx.AsyncBaseTransport):
    """Delivers each request to the router but loses the answer of the first ``n``
    calls to gateway.test's ``paths`` (a replica that stops answering after it acted)."""

    def __init__(self, router: Any, paths: set[str], n: int = 1) -> None:
        self.router, self.paths, self.n = router, paths, n
        self.lost: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self.router.handle_async_request(request)
        if request.url.host == "gateway.test" and request.url.path in self.paths and len(self.lost) < self.n:
            self.lost.append(request.url.path)
            raise httpx.ReadTimeout("answer lost", request=request)
        return resp


def test_the_sdk_failing_over_after_a_replica_acted_never_acts_twice(tmp_path: Path, postgres_url: str) -> None:
    """A replica takes a pay, a refund and a cancel and then its answers are lost; the
    SDK sends each again, same body, to the other replica: one payment, one refund,
    one cancel; the wallet debited and credited once."""
    net = Net(tmp_path, database=postgres_url)
    net.replica("gateway-2.test")
    from veilpay.sdk import AsyncGatewayClient

    start = 10**9

    async def go() -> None:
        await net.wallet("u1", start)
        urls = ["http://gateway.test", "http://gateway-2.test"]
        for path, n in (("/v1/payments/pay", 2), ("/v1/payments/refund", 1), ("/v1/payments/cancelPayment", 1)):
            lose = _LoseAnswers(net.router, {path}, n)
            c = AsyncGatewayClient(net.keys("acqp-1"), urls, net.gw_public, transport=lose, authority=net.authority,
                                   backoff=0.001)
            if path.endswith("pay"):
                a = await c.pay("fo-1", _jpy(1000), await net.code("u1"), ORDER)
                c._at = 0
                b = await c.pay("fo-2", _jpy(500), await net.code("u1"), ORDER)
                assert a.code == b.code == "SUCCESS" and c.url == "http://gateway-2.test"
            elif path.endswith("refund"):
                assert (await c.refund("fo-r", _jpy(300), payment_request_id="fo-1")).code == "SUCCESS"
            else:
                assert (await c.cancel_payment(payment_request_id="fo-2")).code == "SUCCESS"
            assert len(lose.lost) == n
            await c.aclose()
        ledger = {p["payment_id"]: p for p in (await net.admin("mpp-1", "GET", "/admin/ledger"))["payments"]}
        assert len(ledger) == 2
        assert sorted((p["status"], p["refunded"]) for p in ledger.values()) == [("CANCELLED", 0), ("SUCCESS", 300)]
        assert await net.balance("u1") == _books_balance(list(ledger.values()), start)
        engine = net.gateway.state.engine
        assert _count(engine, select(func.count()).select_from(refunds)) == 1
        assert _count(engine, select(func.count()).select_from(payments)) == 2

    run(go())


def test_replicas_migrating_a_new_database_at_once(postgres_url: str) -> None:
    """Six replicas start together on an empty database, each migrating it: one
    migrates, the others wait on the advisory lock and find it at the newest revision."""
    from veilpay.gateway.store import make_engine, migrate

    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def start() -> None:
        engine = make_engine(postgres_url)
        try:
            barrier.wait()
            migrate(engine)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            engine.dispose()

    ts = [threading.Thread(target=start) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert errors == []
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0006"]
            assert conn.execute(text("SELECT count(*) FROM leases")).scalar_one() == 0
    finally:
        engine.dispose()
