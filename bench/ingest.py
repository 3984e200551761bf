"""PSI ingestion benchmark: read a key column, normalise, encode, deduplicate and map
the ids to 128-bit items (`id_prf`), the way each party starts a PSI run. Prints one
JSON line: per case, rows, wall and CPU seconds (CPU includes pyarrow's threads) of
the old path (the csv module and per-string functions, kept below as it was) and the
new one (`veilpay.psi.data.read_ids`, pyarrow), the best of ``--repeat`` runs each,
and the CPU speed-up; and the memory of the new path, measured in a fresh process per
case so peaks do not mix: ``new_peak_mib``, how far read_ids raises the peak RSS
(VmHWM, i.e. ru_maxrss) over the process's after importing it, and ``new_after_mib``, its RSS
after read_ids returns over the same baseline (the result is held: at 1M ids about
28 MiB of PackedIds and 8 MiB of row numbers).

Cases: a CSV as bench/psi.py writes it (``customer_id``, ``cust-{i:012d}``); a
composite key (that id and a country column, casefold); the first file as Parquet.

    python bench/ingest.py [--rows 1000000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from veilpay.crypto.ot import id_prf
from veilpay.psi.data import _BATCH, _SEP, join_key, open_rows, read_ids

KEY = bytes(range(16))


def _old_norm_all(values: list[str], how: str) -> list[str]:
    if how == "none":
        return values
    nfc = functools.partial(unicodedata.normalize, "NFC")
    out = list(map(nfc, map(str.strip, values)))
    return list(map(str.casefold, out)) if how == "casefold" else out


def old_read_ids(path: Path, keys: Sequence[str], normalise: str) -> tuple[list[bytes], list[int]]:
    """read_ids before pyarrow: the csv module (open_rows), per-column list operations,
    dict.fromkeys for the duplicates (on_null='drop')."""
    ids: list[bytes] = []
    first_row: list[int] = []
    with open_rows(path) as (header, rows):
        cols = [header.index(k) for k in keys]
        n = 0
        while batch := list(itertools.islice(rows, _BATCH)):
            start, n = n, n + len(batch)
            parts = [_old_norm_all([row[c] for row in batch], normalise) for c in cols]
            keep: Sequence[int] = range(start, n)
            if any("" in col for col in parts):
                kept = [i for i in range(len(batch)) if all(col[i] != "" for col in parts)]
                parts = [[col[i] for i in kept] for col in parts]
                keep = [start + i for i in kept]
            if len(parts) == 1:
                ids.extend(f"{len(p)}{_SEP}{p}".encode() for p in parts[0])
            else:
                ids.extend(join_key(ps) for ps in zip(*parts, strict=True))
            first_row.extend(keep)
    unique = dict.fromkeys(ids)
    if len(unique) != len(ids):
        seen: set[bytes] = set()
        out, rows_out = [], []
        for ident, r in zip(ids, first_row, strict=True):
            if ident not in seen:
                seen.add(ident)
                out.append(ident)
                rows_out.append(r)
        return out, rows_out
    return ids, first_row


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    best_wall, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - w)
        best_cpu = min(best_cpu, time.process_time() - c)
    return round(best_wall, 3), round(best_cpu, 3), out


def _rss_mib() -> float:
    """This process's RSS now (Linux), or its peak where /proc is missing."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return _peak_mib()


def _peak_mib() -> float:
    """The peak RSS: VmHWM on Linux, as ru_maxrss would be had a big parent not
    started this process (Linux carries the parent's peak into ru_maxrss across exec)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 2**10
    except (OSError, StopIteration):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere


def _memory_child(path: str, keys: str, how: str) -> None:
    """In a fresh process: read_ids once, its peak and remaining RSS over the
    baseline after imports (the fast path's modules imported too), as JSON."""
    import veilpay.psi._ingest  # noqa: F401 - pyarrow.compute and .csv: part of the baseline

    base, base_peak = _rss_mib(), _peak_mib()
    table = read_ids(path, keys.split(","), how)
    print(json.dumps({"peak_mib": round(_peak_mib() - base_peak, 1), "after_mib": round(_rss_mib() - base, 1),
                      "ids": len(table.ids)}))


def _memory(path: Path, keys: list[str], how: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(path), ",".join(keys), how],
                         check=True, capture_output=True, text=True).stdout
    got: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--memory-child", nargs=3, metavar=("PATH", "KEYS", "HOW"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        _memory_child(*args.memory_child)
        return
    n = args.rows
    out: dict[str, Any] = {"bench": "psi-ingest", "rows": n}
    with tempfile.TemporaryDirectory() as tmp:
        single, composite, parquet = Path(tmp) / "ids.csv", Path(tmp) / "pairs.csv", Path(tmp) / "ids.parquet"
        with single.open("w") as fh:
            fh.write("customer_id\n")
            fh.writelines(f"cust-{i:012d}\n" for i in range(n))
        countries = ["SG", "my", "Th ", "ID", "vn"]
        with composite.open("w") as fh:
            fh.write("customer_id,country,amount\n")
            fh.writelines(f"cust-{i % (n // 2 or 1):012d},{countries[i % 5]},{i}\n" for i in range(n))
        pq.write_table(pa.table({"customer_id": [f"cust-{i:012d}" for i in range(n)]}), parquet)
        cases = [("csv", single, ["customer_id"], "trim"), ("csv_composite", composite, ["customer_id", "country"],
                                                                "casefold"),
                 ("parquet", parquet, ["customer_id"], "trim")]
        for name, path, keys, how in cases:
            def old(path: Path = path, keys: list[str] = keys, how: str = how) -> Any:
                ids, rows = old_read_ids(path, keys, how)
                return id_prf(KEY, ids), rows

            def new(path: Path = path, keys: list[str] = keys, how: str = how) -> Any:
                t = read_ids(path, keys, how)
                return id_prf(KEY, t.ids), t.first_row

            ow, oc, (oi, orow) = _timed(old, args.repeat)
            nw, nc, (ni, nrow) = _timed(new, args.repeat)
            if not ((oi == ni).all() and list(orow) == nrow.tolist()):
                raise SystemExit(f"{name}: the new path's items differ from the old path's")
            mem = _memory(path, keys, how)
            if mem["ids"] != len(ni):
                raise SystemExit(f"{name}: the memory run read {mem['ids']} ids, not {len(ni)}")
            out[name] = {"ids": len(ni), "old_s": ow, "old_cpu_s": oc, "new_s": nw, "new_cpu_s": nc,
                         "cpu_speedup": round(oc / nc, 2), "new_peak_mib": mem["peak_mib"],
                         "new_after_mib": mem["after_mib"]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
