"""Atomic file output: a temporary file in the target's folder, renamed into place,
so a failed run never leaves a half-written file behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write"]


def atomic_write(path: str | Path, write: Callable[[IO[Any]], object], binary: bool = False,
                 mode: int = 0o644) -> None:
    """Call ``write(file)`` on a temporary file (text UTF-8, or ``binary``) with
    permissions ``mode``, then rename it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
