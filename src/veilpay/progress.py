"""Progress bars for long runs: tqdm on stderr, shown only when stderr is a terminal."""

from __future__ import annotations

import sys

from tqdm import tqdm

__all__ = ["progress"]


def progress(total: int, desc: str, unit: str = "it", enabled: bool | None = None) -> tqdm:
    """A bar over ``total`` steps; ``enabled=None`` means: only on a TTY."""
    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not show, leave=False, file=sys.stderr)
