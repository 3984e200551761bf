"""The gateway and reference partners as separate processes over HTTP on loopback
(uvicorn, SQLite): a gateway killed mid-flow loses nothing, and planted personal data
never reaches the gateway's database, logs, metrics or answers."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_net import wait_for

from veilpay.cli.localnet import LocalNet
from veilpay.errors import GatewayUnavailable
from veilpay.sdk import open_fields, sign_headers

pytestmark = pytest.mark.tcp


def _gateway_rows(net: LocalNet, sql: str, url: str | None = None) -> list[Any]:
    if url is not None:  # the replicas' PostgreSQL
        from sqlalchemy import create_engine, text

        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(text(sql)).all()]
        finally:
            engine.dispose()
    con = sqlite3.connect(f"file:{net.root}/gateway/gateway.db?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()




@pytest.mark.parametrize("replicas", [1, 2])
def test_gateway_killed_mid_flow_loses_nothing(tmp_path: Path, replicas: int, request: pytest.FixtureRequest) -> None:
    """One gateway on SQLite, killed and started again; or two replicas on PostgreSQL,
    the one the payments went through killed each time and the other left to finish."""
    opts = {"mpp_timeout_s": 2.0, "resolver_interval_s": 0.1, "webhook_backoff_s": 0.05}
    url = request.getfixturevalue("postgres_url") if replicas > 1 else None
    with LocalNet(tmp_path, gateway_options=opts, database=url, replicas=replicas) as net:
        net.start_all()
        first, last = net.gateways[0], net.gateways[-1]

        def rows(sql: str) -> list[Any]:
            return _gateway_rows(net, sql, url)

        start = 10**9
        net.admin("mpp-1", "POST", "/admin/wallets", {"userId": "u1", "name": "A", "currency": "PHP", "balance": start})
        codes = net.admin("mpp-1", "POST", "/admin/codes", {"userId": "u1", "count": 12})["codes"]
        amounts = [1000 + 7 * i for i in range(12)]

        # 1. Killed after accepting, before the MPP's answer arrived: the MPP holds the calls.
        net.admin("mpp-1", "POST", "/admin/hold", {"hold": True})
        outcomes: dict[int, str] = {}

        def pay(i: int) -> None:
            try:
                with net.client(gateway=first, retries=0, timeout=20) as c:
                    outcomes[i] = c.pay(f"k-{i}", {"currency": "JPY", "value": str(amounts[i])}, codes[i],
                                        {"orderId": str(i)}).code
            except GatewayUnavailable:
                outcomes[i] = "no answer"

        threads = [threading.Thread(target=pay, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        wait_for(lambda: len(rows("SELECT id FROM payments WHERE status='PROCESSING'")) == 6, 20,
              "six accepted payments")
        net.stop(first, kill=True)
        for t in threads:
            t.join(30)
        assert set(outcomes.values()) == {"no answer"}
        net.admin("mpp-1", "POST", "/admin/hold", {"hold": False})  # the MPP debits; nobody hears its answers
        if replicas == 1:
            net.start(first)  # with replicas, the other one's resolver finishes them

        # 2. Killed after recording results, before the webhooks got through.
        net.admin("acqp-1", "POST", "/admin/faults", {"drop_before": 10**6})
        with net.client(gateway=last) as c:
            for i in range(6, 12):
                assert c.pay(f"k-{i}", {"currency": "JPY", "value": str(amounts[i])}, codes[i], {"orderId": str(i)}).code \
                    == "SUCCESS"
        wait_for(lambda: len(rows("SELECT id FROM outbox WHERE attempts > 0")) >= 6, 20, "failed deliveries")
        net.stop(last, kill=True)
        net.start(first)
        net.admin("acqp-1", "POST", "/admin/faults", {"drop_before": 0})

        # Every payment reaches a final state, is debited once and notified once to the application.
        wait_for(lambda: len(net.admin("acqp-1", "GET", "/admin/notifications")["notifications"]) == 12, 60,
              "twelve notifications")
        with net.client(gateway=first) as c:
            for i in range(12):
                q = c.inquiry_payment(payment_request_id=f"k-{i}")
                assert (q.body["paymentStatus"], q.status) == ("SUCCESS", "S"), i
            again = c.pay("k-0", {"currency": "JPY", "value": str(amounts[0])}, codes[0], {"orderId": "0"})
            assert again.code == "SUCCESS"  # the application's retry gets the stored result
        ledger = net.admin("mpp-1", "GET", "/admin/ledger")["payments"]
        assert len(ledger) == 12 and all(p["status"] == "SUCCESS" for p in ledger)
        debited = sum(p["debit"] for p in ledger)
        assert net.admin("mpp-1", "GET", "/admin/wallets/u1")["balance"] == start - debited
        notes = net.admin("acqp-1", "GET", "/admin/notifications")["notifications"]
        assert len({n["payment_id"] for n in notes}) == 12
        wait_for(lambda: rows("SELECT count(*) FROM outbox WHERE status='DELIVERED'") == [(12,)], 20, "deliveries recorded")


MARKERS = {
    "buyer name": "Zyxwquinn Canarybird", "email": "canary.7731@zq-example.org", "phone": "+81-90-7731-4455",
    "device ip": "203.0.113.177", "device id": "DEV-CANARY-99318", "goods": "CANARYGOODS-55217",
    "merchant customer id": "MCUST-CANARY-88412", "refund reason": "CANARY-REASON-31337",
    "wallet user id": "wallet-user-canary-66139", "wallet name": "Qorvath Canaryname",
}


def test_canary_personal_data_never_reaches_the_gateway(tmp_path: Path) -> None:
    with LocalNet(tmp_path) as net:
        net.start_all()
        uid = MARKERS["wallet user id"]
        net.admin("mpp-1", "POST", "/admin/wallets", {"userId": uid, "name": MARKERS["wallet name"], "currency": "PHP",
                                                       "balance": 10**9})
        codes = net.admin("mpp-1", "POST", "/admin/codes", {"userId": uid, "count": 4})["codes"]
        order = {"orderId": "o-1", "goods": MARKERS["goods"],
                 "buyer": {"referenceBuyerId": MARKERS["merchant customer id"], "buyerName": MARKERS["buyer name"],
                           "buyerEmail": MARKERS["email"], "buyerPhoneNo": MARKERS["phone"]}}
        env = {"terminalIp": MARKERS["device ip"], "deviceId": MARKERS["device id"]}
        answers: list[bytes] = []
        client = net.client()
        gw = client.gateway
        d = client.directory()
        client.close()
        keys = net.keys("acqp-1")

        def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
            raw = json.dumps(body).encode()
            v, sk = keys.signer()
            h = sign_headers(sk, v, "POST", path, "acqp-1", raw, time.time())
            h["Content-Type"] = "application/json"
            r = httpx.post(net.url["gateway"] + path, content=raw, headers=h, timeout=10)
            answers.append(r.content)
            resp = r.json()
            assert gw.verify_key(1) is not None
            return resp

        for i, code in enumerate(codes[:3]):
            body = client._pay_body(d, f"c-{i}", {"currency": "JPY", "value": str(1200 + i)}, code, order, env)
            assert call("/v1/payments/pay", body)["result"]["resultCode"] == "SUCCESS"
        refund = client._refund_body(d, "cr-1", {"currency": "JPY", "value": "100"}, None, "c-0",
                                     MARKERS["refund reason"], "mpp-1")
        assert call("/v1/payments/refund", refund)["result"]["resultCode"] == "SUCCESS"
        call("/v1/payments/inquiryPayment", {"paymentRequestId": "c-1"})
        call("/v1/payments/inquiryRefund", {"refundRequestId": "cr-1"})
        assert call("/v1/payments/cancelPayment", {"paymentRequestId": "c-2"})["result"]["resultCode"] == "SUCCESS"
        # and through the ACQP's merchant backend
        r = httpx.post(net.url["acqp-1"] + "/merchant/checkout", timeout=10, json={
            "amount": {"currency": "JPY", "value": "990"}, "paymentCode": codes[3], "order": order, "env": env})
        assert r.json()["result"]["resultCode"] == "SUCCESS"
        wait_for(lambda: len(net.admin("acqp-1", "GET", "/admin/notifications")["notifications"]) == 5, 20, "webhooks")
        answers.append(httpx.get(net.url["gateway"] + "/metrics").content)
        answers.append(httpx.get(net.url["gateway"] + "/v1/directory").content)
        net.stop("gateway")  # flush logs and the WAL

        gateway_bytes = {p.name: p.read_bytes() for p in (tmp_path / "gateway").iterdir()}
        gateway_bytes["gateway.log"] = (tmp_path / "gateway.log").read_bytes()
        gateway_bytes["gateway.stderr"] = (tmp_path / "gateway.stderr").read_bytes()
        for i, a in enumerate(answers):
            gateway_bytes[f"answer {i}"] = a
        assert b"payment_final" in gateway_bytes["gateway.log"]  # the log is not empty
        secrets = {**{k: v.encode() for k, v in MARKERS.items()},
                   **{f"payment code {i}": c[4:].encode() for i, c in enumerate(codes)}}
        for where, data in gateway_bytes.items():
            for what, marker in secrets.items():
                assert marker not in data, f"{what} found in the gateway's {where}"
        # The gateway holds tokens and ciphertext instead; the ACQP can open what is addressed to it,
        # and that holds no MPP-only data (device, payment code) and only a masked customer.
        rows = _gateway_rows(net, "SELECT customer_token, customer_info, forward, payment_request_id FROM payments")
        assert all(r[0].startswith("tk_") for r in rows)
        for _token, info, forward, req in rows:
            opened = open_fields(json.loads(info), keys, "customerInfo", f"acqp-1/{req}")
            text = json.dumps(opened)
            assert MARKERS["device ip"] not in text and MARKERS["wallet user id"] not in text
            assert opened["customerName"].startswith("Q*")
            fwd = json.loads(forward)
            # the code and the order for the MPP, in the ACQP's session with it: one head for both
            code, order = fwd["paymentMethod"]["paymentMethodId"], fwd["order"]
            for env in (code, order):
                assert env["to"] == "mpp-1" and env["v"] == 3 and set(env) == {"v", "to", "kv", "suite", "ct", "head", "sid"}
            assert (code["head"], code["sid"]) == (order["head"], order["sid"]) and code["ct"] != order["ct"]


def test_privacy_nodes_as_processes_survive_a_killed_node(tmp_path: Path) -> None:
    """Gateway, MPP, ACQP and three privacy nodes as processes: SIGKILL a share holder,
    keep paying, restart it; it catches up and the MPC settlement equals the ACQP's
    own books. No amount is in the gateway's database or log. The nodes settle in
    4-second cycles, so that a period closes within the test."""
    from veilpay.sdk.periods import Period

    with LocalNet(tmp_path, privacy="semi2k", node_policy={"cycle_s": 4, "close_margin_s": 0.5}) as net:
        net.start_all()
        net.admin("mpp-1", "POST", "/admin/wallets", {"userId": "u1", "name": "Ana Cruz", "currency": "PHP",
                                                       "balance": 10**12})
        amounts = [918_273, 645_231, 372_819, 281_736]
        with net.client() as c:
            for i, v in enumerate(amounts):
                if i == 2:
                    net.stop("node-b", kill=True)
                code = net.admin("mpp-1", "POST", "/admin/codes", {"userId": "u1"})["code"]
                ans = c.pay(f"live-{i}", {"currency": "JPY", "value": str(v)}, code, {"goods": "tea"})
                assert ans.code == "SUCCESS" and ans.body["paymentAmount"]["value"] == str(v)
            last = Period.of(int(time.time() * 1000), 4)  # settling it takes every earlier period's items too
            time.sleep(max(0.0, (last.end_ms + 600) / 1000 - time.time()))
            day = last.label
            waiting = net.operator("/admin/v1/settle", {"settlementDate": day})
            assert waiting["status"] == "WAITING"
            net.start("node-b")
            net.stop("gateway", kill=True)  # and the gateway dies too: its feed to node-b is in its database
            net.start("gateway")
            wait_for(lambda: net.operator("/admin/v1/settle", {"settlementDate": day})["status"] == "DONE", 30,
                  "settlement after the node came back")
            summary = c.settlement_summary(day)
        (s,) = summary.body["summaries"]
        assert s["paymentTotal"]["value"] == str(sum(amounts)) and s["paymentCount"] == 4
        blob = b"".join(p.read_bytes() for p in (tmp_path / "gateway").glob("gateway.db*"))
        blob += (tmp_path / "gateway.log").read_bytes()
        for v in amounts:
            assert str(v).encode() not in blob
        for node in net.nodes:  # the nodes hold random-looking share words, not amounts
            nb = b"".join(p.read_bytes() for p in (tmp_path / node).glob("node.db*"))
            for v in amounts:
                assert str(v).encode() not in nb and v.to_bytes(8, "little") not in nb
