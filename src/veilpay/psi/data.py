"""PSI inputs and outputs: key columns streamed from CSV (or Parquet with pyarrow
installed), normalisation, deduplication, null handling; the chosen rows read back in
a second pass, so no whole file is held in memory; output written atomically."""

from __future__ import annotations

import bisect
import codecs
import contextlib
import csv
import io
import itertools
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from veilpay.errors import DataError, InvalidInput
from veilpay.files import atomic_write
from veilpay.packed import PackedIds

__all__ = ["IdTable", "copy_rows", "iter_id_batches", "join_key", "normalise_key", "split_key", "open_rows",
           "read_header", "read_ids", "read_rows", "stream_rows", "write_rows"]

NORMALISE = ("none", "trim", "casefold")
_BATCH = 1 << 16  # rows per batch in read_ids
_SEP = "\x1f"  # unit separator between composite key parts, after a length prefix


@dataclass
class IdTable:
    """``ids[i]`` is the key of data row ``first_row[i]`` (0-based, file order; int64).
    Rows themselves are not kept: `read_rows` reads the chosen ones back from the file.
    The ids are packed into one buffer and marked distinct."""

    path: Path
    header: list[str]
    rows: int = 0
    ids: PackedIds = field(default_factory=lambda: PackedIds.from_list([], distinct=True))
    first_row: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    duplicates: int = 0
    nulls: int = 0


def join_key(parts: Sequence[str]) -> bytes:
    """One id from normalised key parts (length-prefixed, so ("a", "bc") != ("ab", "c"))."""
    return "".join(f"{len(p)}{_SEP}{p}" for p in parts).encode()


def split_key(ident: bytes) -> list[str]:
    """The key parts of an id made by `join_key`."""
    text, parts = ident.decode(), []
    while text:
        length, sep, rest = text.partition(_SEP)
        if not sep or not (length.isascii() and length.isdigit()) or len(rest) < int(length):
            raise InvalidInput("not an id made by join_key")
        parts.append(rest[: int(length)])
        text = rest[int(length) :]
    return parts


def normalise_key(value: str, how: str) -> str:
    """A key part as --normalise asks: none, trim (strip + NFC) or casefold."""
    if how not in NORMALISE:
        raise InvalidInput(f"normalise must be one of {NORMALISE}")
    return _norm(value, how)


def _norm(value: str, how: str) -> str:
    if how == "none":
        return value
    value = unicodedata.normalize("NFC", value.strip())
    return value.casefold() if how == "casefold" else value


def _is_parquet(path: Path) -> bool:
    """A Parquet file, or a folder of them (read in name order, as one table)."""
    if path.suffix.lower() in (".parquet", ".pq"):
        return True
    return path.is_dir() and any(p.suffix.lower() in (".parquet", ".pq") for p in path.iterdir())


def _parquet_parts(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    parts = sorted(p for p in path.iterdir() if p.suffix.lower() in (".parquet", ".pq") and p.is_file())
    if not parts:
        raise DataError(f"{path}: a folder without Parquet files (*.parquet)")
    return parts


def _parquet_rows(path: Path) -> tuple[list[str], Iterator[list[str]]]:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-not-found,import-untyped,unused-ignore]  # optional extra: veilpay[parquet]
    except ImportError as exc:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'veilpay[parquet]')") from exc
    def open_part(part: Path) -> Any:
        try:
            return pq.ParquetFile(part)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
            raise DataError(f"{part}: not a readable Parquet file: {exc}") from exc

    parts = _parquet_parts(path)
    header = list(open_part(parts[0]).schema_arrow.names)

    def rows() -> Iterator[list[str]]:
        for part in parts:  # one file open at a time: a folder streams like one file
            pf = open_part(part)
            if list(pf.schema_arrow.names) != header:
                raise DataError(f"{part}: columns differ from {parts[0].name}'s ({', '.join(header)})")
            try:
                for batch in pf.iter_batches(batch_size=65536):
                    cols = [["" if v is None else str(v) for v in batch.column(i).to_pylist()]
                            for i in range(len(header))]
                    yield from (list(r) for r in zip(*cols, strict=True))
            except Exception as exc:  # noqa: BLE001
                raise DataError(f"{part}: not a readable Parquet file: {exc}") from exc

    return header, rows()


@contextlib.contextmanager
def open_rows(path: str | Path) -> Iterator[tuple[list[str], Iterator[list[str]]]]:
    """The header and a stream of data rows (lists of strings) of a CSV or Parquet
    file; a malformed file raises DataError naming the file and line."""
    path = Path(path)
    if _is_parquet(path):
        yield _parquet_rows(path)
        return
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh, strict=True)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file, no header row")
            yield header, _checked_rows(path, reader, len(header), 2)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV: {exc}") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from exc


def _checked_rows(path: Path, reader: Iterator[list[str]], width: int, line_no: int) -> Iterator[list[str]]:
    """The rows of ``reader``, the first on line ``line_no``; DataError naming the line
    for a wrong field count, and the file for bad bytes or quoting."""
    try:  # batches, so the field-count check runs at C speed
        while batch := list(itertools.islice(reader, _BATCH)):
            if set(map(len, batch)) != {width}:
                bad = next(i for i, row in enumerate(batch) if len(row) != width)
                raise DataError(f"{path}: line {line_no + bad} has {len(batch[bad])} fields, "
                                f"the header has {width}")
            line_no += len(batch)
            yield from batch
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV: {exc}") from exc


def _check_options(keys: Sequence[str], normalise: str, on_null: str) -> None:
    if normalise not in NORMALISE:
        raise InvalidInput(f"normalise must be one of {NORMALISE}")
    if on_null not in ("drop", "error"):
        raise InvalidInput("on_null must be 'drop' or 'error'")
    if not keys:
        raise InvalidInput("name at least one key column")


def _require_keys(path: Path, header: list[str], keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in header]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r} (columns: {', '.join(header)})")


def read_header(path: str | Path, keys: Sequence[str], normalise: str = "trim", on_null: str = "drop") -> list[str]:
    """The header of ``path``, once the options are valid and the file opens, parses
    and has the key columns (DataError naming the file otherwise). Reads the first
    line only (Parquet: the schema), so a run can check its input before it connects."""
    path = Path(path)
    _check_options(keys, normalise, on_null)
    with open_rows(path) as (header, _rows):
        _require_keys(path, header, keys)
        return header


def iter_id_batches(path: str | Path, keys: Sequence[str], normalise: str = "trim", on_null: str = "drop",
                    table: IdTable | None = None) -> Iterator[tuple[PackedIds, np.ndarray]]:
    """Stream ``path`` as batches of (ids, their 0-based data row numbers as int64),
    duplicates kept; rows with an empty key part are dropped (counted in
    ``table.nulls``) or, with ``on_null='error'``, refused. ``table`` (optional) gets
    the header and counts."""
    from veilpay.psi._ingest import to_packed

    for ids, rows in _id_arrays(Path(path), keys, normalise, on_null, table or IdTable(Path(path), [])):
        yield to_packed(ids), rows


def read_ids(path: str | Path, keys: Sequence[str], normalise: str = "trim", on_null: str = "drop") -> IdTable:
    """Stream ``path`` and build one id per distinct key (first occurrence wins).
    ``on_null``: 'drop' skips rows with an empty key part (counted), 'error' refuses.
    Key columns are read, normalised, encoded and deduplicated as Arrow arrays
    (`veilpay.psi._ingest`): a million-row CSV takes a fraction of a second, where
    the csv module and per-string functions took over one."""
    from veilpay.psi._ingest import PackedBuilder, first_occurrences, release_pool, take_packed

    table = IdTable(Path(path), [])
    builder = PackedBuilder()  # each batch packed and hashed as it comes, its Arrow arrays let go
    for i, (ids, r) in enumerate(_id_arrays(Path(path), keys, normalise, on_null, table), 1):
        builder.add(ids, r)
        if not i % 4:  # pyarrow's pool keeps the batches' freed blocks (30 MiB at 1M rows); not every
            release_pool(heap=False)  # batch: the next would fault its pages in again
    every, hashes = builder.finish()
    first = first_occurrences(every, hashes)
    del hashes
    first_row = builder.rows()
    table.duplicates = len(every) - len(first)
    if table.duplicates:
        every, first_row = take_packed(every, first), first_row[first]
    table.ids, table.first_row = PackedIds(every.data, every.offsets, distinct=True), first_row
    del every, first
    release_pool()  # the protocol that follows needs the memory the batches used
    return table


def _id_arrays(path: Path, keys: Sequence[str], normalise: str, on_null: str,
               table: IdTable) -> Iterator[tuple[Any, np.ndarray]]:
    """`iter_id_batches` with the ids as an Arrow string array."""
    from veilpay.psi._ingest import empty_mask, encode_ids, normalise_array, take

    _check_options(keys, normalise, on_null)
    with _key_columns(path, keys) as (header, batches):
        table.header = header
        for raw, n in batches:
            start = table.rows
            table.rows += n
            parts = [normalise_array(p, normalise, _norm) for p in raw]
            rows = np.arange(start, start + n, dtype=np.int64)
            empty = empty_mask(parts)
            if empty.any():
                if on_null == "error":
                    i = int(np.argmax(empty))
                    col = next(k for k, p in zip(keys, parts, strict=True) if p[i].as_py() == "")
                    raise DataError(f"{path}: row {start + i + 2} has an empty key in column {col!r}")
                table.nulls += int(empty.sum())
                keep = np.flatnonzero(~empty)
                parts, rows = [take(p, keep) for p in parts], rows[keep]
            yield encode_ids(parts), rows


@contextlib.contextmanager
def _key_columns(path: Path, keys: Sequence[str]) -> Iterator[tuple[list[str], Iterator[tuple[list[Any], int]]]]:
    """The header and batches of (the ``keys`` columns as Arrow string arrays, row
    count); DataError as `open_rows` gives it for a bad file or a missing key column."""
    if _is_parquet(path):
        header, parts = _parquet_header(path)
        _require_keys(path, header, keys)
        yield header, _parquet_key_batches(parts, header, keys)
        return
    fast = _plain_header(path)
    if fast is None:  # the csv module from the start (a quoted header, a BOM, an unreadable file, ...)
        with open_rows(path) as (header, rows):
            _require_keys(path, header, keys)
            yield header, _py_key_batches(rows, header, keys)
        return
    header, start = fast
    _require_keys(path, header, keys)
    yield header, _csv_key_batches(path, header, start, keys)


def _plain_header(path: Path) -> tuple[list[str], int] | None:
    """The header and the offset after it, for a CSV file whose first line is plain
    UTF-8 without quotes that ends in \n (the csv module reads it as a split on
    commas); None for any other."""
    try:
        with path.open("rb") as fh:
            first = fh.readline(1 << 20)
    except OSError:
        return None
    if not first.endswith(b"\n") or b'"' in first or first.startswith(codecs.BOM_UTF8):
        return None
    line = first[:-2] if first.endswith(b"\r\n") else first[:-1]
    if not line or b"\r" in line:
        return None
    try:
        header = line.decode("utf-8").split(",")
    except UnicodeDecodeError:
        return None
    return (header, len(first)) if len(set(header)) == len(header) else None


def _csv_key_batches(path: Path, header: list[str], start: int, keys: Sequence[str]) -> Iterator[tuple[list[Any], int]]:
    """pyarrow's CSV reader over the lines `CsvGuard` passes, the csv module over the
    rest; any error is found again by `open_rows` from the start, so it reads as before."""
    import pyarrow as pa  # type: ignore[import-not-found,import-untyped,unused-ignore]

    from veilpay.psi._ingest import CsvGuard, arrow_csv_batches

    cols = list(dict.fromkeys(keys))
    rows = 0
    try:
        with path.open("rb") as fh:
            fh.seek(start)
            guard = CsvGuard(fh, start)
            for got, n in arrow_csv_batches(guard, header, cols):
                yield [got[cols.index(k)] for k in keys], n
                rows += n
            if guard.bad_utf8:
                _raise_as_before(path, "not UTF-8 text")
            if guard.cut is None:
                return
            fh.seek(guard.cut)  # the csv module from the last whole line pyarrow read
            text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            reader = csv.reader(text, strict=True)
            yield from _py_key_batches(_checked_rows(path, reader, len(header), rows + 2), header, keys)
    except (pa.ArrowInvalid, DataError) as exc:
        _raise_as_before(path, f"malformed CSV: {exc}")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from exc


def _raise_as_before(path: Path, otherwise: str) -> None:
    """Read ``path`` with `open_rows` to raise its error (naming the line); ``otherwise``
    where it finds none."""
    with open_rows(path) as (_header, rows):
        for _ in rows:
            pass
    raise DataError(f"{path}: {otherwise}")


def _py_key_batches(rows: Iterator[list[str]], header: list[str], keys: Sequence[str]) -> Iterator[tuple[list[Any], int]]:
    from veilpay.psi._ingest import from_pylist

    picks = [header.index(k) for k in keys]
    while batch := list(itertools.islice(rows, _BATCH)):
        yield [from_pylist([row[c] for row in batch]) for c in picks], len(batch)


def _parquet_header(path: Path) -> tuple[list[str], list[Path]]:
    parts = _parquet_parts(path)
    return list(_open_parquet(parts[0]).schema_arrow.names), parts


def _open_parquet(part: Path) -> Any:
    import pyarrow.parquet as pq  # type: ignore[import-not-found,import-untyped,unused-ignore]

    try:
        return pq.ParquetFile(part)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise DataError(f"{part}: not a readable Parquet file: {exc}") from exc


def _parquet_key_batches(parts: list[Path], header: list[str], keys: Sequence[str]) -> Iterator[tuple[list[Any], int]]:
    """The key column chunks of each file in turn, as `_parquet_rows` reads them
    (str(value), '' for null): only those columns are read."""
    from veilpay.psi._ingest import as_strings

    cols = list(dict.fromkeys(keys))
    for part in parts:  # one file open at a time: a folder streams like one file
        pf = _open_parquet(part)
        if list(pf.schema_arrow.names) != header:
            raise DataError(f"{part}: columns differ from {parts[0].name}'s ({', '.join(header)})")
        try:
            for batch in pf.iter_batches(batch_size=_BATCH, columns=cols):
                got = [as_strings(batch.column(c)) for c in cols]
                yield [got[cols.index(k)] for k in keys], batch.num_rows
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{part}: not a readable Parquet file: {exc}") from exc


def read_rows(path: str | Path, wanted: np.ndarray, columns: Sequence[str]) -> list[list[str]]:
    """The ``columns`` of data rows ``wanted`` (0-based, ascending), read back from the file."""
    out: list[list[str]] = []
    if not len(wanted):
        return out
    if not _is_parquet(Path(path)):
        fast = _read_rows_unquoted(Path(path), wanted, columns)
        if fast is not None:
            return fast
    with open_rows(path) as (header, rows):
        picks = [header.index(c) for c in columns]
        it = iter(wanted.tolist())
        nxt = next(it)
        for r, row in enumerate(rows):
            if r == nxt:
                out.append([row[c] for c in picks])
                nxt = next(it, -1)
                if nxt < 0:
                    break
    if len(out) != len(wanted):
        raise DataError(f"{path}: the file changed during the run (rows missing on the second read)")
    return out


def _unquoted_lines(path: Path, wanted: np.ndarray) -> tuple[str, list[str]] | None:
    """The header line and the lines of data rows ``wanted`` of a CSV file without a
    quote character, where each line is one record. None when a quote turns up: the
    caller then uses the full CSV parser."""
    out: list[str] = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            first = fh.readline()
            if '"' in first:
                return None
            targets = wanted.tolist()
            k, start = 0, 0
            while k < len(targets) and (lines := list(itertools.islice(fh, _BATCH))):
                if '"' in "".join(lines):
                    return None
                end = start + len(lines)
                stop = bisect.bisect_left(targets, end, k)
                out.extend([lines[r - start] for r in targets[k:stop]])
                k, start = stop, end
    except (UnicodeDecodeError, OSError):
        return None  # the full parser reports it with the file's name
    if len(out) != len(wanted):
        raise DataError(f"{path}: the file changed during the run (rows missing on the second read)")
    return first, out


def _read_rows_unquoted(path: Path, wanted: np.ndarray, columns: Sequence[str]) -> list[list[str]] | None:
    got = _unquoted_lines(path, wanted)
    if got is None:
        return None
    header = next(csv.reader([got[0]]))
    picks = [header.index(c) for c in columns]
    return [[row[c] for c in picks] for row in csv.reader(got[1])]


def copy_rows(path: str | Path, wanted: np.ndarray, output: str | Path) -> bool:
    """Write data rows ``wanted`` with every column to ``output`` (atomically) by
    copying their lines, for a CSV input without quotes; False (nothing written) for
    any other input, which goes through `read_rows` and `write_rows`."""
    path = Path(path)
    if _is_parquet(path):
        return False
    try:
        atomic_write(output, lambda fh: _write_picked(path, wanted, fh), binary=True)
        return True
    except _NotPlain:
        pass  # nothing was written (the temporary file is gone): the line-by-line copy decides
    except OSError:
        return False
    got = _unquoted_lines(path, wanted)
    if got is None:
        return False
    first, lines = got
    # the line ends csv.writer would write, so both paths give the same file
    text = "".join(line.rstrip("\r\n") + "\r\n" for line in [first, *lines])

    def write(fh: IO[Any]) -> None:
        fh.write(text)

    atomic_write(output, write)
    return True


_PICK_BLOCK = 1 << 24  # bytes of the input handled at a time by the numpy line picker


class _NotPlain(Exception):
    """The input has something the numpy line picker leaves to the line-by-line copy."""


def _write_picked(path: Path, wanted: np.ndarray, out: IO[bytes], block: int = _PICK_BLOCK) -> None:
    """Write `copy_rows`'s output to ``out``: the header and the wanted lines, each
    ended by CRLF, picked with numpy from the file's bytes a block at a time (memory
    stays a few blocks whatever the file's size). _NotPlain where the file has a quote,
    a lone CR, an empty line or bytes that are not UTF-8: the line-by-line copy then
    decides."""
    lines = np.asarray(wanted, dtype=np.int64) + 1  # line 0 is the header
    k, base, carry = 0, 0, b""
    with path.open("rb") as fh:
        while True:
            data = fh.read(block)
            region = carry + data
            if data:
                cut = region.rfind(b"\n") + 1
                body, carry = region[:cut], region[cut:]
            else:  # the end: a last line without its line end
                body, carry = region, b""
            if body:
                if b'"' in body or (b"\r" in body and body.count(b"\r") != body.count(b"\r\n")):
                    raise _NotPlain
                try:
                    body.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise _NotPlain from exc
                buf = np.frombuffer(body, dtype=np.uint8)
                ends = np.flatnonzero(buf == 10)
                if not body.endswith(b"\n"):
                    ends = np.append(ends, len(body))
                stop = int(np.searchsorted(lines, base + len(ends), "left"))
                pick = lines[k:stop] - base
                if base == 0:
                    pick = np.concatenate([[0], pick])
                k = stop
                starts = np.concatenate([[0], ends[:-1] + 1])
                if bool(((ends - starts == 0) | ((ends - starts == 1) & (buf[np.minimum(starts, len(buf) - 1)] == 13)))
                        .any()):
                    raise _NotPlain  # an empty line
                lo = starts[pick]
                hi = ends[pick] - ((ends[pick] > lo) & (buf[np.maximum(ends[pick] - 1, 0)] == 13))  # without the CR
                _write_lines(buf, lo, hi, out)
                base += len(ends)
            if not data:
                break
    if k != len(lines):
        raise DataError(f"{path}: the file changed during the run (rows missing on the second read)")


def _write_lines(buf: np.ndarray, lo: np.ndarray, hi: np.ndarray, out: IO[bytes]) -> None:
    """Write bytes lo[i]:hi[i] of ``buf`` for each i, each followed by CRLF."""
    if not len(lo):
        return
    size = hi - lo + 2
    at = np.zeros(len(size) + 1, dtype=np.int64)
    np.cumsum(size, out=at[1:])
    idx = np.int32 if at[-1] < 1 << 31 else np.int64
    # each output byte's source: the line's bytes, then two bytes overwritten by CR LF
    src = np.repeat((lo - at[:-1]).astype(idx), size.astype(idx))
    src += np.arange(len(src), dtype=idx)
    got = np.take(buf, src, mode="clip")
    got[at[1:] - 2] = 13
    got[at[1:] - 1] = 10
    out.write(got.data)


def _picked_lines(path: Path, wanted: np.ndarray, block: int = _PICK_BLOCK) -> bytes | None:
    """`_write_picked`'s output as bytes, or None where it leaves the file to the
    line-by-line copy."""
    sink = io.BytesIO()
    try:
        _write_picked(path, wanted, sink, block)
    except _NotPlain:
        return None
    return sink.getvalue()


def stream_rows(path: str | Path, wanted: Iterable[np.ndarray], output: str | Path) -> bool:
    """`copy_rows` that writes each wanted line as it is read, so the lines are never
    held together; ``wanted``: ascending row numbers, in ascending chunks (so they
    need not be held together either; it is iterated once). False (nothing written) where `copy_rows` would refuse (a
    Parquet input, or a quote in the CSV file: the caller then uses `read_rows`)."""
    path = Path(path)
    if _is_parquet(path):
        return False
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            first = fh.readline()
            if '"' in first:
                return False
            header_line = first.rstrip("\r\n") + "\r\n"
    except (UnicodeDecodeError, OSError):
        return False
    missing = False

    def numbers() -> Iterator[int]:
        for chunk in wanted:
            for pos in range(0, len(chunk), _BATCH):
                yield from chunk[pos : pos + _BATCH].tolist()

    def write(out: IO[Any]) -> None:
        nonlocal missing
        out.write(header_line)
        it = numbers()
        nxt = next(it, -1)
        with path.open(newline="", encoding="utf-8") as fh:
            fh.readline()
            r = 0
            while nxt >= 0 and (lines := list(itertools.islice(fh, _BATCH))):
                if '"' in "".join(lines):
                    raise _Quoted
                end = r + len(lines)
                while 0 <= nxt < end:
                    out.write(lines[nxt - r].rstrip("\r\n") + "\r\n")
                    nxt = next(it, -1)
                r = end
        missing = nxt >= 0

    try:
        atomic_write(output, write)
    except _Quoted:
        return False
    if missing:
        Path(output).unlink(missing_ok=True)
        raise DataError(f"{path}: the file changed during the run (rows missing on the second read)")
    return True


class _Quoted(Exception):  # noqa: N818 - private signal: the CSV has quotes, use the full parser
    """A quote turned up in the middle of `stream_rows`."""


def write_rows(path: str | Path, header: list[str], rows: Sequence[Sequence[str]]) -> None:
    """Write a CSV atomically: a temporary file in the same folder, renamed into place,
    so a failed run never leaves a half-written output."""
    def write(fh: IO[Any]) -> None:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)

    atomic_write(path, write)
