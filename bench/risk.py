"""Fraud-model quality (docs/risk.md, docs/ml.md): the joint fraud model of a wallet (the MPP, label
party: V1..V9, hour) and an acquirer (the ACQP: V10..V28, Amount) on the ULB
credit-card data (`make data` writes data/fraud), out of time: trained on the first
80 % of the payments by Time, tested on the last 20 %. One JSON line per model:

(a) secure: `veilpay train` as three processes over TCP + TLS, the model kept
    secret-shared (model_to = []); the test rows scored in MPC by the job itself (its
    test_scores.csv, revealed to the label party only), the training rows scored by
    `veilpay score` from the shares (for the operating threshold);
(b) the same SGD (same hyperparameters and class weights) in float64 on the
    centralised data (veilpay.ml.sslr.train_lr_plain, the plaintext twin);
(c) the same on the wallet's (MPP's) columns alone; (d) on the acquirer's alone;
and scikit-learn's LogisticRegression (unweighted) centralised and per party, as a
reference. Then a batch-scoring line (`veilpay score` of the test rows from the
shares: seconds, bytes, rounds, against scikit-learn's predict_proba on the same
rows) and SPU's simulator scoring the same rows with the same weights, when
.venv-spu exists (`make bench-peers`).

Metrics, on the test rows:
- auprc: average precision (the area under the precision-recall curve);
- recall_at_0.1pct_fpr: the share of frauds scored above t, where t is the
  smallest threshold that flags at most 0.1 % of the test's legitimate payments;
- loss_per_10m: the operating threshold T is chosen on the TRAINING rows: the
  smallest threshold that flags (declines or sends to review) at most 0.1 % of the
  training's legitimate payments. A test payment is approved when its score <= T.
  loss_per_10m = 10,000,000 * (sum of Amount of the approved frauds) / (sum of
  Amount of all approved payments): dollars of fraud let through per $10M approved.
  Also given: the test FPR and recall at T.

    python bench/risk.py [--data data/fraud] [--trees N]    # N: also secure trees (ss-xgb)
    python bench/risk.py --tune                              # the hyperparameter grid, training rows only
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
import pandas as pd

HERE = Path(__file__).resolve().parent
PARTIES = ["wallet", "acquirer", "helper"]
FPR = 0.001
PER = 10_000_000.0


def threshold_at_fpr(y: np.ndarray, s: np.ndarray, fpr: float = FPR) -> float:
    """The smallest t with #(legitimate scored > t) <= fpr * #legitimate."""
    neg = np.sort(s[y == 0])[::-1]
    k = int(np.floor(fpr * len(neg)))
    return float(neg[k]) if k < len(neg) else float(-np.inf)


def risk_metrics(y: np.ndarray, s: np.ndarray, amount: np.ndarray, t_op: float) -> dict[str, Any]:
    """The metrics of the docstring for test labels ``y``, scores ``s``, amounts and the
    operating threshold ``t_op`` (chosen on the training rows)."""
    from veilpay.ml import auc, average_precision

    t = threshold_at_fpr(y, s)
    approved = s <= t_op
    fraud_approved = float(amount[approved & (y == 1)].sum())
    return {"auprc": round(average_precision(y, s), 4), "auc": round(auc(y, s), 4),
            "recall_at_0.1pct_fpr": round(float(np.mean(s[y == 1] > t)), 4),
            "loss_per_10m": round(PER * fraud_approved / float(amount[approved].sum()), 1),
            "at_threshold": {"test_fpr": round(float(np.mean(s[y == 0] > t_op)), 5),
                             "recall": round(float(np.mean(s[y == 1] > t_op)), 4),
                             "fraud_amount_approved": round(fraud_approved, 2),
                             "fraud_amount_declined": round(float(amount[~approved & (y == 1)].sum()), 2)}}


def run3(work: Path, argv: dict[str, list[str]]) -> tuple[float, dict[str, Any], dict[str, float], dict[str, int]]:
    """Each party's veilpay command as its own process; (wall seconds, reports, CPU
    seconds and peak RSS in MiB per party)."""
    wrap = ("import resource,subprocess,sys;p=subprocess.run(sys.argv[1:]);r=resource.getrusage(resource.RUSAGE_CHILDREN);"
            "print('RES',r.ru_maxrss,r.ru_utime+r.ru_stime,file=sys.stderr);sys.exit(p.returncode)")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    procs = {p: subprocess.Popen([sys.executable, "-c", wrap, sys.executable, "-m", "veilpay.cli.main", *args],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=work)
             for p, args in argv.items()}
    outs = {p: pr.communicate(timeout=3600) for p, pr in procs.items()}
    wall = time.perf_counter() - t0
    for p, pr in procs.items():
        if pr.returncode != 0:
            raise SystemExit(f"{p} failed: {outs[p][1][-3000:]}")
    reports = {p: json.loads(outs[p][0].strip().splitlines()[-1]) for p in argv}
    res = {p: next(ln.split() for ln in outs[p][1].splitlines() if ln.startswith("RES")) for p in argv}
    return wall, reports, {p: round(float(r[2]), 2) for p, r in res.items()}, {p: int(r[1]) // 1024
                                                                               for p, r in res.items()}


def _train_secure(work: Path, job_path: Path) -> tuple[float, dict[str, Any], dict[str, float], dict[str, int]]:
    return run3(work, {p: ["train", "--job", str(job_path), "--party", p, "--out", str(work / f"out-{p}")]
                       for p in PARTIES})


def _score_secure(work: Path, job_path: Path, rows: list[str], name: str
                  ) -> tuple[pd.Series, float, dict[str, Any], dict[str, float]]:
    """`veilpay score` of the payments ``rows`` from the kept-shared model; the
    scores as logits, by payment_id."""
    d = work / name
    d.mkdir()
    keep = set(rows)
    for p in ("wallet", "acquirer"):
        frame = pd.read_csv(work / f"{p}.csv", dtype={"payment_id": str})
        frame[frame["payment_id"].isin(keep)].drop(columns=["Class"], errors="ignore").to_csv(d / f"{p}.csv",
                                                                                              index=False)
    argv = {p: ["score", "--job", str(job_path), "--party", p, "--model", str(work / f"out-{p}"), "--session", name]
            for p in PARTIES}
    for p in ("wallet", "acquirer"):
        argv[p] += ["--input", str(d / f"{p}.csv")]
    argv["wallet"] += ["--output", str(d / "scores.csv")]
    wall, reports, cpu, _ = run3(work, argv)
    got = pd.read_csv(d / "scores.csv", dtype={"payment_id": str}).set_index("payment_id")["score"]
    p_ = got.clip(1e-300, 1 - 1e-16)
    return np.log(p_) - np.log1p(-p_), wall, reports, cpu


def _spu_score(x: np.ndarray, w: np.ndarray, b: float, work: Path) -> dict[str, Any]:
    venv = HERE.parent / ".venv-spu" / "bin" / "python"
    name = "spu-0.9.5 simulator semi2k: X w + b on the test rows"
    if not venv.exists():
        return {"bench": "risk", "model": name, "measured": False, "why": ".venv-spu missing: run `make bench-peers`"}
    d = work / "spu"
    d.mkdir()
    np.save(d / "x.npy", x, allow_pickle=False)
    np.save(d / "w.npy", w.reshape(-1, 1), allow_pickle=False)
    np.save(d / "b.npy", np.array([[b]]), allow_pickle=False)
    done = subprocess.run([str(venv), str(HERE / "peers" / "spu_score.py"), "--dir", str(d)], capture_output=True,
                          text=True, timeout=1800)
    if done.returncode != 0:
        return {"bench": "risk", "model": name, "measured": False, "why": f"failed: {done.stderr[-500:]}"}
    out = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("{")][-1])
    z = np.load(d / "spu_scores.npy", allow_pickle=False)[:, 0]
    return {"bench": "risk", "model": name, "rows": len(x), "seconds": out["seconds"],
            "max_abs_diff_vs_float": round(float(np.max(np.abs(z - (x @ w.reshape(-1) + b)))), 6)}


def tune(job_path: Path) -> None:
    """The grid the job's hyperparameters were chosen from: trained on the first 80 %
    of the training rows, AUPRC on the last 20 % (all by time; the test rows unseen)."""
    from veilpay.ml import average_precision, load_job
    from veilpay.ml.pipeline import class_weights, plaintext_views
    from veilpay.ml.sslr import train_lr_plain

    job = load_job(job_path)
    views = plaintext_views(job)
    a, b = views[job.label_party], views[job.partner]
    x, y = np.hstack([a.x_train, b.x_train]), a.y_train
    k = int(round(0.8 * len(x)))
    for cw in [None, 5.0, 20.0, 50.0, "balanced"]:
        job.class_weight = cw
        weights = class_weights(y[:k, 0], job)
        for epochs, batch, lr, decay in [(5, 1024, 1.0, 0.0), (5, 1024, 0.1, 0.0), (5, 4096, 0.5, 0.5),
                                         (5, 1024, 0.3, 0.5), (10, 2048, 0.5, 0.2)]:
            w, bias, _ = train_lr_plain(x[:k], y[:k], epochs, batch, lr, decay, 0.0, "seg3", job.seed,
                                        class_weight=weights)
            print(json.dumps({"bench": "risk-tune", "class_weight": cw, "epochs": epochs, "batch_size": batch,
                              "learning_rate": lr, "decay": decay,
                              "holdout_auprc": round(average_precision(y[k:, 0], (x[k:] @ w + bias)[:, 0]), 4)}),
                  flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/fraud", help="folder with job.toml and the party files (make data)")
    ap.add_argument("--trees", type=int, help="also secure trees (ss-xgb, class_weight balanced) with this many trees")
    ap.add_argument("--tune", action="store_true", help="print the hyperparameter grid on the training rows and stop")
    a = ap.parse_args()
    src = Path(a.data)
    if not (src / "job.toml").exists():
        raise SystemExit(f"{src}/job.toml missing: run `make data` first")
    if a.tune:
        tune(src / "job.toml")
        return
    with tempfile.TemporaryDirectory(prefix="veilpay-risk-bench-") as tmp:
        work = Path(tmp)
        for f in src.iterdir():
            if f.suffix in (".csv", ".toml"):
                shutil.copy(f, work / f.name)
        lr_rows(work, work / "job.toml")
        if a.trees:
            text = (work / "job.toml").read_text()
            text = "\n".join(ln for ln in text.splitlines()
                             if not ln.startswith(("epochs", "batch_size", "learning_rate", "decay", "sigmoid",
                                                   "class_weight")))
            text = text.replace("[model]", f'[model]\ntype = "ss-xgb"\ntrees = {a.trees}\ndepth = 3\nbins = 8\n'
                                'tree_learning_rate = 0.3\nclass_weight = "balanced"')
            tree_dir = work / "trees"
            tree_dir.mkdir()
            for f in ("wallet.csv", "acquirer.csv"):
                shutil.copy(work / f, tree_dir / f)
            (tree_dir / "job.toml").write_text(text + "\n")
            tree_rows(tree_dir, tree_dir / "job.toml", a.trees)


def _setup(work: Path, job_path: Path) -> tuple[Any, Any, Any, list[str], np.ndarray]:
    from veilpay.cli.demo import _free_port_base
    from veilpay.ml import load_job
    from veilpay.ml.pipeline import plaintext_views
    from veilpay.net import provision_network
    from veilpay.psi.data import split_key

    provision_network(work / "net", PARTIES, base_port=_free_port_base())
    job = load_job(job_path)
    if job.split != "ordered":
        raise SystemExit("the fraud bench wants split = \"ordered\" (out of time)")
    views = plaintext_views(job)
    ids = [split_key(i)[0] for i in views[job.label_party].ids]
    amount = views[job.partner].frame["Amount"].to_numpy(dtype=np.float64)
    return job, views[job.label_party], views[job.partner], ids, amount


def _print(row: dict[str, Any]) -> None:
    print(json.dumps({"bench": "risk", "data": "ulb-creditcard out-of-time", **row}), flush=True)


def lr_rows(work: Path, job_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    from veilpay.ml.pipeline import class_weights
    from veilpay.ml.sslr import train_lr_plain

    job, a, b, ids, amount = _setup(work, job_path)
    n_tr = len(a.x_train)
    y_tr, y_te, amt_te = a.y_train[:, 0], a.y_test[:, 0], amount[n_tr:]
    m = job.model
    weights = class_weights(y_tr, job)
    hyper = {"epochs": m.epochs, "batch_size": m.batch_size, "learning_rate": m.learning_rate, "decay": m.decay,
             "sigmoid": m.sigmoid, "class_weight": job.class_weight}

    # (a) the secure joint model, kept shared
    wall, reports, cpu, rss = _train_secure(work, job_path)
    rep = reports[job.label_party]
    z_job = pd.read_csv(work / f"out-{job.label_party}" / "test_scores.csv",
                        dtype={"payment_id": str}).set_index("payment_id")["z"]
    z_te = z_job.loc[ids[n_tr:]].to_numpy()
    z_tr, wall_tr, _, _ = _score_secure(work, job_path, ids[:n_tr], "score-train")
    t_op = threshold_at_fpr(y_tr, z_tr.loc[ids[:n_tr]].to_numpy())
    secure = risk_metrics(y_te, z_te, amt_te, t_op)
    _print({"model": f"(a) ss-lr joint, veilpay secure ({rep['protocol']}, 3 processes, tcp+tls, model kept shared)",
            **secure, "job_metrics": rep["metrics"], "class_weight_used": rep.get("class_weight", weights),
            "train_rows": rep["train_rows"], "test_rows": rep["test_rows"], "features": rep["features"],
            "wall_seconds": round(wall, 2), "cpu_seconds": cpu, "peak_rss_mib": rss, "phases": rep["phases"],
            "hyper": hyper, "threshold_scoring_wall_seconds": round(wall_tr, 2)})

    # (b)-(d) the same SGD in float64: centralised, each party alone
    rows: list[tuple[str, np.ndarray, np.ndarray]] = [
        ("(b) ss-lr algorithm in float64, centralised (plaintext twin)", np.hstack([a.x_train, b.x_train]),
         np.hstack([a.x_test, b.x_test])),
        (f"(c) ss-lr algorithm in float64, {job.label_party} (MPP) alone", a.x_train, a.x_test),
        (f"(d) ss-lr algorithm in float64, {job.partner} (ACQP) alone", b.x_train, b.x_test)]
    twin_w = np.zeros(0)
    twin_b = 0.0
    for name, tr, te in rows:
        t0 = time.perf_counter()
        w, bias, _ = train_lr_plain(tr, a.y_train, m.epochs, m.batch_size, m.learning_rate, m.decay, m.l2, m.sigmoid,
                                    job.seed, class_weight=weights)
        seconds = time.perf_counter() - t0
        if name.startswith("(b)"):
            twin_w, twin_b = w[:, 0], float(bias[0, 0])
        met = risk_metrics(y_te, (te @ w + bias)[:, 0], amt_te, threshold_at_fpr(y_tr, (tr @ w + bias)[:, 0]))
        extra = {"auprc_secure_minus_this": round(secure["auprc"] - met["auprc"], 4)}
        _print({"model": name, **met, **extra, "train_seconds": round(seconds, 2)})
    x_tr, x_te = rows[0][1], rows[0][2]
    for name, tr, te in [("scikit-learn LogisticRegression (unweighted), centralised", x_tr, x_te),
                         (f"scikit-learn LogisticRegression (unweighted), {job.label_party} alone", a.x_train, a.x_test),
                         (f"scikit-learn LogisticRegression (unweighted), {job.partner} alone", b.x_train, b.x_test)]:
        model = LogisticRegression(max_iter=2000).fit(tr, y_tr)
        met = risk_metrics(y_te, model.decision_function(te), amt_te, threshold_at_fpr(y_tr, model.decision_function(tr)))
        _print({"model": name, **met})

    # batch scoring: the test rows from the shares in MPC, against scikit-learn
    z_sc, wall_sc, sc_reports, sc_cpu = _score_secure(work, job_path, ids[n_tr:], "score-test")
    phases = {p: r["phases"] for p, r in sc_reports.items()}
    sc = phases[job.label_party]["score"]
    model = LogisticRegression(max_iter=2000).fit(x_tr, y_tr)
    reps = 20
    t0 = time.perf_counter()
    for _ in range(reps):
        model.predict_proba(x_te)
    sk_seconds = (time.perf_counter() - t0) / reps
    ev = rep["phases"]["evaluate"]
    _print({"model": "batch scoring of the test rows", "rows": len(x_te),
            "veilpay_score_mpc": {"seconds": sc["seconds"], "rounds": sc["rounds"],
                                  "bytes_sent_all_parties": sum(ph["score"]["bytes_sent"] for ph in phases.values())},
            "veilpay_score_run": {"wall_seconds": round(wall_sc, 2), "cpu_seconds": sc_cpu,
                                  "phases_label_party": phases[job.label_party]},
            "job_evaluate_phase": {"seconds": ev["seconds"], "rounds": ev["rounds"], "bytes_sent": ev["bytes_sent"]},
            "max_abs_logit_diff_score_vs_job": round(float(np.max(np.abs(z_sc.loc[ids[n_tr:]].to_numpy() - z_te))), 5),
            "sklearn_predict_proba_seconds": round(sk_seconds, 5)})
    _print(_spu_score(x_te, twin_w, twin_b, work))


def tree_rows(work: Path, job_path: Path, trees: int) -> None:
    from veilpay.ml.pipeline import class_weights
    from veilpay.ml.sstree import predict_trees_plain, train_trees_plain

    job, a, b, ids, amount = _setup(work, job_path)
    n_tr = len(a.x_train)
    y_tr, y_te, amt_te = a.y_train[:, 0], a.y_test[:, 0], amount[n_tr:]
    wall, reports, cpu, rss = _train_secure(work, job_path)
    rep = reports[job.label_party]
    z_te = pd.read_csv(work / f"out-{job.label_party}" / "test_scores.csv",
                       dtype={"payment_id": str}).set_index("payment_id")["z"].loc[ids[n_tr:]].to_numpy()
    z_tr, _, _, _ = _score_secure(work, job_path, ids[:n_tr], "score-train")
    secure = risk_metrics(y_te, z_te, amt_te, threshold_at_fpr(y_tr, z_tr.loc[ids[:n_tr]].to_numpy()))
    _print({"model": f"(a) ss-xgb {trees} trees depth 3, secure, balanced weights", **secure,
            "wall_seconds": round(wall, 2), "cpu_seconds": cpu, "peak_rss_mib": rss,
            "seconds_per_tree": round(rep["phases"]["train"]["seconds"] / trees, 2)})
    weights = class_weights(y_tr, job)
    for name, tr, te in [("(b) ss-xgb algorithm in float64, centralised", np.hstack([a.x_train, b.x_train]),
                          np.hstack([a.x_test, b.x_test])),
                         (f"(c) ss-xgb algorithm in float64, {job.label_party} alone", a.x_train, a.x_test),
                         (f"(d) ss-xgb algorithm in float64, {job.partner} alone", b.x_train, b.x_test)]:
        fitted, f_tr = train_trees_plain(tr, a.y_train, job.tree, class_weight=weights)
        s = predict_trees_plain(te, fitted)[:, 0]
        _print({"model": name, **risk_metrics(y_te, s, amt_te, threshold_at_fpr(y_tr, f_tr[:, 0]))})


if __name__ == "__main__":
    main()
