"""The fast ingestion path of psi.data: key columns read with pyarrow (its C++ CSV
reader, or Parquet column chunks), normalised, encoded and deduplicated as Arrow
arrays, so a million-row file costs no Python object per row.

Every step gives exactly what the per-string functions of psi.data give, which stay
the reference and the fallback: a CSV region pyarrow might read otherwise than
Python's csv module (a quote, an empty line, a BOM, a very long line, bytes that are
not UTF-8) is handed to the csv module from the last line end before it; a row with a
non-ASCII key goes through `psi.data._norm`; a parse error is found again by the csv
module, which names the line.

Memory: no Python value is handed to pyarrow to convert (a str separator, a list, a
numpy array through pa.array): pyarrow imports pandas to check its type, some 40 MiB
a PSI party would keep. Arrays and scalars are made from buffers instead, and
`PackedBuilder` keeps each batch as numpy bytes and hashes, not as Arrow arrays."""

from __future__ import annotations

import codecs
import collections
import io
import mmap
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-not-found,import-untyped,unused-ignore]
import pyarrow.compute as pc  # type: ignore[import-not-found,import-untyped,unused-ignore]
import pyarrow.csv as pcsv  # type: ignore[import-not-found,import-untyped,unused-ignore]

from veilpay.host import return_freed_memory
from veilpay.packed import PackedIds

__all__ = ["ASCII_SPACE", "CsvGuard", "PackedBuilder", "arrow_csv_batches", "encode_ids", "first_occurrences",
           "normalise_array", "release_pool", "take_packed", "to_packed"]

# the ASCII characters str.strip() removes, taken from Python itself (\x1c-\x1f included)
ASCII_SPACE = "".join(c for c in map(chr, range(128)) if c.isspace())
BLOCK = 1 << 20  # bytes per read from the file, and pyarrow's block size
_FIELD_LIMIT = 131072  # csv.field_size_limit(): a longer line goes to the csv module, which may refuse it
_SEP = "\x1f"


class CsvGuard(io.RawIOBase):
    """A read-only byte stream over ``fh`` from its current position that hands out
    only whole lines pyarrow reads exactly as the csv module would: at the first byte
    that might differ it stops at the last line end before it (``cut``, an absolute
    file offset; None while nothing was stopped) and reports end of file. ``bad_utf8``
    is set where the stop was for bytes that are not UTF-8."""

    def __init__(self, fh: io.BufferedReader, start: int) -> None:
        super().__init__()
        self._fh = fh
        self._pos = start  # file offset of the first byte not yet checked
        self._ready: collections.deque[bytes] = collections.deque()  # checked whole lines, not yet handed out
        self._tail = b""  # checked bytes after the last line end
        self._prev = b"\n"  # the byte before the unread part: the header ended with a line end
        self._line_start = start - 1  # where the line before the current one ended
        self._dec = codecs.getincrementaldecoder("utf-8")()
        self._eof = False
        self.cut: int | None = None
        self.bad_utf8 = False

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        while not self._ready and not self._eof:
            self._fill()
        if not self._ready:
            return b""
        piece = self._ready.popleft()
        if size is not None and 0 <= size < len(piece):
            self._ready.appendleft(piece[size:])
            piece = piece[:size]
        return piece

    def readinto(self, buf: Any) -> int:
        piece = self.read(len(memoryview(buf)))
        memoryview(buf).cast("B")[: len(piece)] = piece
        return len(piece)

    def _fill(self) -> None:
        block = self._fh.read(BLOCK)
        if not block:
            if self._tail:
                self._ready.append(self._tail)
            self._tail, self._eof = b"", True
            return
        base = self._pos - len(self._tail)  # file offset of data[0]
        data = self._tail + block
        self._pos += len(block)
        stop = self._first_doubt(block, base + len(self._tail))
        if stop is not None:  # hand out the whole lines before it, then end
            end = data.rfind(b"\n", 0, max(stop - base, 0)) + 1
            if end:
                self._ready.append(data[:end])
            self.cut = base + end
            self._tail, self._eof = b"", True
            return
        end = data.rfind(b"\n") + 1
        if end:
            self._ready.append(data[:end])
        self._tail = data[end:]

    def _first_doubt(self, block: bytes, block_at: int) -> int | None:
        """The file offset of the first byte of ``block`` (at ``block_at``) where
        pyarrow and the csv module might part."""
        doubts: list[int] = []
        if not block.isascii() or self._dec.getstate()[0]:
            try:
                self._dec.decode(block)
            except UnicodeDecodeError as exc:
                self.bad_utf8 = True
                doubts.append(block_at + exc.start - len(self._dec.getstate()[0]))
        seen = self._prev + block  # seen[i] is at block_at - 1 + i
        self._prev = block[-1:]
        at = seen.find(b'"')
        if at >= 0:
            doubts.append(block_at - 1 + at)
        arr = np.frombuffer(seen, dtype=np.uint8)
        nl = arr == 10
        if b"\r" in seen:
            cr = arr == 13
            ends = nl | cr
            # an empty line (\n then a line end), or a line ending in \r alone
            odd = (nl[:-1] & ends[1:]) | (cr[:-1] & ~nl[1:])
        else:
            ends, odd = nl, nl[:-1] & nl[1:]
        if odd.any():
            doubts.append(block_at - 1 + int(np.argmax(odd)))
        ends = ends[1:]
        # a line longer than a field may be goes to the csv module, which may refuse it; such a
        # line covers a whole window of _FIELD_LIMIT / 2 bytes, so blocks without one skip the scan
        width = _FIELD_LIMIT // 2
        whole = len(ends) // width * width
        if whole < len(ends) or not ends[:whole].reshape(-1, width).any(axis=1).all():
            where = np.flatnonzero(ends) + block_at
            gaps = np.diff(where, prepend=self._line_start)
            long = np.flatnonzero(gaps > _FIELD_LIMIT)
            if len(long):
                doubts.append(int(where[long[0]] - gaps[long[0]]) + 1)
            if block_at + len(block) - (int(where[-1]) if len(where) else self._line_start) > _FIELD_LIMIT:
                doubts.append((int(where[-1]) if len(where) else self._line_start) + 1)
        last = max(block.rfind(b"\n"), block.rfind(b"\r"))
        if last >= 0:
            self._line_start = block_at + last
        return min(doubts) if doubts else None


def arrow_csv_batches(guard: CsvGuard, header: list[str], columns: Sequence[str]) -> Iterator[tuple[list[Any], int]]:
    """The ``columns`` (strings, no nulls) of the data lines ``guard`` hands out, in
    record batches, with each batch's row count. pyarrow.lib.ArrowInvalid on a line
    it cannot parse (the caller finds it again with the csv module)."""
    reader = pcsv.open_csv(
        guard,
        read_options=pcsv.ReadOptions(column_names=header, block_size=BLOCK),
        parse_options=pcsv.ParseOptions(quote_char=False, newlines_in_values=False, ignore_empty_lines=False),
        convert_options=pcsv.ConvertOptions(include_columns=list(columns), strings_can_be_null=False,
                                            column_types={c: pa.string() for c in columns}),
    )
    for batch in reader:
        yield [batch.column(c) for c in columns], batch.num_rows


def normalise_array(values: Any, how: str, slow: Callable[[str, str], str]) -> Any:
    """``slow(value, how)`` over a string array, vectorised where that is exact: on an
    ASCII string, str.strip() removes exactly ASCII_SPACE, NFC changes nothing and
    casefold() is ASCII lowercase. Other rows go through ``slow``."""
    if how == "none":
        return values
    out = pc.utf8_trim(values, characters=ASCII_SPACE)
    if how == "casefold":
        out = pc.ascii_lower(out)
    ascii_rows = pc.string_is_ascii(values)
    if not pc.all(ascii_rows).as_py():
        other = pc.invert(ascii_rows)
        redo = [slow(v, how) for v in pc.filter(values, other).to_pylist()]
        out = pc.replace_with_mask(out, other, from_pylist(redo).cast(out.type))
    return out


def encode_ids(parts: Sequence[Any]) -> Any:
    """psi.data.join_key over rows of key parts: len(part) in characters, the unit
    separator, the part; the pieces of a composite key concatenated."""
    sep = _string_scalar(_SEP)
    pieces = [pc.binary_join_element_wise(pc.cast(pc.utf8_length(p), pa.string()), p, sep) for p in parts]
    return pieces[0] if len(pieces) == 1 else pc.binary_join_element_wise(*pieces, _string_scalar(""))


class PackedBuilder:
    """Batches of ids (Arrow string arrays) and their row numbers, gathered as numpy
    bytes, lengths and the 64-bit hashes `first_occurrences` sorts, so each batch's
    Arrow buffers go as soon as it is added; `finish` joins them into one PackedIds,
    freeing each batch as it is copied, so the file's ids are held once plus a batch.
    The batches live in their own memory maps (`_off_heap`): glibc would keep their
    freed heap pages, and the joined arrays would take new ones beside them."""

    def __init__(self) -> None:
        self._data: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []
        self._hashes: list[np.ndarray] = []
        self._rows: list[np.ndarray | range] = []  # a range where no row was dropped: nothing to hold

    def add(self, ids: Any, rows: np.ndarray) -> None:
        data, offsets = _bytes_and_offsets(ids)
        lo = int(offsets[0])
        chunk = _off_heap(data[lo : int(offsets[-1])])  # a copy: the batch's Arrow buffers can go
        self._hashes.append(_off_heap(_hash64(chunk, offsets.astype(np.int64) - lo)))
        self._lengths.append(_off_heap(np.diff(offsets)))
        self._data.append(chunk)
        # rows ascend, so a batch whose first and last are len - 1 apart is a whole range
        whole = not len(rows) or int(rows[-1]) - int(rows[0]) == len(rows) - 1
        self._rows.append(range(int(rows[0]), int(rows[0]) + len(rows)) if whole and len(rows) else
                          _off_heap(np.asarray(rows, dtype=np.int64)))

    def finish(self) -> tuple[PackedIds, np.ndarray]:
        """The ids and their hashes, in the order added (then `rows`)."""
        offsets = np.zeros(sum(map(len, self._lengths)) + 1, dtype=np.int64)
        at = 0
        while self._lengths:
            part = self._lengths.pop(0)
            run = offsets[at + 1 : at + 1 + len(part)]
            np.cumsum(part, dtype=np.int64, out=run)
            run += offsets[at]
            at += len(part)
        data = _drain(self._data, np.uint8)
        return PackedIds(data, offsets), _drain(self._hashes, np.uint64)

    def rows(self) -> np.ndarray:
        """The row numbers of the ids, in the order added (after `finish`, so the
        hashes can go first)."""
        out: np.ndarray = np.empty(sum(map(len, self._rows)), dtype=np.int64)
        at = 0
        while self._rows:
            part = self._rows.pop(0)
            if isinstance(part, range):
                out[at : at + len(part)] = np.arange(part.start, part.stop, dtype=np.int64)
            else:
                out[at : at + len(part)] = part
            at += len(part)
        return out


def _off_heap(values: np.ndarray) -> np.ndarray:
    """A copy of ``values`` in an anonymous memory map of its own, unmapped (its pages
    back to the OS) as soon as the copy is freed."""
    if not values.nbytes:
        return values.copy()
    out = np.frombuffer(_anonymous_map(values.nbytes), dtype=values.dtype, count=len(values))
    out[:] = values
    return out


def _anonymous_map(size: int) -> mmap.mmap:
    if hasattr(mmap, "MAP_PRIVATE"):  # private pages fault in faster than the shared ones mmap makes by default
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return mmap.mmap(-1, size)


def _drain(chunks: list[np.ndarray], dtype: type) -> np.ndarray:
    """The chunks concatenated, each freed (popped) as soon as it is copied."""
    out: np.ndarray = np.empty(sum(map(len, chunks)), dtype=dtype)
    at = 0
    while chunks:
        part = chunks.pop(0)
        out[at : at + len(part)] = part
        at += len(part)
    return out


def first_occurrences(ids: Any, hashes: np.ndarray | None = None) -> np.ndarray:
    """Positions of the first occurrence of each distinct id (a string array or
    PackedIds), ascending (the rows dict.fromkeys would keep). A 64-bit hash of every
    id, sorted, shows in a few tens of milliseconds that a million ids differ; ids
    with equal hashes are compared byte for byte, so the answer is exact whatever the
    hash does. ``hashes``, where `PackedBuilder` made them already, is sorted in place
    (no second copy at the peak of ingestion) and made again if some repeat."""
    n = len(ids)
    if n < 2:
        return np.arange(n, dtype=np.int64)
    packed = ids if isinstance(ids, PackedIds) else to_packed(ids)
    h = None
    if hashes is None:
        h = _hash64(packed.data, packed.offsets)
        ordered = np.sort(h)
    else:
        hashes.sort()
        ordered = hashes
    if not bool(np.any(ordered[1:] == ordered[:-1])):
        return np.arange(n, dtype=np.int64)
    del ordered
    if h is None:
        h = _hash64(packed.data, packed.offsets)  # in id order again
    if isinstance(ids, PackedIds):
        ids = as_arrow(ids)
    order = np.argsort(h, kind="stable")  # equal hashes keep file order: the first of a run is the earliest
    run_start = np.ones(n, dtype=bool)
    run_start[1:] = h[order][1:] != h[order][:-1]
    head = order[np.maximum.accumulate(np.where(run_start, np.arange(n), 0))]  # each row's run's first
    later = order[~run_start]
    if not pc.all(pc.equal(take(ids, later), take(ids, head[~run_start]))).as_py():
        return _first_occurrences_hashed(ids)  # two ids share a hash: let Arrow's hash table decide
    keep = np.ones(n, dtype=bool)
    keep[later] = False
    return np.flatnonzero(keep).astype(np.int64)


def _first_occurrences_hashed(ids: Any) -> np.ndarray:
    """`first_occurrences` by Arrow's hash table, which numbers values in the order it
    first meets them: a row is a first occurrence exactly when its number exceeds
    every number before it, and the count checks the numbering was that order."""
    enc = pc.dictionary_encode(ids)
    codes = _ints(enc.indices)
    if not len(codes):
        return np.zeros(0, dtype=np.int64)
    before = np.maximum.accumulate(np.concatenate([[-1], codes[:-1]]))
    first = np.flatnonzero(codes > before)
    if len(first) != len(enc.dictionary):  # not first-seen order: the order-free way
        first = np.sort(np.unique(codes, return_index=True)[1])
    return first.astype(np.int64)


_MIX = np.uint64(0x9E3779B97F4A7C15)


def _hash64(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """A fast unkeyed 64-bit hash of each id (length, then 8-byte words), only to spot
    ids that might be equal."""
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    out = np.empty(n, dtype=np.uint64)
    if not n:
        return out
    uniform = int(lengths.min()) == int(lengths.max())
    for length in [int(lengths[0])] if uniform else np.unique(lengths).tolist():
        rows = np.arange(n) if uniform else np.flatnonzero(lengths == length)
        words = (length + 7) // 8
        msg = np.zeros((len(rows), words * 8), dtype=np.uint8)
        if uniform:
            msg[:, :length] = data[offsets[0] : offsets[-1]].reshape(n, length)
        elif length:
            msg[:, :length] = data[offsets[:-1][rows][:, None] + np.arange(length)]
        w = msg.view("<u8")
        h = np.full(len(rows), (length * int(_MIX) + 1) % (1 << 64), dtype=np.uint64)
        for j in range(words):
            h ^= w[:, j]
            h *= _MIX
            h ^= h >> np.uint64(29)
        out[rows] = h
    return out


def _bytes_and_offsets(arr: Any) -> tuple[np.ndarray, np.ndarray]:
    """The data bytes and offsets (int32, or int64 for the large types) of a string
    or binary array without nulls, as numpy views of its buffers."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    large = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    if not len(arr):
        return np.zeros(0, dtype=np.uint8), np.zeros(1, dtype=np.int64 if large else np.int32)
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64 if large else np.int32)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, dtype=np.uint8)
    return data, offsets


def _ints(arr: Any) -> np.ndarray:
    """An integer array without nulls as a numpy view of its buffer."""
    kind = np.dtype(f"<i{arr.type.bit_width // 8}")
    if not len(arr):
        return np.zeros(0, dtype=kind)
    return np.frombuffer(arr.buffers()[1], dtype=kind)[arr.offset : arr.offset + len(arr)]


def _int64_array(values: np.ndarray) -> Any:
    values = np.ascontiguousarray(values, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def _string_scalar(text: str) -> Any:
    return from_pylist([text])[0]


def as_arrow(ids: PackedIds) -> Any:
    """A large_binary array over the buffers of ``ids`` (no copy)."""
    offsets = np.ascontiguousarray(ids.offsets)
    return pa.Array.from_buffers(pa.large_binary(), len(ids), [None, pa.py_buffer(offsets), pa.py_buffer(ids.data)])


def take_packed(ids: PackedIds, rows: np.ndarray, distinct: bool = False) -> PackedIds:
    """The ids at ``rows``, packed anew."""
    return to_packed(take(as_arrow(ids), rows), distinct)


def to_packed(ids: Any, distinct: bool = False) -> PackedIds:
    """A PackedIds over the bytes of a string (or binary) array, sharing its buffer."""
    arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    arr = arr.cast(pa.large_binary())
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, dtype=np.uint8)
    return PackedIds(data, offsets, distinct)


def release_pool(heap: bool = True) -> None:
    """Hand the memory an ingestion freed back to the OS: the blocks pyarrow's pool
    keeps cached (mimalloc keeps some 30 MiB of a million-row read otherwise), then,
    with ``heap``, glibc's free heap pages."""
    pa.default_memory_pool().release_unused()
    if heap:
        return_freed_memory()


def is_string(kind: Any) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def as_strings(column: Any) -> Any:
    """A Parquet column as psi.data's Python path reads it: str(value), '' for null."""
    if is_string(column.type):
        column = column.cast(pa.string())
        return pc.fill_null(column, _string_scalar("")) if column.null_count else column
    return from_pylist(["" if v is None else str(v) for v in column.to_pylist()])


def from_pylist(values: list[str]) -> Any:
    """A string array of ``values``, built from one buffer (see the module docstring)."""
    raw = [v.encode() for v in values]
    size = sum(map(len, raw))
    kind, dtype = (pa.string(), np.int32) if size < 1 << 31 else (pa.large_string(), np.int64)
    offsets = np.zeros(len(raw) + 1, dtype=dtype)
    np.cumsum(np.fromiter(map(len, raw), dtype=dtype, count=len(raw)), out=offsets[1:])
    return pa.Array.from_buffers(kind, len(raw), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(raw))])


def empty_mask(parts: Sequence[Any]) -> np.ndarray:
    """Rows with an empty part, as a bool array."""
    mask = np.zeros(len(parts[0]), dtype=bool)
    for p in parts:
        mask |= np.diff(_bytes_and_offsets(p)[1]) == 0
    return mask


def take(values: Any, rows: np.ndarray) -> Any:
    return values.take(_int64_array(rows))
