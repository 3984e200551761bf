"""The gateway service as the app routes to it: a small façade that composes the parts
and names the operations.

The parts, each with one job: ``intake`` (authentication, replay guard, request
checks), ``ledger`` (every SQL statement, on the ``Database``'s threads), ``mpp``
(signed calls to the MPPs, coalesced into payBatch), ``machine`` (the payment, cancel
and refund state machine and the resolver), ``answers`` (answer bodies and webhooks),
``reports`` (lists and settlement summaries) and ``settlement`` (the privacy nodes'
settlement and analytics runs)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from veilpay.db import Database
from veilpay.gateway import settlement
from veilpay.gateway.batch import Coalescer
from veilpay.gateway.config import GatewayConfig
from veilpay.gateway.intake import Intake
from veilpay.gateway.ledger import Ledger
from veilpay.gateway.link import PartnerLink
from veilpay.gateway.machine import PaymentMachine
from veilpay.gateway.mpp import MppLink, MppUnreachable
from veilpay.gateway.nodes import NodeLink
from veilpay.gateway.observe import Metrics
from veilpay.gateway.reports import Reports
from veilpay.sdk.directory import Directory
from veilpay.sdk.keys import PartyKeys

__all__ = ["GatewayService", "MppUnreachable"]


class GatewayService:
    """One gateway's parts, wired: the operations of the signed API (``pay``,
    ``inquiry_payment``, ``cancel``, ``refund``, ``inquiry_refund``, ``list_payments``,
    ``settlement_summary``), authentication, the resolver and the operator's runs."""

    def __init__(self, cfg: GatewayConfig, keys: PartyKeys, directory: Callable[[], Directory], db: Database,
                 http: PartnerLink, metrics: Metrics, wake_outbox: Callable[[], None],
                 nodes: NodeLink | None = None) -> None:
        self.cfg, self.db, self.nodes = cfg, db, nodes
        self.ledger = Ledger(db)
        self.intake = Intake(cfg, directory, self.ledger, nodes.privacy if nodes is not None else None)
        self.mpp = MppLink(cfg, keys, directory, http, metrics)
        self.machine = PaymentMachine(cfg, directory, self.ledger, self.intake, self.mpp, metrics, wake_outbox, nodes)
        self.reports = Reports(self.ledger, nodes is not None)
        # the operations the app routes to
        self.pay = self.machine.pay
        self.inquiry_payment = self.machine.inquiry_payment
        self.cancel = self.machine.cancel
        self.refund = self.machine.refund
        self.inquiry_refund = self.machine.inquiry_refund
        self.list_payments = self.reports.list_payments
        self.settlement_summary = self.reports.settlement_summary
        self.authenticate = self.intake.authenticate
        self.guard_replay = self.intake.guard_replay
        self.resolve_pending = self.machine.resolve_pending

    @property
    def engine(self) -> Engine:
        return self.db.engine

    @property
    def pay_calls(self) -> Coalescer | None:
        """The payments waiting for a payBatch call (None: one call per payment)."""
        return self.mpp.pay_calls

    @property
    def hidden(self) -> bool:
        """Amounts are sealed and secret-shared to privacy nodes."""
        return self.nodes is not None

    async def purge_seen(self) -> int:
        """Forget the replay guard's nonces whose window has passed."""
        return await self.ledger.purge_seen(int(time.time() * 1000))

    async def settle(self, period: Any) -> dict[str, Any]:
        return await settlement.settle(self.ledger, self.nodes, Path(self.cfg.settlement_dir), period)

    async def analytics(self, period: Any) -> dict[str, Any]:
        return await settlement.analytics(self.nodes, period)

    async def aclose(self) -> None:
        await self.mpp.aclose()
