"""Partner and gateway key material: Ed25519 signing keys and HPKE key pairs, each
with a version, in two JSON files per party.

``public.json`` is what the party publishes (the gateway serves it in its signed
directory): id, role, endpoints, code prefixes (MPPs), signing keys with a status
and HPKE public keys. ``secret.json`` (mode 0600) holds the private halves and, for an
MPP, the customer-token key. Rotation adds version n+1 and makes it the signing key;
an older signing key still verifies until it is retired."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veilpay.crypto.groupkey import SessionKeys
from veilpay.crypto.hpke import SUITES, HpkePrivateKey, HpkePublicKey
from veilpay.crypto.signing import SigningKey, VerifyKey, b64d, b64e
from veilpay.crypto.tokens import TokenKey
from veilpay.errors import ConfigError
from veilpay.files import atomic_write

__all__ = ["ENTRY_LABEL", "ROLES", "PartyKeys", "entry_message", "PublicEntry", "create_party",
           "customer_token", "load_party", "retire_key", "rotate_keys"]

ROLES = ("mpp", "acqp", "gateway", "node")
ENTRY_LABEL = b"veilpay/key-entry/v1\n"  # what an owner's self-signature covers, before the entry's JSON
_REGION = re.compile(r"^([A-Z]{2})?$")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # fullmatch: "$" would let a trailing newline through
_PREFIX = re.compile(r"[0-9]{2,8}")
_MAX_VERSION = 2**31 - 1


def _version(v: Any) -> int:
    """A key version: an integer 1 .. 2^31 - 1 (ValueError otherwise)."""
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise ValueError(f"key version {v!r}")
    n = int(v)
    if not 1 <= n <= _MAX_VERSION:
        raise ValueError(f"key version {v!r} out of range")
    return n


def entry_message(entry: PublicEntry) -> bytes:
    """The bytes an owner's self-signature covers: a label and the entry's content as
    canonical JSON (keys sorted, compact)."""
    return ENTRY_LABEL + json.dumps(entry.content(), separators=(",", ":"), sort_keys=True).encode()


@dataclass
class PublicEntry:
    """What everyone may know about a party."""

    id: str
    role: str
    endpoint: str = ""
    notify_url: str = ""
    code_prefixes: list[str] = field(default_factory=list)
    signing: dict[int, VerifyKey] = field(default_factory=dict)
    retired: set[int] = field(default_factory=set)
    hpke: dict[int, HpkePublicKey] = field(default_factory=dict)
    region: str = ""  # ISO 3166 alpha-2 country of the partner, for corridor analytics
    notify_batch_url: str = ""  # ACQP: takes several webhooks in one call (optional)
    # the owner's signature over the entry ({"kv", "sig"}), and the key authority's
    # certificate ({"index", "head", "path"}: the entry's place in a signed log head);
    # veilpay.sdk.authority makes and checks both
    self_sig: dict[str, Any] | None = None
    certificate: dict[str, Any] | None = None

    @property
    def hpke_version(self) -> int:
        if not self.hpke:
            raise ConfigError(f"party {self.id!r} publishes no HPKE key")
        return max(self.hpke)

    def verify_key(self, version: int) -> VerifyKey | None:
        """The signing key of ``version``, or None when unknown or retired."""
        if version in self.retired:
            return None
        return self.signing.get(version)

    def content(self) -> dict[str, Any]:
        """The entry without its self-signature and certificate: what both cover."""
        extra = {"notifyBatchUrl": self.notify_batch_url} if self.notify_batch_url else {}
        return {
            "id": self.id, "role": self.role, "endpoint": self.endpoint, "notifyUrl": self.notify_url, **extra,
            "codePrefixes": list(self.code_prefixes), "region": self.region,
            "signingKeys": [{"version": v, "public": b64e(k.to_bytes()),
                             "status": "retired" if v in self.retired else "active"}
                            for v, k in sorted(self.signing.items())],
            "hpkeKeys": [{"version": v, "suite": k.suite, "public": b64e(k.to_bytes())}
                         for v, k in sorted(self.hpke.items())],
        }

    def to_json(self) -> dict[str, Any]:
        out = self.content()
        if self.self_sig is not None:
            out["selfSig"] = dict(self.self_sig)
        if self.certificate is not None:
            out["certificate"] = dict(self.certificate)
        return out

    @classmethod
    def from_json(cls, obj: Any) -> PublicEntry:
        try:
            pid, role = str(obj["id"]), str(obj["role"])
            if not _ID.fullmatch(pid) or role not in ROLES:
                raise ConfigError(f"bad party id {pid!r} or role {role!r}")
            prefixes = [str(p) for p in obj.get("codePrefixes", [])]
            for p in prefixes:
                if not _PREFIX.fullmatch(p):
                    raise ConfigError(f"party {pid!r}: code prefix {p!r} is not 2-8 digits")
            entry = cls(pid, role, str(obj.get("endpoint", "")), str(obj.get("notifyUrl", "")), prefixes)
            entry.region = str(obj.get("region", ""))
            entry.notify_batch_url = str(obj.get("notifyBatchUrl", ""))
            if not _REGION.match(entry.region):
                raise ConfigError(f"party {pid!r}: region {entry.region!r} is not an ISO 3166 alpha-2 code")
            for k in obj["signingKeys"]:
                v = _version(k["version"])
                entry.signing[v] = VerifyKey.from_bytes(b64d(k["public"]))
                if k.get("status", "active") == "retired":
                    entry.retired.add(v)
            for k in obj.get("hpkeKeys", []):
                entry.hpke[_version(k["version"])] = HpkePublicKey(str(k["suite"]), b64d(k["public"]))
            for name in ("selfSig", "certificate"):
                if obj.get(name) is not None and not isinstance(obj[name], dict):
                    raise ConfigError(f"party {pid!r}: {name} is an object")
            entry.self_sig, entry.certificate = obj.get("selfSig"), obj.get("certificate")
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed public key entry: {exc}") from exc
        return entry


@dataclass
class PartyKeys:
    """A party's own keys: its public entry plus the private halves."""

    public: PublicEntry
    signing: dict[int, SigningKey]
    hpke: dict[int, HpkePrivateKey]
    token_key: TokenKey | None = None
    admin_token: str = ""
    # session keys this party has opened (veilpay.sdk.envelope): one HPKE open per session
    opened: SessionKeys = field(default_factory=SessionKeys, repr=False, compare=False)

    @property
    def id(self) -> str:
        return self.public.id

    @property
    def signing_version(self) -> int:
        live = [v for v in self.signing if v not in self.public.retired]
        if not live:
            raise ConfigError(f"party {self.id!r} has no active signing key")
        return max(live)

    def signer(self) -> tuple[int, SigningKey]:
        v = self.signing_version
        return v, self.signing[v]

    def sign_entry(self) -> None:
        """Sign our public entry as it now stands with our newest active key (the owner's
        self-signature); a changed entry loses its certificate until the key authority
        certifies it again (``veilpay keys certify``)."""
        v, key = self.signer()
        sig = {"kv": v, "sig": b64e(key.sign(entry_message(self.public)))}
        if sig != self.public.self_sig:
            self.public.certificate = None
        self.public.self_sig = sig

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        pub = json.dumps(self.public.to_json(), indent=2)
        sec = json.dumps({
            "id": self.id,
            "signingKeys": {str(v): b64e(k.to_bytes()) for v, k in sorted(self.signing.items())},
            "hpkeKeys": {str(v): {"suite": k.suite, "private": b64e(k.to_bytes())} for v, k in sorted(self.hpke.items())},
            "tokenKey": b64e(self.token_key.to_bytes()) if self.token_key else None,
            "adminToken": self.admin_token,
        }, indent=2)
        atomic_write(folder / "secret.json", lambda fh: fh.write(sec), mode=0o600)
        atomic_write(folder / "public.json", lambda fh: fh.write(pub))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such key file") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not JSON") from exc


def customer_token(keys: PartyKeys, customer_id: str) -> str:
    """The pseudonym an MPP sends for its customer: HMAC-SHA256 under the MPP's token
    key, stable for this MPP and unlinkable to the same person at another MPP."""
    if keys.public.role != "mpp" or keys.token_key is None:
        raise ConfigError("only an MPP (with a token key) tokenises its customers")
    return keys.token_key.token(keys.id, customer_id)


def load_party(folder: str | Path) -> PartyKeys:
    """Read ``public.json`` and ``secret.json`` from ``folder`` and check that they match."""
    folder = Path(folder)
    public = PublicEntry.from_json(_read_json(folder / "public.json"))
    sec = _read_json(folder / "secret.json")
    try:
        signing = {int(v): SigningKey.from_bytes(b64d(k)) for v, k in sec["signingKeys"].items()}
        hpke = {int(v): HpkePrivateKey(str(k["suite"]), b64d(k["private"])) for v, k in sec.get("hpkeKeys", {}).items()}
        token = TokenKey(b64d(sec["tokenKey"])) if sec.get("tokenKey") else None
        admin = str(sec.get("adminToken") or "")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{folder / 'secret.json'}: malformed: {exc}") from exc
    for v, k in signing.items():
        if v not in public.signing or public.signing[v].to_bytes() != k.public().to_bytes():
            raise ConfigError(f"{folder}: signing key version {v} does not match public.json")
    for v, hk in hpke.items():
        if v not in public.hpke or public.hpke[v].to_bytes() != hk.public().to_bytes():
            raise ConfigError(f"{folder}: HPKE key version {v} does not match public.json")
    return PartyKeys(public, signing, hpke, token, admin)


def create_party(folder: str | Path, party_id: str, role: str, *, endpoint: str = "", notify_url: str = "",
                 code_prefixes: list[str] | None = None, suite: str = "x25519", region: str = "",
                 notify_batch_url: str = "") -> PartyKeys:
    """New keys (version 1) for a partner or the gateway, written to ``folder``."""
    import secrets

    if role not in ROLES:
        raise ConfigError(f"role must be one of {ROLES}, not {role!r}")
    if suite not in SUITES:
        raise ConfigError(f"unknown HPKE suite {suite!r}; known: {', '.join(SUITES)}")
    if not _ID.fullmatch(party_id):
        raise ConfigError(f"party id {party_id!r}: letters, digits, '_', '.', '-' (max 64)")
    sk = SigningKey.generate()
    hk = HpkePrivateKey.generate(suite) if role != "gateway" else None
    public = PublicEntry(party_id, role, endpoint, notify_url, list(code_prefixes or []), {1: sk.public()},
                         region=region, notify_batch_url=notify_batch_url)
    if hk is not None:
        public.hpke[1] = hk.public()
    PublicEntry.from_json(public.to_json())  # validates prefixes and ids
    keys = PartyKeys(public, {1: sk}, {1: hk} if hk else {}, TokenKey.generate() if role == "mpp" else None,
                     secrets.token_urlsafe(24))
    keys.sign_entry()
    keys.save(folder)
    return keys


def rotate_keys(folder: str | Path, suite: str | None = None) -> int:
    """Add signing and HPKE keys of version n+1; the new signing key signs from now on."""
    keys = load_party(folder)
    v = max(keys.signing) + 1
    sk = SigningKey.generate()
    keys.signing[v] = sk
    keys.public.signing[v] = sk.public()
    if keys.public.role != "gateway":
        hk = HpkePrivateKey.generate(suite or keys.hpke[max(keys.hpke)].suite)
        keys.hpke[v] = hk
        keys.public.hpke[v] = hk.public()
    keys.sign_entry()
    keys.save(folder)
    return v


def retire_key(folder: str | Path, version: int) -> None:
    """Mark signing key ``version`` retired: signatures made with it stop verifying."""
    keys = load_party(folder)
    if version not in keys.signing:
        raise ConfigError(f"no signing key version {version}")
    if not [v for v in keys.signing if v != version and v not in keys.public.retired]:
        raise ConfigError("cannot retire the last active signing key; rotate first")
    keys.public.retired.add(version)
    keys.sign_entry()
    keys.save(folder)
