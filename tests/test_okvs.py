"""RR22's OKVS (veilpay.psi.okvs): encode/decode round trips at every size class,
F_2-linearity (what the VOLE-PSI caller relies on), failures as OkvsFailure, input
checks, and a known-answer file pinning how items become rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import load_json_vectors
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from veilpay.errors import InvalidInput, OkvsFailure
from veilpay.psi.okvs import DENSE, OKVS_VERSION, Okvs, OkvsRows, okvs_size

KEY = bytes(range(16))


def _items(rng: np.random.Generator, n: int) -> np.ndarray:
    # 128-bit random items are distinct except with probability n^2 / 2^129
    return rng.integers(0, 256, (n, 16), dtype=np.uint8)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 100, 10_000, 200_000])
def test_decode_of_encode_gives_the_values(n: int) -> None:
    rng = np.random.default_rng(n)
    store = Okvs(n, KEY)
    rows = store.rows(_items(rng, n))
    values = _items(rng, n)
    table = store.encode(rows, values)
    assert table.shape == (okvs_size(n), 16) and table.dtype == np.uint8
    assert np.array_equal(store.decode(table, rows), values)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=16, max_size=16), unique=True, max_size=80), st.binary(min_size=16, max_size=16),
       st.integers(0, 2**32 - 1), st.integers(0, 20))
def test_round_trip_on_any_small_set(items: list[bytes], key: bytes, seed: int, spare: int) -> None:
    # the store may be sized for more items than it holds
    n = len(items)
    store = Okvs(n + spare, key)
    x = np.frombuffer(b"".join(items), dtype=np.uint8).reshape(n, 16)
    values = np.random.default_rng(seed).integers(0, 256, (n, 16), dtype=np.uint8)
    rows = store.rows(x)
    assert np.array_equal(store.decode(store.encode(rows, values), rows), values)


def test_decode_is_linear_in_the_table() -> None:
    rng = np.random.default_rng(1)
    store = Okvs(1000, KEY)
    rows = store.rows(_items(rng, 1500))
    a, b = (_items(rng, store.size) for _ in range(2))
    assert np.array_equal(store.decode(a ^ b, rows), store.decode(a, rows) ^ store.decode(b, rows))
    assert not store.decode(np.zeros_like(a), rows).any()


def test_tables_side_by_side_decode_as_each_alone() -> None:
    rng = np.random.default_rng(2)
    store = Okvs(500, KEY)
    rows = store.rows(_items(rng, 500))
    values = _items(rng, 500).reshape(250, 32).repeat(2, axis=0)  # (500, 32): two tables' values
    wide = store.encode(rows, values)
    assert wide.shape == (store.size, 32)
    assert np.array_equal(store.decode(wide, rows), values)
    for half in (slice(0, 16), slice(16, 32)):
        assert np.array_equal(store.decode(np.ascontiguousarray(wide[:, half]), rows), values[:, half])


def test_other_items_decode_to_something_else() -> None:
    rng = np.random.default_rng(3)
    store = Okvs(2000, KEY)
    rows = store.rows(_items(rng, 2000))
    values = _items(rng, 2000)
    table = store.encode(rows, values)
    # the table masked by a random one, as the VOLE caller sends it
    masked = table ^ _items(rng, store.size)
    assert (store.decode(masked, rows) != values).any(axis=1).all()
    others = store.rows(_items(rng, 2000))
    assert (store.decode(masked, others) != values).any(axis=1).all()
    # Not asserted of the unmasked table: its free slots are zero, so an item that
    # shares a column with an encoded item whose other columns are free decodes to that
    # item's value (seed 3 has one). The caller's uniform mask is what removes this.


def test_duplicate_items_with_different_values_fail() -> None:
    rng = np.random.default_rng(4)
    x = _items(rng, 50)
    x[7] = x[3]
    store = Okvs(50, KEY)
    values = _items(rng, 50)
    with pytest.raises(OkvsFailure):
        store.encode(store.rows(x), values)
    # the same item twice with the same value is a consistent system
    values[7] = values[3]
    rows = store.rows(x)
    assert np.array_equal(store.decode(store.encode(rows, values), rows), values)


def test_many_identical_rows_fail_fast() -> None:
    store = Okvs(5000, KEY)
    rows = store.rows(np.zeros((5000, 16), dtype=np.uint8))
    values = np.random.default_rng(5).integers(0, 256, (5000, 16), dtype=np.uint8)
    with pytest.raises(OkvsFailure):
        store.encode(rows, values)
    # fewer identical rows than the core limit go through elimination, and still fail
    small = Okvs(100, KEY)
    with pytest.raises(OkvsFailure):
        small.encode(small.rows(np.zeros((100, 16), dtype=np.uint8)), values[:100])


def test_more_independent_rows_than_columns_fail() -> None:
    store = Okvs(1, KEY)
    rng = np.random.default_rng(6)
    k = store.size + 1
    with pytest.raises(OkvsFailure):
        store.encode(store.rows(_items(rng, k)), _items(rng, k))


def test_inputs_are_checked() -> None:
    rng = np.random.default_rng(7)
    store = Okvs(10, KEY)
    rows = store.rows(_items(rng, 10))
    for bad_table in (np.zeros((store.size - 1, 16), np.uint8), np.zeros((store.size, 15), np.uint8),
                      np.zeros((store.size, 16), np.uint16), np.zeros((store.size, 0), np.uint8),
                      np.zeros(store.size * 16, np.uint8)):
        with pytest.raises(InvalidInput):
            store.decode(bad_table, rows)
    with pytest.raises(InvalidInput):
        store.encode(rows, np.zeros((9, 16), np.uint8))
    with pytest.raises(InvalidInput):
        store.encode(Okvs(1000, KEY).rows(_items(rng, 10)), _items(rng, 10))
    with pytest.raises(InvalidInput):
        store.rows(np.zeros((3, 8), np.uint8))
    for n in (-1, 1.5, True, 2**30 + 1):
        with pytest.raises(InvalidInput):
            Okvs(n, KEY)  # type: ignore[arg-type]
    for key in (b"short", "0123456789abcdef"):
        with pytest.raises(InvalidInput):
            Okvs(3, key)  # type: ignore[arg-type]
    assert "Okvs(n=10" in repr(store) and KEY.hex() not in repr(store)


def test_size_grows_with_n() -> None:
    assert OKVS_VERSION == 1
    assert okvs_size(0) == Okvs(0, KEY).size > DENSE
    assert okvs_size(1_000_000) <= 1.31 * 1_000_000 + DENSE + 30


def _reference_rows(key: bytes, n: int, item: bytes) -> tuple[list[int], int]:
    """The derivation of docs/psi.md in plain integers, with pyca's AES directly."""

    def aes(k: bytes, block: bytes) -> bytes:
        enc = Cipher(algorithms.AES(k), modes.ECB()).encryptor()
        return enc.update(block) + enc.finalize()

    seg = math.ceil((2.4 if n <= 1024 else 1.3) * n / 3) + 8
    a, b = aes(key, item), aes(aes(key, b"\x01" * 16), item)
    words = [int.from_bytes(a[:8], "little"), int.from_bytes(a[8:], "little"), int.from_bytes(b[:8], "little")]
    return [s * seg + (words[s] * seg >> 64) for s in range(3)], int.from_bytes(b[8:], "little")


@pytest.mark.parametrize("vec", load_json_vectors("okvs/rows.json"), ids=lambda v: f"n={v['n']}")
def test_known_rows(vec: dict) -> None:
    store = Okvs(vec["n"], bytes.fromhex(vec["key"]))
    assert store.size == vec["size"]
    items = np.frombuffer(b"".join(bytes.fromhex(x) for x in vec["items"]), dtype=np.uint8).reshape(-1, 16)
    rows = store.rows(items)
    assert isinstance(rows, OkvsRows) and len(rows) == len(items)
    assert rows.pos.T.tolist() == vec["pos"]
    assert [f"{int(d):016x}" for d in rows.dense] == vec["dense"]
    for item, pos, dense in zip(vec["items"], vec["pos"], vec["dense"], strict=True):
        assert _reference_rows(bytes.fromhex(vec["key"]), vec["n"], bytes.fromhex(item)) == (pos, int(dense, 16))
