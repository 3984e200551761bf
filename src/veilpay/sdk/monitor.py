"""Watching the key transparency log for entries in one's own name
(``veilpay keys monitor``).

A party fetches the whole log from the gateway, checks that the head is the key
authority's and that the entries make exactly its tree, checks that the log still
extends the one it saw last time (the entries it saw then are a prefix: the same
root over the same first leaves), exchanges heads with the privacy nodes as
witnesses (``veilpay.node.witness``: what one partner was shown is checked against
what the others were), and lists every entry in its own name whose keys are not keys
it holds. Such an entry is a key someone else had certified for it: the alarm this
log exists to raise."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from veilpay.errors import ConfigError, GatewayUnavailable, LogInconsistent
from veilpay.files import atomic_write
from veilpay.sdk import wirejson
from veilpay.sdk.authority import Authority, verify_entry
from veilpay.sdk.keys import PartyKeys, PublicEntry
from veilpay.sdk.signing import post_headers, request_digest, verify_message
from veilpay.sdk.transparency import TreeHead, consistency_proof, leaf_hash, tree_hash

__all__ = ["exchange_heads", "foreign_entries", "watch"]

_WITNESS = "/node/v1/log/head"


def _overlap(a: list[str], b: list[str]) -> bool:
    return any(x.startswith(y) or y.startswith(x) for x in a for y in b)


def foreign_entries(leaves: list[str], me: PartyKeys) -> tuple[int, list[int]]:
    """(entries in ``me``'s name, the indices of the entries that would take ``me``'s
    place: those in its name with a key it does not hold, and those in any other name
    that claim a payment-code prefix overlapping its own or its endpoint or notify URL)."""
    mine_sign = {k.to_bytes() for k in me.public.signing.values()}
    mine_hpke = {k.to_bytes() for k in me.public.hpke.values()}
    urls = {u for u in (me.public.endpoint, me.public.notify_url, me.public.notify_batch_url) if u}
    count, foreign = 0, []
    for i, raw in enumerate(leaves):
        try:
            entry = PublicEntry.from_json(json.loads(raw)["entry"])
        except (ValueError, KeyError, TypeError, ConfigError):
            continue
        if entry.id != me.id:
            theirs = {u for u in (entry.endpoint, entry.notify_url, entry.notify_batch_url) if u}
            if _overlap(entry.code_prefixes, me.public.code_prefixes) or theirs & urls:
                foreign.append(i)
            continue
        count += 1
        if {k.to_bytes() for k in entry.signing.values()} - mine_sign or {k.to_bytes() for k in entry.hpke.values()} \
                - mine_hpke:
            foreign.append(i)
    return count, foreign


def _fetch_log(http: httpx.Client, gateway_url: str, authority: Authority) -> tuple[list[str], TreeHead]:
    leaves: list[str] = []
    head: TreeHead | None = None
    while True:
        r = http.get(gateway_url.rstrip("/") + "/v1/log/entries", params={"start": len(leaves)})
        if r.status_code != 200:
            raise GatewayUnavailable(f"{gateway_url}: the key log answered HTTP {r.status_code}")
        try:
            page = r.json()
            head = TreeHead.from_json(page["head"]).verify(authority.key)
            entries = [str(x) for x in page["entries"]]
            if page["start"] != len(leaves) or len(leaves) + len(entries) > head.size:
                raise ValueError("start or length")
        except (ValueError, KeyError, TypeError) as exc:
            raise LogInconsistent(f"a malformed key-log page from {len(leaves)}: {exc}") from exc
        leaves += entries
        if not entries or len(leaves) >= head.size:
            break
    if len(leaves) != head.size or tree_hash([leaf_hash(x.encode()) for x in leaves]) != head.root:
        raise LogInconsistent("the log's entries do not make the head the key authority signed")
    return leaves, head


def exchange_heads(http: httpx.Client, me: PartyKeys, node: PublicEntry, authority: Authority,
                   hashes: list[bytes], head: TreeHead) -> TreeHead:
    """Offer ``head`` (over the leaf hashes ``hashes``, checked) to ``node`` as a key-log
    witness (``veilpay.node.witness``), with the consistency proof against the head it
    holds; returns the node's newest head. LogInconsistent when the node witnessed a
    head outside this history, or refuses this one (two views of the log); a node
    head beyond ``head`` is returned for the caller to fetch the log up to."""
    url = node.endpoint.rstrip("/") + _WITNESS
    base: int | None = None
    for _ in range(3):
        proof: list[bytes] = []
        if base is not None:
            proof = consistency_proof(min(base, head.size), hashes[:max(base, head.size)])
        raw = wirejson.dumps({"head": head.to_json(), "base": base, "proof": [p.hex() for p in proof]})
        headers = post_headers(me.signer(), _WITNESS, me.id, raw)
        r = http.post(url, content=raw, headers=headers)
        verify_message({k.lower(): v for k, v in r.headers.items()}, "POST", _WITNESS, r.content, node.verify_key,
                       time.time(), 300.0, "Response-Time", request_digest(headers))
        body = wirejson.loads(r.content)
        if r.status_code == 409:
            raise LogInconsistent(f"{node.id}: {body.get('error', {}).get('message', 'refused the log head')}")
        if r.status_code != 200 or not isinstance(body, dict):
            raise GatewayUnavailable(f"{node.id}: {body.get('error') if isinstance(body, dict) else r.status_code}")
        theirs = TreeHead.from_json(body.get("head")).verify(authority.key)
        if theirs.size > head.size:
            return theirs
        if tree_hash(hashes[:theirs.size]) != theirs.root:
            raise LogInconsistent(f"{node.id} witnessed a log head of size {theirs.size} that is not in the log the "
                                  "gateway shows this party: two views of the log")
        if body.get("accepted"):
            return theirs
        base = theirs.size
    raise GatewayUnavailable(f"{node.id}: its witnessed head kept moving")


def watch(gateway_url: str, me: PartyKeys, authority: Authority, state: Path,
          transport: httpx.BaseTransport | None = None, nodes: list[PublicEntry] | None = None) -> dict[str, Any]:
    """Fetch and check the log, compare it with ``state`` (the last head seen, updated),
    exchange heads with the privacy ``nodes`` as witnesses (each entry certified), and
    report the entries in ``me``'s name. LogInconsistent for a head the authority did
    not sign, entries that do not make it, a log that no longer extends the last one
    seen, or a head a node witnessed that is not in it."""
    with httpx.Client(timeout=30, transport=transport) as http:
        leaves, head = _fetch_log(http, gateway_url, authority)
        witnessed: dict[str, int] = {}
        for node in nodes or []:
            verify_entry(node, authority)
            hashes = [leaf_hash(x.encode()) for x in leaves]
            theirs = exchange_heads(http, me, node, authority, hashes, head)
            if theirs.size > head.size:  # the node saw a newer log: fetch it, and it must be that one
                leaves, head = _fetch_log(http, gateway_url, authority)
                hashes = [leaf_hash(x.encode()) for x in leaves]
                if theirs.size > head.size or tree_hash(hashes[:theirs.size]) != theirs.root:
                    raise LogInconsistent(f"{node.id} witnessed a log head of size {theirs.size} that the gateway "
                                          f"does not serve (it serves {head.size}): two views of the log")
                theirs = exchange_heads(http, me, node, authority, hashes, head)
            witnessed[node.id] = theirs.size
    try:
        last = json.loads(state.read_text())
    except (OSError, ValueError):
        last = None
    if last is not None:
        size, root = int(last["size"]), bytes.fromhex(last["root"])
        if size > head.size or tree_hash([leaf_hash(x.encode()) for x in leaves[:size]]) != root:
            raise LogInconsistent(f"the log no longer extends the one of size {size} seen before")
    text = json.dumps({"size": head.size, "root": head.root.hex()})
    atomic_write(state, lambda fh: fh.write(text))
    count, foreign = foreign_entries(leaves, me)
    return {"size": head.size, "root": head.root.hex(), "entries_in_my_name": count, "foreign": foreign,
            "witnessed": witnessed}
