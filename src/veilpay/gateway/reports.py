"""What an acquirer reads about many payments at once: its payments a page at a time,
and one day's settlement summary (per currency, summed by the gateway from clear
amounts; or, with privacy nodes, the period's settlement groups as the nodes sealed
them to it). Read-only; the nodes' settlement runs themselves are
``veilpay.gateway.settlement``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from veilpay.gateway import answers
from veilpay.gateway.codes import ApiFailure, result
from veilpay.gateway.intake import validate
from veilpay.gateway.ledger import Ledger
from veilpay.gateway.schemas import ListPaymentsRequest, SettlementSummaryRequest
from veilpay.sdk import wirejson
from veilpay.sdk.keys import PublicEntry

__all__ = ["Reports"]


class Reports:
    """Lists and totals from ``ledger`` (``hidden``: amounts are sealed and shared to
    privacy nodes, so the gateway cannot add them)."""

    def __init__(self, ledger: Ledger, hidden: bool) -> None:
        self.ledger, self.hidden = ledger, hidden

    async def list_payments(self, acqp: PublicEntry, obj: Any) -> dict[str, Any]:
        """This acquirer's payments, newest first, a page at a time."""
        req = validate(ListPaymentsRequest, obj)
        after = None
        if req.pageToken:
            ms, pid = req.pageToken.split(":")
            after = (int(ms), pid)
        rows = await self.ledger.page_of_payments(acqp.id, after, req.pageSize + 1)
        page = rows[:req.pageSize]
        out = [{"paymentId": r.id, "paymentRequestId": r.payment_request_id,
                "paymentAmount": answers.amount_out(r, r.acqp_id), "paymentStatus": r.status,
                "paymentResult": answers.payment_result(r), "createTime": answers.iso(r.created_ms),
                "paymentTime": answers.iso(r.payment_time_ms), "refundCount": r.refund_count}
               for r in page]
        if not self.hidden:
            for o, r in zip(out, page, strict=True):
                o["refundedAmount"] = answers.amount(r.currency, r.refunded)
        body: dict[str, Any] = {"result": result("SUCCESS"), "payments": out}
        if len(rows) > req.pageSize:
            body["nextPageToken"] = f"{page[-1].created_ms}:{page[-1].id}"
        return body

    async def settlement_summary(self, acqp: PublicEntry, obj: Any) -> dict[str, Any]:
        """Per currency, this acquirer's successful payments and refunds of one UTC day,
        summed by the gateway from clear amounts; or, with privacy nodes, the period's
        settlement groups of this acquirer as the nodes sealed them to it (the SDK opens
        the totals; SETTLEMENT_PENDING until the period is settled)."""
        req = validate(SettlementSummaryRequest, obj)
        if self.hidden:
            run, rows = await self.ledger.settlement_groups(req.settlementDate, acqp.id)
            if run is None or run.status != "DONE":
                raise ApiFailure("SETTLEMENT_PENDING", run.message if run is not None else None)
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
        prow, rrow = await self.ledger.clear_totals(acqp.id, lo, lo + 86_400_000)
        sums: dict[str, dict[str, int]] = {}
        for cur, n, total in prow:
            sums.setdefault(cur, {"pc": 0, "pt": 0, "rc": 0, "rt": 0}).update(pc=int(n), pt=int(total or 0))
        for cur, n, total in rrow:
            sums.setdefault(cur, {"pc": 0, "pt": 0, "rc": 0, "rt": 0}).update(rc=int(n), rt=int(total or 0))
        return answers.summary_body(req.settlementDate, sums)
