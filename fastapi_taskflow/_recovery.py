"""Adopting tasks from the shared pending store: recovery after a crash, released work,
transactional enqueues and tasks accepted by other instances."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._job import Job, Stage
from ._models import TaskRecord, TaskStatus

if TYPE_CHECKING:
    from ._manager import TaskManager
    from .backends.base import Coordinator

logger = logging.getLogger("fastapi_taskflow")


class Recovery:
    """The manager's side of the heartbeat (see :class:`LeaseKeeper`)."""

    def __init__(self, manager: TaskManager) -> None:
        self._m = manager

    def held_task_ids(self) -> list[str]:
        return [job.task_id for job in self._m.store if job.leased]

    def take_changed(self) -> list[TaskRecord]:
        """Copies of the records of this instance's tasks in the pending store that changed
        since the last beat, for the live view of other instances. A light job running its
        first attempt has no record (see :class:`~fastapi_taskflow._job.Job`): it was
        written ahead as running, and its record (start time, attempt) is built here."""
        changed = self._m._changed
        dispatcher = self._m._dispatcher
        if dispatcher is not None:
            for job in list(dispatcher.running.values()):
                if job.leased and job.light and job.started is not None:
                    changed[job.task_id] = job.record
        records = list(changed.values())
        changed.clear()
        return [record.model_copy() for record in records]

    def free_slots(self) -> int:
        dispatcher = self._m._dispatcher
        if dispatcher is None or not self._m.started:
            return 0
        return max(0, min(100, self._m.max_concurrent_tasks - dispatcher.busy()))

    async def cancel_requested(self, task_id: str) -> None:
        job = self._m.store.get(task_id)
        if job is not None and not job.record.status.is_terminal and not job.in_thread:
            await self._m.cancel(task_id, reason="cancelled on request (from another instance)")

    async def adopt(self, records: Sequence[TaskRecord]) -> None:
        """Run claimed tasks; a task that was running on an instance that died is re-run only
        if its function allows it, otherwise it is recorded as interrupted."""
        coordinator = self._m._coordinator
        assert coordinator is not None
        given_back: list[TaskRecord] = []
        for record in records:
            mine = self._m.store.get(record.task_id)
            if mine is not None and mine.stage is not Stage.DONE:
                mine.leased = True  # our own task, whose lease lapsed (backend outage)
                continue
            if mine is not None and mine.record.status.is_terminal:
                # Our own task, finished while the backend was away: its terminal record
                # (queued for history) completes it. Running it again, or marking it
                # interrupted, would overwrite the outcome it really had.
                if self._m._flusher is not None:
                    self._m._flusher.add(mine.record)
                continue
            if not self._m.started:
                # This instance began to shut down while the claim was in flight: the task
                # goes back at once, for a live instance, rather than when the lease ends.
                given_back.append(record)
                continue
            job = self._job_for(record)
            if job is None:
                logger.warning(
                    "fastapi-taskflow: task %s needs function %r, which is not registered on "
                    "instance %s; it is left for an instance that has it",
                    record.task_id,
                    record.func_name,
                    self._m.instance_id,
                )
                given_back.append(record)
                continue
            was_running = record.status is TaskStatus.RUNNING
            if was_running and not job.config.requeue_on_interrupt:
                assert self._m._executor is not None
                self._m._dispatcher.release(job)  # type: ignore[union-attr]
                self._m._executor.finish(
                    job,
                    TaskStatus.INTERRUPTED,
                    f"interrupted: instance {record.instance_id} stopped while the task was "
                    f"running; mark the function requeue_on_interrupt=True to re-run it",
                )
                continue
            self._m.dispatch(job)
        await _give_back(coordinator, self._m.instance_id, given_back)

    async def take(self, task_id: str) -> Job | None:
        """Claim one task that no live instance holds and return its local job."""
        coordinator = self._m._coordinator
        assert coordinator is not None
        claimed = await coordinator.claim(
            self._m.instance_id, lease_s=self._m.lease_s, limit=1, task_ids=[task_id]
        )
        if not claimed:
            return None
        job = self._job_for(claimed[0])
        if job is None:
            await _give_back(coordinator, self._m.instance_id, claimed)
        return job

    def _job_for(self, record: TaskRecord) -> Job | None:
        config = self._m.registry.get(record.func_name)
        if config is None:
            return None
        existing = self._m.store.get(record.task_id)
        if existing is not None and existing.stage is not Stage.DONE:
            return existing
        job = self._m.create(
            config.func, tuple(record.args), dict(record.kwargs),
            idempotency_key=record.idempotency_key, tags=record.tags,
            priority=record.priority,
            queue=record.queue if self._m._dispatcher and self._m._dispatcher.has_queue(
                record.queue) else None,
            source="transaction" if record.source == "transaction" else "requeue",
            task_id=record.task_id, created_at=record.created_at, write_ahead=False,
        )  # fmt: skip
        job.record.logs = list(record.logs)
        job.record.attempts = list(record.attempts)
        job.leased = True
        return job


async def _give_back(coordinator: Coordinator, owner: str, records: Sequence[TaskRecord]) -> None:
    """Release claimed tasks this instance will not run, for another instance to claim now.
    Only those that never started: releasing makes a task pending, and one that was running
    on an instance that died must still read as possibly run. That one keeps this lease
    until it ends, and the instance that claims it next records it as interrupted (or runs
    it again with ``requeue_on_interrupt``)."""
    pending = [record for record in records if record.status is TaskStatus.PENDING]
    if pending:
        await coordinator.release(owner, pending)
