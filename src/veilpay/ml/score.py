"""Batch scoring of new customers with a model from `veilpay train`, at the same three
parties: PSI on the key and alignment (as in training), each data party applies its
recorded preparation (prep.json) to its own columns, the features are shared, and
z = X w + b is computed in MPC and revealed to one named party only, which writes
the scores (probabilities, 1 / (1 + e^-z)) with its key columns.

The model is either revealed (model.json, held by the job's first `model_to` party,
which inputs the weights as a secret) or kept shared (model_shares.npz at each
compute party, loaded as shares). Either way no party sees another's features, and
only the named party sees scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from veilpay.errors import DataError, VeilpayError
from veilpay.ml.job import Job
from veilpay.ml.pipeline import LocalTable, align_rows, phase, read_keyed, status_round, write_csv
from veilpay.ml.prep import Prep
from veilpay.mpc import Protocol, SharedTensor, concatenate
from veilpay.mpc.tensor import share
from veilpay.psi.data import split_key

__all__ = ["run_scoring"]


def _load_prep(model_dir: Path) -> Prep:
    try:
        return Prep.from_json(json.loads((model_dir / "prep.json").read_text()))
    except FileNotFoundError as exc:
        raise DataError(f"{model_dir}: no prep.json (the training run's --out folder of this party)") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{model_dir}/prep.json: not JSON ({exc})") from exc


def _load_model(model_dir: Path, d: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        model = json.loads((model_dir / "model.json").read_text())
        weights = np.concatenate([np.asarray(v, dtype=np.float64) for v in model["weights"].values()])
        bias = float(model["bias"])
    except FileNotFoundError as exc:
        raise DataError(f"{model_dir}: no model.json here (is this party in the job's model_to?)") from exc
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{model_dir}/model.json: malformed ({exc})") from exc
    if weights.shape != (d,):
        raise DataError(f"{model_dir}/model.json: {weights.size} weights, the features need {d}")
    return weights.reshape(d, 1), np.array([[bias]])


def _load_shares(job: Job, me: str, model_dir: Path) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]] | None:
    """This party's share components of (w, b), or None where it holds none (semi2k's
    dealer)."""
    path = model_dir / "model_shares.npz"
    if not path.exists():
        if me in job.compute[:2] or job.protocol == "aby3":
            raise DataError(f"{model_dir}: no model_shares.npz (the model was kept shared: each party's --out)")
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            w = tuple(z[k] for k in sorted(k for k in z.files if k.startswith("w")))
            b = tuple(z[k] for k in sorted(k for k in z.files if k.startswith("b")))
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: not a model share file ({exc})") from exc
    if meta.get("protocol") != job.protocol or meta.get("frac_bits") != job.frac_bits or meta.get("party") != me:
        raise DataError(f"{path}: shares of another protocol, precision or party")
    return w, b


def _shared_model(rt: Protocol, job: Job, shares: tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]] | None,
                  d: int) -> tuple[SharedTensor, SharedTensor]:
    if shares is None:
        return SharedTensor(rt, None, (d, 1), job.frac_bits), SharedTensor(rt, None, (1, 1), job.frac_bits)
    w, b = shares
    if any(s.shape != (d, 1) or s.dtype != np.uint64 for s in w) or any(s.shape != (1, 1) for s in b):
        raise DataError(f"model shares do not fit {d} features")
    return SharedTensor(rt, w, (d, 1), job.frac_bits), SharedTensor(rt, b, (1, 1), job.frac_bits)


def run_scoring(rt: Protocol, job: Job, model_dir: str | Path, input_path: str | Path | None = None,
                output_path: str | Path | None = None, to: str | None = None) -> dict[str, Any]:
    """This party's side of scoring ``input_path`` (data parties) with the model in
    ``model_dir`` (this party's training --out folder). ``to`` (default: the label
    party) receives the scores and writes ``output_path``."""
    me, model_dir = rt.me, Path(model_dir)
    to = to or job.label_party
    if to not in job.data_parties:
        raise DataError(f"scores go to a data party ({', '.join(job.data_parties)}), not {to!r}")
    report: dict[str, Any] = {"job": job.name, "party": me, "phases": {}}
    local: LocalTable | None = None
    prep: Prep | None = None
    error: BaseException | None = None
    with phase(rt, "read", report):
        if me in job.data_parties:
            try:
                if input_path is None or (me == to and output_path is None):
                    raise DataError("a data party gives --input (and the receiving party --output)")
                prep = _load_prep(model_dir)
                local = read_keyed(Path(input_path), job.key)
                report.update(rows=local.rows, duplicates=local.duplicates, null_keys_dropped=local.null_keys)
            except VeilpayError as exc:
                error = exc
        status_round(rt, "score.read", job, error, None)
    with phase(rt, "psi", report):
        if local is not None:
            align_rows(job, me, local, rt.comm, report)
    shares = None
    with phase(rt, "prepare", report):
        try:
            if not job.model_to:
                shares = _load_shares(job, me, model_dir)
            if local is not None and prep is not None:
                local.x_train = prep.apply(local.frame, str(input_path))
                local.x_test = np.zeros((0, local.x_train.shape[1]))
        except VeilpayError as exc:
            error = exc
        shapes = status_round(rt, "score.prepared", job, error, local, compare_rows=True)
    a, b = job.label_party, job.partner
    n, d_a, d_b = shapes[a][0], shapes[a][2], shapes[b][2]
    with phase(rt, "score", report):
        x = concatenate([share(rt, a, local.x_train if me == a and local else None, shape=(n, d_a)),
                         share(rt, b, local.x_train if me == b and local else None, shape=(n, d_b))], axis=1)
        if job.model_to:
            holder = job.model_to[0]
            wv, bv = _load_model(model_dir, d_a + d_b) if me == holder else (None, None)
            w, bias = share(rt, holder, wv, shape=(d_a + d_b, 1)), share(rt, holder, bv, shape=(1, 1))
        else:
            w, bias = _shared_model(rt, job, shares, d_a + d_b)
        z = (x @ w + bias).reveal(to=to)
    report["scored"] = n
    if me == to and local is not None and z is not None and output_path is not None:
        parts = [split_key(i) for i in local.ids]
        keys = pd.DataFrame({k: [p[j] for p in parts] for j, k in enumerate(job.key)})
        keys["score"] = 1.0 / (1.0 + np.exp(-np.clip(z[:, 0], -60, 60)))
        write_csv(Path(output_path), keys)
        report["output"] = str(output_path)
    return report
