"""The bodies the gateway answers with and the webhooks it queues, built from stored
rows: one place for the shape of a payment, refund, cancel or summary answer, and for
an amount as a given reader may see it (clear, or the value sealed to that reader).

Pure functions of rows and values: no database, no I/O, so the state machine, the
reports and the tests all format the same way."""

from __future__ import annotations

from typing import Any

from veilpay.gateway.codes import result
from veilpay.sdk import wirejson
from veilpay.sdk.signing import format_time

__all__ = ["amount", "amount_out", "cancel_body", "iso", "payment_body", "payment_notice", "payment_result",
           "refund_body", "refund_notice", "refund_result", "summary_body"]


def amount(currency: str, value: int) -> dict[str, str]:
    return {"currency": currency, "value": str(value)}


def iso(ms: int | None) -> str | None:
    return format_time(ms / 1000) if ms else None


def amount_out(row: Any, reader: str) -> dict[str, Any]:
    """A row's amount as ``reader`` may see it: clear, or the value sealed to it."""
    if row.amount is not None:
        return amount(row.currency, row.amount)
    sealed = wirejson.loads(row.amount_sealed or "{}")
    return {"currency": row.currency, "sealed": {reader: sealed[reader]} if reader in sealed else {}}


def payment_result(row: Any) -> dict[str, str]:
    if row.status == "PROCESSING":
        return result("PAYMENT_IN_PROCESS")
    return result(row.result_code, row.result_message or None)


def refund_result(row: Any) -> dict[str, str]:
    if row.status == "PROCESSING":
        return result("REFUND_IN_PROCESS")
    return result(row.result_code, row.result_message or None)


def payment_body(row: Any, res: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "result": res, "paymentId": row.id, "paymentRequestId": row.payment_request_id,
        "acquirerId": row.acqp_id, "pspId": row.mpp_id, "paymentAmount": amount_out(row, row.acqp_id),
    }
    if row.payment_time_ms:
        body["paymentTime"] = iso(row.payment_time_ms)
    if row.customer_info:
        body["customerInfo"] = wirejson.loads(row.customer_info)
    if row.risk_result:
        body["riskResult"] = wirejson.loads(row.risk_result)
    return body


def refund_body(row: Any, payment_request_id: str | None, res: dict[str, str]) -> dict[str, Any]:
    """A refund's answer (``payment_request_id``: its payment's, None when that row is gone)."""
    body: dict[str, Any] = {"result": res, "refundId": row.id, "refundRequestId": row.refund_request_id,
                            "paymentId": row.payment_id, "refundAmount": amount_out(row, row.acqp_id)}
    if payment_request_id is not None:
        body["paymentRequestId"] = payment_request_id
    if row.refund_time_ms:
        body["refundTime"] = iso(row.refund_time_ms)
    return body


def cancel_body(row: Any, res: dict[str, str]) -> dict[str, Any]:
    body = {"result": res, "paymentId": row.id, "paymentRequestId": row.payment_request_id}
    if row.status == "CANCELLED":
        body["cancelTime"] = iso(row.updated_ms)
    return body


def payment_notice(row: Any, code: str, message: str | None, paid_ms: int | None = None,
                   info: dict[str, Any] | None = None, risk: dict[str, Any] | None = None) -> dict[str, Any]:
    """The PAYMENT_RESULT webhook for the payment's acquirer (``paid_ms``: its payment
    time, when it succeeded; ``info``, ``risk``: the MPP's sealed customerInfo and its
    checked riskResult)."""
    body: dict[str, Any] = {"notifyType": "PAYMENT_RESULT", "paymentId": row.id,
                            "paymentRequestId": row.payment_request_id, "acquirerId": row.acqp_id,
                            "paymentResult": result(code, message or None),
                            "paymentAmount": amount_out(row, row.acqp_id)}
    if paid_ms is not None:
        body["paymentTime"] = iso(paid_ms)
    if info is not None:
        body["customerInfo"] = info
    if risk is not None:
        body["riskResult"] = risk
    return body


def refund_notice(row: Any, pay: Any, code: str, refund_ms: int | None) -> dict[str, Any]:
    """The REFUND_RESULT webhook for the refund's acquirer (``refund_ms``: its time, when it succeeded)."""
    body: dict[str, Any] = {"notifyType": "REFUND_RESULT", "refundId": row.id, "refundRequestId": row.refund_request_id,
                            "paymentId": pay.id, "paymentRequestId": pay.payment_request_id, "acquirerId": row.acqp_id,
                            "refundResult": result(code), "refundAmount": amount_out(row, row.acqp_id)}
    if refund_ms is not None:
        body["refundTime"] = iso(refund_ms)
    return body


def summary_body(day: str, sums: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Per-currency totals of one day (clear amounts)."""
    return {"result": result("SUCCESS"), "settlementDate": day, "summaries": [
        {"currency": cur, "paymentCount": s["pc"], "paymentTotal": amount(cur, s["pt"]),
         "refundCount": s["rc"], "refundTotal": amount(cur, s["rt"]), "netTotal": amount(cur, s["pt"] - s["rt"])}
        for cur, s in sorted(sums.items())]}
