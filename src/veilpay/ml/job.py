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
    test_fraction = 0.2
    seed = 7
    model_to = ["wallet"]               # who receives the model; [] keeps it shared
    frac_bits = 20

    [parties.wallet]
    data = "wallet.csv"                 # each party reads only its own entry
    features = ["funded_amnt", "term"]  # default: every column but the key and label
    categorical = ["term"]              # default: the non-numeric columns

    [parties.partner]
    data = "partner.csv"

    [parties.helper]                    # no data: the dealer or third compute party

    [model]
    type = "ss-lr"                      # or "ss-xgb": trees, depth, bins, learning_rate, reg_lambda
    epochs = 10
    batch_size = 1024
    learning_rate = 1.0
    decay = 0.0                         # lr_t = learning_rate / (1 + decay * epoch)
    l2 = 0.0
    sigmoid = "seg3"                    # t1 | t3 | seg3 | exact
    early_stopping = 0                  # patience in epochs; 0 = off
    validation_fraction = 0.1           # of the training rows, held out when early_stopping > 0
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from veilpay.errors import ConfigError
from veilpay.ml.sstree import TreeParams

__all__ = ["SIGMOIDS", "Job", "LrParams", "PartySpec", "load_job"]

SIGMOIDS = ("t1", "t3", "seg3", "exact")
MODEL_TYPES = ("ss-lr", "ss-xgb")


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
    psi: str = "kkrt"

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
                  "data_parties": sorted(self.data_parties)}
        return json.dumps(common, sort_keys=True).encode()


def _get(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    if key not in table:
        if default is None:
            raise ConfigError(f"{where}: missing {key!r}")
        return default
    value = table[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def load_job(path: str | Path) -> Job:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    where = f"{path} [job]"
    j = raw.get("job")
    if not isinstance(j, dict):
        raise ConfigError(f"{path}: no [job] table")
    parties_raw = raw.get("parties")
    if not isinstance(parties_raw, dict) or not parties_raw:
        raise ConfigError(f"{path}: no [parties.NAME] tables")
    parties = {}
    for name, spec in parties_raw.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{path} [parties.{name}]: must be a table")
        w = f"{path} [parties.{name}]"
        data = spec.get("data")
        if data is not None and not isinstance(data, str):
            raise ConfigError(f"{w}: 'data' must be a path")
        parties[name] = PartySpec(name, (path.parent / data) if data else None,
                                  _get(spec, "features", list, w, default=[]) or None,
                                  _get(spec, "categorical", list, w, default=[]) or None)
    m = raw.get("model", {})
    if not isinstance(m, dict):
        raise ConfigError(f"{path}: [model] must be a table")
    mtype = _get(m, "type", str, f"{path} [model]", default="ss-lr")
    if mtype not in MODEL_TYPES:
        raise ConfigError(f"{path} [model]: type {mtype!r} is not built; choose one of {', '.join(MODEL_TYPES)}")
    wm = f"{path} [model]"
    model = LrParams(
        epochs=_get(m, "epochs", int, wm, default=10), batch_size=_get(m, "batch_size", int, wm, default=1024),
        learning_rate=float(_get(m, "learning_rate", (int, float), wm, default=1.0)),
        decay=float(_get(m, "decay", (int, float), wm, default=0.0)),
        l2=float(_get(m, "l2", (int, float), wm, default=0.0)), sigmoid=_get(m, "sigmoid", str, wm, default="seg3"),
        early_stopping=_get(m, "early_stopping", int, wm, default=0),
        validation_fraction=float(_get(m, "validation_fraction", (int, float), wm, default=0.1)))
    tree = TreeParams(
        trees=_get(m, "trees", int, wm, default=10), depth=_get(m, "depth", int, wm, default=3),
        bins=_get(m, "bins", int, wm, default=8),
        learning_rate=float(_get(m, "learning_rate", (int, float), wm, default=0.3)),
        reg_lambda=float(_get(m, "reg_lambda", (int, float), wm, default=0.0)))
    job = Job(
        name=_get(j, "name", str, where), path=path, network=path.parent / _get(j, "network", str, where),
        protocol=_get(j, "protocol", str, where, default="semi2k"), compute=_get(j, "compute", list, where),
        key=_get(j, "key", list, where), label_party=_get(j, "label_party", str, where),
        label=_get(j, "label", str, where), positive=str(_get(j, "positive", (str, int), where)),
        parties=parties, model=model, model_type=mtype, tree=tree,
        test_fraction=float(_get(j, "test_fraction", (int, float), where, default=0.2)),
        seed=_get(j, "seed", int, where, default=0), model_to=_get(j, "model_to", list, where, default=[]) or [],
        frac_bits=_get(j, "frac_bits", int, where, default=20),
        timeout=float(_get(j, "timeout", (int, float), where, default=600.0)),
        psi=_get(j, "psi", str, where, default="kkrt"),
    )
    _validate(job, where)
    return job


def _validate(job: Job, where: str) -> None:
    names = set(job.parties)
    for p in [*job.compute, job.label_party, *job.model_to]:
        if p not in names:
            raise ConfigError(f"{where}: party {p!r} is not one of [parties] ({', '.join(sorted(names))})")
    if job.protocol not in ("semi2k", "aby3") or len(job.compute) != 3 or len(set(job.compute)) != 3:
        raise ConfigError(f"{where}: protocol must be semi2k or aby3 with three distinct compute parties")
    if job.psi not in ("kkrt", "ecdh"):
        raise ConfigError(f"{where}: psi must be kkrt or ecdh, not {job.psi!r}")
    if len(job.data_parties) != 2 or job.label_party not in job.data_parties:
        raise ConfigError(f"{where}: exactly two parties hold data (vertical partition), one of them the label party")
    if not job.key or not all(isinstance(k, str) for k in job.key):
        raise ConfigError(f"{where}: key must name at least one column")
    if not 0.0 < job.test_fraction < 1.0:
        raise ConfigError(f"{where}: test_fraction must be between 0 and 1")
    if not 8 <= job.frac_bits <= 28:
        raise ConfigError(f"{where}: frac_bits must be between 8 and 28")
    m = job.model
    if m.sigmoid not in SIGMOIDS:
        raise ConfigError(f"{where}: sigmoid must be one of {', '.join(SIGMOIDS)}")
    if m.epochs < 1 or m.batch_size < 1 or m.learning_rate <= 0 or m.l2 < 0 or m.decay < 0:
        raise ConfigError(f"{where}: epochs and batch_size >= 1, learning_rate > 0, l2 and decay >= 0")
    t = job.tree
    if job.model_type == "ss-xgb" and (not 1 <= t.trees <= 500 or not 1 <= t.depth <= 6 or not 2 <= t.bins <= 64
                                       or t.learning_rate <= 0 or t.reg_lambda < 0 or job.frac_bits > 20):
        raise ConfigError(f"{where}: ss-xgb needs trees 1..500, depth 1..6, bins 2..64, learning_rate > 0, "
                          "reg_lambda >= 0 and frac_bits <= 20")
    if m.early_stopping < 0 or not 0.0 < m.validation_fraction < 0.5:
        raise ConfigError(f"{where}: early_stopping (patience in epochs) >= 0, validation_fraction in (0, 0.5)")
