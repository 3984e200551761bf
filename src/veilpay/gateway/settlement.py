"""Settlement and network analytics computed by the privacy nodes.

``settle(day)`` asks the nodes for the day's totals per (acquirer, MPP, currency) of
successful payments and refunds. The nodes choose the items themselves (their own
store, the day's SUCCESS statuses) and reveal only each group's total; the gateway
checks each group's count against its own records and keeps the day WAITING, with
the reason, while a node is down, behind or disagrees: it never writes a total the
nodes did not all agree on. A finished day gives each partner two CSV files under
``settlement_dir/<day>/<partner>/``:

- ``summary.csv``: one row per counterparty and currency: counts, totals, net.
- ``detail.csv``: one row per transaction; its amount is the envelope sealed to that
  partner (the gateway cannot read it), and transactions left out of the totals
  (a share that did not open at a node, or shares outside 1..10^15) say why.

``analytics(day, k)``: totals per corridor (payer's region -> merchant's region,
currency) revealed only for corridors with at least k payments (the nodes enforce
their own floor)."""

from __future__ import annotations

import csv
import datetime as dt
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, insert, select

from veilpay.errors import NodeError
from veilpay.files import atomic_write
from veilpay.gateway.codes import ApiFailure
from veilpay.gateway.store import payments, refunds, settlement_runs, settlements

__all__ = ["analytics", "settle"]

_SUMMARY = ["settlementDate", "acquirerId", "pspId", "currency", "paymentCount", "paymentTotal", "refundCount",
            "refundTotal", "netSettlementAmount"]
_DETAIL = ["transactionId", "transactionRequestId", "transactionType", "acquirerId", "pspId", "currency",
           "transactionTime", "sealedAmount", "settlementStatus"]


def _bounds(day: str) -> tuple[int, int]:
    try:
        d = dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    except (TypeError, ValueError) as exc:
        raise ApiFailure("PARAM_ILLEGAL", "settlementDate is not a date YYYY-MM-DD") from exc
    lo = int(d.timestamp() * 1000)
    return lo, lo + 86_400_000


def _record(svc: Any, day: str, status: str, message: str) -> None:
    now = int(time.time() * 1000)
    with svc.engine.begin() as conn:
        conn.execute(delete(settlement_runs).where(settlement_runs.c.day == day))
        conn.execute(insert(settlement_runs).values(day=day, status=status, message=message[:300], updated_ms=now))


def _transactions(svc: Any, lo: int, hi: int) -> list[dict[str, Any]]:
    with svc.engine.connect() as conn:
        pays = conn.execute(select(payments).where(and_(
            payments.c.status == "SUCCESS", payments.c.payment_time_ms >= lo, payments.c.payment_time_ms < hi))).all()
        refs = conn.execute(select(refunds, payments.c.mpp_id).join(payments, payments.c.id == refunds.c.payment_id)
                            .where(and_(refunds.c.status == "SUCCESS", refunds.c.refund_time_ms >= lo,
                                        refunds.c.refund_time_ms < hi))).all()
    out = [{"id": p.id, "requestId": p.payment_request_id, "kind": "pay", "acqp": p.acqp_id, "mpp": p.mpp_id,
            "currency": p.currency, "time": p.payment_time_ms, "sealed": json.loads(p.amount_sealed or "{}")}
           for p in pays]
    out += [{"id": r.id, "requestId": r.refund_request_id, "kind": "refund", "acqp": r.acqp_id, "mpp": r.mpp_id,
             "currency": r.currency, "time": r.refund_time_ms, "sealed": json.loads(r.amount_sealed or "{}")}
            for r in refs]
    return out


async def settle(svc: Any, day: str) -> dict[str, Any]:
    """Run (or re-run) the settlement of ``day``; returns its status and totals."""
    if svc.nodes is None:
        raise ApiFailure("PARAM_ILLEGAL", "settlement in MPC needs privacy nodes (privacy_protocol)")
    lo, hi = _bounds(day)
    txs = _transactions(svc, lo, hi)
    try:
        ans = await svc.nodes.job("settle", {"day": day})
    except NodeError as exc:
        msg = f"{exc.code}: waiting for the privacy nodes ({exc})"
        _record(svc, day, "WAITING", msg)
        return {"settlementDate": day, "status": "WAITING", "message": msg}
    expected = Counter((t["acqp"], t["mpp"], t["currency"], t["kind"]) for t in txs)
    got = {(g["acqp"], g["mpp"], g["currency"], g["kind"]): g for g in ans.get("groups", [])}
    counted = {k: int(g["count"]) + len(g["rejected"]) + len(g["outOfRange"]) for k, g in got.items()}
    if counted != dict(expected):
        msg = "NODES_BEHIND: the nodes' view of the day differs from the gateway's records; waiting for their feed"
        _record(svc, day, "WAITING", msg)
        return {"settlementDate": day, "status": "WAITING", "message": msg}
    excluded: dict[str, str] = {}
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for (acqp, mpp, cur, kind), g in got.items():
        r = rows.setdefault((acqp, mpp, cur), {"pc": 0, "pt": 0, "rc": 0, "rt": 0, "excluded": []})
        n, total = int(g["count"]), int(g["total"] or 0)
        if kind == "pay":
            r["pc"], r["pt"] = n, total
        else:
            r["rc"], r["rt"] = n, total
        for i in g["rejected"]:
            excluded[i] = "EXCLUDED_SHARE_REFUSED"
        for i in g["outOfRange"]:
            excluded[i] = "EXCLUDED_OUT_OF_RANGE"
        r["excluded"] += g["rejected"] + g["outOfRange"]
    with svc.engine.begin() as conn:
        conn.execute(delete(settlements).where(settlements.c.day == day))
        for (acqp, mpp, cur), r in sorted(rows.items()):
            conn.execute(insert(settlements).values(
                day=day, acqp_id=acqp, mpp_id=mpp, currency=cur, payment_count=r["pc"], payment_total=r["pt"],
                refund_count=r["rc"], refund_total=r["rt"], excluded=json.dumps(sorted(r["excluded"]))))
    _write_files(Path(svc.cfg.settlement_dir) / day, day, rows, txs, excluded)
    msg = f"{len(txs)} transactions, {len(excluded)} left out"
    _record(svc, day, "DONE", msg)
    return {"settlementDate": day, "status": "DONE", "message": msg,
            "summaries": [{"acquirerId": a, "pspId": m, "currency": c, "paymentCount": r["pc"],
                           "paymentTotal": str(r["pt"]), "refundCount": r["rc"], "refundTotal": str(r["rt"]),
                           "excluded": sorted(r["excluded"])} for (a, m, c), r in sorted(rows.items())],
            "bytesBetweenNodes": ans.get("bytesSent"), "rounds": ans.get("rounds")}


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    def write(fh: Any) -> None:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


def _write_files(folder: Path, day: str, rows: dict[tuple[str, str, str], dict[str, Any]],
                 txs: list[dict[str, Any]], excluded: dict[str, str]) -> None:
    partners = {a for a, _, _ in rows} | {m for _, m, _ in rows} | {t["acqp"] for t in txs} | {t["mpp"] for t in txs}
    for pid in sorted(partners):
        summary = [[day, a, m, c, r["pc"], r["pt"], r["rc"], r["rt"], r["pt"] - r["rt"]]
                   for (a, m, c), r in sorted(rows.items()) if pid in (a, m)]
        detail = []
        for t in sorted(txs, key=lambda t: (t["time"], t["id"])):
            if pid not in (t["acqp"], t["mpp"]):
                continue
            env = t["sealed"].get(pid)
            detail.append([t["id"], t["requestId"], "PAYMENT" if t["kind"] == "pay" else "REFUND", t["acqp"],
                           t["mpp"], t["currency"],
                           time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t["time"] / 1000)),
                           json.dumps(env, separators=(",", ":")) if env else "", excluded.get(t["id"], "SETTLED")])
        _write_csv(folder / pid / "summary.csv", _SUMMARY, summary)
        _write_csv(folder / pid / "detail.csv", _DETAIL, detail)


async def analytics(svc: Any, day: str, min_count: int | None = None) -> dict[str, Any]:
    if svc.nodes is None:
        raise ApiFailure("PARAM_ILLEGAL", "analytics in MPC needs privacy nodes (privacy_protocol)")
    _bounds(day)
    regions = {p.id: p.region for p in svc.directory.partners.values() if p.role in ("mpp", "acqp")}
    k = svc.cfg.analytics_min_count if min_count is None else min_count
    try:
        ans = await svc.nodes.job("analytics", {"day": day, "minCount": k, "regions": regions})
    except NodeError as exc:
        raise ApiFailure("NODE_UNAVAILABLE", f"{exc.code}: {exc}") from exc
    return {"day": day, "minCount": ans["minCount"],
            "corridors": [{"from": c["from"], "to": c["to"], "currency": c["currency"], "count": c["count"],
                           "total": c["total"]} for c in ans["corridors"]]}
