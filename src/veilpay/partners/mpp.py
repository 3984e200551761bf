"""The reference MPP: a small e-wallet with balances in its own SQLite ledger.

It answers the gateway's signed calls (pay, payBatch, cancel, refund), each
idempotent on the gateway's id, so the gateway may re-send after a timeout or a crash without a second
debit. It opens the payment code, order and device envelopes the ACQP sealed to it,
turns the payer's account id into a pseudonymous token with its own PRF key, and
seals the payer details it shares with the merchant to the ACQP. Admin endpoints
(bearer token from its secret file) create wallets and payment codes for demos and
tests; ``/admin/hold`` parks incoming payments, to test a gateway crash mid-flow."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from sqlalchemy import BigInteger, Column, MetaData, String, Table, Text, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from veilpay.db import GroupCommit, Prepared
from veilpay.errors import ConfigError, DecryptionError, InvalidInput, SignatureError
from veilpay.host import FASTAPI_TELEMETRY_OFF
from veilpay.ml.prep import Prep, apply_row
from veilpay.partners._common import admin_ok, json_response, load_identity, open_db, trust_of
from veilpay.partners.config import PartnerConfig
from veilpay.sdk import wirejson
from veilpay.sdk.client import AsyncGatewayClient
from veilpay.sdk.envelope import SessionSealer, open_fields, open_group
from veilpay.sdk.features import risk_token, share_features
from veilpay.sdk.keys import customer_token
from veilpay.sdk.money import MINOR_UNITS
from veilpay.sdk.partner import GatewayCalls
from veilpay.sdk.riskclient import RiskScorer
from veilpay.sdk.shares import open_amount

__all__ = ["create_mpp_app"]

md = MetaData()
wallets = Table("wallets", md, Column("user_id", String(64), primary_key=True), Column("name", String(128)),
                Column("currency", String(3)), Column("balance", BigInteger))
codes = Table("codes", md, Column("code", String(32), primary_key=True), Column("user_id", String(64)),
              Column("expires_ms", BigInteger), Column("used_by", String(40)))
mpp_payments = Table("payments", md, Column("payment_id", String(40), primary_key=True), Column("acqp_id", String(64)),
                     Column("user_id", String(64)), Column("currency", String(3)), Column("amount", BigInteger),
                     Column("wallet_currency", String(3)), Column("debit", BigInteger), Column("refunded", BigInteger),
                     Column("credited", BigInteger), Column("status", String(16)), Column("answer", Text),
                     Column("created_ms", BigInteger))
mpp_refunds = Table("refunds", md, Column("refund_id", String(40), primary_key=True), Column("payment_id", String(40)),
                    Column("amount", BigInteger), Column("credit", BigInteger), Column("status", String(16)),
                    Column("answer", Text))
MAX_BATCH = 256  # payments in one payBatch call
# The pay path's statements, built once (building one per call costs more than running it).
_ANSWER_OF = select(mpp_payments.c.answer).where(mpp_payments.c.payment_id == bindparam("b_pid"))
# the code and its holder's wallet in one read (no wallet: its columns are NULL)
# [partner.risk]: the raw risk columns this MPP keeps of each customer (its model's
# columns before the preparation recorded at training), for scoring at the nodes
risk_profiles = Table("risk_profiles", md, Column("user_id", String(64), primary_key=True),
                      Column("features", Text, nullable=False))
_PROFILE_OF_CODE = select(codes.c.user_id, risk_profiles.c.features) \
    .select_from(codes.outerjoin(risk_profiles, risk_profiles.c.user_id == codes.c.user_id)) \
    .where(codes.c.code == bindparam("b_code"))
_CODE_AND_WALLET = select(codes.c.user_id, codes.c.expires_ms, codes.c.used_by, wallets.c.user_id.label("w_user"),
                          wallets.c.name, wallets.c.currency, wallets.c.balance) \
    .select_from(codes.outerjoin(wallets, wallets.c.user_id == codes.c.user_id)) \
    .where(codes.c.code == bindparam("b_code"))
_INSERT_PAYMENT = insert(mpp_payments)
_DEBIT = update(wallets).where(wallets.c.user_id == bindparam("b_user")).values(
    balance=wallets.c.balance - bindparam("b_debit"))
_USE_CODE = update(codes).where(codes.c.code == bindparam("b_code")).values(used_by=bindparam("b_pid"))


def _res(code: str, status: str, msg: str = "") -> dict[str, str]:
    return {"resultCode": code, "resultStatus": status, "resultMessage": msg}


def convert(value: int, src: str, dst: str, fx: dict[str, Decimal]) -> int | None:
    """``value`` minor units of ``src`` in minor units of ``dst`` at the MPP's rate."""
    if src == dst:
        return value
    rate = fx.get(f"{src}/{dst}")
    if rate is None:
        return None
    major = Decimal(value) / (Decimal(10) ** MINOR_UNITS[src]) * rate
    return int((major * (Decimal(10) ** MINOR_UNITS[dst])).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _mask(name: str) -> str:
    return name[:1] + "*" * max(len(name) - 1, 0)


def _route(signed_call: Any, handler: Any) -> Any:
    async def ep(request: Request) -> Response:
        return await signed_call(request, handler)
    return ep


def create_mpp_app(cfg: PartnerConfig, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """``transport`` routes the SDK's calls to the gateway (tests pass an in-process app)."""
    keys, gateway = load_identity(cfg, "mpp")
    if keys.token_key is None:
        raise ConfigError(f"{cfg.keys}: the MPP's secret file has no token key")
    calls = GatewayCalls(keys, gateway, cfg.request_window_s)
    engine = open_db(cfg.database, md)
    writes = GroupCommit(engine)
    # the pay path's statements, compiled once for this database and run on its cursor
    answer_of, code_and_wallet, debit_wallet, use_code = (
        Prepared(q, engine.dialect) for q in (_ANSWER_OF, _CODE_AND_WALLET, _DEBIT, _USE_CODE))
    insert_payment = Prepared(_INSERT_PAYMENT, engine.dialect, [c.name for c in mpp_payments.c])
    sessions = SessionSealer()  # customerInfo: one HPKE seal per ACQP per session, not per payment
    client = AsyncGatewayClient(keys, cfg.gateway_url, gateway, pets=cfg.pets, transport=transport, **trust_of(cfg))
    released = asyncio.Event()
    released.set()
    prep = None
    if cfg.risk is not None:
        if cfg.privacy is None:
            raise ConfigError("[partner.risk] needs the privacy nodes pinned in [partner.privacy]")
        try:
            prep = Prep.from_json(json.loads(cfg.risk.prep.read_text()))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{cfg.risk.prep}: not a prep.json of a training run ({exc})") from exc
    risk_http = httpx.AsyncClient(transport=transport, timeout=10.0)
    scorer = RiskScorer(risk_http, keys, cfg.risk.budget_ms / 1000, cfg.risk.fail_policy) if cfg.risk else None
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()
        await risk_http.aclose()
        engine.dispose()

    app = FastAPI(title=f"veilpay reference MPP {keys.id}", docs_url=None, redoc_url=None, lifespan=lifespan,
                  telemetry=FASTAPI_TELEMETRY_OFF)
    app.state.engine, app.state.writes, app.state.sessions = engine, writes, sessions

    async def acqp_entry(acqp_id: str) -> Any:
        d = await client.directory()
        entry = d.get(acqp_id)
        if entry is None:
            entry = (await client.directory(refresh=True)).get(acqp_id)
        return entry

    async def signed_call(request: Request, handler: Any) -> Response:
        path = request.url.path
        raw = await request.body()
        try:
            obj, digest = calls.verify("POST", path, dict(request.headers), raw)
        except SignatureError as exc:
            body, h = calls.refuse({"result": _res(exc.code, "F", str(exc))})
            return json_response(body, h, 401)
        try:
            answer = await handler(obj)
        except (KeyError, TypeError, ValueError) as exc:
            answer = {"result": _res("PARAM_ILLEGAL", "F", f"malformed call: {type(exc).__name__}")}
        for k in ("paymentId", "refundId"):  # every answer names what it answers
            if isinstance(obj.get(k), str):
                answer.setdefault(k, obj[k])
        body, h = calls.answer("POST", path, answer, digest)
        return json_response(body, h)

    def _amount_of(amount: dict[str, Any], kind: str, acqp_id: str, request_id: str) -> tuple[str, int]:
        """A clear amount, or one sealed to this MPP (networks with privacy nodes)."""
        if "sealed" in amount:
            return open_amount(amount, keys, kind, acqp_id, request_id)
        return str(amount["currency"]), int(amount["value"])

    async def assess(obj: dict[str, Any], acqp_id: str, code: str, now: int) -> dict[str, Any] | None:
        """The payment's riskResult from the privacy nodes (``[partner.risk]``): this
        MPP's features of the payer and the ACQP's relayed bundle, scored in MPC; None
        when the code names no customer (the payment fails on the code)."""
        if cfg.risk is None or prep is None:
            return None
        with engine.connect() as conn:
            row = conn.execute(_PROFILE_OF_CODE, {"b_code": code}).first()
        if row is None:
            return None
        fallback = {"decision": cfg.risk.fail_policy, "modelVersion": cfg.risk.model, "rulesVersion": 0}
        acq = obj.get("riskFeatures")
        if row.features is None or not isinstance(acq, dict):
            # the ACQP's bundle may have been withheld on the way (the gateway relays it):
            # a payment the nodes never scored follows on_missing_features, declined by default
            return {**fallback, "decision": cfg.risk.on_missing_features, "reason": "RISK_NO_FEATURES"}
        try:
            raw = json.loads(row.features)
            if "hour" not in raw:
                raw["hour"] = time.gmtime(now / 1000).tm_hour
            x = apply_row(prep, raw, "risk profile")
            d = await client.directory()
            if d.privacy is None:
                return {**fallback, "reason": "RISK_UNAVAILABLE"}
            mine = share_features(keys, acqp=acqp_id, mpp=keys.id, request_id=str(obj["paymentRequestId"]),
                                  model=cfg.risk.model, features=x, frac=cfg.risk.frac_bits, nodes=d.nodes(),
                                  privacy=d.privacy, payer=risk_token(keys, str(row.user_id)), sessions=sessions)
        except (InvalidInput, ValueError, KeyError, TypeError):
            return {**fallback, "reason": "RISK_NO_FEATURES"}
        if scorer is None:
            return None
        return await scorer.score({"mpp": mine, "acqp": acq}, d.nodes(), d.privacy)

    async def pay(obj: dict[str, Any]) -> dict[str, Any]:
        await released.wait()
        pid, acqp_id = str(obj["paymentId"]), str(obj["acquirerId"])
        ctx = f"{acqp_id}/{obj['paymentRequestId']}"
        currency, value = str(obj["paymentAmount"]["currency"]), 0
        acqp = await acqp_entry(acqp_id)
        code, unopened = "", False
        order: dict[str, Any] = {}
        try:
            currency, value = _amount_of(obj["paymentAmount"], "pay", acqp_id, str(obj["paymentRequestId"]))
            pm = obj["paymentMethod"]["paymentMethodId"]
            if cfg.pets:  # a group (one HPKE open) or single envelopes; device data for the MPP's own risk checks
                sealed = {"paymentCode": pm, "order": obj["order"]}
                if obj.get("env") is not None:
                    sealed["env"] = obj["env"]
                opened = open_group(sealed, keys, ctx)
                code, order = str(opened["paymentCode"]["code"]), opened["order"]
            else:
                code, order = str(pm["code"]), obj["order"]
        except DecryptionError:
            unopened = True
        now = int(time.time() * 1000)
        risk = await assess(obj, acqp_id, code, now) if not unopened and code else None
        declined = risk is not None and (risk["decision"] == "decline" or (
            risk["decision"] == "review" and cfg.risk is not None and cfg.risk.on_review == "decline"))
        row = {"payment_id": pid, "acqp_id": acqp_id, "user_id": None, "currency": currency, "amount": value,
               "wallet_currency": None, "debit": 0, "refunded": 0, "credited": 0, "status": "FAIL",
               "created_ms": now}

        def fail(conn: Any, answer: dict[str, Any], **more: Any) -> dict[str, Any]:
            if risk is not None:
                answer["riskResult"] = risk
            insert_payment.run(conn, {**row, **more, "answer": wirejson.dumps_text(answer)})
            return answer

        def ledger(conn: Any) -> dict[str, Any]:
            """The payment's ledger step, in the transaction of the payments around it;
            the first answer stored for a paymentId is the answer to every re-send."""
            old = answer_of.scalar(conn, {"b_pid": pid})
            if old is not None:
                return dict(wirejson.loads(old))
            if unopened:
                return fail(conn, {"result": _res("PROCESS_FAIL", "F", "sealed fields do not open")})
            if acqp is None:
                return fail(conn, {"result": _res("PROCESS_FAIL", "F", "acquirer not in the directory")})
            crow = code_and_wallet.first(conn, {"b_code": code})
            if crow is None or crow.expires_ms < now or (crow.used_by and crow.used_by != pid):
                return fail(conn, {"result": _res("INVALID_CODE", "F", "unknown, expired or used payment code")})
            if declined:
                return fail(conn, {"result": _res("RISK_REJECT", "F", "declined by the network's risk decision")},
                            user_id=crow.user_id)
            # the wallet's columns (name, currency, balance) are NULL when the holder has none
            user = crow.user_id
            debit = convert(value, currency, crow.currency, cfg.fx) if crow.w_user is not None else None
            if debit is None:
                return fail(conn, {"result": _res("CURRENCY_NOT_SUPPORT", "F", "no rate for this corridor")},
                            user_id=user)
            if crow.balance < debit:
                return fail(conn, {"result": _res("USER_BALANCE_NOT_ENOUGH", "F")}, user_id=user)
            info: dict[str, Any] = {"pspName": cfg.name or keys.id, "customerName": _mask(crow.name or ""),
                                    "displayCustomerId": "*" * 4 + user[-4:],
                                    "orderEcho": str(order.get("orderId", ""))[:64]}
            answer: dict[str, Any] = {
                "result": _res("SUCCESS", "S"), "customerToken": customer_token(keys, user),
                "customerInfo": sessions.seal(info, acqp, "customerInfo", ctx) if cfg.pets else info,
                "walletAmount": {"currency": crow.currency, "value": str(debit)}}
            if risk is not None:
                answer["riskResult"] = risk
            insert_payment.run(conn, {**row, "user_id": user, "wallet_currency": crow.currency, "debit": debit,
                                      "status": "SUCCESS", "answer": wirejson.dumps_text(answer)})
            debit_wallet.run(conn, {"b_user": user, "b_debit": debit})
            use_code.run(conn, {"b_code": code, "b_pid": pid})
            return answer

        answer = await writes.run(ledger)
        answer.pop("walletAmount", None)  # the wallet's side of the debit stays in the ledger
        return answer

    async def cancel(obj: dict[str, Any]) -> dict[str, Any]:
        pid = str(obj["paymentId"])
        closed = json.dumps({"result": _res("ORDER_IS_CLOSED", "F", "cancelled")})
        with engine.begin() as conn:
            row = conn.execute(select(mpp_payments).where(mpp_payments.c.payment_id == pid)).first()
            if row is None:  # a tombstone, so that a late pay for this id is refused
                conn.execute(insert(mpp_payments).values(payment_id=pid, acqp_id=str(obj["acquirerId"]),
                                                         status="CANCELLED", debit=0, refunded=0, credited=0,
                                                         answer=closed, created_ms=int(time.time() * 1000)))
            elif row.status == "SUCCESS":
                if row.refunded:
                    return {"result": _res("ORDER_STATUS_INVALID", "F", "refunded payments are not cancelled")}
                conn.execute(update(wallets).where(wallets.c.user_id == row.user_id)
                             .values(balance=wallets.c.balance + row.debit))
                conn.execute(update(mpp_payments).where(mpp_payments.c.payment_id == pid)
                             .values(status="CANCELLED", credited=row.debit, answer=closed))
        return {"result": _res("SUCCESS", "S")}

    async def refund(obj: dict[str, Any]) -> dict[str, Any]:
        rid, pid = str(obj["refundId"]), str(obj["paymentId"])
        try:
            _, value = _amount_of(obj["refundAmount"], "refund", str(obj["acquirerId"]), str(obj["refundRequestId"]))
        except DecryptionError:
            return {"result": _res("PROCESS_FAIL", "F", "refund amount does not open")}
        if obj.get("refundReason") is not None and cfg.pets:
            try:
                open_fields(obj["refundReason"], keys, "refundReason", f"{obj['acquirerId']}/{obj['refundRequestId']}")
            except DecryptionError:
                return {"result": _res("PROCESS_FAIL", "F", "refund reason does not open")}
        with engine.begin() as conn:
            old = conn.execute(select(mpp_refunds.c.answer).where(mpp_refunds.c.refund_id == rid)).scalar()
            if old is not None:
                return json.loads(old)
            p = conn.execute(select(mpp_payments).where(mpp_payments.c.payment_id == pid)).first()
            if p is None or p.status != "SUCCESS":
                return {"result": _res("ORDER_STATUS_INVALID", "F")}
            if p.refunded + value > p.amount:
                return {"result": _res("REFUND_AMOUNT_EXCEED", "F")}
            if p.refunded + value == p.amount:
                credit = p.debit - p.credited
            else:
                credit = min(convert(value, p.currency, p.wallet_currency, cfg.fx) or 0, p.debit - p.credited)
            answer = {"result": _res("SUCCESS", "S")}
            conn.execute(insert(mpp_refunds).values(refund_id=rid, payment_id=pid, amount=value, credit=credit,
                                                    status="SUCCESS", answer=json.dumps(answer)))
            conn.execute(update(mpp_payments).where(mpp_payments.c.payment_id == pid).values(
                refunded=mpp_payments.c.refunded + value, credited=mpp_payments.c.credited + credit))
            conn.execute(update(wallets).where(wallets.c.user_id == p.user_id)
                         .values(balance=wallets.c.balance + credit))
        return answer

    async def pay_batch(obj: dict[str, Any]) -> dict[str, Any]:
        """Several payments in one call (the gateway coalesces them); each is handled
        as ``/mpp/v1/pay`` would handle it, and answered in order with its paymentId."""
        items = obj["payments"]
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            return {"result": _res("PARAM_ILLEGAL", "F", f"payments: a list of 1 to {MAX_BATCH}")}

        async def one(item: Any) -> dict[str, Any]:
            try:
                if not isinstance(item, dict):
                    raise TypeError("payment")
                ans = await pay(item)
            except (KeyError, TypeError, ValueError) as exc:
                ans = {"result": _res("PARAM_ILLEGAL", "F", f"malformed payment: {type(exc).__name__}")}
            return {"paymentId": item.get("paymentId") if isinstance(item, dict) else None, **ans}

        # concurrently, so that their ledger steps commit in one transaction
        answers = await asyncio.gather(*(one(item) for item in items))
        return {"result": _res("SUCCESS", "S"), "answers": list(answers)}

    for path, h in (("/mpp/v1/pay", pay), ("/mpp/v1/payBatch", pay_batch), ("/mpp/v1/cancel", cancel),
                    ("/mpp/v1/refund", refund)):
        app.add_api_route(path, _route(signed_call, h), methods=["POST"], response_class=Response)

    def denied() -> Response:
        return Response(b'{"error":"admin token required"}', status_code=401, media_type="application/json")

    @app.post("/admin/wallets")
    async def add_wallet(request: Request) -> Any:
        if not admin_ok(request, keys):
            return denied()
        try:
            o = await request.json()
            row = {"user_id": str(o["userId"]), "name": str(o.get("name", "")), "currency": str(o["currency"]),
                   "balance": o["balance"]}
            if o["currency"] not in MINOR_UNITS or isinstance(o["balance"], bool) or not isinstance(o["balance"], int) \
                    or o["balance"] < 0:
                raise ValueError("currency or balance")
        except (ValueError, KeyError, TypeError):
            return Response(b'{"error":"a wallet is {userId, name, currency (ISO 4217), balance (minor units, >= 0)}"}',
                            status_code=400, media_type="application/json")
        try:
            with engine.begin() as conn:
                conn.execute(insert(wallets).values(**row))
        except IntegrityError:
            return Response(b'{"error":"a wallet with this userId exists"}', status_code=409,
                            media_type="application/json")
        return {"userId": row["user_id"]}

    @app.post("/admin/risk-profiles")
    async def risk_profile(request: Request) -> Any:
        """A customer's raw risk columns (``[partner.risk]``): ``{userId, features: {column: number}}``."""
        if not admin_ok(request, keys):
            return denied()
        try:
            o = await request.json()
            user, feats = str(o["userId"]), o["features"]
            if not isinstance(feats, dict) or not feats or not all(
                    isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
                    for k, v in feats.items()):
                raise ValueError("features")
        except (ValueError, KeyError, TypeError):
            return Response(b'{"error":"a risk profile is {userId, features: {column: number}}"}', status_code=400,
                            media_type="application/json")
        with engine.begin() as conn:
            conn.execute(delete(risk_profiles).where(risk_profiles.c.user_id == user))
            conn.execute(insert(risk_profiles).values(user_id=user, features=json.dumps(feats)))
        return {"userId": user}

    @app.post("/admin/codes")
    async def new_code(request: Request) -> Any:
        if not admin_ok(request, keys):
            return denied()
        o = await request.json()
        prefix = keys.public.code_prefixes[0]
        n = int(o.get("count", 1))
        if not 1 <= n <= 100_000:
            return Response(b'{"error":"count must be 1..100000"}', status_code=400, media_type="application/json")
        out = [prefix + "".join(str(secrets.randbelow(10)) for _ in range(20 - len(prefix))) for _ in range(n)]
        expires = int((time.time() + float(o.get("ttlSeconds", 600))) * 1000)
        with engine.begin() as conn:
            conn.execute(insert(codes), [{"code": c, "user_id": str(o["userId"]), "used_by": None,
                                          "expires_ms": expires} for c in out])
        return {"code": out[0]} if "count" not in o else {"codes": out}

    @app.get("/admin/wallets/{user_id}")
    async def wallet(user_id: str, request: Request) -> Any:
        if not admin_ok(request, keys):
            return denied()
        with engine.connect() as conn:
            w = conn.execute(select(wallets).where(wallets.c.user_id == user_id)).first()
        return {"userId": user_id, "currency": w.currency, "balance": w.balance} if w else Response(status_code=404)

    @app.get("/admin/ledger")
    async def ledger(request: Request) -> Any:
        if not admin_ok(request, keys):
            return denied()
        with engine.connect() as conn:
            rows = conn.execute(select(mpp_payments.c.payment_id, mpp_payments.c.status, mpp_payments.c.amount,
                                       mpp_payments.c.refunded, mpp_payments.c.debit, mpp_payments.c.credited)).all()
        return {"payments": [dict(r._mapping) for r in rows]}

    @app.post("/admin/hold")
    async def hold(request: Request) -> Any:
        if not admin_ok(request, keys):
            return denied()
        on = bool((await request.json()).get("hold"))
        if on:
            released.clear()
        else:
            released.set()
        return {"hold": on}

    return app
