"""The MCP server's configuration: the acquirer's credentials and its guard rails.

One TOML file (``--partner-config``)::

    [partner]                        # credentials: never taken from tool arguments
    keys = "keys/acqp-1"
    gateway_key = "keys/gateway/public.json"
    gateway_url = "http://127.0.0.1:8100"
    authority = "authority/authority.json"   # the network's key authority
    [partner.privacy]                        # with privacy nodes: their set, pinned
    protocol = "semi2k"
    nodes = ["node-a", "node-b"]
    dealer = "node-c"

    [mcp]
    state = "mcp-state.db"           # per-day usage and idempotency records (SQLite)
    audit_log = "mcp-audit.log"      # one JSON line per tool call
    refund_share = 1.0               # refunds may total at most this share of a payment
    [mcp.per_call]                   # minor units; a currency not listed is refused
    JPY = 50000
    [mcp.per_day]
    JPY = 200000
    [mcp.confirm_refund_above]       # larger refunds need a human's yes (MCP elicitation)
    JPY = 10000

``VEILPAY_PARTNER_KEYS``, ``VEILPAY_GATEWAY_URL``, ``VEILPAY_GATEWAY_KEY`` and
``VEILPAY_AUTHORITY`` override the ``[partner]`` entries (for secrets mounted by a
platform)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veilpay.errors import ConfigError
from veilpay.sdk.money import MAX_VALUE, MINOR_UNITS

__all__ = ["McpConfig", "load_mcp_config"]


@dataclass
class McpConfig:
    keys: Path
    gateway_key: Path
    gateway_url: str
    state: Path
    audit_log: Path
    authority: Path = Path("authority.json")
    privacy: dict[str, Any] | None = None
    per_call: dict[str, int] = field(default_factory=dict)
    per_day: dict[str, int] = field(default_factory=dict)
    confirm_refund_above: dict[str, int] = field(default_factory=dict)
    refund_share: float = 1.0
    pets: bool = True


def _caps(raw: object, what: str) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise ConfigError(f"[mcp.{what}] must be a table of currency = minor units")
    out = {}
    for cur, v in raw.items():
        if cur not in MINOR_UNITS:
            raise ConfigError(f"[mcp.{what}]: {cur!r} is not a supported ISO 4217 code")
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_VALUE:
            raise ConfigError(f"[mcp.{what}].{cur} must be a whole number of minor units")
        out[cur] = v
    return out


def load_mcp_config(path: str | Path) -> McpConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not TOML: {exc}") from exc
    base = path.parent

    def rel(v: str) -> Path:
        p = Path(v)
        return p if p.is_absolute() else base / p

    partner = dict(raw.get("partner", {}))
    mcp = dict(raw.get("mcp", {}))
    keys = os.environ.get("VEILPAY_PARTNER_KEYS") or partner.get("keys")
    url = os.environ.get("VEILPAY_GATEWAY_URL") or partner.get("gateway_url")
    gw = os.environ.get("VEILPAY_GATEWAY_KEY") or partner.get("gateway_key")
    authority = os.environ.get("VEILPAY_AUTHORITY") or partner.get("authority")
    if not (keys and url and gw and authority):
        raise ConfigError(f"{path}: [partner] needs keys, gateway_url, gateway_key and authority (or the VEILPAY_* "
                          "variables)")
    unknown = set(mcp) - {"state", "audit_log", "refund_share", "per_call", "per_day", "confirm_refund_above"}
    if unknown:
        raise ConfigError(f"{path}: unknown [mcp] keys: {', '.join(sorted(unknown))}")
    share = float(mcp.get("refund_share", 1.0))
    if not 0.0 <= share <= 1.0:
        raise ConfigError("[mcp] refund_share must be between 0 and 1")
    privacy = partner.get("privacy")
    if privacy is not None and not isinstance(privacy, dict):
        raise ConfigError(f"{path}: [partner.privacy] is a table (protocol, nodes, dealer)")
    return McpConfig(keys=rel(str(keys)), gateway_key=rel(str(gw)), gateway_url=str(url),
                     authority=rel(str(authority)), privacy=privacy,
                     state=rel(str(mcp.get("state", "mcp-state.db"))),
                     audit_log=rel(str(mcp.get("audit_log", "mcp-audit.log"))),
                     per_call=_caps(mcp.get("per_call", {}), "per_call"), per_day=_caps(mcp.get("per_day", {}), "per_day"),
                     confirm_refund_above=_caps(mcp.get("confirm_refund_above", {}), "confirm_refund_above"),
                     refund_share=share, pets=bool(partner.get("pets", True)))
