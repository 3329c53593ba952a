"""Queues, priorities and concurrency caps. Starts jobs; never runs them itself."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import heapq
import itertools
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from ._job import Job, Stage
from ._models import QueueConfig

_SUSPENDS_KEPT = 1024


class _Lane:
    """One queue: its counters and the jobs waiting for a slot.

    Waiting jobs of the default priority (0, the usual case) are kept in arrival order in a
    deque; the others in a heap by (-priority, arrival). The next job is the heap's head if
    its priority is above 0, else the deque's, else the heap's.
    """

    def __init__(self, config: QueueConfig) -> None:
        self.config = config
        self.running = 0
        self.admitted = 0  # accepted but not started: held or waiting
        self.heap: list[tuple[int, int, Job]] = []
        self.fifo: collections.deque[Job] = collections.deque()
        self.fifo_seq: collections.deque[int] = collections.deque()

    def has_slot(self) -> bool:
        return self.running < self.config.max_concurrency

    def waiting(self) -> bool:
        return bool(self.fifo or self.heap)

    def push(self, job: Job, seq: int) -> None:
        priority = job.priority or 0
        if priority:
            heapq.heappush(self.heap, (-priority, seq, job))
        else:
            self.fifo.append(job)
            self.fifo_seq.append(seq)

    def _from_heap(self) -> bool:
        heap, fifo = self.heap, self.fifo
        while heap and heap[0][2].stage is not Stage.WAITING:
            heapq.heappop(heap)  # cancelled while waiting
        while fifo and fifo[0].stage is not Stage.WAITING:
            fifo.popleft()
            self.fifo_seq.popleft()
        return bool(heap) and (not fifo or heap[0][0] < 0)

    def rank(self) -> tuple[int, int] | None:
        """(-priority, arrival) of the next waiting job; None if none waits."""
        if self._from_heap():
            return self.heap[0][0], self.heap[0][1]
        return (0, self.fifo_seq[0]) if self.fifo else None

    def pop(self) -> Job | None:
        """The next waiting job, taken out; None if none waits."""
        if self._from_heap():
            return heapq.heappop(self.heap)[2]
        if not self.fifo:
            return None
        self.fifo_seq.popleft()
        return self.fifo.popleft()

    def drain(self) -> list[Job]:
        """Every waiting job, taken out (for shutdown)."""
        jobs = [job for job in self.fifo if job.stage is Stage.WAITING]
        jobs += [job for _, _, job in self.heap if job.stage is Stage.WAITING]
        self.fifo.clear()
        self.fifo_seq.clear()
        self.heap.clear()
        return jobs


class Dispatcher:
    """Starts jobs in priority order (higher first, then first come) within the caps.

    ``max_concurrent`` bounds running jobs across all queues; each queue bounds its own.
    A queue's ``max_size`` bounds jobs accepted but not yet started.
    """

    def __init__(
        self,
        queues: dict[str, QueueConfig],
        max_concurrent: int,
        run: Callable[[Job], Coroutine[Any, Any, None]],
        abandoned: Callable[[Job], None],
        begin: Callable[[Job], Coroutine[Any, Any, None] | None] | None = None,
        needs_mark: Callable[[Job], bool] | None = None,
        mark: Callable[[list[Job]], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self._lanes = {name: _Lane(config) for name, config in queues.items()}
        self._max_concurrent = max_concurrent
        self._run = run
        self._begin = begin if begin is not None else run  # starts a job in the starter
        self._abandoned = abandoned
        # A job that ``needs_mark`` is not called by the starter at once: ``mark`` waits for
        # it (with the others of its batch, in one task), and the starter calls it then.
        self._needs_mark = needs_mark
        self._mark = mark
        self._seq = itertools.count()
        self.running: dict[str, Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._starting: collections.deque[Job] = collections.deque()  # launched, not called
        self._starter: asyncio.Task[None] | None = None  # calls them
        self._suspends: set[str] = set()  # functions seen to suspend: a task per job
        self._lanes_list = list(self._lanes.values())

    def lane_names(self) -> list[str]:
        return list(self._lanes)

    def has_queue(self, name: str) -> bool:
        return name in self._lanes

    def queue_depths(self) -> dict[str, dict[str, int]]:
        return {
            name: {"running": lane.running, "waiting": lane.admitted}
            for name, lane in self._lanes.items()
        }

    def busy(self) -> int:
        """Jobs running or accepted but not started, across queues."""
        return len(self.running) + sum(lane.admitted for lane in self._lanes.values())

    def admit(self, job: Job) -> bool:
        """Reserve room for ``job`` in its queue; False when the queue is full."""
        lane = self._lanes[job.queue]
        limit = lane.config.max_size
        if limit is not None and lane.admitted >= limit:
            return False
        lane.admitted += 1
        return True

    def admit_unbounded(self, queue: str) -> bool:
        """:meth:`admit` for a job of ``queue`` before it exists, if the queue has no size
        limit (nothing to check); False, nothing reserved, otherwise."""
        lane = self._lanes.get(queue)
        if lane is None or lane.config.max_size is not None:
            return False
        lane.admitted += 1
        return True

    def release(self, job: Job) -> None:
        """Give back the room of an admitted job that will never start."""
        lane = self._lanes[job.queue]
        if not job.reserved:
            lane.admitted -= 1
            return
        job.reserved = False
        lane.running -= 1
        del self.running[job.task_id]
        self._fill()

    def reserve(self, job: Job) -> bool:
        """Take a running slot now for an admitted job that is to start the moment its
        write-ahead is durable; False (nothing taken) if it would have to wait its turn."""
        if job.reserved:
            return True
        lane = self._lanes[job.queue]
        if lane.waiting() or not lane.has_slot() or len(self.running) >= self._max_concurrent:
            return False
        lane.admitted -= 1
        lane.running += 1
        self.running[job.task_id] = job
        job.reserved = True
        return True

    def submit(self, job: Job) -> None:
        """Make an admitted job eligible to start."""
        lane = self._lanes[job.queue]
        if job.reserved:
            job.reserved = False
            self._launch(job)
            return
        job.stage = Stage.WAITING
        if (
            not lane.waiting()
            and lane.running < lane.config.max_concurrency
            and len(self.running) < self._max_concurrent
        ):
            # Room in the queue and overall, and nobody ahead of it in this queue (a job
            # waiting in another queue waits for that queue's own limit, not for this one).
            self._start(lane, job)
            return
        lane.push(job, next(self._seq))
        self._fill()

    def _fill(self) -> None:
        lanes = self._lanes_list
        if len(lanes) == 1:  # one queue (the usual case): no ranking across queues
            lane = lanes[0]
            while (
                lane.waiting()
                and len(self.running) < self._max_concurrent
                and lane.has_slot()
                and (job := lane.pop()) is not None
            ):
                self._start(lane, job)
            return
        while len(self.running) < self._max_concurrent:
            best: tuple[tuple[int, int], _Lane] | None = None
            for lane in lanes:
                if not lane.has_slot():
                    continue
                rank = lane.rank()
                if rank is not None and (best is None or rank < best[0]):
                    best = (rank, lane)
            if best is None:
                return
            lane = best[1]
            job = lane.pop()
            assert job is not None
            self._start(lane, job)

    def _start(self, lane: _Lane, job: Job) -> None:
        lane.admitted -= 1
        lane.running += 1
        self.running[job.task_id] = job
        self._launch(job)

    def _launch(self, job: Job) -> None:
        config = job.config
        if config.name in self._suspends or not config.is_async:
            self._own_task(job)
            return
        job.stage = Stage.STARTING
        self._starting.append(job)
        if self._starter is None:
            self._starter = self._spawn(self._start_jobs())

    def _own_task(self, job: Job) -> None:
        job.stage = Stage.RUNNING
        task = asyncio.get_running_loop().create_task(self._run(job), context=job.context)
        job.task = task
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._finished, job=job))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._starter_done)
        return task

    def _starter_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._starter is not task:
            return
        # Cancelled before it could start its jobs (the loop is closing): they never run.
        self._starter = None
        while self._starting:
            job = self._starting.popleft()
            if job.stage is Stage.STARTING:
                self._abandoned(job)
                self.finished(job)

    async def _start_jobs(self) -> None:
        """Call the jobs waiting to start, one after another, in this one asyncio task.

        A job that finishes without suspending (a no-op, a cache hit, an in-memory update)
        costs no task of its own. The first job that does suspend keeps this task for the
        rest of its run (so it sees one ``current_task()`` throughout, as cancel scopes and
        timeouts require), and the jobs after it go on in a new starter task. Its function
        is noted: its later jobs get a task each at once, so that jobs that wait on I/O all
        start in the same loop pass rather than one pass after another.
        """
        starting = self._starting
        needs_mark = self._needs_mark
        marking: list[Job] = []  # to be marked running in the shared store first
        while starting:
            job = starting.popleft()
            if job.stage is not Stage.STARTING:
                continue  # cancelled (or ended by a shutdown) before it started
            if job.config.name in self._suspends:
                self._own_task(job)
                continue
            if needs_mark is not None and needs_mark(job):
                marking.append(job)
                continue
            job.stage = Stage.RUNNING
            context = job.context if job.context is not None else contextvars.copy_context()
            try:
                coro = context.run(self._begin, job)
                if coro is None:  # it ran to its end already
                    continue
                yielded = context.run(coro.send, None)
            except StopIteration:
                continue
            except BaseException:  # escaped the executor (SystemExit, say): let it go on
                self._marked_later(marking)
                self._hand_on()
                raise
            if len(self._suspends) >= _SUSPENDS_KEPT:
                self._suspends.clear()
            self._suspends.add(job.config.name)
            self._marked_later(marking)
            self._hand_on()
            task = asyncio.current_task()
            assert task is not None
            job.task = task
            task.add_done_callback(functools.partial(self._finished, job=job))
            await _carry(coro, context, yielded)
            return
        self._starter = None
        self._marked_later(marking)

    def _marked_later(self, jobs: list[Job]) -> None:
        """Start ``jobs`` once they are marked running (see ``needs_mark``)."""
        if jobs:
            task = asyncio.get_running_loop().create_task(self._mark_then_start(jobs))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _mark_then_start(self, jobs: list[Job]) -> None:
        assert self._mark is not None
        try:
            await self._mark(jobs)
        finally:
            # Back to the starter (each one cancelled meanwhile is skipped there).
            self._starting.extend(jobs)
            if self._starter is None:
                self._starter = self._spawn(self._start_jobs())

    def _hand_on(self) -> None:
        """The current starter stops starting jobs: the ones left get a new starter."""
        self._starter = self._spawn(self._start_jobs()) if self._starting else None

    def _finished(self, task: asyncio.Task[None], *, job: Job) -> None:
        self._tasks.discard(task)
        job.task = None  # a finished Task (~600 B with its handle and weak-set entry) must go
        if job.stage is not Stage.DONE:  # cancelled before its coroutine even started
            self._abandoned(job)
        self.finished(job)

    def finished(self, job: Job) -> None:
        """Free the slot of a job that reached a terminal state and start the next one."""
        if self.running.get(job.task_id) is not job:
            return
        del self.running[job.task_id]
        lane = self._lanes[job.queue]
        lane.running -= 1
        if lane.fifo or lane.heap or len(self._lanes_list) > 1:  # (else none waits)
            self._fill()

    def take_waiting(self) -> list[Job]:
        """Remove and return every job that has not started (for shutdown)."""
        jobs: list[Job] = []
        for lane in self._lanes.values():
            jobs += lane.drain()
            lane.admitted = 0
        return jobs

    async def wait_running(self, seconds: float) -> bool:
        """Wait until nothing runs, at most ``seconds``; True if all finished."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self._tasks:  # (a task may start another: a starter handing on, say)
            left = deadline - loop.time()
            if left <= 0:
                return False
            _, pending = await asyncio.wait(set(self._tasks), timeout=left)
            if pending:
                return False
        return True

    def running_tasks(self) -> set[asyncio.Task[None]]:
        return set(self._tasks)


@types.coroutine
def _carry(
    coro: Coroutine[Any, Any, None], context: contextvars.Context, yielded: Any
) -> Generator[Any, Any, None]:
    """Go on running ``coro``, suspended on ``yielded``, in the current task and in its own
    context: what it waits for passes up to the task, what the task sends or throws (a
    wake-up, a cancellation) goes down to it."""
    while True:
        try:
            sent = yield yielded
        except BaseException as exc:
            try:
                yielded = context.run(coro.throw, exc)
            except StopIteration:
                return
        else:
            try:
                yielded = context.run(coro.send, sent)
            except StopIteration:
                return
