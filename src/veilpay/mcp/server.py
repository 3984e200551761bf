"""An MCP server (official ``mcp`` SDK) that lets an AI assistant take payments and
refunds for one acquirer through the encrypted gateway, with guard rails.

The assistant never holds credentials (they come from the config file or the
environment), never sees personal data (payer details arrive sealed and are shown
only in the masked form the wallet chose; tokens are never returned) and never has
unbounded spending power: per-call and per-day caps per currency, a cap on the
refunded share of a payment, and a human confirmation (MCP elicitation) for large
refunds, refused when the client cannot ask one. Every mutating tool takes or
generates an idempotency key, so a retried call never pays or refunds twice. Tool
annotations are set, and enforced here too: read-only mode and the allow-list
decide which tools exist, and a call to any other tool, or with an argument the
tool does not declare, is refused before it runs. Every call is audited."""


import json
import secrets
from typing import Annotated, Any

import httpx
from mcp.server import MCPServer
from mcp.server.mcpserver import (
    AcceptedElicitation,
    Context,
    DeclinedElicitation,
    Elicit,
    ElicitationResult,
    Resolve,
)
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from veilpay.crypto.digest import sha256
from veilpay.errors import ConfigError, DecryptionError, GatewayUnavailable, InvalidInput, SignatureError
from veilpay.mcp.config import McpConfig
from veilpay.mcp.guard import AUDITED, AuditLog, GuardState
from veilpay.sdk import AsyncGatewayClient, PublicEntry, load_party
from veilpay.sdk.authority import load_authority, pinned_privacy
from veilpay.sdk.client import ApiResponse
from veilpay.sdk.money import MINOR_UNITS

__all__ = ["READ_TOOLS", "TOOLS", "WRITE_TOOLS", "build_server"]

READ_TOOLS = ("query_payment", "query_refund", "list_payments", "settlement_summary")
WRITE_TOOLS = ("create_payment", "cancel_payment", "create_refund")
TOOLS = WRITE_TOOLS + READ_TOOLS
INVALID_PARAMS = -32602

Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. JPY")]
Value = Annotated[str, Field(pattern=r"^[1-9][0-9]{0,15}$", description="amount in minor units, e.g. '1200' for JPY 1200")]
Key = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,64}$",
                           description="idempotency key: send the same key to retry safely; omit to get a new one")]
GatewayRef = Annotated[str, Field(pattern=r"^[a-z]{3}_[0-9a-f]{32}$")]
RequestRef = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")]


class Money(BaseModel):
    currency: str
    value: str


class Customer(BaseModel):
    """The payer as the wallet chose to show them to the merchant: masked."""
    wallet: str = ""
    displayCustomerId: str = ""  # noqa: N815 - the wire name
    name: str = ""


class PaymentOut(BaseModel):
    status: str = Field(description="S success, F failed, U unknown (ask again with query_payment)")
    resultCode: str  # noqa: N815
    resultMessage: str = ""  # noqa: N815
    paymentId: str | None = None  # noqa: N815
    paymentRequestId: str | None = None  # noqa: N815
    idempotencyKey: str | None = None  # noqa: N815
    amount: Money | None = None
    paymentStatus: str | None = None  # noqa: N815
    refundedAmount: Money | None = None  # noqa: N815
    customer: Customer | None = None


class RefundOut(BaseModel):
    status: str
    resultCode: str  # noqa: N815
    resultMessage: str = ""  # noqa: N815
    refundId: str | None = None  # noqa: N815
    refundRequestId: str | None = None  # noqa: N815
    paymentId: str | None = None  # noqa: N815
    idempotencyKey: str | None = None  # noqa: N815
    amount: Money | None = None


class PaymentLine(BaseModel):
    paymentId: str  # noqa: N815
    paymentRequestId: str  # noqa: N815
    amount: Money
    paymentStatus: str  # noqa: N815
    resultCode: str  # noqa: N815
    refundedAmount: Money | None = None  # noqa: N815 - absent where amounts are hidden from the gateway
    refundCount: int | None = None  # noqa: N815
    createTime: str | None = None  # noqa: N815


class PaymentPage(BaseModel):
    payments: list[PaymentLine]
    nextPageToken: str | None = None  # noqa: N815


class SettlementLine(BaseModel):
    currency: str
    paymentCount: int  # noqa: N815
    paymentTotal: Money  # noqa: N815
    refundCount: int  # noqa: N815
    refundTotal: Money  # noqa: N815
    netTotal: Money  # noqa: N815


class Settlement(BaseModel):
    settlementDate: str  # noqa: N815
    summaries: list[SettlementLine]


class Confirm(BaseModel):
    confirm: bool = Field(description="true to issue this refund")


def _confirmed(answer: Any) -> bool:
    """True for an accepted confirmation (the resolver's own answer may arrive wrapped)."""
    while isinstance(answer, AcceptedElicitation):
        answer = answer.data
    return isinstance(answer, Confirm) and answer.confirm


def _fingerprint(tool: str, args: dict[str, Any]) -> str:
    return sha256(json.dumps([tool, args], sort_keys=True).encode()).hex()


def build_server(cfg: McpConfig, tools: set[str] | None = None, read_only: bool = False,
                 transport: httpx.AsyncBaseTransport | None = None) -> MCPServer:
    """The MCP server for the acquirer in ``cfg``. ``tools`` is the allow-list (default:
    all); ``read_only`` removes every mutating tool; ``transport`` routes the SDK's
    calls (tests)."""
    unknown = (tools or set()) - set(TOOLS)
    if unknown:
        raise ConfigError(f"unknown tools {sorted(unknown)}; known: {', '.join(TOOLS)}")
    enabled = [t for t in TOOLS if (tools is None or t in tools) and not (read_only and t in WRITE_TOOLS)]
    keys = load_party(cfg.keys)
    if keys.public.role != "acqp":
        raise ConfigError(f"{cfg.keys}: the MCP server acts for an acquirer (role acqp), not {keys.public.role!r}")
    try:
        gateway = PublicEntry.from_json(json.loads(cfg.gateway_key.read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{cfg.gateway_key}: {exc}") from exc
    client = AsyncGatewayClient(keys, cfg.gateway_url, gateway, transport=transport, pets=cfg.pets,
                                authority=load_authority(cfg.authority), privacy=pinned_privacy(cfg.privacy, "mcp"),
                                log_state=cfg.state.with_name(cfg.state.stem + "-key-log.json"))
    state = GuardState(cfg.state)
    audit = AuditLog(cfg.audit_log)
    declared: dict[str, set[str]] = {}

    def who(ctx: Context | None) -> str:
        name = "unknown-client"
        try:
            info = ctx.session.client_params.client_info if ctx is not None and ctx.session.client_params else None
            name = info.name if info else name
        except (AttributeError, LookupError, ValueError):
            pass
        return f"{keys.id}/{name}"[:120]

    def refuse(tool: str, reason: str, ctx: Context | None, **fields: Any) -> ToolError:
        audit.write(tool=tool, outcome="refused", reason=reason, client=who(ctx), **fields)
        return ToolError(f"refused: {reason}")

    async def strict_arguments(mctx: Any, call_next: Any) -> Any:
        # Server-side enforcement of the tool list and of each tool's declared arguments.
        if mctx.method == "tools/call" and isinstance(mctx.params, dict):
            name = mctx.params.get("name")
            args = mctx.params.get("arguments") or {}
            if name not in declared:
                audit.write(tool=str(name)[:40], outcome="refused", reason="tool not enabled on this server")
                raise MCPError(INVALID_PARAMS, f"tool {str(name)[:40]!r} is not enabled on this server")
            extra = sorted(set(args) - declared[name]) if isinstance(args, dict) else ["<not an object>"]
            if extra:
                audit.write(tool=name, outcome="refused", reason=f"undeclared arguments {extra[:5]}")
                raise MCPError(INVALID_PARAMS, f"{name}: arguments not accepted: {', '.join(map(str, extra[:5]))}")
            # Every call is audited: when the tool body did not write its own line (its
            # arguments failed the schema, or it crashed), this one does.
            mark = AUDITED.set([False])
            try:
                result = await call_next(mctx)
            except Exception:
                audit.write(tool=name, outcome="error", reason="the call failed")
                raise
            finally:
                written = AUDITED.get()[0]
                AUDITED.reset(mark)
            if not written:
                failed = bool(getattr(result, "is_error", False) or
                              (isinstance(result, dict) and result.get("isError")))
                asking = type(result).__name__ == "InputRequiredResult" or (
                    isinstance(result, dict) and "inputRequests" in result)
                audit.write(tool=name, outcome="asked the user" if asking else "refused" if failed else "ok",
                            reason="arguments failed the tool's schema" if failed and not asking else None)
            return result
        return await call_next(mctx)

    srv: MCPServer = MCPServer(
        "veilpay-acquirer", version="1",
        instructions=("Take payments and refunds for this merchant acquirer through the veilpay gateway. Amounts are "
                      "strings of minor units. Reuse an idempotency key to retry; results with status U are not final."),
        middleware=[strict_arguments])  # type: ignore[list-item]

    async def gateway_call(tool: str, ctx: Context | None, fn: Any, *args: Any, **kw: Any) -> ApiResponse:
        try:
            return await fn(*args, **kw)
        except GatewayUnavailable as exc:
            audit.write(tool=tool, outcome="error", reason="gateway unavailable", client=who(ctx))
            raise ToolError("the gateway did not answer; retry with the same idempotency key") from exc
        except SignatureError as exc:
            audit.write(tool=tool, outcome="error", reason="unverifiable gateway answer", client=who(ctx))
            raise ToolError("the gateway's answer failed verification; not trusted") from exc
        except InvalidInput as exc:
            raise refuse(tool, str(exc), ctx) from exc

    def customer(ans: ApiResponse) -> Customer | None:
        try:
            info = ans.customer_info()
        except DecryptionError:
            return None
        if not info:
            return None
        return Customer(wallet=str(info.get("pspName", ""))[:40],
                        displayCustomerId=str(info.get("displayCustomerId", ""))[:12],
                        name=str(info.get("customerName", ""))[:40])

    def payment_out(ans: ApiResponse, key: str | None = None) -> PaymentOut:
        b = ans.body
        res = b.get("paymentResult") or ans.result
        amt = b.get("paymentAmount")
        ref = b.get("refundedAmount")
        return PaymentOut(status=str(res.get("resultStatus", "")), resultCode=str(res.get("resultCode", "")),
                          resultMessage=str(res.get("resultMessage", ""))[:200], paymentId=b.get("paymentId"),
                          paymentRequestId=b.get("paymentRequestId"), idempotencyKey=key,
                          amount=Money(**amt) if amt else None, paymentStatus=b.get("paymentStatus"),
                          refundedAmount=Money(**ref) if ref else None, customer=customer(ans))

    def refund_out(ans: ApiResponse, key: str | None = None) -> RefundOut:
        b = ans.body
        res = b.get("refundResult") or ans.result
        amt = b.get("refundAmount")
        return RefundOut(status=str(res.get("resultStatus", "")), resultCode=str(res.get("resultCode", "")),
                         resultMessage=str(res.get("resultMessage", ""))[:200], refundId=b.get("refundId"),
                         refundRequestId=b.get("refundRequestId"), paymentId=b.get("paymentId"), idempotencyKey=key,
                         amount=Money(**amt) if amt else None)

    def begin(tool: str, idempotency_key: str | None, args: dict[str, Any],
              ctx: Context | None) -> tuple[str, str, dict[str, Any] | None]:
        """(key, "new" or "same", the stored first result) for a mutating call; a key
        reused for another call is refused; a repeat with a stored result is audited."""
        key = idempotency_key or secrets.token_hex(16)
        seen, stored = state.claim(key, tool, _fingerprint(tool, args))
        if seen == "conflict":
            raise refuse(tool, "this idempotency key was used for a different call", ctx, idempotencyKey=key)
        if stored is not None:
            audit.write(tool=tool, outcome="repeat", code=stored.get("resultCode"), idempotencyKey=key,
                        client=who(ctx))
        return key, seen, stored

    def check_cap(tool: str, currency: str, value: int, ctx: Context) -> None:
        if currency not in MINOR_UNITS:
            raise refuse(tool, f"{currency} is not a supported currency", ctx, currency=currency)
        cap = cfg.per_call.get(currency)
        if cap is None:
            raise refuse(tool, f"no limit is configured for {currency}, so this server takes no {currency} payments",
                         ctx, currency=currency, value=str(value))
        if value > cap:
            raise refuse(tool, f"{currency} {value} is over the per-call limit of {cap} (minor units)", ctx,
                         currency=currency, value=str(value))

    def ask_refund_confirmation(currency: str, value: str, ctx: Context) -> Any:
        threshold = cfg.confirm_refund_above.get(currency)
        if threshold is None or not (value.isascii() and value.isdigit()) or int(value) <= threshold:
            return AcceptedElicitation(data=Confirm(confirm=True))
        caps = ctx.session.client_capabilities
        if not (caps and caps.elicitation):
            return DeclinedElicitation()
        return Elicit(f"Confirm a refund of {currency} {value} (minor units)? It is above the {currency} {threshold} "
                      "limit that an assistant may refund on its own.", Confirm)

    async def create_payment(payment_code: Annotated[str, Field(pattern=r"^[0-9]{8,32}$",
                                                                description="the code scanned from the payer's wallet")],
                             currency: Currency, value: Value,
                             order_description: Annotated[str, Field(max_length=200)] = "",
                             idempotency_key: Key | None = None, ctx: Context | None = None) -> PaymentOut:
        """Charge the payer's wallet for an order. Retrying with the same idempotency_key never charges twice."""
        tool = "create_payment"
        key, seen, stored = begin(tool, idempotency_key, {"code": payment_code, "currency": currency, "value": value,
                                                          "d": order_description}, ctx)
        if stored is not None:
            return PaymentOut(**stored)
        req_id = f"mcp-{key}"
        v = int(value)

        def settle(out: PaymentOut) -> PaymentOut:
            # A final answer frees a failed payment's reservation and is kept for repeats.
            if out.status == "F":
                state.release(currency, v)
            if out.status in ("S", "F"):
                state.record(key, out.model_dump())
            return out

        reserved = False
        if seen == "same":
            # The first call passed the caps and reserved, but its outcome was not recorded.
            ans = await gateway_call(tool, ctx, client.inquiry_payment, payment_request_id=req_id)
            if ans.code != "ORDER_NOT_EXIST":
                out = settle(payment_out(ans, key))
                audit.write(tool=tool, outcome="repeat", code=out.resultCode, idempotencyKey=key,
                            paymentRequestId=req_id, client=who(ctx))
                return out
            reserved = True
        if not reserved:
            try:
                check_cap(tool, currency, v, ctx)  # type: ignore[arg-type]
                if not state.reserve(currency, v, cfg.per_day.get(currency, 0)):
                    raise refuse(tool, f"{currency} {v} would pass today's limit of {cfg.per_day.get(currency, 0)} "
                                 f"(spent {state.spent(currency)})", ctx, currency=currency, value=value)
            except ToolError:
                state.forget(key)
                raise
        ans = await gateway_call(tool, ctx, client.pay, req_id, {"currency": currency, "value": value}, payment_code,
                                 {"orderId": req_id, "goods": order_description})
        out = settle(payment_out(ans, key))
        audit.write(tool=tool, outcome="ok", code=out.resultCode, currency=currency, value=value,
                    paymentId=out.paymentId, paymentRequestId=req_id, idempotencyKey=key, client=who(ctx))
        return out

    async def query_payment(payment_id: GatewayRef | None = None, payment_request_id: RequestRef | None = None,
                            ctx: Context | None = None) -> PaymentOut:
        """The status of a payment: give its paymentId or its paymentRequestId."""
        ans = await gateway_call("query_payment", ctx, client.inquiry_payment, payment_id=payment_id,
                                 payment_request_id=payment_request_id)
        audit.write(tool="query_payment", outcome="ok", code=ans.code, paymentId=payment_id,
                    paymentRequestId=payment_request_id, client=who(ctx))
        if ans.code != "SUCCESS":
            return PaymentOut(status="F", resultCode=ans.code, resultMessage=str(ans.result.get("resultMessage", "")))
        return payment_out(ans)

    async def cancel_payment(payment_id: GatewayRef | None = None, payment_request_id: RequestRef | None = None,
                             idempotency_key: Key | None = None, ctx: Context | None = None) -> PaymentOut:
        """Cancel a payment within the cancel window; the payer gets the money back. Safe to repeat."""
        tool = "cancel_payment"
        key, _, stored = begin(tool, idempotency_key, {"p": payment_id, "r": payment_request_id}, ctx)
        if stored is not None:
            return PaymentOut(**stored)
        ans = await gateway_call(tool, ctx, client.cancel_payment, payment_id=payment_id,
                                 payment_request_id=payment_request_id)
        out = PaymentOut(status=str(ans.result.get("resultStatus", "")), resultCode=ans.code,
                         resultMessage=str(ans.result.get("resultMessage", ""))[:200],
                         paymentId=ans.body.get("paymentId"), paymentRequestId=ans.body.get("paymentRequestId"),
                         idempotencyKey=key)
        if out.status in ("S", "F"):
            state.record(key, out.model_dump())
        audit.write(tool=tool, outcome="ok", code=ans.code, paymentId=out.paymentId,
                    paymentRequestId=out.paymentRequestId, idempotencyKey=key, client=who(ctx))
        return out

    async def create_refund(currency: Currency, value: Value,
                            confirmation: Annotated[ElicitationResult[Confirm], Resolve(ask_refund_confirmation)],
                            payment_id: GatewayRef | None = None, payment_request_id: RequestRef | None = None,
                            idempotency_key: Key | None = None, ctx: Context | None = None) -> RefundOut:
        """Refund all or part of a successful payment. Large refunds need the user's confirmation."""
        tool = "create_refund"
        key, _, stored = begin(tool, idempotency_key, {"p": payment_id, "r": payment_request_id, "currency": currency,
                                                       "value": value}, ctx)
        if stored is not None:
            return RefundOut(**stored)
        req_id = f"mcp-{key}"
        try:
            if not _confirmed(confirmation):
                reason = ("the refund is above the confirmation limit and the user did not confirm it"
                          if ctx is not None and ctx.session.client_capabilities
                          and ctx.session.client_capabilities.elicitation
                          else "the refund is above the confirmation limit and this client cannot ask the user")
                raise refuse(tool, reason, ctx, currency=currency, value=value, idempotencyKey=key)
            pay = await gateway_call(tool, ctx, client.inquiry_payment, payment_id=payment_id,
                                     payment_request_id=payment_request_id)
            if pay.code != "SUCCESS":
                raise refuse(tool, f"payment not found ({pay.code})", ctx)
            amount = int(pay.body["paymentAmount"]["value"])
            if "refundedAmount" in pay.body:
                refunded = int(pay.body["refundedAmount"]["value"])
            else:  # hidden amounts: the payment's refunds, each opened by the SDK
                refunded = sum(int(r["refundAmount"]["value"]) for r in pay.body.get("refunds", []))
            if pay.body["paymentAmount"]["currency"] != currency:
                raise refuse(tool, f"refund in {pay.body['paymentAmount']['currency']}, the payment's currency", ctx)
            limit = int(amount * cfg.refund_share)
            if refunded + int(value) > limit:
                raise refuse(tool, f"refunds would total {refunded + int(value)} of {amount}, over the allowed "
                             f"{cfg.refund_share:.0%} ({limit})", ctx, currency=currency, value=value,
                             paymentId=pay.body.get("paymentId"))
        except ToolError:
            state.forget(key)
            raise
        ans = await gateway_call(tool, ctx, client.refund, req_id, {"currency": currency, "value": value},
                                 payment_id=pay.body["paymentId"])
        out = refund_out(ans, key)
        if out.status in ("S", "F"):
            state.record(key, out.model_dump())
        audit.write(tool=tool, outcome="ok", code=out.resultCode, currency=currency, value=value,
                    paymentId=out.paymentId, refundId=out.refundId, refundRequestId=req_id, idempotencyKey=key,
                    client=who(ctx))
        return out

    async def query_refund(refund_id: GatewayRef | None = None, refund_request_id: RequestRef | None = None,
                           ctx: Context | None = None) -> RefundOut:
        """The status of a refund: give its refundId or its refundRequestId."""
        ans = await gateway_call("query_refund", ctx, client.inquiry_refund, refund_id=refund_id,
                                 refund_request_id=refund_request_id)
        audit.write(tool="query_refund", outcome="ok", code=ans.code, refundId=refund_id,
                    refundRequestId=refund_request_id, client=who(ctx))
        if ans.code != "SUCCESS":
            return RefundOut(status="F", resultCode=ans.code, resultMessage=str(ans.result.get("resultMessage", "")))
        return refund_out(ans)

    async def list_payments(page_size: Annotated[int, Field(ge=1, le=100)] = 20,
                            page_token: Annotated[str, Field(max_length=80)] | None = None,
                            ctx: Context | None = None) -> PaymentPage:
        """Recent payments, newest first; pass next_page_token back as page_token for more."""
        ans = await gateway_call("list_payments", ctx, client.list_payments, page_size, page_token)
        audit.write(tool="list_payments", outcome="ok", code=ans.code, client=who(ctx))
        if ans.code != "SUCCESS":
            raise ToolError(f"{ans.code}: {ans.result.get('resultMessage', '')}")
        return PaymentPage(payments=[PaymentLine(
            paymentId=p["paymentId"], paymentRequestId=p["paymentRequestId"], amount=Money(**p["paymentAmount"]),
            paymentStatus=p["paymentStatus"], resultCode=p["paymentResult"]["resultCode"],
            refundedAmount=Money(**p["refundedAmount"]) if "refundedAmount" in p else None,
            refundCount=p.get("refundCount"), createTime=p.get("createTime"))
            for p in ans.body.get("payments", [])], nextPageToken=ans.body.get("nextPageToken"))

    async def settlement_summary(settlement_date: Annotated[str, Field(
            pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)?$",
            description="settlement period: a UTC day YYYY-MM-DD, or a shorter cycle's start YYYY-MM-DDTHH:MM:SSZ")],
                                 ctx: Context | None = None) -> Settlement:
        """Per currency: count and totals of one settled period's successful payments and refunds, and the net."""
        ans = await gateway_call("settlement_summary", ctx, client.settlement_summary, settlement_date)
        audit.write(tool="settlement_summary", outcome="ok", code=ans.code, client=who(ctx))
        if ans.code != "SUCCESS":
            raise ToolError(f"{ans.code}: {ans.result.get('resultMessage', '')}")
        return Settlement(settlementDate=settlement_date, summaries=[SettlementLine(
            currency=s["currency"], paymentCount=s["paymentCount"], paymentTotal=Money(**s["paymentTotal"]),
            refundCount=s["refundCount"], refundTotal=Money(**s["refundTotal"]), netTotal=Money(**s["netTotal"]))
            for s in ans.body.get("summaries", [])])

    read = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=True)
    specs: dict[str, tuple[Any, ToolAnnotations, set[str]]] = {
        "create_payment": (create_payment, ToolAnnotations(read_only_hint=False, destructive_hint=False,
                                                           idempotent_hint=True, open_world_hint=True),
                           {"payment_code", "currency", "value", "order_description", "idempotency_key"}),
        "cancel_payment": (cancel_payment, ToolAnnotations(read_only_hint=False, destructive_hint=True,
                                                           idempotent_hint=True, open_world_hint=True),
                           {"payment_id", "payment_request_id", "idempotency_key"}),
        "create_refund": (create_refund, ToolAnnotations(read_only_hint=False, destructive_hint=True,
                                                         idempotent_hint=True, open_world_hint=True),
                          {"currency", "value", "payment_id", "payment_request_id", "idempotency_key"}),
        "query_payment": (query_payment, read, {"payment_id", "payment_request_id"}),
        "query_refund": (query_refund, read, {"refund_id", "refund_request_id"}),
        "list_payments": (list_payments, read, {"page_size", "page_token"}),
        "settlement_summary": (settlement_summary, read, {"settlement_date"}),
    }
    for name in enabled:
        fn, ann, args = specs[name]
        srv.tool(name=name, annotations=ann, structured_output=True)(fn)
        declared[name] = args
    srv._veilpay_client = client  # type: ignore[attr-defined]
    return srv
