"""A group key: one HPKE encapsulation for several field groups to the same recipient.

When a partner seals several field groups of one message to the same recipient (the
payment code, the order and the device data of a payment, all for the MPP), it draws
one fresh 32-byte group key, puts it inside the first group's HPKE envelope, and
seals every other group with AES-256-GCM under a key derived from it with
HKDF-SHA256, whose ``info`` names the group and the message. This is age's design
(a file key carried by the recipient stanza, the payload under HKDF-derived keys):
one public-key operation per message instead of one per group (an HPKE seal costs
about 63 us here, an open 41 us; the derived-key seal about 5 us).

Each derived key seals exactly one group, so the all-zero GCM nonce is never reused
under a key; a ``GroupKey`` refuses a second seal under the same ``info``. A group
moved to another message, purpose or recipient derives another key and fails to
open; only the holders of the group key (sender and recipient) can make a group
that opens, so a relay cannot substitute one.

A session key (``SessionKey``, carried the same way but kept for many messages to one
recipient: ``veilpay.sdk.SessionSealer``) is another construction: one AES-256-GCM key
per session, derived once with HKDF-SHA256 from the 32 bytes the head carries, a random
96-bit nonce per message sent with it, and the message's purpose, payment, recipient
and session as additional data. A message moved to another payment or purpose fails
its tag as a moved group does; a session seals three to five groups per payment and
ends after 10,000 payments, far below the 2^32 random-nonce bound for one key; and a
message costs one AES-GCM call (no key derivation). A recipient keeps the session
keys it has opened in a ``SessionKeys`` cache, so a session's later messages skip the
HPKE open of the same head.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from typing import TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veilpay.errors import DecryptionError, InvalidInput

__all__ = ["GROUP_KEY_BYTES", "GroupKey", "GroupOpenError", "SessionKey", "SessionKeys"]

GROUP_KEY_BYTES = 32
_LABEL = b"veilpay/group/v1\x00"
_SESSION_LABEL = b"veilpay/session/v1"
_NONCE = bytes(12)


class GroupOpenError(DecryptionError):
    """A group that does not open under this group key and context."""


class _RawKey:
    """32 secret bytes, never shown in a repr."""

    __slots__ = ("_raw",)
    _WHAT = "key"

    def __init__(self, raw: bytes) -> None:
        if len(raw) != GROUP_KEY_BYTES:
            raise InvalidInput(f"a {self._WHAT} is {GROUP_KEY_BYTES} bytes")
        self._raw = bytes(raw)

    @classmethod
    def generate(cls: type[_K]) -> _K:
        return cls(secrets.token_bytes(GROUP_KEY_BYTES))

    def to_bytes(self) -> bytes:
        return self._raw

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<secret>)"


_K = TypeVar("_K", bound=_RawKey)


class GroupKey(_RawKey):
    __slots__ = ("_sealed",)
    _WHAT = "group key"

    def __init__(self, raw: bytes) -> None:
        super().__init__(raw)
        self._sealed: set[bytes] = set()

    def _aead(self, info: bytes) -> AESGCM:
        return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_LABEL + info).derive(self._raw))

    def seal(self, plaintext: bytes, info: bytes) -> bytes:
        """``ciphertext || tag`` of ``plaintext`` under the key derived for ``info``
        (also the additional data); each ``info`` seals once."""
        if info in self._sealed:
            raise InvalidInput("this group key already sealed a group under this context")
        self._sealed.add(info)
        return self._aead(info).encrypt(_NONCE, plaintext, info)

    def open(self, sealed: bytes, info: bytes) -> bytes:
        try:
            return self._aead(info).decrypt(_NONCE, sealed, info)
        except InvalidTag as exc:
            raise GroupOpenError("group does not open with this key and context") from exc


class SessionKey(_RawKey):
    """A session's AES-256-GCM key (HKDF-SHA256 of the 32 raw bytes the session head
    carries), random 96-bit nonces, the message's context as additional data."""

    __slots__ = ("_aead",)
    _WHAT = "session key"

    def __init__(self, raw: bytes) -> None:
        super().__init__(raw)
        self._aead = AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SESSION_LABEL).derive(raw))

    def seal(self, plaintext: bytes, ad: bytes) -> bytes:
        """``nonce || ciphertext || tag``, with a fresh random nonce and ``ad`` (the
        message's context) as additional data."""
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, plaintext, ad)

    def open(self, sealed: bytes, ad: bytes) -> bytes:
        if len(sealed) < 12 + 16:
            raise GroupOpenError("sealed message too short")
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], ad)
        except InvalidTag as exc:
            raise GroupOpenError("message does not open with this key and context") from exc


class SessionKeys:
    """Session keys a recipient has opened, by (key version, session id, head): the
    exact head bytes are part of the key, so a hit is what the HPKE open of that head
    would give. At most ``max_entries`` (least recently used dropped first), each
    forgotten ``max_age_s`` after it was opened. Thread-safe."""

    def __init__(self, max_entries: int = 1024, max_age_s: float = 900.0) -> None:
        if max_entries < 1 or max_age_s <= 0:
            raise InvalidInput("a session key cache needs max_entries >= 1 and max_age_s > 0")
        self.max_entries, self.max_age_s = max_entries, max_age_s
        self._keys: OrderedDict[tuple[int, str, bytes], tuple[SessionKey, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SessionKeys(<{len(self._keys)} secret>)"

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, kv: int, sid: str, head: bytes) -> SessionKey | None:
        k = (kv, sid, head)
        with self._lock:
            hit = self._keys.get(k)
            if hit is None:
                return None
            if time.monotonic() - hit[1] > self.max_age_s:
                del self._keys[k]
                return None
            self._keys.move_to_end(k)
            return hit[0]

    def put(self, kv: int, sid: str, head: bytes, key: SessionKey) -> None:
        with self._lock:
            self._keys[(kv, sid, head)] = (key, time.monotonic())
            self._keys.move_to_end((kv, sid, head))
            while len(self._keys) > self.max_entries:
                self._keys.popitem(last=False)
