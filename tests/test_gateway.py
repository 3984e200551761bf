"""The encrypted gateway, its SDK and the reference partners, in one process: every
party is an ASGI app behind a routing transport (tests/gateway_net.py), each with its
own keys and SQLite file. Storage and API cases also run on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import load_json_vectors
from gateway_net import Net, run
from sqlalchemy import func, select

from veilpay.crypto.hpke import HpkePrivateKey
from veilpay.crypto.signing import SigningKey
from veilpay.crypto.tokens import TokenKey, ct_equal, hmac_sha256
from veilpay.errors import ConfigError, DecryptionError, InvalidInput, MalformedBody, SignatureError
from veilpay.gateway.codes import CODES, result
from veilpay.gateway.store import outbox, payments, refunds
from veilpay.sdk import MINOR_UNITS, open_fields, parse_amount, retire_key, rotate_keys, seal_fields, sign_headers
from veilpay.sdk.money import InvalidAmount, UnsupportedCurrency
from veilpay.sdk.signing import SignedHeaders, request_digest, verify_json, verify_message

JPY = {"currency": "JPY", "value": "1000"}
ORDER = {"orderId": "A-1", "goods": "matcha", "buyer": {"email": "x@example.com"}}


# ---------------------------------------------------------------- primitives
@pytest.mark.parametrize("v", load_json_vectors("ed25519/rfc8032.json"))
def test_ed25519_rfc8032(v: dict[str, str]) -> None:
    key = SigningKey.from_bytes(bytes.fromhex(v["secret"]))
    assert key.public().to_bytes().hex() == v["public"]
    sig = key.sign(bytes.fromhex(v["message"]))
    assert sig.hex() == v["signature"]
    assert key.public().verify(sig, bytes.fromhex(v["message"]))
    assert not key.public().verify(sig, bytes.fromhex(v["message"]) + b"x")


@pytest.mark.parametrize("v", load_json_vectors("hmac/rfc4231.json"))
def test_hmac_sha256_rfc4231(v: dict[str, str]) -> None:
    assert hmac_sha256(bytes.fromhex(v["key"]), bytes.fromhex(v["data"])).hex() == v["mac"]


@pytest.mark.parametrize("suite", ["x25519", "mlkem768-x25519"])
def test_hpke_round_trip_and_context_binding(suite: str) -> None:
    k = HpkePrivateKey.generate(suite)
    again = HpkePrivateKey(suite, k.to_bytes())
    ct = again.public().seal(b"secret order", b"ctx-1")
    assert k.open(ct, b"ctx-1") == b"secret order"
    with pytest.raises(DecryptionError):
        k.open(ct, b"ctx-2")
    with pytest.raises(DecryptionError):
        k.open(ct[:-1] + bytes([ct[-1] ^ 1]), b"ctx-1")
    with pytest.raises(DecryptionError):
        HpkePrivateKey.generate(suite).open(ct, b"ctx-1")
    with pytest.raises(ConfigError):
        HpkePrivateKey(suite, b"short")


def test_tokens_are_stable_per_key_and_unlinkable_across_keys() -> None:
    a, b = TokenKey.generate(), TokenKey.generate()
    assert a.token("mpp-1", "u1") == a.token("mpp-1", "u1")
    assert a.token("mpp-1", "u1") != a.token("mpp-1", "u2")
    assert a.token("mpp-1", "u1") != b.token("mpp-1", "u1")
    assert ct_equal("abc", "abc") and not ct_equal("abc", "abd")


def test_amounts() -> None:
    assert parse_amount({"currency": "JPY", "value": "1"}) == ("JPY", 1)
    for bad in ("-5", "1.5", "01", "", "1e3", " 1"):
        with pytest.raises(InvalidAmount):
            parse_amount({"currency": "USD", "value": bad})
    with pytest.raises(InvalidAmount):
        parse_amount({"currency": "USD", "value": "10000000000000000"})
    with pytest.raises(InvalidAmount):
        parse_amount({"currency": "USD", "value": 5})
    for cur in ("XXX", "jpy", "US"):
        with pytest.raises(UnsupportedCurrency):
            parse_amount({"currency": cur, "value": "5"})


def test_signature_checks(tmp_path: Path) -> None:
    key = SigningKey.generate()
    now = time.time()
    h = {k.lower(): v for k, v in sign_headers(key, 3, "POST", "/p", "acqp-1", b"{}", now).items()}
    lookup = {3: key.public()}.get
    assert verify_message(h, "POST", "/p", b"{}", lookup, now, 60).key_version == 3
    with pytest.raises(SignatureError) as e:
        verify_message(h, "POST", "/p", b"{ }", lookup, now, 60)
    assert e.value.code == "INVALID_SIGNATURE"
    with pytest.raises(SignatureError) as e:
        verify_message(h, "POST", "/other", b"{}", lookup, now, 60)
    assert e.value.code == "INVALID_SIGNATURE"
    with pytest.raises(SignatureError) as e:
        verify_message(h, "POST", "/p", b"{}", lookup, now + 120, 60)
    assert e.value.code == "REQUEST_TIME_EXPIRED"
    with pytest.raises(SignatureError) as e:
        verify_message(h, "POST", "/p", b"{}", {4: key.public()}.get, now, 60)
    assert e.value.code == "KEY_NOT_FOUND"
    with pytest.raises(SignatureError):
        verify_message({**h, "signature": "algorithm=RSA256,keyVersion=3,signature=AAAA"}, "POST", "/p", b"{}",
                       lookup, now, 60)


def test_verify_json_verifies_parses_and_requires_an_object() -> None:
    """The one helper for a signed message's body: (signed headers, object); a bad
    signature stays a SignatureError, and a body that is signed but not a JSON object is
    MalformedBody carrying the verified headers (so the answer can be bound to it)."""
    key = SigningKey.generate()
    now = time.time()
    lookup = {3: key.public()}.get

    def signed(body: bytes) -> dict[str, str]:
        return {k.lower(): v for k, v in sign_headers(key, 3, "POST", "/p", "acqp-1", body, now).items()}

    got, obj = verify_json(signed(b'{"a":1}'), "POST", "/p", b'{"a":1}', lookup, now, 60)
    assert (got.client_id, obj) == ("acqp-1", {"a": 1})
    with pytest.raises(SignatureError):
        verify_json(signed(b'{"a":1}'), "POST", "/p", b'{"a":2}', lookup, now, 60)
    for body in (b"[1]", b"{not json", b"\xff", b'"text"'):
        with pytest.raises(MalformedBody) as e:
            verify_json(signed(body), "POST", "/p", body, lookup, now, 60)
        assert e.value.code == "MALFORMED_REQUEST"
        assert isinstance(e.value.signed, SignedHeaders) and e.value.signed.client_id == "acqp-1"


def test_envelopes_bind_recipient_purpose_and_payment(tmp_path: Path) -> None:
    net = Net(tmp_path)
    mpp, acqp = net.keys("mpp-1"), net.keys("acqp-1")
    env = seal_fields({"code": "281012"}, mpp.public, "paymentCode", "acqp-1/r1")
    assert open_fields(env, mpp, "paymentCode", "acqp-1/r1") == {"code": "281012"}
    for purpose, ctx, who in (("order", "acqp-1/r1", mpp), ("paymentCode", "acqp-1/r2", mpp),
                              ("paymentCode", "acqp-1/r1", acqp)):
        with pytest.raises(DecryptionError):
            open_fields(env, who, purpose, ctx)


def test_a_group_opens_with_one_hpke_open_and_its_links_cannot_move(tmp_path: Path, monkeypatch: Any) -> None:
    """seal_group: one HPKE seal and one open for a payment's code, order and device
    data; a linked group opens only beside its own first, in its own payment, for its
    own purpose; single envelopes still open through open_group."""
    from veilpay.crypto.hpke import HpkePrivateKey, HpkePublicKey
    from veilpay.sdk import open_group, seal_group

    net = Net(tmp_path)
    mpp, acqp = net.keys("mpp-1"), net.keys("acqp-1")
    groups = {"paymentCode": {"code": "281012"}, "order": {"orderId": "A-1"}, "env": {"ip": "198.51.100.7"}}
    calls = {"seal": 0, "open": 0}
    seal, open_ = HpkePublicKey.seal, HpkePrivateKey.open

    def counting_seal(self: Any, pt: bytes, info: bytes) -> bytes:
        calls["seal"] += 1
        return seal(self, pt, info)

    def counting_open(self: Any, ct: bytes, info: bytes) -> bytes:
        calls["open"] += 1
        return open_(self, ct, info)

    monkeypatch.setattr(HpkePublicKey, "seal", counting_seal)
    monkeypatch.setattr(HpkePrivateKey, "open", counting_open)
    a = seal_group(groups, mpp.public, "acqp-1/r1")
    assert [e.get("with") for e in a.values()] == [None, "paymentCode", "paymentCode"]
    assert open_group(a, mpp, "acqp-1/r1") == groups
    assert calls == {"seal": 1, "open": 1}
    b = seal_group(groups, mpp.public, "acqp-1/r2")
    bad_groups: list[dict[str, Any]] = [
        {**a, "order": b["order"]},                                    # linked group of another payment
        {"order": a["order"], "env": a["env"]},                        # no first
        {**a, "order": {**a["order"], "with": "env"}},                 # linked to another purpose
        {"paymentCode": a["paymentCode"], "env": a["order"]},          # moved to another purpose
        {**a, "order": seal_fields(groups["order"], mpp.public, "order", "acqp-1/r1")},  # a single substitute
    ]
    for bad in bad_groups:
        with pytest.raises(DecryptionError):
            open_group(bad, mpp, "acqp-1/r1")
    for ctx, who in (("acqp-1/r2", mpp), ("acqp-1/r1", acqp)):
        with pytest.raises(DecryptionError):
            open_group(a, who, ctx)
    with pytest.raises(DecryptionError):
        open_fields(a["order"], mpp, "order", "acqp-1/r1")  # a linked group alone
    assert open_fields(a["paymentCode"], mpp, "paymentCode", "acqp-1/r1") == groups["paymentCode"]
    singles = {p: seal_fields(f, mpp.public, p, "acqp-1/r1") for p, f in groups.items()}
    assert open_group(singles, mpp, "acqp-1/r1") == groups


def test_a_session_seals_many_messages_under_one_hpke_seal(tmp_path: Path) -> None:
    """SessionSealer (the MPP's customerInfo): one HPKE seal per recipient per session,
    each message opening alone, bound to its payment and recipient; a new session after
    max_uses and when the recipient's key version changes."""
    from veilpay.crypto.signing import b64d, b64e
    from veilpay.sdk import SessionSealer

    net = Net(tmp_path)
    mpp, acqp, acqp2 = net.keys("mpp-1"), net.keys("acqp-1"), net.keys("acqp-2")
    sealer = SessionSealer(max_uses=3)
    envs = [sealer.seal({"n": i}, acqp.public, "customerInfo", f"acqp-1/r{i}") for i in range(3)]
    assert sealer.heads == 1 and len({e["head"] for e in envs}) == 1 and len({e["ct"] for e in envs}) == 3
    for i, e in enumerate(envs):
        assert open_fields(e, acqp, "customerInfo", f"acqp-1/r{i}") == {"n": i}
    head = bytearray(b64d(envs[0]["head"]))
    head[-1] ^= 1
    for env, who, ctx in ((envs[0], acqp, "acqp-1/r1"),                   # moved to another payment
                          (envs[0], acqp2, "acqp-1/r0"),                  # another recipient
                          (envs[0], mpp, "acqp-1/r0"),
                          ({**envs[0], "head": b64e(bytes(head))}, acqp, "acqp-1/r0"),  # altered head
                          ({**envs[0], "sid": envs[1]["sid"] + "x"}, acqp, "acqp-1/r0"),  # another session id
                          ({**envs[0], "ct": envs[1]["ct"]}, acqp, "acqp-1/r0")):  # another message's body
        with pytest.raises(DecryptionError):
            open_fields(env, who, "customerInfo", ctx)
    with pytest.raises(DecryptionError):
        open_fields(envs[0], acqp, "order", "acqp-1/r0")  # another purpose
    fourth = sealer.seal({"n": 3}, acqp.public, "customerInfo", "acqp-1/r3")
    assert sealer.heads == 2 and fourth["sid"] != envs[0]["sid"]  # max_uses reached: a new session
    assert rotate_keys(tmp_path / "keys" / "acqp-1") == 2
    rotated = net.keys("acqp-1")
    fifth = sealer.seal({"n": 4}, rotated.public, "customerInfo", "acqp-1/r4")
    assert sealer.heads == 3 and fifth["kv"] == 2
    assert open_fields(fifth, rotated, "customerInfo", "acqp-1/r4") == {"n": 4}
    with pytest.raises(InvalidInput):
        SessionSealer(max_uses=0)


def test_session_groups_open_together_and_heads_open_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SessionSealer.seal_group: a message's groups share their session's head; the
    recipient opens a session's head once (its key cache) and every message after
    that with no HPKE open; open_group refuses groups of two sessions or a session's
    group beside a single envelope; an altered head is not served from the cache."""
    from veilpay.crypto.hpke import HpkePrivateKey
    from veilpay.crypto.signing import b64d, b64e
    from veilpay.sdk import SessionSealer, open_group

    net = Net(tmp_path)
    mpp = net.keys("mpp-1")
    opens = {"n": 0}
    open_ = HpkePrivateKey.open

    def counting_open(self: Any, ct: bytes, info: bytes) -> bytes:
        opens["n"] += 1
        return open_(self, ct, info)

    monkeypatch.setattr(HpkePrivateKey, "open", counting_open)
    sealer = SessionSealer()
    groups = {"paymentCode": {"code": "281012"}, "order": {"orderId": "A-1"}, "env": {"ip": "198.51.100.7"}}
    msgs = [sealer.seal_group(groups, mpp.public, f"acqp-1/r{i}") for i in range(5)]
    assert sealer.heads == 1 and len({e["head"] for m in msgs for e in m.values()}) == 1
    assert all(open_group(m, mpp, f"acqp-1/r{i}") == groups for i, m in enumerate(msgs))
    assert opens["n"] == 1 and len(mpp.opened) == 1
    other = SessionSealer().seal_group(groups, mpp.public, "acqp-1/r0")
    head = bytearray(b64d(msgs[0]["order"]["head"]))
    head[-1] ^= 1
    for bad in ({**msgs[0], "env": other["env"]},                                         # two sessions
                {**msgs[0], "env": seal_fields(groups["env"], mpp.public, "env", "acqp-1/r0")},  # beside a single
                {**msgs[0], "env": msgs[1]["env"]},                                       # another message's
                {p: {**e, "head": b64e(bytes(head))} for p, e in msgs[0].items()}):       # altered head
        with pytest.raises(DecryptionError):
            open_group(bad, mpp, "acqp-1/r0")
    assert len(mpp.opened) == 1 and opens["n"] == 2  # only the altered head was tried, and it kept nothing


def test_session_key_cache_is_bounded_and_forgets() -> None:
    from veilpay.crypto.groupkey import SessionKey, SessionKeys

    cache = SessionKeys(max_entries=2, max_age_s=60)
    keys = [SessionKey.generate() for _ in range(3)]
    for i, k in enumerate(keys):
        cache.put(1, f"s{i}", b"head", k)
    assert cache.get(1, "s0", b"head") is None and cache.get(1, "s2", b"head") is keys[2]
    assert cache.get(2, "s2", b"head") is None and cache.get(1, "s2", b"head!") is None
    assert "secret" in repr(cache) and len(cache) == 2
    stale = SessionKeys(max_age_s=1e-9)
    stale.put(1, "s", b"h", keys[0])
    assert stale.get(1, "s", b"h") is None and len(stale) == 0
    with pytest.raises(InvalidInput):
        SessionKeys(max_entries=0)


def test_mpp_seals_customer_info_once_per_session(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path)
        await net.wallet("u1", 10**7)
        c = net.client()
        answers = [await c.pay(f"s-{i}", JPY, await net.code("u1"), ORDER) for i in range(4)]
        assert [a.code for a in answers] == ["SUCCESS"] * 4
        assert [a.customer_info()["orderEcho"] for a in answers] == ["A-1"] * 4
        assert net.partner_apps["mpp-1"].state.sessions.heads == 1
        assert len({a.body["customerInfo"]["head"] for a in answers}) == 1
    run(body())


def test_gateway_and_mpp_take_grouped_and_single_envelopes(tmp_path: Path) -> None:
    """The SDK sends a payment's groups in its session with the MPP; a partner on
    linked groups or single envelopes (earlier SDKs) still pays; groups of two
    sessions, a session's group beside a single envelope, a linked group beside a
    single first, or under another key version, are refused by the gateway before they
    reach the MPP."""
    from veilpay.sdk import SessionSealer, seal_group

    async def body() -> None:
        net = Net(tmp_path)
        await net.wallet("u1", 10**6)
        c = net.client()
        d = await c.directory()
        mpp = d.get("mpp-1")
        sent = c._pay_body(d, "g-1", JPY, await net.code("u1"), ORDER, {"ip": "198.51.100.1"})
        envs = (sent["paymentMethod"]["paymentMethodId"], sent["order"], sent["env"])
        assert {e["v"] for e in envs} == {3} and len({(e["sid"], e["head"]) for e in envs}) == 1
        assert (await c.call("/v1/payments/pay", sent)).code == "SUCCESS"
        g = seal_group({"paymentCode": {"code": await net.code("u1")}, "order": ORDER, "env": {"ip": "198.51.100.1"}},
                       mpp, "acqp-1/g-2")
        linked = {**sent, "paymentRequestId": "g-2", "order": g["order"], "env": g["env"],
                  "paymentMethod": {**sent["paymentMethod"], "paymentMethodId": g["paymentCode"]}}
        assert linked["order"]["with"] == "paymentCode" and linked["env"]["with"] == "paymentCode"
        assert (await c.call("/v1/payments/pay", linked)).code == "SUCCESS"
        single = {**sent, "paymentRequestId": "g-3",
                  "paymentMethod": {**sent["paymentMethod"], "paymentMethodId": seal_fields(
                      {"code": await net.code("u1")}, mpp, "paymentCode", "acqp-1/g-3")},
                  "order": seal_fields(ORDER, mpp, "order", "acqp-1/g-3")}
        del single["env"]
        assert (await c.call("/v1/payments/pay", single)).code == "SUCCESS"
        mixed = {**linked, "paymentRequestId": "g-4",
                 "paymentMethod": {**sent["paymentMethod"], "paymentMethodId": single["paymentMethod"]["paymentMethodId"]}}
        other_kv = {**linked, "paymentRequestId": "g-5", "env": {**linked["env"], "kv": linked["env"]["kv"] + 1}}
        single_beside = {**linked, "paymentRequestId": "g-6", "env": seal_fields({"ip": "x"}, mpp, "env", "acqp-1/g-6")}
        two_sessions = {**sent, "paymentRequestId": "g-7",
                        "env": SessionSealer().seal({"ip": "x"}, mpp, "env", "acqp-1/g-7")}
        session_beside_single = {**sent, "paymentRequestId": "g-8",
                                 "order": seal_fields(ORDER, mpp, "order", "acqp-1/g-8")}
        session_beside_linked = {**sent, "paymentRequestId": "g-9", "order": linked["order"]}
        for bad in (mixed, other_kv, single_beside, two_sessions, session_beside_single, session_beside_linked):
            assert (await c.call("/v1/payments/pay", bad)).code == "SEALED_FIELD_INVALID"
        assert _count(net, payments) == 3
    run(body())


# ---------------------------------------------------------------- helpers
async def _pay(net: Net, req: str = "r1", amount: dict[str, str] = JPY, user: str = "u1", balance: int = 10**6,
               client: Any = None) -> Any:
    if balance:
        await net.wallet(user, balance)
    code = await net.code(user)
    c = client or net.client()
    return await c.pay(req, amount, code, ORDER, {"ip": "198.51.100.1", "deviceId": "dev-1"})


async def _raw(net: Net, path: str, body: bytes, *, client: str = "acqp-1", headers: dict[str, str] | None = None,
               key: Any = None) -> httpx.Response:
    keys = net.keys(client) if key is None else key
    v, sk = keys.signer()
    h = sign_headers(sk, v, "POST", path, client, body, time.time())
    h["Content-Type"] = "application/json"
    h.update(headers or {})
    async with httpx.AsyncClient(transport=net.router) as c:
        return await c.post(f"http://gateway.test{path}", content=body, headers=h)


def _count(net: Net, table: Any) -> int:
    with net.gateway.state.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_url")


# ---------------------------------------------------------------- API
def test_pay_refund_cancel_lifecycle(tmp_path: Path, database: str | None) -> None:
    async def body() -> None:
        net = Net(tmp_path, database=database)
        r = await _pay(net)
        assert (r.code, r.status) == ("SUCCESS", "S")
        info = r.customer_info()
        assert info["customerName"] == "M***********" and info["orderEcho"] == "A-1"
        assert await net.balance("u1") == 10**6 - 38000  # 1000 JPY at 0.38 PHP, in centavos
        assert await net.deliver() == 1
        notes = (await net.notifications())["notifications"]
        assert [(n["kind"], n["code"]) for n in notes] == [("PAYMENT_RESULT", "SUCCESS")]
        c = net.client()
        q = await c.inquiry_payment(payment_request_id="r1")
        assert q.status == "S" and q.body["paymentId"] == r.body["paymentId"]
        part = await c.refund("rf1", {"currency": "JPY", "value": "400"}, payment_id=r.body["paymentId"],
                              reason="customer changed mind", mpp_id="mpp-1")
        assert part.code == "SUCCESS"
        over = await c.refund("rf2", {"currency": "JPY", "value": "601"}, payment_request_id="r1")
        assert over.code == "REFUND_AMOUNT_EXCEED"
        rest = await c.refund("rf3", {"currency": "JPY", "value": "600"}, payment_request_id="r1")
        assert rest.code == "SUCCESS"
        assert await net.balance("u1") == 10**6  # the full refund gives back exactly what was debited
        assert (await c.inquiry_refund(refund_request_id="rf1")).status == "S"
        assert (await c.inquiry_refund(refund_request_id="rf2")).status == "F"
        assert (await c.cancel_payment(payment_request_id="r1")).code == "ORDER_STATUS_INVALID"
        assert await net.deliver() == 2
        # a cancel within the window gives the money back
        r2 = await _pay(net, "r2", balance=0)
        assert r2.code == "SUCCESS"
        cancel = await c.cancel_payment(payment_id=r2.body["paymentId"])
        assert cancel.code == "SUCCESS" and "cancelTime" in cancel.body
        assert await net.balance("u1") == 10**6
        q2 = await c.inquiry_payment(payment_request_id="r2")
        assert q2.body["paymentStatus"] == "CANCELLED" and q2.status == "F"
        assert (await c.refund("rf4", {"currency": "JPY", "value": "1"}, payment_request_id="r2")).code == \
            "ORDER_STATUS_INVALID"
        # declined by the MPP
        poor = await _pay(net, "r3", user="u2", balance=10)
        assert (poor.code, poor.status) == ("USER_BALANCE_NOT_ENOUGH", "F")
        assert (await c.inquiry_payment(payment_id="pay_" + "0" * 32)).code == "ORDER_NOT_EXIST"
    run(body())


def test_idempotency(tmp_path: Path, database: str | None) -> None:
    async def body() -> None:
        net = Net(tmp_path, database=database)
        await net.wallet("u1", 10**6)
        code = await net.code("u1")
        c = net.client()
        first = await c.pay("same", JPY, code, ORDER)
        # the application sends the same payment again: new ciphertexts, same visible fields
        again = await c.pay("same", JPY, code, ORDER)
        assert again.body["paymentId"] == first.body["paymentId"] and again.code == "SUCCESS"
        # ... or after a restart, in a new session with the MPP
        restarted = await net.client().pay("same", JPY, code, ORDER)
        assert restarted.body["paymentId"] == first.body["paymentId"] and restarted.code == "SUCCESS"
        assert await net.balance("u1") == 10**6 - 38000
        other = await c.pay("same", {"currency": "JPY", "value": "999"}, code, ORDER)
        assert other.code == "REPEAT_REQ_INCONSISTENT"
        assert _count(net, payments) == 1
        ok = await c.refund("rr", {"currency": "JPY", "value": "10"}, payment_request_id="same")
        dup = await c.refund("rr", {"currency": "JPY", "value": "10"}, payment_request_id="same")
        assert dup.body["refundId"] == ok.body["refundId"]
        assert (await c.refund("rr", {"currency": "JPY", "value": "11"}, payment_request_id="same")).code == \
            "REPEAT_REQ_INCONSISTENT"
        assert _count(net, refunds) == 1
        # another acquirer may use the same request id for its own payment
        other_acqp = await _pay(net, "same", client=net.client("acqp-2"), user="u9")
        assert other_acqp.code == "SUCCESS" and other_acqp.body["paymentId"] != first.body["paymentId"]
        # ... and cannot see or refund acqp-1's payment
        assert (await net.client("acqp-2").inquiry_payment(payment_id=first.body["paymentId"])).code == \
            "ORDER_NOT_EXIST"
    run(body())


def test_replay_and_authentication_refusals(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path)
        path = "/v1/payments/inquiryPayment"
        raw = json.dumps({"paymentRequestId": "nope"}).encode()
        keys = net.keys("acqp-1")
        v, sk = keys.signer()
        h = sign_headers(sk, v, "POST", path, "acqp-1", raw, time.time())
        h["Content-Type"] = "application/json"
        async with httpx.AsyncClient(transport=net.router) as c:
            first = await c.post("http://gateway.test" + path, content=raw, headers=h)
            second = await c.post("http://gateway.test" + path, content=raw, headers=h)
        assert first.json()["result"]["resultCode"] == "ORDER_NOT_EXIST"
        assert (second.status_code, second.json()["result"]["resultCode"]) == (401, "REPLAYED_REQUEST")
        stale = await _raw(net, path, raw, headers={"Request-Time": "2020-01-01T00:00:00.000Z"})
        assert stale.json()["result"]["resultCode"] in ("INVALID_SIGNATURE", "REQUEST_TIME_EXPIRED")
        mpp_keys = net.keys("mpp-1")  # a partner that is not an acquirer
        assert (await _raw(net, path, raw, client="mpp-1", key=mpp_keys)).json()["result"]["resultCode"] == \
            "INVALID_CLIENT"
        forged = await _raw(net, path, raw, client="acqp-2", key=keys)  # signed with acqp-1's key
        assert forged.json()["result"]["resultCode"] == "INVALID_SIGNATURE"
        unsigned = await _raw(net, path, raw, headers={"Signature": ""})
        assert unsigned.json()["result"]["resultCode"] == "INVALID_SIGNATURE"
    run(body())


def test_bad_input_gets_a_code_and_stores_nothing(tmp_path: Path, database: str | None) -> None:
    async def body() -> None:
        net = Net(tmp_path, database=database, max_body_bytes=4096)
        await net.wallet("u1", 10**6)
        code = await net.code("u1")
        c = net.client()
        d = await c.directory()
        good = c._pay_body(d, "bad-1", JPY, code, ORDER, None)
        path = "/v1/payments/pay"

        async def answer(body: Any, **kw: Any) -> tuple[int, str]:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = await _raw(net, path, raw, **kw)
            return r.status_code, r.json()["result"]["resultCode"]

        cases = {
            "MALFORMED_REQUEST": b"{not json",
            "PARAM_ILLEGAL": {**good, "surprise": 1},
            "CURRENCY_NOT_SUPPORT": {**good, "paymentAmount": {"currency": "XXX", "value": "100"}},
            "INVALID_AMOUNT": {**good, "paymentAmount": {"currency": "JPY", "value": "-100"}},
            "INVALID_CODE": {**good, "paymentMethod": {**good["paymentMethod"], "codeIssuer": "9999"}},
            "SEALED_FIELD_INVALID": {**good, "order": {"orderId": "in the clear"}},
            "REQUEST_TOO_LARGE": {**good, "order": {"pad": "x" * 5000}},
        }
        for expected, b in cases.items():
            assert (await answer(b))[1] == expected, expected
        assert (await answer({**good, "paymentAmount": {"currency": "JPY", "value": "1" + "0" * 16}}))[1] == \
            "INVALID_AMOUNT"
        assert (await answer(good, headers={"Content-Type": "text/plain"}))[1] == "MEDIA_TYPE_NOT_ACCEPTABLE"
        assert (await answer(good, client="acqp-9", key=net.keys("acqp-1")))[1] == "INVALID_CLIENT"
        assert _count(net, payments) == 0 and _count(net, outbox) == 0
        assert await net.balance("u1") == 10**6
        # refund above the remaining amount, and in the wrong currency
        r = await c.pay("ok", JPY, code, ORDER)
        assert r.code == "SUCCESS"
        assert (await c.refund("x1", {"currency": "JPY", "value": "1001"}, payment_request_id="ok")).code == \
            "REFUND_AMOUNT_EXCEED"
        assert (await c.refund("x2", {"currency": "USD", "value": "1"}, payment_request_id="ok")).code == \
            "CURRENCY_NOT_SUPPORT"
        assert await net.balance("u1") == 10**6 - 38000
        # an envelope cut from one payment and pasted into another does not open at the MPP
        code2 = await net.code("u1")
        b2 = c._pay_body(d, "paste", JPY, code2, ORDER, None)
        b2["paymentMethod"]["paymentMethodId"] = good["paymentMethod"]["paymentMethodId"]
        assert (await answer(b2))[1] == "PROCESS_FAIL"
        assert await net.balance("u1") == 10**6 - 38000
    run(body())


def test_key_rotation_and_retirement(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path)
        old = net.client()  # holds key version 1
        assert rotate_keys(tmp_path / "keys" / "acqp-1") == 2
        net.gateway.state.directory._checked = 0.0
        new = net.client()
        assert new.keys.signing_version == 2
        with pytest.raises(SignatureError):  # not yet certified: the gateway keeps the directory it had
            await new.inquiry_payment(payment_request_id="k0")
        net.certify("acqp-1")
        net.gateway.state.directory._checked = 0.0
        assert (await _pay(net, "k1", client=new)).code == "SUCCESS"
        assert (await _pay(net, "k2", client=old, balance=0)).code == "SUCCESS"  # version 1 still verifies
        retire_key(tmp_path / "keys" / "acqp-1", 1)
        net.certify("acqp-1")
        net.gateway.state.directory._checked = 0.0
        with pytest.raises(SignatureError) as refused:  # refused, and unsigned: the caller did not authenticate
            await old.inquiry_payment(payment_request_id="k1")
        assert "KEY_NOT_FOUND" in str(refused.value)
        assert (await new.inquiry_payment(payment_request_id="k1")).status == "S"
        with pytest.raises(ConfigError):
            retire_key(tmp_path / "keys" / "acqp-1", 2)  # the last active key
    run(body())


def test_mpp_down_gives_u_then_resolves_once(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path, mpp_timeout_s=0.05)
        await net.wallet("u1", 10**6)
        code = await net.code("u1")
        net.router.down.add("mpp-1.test")
        r = await net.client(retries=0).pay("u-1", JPY, code, ORDER)
        assert (r.code, r.status) == ("PAYMENT_IN_PROCESS", "U")
        assert await net.deliver() == 0
        net.router.down.clear()
        q = await net.client().inquiry_payment(payment_request_id="u-1")
        assert q.status == "S"
        await net.gateway.state.service.resolve_pending()
        assert await net.deliver() == 1
        assert await net.balance("u1") == 10**6 - 38000
        assert len((await net.notifications())["notifications"]) == 1
    run(body())


def test_two_resolvers_split_the_due_rows_without_overlap(tmp_path: Path, database: str | None) -> None:
    """Two replicas' resolvers run at the same moment over the same overdue payments and
    refunds: each row is driven by exactly one of them (each claims rows by leasing
    their next check), and neither drives them again while the lease runs."""
    async def body() -> None:
        net = Net(tmp_path, database=database, mpp_timeout_s=0.05)
        second = net.replica("gateway-2.test")
        for i in range(3):
            assert (await _pay(net, f"ok-{i}", user=f"u{i}")).code == "SUCCESS"
        await net.wallet("late", 10**6)
        codes = [await net.code("late") for _ in range(9)]
        net.router.down.add("mpp-1.test")
        c = net.client(retries=0)
        for i in range(3):
            assert (await c.refund(f"rf-{i}", {"currency": "JPY", "value": "100"},
                                   payment_request_id=f"ok-{i}")).status == "U"
        for i, code in enumerate(codes):
            assert (await c.pay(f"u-{i}", JPY, code, ORDER)).status == "U"
        net.router.down.clear()
        engine = net.gateway.state.engine
        with engine.begin() as conn:
            conn.execute(payments.update().values(next_check_ms=0))
            conn.execute(refunds.update().values(next_check_ms=0))
            due = set(conn.execute(select(payments.c.id).where(payments.c.status == "PROCESSING")).scalars())
            due |= set(conn.execute(select(refunds.c.id).where(refunds.c.status == "PROCESSING")).scalars())
        assert len(due) == 12
        driven: list[list[str]] = [[], []]
        for mine, app in zip(driven, (net.gateway, second), strict=True):
            machine = app.state.service.machine

            async def drive(rid: str, *_: Any, mine: list[str] = mine) -> None:
                mine.append(rid)
                await asyncio.sleep(0.01)  # overlap the other resolver's round
            machine.drive_payment = drive
            machine.drive_refund = drive
        one, two = (app.state.service for app in (net.gateway, second))
        counts = await asyncio.gather(one.resolve_pending(), two.resolve_pending())
        assert sum(counts) == 12 and counts == [len(d) for d in driven]
        assert not set(driven[0]) & set(driven[1]) and set(driven[0]) | set(driven[1]) == due
        assert await asyncio.gather(one.resolve_pending(), two.resolve_pending()) == [0, 0]  # leased
    run(body())


def test_gateway_sql_runs_off_the_event_loop(tmp_path: Path) -> None:
    """Every statement the gateway runs for its API, its resolver, its webhook worker and
    its health check runs on the Database's threads, none on the event loop's."""
    import threading

    from sqlalchemy import event

    async def body() -> None:
        net = Net(tmp_path, mpp_timeout_s=0.05)
        threads: list[str] = []

        def seen(*_: Any) -> None:
            threads.append(threading.current_thread().name)
        event.listen(net.gateway.state.engine, "before_cursor_execute", seen)
        c = net.client()
        assert (await _pay(net, "t1")).code == "SUCCESS"
        assert (await c.inquiry_payment(payment_request_id="t1")).code == "SUCCESS"
        assert (await c.refund("rf", {"currency": "JPY", "value": "10"}, payment_request_id="t1")).code == "SUCCESS"
        assert (await c.inquiry_refund(refund_request_id="rf")).code == "SUCCESS"
        assert (await _pay(net, "t2", user="u2")).code == "SUCCESS"
        assert (await c.cancel_payment(payment_request_id="t2")).code == "SUCCESS"
        assert (await c.list_payments()).code == "SUCCESS"
        assert (await c.settlement_summary(time.strftime("%Y-%m-%d", time.gmtime()))).code == "SUCCESS"
        await net.gateway.state.service.resolve_pending()
        await net.gateway.state.service.purge_seen()
        await net.deliver()
        assert (await _get(net, "/healthz")).status_code == 200
        event.remove(net.gateway.state.engine, "before_cursor_execute", seen)
        assert threads and all(t.startswith("veilpay-db") for t in threads), set(threads)
    run(body())


def test_expired_unknown_payment_is_cancelled_at_the_mpp(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path, mpp_timeout_s=0.05, payment_expiry_s=0.0)
        await net.wallet("u1", 10**6)
        code = await net.code("u1")
        net.router.down.add("mpp-1.test")
        r = await net.client(retries=0).pay("e-1", JPY, code, ORDER)
        assert r.status == "U"
        net.router.down.clear()
        with net.gateway.state.engine.begin() as conn:
            conn.execute(payments.update().values(next_check_ms=0))
        await net.gateway.state.service.resolve_pending()
        q = await net.client().inquiry_payment(payment_request_id="e-1")
        assert (q.body["paymentStatus"], q.code, q.status) == ("CANCELLED", "SUCCESS", "F")
        assert q.body["paymentResult"]["resultCode"] == "ORDER_IS_CLOSED"
        assert await net.balance("u1") == 10**6
        await net.deliver()
        notes = (await net.notifications())["notifications"]
        assert [n["code"] for n in notes] == ["ORDER_IS_CLOSED"]
    run(body())


def test_webhooks_at_least_once_on_the_wire_once_in_the_application(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path, webhook_backoff_s=0.0)
        await net.admin("acqp-1", "POST", "/admin/faults", {"drop_before": 2, "drop_after": 1})
        assert (await _pay(net)).code == "SUCCESS"
        for _ in range(6):
            await net.deliver()
        got = await net.notifications()
        assert got["wire"] == 4  # two refused, one applied with the answer lost, one acknowledged
        assert len(got["notifications"]) == 1 and got["notifications"][0]["deliveries"] == 2
        with net.gateway.state.engine.connect() as conn:
            row = conn.execute(select(outbox)).one()
        assert (row.status, row.attempts) == ("DELIVERED", 4)
    run(body())


def test_webhook_counts_only_an_answer_the_acqp_signed(tmp_path: Path) -> None:
    """An acknowledgement that the ACQP did not sign (forged on the way, or from another
    partner's key) does not end the deliveries; the ACQP's own signed answer does."""
    from veilpay.sdk.partner import GatewayCalls

    async def body() -> None:
        net = Net(tmp_path, webhook_backoff_s=0.0)
        real = net.router.apps["acqp-1.test"]
        sign_as: dict[str, Any] = {"keys": None}

        async def fake(scope: Any, receive: Any, send: Any) -> None:  # acknowledges everything
            body = b""
            while True:
                msg = await receive()
                body += msg.get("body", b"")
                if not msg.get("more_body"):
                    break
            ack = {"result": {"resultCode": "SUCCESS", "resultStatus": "S", "resultMessage": "ok"},
                   "notifyId": json.loads(body)["notifyId"]}
            raw, headers = json.dumps(ack).encode(), {"Content-Type": "application/json"}
            if sign_as["keys"] is not None:  # a signature over the answer to this very request, by the wrong key
                digest = request_digest({k.decode(): v.decode() for k, v in scope["headers"]})
                raw, headers = GatewayCalls(sign_as["keys"], net.gateway_keys.public).answer("POST", "/notify", ack,
                                                                                             digest)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})
            await send({"type": "http.response.body", "body": raw})

        net.router.apps["acqp-1.test"] = httpx.ASGITransport(fake)
        assert (await _pay(net)).code == "SUCCESS"
        for keys in (None, net.keys("acqp-2")):  # unsigned; signed by another ACQP
            sign_as["keys"] = keys
            assert await net.gateway.state.outbox.run_once() == 1
            with net.gateway.state.engine.connect() as conn:
                row = conn.execute(select(outbox)).one()
            assert row.status == "PENDING" and ("not signed by the ACQP" in row.last_error or
                                                "another partner" in row.last_error)
        net.router.apps["acqp-1.test"] = real
        await net.deliver()
        with net.gateway.state.engine.connect() as conn:
            row = conn.execute(select(outbox)).one()
        assert (row.status, row.attempts) == ("DELIVERED", 3)
        assert len((await net.notifications())["notifications"]) == 1
    run(body())


def test_webhook_gives_up_after_max_attempts(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path, webhook_backoff_s=0.0, webhook_max_attempts=3)
        net.router.down.add("acqp-1.test")
        assert (await _pay(net)).code == "SUCCESS"
        for _ in range(5):
            await net.deliver()
        with net.gateway.state.engine.connect() as conn:
            row = conn.execute(select(outbox)).one()
        assert (row.status, row.attempts) == ("DEAD", 3)
        metrics = (await _get(net, "/metrics")).text
        assert 'veilpay_gateway_webhooks_total{kind="notifyPayment",outcome="dead"} 1.0' in metrics
    run(body())


async def _asgi(app: Any, path: str, chunks: list[bytes], headers: dict[str, str], method: str = "POST",
                disconnect: bool = False) -> tuple[int | None, dict[str, str], bytes]:
    """One request straight into an ASGI app, its body in ``chunks`` (then, with
    ``disconnect``, the client leaving before the last one); (status, headers, body)."""
    msgs: list[dict[str, Any]] = [{"type": "http.request", "body": c, "more_body": True} for c in chunks[:-1]]
    msgs.append({"type": "http.disconnect"} if disconnect else
                {"type": "http.request", "body": chunks[-1] if chunks else b"", "more_body": False})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return msgs.pop(0) if msgs else {"type": "http.disconnect"}

    async def send(m: dict[str, Any]) -> None:
        sent.append(m)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 1), "server": ("gateway.test", 80), "state": {}}
    await app(scope, receive, send)
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    if start is None:
        return None, {}, b""
    return (start["status"], {k.decode(): v.decode() for k, v in start["headers"]},
            b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


def test_signed_api_front_reads_fragmented_bodies_and_answers_as_fastapi_would(tmp_path: Path) -> None:
    """The ASGI front serves the signed POSTs: a body in many pieces is read whole, a
    client that leaves mid-body gets nothing and leaves nothing stored, a streamed
    body over the cap is refused, and its answers are the ones FastAPI's route gives
    (same handler), signed and verifiable."""
    from veilpay.gateway.app import SignedApiFront

    async def body() -> None:
        net = Net(tmp_path, max_body_bytes=4096)
        await net.wallet("u1", 10**6)
        c = net.client()
        d = await c.directory()
        path = "/v1/payments/pay"
        raw = json.dumps(c._pay_body(d, "frag-1", JPY, await net.code("u1"), ORDER, None)).encode()
        keys = net.keys("acqp-1")
        v, sk = keys.signer()

        def signed_headers(b: bytes) -> dict[str, str]:
            h = sign_headers(sk, v, "POST", path, "acqp-1", b, time.time())
            return {**h, "Content-Type": "application/json"}

        pieces = [raw[i:i + 97] for i in range(0, len(raw), 97)]
        sent = signed_headers(raw)
        status, hdrs, ans = await _asgi(net.gateway, path, pieces, sent)
        assert status == 200 and json.loads(ans)["result"]["resultCode"] == "SUCCESS"
        verify_message(hdrs, "POST", path, ans, net.gw_public.verify_key, time.time(), 300, "Response-Time",
                       request_digest(sent))
        # the client leaves before its body is complete: no answer, nothing stored
        raw2 = raw.replace(b"frag-1", b"frag-2")
        assert (await _asgi(net.gateway, path, [raw2[:50], raw2[50:]], signed_headers(raw2),
                            disconnect=True))[0] is None
        assert _count(net, payments) == 1
        # streamed past the cap with no Content-Length
        big = [b"{" + b" " * 3000, b" " * 3000 + b"}"]
        status, hdrs, ans = await _asgi(net.gateway, path, big, signed_headers(b"".join(big)))
        assert json.loads(ans)["result"]["resultCode"] == "REQUEST_TOO_LARGE"
        # the same bad request through the front and through FastAPI's own route
        bad = signed_headers(b"{}")
        bad["Content-Type"] = "text/plain"
        front = await _asgi(net.gateway, path, [b"{}"], bad)
        inner = net.gateway.middleware_stack  # the stack under the front: FastAPI's routing
        while not isinstance(inner, SignedApiFront):
            inner = inner.app
        routed = await _asgi(inner.app, path, [b"{}"], bad)
        assert front[0] == routed[0] and json.loads(front[2]) == json.loads(routed[2])
        assert json.loads(front[2])["result"]["resultCode"] == "MEDIA_TYPE_NOT_ACCEPTABLE"
        # other methods on the same path are FastAPI's
        assert (await _asgi(net.gateway, path, [b""], {}, method="GET"))[0] == 405
    run(body())


def test_outbox_claims_due_rows_oldest_first_and_never_twice(tmp_path: Path, database: str | None) -> None:
    """Two workers on one database (two gateway replicas) never hold the same row: a
    claim leases the oldest due rows, and a leased row comes back only when its lease
    has run out."""
    from veilpay.gateway.outbox import OutboxWorker

    async def body() -> None:
        net = Net(tmp_path, database=database)
        for i in range(5):
            assert (await _pay(net, f"r{i}", user=f"u{i}")).code == "SUCCESS"
        engine = net.gateway.state.engine
        first = net.gateway.state.outbox
        second = OutboxWorker(net.cfg, first.keys, first._directory, first.db, first.http, first.metrics)
        a = await first._claim(3)
        b = await second._claim(10)
        assert len(a) == 3 and len(b) == 2
        with engine.connect() as conn:
            ids = conn.execute(select(outbox.c.id).order_by(outbox.c.id)).scalars().all()
        assert [r.id for r in a] == ids[:3] and [r.id for r in b] == ids[3:]
        assert await first._claim(10) == [] and await second._claim(10) == []
        with engine.begin() as conn:  # the first replica died holding its rows: the lease runs out
            conn.execute(outbox.update().where(outbox.c.id.in_([r.id for r in a])).values(lease_until_ms=0))
        assert [r.id for r in await second._claim(10)] == ids[:3]
    run(body())


async def _get(net: Net, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=net.router) as c:
        return await c.get("http://gateway.test" + path)


def test_tokens_in_the_gateway_are_per_mpp_pseudonyms(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path)
        await net.wallet("same-person", 10**7, currency="PHP", mpp="mpp-1")
        await net.wallet("same-person", 10**7, currency="KRW", mpp="mpp-2")
        c = net.client()
        for i, mpp in enumerate(("mpp-1", "mpp-1", "mpp-2")):
            code = await net.code("same-person", mpp=mpp)
            assert (await c.pay(f"t{i}", JPY, code, ORDER)).code == "SUCCESS"
        with net.gateway.state.engine.connect() as conn:
            tokens = conn.execute(select(payments.c.customer_token).order_by(payments.c.payment_request_id)).scalars().all()
        assert tokens[0] == tokens[1] != tokens[2]
        assert all(t.startswith("tk_") and "same-person" not in t for t in tokens)
    run(body())


def test_hybrid_post_quantum_suite(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path, suite="mlkem768-x25519")
        assert net.keys("mpp-1").hpke[1].suite == "mlkem768-x25519"
        r = await _pay(net)
        assert r.code == "SUCCESS" and r.customer_info()["pspName"] == "mpp-1 wallet"
    run(body())


def test_tampered_response_is_refused_by_the_sdk(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path)
        inner = net.router

        class Flip(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                resp = await inner.handle_async_request(request)
                raw = resp.content.replace(b"ORDER_NOT_EXIST", b"SUCCESS")
                return httpx.Response(resp.status_code, headers=resp.headers, content=raw, request=request)

        c = net.client(transport=Flip())
        c._directory = await net.client().directory()
        with pytest.raises(SignatureError):
            await c.inquiry_payment(payment_request_id="missing")
    run(body())


def test_openapi_metrics_and_directory(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path)
        spec = (await _get(net, "/openapi.json")).json()
        for p in ("pay", "inquiryPayment", "cancelPayment", "refund", "inquiryRefund"):
            assert f"/v1/payments/{p}" in spec["paths"]
        assert "PaymentMethod" in spec["components"]["schemas"]
        d = await net.client().directory()
        assert d.issuer_of("28109999")[1].id == "mpp-1" and d.issuer_of("99") is None
        await _pay(net)
        m = (await _get(net, "/metrics")).text
        assert 'veilpay_gateway_requests_total{code="SUCCESS",path="/v1/payments/pay"} 1.0' in m
        assert (await _get(net, "/healthz")).json() == {"status": "ok"}
    run(body())


def test_plaintext_mode_for_benchmarks_is_refused_by_a_pets_gateway(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path)
        await net.wallet("u1", 10**6)
        r = await net.client(pets=False).pay("clear", JPY, await net.code("u1"), ORDER)
        assert r.code == "SEALED_FIELD_INVALID"
        clear = Net(tmp_path / "clear", pets=False)
        assert (await _pay(clear)).code == "SUCCESS"
    run(body())


def test_cancel_window_and_concurrent_refunds(tmp_path: Path, database: str | None) -> None:
    import asyncio

    async def body() -> None:
        net = Net(tmp_path, database=database, cancel_window_s=0.0)
        r = await _pay(net)
        c = net.client()
        assert (await c.cancel_payment(payment_id=r.body["paymentId"])).code == "CANCEL_WINDOW_EXCEED"
        answers = await asyncio.gather(*[
            c.refund(f"par-{i}", {"currency": "JPY", "value": "300"}, payment_request_id="r1") for i in range(5)])
        codes = sorted(a.code for a in answers)
        assert codes == ["REFUND_AMOUNT_EXCEED"] * 2 + ["SUCCESS"] * 3
        q = await c.inquiry_payment(payment_request_id="r1")
        assert q.body["refundedAmount"] == {"currency": "JPY", "value": "900"}
        assert await net.balance("u1") == 10**6 - 38000 + 3 * 11400
    run(body())


def test_groups_sealed_to_another_partner_are_refused_before_anything_is_stored(tmp_path: Path) -> None:
    """The gateway routes on the code's issuer and checks that every field group names
    that MPP as its recipient: a payment routed to mpp-1 whose groups are a well-formed
    session sealed to mpp-2, and a refund of mpp-1's payment whose reason is sealed to
    mpp-2, are SEALED_FIELD_INVALID (HTTP 400), store nothing and reach no MPP. Without
    the check the payment would be recorded and forwarded, and fail only at mpp-1."""
    async def body() -> None:
        net = Net(tmp_path)
        await net.wallet("u1", 10**6)
        await net.wallet("u2", 10**6, currency="KRW", mpp="mpp-2")
        c = net.client()
        d = await c.directory()
        misrouted = c._pay_body(d, "w-1", JPY, await net.code("u2", mpp="mpp-2"), ORDER, {"ip": "198.51.100.1"})
        groups = (misrouted["paymentMethod"]["paymentMethodId"], misrouted["order"], misrouted["env"])
        assert {g["to"] for g in groups} == {"mpp-2"} and len({g["sid"] for g in groups}) == 1  # nothing else amiss
        misrouted["paymentMethod"]["codeIssuer"] = "2810"  # routed to mpp-1

        def forwarded() -> list[str]:
            return [p for _, p, _, _ in net.router.log if p.startswith("/mpp/")]

        ans = await _raw(net, "/v1/payments/pay", json.dumps(misrouted).encode())
        assert (ans.status_code, ans.json()["result"]["resultCode"]) == (400, "SEALED_FIELD_INVALID")
        assert "mpp-1" in ans.json()["result"]["resultMessage"]
        assert _count(net, payments) == 0 and forwarded() == []
        assert (await _pay(net, "ok-1", balance=0)).code == "SUCCESS"
        paid = forwarded()
        refund = c._refund_body(d, "w-r", {"currency": "JPY", "value": "100"}, None, "ok-1", "changed mind", "mpp-2")
        assert refund["refundReason"]["to"] == "mpp-2"
        ans = await _raw(net, "/v1/payments/refund", json.dumps(refund).encode())
        assert (ans.status_code, ans.json()["result"]["resultCode"]) == (400, "SEALED_FIELD_INVALID")
        assert _count(net, refunds) == 0 and forwarded() == paid
        assert await net.balance("u1") == 10**6 - 38000 and await net.balance("u2", mpp="mpp-2") == 10**6
    run(body())


def test_hidden_amount_parts_under_another_partys_name_are_refused(tmp_path: Path) -> None:
    """With privacy nodes an amount is an envelope for each partner and a share for
    each node, each under its recipient's name. An ACQP (or anyone on the way) that
    swaps two of them (the MPP's envelope where the ACQP's goes; node-a's share where
    node-b's goes, under a bundle the ACQP signs over the swap) is refused
    SEALED_FIELD_INVALID (HTTP 400) before anything is stored or sent on; the same
    request with the parts where they belong is paid."""
    from veilpay.sdk.shares import sign_bundle

    async def body() -> None:
        net = Net(tmp_path, privacy="semi2k")
        await net.wallet("u1", 10**6)
        c = net.client()
        d = await c.directory()
        good = c._pay_body(d, "h-1", JPY, await net.code("u1"), ORDER, None)
        amount = good["paymentAmount"]
        sealed, shares = amount["sealed"], amount["shares"]
        swapped = {"node-a": shares["node-b"], "node-b": shares["node-a"]}
        resigned = sign_bundle(net.keys("acqp-1"), "mpp-1", "pay", "h-1", "JPY", swapped, ts_ms=amount["bundle"]["ts"])
        for bad in ({**amount, "sealed": {"acqp-1": sealed["mpp-1"], "mpp-1": sealed["acqp-1"]}},
                    {**amount, "shares": swapped, "bundle": resigned}):
            ans = await _raw(net, "/v1/payments/pay", json.dumps({**good, "paymentAmount": bad}).encode())
            assert (ans.status_code, ans.json()["result"]["resultCode"]) == (400, "SEALED_FIELD_INVALID")
        assert _count(net, payments) == 0
        assert not [p for _, p, _, _ in net.router.log if p.startswith("/mpp/") or p == "/node/v1/feed"]
        assert (await c.call("/v1/payments/pay", good)).code == "SUCCESS"
    run(body())


def test_a_refund_past_the_refund_window_is_refused_and_reaches_no_mpp(tmp_path: Path, database: str | None) -> None:
    """refund_window_s counts from the payment's time: within it the payment refunds;
    past it a refund is REFUND_WINDOW_EXCEED (F, HTTP 200, recorded as a failed refund
    and answered the same when sent again), reserves nothing and never reaches the MPP."""
    async def body() -> None:
        net = Net(tmp_path, database=database, refund_window_s=3600.0)
        assert (await _pay(net)).code == "SUCCESS"
        c = net.client()
        assert (await c.refund("in", {"currency": "JPY", "value": "100"}, payment_request_id="r1")).code == "SUCCESS"
        with net.gateway.state.engine.begin() as conn:  # the payment was made an hour and a second ago
            conn.execute(payments.update().values(payment_time_ms=payments.c.payment_time_ms - 3_601_000))
        refunds_sent = len([p for _, p, _, _ in net.router.log if p == "/mpp/v1/refund"])
        late = await c.refund("late", {"currency": "JPY", "value": "100"}, payment_request_id="r1")
        assert (late.code, late.status) == ("REFUND_WINDOW_EXCEED", "F")
        again = await c.refund("late", {"currency": "JPY", "value": "100"}, payment_request_id="r1")
        assert (again.code, again.body["refundId"]) == ("REFUND_WINDOW_EXCEED", late.body["refundId"])
        q = await c.inquiry_refund(refund_request_id="late")
        assert (q.status, q.body["refundResult"]["resultCode"]) == ("F", "REFUND_WINDOW_EXCEED")
        assert len([p for _, p, _, _ in net.router.log if p == "/mpp/v1/refund"]) == refunds_sent
        assert (await c.inquiry_payment(payment_request_id="r1")).body["refundedAmount"] == {"currency": "JPY",
                                                                                              "value": "100"}
        assert await net.balance("u1") == 10**6 - 38000 + 3800  # only the refund inside the window
    run(body())


async def _trickled(app: Any, path: str, headers: dict[str, str], every: float) -> tuple[int | None, dict[str, str],
                                                                                        bytes, float]:
    """A request whose client declares a 1000-byte body, sends a few bytes and then one
    every ``every`` seconds, never all of it; (status, headers, body, seconds until the
    answer)."""
    import asyncio

    sent: list[dict[str, Any]] = []
    pieces = 0

    async def receive() -> dict[str, Any]:
        nonlocal pieces
        pieces += 1
        if pieces > 1:
            await asyncio.sleep(every)  # the client's pace, not a barrier
        return {"type": "http.request", "body": b'{"a":' if pieces == 1 else b" ", "more_body": True}

    async def send(m: dict[str, Any]) -> None:
        sent.append(m)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in {**headers, "Content-Length": "1000"}.items()],
             "client": ("127.0.0.1", 1), "server": ("gateway.test", 80), "state": {}}
    started = time.monotonic()
    await app(scope, receive, send)
    took = time.monotonic() - started
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    if start is None:
        return None, {}, b"", took
    return (start["status"], {k.decode(): v.decode() for k, v in start["headers"]},
            b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"), took)


def test_a_body_that_does_not_arrive_in_time_is_cut_off(tmp_path: Path) -> None:
    """BodyDeadline: a client that declares a body and trickles it gets 408
    REQUEST_TIMEOUT once the deadline has passed, counted from the request's start
    however often it sends a byte, on the signed front and on FastAPI's routes alike;
    unsigned (its request was never read), with Connection: close (uvicorn then closes
    the socket), counted, and nothing stored. An answer given before the body was read
    whole (413 on the declared length) closes the connection too; a request read whole
    keeps it."""
    from prometheus_client import generate_latest

    from veilpay.gateway import create_app
    from veilpay.gateway.limits import BodyDeadline

    async def body() -> None:
        net = Net(tmp_path)
        app = create_app(net.cfg, transport=net.router, background=False, body_timeout_s=0.3)
        headers = {"Content-Type": "application/json", "Client-Id": "acqp-1"}
        for path in ("/v1/payments/pay", "/admin/v1/settle"):
            status, hdrs, raw, took = await _trickled(app, path, headers, every=0.05)
            assert (status, json.loads(raw)["result"]) == (408, {
                "resultCode": "REQUEST_TIMEOUT", "resultStatus": "F", "resultMessage": CODES["REQUEST_TIMEOUT"][2]})
            assert hdrs["connection"] == "close" and hdrs["content-type"] == "application/json"
            assert "signature" not in hdrs
            assert 0.3 <= took < 2.0, took
        metrics = generate_latest(app.state.metrics.registry).decode()
        assert 'veilpay_gateway_requests_total{code="REQUEST_TIMEOUT",path="/v1/payments/pay"} 1.0' in metrics
        assert _count(net, payments) == 0
        # refused on its declared length, unread: the connection closes; read whole: it stays
        big = await _asgi(app, "/v1/payments/pay", [b"{", b"}"], {**headers, "Content-Length": str(10**7)})
        assert big[0] == 413 and big[1]["connection"] == "close"
        whole = await _asgi(app, "/v1/payments/pay", [b"{}"], {**headers, "Content-Length": "2"})
        assert whole[0] == 401 and "connection" not in whole[1]
        assert "connection" not in (await _asgi(app, "/healthz", [b""], {}, method="GET"))[1]
        with pytest.raises(ValueError):
            BodyDeadline(app, 0.0)
    run(body())


def _documented(spec: dict[str, Any], path: str, status: int) -> Any:
    """A validator for the JSON answer ``spec`` documents for ``path`` and ``status``."""
    import jsonschema

    op = spec["paths"][path]["post"]
    schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
    return jsonschema.Draft202012Validator({**schema, "components": spec["components"]})


_OPERATOR_PATHS = ("/admin/v1/settle", "/admin/v1/analytics")


def test_openapi_documents_every_answer_of_every_signed_endpoint(tmp_path: Path) -> None:
    """Every POST endpoint is a signed one, and /openapi.json lists each status it can
    answer with (what schemathesis's status-code, content-type and response-schema checks
    hold answers to): the JSON answer with its ``result`` (resultCode, resultStatus,
    resultMessage, all required) for 200, and for each error status an answer that holds
    only a result, with exactly the codes of that status."""
    async def body() -> None:
        net = Net(tmp_path)
        spec = (await _get(net, "/openapi.json")).json()
        posts = {p for p, ops in spec["paths"].items() if "post" in ops}
        assert posts == {f"/v1/payments/{p}" for p in ("pay", "inquiryPayment", "cancelPayment", "refund",
                                                      "inquiryRefund", "listPayments", "settlementSummary")} | \
            set(_OPERATOR_PATHS)
        for path in sorted(posts):
            op = spec["paths"][path]["post"]
            headers = {p["name"] for p in op["parameters"] if p["in"] == "header" and p["required"]}
            assert {"Client-Id", "Request-Time", "Signature"} <= headers, path
            assert op["requestBody"]["content"]["application/json"]["schema"], path
            errors = {409, 503} if path in _OPERATOR_PATHS else {415, 429}
            assert set(op["responses"]) == {str(s) for s in {200, 400, 401, 408, 413, 500} | errors}, path
            for status in op["responses"]:
                check = _documented(spec, path, int(status))
                codes = [c for c, (_, http, _) in CODES.items() if http == int(status)] if status not in ("200", "500") \
                    else list(CODES) if status == "200" else ["UNKNOWN_EXCEPTION"]
                for code in codes:  # every code this status carries is documented with its result status
                    check.validate({"result": result(code)})
                for bad in ({}, {"result": {"resultCode": codes[0]}}, {"result": {**result(codes[0]), "resultStatus": "X"}},
                            {"result": {**result(codes[0]), "resultCode": "NO_SUCH_CODE"}}):
                    assert not check.is_valid(bad), (path, status, bad)
                if status != "200":  # an error answer holds its result and nothing else
                    assert not check.is_valid({"result": result(codes[0]), "paymentId": "pay_1"})
                    other = next(c for c, (_, http, _) in CODES.items() if str(http) != status and c not in codes)
                    assert not check.is_valid({"result": result(other)}), (path, status, other)
        assert spec["components"]["schemas"]["Result"]["required"] == ["resultCode", "resultStatus", "resultMessage"]
    run(body())


def test_error_answers_match_the_documented_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real answers from the in-process gateway, of every status a signed endpoint can
    give except the privacy nodes' 409 and 503, validate against what /openapi.json
    documents for that endpoint and status, and are JSON."""
    import veilpay.gateway.machine as machine_module
    from veilpay.gateway import create_app

    async def body() -> None:
        net = Net(tmp_path, max_body_bytes=4096)
        await net.wallet("u1", 10**6)
        spec = (await _get(net, "/openapi.json")).json()
        c = net.client()
        d = await c.directory()
        pay = json.dumps(c._pay_body(d, "doc-1", JPY, await net.code("u1"), ORDER, None)).encode()
        answers: list[tuple[str, httpx.Response]] = [
            ("/v1/payments/pay", await _raw(net, "/v1/payments/pay", pay)),                           # 200 SUCCESS
            ("/v1/payments/inquiryPayment", await _raw(net, "/v1/payments/inquiryPayment",
                                                       b'{"paymentRequestId":"nope"}')),             # 200 F
            ("/v1/payments/refund", await _raw(net, "/v1/payments/refund", b"{not json")),             # 400
            ("/v1/payments/cancelPayment", await _raw(net, "/v1/payments/cancelPayment", b"{}")),       # 400 signed
            ("/v1/payments/listPayments", await _raw(net, "/v1/payments/listPayments", b"{}",
                                                     headers={"Signature": ""})),                    # 401
            ("/v1/payments/pay", await _raw(net, "/v1/payments/pay", b"{}",
                                            headers={"Content-Type": "text/plain"})),                 # 415
            ("/v1/payments/pay", await _raw(net, "/v1/payments/pay", b" " * 5000)),                   # 413
            ("/admin/v1/settle", await _raw(net, "/admin/v1/settle", b"{}")),                         # 401
            ("/admin/v1/settle", await _operator(net, "/admin/v1/settle", {"settlementDate": "2026-01-01"})),  # 400
        ]

        def boom(*_: Any) -> Any:
            raise RuntimeError("unexpected")

        monkeypatch.setattr(machine_module, "validate", boom)
        answers.append(("/v1/payments/inquiryRefund", await _raw(net, "/v1/payments/inquiryRefund", b"{}")))  # 500
        monkeypatch.undo()
        seen = set()
        for path, r in answers:
            assert r.headers["content-type"] == "application/json", (path, r.status_code)
            _documented(spec, path, r.status_code).validate(r.json())
            seen.add(r.status_code)
        slow = create_app(net.cfg, transport=net.router, background=False, body_timeout_s=0.05)
        status, _, raw, _ = await _trickled(slow, "/v1/payments/inquiryRefund", {"Content-Type": "application/json"},
                                            every=0.02)
        assert status == 408
        _documented(spec, "/v1/payments/inquiryRefund", status).validate(json.loads(raw))
        assert seen | {408} == {200, 400, 401, 408, 413, 415, 500}
    run(body())


async def _operator(net: Net, path: str, body: dict[str, Any]) -> httpx.Response:
    """An operator call signed with the gateway's key, as the raw response."""
    from veilpay.sdk.signing import post_headers

    raw = json.dumps(body).encode()
    h = post_headers(net.gateway_keys.signer(), path, "gateway", raw)
    async with httpx.AsyncClient(transport=net.router) as client:
        return await client.post(f"http://gateway.test{path}", content=raw, headers=h)


# ---------------------------------------------------------------- properties
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_json = st.recursive(st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=12)


@pytest.fixture(scope="module")
def two_parties(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    from veilpay.sdk import create_party

    root = tmp_path_factory.mktemp("keys")
    return (create_party(root / "a", "acqp-a", "acqp"), create_party(root / "m", "mpp-m", "mpp", code_prefixes=["55"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.dictionaries(st.text(max_size=10), _json, max_size=5), ctx=st.text(max_size=30),
       flip=st.integers(0, 10_000))
def test_envelope_round_trip_and_tamper_property(two_parties: tuple[Any, Any], fields: dict[str, Any], ctx: str,
                                                  flip: int) -> None:
    from veilpay.crypto.signing import b64d, b64e

    _, mpp = two_parties
    env = seal_fields(fields, mpp.public, "order", ctx)
    assert open_fields(env, mpp, "order", ctx) == fields
    ct = bytearray(b64d(env["ct"]))
    ct[flip % len(ct)] ^= 1 + flip % 255
    with pytest.raises(DecryptionError):
        open_fields({**env, "ct": b64e(bytes(ct))}, mpp, "order", ctx)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300), path=st.text(min_size=1, max_size=20), other=st.binary(max_size=300))
def test_signature_property(two_parties: tuple[Any, Any], body: bytes, path: str, other: bytes) -> None:
    acqp, _ = two_parties
    v, sk = acqp.signer()
    now = time.time()
    h = {k.lower(): val for k, val in sign_headers(sk, v, "POST", path, "acqp-a", body, now).items()}
    assert verify_message(h, "POST", path, body, acqp.public.verify_key, now, 60).client_id == "acqp-a"
    if other != body:
        with pytest.raises(SignatureError):
            verify_message(h, "POST", path, other, acqp.public.verify_key, now, 60)


@given(value=st.integers(1, 10**15), cur=st.sampled_from(sorted(MINOR_UNITS)))
def test_amount_round_trip_property(value: int, cur: str) -> None:
    assert parse_amount({"currency": cur, "value": str(value)}) == (cur, value)


def test_used_and_expired_codes_are_refused_by_the_mpp(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path)
        await net.wallet("u1", 10**6)
        c = net.client()
        code = await net.code("u1")
        assert (await c.pay("c1", JPY, code, ORDER)).code == "SUCCESS"
        assert (await c.pay("c2", JPY, code, ORDER)).code == "INVALID_CODE"  # one code, one payment
        old = await net.code("u1", ttl=-1)
        assert (await c.pay("c3", JPY, old, ORDER)).code == "INVALID_CODE"
        assert await net.balance("u1") == 10**6 - 38000
    run(body())


def test_the_midday_clock_runs_and_keeps_its_day(utc_midday: str) -> None:
    """utc_midday (tests/conftest.py): what reads time.time() sees 12:00 UTC of the
    day it returns, running on from there, 12 hours from either midnight."""
    first = time.time()
    assert time.strftime("%Y-%m-%d", time.gmtime(first)) == utc_midday
    assert 43_200 <= first % 86_400 < 43_260
    time.sleep(0.01)
    assert time.time() > first


def test_list_payments_and_settlement_summary(tmp_path: Path, utc_midday: str) -> None:
    async def body() -> None:
        net = Net(tmp_path)
        await net.wallet("u1", 10**7)
        c = net.client()
        for i in range(5):
            assert (await c.pay(f"l{i}", {"currency": "JPY", "value": str(100 * (i + 1))}, await net.code("u1"),
                                ORDER)).code == "SUCCESS"
        assert (await c.refund("lr", {"currency": "JPY", "value": "50"}, payment_request_id="l0")).code == "SUCCESS"
        first = await c.list_payments(page_size=2)
        ids = [p["paymentRequestId"] for p in first.body["payments"]]
        assert ids == ["l4", "l3"] and "nextPageToken" in first.body
        rest = await c.list_payments(page_size=10, page_token=first.body["nextPageToken"])
        assert [p["paymentRequestId"] for p in rest.body["payments"]] == ["l2", "l1", "l0"]
        assert "nextPageToken" not in rest.body
        assert (await net.client("acqp-2").list_payments()).body["payments"] == []
        s = await c.settlement_summary(utc_midday)  # the payments' day, on a clock that cannot pass midnight
        assert s.body["summaries"] == [{"currency": "JPY", "paymentCount": 5,
                                        "paymentTotal": {"currency": "JPY", "value": "1500"}, "refundCount": 1,
                                        "refundTotal": {"currency": "JPY", "value": "50"},
                                        "netTotal": {"currency": "JPY", "value": "1450"}}]
        assert (await c.settlement_summary("2001-01-01")).body["summaries"] == []
        assert (await c.settlement_summary("2001-13-45")).code == "PARAM_ILLEGAL"
    run(body())


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@given(_json_values)
@settings(max_examples=300, deadline=None)
def test_wirejson_writes_what_the_standard_encoder_writes(value: Any) -> None:
    from veilpay.sdk import wirejson

    raw = wirejson.dumps(value)
    assert raw == json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    assert wirejson.loads(raw) == value == wirejson.loads(raw.decode())
    assert wirejson.dumps_text(value) == raw.decode()
    # the idempotency fingerprint's encoding: unchanged from the standard library's
    assert wirejson.dumps_sorted(value) == json.dumps(value, separators=(",", ":"), sort_keys=True,
                                                      ensure_ascii=False).encode()


def test_wirejson_refuses_what_json_cannot_carry() -> None:
    from veilpay.sdk import wirejson

    for bad in (b"{", b"", b"\xff\xfe", b'{"a":1}x', b"NaN"):
        with pytest.raises(json.JSONDecodeError):
            wirejson.loads(bad)
    for unencodable in ({"big": 2**64}, {1: "non-str key"}, {"set": {1}}):
        with pytest.raises(TypeError):
            wirejson.dumps(unencodable)


def test_log_lines_hold_only_the_fixed_fields() -> None:
    """The gateway's JSON log formatter keeps its fixed fields and drops anything else
    passed in ``extra`` (a careless call cannot log a personal field); an exception
    appears by its type only, never its message."""
    import logging
    import sys

    from veilpay.gateway.observe import JsonFormatter

    lg = logging.getLogger("veilpay.test")
    try:
        raise ValueError("buyer@example.com")
    except ValueError:
        exc = sys.exc_info()
    rec = lg.makeRecord("veilpay.test", logging.WARNING, __file__, 1, "payment final", (), exc,
                        extra={"event": "payment_final", "paymentId": "pay_1", "code": "SUCCESS",
                               "email": "buyer@example.com", "amount": 38000})
    line = JsonFormatter().format(rec)
    out = json.loads(line)
    assert {k: out[k] for k in ("event", "paymentId", "code", "level", "msg", "exception")} == {
        "event": "payment_final", "paymentId": "pay_1", "code": "SUCCESS", "level": "WARNING", "msg": "payment final",
        "exception": "ValueError"}
    assert set(out) == {"ts", "level", "logger", "msg", "event", "paymentId", "code", "exception"}
    assert "buyer@example.com" not in line and "38000" not in line


def test_log_lines_name_why_a_key_was_refused() -> None:
    """A key refused by the authority's rules is logged with its message (it names the
    party and the rule, nothing personal), so an operator sees why a partner failed."""
    import logging
    import sys

    from veilpay.errors import KeyNotCertified
    from veilpay.gateway.observe import JsonFormatter

    try:
        raise KeyNotCertified("mpp-1: the entry's self-signature does not verify")
    except KeyNotCertified:
        exc = sys.exc_info()
    rec = logging.getLogger("veilpay.test").makeRecord("veilpay.test", logging.ERROR, __file__, 1, "failed", (), exc)
    out = json.loads(JsonFormatter().format(rec))
    assert out["exception"] == "KeyNotCertified" and "self-signature" in out["exception_message"]


def test_docs_list_every_result_code_as_the_gateway_answers_it() -> None:
    """docs/gateway.md's table of result codes is the CODES table: same codes, result
    statuses and HTTP statuses."""
    doc = (Path(__file__).parent.parent / "docs" / "gateway.md").read_text()
    rows = {m.group(1): (m.group(2), int(m.group(3)))
            for m in re.finditer(r"^\| `([A-Z_]+)` \| ([SFU]) \| (\d{3}) \|", doc, re.MULTILINE)}
    assert rows == {code: (status, http) for code, (status, http, _) in CODES.items()}
