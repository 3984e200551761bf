"""PSI past one machine: each party buckets its ids into P partitions under a keyed
PRF, and partition i of the receiver runs KKRT (or ECDH) against partition i of the
sender, worker to worker, each pair over its own mutually authenticated TLS link.
Each party drives its own Ray cluster (or a local one); Ray's serialization carries
only this party's own task arguments and results, never a byte to or from the peer.

    R <-> S  (driver link) the run's terms (`veilpay.psi.terms`)
    R <-> S  (driver link) partition terms: version, P asked and proposed, workers,
             resume flag, worker port base and stride; then 32 bytes: a fresh nonce,
             or, resuming, a check value of the stored partition key; then the host
             each worker slot listens on (slots spread over the cluster's nodes)
    R, S     partition key K = HKDF(nonce_R || nonce_S); item(id) = CBC-MAC_K(id)
             (`veilpay.crypto.ot.id_prf`), partition = item mod P; a streaming pass
             writes (item, row) records to one file per partition
    R <-> S  (driver link) the partitions each has finished in an earlier try
    R_i <-> S_i  (worker link i, session HKDF(K, i)) KKRT/ECDH on partition i's items,
             padded with random dummies to this party's largest partition, then a
             done message both ways once each side has stored its result
    R <-> S  (driver link) how many partitions each finished

What each side learns beyond the single-process protocol: the other's largest
partition size (every partition is padded to it, so the sizes of single partitions
are hidden), the partition count it proposed (about its row count over a partition's
capacity), its worker count and the hosts and ports its workers listen on. See
docs/psi.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from veilpay.crypto import derive_seed, random_seed, sha256, sha256_file
from veilpay.crypto.ot import id_prf
from veilpay.errors import (
    ConfigError,
    InvalidInput,
    PartitionFailed,
    PartitionMismatch,
    PeerDisconnected,
    ProtocolMismatch,
    VeilpayError,
    WireFormatError,
)
from veilpay.files import atomic_write
from veilpay.net import Communicator, connect_mesh, load_network
from veilpay.progress import progress
from veilpay.psi.data import IdTable, iter_id_batches, read_rows, stream_rows, write_rows
from veilpay.psi.ecdh import ecdh_psi
from veilpay.psi.kkrt import kkrt_psi
from veilpay.psi.rr22 import rr22_psi
from veilpay.psi.run import _learns, _output_columns, check_psi_files
from veilpay.psi.terms import agree

__all__ = ["DEFAULT_MEMORY_MIB", "PARTITION_VERSION", "choose_partitions", "ray_init", "ray_shutdown",
           "run_partitioned"]

PARTITION_VERSION = 2  # 2: each worker slot's host in the partition terms
DEFAULT_MEMORY_MIB = 1024
# A worker's fixed cost (the Ray worker process with numpy and veilpay imported) and
# its cost per id of a KKRT partition, both measured (bench/psi.py --ray): the sizes
# that fix how many ids one partition may hold within --memory-per-worker.
WORKER_BASE_MIB = 200
BYTES_PER_ID = 400
MAX_PARTITIONS = 1 << 14
RECORD = np.dtype([("item", "V16"), ("row", "<i8")])
_ITEM = 16
_DUMMY = b"\x00"  # a dummy is 17 bytes, a real item 16: no dummy equals a real item
_LABEL = "psi.partitions"
_HOST = re.compile(r"^[A-Za-z0-9.:-]{1,253}$")  # a host name or an IPv4/IPv6 address, nothing else
_DONE_FIELDS = ("bucket_sha256", "result_sha256", "distinct", "duplicates", "matched", "peer_size")


def choose_partitions(rows: int, memory_mib: int = DEFAULT_MEMORY_MIB) -> int:
    """The partition count this party proposes for ``rows`` ids: enough partitions that
    one of them fits a worker of ``memory_mib`` MiB (the larger proposal wins)."""
    if memory_mib <= WORKER_BASE_MIB:
        raise InvalidInput(f"--memory-per-worker must be above {WORKER_BASE_MIB} MiB (a worker's fixed cost)")
    capacity = max(1, (memory_mib - WORKER_BASE_MIB) * (1 << 20) // BYTES_PER_ID)
    return max(1, min(MAX_PARTITIONS, -(-rows // capacity)))


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--ray-address needs Ray: pip install 'veilpay[ray]'") from exc
    return ray


def ray_init(address: str, num_cpus: int | None = None) -> None:
    """Connect this process to Ray: ``local`` starts a Ray instance on this machine,
    anything else is the address of this party's own cluster. ConfigError, naming the
    extra to install, without Ray."""
    ray = _ray()
    if ray.is_initialized():
        return
    if address == "local":
        # partitions travel as files; the object store carries only small task results,
        # so a small one (Ray's default takes 30 % of memory in /dev/shm, which a container
        # may not have)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, object_store_memory=256 * 2**20)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)


def ray_shutdown() -> None:
    """Leave Ray (and stop a ``local`` instance). Called explicitly, it takes about
    0.3 s; left to Ray's exit hook, a driver's exit took about 0.9 s."""
    ray = _ray()
    if ray.is_initialized():
        ray.shutdown()


# ---------------------------------------------------------------- the worker side
@dataclass(frozen=True)
class PartitionJob:
    """One partition for one worker; travels inside this party's Ray cluster only."""

    index: int
    role: str
    me: str
    peer: str
    network: str
    my_host: str
    my_port: int
    peer_host: str
    peer_port: int
    session: bytes
    bucket: str
    result: str
    pad_to: int
    protocol: str
    reveal: str
    learns: bool
    timeout: float
    connect_timeout: float
    kill_marker: str = ""  # tests: a worker that finds no such file makes it and dies


def _rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_partition(job: PartitionJob) -> dict[str, Any]:
    """Run one partition against the peer's worker for the same partition. Returns a
    summary; a veilpay error comes back as ``error`` and ``message`` (plain values, so
    the driver learns the cause without unpickling an exception class of ours)."""
    t0 = time.perf_counter()
    try:
        return _run_partition(job, t0)
    except VeilpayError as exc:
        return {"index": job.index, "error": type(exc).__name__, "message": str(exc), "pid": os.getpid(),
                "rss_mib": _rss_mib()}


def _first_occurrences(items: np.ndarray) -> np.ndarray:
    """Positions of each distinct item's first occurrence, ascending (the first row of
    an id wins, as in read_ids). Sorting by the first 8 bytes is 6x faster than
    np.unique on 16-byte values; only runs of equal first halves (duplicates, or a
    2^-64 coincidence) go through the exact comparison."""
    items = np.ascontiguousarray(items)
    words = items.view("<u8").reshape(-1, 2)
    order = np.argsort(words[:, 0], kind="stable")
    high = words[order, 0]
    same = high[1:] == high[:-1]
    if not same.any():
        return np.sort(order)
    runs = np.zeros(len(order), dtype=bool)
    runs[1:] |= same
    runs[:-1] |= same
    tied = np.sort(order[runs])
    _, first = np.unique(items[tied], return_index=True)
    return np.sort(np.concatenate([order[~runs], tied[first]]))


def _node_id() -> str:
    """The Ray node this worker runs on (empty outside Ray)."""
    try:
        import ray
    except ImportError:
        return ""
    return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else ""


def _run_partition(job: PartitionJob, t0: float) -> dict[str, Any]:
    data = np.fromfile(job.bucket, dtype=RECORD)
    bucket_digest = sha256(data.tobytes()).hex()
    real = data[_first_occurrences(data["item"])]
    total = len(data)
    del data
    n = len(real)
    if n > job.pad_to:
        raise InvalidInput(f"partition {job.index} holds {n} ids, above the bound {job.pad_to} it is padded to")
    raw = real["item"].tobytes()
    ids = [raw[i : i + _ITEM] for i in range(0, len(raw), _ITEM)]
    del raw
    ids += [_DUMMY + secrets.token_bytes(_ITEM) for _ in range(job.pad_to - n)]
    network = load_network(job.network)
    # this slot's node address (or the network file's host on the driver's node) and
    # the peer's for the same slot, from the partition terms
    view = replace(network, parties={
        job.me: replace(network.parties[job.me], host=job.my_host, port=job.my_port),
        job.peer: replace(network.parties[job.peer], host=job.peer_host, port=job.peer_port),
    })
    comm = connect_mesh(view, job.me, job.session, timeout=job.timeout, connect_timeout=job.connect_timeout,
                        parties=sorted([job.me, job.peer]))
    try:
        if job.kill_marker and not Path(job.kill_marker).exists():
            Path(job.kill_marker).touch()
            os._exit(17)  # a killed worker: no cleanup, the peer sees its links drop
        if job.protocol == "kkrt":
            res = kkrt_psi(comm, job.peer, job.role, ids, reveal=job.reveal, show_progress=False)
        elif job.protocol == "rr22":
            res = rr22_psi(comm, job.peer, job.role, ids, reveal=job.reveal, show_progress=False)
        else:
            res = ecdh_psi(comm, job.peer, job.role, ids, reveal=job.reveal, workers=0, show_progress=False)
        matched = 0
        out_digest = ""
        if job.learns and res.indices is not None:
            hits = res.indices[res.indices < n]
            rows = np.sort(real["row"][hits]).astype("<i8")
            matched = len(rows)
            out_digest = sha256(rows.tobytes()).hex()
            atomic_write(job.result, lambda fh: fh.write(rows.tobytes()), binary=True)
        # Each side has stored its result before it says so: a partition is done at
        # both or, if either dies first, at neither (both retry it).
        comm.exchange("psi.partition.done", {job.peer: [np.array([1], dtype=np.uint8)]}, {job.peer: 1})
        sent, recv = comm.total().bytes_sent, comm.total().bytes_recv
    finally:
        comm.close()
    return {"index": job.index, "pid": os.getpid(), "node": _node_id(), "rss_mib": _rss_mib(), "distinct": n,
            "duplicates": total - n,
            "matched": matched, "peer_size": res.peer_size, "bytes_sent": sent, "bytes_received": recv,
            "seconds": round(time.perf_counter() - t0, 3), "bucket_sha256": bucket_digest,
            "result_sha256": out_digest}


# ---------------------------------------------------------------- the driver side
@dataclass
class _Plan:
    partitions: int
    workers: int
    key: bytes
    my_hosts: list[str]
    my_ports: list[int]
    peer_hosts: list[str]
    peer_ports: list[int]
    resumed: bool


def _key_check(key: bytes) -> bytes:
    return derive_seed(key, "psi/partition/key-check")


def _slot_nodes(ray: Any, workers: int, home: str, memory_mib: int) -> list[tuple[str, str]]:
    """(Ray node id, listening host) of each of ``workers`` slots. Slots go to the
    alive nodes with a CPU and ``memory_mib`` of memory, in proportion to their CPUs
    (each next slot to the node with the fewest slots per CPU, the driver's node
    first). A worker on the driver's node listens on ``home``, the network file's host
    (the address the peer reaches the driver at); one on another node on that node's
    own address. ConfigError where no node can run a partition."""
    here = str(ray.get_runtime_context().get_node_id())
    nodes = sorted((n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1
                    and n["Resources"].get("memory", 0) >= memory_mib << 20),
                   key=lambda n: (n["NodeID"] != here, n["NodeManagerAddress"], n["NodeID"]))
    if not nodes:
        raise ConfigError(f"no alive Ray node has a CPU and {memory_mib} MiB for a partition's worker")
    cpus = [float(n["Resources"]["CPU"]) for n in nodes]
    taken = [0] * len(nodes)
    out = []
    for _ in range(workers):
        k = min(range(len(nodes)), key=lambda k: (taken[k] / cpus[k], k))
        taken[k] += 1
        node = nodes[k]
        out.append((str(node["NodeID"]), home if node["NodeID"] == here else str(node["NodeManagerAddress"])))
    return out


def _hosts_message(hosts: Sequence[str]) -> np.ndarray:
    return np.frombuffer("\n".join(hosts).encode("ascii"), dtype=np.uint8)


def _parse_hosts(peer: str, msg: np.ndarray, slots: int) -> list[str]:
    """The peer's host per worker slot: ``slots`` lines of a host name or address."""
    if msg.dtype != np.uint8 or msg.ndim != 1:
        raise ProtocolMismatch(peer, "worker hosts of the wrong type or shape")
    try:
        hosts = msg.tobytes().decode("ascii").split("\n")
    except UnicodeDecodeError as exc:
        raise ProtocolMismatch(peer, "worker hosts that are not ASCII") from exc
    if len(hosts) != slots or not all(_HOST.match(h) for h in hosts):
        raise ProtocolMismatch(peer, f"worker hosts: {len(hosts)} where {slots} slots were announced, or not hosts")
    return hosts


def _agree_partitions(comm: Communicator, peer: str, role: str, run_dir: Path, asked: int | None, proposed: int,
                      hosts: Sequence[str], port_base: int, port_stride: int) -> _Plan:
    """Agree P, the worker count, the partition key and the workers' hosts and ports
    with the peer (``hosts``: this party's host per worker slot). PartitionMismatch at
    both ends where they cannot agree."""
    stored = run_dir / "run.json"
    resume = stored.exists()
    key = b""
    if resume:
        meta = json.loads(stored.read_text())
        if (meta.get("role"), meta.get("peer")) != (role, peer):
            raise InvalidInput(f"{run_dir} is the run of the {meta.get('role')} with {meta.get('peer')!r}")
        key = (run_dir / "key").read_bytes()
        if asked is not None and asked != meta["partitions"]:
            raise InvalidInput(f"{run_dir} is a run with {meta['partitions']} partitions, not {asked}")
        asked = proposed = int(meta["partitions"])
        mine_key = _key_check(key)
    else:
        nonce = random_seed()
        mine_key = nonce
    workers = len(hosts)
    head = np.array([PARTITION_VERSION, asked or 0, proposed, workers, int(resume), port_base, port_stride],
                    dtype=np.uint64)
    try:
        # the hosts go out in the same round but are read only once the version is
        # known to match: a peer of another version reads the head and key alone, and
        # both ends name the mismatch
        got = comm.exchange(_LABEL, {peer: [head, np.frombuffer(mine_key, dtype=np.uint8), _hosts_message(hosts)]},
                            {peer: 2})[peer]
    except ProtocolMismatch:
        raise
    except WireFormatError as exc:
        raise ProtocolMismatch(peer, f"no partition terms from the peer: {exc}") from exc
    theirs, their_key = got
    if theirs.dtype != np.uint64 or theirs.ndim != 1 or not theirs.size:
        raise ProtocolMismatch(peer, "partition terms of the wrong type or shape")
    if int(theirs[0]) != PARTITION_VERSION:
        raise ProtocolMismatch(peer, f"peer speaks partition terms version {int(theirs[0])}, we speak "
                                     f"{PARTITION_VERSION}")
    if theirs.shape != head.shape or their_key.dtype != np.uint8 or their_key.size != 32:
        raise ProtocolMismatch(peer, "partition terms of the wrong type or shape")
    _, p_asked, p_proposed, p_workers, p_resume, p_base, p_stride = (int(v) for v in theirs)
    if not (1 <= p_proposed <= MAX_PARTITIONS and p_asked <= MAX_PARTITIONS and 1 <= p_workers <= MAX_PARTITIONS
            and 0 < p_base < 65536 and p_stride >= 1):
        raise ProtocolMismatch(peer, "partition terms out of range")
    try:
        p_hosts = _parse_hosts(peer, comm.collect(_LABEL, {peer: 1})[peer][0], p_workers)
    except ProtocolMismatch:
        raise
    except WireFormatError as exc:
        raise ProtocolMismatch(peer, f"no worker hosts from the peer: {exc}") from exc
    if resume != bool(p_resume):
        here, there = ("resumes a run", "starts afresh") if resume else ("starts afresh", "resumes a run")
        raise PartitionMismatch(peer, f"partition keys differ: this party {here}, the peer {there}")
    if asked and p_asked and asked != p_asked:
        raise PartitionMismatch(peer, f"partition counts differ: {asked} here, {p_asked} there")
    if resume:
        if not secrets.compare_digest(mine_key, their_key.tobytes()):
            raise PartitionMismatch(peer, "partition keys differ: the parties resume different runs")
        partitions = asked or 0
    else:
        partitions = asked or p_asked or max(proposed, p_proposed)
        nonces = mine_key + their_key.tobytes() if role == "receiver" else their_key.tobytes() + mine_key
        key = derive_seed(nonces, "psi/partition/key")
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "key", lambda fh: fh.write(key), binary=True, mode=0o600)
        atomic_write(stored, lambda fh: fh.write(json.dumps({"version": PARTITION_VERSION, "role": role,
                                                             "peer": peer, "partitions": partitions})))
    slots = max(1, min(workers, p_workers, partitions))
    mine = [port_base + s * port_stride for s in range(slots)]
    peers = [p_base + s * p_stride for s in range(slots)]
    if max(mine + peers) >= 65536:
        raise InvalidInput("worker ports past 65535: lower the worker port base or the worker count")
    return _Plan(partitions, slots, key, list(hosts[:slots]), mine, p_hosts[:slots], peers, resume)


def _bucket(path: Path, keys: Sequence[str], normalise: str, on_null: str, key: bytes, partitions: int,
            folder: Path) -> tuple[IdTable, np.ndarray]:
    """One streaming pass over the input: each id's item under the partition key, to
    the partition file its item picks. Returns the row counts and each partition's size."""
    folder.mkdir(parents=True, exist_ok=True)
    table = IdTable(path, [])
    counts = np.zeros(partitions, dtype=np.int64)
    prf_key = key[:16]
    with contextlib.ExitStack() as stack:
        files: list[IO[bytes]] = [stack.enter_context((folder / f"{i:05d}.bin").open("wb", buffering=1 << 16))
                                  for i in range(partitions)]
        for ids, rows in iter_id_batches(path, keys, normalise, on_null, table):
            if not ids:
                continue
            items = id_prf(prf_key, ids)
            part = (items[:, :8].copy().view("<u8").ravel() % np.uint64(partitions)).astype(np.int64)
            order = np.argsort(part, kind="stable")
            rec = np.empty(len(ids), dtype=RECORD)
            rec["item"] = items.view("V16").ravel()
            rec["row"] = np.asarray(rows, dtype=np.int64)
            rec = rec[order]
            bounds = np.searchsorted(part[order], np.arange(partitions + 1))
            counts += np.diff(bounds)
            for i in np.flatnonzero(np.diff(bounds)).tolist():
                files[i].write(rec[bounds[i] : bounds[i + 1]].tobytes())
    return table, counts


def _done_here(run_dir: Path, partitions: int) -> np.ndarray:
    """Partitions finished in an earlier try whose bucket (this try's input) and stored
    result still match the digests recorded when they finished."""
    done = np.zeros(partitions, dtype=np.uint8)
    for i in range(partitions):
        rec = run_dir / "done" / f"{i:05d}.json"
        if not rec.exists():
            continue
        meta = json.loads(rec.read_text())
        if sha256_file(run_dir / "buckets" / f"{i:05d}.bin").hex() != meta["bucket_sha256"]:
            continue
        result = run_dir / "done" / f"{i:05d}.rows"
        if meta["result_sha256"] and (not result.exists() or sha256_file(result).hex() != meta["result_sha256"]):
            continue
        done[i] = 1
    return done


def _ray_failure(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)  # a RayTaskError carries the worker's own exception
    what = cause if isinstance(cause, BaseException) else exc
    text = str(what).strip().splitlines()
    return f"{type(what).__name__}: {text[0] if text else ''}"


def _run_all(jobs: dict[int, PartitionJob], plan: _Plan, nodes: Sequence[str], peer: str, retries: int,
             num_cpus: float, memory_mib: int, show_progress: bool | None,
             done_folder: Path, peer_gone: Callable[[], bool] = lambda: False) -> tuple[list[dict[str, Any]], int]:
    """Run the partitions: slot s runs partitions s, s + W, s + 2W, ... in order on
    Ray node ``nodes[s]`` (the peer runs the same ones in the same slots, so each pair
    meets on one host and port pair), each retried up to ``retries`` times where it
    fails. PartitionFailed after that. ``peer_gone`` is looked at every second: the
    peer's driver hanging up its link stops the run (PeerDisconnected), its finished
    partitions kept for a resumed run, where the workers would otherwise wait out their
    connect timeouts and retries."""
    import ray
    import ray.exceptions
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(max_retries=0, num_cpus=num_cpus, memory=memory_mib << 20)(run_partition)
    # pinned, not soft: the worker listens on its node's address, which the peer was told
    pinned = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)) for n in nodes]
    queues = {s: [i for i in sorted(jobs) if i % plan.workers == s] for s in range(plan.workers)}
    attempts: dict[int, int] = {}
    running: dict[Any, tuple[int, int]] = {}
    results: list[dict[str, Any]] = []
    retried = 0

    def submit(slot: int) -> None:
        if queues[slot]:
            i = queues[slot][0]
            running[pinned[slot].remote(jobs[i])] = (slot, i)

    for s in queues:
        submit(s)
    bar = progress(len(jobs), "PSI partitions", unit="part", enabled=show_progress)
    try:
        with bar:
            while running:
                ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                if not ready and peer_gone():
                    raise PeerDisconnected(peer, "the peer's driver hung up while the partitions ran: run both "
                                                 "again with the same --run-dir to resume")
                for ref in ready:
                    slot, i = running.pop(ref)
                    try:
                        out = ray.get(ref)
                        failure = "" if "error" not in out else f"{out['error']}: {out['message']}"
                    except ray.exceptions.RayError as exc:
                        failure = _ray_failure(exc)
                    if failure:
                        attempts[i] = attempts.get(i, 0) + 1
                        if attempts[i] > retries:
                            raise PartitionFailed(peer, i, f"{failure} (after {retries} retries)")
                        retried += 1
                        submit(slot)
                        continue
                    queues[slot].pop(0)
                    results.append(out)
                    # recorded at once: a driver that crashes later keeps this partition
                    _write_json(done_folder / f"{i:05d}.json", {k: out[k] for k in _DONE_FIELDS})
                    bar.update(1)
                    submit(slot)
    except BaseException:
        for ref in running:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
    return results, retried


def run_partitioned(
    comm: Communicator,
    peer: str,
    role: str,
    input_path: str | Path,
    keys: Sequence[str],
    network: str | Path,
    output_path: str | Path | None = None,
    columns: Sequence[str] | None = None,
    reveal: str = "receiver",
    normalise: str = "trim",
    on_null: str = "drop",
    sort_by: str | None = None,
    protocol: str | None = None,
    partitions: int | None = None,
    memory_mib: int = DEFAULT_MEMORY_MIB,
    workers: int | None = None,
    run_dir: str | Path | None = None,
    worker_port_base: int | None = None,
    retries: int = 2,
    timeout: float = 300.0,
    connect_timeout: float = 120.0,
    show_progress: bool | None = None,
    kill_worker_once: int | None = None,
) -> dict[str, Any]:
    """`veilpay.psi.run_psi_files` over this party's Ray cluster (`ray_init` first):
    ``comm`` is the driver link to ``peer``; the workers open their own links with the
    identities of ``network`` (the network file, readable at the same path by every
    worker), on ports ``worker_port_base`` + s * (the network's party count) for slot s
    (default base: this party's port + 1000). Slots spread over the cluster's nodes; a
    worker listens on the network file's host on the driver's node, on its node's
    address elsewhere, and the peer is told each slot's host.

    ``partitions``: P, the same at both parties when given (PartitionMismatch at both
    otherwise); default: enough that a partition fits ``memory_mib`` (the larger of
    the parties' proposals). ``workers``: partitions run at once (default: the
    cluster's CPUs; the smaller of the parties' counts). ``run_dir``: where buckets and
    finished partitions are kept (on storage every worker reads); run again with the
    same folder at both parties after a crash and the finished partitions are kept.
    Default: a temporary folder, removed at the end. A worker that fails (or dies) is
    retried ``retries`` times; then PartitionFailed and no output. ``kill_worker_once``:
    for tests, the worker of that partition dies abruptly on its first try."""
    if role not in ("receiver", "sender"):
        raise InvalidInput(f"role must be 'receiver' or 'sender', not {role!r}")
    terms = check_psi_files(role, input_path, keys, output_path, columns, "intersection", reveal, normalise, on_null,
                            sort_by, None, protocol)
    if partitions is not None and not 1 <= partitions <= MAX_PARTITIONS:
        raise InvalidInput(f"--partitions must be between 1 and {MAX_PARTITIONS}")
    if retries < 0:
        raise InvalidInput("retries must be >= 0")
    ray = _ray()
    if not ray.is_initialized():
        raise ConfigError("Ray is not initialised: call veilpay.psi.ray_init first")
    net = load_network(network)
    if comm.me not in net.parties or peer not in net.parties:
        raise ConfigError(f"{network}: the network must name {comm.me!r} and {peer!r}")
    stride = len(net.parties)
    base = worker_port_base or net.parties[comm.me].port + 1000
    cpus = int(ray.cluster_resources().get("CPU", 1))
    workers = min(MAX_PARTITIONS, workers or max(1, cpus))
    slot_nodes = _slot_nodes(ray, workers, net.parties[comm.me].host, memory_mib)
    path = Path(input_path)
    temp = run_dir is None
    folder = Path(tempfile.mkdtemp(prefix="veilpay-psi-")) if run_dir is None else Path(run_dir)
    t0 = time.perf_counter()
    try:
        agree(comm, peer, terms)
        proposed = choose_partitions(_row_estimate(path), memory_mib)
        plan = _agree_partitions(comm, peer, role, folder, partitions, proposed, [h for _, h in slot_nodes], base,
                                 stride)
        t_bucket = time.perf_counter()
        table, counts = _bucket(path, keys, normalise, on_null, plan.key, plan.partitions, folder / "buckets")
        cols = _output_columns(path, table.header, columns, sort_by)
        bucket_s = time.perf_counter() - t_bucket
        pad_to = int(counts.max()) if len(counts) else 0
        done_mine = _done_here(folder, plan.partitions) if plan.resumed else np.zeros(plan.partitions, np.uint8)
        got = comm.exchange("psi.partitions.done", {peer: [done_mine]}, {peer: 1})[peer][0]
        if got.dtype != np.uint8 or got.shape != done_mine.shape:
            raise ProtocolMismatch(peer, "a list of finished partitions of the wrong type or shape")
        done = done_mine & got
        learns = _learns("intersection", role, reveal)
        (folder / "done").mkdir(exist_ok=True)
        jobs = {i: PartitionJob(
            i, role, comm.me, peer, str(Path(network).resolve()), plan.my_hosts[i % plan.workers],
            plan.my_ports[i % plan.workers], plan.peer_hosts[i % plan.workers], plan.peer_ports[i % plan.workers],
            derive_seed(plan.key, f"psi/partition/session/{i}")[:16],
            str(folder / "buckets" / f"{i:05d}.bin"), str(folder / "done" / f"{i:05d}.rows"), max(pad_to, 1),
            terms.protocol, reveal, learns, timeout, connect_timeout,
            str(folder / f"killed-{i}") if kill_worker_once == i else "")
            for i in range(plan.partitions) if not done[i]}
        for i in range(plan.partitions):
            if not done[i]:
                (folder / "done" / f"{i:05d}.json").unlink(missing_ok=True)
        nodes = [n for n, _ in slot_nodes[: plan.workers]]
        results, retried = _run_all(jobs, plan, nodes, peer, retries, 1.0, memory_mib, show_progress,
                                    folder / "done", lambda: comm.peer_hung_up(peer))
        finished = np.array([len(results) + int(done.sum())], dtype=np.uint64)
        theirs = comm.exchange("psi.partitions.end", {peer: [finished]}, {peer: 1})[peer][0]
        if theirs.shape != (1,) or int(theirs[0]) != plan.partitions or int(finished[0]) != plan.partitions:
            raise PartitionFailed(peer, -1, "the parties did not finish every partition")
        metas = [json.loads((folder / "done" / f"{i:05d}.json").read_text()) for i in range(plan.partitions)]
        summary: dict[str, Any] = {
            "role": role, "mode": "intersection", "protocol": terms.protocol, "partitions": plan.partitions,
            "workers": plan.workers, "rows": table.rows, "distinct_ids": sum(m["distinct"] for m in metas),
            "duplicates": sum(m["duplicates"] for m in metas), "null_keys_dropped": table.nulls,
            "padded_to": pad_to, "peer_size": sum(m["peer_size"] for m in metas),
            "intersection_size": sum(m["matched"] for m in metas) if learns else None,
            "partitions_resumed": int(done.sum()), "retries": retried,
            "worker_hosts": plan.my_hosts, "peer_worker_hosts": plan.peer_hosts,
            "worker_nodes": len({r["node"] for r in results}),
            "bucket_seconds": round(bucket_s, 3),
            "bytes_sent": comm.total().bytes_sent + sum(r["bytes_sent"] for r in results),
            "bytes_received": comm.total().bytes_recv + sum(r["bytes_received"] for r in results),
            "worker_peak_rss_mib": _peaks(results),
        }
        if learns and output_path is not None:
            merged = _merged(folder / "done", plan.partitions, table.rows)
            if sort_by or cols != table.header or not stream_rows(path, merged, output_path):
                # Parquet, quoted CSV, chosen columns or --sort-by: the common rows are held
                wanted = np.concatenate([*_merged(folder / "done", plan.partitions, table.rows),
                                         np.zeros(0, dtype=np.int64)])
                rows = read_rows(path, wanted, cols + ([sort_by] if sort_by else []))
                if sort_by:
                    rows.sort(key=lambda r: r[-1])
                write_rows(output_path, cols, [r[: len(cols)] for r in rows])
            summary["output"] = str(output_path)
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        summary["driver_peak_rss_mib"] = _rss_mib()
    except BaseException:
        if temp:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if temp:
        shutil.rmtree(folder, ignore_errors=True)
    return summary


def _write_json(path: Path, value: dict[str, Any]) -> None:
    text = json.dumps(value)
    atomic_write(path, lambda fh: fh.write(text))


def _peaks(results: list[dict[str, Any]]) -> dict[str, float]:
    peaks: dict[str, float] = {}
    for r in results:
        peaks[str(r["pid"])] = max(peaks.get(str(r["pid"]), 0.0), r["rss_mib"])
    return peaks


def _merged(folder: Path, partitions: int, rows: int, span: int = 1 << 22) -> Iterator[np.ndarray]:
    """The common rows of every partition in file order, in ascending chunks of row
    numbers [lo, lo + span): each partition's rows are sorted, so each chunk takes the
    next rows of each partition's file, read forward in blocks. Memory is bounded by
    the span and the blocks (2 MiB over all partitions), not by the intersection."""
    block = max(4096, (1 << 18) // max(1, partitions))
    files = [f for i in range(partitions) if (f := folder / f"{i:05d}.rows").exists() and f.stat().st_size]
    pos = [0] * len(files)
    sizes = [f.stat().st_size // 8 for f in files]
    bufs = [np.zeros(0, dtype="<i8") for _ in files]
    for lo in range(0, rows, span):
        hi, pieces = lo + span, []
        for k, f in enumerate(files):
            while pos[k] < sizes[k] and (not len(bufs[k]) or bufs[k][-1] < hi):
                more = np.fromfile(f, dtype="<i8", count=block, offset=8 * pos[k])
                pos[k] += len(more)
                bufs[k] = np.concatenate([bufs[k], more])
            cut = int(np.searchsorted(bufs[k], hi))
            pieces.append(bufs[k][:cut])
            bufs[k] = bufs[k][cut:]
        chunk = np.sort(np.concatenate(pieces)) if pieces else np.zeros(0, dtype=np.int64)
        if len(chunk):
            yield chunk.astype(np.int64, copy=False)


def _row_estimate(path: Path) -> int:
    """An upper bound on the ids in ``path`` without parsing it: Parquet's row counts
    from the file footers; for CSV, the line count (a fast byte scan)."""
    from veilpay.psi.data import _is_parquet, _parquet_parts

    if _is_parquet(path):
        import pyarrow.parquet as pq  # type: ignore[import-not-found,import-untyped,unused-ignore]

        return sum(int(pq.ParquetFile(p).metadata.num_rows) for p in _parquet_parts(path))
    lines = 0
    with path.open("rb") as fh:
        for block in _blocks(fh):
            lines += block.count(b"\n")
    return max(0, lines - 1)


def _blocks(fh: IO[bytes]) -> Iterator[bytes]:
    while block := fh.read(1 << 24):
        yield block
