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
from functools import partial
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from veilpay.crypto.tokens import random_id
from veilpay.db import Database
from veilpay.errors import NodeError, SignatureError
from veilpay.gateway import leases
from veilpay.gateway.batch import pause
from veilpay.gateway.config import GatewayConfig
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
_JOBS = "jobs"


def _now_ms() -> int:
    return int(time.time() * 1000)


# Built once: the gateway queues two or three rows per payment and relays them often.
_INSERT_FEED = insert(node_feed)
_CURSOR = select(node_cursor).where(node_cursor.c.node == bindparam("b_node"))
_PENDING = select(func.count()).select_from(node_feed).where(
    node_feed.c.node == bindparam("b_node"), or_(node_feed.c.pos.is_(None), node_feed.c.pos > bindparam("b_after")))
_UNPLACED = select(node_feed.c.seq).where(node_feed.c.node == bindparam("b_node"), node_feed.c.pos.is_(None)) \
    .order_by(node_feed.c.seq).limit(bindparam("b_limit"))
_PLACE = update(node_feed).where(node_feed.c.seq == bindparam("b_seq")).values(pos=bindparam("b_pos"))
_ASSIGNED = update(node_cursor).where(node_cursor.c.node == bindparam("b_node")).values(
    assigned=bindparam("b_assigned"))
_FEED = select(node_feed.c.pos, node_feed.c.item).where(
    node_feed.c.node == bindparam("b_node"), node_feed.c.pos > bindparam("b_after")) \
    .order_by(node_feed.c.pos).limit(bindparam("b_limit"))
_INSERT_CURSOR = insert(node_cursor)
_CURSOR_ADVANCED = update(node_cursor).where(node_cursor.c.node == bindparam("b_node"),
                                             node_cursor.c.delivered < bindparam("b_delivered")).values(
    delivered=bindparam("b_delivered"), attempts=0, next_attempt_ms=bindparam("b_next"), last_error="")
_CURSOR_FAILED = update(node_cursor).where(node_cursor.c.node == bindparam("b_node")).values(
    attempts=bindparam("b_attempts"), next_attempt_ms=bindparam("b_next"), last_error=bindparam("b_error"))


class NodeLink:
    """The feed to each node and the jobs at all of them, for one gateway replica.

    Replicas share the feed through the database: relaying to a node is leased
    (``relay:<node>``, ``veilpay.gateway.leases``) to one replica at a time, which
    gives the node's committed rows their positions in the order it delivers them, so
    a row that commits late (a slow transaction of another replica) comes after the
    rows already delivered instead of behind them. Jobs are leased too (``jobs``):
    the nodes compute one job at a time in lock step, and two replicas starting jobs
    at once would meet them in different orders."""

    def __init__(self, cfg: GatewayConfig, keys: PartyKeys, directory: Callable[[], Directory], db: Database,
                 http: PartnerLink, privacy: Privacy) -> None:
        self.cfg, self.keys, self._directory, self.db, self.http = cfg, keys, directory, db, http
        self.privacy = privacy
        self.me = leases.replica_id()
        self._job_lock = asyncio.Lock()
        self._flush_locks = {n: asyncio.Lock() for n in privacy.nodes}
        self._wake = asyncio.Event()
        # a relay lease outlives the longest feed call it covers
        self.relay_lease_ms = int(max(15.0, 3 * cfg.node_timeout_s) * 1000)

    @property
    def engine(self) -> Engine:
        return self.db.engine

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

    def pending(self, node: str) -> int:
        """Feed rows for ``node`` not yet applied there (blocking: for tests and operators)."""
        with self.engine.connect() as conn:
            cur = conn.execute(_CURSOR, {"b_node": node}).first()
            return int(conn.execute(_PENDING, {"b_node": node, "b_after": cur.delivered if cur else 0}).scalar() or 0)

    def _take_relay(self, conn: Connection, node: str) -> Any:
        """The node's cursor row, with its relay lease taken; None while another replica holds it."""
        if not leases.take(conn, "relay:" + node, self.me, self.relay_lease_ms):
            return None
        cur = conn.execute(_CURSOR, {"b_node": node}).first()
        if cur is None:
            conn.execute(_INSERT_CURSOR, {"node": node, "delivered": 0, "attempts": 0, "next_attempt_ms": 0,
                                          "last_error": "", "assigned": 0})
            cur = conn.execute(_CURSOR, {"b_node": node}).first()
        return cur

    def _place(self, conn: Connection, node: str) -> tuple[int, int] | None:
        """Give the node's committed rows that have none their positions, after the last
        one given, up to a batch; (last position, rows placed), None if the lease lapsed."""
        if not leases.renew(conn, "relay:" + node, self.me, self.relay_lease_ms):
            return None
        assigned = int(conn.execute(_CURSOR, {"b_node": node}).one().assigned)
        seqs = conn.execute(_UNPLACED, {"b_node": node, "b_limit": _BATCH}).scalars().all()
        if seqs:
            conn.execute(_PLACE, [{"b_seq": q, "b_pos": assigned + i} for i, q in enumerate(seqs, 1)])
            assigned += len(seqs)
            conn.execute(_ASSIGNED, {"b_node": node, "b_assigned": assigned})
        return assigned, len(seqs)

    def _save_cursor(self, conn: Connection, node: str, cur: Any, delivered: int | None, error: str = "") -> Any:
        """Record how far ``node`` got (``delivered``) or why it did not (``error``, which
        backs its next attempt off), under the relay lease; ``cur`` is its cursor row as
        last read or saved. Returns the cursor as saved, or None if the lease lapsed."""
        if not leases.renew(conn, "relay:" + node, self.me, self.relay_lease_ms):
            return None
        now = _now_ms()
        attempts = 0 if not error else cur.attempts + 1
        nxt = now + (int(retry_delay_s(0.2, attempts, 30.0) * 1000) if error else 0)
        position = delivered if delivered is not None else cur.delivered
        if error:
            conn.execute(_CURSOR_FAILED, {"b_node": node, "b_attempts": attempts, "b_next": nxt,
                                          "b_error": error[:200]})
        else:
            conn.execute(_CURSOR_ADVANCED, {"b_node": node, "b_delivered": position, "b_next": nxt})
        return SimpleNamespace(node=node, delivered=position, attempts=attempts, next_attempt_ms=nxt,
                               last_error=error[:200], assigned=cur.assigned)

    async def flush(self, node: str, due_only: bool = False) -> int | None:
        """Deliver every row committed for ``node`` so far; returns the position it
        reached, or None when another replica relays to the node now or, with
        ``due_only``, the node's retry is not yet due. NodeError when the node cannot be
        reached (rows stay queued)."""
        async with self._flush_locks[node]:
            try:
                cur = await self.db.write(lambda c: self._take_relay(c, node))
            except IntegrityError:  # another replica made the lease or cursor row at this moment
                return None
            if cur is None:
                return None
            try:
                return await self._relay(node, cur, due_only)
            finally:
                await self.db.write(lambda c: leases.drop(c, "relay:" + node, self.me))

    async def _relay(self, node: str, cur: Any, due_only: bool) -> int | None:
        if due_only and cur.next_attempt_ms > _now_ms():
            return None
        delivered = cur.delivered
        while True:
            placed = await self.db.write(lambda c: self._place(c, node))
            if placed is None:
                return None
            after = {"b_node": node, "b_after": delivered, "b_limit": _BATCH}
            rows = await self.db.read(lambda c, after=after: c.execute(_FEED, after).all())  # type: ignore[misc]
            if not rows:
                return delivered
            # each stored item is a JSON object; the batch is spliced from them, the
            # position put first as its sequence number, instead of parsing and encoding
            # every item again
            raw = b'{"items":[' + b",".join(b'{"seq":%d,' % r.pos + r.item.encode()[1:] for r in rows) + b"]}"
            try:
                ans = await self._post(node, "/node/v1/feed", raw, self.cfg.node_timeout_s)
            except NodeError as exc:
                await self.db.write(partial(self._save_cursor, node=node, cur=cur, delivered=None, error=str(exc)))
                raise
            got = ans.get("applied")
            if not isinstance(got, int) or got < rows[-1].pos:
                await self.db.write(partial(self._save_cursor, node=node, cur=cur, delivered=None,
                                            error="node did not apply the batch"))
                raise NodeError(f"node {node}: did not apply the batch", "NODE_UNAVAILABLE", 503)
            for rej in ans.get("rejected") or []:
                log.warning("node refused a share", extra={"event": "share_refused", "node": node,
                                                           "code": str(rej.get("code"))[:40]})
            delivered = rows[-1].pos
            saved = await self.db.write(partial(self._save_cursor, node=node, cur=cur, delivered=delivered))
            if saved is None:
                return None
            cur = saved
            if len(rows) < _BATCH and placed[1] < _BATCH:  # every row committed when we placed was delivered
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
    async def _lease_or_wait(self, name: str, ms: int, what: str) -> None:
        """Take lease ``name``, waiting up to ``node_timeout_s`` while another replica
        holds it; NODE_BUSY naming the holder and when its lease lapses (a replica that
        died holding it keeps the others out until then)."""
        deadline = time.monotonic() + self.cfg.node_timeout_s
        while True:
            try:
                if await self.db.write(lambda c: leases.take(c, name, self.me, ms)):
                    return
            except IntegrityError:  # another replica made the row at this moment: it holds it
                pass
            if time.monotonic() > deadline:
                held = await self.db.read(lambda c: leases.holder(c, name))
                who = f"; lease {name!r} held by {held[0]} for {max(0, held[1] - _now_ms()) / 1000:.0f} s more " \
                    "(a replica that stopped keeps it until it lapses)" if held else ""
                raise NodeError(f"the privacy nodes are busy with {what}{who}", "NODE_BUSY", 503)
            await asyncio.sleep(0.05)

    async def _renew_or_stop(self, name: str, ms: int) -> None:
        """Extend lease ``name`` by ``ms`` before a step that needs it; NodeError if it
        lapsed meanwhile (another replica may hold it now: the step must not run)."""
        if not await self.db.write(lambda c: leases.renew(c, name, self.me, ms)):
            raise NodeError(f"lost lease {name!r} before the job's next step; ask again", "NODE_BUSY", 503)

    async def _flush_all(self, node: str) -> int:
        """Deliver every row committed for ``node`` so far, waiting up to ``node_timeout_s``
        for a pass of another replica's relay to end; the position reached."""
        deadline = time.monotonic() + self.cfg.node_timeout_s
        while True:
            reached = await self.flush(node)
            if reached is not None:
                return reached
            if time.monotonic() > deadline:
                raise NodeError(f"node {node}: another replica's relay holds its feed", "NODE_BUSY", 503)
            await asyncio.sleep(0.05)

    async def _post_all(self, body: dict[str, Any]) -> list[Any]:
        return list(await asyncio.gather(*[self._post(n, "/node/v1/jobs", body, self.cfg.node_job_timeout_s)
                                           for n in self.privacy.parties], return_exceptions=True))

    async def job(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        """Run ``kind`` at every node: the share holders' common ``result`` and ``ledger``
        position, each holder's ``outputs`` (by node), and the traffic between them.
        NodeError when a node is down, behind or refuses, or the holders disagree."""
        # the lease covers one post at the nodes and is renewed before each one (a job may
        # post twice: the rejoin), so it never lapses under a live job
        lease_ms = int((self.cfg.node_job_timeout_s + 30) * 1000)
        async with self._job_lock:
            await self._lease_or_wait(_JOBS, lease_ms, "another replica's job")
            try:
                through = {}
                for n in self.privacy.nodes:
                    through[n] = await self._flush_all(n)
                body: dict[str, Any] = {"jobId": random_id("job_"), "kind": kind, "params": params,
                                        "through": through}
                await self._renew_or_stop(_JOBS, lease_ms)
                answers = await self._post_all(body)
                if any(isinstance(a, dict) and a.get("stored") for a in answers) and any(
                        isinstance(a, BaseException) for a in answers):
                    # some nodes stored this release and others did not (one stopped between the
                    # reveal and storing it): the ones that stored it take part again
                    await self._renew_or_stop(_JOBS, lease_ms)
                    answers = await self._post_all({**body, "jobId": random_id("job_"), "rejoin": True})
            finally:
                await self.db.write(lambda c: leases.drop(c, _JOBS, self.me))
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
