"""The reference ACQP: a merchant acquirer's backend.

``POST /merchant/checkout`` takes a scanned payment code, an order and, optionally, the
acquirer's risk features of the payment (``risk``, docs/risk.md) from a
merchant's till and pays through the gateway with the partner SDK (which seals the
code, order and device data to the issuing MPP); ``/merchant/refund`` refunds.
``POST /notify`` (one) and ``POST /notifyBatch`` (several in one call) receive the
gateway's signed webhooks and apply each ``notifyId`` once: deliveries are at least once on the wire, exactly once here.
Admin endpoints show what arrived and can fail deliveries on purpose (tests)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI, Request, Response
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, Text, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from veilpay.crypto.tokens import random_id
from veilpay.db import GroupCommit, Prepared
from veilpay.errors import DecryptionError, InvalidInput, SignatureError, VeilpayError
from veilpay.host import FASTAPI_TELEMETRY_OFF
from veilpay.partners._common import admin_ok, json_response, load_identity, open_db, trust_of
from veilpay.partners.config import PartnerConfig
from veilpay.sdk import wirejson
from veilpay.sdk.client import AsyncGatewayClient
from veilpay.sdk.envelope import SessionSealer
from veilpay.sdk.features import share_features
from veilpay.sdk.partner import GatewayCalls
from veilpay.sdk.shares import reveal_amounts

__all__ = ["create_acqp_app"]

md = MetaData()
notifications = Table("notifications", md, Column("notify_id", String(48), primary_key=True),
                      Column("kind", String(24)), Column("payment_id", String(40)), Column("refund_id", String(40)),
                      Column("code", String(48)), Column("body", Text), Column("received_ms", BigInteger),
                      Column("deliveries", Integer))
orders = Table("orders", md, Column("payment_request_id", String(64), primary_key=True),
               Column("payment_id", String(40)), Column("status", String(16)), Column("amount", BigInteger),
               Column("currency", String(3)), Column("refunded", BigInteger))
# The webhook path's statements, built once (building one per call costs more than running it).
_INSERT_NOTIFICATION = insert(notifications)
_PAID = update(orders).where(orders.c.payment_request_id == bindparam("b_request")).values(
    status=bindparam("b_status"), payment_id=bindparam("b_payment"))
_REFUNDED = update(orders).where(orders.c.payment_request_id == bindparam("b_request")).values(
    refunded=orders.c.refunded + bindparam("b_value"))
_REDELIVERED = update(notifications).where(notifications.c.notify_id == bindparam("b_nid")).values(
    deliveries=notifications.c.deliveries + 1)


def create_acqp_app(cfg: PartnerConfig, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """``transport`` routes the SDK's calls to the gateway (tests pass an in-process app)."""
    keys, gateway = load_identity(cfg, "acqp")
    calls = GatewayCalls(keys, gateway, cfg.request_window_s)
    engine = open_db(cfg.database, md)
    writes = GroupCommit(engine)
    # the webhook path's statements, compiled once for this database and run on its cursor
    insert_notification = Prepared(_INSERT_NOTIFICATION, engine.dialect, [c.name for c in notifications.c])
    paid, refunded_by = Prepared(_PAID, engine.dialect), Prepared(_REFUNDED, engine.dialect)
    client = AsyncGatewayClient(keys, cfg.gateway_url, gateway, pets=cfg.pets, transport=transport, **trust_of(cfg))
    risk_sessions = SessionSealer()  # risk features: one HPKE seal per node per session
    faults = {"drop_before": 0, "drop_after": 0}
    wire = {"count": 0}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()
        engine.dispose()

    app = FastAPI(title=f"veilpay reference ACQP {keys.id}", docs_url=None, redoc_url=None, lifespan=lifespan,
                  telemetry=FASTAPI_TELEMETRY_OFF)
    app.state.engine, app.state.client, app.state.writes = engine, client, writes

    async def apply(obj: dict[str, Any], text: str) -> dict[str, str]:
        """Apply one verified notification once (by notifyId); its answer's result. The
        notification and its effect on the order commit in one transaction, shared with
        the notifications applied at the same time (a notifyBatch)."""
        try:
            nid = str(obj["notifyId"])
            if cfg.pets:
                obj = reveal_amounts(obj, keys)  # amounts sealed to us on networks with privacy nodes
            res = obj.get("paymentResult") or obj.get("refundResult") or {}
            refunded = int(obj["refundAmount"]["value"]) \
                if obj.get("notifyType") == "REFUND_RESULT" and res.get("resultStatus") == "S" else None
        except (KeyError, TypeError, ValueError, AttributeError, DecryptionError) as exc:
            return {"resultCode": "PARAM_ILLEGAL", "resultStatus": "F", "resultMessage": str(exc)}
        row = {"notify_id": nid, "kind": str(obj.get("notifyType")), "payment_id": obj.get("paymentId"),
               "refund_id": obj.get("refundId"), "code": str(res.get("resultCode")), "body": text,
               "received_ms": int(time.time() * 1000), "deliveries": 1}

        def record(conn: Any) -> None:
            insert_notification.run(conn, row)
            if obj.get("notifyType") == "PAYMENT_RESULT":
                paid.run(conn, {"b_request": obj.get("paymentRequestId"), "b_status": res.get("resultStatus"),
                                "b_payment": obj.get("paymentId")})
            elif refunded is not None:
                refunded_by.run(conn, {"b_request": obj.get("paymentRequestId"), "b_value": refunded})

        try:
            await writes.run(record)
        except IntegrityError:  # seen before: count the delivery, apply nothing
            with engine.begin() as conn:
                conn.execute(_REDELIVERED, {"b_nid": nid})
        return {"resultCode": "SUCCESS", "resultStatus": "S", "resultMessage": "Success"}

    def refused(exc: SignatureError) -> Response:
        body, h = calls.refuse({"result": {"resultCode": exc.code, "resultStatus": "F", "resultMessage": str(exc)}})
        return json_response(body, h, 401)

    @app.post("/notify")
    async def notify(request: Request) -> Response:
        raw = await request.body()
        wire["count"] += 1
        try:
            obj, digest = calls.verify("POST", "/notify", dict(request.headers), raw)
        except SignatureError as exc:
            return refused(exc)
        if faults["drop_before"] > 0:
            faults["drop_before"] -= 1
            return Response(status_code=503)
        res = await apply(obj, raw.decode())
        if res["resultStatus"] != "S":
            body, h = calls.answer("POST", "/notify", {"result": res, "notifyId": obj.get("notifyId")}, digest)
            return json_response(body, h, 401)
        if faults["drop_after"] > 0:  # applied, but the answer is "lost": the gateway will send it again
            faults["drop_after"] -= 1
            return Response(status_code=503)
        body, h = calls.answer("POST", "/notify", {"result": res, "notifyId": obj.get("notifyId")}, digest)
        return json_response(body, h)

    @app.post("/notifyBatch")
    async def notify_batch(request: Request) -> Response:
        """Several notifications in one call (``notifyBatchUrl`` in our directory entry);
        each is applied as ``/notify`` would and answered by its notifyId."""
        raw = await request.body()
        try:
            obj, digest = calls.verify("POST", "/notifyBatch", dict(request.headers), raw)
        except SignatureError as exc:
            return refused(exc)
        items = obj.get("notifications")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            body, h = calls.answer("POST", "/notifyBatch", {"result": {
                "resultCode": "PARAM_ILLEGAL", "resultStatus": "F", "resultMessage": "notifications: a list of objects"}},
                digest)
            return json_response(body, h, 400)
        wire["count"] += len(items)
        if faults["drop_before"] > 0:
            faults["drop_before"] -= 1
            return Response(status_code=503)
        results = await asyncio.gather(*(apply(i, wirejson.dumps_text(i)) for i in items))
        answers = [{"notifyId": i.get("notifyId"), "result": r} for i, r in zip(items, results, strict=True)]
        if faults["drop_after"] > 0:
            faults["drop_after"] -= 1
            return Response(status_code=503)
        body, h = calls.answer("POST", "/notifyBatch", {"result": {"resultCode": "SUCCESS", "resultStatus": "S",
                                                                   "resultMessage": "Success"}, "answers": answers},
                               digest)
        return json_response(body, h)

    async def risk_features(spec: Any, req_id: str, code: str) -> dict[str, Any] | None:
        """``risk``: ``{model, features: [numbers, prepared as at training], amountUsdCents}``;
        this acquirer's features of the payment, shared to the privacy nodes and signed."""
        if spec is None:
            return None
        if not isinstance(spec, dict) or not isinstance(spec.get("features"), list) or not isinstance(
                spec.get("model"), str):
            raise InvalidInput("risk: {model, features: [numbers], amountUsdCents}")
        d = await client.directory()
        found = d.issuer_of(code)
        if d.privacy is None or found is None:
            raise InvalidInput("risk: the network has no privacy nodes, or no MPP issues this code")
        return share_features(keys, acqp=keys.id, mpp=found[1].id, request_id=req_id, model=spec["model"],
                              features=np.asarray(spec["features"], dtype=np.float64),
                              frac=int(spec.get("frac", 20)), nodes=d.nodes(), privacy=d.privacy,
                              amount_usd_cents=int(spec.get("amountUsdCents", 0)), sessions=risk_sessions)

    @app.post("/merchant/checkout")
    async def checkout(request: Request) -> Any:
        o = await request.json()
        req_id = str(o.get("paymentRequestId") or random_id("ord_", 12))
        with contextlib.suppress(IntegrityError), engine.begin() as conn:
            conn.execute(insert(orders).values(payment_request_id=req_id, status="U", refunded=0,
                                               amount=int(o["amount"]["value"]), currency=o["amount"]["currency"]))
        try:
            risk = await risk_features(o.get("risk"), req_id, str(o["paymentCode"]))
            ans = await client.pay(req_id, o["amount"], str(o["paymentCode"]), o.get("order", {}), o.get("env"),
                                   risk_features=risk)
        except VeilpayError as exc:
            return Response(json.dumps({"error": type(exc).__name__, "message": str(exc)}), status_code=502,
                            media_type="application/json")
        out = {"paymentRequestId": req_id, "paymentId": ans.body.get("paymentId"), "result": ans.result}
        if ans.risk_result is not None:
            out["riskResult"] = ans.risk_result
        if ans.status == "S":
            out["customer"] = ans.customer_info()
        return out

    @app.post("/merchant/refund")
    async def merchant_refund(request: Request) -> Any:
        o = await request.json()
        ans = await client.refund(str(o.get("refundRequestId") or random_id("rr_", 12)), o["amount"],
                                  payment_request_id=str(o["paymentRequestId"]))
        return {"refundId": ans.body.get("refundId"), "result": ans.result}

    def denied() -> Response:
        return Response(b'{"error":"admin token required"}', status_code=401, media_type="application/json")

    @app.get("/admin/notifications")
    async def list_notifications(request: Request) -> Any:
        if not admin_ok(request, keys):
            return denied()
        with engine.connect() as conn:
            rows = conn.execute(select(notifications.c.notify_id, notifications.c.kind, notifications.c.payment_id,
                                       notifications.c.refund_id, notifications.c.code,
                                       notifications.c.deliveries)).all()
        return {"wire": wire["count"], "notifications": [dict(r._mapping) for r in rows]}

    @app.post("/admin/faults")
    async def set_faults(request: Request) -> Any:
        if not admin_ok(request, keys):
            return denied()
        o = await request.json()
        for k in faults:
            faults[k] = int(o.get(k, faults[k]))
        return dict(faults)

    return app
