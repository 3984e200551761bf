"""A reference partner's configuration file (TOML)::

    [partner]
    keys = "keys/mpp-1"                   # public.json + secret.json (`veilpay keys partner`)
    gateway_key = "keys/gateway/public.json"
    authority = "authority/authority.json"  # the network's key authority: every key taken must chain to it
    gateway_url = "http://127.0.0.1:8100"   # or a list: the gateway's replicas, tried in turn
    database = "sqlite:///mpp/ledger.db"
    listen = "127.0.0.1:8101"
    name = "Veil Wallet"
    pets = true

    [partner.fx]                          # MPP only: wallet units per merchant unit
    "JPY/PHP" = "0.3812"

    [partner.privacy]                     # a network with privacy nodes: their set, pinned
    protocol = "semi2k"
    nodes = ["node-a", "node-b"]
    dealer = "node-c"

    [partner.risk]                        # MPP only: score each payment at the nodes (docs/risk.md)
    model = "fraud-v1"                    # the model version published to the nodes
    prep = "train-out/wallet/prep.json"   # this MPP's preparation of its columns, from training
    frac_bits = 20                        # the training job's frac_bits
    budget_ms = 50                        # past this, the payment follows fail_policy
    fail_policy = "review"                # approve | review | decline
    on_review = "approve"                 # what the MPP does with a review: approve (and flag) | decline
    on_missing_features = "decline"       # no ACQP bundle (none sent, or the relay dropped it): fail closed

Relative paths are relative to the file's folder; every key is typed and an unknown
one is refused (``veilpay.settings``)."""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import Literal

from pydantic import PositiveFloat
from pydantic.dataclasses import dataclass

from veilpay.settings import STRICT, DbUrl, DecimalValue, ListenAddr, PrivacySection, RelPath, load_table

__all__ = ["PartnerConfig", "RiskSection", "load_partner_config"]


@dataclass(config=STRICT)
class RiskSection:
    model: str
    prep: RelPath
    frac_bits: int = 20               # the training job's frac_bits
    budget_ms: PositiveFloat = 50.0
    fail_policy: Literal["approve", "review", "decline"] = "review"
    on_review: Literal["approve", "decline"] = "approve"
    on_missing_features: Literal["approve", "review", "decline"] = "decline"


@dataclass(config=STRICT)
class PartnerConfig:
    keys: RelPath
    gateway_key: RelPath
    gateway_url: str | list[str]  # the gateway, or its replicas' URLs in the order to try them
    database: DbUrl
    authority: RelPath
    privacy: PrivacySection | None = None
    log_state: RelPath | None = None  # the newest key-log head checked (default: KEYS/log-state.json)
    listen: ListenAddr = "127.0.0.1:8101"
    name: str = ""
    pets: bool = True
    fx: dict[str, DecimalValue] = field(default_factory=dict)  # MPP: wallet units per merchant unit, "JPY/PHP"
    request_window_s: PositiveFloat = 300.0
    risk: RiskSection | None = None

    def __post_init__(self) -> None:
        for pair, rate in self.fx.items():
            if len(pair.split("/")) != 2 or not rate.is_finite() or rate <= 0:
                raise ValueError(f"fx {pair!r}: a positive rate for a pair written FROM/TO")

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host or "127.0.0.1", int(port)


def load_partner_config(path: str | Path) -> PartnerConfig:
    """The [partner] table of ``path``; ConfigError naming the file, line and key."""
    return load_table(path, "partner", PartnerConfig)
