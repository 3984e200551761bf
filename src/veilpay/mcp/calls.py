"""How a tool call of the MCP server goes through the guard rails: refusals that are
audited, gateway calls whose failures become tool errors, and for a mutating call
its idempotency key, its hold on the caps (``GuardState.open``) and its repeats.

A mutating call is opened once: its caps checked, its confirmation given and its
money held. A repeat under the same key is the same call. It returns the first final
result, or learns an unknown one from the gateway by the same request id. Only when
the gateway never received the first request does it send that request now, under
the first call's hold."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from veilpay.errors import GatewayUnavailable, InvalidInput, SignatureError
from veilpay.mcp.answers import PaymentFacts, PaymentOut, RefundOut, payment_facts, result_code
from veilpay.mcp.guard import AuditLog, GuardState, Hold
from veilpay.mcp.limits import Limits
from veilpay.sdk.client import ApiResponse, AsyncGatewayClient

__all__ = ["Calls"]

Out = TypeVar("Out", PaymentOut, RefundOut)
Send = Callable[[Hold], Awaitable[ApiResponse]]


class Calls:
    def __init__(self, acquirer: str, client: AsyncGatewayClient, state: GuardState, limits: Limits,
                 audit: AuditLog) -> None:
        self.acquirer = acquirer
        self.client = client
        self.state = state
        self.limits = limits
        self.audit = audit

    # ---------------------------------------------------------------- any call
    def who(self, ctx: Context | None) -> str:
        name = "unknown-client"
        try:
            info = ctx.session.client_params.client_info if ctx is not None and ctx.session.client_params else None
            name = info.name if info else name
        except (AttributeError, LookupError, ValueError):
            pass
        return f"{self.acquirer}/{name}"[:120]

    def refuse(self, tool: str, reason: str, ctx: Context | None, **fields: Any) -> ToolError:
        self.audit.write(tool=tool, outcome="refused", reason=reason, client=self.who(ctx), **fields)
        return ToolError(f"refused: {reason}")

    async def gateway(self, tool: str, ctx: Context | None, fn: Callable[..., Awaitable[ApiResponse]], *args: Any,
                      opened: str | None = None, **kw: Any) -> ApiResponse:
        """``fn`` (an SDK call), its failures as tool errors. ``opened``: the key of the
        call whose hold is open; when the SDK refuses the request, it never left, so
        the key and the hold are let go."""
        try:
            return await fn(*args, **kw)
        except GatewayUnavailable as exc:
            self.audit.write(tool=tool, outcome="error", reason="gateway unavailable", client=self.who(ctx))
            raise ToolError("the gateway did not answer; retry with the same idempotency key") from exc
        except SignatureError as exc:
            self.audit.write(tool=tool, outcome="error", reason="unverifiable gateway answer", client=self.who(ctx))
            raise ToolError("the gateway's answer failed verification; not trusted") from exc
        except InvalidInput as exc:
            if opened is not None:
                self.state.abandon(opened)
            raise self.refuse(tool, str(exc), ctx) from exc

    async def facts(self, tool: str, ctx: Context, payment_id: str | None,
                    payment_request_id: str | None) -> PaymentFacts:
        """The payment a refund or cancel names, as the gateway knows it."""
        ans = await self.gateway(tool, ctx, self.client.inquiry_payment, payment_id=payment_id,
                                 payment_request_id=payment_request_id)
        if ans.code != "SUCCESS":
            raise self.refuse(tool, f"payment not found ({result_code(ans.code)})", ctx, paymentId=payment_id)
        pay = payment_facts(ans)
        if pay is None:
            raise self.refuse(tool, "the gateway's answer about the payment is incomplete", ctx, paymentId=payment_id)
        return pay

    def not_confirmed(self, tool: str, what: str, ctx: Context | None, **fields: Any) -> ToolError:
        caps = ctx.session.client_capabilities if ctx is not None else None
        why = "the user did not confirm it" if caps and caps.elicitation else "this client cannot ask the user"
        return self.refuse(tool, f"the {what} is above the confirmation limit and {why}", ctx, **fields)

    # ---------------------------------------------------------------- a mutating call
    def earlier(self, tool: str, key: str | None, fingerprint: str, ctx: Context | None) -> bool:
        """True when ``key`` belongs to this call, opened before (its caps were checked
        and its confirmation given then); a key used for another call is refused."""
        old = self.state.call(key) if key else None
        if old is None:
            return False
        if (old.tool, old.fingerprint) != (tool, fingerprint):
            raise self.refuse(tool, "this idempotency key was used for a different call", ctx, idempotencyKey=key)
        return True

    def open(self, tool: str, key: str, fingerprint: str, hold: Hold, threshold: int | None,
             ctx: Context | None) -> bool:
        """Claim the key and hold the money; False when the key was this call's already
        (a concurrent repeat). ``threshold``: the confirmation threshold nobody was asked
        about, which must still hold now."""
        opened = self.state.open(key, tool, fingerprint, hold, self.limits.day_cap(hold.kind, hold.currency),
                                 threshold)
        fields = {"currency": hold.currency, "value": str(hold.value), "paymentId": hold.payment_id,
                  "idempotencyKey": key}
        if opened == "conflict":
            raise self.refuse(tool, "this idempotency key was used for a different call", ctx, idempotencyKey=key)
        if opened == "over the day's cap":
            raise self.refuse(tool, self.limits.over_day(hold.kind, hold.currency, hold.value), ctx, **fields)
        if opened == "over the confirmation threshold":
            raise self.refuse(tool, "another refund or cancel of this payment came first; with it, this one needs "
                              "the user's confirmation: call again", ctx, **fields)
        return opened == "new"

    def settle(self, key: str, out: PaymentOut | RefundOut, payment_id: str | None = None) -> None:
        """A final answer is kept for repeats; a failure frees the call's hold. An
        unknown (U) one keeps both open until a repeat learns the outcome."""
        if out.status in ("S", "F"):
            self.state.finish(key, out.model_dump(), failed=out.status == "F", payment_id=payment_id)

    async def resume(self, tool: str, key: str, ctx: Context | None, out_type: type[Out], learn: Send,
                     send: Send | None, build: Callable[[ApiResponse], Out]) -> Out:
        """A repeat of a call opened before: its recorded result, or else its outcome as
        the gateway knows it (``learn``), or, when the gateway never received the first
        request (ORDER_NOT_EXIST), that request sent now (``send``)."""
        old = self.state.call(key)
        if old is not None and old.result is not None:
            self.audit.write(tool=tool, outcome="repeat", code=old.result.get("resultCode"), idempotencyKey=key,
                             client=self.who(ctx))
            return out_type.model_validate(old.result)
        if old is None or old.hold is None:
            raise self.refuse(tool, "nothing is recorded of what the first call with this idempotency key sent; use "
                              "a new key", ctx, idempotencyKey=key)
        hold = old.hold
        ans = await learn(hold)
        if ans.code == "ORDER_NOT_EXIST" and send is not None:
            ans = await send(hold)
        out = build(ans)
        self.settle(key, out, hold.payment_id if hold.kind != "pay" else getattr(out, "paymentId", None))
        self.audit.write(tool=tool, outcome="repeat", code=out.resultCode, currency=hold.currency,
                         value=str(hold.value), paymentId=hold.payment_id, idempotencyKey=key, client=self.who(ctx))
        return out
