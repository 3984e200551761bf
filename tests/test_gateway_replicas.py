"""Gateway replicas on one PostgreSQL: two gateway apps on the same database, each
with its own process state (pools, coalescers, leases held), as two replicas behind a
load balancer. What must hold between them: one payment per paymentRequestId whichever
replica each copy reaches, a request replayed to the other replica refused, each
webhook and each feed row to a node delivered by one replica at a time, and a feed row
that commits late still reaching its node.

The tests as separate processes (``veilpay gateway serve --workers``, SIGKILL under
load) are in tests/test_gateway_live.py."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_net import Net, run, wait_for
from sqlalchemy import func, select

from veilpay.gateway.store import node_cursor, node_feed, outbox, payments
from veilpay.sdk import sign_headers

ORDER = {"orderId": "o-1", "goods": "tea"}


async def _pay(net: Net, c: Any, req: str, value: int, user: str = "u1", code: str | None = None) -> Any:
    code = code or await net.code(user)
    return await c.pay(req, {"currency": "JPY", "value": str(value)}, code, ORDER)


def _count(engine: Any, q: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def test_duplicate_requests_split_between_two_replicas_make_one_payment(tmp_path: Path, postgres_url: str) -> None:
    """Each paymentRequestId sent to both replicas at the same moment (a client that
    timed out on one and retried on the other, or a load balancer that sent it twice):
    one payment, debited once, notified once, and both copies answered with it."""
    net = Net(tmp_path, database=postgres_url)
    net.replica("gateway-2.test")

    async def go() -> None:
        await net.wallet("u1", 10**9)
        one, two = net.client(), net.client(gateway="gateway-2.test")
        codes = [await net.code("u1") for _ in range(12)]
        answers = await asyncio.gather(*[
            c.pay(f"dup-{i}", {"currency": "JPY", "value": str(100 + i)}, codes[i], ORDER)
            for i in range(12) for c in (one, two)])
        for i in range(12):
            a, b = answers[2 * i], answers[2 * i + 1]
            assert a.code == b.code == "SUCCESS", (a.code, b.code)
            assert a.body["paymentId"] == b.body["paymentId"]
        ledger = (await net.admin("mpp-1", "GET", "/admin/ledger"))["payments"]
        assert len(ledger) == 12 and all(p["status"] == "SUCCESS" for p in ledger)
        assert await net.balance("u1") == 10**9 - sum(int((100 + i) * 38) for i in range(12))
        await net.deliver()
        notes = (await net.notifications())["notifications"]
        assert sorted(n["payment_id"] for n in notes) == sorted({a.body["paymentId"] for a in answers})
        await one.aclose()
        await two.aclose()

    run(go())
    assert _count(net.gateway.state.engine, select(func.count()).select_from(payments)) == 12
    assert _count(net.gateway.state.engine, select(func.count()).select_from(outbox)) == 12


def test_a_request_replayed_to_the_other_replica_is_refused(tmp_path: Path, postgres_url: str) -> None:
    net = Net(tmp_path, database=postgres_url)
    net.replica("gateway-2.test")
    path = "/v1/payments/inquiryPayment"
    raw = json.dumps({"paymentRequestId": "nope"}).encode()
    v, sk = net.keys("acqp-1").signer()
    h = sign_headers(sk, v, "POST", path, "acqp-1", raw, time.time())
    h["Content-Type"] = "application/json"

    async def go() -> tuple[Any, Any]:
        async with httpx.AsyncClient(transport=net.router) as c:
            first = await c.post("http://gateway.test" + path, content=raw, headers=h)
            second = await c.post("http://gateway-2.test" + path, content=raw, headers=h)
        return first, second

    first, second = run(go())
    assert first.json()["result"]["resultCode"] == "ORDER_NOT_EXIST"
    assert (second.status_code, second.json()["result"]["resultCode"]) == (401, "REPLAYED_REQUEST")


def test_two_replicas_deliver_each_webhook_once(tmp_path: Path, postgres_url: str) -> None:
    """Both replicas' outbox workers claim at once, round after round, over the same
    due rows: every webhook reaches the ACQP once."""
    net = Net(tmp_path, database=postgres_url)
    second = net.replica("gateway-2.test")

    async def go() -> None:
        await net.wallet("u1", 10**9)
        c = net.client()
        for i in range(30):
            assert (await _pay(net, c, f"w-{i}", 100 + i)).code == "SUCCESS"
        await c.aclose()
        workers = (net.gateway.state.outbox, second.state.outbox)
        deadline = time.monotonic() + 60
        while _count(net.gateway.state.engine, select(func.count()).select_from(outbox)
                     .where(outbox.c.status == "DELIVERED")) < 30 and time.monotonic() < deadline:
            await asyncio.gather(*[w.run_once(limit=4) for w in workers])

    run(go())
    calls = [json.loads(b)["notifyId"] for h, p, b, _ in net.router.log if p == "/notify"]
    with net.gateway.state.engine.connect() as conn:
        rows = conn.execute(select(outbox.c.notify_id, outbox.c.attempts, outbox.c.status)).all()
    assert len(rows) == 30 and {r.status for r in rows} == {"DELIVERED"}
    # each post is an attempt its row records: no replica sent a row another one held
    assert sorted(calls) == sorted(r.notify_id for r in rows for _ in range(r.attempts))


def test_two_replicas_relay_each_feed_row_once_in_order(tmp_path: Path, postgres_url: str) -> None:
    """Both replicas relay to the same nodes at once while payments arrive at both: the
    relay lease lets one at a time post a node's rows, each position is posted once and
    in order, and every share reaches its node."""
    net = Net(tmp_path, database=postgres_url, privacy="semi2k")
    second = net.replica("gateway-2.test")
    links = (net.gateway.state.nodes, second.state.nodes)

    async def go() -> None:
        await net.wallet("u1", 10**9)
        one, two = net.client(), net.client(gateway="gateway-2.test")
        stop = asyncio.Event()

        async def relay(link: Any) -> None:
            while not stop.is_set():
                await link.run_once()
                await asyncio.sleep(0)

        relays = [asyncio.create_task(relay(link)) for link in links for _ in range(2)]
        for i in range(8):
            got = await asyncio.gather(_pay(net, one, f"a-{i}", 100 + i), _pay(net, two, f"b-{i}", 200 + i))
            assert [g.code for g in got] == ["SUCCESS", "SUCCESS"]
        stop.set()
        await asyncio.gather(*relays)
        for link in links:
            for n in link.privacy.nodes:
                await link.flush(n)
        await one.aclose()
        await two.aclose()

    run(go())
    engine = net.gateway.state.engine
    for n in ("node-a", "node-b"):
        posted = [it["seq"] for h, p, b, _ in net.router.log if h == f"{n}.test" and p == "/node/v1/feed"
                  for it in json.loads(b)["items"]]
        rows = _count(engine, select(func.count()).select_from(node_feed).where(node_feed.c.node == n))
        assert posted == list(range(1, rows + 1)), n  # each position once, in order, none missing
        with engine.connect() as conn:
            assert conn.execute(select(node_cursor.c.delivered).where(node_cursor.c.node == n)).scalar_one() == rows
    assert links[0].pending("node-a") == 0 == links[1].pending("node-b")


def test_a_feed_row_that_commits_late_still_reaches_its_node(tmp_path: Path, postgres_url: str) -> None:
    """A transaction takes a feed row's seq, then other payments' rows (higher seqs)
    commit and are relayed before it commits. A relay that delivered by seq would
    have passed the late row for good; positions are given at relay time, so it goes
    out next."""
    net = Net(tmp_path, database=postgres_url, privacy="semi2k")
    link = net.gateway.state.nodes
    engine = net.gateway.state.engine

    async def go() -> None:
        await net.wallet("u1", 10**9)
        c = net.client()
        late = engine.connect()
        tx = late.begin()
        link.enqueue_status(late, "pay_late_row_0001", "CANCELLED")  # seq taken now, not yet committed
        for i in range(3):
            assert (await _pay(net, c, f"early-{i}", 100 + i)).code == "SUCCESS"
        await net.relay()
        before = link.pending("node-a")
        tx.commit()
        late.close()
        assert link.pending("node-a") == before + 1
        await net.relay()
        await c.aclose()

    run(go())
    with engine.connect() as conn:
        seqs = dict(conn.execute(select(node_feed.c.seq, node_feed.c.pos).where(node_feed.c.node == "node-a")).all())
    late_seq = min(seqs)
    assert seqs[late_seq] == max(seqs.values())  # the first seq taken, the last position given
    items = [it for h, p, b, _ in net.router.log if h == "node-a.test" and p == "/node/v1/feed"
             for it in json.loads(b)["items"]]
    assert items[-1]["id"] == "pay_late_row_0001"
    assert link.pending("node-a") == 0 == link.pending("node-b")


@pytest.mark.parametrize("holder_alive", [True, False])
def test_a_relay_lease_is_one_replicas_at_a_time_and_lapses_with_it(tmp_path: Path, holder_alive: bool) -> None:
    """While one replica holds a node's relay lease the other's pass does nothing; a
    lease whose holder died (never dropped it) lapses and the other takes over."""
    from veilpay.gateway import leases

    net = Net(tmp_path, privacy="semi2k")
    second = net.replica("gateway-2.test")
    one, two = net.gateway.state.nodes, second.state.nodes
    engine = net.gateway.state.engine
    with engine.begin() as conn:
        assert leases.take(conn, "relay:node-a", one.me, 60_000 if holder_alive else 1)
    time.sleep(0.01)

    async def go() -> None:
        await net.wallet("u1", 10**9)
        c = net.client()
        assert (await _pay(net, c, "l-1", 100)).code == "SUCCESS"
        await c.aclose()
        assert await two.flush("node-b") is not None  # another node's lease is free
        reached = await two.flush("node-a")
        assert (reached is None) == holder_alive

    run(go())
    assert (two.pending("node-a") > 0) == holder_alive


def test_a_rotated_and_a_retired_key_are_seen_by_every_replica(tmp_path: Path) -> None:
    """Key files are each replica's own copy of the certified directory (a shared
    volume, or a deploy that updates every host): a new key version verifies at both
    replicas once certified, and a retired one is refused at both."""
    from veilpay.errors import SignatureError
    from veilpay.sdk import retire_key, rotate_keys

    net = Net(tmp_path)
    second = net.replica("gateway-2.test")
    dirs = (net.gateway.state.directory, second.state.directory)

    def recheck() -> None:
        for d in dirs:
            d._checked = 0.0  # the once-a-second file check, due now

    async def go() -> None:
        await net.wallet("u1", 10**9)
        old = (net.client(), net.client(gateway="gateway-2.test"))
        assert rotate_keys(tmp_path / "keys" / "acqp-1") == 2
        net.certify("acqp-1")
        recheck()
        new = (net.client(), net.client(gateway="gateway-2.test"))
        assert all(c.keys.signing_version == 2 for c in new)
        for i, c in enumerate(new):
            assert (await _pay(net, c, f"r-{i}", 100)).code == "SUCCESS"
        retire_key(tmp_path / "keys" / "acqp-1", 1)
        net.certify("acqp-1")
        recheck()
        for c in old:
            with pytest.raises(SignatureError, match="KEY_NOT_FOUND"):
                await c.inquiry_payment(payment_request_id="r-0")
        for c in new:
            assert (await c.inquiry_payment(payment_request_id="r-1")).status == "S"
        for c in (*old, *new):
            await c.aclose()

    run(go())


def test_the_sdk_fails_over_to_the_next_replica(tmp_path: Path, postgres_url: str) -> None:
    """A client given three replicas' URLs: the first down, the directory and a payment
    come from the second; the second down too, the same request id is answered with the
    same payment by the third; all down, GatewayUnavailable."""
    from veilpay.errors import GatewayUnavailable
    from veilpay.sdk import AsyncGatewayClient

    net = Net(tmp_path, database=postgres_url)
    net.replica("gateway-2.test")

    async def go() -> None:
        await net.wallet("u1", 10**9)
        urls = ["http://gw-dead.test", "http://gateway-2.test", "http://gateway.test"]
        c = AsyncGatewayClient(net.keys("acqp-1"), urls, net.gw_public, transport=net.router,
                               authority=net.authority, backoff=0.001)
        net.router.down.add("gw-dead.test")
        code = await net.code("u1")
        first = await c.pay("fo-1", {"currency": "JPY", "value": "100"}, code, ORDER)
        assert first.code == "SUCCESS" and c.url == "http://gateway-2.test"
        net.router.down.add("gateway-2.test")
        again = await c.pay("fo-1", {"currency": "JPY", "value": "100"}, code, ORDER)
        assert again.code == "SUCCESS" and again.body["paymentId"] == first.body["paymentId"]
        assert c.url == "http://gateway.test"
        net.router.down.add("gateway.test")
        with pytest.raises(GatewayUnavailable):
            await c.directory(refresh=True)
        await c.aclose()
        net.router.down.clear()
        assert len((await net.admin("mpp-1", "GET", "/admin/ledger"))["payments"]) == 1

    run(go())


# ---------------------------------------------------------------- replicas as processes


def _check_books(net: Any, url: str, ids: list[str], start: int) -> None:
    """Every payment SUCCESS at the gateway, the MPP and the ACQP; each debited once and
    notified once; every webhook delivered."""
    from sqlalchemy import create_engine

    with net.client(gateway="gateway-2" if "gateway-2" in net.gateways else "gateway") as c:
        pids = {}
        for rid in ids:
            q = c.inquiry_payment(payment_request_id=rid)
            assert (q.body["paymentStatus"], q.status) == ("SUCCESS", "S"), rid
            pids[rid] = q.body["paymentId"]
    ledger = net.admin("mpp-1", "GET", "/admin/ledger")["payments"]
    assert sorted(p["payment_id"] for p in ledger) == sorted(pids.values())
    assert all(p["status"] == "SUCCESS" for p in ledger)
    assert net.admin("mpp-1", "GET", "/admin/wallets/u1")["balance"] == start - sum(p["debit"] for p in ledger)
    wait_for(lambda: len(net.admin("acqp-1", "GET", "/admin/notifications")["notifications"]) >= len(ids), 90,
          "a notification per payment")
    notes = net.admin("acqp-1", "GET", "/admin/notifications")["notifications"]
    assert sorted(n["payment_id"] for n in notes) == sorted(pids.values())  # one each: none lost, none twice
    engine = create_engine(url)
    try:
        wait_for(lambda: _count(engine, select(func.count()).select_from(outbox).where(outbox.c.status != "DELIVERED"))
              == 0, 60, "every webhook delivered")
        assert _count(engine, select(func.count()).select_from(payments)) == len(ids)
    finally:
        engine.dispose()


def _load(net: Any, codes: list[str], prefix: str, gateways: list[str], outcomes: dict[str, str],
          threads: int = 8) -> list[Any]:
    """Pay with ``codes`` from ``threads`` threads, each payment through the gateways in
    turn; a payment whose gateway stops answering is sent again, same request id, to the
    next one (a client behind a load balancer that fails over)."""
    import threading

    from veilpay.errors import GatewayUnavailable

    todo = list(enumerate(codes))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i, code = todo.pop()
            rid = f"{prefix}-{i}"
            for attempt in range(6):
                gw = gateways[(i + attempt) % len(gateways)]
                try:
                    with net.client(gateway=gw, retries=0, timeout=10) as c:
                        outcomes[rid] = c.pay(rid, {"currency": "JPY", "value": str(1000 + i)}, code,
                                              {"orderId": rid}).code
                    break
                except GatewayUnavailable:
                    outcomes[rid] = "no answer"
                    time.sleep(0.2)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    return ts


@pytest.mark.tcp
def test_a_replica_killed_under_load_loses_nothing(tmp_path: Path, postgres_url: str) -> None:
    """Two gateway processes on one PostgreSQL take payments; one is killed with
    SIGKILL in the middle. Clients fail over to the other with the same request ids;
    the survivor's resolver finishes what the dead one left PROCESSING and its outbox
    takes over the webhooks the dead one had leased once the lease lapses."""
    from veilpay.cli.localnet import LocalNet

    opts = {"mpp_timeout_s": 2.0, "resolver_interval_s": 0.1, "webhook_backoff_s": 0.05}
    with LocalNet(tmp_path, database=postgres_url, replicas=2, gateway_options=opts) as net:
        net.start_all()
        start = 10**10
        net.admin("mpp-1", "POST", "/admin/wallets", {"userId": "u1", "name": "A", "currency": "PHP", "balance": start})
        codes = net.admin("mpp-1", "POST", "/admin/codes", {"userId": "u1", "count": 80})["codes"]
        outcomes: dict[str, str] = {}
        threads = _load(net, codes, "k", ["gateway", "gateway-2"], outcomes)
        wait_for(lambda: len(outcomes) >= 20, 60, "payments under way")
        net.stop("gateway", kill=True)
        for t in threads:
            t.join(120)
        assert len(outcomes) == 80 and set(outcomes.values()) == {"SUCCESS"}, outcomes
        _check_books(net, postgres_url, [f"k-{i}" for i in range(80)], start)


def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and "spawn_main" in (stat.parent / "cmdline").read_bytes().decode(errors="replace"):
            out.add(int(stat.parent.name))
    return out


@pytest.mark.tcp
def test_gateway_workers_share_a_port_and_a_killed_worker_is_replaced(tmp_path: Path, postgres_url: str) -> None:
    """``veilpay gateway serve --workers 2`` on PostgreSQL: two worker processes answer
    on the one port; one killed with SIGKILL under load is started again by the
    supervisor, and the clients' retries (same request ids) lose nothing."""
    import os
    import signal

    from veilpay.cli.localnet import LocalNet

    opts = {"mpp_timeout_s": 2.0, "resolver_interval_s": 0.1, "webhook_backoff_s": 0.05}
    with LocalNet(tmp_path, database=postgres_url, gateway_workers=2, gateway_options=opts) as net:
        net.start_all()
        supervisor = net.procs["gateway"].pid
        wait_for(lambda: len(_children(supervisor)) == 2, 30, "two workers")
        workers = _children(supervisor)
        start = 10**10
        net.admin("mpp-1", "POST", "/admin/wallets", {"userId": "u1", "name": "A", "currency": "PHP", "balance": start})
        codes = net.admin("mpp-1", "POST", "/admin/codes", {"userId": "u1", "count": 60})["codes"]
        outcomes: dict[str, str] = {}
        threads = _load(net, codes, "w", ["gateway"], outcomes)
        wait_for(lambda: len(outcomes) >= 15, 60, "payments under way")
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        for t in threads:
            t.join(120)
        wait_for(lambda: len(_children(supervisor)) == 2 and victim not in _children(supervisor), 30,
              "the supervisor to start a worker again")
        assert len(outcomes) == 60 and set(outcomes.values()) == {"SUCCESS"}, outcomes
        _check_books(net, postgres_url, [f"w-{i}" for i in range(60)], start)
        # /metrics is the workers' sum, whichever worker answers (counts of the dead one kept)
        seen = set()
        for _ in range(8):
            text_ = httpx.get(net.url["gateway"] + "/metrics", timeout=5).text
            line = [x for x in text_.splitlines() if x.startswith('veilpay_gateway_payments_final_total{status="SUCCESS"}')]
            seen.add(float(line[0].split()[-1]))
        assert len(seen) == 1 and 55 <= seen.pop() <= 60, seen

        # a worker that cannot start (its config edited into an invalid one) says why and
        # stops the supervisor instead of being started again forever
        toml = net.root / "gateway.toml"
        toml.write_text(toml.read_text().replace("mpp_timeout_s = 2.0", 'mpp_timeout_s = "two"'))
        os.kill(sorted(_children(supervisor))[0], signal.SIGKILL)
        net.procs["gateway"].wait(30)
        assert "worker_start_failed" in (net.root / "gateway.log").read_text()
        assert "mpp_timeout_s" in (net.root / "gateway.stderr").read_text()


def test_serve_and_migrate_say_in_one_line_what_stops_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--workers outside serve, a port in use, a PostgreSQL that does not answer: one
    line on stderr each, and the exit codes the README gives (2 usage, 3 unreachable)."""
    import socket

    from veilpay.cli.localnet import LocalNet, free_port
    from veilpay.cli.main import main

    LocalNet(tmp_path)
    cfg = tmp_path / "gateway.toml"
    assert main(["gateway", "migrate", "--config", str(cfg), "--workers", "2"]) == 2
    assert "--workers is for serve only" in capsys.readouterr().err
    text_ = cfg.read_text()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        listen = [x for x in text_.splitlines() if x.startswith("listen")][0]
        cfg.write_text(text_.replace(listen, f'listen = "127.0.0.1:{port}"'))
        assert main(["gateway", "serve", "--config", str(cfg), "--log", str(tmp_path / "gw.log")]) == 2
        err = capsys.readouterr().err
        assert f"cannot listen on 127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1
    cfg.write_text(text_.replace('database = "sqlite:///gateway/gateway.db"',
                                 f'database = "postgresql+psycopg://veilpay@127.0.0.1:{free_port()}/nowhere"'))
    assert main(["gateway", "migrate", "--config", str(cfg)]) == 3
    err = capsys.readouterr().err
    assert "DatabaseUnavailable" in err and "nowhere" in err and len(err.strip().splitlines()) == 1


def test_workers_on_sqlite_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from veilpay.cli.localnet import LocalNet
    from veilpay.cli.main import main

    net = LocalNet(tmp_path)  # writes gateway.toml on SQLite; starts nothing
    assert main(["gateway", "serve", "--config", str(tmp_path / "gateway.toml"), "--workers", "2"]) != 0
    err = capsys.readouterr().err
    assert "--workers 2 needs PostgreSQL" in err and "ConfigError" in err
    assert not net.procs


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_the_rate_limit_is_shared_by_the_replicas(tmp_path: Path, db: str, request: pytest.FixtureRequest) -> None:
    """At most rate_limit_per_s signed requests a second from one acquirer, counted by
    both replicas together: twelve requests in one second, alternating replicas, with a
    limit of five: five answered, seven refused with a signed 429 the SDK can read; the
    next second serves again, and another acquirer has its own count."""
    url = request.getfixturevalue("postgres_url") if db == "postgresql" else None
    net = Net(tmp_path, database=url, rate_limit_per_s=5)
    net.replica("gateway-2.test")  # on SQLite: two apps in one process, the upsert's other spelling

    async def go() -> None:
        clients = [net.client(retries=0), net.client(gateway="gateway-2.test", retries=0)]
        other = net.client("acqp-2", retries=0)
        for c in (*clients, other):
            await c.directory()
        while time.time() % 1 > 0.3:  # start early in a second, so the burst stays in it
            await asyncio.sleep(0.01)
        second = int(time.time())
        codes = [(await clients[i % 2].inquiry_payment(payment_request_id="none")).code for i in range(12)]
        assert int(time.time()) == second, "the burst spilled into the next second; the machine is too slow"
        assert codes.count("ORDER_NOT_EXIST") == 5 and codes.count("REQUEST_TRAFFIC_EXCEED_LIMIT") == 7, codes
        assert (await other.inquiry_payment(payment_request_id="none")).code == "ORDER_NOT_EXIST"
        await asyncio.sleep(1.0)
        assert (await clients[1].inquiry_payment(payment_request_id="none")).code == "ORDER_NOT_EXIST"
        for c in (*clients, other):
            await c.aclose()

    run(go())
