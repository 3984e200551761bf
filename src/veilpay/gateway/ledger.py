"""Every SQL statement of the gateway's own tables (payments, refunds, outbox,
seen_requests, settlement_runs, settlements), as the ``Ledger``: one async method per
thing the state machine, the intake and the reports need.

Each method is a unit of work that runs on the ``Database``'s thread pool, so no
request handler or background worker blocks the event loop on the database. The pay
path's three writes (replay guard, new payment, final status with its webhook) are
grouped: they commit with the other writes of the same loop turn. A step that must
commit together with a row here (a privacy node's feed item) passes a ``Feed``: a
function of the open connection, run inside the same transaction.

The conditional updates are the state machine's guards and stay in SQL: a payment is
finished only while PROCESSING and not being cancelled, a refund reserves its amount
only while the payment is SUCCESS and the refunds fit, and the resolver claims due
rows by moving their next check forward, so that replicas on one database never
drive the same row in the same round."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, func, insert, or_, select, update

from veilpay.crypto.tokens import random_id
from veilpay.db import Database, Prepared
from veilpay.gateway.store import (
    outbox,
    payments,
    rate_windows,
    refunds,
    seen_requests,
    settlement_runs,
    settlements,
)
from veilpay.sdk import wirejson

__all__ = ["Feed", "Ledger"]

# (currency, count, sum of the clear amounts or None) of one currency's rows
Totals = tuple[str, int, int | None]
# Work to do in the transaction of a ledger write (queue a node feed item), or None.
Feed = Callable[[Connection], None] | None

# The hot path's statements, built once: building one per call costs SQLAlchemy about
# 200 us of CPU (coercions, cache key), three times what executing it costs.
_INSERT_SEEN = insert(seen_requests)
_INSERT_PAYMENT = insert(payments)
_INSERT_OUTBOX = insert(outbox)
_INSERT_REFUND = insert(refunds)
_PAYMENT_BY_ID = select(payments).where(payments.c.id == bindparam("b_id"))
_REFUND_BY_ID = select(refunds).where(refunds.c.id == bindparam("b_id"))
_FINISH_PAYMENT = update(payments).where(and_(
    payments.c.id == bindparam("b_id"), payments.c.status == "PROCESSING", payments.c.cancel_requested.is_(False))
).values(status=bindparam("b_status"), result_code=bindparam("b_code"), result_message=bindparam("b_message"),
         customer_token=bindparam("b_token"), customer_info=bindparam("b_info"), risk_result=bindparam("b_risk"),
         payment_time_ms=bindparam("b_paid"), updated_ms=bindparam("b_now"))
_RETRY = {t.name: update(t).where(t.c.id == bindparam("b_id")).values(
    attempts=bindparam("b_attempts"), next_check_ms=bindparam("b_next"), updated_ms=bindparam("b_now"))
    for t in (payments, refunds)}
_PURGE_SEEN = seen_requests.delete().where(seen_requests.c.expires_ms < bindparam("b_now"))
_PURGE_RATE = rate_windows.delete().where(rate_windows.c.second < bindparam("b_before"))


def _count_request(dialect: str) -> Any:
    """One more request of a client in a second, returning the second's count so far:
    an upsert on the row every replica counts in (SQLite and PostgreSQL spell it alike)."""
    from sqlalchemy.dialects import postgresql, sqlite

    upsert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = upsert(rate_windows).values(client_id=bindparam("b_client"), second=bindparam("b_second"), count=1)
    return stmt.on_conflict_do_update(index_elements=[rate_windows.c.client_id, rate_windows.c.second],
                                      set_={"count": rate_windows.c.count + 1}).returning(rate_windows.c.count)
# The resolver's claim: one statement per table, so that on SQLite it takes the write
# lock before it reads (no snapshot to upgrade), and on PostgreSQL the due condition is
# checked again on each row as it is updated (a row another replica just claimed is
# skipped). It returns the ids this call claimed.
_DUE_PAYMENTS = select(payments.c.id).where(and_(
    payments.c.next_check_ms <= bindparam("b_now"),
    or_(payments.c.status == "PROCESSING",
        and_(payments.c.status == "SUCCESS", payments.c.cancel_requested.is_(True))))).limit(bindparam("b_limit")) \
    .with_for_update(skip_locked=True)  # PostgreSQL: another replica's claim in progress takes other rows
_CLAIM_PAYMENTS = update(payments).where(and_(
    payments.c.id.in_(_DUE_PAYMENTS.scalar_subquery()), payments.c.next_check_ms <= bindparam("b_now"),
    or_(payments.c.status == "PROCESSING",
        and_(payments.c.status == "SUCCESS", payments.c.cancel_requested.is_(True))))
).values(next_check_ms=bindparam("b_until")).returning(payments.c.id)
_DUE_REFUNDS = select(refunds.c.id).where(and_(
    refunds.c.status == "PROCESSING", refunds.c.next_check_ms <= bindparam("b_now"))).limit(bindparam("b_limit")) \
    .with_for_update(skip_locked=True)
_CLAIM_REFUNDS = update(refunds).where(and_(
    refunds.c.id.in_(_DUE_REFUNDS.scalar_subquery()), refunds.c.status == "PROCESSING",
    refunds.c.next_check_ms <= bindparam("b_now"))
).values(next_check_ms=bindparam("b_until")).returning(refunds.c.id)


_OUTBOX_COLUMNS = ("notify_id", "partner_id", "kind", "body", "status", "attempts", "next_attempt_ms",
                   "lease_until_ms", "last_error", "created_ms")


class _PayPath:
    """The pay path's statements compiled once for the ledger's database and run on
    the connection's cursor (``veilpay.db.Prepared``): SQLAlchemy's work per execution
    was a sixth of the gateway's CPU per payment."""

    def __init__(self, engine: Any) -> None:
        d = engine.dialect
        self.insert_seen = Prepared(_INSERT_SEEN, d, ["client_id", "digest", "expires_ms"])
        self.insert_payment = Prepared(_INSERT_PAYMENT, d, [c.name for c in payments.c])
        self.finish_payment = Prepared(_FINISH_PAYMENT, d)
        self.insert_outbox = Prepared(_INSERT_OUTBOX, d, _OUTBOX_COLUMNS)


def _enqueue(conn: Connection, stmt: Prepared, partner: str, kind: str, body: dict[str, Any], now: int) -> None:
    """A webhook for ``partner`` in the outbox (inside the caller's transaction)."""
    nid = random_id("ntf_")
    body = {"notifyId": nid, **body}
    stmt.run(conn, {"notify_id": nid, "partner_id": partner, "kind": kind, "body": wirejson.dumps_text(body),
                    "status": "PENDING", "attempts": 0, "next_attempt_ms": now, "lease_until_ms": 0,
                    "last_error": "", "created_ms": now})


def _payment(conn: Connection, acqp: str | None, payment_id: str | None, request_id: str | None
             ) -> Row[Any] | None:
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


class Ledger:
    """The gateway's tables, through ``db``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._count_request = _count_request(db.engine.dialect.name)
        self._pay = _PayPath(db.engine)

    # ------------------------------------------------------------------ replay guard
    async def record_seen(self, client: str, digest: str, expires_ms: int, second: int | None = None) -> int:
        """Remember a request's nonce (grouped); IntegrityError when it was seen before.
        With ``second``, also count the request in the client's row for that second,
        in the same transaction, and return the count (else 0)."""
        seen = {"client_id": client, "digest": digest, "expires_ms": expires_ms}
        hit = {"b_client": client, "b_second": second}
        count, insert_seen = self._count_request, self._pay.insert_seen

        def work(conn: Connection) -> int:
            insert_seen.run(conn, seen)
            return int(conn.execute(count, hit).scalar_one()) if second is not None else 0
        return await self.db.grouped(work, order=client)

    async def purge_seen(self, now: int) -> int:
        """Forget the nonces whose window has passed, and the rate counts older than a
        minute; returns how many nonces."""
        def work(conn: Connection) -> int:
            conn.execute(_PURGE_RATE, {"b_before": now // 1000 - 60})
            return int(conn.execute(_PURGE_SEEN, {"b_now": now}).rowcount)
        return await self.db.write(work)

    # ------------------------------------------------------------------ payments
    async def payment(self, pid: str) -> Row[Any] | None:
        return await self.db.read(lambda conn: _payment(conn, None, pid, None))

    async def find_payment(self, acqp: str, payment_id: str | None, request_id: str | None) -> Row[Any] | None:
        """This acquirer's payment by its id or, without one, by its request id."""
        return await self.db.read(lambda conn: _payment(conn, acqp, payment_id, request_id))

    async def record_payment(self, new: dict[str, Any], feed: Feed) -> None:
        """A new PROCESSING payment (grouped), with its node feed items; IntegrityError
        when the acquirer used its request id before."""
        insert_payment = self._pay.insert_payment

        def work(conn: Connection) -> None:
            insert_payment.run(conn, new)
            if feed is not None:
                feed(conn)
        await self.db.grouped(work)

    async def finish_payment(self, row: Any, values: dict[str, Any], notice: dict[str, Any], now: int,
                             feed: Feed) -> bool:
        """Record a payment's final status (``values``: the _FINISH_PAYMENT parameters
        besides b_id and b_now) and queue ``notice`` for its acquirer, in one grouped
        transaction; False when it was no longer PROCESSING (another step got there first)."""
        finish, outbox_row = self._pay.finish_payment, self._pay.insert_outbox

        def work(conn: Connection) -> bool:
            done = finish.run(conn, {"b_id": row.id, "b_now": now, **values})
            if done:
                _enqueue(conn, outbox_row, row.acqp_id, "notifyPayment", notice, now)
                if feed is not None:
                    feed(conn)
            return bool(done)
        return await self.db.grouped(work)

    async def retry_later(self, table: str, row: Any, next_ms: int, now: int) -> None:
        """Count an attempt on a payment or refund (``table``) and set its next check."""
        stmt = _RETRY[table]
        await self.db.write(lambda conn: conn.execute(stmt, {"b_id": row.id, "b_attempts": row.attempts + 1,
                                                             "b_next": next_ms, "b_now": now}))

    async def mark_expired(self, pid: str) -> None:
        """An expired payment is to be cancelled at its MPP."""
        await self.db.write(lambda conn: conn.execute(
            update(payments).where(payments.c.id == pid).values(cancel_requested=True)))

    async def request_cancel(self, pid: str, next_check_ms: int) -> bool:
        """Mark a payment for cancelling, only while it has no refunds and is PROCESSING
        or SUCCESS; False when it was not."""
        return await self.db.write(lambda conn: bool(conn.execute(update(payments).where(and_(
            payments.c.id == pid, payments.c.refund_count == 0,
            payments.c.status.in_(("PROCESSING", "SUCCESS")))).values(
            cancel_requested=True, next_check_ms=next_check_ms)).rowcount))

    async def close_cancelled(self, row: Any, code: str, message: str, now: int, notice: dict[str, Any] | None,
                              feed: Feed) -> bool:
        """Close a payment the MPP cancelled (only while PROCESSING or SUCCESS), with
        ``notice`` for its acquirer when given; False when another step closed it first."""
        def work(conn: Connection) -> bool:
            done = conn.execute(update(payments).where(and_(
                payments.c.id == row.id, payments.c.status.in_(("PROCESSING", "SUCCESS")))).values(
                status="CANCELLED", result_code=code, result_message=message, updated_ms=now)).rowcount
            if done and notice is not None:
                _enqueue(conn, self._pay.insert_outbox, row.acqp_id, "notifyPayment", notice, now)
            if done and feed is not None:
                feed(conn)
            return bool(done)
        return await self.db.write(work)

    # ------------------------------------------------------------------ refunds
    async def refund(self, rid: str) -> Row[Any] | None:
        return await self.db.read(lambda conn: conn.execute(_REFUND_BY_ID, {"b_id": rid}).first())

    async def find_refund(self, acqp: str, refund_id: str | None, request_id: str | None) -> Row[Any] | None:
        """This acquirer's refund by its id or, without one, by its request id."""
        q = select(refunds).where(refunds.c.acqp_id == acqp)
        q = q.where(refunds.c.id == refund_id) if refund_id else q.where(refunds.c.refund_request_id == request_id)
        return await self.db.read(lambda conn: conn.execute(q).first())

    async def reserve_refund(self, new: dict[str, Any], pay_id: str, value: int | None, window_open: bool,
                             now: int, feed: Feed) -> str | None:
        """Record a new PROCESSING refund and, in the same transaction, reserve it on its
        payment: one more refund and, for a clear amount, its value, only while the
        payment is SUCCESS, not being cancelled, and the refunds fit its amount (a hidden
        amount is checked by the nodes). Returns None when reserved (and ``feed`` ran),
        or the result code the refund failed with (recorded on it). IntegrityError when
        the acquirer used its request id before."""
        def work(conn: Connection) -> str | None:
            conn.execute(_INSERT_REFUND, new)
            code = None
            if not window_open:
                code = "REFUND_WINDOW_EXCEED"
            else:
                cond = [payments.c.id == pay_id, payments.c.status == "SUCCESS", payments.c.cancel_requested.is_(False)]
                change: dict[str, Any] = {"refund_count": payments.c.refund_count + 1, "updated_ms": now}
                if value is not None:
                    cond.append(payments.c.refunded + value <= payments.c.amount)
                    change["refunded"] = payments.c.refunded + value
                n = conn.execute(update(payments).where(and_(*cond)).values(**change)).rowcount
                if not n:
                    cur = conn.execute(select(payments.c.status, payments.c.cancel_requested)
                                       .where(payments.c.id == pay_id)).first()
                    ok = cur is not None and cur.status == "SUCCESS" and not cur.cancel_requested
                    code = "REFUND_AMOUNT_EXCEED" if ok else "ORDER_STATUS_INVALID"
            if code is not None:
                conn.execute(update(refunds).where(refunds.c.id == new["id"]).values(status="FAIL", result_code=code))
            elif feed is not None:
                feed(conn)
            return code
        return await self.db.write(work)

    async def mark_checked(self, rid: str) -> None:
        """The nodes found that the refund fits its payment."""
        await self.db.write(lambda conn: conn.execute(update(refunds).where(refunds.c.id == rid).values(checked=True)))

    async def finish_refund(self, row: Any, pay_id: str, ok: bool, code: str, now: int, notice: dict[str, Any],
                            feed: Feed) -> bool:
        """Record a refund's final status (only while PROCESSING), give a failed refund's
        reservation back to its payment, and queue ``notice``; False when another step
        finished it first."""
        def work(conn: Connection) -> bool:
            done = conn.execute(update(refunds).where(and_(refunds.c.id == row.id, refunds.c.status == "PROCESSING"))
                                .values(status="SUCCESS" if ok else "FAIL", result_code=code,
                                        refund_time_ms=now if ok else None, updated_ms=now)).rowcount
            if done and not ok:
                back: dict[str, Any] = {"refund_count": payments.c.refund_count - 1, "updated_ms": now}
                if row.amount is not None:
                    back["refunded"] = payments.c.refunded - row.amount
                conn.execute(update(payments).where(payments.c.id == pay_id).values(**back))
            if done:
                _enqueue(conn, self._pay.insert_outbox, row.acqp_id, "notifyRefund", notice, now)
                if feed is not None:
                    feed(conn)
            return bool(done)
        return await self.db.write(work)

    async def open_refunds(self, pid: str) -> Sequence[Row[Any]]:
        """A payment's refunds that succeeded or may still, oldest first."""
        q = select(refunds).where(and_(refunds.c.payment_id == pid, refunds.c.status.in_(("SUCCESS", "PROCESSING")))) \
            .order_by(refunds.c.created_ms)
        return await self.db.read(lambda conn: conn.execute(q).all())

    # ------------------------------------------------------------------ resolver
    async def claim_due(self, now: int, lease_ms: int, limit: int) -> tuple[list[str], list[str]]:
        """(payment ids, refund ids) whose check is due, claimed for this caller by
        moving their next check ``lease_ms`` ahead: another caller, on this replica or
        another one, does not get them until the lease runs out or a step sets the
        next check itself."""
        args = {"b_now": now, "b_until": now + lease_ms, "b_limit": limit}

        def work(conn: Connection) -> tuple[list[str], list[str]]:
            pids = list(conn.execute(_CLAIM_PAYMENTS, args).scalars().all())
            rids = list(conn.execute(_CLAIM_REFUNDS, args).scalars().all())
            return pids, rids
        return await self.db.write(work)

    # ------------------------------------------------------------------ reports
    async def page_of_payments(self, acqp: str, after: tuple[int, str] | None, limit: int) -> Sequence[Row[Any]]:
        """This acquirer's payments, newest first, after (created_ms, id) ``after``."""
        q = select(payments).where(payments.c.acqp_id == acqp)
        if after is not None:
            ms, pid = after
            q = q.where(or_(payments.c.created_ms < ms, and_(payments.c.created_ms == ms, payments.c.id < pid)))
        q = q.order_by(payments.c.created_ms.desc(), payments.c.id.desc()).limit(limit)
        return await self.db.read(lambda conn: conn.execute(q).all())

    async def clear_totals(self, acqp: str, lo: int, hi: int) -> tuple[list[Totals], list[Totals]]:
        """(payments, refunds) of this acquirer that succeeded in [lo, hi): per
        currency, (currency, count, sum of clear amounts)."""
        pq = select(payments.c.currency, func.count(), func.sum(payments.c.amount)).where(and_(
            payments.c.acqp_id == acqp, payments.c.status == "SUCCESS",
            payments.c.payment_time_ms >= lo, payments.c.payment_time_ms < hi)).group_by(payments.c.currency)
        rq = select(refunds.c.currency, func.count(), func.sum(refunds.c.amount)).where(and_(
            refunds.c.acqp_id == acqp, refunds.c.status == "SUCCESS",
            refunds.c.refund_time_ms >= lo, refunds.c.refund_time_ms < hi)).group_by(refunds.c.currency)

        def work(conn: Connection) -> tuple[list[Totals], list[Totals]]:
            return ([(r[0], int(r[1]), r[2]) for r in conn.execute(pq)],
                    [(r[0], int(r[1]), r[2]) for r in conn.execute(rq)])
        return await self.db.read(work)

    # ------------------------------------------------------------------ settlement
    async def settlement_groups(self, day: str, acqp: str) -> tuple[Row[Any] | None, Sequence[Row[Any]]]:
        """(the period's settlement run, this acquirer's settlement groups in it)."""
        def work(conn: Connection) -> tuple[Row[Any] | None, Sequence[Row[Any]]]:
            run = conn.execute(select(settlement_runs).where(settlement_runs.c.day == day)).first()
            if run is None or run.status != "DONE":
                return run, []
            return run, conn.execute(select(settlements).where(and_(settlements.c.day == day,
                                                                    settlements.c.acqp_id == acqp))).all()
        return await self.db.read(work)

    async def record_settlement_run(self, period: str, status: str, message: str, now: int) -> None:
        def work(conn: Connection) -> None:
            conn.execute(settlement_runs.delete().where(settlement_runs.c.day == period))
            conn.execute(insert(settlement_runs).values(day=period, status=status, message=message[:300],
                                                        updated_ms=now))
        await self.db.write(work)

    async def store_settlement(self, period: str, rows: list[dict[str, Any]]) -> None:
        """Replace the period's settlement groups with ``rows``."""
        def work(conn: Connection) -> None:
            conn.execute(settlements.delete().where(settlements.c.day == period))
            if rows:
                conn.execute(insert(settlements), rows)
        await self.db.write(work)

    async def settled_items(self, pay_ids: list[str], ref_ids: list[str]
                            ) -> tuple[list[Row[Any]], list[Row[Any]]]:
        """(payments, refunds with their payment's mpp_id) of these ids, 5,000 per query."""
        def work(conn: Connection) -> tuple[list[Row[Any]], list[Row[Any]]]:
            pays: list[Row[Any]] = []
            refs: list[Row[Any]] = []
            for lo in range(0, len(pay_ids), 5000):
                pays += conn.execute(select(payments).where(payments.c.id.in_(pay_ids[lo:lo + 5000]))).all()
            for lo in range(0, len(ref_ids), 5000):
                refs += conn.execute(select(refunds, payments.c.mpp_id).join(payments, payments.c.id == refunds.c.payment_id)
                                     .where(refunds.c.id.in_(ref_ids[lo:lo + 5000]))).all()
            return pays, refs
        return await self.db.read(work)
