"""A PSI job on files: check the input before any connection, agree the run's terms
with the peer (`veilpay.psi.terms`), read and normalise, run the protocol (KKRT, ECDH or
unbalanced), write the common rows."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from veilpay.errors import InvalidInput
from veilpay.net import Communicator
from veilpay.psi.data import copy_rows, read_header, read_ids, read_rows, write_rows
from veilpay.psi.ecdh import ecdh_psi
from veilpay.psi.kkrt import kkrt_psi
from veilpay.psi.rr22 import rr22_psi
from veilpay.psi.terms import Terms, agree
from veilpay.psi.unbalanced import (
    DEFAULT_BUDGET,
    DEFAULT_MAX_KEY_AGE_S,
    prepared_terms,
    setup_server,
    unbalanced_psi,
)

__all__ = ["PROTOCOLS", "check_psi_files", "choose_protocol", "run_psi_files", "setup_psi_file"]

PROTOCOLS = ("kkrt", "rr22", "ecdh")
_MODES = ("intersection", "cardinality", "unbalanced")


def choose_protocol(protocol: str | None, mode: str) -> str:
    """The protocol for ``mode``: RR22 (silent VOLE + OKVS, the fastest) for
    intersections unless KKRT or ECDH is asked for; ECDH for cardinality, whose shuffled
    answer neither OT-based protocol can give; P-256 OPRF for unbalanced mode, which
    refuses any protocol named."""
    if mode not in _MODES:
        raise InvalidInput(f"mode must be one of {_MODES}, not {mode!r}")
    if protocol is not None and protocol not in PROTOCOLS:
        raise InvalidInput(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    if mode == "unbalanced":
        if protocol is not None:
            raise InvalidInput(f"unbalanced mode runs its own OPRF on P-256, not {protocol}: leave --protocol out")
        return "oprf-p256"
    if mode == "cardinality":
        if protocol in ("kkrt", "rr22"):
            raise InvalidInput(f"cardinality mode needs --protocol ecdh: {protocol.upper()} tells the receiver "
                               "which ids matched")
        return "ecdh"
    return protocol or "rr22"


def setup_psi_file(
    input_path: str | Path,
    keys: Sequence[str],
    cache: str | Path,
    normalise: str = "trim",
    on_null: str = "drop",
    workers: int | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Offline step of unbalanced PSI: prepare the server's set from a file into
    ``cache``. Clients must normalise their keys the same way."""
    table = read_ids(input_path, keys, normalise, on_null)
    summary = setup_server(table.ids, cache, workers=workers, show_progress=show_progress, key_columns=len(keys),
                           normalise=normalise)
    return {"rows": table.rows, "duplicates": table.duplicates, "null_keys_dropped": table.nulls, **summary}


def check_psi_files(
    role: str,
    input_path: str | Path | None,
    keys: Sequence[str],
    output_path: str | Path | None = None,
    columns: Sequence[str] | None = None,
    mode: str = "intersection",
    reveal: str = "receiver",
    normalise: str = "trim",
    on_null: str = "drop",
    sort_by: str | None = None,
    cache: str | Path | None = None,
    protocol: str | None = None,
    query_budget: int = DEFAULT_BUDGET,
    max_key_age_s: float = DEFAULT_MAX_KEY_AGE_S,
) -> Terms:
    """Check this party's side of a `run_psi_files` run without a connection: the
    options, and the input file (it opens and parses, and has the key, output and sort
    columns; its first line only) or, for the unbalanced server, its prepared set. A
    local mistake is InvalidInput or DataError (naming the file) at once, where after
    connecting it would first wait for the peer. Returns the terms to agree with the
    peer. Rows are read, and their own errors (a malformed line, an empty key with
    ``on_null='error'``) found, in the run."""
    if role not in ("receiver", "sender"):
        raise InvalidInput(f"role must be 'receiver' or 'sender', not {role!r}")
    protocol = choose_protocol(protocol, mode)
    if mode == "unbalanced":
        if cache is None:
            raise InvalidInput("unbalanced mode needs a cache folder: the server's prepared set (veilpay psi-setup), "
                               "or where the client keeps its copy")
        if reveal != "receiver":
            raise InvalidInput("unbalanced mode reveals the intersection to the receiver (client) only")
        if role == "sender":
            if query_budget < 0 or max_key_age_s <= 0:
                raise InvalidInput("the query budget is >= 0 ids and the key age limit > 0 seconds")
            key_columns, how = prepared_terms(cache)
            return Terms(role, protocol, mode, reveal, key_columns, how)
    header = read_header(_input(input_path), keys, normalise, on_null)
    _output_columns(_input(input_path), header, columns, sort_by)
    if _learns(mode, role, reveal) and output_path is None:
        raise InvalidInput("this party learns the intersection: give an output path")
    return Terms(role, protocol, mode, reveal, len(keys), normalise)


def _input(input_path: str | Path | None) -> Path:
    if input_path is None:
        raise InvalidInput("give an input file")
    return Path(input_path)


def _output_columns(path: Path, header: list[str], columns: Sequence[str] | None, sort_by: str | None) -> list[str]:
    cols = list(columns or header)
    missing = [c for c in cols + ([sort_by] if sort_by else []) if c not in header]
    if missing:
        raise InvalidInput(f"{path}: no column {missing[0]!r} to output")
    return cols


def _learns(mode: str, role: str, reveal: str) -> bool:
    return mode in ("intersection", "unbalanced") and (role == "receiver" or reveal == "both")


def run_psi_files(
    comm: Communicator,
    peer: str,
    role: str,
    input_path: str | Path | None,
    keys: Sequence[str],
    output_path: str | Path | None = None,
    columns: Sequence[str] | None = None,
    mode: str = "intersection",
    reveal: str = "receiver",
    normalise: str = "trim",
    on_null: str = "drop",
    sort_by: str | None = None,
    workers: int | None = None,
    show_progress: bool | None = None,
    cache: str | Path | None = None,
    protocol: str | None = None,
    query_budget: int = DEFAULT_BUDGET,
    max_key_age_s: float = DEFAULT_MAX_KEY_AGE_S,
) -> dict[str, Any]:
    """Returns a summary (counts, seconds, bytes); writes ``output_path`` only when this
    party learns the intersection. Output rows keep this party's file order, or are
    sorted by ``sort_by``; ``columns`` picks the columns (default: all).

    ``mode='unbalanced'``: the sender is the server and answers from the set prepared
    in ``cache`` by `setup_psi_file` (no input file), within ``query_budget`` ids per
    client under one key and with a key at most ``max_key_age_s`` old; the receiver is a
    client that keeps its copy of the server's set in its own ``cache`` folder.

    ``protocol``: 'rr22' (default for intersections), 'kkrt' or 'ecdh'; see `choose_protocol`.
    ``workers`` only applies to the curve work of ECDH and unbalanced mode.

    Everything `check_psi_files` checks is checked first, before anything is sent; then
    both parties agree the run's terms (`veilpay.psi.terms.agree`): a difference in
    protocol, mode, reveal, key column count or normalisation is ProtocolMismatch at
    both ends."""
    terms = check_psi_files(role, input_path, keys, output_path, columns, mode, reveal, normalise, on_null, sort_by,
                            cache, protocol, query_budget, max_key_age_s)
    protocol = terms.protocol
    agree(comm, peer, terms)
    if mode == "unbalanced" and role == "sender":
        t0 = time.perf_counter()
        res = unbalanced_psi(comm, peer, "server", cache or "", workers=workers, show_progress=show_progress,
                             budget=query_budget, max_key_age_s=max_key_age_s)
        return {"role": role, "mode": mode, "protocol": protocol, "peer_size": res.peer_size, "intersection_size": None,
                "seconds": round(time.perf_counter() - t0, 3), "bytes_sent": comm.total().bytes_sent,
                "bytes_received": comm.total().bytes_recv}
    t_read = time.perf_counter()
    table = read_ids(_input(input_path), keys, normalise, on_null)
    read_seconds = time.perf_counter() - t_read
    cols = _output_columns(table.path, table.header, columns, sort_by)  # again: the file may have changed
    learns = _learns(mode, role, reveal)
    t0 = time.perf_counter()
    if mode == "unbalanced":
        res = unbalanced_psi(comm, peer, "client", cache or "", table.ids, workers=workers, show_progress=show_progress)
    elif protocol == "kkrt":
        res = kkrt_psi(comm, peer, role, table.ids, reveal=reveal, show_progress=show_progress)
    elif protocol == "rr22":
        res = rr22_psi(comm, peer, role, table.ids, reveal=reveal, show_progress=show_progress)
    else:
        res = ecdh_psi(comm, peer, role, table.ids, mode=mode, reveal=reveal, workers=workers,
                       show_progress=show_progress)
    seconds = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "role": role, "mode": mode, "protocol": protocol, "rows": table.rows, "distinct_ids": len(table.ids),
        "duplicates": table.duplicates, "null_keys_dropped": table.nulls, "peer_size": res.peer_size,
        "intersection_size": res.size if res.size >= 0 else None, "seconds": round(seconds, 3),
        "bytes_sent": comm.total().bytes_sent, "bytes_received": comm.total().bytes_recv,
        "read_seconds": round(read_seconds, 3),
    }
    if res.phases:
        summary["phases"] = res.phases
    if learns and res.indices is not None and output_path is not None:
        wanted = np.asarray(table.first_row, dtype=np.int64)[res.indices]  # ascending: indices are sorted
        if sort_by or cols != table.header or not copy_rows(table.path, wanted, output_path):
            rows = read_rows(table.path, wanted, cols + ([sort_by] if sort_by else []))
            if sort_by:
                rows.sort(key=lambda r: r[-1])
            write_rows(output_path, cols, [r[: len(cols)] for r in rows])
        summary["output"] = str(output_path)
        summary["write_seconds"] = round(time.perf_counter() - t0 - seconds, 3)
    return summary
