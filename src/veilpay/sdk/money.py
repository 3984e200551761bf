"""Amounts ``{currency, value}``: ISO 4217 alphabetic codes with their minor units, and
values as decimal strings of minor units (Alipay+'s convention)."""

from __future__ import annotations

import re
from typing import Any

from veilpay.errors import InvalidInput

__all__ = ["MAX_VALUE", "MINOR_UNITS", "InvalidAmount", "UnsupportedCurrency", "parse_amount"]

# ISO 4217 active codes and their minor units (the exponent) for the currencies of
# the network's corridors. A code not listed is refused rather than guessed.
MINOR_UNITS: dict[str, int] = {
    "AED": 2, "AUD": 2, "BDT": 2, "BHD": 3, "BND": 2, "BRL": 2, "CAD": 2, "CHF": 2, "CLP": 0, "CNY": 2,
    "COP": 2, "CZK": 2, "DKK": 2, "EGP": 2, "EUR": 2, "GBP": 2, "HKD": 2, "HUF": 2, "IDR": 2, "ILS": 2,
    "INR": 2, "ISK": 0, "JOD": 3, "JPY": 0, "KES": 2, "KHR": 2, "KRW": 0, "KWD": 3, "LAK": 2, "LKR": 2,
    "MMK": 2, "MNT": 2, "MOP": 2, "MXN": 2, "MYR": 2, "NGN": 2, "NOK": 2, "NPR": 2, "NZD": 2, "OMR": 3,
    "PEN": 2, "PHP": 2, "PKR": 2, "PLN": 2, "QAR": 2, "RON": 2, "SAR": 2, "SEK": 2, "SGD": 2, "THB": 2,
    "TND": 3, "TRY": 2, "TWD": 2, "UAH": 2, "USD": 2, "VND": 0, "ZAR": 2,
}
# Values up to 10^15 minor units: far above any single payment, and totals of
# millions of them stay well inside int64 and the MPC ring's fixed-point range.
MAX_VALUE = 10**15
_VALUE = re.compile(r"^(0|[1-9][0-9]{0,15})$")


class UnsupportedCurrency(InvalidInput):
    """A currency code that is not ISO 4217 or not served by the network."""


class InvalidAmount(InvalidInput):
    """A value that is not a positive whole number of minor units up to MAX_VALUE."""


def parse_amount(obj: Any, what: str = "amount") -> tuple[str, int]:
    """(currency, value) from ``{"currency": "JPY", "value": "1200"}``; a positive value
    in minor units, at most MAX_VALUE."""
    if not isinstance(obj, dict) or set(obj) != {"currency", "value"}:
        raise InvalidInput(f"{what} must be an object with exactly 'currency' and 'value'")
    cur, val = obj["currency"], obj["value"]
    if not isinstance(cur, str) or cur not in MINOR_UNITS:
        raise UnsupportedCurrency(f"{what}: currency {str(cur)[:8]!r} is not a supported ISO 4217 code")
    if not isinstance(val, str) or not _VALUE.match(val):
        raise InvalidAmount(f"{what}: value must be a string of digits (minor units), no sign or decimals")
    v = int(val)
    if v <= 0 or v > MAX_VALUE:
        raise InvalidAmount(f"{what}: value must be between 1 and {MAX_VALUE}")
    return cur, v
