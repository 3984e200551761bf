"""Batch scoring of new customers with a model from `veilpay train`, at the same three
parties: PSI on the key and alignment (as in training), each data party applies its
recorded preparation (prep.json) to its own columns, the features are shared, and
z = X w + b is computed in MPC and revealed to one named party only, which writes
the scores (probabilities, 1 / (1 + e^-z)) with its key columns.

An LR model is either revealed (model.json, held by the job's first `model_to` party,
which inputs the weights as a secret) or kept shared (model_shares.npz at each
compute party, loaded as shares). A tree model is always scored from its shares
(split one-hots and leaves), with each data party's split candidates from prep.json.
Either way no party sees another's features, and only the named party sees scores.

Rows are never dropped silently: each data party counts the input rows it could not
score (ids the other party lacks, which PSI tells it anyway; rows with an empty key
part), logs the count and writes those rows' keys to ``unscored_path`` (by default
beside the output, or beside the input at a party without one: NAME.unscored.csv).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from veilpay.errors import DataError
from veilpay.ml.job import Job
from veilpay.ml.pipeline import (
    LocalTable,
    align_rows,
    indicator_matrix,
    key_frame,
    phase,
    read_keyed,
    status_round,
    write_csv,
)
from veilpay.ml.prep import Prep
from veilpay.ml.sstree import Bins, SecureTree, predict_trees
from veilpay.mpc import Protocol, SharedTensor, concatenate
from veilpay.mpc.tensor import share
from veilpay.psi.data import split_key

__all__ = ["run_scoring"]

log = logging.getLogger(__name__)


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


Components = dict[str, tuple[np.ndarray, ...]]


def _load_shares(job: Job, me: str, model_dir: Path) -> Components | None:
    """This party's share components of the kept-shared model, by tensor name, or None
    where it holds none (semi2k's dealer)."""
    path = model_dir / "model_shares.npz"
    if not path.exists():
        if me in job.compute[:2] or job.protocol == "aby3":
            raise DataError(f"{model_dir}: no model_shares.npz (the model was kept shared: each party's --out)")
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            parts: dict[str, list[tuple[int, np.ndarray]]] = {}
            for key in z.files:
                if key != "meta":
                    name, _, i = key.rpartition("__")
                    parts.setdefault(name, []).append((int(i), z[key]))
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: not a model share file ({exc})") from exc
    if (meta.get("protocol"), meta.get("frac_bits"), meta.get("party"), meta.get("model_type", "ss-lr")) != (
            job.protocol, job.frac_bits, me, job.model_type):
        raise DataError(f"{path}: shares of another protocol, precision, party or model type")
    return {name: tuple(a for _, a in sorted(items, key=lambda t: t[0])) for name, items in parts.items()}


def _tensor(rt: Protocol, shares: Components | None, name: str, shape: tuple[int, int], frac: int) -> SharedTensor:
    if shares is None:
        return SharedTensor(rt, None, shape, frac)
    comps = shares.get(name)
    if comps is None or any(c.shape != shape or c.dtype != np.uint64 for c in comps):
        raise DataError(f"model shares: {name!r} missing or not of shape {shape}")
    return SharedTensor(rt, comps, shape, frac)


def _load_bins(model_dir: Path) -> Bins:
    try:
        data = json.loads((model_dir / "prep.json").read_text())
        return Bins([(int(c), float(t)) for c, t in data["bins"]])
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{model_dir}/prep.json: no split candidates for a tree model ({exc})") from exc


def unscored_default(input_path: str | Path, output_path: str | Path | None) -> Path:
    """Where the rows that could not be scored go unless told: NAME.unscored.csv beside
    the output (or the input)."""
    base = Path(output_path if output_path is not None else input_path)
    return base.with_name(base.stem + ".unscored.csv")


def _report_unscored(job: Job, local: LocalTable, path: Path, report: dict[str, Any]) -> None:
    unscored = len(local.unmatched)
    report.update(unscored=unscored, unscored_file=str(path))
    write_csv(path, key_frame(local.unmatched, job))
    if unscored or local.null_keys or local.duplicates:
        msg = (f"{unscored:,} of {local.rows:,} input rows not scored: the other party lacks their ids (keys in "
               f"{path})" + (f"; {local.null_keys:,} rows with an empty key part dropped" if local.null_keys else "")
               + (f"; {local.duplicates:,} rows repeat a key (its first row is scored)" if local.duplicates else ""))
        report.setdefault("warnings", []).append(msg)
        log.warning("%s", msg)


def run_scoring(rt: Protocol, job: Job, model_dir: str | Path, input_path: str | Path | None = None,
                output_path: str | Path | None = None, to: str | None = None,
                unscored_path: str | Path | None = None) -> dict[str, Any]:
    """This party's side of scoring ``input_path`` (data parties) with the model in
    ``model_dir`` (this party's training --out folder). ``to`` (default: the label
    party) receives the scores and writes ``output_path``; every data party writes
    the keys of its rows that could not be scored to ``unscored_path`` (default
    ``unscored_default``) and counts them in the report."""
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
            except Exception as exc:  # noqa: BLE001 - told to every party by the status round, then re-raised
                error = exc
        status_round(rt, "score.read", job, error, None)
    with phase(rt, "psi", report):
        if local is not None:
            align_rows(job, me, local, rt.comm, report)
    if local is not None and input_path is not None:
        _report_unscored(job, local, Path(unscored_path or unscored_default(input_path, output_path)), report)
    shares = None
    with phase(rt, "prepare", report):
        try:
            if not job.model_to or job.model_type == "ss-xgb":
                shares = _load_shares(job, me, model_dir)
                if job.model_type == "ss-xgb" and shares is not None and "base" not in shares:
                    raise DataError(f"{model_dir}: a tree model without its starting score (trained by an older "
                                    "veilpay): train it again")
            if local is not None and prep is not None:
                local.x_train = prep.apply(local.frame, str(input_path))
                if job.model_type == "ss-xgb":
                    local.x_train = _load_bins(model_dir).indicators(local.x_train)
                local.x_test = np.zeros((0, local.x_train.shape[1]))
        except Exception as exc:  # noqa: BLE001 - told to every party by the status round, then re-raised
            error = exc
        shapes = status_round(rt, "score.prepared", job, error, local, compare_rows=True)
    a, b = job.label_party, job.partner
    n, d_a, d_b = shapes[a][0], shapes[a][2], shapes[b][2]
    f = job.frac_bits
    with phase(rt, "score", report):
        if job.model_type == "ss-xgb":
            t = job.tree
            trees = [SecureTree([_tensor(rt, shares, f"t{i}_l{j}", (2**j, d_a + d_b), 0) for j in range(t.depth)],
                                _tensor(rt, shares, f"t{i}_leaves", (2**t.depth, 1), f)) for i in range(t.trees)]
            ind = indicator_matrix(rt, job, local.x_train.astype(np.uint8) if local else None, n, d_a, d_b)
            z = predict_trees(ind, trees, _tensor(rt, shares, "base", (1, 1), f)).reveal(to=to)
        else:
            x = concatenate([share(rt, a, local.x_train if me == a and local else None, shape=(n, d_a)),
                             share(rt, b, local.x_train if me == b and local else None, shape=(n, d_b))], axis=1)
            if job.model_to:
                holder = job.model_to[0]
                wv, bv = _load_model(model_dir, d_a + d_b) if me == holder else (None, None)
                w, bias = share(rt, holder, wv, shape=(d_a + d_b, 1)), share(rt, holder, bv, shape=(1, 1))
            else:
                w, bias = _tensor(rt, shares, "w", (d_a + d_b, 1), f), _tensor(rt, shares, "b", (1, 1), f)
            z = (x @ w + bias).reveal(to=to)
    report["scored"] = n
    if me == to and local is not None and z is not None and output_path is not None:
        parts = [split_key(i) for i in local.ids]
        keys = pd.DataFrame({k: [p[j] for p in parts] for j, k in enumerate(job.key)})
        keys["score"] = 1.0 / (1.0 + np.exp(-np.clip(z[:, 0], -60, 60)))
        write_csv(Path(output_path), keys)
        report["output"] = str(output_path)
    return report
