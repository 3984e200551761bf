"""Many byte strings in one buffer: `PackedIds` holds a million PSI ids as one uint8
array and int64 offsets, where a list would hold a million bytes objects (about 50
bytes of header each, and a pointer chase per id for anything that reads them all)."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import numpy as np

__all__ = ["PackedIds", "all_distinct"]


class PackedIds(Sequence[bytes]):
    """``ids[i]`` is ``data[offsets[i]:offsets[i + 1]]`` as bytes. ``distinct=True``
    records that the ids are known to differ (psi.data deduplicated them), so a
    protocol need not check again. The repr shows sizes only: ids are private."""

    __slots__ = ("data", "distinct", "offsets")

    def __init__(self, data: np.ndarray, offsets: np.ndarray, distinct: bool = False) -> None:
        if data.dtype != np.uint8 or data.ndim != 1:
            raise TypeError("data must be a 1-D uint8 array")
        if offsets.dtype != np.int64 or offsets.ndim != 1 or not len(offsets):
            raise TypeError("offsets must be a non-empty 1-D int64 array")
        if offsets[0] < 0 or offsets[-1] > len(data) or bool(np.any(np.diff(offsets) < 0)):
            raise ValueError("offsets must ascend within data")
        self.data, self.offsets, self.distinct = data, offsets, distinct

    @classmethod
    def from_list(cls, ids: Iterable[bytes], distinct: bool = False) -> PackedIds:
        items = list(ids)
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, items), dtype=np.int64, count=len(items)), out=offsets[1:])
        return cls(np.frombuffer(b"".join(items), dtype=np.uint8), offsets, distinct)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> PackedIds: ...

    def __getitem__(self, index: int | slice) -> bytes | PackedIds:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("PackedIds slices take step 1")
            stop = max(start, stop)
            return PackedIds(self.data, self.offsets[start : stop + 1], self.distinct)
        i = operator.index(index)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("PackedIds index out of range")
        return self.data[self.offsets[i] : self.offsets[i + 1]].tobytes()

    def __iter__(self) -> Iterator[bytes]:
        lo = int(self.offsets[0])
        buf = self.data[lo : int(self.offsets[-1])].tobytes()  # one copy, then bytes slicing
        bounds = (self.offsets - lo).tolist()
        return (buf[a:b] for a, b in zip(bounds, bounds[1:]))  # noqa: B905 - one shorter by design

    def tolist(self) -> list[bytes]:
        return list(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedIds):
            mine, theirs = self.offsets - self.offsets[0], other.offsets - other.offsets[0]
            return (np.array_equal(mine, theirs)
                    and np.array_equal(self.data[self.offsets[0] : self.offsets[-1]],
                                       other.data[other.offsets[0] : other.offsets[-1]]))
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable buffers, like a list

    def __repr__(self) -> str:
        return f"PackedIds({len(self)} ids, {int(self.offsets[-1] - self.offsets[0])} bytes)"

    def __reduce__(self) -> tuple[Any, ...]:
        lo, hi = int(self.offsets[0]), int(self.offsets[-1])  # only the bytes this view covers
        return PackedIds, (self.data[lo:hi].copy(), self.offsets - lo, self.distinct)


def all_distinct(ids: Sequence[bytes]) -> bool:
    """Whether no id repeats: free for PackedIds that psi.data deduplicated, a set
    otherwise (a direct caller's list)."""
    if isinstance(ids, PackedIds) and ids.distinct:
        return True
    return len(set(ids)) == len(ids)
