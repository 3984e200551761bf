"""Each party's local preparation of its own columns: missing values, standardisation
and one-hot encoding, fitted on the training rows only and recorded as JSON so that
scoring applies exactly the same transform.

Text columns are read for what they hold: dates (every value in one of DATE_FORMATS)
become days since 1970-01-01, numbers written as text (``$1,889.50``, ``1,234``,
``12%``: a currency sign, thousands commas or a trailing percent sign, which is
dropped, 12% -> 12) become numbers, and a column that mostly looks numeric but holds
other text is refused, naming an example. The rest is one-hot encoded, keeping the
MAX_CATEGORIES most frequent values; ``Prep.notes`` says which columns were parsed and
which one-hot encodings were capped, for the job's report."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from veilpay.errors import DataError

__all__ = ["DATE_FORMATS", "ColumnPrep", "Prep", "apply_row", "fit_prep", "parse_column"]

MAX_CATEGORIES = 30  # the most frequent categories get a column each; the rest share "other"
DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%d-%b-%y", "%d-%b-%Y", "%Y/%m/%d")
_NUMBER = re.compile(r"^[-+]?[$€£¥]?[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?%?$|^[-+]?[$€£¥]?\.\d+%?$")
_EPOCH = pd.Timestamp("1970-01-01")


def _parse_numbers(values: pd.Series) -> np.ndarray:
    """Text written as numbers (``$1,889.50``, ``12%``) as float64; anything else NaN."""
    text = values.astype("string").str.replace(r"\s+", "", regex=True)
    ok = text.str.fullmatch(_NUMBER).fillna(False).astype(bool)
    clean = text.where(ok).str.replace(r"[$€£¥,%]", "", regex=True)
    return pd.to_numeric(clean, errors="coerce").to_numpy(dtype=np.float64)


def _parse_dates(values: pd.Series, fmt: str) -> np.ndarray:
    """Dates in ``fmt`` as days since 1970-01-01 (float64); anything else NaN."""
    when = pd.to_datetime(values.astype("string").str.strip(), format=fmt, errors="coerce")
    return ((when - _EPOCH) / pd.Timedelta(days=1)).to_numpy(dtype=np.float64, na_value=np.nan)


def parse_column(values: pd.Series, parse: str) -> np.ndarray:
    """A column as ColumnPrep.parse reads it: "" numbers as stored, "number" numbers
    written as text, "date:FMT" dates; values that do not parse are NaN (missing)."""
    if parse == "number":
        return _parse_numbers(values)
    if parse.startswith("date:"):
        return _parse_dates(values, parse[5:])
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)


@dataclass
class ColumnPrep:
    name: str
    kind: str  # "numeric" | "categorical"
    mean: float = 0.0
    std: float = 1.0
    missing_indicator: bool = False
    categories: list[str] = field(default_factory=list)
    parse: str = ""  # numeric: "" (stored as numbers), "number" (text such as $1,889.50), "date:FMT" (days)

    def outputs(self) -> list[str]:
        if self.kind == "numeric":
            return [self.name] + ([f"{self.name}__missing"] if self.missing_indicator else [])
        return [f"{self.name}={c}" for c in self.categories] + [f"{self.name}=<other>"]


@dataclass
class Prep:
    """The fitted transform of one party's feature columns."""

    columns: list[ColumnPrep]
    notes: list[str] = field(default_factory=list)  # what fitting decided on its own (parsed, capped), not saved

    def feature_names(self) -> list[str]:
        return [n for c in self.columns for n in c.outputs()]

    def original_value(self, feature: int, value: float) -> float | str | None:
        """A prepared feature's ``value`` in its column's own units (a date column: the
        ISO date), or None where the feature is a 0/1 indicator (no other units)."""
        at = 0
        for c in self.columns:
            width = len(c.outputs())
            if at <= feature < at + width:
                if c.kind != "numeric" or feature != at:
                    return None
                raw = value * c.std + c.mean
                if c.parse.startswith("date:"):
                    return str((_EPOCH + pd.Timedelta(days=raw)).strftime("%Y-%m-%d"))
                return float(raw)
            at += width
        raise IndexError(f"feature {feature} of {at}")

    def per_original_unit(self, weights: list[float]) -> dict[str, float]:
        """Linear weights on the prepared features as weights per unit of each numeric
        column (w / std; a date column: per day)."""
        out, at = {}, 0
        for c in self.columns:
            if c.kind == "numeric":
                out[c.name] = float(weights[at]) / c.std
            at += len(c.outputs())
        return out

    def to_json(self) -> dict[str, Any]:
        return {"columns": [asdict(c) for c in self.columns]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Prep:
        try:
            return cls([ColumnPrep(**c) for c in data["columns"]])
        except (KeyError, TypeError) as exc:
            raise DataError(f"malformed preprocessing record: {exc}") from exc

    def apply(self, frame: pd.DataFrame, where: str) -> np.ndarray:
        """The float64 feature matrix; a missing column or a non-finite result is a
        DataError naming ``where``."""
        parts = []
        for c in self.columns:
            if c.name not in frame.columns:
                raise DataError(f"{where}: no column {c.name!r}")
            col = frame[c.name]
            if c.kind == "numeric":
                values = parse_column(col, c.parse)
                missing = ~np.isfinite(values)
                with np.errstate(over="ignore", invalid="ignore"):  # checked below
                    parts.append(((np.where(missing, c.mean, values) - c.mean) / c.std)[:, None])
                if c.missing_indicator:
                    parts.append(missing.astype(np.float64)[:, None])
            else:
                text = col.astype("string").fillna("<missing>").to_numpy(dtype=object)
                onehot = np.stack([text == v for v in c.categories] + [~np.isin(text, c.categories)], axis=1)
                parts.append(onehot.astype(np.float64))
        out = np.concatenate(parts, axis=1) if parts else np.zeros((len(frame), 0))
        if not np.isfinite(out).all():
            raise DataError(f"{where}: NaN or infinite values after preprocessing")
        return out


def apply_row(prep: Prep, row: dict[str, Any], where: str) -> np.ndarray:
    """``prep.apply`` of one record (a dict of raw values), without building a frame: the
    payment path prepares one payer's columns per payment."""
    out: list[float] = []
    for c in prep.columns:
        if c.name not in row:
            raise DataError(f"{where}: no column {c.name!r}")
        v = row[c.name]
        if c.kind == "numeric":
            try:
                x = float(v) if v is not None and not isinstance(v, bool) else float("nan")
            except (TypeError, ValueError):
                x = float(parse_column(pd.Series([v]), c.parse)[0]) if c.parse else float("nan")
            missing = not np.isfinite(x)
            out.append(((c.mean if missing else x) - c.mean) / c.std)
            if c.missing_indicator:
                out.append(1.0 if missing else 0.0)
        else:
            text = "<missing>" if v is None else str(v)
            out += [1.0 if text == cat else 0.0 for cat in c.categories] + [0.0 if text in c.categories else 1.0]
    arr = np.array(out, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise DataError(f"{where}: NaN or infinite values after preprocessing")
    return arr


def fit_prep(frame: pd.DataFrame, features: list[str], categorical: list[str] | None, where: str) -> Prep:
    """Fit on the training rows of ``frame``. Dates and numbers written as text are
    parsed (the module docstring); other non-numeric columns (and those named in
    ``categorical``) are one-hot encoded; an all-missing column is refused."""
    cols, notes = [], []
    for name in features:
        if name not in frame.columns:
            raise DataError(f"{where}: no feature column {name!r}")
        col = frame[name]
        if col.isna().all() or (col.dtype == object and (col.astype("string").str.strip() == "").all()):
            raise DataError(f"{where}: feature column {name!r} is empty (all values missing)")
        numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        parse = ""
        if not numeric and not (categorical is not None and name in categorical):
            parse = _text_kind(col, name, where)
            if parse:
                example = str(col.dropna().iloc[0])
                notes.append(f"column {name!r}: text read as " + (
                    f"dates ({parse[5:]}, e.g. {example!r}), as days since 1970-01-01" if parse != "number"
                    else f"numbers (e.g. {example!r} -> {_parse_numbers(pd.Series([example]))[0]:g})"))
                numeric = True
        if (categorical is not None and name in categorical) or not numeric:
            counts = col.astype("string").fillna("<missing>").value_counts()
            ranked = sorted(((-int(c), str(v)) for v, c in counts.items()))  # by count, ties by value
            cats = [v for _, v in ranked[:MAX_CATEGORIES]]
            if len(ranked) > MAX_CATEGORIES:
                kept = -sum(c for c, _ in ranked[:MAX_CATEGORIES]) / len(col)
                notes.append(f"column {name!r}: {len(ranked):,} distinct values; one-hot keeps the {len(cats)} most "
                             f"frequent (covering {kept:.1%} of the training rows), the rest share {name}=<other>"
                             + (" -- nearly one value per row: an id? leave it out of features"
                                if len(ranked) > len(col) / 2 else ""))
            cols.append(ColumnPrep(name, "categorical", categories=cats))
        else:
            values = parse_column(col, parse) if parse else col.to_numpy(dtype=np.float64)
            finite = values[np.isfinite(values)]
            with np.errstate(over="ignore", invalid="ignore"):
                mean, std = float(finite.mean()), float(finite.std())
            if not (np.isfinite(mean) and np.isfinite(std)):
                raise DataError(f"{where}: feature column {name!r} is too large to standardise (non-finite mean "
                                "or spread)")
            cols.append(ColumnPrep(name, "numeric", mean=mean, std=std if std > 0 else 1.0,
                                   missing_indicator=bool(len(finite) < len(values)), parse=parse))
    return Prep(cols, notes)


def _text_kind(col: pd.Series, name: str, where: str) -> str:
    """How a text column is read: "date:FMT" when every value is a date in FMT, "number"
    when every value is a number written as text, "" (categories) when fewer than half
    of them look like either; in between it is refused, naming a value that does not
    parse, since one-hot encoding amounts or dates is rarely what was meant."""
    text = col.dropna().astype("string").str.strip()
    text = text[text != ""]
    best: tuple[float, str, np.ndarray] = (0.0, "", np.zeros(0))
    for parse in [f"date:{f}" for f in DATE_FORMATS] + ["number"]:
        ok = np.isfinite(parse_column(text, parse))
        if ok.all():
            return parse
        if ok.mean() > best[0]:
            best = (float(ok.mean()), parse, ok)
    share, parse, ok = best
    if share >= 0.5:
        what = "numbers" if parse == "number" else f"dates ({parse[5:]})"
        good, bad = text[ok].iloc[0], text[~ok].iloc[0]
        raise DataError(f"{where}: column {name!r} looks like {what} (e.g. {good!r}, {share:.0%} of its values) but "
                        f"holds {bad!r}; clean it, or name it in categorical to one-hot encode it")
    return ""
