from __future__ import annotations

import numpy as np
import pytest
from conftest import load_json_vectors, load_vectors

from veilpay.crypto import Prg, SeedAgreement, derive_seed, random_seed
from veilpay.errors import InvalidInput


@pytest.mark.parametrize("case", ["gcm-spec-tc2-keystream.txt", "gcm-spec-tc3-keystream.txt"])
def test_prg_keystream_matches_the_gcm_spec_counter_blocks(case: str) -> None:
    (v,) = load_vectors(f"aes_gcm/{case}")
    pt, ct = bytes.fromhex(v["PLAINTEXT"]), bytes.fromhex(v["CIPHERTEXT"])
    prg = Prg.from_key_segment(bytes.fromhex(v["KEY"]), int(v["IV"], 16))
    stream = prg.uint64(len(pt) // 8).tobytes()
    assert bytes(a ^ b for a, b in zip(stream, pt, strict=True)) == ct


def test_prg_draws_continue_across_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    import veilpay.crypto.prg as prg_module

    monkeypatch.setattr(prg_module, "_SEGMENT", 64)  # a segment of 4 blocks
    key = bytes(range(16))
    whole = Prg.from_key_segment(key).bytes(200)
    pieces = b"".join(Prg.from_key_segment(key, seg).bytes(64) for seg in range(4))[:200]
    assert whole == pieces
    drip = Prg.from_key_segment(key)
    assert b"".join(drip.bytes(7) for _ in range(29))[:200] == whole


def test_x25519_matches_rfc7748_and_seeds_agree() -> None:
    (v,) = load_vectors("x25519/rfc7748-6.1.txt")
    alice = SeedAgreement.from_private_bytes(bytes.fromhex(v["ALICE_PRIVATE"]))
    bob = SeedAgreement.from_private_bytes(bytes.fromhex(v["BOB_PRIVATE"]))
    assert alice.public_bytes().hex() == v["ALICE_PUBLIC"]
    assert bob.public_bytes().hex() == v["BOB_PUBLIC"]
    session = b"s" * 16
    s1 = alice.derive(bob.public_bytes(), session, "alice", "bob")
    s2 = bob.derive(alice.public_bytes(), session, "bob", "alice")
    assert s1 == s2 and len(s1) == 32
    assert alice.derive(bob.public_bytes(), b"t" * 16, "alice", "bob") != s1


def test_low_order_point_is_refused() -> None:
    with pytest.raises(InvalidInput):
        SeedAgreement.generate().derive(bytes(32), b"s" * 16, "a", "b")


def test_prg_is_deterministic_per_seed_and_draws_continue() -> None:
    seed = random_seed()
    a, b = Prg(seed), Prg(seed)
    assert np.array_equal(a.uint64((4, 5)), b.uint64(20).reshape(4, 5))
    assert not np.array_equal(a.uint64(8), Prg(seed).uint64(8))
    assert derive_seed(seed, "x") != derive_seed(seed, "y")
    bits = a.bits(10_000)
    assert set(np.unique(bits)) <= {0, 1} and 4000 < bits.sum() < 6000
    with pytest.raises(InvalidInput):
        Prg(b"short")
    assert "keyed" in repr(a)


# ---------------------------------------------------------------- group keys
@pytest.mark.parametrize("vec", load_json_vectors("groupkey/v1.json"))
def test_group_key_vectors(vec: dict[str, str]) -> None:
    """The pinned format, and the same bytes from cryptography's HKDF and AES-GCM
    called directly (so the vector is not only our code agreeing with itself)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from veilpay.crypto.groupkey import GroupKey

    key, info, pt = bytes.fromhex(vec["key"]), bytes.fromhex(vec["info"]), bytes.fromhex(vec["plaintext"])
    sealed = bytes.fromhex(vec["sealed"])
    assert GroupKey(key).seal(pt, info) == sealed
    k = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"veilpay/group/v1\x00" + info).derive(key)
    assert AESGCM(k).encrypt(bytes(12), pt, info) == sealed
    assert GroupKey(key).open(sealed, info) == pt


def test_group_key_refuses_reuse_tampering_and_other_contexts() -> None:
    from veilpay.crypto.groupkey import GroupKey, GroupOpenError

    gk = GroupKey.generate()
    ct = gk.seal(b"order", b"ctx-1")
    with pytest.raises(InvalidInput):
        gk.seal(b"another order", b"ctx-1")  # the zero nonce never repeats under one derived key
    assert gk.open(ct, b"ctx-1") == b"order"
    for bad_ct, info, key in ((ct, b"ctx-2", gk), (bytes([ct[0] ^ 1]) + ct[1:], b"ctx-1", gk),
                              (ct, b"ctx-1", GroupKey.generate())):
        with pytest.raises(GroupOpenError):
            key.open(bad_ct, info)
    with pytest.raises(InvalidInput):
        GroupKey(b"short")
    assert "secret" in repr(gk) and gk.to_bytes().hex() not in repr(gk)


def test_session_key_random_nonces_and_context() -> None:
    from veilpay.crypto.groupkey import GroupOpenError, SessionKey

    sk = SessionKey.generate()
    a, b = sk.seal(b"same", b"ctx"), sk.seal(b"same", b"ctx")
    assert a != b and a[:12] != b[:12]  # a fresh nonce each time: one key seals many messages
    assert sk.open(a, b"ctx") == sk.open(b, b"ctx") == b"same"
    assert SessionKey(sk.to_bytes()).open(a, b"ctx") == b"same"
    for bad, info, key in ((a, b"other", sk), (a[:12] + bytes([a[12] ^ 1]) + a[13:], b"ctx", sk), (a[:20], b"ctx", sk),
                           (a, b"ctx", SessionKey.generate())):
        with pytest.raises(GroupOpenError):
            key.open(bad, info)
    with pytest.raises(InvalidInput):
        SessionKey(b"short")
    assert "secret" in repr(sk) and sk.to_bytes().hex() not in repr(sk)


@pytest.mark.parametrize("vec", load_json_vectors("groupkey/session_v1.json"))
def test_session_key_vectors(vec: dict[str, str]) -> None:
    """Pinned session-key messages; the construction checked with cryptography's HKDF
    and AESGCM called directly."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from veilpay.crypto.groupkey import SessionKey

    raw, ad, sealed = bytes.fromhex(vec["key"]), bytes.fromhex(vec["ad"]), bytes.fromhex(vec["sealed"])
    pt = bytes.fromhex(vec["plaintext"])
    assert SessionKey(raw).open(sealed, ad) == pt
    k = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"veilpay/session/v1").derive(raw)
    assert AESGCM(k).decrypt(sealed[:12], sealed[12:], ad) == pt


