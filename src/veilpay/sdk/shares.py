"""Hidden amounts: what a partner's SDK sends instead of a clear ``{currency, value}``
when the network runs privacy nodes.

An amount becomes::

    {"currency": "JPY",
     "sealed": {"mpp-1": <envelope>, "acqp-1": <envelope>},   # the value, for the two partners
     "shares": {"node-a": <envelope>, "node-b": <envelope>}}  # one secret share per node

The value is HPKE-sealed to the two partners of the payment (the MPP debits it, the
ACQP reads it back in answers and webhooks) and split into additive shares in
Z_2^64, each sealed to one privacy node. The gateway stores and relays all of it and
can open none of it. Every envelope's HPKE ``info`` binds the acquirer, the kind
(``pay`` or ``refund``), the request id and the currency, so the gateway cannot move
a share or a sealed value to another payment, kind or currency.

Sharing formats (``docs/nodes.md``):
- ``semi2k``: x = s0 + s1; node P0 gets [s0], node P1 gets [s1]; the dealer gets none.
- ``aby3``: x = c0 + c1 + c2; node Pi gets [c_i, c_(i+1)] (replicated sharing).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from veilpay.errors import ConfigError, DecryptionError, InvalidInput
from veilpay.sdk.envelope import SessionSealer, is_envelope, open_fields, seal_fields
from veilpay.sdk.keys import PartyKeys, PublicEntry
from veilpay.sdk.money import parse_amount

__all__ = ["KINDS", "Privacy", "amount_context", "open_amount", "open_share", "reveal_amounts", "seal_amount",
           "split_value"]

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


def seal_amount(amount: dict[str, str], kind: str, acqp: str, request_id: str, readers: list[PublicEntry],
                nodes: dict[str, PublicEntry], privacy: Privacy,
                sessions: SessionSealer | None = None) -> dict[str, Any]:
    """The hidden form of ``amount`` (checked first): sealed to ``readers``, shared to
    the privacy nodes. With ``sessions`` each envelope is sealed in the sender's session
    with its recipient (one HPKE seal per recipient per session, not per payment)."""
    currency, value = parse_amount(amount, "amount")
    ctx = amount_context(acqp, kind, request_id, currency)
    missing = [n for n in privacy.nodes if n not in nodes or nodes[n].role != "node"]
    if missing:
        raise ConfigError(f"privacy node {missing[0]!r} is not in the directory")
    seal = sessions.seal if sessions is not None else seal_fields
    return {
        "currency": currency,
        "sealed": {r.id: seal({"value": str(value)}, r, "amount", ctx) for r in readers},
        "shares": {n: seal({"s": [str(w) for w in ws]}, nodes[n], "share", ctx)
                   for n, ws in split_value(value, privacy).items()},
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
    out = []
    for w in raw:
        if not isinstance(w, str) or not w.isdigit() or len(w) > 20 or int(w) >= _MOD:
            raise DecryptionError("share: a ring element is not a decimal in [0, 2^64)")
        out.append(int(w))
    return out


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

