"""The privacy node's HTTP API (FastAPI).

- ``POST /node/v1/feed``: ``{"items": [...]}``, the share envelopes (each with its
  ACQP's signed bundle) and status changes relayed by the gateway, applied in
  sequence order; answers the applied position and the items refused, with codes.
- ``POST /node/v1/jobs``: ``{"jobId", "kind", "params", "through"}``; runs the job
  with the other nodes under this node's policy, or answers it from its stored
  release.
- ``POST /node/v1/ledger``: ``{"after", "limit"}``; the disclosure ledger's records,
  for the gateway and the partners this node pinned (signed by the caller, Client-Id
  the caller's id).
- ``POST /node/v1/log/head``: ``{"head", "base", "proof"}``; a partner offers the
  newest key-log head it has checked, the node keeps the newest consistent one and
  answers it (``veilpay.node.witness``); LOG_INCONSISTENT when two views meet.
- ``POST /node/v1/risk/score``: ``{"mpp": {bundle, shares}, "acqp": {bundle, shares}}``,
  from the payment's MPP, to the first share holder: the payment's decision, with
  every share holder's signed statement (``veilpay.node.risk``, ``docs/risk.md``).
- ``POST /node/v1/risk/rules``: a rule set signed by its MPP, adopted under the
  node's policy; ``POST /node/v1/risk/model``: a training party's re-shared part of a
  model (``veilpay risk publish``); ``POST /node/v1/risk/shadow``: ``{day}``, to the MPP,
  how its shadow rule set compared with the live one over a closed day.
- ``GET /metrics``: Prometheus metrics (refusals by code, jobs by outcome).
- ``GET /healthz``: liveness and the applied feed position.

Feed and job requests must carry the gateway's signature (the Alipay+-style headers,
checked against the pinned gateway key within the time window); every answer is
signed with the node's key. Errors answer ``{"error": {"code", "message"}}``.

The network file names the MPC peers and carries the privacy section::

    [privacy]
    protocol = "semi2k"          # or "aby3"
    nodes = ["node-a", "node-b"] # share holders (three for aby3)
    dealer = "node-c"            # semi2k only
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import anyio
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from veilpay.errors import ConfigError, MalformedBody, NodeError, SignatureError
from veilpay.host import FASTAPI_TELEMETRY_OFF
from veilpay.net import connect_mesh, load_network
from veilpay.node.config import NodeConfig
from veilpay.node.service import NodeService, PinnedPartners
from veilpay.node.store import open_store
from veilpay.node.witness import Witness
from veilpay.sdk.authority import load_authority
from veilpay.sdk.keys import PublicEntry, load_party
from veilpay.sdk.partner import GatewayCalls
from veilpay.sdk.shares import Privacy
from veilpay.sdk.signing import SignedHeaders, verify_json

__all__ = ["create_node_app", "load_privacy"]


def load_privacy(network_file: str | Path) -> Privacy:
    """The privacy section of the nodes' network file."""
    section = load_network(network_file).privacy
    if section is None:
        raise ConfigError(f"{network_file}: no [privacy] section (protocol, nodes, dealer)")
    return Privacy(section.protocol, tuple(section.nodes), section.dealer)


def create_node_app(cfg: NodeConfig, clock: Callable[[], int] | None = None) -> FastAPI:
    """The node's app for ``cfg``; ``clock`` (ms) replaces the system clock in tests."""
    keys = load_party(cfg.keys)
    if keys.public.role != "node" or keys.id != cfg.party:
        raise ConfigError(f"{cfg.keys}: keys of {keys.public.role} {keys.id!r}, expected node {cfg.party!r}")
    try:
        gateway = PublicEntry.from_json(json.loads(Path(cfg.gateway_key).read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{cfg.gateway_key}: {exc}") from exc
    network = load_network(cfg.network)
    privacy = load_privacy(cfg.network)
    missing = [p for p in privacy.parties if p not in network.parties]
    if missing:
        raise ConfigError(f"{cfg.network}: privacy node {missing[0]!r} has no [parties] entry")
    engine = open_store(cfg.database)
    authority = load_authority(cfg.authority)
    partners = PinnedPartners(cfg.partner_keys, authority)
    witness = Witness(engine, authority)

    def mesh(session: bytes) -> Any:
        return connect_mesh(network, keys.id, session, timeout=cfg.job_timeout_s,
                            connect_timeout=cfg.connect_timeout_s, parties=list(privacy.parties))

    risk_mesh = None
    if cfg.risk.enabled:
        scoring = network.risk_view(list(privacy.parties))

        def risk_mesh(session: bytes) -> Any:
            return connect_mesh(scoring, keys.id, session, timeout=cfg.risk.heartbeat_s * 3,
                                connect_timeout=min(cfg.connect_timeout_s, 2.0), parties=list(privacy.parties))

    if clock is None:
        service = NodeService(keys, privacy, engine, mesh, partners, cfg.policy, risk_mesh=risk_mesh,
                              risk_policy=cfg.risk)
    else:
        service = NodeService(keys, privacy, engine, mesh, partners, cfg.policy, clock, risk_mesh=risk_mesh,
                              risk_policy=cfg.risk)
    calls = GatewayCalls(keys, gateway, cfg.request_window_s)
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if service.risk is not None:
            service.risk.start()
        yield
        if service.risk is not None:
            await anyio.to_thread.run_sync(service.risk.stop)

    app = FastAPI(title=f"veilpay privacy node {keys.id}", docs_url=None, redoc_url=None, lifespan=lifespan,
                  telemetry=FASTAPI_TELEMETRY_OFF)
    app.state.service = service
    app.state.engine = engine

    def reply(path: str, body: dict[str, Any], status: int, answers: str | None) -> Response:
        """Signed, bound to the request it answers; unsigned to a caller that did not authenticate."""
        raw_out, headers = calls.answer("POST", path, body, answers) if answers else calls.refuse(body)
        return Response(raw_out, status_code=status, headers=headers, media_type="application/json")

    async def signed(request: Request, op: Any) -> Response:
        path = request.url.path
        raw = await request.body()
        status, digest = 200, None
        try:
            obj, digest = calls.verify("POST", path, dict(request.headers), raw)
            body = await anyio.to_thread.run_sync(op, obj)
        except SignatureError as exc:
            service.metrics.refused("INVALID_SIGNATURE")
            body, status = {"error": {"code": "INVALID_SIGNATURE", "message": str(exc)}}, 401
        except NodeError as exc:
            service.metrics.refused(exc.code)
            body, status = {"error": {"code": exc.code, "message": str(exc)}}, exc.http_status
        return reply(path, body, status, digest)

    @app.post("/node/v1/feed")
    async def feed(request: Request) -> Response:
        return await signed(request, lambda obj: service.ingest(obj.get("items")))

    @app.post("/node/v1/jobs")
    async def run_job(request: Request) -> Response:
        return await signed(request, service.run_job)

    async def from_partner(request: Request, op: Any, invalid: str, caller_too: bool = False) -> Response:
        """A call signed by the gateway or a partner this node pinned (``Client-Id``
        the caller's id), answered signed and bound to it."""
        path = request.url.path
        raw = await request.body()
        hdrs = {k.lower(): v for k, v in request.headers.items()}
        caller = hdrs.get("client-id", "")
        entry = gateway if caller == gateway.id else partners().get(caller)
        digest = None
        try:
            if entry is None:
                raise SignatureError("for the gateway and the partners this node pinned", "INVALID_CLIENT")
            try:
                signed_req, obj = verify_json(hdrs, "POST", path, raw, entry.verify_key, time.time(),
                                              cfg.request_window_s)
            except MalformedBody as exc:  # a genuine call: refused with the answer bound to it
                digest = cast(SignedHeaders, exc.signed).digest
                raise NodeError(str(exc), invalid, 400) from exc
            digest = signed_req.digest
            body, status = (await anyio.to_thread.run_sync(op, obj, caller) if caller_too else
                            await anyio.to_thread.run_sync(op, obj)), 200
        except SignatureError as exc:
            service.metrics.refused(exc.code)
            body, status = {"error": {"code": exc.code, "message": str(exc)}}, 401
        except NodeError as exc:
            service.metrics.refused(exc.code)
            body, status = {"error": {"code": exc.code, "message": str(exc)}}, exc.http_status
        except ValueError as exc:
            body, status = {"error": {"code": invalid, "message": str(exc)}}, 400
        return reply(path, body, status, digest)

    @app.post("/node/v1/ledger")
    async def get_ledger(request: Request) -> Response:
        return await from_partner(request, lambda obj: service.ledger_page(
            obj.get("after", 0), obj.get("limit", 1000), obj.get("chain", "disclosure")), "LEDGER_INVALID")

    @app.post("/node/v1/log/head")
    async def witness_head(request: Request) -> Response:
        return await from_partner(request, witness.offer, "HEAD_INVALID")

    def risk_op(name: str) -> Any:
        def op(obj: Any, caller: str) -> Any:
            if service.risk is None:
                raise NodeError("this node does not score payments", "RISK_DISABLED", 404)
            return getattr(service.risk, name)(obj, caller)
        return op

    def risk_route(name: str, invalid: str) -> Any:
        async def route(request: Request) -> Response:
            return await from_partner(request, risk_op(name), invalid, caller_too=True)
        return route

    for path, name, invalid in (("score", "score", "RISK_BUNDLE_INVALID"), ("rules", "put_rules", "RULES_INVALID"),
                                ("shadow", "shadow_report", "REPORT_INVALID"),
                                ("model", "put_model_part", "MODEL_INVALID")):
        app.add_api_route(f"/node/v1/risk/{path}", risk_route(name, invalid), methods=["POST"],
                          response_class=Response)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "node": keys.id, "applied": service.applied() if service.holder else None}

    return app
