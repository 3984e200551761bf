"""Message signatures in the shape of Alipay+'s.

Every request and response carries three headers: ``Client-Id`` (the partner in the
conversation), ``Request-Time`` / ``Response-Time`` (ISO 8601) and ``Signature``::

    Signature: algorithm=ED25519,keyVersion=2,signature=<base64url>

The signed content is ``"<METHOD> <path>\\n<Client-Id>.<time>.<body>"``. Requests to
the gateway are signed by the partner named in ``Client-Id``; everything the gateway
sends (responses, calls to MPPs, webhooks) is signed by the gateway; a partner's
answer to the gateway is signed by that partner."""

from __future__ import annotations

import re
import time as _clock
from dataclasses import dataclass
from datetime import UTC, datetime

from veilpay.crypto.signing import SigningKey, b64d, b64e
from veilpay.errors import SignatureError

__all__ = ["SignedHeaders", "format_time", "parse_signature", "parse_time", "post_headers", "sign_headers", "signed_content",
           "verify_message"]

_SIG = re.compile(r"^algorithm=ED25519,keyVersion=([0-9]{1,6}),signature=([A-Za-z0-9_-]{86})$")


@dataclass(frozen=True)
class SignedHeaders:
    client_id: str
    time: str
    key_version: int
    signature: bytes


def format_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 time with an offset; SignatureError otherwise."""
    if not isinstance(text, str) or len(text) > 40:
        raise SignatureError("Request-Time is not an ISO 8601 time", "INVALID_REQUEST_TIME")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise SignatureError("Request-Time is not an ISO 8601 time", "INVALID_REQUEST_TIME") from exc
    if dt.tzinfo is None:
        raise SignatureError("Request-Time needs a UTC offset", "INVALID_REQUEST_TIME")
    return dt.timestamp()


def signed_content(method: str, path: str, client_id: str, time: str, body: bytes) -> bytes:
    return f"{method.upper()} {path}\n{client_id}.{time}.".encode() + body


def parse_signature(header: str | None) -> tuple[int, bytes]:
    if not header:
        raise SignatureError("no Signature header")
    m = _SIG.match(header.replace(" ", ""))
    if not m:
        raise SignatureError("Signature header is not 'algorithm=ED25519,keyVersion=N,signature=...'")
    return int(m.group(1)), b64d(m.group(2))


def sign_headers(key: SigningKey, version: int, method: str, path: str, client_id: str, body: bytes, now: float,
                 time_header: str = "Request-Time") -> dict[str, str]:
    t = format_time(now)
    sig = key.sign(signed_content(method, path, client_id, t, body))
    return {"Client-Id": client_id, time_header: t,
            "Signature": f"algorithm=ED25519,keyVersion={version},signature={b64e(sig)}"}


def post_headers(signer: tuple[int, SigningKey], path: str, client_id: str, body: bytes) -> dict[str, str]:
    """The headers of a signed JSON POST to ``client_id`` (or from it), timed now;
    ``signer`` is ``PartyKeys.signer()``."""
    version, key = signer
    h = sign_headers(key, version, "POST", path, client_id, body, _clock.time())
    h["Content-Type"] = "application/json"
    return h


def verify_message(headers: dict[str, str], method: str, path: str, body: bytes, verify_key_of: object,
                   now: float, window: float, time_header: str = "Request-Time") -> SignedHeaders:
    """Check ``Signature`` over the message with the key that ``verify_key_of(version)``
    returns (None for an unknown or retired version) and that the time is within
    ``window`` seconds of ``now``. Returns the parsed headers."""
    client_id = headers.get("client-id") or headers.get("Client-Id")
    t = headers.get(time_header.lower()) or headers.get(time_header)
    if not client_id:
        raise SignatureError("no Client-Id header", "INVALID_CLIENT")
    if not t:
        raise SignatureError(f"no {time_header} header", "INVALID_REQUEST_TIME")
    version, sig = parse_signature(headers.get("signature") or headers.get("Signature"))
    key = verify_key_of(version)  # type: ignore[operator]
    if key is None:
        raise SignatureError(f"key version {version} is unknown or retired", "KEY_NOT_FOUND")
    if not key.verify(sig, signed_content(method, path, client_id, t, body)):
        raise SignatureError("signature does not verify")
    ts = parse_time(t)
    if abs(now - ts) > window:
        raise SignatureError(f"{time_header} is outside the {window:g} s window", "REQUEST_TIME_EXPIRED")
    return SignedHeaders(client_id, t, version, sig)
