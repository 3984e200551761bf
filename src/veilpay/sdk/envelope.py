"""Sealed field groups: a JSON object HPKE-encrypted by one partner to another.

An envelope is ``{"v": 1, "to": <party>, "kv": <HPKE key version>, "suite": ...,
"ct": <base64url enc||ciphertext>}``. The HPKE ``info`` binds the ciphertext to the
field group's purpose (``order``, ``paymentCode``, ``env``, ``customerInfo``,
``refundReason``, ``amount`` / ``share`` for hidden amounts, and ``settlement`` for
a node's share of a settlement total owed to a partner), the
payment or refund it belongs to and the recipient, so the gateway (which stores and
forwards envelopes) cannot move one from one payment or purpose to another.

Several groups for the same recipient in one message (a payment's code, order and
device data, all for the MPP) are sealed as one **group** (``"v": 2``): the first
group's envelope is an HPKE envelope whose plaintext starts with a fresh 32-byte
group key; every other group's envelope carries ``"with": <the first group's
purpose>`` and is AES-256-GCM under a key derived from the group key for its own
purpose, message and recipient (``veilpay.crypto.groupkey``). One HPKE seal and one
open per message instead of one per group; the wire shape (one envelope per field)
is unchanged. Only the sender and the recipient hold the group key, so a relay can
neither open nor forge a linked group. Single envelopes (``"v": 1``) are still read.

A partner that seals to the same recipient many times (the SDK's payment groups and
hidden amounts for an MPP, the MPP's ``customerInfo`` for an ACQP, once per payment)
uses a **session** (``"v": 3``, ``SessionSealer``): one HPKE seal of a fresh session
key per recipient per session (10,000 messages or five minutes), carried in each
envelope as ``"head"`` with the session's id ``"sid"``; each message is AES-256-GCM
under the session's key with a random nonce, its purpose, payment, recipient and
session as additional data. A message's groups in a session
(``SessionSealer.seal_group``) all carry the same head, and ``open_group`` takes
them only together. The recipient opens a session's head once (one HPKE open) and
keeps the key (``PartyKeys.opened``, by key version, session id and the head's exact
bytes); every later message of the session costs it one AES-GCM open.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from veilpay.crypto.groupkey import GROUP_KEY_BYTES, GroupKey, GroupOpenError, SessionKey
from veilpay.crypto.hpke import HpkeOpenError, HpkePrivateKey
from veilpay.crypto.signing import b64d, b64e
from veilpay.crypto.tokens import random_id
from veilpay.errors import DecryptionError, InvalidInput
from veilpay.sdk import wirejson
from veilpay.sdk.keys import PartyKeys, PublicEntry

__all__ = ["PURPOSES", "SessionSealer", "is_envelope", "is_linked", "one_session", "open_fields", "open_group",
           "seal_fields", "seal_group"]

PURPOSES = ("order", "paymentCode", "env", "customerInfo", "refundReason", "amount", "share", "settlement", "risk",
            "risk-model")
_KEYS = {"v", "to", "kv", "suite", "ct"}
_LINKED = _KEYS | {"with"}
_SESSION = _KEYS | {"head", "sid"}
MAX_CT = 16 * 1024


def _info(purpose: str, context: str, to: str, kv: int, version: int = 1) -> bytes:
    if purpose not in PURPOSES:
        raise InvalidInput(f"unknown field group {purpose!r}")
    return f"veilpay/sealed/v{version}\x00{purpose}\x00{context}\x00{to}\x00{kv}".encode()


def _linked_info(purpose: str, first: str, context: str, to: str, kv: int) -> bytes:
    return _info(purpose, context, to, kv, 2) + f"\x00with\x00{first}".encode()


def _session_info(purpose: str, context: str, to: str, kv: int, sid: str) -> bytes:
    return _info(purpose, context, to, kv, 3) + f"\x00session\x00{sid}".encode()


def _head_info(to: str, kv: int, sid: str) -> bytes:
    """A session head's HPKE info: the session, its recipient and key version (every
    message's own info names its purpose and payment)."""
    return f"veilpay/sealed/v3\x00session\x00{sid}\x00{to}\x00{kv}".encode()


def is_envelope(obj: Any) -> bool:
    """A single envelope, one of a group (its first or a linked one), or one of a session."""
    if not isinstance(obj, dict):
        return False
    keys = set(obj)
    if keys == _KEYS:
        return obj.get("v") in (1, 2)
    if keys == _LINKED:
        return obj.get("v") == 2 and isinstance(obj.get("with"), str)
    return keys == _SESSION and obj.get("v") == 3 and isinstance(obj.get("head"), str) \
        and isinstance(obj.get("sid"), str) and 0 < len(obj["sid"]) <= 48


def one_session(envelopes: list[Any]) -> bool:
    """Every one of ``envelopes`` a session envelope of the same session (head, id and
    key version): how a message's groups in a session must travel."""
    if not envelopes or not is_envelope(envelopes[0]) or envelopes[0]["v"] != 3:
        return False
    one = envelopes[0]
    return all(is_envelope(e) and e["v"] == 3 and e["sid"] == one["sid"] and e["head"] == one["head"]
               and e["kv"] == one["kv"] for e in envelopes)


def is_linked(obj: Any) -> bool:
    """An envelope of a group other than its first (it names the first in ``with``)."""
    return is_envelope(obj) and "with" in obj


def seal_fields(fields: dict[str, Any], recipient: PublicEntry, purpose: str, context: str) -> dict[str, Any]:
    """Encrypt ``fields`` to ``recipient``'s newest HPKE key."""
    kv = recipient.hpke_version
    key = recipient.hpke[kv]
    pt = wirejson.dumps(fields)
    return {"v": 1, "to": recipient.id, "kv": kv, "suite": key.suite,
            "ct": b64e(key.seal(pt, _info(purpose, context, recipient.id, kv)))}


def seal_group(groups: dict[str, dict[str, Any]], recipient: PublicEntry, context: str) -> dict[str, dict[str, Any]]:
    """One envelope per purpose in ``groups``, all for ``recipient``, with a single HPKE
    seal: the first purpose's envelope carries the group key, the others are linked to it."""
    if not groups:
        raise InvalidInput("a group needs at least one field group")
    kv = recipient.hpke_version
    key = recipient.hpke[kv]
    gk = GroupKey.generate()
    first, *rest = groups
    head = {"v": 2, "to": recipient.id, "kv": kv, "suite": key.suite,
            "ct": b64e(key.seal(gk.to_bytes() + wirejson.dumps(groups[first]),
                                _info(first, context, recipient.id, kv, 2)))}
    out = {first: head}
    for purpose in rest:
        ct = gk.seal(wirejson.dumps(groups[purpose]), _linked_info(purpose, first, context, recipient.id, kv))
        out[purpose] = {"v": 2, "to": recipient.id, "kv": kv, "suite": key.suite, "ct": b64e(ct), "with": first}
    return out


@dataclass
class _Session:
    key: SessionKey
    head: str        # the session key HPKE-sealed to the recipient, base64url
    sid: str
    started: float   # time.monotonic()
    uses: int = 0


class SessionSealer:
    """Seals messages to many recipients, each under a session key that one HPKE seal
    carries (the envelope's ``head``) and that is replaced after
    ``max_uses`` messages or ``max_age_s`` seconds, or when the recipient's key
    version changes. Thread-safe."""

    def __init__(self, max_uses: int = 10_000, max_age_s: float = 300.0) -> None:
        if max_uses < 1 or max_age_s <= 0:
            raise InvalidInput("a session needs max_uses >= 1 and max_age_s > 0")
        self.max_uses, self.max_age_s = max_uses, max_age_s
        self._sessions: dict[tuple[str, int], _Session] = {}  # by (recipient, key version)
        self._lock = threading.Lock()
        self.heads = 0  # HPKE seals made (sessions opened), for tests

    def _session(self, recipient: PublicEntry, kv: int) -> _Session:
        k = (recipient.id, kv)
        now = time.monotonic()
        with self._lock:
            s = self._sessions.get(k)
            if s is None or s.uses >= self.max_uses or now - s.started > self.max_age_s:
                sk, sid = SessionKey.generate(), random_id("ses_", 12)
                head = b64e(recipient.hpke[kv].seal(sk.to_bytes(), _head_info(recipient.id, kv, sid)))
                s = self._sessions[k] = _Session(sk, head, sid, now)
                self.heads += 1
            s.uses += 1
            return s

    def seal(self, fields: dict[str, Any], recipient: PublicEntry, purpose: str, context: str) -> dict[str, Any]:
        """``fields`` sealed to ``recipient`` for ``purpose`` in ``context`` (the payment)."""
        return self.seal_group({purpose: fields}, recipient, context)[purpose]

    def seal_group(self, groups: dict[str, dict[str, Any]], recipient: PublicEntry,
                   context: str) -> dict[str, dict[str, Any]]:
        """One envelope per purpose in ``groups``, all for ``recipient`` in one message
        (``context``), all in the same session (one use of it)."""
        if not groups:
            raise InvalidInput("a group needs at least one field group")
        kv = recipient.hpke_version
        suite = recipient.hpke[kv].suite
        s = self._session(recipient, kv)
        out = {}
        for purpose, fields in groups.items():
            ct = s.key.seal(wirejson.dumps(fields), _session_info(purpose, context, recipient.id, kv, s.sid))
            out[purpose] = {"v": 3, "to": recipient.id, "kv": kv, "suite": suite, "ct": b64e(ct), "head": s.head,
                            "sid": s.sid}
        return out


def _my_key(envelope: Any, me: PartyKeys, purpose: str) -> tuple[HpkePrivateKey, int, bytes]:
    """The HPKE key an envelope for ``me`` names, its version and the raw ciphertext."""
    if not is_envelope(envelope):
        raise DecryptionError(f"{purpose}: not a sealed envelope")
    if envelope["to"] != me.id:
        raise DecryptionError(f"{purpose}: sealed for {envelope['to']!r}, not for {me.id!r}")
    kv = envelope["kv"]
    key = me.hpke.get(kv) if isinstance(kv, int) else None
    if key is None or key.suite != envelope["suite"]:
        raise DecryptionError(f"{purpose}: no HPKE key version {kv!r} of suite {envelope['suite']!r}")
    return key, kv, _bytes(envelope, "ct", purpose, "ciphertext")


def _bytes(envelope: dict[str, Any], field: str, purpose: str, what: str) -> bytes:
    """An envelope's base64url field, size-capped."""
    try:
        raw = b64d(envelope[field])
    except ValueError as exc:
        raise DecryptionError(f"{purpose}: {what} is not base64url") from exc
    if len(raw) > MAX_CT:
        raise DecryptionError(f"{purpose}: {what} larger than {MAX_CT} bytes")
    return raw


def _object(raw: bytes, purpose: str) -> dict[str, Any]:
    try:
        obj = wirejson.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DecryptionError(f"{purpose}: opened, but is not JSON") from exc
    if not isinstance(obj, dict):
        raise DecryptionError(f"{purpose}: opened, but is not a JSON object")
    return obj


def _open_head(envelope: Any, me: PartyKeys, purpose: str, context: str) -> tuple[GroupKey | None, dict[str, Any]]:
    """A single envelope or a group's first: (its group key or None, its fields)."""
    key, kv, ct = _my_key(envelope, me, purpose)
    if "with" in envelope:
        raise DecryptionError(f"{purpose}: a linked group opens only with the group's first")
    version = envelope["v"]
    if version == 3:
        return None, _open_session(envelope, key, kv, ct, me, purpose, context)
    try:
        pt = key.open(ct, _info(purpose, context, me.id, kv, version))
    except HpkeOpenError as exc:
        raise DecryptionError(f"{purpose}: does not open (wrong key, context or tampered)") from exc
    if version == 1:
        return None, _object(pt, purpose)
    if len(pt) < GROUP_KEY_BYTES:
        raise DecryptionError(f"{purpose}: opened, but carries no group key")
    return GroupKey(pt[:GROUP_KEY_BYTES]), _object(pt[GROUP_KEY_BYTES:], purpose)


def _open_session(envelope: dict[str, Any], key: HpkePrivateKey, kv: int, ct: bytes, me: PartyKeys, purpose: str,
                  context: str) -> dict[str, Any]:
    sid = envelope["sid"]
    head = _bytes(envelope, "head", purpose, "session head")
    sk = me.opened.get(kv, sid, head)
    if sk is None:
        try:
            raw = key.open(head, _head_info(me.id, kv, sid))
        except HpkeOpenError as exc:
            raise DecryptionError(f"{purpose}: session head does not open (wrong key, session or tampered)") from exc
        if len(raw) != GROUP_KEY_BYTES:
            raise DecryptionError(f"{purpose}: session head holds no session key")
        sk = SessionKey(raw)
        me.opened.put(kv, sid, head, sk)
    try:
        return _object(sk.open(ct, _session_info(purpose, context, me.id, kv, sid)), purpose)
    except GroupOpenError as exc:
        raise DecryptionError(f"{purpose}: does not open (moved, altered or from another session)") from exc


def open_fields(envelope: Any, me: PartyKeys, purpose: str, context: str) -> dict[str, Any]:
    """Decrypt an envelope addressed to ``me`` (a single one, or a group's first);
    DecryptionError when it is not ours, names an unknown key version, or was sealed
    for another purpose or payment."""
    return _open_head(envelope, me, purpose, context)[1]


def open_group(envelopes: dict[str, Any], me: PartyKeys, context: str) -> dict[str, dict[str, Any]]:
    """Decrypt a message's envelopes for ``me`` by purpose: the groups of one session
    (one HPKE open per session, none once its key is kept), a group (one HPKE open
    for all) or single envelopes (one each), never a mix. DecryptionError when any of
    them does not open, when a linked group names a first that is not among them, when
    a single envelope stands beside a group, or when a session's groups are not all of
    one session."""
    if any(is_envelope(e) and e["v"] == 3 for e in envelopes.values()):
        if not one_session(list(envelopes.values())):
            raise DecryptionError("a message's groups in a session must all be of that one session")
        return {purpose: open_fields(env, me, purpose, context) for purpose, env in envelopes.items()}
    gk: GroupKey | None = None
    first = next((p for p, e in envelopes.items() if is_envelope(e) and e["v"] == 2 and "with" not in e), None)
    out: dict[str, dict[str, Any]] = {}
    if first is not None:
        gk, out[first] = _open_head(envelopes[first], me, first, context)
    for purpose, env in envelopes.items():
        if purpose == first:
            continue
        if not is_linked(env):
            if gk is not None:  # beside a group, a single envelope could be anyone's substitute
                raise DecryptionError(f"{purpose}: a single envelope beside a group; it must be linked")
            out[purpose] = open_fields(env, me, purpose, context)
            continue
        if gk is None or first is None or env["with"] != first:
            raise DecryptionError(f"{purpose}: linked to {str(env['with'])[:24]!r}, which is not in this message")
        _, kv, ct = _my_key(env, me, purpose)
        head = envelopes[first]
        if kv != head["kv"] or env["suite"] != head["suite"]:
            raise DecryptionError(f"{purpose}: linked group under another key than its first")
        try:
            out[purpose] = _object(gk.open(ct, _linked_info(purpose, first, context, me.id, kv)), purpose)
        except GroupOpenError as exc:
            raise DecryptionError(f"{purpose}: does not open (moved, altered or from another message)") from exc
    return out
