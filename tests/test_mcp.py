"""The MCP server for an acquirer, through the official MCP client: in process against
the in-process payment network, and over stdio against the real gateway processes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from gateway_net import Net, run
from mcp import Client
from mcp.shared.exceptions import MCPError

from veilpay.mcp.config import McpConfig, load_mcp_config
from veilpay.mcp.server import TOOLS, build_server

LIMITS: dict[str, Any] = {"per_call": {"JPY": 5000}, "per_day": {"JPY": 8000}, "refund_per_day": {"JPY": 8000},
                          "confirm_refund_above": {"JPY": 2000}, "refund_share": 0.9}


def _cfg(tmp: Path, net_root: Path, gateway_url: str = "http://gateway.test", **limits: Any) -> McpConfig:
    return McpConfig(keys=net_root / "keys" / "acqp-1", gateway_key=net_root / "keys" / "gateway" / "public.json",
                     gateway_url=gateway_url, state=tmp / "mcp" / "state.db", audit_log=tmp / "mcp" / "audit.log",
                     authority=net_root / "authority" / "authority.json", **{**LIMITS, **limits})


def _out(r: Any) -> dict[str, Any]:
    assert not r.is_error, r.content
    return r.structured_content


def _error(r: Any) -> str:
    assert r.is_error
    return r.content[0].text


def _audit(tmp: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp / "mcp" / "audit.log").read_text().splitlines()]


async def _confirm_yes(context: Any, params: Any) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"confirm": True})


async def _confirm_no(context: Any, params: Any) -> types.ElicitResult:
    return types.ElicitResult(action="decline")


def test_tools_annotations_and_schemas(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path)
        async with Client(build_server(_cfg(tmp_path, tmp_path), transport=net.router)) as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
        assert set(tools) == set(TOOLS)
        for name in ("query_payment", "query_refund", "list_payments", "settlement_summary"):
            assert tools[name].annotations.read_only_hint is True
        for name in ("cancel_payment", "create_refund"):
            assert tools[name].annotations.destructive_hint is True and tools[name].annotations.read_only_hint is False
        assert tools["create_payment"].annotations.idempotent_hint is True
        assert "idempotency_key" in tools["create_payment"].input_schema["properties"]
        for name in ("create_refund", "cancel_payment"):  # filled by the server, never by the assistant
            assert not {"confirmation", "plan"} & set(tools[name].input_schema["properties"])
        assert tools["create_payment"].output_schema["properties"]["status"]
    run(body())


def test_assistant_flow_limits_and_idempotency(tmp_path: Path) -> None:
    import datetime as dt

    async def body() -> None:
        net = Net(tmp_path)
        await net.wallet("u1", 10**7)
        srv = build_server(_cfg(tmp_path, tmp_path), transport=net.router)
        async with Client(srv, elicitation_callback=_confirm_yes) as c:
            code = await net.code("u1")
            paid = _out(await c.call_tool("create_payment", {"payment_code": code, "currency": "JPY", "value": "4000",
                                                             "order_description": "tea", "idempotency_key": "key-00001"}))
            assert paid["status"] == "S" and paid["untrusted"]["customer"]["displayCustomerId"] == "****u1"
            assert "tk_" not in json.dumps(paid) and "Maria" not in json.dumps(paid)
            again = _out(await c.call_tool("create_payment", {"payment_code": code, "currency": "JPY", "value": "4000",
                                                              "order_description": "tea", "idempotency_key": "key-00001"}))
            assert again["paymentId"] == paid["paymentId"]
            assert await net.balance("u1") == 10**7 - 4000 * 38
            conflict = await c.call_tool("create_payment", {"payment_code": code, "currency": "JPY", "value": "10",
                                                            "idempotency_key": "key-00001"})
            assert "different call" in _error(conflict)
            over = await c.call_tool("create_payment", {"payment_code": await net.code("u1"), "currency": "JPY",
                                                        "value": "5001"})
            assert "per-call limit" in _error(over)
            day = await c.call_tool("create_payment", {"payment_code": await net.code("u1"), "currency": "JPY",
                                                       "value": "4500"})
            assert "today's limit" in _error(day)
            usd = await c.call_tool("create_payment", {"payment_code": await net.code("u1"), "currency": "USD",
                                                       "value": "100"})
            assert "no limit is configured for USD" in _error(usd)
            q = _out(await c.call_tool("query_payment", {"payment_id": paid["paymentId"]}))
            assert q["paymentStatus"] == "SUCCESS"
            small = _out(await c.call_tool("create_refund", {"payment_id": paid["paymentId"], "currency": "JPY",
                                                             "value": "1000", "idempotency_key": "refund-001"}))
            assert small["status"] == "S"
            share = await c.call_tool("create_refund", {"payment_id": paid["paymentId"], "currency": "JPY",
                                                        "value": "2700"})
            assert "over the allowed 90%" in _error(share)
            big = _out(await c.call_tool("create_refund", {"payment_request_id": paid["paymentRequestId"],
                                                           "currency": "JPY", "value": "2500"}))
            assert big["status"] == "S"  # above the confirmation limit, and the user said yes
            qr = _out(await c.call_tool("query_refund", {"refund_request_id": small["refundRequestId"]}))
            assert qr["status"] == "S"
            page = _out(await c.call_tool("list_payments", {"page_size": 5}))
            assert [p["paymentId"] for p in page["payments"]] == [paid["paymentId"]]
            today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
            s = _out(await c.call_tool("settlement_summary", {"settlement_date": today}))
            assert s["summaries"][0]["netTotal"] == {"currency": "JPY", "value": "500"}
            with pytest.raises(MCPError):
                await c.call_tool("query_payment", {"payment_id": paid["paymentId"], "gateway_url": "http://evil"})
            bad = await c.call_tool("create_payment", {"payment_code": "123", "currency": "JPY", "value": "-5"})
            assert bad.is_error
        async with Client(srv, elicitation_callback=_confirm_no) as c:
            r = await net.code("u1")
            p2 = _out(await c.call_tool("create_payment", {"payment_code": r, "currency": "JPY", "value": "3000"}))
            assert p2["status"] == "S"
            no = await c.call_tool("create_refund", {"payment_id": p2["paymentId"], "currency": "JPY", "value": "2500"})
            assert "did not confirm" in _error(no)
        async with Client(srv) as c:
            p3 = _out(await c.call_tool("create_payment", {"payment_code": await net.code("u1"), "currency": "JPY",
                                                           "value": "100"}))
            first = _out(await c.call_tool("cancel_payment", {"payment_id": p3["paymentId"],
                                                              "idempotency_key": "cancel-0001"}))
            repeat = _out(await c.call_tool("cancel_payment", {"payment_id": p3["paymentId"],
                                                               "idempotency_key": "cancel-0001"}))
            assert first == repeat and first["status"] == "S"
        async with Client(srv) as c:  # no elicitation support: large refunds are refused
            no = await c.call_tool("create_refund", {"payment_id": p2["paymentId"], "currency": "JPY", "value": "2500"})
            assert "cannot ask the user" in _error(no)
            ok = _out(await c.call_tool("create_refund", {"payment_id": p2["paymentId"], "currency": "JPY",
                                                          "value": "100"}))
            assert ok["status"] == "S"
        log = _audit(tmp_path)
        assert {e["outcome"] for e in log} >= {"ok", "refused", "repeat"}
        text = (tmp_path / "mcp" / "audit.log").read_text()
        assert code not in text and "tea" not in text  # no payment code, no order description
        assert any(e.get("reason", "").startswith("undeclared arguments") for e in log)
        assert any(e.get("reason") == "arguments failed the tool's schema" for e in log)
    run(body())


def test_allow_list_and_read_only(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path)
        ro = build_server(_cfg(tmp_path, tmp_path), read_only=True, transport=net.router)
        async with Client(ro) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert names == {"query_payment", "query_refund", "list_payments", "settlement_summary"}
            with pytest.raises(MCPError):
                await c.call_tool("create_payment", {"payment_code": "2810000000000001", "currency": "JPY",
                                                     "value": "1"})
        only = build_server(_cfg(tmp_path, tmp_path), tools={"query_payment", "create_refund"}, transport=net.router)
        async with Client(only) as c:
            assert {t.name for t in (await c.list_tools()).tools} == {"query_payment", "create_refund"}
            with pytest.raises(MCPError):
                await c.call_tool("list_payments", {})
        with pytest.raises(Exception, match="unknown tools"):
            build_server(_cfg(tmp_path, tmp_path), tools={"drain_account"}, transport=net.router)
        assert any(e["reason"] == "tool not enabled on this server" for e in _audit(tmp_path))
    run(body())


def test_config_file(tmp_path: Path) -> None:
    (tmp_path / "acqp.toml").write_text(
        '[partner]\nkeys = "keys/acqp-1"\ngateway_key = "keys/gateway/public.json"\ngateway_url = "http://gw"\n'
        'authority = "authority/authority.json"\n'
        '[mcp]\nrefund_share = 0.5\n[mcp.per_call]\nJPY = 100\n[mcp.per_day]\nJPY = 1000\n')
    cfg = load_mcp_config(tmp_path / "acqp.toml")
    assert cfg.per_call == {"JPY": 100} and cfg.refund_share == 0.5 and cfg.keys == tmp_path / "keys" / "acqp-1"
    (tmp_path / "bad.toml").write_text('[partner]\nkeys = "k"\ngateway_key = "g"\ngateway_url = "u"\nauthority = "a"\n'
                                       '[mcp.per_call]\nXXX = 1\n')
    with pytest.raises(Exception, match="ISO 4217"):
        load_mcp_config(tmp_path / "bad.toml")


@pytest.mark.tcp
def test_stdio_end_to_end_against_the_real_gateway(tmp_path: Path) -> None:
    import datetime as dt

    from mcp.client.stdio import StdioServerParameters

    from veilpay.cli.localnet import LocalNet

    with LocalNet(tmp_path / "net") as net:
        net.start_all()
        net.admin("mpp-1", "POST", "/admin/wallets", {"userId": "w1", "name": "Kim", "currency": "PHP", "balance": 10**8})
        code = net.admin("mpp-1", "POST", "/admin/codes", {"userId": "w1"})["code"]
        root = tmp_path / "net"
        (tmp_path / "acqp.toml").write_text(
            f'[partner]\nkeys = "{root}/keys/acqp-1"\ngateway_key = "{root}/keys/gateway/public.json"\n'
            f'gateway_url = "{net.url["gateway"]}"\nauthority = "{root}/authority/authority.json"\n'
            '[mcp]\nstate = "state.db"\naudit_log = "audit.log"\n'
            '[mcp.per_call]\nJPY = 50000\n[mcp.per_day]\nJPY = 100000\n[mcp.refund_per_day]\nJPY = 50000\n'
            '[mcp.confirm_refund_above]\nJPY = 10000\n')
        params = StdioServerParameters(command=sys.executable, args=["-m", "veilpay.cli.main", "mcp", "--partner-config",
                                                                     str(tmp_path / "acqp.toml")])

        async def body() -> None:
            async with Client(params, elicitation_callback=_confirm_yes) as c:
                p = _out(await c.call_tool("create_payment", {"payment_code": code, "currency": "JPY", "value": "12000",
                                                              "order_description": "omakase"}))
                assert p["status"] == "S"
                q = _out(await c.call_tool("query_payment", {"payment_request_id": p["paymentRequestId"]}))
                assert q["paymentStatus"] == "SUCCESS"
                r = _out(await c.call_tool("create_refund", {"payment_id": p["paymentId"], "currency": "JPY",
                                                             "value": "11000"}))
                assert r["status"] == "S"
                qr = _out(await c.call_tool("query_refund", {"refund_id": r["refundId"]}))
                assert qr["resultCode"] == "SUCCESS"
                today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
                s = _out(await c.call_tool("settlement_summary", {"settlement_date": today}))
                assert s["summaries"][0]["netTotal"] == {"currency": "JPY", "value": "1000"}

        run(body())
        audit = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
        assert [(e["tool"], e["outcome"]) for e in audit] == [
            ("create_payment", "ok"), ("query_payment", "ok"), ("create_refund", "asked the user"),
            ("create_refund", "ok"), ("query_refund", "ok"), ("settlement_summary", "ok")]


@pytest.mark.tcp
def test_streamable_http_transport(tmp_path: Path) -> None:
    import subprocess
    import time

    import httpx

    from veilpay.cli.localnet import free_port
    from veilpay.sdk import create_party
    from veilpay.sdk.authority import create_authority

    create_party(tmp_path / "keys" / "gateway", "gateway", "gateway")
    create_party(tmp_path / "keys" / "acqp-1", "acqp-1", "acqp")
    create_authority(tmp_path / "authority", "test network")
    (tmp_path / "acqp.toml").write_text(
        '[partner]\nkeys = "keys/acqp-1"\ngateway_key = "keys/gateway/public.json"\ngateway_url = "http://127.0.0.1:9"\n'
        'authority = "authority/authority.json"\n'
        '[mcp.per_call]\nJPY = 100\n')
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "veilpay.cli.main", "mcp", "--partner-config",
                             str(tmp_path / "acqp.toml"), "--read-only", "--transport", "streamable-http",
                             "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=0.5)
                break
            except httpx.HTTPError:
                time.sleep(0.1)

        async def body() -> set[str]:
            async with Client(f"http://127.0.0.1:{port}/mcp") as c:
                return {t.name for t in (await c.list_tools()).tools}

        assert run(body()) == {"query_payment", "query_refund", "list_payments", "settlement_summary"}
    finally:
        proc.terminate()
        proc.wait(10)


def test_unknown_outcome_keeps_the_reservation_until_the_repeat_learns_it(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path, mpp_timeout_s=0.05)
        await net.wallet("poor", 10)  # the MPP will decline for lack of balance
        srv = build_server(_cfg(tmp_path, tmp_path), transport=net.router)
        code = await net.code("poor")
        args = {"payment_code": code, "currency": "JPY", "value": "4000", "idempotency_key": "unknown-01"}
        async with Client(srv) as c:
            net.router.down.add("mpp-1.test")
            first = _out(await c.call_tool("create_payment", args))
            assert first["status"] == "U"
            net.router.down.clear()
            again = _out(await c.call_tool("create_payment", args))
            assert (again["status"], again["resultCode"]) == ("F", "USER_BALANCE_NOT_ENOUGH")
            await net.wallet("rich", 10**7)
            ok = _out(await c.call_tool("create_payment", {"payment_code": await net.code("rich"), "currency": "JPY",
                                                           "value": "5000"}))
            assert ok["status"] == "S"  # 5000 + the freed 4000 would not fit under 8000
    run(body())
