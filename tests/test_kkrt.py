"""KKRT PSI (OT extension): its pieces against known answers, the protocol against
plain set intersection, and peers that send the wrong thing or vanish."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import load_json_vectors, load_vectors
from hypothesis import given, settings
from hypothesis import strategies as st
from psi_pairs import check, sender_told_only_its_common_items, sets, two_party

from veilpay.crypto.ot import AesEcb, BaseOtReceiver, BaseOtSender, ColumnPrgs, correlation_robust_hash, id_prf
from veilpay.errors import InvalidInput, PeerDisconnected, ProtocolMismatch, ProtocolTimeout, WireFormatError
from veilpay.net import Communicator
from veilpay.psi import choose_protocol, ecdh_psi, kkrt_psi, run_psi_files
from veilpay.psi import kkrt as kkrt_mod
from veilpay.psi.bitmatrix import transpose
from veilpay.psi.cuckoo import CuckooFailure, bin_count, hash_bins, place
from veilpay.psi.terms import Terms, agree


def run(x: list[bytes], y: list[bytes], **kw: Any) -> tuple[Any, Any]:
    return two_party(lambda c: kkrt_psi(c, "s", "receiver", x, **kw), lambda c: kkrt_psi(c, "r", "sender", y, **kw))


# -- the protocol against plain set intersection --------------------------------------

@pytest.mark.parametrize(("nx", "ny", "common", "chunk"), [
    (300, 300, 0, 128), (300, 300, 150, 128), (250, 250, 250, 1 << 15),  # overlap 0 / 50 / 100 %
    (5, 3000, 5, 1 << 15), (3000, 7, 2, 256),  # unbalanced, several chunks
    (0, 50, 0, 1 << 15), (50, 0, 0, 1 << 15), (1, 1, 1, 128), (1, 90, 0, 128)])
def test_matches_plain_intersection(nx: int, ny: int, common: int, chunk: int) -> None:
    x, y = sets(nx, ny, common, nx * 7 + ny)
    r, s = run(x, y, reveal="both", chunk=chunk)
    check(x, y, r, s)


def test_larger_sets_over_many_chunks() -> None:
    x, y = sets(20000, 15000, 6000, 3)
    r, s = run(x, y, reveal="both", chunk=2048)
    check(x, y, r, s)


def test_sender_learns_nothing_by_default_and_unicode_ids() -> None:
    x = ["Zoë".encode(), "北京-42".encode(), b"a", "🙂".encode()]
    y = ["北京-42".encode(), "🙂".encode(), b"b"]
    r, s = run(x, y)
    assert r.indices.tolist() == [1, 3] and s.indices is None and s.size == -1


def test_duplicates_and_bad_arguments_are_refused() -> None:
    from veilpay.net import local_mesh

    c = local_mesh(["r", "s"])["r"]
    with pytest.raises(InvalidInput, match="distinct"):
        kkrt_psi(c, "s", "receiver", [b"a", b"a"])
    with pytest.raises(InvalidInput, match="chunk"):
        kkrt_psi(c, "s", "receiver", [b"a"], chunk=100)
    with pytest.raises(InvalidInput, match="role"):
        kkrt_psi(c, "s", "server", [b"a"])
    with pytest.raises(InvalidInput, match="cardinality"):
        choose_protocol("kkrt", "cardinality")
    assert choose_protocol(None, "intersection") == "rr22" and choose_protocol(None, "cardinality") == "ecdh"


def test_stash_holds_what_the_bins_cannot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Half as many bins as ids: at least half the receiver's ids go to the stash, and
    the answer is still exact."""
    monkeypatch.setattr(kkrt_mod, "bin_count", lambda n, stat_sec: max(1, n // 2))
    stashed: list[int] = []
    real_place = kkrt_mod.place

    def spy(*a: Any) -> Any:
        table = real_place(*a)
        stashed.append(int((table.stash >= 0).sum()))
        return table

    monkeypatch.setattr(kkrt_mod, "place", spy)
    x, y = sets(8, 12, 5, 11)
    r, s = run(x, y, reveal="both", stash=8)
    check(x, y, r, s)
    assert stashed and stashed[0] >= 4


def test_a_cuckoo_failure_draws_new_hash_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_place = kkrt_mod.place

    def fail_first(bins: np.ndarray, m: int, stash: int, seed: bytes) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise CuckooFailure("forced")
        return real_place(bins, m, stash, seed)

    monkeypatch.setattr(kkrt_mod, "place", fail_first)
    x, y = sets(100, 100, 40, 5)
    r, s = run(x, y, reveal="both")
    check(x, y, r, s)
    assert len(calls) == 2


def test_cuckoo_that_keeps_failing_is_a_named_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kkrt_mod, "bin_count", lambda n, stat_sec: 1)
    r, s = run([b"a", b"b", b"c"], [b"a"])
    assert isinstance(r, CuckooFailure) and "stash" in str(r)
    assert isinstance(s, PeerDisconnected | ProtocolTimeout)


def test_files_with_kkrt_keep_receiver_order(tmp_path: Path) -> None:
    fr = tmp_path / "r.csv"
    fr.write_text("id,v\n" + "".join(f"k{i},{i}\n" for i in range(30, 0, -1)))
    fs = tmp_path / "s.csv"
    fs.write_text("id\n" + "".join(f"k{i}\n" for i in range(0, 40, 3)))
    out = tmp_path / "o.csv"
    r, s = two_party(lambda c: run_psi_files(c, "s", "receiver", fr, ["id"], out, protocol="kkrt"),
                     lambda c: run_psi_files(c, "r", "sender", fs, ["id"], protocol="kkrt"))
    assert r["protocol"] == "kkrt" and s["protocol"] == "kkrt"
    want = [f"k{i},{i}" for i in range(30, 0, -1) if i % 3 == 0]
    assert out.read_text().splitlines() == ["id,v", *want] and r["intersection_size"] == len(want)


# -- pieces: known answers -------------------------------------------------------------

@pytest.mark.parametrize("vec", load_json_vectors("kkrt/transpose.json"), ids=lambda v: v["name"])
def test_transpose_known_answers(vec: dict[str, Any]) -> None:
    m = np.frombuffer(bytes.fromhex(vec["in"]), np.uint8).reshape(vec["rows"], -1)
    assert transpose(m).tobytes().hex() == vec["out"]


@settings(max_examples=40, deadline=None)
@given(rows8=st.integers(1, 40), cbytes=st.integers(1, 20), seed=st.integers(0, 2**32 - 1))
def test_transpose_matches_unpacked_bits_and_is_an_involution(rows8: int, cbytes: int, seed: int) -> None:
    m = np.random.default_rng(seed).integers(0, 256, size=(8 * rows8, cbytes), dtype=np.uint8)
    t = transpose(m)
    ref = np.packbits(np.unpackbits(m, axis=1, bitorder="little").T, axis=1, bitorder="little")
    assert np.array_equal(t, ref)
    assert np.array_equal(transpose(t), m)


def test_transpose_of_more_rows_than_one_step() -> None:
    m = np.random.default_rng(1).integers(0, 256, size=(8192 * 2 + 64, 3), dtype=np.uint8)
    ref = np.packbits(np.unpackbits(m, axis=1, bitorder="little").T, axis=1, bitorder="little")
    assert np.array_equal(transpose(m), ref)
    with pytest.raises(InvalidInput):
        transpose(np.zeros((7, 2), np.uint8))


def test_aes_and_correlation_robust_hash_known_answers() -> None:
    for vec in load_json_vectors("kkrt/aes_hash.json"):
        if vec["kind"] == "aes":
            got = AesEcb(bytes.fromhex(vec["key"]))(np.frombuffer(bytes.fromhex(vec["plaintext"]), np.uint8)[None])
            assert got.tobytes().hex() == vec["ciphertext"]
            continue
        pi = AesEcb(bytes.fromhex(vec["key"]))
        row = np.frombuffer(bytes.fromhex(vec["row"]), np.uint8)
        got = correlation_robust_hash(pi, row[None], np.array([vec["index"]], np.uint64), 16)
        assert got.tobytes().hex() == vec["hash"]
        # the formula, block by block
        z = np.zeros(16, np.uint8)
        for i in range(4):
            block = row[16 * i : 16 * i + 16].copy()
            block[8] ^= i + 1
            z ^= pi(block[None])[0] ^ block
        z[:8] ^= np.frombuffer(int(vec["index"]).to_bytes(8, "little"), np.uint8)
        assert (pi(z[None])[0] ^ z).tobytes().hex() == vec["hash"]


def test_hash_depends_on_every_block_and_the_index() -> None:
    pi = AesEcb(bytes(16))
    rows = np.zeros((6, 64), np.uint8)
    for i in range(4):
        rows[i + 1, 16 * i] = 1
    idx = np.zeros(6, np.uint64)
    idx[5] = 1
    out = correlation_robust_hash(pi, rows, idx, 10)
    assert out.shape == (6, 10) and len({r.tobytes() for r in out}) == 6


def _stream(seed: bytes) -> Callable[[int], bytes]:
    state = {"i": 0}

    def rand(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(seed + state["i"].to_bytes(8, "little")).digest()
            state["i"] += 1
        return out[:n]

    return rand


def test_base_ot_known_answers_both_choices() -> None:
    x = load_vectors("x25519/rfc7748-6.1.txt")[0]
    assert BaseOtSender(bytes.fromhex(x["ALICE_PRIVATE"])).public.hex() == x["ALICE_PUBLIC"]
    for vec in load_json_vectors("kkrt/base_ot.json"):
        recv = BaseOtReceiver(np.array(vec["choices"]), rand=_stream(bytes.fromhex(vec["receiver_seed"])))
        assert [[recv.public_keys[i, b].tobytes().hex() for b in (0, 1)] for i in range(len(vec["choices"]))] \
            == vec["public_keys"]
        snd = BaseOtSender(bytes.fromhex(vec["sender_secret"]))
        assert snd.public.hex() == vec["sender_public"]
        k0, k1 = snd.keys(recv.public_keys)
        assert [k.tobytes().hex() for k in k0] == vec["key0"] and [k.tobytes().hex() for k in k1] == vec["key1"]
        got = recv.keys(snd.public)
        assert [k.tobytes().hex() for k in got] == vec["receiver_keys"]
        for i, c in enumerate(vec["choices"]):  # both choices occur; the other key differs
            assert vec["receiver_keys"][i] == (vec["key1"] if c else vec["key0"])[i]
            assert vec["receiver_keys"][i] != (vec["key0"] if c else vec["key1"])[i]


def test_base_ot_with_fresh_randomness_and_bad_keys() -> None:
    choices = np.frombuffer(np.random.default_rng(0).integers(0, 2, 64, dtype=np.uint8).tobytes(), np.uint8)
    recv, snd = BaseOtReceiver(choices), BaseOtSender()
    k0, k1 = snd.keys(recv.public_keys)
    got = recv.keys(snd.public)
    assert np.array_equal(got, np.where(choices[:, None] == 1, k1, k0))
    assert not np.array_equal(got, np.where(choices[:, None] == 1, k0, k1))
    bad = recv.public_keys.copy()
    bad[3, 1] = 0  # u = 0: small order
    with pytest.raises(InvalidInput, match="small-order"):
        snd.keys(bad)
    with pytest.raises(InvalidInput, match="small-order"):
        recv.keys(bytes(32))
    with pytest.raises(InvalidInput):
        BaseOtReceiver(np.array([0, 2]))


def test_column_prgs_continue_their_streams() -> None:
    seeds = np.arange(32, dtype=np.uint8).reshape(2, 16)
    g = ColumnPrgs(seeds)
    first = g.next(40).copy()
    second = g.next(24).copy()
    whole = ColumnPrgs(seeds).next(64)
    assert np.array_equal(np.concatenate([first, second], axis=1), whole)
    assert not np.array_equal(whole[0], whole[1])


@pytest.mark.parametrize("vec", load_json_vectors("kkrt/cuckoo.json"), ids=lambda v: f"m={v['m']}")
def test_cuckoo_placement_known_answers(vec: dict[str, Any]) -> None:
    table = place(np.array(vec["bins"], np.int64), vec["m"], vec["stash"], bytes(32))
    assert table.item.tolist() == vec["item"] and table.fn.tolist() == vec["fn"]
    assert table.stash.tolist() == vec["stash_items"]


def test_cuckoo_places_a_full_size_table_and_refuses_overflow() -> None:
    n = 50000
    items = np.random.default_rng(2).integers(0, 256, size=(n, 16), dtype=np.uint8)
    m = bin_count(n)
    bins = hash_bins(AesEcb(bytes(16)), items, m)
    table = place(bins, m, 0, bytes(32))
    placed = np.flatnonzero(table.item >= 0)
    assert len(placed) == n and np.array_equal(bins[table.item[placed], table.fn[placed]], placed)
    with pytest.raises(CuckooFailure):
        place(np.zeros((5, 3), np.int64), 2, 2, bytes(32))
    assert bin_count(0) == 0 and bin_count(2**20) == int(np.ceil((40 + 20 + 256) / 240 * 2**20))


# -- peers that misbehave ---------------------------------------------------------------

def _hello_then(after: Callable[[Communicator, int], None], **over: Any) -> Callable[[Communicator], None]:
    """A sender that answers the hello honestly (with fields from ``over`` changed) and
    then runs ``after(comm, receiver_n)``."""
    def fn(c: Communicator) -> None:
        fields = {"version": kkrt_mod.KKRT_VERSION, "role": 2, "reveal": 1, "n": 3, "stat_sec": 40, "stash": 0,
                  "chunk": 0} | over
        recv = BaseOtReceiver(np.zeros(kkrt_mod.WIDTH, np.uint8))
        head = np.array(list(fields.values()), np.uint64).view(np.uint8)
        hello = np.concatenate([head, np.zeros(16, np.uint8), recv.public_keys.reshape(-1)])
        got = c.exchange("kkrt.hello", {"r": [hello]}, {"r": 1})["r"][0]
        after(c, int(got[:56].view(np.uint64)[3]))

    return fn


@pytest.mark.parametrize(("over", "match"), [
    ({"version": 9}, "version 9"), ({"stat_sec": 30}, "parameter sets differ"), ({"stash": 2}, "parameter"),
    ({"role": 1}, "both parties"), ({"reveal": 2}, "reveal"),
    ({"n": 2**64 - 1}, "past the limit")])  # a set size that would size the other side's tables
def test_other_parameter_sets_are_refused(over: dict[str, int], match: str) -> None:
    r, _ = two_party(lambda c: kkrt_psi(c, "s", "receiver", [b"a"]), _hello_then(lambda c, n: None, **over))
    assert isinstance(r, ProtocolMismatch) and match in str(r)


def test_sender_refuses_a_correction_matrix_of_the_wrong_size() -> None:
    def receiver(c: Communicator) -> None:
        snd = BaseOtSender()
        head = np.array([kkrt_mod.KKRT_VERSION, 1, 1, 5, 40, 0, 1 << 15], np.uint64).view(np.uint8)
        c.exchange("kkrt.hello", {"s": [np.concatenate([head, np.zeros(16, np.uint8),
                                                        np.frombuffer(snd.public, np.uint8)])]}, {"s": 1})
        c.exchange("kkrt.attempt", {"s": [np.array([0], np.uint64)]})
        c.exchange("kkrt.U", {"s": [np.zeros((kkrt_mod.WIDTH, 3), np.uint8)]})
        c.exchange("kkrt.V", recv={"s": 1})

    _, s = two_party(receiver, lambda c: kkrt_psi(c, "r", "sender", [b"a", b"b"]))
    assert isinstance(s, ProtocolMismatch) and "correction matrix 0" in str(s)


def test_receiver_refuses_bad_value_sets() -> None:
    def values(shape_fix: Callable[[int], np.ndarray]) -> Callable[[Communicator], None]:
        def after(c: Communicator, n: int) -> None:
            c.exchange("kkrt.attempt", recv={"r": 1})
            rows = -(-(bin_count(n, 40)) // 8) * 8
            for _ in range(0, rows, 1 << 15):
                c.exchange("kkrt.U", recv={"r": 1})
            c.exchange("kkrt.V", {"r": [shape_fix(n)]})
        return _hello_then(after)

    wrong = values(lambda n: np.zeros((3, 5), np.uint8))
    r, _ = two_party(lambda c: kkrt_psi(c, "s", "receiver", [b"a", b"b"]), wrong)
    assert isinstance(r, ProtocolMismatch) and "value set 0" in str(r)
    size = kkrt_mod.oprf_bytes(2, 3, 40)
    unsorted = values(lambda n: np.array([[9] * size, [1] * size, [5] * size], np.uint8))
    r, _ = two_party(lambda c: kkrt_psi(c, "s", "receiver", [b"a", b"b"]), unsorted)
    assert isinstance(r, ProtocolMismatch) and "not sorted" in str(r)


def test_peer_that_aborts_during_base_ot_or_extension() -> None:
    def quits(c: Communicator) -> None:
        c.close()

    r, _ = two_party(lambda c: kkrt_psi(c, "s", "receiver", [b"a"]), quits, timeout=5)
    assert isinstance(r, PeerDisconnected | ProtocolTimeout)

    def dies_mid_extension(c: Communicator) -> None:
        snd = BaseOtSender()
        head = np.array([kkrt_mod.KKRT_VERSION, 1, 1, 3000, 40, 0, 128], np.uint64).view(np.uint8)
        c.exchange("kkrt.hello", {"s": [np.concatenate([head, np.zeros(16, np.uint8),
                                                        np.frombuffer(snd.public, np.uint8)])]}, {"s": 1})
        c.exchange("kkrt.attempt", {"s": [np.array([0], np.uint64)]})
        c.exchange("kkrt.U", {"s": [np.zeros((kkrt_mod.WIDTH, 16), np.uint8)]})
        c.flush()
        c.close()

    _, s = two_party(dies_mid_extension, lambda c: kkrt_psi(c, "r", "sender", [b"a", b"b"]), timeout=5)
    assert isinstance(s, PeerDisconnected | ProtocolTimeout)


def test_ecdh_peer_is_refused_by_name() -> None:
    r, s = two_party(lambda c: kkrt_psi(c, "s", "receiver", [b"a"]),
                     lambda c: ecdh_psi(c, "r", "sender", [b"a"]), timeout=5)
    assert isinstance(r, WireFormatError) and isinstance(s, WireFormatError)


def test_failed_kkrt_run_leaves_no_output(tmp_path: Path) -> None:
    fr = tmp_path / "r.csv"
    fr.write_text("cid\na\nb\n")
    out = tmp_path / "common.csv"
    fake = _hello_then(lambda c, n: None, stat_sec=41)
    terms = Terms("sender", "kkrt", "intersection", "receiver", 1, "trim")
    r, _ = two_party(lambda c: run_psi_files(c, "s", "receiver", fr, ["cid"], out, protocol="kkrt"),
                     lambda c: (agree(c, "r", terms), fake(c)))
    assert isinstance(r, ProtocolMismatch) and "parameter sets differ" in str(r)
    assert list(tmp_path.iterdir()) == [fr]


def test_id_prf_known_answers_and_mixed_lengths() -> None:
    vecs = load_json_vectors("kkrt/id_prf.json")
    key = bytes.fromhex(vecs[0]["key"])
    ids = [bytes.fromhex(v["id"]) for v in vecs]
    got = id_prf(key, ids)  # mixed lengths
    assert [g.tobytes().hex() for g in got] == [v["mac"] for v in vecs]
    same = [b"cust-%012d" % i for i in range(50)]  # one length: the fast path
    assert np.array_equal(id_prf(key, same), np.concatenate([id_prf(key, [i]) for i in same]))
    assert len({r.tobytes() for r in id_prf(key, same)}) == 50 and id_prf(key, []).shape == (0, 16)


def test_reveal_both_tells_the_sender_only_the_intersection(monkeypatch: Any) -> None:
    """With reveal='both', everything the sender receives after the OPRF values is a
    function of the intersection and the session's public keys alone: exactly the
    sorted items (the session's PRF) of its own common ids, for two receivers with the
    same intersection and different other ids (whose cuckoo tables place the common
    ids under other hash functions). Before, the sender was told the position and so
    the hash function or stash slot of each match."""
    sender_told_only_its_common_items(monkeypatch, kkrt_mod, kkrt_psi, "kkrt.matches", stash=4)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.integers(0, 300), st.integers(0, 4), st.integers(0, 2**32))
def test_membership_and_value_order_with_shared_first_words(n: int, k: int, shared: int, seed: int) -> None:
    """The sender's exact membership and the receiver's value order, also when common
    items share a first word (forced here; by chance about 2^-64 per pair)."""
    from veilpay.psi.kkrt import _item_words, _members, _value_order

    rng = np.random.default_rng(seed)  # test data
    items = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    for j in range(min(shared, n - 1)):
        items[j + 1, :8] = items[0, :8]  # same first word, different second word (almost surely)
    items = np.unique(items, axis=0)
    rng.shuffle(items)
    pick = np.sort(rng.choice(len(items), min(k, len(items)), replace=False))
    others = rng.integers(0, 256, size=(3, 16), dtype=np.uint8)  # items the sender does not have
    common = np.concatenate([items[pick], others])
    high, low = _item_words(common)
    ordered = common[_value_order(high, low)]
    h, lo = _item_words(ordered)
    assert all((h[i], lo[i]) <= (h[i + 1], lo[i + 1]) for i in range(len(h) - 1))
    assert _members(items, ordered).tolist() == pick.tolist()
