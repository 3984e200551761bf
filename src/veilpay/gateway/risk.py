"""Risk decisions at the gateway: the acquirer's risk features relayed to the MPP, and
the MPP's decision recorded and returned.

With a pay request the ACQP may send ``riskFeatures`` = ``{"bundle", "shares"}``: its
features of the payment split into secret shares, each sealed to one privacy node,
and a bundle it signed over their digests (``veilpay.sdk.features``). The gateway
opens none of it. It checks that the bundle names this payment, this acquirer (in
the ACQP's role) and the routed MPP, that each share is an envelope to the node it
is keyed by and the envelope the bundle names, and the size; then it relays the
object unchanged to the MPP, whose nodes score the payment in MPC. What the gateway
learns is the MPP's ``riskResult``: a decision (approve, review, decline), a reason
code and the model and rule-set versions; never a score."""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from typing import Any

from veilpay.gateway.codes import ApiFailure
from veilpay.sdk import wirejson
from veilpay.sdk.envelope import is_envelope
from veilpay.sdk.shares import envelope_digest

__all__ = ["DECISIONS", "MAX_RISK_FEATURES_BYTES", "RISK_RESULT_SCHEMA", "check_risk_features", "risk_result_of"]

log = logging.getLogger("veilpay.gateway")

MAX_RISK_FEATURES_BYTES = 16 * 1024  # a bundle and one share per node are about 2 KiB; the rest is headroom
DECISIONS = ("approve", "review", "decline")
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_REASON = re.compile(r"^[A-Z][A-Z0-9_]{0,47}$")
_VERSION = re.compile(r"^[A-Za-z0-9_.:-]{0,64}$")
_MAX_RULES_VERSION = 2**31 - 1

RISK_RESULT_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["decision", "reason", "modelVersion", "rulesVersion"],
    "description": "The MPP's risk decision on the payment (scored by the privacy nodes in MPC); no score",
    "properties": {
        "decision": {"type": "string", "enum": list(DECISIONS)},
        "reason": {"type": "string", "pattern": _REASON.pattern,
                   "description": "what decided: MODEL, RULE, RISK_TIMEOUT, RISK_UNAVAILABLE, ..."},
        "modelVersion": {"type": "string", "pattern": _VERSION.pattern},
        "rulesVersion": {"type": "integer", "minimum": 0, "maximum": _MAX_RULES_VERSION}}}


def _refuse(message: str) -> ApiFailure:
    return ApiFailure("PARAM_ILLEGAL", f"riskFeatures: {message}")


def check_risk_features(obj: Any, *, acqp: str, mpp: str, request_id: str,
                        nodes: Collection[str] | None = None) -> dict[str, Any]:
    """``obj`` if it is risk features this acquirer may send with this payment, routed to
    ``mpp`` (``nodes``: the privacy nodes' set, when this gateway knows it); ApiFailure
    PARAM_ILLEGAL naming what is wrong otherwise. The values are not opened, only their
    shape, the ids they name and their size are checked."""
    if not isinstance(obj, dict) or set(obj) != {"bundle", "shares"}:
        raise _refuse("expected an object with exactly 'bundle' and 'shares'")
    try:
        size = len(wirejson.dumps(obj))
    except TypeError as exc:
        raise _refuse("not JSON the gateway can relay") from exc
    if size > MAX_RISK_FEATURES_BYTES:
        raise _refuse(f"{size} bytes, over {MAX_RISK_FEATURES_BYTES}")
    bundle, shares = obj["bundle"], obj["shares"]
    if not isinstance(bundle, dict):
        raise _refuse("'bundle' must be an object")
    for key, want in (("requestId", request_id), ("acqp", acqp), ("role", "acqp"), ("mpp", mpp)):
        if bundle.get(key) != want:
            raise _refuse(f"the bundle's {key!r} must be {want!r}, this payment's")
    if not isinstance(shares, dict) or not shares or not all(
            isinstance(n, str) and _NODE.fullmatch(n) and is_envelope(e) and e["to"] == n for n, e in shares.items()):
        raise _refuse("'shares' must map each node id to an envelope sealed to that node")
    if nodes is not None and set(shares) != set(nodes):
        raise _refuse(f"one share for each privacy node of {sorted(nodes)}")
    if bundle.get("shares") != {n: envelope_digest(e) for n, e in shares.items()}:
        raise _refuse("the bundle must name these shares (their digests)")
    return obj


def risk_result_of(obj: Any, payment_id: str) -> dict[str, Any] | None:
    """The MPP's ``riskResult`` in its documented shape, or None: when absent, or when
    malformed (an unknown decision, a field of the wrong shape, or one more field, a
    score say), which is logged without its content and otherwise ignored: the
    payment's outcome is the MPP's result, not this."""
    if obj is None:
        return None
    if (isinstance(obj, dict) and set(obj) == {"decision", "reason", "modelVersion", "rulesVersion"}
            and obj["decision"] in DECISIONS
            and isinstance(obj["reason"], str) and _REASON.fullmatch(obj["reason"])
            and isinstance(obj["modelVersion"], str) and _VERSION.fullmatch(obj["modelVersion"])
            and isinstance(obj["rulesVersion"], int) and not isinstance(obj["rulesVersion"], bool)
            and 0 <= obj["rulesVersion"] <= _MAX_RULES_VERSION):
        return {"decision": obj["decision"], "reason": obj["reason"], "modelVersion": obj["modelVersion"],
                "rulesVersion": obj["rulesVersion"]}
    log.warning("the MPP's riskResult is malformed; ignored", extra={"event": "risk_result_ignored",
                                                                      "paymentId": payment_id})
    return None
