"""Unbalanced PSI: a large server set prepared once offline, many small client queries
online. An oblivious PRF on P-256 (veilpay.crypto.p256_oprf): F_k(y) = x([k] H(y)).

Offline (`setup_server`): the server draws a long-lived key k and a salt, computes
F_k(y) for its whole set, shuffles, and writes a cache directory:

    key        the 32-byte scalar (mode 0600; it never leaves the server)
    set.bin    n * 32 bytes: the shuffled F_k(y)
    meta.json  version, n, salt, SHA-256 of set.bin (the set's digest), and (the
               server's copy) how many key columns make an id and how they were
               normalised, which a client's query must match (`prepared_terms`)

Online (`unbalanced_psi`, one session per query):

    C -> S  hello: version, |X|, chunk, digest of the set copy C holds (or zeros)
    S -> C  hello: version, |Y|, chunk, salt, digest of the server's set
    S -> C  verdict: served, or refused (budget spent, key too old), and the budget left
    S -> C  set.bin in chunks, only when C's digest differs (C caches it)
    C -> S  [r] H(x) for C's ids, with a fresh r per query
    S -> C  [k][r] H(x)
    C       [r^-1][k][r] H(x) = F_k(x), looked up in the cached set

The client learns which of its ids are in Y and |Y|; the server learns |X|. Queries
are unlinkable: r is fresh each time. A client cannot test ids offline against the
cached set, since only the server can compute F_k; online, every id it asks about is
one evaluation of F_k. So the server meters them: each client (the party its TLS
certificate names) may have at most ``budget`` ids evaluated under one key, counted
in the cache folder (``budget.json``) before the work is done, and a key older than
``max_key_age_s`` serves no query: the operator prepares the set again
(``veilpay psi-setup``) with a new key, which also starts every client's count
afresh. docs/psi.md has the long form and the schedule.
"""

from __future__ import annotations

import calendar
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from veilpay.crypto import BlindingPool, OprfKey, check_p256_points, hash_to_p256, sha256, sha256_file
from veilpay.errors import DataError, InvalidInput, ProtocolMismatch, QueryRefused
from veilpay.files import atomic_write
from veilpay.net import Communicator
from veilpay.packed import all_distinct
from veilpay.progress import progress
from veilpay.psi.data import NORMALISE
from veilpay.psi.ecdh import (
    CHUNK,
    ChunkedSession,
    PsiResult,
    match_points,
    peer_points,
    pool_size,
    random_permutation,
    spans,
    tracked,
)

__all__ = ["DEFAULT_BUDGET", "DEFAULT_MAX_KEY_AGE_S", "UB_VERSION", "ServerSet", "load_server_set", "prepared_terms",
           "setup_server", "unbalanced_psi"]

UB_VERSION = 2  # the protocol; 2: the server's verdict (query budget, key age) before any work
SET_VERSION = 1  # the prepared set's files
DEFAULT_BUDGET = 10_000_000  # ids one client may have evaluated under one key
DEFAULT_MAX_KEY_AGE_S = 30 * 86_400  # rotate the key (prepare the set again) at least monthly
DST = b"veilpay/psi/unbalanced-p256/v1"
_MIN_FOR_WORKERS = 2000  # P-256 costs about 7x X25519 per point, so workers pay off sooner
_NO_DIGEST = bytes(32)


@dataclass
class ServerSet:
    """A prepared set: its F_k values (shuffled), salt and digest; ``key`` only on the
    server side."""

    points: np.ndarray
    salt: bytes
    digest: bytes
    key: OprfKey | None = None
    created: float = 0.0  # when the key was made (seconds since the epoch)


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    atomic_write(path, lambda fh: fh.write(data), binary=True, mode=mode)


def _write_set(folder: Path, points: np.ndarray, salt: bytes, key: OprfKey | None,
               ids_are: dict[str, Any] | None = None) -> bytes:
    folder.mkdir(parents=True, exist_ok=True)
    data = points.tobytes()
    digest = sha256(data)
    # set.bin and key first, meta.json last: a reader trusts only a set that meta names.
    _write_atomic(folder / "set.bin", data)
    if key is not None:
        _write_atomic(folder / "key", key.raw(), mode=0o600)
    meta = {"version": SET_VERSION, "n": len(points), "salt": salt.hex(), "digest": digest.hex(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(ids_are or {})}
    if key is not None:
        (folder / "budget.json").unlink(missing_ok=True)  # a new key: every client's count starts afresh
    _write_atomic(folder / "meta.json", json.dumps(meta, indent=1).encode())
    return digest


def _read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError as exc:
        raise DataError(f"{folder}: no prepared set here (meta.json missing)") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder}/meta.json: unreadable or malformed ({exc})") from exc
    if not isinstance(meta, dict):
        raise DataError(f"{folder}/meta.json: malformed (not an object)")
    return meta


def prepared_terms(folder: str | Path) -> tuple[int, str]:
    """(key columns, normalisation) the server's set in ``folder`` was prepared with,
    from its meta.json alone (cheap: a server checks it before it connects). DataError
    when there is no set, no key file, or the set does not record them (prepared by
    `setup_server` without them, or by a veilpay before they were recorded): then a
    client that keys or normalises otherwise would silently find nothing."""
    folder = Path(folder)
    meta = _read_meta(folder)
    if not (folder / "key").is_file():
        raise DataError(f"{folder}: no key file (a client's copy cannot serve queries)")
    cols, how = meta.get("key_columns"), meta.get("normalise")
    if not isinstance(cols, int) or isinstance(cols, bool) or cols < 1 or how not in NORMALISE:
        raise DataError(f"{folder}: the prepared set does not record its key columns and normalisation: "
                        "prepare it again (veilpay psi-setup)")
    return cols, str(how)


def load_server_set(folder: str | Path, need_key: bool = False) -> ServerSet:
    """Read and check a cache directory (the server's, or a client's copy)."""
    folder = Path(folder)
    meta = _read_meta(folder)
    try:
        n, salt, digest = int(meta["n"]), bytes.fromhex(meta["salt"]), bytes.fromhex(meta["digest"])
        version = int(meta["version"])
        created = float(calendar.timegm(time.strptime(str(meta["created"]), "%Y-%m-%dT%H:%M:%SZ")))
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{folder}/meta.json: malformed ({exc})") from exc
    if version != SET_VERSION:
        raise DataError(f"{folder}: prepared set version {version}, this veilpay reads {SET_VERSION}")
    path = folder / "set.bin"
    if not path.exists() or path.stat().st_size != n * 32:
        raise DataError(f"{folder}/set.bin: missing or not {n} points long")
    if not secrets.compare_digest(sha256_file(path), digest):
        raise DataError(f"{folder}/set.bin: contents do not match the digest in meta.json")
    points = np.fromfile(path, dtype=np.uint8).reshape(n, 32)
    key = None
    if need_key:
        try:
            key = OprfKey.from_raw((folder / "key").read_bytes())
        except FileNotFoundError as exc:
            raise DataError(f"{folder}: no key file (a client's copy cannot serve queries)") from exc
    return ServerSet(points, salt, digest, key, created)


def setup_server(ids: Sequence[bytes], folder: str | Path, workers: int | None = None, chunk: int = CHUNK,
                 show_progress: bool | None = None, key_columns: int | None = None,
                 normalise: str | None = None) -> dict[str, Any]:
    """Offline: prepare the server's set (distinct ids) in ``folder``, replacing any
    earlier one (clients then download the new set on their next query).
    ``key_columns`` and ``normalise`` say how the ids were made; they are recorded for
    `prepared_terms`, and a set without them cannot serve `veilpay.psi.run_psi_files`."""
    if not all_distinct(ids):
        raise InvalidInput("ids must be distinct: deduplicate first")
    if (key_columns is None) != (normalise is None):
        raise InvalidInput("give both key_columns and normalise, or neither")
    ids_are: dict[str, Any] = {}
    if key_columns is not None and normalise is not None:
        if key_columns < 1 or normalise not in NORMALISE:
            raise InvalidInput(f"key_columns must be >= 1 and normalise one of {NORMALISE}")
        ids_are = {"key_columns": key_columns, "normalise": normalise}
    t0 = time.perf_counter()
    key, salt = OprfKey.generate(), secrets.token_bytes(32)
    workers = pool_size(workers, len(ids), _MIN_FOR_WORKERS)
    with BlindingPool(key, workers) as pool, progress(len(ids), "psi setup", unit="pt", enabled=show_progress) as bar:
        futures = [tracked(pool.submit(hash_to_p256(ids[lo:hi], salt, DST), lo), bar, hi - lo)
                   for lo, hi in spans(len(ids), chunk)]
        points = np.concatenate([f.result() for f in futures]) if futures else np.empty((0, 32), np.uint8)
    digest = _write_set(Path(folder), points[random_permutation(len(points))], salt, key, ids_are)
    return {"prepared": len(ids), "digest": digest.hex(), "seconds": round(time.perf_counter() - t0, 3),
            "folder": str(folder)}


def _hello(fields: Sequence[int], *extra: bytes) -> np.ndarray:
    head = np.array([UB_VERSION, *fields], dtype=np.uint64).view(np.uint8)
    return np.concatenate([head, *(np.frombuffer(e, dtype=np.uint8) for e in extra)])


def _read_hello(peer: str, got: np.ndarray, size: int) -> tuple[list[int], bytes]:
    if got.dtype != np.uint8 or got.ndim != 1 or got.size < 8:
        raise ProtocolMismatch(peer, "malformed unbalanced-PSI hello")
    version = int(got[:8].view(np.uint64)[0])
    if version != UB_VERSION:
        raise ProtocolMismatch(peer, f"peer speaks unbalanced PSI version {version}, we speak {UB_VERSION}")
    if got.size != size:
        raise ProtocolMismatch(peer, "unbalanced-PSI hello of the wrong size (is the peer the other role?)")
    fields = [int(v) for v in got[8:24].view(np.uint64)]
    if not 1 <= fields[1] <= 1 << 24:
        raise ProtocolMismatch(peer, f"chunk size {fields[1]} out of range")
    return fields, got[24:].tobytes()


def unbalanced_psi(
    comm: Communicator,
    peer: str,
    role: str,
    folder: str | Path,
    ids: Sequence[bytes] = (),
    workers: int | None = None,
    chunk: int = CHUNK,
    show_progress: bool | None = None,
    budget: int = DEFAULT_BUDGET,
    max_key_age_s: float = DEFAULT_MAX_KEY_AGE_S,
) -> PsiResult:
    """One online query. The server (``role='server'``) answers from its prepared
    ``folder``, within ``budget`` ids per client under one key and with a key at most
    ``max_key_age_s`` old (QueryRefused at both sides otherwise); the client
    (``role='client'``) keeps its copy of the set in ``folder`` and learns which of
    ``ids`` (distinct) the server holds."""
    if role not in ("server", "client"):
        raise InvalidInput(f"role must be 'server' or 'client', not {role!r}")
    if not 1 <= chunk <= 1 << 24:
        raise InvalidInput("chunk must be between 1 and 2^24 points")
    if role == "server":
        if budget < 0 or max_key_age_s <= 0:
            raise InvalidInput("the query budget is >= 0 ids and the key age limit > 0 seconds")
        return _server(comm, peer, Path(folder), load_server_set(folder, need_key=True), workers, chunk,
                       show_progress, budget, max_key_age_s)
    if not all_distinct(ids):
        raise InvalidInput("ids must be distinct: deduplicate first")
    return _client(comm, peer, Path(folder), ids, workers, chunk, show_progress)


_SERVED, _BUDGET_SPENT, _KEY_EXPIRED = 0, 1, 2


def _charge(folder: Path, srv: ServerSet, client: str, n: int, budget: int) -> tuple[bool, int]:
    """Count ``n`` more ids for ``client`` under this key, if its budget allows: (allowed,
    ids left after). The count is written before any work is done."""
    path = folder / "budget.json"
    try:
        book = json.loads(path.read_text())
        if not isinstance(book, dict) or book.get("digest") != srv.digest.hex() or not isinstance(book.get("clients"),
                                                                                                  dict):
            book = {}
    except (OSError, ValueError):
        book = {}
    clients = {str(k): int(v) for k, v in (book.get("clients") or {}).items()}
    used = clients.get(client, 0)
    if used + n > budget:
        return False, max(0, budget - used)
    clients[client] = used + n
    _write_atomic(path, json.dumps({"digest": srv.digest.hex(), "clients": clients}, indent=1).encode(), 0o600)
    return True, budget - used - n


def _server(comm: Communicator, peer: str, folder: Path, srv: ServerSet, workers: int | None, chunk: int,
            show_progress: bool | None, budget: int, max_key_age_s: float) -> PsiResult:
    n = len(srv.points)
    got = comm.exchange("psi.ub.hello", {peer: [_hello([n, chunk], srv.salt, srv.digest)]}, {peer: 1})[peer][0]
    (n_client, client_chunk), their_digest = _read_hello(peer, got, 24 + 32)
    if time.time() - srv.created > max_key_age_s:
        comm.exchange("psi.ub.verdict", {peer: [np.array([_KEY_EXPIRED, 0], dtype=np.uint64)]})
        raise QueryRefused(peer, f"the server's key is older than {max_key_age_s / 86400:g} days: prepare the set "
                                 "again (veilpay psi-setup) with a new key")
    allowed, left = _charge(folder, srv, peer, n_client, budget)
    comm.exchange("psi.ub.verdict", {peer: [np.array([_SERVED if allowed else _BUDGET_SPENT, left], dtype=np.uint64)]})
    if not allowed:
        raise QueryRefused(peer, f"{n_client} ids would take this client past its budget of {budget} under this "
                                 f"key ({left} left)")
    if not secrets.compare_digest(their_digest, srv.digest):
        for lo, hi in spans(n, chunk):
            comm.exchange("psi.ub.set", {peer: [srv.points[lo:hi]]})
    if srv.key is None:
        raise DataError("the server's set has no key")
    with BlindingPool(srv.key, pool_size(workers, n_client, _MIN_FOR_WORKERS)) as pool, \
            progress(n_client, "psi server", unit="pt", enabled=show_progress) as bar:
        ChunkedSession(comm, peer, pool, bar, check_p256_points).blind_all("psi.ub.query", "psi.ub.reply", n_client,
                                                                     client_chunk)
    return PsiResult(None, -1, n_client)


def _client(comm: Communicator, peer: str, folder: Path, ids: Sequence[bytes], workers: int | None, chunk: int,
            show_progress: bool | None) -> PsiResult:
    try:
        mine: ServerSet | None = load_server_set(folder)
    except DataError:
        mine = None  # no copy yet, or a damaged one: ask for the set
    have = mine.digest if mine is not None else _NO_DIGEST
    got = comm.exchange("psi.ub.hello", {peer: [_hello([len(ids), chunk], have)]}, {peer: 1})[peer][0]
    (n, server_chunk), rest = _read_hello(peer, got, 24 + 64)
    salt, digest = rest[:32], rest[32:]
    verdict = comm.exchange("psi.ub.verdict", recv={peer: 1})[peer][0]
    if verdict.dtype != np.uint64 or verdict.shape != (2,) or int(verdict[0]) not in (_SERVED, _BUDGET_SPENT,
                                                                                       _KEY_EXPIRED):
        raise ProtocolMismatch(peer, "malformed verdict")
    if int(verdict[0]) == _BUDGET_SPENT:
        raise QueryRefused(peer, f"the server refused {len(ids)} ids: this client's query budget under its current "
                                 f"key has {int(verdict[1])} left")
    if int(verdict[0]) == _KEY_EXPIRED:
        raise QueryRefused(peer, "the server's key is past its rotation date; ask again once it prepared a new set")
    if mine is None or not secrets.compare_digest(have, digest):
        points = np.empty((n, 32), dtype=np.uint8)
        for lo, hi in spans(n, server_chunk):
            arr = comm.exchange("psi.ub.set", recv={peer: 1})[peer][0]
            points[lo:hi] = peer_points(peer, arr, hi - lo, lo, check_p256_points)
        if not secrets.compare_digest(sha256(points.tobytes()), digest):
            raise ProtocolMismatch(peer, "the set sent does not match the digest the server announced")
        _write_set(folder, points, salt, None)
        mine = ServerSet(points, salt, digest)
    r = OprfKey.generate()
    with BlindingPool(r, pool_size(workers, len(ids), _MIN_FOR_WORKERS)) as pool, \
            BlindingPool(r.inverse(), pool_size(workers, len(ids), _MIN_FOR_WORKERS)) as unpool, \
            progress(2 * len(ids), "psi client", unit="pt", enabled=show_progress) as bar:
        s = ChunkedSession(comm, peer, pool, bar, check_p256_points)
        s.send("psi.ub.query", [s.submit(hash_to_p256(ids[lo:hi], salt, DST), lo) for lo, hi in spans(len(ids), chunk)])
        u = ChunkedSession(comm, peer, unpool, bar, check_p256_points)
        values = u.gather([u.submit(got, lo) for lo, got in u.recv("psi.ub.reply", len(ids), chunk)])
    hits = match_points(values, mine.points)
    return PsiResult(hits, len(hits), n)
