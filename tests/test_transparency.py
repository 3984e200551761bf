"""The key transparency log's Merkle tree against the RFC 6962 reference tree (roots,
inclusion and consistency proofs from tests/vectors/merkle/), and its proofs against a
naive recursive implementation written from RFC 9162 for larger trees."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from conftest import load_json_vectors
from hypothesis import given, settings
from hypothesis import strategies as st

from veilpay.sdk.transparency import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    tree_hash,
    verify_consistency,
    verify_inclusion,
)

V: dict[str, Any] = load_json_vectors("merkle/rfc6962.json")[0]  # type: ignore[assignment]
LEAVES = [leaf_hash(bytes.fromhex(x)) for x in V["leaves"]]
ROOTS = [bytes.fromhex(r) for r in V["roots"]]


def test_roots_of_the_reference_tree() -> None:
    assert tree_hash([]) == EMPTY_ROOT == bytes.fromhex(V["empty_root"])
    assert [tree_hash(LEAVES[:n]) for n in range(1, 9)] == ROOTS


@pytest.mark.parametrize("case", V["inclusion"], ids=lambda c: f"{c['index']}-of-{c['size']}")
def test_inclusion_vectors(case: dict[str, Any]) -> None:
    i, n = case["index"], case["size"]
    path = [bytes.fromhex(h) for h in case["path"]]
    assert inclusion_proof(i, LEAVES[:n]) == path
    assert verify_inclusion(i, n, LEAVES[i], path, ROOTS[n - 1])


@pytest.mark.parametrize("case", V["consistency"], ids=lambda c: f"{c['first']}-to-{c['second']}")
def test_consistency_vectors(case: dict[str, Any]) -> None:
    a, b = case["first"], case["second"]
    proof = [bytes.fromhex(h) for h in case["proof"]]
    assert consistency_proof(a, LEAVES[:b]) == proof
    assert verify_consistency(a, b, proof, ROOTS[a - 1], ROOTS[b - 1])


def test_every_proof_of_the_reference_tree_verifies_and_no_other() -> None:
    for n in range(1, 9):
        for i in range(n):
            p = inclusion_proof(i, LEAVES[:n])
            assert verify_inclusion(i, n, LEAVES[i], p, ROOTS[n - 1])
            assert not verify_inclusion(i, n, LEAVES[(i + 1) % 8], p, ROOTS[n - 1])
            if n < 8:
                assert not verify_inclusion(i, n + 1, LEAVES[i], p, ROOTS[n])
    for a in range(0, 9):
        for b in range(a, 9):
            p = consistency_proof(a, LEAVES[:b])
            ra, rb = (ROOTS[a - 1] if a else EMPTY_ROOT), (ROOTS[b - 1] if b else EMPTY_ROOT)
            assert verify_consistency(a, b, p, ra, rb)
            if 0 < a < b:
                other = ROOTS[(b + 3) % 8]
                assert other == rb or not verify_consistency(a, b, p, ra, other)
                assert not verify_consistency(a, b, p[1:], ra, rb)


def _mth(d: list[bytes]) -> bytes:  # RFC 9162's definition, written out naively
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < len(d):
        k *= 2
    return hashlib.sha256(b"\x01" + _mth(d[:k]) + _mth(d[k:])).digest()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300), st.data())
def test_larger_trees_against_the_definition(n: int, data: Any) -> None:
    raw = [f"entry-{i}".encode() for i in range(n)]
    leaves = [leaf_hash(x) for x in raw]
    root = tree_hash(leaves)
    assert root == _mth(raw)
    i = data.draw(st.integers(0, n - 1))
    assert verify_inclusion(i, n, leaves[i], inclusion_proof(i, leaves), root)
    a = data.draw(st.integers(0, n))
    assert verify_consistency(a, n, consistency_proof(a, leaves), tree_hash(leaves[:a]), root)
    if 0 < a < n:  # a forked history: the same size, one leaf changed
        forked = leaves[:]
        forked[a - 1] = leaf_hash(b"evil")
        assert not verify_consistency(a, n, consistency_proof(a, forked), tree_hash(leaves[:a]), tree_hash(forked))
