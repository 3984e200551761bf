"""What the gateway checks before a request may change anything: who sent it (the
acquirer's signature, its time window, and a replay guard on its signed nonce), that
its body fits the operation's model, its amount (clear, or sealed to both partners and
secret-shared to the privacy nodes with a bundle the acquirer signed), its sealed
field groups, and its idempotency fingerprint.

Every refusal is an ``ApiFailure`` with the result code the API documents; nothing
here writes but the replay guard's row."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import IntegrityError

from veilpay.crypto.digest import sha256
from veilpay.errors import MalformedBody, SignatureError
from veilpay.gateway.codes import CODES, ApiFailure
from veilpay.gateway.config import GatewayConfig
from veilpay.gateway.ledger import Ledger
from veilpay.sdk import wirejson
from veilpay.sdk.directory import Directory
from veilpay.sdk.envelope import is_envelope, is_linked, one_session
from veilpay.sdk.keys import PublicEntry
from veilpay.sdk.money import MINOR_UNITS, InvalidAmount, UnsupportedCurrency, parse_amount
from veilpay.sdk.shares import BUNDLE_FIELDS, Privacy, envelope_digest
from veilpay.sdk.signing import SignedHeaders, verify_json

__all__ = ["Amount", "Intake", "canonical_hash", "check_amount", "validate"]

M = TypeVar("M", bound=BaseModel)
# (currency, clear value or None, sealed-values JSON or None, one node feed item per node)
Amount = tuple[str, int | None, str | None, dict[str, Any]]
_RANDOMISED = frozenset({"ct", "head", "sid"})  # what sealing anew changes in an envelope


def _now_ms() -> int:
    return int(time.time() * 1000)


def _strip_ciphertext(obj: Any) -> Any:
    if is_envelope(obj):
        return {k: v for k, v in obj.items() if k not in _RANDOMISED}
    if isinstance(obj, dict):
        return {k: _strip_ciphertext(v) for k, v in obj.items()}
    return obj


def canonical_hash(obj: Any) -> str:
    """The idempotency fingerprint of a request: every field the gateway can read, and
    for sealed groups their recipient and key version but not the ciphertext or the
    session (sealing is randomised, and an application that re-sends the same payment
    seals it anew, perhaps in a new session)."""
    return sha256(wirejson.dumps_sorted(_strip_ciphertext(obj))).hex()


def validate(model: type[M], obj: Any) -> M:
    """``obj`` as ``model``; PARAM_ILLEGAL naming the first field that does not fit."""
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise ApiFailure("PARAM_ILLEGAL", f"{where}: {first.get('msg', 'invalid')}") from exc


def check_amount(obj: Any, what: str) -> tuple[str, int]:
    """(currency, minor units) of a clear amount."""
    try:
        return parse_amount(obj, what)
    except UnsupportedCurrency as exc:
        raise ApiFailure("CURRENCY_NOT_SUPPORT", str(exc)) from exc
    except InvalidAmount as exc:
        raise ApiFailure("INVALID_AMOUNT", str(exc)) from exc
    except ValueError as exc:
        raise ApiFailure("PARAM_ILLEGAL", str(exc)) from exc


class Intake:
    """The checks of one gateway: its config (window, PETs), the partner directory, the
    privacy nodes' set (None: clear amounts) and the ledger that holds the replay guard."""

    def __init__(self, cfg: GatewayConfig, directory: Callable[[], Directory], ledger: Ledger,
                 privacy: Privacy | None) -> None:
        self.cfg, self._directory, self.ledger, self.privacy = cfg, directory, ledger, privacy

    # ------------------------------------------------------------------ auth
    async def authenticate(self, method: str, path: str, headers: dict[str, str], body: bytes
                           ) -> tuple[PublicEntry, SignedHeaders, dict[str, Any] | ApiFailure]:
        """The ACQP that signed this request, the request's signed headers (its answer
        names their digest) and its body as a JSON object, or the MALFORMED_REQUEST
        failure to answer with, bound to the request, when the body is not one;
        ApiFailure for an unknown client, a bad or stale signature, or a replay of a
        request already seen (by its signed nonce: two genuine requests, identical to
        the byte and sent in the same millisecond, have two nonces)."""
        client = headers.get("client-id", "")
        entry = self._directory().get(client)
        if entry is None or entry.role != "acqp":
            raise ApiFailure("INVALID_CLIENT", "Client-Id is not an acquirer in the directory")
        obj: dict[str, Any] | ApiFailure
        try:
            signed, obj = verify_json(headers, method, path, body, entry.verify_key, time.time(),
                                      self.cfg.request_window_s)
        except SignatureError as exc:
            raise ApiFailure(exc.code if exc.code in CODES else "INVALID_SIGNATURE", str(exc)) from exc
        except MalformedBody as exc:  # still a genuine request: its nonce is spent, its answer signed
            signed = cast(SignedHeaders, exc.signed)
            obj = ApiFailure("MALFORMED_REQUEST", "the body is not valid JSON" if isinstance(
                exc.__cause__, ValueError) else None)
        try:
            await self.guard_replay(entry.id, signed, limit=self.cfg.rate_limit_per_s)
        except ApiFailure as exc:
            if exc.result["resultCode"] != "REQUEST_TRAFFIC_EXCEED_LIMIT":
                raise
            return entry, signed, exc  # a genuine request, not run: its answer signed, so the SDK retries it
        return entry, signed, obj

    async def guard_replay(self, client: str, signed: SignedHeaders, limit: int = 0) -> None:
        """REPLAYED_REQUEST for a request whose nonce this client used before (in the
        window); with ``limit``, REQUEST_TRAFFIC_EXCEED_LIMIT for the requests of a
        second past the first ``limit`` of this client, counted across every replica
        (a refused request counts: a client that keeps sending stays refused)."""
        now = _now_ms()
        # A request is accepted from window before its time to window after it: its nonce
        # must outlive that by the replicas' clock skew (up to a window more), or a replica
        # whose clock runs ahead purges it while one that runs behind still takes it.
        try:
            count = await self.ledger.record_seen(client, sha256(signed.nonce.encode()).hex(),
                                                  now + int(3 * self.cfg.request_window_s * 1000),
                                                  now // 1000 if limit else None)
        except IntegrityError as exc:
            raise ApiFailure("REPLAYED_REQUEST") from exc
        if limit and count > limit:
            raise ApiFailure("REQUEST_TRAFFIC_EXCEED_LIMIT", f"over {limit} requests a second from {client[:64]}; "
                             "retry after a second")

    # ------------------------------------------------------------------ amounts
    def amount_in(self, obj: Any, what: str, acqp: str, mpp: str, kind: str, request_id: str,
                  payment: str = "") -> Amount:
        """(currency, clear value or None, sealed-values JSON or None, node feed items) of
        a request's amount, as this gateway takes it."""
        if self.privacy is not None:
            currency, sealed, shares = self._hidden_amount(self.privacy, obj, what, acqp, mpp, kind, request_id,
                                                           payment)
            return currency, None, sealed, shares
        currency, value = check_amount(obj, what)
        return currency, value, None, {}

    @staticmethod
    def _hidden_amount(privacy: Privacy, obj: Any, what: str, acqp: str, mpp: str, kind: str, request_id: str,
                       payment: str) -> tuple[str, str, dict[str, Any]]:
        """(currency, sealed-values JSON, one feed item per node) of a hidden amount. The
        gateway checks the shape, the recipients and that the ACQP's signed bundle
        describes this very request and these envelopes; it cannot check the value,
        and the nodes check the bundle's signature against keys they pinned."""
        if isinstance(obj, dict) and "value" in obj:
            raise ApiFailure("AMOUNT_NOT_HIDDEN", f"{what}: send the amount sealed and shared, not in the clear")
        if not isinstance(obj, dict) or set(obj) != {"currency", "sealed", "shares", "bundle"}:
            raise ApiFailure("PARAM_ILLEGAL", f"{what}: expected currency, sealed, shares and bundle")
        currency = obj["currency"]
        if not isinstance(currency, str) or currency not in MINOR_UNITS:
            raise ApiFailure("CURRENCY_NOT_SUPPORT", f"{what}: currency {str(currency)[:8]!r}")
        sealed, shares, bundle = obj["sealed"], obj["shares"], obj["bundle"]
        want_sealed, want_shares = {acqp, mpp}, set(privacy.nodes)
        if not isinstance(sealed, dict) or set(sealed) != want_sealed or not all(
                is_envelope(e) and e["to"] == k for k, e in sealed.items()):
            raise ApiFailure("SEALED_FIELD_INVALID", f"{what}: sealed values for exactly {sorted(want_sealed)}")
        if not isinstance(shares, dict) or set(shares) != want_shares or not all(
                is_envelope(e) and e["to"] == k for k, e in shares.items()):
            raise ApiFailure("SEALED_FIELD_INVALID", f"{what}: one share for each node of {sorted(want_shares)}")
        expect = {"acqp": acqp, "mpp": mpp, "kind": kind, "requestId": request_id, "currency": currency,
                  "payment": payment}
        if not isinstance(bundle, dict) or set(bundle) != set(BUNDLE_FIELDS) or any(
                bundle[k] != v for k, v in expect.items()) or not isinstance(bundle["shares"], dict) or bundle[
                "shares"] != {n: envelope_digest(e) for n, e in shares.items()}:
            raise ApiFailure("SEALED_FIELD_INVALID", f"{what}: the share bundle must describe this request "
                             "(acquirer, MPP, kind, request id, currency, refunded payment) and these shares")
        return currency, wirejson.dumps_text(sealed), {
            n: {"op": "share", "bundle": bundle, "envelope": env} for n, env in shares.items()}

    # ------------------------------------------------------------------ sealed fields
    def check_sealed(self, groups: dict[str, Any], recipient: str) -> None:
        """Each field group an envelope for ``recipient`` (with PETs); linked groups only
        beside the group's first, which must be the first field named here; groups in a
        session only all together, in one session."""
        present = {name: g for name, g in groups.items() if g is not None}
        for name, g in present.items():
            if self.cfg.pets:
                if not is_envelope(g) or g["to"] != recipient:
                    raise ApiFailure("SEALED_FIELD_INVALID", f"{name} must be an envelope sealed to {recipient}")
            elif is_envelope(g):
                raise ApiFailure("SEALED_FIELD_INVALID", f"{name}: this gateway runs without PETs")
        if not self.cfg.pets or not present or all(g["v"] == 1 for g in present.values()):
            return
        if next(iter(present.values()))["v"] == 3:  # the MPP opens a message's session groups only together
            if not one_session(list(present.values())):
                raise ApiFailure("SEALED_FIELD_INVALID", "the field groups in a session must all be of one session")
            return
        # A group: its first is the first field named, and every other field is linked
        # to it under the same key version (the MPP opens nothing else beside a group).
        head_name, head = next(iter(present.items()))
        if is_linked(head) or head["v"] != 2 or not all(
                is_linked(g) and g["kv"] == head["kv"] for n, g in present.items() if n != head_name):
            raise ApiFailure("SEALED_FIELD_INVALID", f"the other field groups must all be linked to {head_name}")
