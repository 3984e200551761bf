"""What the MCP layer adds to a payment: create_payment through the real MCP client
over stdio (`veilpay mcp`) vs the same payment straight through the partner SDK,
one at a time against the real gateway processes. Prints one JSON line.
(Not bench/mcp.py: that name would shadow the mcp package when run as a script.)"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


async def _mcp_calls(config: str, codes: list[str]) -> tuple[list[float], dict[str, int]]:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    params = StdioServerParameters(command=sys.executable, args=["-m", "veilpay.cli.main", "mcp", "--partner-config",
                                                                 config])
    lat: list[float] = []
    codes_seen: dict[str, int] = {}
    async with Client(params) as c:
        for code in codes:
            t = time.perf_counter()
            r = await c.call_tool("create_payment", {"payment_code": code, "currency": "JPY", "value": "500"})
            lat.append(time.perf_counter() - t)
            k = "error" if r.is_error else r.structured_content["resultCode"]
            codes_seen[k] = codes_seen.get(k, 0) + 1
    return lat, codes_seen


def main() -> None:
    from veilpay.cli.localnet import LocalNet

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--payments", type=int, default=300)
    a = ap.parse_args()
    n = a.payments
    with tempfile.TemporaryDirectory() as tmp, LocalNet(Path(tmp)) as net:
        net.start_all()
        net.admin("mpp-1", "POST", "/admin/wallets", {"userId": "b", "name": "B", "currency": "PHP", "balance": 10**14})
        codes = net.admin("mpp-1", "POST", "/admin/codes", {"userId": "b", "count": 2 * n + 20})["codes"]
        cfg = Path(tmp) / "acqp-mcp.toml"
        cfg.write_text(f'[partner]\nkeys = "keys/acqp-1"\ngateway_key = "keys/gateway/public.json"\n'
                       f'gateway_url = "{net.url["gateway"]}"\nauthority = "authority/authority.json"\n'
                       '[mcp]\nstate = "mcp/state.db"\naudit_log = "mcp/audit.log"\n'
                       f'[mcp.per_call]\nJPY = 1000\n[mcp.per_day]\nJPY = {10**12}\n')
        sdk_lat: list[float] = []
        with net.client() as c:
            for i, code in enumerate(codes[:n + 10]):
                t = time.perf_counter()
                c.pay(f"sdk-{i}", {"currency": "JPY", "value": "500"}, code, {"orderId": str(i)})
                if i >= 10:
                    sdk_lat.append(time.perf_counter() - t)
        mcp_lat, results = asyncio.run(_mcp_calls(str(cfg), codes[n + 10:]))
        mcp_lat = mcp_lat[10:]
    row: dict[str, Any] = {
        "bench": "mcp_create_payment", "payments": n, "transport": "stdio",
        "mcp_p50_ms": round(1000 * statistics.median(mcp_lat), 2),
        "mcp_p99_ms": round(1000 * sorted(mcp_lat)[int(0.99 * (len(mcp_lat) - 1))], 2),
        "sdk_p50_ms": round(1000 * statistics.median(sdk_lat), 2),
        "mcp_overhead_p50_ms": round(1000 * (statistics.median(mcp_lat) - statistics.median(sdk_lat)), 2),
        "results": results}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
