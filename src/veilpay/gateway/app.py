"""The gateway's HTTP API (FastAPI): the Alipay+-shaped payment endpoints, the signed
partner directory, metrics and health; background tasks for webhooks and for
resolving payments whose outcome is not yet known.

Every request is read as raw bytes, size-capped, authenticated (signature, time
window, replay) and only then parsed; every answer, error or not, is signed by the
gateway for the Client-Id that asked. Domain errors become answers in one place
(``answer``). The signed POST endpoints are served by a small ASGI front
(``SignedApiFront``) ahead of FastAPI's routing; FastAPI serves the rest and the
OpenAPI document, which lists every answer a signed endpoint can give (its HTTP
statuses and, for each, the result codes). Each request's body has a deadline
(``veilpay.gateway.limits``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

from veilpay.db import Database
from veilpay.errors import ConfigError, KeyNotCertified, LogInconsistent, MalformedBody, SignatureError
from veilpay.gateway.batch import pause
from veilpay.gateway.codes import CODES, ApiFailure, result
from veilpay.gateway.config import GatewayConfig
from veilpay.gateway.limits import BODY_TIMEOUT_S, BodyDeadline
from veilpay.gateway.link import AiohttpLink, HttpxLink, PartnerLink
from veilpay.gateway.nodes import NodeLink
from veilpay.gateway.observe import Metrics
from veilpay.gateway.outbox import OutboxWorker
from veilpay.gateway.risk import RISK_RESULT_SCHEMA
from veilpay.gateway.schemas import (
    CancelRequest,
    InquiryPaymentRequest,
    InquiryRefundRequest,
    ListPaymentsRequest,
    PayRequest,
    RefundRequest,
    SettlementSummaryRequest,
)
from veilpay.gateway.service import GatewayService
from veilpay.gateway.store import make_engine, migrate
from veilpay.host import FASTAPI_TELEMETRY_OFF
from veilpay.sdk import wirejson
from veilpay.sdk.authority import Authority, KeyLog, load_authority, verify_entry
from veilpay.sdk.directory import Directory
from veilpay.sdk.keys import PublicEntry, load_party
from veilpay.sdk.shares import Privacy
from veilpay.sdk.signing import NONCE_HEADER, SignedHeaders, get_digest, sign_headers, verify_json

__all__ = ["DirectoryFiles", "SignedApiFront", "create_app"]

log = logging.getLogger("veilpay.gateway")


class DirectoryFiles:
    """The directory built from the partners' ``public.json`` files, re-read when one
    changes (key rotation, retirement), checked at most once a second. Every entry must
    be certified by the network's key authority (``veilpay.sdk.authority``): an entry
    that is not refuses the gateway's start, and a changed file that is not keeps the
    directory as it was (logged) until the owner has it certified; so the gateway
    serves no key the SDKs would refuse anyway. The directory carries the key log's
    newest head."""

    def __init__(self, paths: list[Path], privacy: Privacy | None = None, authority: Authority | None = None,
                 log: KeyLog | None = None) -> None:
        self.paths = paths
        self.privacy, self.authority, self.log = privacy, authority, log
        self._mtimes: tuple[float, ...] = ()
        self._checked = 0.0
        self._dir: Directory | None = None
        self._version = 0
        self()

    def __call__(self) -> Directory:
        now = time.monotonic()
        if self._dir is not None and now - self._checked < 1.0:
            return self._dir
        self._checked = now
        try:
            mtimes = tuple(p.stat().st_mtime for p in self.paths)
            if self.log is not None:
                mtimes += ((self.log.folder / "head.json").stat().st_mtime,)
        except OSError as exc:
            if self._dir is None:
                raise ConfigError(f"partner key file: {exc}") from exc
            return self._dir
        if mtimes != self._mtimes:
            try:
                entries = [PublicEntry.from_json(json.loads(p.read_text())) for p in self.paths]
                if self.authority is not None:
                    for e in entries:
                        verify_entry(e, self.authority)
                head = self.log.head() if self.log is not None else None
            except (KeyNotCertified, LogInconsistent, ConfigError, OSError, json.JSONDecodeError) as exc:
                if self._dir is None:
                    raise ConfigError(f"the partner directory cannot be served: {exc}") from exc
                log.error("a partner key file changed but cannot be served; keeping the directory as it was",
                          extra={"event": "directory_refused", "error": str(exc)[:200]})
                self._mtimes = mtimes
                return self._dir
            self._version += 1
            self._dir = Directory(self._version, {e.id: e for e in entries}, self.privacy, head)
            self._mtimes = mtimes
        if self._dir is None:
            raise ConfigError("no partner directory")
        return self._dir


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


async def _read_asgi_body(headers: dict[str, str], receive: Receive, limit: int) -> bytes:
    """A request body from the ASGI ``receive`` channel, refused past ``limit`` bytes
    (by its Content-Length or as it streams in)."""
    declared = headers.get("content-length")
    if declared is not None and (not (declared.isascii() and declared.isdigit()) or int(declared) > limit):
        raise ApiFailure("REQUEST_TOO_LARGE", f"body over {limit} bytes")
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiFailure("REQUEST_TOO_LARGE", f"body over {limit} bytes")
        chunks.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(chunks)


async def _read_body(request: Request, limit: int) -> bytes:
    headers = {k.lower(): v for k, v in request.headers.items()}
    return await _read_asgi_body(headers, request.receive, limit)


Op = Callable[[PublicEntry, Any], Awaitable[dict[str, Any]]]
# (path, lower-cased headers, the body's reader, op) -> (HTTP status, body, headers)
Handler = Callable[[str, dict[str, str], Callable[[], Awaitable[bytes]], Op],
                   Awaitable[tuple[int, bytes, dict[str, str]]]]


class SignedApiFront:
    """The signed API's POST endpoints served straight from ASGI, ahead of FastAPI's
    routing, dependency solving and request objects (about 40 us of CPU a request,
    a few percent of a payment's). Same handler, same answers: FastAPI keeps the
    routes for the OpenAPI document and for any request this front passes on."""

    def __init__(self, app: ASGIApp, routes: dict[str, Op], handler: Handler, limit: int) -> None:
        self.app, self.routes, self.handler, self.limit = app, routes, handler, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        op = self.routes.get(scope.get("path", "")) if scope["type"] == "http" and scope["method"] == "POST" else None
        if op is None:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}  # ASGI: names lower-case
        try:
            status, raw, out = await self.handler(scope["path"], headers,
                                                  lambda: _read_asgi_body(headers, receive, self.limit), op)
        except ClientGone:
            return
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
        hdrs += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in out.items()]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": raw})


def _schema(model: Any) -> dict[str, Any]:
    return model.model_json_schema(ref_template="#/components/schemas/{model}")


# The HTTP statuses other than 200 that each kind of signed endpoint answers with.
_PARTNER_ERRORS = (400, 401, 408, 413, 415, 429, 500)  # body, media type, authentication, rate, unexpected failure
_OPERATOR_ERRORS = (400, 401, 408, 409, 413, 500, 503)  # no media-type check; the privacy nodes' refusals
_SIGNED_HEADERS = [{"name": h, "in": "header", "required": True, "schema": {"type": "string"}}
                   for h in ("Client-Id", "Request-Time", "Signature")]
_REF = "#/components/schemas/"
_ANSWER_SCHEMAS: dict[str, Any] = {
    "Result": {"type": "object", "required": ["resultCode", "resultStatus", "resultMessage"], "properties": {
        "resultCode": {"type": "string", "enum": sorted(CODES)},
        "resultStatus": {"type": "string", "enum": ["S", "F", "U"]},
        "resultMessage": {"type": "string"}}},
    "Answer": {"type": "object", "required": ["result"], "properties": {"result": {"$ref": _REF + "Result"}},
               "description": "A result and the operation's own fields"},
    "ErrorAnswer": {"type": "object", "required": ["result"], "additionalProperties": False,
                    "properties": {"result": {"$ref": _REF + "Result"}}},
    "RiskResult": RISK_RESULT_SCHEMA,
}
# The answer fields documented beyond ``result``, per operation (a payment's answers).
_PAYMENT_FIELDS: dict[str, Any] = {"riskResult": {"$ref": _REF + "RiskResult"}}


def _codes_answered_with(status: int) -> list[str]:
    if status == 500:  # an unexpected failure; UNKNOWN_EXCEPTION from an MPP is a business outcome (200)
        return ["UNKNOWN_EXCEPTION"]
    return sorted(code for code, (_, http, _) in CODES.items() if http == status)


def _answers(errors: tuple[int, ...], ok: bool = True,
             fields: dict[str, Any] | None = None) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI responses of a signed endpoint: 200 with a result of any code (a
    business outcome, signed for the caller) and the operation's ``fields`` that are
    documented, and for each error status an answer that holds only a result, with the
    codes that status carries (unsigned when the caller did not authenticate)."""
    out: dict[int | str, dict[str, Any]] = {}
    if ok:
        schema: dict[str, Any] = {"$ref": _REF + "Answer"}
        if fields:
            schema = {"allOf": [schema, {"type": "object", "properties": fields}]}
        out[200] = {"description": "A result (every business outcome, refusals included) and the operation's fields",
                    "content": {"application/json": {"schema": schema}}}
    for status in errors:
        codes = _codes_answered_with(status)
        narrow = {"type": "object", "properties": {"result": {"type": "object", "properties": {
            "resultCode": {"enum": codes}, "resultStatus": {"enum": sorted({CODES[c][0] for c in codes})}}}}}
        out[status] = {"description": ", ".join(codes),
                       "content": {"application/json": {"schema": {"allOf": [{"$ref": _REF + "ErrorAnswer"}, narrow]}}}}
    return out


def create_app(cfg: GatewayConfig, transport: httpx.AsyncBaseTransport | None = None,
               background: bool = True, *, body_timeout_s: float = BODY_TIMEOUT_S) -> FastAPI:
    """The gateway app; ``transport`` routes its calls to partners (tests pass in-process
    apps), ``background`` starts the outbox worker and resolver with the app's lifespan;
    a request whose body has not arrived ``body_timeout_s`` after its headers is
    answered 408 and its connection closed."""
    keys = load_party(cfg.keys)
    if keys.public.role != "gateway":
        raise ConfigError(f"{cfg.keys}: these are not gateway keys (role {keys.public.role!r})")
    privacy = Privacy(cfg.privacy.protocol, tuple(cfg.privacy.nodes), cfg.privacy.dealer) if cfg.privacy else None
    key_log = KeyLog(cfg.key_log)
    directory = DirectoryFiles(cfg.partners, privacy, load_authority(cfg.authority), key_log)
    engine = make_engine(cfg.database)
    migrate(engine)
    db = Database(engine)  # every database call of the gateway runs on its threads, off the event loop
    metrics = Metrics()
    http: PartnerLink = HttpxLink(transport) if transport is not None else AiohttpLink()
    worker = OutboxWorker(cfg, keys, directory, db, http, metrics)
    nodes = NodeLink(cfg, keys, directory, db, http, privacy) if privacy is not None else None
    service = GatewayService(cfg, keys, directory, db, http, metrics, worker.wake, nodes)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        tasks = []
        if background:
            tasks = [asyncio.create_task(worker.run(stop)), asyncio.create_task(_resolver(service, cfg, stop))]
            if nodes is not None:
                tasks.append(asyncio.create_task(nodes.run(stop)))
        log.info("gateway started", extra={"event": "start"})
        try:
            yield
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await service.aclose()
            await http.aclose()
            await asyncio.to_thread(db.close)  # waits for the units still running, then disposes of the engine

    app = FastAPI(title="veilpay gateway", version="1", lifespan=lifespan, telemetry=FASTAPI_TELEMETRY_OFF,
                  description="Alipay+-shaped payments where the operator holds only tokens and ciphertext.")
    app.state.service, app.state.outbox, app.state.engine, app.state.metrics = service, worker, engine, metrics
    app.state.db = db
    app.state.directory = directory
    app.state.nodes = nodes

    def sign_body(client: str, method: str, path: str, body: dict[str, Any],
                  answers: str | None) -> tuple[bytes, dict[str, str]]:
        """The answer's bytes and headers: signed for ``client`` and bound to the request
        whose digest is ``answers``; unsigned when the caller did not authenticate
        (``answers`` None), so that no signed answer can be collected for a Client-Id by
        someone who does not hold its key."""
        raw = wirejson.dumps(body)
        if answers is None:
            return raw, {}
        v, key = keys.signer()
        return raw, sign_headers(key, v, method, path, client[:64], raw, time.time(), "Response-Time", answers)

    def signed(client: str, method: str, path: str, body: dict[str, Any], status: int,
               answers: str | None) -> Response:
        raw, headers = sign_body(client, method, path, body, answers)
        return Response(raw, status_code=status, headers=headers, media_type="application/json")

    async def answer(path: str, headers: dict[str, str], read: Callable[[], Awaitable[bytes]],
                     op: Op) -> tuple[int, bytes, dict[str, str]]:
        """One signed API call: authenticate, parse, run ``op``, and sign the answer
        (errors included) for the Client-Id that asked, bound to its request; a caller
        that did not authenticate gets its error unsigned."""
        started = time.perf_counter()
        client = headers.get("client-id", "")
        digest = None
        try:
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                raise ApiFailure("MEDIA_TYPE_NOT_ACCEPTABLE")
            raw = await read()
            acqp, signed_req, obj = await service.authenticate("POST", path, headers, raw)
            digest = signed_req.digest
            if isinstance(obj, ApiFailure):  # not a JSON object: refused, the answer bound to the request
                raise obj
            body, status = await op(acqp, obj), 200
        except ApiFailure as exc:
            body, status = {"result": exc.result}, exc.http_status
        except ClientGone:
            raise
        except Exception:  # noqa: BLE001 - an unexpected error is answered U, never a stack trace
            log.exception("request failed", extra={"event": "request_error", "path": path})
            body, status = {"result": result("UNKNOWN_EXCEPTION")}, 500
        code = body["result"]["resultCode"]
        metrics.observe(path, code, started)
        log.info("request", extra={"event": "request", "path": path, "client": client[:64], "code": code,
                                   "ms": round((time.perf_counter() - started) * 1000, 2),
                                   "paymentId": body.get("paymentId"), "refundId": body.get("refundId")})
        raw_answer, out = sign_body(client, "POST", path, body, digest)
        return status, raw_answer, out

    async def handle(request: Request, op: Op) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            status, raw, out = await answer(request.url.path, headers,
                                            lambda: _read_asgi_body(headers, request.receive, cfg.max_body_bytes), op)
        except ClientGone:
            return Response(status_code=499)
        return Response(raw, status_code=status, headers=out, media_type="application/json")

    routes: list[tuple[str, Any, Op, str]] = [
        ("/v1/payments/pay", PayRequest, service.pay, "Pay with a customer's payment code (user-presented)"),
        ("/v1/payments/inquiryPayment", InquiryPaymentRequest, service.inquiry_payment, "The status of a payment"),
        ("/v1/payments/cancelPayment", CancelRequest, service.cancel, "Cancel a payment within the cancel window"),
        ("/v1/payments/refund", RefundRequest, service.refund, "Refund all or part of a successful payment"),
        ("/v1/payments/inquiryRefund", InquiryRefundRequest, service.inquiry_refund, "The status of a refund"),
        ("/v1/payments/listPayments", ListPaymentsRequest, service.list_payments,
         "This acquirer's payments, newest first (veilpay)"),
        ("/v1/payments/settlementSummary", SettlementSummaryRequest, service.settlement_summary,
         "Per-currency totals of one day's successful payments and refunds (veilpay)"),
    ]
    payment_answers = {"/v1/payments/pay", "/v1/payments/inquiryPayment"}
    for path, model, op, summary in routes:
        endpoint = _endpoint(handle, op)
        app.add_api_route(path, endpoint, methods=["POST"], summary=summary, response_class=Response,
                          responses=_answers(_PARTNER_ERRORS,
                                             fields=_PAYMENT_FIELDS if path in payment_answers else None),
                          openapi_extra={"requestBody": {"required": True, "content": {
                              "application/json": {"schema": _schema(model)}}}, "parameters": _SIGNED_HEADERS})

    async def operator(request: Request, op: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> Response:
        """Operator calls, signed with the gateway's own key (``veilpay gateway settle``)."""
        path = request.url.path
        headers = {k.lower(): v for k, v in request.headers.items()}
        digest = None
        try:
            raw = await _read_body(request, cfg.max_body_bytes)
            obj: dict[str, Any] | None
            try:
                signed_req, obj = verify_json(headers, "POST", path, raw, keys.public.verify_key, time.time(),
                                              cfg.request_window_s)
            except SignatureError as exc:
                raise ApiFailure("INVALID_SIGNATURE", str(exc)) from exc
            except MalformedBody as exc:  # refused below, once the call is known to be the operator's
                signed_req, obj = cast(SignedHeaders, exc.signed), None
            if signed_req.client_id != keys.id:
                raise ApiFailure("INVALID_CLIENT", "operator calls are signed by the gateway's key")
            await service.guard_replay(keys.id, signed_req)  # a replayed settle or analytics call is refused
            digest = signed_req.digest
            if obj is None:
                raise ApiFailure("MALFORMED_REQUEST")
            body, status = {"result": result("SUCCESS"), **(await op(obj))}, 200
        except ApiFailure as exc:
            body, status = {"result": exc.result}, exc.http_status
        except ClientGone:
            return Response(status_code=499)
        except Exception:  # noqa: BLE001 - as on the partner API: answered U, never a stack trace
            log.exception("operator call failed", extra={"event": "request_error", "path": path})
            body, status = {"result": result("UNKNOWN_EXCEPTION")}, 500
        return signed(keys.id, "POST", path, body, status, digest)

    def operator_doc(field: str) -> dict[str, Any]:
        return {"parameters": _SIGNED_HEADERS, "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"type": "object", "required": [field], "additionalProperties": False,
                       "properties": {field: {"type": "string"}}}}}}}

    @app.post("/admin/v1/settle", summary="Settle a closed period in MPC (operator; signed with the gateway key)",
              response_class=Response, responses=_answers(_OPERATOR_ERRORS), openapi_extra=operator_doc("settlementDate"))
    async def admin_settle(request: Request) -> Response:
        return await operator(request, lambda o: service.settle(o.get("settlementDate")))

    @app.post("/admin/v1/analytics", summary="The privacy nodes' corridor release for a closed period (operator)",
              response_class=Response, responses=_answers(_OPERATOR_ERRORS), openapi_extra=operator_doc("period"))
    async def admin_analytics(request: Request) -> Response:
        async def op(o: dict[str, Any]) -> dict[str, Any]:
            if set(o) - {"period"}:
                raise ApiFailure("PARAM_ILLEGAL", "analytics takes only 'period'; thresholds, noise and regions are "
                                 "the privacy nodes' policy")
            return await service.analytics(o.get("period"))
        return await operator(request, op)

    @app.get("/v1/directory", summary="The partner directory, signed by the gateway", response_class=Response,
             responses=_answers((400,), ok=False))
    async def get_directory(request: Request) -> Response:
        """The directory, signed for the Client-Id that asks and bound to the request's
        fresh nonce (``Request-Nonce``), so that an old copy cannot be passed off as new."""
        client = request.headers.get("client-id", "")[:64]
        nonce = request.headers.get(NONCE_HEADER.lower(), "")
        if not client or not 16 <= len(nonce) <= 64:
            return Response(wirejson.dumps({"result": result("PARAM_ILLEGAL", f"send Client-Id and {NONCE_HEADER}")}),
                            status_code=400, media_type="application/json")
        return signed(client, "GET", "/v1/directory", directory().to_json(), 200,
                      get_digest("/v1/directory", client, nonce))

    @app.get("/v1/log/consistency", summary="A consistency proof between two heads of the key log (RFC 9162)")
    async def log_consistency(first: int, second: int | None = None) -> Response:
        """Public and unsigned: a proof verifies on its own against heads the key
        authority signed, whoever serves it."""
        try:
            proof = key_log.consistency(first, second)
        except ValueError as exc:
            return Response(wirejson.dumps({"error": str(exc)}), status_code=400, media_type="application/json")
        return Response(wirejson.dumps({"first": first, "second": second, "proof": [p.hex() for p in proof]}),
                        media_type="application/json")

    @app.get("/v1/log/entries", summary="The key log's entries and its newest head (for owners that watch it)")
    async def log_entries(start: int = 0, end: int | None = None) -> Response:
        """Pages of at most 10,000 leaves, as the text that is hashed; public and
        unsigned (the leaves verify against heads the authority signed)."""
        head = key_log.head()
        end = min(head.size if end is None else end, head.size, start + 10_000)
        if not 0 <= start <= end:
            return Response(wirejson.dumps({"error": "0 <= start <= end"}), status_code=400,
                            media_type="application/json")
        return Response(wirejson.dumps({"head": head.to_json(), "start": start, "entries": key_log.entries(start, end)}),
                        media_type="application/json")

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def get_metrics() -> Response:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # one of several workers: the sum over all of them
            from prometheus_client import CollectorRegistry
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="Liveness and database reachability")
    async def healthz() -> dict[str, str]:
        await db.read(lambda conn: conn.exec_driver_sql("SELECT 1"))
        return {"status": "ok"}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            comps = spec.setdefault("components", {}).setdefault("schemas", {})
            for _, model, _, _ in routes:
                s = _schema(model)
                comps.update(s.pop("$defs", {}))
            comps.update(_ANSWER_SCHEMAS)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(SignedApiFront, routes={path: op for path, _, op, _ in routes}, handler=answer,
                       limit=cfg.max_body_bytes)
    counted = {path for path, _, _, _ in routes} | {"/admin/v1/settle", "/admin/v1/analytics"}

    def cut_off(path: str) -> None:
        path = path if path in counted else "other"  # a metric label per path a client makes up: no
        metrics.requests.labels(path=path, code="REQUEST_TIMEOUT").inc()
        log.info("request body timed out", extra={"event": "request", "path": path, "code": "REQUEST_TIMEOUT"})

    app.add_middleware(BodyDeadline, seconds=body_timeout_s, on_timeout=cut_off)  # added last: the outermost
    return app


def _endpoint(handle: Callable[..., Awaitable[Response]], op: Any) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await handle(request, op)
    return endpoint


async def _resolver(service: GatewayService, cfg: GatewayConfig, stop: asyncio.Event) -> None:
    last_purge = 0.0
    while not stop.is_set():
        try:
            await service.resolve_pending()
            if time.monotonic() - last_purge > 60:
                await service.purge_seen()
                last_purge = time.monotonic()
        except Exception:  # noqa: BLE001 - keep resolving after a database hiccup
            log.exception("resolver failed", extra={"event": "resolver_error"})
        await pause(stop, cfg.resolver_interval_s)
