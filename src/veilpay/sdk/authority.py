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

import contextlib
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
    verify_inclusion,
)
from veilpay.settings import PrivacySection

__all__ = ["Authority", "KeyLog", "KeyTrust", "LogMirror", "certified_at", "certify", "create_authority", "entry_leaf",
           "leaf_id", "load_authority", "pinned_privacy", "verify_entry", "verify_self_sig"]


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
    """The privacy-node set a party pins (a config's privacy section, or a table:
    protocol, nodes, dealer), or None for a network without nodes."""
    from veilpay.sdk.shares import Privacy

    if table is None:
        return None
    if isinstance(table, PrivacySection):
        return Privacy(table.protocol, tuple(table.nodes), table.dealer)
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: privacy is a table (protocol, nodes, dealer)")
    return Privacy.from_json(table)


def entry_leaf(entry: PublicEntry) -> bytes:
    """The log leaf of an entry: its content and its owner's self-signature, canonical."""
    if entry.self_sig is None:
        raise KeyNotCertified(f"{entry.id}: the entry is not self-signed by its owner")
    try:
        return wirejson.dumps_sorted({"v": 1, "entry": entry.content(), "selfSig": entry.self_sig})
    except (TypeError, ValueError) as exc:
        raise KeyNotCertified(f"{entry.id}: a self-signature that is not JSON of our form ({exc})") from exc


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
    return certified_at(entry, authority)[0]


def certified_at(entry: PublicEntry, authority: Authority) -> tuple[TreeHead, int]:
    """(the head that certifies ``entry``, its leaf index), as ``verify_entry`` checks."""
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
    return head, index


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

    def entries(self, start: int, end: int) -> list[str]:
        """The leaves ``start`` to ``end`` as the text the log holds (what is hashed)."""
        leaves, _ = self.read()
        return [x.decode() for x in leaves[start:end]]


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
    newest: dict[str, PublicEntry] = {}
    for x in leaves:
        with contextlib.suppress(ValueError, KeyError, TypeError, ConfigError):
            other = PublicEntry.from_json(json.loads(x)["entry"])
            newest[other.id] = other
    for other in newest.values():
        if other.id != entry.id and any(a.startswith(b) or b.startswith(a) for a in entry.code_prefixes
                                        for b in other.code_prefixes):
            raise ConfigError(f"certify: {entry.id}'s payment-code prefixes overlap those of {other.id}")
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


def leaf_id(leaf: bytes) -> str:
    """The party id of a log leaf ("" for a leaf that is not an entry)."""
    try:
        return str(json.loads(leaf)["entry"]["id"])
    except (ValueError, KeyError, TypeError):
        return ""


class LogMirror:
    """The key log as far as a party has checked it: every leaf hash and the party id of
    every leaf, extended only by entries that, appended to what it holds, make exactly
    a head the authority signed. Extending so is the consistency check (the history
    held is a prefix of the new head's), and a head of a size already held must have
    the root of that prefix: a head outside this history (another view of the log, a
    rewritten one) raises LogInconsistent. An entry is current when it is the newest
    leaf in its owner's name: a gateway that serves an entry the owner has since
    replaced (an old HPKE key it may hold) is refused. Head signatures are checked once
    per head."""

    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        self.hashes: list[bytes] = []
        self.head: TreeHead | None = None
        self._latest: dict[str, int] = {}
        self._roots: dict[int, bytes] = {0: tree_hash([])}
        self._signed: set[tuple[int, bytes, int, bytes]] = set()

    @property
    def size(self) -> int:
        return len(self.hashes)

    def verify(self, head: TreeHead) -> TreeHead:
        """``head`` when the authority signed it (LogInconsistent otherwise), checked once."""
        key = (head.size, head.root, head.time_ms, head.sig)
        if key not in self._signed:
            head.verify(self.authority.key)
            self._signed.add(key)
        return head

    def extend(self, head: TreeHead, start: int, leaves: list[bytes]) -> None:
        """Take ``head`` with ``leaves``, the log's leaves from index ``start`` (those
        already held are skipped); a head no larger than the log held needs none."""
        self.verify(head)
        if head.size <= self.size:
            self.check(head)
            return
        if not 0 <= start <= self.size:
            raise LogInconsistent(f"log entries from {start} leave a gap after the {self.size} held")
        leaves = leaves[self.size - start:]
        if len(leaves) != head.size - self.size:
            raise LogInconsistent(f"{len(leaves)} new log entries for a head of size {head.size} over the {self.size} "
                                  "held")
        hashes = self.hashes + [leaf_hash(x) for x in leaves]
        if tree_hash(hashes) != head.root:
            raise LogInconsistent(f"the log head of size {head.size} is not the {self.size} entries held and the "
                                  f"{len(leaves)} served after them: a rewritten log, or another view of it")
        for i, x in enumerate(leaves, start=self.size):
            self._latest[leaf_id(x)] = i
        self.hashes, self.head = hashes, head
        self._roots[head.size] = head.root

    def root_at(self, size: int) -> bytes:
        if not 0 <= size <= self.size:
            raise LogInconsistent(f"a log of size {size} beyond the {self.size} entries held")
        root = self._roots.get(size)
        if root is None:
            root = self._roots[size] = tree_hash(self.hashes[:size])
        return root

    def check(self, head: TreeHead) -> None:
        """LogInconsistent unless ``head`` (signature checked) is a head of the history held."""
        self.verify(head)
        if self.root_at(head.size) != head.root:
            raise LogInconsistent(f"two log heads of size {head.size} with different roots: another view of the log")

    def current(self, entry: PublicEntry, index: int) -> None:
        """KeyNotCertified unless ``entry`` is leaf ``index`` and the newest in its name."""
        if not 0 <= index < self.size or self.hashes[index] != leaf_hash(entry_leaf(entry)):
            raise KeyNotCertified(f"{entry.id}: the entry is not leaf {index} of the log")
        latest = self._latest.get(entry.id, index)
        if latest != index:
            raise KeyNotCertified(f"{entry.id}: the entry was replaced by its owner (log entry {latest}); the "
                                  f"directory serves an old one")

    def consistency(self, first: int, second: int) -> list[bytes]:
        """A consistency proof between two sizes of the history held (to hand to a
        witness that holds only heads)."""
        if not 0 <= first <= second <= self.size:
            raise ValueError(f"no proof from {first} to {second} over {self.size} entries")
        return consistency_proof(first, self.hashes[:second])


class KeyTrust:
    """What a party checks of every directory before it takes a key from it: the
    directory carries a log head the pinned ``authority`` signed, no older than the
    newest one this party saw before (``state``: a file that keeps it across restarts,
    so a restarted party cannot be rolled back to an entry its owner has replaced);
    every entry is self-signed, certified by the authority and current (the newest in
    its owner's name) in the log mirrored up to that head; the privacy-node set and
    protocol are exactly the pinned ``privacy`` (None: a network without nodes); every
    log head met (the directory's, each certificate's) is one history with every head
    seen before. Certificates are checked once per entry version and head signatures
    once per head, and the log is fetched only past what is held, so taking keys costs
    no public-key operation per payment. KeyNotCertified or LogInconsistent otherwise."""

    def __init__(self, authority: Authority, privacy: Any = None, state: str | Path | None = None) -> None:
        self.authority, self.privacy = authority, privacy
        self.log = LogMirror(authority)
        self.state = Path(state) if state is not None else None
        self._certified: dict[bytes, int] = {}
        self._seen = self._read_state()

    def _read_state(self) -> tuple[int, bytes] | None:
        if self.state is None:
            return None
        try:
            raw = json.loads(self.state.read_text())
            size, root = raw["size"], bytes.fromhex(raw["root"])
            if isinstance(size, bool) or not isinstance(size, int) or size < 0 or len(root) != 32:
                raise ValueError("size or root")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{self.state}: not a key-log state file ({exc})") from exc
        return size, root

    def _head(self, head: TreeHead | None) -> TreeHead:
        if head is None:
            raise LogInconsistent("the directory carries no key-log head")
        self.log.verify(head)
        if self._seen is not None and head.size < self._seen[0]:
            raise LogInconsistent(f"the directory's log head of size {head.size} is older than the one of size "
                                  f"{self._seen[0]} this party saw before: a rollback")
        return head

    def wanted(self, entries: list[PublicEntry], head: TreeHead | None) -> tuple[int, int] | None:
        """The log entries (start, end) a directory of ``entries`` and ``head`` needs
        fetched before ``check``, or None. ``head`` (the directory's) is checked first:
        nobody makes the party fetch a log the authority did not sign."""
        top = self._head(head)
        return (self.log.size, top.size) if top.size > self.log.size else None

    def check(self, entries: list[PublicEntry], privacy: Any, head: TreeHead | None, start: int,
              leaves: list[bytes]) -> None:
        """Check a directory's ``entries``, its ``privacy`` section and its log ``head``;
        ``leaves``: the log entries from ``start`` that ``wanted`` named."""
        if privacy != self.privacy:
            raise KeyNotCertified(f"the directory announces privacy nodes {privacy!r}; this party pinned "
                                  f"{self.privacy!r}")
        top = self._head(head)
        self.log.extend(top, start, leaves)
        if self._seen is not None and self.log.root_at(self._seen[0]) != self._seen[1]:
            raise LogInconsistent(f"the log is not the one of size {self._seen[0]} this party saw before: a rewritten "
                                  "log, or another view of it")
        taken = []
        for e in entries:
            lh = leaf_hash(entry_leaf(e))
            index = self._certified.get(lh)
            if index is None:
                cert_head, index = certified_at(e, self.authority)
                if cert_head.size > top.size:
                    raise LogInconsistent(f"{e.id}: a certificate from a log head of size {cert_head.size}, beyond "
                                          f"the directory's {top.size}")
                self.log.check(cert_head)
            self.log.current(e, index)
            taken.append((lh, index))
        self._certified.update(taken)
        if self.state is not None and (self._seen is None or top.size > self._seen[0]):
            on_disk = self._read_state()  # another process of this party may have seen a newer one
            if on_disk is None or top.size > on_disk[0]:
                text = json.dumps({"size": top.size, "root": top.root.hex()})
                try:
                    atomic_write(self.state, lambda fh: fh.write(text), mode=0o600)
                except OSError as exc:
                    raise ConfigError(f"{self.state}: cannot keep the key-log state ({exc})") from exc
                on_disk = (top.size, top.root)
            self._seen = on_disk
