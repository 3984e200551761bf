"""A training job file (TOML), the same at every party:

    [job]
    name = "lending-club"
    network = "net/network.toml"        # relative to this file
    protocol = "semi2k"                 # semi2k (third party = dealer) | aby3
    compute = ["wallet", "partner", "helper"]
    key = ["customer_id"]
    label_party = "wallet"
    label = "Class"
    positive = "bad"                    # the label value that means 1
    test_fraction = 0.2                 # 0: train on every common row (no test rows, no test metrics)
    split = "hash"                      # hash: SHA-256(seed, id) < test_fraction; ordered: the
                                        # last test_fraction of the common rows in key order
    seed = 7
    model_to = ["wallet"]               # who receives the model; [] keeps it shared
    frac_bits = 20
    psi = "rr22"                        # or "kkrt", "ecdh": the PSI that aligns the rows
    timeout = 600.0                     # seconds any party waits for a peer's message

    [parties.wallet]
    data = "wallet.csv"                 # each party reads only its own entry
    features = ["funded_amnt", "term"]  # default: every column but the key and label
    categorical = ["term"]              # default: the non-numeric columns

    [parties.partner]
    data = "partner.csv"

    [parties.helper]                    # no data: the dealer or third compute party

    [model]
    type = "ss-lr"                      # or "ss-xgb" (below)
    epochs = 10                         # ss-lr keys: epochs .. validation_fraction (ss-xgb
                                        # ignores them, and refuses early_stopping)
    batch_size = 1024
    learning_rate = 1.0                 # SS-LR's SGD step; ss-xgb refuses it (tree_learning_rate)
    decay = 0.0                         # lr_t = learning_rate / (1 + decay * epoch)
    l2 = 0.0
    sigmoid = "seg3"                    # t1 | t3 | seg3 | exact
    early_stopping = 0                  # patience in epochs; 0 = off
    validation_fraction = 0.1           # of the training rows, held out when early_stopping > 0
    class_weight = "balanced"           # or a number (the positives' weight, negatives 1); default
                                        # none. ss-xgb: "balanced" only

    # The trees' [model] instead (type = "ss-xgb"), defaults shown:
    # [model]
    # type = "ss-xgb"
    # trees = 100
    # depth = 5
    # bins = 16                           # quantile thresholds per column ...
    # exact_values = 64                   # ... unless it has at most this many distinct values: each one
    # fine_bins = 64                      # ... or it is continuous without mass points, when within
    # candidate_budget = 224              #     this many candidates per party: this many quantiles
    # tree_learning_rate = 0.3            # shrinkage of each tree's leaves
    # reg_lambda = 0.0                    # 0: max(50, n / 8000)

Every key is typed and an unknown one is refused (``veilpay.settings``). The learning
rates are one key per model type because their scales differ: SS-LR's SGD step is
often 0.5 to 2, while a tree shrinkage above about 0.5 overfits at once. With
type = "ss-xgb" a ``learning_rate`` is refused, naming ``tree_learning_rate``, so
that switching a job's type never carries the LR step into the trees; with
type = "ss-lr" a ``tree_learning_rate`` is refused the same way.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from pydantic.dataclasses import dataclass as pdataclass

from veilpay.errors import ConfigError
from veilpay.ml.sstree import TreeParams
from veilpay.settings import STRICT, RelPath, load_doc, parse_table

__all__ = ["SIGMOIDS", "SPLITS", "Job", "LrParams", "PartySpec", "load_job"]

SIGMOIDS = ("t1", "t3", "seg3", "exact")
MODEL_TYPES = ("ss-lr", "ss-xgb")
SPLITS = ("hash", "ordered")
_LR_KEYS = ("epochs", "batch_size", "decay", "l2", "sigmoid", "validation_fraction")
_TREE_KEYS = ("trees", "depth", "bins", "exact_values", "fine_bins", "candidate_budget", "reg_lambda")
log = logging.getLogger(__name__)


@dataclass
class PartySpec:
    name: str
    data: Path | None = None
    features: list[str] | None = None
    categorical: list[str] | None = None


@dataclass
class LrParams:
    epochs: int = 10
    batch_size: int = 1024
    learning_rate: float = 1.0
    decay: float = 0.0
    l2: float = 0.0
    sigmoid: str = "seg3"
    early_stopping: int = 0
    validation_fraction: float = 0.1


@dataclass
class Job:
    name: str
    path: Path
    network: Path
    protocol: str
    compute: list[str]
    key: list[str]
    label_party: str
    label: str
    positive: str
    parties: dict[str, PartySpec]
    model: LrParams
    model_type: str = "ss-lr"
    tree: TreeParams = field(default_factory=TreeParams)
    test_fraction: float = 0.2
    seed: int = 0
    model_to: list[str] = field(default_factory=list)
    frac_bits: int = 20
    timeout: float = 600.0
    psi: str = "rr22"
    split: str = "hash"
    class_weight: str | float | None = None  # "balanced", the positives' weight, or None (unweighted)

    @property
    def data_parties(self) -> list[str]:
        return [p for p, spec in self.parties.items() if spec.data is not None]

    @property
    def partner(self) -> str:
        return next(p for p in self.data_parties if p != self.label_party)

    def fingerprint(self) -> bytes:
        """What every party must agree on (not the data paths), as canonical JSON."""
        common = {"name": self.name, "protocol": self.protocol, "compute": self.compute, "key": self.key,
                  "label_party": self.label_party, "label": self.label, "positive": self.positive,
                  "test_fraction": self.test_fraction, "seed": self.seed, "model_to": self.model_to,
                  "frac_bits": self.frac_bits, "model": asdict(self.model), "parties": sorted(self.parties),
                  "model_type": self.model_type, "tree": asdict(self.tree),
                  "data_parties": sorted(self.data_parties), "split": self.split,
                  "class_weight": self.class_weight}
        return json.dumps(common, sort_keys=True).encode()


@pdataclass(config=STRICT)
class _JobSection:
    name: str
    network: RelPath
    compute: list[str]
    key: list[str]
    label_party: str
    label: str
    positive: str | int
    protocol: str = "semi2k"
    test_fraction: float = 0.2
    seed: int = 0
    model_to: list[str] = field(default_factory=list)
    frac_bits: int = 20
    timeout: float = 600.0
    psi: str = "rr22"
    split: Literal["hash", "ordered"] = "hash"


@pdataclass(config=STRICT)
class _PartySection:
    data: RelPath | None = None
    features: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)


@pdataclass(config=STRICT)
class _ModelSection:
    type: Literal["ss-lr", "ss-xgb"] = "ss-lr"
    epochs: int = 10
    batch_size: int = 1024
    learning_rate: float | None = None  # SS-LR's step (default 1.0); refused for ss-xgb
    decay: float = 0.0
    l2: float = 0.0
    sigmoid: str = "seg3"
    early_stopping: int = 0
    validation_fraction: float = 0.1
    trees: int = TreeParams.trees
    depth: int = TreeParams.depth
    bins: int = TreeParams.bins
    exact_values: int = TreeParams.exact_values
    fine_bins: int = TreeParams.fine_bins
    candidate_budget: int = TreeParams.candidate_budget
    reg_lambda: float = 0.0
    tree_learning_rate: float | None = None  # ss-xgb's shrinkage (default TreeParams'); refused for ss-lr
    class_weight: Literal["balanced"] | float | None = None


@pdataclass(config=STRICT)
class _JobFile:
    job: _JobSection
    parties: dict[str, _PartySection]
    model: _ModelSection = field(default_factory=_ModelSection)


def load_job(path: str | Path) -> Job:
    """The job file ``path``; ConfigError naming the file, line and key, or the rule
    the job breaks."""
    path = Path(path)
    doc, text = load_doc(path)
    raw = parse_table(_JobFile, doc, str(path), text, (), path.parent)
    if not raw.parties:
        raise ConfigError(f"{path}: no [parties.NAME] tables")
    parties = {name: PartySpec(name, spec.data, spec.features or None, spec.categorical or None)
               for name, spec in raw.parties.items()}
    j, m = raw.job, raw.model
    if m.type == "ss-xgb" and m.learning_rate is not None:
        raise ConfigError(f"{path} [model]: learning_rate is SS-LR's SGD step; for ss-xgb write tree_learning_rate "
                          f"(the trees' shrinkage, default {TreeParams().learning_rate})")
    written = doc.get("model", {}) if isinstance(doc, dict) else {}
    other = [k for k in (_LR_KEYS if m.type == "ss-xgb" else _TREE_KEYS) if k in written]
    if other:  # kept so that a job can switch type, but never silently
        log.warning("%s [model]: %s not used by type = %r", path, ", ".join(other), m.type)
    if m.type == "ss-lr" and m.tree_learning_rate is not None:
        raise ConfigError(f"{path} [model]: tree_learning_rate is for type = \"ss-xgb\"; SS-LR's step is "
                          "learning_rate")
    model = LrParams(epochs=m.epochs, batch_size=m.batch_size,
                     learning_rate=LrParams.learning_rate if m.learning_rate is None else m.learning_rate,
                     decay=m.decay, l2=m.l2, sigmoid=m.sigmoid, early_stopping=m.early_stopping,
                     validation_fraction=m.validation_fraction)
    tree = TreeParams(trees=m.trees, depth=m.depth, bins=m.bins, reg_lambda=m.reg_lambda, exact_values=m.exact_values,
                      fine_bins=m.fine_bins, candidate_budget=m.candidate_budget,
                      **({} if m.tree_learning_rate is None else {"learning_rate": m.tree_learning_rate}))
    job = Job(name=j.name, path=path, network=j.network, protocol=j.protocol, compute=j.compute, key=j.key,
              label_party=j.label_party, label=j.label, positive=str(j.positive), parties=parties, model=model,
              model_type=m.type, tree=tree, test_fraction=j.test_fraction, seed=j.seed, model_to=j.model_to,
              frac_bits=j.frac_bits, timeout=j.timeout, psi=j.psi, split=j.split,
              class_weight=m.class_weight if m.class_weight is None or isinstance(m.class_weight, str)
              else float(m.class_weight))  # 20 and 20.0 are the same job
    _validate(job, f"{path} [job]")
    return job


def _validate(job: Job, where: str) -> None:
    names = set(job.parties)
    for p in [*job.compute, job.label_party, *job.model_to]:
        if p not in names:
            raise ConfigError(f"{where}: party {p!r} is not one of [parties] ({', '.join(sorted(names))})")
    if job.protocol not in ("semi2k", "aby3") or len(job.compute) != 3 or len(set(job.compute)) != 3:
        raise ConfigError(f"{where}: protocol must be semi2k or aby3 with three distinct compute parties")
    if job.psi not in ("kkrt", "rr22", "ecdh"):
        raise ConfigError(f"{where}: psi must be kkrt, rr22 or ecdh, not {job.psi!r}")
    if len(job.data_parties) != 2 or job.label_party not in job.data_parties:
        raise ConfigError(f"{where}: exactly two parties hold data (vertical partition), one of them the label party")
    if job.protocol == "semi2k" and (job.compute[2] in job.data_parties or job.compute[2] in job.model_to):
        # semi2k's third compute party is the dealer, which knows every mask: a share revealed to it is a value
        raise ConfigError(f"{where}: semi2k's dealer (the third compute party, {job.compute[2]!r}) must hold no data "
                          "and receive no model: list the two data parties first in compute")
    if not job.key or not all(isinstance(k, str) for k in job.key):
        raise ConfigError(f"{where}: key must name at least one column")
    if not 0.0 <= job.test_fraction < 1.0:
        raise ConfigError(f"{where}: test_fraction must be in [0, 1) (0: no test rows)")
    if job.split not in SPLITS:
        raise ConfigError(f"{where}: split must be one of {', '.join(SPLITS)}")
    cw = job.class_weight
    if cw is not None and cw != "balanced" and (isinstance(cw, str) or not 0.0 < cw <= 1e4):
        raise ConfigError(f"{where}: class_weight must be \"balanced\" or a number in (0, 10000]")
    if job.model_type == "ss-xgb" and job.model.early_stopping:
        raise ConfigError(f"{where.replace('[job]', '[model]')}: early_stopping is SS-LR's (epochs on a held-out "
                          "part); trees have no early stopping: set trees")
    if job.model_type == "ss-xgb" and cw is not None and cw != "balanced":
        raise ConfigError(f"{where}: ss-xgb takes class_weight = \"balanced\" only (weights of mean 1 keep the "
                          "gradient sums in the fixed-point range)")
    if not 8 <= job.frac_bits <= 28:
        raise ConfigError(f"{where}: frac_bits must be between 8 and 28")
    m = job.model
    if m.sigmoid not in SIGMOIDS:
        raise ConfigError(f"{where}: sigmoid must be one of {', '.join(SIGMOIDS)}")
    if m.epochs < 1 or m.batch_size < 1 or m.learning_rate <= 0 or m.l2 < 0 or m.decay < 0:
        raise ConfigError(f"{where}: epochs and batch_size >= 1, learning_rate > 0, l2 and decay >= 0")
    t = job.tree
    if job.model_type == "ss-xgb" and (not 1 <= t.trees <= 500 or not 1 <= t.depth <= 6 or not 2 <= t.bins <= 64
                                       or not 0 <= t.exact_values <= 256 or not 0 <= t.fine_bins <= 256
                                       or not 0 <= t.candidate_budget <= 4096 or t.learning_rate <= 0
                                       or t.reg_lambda < 0 or job.frac_bits > 20):
        ranges = {"trees": (t.trees, 1, 500), "depth": (t.depth, 1, 6), "bins": (t.bins, 2, 64),
                  "exact_values": (t.exact_values, 0, 256), "fine_bins": (t.fine_bins, 0, 256),
                  "candidate_budget": (t.candidate_budget, 0, 4096)}
        bad = [f"{k} = {v} (allowed {lo}..{hi})" for k, (v, lo, hi) in ranges.items() if not lo <= v <= hi]
        bad += ["tree_learning_rate must be > 0"] * (t.learning_rate <= 0) + ["reg_lambda must be >= 0"] * (
            t.reg_lambda < 0) + [f"[job] frac_bits = {job.frac_bits} (trees need <= 20)"] * (job.frac_bits > 20)
        raise ConfigError(f"{where.replace('[job]', '[model]')}: " + "; ".join(bad))
    if m.early_stopping < 0 or not 0.0 < m.validation_fraction < 0.5:
        raise ConfigError(f"{where}: early_stopping (patience in epochs) >= 0, validation_fraction in (0, 0.5)")
