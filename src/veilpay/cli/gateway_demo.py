"""The payment part of the demo: the gateway, three privacy nodes (semi2k: two share
holders and a dealer), a wallet (MPP) and a merchant acquirer (ACQP), each its own
process on loopback with SQLite, run a batch of cross-border payments (Japanese and
Singaporean merchants, Philippine wallets), refunds (one refused by the nodes' bound
check in MPC), a cancel and a decline. The nodes settle in 10-second cycles here (a
network settles daily by default), so that a period closes while the demo runs: they
refuse to settle it while it is open, then settle it once, sealing each total to the
acquirer and the MPP it is owed to; each partner assembles its own settlement files;
the operator gets a noisy, thresholded corridor release; every reveal is in the
nodes' signed ledger, which the acquirer fetches and verifies. The demo prints what
each party saw: the gateway holds tokens, ciphertext, share envelopes and counts,
never an amount or a total; each node holds one random-looking share word per amount."""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from veilpay.cli.localnet import LocalNet
from veilpay.errors import VeilpayError
from veilpay.sdk.ledger import compare_records, fetch_ledger, verify_records
from veilpay.sdk.periods import Period
from veilpay.sdk.settlement import assemble
from veilpay.sdk.shares import Privacy

WALLETS = [("w-1001", "Maria Santos", 5_000_000), ("w-1002", "Jun Reyes", 150_000), ("w-1003", "Ana Cruz", 2_000_000)]
# (wallet, merchant currency, amount in minor units, goods)
PAYMENTS = [
    ("w-1001", "JPY", "12800", "ramen set for 4"), ("w-1003", "JPY", "3400", "matcha and wagashi"),
    ("w-1001", "SGD", "4590", "chilli crab"), ("w-1002", "JPY", "980", "train snacks"),
    ("w-1003", "JPY", "45000", "ceramic tea set"), ("w-1001", "JPY", "2200", "museum tickets"),
    ("w-1002", "SGD", "12000", "electronics"), ("w-1003", "SGD", "1850", "kaya toast breakfast"),
]


# The nodes' disclosure policy in this demo: 10-second settlement cycles (instead of
# the UTC day) so that a period closes while it runs; corridors of 2 or more
# payments; epsilon 1 a release, each payment counted up to JPY 50000 or SGD 200.
CYCLE_S = 10
NODE_POLICY = {"cycle_s": CYCLE_S, "close_margin_s": 1.0, "min_count": 2, "epsilon": "1", "monthly_budget": "100",
               "clip": {"JPY": 50_000, "SGD": 20_000}}


# Risk scoring (docs/risk.md): the wallet holds one risk column of its customers (v1)
# and the hour, the acquirer one of the payment (a1) and the amount; a demo model
# z = 3 v1 + 2 a1 - 4 (a network's model comes from `veilpay train`, kept shared),
# declined from p >= 0.9, reviewed from 0.5, and declined on a burst of payments.
# The assistant's payments in the MCP part carry no acquirer features: the wallet flags
# them for review instead of declining them (on_missing_features, "decline" by default).
RISK = {"columns": ["v1", "hour"], "budget_ms": 1000, "on_missing_features": "review"}
RISK_MODEL = ([3.0, 0.0, 2.0], -4.0)
RISK_RULES = {"version": 1, "mode": "live", "review": 0.5, "decline": 0.9,
              "rules": [{"name": "burst", "then": "decline", "if": [["count_1h", ">", 5], ["score", ">", 0.3]]}]}
RISKY_WALLET = ("w-1004", "Lee Tan", 9_000_000)


def _short(v: Any, n: int = 36) -> str:
    s = v if isinstance(v, str) else json.dumps(v)
    return s if len(s) <= n else s[:n] + "..."


def _keys_part(net: LocalNet) -> None:
    """The key authority: what it certified, and the SDK refusing a directory in which
    the operator put its own key for the MPP."""
    import dataclasses

    from veilpay.errors import ConfigError, KeyNotCertified
    from veilpay.sdk.authority import KeyLog

    log = KeyLog(net.root / "authority" / "log")
    head = log.head()
    with net.client() as c:
        d = c.directory()
        print(f"[network] the key authority (the members' offline key, not the operator's) certified {head.size} "
              f"entries into its log (signed head {head.root.hex()[:16]}..), the SDK checks each key it takes against it")
        mpp = d.get("mpp-1")
        gw = net.keys("gateway").public
        if mpp is None:
            raise ConfigError("the directory lists no mpp-1")
        forged = dataclasses.replace(mpp, hpke=dict(gw.hpke))
        fresh = net.client()
        try:
            fresh.trust.check([*[e for e in d.partners.values() if e.id != "mpp-1"], forged], d.privacy, d.head, 0,
                              [x.encode() for x in log.entries(0, head.size)])
            verdict = "taken (a defect)"
        except KeyNotCertified as exc:
            verdict = f"refused before sealing, KeyNotCertified: {exc}"
        finally:
            fresh.close()
        print(f"[acqp-1] a directory in which the operator lists its own HPKE key for mpp-1: {verdict}\n")


def _risk_part(net: LocalNet, root: Path) -> dict[str, str]:
    """A fraudulent-looking payment declined and a normal one approved, scored by the
    nodes in MPC on both partners' features; what each party saw of it."""
    print("\n[acqp-1] two more checkouts, each scored by the privacy nodes on the wallet's and the acquirer's")
    print("features in MPC (a demo model z = 3 v1 + 2 a1 - 4, kept secret-shared at the nodes; docs/risk.md):")
    seen: dict[str, str] = {}
    decided: dict[str, str] = {}
    with httpx.Client(timeout=20) as http:
        for uid, a1, label in ((RISKY_WALLET[0], 1.0, "fraudulent-looking"), (WALLETS[0][0], 0.0, "normal")):
            code = net.admin("mpp-1", "POST", "/admin/codes", {"userId": uid})["code"]
            r = http.post(net.url["acqp-1"] + "/merchant/checkout", json={
                "amount": {"currency": "JPY", "value": "98000"}, "paymentCode": code,
                "order": {"orderId": f"INV-RISK-{uid}", "goods": "gift cards x20"},
                "risk": {"model": "local-fraud", "features": [a1], "amountUsdCents": 65000}}).json()
            risk = r.get("riskResult") or {}
            seen[r["paymentRequestId"]] = label
            decided[label] = f"{r['result']['resultCode']}/{risk.get('decision')}"
            print(f"  {label:<19} payer {uid}: {r['result']['resultCode']:<12} decision {risk.get('decision')} "
                  f"({risk.get('reason')}, model {risk.get('modelVersion')}, rules v{risk.get('rulesVersion')})")
    con = sqlite3.connect(f"file:{root}/gateway/gateway.db?mode=ro", uri=True)
    for req, label in seen.items():
        row = con.execute("SELECT risk_result, forward FROM payments WHERE payment_request_id = ?", (req,)).fetchone()
        fwd = json.loads(row[1]) if row and row[1] else {}
        env = next(iter(fwd.get("riskFeatures", {}).get("shares", {}).values()), None)
        print(f"[gateway] {label}: stores the decision {row[0] if row else '-'} and the acquirer's features as "
              f"envelopes sealed to the nodes ({_short(env, 60)}); no feature, no score")
    con.close()
    for n in net.nodes:
        nc = sqlite3.connect(f"file:{root}/{n}/node.db?mode=ro", uri=True)
        dec = nc.execute("SELECT decision FROM risk_decisions ORDER BY created_ms DESC LIMIT 1").fetchone()
        ev = nc.execute("SELECT w0 FROM risk_events ORDER BY id DESC LIMIT 1").fetchone()
        nc.close()
        print(f"[{n}] " + ("holds no shares (the dealer); it took part in the MPC" if ev is None else
                           f"holds the last payment's amount as share word {int(ev[0]) % 2**64} and its decision "
                           f"{dec[0] if dec else '-'}, never a feature or a score in the clear"))
    if decided != {"fraudulent-looking": "RISK_REJECT/decline", "normal": "SUCCESS/approve"}:
        raise VeilpayError(f"the demo's risk decisions came out otherwise: {decided}")
    return decided


def run_gateway_demo(out: Path | None = None) -> dict[str, Any]:
    root = Path(out) / "gateway" if out else Path(tempfile.mkdtemp(prefix="veilpay-gw-demo-"))
    with LocalNet(root, privacy="semi2k", node_policy=NODE_POLICY, risk=RISK) as net:
        t0 = time.perf_counter()
        net.start_all()
        for uid, name, bal in [*WALLETS, RISKY_WALLET]:
            net.admin("mpp-1", "POST", "/admin/wallets", {"userId": uid, "name": name, "currency": "PHP", "balance": bal})
            net.admin("mpp-1", "POST", "/admin/risk-profiles",
                      {"userId": uid, "features": {"v1": 2.0 if uid == RISKY_WALLET[0] else -1.0}})
        net.publish_risk(RISK_MODEL[0], RISK_MODEL[1], 1, RISK_RULES)
        print("veilpay demo, part 1: an encrypted payment gateway, three privacy nodes (node-a, node-b hold shares,")
        print("node-c deals correlated randomness), a wallet (mpp-1) and an acquirer (acqp-1), each its own process")
        print(f"on loopback with its own SQLite file, under {root}\n")
        _keys_part(net)
        print("[acqp-1] checkouts at its merchants (the till scans the code shown in the payer's wallet app):")
        done: list[dict[str, Any]] = []
        with httpx.Client(timeout=20) as http:
            for i, (uid, cur, value, goods) in enumerate(PAYMENTS):
                code = net.admin("mpp-1", "POST", "/admin/codes", {"userId": uid})["code"]
                order = {"orderId": f"INV-{7001 + i}", "goods": goods, "merchant": "Kyoto Tea House" if cur == "JPY"
                         else "Marina Eats", "buyer": {"buyerEmail": f"{uid}@mail.example"}}
                r = http.post(net.url["acqp-1"] + "/merchant/checkout", json={
                    "amount": {"currency": cur, "value": value}, "paymentCode": code, "order": order,
                    "env": {"terminalId": f"T-{i % 3}", "terminalIp": f"198.51.100.{20 + i}"},
                    "risk": {"model": "local-fraud", "features": [0.0], "amountUsdCents": int(value)}}).json()
                done.append({**r, "amount": f"{cur} {value}"})
                who = r.get("customer") or {}
                print(f"  {order['orderId']}  {cur} {value:>6}  {r['result']['resultCode']:<24} "
                      f"risk {r.get('riskResult', {}).get('decision', '-'):<8} "
                      f"payer as the MPP shows it to us: {who.get('customerName', '-')} {who.get('displayCustomerId', '')}")
            ok = [d for d in done if d["result"]["resultStatus"] == "S"]
            part = http.post(net.url["acqp-1"] + "/merchant/refund", json={
                "paymentRequestId": ok[0]["paymentRequestId"], "amount": {"currency": "JPY", "value": "3200"}}).json()
            full = http.post(net.url["acqp-1"] + "/merchant/refund", json={
                "paymentRequestId": ok[1]["paymentRequestId"], "amount": {"currency": "JPY", "value": "3400"}}).json()
            over = http.post(net.url["acqp-1"] + "/merchant/refund", json={
                "paymentRequestId": ok[1]["paymentRequestId"], "amount": {"currency": "JPY", "value": "1"}}).json()
        with net.client() as c:
            cancel = c.cancel_payment(payment_request_id=ok[2]["paymentRequestId"])
        print(f"  refund JPY 3200 of {ok[0]['paymentRequestId']}: {part['result']['resultCode']}; "
              f"full refund of {ok[1]['paymentRequestId']}: {full['result']['resultCode']}; "
              f"one more yen: {over['result']['resultCode']}; cancel {ok[2]['paymentRequestId']}: {cancel.code}")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            notes = net.admin("acqp-1", "GET", "/admin/notifications")
            if len(notes["notifications"]) >= len(done) + 2:
                break
            time.sleep(0.05)
        print(f"[acqp-1] webhooks applied: {len(notes['notifications'])} "
              f"(received on the wire: {notes['wire']}, each notifyId applied once)")
        elapsed = time.perf_counter() - t0

        period = Period.of(int(time.time() * 1000), CYCLE_S)  # the last period with payments in it
        early = net.operator("/admin/v1/settle", {"settlementDate": period.label})
        con = sqlite3.connect(f"file:{root}/gateway/gateway.db?mode=ro", uri=True)
        rows = con.execute("SELECT id, mpp_id, code_issuer, currency, amount, status, result_code, customer_token, "
                           "forward, customer_info, amount_sealed FROM payments ORDER BY created_ms").fetchall()
        con.close()
        print("\n[gateway] what the operator holds for each payment (route, currency, amount, status, pseudonym):")
        for pid, mpp, pre, cur, amt, st, code, tok, _fwd, _info, _sealed in rows:
            print(f"  {pid[:16]}.. via {mpp} (prefix {pre})  {cur} {'hidden' if amt is None else amt:>6}  {st:<9} "
                  f"{code:<24} token {_short(tok or '-', 14)}")
        first = rows[0][0]
        f = json.loads(rows[0][8])
        sealed = json.loads(rows[0][10] or "{}")
        print(f"  payment {first}, everything the gateway stores about it:")
        print(f"    amount:      {_short(sealed.get('mpp-1'), 100)} (to mpp-1)")
        print(f"                 {_short(sealed.get('acqp-1'), 100)} (to acqp-1)")
        print(f"    paymentCode: {_short(f['paymentMethod']['paymentMethodId'], 100)}")
        print(f"    order:       {_short(f['order'], 100)}")
        print(f"    env:         {_short(f['env'], 100)}")
        print(f"    customerInfo (from the MPP, for acqp-1 only): {_short(rows[0][9] or '-', 88)}")
        con = sqlite3.connect(f"file:{root}/gateway/gateway.db?mode=ro", uri=True)
        feed = con.execute("SELECT node, item FROM node_feed WHERE item LIKE ? ORDER BY seq",
                           (f'%"id":"{first}"%',)).fetchall()
        con.close()
        for node, item in feed:
            it = json.loads(item)
            if it.get("op") == "share":
                print(f"    share for {node}: {_short(it['envelope'], 92)}, in acqp-1's signed bundle "
                      f"(signature {it['bundle']['sig'][:16]}..)")
        for n in net.nodes:
            nc = sqlite3.connect(f"file:{root}/{n}/node.db?mode=ro", uri=True)
            r = nc.execute("SELECT w0, w1, status FROM items WHERE id = ?", (first,)).fetchone()
            nc.close()
            held = "nothing (the dealer holds no data; it sends correlated randomness)" if r is None else \
                f"share word {int(r[0]) % 2**64:>20} (status {r[2]}), a uniformly random-looking ring element"
            print(f"[{n}] holds for {first[:16]}..: {held}")

        print(f"\n[gateway] asks the nodes to settle period {period} while it is still open: {early.get('status')} "
              f"({early.get('message', '')[:60]}..)")
        time.sleep(max(0.0, (period.end_ms + 1200) / 1000 - time.time()))
        settled = net.operator("/admin/v1/settle", {"settlementDate": period.label})
        again = net.operator("/admin/v1/settle", {"settlementDate": period.label})
        print(f"[gateway] settles {period} once it has closed: {settled.get('status')}, "
              f"{settled.get('bytesBetweenNodes')} bytes between the nodes; the operator sees counts only:")
        for g in settled.get("groups", []):
            print(f"  {g['acquirerId']} <- {g['pspId']} {g['currency']} {g['kind']:<6} {g['count']} transactions "
                  "(total sealed to the acquirer and the MPP)")
        print(f"  asked again: the same sealed answer ({again.get('message') == settled.get('message')}), "
              f"ledger entry {again.get('ledger', {}).get('seq')} both times")
        nodes = {n: net.keys(n).public for n in net.nodes}
        books: dict[str, int] = {}
        for d in done:
            if d["result"]["resultStatus"] == "S" and d["paymentRequestId"] != ok[2]["paymentRequestId"]:
                cur, value = d["amount"].split()
                books[cur] = books.get(cur, 0) + int(value)
        books["JPY"] = books.get("JPY", 0) - 3200 - 3400
        nets: dict[str, int] = {}
        for pid in ("acqp-1", "mpp-1"):
            doc = json.loads((root / "settlement" / period.label.replace(":", "") / pid / "settlement.json")
                             .read_text())
            mine = assemble(doc, net.keys(pid), nodes, Privacy.from_json(doc["privacy"]))
            mine.write(root / f"{pid}-settlement" / period.label.replace(":", ""))
            print(f"[{pid}] opens what the nodes sealed to it and writes summary.csv and detail.csv "
                  f"({len(mine.detail)} transactions, {len(mine.mismatches)} mismatches):")
            for r in mine.summary:
                print(f"  {r[1]} <- {r[2]} {r[3]}: {r[4]} payments {r[5]}, {r[6]} refunds {r[7]}, net {r[8]}")
                if pid == "acqp-1":
                    nets[r[3]] = nets.get(r[3], 0) + int(r[8])
        print(f"  acqp-1's own books, net per currency: {books}; equal to the MPC totals: {books == nets}")
        an = net.operator("/admin/v1/analytics", {"period": period.label})
        print(f"[gateway] the operator's corridor release for {period} (epsilon {an.get('epsilon')}, cells under "
              f"{an.get('minCount')} payments suppressed, each payment counted up to the clip):")
        for c in an.get("corridors", []):
            print(f"  {c['from']} -> {c['to']} {c['currency']}: {c['count']} payments, total "
                  f"{c['total'] if c['total'] is not None else 'suppressed'} (noisy; clip {c['clip']})")
        copies = [fetch_ledger(net.url[n], net.keys("acqp-1"), nodes[n]) for n in net.nodes]
        heads = [verify_records(cp, nodes[n]) for cp, n in zip(copies, net.nodes, strict=True)]
        for other in copies[1:]:
            compare_records(copies[0], other)
        print(f"[acqp-1] fetches the nodes' disclosure ledgers: {heads[0][0]} entries each, every signature and "
              f"hash verifies, the three copies agree (head {heads[0][1][:16]}..):")
        for rec in copies[0]:
            b = rec["body"]
            print(f"  #{rec['seq']} {b['function']:<12} {b['subject'][:32]:<32} to {','.join(b['recipients'])[:30]:<30}"
                  f" cells {b['cells']} epsilon {b['epsilon']}")

        ledger = net.admin("mpp-1", "GET", "/admin/ledger")["payments"]
        print("\n[mpp-1] its own books: who paid, debited in the wallet's currency (PHP centavos):")
        for uid, name, bal in WALLETS:
            w = net.admin("mpp-1", "GET", f"/admin/wallets/{uid}")
            print(f"  {uid} {name:<13} balance {bal:>9} -> {w['balance']:>9}")
        print(f"  payments in its ledger: {len(ledger)}, succeeded {sum(p['status'] == 'SUCCESS' for p in ledger)}, "
              f"cancelled {sum(p['status'] == 'CANCELLED' for p in ledger)}")
        risk = _risk_part(net, root)
        print(f"\npart 1 took {elapsed:.1f} s including process start-up; logs and databases are in {root}\n")
        from veilpay.cli.mcp_demo import run_mcp_demo

        run_mcp_demo(net, period.label)
        return {"payments": len(done), "succeeded": len(ok), "notifications": len(notes["notifications"]),
                "risk": risk}
