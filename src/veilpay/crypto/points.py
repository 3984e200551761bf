"""What the blinding code shares: the 32-byte point size and the refusal error."""

from __future__ import annotations

from veilpay.errors import InvalidInput

__all__ = ["POINT", "InvalidPointError"]

POINT = 32


class InvalidPointError(InvalidInput):
    """A point that must not be used: non-canonical, not on the curve, or of small order."""

    def __init__(self, index: int, why: str) -> None:
        super().__init__(f"point {index}: {why}")
        self.index = index
