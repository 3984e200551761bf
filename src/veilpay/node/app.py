"""The privacy node's control API (FastAPI), which only the gateway may call.

- ``POST /node/v1/feed``: ``{"items": [...]}``, the share envelopes and status changes
  relayed by the gateway, applied in sequence order; answers the applied position.
- ``POST /node/v1/jobs``: ``{"jobId", "kind", "params", "through"}``; runs the MPC job
  with the other nodes and answers what it revealed.
- ``GET /healthz``: liveness and the applied feed position.

Every request must carry the gateway's signature (the Alipay+-style headers the
partners use, checked against the pinned gateway key, within the time window), and
every answer is signed with the node's key. Errors answer
``{"error": {"code", "message"}}``.

The network file names the MPC peers and carries the privacy section::

    [privacy]
    protocol = "semi2k"          # or "aby3"
    nodes = ["node-a", "node-b"] # share holders (three for aby3)
    dealer = "node-c"            # semi2k only
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request, Response

from veilpay.errors import ConfigError, NodeError, SignatureError
from veilpay.host import FASTAPI_TELEMETRY_OFF
from veilpay.net import connect_mesh, load_network
from veilpay.node.service import NodeService
from veilpay.node.store import open_store
from veilpay.sdk.keys import PublicEntry, load_party
from veilpay.sdk.partner import GatewayCalls
from veilpay.sdk.shares import Privacy

__all__ = ["create_node_app", "load_privacy"]


def load_privacy(network_file: str | Path) -> Privacy:
    path = Path(network_file)
    try:
        raw = tomllib.loads(path.read_text()).get("privacy")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: no [privacy] section (protocol, nodes, dealer)")
    return Privacy.from_json(raw)


def create_node_app(keys_dir: str | Path, network_file: str | Path, gateway_key: str | Path, database: str,
                    min_count: int = 10, job_timeout: float = 120.0, connect_timeout: float = 10.0,
                    window: float = 300.0) -> FastAPI:
    keys = load_party(keys_dir)
    if keys.public.role != "node":
        raise ConfigError(f"{keys_dir}: role {keys.public.role!r}, expected 'node'")
    try:
        gateway = PublicEntry.from_json(json.loads(Path(gateway_key).read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{gateway_key}: {exc}") from exc
    network = load_network(network_file)
    privacy = load_privacy(network_file)
    missing = [p for p in privacy.parties if p not in network.parties]
    if missing:
        raise ConfigError(f"{network_file}: privacy node {missing[0]!r} has no [parties] entry")
    engine = open_store(database)

    def mesh(session: bytes) -> Any:
        return connect_mesh(network, keys.id, session, timeout=job_timeout, connect_timeout=connect_timeout,
                            parties=list(privacy.parties))

    service = NodeService(keys, privacy, engine, mesh, min_count)
    calls = GatewayCalls(keys, gateway, window)
    app = FastAPI(title=f"veilpay privacy node {keys.id}", docs_url=None, redoc_url=None,
                  telemetry=FASTAPI_TELEMETRY_OFF)
    app.state.service = service
    app.state.engine = engine

    async def signed(request: Request, op: Any) -> Response:
        path = request.url.path
        raw = await request.body()
        status = 200
        try:
            obj = calls.verify("POST", path, dict(request.headers), raw)
            body = await anyio.to_thread.run_sync(op, obj)
        except SignatureError as exc:
            body, status = {"error": {"code": "INVALID_SIGNATURE", "message": str(exc)}}, 401
        except NodeError as exc:
            body, status = {"error": {"code": exc.code, "message": str(exc)}}, exc.http_status
        raw_out, headers = calls.answer("POST", path, body)
        return Response(raw_out, status_code=status, headers=headers, media_type="application/json")

    @app.post("/node/v1/feed")
    async def feed(request: Request) -> Response:
        return await signed(request, lambda obj: service.ingest(obj.get("items")))

    @app.post("/node/v1/jobs")
    async def run_job(request: Request) -> Response:
        return await signed(request, service.run_job)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "node": keys.id, "applied": service.applied() if service.holder else None}

    return app
