"""A privacy node's feed: the share envelopes and status changes the gateway relays,
applied in sequence order and exactly once, and checked against what the partners
signed rather than what the gateway says.

A share is taken only with its ACQP's signed bundle (``veilpay.sdk.shares``): the
bundle must verify against the ACQP key this node pinned, name this node and this
very envelope, and carry a time no later than the node's clock allows. Everything
the node stores about the amount (acquirer, MPP, kind, request id, currency, the
payment a refund refunds, the time and so the settlement period) comes from the
bundle; the gateway supplies only its own id for the item.

Statuses follow the node's own state machine: a payment goes NEW -> SUCCESS, FAIL
or CANCELLED, and SUCCESS -> CANCELLED (a cancel within the window); a refund goes
NEW -> RESERVED or REJECTED by the nodes' own check, RESERVED -> SUCCESS, and NEW
or RESERVED -> RELEASED. Final states stay final.

An item the node refuses is answered with a named code, counted in the node's
metrics, and not stored: a bundle that is malformed, unsigned or signed by a key
the node did not pin, a bundle for other nodes or for another envelope, a time
ahead of the clock, a replay of another item's request, a refund of a payment the
node does not hold, a status that reopens a final state or completes an unchecked
refund. One exception is kept, marked: a correctly signed share that does not open
(the ACQP's own fault), so that settlement names it as left out at every node."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, bindparam, insert, select, update

from veilpay.errors import DecryptionError, InvalidInput, NodeError, SignatureError
from veilpay.node.config import NodePolicy
from veilpay.node.store import items, state
from veilpay.sdk.envelope import is_envelope
from veilpay.sdk.keys import PartyKeys, PublicEntry
from veilpay.sdk.periods import Period
from veilpay.sdk.shares import Privacy, envelope_digest, open_share, verify_bundle

__all__ = ["Feed", "Refused"]

_MOD = 1 << 64
# (kind, status now) -> statuses the gateway may move it to
_PAY_NEXT = {"NEW": {"SUCCESS", "FAIL", "CANCELLED"}, "SUCCESS": {"CANCELLED"}}
_REFUND_NEXT = {"NEW": {"RELEASED"}, "RESERVED": {"SUCCESS", "RELEASED"}}
_REFUND_STATUS = {"SUCCESS": "SUCCESS", "FAIL": "RELEASED"}
# statements built once: the feed runs them for every batch
_COLS = (items.c.id, items.c.kind, items.c.acqp_id, items.c.mpp_id, items.c.currency, items.c.request_id,
         items.c.status)
_BY_IDS = select(*_COLS).where(items.c.id.in_(bindparam("b_ids", expanding=True)))
_BY_REQUESTS = select(*_COLS).where(items.c.request_id.in_(bindparam("b_reqs", expanding=True)))
_INSERT = insert(items)
_SET_STATUS = update(items).where(items.c.id == bindparam("b_id")).values(status=bindparam("b_status"),
                                                                         status_seq=bindparam("b_seq"))


class _Batch:
    """One feed batch's view of the store: the rows it touches, read up front in two
    queries, and what it writes, applied at the end in two bulk statements; so a
    batch of a few hundred payments costs a handful of statements, not a few per item."""

    def __init__(self, conn: Any, batch: list[dict[str, Any]]) -> None:
        ids = {str(it.get("id"))[:40] for it in batch}
        reqs: set[str] = set()
        for it in batch:
            b = it.get("bundle")
            if isinstance(b, dict):
                reqs.update(str(b.get(k))[:64] for k in ("requestId", "payment"))
        self.by_id: dict[str, dict[str, Any]] = {}
        self.by_request: dict[tuple[str, str, str], dict[str, Any]] = {}
        for query, key, values in ((_BY_IDS, "b_ids", sorted(ids)), (_BY_REQUESTS, "b_reqs", sorted(reqs))):
            for lo in range(0, len(values), 900):
                for r in conn.execute(query, {key: values[lo:lo + 900]}):
                    self._remember(dict(r._mapping))
        self.inserts: list[dict[str, Any]] = []
        self.new: set[str] = set()
        self.updates: dict[str, dict[str, Any]] = {}

    def _remember(self, row: dict[str, Any]) -> None:
        self.by_id[row["id"]] = row
        self.by_request[(row["acqp_id"], row["kind"], row["request_id"])] = row

    def add(self, row: dict[str, Any]) -> None:
        self.inserts.append(row)
        self.new.add(row["id"])
        self._remember(row)

    def set_status(self, iid: str, status: str, seq: int) -> None:
        row = self.by_id[iid]
        row["status"], row["status_seq"] = status, seq  # an item inserted in this batch changes in place
        if iid not in self.new:
            self.updates[iid] = {"b_id": iid, "b_status": status, "b_seq": seq}

    def write(self, conn: Any) -> None:
        if self.inserts:
            conn.execute(_INSERT, self.inserts)
        if self.updates:
            conn.execute(_SET_STATUS, list(self.updates.values()))


class Refused(Exception):
    """One feed item refused; ``code`` names why."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(message or code)
        self.code = code


def _signed(w: int) -> int:
    return w - _MOD if w >= 1 << 63 else w


def _text(obj: dict[str, Any], key: str, limit: int = 64) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v or len(v) > limit:
        raise Refused("FEED_INVALID", f"{key!r} must be a string of 1..{limit} characters")
    return v


class Feed:
    """Applies the gateway's feed to this node's store. ``partners()`` returns the
    partner entries this node pinned (by id), ``clock()`` the time in ms, and
    ``refused(code)`` counts a refusal."""

    def __init__(self, keys: PartyKeys, privacy: Privacy, engine: Engine, policy: NodePolicy,
                 partners: Callable[[], dict[str, PublicEntry]], clock: Callable[[], int],
                 refused: Callable[[str], None]) -> None:
        self.keys, self.privacy, self.engine, self.policy = keys, privacy, engine, policy
        self.partners, self.clock, self.refused = partners, clock, refused
        self.me = keys.id

    def applied(self) -> int:
        with self.engine.connect() as conn:
            v = conn.execute(select(state.c.value).where(state.c.key == "applied_seq")).scalar()
        return int(v or 0)

    def ingest(self, batch: Any) -> dict[str, Any]:
        """Apply the items with a sequence number above the one applied; returns the new
        position and the items refused, each with its code."""
        if not isinstance(batch, list) or len(batch) > 10_000:
            raise NodeError("feed: 'items' must be a list of at most 10000 items", "FEED_INVALID", 400)
        if self.me not in self.privacy.nodes:
            raise NodeError("feed: the dealer holds no shares", "FEED_INVALID", 400)
        for it in batch:
            seq = it.get("seq") if isinstance(it, dict) else None
            if isinstance(seq, bool) or not isinstance(seq, int) or not 0 < seq < 1 << 62:
                raise NodeError("feed item without an integer 'seq' in 1..2^62", "FEED_INVALID", 400)
        rejected: list[dict[str, Any]] = []
        with self.engine.begin() as conn:
            applied = int(conn.execute(select(state.c.value).where(state.c.key == "applied_seq")).scalar() or 0)
            start = applied
            todo = sorted((it for it in batch if it["seq"] > applied), key=lambda i: int(i["seq"]))
            view = _Batch(conn, todo)
            for it in todo:
                seq = it["seq"]
                code = ""
                try:
                    op = it.get("op")
                    if op == "share":
                        code = self._put_share(view, it, seq)
                    elif op == "status":
                        self._set_status(view, it, seq)
                    else:
                        raise Refused("FEED_INVALID", f"unknown op {str(op)[:16]!r}")
                except Refused as exc:
                    code = exc.code
                except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
                    code = "FEED_INVALID"  # malformed beyond the checks above: refused, never a failed batch
                if code:
                    self.refused(code)
                    rejected.append({"seq": seq, "id": str(it.get("id"))[:40], "code": code})
                applied = seq
            view.write(conn)
            if applied != start:
                if conn.execute(select(state.c.key).where(state.c.key == "applied_seq")).first() is None:
                    conn.execute(insert(state).values(key="applied_seq", value=applied))
                else:
                    conn.execute(update(state).where(state.c.key == "applied_seq").values(value=applied))
        return {"applied": applied, "rejected": rejected}

    # ------------------------------------------------------------------ shares
    def _bundle(self, it: dict[str, Any]) -> dict[str, Any]:
        raw = it.get("bundle")
        pinned = self.partners()
        signer = pinned.get(str(raw.get("acqp"))) if isinstance(raw, dict) else None
        try:
            bundle = verify_bundle(raw, signer)
        except InvalidInput as exc:
            raise Refused("BUNDLE_INVALID", str(exc)) from exc
        except SignatureError as exc:
            raise Refused("UNKNOWN_KEY" if exc.code == "KEY_NOT_FOUND" else "BUNDLE_SIGNATURE_INVALID", str(exc)) from exc
        if set(bundle["shares"]) != set(self.privacy.nodes):
            raise Refused("BUNDLE_INVALID", "the bundle does not name exactly this network's share holders")
        mpp = pinned.get(bundle["mpp"])
        if mpp is None or mpp.role != "mpp":
            raise Refused("UNKNOWN_KEY", "the bundle's MPP is not a partner this node pinned")
        return bundle

    def _put_share(self, view: _Batch, it: dict[str, Any], seq: int) -> str:
        """Store one signed share; returns "" or SHARE_INVALID (kept, marked)."""
        iid = _text(it, "id", 40)
        env: Any = it.get("envelope")
        bundle = self._bundle(it)
        if not is_envelope(env) or env["to"] != self.me:
            raise Refused("WRONG_NODE", "the envelope is not sealed to this node")
        if envelope_digest(env) != bundle["shares"][self.me]:
            raise Refused("ENVELOPE_MISMATCH", "the envelope is not the one the ACQP signed for this node")
        now = self.clock()
        if bundle["ts"] > now + int(self.policy.max_skew_s * 1000):
            raise Refused("TIME_OUT_OF_RANGE", "the bundle's time is ahead of this node's clock")
        acqp, kind, req, currency = bundle["acqp"], bundle["kind"], bundle["requestId"], bundle["currency"]
        old = view.by_id.get(iid)
        if old is not None:
            if (old["kind"], old["acqp_id"], old["request_id"]) == (kind, acqp, req):
                return ""  # the same signed item again (a retried feed row): nothing new
            raise Refused("ID_REUSED", "another item already has this id")
        if (acqp, kind, req) in view.by_request:
            raise Refused("REPLAYED_SHARE", "this signed request is already an item under another id")
        payment = None
        if kind == "refund":
            pay = view.by_request.get((acqp, "pay", bundle["payment"]))
            if pay is None:
                raise Refused("UNKNOWN_PAYMENT", "the refunded payment is not held here")
            if pay["currency"] != currency or pay["mpp_id"] != bundle["mpp"]:
                raise Refused("BUNDLE_INVALID", "a refund's currency and MPP are its payment's")
            payment = pay["id"]
        words, err = [0, 0], ""
        try:
            got = open_share(env, self.keys, kind, acqp, req, currency, self.privacy.words)
            words[:len(got)] = got
        except DecryptionError:
            err = "SHARE_INVALID"  # signed by the ACQP but unusable: kept, marked, left out of totals
        period = Period.of(bundle["ts"], self.policy.cycle_s)
        view.add({
            "id": iid, "kind": kind, "payment_id": payment, "acqp_id": acqp, "mpp_id": bundle["mpp"],
            "currency": currency, "request_id": req, "w0": _signed(words[0]), "w1": _signed(words[1]),
            "opened": not err, "error": err, "status": "NEW", "ts_ms": bundle["ts"], "period_ms": period.start_ms,
            "settled_ms": None, "reversed_ms": None, "seq": seq, "status_seq": seq})
        return err

    # ------------------------------------------------------------------ statuses
    def _set_status(self, view: _Batch, it: dict[str, Any], seq: int) -> None:
        iid, status = _text(it, "id", 40), _text(it, "status", 12)
        row = view.by_id.get(iid)
        if row is None:
            raise Refused("UNKNOWN_ITEM", "no item with this id")
        kind, now = row["kind"], row["status"]
        if kind == "pay":
            if status not in ("SUCCESS", "FAIL", "CANCELLED"):
                raise Refused("STATUS_INVALID", f"payment status {status!r}")
            new, allowed = status, _PAY_NEXT.get(now, set())
        else:
            if status not in _REFUND_STATUS:
                raise Refused("STATUS_INVALID", f"refund status {status!r}")
            new, allowed = _REFUND_STATUS[status], _REFUND_NEXT.get(now, set())
        if new == now:
            return  # the same status again: nothing changes
        if new not in allowed:
            code = "REFUND_NOT_CHECKED" if kind == "refund" and now == "NEW" else "FINAL_STATE"
            raise Refused(code, f"{kind} {now} cannot become {new}")
        view.set_status(iid, new, seq)
