"""PSI inputs and outputs: key columns from CSV (or Parquet with pyarrow installed),
normalisation, deduplication, null handling; output written atomically."""

from __future__ import annotations

import csv
import os
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from veilpay.errors import DataError, InvalidInput

__all__ = ["IdTable", "read_ids", "write_rows"]

NORMALISE = ("none", "trim", "casefold")
_SEP = "\x1f"  # unit separator between composite key parts, after a length prefix


@dataclass
class IdTable:
    """``ids[i]`` is the key of ``rows[first_row[i]]``; rows keep file order."""

    header: list[str]
    rows: list[list[str]]
    ids: list[bytes] = field(default_factory=list)
    first_row: list[int] = field(default_factory=list)
    duplicates: int = 0
    nulls: int = 0


def _norm(value: str, how: str) -> str:
    if how == "none":
        return value
    value = unicodedata.normalize("NFC", value.strip())
    return value.casefold() if how == "casefold" else value


def _read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq  # type: ignore[import-not-found]  # optional extra: veilpay[parquet]
        except ImportError as exc:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'veilpay[parquet]')") from exc
        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
            raise DataError(f"{path}: not a readable Parquet file: {exc}") from exc
        cols = table.column_names
        data = [["" if v is None else str(v) for v in table.column(c).to_pylist()] for c in cols]
        return cols, [list(r) for r in zip(*data, strict=True)] if data else []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh, strict=True)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file, no header row")
            rows = []
            for line_no, row in enumerate(reader, start=2):
                if len(row) != len(header):
                    raise DataError(f"{path}: line {line_no} has {len(row)} fields, the header has {len(header)}")
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV: {exc}") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from exc
    return header, rows


def read_ids(path: str | Path, keys: Sequence[str], normalise: str = "trim", on_null: str = "drop") -> IdTable:
    """Read ``path`` and build one id per distinct key (first occurrence wins).
    ``on_null``: 'drop' skips rows with an empty key part (counted), 'error' refuses."""
    path = Path(path)
    if normalise not in NORMALISE:
        raise InvalidInput(f"normalise must be one of {NORMALISE}")
    if on_null not in ("drop", "error"):
        raise InvalidInput("on_null must be 'drop' or 'error'")
    if not keys:
        raise InvalidInput("name at least one key column")
    header, rows = _read_table(path)
    missing = [k for k in keys if k not in header]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r} (columns: {', '.join(header)})")
    cols = [header.index(k) for k in keys]
    table = IdTable(header, rows)
    seen: set[bytes] = set()
    for r, row in enumerate(rows):
        parts = [_norm(row[c], normalise) for c in cols]
        if any(p == "" for p in parts):
            if on_null == "error":
                raise DataError(f"{path}: row {r + 2} has an empty key in column {keys[parts.index('')]!r}")
            table.nulls += 1
            continue
        ident = "".join(f"{len(p)}{_SEP}{p}" for p in parts).encode()
        if ident in seen:
            table.duplicates += 1
            continue
        seen.add(ident)
        table.ids.append(ident)
        table.first_row.append(r)
    return table


def write_rows(path: str | Path, header: list[str], rows: Sequence[Sequence[str]]) -> None:
    """Write a CSV atomically: a temporary file in the same folder, renamed into place,
    so a failed run never leaves a half-written output."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
