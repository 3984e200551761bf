"""ECDH-PSI against plain set intersection, data plumbing, and bad peers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from parties import run_threads

from veilpay.crypto import BlindingKey, BlindingPool, InvalidPointError, OprfKey, hash_to_p256, hash_to_points
from veilpay.errors import DataError, InvalidPoint, ProtocolMismatch, WireFormatError
from veilpay.net import Communicator, local_mesh
from veilpay.psi import ecdh_psi, load_server_set, read_ids, run_psi_files, setup_server, unbalanced_psi
from veilpay.psi.ecdh import DST, PSI_VERSION, match_pairs, match_points
from veilpay.psi.terms import Terms, agree


def two_party(fn_r: Callable[[Communicator], Any], fn_s: Callable[[Communicator], Any]) -> tuple[Any, Any]:
    out = run_threads({"r": fn_r, "s": fn_s}, timeout=20, join=60)
    return out["r"], out["s"]


def run(x: list[bytes], y: list[bytes], **kw: Any) -> tuple[Any, Any]:
    return two_party(lambda c: ecdh_psi(c, "s", "receiver", x, **kw), lambda c: ecdh_psi(c, "r", "sender", y, **kw))


@pytest.mark.parametrize(("nx", "ny", "common", "chunk"), [
    (200, 200, 0, 1 << 15), (200, 200, 100, 1 << 15), (150, 150, 150, 1 << 15), (0, 50, 0, 1 << 15),
    (50, 0, 0, 1 << 15), (5, 3000, 5, 1 << 15), (3000, 7, 2, 1 << 15),
    (200, 130, 60, 7), (64, 64, 64, 64), (1, 90, 1, 10)])
def test_matches_plain_intersection(nx: int, ny: int, common: int, chunk: int) -> None:
    rng = np.random.default_rng(nx * 7 + ny)
    pool = [f"cust-{v}".encode() for v in rng.choice(10**9, size=nx + ny, replace=False)]
    x = pool[:nx]
    y = x[:common] + pool[nx : nx + ny - common]
    rng.shuffle(y)
    r, s = run(x, y, reveal="both", chunk=chunk)
    want = sorted(i for i, v in enumerate(x) if v in set(y))
    assert r.indices.tolist() == want and r.size == common and r.peer_size == ny
    assert sorted(y[i] for i in s.indices) == sorted(x[i] for i in want)


def test_unicode_and_cardinality() -> None:
    x = ["Zoë".encode(), "北京-42".encode(), b"a", "🙂".encode()]
    y = ["北京-42".encode(), "🙂".encode(), b"b"]
    r, s = run(x, y, mode="cardinality", reveal="both")
    assert r.indices is None and r.size == 2 and s.size == 2 and s.indices is None
    r, s = run(x, y)
    assert r.indices.tolist() == [1, 3] and s.size == -1  # the sender learns nothing by default


def test_worker_processes_give_the_same_answer() -> None:
    x = [f"id{i}".encode() for i in range(700)]
    y = [f"id{i}".encode() for i in range(300, 1200)]
    r, s = run(x, y, reveal="both", chunk=128, workers=2)
    assert r.indices.tolist() == list(range(300, 700)) and s.size == 400


@pytest.mark.parametrize("mode", ["intersection", "cardinality"])
def test_chunk_sizes_may_differ_between_the_sides(mode: str) -> None:
    x = [f"id{i}".encode() for i in range(100)]
    y = [f"id{i}".encode() for i in range(40, 170)]
    r, s = two_party(lambda c: ecdh_psi(c, "s", "receiver", x, mode=mode, reveal="both", chunk=9),
                     lambda c: ecdh_psi(c, "r", "sender", y, mode=mode, reveal="both", chunk=31))
    assert r.size == 60 and s.size == 60 and r.peer_size == 130 and s.peer_size == 100
    if mode == "intersection":
        assert r.indices.tolist() == list(range(40, 100)) and s.indices.tolist() == list(range(60))


def test_hash_to_points_known_answers() -> None:
    vec = json.loads((Path(__file__).parent / "vectors" / "psi_hash_to_points.json").read_text())
    ids = [bytes.fromhex(c["id_hex"]) for c in vec["cases"]]
    got = hash_to_points(ids, bytes.fromhex(vec["salt_hex"]), vec["dst"].encode())
    assert [p.tobytes().hex() for p in got] == [c["point_hex"] for c in vec["cases"]]


def test_match_points_is_exact_even_with_equal_prefixes() -> None:
    rng = np.random.default_rng(5)
    theirs = rng.integers(0, 256, (500, 32), dtype=np.uint8)
    mine = np.concatenate([theirs[[3, 99, 400]], rng.integers(0, 256, (50, 32), dtype=np.uint8)])
    mine[5, :8] = theirs[7, :8]  # same 64-bit prefix, different point: not a match
    assert match_points(mine, theirs).tolist() == [0, 1, 2]
    assert match_pairs(mine, theirs)[1].tolist() == [3, 99, 400]
    theirs[10, :8] = theirs[11, :8]  # equal prefixes inside theirs: the exact fallback
    assert match_points(mine, theirs).tolist() == [0, 1, 2]
    assert match_pairs(mine, theirs)[1].tolist() == [3, 99, 400]
    assert match_points(mine[:0], theirs).tolist() == [] and match_points(mine, theirs[:0]).tolist() == []


def test_duplicates_are_refused_by_the_protocol() -> None:
    mesh = local_mesh(["r", "s"])
    with pytest.raises(ValueError, match="distinct"):
        ecdh_psi(mesh["r"], "s", "receiver", [b"a", b"a"])


def test_blinding_commutes_and_refuses_bad_points() -> None:
    a, b = BlindingKey.generate(), BlindingKey.generate()
    p = hash_to_points([b"x", b"y"], b"salt", DST)
    np.testing.assert_array_equal(a.blind(b.blind(p)), b.blind(a.blind(p)))
    assert not np.array_equal(a.blind(p), b.blind(p))
    zero = np.zeros((1, 32), np.uint8)  # u = 0: small order, all-zero result
    with pytest.raises(InvalidPointError, match="small-order"):
        a.blind(zero)
    big = np.full((1, 32), 0xFF, np.uint8)
    big[0, 31] = 0x7F  # 2^255 - 1 >= p: non-canonical
    with pytest.raises(InvalidPointError, match="not reduced"):
        a.blind(big)


def test_blinding_over_worker_processes_matches_in_process() -> None:
    k = BlindingKey.generate()
    p = hash_to_points([str(i).encode() for i in range(3000)], b"s", DST)
    np.testing.assert_array_equal(k.blind(p, workers=3, min_per_worker=500), k.blind(p, workers=1))
    p[2500] = 0  # a bad point inside a worker's share is reported with its index
    with pytest.raises(InvalidPointError, match="point 2500"):
        k.blind(p, workers=3, min_per_worker=500)


def _fake_sender(points: Callable[[int], np.ndarray], version: int = PSI_VERSION,
                 good_first: int = 0) -> Callable[[Communicator], Any]:
    """A sender that says it holds 2 + good_first ids and sends ``good_first`` good
    points (one per chunk) before the bad ones."""
    def fn(c: Communicator) -> None:
        chunk = 1 if good_first else 1 << 15
        fields = [version, 1, 1, 2 + good_first, chunk] if version == PSI_VERSION else [version, 1, 1, 2]  # v1: no chunk
        hello = np.concatenate([np.array(fields, np.uint64).view(np.uint8), np.zeros(16, np.uint8)])
        got = c.exchange("psi.hello", {"r": [hello]}, {"r": 1})
        n = int(got["r"][0][:40].view(np.uint64)[3])
        for i in range(good_first):
            c.exchange("psi.B", {"r": [hash_to_points([b"g%d" % i], b"s", DST)]})
        if good_first:
            for _ in range(2):
                c.exchange("psi.B", {"r": [points(1)]})
            return
        c.exchange("psi.B", {"r": [points(2)]})
        c.exchange("psi.A", recv={"r": 1})
        c.exchange("psi.BA", {"r": [points(n)]})

    return fn


@pytest.mark.parametrize(("points", "err", "match"), [
    (lambda n: np.zeros((n, 32), np.uint8), InvalidPoint, "small-order"),
    (lambda n: np.full((n, 32), 0xFF, np.uint8), InvalidPoint, "top bit"),
    (lambda n: np.zeros((n, 31), np.uint8), InvalidPoint, "expected"),
    (lambda n: np.zeros((n, 32), np.uint64), InvalidPoint, "expected"),
])
def test_bad_points_from_the_peer(points: Callable[[int], np.ndarray], err: type, match: str) -> None:
    r, _ = two_party(lambda c: ecdh_psi(c, "s", "receiver", [b"a", b"b"]), _fake_sender(points))
    assert isinstance(r, err) and match in str(r) and r.peer == "s"


def test_bad_point_in_a_later_chunk_is_named_by_its_position() -> None:
    r, _ = two_party(lambda c: ecdh_psi(c, "s", "receiver", [b"a", b"b"]),
                     _fake_sender(lambda n: np.zeros((n, 32), np.uint8), good_first=3))
    assert isinstance(r, InvalidPoint) and "point 3" in str(r)


def test_other_version_is_refused() -> None:
    r, _ = two_party(lambda c: ecdh_psi(c, "s", "receiver", [b"a"]), _fake_sender(lambda n: np.zeros((n, 32)), 1))
    assert isinstance(r, ProtocolMismatch) and "version 1" in str(r)


def test_mode_mismatch_is_refused() -> None:
    r, s = two_party(lambda c: ecdh_psi(c, "s", "receiver", [b"a"]),
                     lambda c: ecdh_psi(c, "r", "sender", [b"a"], mode="cardinality"))
    assert isinstance(r, ProtocolMismatch) and isinstance(s, ProtocolMismatch)


def test_truncated_and_vanished_peer() -> None:
    def sender_dies(c: Communicator) -> None:
        c.exchange("psi.hello", {"r": [np.zeros(47, np.uint8)]}, {"r": 1})

    r, _ = two_party(lambda c: ecdh_psi(c, "s", "receiver", [b"a"]), sender_dies)
    assert isinstance(r, WireFormatError)

    def sender_quits(c: Communicator) -> None:
        c.close()

    r, _ = two_party(lambda c: ecdh_psi(c, "s", "receiver", [b"a"]), sender_quits)
    assert type(r).__name__ in ("PeerDisconnected", "ProtocolTimeout")


# -- data plumbing ------------------------------------------------------------------

def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_ids_normalises_dedups_and_counts_nulls(tmp_path: Path) -> None:
    f = write(tmp_path / "a.csv", "id,country,amount\n A1 ,SG,1\na1,SG,2\nA1,sg,3\n,SG,4\nB2,MY,5\n")
    t = read_ids(f, ["id", "country"], normalise="casefold")
    assert len(t.ids) == 2 and t.duplicates == 2 and t.nulls == 1 and t.first_row.tolist() == [0, 4]
    t = read_ids(f, ["id"], normalise="none")
    assert len(t.ids) == 4 and t.duplicates == 0  # " A1 ", "a1", "A1" differ without normalising
    with pytest.raises(DataError, match="row 5 has an empty key in column 'id'"):
        read_ids(f, ["id"], on_null="error")


@pytest.mark.parametrize(("text", "match"), [
    ("id,x\n1,2,3\n", "line 2 has 3 fields"),
    ("", "empty file"),
    ('id,x\n"1,2\n', "malformed CSV"),
])
def test_malformed_csv_names_the_file(tmp_path: Path, text: str, match: str) -> None:
    f = write(tmp_path / "bad.csv", text)
    with pytest.raises(DataError, match=match) as info:
        read_ids(f, ["id"])
    assert "bad.csv" in str(info.value)


def test_missing_key_column_is_named(tmp_path: Path) -> None:
    f = write(tmp_path / "c.csv", "customer,x\n1,2\n")
    with pytest.raises(DataError, match="no column 'customer_id'"):
        read_ids(f, ["customer_id"])


def test_files_end_to_end_keep_receiver_order(tmp_path: Path) -> None:
    fr = write(tmp_path / "r.csv", "cid,name,score\nz9,Ann,1\nb2,Bo,2\nb2,Bo-dup,9\nq7,Cy,3\nm5,Di,4\n")
    fs = write(tmp_path / "s.csv", "cid,other\nm5,x\nz9,y\nnope,z\n")
    out = tmp_path / "common.csv"
    r, s = two_party(
        lambda c: run_psi_files(c, "s", "receiver", fr, ["cid"], out, columns=["cid", "score"]),
        lambda c: run_psi_files(c, "r", "sender", fs, ["cid"]),
    )
    assert out.read_text().splitlines() == ["cid,score", "z9,1", "m5,4"]
    assert r["intersection_size"] == 2 and r["duplicates"] == 1 and s["intersection_size"] is None


def test_parquet_input_with_composite_key(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    fr = tmp_path / "r.parquet"
    pq.write_table(pa.table({"cid": ["a", "b", "c", None], "cc": ["SG", "MY", "SG", "SG"], "v": [1, 2, 3, 4]}), fr)
    fs = write(tmp_path / "s.csv", "cid,cc\nc,SG\nb,SG\na,SG\n")
    out = tmp_path / "o.csv"
    r, _ = two_party(lambda c: run_psi_files(c, "s", "receiver", fr, ["cid", "cc"], out, columns=["v", "cid"]),
                     lambda c: run_psi_files(c, "r", "sender", fs, ["cid", "cc"]))
    assert r["null_keys_dropped"] == 1 and r["intersection_size"] == 2
    assert out.read_text().splitlines() == ["v,cid", "1,a", "3,c"]
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="bad.parquet: not a readable Parquet file"):
        read_ids(tmp_path / "bad.parquet", ["cid"])


def test_failed_run_leaves_no_output(tmp_path: Path) -> None:
    fr = write(tmp_path / "r.csv", "cid\na\nb\n")
    out = tmp_path / "common.csv"
    fake = _fake_sender(lambda n: np.zeros((n, 32), np.uint8))
    terms = Terms("sender", "ecdh", "intersection", "receiver", 1, "trim")
    r, _ = two_party(lambda c: run_psi_files(c, "s", "receiver", fr, ["cid"], out, protocol="ecdh"),
                     lambda c: (agree(c, "r", terms), fake(c)))
    assert isinstance(r, InvalidPoint)
    assert list(tmp_path.iterdir()) == [fr]


@pytest.mark.tcp
@pytest.mark.parametrize("protocol", [[], ["--protocol", "kkrt"], ["--protocol", "ecdh"]],
                         ids=["rr22-default", "kkrt", "ecdh"])
def test_psi_cli_two_processes_over_tls(tmp_path: Path, protocol: list[str]) -> None:
    from veilpay.cli.demo import _free_port_base
    from veilpay.net import provision_network

    net = provision_network(tmp_path / "net", ["wallet", "acquirer"], base_port=_free_port_base())
    fr = write(tmp_path / "r.csv", "customer_id,country,v\n" + "".join(f"c{i},SG,{i}\n" for i in range(300)))
    fs = write(tmp_path / "s.csv", "customer_id,country\n" + "".join(f"c{i},SG\n" for i in range(150, 600)))
    base = [sys.executable, "-m", "veilpay.cli.main", "psi", "--network", str(net), "--key", "customer_id",
            "--key", "country", "--reveal", "both", "--timeout", "60", *protocol]
    procs = [
        subprocess.Popen(base + ["--role", "receiver", "--party", "wallet", "--input", str(fr), "--output",
                                 str(tmp_path / "r_out.csv"), "--columns", "customer_id,v"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        subprocess.Popen(base + ["--role", "sender", "--party", "acquirer", "--input", str(fs), "--output",
                                 str(tmp_path / "s_out.csv")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    rows = (tmp_path / "r_out.csv").read_text().splitlines()
    assert rows[0] == "customer_id,v" and rows[1:] == [f"c{i},{i}" for i in range(150, 300)]
    assert len((tmp_path / "s_out.csv").read_text().splitlines()) == 151
    assert json.loads(outs[0][0].splitlines()[-1])["protocol"] == (protocol[-1] if protocol else "rr22")


@pytest.mark.tcp
def test_unbalanced_cli_two_processes_over_tls(tmp_path: Path) -> None:
    from veilpay.cli.demo import _free_port_base
    from veilpay.net import provision_network

    net = provision_network(tmp_path / "net", ["wallet", "acquirer"], base_port=_free_port_base())
    big = write(tmp_path / "big.csv", "customer_id\n" + "".join(f"c{i}\n" for i in range(2000)))
    small = write(tmp_path / "small.csv", "customer_id,v\nc5,1\nx,2\nc1999,3\n")
    cli = [sys.executable, "-m", "veilpay.cli.main"]
    setup = subprocess.run(cli + ["psi-setup", "--input", str(big), "--key", "customer_id", "--cache",
                                  str(tmp_path / "srv"), "--workers", "2"], capture_output=True, text=True, timeout=120)
    assert setup.returncode == 0, setup.stderr
    base = cli + ["psi", "--network", str(net), "--mode", "unbalanced", "--timeout", "60"]
    procs = [
        subprocess.Popen(base + ["--role", "receiver", "--party", "wallet", "--input", str(small), "--key",
                                 "customer_id", "--cache", str(tmp_path / "cli"), "--output", str(tmp_path / "o.csv")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        subprocess.Popen(base + ["--role", "sender", "--party", "acquirer", "--cache", str(tmp_path / "srv")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert (tmp_path / "o.csv").read_text().splitlines() == ["customer_id,v", "c5,1", "c1999,3"]
    assert json.loads(outs[1][0])["peer_size"] == 3


# -- unbalanced mode -------------------------------------------------------------------

def test_p256_oprf_unblinds_to_the_server_prf() -> None:
    k, r = OprfKey.generate(), OprfKey.generate()
    h = hash_to_p256([b"a", b"b", "Zoë".encode()], b"salt", b"dst")
    np.testing.assert_array_equal(r.inverse().blind(k.blind(r.blind(h))), k.blind(h))
    assert not np.array_equal(r.blind(h), h)
    xs = [np.frombuffer(i.to_bytes(32, "big"), np.uint8) for i in range(1, 40)]
    off = h.copy()
    off[1] = next(x for x in xs if not _on_p256(x))  # about half of all x are not on the curve
    with pytest.raises(InvalidPointError, match="point 1: not an x-coordinate on P-256"):
        k.blind(off)
    with BlindingPool(k, 2) as pool:  # worker processes give the same answer
        np.testing.assert_array_equal(pool.submit(h).result(), k.blind(h))


def _on_p256(x: np.ndarray) -> bool:
    try:
        OprfKey(1).blind(x.reshape(1, 32))
    except InvalidPointError:
        return False
    return True


def _unbalanced(folder_s: Path, folder_c: Path, ids: list[bytes], **policy: Any) -> tuple[Any, Any, dict[str, Any]]:
    stats: dict[str, Any] = {}

    def server(c: Communicator) -> Any:
        try:
            return unbalanced_psi(c, "r", "server", folder_s, **policy)
        finally:
            stats["bytes_from_server"] = c.total().bytes_sent

    out = run_threads({"r": lambda c: unbalanced_psi(c, "s", "client", folder_c, ids), "s": server}, timeout=20,
                      join=60)
    return out["r"], out["s"], stats


def test_unbalanced_queries_against_a_prepared_set(tmp_path: Path) -> None:
    server_ids = [f"cust-{i}".encode() for i in range(3000)]
    setup_server(server_ids, tmp_path / "srv")
    assert oct((tmp_path / "srv" / "key").stat().st_mode & 0o777) == "0o600"
    q1 = [b"cust-5", b"nobody", b"cust-2999", "Zoë".encode()]
    r, s, st1 = _unbalanced(tmp_path / "srv", tmp_path / "cli", q1)
    assert r.indices.tolist() == [0, 2] and r.size == 2 and r.peer_size == 3000 and s.peer_size == 4
    assert st1["bytes_from_server"] > 3000 * 32  # the set came down once ...
    q2 = [f"cust-{i}".encode() for i in range(2990, 3010)]
    r, _, st2 = _unbalanced(tmp_path / "srv", tmp_path / "cli", q2)
    assert r.indices.tolist() == list(range(10))
    assert st2["bytes_from_server"] < 3000 * 32  # ... and is reused from the client's cache
    setup_server(server_ids[:100], tmp_path / "srv")  # a new set: the client notices and downloads it
    r, _, _ = _unbalanced(tmp_path / "srv", tmp_path / "cli", q1)
    assert r.indices.tolist() == [0] and r.peer_size == 100


def test_unbalanced_meters_each_clients_queries_under_one_key(tmp_path: Path) -> None:
    """A client may have at most ``budget`` ids evaluated under the server's key: the
    query that would pass it is refused before any work (QueryRefused at both sides,
    the count kept); a new key (the set prepared again) starts the count afresh; and a
    key past its age serves nothing."""
    import json as _json

    from veilpay.errors import QueryRefused

    setup_server([f"cust-{i}".encode() for i in range(50)], tmp_path / "srv")
    ids = [f"cust-{i}".encode() for i in range(30)]
    r, _, _ = _unbalanced(tmp_path / "srv", tmp_path / "cli", ids, budget=50)
    assert r.size == 30
    r, s, _ = _unbalanced(tmp_path / "srv", tmp_path / "cli", ids, budget=50)
    assert isinstance(r, QueryRefused) and isinstance(s, QueryRefused) and "20 left" in str(r)
    book = _json.loads((tmp_path / "srv" / "budget.json").read_text())
    assert book["clients"] == {"r": 30}
    r, _, _ = _unbalanced(tmp_path / "srv", tmp_path / "cli", ids[:20], budget=50)
    assert r.size == 20  # exactly the budget
    setup_server([f"cust-{i}".encode() for i in range(50)], tmp_path / "srv")  # rotated: a new key
    r, _, _ = _unbalanced(tmp_path / "srv", tmp_path / "cli", ids, budget=50)
    assert r.size == 30
    meta = _json.loads((tmp_path / "srv" / "meta.json").read_text())
    (tmp_path / "srv" / "meta.json").write_text(_json.dumps({**meta, "created": "2020-01-01T00:00:00Z"}))
    r, s, _ = _unbalanced(tmp_path / "srv", tmp_path / "cli", ids[:1], budget=50)
    assert isinstance(r, QueryRefused) and "rotation" in str(r) and isinstance(s, QueryRefused)


def test_unbalanced_refuses_damaged_or_missing_sets(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no prepared set"):
        load_server_set(tmp_path / "nothing")
    setup_server([b"a", b"b"], tmp_path / "srv")
    data = bytearray((tmp_path / "srv" / "set.bin").read_bytes())
    data[0] ^= 1
    (tmp_path / "srv" / "set.bin").write_bytes(bytes(data))
    with pytest.raises(DataError, match="do not match the digest"):
        load_server_set(tmp_path / "srv", need_key=True)
    r, s, _ = _unbalanced(tmp_path / "srv", tmp_path / "cli", [b"a"])
    assert isinstance(s, DataError) and type(r).__name__ in ("PeerDisconnected", "ProtocolTimeout")
    assert not (tmp_path / "cli" / "meta.json").exists()


def test_unbalanced_files_and_cli_setup(tmp_path: Path) -> None:
    big = write(tmp_path / "big.csv", "cid\n" + "".join(f"c{i}\n" for i in range(500)))
    small = write(tmp_path / "small.csv", "cid,note\nc7,x\nzz,y\nC9 ,z\n")
    done = subprocess.run([sys.executable, "-m", "veilpay.cli.main", "psi-setup", "--input", str(big), "--key", "cid",
                           "--cache", str(tmp_path / "srv"), "--normalise", "casefold"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["prepared"] == 500
    out = tmp_path / "o.csv"
    r, s = two_party(
        lambda c: run_psi_files(c, "s", "receiver", small, ["cid"], out, mode="unbalanced", normalise="casefold",
                                cache=tmp_path / "cli"),
        lambda c: run_psi_files(c, "r", "sender", None, [], mode="unbalanced", cache=tmp_path / "srv"),
    )
    assert out.read_text().splitlines() == ["cid,note", "c7,x", "C9 ,z"]
    assert r["intersection_size"] == 2 and s["peer_size"] == 3 and s["intersection_size"] is None
    with pytest.raises(ValueError, match="needs a cache folder"):
        run_psi_files(local_mesh(["r", "s"])["r"], "s", "receiver", small, ["cid"], out, mode="unbalanced")
