"""Hidden amounts: what a partner's SDK sends instead of a clear ``{currency, value}``
when the network runs privacy nodes.

An amount becomes::

    {"currency": "JPY",
     "sealed": {"mpp-1": <envelope>, "acqp-1": <envelope>},   # the value, for the two partners
     "shares": {"node-a": <envelope>, "node-b": <envelope>},  # one secret share per node
     "bundle": {...}}                                         # the shares' metadata, signed by the ACQP

The value is HPKE-sealed to the two partners of the payment (the MPP debits it, the
ACQP reads it back in answers and webhooks) and split into additive shares in
Z_2^64, each sealed to one privacy node. The gateway stores and relays all of it and
can open none of it. Every envelope's HPKE ``info`` binds the acquirer, the kind
(``pay`` or ``refund``), the request id and the currency, so the gateway cannot move
a share or a sealed value to another payment, kind or currency.

HPKE base mode does not say who sealed, so anyone holding the nodes' public keys
could make shares the nodes would open. The ACQP therefore signs a **share bundle**
(Ed25519, its own signing key): the acquirer, the MPP, the kind, the request id,
the currency, for a refund the ``paymentRequestId`` it refunds, the ACQP's own time,
and the SHA-256 of each node's share envelope. A node takes a share only with a
bundle that verifies against the ACQP key the node pinned itself and that names
this very envelope; it derives the amount's settlement period from the signed time
(``docs/nodes.md``).

Sharing formats (``docs/nodes.md``):
- ``semi2k``: x = s0 + s1; node P0 gets [s0], node P1 gets [s1]; the dealer gets none.
- ``aby3``: x = c0 + c1 + c2; node Pi gets [c_i, c_(i+1)] (replicated sharing).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from veilpay.crypto.digest import sha256
from veilpay.crypto.signing import b64d, b64e
from veilpay.errors import ConfigError, DecryptionError, InvalidInput, SignatureError
from veilpay.sdk import wirejson
from veilpay.sdk.envelope import SessionSealer, is_envelope, open_fields, seal_fields
from veilpay.sdk.keys import PartyKeys, PublicEntry
from veilpay.sdk.money import MINOR_UNITS, parse_amount

__all__ = ["BUNDLE_FIELDS", "KINDS", "Privacy", "amount_context", "envelope_digest", "open_amount", "open_share",
           "reveal_amounts", "seal_amount", "sign_bundle", "split_value", "verify_bundle"]

KINDS = ("pay", "refund")
_MOD = 1 << 64
_MASK = _MOD - 1


@dataclass(frozen=True)
class Privacy:
    """The privacy network as the directory announces it."""

    protocol: str
    nodes: tuple[str, ...]      # the share holders, in protocol order
    dealer: str = ""            # semi2k's third party; holds no shares

    def __post_init__(self) -> None:
        if self.protocol == "semi2k":
            if len(self.nodes) != 2 or not self.dealer or self.dealer in self.nodes:
                raise ConfigError("semi2k needs two share-holding nodes and a separate dealer")
        elif self.protocol == "aby3":
            if len(self.nodes) != 3 or self.dealer:
                raise ConfigError("aby3 needs three share-holding nodes and no dealer")
        else:
            raise ConfigError(f"privacy protocol must be semi2k or aby3, not {self.protocol!r}")
        if len(set(self.nodes)) != len(self.nodes):
            raise ConfigError("a privacy node is listed twice")

    @property
    def parties(self) -> tuple[str, ...]:
        """Every node of the MPC network, in the order of its roles."""
        return (*self.nodes, self.dealer) if self.dealer else self.nodes

    @property
    def words(self) -> int:
        """Ring elements each share-holding node receives per value."""
        return 1 if self.protocol == "semi2k" else 2

    def to_json(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "nodes": list(self.nodes), "dealer": self.dealer}

    @classmethod
    def from_json(cls, obj: Any) -> Privacy:
        try:
            return cls(str(obj["protocol"]), tuple(str(n) for n in obj["nodes"]), str(obj.get("dealer") or ""))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"malformed privacy section: {exc}") from exc


def split_value(value: int, privacy: Privacy) -> dict[str, list[int]]:
    """Fresh additive shares of ``value`` mod 2^64 for each share-holding node."""
    if privacy.protocol == "semi2k":
        r = secrets.randbits(64)
        return {privacy.nodes[0]: [r], privacy.nodes[1]: [(value - r) & _MASK]}
    c0, c1 = secrets.randbits(64), secrets.randbits(64)
    c = [c0, c1, (value - c0 - c1) & _MASK]
    return {n: [c[i], c[(i + 1) % 3]] for i, n in enumerate(privacy.nodes)}


def amount_context(acqp: str, kind: str, request_id: str, currency: str) -> str:
    if kind not in KINDS:
        raise InvalidInput(f"amount kind must be one of {KINDS}")
    return f"{acqp}/{kind}/{request_id}/{currency}"


# ------------------------------------------------------------------ share bundles
BUNDLE_FIELDS = ("v", "acqp", "mpp", "kind", "requestId", "currency", "payment", "ts", "shares", "kv", "sig")
_BUNDLE_LABEL = b"veilpay/share-bundle/v1\n"
_TEXT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
RING_WORD = re.compile(r"^[0-9]{1,20}$", re.ASCII)  # a ring element in decimal (str.isdigit takes "²")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def envelope_digest(envelope: Any) -> str:
    """SHA-256 (hex) of an envelope's canonical JSON (keys sorted, compact)."""
    return sha256(wirejson.dumps_sorted(envelope)).hex()


def _bundle_message(bundle: dict[str, Any]) -> bytes:
    return _BUNDLE_LABEL + wirejson.dumps_sorted({k: bundle[k] for k in BUNDLE_FIELDS if k not in ("kv", "sig")})


def sign_bundle(me: PartyKeys, mpp: str, kind: str, request_id: str, currency: str, shares: dict[str, Any],
                payment: str = "", ts_ms: int | None = None) -> dict[str, Any]:
    """The signed bundle of one amount's share envelopes (``shares``: node -> envelope),
    made by the ACQP ``me``; ``payment`` is the paymentRequestId a refund refunds."""
    if kind not in KINDS or (kind == "refund") != bool(payment):
        raise InvalidInput("a share bundle names its kind, and a refund the payment it refunds")
    version, key = me.signer()
    bundle: dict[str, Any] = {
        "v": 1, "acqp": me.id, "mpp": mpp, "kind": kind, "requestId": request_id, "currency": currency,
        "payment": payment, "ts": int(time.time() * 1000) if ts_ms is None else int(ts_ms),
        "shares": {n: envelope_digest(e) for n, e in sorted(shares.items())}, "kv": version}
    bundle["sig"] = b64e(key.sign(_bundle_message(bundle)))
    return bundle


def verify_bundle(bundle: Any, signer: PublicEntry | None) -> dict[str, Any]:
    """``bundle`` when it is well formed and its signature verifies under the signing
    key of ``signer`` (the ACQP it names, as the verifier pinned it); InvalidInput for a
    malformed bundle, SignatureError for an unknown signer or key or a bad signature."""
    if not isinstance(bundle, dict) or set(bundle) != set(BUNDLE_FIELDS) or bundle["v"] != 1:
        raise InvalidInput("share bundle: expected the fields " + ", ".join(BUNDLE_FIELDS))
    for k in ("acqp", "mpp", "requestId"):
        if not isinstance(bundle[k], str) or not _TEXT.match(bundle[k]):
            raise InvalidInput(f"share bundle: {k!r} is not an id")
    if bundle["kind"] not in KINDS or not isinstance(bundle["currency"], str) or bundle["currency"] not in MINOR_UNITS:
        raise InvalidInput("share bundle: unknown kind or currency")
    pay = bundle["payment"]
    if not isinstance(pay, str) or (bundle["kind"] == "refund") != bool(pay) or (pay and not _TEXT.match(pay)):
        raise InvalidInput("share bundle: a refund names the paymentRequestId it refunds, a payment none")
    ts, kv, shares = bundle["ts"], bundle["kv"], bundle["shares"]
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 < ts < 1 << 53 or isinstance(kv, bool) \
            or not isinstance(kv, int):
        raise InvalidInput("share bundle: 'ts' (ms) and 'kv' are integers")
    if not isinstance(shares, dict) or not 1 <= len(shares) <= 3 or not all(
            isinstance(n, str) and isinstance(d, str) and _DIGEST.match(d) for n, d in shares.items()):
        raise InvalidInput("share bundle: 'shares' maps each node to its envelope's SHA-256")
    if not isinstance(bundle["sig"], str):
        raise InvalidInput("share bundle: 'sig' is base64url text")
    if signer is None or signer.id != bundle["acqp"] or signer.role != "acqp":
        raise SignatureError(f"share bundle: {str(bundle['acqp'])[:64]!r} is not an acquirer this party pinned",
                             "KEY_NOT_FOUND")
    key = signer.verify_key(kv)
    if key is None:
        raise SignatureError(f"share bundle: key version {kv} is unknown or retired", "KEY_NOT_FOUND")
    try:
        sig = b64d(bundle["sig"])
    except ValueError as exc:
        raise SignatureError("share bundle: the signature is not base64url") from exc
    if not key.verify(sig, _bundle_message(bundle)):
        raise SignatureError("share bundle: the signature does not verify")
    return bundle


def _padded(value: int) -> dict[str, str]:
    """A value's sealed fields, padded so that every amount's plaintext has the same
    length: a ciphertext's length must not tell the relay how many digits it holds."""
    v = str(value)
    return {"value": v, "pad": "0" * (16 - len(v))}


def seal_amount(amount: dict[str, str], kind: str, me: PartyKeys, request_id: str, mpp: PublicEntry,
                nodes: dict[str, PublicEntry], privacy: Privacy, sessions: SessionSealer | None = None,
                payment: str = "") -> dict[str, Any]:
    """The hidden form of ``amount`` (checked first), made by the ACQP ``me``: sealed to
    the MPP and to ``me``, shared to the privacy nodes, and the shares' bundle signed.
    ``payment`` is, for a refund, the paymentRequestId it refunds. With ``sessions`` each
    envelope is sealed in the sender's session with its recipient (one HPKE seal per
    recipient per session, not per payment)."""
    currency, value = parse_amount(amount, "amount")
    ctx = amount_context(me.id, kind, request_id, currency)
    missing = [n for n in privacy.nodes if n not in nodes or nodes[n].role != "node"]
    if missing:
        raise ConfigError(f"privacy node {missing[0]!r} is not in the directory")
    seal = sessions.seal if sessions is not None else seal_fields
    shares = {n: seal({"s": [str(w) for w in ws]}, nodes[n], "share", ctx) for n, ws in split_value(value, privacy).items()}
    return {
        "currency": currency,
        "sealed": {r.id: seal(_padded(value), r, "amount", ctx) for r in (mpp, me.public)},
        "shares": shares,
        "bundle": sign_bundle(me, mpp.id, kind, request_id, currency, shares, payment),
    }


def open_amount(obj: Any, me: PartyKeys, kind: str, acqp: str, request_id: str) -> tuple[str, int]:
    """(currency, value) from a hidden amount sealed to ``me``; DecryptionError otherwise."""
    if not isinstance(obj, dict) or not isinstance(obj.get("sealed"), dict):
        raise DecryptionError("amount: not a hidden amount")
    currency = str(obj.get("currency", ""))
    env = obj["sealed"].get(me.id)
    if env is None:
        raise DecryptionError(f"amount: not sealed to {me.id!r}")
    fields = open_fields(env, me, "amount", amount_context(acqp, kind, request_id, currency))
    try:
        return parse_amount({"currency": currency, "value": fields.get("value")}, "amount")
    except ValueError as exc:
        raise DecryptionError(f"amount: opened, but {exc}") from exc


def open_share(env: Any, me: PartyKeys, kind: str, acqp: str, request_id: str, currency: str,
               words: int) -> list[int]:
    """A privacy node's share words; DecryptionError when it is not this node's, does not
    open under this payment's context, or is not ``words`` integers in [0, 2^64)."""
    if not is_envelope(env):
        raise DecryptionError("share: not a sealed envelope")
    fields = open_fields(env, me, "share", amount_context(acqp, kind, request_id, currency))
    raw = fields.get("s")
    if not isinstance(raw, list) or len(raw) != words:
        raise DecryptionError(f"share: expected {words} ring elements")
    if not all(isinstance(w, str) and RING_WORD.match(w) and int(w) < _MOD for w in raw):
        raise DecryptionError("share: a ring element is not a decimal in [0, 2^64)")
    return [int(w) for w in raw]


_AMOUNT_FIELDS = {"paymentAmount": ("pay", "paymentRequestId"), "refundAmount": ("refund", "refundRequestId")}


def reveal_amounts(body: Any, me: PartyKeys, acqp: str | None = None) -> Any:
    """``body`` with every hidden amount sealed to ``me`` replaced by its clear
    ``{currency, value}`` (answers, webhooks and list entries); other values unchanged.
    An amount that does not open raises DecryptionError."""
    if isinstance(body, list):
        return [reveal_amounts(b, me, acqp) for b in body]
    if not isinstance(body, dict):
        return body
    owner = str(body.get("acquirerId") or acqp or me.id)
    out: dict[str, Any] = {}
    for k, v in body.items():
        if k in _AMOUNT_FIELDS and isinstance(v, dict) and "sealed" in v:
            kind, id_field = _AMOUNT_FIELDS[k]
            cur, value = open_amount(v, me, kind, owner, str(body.get(id_field, "")))
            out[k] = {"currency": cur, "value": str(value)}
        else:
            out[k] = reveal_amounts(v, me, owner) if isinstance(v, dict | list) else v
    return out

