"""Settlement periods: the UTC day by default (Alipay+ settles daily), or a shorter
cycle that divides the day evenly (a network that settles several times a day).

A period's label is its UTC day, ``YYYY-MM-DD``, for a daily cycle, and its start,
``YYYY-MM-DDTHH:MM:SSZ``, for a shorter one. The privacy nodes place each amount in
the period of the time its partner signed (``docs/nodes.md``) and compute a period's
totals only once it has closed by their own clock."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from veilpay.errors import InvalidInput

__all__ = ["DAY_S", "Period", "check_cycle"]

DAY_S = 86_400
_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_START = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")


def check_cycle(cycle_s: int) -> int:
    """``cycle_s`` when it is a whole number of seconds that divides a day; InvalidInput otherwise."""
    if isinstance(cycle_s, bool) or not isinstance(cycle_s, int) or cycle_s < 1 or DAY_S % cycle_s:
        raise InvalidInput(f"a settlement cycle is a number of seconds that divides {DAY_S}, not {cycle_s!r}")
    return cycle_s


@dataclass(frozen=True, order=True)
class Period:
    """One settlement period: ``start_ms`` and its length ``cycle_s``."""

    start_ms: int
    cycle_s: int = DAY_S

    @classmethod
    def of(cls, ms: int, cycle_s: int = DAY_S) -> Period:
        """The period that contains the time ``ms`` (milliseconds since the epoch)."""
        step = check_cycle(cycle_s) * 1000
        return cls(ms - ms % step, cycle_s)

    @classmethod
    def parse(cls, label: object, cycle_s: int = DAY_S) -> Period:
        """The period named ``label`` under a cycle of ``cycle_s``; InvalidInput for a label
        that is malformed, of the other form, or not at a period's start."""
        check_cycle(cycle_s)
        if not isinstance(label, str) or len(label) > 20:
            raise InvalidInput("a period is YYYY-MM-DD, or YYYY-MM-DDTHH:MM:SSZ for cycles shorter than a day")
        daily = cycle_s == DAY_S
        if not (_DAY if daily else _START).match(label):
            want = "YYYY-MM-DD" if daily else f"YYYY-MM-DDTHH:MM:SSZ (cycles of {cycle_s} s)"
            raise InvalidInput(f"period {label!r}: expected {want}")
        try:
            fmt = "%Y-%m-%d" if daily else "%Y-%m-%dT%H:%M:%SZ"
            start = dt.datetime.strptime(label, fmt).replace(tzinfo=dt.UTC)
        except ValueError as exc:
            raise InvalidInput(f"period {label!r} is not a date") from exc
        ms = int(start.timestamp()) * 1000
        if ms % (cycle_s * 1000):
            raise InvalidInput(f"period {label!r} does not start a cycle of {cycle_s} s")
        return cls(ms, cycle_s)

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.cycle_s * 1000

    @property
    def label(self) -> str:
        start = dt.datetime.fromtimestamp(self.start_ms / 1000, dt.UTC)
        return start.strftime("%Y-%m-%d" if self.cycle_s == DAY_S else "%Y-%m-%dT%H:%M:%SZ")

    @property
    def month(self) -> str:
        """The UTC calendar month, ``YYYY-MM``: the span of a privacy budget."""
        return dt.datetime.fromtimestamp(self.start_ms / 1000, dt.UTC).strftime("%Y-%m")

    def closed(self, now_ms: int, margin_s: float) -> bool:
        """Whether the period ended at least ``margin_s`` seconds before ``now_ms``."""
        return now_ms >= self.end_ms + int(margin_s * 1000)

    def __str__(self) -> str:
        return self.label
