"""One party's side of a joint training job (vertical partition, two data parties and
a helper):

1. read: each data party reads its own file and checks its columns (the label party:
   the label is present and binary; every named feature is a column) -- then a status
   round, so a bad input stops every party before anything else happens, and each
   other party raises JobFailed naming the party and its reason;
2. PSI on the key (KKRT or ECDH-PSI, both data parties learn the common ids) and
   alignment: both sort the common rows by id, so they agree on the order without
   talking. When under a tenth of the smaller side is common, a second,
   cardinality-only ECDH-PSI counts the ids that would match ignoring case, spaces
   and leading zeros (both learn that count only), for the hint in the report;
3. split and prepare: a row is in the test split when a hash of (seed, id) says so
   (split = "hash"), or when it is among the last test_fraction of the common rows in
   key order (split = "ordered": an out-of-time split when keys sort by time); none
   when test_fraction = 0. Each split must hold MIN_SPLIT_ROWS rows and the label
   party's test split both classes;
   each party fits its transform (veilpay.ml.prep) on its training rows -- then a
   second status round, which also checks that both sides hold the same rows (a
   digest of the ordered ids) and the same job; with class_weight = "balanced" the
   label party then announces the two class weights (from its training labels);
4. share the features and the label, train SS-LR (veilpay.ml.sslr), score the test
   rows in MPC and reveal the scores to the label party only, which computes AUC, KS
   and average precision and announces those three numbers;
5. reveal the model to `model_to` (or keep it shared) and write the outputs (both
   data parties write the test split's keys, test_ids.csv; the label party also the
   test scores it saw, test_scores.csv: key, z).

The helper (semi2k's dealer, or aby3's third party) holds no data; it takes part in
the status rounds and the MPC only.
"""

from __future__ import annotations

import json
import logging
import re
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from veilpay.crypto import sha256
from veilpay.errors import DataError, InvalidInput, ProtocolError
from veilpay.files import atomic_write
from veilpay.ml.job import Job
from veilpay.ml.metrics import auc, average_precision, ks
from veilpay.ml.prep import Prep, fit_prep
from veilpay.ml.sslr import train_lr
from veilpay.ml.sstree import Bins, SecureTree, base_score, fit_bins, predict_trees, train_trees, tree_lambda
from veilpay.mpc import BitMatrix, Protocol, SharedTensor, concatenate, nonlinear
from veilpay.mpc.tensor import share
from veilpay.progress import progress
from veilpay.psi import ecdh_psi, kkrt_psi, rr22_psi
from veilpay.psi.data import join_key, normalise_key, split_key

__all__ = ["JobFailed", "plaintext_views", "run_training"]

log = logging.getLogger(__name__)

MIN_SPLIT_ROWS = 10  # the fewest rows a training (or a requested test) split may hold


class JobFailed(ProtocolError):
    """Another party stopped the job before any secret was shared: ``party`` names it,
    ``reason`` says why (its own error, as it told every party)."""

    def __init__(self, party: str, reason: str) -> None:
        super().__init__(f"peer {party!r} failed: {reason}")
        self.party, self.reason = party, reason


@dataclass
class LocalTable:
    """What a data party holds after reading and preparing."""

    frame: pd.DataFrame
    ids: list[bytes]
    label: np.ndarray | None = None
    prep: Prep | None = None
    x_train: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    x_test: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    y_train: np.ndarray | None = None
    y_test: np.ndarray | None = None
    bins: Bins | None = None  # trees: this party's split candidates; x_train/x_test are their indicators
    features_train: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # prepared, before binning
    features_test: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    digest: bytes = bytes(32)
    rows: int = 0
    duplicates: int = 0
    null_keys: int = 0
    unmatched: list[bytes] = field(default_factory=list)  # ids the other party lacks (after PSI)
    peer_size: int = 0  # the other party's distinct ids (PSI reveals it)
    loose_common: int | None = None  # common ids ignoring case, spaces and zero padding (when checked)


def _read_frame(path: Path, key: list[str]) -> pd.DataFrame:
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype={k: str for k in key}, keep_default_na=True)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except (ValueError, OSError, pd.errors.ParserError, ImportError) as exc:
        raise DataError(f"{path}: cannot read as a table: {exc}") from exc
    missing = [k for k in key if k not in frame.columns]
    if missing:
        raise DataError(f"{path}: no key column {missing[0]!r} (columns: {', '.join(map(str, frame.columns))})")
    return frame


def read_keyed(path: Path, key: list[str]) -> LocalTable:
    """A table with one row per distinct (trimmed, NFC) key; rows with an empty key
    part are dropped and counted, as are repeated keys (first occurrence kept)."""
    frame = _read_frame(path, key)
    keys = frame[key].astype("string").fillna("")
    ids, keep, seen = [], [], set()
    dups = nulls = 0
    for row, parts in enumerate(keys.itertuples(index=False, name=None)):
        norm = [normalise_key(str(p), "trim") for p in parts]
        if any(p == "" for p in norm):
            nulls += 1
            continue
        ident = join_key(norm)
        if ident in seen:
            dups += 1
            continue
        seen.add(ident)
        ids.append(ident)
        keep.append(row)
    return LocalTable(frame.iloc[keep].reset_index(drop=True), ids, rows=len(frame), duplicates=dups, null_keys=nulls)


def _read(job: Job, me: str) -> LocalTable:
    spec = job.parties[me]
    if spec.data is None:
        raise DataError(f"party {me!r} has no data file in the job")
    local = read_keyed(spec.data, job.key)
    frame = local.frame
    if me == job.label_party:
        if job.label not in frame.columns:
            raise DataError(f"{spec.data}: no label column {job.label!r}")
        values = local.frame[job.label]
        if values.isna().any():
            raise DataError(f"{spec.data}: label column {job.label!r} has missing values")
        text = values.astype(str)
        kinds = sorted(set(text))
        if len(kinds) != 2 or job.positive not in kinds:
            raise DataError(f"{spec.data}: label column {job.label!r} must be binary with {job.positive!r} as one "
                            f"value; it has {len(kinds)} distinct values")
        local.label = (text == job.positive).to_numpy(dtype=np.float64)
    features = spec.features or [c for c in frame.columns if c not in job.key and c != job.label]
    if not features:
        raise DataError(f"{spec.data}: no feature columns")
    for kind, names in (("features", spec.features or []), ("categorical", spec.categorical or [])):
        absent = [c for c in names if c not in frame.columns]
        if absent:
            raise DataError(f"{spec.data}: [parties.{me}] {kind} names {', '.join(map(repr, absent))}, not a column "
                            f"of this file (columns: {', '.join(map(str, frame.columns))})")
    stray = [c for c in spec.categorical or [] if c not in features]
    if stray:
        raise DataError(f"{spec.data}: [parties.{me}] categorical names {', '.join(map(repr, stray))}, not one of "
                        "its features")
    local.frame = local.frame[features]
    return local


def _in_test(ids: list[bytes], seed: int, fraction: float) -> np.ndarray:
    salt = b"veilpay/ml/split/" + seed.to_bytes(8, "little", signed=True)
    draws = np.array([int.from_bytes(sha256(salt + i)[:8], "little") for i in ids], dtype=np.float64)
    return draws / 2.0**64 < fraction


def _test_rows(ids: list[bytes], job: Job) -> np.ndarray:
    """The test split of the common rows (``ids`` sorted, the same at both sides)."""
    if job.test_fraction == 0:
        return np.zeros(len(ids), dtype=bool)
    if job.split == "ordered":
        n_train = int(round(len(ids) * (1.0 - job.test_fraction)))
        return np.arange(len(ids)) >= n_train
    return _in_test(ids, job.seed, job.test_fraction)


def class_weights(y_train: np.ndarray, job: Job) -> tuple[float, float] | None:
    """(negatives' weight, positives' weight) from the label party's training labels:
    "balanced" is scikit-learn's n / (2 n_class), weights of mean 1 over the rows."""
    if job.class_weight is None:
        return None
    if job.class_weight == "balanced":
        n, pos = len(y_train), float(np.sum(y_train))
        return n / (2.0 * (n - pos)), n / (2.0 * pos)
    return 1.0, float(job.class_weight)


def _agree_weights(rt: Protocol, job: Job, local: LocalTable | None) -> tuple[float, float] | None:
    """The label party announces the class weights when it alone can compute them."""
    a = job.label_party
    if job.class_weight != "balanced":
        return class_weights(np.zeros(0), job)
    mine = np.zeros(2, dtype=np.float64)
    if rt.me == a and local is not None and local.y_train is not None:
        mine[:] = class_weights(local.y_train[:, 0], job) or (1.0, 1.0)
    got = rt.comm.exchange("job.class_weight", {p: [mine] for p in rt.comm.peers} if rt.me == a else {},
                           {a: 1} if rt.me != a else {})
    if rt.me != a:
        mine = got[a][0]
        if mine.dtype != np.float64 or mine.shape != (2,) or not (np.isfinite(mine).all() and (mine > 0).all()):
            raise JobFailed(a, "malformed class weights")
    return float(mine[0]), float(mine[1])


def align_rows(job: Job, me: str, local: LocalTable, comm_psi: Any, stats: dict[str, Any]) -> None:
    """PSI with the other data party, then keep the common rows sorted by id."""
    other = job.partner if me == job.label_party else job.label_party
    role = "receiver" if me == job.label_party else "sender"
    if job.psi == "rr22":
        res = rr22_psi(comm_psi, other, role, local.ids, reveal="both")
    elif job.psi == "kkrt":
        res = kkrt_psi(comm_psi, other, role, local.ids, reveal="both")
    else:
        res = ecdh_psi(comm_psi, other, role, local.ids, reveal="both")
    idx = np.asarray(res.indices, dtype=np.int64)
    matched = np.zeros(len(local.ids), dtype=bool)
    matched[idx] = True
    unmatched = [i for i, hit in zip(local.ids, matched, strict=True) if not hit]
    ids = local.ids
    keep_rows(local, idx)
    local.unmatched, local.peer_size = unmatched, res.peer_size
    stats.update(peer_size=res.peer_size, common=len(local.ids))
    if few_common(len(local.ids), len(ids), res.peer_size):
        # Both sides know all three numbers, so both take this branch. A cardinality-only
        # PSI: each learns how many ids would match loosely, not which.
        loose = sorted({loose_id(i) for i in ids})
        local.loose_common = ecdh_psi(comm_psi, other, role, loose, mode="cardinality", reveal="both").size
        stats["common_ignoring_case_and_padding"] = local.loose_common
        if local.loose_common > len(local.ids):
            stats.setdefault("warnings", []).append(loose_hint(job, len(local.ids), local.loose_common))
            log.warning("%s", stats["warnings"][-1])


def few_common(common: int, mine: int, theirs: int) -> bool:
    """Whether PSI found so few common ids (under a tenth of the smaller side) that a
    key written differently at the two sides is the likelier cause."""
    return common * 10 < min(mine, theirs)


_ZERO_PAD = re.compile(r"(?<!\d)0+(?=\d)")


def loose_id(ident: bytes) -> bytes:
    """An id with case, spaces and leading zeros of its numbers ignored: "PAY-000123",
    "pay-123" and " Pay-0123" are one loose id."""
    parts = [_ZERO_PAD.sub("", re.sub(r"\s+", "", unicodedata.normalize("NFKC", p).casefold()))
             for p in split_key(ident)]
    return join_key(parts)


def loose_hint(job: Job, common: int, loose: int) -> str:
    return (f"{common:,} common rows: {loose:,} would match ignoring case, spaces and leading zeros; write the key "
            f"column(s) {', '.join(job.key)} the same way at both parties")


def keep_rows(local: LocalTable, idx: np.ndarray) -> None:
    """Keep rows ``idx`` (the common ones), in the order of their ids."""
    common = [local.ids[i] for i in idx]
    order = sorted(range(len(common)), key=common.__getitem__)
    rows = idx[np.asarray(order, dtype=np.int64)]
    local.ids = [common[i] for i in order]
    local.frame = local.frame.iloc[rows].reset_index(drop=True)
    if local.label is not None:
        local.label = local.label[rows]
    local.digest = sha256(b"".join(len(i).to_bytes(4, "little") + i for i in local.ids))


def plaintext_views(job: Job) -> dict[str, LocalTable]:
    """For benchmarks and tests only: both data parties' prepared matrices as the
    secure job would build them, from a plain intersection (the centralised view that
    the secure model is compared with)."""
    views = {p: _read(job, p) for p in job.data_parties}
    a, b = (views[p] for p in job.data_parties)
    common = set(a.ids) & set(b.ids)
    for p, v in views.items():
        keep_rows(v, np.array([i for i, ident in enumerate(v.ids) if ident in common], dtype=np.int64))
        _prepare(job, p, v)
    return views


def check_overlap(job: Job, me: str, local: LocalTable, test: np.ndarray) -> None:
    """Enough common rows for the split asked for: a DataError with the counts (and the
    loose-key hint, where one was measured) otherwise."""
    n_test = int(test.sum())
    n_train = len(test) - n_test
    if n_train >= MIN_SPLIT_ROWS and (job.test_fraction == 0 or n_test >= MIN_SPLIT_ROWS):
        return
    other = job.partner if me == job.label_party else job.label_party
    hint = ""
    if local.loose_common is not None and local.loose_common > len(local.ids):
        hint = f" ({loose_hint(job, len(local.ids), local.loose_common)})"
    raise DataError(f"{job.parties[me].data}: PSI found {len(local.ids):,} common rows ({me} holds "
                    f"{len(local.ids) + len(local.unmatched):,} distinct ids, {other} {local.peer_size:,}){hint}; "
                    f"test_fraction = {job.test_fraction} leaves {n_train:,} training and {n_test:,} test rows, and "
                    f"each split needs at least {MIN_SPLIT_ROWS}")


def _prepare(job: Job, me: str, local: LocalTable) -> None:
    spec = job.parties[me]
    test = _test_rows(local.ids, job)
    check_overlap(job, me, local, test)
    train_frame, test_frame = local.frame[~test], local.frame[test]
    where = str(spec.data)
    local.prep = fit_prep(train_frame, list(local.frame.columns), spec.categorical, where)
    local.x_train = local.features_train = local.prep.apply(train_frame, where)
    local.x_test = local.features_test = local.prep.apply(test_frame, where)
    if job.model_type == "ss-xgb":
        t = job.tree
        local.bins = fit_bins(local.x_train, t.bins, t.exact_values, t.fine_bins, t.candidate_budget)
        if not local.bins.candidates:
            raise DataError(f"{where}: no feature column has two distinct values to split on")
        local.x_train = local.bins.indicators(local.x_train, np.uint8)
        local.x_test = local.bins.indicators(local.x_test, np.uint8)
    if local.label is not None:
        local.y_train, local.y_test = local.label[~test][:, None], local.label[test][:, None]
        if local.y_train.min() == local.y_train.max():
            raise DataError(f"{where}: the training rows hold only one class of {job.label!r}")
        if len(local.y_test) and local.y_test.min() == local.y_test.max():
            raise DataError(f"{where}: the test split ({len(local.y_test):,} rows) holds only one class of "
                            f"{job.label!r}, so it cannot be evaluated (AUC needs both); change test_fraction or "
                            "split, or set test_fraction = 0 to train on every common row without testing")


_STATUS_FIELDS = 4  # ok, n_train, n_test, features


def status_round(rt: Protocol, label: str, job: Job, error: BaseException | None, local: LocalTable | None,
                 compare_rows: bool = False) -> dict[str, Any]:
    """Everyone tells everyone whether it can go on (and, for data parties, its shape
    and the digest of its ordered ids). Raises at every party if any party cannot."""
    ok = error is None
    fields = np.zeros(_STATUS_FIELDS, dtype=np.uint64)
    fields[0] = int(ok)
    if local is not None and ok:
        fields[1:] = [local.x_train.shape[0], local.x_test.shape[0], local.x_train.shape[1]]
    why = np.frombuffer((f"{type(error).__name__}: {error}" if error else "").encode()[:400], dtype=np.uint8)
    digest = np.frombuffer((local.digest if local is not None else bytes(32)) + sha256(job.fingerprint()), np.uint8)
    peers = rt.comm.peers
    got = rt.comm.exchange(label, {p: [fields, digest, why] for p in peers}, {p: 3 for p in peers})
    if error is not None:
        raise error
    for p in peers:
        f, d, w = got[p]
        if f.dtype != np.uint64 or f.shape != (_STATUS_FIELDS,) or d.shape != (64,) or w.dtype != np.uint8:
            raise JobFailed(p, "malformed status message")
        if not int(f[0]):
            raise JobFailed(p, f"stopped the job: {w.tobytes().decode(errors='replace')}")
        if d[32:].tobytes() != sha256(job.fingerprint()):
            raise JobFailed(p, "runs a different job file (model, parties, key or seed differ)")
    shapes = {p: [int(v) for v in got[p][0][1:]] for p in peers}
    if local is not None:
        shapes[rt.me] = [local.x_train.shape[0], local.x_test.shape[0], local.x_train.shape[1]]
    data = job.data_parties
    if compare_rows:
        a, b = data
        if shapes[a][:2] != shapes[b][:2]:
            raise JobFailed(b, f"holds {shapes[b][:2]} train/test rows after PSI, {a} holds {shapes[a][:2]}")
        digests = {p: (got[p][1][:32].tobytes() if p != rt.me else local.digest if local else b"") for p in data}
        if digests[a] != digests[b]:
            raise JobFailed(b, "the common rows differ between the data parties (alignment digest)")
    return shapes


@contextmanager
def phase(rt: Protocol, name: str, report: dict[str, Any]) -> Iterator[None]:
    t0, c0 = time.perf_counter(), time.process_time()
    before = {k: (v.rounds, v.bytes_sent, v.bytes_recv) for k, v in rt.comm.stats().items()}
    with rt.comm.scope(name):
        yield
    after = rt.comm.stats().get(name)
    b = before.get(name, (0, 0, 0))
    report["phases"][name] = {
        "seconds": round(time.perf_counter() - t0, 3),
        "cpu_seconds": round(time.process_time() - c0, 3),  # this process's CPU (the machine's load aside)
        "rounds": (after.rounds - b[0]) if after else 0,
        "bytes_sent": (after.bytes_sent - b[1]) if after else 0,
        "bytes_received": (after.bytes_recv - b[2]) if after else 0,
    }


def run_training(rt: Protocol, job: Job, out_dir: str | Path | None = None,
                 show_progress: bool | None = None) -> dict[str, Any]:
    """Run this party's side of ``job`` on the runtime ``rt`` (whose parties are the
    job's compute parties). Returns the report; writes outputs to ``out_dir``."""
    me = rt.me
    report: dict[str, Any] = {"job": job.name, "party": me, "protocol": job.protocol, "phases": {}}
    data = me in job.data_parties
    local: LocalTable | None = None
    error: BaseException | None = None
    with phase(rt, "read", report):
        if data:
            try:
                local = _read(job, me)
                report.update(rows=local.rows, duplicates=local.duplicates, null_keys_dropped=local.null_keys)
            except Exception as exc:  # noqa: BLE001 - told to every party by the status round, then re-raised
                error = exc
        status_round(rt, "job.read", job, error, None)
    with phase(rt, "psi", report):
        if local is not None:
            align_rows(job, me, local, rt.comm, report)
    with phase(rt, "prepare", report):
        if local is not None:
            try:
                _prepare(job, me, local)
                if local.prep is not None and local.prep.notes:
                    report.setdefault("warnings", []).extend(local.prep.notes)
                    for note in local.prep.notes:
                        log.warning("%s", note)
            except Exception as exc:  # noqa: BLE001 - told to every party by the status round, then re-raised
                error = exc
        shapes = status_round(rt, "job.prepared", job, error, local, compare_rows=True)
    a, b = job.label_party, job.partner
    n_train, n_test, d_a = shapes[a]
    d_b = shapes[b][2]
    report.update(train_rows=n_train, test_rows=n_test, features={a: d_a, b: d_b})
    if job.model_type == "ss-xgb":
        tree_lambda(job.tree, n_train)  # a reg_lambda too small for n: refused here, before any MPC
    weights = _agree_weights(rt, job, local)
    if weights is not None:
        report["class_weight"] = {"negative": round(weights[0], 6), "positive": round(weights[1], 6)}
    fixed = job.model_type == "ss-lr"  # trees share 0/1 indicators as integers
    if local is not None:  # the raw frame and the float features are not needed again: free them
        local.frame = local.frame.iloc[:0]
        local.features_train = local.features_test = np.zeros((0, 0))
    with phase(rt, "share", report):
        x: SharedTensor | BitMatrix
        if fixed:
            xa = share(rt, a, local.x_train if me == a and local else None, shape=(n_train, d_a))
            xb = share(rt, b, local.x_train if me == b and local else None, shape=(n_train, d_b))
            x = concatenate([xa, xb], axis=1)
        else:
            x = indicator_matrix(rt, job, local.x_train if local else None, n_train, d_a, d_b)
        y = share(rt, a, local.y_train if me == a and local else None, shape=(n_train, 1))
    m = job.model
    losses: list[float] = []
    trees: list[SecureTree] = []
    f0: SharedTensor | None = None  # the trees' shared starting score
    steps = job.tree.trees if job.model_type == "ss-xgb" else m.epochs
    unit = "tree" if job.model_type == "ss-xgb" else "epoch"
    bar = progress(steps, f"train {me}", unit=unit, enabled=show_progress, lines=True)  # lines: not on a TTY
    with phase(rt, "train", report), bar:
        def on_epoch(epoch: int, p: SharedTensor, yb: SharedTensor) -> None:
            diff = p - yb
            brier = (diff * diff).mean().reveal(to=a)
            if brier is not None:
                losses.append(float(brier))
                bar.set_postfix(brier=f"{float(brier):.4f}")
            bar.update(1)

        if isinstance(x, BitMatrix):  # ss-xgb
            def on_tree(i: int, p: SharedTensor) -> None:
                if i:  # the Brier score of the first i trees, to the label party only
                    diff = p - y
                    brier = (diff * diff).mean().reveal(to=a)
                    if brier is not None:
                        losses.append(float(brier))
                        bar.set_postfix(brier=f"{float(brier):.4f}")
                    bar.update(1)

            label = local.y_train if me == a and local is not None and local.y_train is not None else None
            f0 = share(rt, a, None if label is None else np.array([[base_score(label[:, 0], weights)]]), shape=(1, 1))
            trees, f_train = train_trees(x, y, job.tree, on_tree=on_tree, class_weight=weights, base=f0)
            on_tree(len(trees), nonlinear.sigmoid(f_train, 32))  # after the last tree too (the range: sstree)
            report["trees"] = len(trees)
        elif isinstance(x, SharedTensor):
            fitted = train_lr(x, y, m.epochs, m.batch_size, m.learning_rate, m.decay, m.l2, m.sigmoid, job.seed,
                              on_epoch=on_epoch, patience=m.early_stopping, validation_fraction=m.validation_fraction,
                              class_weight=weights)
            w, bias = fitted.w, fitted.b
            report["epochs_run"] = fitted.epochs_run
        else:  # pragma: no cover - ss-lr always shares a fixed-point matrix
            raise InvalidInput("SS-LR needs a shared feature matrix")
    scores = None
    del x  # the training matrix (and its masked copy) before the test rows' one
    if n_test:
        with phase(rt, "evaluate", report):
            scores = _evaluate(rt, job, local, trees, None if trees else (w, bias), (n_test, d_a, d_b), report,
                               f0 if trees else None)
    else:
        report["metrics"] = None
        report["evaluation"] = (f"test_fraction = 0: trained on all {n_train:,} common rows; no test rows, so no "
                                "test metrics")
    if losses:
        report["brier_after_each_tree" if trees else "brier_last_batch_per_epoch"] = [round(v, 5) for v in losses]
    with phase(rt, "output", report):
        model = None
        if trees:
            model = _reveal_trees(trees, job, me, d_a, local, f0)
        elif job.model_to:
            wv = w.reveal(to=job.model_to)
            bv = bias.reveal(to=job.model_to)
            if wv is not None and bv is not None:
                model = {"weights": {a: wv[:d_a, 0].tolist(), b: wv[d_a:, 0].tolist()}, "bias": float(bv[0, 0])}
                if local is not None and local.prep is not None:  # its own columns only: the other's spreads are its own
                    model["weights_per_original_unit"] = {me: local.prep.per_original_unit(model["weights"][me])}
    report["model"] = "revealed to " + ", ".join(job.model_to) if job.model_to else "kept secret-shared"
    if out_dir is not None:
        shared: dict[str, SharedTensor] | None = None
        if trees:  # kept shared for scoring, whoever saw the leaves
            shared = {f"t{i}_l{j}": split for i, t in enumerate(trees) for j, split in enumerate(t.splits)}
            shared |= {f"t{i}_leaves": t.leaves for i, t in enumerate(trees)}
            if f0 is not None:
                shared["base"] = f0
        elif not job.model_to:
            shared = {"w": w, "b": bias}
        _write_outputs(Path(out_dir), job, me, report, model, local.prep if local else None, shared,
                       local.bins if local else None)
        if local is not None and n_test:
            test_ids = [i for i, t in zip(local.ids, _test_rows(local.ids, job), strict=True) if t]
            write_csv(Path(out_dir) / "test_ids.csv", key_frame(test_ids, job))
        if me == a and local is not None and scores is not None:
            _write_test_scores(Path(out_dir) / "test_scores.csv", job, local, scores[:, 0])
    return report


def indicator_matrix(rt: Protocol, job: Job, mine: np.ndarray | None, n: int, d_a: int, d_b: int) -> BitMatrix:
    """The trees' 0/1 split indicators: each data party keeps its own columns in the
    clear (semi2k masks them once, in Z_2^32, for the other compute party)."""
    a, b = job.label_party, job.partner
    own = {0 if rt.me == a else 1: mine} if mine is not None and rt.me in (a, b) else {}
    return BitMatrix(rt, [(a, d_a), (b, d_b)], own, n)


def _evaluate(rt: Protocol, job: Job, local: LocalTable | None, trees: list[SecureTree],
              linear: tuple[SharedTensor, SharedTensor] | None, dims: tuple[int, int, int],
              report: dict[str, Any], base: SharedTensor | None = None) -> np.ndarray | None:
    """Score the test rows in MPC, reveal the scores to the label party, which
    announces AUC, KS and average precision. Returns the scores at the label party."""
    me, a, b = rt.me, job.label_party, job.partner
    n_test, d_a, d_b = dims
    if trees:
        scores = predict_trees(indicator_matrix(rt, job, local.x_test if local else None, n_test, d_a, d_b),
                               trees, base).reveal(to=a)
    elif linear is not None:
        ta = share(rt, a, local.x_test if me == a and local else None, shape=(n_test, d_a))
        tb = share(rt, b, local.x_test if me == b and local else None, shape=(n_test, d_b))
        scores = (concatenate([ta, tb], axis=1) @ linear[0] + linear[1]).reveal(to=a)
    else:
        raise InvalidInput("no model to evaluate")
    metrics = np.zeros(3, dtype=np.float64)
    if me == a and local is not None and scores is not None and local.y_test is not None:
        metrics[:] = [auc(local.y_test, scores), ks(local.y_test, scores), average_precision(local.y_test, scores)]
    got = rt.comm.exchange("job.metrics", {p: [metrics] for p in rt.comm.peers} if me == a else {},
                           {a: 1} if me != a else {})
    if me != a:
        metrics = got[a][0]
        if metrics.dtype != np.float64 or metrics.shape != (3,):
            raise JobFailed(a, "malformed metrics message")
    report["metrics"] = {"auc": round(float(metrics[0]), 5), "ks": round(float(metrics[1]), 5),
                         "average_precision": round(float(metrics[2]), 5)}
    return scores


def _reveal_trees(trees: list[SecureTree], job: Job, me: str, d_a: int, local: LocalTable | None,
                  base: SharedTensor | None) -> dict[str, Any]:
    """Each split's one-hot goes, in two segments, to the party owning those candidate
    columns: a party learns its own splits (feature, threshold) and that the others are
    not its own. Leaf weights go to model_to."""
    a, b = job.label_party, job.partner
    out: list[dict[str, Any]] = []
    names = local.prep.feature_names() if local is not None and local.prep is not None else []
    for tree in trees:
        levels = []
        for onehot in tree.splits:
            mine_a, mine_b = onehot[:, :d_a].reveal(to=a), onehot[:, d_a:].reveal(to=b)
            seg = mine_a if me == a else mine_b if me == b else None
            if seg is None or local is None or local.bins is None:
                continue
            nodes: list[dict[str, Any] | None] = []
            for row in seg:
                hit = np.flatnonzero(row > 0.5)
                if not len(hit):
                    nodes.append(None)  # another party's split
                    continue
                col, thr = local.bins.candidates[int(hit[0])]
                node: dict[str, Any] = {"feature": names[col], "le": thr}
                original = local.prep.original_value(col, thr) if local.prep is not None else None
                if original is not None:
                    node["le_original"] = original
                nodes.append(node)
            levels.append(nodes)
        leaves = tree.leaves.reveal(to=job.model_to) if job.model_to else None
        out.append({"splits": levels, "leaves": None if leaves is None else leaves[:, 0].tolist()})
    f0 = base.reveal(to=job.model_to) if job.model_to and base is not None else None
    return {"depth": job.tree.depth, "base_score": None if f0 is None else float(f0[0, 0]), "trees": out,
            "note": "splits: per level, per node: this party's (prepared feature, x <= le) or null (not this party's); "
                    "le is on the standardised feature, le_original the same threshold in the column's own units "
                    "(a date column: the date)"}


def _write_test_scores(path: Path, job: Job, local: LocalTable, z: np.ndarray) -> None:
    """The label party's test rows (key columns) and the scores revealed to it: the
    linear score z (SS-LR) or the trees' margin, before the sigmoid."""
    test_ids = [i for i, t in zip(local.ids, _test_rows(local.ids, job), strict=True) if t]
    frame = key_frame(test_ids, job)
    frame["z"] = z
    write_csv(path, frame)


def key_frame(ids: list[bytes], job: Job) -> pd.DataFrame:
    """The key columns of ``ids`` (as read: trimmed, NFC)."""
    parts = [split_key(i) for i in ids]
    return pd.DataFrame({k: [q[j] for q in parts] for j, k in enumerate(job.key)})


def _write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda fh: json.dump(data, fh, indent=1))


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda fh: frame.to_csv(fh, index=False))


def _write_outputs(out: Path, job: Job, me: str, report: dict[str, Any], model: dict[str, Any] | None,
                   prep: Prep | None, shared: dict[str, SharedTensor] | None, bins: Bins | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if shared and all(t.sh is not None for t in shared.values()):
        # This party's share components: raw uint64 arrays named "<tensor>__<i>", no pickle.
        arrays: dict[str, Any] = {f"{name}__{i}": c for name, t in shared.items() for i, c in enumerate(t.sh or ())}
        arrays["meta"] = np.frombuffer(json.dumps(
            {"job": job.name, "party": me, "protocol": job.protocol, "frac_bits": job.frac_bits,
             "model_type": job.model_type, "features": report["features"]}).encode(), dtype=np.uint8)
        atomic_write(out / "model_shares.npz", lambda fh: np.savez(fh, allow_pickle=False, **arrays), binary=True)
    _write_json(out / "report.json", report)
    if prep is not None:
        names = prep.feature_names()
        extra = {"bins": [[c, t] for c, t in bins.candidates]} if bins is not None else {}
        _write_json(out / "prep.json", {"party": me, "feature_names": names, **prep.to_json(), **extra})
    if model is not None:
        if "weights" in model and prep is not None and len(prep.feature_names()) != len(model["weights"][me]):
            raise InvalidInput("model and preprocessing disagree on this party's feature count")
        _write_json(out / "model.json", {"job": job.name, "type": job.model_type, "label_party": job.label_party,
                                         "positive": job.positive, **model})
