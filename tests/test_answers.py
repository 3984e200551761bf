"""Answers bound to their requests, tried as the attacker who relays or replays them:
another request's answer replayed (the MPP's refund success for r1 as the answer to
r2), a signed answer collected by an unauthenticated caller and served to the real
partner, an answer passed off as a request, a replayed operator call, and the replay
guard's false positives (identical requests in the same millisecond)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from gateway_net import Net, run

from veilpay.crypto.signing import SigningKey
from veilpay.errors import SignatureError
from veilpay.sdk.signing import post_headers, request_digest, sign_headers, verify_message

ORDER = {"orderId": "A-1", "goods": "matcha"}
JPY = {"currency": "JPY", "value": "1000"}


class Replayer(httpx.AsyncBaseTransport):
    """In front of one app: keeps the first answer to ``path`` and serves it again for
    every later call to that path (a relay replaying a captured answer)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, path: str) -> None:
        self.inner, self.path, self.kept = inner, path, None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self.inner.handle_async_request(request)
        raw = await resp.aread()
        if request.url.path == self.path:
            if self.kept is None:
                self.kept = (resp.status_code, dict(resp.headers), raw)
            else:
                status, headers, raw = self.kept
                return httpx.Response(status, headers=headers, content=raw, request=request)
        return httpx.Response(resp.status_code, headers=resp.headers, content=raw, request=request)


def test_another_requests_answer_replayed_is_refused(tmp_path: Path) -> None:
    """The MPP's signed success answer to refund r1, replayed as its answer to refund r2:
    the gateway refuses it (it answers another request), r2 stays pending, the MPP never
    saw r2, and nothing was refunded twice."""
    net = Net(tmp_path, mpp_timeout_s=0.5)

    async def go() -> None:
        await net.wallet("u1", 10**6)
        c = net.client(retries=0)
        assert (await c.pay("p", JPY, await net.code("u1"), ORDER)).code == "SUCCESS"
        net.router.apps["mpp-1.test"] = Replayer(net.router.apps["mpp-1.test"], "/mpp/v1/refund")  # type: ignore[assignment]
        assert (await c.refund("r1", {"currency": "JPY", "value": "100"}, payment_request_id="p")).code == "SUCCESS"
        r2 = await c.refund("r2", {"currency": "JPY", "value": "200"}, payment_request_id="p")
        assert r2.code == "REFUND_IN_PROCESS" and r2.status == "U"
        mpp_refunds = [b for h, p, b, _ in net.router.log if h == "mpp-1.test" and p == "/mpp/v1/refund"]
        assert len(mpp_refunds) >= 2  # the gateway did call for r2; the answer it got was r1's
        await c.aclose()

    run(go())


def test_no_signed_answer_for_a_caller_that_did_not_authenticate(tmp_path: Path) -> None:
    """Anyone may send a request naming acqp-1 as Client-Id. The gateway's refusal comes
    back unsigned, so there is nothing to serve to acqp-1 later as the answer to its own
    call; and a genuine signed answer to one of acqp-1's requests does not pass as the
    answer to another."""
    net = Net(tmp_path)

    async def go() -> None:
        path = "/v1/payments/inquiryPayment"
        raw = json.dumps({"paymentRequestId": "x"}).encode()
        h = sign_headers(SigningKey.generate(), 1, "POST", path, "acqp-1", raw, time.time())
        h["Content-Type"] = "application/json"
        async with httpx.AsyncClient(transport=net.router) as http:
            stranger = await http.post("http://gateway.test" + path, content=raw, headers=h)
        assert stranger.status_code == 401 and stranger.json()["result"]["resultCode"] == "INVALID_SIGNATURE"
        assert "signature" not in stranger.headers
        # a genuine answer, kept by a relay, served as the answer to another call
        me = net.keys("acqp-1")
        first = post_headers(me.signer(), path, "acqp-1", raw)
        async with httpx.AsyncClient(transport=net.router) as http:
            genuine = await http.post("http://gateway.test" + path, content=raw, headers=first)
        verify_message({k.lower(): v for k, v in genuine.headers.items()}, "POST", path, genuine.content,
                       net.gw_public.verify_key, time.time(), 300, "Response-Time", request_digest(first))
        second = post_headers(me.signer(), path, "acqp-1", raw)
        with pytest.raises(SignatureError):
            verify_message({k.lower(): v for k, v in genuine.headers.items()}, "POST", path, genuine.content,
                           net.gw_public.verify_key, time.time(), 300, "Response-Time", request_digest(second))

    run(go())


def test_an_answer_does_not_pass_as_a_request() -> None:
    key = SigningKey.generate()
    now = time.time()
    body = b'{"paymentRequestId":"x"}'
    req = {k.lower(): v for k, v in sign_headers(key, 1, "POST", "/p", "acqp-1", body, now).items()}
    ans = {k.lower(): v for k, v in sign_headers(key, 1, "POST", "/p", "acqp-1", body, now, "Response-Time",
                                                  "ab" * 32).items()}
    verify_message(req, "POST", "/p", body, {1: key.public()}.get, now, 60)
    for headers in ({**ans, "request-time": ans["response-time"], "request-nonce": "A" * 22},
                    {**ans, "request-time": ans["response-time"], "request-nonce": "ab" * 32}):
        with pytest.raises(SignatureError):
            verify_message(headers, "POST", "/p", body, {1: key.public()}.get, now, 60)
    with pytest.raises(SignatureError):  # nor a request as an answer
        verify_message({**req, "response-time": req["request-time"]}, "POST", "/p", body, {1: key.public()}.get,
                       now, 60, "Response-Time", request_digest(req))


def test_identical_genuine_requests_at_once_are_all_served(tmp_path: Path) -> None:
    """500 concurrent identical inquiries (same body, same millisecond): each carries its
    own signed nonce, so none is taken for a replay; a true replay still is."""
    net = Net(tmp_path)

    async def go() -> None:
        await net.wallet("u1", 10**6)
        c = net.client(retries=0)
        assert (await c.pay("same", JPY, await net.code("u1"), ORDER)).code == "SUCCESS"
        got = await asyncio.gather(*[c.inquiry_payment(payment_request_id="same") for _ in range(500)])
        assert {g.code for g in got} == {"SUCCESS"}
        path = "/v1/payments/inquiryPayment"
        raw = json.dumps({"paymentRequestId": "same"}).encode()
        h = post_headers(net.keys("acqp-1").signer(), path, "acqp-1", raw)
        async with httpx.AsyncClient(transport=net.router) as http:
            once = await http.post("http://gateway.test" + path, content=raw, headers=h)
            again = await http.post("http://gateway.test" + path, content=raw, headers=h)
        assert once.json()["result"]["resultCode"] == "SUCCESS"
        assert (again.status_code, again.json()["result"]["resultCode"]) == (401, "REPLAYED_REQUEST")
        await c.aclose()

    run(go())


def test_a_replayed_operator_call_is_refused(tmp_path: Path) -> None:
    net = Net(tmp_path, privacy="semi2k")

    async def go() -> None:
        path = "/admin/v1/analytics"
        raw = json.dumps({"period": "2001-01-01"}).encode()
        h = post_headers(net.gateway_keys.signer(), path, "gateway", raw)
        async with httpx.AsyncClient(transport=net.router) as http:
            first = (await http.post("http://gateway.test" + path, content=raw, headers=h)).json()
            second = await http.post("http://gateway.test" + path, content=raw, headers=h)
        assert first["result"]["resultCode"] != "REPLAYED_REQUEST"
        assert second.json()["result"]["resultCode"] == "REPLAYED_REQUEST" and "signature" not in second.headers

    run(go())


def test_answers_echo_the_ids_they_answer(tmp_path: Path) -> None:
    """A signed answer naming another payment is refused by the SDK."""
    from veilpay.sdk.client import ApiResponse

    net = Net(tmp_path)
    c = net.client()
    me, gw = net.keys("acqp-1"), net.gateway_keys
    path = "/v1/payments/inquiryPayment"
    sent = {"paymentRequestId": "mine"}
    req = post_headers(me.signer(), path, "acqp-1", json.dumps(sent).encode())
    body = json.dumps({"result": {"resultCode": "SUCCESS", "resultStatus": "S", "resultMessage": "ok"},
                       "paymentRequestId": "someone-else"}).encode()
    v, k = gw.signer()
    headers = sign_headers(k, v, "POST", path, "acqp-1", body, time.time(), "Response-Time", request_digest(req))
    resp = httpx.Response(200, headers=headers, content=body)
    with pytest.raises(SignatureError):
        c._answer(path, resp, 1, request_digest(req), sent)
    ok = body.replace(b"someone-else", b"mine")
    headers = sign_headers(k, v, "POST", path, "acqp-1", ok, time.time(), "Response-Time", request_digest(req))
    assert isinstance(c._answer(path, httpx.Response(200, headers=headers, content=ok), 1, request_digest(req), sent),
                      ApiResponse)

