"""Webhook delivery from the durable outbox: at least once, signed, with exponential
backoff and a lease so that two gateway replicas never send the same row at once.

A row is written in the same transaction as the payment or refund result it reports,
so a crash cannot lose a notification; it can only repeat one, which the receiver
de-duplicates by ``notifyId``. A delivery counts when the ACQP answers 2xx with
``result.resultStatus == "S"``; after ``webhook_max_attempts`` the row is DEAD and
counted in the metrics.

An ACQP whose directory entry names a ``notifyBatchUrl`` gets the notifications that
are due together in one signed call, ``{"notifications": [...]}``, and answers each
by ``notifyId`` (``{"result": ..., "answers": [{"notifyId", "result"}]}``); each
counts as delivered on its own answer. Others get one call per notification.

The worker's reads and writes run on the gateway's ``Database`` threads, off the
event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, Row, and_, bindparam, select, update

from veilpay.db import Database
from veilpay.errors import MalformedBody, SignatureError
from veilpay.gateway.batch import pause
from veilpay.gateway.config import GatewayConfig
from veilpay.gateway.link import LinkError, PartnerLink
from veilpay.gateway.observe import Metrics
from veilpay.gateway.store import outbox
from veilpay.sdk.directory import Directory
from veilpay.sdk.keys import PartyKeys, PublicEntry
from veilpay.sdk.signing import request_digest, sign_headers, verify_json

__all__ = ["OutboxWorker", "retry_delay_s"]

log = logging.getLogger("veilpay.gateway")
# A claimed row is leased for a round of deliveries: its posts run at once, each within
# webhook_timeout_s, then one write records them. The lease outlives that by a margin,
# and no more: a replica that dies mid-round leaves its rows to the others when it lapses.
LEASE_MARGIN_S = 5.0
CLAIM_LIMIT = 128  # rows per round (per notifyBatch call, for an ACQP that takes them)
# Built once (see ledger.py): the worker runs them for every webhook.
# Claiming is one statement: lease the oldest due rows and return those this call
# leased. The lease condition is checked again on each row as it is updated, so two
# replicas never both claim a row (PostgreSQL re-evaluates it under concurrent updates).
_DUE_IDS = select(outbox.c.id).where(and_(
    outbox.c.status == "PENDING", outbox.c.next_attempt_ms <= bindparam("b_now"),
    outbox.c.lease_until_ms < bindparam("b_now"))).order_by(outbox.c.id).limit(bindparam("b_limit"))
_CLAIM = update(outbox).where(and_(outbox.c.id.in_(_DUE_IDS.scalar_subquery()),
                                   outbox.c.lease_until_ms < bindparam("b_now"))) \
    .values(lease_until_ms=bindparam("b_until")).returning(*outbox.c)
_DELIVERED = update(outbox).where(outbox.c.id == bindparam("b_id")).values(
    status="DELIVERED", attempts=bindparam("b_attempts"), delivered_ms=bindparam("b_now"), lease_until_ms=0,
    last_error="")
_NOT_DELIVERED = update(outbox).where(outbox.c.id == bindparam("b_id")).values(
    status=bindparam("b_status"), attempts=bindparam("b_attempts"), lease_until_ms=0,
    next_attempt_ms=bindparam("b_next"), last_error=bindparam("b_error"))


def _now_ms() -> int:
    return int(time.time() * 1000)



def retry_delay_s(base: float, attempts: int, cap: float) -> float:
    """Exponential backoff with +-25 % jitter (from ``secrets``) before retry number
    ``attempts`` (1 for the first), at most ``cap`` seconds."""
    jitter = 0.75 + 0.5 * secrets.randbelow(1000) / 1000
    return min(base * 2 ** min(attempts - 1, 16) * jitter, cap)

class OutboxWorker:
    def __init__(self, cfg: GatewayConfig, keys: PartyKeys, directory: Callable[[], Directory], db: Database,
                 http: PartnerLink, metrics: Metrics) -> None:
        self.cfg, self.keys, self._directory, self.db = cfg, keys, directory, db
        self.http, self.metrics = http, metrics
        self.event = asyncio.Event()

    def wake(self) -> None:
        self.event.set()

    async def _claim(self, limit: int) -> list[Row[Any]]:
        now = _now_ms()
        lease_ms = int((2 * self.cfg.webhook_timeout_s + LEASE_MARGIN_S) * 1000)
        args = {"b_now": now, "b_limit": limit, "b_until": now + lease_ms}
        rows: Sequence[Row[Any]] = await self.db.write(lambda conn: conn.execute(_CLAIM, args).all())
        return sorted(rows, key=lambda r: r.id)

    async def _post(self, partner: PublicEntry, url: str, raw: bytes) -> tuple[dict[str, Any] | None, str]:
        """The JSON answer of a signed webhook post (None when refused or not signed by
        the ACQP, so that a forged acknowledgement cannot end the deliveries), and why not."""
        path = urlsplit(url).path or "/"
        v, key = self.keys.signer()
        headers = sign_headers(key, v, "POST", path, partner.id, raw, time.time())
        headers["Content-Type"] = "application/json"
        try:
            status, hdrs, content = await self.http.post(url, raw, headers, self.cfg.webhook_timeout_s)
            if status // 100 != 2:
                return None, f"HTTP {status}"
            signed, obj = verify_json(hdrs, "POST", path, content, partner.verify_key, time.time(),
                                      self.cfg.request_window_s, "Response-Time", request_digest(headers))
            if signed.client_id != partner.id:
                return None, "answer signed for another partner"
            return obj, ""
        except SignatureError as exc:
            return None, f"answer not signed by the ACQP ({exc.code})"
        except MalformedBody:
            return None, "answer is not a JSON object"
        except (LinkError, ValueError) as exc:
            return None, type(exc).__name__

    async def _deliver_batch(self, partner: Any, rows: list[Any]) -> list[tuple[Any, bool, str]]:
        """Post ``rows`` to ``partner``'s notifyBatchUrl in one call."""
        raw = ('{"notifications":[' + ",".join(r.body for r in rows) + "]}").encode()
        ans, err = await self._post(partner, partner.notify_batch_url, raw)
        by_id: dict[str, Any] = {}
        if isinstance(ans, dict) and isinstance(ans.get("answers"), list):
            by_id = {str(a.get("notifyId")): a.get("result") for a in ans["answers"] if isinstance(a, dict)}
        elif not err:
            err = "answer has no answers list"
        out = []
        for r in rows:
            res = by_id.get(r.notify_id)
            ok = isinstance(res, dict) and res.get("resultStatus") == "S"
            out.append((r, ok, "" if ok else (err or "answer is not resultStatus S")))
        return out

    async def _deliver(self, partner: Any, row: Any) -> list[tuple[Any, bool, str]]:
        """Post one webhook; [(row, delivered, error)]."""
        if partner is None or not partner.notify_url:
            return [(row, False, "partner has no notifyUrl in the directory")]
        ans, err = await self._post(partner, partner.notify_url, row.body.encode())
        ok = False
        if ans is not None:
            res = ans.get("result") if isinstance(ans, dict) else None
            ok = isinstance(res, dict) and res.get("resultStatus") == "S" and ans.get("notifyId") == row.notify_id
            err = "" if ok else "answer is not resultStatus S for this notifyId"
        return [(row, ok, err)]

    async def _record(self, outcomes: list[tuple[Any, bool, str]]) -> None:
        """Write the outcomes of a round of deliveries in one transaction."""
        now = _now_ms()
        delivered, failed, fates = [], [], []
        for row, ok, err in outcomes:
            attempts = row.attempts + 1
            if ok:
                delivered.append({"b_id": row.id, "b_attempts": attempts, "b_now": now})
                fates.append((row, "delivered", err))
                continue
            dead = attempts >= self.cfg.webhook_max_attempts
            delay = retry_delay_s(self.cfg.webhook_backoff_s, attempts, 3600.0)
            failed.append({"b_id": row.id, "b_status": "DEAD" if dead else "PENDING", "b_attempts": attempts,
                           "b_next": now + int(delay * 1000), "b_error": err[:200]})
            fates.append((row, "dead" if dead else "retry", err))

        def work(conn: Connection) -> None:
            if delivered:
                conn.execute(_DELIVERED, delivered)
            if failed:
                conn.execute(_NOT_DELIVERED, failed)
        await self.db.write(work)
        for row, outcome, err in fates:
            self.metrics.child(self.metrics.webhooks, row.kind, outcome).inc()
            if outcome != "delivered":
                log.info("webhook not delivered", extra={"event": "webhook_retry", "notifyId": row.notify_id,
                                                         "partner": row.partner_id, "error": err[:80]})

    async def run_once(self, limit: int = CLAIM_LIMIT) -> int:
        rows = await self._claim(limit)
        if not rows:
            return 0
        d: Directory = self._directory()
        batched: dict[str, list[Any]] = {}
        single = []
        for r in rows:
            partner = d.get(r.partner_id)
            if partner is not None and partner.notify_batch_url:
                batched.setdefault(r.partner_id, []).append(r)
            else:
                single.append((partner, r))
        done = await asyncio.gather(*[self._deliver(p, r) for p, r in single],
                                    *[self._deliver_batch(d.get(p), rs) for p, rs in batched.items()])
        await self._record([o for outcomes in done for o in outcomes])
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop``. After a webhook falls due the worker lingers
        ``webhook_linger_s`` before it claims, so that the webhooks of the payments
        finishing meanwhile travel in the same notifyBatch call: a call costs both
        sides a signature, a verification and an HTTP exchange, a few times what one
        more item in it costs. Payments do not wait for their webhooks. A round that
        claimed a full batch is followed at once: there is a backlog to clear."""
        n = 0
        while not stop.is_set():
            if n < CLAIM_LIMIT:
                await pause(stop, self.cfg.webhook_linger_s)
            try:
                n = await self.run_once()
            except Exception:  # noqa: BLE001 - the worker must survive a database hiccup
                log.exception("outbox step failed", extra={"event": "outbox_error"})
                n = 0
            if n:
                continue
            self.event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), timeout=0.25)
