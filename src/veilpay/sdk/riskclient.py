"""A partner's calls to the privacy nodes' scoring (``docs/risk.md``).

- ``RiskScorer``: the MPP, at pay time, sends its own feature bundle and the ACQP's (which
  the gateway relayed) to the scoring leader, the first share holder, and gets the
  payment's decision within its budget. The answer counts only when every share
  holder signed the same decision about this very payment, with the key the
  directory's (authority-certified) entry names; a node that is late, down or
  answers otherwise gives the configured fail decision with a named reason, and the
  nodes record the late decision all the same.
- ``post_rules`` and ``publish_model``: the MPP's rule sets, and a training party's
  re-shared part of a model kept secret-shared (``veilpay risk rules|publish``).

Every call is signed as the partner (the nodes pinned its key) and every answer
must be signed by the node and name the request it answers."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from veilpay.errors import DataError, GatewayUnavailable, InvalidInput, NodeError, SignatureError
from veilpay.sdk import wirejson
from veilpay.sdk.features import model_part, sign_rules, verify_decisions
from veilpay.sdk.keys import PartyKeys, PublicEntry
from veilpay.sdk.shares import Privacy
from veilpay.sdk.signing import post_headers, request_digest, verify_message

__all__ = ["FAIL_DECISIONS", "RiskScorer", "load_model_component", "post_rules", "post_to_node", "publish_model"]

FAIL_DECISIONS = ("approve", "review", "decline")
SCORE_PATH = "/node/v1/risk/score"


def _checked_answer(r: httpx.Response, node: PublicEntry, path: str, headers: dict[str, str]) -> dict[str, Any]:
    verify_message({k.lower(): v for k, v in r.headers.items()}, "POST", path, r.content, node.verify_key,
                   time.time(), 300.0, "Response-Time", request_digest(headers))
    body = wirejson.loads(r.content)
    if not isinstance(body, dict):
        raise GatewayUnavailable(f"{node.id}: not a JSON object")
    return body


class RiskScorer:
    """The MPP's scoring calls to the leader, coalesced: the requests made in one turn
    of the event loop (a payBatch's payments, concurrent payments) go in one signed
    call, up to ``max_batch``. Each caller waits at most ``budget_s`` for its own
    decision; the call goes on, and the nodes record the decision, when it is late."""

    def __init__(self, http: httpx.AsyncClient, me: PartyKeys, budget_s: float, fail: str,
                 max_batch: int = 64) -> None:
        if fail not in FAIL_DECISIONS:
            raise InvalidInput(f"fail policy: one of {FAIL_DECISIONS}")
        self.http, self.me, self.budget_s, self.fail, self.max_batch = http, me, budget_s, fail, max_batch
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._nodes: dict[str, PublicEntry] = {}
        self._privacy: Privacy | None = None

    def _fallback(self, request: dict[str, Any], reason: str) -> dict[str, Any]:
        return {"decision": self.fail, "reason": reason, "modelVersion": request["mpp"]["bundle"]["model"],
                "rulesVersion": 0}

    async def score(self, request: dict[str, Any], nodes: dict[str, PublicEntry], privacy: Privacy) -> dict[str, Any]:
        """The payment's ``riskResult``: ``{decision, reason, modelVersion, rulesVersion}``;
        reason ``RISK_SCORE`` for the nodes' decision, else the fail decision with
        ``RISK_TIMEOUT``, ``RISK_UNAVAILABLE``, ``RISK_UNVERIFIED`` or the node's code."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._nodes, self._privacy = nodes, privacy
        self._waiting.append((request, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.budget_s)
        except TimeoutError:
            return self._fallback(request, "RISK_TIMEOUT")

    def _flush(self) -> None:
        self._scheduled = False
        while self._waiting:
            group, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
            task = asyncio.get_running_loop().create_task(self._send(group, self._nodes, self._privacy))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, group: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]],
                    nodes: dict[str, PublicEntry], privacy: Privacy | None) -> None:
        requests = [r for r, _ in group]
        try:
            results = await self._call(requests, nodes, privacy)
        except (httpx.HTTPError, SignatureError, GatewayUnavailable, ValueError):
            results = [self._fallback(r, "RISK_UNAVAILABLE") for r in requests]
        for (_, fut), res in zip(group, results, strict=True):
            if not fut.done():
                fut.set_result(res)

    async def _call(self, requests: list[dict[str, Any]], nodes: dict[str, PublicEntry],
                    privacy: Privacy | None) -> list[dict[str, Any]]:
        leader = nodes.get(privacy.nodes[0]) if privacy is not None else None
        if privacy is None or leader is None or not leader.endpoint:
            return [self._fallback(r, "RISK_UNAVAILABLE") for r in requests]
        raw = wirejson.dumps({"requests": requests})
        headers = post_headers(self.me.signer(), SCORE_PATH, self.me.id, raw)
        r = await self.http.post(leader.endpoint.rstrip("/") + SCORE_PATH, content=raw, headers=headers)
        body = _checked_answer(r, leader, SCORE_PATH, headers)
        if r.status_code != 200:
            err = body.get("error") if isinstance(body.get("error"), dict) else {}
            return [self._fallback(q, str((err or {}).get("code") or "RISK_UNAVAILABLE")[:40]) for q in requests]
        answers, statements = body.get("answers"), body.get("statements")
        if not isinstance(answers, list) or len(answers) != len(requests) or not isinstance(statements, list):
            return [self._fallback(q, "RISK_UNVERIFIED") for q in requests]
        said: dict[str, dict[tuple[str, str], tuple[str, str, int]]] = {n: {} for n in privacy.nodes}
        for st in statements:
            node = str(st.get("node", "")) if isinstance(st, dict) else ""
            if node not in said:
                continue
            try:
                said[node].update(verify_decisions(st, nodes.get(node), mpp=self.me.id))
            except (InvalidInput, SignatureError):
                continue
        out = []
        for q, a in zip(requests, answers, strict=True):
            b = q["mpp"]["bundle"]
            if not isinstance(a, dict) or "decision" not in a:
                code = a.get("error", {}).get("code") if isinstance(a, dict) and isinstance(a.get("error"), dict) \
                    else None
                out.append(self._fallback(q, str(code or "RISK_UNAVAILABLE")[:40]))
                continue
            want = (a["decision"], b["model"], a.get("rules"))
            if not all(said[n].get((b["acqp"], b["requestId"])) == want for n in privacy.nodes):
                out.append(self._fallback(q, "RISK_UNVERIFIED"))
                continue
            out.append({"decision": str(a["decision"]), "reason": "RISK_SCORE", "modelVersion": b["model"],
                        "rulesVersion": int(a["rules"])})
        return out


def post_to_node(me: PartyKeys, node: PublicEntry, path: str, body: dict[str, Any], timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> dict[str, Any]:
    """A signed call to one node; its signed answer. NodeError (with the node's code)
    when the node refuses, GatewayUnavailable when it cannot be reached or fails."""
    raw = wirejson.dumps(body)
    headers = post_headers(me.signer(), path, me.id, raw)
    with httpx.Client(timeout=timeout, transport=transport) as http:
        try:
            r = http.post(node.endpoint.rstrip("/") + path, content=raw, headers=headers)
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(f"{node.id}: {type(exc).__name__}") from exc
    out = _checked_answer(r, node, path, headers)
    if r.status_code != 200:
        err: dict[str, Any] = out["error"] if isinstance(out.get("error"), dict) else {}
        code = str(err.get("code") or "")
        if code and r.status_code < 500:  # the node's own "no", by name
            raise NodeError(f"{node.id}: {code}: {str(err.get('message', ''))[:300]}", code, r.status_code)
        raise GatewayUnavailable(f"{node.id}: {code or r.status_code}: {str(err.get('message', ''))[:300]}")
    return out


def post_rules(me: PartyKeys, rules: dict[str, Any], nodes: dict[str, PublicEntry], privacy: Privacy,
               transport: httpx.BaseTransport | None = None) -> dict[str, Any]:
    """Sign ``rules`` as the MPP ``me`` and hand them to every share holder."""
    signed = sign_rules(me, rules)
    return {n: post_to_node(me, nodes[n], "/node/v1/risk/rules", signed, transport=transport) for n in privacy.nodes}


def load_model_component(model_dir: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """This training party's component of an SS-LR model kept secret-shared (the job's
    ``model_shares.npz``: ``w`` then ``b``) and the file's metadata. A semi2k training
    job's two compute parties each hold one additive component."""
    path = Path(model_dir) / "model_shares.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            if meta.get("model_type") != "ss-lr" or meta.get("protocol") != "semi2k":
                raise DataError(f"{path}: only SS-LR models trained with semi2k are published (docs/risk.md)")
            comp = np.concatenate([z["w__0"].reshape(-1), z["b__0"].reshape(-1)]).astype(np.uint64)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file (train with model_to = [] to keep the model shared)") from exc
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{path}: not a model's shares ({exc})") from exc
    return comp, meta


def publish_model(me: PartyKeys, model_dir: str | Path, model: str, mpp: str, acqp: str,
                  nodes: dict[str, PublicEntry], privacy: Privacy,
                  transport: httpx.BaseTransport | None = None) -> dict[str, Any]:
    """Re-share this party's component of a trained model to the share holders."""
    comp, meta = load_model_component(model_dir)
    feats = meta.get("features") or {}
    if not isinstance(feats, dict) or len(feats) != 2:
        raise DataError(f"{model_dir}: the model's metadata does not name its two parties' feature counts")
    label_party = [int(v) for v in feats.values()]
    d_mpp, d_acqp = label_party[0], label_party[1]  # the label party (the MPP) comes first
    part = model_part(me, model=model, mpp=mpp, acqp=acqp, component=comp, frac=int(meta["frac_bits"]),
                      d_mpp=d_mpp, d_acqp=d_acqp, nodes=nodes, privacy=privacy)
    return {n: post_to_node(me, nodes[n], "/node/v1/risk/model", part, transport=transport) for n in privacy.nodes}
