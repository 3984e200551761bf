"""Running the gateway: one process, or ``workers`` processes on one port.

With more than one worker, uvicorn's supervisor starts the workers (each a fresh
interpreter that builds the app from the config file named in its environment,
``app_from_env``), shares the listening socket between them and starts a worker
again when one dies. Workers are replicas: they share nothing but the database, so
more than one needs PostgreSQL; on SQLite (one writer, one file) they are refused.
Replicas on separate hosts behind any HTTP load balancer are the same thing: each
runs ``veilpay gateway serve`` against the same PostgreSQL (docs/gateway.md,
"Replicas").

The supervisor checks the config, the database and the port before any worker
starts, so that a mistake is one line on stderr. A worker that cannot start (its
config file was edited into an invalid one since, say) logs why and exits with
uvicorn's start-failure status, which stops the supervisor instead of starting it
again forever. A worker whose supervisor dies (SIGKILL) is stopped by the kernel
(Linux: PR_SET_PDEATHSIG), so no orphan keeps serving the port. The workers' metrics
are one set (prometheus_client's multiprocess mode: each worker writes its counts
to files in a folder the supervisor made, and ``/metrics`` adds them up)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from fastapi import FastAPI

from veilpay.errors import ConfigError
from veilpay.gateway.app import create_app
from veilpay.gateway.config import GatewayConfig, load_config
from veilpay.gateway.limits import HEADERS_TIMEOUT_S, KEEP_ALIVE_S, _with_header_deadline, serve
from veilpay.gateway.observe import configure_logging
from veilpay.gateway.store import make_engine, migrate

__all__ = ["CONFIG_ENV", "LOG_ENV", "METRICS_ENV", "HeaderDeadline", "app_from_env", "check_workers", "run"]

CONFIG_ENV = "VEILPAY_GATEWAY_CONFIG"
LOG_ENV = "VEILPAY_GATEWAY_LOG"
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own name for it
_STARTUP_FAILURE = 3  # uvicorn.config.STARTUP_FAILURE: the supervisor stops instead of restarting
# uvicorn's httptools protocol with the gateway's header deadline, importable by name
# (each worker process imports it; a class made inside a function cannot be pickled).
HeaderDeadline = _with_header_deadline(HEADERS_TIMEOUT_S)
log = logging.getLogger("veilpay.gateway")


def check_workers(cfg: GatewayConfig, workers: int) -> None:
    """ConfigError unless ``workers`` processes can share ``cfg``'s database."""
    if workers < 1:
        raise ConfigError("gateway serve: --workers must be at least 1")
    if workers > 1 and not cfg.database.startswith("postgresql"):
        raise ConfigError(f"gateway serve: --workers {workers} needs PostgreSQL (database = "
                          "\"postgresql+psycopg://...\"); SQLite is one process's store: run one worker, or "
                          "move the gateway to PostgreSQL to run replicas")


def _die_with_parent() -> None:
    """Linux: this process gets SIGTERM when the process that started it dies."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the supervisor died before the call above
        os._exit(0)


def app_from_env() -> FastAPI:
    """The app of one worker (uvicorn's factory): the config file and log file that
    the supervisor put in the environment."""
    _die_with_parent()
    configure_logging(os.environ.get(LOG_ENV) or None)
    try:
        path = os.environ.get(CONFIG_ENV)
        if not path:
            raise ConfigError(f"{CONFIG_ENV} is not set (the gateway's workers are started by `veilpay gateway serve`)")
        return create_app(load_config(path))
    except Exception as exc:  # noqa: BLE001 - said once, then the supervisor stops
        message = f"gateway worker {os.getpid()} cannot start: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        log.error(message, extra={"event": "worker_start_failed"})
        print(f"veilpay: error: {message}", file=sys.stderr, flush=True)
        sys.exit(_STARTUP_FAILURE)


def _check_listen(host: str, port: int) -> None:
    """ConfigError, one line, when ``host:port`` cannot be listened on (in use, say)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"gateway serve: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def run(config_path: str | Path, log_path: str | None, workers: int = 1) -> None:
    """``veilpay gateway serve``: until stopped."""
    cfg = load_config(config_path)
    check_workers(cfg, workers)
    host, port = cfg.host_port
    _check_listen(host, port)
    if workers == 1:
        configure_logging(log_path)
        serve(create_app(cfg), host, port)  # uvicorn with the gateway's keep-alive; the app has its body deadline
        return
    import uvicorn

    configure_logging(log_path)
    engine = make_engine(cfg.database)
    try:
        migrate(engine)  # once, before the workers start (each checks again: a no-op at the newest revision)
    finally:
        engine.dispose()
    metrics_dir = tempfile.mkdtemp(prefix="veilpay-gateway-metrics-")
    os.environ[CONFIG_ENV] = str(Path(config_path).resolve())
    os.environ[LOG_ENV] = str(Path(log_path).resolve()) if log_path else ""
    os.environ[METRICS_ENV] = metrics_dir
    try:
        uvicorn.run("veilpay.gateway.serving:app_from_env", factory=True, workers=workers, host=host, port=port,
                    log_config=None, access_log=False, loop="uvloop", http="veilpay.gateway.serving:HeaderDeadline",
                    timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=5)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
