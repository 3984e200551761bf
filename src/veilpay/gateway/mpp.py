"""The gateway's link to the MPPs (the payer's wallets): signed calls whose answers are
accepted only when the MPP signed them as the answer to that very request and they
echo its ids; payments that wait for the same MPP at the same time travel together in
one ``/mpp/v1/payBatch`` call (``veilpay.gateway.batch.Coalescer``).

Anything else (no answer in time, a refused or unverifiable answer) is
``MppUnreachable``: the outcome is unknown and the state machine resolves it later."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from veilpay.errors import ConfigError, MalformedBody, SignatureError
from veilpay.gateway.batch import Coalescer
from veilpay.gateway.codes import result
from veilpay.gateway.config import GatewayConfig
from veilpay.gateway.link import LinkError, PartnerLink
from veilpay.gateway.observe import Metrics
from veilpay.sdk import wirejson
from veilpay.sdk.directory import Directory
from veilpay.sdk.keys import PartyKeys, PublicEntry
from veilpay.sdk.signing import signed_post, verify_json

__all__ = ["MppLink", "MppUnreachable"]

log = logging.getLogger("veilpay.gateway")


class MppUnreachable(Exception):
    """No verifiable answer from the MPP in time; the outcome is unknown."""


class MppLink:
    """Calls from this gateway (``keys``) to the MPPs of ``directory`` over ``http``."""

    def __init__(self, cfg: GatewayConfig, keys: PartyKeys, directory: Callable[[], Directory], http: PartnerLink,
                 metrics: Metrics) -> None:
        if cfg.forward_batch < 1 or cfg.forward_in_flight < 1:
            raise ConfigError("forward_batch and forward_in_flight must be at least 1")
        self.cfg, self.keys, self._directory, self.http, self.metrics = cfg, keys, directory, http, metrics
        self.pay_calls = Coalescer(self._pay_batch, cfg.forward_batch, cfg.forward_in_flight) \
            if cfg.forward_batch > 1 else None

    async def aclose(self) -> None:
        if self.pay_calls is not None:
            await self.pay_calls.aclose()

    async def call_partner(self, partner: PublicEntry, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """The partner's answer to ``body``: signed by the partner, as the answer to this
        very request, and echoing its ids (paymentId, refundId); MppUnreachable otherwise."""
        raw = wirejson.dumps(body)
        headers, digest = signed_post(self.keys.signer(), path, partner.id, raw)
        try:
            status, hdrs, content = await self.http.post(partner.endpoint.rstrip("/") + path, raw, headers,
                                                         self.cfg.mpp_timeout_s)
        except LinkError as exc:
            self.metrics.child(self.metrics.mpp_calls, "unreachable").inc()
            raise MppUnreachable(str(exc)) from exc
        try:
            signed, obj = verify_json(hdrs, "POST", path, content, partner.verify_key, time.time(),
                                      self.cfg.request_window_s, "Response-Time", digest)
            if signed.client_id != partner.id:
                raise SignatureError("answer signed for another partner")
            res = obj["result"]
            if res["resultStatus"] not in ("S", "F", "U"):
                raise ValueError("resultStatus")
            if any(obj.get(k) != body[k] for k in ("paymentId", "refundId") if k in body):
                raise ValueError("the answer names another payment or refund")
        except (SignatureError, MalformedBody, ValueError, KeyError, TypeError) as exc:
            self.metrics.child(self.metrics.mpp_calls, "bad_answer").inc()
            log.warning("bad answer from partner", extra={"event": "partner_bad_answer", "partner": partner.id,
                                                          "path": path, "http_status": status})
            raise MppUnreachable("unverifiable answer") from exc
        self.metrics.child(self.metrics.mpp_calls, res["resultStatus"]).inc()
        return obj

    async def forward_pay(self, mpp: PublicEntry, body: dict[str, Any]) -> dict[str, Any]:
        """The MPP's answer to one payment: through ``/mpp/v1/payBatch`` together with the
        payments that wait for the same MPP, or alone through ``/mpp/v1/pay``."""
        if self.pay_calls is None:
            return await self.call_partner(mpp, "/mpp/v1/pay", body)
        return await self.pay_calls.call(mpp.id, body)

    async def _pay_batch(self, mpp_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One payBatch call; an item whose answer is missing or malformed is answered
        U, so it is resolved later like a payment whose call timed out."""
        mpp = self._directory().get(mpp_id)
        if mpp is None:
            raise MppUnreachable("the MPP left the network")
        obj = await self.call_partner(mpp, "/mpp/v1/payBatch", {"payments": items})
        answers = obj.get("answers")
        if obj["result"]["resultStatus"] != "S" or not isinstance(answers, list) or len(answers) != len(items):
            raise MppUnreachable(f"payBatch answered {obj['result'].get('resultCode')!s:.48}")
        out = []
        for item, ans in zip(items, answers, strict=True):
            res = ans.get("result") if isinstance(ans, dict) else None
            if (not isinstance(res, dict) or res.get("resultStatus") not in ("S", "F", "U")
                    or ans.get("paymentId") != item["paymentId"]):
                ans = {"result": result("UNKNOWN_EXCEPTION")}
            out.append(ans)
        return out
