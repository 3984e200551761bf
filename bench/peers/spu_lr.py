"""SPU 0.9.5 peer for bench/train.py: the same mini-batch logistic regression written in
JAX, run by SPU's simulator (SEMI2K, 2 parties as threads over its in-memory link) on
the same prepared rows. Runs in .venv-spu (not ours: pins clash). Inputs are .npy
files (no pickle); the rows are visited in one fixed shuffled order every epoch, and
the sigmoid is the same clip(0.5 + z/4, 0, 1) as our default.

    .venv-spu/bin/python bench/peers/spu_lr.py --dir DIR --epochs 10 --batch 8192 --lr 2.0 --decay 0.1

DIR holds x_train.npy, y_train.npy, x_test.npy. Prints one JSON line with the seconds
inside the simulator (compile included) and writes DIR/spu_scores.npy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import spu.libspu as libspu
import spu.utils.simulation as spsim


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1.0)
    ap.add_argument("--decay", type=float, default=0.0)
    a = ap.parse_args()
    d = Path(a.dir)
    x = np.load(d / "x_train.npy", allow_pickle=False).astype(np.float32)
    y = np.load(d / "y_train.npy", allow_pickle=False).astype(np.float32)
    xt = np.load(d / "x_test.npy", allow_pickle=False).astype(np.float32)
    batches = len(x) // a.batch  # whole batches only: dynamic_slice needs one static size
    lrs = np.array([a.lr / (1.0 + a.decay * e) / a.batch for e in range(a.epochs)], dtype=np.float32)

    def train(x: jnp.ndarray, y: jnp.ndarray, xt: jnp.ndarray) -> jnp.ndarray:
        def step(i, wb):  # type: ignore[no-untyped-def]
            w, b = wb
            lo = (i % batches) * a.batch
            xb = jax.lax.dynamic_slice(x, (lo, 0), (a.batch, x.shape[1]))
            yb = jax.lax.dynamic_slice(y, (lo, 0), (a.batch, 1))
            p = jnp.clip(0.25 * (xb @ w + b) + 0.5, 0.0, 1.0)
            e = (p - yb) * jnp.asarray(lrs)[i // batches]
            return w - xb.T @ e, b - jnp.sum(e, axis=0, keepdims=True)

        w0, b0 = jnp.zeros((x.shape[1], 1)), jnp.zeros((1, 1))
        w, b = jax.lax.fori_loop(0, a.epochs * batches, step, (w0, b0))
        return xt @ w + b

    sim = spsim.Simulator.simple(2, libspu.ProtocolKind.SEMI2K, libspu.FieldType.FM64)
    t0 = time.perf_counter()
    scores = spsim.sim_jax(sim, train)(x, y, xt)
    seconds = time.perf_counter() - t0
    np.save(d / "spu_scores.npy", np.asarray(scores, dtype=np.float64), allow_pickle=False)
    print(json.dumps({"peer": "spu-0.9.5 simulator semi2k", "seconds": round(seconds, 2), "batches": batches,
                      "epochs": a.epochs}), flush=True)


if __name__ == "__main__":
    main()
