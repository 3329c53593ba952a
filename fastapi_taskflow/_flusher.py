"""Batched writes to the backend: write-ahead of accepted tasks and the snapshot cycle."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import ChainMap
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

from ._gate import Gate
from ._job import Job, document_of
from ._models import Accepted, Finished, Seal, TaskRecord, TaskStatus, finished_id
from .backends.base import Coordinator, SnapshotBackend

logger = logging.getLogger("fastapi_taskflow")

_URGENT = frozenset({TaskStatus.SUCCESS, TaskStatus.FAILED})
# While tasks flow through write-ahead, history rides along with every cycle at most this
# often, or once this many finished records wait (see Flusher._history_may_wait).
HISTORY_DELAY_S = 0.05
HISTORY_BATCH = 1_000
# Write-ahead cycles in flight at once where the backend takes writes on several connections
# (see Flusher): tasks accepted while one cycle's write is in the database are written by a
# second one meanwhile, instead of waiting for the first to return.
PIPELINED_CYCLES = 2

_Accepted = tuple[Job, "asyncio.Future[bool]", Gate[Job]]
_Starting = tuple[Job, Gate[Job]]


@runtime_checkable
class CycleWriter(Protocol):
    """A coordinator that writes a flush cycle in one transaction (the SQL one)."""

    async def write_cycle(
        self,
        accepted: Sequence[Accepted],
        *,
        owner: str | None,
        lease_s: float,
        key_ttl_s: float,
        running: Sequence[str],
        finished: Sequence[Finished],
        finished_pending: Collection[str] | None = None,
    ) -> list[str]: ...


class DocumentAcceptor(Protocol):
    """A coordinator whose ``accept`` also takes :class:`PendingDocument` entries (it says so
    with a class attribute ``_accepts_documents = True``): the built-in ones."""

    async def accept(
        self,
        records: Sequence[Accepted],
        *,
        owner: str | None,
        lease_s: float,
        key_ttl_s: float,
        connection: Any = None,
    ) -> list[str]: ...


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

    When the backend allows it (:meth:`SnapshotBackend._history_beside_write_ahead`), history
    is written by a task of its own, beside the write-ahead cycles rather than inside them:
    tasks waiting for their write-ahead never wait behind a batch of history. A task
    accepted again under the id of a record not saved yet (a retry in place) is held back
    until that record is saved, since saving it removes the id from the pending store.
    There, too, up to ``PIPELINED_CYCLES`` write-ahead cycles are in flight at once, each
    on its own connection with the tasks it took from the queue when it began: tasks
    accepted while one cycle's write is in the database are written by another meanwhile.
    Whatever else needs the writes to stand still (:meth:`flush`, :meth:`withdrawn`, a
    cycle after a failure) waits for every cycle in flight and holds them all off.
    """

    def __init__(
        self,
        backend: SnapshotBackend,
        *,
        interval: float,
        batch_size: int = 10_000,
        max_buffer: int = 1_000_000,
        write_ahead: WriteAhead | None = None,
        claim: Callable[[Job], bool] | None = None,
    ) -> None:
        self._backend = backend
        self._write_ahead = write_ahead
        # Asked for each accepted task as its write-ahead is prepared: True if the task took
        # a slot to start the moment the write is durable, which then records it as running
        # (one write instead of a write-ahead and then a running mark).
        self._claim = claim
        # Tasks to write ahead and running marks to save, each with the gate of its batch
        # (the gate still collecting is the last one; the next write seals it).
        # Both hold every entry until its write commits; the queues only those no write has
        # taken yet (a write that fails gives its entries back).
        self._accepting: dict[str, _Accepted] = {}
        self._starting: dict[str, _Starting] = {}
        self._accept_queue: dict[str, _Accepted] = {}
        self._start_queue: dict[str, _Starting] = {}
        self._accept_gate: Gate[Job] | None = None
        self._start_gate: Gate[Job] | None = None
        # A coordinator that writes a whole cycle (accepted, started, finished) in one
        # transaction, when it is the backend's own.
        self._one_transaction: CycleWriter | None = None
        # Whether the coordinator takes a light job's write-ahead as a PendingDocument
        # (built from the job's fields) rather than a record (the built-in ones do).
        self._documents = write_ahead is not None and (
            getattr(write_ahead.coordinator, "_accepts_documents", False) is True
        )
        if write_ahead is not None and backend.coordinator() is write_ahead.coordinator:
            coordinator = write_ahead.coordinator
            if isinstance(coordinator, CycleWriter):
                self._one_transaction = coordinator
        self._interval = interval
        self._batch_size = batch_size
        self._max_buffer = max_buffer
        # Finished records to save; a light task's as its seal, made a record when written
        # (so that what waits here is one object the garbage collector does not track).
        self._dirty: dict[str, Finished] = {}
        # Buffered records known to have no row in the pending store (never written
        # ahead or adopted): their history write skips the pending-store delete.
        self._no_pending: set[str] = set()
        self._saving: dict[str, Finished] = {}  # the batch being written, till committed
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # taken with every slot: writes stand still (_exclusive)
        # History writes, whether in a cycle or beside it (``_history_lock``), one at a time.
        self._history_lock = asyncio.Lock()
        self._beside = write_ahead is not None and backend._history_beside_write_ahead()
        # Write cycles in flight at once: one, or PIPELINED_CYCLES beside history.
        self._lanes = PIPELINED_CYCLES if self._beside else 1
        self._slots = asyncio.Semaphore(self._lanes)
        self._cycles: set[asyncio.Task[None]] = set()
        self._failures = 0  # consecutive failed cycles (the loop backs off)
        self._beside_task: asyncio.Task[None] | None = None
        self._beside_failed = False  # then history goes in the cycles until a write succeeds
        self._history_first = False  # an accepted id may have a record not saved yet
        self.written = 0
        self.dropped = 0
        self.healthy = True  # False from a failed write until the next one succeeds
        self._history_at = 0.0  # loop time of the last history write

    def add(self, record: TaskRecord, *, pending: bool = True) -> None:
        """Buffer a finished record for history. ``pending=False`` says the task never had
        a row in the shared pending store, which spares its write a delete there."""
        self._dirty.pop(record.task_id, None)
        self._dirty[record.task_id] = record
        if pending:
            self._no_pending.discard(record.task_id)
        else:
            self._no_pending.add(record.task_id)
        if len(self._dirty) > self._max_buffer:
            self._drop_oldest()
        if record.status in _URGENT:
            self._wake.set()

    def add_sealed(self, seal: Seal, *, pending: bool = False) -> None:
        """:meth:`add` for a light task that succeeded (a new id), kept as its seal until it
        is written. ``pending``: it was written ahead (it may have a row in the pending
        store)."""
        task_id = seal[0]
        self._dirty[task_id] = seal
        if not pending:
            self._no_pending.add(task_id)
        if len(self._dirty) > self._max_buffer:
            self._drop_oldest()
        self._wake.set()

    def _drop_oldest(self) -> None:
        oldest = next(iter(self._dirty))
        del self._dirty[oldest]
        self._no_pending.discard(oldest)
        self.dropped += 1
        logger.warning(
            "fastapi-taskflow: the write buffer is full (%d records); dropped the oldest "
            "unsaved record %s. Raise max_buffer or check the backend.",
            self._max_buffer,
            oldest,
        )

    def accept(self, job: Job) -> asyncio.Future[bool]:
        """Queue ``job`` for the pending store; the future says whether it was added (False:
        another instance already holds a task with this id). It has no callbacks: wait for
        it with :meth:`durable` or :meth:`hold`, which share one gate per batch."""
        gate = self._accept_gate
        if gate is None:
            gate = self._accept_gate = Gate()
        gate.expected += 1
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        task_id = job.task_id
        self._accepting[task_id] = self._accept_queue[task_id] = (job, future, gate)
        if task_id in self._dirty or task_id in self._saving:
            self._history_first = True
        self._wake.set()
        return future

    def hold(self, job: Job, then: Callable[[Job], None], *, timeout_s: float) -> bool:
        """Call ``then(job)`` once ``job``'s write-ahead batch is written, or ``timeout_s``
        after the batch began; False (nothing held) if that moment has already come."""
        entry = self._accepting.get(job.task_id)
        return entry is not None and entry[2].hold(job, then, timeout_s)

    async def durable(self, job: Job, *, timeout_s: float) -> None:
        """Return once ``job``'s write-ahead batch is written, or ``timeout_s`` after it
        began (the backend is slow or unreachable)."""
        entry = self._accepting.get(job.task_id)
        if entry is not None:
            await entry[2].wait(timeout_s)

    def started(self, job: Job) -> Gate[Job]:
        """Queue the ``running`` state of a task about to start for the pending store; the
        gate opens when it is saved (``gate.wait`` is then True) or times out. Instances
        that adopt a crashed instance's tasks rely on it to tell a task that never started
        from one that may have run."""
        gate = self._start_gate
        if gate is None:
            gate = self._start_gate = Gate()
        gate.expected += 1
        self._starting[job.task_id] = self._start_queue[job.task_id] = (job, gate)
        self._wake.set()
        return gate

    @property
    def backlog(self) -> int:
        return len(self._dirty)

    def unsaved(self) -> Mapping[str, Finished]:
        """Records not committed to the backend yet: buffered or in a write in flight
        (a live view, not a copy)."""
        return ChainMap(self._dirty, self._saving)

    @contextlib.asynccontextmanager
    async def withdrawn(self, task_id: str) -> AsyncIterator[Finished | None]:
        """Take ``task_id`` out of the buffer once no write is in flight, and hold writes
        off while the caller deletes it from the backend; yields the unsaved record, if any.

        If the caller fails, the record is buffered again (nothing is lost).
        """
        async with self._exclusive(), self._history_lock:
            record = self._dirty.pop(task_id, None)
            self._no_pending.discard(task_id)  # (a record buffered again may have a row)
            try:
                yield record
            except BaseException:
                if record is not None:
                    self._dirty.setdefault(task_id, record)
                raise

    async def _write_ahead_batch(self) -> None:
        # Records are passed as they are, not copied: a coordinator reads them before its
        # first await, and a task does not start before its record is written.
        wal = self._write_ahead
        assert wal is not None
        while self._accept_queue:
            # Sealed before each write: tasks accepted while it is in flight join a new
            # gate, which this write does not open (its batch is taken now).
            self._accept_gate = None
            batch = self._to_accept()
            if not batch:
                return
            # (documents only for a coordinator that takes them: see _documents)
            accept = cast(DocumentAcceptor, wal.coordinator).accept
            with self._taken(batch, []):
                live = self._ahead(batch)
                added = set(
                    await accept(
                        live, owner=wal.owner, lease_s=wal.lease_s, key_ttl_s=wal.key_ttl_s
                    )
                ) if live else set()  # fmt: skip
            self._settle_accepted(batch, added)

    def _to_accept(self) -> list[_Accepted]:
        """Take up to a batch of accepted tasks to write ahead off the queue. One that reuses
        the id of a record not saved yet (a retry in place) is held back until that record
        is saved, since saving it removes the id from the pending store."""
        queue = self._accept_queue
        size = self._batch_size
        if not self._history_first:
            return _take(queue, queue.values(), size)
        unsaved = self._dirty.keys() | self._saving.keys()
        ready = [entry for entry in queue.values() if entry[0].task_id not in unsaved]
        if len(ready) == len(queue):
            self._history_first = False
        return _take(queue, ready, size)

    def _to_start(self) -> list[_Starting]:
        """Take up to a batch of running marks to save off the queue."""
        return _take(self._start_queue, self._start_queue.values(), self._batch_size)

    @contextlib.contextmanager
    def _taken(self, accepting: list[_Accepted], starting: list[_Starting]) -> Iterator[None]:
        """Give entries taken for a write back to the front of their queues if it fails,
        to be written again (unless a newer entry replaced one meanwhile)."""
        try:
            yield
        except BaseException:
            back_a = {e[0].task_id: e for e in accepting if self._accepting.get(e[0].task_id) is e}
            self._accept_queue = back_a | self._accept_queue
            back_s = {e[0].task_id: e for e in starting if self._starting.get(e[0].task_id) is e}
            self._start_queue = back_s | self._start_queue
            raise

    def _ahead(self, batch: list[_Accepted]) -> list[Accepted]:
        """What to write ahead for ``batch``: a task that ended already is left out, and one
        that claims its slot now goes as running. Its own record says running from here on,
        as the shared store will: the task holds its slot and starts the moment this write
        is durable. A light job not started yet goes as a document built from its fields
        where the coordinator takes one (it stays light)."""
        claim = self._claim
        documents = self._documents
        records: list[Accepted] = []
        for job, _, _ in batch:
            if documents and job.light and job.started is None:
                status = TaskStatus.PENDING
                if claim is not None and claim(job):
                    status = TaskStatus.RUNNING
                records.append(document_of(job, status))
                continue
            record = job.record
            status = record.status
            if status.is_terminal:
                continue
            if claim is not None and status is TaskStatus.PENDING and claim(job):
                record.__dict__["status"] = TaskStatus.RUNNING
            records.append(record)
        return records

    def _settle_accepted(self, batch: list[_Accepted], added: set[str]) -> None:
        for entry in batch:
            job, future, gate = entry
            if self._accepting.get(job.task_id) is entry:
                del self._accepting[job.task_id]
            if future.done():
                pass
            elif job.ended:
                # Ended before it was written ahead (its request failed, say): nothing to
                # add, and its history record completes it. Unless its id comes from an
                # idempotency key: then it may be another task's (in history, or pending
                # on another instance), which its record would overwrite; it is dropped.
                future.set_result(job.key is None)
            else:
                future.set_result(job.task_id in added)
            gate.settle()

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
        while self._start_queue:
            self._start_gate = None  # (as in _write_ahead_batch)
            batch = self._to_start()
            with self._taken([], batch):
                await self._write_ahead.coordinator.update([_running(job) for job, _ in batch])
            self._settle_started(batch)

    def _settle_started(self, batch: list[_Starting]) -> None:
        for entry in batch:
            job, gate = entry
            if self._starting.get(job.task_id) is entry:
                del self._starting[job.task_id]
            gate.settle()

    async def _one_cycle(self, writer: CycleWriter, *, history: bool) -> int:
        """Write a batch of accepted tasks and running marks, with the finished records
        waiting (``history``), in one transaction; return how many finished records were
        saved. What is left over (more than a batch) is written by the separate steps."""
        wal = self._write_ahead
        assert wal is not None
        if not (self._accept_queue or self._start_queue):  # history alone: save(), as always
            return 0
        self._accept_gate = self._start_gate = None  # later ones wait for the next write
        accepting = self._to_accept()
        starting = self._to_start()
        if not (accepting or starting):
            return 0
        finished = list(itertools.islice(self._dirty.values(), self._batch_size * history))
        with self._taken(accepting, starting), self._writing(finished):
            added = await writer.write_cycle(
                self._ahead(accepting),
                owner=wal.owner, lease_s=wal.lease_s, key_ttl_s=wal.key_ttl_s,
                running=[job.task_id for job, _ in starting], finished=finished,
                finished_pending=self._pending_of(finished),
            )  # fmt: skip
        self._settle_accepted(accepting, set(added))
        self._settle_started(starting)
        return len(finished)

    def _pending_of(self, records: Sequence[Finished]) -> set[str]:
        """The ids among ``records`` that may have a row in the pending store."""
        no_pending = self._no_pending
        ids = (finished_id(r) for r in records)
        return {task_id for task_id in ids if task_id not in no_pending}

    @contextlib.contextmanager
    def _writing(self, records: list[Finished]) -> Iterator[None]:
        """Move ``records`` from the buffer to the write in flight for the body; put them
        back if it fails (unless a newer copy arrived), forget their hints if it succeeds."""
        ids = [finished_id(record) for record in records]
        dirty, saving = self._dirty, self._saving
        for task_id, record in zip(ids, records, strict=True):
            del dirty[task_id]
            saving[task_id] = record
        try:
            yield
        except BaseException:
            for task_id, record in zip(ids, records, strict=True):
                dirty.setdefault(task_id, record)
            raise
        finally:
            for task_id in ids:  # (only these: a write beside the cycle has its own)
                saving.pop(task_id, None)
        if self._no_pending:
            no_pending = self._no_pending
            for task_id in ids:
                if task_id not in dirty:  # (a newer copy keeps its own hint)
                    no_pending.discard(task_id)

    async def flush(self) -> int:
        """Write every buffered record now; returns how many were written."""
        return await self._flush(history_may_wait=False)

    def _history_may_wait(self) -> bool:
        """Whether this cycle may leave finished records for a later one: tasks are waiting
        for their write-ahead or running mark (so the cycle is short and frequent), and
        history was written less than ``HISTORY_DELAY_S`` ago, fewer than
        ``HISTORY_BATCH`` records ago. Larger history batches cost less per record, and
        they are off every task's path: nothing waits for them."""
        return (
            bool(self._accepting or self._starting)
            and not self._history_first
            and len(self._dirty) < HISTORY_BATCH
            and asyncio.get_running_loop().time() - self._history_at < HISTORY_DELAY_S
        )

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """Wait for the write cycles in flight and hold new ones off for the body."""
        async with self._lock:
            taken = 0
            try:
                while taken < self._lanes:
                    await self._slots.acquire()
                    taken += 1
                yield
            finally:
                for _ in range(taken):
                    self._slots.release()

    def _pipelined(self) -> bool:
        """Whether history goes beside the cycles and the loop starts cycles beside one in
        flight (see the class docstring): where the backend allows it, while writes work."""
        return self._beside and self.healthy and not self._beside_failed

    async def _flush(self, *, history_may_wait: bool) -> int:
        async with self._exclusive():
            return await self._cycle(history_may_wait=history_may_wait)

    async def _cycle(self, *, history_may_wait: bool) -> int:
        """One write cycle (hold ``_exclusive``, or one slot when pipelined)."""
        written = 0
        later = history_may_wait and self._history_may_wait()
        beside = history_may_wait and self._pipelined()
        if not later and self._dirty:
            self._history_at = asyncio.get_running_loop().time()
        inline = not (later or beside)  # this flush writes history itself
        async with self._history_lock if inline else contextlib.nullcontext():
            if self._write_ahead is not None:
                # Healthy: one transaction per cycle. After a failure, separate ones, so
                # that a batch the backend refuses holds up nothing else.
                if self._one_transaction is not None and self.healthy:
                    written += await self._one_cycle(self._one_transaction, history=inline)
                await self._write_ahead_batch()
                await self._started_batch()
            if inline:
                written += await self._save_buffered()
                self._beside_failed = False
        if beside and not later and self._dirty and self._beside_task is None:
            self._beside_task = asyncio.get_running_loop().create_task(
                self._save_beside(), name="taskflow-history"
            )
        if inline and self._history_first and self._accept_queue:
            # Tasks held back by _to_accept: their ids' records are saved now. (Beside
            # the cycles, the history task wakes the loop when it is done.)
            self._wake.set()
        self.written += written
        return written

    async def _save_buffered(self, limit: int | None = None) -> int:
        """Save the buffered records to history, in batches (hold ``_history_lock``): all of
        them, including those that arrive meanwhile, or the first ``limit``."""
        written = 0
        while self._dirty and (limit is None or written < limit):
            size = self._batch_size if limit is None else min(self._batch_size, limit - written)
            batch = list(itertools.islice(self._dirty.values(), size))
            with self._writing(batch):
                await self._backend._save_history(batch, self._pending_of(batch))
            written += len(batch)
        return written

    async def _save_beside(self) -> None:
        """Save the buffered records beside the write-ahead cycles. A failure sends history
        back into the cycles, whose failures are retried with backoff and reported."""
        try:
            async with self._history_lock:
                # What is buffered now: records arriving meanwhile wait for the next one,
                # so history keeps going in large batches (see _history_may_wait).
                self.written += await self._save_buffered(limit=len(self._dirty))
        except Exception as exc:
            self._beside_failed = True
            logger.debug("fastapi-taskflow: a history write failed (%s); retried in a cycle", exc)
            self._wake.set()
        finally:
            self._beside_task = None
            if self._history_first:
                self._wake.set()

    async def _loop(self) -> None:
        while True:
            # Healthy: sleep until there is work (a SUCCESS/FAILED, an accepted or starting
            # task) or the interval passes. Failing: back off, and let nothing but a stop
            # request cut the wait short.
            if self._failures:
                event, wait = self._stopping, min(0.5 * 2 ** (self._failures - 1), 30.0)
            else:
                event, wait = self._wake, self._interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await event.wait()
            if self._stopping.is_set():
                return
            if self._pipelined():
                await self._slots.acquire()  # a cycle in flight may end first
                if self._stopping.is_set():
                    self._slots.release()
                    return
                self._wake.clear()
                task = asyncio.get_running_loop().create_task(
                    self._pipelined_cycle(), name="taskflow-write-ahead"
                )
                self._cycles.add(task)
                task.add_done_callback(self._cycles.discard)
                continue
            self._wake.clear()
            await self._counted(self._flush(history_may_wait=True))

    async def _pipelined_cycle(self) -> None:
        """A cycle in a slot the loop took for it."""
        try:
            await self._counted(self._cycle(history_may_wait=True))
        finally:
            self._slots.release()

    async def _counted(self, cycle: Awaitable[int]) -> None:
        """Run a cycle; its failure is counted (the loop backs off) and reported."""
        try:
            await cycle
        except Exception as exc:
            self._failed(exc)
        else:
            self._succeeded()

    def _succeeded(self) -> None:
        self._failures = 0
        if not self.healthy:
            logger.warning("fastapi-taskflow: the backend is back; buffered writes saved")
        self.healthy = True

    def _failed(self, exc: Exception) -> None:
        self._failures += 1
        self.healthy = False
        if self._failures == 1 or self._failures % 10 == 0:
            logger.warning(
                "fastapi-taskflow: writing to the backend failed (%s); %d records and "
                "%d accepted tasks are buffered and retried with backoff",
                exc,
                self.backlog,
                len(self._accepting),
            )


def _running(job: Job) -> TaskRecord:
    """The record a running mark stores where the coordinator takes whole records: the
    task's own, as running (it may be marked before its function is called)."""
    record = job.record
    if record.status is TaskStatus.RUNNING:
        return record
    return record.model_copy(update={"status": TaskStatus.RUNNING})


_E = TypeVar("_E", _Accepted, _Starting)


def _take(queue: dict[str, _E], entries: Iterable[_E], size: int) -> list[_E]:
    """The first ``size`` of ``entries``, taken off ``queue`` (entries keyed by task id)."""
    batch = list(itertools.islice(entries, size))
    for entry in batch:
        del queue[entry[0].task_id]
    return batch
