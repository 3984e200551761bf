"""The partner SDK: keys, signatures, sealed field groups, amounts, the partner
directory and the gateway client."""

from veilpay.sdk.client import ApiResponse, AsyncGatewayClient, GatewayClient
from veilpay.sdk.directory import Directory
from veilpay.sdk.envelope import SessionSealer, is_envelope, open_fields, open_group, seal_fields, seal_group
from veilpay.sdk.keys import (
    PartyKeys,
    PublicEntry,
    create_party,
    customer_token,
    load_party,
    retire_key,
    rotate_keys,
)
from veilpay.sdk.money import MINOR_UNITS, InvalidAmount, UnsupportedCurrency, parse_amount
from veilpay.sdk.partner import GatewayCalls
from veilpay.sdk.signing import sign_headers, verify_message

__all__ = [
    "MINOR_UNITS",
    "ApiResponse",
    "AsyncGatewayClient",
    "Directory",
    "GatewayCalls",
    "GatewayClient",
    "InvalidAmount",
    "PartyKeys",
    "PublicEntry",
    "SessionSealer",
    "UnsupportedCurrency",
    "create_party",
    "customer_token",
    "is_envelope",
    "load_party",
    "open_fields",
    "open_group",
    "parse_amount",
    "retire_key",
    "rotate_keys",
    "seal_fields",
    "seal_group",
    "sign_headers",
    "verify_message",
]
