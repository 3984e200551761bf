"""Request bodies of the public API (pydantic): strict types, no unknown fields.

Sealed field groups are typed as JSON objects here; whether they are envelopes for
the routed MPP is checked by the service (it knows the route). Amounts are checked by
``veilpay.sdk.money`` so that a bad currency and a bad value get their own codes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["CancelRequest", "InquiryPaymentRequest", "InquiryRefundRequest", "ListPaymentsRequest", "PayRequest",
           "RefundRequest", "SettlementSummaryRequest"]

RequestId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
GatewayId = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[a-z]{3}_[0-9a-f]{32}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PaymentMethod(_Strict):
    paymentMethodType: Literal["CONNECT_WALLET"]
    codeIssuer: Annotated[str, Field(pattern=r"^[0-9]{2,8}$")]
    paymentMethodId: dict[str, Any]


class PayRequest(_Strict):
    paymentRequestId: RequestId
    paymentAmount: dict[str, Any]
    paymentMethod: PaymentMethod
    order: dict[str, Any]
    env: dict[str, Any] | None = None
    riskFeatures: dict[str, Any] | None = Field(
        default=None, description="The acquirer's risk features of this payment, secret-shared and sealed to the "
        "privacy nodes: {bundle, shares} (veilpay.sdk.features); checked for shape and relayed unchanged to the MPP")


class _PaymentRef(_Strict):
    paymentId: GatewayId | None = None
    paymentRequestId: RequestId | None = None

    @model_validator(mode="after")
    def _one(self) -> _PaymentRef:
        if (self.paymentId is None) == (self.paymentRequestId is None):
            raise ValueError("give exactly one of paymentId and paymentRequestId")
        return self


class InquiryPaymentRequest(_PaymentRef):
    pass


class CancelRequest(_PaymentRef):
    pass


class RefundRequest(_PaymentRef):
    refundRequestId: RequestId
    refundAmount: dict[str, Any]
    refundReason: dict[str, Any] | None = None


class InquiryRefundRequest(_Strict):
    refundId: GatewayId | None = None
    refundRequestId: RequestId | None = None

    @model_validator(mode="after")
    def _one(self) -> InquiryRefundRequest:
        if (self.refundId is None) == (self.refundRequestId is None):
            raise ValueError("give exactly one of refundId and refundRequestId")
        return self


class ListPaymentsRequest(_Strict):
    pageSize: Annotated[int, Field(ge=1, le=100)] = 20
    pageToken: Annotated[str, Field(max_length=80, pattern=r"^[0-9]{1,16}:[a-z]{3}_[0-9a-f]{32}$")] | None = None


class SettlementSummaryRequest(_Strict):
    # a UTC day, or the start of a shorter settlement cycle (docs/nodes.md)
    settlementDate: Annotated[str, Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)?$")]
