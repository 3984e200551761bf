"""Reading a privacy node's disclosure ledger, as a partner or an auditor does:
fetch a copy from a node (``fetch_ledger``, signed by the caller, the answer checked
against the node's key), check it from its first entry (``verify_records``: every
entry's hash over its content and the previous hash, its sequence, its signature by
the node), and check two nodes' copies against each other (``compare_records``: a
fork is the same position holding different entries).

The ledger's content is described in ``veilpay.node.ledger``, which writes it. An
entry's hash is SHA-256 over a label and the entry's canonical JSON (keys sorted);
a node's signature covers its id, the hash and when it recorded the entry."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx

from veilpay.crypto.digest import sha256
from veilpay.crypto.signing import b64d
from veilpay.errors import GatewayUnavailable, LedgerError
from veilpay.sdk import wirejson
from veilpay.sdk.keys import PartyKeys, PublicEntry
from veilpay.sdk.signing import post_headers, request_digest, verify_message

__all__ = ["CONTENT", "GENESIS", "compare_records", "entry_hash", "fetch_ledger", "signed_message", "verify_records"]

GENESIS = "0" * 64
CONTENT = ("function", "subject", "recipients", "cells", "epsilon", "month", "params")
_HASH_LABEL = b"veilpay/ledger/v1\n"
_SIG_LABEL = b"veilpay/ledger-signature/v1\n"
_RECORD = ("seq", "prev", "hash", "body", "node", "at", "kv", "sig")
_PATH = "/node/v1/ledger"


def entry_hash(body: dict[str, Any]) -> str:
    return sha256(_HASH_LABEL + wirejson.dumps_sorted(body)).hex()


def signed_message(node: str, h: str, at_ms: int) -> bytes:
    return _SIG_LABEL + f"{node}\n{h}\n{at_ms}".encode()


def verify_records(records: Sequence[Any], node: PublicEntry) -> tuple[int, str]:
    """Check a node's exported ledger from its first entry: every record's body, hash,
    link to the one before and signature by ``node``. Returns the head (seq, hash);
    LedgerError naming the first record that fails."""
    prev, seq = GENESIS, 0
    for i, r in enumerate(records):
        if not isinstance(r, dict) or set(r) != set(_RECORD) or not isinstance(r["body"], dict):
            raise LedgerError(f"record {i + 1}: malformed", i + 1)
        body = r["body"]
        if r["seq"] != seq + 1 or body.get("seq") != r["seq"]:
            raise LedgerError(f"record {i + 1}: seq {r['seq']!r} where {seq + 1} was due (an entry is missing)", seq + 1)
        if r["prev"] != prev or body.get("prev") != prev:
            raise LedgerError(f"entry {r['seq']}: does not link to the entry before it", r["seq"])
        if set(body) != {"v", "seq", "prev", *CONTENT} or entry_hash(body) != r["hash"]:
            raise LedgerError(f"entry {r['seq']}: its hash does not match its content (changed after it was made)",
                              r["seq"])
        if r["node"] != node.id:
            raise LedgerError(f"entry {r['seq']}: recorded by {r['node']!r}, not {node.id!r}", r["seq"])
        key = node.verify_key(r["kv"]) if isinstance(r["kv"], int) else None
        try:
            sig = b64d(r["sig"])
        except ValueError:
            sig = b""
        if key is None or not isinstance(r["at"], int) or not key.verify(sig, signed_message(node.id, r["hash"], r["at"])):
            raise LedgerError(f"entry {r['seq']}: not signed by {node.id}", r["seq"])
        prev, seq = r["hash"], r["seq"]
    return seq, prev


def compare_records(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> int:
    """Two nodes' verified copies: the number of entries they share; LedgerError at the
    first position where they hold different entries (a fork)."""
    for ra, rb in zip(a, b, strict=False):
        if ra["hash"] != rb["hash"]:
            raise LedgerError(f"the ledgers of {ra['node']} and {rb['node']} fork at entry {ra['seq']}", ra["seq"])
    return min(len(a), len(b))




def fetch_ledger(url: str, me: PartyKeys, node: PublicEntry, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None, chain: str = "disclosure") -> list[dict[str, Any]]:
    """Every record of ``node``'s ledger, from its API at ``url``, asked as ``me`` (the
    gateway or a partner the node pinned); each page's answer must be signed by the
    node. Verify the copy with ``verify_records``. ``chain = "risk"``: the scoring's
    risk ledger (``docs/risk.md``). GatewayUnavailable when the node cannot be reached
    or refuses."""
    records: list[dict[str, Any]] = []
    with httpx.Client(timeout=timeout, transport=transport) as http:
        while True:
            raw = wirejson.dumps({"after": len(records), "limit": 1000, "chain": chain})
            headers = post_headers(me.signer(), _PATH, me.id, raw)
            try:
                r = http.post(url.rstrip("/") + _PATH, content=raw, headers=headers)
            except httpx.HTTPError as exc:
                raise GatewayUnavailable(f"{url}: {type(exc).__name__}") from exc
            verify_message({k.lower(): v for k, v in r.headers.items()}, "POST", _PATH, r.content, node.verify_key,
                           time.time(), 300.0, "Response-Time", request_digest(headers))
            body = wirejson.loads(r.content)
            if r.status_code != 200 or not isinstance(body, dict):
                raise GatewayUnavailable(f"{node.id}: {body.get('error') if isinstance(body, dict) else r.status_code}")
            page = body.get("records")
            if not isinstance(page, list):
                raise GatewayUnavailable(f"{node.id}: a ledger page without records")
            records += page
            if not page or len(records) >= int(body["head"]["seq"]):
                return records
