"""The heartbeat of an instance in a shared deployment: leases, live view, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from ._models import TaskRecord
from .backends.base import Coordinator

logger = logging.getLogger("fastapi_taskflow")


class LeaseHost(Protocol):
    """What the heartbeat needs from the manager."""

    def held_task_ids(self) -> list[str]: ...

    def take_changed(self) -> list[TaskRecord]: ...

    def free_slots(self) -> int: ...

    async def adopt(self, records: Sequence[TaskRecord]) -> None: ...

    async def cancel_requested(self, task_id: str) -> None: ...


class LeaseKeeper:
    """Every ``interval`` seconds: renew this instance's leases, publish the state of its
    live tasks, act on cancel requests from other instances, and claim tasks that nobody
    holds (accepted elsewhere, released at a shutdown, or left by an instance that died).
    A failing beat is logged and retried at the next one; it never stops the app.
    """

    def __init__(
        self,
        host: LeaseHost,
        coordinator: Coordinator,
        *,
        owner: str,
        lease_s: float,
        interval: float,
    ) -> None:
        self._host = host
        self._coordinator = coordinator
        self._owner = owner
        self._lease_s = lease_s
        self._interval = interval
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.beats = 0
        # The last claim took as many tasks as there were free slots, so more may be
        # waiting: the manager pokes a beat as soon as a slot frees up instead of waiting
        # for the interval (a peer adopting a dead instance's backlog drains it at full
        # concurrency, not a batch per interval).
        self.backlog = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="taskflow-leases")

    def poke(self) -> None:
        """Run a beat now (for example after a transactional enqueue was committed)."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping.set()
            self._wake.set()
            await self._task
            self._task = None

    async def beat(self, *, reclaim_own: bool = False) -> None:
        coordinator, owner = self._coordinator, self._owner
        held = self._host.held_task_ids()
        if held:
            lost = await coordinator.renew(owner, held, lease_s=self._lease_s)
            if lost:
                logger.warning(
                    "fastapi-taskflow: instance %s lost the lease of %d running task(s) (%s); "
                    "another instance may run them. Raise lease_s if the event loop is "
                    "blocked for long periods.",
                    owner,
                    len(lost),
                    ", ".join(lost[:5]),
                )
        changed = self._host.take_changed()
        if changed:
            await coordinator.update(changed)
        for task_id in await coordinator.cancel_requests(owner):
            await self._host.cancel_requested(task_id)
        slots = self._host.free_slots()
        if slots > 0:
            claimed = await coordinator.claim(
                owner, lease_s=self._lease_s, limit=slots, reclaim_own=reclaim_own
            )
            self.backlog = len(claimed) >= slots
            if claimed:
                await self._host.adopt(claimed)
        self.beats += 1

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                await self.beat()
            except Exception as exc:
                logger.warning("fastapi-taskflow: heartbeat of %s failed: %s", self._owner, exc)
