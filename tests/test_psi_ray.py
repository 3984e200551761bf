"""Partitioned PSI over Ray (`veilpay.psi.partitioned`): both parties' drivers as
threads over an in-memory driver link, their partition workers on one local Ray
instance shared by the whole test session, worker to worker over TCP + mutual TLS.
Checked against plain set intersection; a killed worker, a failed partition, a
resumed run and parties that bucket differently. Marked tcp, parties as processes:
each on its own two-node Ray cluster (`ray_cluster_party.py`), and a killed driver
run again."""

from __future__ import annotations

import contextlib
import random
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veilpay.cli.main import main
from veilpay.errors import PartitionFailed, PartitionMismatch
from veilpay.net import local_mesh, provision_network
from veilpay.psi import read_ids

pytestmark = pytest.mark.ray


@pytest.fixture(scope="session")
def ray_runtime() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    from veilpay.psi.partitioned import ray_init

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Ray's own start-up deprecations are not ours to fix
        ray_init("local", num_cpus=8)  # logical CPUs: both parties' workers run at once on a small machine
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return provision_network(tmp_path_factory.mktemp("net"), ["r", "s"], base_port=27300)


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.write_text(",".join(header) + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


def run_pair(tmp: Path, network: Path, x: Path, y: Path, keys: list[str], r_kw: dict[str, Any] | None = None,
             s_kw: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    """Both drivers at once; each one's summary or exception."""
    from veilpay.psi.partitioned import run_partitioned

    mesh = local_mesh(["r", "s"], timeout=60)
    out: dict[str, Any] = {}
    args = {"r": ("s", "receiver", x, tmp / "r-out.csv", r_kw or {}), "s": ("r", "sender", y, tmp / "s-out.csv",
                                                                           s_kw or {})}

    def go(me: str) -> None:
        peer, role, path, output, extra = args[me]
        opts = {**kw, **extra}
        try:
            out[me] = run_partitioned(mesh[me], peer, role, path, opts.pop("keys", keys), network, output,
                                      connect_timeout=30, timeout=60, **opts)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out[me] = exc
            mesh[me].close()

    threads = [threading.Thread(target=go, args=(p,)) for p in ("r", "s")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    for c in mesh.values():
        c.close()
    return out


def _rows(path: Path) -> list[str]:
    return path.read_text().splitlines()[1:]


def _sets(n_x: int, n_y: int, overlap: float, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    pool = [f"cust-{v}" for v in rng.sample(range(10**9), n_x + n_y)]
    x = pool[:n_x]
    common = int(min(n_x, n_y) * overlap)
    y = rng.sample(x, common) + pool[n_x : n_x + n_y - common]
    rng.shuffle(y)
    return x, y


def _cli_pair(tmp_path: Path, port: int, n_x: int, n_y: int, seed: int, timeout: int,
              partitions: int) -> tuple[list[str], list[str], Path, Path, list[str]]:
    """Two parties' sets, written as CSV files, and the `veilpay psi --ray-address
    local` command both run (each adds its role, party and files)."""
    net = provision_network(tmp_path / "net", ["r", "s"], base_port=port)
    x, y = _sets(n_x, n_y, 0.5, seed)
    xp = _csv(tmp_path / "x.csv", ["id"], [[v] for v in x])
    yp = _csv(tmp_path / "y.csv", ["id"], [[v] for v in y])
    base = [sys.executable, "-m", "veilpay.cli.main", "psi", "--network", str(net), "--key", "id", "--timeout",
            str(timeout), "--ray-address", "local", "--partitions", str(partitions), "--workers", "1"]
    return x, y, xp, yp, base


@pytest.mark.parametrize(("n_x", "n_y", "overlap", "protocol"), [
    (1500, 1500, 0.0, "kkrt"), (1500, 1500, 0.5, "kkrt"), (1500, 1500, 1.0, "kkrt"),
    (300, 4000, 0.5, "kkrt"), (4000, 200, 1.0, "kkrt"), (600, 600, 0.5, "ecdh")])
def test_matches_plain_intersection(ray_runtime: Any, network: Path, tmp_path: Path, n_x: int, n_y: int,
                                    overlap: float, protocol: str) -> None:
    x, y = _sets(n_x, n_y, overlap, n_x * 3 + n_y)
    y_dup = y + y[: len(y) // 10]  # duplicates: the first occurrence is the row that counts
    xp = _csv(tmp_path / "x.csv", ["id", "row"], [[v, str(i)] for i, v in enumerate(x)])
    yp = _csv(tmp_path / "y.csv", ["id", "row"], [[v, str(i)] for i, v in enumerate(y_dup)])
    out = run_pair(tmp_path, network, xp, yp, ["id"], partitions=3, workers=2, protocol=protocol, reveal="both")
    r, s = out["r"], out["s"]
    assert isinstance(r, dict) and isinstance(s, dict), out
    common = set(x) & set(y)
    assert _rows(tmp_path / "r-out.csv") == [f"{v},{i}" for i, v in enumerate(x) if v in common]
    assert _rows(tmp_path / "s-out.csv") == [f"{v},{i}" for i, v in enumerate(y) if v in common]
    assert r["intersection_size"] == s["intersection_size"] == len(common)
    assert s["duplicates"] == len(y) // 10 and s["distinct_ids"] == len(y) and r["partitions"] == 3
    # every partition is padded to the party's largest: the peer sees P equal sizes
    assert r["peer_size"] == 3 * s["padded_to"] and s["peer_size"] == 3 * r["padded_to"]


def test_composite_keys_and_a_parquet_folder(ray_runtime: Any, network: Path, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    x = [(f"c{i % 40}", f"{i % 7}", str(i)) for i in range(700)]  # (c, k) repeats: duplicates of a composite key
    y = [(f"c{i % 50}", f"{i % 5}", str(i)) for i in range(900)]
    folder = tmp_path / "y"
    folder.mkdir()
    for part in range(3):  # the sender's set as a folder of Parquet files, read in name order
        rows = y[part * 300 : (part + 1) * 300]
        pq.write_table(pa.table({"cust": [r[0] for r in rows], "kind": [r[1] for r in rows],
                                 "n": [r[2] for r in rows]}), folder / f"part-{part}.parquet")
    assert len(read_ids(folder, ["cust", "kind"]).ids) == len({r[:2] for r in y})
    xp = _csv(tmp_path / "x.csv", ["c", "k", "n"], [list(r) for r in x])
    out = run_pair(tmp_path, network, xp, folder, ["c", "k"], partitions=2, workers=2,
                   s_kw={"keys": ["cust", "kind"]})
    assert isinstance(out["r"], dict), out
    keys_y = {r[:2] for r in y}
    first: dict[tuple[str, str], str] = {}
    for r in x:
        first.setdefault(r[:2], r[2])
    want = sorted((int(n), k) for k, n in first.items() if k in keys_y)
    assert _rows(tmp_path / "r-out.csv") == [f"{k[0]},{k[1]},{n}" for n, k in want]
    assert out["s"]["intersection_size"] is None and not (tmp_path / "s-out.csv").exists()


def test_a_killed_worker_is_retried(ray_runtime: Any, network: Path, tmp_path: Path) -> None:
    x, y = _sets(800, 800, 0.5, 7)
    xp = _csv(tmp_path / "x.csv", ["id"], [[v] for v in x])
    yp = _csv(tmp_path / "y.csv", ["id"], [[v] for v in y])
    out = run_pair(tmp_path, network, xp, yp, ["id"], partitions=3, workers=2, r_kw={"kill_worker_once": 1})
    assert isinstance(out["r"], dict) and isinstance(out["s"], dict), out
    assert out["r"]["retries"] == 1 and out["s"]["retries"] == 1  # the peer's worker lost its link and retried too
    assert _rows(tmp_path / "r-out.csv") == [v for v in x if v in set(y)]


def test_a_failed_partition_is_named_and_a_rerun_resumes(ray_runtime: Any, network: Path, tmp_path: Path) -> None:
    x, y = _sets(900, 900, 0.5, 11)
    xp = _csv(tmp_path / "x.csv", ["id"], [[v] for v in x])
    yp = _csv(tmp_path / "y.csv", ["id"], [[v] for v in y])
    dirs = {"r_kw": {"run_dir": tmp_path / "run-r"}, "s_kw": {"run_dir": tmp_path / "run-s"}}
    # one worker: partitions run in order 0, 1, 2, 3, so 0 and 1 are done when 2's worker dies
    out = run_pair(tmp_path, network, xp, yp, ["id"], partitions=4, workers=1, retries=0,
                   r_kw={**dirs["r_kw"], "kill_worker_once": 2}, s_kw=dirs["s_kw"])
    assert isinstance(out["r"], PartitionFailed) and out["r"].partition == 2, out
    assert isinstance(out["s"], PartitionFailed) and out["s"].partition == 2, out
    assert not (tmp_path / "r-out.csv").exists()
    out = run_pair(tmp_path, network, xp, yp, ["id"], workers=1, **dirs)  # the driver comes back: same folders
    assert isinstance(out["r"], dict), out
    assert out["r"]["partitions_resumed"] == out["s"]["partitions_resumed"] == 2
    assert _rows(tmp_path / "r-out.csv") == [v for v in x if v in set(y)]


def test_parties_that_bucket_differently_fail_at_both_ends(ray_runtime: Any, network: Path, tmp_path: Path) -> None:
    x, y = _sets(100, 100, 0.5, 3)
    xp = _csv(tmp_path / "x.csv", ["id"], [[v] for v in x])
    yp = _csv(tmp_path / "y.csv", ["id"], [[v] for v in y])
    out = run_pair(tmp_path, network, xp, yp, ["id"], r_kw={"partitions": 3}, s_kw={"partitions": 4})
    for party in ("r", "s"):
        assert isinstance(out[party], PartitionMismatch) and "partition counts differ: " in str(out[party]), out
    # a partition key from another run: the receiver resumes a run that the sender does not
    done = run_pair(tmp_path, network, xp, yp, ["id"], partitions=2, r_kw={"run_dir": tmp_path / "old"})
    assert isinstance(done["r"], dict), done
    out = run_pair(tmp_path, network, xp, yp, ["id"], partitions=2, r_kw={"run_dir": tmp_path / "old"},
                   s_kw={"run_dir": tmp_path / "new"})
    for party in ("r", "s"):
        assert isinstance(out[party], PartitionMismatch) and "partition keys differ" in str(out[party]), out
    # both resume, but different runs: their stored keys differ
    run_pair(tmp_path, network, xp, yp, ["id"], partitions=2, s_kw={"run_dir": tmp_path / "other"})
    out = run_pair(tmp_path, network, xp, yp, ["id"], partitions=2, r_kw={"run_dir": tmp_path / "old"},
                   s_kw={"run_dir": tmp_path / "other"})
    for party in ("r", "s"):
        assert isinstance(out[party], PartitionMismatch) and "resume different runs" in str(out[party]), out


def test_without_ray_the_cli_names_the_extra(tmp_path: Path, network: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where it is not installed
    xp = _csv(tmp_path / "x.csv", ["id"], [["a"]])
    code = main(["psi", "--role", "receiver", "--network", str(network), "--party", "r", "--input", str(xp),
                 "--key", "id", "--output", str(tmp_path / "o.csv"), "--ray-address", "local"])
    err = capsys.readouterr().err
    assert code != 0 and "pip install 'veilpay[ray]'" in err and err.count("\n") == 1, err


@given(st.lists(st.integers(0, 40), max_size=300), st.integers(0, 2**32))
@settings(max_examples=60, deadline=None)
def test_first_occurrences_is_plain_dedup(picks: list[int], seed: int) -> None:
    np = pytest.importorskip("numpy")
    from veilpay.psi.partitioned import _first_occurrences

    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 2**63, size=(41, 2), dtype=np.uint64)
    pool[::3, 0] = pool[0, 0]  # items alike in their first 8 bytes, unlike in the rest
    items = pool[np.array(picks, dtype=np.int64)].copy().view("V16").ravel() if picks else np.zeros(0, "V16")
    _, want = np.unique(items, return_index=True)
    assert _first_occurrences(items).tolist() == sorted(want.tolist())


@pytest.mark.tcp
def test_the_cli_runs_both_parties_as_processes_each_on_its_own_ray(tmp_path: Path) -> None:
    """`veilpay psi --ray-address local` at both parties: two processes, each starting
    its own Ray instance, drivers and workers over TCP + mutual TLS."""
    pytest.importorskip("ray")
    import json
    import subprocess

    x, y, xp, yp, base = _cli_pair(tmp_path, 27400, 400, 500, 5, timeout=120, partitions=2)
    procs = [subprocess.Popen(base + ["--role", "receiver", "--party", "r", "--input", str(xp), "--output",
                                      str(tmp_path / "o.csv")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
             subprocess.Popen(base + ["--role", "sender", "--party", "s", "--input", str(yp)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    summary = json.loads(outs[0][0].splitlines()[-1])
    assert summary["partitions"] == 2 and summary["intersection_size"] == len(set(x) & set(y))
    assert _rows(tmp_path / "o.csv") == [v for v in x if v in set(y)]


def test_each_run_buckets_under_a_fresh_key_the_parties_share(ray_runtime: Any, network: Path, tmp_path: Path) -> None:
    """The partition key is made by both parties in the session, never a fixed public
    hash: two runs over the same sets put the same rows in other partitions with other
    items, while within a run both parties hold the one key (else nothing would match)."""
    import numpy as np

    from veilpay.psi.partitioned import RECORD

    x, y = _sets(1500, 1500, 0.5, 11)
    xp = _csv(tmp_path / "x.csv", ["id"], [[v] for v in x])
    yp = _csv(tmp_path / "y.csv", ["id"], [[v] for v in y])
    runs = []
    for k in range(2):
        out = run_pair(tmp_path, network, xp, yp, ["id"], partitions=3, workers=2,
                       r_kw={"run_dir": tmp_path / f"run{k}-r"}, s_kw={"run_dir": tmp_path / f"run{k}-s"})
        assert isinstance(out["r"], dict) and out["r"]["intersection_size"] == 750, out
        key_r, key_s = ((tmp_path / f"run{k}-{p}" / "key").read_bytes() for p in "rs")
        assert key_r == key_s
        where, items = {}, {}
        for i in range(3):
            for rec in np.fromfile(tmp_path / f"run{k}-r" / "buckets" / f"{i:05d}.bin", dtype=RECORD):
                where[int(rec["row"])], items[int(rec["row"])] = i, bytes(rec["item"])
        runs.append((key_r, where, items))
    (k0, where0, items0), (k1, where1, items1) = runs
    assert k0 != k1
    assert sorted(where0) == sorted(where1) == list(range(1500))
    assert sum(where0[r] != where1[r] for r in where0) > 500  # about two thirds move under a fresh key
    assert not set(items0.values()) & set(items1.values())


class _FakeRay:
    """What `_slot_nodes` reads of Ray: the driver's node and the cluster's nodes."""

    def __init__(self, here: str, nodes: list[dict[str, Any]]) -> None:
        self.here, self._nodes = here, nodes

    def get_runtime_context(self) -> Any:
        return type("Ctx", (), {"get_node_id": lambda _self: self.here})()

    def nodes(self) -> list[dict[str, Any]]:
        return self._nodes


def _node(node_id: str, address: str, cpus: float, alive: bool = True, memory_gib: float = 8) -> dict[str, Any]:
    return {"NodeID": node_id, "NodeManagerAddress": address, "Alive": alive,
            "Resources": {"CPU": cpus, "memory": memory_gib * 2**30} if cpus else {"memory": memory_gib * 2**30}}


def test_slots_spread_over_the_nodes_by_cpu() -> None:
    """The driver's node takes slot 0 and keeps the network file's host; the other
    nodes take slots in proportion to their CPUs under their own addresses; a dead
    node, one without a CPU (a head with --num-cpus 0) or without a worker's memory
    takes none."""
    from veilpay.errors import ConfigError
    from veilpay.psi.partitioned import _slot_nodes

    ray = _FakeRay("b", [_node("a", "10.0.0.1", 4), _node("b", "10.0.0.2", 2), _node("c", "10.0.0.3", 2),
                         _node("d", "10.0.0.4", 8, alive=False), _node("e", "10.0.0.5", 0),
                         _node("f", "10.0.0.6", 8, memory_gib=0.5)])
    slots = _slot_nodes(ray, 8, "psi.example.com", 1024)
    assert slots[:4] == [("b", "psi.example.com"), ("a", "10.0.0.1"), ("c", "10.0.0.3"), ("a", "10.0.0.1")]
    assert [n for n, _ in slots].count("a") == 4 and {n for n, _ in slots} == {"a", "b", "c"}
    # a driver outside the cluster's nodes (a Ray client): every slot on a node address
    assert {h for _, h in _slot_nodes(_FakeRay("z", ray.nodes()), 3, "psi.example.com", 1024)} == {
        "10.0.0.1", "10.0.0.2", "10.0.0.3"}
    with pytest.raises(ConfigError, match="no alive Ray node"):
        _slot_nodes(ray, 2, "h", 16 * 1024)


def test_a_peer_of_the_previous_partition_version_is_named_at_both_ends(tmp_path: Path) -> None:
    """Version 1 sent no worker hosts: its driver reads the head and key alone, so both
    ends see the other's version and neither waits for a message that never comes."""
    import numpy as np

    from veilpay.errors import ProtocolMismatch
    from veilpay.psi.partitioned import PARTITION_VERSION, _agree_partitions

    mesh = local_mesh(["r", "s"], timeout=10)
    out: dict[str, Any] = {}

    def old_sender() -> None:
        head = np.array([1, 0, 1, 1, 0, 28000, 2], dtype=np.uint64)
        got = mesh["s"].exchange("psi.partitions", {"r": [head, np.zeros(32, np.uint8)]}, {"r": 2})["r"]
        out["s"] = int(got[0][0])

    t = threading.Thread(target=old_sender)
    t.start()
    with pytest.raises(ProtocolMismatch, match="version 1, we speak 2"):
        _agree_partitions(mesh["r"], "s", "receiver", tmp_path / "run", None, 1, ["127.0.0.1"], 27000, 2)
    t.join(timeout=10)
    assert out["s"] == PARTITION_VERSION == 2
    for c in mesh.values():
        c.close()


@pytest.fixture
def ray_tmpdir() -> Iterator[str]:
    """A short Ray temp folder of the test's own (Ray's sockets live in it, and Ray
    records there the last cluster it started): removed at the end."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="vp-ray-", dir="/tmp")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.tcp
def test_each_party_spreads_its_workers_over_its_multi_node_cluster(tmp_path: Path, ray_tmpdir: str) -> None:
    """Each party on its own two-node Ray cluster (`ray.cluster_utils.Cluster`, one
    process per party, nodes on loopback addresses of their own): slot 0 runs on the
    driver's node and listens on the network file's host, slot 1 is pinned to the
    other node and listens on that node's address, and the peer's workers connect to
    the host each slot was announced on."""
    pytest.importorskip("ray")
    import json
    import os
    import subprocess

    net = provision_network(tmp_path / "net", ["r", "s"], base_port=27500)
    x, y = _sets(700, 600, 0.5, 17)
    xp = _csv(tmp_path / "x.csv", ["id", "n"], [[v, str(i)] for i, v in enumerate(x)])
    yp = _csv(tmp_path / "y.csv", ["id"], [[v] for v in y])
    helper = str(Path(__file__).parent / "ray_cluster_party.py")
    psi = ["psi", "--network", str(net), "--key", "id", "--timeout", "120", "--partitions", "4", "--reveal", "both"]
    parties = {"r": ("127.0.0.2", "127.0.0.3", ["--role", "receiver", "--input", str(xp)]),
               "s": ("127.0.0.4", "127.0.0.5", ["--role", "sender", "--input", str(yp)])}
    procs = {}
    for p, (head, node, args) in parties.items():
        env = {**os.environ, "RAY_TMPDIR": os.path.join(ray_tmpdir, p)}
        procs[p] = subprocess.Popen([sys.executable, helper, head, node, "--", *psi, *args, "--party", p,
                                     "--output", str(tmp_path / f"{p}.csv")],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        outs = {p: proc.communicate(timeout=240) for p, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    assert [procs[p].returncode for p in "rs"] == [0, 0], {p: o[1][-3000:] for p, o in outs.items()}
    r, s = (json.loads(outs[p][0].splitlines()[-1]) for p in "rs")
    assert r["workers"] == s["workers"] == 2 and r["worker_nodes"] == s["worker_nodes"] == 2
    assert r["worker_hosts"] == s["peer_worker_hosts"] == ["127.0.0.1", "127.0.0.3"]
    assert s["worker_hosts"] == r["peer_worker_hosts"] == ["127.0.0.1", "127.0.0.5"]
    common = set(x) & set(y)
    assert r["intersection_size"] == s["intersection_size"] == len(common)
    assert _rows(tmp_path / "r.csv") == [f"{v},{i}" for i, v in enumerate(x) if v in common]
    assert _rows(tmp_path / "s.csv") == [v for v in y if v in common]


@pytest.mark.tcp
def test_a_killed_driver_is_run_again_and_skips_the_finished_partitions(tmp_path: Path, ray_tmpdir: str) -> None:
    """Both parties as processes with --run-dir, each on its own local Ray; the
    receiver's driver is killed (SIGKILL) once it has recorded a finished partition.
    The other party's driver sees its link hang up and stops at once with a named
    error (exit 3), having recorded what the dead driver had, where its workers would
    have waited out their connect timeouts and retries.
    Both run again with the same folders: the partitions finished at both are kept
    (their records and results untouched), the rest are run, and the output is the
    plain intersection."""
    pytest.importorskip("ray")
    import json
    import os
    import signal
    import subprocess
    import time

    x, y, xp, yp, base = _cli_pair(tmp_path, 27600, 4000, 4000, 19, timeout=60, partitions=8)
    args = {"r": ["--role", "receiver", "--party", "r", "--input", str(xp), "--output", str(tmp_path / "o.csv")],
            "s": ["--role", "sender", "--party", "s", "--input", str(yp)]}
    done = {p: tmp_path / f"run-{p}" / "done" for p in "rs"}

    def start(p: str) -> subprocess.Popen[str]:
        # a session of its own: the party's local Ray lives in its process group, and
        # outlives a driver killed alone
        return subprocess.Popen(base + args[p] + ["--run-dir", str(tmp_path / f"run-{p}")], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                env={**os.environ, "RAY_TMPDIR": os.path.join(ray_tmpdir, p)})

    def finished(p: str) -> set[str]:
        return {f.stem for f in done[p].glob("*.json")} if done[p].exists() else set()

    def wait_for(what: str, check: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout:g} s")
            time.sleep(0.02)

    procs = {p: start(p) for p in "rs"}
    try:
        wait_for("a finished partition at the receiver", lambda: finished("r") or procs["r"].poll() is not None, 120)
        os.kill(procs["r"].pid, signal.SIGKILL)  # the driver alone: its Ray and workers live on
        assert procs["r"].wait(timeout=30) == -signal.SIGKILL
        killed_at = finished("r")
        assert 1 <= len(killed_at) < 8 and not (tmp_path / "o.csv").exists()
        # the sender's driver sees its link hang up and stops by itself, its records kept
        _, err = procs["s"].communicate(timeout=60)
        assert procs["s"].returncode == 3 and "hung up" in err, err[-2000:]
        assert killed_at <= finished("s")
    finally:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray
            proc.communicate(timeout=30)
    both = finished("r") & finished("s")
    kept = {f: f.stat().st_mtime_ns for p in "rs" for i in both for f in done[p].glob(f"{i}.*")}
    assert len(kept) == 3 * len(both)  # the receiver's rows and both sides' records

    procs = {p: start(p) for p in "rs"}
    try:
        outs = {p: proc.communicate(timeout=180) for p, proc in procs.items()}
    finally:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # Ray's processes the driver left behind, if any
            if proc.poll() is None:
                proc.communicate(timeout=30)
    assert [procs[p].returncode for p in "rs"] == [0, 0], {p: o[1][-3000:] for p, o in outs.items()}
    r, s = (json.loads(outs[p][0].splitlines()[-1]) for p in "rs")
    assert r["partitions_resumed"] == s["partitions_resumed"] == len(both)
    assert {f: f.stat().st_mtime_ns for f in kept} == kept  # skipped, not run again
    assert finished("r") == finished("s") == {f"{i:05d}" for i in range(8)}
    assert r["intersection_size"] == len(set(x) & set(y))
    assert _rows(tmp_path / "o.csv") == [v for v in x if v in set(y)]
