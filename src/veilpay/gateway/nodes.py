"""The gateway's side of the privacy nodes: a durable, ordered feed to each node and the
jobs it submits to all of them.

The feed: every share envelope and every status change a node must know is a row of
``node_feed`` for that node, written in the same transaction as the payment or refund
it belongs to. A worker posts each node its rows in sequence order; the node applies
each once and answers the position it reached, which the gateway records in
``node_cursor``. A node that is down misses nothing: its rows wait (the payment
itself does not) and the worker retries with backoff until it is back.

Jobs: the gateway brings every share holder up to date, then posts the same signed
job to all nodes at once (they run it together over their own TLS mesh) and accepts
the answer only when the share holders give the same public result and ledger
position. What a job may reveal is the nodes' policy, not the gateway's: a job names
only its kind and subject (a period, a refund). Settlement outputs come back sealed
to the partners they are owed to, one set per share holder, and are routed on as
they are. One job runs at a time (the nodes compute in lock step)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Engine, bindparam, func, insert, select, update

from veilpay.crypto.tokens import random_id
from veilpay.errors import NodeError, SignatureError
from veilpay.gateway.batch import pause
from veilpay.gateway.link import LinkError, PartnerLink
from veilpay.gateway.outbox import retry_delay_s
from veilpay.gateway.store import node_cursor, node_feed
from veilpay.sdk import wirejson
from veilpay.sdk.directory import Directory
from veilpay.sdk.keys import PartyKeys, PublicEntry
from veilpay.sdk.shares import Privacy
from veilpay.sdk.signing import post_headers, request_digest, verify_message

__all__ = ["NodeLink"]

log = logging.getLogger("veilpay.gateway")
_BATCH = 500


def _now_ms() -> int:
    return int(time.time() * 1000)


# Built once: the gateway queues two or three rows per payment and relays them often.
_INSERT_FEED = insert(node_feed)
_CURSOR = select(node_cursor).where(node_cursor.c.node == bindparam("b_node"))
_PENDING = select(func.count()).select_from(node_feed).where(
    node_feed.c.node == bindparam("b_node"), node_feed.c.seq > bindparam("b_after"))
_FEED = select(node_feed.c.seq, node_feed.c.item).where(
    node_feed.c.node == bindparam("b_node"), node_feed.c.seq > bindparam("b_after")) \
    .order_by(node_feed.c.seq).limit(bindparam("b_limit"))
_INSERT_CURSOR = insert(node_cursor)
_CURSOR_ADVANCED = update(node_cursor).where(node_cursor.c.node == bindparam("b_node")).values(
    delivered=bindparam("b_delivered"), attempts=0, next_attempt_ms=bindparam("b_next"), last_error="")
_CURSOR_FAILED = update(node_cursor).where(node_cursor.c.node == bindparam("b_node")).values(
    attempts=bindparam("b_attempts"), next_attempt_ms=bindparam("b_next"), last_error=bindparam("b_error"))


class NodeLink:
    def __init__(self, cfg: Any, keys: PartyKeys, directory: Callable[[], Directory], engine: Engine,
                 http: PartnerLink, privacy: Privacy) -> None:
        self.cfg, self.keys, self._directory, self.engine, self.http = cfg, keys, directory, engine, http
        self.privacy = privacy
        self._job_lock = asyncio.Lock()
        self._flush_locks = {n: asyncio.Lock() for n in privacy.nodes}
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ feed
    def enqueue(self, conn: Any, per_node: dict[str, dict[str, Any]]) -> None:
        """Queue one item for each share-holding node (inside the caller's transaction)."""
        now = _now_ms()
        conn.execute(_INSERT_FEED, [{"node": n, "item": wirejson.dumps_text(item),
                                     "created_ms": now} for n, item in per_node.items()])

    def enqueue_status(self, conn: Any, item_id: str, status: str) -> None:
        item: dict[str, Any] = {"op": "status", "id": item_id, "status": status}
        self.enqueue(conn, {n: item for n in self.privacy.nodes})

    def _entry(self, node: str) -> PublicEntry:
        entry = self._directory().get(node)
        if entry is None or entry.role != "node":
            raise NodeError(f"privacy node {node!r} is not in the directory", "NODE_UNAVAILABLE", 503)
        return entry

    async def _post(self, node: str, path: str, body: dict[str, Any] | bytes, timeout: float) -> dict[str, Any]:
        entry = self._entry(node)
        raw = body if isinstance(body, bytes) else wirejson.dumps(body)
        headers = post_headers(self.keys.signer(), path, node, raw)
        try:
            status, hdrs, content = await self.http.post(entry.endpoint.rstrip("/") + path, raw, headers, timeout)
        except LinkError as exc:
            raise NodeError(f"node {node}: unreachable ({exc})", "NODE_UNAVAILABLE", 503) from exc
        try:
            signed = verify_message(hdrs, "POST", path, content, entry.verify_key, time.time(),
                                    self.cfg.request_window_s, "Response-Time", request_digest(headers))
            if signed.client_id != node:
                raise SignatureError("answer signed for another party")
            obj = wirejson.loads(content)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
        except (SignatureError, ValueError) as exc:
            raise NodeError(f"node {node}: unverifiable answer", "NODE_UNAVAILABLE", 503) from exc
        if status != 200:
            err = obj.get("error") or {}
            raise NodeError(f"node {node}: {err.get('message', status)}", str(err.get("code", "JOB_FAILED")),
                            status)
        return obj

    def _cursor(self, node: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(_CURSOR, {"b_node": node}).first()

    def pending(self, node: str, cursor: Any = None) -> int:
        """Feed rows for ``node`` not yet applied there (``cursor``: its row, when read)."""
        cur = cursor or self._cursor(node)
        with self.engine.connect() as conn:
            return int(conn.execute(_PENDING, {"b_node": node, "b_after": cur.delivered if cur else 0}).scalar() or 0)

    def _save_cursor(self, node: str, cur: Any, delivered: int | None, error: str = "") -> Any:
        """Record how far ``node`` got (``delivered``) or why it did not (``error``, which
        backs its next attempt off); ``cur`` is its cursor row as last read or saved.
        Returns the cursor as saved."""
        now = _now_ms()
        attempts = 0 if not error else (cur.attempts + 1 if cur else 1)
        nxt = now + (int(retry_delay_s(0.2, attempts, 30.0) * 1000) if error else 0)
        position = delivered if delivered is not None else (cur.delivered if cur else 0)
        with self.engine.begin() as conn:
            if cur is None:
                conn.execute(_INSERT_CURSOR, {"node": node, "delivered": position, "attempts": attempts,
                                              "next_attempt_ms": nxt, "last_error": error[:200]})
            elif error:
                conn.execute(_CURSOR_FAILED, {"b_node": node, "b_attempts": attempts, "b_next": nxt,
                                              "b_error": error[:200]})
            else:
                conn.execute(_CURSOR_ADVANCED, {"b_node": node, "b_delivered": position, "b_next": nxt})
        return SimpleNamespace(node=node, delivered=position, attempts=attempts, next_attempt_ms=nxt,
                               last_error=error[:200])

    async def flush(self, node: str, due_only: bool = False) -> int | None:
        """Deliver every row queued for ``node`` so far; returns the position it reached,
        or None when ``due_only`` and the node's retry is not yet due. NodeError when
        the node cannot be reached (rows stay queued)."""
        async with self._flush_locks[node]:
            cur = self._cursor(node)
            if due_only and cur is not None and cur.next_attempt_ms > _now_ms():
                return None
            delivered = cur.delivered if cur else 0
            while True:
                with self.engine.connect() as conn:
                    rows = conn.execute(_FEED, {"b_node": node, "b_after": delivered, "b_limit": _BATCH}).all()
                if not rows:
                    return delivered
                # each stored item is a JSON object; the batch is spliced from them, the
                # sequence number put first, instead of parsing and encoding every item again
                raw = b'{"items":[' + b",".join(b'{"seq":%d,' % r.seq + r.item.encode()[1:] for r in rows) + b"]}"
                try:
                    ans = await self._post(node, "/node/v1/feed", raw, self.cfg.node_timeout_s)
                except NodeError as exc:
                    self._save_cursor(node, cur, None, str(exc))
                    raise
                got = ans.get("applied")
                if not isinstance(got, int) or got < rows[-1].seq:
                    self._save_cursor(node, cur, None, "node did not apply the batch")
                    raise NodeError(f"node {node}: did not apply the batch", "NODE_UNAVAILABLE", 503)
                for rej in ans.get("rejected") or []:
                    log.warning("node refused a share", extra={"event": "share_refused", "node": node,
                                                               "code": str(rej.get("code"))[:40]})
                delivered = rows[-1].seq
                cur = self._save_cursor(node, cur, delivered)
                if len(rows) < _BATCH:  # every row queued when we read was delivered
                    return delivered

    async def run_once(self) -> int:
        """One pass over the nodes whose retry is due; returns how many it reached."""
        reached = 0
        for node in self.privacy.nodes:
            try:
                if await self.flush(node, due_only=True) is not None:
                    reached += 1
            except NodeError:
                pass
        return reached

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop``. Like the webhook outbox, the relay lingers
        ``node_relay_linger_s`` after it is woken, so that the rows of the payments
        finishing meanwhile travel in the same feed call; payments do not wait for it."""
        while not stop.is_set():
            await pause(stop, self.cfg.node_relay_linger_s)
            self._wake.clear()  # before the pass: a row queued during it wakes the next one
            try:
                await self.run_once()
            except Exception:  # noqa: BLE001 - keep relaying after a database hiccup
                log.exception("node relay failed", extra={"event": "node_relay_error"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.cfg.node_relay_interval_s)

    # ------------------------------------------------------------------ jobs
    async def _post_all(self, body: dict[str, Any]) -> list[Any]:
        return list(await asyncio.gather(*[self._post(n, "/node/v1/jobs", body, self.cfg.node_job_timeout_s)
                                           for n in self.privacy.parties], return_exceptions=True))

    async def job(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        """Run ``kind`` at every node: the share holders' common ``result`` and ``ledger``
        position, each holder's ``outputs`` (by node), and the traffic between them.
        NodeError when a node is down, behind or refuses, or the holders disagree."""
        async with self._job_lock:
            through = {}
            for n in self.privacy.nodes:
                through[n] = await self.flush(n)
            body: dict[str, Any] = {"jobId": random_id("job_"), "kind": kind, "params": params, "through": through}
            answers = await self._post_all(body)
            if any(isinstance(a, dict) and a.get("stored") for a in answers) and any(
                    isinstance(a, BaseException) for a in answers):
                # some nodes stored this release and others did not (one stopped between the
                # reveal and storing it): the ones that stored it take part again
                answers = await self._post_all({**body, "jobId": random_id("job_"), "rejoin": True})
        errors = [a for a in answers if isinstance(a, BaseException)]
        if errors:  # the most telling refusal: a holder's named code before a peer's dropped link
            named = [e for e in errors if isinstance(e, NodeError) and e.code not in ("JOB_FAILED", "NODE_UNAVAILABLE")]
            first = (named or errors)[0]
            if isinstance(first, NodeError):
                raise first
            raise NodeError(f"{kind}: {type(first).__name__}", "JOB_FAILED", 502) from first
        ok: list[dict[str, Any]] = [a for a in answers if isinstance(a, dict)]
        held = {n: a for n, a in zip(self.privacy.parties, ok, strict=True) if n in self.privacy.nodes}
        public = [(a.get("result"), a.get("ledger"), a.get("subject")) for a in held.values()]
        if any(p != public[0] for p in public[1:]):
            raise NodeError(f"{kind}: the nodes answered differently", "NODES_DISAGREE", 502)
        one = next(iter(held.values()))
        return {"result": one.get("result"), "ledger": one.get("ledger"), "stored": bool(one.get("stored")),
                "outputs": {n: a.get("outputs") or {} for n, a in held.items()},
                "bytesSent": sum(int(a.get("bytesSent", 0)) for a in ok),
                "rounds": max(int(a.get("rounds", 0)) for a in held.values())}
