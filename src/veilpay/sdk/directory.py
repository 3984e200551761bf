"""The partner directory: every partner's public entry (keys, endpoints, the payment
code prefixes each MPP issues), as the gateway serves it, signed by the gateway.

Partners pin the gateway's signing key and trust a directory only when its
signature verifies, and then take a key from it only when the key authority they
pinned certified it (``veilpay.sdk.authority.KeyTrust``): the gateway serves the
directory, it does not vouch for it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from veilpay.errors import ConfigError
from veilpay.sdk.keys import PublicEntry
from veilpay.sdk.shares import Privacy
from veilpay.sdk.transparency import TreeHead

__all__ = ["Directory"]


@dataclass
class Directory:
    version: int
    partners: dict[str, PublicEntry]
    privacy: Privacy | None = None  # set when amounts are secret-shared to privacy nodes
    head: TreeHead | None = None  # the key log's newest head the gateway holds (veilpay.sdk.authority)

    def __post_init__(self) -> None:
        if self.privacy is not None:
            for n in self.privacy.parties:
                if n not in self.partners or self.partners[n].role != "node":
                    raise ConfigError(f"privacy node {n!r} is not a node in the directory")
        self._prefixes: dict[str, str] = {}
        for p in self.partners.values():
            for pre in p.code_prefixes:
                if p.role != "mpp":
                    raise ConfigError(f"{p.id}: only an MPP issues payment codes")
                if pre in self._prefixes:
                    raise ConfigError(f"code prefix {pre} claimed by {self._prefixes[pre]} and {p.id}")
                self._prefixes[pre] = p.id
        for pre, owner in self._prefixes.items():  # nested prefixes of two MPPs: the longer would take the codes
            for cut in range(2, len(pre)):
                other = self._prefixes.get(pre[:cut])
                if other is not None and other != owner:
                    raise ConfigError(f"code prefix {pre} of {owner} lies inside prefix {pre[:cut]} of {other}")

    def get(self, party_id: str) -> PublicEntry | None:
        return self.partners.get(party_id)

    def issuer_of(self, code: str) -> tuple[str, PublicEntry] | None:
        """(prefix, MPP) for a payment code: the longest listed prefix it starts with."""
        for n in range(min(8, len(code)), 1, -1):
            pid = self._prefixes.get(code[:n])
            if pid is not None:
                return code[:n], self.partners[pid]
        return None

    def mpp_for_prefix(self, prefix: str) -> PublicEntry | None:
        pid = self._prefixes.get(prefix)
        return self.partners[pid] if pid else None

    def nodes(self) -> dict[str, PublicEntry]:
        return {p.id: p for p in self.partners.values() if p.role == "node"}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version,
                               "partners": [p.to_json() for _, p in sorted(self.partners.items())]}
        if self.privacy is not None:
            out["privacy"] = self.privacy.to_json()
        if self.head is not None:
            out["log"] = {"head": self.head.to_json()}
        return out

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, obj: Any) -> Directory:
        if not isinstance(obj, dict) or not isinstance(obj.get("partners"), list):
            raise ConfigError("a directory is an object with a 'partners' list")
        entries = [PublicEntry.from_json(p) for p in obj["partners"]]
        ids = [e.id for e in entries]
        if len(set(ids)) != len(ids):
            raise ConfigError("a directory lists a partner twice")
        privacy = Privacy.from_json(obj["privacy"]) if obj.get("privacy") else None
        log = obj.get("log")
        head = TreeHead.from_json(log["head"]) if isinstance(log, dict) and log.get("head") is not None else None
        version = obj.get("version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ConfigError(f"a directory version is an integer, not {version!r}")
        return cls(version, {e.id: e for e in entries}, privacy, head)
