"""A partner's calls to the privacy nodes' scoring (``docs/risk.md``).

- ``score``: the MPP, at pay time, sends its own feature bundle and the ACQP's (which
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

from veilpay.errors import DataError, GatewayUnavailable, InvalidInput, SignatureError
from veilpay.sdk import wirejson
from veilpay.sdk.features import model_part, sign_rules, verify_decision
from veilpay.sdk.keys import PartyKeys, PublicEntry
from veilpay.sdk.shares import Privacy
from veilpay.sdk.signing import post_headers, request_digest, verify_message

__all__ = ["FAIL_DECISIONS", "load_model_component", "post_to_node", "publish_model", "post_rules", "score"]

FAIL_DECISIONS = ("approve", "review", "decline")
SCORE_PATH = "/node/v1/risk/score"


def _checked_answer(r: httpx.Response, node: PublicEntry, path: str, headers: dict[str, str]) -> dict[str, Any]:
    verify_message({k.lower(): v for k, v in r.headers.items()}, "POST", path, r.content, node.verify_key,
                   time.time(), 300.0, "Response-Time", request_digest(headers))
    body = wirejson.loads(r.content)
    if not isinstance(body, dict):
        raise GatewayUnavailable(f"{node.id}: not a JSON object")
    return body


async def score(http: httpx.AsyncClient, me: PartyKeys, nodes: dict[str, PublicEntry], privacy: Privacy,
                request: dict[str, Any], budget_s: float, fail: str) -> dict[str, Any]:
    """The payment's ``riskResult``: ``{decision, reason, modelVersion, rulesVersion}``;
    reason ``RISK_SCORE`` for the nodes' decision, else the fail decision with
    ``RISK_TIMEOUT``, ``RISK_UNAVAILABLE`` or the node's refusal code."""
    bundle = request["mpp"]["bundle"]
    fallback = {"decision": fail, "modelVersion": bundle["model"], "rulesVersion": 0}
    leader = nodes.get(privacy.nodes[0])
    if leader is None or not leader.endpoint:
        return {**fallback, "reason": "RISK_UNAVAILABLE"}
    raw = wirejson.dumps(request)
    headers = post_headers(me.signer(), SCORE_PATH, me.id, raw)
    try:
        r = await asyncio.wait_for(http.post(leader.endpoint.rstrip("/") + SCORE_PATH, content=raw, headers=headers),
                                   budget_s)
        body = _checked_answer(r, leader, SCORE_PATH, headers)
    except TimeoutError:
        return {**fallback, "reason": "RISK_TIMEOUT"}
    except (httpx.HTTPError, SignatureError, GatewayUnavailable, ValueError):
        return {**fallback, "reason": "RISK_UNAVAILABLE"}
    if r.status_code != 200:
        code = body.get("error", {}).get("code") if isinstance(body.get("error"), dict) else None
        return {**fallback, "reason": str(code or "RISK_UNAVAILABLE")[:40]}
    try:
        statements = body["statements"]
        if not isinstance(statements, list) or len(statements) != len(privacy.nodes):
            raise InvalidInput("one statement per share holder")
        seen = set()
        for st in statements:
            node = str(st.get("node", "")) if isinstance(st, dict) else ""
            if node not in privacy.nodes or node in seen:
                raise InvalidInput("statements from the share holders, each once")
            seen.add(node)
            verify_decision(st, nodes.get(node), mpp=bundle["mpp"], acqp=bundle["acqp"],
                            request_id=bundle["requestId"])
            if (st["decision"], st["model"], st["rules"]) != (body["decision"], bundle["model"], body["rules"]):
                raise InvalidInput("the share holders' statements differ")
    except (InvalidInput, SignatureError, KeyError, TypeError):
        return {**fallback, "reason": "RISK_UNVERIFIED"}
    return {"decision": body["decision"], "reason": "RISK_SCORE", "modelVersion": bundle["model"],
            "rulesVersion": int(body["rules"])}


def post_to_node(me: PartyKeys, node: PublicEntry, path: str, body: dict[str, Any], timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> dict[str, Any]:
    """A signed call to one node; its signed answer (GatewayUnavailable on an error)."""
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
        raise GatewayUnavailable(f"{node.id}: {err.get('code', r.status_code)}: {err.get('message', '')}")
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
