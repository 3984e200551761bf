"""A job that explains its own mistakes (issue 25): a feature a party's file lacks, a
learning rate given to the wrong model type, a test split of one class, too small an
overlap, keys written differently at the two sides, numbers and dates written as text,
test_fraction = 0, the test ids written out, rows scoring could not score, model
thresholds in original units and progress lines -- each on a small synthetic job,
every party a thread over in-memory channels."""

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
from veilpay.ml import fit_prep, load_job, run_scoring, run_training
from veilpay.ml.pipeline import JobFailed
from veilpay.ml.prep import MAX_CATEGORIES, Prep, apply_row
from veilpay.mpc import make_protocol

PARTIES = ["wallet", "partner", "helper"]

JOB = """
[job]
name = "checks"
network = "net/network.toml"
compute = ["wallet", "partner", "helper"]
key = ["id"]
label_party = "wallet"
label = "y"
positive = "1"
test_fraction = 0.25
seed = 3
model_to = ["wallet"]

[parties.wallet]
data = "wallet.csv"

[parties.partner]
data = "partner.csv"

[parties.helper]

[model]
epochs = 2
batch_size = 64
learning_rate = 0.5
"""


def small_job(tmp_path: Path, n: int = 300, partner_ids: Any = None, model: str = "", **job: str) -> Path:
    """Two party files over ids C-0000.. (the partner's from ``partner_ids``, default the
    same), the label party with amount (text, "$1,234.50"), opened (an ISO date), and y;
    the partner with income and region."""
    rng = np.random.default_rng(5)
    ids = [f"C-{i:04d}" for i in range(n)]
    signal = rng.normal(size=n)
    y = (signal + rng.normal(scale=0.8, size=n) > 0.8).astype(int)
    amount = np.round(np.exp(rng.normal(6, 1, n)), 2)
    opened = pd.Timestamp("2006-02-28") + pd.to_timedelta(rng.integers(0, 3000, n), unit="D")
    pd.DataFrame({"id": ids, "amount": [f"${v:,.2f}" for v in amount], "opened": opened.strftime("%Y-%m-%d"),
                  "score": signal + rng.normal(scale=0.5, size=n), "y": y}).to_csv(tmp_path / "wallet.csv",
                                                                                      index=False)
    pd.DataFrame({"id": partner_ids(ids) if partner_ids else ids, "income": rng.normal(50, 10, n) + 5 * signal,
                  "region": rng.choice(["north", "south", "east"], n)}).to_csv(tmp_path / "partner.csv", index=False)
    text = JOB.replace("[model]\n", f"[model]\n{model}")
    for k, v in job.items():
        text = text.replace("[job]\n", f"[job]\n{k} = {v}\n") if f"\n{k} =" not in text else "\n".join(
            f"{k} = {v}" if ln.startswith(f"{k} =") else ln for ln in text.splitlines())
    (tmp_path / "job.toml").write_text(text)
    return tmp_path / "job.toml"


def run_parties(path: Path, scoring: bool = False, **kw: Any) -> dict[str, Any]:
    d = path.parent

    def party(me: str) -> Any:
        def fn(comm: Any) -> Any:
            job = load_job(path)
            rt = make_protocol(job.protocol, comm, job.compute, job.frac_bits)
            with np.errstate(over="ignore"):
                if scoring:
                    inp = {"wallet": d / "new-wallet.csv", "partner": d / "new-partner.csv"}.get(me)
                    return run_scoring(rt, job, d / f"out-{me}", inp, d / "scores.csv" if me == "wallet" else None)
                return run_training(rt, job, d / f"out-{me}", **kw)
        return fn

    return run_threads({p: party(p) for p in PARTIES})


def _ok(res: dict[str, Any]) -> None:
    assert all(not isinstance(res[p], BaseException) for p in PARTIES), res


def _stopped_by(res: dict[str, Any], party: str, match: str) -> None:
    """``party`` failed with a DataError matching ``match``; every other party got a
    JobFailed naming it and carrying the same reason (not a dropped connection)."""
    assert isinstance(res[party], DataError) and match in str(res[party]), res[party]
    for p in PARTIES:
        if p != party:
            assert isinstance(res[p], JobFailed), res[p]
            assert res[p].party == party and match in res[p].reason, res[p]
            assert str(res[p]).startswith(f"peer {party!r} failed: ")


# -- a feature a party's file does not have --------------------------------------------------

@pytest.mark.parametrize("key", ["features", "categorical"])
def test_a_feature_missing_from_a_file_is_named_at_that_party_and_everywhere(tmp_path: Path, key: str) -> None:
    path = small_job(tmp_path)
    path.write_text(path.read_text().replace('data = "partner.csv"\n', f'data = "partner.csv"\n{key} = ["incme"]\n'
                                             if key == "features" else
                                             'data = "partner.csv"\ncategorical = ["regoin"]\n'))
    res = run_parties(path)
    name = "incme" if key == "features" else "regoin"
    _stopped_by(res, "partner", f"[parties.partner] {key} names '{name}', not a column of this file")
    assert "columns: id, income, region" in str(res["partner"])


# -- learning rates per model type -----------------------------------------------------------

def test_learning_rates_are_per_model_type(tmp_path: Path) -> None:
    from veilpay.ml.sstree import TreeParams

    path = small_job(tmp_path, model='type = "ss-xgb"\n')
    with pytest.raises(ConfigError, match="learning_rate is SS-LR's SGD step; for ss-xgb write tree_learning_rate"):
        load_job(path)  # the SS-LR step of 0.5 would have become the trees' shrinkage
    path.write_text(path.read_text().replace("learning_rate = 0.5", "tree_learning_rate = 0.1"))
    job = load_job(path)
    assert job.tree.learning_rate == 0.1 and job.model.learning_rate == 1.0
    path.write_text(path.read_text().replace("tree_learning_rate = 0.1\n", ""))
    assert load_job(path).tree.learning_rate == TreeParams().learning_rate
    path.write_text(path.read_text().replace('type = "ss-xgb"', 'type = "ss-lr"\ntree_learning_rate = 0.2'))
    with pytest.raises(ConfigError, match='tree_learning_rate is for type = "ss-xgb"'):
        load_job(path)


def test_the_example_tree_job_sets_the_trees_rate() -> None:
    job = load_job(Path(__file__).parent.parent / "examples" / "job.toml")
    assert job.model_type == "ss-xgb" and job.tree.learning_rate == 0.3


# -- checks before any MPC -------------------------------------------------------------------

def test_a_test_split_of_one_class_stops_the_job_before_mpc(tmp_path: Path) -> None:
    path = small_job(tmp_path, split='"ordered"')
    df = pd.read_csv(tmp_path / "wallet.csv")
    df.loc[df["id"] >= "C-0225", "y"] = 0  # the last quarter in key order: the test split, all negative
    df.to_csv(tmp_path / "wallet.csv", index=False)
    res = run_parties(path)
    _stopped_by(res, "wallet", "the test split (75 rows) holds only one class of 'y'")


def test_too_small_an_overlap_names_the_counts(tmp_path: Path) -> None:
    path = small_job(tmp_path, partner_ids=lambda ids: ids[:12] + [f"X-{i}" for i in range(len(ids) - 12)])
    res = run_parties(path)
    assert isinstance(res["wallet"], DataError) and isinstance(res["partner"], DataError)
    msg = str(res["wallet"])
    assert "PSI found 12 common rows (wallet holds 300 distinct ids, partner 300)" in msg
    assert "test_fraction = 0.25 leaves" in msg and "each split needs at least 10" in msg
    assert isinstance(res["helper"], JobFailed) and "PSI found 12 common rows" in str(res["helper"])
    assert "would match" not in msg  # the X- ids match no other way either


@pytest.mark.parametrize("spell", [lambda i: i.lower(), lambda i: i.replace("C-0", "C-")])
def test_keys_that_differ_only_by_case_or_padding_are_pointed_out(tmp_path: Path, spell: Any) -> None:
    path = small_job(tmp_path, partner_ids=lambda ids: [spell(i) for i in ids])
    res = run_parties(path)
    want = "0 common rows: 300 would match ignoring case, spaces and leading zeros"
    assert isinstance(res["wallet"], DataError) and want in str(res["wallet"]), res["wallet"]
    assert isinstance(res["helper"], JobFailed) and want in str(res["helper"])


def test_few_loosely_matching_keys_give_a_warning_and_the_job_runs(tmp_path: Path) -> None:
    # 20 of 300 ids match as written; the other 280 only ignoring case: the job trains
    # on the 20 (enough for this test) and says how many more it could have had.
    path = small_job(tmp_path, partner_ids=lambda ids: ids[:20] + [i.lower() for i in ids[20:]], test_fraction="0.5")
    res = run_parties(path)
    _ok(res)
    assert res["wallet"]["common_ignoring_case_and_padding"] == res["partner"]["common_ignoring_case_and_padding"] == 300
    assert any("20 common rows: 300 would match" in w for w in res["wallet"]["warnings"])
    assert "common_ignoring_case_and_padding" not in run_parties(small_job(tmp_path))["wallet"]  # full overlap


# -- text columns ----------------------------------------------------------------------------

def test_numbers_and_dates_written_as_text_are_parsed() -> None:
    frame = pd.DataFrame({"amt": ["$1,889.50", "$12.00", None, "$3"], "n": ["1,234", "12", "7", "-5"],
                          "pct": ["12%", "3.5%", "0%", "100%"], "iso": ["2006-02-28", "2007-01-01", None, "2006-03-01"],
                          "sba": ["28-Feb-97", "1-Jan-06", "15-Mar-99", "31-Dec-99"]})
    prep = fit_prep(frame, list(frame.columns), None, "t.csv")
    kinds = {c.name: (c.kind, c.parse) for c in prep.columns}
    assert kinds == {"amt": ("numeric", "number"), "n": ("numeric", "number"), "pct": ("numeric", "number"),
                     "iso": ("numeric", "date:%Y-%m-%d"), "sba": ("numeric", "date:%d-%b-%y")}
    amt = prep.columns[0]
    assert amt.mean == pytest.approx((1889.5 + 12 + 3) / 3) and amt.missing_indicator
    assert prep.columns[2].mean == pytest.approx((12 + 3.5 + 0 + 100) / 4)  # 12% -> 12
    sba = prep.columns[4]
    days = (pd.to_datetime(["1997-02-28", "2006-01-01", "1999-03-15", "1999-12-31"]) - pd.Timestamp(0)).days
    assert sba.mean == pytest.approx(days.to_numpy().mean())
    assert any("'amt': text read as numbers (e.g. '$1,889.50' -> 1889.5)" in n for n in prep.notes)
    assert any("'sba': text read as dates (%d-%b-%y" in n for n in prep.notes)
    x = prep.apply(frame, "t.csv")
    again = Prep.from_json(json.loads(json.dumps(prep.to_json())))  # scoring reads the same way
    np.testing.assert_array_equal(again.apply(frame, "t.csv"), x)
    row = apply_row(again, {k: frame[k].iloc[0] for k in frame.columns}, "payment")
    np.testing.assert_allclose(row, x[0])
    assert prep.original_value(0, x[0, 0]) == pytest.approx(1889.5)
    assert prep.original_value(len(prep.feature_names()) - 1, x[0, -1]) == "1997-02-28"
    assert prep.original_value(1, 1.0) is None  # amt's missing indicator


def test_text_that_mostly_looks_numeric_is_refused_with_an_example() -> None:
    frame = pd.DataFrame({"amt": ["$1,889.50", "$12.00", "call us", "$3"]})
    with pytest.raises(DataError, match=r"t.csv: column 'amt' looks like numbers \(e.g. '\$1,889.50', 75% of its "
                                        r"values\) but holds 'call us'"):
        fit_prep(frame, ["amt"], None, "t.csv")
    with pytest.raises(DataError, match=r"column 'd' looks like dates \(%Y-%m-%d\).* holds 'soon'"):
        fit_prep(pd.DataFrame({"d": ["2006-02-28", "2007-01-01", "soon"]}), ["d"], None, "t.csv")
    prep = fit_prep(frame, ["amt"], ["amt"], "t.csv")  # named categorical: one-hot, as asked
    assert prep.columns[0].kind == "categorical"


def test_a_capped_one_hot_encoding_is_announced() -> None:
    values = [f"shop-{i % 100}" for i in range(1000)]
    prep = fit_prep(pd.DataFrame({"m": values, "few": ["a", "b"] * 500}), ["m", "few"], None, "t.csv")
    assert len(prep.columns[0].categories) == MAX_CATEGORIES
    assert prep.notes == [f"column 'm': 100 distinct values; one-hot keeps the {MAX_CATEGORIES} most frequent "
                          f"(covering 30.0% of the training rows), the rest share m=<other>"]
    ids = fit_prep(pd.DataFrame({"u": [f"u{i}" for i in range(100)]}), ["u"], None, "t.csv")
    assert "nearly one value per row: an id?" in ids.notes[0]


# -- splits, outputs, scoring, progress ------------------------------------------------------

def test_test_fraction_zero_trains_on_every_common_row(tmp_path: Path) -> None:
    res = run_parties(small_job(tmp_path, test_fraction="0"))
    _ok(res)
    for p in PARTIES:
        assert res[p]["metrics"] is None and res[p]["test_rows"] == 0 and res[p]["train_rows"] == 300
        assert "test_fraction = 0: trained on all 300 common rows; no test rows" in res[p]["evaluation"]
        assert "evaluate" not in res[p]["phases"]
    assert not (tmp_path / "out-wallet" / "test_ids.csv").exists()
    assert not (tmp_path / "out-wallet" / "test_scores.csv").exists()


def test_lr_run_writes_test_ids_original_units_and_progress_lines(tmp_path: Path,
                                                                  capfd: pytest.CaptureFixture[str]) -> None:
    res = run_parties(small_job(tmp_path))
    _ok(res)
    d = tmp_path
    ids = {p: pd.read_csv(d / f"out-{p}" / "test_ids.csv", dtype=str) for p in ("wallet", "partner")}
    scores = pd.read_csv(d / "out-wallet" / "test_scores.csv", dtype={"id": str})
    assert ids["wallet"]["id"].tolist() == ids["partner"]["id"].tolist() == scores["id"].tolist()
    assert len(ids["wallet"]) == res["wallet"]["test_rows"] > 0
    warnings = res["wallet"]["warnings"]
    assert any("'amount': text read as numbers" in w for w in warnings)
    assert any("'opened': text read as dates" in w for w in warnings)
    model = json.loads((d / "out-wallet" / "model.json").read_text())
    prep = json.loads((d / "out-wallet" / "prep.json").read_text())
    per_unit = model["weights_per_original_unit"]["wallet"]
    amount = next(c for c in prep["columns"] if c["name"] == "amount")
    i = prep["feature_names"].index("amount")
    assert per_unit["amount"] == pytest.approx(model["weights"]["wallet"][i] / amount["std"])
    assert "partner" not in model["weights_per_original_unit"]  # its spreads are the partner's own
    err = capfd.readouterr().err
    assert "train wallet: epoch 1/2 brier=" in err and "train wallet: epoch 2/2" in err


def test_tree_thresholds_are_also_in_original_units(tmp_path: Path) -> None:
    path = small_job(tmp_path, model='type = "ss-xgb"\ntrees = 2\ndepth = 2\nbins = 4\n')
    path.write_text(path.read_text().replace("learning_rate = 0.5\n", ""))
    _ok(run_parties(path))
    seen = 0
    for p in ("wallet", "partner"):
        model = json.loads((tmp_path / f"out-{p}" / "model.json").read_text())
        prep = Prep.from_json(json.loads((tmp_path / f"out-{p}" / "prep.json").read_text()))
        cols = {c.name: c for c in prep.columns}
        for tree in model["trees"]:
            for node in (n for level in tree["splits"] for n in level if n is not None):
                c = cols.get(node["feature"])
                if c is None:  # a one-hot or missing indicator: 0/1 in either units
                    assert "le_original" not in node
                    continue
                seen += 1
                if c.parse.startswith("date:"):
                    want = (pd.Timestamp(0) + pd.Timedelta(days=node["le"] * c.std + c.mean)).strftime("%Y-%m-%d")
                    assert node["le_original"] == want
                else:
                    assert node["le_original"] == pytest.approx(node["le"] * c.std + c.mean)
    assert seen > 0


def test_scoring_counts_and_writes_the_rows_it_could_not_score(tmp_path: Path) -> None:
    _ok(run_parties(small_job(tmp_path)))
    w = pd.read_csv(tmp_path / "wallet.csv", dtype={"id": str})
    p = pd.read_csv(tmp_path / "partner.csv", dtype={"id": str})
    w.head(100).to_csv(tmp_path / "new-wallet.csv", index=False)
    p.iloc[10:120].to_csv(tmp_path / "new-partner.csv", index=False)  # lacks the wallet's first 10; 20 extra
    res = run_parties(tmp_path / "job.toml", scoring=True)
    _ok(res)
    assert res["wallet"]["scored"] == 90 and res["wallet"]["unscored"] == 10 and res["partner"]["unscored"] == 20
    lost = pd.read_csv(tmp_path / "scores.unscored.csv", dtype=str)["id"].tolist()
    assert lost == w["id"].head(10).tolist()
    theirs = pd.read_csv(tmp_path / "new-partner.unscored.csv", dtype=str)["id"].tolist()
    assert theirs == p["id"].iloc[100:120].tolist()
    assert any("10 of 100 input rows not scored" in x for x in res["wallet"]["warnings"])
    assert len(pd.read_csv(tmp_path / "scores.csv")) == 90


def test_progress_prints_a_line_per_step_when_stderr_is_not_a_terminal() -> None:
    code = ("from veilpay.progress import progress\n"
            "with progress(3, 'train x', unit='tree', lines=True) as bar:\n"
            "    for i in range(3):\n"
            "        bar.set_postfix(brier='0.1')\n"
            "        bar.update(1)\n"
            "with progress(3, 'psi', unit='pt') as bar:\n"  # fine-grained steps: no lines
            "    bar.update(3)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stderr.splitlines()
    assert [ln.split(" (")[0] for ln in lines] == [f"train x: tree {i}/3 brier=0.1" for i in (1, 2, 3)]


@pytest.mark.parametrize("edit", ['compute = ["wallet", "helper", "partner"]', 'model_to = ["wallet", "helper"]'])
def test_semi2k_dealer_holds_no_data_and_gets_no_model(tmp_path: Path, edit: str) -> None:
    """semi2k's third compute party is the dealer, which knows every mask: a share
    opened to it is the value, so it may neither own a data block nor receive the model."""
    from test_ml import JOB

    key = edit.split(" = ")[0]
    text = "\n".join(edit if line.startswith(key + " = ") else line for line in JOB.splitlines())
    (tmp_path / "job.toml").write_text(text)
    with pytest.raises(ConfigError, match="semi2k's dealer"):
        load_job(tmp_path / "job.toml")


def test_split_candidates_follow_each_column_and_the_budget() -> None:
    """fit_bins: every value of a column with few; 16 quantiles for a column with mass
    points; 64 for a continuous one without, all or none within the party's budget."""
    from veilpay.ml.sstree import fit_bins

    rng = np.random.default_rng(5)
    n = 20_000
    year = rng.integers(1990, 2010, n).astype(float)  # 20 values: each one
    amount = rng.choice([10_000.0, 25_000.0, 50_000.0, 100_000.0], n) + (rng.random(n) < 0.3) * rng.random(n) * 1e5
    date = rng.uniform(1990, 2010, n)  # continuous, no mass points
    flag = (rng.random(n) < 0.4).astype(float)
    x = np.column_stack([year, amount, date, flag])

    def per_column(bins_: Any) -> list[int]:
        return [sum(1 for c, _ in bins_.candidates if c == j) for j in range(x.shape[1])]

    coarse = per_column(fit_bins(x, 16, 0))
    assert coarse[0] == 15 and coarse[1] <= 15 and coarse[2:] == [15, 1]  # the amount's quantiles meet at its atoms
    assert per_column(fit_bins(x, 16, 64, 64, 224)) == [19, coarse[1], 63, 1]
    assert per_column(fit_bins(x, 16, 64, 64, 60)) == [19, coarse[1], 15, 1]  # over the budget: no fine bins


def test_keys_of_the_other_model_type_are_named_in_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = small_job(tmp_path, model='type = "ss-xgb"\n')
    path.write_text(path.read_text().replace("learning_rate = 0.5\n", ""))  # epochs, batch_size stay
    with caplog.at_level("WARNING", logger="veilpay.ml.job"):
        load_job(path)
    assert "epochs, batch_size not used by type = 'ss-xgb'" in caplog.text
