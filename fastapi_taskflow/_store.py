"""The in-memory live view: every task this process knows, and a change feed."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator

from ._job import Job
from ._models import TaskRecord


class Subscription:
    """A bounded stream of changed records for one listener (the dashboard's SSE)."""

    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[TaskRecord] = asyncio.Queue(maxsize)
        self.overflowed = False

    def push(self, record: TaskRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:
            # The listener is too slow: drop the backlog and tell it to reload once.
            self.overflowed = True
            while not self.queue.empty():
                self.queue.get_nowait()


class TaskStore:
    """Jobs by id. Completed ones beyond ``max_records`` are dropped, oldest first.

    Only live (pending/running) jobs are never evicted. Eviction does not lose data that is
    meant to persist: the flusher holds its own reference until the backend has it.
    """

    def __init__(self, max_records: int) -> None:
        self.max_records = max_records
        self._jobs: dict[str, Job] = {}
        self._completed: OrderedDict[str, None] = OrderedDict()
        self._idempotency: dict[str, str] = {}
        self._subscribers: set[Subscription] = set()

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self._jobs.values()))

    def get(self, task_id: str) -> Job | None:
        return self._jobs.get(task_id)

    def add(self, job: Job) -> None:
        self._jobs[job.task_id] = job
        key = job.record.idempotency_key
        if key is not None:
            self._idempotency[key] = job.task_id
        self._completed.pop(job.task_id, None)
        if self._subscribers:
            self.changed(job.record)

    def by_idempotency_key(self, key: str) -> Job | None:
        task_id = self._idempotency.get(key)
        return self._jobs.get(task_id) if task_id is not None else None

    def changed(self, record: TaskRecord) -> None:
        for subscription in self._subscribers:
            subscription.push(record)

    def completed(self, job: Job) -> None:
        """Note that ``job`` reached a terminal state; evict the oldest beyond the cap."""
        completed, task_id = self._completed, job.task_id
        if task_id in completed:
            completed.move_to_end(task_id)
        else:
            completed[task_id] = None  # (a new key goes last)
        if self._subscribers:
            self.changed(job.record)
        while len(completed) > self.max_records:
            task_id, _ = completed.popitem(last=False)
            old = self._jobs.pop(task_id, None)
            key = old.record.idempotency_key if old is not None else None
            if key is not None and self._idempotency.get(key) == task_id:
                del self._idempotency[key]

    def reopen(self, job: Job) -> None:
        """A completed job is live again (retried in place)."""
        self._completed.pop(job.task_id, None)
        self.changed(job.record)

    def remove(self, task_id: str) -> None:
        job = self._jobs.pop(task_id, None)
        self._completed.pop(task_id, None)
        key = job.record.idempotency_key if job is not None else None
        if key is not None and self._idempotency.get(key) == task_id:  # not a newer task's
            del self._idempotency[key]

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        subscription = Subscription(maxsize)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
