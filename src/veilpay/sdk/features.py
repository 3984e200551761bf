"""Risk inputs the partners send the privacy nodes, and the nodes' signed decisions.

**Feature bundles.** At pay time the MPP and the ACQP each split their own feature
vector of the payment (their columns of the model, after the preparation recorded at
training, fixed point) into shares, seal each node's share to that node (HPKE,
purpose ``risk``) and sign a bundle over it (Ed25519)::

    {"v": 1, "role": "acqp", "party": "acqp-1", "acqp": "acqp-1", "mpp": "mpp-1",
     "requestId": "...", "model": "fraud-v1", "width": 20, "ts": 1764900000000,
     "payer": "",                      # the MPP's risk token of its customer ("" for the ACQP)
     "shares": {"node-a": "<sha256 of the envelope>", ...}, "kv": 1, "sig": "..."}

The ACQP's vector ends with one more word, the amount in USD cents (integer), which
the nodes sum per payer token for the velocity features. A node takes a bundle only
when the signature verifies under the key it pinned for ``party``, ``role`` is that
party's role, ``width`` is the width the model expects of that role, and the digest
for this node is its envelope; the gateway, which relays the ACQP's bundle, can
neither read nor move it.

**Rule sets** (``veilpay.risk.rules``) are signed by the MPP they serve, **model
parts** by the training party that held the share (the MPP and the ACQP each send
their share of the weights, re-shared to the nodes), and a node's **decision
statement** by the node, one per micro-batch and MPP: the MPP acts on a decision only
when every share holder signed the same one."""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np

from veilpay.crypto.digest import sha256
from veilpay.crypto.signing import b64d, b64e
from veilpay.errors import DecryptionError, InvalidInput, SignatureError
from veilpay.risk.rules import RuleSet, parse_rules
from veilpay.risk.shares import encode_fixed, split_words, words_per_node
from veilpay.sdk import wirejson
from veilpay.sdk.envelope import SessionSealer, is_envelope, open_fields, seal_fields
from veilpay.sdk.keys import PartyKeys, PublicEntry
from veilpay.sdk.shares import RING_WORD, Privacy, envelope_digest

__all__ = ["BUNDLE_FIELDS", "DECISION_FIELDS", "MODEL_PART_FIELDS", "model_part", "open_feature_share",
           "open_model_part", "risk_token", "share_features", "sign_decisions", "sign_rules", "verify_decisions",
           "verify_feature_bundle", "verify_model_part", "verify_rules"]

BUNDLE_FIELDS = ("v", "role", "party", "acqp", "mpp", "requestId", "model", "width", "ts", "payer", "shares", "kv",
                 "sig")
MODEL_PART_FIELDS = ("v", "model", "party", "mpp", "acqp", "protocol", "frac", "d_mpp", "d_acqp", "shares", "kv",
                     "sig")
DECISION_FIELDS = ("v", "node", "mpp", "batch", "decisions", "kv", "sig")
MAX_WIDTH = 256
_TEXT = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
_TOKEN = re.compile(r"\A[A-Za-z0-9_-]{16,64}\Z")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_LABELS = {"bundle": b"veilpay/risk-bundle/v1\n", "rules": b"veilpay/risk-rules/v1\n",
           "model": b"veilpay/risk-model/v1\n", "decision": b"veilpay/risk-decision/v1\n"}


def _message(kind: str, obj: dict[str, Any]) -> bytes:
    return _LABELS[kind] + wirejson.dumps_sorted({k: v for k, v in obj.items() if k not in ("kv", "sig")})


def _sign(me: PartyKeys, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    version, key = me.signer()
    out = {**obj, "kv": version}
    out["sig"] = b64e(key.sign(_message(kind, out)))
    return out


def _verify(kind: str, obj: dict[str, Any], signer: PublicEntry | None, who: str, role: str | None) -> None:
    if signer is None or signer.id != who or (role is not None and signer.role != role):
        raise SignatureError(f"risk {kind}: {who[:64]!r} is not a {role or 'party'} this node pinned", "KEY_NOT_FOUND")
    kv, sig = obj.get("kv"), obj.get("sig")
    if isinstance(kv, bool) or not isinstance(kv, int) or not isinstance(sig, str):
        raise InvalidInput(f"risk {kind}: 'kv' is an integer and 'sig' base64url text")
    key = signer.verify_key(kv)
    if key is None:
        raise SignatureError(f"risk {kind}: key version {kv} is unknown or retired", "KEY_NOT_FOUND")
    try:
        raw = b64d(sig)
    except ValueError as exc:
        raise SignatureError(f"risk {kind}: the signature is not base64url") from exc
    if not key.verify(raw, _message(kind, obj)):
        raise SignatureError(f"risk {kind}: the signature does not verify")


def _ids(obj: dict[str, Any], names: tuple[str, ...], what: str) -> None:
    for k in names:
        if not isinstance(obj[k], str) or not _TEXT.match(obj[k]):
            raise InvalidInput(f"{what}: {k!r} is not an id")


def _digests(shares: Any, privacy: Privacy, what: str) -> None:
    if not isinstance(shares, dict) or set(shares) != set(privacy.nodes) or not all(
            isinstance(d, str) and _DIGEST.match(d) for d in shares.values()):
        raise InvalidInput(f"{what}: 'shares' maps each share-holding node to its envelope's SHA-256")


def _seal_words(parts: list[np.ndarray], privacy: Privacy, nodes: dict[str, PublicEntry], purpose: str, ctx: str,
                sessions: SessionSealer | None) -> dict[str, Any]:
    missing = [n for n in privacy.nodes if n not in nodes or nodes[n].role != "node"]
    if missing:
        raise InvalidInput(f"privacy node {missing[0]!r} is not in the directory")
    seal = sessions.seal if sessions is not None else seal_fields
    return {n: seal({"s": [[str(int(v)) for v in row] for row in parts[i]]}, nodes[n], purpose, ctx)
            for i, n in enumerate(privacy.nodes)}


def _open_words(env: Any, me: PartyKeys, purpose: str, ctx: str, rows: int, words: int) -> np.ndarray:
    if not is_envelope(env):
        raise DecryptionError(f"{purpose}: not a sealed envelope")
    raw = open_fields(env, me, purpose, ctx).get("s")
    if not isinstance(raw, list) or len(raw) != rows or not all(
            isinstance(r, list) and len(r) == words and all(isinstance(w, str) and RING_WORD.match(w) and
                                                           int(w) < 1 << 64 for w in r) for r in raw):
        raise DecryptionError(f"{purpose}: expected {rows} x {words} ring elements")
    return np.array([[int(w) for w in r] for r in raw], dtype=np.uint64).reshape(rows, words)


# ------------------------------------------------------------------ feature bundles
def risk_token(me: PartyKeys, customer_id: str) -> str:
    """The MPP's pseudonym of its customer for the nodes' velocity windows: another
    HMAC label than the ``customerToken`` the gateway sees, so the two do not link."""
    if me.public.role != "mpp" or me.token_key is None:
        raise InvalidInput("only an MPP (with a token key) makes risk tokens")
    return me.token_key.token(me.id + "/risk", customer_id)


def _bundle_context(b: dict[str, Any]) -> str:
    return f"{b['acqp']}/{b['mpp']}/{b['requestId']}/{b['role']}/{b['model']}"


def share_features(me: PartyKeys, *, acqp: str, mpp: str, request_id: str, model: str, features: np.ndarray,
                   frac: int, nodes: dict[str, PublicEntry], privacy: Privacy, amount_usd_cents: int | None = None,
                   payer: str = "", sessions: SessionSealer | None = None, ts_ms: int | None = None) -> dict[str, Any]:
    """``{"bundle", "shares"}``: this partner's prepared features of one payment, shared
    to the nodes and signed. The ACQP passes the amount in USD cents; the MPP its
    ``risk_token`` of the payer."""
    role = me.public.role
    if role not in ("mpp", "acqp") or me.id != (acqp if role == "acqp" else mpp):
        raise InvalidInput("features are shared by the payment's own MPP or ACQP")
    vec = encode_fixed(np.asarray(features, dtype=np.float64).reshape(-1), frac)
    if role == "acqp":
        if amount_usd_cents is None or isinstance(amount_usd_cents, bool) or not 0 <= int(amount_usd_cents) < 10**13:
            raise InvalidInput("the ACQP's features end with the amount in USD cents (0 .. 10^13)")
        vec = np.concatenate([vec, np.array([int(amount_usd_cents)], dtype=np.uint64)])
        payer = ""
    elif not _TOKEN.match(payer):
        raise InvalidInput("the MPP names the payer by its risk token")
    bundle: dict[str, Any] = {"v": 1, "role": role, "party": me.id, "acqp": acqp, "mpp": mpp,
                              "requestId": request_id, "model": model, "width": int(vec.shape[0]),
                              "ts": int(time.time() * 1000) if ts_ms is None else int(ts_ms), "payer": payer}
    shares = _seal_words(split_words(vec, privacy.protocol), privacy, nodes, "risk", _bundle_context(bundle), sessions)
    bundle["shares"] = {n: envelope_digest(e) for n, e in sorted(shares.items())}
    return {"bundle": _sign(me, "bundle", bundle), "shares": shares}


def verify_feature_bundle(bundle: Any, signer: PublicEntry | None, privacy: Privacy) -> dict[str, Any]:
    """``bundle`` if well formed and signed by the party it names with the key the
    verifier pinned for it; InvalidInput or SignatureError otherwise."""
    if not isinstance(bundle, dict) or set(bundle) != set(BUNDLE_FIELDS) or bundle["v"] != 1:
        raise InvalidInput("risk bundle: expected the fields " + ", ".join(BUNDLE_FIELDS))
    _ids(bundle, ("party", "acqp", "mpp", "requestId", "model"), "risk bundle")
    role = bundle["role"]
    if role not in ("mpp", "acqp") or bundle["party"] != bundle[role]:
        raise InvalidInput("risk bundle: 'role' is mpp or acqp, and 'party' is the payment's partner of that role")
    width, ts, payer = bundle["width"], bundle["ts"], bundle["payer"]
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
        raise InvalidInput(f"risk bundle: 'width' is 1..{MAX_WIDTH}")
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 < ts < 1 << 53:
        raise InvalidInput("risk bundle: 'ts' is milliseconds")
    if not isinstance(payer, str) or (role == "mpp") != bool(_TOKEN.match(payer)) or (role == "acqp" and payer):
        raise InvalidInput("risk bundle: the MPP names the payer's risk token, the ACQP none")
    _digests(bundle["shares"], privacy, "risk bundle")
    _verify("bundle", bundle, signer, bundle["party"], role)
    return bundle


def open_feature_share(bundle: dict[str, Any], env: Any, me: PartyKeys, words: int) -> np.ndarray:
    """This node's (width, words) share of a verified bundle's features; DecryptionError
    when the envelope is not the one the bundle names or does not open."""
    if not is_envelope(env) or envelope_digest(env) != bundle["shares"].get(me.id):
        raise DecryptionError("risk share: not the envelope the bundle names for this node")
    return _open_words(env, me, "risk", _bundle_context(bundle), bundle["width"], words)


# ------------------------------------------------------------------ rule sets
def sign_rules(me: PartyKeys, rules: dict[str, Any]) -> dict[str, Any]:
    """A rule set (checked first), signed by the MPP it serves."""
    rs = parse_rules(rules)
    if me.public.role != "mpp" or rs.mpp != me.id:
        raise InvalidInput("a rule set is signed by the MPP it names")
    return _sign(me, "rules", {"v": 1, **rs.to_json(), "issued": int(time.time() * 1000)})


def verify_rules(doc: Any, signer: PublicEntry | None) -> tuple[RuleSet, dict[str, Any]]:
    if not isinstance(doc, dict) or doc.get("v") != 1:
        raise InvalidInput("rule set: a signed document (v 1)")
    body = {k: v for k, v in doc.items() if k not in ("v", "issued", "kv", "sig")}
    rs = parse_rules(body)
    issued = doc.get("issued")
    if isinstance(issued, bool) or not isinstance(issued, int) or not 0 < issued < 1 << 53:
        raise InvalidInput("rule set: 'issued' is milliseconds")
    _verify("rules", doc, signer, rs.mpp, "mpp")
    return rs, doc


# ------------------------------------------------------------------ model parts
def model_part(me: PartyKeys, *, model: str, mpp: str, acqp: str, component: np.ndarray, frac: int, d_mpp: int,
               d_acqp: int, nodes: dict[str, PublicEntry], privacy: Privacy) -> dict[str, Any]:
    """This training party's component of a model kept secret-shared (its share of the
    weights, then the bias, ring words), re-shared to the nodes and signed: the nodes
    add the MPP's and the ACQP's parts, and nobody holds the weights in the clear."""
    comp = np.asarray(component, dtype=np.uint64).reshape(-1)
    if comp.shape[0] != d_mpp + d_acqp + 1:
        raise InvalidInput(f"a model part has {d_mpp + d_acqp + 1} words (weights and bias)")
    part: dict[str, Any] = {"v": 1, "model": model, "party": me.id, "mpp": mpp, "acqp": acqp,
                            "protocol": privacy.protocol, "frac": int(frac), "d_mpp": int(d_mpp),
                            "d_acqp": int(d_acqp)}
    shares = _seal_words(split_words(comp, privacy.protocol), privacy, nodes, "risk-model",
                         f"{model}/{me.id}", None)
    part["shares"] = {n: envelope_digest(e) for n, e in sorted(shares.items())}
    return {"part": _sign(me, "model", part), "shares": shares}


def verify_model_part(part: Any, signer: PublicEntry | None, privacy: Privacy) -> dict[str, Any]:
    if not isinstance(part, dict) or set(part) != set(MODEL_PART_FIELDS) or part["v"] != 1:
        raise InvalidInput("model part: expected the fields " + ", ".join(MODEL_PART_FIELDS))
    _ids(part, ("model", "party", "mpp", "acqp"), "model part")
    if part["party"] not in (part["mpp"], part["acqp"]) or part["protocol"] != privacy.protocol:
        raise InvalidInput("model part: sent by the model's MPP or ACQP, for this network's protocol")
    for k, hi in (("frac", 40), ("d_mpp", MAX_WIDTH), ("d_acqp", MAX_WIDTH)):
        if isinstance(part[k], bool) or not isinstance(part[k], int) or not 1 <= part[k] <= hi:
            raise InvalidInput(f"model part: {k!r} is 1..{hi}")
    _digests(part["shares"], privacy, "model part")
    _verify("model", part, signer, part["party"], "mpp" if part["party"] == part["mpp"] else "acqp")
    return part


def open_model_part(part: dict[str, Any], env: Any, me: PartyKeys, privacy: Privacy) -> np.ndarray:
    if not is_envelope(env) or envelope_digest(env) != part["shares"].get(me.id):
        raise DecryptionError("model part: not the envelope the part names for this node")
    rows = part["d_mpp"] + part["d_acqp"] + 1
    return _open_words(env, me, "risk-model", f"{part['model']}/{part['party']}", rows,
                       words_per_node(privacy.protocol))


# ------------------------------------------------------------------ decisions
def sign_decisions(me: PartyKeys, *, mpp: str, batch: str, decisions: list[list[Any]]) -> dict[str, Any]:
    """A node's statement of one micro-batch's decisions on ``mpp``'s payments:
    ``decisions`` is a list of ``[acqp, requestId, decision, model, rules]``. One
    signature covers every payment of that MPP in the batch (and none of another's)."""
    return _sign(me, "decision", {"v": 1, "node": me.id, "mpp": mpp, "batch": batch,
                                  "decisions": sorted(decisions)})


def verify_decisions(st: Any, node: PublicEntry | None, *, mpp: str) -> dict[tuple[str, str], tuple[str, str, int]]:
    """A node's signed statement about ``mpp``'s payments: ``(acqp, requestId) ->
    (decision, model, rules version)``; InvalidInput or SignatureError otherwise."""
    if not isinstance(st, dict) or set(st) != set(DECISION_FIELDS) or st["v"] != 1:
        raise InvalidInput("risk decisions: expected the fields " + ", ".join(DECISION_FIELDS))
    if st["mpp"] != mpp or not isinstance(st["batch"], str) or not isinstance(st["decisions"], list):
        raise InvalidInput("risk decisions: about another MPP's payments")
    out: dict[tuple[str, str], tuple[str, str, int]] = {}
    for d in st["decisions"]:
        if not isinstance(d, list) or len(d) != 5 or d[2] not in ("approve", "review", "decline") \
                or isinstance(d[4], bool) or not isinstance(d[4], int):
            raise InvalidInput("risk decisions: [acqp, requestId, decision, model, rules] each")
        out[(str(d[0]), str(d[1]))] = (str(d[2]), str(d[3]), int(d[4]))
    _verify("decision", st, node, str(st["node"]), "node")
    return out


def digest_of(obj: Any) -> str:
    return sha256(wirejson.dumps_sorted(obj)).hex()
