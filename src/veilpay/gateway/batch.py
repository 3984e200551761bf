"""Coalescing calls to one partner: payments that wait for the same MPP at the same
time travel in one signed call.

Each message between processes costs a send, a wake-up and a parse on both sides,
and on two cores that, not the payment logic, is most of a payment's CPU
(docs/gateway.md, performance). A ``Coalescer`` keeps at most ``in_flight`` calls
open per partner: a payment that finds a free slot is sent at once, alone, so an
idle gateway adds no delay; payments that arrive while the slots are busy queue and
leave together, up to ``max_batch``, when a call returns. One call in flight gave
the largest batches and the most payments per second (bench/gateway.py: 558/s
against 524/s with two). Every item gets its own
answer or its own failure; a call that fails fails each of its items, which the
caller then treats like a single call that failed (outcome unknown, resolved later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Coalescer", "pause"]

log = logging.getLogger("veilpay.gateway")

# send(partner_id, items) -> one answer per item, in order; raises for the whole call.
Send = Callable[[str, list[dict[str, Any]]], Awaitable[list[dict[str, Any]]]]


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less if ``stop`` is set meanwhile (the background workers'
    lingers and intervals)."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)


class _Queue:
    __slots__ = ("busy", "waiting")

    def __init__(self) -> None:
        self.waiting: deque[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = deque()
        self.busy = 0


class Coalescer:
    def __init__(self, send: Send, max_batch: int = 64, in_flight: int = 1) -> None:
        if max_batch < 1 or in_flight < 1:
            raise ValueError("max_batch and in_flight must be at least 1")
        self._send, self.max_batch, self.in_flight = send, max_batch, in_flight
        self._queues: dict[str, _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, partner: str, item: dict[str, Any]) -> dict[str, Any]:
        """The partner's answer to ``item``; raises what the call that carried it raised."""
        q = self._queues.setdefault(partner, _Queue())
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        q.waiting.append((item, fut))
        if q.busy < self.in_flight:
            self._start(partner, q)
        return await fut

    def _start(self, partner: str, q: _Queue) -> None:
        batch = [q.waiting.popleft() for _ in range(min(self.max_batch, len(q.waiting)))]
        q.busy += 1
        task = asyncio.create_task(self._run(partner, q, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, partner: str, q: _Queue,
                   batch: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]]) -> None:
        try:
            answers = await self._send(partner, [item for item, _ in batch])
            if len(answers) != len(batch):
                raise ValueError(f"{len(answers)} answers to {len(batch)} items")
            for (_, fut), ans in zip(batch, answers, strict=True):
                if not fut.done():
                    fut.set_result(ans)
        except Exception as exc:  # noqa: BLE001 - every waiter learns how its call ended
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
        except BaseException:  # cancelled (shutdown): so are its waiters
            for _, fut in batch:
                fut.cancel()
            raise
        finally:
            q.busy -= 1
            if q.waiting and q.busy < self.in_flight:
                self._start(partner, q)

    async def aclose(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
