"""The partner SDK's gateway client (httpx), blocking and asyncio flavours.

It signs each request with the partner's newest signing key, seals personal field
groups to the receiving partner with HPKE, verifies the gateway's signature on every
response (and on the directory), and retries safely: a retry of ``pay`` or ``refund``
re-sends the same ``paymentRequestId`` / ``refundRequestId`` (freshly signed), which the
gateway answers from its idempotency record, so a retry never pays twice.

When the directory announces privacy nodes, amounts leave the SDK hidden: sealed to
the MPP and to this ACQP, and secret-shared to the nodes (``veilpay.sdk.shares``);
amounts in answers come back sealed to us and are opened here, so callers see
``{currency, value}`` either way.

``pets=False`` sends the same requests with the field groups in the clear; it exists
only to measure what the privacy features cost (``bench/gateway.py``)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import httpx

from veilpay.errors import (
    ConfigError,
    GatewayUnavailable,
    InvalidInput,
    LogInconsistent,
    MalformedBody,
    SignatureError,
)
from veilpay.sdk import wirejson
from veilpay.sdk.authority import Authority, KeyTrust
from veilpay.sdk.directory import Directory
from veilpay.sdk.envelope import SessionSealer, open_fields, seal_fields
from veilpay.sdk.keys import PartyKeys, PublicEntry
from veilpay.sdk.money import parse_amount
from veilpay.sdk.settlement import summaries
from veilpay.sdk.shares import Privacy, reveal_amounts, seal_amount
from veilpay.sdk.signing import (
    NONCE_HEADER,
    SignedHeaders,
    get_digest,
    signed_post,
    verify_json,
)

__all__ = ["ApiResponse", "AsyncGatewayClient", "GatewayClient", "PAY_PATH"]

PAY_PATH = "/v1/payments/pay"
_ECHOED = ("paymentRequestId", "paymentId", "refundRequestId", "refundId")  # an answer names what it answers
_RETRY_CODES = {"UNKNOWN_EXCEPTION", "PAYMENT_IN_PROCESS", "REFUND_IN_PROCESS", "REQUEST_TRAFFIC_EXCEED_LIMIT"}


class _Answer(Protocol):
    """What the client reads of an HTTP answer: an ``httpx.Response``, or the aiohttp
    transport's ``RawAnswer``."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...


# (url, body, headers, timeouts) -> answer: a transport's own path for a signed POST
_RawPost = Callable[[str, bytes, dict[str, str], dict[str, Any]], Awaitable[_Answer]]


@dataclass
class ApiResponse:
    """A verified answer: ``body`` is the response JSON, ``result`` its result object."""

    path: str
    body: dict[str, Any]
    http_status: int
    attempts: int = 1
    _client: Any = field(default=None, repr=False)

    @property
    def result(self) -> dict[str, str]:
        return self.body.get("result") or {}

    @property
    def code(self) -> str:
        return str(self.result.get("resultCode", ""))

    @property
    def status(self) -> str:
        """``S``, ``F`` or ``U``; for inquiries, the status of the payment or refund asked about."""
        inner = self.body.get("paymentResult") or self.body.get("refundResult")
        return str((inner or self.result).get("resultStatus", ""))

    @property
    def risk_result(self) -> dict[str, Any] | None:
        """The MPP's risk decision on a payment (``decision``: approve, review or decline,
        ``reason``, ``modelVersion``, ``rulesVersion``), as the gateway recorded it; None
        when the payment was not scored."""
        risk = self.body.get("riskResult")
        return risk if isinstance(risk, dict) else None

    def customer_info(self) -> dict[str, Any] | None:
        """The payer details the MPP sealed to this ACQP, opened; None when absent."""
        env = self.body.get("customerInfo")
        if env is None:
            return None
        if not self._client.pets:
            return env
        ctx = f"{self.body.get('acquirerId')}/{self.body.get('paymentRequestId')}"
        return open_fields(env, self._client.keys, "customerInfo", ctx)


class _Core:
    def __init__(self, keys: PartyKeys, gateway_url: str | Sequence[str], gateway: PublicEntry, *, authority: Authority,
                 privacy: Privacy | None = None, log_state: str | Path | None = None, timeout: float = 10.0,
                 retries: int = 3, backoff: float = 0.2, pets: bool = True, window: float = 300.0) -> None:
        """``authority``: the network's key authority, pinned; every key the client takes
        from the gateway's directory must be certified by it. ``privacy``: the privacy
        nodes' set and protocol, pinned (None for a network without them); a directory
        that announces others is refused. ``log_state``: a file that keeps the newest
        key-log head this party checked, across restarts (a restarted client without it
        takes any log head the authority once signed, and so an entry replaced since).
        ``gateway_url``: the gateway, or its replicas in the order to try them: a call
        that gets no answer from one is sent again (same body, same idempotency key) to
        the next."""
        if gateway.role != "gateway":
            raise ConfigError("the pinned gateway entry must have role 'gateway'")
        self.trust = KeyTrust(authority, privacy, log_state)
        urls = [gateway_url] if isinstance(gateway_url, str) else list(gateway_url)
        if not urls or not all(isinstance(u, str) and u for u in urls):
            raise ConfigError("gateway_url: a URL, or a non-empty list of the replicas' URLs")
        self.keys, self.gateway, self.urls = keys, gateway, [u.rstrip("/") for u in urls]
        self._at = 0
        self.timeout, self.retries, self.backoff, self.pets, self.window = timeout, retries, backoff, pets, window
        self._directory: Directory | None = None
        # a payment's code, order and device data for the MPP, and its hidden amount to
        # the MPP, to us and to each node, sealed in sessions: one HPKE seal per
        # recipient per session instead of one to five per payment
        self._sessions = SessionSealer()

    @property
    def url(self) -> str:
        """The gateway replica this client calls now."""
        return self.urls[self._at]

    def _fail_over(self) -> None:
        """The replica called gave no answer: call the next one from now on."""
        self._at = (self._at + 1) % len(self.urls)

    # ------------------------------------------------------------ requests
    def _headers(self, path: str, body: bytes) -> tuple[dict[str, str], str]:
        """A signed POST's headers and the digest its answer must name."""
        return signed_post(self.keys.signer(), path, self.keys.id, body)

    def _verify(self, method: str, path: str, resp: _Answer, answers: str) -> dict[str, Any]:
        """The JSON body of the gateway's answer to our request (digest ``answers``),
        signed for us; SignatureError for an answer that is unsigned (the gateway did not
        take our signature: its unsigned code is in the message, not trusted), signed
        for another party, or bound to another request."""
        hdrs = {k.lower(): v for k, v in resp.headers.items()}
        if "signature" not in hdrs:
            try:
                said = str(((wirejson.loads(resp.content) or {}).get("result") or {}).get("resultCode"))[:40]
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                said = "?"
            raise SignatureError(f"{path}: an unsigned answer (HTTP {resp.status_code}, it says {said}): the gateway "
                                 "did not authenticate the request, or the answer is not the gateway's")
        malformed = ""
        try:
            signed, body = verify_json(hdrs, method, path, resp.content, self.gateway.verify_key, time.time(),
                                       self.window, "Response-Time", answers)
        except MalformedBody as exc:  # refused below, after the check that it was signed for us
            signed, body, malformed = cast(SignedHeaders, exc.signed), {}, str(exc)
        if signed.client_id != self.keys.id:
            raise SignatureError(f"response signed for {signed.client_id!r}, not for us")
        if malformed:
            raise SignatureError(malformed.replace("body", "response"))
        return body

    def _directory_headers(self) -> tuple[dict[str, str], str]:
        nonce = secrets.token_urlsafe(16)
        return {"Client-Id": self.keys.id, NONCE_HEADER: nonce}, get_digest("/v1/directory", self.keys.id, nonce)

    def _parse_directory(self, resp: httpx.Response, answers: str) -> tuple[Directory, tuple[int, int] | None]:
        """The gateway's signed directory, and the log entries (start, end) checking it needs."""
        d = Directory.from_json(self._verify("GET", "/v1/directory", resp, answers))
        return d, self.trust.wanted(list(d.partners.values()), d.head)

    def _accept_directory(self, d: Directory, start: int, leaves: list[bytes]) -> Directory:
        """``d`` once every entry chains to the pinned authority and is current in the
        log, and its log heads are one history with those this client saw
        (KeyNotCertified, LogInconsistent)."""
        self.trust.check(list(d.partners.values()), d.privacy, d.head, start, leaves)
        self._directory = d
        return d

    @staticmethod
    def _log_page(resp: httpx.Response, start: int, end: int) -> list[bytes]:
        """One page of ``/v1/log/entries`` (leaves ``start`` to at most ``end``), checked
        for form; whether they make the authority's head is ``KeyTrust.check``'s to say."""
        if resp.status_code != 200:
            raise GatewayUnavailable(f"key log: HTTP {resp.status_code}")
        try:
            body = resp.json()
            if body["start"] != start:
                raise ValueError("start")
            page = [str(x).encode() for x in body["entries"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise LogInconsistent(f"the gateway's key log page from {start} is malformed") from exc
        if not page or len(page) > end - start:
            raise LogInconsistent(f"the gateway's key log page from {start} holds {len(page)} of the {end - start} "
                                  "entries asked for")
        return page

    def _pay_body(self, d: Directory, payment_request_id: str, amount: dict[str, str], payment_code: str,
                  order: dict[str, Any], env: dict[str, Any] | None,
                  risk_features: dict[str, Any] | None = None) -> dict[str, Any]:
        """``risk_features``: this ACQP's risk features of the payment as
        ``veilpay.sdk.features.share_features`` made them, sent as they are (sealed to the
        privacy nodes; the gateway relays them to the MPP)."""
        parse_amount(amount, "paymentAmount")
        if risk_features is not None and (not isinstance(risk_features, dict)
                                          or set(risk_features) != {"bundle", "shares"}):
            raise InvalidInput("risk_features: the {bundle, shares} object that veilpay.sdk.features made")
        found = d.issuer_of(payment_code)
        if found is None:
            raise InvalidInput("payment code: no MPP in the directory issues codes with its prefix")
        prefix, mpp = found
        ctx = f"{self.keys.id}/{payment_request_id}"
        body: dict[str, Any] = {"paymentRequestId": payment_request_id,
                                "paymentAmount": self._amount(d, amount, "pay", payment_request_id, mpp)}
        if self.pets:  # the code, the order and the device data for the MPP, in our session with it
            groups = {"paymentCode": {"code": payment_code}, "order": order}
            if env is not None:
                groups["env"] = env
            sealed = self._sessions.seal_group(groups, mpp, ctx)
            body["paymentMethod"] = {"paymentMethodType": "CONNECT_WALLET", "codeIssuer": prefix,
                                     "paymentMethodId": sealed["paymentCode"]}
            body["order"] = sealed["order"]
            if env is not None:
                body["env"] = sealed["env"]
        else:
            body["paymentMethod"] = {"paymentMethodType": "CONNECT_WALLET", "codeIssuer": prefix,
                                     "paymentMethodId": {"code": payment_code}}
            body["order"] = order
            if env is not None:
                body["env"] = env
        if risk_features is not None:
            body["riskFeatures"] = risk_features
        return body

    def _amount(self, d: Directory, amount: dict[str, str], kind: str, request_id: str,
                mpp: PublicEntry | None, payment: str = "") -> dict[str, Any]:
        """The amount as this network takes it: clear, or hidden when it runs privacy nodes
        (``payment``: for a refund, the paymentRequestId it refunds, which its signed
        share bundle names)."""
        if d.privacy is None or not self.pets:
            return amount
        if mpp is None:
            raise InvalidInput("a hidden amount needs the MPP it is sealed to")
        if kind == "refund" and not payment:
            raise InvalidInput("a hidden refund amount needs the paymentRequestId of the payment it refunds")
        return seal_amount(amount, kind, self.keys, request_id, mpp, d.nodes(), d.privacy, self._sessions, payment)

    def _refund_body(self, d: Directory, refund_request_id: str, amount: dict[str, str], payment_id: str | None,
                     payment_request_id: str | None, reason: str | None, mpp_id: str | None,
                     paid_request_id: str | None = None) -> dict[str, Any]:
        """``paid_request_id``: the refunded payment's paymentRequestId when the caller
        names it by its paymentId (a hidden amount's bundle names the request)."""
        parse_amount(amount, "refundAmount")
        mpp_entry = d.get(mpp_id) if mpp_id else None
        if mpp_id and mpp_entry is None:
            raise InvalidInput(f"MPP {mpp_id!r} is not in the directory")
        paid = payment_request_id or paid_request_id or ""
        body: dict[str, Any] = {"refundRequestId": refund_request_id,
                                "refundAmount": self._amount(d, amount, "refund", refund_request_id, mpp_entry, paid)}
        body.update(_one_of(payment_id=payment_id, payment_request_id=payment_request_id))
        if reason is not None:
            if mpp_id is None:
                raise InvalidInput("a refund reason needs the MPP's id (mpp_id) to seal it to")
            mpp = d.get(mpp_id)
            if mpp is None:
                raise InvalidInput(f"MPP {mpp_id!r} is not in the directory")
            body["refundReason"] = (seal_fields({"reason": reason}, mpp, "refundReason",
                                                f"{self.keys.id}/{refund_request_id}") if self.pets else {"reason": reason})
        return body

    def _answer(self, path: str, resp: _Answer, attempts: int, answers: str,
                sent: dict[str, Any] | None = None) -> ApiResponse:
        """``sent``: the request's body; the answer must not name another payment or refund."""
        body = self._verify("POST", path, resp, answers)
        for k in _ECHOED:
            if sent is not None and k in sent and k in body and body[k] != sent[k]:
                raise SignatureError(f"{path}: the answer names {k} {str(body[k])[:40]!r}, not the one asked about")
        if self.pets:
            body = reveal_amounts(body, self.keys)
        return ApiResponse(path, body, resp.status_code, attempts, self)

    def _settled(self, d: Directory, ans: ApiResponse) -> ApiResponse:
        """A settlement summary with the privacy nodes' totals opened: the gateway answers
        the period's groups with each node's share of each total sealed to us; the
        answer becomes per-currency summaries (DecryptionError or SignatureError when a
        node's output does not verify)."""
        groups = ans.body.get("groups")
        if groups is None or d.privacy is None:
            return ans
        body = {k: v for k, v in ans.body.items() if k != "groups"}
        body["summaries"] = summaries(groups, self.keys, d.nodes(), d.privacy)
        ans.body = body
        return ans

    def _needs_inquiry(self, d: Directory, mpp_id: str | None, payment_request_id: str | None) -> bool:
        """A hidden refund amount is sealed to the payment's MPP and its bundle names the
        payment's request id: ask the gateway for whichever the caller did not give."""
        return d.privacy is not None and self.pets and (mpp_id is None or payment_request_id is None)

    def _retryable(self, ans: ApiResponse) -> bool:
        return ans.result.get("resultStatus") == "U" and ans.code in _RETRY_CODES


def _payment_of(ans: ApiResponse) -> tuple[str, str] | None:
    """(MPP, paymentRequestId) of a payment, from an inquiry; None when the payment is
    unknown (the refund then answers with that inquiry's ORDER_NOT_EXIST)."""
    psp, req = ans.body.get("pspId"), ans.body.get("paymentRequestId")
    return (psp, req) if isinstance(psp, str) and isinstance(req, str) else None


def _one_of(**named: str | None) -> dict[str, str]:
    given = {k: v for k, v in named.items() if v is not None}
    if len(given) != 1:
        raise InvalidInput(f"give exactly one of {', '.join(named)}")
    (k, v), = given.items()
    return {"paymentId" if k == "payment_id" else "paymentRequestId" if k == "payment_request_id"
            else "refundId" if k == "refund_id" else "refundRequestId": v}


def _page(size: int, token: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"pageSize": size}
    if token is not None:
        body["pageToken"] = token
    return body


class GatewayClient(_Core):
    """Blocking client. ``transport`` lets tests route to an in-process app."""

    def __init__(self, keys: PartyKeys, gateway_url: str | Sequence[str], gateway: PublicEntry, *,
                 transport: httpx.BaseTransport | None = None, **kw: Any) -> None:
        super().__init__(keys, gateway_url, gateway, **kw)
        self._http = httpx.Client(timeout=self.timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def directory(self, refresh: bool = False) -> Directory:
        if self._directory is None or refresh:
            for tried in range(1, len(self.urls) + 1):
                try:
                    headers, digest = self._directory_headers()
                    resp = self._http.get(self.url + "/v1/directory", headers=headers)
                    d, wanted = self._parse_directory(resp, digest)
                    start, end = wanted or (0, 0)
                    leaves: list[bytes] = []
                    while start + len(leaves) < end:  # each page holds 1 .. end - at leaves
                        at = start + len(leaves)
                        leaves += self._log_page(self._http.get(self.url + "/v1/log/entries",
                                                                params={"start": at, "end": end}), at, end)
                    break
                except httpx.HTTPError as exc:
                    self._fail_over()
                    if tried == len(self.urls):
                        raise GatewayUnavailable(f"directory: {type(exc).__name__}") from exc
            return self._accept_directory(d, start, leaves)
        return self._directory

    def call(self, path: str, body: dict[str, Any]) -> ApiResponse:
        """POST ``body``, signed, and verify the answer; retries transport failures and
        in-process answers with the same body (so the same idempotency key)."""
        raw = wirejson.dumps(body)
        last: ApiResponse | None = None
        for attempt in range(1, self.retries + 2):
            try:
                headers, digest = self._headers(path, raw)
                resp = self._http.post(self.url + path, content=raw, headers=headers)
                last = self._answer(path, resp, attempt, digest, body)
                if not self._retryable(last):
                    return last
            except httpx.HTTPError:
                self._fail_over()
            if attempt <= self.retries:
                time.sleep(self.backoff * 2 ** (attempt - 1))
        if last is not None:
            return last
        raise GatewayUnavailable(f"{path}: no answer after {self.retries + 1} attempts")

    def pay(self, payment_request_id: str, amount: dict[str, str], payment_code: str, order: dict[str, Any],
            env: dict[str, Any] | None = None, risk_features: dict[str, Any] | None = None) -> ApiResponse:
        """Pay; ``risk_features``: this ACQP's risk features of the payment
        (``veilpay.sdk.features.share_features``), sent as ``riskFeatures``. The answer's
        ``riskResult`` is the MPP's risk decision, when it scored the payment."""
        return self.call(PAY_PATH, self._pay_body(self.directory(), payment_request_id, amount, payment_code, order, env,
                                                  risk_features))

    def inquiry_payment(self, *, payment_id: str | None = None, payment_request_id: str | None = None) -> ApiResponse:
        body = _one_of(payment_id=payment_id, payment_request_id=payment_request_id)
        return self.call("/v1/payments/inquiryPayment", body)

    def cancel_payment(self, *, payment_id: str | None = None, payment_request_id: str | None = None) -> ApiResponse:
        return self.call("/v1/payments/cancelPayment", _one_of(payment_id=payment_id, payment_request_id=payment_request_id))

    def refund(self, refund_request_id: str, amount: dict[str, str], *, payment_id: str | None = None,
               payment_request_id: str | None = None, reason: str | None = None, mpp_id: str | None = None) -> ApiResponse:
        d = self.directory()
        paid = None
        if self._needs_inquiry(d, mpp_id, payment_request_id):
            inq = self.inquiry_payment(payment_id=payment_id, payment_request_id=payment_request_id)
            found = _payment_of(inq)
            if found is None:
                return inq
            mpp_id, paid = mpp_id or found[0], found[1]
        body = self._refund_body(d, refund_request_id, amount, payment_id, payment_request_id, reason, mpp_id, paid)
        return self.call("/v1/payments/refund", body)

    def inquiry_refund(self, *, refund_id: str | None = None, refund_request_id: str | None = None) -> ApiResponse:
        return self.call("/v1/payments/inquiryRefund", _one_of(refund_id=refund_id, refund_request_id=refund_request_id))

    def list_payments(self, page_size: int = 20, page_token: str | None = None) -> ApiResponse:
        return self.call("/v1/payments/listPayments", _page(page_size, page_token))

    def settlement_summary(self, settlement_date: str) -> ApiResponse:
        d = self.directory()
        return self._settled(d, self.call("/v1/payments/settlementSummary", {"settlementDate": settlement_date}))


class AsyncGatewayClient(_Core):
    """asyncio client, same behaviour as GatewayClient."""

    def __init__(self, keys: PartyKeys, gateway_url: str | Sequence[str], gateway: PublicEntry, *,
                 transport: httpx.AsyncBaseTransport | None = None, max_connections: int = 100, **kw: Any) -> None:
        super().__init__(keys, gateway_url, gateway, **kw)
        self._transport = transport or httpx.AsyncHTTPTransport(limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections))
        self._http = httpx.AsyncClient(timeout=self.timeout, transport=self._transport)
        self._timeouts = httpx.Timeout(self.timeout).as_dict()
        self._urls: dict[tuple[int, str], httpx.URL] = {}
        # the aiohttp transport's own POST: no httpx request or response around it
        self._raw_post: _RawPost | None = getattr(self._transport, "post_raw", None)

    async def _post(self, path: str, raw: bytes) -> tuple[_Answer, str]:
        """One signed POST, straight to the transport: the SDK uses none of the client's
        cookie, redirect or auth handling, which cost more CPU than the call itself.
        Returns the answer and the digest of the request it must answer."""
        headers, digest = self._headers(path, raw)
        if self._raw_post is not None:
            return await self._raw_post(self.url + path, raw, headers, self._timeouts), digest
        url = self._urls.get((self._at, path))
        if url is None:
            url = self._urls[(self._at, path)] = httpx.URL(self.url + path)
        req = httpx.Request("POST", url, content=raw, headers=headers, extensions={"timeout": self._timeouts})
        resp = await self._transport.handle_async_request(req)
        try:
            await resp.aread()
        finally:
            await resp.aclose()
        return resp, digest

    async def aclose(self) -> None:
        await self._http.aclose()

    async def directory(self, refresh: bool = False) -> Directory:
        if self._directory is None or refresh:
            for tried in range(1, len(self.urls) + 1):
                try:
                    headers, digest = self._directory_headers()
                    resp = await self._http.get(self.url + "/v1/directory", headers=headers)
                    d, wanted = self._parse_directory(resp, digest)
                    start, end = wanted or (0, 0)
                    leaves: list[bytes] = []
                    while start + len(leaves) < end:  # each page holds 1 .. end - at leaves
                        at = start + len(leaves)
                        leaves += self._log_page(await self._http.get(self.url + "/v1/log/entries",
                                                                      params={"start": at, "end": end}), at, end)
                    break
                except httpx.HTTPError as exc:
                    self._fail_over()
                    if tried == len(self.urls):
                        raise GatewayUnavailable(f"directory: {type(exc).__name__}") from exc
            return self._accept_directory(d, start, leaves)
        return self._directory

    async def call(self, path: str, body: dict[str, Any]) -> ApiResponse:
        raw = wirejson.dumps(body)
        last: ApiResponse | None = None
        for attempt in range(1, self.retries + 2):
            try:
                resp, digest = await self._post(path, raw)
                last = self._answer(path, resp, attempt, digest, body)
                if not self._retryable(last):
                    return last
            except httpx.HTTPError:
                self._fail_over()
            if attempt <= self.retries:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
        if last is not None:
            return last
        raise GatewayUnavailable(f"{path}: no answer after {self.retries + 1} attempts")

    async def pay(self, payment_request_id: str, amount: dict[str, str], payment_code: str, order: dict[str, Any],
                  env: dict[str, Any] | None = None, risk_features: dict[str, Any] | None = None) -> ApiResponse:
        """As ``GatewayClient.pay``."""
        d = await self.directory()
        return await self.call(PAY_PATH, self._pay_body(d, payment_request_id, amount, payment_code, order, env,
                                                        risk_features))

    async def inquiry_payment(self, *, payment_id: str | None = None,
                              payment_request_id: str | None = None) -> ApiResponse:
        return await self.call("/v1/payments/inquiryPayment",
                               _one_of(payment_id=payment_id, payment_request_id=payment_request_id))

    async def cancel_payment(self, *, payment_id: str | None = None,
                             payment_request_id: str | None = None) -> ApiResponse:
        return await self.call("/v1/payments/cancelPayment",
                               _one_of(payment_id=payment_id, payment_request_id=payment_request_id))

    async def refund(self, refund_request_id: str, amount: dict[str, str], *, payment_id: str | None = None,
                     payment_request_id: str | None = None, reason: str | None = None,
                     mpp_id: str | None = None) -> ApiResponse:
        d = await self.directory()
        paid = None
        if self._needs_inquiry(d, mpp_id, payment_request_id):
            inq = await self.inquiry_payment(payment_id=payment_id, payment_request_id=payment_request_id)
            found = _payment_of(inq)
            if found is None:
                return inq
            mpp_id, paid = mpp_id or found[0], found[1]
        body = self._refund_body(d, refund_request_id, amount, payment_id, payment_request_id, reason, mpp_id, paid)
        return await self.call("/v1/payments/refund", body)

    async def inquiry_refund(self, *, refund_id: str | None = None,
                             refund_request_id: str | None = None) -> ApiResponse:
        return await self.call("/v1/payments/inquiryRefund",
                               _one_of(refund_id=refund_id, refund_request_id=refund_request_id))

    async def list_payments(self, page_size: int = 20, page_token: str | None = None) -> ApiResponse:
        return await self.call("/v1/payments/listPayments", _page(page_size, page_token))

    async def settlement_summary(self, settlement_date: str) -> ApiResponse:
        d = await self.directory()
        return self._settled(d, await self.call("/v1/payments/settlementSummary", {"settlementDate": settlement_date}))
