"""The payment state machine: accept, forward to the MPP, record, notify; cancel and
refund; and the resolver that finishes what is left open.

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
the yes/no of a refund check and the settlement totals (``docs/nodes.md``).

The machine decides; it reads and writes through the ``Ledger``, checks through the
``Intake``, calls out through the ``MppLink`` and formats through ``answers``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, Row
from sqlalchemy.exc import IntegrityError

from veilpay.crypto.tokens import ct_equal, random_id
from veilpay.errors import NodeError
from veilpay.gateway import answers
from veilpay.gateway.codes import ApiFailure, result
from veilpay.gateway.config import GatewayConfig
from veilpay.gateway.intake import Intake, canonical_hash, validate
from veilpay.gateway.ledger import Feed, Ledger
from veilpay.gateway.mpp import MppLink, MppUnreachable
from veilpay.gateway.nodes import NodeLink
from veilpay.gateway.observe import Metrics
from veilpay.gateway.risk import check_risk_features, risk_result_of
from veilpay.gateway.schemas import (
    CancelRequest,
    InquiryPaymentRequest,
    InquiryRefundRequest,
    PayRequest,
    RefundRequest,
)
from veilpay.sdk import wirejson
from veilpay.sdk.directory import Directory
from veilpay.sdk.keys import PublicEntry

__all__ = ["PaymentMachine"]

log = logging.getLogger("veilpay.gateway")
# Codes an MPP may answer with; anything else is recorded as PROCESS_FAIL.
_MPP_FAIL_CODES = {"USER_BALANCE_NOT_ENOUGH", "INVALID_CODE", "ORDER_IS_CLOSED", "PROCESS_FAIL",
                   "REFUND_AMOUNT_EXCEED", "ORDER_NOT_EXIST", "CURRENCY_NOT_SUPPORT", "RISK_REJECT"}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _same_request(old: Any, fingerprint: str) -> Any:
    """``old``, the row an earlier request with this request id made, if it was this
    very request (its fingerprint); REPEAT_REQ_INCONSISTENT if it was another."""
    if not ct_equal(old.request_hash, fingerprint):
        raise ApiFailure("REPEAT_REQ_INCONSISTENT") from None
    return old


def _with(row: Any, **changes: Any) -> Any:
    """A read-only view of ``row`` with some columns changed, so that a step that
    wrote those columns need not read the row back."""
    return SimpleNamespace(**{**(row._asdict() if isinstance(row, Row) else vars(row)), **changes})


class PaymentMachine:
    """Payments, cancels and refunds of one gateway (``nodes``: its privacy nodes, None
    for clear amounts; ``wake_outbox``: tells the webhook worker a row is queued)."""

    def __init__(self, cfg: GatewayConfig, directory: Callable[[], Directory], ledger: Ledger, intake: Intake,
                 mpp: MppLink, metrics: Metrics, wake_outbox: Callable[[], None], nodes: NodeLink | None = None
                 ) -> None:
        self.cfg, self._directory, self.ledger, self.intake, self.mpp = cfg, directory, ledger, intake, mpp
        self.metrics, self.wake_outbox, self.nodes = metrics, wake_outbox, nodes

    @property
    def hidden(self) -> bool:
        """Amounts are sealed and secret-shared to privacy nodes."""
        return self.nodes is not None

    # ------------------------------------------------------------------ helpers
    def _feed_shares(self, shares: dict[str, Any], item_id: str) -> Feed:
        """One feed row per node: its share envelope and the ACQP's signed bundle."""
        nodes = self.nodes
        if nodes is None:
            return None

        def feed(conn: Connection) -> None:
            nodes.enqueue(conn, {n: {**item, "id": item_id} for n, item in shares.items()})
        return feed

    def _feed_status(self, item_id: str, status: str) -> Feed:
        nodes = self.nodes
        if nodes is None:
            return None

        def feed(conn: Connection) -> None:
            nodes.enqueue_status(conn, item_id, status)
        return feed

    def _backoff_ms(self, attempts: int) -> int:
        return int(min(self.cfg.mpp_timeout_s * 2 ** min(attempts, 6), 300.0) * 1000)

    def _first_check_ms(self, now: int) -> int:
        return now + int(2 * self.cfg.mpp_timeout_s * 1000)

    async def _retry_later(self, table: str, row: Any) -> None:
        now = _now_ms()
        await self.ledger.retry_later(table, row, now + self._backoff_ms(row.attempts), now)

    async def _load_payment(self, pid: str) -> Any:
        row = await self.ledger.payment(pid)
        if row is None:
            raise ApiFailure("ORDER_NOT_EXIST")
        return row

    async def _load_refund(self, rid: str) -> Any:
        row = await self.ledger.refund(rid)
        if row is None:
            raise ApiFailure("ORDER_NOT_EXIST")
        return row

    # ------------------------------------------------------------------ pay
    async def pay(self, acqp: PublicEntry, obj: Any) -> dict[str, Any]:
        req = validate(PayRequest, obj)
        mpp = self._directory().mpp_for_prefix(req.paymentMethod.codeIssuer)
        if mpp is None:
            raise ApiFailure("INVALID_CODE", f"no MPP issues payment codes with prefix {req.paymentMethod.codeIssuer}")
        currency, value, sealed, shares = self.intake.amount_in(req.paymentAmount, "paymentAmount", acqp.id, mpp.id,
                                                                "pay", req.paymentRequestId)
        forward = {"paymentMethod": req.paymentMethod.model_dump(), "order": req.order}
        if req.env is not None:
            forward["env"] = req.env
        self.intake.check_sealed({"paymentMethodId": req.paymentMethod.paymentMethodId, "order": req.order,
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
        h = canonical_hash({k: v for k, v in obj.items() if k != "riskFeatures"})
        new = {"id": pid, "acqp_id": acqp.id, "payment_request_id": req.paymentRequestId, "request_hash": h,
               "mpp_id": mpp.id, "code_issuer": req.paymentMethod.codeIssuer, "currency": currency, "amount": value,
               "amount_sealed": sealed, "refund_count": 0, "status": "PROCESSING",
               "result_code": "PAYMENT_IN_PROCESS", "result_message": "", "customer_token": None,
               "forward": wirejson.dumps_text(forward), "customer_info": None, "risk_result": None, "refunded": 0,
               "cancel_requested": False,
               "created_ms": now, "updated_ms": now, "payment_time_ms": None,
               "expires_ms": now + int(self.cfg.payment_expiry_s * 1000),
               "next_check_ms": self._first_check_ms(now), "attempts": 0}
        row: Any = SimpleNamespace(**new)
        try:
            await self.ledger.record_payment(new, self._feed_shares(shares, pid))
        except IntegrityError:
            old = await self.ledger.find_payment(acqp.id, None, req.paymentRequestId)
            if old is None:
                raise
            row = _same_request(old, h)
        if self.nodes is not None:
            self.nodes.wake()
        row = await self.drive_payment(row.id, row)
        return answers.payment_body(row, answers.payment_result(row))

    async def drive_payment(self, pid: str, row: Any = None) -> Any:
        """Take a PROCESSING payment one step further; returns the row as it is now
        (``row``: the row as the caller just read or wrote it, to save reading it)."""
        if row is None:
            row = await self._load_payment(pid)
        if row.cancel_requested and row.status in ("PROCESSING", "SUCCESS"):
            return await self.drive_cancel(row)
        if row.status != "PROCESSING":
            return row
        mpp = self._directory().get(row.mpp_id)
        if mpp is None:
            await self._finish_payment(row, "FAIL", "PROCESS_FAIL", "the MPP left the network")
            return await self._load_payment(pid)
        if _now_ms() > row.expires_ms:
            await self.ledger.mark_expired(pid)
            return await self.drive_cancel(await self._load_payment(pid), expired=True)
        body = {"paymentId": row.id, "paymentRequestId": row.payment_request_id, "acquirerId": row.acqp_id,
                "paymentAmount": answers.amount_out(row, row.mpp_id), **wirejson.loads(row.forward)}
        try:
            ans = await self.mpp.forward_pay(mpp, body)
        except MppUnreachable:
            await self._retry_later("payments", row)
            return await self._load_payment(pid)
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
            await self._retry_later("payments", row)
            done = None
        return done if done is not None else await self._load_payment(pid)

    async def _finish_payment(self, row: Any, status: str, code: str, message: str, token: str | None = None,
                              info: dict[str, Any] | None = None, risk: dict[str, Any] | None = None) -> Any:
        """Record the payment's final status and queue its webhook (``info``: the MPP's
        sealed customerInfo; ``risk``: its checked riskResult); returns the row as
        written, or None when it was no longer PROCESSING (another step got there first)."""
        now = _now_ms()
        paid = now if status == "SUCCESS" else None
        info_text = wirejson.dumps_text(info) if info is not None else None
        risk_text = wirejson.dumps_text(risk) if risk is not None else None
        notice = answers.payment_notice(row, code, message, paid, info, risk)
        done = await self.ledger.finish_payment(row, {
            "b_status": status, "b_code": code, "b_message": message, "b_token": token, "b_info": info_text,
            "b_risk": risk_text, "b_paid": paid}, notice, now, self._feed_status(row.id, status))
        if not done:
            return None
        if self.nodes is not None:
            self.nodes.wake()
        self.metrics.child(self.metrics.payments, status).inc()
        log.info("payment final", extra={"event": "payment_final", "paymentId": row.id, "code": code})
        self.wake_outbox()
        return _with(row, status=status, result_code=code, result_message=message, customer_token=token,
                     customer_info=info_text, risk_result=risk_text, payment_time_ms=paid, updated_ms=now)

    async def inquiry_payment(self, acqp: PublicEntry, obj: Any) -> dict[str, Any]:
        req = validate(InquiryPaymentRequest, obj)
        row = await self.ledger.find_payment(acqp.id, req.paymentId, req.paymentRequestId)
        if row is None:
            raise ApiFailure("ORDER_NOT_EXIST")
        if row.status == "PROCESSING" or (row.cancel_requested and row.status == "SUCCESS"):
            row = await self.drive_payment(row.id)
        body = answers.payment_body(row, result("SUCCESS"))
        body["paymentResult"] = answers.payment_result(row)
        body["paymentStatus"] = row.status
        if not self.hidden:
            body["refundedAmount"] = answers.amount(row.currency, row.refunded)
        else:  # the gateway cannot add hidden amounts: it lists the refunds, each amount sealed to the ACQP
            refs = await self.ledger.open_refunds(row.id)
            body["refunds"] = [{"refundId": r.id, "refundRequestId": r.refund_request_id, "refundStatus": r.status,
                                "refundAmount": answers.amount_out(r, row.acqp_id)} for r in refs]
        return body

    # ------------------------------------------------------------------ cancel
    async def cancel(self, acqp: PublicEntry, obj: Any) -> dict[str, Any]:
        req = validate(CancelRequest, obj)
        row = await self.ledger.find_payment(acqp.id, req.paymentId, req.paymentRequestId)
        if row is None:
            raise ApiFailure("ORDER_NOT_EXIST")
        if row.status in ("CANCELLED", "FAIL") and not row.cancel_requested:
            return answers.cancel_body(row, result("SUCCESS"))
        if not row.cancel_requested:
            if _now_ms() > row.created_ms + self.cfg.cancel_window_s * 1000:
                raise ApiFailure("CANCEL_WINDOW_EXCEED")
            if not await self.ledger.request_cancel(row.id, self._first_check_ms(_now_ms())):
                row = await self._load_payment(row.id)
                if row.refund_count:
                    raise ApiFailure("ORDER_STATUS_INVALID", "the payment has refunds; refund the rest instead")
                return answers.cancel_body(row, result("SUCCESS"))
        row = await self.drive_cancel(await self._load_payment(row.id))
        if row.status == "CANCELLED":
            return answers.cancel_body(row, result("SUCCESS"))
        return answers.cancel_body(row, result("UNKNOWN_EXCEPTION",
                                               "cancel sent; retry cancelPayment to learn the outcome"))

    async def drive_cancel(self, row: Any, expired: bool = False) -> Any:
        mpp = self._directory().get(row.mpp_id)
        try:
            if mpp is None:
                raise MppUnreachable("the MPP left the network")
            ans = await self.mpp.call_partner(mpp, "/mpp/v1/cancel", {"paymentId": row.id, "acquirerId": row.acqp_id})
            if ans["result"]["resultStatus"] != "S":
                raise MppUnreachable("cancel not confirmed")
        except MppUnreachable:
            await self._retry_later("payments", row)
            return await self._load_payment(row.id)
        now = _now_ms()
        was_pending = row.status == "PROCESSING"
        expired = expired or now > row.expires_ms
        code = "ORDER_IS_CLOSED"
        msg = "expired before a final answer; cancelled at the MPP" if expired else "cancelled"
        # the ACQP never had a final answer when it was pending: tell it
        notice = answers.payment_notice(row, code, msg) if was_pending else None
        done = await self.ledger.close_cancelled(row, code, msg, now, notice, self._feed_status(row.id, "CANCELLED"))
        if done:
            if self.nodes is not None:
                self.nodes.wake()
            self.metrics.child(self.metrics.payments, "CANCELLED").inc()
            self.wake_outbox()
        return await self._load_payment(row.id)

    # ------------------------------------------------------------------ refund
    async def refund(self, acqp: PublicEntry, obj: Any) -> dict[str, Any]:
        req = validate(RefundRequest, obj)
        pay = await self.ledger.find_payment(acqp.id, req.paymentId, req.paymentRequestId)
        if pay is None:
            raise ApiFailure("ORDER_NOT_EXIST")
        currency, value, sealed, shares = self.intake.amount_in(req.refundAmount, "refundAmount", acqp.id, pay.mpp_id,
                                                                "refund", req.refundRequestId, pay.payment_request_id)
        if currency != pay.currency:
            raise ApiFailure("CURRENCY_NOT_SUPPORT", f"refund in {pay.currency}, the payment's currency")
        self.intake.check_sealed({"refundReason": req.refundReason}, pay.mpp_id)
        now = _now_ms()
        rid = random_id("rfd_")
        h = canonical_hash(obj)
        forward = {"refundReason": req.refundReason} if req.refundReason is not None else {}
        new = {"id": rid, "payment_id": pay.id, "acqp_id": acqp.id, "refund_request_id": req.refundRequestId,
               "request_hash": h, "currency": currency, "amount": value, "amount_sealed": sealed, "checked": False,
               "status": "PROCESSING", "result_code": "REFUND_IN_PROCESS", "result_message": "",
               "forward": wirejson.dumps_text(forward), "created_ms": now, "updated_ms": now,
               "next_check_ms": self._first_check_ms(now), "attempts": 0}
        paid_at = pay.payment_time_ms or now
        try:
            # clear amounts: the gateway reserves the value; hidden: the nodes check it
            await self.ledger.reserve_refund(new, pay.id, value, now <= paid_at + self.cfg.refund_window_s * 1000,
                                             now, self._feed_shares(shares, rid))
        except IntegrityError:
            old = await self.ledger.find_refund(acqp.id, None, req.refundRequestId)
            if old is None:
                raise
            rid = _same_request(old, h).id
        row = await self.drive_refund(rid)
        return await self._refund_answer(row, answers.refund_result(row))

    async def _refund_answer(self, row: Any, res: dict[str, str]) -> dict[str, Any]:
        pay = await self.ledger.payment(row.payment_id)
        return answers.refund_body(row, pay.payment_request_id if pay is not None else None, res)

    async def drive_refund(self, rid: str) -> Any:
        row = await self._load_refund(rid)
        if row.status != "PROCESSING":
            return row
        pay = await self._load_payment(row.payment_id)
        if self.nodes is not None and not row.checked:
            try:
                ans = await self.nodes.job("refund_check", {"refundId": rid})
            except NodeError as exc:
                log.warning("refund check waits for the nodes", extra={"event": "node_wait", "code": exc.code})
                await self._retry_later("refunds", row)
                return await self._load_refund(rid)
            if (ans.get("result") or {}).get("ok") is not True:
                await self._finish_refund(row, pay, False, "REFUND_AMOUNT_EXCEED", notify_nodes=False)
                return await self._load_refund(rid)
            await self.ledger.mark_checked(rid)
        mpp = self._directory().get(pay.mpp_id)
        body = {"refundId": row.id, "refundRequestId": row.refund_request_id, "paymentId": pay.id,
                "paymentRequestId": pay.payment_request_id, "acquirerId": row.acqp_id,
                "refundAmount": answers.amount_out(row, pay.mpp_id), **wirejson.loads(row.forward)}
        try:
            if mpp is None:
                raise MppUnreachable("the MPP left the network")
            ans = await self.mpp.call_partner(mpp, "/mpp/v1/refund", body)
        except MppUnreachable:
            await self._retry_later("refunds", row)
            return await self._load_refund(rid)
        res = ans["result"]
        if res["resultStatus"] == "U":
            await self._retry_later("refunds", row)
            return await self._load_refund(rid)
        ok = res["resultStatus"] == "S"
        code = "SUCCESS" if ok else (res.get("resultCode") if res.get("resultCode") in _MPP_FAIL_CODES else "PROCESS_FAIL")
        await self._finish_refund(row, pay, ok, code, notify_nodes=True)
        return await self._load_refund(rid)

    async def _finish_refund(self, row: Any, pay: Any, ok: bool, code: str, notify_nodes: bool) -> None:
        now = _now_ms()
        notice = answers.refund_notice(row, pay, code, now if ok else None)
        feed = self._feed_status(row.id, "SUCCESS" if ok else "FAIL") if notify_nodes else None
        if await self.ledger.finish_refund(row, pay.id, ok, code, now, notice, feed):
            self.metrics.child(self.metrics.refunds, "SUCCESS" if ok else "FAIL").inc()
            log.info("refund final", extra={"event": "refund_final", "refundId": row.id, "code": code})
            self.wake_outbox()
            if self.nodes is not None:
                self.nodes.wake()

    async def inquiry_refund(self, acqp: PublicEntry, obj: Any) -> dict[str, Any]:
        req = validate(InquiryRefundRequest, obj)
        row = await self.ledger.find_refund(acqp.id, req.refundId, req.refundRequestId)
        if row is None:
            raise ApiFailure("ORDER_NOT_EXIST")
        if row.status == "PROCESSING":
            row = await self.drive_refund(row.id)
        body = await self._refund_answer(row, result("SUCCESS"))
        body["refundResult"] = answers.refund_result(row)
        body["refundStatus"] = row.status
        return body

    # ------------------------------------------------------------------ resolver
    async def resolve_pending(self, limit: int = 100) -> int:
        """Drive every payment, cancel and refund whose answer is overdue and that this
        call claimed (a claim leases a row for twice the MPP timeout, so two resolvers,
        here or on another replica, never drive the same row in the same round);
        returns how many."""
        pids, rids = await self.ledger.claim_due(_now_ms(), int(2 * self.cfg.mpp_timeout_s * 1000), limit)
        sem = asyncio.Semaphore(16)

        async def one(step: Awaitable[Any]) -> None:
            async with sem:
                try:
                    await step
                except Exception:  # noqa: BLE001 - one bad row must not stop the others
                    log.exception("resolver step failed", extra={"event": "resolver_error"})

        await asyncio.gather(*[one(self.drive_payment(p)) for p in pids], *[one(self.drive_refund(r)) for r in rids])
        return len(pids) + len(rids)
