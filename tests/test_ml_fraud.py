"""The fraud model's job options (issue 24): the out-of-time split (split = "ordered"),
class weights in SS-LR and secure trees against their plaintext twins, and
bench/data_fraud.py's split of a creditcard-shaped frame. Small synthetic data only
(no `make data`)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest
from parties import run_threads

from veilpay.errors import ConfigError
from veilpay.ml import auc, load_job, run_training
from veilpay.ml.pipeline import class_weights, plaintext_views
from veilpay.ml.sslr import train_lr_plain
from veilpay.ml.sstree import predict_trees_plain, train_trees_plain
from veilpay.mpc import make_protocol
from veilpay.psi.data import split_key

PARTIES = ["wallet", "acquirer", "helper"]
ROOT = Path(__file__).resolve().parent.parent


def _data_fraud() -> ModuleType:
    spec = importlib.util.spec_from_file_location("data_fraud", ROOT / "bench" / "data_fraud.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def creditcard(n: int, seed: int = 5, fraud_rate: float = 0.03) -> pd.DataFrame:
    """A creditcard-shaped frame: Time (unsorted, with repeats), V1..V28, Amount, Class;
    frauds shift a few columns on each side, so both parties' features carry signal."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < fraud_rate).astype(int)
    frame = pd.DataFrame({"Time": rng.integers(0, 172_800, n).astype(float)})
    for i in range(1, 29):
        shift = 1.2 if i in (2, 4, 14, 17) else 0.0
        frame[f"V{i}"] = rng.normal(size=n) + shift * y * (1 if i % 2 else -1)
    frame["Amount"] = np.round(rng.exponential(80.0, n), 2)
    frame["Class"] = y
    return frame


def fraud_job(tmp_path: Path, n: int = 3000, model: str = "", **job: str) -> Path:
    wallet, acquirer = _data_fraud().split_parties(creditcard(n))
    wallet.to_csv(tmp_path / "wallet.csv", index=False)
    acquirer.to_csv(tmp_path / "acquirer.csv", index=False)
    text = _data_fraud().JOB.format(class_weight='"balanced"', epochs=3, batch_size=256, learning_rate=0.5,
                                    decay=0.0)
    for k, v in job.items():
        text = text.replace("[job]\n", f"[job]\n{k} = {v}\n") if f"\n{k} =" not in text else "\n".join(
            f"{k} = {v}" if ln.startswith(f"{k} =") else ln for ln in text.splitlines())
    (tmp_path / "job.toml").write_text(text.replace("[model]\n", f"[model]\n{model}"))
    return tmp_path / "job.toml"


def run_parties(job_path: Path) -> dict[str, Any]:
    def party(me: str) -> Any:
        def fn(comm: Any) -> Any:
            job = load_job(job_path)
            with np.errstate(over="ignore"):
                return run_training(make_protocol(job.protocol, comm, job.compute, job.frac_bits), job,
                                    job_path.parent / f"out-{me}")
        return fn

    return run_threads({p: party(p) for p in PARTIES})


# -- bench/data_fraud.py and the ordered split ------------------------------------------------

def test_data_fraud_splits_a_creditcard_frame_by_party_and_keys_by_time() -> None:
    raw = creditcard(500)
    wallet, acquirer = _data_fraud().split_parties(raw)
    assert list(wallet.columns) == ["payment_id", "Class", *[f"V{i}" for i in range(1, 10)], "hour"]
    assert list(acquirer.columns) == ["payment_id", *[f"V{i}" for i in range(10, 29)], "Amount"]
    assert set(wallet["payment_id"]) == set(acquirer["payment_id"]) and len(wallet) == 500
    joined = wallet.merge(acquirer, on="payment_id").sort_values("payment_id")
    times = raw.sort_values("Time", kind="stable").reset_index(drop=True)
    assert joined["payment_id"].str.len().nunique() == 1  # zero-padded: key order is time order
    np.testing.assert_array_equal(joined["V1"].to_numpy(), times["V1"].to_numpy())
    np.testing.assert_array_equal(joined["hour"].to_numpy(), (times["Time"] // 3600).astype(int) % 24)
    np.testing.assert_array_equal(joined["Amount"].to_numpy(), times["Amount"].to_numpy())
    assert wallet["payment_id"].tolist() != sorted(wallet["payment_id"])  # the files are shuffled


def test_ordered_split_tests_on_the_latest_rows(tmp_path: Path) -> None:
    path = fraud_job(tmp_path, n=1000)
    job = load_job(path)
    assert job.split == "ordered" and job.class_weight == "balanced"
    views = plaintext_views(job)
    a, b = views["wallet"], views["acquirer"]
    ids = [split_key(i)[0] for i in a.ids]
    assert ids == sorted(ids) and len(a.x_train) == 800 and len(a.x_test) == 200 == len(b.x_test)
    raw = creditcard(1000).sort_values("Time", kind="stable")
    cut = raw["Time"].to_numpy()[800]
    times = dict(zip(_data_fraud().split_parties(creditcard(1000))[0].sort_values("payment_id")["payment_id"],
                     raw["Time"], strict=True))
    assert max(times[i] for i in ids[:800]) <= cut <= min(times[i] for i in ids[800:])
    # the hash split of the same rows tests on other rows
    job.split = "hash"
    mixed = plaintext_views(job)["wallet"]
    assert mixed.y_test is not None and a.y_test is not None
    assert mixed.x_test.shape != a.x_test.shape or not np.allclose(mixed.x_test, a.x_test)


@pytest.mark.parametrize(("edit", "match"), [
    ('split = "random"', r"job.split Input should be 'hash' or 'ordered'"),
    ('class_weight = "heavy"', "model.class_weight"),
    ("class_weight = -2.0", "class_weight must be"),
    ("class_weight = 3.5\ntype = \"ss-xgb\"", "ss-xgb takes class_weight = \"balanced\" only"),
])
def test_bad_split_and_class_weight_are_refused(tmp_path: Path, edit: str, match: str) -> None:
    path = fraud_job(tmp_path, n=50)
    text = path.read_text().replace('class_weight = "balanced"\n', "")
    text = text.replace('split = "ordered"\n', "") if edit.startswith("split") else text
    text = text.replace("learning_rate = 0.5\n", "") if "ss-xgb" in edit else text  # SS-LR's step: refused
    key = "[job]\n" if edit.startswith("split") else "[model]\n"
    path.write_text(text.replace(key, key + edit + "\n"))
    with pytest.raises(ConfigError, match=match):
        load_job(path)


def test_a_number_class_weight_and_the_split_enter_the_fingerprint(tmp_path: Path) -> None:
    path = fraud_job(tmp_path, n=50)
    path.write_text(path.read_text().replace('class_weight = "balanced"', "class_weight = 20"))
    job = load_job(path)
    assert job.class_weight == 20.0 and isinstance(job.class_weight, float)  # 20 and 20.0: one fingerprint
    assert class_weights(np.array([0.0, 1.0]), job) == (1.0, 20.0)
    before = job.fingerprint()
    job.split = "hash"
    assert job.fingerprint() != before


# -- class weights: secure == plaintext ------------------------------------------------------

def test_weighted_secure_lr_equals_its_weighted_plaintext_twin(tmp_path: Path) -> None:
    path = fraud_job(tmp_path, n=3000)
    res = run_parties(path)
    assert all(not isinstance(res[p], BaseException) for p in PARTIES), res
    job = load_job(path)
    views = plaintext_views(job)
    a, b = views["wallet"], views["acquirer"]
    weights = class_weights(a.y_train[:, 0], job)
    assert weights is not None and weights[1] > 10 * weights[0]  # few frauds: heavy positives
    for p in PARTIES:  # the label party's announced weights reached everyone
        assert res[p]["class_weight"] == {"negative": round(weights[0], 6), "positive": round(weights[1], 6)}
    x_tr, x_te = np.hstack([a.x_train, b.x_train]), np.hstack([a.x_test, b.x_test])
    m = job.model
    w, bias, _ = train_lr_plain(x_tr, a.y_train, m.epochs, m.batch_size, m.learning_rate, m.decay, m.l2, m.sigmoid,
                                job.seed, class_weight=weights)
    plain, _, _ = train_lr_plain(x_tr, a.y_train, m.epochs, m.batch_size, m.learning_rate, m.decay, m.l2, m.sigmoid,
                                 job.seed)
    assert np.max(np.abs(w - plain)) > 0.05  # the weighting changes the model
    # kept shared (model_to = []): reveal the shares here to compare
    comps = []
    for p in ("wallet", "acquirer"):
        with np.load(tmp_path / f"out-{p}" / "model_shares.npz", allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            comps.append((z["w__0"], z["b__0"]))
    scale = 2.0 ** meta["frac_bits"]
    w_sec = ((comps[0][0] + comps[1][0]).view(np.int64) / scale)
    b_sec = ((comps[0][1] + comps[1][1]).view(np.int64) / scale)
    np.testing.assert_allclose(w_sec, w, atol=3e-3)
    np.testing.assert_allclose(b_sec, bias, atol=3e-3)
    z = pd.read_csv(tmp_path / "out-wallet" / "test_scores.csv", dtype={"payment_id": str})
    assert z["payment_id"].tolist() == [split_key(i)[0] for i in a.ids[len(a.x_train):]]
    np.testing.assert_allclose(z["z"].to_numpy(), (x_te @ w + bias)[:, 0], atol=2e-2)
    assert abs(res["wallet"]["metrics"]["auc"] - auc(a.y_test[:, 0], (x_te @ w + bias)[:, 0])) < 1e-3


def test_weighted_secure_trees_near_their_weighted_twin(tmp_path: Path) -> None:
    path = fraud_job(tmp_path, n=2000, model='type = "ss-xgb"\ntrees = 3\ndepth = 2\nbins = 4\n')
    path.write_text("\n".join(ln for ln in path.read_text().splitlines()
                              if not ln.startswith(("epochs", "batch_size", "decay", "sigmoid", "learning_rate"))) + "\n")
    res = run_parties(path)
    assert all(not isinstance(res[p], BaseException) for p in PARTIES), res
    job = load_job(path)
    views = plaintext_views(job)
    a, b = views["wallet"], views["acquirer"]
    weights = class_weights(a.y_train[:, 0], job)
    trees, _ = train_trees_plain(np.hstack([a.x_train, b.x_train]), a.y_train, job.tree, class_weight=weights)
    twin = auc(a.y_test[:, 0], predict_trees_plain(np.hstack([a.x_test, b.x_test]), trees)[:, 0])
    unweighted, _ = train_trees_plain(np.hstack([a.x_train, b.x_train]), a.y_train, job.tree)
    assert any(not np.allclose(t[1], u[1]) for t, u in zip(trees, unweighted, strict=True))
    assert abs(res["wallet"]["metrics"]["auc"] - twin) < 0.02 and res["wallet"]["trees"] == 3
