"""Coalesced partner calls: payments to one MPP sharing a payBatch call, webhooks to an
ACQP sharing a notifyBatch call, the Coalescer underneath, and the SDK's aiohttp
transport over a real socket."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from gateway_net import Net, run
from sqlalchemy import select

from veilpay.errors import SignatureError
from veilpay.gateway.batch import Coalescer
from veilpay.gateway.store import outbox, payments
from veilpay.sdk.signing import post_headers
from veilpay.sdk.transport import AiohttpTransport

JPY = {"currency": "JPY", "value": "1000"}
ORDER = {"orderId": "A-1", "goods": "matcha"}


# ---------------------------------------------------------------- the Coalescer
class _Partner:
    """A fake partner call that records each batch and holds it until released, and
    the most calls it had open at once per partner."""

    def __init__(self, fail_on: int | None = None, wrong_count: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail_on, self.wrong_count = fail_on, wrong_count
        self.open: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self._arrived = asyncio.Condition()

    async def send(self, partner: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.batches.append([i["n"] for i in items])
        self.open[partner] = self.open.get(partner, 0) + 1
        self.peak[partner] = max(self.peak.get(partner, 0), self.open[partner])
        async with self._arrived:
            self._arrived.notify_all()
        try:
            await self.release.wait()
        finally:
            self.open[partner] -= 1
        if self.fail_on is not None and self.fail_on in [i["n"] for i in items]:
            raise ConnectionError("partner down")
        answers = [{"n": i["n"], "to": partner} for i in items]
        return answers[:-1] if self.wrong_count else answers

    async def reached(self, calls: int) -> None:
        """Until ``calls`` calls have reached the partner: the test's barrier, instead of
        a sleep that guesses how long they take to get there."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.batches) >= calls)


def test_coalescer_sends_the_first_alone_and_the_rest_together() -> None:
    async def body() -> None:
        p = _Partner()
        c = Coalescer(p.send, max_batch=3, in_flight=1)
        calls = [asyncio.create_task(c.call("mpp-1", {"n": n})) for n in range(6)]
        await p.reached(1)  # the other five were queued before the first call could start
        assert p.batches == [[0]]  # one call in flight: the others wait for it
        p.release.set()
        got = await asyncio.gather(*calls)
        assert got == [{"n": n, "to": "mpp-1"} for n in range(6)]  # each its own answer
        assert p.batches == [[0], [1, 2, 3], [4, 5]]  # at most max_batch per call
    run(body())


def test_coalescer_keeps_partners_apart_and_honours_in_flight() -> None:
    async def body() -> None:
        p = _Partner()
        c = Coalescer(p.send, max_batch=10, in_flight=2)
        calls = [asyncio.create_task(c.call(f"mpp-{n % 2}", {"n": n})) for n in range(6)]
        await p.reached(4)
        assert sorted(p.batches) == [[0], [1], [2], [3]]  # two open calls per partner; 4 and 5 wait
        # created before the release, so it runs (and queues) before any open call returns
        calls += [asyncio.create_task(c.call("mpp-0", {"n": 9}))]
        p.release.set()
        got = await asyncio.gather(*calls)
        assert [g["to"] for g in got] == ["mpp-0", "mpp-1"] * 3 + ["mpp-0"]
        assert p.peak == {"mpp-0": 2, "mpp-1": 2}  # no third call while two are open
        assert sorted(p.batches) == [[0], [1], [2], [3], [4, 9], [5]]  # what waited for mpp-0 left together
    run(body())


def test_coalescer_fails_only_the_items_of_a_failed_call() -> None:
    async def body() -> None:
        p = _Partner(fail_on=2)
        c = Coalescer(p.send, max_batch=2, in_flight=1)
        calls = [asyncio.create_task(c.call("mpp-1", {"n": n})) for n in range(5)]
        await p.reached(1)
        p.release.set()
        got = await asyncio.gather(*calls, return_exceptions=True)
        assert p.batches == [[0], [1, 2], [3, 4]]
        assert [isinstance(g, ConnectionError) for g in got] == [False, True, True, False, False]
    run(body())


def test_coalescer_refuses_a_wrong_number_of_answers_and_cancels_on_close() -> None:
    async def body() -> None:
        p = _Partner(wrong_count=True)
        c = Coalescer(p.send)
        p.release.set()
        with pytest.raises(ValueError, match="answers to"):
            await c.call("mpp-1", {"n": 1})
        held = _Partner()
        c2 = Coalescer(held.send)
        waiting = asyncio.create_task(c2.call("mpp-1", {"n": 1}))
        await held.reached(1)  # the call is open at the partner when the coalescer closes
        await c2.aclose()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        with pytest.raises(ValueError):
            Coalescer(p.send, max_batch=0)
    run(body())


# ---------------------------------------------------------------- payBatch through the network
async def _codes(net: Net, n: int) -> list[str]:
    await net.wallet("u1", 10**7)
    return [await net.code("u1") for _ in range(n)]


def test_concurrent_payments_share_paybatch_calls(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path)
        codes = await _codes(net, 8)
        c = net.client()
        got = await asyncio.gather(*[c.pay(f"b-{i}", JPY, code, ORDER) for i, code in enumerate(codes)])
        assert [g.code for g in got] == ["SUCCESS"] * 8
        calls = [json.loads(body) for host, path, body, _ in net.router.log if path == "/mpp/v1/payBatch"]
        assert sum(len(c["payments"]) for c in calls) == 8
        assert 1 < len(calls) < 8  # the first went alone, the rest shared calls
        assert not [p for _, p, _, _ in net.router.log if p == "/mpp/v1/pay"]
        assert await net.balance("u1") == 10**7 - 8 * 38000  # each debited once
        # a re-sent batch is answered from the MPP's records: no second debit
        again = await net.gateway.state.service.pay_calls.call("mpp-1", calls[-1]["payments"][0])
        assert again["result"]["resultStatus"] == "S"
        assert await net.balance("u1") == 10**7 - 8 * 38000
    run(body())


def test_forward_batch_one_makes_one_call_per_payment(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path, forward_batch=1)
        codes = await _codes(net, 3)
        c = net.client()
        got = await asyncio.gather(*[c.pay(f"s-{i}", JPY, code, ORDER) for i, code in enumerate(codes)])
        assert [g.code for g in got] == ["SUCCESS"] * 3
        paths = [p for _, p, _, _ in net.router.log if p.startswith("/mpp/")]
        assert paths == ["/mpp/v1/pay"] * 3
    run(body())


async def _signed_to(net: Net, host: str, path: str, obj: Any) -> tuple[int, dict[str, Any]]:
    raw = json.dumps(obj).encode()
    h = post_headers(net.gateway_keys.signer(), path, host, raw)
    async with httpx.AsyncClient(transport=net.router) as cl:
        r = await cl.post(f"http://{host}.test{path}", content=raw, headers=h)
    return r.status_code, r.json()


def test_paybatch_answers_each_item_and_refuses_bad_lists(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path)
        codes = await _codes(net, 1)
        assert (await net.client().pay("p-1", JPY, codes[0], ORDER)).code == "SUCCESS"
        with net.gateway.state.engine.connect() as conn:
            row = conn.execute(select(payments)).one()
        good = {"paymentId": row.id, "paymentRequestId": "p-1", "acquirerId": "acqp-1", "paymentAmount": JPY,
                **json.loads(row.forward)}
        status, ans = await _signed_to(net, "mpp-1", "/mpp/v1/payBatch",
                                       {"payments": [good, {"paymentId": "pay_x"}, "not an object"]})
        assert status == 200 and ans["result"]["resultStatus"] == "S"
        a = ans["answers"]
        assert [x["paymentId"] for x in a] == [row.id, "pay_x", None]
        assert a[0]["result"]["resultStatus"] == "S"  # the stored answer, not a second debit
        assert [x["result"]["resultCode"] for x in a[1:]] == ["PARAM_ILLEGAL", "PARAM_ILLEGAL"]
        assert await net.balance("u1") == 10**7 - 38000
        for bad in ({"payments": []}, {"payments": [good] * 257}, {"payments": "x"}):
            status, ans = await _signed_to(net, "mpp-1", "/mpp/v1/payBatch", bad)
            assert ans["result"]["resultCode"] == "PARAM_ILLEGAL"
    run(body())


def test_paybatch_ledger_steps_commit_together_each_on_its_own_terms(tmp_path: Path) -> None:
    """The MPP runs a batch's items at once and commits their ledger steps in one
    transaction; a duplicate item, a used code and a sealed field that does not open
    are each answered as they would be alone, and only the good payments debit."""
    async def body() -> None:
        net = Net(tmp_path)
        codes = await _codes(net, 3)
        c = net.client()
        d = await c.directory()

        def item(n: int, code: str) -> dict[str, Any]:
            b = c._pay_body(d, f"t-{n}", JPY, code, ORDER, None)
            return {"paymentId": f"pay_t{n}", "paymentRequestId": f"t-{n}", "acquirerId": "acqp-1", **b}

        good0, good1, reused = item(0, codes[0]), item(1, codes[1]), item(2, codes[0])
        broken = item(3, codes[2])
        no_wallet = item(4, await net.code("ghost"))  # a code whose holder has no wallet
        env = broken["order"]
        broken["order"] = {**env, "ct": env["ct"][:-4] + ("AAAA" if env["ct"][-4:] != "AAAA" else "BBBB")}
        writes = net.partner_apps["mpp-1"].state.writes
        before = writes.groups
        status, ans = await _signed_to(net, "mpp-1", "/mpp/v1/payBatch",
                                       {"payments": [good0, good1, good0, reused, broken, no_wallet]})
        assert status == 200 and ans["result"]["resultStatus"] == "S"
        a = ans["answers"]
        assert [x["paymentId"] for x in a] == ["pay_t0", "pay_t1", "pay_t0", "pay_t2", "pay_t3", "pay_t4"]
        assert [x["result"]["resultCode"] for x in a] == ["SUCCESS", "SUCCESS", "SUCCESS", "INVALID_CODE",
                                                          "PROCESS_FAIL", "CURRENCY_NOT_SUPPORT"]
        assert a[0] == a[2]  # the re-sent item gets the first answer, not a second debit
        assert "walletAmount" not in a[0]
        assert writes.groups == before + 1
        assert await net.balance("u1") == 10**7 - 2 * 38000
        ledger = {p["payment_id"]: p for p in (await net.admin("mpp-1", "GET", "/admin/ledger"))["payments"]}
        assert [ledger[f"pay_t{i}"]["status"] for i in range(5)] == ["SUCCESS", "SUCCESS", "FAIL", "FAIL", "FAIL"]
        # the code left unused by the broken item still pays
        assert (await c.pay("t-9", JPY, codes[2], ORDER)).code == "SUCCESS"
    run(body())


# ---------------------------------------------------------------- notifyBatch
def test_notify_batch_delivers_together_and_applies_each_once(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path, batch_notify=True, webhook_backoff_s=0.0)
        codes = await _codes(net, 5)
        await net.admin("acqp-1", "POST", "/admin/faults", {"drop_before": 1, "drop_after": 1})
        c = net.client()
        for i, code in enumerate(codes):
            assert (await c.pay(f"n-{i}", JPY, code, ORDER)).code == "SUCCESS"
        for _ in range(4):
            await net.deliver()
        got = await net.notifications()
        assert len(got["notifications"]) == 5  # each applied once
        assert {n["deliveries"] for n in got["notifications"]} == {2}  # refused call not counted; lost answer was
        assert got["wire"] == 15  # three calls of five: refused, applied with the answer lost, acknowledged
        calls = [p for _, p, _, _ in net.router.log if p.startswith("/notify")]
        assert calls == ["/notifyBatch"] * 3
        with net.gateway.state.engine.connect() as conn:
            rows = conn.execute(select(outbox.c.status, outbox.c.attempts)).all()
        assert set(rows) == {("DELIVERED", 3)}
    run(body())


def test_outbox_worker_lingers_so_that_webhooks_share_a_call(tmp_path: Path) -> None:
    """The running worker waits webhook_linger_s after a webhook falls due: the
    webhooks of payments that finish meanwhile go in the same notifyBatch call, and
    the payments themselves do not wait for it."""
    async def run_with(linger: float, sub: str) -> tuple[list[int], float]:
        net = Net(tmp_path / sub, batch_notify=True, webhook_linger_s=linger)
        codes = await _codes(net, 4)
        c = net.client()
        stop = asyncio.Event()
        worker = asyncio.create_task(net.gateway.state.outbox.run(stop))
        t = asyncio.get_running_loop().time()
        for i, code in enumerate(codes):  # one after another: each finishes before the next starts
            assert (await c.pay(f"l-{i}", JPY, code, ORDER)).code == "SUCCESS"
        paid = asyncio.get_running_loop().time() - t
        for _ in range(200):
            if len((await net.notifications())["notifications"]) == 4:
                break
            await asyncio.sleep(0.02)
        stop.set()
        await worker
        sizes = [len(json.loads(b)["notifications"]) for _, p, b, _ in net.router.log if p == "/notifyBatch"]
        return sizes, paid

    async def body() -> None:
        sizes, paid = await run_with(2.0, "long")
        assert sizes == [4]  # all four in one call
        assert paid < 2.0    # the payments did not wait for the linger
        sizes, _ = await run_with(0.0, "none")
        assert sum(sizes) == 4 and len(sizes) > 1  # without it, a call as soon as each is due
    run(body())


def test_notify_batch_refuses_a_bad_item_alone(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path, batch_notify=True)
        item = {"notifyId": "ntf_1", "notifyType": "PAYMENT_RESULT", "paymentId": "pay_1",
                "paymentRequestId": "r", "paymentResult": {"resultCode": "SUCCESS", "resultStatus": "S"}}
        no_amount = {"notifyId": "ntf_2", "notifyType": "REFUND_RESULT", "refundId": "rfd_1", "paymentRequestId": "r",
                     "refundResult": {"resultCode": "SUCCESS", "resultStatus": "S"}}
        status, ans = await _signed_to(net, "acqp-1", "/notifyBatch",
                                       {"notifications": [item, {"no": "id"}, item, no_amount]})
        assert status == 200
        assert [a["result"]["resultStatus"] for a in ans["answers"]] == ["S", "F", "S", "F"]
        got = await net.notifications()
        assert [(n["notify_id"], n["deliveries"]) for n in got["notifications"]] == [("ntf_1", 2)]
        # distinct notifications of one call are applied in one transaction
        writes = net.partner_apps["acqp-1"].state.writes
        before = writes.groups
        fresh = [{**item, "notifyId": f"ntf_{i}"} for i in range(10, 15)]
        status, ans = await _signed_to(net, "acqp-1", "/notifyBatch", {"notifications": fresh})
        assert [a["result"]["resultStatus"] for a in ans["answers"]] == ["S"] * 5
        assert writes.groups == before + 1
        assert len((await net.notifications())["notifications"]) == 6
        status, ans = await _signed_to(net, "acqp-1", "/notifyBatch", {"notifications": "x"})
        assert status == 400 and ans["result"]["resultCode"] == "PARAM_ILLEGAL"
    run(body())


# ---------------------------------------------------------------- the SDK's aiohttp transport
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_aiohttp_transport_round_trip_and_errors() -> None:
    async def body() -> None:
        async def echo(request: web.Request) -> web.Response:
            raw = await request.read()
            return web.json_response({"method": request.method, "body": raw.decode(),
                                      "client": request.headers.get("Client-Id")}, headers={"X-Seen": "1"})

        async def slow(_request: web.Request) -> web.Response:
            await asyncio.sleep(2)
            return web.Response(text="late")

        app = web.Application()
        app.router.add_post("/echo", echo)
        app.router.add_get("/slow", slow)
        runner = web.AppRunner(app)
        await runner.setup()
        port = _free_port()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        t = AiohttpTransport(connections=4)
        try:
            async with httpx.AsyncClient(transport=t, timeout=0.3) as c:
                r = await c.post(f"http://127.0.0.1:{port}/echo", content=b'{"a":1}', headers={"Client-Id": "acqp-1"})
                assert r.status_code == 200 and r.headers["x-seen"] == "1"
                assert r.json() == {"method": "POST", "body": '{"a":1}', "client": "acqp-1"}
                with pytest.raises(httpx.ReadTimeout):
                    await c.get(f"http://127.0.0.1:{port}/slow")
                with pytest.raises(httpx.ConnectError):
                    await c.get(f"http://127.0.0.1:{_free_port()}/none")
        finally:
            await t.aclose()
            await runner.cleanup()
    run(body())


def test_sdk_over_aiohttp_transport_verifies_the_gateway(tmp_path: Path) -> None:
    """The SDK's checks are the same over the aiohttp wire: a local server answers the
    directory signed with the gateway's key, then with a body altered after signing."""
    async def body() -> None:
        net = Net(tmp_path)
        keys = net.gateway_keys
        tamper = {"on": False}

        async def directory(request: web.Request) -> web.Response:
            from veilpay.sdk.signing import sign_headers

            raw = json.dumps(net.gateway.state.directory().to_json()).encode()
            v, k = keys.signer()
            import time

            from veilpay.sdk.signing import get_digest

            client = request.headers["Client-Id"]
            h = sign_headers(k, v, "GET", "/v1/directory", client, raw, time.time(), "Response-Time",
                             get_digest("/v1/directory", client, request.headers["Request-Nonce"]))
            if tamper["on"]:
                raw = raw.replace(b"mpp-1", b"mpp-9")
            return web.Response(body=raw, headers=h, content_type="application/json")

        async def entries(request: web.Request) -> web.Response:  # public and unsigned, as the gateway's
            from veilpay.sdk.authority import KeyLog

            start = int(request.query["start"])
            return web.json_response({"start": start, "entries": KeyLog(net.authority_dir / "log").entries(start, 10**6)})

        app = web.Application()
        app.router.add_get("/v1/directory", directory)
        app.router.add_get("/v1/log/entries", entries)
        runner = web.AppRunner(app)
        await runner.setup()
        port = _free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        c = net.client(transport=AiohttpTransport())
        c.urls = [f"http://127.0.0.1:{port}"]
        try:
            d = await c.directory()
            assert d.get("mpp-1") is not None
            tamper["on"] = True
            with pytest.raises(SignatureError):
                await c.directory(refresh=True)
        finally:
            await c.aclose()
            await runner.cleanup()
    run(body())
