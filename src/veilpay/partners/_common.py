"""Pieces both reference partners use: loading keys and the pinned gateway key, admin
bearer-token checks, signed JSON answers."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request, Response
from sqlalchemy import Engine, MetaData, create_engine, event

from veilpay.crypto.tokens import ct_equal
from veilpay.errors import ConfigError
from veilpay.partners.config import PartnerConfig
from veilpay.sdk.keys import PartyKeys, PublicEntry, load_party

__all__ = ["admin_ok", "json_response", "load_identity", "open_db"]


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


def _wal(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def open_db(url: str, metadata: MetaData) -> Engine:
    if url.startswith("sqlite"):
        from pathlib import Path

        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _wal)
    else:
        engine = create_engine(url)
    metadata.create_all(engine)
    return engine


def admin_ok(request: Request, keys: PartyKeys) -> bool:
    auth = request.headers.get("authorization", "")
    return bool(keys.admin_token) and auth.startswith("Bearer ") and ct_equal(auth[7:], keys.admin_token)


def json_response(raw: bytes, headers: dict[str, str], status: int = 200) -> Response:
    return Response(raw, status_code=status, headers=headers, media_type="application/json")
