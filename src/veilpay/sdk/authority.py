"""The network's key authority and its transparency log: who vouches for the keys that
partners seal to, so that nobody has to take the gateway's word for them.

- The **authority** is an Ed25519 key held offline by the network's members (the
  gateway operator is not one of them): ``veilpay keys authority`` makes it, with an
  empty log. Every party pins its public half (``authority.json``).
- Every partner's and node's key entry (``public.json``) is **self-signed** by its owner
  (``PartyKeys.sign_entry``, on creation, rotation and retirement).
- ``veilpay keys certify`` has the authority check an entry's self-signature, append
  the entry to its **log** (an RFC 9162 Merkle tree, ``veilpay.sdk.transparency``) and
  sign the new head; the entry's **certificate** is that head and the entry's
  inclusion proof, written into its ``public.json``. An entry is certified exactly
  when a head the authority signed includes it; anyone holding the authority's public
  key checks a certificate offline (``verify_entry``).
- The log folder (``entries.jsonl``, ``head.json``) is public: the gateway serves it
  (heads, consistency proofs, entries) so that SDKs can check each head they see
  extends the last one, and owners can watch it for entries in their own name
  (``veilpay keys monitor``).

A gateway that lists its own key for an MPP or a node, or an old entry the owner has
replaced, has no certificate for it that verifies: the SDK refuses it with
KeyNotCertified before it seals anything."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veilpay.crypto.signing import SigningKey, VerifyKey, b64d, b64e
from veilpay.errors import ConfigError, KeyNotCertified, LogInconsistent
from veilpay.files import atomic_write
from veilpay.sdk import wirejson
from veilpay.sdk.keys import PublicEntry, entry_message
from veilpay.sdk.transparency import (
    TreeHead,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    tree_hash,
    verify_consistency,
    verify_inclusion,
)

__all__ = ["Authority", "KeyLog", "KeyTrust", "certify", "create_authority", "entry_leaf", "load_authority",
           "pinned_privacy", "verify_entry",
           "verify_self_sig"]


@dataclass(frozen=True)
class Authority:
    """The key authority's public half, as every party pins it."""

    name: str
    key: VerifyKey

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "key": b64e(self.key.to_bytes())}

    @classmethod
    def from_json(cls, obj: Any) -> Authority:
        try:
            return cls(str(obj["name"]), VerifyKey.from_bytes(b64d(obj["key"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed key authority: {exc}") from exc


def load_authority(path: str | Path) -> Authority:
    """The pinned authority (its ``authority.json``)."""
    try:
        return Authority.from_json(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def pinned_privacy(table: Any, where: str) -> Any:
    """The privacy-node set a party pins (a ``privacy`` table: protocol, nodes, dealer),
    or None for a network without nodes."""
    from veilpay.sdk.shares import Privacy

    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: privacy is a table (protocol, nodes, dealer)")
    return Privacy.from_json(table)


def entry_leaf(entry: PublicEntry) -> bytes:
    """The log leaf of an entry: its content and its owner's self-signature, canonical."""
    if entry.self_sig is None:
        raise KeyNotCertified(f"{entry.id}: the entry is not self-signed by its owner")
    return wirejson.dumps_sorted({"v": 1, "entry": entry.content(), "selfSig": entry.self_sig})


def verify_self_sig(entry: PublicEntry) -> None:
    """KeyNotCertified unless the entry is signed by one of its own active keys."""
    sig = entry.self_sig or {}
    kv = sig.get("kv")
    key = entry.verify_key(kv) if isinstance(kv, int) and not isinstance(kv, bool) else None
    try:
        raw = b64d(sig.get("sig", ""))
    except ValueError:
        raw = b""
    if key is None or not key.verify(raw, entry_message(entry)):
        raise KeyNotCertified(f"{entry.id}: the entry's self-signature does not verify")


def verify_entry(entry: PublicEntry, authority: Authority) -> TreeHead:
    """The signed head that certifies ``entry``: its owner's self-signature checks, and
    its certificate's inclusion proof leads to a head the authority signed.
    KeyNotCertified otherwise."""
    verify_self_sig(entry)
    cert = entry.certificate
    if not isinstance(cert, dict):
        raise KeyNotCertified(f"{entry.id}: the entry has no certificate from the key authority")
    try:
        head = TreeHead.from_json(cert.get("head")).verify(authority.key)
        index = cert["index"]
        path = [bytes.fromhex(h) for h in cert["path"]]
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError("index")
    except (LogInconsistent, KeyError, TypeError, ValueError) as exc:
        raise KeyNotCertified(f"{entry.id}: the certificate does not verify ({exc})") from exc
    if not verify_inclusion(index, head.size, leaf_hash(entry_leaf(entry)), path, head.root):
        raise KeyNotCertified(f"{entry.id}: the entry is not the one its certificate's log head includes")
    return head


class KeyLog:
    """The authority's log as files in a folder (``entries.jsonl``: one leaf a line, as
    JSON text; ``head.json``: the newest signed head). The authority writes it; the
    gateway reads it to serve heads and proofs."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._cache: tuple[float, list[bytes], TreeHead] | None = None

    def read(self) -> tuple[list[bytes], TreeHead]:
        """(the leaves, the head), re-read when the head file changes."""
        head_path = self.folder / "head.json"
        try:
            mtime = head_path.stat().st_mtime
            if self._cache is not None and self._cache[0] == mtime:
                return self._cache[1], self._cache[2]
            head = TreeHead.from_json(json.loads(head_path.read_text()))
            lines = (self.folder / "entries.jsonl").read_text().splitlines()
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{self.folder}: no key log here ({exc})") from exc
        leaves = [line.encode() for line in lines if line]
        if len(leaves) != head.size or tree_hash([leaf_hash(x) for x in leaves]) != head.root:
            raise LogInconsistent(f"{self.folder}: the entries do not make the head's tree")
        self._cache = (mtime, leaves, head)
        return leaves, head

    def head(self) -> TreeHead:
        return self.read()[1]

    def consistency(self, first: int, second: int | None = None) -> list[bytes]:
        """The proof that the tree of ``first`` leaves is a prefix of that of ``second``
        (default: the whole log). ValueError outside 0 <= first <= second <= size."""
        leaves, head = self.read()
        second = head.size if second is None else second
        if not 0 <= first <= second <= head.size:
            raise ValueError(f"no proof from {first} to {second} (the log has {head.size})")
        return consistency_proof(first, [leaf_hash(x) for x in leaves[:second]])

    def entries(self, start: int, end: int) -> list[Any]:
        leaves, _ = self.read()
        return [json.loads(x) for x in leaves[start:end]]


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    atomic_write(path, lambda fh: fh.write(text), mode=mode)


def create_authority(folder: str | Path, name: str) -> Authority:
    """A new key authority in ``folder``: ``authority.json`` (pin it everywhere),
    ``secret.json`` (mode 0600; keep it offline) and an empty log in ``log/``."""
    folder = Path(folder)
    if (folder / "secret.json").exists():
        raise ConfigError(f"{folder}: a key authority already lives here")
    (folder / "log").mkdir(parents=True, exist_ok=True)
    sk = SigningKey.generate()
    auth = Authority(name, sk.public())
    _write(folder / "secret.json", json.dumps({"name": name, "key": b64e(sk.to_bytes())}), 0o600)
    _write(folder / "authority.json", json.dumps(auth.to_json(), indent=1))
    _write(folder / "log" / "entries.jsonl", "")
    head = TreeHead(0, tree_hash([]), int(time.time() * 1000)).signed(sk)
    _write(folder / "log" / "head.json", json.dumps(head.to_json(), indent=1))
    return auth


def certify(folder: str | Path, entry_path: str | Path) -> dict[str, Any]:
    """The authority in ``folder`` certifies the entry in ``entry_path`` (a party's
    ``public.json``): its self-signature checked, appended to the log, the new head
    signed, and the certificate written into the entry file. An entry already in the
    log gets a certificate for its place there, nothing is appended twice."""
    folder, entry_path = Path(folder), Path(entry_path)
    try:
        sec = json.loads((folder / "secret.json").read_text())
        sk = SigningKey.from_bytes(b64d(sec["key"]))
        entry = PublicEntry.from_json(json.loads(entry_path.read_text()))
    except (OSError, json.JSONDecodeError, KeyError, ValueError) as exc:
        raise ConfigError(f"certify: {exc}") from exc
    verify_self_sig(entry)
    log = KeyLog(folder / "log")
    leaves, _ = log.read()
    leaf = entry_leaf(entry).decode()
    if leaf.encode() in leaves:
        index = leaves.index(leaf.encode())
    else:
        with (folder / "log" / "entries.jsonl").open("a") as fh:
            fh.write(leaf + "\n")
        leaves.append(leaf.encode())
        index = len(leaves) - 1
    hashes = [leaf_hash(x) for x in leaves]
    head = TreeHead(len(leaves), tree_hash(hashes), int(time.time() * 1000)).signed(sk)
    _write(folder / "log" / "head.json", json.dumps(head.to_json(), indent=1))
    entry.certificate = {"index": index, "head": head.to_json(), "path": [h.hex() for h in inclusion_proof(index, hashes)]}
    _write(entry_path, json.dumps(entry.to_json(), indent=2))
    return {"id": entry.id, "index": index, "size": head.size, "root": head.root.hex()}


Pair = tuple[int, int]


class KeyTrust:
    """What a party checks of every directory before it takes a key from it: every entry
    self-signed and certified by the pinned ``authority``; the privacy-node set and
    protocol exactly the pinned ``privacy`` (None: a network without nodes); and every
    log head it meets (the directory's, each certificate's) consistent with the newest
    head it has seen, by consistency proofs the gateway serves. An entry is checked
    once (kept by its leaf hash), so taking keys costs no public-key operation per
    payment. KeyNotCertified or LogInconsistent otherwise."""

    def __init__(self, authority: Authority, privacy: Any = None) -> None:
        self.authority, self.privacy = authority, privacy
        self.head: TreeHead | None = None
        self._entries: set[bytes] = set()
        self._heads: set[tuple[int, bytes]] = set()

    @staticmethod
    def heads_of(entries: list[PublicEntry], head: TreeHead | None) -> list[TreeHead]:
        """The log heads a directory shows: its own and its entries' certificates' (the
        malformed ones left for ``check`` to refuse)."""
        out = [head] if head is not None else []
        for e in entries:
            try:
                out.append(TreeHead.from_json((e.certificate or {}).get("head")))
            except LogInconsistent:
                continue
        return out

    def needed(self, heads: list[TreeHead]) -> set[Pair]:
        """The consistency proofs (first, second) that checking ``heads`` will ask for."""
        out: set[Pair] = set()
        top = self.head
        for h in sorted(heads, key=lambda h: h.size):
            if top is None or h.size > top.size:
                if top is not None and top.size:
                    out.add((top.size, h.size))
                top = h
        for h in heads:
            if top is not None and 0 < h.size < top.size and (h.size, h.root) not in self._heads:
                out.add((h.size, top.size))
        return out

    def _advance(self, new: TreeHead, proofs: dict[Pair, list[bytes]]) -> None:
        old = self.head
        if old is not None:
            if new.size == old.size and new.root != old.root:
                raise LogInconsistent(f"two log heads of size {new.size} with different roots: a forked log")
            if new.size < old.size:
                self._consistent(new, proofs)
                return
            if new.size > old.size and old.size and not verify_consistency(
                    old.size, new.size, proofs.get((old.size, new.size), []), old.root, new.root):
                raise LogInconsistent(f"the log head of size {new.size} does not extend the one of size {old.size} "
                                      "seen before (a rewritten history, or another view of the log)")
        self.head = new
        self._heads.add((new.size, new.root))

    def _consistent(self, h: TreeHead, proofs: dict[Pair, list[bytes]]) -> None:
        top = self.head
        if top is None or (h.size, h.root) in self._heads:
            return
        if h.size == top.size and h.root != top.root or h.size < top.size and h.size and not verify_consistency(
                h.size, top.size, proofs.get((h.size, top.size), []), h.root, top.root):
            raise LogInconsistent(f"a certificate's log head of size {h.size} is not in the history of the head of "
                                  f"size {top.size}")
        self._heads.add((h.size, h.root))

    def check(self, entries: list[PublicEntry], privacy: Any, head: TreeHead | None,
              proofs: dict[Pair, list[bytes]]) -> None:
        """Check a directory's ``entries``, its ``privacy`` section and its log ``head``."""
        if privacy != self.privacy:
            raise KeyNotCertified(f"the directory announces privacy nodes {privacy!r}; this party pinned "
                                  f"{self.privacy!r}")
        certified = []
        for e in entries:
            lh = leaf_hash(entry_leaf(e))
            if lh not in self._entries:
                certified.append((lh, verify_entry(e, self.authority)))
        heads = ([head.verify(self.authority.key)] if head is not None else []) + [h for _, h in certified]
        for h in sorted(heads, key=lambda h: h.size):
            if self.head is None or h.size >= self.head.size:
                self._advance(h, proofs)
        for h in heads:
            self._consistent(h, proofs)
        self._entries.update(lh for lh, _ in certified)
