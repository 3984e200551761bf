"""Sealed field groups: a JSON object HPKE-encrypted by one partner to another.

An envelope is ``{"v": 1, "to": <party>, "kv": <HPKE key version>, "suite": ...,
"ct": <base64url enc||ciphertext>}``. The HPKE ``info`` binds the ciphertext to the
field group's purpose (``order``, ``paymentCode``, ``env``, ``customerInfo``,
``refundReason``, and ``amount`` / ``share`` for hidden amounts), the
payment or refund it belongs to and the recipient, so the gateway (which stores and
forwards envelopes) cannot move one from one payment or purpose to another."""

from __future__ import annotations

import json
from typing import Any

from veilpay.crypto.hpke import HpkeOpenError
from veilpay.crypto.signing import b64d, b64e
from veilpay.errors import DecryptionError, InvalidInput
from veilpay.sdk import wirejson
from veilpay.sdk.keys import PartyKeys, PublicEntry

__all__ = ["PURPOSES", "is_envelope", "open_fields", "seal_fields"]

PURPOSES = ("order", "paymentCode", "env", "customerInfo", "refundReason", "amount", "share")
_KEYS = {"v", "to", "kv", "suite", "ct"}
MAX_CT = 16 * 1024


def _info(purpose: str, context: str, to: str, kv: int) -> bytes:
    if purpose not in PURPOSES:
        raise InvalidInput(f"unknown field group {purpose!r}")
    return f"veilpay/sealed/v1\x00{purpose}\x00{context}\x00{to}\x00{kv}".encode()


def is_envelope(obj: Any) -> bool:
    return isinstance(obj, dict) and set(obj) == _KEYS and obj.get("v") == 1


def seal_fields(fields: dict[str, Any], recipient: PublicEntry, purpose: str, context: str) -> dict[str, Any]:
    """Encrypt ``fields`` to ``recipient``'s newest HPKE key."""
    kv = recipient.hpke_version
    key = recipient.hpke[kv]
    pt = wirejson.dumps(fields)
    return {"v": 1, "to": recipient.id, "kv": kv, "suite": key.suite,
            "ct": b64e(key.seal(pt, _info(purpose, context, recipient.id, kv)))}


def open_fields(envelope: Any, me: PartyKeys, purpose: str, context: str) -> dict[str, Any]:
    """Decrypt an envelope addressed to ``me``; DecryptionError when it is not ours,
    names an unknown key version, or was sealed for another purpose or payment."""
    if not is_envelope(envelope):
        raise DecryptionError(f"{purpose}: not a sealed envelope")
    if envelope["to"] != me.id:
        raise DecryptionError(f"{purpose}: sealed for {envelope['to']!r}, not for {me.id!r}")
    kv = envelope["kv"]
    key = me.hpke.get(kv) if isinstance(kv, int) else None
    if key is None or key.suite != envelope["suite"]:
        raise DecryptionError(f"{purpose}: no HPKE key version {kv!r} of suite {envelope['suite']!r}")
    try:
        ct = b64d(envelope["ct"])
    except ValueError as exc:
        raise DecryptionError(f"{purpose}: ciphertext is not base64url") from exc
    if len(ct) > MAX_CT:
        raise DecryptionError(f"{purpose}: ciphertext larger than {MAX_CT} bytes")
    try:
        obj = wirejson.loads(key.open(ct, _info(purpose, context, me.id, kv)))
    except HpkeOpenError as exc:
        raise DecryptionError(f"{purpose}: does not open (wrong key, context or tampered)") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DecryptionError(f"{purpose}: opened, but is not JSON") from exc
    if not isinstance(obj, dict):
        raise DecryptionError(f"{purpose}: opened, but is not a JSON object")
    return obj
