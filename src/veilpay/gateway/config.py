"""The gateway's configuration file (TOML)::

    [gateway]
    keys = "keys/gateway"                 # public.json + secret.json (`veilpay keys gateway`)
    database = "sqlite:///gw/gateway.db"  # or postgresql+psycopg://user@host/db
    listen = "127.0.0.1:8100"
    partners = ["keys/mpp-1/public.json", "keys/acqp-1/public.json"]   # each certified by the authority
    authority = "authority/authority.json"   # the network's key authority (`veilpay keys authority`)
    key_log = "authority/log"                # its transparency log, served to partners (heads, proofs)
    request_window_s = 300                # allowed clock skew of Request-Time, and replay memory
    mpp_timeout_s = 5                     # answer U after this, then resolve in the background
    payment_expiry_s = 600                # a payment still unknown after this is cancelled at the MPP
    cancel_window_s = 86400
    refund_window_s = 31536000
    max_body_bytes = 65536
    rate_limit_per_s = 0                  # signed API requests a second per acquirer, over all replicas; 0: no limit
    forward_batch = 64                    # payments per call to an MPP (/mpp/v1/payBatch); 1: one per call (/mpp/v1/pay)
    forward_in_flight = 1                 # payBatch calls open at once per MPP; the next batch queues meanwhile
    webhook_linger_s = 0.02               # wait this long after a webhook is due, so that more share its call
    pets = true                           # false: accept field groups in the clear (benchmark only)
    settlement_dir = "settlement"         # each partner's sealed settlement document, per period
    node_relay_linger_s = 0.1             # wait this long after a share is queued, so that more share its call

    # Hidden amounts: partners seal amounts and secret-share them to these privacy nodes
    # (their public.json files are listed in `partners` too). Leave out for clear amounts.
    [gateway.privacy]
    protocol = "semi2k"                   # or "aby3"
    nodes = ["node-a", "node-b"]          # the share holders (three for aby3)
    dealer = "node-c"                     # semi2k only

Relative paths are relative to the file's folder; every key is typed and an unknown
one is refused (``veilpay.settings``)."""

from __future__ import annotations

from dataclasses import field
from pathlib import Path

from pydantic import NonNegativeInt, PositiveFloat, PositiveInt
from pydantic.dataclasses import dataclass

from veilpay.settings import STRICT, DbUrl, ListenAddr, PrivacySection, RelPath, load_table

__all__ = ["GatewayConfig", "load_config"]


@dataclass(config=STRICT)
class GatewayConfig:
    keys: RelPath
    database: DbUrl
    partners: list[RelPath]
    authority: RelPath
    key_log: RelPath
    listen: ListenAddr = "127.0.0.1:8100"
    request_window_s: PositiveFloat = 300.0
    mpp_timeout_s: PositiveFloat = 5.0
    payment_expiry_s: float = 600.0
    cancel_window_s: float = 86400.0
    refund_window_s: float = 365 * 86400.0
    max_body_bytes: PositiveInt = 65536
    rate_limit_per_s: NonNegativeInt = 0
    forward_batch: PositiveInt = 64
    forward_in_flight: PositiveInt = 1
    pets: bool = True
    webhook_timeout_s: PositiveFloat = 5.0
    webhook_max_attempts: PositiveInt = 12
    webhook_backoff_s: float = 0.5
    webhook_linger_s: float = 0.02
    resolver_interval_s: PositiveFloat = 0.5
    privacy: PrivacySection | None = None
    node_timeout_s: PositiveFloat = 5.0
    node_job_timeout_s: PositiveFloat = 300.0
    node_relay_interval_s: PositiveFloat = 0.5
    node_relay_linger_s: float = 0.1
    settlement_dir: RelPath = field(default_factory=lambda: Path("settlement"))

    @property
    def host_port(self) -> tuple[str, int]:
        return host_port(self.listen)


def host_port(listen: str) -> tuple[str, int]:
    """("host", port) of a ``host:port`` listen address."""
    host, _, port = listen.rpartition(":")
    return host or "127.0.0.1", int(port)


def load_config(path: str | Path) -> GatewayConfig:
    """The [gateway] table of ``path``; ConfigError naming the file, line and key."""
    return load_table(path, "gateway", GatewayConfig, {"settlement_dir": "settlement"})
