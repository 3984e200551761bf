"""A privacy node: its feed (``node.feed``), its jobs under its disclosure policy
(``node.jobs``), its disclosure ledger (``node.ledger``) and its metrics, put
together over one store. What it will reveal, when and to whom is written in
``node.jobs``; what it accepts as input, in ``node.feed``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import Engine

from veilpay.errors import ConfigError, KeyNotCertified, NodeError
from veilpay.net import Communicator
from veilpay.node.config import NodePolicy, RiskPolicy
from veilpay.node.feed import Feed
from veilpay.node.jobs import JOB_KINDS, Jobs
from veilpay.node.ledger import Ledger
from veilpay.node.risk import RiskService
from veilpay.sdk.authority import Authority, verify_entry
from veilpay.sdk.keys import PartyKeys, PublicEntry
from veilpay.sdk.shares import Privacy

__all__ = ["JOB_KINDS", "NodeMetrics", "NodeService", "PinnedPartners"]


def _now_ms() -> int:
    return int(time.time() * 1000)


class NodeMetrics:
    """The node's Prometheus metrics: refusals by code, feed items, jobs by outcome."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.refusals = Counter("veilpay_node_refusals", "Feed items and calls refused, by code", ["code"],
                                registry=self.registry)
        self.feed_batches = Counter("veilpay_node_feed_batches", "Feed batches applied", registry=self.registry)
        self.jobs = Counter("veilpay_node_jobs", "Jobs by kind and outcome", ["kind", "outcome"], registry=self.registry)
        self.ledger_entries = Gauge("veilpay_node_ledger_entries", "Entries in the disclosure ledger",
                                    registry=self.registry)
        # how many payments were scored, never which decision: these metrics are public
        self.risk_payments = Counter("veilpay_node_risk_payments", "Payments scored", registry=self.registry)
        self.risk_batch_seconds = Histogram("veilpay_node_risk_batch_seconds", "Time to score one micro-batch",
                                            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
                                            registry=self.registry)
        self.risk_batch_size = Histogram("veilpay_node_risk_batch_size", "Payments per micro-batch",
                                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)

    def refused(self, code: str) -> None:
        self.refusals.labels(code=code).inc()

    def refusal_count(self, code: str) -> float:
        return float(self.refusals.labels(code=code)._value.get())


class PinnedPartners:
    """The partner keys a node's operator pinned (their ``public.json`` files), by id,
    read again when a file changes (rotation, retirement), at most once a second. Each
    must be certified by the key authority the node pinned (``veilpay.sdk.authority``);
    a changed file that is not leaves the entries as they were until it is."""

    def __init__(self, paths: Sequence[Path], authority: Authority) -> None:
        self.paths, self.authority = list(paths), authority
        self._mtimes: tuple[float, ...] = ()
        self._checked = 0.0
        self._entries: dict[str, PublicEntry] = {}
        self()

    def __call__(self) -> dict[str, PublicEntry]:
        now = time.monotonic()
        if self._entries and now - self._checked < 1.0:
            return self._entries
        self._checked = now
        try:
            mtimes = tuple(p.stat().st_mtime for p in self.paths)
        except OSError as exc:
            if not self._entries:
                raise ConfigError(f"pinned partner key: {exc}") from exc
            return self._entries
        if mtimes != self._mtimes:
            entries: dict[str, PublicEntry] = {}
            try:
                for p in self.paths:
                    try:
                        e = PublicEntry.from_json(json.loads(p.read_text()))
                    except (OSError, json.JSONDecodeError) as exc:
                        raise ConfigError(f"{p}: {exc}") from exc
                    if e.role not in ("mpp", "acqp") or e.id in entries:
                        raise ConfigError(f"{p}: pin acquirers and MPPs, each once (got {e.role} {e.id!r})")
                    try:
                        verify_entry(e, self.authority)
                    except KeyNotCertified as exc:
                        raise ConfigError(f"{p}: {exc}") from exc
                    entries[e.id] = e
            except ConfigError:
                if not self._entries:
                    raise
                self._mtimes = mtimes  # keep the entries as they were; the owner has it certified
                return self._entries
            self._entries, self._mtimes = entries, mtimes
        return self._entries


class NodeService:
    """One privacy node. ``mesh(session)`` opens its TLS mesh with the other nodes for
    a job; ``partners()`` gives the partner keys it pinned; ``clock()`` the time in ms
    (its own clock: tests move it)."""

    def __init__(self, keys: PartyKeys, privacy: Privacy, engine: Engine, mesh: Callable[[bytes], Communicator],
                 partners: Callable[[], dict[str, PublicEntry]], policy: NodePolicy | None = None,
                 clock: Callable[[], int] = _now_ms, metrics: NodeMetrics | None = None,
                 risk_mesh: Callable[[bytes], Communicator] | None = None, risk_policy: RiskPolicy | None = None) -> None:
        if keys.id not in privacy.parties:
            raise NodeError(f"{keys.id!r} is not a node of the privacy network", "JOB_INVALID", 400)
        self.keys, self.privacy, self.engine = keys, privacy, engine
        self.policy = policy or NodePolicy()
        self.metrics = metrics or NodeMetrics()
        self.me = keys.id
        self.holder = self.me in privacy.nodes
        self.ledger = Ledger(engine, keys)
        self.feed = Feed(keys, privacy, engine, self.policy, partners, clock, self.metrics.refused)
        self.jobs = Jobs(keys, privacy, engine, mesh, self.policy, self.ledger, partners, clock, self.feed.applied,
                         lambda kind, outcome: self.metrics.jobs.labels(kind=kind, outcome=outcome).inc())
        self.metrics.ledger_entries.set(self.ledger.count())
        self.risk: RiskService | None = None
        if risk_mesh is not None and risk_policy is not None and risk_policy.enabled:
            self.risk = RiskService(keys, privacy, engine, risk_mesh, partners, risk_policy, self.policy.max_skew_s,
                                    clock, self.metrics)

    def applied(self) -> int:
        return self.feed.applied()

    def ingest(self, batch: Any) -> dict[str, Any]:
        out = self.feed.ingest(batch)
        self.metrics.feed_batches.inc()
        return out

    def run_job(self, job: Any) -> dict[str, Any]:
        try:
            return self.jobs.run(job)
        finally:
            self.metrics.ledger_entries.set(self.ledger.count())

    def ledger_page(self, after: Any, limit: Any, chain: Any = "disclosure") -> dict[str, Any]:
        """Ledger records after ``after`` (at most ``limit``, up to 1000), and the head, of
        the disclosure ledger or (``chain = "risk"``) the scoring's risk ledger."""
        if chain not in ("disclosure", "risk") or (chain == "risk" and self.risk is None):
            raise NodeError("ledger: 'chain' is disclosure, or risk at a node that scores", "LEDGER_INVALID", 400)
        book = self.ledger if chain == "disclosure" else self.risk.book  # type: ignore[union-attr]
        if isinstance(after, bool) or not isinstance(after, int) or after < 0 or isinstance(limit, bool) \
                or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise NodeError("ledger: 'after' >= 0 and 'limit' 1..1000 are integers", "LEDGER_INVALID", 400)
        seq, head = book.head()
        return {"node": self.me, "head": {"seq": seq, "hash": head}, "records": book.export(after, limit)}
