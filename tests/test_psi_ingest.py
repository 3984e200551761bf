"""The fast ingestion path (pyarrow, psi/_ingest.py) gives exactly what the per-string
functions and the csv module give: normalisation, id encoding and deduplication on
arbitrary Unicode, every CSV shape that makes pyarrow hand over to the csv module,
and PackedIds standing in for a list of bytes everywhere a caller uses one."""

from __future__ import annotations

import csv
import pickle
import string
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veilpay.crypto.ot import id_prf
from veilpay.errors import DataError, InvalidInput
from veilpay.packed import PackedIds, all_distinct
from veilpay.psi import _ingest
from veilpay.psi.data import _norm, iter_id_batches, join_key, read_ids

# whitespace and separators where str.strip() and Unicode tables disagree, composed and decomposed forms
EDGES = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\xa0", "\u1680", "\u2000",
         "\u2028", "\u200b", "\u3000", "\ufeff", "e\u0301", "\u00e9", "\u212b", "\u00df", "\u0130", "\u03a3", "\ufb03",
         "A", "z", ""]
TEXT = st.lists(st.one_of(st.sampled_from(EDGES), st.text(max_size=4)), max_size=6).map("".join)


def _old_ids(columns: list[list[str]], how: str) -> list[bytes]:
    return [join_key([_norm(v, how) for v in row]) for row in zip(*columns, strict=True)]


@settings(max_examples=300, deadline=None)
@given(columns=st.integers(1, 3).flatmap(lambda k: st.lists(st.lists(TEXT, min_size=k, max_size=k), max_size=20)),
       how=st.sampled_from(["none", "trim", "casefold"]))
def test_vectorised_normalise_and_encode_equal_the_per_string_functions(columns: list[list[str]], how: str) -> None:
    cols = [list(c) for c in zip(*columns, strict=True)] if columns else [[]]
    parts = [_ingest.normalise_array(pa.array(c, pa.string()), how, _norm) for c in cols]
    assert [p.to_pylist() for p in parts] == [[_norm(v, how) for v in c] for c in cols]
    got = _ingest.encode_ids(parts)
    want = _old_ids(cols, how)
    assert [v.encode() for v in got.to_pylist()] == want
    assert _ingest.to_packed(got) == want


def test_the_ascii_trim_set_is_str_strips() -> None:
    """Every ASCII code point: in ASCII_SPACE exactly when str.strip() removes it, and
    NFC and casefold act on ASCII as nothing and lowercase do."""
    for c in map(chr, range(128)):
        assert (c in _ingest.ASCII_SPACE) == (f"a{c}b{c}".strip() == f"a{c}b")
        assert unicodedata.normalize("NFC", c) == c and c.casefold() == c.lower()
    assert "\x1c\x1d\x1e\x1f" in _ingest.ASCII_SPACE


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "ab", "", "é", "bb", "a\x1f"]), max_size=40))
def test_dedup_keeps_first_occurrences_like_dict_fromkeys(values: list[str]) -> None:
    arr = pa.array(values, pa.string())
    first = _ingest.first_occurrences(arr)
    want = list(dict.fromkeys(values))
    assert [values[i] for i in first] == want
    assert np.array_equal(first, _ingest._first_occurrences_hashed(arr))


def test_dedup_survives_a_hash_collision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ingest, "_hash64", lambda data, offsets: np.zeros(len(offsets) - 1, dtype=np.uint64))
    values = ["x", "y", "x", "z", "y"]
    assert _ingest.first_occurrences(pa.array(values)).tolist() == [0, 1, 3]


def _read_like_before(path: Path, keys: list[str], how: str = "trim") -> tuple[list[bytes], list[int], int, int]:
    """What read_ids gave before pyarrow: the csv module, _norm, join_key, dict.fromkeys."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, strict=True))
    header, data = rows[0], rows[1:]
    ids, where, nulls = [], [], 0
    for r, row in enumerate(data):
        parts = [_norm(row[header.index(k)], how) for k in keys]
        if "" in parts:
            nulls += 1
            continue
        ids.append(join_key(parts))
        where.append(r)
    first: dict[bytes, int] = {}
    for i, r in zip(ids, where, strict=True):
        first.setdefault(i, r)
    return list(first), list(first.values()), len(data), nulls


SHAPES = {
    "plain": "id,v\n" + "".join(f" c{i % 50} ,{i}\n" for i in range(200)),
    "quoted later": "id,v\n" + "".join(f"c{i},{i}\n" for i in range(100)) + '"c,1",x\n"multi\nline",y\nc2,z\n',
    "crlf": "id,v\r\nA,1\r\nb,2\r\na,3\r\n",
    "lone cr": "id,v\nA,1\nb,2\rc,3\n",
    "no final newline": "id,v\na,1\nb,2",
    "non-ascii": "id,v\n\u00c9cole,1\ne\u0301cole,2\n\u00a0x\u3000,3\nSTRASSE,4\nstra\u00dfe,5\n",
    "bom": "\ufeffid,v\na,1\n",
    "long line": "id,v\na," + "x" * 140000 + "\nb,1\n",
    "null keys": "id,v\na,1\n ,2\n,3\nb,4\n",
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("how", ["none", "trim", "casefold"])
def test_read_ids_equals_the_csv_module_path(tmp_path: Path, shape: str, how: str) -> None:
    f = tmp_path / "in.csv"
    f.write_bytes(SHAPES[shape].encode())
    if shape == "bom":  # the csv module keeps the BOM in the first column's name, as before
        with pytest.raises(DataError, match="no column 'id'"):
            read_ids(f, ["id"], normalise=how)
        return
    if shape == "long line":
        with pytest.raises(DataError, match="in.csv: malformed CSV: field larger than field limit"):
            read_ids(f, ["id"], normalise=how)
        return
    t = read_ids(f, ["id"], normalise=how)
    ids, rows, n, nulls = _read_like_before(f, ["id"], how)
    assert isinstance(t.ids, PackedIds) and t.ids.distinct and t.first_row.dtype == np.int64
    assert t.ids == ids and t.first_row.tolist() == rows and (t.rows, t.nulls) == (n, nulls)
    assert t.duplicates == n - nulls - len(ids)


def test_a_file_larger_than_one_block_with_a_late_quote(tmp_path: Path) -> None:
    """The hand-over to the csv module happens mid-file, at a line end inside the
    second megabyte; rows on both sides of it are numbered as one file."""
    f = tmp_path / "big.csv"
    lines = [f"k{i % 70000},{i}\n" for i in range(120000)]
    lines[90000] = '"k1,5",q\n'
    f.write_text("id,v\n" + "".join(lines) + "\n", encoding="utf-8")  # and an empty line at the end
    with pytest.raises(DataError, match=r"big.csv: line 120002 has 0 fields"):
        read_ids(f, ["id"])
    f.write_text("id,v\n" + "".join(lines), encoding="utf-8")
    t = read_ids(f, ["id"], normalise="casefold")
    ids, rows, n, _ = _read_like_before(f, ["id"], "casefold")
    assert t.ids == ids and t.first_row.tolist() == rows and t.rows == n and t.duplicates == n - len(ids)
    batches = list(iter_id_batches(f, ["id"]))
    assert sum(len(b) for b, _ in batches) == n and np.concatenate([r for _, r in batches]).tolist() == list(range(n))


@pytest.mark.parametrize(("text", "match"), [
    ("id,x\n1,2\n3\n", "line 3 has 1 fields"),
    ("id,x\n1,2\n\n", "line 3 has 0 fields"),
    ('id,x\n1,"2"x\n', "malformed CSV: ',' expected after '\"'"),
    ("id,x\n1,2\n3,\xff\n", "not UTF-8 text"),
])
def test_errors_read_as_before(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "bad.csv"
    f.write_bytes(text.encode("utf-8", "surrogateescape") if "\xff" not in text else text.encode("latin-1"))
    with pytest.raises(DataError, match=match) as info:
        read_ids(f, ["id"])
    assert "bad.csv" in str(info.value)


def test_composite_keys_and_parquet_match_csv(tmp_path: Path) -> None:
    cid = [" A1 ", "a1", "B2", None, "\u00c9", "b2"]
    cc = ["SG", "sg", "MY", "SG", "FR", "MY"]
    amount = [1, 2, 3, 4, 5, 6]
    pq.write_table(pa.table({"cid": cid, "cc": cc, "n": amount}), tmp_path / "t.parquet")
    csv_text = "cid,cc,n\n" + "".join(f"{a or ''},{b},{n}\n" for a, b, n in zip(cid, cc, amount, strict=True))
    (tmp_path / "t.csv").write_text(csv_text, encoding="utf-8")
    for keys in (["cid", "cc"], ["cc", "n"]):  # n: an int column, read as str(value)
        a = read_ids(tmp_path / "t.parquet", keys, normalise="casefold")
        b = read_ids(tmp_path / "t.csv", keys, normalise="casefold")
        assert a.ids == b.ids and a.first_row.tolist() == b.first_row.tolist() and a.nulls == b.nulls
    assert read_ids(tmp_path / "t.csv", ["cid", "cc"], normalise="casefold").ids.tolist() == [
        join_key(["a1", "sg"]), join_key(["b2", "my"]), join_key(["\u00e9", "fr"])]


def test_packed_ids_act_as_a_list_of_bytes() -> None:
    items = [b"a", b"", b"bcd", b"\x00\xff"]
    p = PackedIds.from_list(items)
    assert len(p) == 4 and list(p) == items and p == items and p[2] == b"bcd" and p[-1] == b"\x00\xff"
    assert p[np.int64(1)] == b"" and p[1:3] == [b"", b"bcd"] and p[1:3].tolist() == [b"", b"bcd"]
    assert pickle.loads(pickle.dumps(p[1:3])) == [b"", b"bcd"]
    assert "bcd" not in repr(p) and repr(p) == "PackedIds(4 ids, 6 bytes)"
    with pytest.raises(IndexError):
        p[4]
    assert not all_distinct(PackedIds.from_list([b"x", b"x"])) and all_distinct(PackedIds.from_list([b"x", b"y"]))
    key = bytes(range(16))
    mixed = [b"", b"x" * 7, b"y" * 8, b"z" * 9, b"w" * 24, b"q" * 7]
    assert np.array_equal(id_prf(key, PackedIds.from_list(mixed)), id_prf(key, mixed))
    assert np.array_equal(id_prf(key, PackedIds.from_list(mixed)[2:5]), id_prf(key, mixed[2:5]))


def test_protocols_still_refuse_repeated_ids_from_a_direct_caller() -> None:
    from veilpay.net import local_mesh
    from veilpay.psi import ecdh_psi
    from veilpay.psi.kkrt import kkrt_psi

    mesh = local_mesh(["r", "s"], timeout=5)
    for run in (kkrt_psi, ecdh_psi):
        for ids in ([b"a", b"a"], PackedIds.from_list([b"a", b"a"])):
            with pytest.raises(InvalidInput, match="ids must be distinct"):
                run(mesh["r"], "s", "receiver", ids)
    assert mesh["r"].total().bytes_sent == 0


def test_ascii_letters_case_only_through_arrow() -> None:
    arr = pa.array([string.ascii_letters, " \x1fMiXeD\x1c "])
    assert _ingest.normalise_array(arr, "casefold", _norm).to_pylist() == [string.ascii_lowercase * 2, "mixed"]


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(st.text(alphabet=st.characters(blacklist_characters='"\r\n', blacklist_categories=("Cs",)),
                              min_size=1, max_size=12), min_size=1, max_size=30),
       crlf=st.booleans(), last_end=st.booleans(), block=st.sampled_from([1, 2, 3, 7, 64, 1 << 24]), data=st.data())
def test_copy_rows_in_memory_equals_the_line_by_line_copy(tmp_path_factory: pytest.TempPathFactory, lines: list[str],
                                                          crlf: bool, last_end: bool, block: int,
                                                          data: st.DataObject) -> None:
    from veilpay.psi.data import _picked_lines, _unquoted_lines

    path = tmp_path_factory.mktemp("copy") / "in.csv"
    end = "\r\n" if crlf else "\n"
    path.write_bytes((end.join(["h", *lines]) + (end if last_end else "")).encode())
    wanted = np.array(sorted(data.draw(st.sets(st.integers(0, len(lines) - 1)))), dtype=np.int64)
    fast = _picked_lines(path, wanted, block)  # blocks of a few bytes: lines cut anywhere
    slow = _unquoted_lines(path, wanted)
    assert fast is not None and slow is not None
    first, got = slow
    assert fast == "".join(x.rstrip("\r\n") + "\r\n" for x in [first, *got]).encode()


def test_copy_rows_leaves_odd_files_to_the_line_by_line_copy(tmp_path: Path) -> None:
    from veilpay.psi.data import _picked_lines

    for body in (b'h\n"a"\n', b"h\na\rb\n", b"h\n\na\n", b"h\n\xff\n", b"h\r\n\r\na\r\n", b"\nh\na\n", b"h\na\r"):
        (tmp_path / "x.csv").write_bytes(body)
        for block in (2, 1 << 24):
            assert _picked_lines(tmp_path / "x.csv", np.array([0], dtype=np.int64), block) is None
    (tmp_path / "x.csv").write_bytes(b"h\na\n")
    with pytest.raises(DataError, match="changed during the run"):
        _picked_lines(tmp_path / "x.csv", np.array([0, 5], dtype=np.int64))

def test_read_ids_survives_a_hash_collision_across_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every id hashed alike in every batch: the byte-for-byte comparison (on the packed
    ids) decides, and gives the rows the csv module path gives, empty keys dropped."""
    monkeypatch.setattr(_ingest, "_hash64", lambda data, offsets: np.zeros(len(offsets) - 1, dtype=np.uint64))
    f = tmp_path / "ids.csv"
    f.write_text("id\n" + "".join(f"k{i % 7000}\n" if i % 11 else " \n" for i in range(150000)), encoding="utf-8")
    t = read_ids(f, ["id"])
    ids, rows, n, nulls = _read_like_before(f, ["id"])
    assert t.ids == ids and t.first_row.tolist() == rows and t.nulls == nulls
    assert t.duplicates == n - nulls - len(ids)


def test_read_ids_leaves_pandas_unimported(tmp_path: Path) -> None:
    """A Python value handed to pyarrow makes it import pandas (40 MiB a PSI party
    would keep): read_ids builds its arrays from buffers, on every path."""
    import subprocess
    import sys

    csv_file, pq_file = tmp_path / "ids.csv", tmp_path / "ids.parquet"
    csv_file.write_text("id,n\n" + "".join(f"k{i % 50},{i}\n" for i in range(100)) + "\u00e9 ,1\n,2\n",
                        encoding="utf-8")
    pq.write_table(pa.table({"id": ["a", None, "b", "a"]}), pq_file)
    code = ("import sys; from veilpay.psi.data import read_ids; "
            f"read_ids({str(csv_file)!r}, ['id'], 'casefold'); read_ids({str(pq_file)!r}, ['id']); "
            "sys.exit('pandas' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
