"""A gate shared by a batch of tasks waiting for one write (write-ahead, running marks)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger("fastapi_taskflow")

T = TypeVar("T")


class Gate(Generic[T]):
    """Opens once every item of its batch is written, or when its deadline passes (the
    backend is slow or unreachable), whichever comes first.

    One list of waiters and at most one timer serve the whole batch, instead of a future, a
    shield and a timer per task. Coroutines :meth:`wait` on it; callbacks are :meth:`hold`-ed
    and run in order when it opens. The deadline counts from the gate's creation (its first
    item), and is set by the first caller that waits or holds.
    """

    __slots__ = ("_created", "_held", "_timer", "_waiters", "expected", "is_open", "saved")

    def __init__(self) -> None:
        self._created = asyncio.get_running_loop().time()
        self._waiters: list[asyncio.Future[None]] = []
        self._held: list[tuple[Callable[[T], None], T]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.expected = 0  # items not written yet
        self.saved = False  # opened because every item was written
        self.is_open = False

    def settle(self) -> None:
        """One item of the batch is written; the last one opens the gate."""
        self.expected -= 1
        if self.expected <= 0 and not self.is_open:
            self.saved = True
            self.open()

    def hold(self, item: T, then: Callable[[T], None], timeout_s: float) -> bool:
        """Call ``then(item)`` when the gate opens; False (nothing held) if it is open."""
        if self.is_open:
            return False
        self._arm(timeout_s)
        self._held.append((then, item))
        return True

    async def wait(self, timeout_s: float) -> bool:
        """Wait until the gate opens; True if its batch was written (not timed out)."""
        if not self.is_open:
            self._arm(timeout_s)
            # A future per waiter, woken by open() (a waiter cancelled meanwhile is skipped
            # there): what asyncio.Event.wait does, without its bookkeeping.
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        return self.saved

    def open(self) -> None:
        if self.is_open:
            return
        self.is_open = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held = self._held, []
        for then, item in held:
            try:
                then(item)
            except Exception:  # one failing callback must not strand the others
                logger.exception("fastapi-taskflow: starting a task after its write failed")

    def _arm(self, timeout_s: float) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(self._created + timeout_s, self.open)
