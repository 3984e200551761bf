"""RR22 PSI (silent VOLE + OKVS): the field, the VOLE correlation and its puncturing,
the protocol against plain set intersection, and peers that send the wrong thing."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import VECTORS
from hypothesis import given, settings
from hypothesis import strategies as st
from psi_pairs import check, sender_told_only_its_common_items, sets, two_party

from veilpay.errors import InvalidInput, PeerDisconnected, ProtocolMismatch, ProtocolTimeout
from veilpay.net import Communicator
from veilpay.packed import PackedIds
from veilpay.psi import rr22 as rr22_mod
from veilpay.psi import run_psi_files
from veilpay.psi.okvs import okvs_size
from veilpay.psi.rr22 import rr22_psi
from veilpay.psi.vole import (
    BASE,
    NOISE_WEIGHT,
    SCALER,
    GfScalar,
    VoleReceiver,
    VoleSender,
    _Public,
    gf_mul,
    gf_pack,
    vole_params,
)

_U128 = st.integers(0, 2**128 - 1)


def _el(v: int) -> np.ndarray:
    return np.frombuffer(v.to_bytes(16, "little"), dtype="<u8").copy()


def _int(row: np.ndarray) -> int:
    return int.from_bytes(np.ascontiguousarray(row).tobytes(), "little")


# -- GF(2^128) ------------------------------------------------------------------------

def test_field_reduces_by_its_polynomial() -> None:
    assert gf_mul(1 << 64, 1 << 64) == 0x87  # X^128 = X^7 + X^2 + X + 1
    assert gf_mul(1 << 127, 2) == 0x87
    assert gf_mul(1 << 127, 1 << 127) == gf_mul(0x87, 1 << 126)


@settings(max_examples=60, deadline=None)
@given(a=_U128, b=_U128, c=_U128)
def test_field_is_a_commutative_ring_and_the_tables_agree(a: int, b: int, c: int) -> None:
    assert gf_mul(a, b) == gf_mul(b, a)
    assert gf_mul(a, b ^ c) == gf_mul(a, b) ^ gf_mul(a, c)
    assert gf_mul(gf_mul(a, b), c) == gf_mul(a, gf_mul(b, c))
    got = GfScalar(_el(a))(np.stack([_el(b), _el(c), _el(0), _el(1)]))
    assert [_int(r) for r in got] == [gf_mul(a, b), gf_mul(a, c), 0, a]


def test_pack_is_sum_of_powers() -> None:
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 2**63, size=(3, BASE, 2), dtype=np.uint64)
    packed = gf_pack(rows)
    for k in range(3):
        want = 0
        for j in range(BASE):
            want ^= gf_mul(1 << j, _int(rows[k, j]))
        assert _int(packed[k]) == want


def test_known_answers_pin_the_public_derivations() -> None:
    """The code's slots, the GGM halves and a field product, for a fixed session: a
    change here breaks every peer on an older version, so it must be deliberate."""
    vec = json.loads((VECTORS / "vole" / "vole.json").read_text())
    params = vole_params(vec["n"])
    assert [params.t, params.depth] == vec["t_depth"]
    pub = _Public(bytes.fromhex(vec["joint"]), params)
    assert pub.positions(0, 3).T.tolist() == vec["positions"]
    node = np.frombuffer(bytes.fromhex(vec["node"]), dtype=np.uint8).reshape(1, 1, 16)
    out = np.empty((1, 2, 16), dtype=np.uint8)
    pub.children(node, out)
    assert [out[0, 0].tobytes().hex(), out[0, 1].tobytes().hex()] == vec["children"]
    assert f"{gf_mul(int(vec['a'], 16), int(vec['b'], 16)):032x}" == vec["product"]


# -- the VOLE correlation ---------------------------------------------------------------

def _vole(n: int) -> tuple[VoleSender, VoleReceiver, np.ndarray, np.ndarray, np.ndarray]:
    params = vole_params(n)
    k0 = np.frombuffer(secrets.token_bytes(BASE * 16), dtype=np.uint8).reshape(BASE, 16)
    k1 = np.frombuffer(secrets.token_bytes(BASE * 16), dtype=np.uint8).reshape(BASE, 16)
    s = np.unpackbits(np.frombuffer(secrets.token_bytes(16), dtype=np.uint8), bitorder="little")
    ks = np.where(s[:, None].astype(bool), k1, k0)
    joint = secrets.token_bytes(32)
    recv = VoleReceiver(params, joint, k0, k1)
    send = VoleSender(params, joint, ks, s)
    cts, psi = send.respond("r", recv.correction())
    b = send.finish()
    a, c = recv.finish("s", cts, psi)
    return send, recv, a, b, c


@pytest.mark.parametrize("n", [0, 1, 7, 1000, 70_000])
def test_vole_gives_c_equal_b_plus_a_delta(n: int) -> None:
    send, _, a, b, c = _vole(n)
    assert a.shape == b.shape == c.shape == (n, 2)
    assert (c == b ^ GfScalar(send.delta)(a)).all()
    if n >= 1000:  # A masks the OKVS: its bits are balanced, no row repeats
        bits = np.unpackbits(a.view(np.uint8))
        assert abs(bits.mean() - 0.5) < 0.01
        assert len(np.unique(a.view("V16"))) == n


def test_receiver_learns_every_leaf_but_the_punctured_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """R's leaves equal S's except at alpha_k of each tree, where R holds
    v + beta * Delta and not v: the PPRF's punctured point."""
    import veilpay.psi.vole as vole_mod

    captured: dict[str, np.ndarray] = {}

    orig_acc = vole_mod._accumulate

    def keep(slots: np.ndarray) -> np.ndarray:
        captured.setdefault("s" if "s" not in captured else "r", slots.copy())
        return orig_acc(slots)

    monkeypatch.setattr(vole_mod, "_accumulate", keep)
    send, recv, _, _, _ = _vole(2000)
    p = send.params
    v = captured["s"].reshape(p.t, 1 << p.depth, 2)
    w = captured["r"].reshape(p.t, 1 << p.depth, 2)
    diff = (v != w).any(axis=2)
    assert (diff.sum(axis=1) == 1).all()  # one slot per tree, R's secret alpha
    assert (np.flatnonzero(diff.reshape(-1)) % (1 << p.depth) == recv._alpha.astype(np.int64)).all()
    delta = GfScalar(send.delta)
    assert (w[np.arange(p.t), recv._alpha.astype(np.intp)] == v[np.arange(p.t), recv._alpha.astype(np.intp)]
            ^ delta(recv._beta)).all()


def test_vole_parameters_meet_the_noise_and_rate_floor() -> None:
    for n in (0, 1, 100, 10_000, 1_300_000, 40_000_000, (1 << 27) - 1):
        p = vole_params(n)
        assert p.t >= NOISE_WEIGHT and p.slots >= SCALER * n and p.depth >= 1
        assert p.slots < 2 * max(SCALER * n, 2 * NOISE_WEIGHT) + (1 << p.depth)  # not wastefully large
    with pytest.raises(InvalidInput):
        vole_params(-1)
    with pytest.raises(InvalidInput, match="partition"):
        vole_params(1 << 27)


def test_vole_refuses_malformed_answers() -> None:
    params = vole_params(100)
    k = np.zeros((BASE, 16), dtype=np.uint8)
    recv = VoleReceiver(params, bytes(32), k, k)
    with pytest.raises(ProtocolMismatch, match="tree OT messages"):
        recv.finish("s", np.zeros((params.t, params.depth, 2, 15), dtype=np.uint8), np.zeros((params.t, 16), np.uint8))
    send = VoleSender(params, bytes(32), k, np.zeros(BASE, dtype=np.uint8))
    with pytest.raises(ProtocolMismatch, match="IKNP correction"):
        send.respond("r", np.zeros((BASE, 8), dtype=np.uint8))


# -- the protocol against plain set intersection ------------------------------------------

def run(x: list[bytes], y: list[bytes], **kw: Any) -> tuple[Any, Any]:
    return two_party(lambda c: rr22_psi(c, "s", "receiver", x, **kw), lambda c: rr22_psi(c, "r", "sender", y, **kw))


@pytest.mark.parametrize(("nx", "ny", "common", "chunk"), [
    (300, 300, 0, 64), (300, 300, 150, 64), (250, 250, 250, 1 << 17),  # overlap 0 / 50 / 100 %
    (5, 3000, 5, 1000), (3000, 7, 2, 3),  # unbalanced, several chunks
    (0, 50, 0, 1 << 17), (50, 0, 0, 1 << 17), (1, 1, 1, 1), (1, 90, 0, 7)])
def test_matches_plain_intersection(nx: int, ny: int, common: int, chunk: int) -> None:
    x, y = sets(nx, ny, common, nx * 31 + ny)
    r, s = run(x, y, reveal="both", chunk=chunk)
    check(x, y, r, s)


@settings(max_examples=12, deadline=None)
@given(xs=st.sets(st.binary(min_size=0, max_size=12), max_size=40),
       ys=st.sets(st.binary(min_size=0, max_size=12), max_size=40))
def test_any_small_sets_match_plain_intersection(xs: set[bytes], ys: set[bytes]) -> None:
    x, y = sorted(xs), sorted(ys)
    r, s = run(x, y, reveal="both")
    check(x, y, r, s)


def test_larger_sets_and_the_sender_learns_nothing_by_default() -> None:
    x, y = sets(40_000, 30_000, 12_345, 5)
    r, s = run(x, y, chunk=1 << 13)
    assert not isinstance(r, BaseException) and not isinstance(s, BaseException), (r, s)
    assert r.size == 12_345 and s.indices is None and s.size == -1 and s.peer_size == 40_000
    assert set(r.phases) >= {"okvs", "vole", "values", "match"}


def test_bytes_on_the_wire_are_the_okvs_and_the_values() -> None:
    """R sends the masked OKVS (16 bytes a slot) plus the IKNP matrix; S sends one
    short value per id plus the tree messages: nothing grows with the sets beyond that."""
    x, y = sets(5000, 4000, 100, 9)
    comms: dict[str, Communicator] = {}

    def side(role: str, ids: list[bytes], peer: str) -> Callable[[Communicator], Any]:
        def fn(c: Communicator) -> Any:
            comms[role] = c
            return rr22_psi(c, peer, role, ids)
        return fn

    r, s = two_party(side("receiver", x, "s"), side("sender", y, "r"))
    assert r.size == 100
    p = vole_params(okvs_size(5000))
    size = rr22_mod.oprf_bytes(5000, 4000, 40)
    sent_r, sent_s = comms["receiver"].total().bytes_sent, comms["sender"].total().bytes_sent
    payload_r = 16 * okvs_size(5000) + BASE * p.ots // 8
    payload_s = 4000 * size + p.t * p.depth * 2 * 16 + p.t * 16
    assert payload_r < sent_r < payload_r + 8_000  # headers and the hello: a few kB
    assert payload_s < sent_s < payload_s + 20_000  # and the base-OT keys (8 kB)


def test_duplicates_and_bad_arguments_are_refused() -> None:
    r, s = run([b"a", b"a"], [b"b"])
    assert isinstance(r, InvalidInput) and "distinct" in str(r)
    assert isinstance(s, PeerDisconnected | ProtocolTimeout)
    with pytest.raises(InvalidInput):
        rr22_psi(None, "s", "middle", [])  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        rr22_psi(None, "s", "receiver", [], stat_sec=5)  # type: ignore[arg-type]


# -- peers that send the wrong thing -----------------------------------------------------

class Tamper:
    """A communicator that changes one message it sends: the peer's view of a cheat."""

    def __init__(self, inner: Communicator, label: str, change: Callable[[np.ndarray], np.ndarray],
                 which: int = 0) -> None:
        self._inner, self._label, self._change, self._which = inner, label, change, which

    def exchange(self, label: str, send: Any = None, recv: Any = None) -> Any:
        if label == self._label and send:
            send = {p: [self._change(a) if i == self._which else a for i, a in enumerate(arrs)]
                    for p, arrs in send.items()}
        return self._inner.exchange(label, send, recv)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.mark.parametrize(("label", "change", "which", "blame"), [
    ("rr22.okvs", lambda a: a[:-1], 0, "the OKVS should be"),  # an OKVS of the wrong size
    ("rr22.okvs", lambda a: np.concatenate([a, a[:5]]), 0, "the OKVS should be"),
    ("rr22.okvs", lambda a: a.view(np.uint64), 0, "the OKVS should be"),
    ("rr22.vole", lambda a: np.zeros((BASE, 3), dtype=np.uint8), 0, "IKNP correction"),
    ("rr22.attempt", lambda a: np.array([99], dtype=np.uint64), 0, "attempt"),
])
def test_sender_refuses_a_malformed_receiver_and_both_stop(label: str, change: Callable[[np.ndarray], np.ndarray],
                                                           which: int, blame: str) -> None:
    x, y = sets(300, 300, 100, 3)
    r, s = two_party(lambda c: rr22_psi(Tamper(c, label, change, which), "s", "receiver", x),  # type: ignore[arg-type]
                     lambda c: rr22_psi(c, "r", "sender", y), timeout=5)
    assert isinstance(s, ProtocolMismatch) and blame in str(s)
    assert isinstance(r, PeerDisconnected | ProtocolTimeout)


def _retag(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[40:48] ^= 1  # the OKVS/VOLE parameter tag of the hello
    return a


@pytest.mark.parametrize(("cheat", "label", "change", "blame"), [
    ("receiver", "rr22.hello", _retag, "parameter sets differ"),  # another OKVS or VOLE parameter set
    ("sender", "rr22.hello", _retag, "parameter sets differ"),
    ("sender", "rr22.values", lambda a: a[:, :-1], "value chunk should be"),
    ("sender", "rr22.trees", lambda a: a[:-1], "tree OT messages"),
])
def test_a_different_parameter_set_or_shape_is_a_named_error(cheat: str, label: str,
                                                             change: Callable[[np.ndarray], np.ndarray],
                                                             blame: str) -> None:
    x, y = sets(200, 200, 50, 4)

    def wrap(c: Communicator, role: str) -> Any:
        return Tamper(c, label, change) if role == cheat else c

    r, s = two_party(lambda c: rr22_psi(wrap(c, "receiver"), "s", "receiver", x),
                     lambda c: rr22_psi(wrap(c, "sender"), "r", "sender", y), timeout=5)
    honest, cheater = (s, r) if cheat == "receiver" else (r, s)
    assert isinstance(honest, ProtocolMismatch) and blame in str(honest)
    # the other side stops too, with a named error: its peer hung up on it (a sender
    # whose last message was its values has nothing more to wait for)
    assert isinstance(cheater, PeerDisconnected | ProtocolTimeout) or label == "rr22.values"


def test_files_with_rr22_and_a_bad_okvs_write_no_output(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("cid,v\n" + "".join(f"c{i},{i}\n" for i in range(400)))
    (tmp_path / "s.csv").write_text("cid\n" + "".join(f"c{i}\n" for i in range(200, 700)))

    def side(role: str, tamper: bool) -> Callable[[Communicator], Any]:
        def fn(c: Communicator) -> Any:
            comm = Tamper(c, "rr22.okvs", lambda a: a[:-3]) if tamper else c
            return run_psi_files(comm, "s" if role == "receiver" else "r", role,  # type: ignore[arg-type]
                                 tmp_path / ("r.csv" if role == "receiver" else "s.csv"), ["cid"],
                                 tmp_path / f"out-{role}.csv", protocol="rr22", reveal="both")
        return fn

    r, s = two_party(side("receiver", False), side("sender", False))
    assert r["intersection_size"] == 200 and s["intersection_size"] == 200
    assert (tmp_path / "out-receiver.csv").read_text().splitlines()[1] == "c200,200"
    for f in tmp_path.glob("out-*"):
        f.unlink()
    r, s = two_party(side("receiver", True), side("sender", False), timeout=5)
    assert isinstance(s, ProtocolMismatch) and isinstance(r, PeerDisconnected | ProtocolTimeout)
    assert not list(tmp_path.glob("out-*"))


def test_reveal_both_tells_the_sender_only_the_intersection(monkeypatch: pytest.MonkeyPatch) -> None:
    """With reveal='both', what the sender receives after its values is a function of
    the intersection and the session's public keys alone: exactly the sorted items of
    its own common ids, whatever else the receiver holds."""
    sender_told_only_its_common_items(monkeypatch, rr22_mod, rr22_psi, "rr22.matches")


def test_lookup_finds_values_whose_prefixes_collide_and_refuses_repeated_ids() -> None:
    """R's bucket index on 8-byte prefixes: two of its values that share a prefix (a
    2^-64 event, forced here) fall back to the exact search; the same id twice is
    refused; values longer than 8 bytes are compared whole."""
    rng = np.random.default_rng(3)
    own = rng.integers(0, 256, size=(1000, 10), dtype=np.uint8)
    items = rng.integers(0, 256, size=(1000, 16), dtype=np.uint8)
    own[7, :8] = own[8, :8]  # same prefix, different tails and items
    look = rr22_mod._Lookup("s", own, items)
    assert look.table is not None  # the exact fallback
    probe = np.concatenate([own[[7, 8, 500]], own[[9]] ^ np.uint8(1)])
    assert sorted(look.find(probe).tolist()) == [7, 8, 500]
    own2 = own.copy()
    own2[8] = own2[7]
    items2 = items.copy()
    items2[8] = items2[7]  # the same id twice: the same item and value
    with pytest.raises(InvalidInput, match="distinct"):
        rr22_mod._Lookup("s", own2, items2)
    exact = rr22_mod._Lookup("s", own[10:], items[10:])
    assert exact.table is None
    near = own[[20, 30]].copy()
    near[:, 9] ^= 1  # same prefix, another tail: not a match
    assert exact.find(np.concatenate([own[[20, 30]], near])).tolist() == [10, 20]

# -- attacks: each written as one party (or its peer's network), with only what it has --

def _set_hello(field: int, value: int) -> Callable[[np.ndarray], np.ndarray]:
    """Change one uint64 field of a hello (3: the set size, 1: the role, 6: the chunk)."""
    def change(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a[8 * field : 8 * field + 8] = np.frombuffer(value.to_bytes(8, "little"), dtype=np.uint8)
        return a
    return change


@pytest.mark.parametrize("claim", [2**64 - 1, 2**30 + 1, rr22_mod.MAX_PEER + 1])
def test_a_receiver_claiming_a_huge_set_is_refused_at_the_hello(claim: int) -> None:
    """R with 300 ids claims ``claim``: S would size its OKVS, VOLE and trees from it
    (10 GiB of leaves at the VOLE's limit). S refuses it in the hello, naming its limit."""
    x, y = sets(300, 300, 100, 11)
    r, s = two_party(lambda c: rr22_psi(Tamper(c, "rr22.hello", _set_hello(3, claim)), "s",  # type: ignore[arg-type]
                                        "receiver", x),
                     lambda c: rr22_psi(c, "r", "sender", y), timeout=5)
    assert isinstance(s, ProtocolMismatch) and str(rr22_mod.MAX_PEER) in str(s), s
    assert isinstance(r, PeerDisconnected | ProtocolTimeout)


@pytest.mark.parametrize(("claim", "chunk"), [(2**64 - 1, 1), (2**40, 1 << 24), (10**8, 1)])
def test_a_sender_claiming_a_huge_set_is_refused_at_the_hello(claim: int, chunk: int) -> None:
    """S claims ``claim`` ids sent ``chunk`` at a time: R planned one list entry per
    chunk of the claim (2^64 of them) before any value came. Refused in the hello."""
    x, y = sets(300, 300, 100, 12)

    def cheat(a: np.ndarray) -> np.ndarray:
        return _set_hello(6, chunk)(_set_hello(3, claim)(a))

    r, s = two_party(lambda c: rr22_psi(c, "s", "receiver", x, max_peer=10**7),
                     lambda c: rr22_psi(Tamper(c, "rr22.hello", cheat), "r", "sender", y),  # type: ignore[arg-type]
                     timeout=5)
    assert isinstance(r, ProtocolMismatch) and "limit of 10000000" in str(r), r
    assert isinstance(s, PeerDisconnected | ProtocolTimeout)


def test_the_peer_limit_is_the_vole_limit_and_the_local_side_sets_it() -> None:
    assert okvs_size(rr22_mod.MAX_PEER) < 1 << 27 <= okvs_size(rr22_mod.MAX_PEER + 1)
    vole_params(okvs_size(rr22_mod.MAX_PEER))
    x, y = sets(300, 200, 50, 13)
    r, s = run(x, y, max_peer=250)  # S refuses R's 300; R would accept S's 200
    assert isinstance(s, ProtocolMismatch) and "300 ids" in str(s) and "limit of 250" in str(s)
    assert isinstance(r, PeerDisconnected | ProtocolTimeout)
    with pytest.raises(InvalidInput):
        rr22_psi(None, "s", "receiver", [], max_peer=-1)  # type: ignore[arg-type]


def test_an_unknown_role_in_the_hello_is_refused() -> None:
    x, y = sets(50, 50, 10, 14)
    r, s = two_party(lambda c: rr22_psi(Tamper(c, "rr22.hello", _set_hello(1, 7)), "s", "receiver", x),  # type: ignore[arg-type]
                     lambda c: rr22_psi(c, "r", "sender", y), timeout=5)
    assert isinstance(s, ProtocolMismatch) and "role" in str(s), s


def test_the_receiver_matches_a_large_chunk_in_bounded_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """S may announce chunks of up to 2^24 values: R holds the message (at most
    2^24 x 16 bytes) but matches it a slice at a time, so its scratch does not grow
    with the chunk S picked."""
    seen: list[int] = []
    orig = rr22_mod._Lookup.find

    def find(self: Any, theirs: np.ndarray) -> np.ndarray:
        seen.append(len(theirs))
        return orig(self, theirs)

    monkeypatch.setattr(rr22_mod._Lookup, "find", find)
    monkeypatch.setattr(rr22_mod, "_MATCH", 64)
    x, y = sets(300, 1000, 200, 15)
    r, s = run(x, y, reveal="both", chunk=1 << 24)
    check(x, y, r, s)
    assert max(seen) == 64 and sum(seen) == 1000


class Replay:
    """A sender's communicator that sends its first value chunk again in place of a later one."""

    def __init__(self, inner: Communicator, at: int) -> None:
        self._inner, self._at = inner, at
        self._sent: list[np.ndarray] = []

    def exchange(self, label: str, send: Any = None, recv: Any = None) -> Any:
        if label == "rr22.values" and send:
            (peer, (arr,)), = send.items()
            self._sent.append(arr)
            if len(self._sent) == self._at + 1:
                send = {peer: [self._sent[0]]}
        return self._inner.exchange(label, send, recv)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_replayed_value_chunk_is_refused_not_counted_twice() -> None:
    """S sends its first chunk of values again as its second: R would match its ids
    in it twice and write their rows twice. R refuses: an honest S's values never match
    one of R's values twice."""
    x, y = sets(300, 300, 300, 16)
    r, s = two_party(lambda c: rr22_psi(c, "s", "receiver", x, reveal="both", chunk=64),
                     lambda c: rr22_psi(Replay(c, 1), "r", "sender", y, reveal="both", chunk=64),  # type: ignore[arg-type]
                     timeout=5)
    assert isinstance(r, ProtocolMismatch) and "twice" in str(r), r
    assert isinstance(s, PeerDisconnected | ProtocolTimeout)


def test_ids_marked_distinct_that_repeat_are_refused_at_either_end() -> None:
    """A direct caller's PackedIds(distinct=True) skips the check for repeats. At R
    the lookup finds them (InvalidInput); at S, R sees one of its values matched twice
    (ProtocolMismatch) rather than returning that id twice."""
    x, y = sets(200, 200, 80, 17)
    xd = PackedIds.from_list(x + x[:3], distinct=True)
    r, s = two_party(lambda c: rr22_psi(c, "s", "receiver", xd), lambda c: rr22_psi(c, "r", "sender", y))
    assert isinstance(r, InvalidInput) and "distinct" in str(r), r  # S, its values sent, has nothing to wait for
    yd = PackedIds.from_list(y + y[:5], distinct=True)
    r, s = two_party(lambda c: rr22_psi(c, "s", "receiver", x), lambda c: rr22_psi(c, "r", "sender", yd), timeout=5)
    assert isinstance(r, ProtocolMismatch) and "twice" in str(r), r


def _garbage(a: np.ndarray) -> np.ndarray:
    return np.frombuffer(secrets.token_bytes(a.nbytes), dtype=a.dtype).reshape(a.shape)


@pytest.mark.parametrize(("cheat", "label", "change", "which"), [
    ("receiver", "rr22.vole", _garbage, 0),  # an IKNP matrix of random bytes
    ("receiver", "rr22.okvs", _garbage, 0),  # a P' of random bytes
    ("receiver", "rr22.attempt", lambda a: np.array([rr22_mod.MAX_ATTEMPTS - 1], dtype=np.uint64), 0),
    ("sender", "rr22.trees", _garbage, 0),  # tree OT messages of random bytes
    ("sender", "rr22.trees", _garbage, 1),  # tree sums of random bytes
])
def test_garbage_of_the_right_shape_runs_to_a_wrong_answer_without_a_foreign_error(
        cheat: str, label: str, change: Callable[[np.ndarray], np.ndarray], which: int) -> None:
    """Right shape, random content: the protocol cannot tell (semi-honest), so the run
    ends, but with no common id found (nothing leaks through the garbage), and no
    exception but veilpay's at either end."""
    x, y = sets(300, 300, 150, 18)

    def wrap(c: Communicator, role: str) -> Any:
        return Tamper(c, label, change, which) if role == cheat else c

    r, s = two_party(lambda c: rr22_psi(wrap(c, "receiver"), "s", "receiver", x, reveal="both"),
                     lambda c: rr22_psi(wrap(c, "sender"), "r", "sender", y, reveal="both"), timeout=10)
    assert not isinstance(r, BaseException) and not isinstance(s, BaseException), (r, s)
    assert r.size == 0 and s.size == 0


def test_the_senders_file_order_does_not_show_in_its_value_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """As R: S's file is sorted, and S sends one value per message; R sees at which
    message each of its ids matched. Across runs those positions neither follow S's
    file order nor repeat."""
    seen: list[np.ndarray] = []
    orig = rr22_mod._Lookup.find

    def find(self: Any, theirs: np.ndarray) -> np.ndarray:
        got = orig(self, theirs)
        seen.append(got[0] if len(got) else np.int64(-1))
        return got

    monkeypatch.setattr(rr22_mod._Lookup, "find", find)
    x, _ = sets(300, 0, 0, 19)
    y = sorted(x)  # S's file order is the sorted order; every id matches
    rank_in_file = {v: i for i, v in enumerate(y)}
    streams = []
    for _ in range(3):
        seen.clear()
        r, s = run(x, y, chunk=1)
        assert r.size == 300
        stream = [rank_in_file[x[int(i)]] for i in seen]  # S's file position of the value in each message
        assert sorted(stream) == list(range(300))
        rho = np.corrcoef(np.arange(300), stream)[0, 1]
        assert abs(rho) < 0.3, rho  # 5 standard deviations of a random permutation's
        streams.append(stream)
    assert streams[0] != streams[1] != streams[2]


def test_every_session_key_depends_on_both_nonces() -> None:
    """A party that replays its old nonce (or meets a peer that does) still gets fresh
    keys: the ids' PRF, the hash, the VOLE's and the OKVS's keys all take both nonces."""
    block = np.arange(16, dtype=np.uint8).reshape(1, 16)

    def view(k: Any) -> tuple[bytes, ...]:
        return (k.id_key, k.pi(block).tobytes(), k.vole, k.okvs(100, 0)._aes(block).tobytes(),
                k.okvs(100, 1)._aes(block).tobytes())

    a, b = secrets.token_bytes(16), secrets.token_bytes(16)
    base = view(rr22_mod._Keys(a, b))
    for other in (view(rr22_mod._Keys(a, secrets.token_bytes(16))), view(rr22_mod._Keys(secrets.token_bytes(16), b))):
        assert all(u != v for u, v in zip(base, other, strict=True))


def test_a_replayed_okvs_from_another_run_finds_nothing() -> None:
    """R sends the P' of an earlier run (the same ids): it was masked with that run's
    VOLE, so S's values under this run's Delta match nothing, and nothing fails loudly
    or leaks."""
    x, y = sets(300, 300, 150, 20)
    old: list[np.ndarray] = []

    def keep(a: np.ndarray) -> np.ndarray:
        old.append(a.copy())
        return a

    first, _ = two_party(lambda c: rr22_psi(Tamper(c, "rr22.okvs", keep), "s", "receiver", x),  # type: ignore[arg-type]
                         lambda c: rr22_psi(c, "r", "sender", y))
    assert first.size == 150
    r, s = two_party(lambda c: rr22_psi(Tamper(c, "rr22.okvs", lambda a: old[0]), "s", "receiver", x),  # type: ignore[arg-type]
                     lambda c: rr22_psi(c, "r", "sender", y))
    assert not isinstance(r, BaseException) and not isinstance(s, BaseException), (r, s)
    assert r.size == 0


def test_the_masked_okvs_shows_the_sender_no_free_slot() -> None:
    """As S: P' for 10 ids has 112 rows, about 100 of them free (zero) in P. P' = P + A
    with A uniform: no row of P' is zero or repeats, and its bits are balanced."""
    got: list[np.ndarray] = []

    class Keep:
        def __init__(self, inner: Communicator) -> None:
            self._inner = inner

        def exchange(self, label: str, send: Any = None, recv: Any = None) -> Any:
            out = self._inner.exchange(label, send, recv)
            if label == "rr22.okvs":
                got.append(out["r"][0])
            return out

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    x, y = sets(10, 10, 5, 21)
    r, s = two_party(lambda c: rr22_psi(c, "s", "receiver", x), lambda c: rr22_psi(Keep(c), "r", "sender", y))  # type: ignore[arg-type]
    assert r.size == 5
    (p,) = got
    assert p.shape == (okvs_size(10), 16) and okvs_size(10) > 100
    assert p.any(axis=1).all() and len(np.unique(p.view("V16"))) == len(p)
    assert abs(np.unpackbits(p).mean() - 0.5) < 0.03


def test_the_lookup_is_exact_when_two_values_share_a_prefix() -> None:
    """R's values that share their first 8 bytes (probability n^2 / 2^65, or a full
    collision at 8-byte values) go to an exact table built once."""
    rng = np.random.default_rng(3)
    own = rng.integers(0, 256, size=(1000, 12), dtype=np.uint8)
    own[7, :8] = own[500, :8]  # a shared prefix, different tails
    items = rng.integers(0, 256, size=(1000, 16), dtype=np.uint8)
    lookup = rr22_mod._Lookup("s", own, items)
    theirs = np.concatenate([own[[500, 7, 3]], rng.integers(0, 256, size=(5, 12), dtype=np.uint8)])
    assert sorted(lookup.find(theirs).tolist()) == [3, 7, 500]


def test_the_parameter_tag_covers_every_constant_that_sizes_the_store() -> None:
    """The hello's tag must change with anything that changes okvs_size or vole_params
    (SMALL_EXPANSION went from 2.0 to 2.4 without changing it: a peer on the old value
    failed at P', not at the hello)."""
    from veilpay.psi import okvs as okvs_mod
    from veilpay.psi import vole as vole_mod

    want = (okvs_mod.OKVS_VERSION, int(okvs_mod.EXPANSION * 1000), okvs_mod.DENSE, okvs_mod.SMALL_N,
            int(okvs_mod.SMALL_EXPANSION * 1000), okvs_mod._SEG_FLOOR, vole_mod.SCALER, vole_mod.WEIGHT,
            vole_mod.NOISE_WEIGHT)
    assert want == rr22_mod._PARAMS
