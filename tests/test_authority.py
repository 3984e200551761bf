"""The key authority and its transparency log, tried as a cheating operator would:
the gateway lists keys of its own (or an owner's replaced ones, or another privacy-node
set) in the directory it signs, or shows partners two views of the log; the SDK must
refuse before it seals anything, and the nodes, as witnesses, must catch the two views.
The gateway, partners and nodes run in one process (tests/gateway_net.py)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from gateway_net import Net, run

from veilpay.errors import ConfigError, KeyNotCertified, LogInconsistent, NodeError
from veilpay.node.witness import Witness
from veilpay.partners.mpp import create_mpp_app
from veilpay.sdk import create_party, load_party, rotate_keys
from veilpay.sdk.authority import KeyLog, KeyTrust, certify, create_authority, verify_entry
from veilpay.sdk.directory import Directory
from veilpay.sdk.keys import PublicEntry
from veilpay.sdk.monitor import exchange_heads, watch
from veilpay.sdk.shares import Privacy
from veilpay.sdk.transparency import TreeHead, consistency_proof, leaf_hash

CANARY = {"orderId": "CANARY-ORDER-5521", "goods": "CANARYGOODS-90210", "buyer": {"email": "canary.5521@zq.example"}}
JPY = {"currency": "JPY", "value": "1000"}


def _entry(path: Path) -> PublicEntry:
    return PublicEntry.from_json(json.loads(path.read_text()))


def _serve(net: Net, entries: dict[str, PublicEntry], privacy: Privacy | None = None, head: TreeHead | None = None,
           keep: bool = True) -> None:
    """The operator's gateway signs and serves a directory of its choosing."""
    files = net.gateway.state.directory
    files._checked = 0.0
    files._mtimes = ()  # the genuine files, read again
    cur = files()
    files._dir = Directory(cur.version + 1, {**cur.partners, **entries}, privacy if privacy is not None else cur.privacy,
                           head or cur.head)
    files._checked = 1e18 if keep else 0.0


async def _refused_before_sealing(net: Net, client: Any, code: str, error: type[Exception]) -> str:
    """Pay with ``client``; the refusal must come before any pay request leaves it."""
    before = len(net.router.log)
    with pytest.raises(error) as refused:
        await client.pay("swap-1", JPY, code, CANARY, {"ip": "198.51.100.7"})
    sent = net.router.log[before:]
    assert all(path != "/v1/payments/pay" for _, path, _, _ in sent)
    assert not any(b"CANARY" in body for _, _, body, _ in sent)
    return str(refused.value)


def _gateway_own_key(net: Net, pid: str) -> PublicEntry:
    """``pid``'s entry with the gateway's own HPKE key in place of the owner's."""
    real = _entry(net.tmp / "keys" / pid / "public.json")
    gw = load_party(net.tmp / "keys" / "gateway").public
    return dataclasses.replace(real, hpke=dict(gw.hpke))


# ------------------------------------------------------------- substituted keys
def test_a_gateway_that_swaps_keys_is_refused_before_anything_is_sealed(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path, privacy="semi2k")
        await net.wallet("u1", 10**6)
        code = await net.code("u1")
        # 1. the MPP's HPKE key replaced, the owner's self-signature and certificate kept
        _serve(net, {"mpp-1": _gateway_own_key(net, "mpp-1")})
        msg = await _refused_before_sealing(net, net.client(), code, KeyNotCertified)
        assert "mpp-1" in msg and "self-signature" in msg
        # 2. a privacy node's key replaced and the entry signed again with a key of the gateway's
        evil = create_party(tmp_path / "evil", "node-a", "node", endpoint="http://node-a.test").public
        _serve(net, {"node-a": evil})
        msg = await _refused_before_sealing(net, net.client(), code, KeyNotCertified)
        assert "node-a" in msg and "certificate" in msg
        # 3. ... with a certificate from an authority of the gateway's own
        create_authority(tmp_path / "rogue", "rogue")
        certify(tmp_path / "rogue", tmp_path / "evil" / "public.json")
        _serve(net, {"node-a": _entry(tmp_path / "evil" / "public.json")})
        await _refused_before_sealing(net, net.client(), code, KeyNotCertified)
        # 4. another privacy-node set (one the gateway runs) than the one the partner pinned
        assert net.privacy is not None
        _serve(net, {}, privacy=Privacy("semi2k", ("node-a", "node-c"), "node-b"))
        msg = await _refused_before_sealing(net, net.client(), code, KeyNotCertified)
        assert "pinned" in msg
        # the genuine directory again: the same payment goes through, sealed to the real keys
        _serve(net, {p: _entry(tmp_path / "keys" / p / "public.json") for p in ("mpp-1", "node-a")},
               privacy=net.privacy)
        r = await net.client().pay("swap-2", JPY, code, CANARY, {"ip": "198.51.100.7"})
        assert r.code == "SUCCESS"
    run(body())


def test_an_entry_the_owner_replaced_is_refused(tmp_path: Path) -> None:
    """The MPP rotates (say its old HPKE key leaked); a gateway holding the old key serves
    the old entry, whose certificate still verifies: the log shows it was replaced."""
    async def body() -> None:
        net = Net(tmp_path)
        old = _entry(tmp_path / "keys" / "mpp-1" / "public.json")
        verify_entry(old, net.authority)
        rotate_keys(tmp_path / "keys" / "mpp-1")
        net.certify("mpp-1")
        net.gateway.state.directory._checked = 0.0
        restarted = create_mpp_app(net._pcfg("mpp-1", {"JPY/PHP": "0.38"}, True), transport=net.router)
        net.router.apps["mpp-1.test"] = httpx.ASGITransport(restarted)  # the MPP runs on its new keys
        await net.wallet("u1", 10**6)
        code = await net.code("u1")
        _serve(net, {"mpp-1": old})
        msg = await _refused_before_sealing(net, net.client(), code, KeyNotCertified)
        assert "replaced" in msg
        # and a client that already took the new entry refuses to go back to the old one
        seen = net.client()
        _serve(net, {"mpp-1": _entry(tmp_path / "keys" / "mpp-1" / "public.json")})
        assert (await seen.pay("r-1", JPY, code, CANARY)).code == "SUCCESS"
        _serve(net, {"mpp-1": old})
        with pytest.raises(KeyNotCertified):
            await seen.directory(refresh=True)
    run(body())


def test_a_gateway_without_certificates_does_not_start_and_keeps_serving_on_a_bad_reload(tmp_path: Path) -> None:
    from veilpay.gateway.app import DirectoryFiles
    from veilpay.sdk.authority import load_authority

    net = Net(tmp_path)
    paths = [tmp_path / "keys" / p / "public.json" for p in ("mpp-1", "acqp-1")]
    authority = load_authority(tmp_path / "authority" / "authority.json")
    files = DirectoryFiles(paths, None, authority, KeyLog(tmp_path / "authority" / "log"))
    assert files().get("mpp-1") is not None
    # the operator drops in a key of its own for mpp-1: the file changes, the directory does not
    entry = _gateway_own_key(net, "mpp-1")
    (paths[0]).write_text(json.dumps(entry.to_json()))
    files._checked = 0.0
    assert files().get("mpp-1").hpke != entry.hpke  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="cannot be served"):
        DirectoryFiles(paths, None, authority, KeyLog(tmp_path / "authority" / "log"))()


# ------------------------------------------------------------------- split views
def _fork(net: Net, tmp: Path) -> Path:
    """A second view of the log, made with the authority's key (a compromised or coerced
    authority): a certified entry in mpp-1's name with keys of the attacker's, at the
    position where the real log holds another entry."""
    fork = tmp / "fork"
    shutil.copytree(net.authority_dir, fork)
    create_party(tmp / "evil-mpp", "mpp-1", "mpp", endpoint="http://mpp-1.test", code_prefixes=["2810"], region="PH")
    certify(fork, tmp / "evil-mpp" / "public.json")
    shutil.copy(tmp / "keys" / "mpp-2" / "public.json", tmp / "mpp-2-before.json")
    rotate_keys(tmp / "keys" / "mpp-2")
    net.certify("mpp-2")  # the real log grows by as many entries
    return fork


def test_a_client_refuses_a_head_outside_the_history_it_saw(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path)
        client = net.client()
        net.gateway.state.directory._checked = 0.0
        d = await client.directory()
        fork = _fork(net, tmp_path)
        net.gateway.state.directory._checked = 0.0
        d = await client.directory(refresh=True)  # the real log, one entry longer: it extends what was seen
        assert d.head is not None and d.head.size == client.trust.log.size
        # now the gateway switches this client to the forked view
        net.gateway.state.directory.log.folder = fork / "log"
        net.gateway.state.directory.log._cache = None
        _serve(net, {"mpp-1": _entry(tmp_path / "evil-mpp" / "public.json")}, head=KeyLog(fork / "log").head())
        with pytest.raises(LogInconsistent, match="another view"):
            await client.directory(refresh=True)
        # even a new client refuses a directory that mixes the two views (mpp-2's entry is
        # certified by the real log's head of the same size)
        with pytest.raises(LogInconsistent, match="another view"):
            await net.client().directory(refresh=True)
        # a new client shown one consistent fork takes it: that is what witnesses are for
        _serve(net, {"mpp-1": _entry(tmp_path / "evil-mpp" / "public.json"),
                     "mpp-2": _entry(tmp_path / "mpp-2-before.json")}, head=KeyLog(fork / "log").head())
        fresh = net.client()
        taken = (await fresh.directory(refresh=True)).get("mpp-1")
        assert taken is not None and taken.hpke[1].to_bytes() == \
            _entry(tmp_path / "evil-mpp" / "public.json").hpke[1].to_bytes()
    run(body())


class _SyncRouter(httpx.BaseTransport):
    """The in-process network, for the synchronous monitor run in a worker thread."""

    def __init__(self, net: Net) -> None:
        self.net = net

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        areq = httpx.Request(request.method, request.url, headers=request.headers, content=request.content)
        resp = anyio.from_thread.run(self.net.router.handle_async_request, areq)
        return httpx.Response(resp.status_code, headers=resp.headers, content=resp.content)


def _log_app(folder: Path) -> FastAPI:
    """The log as a cheating gateway serves it to some callers."""
    app = FastAPI()
    log = KeyLog(folder)

    @app.get("/v1/log/entries")
    def entries(start: int = 0) -> dict[str, Any]:
        return {"head": log.head().to_json(), "start": start, "entries": log.entries(start, start + 10_000)}

    return app


def test_the_nodes_as_witnesses_catch_a_split_view(tmp_path: Path) -> None:
    async def body() -> None:
        net = Net(tmp_path, privacy="semi2k")
        fork = _fork(net, tmp_path)
        net.router.apps["fork.test"] = httpx.ASGITransport(_log_app(fork / "log"))
        nodes = [_entry(tmp_path / "keys" / n / "public.json") for n in ("node-a", "node-b")]
        sync = _SyncRouter(net)

        def monitor(pid: str, url: str) -> dict[str, Any]:
            return watch(url, net.keys(pid), net.authority, tmp_path / f"{pid}-state.json", transport=sync,
                         nodes=nodes)

        # acqp-1 is shown the real log and witnesses it at the nodes
        real = await anyio.to_thread.run_sync(monitor, "acqp-1", "http://gateway.test")
        assert real["witnessed"] == {"node-a": real["size"], "node-b": real["size"]}
        # acqp-2 is shown the fork: the nodes hold a head its log does not have
        with pytest.raises(LogInconsistent, match="two views"):
            await anyio.to_thread.run_sync(monitor, "acqp-2", "http://fork.test")
        # the other order: the fork witnessed first, then the real log is caught
        for n in ("node-a", "node-b"):
            net.add_node(n, database=f"sqlite:///{tmp_path}/{n}/witness2.db")
        await anyio.to_thread.run_sync(monitor, "acqp-2", "http://fork.test")
        with pytest.raises(LogInconsistent, match="two views"):
            await anyio.to_thread.run_sync(monitor, "acqp-1", "http://gateway.test")
    run(body())


def test_the_witness_takes_only_consistent_heads(tmp_path: Path) -> None:
    from veilpay.node.store import open_store

    net = Net(tmp_path)
    log = KeyLog(net.authority_dir / "log")
    first = log.head()
    w = Witness(open_store(f"sqlite:///{tmp_path}/w.db"), net.authority)
    assert w.offer({"head": first.to_json(), "base": None})["accepted"]
    rotate_keys(tmp_path / "keys" / "mpp-2")
    net.certify("mpp-2")
    log._cache = None
    second = log.head()
    hashes = [leaf_hash(x.encode()) for x in log.entries(0, second.size)]
    # an offer against another base is answered with the node's head, not taken
    assert w.offer({"head": second.to_json(), "base": 0}) == {"head": first.to_json(), "accepted": False}
    # a wrong proof is refused as two views; the right one is taken
    with pytest.raises(NodeError) as bad:
        w.offer({"head": second.to_json(), "base": first.size, "proof": [("00" * 32)]})
    assert bad.value.code == "LOG_INCONSISTENT"
    proof = consistency_proof(first.size, hashes)
    assert w.offer({"head": second.to_json(), "base": first.size, "proof": [p.hex() for p in proof]})["accepted"]
    assert w.head() == second
    # the same size with another root, a head nobody signed, a malformed offer
    forged = dataclasses.replace(second, root=b"\x01" * 32)
    with pytest.raises(NodeError) as bad:
        w.offer({"head": forged.to_json(), "base": second.size})
    assert bad.value.code == "HEAD_INVALID"  # the signature does not cover this root
    for junk in ([], {"head": "x"}, {"head": second.to_json(), "base": "2"},
                 {"head": second.to_json(), "base": 1, "proof": ["zz"]}):
        with pytest.raises(NodeError) as bad:
            w.offer(junk)
        assert bad.value.code == "HEAD_INVALID"


def test_exchange_heads_over_the_node_api(tmp_path: Path) -> None:
    """A partner offers its head to a node over the node's signed API; an unknown caller
    is refused, and a node head outside the partner's log is the alarm."""
    async def body() -> None:
        net = Net(tmp_path, privacy="semi2k")
        log = KeyLog(net.authority_dir / "log")
        head = log.head()
        hashes = [leaf_hash(x.encode()) for x in log.entries(0, head.size)]
        node = _entry(tmp_path / "keys" / "node-a" / "public.json")
        sync = _SyncRouter(net)

        def offer(pid: str) -> TreeHead:
            with httpx.Client(transport=sync) as http:
                return exchange_heads(http, net.keys(pid), node, net.authority, hashes, head)

        assert await anyio.to_thread.run_sync(offer, "acqp-1") == head
        stranger = create_party(tmp_path / "stranger", "acqp-9", "acqp")

        def offer_as_stranger() -> Any:
            with httpx.Client(transport=sync) as http:
                return exchange_heads(http, stranger, node, net.authority, hashes, head)

        from veilpay.errors import SignatureError

        with pytest.raises(SignatureError):  # refused unsigned: the caller did not authenticate
            await anyio.to_thread.run_sync(offer_as_stranger)
        with pytest.raises(LogInconsistent):  # a partner whose log differs from the one witnessed
            def offer_other() -> Any:
                other = [leaf_hash(b"x")] + hashes[1:]
                with httpx.Client(transport=sync) as http:
                    return exchange_heads(http, net.keys("mpp-1"), node, net.authority, other, head)
            await anyio.to_thread.run_sync(offer_other)
    run(body())


# ------------------------------------------------------------------- the trust
def test_key_trust_checks_each_entry_version_once(tmp_path: Path, monkeypatch: Any) -> None:
    """Certificates are verified once per entry version and head signatures once per
    head: a directory fetched again costs no public-key operation."""
    import veilpay.sdk.authority as auth

    net = Net(tmp_path)
    log = KeyLog(net.authority_dir / "log")
    entries = [_entry(tmp_path / "keys" / p / "public.json") for p in ("mpp-1", "mpp-2", "acqp-1", "acqp-2")]
    trust = KeyTrust(net.authority)
    wanted = trust.wanted(entries, log.head())
    assert wanted == (0, log.head().size)
    trust.check(entries, None, log.head(), 0, [x.encode() for x in log.entries(*wanted)])
    calls = []
    real_entry, real_head = auth.certified_at, TreeHead.verify
    monkeypatch.setattr(auth, "certified_at", lambda *a: calls.append("entry") or real_entry(*a))
    monkeypatch.setattr(TreeHead, "verify", lambda *a: calls.append("head") or real_head(*a))
    assert trust.wanted(entries, log.head()) is None
    trust.check(entries, None, log.head(), 0, [])
    assert calls == []
    # leaves that do not make the signed head are refused; so are pages that overlap
    # what is held (skipped) or leave a gap
    leaves = [x.encode() for x in log.entries(0, log.head().size)]
    for start, page in ((0, leaves[:-1] + [leaves[0]]), (0, leaves[:-1]), (1, leaves[1:-1])):
        with pytest.raises(LogInconsistent):
            KeyTrust(net.authority).check(entries, None, log.head(), start, page)
    half = KeyTrust(net.authority)
    half.log.extend(TreeHead.from_json(json.loads((net.authority_dir / "log" / "head.json").read_text())), 0, leaves)
    again = KeyTrust(net.authority)
    again.check(entries, None, log.head(), 0, leaves)
    again.check(entries, None, log.head(), 0, leaves)  # a refresh that overlapped another: the held ones skipped


def test_a_restarted_client_is_not_rolled_back(tmp_path: Path) -> None:
    """Found by the adversary review: a fresh client mirrors the log only up to the head
    the gateway shows, so a gateway could show an older head (or none) and serve an
    entry the owner has replaced since. A directory without a head is refused; a client
    with a log state refuses a head older than the one it saw before its restart."""
    async def body() -> None:
        net = Net(tmp_path)
        old = _entry(tmp_path / "keys" / "mpp-1" / "public.json")
        old_head = KeyLog(net.authority_dir / "log").head()
        state = tmp_path / "acqp-1-log-state.json"
        assert (await net.client(log_state=state).directory()).head == old_head
        rotate_keys(tmp_path / "keys" / "mpp-1")
        net.certify("mpp-1")
        net.gateway.state.directory._checked = 0.0
        assert (await net.client(log_state=state).directory()).head.size == old_head.size + 1  # type: ignore[union-attr]
        for head in (None, old_head):
            files = net.gateway.state.directory
            files._dir = dataclasses.replace(files(), partners={**files().partners, "mpp-1": old}, head=head)
            files._checked = 1e18
            with pytest.raises(LogInconsistent, match="no key-log head|older than"):
                await net.client(log_state=state).directory()  # restarted with its state
        # a first run without any state takes the older head: the limit the docs state
        # (the monitor's exchange with the nodes is what shows it a newer one)
        assert (await net.client().directory()).get("mpp-1").hpke.keys() == {1}  # type: ignore[union-attr]
        files._dir = dataclasses.replace(files._dir, head=None)  # type: ignore[arg-type]
        with pytest.raises(LogInconsistent, match="no key-log head"):
            await net.client().directory()  # but never a directory without a head
    run(body())


def test_a_head_nobody_signed_fetches_nothing(tmp_path: Path) -> None:
    """Found by the adversary review: a directory head of a huge size sent the client
    fetching log pages forever. The head's signature is checked before any fetch."""
    async def body() -> None:
        net = Net(tmp_path)
        files = net.gateway.state.directory
        real = files()
        files._dir = dataclasses.replace(real, head=dataclasses.replace(real.head, size=10**12))
        files._checked = 1e18
        before = len(net.router.log)
        with pytest.raises(LogInconsistent, match="did not sign"):
            await net.client().directory()
        assert [p for _, p, _, _ in net.router.log[before:]] == ["/v1/directory"]
    run(body())


def test_malformed_entries_and_directories_are_named_errors() -> None:
    from veilpay.crypto.signing import SigningKey, b64e

    key = b64e(SigningKey.generate().public().to_bytes())
    base = {"id": "mpp-1", "role": "mpp", "signingKeys": [{"version": 1, "public": key}]}
    for bad in ({**base, "id": "mpp-1\n"}, {**base, "signingKeys": [{"version": 10**20, "public": key}]},
                {**base, "signingKeys": [{"version": "x", "public": key}]}, {**base, "codePrefixes": ["28\n"]}):
        with pytest.raises(ConfigError):
            PublicEntry.from_json(bad)
    with pytest.raises(ConfigError):
        Directory.from_json({"version": "abc", "partners": []})
    entry = PublicEntry.from_json(base)
    entry.self_sig = {"kv": 1, "sig": 10**30}
    with pytest.raises(KeyNotCertified):
        verify_entry(entry, create_authority_in_memory())


def create_authority_in_memory() -> Any:
    from veilpay.crypto.signing import SigningKey
    from veilpay.sdk.authority import Authority

    return Authority("test", SigningKey.generate().public())


def test_no_mpp_can_take_another_mpps_codes(tmp_path: Path) -> None:
    """Found by the adversary review: a prefix nested in another MPP's (28101 inside
    2810) would take its codes (the longest prefix routes). The directory and the
    authority refuse it, and the owner's monitor flags such an entry if one is made."""
    from veilpay.sdk.monitor import foreign_entries

    create_authority(tmp_path / "auth", "n")
    mine = create_party(tmp_path / "m1", "mpp-1", "mpp", code_prefixes=["2810"], endpoint="https://m1.example")
    certify(tmp_path / "auth", tmp_path / "m1" / "public.json")
    create_party(tmp_path / "mx", "mpp-x", "mpp", code_prefixes=["28101"])
    with pytest.raises(ConfigError, match="overlap"):
        certify(tmp_path / "auth", tmp_path / "mx" / "public.json")
    with pytest.raises(ConfigError, match="inside"):
        Directory(1, {"mpp-1": mine.public, "mpp-x": _entry(tmp_path / "mx" / "public.json")})
    sneaky = create_party(tmp_path / "my", "mpp-y", "mpp", endpoint="https://m1.example").public
    leaves = [json.dumps({"entry": e.content()}) for e in (mine.public, _entry(tmp_path / "mx" / "public.json"), sneaky)]
    assert foreign_entries(leaves, mine) == (1, [1, 2])


def test_certify_checks_the_owners_self_signature(tmp_path: Path) -> None:
    create_authority(tmp_path / "auth", "n")
    create_party(tmp_path / "p", "acqp-1", "acqp")
    raw = json.loads((tmp_path / "p" / "public.json").read_text())
    raw["notifyUrl"] = "https://attacker.example/notify"  # changed after the owner signed
    (tmp_path / "p" / "public.json").write_text(json.dumps(raw))
    with pytest.raises(KeyNotCertified, match="self-signature"):
        certify(tmp_path / "auth", tmp_path / "p" / "public.json")
    with pytest.raises(ConfigError, match="already"):
        create_authority(tmp_path / "auth", "n")


@pytest.mark.tcp
def test_keys_cli_and_the_monitor_against_a_running_network(tmp_path: Path, capsys: Any) -> None:
    """The authority's CLI, then ``keys monitor`` as acqp-1 against a live gateway and two
    nodes as witnesses: a clean log, then an entry in acqp-1's name it did not make."""
    from veilpay.cli.localnet import LocalNet
    from veilpay.cli.main import main

    assert main(["keys", "authority", "--out", str(tmp_path / "auth"), "--name", "cli network"]) == 0
    assert main(["keys", "partner", "--out", str(tmp_path / "p"), "--id", "acqp-7", "--role", "acqp"]) == 0
    assert main(["keys", "certify", "--authority", str(tmp_path / "auth"),
                 "--entry", str(tmp_path / "p" / "public.json")]) == 0
    from veilpay.sdk.authority import load_authority

    verify_entry(_entry(tmp_path / "p" / "public.json"), load_authority(tmp_path / "auth" / "authority.json"))
    capsys.readouterr()
    with LocalNet(tmp_path / "net", privacy="semi2k") as net:
        for n in (*net.nodes, "gateway"):
            net.start(n)
        root = net.root
        argv = ["keys", "monitor", "--keys", str(root / "keys" / "acqp-1"), "--authority",
                str(root / "authority" / "authority.json"), "--gateway-url", net.url["gateway"],
                "--node-key", str(root / "keys" / "node-a" / "public.json"),
                "--node-key", str(root / "keys" / "node-b" / "public.json")]
        assert main(argv) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["foreign"] == [] and report["entries_in_my_name"] == 1
        assert report["witnessed"] == {"node-a": report["size"], "node-b": report["size"]}
        # the authority is made to certify a key in acqp-1's name that acqp-1 does not hold
        create_party(tmp_path / "evil", "acqp-1", "acqp")
        certify(root / "authority", tmp_path / "evil" / "public.json")
        assert main(argv) == 1
        report = json.loads(capsys.readouterr().out)
        assert report["foreign"] == [report["size"] - 1]
