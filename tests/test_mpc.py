from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veilpay.errors import FixedPointOverflow, PartyFailed, PeerDisconnected, ShapeMismatch
from veilpay.mpc import PremaskedMatrix, Protocol, SharedTensor, concatenate, run_local, share
from veilpay.mpc import nonlinear as nl

PROTOCOLS = ["semi2k", "aby3"]
SHAPES = [(), (5,), (3, 4)]
F = 2.0**-16


def run(protocol: str, fn: Callable[..., Any], x: Any = None, y: Any = None, **kw: Any) -> Any:
    res = run_local(fn, protocol, kwargs={"p0": {"x": x}, "p1": {"y": y}}, **kw)
    return res["p2"]


def two_inputs(rt: Protocol, x: Any, y: Any, shape: tuple[int, ...]) -> tuple[SharedTensor, SharedTensor]:
    return share(rt, "p0", x, shape=shape), share(rt, "p1", y, shape=shape)


def data(shape: tuple[int, ...], lo: float, hi: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(lo, hi, size=shape)


BINARY: dict[str, tuple[Callable[[Any, Any], Any], Callable[[Any, Any], Any], float]] = {
    "add": (lambda a, b: a + b, lambda a, b: a + b, 0),
    "sub": (lambda a, b: a - b, lambda a, b: a - b, 0),
    "mul": (lambda a, b: a * b, lambda a, b: a * b, 4 * F),
    "mul_public": (lambda a, b: a * 1.75 + 2.5, lambda a, b: a * 1.75 + 2.5, 4 * F),
    "lt": (lambda a, b: a < b, lambda a, b: (a < b).astype(float), 0),
    "ge": (lambda a, b: a >= b, lambda a, b: (a >= b).astype(float), 0),
    "maximum": (lambda a, b: nl.maximum(a, b), np.maximum, 0),
    "where": (lambda a, b: nl.where(a < b, a, b), np.minimum, 0),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary_ops_match_numpy(protocol: str, shape: tuple[int, ...], op: str) -> None:
    secure, plain, tol = BINARY[op]
    x, y = data(shape, -50, 50, 1), data(shape, -50, 50, 2)
    x, y = F16round(x), F16round(y)

    def prog(rt: Protocol, x: Any = None, y: Any = None) -> Any:
        a, b = two_inputs(rt, x, y, shape)
        return secure(a, b).reveal()

    got = run(protocol, prog, x, y)
    assert got.shape == shape
    np.testing.assert_allclose(got, plain(x, y), atol=tol + 1e-12)


def F16round(v: np.ndarray) -> np.ndarray:  # exact fixed-point inputs
    return np.round(np.asarray(v) * 65536) / 65536


UNARY: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any], tuple[float, float], float, bool]] = {
    # name: secure, plain, input range, abs tolerance, relative?
    "neg": (lambda a: -a, lambda a: -a, (-100, 100), 0, False),
    "relu": (nl.relu, lambda a: np.maximum(a, 0), (-100, 100), 0, False),
    "sign": (nl.sign, lambda a: np.where(a < 0, -1.0, 1.0), (-100, 100), 0, False),
    "sigmoid": (nl.sigmoid, lambda a: 1 / (1 + np.exp(-a)), (-30, 30), 1e-3, False),
    "exp": (nl.exp, np.exp, (-8, 5), 6e-3, True),
    "reciprocal": (nl.reciprocal, lambda a: 1 / a, (0.2, 50), 2e-3, True),
    "log": (nl.log, np.log, (0.05, 80), 5e-3, False),
    "inv_sqrt": (nl.inv_sqrt, lambda a: 1 / np.sqrt(a), (0.2, 100), 5e-3, True),
    "sqrt": (nl.sqrt, np.sqrt, (0.2, 100), 5e-3, True),
    "square": (lambda a: a * a, np.square, (-100, 100), 1e-3, False),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("shape", [(7,), (2, 3)])
@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_ops_match_numpy(protocol: str, shape: tuple[int, ...], op: str) -> None:
    secure, plain, (lo, hi), tol, relative = UNARY[op]
    x = F16round(data(shape, lo, hi, 3))

    def prog(rt: Protocol, x: Any = None, y: Any = None) -> Any:
        return secure(share(rt, "p0", x, shape=shape)).reveal()

    got = run(protocol, prog, x)
    want = plain(x)
    if relative:
        np.testing.assert_allclose(got, want, rtol=tol, atol=1e-4)
    else:
        np.testing.assert_allclose(got, want, atol=tol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("m", "k", "n"), [(1, 1, 1), (3, 4, 2), (20, 70, 9), (70, 65, 70)])
def test_matmul(protocol: str, m: int, k: int, n: int) -> None:
    x, y = F16round(data((m, k), -4, 4, 4)), F16round(data((k, n), -4, 4, 5))

    def prog(rt: Protocol, x: Any = None, y: Any = None) -> Any:
        a, b = share(rt, "p0", x, shape=(m, k)), share(rt, "p1", y, shape=(k, n))
        public = np.linspace(-2, 2, k * n).reshape(k, n)
        return {"ss": (a @ b).reveal(), "sp": (a @ public).reveal()}

    got = run(protocol, prog, x, y)
    np.testing.assert_allclose(got["ss"], x @ y, atol=4 * F * k)
    np.testing.assert_allclose(got["sp"], x @ np.linspace(-2, 2, k * n).reshape(k, n), atol=4 * F * k)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_reductions_shapes_and_indexing(protocol: str) -> None:
    x = F16round(data((4, 6), -10, 10, 6))

    def prog(rt: Protocol, x: Any = None, y: Any = None) -> Any:
        a = share(rt, "p0", x)  # shape announced by the owner
        return {
            "sum0": a.sum(0).reveal(), "sum": a.sum().reveal(), "mean1": a.mean(1).reveal(),
            "T": a.T.reveal(), "reshape": a.reshape(3, 8).reveal(), "idx": a[1:3, ::2].reveal(),
            "cat": concatenate([a, a[:1]], axis=0).reveal(),
            "max": nl.max(a, axis=1).reveal(), "argmax": nl.argmax(a, axis=0).reveal(),
            "max_odd": nl.max(a[:, :5], axis=1).reveal(), "argmax_odd": nl.argmax(a[:, :5], axis=1).reveal(),
        }

    got = run(protocol, prog, x)
    np.testing.assert_allclose(got["sum0"], x.sum(0))
    np.testing.assert_allclose(got["sum"], x.sum())
    np.testing.assert_allclose(got["mean1"], x.mean(1), atol=4 * F)
    np.testing.assert_array_equal(got["T"], x.T)
    np.testing.assert_array_equal(got["reshape"], x.reshape(3, 8))
    np.testing.assert_array_equal(got["idx"], x[1:3, ::2])
    np.testing.assert_array_equal(got["cat"], np.concatenate([x, x[:1]]))
    np.testing.assert_array_equal(got["max"], x.max(1))
    np.testing.assert_array_equal(got["argmax"], x.argmax(0))
    np.testing.assert_array_equal(got["max_odd"], x[:, :5].max(1))
    np.testing.assert_array_equal(got["argmax_odd"], x[:, :5].argmax(1))
    assert got["argmax"].dtype == np.int64


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_integers_and_mixed_encodings(protocol: str) -> None:
    xi = np.array([-7, 3, 2**40, -(2**40)], dtype=np.int64)

    def prog(rt: Protocol, x: Any = None, y: Any = None) -> Any:
        a = share(rt, "p0", xi if rt.me == "p0" else None, shape=(4,), fixed=False)
        b = share(rt, "p1", np.array([1.5, -2.0, 0.25, 1.0]) if rt.me == "p1" else None, shape=(4,))
        return {"int_mul": (a * a[0:1]).reveal(), "mixed": (a[:2] * b[:2]).reveal(), "plus": (a + 1).reveal()}

    got = run(protocol, prog)
    np.testing.assert_array_equal(got["int_mul"], xi * -7)
    np.testing.assert_allclose(got["mixed"], xi[:2] * np.array([1.5, -2.0]))
    np.testing.assert_array_equal(got["plus"], xi + 1)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_exact_truncation_has_no_large_errors_near_the_range_limit(protocol: str) -> None:
    # |x*y| up to 2^29.9: products of 2^61.9 ring units, where local truncation fails
    # for about 1 element in 8; exact truncation must stay within one unit everywhere.
    n = 4000
    x, y = F16round(data(n, -31000, 31000, 11)), F16round(data(n, -31000, 31000, 12))

    def prog(rt: Protocol, x: Any = None, y: Any = None) -> Any:
        a, b = two_inputs(rt, x, y, (n,))
        return (a * b).reveal()

    np.testing.assert_allclose(run(protocol, prog, x, y), x * y, rtol=0, atol=2 * F)
    local = run(protocol, prog, x, y, trunc="local")
    # The documented failure mode, seen: about 1 in 8 elements for semi2k and 1 in 20 for
    # aby3 (CI once saw 193 of 4000); the bar sits at 1 in 100, many deviations below both.
    assert np.sum(np.abs(local - x * y) > 1.0) > n // 100


def test_semi2k_local_truncation_mode() -> None:
    x, y = F16round(data(50, -20, 20, 7)), F16round(data(50, -20, 20, 8))

    def prog(rt: Protocol, x: Any = None, y: Any = None) -> Any:
        a, b = two_inputs(rt, x, y, (50,))
        return (a * b).reveal()

    np.testing.assert_allclose(run("semi2k", prog, x, y, trunc="local"), x * y, atol=2 * F)


def test_input_and_output_parties_outside_the_compute_set() -> None:
    """A data owner need not compute: 'owner' feeds aby3 parties and alone learns the result."""
    parties = ("p0", "p1", "p2", "owner")
    for protocol in PROTOCOLS:

        def prog(rt: Protocol, v: Any = None) -> Any:
            a = share(rt, "owner", v, shape=(3,))
            b = share(rt, "p2", np.array([1.0, 2.0, 3.0]) if rt.me == "p2" else None, shape=(3,))
            return (a * b + 1.0).reveal(to="owner")

        res = run_local(prog, protocol, parties=parties, kwargs={"owner": {"v": [0.5, -1.0, 4.0]}})
        np.testing.assert_allclose(res["owner"], [1.5, -1.0, 13.0])
        assert res["p0"] is None and res["p1"] is None and res["p2"] is None


# -- communication budgets (a change that adds rounds or bytes fails here) -----

HDR = 40 + 8  # fixed header + one shape dimension


@pytest.mark.parametrize(("protocol", "trunc"), [("semi2k", "exact"), ("aby3", "exact"), ("aby3", "local")])
def test_mul_costs(protocol: str, trunc: str) -> None:
    n = 1000

    def prog(rt: Protocol, x: Any = None, y: Any = None) -> Any:
        a, b = two_inputs(rt, x, y, (n,))
        rt.comm.reset_stats()
        c = a * b
        return {k: (v.rounds, v.bytes_sent) for k, v in rt.comm.stats().items()}, c.reveal()

    x, y = data(n, -1, 1, 9), data(n, -1, 1, 10)
    res = run_local(prog, protocol, trunc=trunc, kwargs={"p0": {"x": x}, "p1": {"y": y}})
    np.testing.assert_allclose(res["p0"][1], x * y, atol=4 * F)
    msg = n * 8 + HDR
    if protocol == "semi2k":
        # Beaver: one round, e and f to the peer; the dealer sends only c1 to P1.
        assert res["p0"][0]["mul"] == (1, 2 * (n * 8 + HDR + 3))
        assert res["p2"][0]["mul"] == (1, n * 8 + HDR + 3)
        # exact truncation: one more round, x + r to the peer; dealer: r>>d and, mod 2^16
        # (u16, f = 16), msb(r) to P1.
        assert res["p0"][0]["trunc"] == (1, n * 8 + HDR + 5)
        assert res["p2"][0]["trunc"] == (1, (n * 8 + HDR + 5) + (n * 2 + HDR + 5))
    elif trunc == "exact":
        # fused: round 1 opens z + r to P1, P2 (P0 sends u to P1; u', r>>d, msb r to P2;
        # P1 and P2 swap one masked element); round 2 reshares y2 between P1 and P2.
        # msb r travels mod 2^16 (u16, f = 16).
        assert res["p0"][0]["mul"] == (1, 3 * (msg + 3) + (n * 2 + HDR + 3))
        assert res["p1"][0]["mul"] == res["p2"][0]["mul"] == (1, msg + 3)
        assert res["p0"][0]["mul.trunc"] == (1, 0)
        assert res["p1"][0]["mul.trunc"] == res["p2"][0]["mul.trunc"] == (1, msg + 9)
        assert "trunc" not in res["p0"][0]
    else:
        # replicated: one round, one element to the previous party; Pi_trunc1: P0 -> P2 only.
        for p in ("p0", "p1", "p2"):
            assert res[p][0]["mul"] == (1, msg + 3)
        assert res["p0"][0]["trunc"] == (1, msg + 5)
        assert res["p1"][0]["trunc"] == (1, 0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_premasked_matrix_products(protocol: str) -> None:
    """X[idx] @ w and X[idx]^T @ e against numpy, several batches of one prepared X;
    semi2k opens X once, then moves only operand- and result-sized messages."""
    n, d, b = 300, 7, 64
    rng = np.random.default_rng(4)
    x, w, e = rng.uniform(-3, 3, (n, d)), rng.uniform(-1, 1, (d, 1)), rng.uniform(-1, 1, (b, 2))

    def prog(rt: Protocol, x: Any = None, w: Any = None) -> Any:
        xs = share(rt, "p0", x, shape=(n, d))
        ws, es = share(rt, "p1", w, shape=(d, 1)), share(rt, "p1", None if w is None else e, shape=(b, 2))
        rt.comm.reset_stats()
        pm = PremaskedMatrix(xs)
        setup = rt.comm.total().bytes_sent
        outs = []
        for k in range(3):
            idx = np.arange(k * 50, k * 50 + b) % n
            outs += [pm.rows_matmul(idx, ws).reveal(), pm.rows_t_matmul(idx, es).reveal()]
        return setup, {k: v.bytes_sent for k, v in rt.comm.stats().items()}, outs

    res = run_local(prog, protocol, kwargs={"p0": {"x": x}, "p1": {"w": w}})
    for k in range(3):
        idx = np.arange(k * 50, k * 50 + b) % n
        np.testing.assert_allclose(res["p0"][2][2 * k], x[idx] @ w, atol=1e-3)
        np.testing.assert_allclose(res["p0"][2][2 * k + 1], x[idx].T @ e, atol=1e-3)
    if protocol == "semi2k":
        assert res["p0"][0] == n * d * 8 + HDR + 8 + 7  # E = X - A, once (a 2-d shape header)
        # per product: P0 opens only Y - B (d or b rows); the dealer sends only the result-sized C1.
        assert res["p0"][1]["rows_matmul"] == 3 * (d * 1 * 8 + HDR + 8 + 11)
        assert res["p0"][1]["rows_t_matmul"] == 3 * (b * 2 * 8 + HDR + 8 + 13)
        assert res["p2"][1]["rows_matmul"] == 3 * (b * 1 * 8 + HDR + 8 + 11)
        assert res["p2"][1]["rows_t_matmul"] == 3 * (d * 2 * 8 + HDR + 8 + 13)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_premasked_matrix_whole_rows(protocol: str) -> None:
    """idx=None takes every row: X @ w and X^T @ e, twice (the transpose is cached)."""
    rng = np.random.default_rng(5)
    x, w, e = rng.uniform(-2, 2, (40, 6)), rng.uniform(-1, 1, (6, 2)), rng.uniform(-1, 1, (40, 3))

    def prog(rt: Protocol, x: Any = None) -> Any:
        pm = PremaskedMatrix(share(rt, "p0", x, shape=(40, 6)))
        ws, es = share(rt, "p1", w if rt.me == "p1" else None, shape=(6, 2)), share(
            rt, "p1", e if rt.me == "p1" else None, shape=(40, 3))
        return [pm.rows_matmul(None, ws).reveal(), pm.rows_t_matmul(None, es).reveal(),
                pm.rows_t_matmul(None, es).reveal()]

    out = run_local(prog, protocol, kwargs={"p0": {"x": x}})["p2"]
    np.testing.assert_allclose(out[0], x @ w, atol=1e-3)
    np.testing.assert_allclose(out[1], x.T @ e, atol=1e-3)
    np.testing.assert_allclose(out[2], x.T @ e, atol=1e-3)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_comparison_rounds(protocol: str) -> None:
    def prog(rt: Protocol, x: Any = None, y: Any = None) -> Any:
        a = share(rt, "p0", x, shape=(10,))
        rt.comm.reset_stats()
        _ = a < 0.0
        return rt.comm.stats()["msb"].rounds

    expected = 1 + 6 + 1 if protocol == "semi2k" else 1 + 1 + 6 + 2  # (a2b input) + adder + b2a
    assert run(protocol, prog, data(10, -1, 1, 11)) == expected


# -- property tests -----------------------------------------------------------

ints = st.lists(st.integers(min_value=-(2**62), max_value=2**62), min_size=1, max_size=6)
reals = st.lists(st.floats(min_value=-1e4, max_value=1e4, allow_nan=False), min_size=1, max_size=6)


@settings(max_examples=15, deadline=None)
@given(values=ints, protocol=st.sampled_from(PROTOCOLS))
def test_share_reveal_roundtrip(values: list[int], protocol: str) -> None:
    x = np.array(values, dtype=np.int64)

    def prog(rt: Protocol, x: Any = None, y: Any = None) -> Any:
        return share(rt, "p0", x, shape=(len(values),), fixed=False).reveal()

    np.testing.assert_array_equal(run(protocol, prog, x), x)


@settings(max_examples=15, deadline=None)
@given(xs=reals, c=st.floats(min_value=-100, max_value=100), protocol=st.sampled_from(PROTOCOLS))
def test_linearity_and_product_bound(xs: list[float], c: float, protocol: str) -> None:
    x = F16round(np.array(xs))
    y = F16round(x[::-1] / 100)
    n = len(xs)

    def prog(rt: Protocol, x: Any = None, y: Any = None) -> Any:
        a, b = two_inputs(rt, x, y, (n,))
        return {"lin": (a * 3 - b + a).reveal(), "mul": (a * b).reveal(), "pub": (a * c).reveal()}

    got = run(protocol, prog, x, y)
    np.testing.assert_allclose(got["lin"], 4 * x - y, atol=1e-9)
    # fixed-point bound: input rounding is zero (exact inputs), truncation error <= 1 ulp
    np.testing.assert_allclose(got["mul"], x * y, atol=2 * F)
    assert np.all(np.abs(got["pub"] - x * c) <= 2 * F + np.abs(x) * F)


# -- bad input ----------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mismatched_shapes_fail_at_every_party(protocol: str) -> None:
    def prog(rt: Protocol, x: Any = None, y: Any = None) -> str:
        a = share(rt, "p0", x)
        b = share(rt, "p1", y)
        try:
            _ = a * b
        except ShapeMismatch as exc:
            return str(exc)
        return "no error"

    res = run_local(prog, protocol, kwargs={"p0": {"x": np.ones(3)}, "p1": {"y": np.ones(4)}})
    assert all("(3,) and (4,)" in v for v in res.values())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_party_dying_mid_protocol_is_a_disconnect(protocol: str) -> None:
    seen: dict[str, str] = {}

    def prog(rt: Protocol, x: Any = None, y: Any = None) -> None:
        a = share(rt, "p0", np.ones(4) if rt.me == "p0" else None, shape=(4,))
        if rt.me == "p1":
            raise RuntimeError("p1 crashed")
        try:
            (a * a).reveal()
        except PeerDisconnected as exc:
            seen[rt.me] = exc.peer
            raise

    with pytest.raises(PartyFailed) as info:
        run_local(prog, protocol, timeout=10)
    assert info.value.party == "p1"
    assert seen.get("p0") == "p1"


def test_out_of_range_input_is_refused_before_sharing() -> None:
    def prog(rt: Protocol, x: Any = None, y: Any = None) -> Any:
        return share(rt, "p0", x, shape=(2,)).reveal()

    with pytest.raises(PartyFailed) as info:
        run_local(prog, "semi2k", kwargs={"p0": {"x": [1.0, 1e30]}}, timeout=5)
    assert isinstance(info.value.error, FixedPointOverflow)


def test_shared_tensor_has_no_truth_value_and_hides_shares() -> None:
    def prog(rt: Protocol, x: Any = None, y: Any = None) -> str:
        a = share(rt, "p0", x, shape=(2,))
        with pytest.raises(TypeError):
            bool(a)
        return repr(a)

    r = run("aby3", prog, np.array([1.0, 2.0]))
    assert r == "SharedTensor(shape=(2,), fixed, protocol=aby3)"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("frac_bits", [8, 20, 28])
def test_exact_truncation_at_other_fraction_widths(protocol: str, frac_bits: int) -> None:
    """msb(r) travels mod 2^d in a u8 or u32: the product is still floor or +1."""
    n = 2000
    ulp = 2.0**-frac_bits

    def prog(rt: Protocol, x: Any = None, y: Any = None) -> Any:
        a, b = two_inputs(rt, x, y, (n,))
        return (a * b).reveal()

    x, y = data(n, -4, 4, 21), data(n, -4, 4, 22)  # |xy| 2^(2f) < 2^62 up to f = 28
    res = run_local(prog, protocol, frac_bits=frac_bits, kwargs={"p0": {"x": x}, "p1": {"y": y}})
    xq, yq = np.round(x / ulp) * ulp, np.round(y / ulp) * ulp
    err = (res["p0"] - np.floor(xq * yq / ulp) * ulp) / ulp
    assert set(np.round(err).astype(int).tolist()) <= {0, 1}


def test_residue_dtype_is_the_narrowest_that_holds_the_bits() -> None:
    from veilpay.mpc.protocol import residue_dtype

    assert [residue_dtype(b) for b in (1, 8, 9, 16, 17, 32, 33, 62)] == [
        np.uint8, np.uint8, np.uint16, np.uint16, np.uint32, np.uint32, np.uint64, np.uint64]


@pytest.mark.parametrize("protocol", ["semi2k", "aby3"])
def test_a_matmul_takes_five_ring_products_across_the_parties(protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import veilpay.mpc.aby3 as aby3_mod
    import veilpay.mpc.semi2k as semi2k_mod
    from veilpay.mpc.ring import ring_matmul

    calls: list[tuple[int, ...]] = []
    lock = threading.Lock()

    def counting(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with lock:
            calls.append(a.shape + b.shape)
        return ring_matmul(a, b)

    monkeypatch.setattr(semi2k_mod if protocol == "semi2k" else aby3_mod, "ring_matmul", counting)
    rng = np.random.default_rng(4)
    x, y = rng.uniform(-2, 2, size=(30, 40)), rng.uniform(-2, 2, size=(40, 20))

    def prog(rt: Protocol, x: np.ndarray | None = None, y: np.ndarray | None = None) -> np.ndarray | None:
        xs, ys = share(rt, "p0", x, shape=(30, 40)), share(rt, "p1", y, shape=(40, 20))
        return (xs @ ys).reveal(to=["p0"])

    res = run_local(prog, protocol, kwargs={"p0": {"x": x}, "p1": {"y": y}})
    np.testing.assert_allclose(res["p0"], x @ y, atol=1e-3)
    assert calls == [(30, 40, 40, 20)] * 5


# -- owner-held 0/1 matrices, column products, 32-bit comparisons (secure trees) -----

@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 300), ca=st.integers(1, 9), cb=st.integers(1, 9), k=st.integers(1, 4),
       seed=st.integers(0, 2**32 - 1), protocol=st.sampled_from(PROTOCOLS))
def test_bit_matrix_products_equal_plaintext(n: int, ca: int, cb: int, k: int, seed: int, protocol: str) -> None:
    """M^T y (narrow ring, lifted) within the fixed-point bound, and M w and the owners'
    column selection exactly, for any shapes; M's blocks stay with p0 and p1."""
    from veilpay.mpc import BitMatrix

    rng = np.random.default_rng(seed)
    ma, mb = (rng.random((n, ca)) < 0.5).astype(np.uint8), (rng.random((n, cb)) < 0.5).astype(np.uint8)
    y = F16round(rng.uniform(-1, 1, (n, k)))
    w = np.zeros((ca + cb, 3), dtype=np.int64)
    w[rng.integers(0, ca + cb, 3), np.arange(3)] = 1

    def prog(rt: Protocol, x: Any = None, y: Any = None) -> Any:
        mine = {0: ma} if rt.me == "p0" else {1: mb} if rt.me == "p1" else {}
        bm = BitMatrix(rt, [("p0", ca), ("p1", cb)], mine, n)
        ys = share(rt, "p0", y, shape=(n, k))
        ws = share(rt, "p1", x, shape=(ca + cb, 3), fixed=False)
        picked, opened = bm.select_columns(ws.T)
        return bm.t_matmul(ys, 10).reveal(), bm.matmul(ws).reveal(), picked.reveal(), sorted(opened)

    res = run_local(prog, protocol, kwargs={"p0": {"y": y}, "p1": {"x": w}})
    m = np.hstack([ma, mb]).astype(np.int64)
    hist, sel, picked, _ = res["p2"]
    assert np.abs(hist - m.T @ y).max() <= n * 2.0**-10 + 1e-9  # each row's y to 10 fraction bits, +-1 ulp
    np.testing.assert_array_equal(sel, m @ w)
    np.testing.assert_array_equal(picked, m @ w)
    assert res["p0"][3] == [0] and res["p1"][3] == [1] and res["p2"][3] == []  # each owner opens its block only


def test_bit_matrix_traffic_and_what_the_other_party_holds() -> None:
    """semi2k: the owner sends its block once, masked in Z_2^32 (4 bytes a cell); a
    histogram moves (n, k) 4-byte masks, and the lift one (C, k) product."""
    from veilpay.mpc import BitMatrix

    n, ca, cb, k = 200, 5, 3, 2
    rng = np.random.default_rng(9)
    ma, mb = (rng.random((n, ca)) < 0.5).astype(np.uint8), (rng.random((n, cb)) < 0.5).astype(np.uint8)

    def prog(rt: Protocol, x: Any = None, y: Any = None) -> Any:
        ys = share(rt, "p0", x, shape=(n, k))
        rt.comm.reset_stats()
        bm = BitMatrix(rt, [("p0", ca), ("p1", cb)], {0: ma} if rt.me == "p0" else {1: mb}, n)
        setup = rt.comm.total().bytes_sent
        rt.comm.reset_stats()
        bm.t_matmul(ys, 12)
        got = {name: (v.rounds, v.bytes_sent) for name, v in rt.comm.stats().items()}
        state = bm._state  # noqa: SLF001 - the test looks at what this party holds
        return setup, got, {b: a.dtype.str for b, a in state.blocks.items()}

    res = run_local(prog, "semi2k", kwargs={"p0": {"x": rng.uniform(-1, 1, (n, k))}})
    assert res["p0"][0] == n * ca * 4 + HDR + 8 + 12 and res["p1"][0] == n * cb * 4 + HDR + 8 + 12
    assert res["p0"][2] == {0: "|u1", 1: "<u4"} and res["p1"][2] == {0: "<u4", 1: "|u1"}  # own M, the other's E
    assert res["p2"][2] == {0: "<u4", 1: "<u4"}  # the dealer: both masks
    # one round for the products (each party masks y for the block it does not own), one for the lift
    rounds, sent = res["p0"][1]["bits.t_matmul"]
    assert rounds == 1 and sent == n * k * 4 + HDR + 8 + 13
    assert res["p0"][1]["mul"][0] == 1


@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 50), m=st.integers(1, 5), k=st.integers(1, 3), seed=st.integers(0, 2**32 - 1),
       protocol=st.sampled_from(PROTOCOLS))
def test_mul_columns_equals_plaintext(n: int, m: int, k: int, seed: int, protocol: str) -> None:
    from veilpay.mpc import mul_columns

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, (n, m))
    y = F16round(rng.uniform(-3, 3, (n, k)))

    def prog(rt: Protocol, x: Any = None, y: Any = None) -> Any:
        xs = share(rt, "p0", x, shape=(n, m), fixed=False)
        return mul_columns(xs, share(rt, "p1", y, shape=(n, k))).reveal()

    want = np.concatenate([x * y[:, j : j + 1] for j in range(k)], axis=1)
    np.testing.assert_allclose(run(protocol, prog, x, y), want, atol=1e-9)


@settings(max_examples=15, deadline=None)
@given(xs=st.lists(st.integers(-(2**31) + 1, 2**31 - 1), min_size=1, max_size=9),
       protocol=st.sampled_from(PROTOCOLS))
def test_msb_on_32_bit_lanes_is_exact_inside_its_range(xs: list[int], protocol: str) -> None:
    x = np.array(xs, dtype=np.int64)

    def prog(rt: Protocol, x: Any = None, y: Any = None) -> Any:
        a = share(rt, "p0", x, shape=(len(xs),), fixed=False)
        rt.comm.reset_stats()
        out = nl.msb(a, 32).reveal()
        return out, rt.comm.stats()["msb"].rounds

    got, rounds = run(protocol, prog, x)
    np.testing.assert_array_equal(got, (x < 0).astype(np.int64))
    assert rounds == (1 + 5 + 1 if protocol == "semi2k" else 1 + 1 + 5 + 2)  # one adder level fewer than 64 bits


def test_bit_matrix_refuses_bad_blocks() -> None:
    from veilpay.mpc import BitMatrix

    def prog(rt: Protocol, x: Any = None, y: Any = None) -> Any:
        mine = {0: np.full((4, 2), 2, dtype=np.uint8)} if rt.me == "p0" else {}
        BitMatrix(rt, [("p0", 2), ("p1", 1)], mine, 4)

    with pytest.raises(PartyFailed, match="only 0 and 1|must be a"):
        run_local(prog, "semi2k", timeout=5)
    with pytest.raises(PartyFailed, match="non-empty blocks"):
        run_local(lambda rt, **_: BitMatrix(rt, [("p0", 0)], {}, 4), "semi2k")


def test_semi2k_and_refuses_a_malformed_peer_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer's AND message of the wrong shape (it would broadcast) is a named error."""
    from veilpay.errors import WireFormatError
    from veilpay.net import Communicator

    orig = Communicator.exchange

    def exchange(self: Communicator, label: str, send: Any = None, recv: Any = None) -> Any:
        if self.me == "p1" and label == "and" and send:
            send = {p: [a[:1] for a in arrs] for p, arrs in send.items()}
        return orig(self, label, send, recv)

    monkeypatch.setattr(Communicator, "exchange", exchange)

    def prog(rt: Protocol, **_: Any) -> Any:
        x = rt.input_bits("p0", np.arange(6, dtype=np.uint64).reshape(3, 2) if rt.me == "p0" else None, (3, 2))
        return rt.and_(x, x, (3, 2))

    with pytest.raises(PartyFailed) as info:
        run_local(prog, "semi2k", timeout=10)
    assert isinstance(info.value.__cause__, WireFormatError)


def test_the_other_party_cannot_guess_an_owners_indicators_from_what_it_holds() -> None:
    """As p1, with only what p1 holds of p0's block (E = M - A mod 2^32) and what it
    receives during a histogram, try to guess M: every guess from E's bits, or from
    E's size, is a coin toss, for a block of all zeros and one of all ones alike."""
    from veilpay.mpc import BitMatrix

    n, c = 4000, 4
    seen: dict[str, Any] = {}
    for fill in (0, 1):
        m = np.full((n, c), fill, dtype=np.uint8)

        def prog(rt: Protocol, x: Any = None, y: Any = None, m: np.ndarray = m) -> Any:
            bm = BitMatrix(rt, [("p0", c), ("p1", 1)], {0: m} if rt.me == "p0" else {1: np.ones((n, 1), np.uint8)}, n)
            ys = share(rt, "p0", x, shape=(n, 1))
            bm.t_matmul(ys, 10)
            return bm._state.blocks[0] if rt.me == "p1" else None  # noqa: SLF001 - p1's own view of the block

        seen[f"E{fill}"] = run_local(prog, "semi2k", kwargs={"p0": {"x": np.zeros((n, 1))}})["p1"]
    for fill in (0, 1):
        e = seen[f"E{fill}"].astype(np.int64)
        for bit in (0, 1, 16, 31):  # guessing M from one bit of E
            assert abs(((e >> bit) & 1).mean() - 0.5) < 0.03
        assert abs(e.mean() / 2.0**32 - 0.5) < 0.03  # ... or from its size
    assert not np.array_equal(seen["E0"], seen["E1"])


def test_the_owner_cannot_guess_the_other_partys_gradient_share_from_its_mask() -> None:
    """As p0 (owner of a block), with only what p0 holds -- its own share of y and the
    y_P - R it receives from p1 during a histogram -- try to open y: for a y of all zeros
    and one of a large constant, the sum is a coin toss in every bit and in size (without
    R it would be y itself)."""
    from veilpay.mpc import BitMatrix
    from veilpay.net import Communicator

    n = 4000
    orig = Communicator.exchange
    for value in (0.0, 1000.0):
        seen: list[np.ndarray] = []

        def exchange(self: Communicator, label: str, send: Any = None, recv: Any = None,
                     seen: list[np.ndarray] = seen) -> Any:
            out = orig(self, label, send, recv)
            if self.me == "p0" and label == "bits.t_matmul":
                seen.extend(a.copy() for a in out.get("p1", []))  # p0 adds its share in place next
            return out

        def prog(rt: Protocol, x: Any = None, y: Any = None) -> Any:
            bm = BitMatrix(rt, [("p0", 3)], {0: np.ones((n, 3), np.uint8)} if rt.me == "p0" else {}, n)
            ys = share(rt, "p1", y, shape=(n, 1))
            bm.t_matmul(ys, ys.frac)  # no shift: p0's share plus the message would be y exactly
            return ys.sh

        Communicator.exchange = exchange  # type: ignore[method-assign]
        try:
            mine = run_local(prog, "semi2k", kwargs={"p1": {"y": np.full((n, 1), value)}})["p0"][0]
        finally:
            Communicator.exchange = orig  # type: ignore[method-assign]
        (received,) = seen
        opened = ((mine & np.uint64(0xFFFFFFFF)) + received.astype(np.uint64)) & np.uint64(0xFFFFFFFF)
        w = opened.astype(np.int64)
        for bit in (0, 1, 16, 31):
            assert abs(((w >> bit) & 1).mean() - 0.5) < 0.03
        assert abs(w.mean() / 2.0**32 - 0.5) < 0.03
