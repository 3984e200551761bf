"""Running the gateway: one process, or ``workers`` processes on one port.

With more than one worker, uvicorn's supervisor starts the workers (each a fresh
interpreter that builds the app from the config file named in its environment,
``app_from_env``), shares the listening socket between them and starts a worker
again when one dies. Workers are replicas: they share nothing but the database, so
more than one needs PostgreSQL; on SQLite (one writer, one file) they are refused.
Replicas on separate hosts behind any HTTP load balancer are the same thing: each
runs ``veilpay gateway serve`` against the same PostgreSQL (docs/gateway.md, scale)."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

from veilpay.errors import ConfigError
from veilpay.gateway.app import create_app
from veilpay.gateway.config import GatewayConfig, load_config
from veilpay.gateway.limits import HEADERS_TIMEOUT_S, KEEP_ALIVE_S, _with_header_deadline, serve
from veilpay.gateway.observe import configure_logging
from veilpay.gateway.store import make_engine, migrate

__all__ = ["CONFIG_ENV", "LOG_ENV", "HeaderDeadline", "app_from_env", "check_workers", "run"]

CONFIG_ENV = "VEILPAY_GATEWAY_CONFIG"
LOG_ENV = "VEILPAY_GATEWAY_LOG"
# uvicorn's httptools protocol with the gateway's header deadline, importable by name
# (each worker process imports it; a class made inside a function cannot be pickled).
HeaderDeadline = _with_header_deadline(HEADERS_TIMEOUT_S)


def check_workers(cfg: GatewayConfig, workers: int) -> None:
    """ConfigError unless ``workers`` processes can share ``cfg``'s database."""
    if workers < 1:
        raise ConfigError("gateway serve: --workers must be at least 1")
    if workers > 1 and not cfg.database.startswith("postgresql"):
        raise ConfigError(f"gateway serve: --workers {workers} needs PostgreSQL (database = "
                          "\"postgresql+psycopg://...\"); SQLite is one process's store: run one worker, or "
                          "move the gateway to PostgreSQL to run replicas")


def app_from_env() -> FastAPI:
    """The app of one worker (uvicorn's factory): the config file and log file that
    the supervisor put in the environment."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError(f"{CONFIG_ENV} is not set (the gateway's workers are started by `veilpay gateway serve`)")
    configure_logging(os.environ.get(LOG_ENV) or None)
    return create_app(load_config(path))


def run(config_path: str | Path, log: str | None, workers: int = 1) -> None:
    """``veilpay gateway serve``: until stopped."""
    cfg = load_config(config_path)
    check_workers(cfg, workers)
    host, port = cfg.host_port
    if workers == 1:
        configure_logging(log)
        serve(create_app(cfg), host, port)  # uvicorn with the gateway's keep-alive; the app has its body deadline
        return
    import uvicorn

    configure_logging(log)
    engine = make_engine(cfg.database)
    migrate(engine)  # once, before the workers start (each checks again: a no-op at the newest revision)
    engine.dispose()
    os.environ[CONFIG_ENV] = str(Path(config_path).resolve())
    os.environ[LOG_ENV] = str(Path(log).resolve()) if log else ""
    uvicorn.run("veilpay.gateway.serving:app_from_env", factory=True, workers=workers, host=host, port=port,
                log_config=None, access_log=False, loop="uvloop", http="veilpay.gateway.serving:HeaderDeadline",
                timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=5)
