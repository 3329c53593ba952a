"""The in-memory live view: every task this process knows, and a change feed."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator

from ._job import Job, Stage
from ._models import Seal, SealedRecord, TaskRecord, unseal
from ._registry import TaskConfig


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
    meant to persist: the flusher holds its own reference until the backend has it. A task
    that succeeded as a light job is kept as its seal (:meth:`seal`), a compact tuple; it
    becomes a job again only if something asks for its job (:meth:`get`).
    """

    def __init__(self, max_records: int) -> None:
        self.max_records = max_records
        self._jobs: dict[str, Job | Seal] = {}
        self._completed: OrderedDict[str, None] = OrderedDict()
        self._idempotency: dict[str, str] = {}
        self._subscribers: set[Subscription] = set()
        self._sealed_configs: dict[str, TaskConfig] = {}  # by name, for get() on a seal

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[Job]:
        """The jobs held here (a sealed task is no job: it has ended)."""
        return iter([job for job in self._jobs.values() if isinstance(job, Job)])

    def get(self, task_id: str) -> Job | None:
        entry = self._jobs.get(task_id)
        if not isinstance(entry, tuple):
            return entry
        # A sealed task asked for as a job (to cancel, delete or wait for it): it becomes one
        # again, kept in its place, so that later look-ups find this same object.
        job = Job(task_id, unseal(entry), self._sealed_configs[entry[1]], (), {}, None)
        job.stage = Stage.DONE
        self._jobs[task_id] = job
        return job

    def record(self, task_id: str) -> TaskRecord | None:
        """The record of ``task_id`` (for a sealed task, built for this caller alone)."""
        entry = self._jobs.get(task_id)
        if entry is None:
            return None
        return unseal(entry) if isinstance(entry, tuple) else entry.record

    def sealed_record(self, task_id: str) -> TaskRecord | None:
        """The record of ``task_id`` if it is sealed (built for this caller alone)."""
        entry = self._jobs.get(task_id)
        return unseal(entry) if isinstance(entry, tuple) else None

    def records(self) -> list[TaskRecord | SealedRecord]:
        """Every record held here; a sealed one as a :class:`SealedRecord` view."""
        return [
            SealedRecord(entry) if isinstance(entry, tuple) else entry.record
            for entry in list(self._jobs.values())
        ]

    def add(self, job: Job) -> None:
        self._jobs[job.task_id] = job
        key = job.key
        if key is not None:
            self._idempotency[key] = job.task_id
        self._completed.pop(job.task_id, None)
        if self._subscribers:
            self.changed(job.record)

    def add_light(self, job: Job) -> None:
        """:meth:`add` for a light job (new id, no idempotency key)."""
        self._jobs[job.task_id] = job
        if self._subscribers:
            self.changed(job.record)

    def by_idempotency_key(self, key: str) -> Job | None:
        task_id = self._idempotency.get(key)
        return self.get(task_id) if task_id is not None else None

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscribers)

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
        if len(completed) > self.max_records:
            self._evict()

    def seal(self, job: Job, seal: Seal) -> None:
        """Keep the light job that just succeeded as ``seal`` (no subscriber is listening:
        it would have been sent the record)."""
        task_id = job.task_id
        self._jobs[task_id] = seal
        self._sealed_configs[seal[1]] = job.config
        completed = self._completed
        completed[task_id] = None
        if len(completed) > self.max_records:
            self._evict()

    def _evict(self) -> None:
        completed, jobs = self._completed, self._jobs
        while len(completed) > self.max_records:
            task_id, _ = completed.popitem(last=False)
            old = jobs.pop(task_id, None)
            key = old.key if isinstance(old, Job) else None
            if key is not None and self._idempotency.get(key) == task_id:
                del self._idempotency[key]

    def reopen(self, job: Job) -> None:
        """A completed job is live again (retried in place)."""
        self._completed.pop(job.task_id, None)
        self.changed(job.record)

    def remove(self, task_id: str) -> None:
        job = self._jobs.pop(task_id, None)
        self._completed.pop(task_id, None)
        key = job.key if isinstance(job, Job) else None
        if key is not None and self._idempotency.get(key) == task_id:  # not a newer task's
            del self._idempotency[key]

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        subscription = Subscription(maxsize)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
