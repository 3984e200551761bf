"""Webhook delivery from the durable outbox: at least once, signed, with exponential
backoff and a lease so that two gateway replicas never send the same row at once.

A row is written in the same transaction as the payment or refund result it reports,
so a crash cannot lose a notification; it can only repeat one, which the receiver
de-duplicates by ``notifyId``. A delivery counts when the ACQP answers 2xx with
``result.resultStatus == "S"``; after ``webhook_max_attempts`` the row is DEAD and
counted in the metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, and_, select, update

from veilpay.gateway.link import LinkError, PartnerLink
from veilpay.gateway.store import outbox
from veilpay.sdk.directory import Directory
from veilpay.sdk.keys import PartyKeys
from veilpay.sdk.signing import sign_headers

__all__ = ["OutboxWorker", "retry_delay_s"]

log = logging.getLogger("veilpay.gateway")
LEASE_MS = 30_000


def _now_ms() -> int:
    return int(time.time() * 1000)



def retry_delay_s(base: float, attempts: int, cap: float) -> float:
    """Exponential backoff with +-25 % jitter (from ``secrets``) before retry number
    ``attempts`` (1 for the first), at most ``cap`` seconds."""
    jitter = 0.75 + 0.5 * secrets.randbelow(1000) / 1000
    return min(base * 2 ** min(attempts - 1, 16) * jitter, cap)

class OutboxWorker:
    def __init__(self, cfg: Any, keys: PartyKeys, directory: Any, engine: Engine, http: PartnerLink,
                 metrics: Any) -> None:
        self.cfg, self.keys, self._directory, self.engine = cfg, keys, directory, engine
        self.http, self.metrics = http, metrics
        self.event = asyncio.Event()

    def wake(self) -> None:
        self.event.set()

    def _claim(self, limit: int) -> list[Any]:
        now = _now_ms()
        with self.engine.begin() as conn:
            rows = conn.execute(select(outbox).where(and_(
                outbox.c.status == "PENDING", outbox.c.next_attempt_ms <= now, outbox.c.lease_until_ms < now))
                .order_by(outbox.c.id).limit(limit)).all()
            claimed = []
            for r in rows:
                n = conn.execute(update(outbox).where(and_(outbox.c.id == r.id, outbox.c.lease_until_ms < now))
                                 .values(lease_until_ms=now + LEASE_MS)).rowcount
                if n:
                    claimed.append(r)
        return claimed

    async def _deliver(self, row: Any) -> None:
        d: Directory = self._directory()
        partner = d.get(row.partner_id)
        err = ""
        ok = False
        if partner is None or not partner.notify_url:
            err = "partner has no notifyUrl in the directory"
        else:
            raw = row.body.encode()
            path = urlsplit(partner.notify_url).path or "/"
            v, key = self.keys.signer()
            headers = sign_headers(key, v, "POST", path, partner.id, raw, time.time())
            headers["Content-Type"] = "application/json"
            try:
                status, _, content = await self.http.post(partner.notify_url, raw, headers,
                                                          self.cfg.webhook_timeout_s)
                if status // 100 == 2:
                    ans = json.loads(content)
                    ok = ans.get("result", {}).get("resultStatus") == "S"
                    err = "" if ok else "answer is not resultStatus S"
                else:
                    err = f"HTTP {status}"
            except (LinkError, ValueError, AttributeError) as exc:
                err = type(exc).__name__
        now = _now_ms()
        with self.engine.begin() as conn:
            if ok:
                conn.execute(update(outbox).where(outbox.c.id == row.id).values(
                    status="DELIVERED", attempts=row.attempts + 1, delivered_ms=now, lease_until_ms=0, last_error=""))
            else:
                attempts = row.attempts + 1
                dead = attempts >= self.cfg.webhook_max_attempts
                delay = retry_delay_s(self.cfg.webhook_backoff_s, attempts, 3600.0)
                conn.execute(update(outbox).where(outbox.c.id == row.id).values(
                    status="DEAD" if dead else "PENDING", attempts=attempts, lease_until_ms=0,
                    next_attempt_ms=now + int(delay * 1000), last_error=err[:200]))
        dead = not ok and row.attempts + 1 >= self.cfg.webhook_max_attempts
        outcome = "delivered" if ok else ("dead" if dead else "retry")
        self.metrics.webhooks.labels(kind=row.kind, outcome=outcome).inc()
        if not ok:
            log.info("webhook not delivered", extra={"event": "webhook_retry", "notifyId": row.notify_id,
                                                     "partner": row.partner_id, "error": err[:80]})

    async def run_once(self, limit: int = 64) -> int:
        rows = self._claim(limit)
        if rows:
            await asyncio.gather(*[self._deliver(r) for r in rows])
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
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
