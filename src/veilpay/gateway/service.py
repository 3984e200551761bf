"""The payment state machine: accept, forward to the MPP, record, notify.

Every step that matters is committed before the next one starts, so a crash at any
point leaves a row that the resolver finishes: a payment is written PROCESSING before
it is forwarded; the MPP is idempotent on ``paymentId``, so re-sending the payment
after a crash or a timeout is safe and returns the MPP's first answer; the final
status and the webhook to the ACQP are written in one transaction (outbox), and the
outbox worker delivers it at least once. A payment still unknown at its expiry is
cancelled at the MPP (which reverses a debit it made) and closed.

What the gateway reads: the route (code issuer prefix), currencies, the MPP's customer
token and result codes, and amounts unless the network runs privacy nodes. Payment
code, order, device and payer details are HPKE envelopes between the partners; the
gateway stores and forwards them. With privacy nodes (``hidden`` mode) an amount is
an envelope to each of the two partners plus one secret share per node: the gateway
queues each share for its node in the transaction that records the payment, the
nodes check refund bounds and total settlements in MPC, and the gateway learns only
the yes/no of a refund check and the settlement totals (``docs/nodes.md``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine, Row, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from veilpay.crypto.digest import sha256
from veilpay.crypto.tokens import ct_equal, random_id
from veilpay.db import GroupCommit
from veilpay.errors import ConfigError, NodeError, SignatureError
from veilpay.gateway.batch import Coalescer
from veilpay.gateway.codes import CODES, ApiFailure, result
from veilpay.gateway.link import LinkError, PartnerLink
from veilpay.gateway.nodes import NodeLink
from veilpay.gateway.risk import check_risk_features, risk_result_of
from veilpay.gateway.schemas import (
    CancelRequest,
    InquiryPaymentRequest,
    InquiryRefundRequest,
    ListPaymentsRequest,
    PayRequest,
    RefundRequest,
    SettlementSummaryRequest,
)
from veilpay.gateway.store import outbox, payments, refunds, seen_requests, settlement_runs, settlements
from veilpay.sdk import wirejson
from veilpay.sdk.directory import Directory
from veilpay.sdk.envelope import is_envelope, is_linked, one_session
from veilpay.sdk.keys import PartyKeys, PublicEntry
from veilpay.sdk.money import MINOR_UNITS, InvalidAmount, UnsupportedCurrency, parse_amount
from veilpay.sdk.shares import BUNDLE_FIELDS, envelope_digest
from veilpay.sdk.signing import SignedHeaders, format_time, post_headers, request_digest, verify_message

__all__ = ["GatewayService", "MppUnreachable"]

log = logging.getLogger("veilpay.gateway")
# Codes an MPP may answer with; anything else is recorded as PROCESS_FAIL.
_MPP_FAIL_CODES = {"USER_BALANCE_NOT_ENOUGH", "INVALID_CODE", "ORDER_IS_CLOSED", "PROCESS_FAIL",
                   "REFUND_AMOUNT_EXCEED", "ORDER_NOT_EXIST", "CURRENCY_NOT_SUPPORT", "RISK_REJECT"}


# The hot path's statements, built once: building one per call costs SQLAlchemy about
# 200 us of CPU (coercions, cache key), three times what executing it costs.
_INSERT_SEEN = insert(seen_requests)
_INSERT_PAYMENT = insert(payments)
_INSERT_OUTBOX = insert(outbox)
_PAYMENT_BY_ID = select(payments).where(payments.c.id == bindparam("b_id"))
_FINISH_PAYMENT = update(payments).where(and_(
    payments.c.id == bindparam("b_id"), payments.c.status == "PROCESSING", payments.c.cancel_requested.is_(False))
).values(status=bindparam("b_status"), result_code=bindparam("b_code"), result_message=bindparam("b_message"),
         customer_token=bindparam("b_token"), customer_info=bindparam("b_info"), risk_result=bindparam("b_risk"),
         payment_time_ms=bindparam("b_paid"), updated_ms=bindparam("b_now"))


def _with(row: Any, **changes: Any) -> Any:
    """A read-only view of ``row`` with some columns changed, so that a step that
    wrote those columns need not read the row back."""
    return SimpleNamespace(**{**(row._asdict() if isinstance(row, Row) else vars(row)), **changes})


class MppUnreachable(Exception):
    """No verifiable answer from the MPP in time; the outcome is unknown."""


def _now_ms() -> int:
    return int(time.time() * 1000)


_RANDOMISED = frozenset({"ct", "head", "sid"})  # what sealing anew changes in an envelope


def _strip_ciphertext(obj: Any) -> Any:
    if is_envelope(obj):
        return {k: v for k, v in obj.items() if k not in _RANDOMISED}
    if isinstance(obj, dict):
        return {k: _strip_ciphertext(v) for k, v in obj.items()}
    return obj


def _canonical_hash(obj: Any) -> str:
    """The idempotency fingerprint of a request: every field the gateway can read, and
    for sealed groups their recipient and key version but not the ciphertext or the
    session (sealing is randomised, and an application that re-sends the same payment
    seals it anew, perhaps in a new session)."""
    return sha256(wirejson.dumps_sorted(_strip_ciphertext(obj))).hex()


def _amount(currency: str, value: int) -> dict[str, str]:
    return {"currency": currency, "value": str(value)}


def _iso(ms: int | None) -> str | None:
    return format_time(ms / 1000) if ms else None


def _validate(model: Any, obj: Any) -> Any:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise ApiFailure("PARAM_ILLEGAL", f"{where}: {first.get('msg', 'invalid')}") from exc


def _check_amount(obj: Any, what: str) -> tuple[str, int]:
    try:
        return parse_amount(obj, what)
    except UnsupportedCurrency as exc:
        raise ApiFailure("CURRENCY_NOT_SUPPORT", str(exc)) from exc
    except InvalidAmount as exc:
        raise ApiFailure("INVALID_AMOUNT", str(exc)) from exc
    except ValueError as exc:
        raise ApiFailure("PARAM_ILLEGAL", str(exc)) from exc


class GatewayService:
    def __init__(self, cfg: Any, keys: PartyKeys, directory: Callable[[], Directory], engine: Engine,
                 http: PartnerLink, metrics: Any, wake_outbox: Callable[[], None],
                 nodes: NodeLink | None = None) -> None:
        self.cfg, self.keys, self._directory, self.engine, self.http = cfg, keys, directory, engine, http
        self.metrics, self.wake_outbox, self.nodes = metrics, wake_outbox, nodes
        if cfg.forward_batch < 1 or cfg.forward_in_flight < 1:
            raise ConfigError("forward_batch and forward_in_flight must be at least 1")
        self.pay_calls = Coalescer(self._pay_batch, cfg.forward_batch, cfg.forward_in_flight) \
            if cfg.forward_batch > 1 else None
        # The pay path's writes (replay guard, new payment, final status with its webhook)
        # commit together with those of the other requests handled in the same loop turn.
        self.writes = GroupCommit(engine)

    @property
    def hidden(self) -> bool:
        """Amounts are sealed and secret-shared to privacy nodes."""
        return self.nodes is not None

    # ------------------------------------------------------------------ hidden amounts
    def _hidden_amount(self, obj: Any, what: str, acqp: str, mpp: str, kind: str, request_id: str,
                       payment: str = "") -> tuple[str, str, dict[str, Any]]:
        """(currency, sealed-values JSON, one feed item per node) of a hidden amount. The
        gateway checks the shape, the recipients and that the ACQP's signed bundle
        describes this very request and these envelopes; it cannot check the value,
        and the nodes check the bundle's signature against keys they pinned."""
        if isinstance(obj, dict) and "value" in obj:
            raise ApiFailure("AMOUNT_NOT_HIDDEN", f"{what}: send the amount sealed and shared, not in the clear")
        if not isinstance(obj, dict) or set(obj) != {"currency", "sealed", "shares", "bundle"}:
            raise ApiFailure("PARAM_ILLEGAL", f"{what}: expected currency, sealed, shares and bundle")
        currency = obj["currency"]
        if not isinstance(currency, str) or currency not in MINOR_UNITS:
            raise ApiFailure("CURRENCY_NOT_SUPPORT", f"{what}: currency {str(currency)[:8]!r}")
        sealed, shares, bundle = obj["sealed"], obj["shares"], obj["bundle"]
        want_sealed, want_shares = {acqp, mpp}, set(self.nodes.privacy.nodes)  # type: ignore[union-attr]
        if not isinstance(sealed, dict) or set(sealed) != want_sealed or not all(
                is_envelope(e) and e["to"] == k for k, e in sealed.items()):
            raise ApiFailure("SEALED_FIELD_INVALID", f"{what}: sealed values for exactly {sorted(want_sealed)}")
        if not isinstance(shares, dict) or set(shares) != want_shares or not all(
                is_envelope(e) and e["to"] == k for k, e in shares.items()):
            raise ApiFailure("SEALED_FIELD_INVALID", f"{what}: one share for each node of {sorted(want_shares)}")
        expect = {"acqp": acqp, "mpp": mpp, "kind": kind, "requestId": request_id, "currency": currency,
                  "payment": payment}
        if not isinstance(bundle, dict) or set(bundle) != set(BUNDLE_FIELDS) or any(
                bundle[k] != v for k, v in expect.items()) or not isinstance(bundle["shares"], dict) or bundle[
                "shares"] != {n: envelope_digest(e) for n, e in shares.items()}:
            raise ApiFailure("SEALED_FIELD_INVALID", f"{what}: the share bundle must describe this request "
                             "(acquirer, MPP, kind, request id, currency, refunded payment) and these shares")
        return currency, wirejson.dumps_text(sealed), {
            n: {"op": "share", "bundle": bundle, "envelope": env} for n, env in shares.items()}

    def _amount_in(self, obj: Any, what: str, acqp: str, mpp: str, kind: str, request_id: str, payment: str = ""
                   ) -> tuple[str, int | None, str | None, dict[str, Any]]:
        """(currency, clear value or None, sealed-values JSON or None, node feed items) of
        a request's amount, as this gateway takes it."""
        if self.hidden:
            currency, sealed, shares = self._hidden_amount(obj, what, acqp, mpp, kind, request_id, payment)
            return currency, None, sealed, shares
        currency, value = _check_amount(obj, what)
        return currency, value, None, {}

    def _queue_shares(self, conn: Any, shares: dict[str, Any], item_id: str) -> None:
        """One feed row per node: its share envelope and the ACQP's signed bundle."""
        if self.nodes is not None:
            self.nodes.enqueue(conn, {n: {**item, "id": item_id} for n, item in shares.items()})

    @staticmethod
    def _amount_out(row: Row, reader: str) -> dict[str, Any]:
        """A row's amount as ``reader`` may see it: clear, or the value sealed to it."""
        if row.amount is not None:
            return _amount(row.currency, row.amount)
        sealed = wirejson.loads(row.amount_sealed or "{}")
        return {"currency": row.currency, "sealed": {reader: sealed[reader]} if reader in sealed else {}}

    @property
    def directory(self) -> Directory:
        return self._directory()

    # ------------------------------------------------------------------ auth
    async def authenticate(self, method: str, path: str, headers: dict[str, str], body: bytes
                           ) -> tuple[PublicEntry, SignedHeaders]:
        """The ACQP that signed this request, and the request's signed headers (its answer
        names their digest); ApiFailure for an unknown client, a bad or stale signature,
        or a replay of a request already seen (by its signed nonce: two genuine requests,
        identical to the byte and sent in the same millisecond, have two nonces)."""
        client = headers.get("client-id", "")
        entry = self.directory.get(client)
        if entry is None or entry.role != "acqp":
            raise ApiFailure("INVALID_CLIENT", "Client-Id is not an acquirer in the directory")
        try:
            signed = verify_message(headers, method, path, body, entry.verify_key, time.time(),
                                    self.cfg.request_window_s)
        except SignatureError as exc:
            raise ApiFailure(exc.code if exc.code in CODES else "INVALID_SIGNATURE", str(exc)) from exc
        await self.guard_replay(entry.id, signed)
        return entry, signed

    async def guard_replay(self, client: str, signed: SignedHeaders) -> None:
        """REPLAYED_REQUEST for a request whose nonce this client used before (in the window)."""
        seen = {"client_id": client, "digest": sha256(signed.nonce.encode()).hex(),
                "expires_ms": _now_ms() + int(2 * self.cfg.request_window_s * 1000)}
        try:
            await self.writes.run(lambda conn: conn.execute(_INSERT_SEEN, seen))
        except IntegrityError as exc:
            raise ApiFailure("REPLAYED_REQUEST") from exc

    def purge_seen(self) -> int:
        with self.engine.begin() as conn:
            return conn.execute(seen_requests.delete().where(seen_requests.c.expires_ms < _now_ms())).rowcount

    # ------------------------------------------------------------------ MPP link
    async def call_partner(self, partner: PublicEntry, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """The partner's answer to ``body``: signed by the partner, as the answer to this
        very request, and echoing its ids (paymentId, refundId); MppUnreachable otherwise."""
        raw = wirejson.dumps(body)
        headers = post_headers(self.keys.signer(), path, partner.id, raw)
        try:
            status, hdrs, content = await self.http.post(partner.endpoint.rstrip("/") + path, raw, headers,
                                                         self.cfg.mpp_timeout_s)
        except LinkError as exc:
            self.metrics.mpp_calls.labels(outcome="unreachable").inc()
            raise MppUnreachable(str(exc)) from exc
        try:
            signed = verify_message(hdrs, "POST", path, content, partner.verify_key, time.time(),
                                    self.cfg.request_window_s, "Response-Time", request_digest(headers))
            if signed.client_id != partner.id:
                raise SignatureError("answer signed for another partner")
            obj = wirejson.loads(content)
            res = obj["result"]
            if res["resultStatus"] not in ("S", "F", "U"):
                raise ValueError("resultStatus")
            if any(obj.get(k) != body[k] for k in ("paymentId", "refundId") if k in body):
                raise ValueError("the answer names another payment or refund")
        except (SignatureError, ValueError, KeyError, TypeError) as exc:
            self.metrics.mpp_calls.labels(outcome="bad_answer").inc()
            log.warning("bad answer from partner", extra={"event": "partner_bad_answer", "partner": partner.id,
                                                          "path": path, "http_status": status})
            raise MppUnreachable("unverifiable answer") from exc
        self.metrics.mpp_calls.labels(outcome=res["resultStatus"]).inc()
        return obj

    async def forward_pay(self, mpp: PublicEntry, body: dict[str, Any]) -> dict[str, Any]:
        """The MPP's answer to one payment: through ``/mpp/v1/payBatch`` together with the
        payments that wait for the same MPP, or alone through ``/mpp/v1/pay``."""
        if self.pay_calls is None:
            return await self.call_partner(mpp, "/mpp/v1/pay", body)
        return await self.pay_calls.call(mpp.id, body)

    async def _pay_batch(self, mpp_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One payBatch call; an item whose answer is missing or malformed is answered
        U, so it is resolved later like a payment whose call timed out."""
        mpp = self.directory.get(mpp_id)
        if mpp is None:
            raise MppUnreachable("the MPP left the network")
        obj = await self.call_partner(mpp, "/mpp/v1/payBatch", {"payments": items})
        answers = obj.get("answers")
        if obj["result"]["resultStatus"] != "S" or not isinstance(answers, list) or len(answers) != len(items):
            raise MppUnreachable(f"payBatch answered {obj['result'].get('resultCode')!s:.48}")
        out = []
        for item, ans in zip(items, answers, strict=True):
            res = ans.get("result") if isinstance(ans, dict) else None
            if (not isinstance(res, dict) or res.get("resultStatus") not in ("S", "F", "U")
                    or ans.get("paymentId") != item["paymentId"]):
                ans = {"result": result("UNKNOWN_EXCEPTION")}
            out.append(ans)
        return out

    def _backoff_ms(self, attempts: int) -> int:
        return int(min(self.cfg.mpp_timeout_s * 2 ** min(attempts, 6), 300.0) * 1000)

    # ------------------------------------------------------------------ reads
    def _payment(self, conn: Any, acqp: str | None, payment_id: str | None, request_id: str | None) -> Row | None:
        if acqp is None and payment_id is not None:
            return conn.execute(_PAYMENT_BY_ID, {"b_id": payment_id}).first()
        q = select(payments)
        if payment_id is not None:
            q = q.where(payments.c.id == payment_id)
        else:
            q = q.where(payments.c.payment_request_id == request_id)
        if acqp is not None:
            q = q.where(payments.c.acqp_id == acqp)
        return conn.execute(q).first()

    def _load_payment(self, pid: str) -> Row:
        with self.engine.connect() as conn:
            row = self._payment(conn, None, pid, None)
        if row is None:
            raise ApiFailure("ORDER_NOT_EXIST")
        return row

    def _load_refund(self, rid: str) -> Row:
        with self.engine.connect() as conn:
            row = conn.execute(select(refunds).where(refunds.c.id == rid)).first()
        if row is None:
            raise ApiFailure("ORDER_NOT_EXIST")
        return row

    @staticmethod
    def _payment_result(row: Row) -> dict[str, str]:
        if row.status == "PROCESSING":
            return result("PAYMENT_IN_PROCESS")
        return result(row.result_code, row.result_message or None)

    def payment_body(self, row: Row, res: dict[str, str]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "result": res, "paymentId": row.id, "paymentRequestId": row.payment_request_id,
            "acquirerId": row.acqp_id, "pspId": row.mpp_id, "paymentAmount": self._amount_out(row, row.acqp_id),
        }
        if row.payment_time_ms:
            body["paymentTime"] = _iso(row.payment_time_ms)
        if row.customer_info:
            body["customerInfo"] = wirejson.loads(row.customer_info)
        if row.risk_result:
            body["riskResult"] = wirejson.loads(row.risk_result)
        return body

    # ------------------------------------------------------------------ pay
    async def pay(self, acqp: PublicEntry, obj: Any) -> dict[str, Any]:
        req: PayRequest = _validate(PayRequest, obj)
        mpp = self.directory.mpp_for_prefix(req.paymentMethod.codeIssuer)
        if mpp is None:
            raise ApiFailure("INVALID_CODE", f"no MPP issues payment codes with prefix {req.paymentMethod.codeIssuer}")
        currency, value, sealed, shares = self._amount_in(req.paymentAmount, "paymentAmount", acqp.id, mpp.id, "pay",
                                                          req.paymentRequestId)
        forward = {"paymentMethod": req.paymentMethod.model_dump(), "order": req.order}
        if req.env is not None:
            forward["env"] = req.env
        self._check_sealed({"paymentMethodId": req.paymentMethod.paymentMethodId, "order": req.order,
                            "env": req.env}, mpp.id)
        if req.riskFeatures is not None:  # relayed to the MPP as sent, and kept with the groups for re-sends
            forward["riskFeatures"] = check_risk_features(
                req.riskFeatures, acqp=acqp.id, mpp=mpp.id, request_id=req.paymentRequestId,
                nodes=self.nodes.privacy.nodes if self.nodes is not None else None)
        now = _now_ms()
        pid = random_id("pay_")
        # Risk features are left out of the fingerprint: an application that sends the
        # payment again builds them anew (fresh shares, time and signature, and counts
        # that moved on), and must still get the stored result.
        h = _canonical_hash({k: v for k, v in obj.items() if k != "riskFeatures"})
        new = {"id": pid, "acqp_id": acqp.id, "payment_request_id": req.paymentRequestId, "request_hash": h,
               "mpp_id": mpp.id, "code_issuer": req.paymentMethod.codeIssuer, "currency": currency, "amount": value,
               "amount_sealed": sealed, "refund_count": 0, "status": "PROCESSING",
               "result_code": "PAYMENT_IN_PROCESS", "result_message": "", "customer_token": None,
               "forward": wirejson.dumps_text(forward), "customer_info": None, "risk_result": None, "refunded": 0,
               "cancel_requested": False,
               "created_ms": now, "updated_ms": now, "payment_time_ms": None,
               "expires_ms": now + int(self.cfg.payment_expiry_s * 1000),
               "next_check_ms": now + int(2 * self.cfg.mpp_timeout_s * 1000), "attempts": 0}
        row: Any = SimpleNamespace(**new)

        def record(conn: Any) -> None:
            conn.execute(_INSERT_PAYMENT, new)
            self._queue_shares(conn, shares, pid)

        try:
            await self.writes.run(record)
        except IntegrityError:
            with self.engine.connect() as conn:
                old = self._payment(conn, acqp.id, None, req.paymentRequestId)
            if old is None:
                raise
            if not ct_equal(old.request_hash, h):
                raise ApiFailure("REPEAT_REQ_INCONSISTENT") from None
            row = old
        if self.nodes is not None:
            self.nodes.wake()
        row = await self.drive_payment(row.id, row)
        return self.payment_body(row, self._payment_result(row))

    def _check_sealed(self, groups: dict[str, Any], recipient: str) -> None:
        """Each field group an envelope for ``recipient`` (with PETs); linked groups only
        beside the group's first, which must be the first field named here; groups in a
        session only all together, in one session."""
        present = {name: g for name, g in groups.items() if g is not None}
        for name, g in present.items():
            if self.cfg.pets:
                if not is_envelope(g) or g["to"] != recipient:
                    raise ApiFailure("SEALED_FIELD_INVALID", f"{name} must be an envelope sealed to {recipient}")
            elif is_envelope(g):
                raise ApiFailure("SEALED_FIELD_INVALID", f"{name}: this gateway runs without PETs")
        if not self.cfg.pets or not present or all(g["v"] == 1 for g in present.values()):
            return
        if next(iter(present.values()))["v"] == 3:  # the MPP opens a message's session groups only together
            if not one_session(list(present.values())):
                raise ApiFailure("SEALED_FIELD_INVALID", "the field groups in a session must all be of one session")
            return
        # A group: its first is the first field named, and every other field is linked
        # to it under the same key version (the MPP opens nothing else beside a group).
        head_name, head = next(iter(present.items()))
        if is_linked(head) or head["v"] != 2 or not all(
                is_linked(g) and g["kv"] == head["kv"] for n, g in present.items() if n != head_name):
            raise ApiFailure("SEALED_FIELD_INVALID", f"the other field groups must all be linked to {head_name}")

    async def drive_payment(self, pid: str, row: Any = None) -> Any:
        """Take a PROCESSING payment one step further; returns the row as it is now
        (``row``: the row as the caller just read or wrote it, to save reading it)."""
        if row is None:
            row = self._load_payment(pid)
        if row.cancel_requested and row.status in ("PROCESSING", "SUCCESS"):
            return await self.drive_cancel(row)
        if row.status != "PROCESSING":
            return row
        mpp = self.directory.get(row.mpp_id)
        if mpp is None:
            await self._finish_payment(row, "FAIL", "PROCESS_FAIL", "the MPP left the network")
            return self._load_payment(pid)
        if _now_ms() > row.expires_ms:
            with self.engine.begin() as conn:
                conn.execute(update(payments).where(payments.c.id == pid).values(cancel_requested=True))
            return await self.drive_cancel(self._load_payment(pid), expired=True)
        body = {"paymentId": row.id, "paymentRequestId": row.payment_request_id, "acquirerId": row.acqp_id,
                "paymentAmount": self._amount_out(row, row.mpp_id), **wirejson.loads(row.forward)}
        try:
            ans = await self.forward_pay(mpp, body)
        except MppUnreachable:
            self._retry_later(payments, row)
            return self._load_payment(pid)
        res = ans["result"]
        if res["resultStatus"] == "S":
            token = ans.get("customerToken")
            info = ans.get("customerInfo")
            done = await self._finish_payment(row, "SUCCESS", "SUCCESS", "", token=str(token)[:64] if token else None,
                                              info=info if isinstance(info, dict) else None,
                                              risk=risk_result_of(ans.get("riskResult"), row.id))
        elif res["resultStatus"] == "F":  # a risk decline (RISK_REJECT) included
            code = res.get("resultCode") if res.get("resultCode") in _MPP_FAIL_CODES else "PROCESS_FAIL"
            done = await self._finish_payment(row, "FAIL", code, "", risk=risk_result_of(ans.get("riskResult"), row.id))
        else:
            self._retry_later(payments, row)
            done = None
        return done if done is not None else self._load_payment(pid)

    def _retry_later(self, table: Any, row: Row) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(table).where(table.c.id == row.id).values(
                attempts=row.attempts + 1, next_check_ms=_now_ms() + self._backoff_ms(row.attempts),
                updated_ms=_now_ms()))

    async def _finish_payment(self, row: Any, status: str, code: str, message: str, token: str | None = None,
                              info: dict[str, Any] | None = None, risk: dict[str, Any] | None = None) -> Any:
        """Record the payment's final status and queue its webhook (``info``: the MPP's
        sealed customerInfo; ``risk``: its checked riskResult); returns the row as
        written, or None when it was no longer PROCESSING (another step got there first)."""
        now = _now_ms()
        paid = now if status == "SUCCESS" else None
        info_text = wirejson.dumps_text(info) if info is not None else None
        risk_text = wirejson.dumps_text(risk) if risk is not None else None

        def record(conn: Any) -> int:
            done: int = conn.execute(_FINISH_PAYMENT, {
                "b_id": row.id, "b_status": status, "b_code": code, "b_message": message, "b_token": token,
                "b_info": info_text, "b_risk": risk_text, "b_paid": paid, "b_now": now}).rowcount
            if done:
                body = {"notifyType": "PAYMENT_RESULT", "paymentId": row.id,
                        "paymentRequestId": row.payment_request_id, "acquirerId": row.acqp_id,
                        "paymentResult": result(code, message or None),
                        "paymentAmount": self._amount_out(row, row.acqp_id)}
                if status == "SUCCESS":
                    body["paymentTime"] = _iso(now)
                if info is not None:
                    body["customerInfo"] = info
                if risk is not None:
                    body["riskResult"] = risk
                self._enqueue(conn, row.acqp_id, "notifyPayment", body, now)
                if self.nodes is not None:
                    self.nodes.enqueue_status(conn, row.id, status)
            return done

        done = await self.writes.run(record)
        if not done:
            return None
        if self.nodes is not None:
            self.nodes.wake()
        self.metrics.payments.labels(status=status).inc()
        log.info("payment final", extra={"event": "payment_final", "paymentId": row.id, "code": code})
        self.wake_outbox()
        return _with(row, status=status, result_code=code, result_message=message, customer_token=token,
                     customer_info=info_text, risk_result=risk_text, payment_time_ms=paid, updated_ms=now)

    def _enqueue(self, conn: Any, partner: str, kind: str, body: dict[str, Any], now: int) -> None:
        nid = random_id("ntf_")
        body = {"notifyId": nid, **body}
        conn.execute(_INSERT_OUTBOX, {"notify_id": nid, "partner_id": partner, "kind": kind,
                                      "body": wirejson.dumps_text(body), "status": "PENDING", "attempts": 0,
                                      "next_attempt_ms": now, "lease_until_ms": 0, "last_error": "",
                                      "created_ms": now})

    # ------------------------------------------------------------------ inquiry
    async def inquiry_payment(self, acqp: PublicEntry, obj: Any) -> dict[str, Any]:
        req: InquiryPaymentRequest = _validate(InquiryPaymentRequest, obj)
        with self.engine.connect() as conn:
            row = self._payment(conn, acqp.id, req.paymentId, req.paymentRequestId)
        if row is None:
            raise ApiFailure("ORDER_NOT_EXIST")
        if row.status == "PROCESSING" or (row.cancel_requested and row.status == "SUCCESS"):
            row = await self.drive_payment(row.id)
        body = self.payment_body(row, result("SUCCESS"))
        body["paymentResult"] = self._payment_result(row)
        body["paymentStatus"] = row.status
        if not self.hidden:
            body["refundedAmount"] = _amount(row.currency, row.refunded)
        else:  # the gateway cannot add hidden amounts: it lists the refunds, each amount sealed to the ACQP
            with self.engine.connect() as conn:
                refs = conn.execute(select(refunds).where(and_(refunds.c.payment_id == row.id,
                                                               refunds.c.status.in_(("SUCCESS", "PROCESSING"))))
                                    .order_by(refunds.c.created_ms)).all()
            body["refunds"] = [{"refundId": r.id, "refundRequestId": r.refund_request_id, "refundStatus": r.status,
                                "refundAmount": self._amount_out(r, row.acqp_id)} for r in refs]
        return body

    # ------------------------------------------------------------------ cancel
    async def cancel(self, acqp: PublicEntry, obj: Any) -> dict[str, Any]:
        req: CancelRequest = _validate(CancelRequest, obj)
        with self.engine.connect() as conn:
            row = self._payment(conn, acqp.id, req.paymentId, req.paymentRequestId)
        if row is None:
            raise ApiFailure("ORDER_NOT_EXIST")
        if row.status in ("CANCELLED", "FAIL") and not row.cancel_requested:
            return self._cancel_body(row, result("SUCCESS"))
        if not row.cancel_requested:
            if _now_ms() > row.created_ms + self.cfg.cancel_window_s * 1000:
                raise ApiFailure("CANCEL_WINDOW_EXCEED")
            with self.engine.begin() as conn:
                n = conn.execute(update(payments).where(and_(
                    payments.c.id == row.id, payments.c.refund_count == 0,
                    payments.c.status.in_(("PROCESSING", "SUCCESS")))).values(
                    cancel_requested=True, next_check_ms=_now_ms() + int(2 * self.cfg.mpp_timeout_s * 1000))).rowcount
            if not n:
                row = self._load_payment(row.id)
                if row.refund_count:
                    raise ApiFailure("ORDER_STATUS_INVALID", "the payment has refunds; refund the rest instead")
                return self._cancel_body(row, result("SUCCESS"))
        row = await self.drive_cancel(self._load_payment(row.id))
        if row.status == "CANCELLED":
            return self._cancel_body(row, result("SUCCESS"))
        return self._cancel_body(row, result("UNKNOWN_EXCEPTION", "cancel sent; retry cancelPayment to learn the outcome"))

    @staticmethod
    def _cancel_body(row: Row, res: dict[str, str]) -> dict[str, Any]:
        body = {"result": res, "paymentId": row.id, "paymentRequestId": row.payment_request_id}
        if row.status == "CANCELLED":
            body["cancelTime"] = _iso(row.updated_ms)
        return body

    async def drive_cancel(self, row: Row, expired: bool = False) -> Row:
        mpp = self.directory.get(row.mpp_id)
        try:
            if mpp is None:
                raise MppUnreachable("the MPP left the network")
            ans = await self.call_partner(mpp, "/mpp/v1/cancel", {"paymentId": row.id, "acquirerId": row.acqp_id})
            if ans["result"]["resultStatus"] != "S":
                raise MppUnreachable("cancel not confirmed")
        except MppUnreachable:
            self._retry_later(payments, row)
            return self._load_payment(row.id)
        now = _now_ms()
        was_pending = row.status == "PROCESSING"
        expired = expired or now > row.expires_ms
        code = "ORDER_IS_CLOSED"
        msg = "expired before a final answer; cancelled at the MPP" if expired else "cancelled"
        with self.engine.begin() as conn:
            done = conn.execute(update(payments).where(and_(
                payments.c.id == row.id, payments.c.status.in_(("PROCESSING", "SUCCESS")))).values(
                status="CANCELLED", result_code=code, result_message=msg, updated_ms=now)).rowcount
            if done and was_pending:  # the ACQP never had a final answer: tell it
                self._enqueue(conn, row.acqp_id, "notifyPayment", {
                    "notifyType": "PAYMENT_RESULT", "paymentId": row.id, "paymentRequestId": row.payment_request_id,
                    "acquirerId": row.acqp_id, "paymentResult": result(code, msg),
                    "paymentAmount": self._amount_out(row, row.acqp_id)}, now)
            if done and self.nodes is not None:
                self.nodes.enqueue_status(conn, row.id, "CANCELLED")
        if done:
            if self.nodes is not None:
                self.nodes.wake()
            self.metrics.payments.labels(status="CANCELLED").inc()
            self.wake_outbox()
        return self._load_payment(row.id)

    # ------------------------------------------------------------------ refund
    async def refund(self, acqp: PublicEntry, obj: Any) -> dict[str, Any]:
        req: RefundRequest = _validate(RefundRequest, obj)
        with self.engine.connect() as conn:
            pay = self._payment(conn, acqp.id, req.paymentId, req.paymentRequestId)
        if pay is None:
            raise ApiFailure("ORDER_NOT_EXIST")
        currency, value, sealed, shares = self._amount_in(req.refundAmount, "refundAmount", acqp.id, pay.mpp_id,
                                                          "refund", req.refundRequestId, pay.payment_request_id)
        if currency != pay.currency:
            raise ApiFailure("CURRENCY_NOT_SUPPORT", f"refund in {pay.currency}, the payment's currency")
        self._check_sealed({"refundReason": req.refundReason}, pay.mpp_id)
        now = _now_ms()
        rid = random_id("rfd_")
        h = _canonical_hash(obj)
        forward = {"refundReason": req.refundReason} if req.refundReason is not None else {}
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(refunds).values(
                    id=rid, payment_id=pay.id, acqp_id=acqp.id, refund_request_id=req.refundRequestId,
                    request_hash=h, currency=currency, amount=value, amount_sealed=sealed, checked=False,
                    status="PROCESSING",
                    result_code="REFUND_IN_PROCESS", result_message="", forward=wirejson.dumps_text(forward),
                    created_ms=now, updated_ms=now, next_check_ms=now + int(2 * self.cfg.mpp_timeout_s * 1000),
                    attempts=0))
                code = None
                paid_at = pay.payment_time_ms or now
                if now > paid_at + self.cfg.refund_window_s * 1000:
                    code = "REFUND_WINDOW_EXCEED"
                else:
                    cond = [payments.c.id == pay.id, payments.c.status == "SUCCESS",
                            payments.c.cancel_requested.is_(False)]
                    change: dict[str, Any] = {"refund_count": payments.c.refund_count + 1, "updated_ms": now}
                    if value is not None:  # clear amounts: the gateway reserves; hidden: the nodes check
                        cond.append(payments.c.refunded + value <= payments.c.amount)
                        change["refunded"] = payments.c.refunded + value
                    n = conn.execute(update(payments).where(and_(*cond)).values(**change)).rowcount
                    if not n:
                        cur = conn.execute(select(payments.c.status, payments.c.cancel_requested)
                                           .where(payments.c.id == pay.id)).first()
                        ok = cur is not None and cur.status == "SUCCESS" and not cur.cancel_requested
                        code = "REFUND_AMOUNT_EXCEED" if ok else "ORDER_STATUS_INVALID"
                if code is not None:
                    conn.execute(update(refunds).where(refunds.c.id == rid).values(status="FAIL", result_code=code))
                else:
                    self._queue_shares(conn, shares, rid)
        except IntegrityError:
            with self.engine.connect() as conn:
                old = conn.execute(select(refunds).where(and_(refunds.c.acqp_id == acqp.id,
                                                              refunds.c.refund_request_id == req.refundRequestId))).first()
            if old is None:
                raise
            if not ct_equal(old.request_hash, h):
                raise ApiFailure("REPEAT_REQ_INCONSISTENT") from None
            rid = old.id
        row = await self.drive_refund(rid)
        return self.refund_body(row, self._refund_result(row))

    @staticmethod
    def _refund_result(row: Row) -> dict[str, str]:
        if row.status == "PROCESSING":
            return result("REFUND_IN_PROCESS")
        return result(row.result_code, row.result_message or None)

    def refund_body(self, row: Row, res: dict[str, str]) -> dict[str, Any]:
        with self.engine.connect() as conn:
            pay = self._payment(conn, None, row.payment_id, None)
        body: dict[str, Any] = {"result": res, "refundId": row.id, "refundRequestId": row.refund_request_id,
                                "paymentId": row.payment_id, "refundAmount": self._amount_out(row, row.acqp_id)}
        if pay is not None:
            body["paymentRequestId"] = pay.payment_request_id
        if row.refund_time_ms:
            body["refundTime"] = _iso(row.refund_time_ms)
        return body

    async def drive_refund(self, rid: str) -> Row:
        row = self._load_refund(rid)
        if row.status != "PROCESSING":
            return row
        pay = self._load_payment(row.payment_id)
        if self.nodes is not None and not row.checked:
            try:
                ans = await self.nodes.job("refund_check", {"refundId": rid})
            except NodeError as exc:
                log.warning("refund check waits for the nodes", extra={"event": "node_wait", "code": exc.code})
                self._retry_later(refunds, row)
                return self._load_refund(rid)
            if (ans.get("result") or {}).get("ok") is not True:
                self._finish_refund(row, pay, False, "REFUND_AMOUNT_EXCEED", notify_nodes=False)
                return self._load_refund(rid)
            with self.engine.begin() as conn:
                conn.execute(update(refunds).where(refunds.c.id == rid).values(checked=True))
        mpp = self.directory.get(pay.mpp_id)
        body = {"refundId": row.id, "refundRequestId": row.refund_request_id, "paymentId": pay.id,
                "paymentRequestId": pay.payment_request_id, "acquirerId": row.acqp_id,
                "refundAmount": self._amount_out(row, pay.mpp_id), **wirejson.loads(row.forward)}
        try:
            if mpp is None:
                raise MppUnreachable("the MPP left the network")
            ans = await self.call_partner(mpp, "/mpp/v1/refund", body)
        except MppUnreachable:
            self._retry_later(refunds, row)
            return self._load_refund(rid)
        res = ans["result"]
        if res["resultStatus"] == "U":
            self._retry_later(refunds, row)
            return self._load_refund(rid)
        ok = res["resultStatus"] == "S"
        code = "SUCCESS" if ok else (res.get("resultCode") if res.get("resultCode") in _MPP_FAIL_CODES else "PROCESS_FAIL")
        self._finish_refund(row, pay, ok, code, notify_nodes=True)
        return self._load_refund(rid)

    def _finish_refund(self, row: Row, pay: Row, ok: bool, code: str, notify_nodes: bool) -> None:
        now = _now_ms()
        with self.engine.begin() as conn:
            done = conn.execute(update(refunds).where(and_(refunds.c.id == row.id, refunds.c.status == "PROCESSING"))
                                .values(status="SUCCESS" if ok else "FAIL", result_code=code,
                                        refund_time_ms=now if ok else None, updated_ms=now)).rowcount
            if done and not ok:
                back: dict[str, Any] = {"refund_count": payments.c.refund_count - 1, "updated_ms": now}
                if row.amount is not None:
                    back["refunded"] = payments.c.refunded - row.amount
                conn.execute(update(payments).where(payments.c.id == pay.id).values(**back))
            if done:
                body = {"notifyType": "REFUND_RESULT", "refundId": row.id, "refundRequestId": row.refund_request_id,
                        "paymentId": pay.id, "paymentRequestId": pay.payment_request_id, "acquirerId": row.acqp_id,
                        "refundResult": result(code), "refundAmount": self._amount_out(row, row.acqp_id)}
                if ok:
                    body["refundTime"] = _iso(now)
                self._enqueue(conn, row.acqp_id, "notifyRefund", body, now)
                if notify_nodes and self.nodes is not None:
                    self.nodes.enqueue_status(conn, row.id, "SUCCESS" if ok else "FAIL")
        if done:
            self.metrics.refunds.labels(status="SUCCESS" if ok else "FAIL").inc()
            log.info("refund final", extra={"event": "refund_final", "refundId": row.id, "code": code})
            self.wake_outbox()
            if self.nodes is not None:
                self.nodes.wake()

    async def inquiry_refund(self, acqp: PublicEntry, obj: Any) -> dict[str, Any]:
        req: InquiryRefundRequest = _validate(InquiryRefundRequest, obj)
        q = select(refunds).where(refunds.c.acqp_id == acqp.id)
        q = q.where(refunds.c.id == req.refundId) if req.refundId else q.where(
            refunds.c.refund_request_id == req.refundRequestId)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        if row is None:
            raise ApiFailure("ORDER_NOT_EXIST")
        if row.status == "PROCESSING":
            row = await self.drive_refund(row.id)
        body = self.refund_body(row, result("SUCCESS"))
        body["refundResult"] = self._refund_result(row)
        body["refundStatus"] = row.status
        return body

    # ------------------------------------------------------------------ lists and totals
    async def list_payments(self, acqp: PublicEntry, obj: Any) -> dict[str, Any]:
        """This acquirer's payments, newest first, a page at a time."""
        req: ListPaymentsRequest = _validate(ListPaymentsRequest, obj)
        q = select(payments).where(payments.c.acqp_id == acqp.id)
        if req.pageToken:
            ms, pid = req.pageToken.split(":")
            q = q.where(or_(payments.c.created_ms < int(ms),
                            and_(payments.c.created_ms == int(ms), payments.c.id < pid)))
        q = q.order_by(payments.c.created_ms.desc(), payments.c.id.desc()).limit(req.pageSize + 1)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        page = rows[:req.pageSize]
        out = [{"paymentId": r.id, "paymentRequestId": r.payment_request_id,
                "paymentAmount": self._amount_out(r, r.acqp_id), "paymentStatus": r.status,
                "paymentResult": self._payment_result(r), "createTime": _iso(r.created_ms),
                "paymentTime": _iso(r.payment_time_ms), "refundCount": r.refund_count}
               for r in page]
        if not self.hidden:
            for o, r in zip(out, page, strict=True):
                o["refundedAmount"] = _amount(r.currency, r.refunded)
        body: dict[str, Any] = {"result": result("SUCCESS"), "payments": out}
        if len(rows) > req.pageSize:
            body["nextPageToken"] = f"{page[-1].created_ms}:{page[-1].id}"
        return body

    async def settlement_summary(self, acqp: PublicEntry, obj: Any) -> dict[str, Any]:
        """Per currency, this acquirer's successful payments and refunds of one UTC day,
        summed by the gateway from clear amounts; or, with privacy nodes, the period's
        settlement groups of this acquirer as the nodes sealed them to it (the SDK opens
        the totals; SETTLEMENT_PENDING until the period is settled)."""
        import datetime as dt

        req: SettlementSummaryRequest = _validate(SettlementSummaryRequest, obj)
        if self.hidden:
            with self.engine.connect() as conn:
                run = conn.execute(select(settlement_runs).where(settlement_runs.c.day == req.settlementDate)).first()
                if run is None or run.status != "DONE":
                    raise ApiFailure("SETTLEMENT_PENDING", run.message if run is not None else None)
                rows = conn.execute(select(settlements).where(and_(settlements.c.day == req.settlementDate,
                                                                   settlements.c.acqp_id == acqp.id))).all()
            groups = []
            for r in sorted(rows, key=lambda r: (r.mpp_id, r.currency, r.kind)):
                outs = wirejson.loads(r.outputs)
                groups.append({"acqp": r.acqp_id, "mpp": r.mpp_id, "currency": r.currency, "kind": r.kind,
                               "count": r.count, "outputs": {n: o[acqp.id] for n, o in outs.items()}})
            return {"result": result("SUCCESS"), "settlementDate": req.settlementDate, "groups": groups}
        try:
            day = dt.datetime.strptime(req.settlementDate, "%Y-%m-%d").replace(tzinfo=dt.UTC)
        except ValueError as exc:
            raise ApiFailure("PARAM_ILLEGAL", "settlementDate is not a date") from exc
        lo = int(day.timestamp() * 1000)
        hi = lo + 86_400_000
        sums: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            prow = conn.execute(select(payments.c.currency, func.count(), func.sum(payments.c.amount))
                                .where(and_(payments.c.acqp_id == acqp.id, payments.c.status == "SUCCESS",
                                            payments.c.payment_time_ms >= lo, payments.c.payment_time_ms < hi))
                                .group_by(payments.c.currency)).all()
            rrow = conn.execute(select(refunds.c.currency, func.count(), func.sum(refunds.c.amount))
                                .where(and_(refunds.c.acqp_id == acqp.id, refunds.c.status == "SUCCESS",
                                            refunds.c.refund_time_ms >= lo, refunds.c.refund_time_ms < hi))
                                .group_by(refunds.c.currency)).all()
        for cur, n, total in prow:
            sums.setdefault(cur, {"pc": 0, "pt": 0, "rc": 0, "rt": 0}).update(pc=int(n), pt=int(total or 0))
        for cur, n, total in rrow:
            sums.setdefault(cur, {"pc": 0, "pt": 0, "rc": 0, "rt": 0}).update(rc=int(n), rt=int(total or 0))
        return self._summary_body(req.settlementDate, sums)

    @staticmethod
    def _summary_body(day: str, sums: dict[str, dict[str, int]]) -> dict[str, Any]:
        return {"result": result("SUCCESS"), "settlementDate": day, "summaries": [
            {"currency": cur, "paymentCount": s["pc"], "paymentTotal": _amount(cur, s["pt"]),
             "refundCount": s["rc"], "refundTotal": _amount(cur, s["rt"]), "netTotal": _amount(cur, s["pt"] - s["rt"])}
            for cur, s in sorted(sums.items())]}

    # ------------------------------------------------------------------ resolver
    async def resolve_pending(self, limit: int = 100) -> int:
        """Drive every payment, cancel and refund whose answer is overdue; returns how many."""
        now = _now_ms()
        with self.engine.connect() as conn:
            pids = conn.execute(select(payments.c.id).where(and_(
                payments.c.next_check_ms <= now,
                or_(payments.c.status == "PROCESSING",
                    and_(payments.c.status == "SUCCESS", payments.c.cancel_requested.is_(True)))))
                .limit(limit)).scalars().all()
            rids = conn.execute(select(refunds.c.id).where(and_(
                refunds.c.status == "PROCESSING", refunds.c.next_check_ms <= now)).limit(limit)).scalars().all()
        sem = asyncio.Semaphore(16)

        async def one(coro: Any) -> None:
            async with sem:
                try:
                    await coro
                except Exception:  # noqa: BLE001 - one bad row must not stop the others
                    log.exception("resolver step failed", extra={"event": "resolver_error"})

        await asyncio.gather(*[one(self.drive_payment(p)) for p in pids], *[one(self.drive_refund(r)) for r in rids])
        return len(pids) + len(rids)
