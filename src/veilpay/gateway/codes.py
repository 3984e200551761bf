"""Result codes: Alipay+'s where one fits, a few of veilpay's own (marked) where none does.

Each code has its result status (S, F or U) and the HTTP status the gateway answers
with: 200 for every business outcome, 4xx for a request the gateway would not take."""

from __future__ import annotations

from veilpay.errors import GatewayError

__all__ = ["CODES", "ApiFailure", "result"]

# code: (status, http status, default message)
CODES: dict[str, tuple[str, int, str]] = {
    "SUCCESS": ("S", 200, "Success"),
    "ACCEPTED": ("U", 200, "accepted, not yet final"),  # veilpay: an inquiry's answer for a pending payment
    "PAYMENT_IN_PROCESS": ("U", 200, "the payment is being processed; ask again with inquiryPayment"),
    "REFUND_IN_PROCESS": ("U", 200, "the refund is being processed; ask again with inquiryRefund"),
    "UNKNOWN_EXCEPTION": ("U", 200, "outcome unknown; retry with the same request id"),
    "PROCESS_FAIL": ("F", 200, "the MPP declined"),
    "USER_BALANCE_NOT_ENOUGH": ("F", 200, "the payer's balance is not enough"),
    "INVALID_CODE": ("F", 200, "the payment code is not valid"),
    "RISK_REJECT": ("F", 200, "the MPP declined the payment on its risk decision"),
    "ORDER_NOT_EXIST": ("F", 200, "no such payment or refund"),
    "ORDER_IS_CLOSED": ("F", 200, "the payment is closed (cancelled or expired)"),
    "ORDER_STATUS_INVALID": ("F", 200, "the payment is not in a state that allows this"),
    "CANCEL_WINDOW_EXCEED": ("F", 200, "the cancel window has passed; refund instead"),
    "REFUND_WINDOW_EXCEED": ("F", 200, "the refund window has passed"),
    "REFUND_AMOUNT_EXCEED": ("F", 200, "the refund is larger than what remains refundable"),
    "CURRENCY_NOT_SUPPORT": ("F", 400, "currency not supported"),
    "INVALID_AMOUNT": ("F", 400, "amount must be 1..10^15 minor units as a digit string"),  # veilpay
    "REPEAT_REQ_INCONSISTENT": ("F", 200, "the request id was used before with a different request"),
    "PARAM_ILLEGAL": ("F", 400, "illegal parameters"),
    "MALFORMED_REQUEST": ("F", 400, "the body is not a JSON object"),  # veilpay
    "SEALED_FIELD_INVALID": ("F", 400, "a field group is not sealed to the routed partner"),  # veilpay
    "INVALID_CLIENT": ("F", 401, "unknown or unauthorised Client-Id"),
    "INVALID_SIGNATURE": ("F", 401, "the signature does not verify"),
    "KEY_NOT_FOUND": ("F", 401, "unknown or retired key version"),
    "INVALID_REQUEST_TIME": ("F", 401, "Request-Time missing or not ISO 8601"),  # veilpay
    "REQUEST_TIME_EXPIRED": ("F", 401, "Request-Time outside the allowed window"),  # veilpay
    "REPLAYED_REQUEST": ("F", 401, "this exact signed request was seen before"),  # veilpay
    "REQUEST_TIMEOUT": ("F", 408, "the request's body did not arrive in time"),  # veilpay
    "REQUEST_TOO_LARGE": ("F", 413, "the body is larger than allowed"),  # veilpay
    "REQUEST_TRAFFIC_EXCEED_LIMIT": ("U", 429, "too many requests from this client; retry after a second"),
    "MEDIA_TYPE_NOT_ACCEPTABLE": ("F", 415, "send Content-Type: application/json"),
    "INVALID_API": ("F", 404, "no such API"),
    "AMOUNT_NOT_HIDDEN": ("F", 400, "amounts must be sealed and secret-shared to the privacy nodes"),  # veilpay
    "SETTLEMENT_PENDING": ("U", 200, "settlement of this day has not finished; ask again later"),  # veilpay
    "NODE_UNAVAILABLE": ("U", 503, "a privacy node is unreachable or behind; retry later"),  # veilpay
    "PERIOD_OPEN": ("F", 409, "the period has not closed by the privacy nodes' clocks; ask after it closes"),  # veilpay
    "BUDGET_EXHAUSTED": ("F", 409, "the privacy nodes' budget for this month has no room for the release"),  # veilpay
}


def result(code: str, message: str | None = None) -> dict[str, str]:
    status, _, default = CODES[code]
    return {"resultCode": code, "resultStatus": status, "resultMessage": message or default}


class ApiFailure(GatewayError):
    """Raised anywhere in request handling; the app turns it into a signed answer."""

    def __init__(self, code: str, message: str | None = None) -> None:
        if code not in CODES:
            raise ValueError(f"unknown result code {code}")
        super().__init__(message or CODES[code][2], code)
        self.http_status = CODES[code][1]
        self.result = result(code, message)
