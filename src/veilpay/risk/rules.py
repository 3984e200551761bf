"""A rule set: the thresholds on the model's score and the rules over the score and the
velocity features that turn a payment's shares into one decision, ``approve``,
``review`` or ``decline``.

A rule set is a JSON object (signed by the MPP it serves: ``veilpay.sdk.features``)::

    {"mpp": "mpp-1", "version": 3, "mode": "live",        # or "shadow": scored, not acted on
     "model": "fraud-v1",                                   # the model version it thresholds
     "review": 0.5, "decline": 0.9,                         # on the fraud probability
     "rules": [{"name": "burst", "then": "decline",
                "if": [["count_1h", ">", 5], ["score", ">", 0.3]]}]}

The decision is ``decline`` when the score reaches ``decline`` or any decline rule
holds, else ``review`` when the score reaches ``review`` or any review rule holds,
else ``approve``. A rule holds when all its conditions do. Conditions compare one
feature with a public number:

- ``score``: the model's fraud probability, 0 < value < 1 (compared as its logit
  with the model's linear score ``z``: sigmoid is monotone, so no sigmoid in MPC);
- ``count_1h``, ``count_24h``: the payer token's payments in the window, this one
  included (the nodes know these counts: ``docs/risk.md``);
- ``sum_1h``, ``sum_24h``: the sum of their amounts in USD cents, as shares.

Only the decision leaves the MPC: which rule or threshold fired stays shared."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from veilpay.errors import InvalidInput

__all__ = ["ACTIONS", "FEATURES", "MAX_AMOUNT_CENTS", "OPS", "Condition", "Rule", "RuleSet", "parse_rules"]

ACTIONS = ("review", "decline")
OPS = (">", ">=", "<", "<=")
SECRET_FEATURES = ("score", "sum_1h", "sum_24h")
PUBLIC_FEATURES = ("count_1h", "count_24h")
FEATURES = SECRET_FEATURES + PUBLIC_FEATURES
MAX_RULES = 32
MAX_CONDITIONS = 4
MAX_SUM = 10**13          # USD cents: a bound that keeps every comparison far inside the ring
MAX_AMOUNT_CENTS = 10**13 - 1  # one payment's amount word (USD cents): the nodes check it in MPC
MAX_COUNT = 10**6
_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")
_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
RULE_FIELDS = ("mpp", "version", "mode", "model", "review", "decline", "rules")


@dataclass(frozen=True)
class Condition:
    feature: str
    op: str
    value: float

    def holds(self, x: float) -> bool:
        """The plaintext meaning (tests and the documentation's reference)."""
        return {">": x > self.value, ">=": x >= self.value, "<": x < self.value, "<=": x <= self.value}[self.op]


@dataclass(frozen=True)
class Rule:
    name: str
    action: str
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class RuleSet:
    mpp: str
    version: int
    mode: str
    model: str
    review: float
    decline: float
    rules: tuple[Rule, ...]

    def to_json(self) -> dict[str, Any]:
        return {"mpp": self.mpp, "version": self.version, "mode": self.mode, "model": self.model,
                "review": self.review, "decline": self.decline,
                "rules": [{"name": r.name, "then": r.action, "if": [[c.feature, c.op, c.value] for c in r.conditions]}
                          for r in self.rules]}

    def decide(self, score: float, counts: tuple[int, int], sums: tuple[int, int]) -> str:
        """The decision in plaintext, from a probability: the reference the MPC program
        is tested against."""
        feats = {"score": score, "count_1h": counts[0], "count_24h": counts[1], "sum_1h": sums[0], "sum_24h": sums[1]}
        fired = {a: any(r.action == a and all(c.holds(feats[c.feature]) for c in r.conditions) for r in self.rules)
                 for a in ACTIONS}
        if score >= self.decline or fired["decline"]:
            return "decline"
        if score >= self.review or fired["review"]:
            return "review"
        return "approve"


def _prob(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 < float(v) < 1.0 or not math.isfinite(v):
        raise InvalidInput(f"rule set: {what} is a probability strictly between 0 and 1")
    return float(v)


def _condition(c: Any, where: str) -> Condition:
    if not isinstance(c, list) or len(c) != 3:
        raise InvalidInput(f"rule set: {where}: a condition is [feature, op, value]")
    feature, op, value = c
    if feature not in FEATURES:
        raise InvalidInput(f"rule set: {where}: feature must be one of {', '.join(FEATURES)}")
    if op not in OPS:
        raise InvalidInput(f"rule set: {where}: op must be one of {', '.join(OPS)}")
    if feature == "score":
        return Condition(feature, op, _prob(value, f"{where}: a score threshold"))
    bound = MAX_COUNT if feature in PUBLIC_FEATURES else MAX_SUM
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= bound:
        raise InvalidInput(f"rule set: {where}: {feature} is compared with an integer in 0..{bound}")
    return Condition(feature, op, value)


def parse_rules(obj: Any) -> RuleSet:
    """A RuleSet from its JSON form; InvalidInput naming what is wrong."""
    if not isinstance(obj, dict) or set(obj) != set(RULE_FIELDS):
        raise InvalidInput("rule set: expected the fields " + ", ".join(RULE_FIELDS))
    mpp, version, mode, model = obj["mpp"], obj["version"], obj["mode"], obj["model"]
    if not isinstance(mpp, str) or not _ID.match(mpp) or not isinstance(model, str) or not _ID.match(model):
        raise InvalidInput("rule set: 'mpp' and 'model' are ids")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 1 << 31:
        raise InvalidInput("rule set: 'version' is a positive integer")
    if mode not in ("live", "shadow"):
        raise InvalidInput("rule set: 'mode' is live or shadow")
    review, decline = _prob(obj["review"], "'review'"), _prob(obj["decline"], "'decline'")
    if review > decline:
        raise InvalidInput("rule set: 'review' is at most 'decline'")
    raw = obj["rules"]
    if not isinstance(raw, list) or len(raw) > MAX_RULES:
        raise InvalidInput(f"rule set: 'rules' is a list of at most {MAX_RULES}")
    rules: list[Rule] = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict) or set(r) != {"name", "then", "if"}:
            raise InvalidInput(f"rule set: rule {i} is {{name, then, if}}")
        if not isinstance(r["name"], str) or not _NAME.match(r["name"]) or r["then"] not in ACTIONS:
            raise InvalidInput(f"rule set: rule {i}: a name and 'then' in {ACTIONS}")
        conds = r["if"]
        if not isinstance(conds, list) or not 1 <= len(conds) <= MAX_CONDITIONS:
            raise InvalidInput(f"rule set: rule {r['name']!r}: 1 to {MAX_CONDITIONS} conditions")
        rules.append(Rule(r["name"], r["then"], tuple(_condition(c, f"rule {r['name']!r}") for c in conds)))
    if len({r.name for r in rules}) != len(rules):
        raise InvalidInput("rule set: rule names are unique")
    return RuleSet(mpp, version, mode, model, review, decline, tuple(rules))
