"""A reference partner's configuration file (TOML)::

    [partner]
    keys = "keys/mpp-1"                   # public.json + secret.json (`veilpay keys partner`)
    gateway_key = "keys/gateway/public.json"
    authority = "authority/authority.json"  # the network's key authority: every key taken must chain to it
    gateway_url = "http://127.0.0.1:8100"
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
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from veilpay.errors import ConfigError

__all__ = ["PartnerConfig", "load_partner_config"]


@dataclass
class PartnerConfig:
    keys: Path
    gateway_key: Path
    gateway_url: str
    database: str
    authority: Path = Path("authority.json")
    privacy: dict[str, Any] | None = None
    log_state: Path | None = None  # the newest key-log head checked (default: KEYS/log-state.json)
    listen: str = "127.0.0.1:8101"
    name: str = ""
    pets: bool = True
    fx: dict[str, Decimal] = field(default_factory=dict)
    request_window_s: float = 300.0

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host or "127.0.0.1", int(port)


def load_partner_config(path: str | Path) -> PartnerConfig:
    path = Path(path)
    try:
        raw = dict(tomllib.loads(path.read_text())["partner"])
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except (tomllib.TOMLDecodeError, KeyError) as exc:
        raise ConfigError(f"{path}: not a TOML file with a [partner] table: {exc}") from exc
    base = path.parent

    def rel(v: str) -> Path:
        p = Path(v)
        return p if p.is_absolute() else base / p

    try:
        fx = {str(k): Decimal(str(v)) for k, v in raw.pop("fx", {}).items()}
        db = str(raw.pop("database"))
        if db.startswith("sqlite:///") and not db.startswith("sqlite:////"):
            db = "sqlite:///" + str(rel(db[len("sqlite:///"):]))
        return PartnerConfig(keys=rel(str(raw.pop("keys"))), gateway_key=rel(str(raw.pop("gateway_key"))),
                             authority=rel(str(raw.pop("authority"))),
                             log_state=rel(str(raw.pop("log_state"))) if "log_state" in raw else None,
                             gateway_url=str(raw.pop("gateway_url")), database=db, fx=fx, **raw)
    except (KeyError, TypeError, InvalidOperation) as exc:
        raise ConfigError(f"{path}: {exc!r}") from exc
