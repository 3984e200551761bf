from __future__ import annotations

from pathlib import Path

VECTORS = Path(__file__).parent / "vectors"


def load_vectors(relpath: str) -> list[dict[str, str]]:
    """KEY = VALUE blocks; a line starting with '#' is a comment; one block per file
    for the RFC files, one entry per line for value tables (key, value)."""
    entries: list[dict[str, str]] = []
    block: dict[str, str] = {}
    for line in (VECTORS / relpath).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        block[key.strip()] = value.strip()
    entries.append(block)
    return entries


def load_table(relpath: str) -> list[tuple[str, str]]:
    rows = []
    for line in (VECTORS / relpath).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            rows.append((key.strip(), value.strip()))
    return rows
