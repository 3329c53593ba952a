"""Batched writes to the backend: write-ahead of accepted tasks and the snapshot cycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from ._job import Job
from ._models import TaskRecord, TaskStatus
from .backends.base import Coordinator, SnapshotBackend

logger = logging.getLogger("fastapi_taskflow")

_URGENT = frozenset({TaskStatus.SUCCESS, TaskStatus.FAILED})


@dataclass(frozen=True, kw_only=True)
class WriteAhead:
    """Where and how accepted tasks are recorded before they run."""

    coordinator: Coordinator
    owner: str
    lease_s: float
    key_ttl_s: float


class Flusher:
    """Collects terminal records and saves them in batches.

    SUCCESS and FAILED wake the writer at once; every record that completes while a write is
    in flight joins the next batch, so a burst of completions shares a few transactions.
    Other terminal states wait for the periodic ``interval``. A record completing twice
    before a flush is written once. When a write fails, the batch is kept (up to
    ``max_buffer`` records, newest kept) and retried with backoff.

    With ``write_ahead``, accepted tasks are first added to the shared pending store, in
    the same cycle and before history: a task that already finished is not added (its
    history record completes it), so the pending store never keeps a finished task.
    """

    def __init__(
        self,
        backend: SnapshotBackend,
        *,
        interval: float,
        batch_size: int = 10_000,
        max_buffer: int = 1_000_000,
        write_ahead: WriteAhead | None = None,
    ) -> None:
        self._backend = backend
        self._write_ahead = write_ahead
        self._accepting: dict[str, tuple[Job, asyncio.Future[bool]]] = {}
        self._starting: dict[str, tuple[TaskRecord, asyncio.Future[None]]] = {}
        self._interval = interval
        self._batch_size = batch_size
        self._max_buffer = max_buffer
        self._dirty: dict[str, TaskRecord] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.written = 0
        self.dropped = 0
        self.healthy = True  # False from a failed write until the next one succeeds

    def add(self, record: TaskRecord) -> None:
        self._dirty.pop(record.task_id, None)
        self._dirty[record.task_id] = record
        if len(self._dirty) > self._max_buffer:
            oldest = next(iter(self._dirty))
            del self._dirty[oldest]
            self.dropped += 1
            logger.warning(
                "fastapi-taskflow: the write buffer is full (%d records); dropped the oldest "
                "unsaved record %s. Raise max_buffer or check the backend.",
                self._max_buffer,
                oldest,
            )
        if record.status in _URGENT:
            self._wake.set()

    def accept(self, job: Job) -> asyncio.Future[bool]:
        """Queue ``job`` for the pending store; the future says whether it was added (False:
        another instance already holds a task with this id)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._accepting[job.task_id] = (job, future)
        self._wake.set()
        return future

    def started(self, record: TaskRecord) -> asyncio.Future[None]:
        """Queue the ``running`` state of a task for the pending store; the future is done
        when it is saved. Instances that adopt a crashed instance's tasks rely on it to tell
        a task that never started from one that may have run."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._starting[record.task_id] = (record, future)
        self._wake.set()
        return future

    @property
    def backlog(self) -> int:
        return len(self._dirty)

    async def _write_ahead_batch(self) -> None:
        assert self._write_ahead is not None
        while self._accepting:
            batch = list(self._accepting.values())[: self._batch_size]
            live = [
                job.record.model_copy() for job, _ in batch if not job.record.status.is_terminal
            ]
            wal = self._write_ahead
            added = set(
                await wal.coordinator.accept(
                    live, owner=wal.owner, lease_s=wal.lease_s, key_ttl_s=wal.key_ttl_s
                )
            ) if live else set()  # fmt: skip
            for job, future in batch:
                del self._accepting[job.task_id]
                if not future.done():
                    future.set_result(job.record.status.is_terminal or job.task_id in added)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="taskflow-flusher")

    async def stop(self) -> None:
        """Stop the periodic loop (after a write in flight) and write what is buffered.

        The loop is asked to stop rather than cancelled, so a write is never cut in half.
        """
        if self._task is not None:
            self._stopping.set()
            self._wake.set()
            await self._task
            self._task = None
        await self.flush()

    async def _started_batch(self) -> None:
        assert self._write_ahead is not None
        while self._starting:
            batch = list(self._starting.values())[: self._batch_size]
            await self._write_ahead.coordinator.update([r.model_copy() for r, _ in batch])
            for record, future in batch:
                del self._starting[record.task_id]
                if not future.done():
                    future.set_result(None)

    async def flush(self) -> int:
        """Write every buffered record now; returns how many were written."""
        written = 0
        async with self._lock:
            if self._write_ahead is not None:
                await self._write_ahead_batch()
                await self._started_batch()
            while self._dirty:
                batch = list(self._dirty.values())[: self._batch_size]
                for record in batch:
                    del self._dirty[record.task_id]
                try:
                    await self._backend.save([r.model_copy() for r in batch])
                except BaseException:
                    for record in batch:  # keep what failed, unless a newer copy arrived
                        self._dirty.setdefault(record.task_id, record)
                    raise
                written += len(batch)
        self.written += written
        return written

    async def _loop(self) -> None:
        failures = 0
        while True:
            # Healthy: sleep until a SUCCESS/FAILED arrives or the interval passes. Failing:
            # back off, and let nothing but a stop request cut the wait short.
            if failures:
                event, wait = self._stopping, min(0.5 * 2 ** (failures - 1), 30.0)
            else:
                event, wait = self._wake, self._interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await event.wait()
            if self._stopping.is_set():
                return
            self._wake.clear()
            try:
                await self.flush()
                failures = 0
                if not self.healthy:
                    logger.warning("fastapi-taskflow: the backend is back; buffered writes saved")
                self.healthy = True
            except Exception as exc:
                failures += 1
                self.healthy = False
                if failures == 1 or failures % 10 == 0:
                    logger.warning(
                        "fastapi-taskflow: writing to the backend failed (%s); %d records and "
                        "%d accepted tasks are buffered and retried with backoff",
                        exc,
                        self.backlog,
                        len(self._accepting),
                    )
