"""RR22's OKVS (veilpay.psi.okvs) alone, one process: rows(), encode (rows() not
included in ``encode_s``; ``encode_total_s`` adds it) and decode of n random items,
the best of ``--repeat`` runs each, with the peeling rounds, the 2-core's size, CPU
seconds of the whole run, peak RSS, and for scale the time of one plain ``np.take`` of
n 16-byte rows from a table of the same size. One JSON line per expansion.

    python bench/okvs.py [--n 1000000] [--e 1.3] [--repeat 5]
    python bench/okvs.py --e 1.23,1.25,1.27,1.3,1.35     # rounds and time against e
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from veilpay.psi import okvs


def _best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(n: int, e: float, repeat: int) -> dict[str, Any]:
    okvs.EXPANSION = e  # the module reads it when a store is made
    rng = np.random.default_rng(0)
    items = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    values = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    cpu0 = time.process_time()
    store = okvs.Okvs(n, bytes(16))
    rows_s, rows = _best(lambda: store.rows(items), repeat)
    encode_s, table = _best(lambda: store.encode(rows, values), repeat)
    decode_s, got = _best(lambda: store.decode(table, rows), repeat)
    wide = np.ascontiguousarray(np.concatenate([table, table], axis=1))
    decode2_s, _ = _best(lambda: store.decode(wide, rows), repeat)
    cpu = time.process_time() - cpu0
    if not np.array_equal(got, values):
        raise SystemExit("decode(encode) differs from the values")
    flat = table.view(np.dtype((np.void, 16))).reshape(-1)
    take_s, _ = _best(lambda: np.take(flat, rows.pos[0]), repeat)
    return {
        "bench": "okvs", "n": n, "e": e, "d": okvs.DENSE, "size": store.size,
        "rounds": store.last_rounds, "core": store.last_core,
        "rows_s": round(rows_s, 4), "encode_s": round(encode_s, 4), "encode_total_s": round(rows_s + encode_s, 4),
        "decode_s": round(decode_s, 4), "decode_2tables_s": round(decode2_s, 4),
        "np_take_n_rows_s": round(take_s, 4), "cpu_s": round(cpu, 2), "repeat": repeat,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--e", default=str(okvs.EXPANSION), help="expansions, comma-separated")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    for e in (float(x) for x in args.e.split(",")):
        print(json.dumps(run(args.n, e, args.repeat)), flush=True)


if __name__ == "__main__":
    main()
