"""The encrypted wallet gateway: Alipay+-shaped API, payment state machine, durable
webhooks, storage (SQLite default, PostgreSQL option)."""

from veilpay.gateway.app import create_app
from veilpay.gateway.codes import CODES, ApiFailure
from veilpay.gateway.config import GatewayConfig, load_config
from veilpay.gateway.store import make_engine, migrate

__all__ = ["CODES", "ApiFailure", "GatewayConfig", "create_app", "load_config", "make_engine", "migrate"]
