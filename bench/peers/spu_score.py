"""SPU 0.9.5 peer for bench/risk.py: batch scoring z = X w + b of the same test rows
with the same weights, in SPU's simulator (SEMI2K, 2 parties as threads over its
in-memory link). Runs in .venv-spu (not ours: pins clash). Inputs are .npy files
(no pickle): DIR/x.npy, w.npy, b.npy. Prints one JSON line with the seconds inside
the simulator (compile included) and writes DIR/spu_scores.npy.

    .venv-spu/bin/python bench/peers/spu_score.py --dir DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import spu.libspu as libspu
import spu.utils.simulation as spsim


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    d = Path(ap.parse_args().dir)
    x = np.load(d / "x.npy", allow_pickle=False).astype(np.float32)
    w = np.load(d / "w.npy", allow_pickle=False).astype(np.float32)
    b = np.load(d / "b.npy", allow_pickle=False).astype(np.float32)

    def score(x: jnp.ndarray, w: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
        return x @ w + b

    sim = spsim.Simulator.simple(2, libspu.ProtocolKind.SEMI2K, libspu.FieldType.FM64)
    t0 = time.perf_counter()
    z = spsim.sim_jax(sim, score)(x, w, b)
    seconds = time.perf_counter() - t0
    np.save(d / "spu_scores.npy", np.asarray(z, dtype=np.float64), allow_pickle=False)
    print(json.dumps({"peer": "spu-0.9.5 simulator semi2k", "seconds": round(seconds, 3), "rows": len(x)}), flush=True)


if __name__ == "__main__":
    main()
