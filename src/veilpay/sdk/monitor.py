"""Watching the key transparency log for entries in one's own name
(``veilpay keys monitor``).

A party fetches the whole log from the gateway, checks that the head is the key
authority's and that the entries make exactly its tree, checks that the log still
extends the one it saw last time (the entries it saw then are a prefix: the same
root over the same first leaves), and lists every entry in its own name whose keys
are not keys it holds. Such an entry is a key someone else had certified for it:
the alarm this log exists to raise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from veilpay.errors import LogInconsistent
from veilpay.files import atomic_write
from veilpay.sdk.authority import Authority
from veilpay.sdk.keys import PartyKeys, PublicEntry
from veilpay.sdk.transparency import TreeHead, leaf_hash, tree_hash

__all__ = ["foreign_entries", "watch"]


def foreign_entries(leaves: list[str], me: PartyKeys) -> tuple[int, list[int]]:
    """(entries in ``me``'s name, the indices of those with a key ``me`` does not hold)."""
    mine_sign = {k.to_bytes() for k in me.public.signing.values()}
    mine_hpke = {k.to_bytes() for k in me.public.hpke.values()}
    count, foreign = 0, []
    for i, raw in enumerate(leaves):
        try:
            entry = PublicEntry.from_json(json.loads(raw)["entry"])
        except (ValueError, KeyError, TypeError):
            continue
        if entry.id != me.id:
            continue
        count += 1
        if {k.to_bytes() for k in entry.signing.values()} - mine_sign or {k.to_bytes() for k in entry.hpke.values()} \
                - mine_hpke:
            foreign.append(i)
    return count, foreign


def watch(gateway_url: str, me: PartyKeys, authority: Authority, state: Path,
          transport: httpx.BaseTransport | None = None) -> dict[str, Any]:
    """Fetch and check the log, compare it with ``state`` (the last head seen, updated),
    and report the entries in ``me``'s name. LogInconsistent for a head the authority
    did not sign, entries that do not make it, or a log that no longer extends the last
    one seen."""
    leaves: list[str] = []
    head: TreeHead | None = None
    with httpx.Client(timeout=30, transport=transport) as http:
        while True:
            r = http.get(gateway_url.rstrip("/") + "/v1/log/entries", params={"start": len(leaves)})
            r.raise_for_status()
            page = r.json()
            head = TreeHead.from_json(page["head"]).verify(authority.key)
            leaves += [str(x) for x in page["entries"]]
            if not page["entries"] or len(leaves) >= head.size:
                break
    if head is None or len(leaves) != head.size or tree_hash([leaf_hash(x.encode()) for x in leaves]) != head.root:
        raise LogInconsistent("the log's entries do not make the head the key authority signed")
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
    return {"size": head.size, "root": head.root.hex(), "entries_in_my_name": count, "foreign": foreign}
