"""Settlement and operator analytics computed by the privacy nodes, as the gateway
routes them.

``settle(period)`` asks the nodes to settle a closed period. The nodes choose the
items themselves (by the times the ACQPs signed, their own status records, late
items and reversals) and answer, per (acquirer, MPP, currency, kind) group, its
count and transaction ids, the items left out and why, and each share holder's
share of the group's total sealed to the group's acquirer and to its MPP. The
gateway never holds a total: it stores the groups as they are (``settlements``) and
writes for each partner ``settlement_dir/<period>/<partner>/settlement.json``: its
groups with the outputs sealed to it, and its transactions with the amounts sealed
to it. The partner assembles the Alipay+-shaped ``summary.csv`` and ``detail.csv``
itself (``veilpay partner settlement``; ``veilpay.sdk.settlement.assemble``). A
period is settled once: asking again returns the same groups. While a node is down,
behind or refuses (the period is still open by its clock), the period stays
``WAITING`` with the reason.

``analytics(period)``: the nodes' corridor release for a closed period, once; its
cells below the nodes' minimum count suppressed, its totals noisy with the epsilon
the release states, its budget the nodes' (``docs/nodes.md``).

Both take their seams typed: the ``Ledger`` for the gateway's own tables and the
``NodeLink`` to the privacy nodes (None when the network runs none)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import IO, Any

from veilpay.errors import NodeError
from veilpay.files import atomic_write
from veilpay.gateway.codes import ApiFailure
from veilpay.gateway.ledger import Ledger
from veilpay.gateway.nodes import NodeLink

__all__ = ["analytics", "settle"]

_PERIOD = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)?$")


def _period(label: Any, what: str) -> str:
    if not isinstance(label, str) or not _PERIOD.match(label):
        raise ApiFailure("PARAM_ILLEGAL", f"{what} is a UTC day YYYY-MM-DD (or a cycle's start YYYY-MM-DDTHH:MM:SSZ)")
    return label


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _transactions(ledger: Ledger, groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The gateway's record of every transaction in the groups: ids, request ids, time,
    and the amount sealed to each partner (the gateway reads none of it)."""
    pay_ids = sorted({i for g in groups if g["kind"] != "refund" for i in g["ids"] + list(g["excluded"])})
    ref_ids = sorted({i for g in groups if g["kind"] == "refund" for i in g["ids"] + list(g["excluded"])})
    pays, refs = await ledger.settled_items(pay_ids, ref_ids)
    out: dict[str, dict[str, Any]] = {}
    for p in pays:
        out[p.id] = {"id": p.id, "requestId": p.payment_request_id, "acqp": p.acqp_id, "mpp": p.mpp_id,
                     "currency": p.currency, "time": p.payment_time_ms or p.created_ms,
                     "sealed": json.loads(p.amount_sealed or "{}")}
    for r in refs:
        out[r.id] = {"id": r.id, "requestId": r.refund_request_id, "acqp": r.acqp_id, "mpp": r.mpp_id,
                     "currency": r.currency, "time": r.refund_time_ms or r.created_ms,
                     "sealed": json.loads(r.amount_sealed or "{}")}
    return out


async def settle(ledger: Ledger, nodes: NodeLink | None, settlement_dir: Path, period: Any) -> dict[str, Any]:
    """Settle ``period`` at the nodes (or read back its settlement); returns its status and groups."""
    if nodes is None:
        raise ApiFailure("PARAM_ILLEGAL", "settlement in MPC needs privacy nodes ([gateway.privacy])")
    label = _period(period, "settlementDate")
    try:
        ans = await nodes.job("settle", {"period": label})
    except NodeError as exc:
        if exc.code == "JOB_INVALID":  # not a period of the nodes' cycle: it never will be
            raise ApiFailure("PARAM_ILLEGAL", f"settlementDate: {exc}") from exc
        msg = f"{exc.code}: waiting for the privacy nodes ({exc})"
        await ledger.record_settlement_run(label, "WAITING", msg, _now_ms())
        return {"settlementDate": label, "status": "WAITING", "message": msg}
    groups = []
    for i, g in enumerate(ans["result"]["groups"]):
        excluded = {**{x: "EXCLUDED_SHARE_REFUSED" for x in g["rejected"]},
                    **{x: "EXCLUDED_OUT_OF_RANGE" for x in g["outOfRange"]}}
        outputs = {n: o["groups"][i] for n, o in ans["outputs"].items()}
        groups.append({"acqp": g["acqp"], "mpp": g["mpp"], "currency": g["currency"], "kind": g["kind"],
                       "count": g["count"], "ids": g["ids"], "excluded": excluded, "outputs": outputs})
    await ledger.store_settlement(label, [{
        "day": label, "acqp_id": g["acqp"], "mpp_id": g["mpp"], "currency": g["currency"], "kind": g["kind"],
        "count": g["count"], "ids": json.dumps(g["ids"]), "excluded": json.dumps(g["excluded"]),
        "outputs": json.dumps(g["outputs"])} for g in groups])
    txs = await _transactions(ledger, groups)
    await asyncio.to_thread(_write_documents, nodes.privacy.to_json(), txs,
                            Path(settlement_dir) / label.replace(":", ""), label, groups)
    n = sum(g["count"] for g in groups)
    left = sum(len(g["excluded"]) for g in groups)
    msg = f"{n} transactions in {len(groups)} groups, {left} left out"
    await ledger.record_settlement_run(label, "DONE", msg, _now_ms())
    return {"settlementDate": label, "status": "DONE", "message": msg, "ledger": ans["ledger"],
            "groups": [{"acquirerId": g["acqp"], "pspId": g["mpp"], "currency": g["currency"], "kind": g["kind"],
                        "count": g["count"], "excluded": sorted(g["excluded"])} for g in groups],
            "bytesBetweenNodes": ans.get("bytesSent"), "rounds": ans.get("rounds")}


def _write_documents(privacy: dict[str, Any], txs: dict[str, dict[str, Any]], folder: Path, period: str,
                     groups: list[dict[str, Any]]) -> None:
    """Each partner's settlement document: its groups, with the outputs sealed to it,
    and its transactions, with the amounts sealed to it (on a thread: file writes)."""
    partners = sorted({g["acqp"] for g in groups} | {g["mpp"] for g in groups})
    for pid in partners:
        mine = [g for g in groups if pid in (g["acqp"], g["mpp"])]
        ids = {i for g in mine for i in g["ids"] + list(g["excluded"])}
        kinds = {i: g["kind"] for g in mine for i in g["ids"] + list(g["excluded"])}
        doc = {"v": 1, "period": period, "partner": pid, "privacy": privacy,
               "groups": [{**{k: g[k] for k in ("acqp", "mpp", "currency", "kind", "count", "ids", "excluded")},
                           "outputs": {n: o[pid] for n, o in g["outputs"].items()}} for g in mine],
               "transactions": [{**{k: v for k, v in txs[i].items() if k != "sealed"}, "kind": kinds[i],
                                 "sealed": txs[i]["sealed"].get(pid)} for i in sorted(ids) if i in txs]}
        path = folder / pid / "settlement.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, doc)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    text = json.dumps(doc, separators=(",", ":"))

    def write(fh: IO[str]) -> None:
        fh.write(text)
    atomic_write(path, write)


async def analytics(nodes: NodeLink | None, period: Any) -> dict[str, Any]:
    """The nodes' operator release of corridor figures for a closed period."""
    if nodes is None:
        raise ApiFailure("PARAM_ILLEGAL", "analytics in MPC needs privacy nodes ([gateway.privacy])")
    label = _period(period, "period")
    try:
        ans = await nodes.job("analytics", {"period": label})
    except NodeError as exc:
        code = exc.code if exc.code in ("PERIOD_OPEN", "BUDGET_EXHAUSTED") else \
            "PARAM_ILLEGAL" if exc.code == "JOB_INVALID" else "NODE_UNAVAILABLE"
        raise ApiFailure(code, f"{exc.code}: {exc}") from exc
    return {**ans["result"], "ledger": ans["ledger"]}
