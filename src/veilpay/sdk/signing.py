"""Message signatures in the shape of Alipay+'s, with each answer bound to its request.

Every request and response carries three headers: ``Client-Id`` (the partner in the
conversation), ``Request-Time`` / ``Response-Time`` (ISO 8601) and ``Signature``::

    Signature: algorithm=ED25519,keyVersion=2,signature=<base64url>

veilpay adds one header to requests, ``Request-Nonce``: 16 random bytes (base64url)
that the signature covers. A request's signed content is::

    "<METHOD> <path>\n<Client-Id>.<Request-Time>.<Request-Nonce>.<body>"

and an answer's::

    "ANSWER <METHOD> <path>\n<Client-Id>.<Response-Time>.<request digest>.<body>"

where the request digest is the SHA-256 (hex) of the request's signature bytes
(``SignedHeaders.digest``; for an unsigned GET, of its method, path, Client-Id and
nonce, ``get_digest``). So an answer cannot pass for a request (its label), nor for
the answer to any other request (the digest names the one it answers, and the
nonce makes every request's signature unique, identical bodies in the same
millisecond included). The receiver of a request keys its replay guard on the
nonce. Requests to the gateway are signed by the partner named in ``Client-Id``;
everything the gateway sends (responses, calls to MPPs, webhooks) is signed by the
gateway; a partner's answer to the gateway is signed by that partner. A party
answers a caller that has not authenticated without a signature."""

from __future__ import annotations

import json
import math
import re
import secrets
import time as _clock
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from veilpay.crypto.digest import sha256
from veilpay.crypto.signing import SigningKey, b64d, b64e
from veilpay.errors import InvalidInput, MalformedBody, SignatureError
from veilpay.sdk import wirejson

__all__ = ["NONCE_HEADER", "SignedHeaders", "format_time", "get_digest", "parse_signature", "parse_time",
           "post_headers", "request_digest", "sign_headers", "signed_content", "signed_post", "verify_json",
           "verify_message"]

_SIG = re.compile(r"^algorithm=ED25519,keyVersion=([0-9]{1,6}),signature=([A-Za-z0-9_-]{86})$")
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
NONCE_HEADER = "Request-Nonce"


@dataclass(frozen=True)
class SignedHeaders:
    client_id: str
    time: str
    key_version: int
    signature: bytes
    nonce: str = ""

    @property
    def digest(self) -> str:
        """What an answer to this request is bound to: SHA-256 of its signature."""
        return sha256(self.signature).hex()


_SECONDS: dict[int, str] = {}  # "YYYY-MM-DDTHH:MM:SS" of recent whole seconds


def format_time(ts: float) -> str:
    """``ts`` as ISO 8601 UTC with milliseconds (``2026-01-02T03:04:05.678Z``): what
    ``datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")`` writes
    (microseconds rounded half to even, then cut to milliseconds), the date and time
    of a second formatted once."""
    frac, whole = math.modf(ts)
    us = round(frac * 1e6)
    if us >= 1_000_000:
        whole, us = whole + 1, us - 1_000_000
    elif us < 0:
        whole, us = whole - 1, us + 1_000_000
    sec = int(whole)
    head = _SECONDS.get(sec)
    if head is None:
        if len(_SECONDS) > 64:
            _SECONDS.clear()
        head = _SECONDS[sec] = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{head}.{us // 1000:03d}Z"


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


def signed_content(method: str, path: str, client_id: str, time: str, body: bytes, nonce: str = "",
                   answers: str = "") -> bytes:
    """A request's signed bytes (with its ``nonce``), or an answer's (``answers``: the
    digest of the request it answers)."""
    if answers:
        return f"ANSWER {method.upper()} {path}\n{client_id}.{time}.{answers}.".encode() + body
    return f"{method.upper()} {path}\n{client_id}.{time}.{nonce}.".encode() + body


def get_digest(path: str, client_id: str, nonce: str) -> str:
    """The request digest of an unsigned GET that carried ``nonce``."""
    return sha256(f"GET {path}\n{client_id}.{nonce}".encode()).hex()


def parse_signature(header: str | None) -> tuple[int, bytes]:
    if not header:
        raise SignatureError("no Signature header")
    m = _SIG.match(header.replace(" ", ""))
    if not m:
        raise SignatureError("Signature header is not 'algorithm=ED25519,keyVersion=N,signature=...'")
    return int(m.group(1)), b64d(m.group(2))


def request_digest(headers: Mapping[str, str]) -> str:
    """The digest of a request we signed (its headers as sent): what its answer must name."""
    return sha256(parse_signature(headers.get("Signature") or headers.get("signature"))[1]).hex()


def sign_headers(key: SigningKey, version: int, method: str, path: str, client_id: str, body: bytes, now: float,
                 time_header: str = "Request-Time", answers: str | None = None) -> dict[str, str]:
    """Headers of a signed request (a fresh nonce), or, with ``time_header`` Response-Time,
    of the signed answer to the request whose digest is ``answers``."""
    t = format_time(now)
    out = {"Client-Id": client_id, time_header: t}
    if time_header == "Response-Time":
        if not answers:
            raise InvalidInput("a signed answer names the request it answers")
        content = signed_content(method, path, client_id, t, body, answers=answers)
    else:
        nonce = secrets.token_urlsafe(16)
        out[NONCE_HEADER] = nonce
        content = signed_content(method, path, client_id, t, body, nonce=nonce)
    out["Signature"] = f"algorithm=ED25519,keyVersion={version},signature={b64e(key.sign(content))}"
    return out


def post_headers(signer: tuple[int, SigningKey], path: str, client_id: str, body: bytes) -> dict[str, str]:
    """The headers of a signed JSON POST to ``client_id`` (or from it), timed now;
    ``signer`` is ``PartyKeys.signer()``. Its answer names ``request_digest`` of them."""
    return signed_post(signer, path, client_id, body)[0]


def signed_post(signer: tuple[int, SigningKey], path: str, client_id: str,
                body: bytes) -> tuple[dict[str, str], str]:
    """``post_headers`` and the digest its answer must name (``request_digest`` of
    them), without parsing back the signature just made."""
    version, key = signer
    t = format_time(_clock.time())
    nonce = secrets.token_urlsafe(16)
    sig = key.sign(signed_content("POST", path, client_id, t, body, nonce=nonce))
    h = {"Client-Id": client_id, "Request-Time": t, NONCE_HEADER: nonce,
         "Signature": f"algorithm=ED25519,keyVersion={version},signature={b64e(sig)}",
         "Content-Type": "application/json"}
    return h, sha256(sig).hex()


def verify_message(headers: Mapping[str, str], method: str, path: str, body: bytes, verify_key_of: object,
                   now: float, window: float, time_header: str = "Request-Time",
                   answers: str | None = None) -> SignedHeaders:
    """Check ``Signature`` over the message with the key that ``verify_key_of(version)``
    returns (None for an unknown or retired version) and that the time is within
    ``window`` seconds of ``now``. A request must carry a nonce; an answer
    (``time_header`` Response-Time) must answer the request whose digest is ``answers``.
    Returns the parsed headers."""
    client_id = headers.get("client-id") or headers.get("Client-Id")
    t = headers.get(time_header.lower()) or headers.get(time_header)
    if not client_id:
        raise SignatureError("no Client-Id header", "INVALID_CLIENT")
    if not t:
        raise SignatureError(f"no {time_header} header", "INVALID_REQUEST_TIME")
    version, sig = parse_signature(headers.get("signature") or headers.get("Signature"))
    nonce = ""
    if time_header == "Response-Time":
        if not answers:
            raise InvalidInput("checking an answer needs the digest of the request it answers")
    else:
        nonce = headers.get(NONCE_HEADER.lower()) or headers.get(NONCE_HEADER) or ""
        if not _NONCE.match(nonce):
            raise SignatureError(f"no {NONCE_HEADER} header (16 to 64 base64url characters)")
    key = verify_key_of(version)  # type: ignore[operator]
    if key is None:
        raise SignatureError(f"key version {version} is unknown or retired", "KEY_NOT_FOUND")
    if not key.verify(sig, signed_content(method, path, client_id, t, body, nonce, answers or "")):
        raise SignatureError("signature does not verify" if not answers else
                             "signature does not verify as the answer to this request")
    ts = parse_time(t)
    if abs(now - ts) > window:
        raise SignatureError(f"{time_header} is outside the {window:g} s window", "REQUEST_TIME_EXPIRED")
    return SignedHeaders(client_id, t, version, sig, nonce)


def verify_json(headers: Mapping[str, str], method: str, path: str, body: bytes, verify_key_of: object,
                now: float, window: float, time_header: str = "Request-Time",
                answers: str | None = None) -> tuple[SignedHeaders, dict[str, Any]]:
    """The step every service takes with a signed message: ``verify_message``, then
    parse the body as JSON and require an object. Returns (signed headers, object);
    SignatureError when the signature does not hold, MalformedBody (carrying the signed
    headers) when it does but the body is not a JSON object. Each service maps the two
    to its own answer."""
    signed = verify_message(headers, method, path, body, verify_key_of, now, window, time_header, answers)
    try:
        obj = wirejson.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedBody("the signed body is not JSON", signed) from exc
    if not isinstance(obj, dict):
        raise MalformedBody("the signed body is not a JSON object", signed)
    return signed, obj
