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
    forward_batch = 64                    # payments per call to an MPP (/mpp/v1/payBatch); 1: one per call (/mpp/v1/pay)
    forward_in_flight = 1                 # payBatch calls open at once per MPP; the next batch queues meanwhile
    webhook_linger_s = 0.02               # wait this long after a webhook is due, so that more share its call
    pets = true                           # false: accept field groups in the clear (benchmark only)
    # Hidden amounts: partners seal amounts and secret-share them to these privacy nodes
    # (their public.json files are listed in `partners` too). Leave out for clear amounts.
    privacy_protocol = "semi2k"           # or "aby3"
    privacy_nodes = ["node-a", "node-b"]  # the share holders (three for aby3)
    privacy_dealer = "node-c"             # semi2k only
    settlement_dir = "settlement"         # each partner's sealed settlement document, per period
    node_relay_linger_s = 0.1             # wait this long after a share is queued, so that more share its call

Relative paths are relative to the file's folder."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veilpay.errors import ConfigError

__all__ = ["GatewayConfig", "load_config"]


@dataclass
class GatewayConfig:
    keys: Path
    database: str
    partners: list[Path]
    authority: Path
    key_log: Path
    listen: str = "127.0.0.1:8100"
    request_window_s: float = 300.0
    mpp_timeout_s: float = 5.0
    payment_expiry_s: float = 600.0
    cancel_window_s: float = 86400.0
    refund_window_s: float = 365 * 86400.0
    max_body_bytes: int = 65536
    forward_batch: int = 64
    forward_in_flight: int = 1
    pets: bool = True
    webhook_timeout_s: float = 5.0
    webhook_max_attempts: int = 12
    webhook_backoff_s: float = 0.5
    webhook_linger_s: float = 0.02
    resolver_interval_s: float = 0.5
    privacy_protocol: str = ""
    privacy_nodes: list[str] = field(default_factory=list)
    privacy_dealer: str = ""
    node_timeout_s: float = 5.0
    node_job_timeout_s: float = 300.0
    node_relay_interval_s: float = 0.5
    node_relay_linger_s: float = 0.1
    settlement_dir: Path = Path("settlement")
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host or "127.0.0.1", int(port)


def _resolve(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else base / p


def load_config(path: str | Path) -> GatewayConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())["gateway"]
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except (tomllib.TOMLDecodeError, KeyError) as exc:
        raise ConfigError(f"{path}: not a TOML file with a [gateway] table: {exc}") from exc
    base = path.parent
    known = {f for f in GatewayConfig.__dataclass_fields__ if f != "extra"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{path}: unknown [gateway] keys: {', '.join(sorted(unknown))}")
    try:
        db = str(raw["database"])
        if db.startswith("sqlite:///") and not db.startswith("sqlite:////") and db != "sqlite:///:memory:":
            db = "sqlite:///" + str(_resolve(base, db[len("sqlite:///"):]))
        paths = ("keys", "database", "partners", "settlement_dir", "authority", "key_log")
        kw = {k: v for k, v in raw.items() if k not in paths}
        kw["settlement_dir"] = _resolve(base, str(raw.get("settlement_dir", "settlement")))
        return GatewayConfig(keys=_resolve(base, str(raw["keys"])), database=db,
                             partners=[_resolve(base, str(p)) for p in raw["partners"]],
                             authority=_resolve(base, str(raw["authority"])),
                             key_log=_resolve(base, str(raw["key_log"])), **kw)
    except KeyError as exc:
        raise ConfigError(f"{path}: [gateway] needs {exc.args[0]!r}") from exc
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
