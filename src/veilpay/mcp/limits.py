"""The caps a call must pass before it moves money, decided from the config, this
server's own records and the gateway's view of the payment.

Every cap is checked before a person is asked to confirm, so nobody is asked about a
call that a cap would refuse anyway. A decision is a reason to refuse (a sentence
the assistant can show) or, for money sent back, a ``Plan``. The parts that other
calls can change meanwhile (the day's totals, a payment's running total) are checked
again, atomically, when the call's hold is opened (``GuardState.open``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from veilpay.mcp.answers import PaymentFacts
from veilpay.mcp.config import McpConfig
from veilpay.mcp.guard import GuardState
from veilpay.sdk.money import MINOR_UNITS

__all__ = ["Limits", "Plan"]

BackKind = Literal["refund", "cancel"]


@dataclass(frozen=True)
class Plan:
    """A refund or cancel that passed every cap. ``total``: the money this server will
    have sent back from the payment with this call; ``threshold``: the confirmation
    threshold for its currency (None: none set); ``confirm_above``: the threshold when
    ``total`` passes it, so a person must confirm. ``repeat``: the call repeats one
    opened before under the same idempotency key; it was checked (and confirmed) then."""

    kind: BackKind
    payment_id: str = ""
    currency: str = ""
    value: int = 0
    total: int = 0
    threshold: int | None = None
    confirm_above: int | None = None
    repeat: bool = False


class Limits:
    def __init__(self, cfg: McpConfig, state: GuardState) -> None:
        self.cfg = cfg
        self.state = state

    def per_call(self, currency: str, value: int) -> str | None:
        if currency not in MINOR_UNITS:
            return f"{currency} is not a supported currency"
        cap = self.cfg.per_call.get(currency)
        if cap is None:
            return f"no limit is configured for {currency}, so this server moves no {currency}"
        if value > cap:
            return f"{currency} {value} is over the per-call limit of {cap} (minor units)"
        return None

    def day_cap(self, kind: Literal["pay", "refund", "cancel"], currency: str) -> int:
        """Today's cap for payments (``pay``) or for money sent back; 0 when none is set."""
        caps = self.cfg.per_day if kind == "pay" else self.cfg.refund_per_day
        return caps.get(currency, 0)

    def over_day(self, kind: Literal["pay", "refund", "cancel"], currency: str, value: int) -> str:
        """Why ``value`` does not fit under today's cap."""
        if kind == "pay":
            cap = self.cfg.per_day.get(currency, 0)
            return f"{currency} {value} would pass today's limit of {cap} (spent {self.state.spent(currency)})"
        cap = self.cfg.refund_per_day.get(currency, 0)
        if currency not in self.cfg.refund_per_day:
            return (f"no daily refund limit is configured for {currency} ([mcp.refund_per_day]), so this server sends "
                    f"no {currency} back")
        return (f"{currency} {value} would pass today's refund limit of {cap} "
                f"(sent back {self.state.sent_back(currency)})")

    def threshold(self, kind: BackKind, currency: str) -> int | None:
        if kind == "cancel" and currency in self.cfg.confirm_cancel_above:
            return self.cfg.confirm_cancel_above[currency]
        return self.cfg.confirm_refund_above.get(currency)

    def money_back(self, kind: BackKind, pay: PaymentFacts, currency: str, value: int) -> Plan | str:
        """Whether this server may send ``value`` back from ``pay`` by a refund or a
        cancel (a cancel sends back the whole payment while it is not yet cancelled)."""
        if self.cfg.touch == "mcp" and not self.state.made_here(pay.request_id):
            return ('this payment was not made through this MCP server, and it touches only its own ([mcp] touch = '
                    '"mcp")')
        if currency != pay.currency:
            return f"refund in {pay.currency}, the payment's currency"
        if kind == "cancel":
            if pay.refunded:
                return "the payment has refunds; refund the rest instead"
            value = pay.amount if pay.status in ("SUCCESS", "PROCESSING") else 0  # else there is nothing to send back
        elif pay.status != "SUCCESS":
            return f"the payment is {pay.status or 'in an unknown state'}; only a successful payment can be refunded"
        reason = self.per_call(currency, value)
        if reason:
            return reason
        if kind == "refund":
            limit = int(pay.amount * self.cfg.refund_share)
            if pay.refunded + value > limit:
                return (f"refunds would total {pay.refunded + value} of {pay.amount}, over the allowed "
                        f"{self.cfg.refund_share:.0%} ({limit})")
        if currency not in self.cfg.refund_per_day or self.state.sent_back(currency) + value > self.day_cap(kind,
                                                                                                        currency):
            return self.over_day(kind, currency, value)
        total = self.state.back_total(pay.payment_id) + value
        threshold = self.threshold(kind, currency)
        ask = threshold is not None and value > 0 and total > threshold
        return Plan(kind, pay.payment_id, currency, value, total, threshold, threshold if ask else None)
