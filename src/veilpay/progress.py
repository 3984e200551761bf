"""Progress for long runs: a tqdm bar on stderr when stderr is a terminal; otherwise,
for coarse steps (an epoch, a tree), one line per step on stderr, so a run under nohup,
systemd or CI still shows how far it got in its log."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

__all__ = ["LineProgress", "progress"]


class LineProgress:
    """tqdm's ``update`` / ``set_postfix`` as one stderr line per update:
    ``train wallet: epoch 3/10 brier=0.1234 (12.3 s)``."""

    def __init__(self, total: int, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self.postfix = ""
        self._t0 = time.perf_counter()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_postfix(self, **values: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        extra = f" {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.unit} {self.n}/{self.total}{extra} ({time.perf_counter() - self._t0:.1f} s)",
              file=sys.stderr, flush=True)


def progress(total: int, desc: str, unit: str = "it", enabled: bool | None = None,
             lines: bool = False) -> tqdm | LineProgress:
    """A bar over ``total`` steps; ``enabled=None`` means: only on a TTY. ``lines``:
    where no bar is shown because stderr is not a TTY (``enabled=None``), print a line
    per step instead (for coarse steps only: epochs, trees)."""
    tty = sys.stderr.isatty()
    if lines and enabled is None and not tty:
        return LineProgress(total, desc, unit)
    show = tty if enabled is None else enabled
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not show, leave=False, file=sys.stderr)
