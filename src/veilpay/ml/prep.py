"""Each party's local preparation of its own columns: missing values, standardisation
and one-hot encoding, fitted on the training rows only and recorded as JSON so that
scoring applies exactly the same transform."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from veilpay.errors import DataError

__all__ = ["ColumnPrep", "Prep", "apply_row", "fit_prep"]

MAX_CATEGORIES = 30  # the most frequent categories get a column each; the rest share "other"


@dataclass
class ColumnPrep:
    name: str
    kind: str  # "numeric" | "categorical"
    mean: float = 0.0
    std: float = 1.0
    missing_indicator: bool = False
    categories: list[str] = field(default_factory=list)

    def outputs(self) -> list[str]:
        if self.kind == "numeric":
            return [self.name] + ([f"{self.name}__missing"] if self.missing_indicator else [])
        return [f"{self.name}={c}" for c in self.categories] + [f"{self.name}=<other>"]


@dataclass
class Prep:
    """The fitted transform of one party's feature columns."""

    columns: list[ColumnPrep]

    def feature_names(self) -> list[str]:
        return [n for c in self.columns for n in c.outputs()]

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
                values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
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
                x = float("nan")
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
    """Fit on the training rows of ``frame``. Columns that are not numeric (or are named
    in ``categorical``) are one-hot encoded; an all-missing column is refused."""
    cols = []
    for name in features:
        if name not in frame.columns:
            raise DataError(f"{where}: no feature column {name!r}")
        col = frame[name]
        if col.isna().all() or (col.dtype == object and (col.astype("string").str.strip() == "").all()):
            raise DataError(f"{where}: feature column {name!r} is empty (all values missing)")
        numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        if (categorical is not None and name in categorical) or not numeric:
            counts = col.astype("string").fillna("<missing>").value_counts()
            ranked = sorted(((-int(c), str(v)) for v, c in counts.items()))  # by count, ties by value
            cats = [v for _, v in ranked[:MAX_CATEGORIES]]
            cols.append(ColumnPrep(name, "categorical", categories=cats))
        else:
            values = col.to_numpy(dtype=np.float64)
            finite = values[np.isfinite(values)]
            with np.errstate(over="ignore", invalid="ignore"):
                mean, std = float(finite.mean()), float(finite.std())
            if not (np.isfinite(mean) and np.isfinite(std)):
                raise DataError(f"{where}: feature column {name!r} is too large to standardise (non-finite mean "
                                "or spread)")
            cols.append(ColumnPrep(name, "numeric", mean=mean, std=std if std > 0 else 1.0,
                                   missing_indicator=bool(len(finite) < len(values))))
    return Prep(cols)
