"""The assistant part of the demo: a scripted AI-assistant session through the real
MCP client, over stdio, against ``veilpay mcp`` acting for the demo's acquirer."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from veilpay.cli.localnet import LocalNet, toml_value


def _show(r: Any) -> str:
    if r.is_error:
        return "REFUSED: " + r.content[0].text
    out = r.structured_content or {}
    keep = {k: out[k] for k in ("status", "resultCode", "paymentId", "refundId", "paymentStatus", "summaries",
                                "idempotencyKey", "untrusted") if out.get(k) is not None}
    if "untrusted" in keep:  # what other parties wrote (here the wallet's masked payer), shown apart
        keep["untrusted"] = {k: v for k, v in keep["untrusted"].items() if v is not None}
    for k in ("paymentId", "refundId"):
        if k in keep:
            keep[k] = keep[k][:12] + ".."
    return json.dumps(keep)


async def _session(net: LocalNet, config: str, code: str, code2: str, period: str) -> None:
    import mcp_types as types
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    async def human(_context: Any, params: Any) -> types.ElicitResult:
        print(f"    [server asks the human] {params.message}")
        print("    [human] yes")
        return types.ElicitResult(action="accept", content={"confirm": True})

    argv = ["-m", "veilpay.cli.main", "mcp", "--partner-config", config]
    params = StdioServerParameters(command=sys.executable, args=argv)
    async with Client(params, elicitation_callback=human) as c:  # type: ignore[arg-type]
        tools = [t.name for t in (await c.list_tools()).tools]
        print(f"  tools offered to the assistant: {', '.join(tools)}")
        steps: list[tuple[str, dict[str, Any]]] = [
            ("create_payment", {"payment_code": code, "currency": "JPY", "value": "18000",
                                "order_description": "kaiseki dinner for two", "idempotency_key": "demo-order-0001"}),
            ("create_payment", {"payment_code": code, "currency": "JPY", "value": "18000",
                                "order_description": "kaiseki dinner for two", "idempotency_key": "demo-order-0001"}),
            ("create_payment", {"payment_code": code2, "currency": "JPY", "value": "90000"}),
        ]
        paid: dict[str, Any] = {}
        for name, args in steps:
            r = await c.call_tool(name, args)
            print(f"  assistant -> {name}({', '.join(f'{k}={v}' for k, v in args.items() if k != 'payment_code')})")
            print(f"    server  -> {_show(r)}")
            if not r.is_error and not paid:
                paid = r.structured_content
        more = [
            ("query_payment", {"payment_id": paid["paymentId"]}),
            ("create_refund", {"payment_id": paid["paymentId"], "currency": "JPY", "value": "3000"}),
            ("create_refund", {"payment_id": paid["paymentId"], "currency": "JPY", "value": "12000"}),
            ("create_refund", {"payment_id": paid["paymentId"], "currency": "JPY", "value": "2500"}),
            ("settlement_summary", {"settlement_date": period}),
        ]
        for name, args in more:
            print(f"  assistant -> {name}({', '.join(f'{k}={v}' for k, v in args.items())})")
            print(f"    server  -> {_show(await c.call_tool(name, args))}")


def run_mcp_demo(net: LocalNet, period: str) -> None:
    """``period``: a settled period, whose summary the assistant asks for."""
    root = net.root
    net.admin("mpp-1", "POST", "/admin/wallets", {"userId": "w-2001", "name": "Lea Tan", "currency": "PHP",
                                                   "balance": 10_000_000})
    codes = net.admin("mpp-1", "POST", "/admin/codes", {"userId": "w-2001", "count": 2})["codes"]
    cfg = root / "acqp-mcp.toml"
    cfg.write_text(f'[partner]\nkeys = "keys/acqp-1"\ngateway_key = "keys/gateway/public.json"\n'
                   f'gateway_url = "{net.url["gateway"]}"\nauthority = "authority/authority.json"\n'
                   + ("[partner.privacy]\n" + "".join(f"{a} = {toml_value(b)}\n" for a, b in net.privacy.to_json().items())
                      if net.privacy else "")
                   + '[mcp]\nstate = "mcp/state.db"\naudit_log = "mcp/audit.log"\n'
                   'refund_share = 0.9\n[mcp.per_call]\nJPY = 50000\nSGD = 50000\n[mcp.per_day]\nJPY = 200000\n'
                   '[mcp.refund_per_day]\nJPY = 100000\n[mcp.confirm_refund_above]\nJPY = 10000\n')
    print("veilpay demo, part 2: an AI assistant takes a payment and refunds through `veilpay mcp` (stdio, real MCP "
          "client)")
    print("  limits: JPY 50000 a call, JPY 200000 a day taken and JPY 100000 sent back, refunds up to 90% of a payment,"
          " a human's yes once a payment's refunds pass JPY 10000")
    asyncio.run(_session(net, str(cfg), codes[0], codes[1], period))
    lines = (root / "mcp" / "audit.log").read_text().splitlines()
    print(f"  audit log ({len(lines)} lines, no payment codes or order text), last one: {lines[-1]}\n")
