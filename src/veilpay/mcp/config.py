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
    touch = "mcp"                    # refund or cancel only payments made through this server ("all": any)
    [mcp.per_call]                   # minor units; a currency not listed is refused
    JPY = 50000
    [mcp.per_day]                    # payments taken per UTC day
    JPY = 200000
    [mcp.refund_per_day]             # money sent back (refunds and cancels) per UTC day
    JPY = 100000
    [mcp.confirm_refund_above]       # a payment's refunds through this server above this need a human's yes
    JPY = 10000
    [mcp.confirm_cancel_above]       # the same for a cancel (default: confirm_refund_above)
    JPY = 10000

``VEILPAY_PARTNER_KEYS``, ``VEILPAY_GATEWAY_URL``, ``VEILPAY_GATEWAY_KEY`` and
``VEILPAY_AUTHORITY`` override the ``[partner]`` entries (for secrets mounted by a
platform). The ``[partner]`` table is the reference acquirer's own (one file serves
``veilpay partner serve`` and ``veilpay mcp``); the keys only the server uses are
allowed and ignored here. Every key is typed and an unknown one is refused
(``veilpay.settings``)."""

from __future__ import annotations

import os
from dataclasses import field
from pathlib import Path
from typing import Literal

from pydantic import NonNegativeInt, PositiveFloat
from pydantic.dataclasses import dataclass

from veilpay.sdk.money import MAX_VALUE, MINOR_UNITS
from veilpay.settings import (
    STRICT,
    DbUrl,
    DecimalValue,
    ListenAddr,
    PrivacySection,
    RelPath,
    load_doc,
    parse_table,
)

__all__ = ["TOUCH", "McpConfig", "load_mcp_config"]

TOUCH = ("mcp", "all")  # [mcp] touch: which payments a refund or cancel may name
_CAPS = ("per_call", "per_day", "refund_per_day", "confirm_refund_above", "confirm_cancel_above")
_ENV = {"keys": "VEILPAY_PARTNER_KEYS", "gateway_url": "VEILPAY_GATEWAY_URL", "gateway_key": "VEILPAY_GATEWAY_KEY",
        "authority": "VEILPAY_AUTHORITY"}


def _check_caps(owner: McpConfig | _McpTable) -> None:
    for what in _CAPS:
        for cur, v in getattr(owner, what).items():
            if cur not in MINOR_UNITS:
                raise ValueError(f"{what}: {cur!r} is not a supported ISO 4217 code")
            if v > MAX_VALUE:
                raise ValueError(f"{what}.{cur}: at most {MAX_VALUE} minor units")
    share = owner.refund_share
    if not 0.0 <= share <= 1.0:
        raise ValueError("refund_share is between 0 and 1")


@dataclass(config=STRICT)
class McpConfig:
    keys: RelPath
    gateway_key: RelPath
    gateway_url: str
    authority: RelPath
    state: RelPath
    audit_log: RelPath
    privacy: PrivacySection | None = None
    per_call: dict[str, NonNegativeInt] = field(default_factory=dict)
    per_day: dict[str, NonNegativeInt] = field(default_factory=dict)
    confirm_refund_above: dict[str, NonNegativeInt] = field(default_factory=dict)
    refund_share: float = 1.0
    refund_per_day: dict[str, NonNegativeInt] = field(default_factory=dict)
    confirm_cancel_above: dict[str, NonNegativeInt] = field(default_factory=dict)
    touch: Literal["mcp", "all"] = "mcp"
    pets: bool = True

    def __post_init__(self) -> None:
        _check_caps(self)


@dataclass(config=STRICT)
class _PartnerTable:
    keys: RelPath
    gateway_key: RelPath
    gateway_url: str
    authority: RelPath
    privacy: PrivacySection | None = None
    pets: bool = True
    # the reference acquirer's server reads these (the same file may serve both)
    database: DbUrl | None = None
    listen: ListenAddr | None = None
    name: str = ""
    fx: dict[str, DecimalValue] = field(default_factory=dict)
    request_window_s: PositiveFloat = 300.0
    log_state: RelPath | None = None


@dataclass(config=STRICT)
class _McpTable:
    state: RelPath
    audit_log: RelPath
    refund_share: float = 1.0
    touch: Literal["mcp", "all"] = "mcp"
    per_call: dict[str, NonNegativeInt] = field(default_factory=dict)
    per_day: dict[str, NonNegativeInt] = field(default_factory=dict)
    refund_per_day: dict[str, NonNegativeInt] = field(default_factory=dict)
    confirm_refund_above: dict[str, NonNegativeInt] = field(default_factory=dict)
    confirm_cancel_above: dict[str, NonNegativeInt] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_caps(self)


def load_mcp_config(path: str | Path) -> McpConfig:
    """The ``[partner]`` credentials (or the VEILPAY_* variables) and ``[mcp]`` limits
    of ``path``; ConfigError naming the file, line and key."""
    path = Path(path)
    doc, text = load_doc(path)
    partner = dict(doc.get("partner") or {})
    for key, var in _ENV.items():
        if os.environ.get(var):
            partner[key] = os.environ[var]
    p = parse_table(_PartnerTable, partner, str(path), text, ("partner",), path.parent)
    mcp = {"state": "mcp-state.db", "audit_log": "mcp-audit.log", **(doc.get("mcp") or {})}
    m = parse_table(_McpTable, mcp, str(path), text, ("mcp",), path.parent)
    return McpConfig(keys=p.keys, gateway_key=p.gateway_key, gateway_url=p.gateway_url, authority=p.authority,
                     state=m.state, audit_log=m.audit_log, privacy=p.privacy, per_call=m.per_call, per_day=m.per_day,
                     confirm_refund_above=m.confirm_refund_above, refund_share=m.refund_share,
                     refund_per_day=m.refund_per_day, confirm_cancel_above=m.confirm_cancel_above, touch=m.touch,
                     pets=p.pets)
