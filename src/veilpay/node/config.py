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

    [node.risk]                # real-time fraud scoring (docs/risk.md)
    enabled = true
    batch_max = 64             # a micro-batch: at most this many payments ...
    batch_wait_ms = 2          # ... or this long after its first
    rules_min_interval_s = 3600

The policy is the node's own: the gateway's jobs name only what to compute (a
period, a refund), never how much may be revealed. Every node of a privacy network
must run the same policy (the nodes check it before each job: a job's parameters,
policy included, are part of the ledger entry they compare). Relative paths are
relative to the file's folder; every key is typed and an unknown one is refused
(``veilpay.settings``)."""

from __future__ import annotations

from dataclasses import field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any

from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt
from pydantic.dataclasses import dataclass

from veilpay.errors import ConfigError, InvalidInput
from veilpay.sdk.money import MAX_VALUE, MINOR_UNITS
from veilpay.sdk.periods import DAY_S, check_cycle
from veilpay.settings import STRICT, DbUrl, DecimalText, RelPath, load_table

__all__ = ["NodeConfig", "NodePolicy", "RiskPolicy", "load_node_config"]


def _fraction(v: Any, what: str) -> Fraction:
    try:
        f = Fraction(Decimal(str(v)))
    except (InvalidOperation, ValueError) as exc:
        raise ConfigError(f"{what}: {v!r} is not a decimal number") from exc
    if f <= 0:
        raise ConfigError(f"{what} must be positive")
    return f


@dataclass(config=STRICT, frozen=True)
class NodePolicy:
    """What this node may reveal, when, and at what privacy cost."""

    cycle_s: PositiveInt = DAY_S
    close_margin_s: NonNegativeFloat = 900.0
    max_skew_s: NonNegativeFloat = 300.0
    min_count: PositiveInt = 10
    epsilon: DecimalText = "0.5"
    monthly_budget: DecimalText = "8"
    default_clip: PositiveInt = 100_000
    clip: dict[str, PositiveInt] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """ValueError (a ValidationError when loaded) for a policy no node may run."""
        try:
            check_cycle(self.cycle_s)
            eps, budget = self.eps, self.budget
        except (InvalidInput, ConfigError) as exc:
            raise ValueError(str(exc)) from exc
        if eps > budget:
            raise ValueError("one release's epsilon is larger than the monthly budget")
        for cur, c in {"*": self.default_clip, **self.clip}.items():
            if cur != "*" and cur not in MINOR_UNITS:
                raise ValueError(f"clip for unknown currency {cur!r}")
            if not 1 <= c <= MAX_VALUE:
                raise ValueError(f"clip {c!r} is not 1..{MAX_VALUE} minor units")

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


@dataclass(config=STRICT, frozen=True)
class RiskPolicy:
    """``[node.risk]``: real-time scoring (docs/risk.md). The first share holder batches
    the payments it is asked to score: at most ``batch_max`` or ``batch_wait_ms`` after
    the first; a rule set's version may change at most once per ``rules_min_interval_s``
    (each change lets its MPP move the thresholds; the interval bounds how fast it can
    probe a score); every node of the network sets the same values."""

    enabled: bool = False
    batch_max: PositiveInt = 64
    batch_wait_ms: NonNegativeFloat = 2.0
    rules_min_interval_s: NonNegativeFloat = 3600.0
    heartbeat_s: PositiveFloat = 5.0
    answer_timeout_s: PositiveFloat = 5.0
    report_min_count: PositiveInt = 20          # shadow reports: a day with fewer payments is suppressed
    report_after_s: NonNegativeFloat = 3600.0   # ... and only this long after the day's end


@dataclass(config=STRICT, frozen=True)
class NodeConfig:
    party: str
    keys: RelPath
    network: RelPath
    gateway_key: RelPath
    database: DbUrl
    partner_keys: list[RelPath]
    authority: RelPath
    listen: str = ""
    job_timeout_s: PositiveFloat = 120.0
    connect_timeout_s: PositiveFloat = 10.0
    request_window_s: PositiveFloat = 300.0
    policy: NodePolicy = field(default_factory=NodePolicy)
    risk: RiskPolicy = field(default_factory=RiskPolicy)

    def __post_init__(self) -> None:
        if not self.partner_keys:
            raise ValueError("partner_keys lists the public.json of every partner this node accepts")


def load_node_config(path: str | Path) -> NodeConfig:
    """The [node] table of ``path``; ConfigError naming the file, line and key."""
    return load_table(path, "node", NodeConfig)
