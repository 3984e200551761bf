"""A privacy node's configuration file (TOML): its keys and peers, the partner keys its
operator pinned, and its disclosure policy::

    [node]
    party = "node-a"
    keys = "keys/node-a"                          # `veilpay keys partner --role node`
    network = "mpcnet/network.toml"               # the nodes' TLS mesh and its [privacy] section
    gateway_key = "keys/gateway/public.json"      # only the gateway may feed it and ask for jobs
    partner_keys = ["keys/acqp-1/public.json", "keys/mpp-1/public.json"]   # pinned by this node
    authority = "authority/authority.json"        # the key authority every pinned entry must chain to
    database = "sqlite:///node-a/node.db"         # or postgresql+psycopg://...
    listen = "127.0.0.1:8201"                     # default: the endpoint in its public.json
    job_timeout_s = 120
    connect_timeout_s = 10
    request_window_s = 300

    [node.policy]
    cycle_s = 86400            # settlement period: the UTC day, or a cycle that divides it
    close_margin_s = 900       # a period closes this long after it ends, by this node's clock
    max_skew_s = 300           # a bundle signed further ahead of this node's clock is refused
    min_count = 10             # analytics: corridors with fewer payments are suppressed
    epsilon = "0.5"            # analytics: differential privacy spent by one release
    monthly_budget = "8"       # analytics: epsilon that all releases of one calendar month may spend
    default_clip = 100000      # analytics: most one payment adds to a total, in minor units
    clip = { JPY = 50000 }     # ... per currency

The policy is the node's own: the gateway's jobs name only what to compute (a
period, a refund), never how much may be revealed. Every node of a privacy network
must run the same policy (the nodes check it before each job: a job's parameters,
policy included, are part of the ledger entry they compare). Relative paths are
relative to the file's folder."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any

from veilpay.errors import ConfigError, InvalidInput
from veilpay.sdk.money import MAX_VALUE, MINOR_UNITS
from veilpay.sdk.periods import DAY_S, check_cycle

__all__ = ["NodeConfig", "NodePolicy", "load_node_config"]


def _fraction(v: Any, what: str) -> Fraction:
    try:
        f = Fraction(Decimal(str(v)))
    except (InvalidOperation, ValueError) as exc:
        raise ConfigError(f"{what}: {v!r} is not a decimal number") from exc
    if f <= 0:
        raise ConfigError(f"{what} must be positive")
    return f


@dataclass(frozen=True)
class NodePolicy:
    """What this node may reveal, when, and at what privacy cost."""

    cycle_s: int = DAY_S
    close_margin_s: float = 900.0
    max_skew_s: float = 300.0
    min_count: int = 10
    epsilon: str = "0.5"
    monthly_budget: str = "8"
    default_clip: int = 100_000
    clip: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            check_cycle(self.cycle_s)
        except InvalidInput as exc:
            raise ConfigError(f"policy: {exc}") from exc
        if self.close_margin_s < 0 or self.max_skew_s < 0:
            raise ConfigError("policy: close_margin_s and max_skew_s are not negative")
        if isinstance(self.min_count, bool) or not isinstance(self.min_count, int) or self.min_count < 1:
            raise ConfigError("policy: min_count is a positive integer")
        if self.eps > self.budget:
            raise ConfigError("policy: one release's epsilon is larger than the monthly budget")
        for cur, c in {"*": self.default_clip, **self.clip}.items():
            if cur != "*" and cur not in MINOR_UNITS:
                raise ConfigError(f"policy: clip for unknown currency {cur!r}")
            if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= MAX_VALUE:
                raise ConfigError(f"policy: clip {c!r} is not 1..{MAX_VALUE} minor units")

    @property
    def eps(self) -> Fraction:
        return _fraction(self.epsilon, "policy: epsilon")

    @property
    def budget(self) -> Fraction:
        return _fraction(self.monthly_budget, "policy: monthly_budget")

    def clip_of(self, currency: str) -> int:
        return self.clip.get(currency, self.default_clip)

    def to_json(self) -> dict[str, Any]:
        """The policy as the nodes compare it (every node of a network must run the same)."""
        return {"cycle_s": self.cycle_s, "close_margin_s": self.close_margin_s, "min_count": self.min_count,
                "epsilon": str(self.epsilon), "monthly_budget": str(self.monthly_budget),
                "default_clip": self.default_clip, "clip": dict(sorted(self.clip.items()))}


@dataclass(frozen=True)
class NodeConfig:
    party: str
    keys: Path
    network: Path
    gateway_key: Path
    database: str
    partner_keys: list[Path]
    authority: Path
    listen: str = ""
    job_timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    request_window_s: float = 300.0
    policy: NodePolicy = field(default_factory=NodePolicy)


def _table(raw: Any, where: str, known: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown keys: {', '.join(sorted(unknown))}")
    return dict(raw)


def load_node_config(path: str | Path) -> NodeConfig:
    """The [node] table of ``path``; ConfigError naming the file for anything unusable."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not TOML: {exc}") from exc
    names = {f.name for f in fields(NodeConfig)}
    raw = _table(doc.get("node"), f"{path} [node]", names)
    pol = _table(raw.pop("policy", {}), f"{path} [node.policy]", {f.name for f in fields(NodePolicy)})
    base = path.parent

    def rel(v: Any) -> Path:
        p = Path(str(v))
        return p if p.is_absolute() else base / p

    try:
        db = str(raw.pop("database"))
        if db.startswith("sqlite:///") and not db.startswith("sqlite:////"):
            db = "sqlite:///" + str(rel(db[len("sqlite:///"):]))
        partner_keys = raw.pop("partner_keys")
        if not isinstance(partner_keys, list) or not partner_keys:
            raise ConfigError(f"{path}: partner_keys lists the public.json of every partner this node accepts")
        if "clip" in pol:
            pol["clip"] = dict(_table(pol["clip"], f"{path} [node.policy.clip]", set(MINOR_UNITS)))
        for k in ("epsilon", "monthly_budget"):
            if k in pol:
                pol[k] = str(pol[k])
        return NodeConfig(party=str(raw.pop("party")), keys=rel(raw.pop("keys")), network=rel(raw.pop("network")),
                          gateway_key=rel(raw.pop("gateway_key")), database=db,
                          partner_keys=[rel(p) for p in partner_keys], authority=rel(raw.pop("authority")),
                          policy=NodePolicy(**pol), **raw)
    except KeyError as exc:
        raise ConfigError(f"{path}: [node] needs {exc}") from exc
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
