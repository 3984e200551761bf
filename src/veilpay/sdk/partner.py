"""For parties that receive calls from the gateway (an MPP's payment endpoints, an
ACQP's webhook, a privacy node): verify the gateway's signature, and sign the answer
bound to the request it answers. A call that does not verify is answered without a
signature: no signed answer goes to a caller that has not authenticated."""

from __future__ import annotations

import time
from typing import Any, cast

from veilpay.errors import MalformedBody, SignatureError
from veilpay.sdk import wirejson
from veilpay.sdk.keys import PartyKeys, PublicEntry
from veilpay.sdk.signing import SignedHeaders, sign_headers, verify_json

__all__ = ["GatewayCalls"]


class GatewayCalls:
    def __init__(self, me: PartyKeys, gateway: PublicEntry, window: float = 300.0) -> None:
        if gateway.role != "gateway":
            raise SignatureError("the pinned gateway entry must have role 'gateway'")
        self.me, self.gateway, self.window = me, gateway, window

    def verify(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[dict[str, Any], str]:
        """(the JSON body, the request's digest) of a request the gateway signed for us;
        SignatureError otherwise. Answer it with ``answer(..., digest)``."""
        hdrs = {k.lower(): v for k, v in headers.items()}
        malformed = ""
        try:
            signed, obj = verify_json(hdrs, method, path, body, self.gateway.verify_key, time.time(), self.window)
        except MalformedBody as exc:  # refused below, after the check that it was signed for us
            signed, obj, malformed = cast(SignedHeaders, exc.signed), {}, str(exc)
        if signed.client_id != self.me.id:
            raise SignatureError(f"request signed for {signed.client_id!r}, not for {self.me.id!r}")
        if malformed:
            raise SignatureError(malformed, "PARAM_ILLEGAL")
        return obj, signed.digest

    def answer(self, method: str, path: str, body: dict[str, Any], answers: str) -> tuple[bytes, dict[str, str]]:
        """(raw body, headers) of our signed answer to the request whose digest is ``answers``."""
        raw = wirejson.dumps(body)
        v, key = self.me.signer()
        h = sign_headers(key, v, method, path, self.me.id, raw, time.time(), "Response-Time", answers)
        h["Content-Type"] = "application/json"
        return raw, h

    @staticmethod
    def refuse(body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        """(raw body, headers) of an unsigned answer to a call that did not authenticate."""
        return wirejson.dumps(body), {"Content-Type": "application/json"}
