"""An in-process payment network for tests: the gateway, two MPPs and two ACQPs as
ASGI apps joined by a routing transport (no sockets), each with its own keys and
SQLite file. ``down`` makes a host unreachable, as a crashed or partitioned peer.

``batch_notify`` gives acqp-1 a ``notifyBatchUrl``. ``privacy="semi2k"`` or ``"aby3"``
adds three privacy nodes (control APIs in the router; their MPC mesh over real TCP +
mutual TLS on loopback) and hides amounts. The nodes pin the four partners' keys and
run ``node_policy``; their clock is the system's plus ``node_offset_ms``, which
``close_today`` moves past today's close so that today can be settled."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import httpx

from veilpay.cli.demo import _free_port_base
from veilpay.errors import NodeError
from veilpay.gateway import create_app
from veilpay.gateway.config import GatewayConfig
from veilpay.net import provision_network
from veilpay.node.app import create_node_app
from veilpay.node.config import NodeConfig, NodePolicy, RiskPolicy
from veilpay.partners import create_acqp_app, create_mpp_app
from veilpay.partners.config import PartnerConfig, RiskSection
from veilpay.sdk import AsyncGatewayClient, create_party, load_party
from veilpay.sdk.authority import certify, create_authority
from veilpay.sdk.keys import PublicEntry
from veilpay.sdk.shares import Privacy
from veilpay.settings import PrivacySection


class Router(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.apps: dict[str, httpx.ASGITransport] = {}
        self.down: set[str] = set()
        self.log: list[tuple[str, str, bytes, bytes]] = []  # (host, path, request body, response body)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host in self.down:
            raise httpx.ConnectError(f"{host} is down", request=request)
        body = await request.aread()
        resp = await self.apps[host].handle_async_request(request)
        raw = await resp.aread()
        self.log.append((host, request.url.path, body, raw))
        return httpx.Response(resp.status_code, headers=resp.headers, content=raw, request=request)


class Net:
    def __init__(self, tmp: Path, database: str | None = None, pets: bool = True, suite: str = "x25519",
                 privacy: str = "", batch_notify: bool = False, node_policy: dict[str, Any] | None = None,
                 risk: dict[str, Any] | None = None, **gw: Any) -> None:
        self.tmp = tmp
        self.node_policy = NodePolicy(**{"min_count": 2, "close_margin_s": 60.0, **(node_policy or {})})
        # risk: mpp-1 scores its payments at the nodes; the dict is its [partner.risk] (model, prep)
        self.risk = risk
        self.risk_policy = RiskPolicy(enabled=True, batch_wait_ms=5.0, heartbeat_s=1.0, rules_min_interval_s=0.0)
        self.node_offset_ms = 0
        k = tmp / "keys"
        self.gateway_keys = create_party(k / "gateway", "gateway", "gateway")
        create_party(k / "mpp-1", "mpp-1", "mpp", endpoint="http://mpp-1.test", code_prefixes=["2810"], suite=suite,
                     region="PH")
        create_party(k / "mpp-2", "mpp-2", "mpp", endpoint="http://mpp-2.test", code_prefixes=["2820"], region="KR")
        create_party(k / "acqp-1", "acqp-1", "acqp", notify_url="http://acqp-1.test/notify", suite=suite,
                     region="JP", notify_batch_url="http://acqp-1.test/notifyBatch" if batch_notify else "")
        create_party(k / "acqp-2", "acqp-2", "acqp", notify_url="http://acqp-2.test/notify", region="SG")
        self.router = Router()
        partners = [k / p / "public.json" for p in ("mpp-1", "mpp-2", "acqp-1", "acqp-2")]
        self.node_ids = ["node-a", "node-b", "node-c"] if privacy else []
        if privacy:
            for n in self.node_ids:
                create_party(k / n, n, "node", endpoint=f"http://{n}.test")
            partners += [k / n / "public.json" for n in self.node_ids]
            holders = self.node_ids[:2] if privacy == "semi2k" else self.node_ids
            gw.update(privacy=PrivacySection(privacy, holders, self.node_ids[2] if privacy == "semi2k" else ""),
                      settlement_dir=tmp / "settlement", node_relay_interval_s=0.05)
        self.privacy = Privacy(privacy, tuple(holders), self.node_ids[2] if privacy == "semi2k" else "") \
            if privacy else None
        # the network's key authority certifies every partner's and node's entry
        self.authority_dir = tmp / "authority"
        self.authority = create_authority(self.authority_dir, "test network")
        for path in partners:
            certify(self.authority_dir, path)
        self.cfg = GatewayConfig(keys=k / "gateway", database=database or f"sqlite:///{tmp}/gw/gateway.db",
                                 partners=partners, pets=pets, authority=self.authority_dir / "authority.json",
                                 key_log=self.authority_dir / "log", **gw)
        self.gateway = create_app(self.cfg, transport=self.router, background=False)
        self.router.apps["gateway.test"] = httpx.ASGITransport(self.gateway)
        self.node_apps: dict[str, Any] = {}
        if privacy:
            net = provision_network(tmp / "mpcnet", self.node_ids, base_port=_free_port_base(3), name="privacy",
                                    risk=self.node_ids if risk is not None else None,
                                    risk_base_port=_free_port_base(3) if risk is not None else 0)
            with net.open("a") as fh:
                fh.write(f'[privacy]\nprotocol = "{privacy}"\nnodes = {json.dumps(holders)}\n'
                         + (f'dealer = "{self.node_ids[2]}"\n' if privacy == "semi2k" else ""))
            self.network_file = net
            for n in self.node_ids:
                self.add_node(n)
        self.partner_apps: dict[str, Any] = {}
        for pid, fx in (("mpp-1", {"JPY/PHP": "0.38", "SGD/PHP": "42.5"}), ("mpp-2", {"JPY/KRW": "9.1"})):
            pc = self._pcfg(pid, fx, pets)
            self.partner_apps[pid] = create_mpp_app(pc, transport=self.router)
            self.router.apps[f"{pid}.test"] = httpx.ASGITransport(self.partner_apps[pid])
        for pid in ("acqp-1", "acqp-2"):
            self.partner_apps[pid] = create_acqp_app(self._pcfg(pid, {}, pets), transport=self.router)
            self.router.apps[f"{pid}.test"] = httpx.ASGITransport(self.partner_apps[pid])
        self.gw_public = PublicEntry.from_json(json.loads((k / "gateway" / "public.json").read_text()))

    def close(self) -> None:
        """Stop the nodes' scoring threads."""
        for app in self.node_apps.values():
            if app.state.service.risk is not None:
                app.state.service.risk._stop.set()
        for app in self.node_apps.values():
            if app.state.service.risk is not None:
                app.state.service.risk.stop()

    def node_config(self, n: str, **changes: Any) -> NodeConfig:
        k = self.tmp / "keys"
        kw: dict[str, Any] = {
            "party": n, "keys": k / n, "network": self.network_file, "gateway_key": k / "gateway" / "public.json",
            "database": f"sqlite:///{self.tmp}/{n}/node.db", "job_timeout_s": 30, "connect_timeout_s": 5,
            "partner_keys": [k / p / "public.json" for p in ("mpp-1", "mpp-2", "acqp-1", "acqp-2")],
            "authority": self.authority_dir / "authority.json", "policy": self.node_policy,
            **({"risk": self.risk_policy} if self.risk is not None else {}), **changes}
        return NodeConfig(**kw)

    def node_clock(self) -> int:
        return int(time.time() * 1000) + self.node_offset_ms

    def close_today(self) -> None:
        """Move the nodes' clocks past the close of today's period (and its margin)."""
        now = int(time.time() * 1000)
        step = self.node_policy.cycle_s * 1000
        end = now - now % step + step
        self.node_offset_ms = end + int(self.node_policy.close_margin_s * 1000) + 1000 - now

    def add_node(self, n: str, **changes: Any) -> Any:
        """(Re)start node ``n`` on its database (a restart after a crash)."""
        app = create_node_app(self.node_config(n, **changes), clock=self.node_clock)
        if app.state.service.risk is not None:  # the ASGI transport runs no lifespan: start its scoring here
            app.state.service.risk.start()
        self.node_apps[n] = app
        self.router.apps[f"{n}.test"] = httpx.ASGITransport(app)
        return app

    async def relay(self) -> None:
        """Deliver every queued feed row to every reachable node now (no backoff wait)."""
        link = self.gateway.state.nodes
        for n in link.privacy.nodes:
            with contextlib.suppress(NodeError):
                await link.flush(n)

    async def operator(self, path: str, body: dict[str, Any]) -> Any:
        """An operator call signed with the gateway's own key (``veilpay gateway settle``)."""
        from veilpay.sdk.signing import post_headers

        raw = json.dumps(body).encode()
        h = post_headers(self.gateway_keys.signer(), path, "gateway", raw)
        async with httpx.AsyncClient(transport=self.router) as c:
            r = await c.post(f"http://gateway.test{path}", content=raw, headers=h)
        return r.json()

    def _pcfg(self, pid: str, fx: dict[str, str], pets: bool) -> PartnerConfig:
        from decimal import Decimal

        risk = RiskSection(**self.risk) if self.risk is not None and pid == "mpp-1" else None
        return PartnerConfig(risk=risk, keys=self.tmp / "keys" / pid,
                             gateway_key=self.tmp / "keys" / "gateway" / "public.json",
                             gateway_url="http://gateway.test", database=f"sqlite:///{self.tmp}/{pid}/db.sqlite",
                             name=f"{pid} wallet", pets=pets, fx={k: Decimal(v) for k, v in fx.items()},
                             authority=self.authority_dir / "authority.json",
                             privacy=PrivacySection(self.privacy.protocol, list(self.privacy.nodes), self.privacy.dealer)
                             if self.privacy else None)

    def certify(self, pid: str) -> None:
        """The authority certifies ``pid``'s entry again (after a rotation or retirement)."""
        certify(self.authority_dir, self.tmp / "keys" / pid / "public.json")

    def keys(self, pid: str) -> Any:
        return load_party(self.tmp / "keys" / pid)

    def replica(self, host: str = "gateway-2.test") -> Any:
        """Another gateway app on the same configuration and database (a replica),
        reachable at ``host``."""
        app = create_app(self.cfg, transport=self.router, background=False)
        self.router.apps[host] = httpx.ASGITransport(app)
        return app

    def client(self, pid: str = "acqp-1", gateway: str = "gateway.test", **kw: Any) -> AsyncGatewayClient:
        kw.setdefault("backoff", 0.001)
        kw.setdefault("pets", self.cfg.pets)
        kw.setdefault("transport", self.router)
        kw.setdefault("authority", self.authority)
        kw.setdefault("privacy", self.privacy)
        return AsyncGatewayClient(self.keys(pid), f"http://{gateway}", self.gw_public, **kw)

    async def admin(self, pid: str, method: str, path: str, body: Any = None) -> Any:
        async with httpx.AsyncClient(transport=self.router) as c:
            r = await c.request(method, f"http://{pid}.test{path}", json=body,
                                headers={"Authorization": f"Bearer {self.keys(pid).admin_token}"})
        r.raise_for_status()
        return r.json()

    async def wallet(self, user: str, balance: int, currency: str = "PHP", mpp: str = "mpp-1",
                     name: str = "Maria Santos") -> None:
        await self.admin(mpp, "POST", "/admin/wallets", {"userId": user, "name": name, "currency": currency,
                                                          "balance": balance})

    async def code(self, user: str, mpp: str = "mpp-1", ttl: float = 600) -> str:
        return (await self.admin(mpp, "POST", "/admin/codes", {"userId": user, "ttlSeconds": ttl}))["code"]

    async def balance(self, user: str, mpp: str = "mpp-1") -> int:
        return (await self.admin(mpp, "GET", f"/admin/wallets/{user}"))["balance"]

    async def deliver(self) -> int:
        """Run the outbox until nothing is due; returns how many rows it tried."""
        n = total = 1
        while n:
            n = await self.gateway.state.outbox.run_once()
            total += n
        return total - 1

    async def notifications(self, acqp: str = "acqp-1") -> Any:
        return await self.admin(acqp, "GET", "/admin/notifications")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def wait_for(cond: Any, timeout: float, what: str) -> None:
    """Poll ``cond`` until it holds; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
