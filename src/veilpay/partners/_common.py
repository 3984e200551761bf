"""Pieces both reference partners use: loading keys and the pinned gateway key, admin
bearer-token checks, signed JSON answers."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request, Response
from sqlalchemy import Engine, MetaData

from veilpay.crypto.tokens import ct_equal
from veilpay.errors import ConfigError
from veilpay.gateway.store import make_engine
from veilpay.partners.config import PartnerConfig
from veilpay.sdk.authority import load_authority, pinned_privacy
from veilpay.sdk.keys import PartyKeys, PublicEntry, load_party

__all__ = ["admin_ok", "json_response", "load_identity", "open_db", "trust_of"]


def load_identity(cfg: PartnerConfig, role: str) -> tuple[PartyKeys, PublicEntry]:
    keys = load_party(cfg.keys)
    if keys.public.role != role:
        raise ConfigError(f"{cfg.keys}: role {keys.public.role!r}, expected {role!r}")
    try:
        gateway = PublicEntry.from_json(json.loads(cfg.gateway_key.read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{cfg.gateway_key}: {exc}") from exc
    if gateway.role != "gateway":
        raise ConfigError(f"{cfg.gateway_key} is not the gateway's public key")
    return keys, gateway


def trust_of(cfg: PartnerConfig) -> dict[str, Any]:
    """The SDK client's pins from the partner's config: the key authority, the privacy
    nodes, and the file that keeps the newest key-log head it checked (``log_state``,
    by default ``log-state.json`` in its key folder, shared with ``veilpay keys monitor``)."""
    return {"authority": load_authority(cfg.authority), "privacy": pinned_privacy(cfg.privacy, str(cfg.keys)),
            "log_state": cfg.log_state or cfg.keys / "log-state.json"}


def open_db(url: str, metadata: MetaData) -> Engine:
    """The partner's own database, on the same engine settings as the gateway's
    (SQLite in WAL mode, or PostgreSQL); the reference partners create their small
    schemas directly rather than through migrations."""
    engine = make_engine(url)
    metadata.create_all(engine)
    return engine


def admin_ok(request: Request, keys: PartyKeys) -> bool:
    auth = request.headers.get("authorization", "")
    return bool(keys.admin_token) and auth.startswith("Bearer ") and ct_equal(auth[7:], keys.admin_token)


def json_response(raw: bytes, headers: dict[str, str], status: int = 200) -> Response:
    return Response(raw, status_code=status, headers=headers, media_type="application/json")
